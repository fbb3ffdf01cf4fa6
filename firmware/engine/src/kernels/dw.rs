//! Depthwise products over a prepared plane: the family behind every int8 depthwise
//! convolution (depthwise.rs prepares the plane and picks it).
//!
//! The operator copies one channel's input into a plane that already holds the padding
//! (the zero point) and, for a stride `s` > 1 along the rows, splits each row into `s`
//! phases (columns p, p + s, ...). Then every kernel tap of every output row reads one
//! contiguous run, and a channel's sums are
//!
//! `out[oy · cols + ox] = start + Σ_t w[t] · src[oy · pitch + offsets[t] + ox]`
//!
//! with no edge cases: the kernel never tests a position against the image's border.
//!
//! Weights are 16-bit: a symmetric i8 weight, or an asymmetric u8 weight less its zero
//! point (`w - zw` in [-255, 255]), which folds the zero point's per-position term
//! `zw · Σ x` into the taps (depthwise.rs).
//!
//! The NEON version keeps 16 output positions' sums in four registers across all taps
//! (tract's integer path and this crate's earlier loop went through memory once per tap).
//! When every weight of the channel is in [-127, 127] it sums two taps' products in 16-bit
//! lanes before adding them to the 32-bit sums (5 instructions per tap and 16 positions);
//! otherwise it widens each tap's bytes and multiplies them by element into 32 bits (7).
//! Either way the result is exact for any 16-bit weight, and sums wrap in i32 as tract's
//! do. On x86-64 with AVX2 two
//! taps' bytes are interleaved and multiplied by their weight pair with VPMADDWD
//! (kernels/dw_avx2.rs); other hosts run the scalar reference.
//!
//! On cores with the dot product (Cortex-A55, A76) the taps go four at a time through
//! SDOT (kernels/dw_dot.rs): [`DotGroups`] splits a layout's taps into runs of up to four
//! consecutive offsets (a kernel row of a stride-1 plane, a phase's columns of a stride-2
//! one), whose bytes a table lookup lays out per position, and gathers of four other taps;
//! it is used where it takes fewer instructions than the paired taps, and only for a
//! channel whose weights are all i8.
//!
//! Contract on the reads: the kernels read whole blocks of [`BLOCK`] positions, and the
//! dot kernel's runs 12 bytes further, so `src` must hold [`READ_SLACK`] bytes past the
//! last position a channel's sums use ([`check`]).

/// Output positions a NEON block computes at once.
pub(crate) const BLOCK: usize = 16;
/// Bytes the kernels may read past the last position that contributes to a sum.
pub(crate) const READ_SLACK: usize = 2 * BLOCK;

/// One channel's taps over a prepared plane: tap `t` starts at `offsets[t]` and weighs
/// `weights[t]`; output row `oy` reads `pitch · oy` further on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Taps<'a> {
    pub(crate) offsets: &'a [usize],
    pub(crate) weights: &'a [i16],
    pub(crate) pitch: usize,
    /// The taps in groups of four and their weights for the dot-product kernel, or none.
    pub(crate) dot: Option<DotTaps<'a>>,
}

/// One channel's taps for the dot-product kernel: the layout's groups ([`DotGroups::of`]
/// the offsets) and the channel's weights packed for them ([`DotGroups::pack`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DotTaps<'a> {
    pub(crate) groups: &'a DotGroups,
    pub(crate) packed: &'a [i32],
}

/// Up to four taps at consecutive offsets, which one SDOT per four positions sums: `len`
/// (2 to 4) taps from `base`, `taps[k]` at `base + k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DotRun {
    pub(crate) base: usize,
    pub(crate) len: usize,
    pub(crate) taps: [usize; 4],
}

/// Four taps anywhere, which one SDOT per four positions sums; a missing one repeats an
/// offset with weight 0 (tap `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DotGather {
    pub(crate) offsets: [usize; 4],
    pub(crate) taps: [Option<usize>; 4],
}

/// A layout's taps in runs (the longest first) and gathers, every tap in exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DotGroups {
    pub(crate) runs: Vec<DotRun>,
    pub(crate) gathers: Vec<DotGather>,
    /// The offsets they were made of: the kernel runs them only for these taps.
    offsets: Vec<usize>,
}

/// The TBL indices of a run of `len` taps (`RUN_INDICES[len]`) for positions 4q .. 4q + 3
/// (q = 0, 1, 2) from a load at the run's base: byte 4j + k is position 4q + j's tap k,
/// `4q + j + k`; 0xFF, out of the table (TBL gives 0), for k ≥ len. Positions 12-15 take
/// q = 0's indices from a load 12 bytes on, so that no index passes 15.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
pub(crate) const RUN_INDICES: [[[u8; 16]; 3]; 5] = {
    let mut table = [[[0xFF; 16]; 3]; 5];
    let mut len = 0;
    while len < 5 {
        let mut q = 0;
        while q < 3 {
            let mut i = 0;
            while i < 16 {
                let (j, k) = (i / 4, i % 4);
                if k < len {
                    table[len][q][i] = (4 * q + j + k) as u8;
                }
                i += 1;
            }
            q += 1;
        }
        len += 1;
    }
    table
};

/// Estimated instructions per block of 16 positions of a run, of a gather and of a pair of
/// taps on the ISA's other depthwise kernel.
#[derive(Debug, Clone, Copy)]
struct Costs {
    run: usize,
    gather: usize,
    pair: usize,
}

/// NEON: a run is two loads, four TBL, four SDOT; a gather four loads, eight zips, four
/// SDOT; a pair of the paired taps two loads, four multiplies, four widening adds.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
const NEON_COSTS: Costs = Costs {
    run: 10,
    gather: 16,
    pair: 10,
};

/// AVX-512: a run is a load, an XOR, a VPERMB and a VPDPBUSD; a gather four loads, three
/// inserts and the same three; a pair of the AVX2 kernel two loads, an unpack, two
/// widenings, VPMADDWD, an add.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const VNNI_COSTS: Costs = Costs {
    run: 4,
    gather: 10,
    pair: 8,
};

/// Whether this CPU runs a dot-product depthwise kernel: SDOT on aarch64 (kernels/dw_dot.rs),
/// AVX-512 VBMI and VNNI on x86-64 (kernels/dw_vnni.rs).
pub(crate) fn dot_available() -> bool {
    #[cfg(target_arch = "aarch64")]
    return super::dot::available();
    #[cfg(target_arch = "x86_64")]
    return super::dw_vnni::available();
    #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
    false
}

impl DotGroups {
    /// The groups of the taps at `offsets`, when this CPU has a dot-product kernel and
    /// they take at most 6/7 of the other kernel's instructions (on NEON, a stride-2 3x3
    /// layout, in runs of two and single taps, gains nothing).
    pub(crate) fn of(offsets: &[usize]) -> Option<DotGroups> {
        if !dot_available() {
            return None;
        }
        #[cfg(target_arch = "x86_64")]
        let costs = VNNI_COSTS;
        #[cfg(not(target_arch = "x86_64"))]
        let costs = NEON_COSTS;
        let groups = DotGroups::split(offsets);
        groups.worth_it(offsets.len(), costs).then_some(groups)
    }

    /// Whether the groups of `taps` taps take at most 6/7 of the other kernel's
    /// instructions.
    fn worth_it(&self, taps: usize, costs: Costs) -> bool {
        let cost = self.runs.len() * costs.run + self.gathers.len() * costs.gather;
        7 * cost <= 6 * costs.pair * taps.div_ceil(2)
    }

    /// Runs of consecutive offsets, cut every four taps; the taps left alone gathered four
    /// at a time.
    pub(crate) fn split(offsets: &[usize]) -> DotGroups {
        let mut order: Vec<usize> = (0..offsets.len()).collect();
        order.sort_by_key(|&t| offsets[t]);
        let mut runs = vec![];
        let mut singles = vec![];
        let mut i = 0;
        while i < order.len() {
            let mut len = 1;
            while len < 4
                && i + len < order.len()
                && offsets[order[i + len]] == offsets[order[i]] + len
            {
                len += 1;
            }
            if len == 1 {
                singles.push(order[i]);
            } else {
                let mut taps = [order[i]; 4];
                taps[..len].copy_from_slice(&order[i..i + len]);
                runs.push(DotRun {
                    base: offsets[order[i]],
                    len,
                    taps,
                });
            }
            i += len;
        }
        runs.sort_by_key(|r| std::cmp::Reverse(r.len));
        let mut gathers = vec![];
        for chunk in singles.chunks(4) {
            let mut taps = [None; 4];
            let mut at = [offsets[chunk[0]]; 4];
            for (k, &t) in chunk.iter().enumerate() {
                taps[k] = Some(t);
                at[k] = offsets[t];
            }
            gathers.push(DotGather { offsets: at, taps });
        }
        DotGroups {
            runs,
            gathers,
            offsets: offsets.to_vec(),
        }
    }

    /// Whether these are the groups of taps at `offsets`.
    pub(crate) fn of_offsets(&self, offsets: &[usize]) -> bool {
        self.offsets == offsets
    }

    /// How many groups: runs, then gathers.
    pub(crate) fn len(&self) -> usize {
        self.runs.len() + self.gathers.len()
    }

    /// How many runs of 4, 3 and 2 taps, and how many gathers.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub(crate) fn counts(&self) -> [usize; 4] {
        let runs = |len: usize| self.runs.iter().filter(|r| r.len == len).count();
        [runs(4), runs(3), runs(2), self.gathers.len()]
    }

    /// One channel's `weights` (per tap) packed for the groups, runs then gathers: each
    /// group's four as the bytes of one i32, tap k in byte k, 0 where a group has no tap.
    /// None when a weight is not an i8 (a u8 weight less its zero point can be ±255).
    pub(crate) fn pack(&self, weights: &[i16]) -> Option<Vec<i32>> {
        let byte = |t: Option<usize>| -> Option<u32> {
            match t {
                None => Some(0),
                Some(t) => i8::try_from(*weights.get(t)?).ok().map(|w| w as u8 as u32),
            }
        };
        let word = |taps: [Option<usize>; 4]| -> Option<i32> {
            let mut word = 0u32;
            for (k, t) in taps.into_iter().enumerate() {
                word |= byte(t)? << (8 * k);
            }
            Some(word as i32)
        };
        let runs = self
            .runs
            .iter()
            .map(|r| word(std::array::from_fn(|k| (k < r.len).then_some(r.taps[k]))));
        let gathers = self.gathers.iter().map(|g| word(g.taps));
        runs.chain(gathers).collect()
    }
}

/// The largest sum of weight magnitudes whose products with i8 inputs share a 16-bit
/// lane without overflow: 128 · 255 = 32640 ≤ 32767.
pub(crate) const LANE_BUDGET: u32 = 255;

/// The group sizes the NEON planes kernel is compiled for with `taps` taps, largest first
/// (each a different number of groups: 9 taps in groups of 4 are three groups, as in
/// groups of 3).
pub(crate) fn group_sizes(taps: usize) -> &'static [usize] {
    match taps {
        9 => &[9, 5, 3, 2, 1],
        25 => &[25, 13, 9, 7, 5, 4, 3, 2, 1],
        _ => &[2, 1],
    }
}

/// The largest of `group_sizes` whose groups (consecutive runs of that many taps of
/// `weights`, the last one shorter) each sum their products in 16-bit lanes without
/// overflow (`Σ |w| ≤ LANE_BUDGET`); 0 when a weight is outside i8.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
pub(crate) fn group_size(weights: &[i16]) -> usize {
    if weights.iter().any(|w| !(-128..=127).contains(w)) {
        return 0;
    }
    let fits = |g: usize| {
        weights
            .chunks(g)
            .all(|c| c.iter().map(|w| u32::from(w.unsigned_abs())).sum::<u32>() <= LANE_BUDGET)
    };
    group_sizes(weights.len())
        .iter()
        .copied()
        .find(|&g| fits(g))
        .unwrap_or(1)
}

/// An order of one channel's taps (indices into `weights`) whose [`group_size`] is as
/// large as [`schedule_lanes`] finds.
pub(crate) fn schedule(weights: &[i16]) -> Vec<usize> {
    schedule_lanes(weights.len(), 1, |_, t| {
        u32::from(weights[t].unsigned_abs())
    })
    .0
}

/// An order of `taps` taps shared by `lanes` lanes (the channels of a vector: tap t weighs
/// `magnitude(lane, t)` in lane `lane`) and the largest of [`group_sizes`] whose groups, as
/// consecutive runs of that order, sum to at most [`LANE_BUDGET`] in every lane: for each
/// size, largest first, the taps by decreasing magnitude each go to the group with room
/// where the largest lane sum grows least (the groups hold that size, the last the rest);
/// the first size whose groups all fit gives the order, group after group. Size 1 always
/// fits i8 weights.
pub(crate) fn schedule_lanes(
    taps: usize,
    lanes: usize,
    magnitude: impl Fn(usize, usize) -> u32,
) -> (Vec<usize>, usize) {
    let widest = |t: usize| (0..lanes).map(|l| magnitude(l, t)).max().unwrap_or(0);
    let mut by_size: Vec<usize> = (0..taps).collect();
    by_size.sort_by_key(|&t| std::cmp::Reverse(widest(t)));
    for &g in group_sizes(taps) {
        let count = taps.div_ceil(g);
        let room = |i: usize| {
            if i + 1 < count {
                g
            } else {
                taps - g * (count - 1)
            }
        };
        // Per group: its lanes' sums and its taps.
        let mut groups: Vec<(Vec<u32>, Vec<usize>)> =
            vec![(vec![0; lanes], Vec::with_capacity(g)); count];
        let grown = |sums: &[u32], t: usize| {
            (0..lanes)
                .map(|l| sums[l] + magnitude(l, t))
                .max()
                .unwrap_or(0)
        };
        for &t in &by_size {
            let Some(best) = (0..count)
                .filter(|&i| groups[i].1.len() < room(i))
                .min_by_key(|&i| grown(&groups[i].0, t))
            else {
                break;
            };
            for (l, sum) in groups[best].0.iter_mut().enumerate() {
                *sum += magnitude(l, t);
            }
            groups[best].1.push(t);
        }
        if groups
            .iter()
            .all(|(sums, _)| sums.iter().all(|&s| s <= LANE_BUDGET))
        {
            return (groups.into_iter().flat_map(|(_, taps)| taps).collect(), g);
        }
    }
    ((0..taps).collect(), 1)
}

/// The length `src` must have for `rows × cols` sums of `taps` (with [`READ_SLACK`]).
pub(crate) fn needed(taps: &Taps, rows: usize, cols: usize) -> usize {
    let last = taps.offsets.iter().max().copied().unwrap_or(0);
    if rows == 0 || cols == 0 {
        return 0;
    }
    last + (rows - 1) * taps.pitch + cols + READ_SLACK
}

/// Refuses operands the kernels would read or write out of bounds.
pub(crate) fn check(
    src: &[i8],
    taps: &Taps,
    (rows, cols): (usize, usize),
    out: &[i32],
) -> Result<(), String> {
    if taps.offsets.len() != taps.weights.len() || taps.offsets.is_empty() {
        return Err(format!(
            "{} tap offsets and {} weights",
            taps.offsets.len(),
            taps.weights.len()
        ));
    }
    if out.len() != rows * cols {
        return Err(format!("{} sums for {rows} x {cols} positions", out.len()));
    }
    if let Some(dot) = taps.dot {
        if !dot.groups.of_offsets(taps.offsets) || dot.packed.len() != dot.groups.len() {
            return Err(format!(
                "dot-product groups of other taps than {:?}, or {} packed weights for {} groups",
                taps.offsets,
                dot.packed.len(),
                dot.groups.len()
            ));
        }
    }
    let needed = needed(taps, rows, cols);
    if src.len() < needed {
        return Err(format!(
            "a plane of {} bytes for {rows} x {cols} positions needing {needed}",
            src.len()
        ));
    }
    Ok(())
}

/// `out[oy · cols + ox] = start + Σ_t w[t] · src[oy · pitch + offsets[t] + ox]`.
pub(crate) fn run(
    src: &[i8],
    taps: &Taps,
    start: i32,
    (rows, cols): (usize, usize),
    out: &mut [i32],
) -> Result<(), String> {
    check(src, taps, (rows, cols), out)?;
    #[cfg(target_arch = "aarch64")]
    if let Some(dot) = taps.dot {
        // SAFETY: `DotGroups::of` made the groups on a CPU with the dot product; `check`
        // holds that they are these taps', with a packed weight each, and the lengths the
        // kernel reads (with READ_SLACK) and writes.
        unsafe { super::dw_dot::run(src, taps.pitch, dot, start, (rows, cols), out) };
        return Ok(());
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: NEON is part of aarch64; `check` holds the lengths the kernel reads (with
    // READ_SLACK) and writes.
    unsafe {
        super::dw_neon::run(src, taps, start, (rows, cols), out)
    };
    #[cfg(target_arch = "x86_64")]
    if let Some(dot) = taps.dot {
        // SAFETY: `DotGroups::of` made the groups on a CPU with AVX-512 VBMI and VNNI;
        // `check` holds that they are these taps', with a packed weight each, and the
        // lengths the kernel reads (with READ_SLACK) and writes.
        unsafe { super::dw_vnni::run(src, taps.pitch, dot, start, (rows, cols), out) };
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2; `check` holds the lengths the kernel reads (with
        // READ_SLACK) and writes.
        unsafe { super::dw_avx2::run(src, taps, start, (rows, cols), out) };
        return Ok(());
    }
    #[cfg(not(target_arch = "aarch64"))]
    run_scalar(src, taps, start, (rows, cols), out);
    Ok(())
}

/// The kernel [`run`] takes on this CPU, for taps with dot-product groups (`dot`) or without.
pub(crate) fn kernel_name(dot: bool) -> &'static str {
    #[cfg(target_arch = "aarch64")]
    return if dot {
        "edgedx_dw_dot_16"
    } else {
        "edgedx_dw_neon_16"
    };
    #[cfg(target_arch = "x86_64")]
    return if dot {
        "edgedx_dw_vnni_16"
    } else if std::arch::is_x86_feature_detected!("avx2") {
        "edgedx_dw_avx2"
    } else {
        "edgedx_dw_scalar"
    };
    #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
    "edgedx_dw_scalar"
}

/// The scalar reference: what every ISA's kernel must compute. On hosts without a kernel
/// of their own it serves: tap by tap over a row, a loop the compiler vectorizes (with
/// SSE2 only, at about a gigaproduct a second on the development host).
#[cfg_attr(all(target_arch = "aarch64", not(test)), allow(dead_code))]
pub(crate) fn run_scalar(
    src: &[i8],
    taps: &Taps,
    start: i32,
    (rows, cols): (usize, usize),
    out: &mut [i32],
) {
    for (oy, row) in out.chunks_exact_mut(cols.max(1)).take(rows).enumerate() {
        row.fill(start);
        for (&at, &w) in taps.offsets.iter().zip(taps.weights) {
            let w = i32::from(w);
            let run = &src[oy * taps.pitch + at..][..cols];
            for (a, &x) in row.iter_mut().zip(run) {
                *a = a.wrapping_add(w * i32::from(x));
            }
        }
    }
}

/// Splits a row into its even and odd positions (`line[0], line[2], ...` into `evens`,
/// `line[1], line[3], ...` into `odds`): the phases of a stride-2 plane. The slices must
/// hold at least `line.len().div_ceil(2)` and `line.len() / 2` values.
pub(crate) fn split2(line: &[i8], evens: &mut [i8], odds: &mut [i8]) {
    let (ne, no) = (line.len().div_ceil(2), line.len() / 2);
    let (evens, odds) = (&mut evens[..ne], &mut odds[..no]);
    #[cfg(target_arch = "aarch64")]
    let done = super::dw_neon::split2(line, evens, odds);
    #[cfg(target_arch = "x86_64")]
    let done = split2_sse2(line, evens, odds);
    #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
    let done = 0;
    let tail = &line[2 * done..];
    for ((pair, e), o) in tail
        .chunks_exact(2)
        .zip(&mut evens[done..])
        .zip(&mut odds[done..])
    {
        (*e, *o) = (pair[0], pair[1]);
    }
    if let (Some(&last), true) = (tail.last(), tail.len() % 2 == 1) {
        evens[ne - 1] = last;
    }
}

/// `line`'s pairs split into `evens` and `odds` with SSE2 (the baseline of x86-64), 32
/// values at a time: each 16-bit lane's low byte is an even value and its high byte the
/// odd one, packed back to bytes (PACKUSWB of values 0-255 keeps them). A last part chunk
/// is the last 16 pairs again (out of place: the overlap rewrites the same values).
/// Returns how many pairs were written: all of them from 16 pairs on. The scalar loop had
/// been a tenth of EfficientNet-Lite0's int8 inference on the host (perf); a 112-value row
/// (Lite0's and MobileNetV2's first stride-2 depthwise layers) left 8 pairs to it.
#[cfg(target_arch = "x86_64")]
fn split2_sse2(line: &[i8], evens: &mut [i8], odds: &mut [i8]) -> usize {
    use std::arch::x86_64::*;
    let pairs = (line.len() / 2).min(evens.len()).min(odds.len());
    if pairs < 16 {
        return 0;
    }
    let (e, o) = (evens.as_mut_ptr(), odds.as_mut_ptr());
    // SAFETY: SSE2 is part of x86_64; reads line[2 · at..][..32] and writes 16 values from
    // `at` of each half, at + 16 <= pairs.
    let chunk = |at: usize| unsafe {
        let low = _mm_set1_epi16(0xff);
        let from = line.as_ptr().add(2 * at) as *const __m128i;
        let (a, b) = (_mm_loadu_si128(from), _mm_loadu_si128(from.add(1)));
        let even = _mm_packus_epi16(_mm_and_si128(a, low), _mm_and_si128(b, low));
        let odd = _mm_packus_epi16(_mm_srli_epi16::<8>(a), _mm_srli_epi16::<8>(b));
        _mm_storeu_si128(e.add(at) as *mut __m128i, even);
        _mm_storeu_si128(o.add(at) as *mut __m128i, odd);
    };
    let mut done = 0;
    while done + 16 <= pairs {
        chunk(done);
        done += 16;
    }
    if done < pairs {
        chunk(pairs - 16);
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pseudo-random i8 values over the whole range.
    fn values(len: usize, seed: u32) -> Vec<i8> {
        crate::kernels::panels::tests::values(len, seed, -128)
    }

    /// The naive sums, written apart from `run_scalar`.
    fn naive(src: &[i8], taps: &Taps, start: i32, (rows, cols): (usize, usize)) -> Vec<i32> {
        let mut out = Vec::with_capacity(rows * cols);
        for oy in 0..rows {
            for ox in 0..cols {
                let mut s = start;
                for t in 0..taps.offsets.len() {
                    let x = src[oy * taps.pitch + taps.offsets[t] + ox];
                    s = s.wrapping_add(i32::from(taps.weights[t]) * i32::from(x));
                }
                out.push(s);
            }
        }
        out
    }

    fn check_shape(src: &[i8], taps: &Taps, start: i32, shape: (usize, usize)) {
        let want = naive(src, taps, start, shape);
        let n = shape.0 * shape.1;
        // Sentinels past the sums: the kernel writes nothing outside the slice it is given.
        let mut got = vec![i32::MIN; n + BLOCK];
        run(src, taps, start, shape, &mut got[..n]).unwrap();
        assert_eq!(
            got[..n],
            want,
            "kernel, {} taps, {shape:?}",
            taps.offsets.len()
        );
        assert!(
            got[n..].iter().all(|&v| v == i32::MIN),
            "written past the end"
        );
        // The dot-product kernel, on the groups of these taps whatever they cost, where this
        // CPU has it (CI runs the library tests under qemu as a Cortex-A76, and on hosts with
        // AVX-512 VNNI).
        let groups = DotGroups::split(taps.offsets);
        let packed = groups.pack(taps.weights);
        if let (true, Some(packed)) = (dot_available(), packed) {
            let mut got = vec![i32::MIN; n + BLOCK];
            let dot = Taps {
                dot: Some(DotTaps {
                    groups: &groups,
                    packed: &packed,
                }),
                ..*taps
            };
            run(src, &dot, start, shape, &mut got[..n]).unwrap();
            assert_eq!(
                got[..n],
                want,
                "dot kernel, {} taps in {:?}, {shape:?}",
                taps.offsets.len(),
                groups
            );
            assert!(
                got[n..].iter().all(|&v| v == i32::MIN),
                "written past the end"
            );
        }
        let mut scalar = vec![i32::MAX; shape.0 * shape.1];
        run_scalar(src, taps, start, shape, &mut scalar);
        assert_eq!(
            scalar,
            want,
            "scalar, {} taps, {shape:?}",
            taps.offsets.len()
        );
    }

    /// Tap counts of 1x1 to 7x7 kernels and of non-square ones, output rows shorter than,
    /// equal to and longer than a block (1, 7, 15, 16, 17, 33, 112 positions), one to many
    /// rows, pitches of stride-1 and stride-2 planes, offsets in any order: the kernel this
    /// CPU runs and the scalar reference give the naive sums.
    #[test]
    fn matches_the_naive_sums_over_odd_shapes() {
        let mut seed = 11;
        for ntaps in [1, 2, 3, 4, 5, 9, 15, 25, 49] {
            for cols in [1, 7, 8, 15, 16, 17, 33, 112] {
                for rows in [1, 2, 5] {
                    for stride in [1, 2] {
                        seed += 1;
                        let pitch = stride * (cols + 6);
                        let offsets: Vec<usize> = (0..ntaps)
                            .map(|t| (t * 7 + seed as usize) % (3 * pitch + 5))
                            .collect();
                        // Weights in [-127, 127] (the paired NEON taps), then with a
                        // -128 among them, then a u8 weight less its zero point (the
                        // widened ones).
                        let mut weights: Vec<i16> = values(ntaps, seed * 3)
                            .iter()
                            .map(|&w| i16::from(w).max(-127))
                            .collect();
                        let plain = Taps {
                            offsets: &offsets,
                            weights: &weights,
                            pitch,
                            dot: None,
                        };
                        let src = values(needed(&plain, rows, cols), seed * 7);
                        for spoil in [None, Some(-128), Some(255), Some(-255)] {
                            if let Some(w) = spoil {
                                weights[ntaps / 2] = w;
                            }
                            let taps = Taps {
                                offsets: &offsets,
                                weights: &weights,
                                pitch,
                                dot: None,
                            };
                            check_shape(&src, &taps, seed as i32 * 1_000_003, (rows, cols));
                        }
                    }
                }
            }
        }
    }

    /// Weights whose magnitudes leave room for groups of more than two taps (real
    /// kernels: one large weight beside small ones), in the order `schedule` gives: every
    /// group size the NEON kernel is compiled for, up to all 25 taps in one 16-bit group,
    /// and groups at exactly the lane budget against inputs of -128 and 127 (±32640 in a
    /// lane), give the naive sums.
    #[test]
    fn grouped_taps_match_the_naive_sums() {
        let mut seed = 5;
        for ntaps in [9, 25, 49, 4] {
            for spread in [3, 10, 28, 60, 127] {
                seed += 1;
                let (rows, cols) = (3, 37);
                let pitch = cols + 8;
                let offsets: Vec<usize> = (0..ntaps).map(|t| (t * 5) % (2 * pitch)).collect();
                let weights: Vec<i16> = values(ntaps, seed)
                    .iter()
                    .enumerate()
                    .map(|(t, &w)| {
                        if t == 1 {
                            127
                        } else {
                            i16::from(w) * spread / 128
                        }
                    })
                    .collect();
                let order = schedule(&weights);
                let mut sorted = order.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..ntaps).collect::<Vec<_>>(), "a permutation");
                let offsets: Vec<usize> = order.iter().map(|&t| offsets[t]).collect();
                let weights: Vec<i16> = order.iter().map(|&t| weights[t]).collect();
                assert!(group_size(&weights) >= 1);
                let taps = Taps {
                    offsets: &offsets,
                    weights: &weights,
                    pitch,
                    dot: None,
                };
                let len = needed(&taps, rows, cols);
                for src in [values(len, seed * 7), vec![-128; len], vec![127; len]] {
                    check_shape(&src, &taps, -(seed as i32) * 999_983, (rows, cols));
                }
            }
        }
        // At the budget: 255 in magnitude per group of every size, with -128 weights.
        for (weights, group) in [
            (vec![127i16, -128, 0, 0, 0, 0, 0, 0, 0], 9),
            (vec![-128, 127, 1, -1, 0, 0, 0, 0, 0], 2),
            (vec![-128, -127, -128, 127, -128, 127, -128, -127, 7], 2),
            (
                vec![-128, -128, -128, -128, -128, -128, -128, -128, -128],
                1,
            ),
        ] {
            assert_eq!(group_size(&weights), group, "{weights:?}");
            let offsets: Vec<usize> = (0..9).collect();
            let taps = Taps {
                offsets: &offsets,
                weights: &weights,
                pitch: 20,
                dot: None,
            };
            let len = needed(&taps, 2, 17);
            for x in [-128i8, 127] {
                check_shape(&vec![x; len], &taps, 3, (2, 17));
            }
        }
    }

    /// `schedule` finds the one group of 9 a typical 3x3 kernel allows, and groups a
    /// kernel whose magnitudes sum past the budget so that each group fits it.
    #[test]
    fn schedules_fill_the_lane_budget() {
        let typical = [12i16, -30, 8, -41, 127, -25, 3, 6, -2];
        assert_eq!(group_size(&typical), 9);
        let heavy = [100i16, -90, 80, -70, 127, 60, -50, 40, -30];
        assert_eq!(
            group_size(&heavy),
            2,
            "647 in magnitude, 270 in its first three"
        );
        let order = schedule(&heavy);
        let scheduled: Vec<i16> = order.iter().map(|&t| heavy[t]).collect();
        // 647 fits three groups but not two of five and four (327 at least in one).
        assert_eq!(group_size(&scheduled), 3);
        for chunk in scheduled.chunks(3) {
            let sum: u32 = chunk.iter().map(|w| u32::from(w.unsigned_abs())).sum();
            assert!(sum <= LANE_BUDGET, "{scheduled:?}");
        }
        // Pairs where the order given has two large weights together.
        let together = [127i16, 127, 2, 2, 2, 2, 2, 2, 2];
        assert_eq!(group_size(&together), 2);
        let order = schedule(&together);
        let scheduled: Vec<i16> = order.iter().map(|&t| together[t]).collect();
        assert_eq!(group_size(&scheduled), 5, "{scheduled:?}");
    }

    /// The tap offsets depthwise.rs lays out for a `k`x`k` kernel of `stride` and
    /// `dilation` over a plane of `rows` padded rows and `cols` padded columns (phases of
    /// `width` columns), and the pitch from one output row to the next.
    fn layout(
        k: usize,
        stride: usize,
        dilation: usize,
        rows: usize,
        cols: usize,
    ) -> (Vec<usize>, usize) {
        let width = cols.div_ceil(stride);
        let mut offsets = vec![];
        for ky in 0..k {
            for kx in 0..k {
                let (phase, col) = ((kx * dilation) % stride, (kx * dilation) / stride);
                offsets.push((phase * rows + ky * dilation) * width + col);
            }
        }
        (offsets, stride * width)
    }

    /// The layouts of real depthwise layers: their groups (kernel rows of a stride-1 plane
    /// and a stride-2 plane's phases as runs, the taps left alone in gathers), which ones
    /// the dot kernel takes, every tap in one group; and every kernel (the dot one where
    /// this CPU has it) gives the naive sums on them, at row widths of 7, 14, 16 and 28.
    #[test]
    fn dot_groups_of_real_layouts() {
        // (k, stride, dilation, runs of 4/3/2 and gathers, taken by the dot kernel)
        let cases = [
            (3, 1, 1, [0, 3, 0, 0], true),
            (3, 2, 1, [0, 0, 3, 1], false),
            (5, 1, 1, [5, 0, 0, 2], true),
            (5, 2, 1, [0, 5, 5, 0], true),
            (7, 1, 1, [7, 7, 0, 0], true),
            (7, 2, 1, [7, 7, 0, 0], true),
            (3, 1, 2, [0, 0, 0, 3], false),
        ];
        let mut seed = 500;
        for (k, stride, dilation, counts, taken) in cases {
            for cols in [7, 14, 16, 28] {
                let rows_out = 3;
                let span = (k - 1) * dilation + 1;
                let (rows, padded) = ((rows_out - 1) * stride + span, (cols - 1) * stride + span);
                let (offsets, pitch) = layout(k, stride, dilation, rows, padded);
                let groups = DotGroups::split(&offsets);
                assert_eq!(groups.counts(), counts, "{k}x{k} /{stride} d{dilation}");
                assert_eq!(
                    groups.worth_it(offsets.len(), NEON_COSTS),
                    taken,
                    "{k}x{k} /{stride}"
                );
                assert!(
                    groups.worth_it(offsets.len(), VNNI_COSTS),
                    "{k}x{k} /{stride}"
                );
                let mut seen: Vec<usize> = groups
                    .runs
                    .iter()
                    .flat_map(|r| r.taps[..r.len].to_vec())
                    .chain(
                        groups
                            .gathers
                            .iter()
                            .flat_map(|g| g.taps.iter().flatten().copied()),
                    )
                    .collect();
                seen.sort();
                assert_eq!(seen, (0..k * k).collect::<Vec<_>>(), "{k}x{k} /{stride}");
                for spoil in [None, Some(-128), Some(255)] {
                    seed += 1;
                    let mut weights: Vec<i16> = values(k * k, seed)
                        .iter()
                        .map(|&w| i16::from(w).max(-127))
                        .collect();
                    if let Some(w) = spoil {
                        weights[k] = w;
                    }
                    // A u8 weight less its zero point is no i8: no packing, other kernels.
                    assert_eq!(groups.pack(&weights).is_some(), spoil != Some(255));
                    let taps = Taps {
                        offsets: &offsets,
                        weights: &weights,
                        pitch,
                        dot: None,
                    };
                    let src = values(needed(&taps, rows_out, cols), seed * 5);
                    check_shape(&src, &taps, seed as i32 * 7919, (rows_out, cols));
                }
            }
        }
    }

    /// Every product at ±16384 and ±16256 (the extremes of two i8 values, -128 weights
    /// included; ±32512 is what two paired taps reach in 16 bits), at ±32640 (a u8 weight
    /// less its zero point, ±255, by an i8), at the 16-bit weights' extremes, and sums
    /// that pass i32 and wrap as tract's do.
    #[test]
    fn holds_at_the_extremes_and_wraps() {
        let pairs = [
            (-128i16, -128i8),
            (-128, 127),
            (127, -128),
            (127, 127),
            (-127, -128),
            (-127, 127),
            (255, -128),
            (-255, -128),
            (255, 127),
            (-255, 127),
            (i16::MIN, -128),
            (i16::MAX, -128),
        ];
        for (w, x) in pairs {
            for ntaps in [9, 25, 49] {
                let offsets: Vec<usize> = (0..ntaps).collect();
                let weights = vec![w; ntaps];
                let taps = Taps {
                    offsets: &offsets,
                    weights: &weights,
                    pitch: 40,
                    dot: None,
                };
                let src = vec![x; needed(&taps, 3, 21)];
                check_shape(&src, &taps, i32::MAX - 5, (3, 21));
            }
        }
    }

    /// Rows of every length around the chunk of 32 (a last part chunk overlapping the one
    /// before it on x86): each value lands in its phase, nothing past the halves is written.
    #[test]
    fn split2_puts_every_value_in_its_phase() {
        for len in [0, 1, 2, 3, 31, 32, 33, 40, 50, 63, 64, 65, 81, 112, 225] {
            let line = values(len, len as u32 + 3);
            let (mut evens, mut odds) = (vec![0i8; len.div_ceil(2) + 3], vec![0i8; len / 2 + 3]);
            split2(&line, &mut evens, &mut odds);
            let want_e: Vec<i8> = line.iter().step_by(2).copied().collect();
            let want_o: Vec<i8> = line.iter().skip(1).step_by(2).copied().collect();
            assert_eq!(&evens[..want_e.len()], &want_e[..], "evens of {len}");
            assert_eq!(&odds[..want_o.len()], &want_o[..], "odds of {len}");
            assert!(
                evens[want_e.len()..].iter().all(|&v| v == 0),
                "past the evens of {len}"
            );
            assert!(
                odds[want_o.len()..].iter().all(|&v| v == 0),
                "past the odds of {len}"
            );
        }
    }

    #[test]
    fn refuses_a_plane_too_short_for_its_reads() {
        let offsets = [0, 5, 9];
        let weights = [1i16, 2, 3];
        let taps = Taps {
            offsets: &offsets,
            weights: &weights,
            pitch: 12,
            dot: None,
        };
        let src = vec![0i8; needed(&taps, 4, 10) - 1];
        let mut out = vec![0; 40];
        let err = run(&src, &taps, 0, (4, 10), &mut out).unwrap_err();
        assert!(err.contains("needing"), "{err}");
        let err = run(&src, &taps, 0, (4, 9), &mut out).unwrap_err();
        assert!(err.contains("40 sums"), "{err}");
    }
}
