# Sourced by scripts/server and scripts/test: installs what the build and the
# tests need on a fresh Debian machine, only when missing, and sets the
# shared build cache.
set -euo pipefail

need_pkgs=()
pkg_missing() { ! dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in "$@"; do
    if pkg_missing "$p"; then need_pkgs+=("$p"); fi
done
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    echo ">> installing Debian packages: ${need_pkgs[*]}" >&2
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >&2
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust (https://rustup.rs) first" >&2
    exit 1
fi
# One build cache outside the repo, shared by the server, tests and benches
# (RocksDB is compiled once).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/etcd-rs-target}"
