"""Step 3 of the edgedx model pipeline: static int8 quantization with onnxruntime.

Produces two models from fp32.onnx and the calibration split (balanced over the four
difficulty strata):

* int8.onnx      QOperator format restricted to standard ONNX ops (QuantizeLinear,
                 QLinearConv, MaxPool on uint8, DequantizeLinear, then a float head:
                 GlobalAveragePool, Flatten, Gemm).
                 This is the model the device serves: tract runs QLinearConv on integer
                 kernels but cannot load onnxruntime's com.microsoft ops.
* int8-qdq.onnx  the same quantization in QDQ format (float ops between Q/DQ pairs), kept
                 for engine tests and speed comparisons; tract runs it as float.

Activations are uint8 (asymmetric), weights int8 per output channel. uint8 activations
give the [0, 1] input zero point 0 and scale ~1/255, so every 8-bit grey level keeps its
own code, and asymmetric ranges waste no codes on the all-positive post-ReLU tensors.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from common import LABELS, OUT_DIR, load_split

# Only these ops are handed to the quantizer. Conv becomes QLinearConv; Relu folds into the
# preceding QLinearConv's output range; MaxPool runs directly on uint8 (standard since
# opset 12). GlobalAveragePool, Flatten and the final Gemm stay float after one
# DequantizeLinear: their quantized forms are com.microsoft ops (QLinearGlobalAveragePool,
# QGemm) that tract cannot load, and the head is 256 multiply-adds on a 64-vector. (The
# alternative, Gemm rewritten as MatMul+Add so that MatMul becomes QLinearMatMul, is also
# standard, but it rounds the logits to 8 bits for no measurable speed gain.)
OPS_TO_QUANTIZE = ["Conv", "Relu", "MaxPool"]
STANDARD_DOMAINS = {"", "ai.onnx"}


class SplitReader(CalibrationDataReader):
    """Feeds the calibration split to the calibrator in small batches."""

    def __init__(self, x: np.ndarray, batch: int = 20):
        self.batches = [x[i:i + batch] for i in range(0, len(x), batch)]
        self.pos = 0

    def get_next(self):
        if self.pos >= len(self.batches):
            return None
        self.pos += 1
        return {"input": self.batches[self.pos - 1]}

    def rewind(self):
        self.pos = 0


def check_standard_ops(path: Path) -> list[str]:
    """onnx.checker plus: every node in the default (ai.onnx) domain. Returns op types."""
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    bad = [f"{n.name} ({n.domain}::{n.op_type})" for n in model.graph.node if n.domain not in STANDARD_DOMAINS]
    assert not bad, f"{path.name} has non-standard ops: {bad}"
    assert all(o.domain in STANDARD_DOMAINS for o in model.opset_import), f"{path.name}: extra opset domains"
    return sorted({n.op_type for n in model.graph.node})


def batch_dim(path: Path) -> tuple[str, str]:
    model = onnx.load(path)
    i = model.graph.input[0].type.tensor_type.shape.dim[0]
    o = model.graph.output[0].type.tensor_type.shape.dim[0]
    return i.dim_param or str(i.dim_value), o.dim_param or str(o.dim_value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--method", choices=["auto", "minmax", "percentile", "entropy"], default="auto",
                    help="calibration method; auto picks on the validation split")
    args = ap.parse_args()
    t0 = time.time()
    x_cal, _, strata, _ = load_split("calibration")
    print(f"calibration images: {len(x_cal)} ({', '.join(f'{s}={n}' for s, n in zip(*np.unique(strata, return_counts=True)))})")

    prepared = args.out / "fp32-prepared.onnx"
    # Shape inference only: onnxruntime graph optimisations could fuse Conv+Relu into a
    # com.microsoft FusedConv, which must not reach the quantized model.
    quant_pre_process(args.out / "fp32.onnx", prepared, skip_optimization=True)

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}

    def quantize(name: str, fmt: QuantFormat, method: str) -> None:
        quantize_static(str(prepared), str(args.out / name), SplitReader(x_cal), quant_format=fmt,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=OPS_TO_QUANTIZE, calibrate_method=methods[method],
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})

    method = args.method
    if method == "auto":
        # Choose the calibration method on the validation split (never on test): the one
        # whose int8 model stays closest to fp32 (worst drop in accuracy or any class
        # recall, then disagreement); min-max wins ties as the simplest.
        x_va, y_va, _, _ = load_split("validation")
        ref = ort.InferenceSession(str(args.out / "fp32.onnx")).run(None, {"input": x_va})[0].argmax(1)
        scores = {}
        for m in methods:
            quantize("int8-candidate.onnx", QuantFormat.QOperator, m)
            got = ort.InferenceSession(str(args.out / "int8-candidate.onnx")).run(None, {"input": x_va})[0].argmax(1)
            drops = [np.mean(ref == y_va) - np.mean(got == y_va)]
            drops += [np.mean(ref[y_va == c] == c) - np.mean(got[y_va == c] == c) for c in range(len(LABELS))]
            scores[m] = (round(float(max(drops)), 4), round(float(np.mean(got != ref)), 4))
            print(f"calibration {m:10s}: worst drop vs fp32 on validation {scores[m][0]:+.4f}, disagreement {scores[m][1]:.4f}")
        (args.out / "int8-candidate.onnx").unlink()
        method = min(methods, key=lambda m: scores[m])
    print(f"calibration method: {method}")
    for name, fmt in (("int8.onnx", QuantFormat.QOperator), ("int8-qdq.onnx", QuantFormat.QDQ)):
        t = time.time()
        quantize(name, fmt, method)
        ops = check_standard_ops(args.out / name)
        print(f"{name}: {time.time() - t:.1f}s, batch dim (input, output) = {batch_dim(args.out / name)}, ops = {ops}")
    (args.out / "calibration_method.txt").write_text(method + "\n")

    # Sanity: quantized models load and agree with fp32 on most calibration images.
    ref = ort.InferenceSession(str(args.out / "fp32.onnx")).run(None, {"input": x_cal})[0].argmax(1)
    for name in ("int8.onnx", "int8-qdq.onnx"):
        got = ort.InferenceSession(str(args.out / name)).run(None, {"input": x_cal})[0].argmax(1)
        print(f"{name}: agrees with fp32 on {np.mean(got == ref):.3f} of calibration images")
    print(f"quantization done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
