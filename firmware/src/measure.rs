//! `edgedx info --memory`: measures what one worker process needs for each model of a
//! bundle — the same process the daemon starts — and optionally records it in the manifest
//! (`[memory.<variant>]`), where the daemon's fp32 memory gate reads it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use edgedx_bundle::{Bundle, MemoryNeed};
use edgedx_ingest::Limits;
use serde::Serialize;

use crate::serve::ipc::Outcome;
use crate::serve::worker_handle::{Worker, WorkerSpec};
use crate::PrecisionArg;

#[derive(Debug, Clone, Serialize)]
pub struct VariantMemory {
    pub variant: String,
    pub file_bytes: u64,
    /// VmRSS of the worker after load and warm-up, idle.
    pub steady_rss_bytes: u64,
    /// VmHWM after load and warm-up.
    pub load_peak_rss_bytes: u64,
    /// VmHWM after the sample images: the figure the budget must cover.
    pub peak_rss_bytes: u64,
    pub images: usize,
}

/// Starts a worker per variant, feeds it `samples`, and reads its memory figures.
pub fn measure(
    bundle_dir: &Path,
    launcher: &[String],
    samples: &[PathBuf],
) -> anyhow::Result<Vec<VariantMemory>> {
    let bundle = Bundle::open(bundle_dir)
        .with_context(|| format!("opening bundle {}", bundle_dir.display()))?;
    let exe = std::env::current_exe().context("locating this executable")?;
    let mut out = Vec::new();
    for precision in [PrecisionArg::Int8, PrecisionArg::Fp32] {
        let Ok(file) = bundle.variant(precision.variant()) else {
            continue;
        };
        let file_bytes = std::fs::metadata(bundle.variant_path(file)).map_or(0, |m| m.len());
        let spec = WorkerSpec {
            exe: exe.clone(),
            launcher: launcher.to_vec(),
            bundle: bundle_dir.to_path_buf(),
            precision,
            limits: Limits::default(),
            load_timeout: Duration::from_secs(300),
            memory_limit: None,
            expect_sha256: Some(file.sha256.clone()),
            // The model's own footprint, not the board's thread setting: a pool would add
            // its threads' stacks and per-thread scratch to the figure.
            threads: 1,
        };
        let mut worker = Worker::start(&spec)
            .map_err(|e| anyhow::anyhow!("{} worker: {e}", precision.variant()))?;
        let ready = worker.ready().clone();
        let mut peak = ready.peak_rss_bytes;
        let mut images = 0;
        for (i, path) in samples.iter().enumerate() {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let name = path.display().to_string();
            let limit = Duration::from_secs(300);
            match worker.classify(i as u64, &name, bytes.into(), limit, limit) {
                Ok(Outcome::Scores { peak_rss_bytes, .. }) => {
                    peak = peak.max(peak_rss_bytes);
                    images += 1;
                }
                Ok(other) => bail!("{}: {name}: {other:?}", precision.variant()),
                Err(e) => bail!("{} worker on {name}: {e}", precision.variant()),
            }
        }
        worker.stop();
        out.push(VariantMemory {
            variant: precision.variant().to_string(),
            file_bytes,
            steady_rss_bytes: ready.rss_bytes,
            load_peak_rss_bytes: ready.peak_rss_bytes,
            peak_rss_bytes: peak,
            images,
        });
    }
    if out.is_empty() {
        bail!(
            "bundle {} has neither an int8 nor an fp32 model",
            bundle_dir.display()
        );
    }
    Ok(out)
}

/// Writes `[memory.<variant>]` tables into the manifest, replacing earlier ones.
pub fn write_needs(
    dir: &Path,
    measured: &[VariantMemory],
    measured_on: &str,
) -> anyhow::Result<()> {
    let path = dir.join(edgedx_bundle::MANIFEST_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut tables = String::new();
    let date = crate::gate::record_now_utc();
    for m in measured {
        let need = MemoryNeed {
            peak_rss_bytes: m.peak_rss_bytes,
            steady_rss_bytes: m.steady_rss_bytes,
            load_peak_bytes: m.load_peak_rss_bytes,
            measured_on: measured_on.to_string(),
            date: date.clone(),
        };
        let table = toml::to_string(&need).context("serialising the memory record")?;
        if !tables.is_empty() {
            tables.push('\n');
        }
        tables.push_str(&format!("[memory.{}]\n{table}", m.variant));
    }
    // Earlier [memory.*] tables go (each runs to the next table header or the end).
    let new_text = crate::manifest_edit::replace_tables(&text, "memory", &tables);
    // The result must still be a valid manifest before it replaces the old one.
    edgedx_bundle::Manifest::from_toml_str(&new_text, &path)
        .context("the updated manifest does not validate")?;
    crate::manifest_edit::write(dir, &new_text)
}
