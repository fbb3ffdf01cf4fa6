//! The interleaved latency comparison for one model group.
//!
//! Four runners share one input tensor: edgedx int8, edgedx fp32, onnxruntime int8,
//! onnxruntime fp32 (same ONNX files). Every round runs each runner once, starting with a
//! different runner each round, so slow drift on a shared machine (other jobs, frequency
//! changes, thermal state) lands on all four alike and the ratios stay fair.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use edgedx_bundle::{Bundle, OutputKind};
use edgedx_engine::{softmax, EngineOptions, Model};

use crate::child::{self, LoadStats};
use crate::models::Group;
use crate::ort::Ort;
use crate::stats::Summary;

#[derive(Debug, Clone)]
pub struct Settings {
    pub warmup: usize,
    /// Time budget of the measured rounds, per group and thread setting.
    pub seconds: f64,
    pub min_rounds: usize,
    pub max_rounds: usize,
    /// Child processes per variant for load time and memory.
    pub load_repeats: usize,
    /// Inferences a load child runs before it reads the steady-state RSS.
    pub steady_runs: usize,
}

/// Thread setting for one comparison: onnxruntime's intra-op threads and edgedx's
/// `edgedx_engine::set_threads`, the same number for both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Threads {
    pub label: String,
    pub ort: usize,
    pub edgedx: usize,
}

pub const RUNNERS: [&str; 4] = ["edgedx int8", "edgedx fp32", "ort int8", "ort fp32"];

#[derive(Debug, Clone)]
pub struct ThreadResult {
    pub threads: Threads,
    pub rounds: usize,
    /// One summary per entry of RUNNERS, in milliseconds.
    pub latency: Vec<Summary>,
    /// Largest |p_edgedx - p_ort| over all classes and rounds: [int8, fp32].
    pub max_prob_diff: [f64; 2],
    /// Top-1 class equal between edgedx and onnxruntime in every round: [int8, fp32].
    pub same_top1: [bool; 2],
    /// The product's preprocessing of the decoded image into the input tensor
    /// (`edgedx_ingest::preprocess`: resize, colour, normalisation), ms, once per round.
    pub preprocess: Summary,
}

impl ThreadResult {
    pub fn median(&self, runner: usize) -> f64 {
        self.latency[runner].median
    }
}

#[derive(Debug, Clone)]
pub struct GroupResult {
    pub group: Group,
    pub int8_file: u64,
    pub fp32_file: u64,
    /// Load children: [int8, fp32], each with `load_repeats` entries.
    pub loads: [Vec<LoadStats>; 2],
    /// onnxruntime session creation time (ms) per variant, [int8, fp32], first thread setting.
    pub ort_load_ms: [f64; 2],
    pub runs: Vec<ThreadResult>,
}

/// Runs the loads and the interleaved rounds for one group.
pub fn run_group(
    group: &Group,
    threads: &[Threads],
    settings: &Settings,
    mut ort: Option<&mut Ort>,
    scratch: &Path,
) -> Result<GroupResult> {
    let bundle = Bundle::open(&group.bundle)
        .with_context(|| format!("opening bundle {}", group.bundle.display()))?;
    let variants = [group.int8.as_str(), group.fp32.as_str()];

    eprintln!(
        "[{}] load children ({} per variant)",
        group.name, settings.load_repeats
    );
    let mut loads: [Vec<LoadStats>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..settings.load_repeats {
        // Alternate the variants here too: page cache and frequency drift affect both alike.
        for (i, v) in variants.iter().enumerate() {
            loads[i].push(child::measure(&group.bundle, v, settings.steady_runs)?);
        }
    }

    let models = [
        Model::load(&bundle, variants[0], &EngineOptions::default())?,
        Model::load(&bundle, variants[1], &EngineOptions::default())?,
    ];
    let spec = bundle.input();
    let image = edgedx_ingest::load_path(&group.image, &edgedx_ingest::Limits::default())
        .with_context(|| format!("reading {}", group.image.display()))?;
    let mut input = vec![0f32; spec.item_len()];
    edgedx_ingest::preprocess(&image, spec, &mut input)?;
    let input_file = scratch.join(format!("{}.f32", group.name));
    std::fs::write(
        &input_file,
        input
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )?;
    let shape = spec.shape(1);
    let output_kind = bundle.manifest().output.kind;
    let output_tensor = bundle.manifest().output.tensor.clone();

    let mut ort_load_ms = [f64::NAN; 2];
    let mut runs = Vec::new();
    for (t_index, t) in threads.iter().enumerate() {
        // Process-wide, and read by every `Model::run`: the models loaded above switch too.
        edgedx_engine::set_threads(t.edgedx)?;
        let keys: Vec<String> = variants
            .iter()
            .map(|v| format!("{}/{v}/{}", group.name, t.label))
            .collect();
        let input_key = group.name.clone();
        if let Some(ort) = ort.as_deref_mut() {
            ort.input(&input_key, &input_file, &shape)?;
            for (i, v) in variants.iter().enumerate() {
                let path = bundle.variant_path(bundle.variant(v)?);
                let ms = ort.load(&keys[i], &path, &output_tensor, t.ort)?;
                if t_index == 0 {
                    ort_load_ms[i] = ms;
                }
            }
        }
        let have_ort = ort.is_some();
        let active: Vec<usize> = if have_ort {
            vec![0, 1, 2, 3]
        } else {
            vec![0, 1]
        };

        // One round: every active runner once, rotated start. Returns ms per runner.
        let mut fresh = vec![0f32; spec.item_len()];
        let mut round = |r: usize, probs: &mut [Vec<f32>; 4]| -> Result<([f64; 4], f64)> {
            let started = Instant::now();
            edgedx_ingest::preprocess(&image, spec, &mut fresh)?;
            let pre_ms = started.elapsed().as_secs_f64() * 1e3;
            if fresh != input {
                bail!("preprocessing the same image twice gave different tensors");
            }
            let mut ms = [f64::NAN; 4];
            for k in 0..active.len() {
                let runner = active[(r + k) % active.len()];
                match runner {
                    0 | 1 => {
                        let started = Instant::now();
                        let scores = models[runner].run(&input)?;
                        ms[runner] = started.elapsed().as_secs_f64() * 1e3;
                        probs[runner] = scores[0].probabilities.clone();
                    }
                    _ => {
                        let ort = ort.as_deref_mut().context("no onnxruntime")?;
                        let out = ort.run(&keys[runner - 2], &input_key)?;
                        ms[runner] = out.ms;
                        probs[runner] = match output_kind {
                            OutputKind::Logits => softmax(&out.output),
                            OutputKind::Probabilities => out.output,
                        };
                    }
                }
            }
            Ok((ms, pre_ms))
        };

        let mut probs: [Vec<f32>; 4] = Default::default();
        let warm_started = Instant::now();
        for r in 0..settings.warmup.max(1) {
            round(r, &mut probs)?;
        }
        let per_round = warm_started.elapsed().as_secs_f64() / settings.warmup.max(1) as f64;
        let rounds = ((settings.seconds / per_round) as usize)
            .clamp(settings.min_rounds, settings.max_rounds);
        eprintln!(
            "[{}] threads {}: {rounds} rounds of ~{:.1} ms",
            group.name,
            t.label,
            per_round * 1e3
        );

        let mut series: [Vec<f64>; 4] = Default::default();
        let mut pre_series = Vec::new();
        let mut max_diff = [0f64; 2];
        let mut same_top1 = [true; 2];
        for r in 0..rounds {
            let (ms, pre_ms) = round(r, &mut probs)?;
            pre_series.push(pre_ms);
            for i in &active {
                series[*i].push(ms[*i]);
            }
            if have_ort {
                for v in 0..2 {
                    let (e, o) = (&probs[v], &probs[v + 2]);
                    if e.len() != o.len() {
                        bail!("edgedx gives {} classes, onnxruntime {}", e.len(), o.len());
                    }
                    let d = e
                        .iter()
                        .zip(o)
                        .map(|(a, b)| f64::from((a - b).abs()))
                        .fold(0f64, f64::max);
                    max_diff[v] = max_diff[v].max(d);
                    same_top1[v] &= argmax(e) == argmax(o);
                }
            }
        }
        let nan = Summary {
            n: 0,
            median: f64::NAN,
            p10: f64::NAN,
            p90: f64::NAN,
        };
        runs.push(ThreadResult {
            threads: t.clone(),
            rounds,
            latency: series
                .iter()
                .map(|s| Summary::of(s).unwrap_or(nan))
                .collect(),
            max_prob_diff: if have_ort { max_diff } else { [f64::NAN; 2] },
            same_top1,
            preprocess: Summary::of(&pre_series).unwrap_or(nan),
        });
    }
    // The load children of the next group are separate processes; this only keeps the
    // harness's own default what it was.
    edgedx_engine::set_threads(1)?;

    Ok(GroupResult {
        group: group.clone(),
        int8_file: models[0].report().file_bytes,
        fp32_file: models[1].report().file_bytes,
        loads,
        ort_load_ms,
        runs,
    })
}

fn argmax(v: &[f32]) -> usize {
    edgedx_engine::top1(v).0
}
