//! tract's codegen, run so that each replaced weight is freed as soon as it is replaced.
//!
//! tract's optimiser applies every patch of a pass before it prunes the graph. After
//! codegen, its constant folding packs each convolution's kernel (and reshapes it on the
//! way), so until the whole pass is done every unpacked kernel, its intermediate copies and
//! its packed form are all alive: VGG16 int8 went from 39 to 62 MiB resident in that one
//! pass. Besides, tract leaves a kernel over 1 MiB in the plan for the
//! `Reduce<Sum>(Cast<i32>(kernel))` weight sums it cannot fold (rewrite.rs), so the unpacked
//! kernels lived on until the engine's own rewrites after the optimiser.
//!
//! `optimize` runs tract's codegen passes in tract's order, with the constant folding pass
//! in front of them wrapped:
//! - one large fold per round (inputs of 64 KiB and up): the session prunes the graph
//!   between rounds, which frees what the fold replaced, and the freed heap is returned to
//!   the kernel;
//! - one node per fold, where tract's pass walks on through single successors and holds each
//!   intermediate copy of a kernel at once; an axis move reads its constant in place, where
//!   tract's evaluation clones it first;
//! - weight sums first, a slice of the kernel at a time (`rewrite::fold_chain_at`), so once
//!   a kernel is packed nothing reads the unpacked one.
//!
//! Folds follow tract's size rules and compute the values tract's would; tract's own pass
//! still runs after these for anything they leave.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::Slice;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::dummy::Dummy;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::source::TypedSource;
use tract_onnx::tract_core::optim::{
    Optimizer, OptimizerSession, TypedPass, CONST_FOLD_MEM_BUDGET,
};

/// Optimises `model` like `TypedModel::optimize`, holding about one layer's replaced
/// weights at a time at most. Falls back to tract's plain codegen if tract's pass list is
/// not the one this was written against (first pass `PropConst`).
pub(crate) fn optimize(model: &mut TypedModel) -> TractResult<()> {
    let mut optimizer = Optimizer::codegen();
    let first = optimizer.passes.first().map(|p| format!("{p:?}"));
    if !first.is_some_and(|name| name.starts_with("PropConst")) {
        log::warn!("tract's codegen passes changed; optimising without the lean constant folding");
        return model.optimize();
    }
    let fold = optimizer.passes.remove(0);
    optimizer.passes.insert(
        0,
        Box::new(OneFoldPerRound {
            fold,
            handed: false,
            trim: false,
        }),
    );
    model.optimize_with_session(&mut optimizer.session())
}

/// A fold whose inputs reach this size ends the round, so that the graph is pruned.
const PRUNE_AFTER_BYTES: u64 = 64 << 10;

/// The engine's folds (weight sums first, then single nodes), then tract's constant folding
/// pass for anything they leave; a round ends after each fold of a large input.
#[derive(Clone, Debug)]
struct OneFoldPerRound {
    fold: Box<dyn TypedPass>,
    /// A large fold was handed out this round: the next call ends the round.
    handed: bool,
    /// The round ended after a large fold: once the session has pruned the graph, the heap
    /// it freed goes back to the kernel.
    trim: bool,
}

impl TypedPass for OneFoldPerRound {
    fn reset(&mut self) -> TractResult<()> {
        self.handed = false;
        // The session calls this after pruning: what the last fold replaced is free now.
        // glibc keeps freed heap below the load's mmap threshold resident (memory.rs);
        // trimming after each large fold lowered VGG16's load peak by about 0.5 MiB, for
        // about 8 ms of its 170 ms load.
        if std::mem::take(&mut self.trim) {
            crate::memory::release_free_heap();
        }
        self.fold.reset()
    }

    fn next(
        &mut self,
        session: &mut OptimizerSession,
        model: &TypedModel,
    ) -> TractResult<Option<TypedModelPatch>> {
        // Ending the round makes the session prune the graph (and call `reset`) before
        // asking again, which frees what the last patch replaced.
        if std::mem::take(&mut self.handed) {
            self.trim = true;
            return Ok(None);
        }
        let order = model.eval_order()?;
        // Weight sums first: until they are folded they keep the unpacked kernel alive
        // beside its reshaped and packed copies.
        let mut found = None;
        for &id in &order {
            if crate::rewrite::starts_widened_sum(model, id)? {
                if let Some(patch) = crate::rewrite::fold_chain_at(model, id)? {
                    found = Some((id, patch));
                    break;
                }
            }
        }
        for &id in &order {
            if found.is_some() {
                break;
            }
            let patch = if grows_past_allowance(model, id)? {
                crate::rewrite::fold_chain_at(model, id)?
            } else {
                fold_one(model, id)?
            };
            found = patch.map(|p| (id, p));
        }
        let Some((id, patch)) = found else {
            let patch = self.fold.next(session, model)?;
            self.handed = patch.is_some();
            return Ok(patch);
        };
        // Pruning costs a pass over the graph: only worth it when the fold replaced
        // something large.
        let replaced: u64 = model.node_input_facts(id)?.iter().map(|f| mem(f)).sum();
        self.handed = replaced >= PRUNE_AFTER_BYTES;
        if self.handed {
            crate::memory::log_use(format_args!("folding {}", model.node(id).name));
        }
        Ok(Some(patch))
    }
}

/// The patch replacing node `id` by its value, when its inputs are all constant and tract's
/// constant folding would fold it too: an input other consumers also read is at most
/// `CONST_FOLD_MEM_BUDGET` (or the node is a Slice), so a large weight is not copied per
/// consumer, and the output is at most the larger of its inputs and the budget.
///
/// tract's pass walks on through the node's single successors in the same patch, which
/// keeps every intermediate copy of a kernel (reshaped, transposed, packed) alive at once.
/// One node per patch, with the graph pruned in between, holds one copy at a time and
/// reaches the same constants.
fn fold_one(model: &TypedModel, id: usize) -> TractResult<Option<TypedModelPatch>> {
    let node = model.node(id);
    if node.op_is::<Const>() || node.op_is::<Dummy>() || node.op_is::<TypedSource>() {
        return Ok(None);
    }
    let facts = model.node_input_facts(id)?;
    let mut inputs: TVec<Arc<Tensor>> = TVec::new();
    let mut input_bytes = 0u64;
    for (fact, outlet) in facts.iter().zip(&node.inputs) {
        let Some(konst) = &fact.konst else {
            return Ok(None);
        };
        let shared = model.outlet_successors(*outlet).len() > 1;
        if shared
            && !node.op_is::<Slice>()
            && !(fact.datum_type.is_number() && mem(fact) <= CONST_FOLD_MEM_BUDGET)
        {
            return Ok(None);
        }
        input_bytes += mem(fact);
        inputs.push(konst.clone());
    }
    if inputs.is_empty() {
        return Ok(None);
    }
    let output_bytes: u64 = node.outputs.iter().map(|o| mem(&o.fact)).sum();
    if grows_too_much(input_bytes, output_bytes) {
        return Ok(None);
    }
    if let Some(moved) = move_in_place(node, &inputs) {
        return crate::rewrite::constants_for(model, id, tvec!(moved?.into_tvalue())).map(Some);
    }
    // An op that cannot be evaluated here (stateful, or too early to tell) stays; tract's
    // own pass, which runs after this one, reports any real error.
    let inputs = inputs.into_iter().map(|t| t.into_tvalue()).collect();
    let Ok(Some(values)) = node.op.eval_out_of_plan(inputs) else {
        return Ok(None);
    };
    crate::rewrite::constants_for(model, id, values).map(Some)
}

/// The value of an axis move on a constant, read in place: `AxisOp::eval` takes its input
/// by value, so on a constant the graph still holds it clones the tensor and then moves
/// the axis into a second copy (two copies of a dense layer's kernel beside the original,
/// 1.5 MiB each on VGG16). `Tensor::moved_axis`, which that evaluation ends in, reads a
/// borrowed tensor and copies once. `None` for every other op, and for tensors that are
/// not plain host memory (block-quantized storage moves its own way in tract).
fn move_in_place(node: &TypedNode, inputs: &[Arc<Tensor>]) -> Option<TractResult<Tensor>> {
    let op = node.op_as::<AxisOp>()?;
    let AxisOp::Move(from, to) = *op.canonical() else {
        return None;
    };
    let [input] = inputs else {
        return None;
    };
    if !input.has_plain_ram_storage() {
        return None;
    }
    Some(input.moved_axis(from, to))
}

/// Whether `id` has constant inputs only and an output tract's constant folding refuses to
/// make (larger than its inputs and than `CONST_FOLD_MEM_BUDGET`): the start of a chain only
/// `rewrite::fold_chain_at` folds. Judged on the facts, without evaluating anything.
fn grows_past_allowance(model: &TypedModel, id: usize) -> TractResult<bool> {
    let node = model.node(id);
    if node.op_is::<Const>() || node.inputs.is_empty() {
        return Ok(false);
    }
    let mut input_bytes = 0u64;
    for fact in model.node_input_facts(id)? {
        if fact.konst.is_none() {
            return Ok(false);
        }
        input_bytes += mem(fact);
    }
    let output_bytes: u64 = node.outputs.iter().map(|o| mem(&o.fact)).sum();
    Ok(grows_too_much(input_bytes, output_bytes))
}

/// tract's size rule for folding a constant node: its output may be no larger than its
/// inputs, or than `CONST_FOLD_MEM_BUDGET` whatever the inputs.
fn grows_too_much(input_bytes: u64, output_bytes: u64) -> bool {
    output_bytes > input_bytes.max(CONST_FOLD_MEM_BUDGET)
}

fn mem(fact: &TypedFact) -> u64 {
    fact.mem_size().to_i64().map_or(u64::MAX, |m| m as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A constant's axis move, folded in place, is the tensor tract's own evaluation of the
    /// op gives, and the tensor ndarray's permutation gives.
    #[test]
    fn axis_moves_fold_in_place_to_tracts_values() {
        let shapes: [&[usize]; 3] = [&[6, 5], &[3, 5, 7], &[2, 3, 4, 5]];
        for shape in shapes {
            for from in 0..shape.len() {
                for to in 0..shape.len() {
                    if from == to {
                        continue;
                    }
                    let len: usize = shape.iter().product();
                    let data: Vec<i8> = (0..len).map(|i| (i * 37 % 251) as i8).collect();
                    let w = Tensor::from_shape(shape, &data).unwrap();
                    let mut m = TypedModel::default();
                    let c = m.add_const("w", w.clone()).unwrap();
                    let out = m.wire_node("moved", AxisOp::Move(from, to), &[c]).unwrap()[0];
                    m.select_output_outlets(&[out]).unwrap();

                    let tracts = m
                        .node(out.node)
                        .op
                        .eval_out_of_plan(tvec![w.clone().into_tvalue()]);
                    let tracts = tracts.unwrap().unwrap().remove(0).into_tensor();
                    let mut perm: Vec<usize> = (0..shape.len()).collect();
                    perm.remove(from);
                    perm.insert(to, from);
                    let permuted = w.to_plain_array_view::<i8>().unwrap().permuted_axes(perm);

                    let patch = fold_one(&m, out.node)
                        .unwrap()
                        .expect("a constant move folds");
                    patch.apply(&mut m).unwrap();
                    let folded = m.outlet_fact(m.output_outlets().unwrap()[0]).unwrap();
                    let folded = folded.konst.clone().expect("the output is a constant now");
                    assert_eq!(*folded, tracts, "{shape:?} move {from} -> {to}");
                    assert_eq!(folded.to_plain_array_view::<i8>().unwrap(), permuted);
                }
            }
        }
    }

    /// Other axis ops keep tract's evaluation.
    #[test]
    fn only_moves_are_read_in_place() {
        let mut m = TypedModel::default();
        let x = m.add_source("x", i8::fact([2, 3])).unwrap();
        let added = m.wire_node("added", AxisOp::Add(0), &[x]).unwrap()[0];
        let moved = m.wire_node("moved", AxisOp::Move(0, 2), &[added]).unwrap()[0];
        let value = Arc::new(Tensor::zero::<i8>(&[2, 3]).unwrap());
        assert!(move_in_place(m.node(added.node), &[value]).is_none());
        let value = Arc::new(Tensor::zero::<i8>(&[1, 2, 3]).unwrap());
        let moved = move_in_place(m.node(moved.node), &[value])
            .expect("a move")
            .unwrap();
        assert_eq!(moved.shape(), &[2, 3, 1]);
    }
}
