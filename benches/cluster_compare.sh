#!/usr/bin/env bash
# Side-by-side load test of 3-member clusters: this project's etcd-server
# and Debian's etcd 3.4, all three members on this machine (loopback, one
# disk), same flags (etcd's default heartbeat 100 ms / election 1000 ms),
# one server kind after the other in one run, driven by the same `loadgen`.
#
# Load: clients are spread over the 3 client URLs (loadgen opens its
# connections round-robin over --endpoints, followers listed first, so the
# 1-client row writes through a follower and pays its forwarding hop);
# puts go through raft whichever member receives them.
#
# Per repetition and server kind: a fresh cluster, 100,000 keys filled
# (sequential, 128 clients, not measured), then each scenario in order.
# The median of REPEAT repetitions is printed as a Markdown table.
#
# Failover: FAILOVER_REPEAT fresh clusters per kind; `failover` writes
# through the two followers, kill -9s the leader and reports the time to
# the first write sent after the kill that succeeds; median, min and max.
#
#   bash benches/cluster_compare.sh                 # REPEAT=3 TOTAL=20000 FAILOVER_REPEAT=5
#   KINDS=real bash benches/cluster_compare.sh      # only the real etcd
#   ONLY='put, 1 client' bash benches/cluster_compare.sh   # rows matching a regex
#   BENCH_DIR=/dev/shm bash benches/cluster_compare.sh     # data dirs there (default /var/tmp)
#   PEER_TLS=1 bash benches/cluster_compare.sh     # peers over TLS (cfssl certificates,
#                                                  # --peer-client-cert-auth); clients plain
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT="${REPEAT:-3}"
TOTAL="${TOTAL:-20000}"
FAILOVER_REPEAT="${FAILOVER_REPEAT:-5}"
KINDS="${KINDS:-ours real}"
WORK="$(mktemp -d "${BENCH_DIR:-/var/tmp}/etcd-cluster-compare.XXXXXX")"
ALL_PIDS=()
trap 'kill -9 "${ALL_PIDS[@]}" $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
. benches/lib.sh

build_bins loadgen failover
LOADGEN="$CARGO_TARGET_DIR/release/loadgen"
FAILOVER="$CARGO_TARGET_DIR/release/failover"

# PEER_TLS=1: the members talk over TLS, as operators run them.
PEER_SCHEME=http
PEER_FLAGS=()
if [ "${PEER_TLS:-0}" = 1 ]; then
    make_certs "$WORK/certs"
    PEER_SCHEME=https
    PEER_FLAGS=(--peer-cert-file "$WORK/certs/server.pem" --peer-key-file "$WORK/certs/server-key.pem"
        --peer-trusted-ca-file "$WORK/certs/ca.pem" --peer-client-cert-auth)
fi

PIDS=()
EPS=()
# start_cluster KIND BASE: members m0..m2 on client BASE+10i, peer BASE+10i+1,
# fresh data dirs; sets PIDS and EPS once every member answers `endpoint health`.
start_cluster() {
    local kind=$1 base=$2 bin=$OURS ic="" i
    [ "$kind" = real ] && bin=$REAL
    for i in 0 1 2; do ic="$ic${ic:+,}m$i=$PEER_SCHEME://127.0.0.1:$((base + 10 * i + 1))"; done
    PIDS=(); EPS=()
    for i in 0 1 2; do
        local c=$((base + 10 * i)) dir="$WORK/$kind-$base-m$i"
        "$bin" --name "m$i" --data-dir "$dir" \
            --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
            --listen-peer-urls "$PEER_SCHEME://127.0.0.1:$((c + 1))" --initial-advertise-peer-urls "$PEER_SCHEME://127.0.0.1:$((c + 1))" \
            --initial-cluster "$ic" --initial-cluster-token "bench-$kind-$base" --initial-cluster-state new \
            "${PEER_FLAGS[@]}" >"$dir.log" 2>&1 &
        # Disowned: `failover` kill -9s one, and bash would report it.
        PIDS+=($!); ALL_PIDS+=($!); EPS+=("http://127.0.0.1:$c"); disown $!
    done
    for i in 0 1 2; do
        local ok=0
        for _ in $(seq 300); do
            ETCDCTL_API=3 etcdctl --endpoints "${EPS[$i]}" endpoint health >/dev/null 2>&1 && { ok=1; break; }
            sleep 0.1
        done
        if [ $ok = 0 ]; then
            echo "$kind cluster member m$i did not become healthy; log tail:" >&2
            tail -20 "$WORK/$kind-$base-m$i.log" >&2
            exit 1
        fi
    done
}

stop_cluster() {
    kill "${PIDS[@]}" 2>/dev/null || true
    for p in "${PIDS[@]}"; do
        while kill -0 "$p" 2>/dev/null; do sleep 0.05; done
    done
}

# followers_first: the client URLs, followers first, the leader last.
followers_first() {
    local out lead="" rest=() ep
    for ep in "${EPS[@]}"; do
        out=$(ETCDCTL_API=3 etcdctl --endpoints "$ep" endpoint status 2>/dev/null || true)
        # simple format: endpoint, id, version, db size, is leader, is learner, term, index, applied
        if [ "$(echo "$out" | awk -F', ' '{print $5}')" = true ]; then lead=$ep; else rest+=("$ep"); fi
    done
    [ -n "$lead" ] && rest+=("$lead")
    (IFS=,; echo "${rest[*]}")
}

# scenario name | loadgen arguments
SCENARIOS=(
    "put, 1 client|--conns 1 --clients 1 --total $((TOTAL / 4)) --key-size 8 --val-size 256 put"
    "put, 16 clients|--conns 4 --clients 16 --total $TOTAL --key-size 8 --val-size 256 put"
    "put, 256 clients|--conns 16 --clients 256 --total $((TOTAL * 2)) --key-size 8 --val-size 256 put"
    "get linearizable, 16 clients|--conns 4 --clients 16 --total $TOTAL --key-size 8 range --consistency l"
    "get serializable, 16 clients|--conns 4 --clients 16 --total $TOTAL --key-size 8 range --consistency s"
)

# ONLY='regex': just the scenarios whose names match.
if [ -n "${ONLY:-}" ]; then
    kept=()
    for s in "${SCENARIOS[@]}"; do grep -qE -- "$ONLY" <<<"${s%%|*}" && kept+=("$s"); done
    SCENARIOS=("${kept[@]}")
fi

port=28000
for r in $(seq "$REPEAT"); do
    for kind in $KINDS; do
        port=$((port + 40))
        start_cluster "$kind" "$port"
        eps=$(followers_first)
        "$LOADGEN" --endpoints "$eps" --conns 16 --clients 128 --total 100000 \
            --key-space-size 100000 --sequential-keys put >/dev/null
        for s in "${!SCENARIOS[@]}"; do
            args="${SCENARIOS[$s]#*|}"
            out=$("$LOADGEN" --endpoints "$eps" $args)
            echo "$out" | awk '/^qps:/ {print $2}' >> "$WORK/$kind.$s.qps"
            echo "$out" | awk '/^latency_ms_p50:/ {print $2}' >> "$WORK/$kind.$s.p50"
            echo "$out" | awk '/^latency_ms_p99:/ {print $2}' >> "$WORK/$kind.$s.p99"
            errs=$(echo "$out" | awk '/^errors:/ {print $2}')
            [ "$errs" = 0 ] || echo "warning: $kind ${SCENARIOS[$s]%%|*} run $r had $errs errors" >&2
        done
        stop_cluster
    done
done

echo "| scenario (3 members) | server | QPS (median of $REPEAT) | p50 ms | p99 ms |"
echo "|---|---|---|---|---|"
declare -A results
for s in "${!SCENARIOS[@]}"; do
    name="${SCENARIOS[$s]%%|*}"
    for kind in $KINDS; do
        q=$(median < "$WORK/$kind.$s.qps"); p50=$(median < "$WORK/$kind.$s.p50"); p99=$(median < "$WORK/$kind.$s.p99")
        results[$kind]=$q
        echo "| $name | $(server_label "$kind") | $q | $p50 | $p99 |"
    done
    if [ -n "${results[ours]:-}" ] && [ -n "${results[real]:-}" ]; then
        awk -v a="${results[ours]}" -v b="${results[real]}" -v n="$name" \
            'BEGIN { printf "| %s | **ratio etcd-rs / etcd** | **%.2fx** | | |\n", n, a / b }'
    fi
done

echo
echo "| failover: kill -9 of the leader to the first accepted write | server | median ms (of $FAILOVER_REPEAT) | min ms | max ms |"
echo "|---|---|---|---|---|"
for kind in $KINDS; do
    : > "$WORK/$kind.failover"
    for r in $(seq "$FAILOVER_REPEAT"); do
        port=$((port + 40))
        start_cluster "$kind" "$port"
        sleep 1
        out=$("$FAILOVER" --endpoints "$(IFS=,; echo "${EPS[*]}")" --pids "$(IFS=,; echo "${PIDS[*]}")")
        echo "$out" | awk '/^failover_ms:/ {print $2}' >> "$WORK/$kind.failover"
        stop_cluster
    done
    sort -n "$WORK/$kind.failover" | awk -v label="$(server_label "$kind")" \
        '{a[NR]=$1} END {printf "| failover | %s | %s | %s | %s |\n", label, a[int((NR+1)/2)], a[1], a[NR]}'
done
