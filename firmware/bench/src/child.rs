//! Load time and memory, measured in a fresh process per load.
//!
//! VmHWM (peak resident set) only ever grows, and a process that already loaded other
//! models has a warm allocator, so the harness runs every load in a child process of its
//! own (`edgedx-bench child-load`): the child reads /proc/self/status before the load,
//! after it, and after a few inferences, and prints one JSON line.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use edgedx_bundle::Bundle;
use edgedx_engine::{memory, EngineOptions, Model};
use serde::{Deserialize, Serialize};

/// What one child measured (bytes and milliseconds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadStats {
    pub file_bytes: u64,
    pub load_ms: f64,
    /// VmRSS just before `Model::load`: the process without any model.
    pub rss_before: u64,
    /// VmHWM right after the load: the load's peak, plus the baseline.
    pub peak_after_load: u64,
    pub rss_after_load: u64,
    /// RssFile before and after the load: the growth is the binary's code and read-only
    /// data the load touched, file pages the kernel maps in (64 KiB around each fault).
    pub files_before: u64,
    pub files_after_load: u64,
    /// VmRSS after the steady-state inferences (weights + activations + baseline).
    pub rss_steady: u64,
    pub peak_end: u64,
    pub kernels: Vec<String>,
    pub ops: Vec<(String, usize)>,
}

impl LoadStats {
    /// Memory the load added on top of the empty process, at its peak.
    pub fn load_peak(&self) -> u64 {
        self.peak_after_load.saturating_sub(self.rss_before)
    }

    /// The part of `load_peak` that is the program's own file pages (code), not data.
    pub fn code_paged_in(&self) -> u64 {
        self.files_after_load.saturating_sub(self.files_before)
    }

    /// `load_peak` without the program's code pages: the load's data (weights, graph,
    /// transient copies, allocator) at its peak. A slight undercount where the code pages
    /// at the peak moment were fewer than at the end of the load; the per-fold log of
    /// `RUST_LOG=edgedx_engine=debug` gives the data at each stage to check it against.
    pub fn data_peak(&self) -> u64 {
        self.load_peak().saturating_sub(self.code_paged_in())
    }

    /// Resident memory the model keeps while serving, beyond the empty process.
    pub fn model_rss(&self) -> u64 {
        self.rss_steady.saturating_sub(self.rss_before)
    }
}

/// The child's side: load, measure, run `runs` inferences, measure, print JSON.
pub fn child_main(bundle: &Path, variant: &str, runs: usize) -> Result<()> {
    let bundle = Bundle::open(bundle)?;
    let input = vec![0.5f32; bundle.input().item_len()];
    let before = memory::current().context("no /proc/self/status")?;
    let started = Instant::now();
    let model = Model::load(&bundle, variant, &EngineOptions::default())?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let after_load = memory::current().context("no /proc/self/status")?;
    for _ in 0..runs {
        model.run(&input)?;
    }
    let end = memory::current().context("no /proc/self/status")?;
    let report = model.report();
    let stats = LoadStats {
        file_bytes: report.file_bytes,
        load_ms,
        rss_before: before.rss,
        peak_after_load: after_load.peak_rss,
        rss_after_load: after_load.rss,
        files_before: before.rss_file,
        files_after_load: after_load.rss_file,
        rss_steady: end.rss,
        peak_end: end.peak_rss,
        kernels: report.kernels.clone(),
        ops: report.ops.clone(),
    };
    println!("{}", serde_json::to_string(&stats)?);
    Ok(())
}

/// The parent's side: runs one child and parses its line.
pub fn measure(bundle: &Path, variant: &str, runs: usize) -> Result<LoadStats> {
    let exe = std::env::current_exe().context("locating edgedx-bench")?;
    let out = Command::new(&exe)
        .arg("child-load")
        .arg("--bundle")
        .arg(bundle)
        .arg("--variant")
        .arg(variant)
        .arg("--runs")
        .arg(runs.to_string())
        .output()
        .with_context(|| format!("running {} child-load", exe.display()))?;
    if !out.status.success() {
        bail!(
            "child-load {} {variant} failed ({}): {}",
            bundle.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("child-load printed {line:?}"))
}
