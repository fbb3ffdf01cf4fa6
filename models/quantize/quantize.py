"""Quantize a bundle's fp32 model to int8 for edgedx, calibrated on a set balanced across
difficulty strata, and put the result into the bundle as its int8 variant.

    models/quantize/quantize.sh --bundle DIR --calibration DATASET [options]

DATASET is either a directory with labels.csv (columns file,label[,class_index][,stratum],
paths relative to the directory: the gate's format) or an ImageFolder tree,
DATASET/<label>/<image> or DATASET/<label>/<stratum>/<image>. Without strata the labels
are the strata, so every class is calibrated on equally.

Steps:
 1. draw the same number of images from every stratum (seeded; the smallest stratum and
    --per-stratum bound it) and say what was drawn from each;
 2. have `edgedx preprocess` turn them into the exact tensors the device feeds the model
    (same decoder, resize mode, filter, range, channel order and DICOM window);
 3. onnxruntime's quantize_static: per-channel symmetric int8 weights (in [-127, 127],
    which edgedx's kernels for cores without dot product need), asymmetric uint8
    activations, QDQ format (or QOperator with --format qoperator);
 4. `edgedx bundle add` copies the file in as int8.onnx, records its sha256 and format,
    loads both models and reports the operators that will run in float; this tool repeats
    those as warnings, and writes calibration.json (what was drawn) into the bundle.

The gate (`edgedx gate`) decides afterwards whether the int8 model may serve.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import defaultdict
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".pgm", ".ppm", ".pbm", ".gz"}


def read_dataset(root: Path, labels: list[str]) -> list[tuple[Path, str, str]]:
    """(path, label, stratum) for every image of a CSV or ImageFolder dataset."""
    items = []
    csv_path = root / "labels.csv"
    if csv_path.is_file():
        with open(csv_path, newline="") as f:
            for line, row in enumerate(csv.DictReader(f), start=2):
                label = (row.get("label") or "").strip()
                if label not in labels:
                    raise SystemExit(f"{csv_path}:{line}: label {label!r} is not one of the bundle's {labels}")
                items.append((root / row["file"], label, (row.get("stratum") or "").strip() or label))
        return items
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if label_dir.name not in labels:
            raise SystemExit(f"{label_dir}: folder {label_dir.name!r} is not one of the bundle's labels {labels}")
        for entry in sorted(label_dir.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                for image in sorted(entry.iterdir()):
                    if image.is_file() and not image.name.startswith("."):
                        items.append((image, label_dir.name, entry.name))
            elif entry.suffix.lower() in IMAGE_SUFFIXES:
                items.append((entry, label_dir.name, label_dir.name))
    if not items:
        raise SystemExit(f"{root}: no labels.csv and no <label>/<image> folders with images")
    return items


def draw_balanced(items, per_stratum: int | None, seed: int):
    """The same number of images from each stratum: min(smallest stratum, per_stratum)."""
    by_stratum = defaultdict(list)
    for item in items:
        by_stratum[item[2]].append(item)
    n = min(len(v) for v in by_stratum.values())
    if per_stratum:
        n = min(n, per_stratum)
    rng = random.Random(seed)
    drawn = {}
    for stratum in sorted(by_stratum):
        pool = sorted(by_stratum[stratum])
        drawn[stratum] = rng.sample(pool, n)
    return drawn, {s: len(v) for s, v in by_stratum.items()}


def run(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise SystemExit(f"cannot run {cmd[0]}: {e} (pass --edgedx PATH)")
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    return out.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True, help="bundle directory (from `edgedx bundle init`)")
    ap.add_argument("--calibration", type=Path, required=True, help="calibration dataset (CSV or ImageFolder)")
    ap.add_argument("--per-stratum", type=int, default=100, help="at most this many images per stratum (default 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format", choices=["qdq", "qoperator"], default="qdq")
    ap.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax",
                    help="calibration method (onnxruntime's CalibrationMethod)")
    ap.add_argument("--edgedx", default=shutil.which("edgedx") or "edgedx",
                    help="the edgedx binary; a command with arguments is split like a shell would "
                         "(e.g. an emulator in front of an aarch64 build)")
    args = ap.parse_args()
    edgedx = shlex.split(args.edgedx)

    import numpy as np
    import onnxruntime
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    manifest = tomllib.loads((args.bundle / "manifest.toml").read_text())
    labels = manifest["bundle"]["labels"]
    fp32 = args.bundle / manifest["models"]["fp32"]["file"]
    input_name = manifest["input"]["tensor"]

    t0 = time.time()
    items = read_dataset(args.calibration, labels)
    drawn, available = draw_balanced(items, args.per_stratum, args.seed)
    print(f"calibration set {args.calibration}: {len(items)} images in {len(available)} strata")
    for stratum, chosen in drawn.items():
        per_label = defaultdict(int)
        for _, label, _ in chosen:
            per_label[label] += 1
        spread = ", ".join(f"{k} {v}" for k, v in sorted(per_label.items()))
        print(f"  {stratum:<16} drew {len(chosen):4d} of {available[stratum]:5d}  ({spread})")

    with tempfile.TemporaryDirectory(prefix="edgedx-quantize-") as tmp:
        tmp = Path(tmp)
        images = [p for chosen in drawn.values() for p, _, _ in chosen]
        (tmp / "list.txt").write_text("".join(f"{p.resolve()}\n" for p in images))
        run([*edgedx, "preprocess", "--bundle", str(args.bundle), "--out", str(tmp / "calib.npy"),
             "--list", str(tmp / "list.txt")])
        tensors = np.load(tmp / "calib.npy")
        print(f"preprocessed {len(tensors)} images by edgedx to {list(tensors.shape[1:])} "
              f"in {time.time() - t0:.1f}s")

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.i = 0

            def get_next(self):
                if self.i >= len(tensors):
                    return None
                self.i += 1
                return {input_name: tensors[self.i - 1 : self.i]}

            def rewind(self):
                self.i = 0

        prepared = tmp / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=False)
        out = tmp / "int8.onnx"
        t1 = time.time()
        quantize_static(
            str(prepared),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ if args.format == "qdq" else QuantFormat.QOperator,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method={
                "minmax": CalibrationMethod.MinMax,
                "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile,
            }[args.method],
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
        print(f"quantized with onnxruntime {onnxruntime.__version__} ({args.format}, per-channel, "
              f"s8 weights, u8 activations, {args.method}) in {time.time() - t1:.1f}s")
        report = run([*edgedx, "bundle", "add", "--bundle", str(args.bundle), "--variant", "int8", str(out)])

    print(report, end="")
    in_float = [line.split("runs in float:", 1)[1].strip() for line in report.splitlines() if "runs in float:" in line]
    for node in in_float:
        print(f"WARNING: on the device this runs in float, not on integer kernels: {node}")
    record = {
        "dataset": str(args.calibration),
        "seed": args.seed,
        "per_stratum": {s: len(c) for s, c in drawn.items()},
        "available": available,
        "images": sorted(str(p.resolve().relative_to(args.calibration.resolve())) for c in drawn.values() for p, _, _ in c),
        "format": args.format,
        "method": args.method,
        "onnxruntime": onnxruntime.__version__,
        "in_float": in_float,
    }
    (args.bundle / "calibration.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.bundle / 'calibration.json'}; next: edgedx gate --bundle {args.bundle} --dataset <test set> --write")


if __name__ == "__main__":
    sys.exit(main())
