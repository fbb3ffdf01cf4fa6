//! Memory figures against the rows of memory-budget.md: each test measures the real
//! process (a worker, the supervisor) and fails when it is over the row's limit.
//!
//! Under qemu-user the kernel's figures include the emulator itself (tens of MiB), so the
//! rows have a separate qemu limit; the native limit is the one that matters on a board.

use std::time::Duration;

use crate::daemon::{sample, Daemon, T};
use crate::util;

const MIB: f64 = 1024.0 * 1024.0;

/// The limit in MiB for `key` from the table in memory-budget.md, in the column that
/// applies to this run (native, or under the qemu test runner).
fn budget_limit(key: &str) -> f64 {
    let text = std::fs::read_to_string(util::root().join("memory-budget.md")).unwrap();
    let qemu = std::env::var("EDGEDX_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty());
    let row = text
        .lines()
        .find(|l| l.starts_with(&format!("| `{key}` ")))
        .unwrap_or_else(|| panic!("memory-budget.md has no row `{key}`"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    // | key | what | limit native | limit qemu | measured | command |
    let cell = if qemu { cells[4] } else { cells[3] };
    cell.trim_end_matches("MiB")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("row `{key}`: limit {cell:?} is not \"N MiB\""))
}

fn runner_args() -> Vec<String> {
    match std::env::var("EDGEDX_TEST_RUNNER") {
        Ok(r) if !r.trim().is_empty() => vec!["--worker-launcher".into(), r],
        _ => Vec::new(),
    }
}

#[test]
fn worker_peak_memory_is_within_the_budget_rows() {
    let mut args = vec!["info".to_string(), "--memory".into(), "--json".into()];
    args.extend(runner_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = util::run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = &util::json_lines(&out)[0];
    for w in report["workers"].as_array().unwrap() {
        let variant = w["variant"].as_str().unwrap();
        let peak = w["peak_rss_bytes"].as_f64().unwrap() / MIB;
        let steady = w["steady_rss_bytes"].as_f64().unwrap() / MIB;
        let limit = budget_limit(&format!("worker.{variant}.peak"));
        eprintln!(
            "{variant} worker: steady {steady:.1} MiB, peak {peak:.1} MiB, limit {limit} MiB"
        );
        assert!(
            peak <= limit,
            "{variant} worker peak {peak:.1} MiB is over its budget row ({limit} MiB)"
        );
        assert!(w["images"].as_u64().unwrap() >= 6, "{w}");
    }
}

#[test]
fn supervisor_peak_memory_is_within_its_budget_row() {
    let d = Daemon::start();
    let mut c = d.client();
    for name in [
        "glioma-01.png",
        "meningioma-02.dcm",
        "pituitary-01.png",
        "notumor-01.png",
    ] {
        let r = c
            .classify_bytes(name, &std::fs::read(sample(name)).unwrap(), T)
            .unwrap();
        c.ack(r.result_id).unwrap();
    }
    c.ping(1, Duration::from_secs(30)).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let hwm_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let peak = hwm_kib / 1024.0;
    let limit = budget_limit("supervisor.peak");
    eprintln!("supervisor peak {peak:.1} MiB, limit {limit} MiB");
    assert!(
        peak <= limit,
        "supervisor peak {peak:.1} MiB is over its budget row ({limit} MiB)"
    );
    // Status reports supervisor + worker against the configured budget.
    let s = c.status(T).unwrap();
    assert!(
        s.memory_used_bytes as f64 / MIB > peak * 0.5
            && s.memory_used_bytes <= s.memory_budget_bytes,
        "{s:?}"
    );
}
