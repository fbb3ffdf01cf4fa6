#!/usr/bin/env bash
# Rebuild the brain-mri-4class bundle end to end: dataset -> training -> quantization ->
# evaluation -> bundle. Deterministic seeds throughout; see README.md for what each step
# does and how long it takes. Needs python3.11 (venv module) and the T1 template volumes
# (default /work/shared/data/brain, override with BRAIN_DATA=/path).
#
# Everything is built in out/ (out/bundle/ is the staged bundle); only the last step
# replaces models/brain-mri-4class/ with it, by swapping directories, so nothing ever sees a
# half-written bundle. NO_INSTALL=1 stops before that step.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/out"
venv="$out/venv"
python="${PYTHON:-python3}"
data="${BRAIN_DATA:-/work/shared/data/brain}"
dest="$(cd "$here/.." && pwd)/brain-mri-4class"

mkdir -p "$out"
if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet -r "$here/requirements.txt"

# CPU only, one thread (the machine is shared with Rust builds; single-threaded XLA is also
# what makes the training run bit-reproducible on a given machine). JAX must not look for
# accelerators (there are none, and probing them only prints warnings).
export JAX_PLATFORMS=cpu
export PYTHONHASHSEED=0
export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
export OMP_NUM_THREADS=1

cd "$here"
step() { echo "== $*"; local t0=$SECONDS; "$venv/bin/python" "$@"; echo "== $1 took $((SECONDS - t0))s"; }
step make_dataset.py --data "$data"
# One cosine cycle (200-step warm-up, peak 3e-3, 45 epochs); precise batch-norm statistics
# before every candidate evaluation in the second half and before folding.
step train.py --epochs 45 --lr 3e-3
step quantize.py
rm -rf "$out/bundle"
step evaluate.py --report "$out/bundle/REPORT.md"
step bundle.py --bundle "$out/bundle"

if [[ "${NO_INSTALL:-0}" == 1 ]]; then
    echo "staged bundle in $out/bundle (not installed: NO_INSTALL=1)"
    exit 0
fi
# Install: copy next to the destination, then two renames.
parent="$(dirname "$dest")"; name="$(basename "$dest")"
rm -rf "$parent/.$name.new" "$parent/.$name.old"
cp -r "$out/bundle" "$parent/.$name.new"
if [[ -d "$dest" ]]; then mv "$dest" "$parent/.$name.old"; fi
mv "$parent/.$name.new" "$dest"
rm -rf "$parent/.$name.old"
echo "bundle installed in $dest"
