"""Writes a deliberately damaged copy of a QOperator int8 model for tests/it/gate.rs.

The damage is the kind a broken calibration produces: the per-channel weight scales of
one QLinearConv are perturbed (even output channels x3, odd ones /3), so the graph still
loads and runs with the same ops and shapes but its activations are wrong. The accuracy
gate must reject the result on accuracy or recall.

usage: damage_int8.py IN.onnx OUT.onnx [CONV_NAME]   (default conv: conv2)
"""

import sys

import numpy as np
import onnx
from onnx import numpy_helper


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    conv = sys.argv[3] if len(sys.argv) > 3 else "conv2"
    model = onnx.load(src)
    name = f"{conv}.weight_scale"
    for init in model.graph.initializer:
        if init.name == name:
            scale = numpy_helper.to_array(init).astype(np.float32)
            factors = np.where(np.arange(scale.size) % 2 == 0, 3.0, 1.0 / 3.0)
            damaged = (scale.reshape(-1) * factors).reshape(scale.shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(damaged, name))
            break
    else:
        raise SystemExit(f"{src}: no initializer {name}")
    onnx.checker.check_model(model)
    onnx.save(model, dst)


if __name__ == "__main__":
    main()
