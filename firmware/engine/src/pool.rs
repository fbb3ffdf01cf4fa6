//! Max pooling on the int8 path's u8/i8 tensors.
//!
//! tract 0.23.9's `OptMaxPool` walks a generic patch geometry for every output value; on the
//! default bundle under qemu (cortex-a76) that was 1.5 M of the 9.1 M instructions of an
//! int8 inference, more than the integer matmuls (firmware/bench/INT8-NOTES.md), and on the
//! ResNet-18-style network's padded 3x3 stride-2 stem pool 20.6 M of 439 M (cortex-a72).
//! [`MaxPool8`] does the usual 2x2 stride-2 window with a vertical pass and a pairwise pass
//! on the vector unit, and any other window with plain loops; a padded pool copies each
//! plane into one bordered with the type's lowest value, which no maximum takes. Max is
//! exact, so the output is the same bytes.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{OptMaxPool, PoolSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

use crate::threads;

/// Outputs from which a pool is spread over the pool's threads: about 20 us on the
/// development host (ResNet-18's stem pool has 200 k). Every pool in the tests, so that
/// their thread pools split even small ones.
#[cfg(not(test))]
const PARALLEL_OUTPUTS: usize = 1 << 16;
#[cfg(test)]
const PARALLEL_OUTPUTS: usize = 1;

/// A 2-D NCHW max pool over u8 or i8.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct MaxPool8 {
    pool_spec: PoolSpec,
    kernel: [usize; 2],
    stride: [usize; 2],
    /// Padding (before, after) of the rows and of the columns: padded values take no part
    /// in a window's maximum, as in tract's pool; here they are the type's lowest value.
    pads: [[usize; 2]; 2],
}

impl MaxPool8 {
    fn for_node(op: &OptMaxPool, input: &TypedFact) -> Option<MaxPool8> {
        let spec = &op.pool_spec;
        let shape = input.shape.as_concrete()?;
        let plain = matches!(input.datum_type, DatumType::U8 | DatumType::I8);
        if op.with_index_outputs.is_some()
            || spec.data_format != DataFormat::NCHW
            || spec.kernel_shape.len() != 2
            || shape.len() != 4
            || spec.dilations().iter().any(|d| *d != 1)
            || !plain
        {
            return None;
        }
        let strides = spec.strides();
        let kernel = [spec.kernel_shape[0], spec.kernel_shape[1]];
        let dims = spec.computed_padding(&shape[2..]);
        let mut pads = [[0; 2]; 2];
        for (axis, d) in dims.iter().enumerate() {
            let (size, k, stride) = (shape[2 + axis], kernel[axis], strides[axis]);
            if d.convoluted == 0 {
                return None;
            }
            // The padding after is what the last window reaches past the input (in ceil
            // mode more than tract's `pad_after`); the output must be the padded plane's
            // unpadded pool, and every window must hold a value of the input (the first
            // and last: the others lie between them).
            let reach = (d.convoluted - 1) * stride + k;
            let after = reach.saturating_sub(size + d.pad_before);
            let padded = size + d.pad_before + after;
            let fits = d.pad_before < k
                && (d.convoluted - 1) * stride < size + d.pad_before
                && padded >= k
                && (padded - k) / stride + 1 == d.convoluted;
            if !fits {
                return None;
            }
            pads[axis] = [d.pad_before, after];
        }
        Some(MaxPool8 {
            pool_spec: spec.clone(),
            kernel,
            stride: [strides[0], strides[1]],
            pads,
        })
    }

    /// Every plane of `xs` (H x W each) into `ys` (Ho x Wo each).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn planes<T: PoolByte>(
        &self,
        xs: &[T],
        ys: &mut [T],
        [h, w]: [usize; 2],
        [ho, wo]: [usize; 2],
    ) {
        let mut row = xs[..w].to_vec();
        for (xp, yp) in xs.chunks_exact(h * w).zip(ys.chunks_exact_mut(ho * wo)) {
            self.plane(xp, w, yp, wo, &mut row);
        }
    }

    /// `planes`, compiled for AVX2: the x86_64 baseline (SSE2) has no byte max-and-shuffle
    /// that suits the pairwise pass, and this took a third of the time on the default
    /// bundle (`edgedx-bench profile`). NEON is the aarch64 baseline, so boards need no such
    /// variant.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn planes_avx2<T: PoolByte>(
        &self,
        xs: &[T],
        ys: &mut [T],
        hw: [usize; 2],
        out: [usize; 2],
    ) {
        self.planes(xs, ys, hw, out)
    }

    /// One plane (H x W) into one output plane (Ho x Wo). Inlined into the AVX2 variant on
    /// x86_64.
    #[cfg_attr(target_arch = "x86_64", inline(always))]
    fn plane<T: PoolByte>(&self, x: &[T], w: usize, out: &mut [T], wo: usize, row: &mut [T]) {
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        if [kh, kw, sh, sw] == [2; 4] {
            // The common window: whole blocks on the vector unit where there is one
            // (`PoolByte::max2x2`), the rest here.
            for (oy, o) in out.chunks_exact_mut(wo).enumerate() {
                let top = 2 * oy * w;
                let (r0, r1) = (&x[top..top + w], &x[top + w..top + 2 * w]);
                let done = T::max2x2(r0, r1, o);
                for (ox, v) in o.iter_mut().enumerate().skip(done) {
                    let (a, b) = (
                        r0[2 * ox].max(r0[2 * ox + 1]),
                        r1[2 * ox].max(r1[2 * ox + 1]),
                    );
                    *v = a.max(b);
                }
            }
            return;
        }
        for (oy, o) in out.chunks_exact_mut(wo).enumerate() {
            // Vertical pass over the window's rows, then the horizontal windows.
            let top = oy * sh * w;
            row.copy_from_slice(&x[top..top + w]);
            for dy in 1..kh {
                let next = &x[top + dy * w..top + (dy + 1) * w];
                for (a, b) in row.iter_mut().zip(next) {
                    *a = (*a).max(*b);
                }
            }
            if kw == 2 && sw == 2 {
                for (v, pair) in o.iter_mut().zip(row.chunks_exact(2)) {
                    *v = pair[0].max(pair[1]);
                }
            } else if kw == 3 && sw == 2 {
                // ResNet's stem pool: whole blocks on the vector unit, the rest here.
                let done = T::max3_stride2(row, o);
                for (ox, v) in o.iter_mut().enumerate().skip(done) {
                    *v = row[2 * ox].max(row[2 * ox + 1]).max(row[2 * ox + 2]);
                }
            } else {
                for (ox, v) in o.iter_mut().enumerate() {
                    let window = &row[ox * sw..ox * sw + kw];
                    *v = window.iter().copied().max().unwrap_or(window[0]);
                }
            }
        }
    }

    fn run<T: Datum + PoolByte>(&self, x: &Tensor) -> TractResult<Tensor> {
        let shape = x.shape();
        let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        let [[top, bottom], [left, right]] = self.pads;
        let (hp, wp) = (h + top + bottom, w + left + right);
        ensure!(
            hp >= kh && wp >= kw,
            "MaxPool8: {shape:?} is smaller than the window"
        );
        let (ho, wo) = ((hp - kh) / sh + 1, (wp - kw) / sw + 1);
        let xs = x.try_as_plain_ram()?;
        let xs = xs.as_slice::<T>()?;
        let mut out = unsafe { Tensor::uninitialized::<T>(&[n, c, ho, wo])? };
        if ho * wo == 0 || xs.is_empty() {
            // Nothing to pool.
            return Ok(out);
        }
        {
            let mut view = out.try_as_plain_ram_mut()?;
            let ys = view.as_slice_mut::<T>()?;
            // Planes are independent: a share of them per thread.
            let worth = ys.len() >= PARALLEL_OUTPUTS;
            threads::per_thread(ys, ho * wo, worth, |first, ys| {
                let xs = &xs[first * h * w..][..ys.len() / (ho * wo) * h * w];
                if hp != h || wp != w {
                    // Each plane copied into the middle of a plane whose border holds the
                    // lowest value (written once), then pooled as an unpadded one.
                    let mut plane = vec![T::LOWEST; hp * wp];
                    let mut row = vec![T::LOWEST; wp];
                    for (xp, yp) in xs.chunks_exact(h * w).zip(ys.chunks_exact_mut(ho * wo)) {
                        for (y, src) in xp.chunks_exact(w).enumerate() {
                            plane[(y + top) * wp + left..][..w].copy_from_slice(src);
                        }
                        self.plane(&plane, wp, yp, wo, &mut row);
                    }
                    return Ok(());
                }
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: AVX2 was detected just above.
                    unsafe { self.planes_avx2(xs, ys, [h, w], [ho, wo]) };
                } else {
                    self.planes(xs, ys, [h, w], [ho, wo]);
                }
                // The loop of `planes` written out here: through `planes`, the same code
                // took twice the instructions on cortex-a76 (qemu-prof: 437 k against 202 k
                // per inference of the default bundle).
                #[cfg(not(target_arch = "x86_64"))]
                {
                    let mut row = xs[..w].to_vec();
                    for (xp, yp) in xs.chunks_exact(h * w).zip(ys.chunks_exact_mut(ho * wo)) {
                        self.plane(xp, w, yp, wo, &mut row);
                    }
                }
                Ok(())
            })?;
        }
        Ok(out)
    }
}

/// u8 or i8, with the 2x2 stride-2 window's vector form.
trait PoolByte: Copy + Ord {
    /// The type's lowest value: the padding, which no window's maximum takes.
    const LOWEST: Self;

    /// The first outputs of a 2x2 stride-2 output row `o` from input rows `r0` and `r1`,
    /// in whole blocks of 16 (on aarch64: two LD2 and three UMAX or SMAX per block; the
    /// compiler's own code for this loop varied between builds, from 202 k to 413 k
    /// instructions per inference of the default bundle on cortex-a72). Returns how many
    /// it wrote.
    fn max2x2(r0: &[Self], r1: &[Self], o: &mut [Self]) -> usize;

    /// The first outputs of a row's 3-wide stride-2 windows, `o[i]` the maximum of
    /// `row[2i..2i + 3]`, in whole blocks of 16 (on aarch64: an LD2 at the window starts
    /// and one two further, two UMAX or SMAX). Returns how many it wrote.
    fn max3_stride2(row: &[Self], o: &mut [Self]) -> usize;
}

/// Blocks of 16 outputs that the rows hold whole (32 input bytes each).
#[cfg(target_arch = "aarch64")]
fn blocks2x2<T>(r0: &[T], r1: &[T], o: &[T]) -> usize {
    o.len().min(r0.len() / 2).min(r1.len() / 2) / 16
}

/// `PoolByte` for one byte type, with its NEON loads and max.
macro_rules! pool_byte {
    ($t:ty, $ld2:ident, $max:ident, $st:ident) => {
        impl PoolByte for $t {
            const LOWEST: $t = <$t>::MIN;

            fn max2x2(r0: &[$t], r1: &[$t], o: &mut [$t]) -> usize {
                #[cfg(target_arch = "aarch64")]
                {
                    use std::arch::aarch64::*;
                    let blocks = blocks2x2(r0, r1, o);
                    for b in 0..blocks {
                        // SAFETY: NEON is part of aarch64; block b reads 32 bytes of each
                        // row from 32 b and writes 16 from 16 b, within the lengths
                        // `blocks2x2` checked.
                        unsafe {
                            let x = $ld2(r0.as_ptr().add(32 * b));
                            let y = $ld2(r1.as_ptr().add(32 * b));
                            let m = $max($max(x.0, x.1), $max(y.0, y.1));
                            $st(o.as_mut_ptr().add(16 * b), m);
                        }
                    }
                    blocks * 16
                }
                #[cfg(not(target_arch = "aarch64"))]
                {
                    let _ = (r0, r1, o);
                    0
                }
            }

            fn max3_stride2(row: &[$t], o: &mut [$t]) -> usize {
                #[cfg(target_arch = "aarch64")]
                {
                    use std::arch::aarch64::*;
                    // Block b reads row[32 b..32 b + 34].
                    let blocks = (o.len() / 16).min(row.len().saturating_sub(2) / 32);
                    for b in 0..blocks {
                        // SAFETY: NEON is part of aarch64; block b reads 34 bytes of the
                        // row from 32 b and writes 16 from 16 b, within the lengths above.
                        unsafe {
                            let x = $ld2(row.as_ptr().add(32 * b));
                            let next = $ld2(row.as_ptr().add(32 * b + 2));
                            $st(o.as_mut_ptr().add(16 * b), $max($max(x.0, x.1), next.0));
                        }
                    }
                    blocks * 16
                }
                #[cfg(not(target_arch = "aarch64"))]
                {
                    let _ = (row, o);
                    0
                }
            }
        }
    };
}

pool_byte!(u8, vld2q_u8, vmaxq_u8, vst1q_u8);
pool_byte!(i8, vld2q_s8, vmaxq_s8, vst1q_s8);

impl Op for MaxPool8 {
    fn name(&self) -> StaticName {
        "MaxPool8".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "window {:?}, stride {:?}",
            self.kernel, self.stride
        )])
    }

    tract_onnx::tract_core::op_as_typed_op!();
}

impl EvalOp for MaxPool8 {
    tract_onnx::tract_core::op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        ensure!(x.rank() == 4, "MaxPool8: input of rank {}", x.rank());
        let out = match x.datum_type() {
            DatumType::U8 => self.run::<u8>(x)?,
            DatumType::I8 => self.run::<i8>(x)?,
            other => bail!("MaxPool8: {other:?} input"),
        };
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for MaxPool8 {
    tract_onnx::tract_core::as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.pool_spec.output_facts(inputs)
    }
}

/// Replaces every `OptMaxPool` that [`MaxPool8`] handles and returns how many.
pub(crate) fn speed_up_max_pools(model: &mut TypedModel) -> TractResult<usize> {
    crate::rewrite::replace_nodes(model, |model, node| {
        let Some(op) = node.op_as::<OptMaxPool>() else {
            return Ok(None);
        };
        let input = model.outlet_fact(node.inputs[0])?;
        let Some(new) = MaxPool8::for_node(op, input) else {
            return Ok(None);
        };
        let same_output = new.output_facts(&[input])?[0] == node.outputs[0].fact;
        Ok(same_output.then_some(new))
    })
}

/// Moves every f32 max pool in front of the float chain it pools when that chain is
/// element-wise from a dequantization: `MaxPool(f(DQ(x)))` becomes `f(DQ(MaxPool8(x)))`
/// when `f` is non-decreasing, else `f(DQ(T'(MaxPool8(T(x)))))` with `T` each byte's rank
/// in the order of its value through `f` and `T'` a byte of each rank (qtable.rs
/// `pooled_chain_into`); returns how many.
///
/// The outputs are the same values; the pool then runs on bytes and the chain on a quarter
/// of the values (a 2x2 pool). PaddleOCR's last hard-swish divides by 6 in float and pools
/// that (then quantizes it in the QDQ file; leaves it in float in the QOperator ones): tract's
/// f32 pool was a tenth of its int8 instructions on cortex-a76.
pub(crate) fn pool_before_element_wise_chains(model: &mut TypedModel) -> TractResult<usize> {
    let mut moved = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(pool) = node.op_as::<OptMaxPool>() else {
            continue;
        };
        if node.inputs.len() != 1
            || node.outputs.len() != 1
            || model.outlet_fact(node.inputs[0])?.datum_type != DatumType::F32
        {
            continue;
        }
        // The chain is run on the 256 byte values to check it: a chain that does not run
        // so is left in front of the pool (an optimisation must not fail a load).
        let Ok(Some((x, chain))) = crate::qtable::pooled_chain_into(model, node.inputs[0]) else {
            continue;
        };
        // A pool that only a quantization reads takes the quantized bytes instead
        // (`quantize_before_max_pools`): no table into ranks and back.
        let quantized_after = model
            .single_succ(id)?
            .is_some_and(|n| n.op_is::<crate::quantize::Quantize8>());
        if chain.ranked() && quantized_after {
            continue;
        }
        let x_fact = model.outlet_fact(x)?;
        let pooled = chain
            .pooled_type(x_fact.datum_type)
            .fact(x_fact.shape.clone());
        let Some(new_pool) = MaxPool8::for_node(pool, &pooled) else {
            continue;
        };
        let name = node.name.clone();
        let wiring = |p: &mut TypedModelPatch, taps: &[OutletId]| {
            let bytes = chain.before_pool(p, taps[0], &name)?;
            let pooled = p.wire_node(format!("{name}.bytes"), new_pool.clone(), &[bytes])?[0];
            Ok(tvec![chain.after_pool(model, p, pooled, ".after_pool")?])
        };
        // A step that cannot take the pooled shape, or a chain whose output would not be
        // the pool's, leaves the pool where it was.
        let Ok(patch) = TypedModelPatch::rewire(model, &[x], &[OutletId::new(id, 0)], &wiring)
        else {
            continue;
        };
        patch.apply(model)?;
        moved += 1;
    }
    Ok(moved)
}

/// Moves the quantization in front of every f32 max pool that only it reads:
/// `Quantize8(OptMaxPool(y))` becomes `MaxPool8(Quantize8(y))`; returns how many.
///
/// For the f32 pools `pool_before_element_wise_chains` leaves (its input not an
/// element-wise chain from a dequantization, or a chain that is not non-decreasing, which
/// would pool on ranks through two tables) but a quantization follows. Quantization is
/// non-decreasing, so the quantized maximum of a window is the maximum of its quantized
/// values: the same bytes.
/// A chain before the pool then ends in its own quantization and becomes a table
/// (qtable.rs), and the pool runs on bytes.
pub(crate) fn quantize_before_max_pools(model: &mut TypedModel) -> TractResult<usize> {
    let outputs = model.output_outlets()?.to_vec();
    let mut moved = 0;
    for id in model.eval_order()? {
        let q_node = model.node(id);
        let Some(quantize) = q_node.op_as::<crate::quantize::Quantize8>() else {
            continue;
        };
        let pool_node = model.node(q_node.inputs[0].node);
        let Some(pool) = pool_node.op_as::<OptMaxPool>() else {
            continue;
        };
        let y = pool_node.inputs[0];
        let y_fact = model.outlet_fact(y)?;
        let pool_out = OutletId::new(pool_node.id, 0);
        if y_fact.datum_type != DatumType::F32
            || pool_node.outputs.len() != 1
            || pool_node.outputs[0].successors.len() != 1
            || outputs.contains(&pool_out)
        {
            continue;
        }
        let quantized = quantize.params().2.fact(y_fact.shape.clone());
        let Some(new_pool) = MaxPool8::for_node(pool, &quantized) else {
            continue;
        };
        // The pool must give the quantization's shape and type.
        if new_pool.output_facts(&[&quantized])?[0] != q_node.outputs[0].fact {
            continue;
        }
        let (q_name, p_name) = (format!("{}.quantized", pool_node.name), q_node.name.clone());
        let quantize = quantize.clone();
        let wiring = |p: &mut TypedModelPatch, taps: &[OutletId]| {
            let q = p.wire_node(&q_name, quantize.clone(), taps)?;
            p.wire_node(format!("{p_name}.pool"), new_pool.clone(), &q)
        };
        // As in `pool_before_element_wise_chains`: a patch tract refuses leaves the pool as it is.
        let Ok(patch) = TypedModelPatch::rewire(model, &[y], &[OutletId::new(id, 0)], &wiring)
        else {
            continue;
        };
        patch.apply(model)?;
        moved += 1;
    }
    Ok(moved)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cnn::{MaxPool, PaddingSpec};

    /// A tensor of `dt` (u8, or i8 from the same bits) holding `bytes`.
    pub(crate) fn byte_tensor(shape: &[usize], dt: DatumType, bytes: &[u8]) -> Tensor {
        match dt {
            DatumType::U8 => Tensor::from_shape(shape, bytes).unwrap(),
            _ => {
                let signed: Vec<i8> = bytes.iter().map(|b| *b as i8).collect();
                Tensor::from_shape(shape, &signed).unwrap()
            }
        }
    }

    /// The shape and bytes of the one output of `model` run on `x`.
    pub(crate) fn run_bytes(model: TypedModel, x: &Tensor) -> (Vec<usize>, Vec<u8>) {
        let out = model
            .into_runnable()
            .unwrap()
            .run(tvec!(x.clone().into_tvalue()))
            .unwrap();
        let t = out[0].clone().into_tensor();
        (t.shape().to_vec(), t.as_bytes().to_vec())
    }

    /// tract's own plan for a max pool, and the same plan with MaxPool8 swapped in.
    fn plans(
        shape: [usize; 4],
        dt: DatumType,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: PaddingSpec,
    ) -> (TypedModel, TypedModel, usize) {
        let mut m = TypedModel::default();
        let x = m.add_source("x", dt.fact(shape)).unwrap();
        let op = MaxPool {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: kernel[..].into(),
                padding,
                dilations: None,
                strides: Some(stride[..].into()),
                input_channels: shape[1],
                output_channels: shape[1],
            },
            with_index_outputs: None,
        };
        let y = m.wire_node("pool", op, &[x]).unwrap()[0];
        m.select_output_outlets(&[y]).unwrap();
        let theirs = m.into_optimized().unwrap();
        assert!(theirs.nodes().iter().any(|n| n.op_is::<OptMaxPool>()));
        let mut ours = theirs.clone();
        let n = speed_up_max_pools(&mut ours).unwrap();
        (theirs, ours, n)
    }

    /// Windows of 2x2 to 5x5, unequal strides, odd widths, and padding as ResNet's stem
    /// pool has it (3x3, stride 2, 1 on every side), asymmetric, SAME and in ceil mode; u8
    /// and i8 (whose border windows of negative values show a wrong padding value): the
    /// bytes and shapes of tract's pool, on one thread and spread over three.
    #[test]
    fn pools_exactly_like_tract() {
        use tract_onnx::tract_core::ops::cnn::PaddingSpec as P;
        let pads = |b: [usize; 2], a: [usize; 2]| P::Explicit(b[..].into(), a[..].into());
        let cases = [
            ([1, 16, 64, 64], [2, 2], [2, 2], P::Valid),
            ([2, 3, 9, 7], [2, 2], [2, 2], P::Valid),
            // 18 outputs per row from an odd width: one NEON block and a tail.
            ([1, 2, 6, 37], [2, 2], [2, 2], P::Valid),
            ([1, 4, 10, 11], [3, 3], [2, 2], P::Valid),
            ([1, 2, 8, 9], [3, 2], [1, 3], P::Valid),
            ([3, 1, 5, 5], [5, 5], [1, 1], P::Valid),
            ([1, 8, 112, 112], [3, 3], [2, 2], pads([1, 1], [1, 1])),
            ([1, 3, 9, 14], [3, 3], [2, 2], pads([1, 1], [1, 1])),
            ([1, 3, 7, 10], [3, 2], [2, 1], pads([0, 1], [2, 0])),
            ([2, 2, 10, 9], [2, 2], [2, 2], P::SameUpper),
            ([1, 2, 11, 13], [3, 3], [1, 1], P::SameLower),
            (
                [1, 3, 10, 11],
                [3, 3],
                [2, 2],
                P::ExplicitOnnxPool([1, 0][..].into(), [0, 1][..].into(), true),
            ),
        ];
        let mut seed = 0x1234_5678_u32;
        for dt in [DatumType::U8, DatumType::I8] {
            for (shape, kernel, stride, padding) in cases.clone() {
                let (theirs, ours, n) = plans(shape, dt, kernel, stride, padding.clone());
                assert_eq!(n, 1, "{shape:?} {kernel:?} {stride:?} {padding:?}");
                let len = shape.iter().product::<usize>();
                let bytes = crate::banded::tests::random_bytes(len, &mut seed);
                let x = byte_tensor(&shape, dt, &bytes);
                let want = run_bytes(theirs, &x);
                let case = format!("{dt:?} {shape:?} {kernel:?} {stride:?} {padding:?}");
                assert_eq!(want, run_bytes(ours.clone(), &x), "{case}");
                // Planes spread over three threads.
                let pool = crate::threads::executor_for(3).unwrap();
                let threaded = crate::threads::scope(pool, || run_bytes(ours, &x));
                assert_eq!(want, threaded, "{case}, 3 threads");
            }
        }
    }

    #[test]
    fn float_pools_are_left_to_tract() {
        let (_, _, n) = plans(
            [1, 2, 8, 8],
            DatumType::F32,
            [2, 2],
            [2, 2],
            PaddingSpec::Valid,
        );
        assert_eq!(n, 0);
    }
}
