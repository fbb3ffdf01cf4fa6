//! int8 products as 4-deep dot products: the family for cores with a dot-product
//! instruction (Cortex-A55 and Cortex-A76: the RK3588 and the Raspberry Pi 5).
//!
//! SDOT (by element) multiplies four signed bytes of each 32-bit lane of one register by
//! the four bytes of one chosen lane of another and adds the four products to that lane's
//! 32-bit sum: 16 multiply-adds per instruction, exact for any i8 operands. The NEON tile
//! (kernels/dot_neon.rs) keeps 8 output channels by 8 positions in 16 accumulators, each
//! holding one channel at four positions, so its sums come out as the channel rows the
//! requantisation reads, without a transpose; per 4 k it loads 32 bytes of patches and 32
//! of weights and runs 16 SDOT (256 multiply-adds in 20 instructions).
//!
//! tract's SDOT kernel (`arm64simd_mmm_i32_8x8_dot`) multiplies as well, but its tile
//! scheduling, scratch and strided stores cost about as many instructions again on
//! EfficientNet-Lite0's narrow 1x1 layers (QEMU-INSN.md).
//!
//! Packing (k padded with zeros to a multiple of [`KC`] on both sides), tract's
//! `PackedI8K4 { r: 8 }` on both operands:
//! - weights: channels in groups of [`NR`] (the last padded with zero channels); group
//!   `q`'s 4-k block `g` holds `NR × 4` bytes, `w[(q · groups + g) · NR · 4 + j · 4 + i]`
//!   being channel `q · NR + j`'s weight at `k = 4g + i`;
//! - patches: panels of [`MR`] output positions (the last padded with zero positions);
//!   `p[panel · panel_len + g · MR · 4 + m · 4 + i]` is position `panel · MR + m` at
//!   `k = 4g + i`. im2col.rs packs a band's patches so (`PackPatches::k4`).
//!
//! Sums wrap in i32 as tract's do; exact sums do not depend on their order, so the values
//! are tract's bit for bit.

/// k per packed block.
pub(crate) const KC: usize = 4;
/// Output channels per weight group.
pub(crate) const NR: usize = 8;
/// Output positions per patch panel.
pub(crate) const MR: usize = 8;

/// One layer's weights in the dot packing, with the value each channel's sum starts from.
#[derive(Debug)]
pub(crate) struct Weights {
    packed: Vec<i8>,
    /// Per channel, padded to whole groups.
    starts: Vec<i32>,
    channels: usize,
    k: usize,
}

impl Weights {
    /// From `rows` (`channels` rows of `k` weights) and each channel's starting value.
    pub(crate) fn new(
        rows: &[i8],
        channels: usize,
        k: usize,
        starts: &[i32],
    ) -> Result<Weights, String> {
        if channels == 0 || k == 0 || rows.len() != channels * k || starts.len() != channels {
            return Err(format!(
                "{} weights and {} starts for {channels} channels of {k}",
                rows.len(),
                starts.len()
            ));
        }
        let groups = k.div_ceil(KC);
        let padded = channels.div_ceil(NR) * NR;
        let mut packed = vec![0i8; padded * groups * KC];
        for (ch, row) in rows.chunks_exact(k).enumerate() {
            let (q, j) = (ch / NR, ch % NR);
            for (kk, &w) in row.iter().enumerate() {
                let (g, i) = (kk / KC, kk % KC);
                packed[((q * groups + g) * NR + j) * KC + i] = w;
            }
        }
        let mut starts = starts.to_vec();
        starts.resize(padded, 0);
        Ok(Weights {
            packed,
            starts,
            channels,
            k,
        })
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
    /// `patches` (`n.div_ceil(MR)` panels in the dot packing).
    pub(crate) fn run(&self, patches: &[i8], n: usize, c: &mut [i32]) -> Result<(), String> {
        self.check(patches, n, c)?;
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

    fn check(&self, patches: &[i8], n: usize, c: &[i32]) -> Result<(), String> {
        if patches.len() < n.div_ceil(MR) * self.panel_len() {
            return Err(format!(
                "{} packed bytes for {n} positions of depth {}",
                patches.len(),
                self.k
            ));
        }
        if c.len() != self.channels * n {
            return Err(format!(
                "{} sums for {} channels x {n} positions",
                c.len(),
                self.channels
            ));
        }
        Ok(())
    }

    /// The scalar reference: what every ISA's kernel must compute.
    pub(crate) fn run_scalar(&self, patches: &[i8], n: usize, c: &mut [i32]) {
        let groups = self.k.div_ceil(KC);
        let panel_len = self.panel_len();
        for ch in 0..self.channels {
            let (q, j) = (ch / NR, ch % NR);
            for pos in 0..n {
                let panel = &patches[(pos / MR) * panel_len..][..panel_len];
                let m = pos % MR;
                let mut sum = self.starts[ch];
                for g in 0..groups {
                    let w = &self.packed[((q * groups + g) * NR + j) * KC..][..KC];
                    let p = &panel[(g * MR + m) * KC..][..KC];
                    for (w, p) in w.iter().zip(p) {
                        sum = sum.wrapping_add(i32::from(*w) * i32::from(*p));
                    }
                }
                c[ch * n + pos] = sum;
            }
        }
    }

    /// The packed weights and each channel's start, padded to whole groups, for the ISA
    /// kernels.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub(crate) fn raw(&self) -> (&[i8], &[i32]) {
        (&self.packed, &self.starts)
    }
}

/// Bytes per patch panel of depth `k`.
pub(crate) fn panel_len(k: usize) -> usize {
    k.div_ceil(KC) * KC * MR
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
    use crate::kernels::c16::tests::values;

    /// `matrix` (k rows of n positions) in dot panels: the packing contract, written
    /// independently of im2col.rs's packer.
    fn pack_patches(matrix: &[i8], k: usize, n: usize) -> Vec<i8> {
        let len = panel_len(k);
        let mut out = vec![0i8; n.div_ceil(MR) * len];
        for kk in 0..k {
            for pos in 0..n {
                let (g, i, panel, m) = (kk / KC, kk % KC, pos / MR, pos % MR);
                out[panel * len + (g * MR + m) * KC + i] = matrix[kk * n + pos];
            }
        }
        out
    }

    /// The naive sums, straight from the unpacked operands.
    fn naive(w: &[i8], x: &[i8], starts: &[i32], (m, k, n): (usize, usize, usize)) -> Vec<i32> {
        let mut c = vec![0i32; m * n];
        for ch in 0..m {
            for pos in 0..n {
                let mut s = starts[ch];
                for kk in 0..k {
                    s = s.wrapping_add(i32::from(w[ch * k + kk]) * i32::from(x[kk * n + pos]));
                }
                c[ch * n + pos] = s;
            }
        }
        c
    }

    fn check(m: usize, k: usize, n: usize, w: &[i8], x: &[i8]) {
        let starts: Vec<i32> = (0..m as i32).map(|i| i * 1_000_003 - 7).collect();
        let weights = Weights::new(w, m, k, &starts).unwrap();
        let patches = pack_patches(x, k, n);
        let want = naive(w, x, &starts, (m, k, n));
        let mut got = vec![i32::MIN; m * n];
        weights.run(&patches, n, &mut got).unwrap();
        assert_eq!(
            got,
            want,
            "kernel (dot product: {}), {m} channels x {k} deep x {n} positions",
            available()
        );
        let mut scalar = vec![i32::MIN; m * n];
        weights.run_scalar(&patches, n, &mut scalar);
        assert_eq!(scalar, want, "scalar, {m} x {k} x {n}");
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
