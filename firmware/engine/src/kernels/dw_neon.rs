//! The depthwise family on aarch64 NEON: 16 output positions of one row per block, their
//! sums in four registers across every tap.
//!
//! Two ways to multiply a tap's 16 input bytes by its weight:
//! - **Grouped taps** (i8 weights): a group of taps' products go into the same 16-bit
//!   lanes (SMULL, SMULL2 of the first tap, then SMLAL, SMLAL2 of the others), and the
//!   group is added into the four 32-bit accumulators (SADDW, SADDW2). A lane holds the
//!   group's sum exactly when the magnitudes of its weights sum to at most
//!   [`LANE_BUDGET`](super::dw::LANE_BUDGET) (128 · 255 fits i16): two taps always do
//!   unless both weigh -128, and real kernels do more, one large weight beside smaller
//!   ones (`dw::schedule` orders a channel's taps at load so that they do). Per tap a
//!   load and two multiplies, per group four adds: 9 taps in groups of 3 take 39
//!   instructions per 16 positions, against 47 in pairs.
//! - **Widened taps** (a u8 weight less its zero point, up to ±255): the 16 bytes are
//!   widened to 16 bits (SXTL, SXTL2) and multiplied by the 16-bit weight by element into
//!   the accumulators (SMLAL, SMLAL2): 16 in 7 instructions.
//!
//! The common kernels (3x3, 5x5, 7x7) are compiled with their tap count and group size
//! fixed, so that the taps' offsets and weights stay in registers over a whole channel and
//! the groups unroll; each channel takes the largest group size its weights allow
//! (`dw::group_size`). A row's last block,
//! when shorter than 16 positions, is computed whole (its reads are within `READ_SLACK`)
//! and stored whole: its extra sums land on the next row's first positions, which are
//! stored again after it. Only at the end of the channel are the valid sums copied out of a
//! block.

use std::arch::aarch64::*;

use super::dw::{Taps, BLOCK};

/// # Safety
/// `dw::check` holds: `src` has `dw::needed` bytes and `out` `rows × cols` sums.
pub(super) unsafe fn run(
    src: &[i8],
    taps: &Taps,
    start: i32,
    shape: (usize, usize),
    out: &mut [i32],
) {
    // Per channel, from its own weights: which grouping the lanes hold.
    let group = super::dw::group_size(taps.weights);
    /// The kernel compiled for `T` taps in groups of `G` (0: widened), for the listed sizes.
    macro_rules! dispatch {
        ($($t:literal: [$($g:literal),+]),+) => {
            match (taps.offsets.len(), group) {
                $($(($t, $g) => fixed::<$t, $g>(src, taps, start, shape, out),)+)+
                (_, 0) => rows(src, taps.pitch, start, shape, out, |at, start| {
                    widened_block(at, taps.offsets, taps.weights, start)
                }),
                (_, group) => {
                    let splats: Vec<int8x16_t> =
                        taps.weights.iter().map(|&w| splat(w as i8)).collect();
                    rows(src, taps.pitch, start, shape, out, |at, start| {
                        grouped_block(at, taps.offsets, &splats, group, start)
                    })
                }
            }
        };
    }
    // SAFETY (each arm): the caller's contract, passed on; `group_size` holds every weight
    // in i8 and every group's products within its 16-bit lanes for a group size above 0.
    unsafe {
        dispatch!(
            9: [9, 5, 3, 2, 1, 0],
            25: [25, 13, 9, 7, 5, 4, 3, 2, 1, 0],
            49: [2, 1, 0]
        )
    }
}

/// `run` with the tap count and group size known at compile time, so that the taps'
/// offsets and weights stay in registers (those that fit) over the whole channel and the
/// groups are unrolled.
///
/// # Safety
/// As `run`; with `G` above 0, every weight is in i8 and each run of `G` taps (the last
/// shorter) has `Σ |w| ≤ LANE_BUDGET`.
#[inline(never)]
unsafe fn fixed<const T: usize, const G: usize>(
    src: &[i8],
    taps: &Taps,
    start: i32,
    shape: (usize, usize),
    out: &mut [i32],
) {
    let mut offsets = [0usize; T];
    let mut weights = [0i16; T];
    offsets.copy_from_slice(taps.offsets);
    weights.copy_from_slice(taps.weights);
    // SAFETY: the caller's contract.
    unsafe {
        if G > 0 {
            let splats: [int8x16_t; T] = std::array::from_fn(|t| splat(weights[t] as i8));
            rows(src, taps.pitch, start, shape, out, |at, start| {
                grouped_block(at, &offsets, &splats, G, start)
            })
        } else {
            rows(src, taps.pitch, start, shape, out, |at, start| {
                widened_block(at, &offsets, &weights, start)
            })
        }
    }
}

/// Every row's sums, 16 positions at a time by `block` (given where position 0 of the 16
/// reads and the start in every lane, it returns their sums).
///
/// # Safety
/// As `run`, with `block` reading at most the taps' offsets plus 16 from where it is given.
#[inline(always)]
pub(super) unsafe fn rows(
    src: &[i8],
    pitch: usize,
    start: i32,
    (rows, cols): (usize, usize),
    out: &mut [i32],
    block: impl Fn(*const i8, int32x4_t) -> [int32x4_t; 4],
) {
    let start = vdupq_n_s32(start);
    for oy in 0..rows {
        // SAFETY: row `oy` reads `src[oy · pitch + offset ..][.. cols rounded up to a
        // block]`, within `dw::needed`; it writes `out[oy · cols ..][.. cols]`, and whole
        // blocks only where they end within `out`.
        unsafe {
            let row = src.as_ptr().add(oy * pitch);
            let mut ox = 0;
            while ox < cols {
                let sums = block(row.add(ox), start);
                let at = oy * cols + ox;
                // A whole block is stored wherever it ends within `out`: a row's last block
                // then spills into the next row's first positions, stored again after it.
                if at + BLOCK <= out.len() {
                    let dst = out.as_mut_ptr().add(at);
                    for (i, s) in sums.iter().enumerate() {
                        vst1q_s32(dst.add(4 * i), *s);
                    }
                } else {
                    let mut tail = [0i32; BLOCK];
                    for (i, s) in sums.iter().enumerate() {
                        vst1q_s32(tail.as_mut_ptr().add(4 * i), *s);
                    }
                    let valid = (cols - ox).min(BLOCK);
                    out[at..at + valid].copy_from_slice(&tail[..valid]);
                }
                ox += BLOCK;
            }
        }
    }
}

/// `w` in all 16 lanes, as a value the compiler cannot see through: knowing it a splat,
/// LLVM keeps its low half in a register of its own, two registers per tap.
#[inline(always)]
fn splat(w: i8) -> int8x16_t {
    // SAFETY: NEON is part of aarch64; the asm is an empty instruction that only names the
    // register.
    unsafe {
        let mut v = vdupq_n_s8(w);
        std::arch::asm!(
            "/* {v:v} */",
            v = inout(vreg) v,
            options(pure, nomem, nostack, preserves_flags)
        );
        v
    }
}

/// The sums of the 16 positions from `at`, taps `group` at a time in 16-bit lanes (SMULL
/// and SMULL2 of a group's first tap, SMLAL and SMLAL2 of the others), each group then
/// added into the four 32-bit accumulators; `splats` holds each tap's weight in every lane.
///
/// # Safety
/// The caller's bounds; each run of `group` taps' products fits its 16-bit lanes.
#[inline(always)]
unsafe fn grouped_block(
    at: *const i8,
    offsets: &[usize],
    splats: &[int8x16_t],
    group: usize,
    start: int32x4_t,
) -> [int32x4_t; 4] {
    let mut acc = [start; 4];
    let mut t = 0;
    while t < offsets.len() {
        let end = (t + group).min(offsets.len());
        // SAFETY: the caller's bounds.
        let x = unsafe { vld1q_s8(at.add(offsets[t])) };
        // SAFETY: register-only NEON multiplies.
        let mut lo = unsafe { vmull_s8(vget_low_s8(x), vget_low_s8(splats[t])) };
        let mut hi = high_products(x, splats[t], None);
        for u in t + 1..end {
            // SAFETY: as above.
            let y = unsafe { vld1q_s8(at.add(offsets[u])) };
            lo = unsafe { vmlal_s8(lo, vget_low_s8(y), vget_low_s8(splats[u])) };
            hi = high_accumulate(hi, y, splats[u]);
        }
        add_widened(&mut acc, lo, hi);
        t = end;
    }
    acc
}

/// `p + y · wy` over the upper 8 lanes, in 16 bits (SMLAL2), as [`high_products`] writes
/// it.
#[inline(always)]
pub(super) fn high_accumulate(mut p: int16x8_t, y: int8x16_t, wy: int8x16_t) -> int16x8_t {
    // SAFETY: a register-only NEON multiply-add.
    unsafe {
        std::arch::asm!(
            "smlal2 {p:v}.8h, {y:v}.16b, {wy:v}.16b",
            p = inout(vreg) p,
            y = in(vreg) y,
            wy = in(vreg) wy,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
    p
}

/// `x · wx (+ y · wy)` in 16 bits, lanes 0-7 and 8-15: exact for one tap, and for two
/// whose weights are in [-127, 127] (2 · 128 · 127 fits). Shared with the channels-last
/// kernel (kernels/dwc_neon.rs), whose lanes are channels rather than positions.
#[inline(always)]
pub(super) fn products(
    x: int8x16_t,
    wx: int8x16_t,
    y: Option<(int8x16_t, int8x16_t)>,
) -> (int16x8_t, int16x8_t) {
    // SAFETY: register-only NEON multiplies; NEON is part of aarch64.
    let lo = unsafe {
        let low = vmull_s8(vget_low_s8(x), vget_low_s8(wx));
        match y {
            Some((y, wy)) => vmlal_s8(low, vget_low_s8(y), vget_low_s8(wy)),
            None => low,
        }
    };
    (lo, high_products(x, wx, y))
}

/// `x · wx (+ y · wy)` over the upper 8 lanes, in 16 bits (SMULL2, SMLAL2). Written as
/// assembly because LLVM hoists the upper half of the loop-invariant weights and then
/// needs an EXT of every input for a plain SMULL: an instruction more per tap.
#[inline(always)]
fn high_products(x: int8x16_t, wx: int8x16_t, y: Option<(int8x16_t, int8x16_t)>) -> int16x8_t {
    let p: int16x8_t;
    // SAFETY: register-only NEON multiplies.
    unsafe {
        match y {
            None => std::arch::asm!(
                "smull2 {p:v}.8h, {x:v}.16b, {wx:v}.16b",
                p = out(vreg) p,
                x = in(vreg) x,
                wx = in(vreg) wx,
                options(pure, nomem, nostack, preserves_flags)
            ),
            Some((y, wy)) => std::arch::asm!(
                "smull2 {p:v}.8h, {x:v}.16b, {wx:v}.16b",
                "smlal2 {p:v}.8h, {y:v}.16b, {wy:v}.16b",
                p = out(vreg) p,
                x = in(vreg) x,
                wx = in(vreg) wx,
                y = in(vreg) y,
                wy = in(vreg) wy,
                options(pure, nomem, nostack, preserves_flags)
            ),
        }
    }
    p
}

/// Adds 16 sums of 16 bits (positions 0-7 in `lo`, 8-15 in `hi`) into the accumulators.
#[inline(always)]
pub(super) fn add_widened(acc: &mut [int32x4_t; 4], lo: int16x8_t, hi: int16x8_t) {
    // SAFETY: NEON is part of aarch64; register operations only.
    unsafe {
        acc[0] = vaddw_s16(acc[0], vget_low_s16(lo));
        acc[1] = vaddw_high_s16(acc[1], lo);
        acc[2] = vaddw_s16(acc[2], vget_low_s16(hi));
        acc[3] = vaddw_high_s16(acc[3], hi);
    }
}

/// The sums of the 16 positions from `at`, one tap at a time by element (any weight).
#[inline(always)]
unsafe fn widened_block(
    at: *const i8,
    offsets: &[usize],
    weights: &[i16],
    start: int32x4_t,
) -> [int32x4_t; 4] {
    let mut acc = [start; 4];
    for (&o, &w) in offsets.iter().zip(weights) {
        // SAFETY: the caller's bounds.
        let x = unsafe { vld1q_s8(at.add(o)) };
        let lo = vmovl_s8(vget_low_s8(x));
        let hi = vmovl_high_s8(x);
        acc[0] = vmlal_n_s16(acc[0], vget_low_s16(lo), w);
        acc[1] = vmlal_high_n_s16(acc[1], lo, w);
        acc[2] = vmlal_n_s16(acc[2], vget_low_s16(hi), w);
        acc[3] = vmlal_high_n_s16(acc[3], hi, w);
    }
    acc
}

/// The whole 32- and 16-value chunks of `line` split into `evens` and `odds` (LD2, two
/// ST1); returns how many pairs were written.
pub(super) fn split2(line: &[i8], evens: &mut [i8], odds: &mut [i8]) -> usize {
    let pairs = (line.len() / 2).min(evens.len()).min(odds.len());
    let mut done = 0;
    while done + 16 <= pairs {
        // SAFETY: reads line[2 · done..][..32] and writes 16 values from `done` of each
        // half, all within `pairs`.
        unsafe {
            let pair = vld2q_s8(line.as_ptr().add(2 * done));
            vst1q_s8(evens.as_mut_ptr().add(done), pair.0);
            vst1q_s8(odds.as_mut_ptr().add(done), pair.1);
        }
        done += 16;
    }
    if done + 8 <= pairs {
        // SAFETY: as above, for 8 pairs.
        unsafe {
            let pair = vld2_s8(line.as_ptr().add(2 * done));
            vst1_s8(evens.as_mut_ptr().add(done), pair.0);
            vst1_s8(odds.as_mut_ptr().add(done), pair.1);
        }
        done += 8;
    }
    done
}
