"""Step 2 of the edgedx model pipeline: train the small CNN in JAX and export fp32.onnx.

The network uses only Conv, Relu, MaxPool, GlobalAveragePool and Gemm so that, once
quantized, every op has a standard ONNX integer form (QLinearConv) or stays a cheap float
op, which is what tract can run on its integer kernels. Training uses batch norm (without
it the network stalled at chance for epochs); it is folded into the conv weights and
biases at export, so the ONNX graph has no BatchNormalization node.

The ONNX graph is written with onnx.helper from the trained weights (no exporter), then
checked against the JAX forward pass with onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from common import LABELS, OUT_DIR, SEED, load_split

# (in_channels, out_channels, stride, maxpool after).
# Spatial: 128 -s2-> 64 -p-> 32 -p-> 16 -p-> 8 -p-> 4 -GAP-> 1.
# A stride-2 first conv keeps the full-resolution layer cheap; the pools then trade
# resolution for channels. Receptive field of the last conv is ~77 px, enough to relate a
# mass to the brain edge (meningioma) or the midline (pituitary). The last MaxPool before
# GlobalAveragePool matters: a lesion covers ~1-3 % of the image, and averaging over 8x8
# positions diluted it so much that training stalled near chance; over 4x4 maxima it
# trains quickly.
# v2: the first two layers are twice as wide (16 channels at 64x64) so that small lesions
# survive the stride-2 entry; the last conv has 56 channels to stay under 40 MFLOPs.
ARCH = [(1, 16, 2, False), (16, 16, 1, True), (16, 32, 1, True), (32, 48, 1, True), (48, 56, 1, True)]
INPUT_HW = 128


def init_params(key):
    """Conv layers carry batch-norm scale/shift for training; they are folded at export."""
    params = []
    for cin, cout, _, _ in ARCH:
        key, sub = jax.random.split(key)
        w = jax.random.normal(sub, (cout, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))
        params.append({"w": w, "gamma": jnp.ones((cout,)), "beta": jnp.zeros((cout,))})
    key, sub = jax.random.split(key)
    fc = jax.random.normal(sub, (ARCH[-1][1], len(LABELS))) * np.sqrt(1.0 / ARCH[-1][1])
    params.append({"w": fc, "b": jnp.zeros((len(LABELS),))})
    state = [{"mean": jnp.zeros((c[1],)), "var": jnp.ones((c[1],))} for c in ARCH]
    return params, state


BN_EPS, BN_MOMENTUM = 1e-5, 0.9


def forward(params, state, x, train: bool):
    """x: [N,1,128,128] -> (logits [N,4], new batch-norm state).

    Batch norm makes the small-signal task (a lesion is a few percent of the pixels that
    GlobalAveragePool averages) train in a few epochs instead of stalling at chance.
    """
    new_state = []
    for layer, st, (_, _, stride, pool) in zip(params[:-1], state, ARCH):
        x = jax.lax.conv_general_dilated(x, layer["w"], (stride, stride), ((1, 1), (1, 1)),
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
        if train:
            mean, var = jnp.mean(x, axis=(0, 2, 3)), jnp.var(x, axis=(0, 2, 3))
            new_state.append({"mean": BN_MOMENTUM * st["mean"] + (1 - BN_MOMENTUM) * mean,
                              "var": BN_MOMENTUM * st["var"] + (1 - BN_MOMENTUM) * var})
        else:
            mean, var = st["mean"], st["var"]
            new_state.append(st)
        scale = layer["gamma"] / jnp.sqrt(var + BN_EPS)
        x = jax.nn.relu(x * scale[None, :, None, None] + (layer["beta"] - mean * scale)[None, :, None, None])
        if pool:
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    x = jnp.mean(x, axis=(2, 3))
    return x @ params[-1]["w"] + params[-1]["b"], new_state


def _batch_moments(params, x):
    """Per-layer (mean, E[z^2]) of each conv's pre-BN output, in training mode on batch x."""
    moments = []
    for layer, (_, _, stride, pool) in zip(params[:-1], ARCH):
        x = jax.lax.conv_general_dilated(x, layer["w"], (stride, stride), ((1, 1), (1, 1)),
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
        mean, var = jnp.mean(x, axis=(0, 2, 3)), jnp.var(x, axis=(0, 2, 3))
        moments.append((mean, jnp.mean(x * x, axis=(0, 2, 3))))
        scale = layer["gamma"] / jnp.sqrt(var + BN_EPS)
        x = jax.nn.relu(x * scale[None, :, None, None] + (layer["beta"] - mean * scale)[None, :, None, None])
        if pool:
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    return moments


_batch_moments_jit = jax.jit(_batch_moments)


def precise_bn_state(params, x, chunk=250):
    """Recompute batch-norm statistics over many training images ("precise BN").

    The running averages (momentum 0.9 over batches of 32) are noisy and lag the weights;
    the inference statistics that get folded into the conv weights are instead the
    population mean/variance of each conv output over `x`, with every chunk normalised by
    its own batch statistics as in training.
    """
    acc = None
    for i in range(0, len(x), chunk):
        mom = _batch_moments_jit(params, jnp.asarray(x[i:i + chunk]))
        mom = [(np.asarray(m, np.float64), np.asarray(q, np.float64)) for m, q in mom]
        acc = mom if acc is None else [(a[0] + m, a[1] + q) for a, (m, q) in zip(acc, mom)]
    n = len(range(0, len(x), chunk))
    return [{"mean": jnp.asarray(m / n, jnp.float32), "var": jnp.asarray(np.maximum(q / n - (m / n) ** 2, 0), jnp.float32)}
            for m, q in acc]


def fold_batchnorm(params, state):
    """Inference weights: [(conv weight, conv bias)] + [(fc weight, fc bias)], BN folded in."""
    folded = []
    for layer, st in zip(params[:-1], state):
        scale = np.asarray(layer["gamma"]) / np.sqrt(np.asarray(st["var"]) + BN_EPS)
        w = np.asarray(layer["w"]) * scale[:, None, None, None]
        b = np.asarray(layer["beta"]) - np.asarray(st["mean"]) * scale
        folded.append((w.astype(np.float32), b.astype(np.float32)))
    folded.append((np.asarray(params[-1]["w"], np.float32), np.asarray(params[-1]["b"], np.float32)))
    return folded


def folded_forward(folded, x):
    """The exported graph's computation, op for op, used to verify the ONNX file."""
    for (w, b), (_, _, stride, pool) in zip(folded[:-1], ARCH):
        x = jax.lax.conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)),
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
        x = jax.nn.relu(x + b[None, :, None, None])
        if pool:
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    x = jnp.mean(x, axis=(2, 3))
    return x @ folded[-1][0] + folded[-1][1]


def params_from_onnx(path: Path, x: np.ndarray):
    """Rebuild batch-norm parameters from an exported (folded) model, to continue training.

    Each conv keeps its folded weight; gamma/beta are set to the batch statistics of its
    output on `x`, so the re-parametrised network computes (almost) the same function in
    training mode and exactly the same in inference mode.
    """
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    params, state, h = [], [], jnp.asarray(x)
    for i, (_, _, stride, pool) in enumerate(ARCH, start=1):
        w, b = inits[f"conv{i}.weight"], inits[f"conv{i}.bias"]
        z = jax.lax.conv_general_dilated(h, w, (stride, stride), ((1, 1), (1, 1)),
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
        mean, var = jnp.mean(z, axis=(0, 2, 3)), jnp.var(z, axis=(0, 2, 3))
        params.append({"w": jnp.asarray(w), "gamma": jnp.sqrt(var + BN_EPS), "beta": mean + b})
        state.append({"mean": mean, "var": var})
        h = jax.nn.relu(z + b[None, :, None, None])
        if pool:
            h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    params.append({"w": jnp.asarray(inits["fc.weight"]), "b": jnp.asarray(inits["fc.bias"])})
    return params, state


def count_flops(batch: int = 1) -> tuple[int, int]:
    """Return (multiply-accumulates, parameters) of one forward pass."""
    hw, macs, n_params = INPUT_HW, 0, 0
    for cin, cout, stride, pool in ARCH:
        hw //= stride
        macs += hw * hw * cout * cin * 9
        n_params += cout * cin * 9 + cout
        if pool:
            hw //= 2
    macs += ARCH[-1][1] * len(LABELS)
    n_params += ARCH[-1][1] * len(LABELS) + len(LABELS)
    return macs * batch, n_params


def loss_fn(params, state, x, y, class_w):
    logits, new_state = forward(params, state, x, train=True)
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logp, y[:, None], axis=1)[:, 0]
    # Class weights offset the notumor surplus (the normal stratum is all notumor), so the
    # tumour classes' recall is not traded for notumor precision.
    return jnp.sum(nll * class_w[y]) / jnp.sum(class_w[y]), new_state


def adam_step(params, grads, m, v, t, lr, b1=0.9, b2=0.999, eps=1e-8, wd=1e-4):
    """Adam with decoupled weight decay on weight tensors only (not on BN or biases)."""
    m = jax.tree_util.tree_map(lambda mm, g: b1 * mm + (1 - b1) * g, m, grads)
    v = jax.tree_util.tree_map(lambda vv, g: b2 * vv + (1 - b2) * g * g, v, grads)

    def update(path, p, mm, vv):
        decay = wd if path[-1].key == "w" else 0.0
        return p - lr * ((mm / (1 - b1**t)) / (jnp.sqrt(vv / (1 - b2**t)) + eps) + decay * p)

    return jax.tree_util.tree_map_with_path(update, params, m, v), m, v


@jax.jit
def train_step(params, state, m, v, t, lr, x, y, class_w):
    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, x, y, class_w)
    params, m, v = adam_step(params, grads, m, v, t, lr)
    return params, state, m, v, loss


predict = jax.jit(lambda params, state, x: forward(params, state, x, train=False)[0])
predict_folded = jax.jit(folded_forward)


def batched(fn, x, batch=200):
    return np.concatenate([np.asarray(fn(x[i:i + batch])) for i in range(0, len(x), batch)])


def augment(x, rng):
    """Cheap online augmentation on top of the dataset's own: mirror, small shifts and a
    mild intensity change (gain 0.9-1.1, gamma 0.85-1.15, clipped to [0, 1]).

    Mirroring is anatomically neutral here (lesions are placed on either side and the
    pituitary sits on the midline).
    """
    x = x.copy()
    flip = rng.random(len(x)) < 0.5
    x[flip] = x[flip][..., ::-1]
    for i in range(len(x)):
        dy, dx = rng.integers(-4, 5, size=2)
        x[i] = np.roll(x[i], (dy, dx), axis=(1, 2))
    gain = rng.uniform(0.9, 1.1, size=(len(x), 1, 1, 1)).astype(np.float32)
    gamma = rng.uniform(0.85, 1.15, size=(len(x), 1, 1, 1)).astype(np.float32)
    return np.clip(x * gain, 0.0, 1.0) ** gamma


# --------------------------------------------------------------------------- ONNX export
def export_onnx(params, path: Path) -> onnx.ModelProto:
    """Write the trained network as an opset-13 ONNX graph with a symbolic batch dim "N"."""
    nodes, inits = [], []
    cur = "input"
    for i, ((w, b), (_, _, stride, pool)) in enumerate(zip(params[:-1], ARCH), start=1):
        inits += [numpy_helper.from_array(np.asarray(w, np.float32), f"conv{i}.weight"),
                  numpy_helper.from_array(np.asarray(b, np.float32), f"conv{i}.bias")]
        nodes.append(helper.make_node("Conv", [cur, f"conv{i}.weight", f"conv{i}.bias"], [f"conv{i}"],
                                      name=f"conv{i}", kernel_shape=[3, 3], strides=[stride, stride],
                                      pads=[1, 1, 1, 1], dilations=[1, 1], group=1))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}"))
        cur = f"relu{i}"
        if pool:
            nodes.append(helper.make_node("MaxPool", [cur], [f"pool{i}"], name=f"pool{i}",
                                          kernel_shape=[2, 2], strides=[2, 2]))
            cur = f"pool{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [cur], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["features"], name="flatten", axis=1))
    w, b = params[-1]
    inits += [numpy_helper.from_array(np.asarray(w, np.float32), "fc.weight"),
              numpy_helper.from_array(np.asarray(b, np.float32), "fc.bias")]
    nodes.append(helper.make_node("Gemm", ["features", "fc.weight", "fc.bias"], ["logits"], name="fc"))
    graph = helper.make_graph(
        nodes, "edgedx_brain_mri_4class",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, INPUT_HW, INPUT_HW])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(LABELS)])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="edgedx-models-pipeline", producer_version="0.2.0")
    model.ir_version = 8  # opset 13 era; readable by older runtimes too
    model.doc_string = "edgedx brain-MRI 4-class demo classifier (synthetic lesions). NOT FOR CLINICAL USE."
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=200, help="linear warm-up steps")
    ap.add_argument("--select-from", type=float, default=0.5,
                    help="only epochs after this fraction of the run are candidates for the kept model")
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--resume", action="store_true",
                    help="continue from <out>/fp32.onnx (a second cosine cycle) instead of a fresh init")
    args = ap.parse_args()
    t0 = time.time()
    x_tr, y_tr, _, _ = load_split("train")
    x_va, y_va, _, _ = load_split("validation")
    print(f"loaded train {x_tr.shape} validation {x_va.shape} in {time.time() - t0:.1f}s")
    macs, n_params = count_flops()
    print(f"model: {n_params} parameters, {macs / 1e6:.2f} M MACs ({2 * macs / 1e6:.1f} MFLOPs) per image")

    # Fixed seeds (common.SEED): numpy drives shuffling, augmentation and the precise-BN
    # subset; JAX's PRNGKey(SEED) the initialisation.
    rng = np.random.default_rng(SEED + int(args.resume))
    bn_subset = x_tr[np.random.default_rng(SEED).permutation(len(x_tr))[:1000]]
    if args.resume:
        params, state = params_from_onnx(args.out / "fp32.onnx", x_tr[rng.permutation(len(x_tr))[:256]])
        acc0 = float((batched(lambda xb: predict(params, state, xb), x_va).argmax(1) == y_va).mean())
        print(f"resuming from {args.out / 'fp32.onnx'}: validation accuracy {acc0:.4f}")
    else:
        params, state = init_params(jax.random.PRNGKey(SEED))
    m = jax.tree_util.tree_map(jnp.zeros_like, params)
    v = jax.tree_util.tree_map(jnp.zeros_like, params)
    counts = np.bincount(y_tr, minlength=len(LABELS))
    class_w = jnp.asarray(counts.sum() / (len(LABELS) * counts), jnp.float32)
    steps_per_epoch = len(x_tr) // args.batch
    total = steps_per_epoch * args.epochs
    # (validation accuracy, folded weights, epoch); a resumed run only replaces the model it
    # started from if it beats it on validation.
    best = (acc0, fold_batchnorm(params, state), 0) if args.resume else (-1.0, None, -1)
    t, history = 0, []
    for epoch in range(args.epochs):
        te = time.time()
        order = rng.permutation(len(x_tr))
        losses = []
        for s in range(steps_per_epoch):
            idx = order[s * args.batch:(s + 1) * args.batch]
            xb = jnp.asarray(augment(x_tr[idx], rng))
            t += 1
            # Linear warm-up, then cosine decay to zero over the cycle.
            lr = args.lr * min(1.0, t / args.warmup) * 0.5 * (1 + np.cos(np.pi * t / total))
            params, state, m, v, loss = train_step(params, state, m, v, t, jnp.float32(lr), xb,
                                                   jnp.asarray(y_tr[idx]), class_w)
            losses.append(float(loss))
        candidate = epoch + 1 > args.select_from * args.epochs or epoch + 1 == args.epochs
        if candidate:
            state = precise_bn_state(params, bn_subset)  # also what gets folded
        acc = float((batched(lambda xb: predict(params, state, xb), x_va).argmax(1) == y_va).mean())
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_acc": acc, "precise_bn": candidate})
        print(f"epoch {epoch + 1:2d} loss {np.mean(losses):.4f} val_acc {acc:.4f}{' (precise BN)' if candidate else ''}"
              f" ({time.time() - te:.1f}s)", flush=True)
        if candidate and acc >= best[0]:
            best = (acc, fold_batchnorm(params, state), epoch + 1)
    acc, folded, epoch = best
    print(f"best validation accuracy {acc:.4f} at epoch {epoch}; training took {time.time() - t0:.1f}s")

    args.out.mkdir(parents=True, exist_ok=True)
    fp32_path = args.out / "fp32.onnx"
    export_onnx(folded, fp32_path)
    sess = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    ref = batched(lambda xb: predict_folded(folded, xb), x_va)
    got = np.concatenate([sess.run(["logits"], {"input": x_va[i:i + 100]})[0] for i in range(0, len(x_va), 100)])
    diff = float(np.abs(ref - got).max())
    print(f"onnxruntime vs JAX on validation: max |logit diff| = {diff:.2e}")
    assert diff < 1e-3, "exported ONNX does not match the trained network"
    summary_path = args.out / "train_summary.json"
    stages = []
    if args.resume and summary_path.exists():
        previous = json.loads(summary_path.read_text())
        stages = previous.get("stages") or [{"resume": False, **{k: previous[k] for k in (
            "best_epoch", "best_val_acc", "history", "epochs", "batch", "lr", "seconds")}}]
    stages.append({"resume": args.resume, "best_epoch": epoch, "best_val_acc": acc, "history": history,
                   "epochs": args.epochs, "batch": args.batch, "lr": args.lr, "seconds": time.time() - t0})
    with open(summary_path, "w") as f:
        json.dump({"stages": stages, "best_epoch": epoch, "best_val_acc": acc, "history": history, "params": n_params,
                   "macs": macs, "onnx_vs_jax_max_abs_diff": diff, "seconds": time.time() - t0,
                   "epochs": args.epochs, "batch": args.batch, "lr": args.lr, "seed": SEED}, f, indent=1)
    print(f"wrote {fp32_path} in {time.time() - t0:.1f}s total")


if __name__ == "__main__":
    main()
