#!/usr/bin/env bash
# Writer pauses during compaction + defrag of a large keyspace, and the space
# defrag reclaims: this project's etcd-server beside Debian's etcd 3.4, same
# `pausebench` binary, fresh data dirs, one run. REPEAT runs per server,
# alternating; prints each run's report and a Markdown table of medians.
#
#   bash benches/pause.sh                  # KEYS=1000000 REPEAT=3
#   KEYS=100000 REPEAT=1 bash benches/pause.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT="${REPEAT:-3}"
KEYS="${KEYS:-1000000}"
WORK="$(mktemp -d /var/tmp/etcd-pause.XXXXXX)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
. benches/lib.sh

build_bins pausebench
PAUSEBENCH="$CARGO_TARGET_DIR/release/pausebench"
# Room for two versions of every key on both servers.
QUOTA=$((8 * 1024 * 1024 * 1024))

port=23000
for r in $(seq "$REPEAT"); do
    for kind in ours real; do
        port=$((port + 2))
        pid=$(start_server "$kind" "$port" --quota-backend-bytes "$QUOTA")
        echo "== $(server_label "$kind"), run $r" >&2
        "$PAUSEBENCH" --endpoint "http://127.0.0.1:$port" --keys "$KEYS" --pid "$pid" \
            --snapshot-file "$WORK/snapshot.db" | tee "$WORK/$kind.$r" >&2
        kill "$pid"; wait "$pid" 2>/dev/null || true
        rm -rf "$WORK/$kind-$port"
    done
done

# val KEY FILE: the value of a "KEY: value" line; field KEY NAME FILE: the
# NAME=value part of a "KEY: a=1 b=2" line.
val() { awk -v k="$1:" '$1 == k {print $2}' "$2"; }
field() { awk -v k="$1:" -v f="$2" '$1 == k { for (i = 2; i <= NF; i++) { split($i, a, "="); if (a[1] == f) print a[2] } }' "$3"; }
# m CMD...: the median over the runs of `$kind` (the loop's server) of
# CMD's value; w KEY NAME: the same for a field.
m() { for r in $(seq "$REPEAT"); do "$@" "$WORK/$kind.$r"; done | median; }
w() { m field "$@"; }

echo "| server | snapshot s (first byte / whole) | snapshot MB | RSS MB before / max during snapshot | writer max ms / p99 ms during snapshot |"
echo "|---|---|---|---|---|"
for kind in ours real; do
    echo "| $(server_label "$kind") | $(m val snapshot_first_byte_s) / $(m val snapshot_s) | $(m val snapshot_mb)" \
        "| $(m val rss_before_snapshot_mb) / $(m val rss_max_during_snapshot_mb) | $(w writer_snapshot max_ms) / $(w writer_snapshot p99_ms) |"
done
echo
echo "| server | writer max ms: baseline / compact / defrag | writer p99 ms: compact / defrag | compact s | defrag s | db MB before / after compact / after defrag |"
echo "|---|---|---|---|---|---|"
for kind in ours real; do
    echo "| $(server_label "$kind") | $(w writer_baseline max_ms) / $(w writer_compact max_ms) / $(w writer_defrag max_ms)" \
        "| $(w writer_compact p99_ms) / $(w writer_defrag p99_ms) | $(m val compact_s) | $(m val defrag_s)" \
        "| $(m val db_size_before_compact_mb) / $(m val db_size_after_compact_mb) / $(m val db_size_after_defrag_mb) |"
done
