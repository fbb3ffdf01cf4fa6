//! The depthwise family on x86-64 with AVX2 (development hosts and x86 edge boxes): 16
//! output positions of one row per block, their sums in two registers across every tap.
//!
//! Two taps at a time: their 16 input bytes are interleaved (position by position: tap a,
//! tap b), widened to 16 bits and multiplied by the pair of weights with VPMADDWD, which
//! adds the two products of each position into its 32-bit sum: 32 multiply-adds in 8
//! instructions with the two loads. Two products of an i8 and a 16-bit weight are summed
//! in 32 bits, so every weight is exact. An odd last tap is paired with a weight of 0.
//!
//! A row's last block, when shorter than 16 positions, is computed whole (its reads are
//! within `READ_SLACK`) and stored whole where it ends within the sums, its extra sums
//! overwritten by the next row's; the channel's last block stores only its valid sums.

use std::arch::x86_64::*;

use super::dw::{Taps, BLOCK};

/// Tap pairs kept on the stack: a 7x7 kernel's 49 taps.
const STACK_PAIRS: usize = 25;

/// # Safety
/// The CPU has AVX2, and `dw::check` holds: `src` has `dw::needed` bytes and `out`
/// `rows × cols` sums.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn run(
    src: &[i8],
    taps: &Taps,
    start: i32,
    (rows, cols): (usize, usize),
    out: &mut [i32],
) {
    // Per pair of taps: both offsets and the weights as 16-bit (a, b) pairs in every
    // 32-bit lane. An odd last tap reads its own bytes twice, the second time weighed 0.
    // On the stack up to 7x7 taps: this runs once per channel, and a heap allocation per
    // channel was a tenth of EfficientNet-Lite0's int8 inference on the host (perf).
    let pair = |(o, w): (&[usize], &[i16])| {
        let (oa, ob) = (o[0], *o.get(1).unwrap_or(&o[0]));
        let (wa, wb) = (w[0], *w.get(1).unwrap_or(&0));
        let lane = (i32::from(wb) << 16) | (i32::from(wa) & 0xffff);
        (oa, ob, _mm256_set1_epi32(lane))
    };
    let each = taps.offsets.chunks(2).zip(taps.weights.chunks(2)).map(pair);
    let mut stack = [(0, 0, _mm256_setzero_si256()); STACK_PAIRS];
    let heap: Vec<(usize, usize, __m256i)>;
    let pairs = if taps.offsets.len() <= 2 * STACK_PAIRS {
        let count = taps.offsets.len().div_ceil(2);
        for (slot, p) in stack.iter_mut().zip(each) {
            *slot = p;
        }
        &stack[..count]
    } else {
        heap = each.collect();
        &heap[..]
    };
    let first = _mm256_set1_epi32(start);
    let base = src.as_ptr();
    for oy in 0..rows {
        let mut ox = 0;
        while ox < cols {
            let (mut lo, mut hi) = (first, first);
            for &(oa, ob, w) in pairs {
                // SAFETY: position `ox` of row `oy` at the tap's offset, 16 bytes: within
                // `dw::needed` (the caller's `check`), since `ox < cols`.
                let (a, b) = unsafe {
                    let at = oy * taps.pitch + ox;
                    (
                        _mm_loadu_si128(base.add(at + oa).cast()),
                        _mm_loadu_si128(base.add(at + ob).cast()),
                    )
                };
                let first8 = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(a, b));
                let last8 = _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(a, b));
                lo = _mm256_add_epi32(lo, _mm256_madd_epi16(first8, w));
                hi = _mm256_add_epi32(hi, _mm256_madd_epi16(last8, w));
            }
            let at = oy * cols + ox;
            let valid = (cols - ox).min(BLOCK);
            // A whole block is stored wherever it ends within `out`: a row's last block then
            // spills into the next row's first positions, which are stored again after it
            // (as the NEON kernel does; a copy per short row was most of the kernel's
            // memmove time on 7- and 14-wide rows).
            if at + BLOCK <= out.len() {
                // SAFETY: `at + 16 <= out.len()`.
                unsafe {
                    let dst = out.as_mut_ptr().add(at);
                    _mm256_storeu_si256(dst.cast(), lo);
                    _mm256_storeu_si256(dst.add(8).cast(), hi);
                }
            } else {
                let mut tail = [0i32; BLOCK];
                // SAFETY: `tail` holds 16 sums.
                unsafe {
                    _mm256_storeu_si256(tail.as_mut_ptr().cast(), lo);
                    _mm256_storeu_si256(tail.as_mut_ptr().add(8).cast(), hi);
                }
                out[at..at + valid].copy_from_slice(&tail[..valid]);
            }
            ox += BLOCK;
        }
    }
}
