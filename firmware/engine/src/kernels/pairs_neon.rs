//! The pairs family on aarch64 NEON: tiles of 4 output channels by 16 output positions.
//!
//! Per 4-k block a tile loads its 16 positions' bytes with one four-register LD1 (four
//! positions per register, their k pairs interleaved) and its four channels' weights with
//! another (v4-v7, one per channel: its k 0-1 repeated in the low half, k 2-3 in the
//! high), then per channel and four positions multiplies the low halves into 16-bit lanes
//! (SMULL), adds the high halves' products (SMLAL2) and adds the lane pairs into the
//! accumulator whose four lanes are those positions' sums (SADALP): 256 multiply-adds in
//! 50 instructions. Accumulator `16 + 4j + i` holds channel j's positions `4i..4i + 4`, so
//! a channel's row is four consecutive accumulators: the tile ends with the starts (one
//! LD4R), 16 adds and four four-register stores.
//!
//! One block of assembly per tile, for the reasons c16_neon.rs gives. A depth that ends
//! one or two k into its last block runs that block's SMULL alone, its high halves being
//! the packing's zeros.

use super::pairs::{Weights, KC, MR, NR};
use super::panels::Blocks;

/// Products of positions `$x` by a channel's weight pairs, k 0-1 in the low half of `$lo`
/// and k 2-3 in the high half of `$hi` (one register), into the 16-bit lanes of temporary
/// `$t`.
macro_rules! mul {
    (full, $t:literal, $x:literal, $lo:literal, $hi:literal) => {
        concat!(
            "smull v", $t, ".8h, v", $x, ".8b, v", $lo, ".8b\n", "smlal2 v", $t, ".8h, v", $x,
            ".16b, v", $hi, ".16b\n",
        )
    };
    (half, $t:literal, $x:literal, $lo:literal, $hi:literal) => {
        concat!("smull v", $t, ".8h, v", $x, ".8b, v", $lo, ".8b\n")
    };
}

/// Temporaries (`$t`) widened into accumulators (`$acc`) by `$op`: SADDLP starts them,
/// SADALP adds to them.
macro_rules! widen {
    ($op:literal, $($acc:literal $t:literal),+) => {
        concat!($($op, " v", $acc, ".4s, v", $t, ".8h\n"),+)
    };
}

/// Two channels' products (weights `$w0`, `$w1`) over the 16 positions (v0-v3), widened
/// into accumulators `$a..`.
macro_rules! channels {
    ($depth:ident, $op:literal, $w0:literal $w1:literal, $a0:literal $a1:literal $a2:literal
     $a3:literal $a4:literal $a5:literal $a6:literal $a7:literal) => {
        concat!(
            mul!($depth, 8, 0, $w0, $w0),
            mul!($depth, 9, 1, $w0, $w0),
            mul!($depth, 10, 2, $w0, $w0),
            mul!($depth, 11, 3, $w0, $w0),
            mul!($depth, 12, 0, $w1, $w1),
            mul!($depth, 13, 1, $w1, $w1),
            mul!($depth, 14, 2, $w1, $w1),
            mul!($depth, 15, 3, $w1, $w1),
            widen!($op, $a0 8, $a1 9, $a2 10, $a3 11, $a4 12, $a5 13, $a6 14, $a7 15),
        )
    };
}

/// One 4-k block: the positions and the four channels' weights (v4-v7), then channels 0-1
/// and 2-3.
macro_rules! block {
    ($depth:ident, $op:literal) => {
        concat!(
            "ld1 {{v0.16b-v3.16b}}, [{p}], #64\n",
            "ld1 {{v4.16b-v7.16b}}, [{w}], #64\n",
            channels!($depth, $op, 4 5, 16 17 18 19 20 21 22 23),
            channels!($depth, $op, 6 7, 24 25 26 27 28 29 30 31),
        )
    };
}

/// # Safety
/// `patches` holds `n.div_ceil(MR)` panels of `weights.panel_len()` bytes and `c` holds
/// `weights.channels() * n` sums (`Weights::check`).
#[inline(never)]
pub(super) unsafe fn run(weights: &Weights, patches: &[i8], n: usize, c: &mut [i32]) {
    let (packed, starts) = weights.raw();
    let channels = weights.channels();
    let panel_len = weights.panel_len();
    let blocks = Blocks::new(weights.k(), KC);
    let group_len = blocks.groups * NR * 16;
    let p0 = patches.as_ptr();
    for q in 0..channels.div_ceil(NR) {
        // Each weight group is read from cache by every tile of the band.
        let w = packed[q * group_len..][..group_len].as_ptr();
        let starts = starts[q * NR..][..NR].as_ptr();
        let rows = (channels - q * NR).min(NR);
        // SAFETY (the loop): the caller's contract: `n.div_ceil(MR)` panels, so every
        // tile's panel is inside `patches`; rows `q * NR..q * NR + rows` of `c` hold `n`
        // sums each.
        let out = unsafe { c.as_mut_ptr().add(q * NR * n) };
        for t in 0..n.div_ceil(MR) {
            let p = unsafe { p0.add(t * panel_len) };
            let cols = (n - t * MR).min(MR);
            if rows == NR && cols == MR {
                unsafe { tile(w, p, &blocks, starts, out.add(t * MR), n) };
                continue;
            }
            // The last channels or positions: the whole tile into a buffer, then its part.
            let mut sums = [0i32; NR * MR];
            unsafe { tile(w, p, &blocks, starts, sums.as_mut_ptr(), MR) };
            for (j, row) in sums.chunks_exact(MR).take(rows).enumerate() {
                unsafe {
                    std::ptr::copy_nonoverlapping(row.as_ptr(), out.add(j * n + t * MR), cols)
                };
            }
        }
    }
}

/// For the 16 positions of the panel at `p` (blocks of 64 bytes) and the four channels at
/// `w` (blocks of 64 bytes): per channel, its start (`starts`: one per channel) plus its
/// sums at the 16 positions, stored as four rows of `c`, `n` sums apart.
///
/// # Safety
/// `blocks.groups` blocks on both sides; four values at `starts`; four rows of 16 sums at
/// `c`.
#[inline(always)]
unsafe fn tile(
    w: *const i8,
    p: *const i8,
    blocks: &Blocks,
    starts: *const i32,
    c: *mut i32,
    n: usize,
) {
    // SAFETY: the caller's contract. The assembly reads 64 bytes of patches and 64 of
    // weights per block and the four starts, and writes the four rows.
    unsafe {
        std::arch::asm!(
            block!(full, "saddlp"),
            "cbz {pairs}, 2f",
            "3:",
            block!(full, "sadalp"),
            block!(full, "sadalp"),
            "subs {pairs}, {pairs}, #1",
            "b.ne 3b",
            "2:",
            "tbz {tail}, #0, 4f",
            block!(full, "sadalp"),
            "4:",
            "tbz {tail}, #1, 5f",
            block!(half, "sadalp"),
            "5:",
            "ld4r {{v0.4s-v3.4s}}, [{starts}]",
            "add v16.4s, v16.4s, v0.4s",
            "add v17.4s, v17.4s, v0.4s",
            "add v18.4s, v18.4s, v0.4s",
            "add v19.4s, v19.4s, v0.4s",
            "add v20.4s, v20.4s, v1.4s",
            "add v21.4s, v21.4s, v1.4s",
            "add v22.4s, v22.4s, v1.4s",
            "add v23.4s, v23.4s, v1.4s",
            "add v24.4s, v24.4s, v2.4s",
            "add v25.4s, v25.4s, v2.4s",
            "add v26.4s, v26.4s, v2.4s",
            "add v27.4s, v27.4s, v2.4s",
            "add v28.4s, v28.4s, v3.4s",
            "add v29.4s, v29.4s, v3.4s",
            "add v30.4s, v30.4s, v3.4s",
            "add v31.4s, v31.4s, v3.4s",
            "st1 {{v16.4s-v19.4s}}, [{c}], {row_bytes}",
            "st1 {{v20.4s-v23.4s}}, [{c}], {row_bytes}",
            "st1 {{v24.4s-v27.4s}}, [{c}], {row_bytes}",
            "st1 {{v28.4s-v31.4s}}, [{c}]",
            w = inout(reg) w => _,
            p = inout(reg) p => _,
            pairs = inout(reg) blocks.pairs => _,
            tail = in(reg) blocks.tail,
            starts = in(reg) starts,
            c = inout(reg) c => _,
            row_bytes = in(reg) n * 4,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _,
            out("v4") _, out("v5") _, out("v6") _, out("v7") _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _,
            out("v16") _, out("v17") _, out("v18") _, out("v19") _,
            out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _,
            out("v28") _, out("v29") _, out("v30") _, out("v31") _,
            options(nostack),
        );
    }
}
