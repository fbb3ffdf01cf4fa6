//! `edgedx demo`: the whole product in one command. It starts the daemon with built-in
//! defaults (a socket, a spool directory and a state directory under a temporary
//! directory, the default bundle), connects as a client, drops half of the bundled sample
//! images into the spool and uploads the others over the socket, prints each result as the
//! client receives it, acknowledges it, and shuts the daemon down.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use edgedx_ctl::{reason_text, Client, Event};

use crate::serve::config::Config;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model bundle directory (default: the installed bundle, else models/brain-mri-4class).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Images to feed (default: the bundle's samples/ directory).
    #[arg(long)]
    samples: Option<PathBuf>,
    /// Program put in front of the worker command, e.g. "qemu-aarch64 -L /usr/aarch64-linux-gnu"
    /// where this binary only runs under qemu-user.
    #[arg(long)]
    worker_launcher: Option<String>,
    /// Seconds to wait for all results.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let bundle = crate::paths::bundle_dir(args.bundle.clone());
    let samples = args
        .samples
        .clone()
        .unwrap_or_else(|| bundle.join("samples"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&samples)
        .with_context(|| format!("reading samples from {}", samples.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_image(p))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no images in {}", samples.display());
    }
    let tmp = tempfile::Builder::new()
        .prefix("edgedx-demo-")
        .tempdir()
        .context("creating a temporary directory")?;
    let spool = tmp.path().join("spool");
    std::fs::create_dir_all(&spool)?;
    let socket = tmp.path().join("edgedx.sock");
    let launcher: Vec<String> = args
        .worker_launcher
        .as_deref()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let config_text = format!(
        "bundle = {bundle:?}\nstate_dir = {state:?}\n[socket]\npath = {socket:?}\n[spool]\ndir = {spool:?}\nsettle_ms = 500\n[worker]\nlauncher = {launcher:?}\n",
        bundle = bundle.display().to_string(),
        state = tmp.path().join("state").display().to_string(),
        socket = socket.display().to_string(),
        spool = spool.display().to_string(),
    );
    let config: Config = toml::from_str(&config_text).context("demo configuration")?;
    config.validate().context("demo configuration")?;

    println!(
        "edgedx demo: daemon on {}, spool {}",
        socket.display(),
        spool.display()
    );
    let (stop_tx, stop_rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let daemon = std::thread::spawn(move || crate::serve::serve(config, stop_rx, Some(ready_tx)));
    if ready_rx
        .recv_timeout(Duration::from_secs(args.timeout))
        .is_err()
    {
        let outcome = daemon.join();
        bail!(
            "the daemon did not become ready: {:?}",
            outcome.map(|r| r.map(|_| ()).map_err(|e| format!("{e:#}")))
        );
    }

    let outcome = feed(&socket, &spool, &files, Duration::from_secs(args.timeout));
    let _ = stop_tx.send(());
    match daemon.join() {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => bail!("daemon: {e:#}"),
        Err(_) => bail!("daemon thread panicked"),
    }
    let (received, errors) = outcome?;
    println!("edgedx demo: {received} results, {errors} errors; daemon stopped cleanly");
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("png" | "jpg" | "jpeg" | "dcm" | "pgm")
    )
}

/// Spools the first half, uploads the second half, and prints every result as it comes.
fn feed(
    socket: &Path,
    spool: &Path,
    files: &[PathBuf],
    timeout: Duration,
) -> anyhow::Result<(usize, usize)> {
    let mut client = Client::socket(socket).context("connecting to the demo daemon")?;
    let device = client.hello("edgedx-demo", Duration::from_secs(10))?;
    println!(
        "connected: device {}, bundle {}@{}, protocol {}",
        device.device_id, device.bundle_name, device.bundle_version, device.protocol_version
    );
    let half = files.len().div_ceil(2);
    for f in &files[..half] {
        // Copy under a hidden name and rename, the way a careful writer fills a spool.
        let name = f.file_name().context("file name")?;
        let hidden = spool.join(format!(".{}", name.to_string_lossy()));
        std::fs::copy(f, &hidden)?;
        std::fs::rename(&hidden, spool.join(name))?;
        println!("spooled   {}", name.to_string_lossy());
    }
    let mut received = 0usize;
    let mut errors = 0usize;
    let print = |r: &edgedx_icd::ClassificationResult, uploaded: Option<&str>| {
        let source = match (&r.source, uploaded) {
            (edgedx_icd::Source::Spool { name }, _) => format!("spool {name}"),
            (edgedx_icd::Source::Upload { .. }, Some(name)) => format!("upload {name}"),
            (edgedx_icd::Source::Upload { upload_id }, None) => format!("upload #{upload_id}"),
            (edgedx_icd::Source::Camera { capture_id }, _) => format!("camera {capture_id}"),
        };
        println!(
            "result {:>3}  {:<28} {:<11} {:5.1}%  {:?} ({})  {:.1} ms",
            r.result_id,
            source,
            r.label.as_str(),
            r.confidence * 100.0,
            r.precision,
            reason_text(r),
            r.latency_us as f64 / 1e3
        );
    };
    for f in &files[half..] {
        let bytes = std::fs::read(f)?;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        println!("uploading {name} ({} bytes)", bytes.len());
        match client.classify_bytes(&name, &bytes, timeout) {
            Ok(r) => {
                print(&r, Some(&name));
                client.ack(r.result_id)?;
                received += 1;
            }
            Err(e) => {
                println!("error     {name}: {e}");
                errors += 1;
            }
        }
    }
    let until = Instant::now() + timeout;
    while received + errors < files.len() {
        let left = until.saturating_duration_since(Instant::now());
        match client.next_event(left)? {
            Some(Event::Result(r)) => {
                print(&r, None);
                client.ack(r.result_id)?;
                received += 1;
            }
            Some(Event::Error(e)) => {
                println!("error     {}", e.text);
                errors += 1;
            }
            Some(Event::Status(_)) => {}
            None => bail!(
                "timed out with {} of {} results",
                received + errors,
                files.len()
            ),
        }
    }
    Ok((received, errors))
}
