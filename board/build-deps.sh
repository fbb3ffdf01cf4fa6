#!/usr/bin/env bash
# Installs what building, cross-building, testing or packaging edgedx needs on a Debian or
# Ubuntu machine, and nothing that is already there. Safe to rerun; uses sudo when not root.
#
#   board/build-deps.sh build     cargo build / cargo run on this machine (cmake for CharLS,
#                                 g++, libclang for the V4L2 bindings)
#   board/build-deps.sh cross     + the aarch64 cross toolchain and Rust target
#   board/build-deps.sh test      + qemu-user (aarch64 tests), python3-venv, chromium (the gate's
#                                 HTML report is checked in a headless browser), clippy, rustfmt
#   board/build-deps.sh package   + cargo-deb, lintian and dpkg-dev (board/deb/build.sh)
#
# Several purposes may be given at once. The Rust toolchain itself (rustup) is assumed.
set -euo pipefail

TARGET=aarch64-unknown-linux-gnu
CARGO_DEB_VERSION=3.8.0

need=()
want_cmd() { command -v "$1" >/dev/null 2>&1 || need+=("$2"); }
want_pkg() { dpkg -s "$1" >/dev/null 2>&1 || need+=("$1"); }

for purpose in "${@:-build}"; do
    case "$purpose" in
        build)
            want_cmd cmake cmake
            want_cmd gcc gcc
            want_cmd g++ g++
            want_pkg libclang-dev
            ;;
        cross)
            want_cmd aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu
            want_cmd aarch64-linux-gnu-g++ g++-aarch64-linux-gnu
            [ -e /usr/aarch64-linux-gnu/lib/crt1.o ] || need+=(libc6-dev-arm64-cross)
            ;;
        test)
            want_cmd qemu-aarch64 qemu-user
            want_cmd systemd-analyze systemd
            python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
            want_cmd chromium chromium
            ;;
        package)
            want_cmd lintian lintian
            want_cmd dpkg-shlibdeps dpkg-dev
            want_cmd fakeroot fakeroot
            ;;
        *)
            echo "usage: $0 [build|cross|test|package]..." >&2
            exit 2
            ;;
    esac
done

if [ ${#need[@]} -gt 0 ]; then
    echo "build-deps: installing ${need[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    # Debian's docker-clean apt hook can fail the first attempt ("cannot access archive").
    installed=no
    for attempt in 1 2 3; do
        if $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"; then
            installed=yes
            break
        fi
        echo "apt-get failed (attempt $attempt), retrying" >&2
        sleep 2
    done
    if [ "$installed" != yes ]; then
        echo "build-deps: could not install ${need[*]}" >&2
        exit 1
    fi
fi

for purpose in "${@:-build}"; do
    case "$purpose" in
        cross)
            rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
            ;;
        test)
            rustup component list --installed | grep -q '^clippy' || rustup component add clippy
            rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
            ;;
        package)
            if ! cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
                cargo install --locked --version "$CARGO_DEB_VERSION" cargo-deb
            fi
            ;;
    esac
done
