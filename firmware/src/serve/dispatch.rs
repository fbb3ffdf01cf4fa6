//! The inference dispatcher: one thread that owns the worker processes, runs queued jobs
//! one at a time, enforces the per-request deadline, validates every answer, and decides
//! between int8, a retry on a fresh worker, the fp32 fallback, or an explicit error.
//!
//! It never returns a silent wrong answer: a job ends either with probabilities that passed
//! validation, labelled with the model that produced them and why that model, or with an
//! error code the requester sees.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgedx_board::Clock;
use edgedx_icd::{ErrorCode, FallbackReason, Precision, PrecisionReason};

use super::fallback::{Fallback, FallbackRules};
use super::ipc::Outcome;
use super::worker_handle::{JobFailure, Phase, Worker, WorkerFailure, WorkerSpec};
use crate::PrecisionArg;

/// One image to classify.
#[derive(Debug)]
pub struct Job {
    pub id: u64,
    pub name: String,
    /// The image, shared rather than copied by retries and the shadow run.
    pub bytes: Arc<Vec<u8>>,
}

/// A validated classification.
#[derive(Debug, Clone)]
pub struct Classified {
    pub probabilities: Vec<f32>,
    pub latency_us: u64,
    pub precision: Precision,
    pub reason: PrecisionReason,
    pub model_sha256: [u8; 32],
}

#[derive(Debug, Clone)]
pub struct JobError {
    pub code: ErrorCode,
    pub text: String,
}

#[derive(Debug)]
pub struct Completed {
    pub id: u64,
    pub result: Result<Classified, JobError>,
}

/// Something the audit log must record.
#[derive(Debug, Clone)]
pub enum Transition {
    WorkerStarted {
        precision: &'static str,
        pid: u32,
        load_ms: u64,
        warmup_ms: f64,
        rss_bytes: u64,
    },
    WorkerFailed {
        precision: &'static str,
        failure: String,
    },
    FallbackToFp32 {
        reason: FallbackReason,
        /// How long fp32 serves before int8 is tried again.
        cooldown: Duration,
    },
    FallbackRefused {
        reason: FallbackReason,
        why: String,
    },
    BackToInt8,
    Int8RetryFailed {
        failure: String,
    },
    ShadowDisagreement {
        input: String,
        int8_class: usize,
        fp32_class: usize,
    },
    ShadowAlert {
        text: String,
        raised: bool,
    },
}

/// What the dispatcher reports to the supervisor.
#[derive(Debug)]
pub enum DispatchEvent {
    Completed(Completed),
    Transition(Transition),
}

/// Live state read by the supervisor for `Status`.
#[derive(Debug, Clone)]
pub struct EngineState {
    pub ready: bool,
    pub mode: Precision,
    pub mode_reason: PrecisionReason,
    pub kernels: String,
    pub worker_rss_bytes: u64,
    pub fallbacks: u64,
    pub worker_restarts: u64,
    /// Last time the inference loop made progress (finished a job or confirmed an idle,
    /// healthy worker): the hardware and systemd watchdogs are fed from this.
    pub progress: Instant,
    /// Set when fp32 was needed and memory did not allow it.
    pub alert: Option<String>,
    /// Shadow validation: inputs run on both models in the rolling window, and how many
    /// of them the two models classified differently.
    pub shadow_checked: u32,
    pub shadow_disagreements: u32,
    /// Set while the rolling disagreement rate is above the threshold.
    pub shadow_alert: Option<String>,
}

/// Decides whether an fp32 worker may be started now.
pub trait MemoryGate: Send {
    /// `Err(why)` when loading fp32 would break the budget or the headroom.
    fn fp32_allowed(&self) -> Result<(), String>;
    /// `Err(why)` when an fp32 worker may not be resident beside a worker already using
    /// `resident` bytes (shadow validation).
    fn fp32_alongside_allowed(&self, resident: u64) -> Result<(), String>;
}

/// Shadow validation settings: every `every`-th int8 result is also computed by fp32.
#[derive(Debug, Clone)]
pub struct ShadowPolicy {
    pub every: u64,
    pub window: usize,
    pub min_samples: usize,
    pub threshold: f64,
}

/// The rolling int8-vs-fp32 disagreement record.
#[derive(Debug, Default)]
pub struct ShadowWindow {
    outcomes: VecDeque<bool>,
}

impl ShadowWindow {
    /// Adds one comparison; returns (checked, disagreements) in the window.
    pub fn push(&mut self, disagree: bool, window: usize) -> (usize, usize) {
        self.outcomes.push_back(disagree);
        while self.outcomes.len() > window {
            self.outcomes.pop_front();
        }
        (
            self.outcomes.len(),
            self.outcomes.iter().filter(|d| **d).count(),
        )
    }
}

/// The alert text when the rolling rate is above the threshold with enough samples.
pub fn shadow_alert(checked: usize, disagreements: usize, p: &ShadowPolicy) -> Option<String> {
    if checked < p.min_samples || checked == 0 {
        return None;
    }
    let rate = disagreements as f64 / checked as f64;
    (rate > p.threshold).then(|| {
        format!(
            "shadow validation: int8 and fp32 disagree on {disagreements} of the last {checked} inputs ({:.1}% > {:.1}%)",
            rate * 100.0,
            p.threshold * 100.0
        )
    })
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub primary: PrecisionArg,
    /// Why the primary model serves: Normal, or fp32 because int8 is unapproved.
    pub primary_reason: PrecisionReason,
    pub retries: u32,
    pub deadline_factor: f64,
    pub deadline_floor: Duration,
    /// How long decoding and preprocessing one input may take.
    pub decode_deadline: Duration,
    /// When int8 failures switch serving to fp32, and for how long.
    pub fallback: FallbackRules,
    pub classes: usize,
}

impl Policy {
    /// The deadline of one request: the warm-up latency times the factor, at least the floor.
    pub fn deadline(&self, warmup: Duration) -> Duration {
        self.deadline_floor
            .max(warmup.mul_f64(self.deadline_factor))
    }
}

pub struct Dispatcher {
    int8: WorkerSpec,
    fp32: WorkerSpec,
    policy: Policy,
    gate: Box<dyn MemoryGate>,
    state: Arc<Mutex<EngineState>>,
    events: Sender<DispatchEvent>,
    worker: Option<Worker>,
    fallback: Fallback,
    shadow: Option<ShadowPolicy>,
    shadow_worker: Option<Worker>,
    shadow_window: ShadowWindow,
    served: u64,
    /// The fallback's failure window and cool-down, and `EngineState::progress`.
    clock: Arc<dyn Clock>,
}

impl Dispatcher {
    pub fn new(
        int8: WorkerSpec,
        fp32: WorkerSpec,
        policy: Policy,
        gate: Box<dyn MemoryGate>,
        state: Arc<Mutex<EngineState>>,
        events: Sender<DispatchEvent>,
        clock: Arc<dyn Clock>,
    ) -> Dispatcher {
        let fallback = Fallback::new(policy.fallback);
        Dispatcher {
            int8,
            fp32,
            policy,
            gate,
            state,
            events,
            worker: None,
            fallback,
            shadow: None,
            shadow_worker: None,
            shadow_window: ShadowWindow::default(),
            served: 0,
            clock,
        }
    }

    /// Turns shadow validation on.
    pub fn with_shadow(mut self, shadow: Option<ShadowPolicy>) -> Self {
        self.shadow = shadow;
        self
    }

    /// Starts the first worker. `Err` when neither model can serve.
    pub fn start(&mut self) -> Result<(), String> {
        let primary = self.policy.primary;
        match self.spawn(primary) {
            Ok(()) => Ok(()),
            Err(failure) if primary == PrecisionArg::Int8 => {
                let reason = reason_of(&failure);
                self.fallback.int8_failed(self.clock.now());
                if let Err(e) = self.enter_fallback(reason) {
                    return Err(format!("int8 model: {failure}; fp32 fallback: {e}"));
                }
                Ok(())
            }
            Err(failure) => Err(failure.to_string()),
        }
    }

    /// Runs until the job channel closes, then stops the worker.
    pub fn run(mut self, jobs: Receiver<Job>) {
        loop {
            match jobs.recv_timeout(Duration::from_millis(250)) {
                Ok(job) => {
                    let completed = self.handle(job);
                    self.progress();
                    // Under steady load the loop is never idle: the cool-down must end
                    // between jobs too, or a busy device would stay on fp32 for good.
                    self.end_cooldown_if_due();
                    if self
                        .events
                        .send(DispatchEvent::Completed(completed))
                        .is_err()
                    {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.idle(),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        if let Some(w) = self.worker.take() {
            w.stop();
        }
        if let Some(w) = self.shadow_worker.take() {
            w.stop();
        }
    }

    fn progress(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.progress = self.clock.now();
        }
    }

    /// Between jobs: replace a worker that died while idle, return to int8 after the
    /// cool-down, and report progress while healthy.
    fn idle(&mut self) {
        if let Some(w) = self.worker.as_mut() {
            if let Some(failure) = w.has_exited() {
                let precision = w.precision();
                self.worker = None;
                self.transition(Transition::WorkerFailed {
                    precision: precision.variant(),
                    failure: failure.to_string(),
                });
                // Counted, but no switch: nothing was asked of it. The next job runs
                // on a fresh worker of the same precision.
                if precision == PrecisionArg::Int8 {
                    self.fallback.int8_failed(self.clock.now());
                }
            }
        }
        if self.worker.is_none() {
            let want = if self.fallback.active().is_some() {
                PrecisionArg::Fp32
            } else {
                self.policy.primary
            };
            if self.spawn(want).is_err() {
                return;
            }
        }
        self.end_cooldown_if_due();
        // An alert stays up until int8 has gone a whole window without failing.
        if self.fallback.quiet(self.clock.now()) {
            if let Ok(mut s) = self.state.lock() {
                s.alert = None;
            }
        }
        self.progress();
    }

    /// Tries int8 again once the fallback's cool-down has passed.
    fn end_cooldown_if_due(&mut self) {
        if self.fallback.cooldown_due(self.clock.now()) {
            self.try_return_to_int8();
        }
    }

    fn handle(&mut self, job: Job) -> Completed {
        let id = job.id;
        let shadow_input = self
            .shadow
            .as_ref()
            .map(|_| (job.name.clone(), Arc::clone(&job.bytes)));
        let result = self.classify(job);
        if let (Ok(primary), Some((name, bytes))) = (&result, shadow_input) {
            if primary.precision == Precision::Int8 {
                self.served += 1;
                self.maybe_shadow(id, &name, bytes, &primary.probabilities);
            }
        }
        Completed { id, result }
    }

    /// Runs a sampled input on an fp32 worker beside the int8 one, when memory allows both
    /// to be resident, and updates the rolling disagreement rate.
    fn maybe_shadow(&mut self, id: u64, name: &str, bytes: Arc<Vec<u8>>, int8: &[f32]) {
        let Some(policy) = self.shadow.clone() else {
            return;
        };
        if !self.served.is_multiple_of(policy.every) {
            return;
        }
        if self.shadow_worker.is_none() {
            let resident = self.worker.as_ref().map_or(0, |w| w.ready().rss_bytes);
            if let Err(why) = self.gate.fp32_alongside_allowed(resident) {
                log::debug!("shadow validation skipped: {why}");
                return;
            }
            match Worker::start(&self.fp32) {
                Ok(w) => {
                    let r = w.ready();
                    self.transition(Transition::WorkerStarted {
                        precision: "fp32-shadow",
                        pid: w.pid(),
                        load_ms: r.load_us / 1000,
                        warmup_ms: r.warmup_us as f64 / 1e3,
                        rss_bytes: r.rss_bytes,
                    });
                    self.shadow_worker = Some(w);
                }
                Err(e) => {
                    log::warn!("shadow fp32 worker: {e}");
                    return;
                }
            }
        }
        let Some(worker) = self.shadow_worker.as_mut() else {
            return;
        };
        let deadline = self
            .policy
            .deadline(Duration::from_micros(worker.ready().warmup_us));
        let fp32 = match worker.classify(id, name, bytes, self.policy.decode_deadline, deadline) {
            Ok(Outcome::Scores { probabilities, .. })
                if validate(&probabilities, self.policy.classes).is_ok() =>
            {
                probabilities
            }
            other => {
                log::warn!("shadow fp32 run failed: {other:?}");
                self.shadow_worker = None;
                return;
            }
        };
        let disagree = argmax(int8) != argmax(&fp32);
        let (checked, disagreements) = self.shadow_window.push(disagree, policy.window);
        let alert = shadow_alert(checked, disagreements, &policy);
        let mut changed = None;
        if let Ok(mut s) = self.state.lock() {
            s.shadow_checked = checked as u32;
            s.shadow_disagreements = disagreements as u32;
            if alert.is_some() != s.shadow_alert.is_some() {
                changed = Some(
                    alert
                        .clone()
                        .unwrap_or_else(|| "shadow disagreement back under the threshold".into()),
                );
            }
            s.shadow_alert = alert.clone();
        }
        if let Some(text) = changed {
            self.transition(Transition::ShadowAlert {
                text,
                raised: alert.is_some(),
            });
        }
        if disagree {
            self.transition(Transition::ShadowDisagreement {
                input: name.to_string(),
                int8_class: argmax(int8),
                fp32_class: argmax(&fp32),
            });
        }
    }

    fn classify(&mut self, job: Job) -> Result<Classified, JobError> {
        let mut attempts = 0u32;
        let mut last_failure: Option<WorkerFailure> = None;
        loop {
            let precision = if self.fallback.active().is_some() {
                PrecisionArg::Fp32
            } else {
                self.policy.primary
            };
            if self.worker.as_ref().map(|w| w.precision()) != Some(precision) {
                if let Some(w) = self.worker.take() {
                    w.stop();
                }
                if let Err(failure) = self.spawn(precision) {
                    if precision == PrecisionArg::Int8 {
                        last_failure = Some(failure.clone());
                        if self.int8_failed(&failure) {
                            continue;
                        }
                    }
                    return Err(self.give_up(&failure, last_failure.as_ref()));
                }
            }
            let worker = self.worker.as_mut().expect("spawned above");
            let deadline = self
                .policy
                .deadline(Duration::from_micros(worker.ready().warmup_us));
            let outcome = worker.classify(
                job.id,
                &job.name,
                Arc::clone(&job.bytes),
                self.policy.decode_deadline,
                deadline,
            );
            let failure = match outcome {
                Ok(Outcome::Scores {
                    probabilities,
                    latency_us,
                    rss_bytes,
                    ..
                }) => match validate(&probabilities, self.policy.classes) {
                    Ok(()) => {
                        let ready = worker.ready();
                        let Some(model_sha256) = parse_sha(&ready.model_sha256) else {
                            let failure = WorkerFailure::Broken(format!(
                                "the worker names its model by {:?}, not a sha256",
                                ready.model_sha256
                            ));
                            return Err(self.give_up(&failure, last_failure.as_ref()));
                        };
                        if let Ok(mut s) = self.state.lock() {
                            s.worker_rss_bytes = rss_bytes;
                        }
                        let reason = match (self.fallback.active(), precision) {
                            (Some(reason), PrecisionArg::Fp32)
                                if self.policy.primary == PrecisionArg::Int8 =>
                            {
                                PrecisionReason::Fallback { reason }
                            }
                            _ => self.policy.primary_reason,
                        };
                        return Ok(Classified {
                            probabilities,
                            latency_us,
                            precision: match precision {
                                PrecisionArg::Int8 => Precision::Int8,
                                PrecisionArg::Fp32 => Precision::Fp32,
                            },
                            reason,
                            model_sha256,
                        });
                    }
                    Err(why) => {
                        worker.kill();
                        WorkerFailure::Broken(format!("invalid output: {why}"))
                    }
                },
                Ok(Outcome::InputRejected { kind, message }) => {
                    let code = match kind.as_str() {
                        "too_large" => ErrorCode::TooLarge,
                        "unsupported" => ErrorCode::Unsupported,
                        // A third-party decoder panicked past every check made before it:
                        // a fault inside the device, not a verdict on the file.
                        "decoder_bug" => ErrorCode::Internal,
                        _ => ErrorCode::DecodeFailed,
                    };
                    return Err(JobError {
                        code,
                        text: message,
                    });
                }
                Ok(Outcome::ModelError { message }) => {
                    worker.kill();
                    WorkerFailure::Broken(format!("invalid output: {message}"))
                }
                Err(JobFailure {
                    phase: Phase::Decode,
                    failure,
                }) => return Err(self.input_fault(precision, &job.name, failure)),
                Err(JobFailure { failure, .. }) => failure,
            };
            self.worker = None;
            if let Ok(mut s) = self.state.lock() {
                s.worker_restarts += 1;
            }
            self.transition(Transition::WorkerFailed {
                precision: precision.variant(),
                failure: failure.to_string(),
            });
            attempts += 1;
            if precision == PrecisionArg::Int8 && self.int8_failed(&failure) {
                last_failure = Some(failure);
                continue;
            }
            if attempts > self.policy.retries {
                return Err(self.give_up(&failure, last_failure.as_ref()));
            }
            last_failure = Some(failure);
        }
    }

    /// The worker died or hung while decoding an input: the input's fault. The worker is
    /// replaced (at the next job or idle tick), but nothing counts against int8, nothing
    /// is retried (the same bytes would fail again) and the serving precision stays.
    fn input_fault(
        &mut self,
        precision: PrecisionArg,
        name: &str,
        failure: WorkerFailure,
    ) -> JobError {
        self.worker = None;
        if let Ok(mut s) = self.state.lock() {
            s.worker_restarts += 1;
        }
        self.transition(Transition::WorkerFailed {
            precision: precision.variant(),
            failure: format!("while decoding {name}: {failure}"),
        });
        input_fault_error(name, &failure, self.policy.decode_deadline)
    }

    fn give_up(&mut self, failure: &WorkerFailure, earlier: Option<&WorkerFailure>) -> JobError {
        let text = match earlier {
            Some(e) if e != failure => format!("inference failed: {failure} (before: {e})"),
            _ => format!("inference failed: {failure}"),
        };
        JobError {
            code: ErrorCode::ModelFailed,
            text,
        }
    }

    /// An int8 failure: switches to fp32 if the rules and memory allow. Returns whether
    /// it did (a job should be re-run, now on fp32).
    fn int8_failed(&mut self, failure: &WorkerFailure) -> bool {
        let switch = self.fallback.int8_failed(self.clock.now());
        switch
            && self.policy.primary == PrecisionArg::Int8
            && self.enter_fallback(reason_of(failure)).is_ok()
    }

    fn enter_fallback(&mut self, reason: FallbackReason) -> Result<(), String> {
        if let Err(why) = self.gate.fp32_allowed() {
            let alert = format!("int8 failing ({reason:?}) and fp32 not allowed: {why}");
            if let Ok(mut s) = self.state.lock() {
                s.alert = Some(alert);
            }
            self.transition(Transition::FallbackRefused {
                reason,
                why: why.clone(),
            });
            return Err(why);
        }
        if let Some(w) = self.worker.take() {
            w.stop();
        }
        // The shadow fp32 worker is not kept beside the serving fp32 one.
        if let Some(w) = self.shadow_worker.take() {
            w.stop();
        }
        self.fallback.entered(reason, self.clock.now());
        if let Err(failure) = self.spawn(PrecisionArg::Fp32) {
            self.fallback.abandoned();
            return Err(failure.to_string());
        }
        // The cool-down is time spent serving fp32: it starts once fp32 is loaded.
        self.fallback.entered(reason, self.clock.now());
        if let Ok(mut s) = self.state.lock() {
            s.fallbacks += 1;
            s.mode = Precision::Fp32;
            s.mode_reason = PrecisionReason::Fallback { reason };
            s.alert = None;
        }
        self.transition(Transition::FallbackToFp32 {
            reason,
            cooldown: self.fallback.cooldown(),
        });
        Ok(())
    }

    fn try_return_to_int8(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
        match self.spawn(PrecisionArg::Int8) {
            Ok(()) => {
                self.fallback.returned(self.clock.now());
                if let Ok(mut s) = self.state.lock() {
                    s.mode = Precision::Int8;
                    s.mode_reason = PrecisionReason::Normal;
                }
                self.transition(Transition::BackToInt8);
            }
            Err(failure) => {
                self.transition(Transition::Int8RetryFailed {
                    failure: failure.to_string(),
                });
                self.fallback.return_failed(self.clock.now());
                let _ = self.spawn(PrecisionArg::Fp32);
            }
        }
    }

    fn spawn(&mut self, precision: PrecisionArg) -> Result<(), WorkerFailure> {
        let spec = match precision {
            PrecisionArg::Int8 => &self.int8,
            PrecisionArg::Fp32 => &self.fp32,
        };
        let started = Instant::now();
        match Worker::start(spec) {
            Ok(w) => {
                let r = w.ready().clone();
                self.transition(Transition::WorkerStarted {
                    precision: precision.variant(),
                    pid: w.pid(),
                    load_ms: started.elapsed().as_millis() as u64,
                    warmup_ms: r.warmup_us as f64 / 1e3,
                    rss_bytes: r.rss_bytes,
                });
                if let Ok(mut s) = self.state.lock() {
                    s.ready = true;
                    s.kernels = r.kernels.join(",");
                    s.worker_rss_bytes = r.rss_bytes;
                    s.progress = self.clock.now();
                }
                self.worker = Some(w);
                Ok(())
            }
            Err(failure) => {
                self.transition(Transition::WorkerFailed {
                    precision: precision.variant(),
                    failure: failure.to_string(),
                });
                if let Ok(mut s) = self.state.lock() {
                    s.ready = false;
                }
                Err(failure)
            }
        }
    }

    fn transition(&self, t: Transition) {
        let _ = self.events.send(DispatchEvent::Transition(t));
    }
}

fn argmax(p: &[f32]) -> usize {
    edgedx_engine::top1(p).0
}

/// What the requester reads when decoding its input ended the worker.
fn input_fault_error(name: &str, failure: &WorkerFailure, decode_deadline: Duration) -> JobError {
    match failure {
        WorkerFailure::Died {
            memory_breach: true,
            ..
        } => JobError {
            code: ErrorCode::TooLarge,
            text: format!(
                "{name}: decoding needs more memory than the worker's memory limit allows"
            ),
        },
        WorkerFailure::Hang { .. } => JobError {
            code: ErrorCode::DecodeFailed,
            text: format!(
                "{name}: decoding took longer than {} s; the decoder was stopped",
                decode_deadline.as_secs_f32()
            ),
        },
        other => JobError {
            code: ErrorCode::DecodeFailed,
            text: format!("{name}: the decoder failed on this input ({other})"),
        },
    }
}

fn reason_of(failure: &WorkerFailure) -> FallbackReason {
    match failure {
        WorkerFailure::Hang { .. } => FallbackReason::Hang,
        WorkerFailure::Died {
            memory_breach: true,
            ..
        } => FallbackReason::MemoryBudget,
        WorkerFailure::Died { .. } => FallbackReason::Crash,
        WorkerFailure::LoadFailed { .. } => FallbackReason::LoadFailed,
        WorkerFailure::Broken(why) if why.starts_with("invalid output") => {
            FallbackReason::InvalidOutput
        }
        WorkerFailure::Broken(_) => FallbackReason::Crash,
    }
}

/// Probabilities must be one finite value in [0, 1] per class, summing to 1.
pub fn validate(probabilities: &[f32], classes: usize) -> Result<(), String> {
    if probabilities.len() != classes {
        return Err(format!(
            "{} values for {classes} classes",
            probabilities.len()
        ));
    }
    if let Some(p) = probabilities
        .iter()
        .find(|p| !p.is_finite() || **p < 0.0 || **p > 1.0)
    {
        return Err(format!("probability {p} is not a finite value in [0, 1]"));
    }
    let sum: f32 = probabilities.iter().sum();
    if (sum - 1.0).abs() > 1e-3 {
        return Err(format!("probabilities sum to {sum}, not 1"));
    }
    Ok(())
}

/// A hex sha256 as bytes; `None` unless it is 64 hex digits. Results never carry a
/// made-up digest: the model that produced them must be identifiable.
pub(crate) fn parse_sha(hex_text: &str) -> Option<[u8; 32]> {
    hex::decode(hex_text).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_is_factor_times_warmup_with_a_floor() {
        let p = Policy {
            primary: PrecisionArg::Int8,
            primary_reason: PrecisionReason::Normal,
            retries: 1,
            deadline_factor: 20.0,
            deadline_floor: Duration::from_secs(2),
            decode_deadline: Duration::from_secs(20),
            fallback: FallbackRules {
                after: 1,
                window: Duration::from_secs(600),
                cooldown: Duration::from_secs(300),
                max_cooldown: Duration::from_secs(2400),
            },
            classes: 4,
        };
        assert_eq!(
            p.deadline(Duration::from_millis(10)),
            Duration::from_secs(2)
        );
        assert_eq!(
            p.deadline(Duration::from_millis(500)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn shadow_window_rolls_and_alerts_above_the_threshold() {
        let p = ShadowPolicy {
            every: 1,
            window: 10,
            min_samples: 5,
            threshold: 0.05,
        };
        let mut w = ShadowWindow::default();
        for _ in 0..4 {
            w.push(false, p.window);
        }
        let (n, d) = w.push(true, p.window);
        assert_eq!((n, d), (5, 1));
        assert!(shadow_alert(n, d, &p).unwrap().contains("1 of the last 5"));
        assert!(shadow_alert(4, 1, &p).is_none(), "too few samples to judge");
        // Agreement pushes the disagreement out of the window and the alert clears.
        let mut last = (0, 0);
        for _ in 0..10 {
            last = w.push(false, p.window);
        }
        assert_eq!(last, (10, 0));
        assert!(shadow_alert(last.0, last.1, &p).is_none());
        assert_eq!(argmax(&[0.1, 0.7, 0.2]), 1);
    }

    #[test]
    fn a_model_digest_is_parsed_or_refused_never_zeroed() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_sha(&hex), Some([0xab; 32]));
        for bad in ["", "ab", &"zz".repeat(32), &"ab".repeat(33)] {
            assert_eq!(parse_sha(bad), None, "{bad}");
        }
    }

    #[test]
    fn validation_catches_every_invalid_shape() {
        assert!(validate(&[0.25, 0.25, 0.25, 0.25], 4).is_ok());
        assert!(validate(&[0.5, 0.5], 4).unwrap_err().contains("2 values"));
        assert!(validate(&[f32::NAN, 0.5, 0.25, 0.25], 4)
            .unwrap_err()
            .contains("NaN"));
        assert!(validate(&[f32::INFINITY, 0.0, 0.0, 0.0], 4).is_err());
        assert!(validate(&[0.5, 0.5, 0.5, 0.5], 4)
            .unwrap_err()
            .contains("sum"));
        assert!(validate(&[1.5, -0.5, 0.0, 0.0], 4).is_err());
    }
}
