//! `edgedx info`: what a technician needs to see about a bundle and this board's CPU.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use edgedx_bundle::Bundle;
use edgedx_engine::{memory, EngineOptions, Model};
use serde::Serialize;

use crate::PrecisionArg;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model bundle directory (default: the installed bundle, else models/brain-mri-4class).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Models to load and describe (repeatable). Default: int8 only; fp32 is never loaded
    /// unless asked for.
    #[arg(long, value_enum)]
    precision: Vec<PrecisionArg>,
    /// Batch size to build the plans for.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// One JSON document instead of text.
    #[arg(long)]
    json: bool,
    /// Measure the memory of a worker process per model (load peak, steady state, peak
    /// over the bundle's sample images) instead of loading models in this process.
    #[arg(long)]
    memory: bool,
    /// With --memory: record the figures in the manifest as [memory.<variant>].
    #[arg(long, requires = "memory")]
    write: bool,
    /// With --memory: program put in front of the worker command (e.g. the qemu runner).
    #[arg(long)]
    worker_launcher: Option<String>,
}

#[derive(Debug, Serialize)]
struct Info {
    edgedx_version: &'static str,
    bundle: BundleInfo,
    cpu: Cpu,
    preprocess_kernel: &'static str,
    models: Vec<LoadedModel>,
}

#[derive(Debug, Serialize)]
struct BundleInfo {
    dir: String,
    name: String,
    version: String,
    task: String,
    labels: Vec<String>,
    input: edgedx_bundle::InputSpec,
    output: edgedx_bundle::OutputSpec,
    files: Vec<FileEntry>,
    clinical_use: Option<String>,
}

#[derive(Debug, Serialize)]
struct FileEntry {
    variant: String,
    file: String,
    precision: String,
    quantization: edgedx_bundle::Quantization,
    sha256: String,
}

#[derive(Debug, Serialize)]
struct Cpu {
    arch: &'static str,
    features: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
struct LoadedModel {
    variant: String,
    sha256: String,
    file_bytes: u64,
    batch: usize,
    load_strategy: String,
    load_strategy_note: Option<String>,
    load_ms: f64,
    kernels: Vec<String>,
    ops: Vec<(String, usize)>,
    /// Exact rewrites the engine applied after tract's optimiser.
    patches: Vec<String>,
    /// Quantized operators that run in float, and why.
    in_float: Vec<String>,
    /// Resident memory of this process after the load (bytes).
    rss_after_load: Option<u64>,
    /// Peak resident memory of this process so far (bytes): the load peak of the models
    /// loaded up to this one.
    peak_rss: Option<u64>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.memory {
        return run_memory(&args);
    }
    let dir = crate::paths::bundle_dir(args.bundle.clone());
    let bundle = Bundle::open(&dir).with_context(|| format!("opening bundle {}", dir.display()))?;
    let m = bundle.manifest();
    let precisions = if args.precision.is_empty() {
        vec![PrecisionArg::Int8]
    } else {
        args.precision.clone()
    };
    let options = EngineOptions { batch: args.batch };
    let mut models = Vec::new();
    for p in precisions {
        let model = Model::load(&bundle, p.variant(), &options)
            .with_context(|| format!("loading the {} model", p.variant()))?;
        let r = model.report();
        let mem = memory::current();
        models.push(LoadedModel {
            variant: r.variant.clone(),
            sha256: r.sha256.clone(),
            file_bytes: r.file_bytes,
            batch: r.batch,
            load_strategy: r.strategy.to_string(),
            load_strategy_note: r.strategy_note.clone(),
            load_ms: r.load_time.as_secs_f64() * 1e3,
            kernels: r.kernels.clone(),
            ops: r.ops.clone(),
            patches: r.patches.clone(),
            in_float: r.in_float.clone(),
            rss_after_load: mem.map(|m| m.rss),
            peak_rss: mem.map(|m| m.peak_rss),
        });
    }
    let cpu = edgedx_engine::cpu_features();
    let info = Info {
        edgedx_version: env!("CARGO_PKG_VERSION"),
        bundle: BundleInfo {
            dir: dir.display().to_string(),
            name: m.bundle.name.clone(),
            version: m.bundle.version.clone(),
            task: m.bundle.task.clone(),
            labels: m.bundle.labels.clone(),
            input: m.input.clone(),
            output: m.output.clone(),
            files: m
                .models
                .iter()
                .map(|(variant, f)| FileEntry {
                    variant: variant.clone(),
                    file: f.file.clone(),
                    precision: f.precision.to_string(),
                    quantization: f.quantization,
                    sha256: f.sha256.clone(),
                })
                .collect(),
            clinical_use: m.model_card.as_ref().map(|c| c.clinical_use.clone()),
        },
        cpu: Cpu {
            arch: cpu.arch,
            features: cpu.features,
        },
        preprocess_kernel: edgedx_ingest::kernel_name(),
        models,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print_text(&info);
    }
    Ok(ExitCode::SUCCESS)
}

fn run_memory(args: &Args) -> anyhow::Result<ExitCode> {
    let dir = crate::paths::bundle_dir(args.bundle.clone());
    let launcher: Vec<String> = args
        .worker_launcher
        .as_deref()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let mut samples: Vec<PathBuf> = std::fs::read_dir(dir.join("samples"))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    samples.retain(|p| {
        matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("png" | "jpg" | "jpeg" | "dcm" | "pgm")
        )
    });
    samples.sort();
    if samples.is_empty() {
        eprintln!(
            "edgedx: note: {} has no sample images: the peak covers loading and warm-up only \
             (put a few typical images there, e.g. with `bundle init --sample`)",
            dir.join("samples").display()
        );
    }
    let measured = crate::measure::measure(&dir, &launcher, &samples)?;
    let measured_on = format!(
        "{}-{}{}",
        std::env::consts::ARCH,
        std::env::consts::OS,
        if launcher.is_empty() {
            String::new()
        } else {
            format!(" under {}", launcher[0])
        }
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "bundle": dir.display().to_string(), "measured_on": measured_on, "workers": measured })
        );
    } else {
        println!(
            "worker memory per model ({measured_on}, {} sample images)",
            samples.len()
        );
        for m in &measured {
            println!(
                "  {:<5} file {:>10}  steady {:>10}  load peak {:>10}  peak {:>10}",
                m.variant,
                mib(m.file_bytes),
                mib(m.steady_rss_bytes),
                mib(m.load_peak_rss_bytes),
                mib(m.peak_rss_bytes)
            );
        }
    }
    if args.write {
        crate::measure::write_needs(&dir, &measured, &measured_on)?;
        eprintln!(
            "recorded [memory.*] in {}",
            dir.join("manifest.toml").display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn print_text(info: &Info) {
    let b = &info.bundle;
    println!("edgedx {}", info.edgedx_version);
    println!("bundle     {} {} ({})", b.name, b.version, b.dir);
    if let Some(c) = &b.clinical_use {
        println!("           {c}");
    }
    println!(
        "task       {} over {} labels: {}",
        b.task,
        b.labels.len(),
        b.labels.join(", ")
    );
    println!(
        "input      {:?} {} {}x{}x{} {}",
        b.input.tensor,
        b.input.layout,
        b.input.height,
        b.input.width,
        b.input.channels,
        b.input.colour,
    );
    println!("           {}", b.input.preprocessing());
    println!("output     {:?} ({})", b.output.tensor, b.output.kind);
    for f in &b.files {
        println!(
            "file       {:<9} {:<16} {} {:<9} sha256 {}",
            f.variant, f.file, f.precision, f.quantization, f.sha256
        );
    }
    println!(
        "cpu        {} [{}]",
        info.cpu.arch,
        info.cpu.features.join(" ")
    );
    println!("preprocess {}", info.preprocess_kernel);
    for m in &info.models {
        println!(
            "model      {} ({} bytes, sha256 verified), batch {}, loaded in {:.1} ms: {}",
            m.variant, m.file_bytes, m.batch, m.load_ms, m.load_strategy
        );
        if let Some(note) = &m.load_strategy_note {
            println!("           first strategy failed: {note}");
        }
        println!("  kernels  {}", m.kernels.join(", "));
        let ops: Vec<String> = m.ops.iter().map(|(n, c)| format!("{n}x{c}")).collect();
        println!("  ops      {}", ops.join(" "));
        for p in &m.patches {
            println!("  rewrite  {p}");
        }
        for f in &m.in_float {
            println!("  float    {f}");
        }
        if let (Some(rss), Some(peak)) = (m.rss_after_load, m.peak_rss) {
            println!(
                "  memory   rss after load {}, peak so far {}",
                mib(rss),
                mib(peak)
            );
        }
    }
}
