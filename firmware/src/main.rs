//! `edgedx`: headless inference firmware for exam-room aarch64 boards.
//!
//! `main` parses the command line, sets up logging and the panic policy once, and hands
//! typed arguments to the command modules. Exit codes: 0 success, 1 setup error (bundle,
//! model), 2 some inputs failed or bad usage, 3 the accuracy gate rejected the model,
//! 70 internal error. Never 101.

mod bundle_cmd;
mod bundle_init;
mod classify;
mod demo;
mod gate;
mod heap;
mod info;
mod manifest_edit;
mod measure;
mod paths;
mod pipeline;
mod preprocess_cmd;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[global_allocator]
static ALLOCATOR: heap::CountingAlloc = heap::CountingAlloc;

/// Exit code for an internal error (sysexits EX_SOFTWARE): a bug, never bad input.
const EXIT_INTERNAL: u8 = 70;

#[derive(Debug, Parser)]
#[command(
    name = "edgedx",
    version,
    about = "Headless medical image classifier firmware"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Classify image files (DICOM, PNG, JPEG, PGM) and print one result per file.
    Classify(classify::Args),
    /// Describe a bundle, its models, the kernels tract picked and this CPU.
    Info(info::Args),
    /// Accuracy gate: compare int8 with fp32 on a labelled set; approve or reject int8.
    Gate(gate::Args),
    /// The model team's bundle tools: init, add, keygen, sign, verify.
    Bundle(bundle_cmd::Args),
    /// Write the input tensors the device would make from images, as one .npy array
    /// (calibration data for quantization, checks against a training pipeline).
    Preprocess(preprocess_cmd::Args),
    /// Run the daemon: links, spool, camera, outbox, inference workers.
    Serve(serve::Args),
    /// Start the daemon on a temporary socket and spool, feed it the bundled samples, print
    /// each result as a client receives it, and exit.
    Demo(demo::Args),
    /// Inference worker process (started by `serve`; speaks a private pipe protocol).
    #[command(hide = true)]
    Worker(serve::worker::Args),
}

/// Which model of the bundle to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    Int8,
    Fp32,
}

impl PrecisionArg {
    pub fn variant(self) -> &'static str {
        match self {
            PrecisionArg::Int8 => "int8",
            PrecisionArg::Fp32 => "fp32",
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    // Panics from tract and the decoders are caught where they happen and become errors
    // that name the file; the default hook would also print a backtrace banner to the user.
    std::panic::set_hook(Box::new(|info| log::debug!("caught panic: {info}")));
    let cli = Cli::parse();
    let outcome = std::panic::catch_unwind(|| match cli.command {
        Command::Classify(args) => classify::run(args),
        Command::Info(args) => info::run(args),
        Command::Gate(args) => gate::run(args),
        Command::Bundle(args) => bundle_cmd::run(args),
        Command::Preprocess(args) => preprocess_cmd::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Worker(args) => serve::worker::run(args),
    });
    match outcome {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            eprintln!("edgedx: error: {e:#}");
            ExitCode::from(1)
        }
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            eprintln!("edgedx: internal error: {msg} (please report this)");
            ExitCode::from(EXIT_INTERNAL)
        }
    }
}
