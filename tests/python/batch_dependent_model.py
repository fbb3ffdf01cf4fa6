"""Writes a tiny valid classifier whose output depends on the batch size, for the
accuracy gate's batch-invariance test (tests/it/gate.rs).

Input `input` [N, 1, 128, 128] float, output `logits` [N, 4], like the default bundle.
logits = 0.01 * (mean of four horizontal bands) + [1, 0, 0, 0] + 10 * (N - 1) * [0, 1, 0, 0]:
with batch 1 every image is class 0, with batch 2 or 4 every image is class 1. The
batch size reaches the logits through Shape(input)[0], the way a graph that normalises
over the batch axis (or a mis-exported BatchNorm) leaks it.

usage: batch_dependent_model.py OUT.onnx
"""

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def const(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.array(value, dtype=dtype), name)


def main() -> None:
    out = sys.argv[1]
    nodes = [
        helper.make_node("Reshape", ["input", "bands_shape"], ["bands"]),
        helper.make_node("ReduceMean", ["bands", "axis2"], ["features"], keepdims=0),
        helper.make_node("Mul", ["features", "small"], ["scaled"]),
        helper.make_node("Shape", ["input"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Cast", ["n"], ["n_float"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["n_float", "one"], ["n_minus_1"]),
        helper.make_node("Mul", ["n_minus_1", "batch_push"], ["push"]),
        helper.make_node("Add", ["scaled", "bias"], ["biased"]),
        helper.make_node("Add", ["biased", "push"], ["logits"]),
    ]
    inits = [
        const("bands_shape", [0, 4, 4096], np.int64),
        const("axis2", [2], np.int64),
        const("small", 0.01),
        const("zero", 0, np.int64),
        const("one", 1.0),
        const("batch_push", [0.0, 10.0, 0.0, 0.0]),
        const("bias", [1.0, 0.0, 0.0, 0.0]),
    ]
    graph = helper.make_graph(
        nodes,
        "batch_dependent",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 128, 128])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, out)


if __name__ == "__main__":
    main()
