#!/usr/bin/env bash
# Moving etcd's data onto this server, timed on the same data: Debian's etcd
# 3.4 is loaded with KEYS keys (loadgen, sequential keys, 32 B keys, 256 B
# values), then
#   1. etcd's own `etcdctl snapshot save` of it (the reference: etcd reading
#      and shipping the same data);
#   2. etcd is stopped and etcd-server is started on its data directory (the
#      one-time import, etcd_import.rs): time until `endpoint health`
#      answers, peak RSS, keys served afterwards;
#   3. `etcdutl snapshot restore` of etcd's snapshot file into a new data
#      directory of this server: time and peak RSS;
#   4. `etcdctl snapshot save` of the imported data, from this server;
#   5. etcd restarted on a copy of its own stopped data directory (the
#      reference for step 2): time until `endpoint health`, peak RSS.
# Steps 2-5 run REPEAT times, each on a fresh copy of etcd's stopped data
# directory; prints each run and a Markdown table of medians.
#
#   bash benches/import.sh                 # KEYS=1000000 REPEAT=3
#   KEYS=100000 REPEAT=1 bash benches/import.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT="${REPEAT:-3}"
KEYS="${KEYS:-1000000}"
WORK="$(mktemp -d /var/tmp/etcd-import.XXXXXX)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
. benches/lib.sh

build_bins loadgen
cargo build --release -q -p etcd-server --bin etcdutl
LOADGEN="$CARGO_TARGET_DIR/release/loadgen"
ETCDUTL="$CARGO_TARGET_DIR/release/etcdutl"
QUOTA=$((8 * 1024 * 1024 * 1024))
PORT=24000
EP="http://127.0.0.1:$PORT"
ctl() { ETCDCTL_API=3 etcdctl --endpoints "$EP" "$@"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
# count: keys the server at $EP holds (a range's total count).
count() { ctl get "" --from-key --limit 1 -w json | sed -E 's/.*"count":([0-9]+).*/\1/'; }
# peak_rss_mb PID: the process's high-water RSS.
peak_rss_mb() { awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }

echo "== loading $KEYS keys into etcd $($REAL --version | awk '/etcd Version/ {print $3}')" >&2
pid=$(start_server real "$PORT" --quota-backend-bytes "$QUOTA")
t0=$(now)
"$LOADGEN" --endpoints "$EP" --conns 4 --clients 64 --total "$KEYS" --key-space-size "$KEYS" \
    --sequential-keys --key-size 32 --val-size 256 put > "$WORK/load.txt"
echo "loaded in $(secs "$t0" "$(now)") s: $(grep -E '^(qps|errors):' "$WORK/load.txt" | tr '\n' ' ')" >&2
want=$(count)
t0=$(now)
ctl snapshot save "$WORK/etcd.snap" > /dev/null 2>&1
etcd_snapshot_s=$(secs "$t0" "$(now)")
etcd_rss=$(peak_rss_mb "$pid")
kill "$pid"; wait "$pid" 2>/dev/null || true
etcd_dir="$WORK/real-$PORT"
db_mb=$(du -m "$etcd_dir/member/snap/db" | cut -f1)
echo "etcd: $want keys, db $db_mb MB, snapshot save $etcd_snapshot_s s, peak RSS $etcd_rss MB" >&2

# start_on_copy BIN: BIN (etcd-server or etcd) started on a fresh copy of
# etcd's stopped data directory, waited for until healthy; sets `pid` and
# `started_s` (seconds from launch to healthy).
start_on_copy() {
    local bin=$1 t0
    dir="$WORK/copy-$PORT"
    rm -rf "$dir"
    cp -a "$etcd_dir" "$dir"
    sync
    t0=$(now)
    "$bin" --name bench --data-dir "$dir" \
        --listen-client-urls "$EP" --advertise-client-urls "$EP" \
        --listen-peer-urls "http://127.0.0.1:$((PORT + 1))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((PORT + 1))" \
        --initial-cluster "bench=http://127.0.0.1:$((PORT + 1))" \
        --quota-backend-bytes "$QUOTA" > "$dir.log" 2>&1 &
    pid=$!
    until ctl endpoint health > /dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || { echo "$bin exited; log:" >&2; cat "$dir.log" >&2; exit 1; }
        sleep 0.05
    done
    started_s=$(secs "$t0" "$(now)")
}

for r in $(seq "$REPEAT"); do
    start_on_copy "$OURS"
    import_s=$started_s
    import_rss=$(peak_rss_mb "$pid")
    got=$(count)
    [ "$got" = "$want" ] || { echo "imported $got keys, etcd had $want" >&2; exit 1; }
    t0=$(now)
    ctl snapshot save "$WORK/ours.snap" > /dev/null 2>&1
    ours_snapshot_s=$(secs "$t0" "$(now)")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$WORK/restored"
    t0=$(now)
    /usr/bin/time -f %M -o "$WORK/restore.rss" "$ETCDUTL" snapshot restore "$WORK/etcd.snap" \
        --name bench --data-dir "$WORK/restored" \
        --initial-cluster "bench=http://127.0.0.1:$((PORT + 1))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((PORT + 1))" 2> "$WORK/restore.log"
    restore_s=$(secs "$t0" "$(now)")
    restore_rss=$(awk '{ printf "%.0f", $1 / 1024 }' "$WORK/restore.rss")
    start_on_copy "$REAL"
    etcd_restart_s=$started_s
    etcd_restart_rss=$(peak_rss_mb "$pid")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    {
        echo "import_s: $import_s"
        echo "import_peak_rss_mb: $import_rss"
        echo "restore_s: $restore_s"
        echo "restore_peak_rss_mb: $restore_rss"
        echo "ours_snapshot_s: $ours_snapshot_s"
        echo "etcd_restart_s: $etcd_restart_s"
        echo "etcd_restart_peak_rss_mb: $etcd_restart_rss"
    } | tee "$WORK/run.$r" >&2
done

m() { for r in $(seq "$REPEAT"); do awk -v k="$1:" '$1 == k {print $2}' "$WORK/run.$r"; done | median; }
echo
echo "| $KEYS keys (etcd db $db_mb MB) | time s | peak RSS MB |"
echo "|---|---|---|"
echo "| etcd 3.4: \`etcdctl snapshot save\` (reference) | $etcd_snapshot_s | $etcd_rss (etcd, after load + snapshot) |"
echo "| etcd 3.4: restart on its stopped data dir until healthy (reference) | $(m etcd_restart_s) | $(m etcd_restart_peak_rss_mb) |"
echo "| etcd-rs: start on etcd's stopped data dir (import) until healthy | $(m import_s) | $(m import_peak_rss_mb) |"
echo "| etcd-rs: \`etcdutl snapshot restore\` of etcd's snapshot | $(m restore_s) | $(m restore_peak_rss_mb) |"
echo "| etcd-rs: \`etcdctl snapshot save\` of the imported data | $(m ours_snapshot_s) | |"
