#!/usr/bin/env bash
# Watch latency and memory, this project's etcd-server beside Debian's etcd
# 3.4, both single-member with fresh data dirs on the same disk, driven by
# the same `watchbench` binary in one run. Scenarios: 1, 100 and 10,000
# watchers of one key under PUT_RATE puts/s for RUN_SECONDS seconds (10,000
# watchers spread over 100 streams on 10 connections); and 100 watchers
# asking for prev_kv (Kubernetes' shape: the server reads each put's
# previous value). Prints one line per scenario and server.
#
#   bash benches/watch_compare.sh            # defaults: PUT_RATE=1000 RUN_SECONDS=10
set -euo pipefail
cd "$(dirname "$0")/.."
PUT_RATE="${PUT_RATE:-1000}"
SECONDS_PER_RUN="${RUN_SECONDS:-10}"
WORK="$(mktemp -d /var/tmp/etcd-watch-compare.XXXXXX)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
. benches/lib.sh  # OURS=path: another build of etcd-server
build_bins watchbench
BENCH="$CARGO_TARGET_DIR/release/watchbench"

port=24100
printf '| watchers | streams | keys | server | puts/s | events | p50 µs | p99 µs | RSS before MiB | RSS watching MiB | B/watcher |\n|---|---|---|---|---|---|---|---|---|---|---|\n'
for scenario in "1 1 1 same" "100 1 1 same" "100 1 1 same,prev_kv" "10000 100 10 distinct"; do
    read -r watchers streams conns keys <<<"$scenario"
    flag=""
    case "$keys" in
        distinct) flag="--distinct-keys" ;;
        *prev_kv) flag="--prev-kv" ;;
    esac
    for kind in ours real; do
        port=$((port + 10))
        PID=$(start_server "$kind" "$port")
        PIDS+=("$PID")
        out="$("$BENCH" --endpoint "http://127.0.0.1:$port" --server-pid "$PID" \
            --watchers "$watchers" --streams "$streams" --conns "$conns" \
            --rate "$PUT_RATE" --seconds "$SECONDS_PER_RUN" $flag)"
        stop_server "$PID"
        v() { field "$1" "$out"; }
        events="$(v events_received)"
        [ "$flag" = --prev-kv ] && events="$events ($(v events_with_prev_kv) with prev_kv)"
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %.1f | %.1f | %s |\n' \
            "$watchers" "$streams" "$keys" "$kind" "$(v put_rate_achieved)" "$events" \
            "$(v latency_p50_us)" "$(v latency_p99_us)" \
            "$(echo "$(v rss_before_bytes) / 1048576" | bc -l)" \
            "$(echo "$(v rss_watching_bytes) / 1048576" | bc -l)" "$(v bytes_per_watcher)"
    done
done
