#!/usr/bin/env bash
# What TLS and auth cost, side by side: this project's etcd-server and
# Debian's etcd 3.4, single member, same certificates (cfssl, as in
# docs/security.md), same flags, driven by the same `loadgen` in one run.
# Modes per scenario: plain HTTP; TLS with client certificates
# (--client-cert-auth); TLS plus auth (simple tokens, a non-root user whose
# role grants readwrite on the benchmark's keys, so every request goes
# through the permission check). Each scenario runs REPEAT times per server,
# alternating servers; medians are printed as a Markdown table.
#
#   bash benches/security_compare.sh            # REPEAT=3 TOTAL=20000
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT="${REPEAT:-3}"
TOTAL="${TOTAL:-20000}"
WORK="$(mktemp -d /var/tmp/etcd-security.XXXXXX)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
. benches/lib.sh
build_bins loadgen
LOADGEN="$CARGO_TARGET_DIR/release/loadgen"

C="$WORK/certs"
make_certs "$C"
SERVER_TLS=(--cert-file "$C/server.pem" --key-file "$C/server-key.pem"
    --trusted-ca-file "$C/ca.pem" --client-cert-auth)
TLS_FILES="--cacert $C/ca.pem --cert $C/client.pem --key $C/client-key.pem"

# enable_auth ENDPOINT: root, and user `bench` with readwrite on the keys
# loadgen uses (zero-padded numbers: prefix "0").
enable_auth() {
    local ctl=(etcdctl --endpoints "$1")
    # shellcheck disable=SC2206
    ctl+=($TLS_FILES)
    export ETCDCTL_API=3
    "${ctl[@]}" user add root:rootpw >/dev/null
    "${ctl[@]}" user add bench:benchpw >/dev/null
    "${ctl[@]}" role add bench >/dev/null
    "${ctl[@]}" role grant-permission bench readwrite --prefix 0 >/dev/null
    "${ctl[@]}" user grant-role bench bench >/dev/null
    # (etcdctl adds the root role on its own; it logs the first refusal)
    "${ctl[@]}" auth enable >/dev/null 2>&1
}

# scenario name | mode (plain, tls, auth) | loadgen arguments
SCENARIOS=(
    "put, 16 clients, plain|plain|--conns 4 --clients 16 --total $TOTAL --key-size 8 --val-size 256 put"
    "put, 16 clients, TLS|tls|--conns 4 --clients 16 --total $TOTAL --key-size 8 --val-size 256 put"
    "put, 16 clients, TLS + auth|auth|--conns 4 --clients 16 --total $TOTAL --key-size 8 --val-size 256 put"
    "get linearizable, 16 clients, plain|plain|--conns 4 --clients 16 --total $TOTAL --key-size 8 range --consistency l"
    "get linearizable, 16 clients, TLS|tls|--conns 4 --clients 16 --total $TOTAL --key-size 8 range --consistency l"
    "get linearizable, 16 clients, TLS + auth|auth|--conns 4 --clients 16 --total $TOTAL --key-size 8 range --consistency l"
)

print_header
port=26000
for s in "${SCENARIOS[@]}"; do
    name="${s%%|*}"; rest="${s#*|}"; mode="${rest%%|*}"; args="${rest#*|}"
    reset_runs
    for r in $(seq "$REPEAT"); do
        for kind in ours real; do
            port=$((port + 2))
            lg=("$LOADGEN")
            if [ "$mode" = plain ]; then
                pid=$(SCHEME=http CTL_TLS="" start_server "$kind" "$port")
                ep="http://127.0.0.1:$port"
            else
                pid=$(SCHEME=https CTL_TLS="$TLS_FILES" start_server "$kind" "$port" "${SERVER_TLS[@]}")
                ep="https://127.0.0.1:$port"
                # shellcheck disable=SC2206
                lg+=($TLS_FILES)
            fi
            if [ "$mode" = auth ]; then
                enable_auth "$ep"
                lg+=(--user bench:benchpw)
            fi
            # Reads need data: fill the key space first.
            case "$args" in *range*) "${lg[@]}" --endpoints "$ep" --conns 4 --clients 16 --total 100000 \
                --key-space-size 100000 --sequential-keys put >/dev/null ;; esac
            # shellcheck disable=SC2086
            load_and_record "$kind" "$name" "$r" "$pid" "${lg[@]}" --endpoints "$ep" $args
        done
    done
    print_rows "$name"
done
