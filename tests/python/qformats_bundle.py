"""Builds a test bundle holding one small CNN in every int8 format onnxruntime's quantizer
writes, with onnxruntime's outputs on fixed inputs, for tests/it/qformats.rs.

The fp32 network (seeded weights, 3x40x56 NCHW input, so nothing is square) has the
constructs of MobileNetV3 / EfficientNet-Lite classifiers: a strided stem, a depthwise 3x3
with strides (2, 1), a depthwise 5x5, 1x1 expansions, a squeeze-excite block
(GlobalAveragePool, two 1x1 convolutions, Sigmoid, Mul), a residual Add, a Concat of two
branches, an AveragePool and a Gemm head.

onnxruntime quantizes it in every int8 format its quantizer writes (tests/python/qbundle.py):
int8-qdq (QDQ), int8 (QOperator with the com.microsoft operators: QLinearAdd, QLinearMul,
QLinearSigmoid, QLinearConcat, QLinearGlobalAveragePool, QLinearAveragePool, QGemm) and
int8-std (QOperator with standard ops only), calibrated on seeded images.

What it writes under OUT (git-ignored, derived): fp32.onnx, the three int8 files,
manifest.toml, reference.json (inputs, onnxruntime outputs per variant, the operators of
each file and the output quantization step).
"""

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import qbundle

C, H, W = 3, 40, 56
CLASSES = 5
INPUTS = 6


def build_fp32(rng: np.random.Generator) -> onnx.ModelProto:
    nodes, inits = [], []

    def weight(name, shape, fan_in):
        inits.append(numpy_helper.from_array(
            (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32), name))
        return name

    def bias(name, n):
        inits.append(numpy_helper.from_array((rng.standard_normal(n) * 0.1).astype(np.float32), name))
        return name

    def conv(x, out, cin, cout, k, stride=(1, 1), group=1, pad=None, act="Relu"):
        pad = k // 2 if pad is None else pad
        w = weight(out + "_w", (cout, cin // group, k, k), cin // group * k * k)
        b = bias(out + "_b", cout)
        y = out if act is None else out + "_pre"
        nodes.append(helper.make_node("Conv", [x, w, b], [y], kernel_shape=[k, k],
                                      strides=list(stride), pads=[pad] * 4, group=group))
        if act is not None:
            nodes.append(helper.make_node(act, [y], [out]))
        return out

    x = conv("input", "stem", C, 16, 3, stride=(2, 2))                       # 20x28
    d1 = conv(x, "dw1", 16, 16, 3, stride=(2, 1), group=16)                  # 10x28
    p1 = conv(d1, "pw1", 16, 24, 1, act=None)
    e2 = conv(p1, "ex2", 24, 48, 1)
    d2 = conv(e2, "dw2", 48, 48, 5, group=48)
    # Squeeze-excite: GAP, reduce, expand, Sigmoid, scale.
    nodes.append(helper.make_node("GlobalAveragePool", [d2], ["se_gap"]))
    s1 = conv("se_gap", "se_r", 48, 12, 1)
    s2 = conv(s1, "se_e", 12, 48, 1, act="Sigmoid")
    nodes.append(helper.make_node("Mul", [d2, s2], ["se_out"]))
    p2 = conv("se_out", "pw2", 48, 24, 1, act=None)
    nodes.append(helper.make_node("Add", [p1, p2], ["res"]))                # residual
    b1 = conv("res", "br1", 24, 16, 3, stride=(2, 2))                       # 5x14
    b2 = conv("res", "br2", 24, 16, 1, stride=(2, 2))
    nodes.append(helper.make_node("Concat", [b1, b2], ["cat"], axis=1))
    # A padded window whose padding is not counted (as Inception's branch pools).
    nodes.append(helper.make_node("AveragePool", ["cat"], ["avg"], kernel_shape=[3, 3],
                                  strides=[1, 1], pads=[1, 1, 1, 1],
                                  count_include_pad=0))                          # 5x14
    h = conv("avg", "head", 32, 64, 1)
    nodes.append(helper.make_node("GlobalAveragePool", [h], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1))
    wf = weight("fc_w", (64, CLASSES), 64)
    bf = bias("fc_b", CLASSES)
    nodes.append(helper.make_node("Gemm", ["flat", wf, bf], ["logits"]))
    graph = helper.make_graph(
        nodes, "qformats",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, C, H, W])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, CLASSES])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def images(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Smooth images in [0, 1] with structure, not noise (calibration and test inputs)."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    out = []
    for _ in range(n):
        img = np.empty((1, C, H, W), np.float32)
        for c in range(C):
            fy, fx, ph = rng.uniform(0.05, 0.4), rng.uniform(0.05, 0.4), rng.uniform(0, 6.3)
            img[0, c] = 0.5 + 0.5 * np.sin(fy * yy + fx * xx + ph) * rng.uniform(0.3, 1.0)
        out.append(np.clip(img + rng.normal(0, 0.03, img.shape).astype(np.float32), 0, 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261201)
    fp32 = build_fp32(rng)
    onnx.save(fp32, out / "fp32.onnx")
    calibration = images(rng, 24)
    tests = images(rng, INPUTS)
    spec = qbundle.InputSpec("input", C, H, W, [0.0] * 3, [1.0] * 3)
    qbundle.write(out, "qformats-test", spec, "logits", [f"class{i}" for i in range(CLASSES)],
                  calibration, tests)


if __name__ == "__main__":
    main()
