//! The depthwise family on cores with the dot product (Cortex-A55, A76): 16 output
//! positions of one row per block, four taps per SDOT (kernels/dw.rs's [`DotGroups`] says
//! which four).
//!
//! SDOT adds to each 32-bit lane the products of its four bytes with four bytes of the
//! weights. A block's 16 sums are four registers, one position per lane; a group of four
//! taps needs, for every position, its four input bytes side by side:
//! - **Run** (consecutive offsets `base .. base + len`): the bytes of position p are
//!   `src[base + p ..][..len]`, a sliding window that one TBL per four positions cuts out
//!   of one 16-byte load (positions 12-15 from a second load 12 bytes on, so no index
//!   passes 15). Indices past `len` are out of the table, and TBL gives 0 for them. Two
//!   loads, four TBL and four SDOT per 16 positions and up to four taps.
//! - **Gather** (any four offsets): the four loads interleaved by bytes then by pairs (ZIP1,
//!   ZIP2 twice): four loads, eight zips, four SDOT.
//!
//! A 3x3 stride-1 layer is three runs of three taps: 30 instructions per block against
//! about 50 for the paired NEON taps (kernels/dw_neon.rs). The common layouts are compiled
//! with their runs per length and their gathers fixed, so that the table indices are
//! constants and the weights stay in registers over a channel. Sums are exact and wrap in
//! i32 as the other kernels' do. The row handling (whole blocks, a short last block
//! spilling into the next row) is dw_neon.rs's.

use std::arch::aarch64::*;

use super::dot_neon::sdot;
use super::dw::{DotGather, DotTaps, RUN_INDICES};

/// Four weights (tap k in byte k of `packed`) in lane 0, as SDOT by element reads them.
#[inline(always)]
fn splat(packed: i32) -> int8x16_t {
    // SAFETY: NEON is part of aarch64.
    unsafe { vreinterpretq_s8_s32(vdupq_n_s32(packed)) }
}

/// The table indices of a run of `len` taps, in registers.
#[inline(always)]
fn indices(len: usize) -> [uint8x16_t; 3] {
    // SAFETY: NEON is part of aarch64; 16-byte arrays read as 16 lanes.
    std::array::from_fn(|q| unsafe { vld1q_u8(RUN_INDICES[len][q].as_ptr()) })
}

/// `out[oy · cols + ox] = start + Σ_t w[t] · src[oy · pitch + offsets[t] + ox]` over the
/// taps of `dot`'s groups, with its packed weights.
///
/// # Safety
/// The CPU has the dot product; `dw::check` holds for these taps: `src` has `dw::needed`
/// bytes (with `READ_SLACK`, which covers a run's second load), `out` `rows × cols` sums,
/// and the groups are the taps' (`DotGroups::of_offsets`), with one packed weight each.
#[target_feature(enable = "dotprod")]
pub(super) unsafe fn run(
    src: &[i8],
    pitch: usize,
    dot: DotTaps,
    start: i32,
    shape: (usize, usize),
    out: &mut [i32],
) {
    let args = (src, pitch, dot, start, shape, out);
    // SAFETY (each arm): the caller's contract, passed on.
    unsafe {
        match dot.groups.counts() {
            // 3x3 of stride 1; 5x5 of stride 1; 5x5 of stride 2; 7x7 of stride 1 or 2.
            [0, 3, 0, 0] => fixed::<0, 3, 0, 0>(args),
            [5, 0, 0, 2] => fixed::<5, 0, 0, 2>(args),
            [0, 5, 5, 0] => fixed::<0, 5, 5, 0>(args),
            [7, 7, 0, 0] => fixed::<7, 7, 0, 0>(args),
            _ => any(args),
        }
    }
}

/// `run`'s arguments.
type Args<'a> = (
    &'a [i8],
    usize,
    DotTaps<'a>,
    i32,
    (usize, usize),
    &'a mut [i32],
);

/// `run` for a layout with `R4`, `R3` and `R2` runs of 4, 3 and 2 taps (in that order)
/// and `G` gathers, known at compile time.
///
/// # Safety
/// As `run`, with those counts.
#[target_feature(enable = "dotprod")]
#[inline(never)]
unsafe fn fixed<const R4: usize, const R3: usize, const R2: usize, const G: usize>(
    (src, pitch, dot, start, shape, out): Args,
) {
    let (runs, weights) = (&dot.groups.runs, dot.packed);
    let bases = |from: usize| move |i: usize| runs[from + i].base;
    let splats = |from: usize| move |i: usize| splat(weights[from + i]);
    let (b4, w4): ([usize; R4], [int8x16_t; R4]) = (
        std::array::from_fn(bases(0)),
        std::array::from_fn(splats(0)),
    );
    let (b3, w3): ([usize; R3], [int8x16_t; R3]) = (
        std::array::from_fn(bases(R4)),
        std::array::from_fn(splats(R4)),
    );
    let (b2, w2): ([usize; R2], [int8x16_t; R2]) = (
        std::array::from_fn(bases(R4 + R3)),
        std::array::from_fn(splats(R4 + R3)),
    );
    let gathers: [DotGather; G] = std::array::from_fn(|i| dot.groups.gathers[i]);
    let gw: [int8x16_t; G] = std::array::from_fn(splats(R4 + R3 + R2));
    let (i4, i3, i2) = (indices(4), indices(3), indices(2));
    // SAFETY: the caller's contract.
    unsafe {
        super::dw_neon::rows(src, pitch, start, shape, out, |at, start| {
            let mut acc = [start; 4];
            for i in 0..R4 {
                run_taps(&mut acc, at.add(b4[i]), &i4, w4[i]);
            }
            for i in 0..R3 {
                run_taps(&mut acc, at.add(b3[i]), &i3, w3[i]);
            }
            for i in 0..R2 {
                run_taps(&mut acc, at.add(b2[i]), &i2, w2[i]);
            }
            for i in 0..G {
                gather_taps(&mut acc, at, &gathers[i].offsets, gw[i]);
            }
            acc
        })
    }
}

/// `run` for any layout.
///
/// # Safety
/// As `run`.
#[target_feature(enable = "dotprod")]
#[inline(never)]
unsafe fn any((src, pitch, dot, start, shape, out): Args) {
    let groups = dot.groups;
    let (run_weights, gather_weights) = dot.packed.split_at(groups.runs.len());
    let runs: Vec<(usize, [uint8x16_t; 3], int8x16_t)> = groups
        .runs
        .iter()
        .zip(run_weights)
        .map(|(r, &w)| (r.base, indices(r.len), splat(w)))
        .collect();
    let gathers: Vec<([usize; 4], int8x16_t)> = groups
        .gathers
        .iter()
        .zip(gather_weights)
        .map(|(g, &w)| (g.offsets, splat(w)))
        .collect();
    // SAFETY: the caller's contract.
    unsafe {
        super::dw_neon::rows(src, pitch, start, shape, out, |at, start| {
            let mut acc = [start; 4];
            for (base, idx, w) in &runs {
                run_taps(&mut acc, at.add(*base), idx, *w);
            }
            for (offsets, w) in &gathers {
                gather_taps(&mut acc, at, offsets, *w);
            }
            acc
        })
    }
}

/// Adds a run's products at the 16 positions from `at` (its base) to `acc`.
///
/// # Safety
/// `at` and 28 bytes from it are within the plane.
#[target_feature(enable = "dotprod")]
#[inline]
unsafe fn run_taps(acc: &mut [int32x4_t; 4], at: *const i8, idx: &[uint8x16_t; 3], w: int8x16_t) {
    // SAFETY: the caller's bounds; register operations otherwise.
    unsafe {
        let (first, last) = (vld1q_s8(at), vld1q_s8(at.add(12)));
        let parts = [
            vqtbl1q_s8(first, idx[0]),
            vqtbl1q_s8(first, idx[1]),
            vqtbl1q_s8(first, idx[2]),
            vqtbl1q_s8(last, idx[0]),
        ];
        for (a, p) in acc.iter_mut().zip(parts) {
            *a = sdot::<0>(*a, p, w);
        }
    }
}

/// Adds a gather's products at the 16 positions from `at` to `acc`.
///
/// # Safety
/// 16 bytes from `at` plus each offset are within the plane.
#[target_feature(enable = "dotprod")]
#[inline]
unsafe fn gather_taps(acc: &mut [int32x4_t; 4], at: *const i8, offsets: &[usize; 4], w: int8x16_t) {
    // SAFETY: the caller's bounds; register operations otherwise.
    unsafe {
        let [x0, x1, x2, x3] = offsets.map(|o| vld1q_s8(at.add(o)));
        let (lo01, hi01) = (vzip1q_s8(x0, x1), vzip2q_s8(x0, x1));
        let (lo23, hi23) = (vzip1q_s8(x2, x3), vzip2q_s8(x2, x3));
        let quads = |a: int8x16_t, b: int8x16_t| {
            let (a, b) = (vreinterpretq_s16_s8(a), vreinterpretq_s16_s8(b));
            [
                vreinterpretq_s8_s16(vzip1q_s16(a, b)),
                vreinterpretq_s8_s16(vzip2q_s16(a, b)),
            ]
        };
        let [p0, p1] = quads(lo01, lo23);
        let [p2, p3] = quads(hi01, hi23);
        for (a, p) in acc.iter_mut().zip([p0, p1, p2, p3]) {
            *a = sdot::<0>(*a, p, w);
        }
    }
}
