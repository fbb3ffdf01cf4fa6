//! Byte lookup: each byte replaced by its entry in a 256-entry table (qtable.rs's quantized
//! element-wise chains).
//!
//! tract 0.23.9's table kernel is its generic one on every CPU, about four instructions a
//! byte; on aarch64 the table sits in sixteen vector registers and TBL/TBX look up sixteen
//! bytes at a time, 64 entries per lookup.

/// Replaces every byte of `bytes` with `table[byte]`.
pub(crate) fn apply(table: &[u8; 256], bytes: &mut [u8]) {
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: NEON is part of the aarch64 baseline.
        unsafe { neon::apply(table, bytes) }
    }
    #[cfg(not(target_arch = "aarch64"))]
    apply_scalar(table, bytes)
}

#[cfg_attr(all(target_arch = "aarch64", not(test)), allow(dead_code))]
pub(crate) fn apply_scalar(table: &[u8; 256], bytes: &mut [u8]) {
    for b in bytes {
        *b = table[*b as usize];
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    /// Sixteen bytes at a time: TBL over entries 0-63, then TBX over each next 64 with the
    /// index lowered by 64 (TBX leaves a lane alone when its index is out of range); the
    /// tail goes through the scalar loop.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn apply(table: &[u8; 256], bytes: &mut [u8]) {
        let t = table.as_ptr();
        let quarter = |q: usize| {
            uint8x16x4_t(
                vld1q_u8(t.add(q * 64)),
                vld1q_u8(t.add(q * 64 + 16)),
                vld1q_u8(t.add(q * 64 + 32)),
                vld1q_u8(t.add(q * 64 + 48)),
            )
        };
        let (t0, t1, t2, t3) = (quarter(0), quarter(1), quarter(2), quarter(3));
        let step = vdupq_n_u8(64);
        let mut blocks = bytes.chunks_exact_mut(16);
        for block in &mut blocks {
            let p = block.as_mut_ptr();
            let i0 = vld1q_u8(p);
            let i1 = vsubq_u8(i0, step);
            let i2 = vsubq_u8(i1, step);
            let i3 = vsubq_u8(i2, step);
            let mut r = vqtbl4q_u8(t0, i0);
            r = vqtbx4q_u8(r, t1, i1);
            r = vqtbx4q_u8(r, t2, i2);
            r = vqtbx4q_u8(r, t3, i3);
            vst1q_u8(p, r);
        }
        super::apply_scalar(table, blocks.into_remainder());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte value, at every offset into a block and with every tail length, through
    /// tables with no structure: the kernel gives the scalar lookup's bytes.
    #[test]
    fn lookups_match_the_scalar_table() {
        let mut seed = 0x2545_f491u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for _ in 0..4 {
            let mut table = [0u8; 256];
            table.iter_mut().for_each(|e| *e = next() as u8);
            for len in [0, 1, 15, 16, 17, 31, 64, 255, 256, 257, 1000] {
                let input: Vec<u8> = (0..len).map(|i| (i as u32 * 7 + next()) as u8).collect();
                let mut want = input.clone();
                apply_scalar(&table, &mut want);
                let mut got = input.clone();
                apply(&table, &mut got);
                assert_eq!(got, want, "length {len}");
            }
            let mut all: Vec<u8> = (0..=255).collect();
            apply(&table, &mut all);
            assert_eq!(all, table.to_vec());
        }
    }
}
