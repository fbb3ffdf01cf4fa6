//! The c16 family on aarch64 NEON: tiles of 4 output channels by 4 output positions.
//!
//! Per 16 k a tile loads its four positions' bytes and its four channels' bytes with one
//! four-register LD1 each, then for each of the 16 pairs multiplies the low halves into
//! 16-bit lanes (SMULL), adds the high halves' products (SMLAL2) and widens the lane pairs
//! into its 32-bit accumulator (SADALP): 256 multiply-adds in 50 instructions. 16
//! accumulators and 8 operand registers fit the 32 vector registers. At the end pairwise
//! adds fold the four positions' accumulators of one channel straight into that channel's
//! row of sums, with no transpose, and the channel's start is added to the row.

use std::arch::aarch64::*;

use super::c16::{Weights, KC, MR, NR};

/// Positions per tile: half a patch panel.
const TP: usize = MR / 2;

/// # Safety
/// `patches` holds `n.div_ceil(MR)` panels of `weights.panel_len()` bytes and `c` holds
/// `weights.channels() * n` sums (`Weights::check`).
pub(super) unsafe fn run(weights: &Weights, patches: &[i8], n: usize, c: &mut [i32]) {
    let (packed, start_lanes) = weights.raw();
    let channels = weights.channels();
    let groups = weights.k().div_ceil(KC);
    let panel_len = weights.panel_len();
    let group_len = groups * NR * KC;
    let p0 = patches.as_ptr();
    // Tile t reads positions 4t.. : half t % 2 of panel t / 2.
    let tile_at = |t: usize| (t / 2) * panel_len + (t % 2) * TP * KC;
    let (full, tail) = (n / TP, n % TP);
    for q in 0..channels.div_ceil(NR) {
        // Each weight group is read from cache by every tile of the band.
        let w = packed[q * group_len..][..group_len].as_ptr();
        // SAFETY: `start_lanes` holds four lanes per channel, padded to whole groups.
        let starts = unsafe { vld1q_s32_x4(start_lanes[q * NR * 4..].as_ptr()) };
        let starts = [starts.0, starts.1, starts.2, starts.3];
        let rows = (channels - q * NR).min(NR);
        // SAFETY (both loops): the caller's contract: `n.div_ceil(MR)` panels of `groups`
        // blocks of MR x 16 bytes, so every tile's four positions are inside `patches`;
        // rows `q * NR..q * NR + rows` of `c` hold `n` sums each.
        let out = unsafe { c.as_mut_ptr().add(q * NR * n) };
        for t in 0..full {
            let sums = unsafe { tile(w, p0.add(tile_at(t)), groups, starts) };
            unsafe { store(sums, out.add(t * TP), n, rows, TP) };
        }
        if tail != 0 {
            let sums = unsafe { tile(w, p0.add(tile_at(full)), groups, starts) };
            unsafe { store(sums, out.add(full * TP), n, rows, tail) };
        }
    }
}

/// For the four positions at `p` (16 bytes each per block, blocks `MR * 16` bytes apart)
/// and the four channels at `w` (blocks of `NR * 16` bytes): per channel, its start
/// (`starts`, one vector per channel) plus its sums at the four positions.
#[inline(always)]
unsafe fn tile(
    w: *const i8,
    p: *const i8,
    groups: usize,
    starts: [int32x4_t; NR],
) -> [int32x4_t; NR] {
    // The first block starts the sums (SADDLP) rather than adding to zeroed ones: a tile
    // of a 16-deep product (MobileNet's narrow 1x1 layers) saves 16 of its instructions.
    // SAFETY: the caller's contract: `groups` blocks on both sides, at least one.
    let mut acc = unsafe { block::<true>([[vdupq_n_s32(0); NR]; TP], w, p) };
    // Two blocks per pass: the loop's own instructions are 5 of a block's 57.
    let mut g = 1;
    while g + 1 < groups {
        // SAFETY: as above, blocks g and g + 1 < groups.
        unsafe {
            acc = block::<false>(acc, w.add(g * NR * KC), p.add(g * MR * KC));
            acc = block::<false>(acc, w.add((g + 1) * NR * KC), p.add((g + 1) * MR * KC));
        }
        g += 2;
    }
    if g < groups {
        // SAFETY: as above.
        acc = unsafe { block::<false>(acc, w.add(g * NR * KC), p.add(g * MR * KC)) };
    }
    // Channel j's row: lane i is the sum of position i's accumulator's four lanes.
    std::array::from_fn(|j| {
        vaddq_s32(
            addp(addp(acc[0][j], acc[1][j]), addp(acc[2][j], acc[3][j])),
            starts[j],
        )
    })
}

/// ADDP (`[a0 + a1, a2 + a3, b0 + b1, b2 + b3]`), written out: LLVM rewrites two levels of
/// `vpaddq_s32` into ADDP, UZP1, UZP2 and ADD, 24 instructions per tile instead of 12.
#[inline(always)]
fn addp(a: int32x4_t, b: int32x4_t) -> int32x4_t {
    let sum: int32x4_t;
    // SAFETY: one register-to-register NEON instruction; NEON is part of aarch64.
    unsafe {
        std::arch::asm!(
            "addp {s:v}.4s, {a:v}.4s, {b:v}.4s",
            s = lateout(vreg) sum,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        )
    };
    sum
}

/// One 16-k block of the tile added to `acc` (`acc[position][channel]`), or starting it
/// when `FIRST`.
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
            let products = products(a, b);
            *acc = if FIRST {
                vpaddlq_s16(products)
            } else {
                vpadalq_s16(*acc, products)
            };
        }
    }
    acc
}

/// The 16 products of `a` and `b` summed in pairs into 16-bit lanes: lane i is
/// `a[i] · b[i] + a[i + 8] · b[i + 8]` (SMULL, SMLAL2). Written out: LLVM turns SMLAL2 of a
/// weight that stays in a register across tiles (a 16-deep layer's) into EXT and SMLAL,
/// and the high halves it keeps crowd the tile's 32 registers into spills to the stack.
#[inline(always)]
fn products(a: int8x16_t, b: int8x16_t) -> int16x8_t {
    let sum: int16x8_t;
    // SAFETY: register-only NEON instructions; NEON is part of aarch64.
    unsafe {
        std::arch::asm!(
            "smull {s:v}.8h, {a:v}.8b, {b:v}.8b",
            "smlal2 {s:v}.8h, {a:v}.16b, {b:v}.16b",
            s = out(vreg) sum,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        )
    };
    sum
}

/// The channel rows `sums` into `rows` rows of `c`, `n` apart, `cols` positions each.
#[inline(always)]
unsafe fn store(sums: [int32x4_t; NR], c: *mut i32, n: usize, rows: usize, cols: usize) {
    if rows == NR && cols == TP {
        // Every tile but those of a layer's last channels and last positions: four stores,
        // without a test per row.
        for (j, row) in sums.iter().enumerate() {
            // SAFETY: the caller's contract.
            unsafe { vst1q_s32(c.add(j * n), *row) };
        }
        return;
    }
    for (j, row) in sums.iter().enumerate().take(rows) {
        let mut lanes = [0i32; TP];
        // SAFETY: the caller's contract.
        unsafe {
            vst1q_s32(lanes.as_mut_ptr(), *row);
            std::ptr::copy_nonoverlapping(lanes.as_ptr(), c.add(j * n), cols);
        }
    }
}
