//! Residual Adds and squeeze-excite Muls of int8 tensors, in one pass over the bytes.
//!
//! A quantized Add or Mul reaches tract as `Quantize(DQ(a) op DQ(b))`: onnxruntime's QDQ
//! export writes it so, and contrib.rs lowers `QLinearAdd` and `QLinearMul` to it. tract
//! 0.23.9 runs that as four passes with two f32 tensors between them (each
//! `DequantizeLinearF32`, the f32 operator, then the quantization): on the qformats
//! network under qemu (cortex-a72) those passes were a fifth of the int8 inference.
//!
//! [`QBinary`] computes it per element, from the two int8 inputs to the int8 output, on
//! kernels/qbinary.rs. An Add of equal shapes is onnxruntime's NEON `QLinearAdd`: each
//! side's centred bytes times a 22-bit fixed-point ratio of scales, summed exactly and
//! shifted with rounding (`FixedAdd`: within 1.2e-4 of a step of the exact sum at a ratio
//! of 1); one against a broadcast value, or with scale ratios of 256 and more, is tract's
//! chain, `(x - zero point) as f32 * scale` for each side, the f32 Add, then the
//! quantization `Quantize8` does, the same IEEE operations in the same order (commutative
//! bit for bit), so the same bytes. A Mul is onnxruntime's
//! `QLinearMul`: the centred bytes' product, exact, times one multiplier, quantized;
//! tract's chain rounds three products, which can move a value next to a tie by one
//! step. One side may be broadcast over the other's trailing
//! axes (a squeeze-excite's `[1, C, 1, 1]` against `[1, C, H, W]`); other
//! broadcasts stay with tract.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::{BinMiniOp, OptBinByScalar, OptBinUnicast, TypedBinOp};
use tract_onnx::tract_core::ops::math::{Add, Mul};
use tract_onnx::tract_core::ops::quant::DequantizeLinearF32;

use crate::kernels::qbinary::{Binary, Output, Side};
use crate::quantize::Quantize8;
use crate::threads;

/// `Quantize8(DQ(a) op DQ(b))` with `op` an f32 Add or Mul, or `Quantize8(DQ(a) op f)` with
/// `f` an f32 tensor broadcast over `a` (a squeeze-excite's scale, which the QOperator
/// format with standard operators leaves in float: its Sigmoid has no standard quantized
/// form).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QBinary {
    /// The operation on bytes: each input's dequantization, the op, the quantization.
    kernel: Binary,
    /// The output's shape, which input `full` has; the other input has one value per
    /// `inner` consecutive outputs (`inner` = 1: the same shape).
    shape: TVec<usize>,
    full: usize,
    inner: usize,
    /// Whether the other input is f32 values rather than int8 bytes (`inner` > 1 then; its
    /// side of `kernel` is not used).
    float_other: bool,
}

impl Eq for QBinary {}

/// I8 when `signed`, else U8: the tensor type of a side's or the output's bytes.
fn byte_type(signed: bool) -> DatumType {
    if signed {
        DatumType::I8
    } else {
        DatumType::U8
    }
}

/// A u8 or i8 tensor's bytes, the type being the one `signed` says.
fn bytes_of(t: &Tensor, signed: bool) -> TractResult<&[u8]> {
    let want = byte_type(signed);
    ensure!(
        t.datum_type() == want,
        "QBinary: an input of {:?} where {want:?} was typed",
        t.datum_type()
    );
    Ok(t.try_as_plain_ram()?.as_bytes())
}

/// Outputs from which a node is spread over the pool's threads: about 20 us of a residual
/// Add on the development host (ResNet-18's first blocks add 200 k). Every node in the
/// tests, so that their pools split even small ones.
#[cfg(not(test))]
const PARALLEL_BYTES: usize = 1 << 16;
#[cfg(test)]
const PARALLEL_BYTES: usize = 1;
/// The unit of an element-wise node's shares: a cache line of bytes.
const LINE: usize = 64;

impl QBinary {
    /// This node with its output shifted to i8 when it gives u8 (rewrite.rs
    /// `fold_shifts`): the same quantization with the zero point 128 lower, clamped to
    /// i8's range, is the u8 minus 128.
    pub(crate) fn shifted(&self) -> Option<QBinary> {
        let output = self.kernel.output;
        if output.signed {
            return None;
        }
        let mut op = self.clone();
        op.kernel.output.signed = true;
        op.kernel.output.zero = output.zero - 128;
        Some(op)
    }

    /// This op reading input `slot` as i8 where it reads u8 (rewrite.rs `fold_shifts`):
    /// the side's zero point 128 lower, so that each value less its zero point is the
    /// same integer, and the outputs the same bytes.
    pub(crate) fn reading_i8(&self, slot: usize) -> Option<QBinary> {
        let side = *self.kernel.sides.get(slot)?;
        if side.signed || (self.float_other && slot != self.full) {
            return None;
        }
        let mut op = self.clone();
        op.kernel.sides[slot].signed = true;
        op.kernel.sides[slot].zero = side.zero - 128;
        Some(op)
    }

    /// The operation on bytes, when both inputs have the output's shape (no broadcast).
    pub(crate) fn elementwise(&self) -> Option<&Binary> {
        (self.inner == 1).then_some(&self.kernel)
    }

    fn run(&self, a: &Tensor, b: &Tensor) -> TractResult<Tensor> {
        let k = &self.kernel;
        let (full_side, other_side) = (self.full, 1 - self.full);
        let (full_t, other_t) = if self.full == 0 { (a, b) } else { (b, a) };
        let full = bytes_of(full_t, k.sides[full_side].signed)?;
        let total: usize = self.shape.iter().product();
        // The other input's values: its bytes when both sides have the output's shape, one
        // f32 per block of `inner` (dequantized once, or as they are) otherwise.
        let (other, values) = if self.inner == 1 {
            (bytes_of(other_t, k.sides[other_side].signed)?, vec![])
        } else if self.float_other {
            let view = other_t.try_as_plain_ram()?;
            (&[][..], view.as_slice::<f32>()?.to_vec())
        } else {
            let bytes = bytes_of(other_t, k.sides[other_side].signed)?;
            let side = k.sides[other_side];
            (&[][..], bytes.iter().map(|&y| side.value(y)).collect())
        };
        ensure!(
            full.len() == total && (other.len() + values.len()) * self.inner == total,
            "QBinary: inputs of {:?} and {:?} for an output of {:?}",
            a.shape(),
            b.shape(),
            self.shape
        );
        // SAFETY: every element is written below before the tensor is read.
        let mut out = unsafe { Tensor::uninitialized_dt(byte_type(k.output.signed), &self.shape)? };
        {
            let mut view = out.try_as_plain_ram_mut()?;
            let zs = view.as_bytes_mut();
            ensure!(
                zs.len() == total,
                "QBinary: an output of {} bytes for {total}",
                zs.len()
            );
            let worth = total >= PARALLEL_BYTES;
            if self.inner == 1 {
                let (xs, ys) = if self.full == 0 {
                    (full, other)
                } else {
                    (other, full)
                };
                threads::per_thread(zs, LINE, worth, |first, zs| {
                    let at = first * LINE;
                    k.same(&xs[at..at + zs.len()], &ys[at..at + zs.len()], zs);
                    Ok(())
                })?;
            } else {
                let inner = self.inner;
                threads::per_thread(zs, inner, worth, |first, zs| {
                    let full = &full[first * inner..][..zs.len()];
                    let blocks = zs.chunks_mut(inner).zip(full.chunks(inner));
                    for ((zs, full), &v) in blocks.zip(&values[first..]) {
                        k.with_value(full_side, full, v, zs);
                    }
                    Ok(())
                })?;
            }
        }
        Ok(out)
    }
}

impl Op for QBinary {
    fn name(&self) -> StaticName {
        "QBinary".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} of int8 inputs, {:?}, one value of the smaller per {}{}",
            if self.kernel.mul { "Mul" } else { "Add" },
            self.shape,
            self.inner,
            if self.float_other { " (f32)" } else { "" }
        )])
    }

    tract_onnx::tract_core::op_as_typed_op!();
}

impl EvalOp for QBinary {
    tract_onnx::tract_core::op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let out = self.run(&inputs[0], &inputs[1])?;
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for QBinary {
    tract_onnx::tract_core::as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(
            byte_type(self.kernel.output.signed).fact(&*self.shape)
        ))
    }
}

/// Replaces every `Quantize8(DQ(a) Add|Mul DQ(b))` [`QBinary`] computes; returns, for each,
/// whether it was a Mul and the name of the f32 operator's node (load.rs tells the QDQ
/// ones from contrib.rs's lowered QLinearAdd and QLinearMul by it).
pub(crate) fn fuse_quantized_binaries(model: &mut TypedModel) -> TractResult<Vec<(bool, String)>> {
    let fused = std::cell::RefCell::new(vec![]);
    crate::rewrite::replace_runs(model, "qbinary", |model, id| {
        let found = run_at(model, id)?;
        if let Some((_, _, op)) = &found {
            fused
                .borrow_mut()
                .push((op.kernel.mul, model.node(id).name.clone()));
        }
        Ok(found)
    })?;
    Ok(fused.into_inner())
}

/// The f32 operator of node `node` when it is tract's Add or Mul, in any of its forms:
/// `Some(true)` for a Mul.
pub(crate) fn add_or_mul(node: &TypedNode) -> Option<bool> {
    let op: &dyn BinMiniOp = if let Some(op) = node.op_as::<TypedBinOp>() {
        &*op.0
    } else if let Some(op) = node.op_as::<OptBinUnicast>() {
        &*op.binop
    } else if let Some(op) = node.op_as::<OptBinByScalar>() {
        &*op.binop
    } else {
        return None;
    };
    if op.is::<Add>() {
        Some(false)
    } else if op.is::<Mul>() {
        Some(true)
    } else {
        None
    }
}

/// How the input of `shape` meets an output of `out`: `Some(1)` when it is the same,
/// `Some(inner)` when it is the output's leading axes with 1 for every trailing one
/// (one value per `inner` outputs).
fn broadcast(shape: &[usize], out: &[usize]) -> Option<usize> {
    if shape.len() != out.len() {
        return None;
    }
    let lead = shape
        .iter()
        .zip(out)
        .position(|(s, o)| s != o)
        .unwrap_or(shape.len());
    shape[lead..]
        .iter()
        .all(|&s| s == 1)
        .then(|| out[lead..].iter().product())
}

fn run_at(
    model: &TypedModel,
    id: usize,
) -> TractResult<Option<(TVec<OutletId>, OutletId, QBinary)>> {
    let node = model.node(id);
    let Some(mul) = add_or_mul(node) else {
        return Ok(None);
    };
    let outputs = model.output_outlets()?;
    if node.inputs.len() != 2
        || node.outputs.len() != 1
        || node.outputs[0].fact.datum_type != DatumType::F32
        || outputs.contains(&OutletId::new(id, 0))
    {
        return Ok(None);
    }
    let Some(q_node) = model.single_succ(id)? else {
        return Ok(None);
    };
    let Some(quantize) = q_node.op_as::<Quantize8>() else {
        return Ok(None);
    };
    let Some(out_shape) = q_node.outputs[0].fact.shape.as_concrete() else {
        return Ok(None);
    };
    let mut ints = tvec![];
    let mut sides = [Side {
        signed: false,
        scale: 0.0,
        zero: 0,
    }; 2];
    let mut shapes = vec![];
    let mut floats = None;
    for (slot, input) in node.inputs.iter().enumerate() {
        let dq_node = model.node(input.node);
        let Some(dq) = dq_node.op_as::<DequantizeLinearF32>() else {
            // At most one f32 input, computed (an op with a constant is an element-wise
            // chain, which qtable.rs makes a table of); its shape is checked below: the
            // broadcast one.
            let fact = model.outlet_fact(*input)?;
            let Some(shape) = fact.shape.as_concrete() else {
                return Ok(None);
            };
            let computed = fact.datum_type == DatumType::F32 && fact.konst.is_none();
            if !computed || floats.replace(slot).is_some() {
                return Ok(None);
            }
            ints.push(*input);
            shapes.push(shape.to_vec());
            continue;
        };
        let fact = model.outlet_fact(dq_node.inputs[0])?;
        let Some(shape) = fact.shape.as_concrete() else {
            return Ok(None);
        };
        if !matches!(fact.datum_type, DatumType::U8 | DatumType::I8) {
            return Ok(None);
        }
        sides[slot] = Side {
            signed: fact.datum_type == DatumType::I8,
            scale: dq.scale,
            zero: dq.zero_point,
        };
        ints.push(dq_node.inputs[0]);
        shapes.push(shape.to_vec());
    }
    let (full, inner) = match (
        broadcast(&shapes[0], out_shape),
        broadcast(&shapes[1], out_shape),
    ) {
        (Some(1), Some(inner)) => (0, inner),
        (Some(inner), Some(1)) => (1, inner),
        _ => return Ok(None),
    };
    // An f32 input is the broadcast one, over more than one output each.
    if floats.is_some_and(|slot| slot == full || inner == 1) {
        return Ok(None);
    }
    if node.outputs[0].fact.shape.as_concrete() != Some(out_shape) {
        return Ok(None);
    }
    let (scale, zero, dt) = quantize.params();
    let output = Output {
        signed: dt == DatumType::I8,
        scale,
        zero,
    };
    let op = QBinary {
        kernel: Binary::new(mul, sides, output),
        shape: out_shape.into(),
        full,
        inner,
        float_other: floats.is_some(),
    };
    Ok(Some((ints, OutletId::new(q_node.id, 0), op)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx_build::{int, model_bytes, node, raw, zero_point};
    use tract_onnx::pb::tensor_proto::DataType as D;

    #[test]
    fn broadcasts_are_the_same_shape_or_trailing_ones() {
        assert_eq!(broadcast(&[1, 4, 3, 5], &[1, 4, 3, 5]), Some(1));
        assert_eq!(broadcast(&[1, 4, 1, 1], &[1, 4, 3, 5]), Some(15));
        assert_eq!(broadcast(&[1, 1, 1, 1], &[1, 4, 3, 5]), Some(60));
        assert_eq!(broadcast(&[1, 4, 3, 1], &[1, 4, 3, 5]), Some(5));
        assert_eq!(broadcast(&[1, 1, 3, 5], &[1, 4, 3, 5]), None);
        assert_eq!(broadcast(&[4, 1, 1], &[1, 4, 3, 5]), None);
    }

    /// `x` quantized twice (`a` with `za`, `b` after a GlobalAveragePool when `pooled`, a
    /// squeeze-excite's shape, with `zb`), `DQ(a) op DQ(b)` quantized with `zy` and
    /// dequantized to the output: zero points as u8 or i8 by their signs.
    fn model(op: &str, pooled: bool, zeros: [i32; 3], (c, h, w): (usize, usize, usize)) -> Vec<u8> {
        let init = vec![
            raw("sa", D::Float, &[], &[0.043f32]),
            zero_point("za", zeros[0]),
            raw("sb", D::Float, &[], &[0.0271f32]),
            zero_point("zb", zeros[1]),
            raw("sy", D::Float, &[], &[0.0517f32]),
            zero_point("zy", zeros[2]),
        ];
        let mut nodes = vec![node("QuantizeLinear", &["x", "sa", "za"], "a", vec![])];
        let b_from = if pooled {
            nodes.push(node("GlobalAveragePool", &["x"], "p", vec![]));
            "p"
        } else {
            nodes.push(node("Mul", &["x", "x"], "p", vec![]));
            "p"
        };
        nodes.extend([
            node("QuantizeLinear", &[b_from, "sb", "zb"], "b", vec![]),
            node("DequantizeLinear", &["a", "sa", "za"], "ad", vec![]),
            node("DequantizeLinear", &["b", "sb", "zb"], "bd", vec![]),
            node(op, &["ad", "bd"], "r", vec![]),
            node("QuantizeLinear", &["r", "sy", "zy"], "rq", vec![]),
            node("DequantizeLinear", &["rq", "sy", "zy"], "rd", vec![]),
            node("Flatten", &["rd"], "y", vec![int("axis", 1)]),
        ]);
        model_bytes("qbinary", nodes, init, ("x", &[1, c, h, w]), "y")
    }

    /// Asserts that every dequantized output (f32 bits) of `got` is at most one `step` from
    /// `want`'s; returns how many are the same.
    fn within_a_step(want: &[u32], got: &[u32], step: f32, what: &str) -> usize {
        assert_eq!(want.len(), got.len(), "{what}");
        for (&w, &g) in want.iter().zip(got) {
            let (w, g) = (f32::from_bits(w), f32::from_bits(g));
            assert!((w - g).abs() <= step * 1.001, "{what}: {w} {g}");
        }
        want.iter().zip(got).filter(|(w, g)| w == g).count()
    }

    /// How many `QBinary` nodes a build's plan has.
    fn fused_binaries(built: &crate::load::Built) -> usize {
        let nodes = built.plan.model().nodes();
        nodes.iter().filter(|n| n.op_is::<QBinary>()).count()
    }

    /// Adds and Muls, of equal shapes and with a squeeze-excite broadcast on either side,
    /// u8 and i8 inputs and outputs: the plan with `QBinary` gives values at most one
    /// output step from tract's four-pass plan, nearly all the same (an Add of equal shapes
    /// sums in fixed point, a Mul rounds one product, both as onnxruntime does:
    /// kernels/qbinary.rs). On one thread and on three, the same bytes.
    #[test]
    fn quantized_adds_and_muls_match_tracts_plan() {
        use crate::banded::tests::{both_builds, outputs, test_inputs};
        let (c, h, w) = (3, 7, 9);
        for (op, pooled, zeros) in [
            ("Add", false, [128, 3, 120]),
            ("Add", true, [-5, 0, -128]),
            ("Mul", true, [128, 128, 0]),
            ("Mul", false, [-128, 7, 127]),
        ] {
            let bytes = model(op, pooled, zeros, (c, h, w));
            let (plain, ours) = both_builds(&bytes, (c, h, w));
            let fused = fused_binaries(&ours);
            assert_eq!(fused, 1, "{op} {pooled} {zeros:?}: {:?}", ours.patches);
            // Reported as float only where it runs so (`Built::in_float`).
            let float_op = |b: &crate::load::Built| b.in_float.iter().any(|f| f.contains(op));
            assert!(float_op(&plain) && !float_op(&ours), "{:?}", ours.in_float);
            // Spread over three threads: three cache lines of bytes, or three channels.
            let pool = crate::threads::executor_for(3).unwrap();
            let (mut values, mut same) = (0, 0);
            for data in test_inputs(c * h * w) {
                let want = outputs(&plain.plan, &[1, c, h, w], &data);
                let got = outputs(&ours.plan, &[1, c, h, w], &data);
                // The outputs are dequantized: one step is the output scale, 0.0517.
                same += within_a_step(&want, &got, 0.0517, &format!("{op} {zeros:?}"));
                values += want.len();
                let threaded = crate::threads::scope(pool.clone(), || {
                    outputs(&ours.plan, &[1, c, h, w], &data)
                });
                assert_eq!(got, threaded, "{op} {pooled} {zeros:?}, 3 threads");
            }
            assert!(
                same * 50 >= values * 49,
                "{op} {zeros:?}: {same} of {values}"
            );
        }
    }

    /// A squeeze-excite's scale as the QOperator format with standard operators leaves it:
    /// `Q(DQ(a) * Sigmoid(GlobalAveragePool(x)))`, the scale in f32, on either side of the
    /// Mul, u8 and i8: one `QBinary`, at most one output step from tract's plan (one
    /// rounded product against its three, kernels/qbinary.rs), nearly all the same, on one
    /// thread and on three.
    #[test]
    fn scales_in_float_match_tracts_plan() {
        use crate::banded::tests::{both_builds, outputs, test_inputs};
        let (c, h, w) = (4, 6, 11);
        for (zeros, scale_first) in [([128, 3], false), ([-5, -128], true)] {
            let init = vec![
                raw("sa", D::Float, &[], &[0.043f32]),
                zero_point("za", zeros[0]),
                raw("sy", D::Float, &[], &[0.0217f32]),
                zero_point("zy", zeros[1]),
            ];
            let inputs = if scale_first {
                ["s", "ad"]
            } else {
                ["ad", "s"]
            };
            let nodes = vec![
                node("QuantizeLinear", &["x", "sa", "za"], "a", vec![]),
                node("DequantizeLinear", &["a", "sa", "za"], "ad", vec![]),
                node("GlobalAveragePool", &["x"], "p", vec![]),
                node("Sigmoid", &["p"], "s", vec![]),
                node("Mul", &inputs, "r", vec![]),
                node("QuantizeLinear", &["r", "sy", "zy"], "rq", vec![]),
                node("DequantizeLinear", &["rq", "sy", "zy"], "rd", vec![]),
                node("Flatten", &["rd"], "y", vec![int("axis", 1)]),
            ];
            let bytes = model_bytes("scale", nodes, init, ("x", &[1, c, h, w]), "y");
            let (plain, ours) = both_builds(&bytes, (c, h, w));
            let fused = fused_binaries(&ours);
            assert_eq!(fused, 1, "{zeros:?} {scale_first}: {:?}", ours.patches);
            let pool = crate::threads::executor_for(3).unwrap();
            let (mut values, mut same) = (0, 0);
            for data in test_inputs(c * h * w) {
                let data: Vec<f32> = data.iter().map(|v| 4.0 * v - 2.0).collect();
                let want = outputs(&plain.plan, &[1, c, h, w], &data);
                let got = outputs(&ours.plan, &[1, c, h, w], &data);
                // One step is the output scale, 0.0217.
                same += within_a_step(&want, &got, 0.0217, &format!("{zeros:?}"));
                values += want.len();
                let threaded = crate::threads::scope(pool.clone(), || {
                    outputs(&ours.plan, &[1, c, h, w], &data)
                });
                assert_eq!(got, threaded, "{zeros:?}, 3 threads");
            }
            assert!(same * 50 >= values * 49, "{zeros:?}: {same} of {values}");
        }
    }
}
