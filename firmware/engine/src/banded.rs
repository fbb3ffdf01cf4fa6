//! Int8 convolutions run a band of output rows at a time.
//!
//! After the other rewrites an int8 convolution is four nodes: [`PackPatches`] builds the
//! whole packed patch matrix, tract's `OptMatMul` writes the whole i32 accumulator matrix,
//! and [`Requantize`] turns it into bytes. For VGG16's second layer that is 28 MiB of
//! patches and 12 MiB of accumulators live at once, both larger than the layer's input
//! and output together, and four times what the float plan holds (it reads patches lazily
//! inside its matmul). [`BandedConv`] does the same three steps for one band of output rows
//! at a time: pack the band's patches, run the same tract-linalg kernel with the same
//! fused ops on them, requantize the band into its place in the output. The band's
//! patches and accumulators stay near [`BAND_BYTES`] and in cache between the steps.
//!
//! Every output value is computed by the same kernel, from the same packed bytes and fused
//! ops, as in the unbanded plan, and columns of a matmul do not depend on each other, so
//! the output is the same bit for bit. Only one image at a time with one kernel, and fused
//! ops that act per row or on every element alike, is banded; anything else keeps the four
//! nodes.

use std::cell::RefCell;
use std::sync::Arc;

use tract_linalg::mmm::{
    EagerPackedInput, FusedSpec, MMMInputValue, PackedExoticFact, PackedMatrixStorage, ScratchSpace,
};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::change_axes::IntoShape;
use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::matmul::optimized::{MatMulOperand, OptMatMul, ProtoFusedSpec};
use tract_onnx::tract_core::ops::matmul::pack::{DynPackedExoticFact, OptMatMulPack};
use tract_onnx::tract_core::ops::matmul::ModePicker;
use tract_onnx::tract_core::ops::nn::DataFormat;

use rayon::prelude::*;
use tract_onnx::prelude::multithread;

use crate::epilogue::Requantize;
use crate::im2col::{Geometry, PackPatches};
use crate::kernels::{c16, dot, pairs};
use crate::residuals::Residuals;
use crate::zero_point::Folded;

/// Bytes of packed patches plus i32 accumulators per band (at least one band unit).
const BAND_BYTES: usize = 512 * 1024;

/// Multiply-adds of its largest node from which a plan runs on the inference threads at
/// all (lib.rs `Model::executor`): waking a pool costs tens of microseconds per split
/// layer. The default bundle's layers (at most 9.4 M) stay on one thread; with all cores
/// they were slower than with one (RESULTS.md, run 4, and again in run 22's trials when
/// its layers from 4 M were split).
pub(crate) const PLAN_PARALLEL_MACS: usize = 16 << 20;

/// Multiply-adds from which a layer's bands are spread over the threads of a plan that
/// uses them: about 0.05 ms of int8 work on one core here (VNNI), a millisecond on a
/// Cortex-A72. In such a plan the pool's threads stay awake from one split layer to the
/// next; EfficientNet-Lite0's and MobileNetV2's 1x1 layers of 4-16 M had stayed on one
/// thread, and at two threads their int8 inference took 5.2 and 4.2 ms against 4.2 and
/// 3.8 ms with them split (RESULTS.md run 22).
pub(crate) const PARALLEL_MACS: usize = 4 << 20;

/// Patch packing → OptMatMul → [reshape] → Requantize, one band of output rows at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BandedConv {
    pack: PackPatches,
    /// Who computes the products: tract's kernel, or the engine's tiles.
    products: Products,
    requantize: Requantize,
    /// How many of this node's inputs are PackPatches' (the image, and the padding value
    /// when it has one); the others are the matmul's, without the patches (none when the
    /// tiles compute the products: they hold the weights).
    pack_inputs: usize,
    /// Where the patches go among the matmul's inputs.
    patches_slot: usize,
    /// The patches are the matmul's a operand (rows of the kernel's tiles, as tract lays out
    /// a 1x1 convolution), not its b operand (columns, as for im2col convolutions).
    patches_are_a: bool,
    /// The shape of one band's accumulators: the matmul's output shape with every axis but
    /// the channels' at 1, then `pixel_axis` resized per band.
    c_band_shape: TVec<usize>,
    pixel_axis: usize,
    /// Output channels: the accumulators' other dimension.
    channels: usize,
    /// This node's output shape: the channels, then the output positions (`[1, c, n]`,
    /// `[c, n]` or `[c, h, w]`).
    output_shape: TVec<usize>,
    /// Bytes per band; `BAND_BYTES` except in tests.
    band_bytes: usize,
    /// What tract's plan adds to the products after its matmul, when the products do not
    /// hold it.
    after: After,
}

/// What a layer's sums need after its kernel's products: the terms tract's plan adds
/// outside its matmul's kernel, and the products the engine's tiles leave out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct After {
    /// Per channel, constants added after tract's kernel (the tiles fold them into their
    /// starts instead).
    offsets: Option<Vec<i32>>,
    /// The weight zero point's term `− zw · Σ_k x` (zero_point.rs).
    zero_point: Option<ZeroPointTerm>,
    /// The products the tiles' weights leave out (residuals.rs), added from the band's
    /// patch rows: of the weights with the zero point folded in, of the deep pairs form's
    /// lanes.
    residuals: Residuals,
}

/// How a layer's sums get the weight zero point's term.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ZeroPointTerm {
    /// Per channel `zw`, subtracted times the column sums of the band's patches.
    Sums(Vec<i32>),
    /// Folded into the tiles' weights (zero_point.rs [`Folded`]).
    ///
    /// [`Folded`]: crate::zero_point::Folded
    Folded,
}

impl After {
    /// Adds the terms to `acc` (`channels` rows of `n` sums), given the column sums of the
    /// patches for the term from the sums, and `with_row(k, f)` calling `f` on the band's
    /// patch row `k` for the residual products.
    fn apply(
        &self,
        acc: &mut [i32],
        n: usize,
        column_sums: &[i32],
        with_row: impl FnMut(usize, &mut dyn FnMut(&[i8])),
    ) {
        for (ch, row) in acc.chunks_exact_mut(n.max(1)).enumerate() {
            if let Some(offsets) = &self.offsets {
                let offset = offsets[ch];
                row.iter_mut().for_each(|a| *a = a.wrapping_add(offset));
            }
            if let Some(ZeroPointTerm::Sums(zero_points)) = &self.zero_point {
                let zw = zero_points[ch];
                for (a, &s) in row.iter_mut().zip(column_sums) {
                    *a = a.wrapping_sub(zw.wrapping_mul(s));
                }
            }
        }
        self.residuals.add_to(acc, n, with_row);
    }

    /// Whether it does nothing to the sums.
    fn is_nothing(&self) -> bool {
        let sums = matches!(self.zero_point, Some(ZeroPointTerm::Sums(_)));
        self.offsets.is_none() && !sums && self.residuals.is_empty()
    }
}

/// A layer's products: on the engine's own tiles where the CPU and the layer allow, on
/// tract's kernel otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Products {
    /// tract's kernel and fused ops, on the matmul's inputs (the node's after the pack's).
    Tract(Box<OptMatMul>),
    /// The tiles, with the layer's weights in their own packing: tract's packed copy is
    /// not kept (it is no input of the node, and the plan prunes it).
    Tiles(Shared<Tiles>),
}

impl Products {
    fn tiles(&self) -> Option<&Tiles> {
        match self {
            Products::Tiles(t) => Some(&t.0),
            Products::Tract(_) => None,
        }
    }
}

/// The engine's own product tiles for one layer, chosen per CPU at load.
#[derive(Debug)]
enum Tiles {
    /// x86_64 with AVX-512 VNNI (vnni.rs), on tract's K4 packing of the patches.
    #[cfg(target_arch = "x86_64")]
    Vnni(Box<(crate::vnni::Tiles, PackPatches)>),
    /// Cores without a dot product (kernels/c16.rs), on the patches in c16 panels.
    C16(Box<(c16::Weights, PackPatches)>),
    /// Cores without a dot product, on the layers where they take fewer instructions than
    /// c16's (kernels/pairs.rs), on the patches in pairs panels.
    Pairs(Box<(pairs::Weights, PackPatches)>),
    /// aarch64 cores with the dot product (kernels/dot.rs), on the patches in 8-wide K4
    /// panels.
    Dot(Box<(dot::Weights, PackPatches)>),
}

impl Tiles {
    /// The kernel's name, as `edgedx info` reports it.
    fn name(&self) -> &'static str {
        match self {
            Tiles::C16(..) if cfg!(target_arch = "aarch64") => "edgedx_c16_neon_4x4",
            Tiles::C16(..) => "edgedx_c16_scalar",
            Tiles::Pairs(p) if p.0.deep_blocks().is_some() => match cfg!(target_arch = "aarch64") {
                true => "edgedx_pairs_deep_neon_4x8",
                false => "edgedx_pairs_deep_scalar",
            },
            Tiles::Pairs(..) if cfg!(target_arch = "aarch64") => "edgedx_pairs_neon_4x16",
            Tiles::Pairs(..) => "edgedx_pairs_scalar",
            Tiles::Dot(..) if dot::available() => "edgedx_dot_neon_8x8",
            Tiles::Dot(..) => "edgedx_dot_scalar",
            #[cfg(target_arch = "x86_64")]
            Tiles::Vnni(_) => "edgedx_vnni_8x48",
        }
    }

    /// How the band's patches are packed for these tiles (their own packing, not the matmul's).
    fn pack(&self) -> &PackPatches {
        match self {
            Tiles::C16(c16) => &c16.1,
            Tiles::Pairs(pairs) => &pairs.1,
            Tiles::Dot(dot) => &dot.1,
            #[cfg(target_arch = "x86_64")]
            Tiles::Vnni(vnni) => &vnni.1,
        }
    }

    /// The `nb` columns' sums into `c`, from the band's packed patches.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    fn run(
        &self,
        packed: &mut [i8],
        panel_len: usize,
        nb: usize,
        c: &mut [i32],
    ) -> TractResult<()> {
        match self {
            Tiles::C16(c16) => c16
                .0
                .run(packed, nb, c)
                .map_err(|e| format_err!("BandedConv: c16 tiles: {e}")),
            Tiles::Pairs(pairs) => pairs
                .0
                .run(packed, nb, c)
                .map_err(|e| format_err!("BandedConv: pairs tiles: {e}")),
            Tiles::Dot(dot) => dot
                .0
                .run(packed, nb, c)
                .map_err(|e| format_err!("BandedConv: dot tiles: {e}")),
            #[cfg(target_arch = "x86_64")]
            Tiles::Vnni(vnni) => {
                let used = nb.div_ceil(crate::vnni::R) * panel_len;
                crate::vnni::offset_patches(&mut packed[..used]);
                // SAFETY: i8 and u8 have the same layout.
                let bytes = unsafe {
                    std::slice::from_raw_parts(packed.as_ptr() as *const u8, packed.len())
                };
                vnni.0.run(bytes, panel_len, nb, c)
            }
        }
    }
}

/// Layer data computed at load and shared by the node's copies: equal when it is the same.
#[derive(Debug)]
pub(crate) struct Shared<T>(pub(crate) Arc<T>);

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared(self.0.clone())
    }
}

impl<T> PartialEq for Shared<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<T> Eq for Shared<T> {}

/// The kernel's scratch space, the packed band and the engine's tiles' sums, kept between
/// bands and inferences (a tensor of sums per band was an allocation of up to tens of KB
/// per band, glibc's slow path).
type BandState = (
    Option<Box<dyn ScratchSpace>>,
    Option<Arc<Blob>>,
    Vec<SumLine>,
);

/// 16 sums on a 64-byte boundary: the kept sums start where a tensor's would (the VNNI
/// tiles' 64-byte stores of a row start on one when the row's length allows; a 4-byte
/// aligned buffer cost Lite0's layers about 4 % on the AVX-512 host).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct SumLine([i32; 16]);

thread_local! {
    static STATE: RefCell<BandState> = const { RefCell::new((None, None, Vec::new())) };
}

impl BandedConv {
    /// This convolution giving its output in `shape` (as many values, in their order:
    /// load.rs `reshapes_into_convolutions`).
    pub(crate) fn with_output_shape(&self, shape: &[usize]) -> Option<BandedConv> {
        let len = |s: &[usize]| s.iter().product::<usize>();
        (len(shape) == len(&self.output_shape)).then(|| BandedConv {
            output_shape: shape.into(),
            ..self.clone()
        })
    }

    /// This convolution with its requantization replaced by `f`'s (qtable.rs
    /// `tables_into_requantization`), when `f` gives one.
    pub(crate) fn with_requantize(
        &self,
        f: impl FnOnce(&Requantize) -> Option<Requantize>,
    ) -> Option<BandedConv> {
        Some(BandedConv {
            requantize: f(&self.requantize)?,
            ..self.clone()
        })
    }

    /// Output rows per band: a whole number of panels, about `band_bytes` of patches and
    /// accumulators.
    fn band_rows(&self, unit: usize, out_width: usize) -> usize {
        let column_bytes = self.pack.k.div_ceil(4) * 4 + 4 * self.channels;
        let columns = self.band_bytes / column_bytes.max(1);
        unit * (columns / (unit * out_width).max(1)).max(1)
    }

    /// Whether the layer's weights have a zero point, whose term the bands compute.
    pub(crate) fn takes_zero_point(&self) -> bool {
        self.after.zero_point.is_some()
    }

    /// The kernels the bands run, as `edgedx info` reports them.
    pub(crate) fn kernels(&self) -> Vec<String> {
        match &self.products {
            Products::Tract(matmul) => matmul.mmm.iter().map(|k| k.name().to_string()).collect(),
            Products::Tiles(t) => vec![t.0.name().into()],
        }
    }

    /// Whether the layer has enough multiply-adds to spread over threads.
    fn worth_threads(&self, g: &Geometry) -> bool {
        #[cfg(test)]
        let threshold = tests::PARALLEL_MACS.get();
        #[cfg(not(test))]
        let threshold = PARALLEL_MACS;
        self.channels * g.n * self.pack.k >= threshold
    }

    fn run(&self, inputs: &[TValue], out: &mut [u8]) -> TractResult<()> {
        let x = &inputs[0];
        // One image, with or without its batch axis.
        let shape: TVec<usize> = match x.shape() {
            [1, c, h, w] | [c, h, w] => tvec![1, *c, *h, *w],
            other => bail!("BandedConv: input of shape {other:?}"),
        };
        let pad = match self.pack_inputs {
            2 => inputs[1].cast_to_scalar::<i32>()? as i8,
            _ => 0,
        };
        let g = self.pack.geometry(&shape)?;
        ensure!(
            out.len() == self.channels * g.n,
            "BandedConv: {} output positions for an output of {:?}",
            g.n,
            self.output_shape
        );
        let xs = x.try_as_plain_ram()?;
        let wo = g.out_width.max(1);
        let ho = g.n / wo;
        let pack = self.products.tiles().map_or(&self.pack, Tiles::pack);
        let unit = pack.band_unit(&g);
        let mut band = self.band_rows(unit, wo);
        let executor = multithread::current_tract_executor();
        let pool = match &executor {
            multithread::Executor::MultiThread(pool) if self.worth_threads(&g) => Some(pool),
            _ => None,
        };
        if let Some(pool) = pool {
            // A multiple of the threads in bands, so that none waits for a last band alone
            // (VGG16's 15-row layers were one band of whole panels, 16 rows). Each band packs
            // its own patches, so a band need not end on a whole panel.
            let threads = pool.current_num_threads().max(1);
            let count = ho.div_ceil(band).div_ceil(threads) * threads;
            band = ho.div_ceil(count).max(1);
        }
        let bands = (0..ho).step_by(band).map(|oy0| (oy0, (ho - oy0).min(band)));
        let job = Band {
            g: &g,
            xs: xs.as_slice::<i8>()?,
            pad,
            rest: &inputs[self.pack_inputs..],
            pack,
            blob_bytes: (band * wo).div_ceil(pack.r()) * pack.panel_len,
            out: Output(out.as_mut_ptr()),
        };
        let in_order = || {
            bands
                .clone()
                .try_for_each(|(oy0, rows)| self.band(&job, oy0, rows))
        };
        match pool {
            // One band per task on the pool's threads (the matmul of each runs on its own
            // thread).
            Some(pool) if ho > band => pool.install(|| {
                let bands: Vec<(usize, usize)> = bands.clone().collect();
                bands
                    .par_iter()
                    .try_for_each(|&(oy0, rows)| self.band(&job, oy0, rows))
            }),
            // A single large band runs here, where tract's executor splits its matmul.
            Some(_) => in_order(),
            // A small layer on one thread: waking the pool costs more than it saves.
            None => {
                multithread::multithread_tract_scope(multithread::Executor::SingleThread, in_order)
            }
        }
    }

    /// Output rows `oy0..oy0 + rows`: pack their patches, run the matmul on them, write
    /// their requantized bytes. Bands write disjoint columns of the output.
    fn band(&self, job: &Band, oy0: usize, rows: usize) -> TractResult<()> {
        let wo = job.g.out_width;
        let nb = rows * wo;
        STATE.with_borrow_mut(|(scratch, blob, kept)| -> TractResult<()> {
            let mut packed = take_blob(blob, job.blob_bytes, job.pack.align);
            // Σ_k of each position's patch, for the weight zero point's term.
            let mut column_sums = match self.after.zero_point {
                Some(ZeroPointTerm::Sums(_)) => vec![0i32; nb],
                _ => vec![],
            };
            {
                let bytes = Arc::get_mut(&mut packed).expect("take_blob returns it unshared");
                // SAFETY: i8 and u8 have the same layout.
                let bytes = unsafe {
                    std::slice::from_raw_parts_mut(bytes.as_mut_ptr() as *mut i8, bytes.len())
                };
                let sums = matches!(self.after.zero_point, Some(ZeroPointTerm::Sums(_)))
                    .then_some(&mut column_sums[..]);
                job.pack
                    .pack_band(job.g, job.xs, job.pad, oy0, rows, bytes, sums);
                if let Some(tiles) = self.products.tiles() {
                    // The channels' rows of sums, every one written by the tiles.
                    let len = self.channels * nb;
                    if kept.len() < len.div_ceil(16) {
                        kept.resize(len.div_ceil(16), SumLine([0; 16]));
                    }
                    // SAFETY: `kept` holds at least `len` i32s, contiguous (`SumLine` is
                    // `repr(C)` around an array of them), borrowed here alone.
                    let acc = unsafe {
                        std::slice::from_raw_parts_mut(kept.as_mut_ptr().cast::<i32>(), len)
                    };
                    tiles.run(bytes, job.pack.panel_len, nb, acc)?;
                    *blob = Some(packed.clone());
                    return self.finish(job, (oy0, nb), acc, &column_sums);
                }
            }
            let mut c_shape = self.c_band_shape.clone();
            c_shape[self.pixel_axis] = nb;
            // SAFETY: the kernel's Store writes every element of `c`.
            let mut c = unsafe { Tensor::uninitialized_dt(DatumType::I32, &c_shape)? };
            // Kept to reuse for the next band once the matmul's inputs are dropped.
            *blob = Some(packed.clone());
            if let Products::Tract(matmul) = &self.products {
                self.run_kernel(matmul, scratch, packed, job.rest, &c, nb)?;
            }
            let mut acc = c.try_as_plain_ram_mut()?;
            self.finish(job, (oy0, nb), acc.as_slice_mut::<i32>()?, &column_sums)
        })
    }

    /// A band's sums (`acc`: its `nb` positions from output row `oy0` on, per channel)
    /// with what comes after the products added, requantized into the output.
    fn finish(
        &self,
        job: &Band,
        (oy0, nb): (usize, usize),
        acc: &mut [i32],
        column_sums: &[i32],
    ) -> TractResult<()> {
        if !self.after.is_nothing() {
            let with_row = |k, f: &mut dyn FnMut(&[i8])| {
                job.pack
                    .with_patch_row(job.g, job.xs, job.pad, k, (oy0, nb), f)
            };
            self.after.apply(acc, nb, column_sums, with_row);
        }
        let n = job.g.n;
        let first = oy0 * job.g.out_width;
        // SAFETY: the output holds m rows of n bytes (checked in `run`); this band writes
        // columns first..first + nb of each row, which no other band writes, and the
        // slice spans from its first byte to the end of its last row.
        let out = unsafe {
            std::slice::from_raw_parts_mut(job.out.0.add(first), (self.channels - 1) * n + nb)
        };
        self.requantize.run_rows(acc, nb, out, n)
    }

    /// The band's products and fused ops on tract's kernel, into `c`.
    fn run_kernel(
        &self,
        matmul: &OptMatMul,
        scratch: &mut Option<Box<dyn ScratchSpace>>,
        packed: Arc<Blob>,
        rest: &[TValue],
        c: &Tensor,
        nb: usize,
    ) -> TractResult<()> {
        let mmm = &*matmul.mmm[0];
        // SAFETY (both unsafe calls): tract-linalg's scratch-space contract, as OptMatMul
        // uses it: a space is only used with a kernel that accepts it.
        if !scratch
            .as_ref()
            .is_some_and(|s| unsafe { mmm.can_use_scratch_space(&**s) })
        {
            *scratch = Some(unsafe { mmm.allocate_scratch_space() });
        }
        let scratch = scratch.as_mut().unwrap();
        {
            let value: Box<dyn MMMInputValue> = Box::new(EagerPackedInput {
                fact: PackedExoticFact {
                    format: self.pack.format.clone(),
                    k: self.pack.k,
                    mn: nb.to_dim(),
                },
                packed,
                panel_bytes: self.pack.panel_len,
                mn: nb,
            });
            let patches =
                PackedMatrixStorage::new_batched(&[1, 1], tvec![value]).into_tensor(DatumType::I8);
            let mut mm_inputs: TVec<TValue> = rest.iter().cloned().collect();
            mm_inputs.insert(self.patches_slot, patches.into_tvalue());
            // Every axis but m and n has extent 1: one matmul, at the origin.
            let origin: TVec<usize> = tvec![0; c.rank()];
            let uops: TVec<FusedSpec> = matmul
                .micro_ops
                .iter()
                .map(|op| op.resolve(&mm_inputs, &origin, c, mmm, 0))
                .collect();
            let (m, n) = if self.patches_are_a {
                (nb, self.channels)
            } else {
                (self.channels, nb)
            };
            // SAFETY: as in OptMatMul's own loop: the fused ops were resolved for this
            // kernel, these inputs and an `m` × `n` output.
            unsafe { mmm.run_with_scratch_space(m, n, scratch.as_mut(), &uops)? };
        }
        Ok(())
    }
}

/// What every band of one evaluation shares.
struct Band<'a> {
    g: &'a Geometry,
    xs: &'a [i8],
    pad: i8,
    /// The matmul's inputs other than the patches.
    rest: &'a [TValue],
    /// How the band's patches are packed: the tiles' packing, or the matmul's.
    pack: &'a PackPatches,
    /// Bytes of one band's packed patches.
    blob_bytes: usize,
    out: Output,
}

/// The output's bytes, written by bands on several threads, each to its own columns.
struct Output(*mut u8);

// SAFETY: bands write disjoint bytes through it (see `BandedConv::band`), and `run` returns
// only after every band has finished.
unsafe impl Send for Output {}
unsafe impl Sync for Output {}

/// The band buffer left from the last band when it is big enough, aligned and no longer
/// shared; a new zeroed one otherwise.
fn take_blob(kept: &mut Option<Arc<Blob>>, size: usize, align: usize) -> Arc<Blob> {
    if let Some(b) = kept.take() {
        if Arc::strong_count(&b) == 1
            && b.len() >= size
            && (b.as_ptr() as usize).is_multiple_of(align)
        {
            return b;
        }
    }
    // SAFETY: filled with zeros right away.
    let mut b = unsafe { Blob::new_for_size_and_align(size, align) };
    b.as_bytes_mut().fill(0);
    Arc::new(b)
}

impl Op for BandedConv {
    fn name(&self) -> StaticName {
        "BandedConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let mut zero_point = match &self.after.zero_point {
            Some(ZeroPointTerm::Sums(_)) => {
                ", weight zero point's term from the patches' sums".to_string()
            }
            Some(ZeroPointTerm::Folded) => ", weight zero point folded into the weights".into(),
            None => String::new(),
        };
        if !self.after.residuals.is_empty() {
            zero_point += &format!(
                ", {} residual products per position",
                self.after.residuals.len()
            );
        }
        Ok(vec![format!(
            "k={}, m={}, kernel {}{zero_point}",
            self.pack.k,
            self.channels,
            self.kernels().join(", ")
        )])
    }

    tract_onnx::tract_core::op_as_typed_op!();
}

impl EvalOp for BandedConv {
    tract_onnx::tract_core::op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        // SAFETY: `run` writes every byte: each band requantizes all its columns of every row.
        unsafe {
            self.requantize
                .output(&self.output_shape, "BandedConv", |bytes| {
                    self.run(&inputs, bytes)
                })
        }
    }
}

impl TypedOp for BandedConv {
    tract_onnx::tract_core::as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == DatumType::I8);
        Ok(tvec!(self.requantize.output_fact(&self.output_shape)))
    }

    /// The products' multiply-adds: channels x output positions x k.
    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let positions = self.output_shape.iter().product::<usize>() / self.channels.max(1);
        Ok(tvec!((
            Cost::FMA(DatumType::I32),
            (self.channels * positions * self.pack.k).to_dim()
        )))
    }
}

/// Replaces every run of patch packing (PackPatches, or tract's packing of a 1x1
/// convolution's input) → OptMatMul → [reshape] → Requantize that [`BandedConv`] computes
/// exactly, and returns how many. The replaced nodes are left unused for the
/// caller's next optimisation to prune.
pub(crate) fn band_convolutions(model: &mut TypedModel) -> TractResult<usize> {
    #[cfg(test)]
    let band_bytes = tests::BAND_BYTES.get();
    #[cfg(not(test))]
    let band_bytes = BAND_BYTES;
    crate::rewrite::replace_runs(model, "banded", |model, id| run_at(model, id, band_bytes))
}

/// The inputs, the outlet replaced and the op, when node `id` packs the patches of a run
/// this op computes exactly: a `PackPatches` (im2col convolutions, patches as the matmul's b
/// operand), or tract's `OptMatMulPack` of a 1x1 convolution's input (its a operand).
fn run_at(
    model: &TypedModel,
    id: usize,
    band_bytes: usize,
) -> TractResult<Option<(TVec<OutletId>, OutletId, BandedConv)>> {
    let node = model.node(id);
    let pack = if let Some(pack) = node.op_as::<PackPatches>() {
        pack.clone()
    } else if let Some(pack) = pointwise_packer(model, node)? {
        pack
    } else {
        return Ok(None);
    };
    // The image: one item of known shape.
    let image = model.outlet_fact(node.inputs[0])?;
    match image.shape.as_concrete() {
        Some([1, _, _, _]) | Some([_, _, _]) => {}
        _ => return Ok(None),
    }
    let patches = OutletId::new(id, 0);
    let outputs = model.output_outlets()?;
    // The matmul, and with weights that have a zero point the column sums of its term
    // (zero_point.rs), which the tiles take over.
    let Some(mm_node) = crate::zero_point::patches_matmul(model, node)? else {
        return Ok(None);
    };
    let Some(matmul) = mm_node.op_as::<OptMatMul>() else {
        return Ok(None);
    };
    // Where the column sums of the patches come from in tract's plan: QSumB over them, or
    // for a 1x1 convolution a Reduce<Sum> over the channels of its input.
    let sources = [
        crate::zero_point::Sums::Patches(patches),
        crate::zero_point::Sums::Channels {
            x: node.inputs[0],
            axis: image.rank() - 3,
        },
    ];
    // The matmul: one kernel, the patches used once as the operand expected, and fused ops
    // that act per output channel or on every element alike (nothing per output position).
    let slots: Vec<usize> = (0..mm_node.inputs.len())
        .filter(|&i| mm_node.inputs[i] == patches)
        .collect();
    let [patches_slot] = slots[..] else {
        return Ok(None);
    };
    if matmul.mmm.len() != 1 || !matches!(matmul.mode_picker, ModePicker::Single) {
        return Ok(None);
    }
    // tract packs a 1x1 convolution's input as either operand.
    let Some(patches_are_a) = input_side(matmul, patches_slot) else {
        return Ok(None);
    };
    // The zero point's term fused in the matmul, one value for every column: which fused
    // op it is, and zw.
    let mut fused_zero_point = None;
    for (ix, op) in matmul.micro_ops.iter().enumerate() {
        match op {
            ProtoFusedSpec::AddMatMul { .. } => {}
            ProtoFusedSpec::BinPerRow(..) if !patches_are_a => {}
            ProtoFusedSpec::BinPerCol(..) if patches_are_a => {}
            ProtoFusedSpec::BinPerCol(slot, tract_linalg::BinOp::SubF, _)
            | ProtoFusedSpec::BinPerRow(slot, tract_linalg::BinOp::SubF, _)
                if fused_zero_point.is_none() =>
            {
                match crate::zero_point::weight_zero_point_from(
                    model,
                    mm_node.inputs[*slot],
                    &sources,
                )? {
                    Some(zw) if zw.len() == 1 => {
                        fused_zero_point = Some((ix, zw.cast_to_scalar::<i32>()?))
                    }
                    _ => return Ok(None),
                }
            }
            ProtoFusedSpec::BinScalar(..)
            | ProtoFusedSpec::LeakyRelu(..)
            | ProtoFusedSpec::Scaler(..)
            | ProtoFusedSpec::Store(..) => {}
            _ => return Ok(None),
        }
    }
    let (Some(c_shape), Some(m_axis), Some(n_axis)) = (
        matmul.c_fact.shape.as_concrete(),
        matmul.c_m_axis,
        matmul.c_n_axis,
    ) else {
        return Ok(None);
    };
    let (pixel_axis, channel_axis) = if patches_are_a {
        (m_axis, n_axis)
    } else {
        (n_axis, m_axis)
    };
    // Channels first, then the output positions row-major, the band's axis last: every
    // axis before the channels' of extent 1.
    let rank = c_shape.len();
    if matmul.c_fact.datum_type != DatumType::I32
        || channel_axis >= pixel_axis
        || pixel_axis != rank - 1
        || c_shape[..channel_axis].iter().any(|&d| d != 1)
    {
        return Ok(None);
    }
    let channels = c_shape[channel_axis];
    let positions: usize = c_shape[channel_axis + 1..].iter().product();
    // [reshape], then Requantize with one multiplier per channel.
    let only_successor = |id: usize| -> TractResult<Option<&TypedNode>> {
        if outputs.contains(&OutletId::new(id, 0)) {
            return Ok(None);
        }
        model.single_succ(id)
    };
    // Constant Adds and Subs of the sums, and the zero point's term, then [reshape] and
    // Requantize.
    let shape = (c_shape, channel_axis);
    let has_term = fused_zero_point.is_some();
    let Some(tail) = crate::zero_point::tail(model, mm_node, shape, &sources, has_term)? else {
        return Ok(None);
    };
    let after = After {
        offsets: tail.offsets,
        zero_point: tail
            .zero_point
            .or(fused_zero_point.map(|(_, zw)| vec![zw; channels]))
            .map(ZeroPointTerm::Sums),
        residuals: Residuals::default(),
    };
    let mut rq_node = tail.next;
    if rq_node.op_is::<IntoShape>() {
        let Some(after) = only_successor(rq_node.id)? else {
            return Ok(None);
        };
        rq_node = after;
    }
    let Some(requantize) = rq_node.op_as::<Requantize>() else {
        return Ok(None);
    };
    let Some(output_shape) = rq_node.outputs[0].fact.shape.as_concrete() else {
        return Ok(None);
    };
    if !requantize.is_per_channel(output_shape, channels)
        || output_shape.iter().product::<usize>() != channels * positions
    {
        return Ok(None);
    }
    let output_shape: TVec<usize> = output_shape.into();
    let mut c_band_shape: TVec<usize> = tvec![1; rank];
    c_band_shape[channel_axis] = channels;
    let mut inputs: TVec<OutletId> = node.inputs.iter().copied().collect();
    inputs.extend(
        mm_node
            .inputs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != patches_slot)
            .map(|(_, o)| *o),
    );
    let op = BandedConv {
        pack,
        products: Products::Tract(Box::new(matmul.clone())),
        requantize: requantize.clone(),
        pack_inputs: node.inputs.len(),
        patches_slot,
        patches_are_a,
        c_band_shape,
        pixel_axis,
        channels,
        output_shape,
        band_bytes,
        after,
    };
    let skip = fused_zero_point.map(|(ix, _)| ix);
    let op = match tiles_for(model, mm_node, matmul, &op, skip)? {
        Some(choice) => {
            inputs.truncate(op.pack_inputs);
            BandedConv {
                products: Products::Tiles(Shared(Arc::new(choice.tiles))),
                // The tiles start from the constants, and hold the zero point when they
                // could take it.
                after: After {
                    offsets: None,
                    zero_point: match choice.zero_point_folded {
                        true => Some(ZeroPointTerm::Folded),
                        false => op.after.zero_point.clone(),
                    },
                    residuals: choice.residuals,
                },
                ..op
            }
        }
        // tract's kernel cannot leave out the fused term: its column sums are an input.
        None if fused_zero_point.is_some() => return Ok(None),
        None => op,
    };
    Ok(Some((inputs, OutletId::new(rq_node.id, 0), op)))
}

/// The engine's own tiles for `op`, where the CPU has some and the layer fits them:
/// constant weights, and fused ops that add or subtract constant per-channel values before
/// the store. Anything the tiles refuse stays on tract's kernel:
/// the load does not fail for it.
///
/// - x86_64 with AVX-512 VNNI, on their own 16-wide K4 packing of weights and patches:
///   they beat tract's kernel at every depth measured, 9 to 4608 (`edgedx-bench profile`:
///   the default bundle's convolutions 0.39 -> 0.32 ms, VGG16's 98 -> 88 ms).
/// - Cores without a dot product ([`c16_wanted`]), unless two weights of -128 share a
///   16-bit lane (kernels/c16.rs): 16 multiply-adds per three instructions where tract's
///   kernel does four per instruction; or the pairs tiles (kernels/pairs.rs), the same
///   products without c16's per-tile fold, on the layers their instruction model counts
///   fewer for.
/// - aarch64 cores with the dot product ([`dot_wanted`]): the same SDOT products as
///   tract's kernel without its tile scheduling and strided stores (EfficientNet-Lite0
///   under `qemu-aarch64 -cpu cortex-a76`: INT8-NOTES item 23).
///
/// With a weight zero point, the aarch64 families take it folded into their weights where
/// few weights leave i8 then (zero_point.rs [`Folded`]), and the residual products come
/// back with the tiles; the VNNI tiles, which take tract's packed weights, leave it to the
/// column sums.
fn tiles_for(
    model: &TypedModel,
    mm_node: &TypedNode,
    matmul: &OptMatMul,
    op: &BandedConv,
    skip: Option<usize>,
) -> TractResult<Option<TileChoice>> {
    let Some((weights, mut offsets)) = tile_operands(
        model,
        mm_node,
        matmul,
        (op.channels, op.patches_are_a),
        skip,
    )?
    else {
        return Ok(None);
    };
    if weights.mn() != op.channels || weights.k() != op.pack.k {
        return Ok(None);
    }
    if let Some(after) = &op.after.offsets {
        for (o, a) in offsets.iter_mut().zip(after) {
            *o = o.wrapping_add(*a);
        }
    }
    // Every depth: even at k = 9 (a first layer's 3x3 on one channel, padded to 16) the
    // tiles with their packing ran fewer instructions than tract's kernel with its own
    // (the default bundle's int8 on cortex-a72 under qemu: 7.89 M per inference with its
    // first layer on the tiles, 8.27 M on tract's kernel).
    // A family that refuses the layer (two -128 weights in one c16 lane) leaves it on tract's
    // kernel.
    let chosen = |tiles: Result<Tiles, String>| match tiles {
        Ok(tiles) => Some(tiles),
        Err(e) => {
            log::debug!("int8 products left to tract's kernel: {e}");
            None
        }
    };
    if c16_wanted() || pairs_wanted() || dot_wanted() {
        let Some(rows) = crate::im2col::unpack_rows(&*weights) else {
            return Ok(None);
        };
        let (channels, k) = (op.channels, op.pack.k);
        // The weight zero point folded into the weights where few of them leave i8 then.
        let folded = match &op.after.zero_point {
            Some(ZeroPointTerm::Sums(zw)) => Folded::new(&rows, channels, k, zw),
            _ => None,
        };
        let zero_point_folded = folded.is_some();
        let (rows, folded) = match folded {
            Some(Folded { rows, residuals }) => (rows, residuals),
            None => (rows, Residuals::default()),
        };
        let chosen = |tiles, lowered: Vec<crate::residuals::Term>| {
            chosen(tiles).map(|tiles| TileChoice {
                tiles,
                residuals: Residuals::from_terms(folded.terms().chain(lowered)),
                zero_point_folded,
            })
        };
        if dot_wanted() {
            let tiles = dot::Weights::new(&rows, channels, k, &offsets)
                .map(|w| Tiles::Dot(Box::new((w, op.pack.k4(dot::MR)))));
            return Ok(chosen(tiles, vec![]));
        }
        let c16 = || {
            c16::Weights::new(&rows, channels, k, &offsets)
                .map(|w| Tiles::C16(Box::new((w, op.pack.c16()))))
        };
        let pairs = || {
            pairs::Weights::new(&rows, channels, k, &offsets)
                .map(|w| Tiles::Pairs(Box::new((w, op.pack.pairs()))))
        };
        // Without a dot product, the family the instruction models count fewer for, and
        // the other where it refuses the layer (their 16-bit lanes pair different
        // depths).
        let n = op.output_shape.iter().product::<usize>() / channels.max(1);
        // The deep pairs form, with its lanes lowered into their budget (kernels/pairs.rs):
        // where it counts fewer instructions than both, those added back included, and
        // they stay under a 64th of the layer's products.
        if let Some(deep) = deep_pairs(&rows, (channels, k, n), &offsets, &op.pack) {
            return Ok(chosen(Ok(deep.0), deep.1));
        }
        let pairs_first = !c16_wanted()
            || (pairs_wanted()
                && pairs::instructions(channels, k, n) < c16::instructions(channels, k, n));
        let tiles = match (pairs_first, c16_wanted(), pairs_wanted()) {
            (true, true, _) => pairs().or_else(|_| c16()),
            (true, false, _) => pairs(),
            (false, _, true) => c16().or_else(|_| pairs()),
            (false, _, false) => c16(),
        };
        return Ok(chosen(tiles, vec![]));
    }
    #[cfg(target_arch = "x86_64")]
    if crate::vnni::available() {
        let tiles = crate::vnni::Tiles::new(&*weights, op.channels, op.pack.k, &offsets)
            .map(|t| Tiles::Vnni(Box::new((t, op.pack.k4(crate::vnni::R)))));
        return Ok(chosen(tiles).map(|tiles| TileChoice {
            tiles,
            residuals: Residuals::default(),
            zero_point_folded: false,
        }));
    }
    Ok(None)
}

/// A layer's tiles, with the products their weights leave out.
struct TileChoice {
    tiles: Tiles,
    residuals: Residuals,
    /// Whether the weights hold the weight zero point's term.
    zero_point_folded: bool,
}

/// The deep pairs form's tiles for `rows` (`channels × k` weights, `n` output positions),
/// with the products its lowered lanes leave out, where it is wanted: where the pairs may
/// run, its instructions with one multiply-add per residual product and position are
/// fewer than the pairs' and c16's, and the residual products are at most a 64th of the
/// layer's.
fn deep_pairs(
    rows: &[i8],
    (channels, k, n): (usize, usize, usize),
    starts: &[i32],
    pack: &PackPatches,
) -> Option<(Tiles, Vec<crate::residuals::Term>)> {
    let forced = deep_forced();
    if !pairs_wanted() || forced == Some(false) {
        return None;
    }
    let deep = pairs::deep_instructions(channels, k, n)?;
    let mut lowered = rows.to_vec();
    let taken = pairs::deep_lanes(&mut lowered, channels, k);
    let residual = taken.len() * n;
    let others = pairs::instructions(channels, k, n).min(if c16_wanted() {
        c16::instructions(channels, k, n)
    } else {
        usize::MAX
    });
    let pays = deep + residual < others && taken.len() * 64 <= channels * k;
    if forced != Some(true) && !pays {
        return None;
    }
    let weights = pairs::Weights::deep(&lowered, channels, k, starts).ok()?;
    Some((Tiles::Pairs(Box::new((weights, pack.pairs()))), taken))
}

/// Whether tests force the deep pairs form (`Some(true)`: wherever a depth has it) or keep
/// it out (`Some(false)`: another family forced); `None` outside tests and where they
/// force nothing.
fn deep_forced() -> Option<bool> {
    #[cfg(test)]
    if let Some(forced) = tests::FORCE.get() {
        return Some(forced == "deep");
    }
    None
}

/// Whether layers go to the c16 tiles: on aarch64 cores without a dot product, where
/// tract's int8 kernel does no more multiply-adds per instruction than its fp32 one.
fn c16_wanted() -> bool {
    wanted("c16", cfg!(target_arch = "aarch64") && !dot::available())
}

/// Whether layers may go to the pairs tiles: where c16's may (or in their deep form, where
/// tests force it).
fn pairs_wanted() -> bool {
    wanted("pairs", cfg!(target_arch = "aarch64") && !dot::available())
        || deep_forced() == Some(true)
}

/// Whether layers go to the dot tiles: on aarch64 cores with the dot product.
fn dot_wanted() -> bool {
    wanted("dot", cfg!(target_arch = "aarch64") && dot::available())
}

/// `by_cpu`, unless a test forces one family of tiles (its scalar reference where the CPU
/// lacks the instructions).
fn wanted(family: &str, by_cpu: bool) -> bool {
    #[cfg(test)]
    if let Some(forced) = tests::FORCE.get() {
        return forced == family;
    }
    let _ = family;
    by_cpu
}

/// A matmul's constant weights, with what its fused ops add to each output channel's sum.
pub(crate) type TileOperands = (Box<dyn MMMInputValue>, Vec<i32>);

/// Whether the matmul's input `slot` is the a operand (else the b operand) of its one
/// product, when it has one product with that input on exactly one side, one packing and
/// no other product; `None` else.
pub(crate) fn input_side(matmul: &OptMatMul, slot: usize) -> Option<bool> {
    let is_input = |op: &MatMulOperand| matches!(op, MatMulOperand::Input(i) if *i == slot);
    let products: Vec<Option<bool>> = matmul
        .micro_ops
        .iter()
        .filter_map(|op| match op {
            ProtoFusedSpec::AddMatMul { a, b, packings, .. } => Some(
                (is_input(a) != is_input(b) && packings.len() == 1 && packings[0].1.is_none())
                    .then(|| is_input(a)),
            ),
            _ => None,
        })
        .collect();
    match products[..] {
        [side] => side,
        _ => None,
    }
}

/// The matmul's constant weights (the operand the patches are not) and what its fused ops
/// add to each output channel's sum before the store, wrapping in i32 as tract's kernel
/// does: per-channel and scalar constants, added (`Add`) or subtracted (`SubF`: `c - v`).
/// `None` when it fuses anything else, except the fused op `skip` (the zero point's term,
/// which the operator applies itself).
pub(crate) fn tile_operands(
    model: &TypedModel,
    mm_node: &TypedNode,
    matmul: &OptMatMul,
    (channels, patches_are_a): (usize, bool),
    skip: Option<usize>,
) -> TractResult<Option<TileOperands>> {
    use tract_linalg::BinOp;
    let konst = |i: usize| {
        model
            .outlet_fact(mm_node.inputs[i])
            .ok()
            .and_then(|f| f.konst.clone())
            .filter(|k| k.datum_type() == DatumType::I32)
    };
    let mut weights = None;
    let mut offsets = vec![0i32; channels];
    let mut stored = false;
    for (ix, uop) in matmul.micro_ops.iter().enumerate() {
        let (values, bin) = match uop {
            _ if Some(ix) == skip => continue,
            ProtoFusedSpec::AddMatMul { a, b, .. } if ix == 0 => {
                weights = match if patches_are_a { b } else { a } {
                    MatMulOperand::Const(v) => Some(v.clone()),
                    MatMulOperand::Input(i) => konst_packed(model, mm_node.inputs[*i]),
                };
                continue;
            }
            ProtoFusedSpec::BinPerRow(i, bin, _) | ProtoFusedSpec::BinPerCol(i, bin, _)
                if !stored && matches!(uop, ProtoFusedSpec::BinPerCol(..)) == patches_are_a =>
            {
                match konst(*i).filter(|k| k.len() == channels) {
                    Some(k) => (k.try_as_plain_ram()?.as_slice::<i32>()?.to_vec(), bin),
                    None => return Ok(None),
                }
            }
            ProtoFusedSpec::BinScalar(i, bin) if !stored => match konst(*i) {
                Some(k) if k.len() == 1 => (vec![k.cast_to_scalar::<i32>()?; channels], bin),
                _ => return Ok(None),
            },
            ProtoFusedSpec::Store(_) if !stored && ix + 1 == matmul.micro_ops.len() => {
                stored = true;
                continue;
            }
            _ => return Ok(None),
        };
        for (o, v) in offsets.iter_mut().zip(values) {
            *o = match bin {
                BinOp::Add => o.wrapping_add(v),
                BinOp::SubF => o.wrapping_sub(v),
                _ => return Ok(None),
            };
        }
    }
    Ok(weights.filter(|_| stored).map(|w| (w, offsets)))
}

/// The one packed matrix a constant holds, if it is one.
fn konst_packed(model: &TypedModel, outlet: OutletId) -> Option<Box<dyn MMMInputValue>> {
    let k = model.outlet_fact(outlet).ok()?.konst.clone()?;
    let storage = k.try_storage_as::<PackedMatrixStorage>().ok()?;
    (storage.values().len() == 1).then(|| storage.values()[0].clone())
}

/// For tract's packing of a 1x1 convolution's input (`OptMatMulPack` of an i8 `[c, h, w]`
/// or `[1, c, h, w]` image, k along the channels and mn along the width, one packed matrix
/// per image row), the same packing as the patches of a 1x1 convolution over the whole
/// image, which [`PackPatches`] makes.
fn pointwise_packer(model: &TypedModel, node: &TypedNode) -> TractResult<Option<PackPatches>> {
    if !node.op_is::<OptMatMulPack>() || node.inputs.len() != 1 {
        return Ok(None);
    }
    let image = model.outlet_fact(node.inputs[0])?;
    let Some(shape) = image.shape.as_concrete() else {
        return Ok(None);
    };
    let (channels, k_axis, mn_axis) = match shape {
        [c, _, _] => (*c, 0, 2),
        [1, c, _, _] => (*c, 1, 3),
        _ => return Ok(None),
    };
    // tract keeps the axes private; its own description of the op names them.
    let expected = format!("k axis: {k_axis}, mn axis: {mn_axis}");
    if image.datum_type != DatumType::I8
        || !node.op.info()?.iter().any(|line| line.ends_with(&expected))
    {
        return Ok(None);
    }
    let Some(packed) = node.outputs[0]
        .fact
        .exotic_fact()
        .and_then(|f| f.downcast_ref::<DynPackedExoticFact>())
    else {
        return Ok(None);
    };
    if packed.packers.len() != 1 || packed.k != channels.to_dim() {
        return Ok(None);
    }
    let spec = PoolSpec {
        data_format: DataFormat::NCHW,
        kernel_shape: tvec![1, 1],
        padding: PaddingSpec::Valid,
        dilations: None,
        strides: None,
        input_channels: channels,
        output_channels: channels,
    };
    Ok(PackPatches::new(spec, &*packed.packers[0], channels))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::Cell;

    use edgedx_bundle::{Colour, InputSpec, Layout};
    use tract_onnx::pb;

    use super::*;
    use crate::load::{build_with, Target};
    use crate::onnx_build::{int, ints, model_bytes, node, raw};

    thread_local! {
        /// Band size of the plans this thread builds (tests shrink it to get many bands).
        pub(crate) static BAND_BYTES: Cell<usize> = const { Cell::new(super::BAND_BYTES) };
        /// Threading threshold of the plans this thread runs (tests lower it to 0 to
        /// spread their small layers' bands over threads).
        pub(crate) static PARALLEL_MACS: Cell<usize> = const { Cell::new(super::PARALLEL_MACS) };
        /// Plans this thread loads put their layers on this family of tiles (`"c16"` or
        /// `"dot"`) whatever the CPU (its scalar reference where the CPU lacks it).
        pub(crate) static FORCE: Cell<Option<&'static str>> = const { Cell::new(None) };
    }

    /// One QLinearConv of the test models: output channels, kernel side, strides (vertical,
    /// horizontal), dilation, pads (top, left, bottom, right), groups.
    pub(crate) struct Layer(
        pub(crate) usize,
        pub(crate) usize,
        pub(crate) [usize; 2],
        pub(crate) usize,
        pub(crate) [i64; 4],
        pub(crate) usize,
    );

    /// How the test models' weights are quantized.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Weights {
        /// Per-channel symmetric i8 in [-127, 127] (onnxruntime's default).
        Symmetric,
        /// Asymmetric u8 (onnxruntime's `weight_type=QUInt8`), one zero point per tensor or
        /// per channel. Layer `i`'s zero points are 131, 136, 129 and 120 in turn (less 128:
        /// a Mul in tract's plan, a shift, neither, a negative Mul), plus the channel for
        /// per-channel ones. Its weights are in [1, 255] but for one 0 (-128 once shifted,
        /// alone in its 16-bit lane of the c16 tiles).
        U8 { per_channel: bool },
        /// Asymmetric u8 with one zero point of 20 per tensor: most weights less it leave
        /// i8, too many to fold into the tiles' weights (zero_point.rs `Folded`).
        U8Skewed,
    }

    /// x → QuantizeLinear → the QLinearConvs of `layers` (u8 activations, per-channel
    /// symmetric i8 weights in [-127, 127], i32 bias, deterministic pseudo-random values) →
    /// DequantizeLinear → y, as onnxruntime's QOperator export writes them.
    pub(crate) fn conv_model(c: usize, h: usize, w: usize, layers: &[Layer]) -> Vec<u8> {
        conv_model_with(c, h, w, layers, Weights::Symmetric)
    }

    /// [`conv_model`] with its weights quantized as `coding` says.
    pub(crate) fn conv_model_with(
        c: usize,
        h: usize,
        w: usize,
        layers: &[Layer],
        coding: Weights,
    ) -> Vec<u8> {
        use pb::tensor_proto::DataType as D;
        let mut seed = 0x2545_f491_u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        let mut init = vec![
            raw("s0", D::Float, &[], &[1.0f32 / 255.0]),
            raw("z0", D::Uint8, &[], &[3u8]),
        ];
        let mut nodes = vec![node("QuantizeLinear", &["x", "s0", "z0"], "q0", vec![])];
        let mut cin = c;
        for (i, Layer(cout, k, stride, dilation, pads, group)) in layers.iter().enumerate() {
            let n = |s: &str| format!("{s}{i}");
            let per_group = cin / group;
            let count = cout * per_group * k * k;
            let shape = [*cout, per_group, *k, *k];
            match coding {
                Weights::Symmetric => {
                    let weights: Vec<i8> = (0..count)
                        .map(|_| ((next() % 255) as i32 - 127) as i8)
                        .collect();
                    init.push(raw(&n("w"), D::Int8, &shape, &weights));
                    init.push(raw(&n("wz"), D::Int8, &[*cout], &vec![0i8; *cout]));
                }
                Weights::U8 { .. } | Weights::U8Skewed => {
                    let mut weights: Vec<u8> =
                        (0..count).map(|_| 1 + (next() % 255) as u8).collect();
                    weights[count / 2] = 0;
                    init.push(raw(&n("w"), D::Uint8, &shape, &weights));
                    let per_channel = coding == Weights::U8 { per_channel: true };
                    let zero = match coding {
                        Weights::U8Skewed => 20,
                        _ => [131u8, 136, 129, 120][i % 4],
                    };
                    if per_channel {
                        let zeros: Vec<u8> = (0..*cout).map(|o| zero + (o % 7) as u8).collect();
                        init.push(raw(&n("wz"), D::Uint8, &[*cout], &zeros));
                    } else {
                        init.push(raw(&n("wz"), D::Uint8, &[], &[zero]));
                    }
                }
            }
            let bias: Vec<i32> = (0..*cout)
                .map(|_| (next() % 20001) as i32 - 10000)
                .collect();
            let scales: Vec<f32> = (0..*cout)
                .map(|_| 1e-3 + (next() % 1000) as f32 * 1e-6)
                .collect();
            init.push(raw(&n("ws"), D::Float, &[*cout], &scales));
            init.push(raw(&n("b"), D::Int32, &[*cout], &bias));
            init.push(raw(&n("ys"), D::Float, &[], &[0.05f32 + 0.01 * i as f32]));
            init.push(raw(&n("yz"), D::Uint8, &[], &[(100 + 7 * i) as u8]));
            let inputs: Vec<String> = [
                format!("q{i}"),
                format!("s{i}"),
                format!("z{i}"),
                n("w"),
                n("ws"),
                n("wz"),
                n("ys"),
                n("yz"),
                n("b"),
            ]
            .into();
            let attrs = vec![
                ints("kernel_shape", &[*k as i64, *k as i64]),
                ints("strides", &[stride[0] as i64, stride[1] as i64]),
                ints("dilations", &[*dilation as i64; 2]),
                ints("pads", pads),
                int("group", *group as i64),
            ];
            nodes.push(node("QLinearConv", &inputs, &format!("q{}", i + 1), attrs));
            // The next layer's input scale and zero point are this layer's output ones.
            init.push(raw(
                &format!("s{}", i + 1),
                D::Float,
                &[],
                &[0.05f32 + 0.01 * i as f32],
            ));
            init.push(raw(
                &format!("z{}", i + 1),
                D::Uint8,
                &[],
                &[(100 + 7 * i) as u8],
            ));
            cin = *cout;
        }
        let last = layers.len();
        nodes.push(node(
            "DequantizeLinear",
            &[format!("q{last}"), format!("s{last}"), format!("z{last}")],
            "y",
            vec![],
        ));
        model_bytes("banded", nodes, init, ("x", &[1, c, h, w]), "y")
    }

    /// The test models' input: `x`, NCHW, values in [0, 1].
    /// The builds of a test model's `bytes` (input `x` of `[1, c, h, w]`, output `y`)
    /// without and with the engine's rewrites.
    pub(crate) fn both_builds(
        bytes: &[u8],
        (c, h, w): (usize, usize, usize),
    ) -> (crate::load::Built, crate::load::Built) {
        use crate::load::{build_with, Target};
        let spec = input_spec(c, h, w);
        let target = Target {
            input: &spec,
            output_tensor: "y",
            batch: 1,
        };
        let plain = build_with(bytes, &target, false).unwrap();
        let ours = build_with(bytes, &target, true).unwrap();
        (plain, ours)
    }

    /// `len` pseudo-random bytes (xorshift32, advancing `seed`).
    pub(crate) fn random_bytes(len: usize, seed: &mut u32) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 17;
                *seed ^= *seed << 5;
                *seed as u8
            })
            .collect()
    }

    pub(crate) fn input_spec(c: usize, h: usize, w: usize) -> InputSpec {
        let mut spec = InputSpec::stretched(
            "x",
            Layout::Nchw,
            h as u32,
            w as u32,
            if c == 3 { Colour::Rgb } else { Colour::Grey },
            vec![0.0; c],
            vec![1.0; c],
        );
        // Test graphs take any channel count; no image is preprocessed for them.
        spec.channels = c as u32;
        spec
    }

    /// Asserts that `got`, the outputs of the rewritten plan `ours`, are `want`, those of
    /// tract's own plan: bit for bit, but where `ours` has a global pool giving its averages
    /// in f32 (avgpool.rs), whose exact sums leave the last bits of tract's f32 sums: there
    /// within 2^-20 of the largest output in magnitude, where one input step of such a
    /// pool moves an output by far more (its scale over its plane: about 1e-4 in the
    /// networks' heads).
    pub(crate) fn assert_agree(ours: &crate::Plan, want: &[u32], got: &[u32], what: &str) {
        let f32_pools = ours.model().nodes().iter().any(|n| {
            n.op_as::<crate::avgpool::QGlobalAvgPool>()
                .is_some_and(|p| p.gives_f32())
        });
        if !f32_pools {
            assert_eq!(want, got, "{what}");
            return;
        }
        assert_eq!(want.len(), got.len(), "{what}");
        let value = |bits: &u32| f32::from_bits(*bits);
        let largest = want.iter().map(|b| value(b).abs()).fold(0f32, f32::max);
        for (i, (w, g)) in want.iter().zip(got).enumerate() {
            let (w, g) = (value(w), value(g));
            assert!(
                (w - g).abs() <= largest / (1 << 20) as f32,
                "{what}: output {i} is {g}, tract's {w} (largest {largest})"
            );
        }
    }

    /// Deterministic inputs in [0, 1] for an image of `len` values.
    pub(crate) fn test_inputs(len: usize) -> Vec<Vec<f32>> {
        (1..4u32)
            .map(|s| {
                (0..len as u32)
                    .map(|i: u32| ((i.wrapping_mul(2654435761) ^ s) % 1000) as f32 / 999.0)
                    .collect()
            })
            .collect()
    }

    pub(crate) fn outputs(plan: &crate::Plan, shape: &[usize], data: &[f32]) -> Vec<u32> {
        let input = Tensor::from_shape(shape, data).unwrap();
        let out = plan.run(tvec!(input.into_tvalue())).unwrap();
        let view = out[0].to_plain_array_view::<f32>().unwrap();
        view.iter().map(|v| v.to_bits()).collect()
    }

    /// Odd geometries (outputs that end inside a panel, strides, dilations, asymmetric
    /// padding, rows narrower than a panel) in bands of one panel unit, a few units and the
    /// default size: the banded plan gives the bits of tract's own unrewritten plan.
    /// Whether this CPU runs the engine's VNNI tiles.
    fn vnni_cpu() -> bool {
        #[cfg(target_arch = "x86_64")]
        return crate::vnni::available();
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// A plan's largest node, in multiply-adds, as the load reports it (what decides whether
    /// inference is split over threads): a banded layer counts channels x positions x k,
    /// and tract's own matmuls count through tract's cost model.
    #[test]
    fn the_load_reports_the_largest_layers_multiply_adds() {
        // 64 channels x 32x32 positions x 16*3*3 deep, then 8 x 32x32 x 64. (Not a stride-2
        // second layer: tract would move the subsampling into the first.)
        let layers = [
            Layer(64, 3, [1; 2], 1, [1; 4], 1),
            Layer(8, 1, [1; 2], 1, [0; 4], 1),
        ];
        let bytes = conv_model(16, 32, 32, &layers);
        let spec = input_spec(16, 32, 32);
        let target = Target {
            input: &spec,
            output_tensor: "y",
            batch: 1,
        };
        for rewrite in [true, false] {
            let built = build_with(&bytes, &target, rewrite).unwrap();
            assert_eq!(
                built.largest_node_macs,
                64 * 32 * 32 * 144,
                "rewrite {rewrite}"
            );
        }
    }

    /// Which tiles a banded layer runs on, by family.
    fn family(b: &BandedConv) -> &'static str {
        match b.products.tiles() {
            None => "tract",
            Some(Tiles::C16(..)) => "c16",
            Some(Tiles::Pairs(p)) if p.0.deep_blocks().is_some() => "deep",
            Some(Tiles::Pairs(..)) => "pairs",
            Some(Tiles::Dot(..)) => "dot",
            #[cfg(target_arch = "x86_64")]
            Some(Tiles::Vnni(_)) => "vnni",
        }
    }

    #[test]
    fn banded_convolutions_match_the_unrewritten_plan() {
        banded_plans_match(None, Weights::Symmetric);
    }

    /// The same models with every layer the c16 tiles take on them (the NEON kernel on
    /// aarch64, its scalar reference elsewhere).
    #[test]
    fn banded_convolutions_on_the_c16_tiles_match_the_unrewritten_plan() {
        FORCE.set(Some("c16"));
        banded_plans_match(Some("c16"), Weights::Symmetric);
        FORCE.set(None);
    }

    /// The same models with every layer the pairs tiles take on them (the NEON kernel on
    /// aarch64, its scalar reference elsewhere).
    #[test]
    fn banded_convolutions_on_the_pairs_tiles_match_the_unrewritten_plan() {
        FORCE.set(Some("pairs"));
        banded_plans_match(Some("pairs"), Weights::Symmetric);
        FORCE.set(None);
    }

    /// The same models on the dot tiles (the SDOT kernel on aarch64 cores with the dot
    /// product, its scalar reference elsewhere).
    #[test]
    fn banded_convolutions_on_the_dot_tiles_match_the_unrewritten_plan() {
        FORCE.set(Some("dot"));
        banded_plans_match(Some("dot"), Weights::Symmetric);
        FORCE.set(None);
    }

    /// The same models with every layer that has a pair of 4-k blocks on the deep pairs
    /// form (the NEON kernel on aarch64, its scalar reference elsewhere), whatever it
    /// costs: the test weights (uniform over [-127, 127]) leave about half its lanes over
    /// their budget, so every layer adds back many residual products.
    #[test]
    fn banded_convolutions_on_the_deep_pairs_match_the_unrewritten_plan() {
        FORCE.set(Some("deep"));
        banded_plans_match(Some("deep"), Weights::Symmetric);
        FORCE.set(None);
    }

    /// The same models with asymmetric u8 weights, per tensor and per channel, and with a
    /// zero point far from their middle: every layer is banded, on each family of tiles,
    /// with the weight zero point's term (fused in tract's matmul after an im2col, a Sub
    /// after it for a 1x1 convolution) folded into the weights of the aarch64 families
    /// where few leave i8 then, and computed from the band's own patches otherwise. Both
    /// forms occur.
    #[test]
    fn banded_convolutions_with_u8_weights_match_the_unrewritten_plan() {
        let codings = [
            Weights::U8 { per_channel: false },
            Weights::U8 { per_channel: true },
            Weights::U8Skewed,
        ];
        let (mut folded, mut sums) = (0, 0);
        for coding in codings {
            for forced in [None, Some("c16"), Some("pairs"), Some("deep"), Some("dot")] {
                if forced.is_none() && expected_family(None) == "tract" {
                    // tract's kernel cannot leave out a fused zero-point term; the forced
                    // families below cover this CPU.
                    continue;
                }
                FORCE.set(forced);
                let terms = banded_plans_match(forced, coding);
                FORCE.set(None);
                if coding == Weights::U8Skewed {
                    assert_eq!(terms.0, 0, "{forced:?}: folded the skewed zero point");
                }
                folded += terms.0;
                sums += terms.1;
            }
        }
        assert!(folded > 0, "no layer took the zero point in its weights");
        assert!(
            sums > 0,
            "no layer took the zero point from the column sums"
        );
    }

    /// The family every banded layer should run on: `forced`, else the CPU's (`"c16"`
    /// stands for either family without dot product, which banded.rs picks per layer).
    fn expected_family(forced: Option<&'static str>) -> &'static str {
        if let Some(family) = forced {
            family
        } else if super::c16_wanted() {
            "c16"
        } else if super::dot_wanted() {
            "dot"
        } else if vnni_cpu() {
            "vnni"
        } else {
            "tract"
        }
    }

    /// Returns how many layers took a weight zero point folded into their weights, and how
    /// many from the column sums.
    fn banded_plans_match(forced: Option<&'static str>, coding: Weights) -> (usize, usize) {
        // (channels, height, width, layers banded, layers): tract runs a 1×1 stride-1
        // convolution as a plain matmul over its packed input, banded as the a operand.
        let models = [
            (
                3,
                7,
                13,
                3,
                vec![
                    Layer(12, 3, [2; 2], 1, [1; 4], 1),
                    Layer(20, 1, [1; 2], 1, [0; 4], 1),
                    Layer(9, 1, [1; 2], 1, [0; 4], 1),
                ],
            ),
            (
                3,
                15,
                13,
                2,
                vec![
                    Layer(8, 3, [2; 2], 1, [1, 0, 2, 1], 1),
                    Layer(16, 3, [1; 2], 1, [1; 4], 1),
                ],
            ),
            (
                1,
                17,
                17,
                2,
                vec![
                    Layer(24, 3, [1; 2], 1, [1; 4], 1),
                    Layer(5, 5, [1; 2], 2, [4; 4], 1),
                ],
            ),
            (
                3,
                9,
                40,
                2,
                vec![
                    Layer(32, 1, [1; 2], 1, [0; 4], 1),
                    Layer(7, 3, [3; 2], 1, [0, 2, 1, 0], 1),
                ],
            ),
            // Unequal strides on a wide input (MobileNetV3-style).
            (
                3,
                12,
                45,
                2,
                vec![
                    Layer(12, 3, [2, 1], 1, [1; 4], 1),
                    Layer(9, 5, [1, 2], 1, [2, 1, 2, 2], 1),
                ],
            ),
            // Products 576 and 1000 deep, with 40 and 17 channels (panels cut short) and 231
            // and 99 output positions.
            (
                3,
                11,
                21,
                4,
                vec![
                    Layer(64, 3, [1; 2], 1, [1; 4], 1),
                    Layer(40, 3, [1; 2], 1, [1; 4], 1),
                    Layer(17, 5, [2; 2], 1, [2, 1, 2, 2], 1),
                    Layer(24, 3, [1; 2], 2, [2; 4], 1),
                ],
            ),
        ];
        let (mut tiled_layers, mut expected_tiled) = (0, 0);
        let mut terms = (0, 0);
        for (m, (c, h, w, patched, layers)) in models.iter().enumerate() {
            let bytes = conv_model_with(*c, *h, *w, layers, coding);
            let spec = input_spec(*c, *h, *w);
            let target = Target {
                input: &spec,
                output_tensor: "y",
                batch: 1,
            };
            let plain = build_with(&bytes, &target, false).unwrap();
            let shape = [1, *c, *h, *w];
            let len = c * h * w;
            let inputs = test_inputs(len);
            for band_bytes in [1, 20_000, super::BAND_BYTES] {
                BAND_BYTES.set(band_bytes);
                let banded = build_with(&bytes, &target, true).unwrap();
                BAND_BYTES.set(super::BAND_BYTES);
                let count = banded
                    .plan
                    .model()
                    .nodes()
                    .iter()
                    .filter(|n| n.op_is::<BandedConv>())
                    .count();
                assert_eq!(count, *patched, "model {m}: {:?}", banded.patches);
                let ops: Vec<&BandedConv> = banded
                    .plan
                    .model()
                    .nodes()
                    .iter()
                    .filter_map(|n| n.op_as::<BandedConv>())
                    .collect();
                let tiled = ops.iter().filter(|b| b.products.tiles().is_some()).count();
                // On the c16 tiles every layer (the test weights are in [-127, 127]);
                // on the dot or VNNI tiles every layer, whatever kernel tract packed it
                // for.
                for (i, b) in ops.iter().enumerate() {
                    let got = match family(b) {
                        "pairs" | "deep" if forced.is_none() => "c16",
                        got => got,
                    };
                    // The deep form needs a pair of 4-k blocks.
                    let want = match expected_family(forced) {
                        "deep" if pairs::DeepBlocks::new(b.pack.k).is_none() => "pairs",
                        want => want,
                    };
                    assert_eq!(got, want, "model {m}, layer {i} (k {})", b.pack.k);
                    expected_tiled += usize::from(want != "tract");
                    let u8_weights = coding != Weights::Symmetric;
                    assert_eq!(
                        b.after.zero_point.is_some(),
                        u8_weights,
                        "model {m}, layer {i}: the weight zero point's term"
                    );
                    match &b.after.zero_point {
                        Some(ZeroPointTerm::Folded) => {
                            assert!(["c16", "pairs", "deep", "dot"].contains(&family(b)));
                            terms.0 += 1;
                        }
                        Some(ZeroPointTerm::Sums(_)) => terms.1 += 1,
                        None => {}
                    }
                }
                tiled_layers += tiled;
                for data in &inputs {
                    let (want, got) = (
                        outputs(&plain.plan, &shape, data),
                        outputs(&banded.plan, &shape, data),
                    );
                    assert_eq!(want.len(), got.len());
                    let differ = want.iter().zip(&got).position(|(a, b)| a != b);
                    assert_eq!(
                        differ, None,
                        "model {m}, bands of {band_bytes} bytes: first difference"
                    );
                    // Bands spread over a pool's threads write the same bytes.
                    let pool = crate::threads::executor_for(3).unwrap();
                    PARALLEL_MACS.set(0);
                    let threaded =
                        crate::threads::scope(pool, || outputs(&banded.plan, &shape, data));
                    PARALLEL_MACS.set(super::PARALLEL_MACS);
                    assert_eq!(
                        threaded, want,
                        "model {m}, bands of {band_bytes} bytes, 3 threads"
                    );
                }
            }
        }
        assert_eq!(tiled_layers, expected_tiled);
        if expected_family(forced) != "tract" {
            assert!(tiled_layers > 0, "no layer ran on the engine's tiles");
        }
        terms
    }
}
