//! `edgedx worker`: the inference process the supervisor starts, feeds through a pipe, and
//! kills when it hangs, crashes or misbehaves.
//!
//! Everything that touches untrusted bytes or tract (image decoding, preprocessing,
//! inference) runs here, so a decoder abort, a tract panic that escapes isolation, a memory
//! limit breach or a hang costs one worker, never the links or the outbox.

use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use edgedx_bundle::Bundle;
use edgedx_engine::{EngineOptions, Model};
use edgedx_ingest::Limits;

use super::ipc::{self, Outcome, Ready, Reply, Request};
use crate::PrecisionArg;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    bundle: PathBuf,
    #[arg(long, value_enum)]
    precision: PrecisionArg,
    #[arg(long, default_value_t = Limits::default().max_pixels)]
    max_pixels: u64,
    #[arg(long, default_value_t = Limits::default().max_file_bytes)]
    max_file_bytes: u64,
    /// Heap limit of this process in bytes (set by the supervisor from its memory budget).
    #[arg(long)]
    heap_limit: Option<usize>,
    /// Refuse to load unless the manifest names this sha256 for the model.
    #[arg(long)]
    expect_sha256: Option<String>,
    /// Threads one inference uses (1 = strictly on this process's main thread).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(limit) = args.heap_limit {
        crate::heap::set_limit(limit);
    }
    crate::heap::exit_distinctly_on_allocation_failure()
        .context("installing the allocation-failure handler")?;
    let stdin = std::io::stdin().lock();
    let stdout = std::io::stdout().lock();
    let mut input = BufReader::new(stdin);
    let mut output = BufWriter::new(stdout);

    let loaded = load(&args);
    let (model, ready) = match loaded {
        Ok(ok) => ok,
        Err((kind, message)) => {
            ipc::send(&mut output, &Reply::LoadFailed { kind, message })
                .context("writing to the supervisor")?;
            return Ok(ExitCode::from(1));
        }
    };
    ipc::send(&mut output, &Reply::Ready(ready)).context("writing to the supervisor")?;
    let limits = Limits {
        max_pixels: args.max_pixels,
        max_file_bytes: args.max_file_bytes,
    };
    let mut tensor = vec![0f32; model.input_spec().item_len()];
    // The supervisor sends no image over the file limit it gave this worker.
    let largest_request = usize::try_from(args.max_file_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(ipc::REQUEST_OVERHEAD);
    loop {
        // The image stays in the message body it arrived in, read in place.
        let Some(body) =
            ipc::recv_body(&mut input, largest_request).context("reading from the supervisor")?
        else {
            return Ok(ExitCode::SUCCESS);
        };
        let request = ipc::decode::<Request>(&body).context("reading from the supervisor")?;
        let Request::Classify { job, name, bytes } = request else {
            return Ok(ExitCode::SUCCESS);
        };
        crate::heap::clear_refusal();
        let started = Instant::now();
        ipc::send(&mut output, &Reply::Received { job }).context("writing to the supervisor")?;
        // Phase 1, the input's: decode and preprocess. A crash or hang before `Decoded`
        // reaches the supervisor is blamed on the input, never on the model.
        if let Err(outcome) = prepare(&model, &limits, &name, &bytes, &mut tensor) {
            ipc::send(&mut output, &Reply::Done { job, outcome })
                .context("writing to the supervisor")?;
            continue;
        }
        drop(bytes);
        drop(body);
        ipc::send(&mut output, &Reply::Decoded { job }).context("writing to the supervisor")?;
        // Phase 2, the model's: inference.
        let outcome = infer(&model, &name, &tensor, started);
        ipc::send(&mut output, &Reply::Done { job, outcome })
            .context("writing to the supervisor")?;
    }
}

fn load(args: &Args) -> Result<(Model, Ready), (String, String)> {
    let started = Instant::now();
    // Before loading, so the warm-up below already runs (and is timed) on the pool.
    edgedx_engine::set_threads(args.threads)
        .map_err(|e| (e.kind().as_str().to_string(), e.to_string()))?;
    let bundle =
        Bundle::open(&args.bundle).map_err(|e| (e.kind().as_str().to_string(), e.to_string()))?;
    if let Some(expected) = &args.expect_sha256 {
        let listed = bundle
            .variant(args.precision.variant())
            .map_err(|e| (e.kind().as_str().to_string(), e.to_string()))?;
        if &listed.sha256 != expected {
            return Err((
                "integrity".into(),
                format!(
                    "bundle {} changed since the daemon verified it: {} is now listed as {}, expected {expected}",
                    args.bundle.display(),
                    listed.file,
                    listed.sha256
                ),
            ));
        }
    }
    let model = Model::load(&bundle, args.precision.variant(), &EngineOptions::default())
        .map_err(|e| (e.kind().as_str().to_string(), e.to_string()))?;
    let load_us = started.elapsed().as_micros() as u64;
    // One inference on a neutral image: pays the first-run costs before the first patient
    // image and gives the supervisor the latency its deadline is derived from.
    let warm = vec![0.5f32; model.input_spec().item_len()];
    let t = Instant::now();
    model.run(&warm).map_err(|e| {
        (
            e.kind().as_str().to_string(),
            format!("warm-up inference: {e}"),
        )
    })?;
    let warmup_us = t.elapsed().as_micros() as u64;
    let memory = edgedx_engine::memory::current();
    let report = model.report();
    let ready = Ready {
        precision: args.precision.variant().to_string(),
        model_sha256: report.sha256.clone(),
        kernels: report.kernels.clone(),
        load_us,
        warmup_us,
        rss_bytes: memory.map_or(0, |m| m.rss),
        peak_rss_bytes: memory.map_or(0, |m| m.peak_rss),
    };
    Ok((model, ready))
}

/// Decodes and preprocesses one input into `tensor`; `Err` is the answer to send.
fn prepare(
    model: &Model,
    limits: &Limits,
    name: &str,
    bytes: &[u8],
    tensor: &mut [f32],
) -> Result<(), Outcome> {
    crate::pipeline::prepare(bytes, name, limits, model, tensor)
        .map(drop)
        .map_err(|e| Outcome::InputRejected {
            kind: e.kind().as_str().to_string(),
            message: e.to_string(),
        })
}

/// Runs the model on a prepared tensor.
fn infer(model: &Model, name: &str, tensor: &[f32], started: Instant) -> Outcome {
    match crate::pipeline::score(model, tensor) {
        Ok(scores) => {
            let memory = edgedx_engine::memory::current();
            Outcome::Scores {
                probabilities: scores.probabilities,
                latency_us: started.elapsed().as_micros() as u64,
                rss_bytes: memory.map_or(0, |m| m.rss),
                peak_rss_bytes: memory.map_or(0, |m| m.peak_rss),
            }
        }
        Err(e) => Outcome::ModelError {
            message: format!("{name}: {e}"),
        },
    }
}
