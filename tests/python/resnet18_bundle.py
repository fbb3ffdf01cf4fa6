"""Builds a test bundle of a ResNet-18-style network, in fp32 and every int8 format
onnxruntime's quantizer writes (tests/python/qbundle.py), for tests/it/qformats.rs,
edgedx-bench and firmware/bench/qemu-insn.sh.

The graph is torchvision's ResNet-18 as its ONNX export writes it: a 7x7 stride-2 stem
(pads 3), a 3x3 stride-2 max pool with padding, four stages of two basic blocks (3x3
convolutions, batch norms folded, residual Add then Relu; stages 2-4 open with a stride-2
block whose shortcut is a 1x1 stride-2 convolution), a global average pool, Flatten and a
Gemm over 1000 classes, on 224x224 RGB.

No package on PyPI ships ResNet-18's trained weights without torch downloading them at run
time, so the weights are seeded: He-normal convolutions, biases and the residual branch's
last convolution scaled down (as a trained network's last batch norm of a block is), so
that activations keep their range through the 8 blocks. The inputs are scikit-image's
photographs. A seeded network's top classes can be close, which the test's tie rule
(tests/it/qformats.rs) covers.

What it writes under OUT (git-ignored, derived): fp32.onnx, the int8 variants,
manifest.toml, reference.json.
"""

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import qbundle

SIZE = 224
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
PHOTOS = ["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png"]
SEED = 18


def build_fp32(rng: np.random.Generator) -> onnx.ModelProto:
    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def conv(x, name, cin, cout, k, stride, gain=1.0, relu=True):
        w = rng.normal(0.0, gain * np.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k))
        b = rng.normal(0.0, 0.05, cout)
        pad = k // 2
        nodes.append(helper.make_node(
            "Conv", [x, const(f"{name}.w", w), const(f"{name}.b", b)], [f"{name}.y"],
            kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4))
        if not relu:
            return f"{name}.y"
        nodes.append(helper.make_node("Relu", [f"{name}.y"], [f"{name}.r"]))
        return f"{name}.r"

    x = conv("input", "stem", 3, 64, 7, 2)
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3],
                                  strides=[2, 2], pads=[1, 1, 1, 1]))
    x, cin = "pool", 64
    for stage, cout in enumerate([64, 128, 256, 512]):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            name = f"layer{stage + 1}.{block}"
            y = conv(x, f"{name}.conv1", cin, cout, 3, stride)
            y = conv(y, f"{name}.conv2", cout, cout, 3, 1, gain=0.5, relu=False)
            shortcut = x
            if stride != 1 or cin != cout:
                shortcut = conv(x, f"{name}.downsample", cin, cout, 1, stride, relu=False)
            nodes.append(helper.make_node("Add", [y, shortcut], [f"{name}.sum"]))
            nodes.append(helper.make_node("Relu", [f"{name}.sum"], [f"{name}.out"]))
            x, cin = f"{name}.out", cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1))
    # Rows of zero sum: the pooled features (after Relu, all positive) share a large common
    # part, which would otherwise give one class to every image.
    fc_w = rng.normal(0.0, np.sqrt(1.0 / 512), (1000, 512))
    fc_w = const("fc.w", fc_w - fc_w.mean(axis=1, keepdims=True))
    fc_b = const("fc.b", rng.normal(0.0, 0.01, 1000))
    nodes.append(helper.make_node("Gemm", ["flat", fc_w, fc_b], ["logits"], transB=1))
    graph = helper.make_graph(
        nodes, "resnet18-style",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def tensor(img: Image.Image) -> np.ndarray:
    return qbundle.normalized(img, MEAN, STD)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    out = ap.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(build_fp32(np.random.default_rng(SEED)), out / "fp32.onnx")
    photos = qbundle.photo_dir()
    tests, calibration = [], []
    for name in PHOTOS:
        shots = [tensor(s) for s in qbundle.views(Image.open(photos / name), SIZE)]
        tests.append(shots[0])
        calibration += shots
    spec = qbundle.InputSpec("input", 3, SIZE, SIZE, MEAN, STD)
    labels = [f"class-{i}" for i in range(1000)]
    qbundle.write(out, "resnet18-style-test", spec, "logits", labels, calibration, tests)


if __name__ == "__main__":
    main()
