//! Products an int8 kernel's weights leave out of a layer's sums, added back from the rows
//! of its patches.
//!
//! The engine's product kernels multiply i8 weights within a budget: the tiles take
//! weights in [-127, 127], the deep pairs form at most 255 in magnitude per 16-bit lane
//! (kernels/pairs.rs), the channels-last depthwise family i8. A layer whose weights leave
//! that budget in a few places runs on them all the same: the kernel takes each weight
//! lowered into the budget, and what was taken off, `r` for depth `k` of output channel
//! `m`, comes back as `r · x_k` per output position. Asymmetric u8 weights less their zero
//! point leave i8 at one to three weights of a layer (zero_point.rs `Folded`); per-channel
//! symmetric weights leave the deep form's lanes at about one lane per channel.
//!
//! A residual costs one multiply-add per output position, where the kernel's own products
//! are `k` per channel: those who make them keep them sparse (each says its bound).

use std::collections::BTreeMap;

/// One residual product: the depth `k`, the output channel `m` and the weight `r` of the
/// term `r · x_k` that channel `m`'s sums still need.
pub(crate) type Term = (usize, usize, i32);

/// Per depth `k` (in increasing order), the output channels `m` and weights `r` of the
/// terms `r · x_k` to add to channel `m`'s sums.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Residuals(Vec<(usize, Vec<(usize, i32)>)>);

impl Residuals {
    /// From `(k, m, r)` terms in any order; terms of one depth and channel add up.
    pub(crate) fn from_terms(terms: impl IntoIterator<Item = Term>) -> Residuals {
        let mut by_depth: BTreeMap<usize, BTreeMap<usize, i32>> = BTreeMap::new();
        for (k, m, r) in terms {
            let w = by_depth.entry(k).or_default().entry(m).or_default();
            *w = w.wrapping_add(r);
        }
        Residuals(
            by_depth
                .into_iter()
                .map(|(k, terms)| (k, terms.into_iter().filter(|&(_, r)| r != 0).collect()))
                .filter(|(_, terms): &(usize, Vec<(usize, i32)>)| !terms.is_empty())
                .collect(),
        )
    }

    /// How many residual products each output position takes.
    pub(crate) fn len(&self) -> usize {
        self.0.iter().map(|(_, terms)| terms.len()).sum()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every residual product's depth `k`, output channel `m` and weight `r`.
    pub(crate) fn terms(&self) -> impl Iterator<Item = Term> + '_ {
        self.0
            .iter()
            .flat_map(|(k, terms)| terms.iter().map(move |&(m, r)| (*k, m, r)))
    }

    /// Adds the residual products to `acc` (rows of `n` sums per output channel), with
    /// `with_row(k, f)` calling `f` on the first `n` values of patch row `k`.
    pub(crate) fn add_to(
        &self,
        acc: &mut [i32],
        n: usize,
        mut with_row: impl FnMut(usize, &mut dyn FnMut(&[i8])),
    ) {
        if n == 0 {
            return;
        }
        for (k, terms) in &self.0 {
            with_row(*k, &mut |row: &[i8]| {
                for &(m, r) in terms {
                    add_products(&mut acc[m * n..(m + 1) * n], row, r);
                }
            });
        }
    }
}

/// `acc[i] += r · row[i]`, wrapping: one residual product per position. On aarch64, 16
/// positions per step of SMLAL by `r` where it fits 16 bits (every budget's residual
/// does): the compiler's own loop widened the bytes to 32 bits first, 15 instructions per
/// 16 positions against 11 (and a widened copy of the row per depth).
#[inline(never)]
fn add_products(acc: &mut [i32], row: &[i8], r: i32) {
    let n = acc.len().min(row.len());
    let (acc, row) = (&mut acc[..n], &row[..n]);
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "aarch64")]
    if let Ok(r) = i16::try_from(r) {
        use std::arch::aarch64::*;
        // SAFETY: NEON is part of aarch64; each step reads `row[done..done + 16]` and reads
        // and writes `acc[done..done + 16]`, both below `n`.
        unsafe {
            while done + 16 <= n {
                let x = vld1q_s8(row.as_ptr().add(done));
                let (lo, hi) = (vmovl_s8(vget_low_s8(x)), vmovl_high_s8(x));
                let a = acc.as_mut_ptr().add(done);
                vst1q_s32(a, vmlal_n_s16(vld1q_s32(a), vget_low_s16(lo), r));
                vst1q_s32(a.add(4), vmlal_high_n_s16(vld1q_s32(a.add(4)), lo, r));
                vst1q_s32(
                    a.add(8),
                    vmlal_n_s16(vld1q_s32(a.add(8)), vget_low_s16(hi), r),
                );
                vst1q_s32(a.add(12), vmlal_high_n_s16(vld1q_s32(a.add(12)), hi, r));
                done += 16;
            }
        }
    }
    for (a, &x) in acc[done..].iter_mut().zip(&row[done..]) {
        *a = a.wrapping_add(r.wrapping_mul(i32::from(x)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_of_one_depth_and_channel_add_up_and_zeros_drop() {
        let r = Residuals::from_terms([
            (5, 1, 3),
            (2, 0, -1),
            (5, 1, 4),
            (5, 0, 2),
            (7, 2, 1),
            (7, 2, -1),
        ]);
        assert_eq!(
            r.terms().collect::<Vec<_>>(),
            vec![(2, 0, -1), (5, 0, 2), (5, 1, 7)]
        );
        assert_eq!(r.len(), 3);
        let mut acc = vec![10i32; 3 * 2];
        let rows = |k: usize, f: &mut dyn FnMut(&[i8])| f(&[(k * 10) as i8, (k * 10 + 1) as i8]);
        r.add_to(&mut acc, 2, rows);
        // Channel 0: -1 · row 2 + 2 · row 5; channel 1: 7 · row 5; channel 2: nothing.
        assert_eq!(
            acc,
            vec![10 - 20 + 100, 10 - 21 + 102, 10 + 350, 10 + 357, 10, 10]
        );
    }

    /// Rows off the vector step of 16 (1 to 49 positions), bytes at both extremes,
    /// residuals inside and outside 16 bits, and sums that wrap: the scalar sums.
    #[test]
    fn products_match_the_scalar_sums_at_every_length() {
        for n in [1, 15, 16, 17, 31, 32, 33, 49] {
            let row: Vec<i8> = (0..n).map(|i| [i8::MIN, 127, -1, 0, 55][i % 5]).collect();
            for r in [1, -1, 255, -255, 32767, -32768, 40000, -70000] {
                let start: Vec<i32> = (0..n as i32).map(|i| i32::MAX - 3 * i).collect();
                let mut acc = start.clone();
                add_products(&mut acc, &row, r);
                let want: Vec<i32> = start
                    .iter()
                    .zip(&row)
                    .map(|(&a, &x)| a.wrapping_add(r.wrapping_mul(i32::from(x))))
                    .collect();
                assert_eq!(acc, want, "{n} positions, residual {r}");
            }
        }
    }
}
