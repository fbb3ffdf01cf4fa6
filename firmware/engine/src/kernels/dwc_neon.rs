//! The channels-last depthwise family on aarch64 NEON (kernels/dwc.rs has the layout).
//!
//! A row's sums run one group of 16 channels at a time (a 3x3 kernel's weights in
//! registers for the whole row), two positions at a time, each position's four 32-bit sums
//! in registers across all its taps. The group's taps come in runs whose products share
//! 16-bit lanes (`Weights::new` ordered them so, `dw::schedule_lanes`): per tap and
//! position a load of 16 channels' bytes and SMULL/SMULL2 (the run's first tap) or
//! SMLAL/SMLAL2 (the others), per run four SADDW into the sums. A 5x5 kernel of
//! EfficientNet-Lite0 takes runs of 3 or 4 taps where pairs took 13 runs.

use std::arch::aarch64::*;

use super::dw_neon::{add_widened, high_accumulate, products};
use super::dwc::{Arranged, Bytes16, Weights, LANES};

/// # Safety
/// `Weights::check` holds for these operands (`offsets` arranged by `Weights::arrange`).
pub(super) unsafe fn run(
    w: &Weights,
    src: &[i8],
    offsets: &Arranged,
    step: usize,
    cols: usize,
    acc: &mut [i32],
) {
    let (packed, starts) = w.raw();
    let (cp, taps) = (w.padded_channels(), w.taps());
    let offsets = offsets.offsets();
    for (g, &run) in w.runs().iter().enumerate().take(cp / LANES) {
        // SAFETY: the caller's contract: group g has `taps` × 16 weights and 16 starts;
        // every position's reads (`ox · step + offsets[g · taps + i] + g · 16`, 16 bytes)
        // are inside `src` and its 16 sums inside `acc`; `Weights::new` made each run of
        // `run` taps fit the 16-bit lanes.
        unsafe {
            let wg = packed.as_ptr().add(g * taps * LANES);
            let s = vld1q_s32_x4(starts.as_ptr().add(g * LANES));
            let start = [s.0, s.1, s.2, s.3];
            let (p, out) = (src.as_ptr().add(g * LANES), acc.as_mut_ptr().add(g * LANES));
            let at = &offsets[g * taps..(g + 1) * taps];
            /// The row with runs of `$g` taps, 3x3 weights in registers.
            macro_rules! rows {
                ($($g:literal),+) => {
                    match (taps, run) {
                        $((9, $g) => {
                            let ws: [int8x16_t; 9] =
                                std::array::from_fn(|t| vld1q_s8(wg.add(t * LANES)));
                            row::<$g>(p, out, (step, cp), cols, at, |t| ws[t], start)
                        })+
                        $((_, $g) => {
                            let weight = |t: usize| vld1q_s8(wg.add(t * LANES));
                            row::<$g>(p, out, (step, cp), cols, at, weight, start)
                        })+
                        _ => {
                            let weight = |t: usize| vld1q_s8(wg.add(t * LANES));
                            row::<1>(p, out, (step, cp), cols, at, weight, start)
                        }
                    }
                };
            }
            rows!(1, 2, 3, 4, 5, 7, 9, 13, 25)
        }
    }
}

/// One group's sums over a row of `cols` positions, two positions at a time (each tap's
/// weights serve both), taps in runs of `G` into 16-bit lanes.
///
/// # Safety
/// As `run`'s, for the group at `p` and `out`.
#[inline(always)]
unsafe fn row<const G: usize>(
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
        let [a, b] = unsafe { sums::<2, G>(p.add(ox * step), step, at, &weight, start) };
        // SAFETY: as above.
        unsafe {
            store(out.add(ox * cp), a);
            store(out.add((ox + 1) * cp), b);
        }
        ox += 2;
    }
    if ox < cols {
        // SAFETY: the caller's contract, for position ox.
        let [a] = unsafe { sums::<1, G>(p.add(ox * step), step, at, &weight, start) };
        // SAFETY: as above.
        unsafe { store(out.add(ox * cp), a) };
    }
}

/// The sums of `P` consecutive positions (`step` bytes apart) from `start`, the taps in
/// runs of `G` (the last run shorter): each run's products summed in 16-bit lanes, then
/// added into the 32-bit sums.
///
/// # Safety
/// Every position's reads are inside the caller's input; every run of `G` taps fits the
/// 16-bit lanes.
#[inline(always)]
unsafe fn sums<const P: usize, const G: usize>(
    p: *const i8,
    step: usize,
    at: &[usize],
    weight: &impl Fn(usize) -> int8x16_t,
    start: [int32x4_t; 4],
) -> [[int32x4_t; 4]; P] {
    let mut sums = [start; P];
    let (taps, offsets) = (at.len(), at.as_ptr());
    let mut t = 0;
    while t + G <= taps {
        // SAFETY: the caller's contract; taps t..t + G are within `at`.
        unsafe { taps_run::<P, G>(&mut sums, p, step, offsets.add(t), |u| weight(t + u)) };
        t += G;
    }
    // The last, shorter run.
    macro_rules! last {
        ($($len:literal),+) => {
            match taps - t {
                0 => {}
                // SAFETY (each): as above, for the taps left.
                $($len => unsafe {
                    taps_run::<P, $len>(&mut sums, p, step, offsets.add(t), |u| weight(t + u))
                },)+
                _ => {
                    for u in t..taps {
                        // SAFETY: as above, one tap at a time.
                        unsafe {
                            taps_run::<P, 1>(&mut sums, p, step, offsets.add(u), |_| weight(u))
                        };
                    }
                }
            }
        };
    }
    last!(1, 2, 3, 4, 5, 6, 7, 8);
    sums
}

/// One run of `L` taps (at offsets `at[0..L]`, weights `weight(u)`) for `P` positions:
/// their products in 16-bit lanes, then added into the sums.
///
/// # Safety
/// As [`sums`]'s; `at` holds `L` offsets; the run fits the 16-bit lanes.
#[inline(always)]
unsafe fn taps_run<const P: usize, const L: usize>(
    sums: &mut [[int32x4_t; 4]; P],
    p: *const i8,
    step: usize,
    at: *const usize,
    weight: impl Fn(usize) -> int8x16_t,
) {
    // SAFETY (the loads): the caller's contract.
    let x = |q: usize, u: usize| unsafe { vld1q_s8(p.add(q * step + *at.add(u))) };
    let w0 = weight(0);
    let mut lanes: [(int16x8_t, int16x8_t); P] =
        std::array::from_fn(|q| products(x(q, 0), w0, None));
    for u in 1..L {
        let wu = weight(u);
        for (q, (lo, hi)) in lanes.iter_mut().enumerate() {
            let x = x(q, u);
            // SAFETY: register-only NEON multiply-adds.
            *lo = unsafe { vmlal_s8(*lo, vget_low_s8(x), vget_low_s8(wu)) };
            *hi = high_accumulate(*hi, x, wu);
        }
    }
    for (sums, (lo, hi)) in sums.iter_mut().zip(lanes) {
        add_widened(sums, lo, hi);
    }
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
                d[i] = vreinterpretq_u8_u64(vzip1q_u64(x, y));
                d[i + 8] = vreinterpretq_u8_u64(vzip2q_u64(x, y));
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
