//! `edgedx-ctl`: talk to an edgedx device from the UI host or a technician's laptop.
//!
//! Exit codes: 0 success, 1 link or device error, 2 some files failed, 3 timed out.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use edgedx_ctl::{reason_text, result_json, Client, ClientError, Event};

#[derive(Debug, Parser)]
#[command(name = "edgedx-ctl", version, about = "Client for an edgedx device")]
struct Cli {
    /// The device's Unix socket.
    #[arg(long, global = true, conflicts_with = "serial")]
    socket: Option<PathBuf>,
    /// A serial device (UART or USB CDC-ACM) connected to the device.
    #[arg(long, global = true)]
    serial: Option<PathBuf>,
    #[arg(long, global = true, default_value_t = 115_200)]
    baud: u32,
    /// JSON lines instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for each answer.
    #[arg(long, global = true, default_value_t = 60.0)]
    timeout: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the device's status.
    Status,
    /// Upload image files, wait for each result, acknowledge it and print it.
    Classify { files: Vec<PathBuf> },
    /// Stream results as they arrive (replayed unacknowledged ones first) and acknowledge
    /// each after printing it.
    Watch {
        /// Stop after this many results.
        #[arg(long)]
        count: Option<u64>,
        /// Print without acknowledging (the device will send them again).
        #[arg(long)]
        no_ack: bool,
    },
    /// Round-trip time of a Ping.
    Ping,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgedx-ctl: {e:#}");
            let timeout = e
                .downcast_ref::<ClientError>()
                .is_some_and(|c| matches!(c, ClientError::Timeout(_)));
            ExitCode::from(if timeout { 3 } else { 1 })
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs_f64(cli.timeout.max(0.001));
    let mut client = match (&cli.socket, &cli.serial) {
        (Some(path), None) => {
            Client::socket(path).with_context(|| format!("connecting to {}", path.display()))?
        }
        (None, Some(dev)) => {
            Client::serial(dev, cli.baud).with_context(|| format!("opening {}", dev.display()))?
        }
        _ => bail!("say where the device is: --socket PATH or --serial DEVICE [--baud N]"),
    };
    let device = client.hello("edgedx-ctl", timeout)?;
    if !cli.json {
        eprintln!(
            "connected to {} (firmware {}, bundle {}@{})",
            device.device_id, device.firmware_version, device.bundle_name, device.bundle_version
        );
    }
    match cli.command {
        Command::Status => {
            let s = client.status(timeout)?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "mode": format!("{:?}", s.mode).to_lowercase(),
                        "mode_reason": format!("{:?}", s.mode_reason),
                        "memory_used_bytes": s.memory_used_bytes, "memory_budget_bytes": s.memory_budget_bytes,
                        "uptime_s": s.uptime_s, "queue_depth": s.queue_depth, "results": s.results,
                        "errors": s.errors, "fallbacks": s.fallbacks, "dropped_frames": s.dropped_frames,
                        "outbox_unacked": s.outbox_unacked, "outbox_full": s.outbox_full,
                        "live": s.live, "ready": s.ready, "kernels": s.kernels.as_str(),
                        "alert": s.alert.as_str(),
                        "shadow_checked": s.shadow_checked, "shadow_disagreements": s.shadow_disagreements,
                    })
                );
            } else {
                println!("mode        {:?} ({:?})", s.mode, s.mode_reason);
                println!("ready/live  {}/{}", s.ready, s.live);
                println!(
                    "memory      {:.1} / {:.1} MiB",
                    s.memory_used_bytes as f64 / 1048576.0,
                    s.memory_budget_bytes as f64 / 1048576.0
                );
                println!("uptime      {} s", s.uptime_s);
                println!("queue       {}", s.queue_depth);
                println!(
                    "results     {} (errors {}, fallbacks {})",
                    s.results, s.errors, s.fallbacks
                );
                println!(
                    "outbox      {} unacknowledged{}",
                    s.outbox_unacked,
                    if s.outbox_full { ", FULL" } else { "" }
                );
                println!("dropped     {} frames", s.dropped_frames);
                println!("kernels     {}", s.kernels);
                if !s.alert.is_empty() {
                    println!("ALERT       {}", s.alert);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ping => {
            let rtt = client.ping(0x5eed, timeout)?;
            println!("pong in {:.1} ms", rtt.as_secs_f64() * 1e3);
            Ok(ExitCode::SUCCESS)
        }
        Command::Classify { files } => {
            if files.is_empty() {
                bail!("no files given");
            }
            let mut failed = 0;
            for file in &files {
                let name = file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let outcome = std::fs::read(file)
                    .with_context(|| format!("reading {}", file.display()))
                    .and_then(|bytes| Ok(client.classify_bytes(&name, &bytes, timeout)?));
                match outcome {
                    Ok(r) => {
                        client.ack(r.result_id)?;
                        if cli.json {
                            let mut v = result_json(&r, None);
                            v["file"] = serde_json::Value::String(file.display().to_string());
                            println!("{v}");
                        } else {
                            println!(
                                "{}: {} ({:.1}%) [{:?}, {}, result {}]",
                                file.display(),
                                r.label,
                                r.confidence * 100.0,
                                r.precision,
                                reason_text(&r),
                                r.result_id
                            );
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        if cli.json {
                            println!(
                                "{}",
                                serde_json::json!({ "file": file.display().to_string(), "error": format!("{e:#}") })
                            );
                        } else {
                            println!("{}: error: {e:#}", file.display());
                        }
                    }
                }
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Watch { count, no_ack } => {
            let mut seen = 0u64;
            loop {
                if count.is_some_and(|c| seen >= c) {
                    return Ok(ExitCode::SUCCESS);
                }
                let Some(event) = client.next_event(timeout)? else {
                    if count.is_some() {
                        bail!(ClientError::Timeout(timeout));
                    }
                    continue;
                };
                match event {
                    Event::Result(r) => {
                        seen += 1;
                        if cli.json {
                            println!("{}", result_json(&r, None));
                        } else {
                            println!(
                                "result {}: {} ({:.1}%) [{:?}, {}]",
                                r.result_id,
                                r.label,
                                r.confidence * 100.0,
                                r.precision,
                                reason_text(&r)
                            );
                        }
                        if !no_ack {
                            client.ack(r.result_id)?;
                        }
                    }
                    Event::Status(s) => {
                        if cli.json {
                            println!(
                                "{}",
                                serde_json::json!({ "status": { "mode": format!("{:?}", s.mode), "mode_reason": format!("{:?}", s.mode_reason) } })
                            );
                        } else {
                            println!("status: mode {:?} ({:?})", s.mode, s.mode_reason);
                        }
                    }
                    Event::Error(e) => {
                        if cli.json {
                            println!(
                                "{}",
                                serde_json::json!({ "error": { "code": u16::from(e.code), "text": e.text.as_str() } })
                            );
                        } else {
                            println!("device error {:?}: {}", e.code, e.text);
                        }
                    }
                }
            }
        }
    }
}
