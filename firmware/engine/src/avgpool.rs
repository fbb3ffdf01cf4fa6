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
//!
//! A global pool whose averages no quantization reads (a classifier's head: the pool of
//! the last convolution's Relu, then a float Gemm, as onnxruntime's QOperator format with
//! standard operators leaves it) is [`QGlobalAvgPool`] too, giving the averages in f32:
//! each within an f32 rounding of the exact one, where tract's f32 sum rounds at every
//! term (its last bits differ from tract's).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::array::TypedConcat;
use tract_onnx::tract_core::ops::cnn::{OptSumPool, PaddingSpec};
use tract_onnx::tract_core::ops::math::Mul;
use tract_onnx::tract_core::ops::nn::{DataFormat, Reduce, Reducer};
use tract_onnx::tract_core::ops::quant::DequantizeLinearF32;

use crate::im2col::strided_rows;
use crate::quantize::{quantize_slice, Narrow, Quantize8};

/// What the two pools compute their own way: the averages of an input (u8 or i8), as f32
/// values in the output's order; the rest (types, quantization) is [`quantized_averages`].
trait Averages {
    fn averages<X: Datum + Copy + Into<i32>>(&self, x: &Tensor) -> TractResult<Vec<f32>>;
    fn output_shape(&self) -> &[usize];
}

/// `pool`'s averages of `x`, in f32.
fn averages_of<P: Averages + Op>(pool: &P, x: &Tensor) -> TractResult<Vec<f32>> {
    match x.datum_type() {
        DatumType::U8 => pool.averages::<u8>(x),
        DatumType::I8 => pool.averages::<i8>(x),
        other => bail!("{}: {other:?} input", pool.name()),
    }
}

/// `pool`'s averages of `x`, quantized as `quantize` does.
fn quantized_averages<P: Averages + Op>(
    pool: &P,
    x: &Tensor,
    quantize: &Quantize8,
) -> TractResult<Tensor> {
    let averages = averages_of(pool, x)?;
    let (qs, qz, to) = quantize.params();
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
/// batch when the plan has one), or that average in f32 when no quantization follows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QGlobalAvgPool {
    /// The input's dequantization: (scale, zero point).
    dequantize: (f32, i32),
    /// The multiplier of the sum (tract's `1 / n`).
    recip: f32,
    /// The averages' quantization, or none: the averages in f32.
    quantize: Option<Quantize8>,
    /// Values per plane (the product of the pooled axes).
    plane: usize,
    output_shape: TVec<usize>,
}

impl Eq for QGlobalAvgPool {}

impl QGlobalAvgPool {
    /// This pool giving i8 when it gives u8 (rewrite.rs `fold_shifts`).
    pub(crate) fn shifted(&self) -> Option<QGlobalAvgPool> {
        Some(QGlobalAvgPool {
            quantize: Some(self.quantize.as_ref()?.shifted()?),
            ..self.clone()
        })
    }

    /// Whether it gives the averages in f32 (no quantization reads them).
    #[cfg(test)]
    pub(crate) fn gives_f32(&self) -> bool {
        self.quantize.is_none()
    }

    /// The output's type: the quantization's, or F32.
    fn output_type(&self) -> DatumType {
        self.quantize
            .as_ref()
            .map_or(DatumType::F32, |q| q.params().2)
    }
}

impl Averages for QGlobalAvgPool {
    fn averages<X: Datum + Copy + Into<i32>>(&self, x: &Tensor) -> TractResult<Vec<f32>> {
        let planes: usize = self.output_shape.iter().product();
        let view = x.try_as_plain_ram()?;
        // Checks the type; the sums read the bytes.
        let xs = view.as_slice::<X>()?;
        ensure!(
            xs.len() == planes * self.plane,
            "QGlobalAvgPool: an input of {:?} for an output of {:?}",
            x.shape(),
            self.output_shape
        );
        let (scale, zp) = self.dequantize;
        // An i8's bits with the top one flipped are its value plus 128, as a u8.
        let (flip, offset) = if X::datum_type() == DatumType::I8 {
            (0x80, 128 + i64::from(zp))
        } else {
            (0, i64::from(zp))
        };
        let bias = offset * self.plane as i64;
        Ok(view
            .as_bytes()
            .chunks_exact(self.plane)
            .map(|p| {
                // |x - zp| <= 255 and `plane` <= MAX_PLANE (checked at the rewrite): the
                // sum fits an i32, exactly.
                let sum = crate::kernels::sum::sum(p, flip) as i64 - bias;
                sum as i32 as f32 * scale * self.recip
            })
            .collect())
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
            "planes of {} to {:?} {:?}",
            self.plane,
            self.output_shape,
            self.output_type()
        )])
    }

    tract_onnx::tract_core::op_as_typed_op!();
}

impl EvalOp for QGlobalAvgPool {
    tract_onnx::tract_core::op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let out = match &self.quantize {
            Some(q) => quantized_averages(self, &inputs[0], q)?,
            None => Tensor::from_shape(&self.output_shape, &averages_of(self, &inputs[0])?)?,
        };
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for QGlobalAvgPool {
    tract_onnx::tract_core::as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.output_type().fact(&*self.output_shape)))
    }
}

/// The windows of a pool along one spatial axis: where output `o`'s taps start in the
/// padded axis (`o * stride`, taps `dilation` apart), how long the padded axis must be to
/// hold every tap, and each window's divisor (its taps inside the input, or those that
/// count when the padding is counted).
#[derive(Debug, Clone, PartialEq, Eq)]
struct AxisWindows {
    kernel: usize,
    stride: usize,
    dilation: usize,
    /// Padding ahead of the input.
    before: usize,
    /// The padded axis: the input, its padding before, and zeros up to the last tap.
    padded: usize,
    inside: Vec<usize>,
    counted: Vec<usize>,
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
        let reach = output.checked_sub(1)? * stride + (kernel.checked_sub(1)?) * dilation + 1;
        let mut windows = AxisWindows {
            kernel,
            stride,
            dilation,
            before,
            padded: reach.max(before + input),
            inside: Vec::with_capacity(output),
            counted: Vec::with_capacity(output),
        };
        for o in 0..output {
            let start = o * stride;
            let taps = (0..kernel).map(|k| start + k * dilation);
            let inside = taps
                .clone()
                .filter(|&p| p >= before && p < before + input)
                .count();
            if inside == 0 {
                return None;
            }
            windows.inside.push(inside);
            windows.counted.push(taps.filter(|&p| p < limit).count());
        }
        Some(windows)
    }

    fn outputs(&self) -> usize {
        self.inside.len()
    }
}

/// `sums[i] = Σ values[i + k · step]` over `k < taps`, for every `i` in `sums`.
fn add_shifted<L: Lane>(values: &[L], taps: usize, step: usize, sums: &mut [L]) {
    let n = sums.len();
    // A window of three (3x3 pools, the commonest): one pass of three loads per lane, where
    // a copy and two passes of adds each loaded and stored every lane (qformats' pool on
    // cortex-a76).
    if taps == 3 {
        let shifted = |k: usize| &values[k * step..k * step + n];
        let lanes = shifted(0).iter().zip(shifted(1)).zip(shifted(2));
        for (s, ((&a, &b), &c)) in sums.iter_mut().zip(lanes) {
            let mut t = a;
            t += b;
            t += c;
            *s = t;
        }
        return;
    }
    sums.copy_from_slice(&values[..n]);
    for k in 1..taps {
        for (s, &v) in sums.iter_mut().zip(&values[k * step..k * step + n]) {
            *s += v;
        }
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
    /// The multiplier of each output's window sum (outputs of a plane, row-major): the
    /// input scale over the window's count (which taps count: `count_include_pad`).
    multipliers: Vec<f32>,
    /// Input height and width.
    input_hw: [usize; 2],
    output_shape: TVec<usize>,
}

impl Eq for QAvgPool {}

impl QAvgPool {
    /// This pool giving i8 when it gives u8 (rewrite.rs `fold_shifts`).
    pub(crate) fn shifted(&self) -> Option<QAvgPool> {
        Some(QAvgPool {
            quantize: self.quantize.shifted()?,
            ..self.clone()
        })
    }
}

/// The bytes of `xs`.
fn as_bytes<L: Lane>(xs: &[L]) -> &[i8] {
    // SAFETY: any i16's or i32's bytes are valid i8s; the length is the slice's in bytes.
    unsafe { std::slice::from_raw_parts(xs.as_ptr().cast(), std::mem::size_of_val(xs)) }
}

/// The bytes of `xs`, to write.
fn as_bytes_mut<L: Lane>(xs: &mut [L]) -> &mut [i8] {
    // SAFETY: as in `as_bytes`; every byte pattern is a valid i16 or i32.
    unsafe { std::slice::from_raw_parts_mut(xs.as_mut_ptr().cast(), std::mem::size_of_val(xs)) }
}

/// Largest window whose sum of `x - zero point` fits an i32 (the same bound as a plane's).
const MAX_WINDOW: usize = MAX_PLANE;

/// Largest window whose sum of `x - zero point` (at most 255 in magnitude) fits an i16.
const MAX_WINDOW_I16: usize = (i16::MAX / 255) as usize;

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
        let mut multipliers = Vec::with_capacity(rows.outputs() * cols.outputs());
        for oy in 0..rows.outputs() {
            for ox in 0..cols.outputs() {
                let n = if op.count_include_pad {
                    rows.counted[oy] * cols.counted[ox]
                } else {
                    rows.inside[oy] * cols.inside[ox]
                };
                multipliers.push(dequantize.0 * (n as f32).recip());
            }
        }
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

impl QAvgPool {
    /// [`Averages::averages`] with the sums in `L` (i16 or i32, which must hold a
    /// window's sum). A group of planes, less the zero point, is written into zero-padded
    /// planes one above the other (the padding then adds nothing to a sum). The window
    /// sums are two passes of adds over the whole group, which the compiler vectorizes
    /// whatever the plane's width: along the rows (the sums that run over a row's end are
    /// never read), then down them (nor are those that run over a plane's end). Each
    /// window's sum lands at its first tap's padded position and is read from there,
    /// scaled.
    fn sums_scaled<L: Lane>(&self, (xs, signed): (&[u8], bool), planes: usize) -> Vec<f32> {
        let [h, w] = self.input_hw;
        let (rows, cols) = (&self.rows, &self.cols);
        let (ho, wo) = (rows.outputs(), cols.outputs());
        let zp = self.dequantize.1;
        let (hp, wp) = (rows.padded, cols.padded);
        // Planes per group: about 4096 sums per buffer, so that the passes stay in the
        // first-level cache.
        let group = (4096 / (hp * wp)).clamp(1, planes);
        let mut padded = vec![L::default(); group * hp * wp];
        let mut row_sums = vec![L::default(); padded.len()];
        let mut averages = vec![0f32; planes * ho * wo];
        // Room for the whole blocks of `strided_rows` past the group's last row.
        const SLACK: usize = 16;
        let size = std::mem::size_of::<L>();
        let mut gathered = vec![L::default(); group * ho * wo + SLACK];
        let groups = xs
            .chunks(group * h * w)
            .zip(averages.chunks_mut(group * ho * wo));
        for (g, (xs, out)) in groups.enumerate() {
            // The groups after the first: their padding must read zero again.
            if g > 0 {
                padded.fill(L::default());
            }
            let n = xs.len() / (h * w) * hp * wp;
            for (plane, dst) in xs.chunks_exact(h * w).zip(padded.chunks_exact_mut(hp * wp)) {
                let interior = dst[rows.before * wp..].chunks_exact_mut(wp);
                for (src, row) in plane.chunks_exact(w).zip(interior) {
                    L::centred_row(src, signed, zp, &mut row[cols.before..cols.before + w]);
                }
            }
            // |x - zp| <= 255 over at most the taps `L` holds: every sum is exact.
            let along = n - (cols.kernel - 1) * cols.dilation;
            add_shifted(
                &padded[..n],
                cols.kernel,
                cols.dilation,
                &mut row_sums[..along],
            );
            let down = along - (rows.kernel - 1) * rows.dilation * wp;
            let window_sums = &mut padded[..down];
            add_shifted(
                &row_sums[..along],
                rows.kernel,
                rows.dilation * wp,
                window_sums,
            );
            // Each output's sum, from its first tap's padded position: whole output rows
            // at column stride 1 (blocks of 16 bytes that may run past a row, into the
            // next row's place or the slack).
            let sums = &mut gathered[..out.len() + SLACK];
            for (p, plane) in window_sums.chunks(hp * wp).enumerate() {
                let to = &mut sums[p * ho * wo..];
                if cols.stride == 1 {
                    let (from, to) = (as_bytes(plane), as_bytes_mut(to));
                    let (pitch, len) = (rows.stride * wp * size, wo * size);
                    strided_rows(from, pitch, 1, (to, len), len, ho);
                } else {
                    for (oy, row) in to[..ho * wo].chunks_exact_mut(wo).enumerate() {
                        let taken = plane[oy * rows.stride * wp..].iter().step_by(cols.stride);
                        row.iter_mut().zip(taken).for_each(|(y, &s)| *y = s);
                    }
                }
            }
            for (ys, sums) in out
                .chunks_exact_mut(ho * wo)
                .zip(sums.chunks_exact(ho * wo))
            {
                for ((y, &s), &m) in ys.iter_mut().zip(sums).zip(&self.multipliers) {
                    *y = s.get() as f32 * m;
                }
            }
        }
        averages
    }
}

/// A window sum's lane: i16 or i32.
trait Lane: Copy + Default + std::ops::AddAssign {
    /// `v`, which fits.
    fn of(v: i32) -> Self;
    fn get(self) -> i32;

    /// `dst[i]` = byte `i` of `src` (an i8 when `signed`, else a u8) less `zp`.
    fn centred_row(src: &[u8], signed: bool, zp: i32, dst: &mut [Self]) {
        centred_bytes(src, signed, zp, dst)
    }
}

/// [`Lane::centred_row`] one value at a time.
fn centred_bytes<L: Lane>(src: &[u8], signed: bool, zp: i32, dst: &mut [L]) {
    for (d, &b) in dst.iter_mut().zip(src) {
        let x = if signed {
            i32::from(b as i8)
        } else {
            i32::from(b)
        };
        *d = L::of(x - zp);
    }
}

impl Lane for i16 {
    fn of(v: i32) -> i16 {
        v as i16
    }
    fn get(self) -> i32 {
        i32::from(self)
    }

    /// On aarch64, eight bytes widened and less the zero point per step, the last step
    /// overlapping the one before (a row of 14, the qformats network's pool, went 8 in a
    /// vector and 6 one by one: a quarter of the pool's instructions on cortex-a76).
    /// Exact: a byte less a zero point of its type is within ±255.
    fn centred_row(src: &[u8], signed: bool, zp: i32, dst: &mut [i16]) {
        #[cfg(target_arch = "aarch64")]
        if let (n @ 8.., Ok(zp)) = (src.len().min(dst.len()), i16::try_from(zp)) {
            use std::arch::aarch64::*;
            // SAFETY: NEON is part of aarch64; every step reads and writes 8 values at
            // `at + 8 <= n`, inside both slices.
            unsafe {
                let z = vdupq_n_s16(zp);
                for start in (0..n).step_by(8) {
                    let at = start.min(n - 8);
                    let b = vld1_u8(src.as_ptr().add(at));
                    let wide = if signed {
                        vmovl_s8(vreinterpret_s8_u8(b))
                    } else {
                        vreinterpretq_s16_u16(vmovl_u8(b))
                    };
                    vst1q_s16(dst.as_mut_ptr().add(at), vsubq_s16(wide, z));
                }
            }
            return;
        }
        centred_bytes(src, signed, zp, dst)
    }
}

impl Lane for i32 {
    fn of(v: i32) -> i32 {
        v
    }
    fn get(self) -> i32 {
        self
    }
}

impl Averages for QAvgPool {
    /// In 16-bit sums where a window's fits ([`QAvgPool::sums_scaled`]).
    fn averages<X: Datum + Copy + Into<i32>>(&self, x: &Tensor) -> TractResult<Vec<f32>> {
        let [h, w] = self.input_hw;
        let (rows, cols) = (&self.rows, &self.cols);
        let planes = self.output_shape[0] * self.output_shape[1];
        let view = x.try_as_plain_ram()?;
        let xs = view.as_slice::<X>()?;
        ensure!(
            xs.len() == planes * h * w,
            "QAvgPool: an input of {:?} for an output of {:?}",
            x.shape(),
            self.output_shape
        );
        // The bytes, and whether they are i8s.
        let bytes = (view.as_bytes(), X::datum_type() == DatumType::I8);
        // Twice the lanes per add of the passes.
        Ok(if rows.kernel * cols.kernel <= MAX_WINDOW_I16 {
            self.sums_scaled::<i16>(bytes, planes)
        } else {
            self.sums_scaled::<i32>(bytes, planes)
        })
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
        let out = quantized_averages(self, &inputs[0], &self.quantize)?;
        Ok(tvec!(out.into_tvalue()))
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
    for id in model.eval_order()? {
        let Some((xs, last, pools)) = joined_windowed_at(model, id)? else {
            continue;
        };
        record(model, id, "AveragePool");
        let name = model.node(id).name.clone();
        let patch = TypedModelPatch::rewire(model, &xs, &[last], &|p, taps| {
            let mut parts = tvec![];
            for (i, (tap, pool)) in taps.iter().zip(&pools).enumerate() {
                parts.push(p.wire_node(format!("{name}.qavg{i}"), pool.clone(), &[*tap])?[0]);
            }
            p.wire_node(format!("{name}.bytes"), TypedConcat { axis: 1 }, &parts)
        })?;
        patch.apply(model)?;
    }
    Ok(fused.into_inner())
}

/// The branches' int8 tensors, the quantization's outlet and the branches' pools.
type Joined = (TVec<OutletId>, OutletId, Vec<QAvgPool>);

/// `Quantize8(OptSumPool(Concat(DQ(x_0), DQ(x_1), ...)))` at the pool `id`, the Concat along
/// the channels (a Relu between a DQ and the Concat is `DQ(QTable(x))` by then,
/// qtable.rs `relus_on_integers`): as each channel's average
/// reads that channel alone, it is the concatenation of the branches' [`QAvgPool`]s, each
/// quantized as the output is (onnxruntime's QOperator format with standard operators
/// leaves Inception-style joins so: QLinearConv, DequantizeLinear, Relu, Concat,
/// AveragePool, QuantizeLinear; they summed in f32 there, a tenth of the qformats
/// network's instructions under qemu).
fn joined_windowed_at(model: &TypedModel, id: usize) -> TractResult<Option<Joined>> {
    let node = model.node(id);
    let Some(pool) = node.op_as::<OptSumPool>() else {
        return Ok(None);
    };
    let Some(concat) = node.inputs.first().map(|i| model.node(i.node)) else {
        return Ok(None);
    };
    if concat.op_as::<TypedConcat>().is_none_or(|c| c.axis != 1) {
        return Ok(None);
    }
    let outputs = model.output_outlets()?;
    let Some(q_node) = model.single_succ(id)? else {
        return Ok(None);
    };
    let Some(quantize) = q_node.op_as::<Quantize8>() else {
        return Ok(None);
    };
    if outputs.contains(&OutletId::new(id, 0)) {
        return Ok(None);
    }
    let (mut xs, mut pools) = (tvec![], vec![]);
    for &branch in &concat.inputs {
        let Some((x, dequantize)) = dequantized(model, branch) else {
            return Ok(None);
        };
        let fact = model.outlet_fact(x)?;
        let Some(shape) = fact.shape.as_concrete() else {
            return Ok(None);
        };
        if !matches!(fact.datum_type, DatumType::U8 | DatumType::I8) {
            return Ok(None);
        }
        let Some(op) = QAvgPool::for_op(pool, shape, dequantize, quantize.clone()) else {
            return Ok(None);
        };
        xs.push(x);
        pools.push(op);
    }
    // The joined outputs have the quantization's shape.
    let channels: usize = pools.iter().map(|p| p.output_shape[1]).sum();
    let mut shape = pools[0].output_shape.clone();
    shape[1] = channels;
    if q_node.outputs[0].fact.shape.as_concrete() != Some(&shape[..])
        || pools.iter().any(|p| p.output_shape[2..] != shape[2..])
    {
        return Ok(None);
    }
    Ok(Some((xs, OutletId::new(q_node.id, 0), pools)))
}

/// `(x, (scale, zero point))` when `outlet` is `DQ(x)`.
fn dequantized(model: &TypedModel, outlet: OutletId) -> Option<(OutletId, (f32, i32))> {
    let node = model.node(outlet.node);
    let dq = node.op_as::<DequantizeLinearF32>()?;
    (node.inputs.len() == 1).then(|| (node.inputs[0], (dq.scale, dq.zero_point)))
}

/// The scalar constant `c` of a Mul node `node` whose other input is `from`.
fn scalar_multiplier(
    model: &TypedModel,
    node: &TypedNode,
    from: OutletId,
) -> TractResult<Option<f32>> {
    if !crate::rewrite::is_bin_or_by_scalar::<Mul>(node) || node.inputs.len() != 2 {
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
    // The quantization that alone reads the averages, or none: they stay f32.
    let quantizer = model
        .single_succ(mul_node.id)?
        .and_then(|q| Some((q.id, q.op_as::<Quantize8>()?.clone())));
    let (last, quantize) = match quantizer {
        Some((q, quantize)) => (OutletId::new(q, 0), Some(quantize)),
        None => (OutletId::new(mul_node.id, 0), None),
    };
    let mut output_shape: TVec<usize> = shape[..first].into();
    output_shape.extend(std::iter::repeat_n(1, shape.len() - first));
    let fact = model.outlet_fact(last)?;
    if fact.shape.as_concrete() != Some(&output_shape[..])
        || (quantize.is_none() && fact.datum_type != DatumType::F32)
    {
        return Ok(None);
    }
    let op = QGlobalAvgPool {
        dequantize: (dq.scale, dq.zero_point),
        recip,
        quantize,
        plane,
        output_shape,
    };
    Ok(Some((tvec![dq_node.inputs[0]], last, op)))
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
    fn plans<O: Op>(bytes: &[u8], chw: (usize, usize, usize)) -> (crate::Plan, crate::Plan) {
        let (plain, ours) = crate::banded::tests::both_builds(bytes, chw);
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

    /// A global pool that no quantization follows (a classifier's head, read by a float
    /// Gemm; here a Flatten to the graph's output): u8 and i8, a Relu between it and the dequantization
    /// or not, planes of one row of 5 to 23x17 and a batch of two. The fused pool gives each
    /// average within an f32 rounding of the exact one (f64 here), where tract's f32 sum
    /// rounds at every term; none is left in float.
    #[test]
    fn float_global_pools_give_the_exact_average_in_f32() {
        use crate::banded::tests::{outputs, test_inputs};
        for (zx, relu, (c, h, w)) in [
            (128, false, (3, 7, 9)),
            (-5, true, (4, 23, 17)),
            (0, false, (3, 1, 5)),
            (131, true, (5, 14, 14)),
        ] {
            let init = vec![raw("sx", D::Float, &[], &[SX]), zero_point("zx", zx)];
            let mut nodes = vec![
                node("QuantizeLinear", &["x", "sx", "zx"], "q", vec![]),
                node("DequantizeLinear", &["q", "sx", "zx"], "d", vec![]),
            ];
            let mut pooled = "d";
            if relu {
                nodes.push(node("Relu", &["d"], "r", vec![]));
                pooled = "r";
            }
            nodes.push(node("GlobalAveragePool", &[pooled], "g", vec![]));
            nodes.push(node("Flatten", &["g"], "y", vec![int("axis", 1)]));
            let bytes = model_bytes("head", nodes, init, ("x", &[1, c, h, w]), "y");
            let what = format!("{zx}, Relu {relu}, {h}x{w}");
            let (plain, ours) = plans::<QGlobalAvgPool>(&bytes, (c, h, w));
            let mut differs = false;
            for data in test_inputs(c * h * w) {
                let ys = |plan| outputs(plan, &[1, c, h, w], &data);
                let (got, tract) = (ys(&ours), ys(&plain));
                differs |= got != tract;
                for ch in 0..c {
                    let plane = &data[ch * h * w..(ch + 1) * h * w];
                    let floor = if relu { 0.0 } else { f64::MIN };
                    let sum: f64 = plane
                        .iter()
                        .map(|&v| dequantized_input(v, zx).max(floor))
                        .sum();
                    let want = sum / (h * w) as f64;
                    // Three roundings: the sum to f32 (exact below 2^24), the scaling and
                    // the division's multiplier and product.
                    let v = f64::from(f32::from_bits(got[ch]));
                    assert!(
                        (v - want).abs() <= want.abs() * 4.0 * f64::from(f32::EPSILON),
                        "{what}, channel {ch}: {v} against {want}"
                    );
                }
            }
            // The exact sums are not tract's f32 sums: a plan that left the pool to tract
            // would match tract's bits on every input.
            if h * w > 8 {
                assert!(differs, "{what}: tract's bits on every input");
            }
        }
    }

    /// The windows of one axis as onnxruntime's pooling kernel takes them, per output:
    /// (the input indices of its taps inside the input, the divisor counting the padding).
    /// Windows start at `o * stride - before`, taps `dilation` apart; the counted ones end
    /// at the padded input's end.
    fn onnx_windows(
        input: usize,
        (kernel, stride, dilation): (usize, usize, usize),
        (before, after): (usize, usize),
        ceil: bool,
    ) -> Vec<(Vec<usize>, usize)> {
        let span = input + before + after - ((kernel - 1) * dilation + 1);
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
                let taps = (0..kernel).map(|k| (o * stride + k * dilation) as i64 - before as i64);
                let counted = taps.clone().filter(|&t| t < (input + after) as i64).count();
                let inside = taps
                    .filter(|&t| t >= 0 && t < input as i64)
                    .map(|t| t as usize)
                    .collect();
                (inside, counted)
            })
            .collect()
    }

    /// One windowed pool to test: the input's and output's zero points, the input's
    /// (channels, height, width), and the ONNX attributes.
    struct Case {
        zx: i32,
        zy: i32,
        chw: (usize, usize, usize),
        kernel: [usize; 2],
        strides: [usize; 2],
        dilations: [usize; 2],
        /// [top, left, bottom, right]
        pads: [usize; 4],
        ceil: bool,
        include: bool,
    }

    /// Odd windows (stride 2 and (2, 1), dilated taps, asymmetric padding, ceil mode's
    /// overhang, the padding counted and not, a one-row input, u8 and i8 on either side, a
    /// window of 132 taps, past what 16-bit sums hold):
    /// the fused pool gives the quantization of the exact average of each window's
    /// dequantized values (computed here in f64, with onnxruntime's window rules), within
    /// one output step at a rounding tie, and so does tract's float plan.
    #[test]
    fn quantized_windowed_pools_give_the_exact_average() {
        use crate::banded::tests::{outputs, test_inputs};
        use crate::onnx_build::ints;
        #[rustfmt::skip]
        let cases = [
            Case { zx: 128, zy: 0, chw: (3, 9, 7), kernel: [3, 3], strides: [2, 2], dilations: [1, 1], pads: [1, 1, 1, 1], ceil: false, include: false },
            Case { zx: 128, zy: 0, chw: (3, 9, 7), kernel: [3, 3], strides: [2, 2], dilations: [1, 1], pads: [1, 1, 1, 1], ceil: false, include: true },
            Case { zx: -5, zy: -128, chw: (4, 11, 6), kernel: [2, 3], strides: [2, 1], dilations: [1, 1], pads: [0, 1, 1, 0], ceil: false, include: false },
            Case { zx: 0, zy: 127, chw: (2, 10, 8), kernel: [3, 3], strides: [2, 2], dilations: [1, 1], pads: [0, 0, 0, 0], ceil: true, include: true },
            Case { zx: 0, zy: 127, chw: (2, 10, 8), kernel: [3, 3], strides: [2, 2], dilations: [1, 1], pads: [0, 0, 0, 0], ceil: true, include: false },
            Case { zx: -5, zy: 3, chw: (5, 1, 13), kernel: [1, 5], strides: [1, 3], dilations: [1, 1], pads: [0, 2, 0, 2], ceil: true, include: true },
            Case { zx: 128, zy: 0, chw: (3, 6, 6), kernel: [2, 2], strides: [2, 2], dilations: [1, 1], pads: [0, 0, 0, 0], ceil: false, include: false },
            Case { zx: 128, zy: 0, chw: (9, 5, 14), kernel: [3, 3], strides: [1, 1], dilations: [1, 1], pads: [1, 1, 1, 1], ceil: false, include: true },
            Case { zx: 128, zy: 0, chw: (3, 12, 9), kernel: [3, 2], strides: [1, 2], dilations: [2, 3], pads: [2, 1, 1, 2], ceil: false, include: false },
            Case { zx: -7, zy: 5, chw: (2, 9, 11), kernel: [3, 3], strides: [2, 1], dilations: [3, 2], pads: [1, 2, 2, 1], ceil: false, include: true },
            // Planes of 42 x 52 padded: two to a group of the fused pool's, three groups.
            Case { zx: 128, zy: 0, chw: (5, 40, 50), kernel: [3, 3], strides: [2, 2], dilations: [1, 1], pads: [1, 1, 1, 1], ceil: false, include: false },
            // A window of more taps than 16-bit sums hold (the i32 lanes).
            Case { zx: -7, zy: 5, chw: (2, 14, 15), kernel: [12, 11], strides: [1, 2], dilations: [1, 1], pads: [1, 0, 2, 1], ceil: false, include: false },
        ];
        for Case {
            zx,
            zy,
            chw: (c, h, w),
            kernel,
            strides,
            dilations,
            pads,
            ceil,
            include,
        } in cases
        {
            let attributes = vec![
                ints("kernel_shape", &kernel.map(|k| k as i64)),
                ints("strides", &strides.map(|s| s as i64)),
                ints("dilations", &dilations.map(|d| d as i64)),
                ints("pads", &pads.map(|p| p as i64)),
                int("ceil_mode", ceil as i64),
                int("count_include_pad", include as i64),
            ];
            let bytes = model(zx, zy, (c, h, w), ("AveragePool", attributes));
            let (plain, ours) = plans::<QAvgPool>(&bytes, (c, h, w));
            let axis = |ax: usize| {
                let geometry = (kernel[ax], strides[ax], dilations[ax]);
                onnx_windows([h, w][ax], geometry, (pads[ax], pads[ax + 2]), ceil)
            };
            let (rows, cols) = (axis(0), axis(1));
            let case = format!(
                "{zx} {zy} {h}x{w} {kernel:?} {strides:?} {dilations:?} {pads:?} {ceil} {include}"
            );
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
                    for (ys, ny) in &rows {
                        for (xs, nx) in &cols {
                            let sum: f64 = ys
                                .iter()
                                .flat_map(|y| xs.iter().map(move |x| y * w + x))
                                .map(|i| dequantized_input(plane[i], zx))
                                .sum();
                            let n = if include {
                                ny * nx
                            } else {
                                ys.len() * xs.len()
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

    /// Two branches of one input joined along the channels and pooled, as onnxruntime's
    /// QOperator format with standard operators leaves an Inception-style join: one
    /// quantized (u8, `za`) then dequantized and put through a Relu, the other quantized
    /// with its own scale and zero point (i8) and dequantized alone. The pool is the
    /// concatenation of one fused pool per branch: the quantization of the exact average
    /// of each window's values (the Relu's floor included), within one output step at a
    /// rounding tie, as tract's float plan gives.
    #[test]
    fn pools_of_joined_branches_are_the_branches_pools() {
        use crate::banded::tests::{both_builds, outputs, test_inputs};
        use crate::onnx_build::ints;
        let (c, h, w) = (3, 7, 11);
        let (sa, za, sb, zb, zy) = (0.0061f32, 140, 0.0093f32, -9, 3);
        let init = vec![
            raw("sa", D::Float, &[], &[sa]),
            zero_point("za", za),
            raw("sb", D::Float, &[], &[sb]),
            zero_point("zb", zb),
            raw("sy", D::Float, &[], &[SY]),
            zero_point("zy", zy),
        ];
        let pool = vec![
            ints("kernel_shape", &[3, 3]),
            ints("pads", &[1, 1, 1, 1]),
            int("count_include_pad", 0),
        ];
        let nodes = vec![
            node("QuantizeLinear", &["x", "sa", "za"], "qa", vec![]),
            node("DequantizeLinear", &["qa", "sa", "za"], "da", vec![]),
            node("Relu", &["da"], "a", vec![]),
            node("QuantizeLinear", &["x", "sb", "zb"], "qb", vec![]),
            node("DequantizeLinear", &["qb", "sb", "zb"], "b", vec![]),
            node("Concat", &["a", "b"], "cat", vec![int("axis", 1)]),
            node("AveragePool", &["cat"], "g", pool),
            node("QuantizeLinear", &["g", "sy", "zy"], "gq", vec![]),
            node("DequantizeLinear", &["gq", "sy", "zy"], "y", vec![]),
        ];
        let bytes = model_bytes("joined", nodes, init, ("x", &[1, c, h, w]), "y");
        let (plain, ours) = both_builds(&bytes, (c, h, w));
        let count = |is: &dyn Fn(&TypedNode) -> bool| {
            ours.plan.model().nodes().iter().filter(|n| is(n)).count()
        };
        assert_eq!(count(&|n| n.op_is::<QAvgPool>()), 2, "{:?}", ours.patches);
        assert_eq!(count(&|n| n.op_is::<OptSumPool>()), 0, "{:?}", ours.patches);
        // `v` quantized with (scale, zero point, range) and dequantized, in f64.
        let dequantized = |v: f32, s: f32, z: i32, (lo, hi): (f32, f32)| -> f64 {
            let q = ((v * (1.0f32 / s)).round_ties_even() + z as f32).clamp(lo, hi);
            (q as f64 - z as f64) * s as f64
        };
        // Values in [-1, 1): about half of them below the Relu's floor.
        for data in test_inputs(c * h * w) {
            let data: Vec<f32> = data.iter().map(|v| 2.0 * v - 1.0).collect();
            let ys = |plan| -> Vec<f32> {
                outputs(plan, &[1, c, h, w], &data)
                    .into_iter()
                    .map(f32::from_bits)
                    .collect()
            };
            let (got, tract) = (ys(&ours.plan), ys(&plain.plan));
            assert_eq!(got.len(), 2 * c * h * w);
            for (at, (&v, &t)) in got.iter().zip(&tract).enumerate() {
                let (ch, y, x) = (at / (h * w), at / w % h, at % w);
                let value = |i: usize| {
                    let v = data[(ch % c) * h * w + i];
                    if ch < c {
                        dequantized(v, sa, za, (0.0, 255.0)).max(0.0)
                    } else {
                        dequantized(v, sb, zb, (-128.0, 127.0))
                    }
                };
                let window: Vec<usize> = (y.saturating_sub(1)..(y + 2).min(h))
                    .flat_map(|yy| (x.saturating_sub(1)..(x + 2).min(w)).map(move |xx| yy * w + xx))
                    .collect();
                let sum: f64 = window.iter().map(|&i| value(i)).sum();
                let want = requantized(sum / window.len() as f64, zy);
                let step = SY as f64 * 1.0001;
                for (who, v) in [("QAvgPool", v), ("tract", t)] {
                    assert!(
                        (v as f64 - want).abs() <= step,
                        "{who}, output {at}: {v} against {want}"
                    );
                }
            }
        }
    }
}
