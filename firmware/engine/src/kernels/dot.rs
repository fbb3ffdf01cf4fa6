//! int8 products as 4-deep dot products: the family for cores with a dot-product
//! instruction (Cortex-A55 and Cortex-A76: the RK3588 and the Raspberry Pi 5).
//!
//! SDOT (by element) multiplies four signed bytes of each 32-bit lane of one register by
//! the four bytes of one chosen lane of another and adds the four products to that lane's
//! 32-bit sum: 16 multiply-adds per instruction, exact for any i8 operands. The NEON tile
//! (kernels/dot_neon.rs) keeps 8 output channels by 8 positions in 16 accumulators, each
//! holding one channel at four positions, so its sums come out as the channel rows the
//! requantisation reads, without a transpose; per 4 k it loads 32 bytes of patches and 32
//! of weights and runs 16 SDOT: 256 multiply-adds in 18 instructions, two blocks sharing
//! each side's four-register load and the loop's counter (kernels/dot_neon.rs).
//!
//! tract's SDOT kernel (`arm64simd_mmm_i32_8x8_dot`) multiplies as well, but its tile
//! scheduling, scratch and strided stores cost about as many instructions again on
//! EfficientNet-Lite0's narrow 1x1 layers (QEMU-INSN.md).
//!
//! Packing: kernels/panels.rs with [`NR`] = 8 channels, [`KC`] = 4 k and [`MR`] = 8
//! positions, which is tract's `PackedI8K4 { r: 8 }` on both operands (im2col.rs packs a
//! band's patches so: `PackPatches::k4`).
//!
//! Sums wrap in i32 as tract's do; exact sums do not depend on their order, so the values
//! are tract's bit for bit.

use super::panels::Packed;

/// k per packed block.
pub(crate) const KC: usize = 4;
/// Output channels per weight group.
pub(crate) const NR: usize = 8;
/// Output positions per patch panel.
pub(crate) const MR: usize = 8;

/// One layer's weights in the dot packing (kernels/panels.rs with 8 channels, 4 k and 8
/// positions), with the value each channel's sum starts from.
#[derive(Debug)]
pub(crate) struct Weights {
    packed: Packed<NR, KC, MR>,
    /// Per channel, padded to whole groups, its start eight times: the two NEON vectors a
    /// tile's accumulators of that channel start from.
    start_lanes: Vec<i32>,
}

impl Weights {
    /// From `rows` (`channels` rows of `k` weights) and each channel's starting value.
    pub(crate) fn new(
        rows: &[i8],
        channels: usize,
        k: usize,
        starts: &[i32],
    ) -> Result<Weights, String> {
        let packed = Packed::new(rows, channels, k, starts)?;
        let start_lanes = packed.raw().1.iter().flat_map(|&s| [s; 8]).collect();
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
    /// `patches` (`n.div_ceil(MR)` panels in the dot packing).
    pub(crate) fn run(&self, patches: &[i8], n: usize, c: &mut [i32]) -> Result<(), String> {
        self.packed.check(patches, n, c)?;
        #[cfg(target_arch = "aarch64")]
        if available() {
            // SAFETY: the CPU has the dot product (checked above); `check` holds the
            // lengths the kernel reads and writes.
            unsafe { super::dot_neon::run(self, patches, n, c) };
            return Ok(());
        }
        self.run_scalar(patches, n, c);
        Ok(())
    }

    /// The scalar reference: what every ISA's kernel must compute.
    pub(crate) fn run_scalar(&self, patches: &[i8], n: usize, c: &mut [i32]) {
        self.packed.run_scalar(patches, n, c)
    }

    /// The packed weights and each channel's start as eight lanes (`[start; 8]`), padded
    /// to whole groups, for the ISA kernels.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub(crate) fn raw(&self) -> (&[i8], &[i32]) {
        (self.packed.raw().0, &self.start_lanes)
    }
}

/// Whether this CPU runs the family's NEON kernel (it has the dot product).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "aarch64")]
    return std::arch::is_aarch64_feature_detected!("dotprod");
    #[cfg(not(target_arch = "aarch64"))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::panels::tests::values;

    fn check(m: usize, k: usize, n: usize, w: &[i8], x: &[i8]) {
        crate::kernels::panels::tests::check::<Weights, KC, MR>(
            (Weights::new, Weights::run, Weights::run_scalar),
            (m, k, n),
            (w, x),
            &format!("kernel (dot product: {})", available()),
        );
    }

    /// Every combination of channel counts off the group size, depths off the block size
    /// (a 3x3 layer of 3 channels is 27 deep, a 1x1 of 24 channels 24) and position counts
    /// off the panel size (a 7x7 plane is 49): the kernel this CPU runs (the NEON one on
    /// cores with the dot product: CI runs the library tests under qemu as a Cortex-A76)
    /// and the scalar reference give the naive sums, weights of -128 included.
    #[test]
    fn matches_the_naive_sums_over_odd_shapes() {
        let mut seed = 11;
        for m in [1, 3, 7, 8, 9, 17, 64] {
            for k in [1, 3, 4, 5, 9, 16, 24, 27, 40, 144, 425] {
                for n in [1, 3, 7, 8, 9, 23, 49, 64] {
                    seed += 1;
                    let w = values(m * k, seed, -128);
                    let x = values(k * n, seed * 31, -128);
                    check(m, k, n, &w, &x);
                }
            }
        }
    }

    /// The extremes of both operands, and depths whose sums pass i32 (they wrap, as
    /// tract's).
    #[test]
    fn holds_at_the_extremes() {
        for (w, x) in [(-128i8, -128i8), (127, -128), (-128, 127), (127, 127)] {
            for (m, k, n) in [(9, 33, 9), (8, 4608, 8)] {
                check(m, k, n, &vec![w; m * k], &vec![x; k * n]);
            }
        }
        // 2^31 / 16384 products wrap once.
        let k = (1 << 31) / 16384 + 100;
        check(1, k, 1, &vec![-128; k], &vec![-128; k]);
    }
}
