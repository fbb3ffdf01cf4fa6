//! Quantized Add and Mul of int8 bytes (qbinary.rs's operator).
//!
//! - **Add**: `Q(D₀(a) + D₁(b))`, with `D(x) = (x - zero point) as f32 * scale` per side.
//!   As onnxruntime's NEON `QLinearAdd` computes it ([`FixedAdd`]): each side less its zero
//!   point times its scale over the output's in fixed point (22-bit multipliers, a common
//!   shift), summed exactly in 32 bits, shifted with rounding, plus the output's zero
//!   point, saturated: within 1.2e-4 of an output step of the exact sum before its
//!   rounding at a scale ratio of 1, so its rounding but where the exact sum lies that
//!   close to a tie, at about two thirds of the float chain's instructions. (16-bit
//!   multipliers took a third, but their 0.05 of a step turned enough roundings over that
//!   MobileNetV2's logits moved 6.7 steps from onnxruntime's through its ten Adds.) Scale
//!   ratios of 256 or more keep tract's float chain, step for step (onnxruntime's x86
//!   kernel adds the two scaled sides in f32 too).
//! - **Mul**: as onnxruntime's `QLinearMul` computes it: the product of the two sides less
//!   their zero points, exact in integers (at most 255² in magnitude, so exact in f32 too),
//!   times one multiplier `s₀ · s₁ / s_out`, quantized. Against one value `v` of the other
//!   side (a squeeze-excite's scale per channel, dequantized or left in f32 by the
//!   format), the multiplier of the run is `s · v / s_out`. tract's chain rounds at each of
//!   its three products instead; the two differ by one output step where a value lands
//!   next to a rounding tie. One multiply per value rather than three: the qformats
//!   network's squeeze-excite Mul took 43 K instructions on cortex-a76, more than any
//!   operator but the products and the requantization.
//!
//! Bytes are u8 or i8 per side and for the output. The reference is [`Binary::scalar`]
//! (and [`Binary::value_scalar`] against one value), one value at a time. On aarch64 NEON
//! takes 16 outputs per step: each side's bytes widened to 16 bits less their zero point
//! (exact: both are bytes of the side's type, within ±255), widened to 32 bits and
//! converted (exact), then the f32 steps above and quantize.rs's 16-lane quantization.
//! Each step is the scalar one's IEEE operation, so the bytes are the reference's.
//! Elsewhere the values of a run go to `quantize_slice` (AVX2 on x86 hosts that have it)
//! 256 at a time.

use crate::quantize::{quantize, quantize_slice};

/// One side's bytes and their dequantization.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Side {
    pub(crate) signed: bool,
    pub(crate) scale: f32,
    pub(crate) zero: i32,
}

impl Side {
    /// `D(byte)`: the byte as the side's type, less its zero point, times its scale.
    #[inline(always)]
    pub(crate) fn value(&self, byte: u8) -> f32 {
        self.centred(byte) * self.scale
    }

    /// `value` for a side whose signedness is `SIGNED`.
    #[inline(always)]
    fn typed<const SIGNED: bool>(&self, byte: u8) -> f32 {
        self.centred_typed::<SIGNED>(byte) * self.scale
    }

    /// The byte less its zero point, as f32 (exact).
    #[inline(always)]
    pub(crate) fn centred(&self, byte: u8) -> f32 {
        if self.signed {
            self.centred_typed::<true>(byte)
        } else {
            self.centred_typed::<false>(byte)
        }
    }

    #[inline(always)]
    fn centred_typed<const SIGNED: bool>(&self, byte: u8) -> f32 {
        self.centred_int::<SIGNED>(byte) as f32
    }

    /// The byte, as the type `SIGNED` says, less the zero point.
    #[inline(always)]
    fn centred_int<const SIGNED: bool>(&self, byte: u8) -> i32 {
        let x = if SIGNED {
            i32::from(byte as i8)
        } else {
            i32::from(byte)
        };
        x - self.zero
    }

    /// Whether the zero point is a value of the side's type (ONNX's rule): the vector
    /// kernels subtract it as a byte.
    fn zero_is_byte(&self) -> bool {
        if self.signed {
            i8::try_from(self.zero).is_ok()
        } else {
            u8::try_from(self.zero).is_ok()
        }
    }
}

/// The output's quantization, as `quantize` takes it (`scale` is the multiplier: the
/// reciprocal of the ONNX scale).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Output {
    pub(crate) signed: bool,
    pub(crate) scale: f32,
    pub(crate) zero: i32,
}

impl Output {
    fn range(&self) -> [i32; 2] {
        if self.signed {
            [-128, 127]
        } else {
            [0, 255]
        }
    }
}

/// `$f::<A, B, C>($args)` for three flags `[a, b, c]` known at run time (the sides'
/// signedness and the output's, or the operation's): the kernels take them as constants.
macro_rules! by_flags {
    ($($f:ident)::+, $flags:expr, ($($arg:expr),*)) => {
        match $flags {
            [false, false, false] => $($f)::+::<false, false, false>($($arg),*),
            [false, false, true] => $($f)::+::<false, false, true>($($arg),*),
            [false, true, false] => $($f)::+::<false, true, false>($($arg),*),
            [false, true, true] => $($f)::+::<false, true, true>($($arg),*),
            [true, false, false] => $($f)::+::<true, false, false>($($arg),*),
            [true, false, true] => $($f)::+::<true, false, true>($($arg),*),
            [true, true, false] => $($f)::+::<true, true, false>($($arg),*),
            [true, true, true] => $($f)::+::<true, true, true>($($arg),*),
        }
    };
}

/// An Add's fixed-point form, as onnxruntime's NEON `QLinearAdd` has it: the output byte
/// of `a` and `b` is `saturate(zy + ((a - za)·M₀ + (b - zb)·M₁ + 2^(shift-1)) >> shift)`,
/// each `Mᵢ` the side's scale over the output's times `2^shift`, rounded, below 2^22 (the
/// larger at least 2^21).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FixedAdd {
    multipliers: [i32; 2],
    shift: u32,
}

impl FixedAdd {
    /// The largest ratio of a side's scale to the output's, onnxruntime's bound. Each
    /// side's product is off by at most 255 · 2^-(shift+1), and 2^shift is at least
    /// 2^21 / ratio: the sum is within `255 · ratio / 2^21` of the exact one (1.2e-4 of an
    /// output step at a ratio of 1, 0.03 at 256). The sum fits an i32: 255 · 2 · 2^22.
    const MAX_RATIO: f64 = 256.0;

    /// The form of an Add of sides of scales `scales` into an output whose scale's
    /// reciprocal is `inverse`, when both ratios are positive and below [`Self::MAX_RATIO`].
    fn of(scales: [f32; 2], inverse: f32) -> Option<FixedAdd> {
        let ratios = scales.map(|s| f64::from(s) * f64::from(inverse));
        let largest = ratios[0].max(ratios[1]);
        if !(ratios.iter().all(|&r| r > 0.0) && largest < Self::MAX_RATIO) {
            return None;
        }
        // The largest shift that keeps the larger multiplier below 2^22.
        let limit = f64::from((1u32 << 22) - 1);
        let shift = (1..=31u32)
            .rev()
            .find(|&k| (largest * 2f64.powi(k as i32)).round() <= limit)?;
        let multipliers = ratios.map(|r| (r * 2f64.powi(shift as i32)).round() as i32);
        Some(FixedAdd { multipliers, shift })
    }

    /// The output value (before the output's zero point and saturation) of two sides'
    /// values less their zero points.
    #[inline(always)]
    fn value(&self, a: i32, b: i32) -> i32 {
        let [ma, mb] = self.multipliers;
        let sum = a * ma + b * mb;
        (sum + (1 << (self.shift - 1))) >> self.shift
    }
}

/// An Add or a Mul of two sides into an output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Binary {
    pub(crate) mul: bool,
    pub(crate) sides: [Side; 2],
    pub(crate) output: Output,
    /// An Add's fixed-point form, or none: the float chain.
    fixed: Option<FixedAdd>,
}

impl Binary {
    /// An Add (fixed-point where its scales allow: [`FixedAdd`]) or a Mul.
    pub(crate) fn new(mul: bool, sides: [Side; 2], output: Output) -> Binary {
        let fixed = if mul {
            None
        } else {
            FixedAdd::of([sides[0].scale, sides[1].scale], output.scale)
        };
        Binary {
            mul,
            sides,
            output,
            fixed,
        }
    }

    /// One output byte from one value of each side (a u8, or an i8's bits): the reference.
    pub(crate) fn scalar(&self, a: u8, b: u8) -> u8 {
        let [da, db] = self.sides;
        if let Some(f) = &self.fixed {
            let centred = |d: Side, x: u8| {
                if d.signed {
                    d.centred_int::<true>(x)
                } else {
                    d.centred_int::<false>(x)
                }
            };
            let v = f.value(centred(da, a), centred(db, b));
            let [lo, hi] = self.output.range();
            return (v.saturating_add(self.output.zero)).clamp(lo, hi) as u8;
        }
        let value = if self.mul {
            da.centred(a) * db.centred(b)
        } else {
            da.value(a) + db.value(b)
        };
        self.quantize_one(value, self.same_multiplier())
    }

    /// The output byte of side `side`'s byte `x` against the other side's value `v`
    /// (dequantized, or an f32 of the format's): the reference of [`Binary::with_value`].
    #[cfg(test)]
    pub(crate) fn value_scalar(&self, side: usize, x: u8, v: f32) -> u8 {
        let d = self.sides[side];
        let value = if self.mul {
            d.centred(x)
        } else {
            d.value(x) + v
        };
        self.quantize_one(value, self.value_multiplier(side, v))
    }

    /// The quantization's multiplier of two sides' values: for a Mul, of their centred
    /// product, `s₀ · s₁ / s_out`; for an Add, of their dequantized sum, `1 / s_out`.
    fn same_multiplier(&self) -> f32 {
        if self.mul {
            self.sides[0].scale * self.sides[1].scale * self.output.scale
        } else {
            self.output.scale
        }
    }

    /// The quantization's multiplier of side `side`'s values against the other side's
    /// value `v`: for a Mul, of its centred bytes, `s · v / s_out`; for an Add, of their
    /// dequantized sums with `v`, `1 / s_out`.
    fn value_multiplier(&self, side: usize, v: f32) -> f32 {
        if self.mul {
            self.sides[side].scale * v * self.output.scale
        } else {
            self.output.scale
        }
    }

    fn quantize_one(&self, v: f32, scale: f32) -> u8 {
        let [lo, hi] = self.output.range();
        quantize(v, scale, self.output.zero, lo, hi) as u8
    }

    /// `out[i]` of `a[i]` and `b[i]` ([`Binary::scalar`]); the three slices have one length.
    pub(crate) fn same(&self, a: &[u8], b: &[u8], out: &mut [u8]) {
        assert!(a.len() == out.len() && b.len() == out.len());
        if let Some(f) = self.fixed {
            return self.fixed_add(f, a, b, out);
        }
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is part of aarch64; the three slices have `out.len()` bytes.
        let done = unsafe { neon::same(self, a, b, out) };
        #[cfg(not(target_arch = "aarch64"))]
        let done = 0;
        let (a, b, out) = (&a[done..], &b[done..], &mut out[done..]);
        let flags = [self.sides[0].signed, self.sides[1].signed, self.mul];
        by_flags!(Self::same_rest, flags, (self, a, b, out))
    }

    /// [`Binary::same`] of an Add in fixed point: the vector blocks, then the scalar form.
    fn fixed_add(&self, f: FixedAdd, a: &[u8], b: &[u8], out: &mut [u8]) {
        let (sa, sb) = (self.sides[0], self.sides[1]);
        let zeros = [sa.zero, sb.zero, self.output.zero];
        let signed = [sa.signed, sb.signed, self.output.signed];
        let done = if sa.zero_is_byte() && sb.zero_is_byte() {
            #[cfg(target_arch = "aarch64")]
            // SAFETY: NEON is part of aarch64; the three slices have one length.
            let done = unsafe { by_flags!(neon::fixed_blocks, signed, (f, zeros, a, b, out)) };
            #[cfg(target_arch = "x86_64")]
            // SAFETY: SSE2 is part of x86_64; the three slices have one length.
            let done = unsafe { by_flags!(sse2::fixed_blocks, signed, (f, zeros, a, b, out)) };
            #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
            let done = 0;
            done
        } else {
            0
        };
        for ((y, &x), &z) in out[done..].iter_mut().zip(&a[done..]).zip(&b[done..]) {
            *y = self.scalar(x, z);
        }
    }

    /// `out[i]` of side `side`'s `xs[i]` against the other side's value `v`, dequantized
    /// ([`Binary::value_scalar`]; Add and Mul are commutative bit for bit).
    pub(crate) fn with_value(&self, side: usize, xs: &[u8], v: f32, out: &mut [u8]) {
        assert!(xs.len() == out.len());
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as in `same`.
        let done = unsafe { neon::with_value(self, side, xs, v, out) };
        #[cfg(not(target_arch = "aarch64"))]
        let done = 0;
        let (xs, out) = (&xs[done..], &mut out[done..]);
        match (self.sides[side].signed, self.mul) {
            (false, false) => self.value_rest::<false, false>(side, xs, v, out),
            (false, true) => self.value_rest::<false, true>(side, xs, v, out),
            (true, false) => self.value_rest::<true, false>(side, xs, v, out),
            (true, true) => self.value_rest::<true, true>(side, xs, v, out),
        }
    }

    /// `same` where no vector kernel took the values (x86 hosts, the last values on
    /// aarch64): loops the compiler vectorises, typed so that it can.
    fn same_rest<const SA: bool, const SB: bool, const MUL: bool>(
        &self,
        a: &[u8],
        b: &[u8],
        out: &mut [u8],
    ) {
        let [da, db] = self.sides;
        self.in_chunks(out, self.same_multiplier(), |at, values| {
            let n = values.len();
            let pairs = a[at..at + n].iter().zip(&b[at..at + n]);
            for (v, (&x, &y)) in values.iter_mut().zip(pairs) {
                *v = if MUL {
                    da.centred_typed::<SA>(x) * db.centred_typed::<SB>(y)
                } else {
                    da.typed::<SA>(x) + db.typed::<SB>(y)
                };
            }
        });
    }

    fn value_rest<const SIGNED: bool, const MUL: bool>(
        &self,
        side: usize,
        xs: &[u8],
        u: f32,
        out: &mut [u8],
    ) {
        let d = self.sides[side];
        self.in_chunks(out, self.value_multiplier(side, u), |at, values| {
            let n = values.len();
            for (v, &x) in values.iter_mut().zip(&xs[at..at + n]) {
                *v = if MUL {
                    d.centred_typed::<SIGNED>(x)
                } else {
                    d.typed::<SIGNED>(x) + u
                };
            }
        });
    }

    /// `out` 256 bytes at a time: `fill(start, values)` writes the f32 values of
    /// `out[start..start + values.len()]`, then `quantize_slice` quantizes them with the
    /// multiplier `scale` while they are in L1.
    #[inline(always)]
    fn in_chunks(&self, out: &mut [u8], scale: f32, fill: impl Fn(usize, &mut [f32])) {
        const CHUNK: usize = 256;
        // Nothing left after the vector blocks: no buffer to zero (a squeeze-excite scale
        // comes here once per channel).
        if out.is_empty() {
            return;
        }
        let mut buf = [0f32; CHUNK];
        let (zero, range) = (self.output.zero, self.output.range());
        for (c, ys) in out.chunks_mut(CHUNK).enumerate() {
            let values = &mut buf[..ys.len()];
            fill(c * CHUNK, values);
            if self.output.signed {
                // SAFETY: i8 and u8 have one size and alignment; every bit pattern is valid.
                let ys =
                    unsafe { std::slice::from_raw_parts_mut(ys.as_mut_ptr() as *mut i8, ys.len()) };
                quantize_slice(values, ys, scale, zero, range);
            } else {
                quantize_slice(values, ys, scale, zero, range);
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    use super::{Binary, FixedAdd, Side};
    use crate::epilogue::{for_each_block, BLOCK};
    use crate::quantize::neon::{in_form, Quantizer};

    /// A side's dequantization in registers.
    #[derive(Clone, Copy)]
    struct Lanes {
        /// The zero point's byte (an i8's bits for a signed side) in every lane.
        zero: uint8x16_t,
        scale: float32x4_t,
    }

    impl Lanes {
        /// None when the zero point is not a byte of the side's type (which ONNX does not
        /// allow): `centred` subtracts it as one.
        fn new(side: &Side) -> Option<Lanes> {
            // SAFETY: NEON is part of aarch64; register operations only.
            side.zero_is_byte().then(|| unsafe {
                Lanes {
                    zero: vdupq_n_u8(side.zero as u8),
                    scale: vdupq_n_f32(side.scale),
                }
            })
        }

        /// The 16 bytes at `p` (i8 when `SIGNED`, else u8) less the zero point, as f32: a
        /// widening subtraction of two bytes of one type (within ±255 in 16 bits; for u8,
        /// the wrapped u16 difference read as i16), widened again and converted, exact.
        ///
        /// # Safety
        /// 16 bytes are readable at `p`.
        #[inline(always)]
        unsafe fn centred<const SIGNED: bool>(&self, p: *const u8) -> [float32x4_t; 4] {
            // SAFETY: the caller's contract; the rest are register operations.
            unsafe {
                let bytes = vld1q_u8(p);
                let (lo, hi) = if SIGNED {
                    let (s, z) = (vreinterpretq_s8_u8(bytes), vreinterpretq_s8_u8(self.zero));
                    (
                        vsubl_s8(vget_low_s8(s), vget_low_s8(z)),
                        vsubl_high_s8(s, z),
                    )
                } else {
                    (
                        vreinterpretq_s16_u16(vsubl_u8(vget_low_u8(bytes), vget_low_u8(self.zero))),
                        vreinterpretq_s16_u16(vsubl_high_u8(bytes, self.zero)),
                    )
                };
                [
                    vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))),
                    vcvtq_f32_s32(vmovl_high_s16(lo)),
                    vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))),
                    vcvtq_f32_s32(vmovl_high_s16(hi)),
                ]
            }
        }

        /// The 16 bytes at `p` dequantized.
        ///
        /// # Safety
        /// 16 bytes are readable at `p`.
        #[inline(always)]
        unsafe fn values<const SIGNED: bool>(&self, p: *const u8) -> [float32x4_t; 4] {
            // SAFETY: the caller's contract; the rest are register operations.
            unsafe { self.centred::<SIGNED>(p).map(|v| vmulq_f32(v, self.scale)) }
        }
    }

    /// Lane by lane, `u · v` or `u + v`.
    #[inline(always)]
    fn op<const MUL: bool>(u: [float32x4_t; 4], v: [float32x4_t; 4]) -> [float32x4_t; 4] {
        // SAFETY: NEON is part of aarch64; register operations only.
        std::array::from_fn(|i| unsafe {
            if MUL {
                vmulq_f32(u[i], v[i])
            } else {
                vaddq_f32(u[i], v[i])
            }
        })
    }

    /// The output's quantization with the multiplier `scale`.
    fn quantizer(k: &Binary, scale: f32) -> Option<Quantizer> {
        Quantizer::new(scale, k.output.zero, k.output.range(), !k.output.signed)
    }

    /// `Binary::same` in blocks of 16 (none below 16 outputs); returns how many outputs it
    /// wrote.
    ///
    /// # Safety
    /// `a`, `b` and `out` have `out.len()` bytes.
    pub(super) unsafe fn same(k: &Binary, a: &[u8], b: &[u8], out: &mut [u8]) -> usize {
        let (Some(la), Some(lb)) = (Lanes::new(&k.sides[0]), Lanes::new(&k.sides[1])) else {
            return 0;
        };
        let n = out.len();
        let l = [la, lb];
        let flags = [k.sides[0].signed, k.sides[1].signed, k.mul];
        // SAFETY: the caller's contract, passed on.
        unsafe { by_flags!(same_blocks, flags, (k, l, a, b, out, n)) }
    }

    /// # Safety
    /// `a`, `b` and `out` have at least `n` bytes.
    #[inline(always)]
    unsafe fn same_blocks<const SA: bool, const SB: bool, const MUL: bool>(
        k: &Binary,
        [la, lb]: [Lanes; 2],
        a: &[u8],
        b: &[u8],
        out: &mut [u8],
        n: usize,
    ) -> usize {
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let Some(q) = quantizer(k, k.same_multiplier()) else {
            return 0;
        };
        // SAFETY (both): the caller's contract: bytes i..i + 16 of each slice for
        // i + 16 <= n.
        if MUL {
            // The centred product (exact).
            let values = |i: usize| unsafe {
                op::<true>(la.centred::<SA>(pa.add(i)), lb.centred::<SB>(pb.add(i)))
            };
            unsafe { blocks(&q, out, n, values) }
        } else {
            let values = |i: usize| unsafe {
                op::<false>(la.values::<SA>(pa.add(i)), lb.values::<SB>(pb.add(i)))
            };
            unsafe { blocks(&q, out, n, values) }
        }
    }

    /// A block's 16 bytes at `p` less the zero point `z` (a byte of the type `SIGNED`
    /// says), in two i16 halves: a widening subtraction, exact (within ±255; for u8, the
    /// wrapped u16 difference read as i16).
    ///
    /// # Safety
    /// 16 bytes are readable at `p`.
    #[inline(always)]
    unsafe fn centred_halves<const SIGNED: bool>(
        p: *const u8,
        z: uint8x16_t,
    ) -> (int16x8_t, int16x8_t) {
        // SAFETY: the caller's contract; the rest are register operations.
        unsafe {
            let v = vld1q_u8(p);
            if SIGNED {
                let (v, z) = (vreinterpretq_s8_u8(v), vreinterpretq_s8_u8(z));
                (
                    vsubl_s8(vget_low_s8(v), vget_low_s8(z)),
                    vsubl_high_s8(v, z),
                )
            } else {
                (
                    vreinterpretq_s16_u16(vsubl_u8(vget_low_u8(v), vget_low_u8(z))),
                    vreinterpretq_s16_u16(vsubl_high_u8(v, z)),
                )
            }
        }
    }

    /// `Binary::fixed_add` for sides and an output signed as `SA`, `SB`, `SO`, in blocks of 16 (none below 16 outputs): MUL and MLA of the
    /// centred values by the multipliers, SRSHL by the shift, SQXTN, the zero point added
    /// with saturation, SQXTUN or SQXTN to bytes; returns how many outputs it wrote.
    ///
    /// # Safety
    /// `a`, `b` and `out` have `out.len()` bytes; the sides' zero points are bytes of their
    /// types.
    #[inline(always)]
    pub(super) unsafe fn fixed_blocks<const SA: bool, const SB: bool, const SO: bool>(
        f: FixedAdd,
        [za, zb, zo]: [i32; 3],
        a: &[u8],
        b: &[u8],
        out: &mut [u8],
    ) -> usize {
        let n = out.len();
        let (pa, pb, po) = (a.as_ptr(), b.as_ptr(), out.as_mut_ptr());
        let [ma, mb] = f.multipliers;
        // SAFETY (the registers): NEON is part of aarch64. The output's zero point is a
        // byte of its type, so an i16.
        let (za, zb, zo, shift) = unsafe {
            (
                vdupq_n_u8(za as u8),
                vdupq_n_u8(zb as u8),
                vdupq_n_s16(zo as i16),
                vdupq_n_s32(-(f.shift as i32)),
            )
        };
        // The sums of eight values, each side's centred half widened and times its
        // multiplier, shifted with rounding, narrowed with saturation and offset by the
        // zero point with saturation: the output's clamp, as its range lies inside i16's.
        let half = |x: int16x8_t, y: int16x8_t| unsafe {
            let lo = vmulq_n_s32(vmovl_s16(vget_low_s16(x)), ma);
            let lo = vmlaq_n_s32(lo, vmovl_s16(vget_low_s16(y)), mb);
            let hi = vmulq_n_s32(vmovl_high_s16(x), ma);
            let hi = vmlaq_n_s32(hi, vmovl_high_s16(y), mb);
            let (lo, hi) = (vrshlq_s32(lo, shift), vrshlq_s32(hi, shift));
            vqaddq_s16(vqmovn_high_s32(vqmovn_s32(lo), hi), zo)
        };
        for_each_block!(n, true, |i| {
            // SAFETY: the caller's contract: bytes i..i + 16 of each slice, i + 16 <= n.
            unsafe {
                let (a0, a1) = centred_halves::<SA>(pa.add(i), za);
                let (b0, b1) = centred_halves::<SB>(pb.add(i), zb);
                let (s0, s1) = (half(a0, b0), half(a1, b1));
                let bytes = if SO {
                    vreinterpretq_u8_s8(vqmovn_high_s16(vqmovn_s16(s0), s1))
                } else {
                    vqmovun_high_s16(vqmovun_s16(s0), s1)
                };
                vst1q_u8(po.add(i), bytes);
            }
        })
    }

    /// `Binary::with_value` in blocks of 16 (none below 16 outputs); returns how many
    /// outputs it wrote.
    ///
    /// # Safety
    /// `xs` and `out` have `out.len()` bytes.
    pub(super) unsafe fn with_value(
        k: &Binary,
        side: usize,
        xs: &[u8],
        v: f32,
        out: &mut [u8],
    ) -> usize {
        let Some(lanes) = Lanes::new(&k.sides[side]) else {
            return 0;
        };
        let n = out.len();
        // SAFETY: the caller's contract, passed on.
        unsafe {
            match (k.sides[side].signed, k.mul) {
                (false, false) => value_blocks::<false, false>(k, side, lanes, v, xs, out, n),
                (false, true) => value_blocks::<false, true>(k, side, lanes, v, xs, out, n),
                (true, false) => value_blocks::<true, false>(k, side, lanes, v, xs, out, n),
                (true, true) => value_blocks::<true, true>(k, side, lanes, v, xs, out, n),
            }
        }
    }

    /// # Safety
    /// `xs` and `out` have at least `n` bytes.
    #[inline(always)]
    unsafe fn value_blocks<const SIGNED: bool, const MUL: bool>(
        k: &Binary,
        side: usize,
        lanes: Lanes,
        v: f32,
        xs: &[u8],
        out: &mut [u8],
        n: usize,
    ) -> usize {
        let p = xs.as_ptr();
        let Some(q) = quantizer(k, k.value_multiplier(side, v)) else {
            return 0;
        };
        // SAFETY (both): NEON is part of aarch64; the caller's contract: bytes i..i + 16
        // of `xs` for i + 16 <= n.
        if MUL {
            // The centred bytes, the run's one multiplier.
            unsafe { blocks(&q, out, n, |i| lanes.centred::<SIGNED>(p.add(i))) }
        } else {
            let v = unsafe { [vdupq_n_f32(v); 4] };
            let values = |i: usize| unsafe { op::<false>(lanes.values::<SIGNED>(p.add(i)), v) };
            unsafe { blocks(&q, out, n, values) }
        }
    }

    /// The outputs below `n`, 16 at a time: `values(i)` gives the f32 values of outputs
    /// `i..i + 16`, which `q` quantizes into `out`. A last part block is the last 16
    /// outputs again (`for_each_block!`'s overlap: the inputs are other slices than `out`,
    /// so its first ones get the same bytes twice); below 16 outputs, none. Returns how
    /// many it wrote.
    ///
    /// # Safety
    /// `out` has at least `n` bytes.
    #[inline(always)]
    unsafe fn blocks(
        q: &Quantizer,
        out: &mut [u8],
        n: usize,
        values: impl Fn(usize) -> [float32x4_t; 4],
    ) -> usize {
        // The quantizer's form chosen once for the loop (`Quantizer::bytes`).
        in_form!(q, |bytes| for_each_block!(n, true, |i| {
            // SAFETY: the caller's contract: bytes i..i + 16 of `out`, i + 16 <= n.
            unsafe { vst1q_u8(out.as_mut_ptr().add(i), bytes!(values(i))) };
        }))
    }
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::*;

    use super::FixedAdd;
    use crate::epilogue::{for_each_block, BLOCK};

    /// A block's 16 bytes at `p` less the zero point (in every i16 lane of `z`), in two
    /// i16 halves (sign-extended when `SIGNED`), exact.
    ///
    /// # Safety
    /// 16 bytes are readable at `p`.
    #[inline(always)]
    unsafe fn centred_halves<const SIGNED: bool>(p: *const u8, z: __m128i) -> (__m128i, __m128i) {
        // SAFETY: the caller's contract; SSE2 is part of x86_64.
        unsafe {
            let v = _mm_loadu_si128(p as *const __m128i);
            let (lo, hi) = if SIGNED {
                (
                    _mm_srai_epi16(_mm_unpacklo_epi8(v, v), 8),
                    _mm_srai_epi16(_mm_unpackhi_epi8(v, v), 8),
                )
            } else {
                let zero = _mm_setzero_si128();
                (_mm_unpacklo_epi8(v, zero), _mm_unpackhi_epi8(v, zero))
            };
            (_mm_sub_epi16(lo, z), _mm_sub_epi16(hi, z))
        }
    }

    /// `Binary::fixed_add` for sides and an output signed as `SA`, `SB`, `SO`, in blocks of 16 (none below 16 outputs): the two sides' centred
    /// values interleaved and multiplied-added by PMADDWD (one side's multiplier in the low
    /// half of each pair), by the multipliers' high 11 bits and by their low 11, the
    /// rounding added and shifted, packed with saturation, the zero point added with
    /// saturation, packed to bytes; returns how many outputs it wrote.
    ///
    /// # Safety
    /// As the NEON form's.
    #[inline(always)]
    pub(super) unsafe fn fixed_blocks<const SA: bool, const SB: bool, const SO: bool>(
        f: FixedAdd,
        [za, zb, zo]: [i32; 3],
        a: &[u8],
        b: &[u8],
        out: &mut [u8],
    ) -> usize {
        let n = out.len();
        let (pa, pb, po) = (a.as_ptr(), b.as_ptr(), out.as_mut_ptr());
        let [ma, mb] = f.multipliers;
        // Each multiplier (below 2^22) as its high and low 11 bits: PMADDWD multiplies i16s.
        let pair = |m: [i32; 2]| (m[1] << 16) | (m[0] & 0xffff);
        let (high, low) = (pair([ma >> 11, mb >> 11]), pair([ma & 0x7ff, mb & 0x7ff]));
        // SAFETY (the registers): SSE2 is part of x86_64; the zero points are bytes.
        let (za, zb, zo, high, low, round, shift) = unsafe {
            (
                _mm_set1_epi16(za as i16),
                _mm_set1_epi16(zb as i16),
                _mm_set1_epi16(zo as i16),
                _mm_set1_epi32(high),
                _mm_set1_epi32(low),
                _mm_set1_epi32(1 << (f.shift - 1)),
                _mm_cvtsi32_si128(f.shift as i32),
            )
        };
        // Four values' exact sums: the high parts' products, shifted up 11 bits, plus the
        // low parts'.
        let sums = |pairs: __m128i| unsafe {
            let h = _mm_slli_epi32(_mm_madd_epi16(pairs, high), 11);
            _mm_add_epi32(h, _mm_madd_epi16(pairs, low))
        };
        // Eight values' sums, shifted with rounding, packed and offset by the zero point.
        let half = |x: __m128i, y: __m128i| unsafe {
            let lo = sums(_mm_unpacklo_epi16(x, y));
            let hi = sums(_mm_unpackhi_epi16(x, y));
            let lo = _mm_sra_epi32(_mm_add_epi32(lo, round), shift);
            let hi = _mm_sra_epi32(_mm_add_epi32(hi, round), shift);
            _mm_adds_epi16(_mm_packs_epi32(lo, hi), zo)
        };
        for_each_block!(n, true, |i| {
            // SAFETY: the caller's contract: bytes i..i + 16 of each slice, i + 16 <= n.
            unsafe {
                let (a0, a1) = centred_halves::<SA>(pa.add(i), za);
                let (b0, b1) = centred_halves::<SB>(pb.add(i), zb);
                let (s0, s1) = (half(a0, b0), half(a1, b1));
                let bytes = if SO {
                    _mm_packs_epi16(s0, s1)
                } else {
                    _mm_packus_epi16(s0, s1)
                };
                _mm_storeu_si128(po.add(i) as *mut __m128i, bytes);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::banded::tests::random_bytes as bytes;

    /// The fixed-point Add ([`FixedAdd`]) over every pair of bytes, u8 and i8 sides and
    /// outputs, scale ratios from 0.004 to 40: each output is the exact sum's rounding, or,
    /// where the exact sum lies within `255 · ratio / 2^21` of a rounding tie, the byte
    /// next to it; the vector kernels give the scalar form's bytes. From a ratio of 256 the
    /// Add keeps the float chain.
    #[test]
    fn fixed_point_adds_are_within_a_step_of_the_exact_sum() {
        let cases = [
            // (side scales, output scale, zero points, signed sides and output)
            (
                [0.043f32, 0.0271],
                0.0517f32,
                [128, 3, 120],
                [false, false, false],
            ),
            ([0.02, 0.0004], 0.0217, [-5, 0, -128], [true, false, true]),
            ([0.06, 0.061], 0.0205, [10, -20, 131], [false, true, false]),
            ([0.011, 0.0173], 0.0173, [0, 127, 0], [true, true, true]),
            ([0.8, 0.5], 0.02, [128, 128, 128], [false, false, false]),
        ];
        let as_value = |signed: bool, byte: u8| {
            if signed {
                i64::from(byte as i8)
            } else {
                i64::from(byte)
            }
        };
        for (scales, out, zeros, signed) in cases {
            let side = |i: usize| Side {
                signed: signed[i],
                scale: scales[i],
                zero: zeros[i],
            };
            let output = Output {
                signed: signed[2],
                scale: 1.0 / out,
                zero: zeros[2],
            };
            let k = Binary::new(false, [side(0), side(1)], output);
            let what = format!("{scales:?} {out} {zeros:?} {signed:?}");
            assert!(k.fixed.is_some(), "{what}");
            let ratio = f64::from(scales[0].max(scales[1]) / out);
            let bound = 255.0 * ratio / f64::from(1u32 << 21);
            let [lo, hi] = output.range();
            let (mut a, mut b) = (vec![], vec![]);
            for x in 0..=255u8 {
                for y in 0..=255u8 {
                    let centred = |i: usize, byte: u8| {
                        (as_value(signed[i], byte) - i64::from(zeros[i])) as f64
                    };
                    let exact = (centred(0, x) * f64::from(scales[0])
                        + centred(1, y) * f64::from(scales[1]))
                        / f64::from(out);
                    let want = (exact.round_ties_even() as i64 + i64::from(zeros[2]))
                        .clamp(i64::from(lo), i64::from(hi));
                    let got = as_value(signed[2], k.scalar(x, y));
                    if got != want {
                        let tie = (exact - exact.floor() - 0.5).abs();
                        assert!(
                            (got - want).abs() == 1 && tie < bound,
                            "{what}: {x} + {y} gives {got}, the exact sum {exact} rounds to {want}"
                        );
                    }
                    a.push(x);
                    b.push(y);
                }
            }
            let mut got = vec![0; a.len()];
            k.same(&a, &b, &mut got);
            let want: Vec<u8> = a.iter().zip(&b).map(|(&x, &y)| k.scalar(x, y)).collect();
            assert!(
                got == want,
                "{what}: the kernels differ from the scalar form"
            );
        }
        let coarse = Binary::new(
            false,
            [Side {
                signed: false,
                scale: 0.5,
                zero: 0,
            }; 2],
            Output {
                signed: false,
                scale: 1.0 / 0.001,
                zero: 0,
            },
        );
        assert!(coarse.fixed.is_none());
    }

    /// Every combination of u8 and i8 sides and outputs, Add and Mul, zero points at the
    /// ends of their types, scales that saturate the output and ones that do not, lengths
    /// around the 16-byte blocks and the 256-value chunks: both entry points give the
    /// scalar reference's bytes.
    #[test]
    fn kernels_match_the_scalar_reference() {
        let mut seed = 0x9e37_79b9u32;
        let zeros = |signed: bool| {
            if signed {
                [-128, 0, 5, 127]
            } else {
                [0, 3, 128, 255]
            }
        };
        for mul in [false, true] {
            for (sa, sb, so) in (0..8).map(|m| (m & 1 != 0, m & 2 != 0, m & 4 != 0)) {
                for (za, zb, zo) in zeros(sa)
                    .into_iter()
                    .zip(zeros(sb))
                    .zip(zeros(so).iter().rev())
                    .map(|((a, b), &o)| (a, b, o))
                {
                    for (scales, out_scale) in [([0.043, 0.0271], 1.0 / 0.0517), ([0.9, 0.31], 7.5)]
                    {
                        let k = Binary::new(
                            mul,
                            [
                                Side {
                                    signed: sa,
                                    scale: scales[0],
                                    zero: za,
                                },
                                Side {
                                    signed: sb,
                                    scale: scales[1],
                                    zero: zb,
                                },
                            ],
                            Output {
                                signed: so,
                                scale: out_scale,
                                zero: zo,
                            },
                        );
                        for len in [0, 1, 15, 16, 17, 33, 255, 256, 257, 600] {
                            let (a, b) = (bytes(len, &mut seed), bytes(len, &mut seed));
                            let want: Vec<u8> =
                                a.iter().zip(&b).map(|(&x, &y)| k.scalar(x, y)).collect();
                            let mut got = vec![0xa5; len];
                            k.same(&a, &b, &mut got);
                            assert_eq!(got, want, "{k:?} length {len}");
                            for side in 0..2 {
                                let y = b.first().copied().unwrap_or(9);
                                let v = k.sides[1 - side].value(y);
                                let want: Vec<u8> =
                                    a.iter().map(|&x| k.value_scalar(side, x, v)).collect();
                                k.with_value(side, &a, v, &mut got);
                                assert_eq!(got, want, "{k:?} side {side} length {len}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// A Mul's bytes against the exact product (f64) of the two sides' centred bytes and
    /// scales, rounded half to even, over every pair of bytes, u8 and i8: the same byte,
    /// but next to a rounding tie (within 1e-4 of a step), where the f32 steps may round
    /// the other way: one step apart at most. Against one value of the other side, the
    /// same.
    #[test]
    fn muls_round_the_exact_product() {
        for (signed, zeros, scales, out_scale, out_zero) in [
            (false, [128, 3], [0.043f32, 0.0271], 1.0 / 0.0517f32, 7),
            (true, [-5, 0], [0.9, 0.31], 7.5, -3),
            (false, [0, 255], [0.0039, 0.0078], 255.0, 0),
        ] {
            let side = |i: usize| Side {
                signed,
                scale: scales[i],
                zero: zeros[i],
            };
            let k = Binary::new(
                true,
                [side(0), side(1)],
                Output {
                    signed,
                    scale: out_scale,
                    zero: out_zero,
                },
            );
            let [lo, hi] = k.output.range();
            let exact = |product: f64, multiplier: f64| {
                let v = product * multiplier;
                let byte = (v.round_ties_even() as i64 + i64::from(out_zero))
                    .clamp(i64::from(lo), i64::from(hi));
                let tie = (v - v.floor() - 0.5).abs() < 1e-4;
                (byte, tie)
            };
            let as_value = |byte: u8| {
                if signed {
                    i64::from(byte as i8)
                } else {
                    i64::from(byte)
                }
            };
            let check = |got: u8, (want, tie): (i64, bool), what: &str| {
                let got = as_value(got);
                if tie {
                    assert!((got - want).abs() <= 1, "{what}: {got} against {want}");
                } else {
                    assert_eq!(got, want, "{what}");
                }
            };
            let multiplier = f64::from(scales[0]) * f64::from(scales[1]) * f64::from(out_scale);
            for a in 0..=255u8 {
                for b in 0..=255u8 {
                    let product = ((as_value(a) - i64::from(zeros[0]))
                        * (as_value(b) - i64::from(zeros[1])))
                        as f64;
                    check(k.scalar(a, b), exact(product, multiplier), "pair");
                }
                let v = side(1).value(77);
                let m = f64::from(scales[0]) * f64::from(v) * f64::from(out_scale);
                let centred = (as_value(a) - i64::from(zeros[0])) as f64;
                check(k.value_scalar(0, a, v), exact(centred, m), "value");
            }
        }
    }
}
