#!/usr/bin/env bash
# Builds the edgedx Debian package, installing what the build needs first.
#
#   board/deb/build.sh          arm64 (the boards), cross-built here
#   board/deb/build.sh amd64    amd64 (x86 edge boxes and this machine)
#
# Prints the path of the .deb and runs lintian on it (any error or warning fails the build;
# the package carries its overrides, board/deb/lintian-overrides, each with its reason).
set -euo pipefail
cd "$(dirname "$0")/../.."

arch=${1:-arm64}
case "$arch" in
    arm64)
        board/build-deps.sh build cross package
        target=(--target aarch64-unknown-linux-gnu)
        out=target/aarch64-unknown-linux-gnu/debian
        ;;
    amd64)
        [ "$(dpkg --print-architecture)" = amd64 ] || { echo "amd64 packages are built on amd64" >&2; exit 2; }
        board/build-deps.sh build package
        target=()
        out=target/debian
        ;;
    *)
        echo "usage: $0 [arm64|amd64]" >&2
        exit 2
        ;;
esac

# Both binaries in one cargo invocation (edgedx-ctl is its own crate), then the package
# from what was built.
cargo build --release --locked "${target[@]}" -p edgedx -p edgedx-ctl
rm -f "$out"/edgedx_*.deb
cargo deb --no-build --locked "${target[@]}" -p edgedx
deb=$(ls "$out"/edgedx_*.deb)

lintian --fail-on error,warning "$deb"
echo "$deb"
