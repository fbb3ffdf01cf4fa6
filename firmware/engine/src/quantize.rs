//! Quantizing the f32 input onto the int8 path.
//!
//! tract 0.23.9's `QuantizeLinearU8`/`QuantizeLinearI8` round each value with a branch on
//! its sign, one element at a time: 33 µs of the default bundle's 0.44 ms int8 inference for
//! a 128x128 image (`edgedx-bench profile`). [`Quantize8`] computes the same bytes in a loop
//! without branches that the compiler vectorises: NEON on the boards.
//!
//! tract computes `clamp(round_ties_to_even(x * scale) as i32 + zero_point)` where `scale`
//! is already the reciprocal of the ONNX scale. Here NaN becomes 0 (tract's `NaN as i32`),
//! `x * scale` is clamped to ±2^22, which changes nothing after the final clamp since every
//! value beyond it saturates anyway, and within ±2^22 adding and subtracting 1.5 * 2^23
//! rounds to the nearest integer, ties to even, exactly as tract's rounding does.
//!
//! One difference, outside anything an image gives: where `x * scale` is within
//! `zero_point` of ±2^31, tract's `+ zero_point` overflows i32 (it wraps in a release build,
//! giving the other end of the range, and panics in a debug one). Here such values saturate,
//! as ONNX QuantizeLinear specifies.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::quant::{QuantizeLinearI8, QuantizeLinearU8};

/// f32 to u8 or i8: `clamp(round_ties_even(x * scale) + zero_point)`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Quantize8 {
    /// The multiplier tract stores: 1 / the ONNX scale.
    scale: f32,
    zero_point: i32,
    to: DatumType,
}

impl Eq for Quantize8 {}

/// Magnitudes past this saturate u8 and i8 whatever the zero point.
const LIMIT: f32 = (1 << 22) as f32;
/// Adding then subtracting this rounds |v| <= 2^22 to an integer, ties to even.
const ROUNDER: f32 = 1.5 * (1 << 23) as f32;

/// One value, as tract's quantize computes it (also qbinary.rs's last step).
#[inline(always)]
pub(crate) fn quantize(x: f32, scale: f32, zero_point: i32, lo: i32, hi: i32) -> i32 {
    let v = x * scale;
    let v = if v.is_nan() {
        0.0
    } else {
        v.clamp(-LIMIT, LIMIT)
    };
    let rounded = (v + ROUNDER) - ROUNDER;
    // SAFETY: `rounded` is an integer within ±2^22 (NaN was replaced, the rest clamped), so
    // it converts exactly. `as i32` would also guard against NaN and overflow, a guard the
    // compiler does not vectorise.
    let whole: i32 = unsafe { rounded.to_int_unchecked() };
    (whole + zero_point).clamp(lo, hi)
}

/// An i32 already clamped to the type's range, as that type.
pub(crate) trait Narrow: Copy {
    /// u8 (else i8): the one-byte type's range.
    const UNSIGNED: bool;
    fn narrow(v: i32) -> Self;
}

impl Narrow for u8 {
    const UNSIGNED: bool = true;
    #[inline(always)]
    fn narrow(v: i32) -> u8 {
        v as u8
    }
}

impl Narrow for i8 {
    const UNSIGNED: bool = false;
    #[inline(always)]
    fn narrow(v: i32) -> i8 {
        v as i8
    }
}

#[inline(always)]
fn quantize_all<T: Narrow>(xs: &[f32], ys: &mut [T], scale: f32, zp: i32, [lo, hi]: [i32; 2]) {
    for (y, x) in ys.iter_mut().zip(xs) {
        *y = T::narrow(quantize(*x, scale, zp, lo, hi));
    }
}

/// `quantize_all` compiled for AVX2, which the x86_64 baseline lacks (boards have NEON in
/// theirs).
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_all_avx2<T: Narrow>(
    xs: &[f32],
    ys: &mut [T],
    scale: f32,
    zp: i32,
    range: [i32; 2],
) {
    quantize_all(xs, ys, scale, zp, range)
}

/// `ys[i] = quantize(xs[i], ...)` for the whole slices (of one length), on the vector
/// unit: NEON on aarch64 (`neon::quantize`, then the last values one by one), AVX2 where
/// the host has it, else the loop the compiler vectorises for the baseline.
pub(crate) fn quantize_slice<T: Narrow>(
    xs: &[f32],
    ys: &mut [T],
    scale: f32,
    zp: i32,
    range: [i32; 2],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected just above.
        unsafe { quantize_all_avx2(xs, ys, scale, zp, range) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    let done = {
        let n = xs.len().min(ys.len());
        // SAFETY: NEON is part of aarch64; T is one byte (u8 or i8, `Narrow`), and both
        // slices hold `n` values.
        unsafe {
            neon::quantize(
                &xs[..n],
                ys.as_mut_ptr() as *mut u8,
                scale,
                zp,
                range,
                T::UNSIGNED,
            )
        }
    };
    #[cfg(not(target_arch = "aarch64"))]
    let done = 0;
    quantize_all(&xs[done..], &mut ys[done..], scale, zp, range);
}

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon {
    use std::arch::aarch64::*;

    /// Sixteen i32 lanes to the bytes of the output type (u8 when `unsigned`, else i8),
    /// clamped to `[lo, hi]`: narrowing with saturation (SQXTN to i16, then SQXTUN to u8
    /// or SQXTN to i8), then UMIN/UMAX or SMIN/SMAX on the 16 bytes. Saturation is
    /// monotone and keeps the values inside the type's range, so for bounds inside that
    /// range this is `clamp(v, lo, hi)` for every i32 `v`. Shared by `quantize` here and
    /// the requantisation (epilogue.rs).
    #[derive(Clone, Copy)]
    pub(crate) struct ByteClamp {
        unsigned: bool,
        ulo: uint8x16_t,
        uhi: uint8x16_t,
        slo: int8x16_t,
        shi: int8x16_t,
    }

    impl ByteClamp {
        /// `[lo, hi]` must lie within the output type's range.
        pub(crate) fn new([lo, hi]: [i32; 2], unsigned: bool) -> ByteClamp {
            // SAFETY: NEON is part of aarch64; register operations only.
            unsafe {
                ByteClamp {
                    unsigned,
                    ulo: vdupq_n_u8(lo as u8),
                    uhi: vdupq_n_u8(hi as u8),
                    slo: vdupq_n_s8(lo as i8),
                    shi: vdupq_n_s8(hi as i8),
                }
            }
        }

        #[inline(always)]
        pub(crate) fn bytes(&self, q: [int32x4_t; 4]) -> uint8x16_t {
            // SAFETY: as in `new`.
            let (low, high) = unsafe {
                (
                    vqmovn_high_s32(vqmovn_s32(q[0]), q[1]),
                    vqmovn_high_s32(vqmovn_s32(q[2]), q[3]),
                )
            };
            if self.unsigned {
                self.words::<true, true>(low, high)
            } else {
                self.words::<false, true>(low, high)
            }
        }

        /// The bounds as 16 bytes of the output type each (u8 when `UNSIGNED`, else i8
        /// reinterpreted as u8): `[lo, hi]`.
        #[inline(always)]
        pub(crate) fn bound_bytes<const UNSIGNED: bool>(&self) -> [uint8x16_t; 2] {
            if UNSIGNED {
                [self.ulo, self.uhi]
            } else {
                // SAFETY: as in `new`.
                unsafe { [self.slo, self.shi].map(|v| vreinterpretq_u8_s8(v)) }
            }
        }

        /// The 16 lanes of `low` and `high` as bytes: narrowed with saturation to u8
        /// (`UNSIGNED`, which must be the clamp's type) or i8, then clamped when `CLAMP`
        /// (bounds that are the whole type need no clamp).
        #[inline(always)]
        pub(crate) fn words<const UNSIGNED: bool, const CLAMP: bool>(
            &self,
            low: int16x8_t,
            high: int16x8_t,
        ) -> uint8x16_t {
            // SAFETY: as in `new`.
            unsafe {
                if UNSIGNED {
                    let u = vqmovun_high_s16(vqmovun_s16(low), high);
                    if CLAMP {
                        vminq_u8(vmaxq_u8(u, self.ulo), self.uhi)
                    } else {
                        u
                    }
                } else {
                    let i = vqmovn_high_s16(vqmovn_s16(low), high);
                    vreinterpretq_u8_s8(if CLAMP {
                        vminq_s8(vmaxq_s8(i, self.slo), self.shi)
                    } else {
                        i
                    })
                }
            }
        }
    }

    /// Whole blocks of 16 values of `quantize_slice`; returns how many it wrote.
    ///
    /// FCVTNS rounds half to even, turns NaN into 0 and saturates at the ends of i32;
    /// SQADD adds the zero point with saturation; [`ByteClamp`] narrows and clamps. For
    /// |x · scale| within 2^22 these are `quantize`'s steps; beyond, both saturate to the
    /// same end of the range.
    ///
    /// # Safety
    /// `ys` has room for `xs.len()` bytes; `range` lies within the type's range.
    pub(super) unsafe fn quantize(
        xs: &[f32],
        ys: *mut u8,
        scale: f32,
        zp: i32,
        range: [i32; 2],
        unsigned: bool,
    ) -> usize {
        let Some(q) = Quantizer::new(scale, zp, range, unsigned) else {
            return 0;
        };
        let n = xs.len() / 16 * 16;
        // SAFETY: reads `xs[b..b + 16]` and writes `ys[b..b + 16]` for b < n.
        in_form!(q, |bytes| unsafe {
            for b in (0..n).step_by(16) {
                let x = vld1q_f32_x4(xs.as_ptr().add(b));
                vst1q_u8(ys.add(b), bytes!([x.0, x.1, x.2, x.3]));
            }
        });
        n
    }

    /// `quantize`'s steps for 16 f32 lanes at a time (also kernels/qbinary.rs's last
    /// step), for a zero point within ±255 (a byte's, or a u8's less 128).
    ///
    /// The rounded products are narrowed to 16 bits with saturation and the zero point
    /// added there, with saturation: a product beyond ±32767 stays at least 32512 from zero
    /// after the add, past the byte range on the side where its 32-bit sum was, and the
    /// narrowing to bytes saturates both to the same end. Four adds fewer per 16 values
    /// than in 32 bits, and the clamp only when the range is narrower than the type.
    #[derive(Clone, Copy)]
    pub(crate) struct Quantizer {
        scale: float32x4_t,
        zero: int16x8_t,
        /// Whether the range is narrower than the output type.
        clamps: bool,
        clamp: ByteClamp,
    }

    impl Quantizer {
        /// `range` must lie within the output type's range (u8 when `unsigned`, else i8);
        /// `None` for a zero point beyond ±255.
        pub(crate) fn new(
            scale: f32,
            zp: i32,
            range: [i32; 2],
            unsigned: bool,
        ) -> Option<Quantizer> {
            let whole = if unsigned { [0, 255] } else { [-128, 127] };
            let zero = i16::try_from(zp).ok().filter(|z| z.unsigned_abs() <= 255)?;
            // SAFETY: NEON is part of aarch64; register operations only.
            unsafe {
                Some(Quantizer {
                    scale: vdupq_n_f32(scale),
                    zero: vdupq_n_s16(zero),
                    clamps: range != whole,
                    clamp: ByteClamp::new(range, unsigned),
                })
            }
        }

        /// The 16 values of `v` quantized to bytes of the output type (u8 when `UNSIGNED`),
        /// clamped when `CLAMP`: both must be the quantizer's ([`Quantizer::form`]), which a
        /// loop chooses once (left to the compiler, the choice per block became both forms
        /// and a select, three instructions a block more on cortex-a76).
        #[inline(always)]
        pub(crate) fn bytes<const UNSIGNED: bool, const CLAMP: bool>(
            &self,
            v: [float32x4_t; 4],
        ) -> uint8x16_t {
            debug_assert_eq!((UNSIGNED, CLAMP), self.form());
            // SAFETY: as in `new`.
            unsafe {
                let q = v.map(|x| vcvtnq_s32_f32(vmulq_f32(x, self.scale)));
                let words = |a, b| vqaddq_s16(vqmovn_high_s32(vqmovn_s32(a), b), self.zero);
                let (low, high) = (words(q[0], q[1]), words(q[2], q[3]));
                self.clamp.words::<UNSIGNED, CLAMP>(low, high)
            }
        }

        /// (whether the output type is u8, whether the range is narrower than the type):
        /// `bytes`' `UNSIGNED` and `CLAMP`.
        pub(crate) fn form(&self) -> (bool, bool) {
            (self.clamp.unsigned, self.clamps)
        }
    }

    /// Calls `$body` with `$q` in its form, chosen once: `$bytes!(v)` in the body is
    /// `$q.bytes::<UNSIGNED, CLAMP>(v)` of that form.
    macro_rules! in_form {
        ($q:expr, |$bytes:ident| $body:expr) => {
            match $q.form() {
                (true, true) => {
                    macro_rules! $bytes {
                        ($v:expr) => {
                            $q.bytes::<true, true>($v)
                        };
                    }
                    $body
                }
                (true, false) => {
                    macro_rules! $bytes {
                        ($v:expr) => {
                            $q.bytes::<true, false>($v)
                        };
                    }
                    $body
                }
                (false, true) => {
                    macro_rules! $bytes {
                        ($v:expr) => {
                            $q.bytes::<false, true>($v)
                        };
                    }
                    $body
                }
                (false, false) => {
                    macro_rules! $bytes {
                        ($v:expr) => {
                            $q.bytes::<false, false>($v)
                        };
                    }
                    $body
                }
            }
        };
    }
    pub(crate) use in_form;
}

impl Quantize8 {
    /// This quantization shifted to i8 when it gives u8 (rewrite.rs `fold_shifts`):
    /// `clamp(v + z, 0, 255) - 128 = clamp(v + z - 128, -128, 127)`.
    pub(crate) fn shifted(&self) -> Option<Quantize8> {
        (self.to == DatumType::U8).then_some(Quantize8 {
            zero_point: self.zero_point - 128,
            to: DatumType::I8,
            ..*self
        })
    }

    /// (the multiplier, the zero point, the output type).
    pub(crate) fn params(&self) -> (f32, i32, DatumType) {
        (self.scale, self.zero_point, self.to)
    }

    fn for_node(node: &TypedNode) -> Option<Quantize8> {
        let op = node.op_as::<ElementWiseOp>()?;
        if let Some(q) = op.0.downcast_ref::<QuantizeLinearU8>() {
            return Some(Quantize8 {
                scale: q.scale,
                zero_point: q.zero_point as i32,
                to: DatumType::U8,
            });
        }
        let q = op.0.downcast_ref::<QuantizeLinearI8>()?;
        Some(Quantize8 {
            scale: q.scale,
            zero_point: q.zero_point as i32,
            to: DatumType::I8,
        })
    }

    fn run<T: Datum + Narrow>(
        &self,
        xs: &[f32],
        shape: &[usize],
        range: [i32; 2],
    ) -> TractResult<Tensor> {
        // SAFETY: every element is written below before the tensor is read.
        let mut out = unsafe { Tensor::uninitialized::<T>(shape)? };
        {
            let mut view = out.try_as_plain_ram_mut()?;
            let ys = view.as_slice_mut::<T>()?;
            ensure!(
                ys.len() == xs.len(),
                "Quantize8: {} values for {shape:?}",
                xs.len()
            );
            quantize_slice(xs, ys, self.scale, self.zero_point, range);
        }
        Ok(out)
    }
}

impl Op for Quantize8 {
    fn name(&self) -> StaticName {
        "Quantize8".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "to {:?}, x * {} + {}",
            self.to, self.scale, self.zero_point
        )])
    }

    tract_onnx::tract_core::op_as_typed_op!();
}

impl EvalOp for Quantize8 {
    tract_onnx::tract_core::op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        ensure!(
            x.datum_type() == DatumType::F32,
            "Quantize8: {:?} input",
            x.datum_type()
        );
        let plain = x.try_as_plain_ram()?;
        let xs = plain.as_slice::<f32>()?;
        let out = match self.to {
            DatumType::U8 => self.run::<u8>(xs, x.shape(), [0, 255])?,
            _ => self.run::<i8>(xs, x.shape(), [-128, 127])?,
        };
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for Quantize8 {
    tract_onnx::tract_core::as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.to.fact(inputs[0].shape.clone())))
    }
}

/// Replaces every f32 `QuantizeLinearU8`/`QuantizeLinearI8` whose output fact `Quantize8`
/// reproduces, and returns how many.
pub(crate) fn speed_up_quantize(model: &mut TypedModel) -> TractResult<usize> {
    crate::rewrite::replace_nodes(model, |model, node| {
        let Some(new) = Quantize8::for_node(node) else {
            return Ok(None);
        };
        let input = model.outlet_fact(node.inputs[0])?;
        if input.datum_type != DatumType::F32 {
            return Ok(None);
        }
        let same_output = new.output_facts(&[input])?[0] == node.outputs[0].fact;
        Ok(same_output.then_some(new))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::quant::{quantize_linear_f32_i8, quantize_linear_f32_u8};

    /// Every value class tract's rounding distinguishes: ties either side of zero, the
    /// 2^22/2^23 boundaries, saturation, infinities, NaN, signed zeros, subnormals.
    fn values() -> Vec<f32> {
        let mut v = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            -2.5,
            127.5,
            128.5,
            -128.5,
            254.5,
            255.5,
            0.49999997,
            -0.49999997,
            f32::MIN_POSITIVE / 4.0,
            4194303.5,
            4194304.0,
            4194305.0,
            8388607.5,
            8388608.0,
            -8388609.0,
            1e30,
            -1e30,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
        ];
        let mut s = 0x9e3779b9u32;
        for _ in 0..20_000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            // Half-integers and arbitrary values across and beyond the u8/i8 range.
            v.push((s % 2000) as f32 / 2.0 - 500.0);
            v.push(f32::from_bits(s));
        }
        v
    }

    /// The vector forms (NEON on aarch64, AVX2 on the host) give `quantize`'s value for
    /// every value class, every zero point, narrowed bounds and slice lengths that leave a
    /// tail.
    #[test]
    fn slices_quantize_like_each_value() {
        let xs = values();
        for scale in [1.0f32, 255.0, 1.0 / 0.003_921_569, -2.0] {
            for (zp, range) in [(0, [0, 255]), (128, [0, 255]), (255, [3, 250])] {
                for len in [xs.len(), 15, 33] {
                    let mut ys = vec![0u8; len];
                    quantize_slice(&xs[..len], &mut ys, scale, zp, range);
                    for (x, y) in xs.iter().zip(&ys) {
                        let want = quantize(*x, scale, zp, range[0], range[1]) as u8;
                        assert_eq!(*y, want, "u8 {x} * {scale} + {zp} in {range:?}");
                    }
                }
            }
            for (zp, range) in [(-128, [-128, 127]), (5, [-128, 127]), (127, [-20, 91])] {
                let mut ys = vec![0i8; xs.len()];
                quantize_slice(&xs, &mut ys, scale, zp, range);
                for (x, y) in xs.iter().zip(&ys) {
                    let want = quantize(*x, scale, zp, range[0], range[1]) as i8;
                    assert_eq!(*y, want, "i8 {x} * {scale} + {zp} in {range:?}");
                }
            }
        }
    }

    /// Whether tract's `round(x * scale) as i32 + zero_point` stays within i32.
    fn tract_defined(x: f32, scale: f32, zp: i32) -> bool {
        let v = x * scale;
        v.is_nan() || (v.abs() < 2.0e9 && zp.abs() <= 255)
    }

    #[test]
    fn quantizes_every_value_like_tract() {
        let mut saturated = 0;
        for scale in [1.0f32, 0.5, 255.0, 1.0 / 0.003_921_569, 3.7, -2.0] {
            for zp in [0, 1, 17, 128, 255] {
                for &x in &values() {
                    let ours = quantize(x, scale, zp, 0, 255) as u8;
                    if tract_defined(x, scale, zp) {
                        let theirs = quantize_linear_f32_u8(x, scale, zp);
                        assert_eq!(ours, theirs, "u8 {x} * {scale} + {zp}");
                    } else {
                        // Where tract's i32 sum overflows: saturated, as ONNX specifies.
                        let end = if x * scale > 0.0 { 255 } else { 0 };
                        assert_eq!(ours, end, "u8 {x} * {scale}");
                        saturated += 1;
                    }
                }
            }
            for zp in [-128, -3, 0, 5, 127] {
                for &x in &values() {
                    let ours = quantize(x, scale, zp, -128, 127) as i8;
                    if tract_defined(x, scale, zp) {
                        let theirs = quantize_linear_f32_i8(x, scale, zp);
                        assert_eq!(ours, theirs, "i8 {x} * {scale} + {zp}");
                    } else {
                        let end = if x * scale > 0.0 { 127 } else { -128 };
                        assert_eq!(ours, end, "i8 {x} * {scale}");
                    }
                }
            }
        }
        assert!(saturated > 0);
    }

    #[test]
    fn replaces_tracts_op_in_a_plan_with_the_same_bytes() {
        for (to, zp) in [(DatumType::U8, 3i32), (DatumType::I8, -5)] {
            let mut m = TypedModel::default();
            let x = m.add_source("x", f32::fact([2, 3, 5, 7])).unwrap();
            let op: Box<dyn ElementWiseMiniOp> = match to {
                DatumType::U8 => Box::new(QuantizeLinearU8 {
                    scale: 1.0 / 0.02,
                    zero_point: zp as u8,
                }),
                _ => Box::new(QuantizeLinearI8 {
                    scale: 1.0 / 0.02,
                    zero_point: zp as i8,
                }),
            };
            let y = m.wire_node("q", ElementWiseOp(op, None), &[x]).unwrap()[0];
            m.select_output_outlets(&[y]).unwrap();
            let theirs = m.into_optimized().unwrap();
            let mut ours = theirs.clone();
            assert_eq!(speed_up_quantize(&mut ours).unwrap(), 1);
            assert!(ours.nodes().iter().any(|n| n.op_is::<Quantize8>()));
            let data: Vec<f32> = values()
                .into_iter()
                .filter(|&x| tract_defined(x, 1.0 / 0.02, zp))
                .take(210)
                .collect();
            let input = Tensor::from_shape(&[2, 3, 5, 7], &data).unwrap();
            let run = |m: TypedModel| {
                let plan = m.into_runnable().unwrap();
                plan.run(tvec!(input.clone().into_tvalue())).unwrap()[0]
                    .clone()
                    .into_tensor()
            };
            assert_eq!(run(theirs), run(ours), "{to:?}");
        }
    }
}
