//! The channels-last depthwise family on aarch64 NEON (kernels/dwc.rs has the layout).
//!
//! A row's sums run one group of 16 channels at a time (a 3x3 kernel's weights in
//! registers for the whole row), two positions at a time, each position's four 32-bit sums
//! in registers across all its taps. Per pair of taps and position: two loads of 16
//! channels' bytes, SMULL/SMULL2 of the first tap's, SMLAL/SMLAL2 of the second's into the
//! same 16-bit lanes, and four SADDW into the sums.

use std::arch::aarch64::*;

use super::dw_neon::{add_widened, products};
use super::dwc::{Bytes16, Weights, LANES};

/// # Safety
/// `Weights::check` holds for these operands.
pub(super) unsafe fn run(
    w: &Weights,
    src: &[i8],
    offsets: &[usize],
    step: usize,
    cols: usize,
    acc: &mut [i32],
) {
    let (packed, starts) = w.raw();
    let (cp, taps) = (w.padded_channels(), w.taps());
    for g in 0..cp / LANES {
        // SAFETY: the caller's contract: group g has `taps` × 16 weights and 16 starts;
        // every position's reads (`ox · step + offsets[t] + g · 16`, 16 bytes) are inside
        // `src` and its 16 sums inside `acc`.
        unsafe {
            let wg = packed.as_ptr().add(g * taps * LANES);
            let s = vld1q_s32_x4(starts.as_ptr().add(g * LANES));
            let start = [s.0, s.1, s.2, s.3];
            let (p, out) = (src.as_ptr().add(g * LANES), acc.as_mut_ptr().add(g * LANES));
            if taps == 9 {
                // A 3x3 kernel's weights stay in registers for the whole row.
                let ws: [int8x16_t; 9] = std::array::from_fn(|t| vld1q_s8(wg.add(t * LANES)));
                row(p, out, (step, cp), cols, &offsets[..9], |t| ws[t], start);
            } else {
                let weight = |t: usize| vld1q_s8(wg.add(t * LANES));
                row(p, out, (step, cp), cols, offsets, weight, start);
            }
        }
    }
}

/// One group's sums over a row of `cols` positions, two positions at a time (each pair of
/// taps' weights serves both).
///
/// # Safety
/// As `run`'s, for the group at `p` and `out`.
#[inline(always)]
unsafe fn row(
    p: *const i8,
    out: *mut i32,
    (step, cp): (usize, usize),
    cols: usize,
    at: &[usize],
    weight: impl Fn(usize) -> int8x16_t,
    start: [int32x4_t; 4],
) {
    let store = |out: *mut i32, s: [int32x4_t; 4]| {
        // SAFETY: the caller's contract: 16 sums at `out`.
        unsafe { vst1q_s32_x4(out, int32x4x4_t(s[0], s[1], s[2], s[3])) }
    };
    let mut ox = 0;
    while ox + 2 <= cols {
        // SAFETY: the caller's contract, for positions ox and ox + 1.
        let [a, b] = unsafe { sums::<2>(p.add(ox * step), step, at, &weight, start) };
        // SAFETY: as above.
        unsafe {
            store(out.add(ox * cp), a);
            store(out.add((ox + 1) * cp), b);
        }
        ox += 2;
    }
    if ox < cols {
        // SAFETY: the caller's contract, for position ox.
        let [a] = unsafe { sums::<1>(p.add(ox * step), step, at, &weight, start) };
        // SAFETY: as above.
        unsafe { store(out.add(ox * cp), a) };
    }
}

/// The sums of `P` consecutive positions (`step` bytes apart) from `start`.
///
/// # Safety
/// Every position's reads are inside the caller's input.
#[inline(always)]
unsafe fn sums<const P: usize>(
    p: *const i8,
    step: usize,
    at: &[usize],
    weight: &impl Fn(usize) -> int8x16_t,
    start: [int32x4_t; 4],
) -> [[int32x4_t; 4]; P] {
    let mut sums = [start; P];
    let pair = |sums: &mut [[int32x4_t; 4]; P], t: usize| {
        let (wa, wb) = (weight(t), weight(t + 1));
        for (q, sums) in sums.iter_mut().enumerate() {
            // SAFETY: the caller's contract.
            let (xa, xb) = unsafe {
                let x = p.add(q * step);
                (vld1q_s8(x.add(at[t])), vld1q_s8(x.add(at[t + 1])))
            };
            let (lo, hi) = products(xa, wa, Some((xb, wb)));
            add_widened(sums, lo, hi);
        }
    };
    // Two pairs per pass: a 5x5 kernel's loop control was 5 of a pair's 27 instructions.
    let mut t = 0;
    while t + 3 < at.len() {
        pair(&mut sums, t);
        pair(&mut sums, t + 2);
        t += 4;
    }
    while t + 1 < at.len() {
        pair(&mut sums, t);
        t += 2;
    }
    if t < at.len() {
        let w = weight(t);
        for (q, sums) in sums.iter_mut().enumerate() {
            // SAFETY: the caller's contract.
            let x = unsafe { vld1q_s8(p.add(q * step + at[t])) };
            let (lo, hi) = products(x, w, None);
            add_widened(sums, lo, hi);
        }
    }
    sums
}

/// The channel copies' and the quads' expansion's 16 bytes on NEON.
impl Bytes16 for uint8x16_t {
    #[inline(always)]
    unsafe fn load(p: *const u8) -> Self {
        // SAFETY: the caller's contract.
        unsafe { vld1q_u8(p) }
    }

    #[inline(always)]
    unsafe fn store(self, p: *mut u8) {
        // SAFETY: the caller's contract.
        unsafe { vst1q_u8(p, self) }
    }

    /// TRN1/TRN2 at bytes, then halfwords, words and doublewords (64 instructions).
    #[inline(always)]
    fn transpose(r: [uint8x16_t; 16]) -> [uint8x16_t; 16] {
        // SAFETY: register-only NEON instructions; NEON is part of aarch64.
        unsafe {
            let mut a = r;
            for i in 0..8 {
                a[2 * i] = vtrn1q_u8(r[2 * i], r[2 * i + 1]);
                a[2 * i + 1] = vtrn2q_u8(r[2 * i], r[2 * i + 1]);
            }
            let mut b = [vdupq_n_u16(0); 16];
            for g in (0..16).step_by(4) {
                for i in g..g + 2 {
                    let (x, y) = (vreinterpretq_u16_u8(a[i]), vreinterpretq_u16_u8(a[i + 2]));
                    b[i] = vtrn1q_u16(x, y);
                    b[i + 2] = vtrn2q_u16(x, y);
                }
            }
            let mut c = [vdupq_n_u32(0); 16];
            for g in (0..16).step_by(8) {
                for i in g..g + 4 {
                    let (x, y) = (vreinterpretq_u32_u16(b[i]), vreinterpretq_u32_u16(b[i + 4]));
                    c[i] = vtrn1q_u32(x, y);
                    c[i + 4] = vtrn2q_u32(x, y);
                }
            }
            let mut d = r;
            for i in 0..8 {
                let (x, y) = (vreinterpretq_u64_u32(c[i]), vreinterpretq_u64_u32(c[i + 8]));
                d[i] = vreinterpretq_u8_u64(vtrn1q_u64(x, y));
                d[i + 8] = vreinterpretq_u8_u64(vtrn2q_u64(x, y));
            }
            d
        }
    }

    /// One ST4.
    #[inline(always)]
    unsafe fn store_interleaved(taps: [Self; 4], p: *mut u8) {
        // SAFETY: the caller's contract.
        unsafe { vst4q_u8(p, uint8x16x4_t(taps[0], taps[1], taps[2], taps[3])) }
    }
}
