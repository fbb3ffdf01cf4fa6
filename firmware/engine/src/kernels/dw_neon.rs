//! The depthwise family on aarch64 NEON: 16 output positions of one row per block, their
//! sums in four registers across every tap.
//!
//! Per tap a block loads 16 input bytes (LD1), widens them to 16 bits (SXTL, SXTL2) and
//! multiplies them by the tap's weight by element into the four accumulators (SMLAL,
//! SMLAL2): 16 multiply-adds in 7 instructions, against about 4 per multiply-add for a
//! loop that loads and stores the sums once per tap. The common kernels (3x3, 5x5, 7x7)
//! are compiled with their tap count fixed, so that the taps' offsets and weights stay in
//! registers over a whole channel. A row's last block, when shorter than 16 positions, is
//! computed whole (its reads are within `READ_SLACK`) and stored whole: its extra sums
//! land on the next row's first positions, which are stored again after it. Only at the
//! end of the channel are the valid sums copied out of a block.

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
    // SAFETY (each arm): the caller's contract, passed on.
    unsafe {
        match taps.offsets.len() {
            9 => fixed::<9>(src, taps, start, shape, out),
            25 => fixed::<25>(src, taps, start, shape, out),
            49 => fixed::<49>(src, taps, start, shape, out),
            _ => rows(
                src,
                taps.offsets,
                taps.weights,
                taps.pitch,
                start,
                shape,
                out,
            ),
        }
    }
}

/// `rows` with the tap count known at compile time.
#[inline(never)]
unsafe fn fixed<const T: usize>(
    src: &[i8],
    taps: &Taps,
    start: i32,
    shape: (usize, usize),
    out: &mut [i32],
) {
    let mut offsets = [0usize; T];
    let mut weights = [0i8; T];
    offsets.copy_from_slice(taps.offsets);
    weights.copy_from_slice(taps.weights);
    // SAFETY: the caller's contract.
    unsafe { rows(src, &offsets, &weights, taps.pitch, start, shape, out) }
}

#[inline(always)]
unsafe fn rows(
    src: &[i8],
    offsets: &[usize],
    weights: &[i8],
    pitch: usize,
    start: i32,
    (rows, cols): (usize, usize),
    out: &mut [i32],
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
                let sums = block(row.add(ox), offsets, weights, start);
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

/// The sums of the 16 positions from `at`.
#[inline(always)]
unsafe fn block(
    at: *const i8,
    offsets: &[usize],
    weights: &[i8],
    start: int32x4_t,
) -> [int32x4_t; 4] {
    let mut acc = [start; 4];
    for (&o, &w) in offsets.iter().zip(weights) {
        let w = i16::from(w);
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
