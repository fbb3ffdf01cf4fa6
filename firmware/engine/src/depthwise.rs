//! Int8 depthwise convolutions computed directly.
//!
//! tract 0.23.9 has a float `DepthWiseConv` but no integer one: an int8 depthwise
//! convolution (one input channel per group) becomes an `Im2col` of every channel's patches
//! and one integer matmul per channel, each a single row run on a kernel of 8 or 16 rows.
//! On MobileNetV2 (the benchmark's edge224) those took 357 of the int8 plan's 398 ms, 17
//! times the whole fp32 inference.
//!
//! [`DepthwiseInt8`] replaces `Im2col → OptMatMul → [Add|Sub constant]* → reshape →
//! Requantize` with a direct computation per channel: the channel is copied into a plane
//! that holds its padding and, for strided rows, its column phases ([`Plane`]); the
//! depthwise kernels (kernels/dw.rs, NEON on aarch64) sum every tap from the channel's
//! constant terms (the matmul's per-row Add and the following constant Adds and Subs); the
//! row is requantized by the same [`Requantize`]. Integer sums in i32 with wrapping adds
//! are exact in any order, so the output is the same bit for bit. The weights come back
//! out of tract's packed kernels (K4 or k-major panels) at load.
//!
//! The layers with short output rows take the channels-last family instead
//! (kernels/dwc.rs, [`DepthwiseInt8::run_channels_last`]): the whole input copied once
//! with 16 channels per vector, so that rows of 14 or 7 positions no longer leave blocks
//! of 16 half empty (`takes_channels_last` has the measured rule). Cores with the dot
//! product run its quads (four taps per SDOT, on the image expanded once for them), the
//! others its pairs (SMULL and SMLAL); on x86-64, hosts with AVX-512 VNNI run the quads on
//! the layers with the shortest rows.
//!
//! Weights with a zero point (asymmetric u8) add a Sub of `zw · Σ_taps x` to the run, the
//! column sums of the patches (zero_point.rs). Since `Σ x·w − zw·Σ x = Σ x·(w − zw)`, it is
//! folded into the taps, as 16-bit weights (a u8 weight less a u8 zero point is in
//! [-255, 255]). The channels-last family multiplies i8 weights: it takes them clamped to
//! [-127, 127] where few leave it (one zero point per tensor: one to eleven weights of each
//! of EfficientNet-Lite0's depthwise layers), and adds back the products the clamp left
//! out ([`Residuals`], residuals.rs), rather than leaving the layer to the planes.

use tract_linalg::mmm::{EagerPackedInput, PackedMatrixStorage};
use tract_linalg::BinOp;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::change_axes::IntoShape;
use tract_onnx::tract_core::ops::cnn::conv::Im2Col;
use tract_onnx::tract_core::ops::cnn::PoolSpec;
use tract_onnx::tract_core::ops::matmul::optimized::{MatMulOperand, OptMatMul, ProtoFusedSpec};
use tract_onnx::tract_core::ops::matmul::ModePicker;
use tract_onnx::tract_core::ops::nn::DataFormat;

use crate::threads;

use crate::epilogue::Requantize;
use crate::im2col::Geometry;
use crate::kernels::{dw, dwc};
use crate::residuals::Residuals;
use crate::zero_point::Folded;

/// Multiply-adds from which a layer's channels are spread over the pool's threads: about
/// 0.1 ms on the development host, 1 ms on a Cortex-A53, against tens of microseconds to
/// wake the pool. Every layer in the tests, so that their pools split even small ones.
#[cfg(not(test))]
const PARALLEL_MACS: usize = 1 << 20;
#[cfg(test)]
const PARALLEL_MACS: usize = 1;

/// A depthwise int8 convolution and its requantization, one channel at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DepthwiseInt8 {
    pool_spec: PoolSpec,
    /// `channels × taps` weights, tap = ky · kw + kx, less the weight zero point if any.
    weights: Vec<i16>,
    /// Whether the weights had a zero point (their term is folded into them).
    zero_point: bool,
    /// Per channel, its taps in the order the planes kernels sum them (`dw::schedule`:
    /// groups whose products share 16-bit lanes on NEON).
    order: Vec<u32>,
    /// Per channel: every constant the plan adds to the accumulators (wrapping).
    offsets: Vec<i32>,
    /// The value of padded input positions (the zero point, shifted to i8).
    pad: i8,
    requantize: Requantize,
    output_shape: TVec<usize>,
    /// On cores with the dot product, where it pays (kernels/dw.rs): the layer's taps in
    /// the dot kernel's groups, and each channel's weights packed for them (none for a
    /// channel whose weights are not all i8). Made at load, once.
    dot: Option<DotLayer>,
    /// For the layers `takes_channels_last` picks, the weights packed for the
    /// channels-last family (kernels/dwc.rs), which then computes the whole layer
    /// ([`DepthwiseInt8::run_channels_last`]) and `dot` is none.
    channels_last: Option<ChannelsLast>,
    /// The products `channels_last`'s weights leave out when they are the folded weights
    /// clamped (zero_point.rs `Folded`): each a tap, a channel and a weight.
    residuals: Residuals,
}

/// A channels-last layer's weights, for the family's kernel of this CPU (kernels/dwc.rs).
#[derive(Debug, Clone, PartialEq, Eq)]
enum ChannelsLast {
    /// Pairs of taps into 16-bit lanes (SMULL, SMLAL): cores without the dot product.
    Pairs(dwc::Weights),
    /// Quads of taps per SDOT, on the image expanded for them: cores with it.
    Quads(dwc::Quads),
}

impl ChannelsLast {
    /// The family's weights for this CPU, `weights` being `[kh, kw]` taps per channel;
    /// `None` when the pairs' kernel cannot take them (a weight outside [-127, 127]).
    fn new(weights: &[i16], channels: usize, kernel: [usize; 2], starts: &[i32]) -> Option<Self> {
        #[cfg(test)]
        let quads = tests::QUADS.get().unwrap_or(dwc::Quads::available());
        #[cfg(not(test))]
        let quads = dwc::Quads::available();
        if quads {
            return dwc::Quads::new(weights, channels, kernel, starts).map(ChannelsLast::Quads);
        }
        let taps = kernel[0] * kernel[1];
        dwc::Weights::new(weights, channels, taps, starts).map(ChannelsLast::Pairs)
    }

    fn padded_channels(&self) -> usize {
        match self {
            ChannelsLast::Pairs(w) => w.padded_channels(),
            ChannelsLast::Quads(q) => q.padded_channels(),
        }
    }

    fn kernel_name(&self) -> &'static str {
        match self {
            ChannelsLast::Pairs(_) => dwc::Weights::kernel_name(),
            ChannelsLast::Quads(_) => dwc::Quads::kernel_name(),
        }
    }
}

/// Whether a layer of `channels` with output rows of `out_width` takes the channels-last
/// family rather than planes: when plane rows are too short to amortize their per-row and
/// per-channel work, and 16 channels fill a vector at least as well as a row fills its
/// blocks of 16 positions. MobileNet's and EfficientNet's layers with rows of 28 positions
/// or fewer take it; PaddleOCR's (rows of 96) keep planes. On x86-64 only hosts with
/// AVX-512 VNNI (the quads) take it: an AVX2 version of the pairs was no faster than the
/// planes (INT8-NOTES.md items 26, 27 and 34).
fn takes_channels_last(channels: usize, out_width: usize) -> bool {
    #[cfg(test)]
    if let Some(forced) = tests::CHANNELS_LAST.get() {
        return forced;
    }
    // The shortest plane rows that beat channels last. Measured on EfficientNet-Lite0 and
    // MobileNetV2 under qemu (executed instructions; INT8-NOTES.md items 26 and 27): the
    // same on cores with the dot product (the family's quads against the planes' SDOT
    // groups) as on those without (its pairs against the planes' SMULL). On the AVX-512
    // VNNI host, per layer (item 34): the 14- and 28-wide layers take 0.4-1.0 of the
    // planes' time with the quads, the 56-wide 1.4.
    const LONG_ROWS: usize = 56;
    // Lanes used per lane paid, compared as fractions.
    let (vector, block) = (
        channels.next_multiple_of(16),
        out_width.next_multiple_of(16),
    );
    let (vector_use, block_use) = (channels * block, out_width * vector);
    let family = cfg!(target_arch = "aarch64") || dwc::Quads::available();
    family && out_width < LONG_ROWS && vector_use >= block_use
}

/// A layer's taps for the dot-product depthwise kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DotLayer {
    groups: dw::DotGroups,
    packed: Vec<Option<Vec<i32>>>,
}

impl DotLayer {
    /// For `weights` (`taps` per channel) on a layer of geometry `g`, when this CPU has
    /// the dot product and the layout's groups pay.
    fn new(g: &Geometry, weights: &[i16], taps: usize) -> Option<DotLayer> {
        let groups = dw::DotGroups::of(&Plane::of(g).offsets)?;
        let packed = weights.chunks_exact(taps).map(|w| groups.pack(w)).collect();
        Some(DotLayer { groups, packed })
    }
}

impl DepthwiseInt8 {
    /// This convolution giving its output in `shape` (as many values, in their order:
    /// load.rs `reshapes_into_convolutions`).
    pub(crate) fn with_output_shape(&self, shape: &[usize]) -> Option<DepthwiseInt8> {
        let len = |s: &[usize]| s.iter().product::<usize>();
        (len(shape) == len(&self.output_shape)).then(|| DepthwiseInt8 {
            output_shape: shape.into(),
            ..self.clone()
        })
    }

    /// This convolution with its requantization replaced by `f`'s (qtable.rs
    /// `tables_into_requantization`), when `f` gives one.
    pub(crate) fn with_requantize(
        &self,
        f: impl FnOnce(&Requantize) -> Option<Requantize>,
    ) -> Option<DepthwiseInt8> {
        Some(DepthwiseInt8 {
            requantize: f(&self.requantize)?,
            ..self.clone()
        })
    }

    fn channels(&self) -> usize {
        self.offsets.len()
    }

    /// The depthwise kernels this layer runs on this CPU: the channels-last one
    /// (kernels/dwc.rs), or the planes' (kernels/dw.rs) dot-product one (SDOT, or AVX-512
    /// VNNI) for the channels whose weights it takes and the family's other one for the rest.
    pub(crate) fn kernels(&self) -> Vec<String> {
        if let Some(layer) = &self.channels_last {
            return vec![layer.kernel_name().into()];
        }
        let (dot, other) = (dw::kernel_name(true), dw::kernel_name(false));
        match &self.dot {
            Some(d) if d.packed.iter().all(Option::is_some) => vec![dot.into()],
            Some(_) => vec![dot.into(), other.into()],
            None => vec![other.into()],
        }
    }

    /// Whether the layer's weights have a zero point, folded into its taps.
    pub(crate) fn takes_zero_point(&self) -> bool {
        self.zero_point
    }

    fn run(&self, x: &Tensor, out: &mut [u8]) -> TractResult<()> {
        let shape = x.shape();
        let (h, w) = match (self.pool_spec.data_format, shape) {
            (DataFormat::CHW, [c, h, w]) | (DataFormat::NCHW, [1, c, h, w])
                if *c == self.channels() =>
            {
                (*h, *w)
            }
            _ => bail!("DepthwiseInt8: input of shape {shape:?}"),
        };
        let g = Geometry::of(&self.pool_spec, &[1, self.channels(), h, w]);
        let n = g.n;
        ensure!(
            out.len() == self.channels() * n,
            "DepthwiseInt8: {n} output positions for an output of {:?}",
            self.output_shape
        );
        if n == 0 {
            return Ok(());
        }
        let xs = x.try_as_plain_ram()?;
        let xs = xs.as_slice::<i8>()?;
        if let Some(layer) = &self.channels_last {
            return self.run_channels_last(layer, &g, xs, out);
        }
        let layout = Plane::of(&g);
        // The groups made at load are this layout's (the input's shape is the load's).
        let dot = self
            .dot
            .as_ref()
            .filter(|d| d.groups.of_offsets(&layout.offsets));
        let job = Channels {
            g: &g,
            xs,
            layout: &layout,
            dot,
        };
        let macs = self.channels() * n * g.kernel[0] * g.kernel[1];
        // Channels are independent: a share of them per thread, each with its own plane and
        // sums (Lite0's and MobileNetV2's depthwise layers were 40 % of their host time, on
        // one thread whatever the setting).
        threads::per_thread(out, n, macs >= PARALLEL_MACS, |first, out| {
            self.channels_into(&job, first, out)
        })
    }

    /// The whole layer on the channels-last family: the input copied once into a
    /// `[rows][cols][cp]` image inside its padding, each output row's sums and their
    /// requantization as `[positions][cp]` bytes, copied back as channel rows at the end.
    /// Output rows are spread over the pool's threads.
    fn run_channels_last(
        &self,
        layer: &ChannelsLast,
        g: &Geometry,
        xs: &[i8],
        out: &mut [u8],
    ) -> TractResult<()> {
        let channels = self.channels();
        let cp = layer.padded_channels();
        let ([kh, kw], [sy, sx], [dy, dx], [pt, pl]) = (g.kernel, g.stride, g.dilation, g.pad);
        let out_cols = g.out_width;
        let (rows, cols) = padded_extent(g);
        // The quads read up to three taps past a kernel row (with zero weights).
        let cols = match layer {
            ChannelsLast::Quads(q) => cols.max((out_cols - 1) * sx + q.reach() * dx + 1),
            ChannelsLast::Pairs(_) => cols,
        };
        let frame = dwc::Frame {
            cp,
            cols,
            top: pt,
            left: pl,
        };
        let fail =
            |e: String| format_err!("DepthwiseInt8 on a {}x{} input: {e}", g.height, g.width);
        // This thread's buffers from the last layer (see `KEPT`); a nested call gets new
        // ones.
        let (mut image, mut bytes) = KEPT.take();
        image.resize(rows * cols * cp, 0);
        if channels == cp {
            frame
                .pad_outside(&mut image, (g.height, g.width), self.pad)
                .map_err(fail)?;
        } else {
            image.fill(self.pad);
        }
        dwc::to_channels_last(xs, (channels, g.height, g.width), frame, &mut image)
            .map_err(fail)?;
        // What one output row reads: its first byte's place in the (expanded) image, the
        // taps' (or quads') places from there, the step from one position to the next.
        /// A row's kernel with its taps' offsets in the form it takes them.
        enum Row<'a> {
            Pairs(&'a dwc::Weights, dwc::Arranged),
            Quads(&'a dwc::Quads, Vec<usize>, dwc::Spacing),
        }
        let (row_bytes, kernel, step) = match layer {
            ChannelsLast::Pairs(w) => {
                let offsets: Vec<usize> = (0..kh * kw)
                    .map(|t| ((t / kw) * dy * cols + (t % kw) * dx) * cp)
                    .collect();
                // In each channel group's order of taps.
                let kernel = Row::Pairs(w, w.arrange(&offsets));
                (cols * cp, kernel, sx * cp)
            }
            ChannelsLast::Quads(q) => {
                // Only the columns where quads start (every other one at stride 2).
                let spacing = dwc::Spacing::of(sx, dx);
                let ecols = dwc::Quads::expanded_cols(cols, spacing);
                let kernel = Row::Quads(q, q.offsets(ecols, dy, spacing), spacing);
                (q.row_bytes(ecols), kernel, sx / spacing.step() * cp * 4)
            }
        };
        let per_row = out_cols * cp;
        // Output rows `first..` (as many as `bytes` holds) with sums of their own. The
        // quads expand the image rows these read here, on the thread that reads them: one
        // expansion shared by the threads, four times the image, was read mostly from the
        // other core's cache, and the 14- and 7-wide layers split over two threads of the
        // AVX-512 VNNI host took 1.5-2.8 times their one-thread time.
        let rows_into = |first: usize, bytes: &mut [u8]| -> TractResult<()> {
            let mut acc = vec![0i32; per_row];
            let count = bytes.len() / per_row;
            // This thread's expansion buffer from the last layer (see `EXPANDED`).
            let mut expanded = EXPANDED.take();
            if let (Row::Quads(q, _, spacing), true) = (&kernel, count > 0) {
                let r0 = first * sy;
                let r1 = ((first + count - 1) * sy + (kh - 1) * dy + 1).min(rows);
                let band = &image[r0 * cols * cp..r1 * cols * cp];
                q.expand(band, (r1 - r0, cols, cp), *spacing, dy, &mut expanded)
                    .map_err(fail)?;
            }
            for (i, dst) in bytes.chunks_exact_mut(per_row).enumerate() {
                match &kernel {
                    Row::Pairs(w, offsets) => {
                        let src = &image[(first + i) * sy * row_bytes..];
                        w.run(src, offsets, step, out_cols, &mut acc)
                    }
                    Row::Quads(q, offsets, _) => {
                        let src = &expanded[i * sy * row_bytes..];
                        q.run(src, offsets, step, out_cols, &mut acc)
                    }
                }
                .map_err(fail)?;
                // The products the clamped weights left out, from the image (the quads'
                // expanded copy holds the same bytes in another order).
                let row = &image[(first + i) * sy * cols * cp..];
                for (t, c, r) in self.residuals.terms() {
                    let tap = ((t / kw) * dy * cols + (t % kw) * dx) * cp + c;
                    for (ox, a) in acc.iter_mut().skip(c).step_by(cp).enumerate() {
                        *a = a.wrapping_add(r * i32::from(row[tap + ox * sx * cp]));
                    }
                }
                self.requantize.run_channels_last(&acc, cp, channels, dst)?;
            }
            EXPANDED.set(expanded);
            Ok(())
        };
        // Every byte is written below (each row by `rows_into`).
        bytes.resize(g.n * cp, 0);
        let macs = channels * g.n * kh * kw;
        threads::per_thread(&mut bytes, per_row, macs >= PARALLEL_MACS, rows_into)?;
        dwc::from_channels_last(&bytes, cp, (channels, g.n), out).map_err(fail)?;
        KEPT.set((image, bytes));
        Ok(())
    }

    /// Channels `first..` (as many as `out` has rows of `g.n`) into `out`, with a plane and
    /// sums of their own.
    fn channels_into(&self, job: &Channels, first: usize, out: &mut [u8]) -> TractResult<()> {
        let (g, layout) = (job.g, job.layout);
        let (n, (h, w)) = (g.n, (g.height, g.width));
        let per_channel = g.kernel[0] * g.kernel[1];
        // The padding is the same for every channel and `fill` never writes it: it is
        // written once here.
        let mut plane = vec![self.pad; layout.len];
        let mut acc = vec![0i32; n];
        let shape = (n / g.out_width, g.out_width);
        // A channel's taps in its order, when the dot kernel does not take it.
        let (mut at, mut weights) = (Vec::new(), Vec::new());
        for (i, out) in out.chunks_exact_mut(n).enumerate() {
            let c = first + i;
            layout.fill(g, &job.xs[c * h * w..(c + 1) * h * w], &mut plane);
            let own = c * per_channel..(c + 1) * per_channel;
            let dot = job.dot.and_then(|d| {
                Some(dw::DotTaps {
                    groups: &d.groups,
                    packed: d.packed.get(c)?.as_deref()?,
                })
            });
            let taps = match dot {
                Some(_) => dw::Taps {
                    offsets: &layout.offsets,
                    weights: &self.weights[own],
                    pitch: layout.pitch,
                    dot,
                },
                None => {
                    let (order, ws) = (&self.order[own.clone()], &self.weights[own]);
                    at.clear();
                    at.extend(order.iter().map(|&t| layout.offsets[t as usize]));
                    weights.clear();
                    weights.extend(order.iter().map(|&t| ws[t as usize]));
                    dw::Taps {
                        offsets: &at,
                        weights: &weights,
                        pitch: layout.pitch,
                        dot: None,
                    }
                }
            };
            dw::run(&plane, &taps, self.offsets[c], shape, &mut acc)
                .map_err(|e| format_err!("DepthwiseInt8: channel {c} of a {h}x{w} input: {e}"))?;
            self.requantize.run_row(&acc, c, out)?;
        }
        Ok(())
    }
}

thread_local! {
    /// The channels-last image and output rows of the last layer that ran on this thread
    /// ([`DepthwiseInt8::run_channels_last`]), kept for the next one: allocating them per
    /// layer, the image filled with padding and the rows with zeros before being written,
    /// was a quarter of EfficientNet-Lite0's memset and calloc instructions under qemu.
    /// They hold at most the largest such layer's bytes, which its run held anyway.
    static KEPT: std::cell::Cell<(Vec<i8>, Vec<u8>)> = const {
        std::cell::Cell::new((Vec::new(), Vec::new()))
    };
    /// The quads' expanded rows of the last band this thread ran, kept for the next: the
    /// qformats network's 5x5 layer expands 155 KB, past the size from which glibc maps
    /// fresh pages for each allocation (and unmaps them after).
    static EXPANDED: std::cell::Cell<Vec<i8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// What every channel of one inference shares.
struct Channels<'a> {
    g: &'a Geometry,
    xs: &'a [i8],
    layout: &'a Plane,
    dot: Option<&'a DotLayer>,
}

/// One channel's input as the depthwise kernels read it (kernels/dw.rs): the image inside
/// its padding, each padded row split into `stride` phases (phase p holds columns p,
/// p + stride, ...), so that every tap of every output row reads one contiguous run.
/// Phase p's rows follow each other, and the phases follow each other.
#[derive(Debug)]
struct Plane {
    /// Padded rows: every row a tap reads, the image's and the padding's.
    rows: usize,
    /// Columns per phase row (the phases are the row stride's).
    width: usize,
    /// Per tap (ky · kw + kx), where output position (0, 0) reads it.
    offsets: Vec<usize>,
    /// From one output row to the next.
    pitch: usize,
    /// Bytes, with the kernels' read slack.
    len: usize,
}

/// The rows and columns of an input inside its padding: every row and column a tap reads,
/// the image's and the padding's (both layouts hold this much).
fn padded_extent(g: &Geometry) -> (usize, usize) {
    let ([kh, kw], [sy, sx], [dy, dx], [pt, pl]) = (g.kernel, g.stride, g.dilation, g.pad);
    let (ho, wo) = (g.n / g.out_width, g.out_width);
    let rows = (pt + g.height).max((ho - 1) * sy + (kh - 1) * dy + 1);
    let cols = (pl + g.width).max((wo - 1) * sx + (kw - 1) * dx + 1);
    (rows, cols)
}

impl Plane {
    fn of(g: &Geometry) -> Plane {
        let ([kh, kw], [sy, sx], [dy, dx]) = (g.kernel, g.stride, g.dilation);
        let (rows, cols) = padded_extent(g);
        let width = cols.div_ceil(sx);
        let mut offsets = Vec::with_capacity(kh * kw);
        for ky in 0..kh {
            for kx in 0..kw {
                let (phase, col) = ((kx * dx) % sx, (kx * dx) / sx);
                offsets.push((phase * rows + ky * dy) * width + col);
            }
        }
        Plane {
            rows,
            width,
            offsets,
            pitch: sy * width,
            len: sx * rows * width + dw::READ_SLACK,
        }
    }

    /// Writes channel `x` (`g.height × g.width`) into the image's positions of `plane`,
    /// and nothing else: the padding around them keeps what it holds.
    fn fill(&self, g: &Geometry, x: &[i8], plane: &mut [i8]) {
        let [pt, pl] = g.pad;
        let sx = g.stride[1];
        for (iy, line) in x.chunks_exact(g.width).enumerate() {
            if sx == 1 {
                let at = (pt + iy) * self.width + pl;
                plane[at..at + g.width].copy_from_slice(line);
                continue;
            }
            if sx == 2 {
                // Phase pl % 2 starts with the image's first column.
                let (first, second) = plane.split_at_mut(self.rows * self.width);
                let (mut evens, mut odds) = (first, second);
                if pl % 2 == 1 {
                    std::mem::swap(&mut evens, &mut odds);
                }
                let row = (pt + iy) * self.width;
                dw::split2(
                    line,
                    &mut evens[row + pl / 2..],
                    &mut odds[row + pl.div_ceil(2)..],
                );
                continue;
            }
            for p in 0..sx {
                // The first padded column of phase p at or after the image's left edge.
                let c0 = pl + (p + sx - pl % sx) % sx;
                let at = (p * self.rows + pt + iy) * self.width + c0 / sx;
                let run = line.iter().skip(c0 - pl).step_by(sx);
                for (o, v) in plane[at..].iter_mut().zip(run) {
                    *o = *v;
                }
            }
        }
    }
}

impl Op for DepthwiseInt8 {
    fn name(&self) -> StaticName {
        "DepthwiseInt8".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let zero_point = match self.residuals.len() {
            _ if !self.zero_point => String::new(),
            0 => ", weights less their zero point".into(),
            n => format!(
                ", weights less their zero point, {n} clamped to i8 with their residual products"
            ),
        };
        Ok(vec![format!(
            "{} channels, kernel {:?}{zero_point}",
            self.channels(),
            self.pool_spec.kernel_shape
        )])
    }

    tract_onnx::tract_core::op_as_typed_op!();
}

impl EvalOp for DepthwiseInt8 {
    tract_onnx::tract_core::op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        // SAFETY: `run` requantizes every channel's whole row.
        unsafe {
            self.requantize
                .output(&self.output_shape, "DepthwiseInt8", |bytes| {
                    self.run(&inputs[0], bytes)
                })
        }
    }
}

impl TypedOp for DepthwiseInt8 {
    tract_onnx::tract_core::as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == DatumType::I8);
        Ok(tvec!(self.requantize.output_fact(&self.output_shape)))
    }
}

/// Replaces every depthwise run [`DepthwiseInt8`] computes exactly and returns how many.
pub(crate) fn direct_depthwise(model: &mut TypedModel) -> TractResult<usize> {
    crate::rewrite::replace_runs(model, "depthwise", run_at)
}

/// The image input, the outlet replaced and the op, when node `id` is an `Im2col` that
/// starts a depthwise run.
fn run_at(
    model: &TypedModel,
    id: usize,
) -> TractResult<Option<(TVec<OutletId>, OutletId, DepthwiseInt8)>> {
    let node = model.node(id);
    let Some(im2col) = node.op_as::<Im2Col>() else {
        return Ok(None);
    };
    let spec = &im2col.pool_spec;
    let channels = spec.input_channels;
    let image = model.outlet_fact(node.inputs[0])?;
    let batch_ok = match spec.data_format {
        DataFormat::CHW => image.rank() == 3,
        DataFormat::NCHW => image.rank() == 4 && image.shape[0] == 1.to_dim(),
        _ => false,
    };
    if im2col.group != channels
        || spec.output_channels != channels
        || spec.kernel_shape.len() != 2
        || image.datum_type != DatumType::I8
        || !batch_ok
    {
        return Ok(None);
    }
    let pad = match node.inputs.get(1) {
        Some(p) => match model
            .outlet_fact(*p)?
            .konst
            .as_ref()
            .and_then(|k| k.as_uniform())
        {
            Some(k) => k.cast_to_scalar::<i32>()? as i8,
            None => return Ok(None),
        },
        None => 0,
    };
    let patches = OutletId::new(id, 0);
    let outputs = model.output_outlets()?;
    // The matmul, and with weights that have a zero point the column sums of the term
    // matched below.
    let Some(mm_node) = crate::zero_point::patches_matmul(model, node)? else {
        return Ok(None);
    };
    let Some(matmul) = mm_node.op_as::<OptMatMul>() else {
        return Ok(None);
    };
    let Some(c_shape) = matmul.c_fact.shape.as_concrete() else {
        return Ok(None);
    };
    // One row per channel: [1, channels, 1, n] with m the size-1 axis.
    if matmul.mmm.len() != 1
        || !matches!(matmul.mode_picker, ModePicker::Single)
        || matmul.c_fact.datum_type != DatumType::I32
        || c_shape.len() != 4
        || c_shape[..3] != [1, channels, 1]
        || matmul.c_m_axis != Some(2)
        || matmul.c_n_axis != Some(3)
    {
        return Ok(None);
    }
    let taps = spec.kernel_shape[0] * spec.kernel_shape[1];
    let mut weights = None;
    let mut offsets = vec![0i32; channels];
    for op in &matmul.micro_ops {
        match op {
            ProtoFusedSpec::AddMatMul { a, b, packings, .. } => {
                let (MatMulOperand::Input(ia), MatMulOperand::Input(ib)) = (a, b) else {
                    return Ok(None);
                };
                if mm_node.inputs.get(*ib) != Some(&patches)
                    || packings.len() != 1
                    || packings[0].1.is_some()
                    || weights.is_some()
                {
                    return Ok(None);
                }
                let Some(kernels) = &model.outlet_fact(mm_node.inputs[*ia])?.konst else {
                    return Ok(None);
                };
                let Some(w) = unpack_kernels(kernels, channels, taps) else {
                    return Ok(None);
                };
                weights = Some(w.into_iter().map(i16::from).collect::<Vec<i16>>());
            }
            ProtoFusedSpec::BinPerRow(slot, BinOp::Add, _) => {
                let Some(k) = &model.outlet_fact(mm_node.inputs[*slot])?.konst else {
                    return Ok(None);
                };
                let Some(values) = per_channel(k, channels) else {
                    return Ok(None);
                };
                for (o, v) in offsets.iter_mut().zip(values) {
                    *o = o.wrapping_add(v);
                }
            }
            ProtoFusedSpec::Store(..) => {}
            _ => return Ok(None),
        }
    }
    let Some(mut weights) = weights else {
        return Ok(None);
    };
    // Constant Adds and Subs on the accumulators, and the weight zero point's term, then the
    // reshape and the requantization.
    let sources = [crate::zero_point::Sums::Patches(patches)];
    let Some(tail) = crate::zero_point::tail(model, mm_node, (c_shape, 1), &sources, false)? else {
        return Ok(None);
    };
    for (o, v) in offsets.iter_mut().zip(tail.offsets.iter().flatten()) {
        *o = o.wrapping_add(*v);
    }
    let zero_point = tail.zero_point;
    let reshape = tail.next;
    if !reshape.op_is::<IntoShape>() || outputs.contains(&OutletId::new(reshape.id, 0)) {
        return Ok(None);
    }
    let Some(rq_node) = model.single_succ(reshape.id)? else {
        return Ok(None);
    };
    let Some(requantize) = rq_node.op_as::<Requantize>() else {
        return Ok(None);
    };
    let n = c_shape[3];
    let output_shape: TVec<usize> = match rq_node.outputs[0].fact.shape.as_concrete() {
        Some(s) if s == [channels, n] || s == [1, channels, n] => s.into(),
        _ => return Ok(None),
    };
    if reshape.outputs[0].fact.shape.as_concrete() != Some(&output_shape[..])
        || !requantize.is_per_row(output_shape.len())
    {
        return Ok(None);
    }
    let has_zero_point = zero_point.is_some();
    if let Some(zw) = zero_point {
        for (channel, zw) in weights.chunks_exact_mut(taps).zip(zw) {
            for w in channel {
                // A u8 weight and zero point, both less 128, differ by at most 255.
                let Ok(shifted) = i16::try_from(i32::from(*w) - zw) else {
                    return Ok(None);
                };
                *w = shifted;
            }
        }
    }
    // The load's geometry (the input's shape is fixed), when its output is not empty.
    let geometry = image
        .shape
        .as_concrete()
        .and_then(|image| match *image {
            [c, h, w] | [1, c, h, w] => Some(Geometry::of(spec, &[1, c, h, w])),
            _ => None,
        })
        .filter(|g| g.n > 0 && g.out_width > 0);
    let mut dot = geometry
        .as_ref()
        .and_then(|g| DotLayer::new(g, &weights, taps));
    let (channels_last, residuals) = match geometry
        .filter(|g| takes_channels_last(channels, g.out_width))
        .and_then(|g| channels_last_of(&weights, channels, g.kernel, &offsets))
    {
        Some((layer, residuals)) => (Some(layer), residuals),
        None => (None, Residuals::default()),
    };
    if channels_last.is_some() {
        dot = None;
    }
    let order = weights
        .chunks_exact(taps)
        .flat_map(dw::schedule)
        .map(|t| t as u32)
        .collect();
    let op = DepthwiseInt8 {
        pool_spec: spec.clone(),
        dot,
        channels_last,
        residuals,
        order,
        weights,
        zero_point: has_zero_point,
        offsets,
        pad,
        requantize: requantize.clone(),
        output_shape,
    };
    Ok(Some((
        tvec![node.inputs[0]],
        OutletId::new(rq_node.id, 0),
        op,
    )))
}

/// The channels-last family's weights for `weights` (`channels` rows of `[kh, kw]` taps),
/// with the products they leave out: none when it takes them as they are; else, for folded
/// weights of which a few leave i8, them clamped, while the residual products stay under a
/// sixteenth of the layer's multiply-adds (a scalar multiply-add each against the
/// family's 8 or 16 per vector instruction).
fn channels_last_of(
    weights: &[i16],
    channels: usize,
    kernel: [usize; 2],
    starts: &[i32],
) -> Option<(ChannelsLast, Residuals)> {
    if let Some(layer) = ChannelsLast::new(weights, channels, kernel, starts) {
        return Some((layer, Residuals::default()));
    }
    let taps = kernel[0] * kernel[1];
    let folded = weights.iter().map(|&w| i32::from(w));
    let Folded { rows, residuals } = Folded::clamped(folded, channels, taps, channels * taps / 16)?;
    let clamped: Vec<i16> = rows.iter().map(|&w| i16::from(w)).collect();
    let layer = ChannelsLast::new(&clamped, channels, kernel, starts)?;
    Some((layer, residuals))
}

/// `channels` i32 values from a constant of that many elements, or one broadcast to all.
fn per_channel(k: &Tensor, channels: usize) -> Option<Vec<i32>> {
    let k = k.cast_to::<i32>().ok()?;
    let values = k.try_as_plain_ram().ok()?.as_slice::<i32>().ok()?.to_vec();
    match values.len() {
        1 => Some(vec![values[0]; channels]),
        l if l == channels => Some(values),
        _ => None,
    }
}

/// The `taps` i8 weights of each channel's kernel, from tract's packed kernels (one packed
/// single-row matrix per channel, in a K4 or k-major panel).
fn unpack_kernels(kernels: &Tensor, channels: usize, taps: usize) -> Option<Vec<i8>> {
    let storage = kernels.try_storage_as::<PackedMatrixStorage>().ok()?;
    if kernels.len() != channels {
        return None;
    }
    let mut weights = Vec::with_capacity(channels * taps);
    for c in 0..channels {
        let value = storage.value_at_flat(c);
        let packed = value.downcast_ref::<EagerPackedInput>()?;
        if packed.mn != 1 || packed.fact.k != taps {
            return None;
        }
        let format = &packed.fact.format;
        // SAFETY: the blob holds at least one panel of `panel_bytes` bytes.
        let panel = unsafe {
            std::slice::from_raw_parts(packed.packed.as_ptr() as *const i8, packed.packed.len())
        };
        for k in 0..taps {
            let at = crate::im2col::packed_offset(&**format, 0, k)?;
            weights.push(*panel.get(at)?);
        }
    }
    Some(weights)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::banded::tests::{conv_model_with, input_spec, outputs, test_inputs, Layer, Weights};
    use crate::load::{build_with, Target};
    use std::cell::Cell;

    thread_local! {
        /// Plans this thread loads take the channels-last family (`Some(true)`) or the
        /// planes (`Some(false)`) whatever the CPU, on its scalar reference where the CPU
        /// has no kernel of that family.
        pub(super) static CHANNELS_LAST: Cell<Option<bool>> = const { Cell::new(None) };
        /// Plans this thread loads take the channels-last family's quads (`Some(true)`) or
        /// pairs (`Some(false)`) whatever the CPU, on the scalar reference where the CPU
        /// has no SDOT.
        pub(super) static QUADS: Cell<Option<bool>> = const { Cell::new(None) };
    }

    /// Depthwise layers with strides 1 and 2, dilation 2, asymmetric and wide padding, 3x3
    /// and 5x5 kernels, output rows as wide as the input's and narrower (both stride-1
    /// paths), between ordinary convolutions: the plan with the direct depthwise
    /// op gives the bits of tract's own unrewritten plan.
    #[test]
    fn direct_depthwise_matches_the_unrewritten_plan() {
        let (c, h, w) = (3, 21, 18);
        let layers = [
            Layer(16, 3, [2; 2], 1, [1; 4], 1),
            Layer(16, 3, [1; 2], 1, [1; 4], 16),
            Layer(16, 3, [2; 2], 1, [0, 1, 2, 1], 16),
            Layer(16, 5, [1; 2], 2, [4, 3, 4, 5], 16),
            Layer(8, 1, [1; 2], 1, [0; 4], 1),
            Layer(8, 3, [1; 2], 1, [1; 4], 8),
            Layer(8, 3, [1; 2], 1, [0, 1, 0, 0], 8),
        ];
        matches_tract_on(c, h, w, &layers, 5);
        // Asymmetric u8 weights, per tensor and per channel: every depthwise layer takes
        // the weight zero point into its taps.
        for per_channel in [false, true] {
            let coding = Weights::U8 { per_channel };
            matches_tract_with(c, h, w, &layers, 5, coding);
        }
    }

    /// MobileNetV3-style depthwise layers on a non-square input: 3x3 and 5x5 kernels with
    /// strides (2, 1) and (1, 2), then a stride-1 layer on rows narrower than the plane's.
    #[test]
    fn depthwise_with_unequal_strides_on_a_wide_input() {
        let layers = [
            Layer(16, 3, [2; 2], 1, [1; 4], 1),
            Layer(16, 3, [2, 1], 1, [1; 4], 16),
            Layer(16, 5, [2, 1], 1, [2; 4], 16),
            Layer(16, 5, [1, 2], 1, [2, 1, 2, 3], 16),
            Layer(16, 3, [1; 2], 1, [1; 4], 16),
            Layer(8, 1, [1; 2], 1, [0; 4], 1),
        ];
        matches_tract_on(3, 48, 192, &layers, 4);
    }

    /// Strides (2, 1) down to planes of one row, where a stride-1 5x5 tap reads entirely
    /// outside the plane (issue 14's MobileNetV3 panic: "range start index 194 out of range
    /// for slice of length 192").
    #[test]
    fn depthwise_on_planes_of_one_row() {
        let layers = [
            Layer(16, 3, [2; 2], 1, [1; 4], 1),
            Layer(16, 5, [2, 1], 1, [2; 4], 16),
            Layer(16, 5, [1; 2], 1, [2; 4], 16),
            Layer(16, 3, [1; 2], 1, [1; 4], 16),
            Layer(8, 1, [1; 2], 1, [0; 4], 1),
        ];
        matches_tract_on(3, 4, 40, &layers, 3);
    }

    /// 7x7 kernels (49 taps), stride 3, dilation with stride 2, padding wider than the
    /// stride on one side only, and channels not a multiple of the kernels' blocks.
    #[test]
    fn depthwise_with_large_kernels_and_strides() {
        let layers = [
            Layer(12, 3, [1; 2], 1, [1; 4], 1),
            Layer(12, 7, [1; 2], 1, [3; 4], 12),
            Layer(12, 7, [2; 2], 1, [3, 0, 2, 5], 12),
            Layer(12, 3, [3; 2], 1, [1; 4], 12),
            Layer(12, 3, [2; 2], 2, [2, 1, 0, 2], 12),
            Layer(5, 1, [1; 2], 1, [0; 4], 1),
        ];
        matches_tract_on(3, 37, 29, &layers, 4);
        for per_channel in [false, true] {
            let coding = Weights::U8 { per_channel };
            matches_tract_with(3, 37, 29, &layers, 4, coding);
        }
    }

    /// The plan with the direct depthwise op (`depthwise` of them) gives the bits of
    /// tract's own unrewritten plan.
    fn matches_tract_on(c: usize, h: usize, w: usize, layers: &[Layer], depthwise: usize) {
        matches_tract_with(c, h, w, layers, depthwise, Weights::Symmetric)
    }

    fn matches_tract_with(
        c: usize,
        h: usize,
        w: usize,
        layers: &[Layer],
        depthwise: usize,
        coding: Weights,
    ) {
        let bytes = conv_model_with(c, h, w, layers, coding);
        let spec = input_spec(c, h, w);
        let target = Target {
            input: &spec,
            output_tensor: "y",
            batch: 1,
        };
        let plain = build_with(&bytes, &target, false).unwrap();
        // This CPU's choice, then each family whatever the CPU (channels last in pairs,
        // then in quads).
        let choices = [
            (None, None),
            (Some(false), None),
            (Some(true), Some(false)),
            (Some(true), Some(true)),
        ];
        for (forced, quads) in choices {
            CHANNELS_LAST.set(forced);
            QUADS.set(quads);
            let direct = build_with(&bytes, &target, true);
            CHANNELS_LAST.set(None);
            QUADS.set(None);
            let direct = direct.unwrap();
            let ops: Vec<&DepthwiseInt8> = direct
                .plan
                .model()
                .nodes()
                .iter()
                .filter_map(|n| n.op_as::<DepthwiseInt8>())
                .collect();
            assert_eq!(ops.len(), depthwise, "{coding:?}: {:?}", direct.patches);
            if forced == Some(true) && coding == Weights::Symmetric {
                // Symmetric weights are in [-127, 127]: every layer takes the family.
                assert!(ops.iter().all(|op| op.channels_last.is_some()));
            }
            if forced == Some(true) && coding == (Weights::U8 { per_channel: false }) {
                // The weights less one zero point per tensor leave i8 in a few places:
                // clamped, with their residual products.
                let clamped = ops.iter().filter(|op| !op.residuals.is_empty()).count();
                assert!(clamped > 0, "{quads:?}: no layer took clamped weights");
                assert!(ops
                    .iter()
                    .filter(|op| !op.residuals.is_empty())
                    .all(|op| op.channels_last.is_some()));
            }
            if forced == Some(false) {
                assert!(ops.iter().all(|op| op.channels_last.is_none()));
            }
            let shape = [1, c, h, w];
            for data in &test_inputs(c * h * w) {
                let (want, got) = (
                    outputs(&plain.plan, &shape, data),
                    outputs(&direct.plan, &shape, data),
                );
                let differ = want.iter().zip(&got).position(|(a, b)| a != b);
                let case = format!(
                    "{coding:?}, channels last {forced:?}, quads {quads:?}: first difference"
                );
                assert_eq!((want.len(), differ), (got.len(), None), "{case}");
                // Channels (or rows) spread over a pool's threads give the same bytes.
                let pool = crate::threads::executor_for(3).unwrap();
                let threaded = crate::threads::scope(pool, || outputs(&direct.plan, &shape, data));
                assert_eq!(
                    threaded, want,
                    "{coding:?}, {forced:?}, {quads:?}, 3 threads"
                );
            }
        }
    }
}
