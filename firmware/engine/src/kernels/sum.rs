//! Byte sums: `Σ (b ^ flip)` over a run of bytes, the sums of the quantized global average
//! pools (avgpool.rs). A `flip` of 0x80 sums i8 values' bits as `value + 128`, so one kernel
//! serves u8 and i8 tensors.
//!
//! The reference widens each byte. On aarch64, UADALP adds the pairs of sixteen bytes into
//! eight u16 lanes per instruction, 64 bytes per load into two sets of lanes, flushed to
//! u64 before a lane can overflow, and a run's last part block is its last 16 bytes with
//! those already summed masked off; on x86_64,
//! PSADBW (SSE2, part of the baseline) sums eight bytes into a u64 lane. The compiler's own
//! loop widened every byte to 32 bits: about 1.2 instructions a byte under qemu
//! (cortex-a72), 22 k of the qformats network's 1.1 M.

/// `Σ (b ^ flip)` over `bytes`.
#[inline]
pub(crate) fn sum(bytes: &[u8], flip: u8) -> u64 {
    #[cfg(target_arch = "aarch64")]
    // SAFETY: NEON is part of the aarch64 baseline.
    let (done, total) = unsafe { neon::sum(bytes, flip) };
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of the x86_64 baseline.
    let (done, total) = unsafe { sse2::sum(bytes, flip) };
    #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
    let (done, total) = (0, 0);
    total + sum_scalar(&bytes[done..], flip)
}

/// The reference.
pub(crate) fn sum_scalar(bytes: &[u8], flip: u8) -> u64 {
    bytes.iter().map(|&b| u64::from(b ^ flip)).sum()
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    /// Groups of four blocks of 16 bytes per flush of the u16 lanes: two sets of lanes
    /// take two blocks of each group, each lane gaining at most 4 · 255 per group, and 64
    /// groups stay under 65 536.
    const FLUSH: usize = 64;

    /// Sixteen zeros then sixteen `0xff`: the 16 bytes from `TAIL[n..]` keep the last `n`
    /// lanes of a block.
    static TAIL: [u8; 32] = {
        let mut t = [0u8; 32];
        let mut i = 16;
        while i < 32 {
            t[i] = 0xff;
            i += 1;
        }
        t
    };

    /// The bytes of `bytes` from 16 on, in blocks of 16 (a last part block as the last 16
    /// bytes with the ones already summed masked off): how many bytes they hold (all of
    /// them, or none below 16), and their sum.
    #[inline(always)]
    pub(super) unsafe fn sum(bytes: &[u8], flip: u8) -> (usize, u64) {
        // SAFETY: the caller's.
        unsafe {
            if flip == 0 {
                sum_flipped::<false>(bytes, flip)
            } else {
                sum_flipped::<true>(bytes, flip)
            }
        }
    }

    /// [`sum`], the bytes flipped by `flip` when `FLIP` (u8 tensors need no EOR: a fifth of
    /// the loop).
    #[inline(always)]
    unsafe fn sum_flipped<const FLIP: bool>(bytes: &[u8], flip: u8) -> (usize, u64) {
        let (len, blocks) = (bytes.len(), bytes.len() / 16);
        if blocks == 0 {
            return (0, 0);
        }
        let f = vdupq_n_u8(flip);
        let flipped = |v: uint8x16_t| if FLIP { veorq_u8(v, f) } else { v };
        let p = bytes.as_ptr();
        let mut total = vdupq_n_u64(0);
        // Groups of four blocks: one load of 64 bytes, two chains of additions.
        let (groups, mut at) = (blocks / 4, 0);
        while at < groups {
            let run = (groups - at).min(FLUSH);
            let (mut a, mut b) = (vdupq_n_u16(0), vdupq_n_u16(0));
            for g in at..at + run {
                // SAFETY: group `g`'s 64 bytes are inside `bytes`.
                let v = unsafe { vld1q_u8_x4(p.add(64 * g)) };
                a = vpadalq_u8(a, flipped(v.0));
                b = vpadalq_u8(b, flipped(v.1));
                a = vpadalq_u8(a, flipped(v.2));
                b = vpadalq_u8(b, flipped(v.3));
            }
            total = vpadalq_u32(total, vpaddlq_u16(a));
            total = vpadalq_u32(total, vpaddlq_u16(b));
            at += run;
        }
        // The last whole blocks, at most three.
        let mut lanes = vdupq_n_u16(0);
        for b in 4 * groups..blocks {
            // SAFETY: block `b` is inside `bytes`.
            lanes = vpadalq_u8(lanes, flipped(unsafe { vld1q_u8(p.add(16 * b)) }));
        }
        total = vpadalq_u32(total, vpaddlq_u16(lanes));
        let rest = len - 16 * blocks;
        if rest > 0 {
            // SAFETY: `len >= 16`, so the last 16 bytes are inside `bytes`; `TAIL` holds
            // bytes rest..rest + 16.
            let (v, mask) = unsafe {
                (
                    vld1q_u8(bytes.as_ptr().add(len - 16)),
                    vld1q_u8(TAIL.as_ptr().add(rest)),
                )
            };
            let lanes = vpaddlq_u8(vandq_u8(flipped(v), mask));
            total = vpadalq_u32(total, vpaddlq_u16(lanes));
        }
        (len, vaddvq_u64(total))
    }
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::*;

    /// The whole 16-byte blocks of `bytes`: how many bytes they hold, and their sum.
    pub(super) unsafe fn sum(bytes: &[u8], flip: u8) -> (usize, u64) {
        let blocks = bytes.len() / 16;
        let (f, zero) = (_mm_set1_epi8(flip as i8), _mm_setzero_si128());
        let mut total = _mm_setzero_si128();
        for b in 0..blocks {
            // SAFETY: block `b` is inside `bytes`.
            let v = unsafe { _mm_loadu_si128(bytes.as_ptr().add(16 * b) as *const __m128i) };
            total = _mm_add_epi64(total, _mm_sad_epu8(_mm_xor_si128(v, f), zero));
        }
        let mut halves = [0u64; 2];
        // SAFETY: `halves` holds 16 bytes.
        unsafe { _mm_storeu_si128(halves.as_mut_ptr() as *mut __m128i, total) };
        (16 * blocks, halves[0] + halves[1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lengths around the block, group and flush sizes (16, 64 bytes, 64 groups) and long runs of the
    /// largest byte, unflipped and flipped: the reference's sums.
    #[test]
    fn sums_match_the_reference() {
        let mut seed = 0x2545_f491u32;
        for len in [
            0,
            1,
            15,
            16,
            17,
            63,
            64,
            70,
            80,
            280,
            2047,
            2048,
            2049,
            4096 + 33,
            70_000,
        ] {
            let random = crate::banded::tests::random_bytes(len, &mut seed);
            for bytes in [random, vec![255; len], vec![0x7f; len]] {
                for flip in [0, 0x80] {
                    assert_eq!(
                        sum(&bytes, flip),
                        sum_scalar(&bytes, flip),
                        "{len} bytes, flip {flip:#x}"
                    );
                }
            }
        }
    }
}
