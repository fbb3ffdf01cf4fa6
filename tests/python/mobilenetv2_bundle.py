"""Builds a test bundle of MobileNetV2 (width 1.0, 224x224 RGB, 1000 classes), in fp32 and
every int8 format onnxruntime's quantizer writes (tests/python/qbundle.py), for
tests/it/qformats.rs.

The architecture is the benchmark's (firmware/bench/edge224.py builds it, one place for
it): inverted residual blocks of a 1x1 expansion, a 3x3 depthwise convolution (stride 1 or
2) and a 1x1 projection, ReLU6 as Clip, residual Adds, a global average pool and a Gemm
head. No package on PyPI ships MobileNetV2's trained weights without torch downloading
them at run time, so the weights are edge224.py's seeded ones; the inputs are
scikit-image's photographs. A seeded network's top classes can be close, which the test's
tie rule (tests/it/qformats.rs) covers.

What it writes under OUT (git-ignored, derived): fp32.onnx, the int8 variants,
manifest.toml, reference.json.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from PIL import Image

import qbundle

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "firmware" / "bench"))
import edge224  # noqa: E402  (the benchmark's MobileNetV2)

PHOTOS = ["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    out = ap.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(edge224.mobilenet_v2(edge224.SEED), out / "fp32.onnx")
    photos = qbundle.photo_dir()
    tests, calibration = [], []
    for name in PHOTOS:
        shots = [qbundle.normalized(s, edge224.MEAN, edge224.STD)
                 for s in qbundle.views(Image.open(photos / name), edge224.SIDE)]
        tests.append(shots[0])
        calibration += shots
    spec = qbundle.InputSpec("input", 3, edge224.SIDE, edge224.SIDE, edge224.MEAN, edge224.STD)
    labels = [f"class-{i}" for i in range(edge224.CLASSES)]
    qbundle.write(out, "mobilenetv2-test", spec, "logits", labels, calibration, tests)


if __name__ == "__main__":
    main()
