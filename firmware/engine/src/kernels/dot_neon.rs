//! The dot family on aarch64 NEON with the dot product: tiles of 8 output channels by 8
//! output positions.
//!
//! Per 4 k a tile loads its eight positions' bytes (two registers, four positions each)
//! and its eight channels' bytes (two registers, four channels each) with one two-register
//! LD1 each, then runs 16 SDOT by element: accumulator `[j][h]` adds, for positions
//! `4h..4h + 4`, their four bytes times channel `j`'s four bytes (lane `j % 4` of the
//! weight register `j / 4`). So each accumulator is one channel at four consecutive
//! positions, the layout of the channel rows of sums: a tile ends in 8 two-register stores
//! with no transpose. 16 accumulators and 4 operand registers fit the 32 vector registers.
//!
//! Rust's SDOT intrinsics are unstable (rust-lang/rust#117224), so the instruction is
//! written as one line of inline assembly and the compiler still allocates the registers.

use std::arch::aarch64::*;

use super::dot::{Weights, KC, MR, NR};

/// # Safety
/// The CPU has the dot product; `patches` holds `n.div_ceil(MR)` panels of
/// `weights.panel_len()` bytes and `c` holds `weights.channels() * n` sums
/// (`Weights::check`).
#[target_feature(enable = "dotprod")]
pub(super) unsafe fn run(weights: &Weights, patches: &[i8], n: usize, c: &mut [i32]) {
    let (packed, starts) = weights.raw();
    let channels = weights.channels();
    let groups = weights.k().div_ceil(KC);
    let panel_len = weights.panel_len();
    let group_len = groups * NR * KC;
    let p0 = patches.as_ptr();
    for q in 0..channels.div_ceil(NR) {
        // Each weight group is read from cache by every tile of the band.
        let w = packed[q * group_len..][..group_len].as_ptr();
        let starts: [i32; NR] = std::array::from_fn(|j| starts[q * NR + j]);
        let rows = (channels - q * NR).min(NR);
        // SAFETY (the loop): the caller's contract: `n.div_ceil(MR)` panels of `groups`
        // blocks of MR x 4 bytes; rows `q * NR..q * NR + rows` of `c` hold `n` sums each.
        let out = unsafe { c.as_mut_ptr().add(q * NR * n) };
        for (t, pos) in (0..n).step_by(MR).enumerate() {
            let sums = unsafe { tile(w, p0.add(t * panel_len), groups, &starts) };
            unsafe { store(&sums, out.add(pos), n, rows, (n - pos).min(MR)) };
        }
    }
}

/// Accumulator `[j][h]`: channel `j` at positions `4h..4h + 4`.
type Sums = [[int32x4_t; 2]; NR];

/// For the eight positions at `p` and the eight channels at `w` (blocks of 32 bytes on
/// both sides): each channel's start plus its sums at the eight positions.
#[target_feature(enable = "dotprod")]
#[inline]
unsafe fn tile(w: *const i8, p: *const i8, groups: usize, starts: &[i32; NR]) -> Sums {
    let mut acc: Sums = std::array::from_fn(|j| [vdupq_n_s32(starts[j]); 2]);
    // Two blocks per pass: the loop's own increments and branch are paid half as often
    // (a 16-deep 1x1 layer, the narrowest, has four blocks).
    let mut g = 0;
    while g + 2 <= groups {
        // SAFETY: the caller's contract: `groups` blocks of 32 bytes on both sides.
        unsafe {
            acc = block(acc, w.add(g * NR * KC), p.add(g * MR * KC));
            acc = block(acc, w.add((g + 1) * NR * KC), p.add((g + 1) * MR * KC));
        }
        g += 2;
    }
    if g < groups {
        // SAFETY: as above.
        acc = unsafe { block(acc, w.add(g * NR * KC), p.add(g * MR * KC)) };
    }
    acc
}

/// One 4-k block (32 bytes at `w` and at `p`) added to `acc`.
#[target_feature(enable = "dotprod")]
#[inline]
unsafe fn block(mut acc: Sums, w: *const i8, p: *const i8) -> Sums {
    // SAFETY: the caller's contract.
    let (a, b) = unsafe {
        (
            [vld1q_s8(p), vld1q_s8(p.add(16))],
            [vld1q_s8(w), vld1q_s8(w.add(16))],
        )
    };
    for (h, a) in a.into_iter().enumerate() {
        acc[0][h] = sdot::<0>(acc[0][h], a, b[0]);
        acc[1][h] = sdot::<1>(acc[1][h], a, b[0]);
        acc[2][h] = sdot::<2>(acc[2][h], a, b[0]);
        acc[3][h] = sdot::<3>(acc[3][h], a, b[0]);
        acc[4][h] = sdot::<0>(acc[4][h], a, b[1]);
        acc[5][h] = sdot::<1>(acc[5][h], a, b[1]);
        acc[6][h] = sdot::<2>(acc[6][h], a, b[1]);
        acc[7][h] = sdot::<3>(acc[7][h], a, b[1]);
    }
    acc
}

/// `acc` plus, per 32-bit lane `i`, the four bytes of lane `i` of `a` times the four bytes
/// of lane `L` of `b` (SDOT by element).
#[target_feature(enable = "dotprod")]
#[inline]
pub(super) fn sdot<const L: i32>(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: one register-to-register instruction of the dot-product extension, which
    // this function's target feature requires of the CPU.
    unsafe {
        std::arch::asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.4b[{lane}]",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            lane = const L,
            options(pure, nomem, nostack, preserves_flags),
        )
    };
    acc
}

/// `acc` plus, per 32-bit lane, the four bytes of that lane of `a` times those of `b`
/// (SDOT by vector).
#[target_feature(enable = "dotprod")]
#[inline]
pub(super) fn sdot_lanes(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: one register-to-register instruction of the dot-product extension, which
    // this function's target feature requires of the CPU.
    unsafe {
        std::arch::asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        )
    };
    acc
}

/// The channel rows of `sums` into `rows` rows of `c`, `n` apart, `cols` positions each.
#[inline(always)]
unsafe fn store(sums: &Sums, c: *mut i32, n: usize, rows: usize, cols: usize) {
    if rows == NR && cols == MR {
        // Every tile but those of a layer's last channels and last positions: two stores
        // a row, without a test per row. Single-register stores: a two-register ST1 would
        // need the pair in consecutive registers, which costs moves.
        let mut at = c;
        for row in sums {
            // SAFETY: the caller's contract.
            unsafe {
                vst1q_s32(at, row[0]);
                vst1q_s32(at.add(4), row[1]);
                at = at.add(n);
            }
        }
        return;
    }
    for (j, row) in sums.iter().enumerate().take(rows) {
        let mut lanes = [0i32; MR];
        // SAFETY: the caller's contract.
        unsafe {
            vst1q_s32(lanes.as_mut_ptr(), row[0]);
            vst1q_s32(lanes.as_mut_ptr().add(4), row[1]);
            let at = c.add(j * n);
            for (i, &v) in lanes.iter().enumerate().take(cols) {
                *at.add(i) = v;
            }
        }
    }
}
