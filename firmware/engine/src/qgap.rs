//! Quantized global average pools summed in integers.
//!
//! A quantized GlobalAveragePool (onnxruntime's `QLinearGlobalAveragePool`, lowered by
//! contrib.rs, or a QDQ GlobalAveragePool) reaches tract's plan as
//! `Quantize8(Mul(Reduce<Sum>(DQ(x)), 1/n))`: an f32 tensor of the dequantized input, an f32
//! sum, the scaling and the quantization, where squeeze-excite networks pool every block.
//!
//! [`QGlobalAvgPool`] sums `x - zero point` per channel in i32, exactly, then scales the sum
//! once (`sum as f32 * scale * 1/n`) and quantizes it as `Quantize8` does. This is how
//! onnxruntime computes `QLinearGlobalAveragePool` (an integer sum, then one float scaling),
//! so it is no further from onnxruntime than tract's float sum; it can differ from tract's
//! plan, whose f32 sum rounds at every term, by one output step where a value lands near a
//! rounding tie. The tests compare it with the exact average.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::{OptBinByScalar, TypedBinOp};
use tract_onnx::tract_core::ops::math::Mul;
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer};
use tract_onnx::tract_core::ops::quant::DequantizeLinearF32;

use crate::quantize::{quantize_slice, Narrow, Quantize8};

/// Largest plane whose sum of `x - zero point` (at most 255 in magnitude) fits an i32.
const MAX_PLANE: usize = (i32::MAX / 255) as usize;

/// `Quantize8(Σ DQ(x) over the trailing axes · recip)`, per leading index (channel, and
/// batch when the plan has one).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QGlobalAvgPool {
    /// The input's dequantization: (scale, zero point).
    dequantize: (f32, i32),
    /// The multiplier of the sum (tract's `1 / n`).
    recip: f32,
    quantize: Quantize8,
    /// Values per plane (the product of the pooled axes).
    plane: usize,
    output_shape: TVec<usize>,
}

impl Eq for QGlobalAvgPool {}

impl QGlobalAvgPool {
    fn run<X: Datum + Copy + Into<i32>, Y: Datum + Narrow>(
        &self,
        x: &Tensor,
    ) -> TractResult<Tensor> {
        let planes: usize = self.output_shape.iter().product();
        let view = x.try_as_plain_ram()?;
        let xs = view.as_slice::<X>()?;
        ensure!(
            xs.len() == planes * self.plane,
            "QGlobalAvgPool: an input of {:?} for an output of {:?}",
            x.shape(),
            self.output_shape
        );
        let (scale, zp) = self.dequantize;
        let averages: Vec<f32> = xs
            .chunks_exact(self.plane)
            .map(|p| {
                // |x - zp| <= 255 and `plane` <= MAX_PLANE (checked at the rewrite): exact.
                let sum: i32 = p.iter().map(|&v| v.into() - zp).sum();
                sum as f32 * scale * self.recip
            })
            .collect();
        // SAFETY: every element is written below before the tensor is read.
        let mut out = unsafe { Tensor::uninitialized::<Y>(&self.output_shape)? };
        {
            let mut view = out.try_as_plain_ram_mut()?;
            let ys = view.as_slice_mut::<Y>()?;
            let (qs, qz, _) = self.quantize.params();
            let range = if Y::UNSIGNED { [0, 255] } else { [-128, 127] };
            quantize_slice(&averages, ys, qs, qz, range);
        }
        Ok(out)
    }

    fn run_to<Y: Datum + Narrow>(&self, x: &Tensor) -> TractResult<Tensor> {
        match x.datum_type() {
            DatumType::U8 => self.run::<u8, Y>(x),
            DatumType::I8 => self.run::<i8, Y>(x),
            other => bail!("QGlobalAvgPool: {other:?} input"),
        }
    }
}

impl Op for QGlobalAvgPool {
    fn name(&self) -> StaticName {
        "QGlobalAvgPool".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "planes of {} to {:?}",
            self.plane, self.output_shape
        )])
    }

    tract_onnx::tract_core::op_as_typed_op!();
}

impl EvalOp for QGlobalAvgPool {
    tract_onnx::tract_core::op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let out = match self.quantize.params().2 {
            DatumType::U8 => self.run_to::<u8>(&inputs[0])?,
            _ => self.run_to::<i8>(&inputs[0])?,
        };
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for QGlobalAvgPool {
    tract_onnx::tract_core::as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.quantize.params().2.fact(&*self.output_shape)))
    }
}

/// Replaces every `Quantize8(Mul(Reduce<Sum>(DQ(x)), c))` over all the trailing axes from
/// the second or a later one that [`QGlobalAvgPool`] computes; returns the name of each
/// Reduce node.
pub(crate) fn fuse_quantized_pools(model: &mut TypedModel) -> TractResult<Vec<String>> {
    let fused = std::cell::RefCell::new(vec![]);
    crate::rewrite::replace_runs(model, "qgap", |model, id| {
        let found = run_at(model, id)?;
        if found.is_some() {
            fused.borrow_mut().push(model.node(id).name.clone());
        }
        Ok(found)
    })?;
    Ok(fused.into_inner())
}

/// The scalar constant `c` of a Mul node `node` whose other input is `from`.
fn scalar_multiplier(
    model: &TypedModel,
    node: &TypedNode,
    from: OutletId,
) -> TractResult<Option<f32>> {
    let is_mul = node
        .op_as::<TypedBinOp>()
        .map(|b| b.0.is::<Mul>())
        .or_else(|| node.op_as::<OptBinByScalar>().map(|b| b.binop.is::<Mul>()))
        .unwrap_or(false);
    if !is_mul || node.inputs.len() != 2 {
        return Ok(None);
    }
    let other = match node.inputs.iter().position(|i| *i == from) {
        Some(0) => node.inputs[1],
        Some(1) => node.inputs[0],
        _ => return Ok(None),
    };
    let fact = model.outlet_fact(other)?;
    let Some(k) = fact.konst.as_ref() else {
        return Ok(None);
    };
    if k.datum_type() != DatumType::F32 || k.len() != 1 {
        return Ok(None);
    }
    Ok(Some(k.cast_to_scalar::<f32>()?))
}

fn run_at(
    model: &TypedModel,
    id: usize,
) -> TractResult<Option<(TVec<OutletId>, OutletId, QGlobalAvgPool)>> {
    let node = model.node(id);
    let Some(reduce) = node.op_as::<Reduce>() else {
        return Ok(None);
    };
    let outputs = model.output_outlets()?;
    let Some(dq_node) = node.inputs.first().map(|i| model.node(i.node)) else {
        return Ok(None);
    };
    let Some(dq) = dq_node.op_as::<DequantizeLinearF32>() else {
        return Ok(None);
    };
    let x = model.outlet_fact(dq_node.inputs[0])?;
    let Some(shape) = x.shape.as_concrete() else {
        return Ok(None);
    };
    // The pooled axes: every axis from `first` on (2 with a batch axis, 1 without).
    let mut axes = reduce.axes.clone();
    axes.sort();
    let first = axes.first().copied().unwrap_or(0);
    let trailing: TVec<usize> = (first..shape.len()).collect();
    if reduce.reducer != Reducer::Sum
        || !matches!(x.datum_type, DatumType::U8 | DatumType::I8)
        || first == 0
        || axes != trailing
        || outputs.contains(&OutletId::new(id, 0))
    {
        return Ok(None);
    }
    let plane: usize = shape[first..].iter().product();
    if plane == 0 || plane > MAX_PLANE {
        return Ok(None);
    }
    let Some(mul_node) = model.single_succ(id)? else {
        return Ok(None);
    };
    let Some(recip) = scalar_multiplier(model, mul_node, OutletId::new(id, 0))? else {
        return Ok(None);
    };
    if outputs.contains(&OutletId::new(mul_node.id, 0)) {
        return Ok(None);
    }
    let Some(q_node) = model.single_succ(mul_node.id)? else {
        return Ok(None);
    };
    let Some(quantize) = q_node.op_as::<Quantize8>() else {
        return Ok(None);
    };
    let mut output_shape: TVec<usize> = shape[..first].into();
    output_shape.extend(std::iter::repeat_n(1, shape.len() - first));
    if q_node.outputs[0].fact.shape.as_concrete() != Some(&output_shape[..]) {
        return Ok(None);
    }
    let op = QGlobalAvgPool {
        dequantize: (dq.scale, dq.zero_point),
        recip,
        quantize: quantize.clone(),
        plane,
        output_shape,
    };
    Ok(Some((
        tvec![dq_node.inputs[0]],
        OutletId::new(q_node.id, 0),
        op,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx_build::{int, model_bytes, node, raw, zero_point};
    use tract_onnx::pb::tensor_proto::DataType as D;

    /// `x` quantized (zero point `zx`, u8 or i8 by its sign), a GlobalAveragePool between
    /// DequantizeLinear and QuantizeLinear (zero point `zy`), dequantized to the output.
    fn model(zx: i32, zy: i32, (c, h, w): (usize, usize, usize)) -> Vec<u8> {
        let init = vec![
            raw("sx", D::Float, &[], &[0.0043f32]),
            zero_point("zx", zx),
            raw("sy", D::Float, &[], &[0.00217f32]),
            zero_point("zy", zy),
        ];
        let nodes = vec![
            node("QuantizeLinear", &["x", "sx", "zx"], "q", vec![]),
            node("DequantizeLinear", &["q", "sx", "zx"], "d", vec![]),
            node("GlobalAveragePool", &["d"], "g", vec![]),
            node("QuantizeLinear", &["g", "sy", "zy"], "gq", vec![]),
            node("DequantizeLinear", &["gq", "sy", "zy"], "gd", vec![]),
            node("Flatten", &["gd"], "y", vec![int("axis", 1)]),
        ];
        model_bytes("qgap", nodes, init, ("x", &[1, c, h, w]), "y")
    }

    /// u8 and i8, planes from one row of 5 to 23x17: the fused pool gives, per channel, the
    /// quantization of the exact average of the dequantized values (computed here in f64
    /// from the quantized input), within one output step where the average sits on a
    /// rounding tie, and so does tract's float plan.
    #[test]
    fn quantized_global_pools_give_the_exact_average() {
        use crate::banded::tests::{input_spec, outputs, test_inputs};
        use crate::load::{build_with, Target};
        for (zx, zy, (c, h, w)) in [
            (128, 0, (3, 7, 9)),
            (-5, -128, (4, 23, 17)),
            (0, 127, (3, 1, 5)),
        ] {
            let spec = input_spec(c, h, w);
            let target = Target {
                input: &spec,
                output_tensor: "y",
                batch: 1,
            };
            let bytes = model(zx, zy, (c, h, w));
            let plain = build_with(&bytes, &target, false).unwrap();
            let ours = build_with(&bytes, &target, true).unwrap();
            let fused = ours
                .plan
                .model()
                .nodes()
                .iter()
                .filter(|n| n.op_is::<QGlobalAvgPool>())
                .count();
            assert_eq!(fused, 1, "{zx} {zy}: {:?}", ours.patches);
            assert!(
                !ours
                    .in_float
                    .iter()
                    .any(|f| f.contains("GlobalAveragePool")),
                "{:?}",
                ours.in_float
            );
            let (lo, hi) = if zy < 0 {
                (-128.0, 127.0)
            } else {
                (0.0, 255.0)
            };
            for data in test_inputs(c * h * w) {
                let ys = |plan| -> Vec<f32> {
                    outputs(plan, &[1, c, h, w], &data)
                        .into_iter()
                        .map(f32::from_bits)
                        .collect()
                };
                let (got, tract) = (ys(&ours.plan), ys(&plain.plan));
                for ch in 0..c {
                    // The input as the graph quantizes it, then the exact average.
                    let (qlo, qhi) = if zx < 0 {
                        (-128.0, 127.0)
                    } else {
                        (0.0, 255.0)
                    };
                    let plane = &data[ch * h * w..(ch + 1) * h * w];
                    let sum: f64 = plane
                        .iter()
                        .map(|&v| {
                            // tract multiplies by the reciprocal of the scale.
                            let r = (v * (1.0f32 / 0.0043f32)).round_ties_even();
                            let q = (r + zx as f32).clamp(qlo, qhi);
                            (q as f64 - zx as f64) * 0.0043f32 as f64
                        })
                        .sum();
                    let exact = sum / (h * w) as f64;
                    let q = ((exact / 0.00217f32 as f64).round() + zy as f64).clamp(lo, hi);
                    let want = (q - zy as f64) * 0.00217f32 as f64;
                    let step = 0.00217f64 * 1.0001;
                    for (who, v) in [("QGlobalAvgPool", got[ch]), ("tract", tract[ch])] {
                        assert!(
                            (v as f64 - want).abs() <= step,
                            "{who}, channel {ch} of {zx} {zy} {h}x{w}: {v} against {want}"
                        );
                    }
                }
            }
        }
    }
}
