#!/usr/bin/env bash
# Paired A/B runs of two etcd-server binaries (a change against the commit
# before it), single member: ROUNDS rounds, each binary once per round on
# a fresh data dir (A first), one loadgen write load each. Prints every
# pair's QPS and server CPU per request (user + system from /proc), then
# the medians and their ratio A / B. On a noisy host (one binary's CPU per
# put can move 30 % between minutes) compare the pairs, not the absolute
# figures, and run again with the binaries swapped.
#
#   cp $CARGO_TARGET_DIR/release/etcd-server /tmp/new-etcd-server   # after the change
#   git stash; cargo build --release -p etcd-server; git stash pop
#   bash benches/ab.sh /tmp/new-etcd-server $CARGO_TARGET_DIR/release/etcd-server
#   ROUNDS=6 LOAD='--conns 8 --clients 64 --total 20000 txn-put' bash benches/ab.sh A B
#
# LOAD is loadgen's arguments after --endpoints (default: 40,000 puts of
# 256-byte values from 256 clients on 16 connections). Write loads only:
# the store starts empty.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: bash benches/ab.sh BINARY_A BINARY_B" >&2; exit 2; }
A=$(realpath "$1")
B=$(realpath "$2")
ROUNDS="${ROUNDS:-4}"
LOAD="${LOAD:---conns 16 --clients 256 --total 40000 --key-size 8 --val-size 256 put}"
WORK="$(mktemp -d /var/tmp/etcd-ab.XXXXXX)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
. benches/lib.sh
build_bins loadgen
LOADGEN="$CARGO_TARGET_DIR/release/loadgen"

echo "A: $A"
echo "B: $B"
echo "load: $LOAD"
echo
echo "| round | A QPS | B QPS | A CPU us/request | B CPU us/request |"
echo "|---|---|---|---|---|"
port=24000  # below the ephemeral range (clients take ports from 32768 up)
for r in $(seq "$ROUNDS"); do
    declare -A qps=() cpu=()
    for side in A B; do
        port=$((port + 2))
        OURS=${!side}
        pid=$(start_server ours "$port")
        before=$(cpu_ticks "$pid")
        # shellcheck disable=SC2086
        out=$("$LOADGEN" --endpoints "http://127.0.0.1:$port" $LOAD)
        after=$(cpu_ticks "$pid")
        kill "$pid"; wait "$pid" 2>/dev/null || true
        n=$(echo "$out" | awk '/^requests:/ {print $2}')
        errs=$(echo "$out" | awk '/^errors:/ {print $2}')
        [ "$errs" = 0 ] || echo "warning: $side round $r had $errs errors" >&2
        qps[$side]=$(echo "$out" | awk '/^qps:/ {print $2}')
        cpu[$side]=$(cpu_us_per_request "$before" "$after" "$n")
        echo "${qps[$side]}" >>"$WORK/$side.qps"
        echo "${cpu[$side]}" >>"$WORK/$side.cpu"
    done
    echo "| $r | ${qps[A]} | ${qps[B]} | ${cpu[A]} | ${cpu[B]} |"
done
qa=$(median <"$WORK/A.qps"); qb=$(median <"$WORK/B.qps")
ca=$(median <"$WORK/A.cpu"); cb=$(median <"$WORK/B.cpu")
echo "| median | $qa | $qb | $ca | $cb |"
awk -v qa="$qa" -v qb="$qb" -v ca="$ca" -v cb="$cb" \
    'BEGIN { printf "| **A / B** | **%.2fx** | | **%.2fx** | |\n", qa / qb, ca / cb }'
