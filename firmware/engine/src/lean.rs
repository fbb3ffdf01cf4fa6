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
//!   between rounds, which frees what the fold replaced;
//! - one node per fold, where tract's pass walks on through single successors and holds each
//!   intermediate copy of a kernel at once;
//! - weight sums first, a slice of the kernel at a time (`rewrite::fold_chain_at`), so once
//!   a kernel is packed nothing reads the unpacked one.
//!
//! Folds follow tract's size rules and compute the values tract's would; tract's own pass
//! still runs after these for anything they leave.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::Slice;
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
}

impl TypedPass for OneFoldPerRound {
    fn reset(&mut self) -> TractResult<()> {
        self.handed = false;
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
    let mut inputs = TVec::new();
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
        inputs.push(konst.clone().into_tvalue());
    }
    if inputs.is_empty() {
        return Ok(None);
    }
    let output_bytes: u64 = node.outputs.iter().map(|o| mem(&o.fact)).sum();
    if grows_too_much(input_bytes, output_bytes) {
        return Ok(None);
    }
    // An op that cannot be evaluated here (stateful, or too early to tell) stays; tract's
    // own pass, which runs after this one, reports any real error.
    let Ok(Some(values)) = node.op.eval_out_of_plan(inputs) else {
        return Ok(None);
    };
    crate::rewrite::constants_for(model, id, values).map(Some)
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
