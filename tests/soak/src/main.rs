//! edgedx soak harness: runs the real daemon for a while under well-behaved socket clients
//! and a serial host, bad input, malformed frames, idle and slow clients, spool files, and
//! injected faults (SIGKILL and SIGSTOP of the worker, SIGKILL of the supervisor, a state
//! filesystem that fills up), and checks the device's promises with an independent ledger.
//! See tests/soak/README.md.

mod ledger;

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use edgedx_ctl::{Client, ClientError, SerialTransport};
use edgedx_icd::{ErrorCode, FormatHint, Message, UploadBegin, UploadChunk, MAX_FRAME};
use sha2::{Digest, Sha256};

use ledger::{Fault, Ledger};

#[derive(Debug, Parser)]
#[command(about = "Soak the real edgedx daemon and check its promises")]
struct Args {
    /// How long to run.
    #[arg(long, default_value_t = 3.0)]
    minutes: f64,
    /// The edgedx binary (default: beside this one).
    #[arg(long)]
    edgedx: Option<PathBuf>,
    /// The bundle to serve (default: models/brain-mri-4class).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Shared fixtures (real DICOM files to corrupt); default ../shared.
    #[arg(long)]
    shared: Option<PathBuf>,
    /// Seed of the fault schedule and the bad inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Mean seconds between injected faults.
    #[arg(long, default_value_t = 20.0)]
    fault_every_s: f64,
}

/// The promise checked for well-behaved clients while no fault is being recovered from.
const SERVED_WITHIN: Duration = Duration::from_secs(10);
const SOCKET_CLIENTS: usize = 8;
/// Memory rows the daemon runs with (its `[memory]`), checked against anonymous RSS.
const SUPERVISOR_MIB: u64 = 128;
const BUDGET_MIB: u64 = 384;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("soak: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A small xorshift generator: the schedule is reproducible from `--seed`.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    /// Spreads a small seed over all 64 bits (splitmix64), so seed 1 and seed 2 give
    /// unrelated schedules from the first draw.
    fn seeded(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn secs(&mut self, mean: f64) -> Duration {
        Duration::from_secs_f64(mean * (0.5 + (self.below(1000) as f64) / 1000.0))
    }
}

struct Harness {
    exe: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    spool: PathBuf,
    state: PathBuf,
    daemon: Mutex<Option<Child>>,
    /// Whether the daemon is up (false while the harness restarts it).
    up: AtomicBool,
    stop: AtomicBool,
    ledger: Mutex<Ledger>,
    /// Unique suffix for every valid input, so each request has its own digest.
    counter: AtomicU64,
    samples: Vec<Vec<u8>>,
    /// Whether the state directory is on its own small filesystem (else no fill-up).
    small_fs: bool,
}

fn run(args: Args) -> anyhow::Result<bool> {
    let exe = match args.edgedx {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("edgedx"),
    };
    if !exe.is_file() {
        bail!(
            "{} not found: build it (cargo build --release -p edgedx)",
            exe.display()
        );
    }
    let bundle = args
        .bundle
        .unwrap_or_else(|| root().join("models/brain-mri-4class"));
    let shared = args.shared.unwrap_or_else(|| root().join("../shared"));
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().to_path_buf();
    let state = dir.join("state");
    std::fs::create_dir_all(&state)?;
    let _mount = SmallFs::mount(&state)?;
    let spool = dir.join("spool");
    std::fs::create_dir_all(&spool)?;
    let pty = edgedx_board::serial::open_pty().context("openpty")?;
    let socket = dir.join("edgedx.sock");
    let config = dir.join("edgedx.toml");
    std::fs::write(
        &config,
        format!(
            "bundle = {:?}\nstate_dir = {:?}\n[socket]\npath = {:?}\n[serial]\ndevice = {:?}\nbaud = 115200\n[spool]\ndir = {:?}\nsettle_ms = 300\n[outbox]\nmax_bytes = 8388608\nsegment_bytes = 1048576\n[memory]\nbudget_mib = {BUDGET_MIB}\nsupervisor_mib = {SUPERVISOR_MIB}\nheadroom_mib = 0\n[fallback]\ncooldown_s = 15\n",
            bundle.display().to_string(),
            state.display().to_string(),
            socket.display().to_string(),
            pty.slave_path.display().to_string(),
            spool.display().to_string(),
        ),
    )?;
    let samples: Vec<Vec<u8>> = [
        "glioma-01.png",
        "meningioma-01.png",
        "notumor-01.png",
        "pituitary-01.png",
    ]
    .iter()
    .map(|f| std::fs::read(bundle.join("samples").join(f)))
    .collect::<Result<_, _>>()
    .context("reading the bundle's PNG samples")?;
    let dicoms: Vec<Vec<u8>> = match std::fs::read_dir(shared.join("data/dicom")) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "dcm"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .collect(),
        Err(_) => {
            println!(
                "SKIPPED: corrupt DICOM input ({} not found)",
                shared.join("data/dicom").display()
            );
            Vec::new()
        }
    };

    let h = Arc::new(Harness {
        exe,
        dir,
        config,
        socket,
        spool,
        state,
        daemon: Mutex::new(None),
        up: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        ledger: Mutex::new(Ledger::default()),
        counter: AtomicU64::new(0),
        samples,
        small_fs: _mount.path.is_some(),
    });
    h.start_daemon()?;
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.minutes * 60.0);
    println!(
        "soak: {} min, seed {}, daemon {}, state on {}",
        args.minutes,
        args.seed,
        h.exe.display(),
        _mount.describe()
    );

    let mut threads = Vec::new();
    // The archiver stores and acknowledges every result it sees.
    threads.push(spawn("archiver", {
        let h = h.clone();
        move || archiver(&h)
    }));
    for i in 0..SOCKET_CLIENTS - 3 {
        let h = h.clone();
        threads.push(spawn("polite", move || polite_socket(&h, i)));
    }
    {
        let h = h.clone();
        let master = pty.master.try_clone()?;
        threads.push(spawn("serial", move || polite_serial(&h, master)));
    }
    {
        let h = h.clone();
        let mut rng = Rng::seeded(args.seed ^ 0xBAD);
        threads.push(spawn("bad-input", move || bad_input(&h, &dicoms, &mut rng)));
    }
    threads.push(spawn("idle-and-slow", {
        let h = h.clone();
        move || idle_and_slow(&h)
    }));
    threads.push(spawn("spool", {
        let h = h.clone();
        move || spool_writer(&h)
    }));
    threads.push(spawn("memory", {
        let h = h.clone();
        move || sample_memory(&h)
    }));

    let mut rng = Rng::seeded(args.seed);
    let mut next_fault = Instant::now() + rng.secs(args.fault_every_s);
    while Instant::now() < until {
        thread::sleep(Duration::from_millis(200));
        h.check_daemon();
        if Instant::now() >= next_fault && Instant::now() + Duration::from_secs(20) < until {
            h.inject(&mut rng)?;
            next_fault = Instant::now() + rng.secs(args.fault_every_s);
        }
    }
    h.stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    // Settle: the daemon up, then a fresh session collects everything unacknowledged.
    h.check_daemon();
    h.wait_up(Duration::from_secs(120))?;
    thread::sleep(Duration::from_secs(3));
    let replay = collect_replay(&h)?;
    let stop_ok = h.stop_daemon();
    let elapsed = started.elapsed();

    let mut l = h.ledger.lock().unwrap();
    let (lost, resent) = l.settle(&replay);
    if !stop_ok {
        l.violations
            .push("the daemon did not exit 0 on SIGTERM".into());
    }
    let outside: Vec<Duration> = l
        .waits
        .iter()
        .filter(|(from, took)| !l.during_fault(*from, *from + *took))
        .map(|(_, d)| *d)
        .collect();
    let worst_outside = outside.iter().max().copied().unwrap_or_default();
    let worst_all = l.waits.iter().map(|(_, d)| *d).max().unwrap_or_default();
    if worst_outside > SERVED_WITHIN {
        l.violations.push(format!(
            "a well-behaved request waited {worst_outside:?} with no fault being recovered from (bound {SERVED_WITHIN:?})"
        ));
    }
    let worker_limit = (BUDGET_MIB - SUPERVISOR_MIB) << 20;
    let (sup_peak, worker_peak) = (l.peak_supervisor_anon, l.peak_worker_anon);
    if sup_peak > SUPERVISOR_MIB << 20 {
        l.violations.push(format!(
            "supervisor anonymous memory peaked at {} MiB, over its {SUPERVISOR_MIB} MiB row",
            sup_peak >> 20
        ));
    }
    if worker_peak > worker_limit {
        l.violations.push(format!(
            "worker anonymous memory peaked at {} MiB, over its {} MiB row",
            worker_peak >> 20,
            worker_limit >> 20
        ));
    }

    println!(
        "\n== soak figures ({:.1} min) ==",
        elapsed.as_secs_f64() / 60.0
    );
    println!("requests sent: {:?}", l.sent);
    println!("answers: {:?}", l.answers);
    println!(
        "requests cut off by a supervisor kill (resendable, not accepted): {}",
        l.interrupted
    );
    println!("faults injected: {:?}", l.faults);
    println!(
        "distinct results: {}, result frames received (every result goes to every session): {}, of them from the fp32 fallback: {}",
        l.seen.len(),
        l.seen.len() as u64 + l.duplicates_by_id,
        l.fallback_results
    );
    println!("spool files written: {}", l.spool_written);
    println!(
        "idle connections closed: {} (not closed: {}); slow uploads dropped with TimedOut: {}",
        l.idle_closed, l.idle_not_closed, l.slow_timed_out
    );
    println!(
        "results lost: {lost}; acknowledged results resent: {resent}; replayed at the end: {}",
        replay.len()
    );
    println!(
        "well-behaved requests: {}; worst wait {:.2} s overall, {:.2} s outside fault recovery (bound {} s)",
        l.waits.len(),
        worst_all.as_secs_f64(),
        worst_outside.as_secs_f64(),
        SERVED_WITHIN.as_secs()
    );
    println!(
        "peak anonymous memory: supervisor {:.1} MiB (row {SUPERVISOR_MIB}), worker {:.1} MiB (row {})",
        l.peak_supervisor_anon as f64 / 1048576.0,
        l.peak_worker_anon as f64 / 1048576.0,
        worker_limit >> 20
    );
    // A power cut or a kill tears at most the one record being written (64 KiB at most):
    // more cut off at a start means records were written behind damage.
    let log = std::fs::read_to_string(h.dir.join("daemon.log")).unwrap_or_default();
    for line in log.lines() {
        if let Some(rest) = line.split("dropped a torn last record (").nth(1) {
            let bytes: u64 = rest
                .split(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if bytes > 64 * 1024 {
                l.violations.push(format!(
                    "the outbox cut {bytes} bytes at a start: more than one torn record ({line})"
                ));
            }
        }
    }
    if l.waits.is_empty() || l.seen.is_empty() {
        l.violations
            .push("no well-behaved request was served at all".into());
    }
    if l.violations.is_empty() {
        println!("soak: PASS");
        Ok(true)
    } else {
        for v in &l.violations {
            println!("VIOLATION: {v}");
        }
        println!(
            "soak: FAIL ({} violation(s)); daemon log: {}",
            l.violations.len(),
            h.dir.join("daemon.log").display()
        );
        // Keep the directory for a look.
        std::mem::forget(tmp);
        Ok(false)
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> thread::JoinHandle<()> {
    thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("spawn a harness thread")
}

impl Harness {
    fn start_daemon(&self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))?;
        let child = Command::new(&self.exe)
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.exe.display()))?;
        *self.daemon.lock().unwrap() = Some(child);
        self.wait_up(Duration::from_secs(120))
    }

    fn wait_up(&self, within: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Ok(mut c) = Client::socket(&self.socket) {
                if c.hello("soak-probe", Duration::from_secs(2)).is_ok() {
                    self.up.store(true, Ordering::SeqCst);
                    return Ok(());
                }
            }
            thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "the daemon did not come up within {within:?}; see {}",
            self.dir.join("daemon.log").display()
        )
    }

    /// Restarts the daemon if it exited on its own (that is a violation).
    fn check_daemon(&self) {
        let exited = {
            let mut d = self.daemon.lock().unwrap();
            match d.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => Some(status),
                _ => None,
            }
        };
        if let Some(status) = exited {
            self.ledger
                .lock()
                .unwrap()
                .violations
                .push(format!("the daemon exited on its own ({status})"));
            self.up.store(false, Ordering::SeqCst);
            if let Err(e) = self.start_daemon() {
                self.ledger
                    .lock()
                    .unwrap()
                    .violations
                    .push(format!("restart: {e}"));
            }
        }
    }

    fn daemon_pid(&self) -> Option<u32> {
        self.daemon.lock().unwrap().as_ref().map(|c| c.id())
    }

    /// The serving worker: a child of one of the daemon's threads (the dispatcher's).
    fn worker_pid(&self) -> Option<u32> {
        let pid = self.daemon_pid()?;
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        tasks.flatten().find_map(|t| {
            let children = std::fs::read_to_string(t.path().join("children")).ok()?;
            children.split_whitespace().next()?.parse().ok()
        })
    }

    fn inject(&self, rng: &mut Rng) -> anyhow::Result<()> {
        let fault = match rng.below(4) {
            0 => Fault::KillWorker,
            1 => Fault::StopWorker,
            2 => Fault::KillSupervisor,
            _ => Fault::FillDisk,
        };
        match fault {
            Fault::KillWorker | Fault::StopWorker => {
                let Some(pid) = self.worker_pid() else {
                    return Ok(());
                };
                let sig = if fault == Fault::KillWorker {
                    libc::SIGKILL
                } else {
                    libc::SIGSTOP
                };
                self.ledger.lock().unwrap().fault(fault);
                // SAFETY: kill(2) on a pid we read from the daemon's children.
                unsafe { libc::kill(pid as libc::pid_t, sig) };
            }
            Fault::KillSupervisor => {
                self.ledger.lock().unwrap().fault(fault);
                self.up.store(false, Ordering::SeqCst);
                if let Some(mut c) = self.daemon.lock().unwrap().take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                thread::sleep(Duration::from_millis(500));
                self.start_daemon()?;
            }
            Fault::FillDisk => {
                if !self.small_fs {
                    return Ok(());
                }
                self.ledger.lock().unwrap().fault(fault);
                let filler = self.state.join("filler");
                if let Ok(mut f) = std::fs::File::create(&filler) {
                    let block = vec![0u8; 1 << 20];
                    while f.write_all(&block).is_ok() {}
                }
                thread::sleep(Duration::from_secs(8));
                let _ = std::fs::remove_file(&filler);
            }
        }
        Ok(())
    }

    fn stop_daemon(&self) -> bool {
        let Some(mut c) = self.daemon.lock().unwrap().take() else {
            return false;
        };
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        false
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// A valid PNG made unique by a trailer after IEND (decoders stop at IEND), so every
    /// request has its own digest and the ledger can tell requests apart.
    fn unique_png(&self) -> Vec<u8> {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let mut bytes = self.samples[(n % self.samples.len() as u64) as usize].clone();
        bytes.extend_from_slice(format!("soak-{n:016}").as_bytes());
        bytes
    }

    /// A socket session, retried until the daemon answers (it may be restarting).
    fn connect(&self, name: &str) -> Option<(Client, Instant)> {
        while !self.stopping() {
            if self.up.load(Ordering::SeqCst) {
                if let Ok(mut c) = Client::socket(&self.socket) {
                    let at = Instant::now();
                    if c.hello(name, Duration::from_secs(5)).is_ok() {
                        return Some((c, at));
                    }
                }
            }
            thread::sleep(Duration::from_millis(200));
        }
        None
    }

    /// Records every frame already received on `c`.
    fn drain(&self, c: &mut Client, session: Instant) {
        while let Ok(Some(f)) = c.recv(Duration::ZERO) {
            if let Message::Result(r) = f.message {
                self.ledger.lock().unwrap().observe(&r, session);
            }
        }
    }

    /// One well-behaved request: upload, wait, record. Returns false when the link broke.
    fn classify(&self, c: &mut Client, session: Instant, name: &str) -> bool {
        let bytes = self.unique_png();
        self.ledger.lock().unwrap().sent("valid");
        let from = Instant::now();
        let outcome = c.classify_bytes(name, &bytes, Duration::from_secs(90));
        let took = from.elapsed();
        let mut l = self.ledger.lock().unwrap();
        let ok = match outcome {
            Ok(r) => {
                l.observe(&r, session);
                l.answer("result");
                l.waits.push((from, took));
                let digest: [u8; 32] = Sha256::digest(&bytes).into();
                if r.input_sha256 != digest {
                    l.violations
                        .push(format!("result {} names the wrong input", r.result_id));
                }
                true
            }
            Err(ClientError::Device { code, text }) => {
                l.answer(format!("{code:?}"));
                // A valid image fails only while a fault is being recovered from.
                if !l.during_fault(from, Instant::now()) {
                    l.violations.push(format!(
                        "a valid image failed with no fault injected: {code:?}: {text}"
                    ));
                }
                true
            }
            Err(_) => {
                l.interrupted += 1;
                if !l.during_fault(from, Instant::now()) {
                    l.violations.push(format!("a well-behaved request got no answer in 90 s with no fault injected ({name})"));
                }
                false
            }
        };
        drop(l);
        self.drain(c, session);
        ok
    }
}

fn archiver(h: &Harness) {
    'session: while let Some((mut c, session)) = h.connect("soak-archiver") {
        let mut nonce = 0u32;
        while !h.stopping() {
            let mut ids = Vec::new();
            loop {
                match c.recv(Duration::from_millis(300)) {
                    Ok(Some(f)) => {
                        if let Message::Result(r) = f.message {
                            h.ledger.lock().unwrap().observe(&r, session);
                            ids.push(r.result_id);
                        }
                    }
                    Ok(None) => break,
                    Err(_) => continue 'session,
                }
                if ids.len() >= 32 {
                    break;
                }
            }
            if ids.is_empty() {
                continue;
            }
            for id in &ids {
                if c.ack(*id).is_err() {
                    continue 'session;
                }
            }
            nonce += 1;
            // The Pong comes after the device has processed the acks before it.
            let mut confirmed = false;
            if c.send(&Message::Ping(edgedx_icd::Ping { nonce })).is_ok() {
                let until = Instant::now() + Duration::from_secs(10);
                while Instant::now() < until {
                    match c.recv(Duration::from_millis(200)) {
                        Ok(Some(f)) => match f.message {
                            Message::Pong(p) if p.nonce == nonce => {
                                confirmed = true;
                                break;
                            }
                            Message::Result(r) => {
                                h.ledger.lock().unwrap().observe(&r, session);
                                // Acked in the next round.
                            }
                            _ => {}
                        },
                        Ok(None) => {}
                        Err(_) => break,
                    }
                }
            }
            if confirmed {
                h.ledger.lock().unwrap().acked(&ids, Instant::now());
            } else {
                continue 'session;
            }
        }
        return;
    }
}

fn polite_socket(h: &Harness, i: usize) {
    let name = format!("soak-polite-{i}");
    while let Some((mut c, session)) = h.connect(&name) {
        while !h.stopping() {
            if !h.classify(&mut c, session, &name) {
                break;
            }
            thread::sleep(Duration::from_millis(300 + 100 * i as u64));
        }
        if h.stopping() {
            return;
        }
    }
}

fn polite_serial(h: &Harness, master: edgedx_board::serial::SerialPort) {
    let mut c = Client::new(Box::new(SerialTransport::from_port(master)));
    // The session starts with the device (PROTOCOL.md 9): one Hello at first, none after
    // a device restart.
    let session = Instant::now();
    while c.hello("soak-serial", Duration::from_secs(5)).is_err() {
        if h.stopping() {
            return;
        }
    }
    while !h.stopping() {
        if !h.up.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(200));
            continue;
        }
        h.classify(&mut c, session, "soak-serial");
        thread::sleep(Duration::from_millis(700));
    }
}

fn bad_input(h: &Harness, dicoms: &[Vec<u8>], rng: &mut Rng) {
    while let Some((mut c, session)) = h.connect("soak-bad") {
        while !h.stopping() {
            let kind = rng.below(5);
            let outcome = match kind {
                0 if !dicoms.is_empty() => {
                    // A real DICOM file cut short or with bytes flipped.
                    let mut d = dicoms[rng.below(dicoms.len() as u64) as usize].clone();
                    if rng.below(2) == 0 {
                        d.truncate(rng.below(d.len() as u64) as usize + 1);
                    } else {
                        for _ in 0..8 {
                            let at = 128 + rng.below(d.len().saturating_sub(128) as u64) as usize;
                            if at < d.len() {
                                d[at] ^= 0xFF;
                            }
                        }
                    }
                    h.ledger.lock().unwrap().sent("corrupt-dicom");
                    Some(c.classify_bytes("bad.dcm", &d, Duration::from_secs(90)))
                }
                1 => {
                    let garbage: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
                    h.ledger.lock().unwrap().sent("garbage-file");
                    Some(c.classify_bytes("garbage.bin", &garbage, Duration::from_secs(90)))
                }
                2 => {
                    // An upload announced above the device's file limit.
                    h.ledger.lock().unwrap().sent("oversized");
                    let seq = c.send(&Message::UploadBegin(UploadBegin {
                        upload_id: 7,
                        total_len: u32::MAX,
                        format: FormatHint::Auto,
                        name: "huge.png".try_into().unwrap(),
                    }));
                    if seq.is_err() {
                        break;
                    }
                    None
                }
                3 => {
                    // Malformed frames: noise, a bad CRC, an over-long frame.
                    h.ledger.lock().unwrap().sent("malformed-frames");
                    let mut buf = [0u8; MAX_FRAME];
                    let mut bad = edgedx_icd::encode_raw_frame(1, 0x02, 9, &[1, 2], &mut buf)
                        .map(|f| f.to_vec())
                        .unwrap_or_default();
                    if bad.len() > 4 {
                        bad[3] ^= 0x40;
                    }
                    let noise: Vec<u8> = (0..300).map(|_| (rng.next() as u8) | 1).collect();
                    let long = vec![0x55u8; MAX_FRAME * 2];
                    if c.send_raw(&[&bad[..], &noise, &[0], &long, &[0]].concat())
                        .is_err()
                    {
                        break;
                    }
                    None
                }
                _ => {
                    // A PNG cut in half.
                    let png = h.unique_png();
                    h.ledger.lock().unwrap().sent("truncated-png");
                    Some(c.classify_bytes(
                        "cut.png",
                        &png[..png.len() / 2],
                        Duration::from_secs(90),
                    ))
                }
            };
            match outcome {
                Some(Ok(r)) => {
                    // Flipped bytes inside pixel data can still decode: an answer, not a fault.
                    let mut l = h.ledger.lock().unwrap();
                    l.observe(&r, session);
                    l.answer("result-for-bad-input");
                }
                Some(Err(ClientError::Device { code, .. })) => {
                    h.ledger.lock().unwrap().answer(format!("{code:?}"));
                }
                Some(Err(_)) => break,
                None => {}
            }
            h.drain(&mut c, session);
            thread::sleep(Duration::from_millis(250));
        }
        if h.stopping() {
            return;
        }
    }
}

/// A connection that never says Hello, and an upload trickled one byte a second: both must
/// be ended by the device with TimedOut.
fn idle_and_slow(h: &Harness) {
    use std::io::Read;
    while !h.stopping() {
        if !h.up.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(200));
            continue;
        }
        if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&h.socket) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(15)));
            let mut got = Vec::new();
            let closed = s.read_to_end(&mut got).is_ok();
            let mut l = h.ledger.lock().unwrap();
            if closed {
                l.idle_closed += 1;
            } else if h.up.load(Ordering::SeqCst) {
                l.idle_not_closed += 1;
                l.violations
                    .push("a connection that never said Hello was not closed within 15 s".into());
            }
        }
        if let Some((mut c, _)) = h.connect("soak-slow") {
            let seq = c.send(&Message::UploadBegin(UploadBegin {
                upload_id: 1,
                total_len: 1 << 20,
                format: FormatHint::Auto,
                name: "slow.png".try_into().unwrap(),
            }));
            let Ok(seq) = seq else { continue };
            for offset in 0..20u32 {
                if h.stopping() {
                    return;
                }
                let sent = c.send(&Message::UploadChunk(UploadChunk {
                    upload_id: 1,
                    offset,
                    data: heapless::Vec::from_slice(&[0]).unwrap(),
                }));
                if sent.is_err() {
                    break;
                }
                let mut timed_out = false;
                let until = Instant::now() + Duration::from_secs(1);
                while let Ok(Some(f)) = c.recv(until.saturating_duration_since(Instant::now())) {
                    if let Message::Error(e) = f.message {
                        if e.code == ErrorCode::TimedOut && e.in_reply_to == Some(seq) {
                            timed_out = true;
                        }
                    }
                }
                if timed_out {
                    h.ledger.lock().unwrap().slow_timed_out += 1;
                    break;
                }
            }
        }
    }
}

fn spool_writer(h: &Harness) {
    let mut n = 0u64;
    while !h.stopping() {
        thread::sleep(Duration::from_secs(3));
        let bytes = h.unique_png();
        let part = h.spool.join(format!("soak-{n}.png.part"));
        if std::fs::write(&part, &bytes).is_ok()
            && std::fs::rename(&part, h.spool.join(format!("soak-{n}.png"))).is_ok()
        {
            h.ledger.lock().unwrap().spool_written += 1;
        }
        n += 1;
    }
}

/// Anonymous resident memory (heap, stacks) of a process, in bytes.
fn rss_anon(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn sample_memory(h: &Harness) {
    while !h.stopping() {
        let sup = h.daemon_pid().and_then(rss_anon);
        let worker = h.worker_pid().and_then(rss_anon);
        {
            let mut l = h.ledger.lock().unwrap();
            if let Some(b) = sup {
                l.peak_supervisor_anon = l.peak_supervisor_anon.max(b);
            }
            if let Some(b) = worker {
                l.peak_worker_anon = l.peak_worker_anon.max(b);
            }
        }
        thread::sleep(Duration::from_millis(250));
    }
}

fn collect_replay(h: &Harness) -> anyhow::Result<HashSet<u64>> {
    let mut c = Client::socket(&h.socket).context("final session")?;
    let session = Instant::now();
    c.hello("soak-final", Duration::from_secs(10))
        .context("final hello")?;
    let mut got = HashSet::new();
    while let Some(f) = c.recv(Duration::from_secs(3))? {
        if let Message::Result(r) = f.message {
            h.ledger.lock().unwrap().observe(&r, session);
            got.insert(r.result_id);
        }
    }
    Ok(got)
}

/// The state directory on a small filesystem of its own (tmpfs, 24 MiB) so that filling
/// it is a real ENOSPC for the daemon. Needs root; without it the directory stays on the
/// parent filesystem and the fill-up fault is skipped, which is printed.
struct SmallFs {
    path: Option<PathBuf>,
}

impl SmallFs {
    fn mount(path: &Path) -> anyhow::Result<SmallFs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("SKIPPED: the small state filesystem (mounting tmpfs needs root)");
            return Ok(SmallFs { path: None });
        }
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=24m,mode=0700", "soak-state"])
            .arg(path)
            .status()
            .context("running mount")?;
        if !status.success() {
            bail!("mount -t tmpfs on {} failed ({status})", path.display());
        }
        Ok(SmallFs {
            path: Some(path.to_path_buf()),
        })
    }

    fn describe(&self) -> String {
        match &self.path {
            Some(p) => format!("a 24 MiB tmpfs at {}", p.display()),
            None => "the temporary directory's filesystem".into(),
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
    }
}
