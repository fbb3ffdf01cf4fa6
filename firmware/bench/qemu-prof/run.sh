#!/usr/bin/env bash
# Executed aarch64 instructions per function and per inference under qemu-aarch64: where
# the instructions that qemu-insn.sh counts go. Runs `edgedx-bench infer` with 1 and with
# RUNS inferences and folds the difference by the binary's symbols (fold.py).
#
# usage: firmware/bench/qemu-prof/run.sh EDGEDX_BENCH_AARCH64_EXE [--cpu cortex-a76]
#            [--variant int8] [--runs 6] [--bundle DIR] [--top 25]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
exe=${1:?usage: run.sh EDGEDX_BENCH_AARCH64_EXE [options]}
shift
cpu=cortex-a76 variant=int8 runs=6 top=25 bundle=$root/models/brain-mri-4class
while [ $# -gt 0 ]; do
    case $1 in
        --cpu) cpu=$2; shift 2 ;;
        --variant) variant=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --bundle) bundle=$2; shift 2 ;;
        --top) top=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gcc -O2 -shared -fPIC -fvisibility=hidden -o "$work/libtbprof.so" "$here/tbprof.c"
for n in 1 "$runs"; do
    qemu-aarch64 -cpu "$cpu" -L /usr/aarch64-linux-gnu -plugin "$work/libtbprof.so" -d plugin \
        -D "$work/$n.log" "$exe" infer --bundle "$bundle" --variant "$variant" --runs "$n" \
        2> "$work/$n.err" || { cat "$work/$n.err" >&2; exit 1; }
done
# qemu-user maps a position-independent aarch64 executable at 0x5500000000.
echo "$cpu, $variant, $(basename "$bundle"): executed instructions per inference by function"
echo
python3 "$here/fold.py" "$exe" 5500000000 "$work/1.log" "$work/$runs.log" "$runs" "$top"
