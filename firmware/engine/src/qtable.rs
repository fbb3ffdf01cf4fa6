//! Element-wise float steps between two quantized tensors, as one 256-entry table.
//!
//! An activation that the quantizer left in float reaches tract as
//! `Quantize8(f(... DQ(x)))`, each step of `f` element-wise: a Clip (ReLU6) or a Relu
//! between QLinearConvs when onnxruntime quantizes only the convolutions (QOperator with
//! standard ops), a HardSigmoid or a LeakyRelu it has no quantized form of. tract 0.23.9
//! makes a lookup table of such a chain only when every step is a unary operator, and its
//! ONNX Clip and Relu are Max and Min with a constant: they ran as three passes over the
//! tensor with two f32 tensors between them, about a seventh of EfficientNet-Lite0's
//! QOperator-standard inference under qemu (cortex-a72).
//!
//! A u8 or i8 input has 256 values, so the chain is a table of 256 outputs. The table is
//! made at load by running the chain's own operators (the dequantization, each step with
//! its constant, the quantization) on the 256 values, so every entry is the byte tract's
//! chain gives for that value; [`QTable`] applies it (kernels/lut.rs: TBL/TBX on
//! aarch64; tract's own table op is its generic one there, four instructions a byte). A step qualifies when it is an element-wise unary operator, or a binary
//! one (or tract's chain of binary ones) whose other inputs are constants of one value.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::array::TypedConcat;
use tract_onnx::tract_core::ops::binary::{OptBinByScalar, OptBinChain, OptBinUnicast, TypedBinOp};
use tract_onnx::tract_core::ops::change_axes::{AxisOp, IntoShape};
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::math::Max;
use tract_onnx::tract_core::ops::nn::Reduce;
use tract_onnx::tract_core::ops::quant::DequantizeLinearF32;

use crate::kernels::lut;
use crate::quantize::Quantize8;

/// A u8 or i8 tensor's bytes looked up in a 256-entry table (indexed by the bits of each
/// byte); the output has the input's shape and the type `to`, u8 or i8 (the table's bytes
/// are its bits).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct QTable {
    table: Box<[u8; 256]>,
    to: DatumType,
}

impl QTable {
    /// This table giving i8 when it gives u8 (rewrite.rs `fold_shifts`): `u8 - 128` as i8
    /// is the u8 with its top bit flipped.
    pub(crate) fn shifted(&self) -> Option<QTable> {
        (self.to == DatumType::U8).then(|| QTable {
            table: Box::new(std::array::from_fn(|i| self.table[i] ^ 0x80)),
            to: DatumType::I8,
        })
    }
}

impl Op for QTable {
    fn name(&self) -> StaticName {
        "QTable".into()
    }

    tract_onnx::tract_core::op_as_typed_op!();
}

impl EvalOp for QTable {
    tract_onnx::tract_core::op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, mut inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let mut x = inputs.remove(0).into_tensor();
        {
            let mut view = x.try_as_plain_ram_mut()?;
            match view.datum_type() {
                DatumType::U8 => lut::apply(&self.table, view.as_slice_mut::<u8>()?),
                DatumType::I8 => {
                    let values = view.as_slice_mut::<i8>()?;
                    // SAFETY: i8 and u8 have the same size and alignment; every bit
                    // pattern is valid for both.
                    let bytes = unsafe {
                        std::slice::from_raw_parts_mut(
                            values.as_mut_ptr().cast::<u8>(),
                            values.len(),
                        )
                    };
                    lut::apply(&self.table, bytes)
                }
                other => bail!("QTable: an input of {other:?}"),
            }
        }
        if x.datum_type() != self.to {
            // SAFETY: u8 and i8 (the only types accepted above and in `to`) have the same
            // size and alignment, and every byte is a valid value of both.
            unsafe { x.set_datum_type(self.to) };
        }
        Ok(tvec!(x.into_tvalue()))
    }
}

impl TypedOp for QTable {
    tract_onnx::tract_core::as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut fact = inputs[0].without_value();
        fact.datum_type = self.to;
        Ok(tvec!(fact))
    }
}

/// Replaces every `Quantize8(f(DQ(x)))` chain of element-wise steps with a lookup table;
/// returns, per chain, the names of its float steps' nodes (load.rs reports their ONNX
/// operators as integer).
pub(crate) fn tabulate_quantized_chains(model: &mut TypedModel) -> TractResult<Vec<Vec<String>>> {
    let found = std::cell::RefCell::new(vec![]);
    crate::rewrite::replace_runs(model, "table", |model, id| {
        if !model.node(id).op_is::<Quantize8>() {
            return Ok(None);
        }
        // A dequantization straight into a quantization is a plain requantization; tract
        // handles it.
        let Some(chain) = chain_into(model, id)?.filter(|c| c.steps.len() > 1) else {
            return Ok(None);
        };
        let last = *chain
            .steps
            .last()
            .expect("a chain ends with its quantization");
        let op = QTable {
            table: table(model, &chain)?,
            to: model.node(last).outputs[0].fact.datum_type,
        };
        found.borrow_mut().push(
            chain.steps[..chain.steps.len() - 1]
                .iter()
                .map(|&s| model.node(s).name.clone())
                .collect(),
        );
        Ok(Some((tvec![chain.input], OutletId::new(last, 0), op)))
    })?;
    Ok(found.into_inner())
}

/// Folds element-wise integer work on one tensor into single tables; returns how many
/// nodes it replaced.
/// - A same-shape [`QBinary`] whose two inputs are one tensor `x`, each directly or through
///   a [`QTable`], is a function of each byte of `x`: a table of it (a hard-swish's
///   `x · relu6(x + 3)`: the QDQ export quantizes the `relu6(x + 3)`, tabulated, then the
///   Mul). Its entries come from kernels/qbinary.rs's reference, whose bytes the operator's
///   kernels give.
/// - A table whose input is another table's output is one table (the hard-swish's division
///   by 6 after that Mul).
///
/// On PaddleOCR's text-direction classifier each hard-swish was a table, a QBinary and a
/// table: three passes, now one lookup.
pub(crate) fn merge_tables(model: &mut TypedModel) -> TractResult<usize> {
    crate::rewrite::replace_runs(model, "merged", |model, id| {
        let node = model.node(id);
        if node.outputs.len() != 1 {
            return Ok(None);
        }
        // Each input as (the tensor it looks up, the table applied to it, if any).
        let through_table = |input: OutletId| {
            let from = model.node(input.node);
            match from.op_as::<QTable>() {
                Some(t) => (from.inputs[0], Some(&t.table)),
                None => (input, None),
            }
        };
        let at = |t: Option<&Box<[u8; 256]>>, i: usize| t.map_or(i as u8, |t| t[i]);
        if let Some(second) = node.op_as::<QTable>() {
            let (x, first) = through_table(node.inputs[0]);
            let Some(first) = first else {
                return Ok(None);
            };
            let table = Box::new(std::array::from_fn(|i| second.table[first[i] as usize]));
            let to = second.to;
            return Ok(Some((tvec![x], OutletId::new(id, 0), QTable { table, to })));
        }
        let Some(binary) = node
            .op_as::<crate::qbinary::QBinary>()
            .and_then(|b| b.elementwise())
        else {
            return Ok(None);
        };
        let ((x, ta), (y, tb)) = (through_table(node.inputs[0]), through_table(node.inputs[1]));
        let x_type = model.outlet_fact(x)?.datum_type;
        // A table gives bytes of its input's type.
        if x != y || x_type != node.outputs[0].fact.datum_type {
            return Ok(None);
        }
        let table = Box::new(std::array::from_fn(|i| binary.scalar(at(ta, i), at(tb, i))));
        let to = x_type;
        Ok(Some((tvec![x], OutletId::new(id, 0), QTable { table, to })))
    })
}

/// Folds every table that alone reads the bytes of a requantization (a convolution's,
/// banded.rs and depthwise.rs, or a Requantize of its own) into that requantization
/// (epilogue.rs `Requantize::with_lookup`); returns how many.
///
/// Where onnxruntime quantizes only the convolutions (QOperator with standard operators),
/// every ReLU6 between two of them is such a table: a pass over the tensor of its own,
/// 4.2 M of EfficientNet-Lite0's 113 M instructions under qemu (cortex-a72). In the
/// requantization it is one TBL per 16 bytes. The bytes are the table's.
pub(crate) fn tables_into_requantization(model: &mut TypedModel) -> TractResult<usize> {
    use crate::epilogue::Requantize;
    let outputs = model.output_outlets()?.to_vec();
    let order = model.eval_order()?;
    // The nodes the outputs need: the earlier rewrites left the nodes they replaced in the
    // graph (until the next optimisation prunes them), still reading their inputs.
    let live: std::collections::HashSet<usize> = order.iter().copied().collect();
    let mut fused = 0;
    for id in order {
        let node = model.node(id);
        let Some(table) = node.op_as::<QTable>() else {
            continue;
        };
        // The requantization, through reshapes (a depthwise convolution's output is
        // reshaped to the image's), each tensor read by the next node alone.
        let reads_alone = |outlet: OutletId| {
            let node = model.node(outlet.node);
            let readers = node.outputs.iter().flat_map(|o| &o.successors);
            node.outputs.len() == 1
                && readers.filter(|s| live.contains(&s.node)).count() == 1
                && !outputs.contains(&outlet)
        };
        let mut from = node.inputs[0];
        let mut reshapes = vec![];
        while model.node(from.node).op_is::<IntoShape>() || model.node(from.node).op_is::<AxisOp>()
        {
            if !reads_alone(from) {
                break;
            }
            reshapes.push(from.node);
            from = model.node(from.node).inputs[0];
        }
        let producer = model.node(from.node);
        if !reads_alone(from) {
            continue;
        }
        let with = |r: &Requantize| r.with_lookup(&table.table, table.to);
        let Some(new) = crate::epilogue::with_requantization(producer, with) else {
            continue;
        };
        let name = format!("{}.looked_up", producer.name);
        let patch = TypedModelPatch::rewire(
            model,
            &producer.inputs,
            &[OutletId::new(id, 0)],
            &|p, taps| {
                let mut wire = p.wire_node(&name, new.clone(), taps)?;
                for &r in reshapes.iter().rev() {
                    let reshape = model.node(r);
                    wire = p.wire_node(&reshape.name, reshape.op.clone(), &wire)?;
                }
                Ok(wire)
            },
        )?;
        patch.apply(model)?;
        fused += 1;
    }
    Ok(fused)
}

/// Replaces every `Relu(DQ(x))`, tract's `Max(DQ(x), 0)`, whose dequantization the Relu
/// alone reads and whose readers have integer forms, with `DQ(QTable(x))`, the table
/// clamping `x` at its zero point: for a positive scale `DQ(max(x, zero point))` is
/// `max(DQ(x), 0)` exactly (DQ of the zero point is 0, and DQ grows with `x`). The
/// dequantized values then reach the integer forms of the nodes that read them, where a
/// Relu in float stood between (QOperator files with standard operators leave Relus so
/// before a squeeze-excite's pool and Mul, and before a join), and the table folds into
/// the requantization before it (`tables_into_requantization`). Returns how many Relus it
/// replaced.
pub(crate) fn relus_on_integers(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(input) = relu_input(model, node)? else {
            continue;
        };
        // Only where every reader has an integer form once it reads a dequantization:
        // a sum (a global pool's), a Concat, an Add or a Mul. A Relu that a quantization
        // reads is a step of a chain that becomes one table (`tabulate_quantized_chains`),
        // and one before a max pool goes onto bytes with the pool
        // (`pool::pool_before_element_wise_chains`); as a table before a dequantization,
        // both stayed in float (the ResNet-18-style network's QOperator-standard file took
        // 0.584 of fp32's instructions on cortex-a72 against 0.554).
        let integer_readers = node.outputs[0].successors.iter().all(|s| {
            let reader = model.node(s.node);
            let add_or_mul = crate::qbinary::add_or_mul(reader).is_some();
            reader.op_is::<Reduce>() || reader.op_is::<TypedConcat>() || add_or_mul
        });
        if !integer_readers {
            continue;
        }
        let dq_node = model.node(input.node);
        let Some(dq) = dq_node.op_as::<DequantizeLinearF32>() else {
            continue;
        };
        let x = dq_node.inputs[0];
        let dt = model.outlet_fact(x)?.datum_type;
        let alone = dq_node.outputs[0].successors.len() == 1;
        let positive = dq.scale.partial_cmp(&0.0) == Some(std::cmp::Ordering::Greater);
        if !alone || !matches!(dt, DatumType::U8 | DatumType::I8) || !positive {
            continue;
        }
        let zero = dq.zero_point;
        let table: Box<[u8; 256]> = Box::new(std::array::from_fn(|bits| {
            let value = if dt == DatumType::I8 {
                i32::from(bits as u8 as i8)
            } else {
                bits as i32
            };
            // The zero point is a value of the type (tract checks it at the load).
            value.max(zero) as u8
        }));
        let (name, dq_name, dq_op) = (node.name.clone(), dq_node.name.clone(), dq_node.op.clone());
        let patch = TypedModelPatch::rewire(model, &[x], &[OutletId::new(id, 0)], &|p, taps| {
            let clamped = p.wire_node(
                format!("{name}.clamp"),
                QTable {
                    table: table.clone(),
                    to: dt,
                },
                taps,
            )?;
            p.wire_node(format!("{dq_name}.clamped"), dq_op.clone(), &clamped)
        })?;
        patch.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}

/// The input of `node` when it is ONNX's Relu as tract has it: a Max with an f32 constant
/// of one value, 0, as its other input.
pub(crate) fn relu_input(model: &TypedModel, node: &TypedNode) -> TractResult<Option<OutletId>> {
    let is_max = crate::rewrite::is_bin_or_by_scalar::<Max>(node);
    if !is_max || node.inputs.len() != 2 || node.outputs.len() != 1 {
        return Ok(None);
    }
    let zero = |o: &OutletId| -> TractResult<bool> {
        let fact = model.outlet_fact(*o)?;
        Ok(fact.konst.as_ref().is_some_and(|k| {
            k.datum_type() == DatumType::F32
                && k.len() == 1
                && k.cast_to_scalar::<f32>().is_ok_and(|v| v == 0.0)
        }))
    };
    Ok(match (zero(&node.inputs[0])?, zero(&node.inputs[1])?) {
        (false, true) => Some(node.inputs[0]),
        (true, false) => Some(node.inputs[1]),
        _ => None,
    })
}

/// Replaces every `Quantize8(Concat(DQ_0(x_0), DQ_1(x_1), ...))` with the concatenation of
/// the int8 inputs, each requantized to the output's scale by a table of its own (none when
/// it already has the output's scale and zero point); returns the Concat nodes' names
/// (load.rs reports their ONNX operators as integer).
///
/// onnxruntime writes a QLinearConcat (contrib.rs lowers it so) or a QDQ Concat wherever
/// branches join (SqueezeNet's fire modules, Inception blocks): tract dequantizes every
/// input to f32, concatenates four bytes per value and quantizes again. The output value
/// of each element depends on that element alone, through its input's dequantization and
/// the quantization: a table of 256 bytes per input, made by running those two ops, so
/// every byte is the one tract's float path gives.
pub(crate) fn concat_quantized(model: &mut TypedModel) -> TractResult<Vec<String>> {
    let mut names = vec![];
    for id in model.eval_order()? {
        let Some((inputs, tables, quantize)) = concat_at(model, id)? else {
            continue;
        };
        let dt = model.node(quantize).outputs[0].fact.datum_type;
        let concat = model.node(id);
        let (name, axis) = (
            concat.name.clone(),
            concat.op_as::<TypedConcat>().expect("checked").axis,
        );
        let patch = TypedModelPatch::rewire(
            model,
            &inputs,
            &[OutletId::new(quantize, 0)],
            &|patch, taps| {
                let mut parts = tvec![];
                for (i, (tap, table)) in taps.iter().zip(&tables).enumerate() {
                    parts.push(match table {
                        Some(table) => {
                            let op = QTable {
                                table: table.clone(),
                                to: dt,
                            };
                            patch.wire_node(format!("{name}.table{i}"), op, &[*tap])?[0]
                        }
                        None => *tap,
                    });
                }
                patch.wire_node(format!("{name}.bytes"), TypedConcat { axis }, &parts)
            },
        )?;
        patch.apply(model)?;
        names.push(name);
    }
    Ok(names)
}

/// Per requantized input of the Concat `id`, its int8 tensor and its table (`None`: the
/// bytes stay as they are), and the `Quantize8` node after the Concat; `None` unless every
/// input is a `DequantizeLinearF32` of an int8 tensor of the quantization's output type.
type Joined = (TVec<OutletId>, Vec<Option<Box<[u8; 256]>>>, usize);

fn concat_at(model: &TypedModel, id: usize) -> TractResult<Option<Joined>> {
    let node = model.node(id);
    if !node.op_is::<TypedConcat>() || node.outputs.len() != 1 {
        return Ok(None);
    }
    let outputs = model.output_outlets()?;
    if outputs.contains(&OutletId::new(id, 0)) {
        return Ok(None);
    }
    let Some(quantize) = model.single_succ(id)? else {
        return Ok(None);
    };
    if !quantize.op_is::<Quantize8>() {
        return Ok(None);
    }
    let dt = quantize.outputs[0].fact.datum_type;
    let (mut inputs, mut tables) = (tvec![], vec![]);
    for outlet in &node.inputs {
        let dequantize = model.node(outlet.node);
        if !dequantize.op_is::<DequantizeLinearF32>() || dequantize.inputs.len() != 1 {
            return Ok(None);
        }
        let input = dequantize.inputs[0];
        if model.outlet_fact(input)?.datum_type != dt {
            return Ok(None);
        }
        let chain = Chain {
            input,
            dequantize: dequantize.id,
            steps: vec![quantize.id],
        };
        let table = table(model, &chain)?;
        let identity = table.iter().enumerate().all(|(i, &b)| usize::from(b) == i);
        inputs.push(input);
        tables.push((!identity).then_some(table));
    }
    Ok(Some((inputs, tables, quantize.id)))
}

/// An element-wise function of one int8 tensor: its dequantization, then the steps after
/// the `DequantizeLinearF32` node `dequantize` in an order they can run in, the last one
/// the function's output (a `Quantize8` for a table). The steps may branch and join again
/// (a hard-swish, `x · relu6(x + 3) / 6`, reads `x` twice).
struct Chain {
    input: OutletId,
    dequantize: usize,
    steps: Vec<usize>,
}

/// The element-wise function of one int8 tensor that ends at node `last`: walking back
/// from it through qualifying steps (`element_wise_inputs`) reaches one
/// `DequantizeLinearF32` of a u8 or i8 tensor, and every tensor in between (the
/// dequantization's included) is read by the function's own steps alone. `last` may be a
/// `Quantize8`. Every step keeps the int8 tensor's shape.
fn chain_into(model: &TypedModel, last: usize) -> TractResult<Option<Chain>> {
    let outputs = model.output_outlets()?;
    let mut members = std::collections::BTreeSet::new();
    let mut dequantize = None;
    let mut todo = vec![last];
    while let Some(id) = todo.pop() {
        if !members.insert(id) {
            continue;
        }
        let node = model.node(id);
        if node.op_is::<DequantizeLinearF32>() && id != last {
            if dequantize.replace(id).is_some() || node.inputs.len() != 1 {
                return Ok(None);
            }
            continue;
        }
        let inputs = if id == last && node.op_is::<Quantize8>() {
            Some(node.inputs.iter().copied().collect())
        } else {
            element_wise_inputs(model, node)?
        };
        let Some(inputs) = inputs else {
            return Ok(None);
        };
        todo.extend(inputs.iter().map(|i| i.node));
    }
    let Some(dequantize) = dequantize else {
        return Ok(None);
    };
    let input = model.node(dequantize).inputs[0];
    let fact = model.outlet_fact(input)?;
    if !matches!(fact.datum_type, DatumType::U8 | DatumType::I8) {
        return Ok(None);
    }
    for &id in &members {
        let node = model.node(id);
        if node.outputs.len() != 1 || node.outputs[0].fact.shape != fact.shape {
            return Ok(None);
        }
        let read_inside = node.outputs[0]
            .successors
            .iter()
            .all(|s| members.contains(&s.node));
        if id != last && (!read_inside || outputs.contains(&OutletId::new(id, 0))) {
            return Ok(None);
        }
    }
    // The steps in an order they can run in: each after the members it reads.
    let mut steps = vec![];
    let mut placed = std::collections::BTreeSet::from([dequantize]);
    while placed.len() < members.len() {
        let ready: Vec<usize> = members
            .iter()
            .copied()
            .filter(|id| !placed.contains(id))
            .filter(|&id| {
                model
                    .node(id)
                    .inputs
                    .iter()
                    .all(|i| !members.contains(&i.node) || placed.contains(&i.node))
            })
            .collect();
        if ready.is_empty() {
            return Ok(None);
        }
        placed.extend(&ready);
        steps.extend(ready);
    }
    Ok(Some(Chain {
        input,
        dequantize,
        steps,
    }))
}

/// The inputs of `node` that are not one-value f32 constants, when `node` maps each f32
/// element on its own: an element-wise unary operator, or binary ones (tract's chain of
/// them included: a Clip is its Max and Min in one `OptBinChain`) whose other inputs are
/// one-value constants or tensors of the output's shape.
fn element_wise_inputs(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<TVec<OutletId>>> {
    let f32_out = node.outputs.len() == 1 && node.outputs[0].fact.datum_type == DatumType::F32;
    if !f32_out {
        return Ok(None);
    }
    if node.op_is::<ElementWiseOp>() {
        return Ok((node.inputs.len() == 1).then(|| node.inputs.iter().copied().collect()));
    }
    let binary = node.op_is::<TypedBinOp>()
        || node.op_is::<OptBinByScalar>()
        || node.op_is::<OptBinUnicast>()
        || node.op_is::<OptBinChain>();
    if !binary || node.inputs.len() < 2 {
        return Ok(None);
    }
    let mut tensors = tvec![];
    for &input in &node.inputs {
        if let Some(k) = model.node(input.node).op_as::<Const>() {
            if k.val().len() != 1 || k.val().datum_type() != DatumType::F32 {
                return Ok(None);
            }
            continue;
        }
        if model.outlet_fact(input)?.shape != node.outputs[0].fact.shape {
            return Ok(None);
        }
        tensors.push(input);
    }
    Ok((!tensors.is_empty()).then_some(tensors))
}

/// The chain's output byte for each of the 256 input bytes (index: the byte's bits).
fn table(model: &TypedModel, chain: &Chain) -> TractResult<Box<[u8; 256]>> {
    let out = chain_outputs(model, chain)?;
    let out = out.try_as_plain_ram()?;
    let bytes: Vec<u8> = match out.datum_type() {
        DatumType::U8 => out.as_slice::<u8>()?.to_vec(),
        DatumType::I8 => out.as_slice::<i8>()?.iter().map(|&v| v as u8).collect(),
        other => bail!("QTable: the chain's quantization gives {other:?}"),
    };
    bytes
        .into_boxed_slice()
        .try_into()
        .map_err(|b: Box<[u8]>| format_err!("QTable: {} table entries", b.len()))
}

/// The chain's outputs for the 256 input bytes (in the order of their bits), computed by
/// the chain's own operators.
fn chain_outputs(model: &TypedModel, chain: &Chain) -> TractResult<Tensor> {
    let dt = model.outlet_fact(chain.input)?.datum_type;
    let rank = model.outlet_fact(chain.input)?.rank().max(1);
    let mut shape = vec![1usize; rank];
    shape[rank - 1] = 256;
    let mut adhoc = TypedModel::default();
    let source = adhoc.add_source("values", dt.fact(&*shape))?;
    let wire = wire_chain(model, chain, &mut adhoc, source, "")?;
    adhoc.select_output_outlets(&[wire])?;
    let bytes: Vec<u8> = (0..=255).collect();
    let values = match dt {
        DatumType::U8 => Tensor::from_shape(&shape, &bytes)?,
        _ => {
            let signed: Vec<i8> = bytes.iter().map(|&b| b as i8).collect();
            Tensor::from_shape(&shape, &signed)?
        }
    };
    Ok(SimplePlan::new(adhoc)?
        .run(tvec![values.into_tvalue()])?
        .remove(0)
        .into_tensor())
}

/// Wires the chain's dequantization and steps (with copies of their constants) into
/// `target` after `source`, each node named after its original plus `suffix`; returns the
/// last step's output.
fn wire_chain(
    model: &TypedModel,
    chain: &Chain,
    target: &mut TypedModel,
    source: OutletId,
    suffix: &str,
) -> TractResult<OutletId> {
    let dequantize = model.node(chain.dequantize);
    let name = format!("{}{suffix}", dequantize.name);
    let mut wires = std::collections::HashMap::new();
    let mut wire = target.wire_node(name, dequantize.op.clone(), &[source])?[0];
    wires.insert(chain.dequantize, wire);
    // A lone quantization (a Concat's, `concat_quantized`) reads the dequantization
    // through the Concat.
    let lone = chain.steps.len() == 1;
    for &step in &chain.steps {
        let node = model.node(step);
        let mut inputs = tvec![];
        for (slot, input) in node.inputs.iter().enumerate() {
            if let Some(&w) = wires.get(&input.node) {
                inputs.push(w);
            } else if lone && node.inputs.len() == 1 {
                inputs.push(wires[&chain.dequantize]);
            } else {
                let k = model.node(input.node).op_as::<Const>().expect("checked");
                let name = format!("{}{suffix}.const{slot}", node.name);
                inputs.push(target.add_const(name, k.val().clone())?);
            }
        }
        let name = format!("{}{suffix}", node.name);
        wire = target.wire_node(name, node.op.clone(), &inputs)?[0];
        wires.insert(step, wire);
    }
    Ok(wire)
}

/// The element-wise function of an int8 tensor that ends at `outlet` (qtable.rs
/// `chain_into`, its f32 output), with what lets a max pool of its output run on the int8
/// tensor instead; `None` when there is no such function or it gives a NaN. The function
/// is checked on all 256 input values.
///
/// A non-decreasing function of each value commutes with the maximum of a window: the pool
/// takes the bytes. Any other (a hard-swish, which dips below zero between -3 and 0) still
/// maps each byte to a value, and the window's largest value is that of its byte of
/// highest rank in the values' order: the pool takes each byte's rank (a table), and a
/// second table gives back a byte of the pooled rank.
pub(crate) fn pooled_chain_into(
    model: &TypedModel,
    outlet: OutletId,
) -> TractResult<Option<(OutletId, PooledChain)>> {
    let Some(chain) = chain_into(model, outlet.node)? else {
        return Ok(None);
    };
    if model.node(outlet.node).op_is::<Quantize8>() {
        return Ok(None);
    }
    let dt = model.outlet_fact(chain.input)?.datum_type;
    let out = chain_outputs(model, &chain)?;
    let values = out.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    if values.len() != 256 || values.iter().any(|v| v.is_nan()) {
        return Ok(None);
    }
    // The bytes (as indexes: their bits) in increasing order of their int8 values.
    let order: Vec<usize> = if dt == DatumType::U8 {
        (0..256).collect()
    } else {
        (128..256).chain(0..128).collect()
    };
    let rising = order.windows(2).all(|w| values[w[0]] <= values[w[1]]);
    let ranks = (!rising).then(|| {
        let mut distinct = values.clone();
        distinct.sort_by(f32::total_cmp);
        distinct.dedup_by(|a, b| a == b);
        // `==`: minus and plus zero are one rank, as they are one maximum.
        let rank = |v: f32| distinct.iter().position(|&d| d == v).expect("listed") as u8;
        let to_rank = QTable {
            table: Box::new(std::array::from_fn(|b| rank(values[b]))),
            to: DatumType::U8,
        };
        let mut back = [0u8; 256];
        for (b, &v) in values.iter().enumerate() {
            back[usize::from(rank(v))] = b as u8;
        }
        let from_rank = QTable {
            table: Box::new(back),
            to: dt,
        };
        (to_rank, from_rank)
    });
    Ok(Some((chain.input, PooledChain { chain, ranks })))
}

/// An element-wise function [`pooled_chain_into`] found, and when it is not
/// non-decreasing the tables into and out of its values' ranks.
pub(crate) struct PooledChain {
    chain: Chain,
    ranks: Option<(QTable, QTable)>,
}

impl PooledChain {
    /// Whether the pool takes ranks (the function is not non-decreasing).
    pub(crate) fn ranked(&self) -> bool {
        self.ranks.is_some()
    }

    /// The type of the bytes the pool takes: ranks are u8.
    pub(crate) fn pooled_type(&self, input: DatumType) -> DatumType {
        if self.ranks.is_some() {
            DatumType::U8
        } else {
            input
        }
    }

    /// Wires what comes before the pool into `patch` after `source` (the int8 tensor):
    /// the table into ranks, if any. Returns what the pool takes.
    pub(crate) fn before_pool(
        &self,
        patch: &mut TypedModelPatch,
        source: OutletId,
        name: &str,
    ) -> TractResult<OutletId> {
        match &self.ranks {
            Some((to_rank, _)) => {
                Ok(patch.wire_node(format!("{name}.ranks"), to_rank.clone(), &[source])?[0])
            }
            None => Ok(source),
        }
    }

    /// Wires what comes after the pool into `patch` after `pooled`: the table back from
    /// ranks, if any, then a copy of the function (its nodes' names plus `suffix`).
    /// Returns its output.
    pub(crate) fn after_pool(
        &self,
        model: &TypedModel,
        patch: &mut TypedModelPatch,
        pooled: OutletId,
        suffix: &str,
    ) -> TractResult<OutletId> {
        let bytes = match &self.ranks {
            Some((_, from_rank)) => {
                let name = format!(
                    "{}{suffix}.from_ranks",
                    model.node(self.chain.dequantize).name
                );
                patch.wire_node(name, from_rank.clone(), &[pooled])?[0]
            }
            None => pooled,
        };
        wire_chain(model, &self.chain, patch, bytes, suffix)
    }
}

#[cfg(test)]
mod tests {
    use crate::onnx_build::{model_bytes, node, raw, zero_point};
    use tract_onnx::pb::tensor_proto::DataType as D;

    type Step<'a> = (&'a str, &'a [f32], Vec<tract_onnx::pb::AttributeProto>);

    /// The test models' start: `x` (in [0, 1]) stretched to [-6, 6], quantized into `a`
    /// (scale `sa`, zero point `za`) so that every byte occurs, saturated ones included, and
    /// dequantized into `dequantized`; with the output's quantization constants (`sy`,
    /// `zy`). Returns the initializers and the nodes.
    fn quantized_input(
        [sa, sy]: [f32; 2],
        [za, zy]: [i32; 2],
        dequantized: &str,
    ) -> (
        Vec<tract_onnx::pb::TensorProto>,
        Vec<tract_onnx::pb::NodeProto>,
    ) {
        let init = vec![
            raw("stretch", D::Float, &[], &[12f32]),
            raw("shift", D::Float, &[], &[-6f32]),
            raw("sa", D::Float, &[], &[sa]),
            zero_point("za", za),
            raw("sy", D::Float, &[], &[sy]),
            zero_point("zy", zy),
        ];
        let nodes = vec![
            node("Mul", &["x", "stretch"], "xs", vec![]),
            node("Add", &["xs", "shift"], "xw", vec![]),
            node("QuantizeLinear", &["xw", "sa", "za"], "a", vec![]),
            node("DequantizeLinear", &["a", "sa", "za"], dequantized, vec![]),
        ];
        (init, nodes)
    }

    /// The test models' input shape.
    const SHAPE: [usize; 4] = [1, 5, 7, 9];

    /// The quantized test input ([`quantized_input`], zero point `za`) through the float
    /// steps `steps` (each an op type and its extra constant inputs' values), quantized with
    /// `zy` and dequantized to the output.
    fn model(steps: &[Step], za: i32, zy: i32) -> Vec<u8> {
        let (mut init, mut nodes) = quantized_input([0.043, 0.0317], [za, zy], "s0");
        for (i, (op, consts, attrs)) in steps.iter().enumerate() {
            let from = format!("s{i}");
            let mut inputs = vec![from];
            for (j, v) in consts.iter().enumerate() {
                let name = format!("k{i}_{j}");
                init.push(raw(&name, D::Float, &[], &[*v]));
                inputs.push(name);
            }
            let inputs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
            nodes.push(node(op, &inputs, &format!("s{}", i + 1), attrs.clone()));
        }
        let last = format!("s{}", steps.len());
        nodes.extend([
            node("QuantizeLinear", &[&last, "sy", "zy"], "yq", vec![]),
            node("DequantizeLinear", &["yq", "sy", "zy"], "y", vec![]),
        ]);
        model_bytes("qtable", nodes, init, ("x", &SHAPE), "y")
    }

    /// Clip (ReLU6), Relu, and LeakyRelu, HardSigmoid and an Add of a constant chained
    /// with them, u8 and i8 (and u8 in, i8 out): the plan with the table gives the bytes
    /// of tract's passes, and every chain is a table.
    #[test]
    fn element_wise_chains_keep_tracts_bits() {
        use tract_onnx::pb::AttributeProto;
        let alpha = |v: f32| AttributeProto {
            name: "alpha".into(),
            r#type: 1,
            f: v,
            ..Default::default()
        };
        let cases: Vec<(Vec<Step>, i32, i32)> = vec![
            (vec![("Clip", &[0.0, 6.0], vec![])], 128, 0),
            (vec![("Relu", &[], vec![])], -7, -128),
            // A unary step alone tract tabulates itself; with a Clip it does not.
            (
                vec![
                    ("LeakyRelu", &[], vec![alpha(0.1)]),
                    ("Clip", &[-0.3, 4.0], vec![]),
                ],
                128,
                120,
            ),
            (
                vec![("HardSigmoid", &[], vec![]), ("Add", &[0.25], vec![])],
                -3,
                -100,
            ),
            // u8 in, i8 out: the table's output type is the quantization's.
            (vec![("Clip", &[0.0, 6.0], vec![])], 128, -20),
            (
                vec![("Clip", &[-1.0, 2.5], vec![]), ("Relu", &[], vec![])],
                0,
                5,
            ),
        ];
        for (steps, za, zy) in cases {
            let bytes = model(&steps, za, zy);
            let what = format!(
                "{:?} {za} {zy}",
                steps.iter().map(|s| s.0).collect::<Vec<_>>()
            );
            let ours = same_outputs_as_tract(&bytes, &what);
            assert!(
                ours.patches.iter().any(|p| p.contains("table")),
                "{what}: {:?}",
                ours.patches
            );
        }
    }

    /// The names of the operators of a built plan, in node order.
    fn op_names(built: &crate::load::Built) -> Vec<String> {
        let model = built.plan.model();
        model
            .nodes()
            .iter()
            .map(|n| n.op.name().to_string())
            .collect()
    }

    /// The rewritten plan of a test model (input `x` of [`SHAPE`], output `y`), once checked
    /// to give the outputs of tract's unrewritten plan on the test inputs (`assert_agree`:
    /// bit for bit but for a global pool's f32 averages).
    fn same_outputs_as_tract(bytes: &[u8], what: &str) -> crate::load::Built {
        use crate::banded::tests::{assert_agree, both_builds, outputs, test_inputs};
        let [_, c, h, w] = SHAPE;
        let (plain, ours) = both_builds(bytes, (c, h, w));
        for data in test_inputs(c * h * w) {
            let want = outputs(&plain.plan, &SHAPE, &data);
            let got = outputs(&ours.plan, &SHAPE, &data);
            assert_agree(&ours.plan, &want, &got, what);
        }
        ours
    }

    /// A Relu between a dequantization and a float global pool runs on the int8 tensor as
    /// a table, u8 and i8, with every byte value (half of them below the zero point): the
    /// plan gives tract's outputs (the pool's averages, summed in integers, within an f32
    /// rounding of tract's) and has no Max left. Where the dequantization has another
    /// reader, or the Relu a reader with no integer form (a Flatten), the Relu stays.
    #[test]
    fn relus_after_a_dequantization_run_on_the_int8_tensor() {
        use crate::onnx_build::int;
        for (za, shared, pooled) in [
            (130, false, true),
            (-7, false, true),
            (130, true, true),
            (130, false, false),
        ] {
            let (init, mut nodes) = quantized_input([0.043, 0.0317], [za, 0], "s0");
            nodes.push(node("Relu", &["s0"], "r", vec![]));
            let mut last = "r";
            if shared {
                nodes.push(node("Add", &["r", "s0"], "both", vec![]));
                last = "both";
            }
            if pooled {
                nodes.push(node("GlobalAveragePool", &[last], "p", vec![]));
                last = "p";
            }
            nodes.push(node("Flatten", &[last], "y", vec![int("axis", 1)]));
            let bytes = model_bytes("relu", nodes, init, ("x", &SHAPE), "y");
            let what = format!("zero point {za}, shared {shared}, pooled {pooled}");
            let ours = same_outputs_as_tract(&bytes, &what);
            let ops = op_names(&ours);
            let max = ops.iter().any(|o| o.contains("Max"));
            let table = ops.iter().any(|o| o == "QTable");
            let moved = pooled && !shared;
            assert_eq!((max, table), (!moved, moved), "{what}: {ops:?}");
        }
    }

    /// onnxruntime's QOperator with standard operators only: QLinearConvs with a ReLU6
    /// (`DQ -> Clip -> Q`, a table) and a residual Add (float, then quantized) between them.
    /// The plan gives the bytes of tract's, and no u8-to-i8 shift is left as a pass of its
    /// own: the table and the quantization give the i8 the next convolution reads. The
    /// table is no pass of its own either: the first convolution's requantization looks
    /// its bytes up.
    #[test]
    fn standard_operator_chains_shift_once() {
        use crate::kernels::panels::tests::values;
        use crate::onnx_build::{int, ints};
        let c = SHAPE[1] as i64;
        let mut init = vec![
            raw("stretch", D::Float, &[], &[12f32]),
            raw("shift", D::Float, &[], &[-6f32]),
            raw("sa", D::Float, &[], &[0.043f32]),
            zero_point("za", 128),
            raw("s1", D::Float, &[], &[0.061f32]),
            zero_point("z1", 140),
            raw("clip_lo", D::Float, &[], &[0f32]),
            raw("clip_hi", D::Float, &[], &[6f32]),
            raw("sr", D::Float, &[], &[6.0f32 / 255.0]),
            zero_point("zr", 0),
            raw("s2", D::Float, &[], &[0.052f32]),
            zero_point("z2", 121),
            raw("s3", D::Float, &[], &[0.077f32]),
            zero_point("z3", 133),
            raw("sy", D::Float, &[], &[0.049f32]),
            zero_point("zy", 117),
        ];
        for i in 1..=3 {
            let n = c as usize;
            let weights = values(n * n, 17 * i, -127);
            let codes = values(2 * n, 29 * i, -128);
            let scales: Vec<f32> = codes[..n]
                .iter()
                .map(|&v| 2.5e-3 + f32::from(v) * 1.5e-5)
                .collect();
            let bias: Vec<i32> = codes[n..].iter().map(|&v| i32::from(v) * 8).collect();
            init.push(raw(&format!("w{i}"), D::Int8, &[n, n, 1, 1], &weights));
            init.push(raw(&format!("ws{i}"), D::Float, &[n], &scales));
            init.push(raw(&format!("wz{i}"), D::Int8, &[n], &vec![0i8; n]));
            init.push(raw(&format!("b{i}"), D::Int32, &[n], &bias));
        }
        let conv = |i: usize, input: [&str; 3], output: [&str; 3]| {
            let (w, ws, wz, b) = (
                format!("w{i}"),
                format!("ws{i}"),
                format!("wz{i}"),
                format!("b{i}"),
            );
            let inputs = [
                input[0], input[1], input[2], &w, &ws, &wz, output[1], output[2], &b,
            ];
            let attrs = vec![ints("kernel_shape", &[1, 1]), int("group", 1)];
            node("QLinearConv", &inputs, output[0], attrs)
        };
        let nodes = vec![
            node("Mul", &["x", "stretch"], "xs", vec![]),
            node("Add", &["xs", "shift"], "xw", vec![]),
            node("QuantizeLinear", &["xw", "sa", "za"], "a", vec![]),
            conv(1, ["a", "sa", "za"], ["c1", "s1", "z1"]),
            node("DequantizeLinear", &["c1", "s1", "z1"], "d1", vec![]),
            node("Clip", &["d1", "clip_lo", "clip_hi"], "r", vec![]),
            node("QuantizeLinear", &["r", "sr", "zr"], "rq", vec![]),
            conv(2, ["rq", "sr", "zr"], ["c2", "s2", "z2"]),
            node("DequantizeLinear", &["c2", "s2", "z2"], "d2", vec![]),
            node("DequantizeLinear", &["a", "sa", "za"], "da", vec![]),
            node("Add", &["da", "d2"], "sum", vec![]),
            node("QuantizeLinear", &["sum", "s3", "z3"], "sq", vec![]),
            conv(3, ["sq", "s3", "z3"], ["c3", "s2", "z2"]),
            // The sum, in float, is the next residual Add's input too (as in MobileNetV2).
            node("DequantizeLinear", &["c3", "s2", "z2"], "d3", vec![]),
            node("Add", &["sum", "d3"], "sum2", vec![]),
            node("QuantizeLinear", &["sum2", "sy", "zy"], "yq", vec![]),
            node("DequantizeLinear", &["yq", "sy", "zy"], "y", vec![]),
        ];
        let bytes = model_bytes("qstd", nodes, init, ("x", &SHAPE), "y");
        let ours = same_outputs_as_tract(&bytes, "QLinearConv, ReLU6, float Adds");
        // Left: the shift of `a`, which the residual Add reads as u8 too.
        let model = ours.plan.model();
        let shifts: Vec<String> = model
            .nodes()
            .iter()
            .filter(|n| crate::rewrite::is_offset_to_i8(n))
            .map(|n| model.node(n.inputs[0].node).op.name().to_string())
            .collect();
        assert_eq!(shifts, ["Quantize8"], "{:?}", ours.patches);
        // The ReLU6's table joined the first convolution's requantization.
        assert!(
            !model.nodes().iter().any(|n| n.op_is::<super::QTable>()),
            "{:?}",
            ours.patches
        );
        for rewrite in [
            "1 quantized element-wise chain",
            "2 u8-to-i8 shifts",
            "1 lookup table",
        ] {
            assert!(
                ours.patches.iter().any(|p| p.contains(rewrite)),
                "{rewrite}: {:?}",
                ours.patches
            );
        }
    }

    /// Three quantized tensors concatenated: two with scales and zero points of their own
    /// (a table each) and one with the output's (its bytes as they are), u8 and i8. The
    /// plan with the int8 Concat gives the bytes of tract's float one; a u8 input into an
    /// i8 output is left to tract.
    #[test]
    fn quantized_concats_keep_tracts_bits() {
        for (za, zb, zy) in [(128, 131, 3), (-7, -128, 20), (10, 0, -5)] {
            let init = vec![
                raw("stretch", D::Float, &[], &[12f32]),
                raw("shift", D::Float, &[], &[-6f32]),
                raw("half", D::Float, &[], &[0.5f32]),
                raw("sa", D::Float, &[], &[0.043f32]),
                zero_point("za", za),
                raw("sb", D::Float, &[], &[0.0111f32]),
                zero_point("zb", zb),
                raw("sy", D::Float, &[], &[0.0317f32]),
                zero_point("zy", zy),
            ];
            let nodes = vec![
                node("Mul", &["x", "stretch"], "xs", vec![]),
                node("Add", &["xs", "shift"], "xw", vec![]),
                node("Mul", &["xw", "half"], "xh", vec![]),
                node("QuantizeLinear", &["xw", "sa", "za"], "a", vec![]),
                node("QuantizeLinear", &["xh", "sb", "zb"], "b", vec![]),
                node("QuantizeLinear", &["xh", "sy", "zy"], "c", vec![]),
                node("DequantizeLinear", &["a", "sa", "za"], "da", vec![]),
                node("DequantizeLinear", &["b", "sb", "zb"], "db", vec![]),
                node("DequantizeLinear", &["c", "sy", "zy"], "dc", vec![]),
                node(
                    "Concat",
                    &["da", "db", "dc"],
                    "joined",
                    vec![crate::onnx_build::int("axis", 1)],
                ),
                node("QuantizeLinear", &["joined", "sy", "zy"], "yq", vec![]),
                node("DequantizeLinear", &["yq", "sy", "zy"], "y", vec![]),
            ];
            let bytes = model_bytes("qconcat", nodes, init, ("x", &SHAPE), "y");
            let what = format!("zero points {za} {zb} {zy}");
            let ours = same_outputs_as_tract(&bytes, &what);
            let same_type = [za, zb].iter().all(|z| (*z < 0) == (zy < 0));
            assert_eq!(
                ours.patches.iter().any(|p| p.contains("quantized Concat")),
                same_type,
                "{what}: {:?}",
                ours.patches
            );
            if same_type {
                let tables = ours
                    .plan
                    .model()
                    .nodes()
                    .iter()
                    .filter(|n| n.name.starts_with("joined") && n.op_is::<super::QTable>())
                    .count();
                assert_eq!(tables, 2, "{what}: one table per requantized input");
            }
        }
    }

    /// A hard-swish of the test input quantized (`a`, zero point `za`),
    /// `DQ(a) · relu6(DQ(a) + 3) / divisor`, into the output `y`: in QDQ form when `qdq`
    /// gives the zero points of the quantized ReLU6 and product (as onnxruntime's QDQ file
    /// has it: `Q(DQ(a) · DQ(Q(relu6(DQ(a) + 3))))`, then dequantized and divided), else
    /// in float from one dequantization (its QOperator file with standard operators).
    /// Then `pooled`: a 2x2 max pool; `quantized`: a quantization (zero point `zy`),
    /// dequantized into `y`.
    fn hard_swish(
        qdq: Option<[i32; 2]>,
        (pooled, quantized): (bool, bool),
        divisor: f32,
        [za, zy]: [i32; 2],
    ) -> Vec<u8> {
        use crate::onnx_build::ints;
        let (mut init, mut nodes) = quantized_input([0.047, 0.0241], [za, zy], "da");
        init.extend([
            raw("three", D::Float, &[], &[3f32]),
            raw("zero", D::Float, &[], &[0f32]),
            raw("six", D::Float, &[], &[6f32]),
            raw("divisor", D::Float, &[], &[divisor]),
        ]);
        nodes.extend([
            node("Add", &["da", "three"], "plus3", vec![]),
            node("Clip", &["plus3", "zero", "six"], "relu6", vec![]),
        ]);
        match qdq {
            Some([zt, zm]) => {
                init.extend([
                    raw("st", D::Float, &[], &[0.0236f32]),
                    zero_point("zt", zt),
                    raw("sm", D::Float, &[], &[0.139f32]),
                    zero_point("zm", zm),
                ]);
                nodes.extend([
                    node("QuantizeLinear", &["relu6", "st", "zt"], "t", vec![]),
                    node("DequantizeLinear", &["t", "st", "zt"], "dt", vec![]),
                    node("Mul", &["da", "dt"], "prod", vec![]),
                    node("QuantizeLinear", &["prod", "sm", "zm"], "m", vec![]),
                    node("DequantizeLinear", &["m", "sm", "zm"], "dm", vec![]),
                    node("Div", &["dm", "divisor"], "hswish", vec![]),
                ]);
            }
            None => nodes.extend([
                node("Mul", &["da", "relu6"], "prod", vec![]),
                node("Div", &["prod", "divisor"], "hswish", vec![]),
            ]),
        }
        let mut last = "hswish";
        if pooled {
            let attrs = vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])];
            let out = if quantized { "pooled" } else { "y" };
            nodes.push(node("MaxPool", &["hswish"], out, attrs));
            last = "pooled";
        }
        if quantized {
            nodes.extend([
                node("QuantizeLinear", &[last, "sy", "zy"], "yq", vec![]),
                node("DequantizeLinear", &["yq", "sy", "zy"], "y", vec![]),
            ]);
        }
        model_bytes("hswish", nodes, init, ("x", &SHAPE), "y")
    }

    /// onnxruntime's QOperator hard-swish with standard operators only, all in float
    /// between a dequantization and a quantization: `Q(DQ(a) · relu6(DQ(a) + 3) / d)`, the
    /// dequantized tensor read twice. Quantized directly or after a 2x2 max pool, or pooled
    /// and left in float (PaddleOCR's last one), `d` 6 or -6, u8 and i8: the plan gives the
    /// bytes of tract's passes, every quantized one is a table, and every pool runs on
    /// bytes.
    #[test]
    fn float_hard_swishes_become_tables() {
        for (pooled, quantized, divisor, za, zy) in [
            (false, true, 6.0f32, 128, 3),
            (false, true, -6.0, -20, 7),
            (true, true, 6.0, 100, 0),
            (true, true, -6.0, -128, -128),
            (true, false, 6.0, 128, 0),
            (true, false, -6.0, 0, 0),
            (true, false, 6.0, -3, 0),
        ] {
            let bytes = hard_swish(None, (pooled, quantized), divisor, [za, zy]);
            let what = format!(
                "pooled {pooled}, quantized {quantized}, / {divisor}, zero points {za} {zy}"
            );
            let ours = same_outputs_as_tract(&bytes, &what);
            let ops = op_names(&ours);
            let count = |name: &str| ops.iter().filter(|o| *o == name).count();
            // Quantized: one table (before the pool, which takes its bytes). Left in float:
            // a rising hard-swish (never: it dips between -3 and 0) or a falling one pools
            // ranks, a table into them before the pool and one out of them after it.
            let tables = if quantized { 1 } else { 2 };
            assert_eq!(count("QTable"), tables, "{what}: {ops:?}");
            assert_eq!(count("MaxPool8"), usize::from(pooled), "{what}: {ops:?}");
            // Quantized, no float step is left but the test input's stretch.
            let float_steps = ops.iter().filter(|o| o.starts_with("Opt")).count();
            if quantized {
                assert_eq!(float_steps, 1, "{what}: {ops:?}");
            }
        }
    }

    /// A QDQ hard-swish, `Q(DQ(Q(DQ(a) · DQ(Q(relu6(DQ(a) + 3))))) / 6)`, with the division
    /// quantized directly or after a 2x2 max pool (PaddleOCR's last one), or pooled and left
    /// in float (its QOperator file), or divided by -6 (a falling chain, pooled on ranks),
    /// u8 and i8: the plan gives the bytes of tract's passes, with one table over `a` where
    /// the division is quantized, and the pool on bytes.
    #[test]
    fn hard_swishes_become_one_table() {
        struct Case {
            pooled: bool,
            quantized: bool,
            divisor: f32,
            zeros: [i32; 4],
        }
        let case = |pooled, quantized, divisor, zeros| Case {
            pooled,
            quantized,
            divisor,
            zeros,
        };
        for Case {
            pooled,
            quantized,
            divisor,
            zeros: [za, zt, zm, zy],
        } in [
            case(false, true, 6.0, [128, 0, 3, 1]),
            case(true, true, 6.0, [100, 0, 0, 0]),
            case(true, true, 6.0, [-20, -128, -120, -128]),
            case(false, true, 6.0, [0, 5, 77, 200]),
            case(true, false, 6.0, [128, 0, 3, 0]),
            case(true, false, 6.0, [-3, -128, -128, 0]),
            case(true, false, -6.0, [128, 0, 3, 0]),
            case(true, true, -6.0, [128, 0, 3, 128]),
        ] {
            let bytes = hard_swish(Some([zt, zm]), (pooled, quantized), divisor, [za, zy]);
            let what = format!("pooled {pooled}, quantized {quantized}, / {divisor}, zero points {za} {zt} {zm} {zy}");
            let ours = same_outputs_as_tract(&bytes, &what);
            let ops = op_names(&ours);
            let count = |name: &str| ops.iter().filter(|o| *o == name).count();
            // The table of the hard-swish's Mul, with the division's when that is quantized,
            // but a pool moved before a rising division splits them (the division's table
            // then looks up the pooled bytes), and a pool of a falling division left in
            // float takes ranks: the table into them joins the hard-swish's, the one out
            // of them follows the pool.
            let split = quantized == (divisor > 0.0);
            let tables = if pooled && split { 2 } else { 1 };
            assert_eq!(count("QTable"), tables, "{what}: {ops:?}");
            assert_eq!(count("QBinary"), 0, "{what}: {ops:?}");
            // Every pool moves onto bytes: before the chain, or after its quantization.
            assert_eq!(count("MaxPool8"), usize::from(pooled), "{what}: {ops:?}");
            let f32_pools = ops
                .iter()
                .filter(|o| o.contains("MaxPool") && *o != "MaxPool8")
                .count();
            assert_eq!(f32_pools, 0, "{what}: {ops:?}");
        }
    }
}
