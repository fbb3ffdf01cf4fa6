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

use super::dwc::{Quads, LANES};

/// Whether this CPU runs the quads (and so the family: depthwise.rs `takes_channels_last`).
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni")
}

/// A 16 x 16 byte transpose: `out[k]` byte `j` is `rows[j]` byte `k`.
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

/// Every 16 x 16 block of a `rows × cols` byte matrix, transposed (`load(r, c)` gives row
/// r's 16 bytes from column c, `store(c, r, v)` takes column c's 16 bytes from row r); a
/// side off 16 ends in a block that overlaps the one before it. Returns the rows and
/// columns covered: all, or none when a side is shorter than a block.
#[inline(always)]
fn blocks(
    (rows, cols): (usize, usize),
    load: impl Fn(usize, usize) -> __m128i,
    mut store: impl FnMut(usize, usize, __m128i),
) -> (usize, usize) {
    if rows < 16 || cols < 16 {
        return (0, 0);
    }
    let starts = |len: usize| {
        let last = (!len.is_multiple_of(16)).then_some(len - 16);
        (0..len / 16 * 16).step_by(16).chain(last)
    };
    for r0 in starts(rows) {
        for c0 in starts(cols) {
            let block = transpose(std::array::from_fn(|i| load(r0 + i, c0)));
            for (k, v) in block.into_iter().enumerate() {
                store(c0 + k, r0, v);
            }
        }
    }
    (rows, cols)
}

/// The blocks of `dwc::to_channels_last`: channel rows of `n` values into their
/// positions' `places`. Returns the channels and positions covered.
///
/// # Safety
/// `src` holds `channels × n` values; `places` has `n` entries and each plus `channels` is
/// inside `dst`.
pub(super) unsafe fn to_channels_last(
    src: &[i8],
    channels: usize,
    n: usize,
    places: &[usize],
    dst: &mut [i8],
) -> (usize, usize) {
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    blocks(
        (channels, n),
        // SAFETY (both): the caller's contract, for blocks inside `channels × n`.
        |c, j| unsafe { _mm_loadu_si128(s.add(c * n + j).cast()) },
        |j, c, v| unsafe { _mm_storeu_si128(d.add(places[j] + c).cast(), v) },
    )
}

/// The blocks of `dwc::from_channels_last`. Returns the positions and channels covered.
///
/// # Safety
/// `src` holds `positions × cp` bytes, `dst` `channels × positions`, channels ≤ cp.
pub(super) unsafe fn from_channels_last(
    src: &[u8],
    cp: usize,
    channels: usize,
    positions: usize,
    dst: &mut [u8],
) -> (usize, usize) {
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    blocks(
        (positions, channels),
        // SAFETY (both): the caller's contract, for blocks inside `positions × channels`.
        |j, c| unsafe { _mm_loadu_si128(s.add(j * cp + c).cast()) },
        |c, j, v| unsafe { _mm_storeu_si128(d.add(c * positions + j).cast(), v) },
    )
}

/// Writes every byte of `dst`.
///
/// # Safety
/// `image` holds `rows × cols × cp` bytes and `dst` has room for `rows × ecols × cp × 4`,
/// with `ecols + 3 · dx <= cols` and `cp` a multiple of 16 (`Quads::expand` checks them).
pub(super) unsafe fn expand(
    image: &[i8],
    (rows, cols, cp): (usize, usize, usize),
    dx: usize,
    ecols: usize,
    dst: *mut i8,
) {
    let src = image.as_ptr();
    for r in 0..rows {
        for x in 0..ecols {
            // SAFETY: the caller's contract: position x + 3dx of row r is inside the
            // image, and expanded position x of row r inside `dst`.
            unsafe {
                let at = src.add((r * cols + x) * cp);
                let to = dst.add((r * ecols + x) * cp * 4);
                for g in (0..cp).step_by(LANES) {
                    let tap = |i: usize| _mm_loadu_si128(at.add(i * dx * cp + g).cast());
                    let (a, b) = (tap(0), tap(1));
                    let (c, d) = (tap(2), tap(3));
                    let (ab_lo, ab_hi) = (_mm_unpacklo_epi8(a, b), _mm_unpackhi_epi8(a, b));
                    let (cd_lo, cd_hi) = (_mm_unpacklo_epi8(c, d), _mm_unpackhi_epi8(c, d));
                    let out = to.add(4 * g);
                    _mm_storeu_si128(out.cast(), _mm_unpacklo_epi16(ab_lo, cd_lo));
                    _mm_storeu_si128(out.add(16).cast(), _mm_unpackhi_epi16(ab_lo, cd_lo));
                    _mm_storeu_si128(out.add(32).cast(), _mm_unpacklo_epi16(ab_hi, cd_hi));
                    _mm_storeu_si128(out.add(48).cast(), _mm_unpackhi_epi16(ab_hi, cd_hi));
                }
            }
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
