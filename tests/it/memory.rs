//! Memory figures against the rows of memory-budget.md: each test measures the real
//! process (a worker, the supervisor) and fails when it is over the row's limit.
//!
//! Under qemu-user the kernel's figures include the emulator itself (tens of MiB), so the
//! rows have a separate qemu limit; the native limit is the one that matters on a board.

use std::time::Duration;

use edgedx_ctl::Event;

use crate::daemon::{sample, write_journal, Daemon, Opts, T};
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
    for w in workers_within_rows(&[], "worker", "") {
        assert!(w["images"].as_u64().unwrap() >= 6, "{w}");
    }
}

/// Measures each worker with `edgedx info --memory` (plus `args`) and checks its peak
/// against the row `{row}.{variant}.peak`; returns the workers' reports.
fn workers_within_rows(args: &[&str], row: &str, what: &str) -> Vec<serde_json::Value> {
    let mut all = vec!["info".to_string(), "--memory".into(), "--json".into()];
    all.extend(args.iter().map(|a| a.to_string()));
    all.extend(runner_args());
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let out = util::run(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = &util::json_lines(&out)[0];
    let workers = report["workers"].as_array().unwrap().clone();
    for w in &workers {
        let variant = w["variant"].as_str().unwrap();
        let peak = w["peak_rss_bytes"].as_f64().unwrap() / MIB;
        let steady = w["steady_rss_bytes"].as_f64().unwrap() / MIB;
        let limit = budget_limit(&format!("{row}.{variant}.peak"));
        eprintln!(
            "{what}{variant} worker: steady {steady:.1} MiB, peak {peak:.1} MiB, limit {limit} MiB"
        );
        assert!(
            peak <= limit,
            "{what}{variant} worker peak {peak:.1} MiB is over its budget row ({limit} MiB)"
        );
    }
    workers
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
    let peak = vm_hwm_mib(d.pid());
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

/// A device that comes back to a journal of many unacknowledged results (a host away for
/// days) keeps only their index in RAM and reads each one back from the journal as a link
/// drains: its peak stays in the `supervisor.replay` row however long the backlog is.
#[test]
fn supervisor_replaying_a_long_backlog_is_within_its_budget_row() {
    const N: u64 = 30_000;
    let tmp = tempfile::tempdir().unwrap();
    let written = write_journal(&tmp.path().join("state/outbox"), N);
    let journal_mib = dir_bytes(&tmp.path().join("state/outbox")) as f64 / MIB;
    let d = Daemon::configure(tmp.path().to_path_buf(), Opts::default()).spawn();
    let mut c = d.client();
    let mut received = 0u64;
    while received < N {
        match c.next_event(T) {
            Ok(Some(Event::Result(r))) => {
                assert_eq!(r.result_id, written[received as usize].result_id);
                received += 1;
            }
            Ok(Some(_)) => {}
            other => panic!("{other:?} after {received} results\n{}", d.stderr()),
        }
    }
    let peak = vm_hwm_mib(d.pid());
    let limit = budget_limit("supervisor.replay");
    eprintln!(
        "supervisor peak {peak:.1} MiB after replaying {N} results ({journal_mib:.1} MiB of \
         journal), limit {limit} MiB"
    );
    assert!(
        peak <= limit,
        "supervisor peak {peak:.1} MiB while replaying is over its budget row ({limit} MiB)"
    );
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// The process's peak resident set (VmHWM), in MiB.
fn vm_hwm_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM:")
}

/// A figure of /proc/PID/status in kB, as MiB.
fn status_mib(pid: u32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("/proc/{pid}/status has no {key}"));
    kib / 1024.0
}

/// An upload is held once by the supervisor (its upload buffer, written straight into the
/// worker's pipe) and once by the worker (the message it read, decoded in place): each
/// process grows by about the image, not twice it (as when each made an encoded copy).
#[test]
fn an_upload_is_held_once_by_the_supervisor_and_once_by_the_worker() {
    const SIZE: usize = 24 << 20;
    let d = Daemon::start();
    let mut c = d.client();
    let sample_name = "glioma-01.png";
    // The worker is up and has classified once: its start-up peak is behind it.
    c.classify_bytes(sample_name, &std::fs::read(sample(sample_name)).unwrap(), T)
        .unwrap();
    let worker = d.worker_pid();
    let (supervisor_before, worker_before) = (vm_rss_mib(d.pid()), vm_rss_mib(worker));
    // Bytes no decoder takes: the image travels to the worker and is refused there.
    let noise: Vec<u8> = (0..SIZE as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let refused = c.classify_bytes("noise.bin", &noise, T);
    assert!(refused.is_err(), "noise was classified: {refused:?}");
    assert_eq!(
        d.worker_pid(),
        worker,
        "the worker was replaced\n{}",
        d.stderr()
    );
    let size_mib = SIZE as f64 / MIB;
    for (who, pid, before) in [
        ("supervisor", d.pid(), supervisor_before),
        ("worker", worker, worker_before),
    ] {
        let grew = vm_hwm_mib(pid) - before;
        eprintln!("{who}: peak grew by {grew:.1} MiB for a {size_mib:.0} MiB upload");
        assert!(
            grew < 1.5 * size_mib,
            "{who} grew by {grew:.1} MiB for a {size_mib:.0} MiB upload: more than one copy"
        );
    }
}

/// The process's resident set (VmRSS), in MiB.
fn vm_rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// A worker serving a VGG16-class bundle (the one in ../shared: 65 MB of fp32 weights,
/// about 15 GFLOP an image) stays within its own budget rows, well inside the 256 MiB a
/// worker may use.
#[test]
#[cfg_attr(
    target_arch = "aarch64",
    ignore = "VGG16 under qemu-user takes minutes per inference"
)]
fn a_vgg16_class_worker_is_within_its_budget_rows() {
    let Some(bundle) = crate::vgg16::vgg16_bundle() else {
        return;
    };
    let bundle = bundle.display().to_string();
    let workers = workers_within_rows(&["--bundle", &bundle], "worker.vgg16", "VGG16 ");
    assert_eq!(workers.len(), 2, "an int8 and an fp32 worker: {workers:?}");
}
