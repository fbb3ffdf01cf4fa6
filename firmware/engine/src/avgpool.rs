//! Quantized average pools summed in integers: global ones and windowed ones.
//!
//! A quantized GlobalAveragePool (onnxruntime's `QLinearGlobalAveragePool`, lowered by
//! contrib.rs, or a QDQ GlobalAveragePool) reaches tract's plan as
//! `Quantize8(Mul(Reduce<Sum>(DQ(x)), 1/n))`: an f32 tensor of the dequantized input, an f32
//! sum, the scaling and the quantization, where squeeze-excite networks pool every block.
//! A quantized AveragePool (`QLinearAveragePool`, or a QDQ AveragePool, as Inception and
//! DenseNet blocks have) reaches it as `Quantize8(OptSumPool(DQ(x)))`, tract's float window
//! sum divided by each window's count.
//!
//! [`QGlobalAvgPool`] and [`QAvgPool`] sum `x - zero point` in i32, exactly, then scale each
//! sum once (`sum as f32 * scale * 1/n`) and quantize it as `Quantize8` does. onnxruntime
//! sums `QLinearGlobalAveragePool` in integers and scales once; its `QLinearAveragePool`
//! sums dequantized floats. The exact average is the same, so the result is no further
//! from onnxruntime than tract's float sum; it can differ from tract's plan, whose f32 sum
//! rounds at every term, by one output step where a value lands near a rounding tie. The
//! tests compare both with the exact average.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::{OptBinByScalar, TypedBinOp};
use tract_onnx::tract_core::ops::cnn::{OptSumPool, PaddingSpec};
use tract_onnx::tract_core::ops::math::Mul;
use tract_onnx::tract_core::ops::nn::{DataFormat, Reduce, Reducer};
use tract_onnx::tract_core::ops::quant::DequantizeLinearF32;

use crate::quantize::{quantize_slice, Narrow, Quantize8};

/// What the two pools compute their own way: the averages of an input (u8 or i8), as f32
/// values in the output's order; the rest (types, quantization) is [`quantized_averages`].
trait Averages {
    fn averages<X: Datum + Copy + Into<i32>>(&self, x: &Tensor) -> TractResult<Vec<f32>>;
    fn quantize(&self) -> &Quantize8;
    fn output_shape(&self) -> &[usize];
}

/// `pool`'s averages of `x`, quantized as `Quantize8` does.
fn quantized_averages<P: Averages + Op>(pool: &P, x: &Tensor) -> TractResult<Tensor> {
    let averages = match x.datum_type() {
        DatumType::U8 => pool.averages::<u8>(x)?,
        DatumType::I8 => pool.averages::<i8>(x)?,
        other => bail!("{}: {other:?} input", pool.name()),
    };
    let (qs, qz, to) = pool.quantize().params();
    fn write<Y: Datum + Narrow>(
        a: &[f32],
        shape: &[usize],
        qs: f32,
        qz: i32,
    ) -> TractResult<Tensor> {
        // SAFETY: every element is written below before the tensor is read.
        let mut out = unsafe { Tensor::uninitialized::<Y>(shape)? };
        {
            let mut view = out.try_as_plain_ram_mut()?;
            let ys = view.as_slice_mut::<Y>()?;
            ensure!(
                ys.len() == a.len(),
                "{} averages for an output of {shape:?}",
                a.len()
            );
            let range = if Y::UNSIGNED { [0, 255] } else { [-128, 127] };
            quantize_slice(a, ys, qs, qz, range);
        }
        Ok(out)
    }
    match to {
        DatumType::U8 => write::<u8>(&averages, pool.output_shape(), qs, qz),
        _ => write::<i8>(&averages, pool.output_shape(), qs, qz),
    }
}

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

impl Averages for QGlobalAvgPool {
    fn averages<X: Datum + Copy + Into<i32>>(&self, x: &Tensor) -> TractResult<Vec<f32>> {
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
        Ok(xs
            .chunks_exact(self.plane)
            .map(|p| {
                // |x - zp| <= 255 and `plane` <= MAX_PLANE (checked at the rewrite): exact.
                let sum: i32 = p.iter().map(|&v| v.into() - zp).sum();
                sum as f32 * scale * self.recip
            })
            .collect())
    }

    fn quantize(&self) -> &Quantize8 {
        &self.quantize
    }

    fn output_shape(&self) -> &[usize] {
        &self.output_shape
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
        Ok(tvec!(quantized_averages(self, &inputs[0])?.into_tvalue()))
    }
}

impl TypedOp for QGlobalAvgPool {
    tract_onnx::tract_core::as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.quantize.params().2.fact(&*self.output_shape)))
    }
}

/// The windows of a pool along one spatial axis, per output index: the first input index
/// of its taps inside the input, how many taps land inside (each `dilation` apart), and
/// how many count when the padding is counted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AxisWindows {
    first: Vec<usize>,
    inside: Vec<usize>,
    counted: Vec<usize>,
    dilation: usize,
}

impl AxisWindows {
    /// The windows of `output` positions along an axis of `input` values, `before` of
    /// padding ahead of it. Taps at or past `limit` (a padded coordinate) are not counted
    /// with the padding: ONNX ceil mode's overhang. None when a window has no tap inside
    /// the input (its average is undefined).
    fn new(
        input: usize,
        output: usize,
        (kernel, stride, dilation): (usize, usize, usize),
        before: usize,
        limit: usize,
    ) -> Option<AxisWindows> {
        let mut windows = AxisWindows {
            first: Vec::with_capacity(output),
            inside: Vec::with_capacity(output),
            counted: Vec::with_capacity(output),
            dilation,
        };
        for o in 0..output {
            let start = o * stride;
            let taps = (0..kernel).map(|k| start + k * dilation);
            let mut inside = taps.clone().filter(|&p| p >= before && p < before + input);
            let first = inside.next()?;
            windows.first.push(first - before);
            windows.inside.push(1 + inside.count());
            windows.counted.push(taps.filter(|&p| p < limit).count());
        }
        Some(windows)
    }
}

/// `Quantize8(AveragePool(DQ(x)))` over the two trailing axes of an NCHW u8/i8 tensor.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QAvgPool {
    /// The input's dequantization: (scale, zero point).
    dequantize: (f32, i32),
    quantize: Quantize8,
    rows: AxisWindows,
    cols: AxisWindows,
    count_include_pad: bool,
    /// Each output position's multiplier, row by row: the input scale over its window's
    /// count (which taps count: `count_include_pad`).
    multipliers: Vec<f32>,
    /// Input height and width.
    input_hw: [usize; 2],
    output_shape: TVec<usize>,
}

impl Eq for QAvgPool {}

/// Largest window whose sum of `x - zero point` fits an i32 (the same bound as a plane's).
const MAX_WINDOW: usize = MAX_PLANE;

impl QAvgPool {
    /// The pool for `op` over an input of `shape`, when its geometry is one this op
    /// computes: NCHW, two spatial axes, every window with a tap inside the input.
    fn for_op(
        op: &OptSumPool,
        shape: &[usize],
        dequantize: (f32, i32),
        quantize: Quantize8,
    ) -> Option<QAvgPool> {
        let spec = &op.pool_spec;
        if !op.normalize
            || spec.data_format != DataFormat::NCHW
            || spec.kernel_shape.len() != 2
            || shape.len() != 4
            || spec.kernel_shape.iter().product::<usize>() > MAX_WINDOW
        {
            return None;
        }
        let padding = spec.computed_padding(&shape[2..]);
        let (strides, dilations) = (spec.strides(), spec.dilations());
        // tract's divisor with the padding counted: the whole kernel, except in ONNX ceil
        // mode, where the last window may run past the explicit padding.
        let limits: TVec<usize> = match &spec.padding {
            PaddingSpec::ExplicitOnnxPool(before, after, true) => (0..2)
                .map(|ax| before[ax] + shape[2 + ax] + after[ax])
                .collect(),
            _ => tvec![usize::MAX; 2],
        };
        let axis = |ax: usize| {
            AxisWindows::new(
                shape[2 + ax],
                padding[ax].convoluted,
                (spec.kernel_shape[ax], strides[ax], dilations[ax]),
                padding[ax].pad_before,
                limits[ax],
            )
        };
        let (rows, cols) = (axis(0)?, axis(1)?);
        let multipliers = (0..rows.first.len())
            .flat_map(|oy| (0..cols.first.len()).map(move |ox| (oy, ox)))
            .map(|(oy, ox)| {
                let n = if op.count_include_pad {
                    rows.counted[oy] * cols.counted[ox]
                } else {
                    rows.inside[oy] * cols.inside[ox]
                };
                dequantize.0 * (n as f32).recip()
            })
            .collect();
        Some(QAvgPool {
            dequantize,
            quantize,
            rows,
            cols,
            count_include_pad: op.count_include_pad,
            multipliers,
            input_hw: [shape[2], shape[3]],
            output_shape: tvec![
                shape[0],
                shape[1],
                padding[0].convoluted,
                padding[1].convoluted
            ],
        })
    }
}

impl Averages for QAvgPool {
    fn averages<X: Datum + Copy + Into<i32>>(&self, x: &Tensor) -> TractResult<Vec<f32>> {
        let [h, w] = self.input_hw;
        let (ho, wo) = (self.rows.first.len(), self.cols.first.len());
        let planes = self.output_shape[0] * self.output_shape[1];
        let view = x.try_as_plain_ram()?;
        let xs = view.as_slice::<X>()?;
        ensure!(
            xs.len() == planes * h * w,
            "QAvgPool: an input of {:?} for an output of {:?}",
            x.shape(),
            self.output_shape
        );
        let zp = self.dequantize.1;
        let mut averages = vec![0f32; planes * ho * wo];
        let mut column_sums = vec![0i32; w];
        // With unit dilation, the running sums along the column sums: a window's sum is the
        // difference of two of them, whatever its width. (Summing each window tap by tap
        // was a tenth of the qformats network's instructions under qemu, cortex-a72.)
        let mut running = vec![0i32; w + 1];
        for (plane, out) in xs
            .chunks_exact(h * w)
            .zip(averages.chunks_exact_mut(ho * wo))
        {
            for oy in 0..ho {
                // The sums down each column of the window's rows, then along each window.
                let (y0, ny, dy) = (
                    self.rows.first[oy],
                    self.rows.inside[oy],
                    self.rows.dilation,
                );
                let mut rows = plane[y0 * w..].chunks(w * dy).take(ny);
                // Every window has a row inside the input (AxisWindows::new).
                if let Some(row) = rows.next() {
                    for (s, &v) in column_sums.iter_mut().zip(&row[..w]) {
                        *s = v.into();
                    }
                }
                for row in rows {
                    for (s, &v) in column_sums.iter_mut().zip(&row[..w]) {
                        *s += v.into();
                    }
                }
                let row_bias = ny as i32 * zp;
                let out_row = &mut out[oy * wo..(oy + 1) * wo];
                let scales = &self.multipliers[oy * wo..(oy + 1) * wo];
                // |x - zp| <= 255 over at most MAX_WINDOW taps: every window's sum is
                // exact. The running sums may wrap on a very wide row, but they are summed
                // and differenced modulo 2^32, so the difference of two is still exact.
                if self.cols.dilation == 1 {
                    let mut total = 0i32;
                    for (r, &s) in running[1..].iter_mut().zip(&column_sums) {
                        total = total.wrapping_add(s);
                        *r = total;
                    }
                    let windows = self.cols.first.iter().zip(&self.cols.inside);
                    for ((y, m), (&x0, &nx)) in out_row.iter_mut().zip(scales).zip(windows) {
                        let taps = running[x0 + nx].wrapping_sub(running[x0]);
                        let sum = taps - row_bias * nx as i32;
                        *y = sum as f32 * m;
                    }
                    continue;
                }
                for (ox, (y, m)) in out_row.iter_mut().zip(scales).enumerate() {
                    let (x0, nx) = (self.cols.first[ox], self.cols.inside[ox]);
                    let taps = column_sums[x0..]
                        .iter()
                        .step_by(self.cols.dilation)
                        .take(nx);
                    let sum = taps.sum::<i32>() - row_bias * nx as i32;
                    *y = sum as f32 * m;
                }
            }
        }
        Ok(averages)
    }

    fn quantize(&self) -> &Quantize8 {
        &self.quantize
    }

    fn output_shape(&self) -> &[usize] {
        &self.output_shape
    }
}

impl Op for QAvgPool {
    fn name(&self) -> StaticName {
        "QAvgPool".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{:?} to {:?}, padding {}",
            self.input_hw,
            self.output_shape,
            if self.count_include_pad {
                "counted"
            } else {
                "not counted"
            }
        )])
    }

    tract_onnx::tract_core::op_as_typed_op!();
}

impl EvalOp for QAvgPool {
    tract_onnx::tract_core::op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        Ok(tvec!(quantized_averages(self, &inputs[0])?.into_tvalue()))
    }
}

impl TypedOp for QAvgPool {
    tract_onnx::tract_core::as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.quantize.params().2.fact(&*self.output_shape)))
    }
}

/// Replaces every quantized average pool that [`QGlobalAvgPool`] or [`QAvgPool`] computes:
/// `Quantize8(Mul(Reduce<Sum>(DQ(x)), c))` over all the trailing axes from the second or a
/// later one, and `Quantize8(OptSumPool(DQ(x)))`. Returns each pool's node name with its
/// ONNX operator (`GlobalAveragePool` or `AveragePool`).
pub(crate) fn fuse_quantized_pools(model: &mut TypedModel) -> TractResult<Vec<(String, String)>> {
    let fused = std::cell::RefCell::new(vec![]);
    let record = |model: &TypedModel, id: usize, op: &str| {
        fused
            .borrow_mut()
            .push((model.node(id).name.clone(), op.to_string()));
    };
    crate::rewrite::replace_runs(model, "qgap", |model, id| {
        let found = global_at(model, id)?;
        if found.is_some() {
            record(model, id, "GlobalAveragePool");
        }
        Ok(found)
    })?;
    crate::rewrite::replace_runs(model, "qavg", |model, id| {
        let found = windowed_at(model, id)?;
        if found.is_some() {
            record(model, id, "AveragePool");
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

fn global_at(
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

/// The [`QAvgPool`] of the run `Quantize8(OptSumPool(DQ(x)))` from node `id`, the pool.
fn windowed_at(
    model: &TypedModel,
    id: usize,
) -> TractResult<Option<(TVec<OutletId>, OutletId, QAvgPool)>> {
    let node = model.node(id);
    let Some(pool) = node.op_as::<OptSumPool>() else {
        return Ok(None);
    };
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
    if !matches!(x.datum_type, DatumType::U8 | DatumType::I8)
        || model.output_outlets()?.contains(&OutletId::new(id, 0))
    {
        return Ok(None);
    }
    let Some(q_node) = model.single_succ(id)? else {
        return Ok(None);
    };
    let Some(quantize) = q_node.op_as::<Quantize8>() else {
        return Ok(None);
    };
    let Some(op) = QAvgPool::for_op(pool, shape, (dq.scale, dq.zero_point), quantize.clone())
    else {
        return Ok(None);
    };
    if q_node.outputs[0].fact.shape.as_concrete() != Some(&op.output_shape[..]) {
        return Ok(None);
    }
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

    const SX: f32 = 0.0043;
    const SY: f32 = 0.00217;

    /// `x` quantized (zero point `zx`, u8 or i8 by its sign), the pool `op` with
    /// `attributes` between DequantizeLinear and QuantizeLinear (zero point `zy`),
    /// dequantized to the output.
    fn model(
        zx: i32,
        zy: i32,
        (c, h, w): (usize, usize, usize),
        (op, attributes): (&str, Vec<tract_onnx::pb::AttributeProto>),
    ) -> Vec<u8> {
        let init = vec![
            raw("sx", D::Float, &[], &[SX]),
            zero_point("zx", zx),
            raw("sy", D::Float, &[], &[SY]),
            zero_point("zy", zy),
        ];
        let nodes = vec![
            node("QuantizeLinear", &["x", "sx", "zx"], "q", vec![]),
            node("DequantizeLinear", &["q", "sx", "zx"], "d", vec![]),
            node(op, &["d"], "g", attributes),
            node("QuantizeLinear", &["g", "sy", "zy"], "gq", vec![]),
            node("DequantizeLinear", &["gq", "sy", "zy"], "y", vec![]),
        ];
        model_bytes("avgpool", nodes, init, ("x", &[1, c, h, w]), "y")
    }

    /// `v` as the graph quantizes it with zero point `zx`, dequantized, in f64.
    fn dequantized_input(v: f32, zx: i32) -> f64 {
        let (lo, hi) = if zx < 0 {
            (-128.0, 127.0)
        } else {
            (0.0, 255.0)
        };
        // tract multiplies by the reciprocal of the scale.
        let r = (v * (1.0f32 / SX)).round_ties_even();
        let q = (r + zx as f32).clamp(lo, hi);
        (q as f64 - zx as f64) * SX as f64
    }

    /// The value `exact` quantized with zero point `zy` and dequantized: what the graph
    /// outputs for an exact average.
    fn requantized(exact: f64, zy: i32) -> f64 {
        let (lo, hi) = if zy < 0 {
            (-128.0, 127.0)
        } else {
            (0.0, 255.0)
        };
        let q = ((exact / SY as f64).round() + zy as f64).clamp(lo, hi);
        (q - zy as f64) * SY as f64
    }

    /// The plans of `bytes` with and without the engine's rewrites; asserts that the
    /// rewritten one has one `O` and no pool in float.
    fn plans<O: Op>(bytes: &[u8], (c, h, w): (usize, usize, usize)) -> (crate::Plan, crate::Plan) {
        use crate::banded::tests::input_spec;
        use crate::load::{build_with, Target};
        let spec = input_spec(c, h, w);
        let target = Target {
            input: &spec,
            output_tensor: "y",
            batch: 1,
        };
        let plain = build_with(bytes, &target, false).unwrap();
        let ours = build_with(bytes, &target, true).unwrap();
        let fused = ours
            .plan
            .model()
            .nodes()
            .iter()
            .filter(|n| n.op_is::<O>())
            .count();
        assert_eq!(fused, 1, "{:?}", ours.patches);
        assert!(
            !ours.in_float.iter().any(|f| f.contains("AveragePool")),
            "{:?}",
            ours.in_float
        );
        (plain.plan, ours.plan)
    }

    /// u8 and i8, planes from one row of 5 to 23x17: the fused pool gives, per channel, the
    /// quantization of the exact average of the dequantized values (computed here in f64
    /// from the quantized input), within one output step where the average sits on a
    /// rounding tie, and so does tract's float plan.
    #[test]
    fn quantized_global_pools_give_the_exact_average() {
        use crate::banded::tests::{outputs, test_inputs};
        for (zx, zy, (c, h, w)) in [
            (128, 0, (3, 7, 9)),
            (-5, -128, (4, 23, 17)),
            (0, 127, (3, 1, 5)),
        ] {
            let bytes = model(zx, zy, (c, h, w), ("GlobalAveragePool", vec![]));
            let (plain, ours) = plans::<QGlobalAvgPool>(&bytes, (c, h, w));
            for data in test_inputs(c * h * w) {
                let ys = |plan| -> Vec<f32> {
                    outputs(plan, &[1, c, h, w], &data)
                        .into_iter()
                        .map(f32::from_bits)
                        .collect()
                };
                let (got, tract) = (ys(&ours), ys(&plain));
                for ch in 0..c {
                    let plane = &data[ch * h * w..(ch + 1) * h * w];
                    let sum: f64 = plane.iter().map(|&v| dequantized_input(v, zx)).sum();
                    let want = requantized(sum / (h * w) as f64, zy);
                    let step = SY as f64 * 1.0001;
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

    /// The windows of one axis as onnxruntime's pooling kernel takes them, per output:
    /// (first input index, one past the last, the divisor counting the padding). Windows
    /// start at `o * stride - before`; the counted part ends at the padded input's end.
    fn onnx_windows(
        input: usize,
        (kernel, stride): (usize, usize),
        (before, after): (usize, usize),
        ceil: bool,
    ) -> Vec<(usize, usize, usize)> {
        let span = input + before + after - kernel;
        let mut output = if ceil {
            span.div_ceil(stride)
        } else {
            span / stride
        } + 1;
        // The last window starts inside the input or its leading padding.
        if ceil && (output - 1) * stride >= input + before {
            output -= 1;
        }
        (0..output)
            .map(|o| {
                let start = (o * stride) as i64 - before as i64;
                let end = (start + kernel as i64).min((input + after) as i64);
                let counted = (end - start) as usize;
                (
                    start.max(0) as usize,
                    end.min(input as i64) as usize,
                    counted,
                )
            })
            .collect()
    }

    /// Odd windows (stride 2 and (2, 1), asymmetric padding, ceil mode's overhang, the
    /// padding counted and not, a one-row input, u8 and i8 on either side): the fused pool
    /// gives the quantization of the exact average of each window's dequantized values
    /// (computed here in f64, with onnxruntime's window rules), within one output step at
    /// a rounding tie, and so does tract's float plan.
    #[test]
    fn quantized_windowed_pools_give_the_exact_average() {
        use crate::banded::tests::{outputs, test_inputs};
        use crate::onnx_build::ints;
        // (zx, zy, (c, h, w), kernel, strides, pads [top, left, bottom, right], ceil mode,
        // count_include_pad)
        type Case = (
            i32,
            i32,
            (usize, usize, usize),
            [usize; 2],
            [usize; 2],
            [usize; 4],
            bool,
            bool,
        );
        let cases: [Case; 8] = [
            (
                128,
                0,
                (3, 9, 7),
                [3, 3],
                [2, 2],
                [1, 1, 1, 1],
                false,
                false,
            ),
            (128, 0, (3, 9, 7), [3, 3], [2, 2], [1, 1, 1, 1], false, true),
            (
                -5,
                -128,
                (4, 11, 6),
                [2, 3],
                [2, 1],
                [0, 1, 1, 0],
                false,
                false,
            ),
            (0, 127, (2, 10, 8), [3, 3], [2, 2], [0, 0, 0, 0], true, true),
            (
                0,
                127,
                (2, 10, 8),
                [3, 3],
                [2, 2],
                [0, 0, 0, 0],
                true,
                false,
            ),
            (-5, 3, (5, 1, 13), [1, 5], [1, 3], [0, 2, 0, 2], true, true),
            (
                128,
                0,
                (3, 6, 6),
                [2, 2],
                [2, 2],
                [0, 0, 0, 0],
                false,
                false,
            ),
            (
                128,
                0,
                (9, 5, 14),
                [3, 3],
                [1, 1],
                [1, 1, 1, 1],
                false,
                true,
            ),
        ];
        for (zx, zy, (c, h, w), kernel, strides, pads, ceil, include) in cases {
            let attributes = vec![
                ints("kernel_shape", &kernel.map(|k| k as i64)),
                ints("strides", &strides.map(|s| s as i64)),
                ints("pads", &pads.map(|p| p as i64)),
                int("ceil_mode", ceil as i64),
                int("count_include_pad", include as i64),
            ];
            let bytes = model(zx, zy, (c, h, w), ("AveragePool", attributes));
            let (plain, ours) = plans::<QAvgPool>(&bytes, (c, h, w));
            let rows = onnx_windows(h, (kernel[0], strides[0]), (pads[0], pads[2]), ceil);
            let cols = onnx_windows(w, (kernel[1], strides[1]), (pads[1], pads[3]), ceil);
            let case =
                format!("{zx} {zy} {h}x{w} {kernel:?} {strides:?} {pads:?} {ceil} {include}");
            for data in test_inputs(c * h * w) {
                let ys = |plan| -> Vec<f32> {
                    outputs(plan, &[1, c, h, w], &data)
                        .into_iter()
                        .map(f32::from_bits)
                        .collect()
                };
                let (got, tract) = (ys(&ours), ys(&plain));
                assert_eq!(got.len(), c * rows.len() * cols.len(), "{case}");
                assert_eq!(tract.len(), got.len(), "{case}");
                let mut at = 0;
                for ch in 0..c {
                    let plane = &data[ch * h * w..(ch + 1) * h * w];
                    for &(y0, y1, ny) in &rows {
                        for &(x0, x1, nx) in &cols {
                            let sum: f64 = (y0..y1)
                                .flat_map(|y| (x0..x1).map(move |x| y * w + x))
                                .map(|i| dequantized_input(plane[i], zx))
                                .sum();
                            let n = if include {
                                ny * nx
                            } else {
                                (y1 - y0) * (x1 - x0)
                            };
                            let want = requantized(sum / n as f64, zy);
                            let step = SY as f64 * 1.0001;
                            for (who, v) in [("QAvgPool", got[at]), ("tract", tract[at])] {
                                assert!(
                                    (v as f64 - want).abs() <= step,
                                    "{who}, output {at} of {case}: {v} against {want}"
                                );
                            }
                            at += 1;
                        }
                    }
                }
            }
        }
    }
}
