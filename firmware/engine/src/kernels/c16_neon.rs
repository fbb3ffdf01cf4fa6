//! The c16 family on aarch64 NEON: tiles of 4 output channels by 4 output positions.
//!
//! Per 16 k a tile loads its four positions' bytes and its four channels' bytes with one
//! four-register LD1 each, then for each of the 16 pairs multiplies the low halves into
//! 16-bit lanes (SMULL), adds the high halves' products (SMLAL2) and widens the lane pairs
//! into its 32-bit accumulator (SADALP): 256 multiply-adds in 50 instructions. 16
//! accumulators and 8 operand registers fit the 32 vector registers. At the end pairwise
//! adds fold each accumulator's four lanes, a 4x4 transpose turns the positions' vectors
//! into channel rows, and they are stored into the row-major sums.

use std::arch::aarch64::*;

use super::c16::{Weights, KC, MR, NR};

/// Positions per tile: half a patch panel.
const TP: usize = MR / 2;

/// # Safety
/// `patches` holds `n.div_ceil(MR)` panels of `weights.panel_len()` bytes and `c` holds
/// `weights.channels() * n` sums (`Weights::check`).
pub(super) unsafe fn run(weights: &Weights, patches: &[i8], n: usize, c: &mut [i32]) {
    let (packed, starts) = weights.raw();
    let channels = weights.channels();
    let groups = weights.k().div_ceil(KC);
    let panel_len = weights.panel_len();
    let group_len = groups * NR * KC;
    for q in 0..channels.div_ceil(NR) {
        // Each weight group is read from cache by every tile of the band.
        let w = packed[q * group_len..][..group_len].as_ptr();
        // SAFETY: `starts` is padded to whole groups.
        let start = unsafe { vld1q_s32(starts[q * NR..].as_ptr()) };
        let rows = (channels - q * NR).min(NR);
        for first in (0..n).step_by(TP) {
            let p = patches[(first / MR) * panel_len + (first % MR) * KC..].as_ptr();
            // SAFETY: the panel holds `groups` blocks of MR x 16 bytes from its start, and
            // this tile's four positions start `first % MR` positions in.
            let sums = unsafe { tile(w, p, groups) };
            let cols = (n - first).min(TP);
            // SAFETY: rows `q * NR..q * NR + rows` of `c`, positions `first..first + cols`.
            unsafe {
                store(
                    sums,
                    start,
                    c.as_mut_ptr().add(q * NR * n + first),
                    n,
                    rows,
                    cols,
                )
            };
        }
    }
}

/// For the four positions at `p` (16 bytes each per block, blocks `MR * 16` bytes apart)
/// and the four channels at `w` (blocks of `NR * 16` bytes): per position, the four
/// channels' sums.
#[inline(always)]
unsafe fn tile(w: *const i8, p: *const i8, groups: usize) -> [int32x4_t; TP] {
    // The first block starts the sums (SADDLP) rather than adding to zeroed ones: a tile
    // of a 16-deep product (MobileNet's narrow 1x1 layers) saves 16 of its ~85 instructions.
    // SAFETY: the caller's contract: `groups` blocks on both sides, at least one.
    let mut acc = unsafe { block::<true>([[vdupq_n_s32(0); NR]; TP], w, p) };
    for g in 1..groups {
        // SAFETY: as above.
        acc = unsafe { block::<false>(acc, w.add(g * NR * KC), p.add(g * MR * KC)) };
    }
    acc.map(|[c0, c1, c2, c3]| vpaddq_s32(vpaddq_s32(c0, c1), vpaddq_s32(c2, c3)))
}

/// One 16-k block of the tile added to `acc` (or starting it, when `FIRST`).
#[inline(always)]
unsafe fn block<const FIRST: bool>(
    mut acc: [[int32x4_t; NR]; TP],
    w: *const i8,
    p: *const i8,
) -> [[int32x4_t; NR]; TP] {
    // SAFETY: the caller's contract: 64 bytes on both sides.
    let (a, b) = unsafe { (vld1q_s8_x4(p), vld1q_s8_x4(w)) };
    let a = [a.0, a.1, a.2, a.3];
    let b = [b.0, b.1, b.2, b.3];
    for (acc, a) in acc.iter_mut().zip(a) {
        for (acc, b) in acc.iter_mut().zip(b) {
            let products = vmull_s8(vget_low_s8(a), vget_low_s8(b));
            let products = vmlal_high_s8(products, a, b);
            *acc = if FIRST {
                vpaddlq_s16(products)
            } else {
                vpadalq_s16(*acc, products)
            };
        }
    }
    acc
}

/// `sums[pos]` (four channels each) plus `start`, as `rows` channel rows `n` apart from
/// `c`, `cols` positions each.
#[inline(always)]
unsafe fn store(
    sums: [int32x4_t; TP],
    start: int32x4_t,
    c: *mut i32,
    n: usize,
    rows: usize,
    cols: usize,
) {
    let [p0, p1, p2, p3] = sums.map(|s| vaddq_s32(s, start));
    // Transpose: row j holds channel j at the four positions.
    let (t0, t1) = (vtrn1q_s32(p0, p1), vtrn2q_s32(p0, p1));
    let (t2, t3) = (vtrn1q_s32(p2, p3), vtrn2q_s32(p2, p3));
    let wide = |v: int32x4_t| vreinterpretq_s64_s32(v);
    let narrow = |v: int64x2_t| vreinterpretq_s32_s64(v);
    let channel_rows = [
        narrow(vtrn1q_s64(wide(t0), wide(t2))),
        narrow(vtrn1q_s64(wide(t1), wide(t3))),
        narrow(vtrn2q_s64(wide(t0), wide(t2))),
        narrow(vtrn2q_s64(wide(t1), wide(t3))),
    ];
    for (j, row) in channel_rows.iter().enumerate().take(rows) {
        // SAFETY: the caller's contract.
        let at = unsafe { c.add(j * n) };
        if cols == TP {
            unsafe { vst1q_s32(at, *row) };
        } else {
            let mut lanes = [0i32; TP];
            unsafe { vst1q_s32(lanes.as_mut_ptr(), *row) };
            for (i, v) in lanes.iter().enumerate().take(cols) {
                unsafe { at.add(i).write(*v) };
            }
        }
    }
}
