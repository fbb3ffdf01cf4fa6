//! The supervisor loop: one thread that owns the links, uploads, jobs, outbox, status and
//! watchdogs, and reacts to [`Event`]s. Nothing else mutates this state, so there are no
//! locks around it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgedx_icd::{
    encode_frame, Ack, Busy, ClassificationResult, ErrorCode, ErrorMessage, Frame, Hello, Message,
    Pong, Precision, PrecisionReason, Source, Status, MAX_FRAME,
};
use edgedx_ingest::Limits;
use serde_json::json;

use super::admission::{Admission, Arrival, BeginRequest, Expired, Refusal};
use super::audit::AuditLog;
use super::config::Config;
use super::dispatch::{Completed, DispatchEvent, EngineState, Job, Transition};
use super::link::{LinkEvent, LinkId, LinkKind, LinkWriter, Sent, LINK_QUEUE_FRAMES};
use super::outbox::{Outbox, SyncTicket, Synced};
use super::{now_ms, spool, CaptureRequest, CapturedFrame, Event};

pub(super) struct LinkState {
    pub(super) writer: LinkWriter,
    pub(super) seq: u32,
    pub(super) hello: bool,
    pub(super) peer: String,
    /// Unacknowledged results still to be resent on this link.
    pub(super) replay: Option<Replay>,
}

/// A resend of the unacknowledged results to one link, read from the journal a few at a
/// time as the link's queue drains: however many results a host missed, the link's queue
/// never overflows (which would cut a socket client off or drop frames on serial) and the
/// supervisor never holds them all.
#[derive(Debug, Clone, Copy)]
pub(super) struct Replay {
    /// The next result id to look at.
    next: u64,
    /// Results from this id on are newer than the replay and were sent live.
    end: u64,
}

/// A replay keeps a link's queue at most this full, leaving the rest for live frames.
const REPLAY_QUEUE_FRAMES: usize = LINK_QUEUE_FRAMES / 2;
/// How often a replay tops up its link's queue when no event wakes the supervisor.
const REPLAY_POLL: Duration = Duration::from_millis(10);

pub(super) struct JobMeta {
    pub(super) source: Source,
    pub(super) name: String,
    pub(super) requester: Option<(LinkId, u32)>,
    pub(super) input_sha256: [u8; 32],
    pub(super) spool_path: Option<PathBuf>,
    pub(super) bytes: usize,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) results: u64,
    pub(super) errors: u64,
    pub(super) dropped_frames: u64,
}

/// Device identity and the numbers `Status` reports that do not change.
pub(super) struct Identity {
    pub(super) device_id: String,
    pub(super) bundle_name: String,
    pub(super) bundle_version: String,
    pub(super) model_sha256: [u8; 32],
    pub(super) labels: Vec<String>,
    pub(super) memory_budget: u64,
}

pub struct Supervisor {
    pub(super) config: Config,
    pub(super) identity: Identity,
    pub(super) started: Instant,
    /// Upload and Hello timeouts, the inference stall limit and the shutdown grace.
    pub(super) clock: Arc<dyn edgedx_board::Clock>,
    pub(super) links: HashMap<LinkId, LinkState>,
    pub(super) admission: Admission,
    pub(super) jobs_tx: Option<SyncSender<Job>>,
    pub(super) jobs: HashMap<u64, JobMeta>,
    pub(super) next_job: u64,
    /// Image bytes of queued jobs (uploads in progress are counted by `admission`).
    pub(super) job_bytes: u64,
    pub(super) spool_backlog: VecDeque<PathBuf>,
    /// Spool files waiting in the backlog or being classified: a second report of the same
    /// path meanwhile is not queued twice. A path leaves the set when its file is moved to
    /// done/ or failed/, so a new file of the same name is classified again.
    pub(super) spool_active: HashSet<PathBuf>,
    /// Reads and hashes admitted spool files off this loop.
    pub(super) spool_reader: Option<Sender<spool::ReadRequest>>,
    /// Bytes set aside for spool files being read.
    pub(super) spool_reading: u64,
    pub(super) outbox: Outbox,
    /// Syncs what the outbox wrote, off this loop.
    pub(super) syncer: Sender<SyncTicket>,
    /// Results written to the outbox and waiting for their sync, oldest first: sent, and
    /// their spool files moved, once [`Outbox::durable_next`] passes them.
    pub(super) unsynced: VecDeque<(ClassificationResult, JobMeta)>,
    pub(super) outbox_was_full: bool,
    pub(super) audit: AuditLog,
    pub(super) engine: Arc<Mutex<EngineState>>,
    pub(super) counters: Counters,
    pub(super) camera_tx: Option<Sender<CaptureRequest>>,
    pub(super) capture_busy: bool,
    pub(super) shutting_down: bool,
    pub(super) watchdog: Option<Box<dyn edgedx_board::watchdog::Watchdog>>,
    pub(super) notify_systemd: bool,
    pub(super) led: Option<edgedx_board::StatusLed>,
    pub(super) buzzer: Option<edgedx_board::AlertBuzzer>,
}

/// A spool file's name as results and messages carry it.
fn spool_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub(super) fn heapless_str<const N: usize>(s: &str) -> heapless::String<N> {
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
    pub(super) fn run(&mut self, events: Receiver<Event>) {
        let tick = Duration::from_millis(250);
        let mut shutdown_deadline: Option<Instant> = None;
        let mut last_tick = Instant::now();
        loop {
            let replaying = self.links.values().any(|l| l.replay.is_some());
            let wait = if replaying { REPLAY_POLL } else { tick };
            match events.recv_timeout(wait) {
                Ok(event) => self.handle(event),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            self.pump_replays();
            // After every event, as before, but not on every replay poll: the tick pets
            // the watchdogs and drives the LED.
            if !replaying || last_tick.elapsed() >= tick {
                self.tick();
                last_tick = Instant::now();
            }
            if self.shutting_down {
                let now = self.clock.now();
                let deadline =
                    *shutdown_deadline.get_or_insert_with(|| now + Duration::from_secs(20));
                if self.jobs.is_empty() && self.unsynced.is_empty() || now >= deadline {
                    break;
                }
            }
        }
    }

    pub(super) fn finish(&mut self) {
        for (id, meta) in self.jobs.drain() {
            // Spool files stay in place and are picked up again at the next start.
            if let Some((link, seq)) = meta.requester {
                log::warn!("job {id} abandoned at shutdown");
                let _ = (link, seq);
            }
        }
        // Results still waiting for the syncer: sync here, and send them to whoever is
        // still connected (the journal replays them at the next start otherwise).
        match self.outbox.flush() {
            Ok(()) => self.deliver_synced(),
            Err(e) => log::error!("{e}"),
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
            Event::SpoolRead(read) => self.on_spool_read(read),
            Event::Dispatch(DispatchEvent::Completed(c)) => self.on_completed(c),
            Event::Synced(synced) => self.on_synced(synced),
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
        for expired in self.admission.expire(self.clock.now()) {
            match expired {
                // `why` names the upload; the Error answers its UploadBegin.
                Expired::Upload { link, seq, why, .. } => {
                    log::info!("link {link}: {why}");
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
            .map(|s| {
                let since = self.clock.now().saturating_duration_since(s.progress);
                (since, s.ready, s.alert.is_some())
            })
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
                    replay: None,
                };
                let min_rate = match kind {
                    // Half the line rate: 10 bits per byte on the wire.
                    LinkKind::Serial => self.config.serial.as_ref().map(|s| u64::from(s.baud) / 20),
                    LinkKind::Socket => None,
                };
                match self.admission.link_up(id, kind, min_rate, self.clock.now()) {
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
        self.admission.frame(id, self.clock.now());
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

    /// Starts sending every unacknowledged result to one link, oldest first (a replay
    /// already under way starts again from the oldest).
    fn resend_unacked(&mut self, id: LinkId) {
        // Results not yet synced are sent to every link when they are.
        let end = self.outbox.durable_next();
        if let Some(link) = self.links.get_mut(&id) {
            link.replay = Some(Replay { next: 0, end });
        }
        self.pump_replays();
    }

    /// Tops up the queue of every link with a replay under way from the journal.
    fn pump_replays(&mut self) {
        let mut cut = Vec::new();
        for (&id, link) in self.links.iter_mut() {
            while let Some(replay) = link.replay.as_mut() {
                if link.writer.backlog() >= REPLAY_QUEUE_FRAMES {
                    break;
                }
                let Some(result_id) = self.outbox.next_unacked(replay.next, replay.end) else {
                    link.replay = None;
                    break;
                };
                replay.next = result_id + 1;
                let result = match self.outbox.read(result_id) {
                    Ok(Some(r)) => r,
                    Ok(None) => continue,
                    Err(e) => {
                        log::error!("{e}; not resent");
                        continue;
                    }
                };
                match send_on(link, &Message::Result(result)) {
                    Sent::Queued => {}
                    Sent::Overflow if link.writer.kind() == LinkKind::Socket => {
                        cut.push(id);
                        break;
                    }
                    // Serial: that frame was dropped; the host gets it at its next Hello.
                    Sent::Overflow => {}
                    Sent::Closed => {
                        link.replay = None;
                    }
                }
            }
        }
        for id in cut {
            if let Some(l) = self.links.remove(&id) {
                log::warn!("link {id} ({}) is not reading; disconnecting it", l.peer);
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

    /// Whether the queue and the outbox can take one more request. Results waiting for
    /// their sync count against the queue, so a disk that stops syncing holds at most
    /// `queue_depth` of them in memory.
    fn has_room(&self) -> bool {
        !self.shutting_down
            && !self.outbox.is_full()
            && self.jobs.len() + self.unsynced.len() < self.config.limits.queue_depth
    }

    /// Whether a request of `bytes` may be accepted now.
    fn can_admit(&self, bytes: u64) -> bool {
        self.has_room()
            && self.job_bytes + self.spool_reading + self.admission.upload_bytes() + bytes
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
            .begin(request, self.job_bytes, room, self.clock.now())
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
                .chunk(id, c.upload_id, c.offset, &c.data, self.clock.now())
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
        let digest = u.sha256();
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
        let name = spool_name(path);
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
        let request = spool::ReadRequest {
            path: path.to_path_buf(),
            reserved: size,
            limits,
        };
        match &self.spool_reader {
            Some(reader) if reader.send(request).is_ok() => self.spool_reading += size,
            _ => self.spool_failed(path, &name, "the spool reader has stopped"),
        }
        true
    }

    /// A spool file came back from the reader: queued for classification, or failed.
    fn on_spool_read(&mut self, r: spool::SpoolRead) {
        self.spool_reading = self.spool_reading.saturating_sub(r.reserved);
        let name = spool_name(&r.path);
        if self.shutting_down {
            // Left in the spool: the next start classifies it.
            self.spool_active.remove(&r.path);
            return;
        }
        match r.read {
            Ok((bytes, digest)) => {
                let source = Source::Spool {
                    name: heapless_str(&name),
                };
                self.enqueue(name, bytes, source, None, digest, Some(r.path));
            }
            Err(e) => self.spool_failed(&r.path, &name, &e),
        }
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
            bytes: Arc::new(bytes),
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

    /// A result that could not be journaled (or whose sync failed): without the journal it
    /// cannot be guaranteed, so its requester is told rather than sent something that may
    /// be lost. A spool file stays where it is.
    fn not_stored(&mut self, meta: &JobMeta) {
        self.counters.errors += 1;
        self.error(
            meta.requester,
            ErrorCode::Internal,
            "result could not be stored on the device",
        );
    }

    fn on_synced(&mut self, synced: Synced) {
        match synced.result {
            Ok(()) => {
                self.outbox.durable(synced.through);
                self.deliver_synced();
            }
            Err(e) => {
                log::error!("{e}");
                let lost = self.outbox.sync_failed();
                self.audit
                    .record("outbox_sync_failed", json!({ "error": e, "results": lost }));
                // Every unsynced result is among the lost (they are the journal's tail).
                for (_, meta) in std::mem::take(&mut self.unsynced) {
                    self.not_stored(&meta);
                }
            }
        }
    }

    /// Sends the results the journal now holds on disk, and files their spool inputs.
    fn deliver_synced(&mut self) {
        let durable = self.outbox.durable_next();
        while self
            .unsynced
            .front()
            .is_some_and(|(r, _)| r.result_id < durable)
        {
            let Some((stored, meta)) = self.unsynced.pop_front() else {
                break;
            };
            self.counters.results += 1;
            self.audit.record(
                "result",
                json!({
                    "id": stored.result_id, "input": meta.name, "label": stored.label.as_str(),
                    "confidence": stored.confidence, "precision": format!("{:?}", stored.precision),
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
            let requester_link = meta.requester.map(|(l, _)| l);
            self.broadcast(&Message::Result(stored), requester_link);
        }
    }

    fn on_completed(&mut self, c: Completed) {
        let Some(meta) = self.jobs.remove(&c.id) else {
            return;
        };
        self.job_bytes = self.job_bytes.saturating_sub(meta.bytes as u64);
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
                match self.outbox.append(result) {
                    Ok((written, ticket)) => {
                        // The syncer outlives this loop; a send cannot fail before it ends.
                        let _ = self.syncer.send(ticket);
                        self.unsynced.push_back((written, meta));
                    }
                    Err(e) => {
                        log::error!("{e}");
                        self.not_stored(&meta);
                    }
                }
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
            Transition::FallbackToFp32 { reason, cooldown } => {
                let cooldown_s = cooldown.as_secs();
                log::warn!("int8 -> fp32 fallback ({reason:?}); int8 again in {cooldown_s} s");
                (
                    "fallback_fp32",
                    json!({ "reason": format!("{reason:?}"), "cooldown_s": cooldown_s }),
                )
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

pub(super) fn send_on(link: &mut LinkState, msg: &Message) -> Sent {
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
