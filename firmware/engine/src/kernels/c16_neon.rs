//! The c16 family on aarch64 NEON: tiles of 4 output channels by 4 output positions.
//!
//! Per 16 k a tile loads its four positions' bytes and its four channels' bytes with one
//! four-register LD1 each, then for each of the 16 pairs multiplies the low halves into
//! 16-bit lanes (SMULL), adds the high halves' products (SMLAL2) and widens the lane pairs
//! into its 32-bit accumulator (SADALP): 256 multiply-adds in 50 instructions. 16
//! accumulators, 8 operand registers and 8 products fill the 32 vector registers. At the
//! end pairwise adds fold the four positions' accumulators of one channel straight into
//! that channel's row of sums, with no transpose, the channel's start is added to the row
//! and a whole tile stores its four rows.
//!
//! The tile is one block of assembly (built by the macros below), because what LLVM made
//! of the intrinsics ran 89.2 M instructions on EfficientNet-Lite0 against this 81.3 M
//! (cortex-a72, QEMU-INSN.md): it split each four-register load into two LDP, kept the
//! loop's counters in more registers than the tile leaves it, and spilled the starts and
//! row offsets to the stack between tiles. A depth that ends 8 or fewer k into its last
//! block (24, 40: 16g + 8) runs that block's SMULL alone, its high halves being the
//! packing's zeros.

use std::arch::aarch64::*;

use super::c16::{Weights, KC, MR, NR};
use super::panels::Blocks;

/// Products of positions `$a` by channels `$b` into the 16-bit lanes of temporary `$t`:
/// the low eight pairs (SMULL), and for a full block the high eight added (SMLAL2).
macro_rules! pair {
    (full, $t:literal, $a:literal, $b:literal) => {
        concat!(
            "smull v", $t, ".8h, v", $a, ".8b, v", $b, ".8b\n", "smlal2 v", $t, ".8h, v", $a,
            ".16b, v", $b, ".16b\n",
        )
    };
    (half, $t:literal, $a:literal, $b:literal) => {
        concat!("smull v", $t, ".8h, v", $a, ".8b, v", $b, ".8b\n")
    };
}

/// Temporaries (`$t`) widened into accumulators (`$acc`) by `$op`: SADDLP starts them,
/// SADALP adds to them.
macro_rules! widen {
    ($op:literal, $($acc:literal $t:literal),+) => {
        concat!($($op, " v", $acc, ".4s, v", $t, ".8h\n"),+)
    };
}

/// One 16-k block: positions (v0-v3) and channels (v4-v7) loaded with one four-register
/// LD1 each, the pointers stepped past them; then the 16 pairs' products, eight at a time
/// into v8-v15, widened into accumulator `v16 + 4 · position + channel`.
macro_rules! block {
    ($depth:ident, $op:literal) => {
        concat!(
            "ld1 {{v0.16b-v3.16b}}, [{p}], {p_step}\n",
            "ld1 {{v4.16b-v7.16b}}, [{w}], #64\n",
            pair!($depth, 8, 0, 4),
            pair!($depth, 9, 0, 5),
            pair!($depth, 10, 0, 6),
            pair!($depth, 11, 0, 7),
            pair!($depth, 12, 1, 4),
            pair!($depth, 13, 1, 5),
            pair!($depth, 14, 1, 6),
            pair!($depth, 15, 1, 7),
            widen!($op, 16 8, 17 9, 18 10, 19 11, 20 12, 21 13, 22 14, 23 15),
            pair!($depth, 8, 2, 4),
            pair!($depth, 9, 2, 5),
            pair!($depth, 10, 2, 6),
            pair!($depth, 11, 2, 7),
            pair!($depth, 12, 3, 4),
            pair!($depth, 13, 3, 5),
            pair!($depth, 14, 3, 6),
            pair!($depth, 15, 3, 7),
            widen!($op, 24 8, 25 9, 26 10, 27 11, 28 12, 29 13, 30 14, 31 15),
        )
    };
}

/// The tile's end: channel j's row into v`j` (lane i the four lanes of accumulator
/// `16 + 4i + j` summed, by pairwise adds, v4 a temporary), plus its start (four
/// registers of starts loaded into v4-v7).
macro_rules! fold {
    () => {
        concat!(
            "addp v0.4s, v16.4s, v20.4s\n",
            "addp v1.4s, v24.4s, v28.4s\n",
            "addp v0.4s, v0.4s, v1.4s\n",
            "addp v1.4s, v17.4s, v21.4s\n",
            "addp v2.4s, v25.4s, v29.4s\n",
            "addp v1.4s, v1.4s, v2.4s\n",
            "addp v2.4s, v18.4s, v22.4s\n",
            "addp v3.4s, v26.4s, v30.4s\n",
            "addp v2.4s, v2.4s, v3.4s\n",
            "addp v3.4s, v19.4s, v23.4s\n",
            "addp v4.4s, v27.4s, v31.4s\n",
            "addp v3.4s, v3.4s, v4.4s\n",
            "ld1 {{v4.4s-v7.4s}}, [{starts}]\n",
            "add v0.4s, v0.4s, v4.4s\n",
            "add v1.4s, v1.4s, v5.4s\n",
            "add v2.4s, v2.4s, v6.4s\n",
            "add v3.4s, v3.4s, v7.4s\n",
        )
    };
}

/// Positions per tile: half a patch panel.
const TP: usize = MR / 2;

/// # Safety
/// `patches` holds `n.div_ceil(MR)` panels of `weights.panel_len()` bytes and `c` holds
/// `weights.channels() * n` sums (`Weights::check`).
#[inline(never)]
pub(super) unsafe fn run(weights: &Weights, patches: &[i8], n: usize, c: &mut [i32]) {
    let (packed, start_lanes) = weights.raw();
    let channels = weights.channels();
    let panel_len = weights.panel_len();
    let blocks = Blocks::new(weights.k(), KC);
    let group_len = blocks.groups * NR * KC;
    let p0 = patches.as_ptr();
    for q in 0..channels.div_ceil(NR) {
        // Each weight group is read from cache by every tile of the band.
        let w = packed[q * group_len..][..group_len].as_ptr();
        let starts = start_lanes[q * NR * 4..][..NR * 4].as_ptr();
        let rows = (channels - q * NR).min(NR);
        // SAFETY (the loops): the caller's contract: `n.div_ceil(MR)` panels of `groups`
        // blocks of MR x 16 bytes, so every tile's four positions are inside `patches`;
        // rows `q * NR..q * NR + rows` of `c` hold `n` sums each.
        let out = unsafe { c.as_mut_ptr().add(q * NR * n) };
        // Tile t reads positions 4t..4t + 4: half t % 2 of panel t / 2. Whole tiles store
        // their rows themselves; the last channels' and positions' go through `store`.
        let whole = if rows == NR { n / TP } else { 0 };
        let at = |t: usize| unsafe {
            (
                p0.add((t / 2) * panel_len + (t % 2) * TP * KC),
                out.add(t * TP),
            )
        };
        for t in (0..whole).step_by(2) {
            let (p, c) = at(t);
            unsafe { tile(w, p, &blocks, starts, Some((c, n))) };
            if t + 1 < whole {
                // The panel's second half.
                unsafe { tile(w, p.add(TP * KC), &blocks, starts, Some((c.add(TP), n))) };
            }
        }
        for t in whole..n.div_ceil(TP) {
            let (p, c) = at(t);
            let sums = unsafe { tile(w, p, &blocks, starts, None) };
            unsafe { store(sums, c, n, rows, (n - t * TP).min(TP)) };
        }
    }
}

/// For the four positions at `p` (16 bytes each per block, blocks `MR * 16` bytes apart)
/// and the four channels at `w` (blocks of `NR * 16` bytes): per channel, its start
/// (`starts`: each channel's four times) plus its sums at the four positions; stored as
/// four rows of `c` (`(c, n)`: rows `n` sums apart) when `c` is given.
///
/// # Safety
/// `blocks.groups` blocks on both sides; 16 values at `starts`; four rows of four sums at
/// the given `c`.
#[inline(always)]
unsafe fn tile(
    w: *const i8,
    p: *const i8,
    blocks: &Blocks,
    starts: *const i32,
    c: Option<(*mut i32, usize)>,
) -> [int32x4_t; NR] {
    let (r0, r1, r2, r3);
    let (c, row_bytes) = c.map_or((std::ptr::null_mut(), 0), |(c, n)| (c, n * 4));
    // SAFETY: the caller's contract. The assembly reads 64 bytes of each side per block
    // and the 16 starts, and writes registers and, when `c` is not null, the four rows.
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
            fold!(),
            "cbz {c}, 6f",
            "st1 {{v0.4s}}, [{c}], {row_bytes}",
            "st1 {{v1.4s}}, [{c}], {row_bytes}",
            "st1 {{v2.4s}}, [{c}], {row_bytes}",
            "st1 {{v3.4s}}, [{c}]",
            "6:",
            w = inout(reg) w => _,
            p = inout(reg) p => _,
            p_step = in(reg) MR * KC,
            pairs = inout(reg) blocks.pairs => _,
            tail = in(reg) blocks.tail,
            starts = in(reg) starts,
            c = inout(reg) c => _,
            row_bytes = in(reg) row_bytes,
            out("v0") r0, out("v1") r1, out("v2") r2, out("v3") r3,
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
    [r0, r1, r2, r3]
}

/// The channel rows `sums` into `rows` rows of `c`, `n` apart, `cols` positions each: a
/// tile of the last channels or positions.
#[inline(always)]
unsafe fn store(sums: [int32x4_t; NR], c: *mut i32, n: usize, rows: usize, cols: usize) {
    for (j, row) in sums.iter().enumerate().take(rows) {
        let mut lanes = [0i32; TP];
        // SAFETY: the caller's contract.
        unsafe {
            vst1q_s32(lanes.as_mut_ptr(), *row);
            super::panels::put_part(lanes.as_ptr(), c.add(j * n), cols);
        }
    }
}
