//! The independent record of what the harness asked and what the device answered, and the
//! invariants checked against it. It knows only the wire protocol, never the daemon's
//! internals.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use edgedx_icd::{ClassificationResult, Precision, PrecisionReason};

/// A fault the harness injected, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    KillWorker,
    StopWorker,
    KillSupervisor,
    FillDisk,
}

#[derive(Debug, Default)]
pub struct Ledger {
    /// Requests sent, by kind ("valid", "corrupt-dicom", ...).
    pub sent: BTreeMap<&'static str, u64>,
    /// Answers received: "result" or the error code's name.
    pub answers: BTreeMap<String, u64>,
    /// Requests cut off by a supervisor kill before any answer (the protocol lets a host
    /// resend them; they are not accepted requests).
    pub interrupted: u64,
    /// Input digest → the one result id it may have.
    result_of: HashMap<[u8; 32], u64>,
    /// Every result id seen on any link.
    pub seen: HashSet<u64>,
    /// The input each result id was given to: an id is never given out twice.
    input_of: HashMap<u64, [u8; 32]>,
    /// Result ids whose Ack the device has processed (a Pong after the Ack came back).
    acked: HashMap<u64, Instant>,
    pub duplicates_by_id: u64,
    pub faults: BTreeMap<Fault, u64>,
    fault_times: Vec<(Instant, Fault)>,
    /// Time from UploadBegin to the Result for well-behaved requests.
    pub waits: Vec<(Instant, Duration)>,
    pub violations: Vec<String>,
    pub fallback_results: u64,
    pub peak_supervisor_anon: u64,
    pub peak_worker_anon: u64,
    pub spool_written: u64,
    pub idle_closed: u64,
    pub idle_not_closed: u64,
    pub slow_timed_out: u64,
}

/// How long after an injected fault a slow or failed well-behaved request is attributed to
/// it: a worker's deadline and restart, or a supervisor's restart and model load.
pub const FAULT_SHADOW: Duration = Duration::from_secs(45);
/// How long after an injected worker fault results may come from the fp32 fallback: the
/// harness's 15 s cool-down, doubled up to 8 times when int8 fails again soon after.
pub const FALLBACK_SHADOW: Duration = Duration::from_secs(150);

impl Ledger {
    pub fn fault(&mut self, f: Fault) {
        *self.faults.entry(f).or_default() += 1;
        self.fault_times.push((Instant::now(), f));
    }

    pub fn answer(&mut self, what: impl Into<String>) {
        *self.answers.entry(what.into()).or_default() += 1;
    }

    pub fn sent(&mut self, kind: &'static str) {
        *self.sent.entry(kind).or_default() += 1;
    }

    fn fault_near(&self, at: Instant, kinds: &[Fault], within: Duration) -> bool {
        self.fault_times.iter().any(|(t, f)| {
            kinds.contains(f)
                && *t <= at + Duration::from_secs(1)
                && at.saturating_duration_since(*t) < within
        })
    }

    /// Whether a request that ran from `from` to `to` overlapped an injected fault's shadow.
    pub fn during_fault(&self, from: Instant, to: Instant) -> bool {
        self.fault_times
            .iter()
            .any(|(t, _)| *t <= to && (from.saturating_duration_since(*t) < FAULT_SHADOW))
    }

    /// A Result frame received on a connection whose Hello was sent at `session_start`.
    pub fn observe(&mut self, r: &ClassificationResult, session_start: Instant) {
        let now = Instant::now();
        if !self.seen.insert(r.result_id) {
            self.duplicates_by_id += 1;
        }
        match self.input_of.get(&r.result_id) {
            Some(input) if *input != r.input_sha256 => self.violations.push(format!(
                "result id {} given to two inputs ({} and {})",
                r.result_id,
                hex8(input),
                hex8(&r.input_sha256)
            )),
            Some(_) => {}
            None => {
                self.input_of.insert(r.result_id, r.input_sha256);
            }
        }
        if let Some(acked_at) = self.acked.get(&r.result_id) {
            if session_start > *acked_at {
                self.violations.push(format!(
                    "result {} was acknowledged, then sent again on a session opened {:?} later",
                    r.result_id,
                    session_start.duration_since(*acked_at)
                ));
            }
        }
        match self.result_of.get(&r.input_sha256) {
            Some(id) if *id != r.result_id => self.violations.push(format!(
                "one request (input {}) got two result ids: {id} and {}",
                hex8(&r.input_sha256),
                r.result_id
            )),
            Some(_) => {}
            None => {
                self.result_of.insert(r.input_sha256, r.result_id);
            }
        }
        if r.precision == Precision::Fp32 {
            if let PrecisionReason::Fallback { reason } = r.precision_reason {
                self.fallback_results += 1;
                if !self.fault_near(
                    now,
                    &[Fault::KillWorker, Fault::StopWorker, Fault::KillSupervisor],
                    FALLBACK_SHADOW,
                ) {
                    self.violations.push(format!(
                        "result {} served by the fp32 fallback ({reason:?}) with no worker fault injected in the {FALLBACK_SHADOW:?} before: bad input changed the precision?",
                        r.result_id
                    ));
                }
            }
        }
    }

    pub fn acked(&mut self, ids: &[u64], at: Instant) {
        for id in ids {
            self.acked.entry(*id).or_insert(at);
        }
    }

    /// The final check: every result seen and not acknowledged is in `replay` (what a
    /// fresh session received after the run), and nothing acknowledged is.
    pub fn settle(&mut self, replay: &HashSet<u64>) -> (u64, u64) {
        let mut lost = 0;
        for id in &self.seen {
            if !self.acked.contains_key(id) && !replay.contains(id) {
                lost += 1;
                self.violations.push(format!(
                    "result {id} was never acknowledged and is not replayed: lost"
                ));
            }
        }
        let resent = replay
            .iter()
            .filter(|id| self.acked.contains_key(id))
            .count() as u64;
        if resent > 0 {
            self.violations.push(format!(
                "{resent} acknowledged result(s) replayed to a fresh session"
            ));
        }
        (lost, resent)
    }
}

pub fn hex8(d: &[u8; 32]) -> String {
    d[..4].iter().map(|b| format!("{b:02x}")).collect()
}
