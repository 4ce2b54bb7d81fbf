#!/usr/bin/env bash
# Builds deploy/Dockerfile.local: a FROM scratch dockward image from a binary built on this
# machine, its shared libraries and the dynamic loader. Pulls nothing.
#
#   deploy/build-local-image.sh [BINARY [TAG [DOCKER BUILD ARGS...]]]
#
#   BINARY  default target/release/dockward, else target/debug/dockward
#   TAG     default dockward:local
#   the rest is passed to `docker build` (e.g. --label key=value)
#
# The binary gets the CAP_NET_BIND_SERVICE file capability when `setcap` (libcap2-bin) is
# there and this runs as root, so the non-root image can listen on ports below 1024; without
# it, a warning, and only ports from 1024 up work.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root_dir="$(dirname "$here")"
bin="${1:-}"
if [ -z "$bin" ]; then
    bin="$root_dir/target/release/dockward"
    [ -x "$bin" ] || bin="$root_dir/target/debug/dockward"
fi
tag="${2:-dockward:local}"
shift $(($# < 2 ? $# : 2))
[ -x "$bin" ] || { echo "build-local-image: no executable at $bin (cargo build -p dockward first)" >&2; exit 1; }

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
rootfs="$ctx/rootfs"

install -D -m 0755 "$bin" "$rootfs/usr/local/bin/dockward"

# Every library ldd resolves (`name => /path (addr)`) and the loader (`/lib64/ld-... (addr)`),
# each at the path the binary looks for it. A static binary has none: ldd then fails, fine.
libs="$(ldd "$bin" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' || true)"
for lib in $libs; do
    mkdir -p "$rootfs$(dirname "$lib")"
    # -L: the file a symlink such as libc.so.6 points to, under the link's name.
    cp -L --preserve=mode "$lib" "$rootfs$lib"
done

if command -v setcap >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    setcap cap_net_bind_service=+ep "$rootfs/usr/local/bin/dockward"
else
    echo "build-local-image: no setcap or not root: the image cannot listen on ports below 1024" >&2
fi

# --xattrs keeps security.capability; owned by root like any image's files.
tar --xattrs --xattrs-include=security.capability --numeric-owner --owner=0 --group=0 \
    -C "$rootfs" -cf "$ctx/rootfs.tar" .
cp "$here/Dockerfile.local" "$ctx/Dockerfile"
docker build --pull=false -q -t "$tag" "$@" "$ctx" >/dev/null
echo "$tag"
