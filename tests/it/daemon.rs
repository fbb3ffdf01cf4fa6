//! The daemon end to end: the real `edgedx serve` binary (under qemu for the aarch64 build)
//! with real worker processes, spoken to over a real Unix socket and a real
//! pseudo-terminal by the protocol client.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use edgedx_ctl::{Client, Event, SerialTransport};
use edgedx_icd::{
    encode_raw_frame, ErrorCode, Message, Precision, PrecisionReason, Source, MAX_FRAME,
};

use crate::util;

/// Generous: under qemu a worker takes seconds to load and each inference ~0.5 s.
pub const T: Duration = Duration::from_secs(120);

pub struct Daemon {
    /// Environment for the daemon process (e.g. NOTIFY_SOCKET).
    pub env: Vec<(String, String)>,
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub spool: PathBuf,
    pub config: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// Options for [`Daemon::start_with`]; `extra` is appended to the generated TOML.
#[derive(Default)]
pub struct Opts<'a> {
    pub bundle: Option<&'a Path>,
    pub serial: Option<&'a Path>,
    pub extra: &'a str,
    pub top: &'a str,
    /// Run the daemon on a clock the test moves forward ([`Daemon::advance_clock`]).
    pub sim_clock: bool,
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_with(Opts::default())
    }

    pub fn start_with(o: Opts) -> Daemon {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut d = Daemon::configure(dir, o);
        d._tmp = Some(tmp);
        d.spawn()
    }

    /// Writes the configuration into `dir` (kept between restarts).
    pub fn configure(dir: PathBuf, o: Opts) -> Daemon {
        let socket = dir.join("edgedx.sock");
        let spool = dir.join("spool");
        std::fs::create_dir_all(&spool).unwrap();
        let launcher = launcher();
        let bundle = o
            .bundle
            .map(Path::to_path_buf)
            .unwrap_or_else(util::default_bundle);
        let mut text = format!(
            "bundle = {:?}\nstate_dir = {:?}\n{}\n[socket]\npath = {:?}\n[spool]\ndir = {:?}\nsettle_ms = 300\n",
            bundle.display().to_string(),
            dir.join("state").display().to_string(),
            o.top,
            socket.display().to_string(),
            spool.display().to_string(),
        );
        if let Some(tty) = o.serial {
            text.push_str(&format!(
                "[serial]\ndevice = {:?}\nbaud = 115200\n",
                tty.display().to_string()
            ));
        }
        text.push_str(o.extra);
        if o.sim_clock {
            text.push_str(&format!(
                "[clock]\noffset_file = {:?}\n",
                dir.join("clock-offset").display().to_string()
            ));
        }
        if !o.extra.contains("[worker]") {
            text.push_str(&format!(
                "[worker]\nlauncher = {launcher:?}\nload_timeout_ms = 120000\n"
            ));
        }
        let config = dir.join("edgedx.toml");
        std::fs::write(&config, text).unwrap();
        Daemon {
            env: Vec::new(),
            child: None,
            dir,
            socket,
            spool,
            config,
            _tmp: None,
        }
    }

    pub fn spawn(mut self) -> Daemon {
        let _ = std::fs::remove_file(self.dir.join("stderr.log"));
        let log = std::fs::File::create(self.dir.join("stderr.log")).unwrap();
        let child = util::edgedx()
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start edgedx serve");
        self.child = Some(child);
        self.wait_ready();
        self
    }

    fn wait_ready(&mut self) {
        let until = Instant::now() + T;
        while Instant::now() < until {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("edgedx serve exited early ({status}):\n{}", self.stderr());
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "edgedx serve did not open its socket in {T:?}:\n{}",
            self.stderr()
        );
    }

    /// Moves the daemon's clock forward by `by` (started with `Opts::sim_clock`): its
    /// timers (cool-down, upload and Hello timeouts) see the time pass at once.
    pub fn advance_clock(&self, by: Duration) {
        let path = self.dir.join("clock-offset");
        let now: u64 = std::fs::read_to_string(&path)
            .map(|t| t.trim().parse().unwrap())
            .unwrap_or(0);
        let total = Duration::from_millis(now) + by;
        edgedx_board::OffsetFileClock::write(&path, total).unwrap();
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        let mut c = Client::socket(&self.socket).expect("connect");
        c.hello("it", T).expect("hello");
        c
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The worker: the daemon's child process (its qemu process under the runner).
    pub fn worker_pid(&self) -> u32 {
        let until = Instant::now() + T;
        loop {
            let kids = children(self.pid());
            if let Some(pid) = kids.first() {
                return *pid;
            }
            assert!(
                Instant::now() < until,
                "no worker process:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(child.id(), libc::SIGTERM);
        let until = Instant::now() + T;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > until {
                let _ = child.kill();
                panic!("edgedx serve ignored SIGTERM:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `within` for the daemon to end on its own; its exit status.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut().expect("running");
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn audit(&self) -> String {
        std::fs::read_to_string(self.dir.join("state/audit.log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The command the daemon starts its workers with: the test runner (qemu-aarch64 on the
/// cross-target run), as `[worker] launcher` takes it.
pub fn launcher() -> Vec<String> {
    std::env::var("EDGEDX_TEST_RUNNER")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The next result on `c`, failing the test on an error or a silence of `T`.
fn next_result(c: &mut Client, d: &Daemon, what: &str) -> edgedx_icd::ClassificationResult {
    loop {
        match c.next_event(T).unwrap() {
            Some(Event::Result(r)) => return r,
            Some(Event::Error(e)) => panic!("{what} failed: {e:?}\n{}", d.stderr()),
            Some(_) => continue,
            None => panic!("no result for {what}:\n{}", d.stderr()),
        }
    }
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid we started.
    let rc = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

/// Child processes of `pid`, from /proc.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // Field 4 (ppid) comes after the parenthesised command name.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

pub fn sample(name: &str) -> PathBuf {
    util::default_bundle().join("samples").join(name)
}

/// What `edgedx classify --json` says about a file: the in-process reference path.
fn classify_reference(file: &Path) -> serde_json::Value {
    let out = util::run(&["classify", "--json", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    util::json_lines(&out).remove(0)
}

fn assert_matches_reference(r: &edgedx_icd::ClassificationResult, file: &Path) {
    let reference = classify_reference(file);
    assert_eq!(r.label.as_str(), reference["label"], "{}", file.display());
    let want: Vec<f64> = reference["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["probability"].as_f64().unwrap())
        .collect();
    assert_eq!(r.probabilities.len(), want.len());
    for (got, want) in r.probabilities.iter().zip(&want) {
        assert!(
            (*got as f64 - want).abs() < 1e-6,
            "{}: {got} vs {want}",
            file.display()
        );
    }
    let bytes = std::fs::read(file).unwrap();
    assert_eq!(
        hex::encode(r.input_sha256),
        edgedx_bundle::sha256_hex(&bytes)
    );
    assert_eq!(
        hex::encode(r.model_sha256),
        reference["model_sha256"].as_str().unwrap()
    );
}

#[test]
fn socket_upload_gives_the_same_results_as_classify() {
    let d = Daemon::start();
    let mut c = d.client();
    let hello = c.device.clone().unwrap();
    assert_eq!(hello.bundle_name.as_str(), "brain-mri-4class");
    let mut ids = Vec::new();
    for name in ["glioma-01.png", "pituitary-02.dcm"] {
        let file = sample(name);
        let r = c
            .classify_bytes(name, &std::fs::read(&file).unwrap(), T)
            .expect("result");
        assert_eq!(r.precision, Precision::Int8);
        assert_eq!(r.precision_reason, PrecisionReason::Normal);
        assert!(matches!(r.source, Source::Upload { .. }));
        assert_eq!(
            (r.bundle_name.as_str(), r.bundle_version.as_str()),
            ("brain-mri-4class", "0.2.0")
        );
        assert_matches_reference(&r, &file);
        c.ack(r.result_id).unwrap();
        ids.push(r.result_id);
    }
    assert!(ids[1] > ids[0]);
    let s = c.status(T).unwrap();
    assert_eq!((s.results, s.errors, s.outbox_unacked), (2, 0, 0), "{s:?}");
    assert!(s.ready && s.live);
    assert!(s.memory_used_bytes > 0 && s.memory_budget_bytes == 384 * 1024 * 1024);
    assert!(!s.kernels.is_empty());
    // A file that is not an image: an explicit error, and the daemon goes on.
    let e = c
        .classify_bytes("notes.txt", b"this is not an image at all", T)
        .unwrap_err();
    assert!(format!("{e}").contains("DecodeFailed"), "{e}");
    let r = c
        .classify_bytes(
            "m.png",
            &std::fs::read(sample("meningioma-01.png")).unwrap(),
            T,
        )
        .unwrap();
    assert_eq!(r.label.as_str(), "meningioma");
}

#[test]
fn socket_file_mode_and_stale_socket() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::configure(tmp.path().to_path_buf(), Opts::default());
    // A stale socket file left by a crashed daemon: nothing listens on it.
    drop(std::os::unix::net::UnixListener::bind(&d.socket).unwrap());
    assert!(d.socket.exists());
    let mut d = d.spawn();
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    // A second daemon on the same socket refuses to take it over.
    let out = util::edgedx()
        .args(["serve", "--config", d.config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(d.stop().success(), "{}", d.stderr());
    assert!(!d.socket.exists(), "socket file removed on a clean stop");
    assert!(d.audit().contains("\"stop\""));
}

#[test]
fn bad_config_is_refused_with_the_key_named() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("state_dir = \"/tmp/x\"\n[socket]\npath = \"/tmp/x.sock\"\nspeed = 3\n", "speed"),
        ("state_dir = \"/tmp/x\"\n", "no link configured"),
        ("state_dir = \"/tmp/x\"\n[serial]\ndevice = \"/dev/does-not-exist\"\n", "serial.device"),
        ("state_dir = \"/tmp/x\"\n[socket]\npath = \"/tmp/x.sock\"\n[memory]\nbudget_mib = 64\nsupervisor_mib = 128\n", "memory.budget_mib"),
    ];
    for (text, want) in cases {
        let path = tmp.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = util::run(&["serve", "--config", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}: {err}");
        assert!(err.contains(want), "{text}: {err}");
    }
}

#[test]
fn serial_link_over_a_pseudo_terminal() {
    let pty = edgedx_board::serial::open_pty().expect("openpty");
    let d = Daemon::start_with(Opts {
        serial: Some(&pty.slave_path),
        ..Opts::default()
    });
    let mut c = Client::new(Box::new(SerialTransport::from_port(
        pty.master.try_clone().unwrap(),
    )));
    // Line noise before the host's first frame must not matter.
    c.send_raw(&[0x13, 0x37, 0xff, 0x00, 0x42]).unwrap();
    c.hello("it-serial", T).expect("hello over serial");
    let file = sample("notumor-01.png");
    let r = c
        .classify_bytes("notumor-01.png", &std::fs::read(&file).unwrap(), T)
        .expect("result");
    assert_matches_reference(&r, &file);
    c.ack(r.result_id).unwrap();

    // Garbage, a wrong CRC and an oversized frame: each reported, the stream survives.
    let mut buf = [0u8; MAX_FRAME];
    let good = encode_raw_frame(1, 0x02, 99, &[5], &mut buf)
        .unwrap()
        .to_vec();
    let mut bad_crc = good.clone();
    bad_crc[3] ^= 0x01;
    c.send_raw(&bad_crc).unwrap();
    c.send_raw(&vec![0x55u8; MAX_FRAME * 2]).unwrap();
    c.send_raw(&[0]).unwrap();
    c.send_raw(&[0xde, 0xad, 0xbe, 0xef, 0x00]).unwrap();
    let mut codes = Vec::new();
    let until = Instant::now() + T;
    // The noise sent before Hello was answered too (BadFrame); collect until both kinds came.
    while !(codes.contains(&ErrorCode::TooLarge)
        && codes.iter().filter(|c| **c == ErrorCode::BadFrame).count() >= 2)
        && Instant::now() < until
    {
        if let Some(Event::Error(e)) = c.next_event(Duration::from_secs(5)).unwrap() {
            codes.push(e.code);
        }
    }
    assert!(codes.contains(&ErrorCode::BadFrame), "{codes:?}");
    assert!(codes.contains(&ErrorCode::TooLarge), "{codes:?}");
    c.ping(7, T).expect("the link still works after bad frames");
    let s = c.status(T).unwrap();
    assert!(s.dropped_frames >= 3, "{s:?}");
    // The same daemon serves the socket at the same time.
    let mut sock = d.client();
    assert!(sock.status(T).unwrap().ready);
}

/// PROTOCOL.md 9: the serial line's session starts with the device. A host that stays
/// attached while the device restarts gets the device's Hello, the unacknowledged result and
/// new results without sending Hello again.
#[test]
fn a_serial_host_attached_across_a_restart_gets_every_result_without_a_new_hello() {
    let pty = edgedx_board::serial::open_pty().expect("openpty");
    let tmp = tempfile::tempdir().unwrap();
    let opts = || Opts {
        serial: Some(&pty.slave_path),
        ..Opts::default()
    };
    let mut d = Daemon::configure(tmp.path().to_path_buf(), opts()).spawn();
    let mut c = Client::new(Box::new(SerialTransport::from_port(
        pty.master.try_clone().unwrap(),
    )));
    c.hello("it-serial", T).expect("hello over serial");
    let bytes = std::fs::read(sample("glioma-01.png")).unwrap();
    let first = c.classify_bytes("g.png", &bytes, T).unwrap();
    // Not acknowledged. The device restarts; the host says nothing.
    assert!(d.stop().success());
    let d = Daemon::configure(tmp.path().to_path_buf(), opts()).spawn();
    let spooled = std::fs::read(sample("meningioma-01.png")).unwrap();
    std::fs::write(d.spool.join("after-restart.png.part"), &spooled).unwrap();
    std::fs::rename(
        d.spool.join("after-restart.png.part"),
        d.spool.join("after-restart.png"),
    )
    .unwrap();
    let (mut device_hello, mut replayed, mut new_result) = (false, false, false);
    let until = Instant::now() + T;
    while !(device_hello && replayed && new_result) && Instant::now() < until {
        let Some(frame) = c.recv(Duration::from_secs(1)).unwrap() else {
            continue;
        };
        match frame.message {
            Message::Hello(_) => device_hello = true,
            Message::Result(r) if r.result_id == first.result_id => {
                assert_eq!(r.input_sha256, first.input_sha256);
                replayed = true;
            }
            Message::Result(r) if r.source != (Source::Upload { upload_id: 1 }) => {
                assert_eq!(r.label.as_str(), "meningioma");
                new_result = true;
            }
            _ => {}
        }
    }
    assert!(
        device_hello && replayed && new_result,
        "hello {device_hello}, replayed {replayed}, new result {new_result}\n{}",
        d.stderr()
    );
}

/// A spool file whose name was used before is new input: it is classified again.
#[test]
fn a_spool_file_name_used_again_is_classified_again() {
    let d = Daemon::start();
    let mut c = d.client();
    for file in ["glioma-01.png", "meningioma-01.png", "glioma-01.png"] {
        let bytes = std::fs::read(sample(file)).unwrap();
        let part = d.spool.join("scan.png.part");
        std::fs::write(&part, &bytes).unwrap();
        std::fs::rename(&part, d.spool.join("scan.png")).unwrap();
        let r = loop {
            match c.next_event(T).unwrap() {
                Some(Event::Result(r)) => break r,
                Some(_) => continue,
                None => panic!("no result for {file} as scan.png:\n{}", d.stderr()),
            }
        };
        assert_eq!(
            (r.source.clone(), hex::encode(r.input_sha256)),
            (
                Source::Spool {
                    name: "scan.png".try_into().unwrap()
                },
                edgedx_bundle::sha256_hex(&bytes)
            ),
            "{file}"
        );
        c.ack(r.result_id).unwrap();
    }
}

#[test]
fn spool_file_written_slowly_is_read_once_when_complete() {
    let d = Daemon::start();
    let mut c = d.client();
    let bytes = std::fs::read(sample("pituitary-01.png")).unwrap();
    let path = d.spool.join("slow.png");
    {
        let mut f = std::fs::File::create(&path).unwrap();
        // Pauses longer than the 300 ms settle time while the writer keeps the file open.
        for chunk in bytes.chunks(bytes.len() / 3 + 1) {
            f.write_all(chunk).unwrap();
            f.flush().unwrap();
            std::thread::sleep(Duration::from_millis(900));
        }
    }
    let r = match c.next_event(T).unwrap() {
        Some(Event::Result(r)) => r,
        Some(other) => panic!("unexpected {other:?}"),
        None => panic!("no spool result:\n{}", d.stderr()),
    };
    assert_eq!(
        r.source,
        Source::Spool {
            name: "slow.png".try_into().unwrap()
        }
    );
    assert_eq!(
        hex::encode(r.input_sha256),
        edgedx_bundle::sha256_hex(&bytes),
        "read before it was complete"
    );
    assert_eq!(r.label.as_str(), "pituitary");
    c.ack(r.result_id).unwrap();
    assert!(d.spool.join("done/slow.png").exists());
    assert!(!path.exists());
    // A broken file goes to failed/ with the reason next to it.
    std::fs::write(d.spool.join("broken.dcm"), b"DICM but not really").unwrap();
    let until = Instant::now() + T;
    while !d.spool.join("failed/broken.dcm.reason.txt").exists() {
        assert!(
            Instant::now() < until,
            "broken file not moved:\n{}",
            d.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Exactly one result was produced for slow.png.
    std::thread::sleep(Duration::from_secs(2));
    let s = c.status(T).unwrap();
    assert_eq!(s.results, 1, "{s:?}");
}

#[test]
fn worker_killed_mid_inference_is_replaced_and_the_request_answered() {
    let d = Daemon::start();
    let mut c = d.client();
    let worker = d.worker_pid();
    // Freeze the worker so the request is certainly in flight when it is killed.
    signal(worker, libc::SIGSTOP);
    let bytes = std::fs::read(sample("glioma-01.png")).unwrap();
    let socket = d.socket.clone();
    let request = std::thread::spawn(move || {
        let mut c = Client::socket(&socket).unwrap();
        c.hello("it-kill", T).unwrap();
        c.classify_bytes("glioma-01.png", &bytes, T)
    });
    std::thread::sleep(Duration::from_millis(500));
    signal(worker, libc::SIGKILL);
    let r = request
        .join()
        .unwrap()
        .expect("the request is retried on a new worker");
    assert_eq!(r.label.as_str(), "glioma");
    // The link stayed up and the next request works on the replacement worker.
    c.ping(1, T).unwrap();
    let r2 = c
        .classify_bytes(
            "m.png",
            &std::fs::read(sample("meningioma-01.png")).unwrap(),
            T,
        )
        .unwrap();
    assert_eq!(r2.label.as_str(), "meningioma");
    assert_ne!(d.worker_pid(), worker);
    assert!(d.audit().contains("worker_failed"), "{}", d.audit());
}

#[test]
fn unacknowledged_results_survive_disconnects_and_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::configure(tmp.path().to_path_buf(), Opts::default()).spawn();
    let files = ["glioma-01.png", "notumor-01.png", "pituitary-01.png"];
    let mut ids = Vec::new();
    {
        let mut c = d.client();
        for f in files {
            let r = c
                .classify_bytes(f, &std::fs::read(sample(f)).unwrap(), T)
                .unwrap();
            ids.push(r.result_id);
        }
        c.ack(ids[0]).unwrap();
        c.ping(3, T).unwrap(); // the ack is processed before we hang up
    }
    // Reconnect: exactly the unacknowledged results come again, in id order.
    let replayed = |d: &Daemon| {
        let mut c = d.client();
        let mut got = Vec::new();
        while let Some(e) = c.next_event(Duration::from_secs(3)).unwrap() {
            if let Event::Result(r) = e {
                got.push(r.result_id);
            }
        }
        (c, got)
    };
    let (c, got) = replayed(&d);
    assert_eq!(got, ids[1..].to_vec());
    drop(c);
    // Restart the daemon: still there.
    assert!(d.stop().success());
    let d = Daemon::configure(tmp.path().to_path_buf(), Opts::default()).spawn();
    let (mut c, got) = replayed(&d);
    assert_eq!(got, ids[1..].to_vec());
    for id in &got {
        c.ack(*id).unwrap();
    }
    // Ids keep increasing across the restart.
    let r = c
        .classify_bytes("g.png", &std::fs::read(sample("glioma-01.png")).unwrap(), T)
        .unwrap();
    assert!(r.result_id > ids[2], "{} after {}", r.result_id, ids[2]);
    c.ack(r.result_id).unwrap();
    c.ping(4, T).unwrap();
    let (_c, got) = replayed(&d);
    assert!(got.is_empty(), "{got:?}");
}

/// A device that restarts with more unacknowledged results than a link's queue holds (a
/// host away for a shift) replays every one of them, in id order: to the serial host
/// unasked, and to a socket host after its Hello, without cutting it off. The results are
/// read back from the journal as each link drains (memory.rs measures what that costs).
#[test]
fn a_backlog_larger_than_a_link_queue_is_replayed_whole() {
    const N: u64 = 3000;
    let tmp = tempfile::tempdir().unwrap();
    let written = write_journal(&tmp.path().join("state/outbox"), N);
    let pty = edgedx_board::serial::open_pty().expect("openpty");
    // The serial host is attached and reading before the device starts.
    let mut serial = Client::new(Box::new(SerialTransport::from_port(
        pty.master.try_clone().unwrap(),
    )));
    let serial_host = std::thread::spawn(move || {
        let mut got = Vec::new();
        let until = Instant::now() + T;
        while (got.len() as u64) < N && Instant::now() < until {
            if let Some(frame) = serial.recv(Duration::from_secs(1)).unwrap() {
                if let Message::Result(r) = frame.message {
                    got.push(r);
                }
            }
        }
        got
    });
    let d = Daemon::configure(
        tmp.path().to_path_buf(),
        Opts {
            serial: Some(&pty.slave_path),
            ..Opts::default()
        },
    )
    .spawn();
    let mut c = d.client();
    let mut got = Vec::new();
    while (got.len() as u64) < N {
        match c.next_event(Duration::from_secs(20)) {
            Ok(Some(Event::Result(r))) => got.push(r),
            Ok(Some(_)) => {}
            other => panic!(
                "socket host: {other:?} after {} results\n{}",
                got.len(),
                d.stderr()
            ),
        }
    }
    assert_eq!(got, written, "socket host");
    let over_serial = serial_host.join().unwrap();
    assert_eq!(
        over_serial.len(),
        written.len(),
        "serial host\n{}",
        d.stderr()
    );
    assert_eq!(over_serial, written, "serial host");
    for r in &got {
        c.ack(r.result_id).unwrap();
    }
    c.ping(1, T).unwrap();
    let mut again = d.client();
    assert!(
        again.next_event(Duration::from_secs(2)).unwrap().is_none(),
        "every result was acknowledged"
    );
}

/// Writes an outbox journal of `n` unacknowledged results, as a device leaves it: 1 MiB
/// segments, each a header record (the next id) then one record per result, each
/// `len u32 LE · crc32 u32 LE · type u8 · payload` (firmware/src/serve/outbox.rs).
pub fn write_journal(dir: &Path, n: u64) -> Vec<edgedx_icd::ClassificationResult> {
    fn record(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
        let mut body = vec![kind];
        body.extend_from_slice(payload);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&edgedx_icd::crc32(&body).to_le_bytes());
        out.extend_from_slice(&body);
    }
    let labels = ["glioma", "meningioma", "notumor", "pituitary"];
    std::fs::create_dir_all(dir).unwrap();
    // Segments rotate at 1 MiB, the default `outbox.segment_bytes`.
    let mut segment = 1u32;
    let mut file = Vec::new();
    record(1, &1u64.to_le_bytes(), &mut file);
    let results: Vec<_> = (1..=n)
        .map(|id| {
            if file.len() >= 1 << 20 {
                let path = dir.join(format!("seg-{segment:08}.log"));
                std::fs::write(path, std::mem::take(&mut file)).unwrap();
                segment += 1;
                record(1, &id.to_le_bytes(), &mut file);
            }
            let class = (id % 4) as usize;
            let mut probabilities = heapless::Vec::new();
            for c in 0..4 {
                let p = if c == class { 0.7 } else { 0.1 };
                probabilities.push(p).unwrap();
            }
            let r = edgedx_icd::ClassificationResult {
                result_id: id,
                source: Source::Spool {
                    name: heapless::String::try_from(format!("scan-{id}.png").as_str()).unwrap(),
                },
                label: heapless::String::try_from(labels[class]).unwrap(),
                class_index: class as u16,
                confidence: 0.7,
                probabilities,
                precision: Precision::Int8,
                precision_reason: PrecisionReason::Normal,
                model_sha256: [7; 32],
                input_sha256: [(id % 251) as u8; 32],
                latency_us: 1000 + id,
                timestamp_ms: 1_700_000_000_000 + id,
                bundle_name: heapless::String::try_from("brain-mri").unwrap(),
                bundle_version: heapless::String::try_from("1").unwrap(),
            };
            record(2, &postcard::to_stdvec(&r).unwrap(), &mut file);
            r
        })
        .collect();
    std::fs::write(dir.join(format!("seg-{segment:08}.log")), file).unwrap();
    results
}

#[test]
fn a_client_that_stops_reading_does_not_stop_the_others() {
    let d = Daemon::start();
    let mut stalled = Client::socket(&d.socket).unwrap();
    stalled.hello("stalled", T).unwrap();
    // Flood requests and never read the answers.
    let mut buf = [0u8; MAX_FRAME];
    let mut flood = Vec::new();
    for seq in 0..2000u32 {
        flood.extend_from_slice(
            edgedx_icd::encode_frame(&Message::GetStatus, seq, &mut buf).unwrap(),
        );
    }
    for _ in 0..20 {
        if stalled.send_raw(&flood).is_err() {
            break; // the daemon cut us off
        }
    }
    let mut c = d.client();
    let r = c
        .classify_bytes("g.png", &std::fs::read(sample("glioma-01.png")).unwrap(), T)
        .unwrap();
    assert_eq!(r.label.as_str(), "glioma");
    c.ping(9, T).unwrap();
    // A client that hangs up in the middle of a frame does no harm either.
    let mut half = Client::socket(&d.socket).unwrap();
    half.send_raw(&flood[..7]).unwrap();
    drop(half);
    c.ping(10, T).unwrap();
}

/// A socket client over `max_clients` is told why (an Error frame, code Busy) before it is
/// closed, and the clients already connected are still served.
#[test]
fn a_client_over_the_limit_gets_an_error_frame_before_it_is_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::configure(tmp.path().to_path_buf(), Opts::default());
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(
        &d.config,
        text.replacen("[socket]\n", "[socket]\nmax_clients = 2\n", 1),
    )
    .unwrap();
    let d = d.spawn();
    // The readiness probe's connections count until the daemon has seen them close: retry
    // until each of the two is in (answered, not refused).
    let admitted = || {
        let until = Instant::now() + T;
        loop {
            let mut c = Client::socket(&d.socket).unwrap();
            if c.hello("it", Duration::from_secs(2)).is_ok() {
                return c;
            }
            assert!(Instant::now() < until, "no socket client admitted in {T:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut first = admitted();
    let mut second = admitted();
    let mut third = Client::socket(&d.socket).unwrap();
    let frame = third
        .recv(T)
        .unwrap()
        .expect("the refused client gets a frame");
    match frame.message {
        Message::Error(e) => {
            assert_eq!(e.code, edgedx_icd::ErrorCode::Busy);
            assert!(e.text.contains("at most 2"), "{}", e.text);
        }
        other => panic!("expected an Error frame, got {other:?}"),
    }
    first.ping(3, T).unwrap();
    second.ping(4, T).unwrap();
}

/// PROTOCOL.md 1.4 and 8: a frame of another protocol version is answered with
/// `Error UnsupportedVersion` and the device's Hello, and the stream goes on.
#[test]
fn a_frame_of_another_version_gets_the_error_and_the_device_hello() {
    let d = Daemon::start();
    let mut c = d.client();
    let mut buf = [0u8; MAX_FRAME];
    let v2 = encode_raw_frame(2, 0x04, 77, &[], &mut buf)
        .unwrap()
        .to_vec();
    c.send_raw(&v2).unwrap();
    let mut seen = Vec::new();
    let until = Instant::now() + T;
    while seen.len() < 2 && Instant::now() < until {
        if let Some(f) = c.recv(Duration::from_secs(1)).unwrap() {
            match f.message {
                Message::Error(e) => {
                    assert_eq!(
                        (e.code, e.in_reply_to),
                        (ErrorCode::UnsupportedVersion, None)
                    );
                    seen.push("error");
                }
                Message::Hello(h) => {
                    assert_eq!(h.protocol_version, edgedx_icd::PROTOCOL_VERSION);
                    seen.push("hello");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(seen, ["error", "hello"]);
    c.ping(5, T).unwrap();
}

#[test]
fn edgedx_ctl_classifies_reports_status_and_watches() {
    let d = Daemon::start();
    let sock = d.socket.to_str().unwrap().to_string();
    let files = [sample("glioma-01.png"), sample("meningioma-02.dcm")];
    let out = util::ctl()
        .args(["--socket", &sock, "--json", "classify"])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = util::json_lines(&out);
    assert_eq!(lines.len(), 2);
    for (line, file) in lines.iter().zip(&files) {
        let reference = classify_reference(file);
        assert_eq!(line["label"], reference["label"]);
        assert_eq!(line["precision"], "int8");
        assert_eq!(line["input_sha256"], reference["input_sha256"]);
    }
    // ctl acknowledged both: nothing is pending.
    let out = util::ctl()
        .args(["--socket", &sock, "--json", "status"])
        .output()
        .unwrap();
    let status = &util::json_lines(&out)[0];
    assert_eq!(status["outbox_unacked"], 0, "{status}");
    assert_eq!(status["results"], 2);
    assert_eq!(status["mode"], "int8");
    // watch: a spooled file's result is streamed and acknowledged.
    let watch = util::ctl()
        .args([
            "--socket",
            &sock,
            "--json",
            "--timeout",
            "120",
            "watch",
            "--count",
            "1",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    std::fs::copy(sample("notumor-01.png"), d.spool.join("n.png")).unwrap();
    let out = watch.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines = util::json_lines(&out);
    assert_eq!(lines[0]["source"]["spool"], "n.png");
    assert_eq!(lines[0]["label"], "notumor");
    // A file that is not an image: exit 2 and the error named.
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.png");
    std::fs::write(&junk, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let out = util::ctl()
        .args(["--socket", &sock, "classify"])
        .arg(&junk)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("DecodeFailed"));
}

#[test]
fn demo_prints_every_sample_result_and_exits_cleanly() {
    let mut cmd = util::edgedx();
    cmd.arg("demo");
    if let Ok(runner) = std::env::var("EDGEDX_TEST_RUNNER") {
        if !runner.trim().is_empty() {
            cmd.args(["--worker-launcher", &runner]);
        }
    }
    let out = cmd.env("RUST_LOG", "warn").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<&str> = stdout.lines().filter(|l| l.starts_with("result")).collect();
    assert_eq!(results.len(), 6, "{stdout}");
    for (sample, label) in [
        ("glioma-01.png", "glioma"),
        ("meningioma-01.png", "meningioma"),
        ("pituitary-01.png", "pituitary"),
        ("notumor-01.png", "notumor"),
    ] {
        let line = results
            .iter()
            .find(|l| l.contains(sample))
            .unwrap_or_else(|| panic!("no result for {sample}: {stdout}"));
        assert!(line.contains(label), "{line}");
    }
    assert!(stdout.contains("6 results, 0 errors"), "{stdout}");
}

#[test]
fn capture_request_classifies_a_frame_from_the_simulated_camera() {
    // The simulated camera plays real images as YUYV frames, the format most UVC cameras
    // deliver (V4L2 ioctls do not run under qemu; the board crate tests that path's errors).
    let frames = tempfile::tempdir().unwrap();
    std::fs::copy(sample("pituitary-01.png"), frames.path().join("a.png")).unwrap();
    let extra = format!(
        "[camera]\nkind = \"sim\"\ndir = {:?}\nformat = \"yuyv\"\n",
        frames.path().display().to_string()
    );
    let d = Daemon::start_with(Opts {
        extra: &extra,
        ..Opts::default()
    });
    let mut c = d.client();
    let seq = c
        .send(&Message::Capture(edgedx_icd::Capture { capture_id: 77 }))
        .unwrap();
    let r = next_result(&mut c, &d, &format!("capture {seq}"));
    assert_eq!(r.source, Source::Camera { capture_id: 77 });
    assert_eq!(r.label.as_str(), "pituitary", "{r:?}");
    // The input hash is of the raw frame, not of the PNG the simulator read.
    let png = std::fs::read(sample("pituitary-01.png")).unwrap();
    assert_ne!(hex::encode(r.input_sha256), edgedx_bundle::sha256_hex(&png));
    c.ack(r.result_id).unwrap();
    // No camera configured: an explicit Unsupported error.
    let d2 = Daemon::start();
    let mut c2 = d2.client();
    c2.send(&Message::Capture(edgedx_icd::Capture { capture_id: 1 }))
        .unwrap();
    match c2.next_event(T).unwrap() {
        Some(Event::Error(e)) => assert_eq!(e.code, ErrorCode::Unsupported),
        other => panic!("{other:?}"),
    }
}

#[test]
fn sigterm_finishes_in_flight_work_and_the_result_survives_the_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let launcher = launcher();
    // A long deadline: the frozen worker must not be declared hung during the test.
    let extra = format!(
        "[worker]\nlauncher = {launcher:?}\nload_timeout_ms = 120000\ndeadline_floor_ms = 60000\n"
    );
    let opts = || Opts {
        extra: &extra,
        ..Opts::default()
    };
    let mut d = Daemon::configure(tmp.path().to_path_buf(), opts()).spawn();
    let worker = d.worker_pid();
    signal(worker, libc::SIGSTOP);
    let socket = d.socket.clone();
    let bytes = std::fs::read(sample("meningioma-01.png")).unwrap();
    let upload = std::thread::spawn(move || {
        let mut c = Client::socket(&socket).unwrap();
        c.hello("it-term-upload", T).unwrap();
        let _ = c.classify_bytes("m.png", &bytes, T);
    });
    let mut c = d.client();
    let until = Instant::now() + T;
    while c.status(T).unwrap().queue_depth == 0 {
        assert!(Instant::now() < until, "job never queued");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(c);
    // SIGTERM while the job is in flight; then the worker resumes and the daemon finishes it.
    signal(d.pid(), libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    signal(worker, libc::SIGCONT);
    assert!(d.stop().success(), "{}", d.stderr());
    upload.join().unwrap();
    // The result was journaled before the daemon exited: the next daemon replays it.
    let d = Daemon::configure(tmp.path().to_path_buf(), opts()).spawn();
    let mut c = d.client();
    match c.next_event(Duration::from_secs(10)).unwrap() {
        Some(Event::Result(r)) => assert_eq!(r.label.as_str(), "meningioma"),
        other => panic!("the in-flight result was lost: {other:?}\n{}", d.stderr()),
    }
}

#[test]
fn systemd_is_told_ready_fed_the_watchdog_and_told_stopping() {
    use std::os::unix::net::UnixDatagram;
    let tmp = tempfile::tempdir().unwrap();
    let notify_path = tmp.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut d = Daemon::configure(tmp.path().join("d"), Opts::default());
    d.env
        .push(("NOTIFY_SOCKET".into(), notify_path.display().to_string()));
    let mut d = d.spawn();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    let until = Instant::now() + T;
    while !(seen.iter().any(|m: &String| m.contains("READY=1"))
        && seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2)
    {
        assert!(
            Instant::now() < until,
            "no READY/WATCHDOG: {seen:?}\n{}",
            d.stderr()
        );
        if let Ok(n) = notify.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    // READY=1 comes first, once the model is loaded and the links are open.
    assert!(seen[0].contains("READY=1"), "{seen:?}");
    assert!(d.stop().success());
    let mut last = Vec::new();
    while let Ok(n) = notify.recv(&mut buf) {
        last.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(last.iter().any(|m| m.contains("STOPPING=1")), "{last:?}");
}

/// The simulated board (host-sim's devices) runs in the daemon: its panel shows the LED,
/// takes a press of the capture button, and its watchdog, starved by a stalled inference
/// loop, ends the process as a board would reset. Time is moved, never waited out.
#[test]
fn the_simulated_board_shows_the_led_captures_on_a_press_and_resets_when_starved() {
    let frames = tempfile::tempdir().unwrap();
    std::fs::copy(sample("pituitary-01.png"), frames.path().join("a.png")).unwrap();
    let launcher = launcher();
    let extra = format!(
        "[camera]\nkind = \"sim\"\ndir = {:?}\n\
         [gpio]\ndriver = \"sim\"\nled = 0\nbuzzer = 1\nbutton = 2\n\
         [watchdog]\ndriver = \"sim\"\ntimeout_s = 10\n\
         [worker]\nlauncher = {launcher:?}\nload_timeout_ms = 120000\ndeadline_floor_ms = 600000\n",
        frames.path().display().to_string()
    );
    let mut d = Daemon::start_with(Opts {
        extra: &extra,
        sim_clock: true,
        ..Opts::default()
    });
    let panel = d.dir.join("state/sim-board");
    let show = |name: &str| std::fs::read_to_string(panel.join(name)).unwrap_or_default();
    let until = Instant::now() + T;
    while show("led") != "on" {
        assert!(Instant::now() < until, "LED never on:\n{}", d.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(show("buzzer"), "off");
    // A press of the capture button classifies a camera frame, sent to every host.
    let mut c = d.client();
    std::fs::write(panel.join("button"), "pressed").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(panel.join("button"), "released").unwrap();
    let r = next_result(&mut c, &d, "the button press");
    assert_eq!(r.source, Source::Camera { capture_id: 0 });
    assert_eq!(r.label.as_str(), "pituitary");
    // Fed while serving; starved with a job stuck in a stopped worker past the stall limit.
    assert!(d.wait_exit(Duration::from_secs(1)).is_none());
    let worker = d.worker_pid();
    signal(worker, libc::SIGSTOP);
    let png = std::fs::read(sample("glioma-01.png")).unwrap();
    let stuck = std::thread::spawn(move || c.classify_bytes("g.png", &png, T));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        d.wait_exit(Duration::from_millis(500)).is_none(),
        "reset while within the limit"
    );
    d.advance_clock(Duration::from_secs(4 * 3600));
    let status = d
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no reset after the watchdog starved:\n{}", d.stderr()));
    assert_eq!(status.code(), Some(75), "{status:?}\n{}", d.stderr());
    assert_eq!(show("watchdog"), "fired");
    assert!(
        d.stderr().contains("simulated watchdog fired"),
        "{}",
        d.stderr()
    );
    assert!(
        stuck.join().unwrap().is_err(),
        "the device went away mid-request"
    );
    signal(worker, libc::SIGCONT);
}

/// The watchdogs are fed only while the inference loop makes progress: a worker stuck in
/// a job past the stall limit starves them (a board then resets), and progress feeds them
/// again. The stall limit is minutes long; the daemon's clock is moved over it.
#[test]
fn a_stalled_inference_loop_starves_the_watchdog_until_it_moves_again() {
    use std::os::unix::net::UnixDatagram;
    let tmp = tempfile::tempdir().unwrap();
    let notify_path = tmp.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let launcher = launcher();
    // A deadline far beyond the test, so that only the watchdog reacts to the stall.
    let extra = format!(
        "[worker]\nlauncher = {launcher:?}\nload_timeout_ms = 120000\ndeadline_floor_ms = 600000\n"
    );
    let mut d = Daemon::configure(
        tmp.path().join("d"),
        Opts {
            extra: &extra,
            sim_clock: true,
            ..Opts::default()
        },
    );
    d.env
        .push(("NOTIFY_SOCKET".into(), notify_path.display().to_string()));
    let d = d.spawn();
    let mut buf = [0u8; 256];
    let mut pets_within = |window: Duration| -> usize {
        let until = Instant::now() + window;
        let mut pets = 0;
        while Instant::now() < until {
            if let Ok(n) = notify.recv(&mut buf) {
                pets += usize::from(String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1"));
            }
        }
        pets
    };
    assert!(pets_within(Duration::from_secs(2)) >= 2, "{}", d.stderr());
    let worker = d.worker_pid();
    signal(worker, libc::SIGSTOP);
    let mut c = d.client();
    let png = std::fs::read(sample("glioma-01.png")).unwrap();
    let request = std::thread::spawn(move || c.classify_bytes("g.png", &png, T));
    // The job is with the stopped worker; within the stall limit the feeding goes on.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        pets_within(Duration::from_secs(1)) >= 2,
        "fed while within the limit"
    );
    d.advance_clock(Duration::from_secs(4 * 3600));
    pets_within(Duration::from_millis(500)); // a pet already queued
    assert_eq!(
        pets_within(Duration::from_secs(2)),
        0,
        "fed while the inference loop is stalled\n{}",
        d.stderr()
    );
    signal(worker, libc::SIGCONT);
    let r = request.join().unwrap();
    let r = r.unwrap_or_else(|e| panic!("{e:?}\n{}", d.stderr()));
    assert_eq!(r.label.as_str(), "glioma");
    assert!(
        pets_within(Duration::from_secs(2)) >= 2,
        "fed again after progress"
    );
}
