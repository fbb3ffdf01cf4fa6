//! `edgedx serve`: the supervisor. It owns the links, the outbox, the status and the
//! watchdogs; inference runs in a worker process (see [`dispatch`]) that it can kill and
//! replace without dropping a link or a queued request.
//!
//! One thread (the loop in [`Supervisor::run`]) owns all state and reacts to [`Event`]s
//! sent by the link readers, the spool watcher, the camera, the dispatcher, the signal
//! handler and a tick. Nothing else mutates state, so there are no locks around it.

pub mod admission;
pub mod audit;
pub mod config;
pub mod dispatch;
pub mod ipc;
pub mod link;
pub mod memory;
pub mod outbox;
pub mod spool;
pub mod watchdog_keeper;
pub mod worker;
pub mod worker_handle;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use edgedx_bundle::Bundle;
use edgedx_icd::{
    encode_frame, Ack, Busy, ClassificationResult, ErrorCode, ErrorMessage, Frame, Hello, Message,
    Pong, Precision, PrecisionReason, Source, Status, MAX_FRAME,
};
use edgedx_ingest::Limits;
use serde_json::json;
use sha2::{Digest, Sha256};

use self::admission::{Admission, AdmissionLimits, Arrival, BeginRequest, Expired, Refusal};
use self::audit::AuditLog;
use self::config::{CameraKind, Config};
use self::dispatch::{Completed, DispatchEvent, Dispatcher, EngineState, Job, Policy, Transition};
use self::link::{LinkEvent, LinkId, LinkKind, LinkWriter, Sent};
use self::outbox::{Outbox, OutboxLimits};
use self::watchdog_keeper::{StartupFeed, WatchdogKeeper};
use self::worker_handle::WorkerSpec;
use crate::PrecisionArg;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (TOML); see board/README.md for every key.
    #[arg(long)]
    config: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = config::Config::load(&args.config)?;
    let shutdown = install_signal_handlers()?;
    serve(config, shutdown, None)
}

/// Milliseconds since 1970-01-01 UTC.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Everything the supervisor loop reacts to. Moved once through the channel, so the size
/// of the largest variant (a decoded frame) costs a copy, not an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Event {
    Link(LinkId, LinkEvent),
    Spool(spool::SpoolFile),
    Dispatch(DispatchEvent),
    Captured {
        capture_id: u32,
        requester: Option<(LinkId, u32)>,
        frame: Result<CapturedFrame, String>,
    },
    CaptureButton,
    Shutdown,
}

#[derive(Debug)]
pub struct CapturedFrame {
    pub bytes: Vec<u8>,
    pub raw_sha256: [u8; 32],
    pub description: String,
}

/// A capture to take: the capture id and who asked (none for the capture button).
type CaptureRequest = (u32, Option<(LinkId, u32)>);

fn link_event(id: LinkId, e: LinkEvent) -> Event {
    Event::Link(id, e)
}

fn spool_event(f: spool::SpoolFile) -> Event {
    Event::Spool(f)
}

/// SIGTERM / SIGINT: finish in-flight work, flush, exit. Returns a receiver the serve
/// loop forwards as [`Event::Shutdown`].
fn install_signal_handlers() -> anyhow::Result<Receiver<()>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("installing signal handlers")?;
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                log::info!("signal {sig}: shutting down");
                if tx.send(()).is_err() {
                    break;
                }
            }
        })?;
    Ok(rx)
}

struct LinkState {
    writer: LinkWriter,
    seq: u32,
    hello: bool,
    peer: String,
}

struct JobMeta {
    source: Source,
    name: String,
    requester: Option<(LinkId, u32)>,
    input_sha256: [u8; 32],
    spool_path: Option<PathBuf>,
    bytes: usize,
}

#[derive(Default)]
struct Counters {
    results: u64,
    errors: u64,
    dropped_frames: u64,
}

/// Device identity and the numbers `Status` reports that do not change.
struct Identity {
    device_id: String,
    bundle_name: String,
    bundle_version: String,
    model_sha256: [u8; 32],
    labels: Vec<String>,
    memory_budget: u64,
}

pub struct Supervisor {
    config: Config,
    identity: Identity,
    started: Instant,
    links: HashMap<LinkId, LinkState>,
    admission: Admission,
    jobs_tx: Option<SyncSender<Job>>,
    jobs: HashMap<u64, JobMeta>,
    next_job: u64,
    /// Image bytes of queued jobs (uploads in progress are counted by `admission`).
    job_bytes: u64,
    spool_backlog: VecDeque<PathBuf>,
    /// Spool files waiting in the backlog or being classified: a second report of the same
    /// path meanwhile is not queued twice. A path leaves the set when its file is moved to
    /// done/ or failed/, so a new file of the same name is classified again.
    spool_active: HashSet<PathBuf>,
    outbox: Outbox,
    outbox_was_full: bool,
    audit: AuditLog,
    engine: Arc<Mutex<EngineState>>,
    counters: Counters,
    camera_tx: Option<Sender<CaptureRequest>>,
    capture_busy: bool,
    shutting_down: bool,
    watchdog: Option<Box<dyn edgedx_board::watchdog::Watchdog>>,
    notify_systemd: bool,
    led: Option<edgedx_board::StatusLed>,
    buzzer: Option<edgedx_board::AlertBuzzer>,
}

/// Runs the daemon until `shutdown` fires. `ready` (tests, demo) is told the socket path
/// once the first worker is serving.
pub fn serve(
    config: Config,
    shutdown: Receiver<()>,
    ready: Option<Sender<()>>,
) -> anyhow::Result<ExitCode> {
    // The watchdog first: one armed by a previous run keeps counting during start-up.
    let watchdog_keeper = match open_watchdog(&config)? {
        Some(dog) => Some(WatchdogKeeper::start(StartupFeed::new(
            dog,
            Arc::new(edgedx_board::SystemClock),
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
    let (events_tx, events_rx) = mpsc::channel::<Event>();
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
        progress: Instant::now(),
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
        fallback_after: config.fallback.after_failures,
        window: Duration::from_secs(config.fallback.window_s),
        cooldown: Duration::from_secs(config.fallback.cooldown_s),
        max_cooldown: Duration::from_secs(config.fallback.cooldown_s.saturating_mul(8)),
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
    if let Some(s) = &config.spool {
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
    let (led, buzzer) = open_gpio(&config, events_tx.clone())?;
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
        links: HashMap::new(),
        admission,
        jobs_tx: Some(jobs_tx),
        jobs: HashMap::new(),
        next_job: 1,
        job_bytes: 0,
        spool_backlog: VecDeque::new(),
        spool_active: HashSet::new(),
        outbox,
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

fn heapless_str<const N: usize>(s: &str) -> heapless::String<N> {
    // Cut at a char boundary so the limit is respected whatever the input.
    let mut out = heapless::String::new();
    for c in s.chars() {
        if out.push(c).is_err() {
            break;
        }
    }
    out
}

impl Supervisor {
    fn run(&mut self, events: Receiver<Event>) {
        let tick = Duration::from_millis(250);
        let mut shutdown_deadline: Option<Instant> = None;
        loop {
            match events.recv_timeout(tick) {
                Ok(event) => self.handle(event),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            self.tick();
            if self.shutting_down {
                let deadline = *shutdown_deadline
                    .get_or_insert_with(|| Instant::now() + Duration::from_secs(20));
                if self.jobs.is_empty() || Instant::now() >= deadline {
                    break;
                }
            }
        }
    }

    fn finish(&mut self) {
        for (id, meta) in self.jobs.drain() {
            // Spool files stay in place and are picked up again at the next start.
            if let Some((link, seq)) = meta.requester {
                log::warn!("job {id} abandoned at shutdown");
                let _ = (link, seq);
            }
        }
        if let Err(e) = self.outbox.flush() {
            log::error!("{e}");
        }
        self.audit.record(
            "stop",
            json!({ "results": self.counters.results, "errors": self.counters.errors }),
        );
        self.audit.sync();
        if let Some(s) = &self.config.socket {
            let _ = std::fs::remove_file(&s.path);
        }
        if let Some(w) = self.watchdog.take() {
            match w.disarm() {
                Ok(()) => log::info!("watchdog disarmed"),
                Err(e) => log::warn!("watchdog: {e}"),
            }
        }
        if self.notify_systemd {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Link(id, e) => self.on_link(id, e),
            Event::Spool(spool::SpoolFile(path)) => {
                if self.spool_active.insert(path.clone()) {
                    self.spool_backlog.push_back(path);
                }
            }
            Event::Dispatch(DispatchEvent::Completed(c)) => self.on_completed(c),
            Event::Dispatch(DispatchEvent::Transition(t)) => self.on_transition(t),
            Event::Captured {
                capture_id,
                requester,
                frame,
            } => self.on_captured(capture_id, requester, frame),
            Event::CaptureButton => self.capture(0, None),
            Event::Shutdown => {
                if !self.shutting_down {
                    self.shutting_down = true;
                    self.jobs_tx = None;
                    log::info!("shutting down: {} job(s) in flight", self.jobs.len());
                }
            }
        }
    }

    /// Periodic work: spool backlog admission, stale uploads, outbox-full reporting, and
    /// the watchdogs, fed only while the inference loop makes progress.
    fn tick(&mut self) {
        while let Some(path) = self.spool_backlog.front().cloned() {
            if self.shutting_down || !self.admit_spool(&path) {
                break;
            }
            self.spool_backlog.pop_front();
        }
        for expired in self.admission.expire(Instant::now()) {
            match expired {
                Expired::Upload {
                    link,
                    seq,
                    upload_id,
                    why,
                } => {
                    log::info!("link {link}: {why}");
                    let _ = upload_id;
                    self.error(Some((link, seq)), ErrorCode::TimedOut, &why);
                }
                Expired::NoHello { link, after } => {
                    let text = format!(
                        "no Hello within {:.1} s of connecting; closing",
                        after.as_secs_f32()
                    );
                    self.close_link(link, ErrorCode::TimedOut, &text);
                }
            }
        }
        let full = self.outbox.is_full();
        if full != self.outbox_was_full {
            self.outbox_was_full = full;
            if full {
                log::error!("outbox full: {} unacknowledged results; new requests are refused until the host acknowledges", self.outbox.unacked_len());
            }
            self.audit.record(
                "outbox_full",
                json!({ "full": full, "unacked": self.outbox.unacked_len() }),
            );
        }
        let (progress, ready, alert) = self
            .engine
            .lock()
            .map(|s| (s.progress.elapsed(), s.ready, s.alert.is_some()))
            .unwrap_or((Duration::MAX, false, true));
        // LED: serving. Buzzer: a person must act (model failing without a fallback, or
        // the outbox full because the host stopped acknowledging).
        if let Some(led) = self.led.as_mut() {
            let _ = led.set(ready && !self.shutting_down);
        }
        if let Some(buzzer) = self.buzzer.as_mut() {
            let _ = buzzer.set(alert || full);
        }
        if progress < self.config.worker.stall_limit() {
            if let Some(w) = self.watchdog.as_mut() {
                if let Err(e) = w.pet() {
                    log::warn!("watchdog: {e}");
                }
            }
            if self.notify_systemd {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
        }
    }

    fn on_link(&mut self, id: LinkId, event: LinkEvent) {
        match event {
            LinkEvent::Up { kind, writer, peer } => {
                log::info!("link {id} up ({kind:?}, {peer})");
                let mut state = LinkState {
                    writer,
                    seq: 0,
                    hello: false,
                    peer,
                };
                let min_rate = match kind {
                    // Half the line rate: 10 bits per byte on the wire.
                    LinkKind::Serial => self.config.serial.as_ref().map(|s| u64::from(s.baud) / 20),
                    LinkKind::Socket => None,
                };
                match self.admission.link_up(id, kind, min_rate, Instant::now()) {
                    Arrival::Accept => {}
                    Arrival::AcceptEvicting { link, idle } => {
                        let text = format!(
                            "closed after {} s without a frame to make room for a new connection ({} at most); send Ping when idle",
                            idle.as_secs(),
                            self.max_clients()
                        );
                        self.close_link(link, ErrorCode::Busy, &text);
                    }
                    Arrival::Refuse => {
                        let text = format!(
                            "the device serves at most {} socket clients at once and none is idle; try again later",
                            self.max_clients()
                        );
                        log::warn!("link {id} ({}) refused: {text}", state.peer);
                        send_on(
                            &mut state,
                            &Message::Error(ErrorMessage::new(ErrorCode::Busy, &text, None)),
                        );
                        state.writer.close_after_queued();
                        return;
                    }
                }
                // The serial line is point to point: its session starts when the device
                // does. The device introduces itself and resends what is unacknowledged,
                // so a host that stayed attached across a restart misses nothing without
                // having to notice the restart (PROTOCOL.md 9).
                let serial = kind == LinkKind::Serial;
                if serial {
                    state.hello = true;
                    let hello = self.hello();
                    send_on(&mut state, &hello);
                }
                self.links.insert(id, state);
                if serial {
                    self.resend_unacked(id);
                }
            }
            LinkEvent::Down => {
                if let Some(l) = self.links.remove(&id) {
                    log::info!("link {id} down ({})", l.peer);
                }
                self.admission.link_down(id);
            }
            LinkEvent::Bad(e) => {
                self.counters.dropped_frames += 1;
                log::debug!("link {id}: dropped frame: {e}");
                let msg = Message::Error(ErrorMessage::new(
                    e.error_code(),
                    &e.to_string(),
                    e.in_reply_to(),
                ));
                self.send(id, &msg);
                // A host speaking another version still learns what this device speaks:
                // Hello is decodable in every version (PROTOCOL.md 8).
                if e.error_code() == ErrorCode::UnsupportedVersion {
                    let hello = self.hello();
                    self.send(id, &hello);
                }
            }
            LinkEvent::Frame(frame) => self.on_frame(id, frame),
        }
    }

    fn on_frame(&mut self, id: LinkId, frame: Frame) {
        let seq = frame.seq;
        self.admission.frame(id, Instant::now());
        match frame.message {
            Message::Hello(h) => {
                self.admission.hello(id);
                if let Some(l) = self.links.get_mut(&id) {
                    l.hello = true;
                    log::info!(
                        "link {id}: host {:?} {:?} protocol {}",
                        h.device_id.as_str(),
                        h.firmware_version.as_str(),
                        h.protocol_version
                    );
                }
                let hello = self.hello();
                self.send(id, &hello);
                self.resend_unacked(id);
            }
            Message::Ping(p) => {
                self.send(id, &Message::Pong(Pong { nonce: p.nonce }));
            }
            Message::GetStatus => {
                let status = self.status();
                self.send(id, &Message::Status(status));
            }
            Message::Ack(Ack { result_id }) => match self.outbox.ack(result_id) {
                Ok(_) => {}
                Err(e) => log::error!("{e}"),
            },
            Message::UploadBegin(b) => self.upload_begin(id, seq, b),
            Message::UploadChunk(c) => self.upload_chunk(id, seq, c),
            Message::UploadEnd(e) => self.upload_end(id, seq, e),
            Message::Capture(c) => self.capture(c.capture_id, Some((id, seq))),
            Message::Pong(_) | Message::Error(_) => {}
            other => {
                let text = format!("{:?} is not a request the device accepts", other.kind());
                self.send(
                    id,
                    &Message::Error(ErrorMessage::new(ErrorCode::Unsupported, &text, Some(seq))),
                );
            }
        }
    }

    /// Sends every unacknowledged result to one link, oldest first.
    fn resend_unacked(&mut self, id: LinkId) {
        let pending: Vec<ClassificationResult> = self.outbox.unacked().cloned().collect();
        for r in pending {
            if self.send(id, &Message::Result(r)) != Sent::Queued {
                break;
            }
        }
    }

    fn hello(&self) -> Message {
        Message::Hello(Hello {
            protocol_version: edgedx_icd::PROTOCOL_VERSION,
            firmware_version: heapless_str(env!("CARGO_PKG_VERSION")),
            device_id: heapless_str(&self.identity.device_id),
            bundle_name: heapless_str(&self.identity.bundle_name),
            bundle_version: heapless_str(&self.identity.bundle_version),
            model_sha256: self.identity.model_sha256,
        })
    }

    fn status(&self) -> Status {
        let e = self.engine.lock().map(|s| s.clone()).ok();
        let supervisor_rss = edgedx_engine::memory::current().map_or(0, |m| m.rss);
        let worker_rss = e.as_ref().map_or(0, |e| e.worker_rss_bytes);
        Status {
            mode: e.as_ref().map_or(Precision::Int8, |e| e.mode),
            mode_reason: e
                .as_ref()
                .map_or(PrecisionReason::Normal, |e| e.mode_reason),
            memory_used_bytes: supervisor_rss + worker_rss,
            memory_budget_bytes: self.identity.memory_budget,
            uptime_s: self.started.elapsed().as_secs(),
            queue_depth: self.jobs.len() as u32,
            results: self.counters.results,
            errors: self.counters.errors,
            fallbacks: e.as_ref().map_or(0, |e| e.fallbacks),
            dropped_frames: self.counters.dropped_frames,
            outbox_unacked: self.outbox.unacked_len() as u32,
            outbox_full: self.outbox.is_full(),
            live: true,
            ready: e.as_ref().is_some_and(|e| e.ready) && !self.shutting_down,
            kernels: heapless_str(e.as_ref().map_or("", |e| e.kernels.as_str())),
            alert: heapless_str(&self.alert_text(e.as_ref())),
            shadow_checked: e.as_ref().map_or(0, |e| e.shadow_checked),
            shadow_disagreements: e.as_ref().map_or(0, |e| e.shadow_disagreements),
        }
    }

    fn alert_text(&self, engine: Option<&EngineState>) -> String {
        let mut parts = Vec::new();
        if let Some(a) = engine.and_then(|e| e.alert.as_ref()) {
            parts.push(a.clone());
        }
        if let Some(a) = engine.and_then(|e| e.shadow_alert.as_ref()) {
            parts.push(a.clone());
        }
        if self.outbox.is_full() {
            parts.push(format!(
                "outbox full ({} unacknowledged)",
                self.outbox.unacked_len()
            ));
        }
        parts.join("; ")
    }

    /// Encodes and queues `msg` on one link. Socket clients that do not keep up are cut.
    fn send(&mut self, id: LinkId, msg: &Message) -> Sent {
        let Some(link) = self.links.get_mut(&id) else {
            return Sent::Closed;
        };
        let sent = send_on(link, msg);
        if sent == Sent::Overflow && link.writer.kind() == LinkKind::Socket {
            log::warn!("link {id} ({}) is not reading; disconnecting it", link.peer);
            self.links.remove(&id);
        }
        sent
    }

    /// Sends to every link that has said Hello, and to `also` (the requester).
    fn broadcast(&mut self, msg: &Message, also: Option<LinkId>) {
        let ids: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(id, l)| l.hello || Some(**id) == also)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.send(id, msg);
        }
    }

    fn error(&mut self, to: Option<(LinkId, u32)>, code: ErrorCode, text: &str) {
        if let Some((id, seq)) = to {
            self.send(
                id,
                &Message::Error(ErrorMessage::new(code, text, Some(seq))),
            );
        }
    }

    fn busy(&mut self, id: LinkId, seq: u32) {
        let msg = Message::Busy(Busy {
            retry_after_ms: 500,
            queue_depth: self.jobs.len() as u32,
            in_reply_to: Some(seq),
        });
        self.send(id, &msg);
    }

    /// Whether the queue and the outbox can take one more request.
    fn has_room(&self) -> bool {
        !self.shutting_down
            && !self.outbox.is_full()
            && self.jobs.len() < self.config.limits.queue_depth
    }

    /// Whether a request of `bytes` may be accepted now.
    fn can_admit(&self, bytes: u64) -> bool {
        self.has_room()
            && self.job_bytes + self.admission.upload_bytes() + bytes
                <= self.config.limits.pending_bytes
    }

    fn max_clients(&self) -> usize {
        self.config.socket.as_ref().map_or(0, |s| s.max_clients)
    }

    /// Tells a link why it is being closed, then closes it once that frame is written.
    fn close_link(&mut self, id: LinkId, code: ErrorCode, text: &str) {
        log::info!("link {id}: {text}");
        self.send(id, &Message::Error(ErrorMessage::new(code, text, None)));
        if let Some(link) = self.links.remove(&id) {
            link.writer.close_after_queued();
        }
        self.admission.link_down(id);
    }

    fn upload_begin(&mut self, id: LinkId, seq: u32, b: edgedx_icd::UploadBegin) {
        let request = BeginRequest {
            link: id,
            seq,
            upload_id: b.upload_id,
            total_len: b.total_len,
            name: b.name.as_str().to_string(),
        };
        let room = self.has_room();
        match self
            .admission
            .begin(request, self.job_bytes, room, Instant::now())
        {
            Ok(()) => {}
            Err(Refusal::TooLarge { len, max }) => {
                let text = format!("upload of {len} bytes is over the {max} byte limit");
                self.error(Some((id, seq)), ErrorCode::TooLarge, &text);
            }
            Err(Refusal::Empty) => {
                self.error(
                    Some((id, seq)),
                    ErrorCode::UploadMismatch,
                    "upload of 0 bytes",
                );
            }
            Err(Refusal::LinkLimit { open, max }) => {
                let text = format!(
                    "this connection already has {open} uploads open, the most one connection may have ({max}); finish one first"
                );
                self.error(Some((id, seq)), ErrorCode::Busy, &text);
            }
            Err(Refusal::Busy) => self.busy(id, seq),
        }
    }

    fn upload_chunk(&mut self, id: LinkId, seq: u32, c: edgedx_icd::UploadChunk) {
        if let Err(problem) =
            self.admission
                .chunk(id, c.upload_id, c.offset, &c.data, Instant::now())
        {
            self.error(
                Some((id, seq)),
                ErrorCode::UploadMismatch,
                &problem.to_string(),
            );
        }
    }

    fn upload_end(&mut self, id: LinkId, seq: u32, e: edgedx_icd::UploadEnd) {
        let Some(u) = self.admission.end(id, e.upload_id) else {
            let text = format!("no upload {} is open on this link", e.upload_id);
            return self.error(Some((id, seq)), ErrorCode::UploadMismatch, &text);
        };
        if u.bytes.len() != u.total_len as usize {
            let text = format!("received {} of {} bytes", u.bytes.len(), u.total_len);
            return self.error(Some((id, seq)), ErrorCode::UploadMismatch, &text);
        }
        let digest: [u8; 32] = Sha256::digest(&u.bytes).into();
        if digest != e.sha256 {
            return self.error(
                Some((id, seq)),
                ErrorCode::ChecksumMismatch,
                "SHA-256 of the received bytes does not match",
            );
        }
        // The worker sniffs the format from the bytes; the begin's hint is advisory.
        let name = if u.name.is_empty() {
            format!("upload-{}", e.upload_id)
        } else {
            u.name
        };
        self.enqueue(
            name,
            u.bytes,
            Source::Upload {
                upload_id: e.upload_id,
            },
            Some((id, seq)),
            digest,
            None,
        );
    }

    fn admit_spool(&mut self, path: &Path) -> bool {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let limit = self.config.limits.max_file_bytes;
        if size > limit {
            self.spool_failed(
                path,
                &name,
                &format!("{size} bytes is over the {limit} byte limit"),
            );
            return true;
        }
        if !self.can_admit(size) {
            return false;
        }
        let limits = Limits {
            max_pixels: self.config.limits.max_pixels,
            max_file_bytes: limit,
        };
        match edgedx_ingest::read_capped(path, &limits) {
            Ok(bytes) => {
                let digest: [u8; 32] = Sha256::digest(&bytes).into();
                let source = Source::Spool {
                    name: heapless_str(&name),
                };
                self.enqueue(name, bytes, source, None, digest, Some(path.to_path_buf()));
            }
            Err(e) => self.spool_failed(path, &name, &e.to_string()),
        }
        true
    }

    fn spool_failed(&mut self, path: &Path, name: &str, reason: &str) {
        self.spool_active.remove(path);
        self.counters.errors += 1;
        log::warn!("spool {name}: {reason}");
        self.audit
            .record("spool_failed", json!({ "file": name, "reason": reason }));
        self.move_to_failed(path, name, reason);
        let text = format!("{name}: {reason}");
        self.broadcast(
            &Message::Error(ErrorMessage::new(ErrorCode::DecodeFailed, &text, None)),
            None,
        );
    }

    /// Moves a spool file to failed/ with NAME.reason.txt beside it.
    fn move_to_failed(&self, path: &Path, name: &str, reason: &str) {
        let failed_dir = self.spool_dir("failed");
        match spool::move_into(path, &failed_dir, &now_ms().to_string()) {
            Ok(target) => {
                let note = PathBuf::from(format!("{}.reason.txt", target.display()));
                let _ = std::fs::write(note, format!("{reason}\n"));
            }
            Err(e) => log::error!("spool {name}: cannot move to {}: {e}", failed_dir.display()),
        }
    }

    fn spool_dir(&self, which: &str) -> PathBuf {
        let Some(s) = &self.config.spool else {
            return PathBuf::from(which);
        };
        let configured = if which == "done" {
            &s.done_dir
        } else {
            &s.failed_dir
        };
        configured.clone().unwrap_or_else(|| s.dir.join(which))
    }

    fn enqueue(
        &mut self,
        name: String,
        bytes: Vec<u8>,
        source: Source,
        requester: Option<(LinkId, u32)>,
        input_sha256: [u8; 32],
        spool_path: Option<PathBuf>,
    ) {
        let Some(jobs_tx) = &self.jobs_tx else {
            if let Some((id, seq)) = requester {
                self.busy(id, seq);
            }
            return;
        };
        let id = self.next_job;
        self.next_job += 1;
        let len = bytes.len();
        match jobs_tx.try_send(Job {
            id,
            name: name.clone(),
            bytes,
        }) {
            Ok(()) => {
                self.job_bytes += len as u64;
                self.jobs.insert(
                    id,
                    JobMeta {
                        source,
                        name,
                        requester,
                        input_sha256,
                        spool_path,
                        bytes: len,
                    },
                );
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                match (requester, spool_path) {
                    (Some((link, seq)), _) => self.busy(link, seq),
                    (None, Some(path)) => self.spool_backlog.push_front(path),
                    (None, None) => log::warn!("{name}: queue full, capture dropped"),
                }
            }
        }
    }

    fn on_completed(&mut self, c: Completed) {
        let Some(meta) = self.jobs.remove(&c.id) else {
            return;
        };
        self.job_bytes = self.job_bytes.saturating_sub(meta.bytes as u64);
        let requester_link = meta.requester.map(|(l, _)| l);
        match c.result {
            Ok(classified) => {
                let (class_index, confidence) = edgedx_engine::top1(&classified.probabilities);
                let mut probabilities = heapless::Vec::new();
                for p in &classified.probabilities {
                    let _ = probabilities.push(*p);
                }
                let label = self
                    .identity
                    .labels
                    .get(class_index)
                    .cloned()
                    .unwrap_or_default();
                let result = ClassificationResult {
                    result_id: 0,
                    source: meta.source.clone(),
                    label: heapless_str(&label),
                    class_index: class_index as u16,
                    confidence,
                    probabilities,
                    precision: classified.precision,
                    precision_reason: classified.reason,
                    model_sha256: classified.model_sha256,
                    input_sha256: meta.input_sha256,
                    latency_us: classified.latency_us,
                    timestamp_ms: now_ms(),
                    bundle_name: heapless_str(&self.identity.bundle_name),
                    bundle_version: heapless_str(&self.identity.bundle_version),
                };
                let stored = match self.outbox.append(result) {
                    Ok(r) => r,
                    Err(e) => {
                        // Without the journal the result cannot be guaranteed: say so
                        // rather than send something that may be lost.
                        log::error!("{e}");
                        self.counters.errors += 1;
                        self.error(
                            meta.requester,
                            ErrorCode::Internal,
                            "result could not be stored on the device",
                        );
                        return;
                    }
                };
                self.counters.results += 1;
                self.audit.record(
                    "result",
                    json!({
                        "id": stored.result_id, "input": meta.name, "label": label,
                        "confidence": confidence, "precision": format!("{:?}", stored.precision),
                        "reason": format!("{:?}", stored.precision_reason),
                        "input_sha256": hex::encode(meta.input_sha256),
                    }),
                );
                if let Some(path) = &meta.spool_path {
                    self.spool_active.remove(path);
                    let done = self.spool_dir("done");
                    if let Err(e) = spool::move_into(path, &done, &stored.result_id.to_string()) {
                        log::error!(
                            "spool {}: cannot move to {}: {e}",
                            meta.name,
                            done.display()
                        );
                    }
                }
                self.broadcast(&Message::Result(stored), requester_link);
            }
            Err(err) => {
                self.counters.errors += 1;
                self.audit.record("request_failed", json!({ "input": meta.name, "code": format!("{:?}", err.code), "reason": err.text }));
                if let Some(path) = &meta.spool_path {
                    self.spool_active.remove(path);
                    self.move_to_failed(path, &meta.name, &format!("{:?}: {}", err.code, err.text));
                }
                let in_reply_to = meta.requester.map(|(_, s)| s);
                let msg = Message::Error(ErrorMessage::new(err.code, &err.text, in_reply_to));
                match meta.requester {
                    Some((link, _)) => {
                        self.send(link, &msg);
                    }
                    None => self.broadcast(&msg, None),
                }
            }
        }
    }

    fn on_transition(&mut self, t: Transition) {
        let (event, details) = match &t {
            Transition::WorkerStarted {
                precision,
                pid,
                load_ms,
                warmup_ms,
                rss_bytes,
            } => {
                log::info!("{precision} worker {pid} ready in {load_ms} ms (warm-up {warmup_ms:.1} ms, RSS {rss_bytes} B)");
                (
                    "worker_started",
                    json!({ "precision": precision, "pid": pid, "load_ms": load_ms, "warmup_ms": warmup_ms, "rss_bytes": rss_bytes }),
                )
            }
            Transition::WorkerFailed { precision, failure } => {
                log::warn!("{precision} worker failed: {failure}");
                (
                    "worker_failed",
                    json!({ "precision": precision, "failure": failure }),
                )
            }
            Transition::FallbackToFp32 { reason } => {
                log::warn!("int8 -> fp32 fallback ({reason:?})");
                ("fallback_fp32", json!({ "reason": format!("{reason:?}") }))
            }
            Transition::FallbackRefused { reason, why } => {
                log::error!("ALERT: int8 failing ({reason:?}) and fp32 may not load: {why}");
                (
                    "fallback_refused",
                    json!({ "reason": format!("{reason:?}"), "why": why }),
                )
            }
            Transition::BackToInt8 => {
                log::info!("fp32 -> int8 after cool-down");
                ("back_to_int8", json!({}))
            }
            Transition::Int8RetryFailed { failure } => {
                ("int8_retry_failed", json!({ "failure": failure }))
            }
            Transition::ShadowDisagreement {
                input,
                int8_class,
                fp32_class,
            } => {
                let label = |i: &usize| self.identity.labels.get(*i).cloned().unwrap_or_default();
                (
                    "shadow_disagreement",
                    json!({ "input": input, "int8": label(int8_class), "fp32": label(fp32_class) }),
                )
            }
            Transition::ShadowAlert { text, raised } => {
                if *raised {
                    log::error!("ALERT: {text}");
                }
                ("shadow_alert", json!({ "text": text, "raised": raised }))
            }
        };
        self.audit.record(event, details);
        // Mode changes are pushed to hosts unasked (PROTOCOL.md, Status).
        if matches!(
            t,
            Transition::FallbackToFp32 { .. }
                | Transition::BackToInt8
                | Transition::FallbackRefused { .. }
                | Transition::ShadowAlert { .. }
        ) {
            let status = Message::Status(self.status());
            self.broadcast(&status, None);
        }
    }

    fn capture(&mut self, capture_id: u32, requester: Option<(LinkId, u32)>) {
        let Some(camera) = &self.camera_tx else {
            return self.error(
                requester,
                ErrorCode::Unsupported,
                "no camera is configured on this device",
            );
        };
        if self.capture_busy {
            return self.error(
                requester,
                ErrorCode::Busy,
                "a capture is already in progress",
            );
        }
        if !self.can_admit(0) {
            if let Some((id, seq)) = requester {
                self.busy(id, seq);
            }
            return;
        }
        if camera.send((capture_id, requester)).is_ok() {
            self.capture_busy = true;
        }
    }

    fn on_captured(
        &mut self,
        capture_id: u32,
        requester: Option<(LinkId, u32)>,
        frame: Result<CapturedFrame, String>,
    ) {
        self.capture_busy = false;
        match frame {
            Ok(f) => {
                let name = format!("camera-{capture_id}");
                log::debug!("captured {}", f.description);
                self.enqueue(
                    name,
                    f.bytes,
                    Source::Camera { capture_id },
                    requester,
                    f.raw_sha256,
                    None,
                );
            }
            Err(e) => {
                self.counters.errors += 1;
                self.audit.record(
                    "camera_failed",
                    json!({ "capture_id": capture_id, "error": e }),
                );
                let msg = Message::Error(ErrorMessage::new(
                    ErrorCode::CameraFailed,
                    &e,
                    requester.map(|(_, s)| s),
                ));
                match requester {
                    Some((link, _)) => {
                        self.send(link, &msg);
                    }
                    None => self.broadcast(&msg, None),
                }
            }
        }
    }
}

fn send_on(link: &mut LinkState, msg: &Message) -> Sent {
    let mut buf = [0u8; MAX_FRAME];
    let seq = link.seq;
    link.seq = link.seq.wrapping_add(1);
    match encode_frame(msg, seq, &mut buf) {
        Ok(frame) => link.writer.send(frame.to_vec()),
        Err(e) => {
            log::error!("cannot encode {:?}: {e}", msg.kind());
            Sent::Queued
        }
    }
}

/// The camera runs in its own thread: a capture can block for a frame interval or more.
fn start_camera(
    c: &config::CameraConfig,
    events: Sender<Event>,
) -> anyhow::Result<Sender<CaptureRequest>> {
    use edgedx_board::camera::{Camera, PixelFormat};
    let format = match c.format.as_str() {
        "mjpeg" => PixelFormat::Mjpeg,
        "grey" => PixelFormat::Grey,
        _ => PixelFormat::Yuyv,
    };
    let mut camera: Box<dyn Camera> = match c.kind {
        CameraKind::Sim => {
            let dir = c.dir.clone().context("camera.dir")?;
            Box::new(
                edgedx_board::camera::SimCamera::from_dir(&dir, format)
                    .with_context(|| format!("simulated camera {}", dir.display()))?,
            )
        }
        CameraKind::V4l2 => {
            let device = c.device.clone().context("camera.device")?;
            open_v4l2(&device, format, c.width, c.height)?
        }
    };
    log::info!("camera: {}", camera.describe());
    let (tx, rx) = mpsc::channel::<CaptureRequest>();
    thread::Builder::new()
        .name("camera".into())
        .spawn(move || {
            for (capture_id, requester) in rx {
                let frame = camera
                    .capture()
                    .map_err(|e| e.to_string())
                    .and_then(|frame| {
                        let raw_sha256: [u8; 32] = Sha256::digest(&frame.data).into();
                        let description = format!(
                            "{:?} {}x{} #{}",
                            frame.format, frame.width, frame.height, frame.sequence
                        );
                        frame
                            .to_image_file()
                            .map(|(_, bytes)| CapturedFrame {
                                bytes,
                                raw_sha256,
                                description,
                            })
                            .map_err(|e| e.to_string())
                    });
                if events
                    .send(Event::Captured {
                        capture_id,
                        requester,
                        frame,
                    })
                    .is_err()
                {
                    break;
                }
            }
        })?;
    Ok(tx)
}

#[cfg(feature = "v4l2")]
fn open_v4l2(
    device: &Path,
    format: edgedx_board::camera::PixelFormat,
    width: u32,
    height: u32,
) -> anyhow::Result<Box<dyn edgedx_board::camera::Camera>> {
    Ok(Box::new(
        edgedx_board::camera::V4l2Camera::open(device, format, width, height)
            .with_context(|| format!("opening camera {}", device.display()))?,
    ))
}

#[cfg(not(feature = "v4l2"))]
fn open_v4l2(
    device: &Path,
    _: edgedx_board::camera::PixelFormat,
    _: u32,
    _: u32,
) -> anyhow::Result<Box<dyn edgedx_board::camera::Camera>> {
    bail!(
        "camera {}: this build has no V4L2 support (feature \"v4l2\")",
        device.display()
    )
}

/// Status LED and alert buzzer (returned, driven by the supervisor's tick) and the capture
/// button (polled in its own thread, which sends [`Event::CaptureButton`] once per press).
#[allow(clippy::type_complexity)]
fn open_gpio(
    config: &Config,
    events: Sender<Event>,
) -> anyhow::Result<(
    Option<edgedx_board::StatusLed>,
    Option<edgedx_board::AlertBuzzer>,
)> {
    use edgedx_board::pins::{open_input, open_output};
    use embedded_hal::digital::PinState;
    let Some(g) = &config.gpio else {
        return Ok((None, None));
    };
    let chip = g.chip.as_path();
    let ctx = |what: &str, line: u32| format!("{what} on {} line {line}", chip.display());
    let led = match g.led {
        Some(line) => Some(
            edgedx_board::StatusLed::new(
                open_output(chip, line, PinState::Low).with_context(|| ctx("status LED", line))?,
            )
            .with_context(|| ctx("status LED", line))?,
        ),
        None => None,
    };
    let buzzer = match g.buzzer {
        Some(line) => Some(
            edgedx_board::AlertBuzzer::new(
                open_output(chip, line, PinState::Low).with_context(|| ctx("buzzer", line))?,
            )
            .with_context(|| ctx("buzzer", line))?,
        ),
        None => None,
    };
    if let Some(line) = g.button {
        let pin = open_input(chip, line).with_context(|| ctx("capture button", line))?;
        let mut button = edgedx_board::CaptureButton::new(
            pin,
            g.button_active_low,
            Duration::from_millis(g.debounce_ms),
        );
        thread::Builder::new()
            .name("button".into())
            .spawn(move || loop {
                match button.poll(Instant::now()) {
                    Ok(true) => {
                        if events.send(Event::CaptureButton).is_err() {
                            return;
                        }
                    }
                    Ok(false) => {}
                    Err(e) => {
                        log::error!("capture button: {e}; button disabled");
                        return;
                    }
                }
                thread::sleep(Duration::from_millis(10));
            })?;
    }
    Ok((led, buzzer))
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

fn open_watchdog(
    config: &Config,
) -> anyhow::Result<Option<Box<dyn edgedx_board::watchdog::Watchdog>>> {
    let Some(w) = &config.watchdog else {
        return Ok(None);
    };
    let dog =
        edgedx_board::watchdog::DevWatchdog::open(&w.device, Duration::from_secs(w.timeout_s))
            .with_context(|| format!("opening watchdog {}", w.device.display()))?;
    Ok(Some(Box::new(dog)))
}
