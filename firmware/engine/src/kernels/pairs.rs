//! int8 products whose 16-bit lanes hold pairs of k: with c16.rs, the two families of
//! cores without a dot product (Cortex-A53, Cortex-A72), of which banded.rs picks one per
//! layer (this one on shallow layers and wherever positions fill its tiles of 16).
//!
//! c16's tile multiplies 16 k of one position by 16 k of one channel and ends with a
//! pairwise fold of its 16 accumulators, its channels' starts and four stores: about 33
//! instructions for 16 sums, as many as two 16-k blocks of products. MobileNet-style 1x1
//! layers are 16 to 96 deep, so that fixed cost was a seventh of their products.
//!
//! Here a 16-bit lane holds one position's products at two k of a block of four, and the
//! accumulator's four 32-bit lanes are four positions of one channel: SMULL multiplies
//! the low halves (k 0 and 1 of four positions) by the channel's two weights repeated,
//! SMLAL2 adds the high halves' (k 2 and 3), SADALP adds the lane pairs into the
//! positions' sums. The same 16 multiply-adds per three instructions as c16, with no
//! fold: a tile of 4 channels by 16 positions ends with its starts added and its four
//! channel rows stored, 21 instructions for 64 sums. On small layers a channel's weights
//! for a block are packed as one register, its two pairs of k each repeated four times
//! (the low half for SMULL, the high half for SMLAL2), so a block's four channels are
//! one four-register load as in c16: 50 instructions per 256 multiply-adds, for four
//! times the layer's weight bytes (at most [`MAX_REPEATED_BYTES`]). Larger layers keep
//! their weights plain, four bytes per channel and block, and LD4R repeats each pair of
//! k across a register as it loads them: two loads for the four channels, 51
//! instructions. banded.rs picks, per layer, the family [`instructions`] counts fewer
//! for.
//!
//! A 16-bit lane sums the products at depths `4g + i` and `4g + i + 2`: as in c16.rs, two
//! products of -128 by -128 overflow it, so [`Weights::new`] refuses a layer where one
//! channel has -128 at both depths of a lane.
//!
//! Packing (k padded with zeros to a multiple of [`KC`] on both sides):
//! - weights: groups of [`NR`] channels, each block of 4 k 16 bytes per channel
//!   repeated or 4 plain (the layouts are [`Weights`]' `lanes`);
//! - patches: panels of [`MR`] positions; in a panel, block `g` (k `4g..4g + 4`) is 64
//!   bytes, four positions per 16 bytes: their k `4g` and `4g + 1` interleaved in the low
//!   eight, `4g + 2` and `4g + 3` in the high eight ([`offset`]). im2col.rs packs a band's
//!   patches so (`Layout::Pairs`).
//!
//! Sums wrap in i32 as tract's do; exact sums do not depend on their order, so the values
//! are tract's bit for bit.
//!
//! The deep form ([`Weights::deep`]) lets a 16-bit lane hold four products before SADALP
//! widens it: SMULL and SMLAL2 of one block, then SMLAL and SMLAL2 of the next into the
//! same lanes, 32 multiply-adds per five instructions where the form above does 16 per
//! three. Four products of up to 128 · |w| fit 16 bits when their weights' magnitudes add
//! up to at most 255 ([`LANE_BUDGET`]); per-channel symmetric weights reach 127 once per
//! channel and are mostly far smaller, so [`deep_lanes`] lowers the few lanes over the
//! budget (the largest weight of the lane) and returns what it took off, which banded.rs
//! adds back per patch row (residuals.rs `Residuals`). Its tiles are 4 channels by 8
//! positions (pairs_neon.rs: their two blocks' temporaries and sums fill the registers),
//! on the same packing.

/// k per packed block.
pub(crate) const KC: usize = 4;
/// Output channels per weight group.
pub(crate) const NR: usize = 4;
/// Output positions per patch panel (and per NEON tile).
pub(crate) const MR: usize = 16;

/// Where position `m` of a panel (`m < MR`) at depth `k` lies in it.
pub(crate) fn offset(m: usize, k: usize) -> usize {
    (k / KC) * KC * MR + (m / 4) * 16 + (k % KC / 2) * 8 + (m % 4) * 2 + k % 2
}

/// Bytes per patch panel of depth `k`.
pub(crate) fn panel_len(k: usize) -> usize {
    super::panels::panel_len::<KC, MR>(k)
}

/// The most the weights' magnitudes may add up to in one 16-bit lane of the deep form: its
/// four products of at most `128 · |w|` then add up to at most 32640.
pub(crate) const LANE_BUDGET: i32 = 255;

/// How the deep form walks a depth: `pairs` pairs of full blocks (the first block `2h`,
/// its partner `2h + 1`), then one full block when `single`, then one of only its first
/// two k when `half` (as [`super::panels::Blocks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeepBlocks {
    pub(crate) pairs: usize,
    pub(crate) single: bool,
    pub(crate) half: bool,
}

impl DeepBlocks {
    /// For depth `k`, when it has at least one pair of full blocks.
    pub(crate) fn new(k: usize) -> Option<DeepBlocks> {
        let groups = k.div_ceil(KC);
        let half = groups > 1 && matches!(k % KC, 1 | 2);
        let full = groups - usize::from(half);
        (full >= 2).then_some(DeepBlocks {
            pairs: full / 2,
            single: full % 2 == 1,
            half,
        })
    }

    /// Each 16-bit lane of the pairs of blocks for a depth of `k`: the depths whose
    /// products it sums (`8h + i`, `+ 2`, `+ 4`, `+ 6` for pair `h` and `i` 0 or 1), those
    /// below `k`.
    fn lanes(&self, k: usize) -> impl Iterator<Item = Vec<usize>> {
        (0..self.pairs * 2).map(move |lane| {
            let first = 2 * KC * (lane / 2) + lane % 2;
            (0..4).map(|j| first + 2 * j).filter(|&d| d < k).collect()
        })
    }
}

/// The magnitudes of `row`'s weights at `depths`, added up.
fn magnitude(row: &[i8], depths: &[usize]) -> i32 {
    depths.iter().map(|&d| i32::from(row[d]).abs()).sum()
}

/// Lowers `rows` (`channels` rows of `k` weights) until every lane of the deep form adds
/// up to at most [`LANE_BUDGET`] in magnitude: in each lane over it, the largest weights
/// by magnitude, each by what the lane still has over. Returns what it took off, as
/// `(k, channel, weight)`: `Σ_k x · w` is the lowered weights' sums plus those products.
/// Nothing for a depth without a pair of blocks.
pub(crate) fn deep_lanes(
    rows: &mut [i8],
    channels: usize,
    k: usize,
) -> Vec<crate::residuals::Term> {
    let mut taken = vec![];
    let Some(blocks) = DeepBlocks::new(k) else {
        return taken;
    };
    for (ch, row) in rows.chunks_exact_mut(k).enumerate().take(channels) {
        for depths in blocks.lanes(k) {
            let mut over = magnitude(row, &depths) - LANE_BUDGET;
            while over > 0 {
                let &d = depths
                    .iter()
                    .max_by_key(|&&d| i32::from(row[d]).abs())
                    .expect("a lane over its budget has weights");
                let w = i32::from(row[d]);
                let cut = over.min(w.abs());
                let lowered = w - cut * w.signum();
                row[d] = lowered as i8;
                taken.push((d, ch, w - lowered));
                over -= cut;
            }
        }
    }
    taken
}

/// Instructions the NEON tiles take for `channels` channels of depth `k` at `n` positions
/// (a model of pairs_neon.rs: per 4-k block of a tile of q quads of positions 12q SMULL,
/// SMLAL2 and SADALP and two loads, three with plain lanes; per tile about 33 to start,
/// end and loop, 40 for a last part tile through its buffer), for banded.rs to compare
/// with c16's [`super::c16::instructions`].
pub(crate) fn instructions(channels: usize, k: usize, n: usize) -> usize {
    let blocks = k.div_ceil(KC);
    // A last block of one or two k runs no SMLAL2.
    let half = usize::from(blocks > 1 && matches!(k % KC, 1 | 2));
    let loads = if repeats(channels, k) { 2 } else { 3 };
    let tile = |quads: usize| (loads + 12 * quads) * (blocks - half) + (loads + 8 * quads) * half;
    let rest = match n % MR {
        0 => 0,
        part => tile(part.div_ceil(4)) + 40,
    };
    channels.div_ceil(NR) * ((n / MR) * (tile(4) + 33) + rest)
}

/// [`instructions`] for the deep form (pairs_neon.rs: per pair of blocks of a tile of q
/// quads of positions 20q SMULL, SMLAL, SMLAL2 and SADALP, four loads (six with plain
/// lanes) and one of the loop's two per two pairs; per single block 12q and two or
/// three; about 30 to start, end and dispatch a tile of 8 positions: a first model with
/// 20 per tile and no loop counted about 5 % under what the tiles ran on
/// EfficientNet-Lite0 under qemu, cortex-a72); `None` for a depth without a pair of
/// blocks.
pub(crate) fn deep_instructions(channels: usize, k: usize, n: usize) -> Option<usize> {
    let blocks = DeepBlocks::new(k)?;
    let (pair_loads, block_loads) = if repeats(channels, k) { (4, 2) } else { (6, 3) };
    let tile = |quads: usize| {
        blocks.pairs * (pair_loads + 1 + 20 * quads)
            + usize::from(blocks.single) * (block_loads + 12 * quads)
            + usize::from(blocks.half) * (block_loads + 8 * quads)
            + 30
    };
    let rest = match n % DEEP_MR {
        0 => 0,
        part => tile(part.div_ceil(4)) + 20,
    };
    Some(channels.div_ceil(NR) * ((n / DEEP_MR) * tile(2) + rest))
}

/// Output positions per tile of the deep form (half a panel).
pub(crate) const DEEP_MR: usize = 8;

/// The most bytes a layer's weights may take with their lanes repeated (four times the
/// weights): MobileNet-style shallow layers (MobileNetV2's largest there, 384 channels of
/// 64, take 96 KiB; EfficientNet-Lite0's 672 of 112, 294 KiB). Larger layers keep plain
/// lanes, one load more per block, so that the int8 model stays near a quarter of the
/// fp32 one in memory (Lite0's 7x7 layers would each take 0.7 MiB, 5.6 MiB in all, to
/// save 0.3 % of its instructions).
const MAX_REPEATED_BYTES: usize = 512 << 10;

/// Whether a layer of `channels` channels of depth `k` has its lanes repeated.
fn repeats(channels: usize, k: usize) -> bool {
    channels.div_ceil(NR) * NR * k.div_ceil(KC) * 16 <= MAX_REPEATED_BYTES
}

/// One layer's weights in this family's packing, with the value each channel's sum starts
/// from.
#[derive(Debug)]
pub(crate) struct Weights {
    /// Group `q`'s block `g` holds its four channels' lanes, `lane_bytes` each. Repeated
    /// (16 bytes): `lanes[((q · groups + g) · NR + j) · 16 + h · 8 + 2r + i]` is channel
    /// `q · NR + j`'s weight at `k = 4g + 2h + i`, for each repeat r of four, one
    /// register's SMULL (low half) and SMLAL2 (high half) operand. Plain (4 bytes):
    /// `lanes[((q · groups + g) · NR + j) · 4 + kk % 4]`, which LD4R repeats. The last
    /// group is padded with zero channels, k with zeros.
    lanes: Vec<i8>,
    repeated: bool,
    /// The deep form's blocks, when the weights are in its lanes' budget and its kernel
    /// runs them.
    deep: Option<DeepBlocks>,
    /// Per channel, padded with zeros to whole groups.
    starts: Vec<i32>,
    channels: usize,
    k: usize,
}

impl Weights {
    /// From `rows` (`channels` rows of `k` weights) and each channel's starting value;
    /// refused when two weights of -128 share a lane (see the module doc).
    pub(crate) fn new(
        rows: &[i8],
        channels: usize,
        k: usize,
        starts: &[i32],
    ) -> Result<Weights, String> {
        super::panels::check_rows(rows, channels, k, starts)?;
        if let Some((ch, at)) = super::panels::overflowing_lane(rows, k, KC) {
            return Err(format!(
                "channel {ch} has weights of -128 at depths {at} and {}: their two products \
                 could overflow a 16-bit lane",
                at + KC / 2
            ));
        }
        Ok(Self::packed(
            rows,
            channels,
            k,
            starts,
            repeats(channels, k),
        ))
    }

    /// The deep form of [`Weights::new`]: refused for a depth without a pair of blocks, a
    /// lane of the pairs over [`LANE_BUDGET`] ([`deep_lanes`] makes the rows fit), or what
    /// [`Weights::new`] refuses (the blocks after the pairs keep two products per lane).
    pub(crate) fn deep(
        rows: &[i8],
        channels: usize,
        k: usize,
        starts: &[i32],
    ) -> Result<Weights, String> {
        let Some(blocks) = DeepBlocks::new(k) else {
            return Err(format!("a depth of {k} has no pair of 4-k blocks"));
        };
        let mut weights = Self::new(rows, channels, k, starts)?;
        for (ch, row) in rows.chunks_exact(k).enumerate() {
            for depths in blocks.lanes(k) {
                let sum = magnitude(row, &depths);
                if sum > LANE_BUDGET {
                    return Err(format!(
                        "channel {ch}'s weights at depths {depths:?} add up to {sum} in \
                         magnitude, over the {LANE_BUDGET} of a 16-bit lane"
                    ));
                }
            }
        }
        weights.deep = Some(blocks);
        Ok(weights)
    }

    /// The weights packed with repeated lanes or plain ones, after `new`'s checks.
    fn packed(rows: &[i8], channels: usize, k: usize, starts: &[i32], repeated: bool) -> Self {
        let groups = k.div_ceil(KC);
        let padded = channels.div_ceil(NR) * NR;
        let lane_bytes = if repeated { 16 } else { KC };
        let mut lanes = vec![0i8; padded * groups * lane_bytes];
        for (ch, row) in rows.chunks_exact(k).enumerate() {
            let (q, j) = (ch / NR, ch % NR);
            for (kk, &w) in row.iter().enumerate() {
                let lane = ((q * groups + kk / KC) * NR + j) * lane_bytes;
                if repeated {
                    let at = lane + kk % KC / 2 * 8 + kk % 2;
                    for r in 0..4 {
                        lanes[at + 2 * r] = w;
                    }
                } else {
                    lanes[lane + kk % KC] = w;
                }
            }
        }
        let mut starts = starts.to_vec();
        starts.resize(padded, 0);
        Weights {
            lanes,
            repeated,
            deep: None,
            starts,
            channels,
            k,
        }
    }

    /// Whether the lanes are repeated (see [`Weights::lanes`]).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub(crate) fn repeated(&self) -> bool {
        self.repeated
    }

    /// The deep form's blocks, when the weights are in that form.
    pub(crate) fn deep_blocks(&self) -> Option<DeepBlocks> {
        self.deep
    }

    /// Bytes per channel per 4-k block: 16 repeated, 4 plain.
    pub(crate) fn lane_bytes(&self) -> usize {
        if self.repeated {
            16
        } else {
            KC
        }
    }

    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub(crate) fn channels(&self) -> usize {
        self.channels
    }

    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub(crate) fn k(&self) -> usize {
        self.k
    }

    /// Bytes per patch panel for this depth.
    pub(crate) fn panel_len(&self) -> usize {
        panel_len(self.k)
    }

    /// `c[ch · n + pos] = start[ch] + Σ_k w[ch][k] · p[pos][k]` for the `n` positions of
    /// `patches` (`n.div_ceil(MR)` panels in this family's packing).
    pub(crate) fn run(&self, patches: &[i8], n: usize, c: &mut [i32]) -> Result<(), String> {
        super::panels::check_operands(
            (self.channels, self.k),
            (self.panel_len(), MR),
            patches,
            n,
            c,
        )?;
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is part of aarch64; `check_operands` holds the lengths the kernel
        // reads and writes.
        unsafe {
            super::pairs_neon::run(self, patches, n, c)
        };
        #[cfg(not(target_arch = "aarch64"))]
        self.run_scalar(patches, n, c);
        Ok(())
    }

    /// The scalar reference: what every ISA's kernel must compute.
    #[cfg_attr(all(target_arch = "aarch64", not(test)), allow(dead_code))]
    pub(crate) fn run_scalar(&self, patches: &[i8], n: usize, c: &mut [i32]) {
        let groups = self.k.div_ceil(KC);
        let panel_len = self.panel_len();
        for ch in 0..self.channels {
            let (q, j) = (ch / NR, ch % NR);
            for pos in 0..n {
                let panel = &patches[(pos / MR) * panel_len..][..panel_len];
                let mut sum = self.starts[ch];
                for kk in 0..self.k {
                    let lane = ((q * groups + kk / KC) * NR + j) * self.lane_bytes();
                    let w = match self.repeated {
                        true => self.lanes[lane + kk % KC / 2 * 8 + kk % 2],
                        false => self.lanes[lane + kk % KC],
                    };
                    let x = panel[offset(pos % MR, kk)];
                    sum = sum.wrapping_add(i32::from(w) * i32::from(x));
                }
                c[ch * n + pos] = sum;
            }
        }
    }

    /// The weight lanes and each channel's start, padded to whole groups, for the ISA
    /// kernels.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub(crate) fn raw(&self) -> (&[i8], &[i32]) {
        (&self.lanes, &self.starts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::panels::tests::{self as panels, naive, starts, values};

    /// `matrix` (k rows of n positions) in this family's panels, written from the module
    /// doc's words rather than from [`offset`].
    fn pack(matrix: &[i8], k: usize, n: usize) -> Vec<i8> {
        let len = panel_len(k);
        let mut out = vec![0i8; n.div_ceil(MR) * len];
        for panel in 0..n.div_ceil(MR) {
            for g in 0..k.div_ceil(KC) {
                let block = &mut out[panel * len + g * 64..][..64];
                for (quad, bytes) in block.chunks_exact_mut(16).enumerate() {
                    for (half, eight) in bytes.chunks_exact_mut(8).enumerate() {
                        for (i, v) in eight.iter_mut().enumerate() {
                            let pos = panel * MR + quad * 4 + i / 2;
                            let kk = 4 * g + 2 * half + i % 2;
                            if pos < n && kk < k {
                                *v = matrix[kk * n + pos];
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// Both lane forms, as the kernel this CPU runs and as the scalar reference, give the
    /// naive sums.
    fn check(m: usize, k: usize, n: usize, w: &[i8], x: &[i8]) {
        let starts = starts(m);
        // `new`'s checks, and its choice of form for this size.
        Weights::new(w, m, k, &starts).unwrap();
        let patches = pack(x, k, n);
        let want = naive(w, x, &starts, (m, k, n));
        for repeated in [true, false] {
            let weights = Weights::packed(w, m, k, &starts, repeated);
            let mut got = vec![i32::MIN; m * n];
            weights.run(&patches, n, &mut got).unwrap();
            assert_eq!(
                got, want,
                "kernel, lanes repeated {repeated}, {m} channels x {k} deep x {n} positions"
            );
            let mut scalar = vec![i32::MIN; m * n];
            weights.run_scalar(&patches, n, &mut scalar);
            assert_eq!(
                scalar, want,
                "scalar, lanes repeated {repeated}, {m} x {k} x {n}"
            );
        }
    }

    /// Lanes are repeated up to `MAX_REPEATED_BYTES` and plain past it.
    #[test]
    fn large_layers_keep_plain_lanes() {
        for (m, k, repeated) in [(384, 64, true), (64, 2048, true), (64, 2052, false)] {
            let w = values(m * k, 3, -127);
            let weights = Weights::new(&w, m, k, &starts(m)).unwrap();
            assert_eq!(weights.repeated(), repeated, "{m} x {k}");
            assert_eq!(
                weights.raw().0.len(),
                m * k.div_ceil(4) * weights.lane_bytes()
            );
        }
    }

    #[test]
    fn offsets_follow_the_packing() {
        let (k, n) = (9, 16);
        let matrix: Vec<i8> = (0..k * n).map(|i| (i % 127) as i8).collect();
        let packed = pack(&matrix, k, n);
        for kk in 0..k {
            for m in 0..n {
                assert_eq!(packed[offset(m, kk)], matrix[kk * n + m], "m {m}, k {kk}");
            }
        }
    }

    /// Every combination of channel counts off the group size, depths off the block size
    /// (odd, 4g + 1 and 4g + 2, whose last block runs its low halves only) and position
    /// counts off the tile's 16 (last tiles of 4, 8, 12 and 16 positions, partly used):
    /// the kernel this CPU runs and the scalar reference give the naive sums.
    #[test]
    fn matches_the_naive_sums_over_odd_shapes() {
        let mut seed = 11;
        for m in [1, 3, 4, 5, 8, 17, 64] {
            for k in [1, 2, 3, 4, 5, 6, 8, 9, 16, 17, 18, 24, 27, 40, 144, 425] {
                for n in [1, 3, 4, 5, 8, 12, 15, 16, 17, 24, 28, 33, 44, 49, 64] {
                    seed += 1;
                    let w = values(m * k, seed, -127);
                    let x = values(k * n, seed * 31, -128);
                    check(m, k, n, &w, &x);
                }
            }
        }
    }

    /// The extremes of both operands (kernels/panels.rs `holds_at_the_extremes`).
    #[test]
    fn holds_at_the_extremes_of_the_16_bit_lanes() {
        panels::holds_at_the_extremes(&check, &[(5, 33, 17), (4, 4608, 16)]);
    }

    /// Weights of -128 beside other weights in their lanes (kernels/panels.rs
    /// `holds_with_minus_128_beside_others`).
    #[test]
    fn holds_with_weights_of_minus_128_beside_other_weights() {
        panels::holds_with_minus_128_beside_others(
            &check,
            KC,
            &[(5, 33, 9), (4, 48, 16), (3, 425, 17)],
        );
    }

    /// The deep form: `w` lowered into its lanes' budget ([`deep_lanes`]), the kernel this
    /// CPU runs and the scalar reference give the naive sums of the lowered weights (both
    /// lane forms), and those plus what `deep_lanes` took off give the naive sums of `w`.
    fn check_deep(m: usize, k: usize, n: usize, w: &[i8], x: &[i8]) {
        let starts = starts(m);
        let mut lowered = w.to_vec();
        let taken = deep_lanes(&mut lowered, m, k);
        Weights::deep(&lowered, m, k, &starts).unwrap();
        let patches = pack(x, k, n);
        let want = naive(&lowered, x, &starts, (m, k, n));
        let mut whole = want.clone();
        for &(kk, ch, r) in &taken {
            for pos in 0..n {
                let product = r * i32::from(x[kk * n + pos]);
                whole[ch * n + pos] = whole[ch * n + pos].wrapping_add(product);
            }
        }
        assert_eq!(whole, naive(w, x, &starts, (m, k, n)), "{m} x {k} x {n}");
        for repeated in [true, false] {
            let mut weights = Weights::packed(&lowered, m, k, &starts, repeated);
            weights.deep = DeepBlocks::new(k);
            let mut got = vec![i32::MIN; m * n];
            weights.run(&patches, n, &mut got).unwrap();
            let case = format!("deep, lanes repeated {repeated}, {m} x {k} x {n}");
            assert_eq!(got, want, "kernel, {case}");
            let mut scalar = vec![i32::MIN; m * n];
            weights.run_scalar(&patches, n, &mut scalar);
            assert_eq!(scalar, want, "scalar, {case}");
        }
    }

    /// The deep form over odd shapes: channels off the group of 4, depths with one pair of
    /// blocks and many, a single block after the pairs, a half block (4g + 1 and 4g + 2),
    /// positions off its tiles of 8 (last tiles of 4 and 8, partly used), with weights
    /// over the whole i8 range, so that some lanes are lowered.
    #[test]
    fn the_deep_form_matches_the_naive_sums_over_odd_shapes() {
        let mut seed = 5;
        let mut lowered = 0;
        for m in [1, 3, 4, 5, 8, 17] {
            for k in [7, 8, 9, 10, 12, 13, 16, 17, 18, 24, 27, 40, 144, 425] {
                for n in [1, 3, 4, 5, 8, 9, 12, 15, 16, 17, 24, 28, 33, 49] {
                    seed += 1;
                    let w = values(m * k, seed, -128);
                    let x = values(k * n, seed * 29, -128);
                    let mut fit = w.clone();
                    lowered += deep_lanes(&mut fit, m, k).len();
                    check_deep(m, k, n, &w, &x);
                }
            }
        }
        assert!(lowered > 0, "no lane was over its budget");
    }

    /// Lanes at their budget against the extremes of the patches: 127 and -128 in one
    /// lane (255), a lane of four at 63 or 64, every other lane's weights at ±63; the
    /// 16-bit lanes reach ±32640.
    #[test]
    fn the_deep_form_holds_at_the_lanes_budget() {
        let (m, k) = (5, 43);
        let blocks = DeepBlocks::new(k).unwrap();
        let mut w = vec![0i8; m * k];
        for (ch, row) in w.chunks_exact_mut(k).enumerate() {
            for (kk, v) in row.iter_mut().enumerate() {
                *v = if kk % 3 == 0 { -63 } else { 63 };
            }
            for depths in blocks.lanes(k) {
                let values = match depths[0] < 8 {
                    true => [127, -128, 0, 0],
                    false if ch % 2 == 0 => [64, 64, 64, 63],
                    false => continue,
                };
                for (&d, v) in depths.iter().zip(values) {
                    row[d] = v;
                }
            }
        }
        let mut fit = w.clone();
        assert!(
            deep_lanes(&mut fit, m, k).is_empty(),
            "lanes at the budget are lowered"
        );
        for x in [-128i8, 127] {
            for n in [8, 13, 16] {
                check_deep(m, k, n, &w, &vec![x; k * n]);
            }
        }
    }

    #[test]
    fn the_deep_form_refuses_a_lane_over_its_budget() {
        let (m, k) = (3, 16);
        let mut w = vec![1i8; m * k];
        // Channel 1, depths 9, 11, 13 and 15: one lane of the second pair of blocks, 256
        // in all.
        for d in [9, 11, 13, 15] {
            w[k + d] = 64;
        }
        let err = Weights::deep(&w, m, k, &[0; 3]).unwrap_err();
        assert!(err.contains("channel 1") && err.contains("256"), "{err}");
        // A depth of one pair's worth short of two blocks has no deep form.
        assert!(Weights::deep(&[1; 6], 1, 6, &[0]).is_err());
        let mut fit = w.clone();
        let taken = deep_lanes(&mut fit, m, k);
        // Of weights alike, the deepest is lowered.
        assert_eq!(taken, vec![(15, 1, 1)]);
        assert!(Weights::deep(&fit, m, k, &[0; 3]).is_ok());
        // The single block after the pairs keeps lanes of two products: two weights of
        // -128 in one of them (depths 8 and 10 of 12) are refused, as by `new`.
        let mut w = vec![1i8; 12];
        w[8] = i8::MIN;
        w[10] = i8::MIN;
        assert!(deep_lanes(&mut w.clone(), 1, 12).is_empty());
        let err = Weights::deep(&w, 1, 12, &[0]).unwrap_err();
        assert!(err.contains("8 and 10"), "{err}");
    }

    #[test]
    fn refuses_weights_of_minus_128_at_both_depths_of_a_lane() {
        let mut w = vec![1i8; 3 * 10];
        // Channel 2, depths 5 and 7: one lane of the second block.
        w[20 + 5] = i8::MIN;
        w[20 + 7] = i8::MIN;
        let err = Weights::new(&w, 3, 10, &[0; 3]).unwrap_err();
        assert!(
            err.contains("channel 2") && err.contains("5 and 7"),
            "{err}"
        );
        // Depths 6 and 8 are in different blocks, 5 and 6 in different lanes; depth 9's
        // lane partner lies past k.
        for pair in [[6, 8], [5, 6], [9, 3]] {
            let mut w = vec![1i8; 3 * 10];
            w[20 + pair[0]] = i8::MIN;
            w[20 + pair[1]] = i8::MIN;
            assert!(Weights::new(&w, 3, 10, &[0; 3]).is_ok(), "{pair:?}");
        }
    }
}
