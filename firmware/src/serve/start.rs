//! Start-up of `edgedx serve`: the watchdog first, then the bundle, the outbox, the
//! dispatcher and its first worker, the links and the hardware, then the supervisor loop.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use edgedx_bundle::Bundle;
use edgedx_icd::Precision;
use edgedx_ingest::Limits;
use serde_json::json;

use super::admission::{Admission, AdmissionLimits};
use super::audit::AuditLog;
use super::config::Config;
use super::dispatch::{self, DispatchEvent, Dispatcher, EngineState, Job, Policy};
use super::fallback::FallbackRules;
use super::hardware::*;
use super::link::{self};
use super::outbox::{Outbox, OutboxLimits, Syncer};
use super::sim_panel::Panel;
use super::supervisor::*;
use super::watchdog_keeper::{StartupFeed, WatchdogKeeper};
use super::worker_handle::WorkerSpec;
use super::{link_event, memory, spool, spool_event, spool_read_event, Event};
use crate::PrecisionArg;

/// Events waiting for the supervisor loop. An upload chunk event holds about 1 KiB, so a
/// full queue is a few hundred KiB.
const EVENT_QUEUE: usize = 256;

/// Runs the daemon until `shutdown` fires. `ready` (tests, demo) is told the socket path
/// once the first worker is serving.
pub fn serve(
    config: Config,
    shutdown: Receiver<()>,
    ready: Option<Sender<()>>,
) -> anyhow::Result<ExitCode> {
    let clock = config.clock();
    // The watchdog first: one armed by a previous run keeps counting during start-up.
    let mut panel = Panel::default();
    let watchdog_keeper = match open_watchdog(&config, &clock, &mut panel)? {
        Some(dog) => Some(WatchdogKeeper::start(StartupFeed::new(
            dog,
            clock.clone(),
            config.worker.startup_limit(),
        ))?),
        None => None,
    };
    let bundle_dir = crate::paths::bundle_dir(config.bundle.clone());
    let (bundle, signer) = open_bundle(&bundle_dir, &config.trusted_keys)?;
    let manifest = bundle.manifest();
    let int8_file = bundle.variant("int8").ok().cloned();
    let model_sha = int8_file
        .as_ref()
        .or(bundle.variant("fp32").ok())
        .and_then(|f| dispatch::parse_sha(&f.sha256))
        .with_context(|| {
            format!(
                "bundle {}: no int8 or fp32 model with a valid sha256",
                bundle_dir.display()
            )
        })?;
    let identity = Identity {
        device_id: config.device_id.clone().unwrap_or_else(hostname),
        bundle_name: manifest.bundle.name.clone(),
        bundle_version: manifest.bundle.version.clone(),
        model_sha256: model_sha,
        labels: bundle.labels().to_vec(),
        memory_budget: config.memory.budget_mib * 1024 * 1024,
    };

    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state_dir {}", config.state_dir.display()))?;
    let mut audit = AuditLog::open(&config.state_dir, 4 * 1024 * 1024, 4)
        .with_context(|| format!("opening the audit log in {}", config.state_dir.display()))?;
    let (outbox, recovery) = Outbox::open(
        &config.outbox_dir(),
        OutboxLimits {
            max_bytes: config.outbox.max_bytes,
            segment_bytes: config.outbox.segment_bytes,
        },
    )?;
    audit.record(
        "start",
        json!({
            "firmware": env!("CARGO_PKG_VERSION"),
            "bundle": format!("{}@{}", identity.bundle_name, identity.bundle_version),
            "precision": format!("{:?}", config.precision),
            "signature": signer,
            "outbox": {
                "segments": recovery.segments, "results": recovery.results,
                "unacked": recovery.unacked, "torn_bytes": recovery.torn_bytes,
                "undecodable": recovery.undecodable,
                "damaged": recovery.damaged.iter().map(|(p, at)| format!("{} at {at}", p.display())).collect::<Vec<_>>(),
            },
        }),
    );
    if recovery.torn_bytes > 0 {
        log::warn!(
            "outbox: dropped a torn last record ({} bytes), kept {} results",
            recovery.torn_bytes,
            recovery.results
        );
    }
    for (path, at) in &recovery.damaged {
        log::error!(
            "outbox: {} is damaged at byte {at}; later records in it were skipped",
            path.display()
        );
    }

    let approval = memory::check_approval(&bundle, &config)?;
    // Bounded: a link that floods the device blocks its own reader thread (backpressure on
    // that link) instead of growing the supervisor's queue without limit.
    let (events_tx, events_rx) = mpsc::sync_channel::<Event>(EVENT_QUEUE);
    let engine = Arc::new(Mutex::new(EngineState {
        ready: false,
        mode: match approval.serve {
            PrecisionArg::Int8 => Precision::Int8,
            PrecisionArg::Fp32 => Precision::Fp32,
        },
        mode_reason: approval.reason,
        kernels: String::new(),
        worker_rss_bytes: 0,
        fallbacks: 0,
        worker_restarts: 0,
        progress: clock.now(),
        alert: None,
        shadow_checked: 0,
        shadow_disagreements: 0,
        shadow_alert: None,
    }));
    if let Some(note) = &approval.note {
        log::warn!("{note}");
        audit.record("unapproved_int8", json!({ "note": note }));
    }

    // Dispatcher and its first worker.
    let exe = match &config.worker.exe {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating this executable for the worker")?,
    };
    let limits = Limits {
        max_pixels: config.limits.max_pixels,
        max_file_bytes: config.limits.max_file_bytes,
    };
    let spec = |precision: PrecisionArg| WorkerSpec {
        expect_sha256: bundle
            .variant(precision.variant())
            .ok()
            .map(|f| f.sha256.clone()),
        exe: exe.clone(),
        launcher: config.worker.launcher.clone(),
        bundle: bundle_dir.clone(),
        precision,
        limits,
        load_timeout: config.worker.load_timeout(),
        memory_limit: config.memory.worker_limit_bytes(),
        threads: config.worker.threads,
    };
    let policy = Policy {
        primary: approval.serve,
        primary_reason: approval.reason,
        retries: config.worker.retries,
        deadline_factor: config.worker.deadline_factor,
        deadline_floor: Duration::from_millis(config.worker.deadline_floor_ms),
        decode_deadline: config.worker.decode_timeout(),
        fallback: FallbackRules {
            after: config.fallback.after_failures,
            window: Duration::from_secs(config.fallback.window_s),
            cooldown: Duration::from_secs(config.fallback.cooldown_s),
            max_cooldown: Duration::from_secs(config.fallback.cooldown_s.saturating_mul(8)),
        },
        classes: identity.labels.len(),
    };
    let (dispatch_tx, dispatch_rx) = mpsc::channel::<DispatchEvent>();
    let gate = memory::Gate::new(&config, &bundle);
    let shadow = config.shadow.as_ref().map(|s| dispatch::ShadowPolicy {
        every: (1.0 / s.rate).round().max(1.0) as u64,
        window: s.window,
        min_samples: s.min_samples,
        threshold: s.threshold,
    });
    let mut dispatcher = Dispatcher::new(
        spec(PrecisionArg::Int8),
        spec(PrecisionArg::Fp32),
        policy,
        Box::new(gate),
        engine.clone(),
        dispatch_tx,
        clock.clone(),
    )
    .with_shadow(shadow);
    let (jobs_tx, jobs_rx) = mpsc::sync_channel::<Job>(config.limits.queue_depth);
    // Forward dispatcher events into the one supervisor channel.
    {
        let tx = events_tx.clone();
        thread::Builder::new()
            .name("dispatch-events".into())
            .spawn(move || {
                for e in dispatch_rx {
                    if tx.send(Event::Dispatch(e)).is_err() {
                        break;
                    }
                }
            })?;
    }
    let started_engine = dispatcher.start();
    // Transitions from the start are in the channel; the loop below records them.
    if let Err(e) = started_engine {
        audit.record("start_failed", json!({ "error": e }));
        bail!("no model can serve: {e}");
    }
    let dispatch_thread = thread::Builder::new()
        .name("dispatch".into())
        .spawn(move || dispatcher.run(jobs_rx))?;

    // Links.
    if let Some(s) = &config.socket {
        let listener = link::bind_socket(&s.path, config.socket_mode()?, s.group.as_deref())?;
        link::serve_socket(listener, s.max_clients, events_tx.clone(), link_event)?;
        log::info!("listening on {}", s.path.display());
    }
    if let Some(s) = &config.serial {
        link::serve_serial(&s.device, s.baud, events_tx.clone(), link_event)?;
        log::info!("serial link on {} at {} baud", s.device.display(), s.baud);
    }
    let mut spool_reader = None;
    if let Some(s) = &config.spool {
        spool_reader = Some(spool::start_reader(events_tx.clone(), spool_read_event)?);
        spool::watch(
            s.dir.clone(),
            Duration::from_millis(s.settle_ms),
            events_tx.clone(),
            spool_event,
        )?;
        log::info!("watching spool directory {}", s.dir.display());
    }
    let camera_tx = match &config.camera {
        Some(c) => Some(start_camera(c, events_tx.clone())?),
        None => None,
    };
    let (led, buzzer) = open_gpio(&config, events_tx.clone(), clock.clone(), &mut panel)?;
    panel.start(&config.state_dir)?;
    {
        let tx = events_tx.clone();
        thread::Builder::new()
            .name("shutdown".into())
            .spawn(move || {
                if shutdown.recv().is_ok() {
                    let _ = tx.send(Event::Shutdown);
                }
            })?;
    }

    let watchdog = watchdog_keeper.and_then(WatchdogKeeper::hand_over);
    let admission = Admission::new(admission_limits(&config));
    let mut sup = Supervisor {
        config,
        identity,
        started: Instant::now(),
        clock,
        links: HashMap::new(),
        admission,
        jobs_tx: Some(jobs_tx),
        jobs: HashMap::new(),
        next_job: 1,
        job_bytes: 0,
        spool_backlog: VecDeque::new(),
        spool_active: HashSet::new(),
        spool_reader,
        spool_reading: 0,
        outbox,
        syncer: Syncer::start(events_tx.clone(), Event::Synced)?,
        unsynced: VecDeque::new(),
        outbox_was_full: false,
        audit,
        engine,
        counters: Counters::default(),
        camera_tx,
        capture_busy: false,
        shutting_down: false,
        watchdog,
        notify_systemd: std::env::var_os("NOTIFY_SOCKET").is_some(),
        led,
        buzzer,
    };
    if sup.notify_systemd {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    }
    if let Some(ready) = ready {
        let _ = ready.send(());
    }
    sup.run(events_rx);
    let _ = dispatch_thread.join();
    sup.finish();
    Ok(ExitCode::SUCCESS)
}

/// Opens the bundle, verifying its signature first when trusted keys are configured.
/// Returns the bundle parsed from the verified manifest bytes and who signed it.
fn open_bundle(dir: &Path, trusted_keys: &[String]) -> anyhow::Result<(Bundle, String)> {
    use edgedx_bundle::signature::{verify_bundle, PublicKey};
    if trusted_keys.is_empty() {
        log::warn!(
            "no trusted_keys configured: the signature of bundle {} is not checked",
            dir.display()
        );
        let bundle =
            Bundle::open(dir).with_context(|| format!("opening bundle {}", dir.display()))?;
        return Ok((bundle, "not checked (no trusted_keys configured)".into()));
    }
    let keys = trusted_keys
        .iter()
        .map(|k| PublicKey::parse(k))
        .collect::<Result<Vec<_>, _>>()
        .context("trusted_keys")?;
    let verified = verify_bundle(dir, &keys).with_context(|| {
        format!(
            "bundle {} refused: nothing is loaded from it",
            dir.display()
        )
    })?;
    let signer = format!(
        "key {} ({})",
        verified.key_id,
        verified.signed_by.as_deref().unwrap_or("signer not named")
    );
    log::info!("bundle {} signature verified: {signer}", dir.display());
    Ok((verified.bundle, signer))
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "edgedx".into())
}

fn admission_limits(config: &Config) -> AdmissionLimits {
    let l = &config.limits;
    let socket = config.socket.as_ref();
    AdmissionLimits {
        max_uploads: l.max_uploads,
        per_link_uploads: l.per_link_uploads,
        max_file_bytes: l.max_file_bytes,
        pending_bytes: l.pending_bytes,
        upload_idle: Duration::from_millis(l.upload_idle_ms),
        upload_grace: Duration::from_millis(l.upload_grace_ms),
        socket_min_rate: l.socket_min_rate,
        max_clients: socket.map_or(usize::MAX, |s| s.max_clients),
        hello_timeout: Duration::from_millis(socket.map_or(5_000, |s| s.hello_timeout_ms)),
        evict_idle: Duration::from_secs(socket.map_or(30, |s| s.evict_idle_s)),
        // A Busy asks the host to wait 500 ms; a host that does not ask again within a
        // few times that has gone away.
        wait_hold: Duration::from_secs(3),
    }
}

/// The hardware watchdog, or the simulated one on the daemon's clock (its handle goes to
/// `panel`, which ends the process when it fires).
fn open_watchdog(
    config: &Config,
    clock: &Arc<dyn edgedx_board::Clock>,
    panel: &mut Panel,
) -> anyhow::Result<Option<Box<dyn edgedx_board::watchdog::Watchdog>>> {
    let Some(w) = &config.watchdog else {
        return Ok(None);
    };
    let timeout = Duration::from_secs(w.timeout_s);
    if w.driver == edgedx_board::profile::Driver::Sim {
        let (dog, handle) = edgedx_board::SimWatchdog::new(clock.clone(), timeout);
        panel.watchdog = Some(handle);
        return Ok(Some(Box::new(dog)));
    }
    let dog = edgedx_board::watchdog::DevWatchdog::open(&w.device, timeout)
        .with_context(|| format!("opening watchdog {}", w.device.display()))?;
    Ok(Some(Box::new(dog)))
}
