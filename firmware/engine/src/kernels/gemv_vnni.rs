//! The matrix-vector family (kernels/gemv.rs) on x86-64 with AVX-512 VNNI (Ice Lake and
//! later servers, the development host; Zen 4): a group of 8 rows at a time, each row's
//! four sums in one 128-bit lane of two registers, added across at the end.
//!
//! A block's 8 rows of 16 k are 128 bytes: two 64-byte loads, 4 rows each. The vector's 16
//! bytes of the block, broadcast to the four lanes, are the unsigned operand of VPDPBUSD
//! (read as `x + 128`: the sign bit flipped once per product, [`Weights::run`]), the
//! weights the signed one: each 32-bit lane adds four products of its row. The rows'
//! starts less `128 · Σ_k w` give back `Σ x · w`, exact in i32 (wrapping as tract's sums
//! do). tract's kernel for one column runs its 16 x 16 tile with 15 columns of padding:
//! EfficientNet-Lite0's and MobileNetV2's 1000 x 1280 head took 0.16-0.19 ms of a 4.5 ms
//! inference on the development host.

use std::arch::x86_64::*;

use super::gemv::{Weights, KC, NR};

/// Whether this CPU runs the kernel.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni")
}

/// `out[r] = starts[r] + Σ_k w[r][k] · x[k]`, from the vector with its sign bits flipped.
///
/// # Safety
/// The CPU has AVX-512 F and VNNI ([`available`]); `flipped` holds `weights.k()` bytes
/// padded to whole blocks, `out` one value per row (`Weights::run` checks both).
#[target_feature(enable = "avx512f,avx512vnni")]
pub(super) unsafe fn run(weights: &Weights, flipped: &[u8], out: &mut [i32]) {
    let (packed, _) = weights.raw();
    let starts = weights.unsigned_starts();
    let blocks = flipped.len() / KC;
    let rows = weights.rows();
    // Lane 4i of each register after two rounds of adding within 128-bit lanes, for the
    // group's 8 rows: rows 0-3 from the first register, 4-7 from the second.
    let firsts = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 0, 0, 0, 0, 0, 0, 0);
    for q in 0..rows.div_ceil(NR) {
        // SAFETY: group q's blocks are `blocks · NR · KC` bytes from `q · blocks · NR · KC`
        // (the packing's, whole groups and blocks), the vector `blocks · KC` bytes, the
        // starts whole groups; `out` has `rows` values.
        unsafe {
            let w = packed.as_ptr().add(q * blocks * NR * KC);
            let x = flipped.as_ptr();
            // Two sets of accumulators, even and odd blocks: VPDPBUSD's latency.
            let mut acc = [_mm512_setzero_si512(); 4];
            let mut g = 0;
            while g < blocks {
                let set = 2 * (g % 2);
                let v = _mm512_broadcast_i32x4(_mm_loadu_si128(x.add(g * KC).cast()));
                let p = w.add(g * NR * KC);
                acc[set] = _mm512_dpbusd_epi32(acc[set], v, _mm512_loadu_si512(p.cast()));
                acc[set + 1] =
                    _mm512_dpbusd_epi32(acc[set + 1], v, _mm512_loadu_si512(p.add(64).cast()));
                g += 1;
            }
            let across = |a: __m512i| {
                let a = _mm512_add_epi32(a, _mm512_shuffle_epi32::<0b01_00_11_10>(a));
                _mm512_add_epi32(a, _mm512_shuffle_epi32::<0b10_11_00_01>(a))
            };
            let low = across(_mm512_add_epi32(acc[0], acc[2]));
            let high = across(_mm512_add_epi32(acc[1], acc[3]));
            let sums = _mm512_castsi512_si256(_mm512_permutex2var_epi32(low, firsts, high));
            let sums =
                _mm256_add_epi32(sums, _mm256_loadu_si256(starts.as_ptr().add(q * NR).cast()));
            let first = q * NR;
            if first + NR <= rows {
                _mm256_storeu_si256(out.as_mut_ptr().add(first).cast(), sums);
            } else {
                let mut all = [0i32; NR];
                _mm256_storeu_si256(all.as_mut_ptr().cast(), sums);
                out[first..].copy_from_slice(&all[..rows - first]);
            }
        }
    }
}
