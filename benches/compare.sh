#!/usr/bin/env bash
# Side-by-side load test: this project's etcd-server and Debian's etcd 3.4,
# both single-member, fresh data dirs on the same disk, driven by the same
# `loadgen` binary in one run. Each scenario runs REPEAT times per server,
# alternating servers; the median QPS, latencies and server CPU time per
# request (user + system, from /proc) are printed as a Markdown table
# (paste into RESULTS.md).
#
#   bash benches/compare.sh            # defaults: REPEAT=3 TOTAL=20000
#   REPEAT=5 TOTAL=50000 bash benches/compare.sh
#   ONLY='put, 1 client|put, 256' bash benches/compare.sh   # rows matching a regex
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT="${REPEAT:-3}"
TOTAL="${TOTAL:-20000}"
WORK="$(mktemp -d /var/tmp/etcd-compare.XXXXXX)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
. benches/lib.sh

build_bins loadgen
LOADGEN="$CARGO_TARGET_DIR/release/loadgen"

# scenario name | loadgen arguments
SCENARIOS=(
    "put, 1 client|--conns 1 --clients 1 --total $((TOTAL / 4)) --key-size 8 --val-size 256 put"
    # Kubernetes-sized objects: every commit crosses into new WAL blocks.
    "put 4 KiB values, 1 client|--conns 1 --clients 1 --total $((TOTAL / 4)) --key-size 8 --val-size 4096 put"
    "put, 16 clients|--conns 4 --clients 16 --total $TOTAL --key-size 8 --val-size 256 put"
    "put, 128 clients|--conns 16 --clients 128 --total $TOTAL --key-size 8 --val-size 256 put"
    "put, 256 clients|--conns 16 --clients 256 --total $((TOTAL * 2)) --key-size 8 --val-size 256 put"
    "put, 1000 clients|--conns 100 --clients 1000 --total $((TOTAL * 5)) --key-size 8 --val-size 256 put"
    "txn put (Kubernetes' update), 64 clients|--conns 8 --clients 64 --total $TOTAL --key-size 8 --val-size 256 txn-put"
    "get linearizable, 16 clients|--conns 4 --clients 16 --total $TOTAL --key-size 8 range --consistency l"
    "get serializable, 16 clients|--conns 4 --clients 16 --total $TOTAL --key-size 8 range --consistency s"
    # The round trip a 1-client put cannot beat: the same gRPC call shape
    # with no raft, no WAL and no fsync.
    "get serializable, 1 client|--conns 1 --clients 1 --total $((TOTAL / 4)) --key-size 8 range --consistency s"
)

print_header
port=31000
for s in "${SCENARIOS[@]}"; do
    name="${s%%|*}"; args="${s#*|}"
    if [ -n "${ONLY:-}" ] && ! grep -qE -- "$ONLY" <<<"$name"; then continue; fi
    reset_runs
    for r in $(seq "$REPEAT"); do
        for kind in ours real; do
            port=$((port + 2))
            pid=$(start_server "$kind" "$port")
            ep="http://127.0.0.1:$port"
            # Reads need data: fill the key space first.
            case "$args" in *range*) "$LOADGEN" --endpoints "$ep" --conns 4 --clients 16 --total 100000 \
                --key-space-size 100000 --sequential-keys put >/dev/null ;; esac
            # shellcheck disable=SC2086
            load_and_record "$kind" "$name" "$r" "$pid" "$LOADGEN" --endpoints "$ep" $args
        done
    done
    print_rows "$name"
done
