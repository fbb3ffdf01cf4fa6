//! The dot family on aarch64 NEON with the dot product: tiles of 8 output channels by 8
//! output positions.
//!
//! Per 4 k a tile loads its eight positions' bytes (two registers, four positions each)
//! and its eight channels' bytes (two registers, four channels each), two blocks per
//! four-register LD1, then runs 16 SDOT by element: accumulator `[j][h]` adds, for
//! positions `4h..4h + 4`, their four bytes times channel `j`'s four bytes (lane `j % 4`
//! of the weight register `j / 4`). So each accumulator is one channel at four consecutive
//! positions, the layout of the channel rows of sums: a tile ends in 8 two-register stores
//! with no transpose. 16 accumulators and 8 operand registers fit the 32 vector registers.
//!
//! Rust's SDOT intrinsics are unstable (rust-lang/rust#117224), so the instruction is
//! written as inline assembly: the tile as one block of it (`tile`), the depthwise kernels'
//! SDOT as single instructions whose registers the compiler allocates ([`sdot`],
//! [`sdot_lanes`]).

use std::arch::aarch64::*;

use super::dot::{Weights, KC, MR, NR};

/// One 4-k block's 16 SDOT: positions 0-3 and 4-7 in `$a0`, `$a1`, channels 0-3 and 4-7 in
/// `$b0`, `$b1`, into accumulator `v16 + 2 · channel + half` (a channel's two vectors
/// consecutive, for the two-register store of its row).
macro_rules! sdots {
    ($a0:literal, $a1:literal, $b0:literal, $b1:literal) => {
        concat!(
            sdot!(16, $a0, $b0, 0),
            sdot!(18, $a0, $b0, 1),
            sdot!(20, $a0, $b0, 2),
            sdot!(22, $a0, $b0, 3),
            sdot!(24, $a0, $b1, 0),
            sdot!(26, $a0, $b1, 1),
            sdot!(28, $a0, $b1, 2),
            sdot!(30, $a0, $b1, 3),
            sdot!(17, $a1, $b0, 0),
            sdot!(19, $a1, $b0, 1),
            sdot!(21, $a1, $b0, 2),
            sdot!(23, $a1, $b0, 3),
            sdot!(25, $a1, $b1, 0),
            sdot!(27, $a1, $b1, 1),
            sdot!(29, $a1, $b1, 2),
            sdot!(31, $a1, $b1, 3),
        )
    };
}

/// SDOT by element: accumulator `$acc` plus positions `$a` times lane `$lane` of `$b`.
macro_rules! sdot {
    ($acc:literal, $a:literal, $b:literal, $lane:literal) => {
        concat!("sdot v", $acc, ".4s, v", $a, ".16b, v", $b, ".4b[", $lane, "]\n")
    };
}

/// # Safety
/// The CPU has the dot product; `patches` holds `n.div_ceil(MR)` panels of
/// `weights.panel_len()` bytes and `c` holds `weights.channels() * n` sums
/// (`Weights::check`).
#[target_feature(enable = "dotprod")]
#[inline(never)]
pub(super) unsafe fn run(weights: &Weights, patches: &[i8], n: usize, c: &mut [i32]) {
    let (packed, start_lanes) = weights.raw();
    let channels = weights.channels();
    let groups = weights.k().div_ceil(KC);
    let panel_len = weights.panel_len();
    let group_len = groups * NR * KC;
    let p0 = patches.as_ptr();
    for q in 0..channels.div_ceil(NR) {
        // Each weight group is read from cache by every tile of the band.
        let w = packed[q * group_len..][..group_len].as_ptr();
        let starts = start_lanes[q * NR * 8..][..NR * 8].as_ptr();
        let rows = (channels - q * NR).min(NR);
        // SAFETY (the loops): the caller's contract: `n.div_ceil(MR)` panels of `groups`
        // blocks of MR x 4 bytes; rows `q * NR..q * NR + rows` of `c` hold `n` sums each.
        // Whole tiles store their rows themselves; the last channels' and positions' go
        // through `store`.
        let out = unsafe { c.as_mut_ptr().add(q * NR * n) };
        let whole = if rows == NR { n / MR } else { 0 };
        for t in 0..whole {
            unsafe {
                tile(
                    w,
                    p0.add(t * panel_len),
                    groups,
                    starts,
                    Some((out.add(t * MR), n)),
                )
            };
        }
        for t in whole..n.div_ceil(MR) {
            let sums = unsafe { tile(w, p0.add(t * panel_len), groups, starts, None) };
            let pos = t * MR;
            unsafe { store(&sums, out.add(pos), n, rows, (n - pos).min(MR)) };
        }
    }
}

/// Accumulator `[j][h]`: channel `j` at positions `4h..4h + 4`.
type Sums = [[int32x4_t; 2]; NR];

/// For the eight positions at `p` and the eight channels at `w` (blocks of 32 bytes on
/// both sides, `groups` of them): each channel's start (`starts`: each channel's eight
/// times) plus its sums at the eight positions; stored as eight rows of `c` (`(c, n)`:
/// rows `n` sums apart) when `c` is given.
///
/// One block of assembly: the accumulators start as four four-register loads of the
/// starts, two blocks run per pass on one four-register LD1 per side (two blocks are 64
/// contiguous bytes on both sides), and a whole tile stores each row with one
/// two-register ST1. Written with intrinsics, LLVM split the loads into LDP pairs, copied
/// the starts into the accumulators one register at a time, and stored a row per STP and
/// address add.
///
/// # Safety
/// The CPU has the dot product; `groups` ≥ 1 blocks on both sides; 64 values at `starts`;
/// eight rows of eight sums at the given `c`.
#[target_feature(enable = "dotprod")]
#[inline]
unsafe fn tile(
    w: *const i8,
    p: *const i8,
    groups: usize,
    starts: *const i32,
    c: Option<(*mut i32, usize)>,
) -> Sums {
    let (c, row_bytes) = c.map_or((std::ptr::null_mut(), 0), |(c, n)| (c, n * 4));
    let (s0, s1, s2, s3, s4, s5, s6, s7);
    let (s8, s9, s10, s11, s12, s13, s14, s15);
    // SAFETY: the caller's contract. The assembly reads `groups` blocks of 32 bytes on
    // both sides and the 64 starts, and writes registers and, when `c` is not null, the
    // eight rows.
    unsafe {
        std::arch::asm!(
            "ld1 {{v16.4s-v19.4s}}, [{starts}], #64",
            "ld1 {{v20.4s-v23.4s}}, [{starts}], #64",
            "ld1 {{v24.4s-v27.4s}}, [{starts}], #64",
            "ld1 {{v28.4s-v31.4s}}, [{starts}]",
            "cbz {pairs}, 2f",
            "3:",
            "ld1 {{v0.16b-v3.16b}}, [{p}], #64",
            "ld1 {{v4.16b-v7.16b}}, [{w}], #64",
            sdots!(0, 1, 4, 5),
            sdots!(2, 3, 6, 7),
            "subs {pairs}, {pairs}, #1",
            "b.ne 3b",
            "2:",
            "cbz {odd}, 4f",
            "ld1 {{v0.16b-v1.16b}}, [{p}]",
            "ld1 {{v4.16b-v5.16b}}, [{w}]",
            sdots!(0, 1, 4, 5),
            "4:",
            "cbz {c}, 5f",
            "st1 {{v16.4s-v17.4s}}, [{c}], {row_bytes}",
            "st1 {{v18.4s-v19.4s}}, [{c}], {row_bytes}",
            "st1 {{v20.4s-v21.4s}}, [{c}], {row_bytes}",
            "st1 {{v22.4s-v23.4s}}, [{c}], {row_bytes}",
            "st1 {{v24.4s-v25.4s}}, [{c}], {row_bytes}",
            "st1 {{v26.4s-v27.4s}}, [{c}], {row_bytes}",
            "st1 {{v28.4s-v29.4s}}, [{c}], {row_bytes}",
            "st1 {{v30.4s-v31.4s}}, [{c}]",
            "5:",
            w = inout(reg) w => _,
            p = inout(reg) p => _,
            starts = inout(reg) starts => _,
            pairs = inout(reg) groups / 2 => _,
            odd = in(reg) groups % 2,
            c = inout(reg) c => _,
            row_bytes = in(reg) row_bytes,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _,
            out("v4") _, out("v5") _, out("v6") _, out("v7") _,
            out("v16") s0, out("v17") s1, out("v18") s2, out("v19") s3,
            out("v20") s4, out("v21") s5, out("v22") s6, out("v23") s7,
            out("v24") s8, out("v25") s9, out("v26") s10, out("v27") s11,
            out("v28") s12, out("v29") s13, out("v30") s14, out("v31") s15,
            options(nostack),
        );
    }
    [
        [s0, s1],
        [s2, s3],
        [s4, s5],
        [s6, s7],
        [s8, s9],
        [s10, s11],
        [s12, s13],
        [s14, s15],
    ]
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

/// The channel rows of `sums` into `rows` rows of `c`, `n` apart, `cols` positions each: a
/// tile of the last channels or positions.
#[inline(always)]
unsafe fn store(sums: &Sums, c: *mut i32, n: usize, rows: usize, cols: usize) {
    for (j, row) in sums.iter().enumerate().take(rows) {
        let mut lanes = [0i32; MR];
        // SAFETY: the caller's contract.
        unsafe {
            vst1q_s32(lanes.as_mut_ptr(), row[0]);
            vst1q_s32(lanes.as_mut_ptr().add(4), row[1]);
            super::panels::put_part(lanes.as_ptr(), c.add(j * n), cols);
        }
    }
}
