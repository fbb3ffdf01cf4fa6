"""A real MobileNetV3 classifier as model teams download it, in every int8 format
onnxruntime's quantizer writes (tests/python/qbundle.py).

The network is PaddleOCR's text-direction classifier (ch_ppocr_mobile_v2.0_cls), the ONNX
file with its trained weights that the rapidocr-onnxruntime wheel on PyPI ships: a
MobileNetV3-small-style backbone (HardSigmoid squeeze-excite gates, hard-swish written as
x * Clip(x + 3, 0, 6) / 6, 3x3 and 5x5 depthwise layers with strides (2, 1), unfolded
BatchNormalization), a Reshape head built from Shape/Slice/Concat, a MatMul and a Softmax,
on a non-square 48x192 input. It tells a line of text upright ("0") from upside down
("180").

Only the wheel is downloaded (pip download --no-deps; its Python dependencies are not
needed), pinned by version and by the SHA-256 of the ONNX file in it. The file's input is
dynamic (-1, 3, ?, ?): the bundle fixes it at 1x3x48x192, the classifier's own input size.
onnxruntime's quant_pre_process (shape inference and the Conv+BatchNormalization fusion
that onnxruntime's documentation asks for before quantizing) prepares what is quantized;
fp32.onnx is the file itself with the fixed input, BatchNormalization and all.

The test lines are rendered with Pillow's default font: the fp32 file must give every
upright line "0" and every turned line "180" before anything is quantized.
"""

import argparse
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
import onnxruntime as ort
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image, ImageDraw, ImageFont

import qbundle

WHEEL = "rapidocr-onnxruntime==1.4.4"
MEMBER = "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
MODEL_SHA256 = "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"
HEIGHT, WIDTH = 48, 192
# PaddleOCR's classifier preprocessing: (pixel / 255 - 0.5) / 0.5.
MEAN, STD = 0.5, 0.5
LINES = ["edgedx 2026", "Patient 0412", "MRI T2 FLAIR", "brain scan", "AXIAL 5mm",
         "Series 7 of 9", "Hello world", "radiology", "int8 or fp32", "exam room 3"]


def model_bytes(cache: Path) -> bytes:
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("rapidocr_onnxruntime-1.4.4-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--disable-pip-version-check", WHEEL, "-d", str(cache)], check=True)
        wheels = sorted(cache.glob("rapidocr_onnxruntime-1.4.4-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        data = z.read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != MODEL_SHA256:
        sys.exit(f"{MEMBER} in {wheels[0].name} has SHA-256 {digest}, expected {MODEL_SHA256}")
    return data


def fixed_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """The file with its input fixed at 1x3x48x192 and its output at 1x2."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, [1, 3, HEIGHT, WIDTH]):
        d.Clear()
        d.dim_value = v
    out = model.graph.output[0].type.tensor_type.shape.dim
    for d, v in zip(out, [1, 2]):
        d.Clear()
        d.dim_value = v
    onnx.checker.check_model(model)
    return model


def line_image(text: str, size: int, ink: int, paper: int, turned: bool) -> Image.Image:
    """A line of text as the classifier sees it: 48 high, padded on the right to 192."""
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = font.getbbox(text)
    img = Image.new("L", (right - left + 8, bottom - top + 8), paper)
    ImageDraw.Draw(img).text((4 - left, 4 - top), text, fill=ink, font=font)
    if turned:
        img = img.rotate(180)
    w = min(WIDTH, max(1, round(img.width * HEIGHT / img.height)))
    line = Image.new("L", (WIDTH, HEIGHT), 0)
    line.paste(img.resize((w, HEIGHT), Image.BILINEAR), (0, 0))
    return line.convert("RGB")


def tensor(img: Image.Image) -> np.ndarray:
    return qbundle.normalized(img, [MEAN] * 3, [STD] * 3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    out = ap.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    model = fixed_input(onnx.load_model_from_string(model_bytes(out.parent / "wheels")))
    onnx.save(model, out / "fp32.onnx")
    prepared = out / "fp32-prepared.onnx"
    # onnxruntime's symbolic shape inference refuses the head's Concat (axis 1 of a shape);
    # ONNX's own shape inference, which quant_pre_process also runs, types the fixed input.
    quant_pre_process(str(out / "fp32.onnx"), str(prepared), skip_symbolic_shape=True)
    # The file is opset 11; per-channel DequantizeLinear (its axis attribute) needs 13.
    onnx.save(onnx.version_converter.convert_version(onnx.load(prepared), 13), prepared)

    sess = ort.InferenceSession(str(out / "fp32.onnx"))
    name = model.graph.input[0].name
    tests, calibration = [], []
    for i, text in enumerate(LINES):
        for turned in (False, True):
            for size, ink, paper in ((28, 20, 235), (36, 250, 30)):
                x = tensor(line_image(text, size + i % 3, ink, paper, turned))
                p = sess.run(None, {name: x})[0][0]
                if int(np.argmax(p)) != int(turned):
                    sys.exit(f"fp32 classifier gives {p} for {text!r} (turned: {turned}): "
                             "the file or the preprocessing is not what this script expects")
                calibration.append(x)
                if i < 3 and size == 28:
                    tests.append(x)
    spec = qbundle.InputSpec(name, 3, HEIGHT, WIDTH, [MEAN] * 3, [STD] * 3)
    qbundle.write(out, "ppocr-cls-test", spec, model.graph.output[0].name, ["0", "180"],
                  calibration, tests, kind="probabilities", quantize_from=prepared)
    prepared.unlink()


if __name__ == "__main__":
    main()
