"""Reference preprocessing for edgedx's [input] modes, written the way a training pipeline
does it with PIL (and torchvision's arithmetic for Resize + CenterCrop), to check that
`edgedx preprocess` feeds a model what it saw in training.

  preprocess_reference.py inputs DIR
      writes DIR/tiny-nchw.onnx, DIR/tiny-nhwc.onnx (3-channel classifiers with real
      ONNX graphs: ReduceMean -> Gemm), DIR/broken-nchw.onnx (the NCHW one with an
      operator no runtime knows), DIR/labels.txt and test images
      (a non-square colour PNG and a grey PNG)
  preprocess_reference.py compare BUNDLE TENSORS.npy IMAGE...
      recomputes the tensors from BUNDLE/manifest.toml's [input] with PIL and prints one
      JSON line: {"shape": [...], "max_abs_diff": x, "scale": s}
"""

import json
import math
import sys
import tomllib
from pathlib import Path

import numpy as np
from PIL import Image

FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def make_inputs(out: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for layout in ("nchw", "nhwc"):
        shape = ["N", 3, 64, 64] if layout == "nchw" else ["N", 64, 64, 3]
        axes = [2, 3] if layout == "nchw" else [1, 2]
        w = helper.make_tensor("w", TensorProto.FLOAT, [3, 4], rng.normal(size=12).tolist())
        b = helper.make_tensor("b", TensorProto.FLOAT, [4], [0.1, -0.2, 0.3, 0.0])
        ax = helper.make_tensor("axes", TensorProto.INT64, [2], axes)
        nodes = [
            helper.make_node("ReduceMean", ["image", "axes"], ["pooled"], keepdims=0),
            helper.make_node("Gemm", ["pooled", "w", "b"], ["logits"]),
        ]
        graph = helper.make_graph(
            nodes,
            f"tiny-{layout}",
            [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
            [w, b, ax],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, out / f"tiny-{layout}.onnx")
        if layout == "nchw":
            # The same interface around an operator no runtime knows: loads as ONNX, fails
            # on the engine (for `bundle add`'s nothing-changes-on-failure test).
            nodes.insert(1, helper.make_node("Mystery", ["pooled"], ["mystery"], domain="com.example"))
            nodes[2].input[0] = "mystery"
            broken = helper.make_graph(nodes, "broken", graph.input, graph.output, [w, b, ax])
            broken = helper.make_model(broken, opset_imports=[helper.make_opsetid("", 18),
                                                              helper.make_opsetid("com.example", 1)])
            broken.ir_version = 8
            onnx.save(broken, out / "broken-nchw.onnx")
    (out / "labels.txt").write_text("red\ngreen\nblue\nother\n")
    # Smooth colour gradients with texture: resampling errors show, values stay exact.
    y, x = np.mgrid[0:61, 0:97]
    rgb = np.stack(
        [
            (x * 255 // 96),
            (y * 255 // 60),
            ((x + y) * 7 + (x * y) % 23) % 256,
        ],
        axis=-1,
    ).astype(np.uint8)
    Image.fromarray(rgb, "RGB").save(out / "colour.png")
    grey = ((x * 3 + y * 5) % 256).astype(np.uint8)[:50, :80]
    Image.fromarray(grey, "L").save(out / "grey.png")


def planes(path: Path, colour: str) -> list:
    """The image as float planes in [0, 1], in RGB order (or one grey plane)."""
    img = Image.open(path)
    if colour == "grey":
        return [np.asarray(img.convert("L"), dtype=np.float32) / 255.0]
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return [rgb[..., c] for c in range(3)]


def resize_plane(p: np.ndarray, size, box_filter) -> np.ndarray:
    return np.asarray(Image.fromarray(p, "F").resize(size, box_filter), dtype=np.float32)


def fit(p: np.ndarray, spec: dict) -> np.ndarray:
    th, tw = spec["height"], spec["width"]
    h, w = p.shape
    flt = FILTERS[spec.get("filter", "bilinear")]
    mode = spec.get("resize", "stretch")
    if mode == "stretch":
        return resize_plane(p, (tw, th), flt)
    if mode == "centre-crop":
        # torchvision: Resize(int(size / crop_fraction)) on the short side, the long side
        # truncated, then CenterCrop(size) with Python's round.
        assert th == tw, "the reference covers square inputs (torchvision's usual case)"
        short = math.floor(th / spec["crop_fraction"] + 1e-9)
        if w <= h:
            rw, rh = short, int(short * h / w)
        else:
            rh, rw = short, int(short * w / h)
        r = resize_plane(p, (rw, rh), flt)
        top, left = int(round((rh - th) / 2.0)), int(round((rw - tw) / 2.0))
        return r[top : top + th, left : left + tw]
    if mode == "letterbox":
        scale = min(tw / w, th / h)
        rw = min(max(round(w * scale), 1), tw)
        rh = min(max(round(h * scale), 1), th)
        canvas = np.full((th, tw), spec.get("pad", 0.0), dtype=np.float32)
        top, left = (th - rh) // 2, (tw - rw) // 2
        canvas[top : top + rh, left : left + rw] = resize_plane(p, (rw, rh), flt)
        return canvas
    raise SystemExit(f"unknown resize {mode}")


def reference(spec: dict, path: Path) -> np.ndarray:
    colour = spec["colour"]
    ps = [fit(p, spec) for p in planes(path, "grey" if colour == "grey" else "rgb")]
    if colour == "bgr":
        ps = ps[::-1]
    gain = 255.0 if spec.get("range", "0-1") == "0-255" else 1.0
    chans = [
        (p * np.float32(gain) - np.float32(m)) / np.float32(s)
        for p, m, s in zip(ps, spec["mean"], spec["std"])
    ]
    axis = 0 if spec["layout"] == "NCHW" else -1
    return np.stack(chans, axis=axis)


def compare(bundle: Path, tensors: Path, images: list) -> None:
    spec = tomllib.loads((bundle / "manifest.toml").read_text())["input"]
    got = np.load(tensors)
    want = np.stack([reference(spec, Path(i)) for i in images])
    scale = (255.0 if spec.get("range", "0-1") == "0-255" else 1.0) / min(spec["std"])
    diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    print(json.dumps({"shape": list(got.shape), "want_shape": list(want.shape), "max_abs_diff": diff, "scale": scale}))


if __name__ == "__main__":
    if sys.argv[1] == "inputs":
        make_inputs(Path(sys.argv[2]))
    elif sys.argv[1] == "compare":
        compare(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:])
    else:
        raise SystemExit(__doc__)
