//! The inference engine: the one edgedx crate that depends on tract.
//!
//! It verifies a bundle's model file, maps it, builds an optimised tract plan for a fixed
//! batch size and runs it. Callers see [`Model`], plain `f32` slices and [`Scores`]; no tract
//! type crosses this crate's boundary. Loading and running are isolated from tract panics,
//! which malformed models can trigger (see ../shared/DESIGN.md).

mod avgpool;
mod banded;
mod contrib;
mod cpu;
mod depthwise;
mod downsample;
mod epilogue;
mod error;
mod gemv;
pub mod graph;
mod im2col;
mod kernels;
mod lean;
mod load;
pub mod memory;
#[cfg(test)]
mod onnx_build;
mod pool;
mod qbinary;
mod qdq;
mod qtable;
mod quantize;
mod residuals;
mod rewrite;
mod threads;
#[cfg(target_arch = "x86_64")]
mod vnni;
mod weights;
mod zero_point;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgedx_bundle::{Bundle, InputSpec, ModelFile, OutputKind, Precision, Quantization};
use tract_onnx::prelude::*;

pub use cpu::{cpu_features, CpuFeatures};
pub use error::{EngineError, ErrorKind};
pub use load::LoadStrategy;
pub use threads::{set_threads, threads, MAX_THREADS};

type Plan = Arc<TypedRunnableModel>;

/// Time spent in one kind of operator of a plan, per inference ([`Model::profile`]).
#[derive(Debug, Clone, PartialEq)]
pub struct OpTime {
    /// tract's operator name (`OptMatMul`, `Im2col`, `Requantize`, ...).
    pub op: String,
    /// How many nodes of the plan run it.
    pub nodes: usize,
    pub time: Duration,
    /// Each of those nodes, in the plan's order.
    pub each: Vec<NodeTime>,
}

/// Time spent in one node of a plan, per inference ([`Model::profile`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeTime {
    /// The node's name in the plan (the ONNX node's, with tract's and the engine's suffixes).
    pub name: String,
    /// What the operator says of itself: its geometry, kernel or fused steps.
    pub info: String,
    pub time: Duration,
}

/// How a model should be prepared.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The batch size the plan is built for; every `run` takes exactly this many items.
    pub batch: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { batch: 1 }
    }
}

/// What the engine learnt while loading a model; shown by `edgedx info`.
#[derive(Debug, Clone)]
pub struct ModelReport {
    pub variant: String,
    pub path: PathBuf,
    pub sha256: String,
    pub precision: Precision,
    pub quantization: Quantization,
    pub file_bytes: u64,
    pub batch: usize,
    pub strategy: LoadStrategy,
    /// Why the first strategy was not used, when the loader had to fall back.
    pub strategy_note: Option<String>,
    /// Distinct tract-linalg matrix kernels the optimised plan calls, e.g. `arm64simd_mmm_i32_8x8`.
    pub kernels: Vec<String>,
    /// Operator names in the optimised plan with their counts, most frequent first.
    pub ops: Vec<(String, usize)>,
    /// Exact rewrites the engine applied to tract's optimised plan (they never change an
    /// output), e.g. "removed 5 zero-point Sub(x, 0*y) terms"; empty when none applied.
    pub patches: Vec<String>,
    /// Quantized operators of the file that run in float, and why.
    pub in_float: Vec<String>,
    pub load_time: Duration,
}

/// Class scores for one batch item.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// The model's output row as produced (logits or probabilities).
    pub raw: Vec<f32>,
    /// A probability distribution over the labels (softmax of `raw` for logit models).
    pub probabilities: Vec<f32>,
}

impl Scores {
    /// Index and probability of the most likely class (see [`top1`]).
    pub fn top(&self) -> (usize, f32) {
        top1(&self.probabilities)
    }
}

/// The one argmax of edgedx: index and value of the largest score. The lowest index wins
/// a tie, so equal scores give the same class in every precision and batch size, and a
/// NaN never wins (an all-NaN or empty row gives `(0, NEG_INFINITY)`; the dispatcher
/// refuses such rows before anyone reads a class from them).
pub fn top1(values: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, v) in values.iter().enumerate() {
        if *v > best.1 {
            best = (i, *v);
        }
    }
    best
}

/// A loaded, optimised model ready to run batches of `batch` items.
pub struct Model {
    plan: Plan,
    /// Whether some node of the plan does enough work to split over threads
    /// (`banded::PLAN_PARALLEL_MACS`); a plan without one runs on the calling thread whatever
    /// `set_threads` says, since handing it to the pool costs more than it can save.
    splits: bool,
    input: InputSpec,
    output_kind: OutputKind,
    classes: usize,
    /// How far a probability row may sum from 1: rounding of the sum, plus half an output
    /// step per class when the model quantizes its probabilities.
    sum_tolerance: f32,
    report: ModelReport,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Loads one variant ("int8", "fp32", ...) of a bundle. The file's sha256 must match the
    /// manifest; nothing else from the bundle is read or mapped.
    pub fn load(
        bundle: &Bundle,
        variant: &str,
        options: &EngineOptions,
    ) -> Result<Model, EngineError> {
        let file = bundle.variant(variant)?;
        let path = bundle.variant_path(file);
        let m = &bundle.manifest();
        Model::load_file(
            &path,
            variant,
            file,
            &m.input,
            &m.output.tensor,
            m.output.kind,
            m.bundle.labels.len(),
            options,
        )
    }

    /// Loads a model file described by manifest parts. Public so tools can load a variant
    /// that is not (yet) part of a bundle directory, with the same checks.
    #[allow(clippy::too_many_arguments)]
    pub fn load_file(
        path: &Path,
        variant: &str,
        file: &ModelFile,
        input: &InputSpec,
        output_tensor: &str,
        output_kind: OutputKind,
        classes: usize,
        options: &EngineOptions,
    ) -> Result<Model, EngineError> {
        cpu::configure_tract();
        if options.batch == 0 || options.batch > load::MAX_BATCH {
            return Err(EngineError::BadOptions(format!(
                "batch size {} is outside 1..={}",
                options.batch,
                load::MAX_BATCH
            )));
        }
        let started = Instant::now();
        let mapped = load::map_verified(path, file)?;
        let sha256 = mapped.sha256.clone();
        let file_bytes = mapped.len() as u64;
        let target = load::Target {
            input,
            output_tensor,
            batch: options.batch,
        };
        // The map goes into the build, which drops it once tract has read the weights.
        let built = isolate(path, "loading", || load::build(mapped, &target))?
            .map_err(|e| load::with_path(e, path))?;
        memory::release_free_heap();
        let model = Model {
            input: input.clone(),
            output_kind,
            classes,
            report: ModelReport {
                variant: variant.to_string(),
                path: path.to_path_buf(),
                sha256,
                precision: file.precision,
                quantization: file.quantization,
                file_bytes,
                batch: options.batch,
                strategy: built.strategy,
                strategy_note: built.strategy_note,
                kernels: built.kernels,
                ops: built.ops,
                patches: built.patches,
                in_float: built.in_float,
                load_time: started.elapsed(),
            },
            splits: built.largest_node_macs >= banded::PLAN_PARALLEL_MACS as u64,
            sum_tolerance: 1e-3 + classes as f32 * built.output_step / 2.0,
            plan: built.plan,
        };
        model.check_output_shape()?;
        Ok(model)
    }

    pub fn report(&self) -> &ModelReport {
        &self.report
    }

    pub fn batch(&self) -> usize {
        self.report.batch
    }

    pub fn input_spec(&self) -> &InputSpec {
        &self.input
    }

    /// Runs one batch. `input` holds `batch * input_spec().item_len()` values in the
    /// model's layout; the result has one [`Scores`] per item. Uses the threads set by
    /// [`set_threads`].
    pub fn run(&self, input: &[f32]) -> Result<Vec<Scores>, EngineError> {
        self.run_on(self.executor(), input)
    }

    /// The executor set by [`set_threads`], for a plan worth splitting.
    fn executor(&self) -> multithread::Executor {
        if self.splits {
            threads::current()
        } else {
            multithread::Executor::SingleThread
        }
    }

    fn run_on(
        &self,
        executor: multithread::Executor,
        input: &[f32],
    ) -> Result<Vec<Scores>, EngineError> {
        let tensor = self.input_tensor(input)?;
        let path = self.report.path.clone();
        let outputs = isolate(&path, "running", || {
            threads::scope(executor, || -> TractResult<Vec<Tensor>> {
                let outputs = self.plan.run(tvec!(tensor.into_tvalue()))?;
                Ok(outputs.into_iter().map(|v| v.into_tensor()).collect())
            })
            .map_err(|e| EngineError::Run(format!("{e:#}")))
        })??;
        let output = outputs
            .first()
            .ok_or_else(|| EngineError::InvalidOutput("the plan returned no output".into()))?;
        let view = output.to_plain_array_view::<f32>().map_err(|e| {
            EngineError::InvalidOutput(format!(
                "output is not f32 ({:?}): {e}",
                output.datum_type()
            ))
        })?;
        let values = view
            .as_slice()
            .map(|s| s.to_vec())
            .unwrap_or_else(|| view.iter().copied().collect());
        self.scores(&values)
    }

    /// Runs the plan `runs` times on one batch and returns the time spent in each kind of
    /// operator per inference, largest first: where the time goes, for the benchmark's
    /// profile (issue 5). On the threads `set_threads` set (1, the default worker's, unless
    /// changed); a node's time then includes waiting for its slowest thread.
    pub fn profile(&self, input: &[f32], runs: usize) -> Result<Vec<OpTime>, EngineError> {
        use tract_onnx::tract_core::plan::{eval, SimpleState};
        if runs == 0 {
            return Err(EngineError::BadInput(
                "profile needs at least one run".into(),
            ));
        }
        let tensor = self.input_tensor(input)?;
        let path = self.report.path.clone();
        let plan = self.plan.clone();
        let executor = self.executor();
        let per_node = isolate(&path, "profiling", || -> TractResult<Vec<Duration>> {
            threads::scope(executor, || -> TractResult<Vec<Duration>> {
                let mut state = SimpleState::new(&plan)?;
                let mut times = vec![Duration::ZERO; plan.model().nodes().len()];
                // One untimed run: first-use allocations are not the steady state.
                state.run(tvec!(tensor.clone().into_tvalue()))?;
                for _ in 0..runs {
                    state.run_plan_with_eval(
                        tvec!(tensor.clone().into_tvalue()),
                        |ctx, st, node, inputs| {
                            let start = Instant::now();
                            let r = eval(ctx, st, node, inputs);
                            times[node.id] += start.elapsed();
                            r
                        },
                    )?;
                }
                Ok(times)
            })
        })?
        .map_err(|e| EngineError::Run(format!("{e:#}")))?;
        let mut by_op: Vec<OpTime> = Vec::new();
        for (node, time) in plan.model().nodes().iter().zip(per_node) {
            let name = node.op.name().to_string();
            let per_run = time / runs as u32;
            let each = NodeTime {
                name: node.name.clone(),
                info: node.op.info().unwrap_or_default().join("; "),
                time: per_run,
            };
            match by_op.iter_mut().find(|o| o.op == name) {
                Some(o) => {
                    o.nodes += 1;
                    o.time += per_run;
                    o.each.push(each);
                }
                None => by_op.push(OpTime {
                    op: name,
                    nodes: 1,
                    time: per_run,
                    each: vec![each],
                }),
            }
        }
        by_op.sort_by(|a, b| b.time.cmp(&a.time).then(a.op.cmp(&b.op)));
        Ok(by_op)
    }

    /// One batch of `input` as the plan's input tensor, refusing the wrong number of values.
    fn input_tensor(&self, input: &[f32]) -> Result<Tensor, EngineError> {
        let expected = self.batch() * self.input.item_len();
        if input.len() != expected {
            return Err(EngineError::BadInput(format!(
                "got {} values, the plan takes {} ({} x {:?})",
                input.len(),
                expected,
                self.batch(),
                self.input.shape(1)
            )));
        }
        let shape = self.input.shape(self.batch());
        Tensor::from_shape(&shape, input).map_err(|e| EngineError::BadInput(format!("{e:#}")))
    }

    /// Splits a flat output into per-item scores, refusing outputs that cannot be a
    /// classification (wrong size, NaN/Inf, probabilities that are not a distribution).
    fn scores(&self, values: &[f32]) -> Result<Vec<Scores>, EngineError> {
        if values.len() != self.batch() * self.classes {
            return Err(EngineError::InvalidOutput(format!(
                "{} values for {} item(s) of {} classes",
                values.len(),
                self.batch(),
                self.classes
            )));
        }
        values
            .chunks(self.classes)
            .map(|row| {
                if let Some(bad) = row.iter().find(|v| !v.is_finite()) {
                    return Err(EngineError::InvalidOutput(format!(
                        "non-finite score {bad} in {row:?}"
                    )));
                }
                let probabilities = match self.output_kind {
                    OutputKind::Logits => softmax(row),
                    OutputKind::Probabilities => {
                        let sum: f32 = row.iter().sum();
                        if (sum - 1.0).abs() > self.sum_tolerance || row.iter().any(|p| *p < -1e-6)
                        {
                            return Err(EngineError::InvalidOutput(format!(
                                "probabilities sum to {sum}, not 1: {row:?}"
                            )));
                        }
                        row.to_vec()
                    }
                };
                Ok(Scores {
                    raw: row.to_vec(),
                    probabilities,
                })
            })
            .collect()
    }

    fn check_output_shape(&self) -> Result<(), EngineError> {
        let fact = self
            .plan
            .model()
            .output_fact(0)
            .map_err(|e| EngineError::Load {
                path: self.report.path.clone(),
                message: format!("{e:#}"),
            })?;
        let volume = fact.shape.volume().to_i64().ok().map(|v| v as usize);
        if volume != Some(self.batch() * self.classes) {
            return Err(EngineError::Load {
                path: self.report.path.clone(),
                message: format!(
                    "output shape {:?} does not hold {} score(s) for each of {} item(s): does the manifest's label list match the model?",
                    fact.shape,
                    self.classes,
                    self.batch()
                ),
            });
        }
        Ok(())
    }
}

/// Numerically stable softmax.
pub fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Runs `f`, turning a panic into an error that names the file. A panic in tract is
/// reported as the model's (a malformed file or a construct tract cannot handle); a panic
/// in the engine's own code is reported as edgedx's bug, with where it happened. The panic
/// message itself is whatever the code said; the process's panic hook (set in `main`)
/// decides whether it is also logged.
fn isolate<T>(path: &Path, what: &str, f: impl FnOnce() -> T) -> Result<T, EngineError> {
    record_panic_locations();
    PANIC_AT.with_borrow_mut(|at| *at = None);
    let since = LAST_PANIC.lock().map(|l| l.0).unwrap_or(0);
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic payload".into());
        // This thread's panic, or else one on a pool thread since `f` started (rayon
        // resumes the payload on the caller's thread, without the location).
        let location = PANIC_AT.with_borrow_mut(|at| at.take()).or_else(|| {
            let last = LAST_PANIC.lock().ok()?;
            (last.0 > since).then(|| last.1.clone())
        });
        match location {
            Some(location) if is_ours(&location) => EngineError::Internal {
                path: path.to_path_buf(),
                what: what.to_string(),
                location,
                message,
            },
            _ => EngineError::Panicked {
                path: path.to_path_buf(),
                what: what.to_string(),
                message,
            },
        }
    })
}

thread_local! {
    /// Where the last panic on this thread happened (`file:line`), as the hook saw it.
    static PANIC_AT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// The process's last panic: a sequence number and where it happened.
static LAST_PANIC: std::sync::Mutex<(u64, String)> = std::sync::Mutex::new((0, String::new()));

/// Puts a hook in front of the process's panic hook (once) that notes where each panic
/// happened, so that [`isolate`] can tell the engine's panics from tract's.
fn record_panic_locations() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(l) = info.location() {
                let at = format!("{}:{}", l.file(), l.line());
                PANIC_AT.with_borrow_mut(|slot| *slot = Some(at.clone()));
                if let Ok(mut last) = LAST_PANIC.lock() {
                    *last = (last.0 + 1, at);
                }
            }
            previous(info)
        }));
    });
}

/// Whether a panic at `location` (`file:line`) is in this crate's own source.
fn is_ours(location: &str) -> bool {
    let here = file!();
    let dir = &here[..here.len() - "lib.rs".len()];
    location.starts_with(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_a_distribution_and_keeps_order() {
        let p = softmax(&[1.0, 3.0, -2.0, 0.5]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[1] > p[0] && p[0] > p[3] && p[3] > p[2], "{p:?}");
        // Large logits must not overflow into NaN.
        let p = softmax(&[1000.0, 0.0, -1000.0]);
        assert!(p.iter().all(|v| v.is_finite()) && p[0] > 0.999, "{p:?}");
    }

    #[test]
    fn top_picks_the_largest_probability() {
        let s = Scores {
            raw: vec![],
            probabilities: vec![0.1, 0.6, 0.3],
        };
        assert_eq!(s.top(), (1, 0.6));
    }

    #[test]
    fn isolate_turns_a_panic_into_an_error() {
        let r: Result<(), EngineError> = isolate(Path::new("m.onnx"), "loading", || {
            panic!("index out of bounds")
        });
        let e = r.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert!(e.to_string().contains("m.onnx") && e.to_string().contains("index out of bounds"));
    }

    /// A panic in the engine's own code (here: this file) is edgedx's bug, named as such
    /// with where it happened; one anywhere else (tract's code) is the model's.
    #[test]
    fn isolate_tells_the_engines_panics_from_the_models() {
        let e = isolate(Path::new("m.onnx"), "running", || {
            let v: Vec<u8> = vec![1, 2];
            let i = v.len() + 1;
            v[i]
        })
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Internal, "{e}");
        let text = e.to_string();
        assert!(
            text.contains("bug in edgedx") && text.contains("firmware/engine/src/lib.rs:"),
            "{text}"
        );
        assert!(!text.contains("malformed"), "{text}");
        // The same on an inference pool's thread, re-raised on the caller's.
        let pool = crate::threads::executor_for(2).unwrap();
        let e = isolate(Path::new("m.onnx"), "running", || {
            crate::threads::scope(pool, || {
                use rayon::prelude::*;
                (0..4usize)
                    .into_par_iter()
                    .for_each(|i| assert!(i < 3, "lane {i}"));
            })
        })
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Internal, "{e}");
    }

    #[test]
    fn panics_in_tract_are_not_the_engines() {
        assert!(is_ours("firmware/engine/src/depthwise.rs:183"));
        for elsewhere in [
            "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tract-core-0.23.9/src/ops/cnn/conv/conv.rs:412",
            "firmware/src/serve/worker.rs:10",
            "/rustc/59807616e/library/core/src/slice/index.rs:60",
        ] {
            assert!(!is_ours(elsewhere), "{elsewhere}");
        }
    }

    /// Runs `model` on deterministic inputs with `threads` threads; the output bits per input.
    fn output_bits(model: &Model, threads: usize) -> Vec<Vec<u32>> {
        let executor = threads::executor_for(threads).unwrap();
        let len = model.batch() * model.input_spec().item_len();
        (1..=4u64)
            .map(|seed| {
                let mut x = seed;
                let input: Vec<f32> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        (x >> 40) as f32 / (1u64 << 24) as f32
                    })
                    .collect();
                let scores = model.run_on(executor.clone(), &input).unwrap();
                scores
                    .iter()
                    .flat_map(|s| s.raw.iter().map(|v| v.to_bits()))
                    .collect()
            })
            .collect()
    }

    /// The default bundle's layers are all too small to split (at most 9.4 M multiply-adds
    /// each): its inferences stay on the calling thread whatever the thread setting.
    #[test]
    fn small_plans_are_not_split() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/brain-mri-4class");
        let bundle = Bundle::open(&dir).expect("models/brain-mri-4class");
        for variant in ["int8", "fp32"] {
            let model = Model::load(&bundle, variant, &EngineOptions { batch: 1 }).unwrap();
            assert!(!model.splits, "{variant}");
            let batch = Model::load(&bundle, variant, &EngineOptions { batch: 4 }).unwrap();
            assert!(
                batch.splits,
                "{variant}: a batch of 4 has layers of over 16 M"
            );
        }
    }

    #[test]
    fn thread_count_does_not_change_outputs() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/brain-mri-4class");
        let bundle = Bundle::open(&dir).expect("models/brain-mri-4class");
        for variant in ["int8", "fp32"] {
            for batch in [1, 2] {
                let model = Model::load(&bundle, variant, &EngineOptions { batch }).unwrap();
                let one = output_bits(&model, 1);
                assert_eq!(one, output_bits(&model, 2), "{variant} batch {batch}");
                // This model is small enough that tract's size gates keep most ops inline;
                // with the gates at zero every matmul, pack and element-wise op is split.
                // The gates are process-wide, but only runs under a pool read them.
                multithread::set_threading_panel_threshold(0);
                multithread::set_threading_element_threshold(0);
                let forced = output_bits(&model, 2);
                multithread::set_threading_panel_threshold(64);
                multithread::set_threading_element_threshold(32768);
                assert_eq!(one, forced, "{variant} batch {batch}, every op threaded");
            }
        }
    }

    #[test]
    fn profile_accounts_for_every_operator_of_the_plan() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/brain-mri-4class");
        let bundle = Bundle::open(&dir).expect("models/brain-mri-4class");
        let model = Model::load(&bundle, "int8", &EngineOptions::default()).unwrap();
        let input = vec![0.25; model.input_spec().item_len()];
        let ops = model.profile(&input, 3).unwrap();
        let nodes = |name: &str| ops.iter().find(|o| o.op == name).map(|o| o.nodes);
        // The five convolutions run in bands on the engine's packing and requantisation,
        // not on tract's element-wise chain.
        assert_eq!(nodes("BandedConv"), Some(5));
        for banded in ["PackPatches", "Requantize"] {
            assert_eq!(nodes(banded), None, "{banded} is still in the plan");
        }
        assert_eq!(nodes("MaxPool8"), Some(4));
        for gone in [
            "Im2col",
            "Scale",
            "Min",
            "Max",
            "Cast",
            "QSumB",
            "OptMaxPool",
        ] {
            assert_eq!(nodes(gone), None, "{gone} is still in the plan");
        }
        let counted: usize = ops.iter().map(|o| o.nodes).sum();
        assert_eq!(counted, model.plan.model().nodes().len());
        // Each kind's nodes, every one named once, adding up to the kind's time.
        for o in &ops {
            assert_eq!(o.each.len(), o.nodes, "{}", o.op);
            assert_eq!(o.each.iter().map(|n| n.time).sum::<Duration>(), o.time);
        }
        let mut names: Vec<&str> = ops
            .iter()
            .flat_map(|o| &o.each)
            .map(|n| &n.name[..])
            .collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), counted);
        let banded = ops.iter().find(|o| o.op == "BandedConv").unwrap();
        assert!(banded.each.iter().all(|n| !n.info.is_empty()));
        assert!(ops.windows(2).all(|w| w[0].time >= w[1].time));
        assert!(ops[0].time > Duration::ZERO);
        assert!(model.profile(&input[1..], 3).is_err());
        assert!(model.profile(&input, 0).is_err());
    }
}
