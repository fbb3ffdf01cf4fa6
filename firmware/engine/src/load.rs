//! Turning a verified, memory-mapped ONNX file into an optimised tract plan.
//!
//! Exporters disagree on how the batch dimension is expressed, and tract needs it concrete
//! before it optimises. onnxruntime-quantized graphs carry a symbolic `N` through their
//! value_info: they type cleanly with the symbol and are then bound to the batch size.
//! tf2onnx graphs (the VGG16 in ../shared/models) compute a Reshape shape from the input's
//! shape, which tract can only type once the input is concrete. The loader tries the first
//! and falls back to the second, and reports which one worked.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use edgedx_bundle::{InputSpec, ModelFile};
use memmap2::Mmap;
use prost::Message;
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::matmul::optimized::OptMatMul;

use crate::error::EngineError;
use crate::{epilogue, im2col, pool, rewrite, weights, Plan};

/// Upper bound on the batch a plan is built for: a classifier on a 2 GB board never needs
/// more, and it bounds the activation memory a config typo could ask for.
pub const MAX_BATCH: usize = 64;

/// ONNX TensorProto.DataType FLOAT.
const ONNX_FLOAT: i32 = 1;

/// How the batch dimension was made concrete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadStrategy {
    /// Typed with the graph's own (symbolic or fixed) batch, then the symbol bound.
    TypeThenBindBatch,
    /// Input fact set to the concrete shape before typing (needed by tf2onnx graphs).
    ConcreteInputFact,
}

impl fmt::Display for LoadStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LoadStrategy::TypeThenBindBatch => "typed with symbolic batch, then bound",
            LoadStrategy::ConcreteInputFact => "concrete input shape set before typing",
        })
    }
}

/// A model file mapped read-only whose bytes matched the manifest's sha256.
pub struct Mapped {
    map: Arc<Mmap>,
    /// The file, canonical (the external-data references of weights.rs name it).
    path: PathBuf,
    pub sha256: String,
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map
    }
}

/// Maps `path` and checks its sha256 against the manifest entry before anything parses it.
/// The hash is computed over the mapped bytes, so what is verified is what is loaded.
pub fn map_verified(path: &Path, file: &ModelFile) -> Result<Mapped, EngineError> {
    let io = |source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    };
    let handle = File::open(path).map_err(io)?;
    if handle.metadata().map_err(io)?.len() == 0 {
        return Err(EngineError::Load {
            path: path.to_path_buf(),
            message: "the file is empty".into(),
        });
    }
    // SAFETY: the map is read-only and private to this process; a concurrent writer could
    // change the bytes under us, which is why the hash is checked on the map itself and the
    // bytes are only parsed after that check.
    let map = unsafe { Mmap::map(&handle) }.map_err(io)?;
    let sha256 = edgedx_bundle::verify_bytes(path, file, &map)?;
    // Hashing read every page; the load reads each weight once more, when tract copies it.
    weights::drop_pages(&map, 0, map.len());
    Ok(Mapped {
        map: Arc::new(map),
        path: path.canonicalize().map_err(io)?,
        sha256,
    })
}

/// What the plan must take and produce.
pub struct Target<'a> {
    pub input: &'a InputSpec,
    pub output_tensor: &'a str,
    pub batch: usize,
}

pub struct Built {
    pub plan: Plan,
    pub strategy: LoadStrategy,
    pub strategy_note: Option<String>,
    pub kernels: Vec<String>,
    pub ops: Vec<(String, usize)>,
    /// The exact rewrites applied after tract's optimiser (rewrite.rs, im2col.rs, pool.rs,
    /// epilogue.rs).
    pub patches: Vec<String>,
    /// Quantized operators that run in float, and why (contrib.rs).
    pub in_float: Vec<String>,
    /// The most multiply-adds any one node of the plan does per run (tract's cost model).
    pub largest_node_macs: u64,
    /// The step between output values when a per-tensor DequantizeLinear makes the output
    /// (QDQ models that quantize their Softmax); 0 for a float output.
    pub output_step: f32,
}

/// Parses and optimises the model. May panic inside tract on malformed graphs: callers run
/// it under `catch_unwind`. The weights are read from the map once each, when tract makes
/// its tensors (weights.rs), and the map is dropped once the graph is typed.
pub fn build(mapped: Mapped, target: &Target) -> Result<Built, EngineError> {
    let location = mapped.path.file_name().and_then(|n| n.to_str());
    let dir = mapped.path.parent().and_then(|d| d.to_str());
    let (Some(location), Some(dir)) = (location, dir) else {
        // A path tract cannot name: decode the whole file instead.
        let proto = decode(&mapped)?;
        drop(mapped);
        return build_proto(proto, None, target, true);
    };
    let (proto, moved) =
        weights::decode_leaving_weights(&mapped, location).map_err(decoding_failed)?;
    log::debug!("{moved} bytes of initializers left in the map until tract reads them");
    let source = External {
        dir: dir.to_string(),
        resolver: Arc::new(weights::MapResolver {
            path: mapped.path.clone(),
            map: mapped.map.clone(),
        }),
    };
    drop(mapped);
    build_proto(proto, Some(source), target, true)
}

/// Where tract reads the initializers that `weights::decode_leaving_weights` left in the
/// file.
struct External {
    dir: String,
    resolver: Arc<weights::MapResolver>,
}

fn decode(bytes: &[u8]) -> Result<pb::ModelProto, EngineError> {
    pb::ModelProto::decode(bytes).map_err(decoding_failed)
}

fn decoding_failed(e: impl fmt::Display) -> EngineError {
    load_err(format!(
        "protobuf decoding failed ({e}); the file is truncated or not ONNX"
    ))
}

/// `build` from bytes in memory, with the rewrites of rewrite.rs switched off when
/// `rewrite` is false: the tests compare both plans. Not an engine option, since the
/// rewrites never change an output.
#[cfg(test)]
pub(crate) fn build_with(
    bytes: impl AsRef<[u8]>,
    target: &Target,
    rewrite: bool,
) -> Result<Built, EngineError> {
    let proto = decode(bytes.as_ref())?;
    drop(bytes);
    build_proto(proto, None, target, rewrite)
}

fn build_proto(
    mut proto: pb::ModelProto,
    external: Option<External>,
    target: &Target,
    rewrite: bool,
) -> Result<Built, EngineError> {
    crate::cpu::configure_tract();
    let _allocator = crate::memory::LoadAllocation::begin();
    let tr = |stage: &str| crate::memory::log_use(format_args!("{stage}"));
    check_declared_input(&proto, target)?;
    tr("decoding");
    // onnxruntime's contrib operators as standard ones (contrib.rs): tract cannot parse
    // them, so this is part of loading, not one of the rewrites.
    let fopen = tract_onnx::data_resolver::FopenDataResolver;
    let source: crate::contrib::Source = match external.as_ref() {
        Some(e) => (&*e.resolver, Some(e.dir.as_str())),
        None => (&fopen, None),
    };
    let mut lowered = crate::contrib::lower_contrib_ops(&mut proto, source);
    // QDQ patterns onto QLinearConv (and QGemm) before tract sees them (qdq.rs).
    let fused = if rewrite {
        crate::qdq::fuse_qdq(&mut proto)
    } else {
        Default::default()
    };
    // The QGemms written for QDQ Gemms, lowered as a QOperator file's; any that could not
    // be written as integer products is reported in float with the others.
    let mut qdq_gemms = fused.gemms;
    if fused.gemms > 0 {
        for (op, n) in crate::contrib::lower_contrib_ops(&mut proto, source) {
            qdq_gemms = qdq_gemms.saturating_sub(n);
            for _ in 0..n {
                crate::qdq::tally(&mut lowered, &op);
            }
        }
    }
    // What runs in float between DequantizeLinear and QuantizeLinear, less what the rewrites
    // on the plan below take onto the int8 values (`lowered_nodes`: the nodes contrib.rs
    // wrote for QLinearAdd, QLinearMul, QLinearGlobalAveragePool, ..., to tell them from QDQ
    // ones).
    let mut qdq_float = crate::qdq::float_between_qdq(&proto);
    let lowered_nodes = crate::contrib::lowered_nodes(
        &proto,
        &[
            "Add",
            "Mul",
            "GlobalAveragePool",
            "Sigmoid",
            "LeakyRelu",
            "Concat",
            "AveragePool",
        ],
    );
    // Each ONNX node as tract names it, with its operator: the rewrites name the plan's
    // nodes they take, and the census above counts ONNX operators.
    let onnx_nodes = crate::qdq::tract_names(&proto);
    // A correctness guard, not one of the rewrites: tract would turn a quantized Softmax
    // into a wrong lookup table (qdq.rs, ROW_OPERATORS). After the float census above,
    // which still sees the Softmax reading its DequantizeLinear.
    let exact_rows = crate::qdq::keep_row_operators_exact(&mut proto);
    let output_step = crate::qdq::output_step(&proto, target.output_tensor).unwrap_or(0.0);

    let (typed, strategy, strategy_note) = match type_then_bind(&proto, external.as_ref(), target) {
        Ok(typed) => (typed, LoadStrategy::TypeThenBindBatch, None),
        Err(first) => {
            log::debug!("type-then-bind failed ({first}), retrying with a concrete input fact");
            let typed = concrete_input(&proto, external.as_ref(), target).map_err(|second| {
                load_err(format!(
                    "could not type the graph: with a symbolic batch: {first}; with a concrete input: {second}"
                ))
            })?;
            (typed, LoadStrategy::ConcreteInputFact, Some(first))
        }
    };
    tr("typing");
    drop(proto);
    drop(external);
    tr("dropping the protobuf and the map");

    let mut optimized = typed;
    optimized
        .declutter()
        .map_err(|e| load_err(format!("optimisation failed: {e:#}")))?;
    tr("tract's declutter");
    let in_place = if rewrite {
        crate::lean::optimize(&mut optimized)
    } else {
        optimized.optimize().map(|()| Default::default())
    }
    .map_err(|e| load_err(format!("optimisation failed: {e:#}")))?;
    tr("tract's optimisation");
    // Only `epilogue::PerTensorRequantize`, inside lean.rs's codegen, has made these so far.
    let per_tensor = optimized
        .nodes()
        .iter()
        .filter(|n| n.op_is::<epilogue::Requantize>())
        .count();
    // Same values as tract's folding, so not a change to the plan (`patches`).
    log::debug!(
        "constants changed in place: {} kernels packed, {} reshaped",
        in_place.packed,
        in_place.reshaped
    );
    let mut patches: Vec<String> = [
        (fused.convs, "ran", "QDQ convolution", " as QLinearConv"),
        (
            fused.moves,
            "ran",
            "QDQ max pool or shape node",
            " on the quantized values",
        ),
        (
            qdq_gemms,
            "ran",
            "QDQ Gemm/MatMul head",
            " as integer products on its int8 weights",
        ),
        (
            exact_rows,
            "dequantized the input of",
            "Softmax-like operator",
            " with Cast/Sub/Mul (tract 0.23.9 would make a wrong lookup table of it)",
        ),
        (
            per_tensor,
            "kept",
            "per-tensor requantization",
            " in f32 as onnxruntime does (tract: a fixed point in its kernel)",
        ),
    ]
    .into_iter()
    .filter_map(patch_note)
    .collect();
    if rewrite {
        let nodes = optimized.nodes().len();
        let mut banded = 0;
        let mut depthwise = 0;
        let mut gemvs = 0;
        let mut zero_points = 0;
        let mut concats = 0;
        let mut binaries = 0;
        let mut average_pools = 0;
        let mut tables = 0;
        let mut max_pools_quantized = 0;
        let mut max_pools_moved = 0;
        let mut merged_tables = 0;
        let mut relus = 0;
        let mut tables_looked_up = 0;
        let mut straight_to_i8 = 0;
        let mut reshaped = 0;
        let folded_chains = rewrite::fold_constant_chains(&mut optimized)
            .map_err(|e| load_err(format!("folding constant weight chains failed: {e:#}")))?;
        let removed = rewrite::drop_zero_products(&mut optimized)
            .map_err(|e| load_err(format!("removing zero-point terms failed: {e:#}")))?;
        let fused = epilogue::fuse_requantization(&mut optimized)
            .map_err(|e| load_err(format!("fusing requantization failed: {e:#}")))?;
        let packers = im2col::speed_up_patches(&mut optimized)
            .map_err(|e| load_err(format!("replacing the int8 patch packing failed: {e:#}")))?;
        let pools = pool::speed_up_max_pools(&mut optimized)
            .map_err(|e| load_err(format!("replacing the int8 max pools failed: {e:#}")))?;
        let downsamples = crate::downsample::speed_up_downsamples(&mut optimized)
            .map_err(|e| load_err(format!("replacing the int8 strided slices failed: {e:#}")))?;
        let quantizers = crate::quantize::speed_up_quantize(&mut optimized)
            .map_err(|e| load_err(format!("replacing the input quantization failed: {e:#}")))?;
        if folded_chains > 0
            || removed > 0
            || fused > 0
            || packers > 0
            || pools > 0
            || quantizers > 0
        {
            // A second codegen pass lets tract fuse the remaining per-channel Sub into the
            // matmul and prune what the rewrites left unused: the column sums of the removed
            // terms and the replaced requantization chains. Codegen only, not a full `into_optimized()`: the plan is
            // the same on the default and VGG16 bundles, and skipping the second declutter
            // keeps VGG16 int8's load peak lower.
            optimized.optimize().map_err(|e| {
                load_err(format!(
                    "optimisation after the int8 rewrites failed: {e:#}"
                ))
            })?;
            // Last, on the optimised plan: it takes tract's matmuls as tract built them.
            banded = crate::banded::band_convolutions(&mut optimized)
                .map_err(|e| load_err(format!("banding the int8 convolutions failed: {e:#}")))?;
            depthwise = crate::depthwise::direct_depthwise(&mut optimized).map_err(|e| {
                load_err(format!(
                    "replacing the int8 depthwise convolutions failed: {e:#}"
                ))
            })?;
            gemvs = crate::gemv::gemv_products(&mut optimized).map_err(|e| {
                load_err(format!(
                    "replacing the int8 matrix-vector products failed: {e:#}"
                ))
            })?;
            // First: the nodes after a Relu in float then read a dequantization.
            relus = crate::qtable::relus_on_integers(&mut optimized).map_err(|e| {
                load_err(format!(
                    "moving the Relus onto the int8 tensors failed: {e:#}"
                ))
            })?;
            let fused_binaries =
                crate::qbinary::fuse_quantized_binaries(&mut optimized).map_err(|e| {
                    load_err(format!("fusing the quantized Adds and Muls failed: {e:#}"))
                })?;
            let fused_pools =
                crate::avgpool::fuse_quantized_pools(&mut optimized).map_err(|e| {
                    load_err(format!("fusing the quantized average pools failed: {e:#}"))
                })?;
            // Before the tables: a chain whose quantization came after an f32 max pool ends
            // in that quantization once the pool has moved after it.
            max_pools_moved = pool::pool_before_element_wise_chains(&mut optimized)
                .map_err(|e| load_err(format!("pooling before the float chains failed: {e:#}")))?;
            max_pools_quantized = pool::quantize_before_max_pools(&mut optimized).map_err(|e| {
                load_err(format!("quantizing before the f32 max pools failed: {e:#}"))
            })?;
            let chains = crate::qtable::tabulate_quantized_chains(&mut optimized).map_err(|e| {
                load_err(format!(
                    "tabulating the quantized element-wise chains failed: {e:#}"
                ))
            })?;
            merged_tables = crate::qtable::merge_tables(&mut optimized)
                .map_err(|e| load_err(format!("merging the lookup tables failed: {e:#}")))?;
            // Where onnxruntime quantizes only the convolutions (QOperator with standard
            // operators), every ReLU6 between two of them is a table and every residual
            // Add a float sum then a quantization, each read by the next convolution
            // through tract's shift to i8: a second pass over each tensor (1.5 M of
            // MobileNetV2's 93 M instructions under qemu, cortex-a72).
            straight_to_i8 = rewrite::fold_shifts(&mut optimized, shifted_to_i8, taking_i8)
                .map_err(|e| load_err(format!("folding the shifts to i8 failed: {e:#}")))?;
            let joined = crate::qtable::concat_quantized(&mut optimized).map_err(|e| {
                load_err(format!("concatenating the quantized tensors failed: {e:#}"))
            })?;
            // Last of the tables: those that read a requantization alone join it.
            tables_looked_up =
                crate::qtable::tables_into_requantization(&mut optimized).map_err(|e| {
                    load_err(format!(
                        "folding the lookup tables into the requantizations failed: {e:#}"
                    ))
                })?;
            // Last: the convolutions as the other rewrites left them.
            reshaped = reshapes_into_convolutions(&mut optimized).map_err(|e| {
                load_err(format!("reshaping the convolutions' outputs failed: {e:#}"))
            })?;
            binaries = fused_binaries.len();
            average_pools = fused_pools.len();
            tables = chains.len();
            concats = joined.len();
            // Each fused node as (its QDQ operator, its contrib operator, its node's name).
            // A table's chain is one node of the census when all its steps come from one
            // ONNX node (a Clip is tract's Max and Min); longer chains were not counted.
            // The census entry of the ONNX node a plan node came from.
            let entry =
                |(name, op): &(String, String)| (op.clone(), format!("QLinear{op}"), name.clone());
            let chain_nodes = chains.into_iter().filter_map(|steps| {
                let mut sources = steps
                    .iter()
                    .map(|step| crate::qdq::onnx_node_of(&onnx_nodes, step));
                let first = sources.next()??;
                sources.all(|s| s == Some(first)).then(|| entry(first))
            });
            // tract's own tables: it makes one of a quantized unary chain (a Sigmoid between
            // its DequantizeLinear and QuantizeLinear) at declutter, so that node runs on
            // the int8 values too.
            let tract_tables: Vec<(String, String, String)> = optimized
                .nodes()
                .iter()
                .filter(|n| n.op.name() == "LookupTable")
                .filter_map(|n| crate::qdq::onnx_node_of(&onnx_nodes, &n.name))
                .map(entry)
                .collect();
            let fused_nodes = fused_binaries
                .into_iter()
                .map(|(mul, name)| match mul {
                    false => ("Add".to_string(), "QLinearAdd".to_string(), name),
                    true => ("Mul".to_string(), "QLinearMul".to_string(), name),
                })
                .chain(fused_pools.iter().map(entry))
                .chain(chain_nodes)
                .chain(tract_tables)
                .chain(
                    joined
                        .iter()
                        .filter_map(|concat| crate::qdq::onnx_node_of(&onnx_nodes, concat))
                        .map(entry),
                );
            for (qdq_op, contrib_op, name) in fused_nodes {
                let from_lowered = lowered_nodes
                    .iter()
                    .any(|l| crate::qdq::named_after(&name, l));
                let (counts, op) = if from_lowered {
                    (&mut lowered, contrib_op)
                } else {
                    (&mut qdq_float, qdq_op)
                };
                if let Some(entry) = counts.iter_mut().find(|(o, _)| *o == op) {
                    entry.1 = entry.1.saturating_sub(1);
                }
            }
            optimized
                .compact()
                .map_err(|e| load_err(format!("pruning the rewritten plan failed: {e:#}")))?;
            zero_points = optimized
                .nodes()
                .iter()
                .filter(|n| {
                    n.op_as::<crate::banded::BandedConv>()
                        .is_some_and(|b| b.takes_zero_point())
                        || n.op_as::<crate::depthwise::DepthwiseInt8>()
                            .is_some_and(|d| d.takes_zero_point())
                })
                .count();
            log::debug!(
                "int8 rewrites: {folded_chains} constant chains, {removed} zero-point terms, {packers} packings, {pools} max \
                 pools, {fused} requantizations, {banded} banded, {depthwise} depthwise, {binaries} quantized Add/Mul, {average_pools} average pools, {tables} tables; plan {nodes} -> {} nodes",
                optimized.nodes().len()
            );
        }
        patches.extend(
            [
                (
                    folded_chains,
                    "evaluated",
                    "constant weight chain",
                    " at load instead of every inference",
                ),
                (removed, "removed", "zero-point Sub(x, 0*y) term", ""),
                (
                    packers,
                    "packed the patches of",
                    "int8 convolution",
                    " in runs",
                ),
                (pools, "ran", "u8/i8 max pool", " on the engine's kernel"),
                (
                    downsamples,
                    "copied",
                    "u8/i8 strided slice (Downsample)",
                    " by rows and vector steps",
                ),
                (
                    quantizers,
                    "quantized",
                    "f32 input",
                    " in one branch-free pass",
                ),
                (
                    banded,
                    "ran",
                    "int8 convolution",
                    " a band of output rows at a time",
                ),
                (
                    depthwise,
                    "computed",
                    "int8 depthwise convolution",
                    " directly",
                ),
                (
                    gemvs,
                    "computed",
                    "int8 matrix-vector product",
                    " on the engine's kernel",
                ),
                (
                    zero_points,
                    "took the weight zero point of",
                    "int8 convolution",
                    " into the engine's kernels (asymmetric weights: zero_point.rs)",
                ),
                (
                    fused,
                    "fused",
                    "requantization chain",
                    " into one pass each",
                ),
                (
                    binaries,
                    "computed",
                    "int8 Add/Mul node",
                    " in one pass each, without f32 tensors between the steps",
                ),
                (
                    average_pools,
                    "summed",
                    "quantized average pool",
                    " in integers",
                ),
                (
                    concats,
                    "concatenated",
                    "quantized Concat",
                    " on the int8 values, each input requantized by a 256-entry table",
                ),
                (
                    max_pools_moved,
                    "moved",
                    "f32 max pool",
                    " in front of the element-wise float chain it pooled, onto bytes or their ranks",
                ),
                (
                    max_pools_quantized,
                    "moved the quantization in front of",
                    "f32 max pool",
                    ", which then ran on bytes",
                ),
                (
                    relus,
                    "moved",
                    "f32 Relu",
                    " after a dequantization onto the int8 tensor before it, as a table",
                ),
                (
                    merged_tables,
                    "merged",
                    "int8 element-wise node",
                    " on one tensor into a single table",
                ),
                (
                    straight_to_i8,
                    "folded",
                    "u8-to-i8 shift",
                    " into the op that computes the value (table, quantization, convolution, pool, Add/Mul)",
                ),
                (
                    tables,
                    "looked up",
                    "quantized element-wise chain",
                    " in a 256-entry table",
                ),
                (
                    tables_looked_up,
                    "folded",
                    "lookup table",
                    " into the requantization before it",
                ),
                (
                    reshaped,
                    "gave",
                    "int8 convolution",
                    " the shape of the reshape after it, which then had no node of its own",
                ),
            ]
            .into_iter()
            .filter_map(patch_note),
        );
    }
    tr("the engine's rewrites");
    let lowered = lowered.into_iter().filter(|(_, n)| *n > 0).map(|(op, n)| {
        format!("{n} com.microsoft {op}: dequantized, the float operator, quantized again (tract has no integer {op})")
    });
    let in_float: Vec<String> = lowered
        .chain(qdq_float.into_iter().filter(|(_, n)| *n > 0).map(|(op, n)| {
            format!("{n} {op} between DequantizeLinear and QuantizeLinear: float (no integer form of it in the engine)")
        }))
        .collect();
    let (kernels, ops) = describe(&optimized);
    let largest_node_macs = largest_node_macs(&optimized);
    let plan = optimized
        .into_runnable()
        .map_err(|e| load_err(format!("building the plan failed: {e:#}")))?;
    Ok(Built {
        plan,
        strategy,
        strategy_note,
        kernels,
        ops,
        patches,
        in_float,
        largest_node_macs,
        output_step,
    })
}

/// `"{before} {count} {noun}(s){after}"` for a rewrite applied `count` times, none for 0.
fn patch_note((count, before, noun, after): (usize, &str, &str, &str)) -> Option<String> {
    let plural = if count == 1 { "" } else { "s" };
    (count > 0).then(|| format!("{before} {count} {noun}{plural}{after}"))
}

fn load_err(message: String) -> EngineError {
    // The caller knows the path; `Model::load_file` re-labels it (see `with_path`).
    EngineError::Load {
        path: PathBuf::new(),
        message,
    }
}

/// Fills in the model path on errors raised while building.
pub fn with_path(e: EngineError, path: &Path) -> EngineError {
    match e {
        EngineError::Load { path: p, message } if p.as_os_str().is_empty() => EngineError::Load {
            path: path.to_path_buf(),
            message,
        },
        other => other,
    }
}

/// Refuses a model whose declared input contradicts the manifest before tract sees it,
/// so a wrong bundle fails with a sentence instead of a shape error deep in the graph.
fn check_declared_input(proto: &pb::ModelProto, target: &Target) -> Result<(), EngineError> {
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| load_err("the file has no graph".into()))?;
    let initializers: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&pb::ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(&i.name.as_str()))
        .collect();
    let names = || {
        inputs
            .iter()
            .map(|i| i.name.clone())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if inputs.len() != 1 {
        return Err(load_err(format!(
            "expected one image input, the graph has {} ({})",
            inputs.len(),
            names()
        )));
    }
    let input = inputs[0];
    if input.name != target.input.tensor {
        return Err(load_err(format!(
            "the manifest's input tensor is {:?}, the graph's is {:?}",
            target.input.tensor, input.name
        )));
    }
    if !graph.output.iter().any(|o| o.name == target.output_tensor) {
        return Err(load_err(format!(
            "the manifest's output tensor {:?} is not a graph output (outputs: {})",
            target.output_tensor,
            graph
                .output
                .iter()
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let Some(pb::type_proto::Value::TensorType(tensor)) =
        input.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(load_err(format!("input {:?} is not a tensor", input.name)));
    };
    if tensor.elem_type != ONNX_FLOAT {
        return Err(load_err(format!(
            "input {:?} has ONNX element type {}, edgedx feeds float32 (1)",
            input.name, tensor.elem_type
        )));
    }
    if let Some(shape) = &tensor.shape {
        let expected = target.input.shape(target.batch);
        if shape.dim.len() != expected.len() {
            return Err(load_err(format!(
                "input {:?} has rank {}, the manifest describes {:?}",
                input.name,
                shape.dim.len(),
                expected
            )));
        }
        // The batch axis is checked when binding; the image axes must match exactly when fixed.
        for (axis, (dim, want)) in shape.dim.iter().zip(expected).enumerate().skip(1) {
            if let Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) = &dim.value {
                if *v > 0 && *v as usize != want {
                    return Err(load_err(format!(
                        "input {:?} axis {axis} is {v}, the manifest ({} {}x{}x{}) needs {want}",
                        input.name,
                        target.input.layout,
                        target.input.height,
                        target.input.width,
                        target.input.channels
                    )));
                }
            }
        }
    }
    Ok(())
}

fn parse(
    proto: &pb::ModelProto,
    external: Option<&External>,
    target: &Target,
) -> TractResult<InferenceModel> {
    let mut onnx = tract_onnx::onnx();
    let dir = external.map(|e| {
        onnx.provider = e.resolver.clone();
        e.dir.as_str()
    });
    let parsed = onnx.parse(proto, dir)?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(TractError::msg(format!(
            "could not resolve inputs at top level: {:?}",
            parsed.unresolved_inputs
        )));
    }
    let mut model = parsed.model;
    let output = model
        .output_outlets()?
        .iter()
        .copied()
        .find(|o| {
            model.outlet_label(*o) == Some(target.output_tensor)
                || model.node(o.node).name == target.output_tensor
        })
        .ok_or_else(|| {
            TractError::msg(format!(
                "output {:?} not found after parsing",
                target.output_tensor
            ))
        })?;
    model.select_output_outlets(&[output])?;
    Ok(model)
}

fn type_then_bind(
    proto: &pb::ModelProto,
    external: Option<&External>,
    target: &Target,
) -> Result<TypedModel, String> {
    let model = parse(proto, external, target).map_err(|e| format!("{e:#}"))?;
    let typed = model.into_typed().map_err(|e| format!("{e:#}"))?;
    let fact = typed.input_fact(0).map_err(|e| format!("{e:#}"))?.clone();
    let expected = target.input.shape(target.batch);
    if fact.shape.rank() != expected.len() {
        return Err(format!("input rank {} after typing", fact.shape.rank()));
    }
    let mut bindings = HashMap::new();
    for (axis, (dim, want)) in fact.shape.iter().zip(expected).enumerate() {
        match dim.to_i64() {
            Ok(v) if v as usize == want => {}
            Ok(v) => return Err(format!("input axis {axis} is fixed at {v}, need {want}")),
            Err(_) => match dim {
                TDim::Sym(s) => {
                    bindings.insert(s.clone(), TDim::Val(want as i64));
                }
                other => return Err(format!("input axis {axis} is the expression {other}")),
            },
        }
    }
    let bound = if bindings.is_empty() {
        typed
    } else {
        typed.set_symbols(&bindings).map_err(|e| format!("{e:#}"))?
    };
    // Every symbol must be gone: a plan with a free dimension would be re-planned per call.
    let input = bound.input_fact(0).map_err(|e| format!("{e:#}"))?;
    if input.shape.as_concrete().is_none() {
        return Err(format!("input still symbolic after binding: {input:?}"));
    }
    Ok(bound)
}

fn concrete_input(
    proto: &pb::ModelProto,
    external: Option<&External>,
    target: &Target,
) -> Result<TypedModel, String> {
    let shape = target.input.shape(target.batch);
    parse(proto, external, target)
        .and_then(|m| m.with_input_fact(0, f32::fact(shape).into()))
        .and_then(|m| m.into_typed())
        .map_err(|e| format!("{e:#}"))
}

/// The matrix kernels and the operator mix of an optimised plan.
/// The most multiply-adds (`Cost::FMA`, any type) one node of `model` does per run, as the
/// ops report them; 0 for ops that report none or a count that depends on a symbol.
fn largest_node_macs(model: &TypedModel) -> u64 {
    let mut largest = 0;
    for node in model.nodes() {
        let Ok(inputs) = model.node_input_facts(node.id) else {
            continue;
        };
        let Ok(costs) = node.op.cost(&inputs) else {
            continue;
        };
        let macs: u64 = costs
            .iter()
            .filter(|(cost, _)| matches!(cost, tract_onnx::tract_core::ops::Cost::FMA(_)))
            .filter_map(|(_, n)| n.to_i64().ok())
            .map(|n| n.max(0) as u64)
            .sum();
        largest = largest.max(macs);
    }
    largest
}

fn describe(model: &TypedModel) -> (Vec<String>, Vec<(String, usize)>) {
    let mut kernels: Vec<String> = Vec::new();
    let mut ops: HashMap<String, usize> = HashMap::new();
    for node in model.nodes() {
        *ops.entry(node.op.name().to_string()).or_default() += 1;
        let names: Vec<String> = if let Some(mm) = node.op_as::<OptMatMul>() {
            mm.mmm.iter().map(|k| k.name().to_string()).collect()
        } else if let Some(b) = node.op_as::<crate::banded::BandedConv>() {
            b.kernels()
        } else if let Some(d) = node.op_as::<crate::depthwise::DepthwiseInt8>() {
            d.kernels()
        } else {
            vec![]
        };
        for name in names {
            if !kernels.contains(&name) {
                kernels.push(name);
            }
        }
    }
    kernels.sort();
    let mut ops: Vec<(String, usize)> = ops.into_iter().collect();
    ops.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    (kernels, ops)
}

/// The op computing `node`'s value straight in i8 (its u8 minus 128), for the engine's ops
/// that give u8 and have that form (rewrite.rs `fold_shifts`).
fn shifted_to_i8(node: &TypedNode) -> Option<Box<dyn TypedOp>> {
    use crate::avgpool::{QAvgPool, QGlobalAvgPool};
    if let Some(t) = node.op_as::<crate::qtable::QTable>() {
        return Some(Box::new(t.shifted()?));
    }
    if let Some(q) = node.op_as::<crate::quantize::Quantize8>() {
        return Some(Box::new(q.shifted()?));
    }
    if let Some(b) = node.op_as::<crate::qbinary::QBinary>() {
        return Some(Box::new(b.shifted()?));
    }
    if let Some(p) = node.op_as::<QAvgPool>() {
        return Some(Box::new(p.shifted()?));
    }
    if let Some(p) = node.op_as::<QGlobalAvgPool>() {
        return Some(Box::new(p.shifted()?));
    }
    crate::epilogue::with_requantization(node, |r| r.shifted())
}

/// Gives each int8 convolution whose output only a reshape reads (tract's `IntoShape`, to
/// the image's NCHW shape after the products' `[1, C, H·W]`) the reshape's shape, and
/// drops the reshape: a node of the plan fewer, and its tensor's reallocation (qformats
/// has three). Returns how many.
fn reshapes_into_convolutions(model: &mut TypedModel) -> TractResult<usize> {
    use crate::banded::BandedConv;
    use crate::depthwise::DepthwiseInt8;
    use tract_onnx::tract_core::ops::change_axes::IntoShape;
    let mut reshaped = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(reshape) = node.op_as::<IntoShape>() else {
            continue;
        };
        let from = model.node(node.inputs[0].node);
        let outputs = model.output_outlets()?;
        if from.outputs.len() != 1
            || from.outputs[0].successors.len() != 1
            || outputs.contains(&node.inputs[0])
        {
            continue;
        }
        let op: Option<Box<dyn TypedOp>> = if let Some(c) = from.op_as::<BandedConv>() {
            c.with_output_shape(&reshape.dims).map(|c| Box::new(c) as _)
        } else if let Some(c) = from.op_as::<DepthwiseInt8>() {
            c.with_output_shape(&reshape.dims).map(|c| Box::new(c) as _)
        } else {
            None
        };
        let Some(op) = op else {
            continue;
        };
        let name = format!("{}.reshaped", from.name);
        let patch = TypedModelPatch::rewire(
            model,
            &from.inputs.clone(),
            &[OutletId::new(id, 0)],
            &|p, taps| p.wire_node(&name, op.clone(), taps),
        )?;
        patch.apply(model)?;
        reshaped += 1;
    }
    Ok(reshaped)
}

/// How `node` can read input `slot` as i8 where it reads u8 (rewrite.rs `fold_shifts`).
fn taking_i8(node: &TypedNode, slot: usize) -> Option<rewrite::OnI8> {
    use rewrite::OnI8;
    if rewrite::is_offset_to_i8(node) {
        return Some(OnI8::Shift);
    }
    use tract_onnx::tract_core::ops::array::TypedConcat;
    use tract_onnx::tract_core::ops::change_axes::{AxisOp, IntoShape};
    // Ops that move bytes whatever their type: the strided slices, reshapes and axis moves
    // between the engine's ops, and a Concat of byte tensors.
    let bytes_moved = node.op_is::<crate::downsample::Downsample8>()
        || node.op_is::<IntoShape>()
        || node.op_is::<AxisOp>()
        || node.op_is::<TypedConcat>();
    let bytes_moved = bytes_moved && node.outputs[0].fact.datum_type == DatumType::U8;
    if bytes_moved {
        return Some(OnI8::Moves);
    }
    let binary = node.op_as::<crate::qbinary::QBinary>()?;
    Some(OnI8::Reads(Box::new(binary.reading_i8(slot)?)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::banded::tests::assert_agree;
    use edgedx_bundle::Bundle;
    use tract_linalg::mmm::MatMatMul;
    use tract_onnx::tract_core::ops::matmul::optimized::ProtoFusedSpec;

    /// The integer matmul kernels (with the packing index each uses) that tract picks for
    /// the default int8 model on this machine, from its unrewritten plan.
    pub(crate) fn int8_kernels() -> Vec<(Box<dyn MatMatMul>, usize)> {
        let bundle = default_bundle();
        let file = bundle.variant("int8").unwrap();
        let bytes = std::fs::read(bundle.variant_path(file)).unwrap();
        let m = bundle.manifest();
        let target = Target {
            input: &m.input,
            output_tensor: &m.output.tensor,
            batch: 1,
        };
        let built = build_with(&bytes, &target, false).unwrap();
        let mut found: Vec<(Box<dyn MatMatMul>, usize)> = Vec::new();
        for node in built.plan.model().nodes() {
            let Some(mm) = node.op_as::<OptMatMul>() else {
                continue;
            };
            if mm.mmm[0].internal_type() != DatumType::I32 {
                continue;
            }
            for op in &mm.micro_ops {
                if let ProtoFusedSpec::AddMatMul { packings, .. } = op {
                    let kernel = (mm.mmm[0].clone(), packings[0].0);
                    if !found
                        .iter()
                        .any(|(k, p)| k.name() == kernel.0.name() && *p == kernel.1)
                    {
                        found.push(kernel);
                    }
                }
            }
        }
        found
    }

    fn default_bundle() -> Bundle {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/brain-mri-4class");
        Bundle::open(&dir).expect("models/brain-mri-4class")
    }

    /// Deterministic inputs in and beyond the model's [0, 1] range: xorshift noise for
    /// several seeds, a smooth disc, a checkerboard, constants, and noise in [-2, 3] that
    /// drives the first layer's requantization into both clamps.
    fn inputs(len: usize, side: usize) -> Vec<Vec<f32>> {
        let noise = |seed: u64, lo: f32, hi: f32| {
            let mut s = seed;
            (0..len)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    lo + (hi - lo) * (s >> 40) as f32 / (1u64 << 24) as f32
                })
                .collect::<Vec<f32>>()
        };
        let mut all: Vec<Vec<f32>> = [1, 2, 3, 0x5eed].map(|s| noise(s, 0.0, 1.0)).into();
        all.push(noise(7, -2.0, 3.0));
        let c = side as f32 / 2.0;
        all.push(
            (0..len)
                .map(|i| {
                    let (y, x) = ((i / side) % side, i % side);
                    let r = ((y as f32 - c).powi(2) + (x as f32 - c).powi(2)).sqrt() / c;
                    (1.0 - r).clamp(0.0, 1.0)
                })
                .collect(),
        );
        all.push((0..len).map(|i| ((i / side + i) % 2) as f32).collect());
        all.push(vec![0.0; len]);
        all.push(vec![1.0; len]);
        all
    }

    fn run_bits(plan: &Plan, shape: &[usize], data: &[f32]) -> Vec<u32> {
        let input = Tensor::from_shape(shape, data).unwrap();
        let out = plan.run(tvec!(input.into_tvalue())).unwrap();
        let view = out[0].to_plain_array_view::<f32>().unwrap();
        view.iter().map(|v| v.to_bits()).collect()
    }

    /// Builds `variant` with and without the rewrites and checks that both plans produce the
    /// same outputs on every input (bit for bit but for a global pool's f32 averages:
    /// `assert_agree`). Returns the patches and the node counts (without, with).
    fn compare(bundle: &Bundle, variant: &str, batch: usize) -> (Vec<String>, usize, usize) {
        let file = bundle.variant(variant).unwrap();
        let bytes = std::fs::read(bundle.variant_path(file)).unwrap();
        let m = bundle.manifest();
        let target = Target {
            input: &m.input,
            output_tensor: &m.output.tensor,
            batch,
        };
        let plain = build_with(&bytes, &target, false).unwrap();
        // The product's path: the verified map, its weights read from it by tract.
        let path = bundle.variant_path(file);
        let patched = build(map_verified(&path, file).unwrap(), &target).unwrap();
        assert!(plain.patches.is_empty());

        let item = m.input.item_len();
        let shape = m.input.shape(batch);
        let items = inputs(item, m.input.width as usize);
        // Batches take consecutive inputs, so items are mixed across the batch axis too.
        for (n, first) in (0..items.len()).step_by(batch).enumerate() {
            let data: Vec<f32> = (0..batch)
                .flat_map(|b| items[(first + b) % items.len()].iter().copied())
                .collect();
            assert_agree(
                &patched.plan,
                &run_bits(&plain.plan, &shape, &data),
                &run_bits(&patched.plan, &shape, &data),
                &format!("{variant} batch {batch}, input {n}"),
            );
        }
        let nodes = |b: &Built| b.plan.model().nodes().len();
        let (before, after) = (nodes(&plain), nodes(&patched));
        (patched.patches, before, after)
    }

    #[test]
    fn zero_point_rewrite_keeps_the_int8_outputs() {
        let bundle = default_bundle();
        for batch in [1, 3] {
            let (patches, before, after) = compare(&bundle, "int8", batch);
            // Five symmetric-weight QLinearConvs, one zero-point term each. Banding takes
            // one image at a time: a batch of 3 keeps the whole-matrix ops.
            let mut want = vec![
                "removed 5 zero-point Sub(x, 0*y) terms",
                "packed the patches of 5 int8 convolutions in runs",
                "ran 4 u8/i8 max pools on the engine's kernel",
                "quantized 1 f32 input in one branch-free pass",
            ];
            if batch == 1 {
                want.push("ran 5 int8 convolutions a band of output rows at a time");
            }
            want.push("fused 5 requantization chains into one pass each");
            // The head's global pool, its averages in f32 for the float Gemm.
            want.push("summed 1 quantized average pool in integers");
            // The input's quantization gives the first convolution's i8 itself.
            want.push(
                "folded 1 u8-to-i8 shift into the op that computes the value (table, quantization, convolution, pool, Add/Mul)",
            );
            if batch == 1 {
                // Each band's output in the image's NCHW shape: no reshape node after it.
                want.push("gave 5 int8 convolutions the shape of the reshape after it, which then had no node of its own");
            }
            assert_eq!(patches, want);
            assert!(after < before, "batch {batch}: {before} -> {after} nodes");
        }
    }

    #[test]
    fn rewrites_leave_the_fp32_plan_alone() {
        let (patches, before, after) = compare(&default_bundle(), "fp32", 1);
        assert!(patches.is_empty(), "{patches:?}");
        assert_eq!(before, after);
    }

    /// The bundle's QDQ export has the QOperator export's weights, scales and zero points
    /// (models/pipeline/quantize.py makes both from one calibration), so once its QDQ
    /// patterns run as QLinearConv and u8 MaxPool it must give the QOperator model's bits,
    /// batch by batch; tract's own plan of the QDQ file (f32 convolutions) does not.
    #[test]
    fn qdq_model_runs_as_the_qoperator_model() {
        let bundle = default_bundle();
        let m = bundle.manifest();
        let read =
            |v: &str| std::fs::read(bundle.variant_path(bundle.variant(v).unwrap())).unwrap();
        let (qdq, qoperator) = (read("int8-qdq"), read("int8"));
        for batch in [1, 3] {
            let target = Target {
                input: &m.input,
                output_tensor: &m.output.tensor,
                batch,
            };
            let fused = build_with(&qdq, &target, true).unwrap();
            let float_qdq = build_with(&qdq, &target, false).unwrap();
            let reference = build_with(&qoperator, &target, false).unwrap();
            assert_eq!(
                fused.patches[..2],
                [
                    "ran 5 QDQ convolutions as QLinearConv",
                    "ran 4 QDQ max pool or shape nodes on the quantized values"
                ]
            );
            let shape = m.input.shape(batch);
            let items = inputs(m.input.item_len(), m.input.width as usize);
            let mut differs_from_float = false;
            for (n, first) in (0..items.len()).step_by(batch).enumerate() {
                let data: Vec<f32> = (0..batch)
                    .flat_map(|b| items[(first + b) % items.len()].iter().copied())
                    .collect();
                let got = run_bits(&fused.plan, &shape, &data);
                assert_agree(
                    &fused.plan,
                    &run_bits(&reference.plan, &shape, &data),
                    &got,
                    &format!("batch {batch}, input {n}"),
                );
                differs_from_float |= got != run_bits(&float_qdq.plan, &shape, &data);
            }
            assert!(
                differs_from_float,
                "batch {batch}: the fusion changed nothing"
            );
        }
    }
}
