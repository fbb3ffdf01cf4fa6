//! Exact rewrites of tract's optimised plan that tract 0.23.9 leaves undone.
//!
//! tract lowers a QLinearConv to an integer matmul followed by the zero-point compensation
//! `acc - k_zp * sum(x) - x_zp * sum(w)`. Our exporters quantize weights symmetrically, so
//! `k_zp` is a constant 0, yet the plan still computes the column sums (QSumB), multiplies
//! them by zero and subtracts the result. That full-size non-constant operand also keeps
//! tract from fusing the per-channel `x_zp * sum(w)` Sub into the matmul. Removing the
//! `x - 0 * y` term and optimising again lets tract do both itself
//! (firmware/bench/INT8-NOTES.md, section 2).
//!
//! Only integer tensors are touched: there `0 * y` is 0 for every `y` and `x - 0` is `x`, so
//! the plan computes the same bits. For floats neither holds (`0 * inf` is NaN, and
//! `-0.0 - -0.0` is `+0.0`), which is why a float `Sub(x, 0 * y)` is left alone.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::{BinMiniOp, OptBinByScalar, TypedBinOp};
use tract_onnx::tract_core::ops::cast::Cast;
use tract_onnx::tract_core::ops::dummy::Dummy;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::math::{Mul, Sub};
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer};
use tract_onnx::tract_core::ops::quant::OffsetU8asI8;
use tract_onnx::tract_core::ops::source::TypedSource;

/// Rewires the consumers of every integer `Sub(x, Mul(0, y))` to `x` and returns how many
/// were rewired. `apply` turns the then unused Sub, Mul and column sums into dummies; the
/// caller's next `into_optimized()` prunes them and fuses what remains.
pub(crate) fn drop_zero_products(model: &mut TypedModel) -> TractResult<usize> {
    let mut rewired = 0;
    // Node ids are stable under `apply` (it only adds nodes), and each candidate is
    // re-examined on the current graph: after `Sub1` is rewired, a `Sub2(Sub1, 0 * z)`
    // reads `x` directly and is matched with that input.
    for id in model.eval_order()? {
        let Some(x) = zero_product_sub(model, id)? else {
            continue;
        };
        let patch = TypedModelPatch::rewire(model, &[x], &[OutletId::new(id, 0)], &|_, taps| {
            Ok(taps.into())
        })?;
        patch.apply(model)?;
        rewired += 1;
    }
    Ok(rewired)
}

/// Evaluates at load time the constant chains that tract's constant folding leaves in the
/// plan, and returns how many it folded.
///
/// tract folds a node only while its output is no larger than its inputs or 4 MiB. The
/// int8 lowering of a convolution computes the weight sums for its zero-point term as
/// `Reduce<Sum>(Cast<i32>(kernel))`; for a kernel over 1 MiB the Cast alone is four times
/// its input, so tract keeps the whole chain in the plan. Every inference then widens and
/// sums the layer's weights again (14 ms of VGG16's 189 ms), and the plan keeps an unpacked
/// copy of each such kernel beside the packed one (another 15 MiB for VGG16 int8).
///
/// Here a chain starts at a node whose inputs are all constant and goes on through single
/// successors whose other inputs are constant too. It is folded up to its last node whose
/// output is no larger than the chain's constant inputs, so large intermediates exist only
/// for a moment at load time and the plan never holds more than it did. The ops run exactly
/// as the plan would run them, so every value is the same.
pub(crate) fn fold_constant_chains(model: &mut TypedModel) -> TractResult<usize> {
    let mut folded = 0;
    for id in model.eval_order()? {
        if let Some(patch) = fold_chain_at(model, id)? {
            patch.apply(model)?;
            folded += 1;
        }
    }
    Ok(folded)
}

/// The patch that folds the constant chain starting at `id` (see `fold_constant_chains`),
/// or `None` when there is none worth folding there.
pub(crate) fn fold_chain_at(model: &TypedModel, id: usize) -> TractResult<Option<TypedModelPatch>> {
    let Some((end, values)) = constant_chain(model, id)? else {
        return Ok(None);
    };
    Ok(Some(constants_for(model, end, values)?))
}

/// The patch that replaces the outputs of node `id` by constants holding `values`.
pub(crate) fn constants_for(
    model: &TypedModel,
    id: usize,
    values: TVec<TValue>,
) -> TractResult<TypedModelPatch> {
    let mut patch = TypedModelPatch::default();
    for (slot, value) in values.into_iter().enumerate() {
        let outlet = OutletId::new(id, slot);
        let exotic = model.outlet_fact(outlet)?.exotic_fact.clone();
        let name = match slot {
            0 => format!("{}.folded", model.node(id).name),
            _ => format!("{}.folded.{slot}", model.node(id).name),
        };
        let konst = Const::new_with_opt_exotic_fact(value.into_arc_tensor(), exotic)?;
        let wire = patch.wire_node(name, konst, &[])?[0];
        patch.shunt_outside(model, outlet, wire)?;
    }
    Ok(patch)
}

/// The last node of the constant chain starting at `id` worth folding, with its values:
/// `None` when `id` does not start a chain or no node of it shrinks back to the size of
/// the chain's constant inputs.
fn constant_chain(model: &TypedModel, id: usize) -> TractResult<Option<(usize, TVec<TValue>)>> {
    let node = model.node(id);
    if node.op_is::<Const>() || node.op_is::<Dummy>() || node.op_is::<TypedSource>() {
        return Ok(None);
    }
    let facts = model.node_input_facts(id)?;
    let Some(konsts) = facts
        .iter()
        .map(|f| f.konst.clone())
        .collect::<Option<Vec<_>>>()
    else {
        return Ok(None);
    };
    if konsts.is_empty() {
        return Ok(None);
    }
    let mut budget: usize = konsts.iter().map(|k| bytes(k)).sum();
    let (mut at, mut values) = match widened_sum_in_slices(model, node, &konsts)? {
        Some(first) => first,
        None => {
            let inputs = konsts.into_iter().map(|k| k.into_tvalue()).collect();
            let Ok(Some(values)) = node.op.eval_out_of_plan(inputs) else {
                return Ok(None);
            };
            (id, values)
        }
    };
    let outputs = model.output_outlets()?;
    let mut best = None;
    loop {
        if values.iter().map(|v| bytes(v)).sum::<usize>() <= budget {
            best = Some((at, values.clone()));
        }
        if outputs.contains(&OutletId::new(at, 0)) {
            break;
        }
        let Some(next) = model.single_succ(at)? else {
            break;
        };
        let mut inputs = TVec::new();
        for input in &next.inputs {
            if input.node == at {
                inputs.push(values[input.slot].clone());
            } else if let Some(k) = &model.outlet_fact(*input)?.konst {
                budget += bytes(k);
                inputs.push(k.clone().into_tvalue());
            } else {
                return Ok(best);
            }
        }
        let Ok(Some(next_values)) = next.op.eval_out_of_plan(inputs) else {
            break;
        };
        values = next_values;
        at = next.id;
    }
    Ok(best)
}

/// Slices of the widened input that `widened_sum_in_slices` evaluates at a time.
const SLICE_BYTES: usize = 1 << 20;

/// For a chain starting `Reduce<Sum>(Cast(x))` with a widening integer Cast (the weight sums
/// of an int8 convolution), the Reduce node and its value, computed a slice of `x` at a
/// time along an axis the sum keeps: the widened copy of `x` never exists whole (9.4 MB for
/// VGG16's largest kernel of 2.4 MB). Integer sums are exact, so the value is bit for bit
/// what the two ops give when run on the whole tensor. `None` for any other chain start.
fn widened_sum_in_slices(
    model: &TypedModel,
    node: &TypedNode,
    konsts: &[Arc<Tensor>],
) -> TractResult<Option<(usize, TVec<TValue>)>> {
    let (Some(cast), [x]) = (node.op_as::<Cast>(), konsts) else {
        return Ok(None);
    };
    let Some(reduce_node) = widened_sum(model, node.id)? else {
        return Ok(None);
    };
    let Some(reduce) = reduce_node.op_as::<Reduce>() else {
        return Ok(None);
    };
    let Some(axis) = (0..x.rank())
        .filter(|a| !reduce.axes.contains(a))
        .max_by_key(|&a| x.shape()[a])
    else {
        return Ok(None);
    };
    let len = x.shape()[axis];
    let per_index = x.len() / len.max(1) * cast.to.size_of();
    let step = (SLICE_BYTES / per_index.max(1)).clamp(1, len.max(1));
    let mut parts = Vec::with_capacity(len.div_ceil(step));
    for start in (0..len).step_by(step) {
        let slice = x.slice(axis, start, (start + step).min(len))?;
        let Ok(Some(wide)) = node.op.eval_out_of_plan(tvec!(slice.into_tvalue())) else {
            return Ok(None);
        };
        let Ok(Some(mut sum)) = reduce_node.op.eval_out_of_plan(wide) else {
            return Ok(None);
        };
        parts.push(sum.remove(0).into_tensor());
    }
    let sums = Tensor::stack_tensors(axis, &parts)?;
    Ok(Some((reduce_node.id, tvec!(sums.into_tvalue()))))
}

/// Whether node `id` is a widening integer Cast of a constant whose only reader sums it:
/// the start of a weight-sum chain.
pub(crate) fn starts_widened_sum(model: &TypedModel, id: usize) -> TractResult<bool> {
    let node = model.node(id);
    let konst = node.inputs.len() == 1 && model.outlet_fact(node.inputs[0])?.konst.is_some();
    Ok(konst && widened_sum(model, id)?.is_some())
}

/// The `Reduce<Sum>` node reading a widening integer Cast at `id`, if that is its only
/// reader.
fn widened_sum(model: &TypedModel, id: usize) -> TractResult<Option<&TypedNode>> {
    let node = model.node(id);
    let Some(cast) = node.op_as::<Cast>() else {
        return Ok(None);
    };
    let [input] = node.inputs.as_slice() else {
        return Ok(None);
    };
    let from = model.outlet_fact(*input)?.datum_type;
    if !(from.is_integer() && cast.to.is_integer() && cast.to.size_of() > from.size_of()) {
        return Ok(None);
    }
    let Some(succ) = model.single_succ(id)? else {
        return Ok(None);
    };
    let sums = succ
        .op_as::<Reduce>()
        .is_some_and(|r| r.reducer == Reducer::Sum);
    Ok((sums && succ.inputs.len() == 1).then_some(succ))
}

fn bytes(t: &Tensor) -> usize {
    t.len() * t.datum_type().size_of()
}

/// Whether `node` is tract's `OffsetU8asI8` (u8 to i8, minus 128), which it puts before
/// an integer convolution or matmul that reads u8 values.
pub(crate) fn is_offset_to_i8(node: &TypedNode) -> bool {
    node.op_as::<ElementWiseOp>()
        .is_some_and(|op| op.0.is::<OffsetU8asI8>() && op.1.is_none())
}

/// How a reader of a u8 value can take that value's i8 (the u8 minus 128) instead
/// (`fold_shifts`).
pub(crate) enum OnI8 {
    /// tract's `OffsetU8asI8`: its readers read the i8 itself.
    Shift,
    /// The op that reads the i8 at the reader's input and gives the reader's value (a side
    /// of a quantized Add or Mul, its zero point 128 lower).
    Reads(Box<dyn TypedOp>),
    /// The reader keeps its op, which moves bytes whatever their type (a strided slice of
    /// bytes); its own readers must then take i8 too.
    Moves,
}

/// Replaces every node whose only output ends, through its readers, in `OffsetU8asI8`s and
/// for which `shifted` gives an op computing its value straight in i8 (its u8 minus 128),
/// with that op on the node's inputs; returns how many. Each reader must take the i8
/// (`on_i8`): a shift (one, or one per reader: a residual Add that two branch convolutions
/// read), an op with an i8 form for that input (the next residual Add beside the next
/// convolution's shift), or an op that moves bytes and whose readers take the i8 in turn
/// (a strided 1x1 convolution's downsampling before its shift). At least one shift must
/// be among them. A node with no such op that moves its inputs' bytes (a Concat) takes
/// them in i8 from its inputs' own i8 forms, when each input has one and no other reader.
/// The shifts are then no pass of their own (nor an allocation: each was about 1.1 K
/// instructions of the qformats network on cortex-a76). A node read by others too is
/// left: computing it twice costs more than the shift.
pub(crate) fn fold_shifts(
    model: &mut TypedModel,
    shifted: impl Fn(&TypedNode) -> Option<Box<dyn TypedOp>>,
    on_i8: impl Fn(&TypedNode, usize) -> Option<OnI8>,
) -> TractResult<usize> {
    // One fold at a time, each over the graph as the last left it: a fold replaces the
    // readers that take the i8 with new nodes (a residual Add reading one side as i8),
    // which may fold in turn, and leaves the nodes it replaced unread.
    let mut folded = 0;
    while fold_one_shift(model, &shifted, &on_i8)? {
        folded += 1;
    }
    Ok(folded)
}

/// The readers of `outlet` and what each does with the i8, recursively through the
/// ones that move it; `None` when one cannot take it. Counts the shifts into `shifts`.
fn plan(
    model: &TypedModel,
    outlet: OutletId,
    on_i8: &impl Fn(&TypedNode, usize) -> Option<OnI8>,
    (shifts, readers): (&mut usize, &mut Vec<usize>),
) -> TractResult<Option<Vec<Taken>>> {
    let outputs = model.output_outlets()?;
    if outputs.contains(&outlet) {
        return Ok(None);
    }
    let mut taken = vec![];
    for inlet in &model.outlet_successors(outlet).to_vec() {
        let reader = model.node(inlet.node);
        // A node that reads the value at two inputs, or reads it and what moved it, is
        // left: `wire` replaces a reader for one input.
        if readers.contains(&reader.id) {
            return Ok(None);
        }
        readers.push(reader.id);
        let Some(how) = on_i8(reader, inlet.slot) else {
            return Ok(None);
        };
        let after = match how {
            // Bytes moved from this input alone (the others would stay u8).
            OnI8::Moves if reader.outputs.len() == 1 && reader.inputs.len() == 1 => {
                let next = OutletId::new(reader.id, 0);
                let Some(after) = plan(model, next, on_i8, (&mut *shifts, &mut *readers))? else {
                    return Ok(None);
                };
                after
            }
            OnI8::Moves => return Ok(None),
            OnI8::Shift => {
                *shifts += 1;
                vec![]
            }
            OnI8::Reads(_) => vec![],
        };
        taken.push(Taken(*inlet, how, after));
    }
    Ok((!taken.is_empty()).then_some(taken))
}
/// A reader and what it does with the i8, with its own readers' when it moves it.
struct Taken(InletId, OnI8, Vec<Taken>);
/// Wires `taken` onto `wire`, the i8 of what they read.
fn wire(
    model: &TypedModel,
    patch: &mut TypedModelPatch,
    wire_i8: OutletId,
    taken: Vec<Taken>,
) -> TractResult<()> {
    for Taken(inlet, how, after) in taken {
        let reader = model.node(inlet.node);
        let out = OutletId::new(reader.id, 0);
        let op = match how {
            OnI8::Shift => {
                patch.shunt_outside(model, out, wire_i8)?;
                continue;
            }
            OnI8::Reads(op) => op,
            OnI8::Moves => reader.op.clone(),
        };
        let mut inputs = tvec![];
        for (slot, &i) in reader.inputs.iter().enumerate() {
            inputs.push(if slot == inlet.slot {
                wire_i8
            } else {
                patch.tap_model(model, i)?
            });
        }
        let new = patch.wire_node(format!("{}.on_i8", reader.name), op, &inputs)?[0];
        if after.is_empty() {
            patch.shunt_outside(model, out, new)?;
        } else {
            wire(model, patch, new, after)?;
        }
    }
    Ok(())
}

/// When `node` moves the bytes of every input (`OnI8::Moves` at each) and each input is a
/// node's only output, read by `node` alone, with a form straight in i8 (`shifted`): those
/// forms, input by input.
fn shifted_inputs(
    model: &TypedModel,
    node: &TypedNode,
    shifted: &impl Fn(&TypedNode) -> Option<Box<dyn TypedOp>>,
    on_i8: &impl Fn(&TypedNode, usize) -> Option<OnI8>,
) -> TractResult<Option<Vec<Box<dyn TypedOp>>>> {
    let outputs = model.output_outlets()?;
    let mut ops = vec![];
    for (slot, &input) in node.inputs.iter().enumerate() {
        if !matches!(on_i8(node, slot), Some(OnI8::Moves)) {
            return Ok(None);
        }
        let producer = model.node(input.node);
        let alone = producer.outputs.len() == 1
            && producer.outputs[0].successors.len() == 1
            && !outputs.contains(&input);
        let Some(op) = shifted(producer).filter(|_| alone) else {
            return Ok(None);
        };
        ops.push(op);
    }
    Ok((!ops.is_empty()).then_some(ops))
}

/// The first fold of [`fold_shifts`] in evaluation order, if there is one.
fn fold_one_shift(
    model: &mut TypedModel,
    shifted: &impl Fn(&TypedNode) -> Option<Box<dyn TypedOp>>,
    on_i8: &impl Fn(&TypedNode, usize) -> Option<OnI8>,
) -> TractResult<bool> {
    for id in model.eval_order()? {
        let from = model.node(id);
        if from.outputs.len() != 1 {
            continue;
        }
        let (mut shifts, mut readers) = (0, vec![]);
        let outlet = OutletId::new(id, 0);
        let Some(taken) = plan(model, outlet, on_i8, (&mut shifts, &mut readers))? else {
            continue;
        };
        if shifts == 0 {
            continue;
        }
        let mut patch = TypedModelPatch::default();
        let wire_i8 = if let Some(op) = shifted(from) {
            let inputs = from
                .inputs
                .iter()
                .map(|&i| patch.tap_model(model, i))
                .collect::<TractResult<TVec<_>>>()?;
            patch.wire_node(format!("{}.to_i8", from.name), op, &inputs)?[0]
        } else if let Some(ops) = shifted_inputs(model, from, shifted, on_i8)? {
            // A node that moves the bytes of several inputs (a Concat of branches) on the
            // i8s of its inputs, each computed straight in i8.
            let mut inputs = tvec![];
            for (&i, op) in from.inputs.iter().zip(ops) {
                let producer = model.node(i.node);
                let taps = producer
                    .inputs
                    .iter()
                    .map(|&i| patch.tap_model(model, i))
                    .collect::<TractResult<TVec<_>>>()?;
                inputs.push(patch.wire_node(format!("{}.to_i8", producer.name), op, &taps)?[0]);
            }
            patch.wire_node(format!("{}.on_i8", from.name), from.op.clone(), &inputs)?[0]
        } else {
            continue;
        };
        wire(model, &mut patch, wire_i8, taken)?;
        patch.apply(model)?;
        return Ok(true);
    }
    Ok(false)
}

/// Replaces, in evaluation order, every node for which `replacement` gives an op, keeping
/// the node's inputs, and returns how many were replaced (the engine's drop-in ops of
/// im2col.rs and pool.rs).
pub(crate) fn replace_nodes<O: TypedOp>(
    model: &mut TypedModel,
    replacement: impl Fn(&TypedModel, &TypedNode) -> TractResult<Option<O>>,
) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(new) = replacement(model, node)? else {
            continue;
        };
        let inputs = node.inputs.clone();
        TypedModelPatch::replace_single_op(model, node, &inputs, new)?.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}

/// Replaces, in evaluation order, every run of nodes that `find` matches at a node: `find`
/// gives the run's inputs, its last outlet and the op that computes it, and the run's
/// consumers are rewired to a new node named after the first one plus `suffix`. Returns how
/// many runs were replaced; the caller's next optimisation prunes the replaced nodes.
pub(crate) fn replace_runs<O: TypedOp + Clone>(
    model: &mut TypedModel,
    suffix: &str,
    find: impl Fn(&TypedModel, usize) -> TractResult<Option<(TVec<OutletId>, OutletId, O)>>,
) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let Some((inputs, last, op)) = find(model, id)? else {
            continue;
        };
        let name = format!("{}.{suffix}", model.node(id).name);
        let patch = TypedModelPatch::rewire(model, &inputs, &[last], &|p, taps| {
            p.wire_node(&name, op.clone(), taps)
        })?;
        patch.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}

/// `Some(x)` when node `id` is a plain tract `Sub(x, p)` whose value is exactly `x`: `p` is
/// `Mul(c, y)` or `Mul(y, c)` with `c` a constant all-zero integer tensor, the Sub is the
/// Mul's only consumer, and `x` has the Sub's output shape and datum type (so no consumer
/// can tell the difference). Anything else, including quantized types whose arithmetic
/// adds zero points, is `None`.
fn zero_product_sub(model: &TypedModel, id: usize) -> TractResult<Option<OutletId>> {
    let sub = model.node(id);
    if !is_bin_op::<Sub>(sub) || sub.inputs.len() != 2 || sub.outputs.len() != 1 {
        return Ok(None);
    }
    let out = OutletId::new(id, 0);
    let outputs = model.output_outlets()?;
    // A rewired Sub has no consumers left; a model output keeps its own node.
    if sub.outputs[0].successors.is_empty() || outputs.contains(&out) {
        return Ok(None);
    }
    let (x, product) = (sub.inputs[0], sub.inputs[1]);
    let mul = model.node(product.node);
    if !is_bin_op::<Mul>(mul)
        || mul.inputs.len() != 2
        || mul.outputs.len() != 1
        || mul.outputs[0].successors.len() != 1
        || outputs.contains(&product)
    {
        return Ok(None);
    }
    let out_fact = model.outlet_fact(out)?;
    let x_fact = model.outlet_fact(x)?;
    if !plain_integer(out_fact.datum_type)
        || x_fact.datum_type != out_fact.datum_type
        || x_fact.shape != out_fact.shape
        || !plain_integer(model.outlet_fact(product)?.datum_type)
    {
        return Ok(None);
    }
    let operands = [
        model.outlet_fact(mul.inputs[0])?,
        model.outlet_fact(mul.inputs[1])?,
    ];
    if !operands.iter().all(|f| plain_integer(f.datum_type)) {
        return Ok(None);
    }
    let zero = operands.iter().any(|f| {
        f.konst
            .as_ref()
            .is_some_and(|c| c.len() > 0 && c.is_all_zero().unwrap_or(false))
    });
    Ok(zero.then_some(x))
}

/// The plain tract binary op only: its codegen forms (`OptSubUnicast`, ...) are not matched,
/// so a tract upgrade that changes how the compensation is lowered turns this into a no-op
/// rather than into a rewrite of something else.
fn is_bin_op<M: BinMiniOp>(node: &TypedNode) -> bool {
    node.op_as::<TypedBinOp>().is_some_and(|op| op.0.is::<M>())
}

/// Whether `node` is tract's binary `M`, as declared or in the optimiser's by-scalar form
/// (a Relu's Max, a global pool's scaling Mul).
pub(crate) fn is_bin_or_by_scalar<M: BinMiniOp>(node: &TypedNode) -> bool {
    is_bin_op::<M>(node)
        || node
            .op_as::<OptBinByScalar>()
            .is_some_and(|b| b.binop.is::<M>())
}

/// Integer types with no quantization parameters: `is_integer` alone also accepts QU8 etc.
fn plain_integer(dt: DatumType) -> bool {
    dt.is_integer() && !dt.is_quantized()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::math::{add, mul, sub};

    /// `Add(s, s)` with `s = Sub(x, Mul(c, y))`: the Add gives the Sub a consumer.
    fn graph(x: TypedFact, y: TypedFact, c: Tensor) -> (TypedModel, OutletId, usize) {
        let mut m = TypedModel::default();
        let x = m.add_source("x", x).unwrap();
        let y = m.add_source("y", y).unwrap();
        let c = m.add_const("c", c).unwrap();
        let p = m.wire_node("p", mul(), &[c, y]).unwrap()[0];
        let s = m.wire_node("s", sub(), &[x, p]).unwrap()[0];
        let out = m.wire_node("out", add(), &[s, s]).unwrap()[0];
        m.select_output_outlets(&[out]).unwrap();
        (m, x, out.node)
    }

    fn zeros_i32(shape: &[usize]) -> Tensor {
        Tensor::zero::<i32>(shape).unwrap()
    }

    #[test]
    fn integer_zero_product_is_removed() {
        let (mut m, x, out) = graph(i32::fact([2, 3]), i32::fact([2, 3]), zeros_i32(&[1, 3]));
        assert_eq!(drop_zero_products(&mut m).unwrap(), 1);
        assert_eq!(m.node(out).inputs, vec![x, x]);
        // Nothing is left to match on a second pass.
        assert_eq!(drop_zero_products(&mut m).unwrap(), 0);
    }

    #[test]
    fn zero_as_second_mul_operand_and_chains_are_removed() {
        let mut m = TypedModel::default();
        let x = m.add_source("x", i32::fact([2, 3])).unwrap();
        let y = m.add_source("y", i32::fact([2, 3])).unwrap();
        let c = m.add_const("c", zeros_i32(&[1, 1])).unwrap();
        let p1 = m.wire_node("p1", mul(), &[y, c]).unwrap()[0];
        let s1 = m.wire_node("s1", sub(), &[x, p1]).unwrap()[0];
        let p2 = m.wire_node("p2", mul(), &[c, y]).unwrap()[0];
        let s2 = m.wire_node("s2", sub(), &[s1, p2]).unwrap()[0];
        let out = m.wire_node("out", add(), &[s2, x]).unwrap()[0];
        m.select_output_outlets(&[out]).unwrap();
        assert_eq!(drop_zero_products(&mut m).unwrap(), 2);
        assert_eq!(m.node(out.node).inputs, vec![x, x]);
    }

    #[test]
    fn other_shapes_of_the_pattern_are_left_alone() {
        let unchanged = |mut m: TypedModel| {
            let before = format!("{m:?}");
            assert_eq!(drop_zero_products(&mut m).unwrap(), 0);
            assert_eq!(format!("{m:?}"), before);
        };
        // A constant that is not all zeros.
        let c = Tensor::from_shape(&[1, 3], &[0i32, 1, 0]).unwrap();
        unchanged(graph(i32::fact([2, 3]), i32::fact([2, 3]), c).0);
        // Floats: 0 * inf is NaN, and -0.0 - -0.0 is +0.0.
        let c = Tensor::zero::<f32>(&[1, 3]).unwrap();
        unchanged(graph(f32::fact([2, 3]), f32::fact([2, 3]), c).0);
        // x is broadcast by the Sub: its fact differs from the Sub's output.
        unchanged(graph(i32::fact([1, 3]), i32::fact([2, 3]), zeros_i32(&[1, 3])).0);

        // 0 * y - x is -x, not x.
        let mut m = TypedModel::default();
        let x = m.add_source("x", i32::fact([2, 3])).unwrap();
        let y = m.add_source("y", i32::fact([2, 3])).unwrap();
        let c = m.add_const("c", zeros_i32(&[1, 3])).unwrap();
        let p = m.wire_node("p", mul(), &[c, y]).unwrap()[0];
        let s = m.wire_node("s", sub(), &[p, x]).unwrap()[0];
        let out = m.wire_node("out", add(), &[s, s]).unwrap()[0];
        m.select_output_outlets(&[out]).unwrap();
        unchanged(m);

        // The product has a second consumer.
        let mut m = TypedModel::default();
        let x = m.add_source("x", i32::fact([2, 3])).unwrap();
        let y = m.add_source("y", i32::fact([2, 3])).unwrap();
        let c = m.add_const("c", zeros_i32(&[1, 3])).unwrap();
        let p = m.wire_node("p", mul(), &[c, y]).unwrap()[0];
        let s = m.wire_node("s", sub(), &[x, p]).unwrap()[0];
        let out = m.wire_node("out", add(), &[s, p]).unwrap()[0];
        m.select_output_outlets(&[out]).unwrap();
        unchanged(m);

        // The Sub is the model's output.
        let (mut m, _, out) = graph(i32::fact([2, 3]), i32::fact([2, 3]), zeros_i32(&[1, 3]));
        let s = m.node(out).inputs[0];
        m.select_output_outlets(&[s]).unwrap();
        unchanged(m);
    }

    #[test]
    fn quantized_integers_are_not_plain() {
        assert!(plain_integer(DatumType::I32) && plain_integer(DatumType::U8));
        assert!(!plain_integer(DatumType::U8.with_zp_scale(128, 0.1)));
        assert!(!plain_integer(DatumType::F32));
    }
}

#[cfg(test)]
mod fold_tests {
    use super::*;
    use tract_onnx::tract_core::ops::cast::{cast, Cast};
    use tract_onnx::tract_core::ops::math::{add, mul};
    use tract_onnx::tract_core::ops::nn::{Reduce, Reducer};

    /// `x + (-128) * sum_k(i32(w))` with an i8 `w` of 64 × 32768 (2 MiB, so its i32 copy
    /// is past tract's 4 MiB folding budget), as tract lowers a large int8 kernel's
    /// zero-point term. `widened` adds a second path that keeps the i32 copy whole.
    fn weight_sum_graph(widened: bool) -> TypedModel {
        let (rows, k) = (64, 32768);
        let w: Vec<i8> = (0..rows * k).map(|i| (i * 7 % 251) as i8).collect();
        let mut m = TypedModel::default();
        let x = m.add_source("x", i32::fact([rows, 1])).unwrap();
        let w = m
            .add_const("w", Tensor::from_shape(&[rows, k], &w).unwrap())
            .unwrap();
        let wide = m.wire_node("wide", cast(i32::datum_type()), &[w]).unwrap()[0];
        let sum = Reduce::new(tvec![1], Reducer::Sum);
        let sum = m.wire_node("sum", sum, &[wide]).unwrap()[0];
        let zp = m.add_const("zp", tensor2(&[[-128i32]])).unwrap();
        let term = m.wire_node("term", mul(), &[sum, zp]).unwrap()[0];
        let mut out = m.wire_node("out", add(), &[x, term]).unwrap()[0];
        if widened {
            let y = m.add_source("y", i32::fact([rows, k])).unwrap();
            let whole = m.wire_node("whole", add(), &[y, wide]).unwrap()[0];
            let whole = m
                .wire_node("whole_sum", Reduce::new(tvec![1], Reducer::Sum), &[whole])
                .unwrap()[0];
            out = m.wire_node("out2", add(), &[out, whole]).unwrap()[0];
        }
        m.select_output_outlets(&[out]).unwrap();
        m
    }

    fn casts(m: &TypedModel) -> usize {
        m.nodes().iter().filter(|n| n.op_is::<Cast>()).count()
    }

    fn run(m: TypedModel, inputs: TVec<TValue>) -> Tensor {
        let plan = m.into_runnable().unwrap();
        plan.run(inputs).unwrap().remove(0).into_tensor()
    }

    #[test]
    fn large_weight_sums_are_evaluated_once_at_load() {
        let optimized = weight_sum_graph(false).into_optimized().unwrap();
        // tract leaves the chain in the plan: the point of the pass.
        assert_eq!(casts(&optimized), 1);
        let mut folded = optimized.clone();
        assert_eq!(fold_constant_chains(&mut folded).unwrap(), 1);
        folded.optimize().unwrap();
        assert_eq!(casts(&folded), 0);
        // The unpacked weights went with the chain: nothing in the plan is 2 MiB any more.
        let largest = folded
            .nodes()
            .iter()
            .filter_map(|n| n.op_as::<Const>())
            .map(|c| c.val().len())
            .max()
            .unwrap_or(0);
        assert!(largest < 64 * 32768, "{largest}");

        let x = Tensor::from_shape(&[64, 1], &(0..64).collect::<Vec<i32>>()).unwrap();
        let want = run(optimized, tvec![x.clone().into_tvalue()]);
        let got = run(folded, tvec![x.into_tvalue()]);
        assert_eq!(want, got);
        // And the values are the zero-point term itself, computed independently.
        let view = got.to_plain_array_view::<i32>().unwrap();
        for r in 0..64usize {
            let sum: i32 = (0..32768)
                .map(|c| ((r * 32768 + c) * 7 % 251) as i8 as i32)
                .sum();
            assert_eq!(view[[r, 0]], r as i32 - 128 * sum, "row {r}");
        }
    }

    #[test]
    fn a_chain_whose_large_value_is_still_needed_is_left_alone() {
        let mut optimized = weight_sum_graph(true).into_optimized().unwrap();
        let before = format!("{optimized:?}");
        // `wide` has two consumers: folding past it would keep the 8 MiB i32 copy in the
        // plan as a constant, so the chain stops at the Cast, which is not smaller.
        assert_eq!(fold_constant_chains(&mut optimized).unwrap(), 0);
        assert_eq!(format!("{optimized:?}"), before);
    }
}
