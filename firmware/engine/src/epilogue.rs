//! One pass for the requantisation after an integer convolution.
//!
//! tract 0.23.9 turns the i32 accumulator of a QLinearConv back into u8 with four
//! element-wise nodes, each a full pass over an i32 tensor: `Scale` (per-channel f32
//! multiplier, round half to even), `Min(255)`, `Max(0)`, `Cast u8`, and, when the next
//! convolution reads it, `OffsetU8asI8`. On the default bundle that was a third of the int8
//! inference time (firmware/bench/INT8-NOTES.md). [`fuse_requantization`] replaces each such
//! chain with one [`Requantize`] node that computes, per element, exactly what the chain
//! computes: the same f32 product, the same rounding, the same integer clamps, then the
//! cast. The outputs are bit-identical (tested here on the boundaries and in load.rs on whole
//! models). Per-tensor chains are the exception ([`PerTensorRequantize`]): tract computes
//! them in fixed point, the engine with the f32 product as onnxruntime does.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::{BinMiniOp, TypedBinOp};
use tract_onnx::tract_core::ops::cast::Cast;
use tract_onnx::tract_core::ops::change_axes::IntoShape;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::math::{Add, Max, Min, QScale};
use tract_onnx::tract_core::ops::quant::Scale;
use tract_onnx::tract_core::optim::{OptimizerSession, TypedPass};

/// Runs `$body` with `$b` at the start of every whole block of [`BLOCK`] values of a row
/// of `$len`, two per pass of the loop, then, when `$overlap` and the row ends in a part
/// block, with `$b = $len - BLOCK`: a block that overlaps the one before it and rewrites
/// some of its values with the same bytes. Evaluates to how many values from the row's
/// start the blocks cover. A macro rather than a function taking a closure: a closure
/// does not inline into the x86 forms' `target_feature` functions. With `from`, the blocks
/// start there (values before it are done).
macro_rules! for_each_block {
    ($len:expr, $overlap:expr, |$b:ident| $body:block) => {
        for_each_block!($len, $overlap, from 0, |$b| $body)
    };
    ($len:expr, $overlap:expr, from $from:expr, |$b:ident| $body:block) => {{
        let len: usize = $len;
        let whole = len / BLOCK * BLOCK;
        let mut start: usize = $from;
        while start + 2 * BLOCK <= whole {
            let $b = start;
            $body
            let $b = start + BLOCK;
            $body
            start += 2 * BLOCK;
        }
        if start < whole {
            let $b = start;
            $body
        }
        if $overlap && whole < len && len >= BLOCK {
            let $b = len - BLOCK;
            $body
            len
        } else {
            whole
        }
    }};
}
#[cfg_attr(not(target_arch = "aarch64"), allow(unused_imports))]
pub(crate) use for_each_block;

/// `Scale -> Add* -> (Min | Max)* -> Cast (u8 | i8) [-> OffsetU8asI8]` as one node.
///
/// The integer steps are folded when the chain is matched: the Adds (wrapping, as tract's
/// i32 Add does in release builds) into one `add`, and any sequence of scalar Min and Max
/// into one clamp, since `min(clamp(v, lo, hi), c) = clamp(v, min(lo, c), min(hi, c))` and
/// likewise for `max`. The folded chain is a few fixed steps per value, which is what the
/// NEON and SSE2 blocks below do four lanes at a time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Requantize {
    /// The multipliers, one per channel along `axis` (or one for all).
    scale: Arc<Tensor>,
    /// The axis of the input the multipliers run along; `None` for a single multiplier.
    axis: Option<usize>,
    /// Per channel: the multipliers repeated over as many whole copies as fill 256 values
    /// (see [`repeated_cycle`]), the run of channels-last positions
    /// ([`Requantize::run_channels_last`]) made once per layer rather than per call.
    cycle: Arc<Tensor>,
    add: i32,
    lo: i32,
    hi: i32,
    /// U8 or I8: the Cast's type.
    cast_to: DatumType,
    /// The u8 result is shifted to i8 (`x - 128`), as OffsetU8asI8 does.
    offset_to_i8: bool,
    /// Every multiplier is at most 0.5 in magnitude and `add` at most [`SHORT_ADD`]: no
    /// rounded product plus `add` can wrap, so the NEON blocks may add in 16-bit lanes
    /// (`Requantize::run_values`). What onnxruntime writes always is: its multipliers are
    /// input scale x weight scale / output scale, far below 0.5, and `add` a zero point.
    short: bool,
    /// A table the output bytes go through ([`Requantize::with_lookup`]).
    lookup: Option<Lookup>,
}

/// A 256-entry byte table applied to a requantization's output bytes (a QOperator-standard
/// ReLU6 between two convolutions: `DQ -> Clip -> Q`, a table in qtable.rs), as part of the
/// requantization.
///
/// A table after a clamp is constant below some value `base` of the clamped range and above
/// some `top`: the NEON short forms look the value less `base` up in the window
/// `base..=top`, one to four TBX a block (a quarter of 64 entries each) over a register of
/// the last entry (a ReLU6's window is its `6 / scale` values: 9 to 96 on
/// EfficientNet-Lite0's and MobileNetV2's; a Relu between two scales, as onnxruntime's
/// QOperator format with standard operators leaves it, the values from the zero point to
/// where the output saturates: 134 on the qformats network's). Every other form applies
/// the whole table to the bytes it wrote.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Lookup {
    /// The table, indexed by the requantization's own output byte.
    table: Arc<[u8; 256]>,
    /// The output type: U8 or I8, the table's bytes being its bits.
    to: DatumType,
    /// The clamped value of the window's first entry.
    base: i32,
    /// The window: entry i is the output byte of value `base + i`; 256 bytes, the entries
    /// past the window's end repeating its last.
    window: Arc<[u8; 256]>,
    /// The window's length: 64 entries per TBX a block looks them up with.
    len: usize,
}

/// The op of `node` (a banded or depthwise convolution, or a requantization of its own)
/// with its requantization replaced by `f`'s, when `f` gives one: a table folded into it
/// (qtable.rs), its output given in i8 (load.rs, for `fold_shifts`).
pub(crate) fn with_requantization(
    node: &TypedNode,
    f: impl FnOnce(&Requantize) -> Option<Requantize>,
) -> Option<Box<dyn TypedOp>> {
    if let Some(op) = node.op_as::<crate::banded::BandedConv>() {
        return Some(Box::new(op.with_requantize(f)?));
    }
    if let Some(op) = node.op_as::<crate::depthwise::DepthwiseInt8>() {
        return Some(Box::new(op.with_requantize(f)?));
    }
    Some(Box::new(f(node.op_as::<Requantize>()?)?))
}

/// The largest `add` in magnitude for [`Requantize::short`].
const SHORT_ADD: i32 = 16_000;

impl Requantize {
    /// This requantization with its output bytes looked up in `table` (indexed by the
    /// bytes' bits) and given as `to` (U8 or I8). A table that only clamps the values
    /// further (a Relu at the zero point, a ReLU6), and perhaps shifts u8 to i8, becomes
    /// the requantization's own bounds and shift, with nothing to look up. Otherwise `None`
    /// when the chain is not a short one (the NEON forms that look up).
    pub(crate) fn with_lookup(&self, table: &[u8; 256], to: DatumType) -> Option<Requantize> {
        if self.lookup.is_some() {
            return None;
        }
        let mask = self.mask();
        let byte = |v: i32| table[usize::from((v as u8) ^ mask)];
        let (lo, hi) = (self.lo, self.hi);
        let base = (lo..=hi).take_while(|&v| byte(v) == byte(lo)).last()?;
        let top = (lo..=hi)
            .rev()
            .take_while(|&v| byte(v) == byte(hi))
            .last()?
            .max(base);
        if let Some(clamped) = self.clamped(byte, to, [base, top]) {
            return Some(clamped);
        }
        if !self.short {
            return None;
        }
        // At most 256 values: `[lo, hi]` lies in one byte type's range.
        let len = (top - base + 1) as usize;
        let window = std::array::from_fn(|i| byte(base + (i as i32).min(top - base)));
        Some(Requantize {
            lookup: Some(Lookup {
                table: Arc::new(*table),
                to,
                base,
                window: Arc::new(window),
                len,
            }),
            ..self.clone()
        })
    }

    /// This requantization giving i8 where it gives u8 (rewrite.rs `fold_shifts`): the
    /// u8 less 128, as tract's shift gives it; a table's bytes with their top bit flipped.
    pub(crate) fn shifted(&self) -> Option<Requantize> {
        let flip = |bytes: &[u8]| -> Vec<u8> { bytes.iter().map(|b| b ^ 0x80).collect() };
        let lookup = match &self.lookup {
            Some(l) if l.to == DatumType::U8 => Some(Lookup {
                table: Arc::new(flip(&l.table[..]).try_into().ok()?),
                to: DatumType::I8,
                window: Arc::new(flip(&l.window[..]).try_into().ok()?),
                ..l.clone()
            }),
            Some(_) => return None,
            None if self.cast_to == DatumType::U8 && !self.offset_to_i8 => None,
            None => return None,
        };
        let offset_to_i8 = self.offset_to_i8 || lookup.is_none();
        Some(Requantize {
            lookup,
            offset_to_i8,
            ..self.clone()
        })
    }

    /// This requantization clamped to `[lo, hi]` (inside its own bounds) and giving `to`,
    /// when that is what a table does to its output bytes: `looked_up(v)`, the table's
    /// entry for value `v`'s byte, is the byte of `v` clamped (shifted to i8 when `to` is
    /// I8 and the chain's Cast is to u8).
    fn clamped(
        &self,
        looked_up: impl Fn(i32) -> u8,
        to: DatumType,
        [lo, hi]: [i32; 2],
    ) -> Option<Requantize> {
        let offset_to_i8 = match (self.cast_to, to) {
            (DatumType::U8, DatumType::U8) if !self.offset_to_i8 => false,
            (DatumType::U8, DatumType::I8) => true,
            (DatumType::I8, DatumType::I8) => false,
            _ => return None,
        };
        let new = Requantize {
            lo,
            hi,
            offset_to_i8,
            ..self.clone()
        };
        let mask = new.mask();
        (self.lo..=self.hi)
            .all(|v| looked_up(v) == (v.clamp(lo, hi) as u8) ^ mask)
            .then_some(new)
    }

    /// The output byte of one accumulator, with multiplier `s`.
    #[inline(always)]
    fn byte(&self, x: i32, s: f32) -> u8 {
        let b = (self.value(x, s) as u8) ^ self.mask();
        match &self.lookup {
            Some(l) => l.table[usize::from(b)],
            None => b,
        }
    }

    fn output_type(&self) -> DatumType {
        if let Some(l) = &self.lookup {
            l.to
        } else if self.offset_to_i8 {
            DatumType::I8
        } else {
            self.cast_to
        }
    }

    /// The chain's value for one accumulator, with multiplier `s`.
    #[inline(always)]
    fn value(&self, x: i32, s: f32) -> i32 {
        let v = ((x as f32 * s).round_ties_even() as i32).wrapping_add(self.add);
        v.min(self.hi).max(self.lo)
    }

    /// The output byte of a clamped value: its low byte (the i8 or u8 it stands for, exact
    /// since the clamp keeps it in the Cast's range), with the top bit flipped when the u8 is
    /// shifted to i8 (`u8 - 128` as i8 is `u8 ^ 0x80`).
    fn mask(&self) -> u8 {
        if self.offset_to_i8 {
            0x80
        } else {
            0
        }
    }

    /// The fact of this chain's output for an output of `shape`, for the ops that end in
    /// it (banded.rs, depthwise.rs).
    pub(crate) fn output_fact(&self, shape: &[usize]) -> TypedFact {
        self.output_type().fact(shape)
    }

    /// A new output of `shape` whose bytes `fill` writes, for those ops' `eval`.
    ///
    /// # Safety
    /// `fill` must write every byte.
    pub(crate) unsafe fn output(
        &self,
        shape: &[usize],
        op: &str,
        fill: impl FnOnce(&mut [u8]) -> TractResult<()>,
    ) -> TractResult<TVec<TValue>> {
        // SAFETY: the caller's `fill` writes every byte.
        let out = unsafe { byte_tensor(self.output_type(), shape, op, fill)? };
        Ok(tvec!(out.into_tvalue()))
    }

    /// Whether the multipliers run along the second-to-last axis of a `[1, rows, cols]` or
    /// `[rows, cols]` input (or are one for all), so that each row has one multiplier: what
    /// [`Requantize::run_rows`] and [`Requantize::run_row`] need.
    pub(crate) fn is_per_row(&self, rank: usize) -> bool {
        (rank == 2 || rank == 3) && (self.axis.is_none() || self.axis == Some(rank - 2))
    }

    /// Whether, for an input of `shape` whose leading non-unit axis holds `channels`, the
    /// multipliers run along that axis (or are one for all): each channel is then one
    /// contiguous row of the input, what [`Requantize::run_rows`] and
    /// [`Requantize::run_row`] need.
    pub(crate) fn is_per_channel(&self, shape: &[usize], channels: usize) -> bool {
        let Some(axis) = shape.iter().position(|&d| d != 1) else {
            return false;
        };
        shape[axis] == channels && (self.axis.is_none() || self.axis == Some(axis))
    }

    /// Row `row` of such an input (`x`, one row of accumulators) into `out`.
    pub(crate) fn run_row(&self, x: &[i32], row: usize, out: &mut [u8]) -> TractResult<()> {
        let scales = self.scale.try_as_plain_ram()?;
        let scales = scales.as_slice::<f32>()?;
        let index = if self.axis.is_some() { row } else { 0 };
        let Some(&s) = scales.get(index) else {
            bail!(
                "Requantize: no multiplier for row {row} of {}",
                scales.len()
            );
        };
        ensure!(
            x.len() == out.len(),
            "Requantize: {} values into {} bytes",
            x.len(),
            out.len()
        );
        self.run_values(x, Scales::One(s), out);
        Ok(())
    }

    /// Channels-last accumulators (`x`: positions of `pitch` values, channel c at c) into
    /// the same places of `out`: the first `channels` values of each position, channel c
    /// with multiplier c (or the single one), as [`Requantize::run_row`] does per channel.
    pub(crate) fn run_channels_last(
        &self,
        x: &[i32],
        pitch: usize,
        channels: usize,
        out: &mut [u8],
    ) -> TractResult<()> {
        let scales = self.scale.try_as_plain_ram()?;
        let scales = scales.as_slice::<f32>()?;
        ensure!(
            scales.len() == if self.axis.is_some() { channels } else { 1 }
                && channels <= pitch
                && x.len() == out.len()
                && x.len().is_multiple_of(pitch.max(1)),
            "Requantize: {} multipliers for {} values of {channels} channels in rows of {pitch} into {} bytes",
            scales.len(),
            x.len(),
            out.len()
        );
        if channels == pitch {
            // No padding channels: the positions are one run, the multipliers a cycle
            // (whole copies of the channels' multipliers).
            let scale = match self.axis {
                Some(_) => {
                    let cycle = self.cycle.try_as_plain_ram()?;
                    Scales::Cycle(cycle.as_slice::<f32>()?)
                }
                None => Scales::One(scales[0]),
            };
            self.run_values(x, scale, out);
            return Ok(());
        }
        for (xs, ys) in x.chunks_exact(pitch).zip(out.chunks_exact_mut(pitch)) {
            let (xs, ys) = (&xs[..channels], &mut ys[..channels]);
            match self.axis {
                Some(_) => self.run_values(xs, Scales::Each(scales), ys),
                None => self.run_values(xs, Scales::One(scales[0]), ys),
            }
        }
        Ok(())
    }

    /// A block of `rows` accumulator rows of `cols` values (`x`, row-major, row `r` having
    /// multiplier `r`, or the single one) into the same rows of `out`, whose rows are
    /// `stride` bytes apart.
    pub(crate) fn run_rows(
        &self,
        x: &[i32],
        cols: usize,
        out: &mut [u8],
        stride: usize,
    ) -> TractResult<()> {
        let scales = self.scale.try_as_plain_ram()?;
        let scales = scales.as_slice::<f32>()?;
        let rows = x.len() / cols.max(1);
        ensure!(
            scales.len() == if self.axis.is_some() { rows } else { 1 },
            "Requantize: {} multipliers for {rows} rows",
            scales.len()
        );
        #[cfg(target_arch = "aarch64")]
        if cols >= BLOCK {
            // The chain's constants once for the block, not per row.
            let chain = neon::Chain::of(self);
            for (r, xs) in x.chunks_exact(cols).enumerate() {
                let s = scales[if self.axis.is_some() { r } else { 0 }];
                let ys = &mut out[r * stride..r * stride + cols];
                // SAFETY: NEON is part of aarch64; both slices hold `cols` values, and rows
                // of a block or more are covered whole (the last block overlapping).
                unsafe {
                    use std::arch::aarch64::vdupq_n_f32;
                    let s4 = vdupq_n_f32(s);
                    let pairs = neon::PairScales::One(s);
                    let done = chain.row(xs, |_| [s4; 4], Some(pairs), ys, true);
                    debug_assert_eq!(done, cols);
                }
            }
            return Ok(());
        }
        for (r, xs) in x.chunks_exact(cols).enumerate() {
            let s = scales[if self.axis.is_some() { r } else { 0 }];
            self.run_values(xs, Scales::One(s), &mut out[r * stride..r * stride + cols]);
        }
        Ok(())
    }

    fn run(&self, x: &[i32], shape: &[usize], out: &mut [u8]) -> TractResult<()> {
        let scales = self.scale.try_as_plain_ram()?;
        let scales = scales.as_slice::<f32>()?;
        let (outer, channels, inner) = match self.axis {
            Some(axis) => (
                shape[..axis].iter().product::<usize>(),
                shape[axis],
                shape[axis + 1..].iter().product::<usize>(),
            ),
            None => (1, 1, x.len()),
        };
        ensure!(
            scales.len() == channels && outer * channels * inner == x.len(),
            "Requantize: {} multipliers for an input of shape {shape:?}",
            scales.len()
        );
        if inner >= BLOCK {
            for (c, (xs, ys)) in x.chunks(inner).zip(out.chunks_mut(inner)).enumerate() {
                let s = scales[c % channels];
                self.run_values(xs, Scales::One(s), ys);
            }
        } else if channels * inner > 0 {
            // Channels last (or nearly): one multiplier per element of each outer item,
            // so the SIMD blocks still hold BLOCK values rather than `inner`.
            let expanded: Vec<f32> = scales
                .iter()
                .flat_map(|s| std::iter::repeat_n(*s, inner))
                .collect();
            let item = channels * inner;
            for (xs, ys) in x.chunks(item).zip(out.chunks_mut(item)) {
                self.run_values(xs, Scales::Each(&expanded), ys);
            }
        }
        Ok(())
    }

    /// Values whose multipliers are `scale`'s, as output bytes.
    ///
    /// On aarch64, NEON does the chain's steps 16 values at a time (`neon::run`). SCVTF
    /// and FMUL are the same IEEE operations, FCVTNS rounds half to even and saturates like
    /// `as i32` (NaN to 0 included). Then either the exact form (an ADD that wraps like
    /// `wrapping_add`, saturating narrowing, a clamp of the bytes) or, for a [`short`]
    /// chain, the short one (narrowing to 16 bits, a saturating add there, the bytes
    /// clamped only when the bounds are inside the type's).
    /// On x86_64, SSE2 does it in the clamped form of `sse2::requantize`. What neither
    /// covers (other targets, rows shorter than a block, the x86 rows' last values) runs
    /// the chain per element.
    ///
    /// [`short`]: Requantize::short
    fn run_values(&self, xs: &[i32], scale: Scales, ys: &mut [u8]) {
        // The SIMD blocks load the multipliers of their values: `Each` has them all, and
        // a block of a `Cycle` does not wrap (whole blocks per cycle).
        let blocks = match scale {
            Scales::One(_) => true,
            Scales::Each(each) => each.len() >= xs.len(),
            Scales::Cycle(cycle) => !cycle.is_empty() && cycle.len() % BLOCK == 0,
        };
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is part of aarch64; `neon::run` stays within both slices, and the
        // multipliers' loads within `each` or `cycle` (`blocks`). A row's last block may
        // overlap the one before it (a row of `One` or `Each`), never a cycle's.
        let done = unsafe {
            use std::arch::aarch64::*;
            match scale {
                _ if !blocks => 0,
                Scales::One(s) => {
                    let s4 = vdupq_n_f32(s);
                    let pairs = neon::PairScales::One(s);
                    neon::run(self, xs, |_| [s4; 4], Some(pairs), ys, true)
                }
                Scales::Each(each) => {
                    let pairs = neon::PairScales::Each(each.as_ptr());
                    let at = |b: usize| neon::block_scales(each, b);
                    neon::run(self, xs, at, Some(pairs), ys, true)
                }
                Scales::Cycle(scales) => {
                    // Whole cycles at a time: each run is one of `Each` (whole blocks, since
                    // the cycle is), with no division for the channel. The cycle holds as
                    // many copies of the channels' multipliers as fill about 256 values
                    // (`repeated_cycle`), so that a row of short cycles (a depthwise
                    // layer's 16 or 48 channels per position) pays for a run per group of
                    // positions rather than per position.
                    // The chain's constants once for all the runs.
                    let chain = neon::Chain::of(self);
                    let mut done = 0;
                    for (xs, ys) in xs.chunks(scales.len()).zip(ys.chunks_mut(scales.len())) {
                        let pairs = neon::PairScales::Each(scales.as_ptr());
                        let at = |b: usize| neon::block_scales(scales, b);
                        done += chain.row(xs, at, Some(pairs), ys, true);
                        if xs.len() < scales.len() {
                            break;
                        }
                    }
                    done
                }
            }
        };
        #[cfg(target_arch = "x86_64")]
        let done = {
            let overlap = !matches!(scale, Scales::Cycle(_));
            let mask = self.mask();
            let slow = |i: usize| (self.value(xs[i], scale.at(i)) as u8) ^ mask;
            let done = if !blocks {
                0
            } else if avx512::available() {
                // SAFETY: the CPU has AVX-512 F; `avx512::run` stays within both slices.
                unsafe { avx512::run(self, xs, scale, ys, overlap, &slow) }
            } else {
                // SAFETY: SSE2 is part of x86_64; `sse2::run` stays within both slices.
                unsafe { sse2::run(self, xs, scale, ys, overlap, &slow) }
            };
            // These forms write the requantization's bytes; the table after them.
            if let Some(l) = &self.lookup {
                crate::kernels::lut::apply(&l.table, &mut ys[..done]);
            }
            done
        };
        #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
        let done = 0;
        for (i, (y, &x)) in ys[done..].iter_mut().zip(&xs[done..]).enumerate() {
            *y = self.byte(x, scale.at(done + i));
        }
    }

    /// `[lo - add, hi - add]` as f32 when both are at most 2^22 in magnitude and so is
    /// `add`: the precondition of the SSE2 form.
    #[cfg(target_arch = "x86_64")]
    fn float_bounds(&self) -> Option<(f32, f32)> {
        const EXACT: i64 = 1 << 22;
        let lo = self.lo as i64 - self.add as i64;
        let hi = self.hi as i64 - self.add as i64;
        let fits = |v: i64| v.abs() <= EXACT;
        (fits(lo) && fits(hi) && fits(self.add as i64)).then_some((lo as f32, hi as f32))
    }
}

/// A requantization's multipliers along `axis` repeated over as many whole copies as fill
/// 256 values (once when there are more than 128), as channels-last runs take them
/// ([`Scales::Cycle`]); the single multiplier itself when there is no axis.
fn repeated_cycle(scale: &Arc<Tensor>, axis: Option<usize>) -> TractResult<Arc<Tensor>> {
    if axis.is_none() {
        return Ok(scale.clone());
    }
    let scales = scale.try_as_plain_ram()?;
    let scales = scales.as_slice::<f32>()?;
    let copies = (256 / scales.len().max(1)).max(1);
    Ok(Arc::new(tensor1(&scales.repeat(copies))))
}

/// The multipliers of a run of values: one for all of them, one each, or a cycle (value i
/// has `cycle[i % cycle.len()]`: channels-last positions; a cycle may hold several copies
/// of the channels' multipliers).
#[derive(Debug, Clone, Copy)]
enum Scales<'a> {
    One(f32),
    Each(&'a [f32]),
    Cycle(&'a [f32]),
}

impl Scales<'_> {
    #[inline(always)]
    fn at(self, i: usize) -> f32 {
        match self {
            Scales::One(s) => s,
            Scales::Each(each) => each[i],
            Scales::Cycle(cycle) => cycle[i % cycle.len()],
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::{Requantize, BLOCK};
    use crate::quantize::neon::ByteClamp;
    use std::arch::aarch64::*;
    use tract_onnx::prelude::DatumType;

    /// [`super::Requantize::run_values`]'s blocks (`for_each_block!`); returns how many values
    /// from the start it wrote.
    ///
    /// # Safety
    /// As [`Chain::row`].
    pub(super) unsafe fn run(
        op: &Requantize,
        xs: &[i32],
        scale: impl Fn(usize) -> [float32x4_t; 4],
        pair_scales: Option<PairScales>,
        ys: &mut [u8],
        overlap: bool,
    ) -> usize {
        // SAFETY: the caller's contract.
        unsafe { Chain::of(op).row(xs, scale, pair_scales, ys, overlap) }
    }

    /// A chain's constants in registers, made once for any number of rows (a layer's
    /// band of channel rows: MobileNetV2's layers have 14 thousand per inference, and each
    /// paid for these again).
    pub(super) struct Chain<'a> {
        /// The short form's type, clamp and lookup quarters (`Requantize::short`,
        /// `lookup`), or none: the exact one.
        short: Option<(bool, bool, usize)>,
        clamp: ByteClamp,
        add16: int16x8_t,
        add32: int32x4_t,
        mask: uint8x16_t,
        /// The lookup window (`super::Lookup`), and its last entry in every lane: what a
        /// value past the window gives (zeros when there is none).
        lookup: Window<'a>,
    }

    /// A lookup window's 256 bytes, whose quarters the loops load as they need them (kept
    /// in the chain as registers, the four quarters cost every row a copy of them), and its
    /// last entry in every lane.
    type Window<'a> = (&'a [u8; 256], uint8x16_t);

    /// No lookup window: zeros, which no form without a lookup reads.
    static NO_WINDOW: [u8; 256] = [0; 256];

    #[inline(always)]
    fn no_window() -> Window<'static> {
        // SAFETY: a register operation.
        (&NO_WINDOW, unsafe { vdupq_n_u8(0) })
    }

    /// Quarter `q` (64 entries) of a window, in four registers.
    #[inline(always)]
    fn quarter(window: &[u8; 256], q: usize) -> uint8x16x4_t {
        assert!(q < 4);
        // SAFETY: the window holds 256 bytes, quarter `q` 64 of them.
        unsafe { vld1q_u8_x4(window.as_ptr().add(64 * q)) }
    }

    impl<'a> Chain<'a> {
        pub(super) fn of(op: &'a Requantize) -> Chain<'a> {
            // SAFETY (the register operations): NEON is part of aarch64.
            if !op.short {
                return Chain {
                    short: None,
                    clamp: ByteClamp::new([op.lo, op.hi], op.cast_to == DatumType::U8),
                    add16: unsafe { vdupq_n_s16(0) },
                    add32: unsafe { vdupq_n_s32(op.add) },
                    mask: unsafe { vdupq_n_u8(op.mask()) },
                    lookup: no_window(),
                };
            }
            if let Some(l) = &op.lookup {
                // The value less `base`, narrowed to u8 with saturation: the index of its
                // entry, a value below the window giving 0 (the first entry) and one past it
                // an index TBX leaves the last entry at (the window's entries past its
                // length are the last one too). `Requantize::with_lookup` takes `base` and
                // the window's end inside [lo, hi]; the add still fits i16 (`SHORT_ADD` +
                // 255), and a saturated product plus it still lies past the same end of the
                // window.
                return Chain {
                    short: Some((true, false, l.len.div_ceil(64))),
                    clamp: ByteClamp::new([0, 255], true),
                    add16: unsafe { vdupq_n_s16((op.add - l.base) as i16) },
                    add32: unsafe { vdupq_n_s32(0) },
                    mask: unsafe { vdupq_n_u8(0) },
                    lookup: (&l.window, unsafe { vdupq_n_u8(l.window[l.len - 1]) }),
                };
            }
            // A u8 shifted to i8 is the i8 of the chain whose add and bounds are 128 less:
            // (clamp(v, lo, hi) as u8) ^ 0x80 = clamp(v - 128, lo - 128, hi - 128) as i8,
            // with no wrap for a short chain.
            let unsigned = op.cast_to == DatumType::U8 && !op.offset_to_i8;
            let shift = if op.offset_to_i8 { 128 } else { 0 };
            let (add, lo, hi) = (op.add - shift, op.lo - shift, op.hi - shift);
            let clamps = if unsigned {
                (lo, hi) != (0, 255)
            } else {
                (lo, hi) != (-128, 127)
            };
            Chain {
                short: Some((unsigned, clamps, 0)),
                clamp: ByteClamp::new([lo, hi], unsigned),
                // `add` fits i16 (`SHORT_ADD` + 128).
                add16: unsafe { vdupq_n_s16(add as i16) },
                add32: unsafe { vdupq_n_s32(0) },
                mask: unsafe { vdupq_n_u8(0) },
                lookup: no_window(),
            }
        }

        /// One row's blocks; returns how many values from the start it wrote.
        ///
        /// `scale(b)` gives the multipliers of the block of values `b..b + 16`;
        /// `pair_scales`, the same multipliers for the short form's assembly loop, where
        /// they are one or the values' own.
        ///
        /// # Safety
        /// `ys` is at least as long as `xs`; `scale(b)` may be called for the blocks
        /// `for_each_block!` gives; a `PairScales::Each` pointer holds a multiplier per value
        /// of `xs`.
        #[inline(always)]
        pub(super) unsafe fn row(
            &self,
            xs: &[i32],
            scale: impl Fn(usize) -> [float32x4_t; 4],
            pair_scales: Option<PairScales>,
            ys: &mut [u8],
            overlap: bool,
        ) -> usize {
            assert!(ys.len() >= xs.len());
            let (x, y) = (xs.as_ptr(), ys.as_mut_ptr());
            let len = xs.len();
            let (clamp, add) = (&self.clamp, self.add16);
            // SAFETY (every block below): `for_each_block!` gives starts b with
            // b + BLOCK <= len.
            let at = |b: usize| unsafe { (x.add(b), y.add(b), scale(b)) };
            let Some(form) = self.short else {
                return for_each_block!(len, overlap, |b| {
                    let (x, y, s) = at(b);
                    unsafe { exact(x, s, self.add32, clamp, self.mask, y) }
                });
            };
            // Multipliers the assembly loops can read: pairs of blocks there, then the rest.
            let window = self.lookup;
            // Windows past two quarters take every register the loops have: they go with
            // one multiplier.
            let each = matches!(pair_scales, Some(PairScales::Each(_)));
            let pairs = if pair_scales.is_some() && !(each && form.2 > 2) {
                len / (2 * BLOCK)
            } else {
                0
            };
            let from = 2 * BLOCK * pairs;
            macro_rules! short_blocks {
                ($unsigned:literal, $clamp:literal, $lookup:literal) => {{
                    if let (Some(scales), true) = (pair_scales, pairs > 0) {
                        // SAFETY: `pairs` pairs of blocks lie within both slices, and within
                        // the multipliers of `PairScales::Each` (the caller's contract).
                        unsafe {
                            short_pairs::<$unsigned, $clamp, $lookup>(
                                x, y, pairs, scales, add, clamp, &window,
                            )
                        };
                    }
                    for_each_block!(len, overlap, from from, |b| {
                        let (x, y, s) = at(b);
                        unsafe { short::<$unsigned, $clamp, $lookup>(x, s, add, clamp, &window, y) }
                    })
                }};
            }
            match form {
                (true, false, 0) => short_blocks!(true, false, 0),
                (true, false, 1) => short_blocks!(true, false, 1),
                (true, false, 2) => short_blocks!(true, false, 2),
                (true, false, 3) => short_blocks!(true, false, 3),
                (true, false, _) => short_blocks!(true, false, 4),
                (true, true, _) => short_blocks!(true, true, 0),
                (false, false, _) => short_blocks!(false, false, 0),
                (false, true, _) => short_blocks!(false, true, 0),
            }
        }
    }

    /// The chain's exact steps for the 16 values at `x`: i32 lanes that wrap as the
    /// chain's add does, narrowed with saturation, clamped, the top bit flipped by `mask`.
    #[inline(always)]
    unsafe fn exact(
        x: *const i32,
        s: [float32x4_t; 4],
        add: int32x4_t,
        clamp: &ByteClamp,
        mask: uint8x16_t,
        y: *mut u8,
    ) {
        // SAFETY: the caller's: 16 values at `x`, 16 bytes at `y`.
        unsafe {
            let quarter = |j: usize| {
                let f = vmulq_f32(vcvtq_f32_s32(vld1q_s32(x.add(4 * j))), s[j]);
                vaddq_s32(vcvtnq_s32_f32(f), add)
            };
            let bytes = clamp.bytes([quarter(0), quarter(1), quarter(2), quarter(3)]);
            vst1q_u8(y, veorq_u8(bytes, mask));
        }
    }

    /// A short chain's steps for the 16 values at `x`: the rounded products narrowed to
    /// i16 with saturation, `add` added with saturation, narrowed to u8 (`UNSIGNED`) or
    /// i8 with saturation, clamped to `clamp`'s bounds when `CLAMP`.
    ///
    /// The same bytes as the chain: a rounded product r is at most 2^30 in magnitude
    /// (multipliers at most 0.5), so r + add does not wrap. If r fits i16, the saturated
    /// sum is r + add or lies past the same end of [lo, hi]; if not, r saturates to ±32767
    /// or -32768 and r + add lies past that end of [lo, hi] either way (|add| ≤ 16128).
    /// Narrowing to the type then clamping is clamping, for bounds inside the type.
    /// `LOOKUP` quarters of a lookup window (`Chain::lookup`) then map the bytes: TBX over
    /// the last entry, so that an index past the window gives that, each quarter with the
    /// indexes 64 lower than the one before.
    #[inline(always)]
    unsafe fn short<const UNSIGNED: bool, const CLAMP: bool, const LOOKUP: usize>(
        x: *const i32,
        s: [float32x4_t; 4],
        add: int16x8_t,
        clamp: &ByteClamp,
        (window, top): &Window,
        y: *mut u8,
    ) {
        // SAFETY: the caller's: 16 values at `x`, 16 bytes at `y`.
        unsafe {
            let r =
                |j: usize| vcvtnq_s32_f32(vmulq_f32(vcvtq_f32_s32(vld1q_s32(x.add(4 * j))), s[j]));
            let low = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(r(0)), r(1)), add);
            let high = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(r(2)), r(3)), add);
            let bytes = clamp.words::<UNSIGNED, CLAMP>(low, high);
            let bytes = if LOOKUP == 0 {
                bytes
            } else {
                let mut looked_up = vqtbx4q_u8(*top, quarter(window, 0), bytes);
                let mut index = bytes;
                for q in 1..LOOKUP {
                    index = vsubq_u8(index, vdupq_n_u8(64));
                    looked_up = vqtbx4q_u8(looked_up, quarter(window, q), index);
                }
                looked_up
            };
            vst1q_u8(y, bytes);
        }
    }

    /// Multipliers for [`short_pairs`]: one for all the values, or one per value from a
    /// pointer (the values' own, 32 per pair of blocks).
    #[derive(Clone, Copy)]
    pub(super) enum PairScales {
        One(f32),
        Each(*const f32),
    }

    /// [`short`] for `pairs` pairs of blocks at `x` and `y`, as one loop of assembly: LLVM
    /// split each four-register load into two LDP and kept a counter and two or three
    /// pointers where post-indexed loads and stores need one counter (one multiplier: 51
    /// instructions per pair without the clamp, 45 here; a multiplier per value in a
    /// channels-last row: about 70, with a division for the channel, against 47). The
    /// steps and their order are `short`'s, `clamp`'s bounds its.
    ///
    /// # Safety
    /// `x` holds `32 · pairs` values and `y` as many bytes, a `PairScales::Each` pointer as
    /// many multipliers; `pairs` ≥ 1. A window of more than two quarters comes with
    /// `PairScales::One` (`wide_lookup_pairs` has no form for it with `Each`).
    #[inline(always)]
    unsafe fn short_pairs<const UNSIGNED: bool, const CLAMP: bool, const LOOKUP: usize>(
        x: *const i32,
        y: *mut u8,
        pairs: usize,
        scales: PairScales,
        add: int16x8_t,
        clamp: &ByteClamp,
        (window, top): &Window,
    ) {
        let top = *top;
        // Windows past two quarters, and two with a multiplier per value, have a loop of
        // their own, which loads the quarters it needs.
        if LOOKUP > 2 || (LOOKUP == 2 && matches!(scales, PairScales::Each(_))) {
            // SAFETY: the caller's contract, with `PairScales::One` past two quarters
            // (`Chain::row`).
            return unsafe { wide_lookup_pairs::<LOOKUP>(x, y, pairs, scales, add, window, top) };
        }
        // The window's first two quarters as the loop's lookups read them (zeros for none).
        let (first, second) = if LOOKUP == 0 {
            // SAFETY: a register operation.
            let z = unsafe { vdupq_n_u8(0) };
            (uint8x16x4_t(z, z, z, z), uint8x16x4_t(z, z, z, z))
        } else if LOOKUP == 1 {
            (quarter(window, 0), quarter(window, 0))
        } else {
            (quarter(window, 0), quarter(window, 1))
        };
        // SAFETY: a register operation.
        let c64 = unsafe { vdupq_n_u8(64) };
        let (one, each) = match scales {
            PairScales::One(s) => (s, std::ptr::null()),
            PairScales::Each(each) => (0.0, each),
        };
        // SAFETY: a register operation.
        let s = unsafe { vdupq_n_f32(one) };
        let [lo, hi] = clamp.bound_bytes::<UNSIGNED>();
        macro_rules! pairs_loop {
            ($scale:expr, $narrow:literal, $narrow2:literal, $clamp:expr) => {
                pairs_loop!(
                    $scale,
                    $narrow,
                    $narrow2,
                    $clamp,
                    "// {top:v} {c64:v}",
                    "st1 {{v16.16b-v17.16b}}, [{y}], #32"
                )
            };
            (
                $scale:expr,
                $narrow:literal,
                $narrow2:literal,
                $clamp:expr,
                $lookup:expr,
                $store:expr
            ) => {
                // SAFETY: the caller's contract; the loop reads 128 bytes at `x` (and at
                // `each`) and writes 32 at `y` per pass.
                unsafe {
                    std::arch::asm!(
                        "2:",
                        "ld1 {{v0.4s-v3.4s}}, [{x}], #64",
                        "ld1 {{v4.4s-v7.4s}}, [{x}], #64",
                        "scvtf v0.4s, v0.4s", "scvtf v1.4s, v1.4s",
                        "scvtf v2.4s, v2.4s", "scvtf v3.4s, v3.4s",
                        "scvtf v4.4s, v4.4s", "scvtf v5.4s, v5.4s",
                        "scvtf v6.4s, v6.4s", "scvtf v7.4s, v7.4s",
                        $scale,
                        "fcvtns v0.4s, v0.4s", "fcvtns v1.4s, v1.4s",
                        "fcvtns v2.4s, v2.4s", "fcvtns v3.4s, v3.4s",
                        "fcvtns v4.4s, v4.4s", "fcvtns v5.4s, v5.4s",
                        "fcvtns v6.4s, v6.4s", "fcvtns v7.4s, v7.4s",
                        "sqxtn v0.4h, v0.4s", "sqxtn2 v0.8h, v1.4s",
                        "sqxtn v2.4h, v2.4s", "sqxtn2 v2.8h, v3.4s",
                        "sqxtn v4.4h, v4.4s", "sqxtn2 v4.8h, v5.4s",
                        "sqxtn v6.4h, v6.4s", "sqxtn2 v6.8h, v7.4s",
                        "sqadd v0.8h, v0.8h, {add:v}.8h", "sqadd v2.8h, v2.8h, {add:v}.8h",
                        "sqadd v4.8h, v4.8h, {add:v}.8h", "sqadd v6.8h, v6.8h, {add:v}.8h",
                        concat!($narrow, " v16.8b, v0.8h"),
                        concat!($narrow2, " v16.16b, v2.8h"),
                        concat!($narrow, " v17.8b, v4.8h"),
                        concat!($narrow2, " v17.16b, v6.8h"),
                        $clamp,
                        $lookup,
                        $store,
                        "subs {pairs}, {pairs}, #1",
                        "b.ne 2b",
                        x = inout(reg) x => _,
                        y = inout(reg) y => _,
                        each = inout(reg) each => _,
                        pairs = inout(reg) pairs => _,
                        s = in(vreg) s,
                        add = in(vreg) add,
                        lo = in(vreg) lo,
                        hi = in(vreg) hi,
                        top = in(vreg) top,
                        c64 = in(vreg) c64,
                        in("v28") first.0, in("v29") first.1,
                        in("v30") first.2, in("v31") first.3,
                        // The second quarter, or the values' own multipliers' registers.
                        inout("v24") second.0 => _, inout("v25") second.1 => _,
                        inout("v26") second.2 => _, inout("v27") second.3 => _,
                        out("v0") _, out("v1") _, out("v2") _, out("v3") _,
                        out("v4") _, out("v5") _, out("v6") _, out("v7") _,
                        out("v16") _, out("v17") _, out("v18") _, out("v19") _, out("v20") _, out("v21") _,
                        out("v22") _, out("v23") _,
                        options(nostack),
                    )
                }
            };
        }
        // The multiply step: by the one multiplier, or by the values' own (two
        // four-register loads of them).
        macro_rules! by_one {
            () => {
                concat!(
                    "// {each}\n",
                    "fmul v0.4s, v0.4s, {s:v}.4s\n",
                    "fmul v1.4s, v1.4s, {s:v}.4s\n",
                    "fmul v2.4s, v2.4s, {s:v}.4s\n",
                    "fmul v3.4s, v3.4s, {s:v}.4s\n",
                    "fmul v4.4s, v4.4s, {s:v}.4s\n",
                    "fmul v5.4s, v5.4s, {s:v}.4s\n",
                    "fmul v6.4s, v6.4s, {s:v}.4s\n",
                    "fmul v7.4s, v7.4s, {s:v}.4s"
                )
            };
        }
        macro_rules! by_each {
            () => {
                concat!(
                    "// {s:v}\n",
                    "ld1 {{v20.4s-v23.4s}}, [{each}], #64\n",
                    "ld1 {{v24.4s-v27.4s}}, [{each}], #64\n",
                    "fmul v0.4s, v0.4s, v20.4s\n",
                    "fmul v1.4s, v1.4s, v21.4s\n",
                    "fmul v2.4s, v2.4s, v22.4s\n",
                    "fmul v3.4s, v3.4s, v23.4s\n",
                    "fmul v4.4s, v4.4s, v24.4s\n",
                    "fmul v5.4s, v5.4s, v25.4s\n",
                    "fmul v6.4s, v6.4s, v26.4s\n",
                    "fmul v7.4s, v7.4s, v27.4s"
                )
            };
        }
        macro_rules! clamp {
            ($max:literal, $min:literal) => {
                concat!(
                    $max,
                    " v16.16b, v16.16b, {lo:v}.16b\n",
                    $max,
                    " v17.16b, v17.16b, {lo:v}.16b\n",
                    $min,
                    " v16.16b, v16.16b, {hi:v}.16b\n",
                    $min,
                    " v17.16b, v17.16b, {hi:v}.16b"
                )
            };
            () => {
                "// {lo:v} {hi:v}"
            };
        }
        // A lookup window's TBX over its last entry, into v18 and v19: its first quarter
        // in v28-v31, its second (when `two`) in v24-v27 with the indexes 64 lower.
        macro_rules! lookup_step {
            (two) => {
                concat!(
                    "mov v18.16b, {top:v}.16b\n",
                    "tbx v18.16b, {{v28.16b-v31.16b}}, v16.16b\n",
                    "sub v20.16b, v16.16b, {c64:v}.16b\n",
                    "tbx v18.16b, {{v24.16b-v27.16b}}, v20.16b\n",
                    "mov v19.16b, {top:v}.16b\n",
                    "tbx v19.16b, {{v28.16b-v31.16b}}, v17.16b\n",
                    "sub v21.16b, v17.16b, {c64:v}.16b\n",
                    "tbx v19.16b, {{v24.16b-v27.16b}}, v21.16b"
                )
            };
            () => {
                concat!(
                    "// {c64:v}\n",
                    "mov v18.16b, {top:v}.16b\n",
                    "tbx v18.16b, {{v28.16b-v31.16b}}, v16.16b\n",
                    "mov v19.16b, {top:v}.16b\n",
                    "tbx v19.16b, {{v28.16b-v31.16b}}, v17.16b"
                )
            };
        }
        // `$two`: whether the window's second quarter may take v24-v27 (not with the
        // values' own multipliers, which `Chain::row` then leaves to the blocks).
        macro_rules! forms {
            ($scale:ident, $two:literal) => {
                match (UNSIGNED, CLAMP) {
                    (true, false) if LOOKUP == 1 => pairs_loop!(
                        $scale!(),
                        "sqxtun",
                        "sqxtun2",
                        clamp!(),
                        lookup_step!(),
                        "st1 {{v18.16b-v19.16b}}, [{y}], #32"
                    ),
                    (true, false) if LOOKUP == 2 && $two => pairs_loop!(
                        $scale!(),
                        "sqxtun",
                        "sqxtun2",
                        clamp!(),
                        lookup_step!(two),
                        "st1 {{v18.16b-v19.16b}}, [{y}], #32"
                    ),
                    (true, true) => {
                        pairs_loop!($scale!(), "sqxtun", "sqxtun2", clamp!("umax", "umin"))
                    }
                    (true, false) => pairs_loop!($scale!(), "sqxtun", "sqxtun2", clamp!()),
                    (false, true) => {
                        pairs_loop!($scale!(), "sqxtn", "sqxtn2", clamp!("smax", "smin"))
                    }
                    (false, false) => pairs_loop!($scale!(), "sqxtn", "sqxtn2", clamp!()),
                }
            };
        }
        if each.is_null() {
            forms!(by_one, true)
        } else {
            forms!(by_each, false)
        }
    }

    /// [`short_pairs`] for a u8 chain with no clamp and a window of `QUARTERS` quarters:
    /// three or four with one multiplier (the window in v16-v31), two with the values' own
    /// multipliers (those in v16-v23, the window in v24-v31). The values take v0-v7, and
    /// the narrowed bytes, the indexes and the looked-up bytes reuse their registers.
    ///
    /// # Safety
    /// As [`short_pairs`]; `PairScales::Each` only with two quarters.
    #[inline(always)]
    unsafe fn wide_lookup_pairs<const QUARTERS: usize>(
        x: *const i32,
        y: *mut u8,
        pairs: usize,
        scales: PairScales,
        add: int16x8_t,
        window: &[u8; 256],
        top: uint8x16_t,
    ) {
        // SAFETY: a register operation.
        let c64 = unsafe { vdupq_n_u8(64) };
        let q = |i: usize| quarter(window, i);
        // The steps from the converted values to the looked-up bytes in v4 and v5, after
        // the multiply step `$scale`; `$first` and `$second` are the first two quarters'
        // registers, `$more` the TBX of the third and fourth.
        macro_rules! steps {
            ($scale:expr, $first:literal, $second:literal, $more:expr) => {
                concat!(
                    "2:\n",
                    "ld1 {{v0.4s-v3.4s}}, [{x}], #64\n",
                    "ld1 {{v4.4s-v7.4s}}, [{x}], #64\n",
                    "scvtf v0.4s, v0.4s\n",
                    "scvtf v1.4s, v1.4s\n",
                    "scvtf v2.4s, v2.4s\n",
                    "scvtf v3.4s, v3.4s\n",
                    "scvtf v4.4s, v4.4s\n",
                    "scvtf v5.4s, v5.4s\n",
                    "scvtf v6.4s, v6.4s\n",
                    "scvtf v7.4s, v7.4s\n",
                    $scale,
                    "\n",
                    "fcvtns v0.4s, v0.4s\n",
                    "fcvtns v1.4s, v1.4s\n",
                    "fcvtns v2.4s, v2.4s\n",
                    "fcvtns v3.4s, v3.4s\n",
                    "fcvtns v4.4s, v4.4s\n",
                    "fcvtns v5.4s, v5.4s\n",
                    "fcvtns v6.4s, v6.4s\n",
                    "fcvtns v7.4s, v7.4s\n",
                    "sqxtn v0.4h, v0.4s\n",
                    "sqxtn2 v0.8h, v1.4s\n",
                    "sqxtn v2.4h, v2.4s\n",
                    "sqxtn2 v2.8h, v3.4s\n",
                    "sqxtn v4.4h, v4.4s\n",
                    "sqxtn2 v4.8h, v5.4s\n",
                    "sqxtn v6.4h, v6.4s\n",
                    "sqxtn2 v6.8h, v7.4s\n",
                    "sqadd v0.8h, v0.8h, {add:v}.8h\n",
                    "sqadd v2.8h, v2.8h, {add:v}.8h\n",
                    "sqadd v4.8h, v4.8h, {add:v}.8h\n",
                    "sqadd v6.8h, v6.8h, {add:v}.8h\n",
                    // The bytes: the first block's in v1, the second's in v3.
                    "sqxtun v1.8b, v0.8h\n",
                    "sqxtun2 v1.16b, v2.8h\n",
                    "sqxtun v3.8b, v4.8h\n",
                    "sqxtun2 v3.16b, v6.8h\n",
                    // Looked up into v4 and v5, the indexes 64 lower per quarter in v6
                    // and v7.
                    "mov v4.16b, {top:v}.16b\n",
                    "tbx v4.16b, {{",
                    $first,
                    "}}, v1.16b\n",
                    "mov v5.16b, {top:v}.16b\n",
                    "tbx v5.16b, {{",
                    $first,
                    "}}, v3.16b\n",
                    "sub v6.16b, v1.16b, {c64:v}.16b\n",
                    "tbx v4.16b, {{",
                    $second,
                    "}}, v6.16b\n",
                    "sub v7.16b, v3.16b, {c64:v}.16b\n",
                    "tbx v5.16b, {{",
                    $second,
                    "}}, v7.16b\n",
                    $more,
                    "st1 {{v4.16b-v5.16b}}, [{y}], #32\n",
                    "subs {pairs}, {pairs}, #1\n",
                    "b.ne 2b"
                )
            };
        }
        macro_rules! quarter_step {
            ($regs:literal) => {
                concat!(
                    "sub v6.16b, v6.16b, {c64:v}.16b\n",
                    "tbx v4.16b, {{",
                    $regs,
                    "}}, v6.16b\n",
                    "sub v7.16b, v7.16b, {c64:v}.16b\n",
                    "tbx v5.16b, {{",
                    $regs,
                    "}}, v7.16b\n"
                )
            };
        }
        macro_rules! by_one_step {
            () => {
                concat!(
                    "fmul v0.4s, v0.4s, {s:v}.4s\nfmul v1.4s, v1.4s, {s:v}.4s\n",
                    "fmul v2.4s, v2.4s, {s:v}.4s\nfmul v3.4s, v3.4s, {s:v}.4s\n",
                    "fmul v4.4s, v4.4s, {s:v}.4s\nfmul v5.4s, v5.4s, {s:v}.4s\n",
                    "fmul v6.4s, v6.4s, {s:v}.4s\nfmul v7.4s, v7.4s, {s:v}.4s"
                )
            };
        }
        // One multiplier, three or four quarters in v16-v31.
        macro_rules! by_one {
            ($more:expr) => {{
                let PairScales::One(one) = scales else {
                    unreachable!("a window of {QUARTERS} quarters with a multiplier per value")
                };
                // SAFETY: the caller's contract; the loop reads 128 bytes at `x` and writes
                // 32 at `y` per pass.
                unsafe {
                    let (q0, q1, q2, q3) = (q(0), q(1), q(2), q(3));
                    std::arch::asm!(
                        steps!(by_one_step!(), "v16.16b-v19.16b", "v20.16b-v23.16b", $more),
                        x = inout(reg) x => _,
                        y = inout(reg) y => _,
                        pairs = inout(reg) pairs => _,
                        s = in(vreg) vdupq_n_f32(one),
                        add = in(vreg) add,
                        top = in(vreg) top,
                        c64 = in(vreg) c64,
                        in("v16") q0.0, in("v17") q0.1, in("v18") q0.2, in("v19") q0.3,
                        in("v20") q1.0, in("v21") q1.1, in("v22") q1.2, in("v23") q1.3,
                        in("v24") q2.0, in("v25") q2.1, in("v26") q2.2, in("v27") q2.3,
                        in("v28") q3.0, in("v29") q3.1, in("v30") q3.2, in("v31") q3.3,
                        out("v0") _, out("v1") _, out("v2") _, out("v3") _,
                        out("v4") _, out("v5") _, out("v6") _, out("v7") _,
                        options(nostack),
                    )
                }
            }};
        }
        match (QUARTERS, scales) {
            (2, PairScales::Each(each)) => {
                // SAFETY: as above; the loop also reads 128 bytes of multipliers at `each`
                // per pass.
                unsafe {
                    let (q0, q1) = (q(0), q(1));
                    std::arch::asm!(
                        steps!(
                            concat!(
                                "ld1 {{v16.4s-v19.4s}}, [{each}], #64\n",
                                "ld1 {{v20.4s-v23.4s}}, [{each}], #64\n",
                                "fmul v0.4s, v0.4s, v16.4s\nfmul v1.4s, v1.4s, v17.4s\n",
                                "fmul v2.4s, v2.4s, v18.4s\nfmul v3.4s, v3.4s, v19.4s\n",
                                "fmul v4.4s, v4.4s, v20.4s\nfmul v5.4s, v5.4s, v21.4s\n",
                                "fmul v6.4s, v6.4s, v22.4s\nfmul v7.4s, v7.4s, v23.4s"
                            ),
                            "v24.16b-v27.16b",
                            "v28.16b-v31.16b",
                            ""
                        ),
                        x = inout(reg) x => _,
                        y = inout(reg) y => _,
                        each = inout(reg) each => _,
                        pairs = inout(reg) pairs => _,
                        add = in(vreg) add,
                        top = in(vreg) top,
                        c64 = in(vreg) c64,
                        in("v24") q0.0, in("v25") q0.1, in("v26") q0.2, in("v27") q0.3,
                        in("v28") q1.0, in("v29") q1.1, in("v30") q1.2, in("v31") q1.3,
                        out("v0") _, out("v1") _, out("v2") _, out("v3") _,
                        out("v4") _, out("v5") _, out("v6") _, out("v7") _,
                        out("v16") _, out("v17") _, out("v18") _, out("v19") _,
                        out("v20") _, out("v21") _, out("v22") _, out("v23") _,
                        options(nostack),
                    )
                }
            }
            (3, _) => by_one!(quarter_step!("v24.16b-v27.16b")),
            (4, _) => by_one!(concat!(
                quarter_step!("v24.16b-v27.16b"),
                quarter_step!("v28.16b-v31.16b")
            )),
            _ => unreachable!("a wide window of {QUARTERS} quarters"),
        }
    }

    /// The 16 multipliers at `at`.
    ///
    /// # Safety
    /// `scales` holds `at + 16` values.
    #[inline(always)]
    pub(super) unsafe fn block_scales(scales: &[f32], at: usize) -> [float32x4_t; 4] {
        // SAFETY: the caller's contract.
        let v = unsafe { vld1q_f32_x4(scales.as_ptr().add(at)) };
        [v.0, v.1, v.2, v.3]
    }
}

/// Values per SIMD block (every form; kernels/qbinary.rs's blocks too).
pub(crate) const BLOCK: usize = 16;

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use super::{Requantize, Scales, BLOCK};
    use std::arch::x86_64::*;

    /// [`super::Requantize::run_values`]'s blocks (`for_each_block!`) in the clamped form: clamp the
    /// product to `op.float_bounds()`, convert with CVTPS2DQ, which rounds half to even in the
    /// default MXCSR mode (Rust code never changes it) and is exact at that size, add
    /// `add`, keep the low byte. Clamping before rounding equals rounding before clamping
    /// because the bounds are integers and rounding is monotone. Unless the chain is
    /// `short`, a block with a product of 2^30 or more in magnitude, or NaN, is written by
    /// `slow` (the per-element chain) instead: there the chain's add could wrap. Returns
    /// how many values it wrote.
    ///
    /// # Safety
    /// `ys` is at least as long as `xs`; `scale` holds the multipliers of every block.
    pub(super) unsafe fn run(
        op: &Requantize,
        xs: &[i32],
        scale: Scales,
        ys: &mut [u8],
        overlap: bool,
        slow: &impl Fn(usize) -> u8,
    ) -> usize {
        assert!(ys.len() >= xs.len());
        let Some((lo, hi)) = op.float_bounds() else {
            return 0;
        };
        // SAFETY: register operations and loads of the multipliers of values
        // `i..i + 4 < xs.len()` (the caller's contract).
        let scale = |i: usize| unsafe {
            match scale {
                Scales::One(s) => _mm_set1_ps(s),
                Scales::Each(each) => _mm_loadu_ps(each.as_ptr().add(i)),
                Scales::Cycle(cycle) => _mm_loadu_ps(cycle.as_ptr().add(i % cycle.len())),
            }
        };
        // SAFETY: register operations.
        let (vlo, vhi, vadd, limit, sign, low_byte, vmask) = unsafe {
            (
                _mm_set1_ps(lo),
                _mm_set1_ps(hi),
                _mm_set1_epi32(op.add),
                _mm_set1_ps((1u32 << 30) as f32),
                _mm_set1_ps(-0.0),
                _mm_set1_epi16(0xff),
                _mm_set1_epi8(op.mask() as i8),
            )
        };
        let (x, y) = (xs.as_ptr(), ys.as_mut_ptr());
        for_each_block!(xs.len(), overlap, |b| {
            // SAFETY: `for_each_block!` gives b + BLOCK <= xs.len() <= ys.len().
            unsafe {
                let mut v = [_mm_setzero_si128(); 4];
                let mut small = 0xf;
                for (j, v) in v.iter_mut().enumerate() {
                    let i = b + 4 * j;
                    let f = _mm_mul_ps(_mm_cvtepi32_ps(_mm_loadu_si128(x.add(i).cast())), scale(i));
                    if !op.short {
                        small &= _mm_movemask_ps(_mm_cmplt_ps(_mm_andnot_ps(sign, f), limit));
                    }
                    let clamped = _mm_min_ps(_mm_max_ps(f, vlo), vhi);
                    *v = _mm_add_epi32(_mm_cvtps_epi32(clamped), vadd);
                }
                if small == 0xf {
                    let words = [_mm_packs_epi32(v[0], v[1]), _mm_packs_epi32(v[2], v[3])];
                    let [w0, w1] = words.map(|w| _mm_and_si128(w, low_byte));
                    let bytes = _mm_xor_si128(_mm_packus_epi16(w0, w1), vmask);
                    _mm_storeu_si128(y.add(b).cast(), bytes);
                } else {
                    for i in b..b + BLOCK {
                        *y.add(i) = slow(i);
                    }
                }
            }
        })
    }
}

/// `sse2::run` 16 lanes at a time, for hosts with AVX-512 (the development host, x86
/// servers): the same clamped form, and VPMOVDB keeps each value's low byte as the SSE2
/// packing does. Requantization was a fifth of EfficientNet-Lite0's int8 inference on the
/// host with SSE2 (perf).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Requantize, Scales, BLOCK};
    use std::arch::x86_64::*;

    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx512f")
    }

    /// As `sse2::run`, a block of [`BLOCK`] values per step. One loop per kind of
    /// multipliers and per form (with or without the test for large products): the loop
    /// then has no branch but its own and keeps everything in registers. A short chain
    /// ([`Requantize::short`]) takes four blocks at a time in the packed form
    /// ([`packed`]) where the CPU has AVX-512 BW.
    ///
    /// # Safety
    /// The CPU has AVX-512 F; `ys` is at least as long as `xs`; `scale` holds the
    /// multipliers of every block.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn run(
        op: &Requantize,
        xs: &[i32],
        scale: Scales,
        ys: &mut [u8],
        overlap: bool,
        slow: &impl Fn(usize) -> u8,
    ) -> usize {
        let Some(bounds) = op.float_bounds() else {
            return 0;
        };
        let form = Form {
            bounds,
            add: op.add,
            mask: op.mask(),
            short: op.short,
            overlap,
            signed: op.cast_to == tract_onnx::prelude::DatumType::I8,
            clamp: (op.lo, op.hi),
        };
        let packs = op.short && is_x86_feature_detected!("avx512bw");
        // SAFETY (all): the CPU has AVX-512 BW where `packs`; loads of the 16 multipliers
        // of a block (the caller's contract).
        match scale {
            Scales::One(s) => {
                let s = _mm512_set1_ps(s);
                unsafe { rows(xs, |_| s, ys, &form, slow, packs) }
            }
            Scales::Each(each) => unsafe {
                let at = |b: usize| _mm512_loadu_ps(each.as_ptr().add(b));
                rows(xs, at, ys, &form, slow, packs)
            },
            Scales::Cycle(cycle) => {
                // Whole cycles at a time, each one of `Each` (a last part block overlapping
                // the one before it reads the multipliers of its own values): no division
                // per block for its place in the cycle.
                let form = Form {
                    overlap: true,
                    ..form
                };
                let mut done = 0;
                let at = |b: usize| unsafe { _mm512_loadu_ps(cycle.as_ptr().add(b)) };
                for (xs, ys) in xs.chunks(cycle.len()).zip(ys.chunks_mut(cycle.len())) {
                    let start = done;
                    let slow = |i: usize| slow(start + i);
                    done += unsafe { rows(xs, at, ys, &form, &slow, packs) };
                    if xs.len() < cycle.len() {
                        break;
                    }
                }
                done
            }
        }
    }

    /// One run of values in the packed form where `packs`, else in blocks.
    ///
    /// # Safety
    /// As `run`'s; the CPU has AVX-512 BW where `packs`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn rows(
        xs: &[i32],
        scale: impl Fn(usize) -> __m512 + Copy,
        ys: &mut [u8],
        form: &Form,
        slow: &impl Fn(usize) -> u8,
        packs: bool,
    ) -> usize {
        // SAFETY: the caller's.
        unsafe {
            if packs {
                packed(xs, scale, ys, form, slow)
            } else {
                each_block(xs, scale, ys, form, slow, 0)
            }
        }
    }

    /// `run`'s constants.
    #[derive(Clone, Copy)]
    struct Form {
        /// `[lo - add, hi - add]`, at most 2^22 in magnitude.
        bounds: (f32, f32),
        add: i32,
        mask: u8,
        /// `Requantize::short`: no product reaches 2^30 in magnitude, so no block needs
        /// the test for one.
        short: bool,
        /// A row's last part block may overlap the one before it (`for_each_block!`).
        overlap: bool,
        /// The Cast is to i8 (else u8).
        signed: bool,
        /// `[lo, hi]`, inside the Cast's range.
        clamp: (i32, i32),
    }

    /// Four blocks per step, the last part run overlapping the one before it where a row
    /// may overlap (else `each_block` from where they end; rows shorter than four blocks
    /// take it whole): for a short chain
    /// ([`Requantize::short`]: every product below 2^30 in magnitude, `add` at most
    /// `SHORT_ADD`), each block's rounded products packed to 16 bits with saturation, `add`
    /// added there with saturation, packed to bytes with saturation to the Cast's type,
    /// the bytes clamped to `[lo, hi]`. A product that saturates is one whose value lies
    /// beyond the Cast's range (2^15 - `SHORT_ADD` > 255) on the same side, so every
    /// saturation ends at the bound the chain's clamp gives; inside the range the steps are
    /// exact. 20 instructions per 64 values against 36 for four `each_block` steps, whose
    /// 32-to-8 bit narrowing alone takes two of the shuffle port's cycles per block.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW; as `run`'s.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn packed(
        xs: &[i32],
        scale: impl Fn(usize) -> __m512 + Copy,
        ys: &mut [u8],
        form: &Form,
        slow: &impl Fn(usize) -> u8,
    ) -> usize {
        assert!(ys.len() >= xs.len());
        let (x, y) = (xs.as_ptr(), ys.as_mut_ptr());
        let add = _mm512_set1_epi16(form.add as i16);
        let (lo, hi) = (
            _mm512_set1_epi8(form.clamp.0 as i8),
            _mm512_set1_epi8(form.clamp.1 as i8),
        );
        let mask = _mm512_set1_epi8(form.mask as i8);
        // The packs work within 128-bit lanes: lane l of the bytes holds values 4l..4l + 3
        // of each of the four blocks in turn; dword 4l + k goes to 4k + l.
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        let len = xs.len();
        // SAFETY: values b..b + 64 are inside `xs` and `ys` (b + 64 <= len, and the
        // assert); the multipliers' loads are the caller's.
        let four = |b: usize| unsafe {
            let rounded = |k: usize| {
                let at = b + k * BLOCK;
                let v = _mm512_cvtepi32_ps(_mm512_loadu_si512(x.add(at).cast()));
                _mm512_cvtps_epi32(_mm512_mul_ps(v, scale(at)))
            };
            let low = _mm512_adds_epi16(_mm512_packs_epi32(rounded(0), rounded(1)), add);
            let high = _mm512_adds_epi16(_mm512_packs_epi32(rounded(2), rounded(3)), add);
            let bytes = if form.signed {
                let v = _mm512_packs_epi16(low, high);
                _mm512_min_epi8(_mm512_max_epi8(v, lo), hi)
            } else {
                let v = _mm512_packus_epi16(low, high);
                _mm512_min_epu8(_mm512_max_epu8(v, lo), hi)
            };
            let bytes = _mm512_xor_si512(_mm512_permutexvar_epi32(order, bytes), mask);
            _mm512_storeu_si512(y.add(b).cast(), bytes);
        };
        let mut b = 0;
        while b + 4 * BLOCK <= len {
            four(b);
            b += 4 * BLOCK;
        }
        if b < len && b > 0 && form.overlap {
            // The last part run overlapping the one before it: the same bytes again.
            four(len - 4 * BLOCK);
            return len;
        }
        // SAFETY: as above.
        unsafe { each_block(xs, scale, ys, form, slow, b) }
    }

    /// # Safety
    /// As `run`'s.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn each_block(
        xs: &[i32],
        scale: impl Fn(usize) -> __m512,
        ys: &mut [u8],
        form: &Form,
        slow: &impl Fn(usize) -> u8,
        from: usize,
    ) -> usize {
        assert!(ys.len() >= xs.len());
        let (lo, hi) = form.bounds;
        let (vlo, vhi, vadd) = (
            _mm512_set1_ps(lo),
            _mm512_set1_ps(hi),
            _mm512_set1_epi32(form.add),
        );
        let limit = _mm512_set1_ps((1u32 << 30) as f32);
        let vmask = _mm_set1_epi8(form.mask as i8);
        let (x, y) = (xs.as_ptr(), ys.as_mut_ptr());
        // SAFETY (both): `for_each_block!` gives b + BLOCK <= xs.len() <= ys.len().
        let bytes = |b: usize, f: __m512| unsafe {
            let clamped = _mm512_min_ps(_mm512_max_ps(f, vlo), vhi);
            let v = _mm512_add_epi32(_mm512_cvtps_epi32(clamped), vadd);
            let bytes = _mm_xor_si128(_mm512_cvtepi32_epi8(v), vmask);
            _mm_storeu_si128(y.add(b).cast(), bytes);
        };
        let product = |b: usize| unsafe {
            _mm512_mul_ps(
                _mm512_cvtepi32_ps(_mm512_loadu_si512(x.add(b).cast())),
                scale(b),
            )
        };
        if form.short {
            return for_each_block!(xs.len(), form.overlap, from from, |b| {
                bytes(b, product(b))
            });
        }
        for_each_block!(xs.len(), form.overlap, from from, |b| {
            let f = product(b);
            // Every |f| < 2^30 (false for NaN): else the per-element chain.
            if _mm512_cmp_ps_mask::<_CMP_LT_OQ>(_mm512_abs_ps(f), limit) == 0xffff {
                bytes(b, f);
            } else {
                for i in b..b + BLOCK {
                    // SAFETY: as above.
                    unsafe { *y.add(i) = slow(i) };
                }
            }
        })
    }
}

impl Op for Requantize {
    fn name(&self) -> StaticName {
        "Requantize".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let lookup = match &self.lookup {
            Some(l) => format!(", then a table of {} values from {}", l.len, l.base),
            None => String::new(),
        };
        Ok(vec![format!(
            "{} multiplier(s), +{}, clamp {}..={}{lookup}, to {:?}",
            self.scale.len(),
            self.add,
            self.lo,
            self.hi,
            self.output_type()
        )])
    }

    tract_onnx::tract_core::op_as_typed_op!();
}

impl EvalOp for Requantize {
    tract_onnx::tract_core::op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 1, "Requantize takes one input");
        let x = &inputs[0];
        let shape: TVec<usize> = x.shape().into();
        let xs = x.try_as_plain_ram()?;
        let xs = xs.as_slice::<i32>()?;
        // SAFETY: `run` writes every element.
        let out = unsafe {
            byte_tensor(self.output_type(), &shape, "Requantize", |bytes| {
                self.run(xs, &shape, bytes)
            })?
        };
        Ok(tvec!(out.into_tvalue()))
    }
}

/// A new U8 or I8 tensor of `shape` whose bytes `fill` writes (i8 values as their bit
/// patterns, see `Requantize::mask`).
///
/// # Safety
/// `fill` must write every byte: the tensor starts uninitialised.
pub(crate) unsafe fn byte_tensor(
    dt: DatumType,
    shape: &[usize],
    op: &str,
    fill: impl FnOnce(&mut [u8]) -> TractResult<()>,
) -> TractResult<Tensor> {
    // SAFETY: the caller writes every element through `fill`.
    let mut out = unsafe { Tensor::uninitialized_dt(dt, shape)? };
    {
        let mut view = out.try_as_plain_ram_mut()?;
        let bytes: &mut [u8] = match dt {
            DatumType::U8 => view.as_slice_mut::<u8>()?,
            DatumType::I8 => {
                let signed = view.as_slice_mut::<i8>()?;
                // SAFETY: i8 and u8 have the same size and alignment.
                unsafe {
                    std::slice::from_raw_parts_mut(signed.as_mut_ptr() as *mut u8, signed.len())
                }
            }
            other => bail!("{op}: unsupported output {other:?}"),
        };
        fill(bytes)?;
    }
    Ok(out)
}

impl TypedOp for Requantize {
    tract_onnx::tract_core::as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == DatumType::I32);
        Ok(tvec!(self.output_type().fact(inputs[0].shape.clone())))
    }
}

/// A pass of tract's codegen session (lean.rs runs it after tract's declutter, before its
/// fuse): every requantisation with one multiplier for the whole tensor (per-tensor
/// quantization, what onnxruntime's `quantize_static` writes by default) becomes a
/// [`Requantize`].
///
/// For such a chain tract's declutter turns the f32 `Scale` into a `QScale` (the exact
/// product rounded in fixed point), and its fuse pass then moves the QScale, the zero point,
/// the clamps and the cast into the matmul's kernel. That left no chain for
/// [`fuse_requantization`]: those layers kept tract's whole plan (the whole patch matrix at
/// once, tract's kernel, no direct depthwise). [`Requantize`] rounds the f32 product half to
/// even, which is onnxruntime's own requantization (MLAS: `float(acc) * scale`, then
/// `nearbyint`): values move toward the reference wherever tract's fixed point rounded
/// differently (a tie of the f32 product, or an accumulator past 2^24).
#[derive(Clone, Debug, Default)]
pub(crate) struct PerTensorRequantize;

impl TypedPass for PerTensorRequantize {
    fn reset(&mut self) -> TractResult<()> {
        Ok(())
    }

    fn next(
        &mut self,
        _session: &mut OptimizerSession,
        _model: &TypedModel,
    ) -> TractResult<Option<TypedModelPatch>> {
        Ok(None)
    }

    fn run_direct(&mut self, model: &mut TypedModel) -> TractResult<bool> {
        let mut replaced = 0;
        for id in model.eval_order()? {
            if q_scale(model.node(id)).is_none() {
                continue;
            }
            // tract's convolution reshapes the product's rows into the image between the
            // multiplier and the zero point; the reshape goes first, on the i32 values, as
            // in the per-channel plans that banded.rs and depthwise.rs match.
            let reshape =
                only_successor(model, id)?.filter(|&n| model.node(n).op_is::<IntoShape>());
            let Some((x, last, op)) = chain_from(model, id, reshape.unwrap_or(id))? else {
                continue;
            };
            let name = format!("{}.requantize", model.node(id).name);
            let reshape = reshape.map(|n| (model.node(n).name.clone(), model.node(n).op.clone()));
            let patch = TypedModelPatch::rewire(model, &[x], &[last], &|p, taps| {
                let taps = match &reshape {
                    Some((name, op)) => p.wire_node(name, op.clone(), taps)?,
                    None => taps.into(),
                };
                p.wire_node(&name, op.clone(), &taps)
            })?;
            patch.apply(model)?;
            replaced += 1;
        }
        Ok(replaced > 0)
    }
}

/// tract's fixed-point `QScale`, when `node` is one.
fn q_scale(node: &TypedNode) -> Option<&QScale> {
    node.op_as::<ElementWiseOp>()
        .filter(|op| op.1.is_none())
        .and_then(|op| op.0.downcast_ref::<QScale>())
}

/// The multiplier tensor and the accumulator outlet of a chain's first node: an f32
/// `Scale` by a constant, or a `QScale` (its f32 scale, one for all).
fn multiplier(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<(Arc<Tensor>, OutletId)>> {
    if is_bin::<Scale>(node) && node.inputs.len() == 2 {
        return Ok(model
            .outlet_fact(node.inputs[0])?
            .konst
            .clone()
            .filter(|k| k.datum_type() == DatumType::F32)
            .map(|k| (k, node.inputs[1])));
    }
    Ok(q_scale(node)
        .filter(|_| node.inputs.len() == 1)
        .map(|q| (Arc::new(tensor0(q.scaler.scale)), node.inputs[0])))
}

/// Replaces every requantisation chain of the optimised plan with a [`Requantize`] node and
/// returns how many. The replaced nodes are left unused; the caller's next optimisation
/// prunes them.
pub(crate) fn fuse_requantization(model: &mut TypedModel) -> TractResult<usize> {
    crate::rewrite::replace_runs(model, "requantize", |model, id| {
        Ok(chain_at(model, id)?.map(|(x, last, op)| (tvec![x], last, op)))
    })
}

/// If node `id` is a `Scale` (or a `QScale`) that starts a chain this module can fuse: the accumulator
/// outlet, the chain's last outlet and the op that replaces the chain.
fn chain_at(
    model: &TypedModel,
    id: usize,
) -> TractResult<Option<(OutletId, OutletId, Requantize)>> {
    chain_from(model, id, id)
}

/// [`chain_at`] for the Scale or QScale `id`, walking the steps from node `from`: `id`
/// itself, or a reshape right after a per-tensor multiplier (whose place in the chain does
/// not matter: one multiplier for all). The steps keep `from`'s output shape.
fn chain_from(
    model: &TypedModel,
    id: usize,
    from: usize,
) -> TractResult<Option<(OutletId, OutletId, Requantize)>> {
    let node = model.node(id);
    let Some((scale, x)) = multiplier(model, node)? else {
        return Ok(None);
    };
    let x_fact = model.outlet_fact(x)?;
    if x_fact.datum_type != DatumType::I32
        || model.outlet_fact(OutletId::new(id, 0))?.datum_type != DatumType::I32
    {
        return Ok(None);
    }
    let Some(axis) = channel_axis(&scale, x_fact.rank()) else {
        return Ok(None);
    };
    let Some(x_shape) = x_fact.shape.as_concrete() else {
        return Ok(None);
    };
    if axis.is_some_and(|axis| x_shape[axis] != scale.len()) || (from != id && axis.is_some()) {
        return Ok(None);
    }
    let shape = model.outlet_fact(OutletId::new(from, 0))?.shape.clone();

    // Walk the single-consumer chain after the Scale, folding the steps. `range` is what
    // the i32 value can be at this point; a Cast is only fused when the clamps before it
    // make it exact.
    let (mut add, mut lo, mut hi) = (0i32, i32::MIN, i32::MAX);
    let mut clamped = false;
    let mut at = from;
    let mut cast_to = None;
    let mut offset_to_i8 = false;
    while let Some(next) = only_successor(model, at)? {
        let next_node = model.node(next);
        if model.outlet_fact(OutletId::new(next, 0))?.shape != shape {
            break;
        }
        if cast_to.is_none() {
            if let Some(c) = scalar_operand(model, next_node, at)? {
                if is_bin::<Add>(next_node) && !clamped {
                    add = add.wrapping_add(c);
                } else if is_bin::<Min>(next_node) {
                    (lo, hi) = (lo.min(c), hi.min(c));
                    clamped = true;
                } else if is_bin::<Max>(next_node) {
                    (lo, hi) = (lo.max(c), hi.max(c));
                    clamped = true;
                } else {
                    break;
                }
                at = next;
                continue;
            }
            if let Some(cast) = next_node.op_as::<Cast>() {
                let fits = match cast.to {
                    DatumType::U8 => lo >= 0 && hi <= 255,
                    DatumType::I8 => lo >= -128 && hi <= 127,
                    _ => false,
                };
                if !fits {
                    break;
                }
                cast_to = Some(cast.to);
                at = next;
                continue;
            }
            break;
        }
        if cast_to == Some(DatumType::U8)
            && !offset_to_i8
            && crate::rewrite::is_offset_to_i8(next_node)
        {
            offset_to_i8 = true;
            at = next;
        }
        break;
    }
    let Some(cast_to) = cast_to else {
        return Ok(None);
    };
    let short = add.abs() <= SHORT_ADD
        && scale
            .try_as_plain_ram()?
            .as_slice::<f32>()?
            .iter()
            .all(|s| s.abs() <= 0.5);
    let op = Requantize {
        cycle: repeated_cycle(&scale, axis)?,
        scale,
        axis,
        add,
        lo,
        hi,
        cast_to,
        offset_to_i8,
        short,
        lookup: None,
    };
    if model.outlet_fact(OutletId::new(at, 0))?.datum_type != op.output_type() {
        return Ok(None);
    }
    Ok(Some((x, OutletId::new(at, 0), op)))
}

/// The multipliers' axis in an input of rank `rank`: `Some(None)` for a single multiplier,
/// `Some(Some(axis))` when exactly one axis is longer than 1, `None` otherwise.
fn channel_axis(scale: &Tensor, rank: usize) -> Option<Option<usize>> {
    let shape = scale.shape();
    if shape.len() > rank {
        return None;
    }
    let long: Vec<usize> = shape
        .iter()
        .enumerate()
        .filter(|(_, d)| **d > 1)
        .map(|(i, _)| i + rank - shape.len())
        .collect();
    match long.as_slice() {
        [] => Some(None),
        [axis] => Some(Some(*axis)),
        _ => None,
    }
}

/// The node reading node `id`'s only output, when it is the only reader and `id` is not a
/// model output.
fn only_successor(model: &TypedModel, id: usize) -> TractResult<Option<usize>> {
    let node = model.node(id);
    if node.outputs.len() != 1
        || node.outputs[0].successors.len() != 1
        || model.output_outlets()?.contains(&OutletId::new(id, 0))
    {
        return Ok(None);
    }
    Ok(Some(node.outputs[0].successors[0].node))
}

/// For a two-input i32 binary node fed by `from`, the other input when it is a constant
/// holding one value.
fn scalar_operand(model: &TypedModel, node: &TypedNode, from: usize) -> TractResult<Option<i32>> {
    if node.op_as::<TypedBinOp>().is_none() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let other = match (node.inputs[0].node == from, node.inputs[1].node == from) {
        (true, false) => node.inputs[1],
        (false, true) => node.inputs[0],
        _ => return Ok(None),
    };
    let fact = model.outlet_fact(other)?;
    if fact.datum_type != DatumType::I32
        || model.outlet_fact(OutletId::new(node.id, 0))?.datum_type != DatumType::I32
    {
        return Ok(None);
    }
    let Some(k) = &fact.konst else {
        return Ok(None);
    };
    let Some(u) = k.as_uniform() else {
        return Ok(None);
    };
    Ok(Some(u.cast_to_scalar::<i32>()?))
}

fn is_bin<M: BinMiniOp>(node: &TypedNode) -> bool {
    node.op_as::<TypedBinOp>().is_some_and(|op| op.0.is::<M>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cast::cast;
    use tract_onnx::tract_core::ops::math::{add, max, min};
    use tract_onnx::tract_core::ops::quant::{offset_u8_as_i8, scale};

    /// Accumulators that probe every rounding and clamping edge: ties on both sides of
    /// zero, the clamp limits, the extremes of i32, and a spread of ordinary values.
    fn accumulators(n: usize) -> Vec<i32> {
        let extremes = [
            0,
            1,
            -1,
            i32::MAX,
            i32::MIN,
            i32::MAX - 1,
            i32::MIN + 1,
            1 << 23,
            -(1 << 23),
            (1 << 24) + 1,
            -(1 << 24) - 1,
        ];
        let mut s = 0x2545_f491_u32;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                // Mostly the sizes a convolution produces, so that most blocks of 16 take
                // the vectorised form; every 97th value an extreme, so that some do not.
                if i % 97 == 5 {
                    return extremes[(i / 97) % extremes.len()];
                }
                match s % 3 {
                    0 => (s % 2048) as i32 - 1024,
                    1 => (s % 600_000) as i32 - 300_000,
                    _ => (s as i32) >> 9,
                }
            })
            .collect()
    }

    /// Builds x -> Scale(s) -> tail..., evaluates it with tract unfused and fused, and
    /// checks the fused plan has one Requantize and the same bytes. Returns whether that
    /// Requantize is `short`.
    fn check(
        shape: &[usize],
        s: Tensor,
        tail: &dyn Fn(&mut TypedModel, OutletId) -> OutletId,
        fuses: bool,
    ) -> bool {
        let mut m = TypedModel::default();
        let x = m.add_source("x", i32::fact(shape)).unwrap();
        let s = m.add_const("s", s).unwrap();
        let scaled = m.wire_node("scale", scale(), &[s, x]).unwrap()[0];
        let out = tail(&mut m, scaled);
        m.select_output_outlets(&[out]).unwrap();
        let mut fused_model = m.clone();
        let n = fuse_requantization(&mut fused_model).unwrap();
        assert_eq!(n, usize::from(fuses));
        let fused_model = fused_model.into_decluttered().unwrap();
        let short = fused_model
            .nodes()
            .iter()
            .find_map(|n| n.op_as::<Requantize>())
            .map(|op| op.short);
        assert_eq!(short.is_some(), fuses);
        let volume: usize = shape.iter().product();
        let input = Tensor::from_shape(shape, &accumulators(volume)).unwrap();
        let run = |model: TypedModel| {
            let plan = model.into_runnable().unwrap();
            let out = plan.run(tvec!(input.clone().into_tvalue())).unwrap();
            let out = out[0].clone().into_tensor();
            (out.datum_type(), out.as_bytes().to_vec())
        };
        assert_eq!(run(m), run(fused_model));
        short.unwrap_or(false)
    }

    fn scalar_const(m: &mut TypedModel, name: &str, v: i32) -> OutletId {
        m.add_const(name, Tensor::from_shape(&[1, 1, 1], &[v]).unwrap())
            .unwrap()
    }

    /// tract's per-tensor chain, `QScale(0.1) -> Add(3) -> Min(127) -> Max(-128) -> Cast i8`,
    /// becomes one Requantize that rounds the f32 product as onnxruntime does. 5 * 0.1 is
    /// exactly 0.50000000745...: tract's fixed point rounds it up to 1, the f32 product is
    /// 0.5 and rounds to even, 0 (as MLAS's `float(acc) * scale` then `nearbyint` does);
    /// every other value is the same either way.
    #[test]
    fn per_tensor_chains_become_one_requantize_rounding_the_f32_product() {
        use tract_linalg::mmm::RoundingPolicy;
        use tract_linalg::Scaler;
        let mut m = TypedModel::default();
        let x = m.add_source("x", i32::fact([1, 1, 8])).unwrap();
        let q = ElementWiseOp(
            Box::new(QScale {
                scaler: Scaler::new(0.1, RoundingPolicy::Even),
            }),
            None,
        );
        let scaled = m.wire_node("qscale", q, &[x]).unwrap()[0];
        let c = scalar_const(&mut m, "zp", 3);
        let y = m.wire_node("add", add(), &[scaled, c]).unwrap()[0];
        let c = scalar_const(&mut m, "hi", 127);
        let y = m.wire_node("min", min(), &[y, c]).unwrap()[0];
        let c = scalar_const(&mut m, "lo", -128);
        let y = m.wire_node("max", max(), &[y, c]).unwrap()[0];
        let y = m.wire_node("cast", cast(DatumType::I8), &[y]).unwrap()[0];
        m.select_output_outlets(&[y]).unwrap();
        let xs = [5, -5, 15, 1_000_000, -1_000_000, 14, 26, 0];
        let run = |model: &TypedModel| -> Vec<i8> {
            let plan = model.clone().into_runnable().unwrap();
            let input = Tensor::from_shape(&[1, 1, 8], &xs).unwrap();
            let out = plan.run(tvec!(input.into_tvalue())).unwrap();
            let out = out[0].clone().into_tensor();
            out.try_as_plain_ram()
                .unwrap()
                .as_slice::<i8>()
                .unwrap()
                .to_vec()
        };
        let tracts = run(&m);
        assert_eq!(tracts[0], 4, "tract's fixed point rounds 5 * 0.1 up");
        let mut fused = m.clone();
        assert!(PerTensorRequantize.run_direct(&mut fused).unwrap());
        let fused = fused.into_decluttered().unwrap();
        assert!(fused.nodes().iter().any(|n| n.op_is::<Requantize>()));
        let want: Vec<i8> = xs
            .iter()
            .map(|&x| (((x as f32) * 0.1f32).round_ties_even() as i32 + 3).clamp(-128, 127) as i8)
            .collect();
        assert_eq!(want[0], 3);
        assert_eq!(run(&fused), want);
        assert_eq!(
            tracts.iter().zip(&want).filter(|(a, b)| a != b).count(),
            2,
            "only the ties differ: {tracts:?} against {want:?}"
        );
    }

    fn per_channel(c: usize) -> Tensor {
        let s: Vec<f32> = (0..c)
            .map(|i| 0.0017 * (i as f32 + 1.0) + 0.5 * (i % 2) as f32)
            .collect();
        Tensor::from_shape(&[1, c, 1], &s).unwrap()
    }

    /// tract's conv epilogue: Min(255), Max(0), Cast u8, then OffsetU8asI8 or not.
    fn conv_tail(offset: bool) -> impl Fn(&mut TypedModel, OutletId) -> OutletId {
        move |m, x| {
            let hi = scalar_const(m, "hi", 255);
            let lo = scalar_const(m, "lo", 0);
            let x = m.wire_node("min", min(), &[x, hi]).unwrap()[0];
            let x = m.wire_node("max", max(), &[x, lo]).unwrap()[0];
            let x = m.wire_node("cast", cast(DatumType::U8), &[x]).unwrap()[0];
            if offset {
                m.wire_node("offset", offset_u8_as_i8(), &[x]).unwrap()[0]
            } else {
                x
            }
        }
    }

    /// The Requantize of tract's conv epilogue ([`conv_tail`]) with one multiplier per
    /// channel (`s`, of shape `[1, channels, 1]`), and its multipliers.
    fn channel_requantize(channels: usize, s: Tensor, offset: bool) -> (Requantize, Vec<f32>) {
        let mut m = TypedModel::default();
        let x = m.add_source("x", i32::fact([1, channels, 1])).unwrap();
        let s = m.add_const("s", s).unwrap();
        let scaled = m.wire_node("scale", scale(), &[s, x]).unwrap()[0];
        let out = conv_tail(offset)(&mut m, scaled);
        m.select_output_outlets(&[out]).unwrap();
        assert_eq!(fuse_requantization(&mut m).unwrap(), 1);
        let op = m
            .nodes()
            .iter()
            .find_map(|n| n.op_as::<Requantize>())
            .unwrap()
            .clone();
        let scales = op
            .scale
            .try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec();
        (op, scales)
    }

    /// Multipliers up to 0.5 (what onnxruntime writes): a `short` chain.
    fn small_per_channel(c: usize) -> Tensor {
        let s: Vec<f32> = (0..c).map(|i| 0.5 / (i as f32 + 1.0)).collect();
        Tensor::from_shape(&[1, c, 1], &s).unwrap()
    }

    /// Both NEON forms: the exact one (multipliers past 0.5) and the short one, on rows of
    /// whole blocks and on rows whose last block overlaps the one before.
    #[test]
    fn per_channel_chains_are_fused_bit_identically() {
        for offset in [false, true] {
            assert!(!check(
                &[2, 16, 320],
                per_channel(16),
                &conv_tail(offset),
                true
            ));
            assert!(!check(
                &[1, 5, 77],
                per_channel(5),
                &conv_tail(offset),
                true
            ));
            assert!(check(
                &[2, 16, 320],
                small_per_channel(16),
                &conv_tail(offset),
                true
            ));
            assert!(check(
                &[1, 5, 77],
                small_per_channel(5),
                &conv_tail(offset),
                true
            ));
        }
    }

    /// A zero point past `SHORT_ADD` keeps the exact form, whose i32 add wraps as tract's
    /// does on the extreme accumulators.
    #[test]
    fn large_adds_keep_the_exact_form() {
        for zp in [SHORT_ADD, SHORT_ADD + 1, -SHORT_ADD - 1] {
            let tail = move |m: &mut TypedModel, x: OutletId| {
                let c = scalar_const(m, "zp", zp);
                let x = m.wire_node("add", add(), &[x, c]).unwrap()[0];
                conv_tail(true)(m, x)
            };
            let s = tensor3(&[[[0.0001f32]]]);
            assert_eq!(check(&[1, 4, 90], s, &tail, true), zp == SHORT_ADD);
        }
    }

    /// Channels-last rows (the depthwise family's), through `run_channels_last`: channel
    /// counts that are whole pairs of blocks (64), a pair and a block (48), one pair (32),
    /// one block (16), and a padded pitch (40 of 48), over positions that make several
    /// runs of repeated multipliers and a shorter last one, each value against the chain's
    /// per-value steps with its channel's multiplier, in both forms and with the u8 shifted
    /// to i8 or not.
    #[test]
    fn channels_last_rows_match_the_chain_per_value() {
        for (channels, pitch) in [(64, 64), (48, 48), (32, 32), (16, 16), (40, 48), (96, 96)] {
            for (small, offset) in [(true, false), (true, true), (false, false)] {
                let s = if small {
                    small_per_channel(channels)
                } else {
                    per_channel(channels)
                };
                let (op, scales) = channel_requantize(channels, s, offset);
                assert_eq!(op.short, small);
                let positions = 23;
                let x = accumulators(positions * pitch);
                let mut out = vec![0u8; x.len()];
                op.run_channels_last(&x, pitch, channels, &mut out).unwrap();
                for (i, (&v, &got)) in x.iter().zip(&out).enumerate() {
                    let c = i % pitch;
                    if c >= channels {
                        continue;
                    }
                    let want = (op.value(v, scales[c]) as u8) ^ op.mask();
                    assert_eq!(got, want, "{channels}/{pitch} short {small} at {i}: {v}");
                }
            }
        }
    }

    /// Every byte `op` writes through rows of blocks (3 of 100 values: the assembly pairs
    /// and an overlapping block), a short row (7: no block), one row, and channels-last
    /// rows with and without padding channels, against `table`'s entry for `plain`'s own
    /// byte of the same value.
    fn gives_the_tables_bytes(
        op: &Requantize,
        plain: &Requantize,
        scales: &[f32],
        table: &[u8; 256],
        channels: usize,
        what: &str,
    ) {
        let want =
            |v: i32, c: usize| table[usize::from((plain.value(v, scales[c]) as u8) ^ plain.mask())];
        for cols in [100, 7] {
            let x = accumulators(channels * cols);
            let mut out = vec![0u8; x.len()];
            op.run_rows(&x, cols, &mut out, cols).unwrap();
            for (i, (&v, &got)) in x.iter().zip(&out).enumerate() {
                assert_eq!(got, want(v, i / cols), "{what}: rows of {cols}, {i}");
            }
            let mut row = vec![0u8; cols];
            op.run_row(&x[..cols], 5, &mut row).unwrap();
            for (i, (&v, &got)) in x.iter().zip(&row).enumerate() {
                assert_eq!(got, want(v, 5), "{what}: a row of {cols}, {i}");
            }
        }
        for pitch in [channels, channels + 8] {
            let x = accumulators(9 * pitch);
            let mut out = vec![0u8; x.len()];
            op.run_channels_last(&x, pitch, channels, &mut out).unwrap();
            for (i, (&v, &got)) in x.iter().zip(&out).enumerate() {
                if i % pitch < channels {
                    let c = i % pitch;
                    assert_eq!(got, want(v, c), "{what}: pitch {pitch}, {i}");
                }
            }
        }
    }

    /// A requantization with a table after it (`Requantize::with_lookup`): windows of
    /// one entry and of one to four quarters (TBX a block), u8 and shifted to i8, through
    /// rows of blocks (the assembly pairs and single blocks), a row with a short tail, and
    /// channels-last rows with and without padding channels: every byte is the table's
    /// entry for the requantization's own byte.
    #[test]
    fn lookups_give_the_tables_bytes() {
        let channels = 48;
        // A ReLU6 from a zero point of 100 over `span` values, saturating after.
        let relu6 = |span: i32| -> [u8; 256] {
            std::array::from_fn(|b| ((b as i32 - 100).clamp(0, span) * 255 / span) as u8)
        };
        // A Relu at 30 into a smaller scale, saturating 160 values on.
        let relu = std::array::from_fn(|b| ((b as i32 - 30).clamp(0, 160) * 3 / 2) as u8);
        let noise = crate::kernels::panels::tests::values(256, 0x2545_f491, -128);
        let mut scrambled: [u8; 256] = std::array::from_fn(|i| noise[i] as u8);
        // Different first and last entries: a window of all 256 values.
        (scrambled[0], scrambled[255]) = (1, 2);
        for offset in [false, true] {
            let (plain, scales) = channel_requantize(channels, small_per_channel(channels), offset);
            // Indexed by the output byte: the i8's bits when shifted.
            let by_byte = |t: [u8; 256]| -> [u8; 256] {
                std::array::from_fn(|b| t[if offset { b ^ 0x80 } else { b }])
            };
            for (table, len) in [
                ([7u8; 256], 1),
                (by_byte(relu6(40)), 41),
                (by_byte(relu6(94)), 95),
                (by_byte(relu), 161),
                (by_byte(scrambled), 256),
            ] {
                for to in [DatumType::U8, DatumType::I8] {
                    let what = format!("offset {offset}, window {len}, to {to:?}");
                    let op = plain.with_lookup(&table, to).expect("a short chain");
                    assert_eq!(op.lookup.as_ref().map(|l| l.len), Some(len), "{what}");
                    assert_eq!(op.output_type(), to, "{what}");
                    gives_the_tables_bytes(&op, &plain, &scales, &table, channels, &what);
                }
            }
        }
    }

    /// Tables that only clamp the requantized values (a Relu at the zero point, a ReLU6's
    /// clamp, either shifted to i8 or not, after a u8 chain or one shifted to i8) become
    /// the chain's bounds: no lookup is left, and every byte (`gives_the_tables_bytes`) is
    /// the table's entry for the chain's own byte. A chain shifted to
    /// i8 whose table gives u8 is no clamp (it keeps a lookup or none).
    #[test]
    fn clamping_tables_become_bounds() {
        let channels = 48;
        for offset in [false, true] {
            let (plain, scales) = channel_requantize(channels, small_per_channel(channels), offset);
            for [a, b] in [[100, 255], [3, 255], [100, 140], [7, 8]] {
                for to in [DatumType::U8, DatumType::I8] {
                    let what = format!("offset {offset}, clamp [{a}, {b}], to {to:?}");
                    let to_mask = if to == DatumType::I8 { 0x80 } else { 0 };
                    // Indexed by the chain's byte (its value's bits, shifted when it is).
                    let table: [u8; 256] = std::array::from_fn(|byte| {
                        let v = i32::from(byte as u8 ^ plain.mask());
                        (v.clamp(a, b) as u8) ^ to_mask
                    });
                    let op = plain.with_lookup(&table, to);
                    if offset && to == DatumType::U8 {
                        assert!(op.is_none_or(|op| op.lookup.is_some()), "{what}");
                        continue;
                    }
                    let op = op.expect("a clamp");
                    assert!(op.lookup.is_none(), "{what}");
                    assert_eq!(op.output_type(), to, "{what}");
                    gives_the_tables_bytes(&op, &plain, &scales, &table, channels, &what);
                }
            }
        }
    }

    #[test]
    fn channels_last_multipliers_are_fused_bit_identically() {
        let s: Vec<f32> = (0..24).map(|i| 0.003 * (i as f32 + 1.0)).collect();
        let s = Tensor::from_shape(&[1, 1, 24], &s).unwrap();
        assert!(check(&[2, 37, 24], s, &conv_tail(false), true));
        let s: Vec<f32> = (0..6).map(|i| 0.01 * (i as f32 + 1.0)).collect();
        let s = Tensor::from_shape(&[1, 6, 3], &[s.clone(), s.clone(), s].concat()).unwrap();
        // Multipliers on two axes: not fused.
        check(&[2, 6, 3], s, &conv_tail(false), false);
        let s: Vec<f32> = (0..5).map(|i| 0.02 * (i as f32 + 1.0)).collect();
        let s = Tensor::from_shape(&[1, 5, 1], &s).unwrap();
        assert!(check(&[3, 5, 3], s, &conv_tail(true), true));
    }

    #[test]
    fn one_multiplier_and_a_zero_point_add() {
        let tail = |m: &mut TypedModel, x: OutletId| {
            let zp = scalar_const(m, "zp", -3);
            let x = m.wire_node("add", add(), &[zp, x]).unwrap()[0];
            let lo = scalar_const(m, "lo", -128);
            let hi = scalar_const(m, "hi", 127);
            let x = m.wire_node("max", max(), &[lo, x]).unwrap()[0];
            let x = m.wire_node("min", min(), &[x, hi]).unwrap()[0];
            m.wire_node("cast", cast(DatumType::I8), &[x]).unwrap()[0]
        };
        assert!(check(&[3, 10, 100], tensor3(&[[[0.37f32]]]), &tail, true));
    }

    /// i8 bounds inside the type (a fused ReLU6 of an s8 output): the NEON form clamps the
    /// saturated bytes, the same values as clamping the sums.
    #[test]
    fn signed_bounds_inside_the_type() {
        let tail = |m: &mut TypedModel, x: OutletId| {
            let zp = scalar_const(m, "zp", -20);
            let x = m.wire_node("add", add(), &[x, zp]).unwrap()[0];
            let lo = scalar_const(m, "lo", -20);
            let hi = scalar_const(m, "hi", 91);
            let x = m.wire_node("max", max(), &[x, lo]).unwrap()[0];
            let x = m.wire_node("min", min(), &[x, hi]).unwrap()[0];
            m.wire_node("cast", cast(DatumType::I8), &[x]).unwrap()[0]
        };
        assert!(!check(&[1, 8, 500], per_channel(8), &tail, true));
        assert!(check(&[1, 8, 500], small_per_channel(8), &tail, true));
    }

    /// A u8 chain clamped inside the type (a ReLU6 after a zero point) on short chains:
    /// rows of whole runs of four blocks, and rows of 67 and 130 (a run of four blocks, then
    /// single ones and an overlapping last one).
    #[test]
    fn unsigned_bounds_inside_the_type() {
        let tail = |m: &mut TypedModel, x: OutletId| {
            let zp = scalar_const(m, "zp", 17);
            let x = m.wire_node("add", add(), &[x, zp]).unwrap()[0];
            let lo = scalar_const(m, "lo", 17);
            let hi = scalar_const(m, "hi", 201);
            let x = m.wire_node("max", max(), &[x, lo]).unwrap()[0];
            let x = m.wire_node("min", min(), &[x, hi]).unwrap()[0];
            m.wire_node("cast", cast(DatumType::U8), &[x]).unwrap()[0]
        };
        for shape in [[1, 8, 512], [2, 3, 67], [1, 5, 130]] {
            let c = shape[1];
            assert!(check(&shape, small_per_channel(c), &tail, true));
        }
    }

    #[test]
    fn clamps_in_any_order_fold_exactly() {
        let tail = |m: &mut TypedModel, x: OutletId| {
            let mut x = x;
            for (i, (is_min, c)) in [
                (false, -5),
                (true, 300),
                (false, 7),
                (true, 255),
                (true, 250),
            ]
            .into_iter()
            .enumerate()
            {
                let c = scalar_const(m, &format!("c{i}"), c);
                let op = if is_min { min() } else { max() };
                x = m.wire_node(format!("clamp{i}"), op, &[x, c]).unwrap()[0];
            }
            m.wire_node("cast", cast(DatumType::U8), &[x]).unwrap()[0]
        };
        assert!(!check(&[1, 8, 500], per_channel(8), &tail, true));
        assert!(check(&[1, 8, 500], small_per_channel(8), &tail, true));
    }

    #[test]
    fn chains_that_cannot_be_exact_are_left_to_tract() {
        // No Max: the cast to u8 would wrap negative values.
        let no_lower_clamp = |m: &mut TypedModel, x: OutletId| {
            let hi = scalar_const(m, "hi", 255);
            let x = m.wire_node("min", min(), &[x, hi]).unwrap()[0];
            m.wire_node("cast", cast(DatumType::U8), &[x]).unwrap()[0]
        };
        check(&[1, 4, 50], per_channel(4), &no_lower_clamp, false);
        // A clamp that is not a scalar.
        let per_channel_clamp = |m: &mut TypedModel, x: OutletId| {
            let hi = m
                .add_const(
                    "hi",
                    Tensor::from_shape(&[1, 4, 1], &[255i32, 200, 255, 100]).unwrap(),
                )
                .unwrap();
            let lo = scalar_const(m, "lo", 0);
            let x = m.wire_node("min", min(), &[x, hi]).unwrap()[0];
            let x = m.wire_node("max", max(), &[x, lo]).unwrap()[0];
            m.wire_node("cast", cast(DatumType::U8), &[x]).unwrap()[0]
        };
        check(&[1, 4, 50], per_channel(4), &per_channel_clamp, false);
        // Multipliers along two axes.
        let s = Tensor::from_shape(&[2, 4, 1], &[0.5f32; 8]).unwrap();
        check(&[2, 4, 50], s, &conv_tail(false), false);
    }
}
