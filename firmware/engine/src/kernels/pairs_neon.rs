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
//! the packing's zeros. A band's last panel, when it holds fewer than 16 positions (a 7x7
//! layer's 49 are three panels and one position), runs a tile of as many quads as it
//! needs (12, 8 or 4 positions), so that 7x7 and 14x14 layers pad their positions to 4
//! as c16 does, not to 16.

use super::pairs::{Weights, DEEP_MR, KC, MR, NR};
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

/// One channel's products (its k 0-1 weights in the low half of `$lo`, k 2-3 in the high
/// half of `$hi`) over quads of positions `$x`, into temporaries `$t`, widened into
/// accumulators `$a`.
macro_rules! quads {
    ($depth:ident, $op:literal, $lo:literal $hi:literal: $($x:literal $t:literal $a:literal),+) => {
        concat!($(mul!($depth, $t, $x, $lo, $hi),)+ widen!($op, $($a $t),+))
    };
}

/// A block's four channels' weights and products (channel j's registers `[$cj]`): one
/// four-register load of the repeated lanes, one channel per register; or two LD4R of
/// the plain ones, which repeat channels 0 and 1's (then 2 and 3's) pairs of k across v4
/// and v5 (channel 0 or 2) and v6 and v7 (channel 1 or 3).
macro_rules! products {
    (repeated, $depth:ident, $op:literal, [$($c0:tt)+], [$($c1:tt)+], [$($c2:tt)+], [$($c3:tt)+]) => {
        concat!(
            "ld1 {{v4.16b-v7.16b}}, [{w}], #64\n",
            quads!($depth, $op, 4 4: $($c0)+),
            quads!($depth, $op, 5 5: $($c1)+),
            quads!($depth, $op, 6 6: $($c2)+),
            quads!($depth, $op, 7 7: $($c3)+),
        )
    };
    (plain, $depth:ident, $op:literal, [$($c0:tt)+], [$($c1:tt)+], [$($c2:tt)+], [$($c3:tt)+]) => {
        concat!(
            "ld4r {{v4.8h-v7.8h}}, [{w}], #8\n",
            quads!($depth, $op, 4 5: $($c0)+),
            quads!($depth, $op, 6 7: $($c1)+),
            "ld4r {{v4.8h-v7.8h}}, [{w}], #8\n",
            quads!($depth, $op, 4 5: $($c2)+),
            quads!($depth, $op, 6 7: $($c3)+),
        )
    };
}

/// One 4-k block of a tile of 16, 12, 8 or 4 positions (4, 3, 2 or 1 quads): the
/// positions (v0-v3, as many as it has quads), then each channel's products, channel j's
/// quad i into accumulator `16 + 4j + i`.
macro_rules! block {
    ($form:ident, 4, $depth:ident, $op:literal) => {
        concat!(
            "ld1 {{v0.16b-v3.16b}}, [{p}], {p_step}\n",
            products!($form, $depth, $op,
                [0 8 16, 1 9 17, 2 10 18, 3 11 19], [0 12 20, 1 13 21, 2 14 22, 3 15 23],
                [0 8 24, 1 9 25, 2 10 26, 3 11 27], [0 12 28, 1 13 29, 2 14 30, 3 15 31]),
        )
    };
    ($form:ident, 3, $depth:ident, $op:literal) => {
        concat!(
            "ld1 {{v0.16b-v2.16b}}, [{p}], {p_step}\n",
            products!($form, $depth, $op,
                [0 8 16, 1 9 17, 2 10 18], [0 11 20, 1 12 21, 2 13 22],
                [0 14 24, 1 15 25, 2 8 26], [0 9 28, 1 10 29, 2 11 30]),
        )
    };
    ($form:ident, 2, $depth:ident, $op:literal) => {
        concat!(
            "ld1 {{v0.16b-v1.16b}}, [{p}], {p_step}\n",
            products!($form, $depth, $op,
                [0 8 16, 1 9 17], [0 10 20, 1 11 21], [0 12 24, 1 13 25], [0 14 28, 1 15 29]),
        )
    };
    ($form:ident, 1, $depth:ident, $op:literal) => {
        concat!(
            "ld1 {{v0.16b}}, [{p}], {p_step}\n",
            products!($form, $depth, $op, [0 8 16], [0 9 20], [0 10 24], [0 11 28]),
        )
    };
}

/// The starts (v0-v3, one channel each) added to accumulators `$a` of channel `$j`.
macro_rules! starts {
    ($($j:literal: $($a:literal),+);+) => {
        concat!($($("add v", $a, ".4s, v", $a, ".4s, v", $j, ".4s\n",)+)+)
    };
}

/// A tile of `$quads` quads of positions, as one block of assembly: the depth's blocks,
/// then the starts (`$starts`) and the four channel rows' stores (`$stores`).
macro_rules! tile {
    ($name:ident, $form:ident, $quads:tt, [$($starts:tt)+], [$($stores:literal),+]) => {
        /// For `$quads` quads of the positions of the panel at `p` (blocks of 64 bytes)
        /// and the four channels at `w` (blocks of 64 bytes): per channel, its start
        /// (`starts`: one per channel) plus its sums at those positions, stored as four
        /// rows of `c`, `n` sums apart.
        ///
        /// # Safety
        /// `blocks.groups` blocks on both sides; four values at `starts`; four rows of
        /// `4 · $quads` sums at `c`.
        #[inline(always)]
        unsafe fn $name(
            w: *const i8,
            p: *const i8,
            blocks: &Blocks,
            starts: *const i32,
            c: *mut i32,
            n: usize,
        ) {
            // SAFETY: the caller's contract. The assembly reads at most 64 bytes of
            // patches and 64 of weights per block and the four starts, and writes the
            // four rows.
            unsafe {
                std::arch::asm!(
                    block!($form, $quads, full, "saddlp"),
                    "cbz {pairs}, 2f",
                    "3:",
                    block!($form, $quads, full, "sadalp"),
                    block!($form, $quads, full, "sadalp"),
                    "subs {pairs}, {pairs}, #1",
                    "b.ne 3b",
                    "2:",
                    "tbz {tail}, #0, 4f",
                    block!($form, $quads, full, "sadalp"),
                    "4:",
                    "tbz {tail}, #1, 5f",
                    block!($form, $quads, half, "sadalp"),
                    "5:",
                    "ld4r {{v0.4s-v3.4s}}, [{starts}]",
                    starts!($($starts)+),
                    $($stores,)+
                    w = inout(reg) w => _,
                    p = inout(reg) p => _,
                    p_step = in(reg) MR * KC,
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
    };
}

tile!(
    repeated16,
    repeated,
    4,
    [0: 16, 17, 18, 19; 1: 20, 21, 22, 23; 2: 24, 25, 26, 27; 3: 28, 29, 30, 31],
    [
        "st1 {{v16.4s-v19.4s}}, [{c}], {row_bytes}",
        "st1 {{v20.4s-v23.4s}}, [{c}], {row_bytes}",
        "st1 {{v24.4s-v27.4s}}, [{c}], {row_bytes}",
        "st1 {{v28.4s-v31.4s}}, [{c}]"
    ]
);
tile!(
    repeated12,
    repeated,
    3,
    [0: 16, 17, 18; 1: 20, 21, 22; 2: 24, 25, 26; 3: 28, 29, 30],
    [
        "st1 {{v16.4s-v18.4s}}, [{c}], {row_bytes}",
        "st1 {{v20.4s-v22.4s}}, [{c}], {row_bytes}",
        "st1 {{v24.4s-v26.4s}}, [{c}], {row_bytes}",
        "st1 {{v28.4s-v30.4s}}, [{c}]"
    ]
);
tile!(
    repeated8,
    repeated,
    2,
    [0: 16, 17; 1: 20, 21; 2: 24, 25; 3: 28, 29],
    [
        "st1 {{v16.4s-v17.4s}}, [{c}], {row_bytes}",
        "st1 {{v20.4s-v21.4s}}, [{c}], {row_bytes}",
        "st1 {{v24.4s-v25.4s}}, [{c}], {row_bytes}",
        "st1 {{v28.4s-v29.4s}}, [{c}]"
    ]
);
tile!(
    repeated4,
    repeated,
    1,
    [0: 16; 1: 20; 2: 24; 3: 28],
    [
        "st1 {{v16.4s}}, [{c}], {row_bytes}",
        "st1 {{v20.4s}}, [{c}], {row_bytes}",
        "st1 {{v24.4s}}, [{c}], {row_bytes}",
        "st1 {{v28.4s}}, [{c}]"
    ]
);

tile!(
    plain16,
    plain,
    4,
    [0: 16, 17, 18, 19; 1: 20, 21, 22, 23; 2: 24, 25, 26, 27; 3: 28, 29, 30, 31],
    [
        "st1 {{v16.4s-v19.4s}}, [{c}], {row_bytes}",
        "st1 {{v20.4s-v23.4s}}, [{c}], {row_bytes}",
        "st1 {{v24.4s-v27.4s}}, [{c}], {row_bytes}",
        "st1 {{v28.4s-v31.4s}}, [{c}]"
    ]
);
tile!(
    plain12,
    plain,
    3,
    [0: 16, 17, 18; 1: 20, 21, 22; 2: 24, 25, 26; 3: 28, 29, 30],
    [
        "st1 {{v16.4s-v18.4s}}, [{c}], {row_bytes}",
        "st1 {{v20.4s-v22.4s}}, [{c}], {row_bytes}",
        "st1 {{v24.4s-v26.4s}}, [{c}], {row_bytes}",
        "st1 {{v28.4s-v30.4s}}, [{c}]"
    ]
);
tile!(
    plain8,
    plain,
    2,
    [0: 16, 17; 1: 20, 21; 2: 24, 25; 3: 28, 29],
    [
        "st1 {{v16.4s-v17.4s}}, [{c}], {row_bytes}",
        "st1 {{v20.4s-v21.4s}}, [{c}], {row_bytes}",
        "st1 {{v24.4s-v25.4s}}, [{c}], {row_bytes}",
        "st1 {{v28.4s-v29.4s}}, [{c}]"
    ]
);
tile!(
    plain4,
    plain,
    1,
    [0: 16; 1: 20; 2: 24; 3: 28],
    [
        "st1 {{v16.4s}}, [{c}], {row_bytes}",
        "st1 {{v20.4s}}, [{c}], {row_bytes}",
        "st1 {{v24.4s}}, [{c}], {row_bytes}",
        "st1 {{v28.4s}}, [{c}]"
    ]
);

/// The deep form (pairs.rs): one channel's products over one quad of positions for a pair
/// of blocks, block A's positions `$xa` by its weights (k 0-1 in the low half of `$alo`,
/// 2-3 in the high half of `$ahi`), block B's `$xb` by `$blo` and `$bhi`, all four into
/// the 16-bit lanes of temporary `$t`.
macro_rules! deep_mul {
    ($t:literal $xa:literal $xb:literal, $alo:literal $ahi:literal $blo:literal $bhi:literal) => {
        concat!(
            "smull v", $t, ".8h, v", $xa, ".8b, v", $alo, ".8b\n", "smlal2 v", $t, ".8h, v", $xa,
            ".16b, v", $ahi, ".16b\n", "smlal v", $t, ".8h, v", $xb, ".8b, v", $blo, ".8b\n",
            "smlal2 v", $t, ".8h, v", $xb, ".16b, v", $bhi, ".16b\n",
        )
    };
}

/// One channel's pair products (its weight registers, as for `deep_mul!`) over quads of
/// positions (each a temporary `$t`, block A's positions `$xa`, block B's `$xb`), widened
/// into accumulators `$a` by `$op`.
macro_rules! deep_quads {
    ($op:literal, ($alo:literal $ahi:literal $blo:literal $bhi:literal):
        $($t:literal $xa:literal $xb:literal $a:literal),+) => {
        concat!(
            $(deep_mul!($t $xa $xb, $alo $ahi $blo $bhi),)+
            widen!($op, $($a $t),+)
        )
    };
}

/// A pair of blocks of a deep tile of `$quads` quads (2 or 1): block A's positions in v0
/// (and v1), block B's in v2 (and v3); repeated weights in v4-v7 (A) and v8-v11 (B), one
/// channel per register; plain ones by LD4R, channels 0 and 1 (then 2 and 3) of A in
/// v4-v7 and of B in v8-v11 (`{w2}` runs 16 bytes ahead of `{w}`, on block B). Channel j's
/// quad i goes through temporary `12 + 2j + i` into accumulator `20 + 2j + i`.
macro_rules! deep_pair {
    (repeated, 2, $op:literal) => {
        concat!(
            "ld1 {{v0.16b-v1.16b}}, [{p}], {p_step}\n",
            "ld1 {{v2.16b-v3.16b}}, [{p}], {p_step}\n",
            "ld1 {{v4.16b-v7.16b}}, [{w}], #64\n",
            "ld1 {{v8.16b-v11.16b}}, [{w}], #64\n",
            deep_quads!($op, (4 4 8 8): 12 0 2 20, 13 1 3 21),
            deep_quads!($op, (5 5 9 9): 14 0 2 22, 15 1 3 23),
            deep_quads!($op, (6 6 10 10): 16 0 2 24, 17 1 3 25),
            deep_quads!($op, (7 7 11 11): 18 0 2 26, 19 1 3 27),
        )
    };
    (repeated, 1, $op:literal) => {
        concat!(
            "ld1 {{v0.16b}}, [{p}], {p_step}\n",
            "ld1 {{v2.16b}}, [{p}], {p_step}\n",
            "ld1 {{v4.16b-v7.16b}}, [{w}], #64\n",
            "ld1 {{v8.16b-v11.16b}}, [{w}], #64\n",
            deep_quads!($op, (4 4 8 8): 12 0 2 20),
            deep_quads!($op, (5 5 9 9): 14 0 2 22),
            deep_quads!($op, (6 6 10 10): 16 0 2 24),
            deep_quads!($op, (7 7 11 11): 18 0 2 26),
        )
    };
    (plain, 2, $op:literal) => {
        concat!(
            "ld1 {{v0.16b-v1.16b}}, [{p}], {p_step}\n",
            "ld1 {{v2.16b-v3.16b}}, [{p}], {p_step}\n",
            "ld4r {{v4.8h-v7.8h}}, [{w}], #8\n",
            "ld4r {{v8.8h-v11.8h}}, [{w2}], #8\n",
            deep_quads!($op, (4 5 8 9): 12 0 2 20, 13 1 3 21),
            deep_quads!($op, (6 7 10 11): 14 0 2 22, 15 1 3 23),
            "ld4r {{v4.8h-v7.8h}}, [{w}], {w_skip}\n",
            "ld4r {{v8.8h-v11.8h}}, [{w2}], {w_skip}\n",
            deep_quads!($op, (4 5 8 9): 16 0 2 24, 17 1 3 25),
            deep_quads!($op, (6 7 10 11): 18 0 2 26, 19 1 3 27),
        )
    };
    (plain, 1, $op:literal) => {
        concat!(
            "ld1 {{v0.16b}}, [{p}], {p_step}\n",
            "ld1 {{v2.16b}}, [{p}], {p_step}\n",
            "ld4r {{v4.8h-v7.8h}}, [{w}], #8\n",
            "ld4r {{v8.8h-v11.8h}}, [{w2}], #8\n",
            deep_quads!($op, (4 5 8 9): 12 0 2 20),
            deep_quads!($op, (6 7 10 11): 14 0 2 22),
            "ld4r {{v4.8h-v7.8h}}, [{w}], {w_skip}\n",
            "ld4r {{v8.8h-v11.8h}}, [{w2}], {w_skip}\n",
            deep_quads!($op, (4 5 8 9): 16 0 2 24),
            deep_quads!($op, (6 7 10 11): 18 0 2 26),
        )
    };
}

/// One block of a deep tile after its pairs (a single full block, or the half block of a
/// depth ending two k into it), in the deep tile's registers.
macro_rules! deep_block {
    ($form:ident, 2, $depth:ident) => {
        concat!(
            "ld1 {{v0.16b-v1.16b}}, [{p}], {p_step}\n",
            products!($form, $depth, "sadalp",
                [0 12 20, 1 13 21], [0 14 22, 1 15 23], [0 16 24, 1 17 25], [0 18 26, 1 19 27]),
        )
    };
    ($form:ident, 1, $depth:ident) => {
        concat!(
            "ld1 {{v0.16b}}, [{p}], {p_step}\n",
            products!($form, $depth, "sadalp", [0 12 20], [0 14 22], [0 16 24], [0 18 26]),
        )
    };
}

/// A deep tile of `$quads` quads of positions: the pairs of blocks, a single block and a
/// half block as the depth has them, then the starts and the four channel rows' stores.
/// With `two_pointers` (the plain lanes), the operands of block B's weight pointer and of
/// the step past a pair (`{w2}`, `{w_skip}`).
macro_rules! deep_tile {
    ($name:ident, $form:ident, $quads:tt, [$($starts:tt)+], [$($stores:literal),+]
        $(, $two:ident)?) => {
        /// For `$quads` quads of positions at `p` (in blocks of 64 bytes, a panel's or its
        /// second half's) and the four channels at `w`: per channel, its start plus its
        /// sums at those positions, stored as four rows of `c`, `n` sums apart.
        ///
        /// # Safety
        /// The deep form's blocks on both sides (`pairs` counts the twos of pairs after
        /// the first; `tail` bit 2 one pair more, bit 0 a single block, bit 1 a half
        /// block); four values at `starts`; four rows of `4 · $quads` sums at `c`.
        #[inline(always)]
        unsafe fn $name(
            w: *const i8,
            p: *const i8,
            (pairs, tail): (usize, usize),
            starts: *const i32,
            c: *mut i32,
            n: usize,
        ) {
            // SAFETY: the caller's contract. The assembly reads at most 64 bytes of
            // patches and 64 of weights per block and the four starts, and writes the
            // four rows.
            unsafe {
                std::arch::asm!(
                    deep_pair!($form, $quads, "saddlp"),
                    "cbz {pairs}, 2f",
                    "3:",
                    deep_pair!($form, $quads, "sadalp"),
                    deep_pair!($form, $quads, "sadalp"),
                    "subs {pairs}, {pairs}, #1",
                    "b.ne 3b",
                    "2:",
                    "tbz {tail}, #2, 6f",
                    deep_pair!($form, $quads, "sadalp"),
                    "6:",
                    "tbz {tail}, #0, 4f",
                    deep_block!($form, $quads, full),
                    "4:",
                    "tbz {tail}, #1, 5f",
                    deep_block!($form, $quads, half),
                    "5:",
                    "ld4r {{v0.4s-v3.4s}}, [{starts}]",
                    starts!($($starts)+),
                    $($stores,)+
                    w = inout(reg) w => _,
                    $(
                        w2 = inout(reg) { stringify!($two); w.wrapping_add(16) } => _,
                        w_skip = in(reg) 24usize,
                    )?
                    p = inout(reg) p => _,
                    p_step = in(reg) MR * KC,
                    pairs = inout(reg) pairs => _,
                    tail = in(reg) tail,
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
                    options(nostack),
                );
            }
        }
    };
}

deep_tile!(
    deep_repeated8,
    repeated,
    2,
    [0: 20, 21; 1: 22, 23; 2: 24, 25; 3: 26, 27],
    [
        "st1 {{v20.4s-v21.4s}}, [{c}], {row_bytes}",
        "st1 {{v22.4s-v23.4s}}, [{c}], {row_bytes}",
        "st1 {{v24.4s-v25.4s}}, [{c}], {row_bytes}",
        "st1 {{v26.4s-v27.4s}}, [{c}]"
    ]
);
deep_tile!(
    deep_repeated4,
    repeated,
    1,
    [0: 20; 1: 22; 2: 24; 3: 26],
    [
        "st1 {{v20.4s}}, [{c}], {row_bytes}",
        "st1 {{v22.4s}}, [{c}], {row_bytes}",
        "st1 {{v24.4s}}, [{c}], {row_bytes}",
        "st1 {{v26.4s}}, [{c}]"
    ]
);
deep_tile!(
    deep_plain8,
    plain,
    2,
    [0: 20, 21; 1: 22, 23; 2: 24, 25; 3: 26, 27],
    [
        "st1 {{v20.4s-v21.4s}}, [{c}], {row_bytes}",
        "st1 {{v22.4s-v23.4s}}, [{c}], {row_bytes}",
        "st1 {{v24.4s-v25.4s}}, [{c}], {row_bytes}",
        "st1 {{v26.4s-v27.4s}}, [{c}]"
    ],
    two_pointers
);
deep_tile!(
    deep_plain4,
    plain,
    1,
    [0: 20; 1: 22; 2: 24; 3: 26],
    [
        "st1 {{v20.4s}}, [{c}], {row_bytes}",
        "st1 {{v22.4s}}, [{c}], {row_bytes}",
        "st1 {{v24.4s}}, [{c}], {row_bytes}",
        "st1 {{v26.4s}}, [{c}]"
    ],
    two_pointers
);

/// The deep form's tiles over the band: per group of four channels, each panel as two
/// tiles of 8 positions (its halves), a last part panel as the quads it needs.
///
/// # Safety
/// As [`run`].
unsafe fn run_deep(weights: &Weights, patches: &[i8], n: usize, c: &mut [i32]) {
    let blocks = weights.deep_blocks().expect("deep weights");
    let (packed, starts) = weights.raw();
    let repeated = weights.repeated();
    let channels = weights.channels();
    let panel_len = weights.panel_len();
    let groups = weights.k().div_ceil(KC);
    let group_len = groups * NR * weights.lane_bytes();
    let after_first = blocks.pairs - 1;
    let shape = (
        after_first / 2,
        usize::from(blocks.single) | (usize::from(blocks.half) << 1) | ((after_first % 2) << 2),
    );
    let p0 = patches.as_ptr();
    for q in 0..channels.div_ceil(NR) {
        let w = packed[q * group_len..][..group_len].as_ptr();
        let starts = starts[q * NR..][..NR].as_ptr();
        let rows = (channels - q * NR).min(NR);
        // SAFETY (the loop): the caller's contract: `n.div_ceil(MR)` panels, so every
        // tile's panel is inside `patches`; rows `q * NR..q * NR + rows` of `c` hold `n`
        // sums each.
        let out = unsafe { c.as_mut_ptr().add(q * NR * n) };
        for first in (0..n).step_by(DEEP_MR) {
            let cols = (n - first).min(DEEP_MR);
            // The panel, and its second half's quads 16 bytes each into every block.
            let p = unsafe { p0.add(first / MR * panel_len + (first % MR) / 4 * 16) };
            let tile = |to, stride| unsafe {
                match (repeated, cols.div_ceil(4)) {
                    (true, 1) => deep_repeated4(w, p, shape, starts, to, stride),
                    (true, _) => deep_repeated8(w, p, shape, starts, to, stride),
                    (false, 1) => deep_plain4(w, p, shape, starts, to, stride),
                    (false, _) => deep_plain8(w, p, shape, starts, to, stride),
                }
            };
            unsafe { into_rows(out.add(first), (n, rows, cols), tile) };
        }
    }
}

/// # Safety
/// `patches` holds `n.div_ceil(MR)` panels of `weights.panel_len()` bytes and `c` holds
/// `weights.channels() * n` sums (`Weights::check`).
#[inline(never)]
pub(super) unsafe fn run(weights: &Weights, patches: &[i8], n: usize, c: &mut [i32]) {
    if weights.deep_blocks().is_some() {
        // SAFETY: the caller's contract.
        unsafe { run_deep(weights, patches, n, c) };
        return;
    }
    let (packed, starts) = weights.raw();
    let repeated = weights.repeated();
    let channels = weights.channels();
    let panel_len = weights.panel_len();
    let blocks = Blocks::new(weights.k(), KC);
    let group_len = blocks.groups * NR * weights.lane_bytes();
    let p0 = patches.as_ptr();
    // SAFETY: the caller's contract: panel t < n.div_ceil(MR) is inside `patches`.
    let panel = |t: usize| unsafe { p0.add(t * panel_len) };
    let whole = n / MR;
    for q in 0..channels.div_ceil(NR) {
        // Each weight group is read from cache by every tile of the band.
        let w = packed[q * group_len..][..group_len].as_ptr();
        let starts = starts[q * NR..][..NR].as_ptr();
        let rows = (channels - q * NR).min(NR);
        // SAFETY (the loop): the caller's contract: `n.div_ceil(MR)` panels, so every
        // tile's panel is inside `patches`; rows `q * NR..q * NR + rows` of `c` hold `n`
        // sums each.
        let out = unsafe { c.as_mut_ptr().add(q * NR * n) };
        if rows == NR {
            for t in 0..whole {
                let (p, to) = (panel(t), unsafe { out.add(t * MR) });
                unsafe {
                    match repeated {
                        true => repeated16(w, p, &blocks, starts, to, n),
                        false => plain16(w, p, &blocks, starts, to, n),
                    }
                }
            }
        }
        // The last channels or positions: as many quads as they need ([`into_rows`]).
        let first = if rows == NR { whole } else { 0 };
        for t in first..n.div_ceil(MR) {
            let cols = (n - t * MR).min(MR);
            let p = panel(t);
            let tile = |to, stride| unsafe {
                match (repeated, cols.div_ceil(4)) {
                    (true, 1) => repeated4(w, p, &blocks, starts, to, stride),
                    (true, 2) => repeated8(w, p, &blocks, starts, to, stride),
                    (true, 3) => repeated12(w, p, &blocks, starts, to, stride),
                    (true, _) => repeated16(w, p, &blocks, starts, to, stride),
                    (false, 1) => plain4(w, p, &blocks, starts, to, stride),
                    (false, 2) => plain8(w, p, &blocks, starts, to, stride),
                    (false, 3) => plain12(w, p, &blocks, starts, to, stride),
                    (false, _) => plain16(w, p, &blocks, starts, to, stride),
                }
            };
            unsafe { into_rows(out.add(t * MR), (n, rows, cols), tile) };
        }
    }
}

/// A tile's sums for `cols` positions (at most [`MR`]) of `rows` channels, whose rows in
/// `c` start at `out`, `n` sums apart: `tile(to, stride)` writes four rows of whole quads
/// at `to`, `stride` sums apart, straight into `c` when they fill whole quads of all four
/// channels, else into a buffer whose part is then copied.
///
/// # Safety
/// `rows` rows of `cols` sums at `out`, `n` apart.
#[inline(always)]
unsafe fn into_rows(
    out: *mut i32,
    (n, rows, cols): (usize, usize, usize),
    tile: impl FnOnce(*mut i32, usize),
) {
    if rows == NR && cols.is_multiple_of(4) {
        return tile(out, n);
    }
    let mut sums = [0i32; NR * MR];
    tile(sums.as_mut_ptr(), MR);
    for (j, row) in sums.chunks_exact(MR).take(rows).enumerate() {
        // SAFETY: the caller's contract.
        unsafe { super::panels::put_part(row.as_ptr(), out.add(j * n), cols) };
    }
}
