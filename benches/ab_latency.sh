#!/usr/bin/env bash
# Paired A/B of two etcd-server binaries on the latency rows that a change
# of the write path could move without showing in `ab.sh`'s put loads:
# one watcher's delivery latency (`watchbench`, 1 watcher, PUT_RATE puts/s
# for RUN_SECONDS s; also the paced puts' own latency: the server idles
# between them) and lease keepalives (`leasebench`, 1 and 64 clients
# on 4 connections). Each round runs A, B and Debian's etcd one after the
# other on fresh data dirs (single member). Prints every run, then the
# medians per server.
#
#   bash benches/ab_latency.sh /tmp/old/etcd-server /tmp/new/etcd-server
#   ROUNDS=5 RUN_SECONDS=8 bash benches/ab_latency.sh A B
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: bash benches/ab_latency.sh BINARY_A BINARY_B" >&2; exit 2; }
A=$(realpath "$1")
B=$(realpath "$2")
ROUNDS="${ROUNDS:-5}"
PUT_RATE="${PUT_RATE:-1000}"
RUN_SECONDS="${RUN_SECONDS:-8}"
WORK="$(mktemp -d /var/tmp/etcd-ab-latency.XXXXXX)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
. benches/lib.sh
build_bins watchbench leasebench
BIN="$CARGO_TARGET_DIR/release"

echo "A: $A"
echo "B: $B"
echo
echo "| round | server | watch p50 us | watch p99 us | paced put p50 us | keepalives/s, 1 client | keepalives/s, 64 clients |"
echo "|---|---|---|---|---|---|---|"
port=24500  # below the ephemeral range
for r in $(seq "$ROUNDS"); do
    for side in A B etcd; do
        kind=ours; [ "$side" = etcd ] && kind=real
        [ "$side" = etcd ] || OURS=${!side}
        port=$((port + 2))
        pid=$(start_server "$kind" "$port")
        w=$("$BIN/watchbench" --endpoint "http://127.0.0.1:$port" --watchers 1 \
            --rate "$PUT_RATE" --seconds "$RUN_SECONDS")
        l1=$("$BIN/leasebench" --endpoints "http://127.0.0.1:$port" --conns 4 --clients 1 --total 20000)
        l64=$("$BIN/leasebench" --endpoints "http://127.0.0.1:$port" --conns 4 --clients 64 --total 200000)
        stop_server "$pid"
        row=("$(field latency_p50_us "$w")" "$(field latency_p99_us "$w")" "$(field put_latency_p50_us "$w")"
            "$(field qps "$l1")" "$(field qps "$l64")")
        echo "${row[*]}" >>"$WORK/$side"
        printf '| %s | %s |' "$r" "$side"; printf ' %s |' "${row[@]}"; echo
    done
done
for side in A B etcd; do
    meds=()
    for col in 1 2 3 4 5; do meds+=("$(awk -v c=$col '{print $c}' "$WORK/$side" | median)"); done
    printf '| median | %s |' "$side"; printf ' %s |' "${meds[@]}"; echo
done
