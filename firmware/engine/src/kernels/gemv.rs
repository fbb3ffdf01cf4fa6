//! int8 matrix-vector products: a classifier's head, one position whose every class is a
//! row of weights (EfficientNet-Lite0's and MobileNetV2's 1000 rows of 1280).
//!
//! tract runs such a product on its one-column kernel, which widens each of a column's
//! bytes and multiplies it by element into 64 rows (SMLAL): 28 instructions per 64
//! multiply-adds, 0.6 M of EfficientNet-Lite0's int8 inference under qemu (cortex-a72).
//! Here each row keeps 16 consecutive k together, as the c16 tiles do (kernels/c16.rs):
//! - without dot product, a row's 16 bytes times the vector's 16 make eight pairs of
//!   products in 16-bit lanes (SMULL, SMLAL2) widened into the row's four 32-bit sums
//!   (SADALP): per block of 16 k, 8 rows take one load of the vector, two of the weights
//!   and 24 products, about 4.5 multiply-adds per instruction. A lane sums the products at
//!   depths `16g + i` and `16g + i + 8`, so [`Weights::new`] refuses, as c16 does, a row
//!   with -128 at both (the operator then keeps tract's kernel);
//! - with the dot product, one SDOT per row and block (16 multiply-adds), nothing refused;
//! - on x86-64 with AVX-512 VNNI, one VPDPBUSD per four rows and block (kernels/gemv_vnni.rs),
//!   nothing refused.
//!
//! Each row's four sums are added across at the end. Packing: kernels/panels.rs with
//! [`NR`] rows per group, blocks of [`KC`] k and panels of one position (the vector,
//! padded with zeros to whole blocks). Sums wrap in i32 as tract's do.

use std::borrow::Cow;

use super::panels::Packed;

/// k per packed block.
pub(crate) const KC: usize = 16;
/// Rows per weight group.
pub(crate) const NR: usize = 8;

/// One matrix's rows in groups of [`NR`] and blocks of [`KC`] k, with each row's start.
#[derive(Debug)]
pub(crate) struct Weights {
    packed: Packed<NR, KC, 1>,
    /// Per row (padded to whole groups), its start less `128 · Σ_k w`: the x86 kernel reads
    /// the vector as unsigned (`x + 128`, kernels/gemv_vnni.rs).
    #[cfg(target_arch = "x86_64")]
    unsigned_starts: Vec<i32>,
}

impl Weights {
    /// From `rows` (`m` rows of `k` weights) and each row's starting value; refused where a
    /// row has -128 at both depths of a 16-bit lane (see the module doc), unless `dot`.
    pub(crate) fn new(
        rows: &[i8],
        m: usize,
        k: usize,
        starts: &[i32],
        dot: bool,
    ) -> Result<Weights, String> {
        if k == 0 {
            return Err("a product of depth 0".into());
        }
        let packed = Packed::new(rows, m, k, starts)?;
        if !dot {
            if let Some((row, at)) = super::panels::overflowing_lane(rows, k, KC) {
                return Err(format!(
                    "row {row} has weights of -128 at depths {at} and {}: their two products \
                     could overflow a 16-bit lane",
                    at + KC / 2
                ));
            }
        }
        #[cfg(target_arch = "x86_64")]
        let unsigned_starts = {
            let (_, starts) = packed.raw();
            let mut adjusted = starts.to_vec();
            for (start, row) in adjusted.iter_mut().zip(rows.chunks_exact(k)) {
                let sum: i32 = row.iter().map(|&w| i32::from(w)).sum();
                *start = start.wrapping_sub(128 * sum);
            }
            adjusted
        };
        Ok(Weights {
            packed,
            #[cfg(target_arch = "x86_64")]
            unsigned_starts,
        })
    }

    /// Each row's start less `128 · Σ_k w` (padded to whole groups).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn unsigned_starts(&self) -> &[i32] {
        &self.unsigned_starts
    }

    pub(crate) fn rows(&self) -> usize {
        self.packed.channels()
    }

    pub(crate) fn k(&self) -> usize {
        self.packed.k()
    }

    pub(crate) fn raw(&self) -> (&[i8], &[i32]) {
        self.packed.raw()
    }

    /// `out[r] = start[r] + Σ_k w[r][k] · x[k]` for the `k` values of `x`, on the
    /// vector unit where this target has a kernel (with the dot product when `dot`), else
    /// the scalar reference.
    pub(crate) fn run(&self, x: &[i8], out: &mut [i32], dot: bool) -> Result<(), String> {
        let vector = self.padded(x, out)?;
        #[cfg(target_arch = "aarch64")]
        {
            // SAFETY: `padded` checked `out` and made the vector whole blocks; the dot
            // kernel runs only where the CPU has the dot product.
            unsafe {
                if dot && super::dot::available() {
                    super::gemv_neon::run_dot(self, &vector, out);
                } else {
                    super::gemv_neon::run(self, &vector, out);
                }
            }
            Ok(())
        }
        #[cfg(target_arch = "x86_64")]
        if super::gemv_vnni::available() {
            let _ = dot;
            let flipped: Vec<u8> = vector.iter().map(|&x| (x as u8) ^ 0x80).collect();
            // SAFETY: the CPU has AVX-512 F and VNNI; `padded` checked `out` and made the
            // vector whole blocks.
            unsafe { super::gemv_vnni::run(self, &flipped, out) };
            return Ok(());
        }
        #[cfg(not(target_arch = "aarch64"))]
        {
            let _ = dot;
            self.packed.run_scalar(&vector, 1, out);
            Ok(())
        }
    }

    /// The scalar reference of [`Weights::run`].
    #[cfg(test)]
    pub(crate) fn run_scalar(&self, x: &[i8], out: &mut [i32]) -> Result<(), String> {
        let vector = self.padded(x, out)?;
        self.packed.run_scalar(&vector, 1, out);
        Ok(())
    }

    /// `x` padded with zeros to whole blocks (as it is when it fills them: a head's 1280 or
    /// 512 values, no copy per inference), once `x` and `out` are checked to have `k`
    /// values and a sum per row.
    fn padded<'x>(&self, x: &'x [i8], out: &[i32]) -> Result<Cow<'x, [i8]>, String> {
        if x.len() != self.k() || out.len() != self.rows() {
            return Err(format!(
                "a vector of {} values and {} sums for {} rows of {}",
                x.len(),
                out.len(),
                self.rows(),
                self.k()
            ));
        }
        let vector = match x.len() % KC {
            0 => Cow::Borrowed(x),
            _ => {
                let mut whole = x.to_vec();
                whole.resize(self.k().div_ceil(KC) * KC, 0);
                Cow::Owned(whole)
            }
        };
        self.packed.check(&vector, 1, out)?;
        Ok(vector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::panels::tests::values;

    fn naive(w: &[i8], x: &[i8], starts: &[i32]) -> Vec<i32> {
        let k = x.len();
        w.chunks_exact(k.max(1))
            .zip(starts)
            .map(|(row, &s)| {
                row.iter().zip(x).fold(s, |acc, (&w, &x)| {
                    acc.wrapping_add(i32::from(w) * i32::from(x))
                })
            })
            .collect()
    }

    /// Every row count around the groups and every depth around the blocks, both kernels,
    /// against the naive sums; weights over [-127, 127] and the vector over the whole i8
    /// range, starts that make the sums wrap.
    #[test]
    fn matches_the_naive_sums_over_odd_shapes() {
        let dots: &[bool] = if super::super::dot::available() {
            &[false, true]
        } else {
            &[false]
        };
        for m in [1, 3, 7, 8, 9, 16, 17, 1000] {
            for k in [1, 5, 8, 9, 15, 16, 17, 31, 33, 64, 100, 1280] {
                let w = values(m * k, (m * 131 + k) as u32, -127);
                let x = values(k, (k * 7 + 3) as u32, -128);
                let starts: Vec<i32> = (0..m)
                    .map(|r| [0, i32::MAX - 5, i32::MIN + 3, -4099][r % 4])
                    .collect();
                let want = naive(&w, &x, &starts);
                for &dot in dots {
                    let weights = Weights::new(&w, m, k, &starts, dot).unwrap();
                    let mut got = vec![7i32; m];
                    weights.run(&x, &mut got, dot).unwrap();
                    assert_eq!(got, want, "{m} x {k}, dot {dot}");
                    weights.run_scalar(&x, &mut got).unwrap();
                    assert_eq!(got, want, "{m} x {k}, scalar");
                }
            }
        }
    }

    /// The extremes: -128 beside 127 in a lane, and -128 everywhere in the vector, fit;
    /// -128 at both depths of a lane is refused without the dot product and taken with it.
    #[test]
    fn holds_at_the_extremes_and_refuses_what_could_overflow() {
        let (m, k) = (9, 40);
        let mut w = vec![127i8; m * k];
        for r in 0..m {
            w[r * k + (r % 16)] = -128;
        }
        let x = vec![-128i8; k];
        let starts = vec![0; m];
        let want = naive(&w, &x, &starts);
        let weights = Weights::new(&w, m, k, &starts, false).unwrap();
        let mut got = vec![0; m];
        weights.run(&x, &mut got, false).unwrap();
        assert_eq!(got, want);
        w[3 * k + 2] = -128;
        w[3 * k + 10] = -128;
        let refused = Weights::new(&w, m, k, &starts, false).unwrap_err();
        assert!(refused.contains("row 3"), "{refused}");
        let weights = Weights::new(&w, m, k, &starts, true).unwrap();
        weights.run_scalar(&x, &mut got).unwrap();
        assert_eq!(got, naive(&w, &x, &starts));
        assert!(weights.run(&x[1..], &mut got, false).is_err());
        assert!(weights.run(&x, &mut got[1..], false).is_err());
    }
}
