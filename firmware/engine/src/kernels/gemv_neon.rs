//! The matrix-vector family (kernels/gemv.rs) on aarch64 NEON: a group of 8 rows at a
//! time, each row's sums in one register of four 32-bit lanes, added across at the end
//! (two rounds of ADDP give the four sums of four rows in one register).

use std::arch::aarch64::*;

use super::gemv::{Weights, KC, NR};

/// The 8 rows' registers of four sums as 8 sums, plus the rows' starts, into `out` (its
/// first `rows` values).
///
/// # Safety
/// Eight starts at `starts`; `rows` values at `out`.
#[inline(always)]
unsafe fn finish(acc: [int32x4_t; NR], starts: *const i32, out: *mut i32, rows: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        let low = vpaddq_s32(vpaddq_s32(acc[0], acc[1]), vpaddq_s32(acc[2], acc[3]));
        let high = vpaddq_s32(vpaddq_s32(acc[4], acc[5]), vpaddq_s32(acc[6], acc[7]));
        let low = vaddq_s32(low, vld1q_s32(starts));
        let high = vaddq_s32(high, vld1q_s32(starts.add(4)));
        if rows == NR {
            vst1q_s32(out, low);
            vst1q_s32(out.add(4), high);
        } else {
            let mut sums = [0i32; NR];
            vst1q_s32(sums.as_mut_ptr(), low);
            vst1q_s32(sums.as_mut_ptr().add(4), high);
            super::panels::put_part(sums.as_ptr(), out, rows);
        }
    }
}

/// Without the dot product: per block, each row's 16 bytes times the vector's, low halves
/// by SMULL and high halves by SMLAL2 into eight 16-bit lanes, widened pairwise into its
/// four sums by SADALP.
///
/// # Safety
/// `x` holds `weights.k()` padded to whole blocks, `out` one value per row
/// (`Weights::run` checks both).
#[inline(never)]
pub(super) unsafe fn run(weights: &Weights, x: &[i8], out: &mut [i32]) {
    let (packed, starts) = weights.raw();
    let groups = weights.k().div_ceil(KC);
    let rows = weights.rows();
    for q in 0..rows.div_ceil(NR) {
        let w = packed[q * groups * NR * KC..][..groups * NR * KC].as_ptr();
        let mut acc = [unsafe { vdupq_n_s32(0) }; NR];
        // SAFETY: `groups` blocks of the vector and of this group's 8 rows.
        unsafe {
            for g in 0..groups {
                let v = vld1q_s8(x.as_ptr().add(g * KC));
                let block = w.add(g * NR * KC);
                let (a, b) = (vld1q_s8_x4(block), vld1q_s8_x4(block.add(4 * KC)));
                for (j, r) in [a.0, a.1, a.2, a.3, b.0, b.1, b.2, b.3]
                    .into_iter()
                    .enumerate()
                {
                    let lanes = vmull_s8(vget_low_s8(r), vget_low_s8(v));
                    let lanes = vmlal_high_s8(lanes, r, v);
                    acc[j] = vpadalq_s16(acc[j], lanes);
                }
            }
            let here = (rows - q * NR).min(NR);
            finish(
                acc,
                starts[q * NR..].as_ptr(),
                out.as_mut_ptr().add(q * NR),
                here,
            );
        }
    }
}

/// With the dot product: one SDOT per row and block. Rust's SDOT intrinsics are unstable
/// (kernels/dot_neon.rs), so a group's loop over the blocks is one block of assembly with
/// the 8 sums' registers as its outputs.
///
/// # Safety
/// The CPU has the dot product; `x` and `out` as for [`run`].
#[target_feature(enable = "dotprod")]
#[inline(never)]
pub(super) unsafe fn run_dot(weights: &Weights, x: &[i8], out: &mut [i32]) {
    let (packed, starts) = weights.raw();
    let groups = weights.k().div_ceil(KC);
    let rows = weights.rows();
    for q in 0..rows.div_ceil(NR) {
        let w = packed[q * groups * NR * KC..][..groups * NR * KC].as_ptr();
        let (a0, a1, a2, a3, a4, a5, a6, a7): (
            int32x4_t,
            int32x4_t,
            int32x4_t,
            int32x4_t,
            int32x4_t,
            int32x4_t,
            int32x4_t,
            int32x4_t,
        );
        // SAFETY: `groups` (at least one) blocks of 16 bytes of the vector and of 128
        // bytes of this group's rows.
        unsafe {
            std::arch::asm!(
                "movi v0.4s, #0",
                "movi v1.4s, #0",
                "movi v2.4s, #0",
                "movi v3.4s, #0",
                "movi v4.4s, #0",
                "movi v5.4s, #0",
                "movi v6.4s, #0",
                "movi v7.4s, #0",
                "1:",
                "ld1 {{v16.16b}}, [{x}], #16",
                "ld1 {{v20.16b-v23.16b}}, [{w}], #64",
                "ld1 {{v24.16b-v27.16b}}, [{w}], #64",
                "sdot v0.4s, v20.16b, v16.16b",
                "sdot v1.4s, v21.16b, v16.16b",
                "sdot v2.4s, v22.16b, v16.16b",
                "sdot v3.4s, v23.16b, v16.16b",
                "sdot v4.4s, v24.16b, v16.16b",
                "sdot v5.4s, v25.16b, v16.16b",
                "sdot v6.4s, v26.16b, v16.16b",
                "sdot v7.4s, v27.16b, v16.16b",
                "subs {n}, {n}, #1",
                "b.ne 1b",
                x = inout(reg) x.as_ptr() => _,
                w = inout(reg) w => _,
                n = inout(reg) groups => _,
                out("v0") a0, out("v1") a1, out("v2") a2, out("v3") a3,
                out("v4") a4, out("v5") a5, out("v6") a6, out("v7") a7,
                out("v16") _,
                out("v20") _, out("v21") _, out("v22") _, out("v23") _,
                out("v24") _, out("v25") _, out("v26") _, out("v27") _,
                options(nostack),
            );
            let here = (rows - q * NR).min(NR);
            let acc = [a0, a1, a2, a3, a4, a5, a6, a7];
            finish(
                acc,
                starts[q * NR..].as_ptr(),
                out.as_mut_ptr().add(q * NR),
                here,
            );
        }
    }
}
