//! A band's int8 products on x86_64 with AVX-512 VNNI, without tract's per-product offset.
//!
//! `vpdpbusd` multiplies unsigned bytes by signed ones. tract 0.23.9's VNNI kernel
//! (`avx512vnni_mmm_i32_16x16`) takes both operands as i8, so for every broadcast group of
//! four patch bytes it adds 128 (`vpaddb`) before the multiply, and corrects by
//! `128 * sum(weights)` afterwards: one more vector instruction per `vpdpbusd`, on the same
//! ports. That kernel was 75 % of VGG16's int8 time (`perf record` on `edgedx-bench infer`).
//!
//! The engine packs a band's patches itself, so here the 128 is added once per packed byte
//! (`offset_patches`), and [`Tiles`] runs `vpdpbusd` alone: 16 output positions per vector
//! (a packed patch group is four k for 16 positions, 64 bytes), one vector per output
//! channel, each channel's four weight bytes broadcast from memory. Every accumulator
//! starts from a per-channel constant: `-128 * sum(weights)` plus what the matmul's fused
//! per-row ops add (tract's `BinPerRow` Add and SubF: `v + c` and `c - v`). i32 sums wrap
//! in both tract's kernel and this one, and wrapping sums do not depend on their order, so
//! the values are tract's bit for bit; they are stored straight into the band's row-major
//! accumulators for the requantization.
//!
//! Both operands are in tract's `PackedI8K4 { r: 16 }` layout: per group of four k, 64
//! bytes holding four consecutive k for each of 16 rows (weights: output channels; patches:
//! output positions). The engine packs the patches itself per band, and the weights at
//! load when tract packed them otherwise (tract's 16-wide panels are shared, not copied),
//! whatever kernel tract picked for the layer: tract packs most of EfficientNet-Lite0's
//! convolutions for its `avx512vnni_mmm_i32_8x8`, whose panels are half as wide, and that
//! kernel took 30 % of the network's int8 time (`perf record` on `edgedx-bench profile`)
//! while these tiles read none of them.

use std::arch::x86_64::*;

use tract_linalg::mmm::{EagerPackedInput, MMMInputValue};
use tract_linalg::pack::PackedI8K4;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use crate::im2col::{k4_offset, unpack_rows};

/// Rows per packed panel of both operands.
pub(crate) const R: usize = 16;

/// Whether this CPU has the instructions [`Tiles`] uses.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni")
}

/// One layer's weights in 16-row K4 panels, and per-channel starting values. Built only
/// where [`available`].
#[derive(Debug)]
pub(crate) struct Tiles {
    /// `channels.div_ceil(16)` panels of `groups` groups of 64 bytes: four consecutive k
    /// of each of 16 channels, zero past the last channel and past `k`. tract's own when it
    /// packed them so (shared, not copied).
    panels: Arc<Blob>,
    channels: usize,
    groups: usize,
    /// Per output channel, padded to whole panels.
    starts: Vec<i32>,
}

impl Tiles {
    /// `weights`: the layer's, as tract packed them (`channels` rows of depth `k`);
    /// `offsets`: what tract's plan adds per output channel (banded.rs `tile_operands`).
    pub(crate) fn new(
        weights: &dyn MMMInputValue,
        channels: usize,
        k: usize,
        offsets: &[i32],
    ) -> Result<Tiles, String> {
        if !available() {
            return Err("this CPU has no AVX-512 VNNI".into());
        }
        if channels == 0 || k == 0 || weights.mn() != channels || weights.k() != k {
            return Err(format!(
                "weights of {} x {} for {channels} channels of {k}",
                weights.mn(),
                weights.k()
            ));
        }
        if offsets.len() != channels {
            return Err(format!(
                "{} per-row values for {channels} channels",
                offsets.len()
            ));
        }
        let groups = k.div_ceil(4);
        let panel_len = groups * 4 * R;
        let panels = match weights.downcast_ref::<EagerPackedInput>() {
            Some(eager)
                if eager
                    .fact
                    .format
                    .downcast_ref::<PackedI8K4>()
                    .is_some_and(|f| f.r == R)
                    && eager.panel_bytes == panel_len
                    && eager.packed.len() >= channels.div_ceil(R) * panel_len =>
            {
                eager.packed.clone()
            }
            _ => {
                let rows =
                    unpack_rows(weights).ok_or("weights in a packing the engine cannot read")?;
                Arc::new(pack_rows(&rows, channels, k)?)
            }
        };
        Ok(Tiles::with_panels(panels, channels, k, offsets))
    }

    /// The tiles of weights already in 16-row K4 panels (`channels` rows of depth `k`).
    fn with_panels(panels: Arc<Blob>, channels: usize, k: usize, offsets: &[i32]) -> Tiles {
        let groups = k.div_ceil(4);
        let panel_len = groups * 4 * R;
        // The patches arrive offset by 128: each channel starts 128 times its weights'
        // sum lower (the panels are zero past `k`).
        let mut starts = vec![0i32; channels.div_ceil(R) * R];
        for (ch, start) in starts.iter_mut().enumerate().take(channels) {
            let panel = &panels[(ch / R) * panel_len..][..panel_len];
            let sum = (0..groups)
                .flat_map(|g| &panel[k4_offset(R, ch % R, 4 * g)..][..4])
                .fold(0i32, |s, &w| s.wrapping_add(i32::from(w as i8)));
            *start = offsets[ch].wrapping_sub(sum.wrapping_mul(128));
        }
        Tiles {
            panels,
            channels,
            groups,
            starts,
        }
    }

    /// The band's accumulators, `channels` rows of `n` i32 into `c`, from its patches `b`:
    /// `n.div_ceil(16)` panels of `panel_len` bytes in the same K4 packing, each byte offset
    /// by 128 (`offset_patches`).
    pub(crate) fn run(
        &self,
        b: &[u8],
        panel_len: usize,
        n: usize,
        c: &mut [i32],
    ) -> TractResult<()> {
        let (m, groups) = (self.channels, self.groups);
        let col_panels = n.div_ceil(R);
        ensure!(
            panel_len == groups * 4 * R,
            "packed panel of {panel_len} bytes, {groups} groups of four k"
        );
        ensure!(
            b.len() >= col_panels * panel_len,
            "{} packed bytes for {n} columns",
            b.len()
        );
        ensure!(c.len() == m * n, "{} accumulators for {m} x {n}", c.len());
        // Whole panels of columns on the column tiles; the columns of a last, partial
        // panel on the channel tiles, which waste no lane on them (a 7x7 layer's 49
        // columns are 3 panels and 1 column, not 4 panels).
        let whole = n / R;
        for (panel, starts) in self.starts.chunks_exact(R).enumerate() {
            let pa = self.panels[panel * panel_len..].as_ptr();
            for half in 0..2 {
                let first_row = panel * R + half * HALF;
                if first_row >= m {
                    break;
                }
                let rows = (m - first_row).min(HALF);
                let starts = &starts[half * HALF..][..HALF];
                let mut col_panel = 0;
                while col_panel < whole {
                    let group = (whole - col_panel).min(PANELS);
                    let pb = b[col_panel * panel_len..].as_ptr();
                    let at = c[first_row * n + col_panel * R..].as_mut_ptr();
                    let shape = [rows, n, panel_len];
                    // SAFETY: `Tiles` exists only where the CPU has VNNI; the weight panel
                    // and the `group` patch panels hold `groups` groups of 64 bytes (the
                    // checks above); the tile's `rows` rows of its columns, `n` apart, are
                    // within `c` (checked above).
                    unsafe {
                        let pa = pa.add(half * HALF * 4);
                        match group {
                            3 => tile::<3>(pa, pb, groups, starts, at, shape),
                            2 => tile::<2>(pa, pb, groups, starts, at, shape),
                            _ => tile::<1>(pa, pb, groups, starts, at, shape),
                        }
                    }
                    col_panel += group;
                }
            }
        }
        let mut col = whole * R;
        while col < n {
            let cols = (n - col).min(TAIL_COLS);
            let pb = b[whole * panel_len + (col - whole * R) * 4..].as_ptr();
            for first in (0..m).step_by(TAIL_PANELS * R) {
                let pa = self.panels[(first / R) * panel_len..].as_ptr();
                let starts = self.starts[first..].as_ptr();
                let at = c[first * n + col..].as_mut_ptr();
                let channels = (m - first).min(TAIL_PANELS * R);
                let shape = [channels, n, panel_len];
                // SAFETY: `Tiles` exists only where the CPU has VNNI; the channels'
                // weight panels (`channels.div_ceil(16)` of them) and `starts` are whole
                // panels; the patch panel holds `groups` groups of 64 bytes with the
                // `cols` columns from `pb` in each; the tile's `channels` rows of `cols`
                // columns, `n` apart, are within `c` (checked above).
                unsafe { channel_tile(cols, pa, pb, groups, starts, at, shape) };
            }
            col += cols;
        }
        Ok(())
    }
}

/// Output channels per tile: half a weight panel, so that each channel's broadcast
/// weights serve `PANELS` vectors of patches (loads were the limit with one).
const HALF: usize = R / 2;
/// Patch panels per tile: 8 x 3 accumulators, 3 patch vectors and a broadcast fit the 32
/// vector registers.
const PANELS: usize = 3;

/// `channels` rows of `k` i8 in 16-row K4 panels, zero past the last row and past `k`.
fn pack_rows(rows: &[i8], channels: usize, k: usize) -> Result<Blob, String> {
    let panel_len = k.div_ceil(4) * 4 * R;
    let mut panels = vec![0u8; channels.div_ceil(R) * panel_len];
    for (ch, row) in rows.chunks_exact(k).enumerate().take(channels) {
        let panel = &mut panels[(ch / R) * panel_len..][..panel_len];
        for (kk, &w) in row.iter().enumerate() {
            panel[k4_offset(R, ch % R, kk)] = w as u8;
        }
    }
    Blob::from_bytes_alignment(&panels, 64).map_err(|e| e.to_string())
}

/// Weight panels per channel tile: one vector of 16 channels each.
const TAIL_PANELS: usize = 2;
/// Columns per channel tile at most: 2 x 12 accumulators, 2 weight vectors and a broadcast
/// fit the 32 vector registers.
const TAIL_COLS: usize = 12;

/// [`channel_tile_of`] for `cols` (1 to [`TAIL_COLS`]) columns and as many weight panels
/// as `channels` needs (1 or 2).
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn channel_tile(
    cols: usize,
    pa: *const u8,
    pb: *const u8,
    groups: usize,
    starts: *const i32,
    c: *mut i32,
    shape: [usize; 3],
) {
    macro_rules! by_cols {
        ($p:literal: $($q:literal)*) => {
            match cols {
                $($q => channel_tile_of::<$q, $p>(pa, pb, groups, starts, c, shape),)*
                _ => unreachable!("{cols} columns for a channel tile"),
            }
        };
    }
    // SAFETY: the caller's contract.
    unsafe {
        if shape[0] > R {
            by_cols!(2: 1 2 3 4 5 6 7 8 9 10 11 12)
        } else {
            by_cols!(1: 1 2 3 4 5 6 7 8 9 10 11 12)
        }
    }
}

/// One channel tile: the transpose of [`tile`]'s roles. Each vector holds 16 output
/// channels (a weight panel's group of 64 bytes as it is), and each of the `Q` columns'
/// four patch bytes are broadcast to them: for `P` panels of channels from `pa`
/// (`panel_len` bytes apart), `start[ch] + sum over k of a[ch][k] * b[k][col]` for the
/// columns whose groups start at `pb` (4 bytes apart in each 64-byte group), scattered to
/// `c + ch * stride + col` for the first `channels` channels.
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn channel_tile_of<const Q: usize, const P: usize>(
    pa: *const u8,
    pb: *const u8,
    groups: usize,
    start: *const i32,
    c: *mut i32,
    [channels, stride, panel_len]: [usize; 3],
) {
    // SAFETY (reads): `start` holds P whole panels of values.
    let mut acc: [[__m512i; P]; Q] = std::array::from_fn(|_| {
        std::array::from_fn(|p| unsafe { _mm512_loadu_si512(start.add(p * R) as *const __m512i) })
    });
    for g in 0..groups {
        // SAFETY (reads): every panel holds `groups` groups of 64 bytes; the tile's
        // columns are within the patch panel's group.
        let va: [__m512i; P] = std::array::from_fn(|p| unsafe {
            _mm512_loadu_si512(pa.add(p * panel_len + g * 64) as *const __m512i)
        });
        let patches = unsafe { pb.add(g * 64) } as *const i32;
        for (q, acc) in acc.iter_mut().enumerate() {
            let vb = _mm512_set1_epi32(unsafe { patches.add(q).read_unaligned() });
            for (acc, va) in acc.iter_mut().zip(&va) {
                *acc = _mm512_dpbusd_epi32(*acc, vb, *va);
            }
        }
    }
    let rows = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(stride as i32),
    );
    for (q, acc) in acc.iter().enumerate() {
        for (p, acc) in acc.iter().enumerate() {
            let valid = channels.saturating_sub(p * R).min(R);
            let mask: __mmask16 = if valid == R { !0 } else { (1 << valid) - 1 };
            // SAFETY: the caller's contract: `channels` rows of the tile's columns from
            // `c`, `stride` apart.
            unsafe {
                let at = c.add(p * R * stride + q);
                _mm512_mask_i32scatter_epi32::<4>(at, mask, rows, *acc)
            };
        }
    }
}

/// The patches as [`Tiles`] reads them: each i8 plus 128, as u8.
pub(crate) fn offset_patches(bytes: &mut [i8]) {
    for b in bytes {
        *b ^= i8::MIN;
    }
}

/// One tile: for each of `rows` (up to 8) channels from `pa`'s first row, `start[row] +
/// sum over k of a[row][k] * b[k][col]` (b as u8, a as i8) for the `P` patch panels from
/// `pb` (`panel_len` bytes apart), stored from `c + row * stride`: 16 columns per panel.
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn tile<const P: usize>(
    pa: *const u8,
    pb: *const u8,
    groups: usize,
    start: &[i32],
    c: *mut i32,
    [rows, stride, panel_len]: [usize; 3],
) {
    let mut acc: [[__m512i; P]; HALF] = std::array::from_fn(|r| [_mm512_set1_epi32(start[r]); P]);
    for g in 0..groups {
        // SAFETY (reads): every panel holds `groups` groups of 64 bytes.
        let vb: [__m512i; P] = std::array::from_fn(|p| unsafe {
            _mm512_loadu_si512(pb.add(p * panel_len + g * 64) as *const __m512i)
        });
        let weights = unsafe { pa.add(g * 64) } as *const i32;
        for (r, acc) in acc.iter_mut().enumerate() {
            let wa = _mm512_set1_epi32(unsafe { weights.add(r).read_unaligned() });
            for (acc, vb) in acc.iter_mut().zip(&vb) {
                *acc = _mm512_dpbusd_epi32(*acc, *vb, wa);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate().take(rows) {
        for (p, acc) in acc.iter().enumerate() {
            // SAFETY: the caller's contract: the tile's columns from `c + r * stride`.
            unsafe { _mm512_storeu_si512(c.add(r * stride + p * R) as *mut __m512i, *acc) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Column tiles for whole panels, channel tiles for the rest: every split of columns
    /// (fewer than a panel, a panel and one column, 12 + 3 left over, whole panels), with
    /// channels that end inside a half panel and inside a second channel panel, and depths
    /// that are not whole groups, against the sums the definition gives.
    #[test]
    fn tiles_give_the_defined_sums() {
        if !available() {
            println!("SKIPPED: this CPU has no AVX-512 VNNI");
            return;
        }
        use crate::banded::tests::random_bytes;
        let mut seed = 0x9e37_79b9u32;
        for (channels, k, n) in [
            (5, 3, 1),
            (16, 64, 49),
            (21, 9, 15),
            (40, 27, 31),
            (33, 576, 17),
            (64, 5, 48),
            (8, 100, 196),
            (512, 36, 7),
            (17, 4, 28),
        ] {
            let weights: Vec<i8> = random_bytes(channels * k, &mut seed)
                .into_iter()
                .map(|b| b as i8)
                .collect();
            let offsets: Vec<i32> = (0..channels).map(|ch| ch as i32 * 1000 - 7000).collect();
            let panels = Arc::new(pack_rows(&weights, channels, k).unwrap());
            let tiles = Tiles::with_panels(panels, channels, k, &offsets);
            // The patches as the band packs them: K4 panels of 16 columns, each byte the
            // patch value plus 128.
            let patches = random_bytes(k * n, &mut seed);
            let panel_len = k.div_ceil(4) * 4 * R;
            let mut packed = vec![0u8; n.div_ceil(R) * panel_len];
            for col in 0..n {
                for kk in 0..k {
                    packed[(col / R) * panel_len + k4_offset(R, col % R, kk)] =
                        patches[kk * n + col];
                }
            }
            let mut c = vec![0i32; channels * n];
            tiles.run(&packed, panel_len, n, &mut c).unwrap();
            for ch in 0..channels {
                for col in 0..n {
                    let want = (0..k).fold(offsets[ch], |s, kk| {
                        let product = i32::from(weights[ch * k + kk])
                            * (i32::from(patches[kk * n + col]) - 128);
                        s.wrapping_add(product)
                    });
                    assert_eq!(
                        c[ch * n + col],
                        want,
                        "channel {ch}, column {col} of {channels} x {n}, k {k}"
                    );
                }
            }
        }
    }
}
