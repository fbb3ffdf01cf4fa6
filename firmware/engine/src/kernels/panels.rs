//! The packing both product families share (c16.rs without dot product, dot.rs with it):
//! one layer's weights in groups of `NR` output channels and blocks of `KC` consecutive k,
//! the patches in panels of `MR` output positions and the same blocks, k padded with zeros
//! to whole blocks on both sides.
//!
//! - weights: group `q`'s block `g` holds `NR × KC` bytes,
//!   `w[(q · groups + g) · NR · KC + j · KC + i]` being channel `q · NR + j`'s weight at
//!   `k = KC · g + i` (the last group padded with zero channels);
//! - patches: `p[panel · panel_len + g · MR · KC + m · KC + i]` is position `panel · MR + m`
//!   at `k = KC · g + i` (the last panel padded with zero positions). im2col.rs packs a
//!   band's patches so.
//!
//! Each channel's sum starts from its own value (the matmul's per-channel constant terms).
//! Sums wrap in i32 as tract's do; exact sums do not depend on their order.

/// One layer's packed weights with each channel's starting value.
#[derive(Debug)]
pub(crate) struct Packed<const NR: usize, const KC: usize, const MR: usize> {
    packed: Vec<i8>,
    /// Per channel, padded with zeros to whole groups.
    starts: Vec<i32>,
    channels: usize,
    k: usize,
}

impl<const NR: usize, const KC: usize, const MR: usize> Packed<NR, KC, MR> {
    /// From `rows` (`channels` rows of `k` weights) and each channel's starting value.
    pub(crate) fn new(
        rows: &[i8],
        channels: usize,
        k: usize,
        starts: &[i32],
    ) -> Result<Self, String> {
        check_rows(rows, channels, k, starts)?;
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
        Ok(Packed {
            packed,
            starts,
            channels,
            k,
        })
    }

    pub(crate) fn channels(&self) -> usize {
        self.channels
    }

    pub(crate) fn k(&self) -> usize {
        self.k
    }

    /// Bytes per patch panel for this depth.
    pub(crate) fn panel_len(&self) -> usize {
        panel_len::<KC, MR>(self.k)
    }

    /// The packed weights and each channel's start (padded to whole groups).
    pub(crate) fn raw(&self) -> (&[i8], &[i32]) {
        (&self.packed, &self.starts)
    }

    /// Refuses operands an ISA kernel would read or write out of bounds: `patches` must
    /// hold `n.div_ceil(MR)` panels and `c` exactly `channels × n` sums.
    pub(crate) fn check(&self, patches: &[i8], n: usize, c: &[i32]) -> Result<(), String> {
        check_operands(
            (self.channels, self.k),
            (self.panel_len(), MR),
            patches,
            n,
            c,
        )
    }

    /// The scalar reference: `c[ch · n + pos] = start[ch] + Σ_k w[ch][k] · p[pos][k]`, what
    /// every ISA's kernel must compute.
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
}

/// Refuses weights that are not `channels` rows of `k` with a start each.
pub(crate) fn check_rows(
    rows: &[i8],
    channels: usize,
    k: usize,
    starts: &[i32],
) -> Result<(), String> {
    if channels == 0 || k == 0 || rows.len() != channels * k || starts.len() != channels {
        return Err(format!(
            "{} weights and {} starts for {channels} channels of {k}",
            rows.len(),
            starts.len()
        ));
    }
    Ok(())
}

/// Refuses operands an ISA kernel would read or write out of bounds: `patches` must hold
/// `n.div_ceil(mr)` panels of `panel_len` bytes (depth `k`), and `c` exactly
/// `channels × n` sums.
pub(crate) fn check_operands(
    (channels, k): (usize, usize),
    (panel_len, mr): (usize, usize),
    patches: &[i8],
    n: usize,
    c: &[i32],
) -> Result<(), String> {
    if patches.len() < n.div_ceil(mr) * panel_len {
        return Err(format!(
            "{} packed bytes for {n} positions of depth {k}",
            patches.len()
        ));
    }
    if c.len() != channels * n {
        return Err(format!(
            "{} sums for {channels} channels x {n} positions",
            c.len()
        ));
    }
    Ok(())
}

/// The first channel and depth whose weight is -128 as is the weight at the other depth of
/// its 16-bit lane, if any: the families without dot product (c16.rs, pairs.rs) sum the
/// products at depths `at` and `at + kc / 2` of one `kc`-deep block in one lane, and two
/// products of -128 by -128 (2 · 16384) overflow it.
pub(crate) fn overflowing_lane(rows: &[i8], k: usize, kc: usize) -> Option<(usize, usize)> {
    let half = kc / 2;
    rows.chunks_exact(k.max(1))
        .enumerate()
        .find_map(|(ch, row)| {
            (0..k).find_map(|at| {
                let pair = at + half;
                (at % kc < half && pair < k && row[at] == i8::MIN && row[pair] == i8::MIN)
                    .then_some((ch, at))
            })
        })
}

/// How a NEON tile of the families without dot product walks a depth's `kc`-deep blocks:
/// the first, then `pairs` passes of two, then one more and a half block (whose high
/// halves, the second half of each lane, are the packing's zeros) where `tail` says.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
pub(crate) struct Blocks {
    pub(crate) groups: usize,
    pub(crate) pairs: usize,
    /// Bit 0: one more full block; bit 1: a half block.
    pub(crate) tail: usize,
}

#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
impl Blocks {
    pub(crate) fn new(k: usize, kc: usize) -> Blocks {
        let groups = k.div_ceil(kc);
        // A depth that ends at most half a block into its last block ends in a block whose
        // high halves are zeros; a depth of one block takes it whole.
        let half = usize::from(groups > 1 && (1..=kc / 2).contains(&(k % kc)));
        let rest = groups - 1 - half;
        Blocks {
            groups,
            pairs: rest / 2,
            tail: (rest % 2) | (half << 1),
        }
    }
}

/// Bytes per patch panel of depth `k`.
pub(crate) fn panel_len<const KC: usize, const MR: usize>(k: usize) -> usize {
    k.div_ceil(KC) * KC * MR
}

/// `dst[..count] = src[..count]` for a part row of a tile (`count` at most 16 values),
/// as whole quads then up to three values, without a loop the compiler would turn into a
/// call to memcpy: the call and its size dispatch cost as much as such a copy (the part
/// tiles' copies were a third of Lite0's memcpy instructions under qemu).
///
/// # Safety
/// `src` and `dst` hold `count` values and do not overlap.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
#[inline(always)]
pub(crate) unsafe fn put_part(src: *const i32, dst: *mut i32, count: usize) {
    debug_assert!(count <= 16);
    // SAFETY (each copy): below `count`, which the caller's contract covers.
    unsafe {
        let quad = |q: usize| {
            let v = std::ptr::read_unaligned(src.add(4 * q) as *const [i32; 4]);
            std::ptr::write_unaligned(dst.add(4 * q) as *mut [i32; 4], v);
        };
        if count >= 4 {
            quad(0);
        }
        if count >= 8 {
            quad(1);
        }
        if count >= 12 {
            quad(2);
        }
        if count >= 16 {
            quad(3);
        }
        let done = count / 4 * 4;
        if count % 4 >= 2 {
            std::ptr::write_unaligned(
                dst.add(done) as *mut [i32; 2],
                std::ptr::read_unaligned(src.add(done) as *const [i32; 2]),
            );
        }
        if count % 2 == 1 {
            *dst.add(count - 1) = *src.add(count - 1);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `matrix` (k rows of n positions) in panels of `MR` positions and blocks of `KC`: the
    /// packing contract, written independently of im2col.rs's packer.
    pub(crate) fn pack_patches<const KC: usize, const MR: usize>(
        matrix: &[i8],
        k: usize,
        n: usize,
    ) -> Vec<i8> {
        let len = panel_len::<KC, MR>(k);
        let mut out = vec![0i8; n.div_ceil(MR) * len];
        for kk in 0..k {
            for pos in 0..n {
                let (g, i, panel, m) = (kk / KC, kk % KC, pos / MR, pos % MR);
                out[panel * len + (g * MR + m) * KC + i] = matrix[kk * n + pos];
            }
        }
        out
    }

    /// Pseudo-random i8 values in [lo, 127] (xorshift).
    pub(crate) fn values(len: usize, seed: u32, lo: i32) -> Vec<i8> {
        let mut s = seed | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (lo + (s % (128 - lo) as u32) as i32) as i8
            })
            .collect()
    }

    /// The naive sums, straight from the unpacked operands (`w`: m rows of k; `x`: k rows
    /// of n).
    pub(crate) fn naive(
        w: &[i8],
        x: &[i8],
        starts: &[i32],
        (m, k, n): (usize, usize, usize),
    ) -> Vec<i32> {
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

    /// A family's check of `m` channels of `k` weights against `n` positions (k rows of n).
    pub(crate) type Check<'a> = &'a dyn Fn(usize, usize, usize, &[i8], &[i8]);

    /// The extremes of both operands for a family whose 16-bit lanes pair two products:
    /// every product at ±16256 and pairs at ±32512, the limits of the lanes, over the
    /// `shapes` given, and a depth whose sums pass i32 (they wrap, as tract's).
    pub(crate) fn holds_at_the_extremes(check: Check, shapes: &[(usize, usize, usize)]) {
        for (w, x) in [(-127i8, -128i8), (127, -128), (-127, 127), (127, 127)] {
            for &(m, k, n) in shapes {
                check(m, k, n, &vec![w; m * k], &vec![x; k * n]);
            }
        }
        // 2^31 / 16256 products wrap once.
        let k = (1 << 31) / 16256 + 100;
        check(1, k, 1, &vec![-127; k], &vec![-128; k]);
    }

    /// Weights of -128 (asymmetric u8 weights shifted to i8 have them) wherever the other
    /// depth of their lane (`kc`-deep blocks, lanes pairing depths `kc / 2` apart) is not
    /// -128, against patches of -128: each lane holds 16384 plus a product of the other
    /// extreme, at the limit of its 16 bits.
    pub(crate) fn holds_with_minus_128_beside_others(
        check: Check,
        kc: usize,
        shapes: &[(usize, usize, usize)],
    ) {
        for &(m, k, n) in shapes {
            for other in [-127i8, 127, 0] {
                // -128 at the first half of every lane, `other` at its second half.
                let w: Vec<i8> = (0..m * k)
                    .map(|i| if i % k % kc < kc / 2 { i8::MIN } else { other })
                    .collect();
                for x in [-128i8, 127] {
                    check(m, k, n, &w, &vec![x; k * n]);
                }
                // And at the second half only, with pseudo-random patches.
                let w: Vec<i8> = w
                    .iter()
                    .map(|&v| if v == i8::MIN { other } else { i8::MIN })
                    .collect();
                check(m, k, n, &w, &values(k * n, (m * k) as u32, -128));
            }
        }
    }

    /// Distinct, large starting values: a start added twice or to the wrong channel shows.
    pub(crate) fn starts(m: usize) -> Vec<i32> {
        (0..m as i32).map(|i| i * 1_000_003 - 7).collect()
    }

    /// A family's weights built from unpacked rows, run by the kernel this CPU picks, and
    /// run by the scalar reference.
    pub(crate) type Family<W> = (
        fn(&[i8], usize, usize, &[i32]) -> Result<W, String>,
        fn(&W, &[i8], usize, &mut [i32]) -> Result<(), String>,
        fn(&W, &[i8], usize, &mut [i32]),
    );

    /// `m` channels of `k` weights `w` against `n` positions of `x` (k rows of n), in the
    /// family's packing of `KC` k by `MR` positions: the kernel (`kernel` names it in a
    /// failure) and the scalar reference give the naive sums.
    pub(crate) fn check<W, const KC: usize, const MR: usize>(
        (new, run, run_scalar): Family<W>,
        (m, k, n): (usize, usize, usize),
        (w, x): (&[i8], &[i8]),
        kernel: &str,
    ) {
        let starts = starts(m);
        let weights = new(w, m, k, &starts).unwrap();
        let patches = pack_patches::<KC, MR>(x, k, n);
        let want = naive(w, x, &starts, (m, k, n));
        let mut got = vec![i32::MIN; m * n];
        run(&weights, &patches, n, &mut got).unwrap();
        assert_eq!(
            got, want,
            "{kernel}, {m} channels x {k} deep x {n} positions"
        );
        let mut scalar = vec![i32::MIN; m * n];
        run_scalar(&weights, &patches, n, &mut scalar);
        assert_eq!(scalar, want, "scalar, {m} x {k} x {n}");
    }
}
