"""What every test bundle of quantized networks shares (tests/python/*_bundle.py): onnxruntime
quantizes one fp32 file in each int8 format its quantizer writes, runs every file on the
test inputs, and the bundle gets a manifest and a reference.json for tests/it/qformats.rs.

  int8-qdq   QuantFormat.QDQ (onnxruntime's default)
  int8       QuantFormat.QOperator as onnxruntime writes it, with the com.microsoft
             operators (QLinearAdd, QLinearGlobalAveragePool, QGemm, ...)
  int8-std   QuantFormat.QOperator restricted to standard ONNX ops (QLinearConv,
             QLinearMatMul), everything else in float

These three: per-channel symmetric s8 weights, u8 asymmetric activations. Two more cover
the other choices a model team can make:

  int8-s8    quantize_static with none of its options set, what a model team gets by
             default: QDQ, one scale per tensor, s8 activations and s8 weights
  int8-u8w   QOperator with per-tensor asymmetric u8 weights (onnxruntime's former
             default) and u8 activations
  int8-qdq-u8w  QDQ with per-channel u8 weights, asked to be asymmetric, and u8
             activations (onnxruntime 1.x gives most channels the zero point 128)

All with MinMax calibration.
"""

import hashlib
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                      quantize_static)
from PIL import Image

_PER_CHANNEL_S8 = dict(per_channel=True, weight_type=QuantType.QInt8,
                      activation_type=QuantType.QUInt8,
                      extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
VARIANTS = {
    "int8-qdq": dict(quant_format=QuantFormat.QDQ, **_PER_CHANNEL_S8),
    "int8": dict(quant_format=QuantFormat.QOperator, **_PER_CHANNEL_S8),
    "int8-std": dict(quant_format=QuantFormat.QOperator, op_types_to_quantize=["Conv", "MatMul"],
                     **_PER_CHANNEL_S8),
    "int8-s8": dict(),
    "int8-u8w": dict(quant_format=QuantFormat.QOperator, weight_type=QuantType.QUInt8,
                     activation_type=QuantType.QUInt8,
                     extra_options={"WeightSymmetric": False, "ActivationSymmetric": False}),
    "int8-qdq-u8w": dict(quant_format=QuantFormat.QDQ, per_channel=True,
                         weight_type=QuantType.QUInt8, activation_type=QuantType.QUInt8,
                         extra_options={"WeightSymmetric": False,
                                        "ActivationSymmetric": False}),
}


@dataclass
class InputSpec:
    tensor: str
    channels: int
    height: int
    width: int
    mean: list[float]
    std: list[float]


class _Reader(CalibrationDataReader):
    def __init__(self, name: str, data: list[np.ndarray]):
        self.it = iter([{name: d} for d in data])

    def get_next(self):
        return next(self.it, None)


def photo_dir() -> Path:
    """scikit-image's photographs (a cat, a cup of coffee, a rocket, ...), which it ships in
    its wheel: real images for the ImageNet-sized networks."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("scikit-image (tests/python/requirements.txt) is not installed: it ships the photographs")
    return Path(spec.submodule_search_locations[0]) / "data"


def views(img: Image.Image, size: int) -> list[Image.Image]:
    """The centre crop (short side resized to 256/224 of `size`), then other crops and a
    mirror image: test and calibration inputs from one photograph."""
    w, h = img.size
    s = size * 256 / 224 / min(w, h)
    img = img.convert("RGB").resize((max(size, round(w * s)), max(size, round(h * s))),
                                    Image.BILINEAR)
    w, h = img.size
    cx, cy = (w - size) // 2, (h - size) // 2
    centre = img.crop((cx, cy, cx + size, cy + size))
    corner = img.crop((0, 0, size, size))
    whole = img.resize((size, size), Image.BILINEAR)
    return [centre, corner, whole, centre.transpose(Image.FLIP_LEFT_RIGHT)]


def normalized(img: Image.Image, mean: list[float], std: list[float]) -> np.ndarray:
    """An image as a network's 1xCxHxW float input: (pixel / 255 - mean) / std per channel."""
    x = np.asarray(img.convert("RGB"), np.float32) / 255.0
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return ((x - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)


def output_step(model: onnx.ModelProto) -> float | None:
    """The scale of the DequantizeLinear (or QGemm y_scale) that makes the graph output."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = model.graph.output[0].name
    for n in model.graph.node:
        if out in n.output:
            if n.op_type == "DequantizeLinear":
                return float(np.max(inits[n.input[1]]))
            if n.op_type == "QGemm" and len(n.input) > 7 and n.input[7]:
                return float(np.max(inits[n.input[7]]))
    return None


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def write(out: Path, name: str, spec: InputSpec, output: str, labels: list[str],
          calibration: list[np.ndarray], tests: list[np.ndarray], kind: str = "logits",
          quantize_from: Path | None = None) -> dict:
    """Quantizes OUT/fp32.onnx (or `quantize_from`, the same network prepared for the
    quantizer) three ways, runs every file on `tests` and writes manifest.toml and
    reference.json; returns the reference."""
    fp32 = quantize_from or out / "fp32.onnx"
    for variant, opts in VARIANTS.items():
        quantize_static(str(fp32), str(out / f"{variant}.onnx"),
                        _Reader(spec.tensor, calibration), **opts)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    ref = {"inputs": [t.flatten().tolist() for t in tests], "outputs": {}, "ops": {},
           "output_step": {}, "made_with": f"onnxruntime {ort.__version__}"}
    for variant in ["fp32", *VARIANTS]:
        path = out / f"{variant}.onnx"
        sess = ort.InferenceSession(str(path), so)
        ref["outputs"][variant] = [sess.run(None, {spec.tensor: t})[0].flatten().tolist()
                                   for t in tests]
        m = onnx.load(path)
        ref["ops"][variant] = sorted({f"{n.domain + '.' if n.domain else ''}{n.op_type}"
                                      for n in m.graph.node})
        ref["output_step"][variant] = output_step(m)
    models = "".join(f"""
[models.{variant}]
file = "{variant}.onnx"
sha256 = "{_sha(out / f'{variant}.onnx')}"
precision = "{'fp32' if variant == 'fp32' else 'int8'}"
quantization = "{'none' if variant == 'fp32' else ('qdq' if VARIANTS[variant].get('quant_format', QuantFormat.QDQ) == QuantFormat.QDQ else 'qoperator')}"
""" for variant in ["fp32", *VARIANTS])
    (out / "manifest.toml").write_text(f"""schema_version = 1

[bundle]
name = "{name}"
version = "0.0.1-test"
task = "image-classification"
labels = {json.dumps(labels)}

[input]
tensor = "{spec.tensor}"
layout = "NCHW"
height = {spec.height}
width = {spec.width}
channels = {spec.channels}
colour = "rgb"
mean = {json.dumps(spec.mean)}
std = {json.dumps(spec.std)}

[output]
tensor = "{output}"
kind = "{kind}"
{models}""")
    (out / "reference.json").write_text(json.dumps(ref))
    print(f"{name} bundle in {out}: " + "; ".join(f"{k}: {' '.join(v)}" for k, v in ref["ops"].items()))
    return ref
