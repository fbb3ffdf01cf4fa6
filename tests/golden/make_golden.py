"""Writes golden outputs for a bundle: onnxruntime's raw outputs for each model variant on
fixed inputs, which the engine must reproduce (tests/it/golden.rs).

Inputs are chosen so that edgedx and this script build bit-identical tensors without
sharing code: the bundle's sample PNGs at exactly the model's input size (so resizing is
the identity and only x/255 and (x - mean)/std apply), and a synthetic pattern whose
formula is restated in the Rust test.

    .cache/venv/bin/python tests/golden/make_golden.py models/brain-mri-4class \
        > tests/golden/brain-mri-4class.json
"""

import hashlib
import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image


def pattern(h: int, w: int) -> np.ndarray:
    """A deterministic texture with every grey level; restated in golden.rs."""
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy * 7 + xx * 13) % 256).astype(np.float32) / np.float32(255.0)


def to_tensor(plane: np.ndarray, spec: dict) -> np.ndarray:
    """Grey plane in [0,1] -> one batch item in the bundle's layout."""
    c = spec["channels"]
    planes = np.stack([plane] * c, axis=0)  # C,H,W
    mean = np.asarray(spec["mean"], np.float32).reshape(c, 1, 1)
    std = np.asarray(spec["std"], np.float32).reshape(c, 1, 1)
    planes = (planes - mean) / std
    if spec["layout"] == "NHWC":
        planes = planes.transpose(1, 2, 0)
    return planes[None].astype(np.float32)


def main() -> None:
    bundle = Path(sys.argv[1])
    manifest = tomllib.loads((bundle / "manifest.toml").read_text())
    spec = manifest["input"]
    h, w = spec["height"], spec["width"]
    cases = []
    for png in sorted((bundle / "samples").glob("*.png")):
        img = Image.open(png)
        if img.size != (w, h) or img.mode != "L":
            continue  # only identity-size grey samples give exact tensors
        plane = np.asarray(img, dtype=np.float32) / np.float32(255.0)
        cases.append({"name": png.name, "source": {"png": f"samples/{png.name}"},
                      "tensor": to_tensor(plane, spec)})
    cases.append({"name": "pattern", "source": {"pattern": "(7y + 13x) mod 256 / 255"},
                  "tensor": to_tensor(pattern(h, w), spec)})

    variants = {}
    for name, entry in manifest["models"].items():
        path = bundle / entry["file"]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest == entry["sha256"], f"{path}: sha256 differs from the manifest"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        outputs = [sess.run([manifest["output"]["tensor"]], {spec["tensor"]: c["tensor"]})[0]
                   for c in cases]
        variants[name] = {"sha256": digest,
                          "outputs": [o.reshape(-1).astype(float).tolist() for o in outputs]}

    json.dump({
        "bundle": manifest["bundle"]["name"],
        "version": manifest["bundle"]["version"],
        "made_with": f"onnxruntime {ort.__version__}, numpy {np.__version__}",
        "cases": [{"name": c["name"], "source": c["source"]} for c in cases],
        "variants": variants,
    }, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
