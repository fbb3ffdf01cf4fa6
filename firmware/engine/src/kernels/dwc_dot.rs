//! The channels-last depthwise family's quads on cores with the dot product (Cortex-A55,
//! A76; kernels/dwc.rs's [`Quads`] has the layout).
//!
//! The expansion (kernels/dwc.rs) writes each position's four taps side by side with one
//! ST4 (kernels/dwc_neon.rs). [`run`] takes a row one group of 16 channels at a time,
//! two positions at a time: per quad, the 64 weight bytes (in registers for the whole
//! row when the kernel has at most three quads: a 3x3 kernel), the two positions' 64
//! bytes, and four SDOT per position (by vector: lane j of the sums adds channel
//! 4k + j's four products).

use std::arch::aarch64::*;

use super::dot_neon::sdot_lanes as sdot;
use super::dwc::{Quads, LANES};

/// Bytes per group of 16 channels at one expanded position.
const GROUP: usize = 4 * LANES;

/// # Safety
/// The CPU has the dot product; `Quads::check` holds for these operands: every position's
/// reads (`ox · step + offsets[q] + 64g`, 64 bytes) are inside `src` and its sums inside
/// `acc`.
#[target_feature(enable = "dotprod")]
pub(super) unsafe fn run(
    w: &Quads,
    src: &[i8],
    offsets: &[usize],
    step: usize,
    cols: usize,
    acc: &mut [i32],
) {
    let (packed, starts) = w.raw();
    let cp = w.padded_channels();
    let quads = offsets.len();
    for g in 0..cp / LANES {
        // SAFETY: the caller's contract: group g has `quads` × 64 weight bytes and 16
        // starts; every position's reads are inside `src` and its sums inside `acc`.
        unsafe {
            let wg = packed.as_ptr().add(g * quads * GROUP);
            let s = vld1q_s32_x4(starts.as_ptr().add(g * LANES));
            let start = [s.0, s.1, s.2, s.3];
            let (p, out) = (src.as_ptr().add(g * GROUP), acc.as_mut_ptr().add(g * LANES));
            let rows = (p, out, step, cp, cols);
            if quads <= 3 {
                // A 3x3 kernel's weights stay in registers for the whole row.
                let mut ws = [[vdupq_n_s8(0); 4]; 3];
                for (q, ws) in ws.iter_mut().enumerate().take(quads) {
                    *ws = weights(wg, q);
                }
                row(rows, &offsets[..quads], |q| ws[q], start);
            } else {
                row(rows, offsets, |q| weights(wg, q), start);
            }
        }
    }
}

/// Quad q's 64 weight bytes from `wg`.
///
/// # Safety
/// `wg` holds `(q + 1) · 64` bytes.
#[inline(always)]
unsafe fn weights(wg: *const i8, q: usize) -> [int8x16_t; 4] {
    // SAFETY: the caller's contract.
    let v = unsafe { vld1q_s8_x4(wg.add(q * GROUP)) };
    [v.0, v.1, v.2, v.3]
}

/// One group's sums over a row of `cols` positions: four at a time when the weights are
/// loaded per quad (each load then serves four positions), two at a time when they stay
/// in registers (four would not leave registers for the sums), then the rest.
///
/// # Safety
/// As `run`'s, for the group at `p` and `out`.
#[target_feature(enable = "dotprod")]
#[inline]
unsafe fn row(
    (p, out, step, cp, cols): (*const i8, *mut i32, usize, usize, usize),
    at: &[usize],
    weight: impl Fn(usize) -> [int8x16_t; 4],
    start: [int32x4_t; 4],
) {
    let rows = (p, out, step, cp);
    let mut ox = 0;
    // SAFETY (every call): the caller's contract, for positions ox.. below `cols`.
    unsafe {
        if at.len() > 3 {
            while ox + 4 <= cols {
                positions::<4>(rows, ox, at, &weight, start);
                ox += 4;
            }
        }
        while ox + 2 <= cols {
            positions::<2>(rows, ox, at, &weight, start);
            ox += 2;
        }
        if ox < cols {
            positions::<1>(rows, ox, at, &weight, start);
        }
    }
}

/// The sums of positions `ox..ox + P` of one group, stored.
///
/// # Safety
/// As `run`'s, for these positions of the group at `p` and `out`.
#[target_feature(enable = "dotprod")]
#[inline]
unsafe fn positions<const P: usize>(
    (p, out, step, cp): (*const i8, *mut i32, usize, usize),
    ox: usize,
    at: &[usize],
    weight: &impl Fn(usize) -> [int8x16_t; 4],
    start: [int32x4_t; 4],
) {
    let mut sums = [start; P];
    for (q, &off) in at.iter().enumerate() {
        let w = weight(q);
        for (i, sums) in sums.iter_mut().enumerate() {
            // SAFETY: the caller's contract.
            let x = unsafe { vld1q_s8_x4(p.add((ox + i) * step + off)) };
            let x = [x.0, x.1, x.2, x.3];
            for k in 0..4 {
                sums[k] = sdot(sums[k], x[k], w[k]);
            }
        }
    }
    for (i, sums) in sums.iter().enumerate() {
        // Single-register stores: a four-register ST1 needs its sums in consecutive
        // registers, which costs moves.
        for (k, s) in sums.iter().enumerate() {
            // SAFETY: the caller's contract: 16 sums at the position's place.
            unsafe { vst1q_s32(out.add((ox + i) * cp + 4 * k), *s) };
        }
    }
}
