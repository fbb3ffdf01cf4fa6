//! The channels-last depthwise family on x86-64 (kernels/dwc.rs has the layout): the
//! channel copies and the quads' expansion in SSE2, the quads on AVX-512 VNNI (Ice Lake and
//! later servers, the development host).
//!
//! - **Copies**: 16 x 16 byte transposes, four rounds of PUNPCKLBW/PUNPCKHBW pairing row i
//!   with row i + 8 (each round interleaves bytes; four rounds of 16 rows transpose them).
//! - **Expansion**: per position and 16 channels, the four taps' loads interleaved by
//!   bytes, then by 16-bit pairs: 64 bytes, 16 channels of four taps.
//! - **Quads**: VPDPBUSD adds to each of 16 lanes the products of four unsigned bytes with
//!   four signed bytes: one 64-byte load of a position's quad (16 channels by 4 taps), its
//!   sign bit flipped (`x + 128`, read as unsigned), one VPDPBUSD against the quad's 64
//!   weight bytes. The sums start from `start - 128 · Σ w` per channel, so that
//!   `Σ (x + 128) · w - 128 · Σ w = Σ x · w`, exact in i32. Four positions per pass.

use std::arch::x86_64::*;

use super::dwc::{Bytes16, Quads, LANES};

/// Whether this CPU runs the quads (and so the family: depthwise.rs `takes_channels_last`).
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni")
}

/// The channel copies' and the quads' expansion's 16 bytes on SSE2.
impl Bytes16 for __m128i {
    #[inline(always)]
    unsafe fn load(p: *const u8) -> Self {
        // SAFETY: the caller's contract.
        unsafe { _mm_loadu_si128(p.cast()) }
    }

    #[inline(always)]
    unsafe fn store(self, p: *mut u8) {
        // SAFETY: the caller's contract.
        unsafe { _mm_storeu_si128(p.cast(), self) }
    }

    /// Four rounds of byte unpacks pairing row i with row i + 8 (64 instructions).
    #[inline(always)]
    fn transpose(rows: [__m128i; 16]) -> [__m128i; 16] {
        let mut r = rows;
        for _ in 0..4 {
            let mut o = r;
            for i in 0..8 {
                // SAFETY: SSE2 is part of x86_64; register operations.
                unsafe {
                    o[2 * i] = _mm_unpacklo_epi8(r[i], r[i + 8]);
                    o[2 * i + 1] = _mm_unpackhi_epi8(r[i], r[i + 8]);
                }
            }
            r = o;
        }
        r
    }

    /// Bytes, then 16-bit pairs, unpacked: four stores.
    #[inline(always)]
    unsafe fn store_interleaved([a, b, c, d]: [Self; 4], p: *mut u8) {
        // SAFETY: SSE2 is part of x86_64; the caller's contract for the stores.
        unsafe {
            let (ab_lo, ab_hi) = (_mm_unpacklo_epi8(a, b), _mm_unpackhi_epi8(a, b));
            let (cd_lo, cd_hi) = (_mm_unpacklo_epi8(c, d), _mm_unpackhi_epi8(c, d));
            _mm_storeu_si128(p.cast(), _mm_unpacklo_epi16(ab_lo, cd_lo));
            _mm_storeu_si128(p.add(16).cast(), _mm_unpackhi_epi16(ab_lo, cd_lo));
            _mm_storeu_si128(p.add(32).cast(), _mm_unpacklo_epi16(ab_hi, cd_hi));
            _mm_storeu_si128(p.add(48).cast(), _mm_unpackhi_epi16(ab_hi, cd_hi));
        }
    }
}

/// Positions per pass of [`run`].
const PASS: usize = 4;

/// # Safety
/// The CPU has AVX-512 F and VNNI ([`available`]); `Quads::check` holds for these
/// operands: every position's reads (`ox · step + offsets[q] + 64g`, 64 bytes) are inside
/// `src` and its sums inside `acc`.
#[target_feature(enable = "avx512f,avx512vnni")]
pub(super) unsafe fn run(
    w: &Quads,
    src: &[i8],
    offsets: &[usize],
    step: usize,
    cols: usize,
    acc: &mut [i32],
) {
    let (packed, starts) = w.raw();
    let sums = w.weight_sums();
    let cp = w.padded_channels();
    let quads = offsets.len();
    for g in 0..cp / LANES {
        // SAFETY: the caller's contract: group g has `quads` × 64 weight bytes, 16 starts
        // and 16 weight sums; every position's reads are inside `src` and its sums inside
        // `acc`.
        unsafe {
            let wg = packed.as_ptr().add(g * quads * 4 * LANES);
            let start = _mm512_sub_epi32(
                _mm512_loadu_si512(starts.as_ptr().add(g * LANES).cast()),
                _mm512_slli_epi32::<7>(_mm512_loadu_si512(sums.as_ptr().add(g * LANES).cast())),
            );
            let (p, out) = (
                src.as_ptr().add(g * 4 * LANES),
                acc.as_mut_ptr().add(g * LANES),
            );
            let group = (p, out, wg, step, cp);
            let mut ox = 0;
            while ox + PASS <= cols {
                positions::<PASS>(group, ox, offsets, start);
                ox += PASS;
            }
            while ox < cols {
                positions::<1>(group, ox, offsets, start);
                ox += 1;
            }
        }
    }
}

/// The sums of positions `ox..ox + P` of one group of 16 channels, stored.
///
/// # Safety
/// As `run`'s, for these positions of the group at `p`, `out` and `wg`.
#[target_feature(enable = "avx512f,avx512vnni")]
#[inline]
unsafe fn positions<const P: usize>(
    (p, out, wg, step, cp): (*const i8, *mut i32, *const i8, usize, usize),
    ox: usize,
    offsets: &[usize],
    start: __m512i,
) {
    let sign = _mm512_set1_epi8(-128);
    let mut sums = [start; P];
    // SAFETY: the caller's contract.
    unsafe {
        for (q, &off) in offsets.iter().enumerate() {
            let weights = _mm512_loadu_si512(wg.add(q * 4 * LANES).cast());
            for (i, sum) in sums.iter_mut().enumerate() {
                let x = _mm512_loadu_si512(p.add((ox + i) * step + off).cast());
                *sum = _mm512_dpbusd_epi32(*sum, _mm512_xor_si512(x, sign), weights);
            }
        }
        for (i, sum) in sums.iter().enumerate() {
            _mm512_storeu_si512(out.add((ox + i) * cp).cast(), *sum);
        }
    }
}
