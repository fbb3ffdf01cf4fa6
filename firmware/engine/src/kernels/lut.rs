//! Byte lookup: each byte replaced by its entry in a 256-entry table (qtable.rs's quantized
//! element-wise chains).
//!
//! tract 0.23.9's table kernel is its generic one on every CPU, about four instructions a
//! byte; on aarch64 the table sits in sixteen vector registers and TBL/TBX look up sixteen
//! bytes at a time, 64 entries per lookup. On x86-64 hosts with AVX-512 VBMI the table sits
//! in four registers and VPERMI2B looks up 64 bytes at a time in each half of it.

/// Replaces every byte of `bytes` with `table[byte]`.
pub(crate) fn apply(table: &[u8; 256], bytes: &mut [u8]) {
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: NEON is part of the aarch64 baseline.
        unsafe { neon::apply(table, bytes) }
    }
    #[cfg(target_arch = "x86_64")]
    {
        if vbmi::available() {
            // SAFETY: the CPU has the features the function is compiled for.
            unsafe { vbmi::apply(table, bytes) }
        } else {
            apply_scalar(table, bytes)
        }
    }
    #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
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

#[cfg(target_arch = "x86_64")]
mod vbmi {
    use std::arch::x86_64::*;

    /// Whether this CPU runs [`apply`].
    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vbmi")
    }

    /// 64 bytes at a time: VPERMI2B looks each byte's low seven bits up in entries 0-127
    /// and in entries 128-255, and the byte's top bit picks one of the two; the last part
    /// block with masked loads and stores.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(super) unsafe fn apply(table: &[u8; 256], bytes: &mut [u8]) {
        let t = table.as_ptr() as *const __m512i;
        let (low0, low1) = (_mm512_loadu_si512(t), _mm512_loadu_si512(t.add(1)));
        let (high0, high1) = (_mm512_loadu_si512(t.add(2)), _mm512_loadu_si512(t.add(3)));
        let look = |i: __m512i| {
            let low = _mm512_permutex2var_epi8(low0, i, low1);
            let high = _mm512_permutex2var_epi8(high0, i, high1);
            _mm512_mask_blend_epi8(_mm512_movepi8_mask(i), low, high)
        };
        let mut blocks = bytes.chunks_exact_mut(64);
        for block in &mut blocks {
            let p = block.as_mut_ptr() as *mut __m512i;
            _mm512_storeu_si512(p, look(_mm512_loadu_si512(p)));
        }
        let rest = blocks.into_remainder();
        if !rest.is_empty() {
            let mask = u64::MAX >> (64 - rest.len());
            let p = rest.as_mut_ptr() as *mut i8;
            _mm512_mask_storeu_epi8(p, mask, look(_mm512_maskz_loadu_epi8(mask, p)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte value, at every offset into a block and with every tail length, through
    /// tables with no structure: the kernel gives the scalar lookup's bytes (NEON on
    /// aarch64; on x86-64 the AVX-512 VBMI kernel where the CPU has it, which the test
    /// says).
    #[test]
    fn lookups_match_the_scalar_table() {
        let mut seed = 0x2545_f491u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        #[cfg(target_arch = "x86_64")]
        eprintln!("AVX-512 VBMI lookups: {}", vbmi::available());
        for _ in 0..4 {
            let mut table = [0u8; 256];
            table.iter_mut().for_each(|e| *e = next() as u8);
            for len in [
                0, 1, 15, 16, 17, 31, 63, 64, 65, 127, 128, 255, 256, 257, 1000,
            ] {
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
