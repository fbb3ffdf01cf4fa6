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
//!   a kernel is packed nothing reads the unpacked one;
//! - a constant that one axis op, reshape or packing reads, and nothing else, is taken out
//!   of the graph and changed in place (`run_direct`): the axis op is evaluated on the
//!   tensor itself (a reshape keeps its bytes), and a kernel whose packing only permutes
//!   bytes inside each panel is packed panel by panel in its own buffer. A fold through
//!   tract's evaluation of a constant the graph holds makes the new copy beside the old one
//!   (2.25 MiB each for VGG16's 512x4608 kernels, twice per layer: the reshape and the
//!   packing).
//!
//! Folds follow tract's size rules and compute the values tract's would; tract's own pass
//! still runs after these for anything they leave.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use tract_linalg::mmm::{EagerPackedInput, MMMInputValue, PackedExoticFact, PackedMatrixStorage};
use tract_linalg::pack::PackedI8K4;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{bail, ensure};
use tract_onnx::tract_core::ops::array::Slice;
use tract_onnx::tract_core::ops::change_axes::{AxisOp, IntoShape};
use tract_onnx::tract_core::ops::dummy::Dummy;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::matmul::pack::{DynPackedExoticFact, OptMatMulPack};
use tract_onnx::tract_core::ops::source::TypedSource;
use tract_onnx::tract_core::optim::{
    Optimizer, OptimizerSession, TypedPass, CONST_FOLD_MEM_BUDGET,
};

/// Optimises `model` like `TypedModel::optimize`, holding about one layer's replaced
/// weights at a time at most, and returns how many constants were changed in place.
/// Falls back to tract's plain codegen if tract's pass list is not the one this was written
/// against (first pass `PropConst`).
pub(crate) fn optimize(model: &mut TypedModel) -> TractResult<InPlace> {
    let mut optimizer = Optimizer::codegen();
    let first = optimizer.passes.first().map(|p| format!("{p:?}"));
    if !first.is_some_and(|name| name.starts_with("PropConst")) {
        log::warn!("tract's codegen passes changed; optimising without the lean constant folding");
        model.optimize()?;
        return Ok(InPlace::default());
    }
    let fold = optimizer.passes.remove(0);
    let in_place = Arc::new(Mutex::new(InPlace::default()));
    optimizer.passes.insert(
        0,
        Box::new(OneFoldPerRound {
            fold,
            handed: false,
            trim: false,
            direct: false,
            in_place: in_place.clone(),
        }),
    );
    // After tract's declutter (which makes a per-tensor Scale a fixed-point QScale) and
    // before its fuse (which would move the QScale into the matmul's kernel).
    match optimizer
        .passes
        .iter()
        .position(|p| format!("{p:?}") == "declutter")
    {
        Some(at) => optimizer
            .passes
            .insert(at + 1, Box::new(crate::epilogue::PerTensorRequantize)),
        None => log::warn!(
            "tract's codegen passes changed; per-tensor requantisation left in tract's kernels"
        ),
    }
    model.optimize_with_session(&mut optimizer.session())?;
    let done = std::mem::take(&mut *in_place.lock().unwrap_or_else(PoisonError::into_inner));
    Ok(done)
}

/// What `optimize` changed in place rather than by evaluation.
#[derive(Debug, Default)]
pub(crate) struct InPlace {
    /// Constants reshaped (or otherwise changed by an axis op) without a copy beside them.
    pub(crate) reshaped: usize,
    /// Kernels packed panel by panel in their own buffer.
    pub(crate) packed: usize,
    /// Nodes whose constant turned out to be held elsewhere too: folded the usual way.
    refused: HashSet<String>,
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
    /// The round was ended for `run_direct` to change constants in place.
    direct: bool,
    /// Shared by the copies of this pass (the session clones its passes every round).
    in_place: Arc<Mutex<InPlace>>,
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
        // Then whatever can change in place: the round ends here with an empty patch (which
        // keeps the session going) and `run_direct` does it, with the model in hand.
        if found.is_none() {
            let refused = &self
                .in_place
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .refused;
            for &id in &order {
                if !refused.contains(&model.node(id).name) && in_place_at(model, id)?.is_some() {
                    self.handed = true;
                    self.direct = true;
                    return Ok(Some(TypedModelPatch::new("constants changed in place")));
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

    /// Changes every constant `in_place_at` finds, once `next` has ended the round for it.
    fn run_direct(&mut self, model: &mut TypedModel) -> TractResult<bool> {
        if !std::mem::take(&mut self.direct) {
            return Ok(false);
        }
        let mut state = self.in_place.lock().unwrap_or_else(PoisonError::into_inner);
        let mut changed = false;
        // Ids stay valid: applying a patch appends nodes, only the session's pruning
        // renumbers them.
        for id in model.eval_order()? {
            if state.refused.contains(&model.node(id).name) {
                continue;
            }
            let Some(change) = in_place_at(model, id)? else {
                continue;
            };
            let input = model.node(id).inputs[0];
            let Some(tensor) = take_constant(model, input)? else {
                log::debug!(
                    "{}: its constant is shared, folded by copy",
                    model.node(id).name
                );
                state.refused.insert(model.node(id).name.clone());
                continue;
            };
            let value = match change {
                Change::Eval => {
                    let op = model.node(id).op.clone();
                    let values = op.eval_out_of_plan(tvec![tensor.into_tvalue()])?;
                    state.reshaped += 1;
                    let Some(values) = values else {
                        bail!("{} cannot be evaluated at load", model.node(id));
                    };
                    values
                }
                Change::Pack(pack) => {
                    state.packed += 1;
                    tvec![pack.pack(tensor)?.into_tvalue()]
                }
            };
            let large = value
                .iter()
                .any(|v| v.len() * v.datum_type().size_of() >= PRUNE_AFTER_BYTES as usize);
            let name =
                large.then(|| format!("{} ({})", model.node(id).name, model.node(id).op.name()));
            crate::rewrite::constants_for(model, id, value)?.apply(model)?;
            if let Some(name) = name {
                crate::memory::log_use(format_args!("{name}, in place"));
            }
            changed = true;
        }
        Ok(changed)
    }
}

/// How a node whose only input is a constant nothing else reads can change it in place.
enum Change {
    /// An axis op or a reshape, evaluated on the constant itself: tract's evaluation takes
    /// its input by value, and with the only reference it reshapes without copying.
    Eval,
    /// A packing that only permutes each panel's bytes.
    Pack(PackInPlace),
}

/// The change `in_place_at` makes at node `id`, if any: the node reads one constant, which
/// no other node reads and which is not a model output, in plain host memory.
fn in_place_at(model: &TypedModel, id: usize) -> TractResult<Option<Change>> {
    let node = model.node(id);
    let [input] = node.inputs[..] else {
        return Ok(None);
    };
    let source = model.node(input.node);
    let Some(konst) = source.op_as::<Const>() else {
        return Ok(None);
    };
    if konst.exotic_fact().is_some()
        || !konst.val().has_plain_ram_storage()
        || node.outputs.len() != 1
        || model.outlet_successors(input).len() != 1
        || model.output_outlets()?.contains(&input)
    {
        return Ok(None);
    }
    if node.op_is::<AxisOp>() || node.op_is::<IntoShape>() {
        return Ok(Some(Change::Eval));
    }
    Ok(PackInPlace::at(model, node, konst.val())?.map(Change::Pack))
}

/// Removes the constant feeding `outlet` from the graph and returns its tensor, or `None`
/// (the graph unchanged) when something else holds the tensor too. The constant's node is
/// left a `Dummy` with no value: the caller replaces its only reader next, after which
/// nothing reads it and the session's pruning removes it.
fn take_constant(model: &mut TypedModel, outlet: OutletId) -> TractResult<Option<Tensor>> {
    let Some(konst) = model.node(outlet.node).op_as::<Const>() else {
        bail!("{} is not a constant", model.node(outlet.node));
    };
    let tensor = konst.val().clone();
    model.node_mut(outlet.node).op = Box::new(Dummy::new());
    let fact = model.outlet_fact_mut(outlet)?.konst.take();
    drop(fact);
    match Arc::try_unwrap(tensor) {
        Ok(tensor) => Ok(Some(tensor)),
        Err(tensor) => {
            model.node_mut(outlet.node).op = Box::new(Const::new(tensor.clone())?);
            model.outlet_fact_mut(outlet)?.konst = Some(tensor);
            Ok(None)
        }
    }
}

/// A kernel whose packing into tract's `PackedI8K4` layout needs no padding: `k` a multiple
/// of 4, `mn` of the panel width `r`, laid out as `mn` rows of `k` bytes. Then panel `p` is
/// rows `p * r ..` of the kernel, the same bytes the packed panel takes, and packing
/// permutes the bytes inside each panel (`out[(k / 4) * r * 4 + m * 4 + k % 4] =
/// in[m][k]`, tract's layout).
struct PackInPlace {
    format: PackedI8K4,
    k: usize,
    mn: usize,
    /// The packing's output shape: the kernel's without the k and mn axes.
    shape: TVec<usize>,
}

impl PackInPlace {
    fn at(model: &TypedModel, node: &TypedNode, kernel: &Tensor) -> TractResult<Option<Self>> {
        let Some(op) = node.op_as::<OptMatMulPack>() else {
            return Ok(None);
        };
        let fact = &node.outputs[0].fact;
        let Some(packers) = fact
            .exotic_fact
            .as_ref()
            .and_then(|f| f.downcast_ref::<DynPackedExoticFact>())
            .map(|f| &f.packers)
        else {
            return Ok(None);
        };
        let [packer] = &packers[..] else {
            return Ok(None);
        };
        let Some(format) = packer.downcast_ref::<PackedI8K4>() else {
            return Ok(None);
        };
        if kernel.datum_type() != DatumType::I8 {
            return Ok(None);
        }
        let input = model.outlet_fact(node.inputs[0])?;
        let mapping = op.axes_mapping(&[input], &[fact])?;
        let k_axis = mapping.axis('K')?.inputs[0][0];
        let mn_axis = mapping.axis('M')?.inputs[0][0];
        let (shape, strides) = (kernel.shape(), kernel.strides());
        let (k, mn) = (shape[k_axis], shape[mn_axis]);
        let others_are_one = (0..shape.len())
            .filter(|&a| a != k_axis && a != mn_axis)
            .all(|a| shape[a] == 1);
        let aligned = (kernel.as_bytes().as_ptr() as usize).is_multiple_of(format.alignment());
        if !others_are_one
            || strides[k_axis] != 1
            || strides[mn_axis] != k as isize
            || k % 4 != 0
            || format.r == 0
            || mn % format.r != 0
            || !aligned
        {
            return Ok(None);
        }
        Ok(Some(PackInPlace {
            format: format.clone(),
            k,
            mn,
            shape: op.output_shape(shape),
        }))
    }

    /// The packed kernel, as tract's packing evaluates it (one packed matrix).
    fn pack(&self, kernel: Tensor) -> TractResult<Tensor> {
        let dt = kernel.datum_type();
        let (r, k) = (self.format.r, self.k);
        let mut blob = kernel.into_blob()?;
        let bytes = blob.as_bytes_mut();
        ensure!(
            bytes.len() == self.mn * k,
            "{} bytes for {} x {k}",
            bytes.len(),
            self.mn
        );
        let mut rows = vec![0u8; r * k];
        for panel in bytes.chunks_exact_mut(r * k) {
            rows.copy_from_slice(panel);
            for (m, row) in rows.chunks_exact(k).enumerate() {
                for (group, four) in row.chunks_exact(4).enumerate() {
                    panel[(group * r + m) * 4..][..4].copy_from_slice(four);
                }
            }
        }
        let packed: Box<dyn MMMInputValue> = Box::new(EagerPackedInput {
            fact: PackedExoticFact {
                format: Box::new(self.format.clone()),
                k,
                mn: self.mn.to_dim(),
            },
            packed: Arc::new(blob),
            panel_bytes: r * k,
            mn: self.mn,
        });
        Ok(PackedMatrixStorage::new_batched(&self.shape, tvec![packed]).into_tensor(dt))
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
    use tract_onnx::tract_core::internal::EvalOp;

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

    /// A reshape of a constant nothing else reads is done on the constant itself: tract's
    /// value, in the same buffer.
    #[test]
    fn reshapes_of_unshared_constants_keep_their_buffer() {
        let data: Vec<i8> = (0..4 * 6 * 9).map(|i| (i * 37 % 251) as i8).collect();
        let w = Tensor::from_shape(&[4, 6, 3, 3], &data).unwrap();
        let buffer = w.as_bytes().as_ptr();
        let op = AxisOp::Reshape(
            1,
            tvec![6.to_dim(), 3.to_dim(), 3.to_dim()],
            tvec![54.to_dim()],
        );
        let tracts = EvalOp::eval_out_of_plan(&op, tvec![w.clone().into_tvalue()])
            .unwrap()
            .unwrap()
            .remove(0)
            .into_tensor();
        let mut m = TypedModel::default();
        let c = m.add_const("w", w).unwrap();
        let out = m.wire_node("reshaped", op, &[c]).unwrap()[0];
        m.select_output_outlets(&[out]).unwrap();

        let done = optimize(&mut m).unwrap();
        assert_eq!((done.reshaped, done.packed), (1, 0));
        let folded = m.outlet_fact(m.output_outlets().unwrap()[0]).unwrap();
        let folded = folded.konst.clone().expect("the output is a constant now");
        assert_eq!(*folded, tracts);
        assert_eq!(folded.shape(), &[4, 54]);
        assert_eq!(
            folded.as_bytes().as_ptr(),
            buffer,
            "reshaped in a new buffer"
        );
    }

    /// Every K4 kernel tract packs without padding is packed in place, to tract's bytes;
    /// the others are packed by tract's evaluation, and the two plans compute the same bits.
    #[test]
    fn kernels_packed_in_place_are_tracts_packing() {
        use crate::banded::tests::{conv_model, outputs, test_inputs, Layer};
        // Kernels of 36x32, 288x16, 16x24 (1x1) and 27x40 (k not a multiple of 4).
        let layers = [
            Layer(32, 3, [1; 2], 1, [1; 4], 1),
            Layer(16, 3, [1; 2], 1, [1; 4], 1),
            Layer(24, 1, [1; 2], 1, [0; 4], 1),
            Layer(40, 3, [2; 2], 1, [1; 4], 1),
        ];
        // The kernels the engine's loads choose (tract's AMX kernels off, cpu.rs).
        crate::cpu::configure_tract();
        let (h, w) = (12, 10);
        // (input channels, layers): the second model's first layer has k = 27.
        let models = [(4, &layers[..3]), (3, &layers[3..])];
        for (model, (c, layers)) in models.into_iter().enumerate() {
            let bytes = conv_model(c, h, w, layers);
            let decluttered = tract_onnx::onnx()
                .model_for_read(&mut &bytes[..])
                .unwrap()
                .with_input_fact(0, f32::fact([1, c, h, w]).into())
                .unwrap()
                .into_typed()
                .unwrap()
                .into_decluttered()
                .unwrap();
            let mut tracts = decluttered.clone();
            tracts.optimize().unwrap();
            let mut ours = decluttered;
            let done = optimize(&mut ours).unwrap();

            let (theirs, mine) = (k4_kernels(&tracts), k4_kernels(&ours));
            assert_eq!(theirs, mine, "model {model}: packed kernels differ");
            let unpadded = theirs
                .iter()
                .filter(|(r, k, mn, _)| k % 4 == 0 && mn % r == 0)
                .count();
            assert_eq!(
                done.packed, unpadded,
                "model {model}: kernels packed in place"
            );
            if model == 0 && !theirs.is_empty() {
                assert!(done.packed > 0, "no K4 kernel packed in place: {theirs:?}");
            }

            let len = c * h * w;
            let shape = [1, c, h, w];
            let (tracts, ours) = (
                Arc::new(tracts.into_runnable().unwrap()),
                Arc::new(ours.into_runnable().unwrap()),
            );
            for data in test_inputs(len) {
                assert_eq!(
                    outputs(&tracts, &shape, &data),
                    outputs(&ours, &shape, &data),
                    "model {model}"
                );
            }
        }
    }

    /// A MobileNetV2-like int8 graph as onnxruntime's QOperator export writes it: a
    /// residual `DequantizeLinear -> Add -> QuantizeLinear` between QLinearConvs, a
    /// depthwise QLinearConv, a 1x1 one, and a float head (`GlobalAveragePool`, `Gemm`).
    fn residual_model(c: usize, h: usize, w: usize) -> Vec<u8> {
        use crate::onnx_build::{int, ints, model_bytes, node, raw};
        use tract_onnx::pb;
        use tract_onnx::pb::tensor_proto::DataType as D;
        let mut seed = 0x9e37_79b9_u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        let mut init = vec![];
        let scale = |name: &str, v: f32, z: u8, init: &mut Vec<pb::TensorProto>| {
            init.push(raw(&format!("{name}s"), D::Float, &[], &[v]));
            init.push(raw(&format!("{name}z"), D::Uint8, &[], &[z]));
        };
        for (name, v, z) in [
            ("x", 1.0 / 255.0, 0),
            ("a", 0.05, 110),
            ("b", 0.04, 120),
            ("r", 0.07, 100),
            ("d", 0.06, 90),
            ("e", 0.08, 128),
            ("f", 0.05, 125),
        ] {
            scale(name, v, z, &mut init);
        }
        let classes = 10;
        let fc: Vec<f32> = (0..classes * 48)
            .map(|_| (next() % 2001) as f32 * 1e-3 - 1.0)
            .collect();
        let mut conv = |name: &str,
                        input: &str,
                        output: &str,
                        (cout, cin, k, group, stride): (usize, usize, usize, usize, i64),
                        init: &mut Vec<pb::TensorProto>| {
            let weights: Vec<i8> = (0..cout * (cin / group) * k * k)
                .map(|_| (next() % 255) as i8)
                .collect();
            let bias: Vec<i32> = (0..cout).map(|_| (next() % 2001) as i32 - 1000).collect();
            let scales: Vec<f32> = (0..cout)
                .map(|_| 2e-3 + (next() % 1000) as f32 * 2e-6)
                .collect();
            init.push(raw(
                &format!("{name}w"),
                D::Int8,
                &[cout, cin / group, k, k],
                &weights,
            ));
            init.push(raw(&format!("{name}ws"), D::Float, &[cout], &scales));
            init.push(raw(
                &format!("{name}wz"),
                D::Int8,
                &[cout],
                &vec![0i8; cout],
            ));
            init.push(raw(&format!("{name}b"), D::Int32, &[cout], &bias));
            let inputs = [
                format!("{input}q"),
                format!("{input}s"),
                format!("{input}z"),
                format!("{name}w"),
                format!("{name}ws"),
                format!("{name}wz"),
                format!("{output}s"),
                format!("{output}z"),
                format!("{name}b"),
            ];
            let pad = (k / 2) as i64;
            node(
                "QLinearConv",
                &inputs,
                &format!("{output}q"),
                vec![
                    ints("kernel_shape", &[k as i64; 2]),
                    ints("pads", &[pad; 4]),
                    ints("strides", &[stride; 2]),
                    int("group", group as i64),
                ],
            )
        };
        let nodes = vec![
            node("QuantizeLinear", &["x", "xs", "xz"], "xq", vec![]),
            conv("c1", "x", "a", (16, c, 3, 1, 1), &mut init),
            conv("c2", "a", "b", (16, 16, 1, 1, 1), &mut init),
            node("DequantizeLinear", &["aq", "as", "az"], "ad", vec![]),
            node("DequantizeLinear", &["bq", "bs", "bz"], "bd", vec![]),
            node("Add", &["ad", "bd"], "sum", vec![]),
            node("QuantizeLinear", &["sum", "rs", "rz"], "rq", vec![]),
            conv("c3", "r", "d", (16, 16, 3, 16, 1), &mut init),
            conv("c4", "d", "e", (32, 16, 1, 1, 1), &mut init),
            // A strided branch from the Add, as a downsampling shortcut has.
            conv("c5", "r", "f", (16, 16, 1, 1, 2), &mut init),
            node("DequantizeLinear", &["eq", "es", "ez"], "ed", vec![]),
            node("GlobalAveragePool", &["ed"], "pooled", vec![]),
            node("DequantizeLinear", &["fq", "fs", "fz"], "fd", vec![]),
            node("GlobalAveragePool", &["fd"], "fpooled", vec![]),
            node(
                "Concat",
                &["pooled", "fpooled"],
                "both",
                vec![int("axis", 1)],
            ),
            node("Flatten", &["both"], "flat", vec![int("axis", 1)]),
            node("Gemm", &["flat", "fc"], "y", vec![int("transB", 1)]),
        ];
        init.push(raw("fc", D::Float, &[classes, 48], &fc));
        model_bytes("residual", nodes, init, ("x", &[1, c, h, w]), "y")
    }

    /// The whole load path on a residual int8 graph (a strided 1x1 branch from the Add)
    /// computes the outputs of tract's own plan (`assert_agree`: its bits
    /// but for the head pool's f32 averages; `load::tests::compare` does this for the
    /// default bundle, which has no residual adds and no depthwise layer), with no shift
    /// to i8 left as a pass of its own.
    #[test]
    fn residual_int8_graphs_keep_tracts_outputs() {
        use crate::banded::tests::{assert_agree, input_spec, outputs, test_inputs};
        use crate::load::{build_with, Target};
        let (c, h, w) = (3, 14, 12);
        let bytes = residual_model(c, h, w);
        let spec = input_spec(c, h, w);
        let target = Target {
            input: &spec,
            output_tensor: "y",
            batch: 1,
        };
        let plain = build_with(&bytes, &target, false).unwrap();
        let ours = build_with(&bytes, &target, true).unwrap();
        assert!(
            ours.patches.iter().any(|p| p.contains("depthwise")),
            "{:?}",
            ours.patches
        );
        // No shift to i8 is a pass of its own: the first convolution gives i8 to the
        // second and to the Add (which reads it as i8); the Add gives i8 to the depthwise
        // layer and, through the downsampling, to the strided convolution.
        let model = ours.plan.model();
        let shifts = model
            .nodes()
            .iter()
            .filter(|n| crate::rewrite::is_offset_to_i8(n));
        let from: Vec<String> = shifts
            .map(|n| model.node(n.inputs[0].node).op.name().to_string())
            .collect();
        assert!(from.is_empty(), "{from:?} {:?}", ours.patches);
        let on_i8 = model.nodes().iter().filter(|n| n.name.contains(".on_i8"));
        let mut on_i8: Vec<_> = on_i8.map(|n| n.op.name().to_string()).collect();
        on_i8.sort();
        on_i8.dedup();
        assert_eq!(on_i8, ["Downsample8", "QBinary"], "{:?}", ours.patches);
        for data in test_inputs(c * h * w) {
            let want = outputs(&plain.plan, &[1, c, h, w], &data);
            let got = outputs(&ours.plan, &[1, c, h, w], &data);
            assert_agree(&ours.plan, &want, &got, "residual graph");
        }
    }

    /// The `PackedI8K4` kernels of a plan, as (r, k, mn, packed bytes), sorted: in constants
    /// and in matmuls' constant operands.
    fn k4_kernels(model: &TypedModel) -> Vec<(usize, usize, usize, Vec<u8>)> {
        use tract_onnx::tract_core::ops::matmul::optimized::{
            MatMulOperand, OptMatMul, ProtoFusedSpec,
        };
        let mut values: Vec<Box<dyn MMMInputValue>> = vec![];
        for node in model.nodes() {
            if let Some(k) = node.op_as::<Const>() {
                if let Ok(storage) = k.val().try_storage_as::<PackedMatrixStorage>() {
                    values.extend(storage.values().iter().cloned());
                }
            }
            if let Some(mm) = node.op_as::<OptMatMul>() {
                for op in &mm.micro_ops {
                    if let ProtoFusedSpec::AddMatMul { a, b, .. } = op {
                        for operand in [a, b] {
                            if let MatMulOperand::Const(v) = operand {
                                values.push(v.clone());
                            }
                        }
                    }
                }
            }
        }
        let mut kernels: Vec<_> = values
            .iter()
            .filter_map(|v| {
                let e = v.downcast_ref::<EagerPackedInput>()?;
                let f = e.fact.format.downcast_ref::<PackedI8K4>()?;
                Some((f.r, e.fact.k, e.mn, e.packed.as_bytes().to_vec()))
            })
            .collect();
        kernels.sort();
        kernels
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
