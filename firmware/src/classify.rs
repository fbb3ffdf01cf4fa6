//! `edgedx classify`: one result per file, as text or JSON lines, never stopping at a bad file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use edgedx_bundle::{sha256_hex, Bundle};
use edgedx_engine::{EngineOptions, Model};
use edgedx_ingest::Limits;
use serde::Serialize;

use crate::PrecisionArg;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model bundle directory (default: the installed bundle, else models/brain-mri-4class).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Which model of the bundle runs.
    #[arg(long, value_enum, default_value_t = PrecisionArg::Int8)]
    precision: PrecisionArg,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    /// Refuse images with more pixels than this (checked before full decoding).
    #[arg(long, default_value_t = Limits::default().max_pixels)]
    max_pixels: u64,
    /// Refuse files larger than this many bytes.
    #[arg(long, default_value_t = Limits::default().max_file_bytes)]
    max_file_bytes: u64,
    /// Image files to classify.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// One line of `--json` output for a classified file.
#[derive(Debug, Serialize)]
struct Classified<'a> {
    file: String,
    label: &'a str,
    class_index: usize,
    confidence: f32,
    /// Probability of each label, in the bundle's label order.
    probabilities: Vec<LabelProbability<'a>>,
    precision: String,
    bundle: String,
    model_sha256: &'a str,
    input_sha256: String,
    source: Source,
    latency_ms: f64,
    preprocess_ms: f64,
}

#[derive(Debug, Serialize)]
struct LabelProbability<'a> {
    label: &'a str,
    probability: f32,
}

/// How the image was read, so a reader can tell which frame and window were used.
#[derive(Debug, Serialize)]
struct Source {
    format: String,
    width: u32,
    height: u32,
    channels: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    frame: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frames: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// One line of `--json` output for a file that could not be classified.
#[derive(Debug, Serialize)]
struct Failed {
    file: String,
    error: ErrorBody,
}

#[derive(Debug, Serialize)]
struct ErrorBody {
    kind: &'static str,
    message: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = crate::paths::bundle_dir(args.bundle.clone());
    let bundle = Bundle::open(&dir).with_context(|| format!("opening bundle {}", dir.display()))?;
    let model = Model::load(&bundle, args.precision.variant(), &EngineOptions::default())
        .context("loading the model")?;
    let limits = Limits {
        max_pixels: args.max_pixels,
        max_file_bytes: args.max_file_bytes,
    };
    let mut out = std::io::stdout().lock();
    let mut failures = 0usize;
    let mut tensor = vec![0f32; model.input_spec().item_len()];
    for file in &args.files {
        let name = file.display().to_string();
        match classify_one(&bundle, &model, &limits, file, &mut tensor) {
            Ok(result) => {
                if args.json {
                    writeln!(out, "{}", serde_json::to_string(&result)?)?;
                } else {
                    writeln!(
                        out,
                        "{name}: {} ({:.1}%) [{}, {:.1} ms]",
                        result.label,
                        result.confidence * 100.0,
                        result.precision,
                        result.latency_ms
                    )?;
                }
            }
            Err(error) => {
                failures += 1;
                if args.json {
                    let line = Failed { file: name, error };
                    writeln!(out, "{}", serde_json::to_string(&line)?)?;
                } else {
                    writeln!(out, "{name}: error ({}): {}", error.kind, error.message)?;
                }
            }
        }
        out.flush()?;
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn classify_one<'m>(
    bundle: &'m Bundle,
    model: &'m Model,
    limits: &Limits,
    file: &Path,
    tensor: &mut [f32],
) -> Result<Classified<'m>, ErrorBody> {
    let name = file.display().to_string();
    // Read here rather than in ingest so the bytes that are hashed are the bytes decoded.
    let bytes = edgedx_ingest::read_capped(file, limits).map_err(|e| ErrorBody {
        kind: e.kind().as_str(),
        message: e.to_string(),
    })?;
    let started = Instant::now();
    let image =
        crate::pipeline::prepare(&bytes, &name, limits, model, tensor).map_err(|e| ErrorBody {
            kind: e.kind().as_str(),
            message: e.to_string(),
        })?;
    let preprocessed = Instant::now();
    let scores = crate::pipeline::score(model, tensor).map_err(|e| ErrorBody {
        kind: e.kind().as_str(),
        message: format!("{name}: {e}"),
    })?;
    let finished = Instant::now();
    let labels = bundle.labels();
    let (class_index, confidence) = scores.top();
    let report = model.report();
    Ok(Classified {
        file: name,
        label: &labels[class_index],
        class_index,
        confidence,
        probabilities: labels
            .iter()
            .zip(&scores.probabilities)
            .map(|(label, p)| LabelProbability {
                label,
                probability: *p,
            })
            .collect(),
        precision: report.precision.to_string(),
        bundle: format!(
            "{}@{}",
            bundle.manifest().bundle.name,
            bundle.manifest().bundle.version
        ),
        model_sha256: &report.sha256,
        input_sha256: sha256_hex(&bytes),
        source: Source {
            format: image.info.format.to_string(),
            width: image.width,
            height: image.height,
            channels: image.channels,
            frame: image.info.frame.map(|(i, _)| i as usize),
            frames: image.info.frame.map(|(_, n)| n as usize),
            note: image.info.note.clone(),
        },
        latency_ms: (finished - preprocessed).as_secs_f64() * 1e3,
        preprocess_ms: (preprocessed - started).as_secs_f64() * 1e3,
    })
}
