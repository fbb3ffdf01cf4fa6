//! Supervisor side of one worker process: start it, hand it a job, wait with a deadline,
//! and kill it when it misses the deadline, dies or talks nonsense.

use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use edgedx_ingest::Limits;

use std::borrow::Cow;

use super::ipc::{self, Outcome, Ready, Reply, Request};
use crate::PrecisionArg;

/// RLIMIT_DATA above the heap limit (private writable mappings the heap counter does not
/// see: .data/.bss, thread stacks, allocator arenas).
const RLIMIT_SLACK: u64 = 64 * 1024 * 1024;

/// How to start a worker.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub exe: PathBuf,
    pub launcher: Vec<String>,
    pub bundle: PathBuf,
    pub precision: PrecisionArg,
    pub limits: Limits,
    pub load_timeout: Duration,
    /// RLIMIT_DATA for the worker process (heap and private mappings), when set.
    pub memory_limit: Option<u64>,
    /// sha256 the model file must have, from the manifest the supervisor verified: a
    /// bundle changed on disk after start-up is refused by the worker.
    pub expect_sha256: Option<String>,
    /// Threads the worker's inference uses (`edgedx worker --threads`).
    pub threads: usize,
}

/// Why a worker could not answer.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerFailure {
    /// No answer before the deadline; the worker was killed.
    Hang { waited: Duration },
    /// The process ended (crash, signal, memory limit).
    Died { status: String, memory_breach: bool },
    /// The model could not be loaded.
    LoadFailed { kind: String, message: String },
    /// The process could not be started, or broke the pipe protocol.
    Broken(String),
}

impl std::fmt::Display for WorkerFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerFailure::Hang { waited } => {
                write!(f, "no answer within {} ms", waited.as_millis())
            }
            WorkerFailure::Died {
                status,
                memory_breach: true,
            } => {
                write!(f, "worker ended ({status}) after reaching its memory limit")
            }
            WorkerFailure::Died { status, .. } => write!(f, "worker ended ({status})"),
            WorkerFailure::LoadFailed { kind, message } => {
                write!(f, "model load failed ({kind}): {message}")
            }
            WorkerFailure::Broken(why) => write!(f, "worker broken: {why}"),
        }
    }
}

/// Where in a job a worker failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Decoding and preprocessing the input: a failure here is the input's fault.
    Decode,
    /// Inference on a prepared tensor, or a worker that failed before it had read the
    /// job: the model's fault.
    Inference,
}

/// A job's failure and the phase it happened in.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFailure {
    pub phase: Phase,
    pub failure: WorkerFailure,
}

impl std::fmt::Display for JobFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.phase {
            Phase::Decode => write!(f, "while decoding the input: {}", self.failure),
            Phase::Inference => write!(f, "{}", self.failure),
        }
    }
}

impl JobFailure {
    fn inference(failure: WorkerFailure) -> Self {
        JobFailure {
            phase: Phase::Inference,
            failure,
        }
    }
}

/// What the supervisor's side queues for the thread that writes the worker's pipe.
enum ToWorker {
    Classify {
        job: u64,
        name: String,
        bytes: Arc<Vec<u8>>,
    },
    Exit,
}

pub struct Worker {
    child: Child,
    jobs: Option<mpsc::Sender<ToWorker>>,
    replies: Receiver<std::io::Result<Option<Reply>>>,
    ready: Ready,
    precision: PrecisionArg,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("pid", &self.child.id())
            .field("precision", &self.precision)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Starts a worker and waits until it has loaded its model and run the warm-up.
    pub fn start(spec: &WorkerSpec) -> Result<Worker, WorkerFailure> {
        let mut cmd = match spec.launcher.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&spec.exe);
                c
            }
            None => Command::new(&spec.exe),
        };
        cmd.arg("worker")
            .arg("--bundle")
            .arg(&spec.bundle)
            .arg("--precision")
            .arg(spec.precision.variant())
            .arg("--max-pixels")
            .arg(spec.limits.max_pixels.to_string())
            .arg("--max-file-bytes")
            .arg(spec.limits.max_file_bytes.to_string())
            .arg("--threads")
            .arg(spec.threads.to_string())
            .args(
                spec.expect_sha256
                    .iter()
                    .flat_map(|h| ["--expect-sha256", h.as_str()]),
            )
            .args(
                spec.memory_limit
                    .iter()
                    .flat_map(|l| ["--heap-limit".to_string(), l.to_string()]),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let memory_limit = spec.memory_limit;
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: only async-signal-safe calls (prctl, setrlimit) between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    // The worker must not outlive a supervisor that was killed.
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    if let Some(limit) = memory_limit {
                        // The kernel's backstop behind the worker's own heap limit: code,
                        // thread stacks and the allocator's slack come on top of the heap.
                        let hard = limit.saturating_add(RLIMIT_SLACK);
                        let rl = libc::rlimit {
                            rlim_cur: hard as libc::rlim_t,
                            rlim_max: hard as libc::rlim_t,
                        };
                        if libc::setrlimit(libc::RLIMIT_DATA, &rl) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().map_err(|e| {
            WorkerFailure::Broken(format!("cannot start {}: {e}", spec.exe.display()))
        })?;
        let stdin: ChildStdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");

        // Writes go through their own thread: a hung worker stops reading, and a blocked
        // write must not stall the supervisor.
        let (jobs_tx, jobs_rx) = mpsc::channel::<ToWorker>();
        thread::Builder::new()
            .name("worker-in".into())
            .spawn(move || {
                let mut w = BufWriter::new(stdin);
                for out in jobs_rx {
                    // The image is written from the job's own buffer, not copied.
                    let request = match &out {
                        ToWorker::Classify { job, name, bytes } => Request::Classify {
                            job: *job,
                            name: name.clone(),
                            bytes: Cow::Borrowed(bytes.as_slice()),
                        },
                        ToWorker::Exit => Request::Exit,
                    };
                    if ipc::send(&mut w, &request).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| WorkerFailure::Broken(format!("thread: {e}")))?;
        let (replies_tx, replies) = mpsc::channel();
        thread::Builder::new()
            .name("worker-out".into())
            .spawn(move || {
                let mut r = BufReader::new(stdout);
                loop {
                    let reply = ipc::recv::<Reply>(&mut r, ipc::MAX_REPLY);
                    let end = !matches!(reply, Ok(Some(_)));
                    if replies_tx.send(reply).is_err() || end {
                        break;
                    }
                }
            })
            .map_err(|e| WorkerFailure::Broken(format!("thread: {e}")))?;

        let mut worker = Worker {
            child,
            jobs: Some(jobs_tx),
            replies,
            ready: Ready {
                precision: String::new(),
                model_sha256: String::new(),
                kernels: Vec::new(),
                load_us: 0,
                warmup_us: 0,
                rss_bytes: 0,
                peak_rss_bytes: 0,
            },
            precision: spec.precision,
        };
        match worker.wait_reply(spec.load_timeout) {
            Ok(Reply::Ready(ready)) => {
                worker.ready = ready;
                Ok(worker)
            }
            Ok(Reply::LoadFailed { kind, message }) => {
                worker.kill();
                Err(WorkerFailure::LoadFailed { kind, message })
            }
            Ok(other) => {
                worker.kill();
                Err(WorkerFailure::Broken(format!(
                    "expected Ready, got {other:?}"
                )))
            }
            Err(failure) => Err(failure),
        }
    }

    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    pub fn precision(&self) -> PrecisionArg {
        self.precision
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs one job: `deadline` bounds reading the job and the inference, `decode_deadline`
    /// decoding and preprocessing in between. On any failure the worker has been killed and must be replaced;
    /// the failure names the phase it happened in.
    pub fn classify(
        &mut self,
        job: u64,
        name: &str,
        bytes: Arc<Vec<u8>>,
        decode_deadline: Duration,
        deadline: Duration,
    ) -> Result<Outcome, JobFailure> {
        let request = ToWorker::Classify {
            job,
            name: name.to_string(),
            bytes,
        };
        let sent = self
            .jobs
            .as_ref()
            .map(|j| j.send(request).is_ok())
            .unwrap_or(false);
        if !sent {
            // Nothing of this input reached the worker: it was dead before the job.
            return Err(JobFailure::inference(self.reap("its input pipe is closed")));
        }
        let in_phase = |phase: Phase| move |failure| JobFailure { phase, failure };
        // A worker that hangs or dies before it has read the job (stopped, or broken while
        // idle) is not the input's fault. Reading a job takes no longer than an inference.
        match self
            .wait_reply(deadline)
            .map_err(in_phase(Phase::Inference))?
        {
            Reply::Received { job: done } if done == job => {}
            other => return Err(JobFailure::inference(self.unexpected(job, other))),
        }
        match self
            .wait_reply(decode_deadline)
            .map_err(in_phase(Phase::Decode))?
        {
            Reply::Done { job: done, outcome } if done == job => return Ok(outcome),
            Reply::Decoded { job: done } if done == job => {}
            other => return Err(JobFailure::inference(self.unexpected(job, other))),
        }
        match self
            .wait_reply(deadline)
            .map_err(in_phase(Phase::Inference))?
        {
            Reply::Done { job: done, outcome } if done == job => Ok(outcome),
            other => Err(JobFailure::inference(self.unexpected(job, other))),
        }
    }

    fn unexpected(&mut self, job: u64, reply: Reply) -> WorkerFailure {
        self.kill();
        WorkerFailure::Broken(format!("expected the answer to job {job}, got {reply:?}"))
    }

    /// Whether the process has ended on its own (checked while idle).
    pub fn has_exited(&mut self) -> Option<WorkerFailure> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(self.died(status)),
            _ => None,
        }
    }

    fn wait_reply(&mut self, timeout: Duration) -> Result<Reply, WorkerFailure> {
        let started = Instant::now();
        match self.replies.recv_timeout(timeout) {
            Ok(Ok(Some(reply))) => Ok(reply),
            Ok(Ok(None)) | Err(RecvTimeoutError::Disconnected) => {
                Err(self.reap("it closed its output"))
            }
            Ok(Err(e)) => {
                // A broken message often means the process is dying: prefer its exit status.
                let failure = self.reap(&format!("unreadable reply: {e}"));
                Err(failure)
            }
            Err(RecvTimeoutError::Timeout) => {
                self.kill();
                Err(WorkerFailure::Hang {
                    waited: started.elapsed(),
                })
            }
        }
    }

    /// The worker stopped talking: wait briefly for its exit status, else kill it.
    fn reap(&mut self, why: &str) -> WorkerFailure {
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return self.died(status);
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        WorkerFailure::Broken(why.to_string())
    }

    fn died(&self, status: std::process::ExitStatus) -> WorkerFailure {
        use std::os::unix::process::ExitStatusExt;
        let text = match (status.code(), status.signal()) {
            (_, Some(sig)) => format!("signal {sig}"),
            (Some(code), None) => format!("exit code {code}"),
            _ => status.to_string(),
        };
        // The worker turns the abort that follows a refused allocation into this exit
        // status; SIGABRT or SIGSEGV without it is a crash, not a memory breach.
        let memory_breach = status.code() == Some(crate::heap::MEMORY_LIMIT_EXIT);
        WorkerFailure::Died {
            status: text,
            memory_breach,
        }
    }

    /// Kills the process (SIGKILL works on a stopped process too) and reaps it.
    pub fn kill(&mut self) {
        self.jobs = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the worker to exit and waits a little; kills it if it does not.
    pub fn stop(mut self) {
        if let Some(jobs) = self.jobs.take() {
            let _ = jobs.send(ToWorker::Exit);
        }
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
