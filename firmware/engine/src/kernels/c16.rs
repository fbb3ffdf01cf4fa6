//! int8 products as 16-deep dot products: the family for cores without a dot-product
//! instruction (Cortex-A53 and Cortex-A72: the i.MX 8M Plus and the Raspberry Pi 4).
//!
//! tract's kernel for those cores widens both operands to 16 bits and multiplies by
//! element (SMLAL): four multiply-adds per instruction, what fp32's FMLA does, so int8 was
//! no faster than fp32 there. Here both operands keep 16 consecutive k of one row together,
//! so that the NEON tile multiplies eight pairs into 16-bit lanes (SMULL), adds the next
//! eight pairs into the same lanes (SMLAL2) and widens the lane pairs into 32-bit sums
//! (SADALP): 16 multiply-adds in three instructions, and one four-register load per
//! operand for a tile of 4 channels by 4 positions (the technique of XNNPACK's
//! `c16-neon-mlal` and onnxruntime MLAS's S8S8 kernels; the code is the engine's own).
//!
//! A 16-bit lane sums the products at depths `16g + i` and `16g + i + 8`. Two products of
//! an i8 by a weight in [-127, 127] fit it (2 · 128 · 127 = 32512), and so does one product
//! of -128 by -128 beside one of them (16384 + 16256); only two of -128 by -128 do not. So
//! [`Weights::new`] refuses a layer only where one channel has -128 at both depths of a
//! lane, and the operator keeps that layer on tract's kernel. onnxruntime's symmetric s8
//! weights, and the TFLite quantisation rules, stay in [-127, 127]; its asymmetric u8
//! weights, shifted to i8, reach -128 only at their few smallest values.
//!
//! Packing (kernels/panels.rs; k padded with zeros to a multiple of [`KC`] on both sides):
//! - weights: channels in groups of [`NR`] (the last padded with zero channels); group
//!   `q`'s 16-k block `g` holds `NR × 16` bytes, `w[(q · groups + g) · NR · 16 + j · 16 + i]`
//!   being channel `q · NR + j`'s weight at `k = 16g + i`;
//! - patches: panels of [`MR`] output positions (the last padded with zero positions);
//!   `p[panel · panel_len + g · MR · 16 + m · 16 + i]` is position `panel · MR + m` at
//!   `k = 16g + i`. im2col.rs packs a band's patches so (`Layout::K16`).
//!
//! Sums wrap in i32 as tract's do; exact sums do not depend on their order, so the values
//! are tract's bit for bit.

use super::panels::Packed;

/// k per packed block.
pub(crate) const KC: usize = 16;
/// Output channels per weight group.
pub(crate) const NR: usize = 4;
/// Output positions per patch panel.
pub(crate) const MR: usize = 8;

/// One layer's weights in c16 packing (kernels/panels.rs with 4 channels, 16 k and 8
/// positions), with the value each channel's sum starts from.
#[derive(Debug)]
pub(crate) struct Weights {
    packed: Packed<NR, KC, MR>,
    /// Per channel, padded to whole groups, its start four times: a NEON vector added to
    /// that channel's row of four positions.
    start_lanes: Vec<i32>,
}

impl Weights {
    /// From `rows` (`channels` rows of `k` weights) and each channel's starting value;
    /// refused when a weight is -128 (see the module doc).
    pub(crate) fn new(
        rows: &[i8],
        channels: usize,
        k: usize,
        starts: &[i32],
    ) -> Result<Weights, String> {
        let packed = Packed::new(rows, channels, k, starts)?;
        if let Some((ch, at)) = super::panels::overflowing_lane(rows, k, KC) {
            return Err(format!(
                "channel {ch} has weights of -128 at depths {at} and {}: their two products \
                 could overflow a 16-bit lane",
                at + KC / 2
            ));
        }
        let start_lanes = packed.raw().1.iter().flat_map(|&s| [s; 4]).collect();
        Ok(Weights {
            packed,
            start_lanes,
        })
    }

    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub(crate) fn channels(&self) -> usize {
        self.packed.channels()
    }

    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub(crate) fn k(&self) -> usize {
        self.packed.k()
    }

    /// Bytes per patch panel for this depth.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub(crate) fn panel_len(&self) -> usize {
        self.packed.panel_len()
    }

    /// `c[ch · n + pos] = start[ch] + Σ_k w[ch][k] · p[pos][k]` for the `n` positions of
    /// `patches` (`n.div_ceil(MR)` panels in c16 packing).
    pub(crate) fn run(&self, patches: &[i8], n: usize, c: &mut [i32]) -> Result<(), String> {
        self.packed.check(patches, n, c)?;
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is part of aarch64; `check` holds the lengths the kernel reads and
        // writes.
        unsafe {
            super::c16_neon::run(self, patches, n, c)
        };
        #[cfg(not(target_arch = "aarch64"))]
        self.run_scalar(patches, n, c);
        Ok(())
    }

    /// The scalar reference: what every ISA's kernel must compute.
    #[cfg_attr(all(target_arch = "aarch64", not(test)), allow(dead_code))]
    pub(crate) fn run_scalar(&self, patches: &[i8], n: usize, c: &mut [i32]) {
        self.packed.run_scalar(patches, n, c)
    }

    /// The packed weights and each channel's start as four lanes (`[start; 4]`), padded to
    /// whole groups, for the ISA kernels.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub(crate) fn raw(&self) -> (&[i8], &[i32]) {
        (self.packed.raw().0, &self.start_lanes)
    }
}

/// Instructions the NEON tiles take for `channels` channels of depth `k` at `n` positions
/// (a model of c16_neon.rs: 50 per full 16-k block of a tile, 34 for a last half block,
/// about 33 per tile to start, fold, store and loop), for banded.rs to compare with
/// [`super::pairs::instructions`].
pub(crate) fn instructions(channels: usize, k: usize, n: usize) -> usize {
    let blocks = k.div_ceil(KC);
    let half = usize::from(blocks > 1 && (1..=KC / 2).contains(&(k % KC)));
    let tile = 50 * (blocks - half) + 34 * half + 33;
    channels.div_ceil(NR) * n.div_ceil(MR / 2) * tile
}

/// Bytes per patch panel of depth `k`.
pub(crate) fn panel_len(k: usize) -> usize {
    super::panels::panel_len::<KC, MR>(k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::panels::tests::{self as panels, values};

    fn check(m: usize, k: usize, n: usize, w: &[i8], x: &[i8]) {
        crate::kernels::panels::tests::check::<Weights, KC, MR>(
            (Weights::new, Weights::run, Weights::run_scalar),
            (m, k, n),
            (w, x),
            "kernel",
        );
    }

    /// Every combination of channel counts off the group size, depths off the block size
    /// (a 1x1 layer of 3 channels, 3x3 of 3, 5x5 of 17, ...) and position counts off the
    /// panel size: the kernel this CPU runs and the scalar reference give the naive sums.
    #[test]
    fn matches_the_naive_sums_over_odd_shapes() {
        let mut seed = 7;
        for m in [1, 3, 4, 5, 8, 17, 64] {
            for k in [1, 3, 8, 9, 16, 17, 24, 27, 32, 40, 48, 144, 152, 425] {
                for n in [1, 3, 4, 5, 8, 9, 23, 64] {
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
        panels::holds_at_the_extremes(&check, &[(5, 33, 9), (4, 4608, 8)]);
    }

    /// Weights of -128 beside other weights in their lanes (kernels/panels.rs
    /// `holds_with_minus_128_beside_others`).
    #[test]
    fn holds_with_weights_of_minus_128_beside_other_weights() {
        panels::holds_with_minus_128_beside_others(
            &check,
            KC,
            &[(5, 33, 9), (4, 48, 8), (3, 425, 17)],
        );
    }

    #[test]
    fn refuses_weights_of_minus_128_at_both_depths_of_a_lane() {
        let mut w = vec![1i8; 3 * 40];
        // Channel 2, depths 21 and 29: one lane of the second 16-k block.
        w[80 + 21] = i8::MIN;
        w[80 + 29] = i8::MIN;
        let err = Weights::new(&w, 3, 40, &[0; 3]).unwrap_err();
        assert!(
            err.contains("channel 2") && err.contains("21 and 29"),
            "{err}"
        );
        // Depths 24 and 32 are in different blocks, 21 and 30 in different lanes; a depth
        // whose lane partner lies past k (37, 45) is alone in its lane.
        for pair in [[24, 32], [21, 30], [37, 38]] {
            let mut w = vec![1i8; 3 * 40];
            w[80 + pair[0]] = i8::MIN;
            w[80 + pair[1]] = i8::MIN;
            assert!(Weights::new(&w, 3, 40, &[0; 3]).is_ok(), "{pair:?}");
        }
    }
}
