# Shared by the side-by-side scripts in benches/: builds the binaries and
# starts this project's etcd-server or Debian's etcd on loopback ports.
# Source it after setting WORK (a scratch directory).

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/etcd-rs-target}"
# OURS=path runs another build of etcd-server (an A/B of two commits).
OURS="${OURS:-$CARGO_TARGET_DIR/release/etcd-server}"
REAL="$(command -v etcd)"

# build_bins BIN...: builds etcd-server and the given benches binaries.
build_bins() {
    local args=(-p etcd-server --bin etcd-server -p benches)
    for b in "$@"; do args+=(--bin "$b"); done
    cargo build --release -q "${args[@]}"
}

# start_server KIND PORT [FLAG...]: starts `ours` or `real` single-member on
# client PORT (peer PORT+1) with a fresh data dir; prints the pid once the
# server answers `endpoint health`. With SCHEME=https the client URL is
# https (pass the TLS flags) and CTL_TLS holds etcdctl's TLS flags.
start_server() {
    local kind=$1 port=$2 dir="$WORK/$1-$2" scheme="${SCHEME:-http}"
    shift 2
    local bin=$OURS; [ "$kind" = real ] && bin=$REAL
    "$bin" --name bench --data-dir "$dir" \
        --listen-client-urls "$scheme://127.0.0.1:$port" --advertise-client-urls "$scheme://127.0.0.1:$port" \
        --listen-peer-urls "http://127.0.0.1:$((port + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))" \
        --initial-cluster "bench=http://127.0.0.1:$((port + 1))" "$@" >"$dir.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do
        # shellcheck disable=SC2086
        ETCDCTL_API=3 etcdctl --endpoints "$scheme://127.0.0.1:$port" ${CTL_TLS:-} endpoint health >/dev/null 2>&1 && { echo $pid; return 0; }
        sleep 0.1
    done
    echo "server $kind did not start; log:" >&2; cat "$dir.log" >&2; exit 1
}

# make_certs DIR: a CA and certificates made with the guides' cfssl
# workflow (RSA 2048): DIR/ca.pem; DIR/server.pem and server-key.pem
# (server and client auth, for 127.0.0.1 and localhost: client and peer
# URLs); DIR/client.pem and client-key.pem (client auth).
make_certs() {
    mkdir -p "$1"
    (
        cd "$1"
        echo '{"CN": "etcd-ca", "key": {"algo": "rsa", "size": 2048}}' > ca-csr.json
        cat > ca-config.json <<'JSON'
{"signing": {"default": {"expiry": "8760h"}, "profiles": {
  "server": {"expiry": "8760h", "usages": ["signing", "key encipherment", "server auth", "client auth"]},
  "client": {"expiry": "8760h", "usages": ["signing", "key encipherment", "client auth"]}}}}
JSON
        cfssl gencert -initca ca-csr.json 2>/dev/null | cfssljson -bare ca
        echo '{"CN": "etcd", "key": {"algo": "rsa", "size": 2048}}' > server-csr.json
        cfssl gencert -ca=ca.pem -ca-key=ca-key.pem -config=ca-config.json -profile=server \
            -hostname=127.0.0.1,localhost server-csr.json 2>/dev/null | cfssljson -bare server
        echo '{"CN": "client", "key": {"algo": "rsa", "size": 2048}}' > client-csr.json
        cfssl gencert -ca=ca.pem -ca-key=ca-key.pem -config=ca-config.json -profile=client \
            client-csr.json 2>/dev/null | cfssljson -bare client
    )
}

# stop_server PID: stops a server start_server started and returns once it
# is gone (it is not the caller's child, so `wait` cannot wait for it).
stop_server() { kill "$1" 2>/dev/null || true; while kill -0 "$1" 2>/dev/null; do sleep 0.05; done; }

# field NAME OUTPUT: the value of the `NAME: value` line of a bench
# binary's OUTPUT (watchbench, leasebench, loadgen print such lines).
field() { echo "$2" | awk -F': ' -v k="$1" '$1 == k {print $2}'; }

# server_label KIND: how a result row names the server.
server_label() {
    if [ "$1" = real ]; then echo "etcd $($REAL --version | awk '/etcd Version/ {print $3}')"; else echo etcd-rs; fi
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# cpu_ticks PID: the CPU time (user + system, in clock ticks) process PID
# has used so far (/proc/PID/stat fields 14 and 15).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# cpu_us_per_request TICKS_BEFORE TICKS_AFTER REQUESTS: server CPU
# microseconds per request between two cpu_ticks readings.
cpu_us_per_request() {
    awk -v a="$1" -v b="$2" -v n="$3" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { printf "%.1f\n", (b - a) * 1000000 / hz / n }'
}

# Per-scenario results of `ours` and `real` runs, in
# $WORK/KIND.{qps,p50,p99,cpu,lgcpu}.
# reset_runs: forget the previous scenario's runs.
reset_runs() {
    local kind f
    for kind in ours real; do for f in qps p50 p99 cpu lgcpu; do : > "$WORK/$kind.$f"; done; done
}

# record_run KIND NAME RUN OUTPUT CPU_US: keeps one loadgen report and the
# server's CPU microseconds per request; warns on errors.
record_run() {
    local kind=$1 name=$2 run=$3 out=$4 cpu=$5 errs
    echo "$out" | awk '/^qps:/ {print $2}' >> "$WORK/$kind.qps"
    echo "$out" | awk '/^latency_ms_p50:/ {print $2}' >> "$WORK/$kind.p50"
    echo "$out" | awk '/^latency_ms_p99:/ {print $2}' >> "$WORK/$kind.p99"
    echo "$cpu" >> "$WORK/$kind.cpu"
    echo "$out" | awk '/^loadgen_cpu_us_per_request:/ {print $2}' >> "$WORK/$kind.lgcpu"
    errs=$(echo "$out" | awk '/^errors:/ {print $2}')
    [ "$errs" = 0 ] || echo "warning: $kind $name run $run had $errs errors" >&2
}

# load_and_record KIND NAME RUN PID LOADGEN...: runs the loadgen command
# against server PID, stops the server, and records the run with the
# server's CPU microseconds per request.
load_and_record() {
    local kind=$1 name=$2 run=$3 pid=$4 before after out n
    shift 4
    before=$(cpu_ticks "$pid")
    out=$("$@")
    after=$(cpu_ticks "$pid")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    n=$(echo "$out" | awk '/^requests:/ {print $2}')
    record_run "$kind" "$name" "$run" "$out" "$(cpu_us_per_request "$before" "$after" "$n")"
}

# The header of print_rows' table.
print_header() {
    echo "| scenario | server | QPS (median of $REPEAT) | p50 ms | p99 ms | server CPU us/request | loadgen CPU us/request |"
    echo "|---|---|---|---|---|---|---|"
}

# print_rows NAME: the Markdown rows of a scenario (medians per server, and
# the ratios of QPS, p50 and CPU per request).
print_rows() {
    local name=$1 kind q p50 p99 cpu lg
    declare -A qps lat us
    for kind in ours real; do
        q=$(median < "$WORK/$kind.qps"); p50=$(median < "$WORK/$kind.p50"); p99=$(median < "$WORK/$kind.p99")
        cpu=$(median < "$WORK/$kind.cpu"); lg=$(median < "$WORK/$kind.lgcpu")
        qps[$kind]=$q; lat[$kind]=$p50; us[$kind]=$cpu
        echo "| $name | $(server_label "$kind") | $q | $p50 | $p99 | $cpu | $lg |"
    done
    awk -v a="${qps[ours]}" -v b="${qps[real]}" -v la="${lat[ours]}" -v lb="${lat[real]}" \
        -v ca="${us[ours]}" -v cb="${us[real]}" -v n="$name" \
        'BEGIN { printf "| %s | **ratio etcd-rs / etcd** | **%.2fx** | %.2fx | | %.2fx | |\n", n, a / b, la / lb, ca / cb }'
}
