"""Builds the benchmark's standard edge CNN: MobileNetV2 (width 1.0, 224x224 RGB, 1000
classes) as an edgedx bundle with fp32, int8 (QOperator, standard ONNX ops only) and
int8-qdq variants.

Real ImageNet weights cannot be downloaded here (only crates.io, PyPI and Debian are
reachable), so the architecture is written out with onnx.helper and given seeded random
weights (He-normal, batch norm already folded into conv biases, as exporters emit it after
constant folding). The latency is still representative: every kernel tract and onnxruntime
run is dense, so the work depends on the shapes (3.5 M parameters, ~300 M multiply-adds),
not on the weight values. Only the class probabilities are meaningless, which does not
matter for a speed comparison; numerical agreement between runtimes is still checked.

The quantization uses the project's own settings (models/pipeline/quantize.py): uint8
asymmetric activations, int8 symmetric per-channel weights, MinMax calibration, and only
ops whose quantized forms are standard ONNX (Conv, Clip, Relu, MaxPool): the residual
Adds, the pooling and the classifier stay float between DequantizeLinear/QuantizeLinear.

Output (derived files, never committed): OUT/{fp32,int8,int8-qdq}.onnx, OUT/manifest.toml.
Same seed, same onnx/onnxruntime versions -> the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20261122
SIDE = 224
CLASSES = 1000
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
# MobileNetV2 inverted residual settings (expansion t, channels c, repeats n, stride s),
# Sandler et al. 2018, Table 2.
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1)]


class Builder:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0
        self.params = 0

    def name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}_{self.count}"

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        self.params += value.size
        return name

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int, groups: int, act: bool) -> str:
        n = self.name("conv")
        fan_in = (cin // groups) * k * k
        w = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), (cout, cin // groups, k, k)).astype(np.float32)
        b = self.rng.normal(0.0, 0.01, cout).astype(np.float32)
        out = n + "_out"
        self.nodes.append(helper.make_node(
            "Conv", [x, self.const(n + "_w", w), self.const(n + "_b", b)], [out], name=n,
            kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4, group=groups))
        if not act:
            return out
        r = self.name("relu6")
        self.nodes.append(helper.make_node("Clip", [out, "clip_min", "clip_max"], [r + "_out"], name=r))
        return r + "_out"

    def block(self, x: str, cin: int, cout: int, stride: int, t: int) -> str:
        hidden = cin * t
        y = x if t == 1 else self.conv(x, cin, hidden, 1, 1, 1, True)
        y = self.conv(y, hidden, hidden, 3, stride, hidden, True)
        y = self.conv(y, hidden, cout, 1, 1, 1, False)
        if stride == 1 and cin == cout:
            n = self.name("add")
            self.nodes.append(helper.make_node("Add", [x, y], [n + "_out"], name=n))
            y = n + "_out"
        return y


def mobilenet_v2(seed: int) -> onnx.ModelProto:
    b = Builder(np.random.default_rng(seed))
    b.inits.append(numpy_helper.from_array(np.array(0.0, np.float32), "clip_min"))
    b.inits.append(numpy_helper.from_array(np.array(6.0, np.float32), "clip_max"))
    x = b.conv("input", 3, 32, 3, 2, 1, True)
    cin = 32
    for t, c, n, s in SETTINGS:
        for i in range(n):
            x = b.block(x, cin, c, s if i == 0 else 1, t)
            cin = c
    x = b.conv(x, cin, 1280, 1, 1, 1, True)
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
    b.nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1))
    w = b.rng.normal(0.0, np.sqrt(1.0 / 1280), (CLASSES, 1280)).astype(np.float32)
    b.nodes.append(helper.make_node("Gemm", ["flat", b.const("fc_w", w), b.const("fc_b", np.zeros(CLASSES, np.float32))],
                                    ["logits"], name="classifier", transB=1))
    graph = helper.make_graph(
        b.nodes, "mobilenet_v2_random",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="edgedx-bench edge224.py")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    print(f"MobileNetV2: {len(b.nodes)} nodes, {b.params / 1e6:.2f} M parameters")
    return model


def calibration_images(seed: int, count: int) -> np.ndarray:
    """Smooth random RGB images (low-frequency noise upsampled), normalised like ImageNet
    inputs, so activations have the spatial structure of photographs rather than white noise."""
    rng = np.random.default_rng(seed + 1)
    coarse = rng.uniform(0.0, 1.0, (count, 3, 14, 14)).astype(np.float32)
    img = coarse.repeat(16, axis=2).repeat(16, axis=3)
    img = np.clip(img + rng.normal(0.0, 0.05, img.shape).astype(np.float32), 0.0, 1.0)
    mean = np.array(MEAN, np.float32)[None, :, None, None]
    std = np.array(STD, np.float32)[None, :, None, None]
    return ((img - mean) / std).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", type=Path, required=True, help="models/pipeline (for its quantizer helpers)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()
    sys.path.insert(0, str(args.pipeline))
    from quantize import SplitReader, check_standard_ops  # the project's own pipeline code
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    t0 = time.time()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    fp32 = out / "fp32.onnx"
    onnx.save(mobilenet_v2(args.seed), fp32)
    calib = calibration_images(args.seed, 16)
    for name, fmt in (("int8.onnx", QuantFormat.QOperator), ("int8-qdq.onnx", QuantFormat.QDQ)):
        quantize_static(str(fp32), str(out / name), SplitReader(calib, batch=4), quant_format=fmt,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "Clip", "Relu", "MaxPool"],
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        print(f"{name}: ops {check_standard_ops(out / name)}")

    def sha(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    labels = ", ".join(f'"class-{i:04d}"' for i in range(CLASSES))
    variants = "".join(f"""
[models.{v}]
file = "{v}.onnx"
sha256 = "{sha(out / (v + '.onnx'))}"
precision = "{'fp32' if v == 'fp32' else 'int8'}"
quantization = "{q}"
""" for v, q in (("int8", "qoperator"), ("fp32", "none"), ("int8-qdq", "qdq")))
    (out / "manifest.toml").write_text(f"""# Benchmark bundle written by firmware/bench/edge224.py: MobileNetV2 with seeded RANDOM
# weights (latency is representative, the classes are not). Not for serving.
schema_version = 1

[bundle]
name = "edge224-mobilenetv2-random"
version = "0.0.0-bench"
task = "image-classification"
labels = [{labels}]

[input]
tensor = "input"
layout = "NCHW"
height = {SIDE}
width = {SIDE}
channels = 3
colour = "rgb"
mean = {MEAN}
std = {STD}

[output]
tensor = "logits"
kind = "logits"
{variants}""")
    print(f"edge224 bundle in {out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
