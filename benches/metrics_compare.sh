#!/usr/bin/env bash
# What scraping /metrics costs, side by side: this project's etcd-server and
# Debian's etcd 3.4, single member, puts from `loadgen` with and without a
# Prometheus-like scraper (`curl /metrics` every second) running. Each mode
# runs REPEAT times per server, interleaved; medians are printed as a
# Markdown table with the scraped / unscraped ratio per server.
#
#   bash benches/metrics_compare.sh            # REPEAT=5 TOTAL=30000
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT="${REPEAT:-5}"
TOTAL="${TOTAL:-30000}"
WORK="$(mktemp -d /var/tmp/etcd-metrics.XXXXXX)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
. benches/lib.sh
build_bins loadgen
LOADGEN="$CARGO_TARGET_DIR/release/loadgen"
ARGS="--conns 4 --clients 16 --total $TOTAL --key-size 8 --val-size 256 put"

# One run: prints loadgen's report for KIND with MODE (scraped or not) on
# client PORT.
run_one() {
    local kind=$1 mode=$2 port=$3 pid ep scraper="" out
    pid=$(start_server "$kind" "$port")
    ep="http://127.0.0.1:$port"
    if [ "$mode" = scraped ]; then
        (while true; do curl -s "$ep/metrics" >/dev/null; sleep 1; done) &
        scraper=$!
    fi
    # shellcheck disable=SC2086
    out=$("$LOADGEN" --endpoints "$ep" $ARGS)
    if [ -n "$scraper" ]; then kill "$scraper"; wait "$scraper" 2>/dev/null || true; fi
    kill "$pid"; wait "$pid" 2>/dev/null || true
    echo "$out"
}

port=21000  # below the ephemeral range (clients take ports from 32768 up)
# Modes alternate within each repetition, so that drift of the machine's
# speed hits both alike.
for r in $(seq "$REPEAT"); do
    for kind in ours real; do
        for mode in unscraped scraped; do
            port=$((port + 2))
            run_one "$kind" "$mode" "$port" | awk '/^qps:/ {print $2}' >> "$WORK/$kind-$mode.qps"
        done
    done
done
echo "| server | put QPS unscraped (median of $REPEAT) | put QPS scraped every 1 s | scraped / unscraped |"
echo "|---|---|---|---|"
for kind in ours real; do
    u=$(median < "$WORK/$kind-unscraped.qps"); s=$(median < "$WORK/$kind-scraped.qps")
    awk -v u="$u" -v s="$s" -v n="$(server_label "$kind")" \
        'BEGIN { printf "| %s | %s | %s | **%.3f** |\n", n, u, s, s / u }'
done
