#!/usr/bin/env bash
# One command for a model team: makes (once) a virtualenv with the pinned quantization
# stack, then runs quantize.py with the arguments given. See quantize.py --help.
#
#   models/quantize/quantize.sh --bundle my-bundle --calibration calibration-set/
#
# EDGEDX_QUANTIZE_VENV overrides where the virtualenv lives (default: beside this script,
# git-ignored). The edgedx binary is found on PATH, or pass --edgedx PATH.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${EDGEDX_QUANTIZE_VENV:-$here/.venv}"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "quantize.sh: installing the pinned quantization stack into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"
    echo "$want" > "$stamp"
fi
exec "$venv/bin/python" "$here/quantize.py" "$@"
