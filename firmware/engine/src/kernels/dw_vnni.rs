//! The depthwise family's dot-product kernel on x86-64 with AVX-512 VBMI and VNNI (Ice
//! Lake and later servers, the development host): 16 output positions of one row per
//! block in one register, four taps per VPDPBUSD (kernels/dw.rs's [`DotGroups`] says which
//! four, as for the NEON SDOT kernel, kernels/dw_dot.rs).
//!
//! VPDPBUSD multiplies four unsigned bytes by four signed bytes per 32-bit lane and adds
//! the products to the lane. The plane holds i8 values, so each is read as `x + 128` (an
//! XOR of the sign bit) and the channel's sums start from `start - 128 · Σ w`:
//! `Σ (x + 128) · w - 128 · Σ w = Σ x · w`, exact in i32.
//! - **Run** (consecutive offsets `base .. base + len`): one 32-byte load from the run's
//!   base holds every byte the 16 positions read (position p's taps are bytes p .. p + 3);
//!   VPERMB lays them out, four per position. Bytes past `len` are weighed 0.
//! - **Gather** (any four offsets): the four taps' 16 bytes in the four 128-bit lanes of a
//!   register, then VPERMB interleaves them per position.
//!
//! A 3x3 stride-1 layer is 12 instructions per block against about 40 for the AVX2
//! kernel (kernels/dw_avx2.rs). A row's last block stores only its valid sums (a masked
//! store).

use std::arch::x86_64::*;

use super::dw::{DotGather, DotRun, DotTaps};

/// Whether this CPU runs the kernel.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vbmi")
        && is_x86_feature_detected!("avx512vnni")
}

/// VPERMB indices of a run: byte 4p + k is position p's tap k, byte `p + k` of the load.
const RUN_INDICES: [u8; 64] = {
    let mut idx = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        idx[i] = (i / 4 + i % 4) as u8;
        i += 1;
    }
    idx
};

/// VPERMB indices of a gather: byte 4p + k is position p of tap k, in lane k.
const GATHER_INDICES: [u8; 64] = {
    let mut idx = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        idx[i] = (16 * (i % 4) + i / 4) as u8;
        i += 1;
    }
    idx
};

/// `out[oy · cols + ox] = start + Σ_t w[t] · src[oy · pitch + offsets[t] + ox]` over the
/// taps of `dot`'s groups, with its packed weights.
///
/// # Safety
/// The CPU has AVX-512 F, BW, VBMI and VNNI; `dw::check` holds for these taps: `src` has
/// `dw::needed` bytes (with `READ_SLACK`, which covers a run's 32-byte load), `out`
/// `rows × cols` sums, and the groups are the taps' (`DotGroups::of_offsets`), with one
/// packed weight each.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
pub(super) unsafe fn run(
    src: &[i8],
    pitch: usize,
    dot: DotTaps,
    start: i32,
    (rows, cols): (usize, usize),
    out: &mut [i32],
) {
    let groups = dot.groups;
    let (run_weights, gather_weights) = dot.packed.split_at(groups.runs.len());
    // Σ w over every tap: the four signed bytes of every packed weight.
    let total: i32 = dot
        .packed
        .iter()
        .map(|&w| {
            w.to_le_bytes()
                .iter()
                .map(|&b| i32::from(b as i8))
                .sum::<i32>()
        })
        .sum();
    // SAFETY: register operations and loads of the constant tables; the caller's bounds
    // for the plane's reads (each within `dw::needed`) and the sums' writes (whole blocks
    // only where they end within `out`, masked otherwise).
    unsafe {
        let run_idx = _mm512_loadu_si512(RUN_INDICES.as_ptr() as *const _);
        let gather_idx = _mm512_loadu_si512(GATHER_INDICES.as_ptr() as *const _);
        let sign = _mm512_set1_epi8(-128);
        let first = _mm512_set1_epi32(start.wrapping_sub(total.wrapping_mul(128)));
        let base = src.as_ptr();
        for oy in 0..rows {
            let row = base.add(oy * pitch);
            let mut ox = 0;
            while ox < cols {
                let at = row.add(ox);
                // Three sums, each group into the next in turn, so that each VPDPBUSD
                // waits on the one three before it, not on the last (its latency is
                // several cycles); written out for each of the three so that they stay in
                // registers.
                let run = |r: &DotRun, w: i32, acc: __m512i| {
                    let bytes = _mm512_zextsi256_si512(_mm256_loadu_si256(
                        at.add(r.base) as *const __m256i
                    ));
                    let x = _mm512_permutexvar_epi8(run_idx, _mm512_xor_si512(bytes, sign));
                    _mm512_dpbusd_epi32(acc, x, _mm512_set1_epi32(w))
                };
                let gather = |g: &DotGather, w: i32, acc: __m512i| {
                    let lane = |k: usize| _mm_loadu_si128(at.add(g.offsets[k]) as *const __m128i);
                    let mut bytes = _mm512_castsi128_si512(lane(0));
                    bytes = _mm512_inserti32x4::<1>(bytes, lane(1));
                    bytes = _mm512_inserti32x4::<2>(bytes, lane(2));
                    bytes = _mm512_inserti32x4::<3>(bytes, lane(3));
                    let x = _mm512_permutexvar_epi8(gather_idx, _mm512_xor_si512(bytes, sign));
                    _mm512_dpbusd_epi32(acc, x, _mm512_set1_epi32(w))
                };
                let mut acc = [first, _mm512_setzero_si512(), _mm512_setzero_si512()];
                for (rs, ws) in groups.runs.chunks(3).zip(run_weights.chunks(3)) {
                    acc[0] = run(&rs[0], ws[0], acc[0]);
                    if rs.len() > 1 {
                        acc[1] = run(&rs[1], ws[1], acc[1]);
                    }
                    if rs.len() > 2 {
                        acc[2] = run(&rs[2], ws[2], acc[2]);
                    }
                }
                for (gs, ws) in groups.gathers.chunks(3).zip(gather_weights.chunks(3)) {
                    acc[0] = gather(&gs[0], ws[0], acc[0]);
                    if gs.len() > 1 {
                        acc[1] = gather(&gs[1], ws[1], acc[1]);
                    }
                    if gs.len() > 2 {
                        acc[2] = gather(&gs[2], ws[2], acc[2]);
                    }
                }
                let acc = _mm512_add_epi32(_mm512_add_epi32(acc[0], acc[1]), acc[2]);
                let at = oy * cols + ox;
                let dst = out.as_mut_ptr().add(at);
                if at + 16 <= out.len() {
                    _mm512_storeu_si512(dst as *mut _, acc);
                } else {
                    let valid = (cols - ox).min(16);
                    _mm512_mask_storeu_epi32(dst, (1u16 << valid).wrapping_sub(1), acc);
                }
                ox += 16;
            }
        }
    }
}
