//! A faster im2col for tract's integer convolutions.
//!
//! tract 0.23.9 packs the patches of an int8 convolution eagerly (`Im2col`), writing one
//! byte at a time through a packing writer; on the default bundle that was half of the int8
//! inference time once the requantisation was fused (firmware/bench/INT8-NOTES.md). The
//! float path does not pay it: it reads patches lazily inside the matmul.
//!
//! [`PackPatches`] produces the same packed matrix, byte for byte, for the two layouts
//! tract's integer kernels take: `PackedI8K4` (four consecutive k of one column in one
//! 32-bit lane: the SDOT, VNNI and AMX kernels) and `PackedFormat` (k-major panels: the
//! SMLAL and SVE kernels). For a band of output rows at a time it builds the patch matrix
//! from contiguous runs of input rows (whole planes where the convolution allows, padding
//! only at the edges), then copies its panels out (k-major) or interleaves four k rows at a
//! time with SIMD (K4). [`speed_up_patches`] swaps it in for every `Im2col` node whose
//! geometry it handles (2-D, NCHW, one group, i8); any other node is left to tract.

use std::sync::Arc;

use crate::kernels::pairs;
use tract_linalg::mmm::{
    EagerPackedInput, MMMInputFormat, MMMInputValue, PackedExoticFact, PackedMatrixStorage,
};
use tract_linalg::pack::{PackedFormat, PackedI8K4};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::conv::Im2Col;
use tract_onnx::tract_core::ops::cnn::PoolSpec;
use tract_onnx::tract_core::ops::nn::DataFormat;

/// Where each k row of a panel comes from, and how the panel is laid out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Layout {
    /// `PackedI8K4 { r }`: `panel[(k / 4) * 4r + m * 4 + k % 4]`.
    K4 { r: usize },
    /// `PackedFormat { r }`: `panel[k * r + m]`.
    KMajor { r: usize },
    /// The engine's c16 tiles (kernels/c16.rs): `panel[(k / 16) * 16r + m * 16 + k % 16]`.
    K16 { r: usize },
    /// The engine's pairs tiles (kernels/pairs.rs): `panel[pairs::offset(m, k)]`, 16
    /// positions per panel.
    Pairs,
}

impl Layout {
    /// k rows the packing groups together (the patch matrix is padded to a multiple).
    fn group(&self) -> usize {
        match self {
            Layout::K16 { .. } => 16,
            Layout::K4 { .. } | Layout::KMajor { .. } | Layout::Pairs => 4,
        }
    }
}

/// Drop-in replacement for tract's `Im2col` on the geometries described in the module doc.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PackPatches {
    pool_spec: PoolSpec,
    /// The kernel's packing, copied from tract's node: the matmul checks it.
    pub(crate) format: Box<dyn MMMInputFormat>,
    layout: Layout,
    pub(crate) k: usize,
    pub(crate) panel_len: usize,
    pub(crate) align: usize,
}

/// The concrete geometry of one evaluation.
pub(crate) struct Geometry {
    pub(crate) channels: usize,
    pub(crate) height: usize,
    pub(crate) width: usize,
    pub(crate) out_width: usize,
    pub(crate) n: usize,
    pub(crate) kernel: [usize; 2],
    pub(crate) stride: [usize; 2],
    pub(crate) dilation: [usize; 2],
    pub(crate) pad: [usize; 2],
}

impl Geometry {
    /// The geometry of `spec` (2-D) on an input of `shape` (`[n, c, h, w]`).
    ///
    /// Axis by axis, with no allocation: tract's `PoolSpec::strides`, `dilations` and
    /// `computed_padding` each made a vector of ones, 40 allocations per inference of the
    /// qformats network, whose every convolution asks here once per evaluation.
    pub(crate) fn of(spec: &PoolSpec, shape: &[usize]) -> Geometry {
        let dilation = |axis: usize| spec.dilations.as_ref().map_or(1, |d| d[axis]);
        let strides = [spec.stride(0), spec.stride(1)];
        let dilations = [dilation(0), dilation(1)];
        let padded = [0, 1].map(|axis| {
            spec.padding.compute_one(
                axis,
                &shape[2 + axis],
                spec.kernel_shape[axis],
                dilations[axis],
                strides[axis],
            )
        });
        Geometry {
            channels: shape[1],
            height: shape[2],
            width: shape[3],
            out_width: padded[1].convoluted,
            n: padded[0].convoluted * padded[1].convoluted,
            kernel: [spec.kernel_shape[0], spec.kernel_shape[1]],
            stride: [strides[0], strides[1]],
            dilation: [dilations[0], dilations[1]],
            pad: [padded[0].pad_before, padded[1].pad_before],
        }
    }

    /// Whether each output position's patch is its own input position's channels: a 1x1
    /// kernel at stride 1 without padding (dilation changes nothing then). Patch row `c`
    /// of output rows `oy0..` is then channel `c`'s plane from row `oy0` on.
    pub(crate) fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1]
            && self.stride == [1, 1]
            && self.pad == [0, 0]
            && self.out_width == self.width
            && self.n == self.height * self.width
    }

    /// For kernel column `kx`: `x0`, with output column ox reading input column
    /// `ox · stride + x0`, and the output columns `lead..end` that read inside the image.
    #[inline]
    pub(crate) fn columns(&self, kx: usize) -> (isize, usize, usize) {
        let wo = self.out_width;
        let (w, sx) = (self.width as isize, self.stride[1] as isize);
        let x0 = (kx * self.dilation[1]) as isize - self.pad[1] as isize;
        let lead = if x0 >= 0 { 0 } else { (-x0 + sx - 1) / sx } as usize;
        let end = if w - x0 <= 0 {
            0
        } else {
            (w - x0 + sx - 1) / sx
        } as usize;
        (x0, lead.min(wo), end.min(wo).max(lead.min(wo)))
    }
}

impl PackPatches {
    /// `Some` when tract's node is one this op computes exactly.
    pub(crate) fn for_node(
        op: &Im2Col,
        output: &TypedFact,
        input: &TypedFact,
    ) -> Option<PackPatches> {
        let spec = &op.pool_spec;
        let packed = output.exotic_fact()?.downcast_ref::<PackedExoticFact>()?;
        if op.group != 1
            || spec.data_format != DataFormat::NCHW
            || spec.kernel_shape.len() != 2
            || input.datum_type != DatumType::I8
            || input.rank() != 4
        {
            return None;
        }
        let k = spec.input_channels * spec.kernel_shape.iter().product::<usize>();
        if k != packed.k {
            return None;
        }
        PackPatches::new(spec.clone(), &*packed.format, k)
    }

    /// Patches of `pool_spec` (2-D, NCHW geometry) packed in `format` (`PackedI8K4`, or
    /// `PackedFormat` of i8), `k` rows each; `None` for any other format.
    pub(crate) fn new(
        pool_spec: PoolSpec,
        format: &dyn MMMInputFormat,
        k: usize,
    ) -> Option<PackPatches> {
        let (layout, panel_len, align) = if let Some(p) = format.downcast_ref::<PackedI8K4>() {
            (Layout::K4 { r: p.r }, p.single_panel_len(k), p.alignment())
        } else if let Some(p) = format.downcast_ref::<PackedFormat>() {
            if p.dt != DatumType::I8 {
                return None;
            }
            (
                Layout::KMajor { r: p.r },
                p.single_panel_len(k),
                p.alignment(),
            )
        } else {
            return None;
        };
        Some(PackPatches {
            pool_spec,
            format: tract_onnx::tract_core::dyn_clone::clone_box(format),
            layout,
            k,
            panel_len,
            align,
        })
    }

    pub(crate) fn r(&self) -> usize {
        match self.layout {
            Layout::K4 { r } | Layout::KMajor { r } | Layout::K16 { r } => r,
            Layout::Pairs => pairs::MR,
        }
    }

    /// Rows of the patch matrix: k padded to whole groups of the packing.
    fn padded_k(&self) -> usize {
        self.k.div_ceil(self.layout.group()) * self.layout.group()
    }

    /// The same patches in the c16 packing (kernels/c16.rs), for the engine's own tiles;
    /// `format` stays tract's, which only tract's kernel reads.
    pub(crate) fn c16(&self) -> PackPatches {
        use crate::kernels::c16;
        PackPatches {
            layout: Layout::K16 { r: c16::MR },
            panel_len: c16::panel_len(self.k),
            align: 16,
            ..self.clone()
        }
    }

    /// The same patches in the pairs packing (kernels/pairs.rs), for the engine's own
    /// tiles; `format` stays tract's, which only tract's kernel reads.
    pub(crate) fn pairs(&self) -> PackPatches {
        PackPatches {
            layout: Layout::Pairs,
            panel_len: pairs::panel_len(self.k),
            align: 16,
            ..self.clone()
        }
    }

    /// The same patches in `PackedI8K4 { r }` panels, for the engine's own VNNI tiles
    /// (vnni.rs) and dot tiles (kernels/dot.rs); `format` stays tract's, which only
    /// tract's kernel reads.
    pub(crate) fn k4(&self, r: usize) -> PackPatches {
        let group_bytes = 4 * r;
        PackPatches {
            layout: Layout::K4 { r },
            panel_len: self.k.div_ceil(4) * group_bytes,
            align: 64,
            ..self.clone()
        }
    }

    pub(crate) fn geometry(&self, shape: &[usize]) -> TractResult<Geometry> {
        ensure!(
            shape.len() == 4,
            "PackPatches: input of rank {}",
            shape.len()
        );
        let spec = &self.pool_spec;
        ensure!(
            shape[1] == spec.input_channels,
            "PackPatches: {shape:?} has the wrong channels"
        );
        Ok(Geometry::of(spec, shape))
    }

    /// Packs one image (`x`: C·H·W bytes) into `out` (`panels * panel_len` bytes, zeroed for
    /// the k-major layout, whose alignment padding is not written here), a band of output
    /// rows at a time so the patch matrix stays near [`CHUNK_BYTES`] whatever the layer
    /// (VGG16's first layers would need tens of MB at once).
    fn pack(&self, g: &Geometry, x: &[i8], pad: i8, out: &mut [i8]) {
        let rows = self.padded_k();
        let wo = g.out_width;
        let unit = self.band_unit(g);
        let band = unit * (CHUNK_BYTES / (rows * unit * wo)).max(1);
        let ho = g.n / wo;
        for oy0 in (0..ho).step_by(band) {
            debug_assert!((oy0 * wo).is_multiple_of(self.r()));
            let first_panel = oy0 * wo / self.r();
            let out = &mut out[first_panel * self.panel_len..];
            self.pack_band(g, x, pad, oy0, (ho - oy0).min(band), out, None);
        }
    }

    /// The smallest number of output rows that fills whole panels: bands other than the
    /// last must be a multiple of it.
    pub(crate) fn band_unit(&self, g: &Geometry) -> usize {
        self.r() / crate::kernels::gcd(g.out_width, self.r())
    }

    /// Packs output rows `oy0..oy0 + rows` of one image into the panels that start `out`
    /// (`rows * out_width` columns, padded to whole panels): a matrix of its own, which
    /// `pack` places where the whole image's panels `oy0 * out_width` on start.
    ///
    /// Two passes: the patch matrix, k rows of the band's output positions, built from long
    /// runs of input rows; then the panels, copied (k-major) or interleaved four rows at a
    /// time (K4) from it. The matrix is padded with zero rows and columns to whole panels
    /// and whole groups of four, which is what tract leaves in the packed padding too.
    ///
    /// With `sums` (one per output position of the band), also each position's sum over
    /// its patch (padding included), what tract's QSumB makes for the weight zero point's
    /// term (zero_point.rs).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pack_band(
        &self,
        g: &Geometry,
        x: &[i8],
        pad: i8,
        oy0: usize,
        rows_out: usize,
        out: &mut [i8],
        sums: Option<&mut [i32]>,
    ) {
        let r = self.r();
        let hw = g.height * g.width;
        let taps = g.kernel[0] * g.kernel[1];
        let rows = self.padded_k();
        let n = rows_out * g.out_width;
        if sums.is_none() && self.k == rows && g.is_pointwise() {
            self.pack_pointwise_band(g, x, oy0, n, out);
            return;
        }
        let cols = n.div_ceil(r) * r;
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            if scratch.len() < rows * cols {
                scratch.resize(rows * cols, 0);
            }
            // Left over from earlier bands and layers: every byte is written below.
            let matrix = &mut scratch[..rows * cols];
            if let Some(shifts) = Shifts::of(g, self.k) {
                shifts.fill(g, x, pad, oy0, rows_out, &mut matrix[..self.k * cols], cols);
            } else if let Some(reuse) = RowReuse::of(g, self.k) {
                reuse.fill(g, x, pad, oy0, rows_out, &mut matrix[..self.k * cols], cols);
            } else {
                for kk in 0..self.k {
                    let (ci, tap) = (kk / taps, kk % taps);
                    let plane = &x[ci * hw..(ci + 1) * hw];
                    let row = &mut matrix[kk * cols..(kk + 1) * cols];
                    let tap = [tap / g.kernel[1], tap % g.kernel[1]];
                    gather(g, plane, pad, tap, oy0, &mut row[..n]);
                    pad_edge(&mut row[n..], 0);
                }
            }
            matrix[self.k * cols..].fill(0);
            if let Some(sums) = sums {
                column_sums(&matrix[..rows * cols], cols, &mut sums[..n]);
            }
            self.panels(matrix, cols, cols / r, out);
        });
    }

    /// Calls `f` on row `kk` of the patch matrix [`PackPatches::pack_band`] packs for the
    /// `n` positions of the output rows from `oy0` on (whole rows): a pointwise layer's is
    /// a run of the input itself, any other's is gathered.
    pub(crate) fn with_patch_row(
        &self,
        g: &Geometry,
        x: &[i8],
        pad: i8,
        kk: usize,
        (oy0, n): (usize, usize),
        f: &mut dyn FnMut(&[i8]),
    ) {
        let hw = g.height * g.width;
        if g.is_pointwise() {
            return f(&x[kk * hw + oy0 * g.width..][..n]);
        }
        let taps = g.kernel[0] * g.kernel[1];
        let (ci, tap) = (kk / taps, kk % taps);
        let plane = &x[ci * hw..(ci + 1) * hw];
        let mut row = vec![0i8; n];
        gather(
            g,
            plane,
            pad,
            [tap / g.kernel[1], tap % g.kernel[1]],
            oy0,
            &mut row,
        );
        f(&row)
    }

    /// [`PackPatches::pack_band`] for a pointwise layer ([`Geometry::is_pointwise`]) whose
    /// depth fills whole groups of the packing: the patch matrix's rows are the input's
    /// channel rows, so whole panels are interleaved straight from the input (its rows
    /// `h · w` bytes apart) without the matrix pass. Only a last part panel goes through a
    /// matrix of its own, padded with zero columns, since the input ends inside it.
    fn pack_pointwise_band(&self, g: &Geometry, x: &[i8], oy0: usize, n: usize, out: &mut [i8]) {
        let r = self.r();
        let hw = g.height * g.width;
        let band = &x[oy0 * g.width..];
        let whole = n / r;
        self.panels(band, hw, whole, out);
        let rest = n - whole * r;
        if rest == 0 {
            return;
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            if scratch.len() < self.k * r {
                scratch.resize(self.k * r, 0);
            }
            let matrix = &mut scratch[..self.k * r];
            for (kk, row) in matrix.chunks_exact_mut(r).enumerate() {
                let from = kk * hw + whole * r;
                head_of(&band[from..], rest, row);
            }
            let panel = &mut out[whole * self.panel_len..(whole + 1) * self.panel_len];
            self.panels(matrix, r, 1, panel);
        });
    }

    /// The first `count` panels into `out` (`panel_len` bytes each), panel p from positions
    /// `p·r..(p + 1)·r` of `matrix`: `padded_k` rows, `cols` bytes apart (only the panels'
    /// columns of each row are read). One call per band, the layout's loop inside: a call
    /// per panel cost qformats' pointwise layers more than the panels' bytes (cortex-a76).
    fn panels(&self, matrix: &[i8], cols: usize, count: usize, out: &mut [i8]) {
        let groups = self.padded_k() / self.layout.group();
        let panels = out.chunks_mut(self.panel_len).take(count).enumerate();
        match self.layout {
            Layout::KMajor { r } => {
                for (p, panel) in panels {
                    for kk in 0..self.k {
                        let src = &matrix[kk * cols + p * r..][..r];
                        panel[kk * r..(kk + 1) * r].copy_from_slice(src);
                    }
                }
            }
            Layout::K4 { r } => {
                for (p, panel) in panels {
                    interleave_panel(matrix, cols, groups, p * r, r, panel);
                }
            }
            Layout::K16 { r } => {
                for (p, panel) in panels {
                    interleave16_panel(matrix, cols, groups, p * r, r, panel);
                }
            }
            Layout::Pairs => {
                for (p, panel) in panels {
                    pairs_panel(matrix, cols, groups, p * pairs::MR, panel);
                }
            }
        }
    }
}

/// The patch matrix of a layer at stride 1 and dilation 1 whose output rows are as wide
/// as its input rows (3x3 and 5x5 "same" convolutions: most of a ResNet's and all of a
/// VGG's): there, the patch row of tap `(ky, kx)` is the band's input rows shifted by
/// `ky · width + kx - left pad` bytes, one run, but for the output columns whose tap reads
/// left or right of the image and would take the neighbouring row's bytes instead.
///
/// So each band's input rows, inside their top and bottom padding, are copied once per
/// kernel column `kx` into an image whose columns that this `kx` never reads within a row
/// (the last `-x0` where it reads left of the image, the first `x0` where it reads right)
/// hold the padding value: those are exactly the bytes its wrapped reads reach. Every
/// patch row is then one copy from one of these images, with no test per output row (the
/// general gather pads each row's edges, and cost the ResNet-18-style network 15 M
/// instructions per inference under qemu, cortex-a72, in calls and edge loops).
struct Shifts {
    /// Kernel rows and columns.
    kernel: [usize; 2],
    /// The left padding: tap `kx` reads input column `ox + kx - left`.
    left: usize,
}

impl Shifts {
    /// For a layer of `g` whose patches are `k` deep, when it is such a layer.
    fn of(g: &Geometry, k: usize) -> Option<Shifts> {
        let [kh, kw] = g.kernel;
        let fits = g.stride == [1, 1]
            && g.dilation == [1, 1]
            && g.out_width == g.width
            && g.width > 0
            && k == g.channels * kh * kw
            // Every tap reads inside the row or at most one row over.
            && g.pad[1] < g.width
            && kw - 1 - g.pad[1].min(kw - 1) < g.width;
        (fits && !g.is_pointwise()).then_some(Shifts {
            kernel: g.kernel,
            left: g.pad[1].min(kw - 1),
        })
    }

    /// Patch rows of output rows `oy0..oy0 + rows_out` into `matrix` (`k` rows, `cols`
    /// bytes apart, each padded with zeros past the band's positions).
    #[allow(clippy::too_many_arguments)]
    fn fill(
        &self,
        g: &Geometry,
        x: &[i8],
        pad: i8,
        oy0: usize,
        rows_out: usize,
        matrix: &mut [i8],
        cols: usize,
    ) {
        let [kh, kw] = self.kernel;
        let (w, h) = (g.width, g.height);
        let n = rows_out * w;
        // One channel's band: `lead` bytes of padding, the padded rows, `trail` bytes.
        let (lead, trail) = (self.left, kw - 1 - self.left);
        let band_rows = rows_out + kh - 1;
        let plane = lead + band_rows * w + trail;
        let image_len = g.channels * plane;
        IMAGES.with_borrow_mut(|images| {
            if images.len() < kw * image_len {
                images.resize(kw * image_len, 0);
            }
            for (kx, image) in images.chunks_exact_mut(image_len).take(kw).enumerate() {
                let x0 = kx as isize - self.left as isize;
                for (ci, dst) in image.chunks_exact_mut(plane).enumerate() {
                    let src = &x[ci * h * w..(ci + 1) * h * w];
                    dst[..lead].fill(pad);
                    dst[plane - trail..].fill(pad);
                    let rows = &mut dst[lead..lead + band_rows * w];
                    // Padded row j is input row oy0 + j - top: the image's rows are one run.
                    let first = g.pad[0].saturating_sub(oy0).min(band_rows);
                    let last = (h + g.pad[0]).saturating_sub(oy0).clamp(first, band_rows);
                    rows[..first * w].fill(pad);
                    rows[last * w..].fill(pad);
                    if first < last {
                        let iy = oy0 + first - g.pad[0];
                        let len = (last - first) * w;
                        rows[first * w..last * w].copy_from_slice(&src[iy * w..iy * w + len]);
                    }
                    let edge = x0.unsigned_abs().min(w);
                    match (x0.signum(), edge) {
                        (0, _) => {}
                        (-1, 1) => rows
                            .iter_mut()
                            .skip(w - 1)
                            .step_by(w)
                            .for_each(|v| *v = pad),
                        (1, 1) => rows.iter_mut().step_by(w).for_each(|v| *v = pad),
                        (-1, _) => {
                            for row in rows.chunks_exact_mut(w) {
                                row[w - edge..].fill(pad);
                            }
                        }
                        _ => {
                            for row in rows.chunks_exact_mut(w) {
                                row[..edge].fill(pad);
                            }
                        }
                    }
                }
            }
            // Output column ox of row oy reads image byte lead + (oy + ky) * w + ox + kx - left.
            copy_patch_rows(
                matrix,
                (cols, n),
                [g.channels, kh, kw],
                images,
                |ci, ky, kx| kx * image_len + ci * plane + ky * w + kx,
            );
        });
    }
}

/// `sums[j]`: the sum of column `j` of `matrix` (rows of `cols` bytes, a multiple of four
/// rows). Four rows at a time are added in 16 bits (4 · 128 fits) before the 32-bit sums,
/// which a vectorized loop then reads and writes once per four rows: on EfficientNet-Lite0
/// with asymmetric u8 weights (cortex-a72) that took the sums from 3.1 M to 1.6 M
/// instructions per inference.
fn column_sums(matrix: &[i8], cols: usize, sums: &mut [i32]) {
    sums.fill(0);
    for four in matrix.chunks_exact(4 * cols) {
        let (r0, rest) = four.split_at(cols);
        let (r1, rest) = rest.split_at(cols);
        let (r2, r3) = rest.split_at(cols);
        let rows = r0.iter().zip(r1).zip(r2.iter().zip(r3));
        for (s, ((&a, &b), (&c, &d))) in sums.iter_mut().zip(rows) {
            let quad = i16::from(a) + i16::from(b) + i16::from(c) + i16::from(d);
            *s += i32::from(quad);
        }
    }
}

/// Where row `m`'s byte at depth `k` lies in a `PackedI8K4 { r }` panel: groups of four
/// depths, each `r` rows of 4 bytes.
pub(crate) fn k4_offset(r: usize, m: usize, k: usize) -> usize {
    (k / 4) * 4 * r + m * 4 + k % 4
}

/// Where row `m`'s byte at depth `k` lies in a panel of tract's integer packings
/// (`PackedI8K4`, or `PackedFormat` of i8); `None` for any other format.
pub(crate) fn packed_offset(format: &dyn MMMInputFormat, m: usize, k: usize) -> Option<usize> {
    if let Some(f) = format.downcast_ref::<PackedI8K4>() {
        (m < f.r).then_some(k4_offset(f.r, m, k))
    } else if let Some(f) = format.downcast_ref::<PackedFormat>() {
        (f.dt == DatumType::I8 && m < f.r).then_some(k * f.r + m)
    } else {
        None
    }
}

/// The `mn` rows of `k` bytes of an eager packed i8 matrix, row-major; `None` when its
/// packing is not one of tract's integer packings.
pub(crate) fn unpack_rows(value: &dyn MMMInputValue) -> Option<Vec<i8>> {
    let (rows, k) = (value.mn(), value.k());
    if value.scratch_panel_buffer_layout().is_some() {
        return None;
    }
    let r = if let Some(f) = value.format().downcast_ref::<PackedI8K4>() {
        f.r
    } else {
        value.format().downcast_ref::<PackedFormat>()?.r
    };
    let mut out = Vec::with_capacity(rows * k);
    for row in 0..rows {
        let panel = value.panel_bytes(row / r, None).ok()?;
        for kk in 0..k {
            let at = packed_offset(value.format(), row % r, kk)?;
            // SAFETY: an eager panel holds its `r` rows at every depth up to `k`.
            out.push(unsafe { *(panel.add(at) as *const i8) });
        }
    }
    Some(out)
}

/// Bytes of patch matrix [`PackPatches::pack`] builds at a time (at least one band).
const CHUNK_BYTES: usize = 256 * 1024;

/// The patch rows of a layer whose kernel is taller than its vertical stride, with unit
/// vertical dilation (every 3x3 or 5x5 stride-2 layer, and the unpadded stride-1 ones that
/// [`Shifts`] does not take): tap row `ky` of output row `oy` reads input row
/// `oy · sy + ky − top`, which is what tap row `ky − sy` reads for output row `oy + 1`. So
/// the patch row of tap `[ky, kx]` is that of tap `[ky mod sy, kx]` from `ky / sy` output
/// rows on: those `sy · kw` rows per channel are gathered once, over the band's rows and
/// the `(kh − 1) / sy` after it, and every patch row is one copy out of them. (A gather per
/// patch row and output row cost the qformats network's strided stem and branch about as
/// many instructions under qemu, cortex-a72, as their products.) The gathered rows are
/// strided runs of the band's input rows copied once inside their padding.
struct RowReuse {
    /// Kernel rows and columns.
    kernel: [usize; 2],
    /// Vertical stride.
    sy: usize,
}

impl RowReuse {
    /// For a layer of `g` whose patches are `k` deep, when it is such a layer.
    fn of(g: &Geometry, k: usize) -> Option<RowReuse> {
        let [kh, kw] = g.kernel;
        let sy = g.stride[0];
        let rows = g.dilation[0] == 1 && sy >= 1 && kh > sy && g.out_width > 0;
        (rows && k == g.channels * kh * kw).then_some(RowReuse {
            kernel: g.kernel,
            sy,
        })
    }

    /// Patch rows of output rows `oy0..oy0 + rows_out` into `matrix` (`k` rows, `cols`
    /// bytes apart, each padded with zeros past the band's positions).
    #[allow(clippy::too_many_arguments)]
    fn fill(
        &self,
        g: &Geometry,
        x: &[i8],
        pad: i8,
        oy0: usize,
        rows_out: usize,
        matrix: &mut [i8],
        cols: usize,
    ) {
        let ([kh, kw], sy) = (self.kernel, self.sy);
        let ([_, sx], [_, dx], [top, left]) = (g.stride, g.dilation, g.pad);
        let (h, w, wo) = (g.height, g.width, g.out_width);
        let n = rows_out * wo;
        let channels = g.channels;
        // Each gathered row spans the band and the output rows its deeper taps reach.
        let span_rows = rows_out + (kh - 1) / sy;
        let span = span_rows * wo;
        // The input rows those read, inside their padding (`pad` outside the image, to the
        // last column a tap reads): the gathered rows are then strided runs of them, with
        // no edge to test per row (the edges cost more than the bytes on 14- and 28-wide
        // rows).
        let width = (left + w).max((wo - 1) * sx + (kw - 1) * dx + 1);
        let band_rows = span_rows * sy;
        let first_row = (oy0 * sy) as isize - top as isize;
        IMAGES.with_borrow_mut(|images| {
            // Every channel's padded band one after the other, and the gathered rows tap by
            // tap, each tap's channels one after the other: row j of channel ci is then row
            // `ci · span_rows + j` of both, so one `strided_rows` gathers a tap of every
            // channel (a call per channel and tap cost the qformats network's strided stem
            // and branch a fifth of their packing's instructions on cortex-a76, in calls).
            // Room past both for the whole-block copies of `strided_rows`.
            let (bases_len, padded_len) = (
                sy * kw * channels * span + ROWS_SLACK,
                channels * band_rows * width + ROWS_SLACK,
            );
            if images.len() < bases_len + padded_len {
                images.resize(bases_len + padded_len, 0);
            }
            let (bases, padded) = images.split_at_mut(bases_len);
            let padded = &mut padded[..padded_len];
            // The band's rows inside the image: padded rows `first..last`.
            let first = (-first_row).clamp(0, band_rows as isize) as usize;
            let last = (h as isize - first_row).clamp(first as isize, band_rows as isize) as usize;
            for ci in 0..channels {
                let padded = &mut padded[ci * band_rows * width..];
                if first < last {
                    let iy = (first_row + first as isize) as usize;
                    let from = &x[ci * h * w + iy * w..];
                    let to = &mut padded[first * width + left..];
                    strided_rows(from, w, 1, (to, width), w, last - first);
                }
                // The padding after the copies, whose whole blocks reach past each row.
                pad_edge(&mut padded[..first * width], pad);
                pad_edge(&mut padded[last * width..band_rows * width], pad);
                for row in padded[first * width..last * width].chunks_exact_mut(width) {
                    pad_edge(&mut row[..left], pad);
                    pad_edge(&mut row[left + w..], pad);
                }
            }
            for tap in 0..sy * kw {
                let (ty, kx) = (tap / kw, tap % kw);
                let from = &padded[ty * width + kx * dx..];
                let to = &mut bases[tap * channels * span..];
                strided_rows(from, sy * width, sx, (to, wo), wo, channels * span_rows);
            }
            let bases = &bases[..sy * kw * channels * span];
            copy_patch_rows(
                matrix,
                (cols, n),
                [channels, kh, kw],
                bases,
                |ci, ky, kx| ((ky % sy) * kw + kx) * channels * span + ci * span + (ky / sy) * wo,
            );
        });
    }
}

/// The patch matrix's rows, `cols` bytes apart, in the order of the taps (channel, kernel
/// row, kernel column) of `[channels, kh, kw]`: each the `n` bytes of `src` from
/// `from(channel, ky, kx)` on, then zeros to the row's end.
fn copy_patch_rows(
    matrix: &mut [i8],
    (cols, n): (usize, usize),
    [channels, kh, kw]: [usize; 3],
    src: &[i8],
    from: impl Fn(usize, usize, usize) -> usize,
) {
    let mut rows = matrix.chunks_exact_mut(cols);
    for ci in 0..channels {
        for ky in 0..kh {
            for kx in 0..kw {
                let Some(row) = rows.next() else { return };
                let at = from(ci, ky, kx);
                row[..n].copy_from_slice(&src[at..at + n]);
                pad_edge(&mut row[n..], 0);
            }
        }
    }
}

/// [`strided_rows`]' whole blocks: `rows` rows of `blocks` blocks (`BLOCKS` of them when
/// not 0) at stride `STRIDE` (1 or 2).
///
/// # Safety
/// Each row's blocks, `16 · STRIDE · blocks` bytes read from `src + j · from_pitch` and
/// `16 · blocks` written at `dst + j · pitch`, are inside their buffers.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
unsafe fn whole_rows<const STRIDE: usize, const BLOCKS: usize>(
    (mut src, from_pitch, mut dst, pitch, rows): (*const i8, usize, *mut i8, usize, usize),
    blocks: usize,
) {
    let blocks = if BLOCKS > 0 { BLOCKS } else { blocks };
    for _ in 0..rows {
        // SAFETY: the caller's contract; SSE2 and NEON are part of their architectures.
        unsafe {
            for b in 0..blocks {
                if STRIDE == 1 {
                    simd::copy16(src.add(16 * b), dst.add(16 * b));
                } else {
                    simd::even_bytes16(src.add(32 * b), dst.add(16 * b));
                }
            }
            (src, dst) = (src.add(from_pitch), dst.add(pitch));
        }
    }
}

/// Bytes past the end of the buffers [`strided_rows`] writes and reads, for its whole
/// blocks.
const ROWS_SLACK: usize = 64;

/// `rows` rows of [`take_strided`]: `to[j · pitch + i] = from[j · from_pitch + i · stride]`
/// for `i < len`, at strides 1 and 2 in whole blocks of 16 outputs per row (a 16-byte copy,
/// or an LD2 of 32 bytes), which write past each row's `len` up to the next multiple of 16
/// (the place of the next row, written after it, or bytes the caller leaves room for) and
/// read up to `stride` times that from each row's start. Rows whose blocks would leave a
/// slice are copied exactly. (A [`take_strided`] per row, with its tails and tests, cost the
/// qformats network's stride-2 stem and branch 60 K instructions per inference under qemu,
/// cortex-a76: a third of its products.)
pub(crate) fn strided_rows(
    from: &[i8],
    from_pitch: usize,
    stride: usize,
    (to, pitch): (&mut [i8], usize),
    len: usize,
    rows: usize,
) {
    let blocks = len.div_ceil(16);
    // The rows whose blocks are inside both slices, by arithmetic rather than per row.
    let within = |slice: usize, pitch: usize, reach: usize| match slice.checked_sub(reach) {
        None => 0,
        Some(_) if pitch == 0 => rows,
        Some(room) => room / pitch + 1,
    };
    let whole = if matches!(stride, 1 | 2) && blocks > 0 {
        rows.min(within(from.len(), from_pitch, 16 * stride * blocks))
            .min(within(to.len(), pitch, 16 * blocks))
    } else {
        0
    };
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let rows = (from.as_ptr(), from_pitch, to.as_mut_ptr(), pitch, whole);
        // SAFETY: `whole` rows' blocks read and write inside `from` and `to` (above).
        // Rows of one to four blocks (the narrow layers') have their blocks unrolled.
        unsafe {
            match (stride, blocks) {
                (1, 1) => whole_rows::<1, 1>(rows, 1),
                (1, 2) => whole_rows::<1, 2>(rows, 2),
                (1, 3) => whole_rows::<1, 3>(rows, 3),
                (1, 4) => whole_rows::<1, 4>(rows, 4),
                (1, _) => whole_rows::<1, 0>(rows, blocks),
                (_, 1) => whole_rows::<2, 1>(rows, 1),
                (_, 2) => whole_rows::<2, 2>(rows, 2),
                (_, 3) => whole_rows::<2, 3>(rows, 3),
                (_, 4) => whole_rows::<2, 4>(rows, 4),
                _ => whole_rows::<2, 0>(rows, blocks),
            }
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let whole = 0;
    for j in whole..rows {
        let (src, dst) = (j * from_pitch, j * pitch);
        if stride == 1 {
            to[dst..dst + len].copy_from_slice(&from[src..src + len]);
        } else {
            take_strided(&from[src..], stride, &mut to[dst..dst + len]);
        }
    }
}

thread_local! {
    /// The patch matrix of [`PackPatches::pack`] (about [`CHUNK_BYTES`]), kept between
    /// inferences.
    static SCRATCH: std::cell::RefCell<Vec<i8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The band images of [`Shifts::fill`], one per kernel column, or the gathered rows of
    /// [`RowReuse::fill`], kept between bands.
    static IMAGES: std::cell::RefCell<Vec<i8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Row `[ky, kx]` of the patches of one input channel `plane` for the output rows from
/// `oy0` on (`row` holds whole output rows), `pad` outside the image. Inlined into its
/// callers' loops over the rows: a call per row, where the compiler chose one, was 1.9 M of
/// the ResNet-18-style network's 400 M instructions under qemu (cortex-a72).
#[inline(always)]
fn gather(g: &Geometry, plane: &[i8], pad: i8, [ky, kx]: [usize; 2], oy0: usize, row: &mut [i8]) {
    let wo = g.out_width;
    let (w, h) = (g.width as isize, g.height as isize);
    let sx = g.stride[1] as isize;
    // Input column of output column ox: ox * sx + x0. Columns lead..end read the image.
    let (x0, lead, end) = g.columns(kx);
    let input_row =
        |oy: usize| ((oy0 + oy) * g.stride[0] + ky * g.dilation[0]) as isize - g.pad[0] as isize;

    if sx == 1 && g.stride[0] == 1 && wo == g.width {
        // Output rows are input rows: one copy of the valid rows, shifted by x0 (the columns
        // that wrap across a row boundary are the padded ones and are overwritten below).
        let ho = row.len() / wo;
        // The first output row whose input row is at least `bound` (by arithmetic: the
        // searches this replaced cost more than the copy on the ResNet's narrow bands).
        let from = |bound: isize| {
            let behind = bound - input_row(0);
            let sy = g.stride[0] as isize;
            let rows = if behind <= 0 {
                0
            } else {
                (behind + sy - 1) / sy
            };
            (rows as usize).min(ho)
        };
        let first = from(0);
        let last = from(h).max(first);
        // Most bands have no padding rows: no call to memset for them.
        pad_edge(&mut row[..first * wo], pad);
        pad_edge(&mut row[last * wo..], pad);
        if first < last {
            let from = input_row(first) * w + x0;
            let (t0, t1) = (first * wo, last * wo);
            // Clip the flat source range to the plane; clipped bytes are padding columns.
            let skip = (-from).max(0) as usize;
            let len = (t1 - t0 - skip).min((plane.len() as isize - from - skip as isize) as usize);
            let src = (from + skip as isize) as usize;
            row[t0 + skip..t0 + skip + len].copy_from_slice(&plane[src..src + len]);
            // A 1x1 tap (or any whose columns all read the image) has no edge to pad.
            if lead > 0 || end < wo {
                for out in row[t0..t1].chunks_exact_mut(wo) {
                    pad_edge(&mut out[..lead], pad);
                    pad_edge(&mut out[end..], pad);
                }
            }
        }
        return;
    }

    for (oy, out) in row.chunks_exact_mut(wo).enumerate() {
        let iy = input_row(oy);
        if iy < 0 || iy >= h {
            out.fill(pad);
            continue;
        }
        let line = &plane[iy as usize * g.width..(iy as usize + 1) * g.width];
        pad_edge(&mut out[..lead], pad);
        if sx == 1 {
            let start = (lead as isize + x0) as usize;
            out[lead..end].copy_from_slice(&line[start..start + end - lead]);
        } else {
            let start = (lead as isize * sx + x0) as usize;
            take_strided(&line[start..], sx as usize, &mut out[lead..end]);
        }
        pad_edge(&mut out[end..], pad);
    }
}

/// `out[i] = src[i * stride]` for every `i` of `out` (`src` holds them all). Stride 2
/// (every stride-2 stem and downsampling convolution) deinterleaves 16, then 8 bytes at a
/// time. A byte-at-a-time iterator cost about 15 instructions per byte under qemu
/// (cortex-a72), a fifth of a small MobileNetV3-style network's int8 inference.
pub(crate) fn take_strided(src: &[i8], stride: usize, out: &mut [i8]) {
    let n = out.len();
    if n == 0 {
        return;
    }
    assert!(stride >= 1 && (n - 1) * stride < src.len());
    let mut done = 0;
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    if stride == 2 {
        // Each step reads 32 source bytes: only while they are all inside `src`.
        while done + 16 <= n && 2 * done + 32 <= src.len() {
            // SAFETY: the loop condition keeps the 32 bytes read and 16 written in bounds;
            // SSE2 and NEON are part of their architectures.
            unsafe { simd::even_bytes16(src.as_ptr().add(2 * done), out.as_mut_ptr().add(done)) };
            done += 16;
        }
        // Rows of 8 to 15 outputs (the narrow layers' strided rows), or a row's tail.
        if done + 8 <= n && 2 * done + 16 <= src.len() {
            // SAFETY: as above, with 16 bytes read and 8 written.
            unsafe { simd::even_bytes8(src.as_ptr().add(2 * done), out.as_mut_ptr().add(done)) };
            done += 8;
        }
        // The row's last 16 outputs again, from one byte earlier (their bytes the odd
        // ones): `src` may end at the last byte taken, where an even-aligned block would
        // read one past it. Bytes written twice get the same values. (A byte loop did
        // these, about 1 M instructions per inference of the ResNet-18-style network under
        // qemu, cortex-a72.)
        if done < n && n > 16 {
            // SAFETY: reads src[2n - 33..2n - 1], inside `src` (asserted above to hold
            // 2n - 1 bytes), and writes out[n - 16..n].
            unsafe {
                simd::odd_bytes16(src.as_ptr().add(2 * n - 33), out.as_mut_ptr().add(n - 16))
            };
            return;
        }
        // The same for rows of 9 to 16 outputs (14-wide layers), with the last 8.
        if done < n && n > 8 {
            // SAFETY: reads src[2n - 17..2n - 1] and writes out[n - 8..n], as above.
            unsafe { simd::odd_bytes8(src.as_ptr().add(2 * n - 17), out.as_mut_ptr().add(n - 8)) };
            return;
        }
    }
    let src = &src[done * stride..];
    for (i, v) in out[done..].iter_mut().enumerate() {
        *v = src[i * stride];
    }
}

/// `fill(pad)` for the one or two padding columns at the edge of a row (3x3 and 5x5
/// kernels), or for an empty run, without a call to memset.
#[inline(always)]
fn pad_edge(out: &mut [i8], pad: i8) {
    match out {
        [] => {}
        [a] => *a = pad,
        [a, b] => (*a, *b) = (pad, pad),
        wide => wide.fill(pad),
    }
}

/// `row[..len]` from `src`, the rest of `row` zeros: for the 8- and 16-byte rows of a
/// panel's last positions, one load, a mask and one store where `src` holds the whole row
/// (it does but at the input's end), rather than a copy and a fill of a few bytes each
/// (calls of memcpy and memset, about 1 M instructions per inference of MobileNetV2's
/// 14- and 7-wide layers under qemu).
#[inline]
fn head_of(src: &[i8], len: usize, row: &mut [i8]) {
    if !(masked_head::<8>(src, len, row) || masked_head::<16>(src, len, row)) {
        row[..len].copy_from_slice(&src[..len]);
        row[len..].fill(0);
    }
}

/// [`head_of`] for a row of `N` (at most 16) bytes, when `src` holds `N`; false otherwise.
fn masked_head<const N: usize>(src: &[i8], len: usize, row: &mut [i8]) -> bool {
    let (Ok(row), Some(src)) = (<&mut [i8; N]>::try_from(row), src.get(..N)) else {
        return false;
    };
    let mut bytes = [0u8; 16];
    for (b, &s) in bytes.iter_mut().zip(src) {
        *b = s as u8;
    }
    let keep = 1u128
        .checked_shl(8 * len as u32)
        .map_or(u128::MAX, |bit| bit - 1);
    let kept = (u128::from_le_bytes(bytes) & keep).to_le_bytes();
    for (d, &b) in row.iter_mut().zip(&kept) {
        *d = b as i8;
    }
    true
}

/// Whether `matrix` holds `rows` rows, `cols` bytes apart, of at least `end` bytes each
/// (the last row may end there).
fn holds_rows(matrix: &[i8], cols: usize, rows: usize, end: usize) -> bool {
    end <= cols && (rows == 0 || (rows - 1) * cols + end <= matrix.len())
}

/// One K4 panel: for each of `groups` groups of four k rows of `matrix` (rows `cols` bytes
/// apart), `panel[group * 4r + m * 4 + i] = matrix[4 * group + i][m0 + m]`.
fn interleave_panel(
    matrix: &[i8],
    cols: usize,
    groups: usize,
    m0: usize,
    r: usize,
    panel: &mut [i8],
) {
    assert!(holds_rows(matrix, cols, 4 * groups, m0 + r) && panel.len() >= groups * 4 * r);
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    if r.is_multiple_of(simd::WIDTH) {
        // Pointers stepped per group rather than slices (a bounds check per group).
        let mut out = panel.as_mut_ptr();
        // SAFETY (the assembly loop and the loops below): SSE2 and NEON are part of their
        // architectures; the assertion above keeps the four rows' columns m0..m0 + r of
        // every group and the groups * 4r bytes written in bounds.
        let mut rows = unsafe { matrix.as_ptr().add(m0) };
        // A panel of one SIMD width on NEON (the dot tiles' 8 positions): one assembly loop
        // of a four-row load and store per group.
        #[cfg(target_arch = "aarch64")]
        if r == simd::WIDTH {
            unsafe { simd::interleave4_groups(rows, cols, groups, out) };
            return;
        }
        for _ in 0..groups {
            for c in (0..r).step_by(simd::WIDTH) {
                unsafe {
                    simd::interleave4(rows.add(c), cols, out);
                    out = out.add(4 * simd::WIDTH);
                }
            }
            rows = unsafe { rows.add(4 * cols) };
        }
        return;
    }
    for g in 0..groups {
        let rows: [&[i8]; 4] = std::array::from_fn(|i| &matrix[(g * 4 + i) * cols + m0..][..r]);
        let block = &mut panel[g * 4 * r..(g + 1) * 4 * r];
        for (m, lane) in block.chunks_exact_mut(4).enumerate() {
            lane.copy_from_slice(&[rows[0][m], rows[1][m], rows[2][m], rows[3][m]]);
        }
    }
}

/// One K16 panel: for each of `groups` groups of 16 k rows of `matrix` (rows `cols` bytes
/// apart), `panel[group * 16r + m * 16 + i] = matrix[16 * group + i][m0 + m]`.
fn interleave16_panel(
    matrix: &[i8],
    cols: usize,
    groups: usize,
    m0: usize,
    r: usize,
    panel: &mut [i8],
) {
    assert!(holds_rows(matrix, cols, 16 * groups, m0 + r) && panel.len() >= groups * 16 * r);
    #[cfg(target_arch = "aarch64")]
    if r == 8 {
        // SAFETY: the assertion above keeps the groups' 16 rows' columns m0..m0 + 8 and the
        // groups * 128 bytes written in bounds.
        unsafe {
            simd::interleave16_groups(matrix.as_ptr().add(m0), cols, groups, panel.as_mut_ptr())
        };
        return;
    }
    for g in 0..groups {
        let block = &mut panel[g * 16 * r..(g + 1) * 16 * r];
        for (m, lane) in block.chunks_exact_mut(16).enumerate() {
            for (i, v) in lane.iter_mut().enumerate() {
                *v = matrix[(g * 16 + i) * cols + m0 + m];
            }
        }
    }
}

/// One pairs panel (kernels/pairs.rs): for each of `groups` groups of four k rows of
/// `matrix` (rows `cols` bytes apart), `panel[pairs::offset(m, 4 * group + i)] =
/// matrix[4 * group + i][m0 + m]` for the panel's 16 positions.
fn pairs_panel(matrix: &[i8], cols: usize, groups: usize, m0: usize, panel: &mut [i8]) {
    let r = pairs::MR;
    assert!(holds_rows(matrix, cols, 4 * groups, m0 + r) && panel.len() >= groups * 4 * r);
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: the assertion above keeps the groups' four rows' columns m0..m0 + 16 and
        // the groups * 64 bytes written in bounds.
        unsafe { simd::pairs_groups(matrix.as_ptr().add(m0), cols, groups, panel.as_mut_ptr()) };
    }
    #[cfg(not(target_arch = "aarch64"))]
    for kk in 0..4 * groups {
        for m in 0..r {
            panel[pairs::offset(m, kk)] = matrix[kk * cols + m0 + m];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    /// Columns per [`interleave4`].
    pub(super) const WIDTH: usize = 16;

    /// 16 bytes from `src` to `out`, one load and one store.
    ///
    /// # Safety
    /// `src` holds 16 bytes, `out` 16.
    #[inline(always)]
    pub(super) unsafe fn copy16(src: *const i8, out: *mut i8) {
        unsafe { _mm_storeu_si128(out as *mut __m128i, _mm_loadu_si128(src as *const __m128i)) }
    }

    /// `out[i] = src[2i]` for 16 bytes: the low byte of each 16-bit lane, packed.
    ///
    /// # Safety
    /// `src` holds 32 bytes, `out` 16.
    #[inline(always)]
    pub(super) unsafe fn even_bytes16(src: *const i8, out: *mut i8) {
        unsafe {
            let low = _mm_set1_epi16(0x00ff);
            let a = _mm_and_si128(_mm_loadu_si128(src as *const __m128i), low);
            let b = _mm_and_si128(_mm_loadu_si128(src.add(16) as *const __m128i), low);
            // Lanes are 0..=255 after the mask, so the unsigned saturation changes nothing.
            _mm_storeu_si128(out as *mut __m128i, _mm_packus_epi16(a, b));
        }
    }

    /// `out[i] = src[2i + 1]` for 16 bytes: the high byte of each 16-bit lane, packed.
    ///
    /// # Safety
    /// `src` holds 32 bytes, `out` 16.
    #[inline(always)]
    pub(super) unsafe fn odd_bytes16(src: *const i8, out: *mut i8) {
        unsafe {
            let a = _mm_srli_epi16(_mm_loadu_si128(src as *const __m128i), 8);
            let b = _mm_srli_epi16(_mm_loadu_si128(src.add(16) as *const __m128i), 8);
            _mm_storeu_si128(out as *mut __m128i, _mm_packus_epi16(a, b));
        }
    }

    /// `out[i] = src[2i + 1]` for 8 bytes.
    ///
    /// # Safety
    /// `src` holds 16 bytes, `out` 8.
    #[inline(always)]
    pub(super) unsafe fn odd_bytes8(src: *const i8, out: *mut i8) {
        unsafe {
            let a = _mm_srli_epi16(_mm_loadu_si128(src as *const __m128i), 8);
            let packed = _mm_packus_epi16(a, _mm_setzero_si128());
            _mm_storel_epi64(out as *mut __m128i, packed);
        }
    }

    /// `out[i] = src[2i]` for 8 bytes.
    ///
    /// # Safety
    /// `src` holds 16 bytes, `out` 8.
    #[inline(always)]
    pub(super) unsafe fn even_bytes8(src: *const i8, out: *mut i8) {
        unsafe {
            let a = _mm_and_si128(_mm_loadu_si128(src as *const __m128i), _mm_set1_epi16(0xff));
            let packed = _mm_packus_epi16(a, _mm_setzero_si128());
            _mm_storel_epi64(out as *mut __m128i, packed);
        }
    }

    /// `out[m * 4 + i] = row i [m]` for 16 columns of four rows `cols` bytes apart: two
    /// rounds of unpacking.
    ///
    /// # Safety
    /// The four rows hold 16 bytes from `row`, `out` 64.
    #[inline(always)]
    pub(super) unsafe fn interleave4(row: *const i8, cols: usize, out: *mut i8) {
        unsafe {
            let load = |i: usize| _mm_loadu_si128(row.add(i * cols) as *const __m128i);
            let (a, b, c, d) = (load(0), load(1), load(2), load(3));
            let (ab_lo, ab_hi) = (_mm_unpacklo_epi8(a, b), _mm_unpackhi_epi8(a, b));
            let (cd_lo, cd_hi) = (_mm_unpacklo_epi8(c, d), _mm_unpackhi_epi8(c, d));
            let o = out as *mut __m128i;
            _mm_storeu_si128(o, _mm_unpacklo_epi16(ab_lo, cd_lo));
            _mm_storeu_si128(o.add(1), _mm_unpackhi_epi16(ab_lo, cd_lo));
            _mm_storeu_si128(o.add(2), _mm_unpacklo_epi16(ab_hi, cd_hi));
            _mm_storeu_si128(o.add(3), _mm_unpackhi_epi16(ab_hi, cd_hi));
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod simd {
    use std::arch::aarch64::*;

    /// Columns per [`interleave4`].
    pub(super) const WIDTH: usize = 8;

    /// 16 bytes from `src` to `out`, one load and one store.
    ///
    /// # Safety
    /// `src` holds 16 bytes, `out` 16.
    #[inline(always)]
    pub(super) unsafe fn copy16(src: *const i8, out: *mut i8) {
        unsafe { vst1q_s8(out, vld1q_s8(src)) }
    }

    /// `out[i] = src[2i]` for 16 bytes: one LD2 deinterleaves even and odd bytes.
    ///
    /// # Safety
    /// `src` holds 32 bytes, `out` 16.
    #[inline(always)]
    pub(super) unsafe fn even_bytes16(src: *const i8, out: *mut i8) {
        unsafe { vst1q_s8(out, vld2q_s8(src).0) }
    }

    /// `out[i] = src[2i + 1]` for 16 bytes.
    ///
    /// # Safety
    /// `src` holds 32 bytes, `out` 16.
    #[inline(always)]
    pub(super) unsafe fn odd_bytes16(src: *const i8, out: *mut i8) {
        unsafe { vst1q_s8(out, vld2q_s8(src).1) }
    }

    /// `out[i] = src[2i + 1]` for 8 bytes.
    ///
    /// # Safety
    /// `src` holds 16 bytes, `out` 8.
    #[inline(always)]
    pub(super) unsafe fn odd_bytes8(src: *const i8, out: *mut i8) {
        unsafe { vst1_s8(out, vld2_s8(src).1) }
    }

    /// `out[i] = src[2i]` for 8 bytes.
    ///
    /// # Safety
    /// `src` holds 16 bytes, `out` 8.
    #[inline(always)]
    pub(super) unsafe fn even_bytes8(src: *const i8, out: *mut i8) {
        unsafe { vst1_s8(out, vld2_s8(src).0) }
    }

    /// `out[m * 4 + i] = row i [m]` for 8 columns of four rows `cols` bytes apart: one ST4.
    ///
    /// # Safety
    /// The four rows hold 8 bytes from `row`, `out` 32.
    #[inline(always)]
    pub(super) unsafe fn interleave4(row: *const i8, cols: usize, out: *mut i8) {
        unsafe {
            let load = |i: usize| vld1_s8(row.add(i * cols));
            vst4_s8(out, int8x8x4_t(load(0), load(1), load(2), load(3)));
        }
    }

    /// One loop of assembly over `groups` groups of rows (none when `groups` is 0): `$body`
    /// loads a group's rows from `{row}` (post-indexed by `{cols}`) and stores the group's
    /// block at `{out}` (post-indexed); `$clobbers` are the vector registers it uses.
    /// The caller's safety contract covers every group's reads and writes.
    macro_rules! groups_loop {
        (($row:expr, $cols:expr, $groups:expr, $out:expr), [$($body:literal),+ $(,)?], $($clobbers:tt)+) => {
            if $groups > 0 {
                // SAFETY: the caller's contract (see the macro's doc).
                unsafe {
                    std::arch::asm!(
                        "2:",
                        $($body,)+
                        "subs {groups}, {groups}, #1",
                        "b.ne 2b",
                        row = inout(reg) $row => _,
                        cols = in(reg) $cols,
                        groups = inout(reg) $groups => _,
                        out = inout(reg) $out => _,
                        $($clobbers)+
                        options(nostack),
                    )
                }
            }
        };
    }

    /// [`interleave4`] for `groups` groups of four rows, one after the other, into
    /// consecutive 32-byte blocks of `out`, as one loop of assembly: four post-indexed
    /// loads and one ST4 per group (LLVM added each row's address apart, 11 instructions
    /// per group against 7).
    ///
    /// # Safety
    /// The `4 · groups` rows hold 8 bytes from `row`, `out` `32 · groups`.
    #[inline(always)]
    pub(super) unsafe fn interleave4_groups(
        row: *const i8,
        cols: usize,
        groups: usize,
        out: *mut i8,
    ) {
        groups_loop!(
            (row, cols, groups, out),
            [
                "ld1 {{v0.8b}}, [{row}], {cols}",
                "ld1 {{v1.8b}}, [{row}], {cols}",
                "ld1 {{v2.8b}}, [{row}], {cols}",
                "ld1 {{v3.8b}}, [{row}], {cols}",
                "st4 {{v0.8b-v3.8b}}, [{out}], #32",
            ],
            out("v0") _, out("v1") _, out("v2") _, out("v3") _,
        );
    }

    /// A pairs panel (kernels/pairs.rs) of 16 columns of `groups` groups of four rows
    /// `cols` bytes apart, as one loop of assembly: per group four post-indexed loads, rows
    /// 0 and 1 and rows 2 and 3 zipped into byte pairs (eight positions per register), and
    /// two ST2 of 64-bit lanes, which put four positions' k 0-1 before their k 2-3.
    ///
    /// # Safety
    /// The `4 · groups` rows hold 16 bytes from `row`, `out` `64 · groups`.
    #[inline(always)]
    pub(super) unsafe fn pairs_groups(row: *const i8, cols: usize, groups: usize, out: *mut i8) {
        groups_loop!(
            (row, cols, groups, out),
            [
                "ld1 {{v0.16b}}, [{row}], {cols}",
                "ld1 {{v1.16b}}, [{row}], {cols}",
                "ld1 {{v2.16b}}, [{row}], {cols}",
                "ld1 {{v3.16b}}, [{row}], {cols}",
                "zip1 v4.16b, v0.16b, v1.16b",
                "zip1 v5.16b, v2.16b, v3.16b",
                "zip2 v6.16b, v0.16b, v1.16b",
                "zip2 v7.16b, v2.16b, v3.16b",
                "st2 {{v4.2d, v5.2d}}, [{out}], #32",
                "st2 {{v6.2d, v7.2d}}, [{out}], #32",
            ],
            out("v0") _, out("v1") _, out("v2") _, out("v3") _,
            out("v4") _, out("v5") _, out("v6") _, out("v7") _,
        );
    }

    /// `out[g · 128 + m · 16 + i] = row 16g + i [m]` for 8 columns of `groups` groups of
    /// 16 rows `cols` bytes apart (a K16 panel of 8 positions), as one loop of assembly:
    /// per group 16 post-indexed loads, the rows' pairs zipped into 2-byte groups and those
    /// into 4-byte groups (ZIP of the low halves), and two ST4 of 32-bit lanes. LLVM added
    /// each row's address apart and kept the loop's indices: 65 instructions per group
    /// against 44.
    ///
    /// # Safety
    /// The `16 · groups` rows hold 8 bytes from `row`, `out` `128 · groups`.
    #[inline(always)]
    pub(super) unsafe fn interleave16_groups(
        row: *const i8,
        cols: usize,
        groups: usize,
        out: *mut i8,
    ) {
        groups_loop!(
            (row, cols, groups, out),
            [
                "ld1 {{v0.8b}}, [{row}], {cols}",
                "ld1 {{v1.8b}}, [{row}], {cols}",
                "ld1 {{v2.8b}}, [{row}], {cols}",
                "ld1 {{v3.8b}}, [{row}], {cols}",
                "ld1 {{v4.8b}}, [{row}], {cols}",
                "ld1 {{v5.8b}}, [{row}], {cols}",
                "ld1 {{v6.8b}}, [{row}], {cols}",
                "ld1 {{v7.8b}}, [{row}], {cols}",
                "ld1 {{v8.8b}}, [{row}], {cols}",
                "ld1 {{v9.8b}}, [{row}], {cols}",
                "ld1 {{v10.8b}}, [{row}], {cols}",
                "ld1 {{v11.8b}}, [{row}], {cols}",
                "ld1 {{v12.8b}}, [{row}], {cols}",
                "ld1 {{v13.8b}}, [{row}], {cols}",
                "ld1 {{v14.8b}}, [{row}], {cols}",
                "ld1 {{v15.8b}}, [{row}], {cols}",
                "zip1 v16.8b, v0.8b, v1.8b",
                "zip2 v24.8b, v0.8b, v1.8b",
                "zip1 v17.8b, v2.8b, v3.8b",
                "zip2 v25.8b, v2.8b, v3.8b",
                "zip1 v18.8b, v4.8b, v5.8b",
                "zip2 v26.8b, v4.8b, v5.8b",
                "zip1 v19.8b, v6.8b, v7.8b",
                "zip2 v27.8b, v6.8b, v7.8b",
                "zip1 v20.8b, v8.8b, v9.8b",
                "zip2 v28.8b, v8.8b, v9.8b",
                "zip1 v21.8b, v10.8b, v11.8b",
                "zip2 v29.8b, v10.8b, v11.8b",
                "zip1 v22.8b, v12.8b, v13.8b",
                "zip2 v30.8b, v12.8b, v13.8b",
                "zip1 v23.8b, v14.8b, v15.8b",
                "zip2 v31.8b, v14.8b, v15.8b",
                "zip1 v0.8h, v16.8h, v17.8h",
                "zip1 v4.8h, v24.8h, v25.8h",
                "zip1 v1.8h, v18.8h, v19.8h",
                "zip1 v5.8h, v26.8h, v27.8h",
                "zip1 v2.8h, v20.8h, v21.8h",
                "zip1 v6.8h, v28.8h, v29.8h",
                "zip1 v3.8h, v22.8h, v23.8h",
                "zip1 v7.8h, v30.8h, v31.8h",
                "st4 {{v0.4s-v3.4s}}, [{out}], #64",
                "st4 {{v4.4s-v7.4s}}, [{out}], #64",
            ],
            out("v0") _, out("v1") _, out("v2") _, out("v3") _,
            out("v4") _, out("v5") _, out("v6") _, out("v7") _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _,
            out("v16") _, out("v17") _, out("v18") _, out("v19") _,
            out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _,
            out("v28") _, out("v29") _, out("v30") _, out("v31") _,
        );
    }
}

impl Op for PackPatches {
    fn name(&self) -> StaticName {
        "PackPatches".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("k={}, {:?}", self.k, self.layout)])
    }

    tract_onnx::tract_core::op_as_typed_op!();
}

impl EvalOp for PackPatches {
    tract_onnx::tract_core::op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let pad = match inputs.get(1) {
            Some(p) => p.cast_to_scalar::<i32>()? as i8,
            None => 0,
        };
        let g = self.geometry(x.shape())?;
        let batches = x.shape()[0];
        let xs = x.try_as_plain_ram()?;
        let xs = xs.as_slice::<i8>()?;
        let image = g.channels * g.height * g.width;
        let r = self.r();
        let panels = g.n.div_ceil(r);
        let mut values: TVec<Box<dyn MMMInputValue>> = TVec::with_capacity(batches);
        for b in 0..batches {
            let mut blob =
                unsafe { Blob::new_for_size_and_align(panels * self.panel_len, self.align) };
            // K4 panels are written whole (the padding rows of the matrix are zeros); k-major
            // panels end with alignment padding the kernel never reads, zeroed anyway.
            if g.n == 0 || matches!(self.layout, Layout::KMajor { .. }) {
                blob.as_bytes_mut().fill(0);
            }
            if g.n > 0 {
                let out = unsafe {
                    std::slice::from_raw_parts_mut(blob.as_mut_ptr() as *mut i8, blob.len())
                };
                self.pack(&g, &xs[b * image..(b + 1) * image], pad, out);
            }
            values.push(Box::new(EagerPackedInput {
                fact: PackedExoticFact {
                    format: self.format.clone(),
                    k: self.k,
                    mn: g.n.to_dim(),
                },
                packed: Arc::new(blob),
                panel_bytes: if g.n > 0 { self.panel_len } else { 0 },
                mn: g.n,
            }));
        }
        let out =
            PackedMatrixStorage::new_batched(&[batches, 1], values).into_tensor(DatumType::I8);
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for PackPatches {
    tract_onnx::tract_core::as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = self.pool_spec.output_shape(&inputs[0].shape)?;
        let mn = shape.hw_dims().iter().product::<TDim>();
        let fact = PackedExoticFact {
            format: self.format.clone(),
            k: self.k,
            mn,
        };
        Ok(tvec!(DatumType::I8
            .fact([inputs[0].shape[0].clone(), 1.to_dim()])
            .with_exotic_fact(fact)))
    }
}

/// Replaces every `Im2col` node that [`PackPatches`] handles and returns how many.
pub(crate) fn speed_up_patches(model: &mut TypedModel) -> TractResult<usize> {
    crate::rewrite::replace_nodes(model, |model, node| {
        let Some(op) = node.op_as::<Im2Col>() else {
            return Ok(None);
        };
        if let Some(pad) = node.inputs.get(1) {
            let pad = model.outlet_fact(*pad)?;
            if pad.konst.as_ref().and_then(|k| k.as_uniform()).is_none() {
                return Ok(None);
            }
        }
        let input = model.outlet_fact(node.inputs[0])?;
        Ok(PackPatches::for_node(op, &node.outputs[0].fact, input))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::tests::int8_kernels;
    use tract_onnx::tract_core::ops::cnn::PaddingSpec;

    /// The packed bytes of every batch item of an im2col output.
    fn packed_bytes(t: &TValue) -> Vec<Vec<u8>> {
        let storage = t.try_storage_as::<PackedMatrixStorage>().unwrap();
        storage
            .values()
            .iter()
            .map(|v| {
                let eager = v.downcast_ref::<EagerPackedInput>().unwrap();
                eager.packed.as_bytes().to_vec()
            })
            .collect()
    }

    /// (channels, height, width, kernel, stride, dilation, padding)
    type Case = (
        usize,
        usize,
        usize,
        [usize; 2],
        [usize; 2],
        [usize; 2],
        PaddingSpec,
    );

    fn cases() -> Vec<Case> {
        let explicit =
            |b: [usize; 2], a: [usize; 2]| PaddingSpec::Explicit(b[..].into(), a[..].into());
        vec![
            // The default bundle's shapes.
            (
                1,
                128,
                128,
                [3, 3],
                [2, 2],
                [1, 1],
                explicit([1, 1], [1, 1]),
            ),
            (16, 32, 32, [3, 3], [1, 1], [1, 1], explicit([1, 1], [1, 1])),
            (48, 8, 8, [3, 3], [1, 1], [1, 1], explicit([1, 1], [1, 1])),
            // Odd sizes, k not a multiple of 4, panels across output rows.
            (3, 13, 11, [3, 3], [1, 1], [1, 1], explicit([1, 1], [1, 1])),
            (5, 9, 7, [1, 1], [1, 1], [1, 1], PaddingSpec::Valid),
            (2, 17, 19, [5, 3], [2, 3], [1, 1], explicit([2, 0], [1, 2])),
            (4, 15, 15, [3, 3], [1, 1], [2, 2], explicit([2, 2], [2, 2])),
            (3, 10, 12, [2, 4], [3, 1], [2, 1], PaddingSpec::SameUpper),
            (7, 6, 5, [3, 3], [1, 2], [1, 1], PaddingSpec::Valid),
            // Stride 2 with rows of 16-byte steps and a tail, non-square, and the last
            // step's 32 source bytes reaching past the row end.
            (3, 41, 75, [3, 3], [2, 2], [1, 1], explicit([1, 1], [1, 1])),
            (2, 9, 66, [1, 1], [2, 2], [1, 1], PaddingSpec::Valid),
            (2, 7, 64, [3, 3], [1, 2], [1, 1], explicit([0, 0], [1, 1])),
            // Taller kernels than vertical strides (`RowReuse`) with dilated columns, and
            // with column strides of 3 and 4.
            (3, 11, 14, [3, 3], [2, 2], [1, 2], explicit([1, 2], [0, 1])),
            (2, 9, 10, [5, 5], [3, 3], [1, 3], explicit([2, 1], [2, 3])),
            (2, 8, 23, [3, 5], [2, 4], [1, 1], explicit([1, 2], [1, 2])),
            // Several bands of output rows (CHUNK_BYTES), the last one partial.
            (64, 40, 40, [3, 3], [1, 1], [1, 1], explicit([1, 1], [1, 1])),
            (32, 30, 29, [3, 3], [1, 1], [1, 1], explicit([1, 1], [1, 1])),
            // Padding wider than the kernel reaches: rows of pure padding.
            (2, 4, 4, [3, 3], [1, 1], [1, 1], explicit([3, 3], [3, 3])),
            // Stride 1, output rows as wide as input rows (`Shifts`): taps reading only
            // right or only left of the image, 5x5, a kernel row wider than its padding
            // reaches, pure padding rows above and below, one- and two-column images.
            (3, 9, 11, [3, 3], [1, 1], [1, 1], explicit([0, 0], [2, 2])),
            (3, 9, 11, [3, 3], [1, 1], [1, 1], explicit([2, 2], [0, 0])),
            (4, 12, 10, [5, 5], [1, 1], [1, 1], explicit([2, 2], [2, 2])),
            (2, 6, 3, [5, 5], [1, 1], [1, 1], explicit([2, 2], [2, 2])),
            (2, 5, 9, [3, 3], [1, 1], [1, 1], explicit([3, 1], [3, 1])),
            (3, 8, 2, [3, 3], [1, 1], [1, 1], explicit([1, 1], [1, 1])),
            (2, 7, 1, [5, 1], [1, 1], [1, 1], explicit([2, 0], [2, 0])),
            (5, 7, 13, [1, 3], [1, 1], [1, 1], explicit([0, 1], [0, 1])),
            // Pointwise layers packed straight from the input (`pack_pointwise_band`):
            // positions off the panel size, several bands, dilation that changes nothing.
            (16, 9, 7, [1, 1], [1, 1], [1, 1], PaddingSpec::Valid),
            (32, 7, 7, [1, 1], [1, 1], [2, 2], PaddingSpec::Valid),
            (64, 72, 61, [1, 1], [1, 1], [1, 1], PaddingSpec::Valid),
        ]
    }

    /// Both interleaves (K4 of 8 and 16 positions, K16 of 8: the SIMD loops on this CPU)
    /// against their definitions, for panels that start at any column of rows of any
    /// length, with several groups.
    #[test]
    fn panels_interleave_as_defined() {
        for (cols, m0, groups) in [(8, 0, 1), (23, 5, 3), (49, 41, 2), (130, 17, 5)] {
            for r in [8, 16] {
                if m0 + r > cols {
                    continue;
                }
                let matrix: Vec<i8> = (0..16 * groups * cols)
                    .map(|i| (i * 37 % 251) as i8)
                    .collect();
                let mut k4 = vec![0i8; groups * 4 * r];
                interleave_panel(&matrix, cols, groups, m0, r, &mut k4);
                for (at, &v) in k4.iter().enumerate() {
                    let (g, m, i) = (at / (4 * r), at % (4 * r) / 4, at % 4);
                    assert_eq!(v, matrix[(4 * g + i) * cols + m0 + m], "K4 r={r} at {at}");
                }
                let mut k16 = vec![0i8; groups * 16 * r];
                interleave16_panel(&matrix, cols, groups, m0, r, &mut k16);
                for (at, &v) in k16.iter().enumerate() {
                    let (g, m, i) = (at / (16 * r), at % (16 * r) / 16, at % 16);
                    assert_eq!(v, matrix[(16 * g + i) * cols + m0 + m], "K16 r={r} at {at}");
                }
                if r == pairs::MR {
                    // 4 groups of four k per 16 rows; each block's 16 bytes hold four
                    // positions, their k 0-1 interleaved then their k 2-3.
                    let mut panel = vec![0i8; 4 * groups * 64];
                    pairs_panel(&matrix, cols, 4 * groups, m0, &mut panel);
                    for (at, &v) in panel.iter().enumerate() {
                        let (g, quad, half, lane) = (at / 64, at % 64 / 16, at % 16 / 8, at % 8);
                        let (m, k) = (4 * quad + lane / 2, 4 * g + 2 * half + lane % 2);
                        assert_eq!(v, matrix[k * cols + m0 + m], "pairs at {at}");
                    }
                }
            }
        }
    }

    /// A pointwise band's panels straight from the input are the matrix pass's, in every
    /// layout the engine's tiles use and tract's, for bands that start anywhere and end in
    /// a part panel or not.
    #[test]
    fn pointwise_bands_pack_as_the_matrix_pass_does() {
        for (c, h, w) in [(16, 9, 7), (32, 5, 8), (48, 4, 13), (16, 1, 3)] {
            let spec = PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: [1, 1][..].into(),
                padding: PaddingSpec::Valid,
                dilations: None,
                strides: None,
                input_channels: c,
                output_channels: 8,
            };
            let g = Geometry::of(&spec, &[1, c, h, w]);
            assert!(g.is_pointwise());
            let base = PackPatches {
                pool_spec: spec,
                format: Box::new(PackedI8K4 { r: 8, align: 16 }),
                layout: Layout::KMajor { r: 8 },
                k: c,
                panel_len: c * 8,
                align: 16,
            };
            let x: Vec<i8> = (0..c * h * w).map(|i| (i * 37 + 5) as i8).collect();
            for packing in [
                base.c16(),
                base.pairs(),
                base.k4(8),
                base.k4(16),
                base.clone(),
            ] {
                for oy0 in 0..h {
                    for rows in 1..=h - oy0 {
                        let panels = (rows * w).div_ceil(packing.r());
                        let len = panels * packing.panel_len;
                        let (mut direct, mut matrix) = (vec![0i8; len], vec![0i8; len]);
                        packing.pack_band(&g, &x, 0, oy0, rows, &mut direct, None);
                        let mut sums = vec![0i32; rows * w];
                        packing.pack_band(&g, &x, 0, oy0, rows, &mut matrix, Some(&mut sums));
                        assert_eq!(
                            direct,
                            matrix,
                            "{:?}, input {c}x{h}x{w}, rows {oy0}..{}",
                            packing.layout,
                            oy0 + rows
                        );
                    }
                }
            }
        }
    }

    /// The strided copy against its definition: every length around the 16-byte steps,
    /// strides 1 to 4, and sources exactly as long as needed or a little longer.
    #[test]
    fn takes_every_stride_th_byte() {
        for stride in 1..=4 {
            for n in 0..70 {
                for extra in 0..3 {
                    let len = if n == 0 {
                        extra
                    } else {
                        (n - 1) * stride + 1 + extra
                    };
                    let src: Vec<i8> = (0..len).map(|i| (i * 37 + 11) as i8).collect();
                    let mut out = vec![0i8; n];
                    take_strided(&src, stride, &mut out);
                    let expected: Vec<i8> = (0..n).map(|i| src[i * stride]).collect();
                    assert_eq!(
                        out, expected,
                        "stride {stride}, {n} bytes, {len} source bytes"
                    );
                }
            }
        }
    }

    /// The rows of strided copies against their definition: every length around the
    /// 16-byte blocks, strides 1 to 4, pitches wider and narrower than a row's blocks, and
    /// slices ending exactly at the last row (its blocks then copied exactly). Nothing is
    /// written past the last row's blocks.
    #[test]
    fn copies_strided_rows() {
        for stride in 1..=4 {
            for len in 1..40 {
                for rows in 1..4 {
                    for (from_pitch, pitch) in [(len * stride, len), (len * stride + 5, len + 3)] {
                        for exact in [false, true] {
                            let need = (rows - 1) * from_pitch + (len - 1) * stride + 1;
                            let src_len = if exact { need } else { need + 40 };
                            let from: Vec<i8> = (0..src_len).map(|i| (i * 29 + 7) as i8).collect();
                            let to_len = (rows - 1) * pitch + if exact { len } else { len + 30 };
                            let mut to = vec![-99i8; to_len];
                            strided_rows(&from, from_pitch, stride, (&mut to, pitch), len, rows);
                            for j in 0..rows {
                                for i in 0..len {
                                    assert_eq!(
                                        to[j * pitch + i],
                                        from[j * from_pitch + i * stride],
                                        "stride {stride}, len {len}, rows {rows}, pitches {from_pitch}/{pitch}, exact {exact}"
                                    );
                                }
                            }
                            let written = (rows - 1) * pitch + len.next_multiple_of(16);
                            assert!(to.iter().skip(written).all(|&v| v == -99));
                        }
                    }
                }
            }
        }
    }

    /// Every case against tract's own Im2col, with every integer packing tract uses on this
    /// machine, on random bytes, a batch of 2 and a non-zero padding value.
    #[test]
    fn packs_exactly_what_tracts_im2col_packs() {
        let kernels = int8_kernels();
        assert!(!kernels.is_empty());
        let mut seed = 0x9e37_79b9_u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        let mut checked = 0;
        for (mmm, packing) in &kernels {
            for (c, h, w, kernel, stride, dilation, padding) in cases() {
                let spec = PoolSpec {
                    data_format: DataFormat::NCHW,
                    kernel_shape: kernel[..].into(),
                    padding,
                    dilations: Some(dilation[..].into()),
                    strides: Some(stride[..].into()),
                    input_channels: c,
                    output_channels: 8,
                };
                let shape = [2, c, h, w];
                let fact = DatumType::I8.fact(shape);
                let k = c * kernel[0] * kernel[1];
                let theirs = Im2Col::new(spec, 1, k, &fact.shape, mmm.clone(), *packing).unwrap();
                let out_fact = theirs.output_facts(&[&fact]).unwrap().remove(0);
                let ours = PackPatches::for_node(&theirs, &out_fact, &fact)
                    .unwrap_or_else(|| panic!("case {shape:?} {kernel:?} not handled"));
                assert_eq!(ours.output_facts(&[&fact]).unwrap()[0], out_fact);

                let data: Vec<i8> = (0..shape.iter().product()).map(|_| next() as i8).collect();
                let x = Tensor::from_shape(&shape, &data).unwrap();
                let pad = tensor0(-77i32);
                let inputs = || tvec!(x.clone().into_tvalue(), pad.clone().into_tvalue());
                let ctx = EvalContext::out_of_plan();
                let expected = packed_bytes(&theirs.eval(&ctx, inputs()).unwrap()[0]);
                let got = packed_bytes(&ours.eval(&ctx, inputs()).unwrap()[0]);
                // k-major panels are padded to their alignment after the last k row; the
                // kernel never reads those bytes and tract leaves them uninitialised.
                let read = |mut items: Vec<Vec<u8>>| {
                    if let Layout::KMajor { r } = ours.layout {
                        for item in &mut items {
                            for panel in item.chunks_mut(ours.panel_len) {
                                panel[k * r..].fill(0);
                            }
                        }
                    }
                    items
                };
                let (got, expected) = (read(got), read(expected));
                for (item, (got, expected)) in got.iter().zip(&expected).enumerate() {
                    let first_difference = got.iter().zip(expected).position(|(a, b)| a != b);
                    assert!(
                        got.len() == expected.len() && first_difference.is_none(),
                        "{} {:?}: input {shape:?} kernel {kernel:?} stride {stride:?} \
                         dilation {dilation:?}, item {item}: {} vs {} bytes, first difference \
                         at {first_difference:?}: ours {:?}, tract {:?}",
                        mmm.name(),
                        ours.layout,
                        got.len(),
                        expected.len(),
                        &got[..got.len().min(96)],
                        &expected[..expected.len().min(96)],
                    );
                }
                checked += 1;
            }
        }
        assert_eq!(checked, kernels.len() * cases().len());
    }
}
