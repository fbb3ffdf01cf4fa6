//! Issue-4 safety behaviour with the real daemon: signed bundles, accuracy-gate approval,
//! the watchdog's fp32 fallback, and the memory gate that refuses fp32 when it does not fit.

use std::time::Duration;

use edgedx_icd::{FallbackReason, Precision, PrecisionReason};

use crate::daemon::{sample, signal, Daemon, Opts, T};
use crate::util;

/// keygen + sign a copy of the default bundle with the real CLI; returns (bundle, public key).
fn signed_bundle() -> (tempfile::TempDir, tempfile::TempDir, String) {
    let bundle = util::copy_bundle();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("model-team.pem");
    let out = util::run(&["bundle", "keygen", "--out", key.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let public = text
        .split('"')
        .find(|s| s.starts_with("ed25519:"))
        .unwrap_or_else(|| panic!("no public key printed: {text}"))
        .to_string();
    let out = util::run(&[
        "bundle",
        "sign",
        "--bundle",
        bundle.path().to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (bundle, keys, public)
}

#[test]
fn signed_bundle_serves_and_a_tampered_one_is_refused() {
    let (bundle, _keys, public) = signed_bundle();
    let top = format!("trusted_keys = [{public:?}]");
    let d = Daemon::start_with(Opts {
        bundle: Some(bundle.path()),
        top: &top,
        ..Opts::default()
    });
    let mut c = d.client();
    let r = c
        .classify_bytes("g.png", &std::fs::read(sample("glioma-01.png")).unwrap(), T)
        .unwrap();
    assert_eq!(r.label.as_str(), "glioma");
    assert!(d.audit().contains("\"signature\":\"key "), "{}", d.audit());
    drop(c);
    drop(d);

    // The int8 file changed on disk after signing: refused at start, nothing loaded.
    let int8 = bundle.path().join("int8.onnx");
    let mut bytes = std::fs::read(&int8).unwrap();
    let n = bytes.len() / 2;
    bytes[n] ^= 0x01;
    std::fs::write(&int8, bytes).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::configure(
        tmp.path().to_path_buf(),
        Opts {
            bundle: Some(bundle.path()),
            top: &top,
            ..Opts::default()
        },
    );
    let out = util::edgedx()
        .args(["serve", "--config", d.config.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("refused") && err.contains("int8.onnx"),
        "{err}"
    );
    assert!(!d.socket.exists());

    // An intact bundle signed by a key the device does not trust is refused too.
    let (other_bundle, _other_keys, other_key) = signed_bundle();
    assert_ne!(other_key, public);
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::configure(
        tmp.path().to_path_buf(),
        Opts {
            bundle: Some(other_bundle.path()),
            top: &top,
            ..Opts::default()
        },
    );
    let out = util::edgedx()
        .args(["serve", "--config", d.config.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("refused"), "{err}");
}

#[test]
fn unapproved_int8_is_not_served_fp32_answers_instead() {
    let bundle = util::copy_bundle();
    let manifest = bundle.path().join("manifest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    // The approval names another file: as if int8.onnx was re-quantized after the gate.
    let approved = text.split("int8_sha256 = \"").nth(1).unwrap()[..64].to_string();
    std::fs::write(
        &manifest,
        text.replace(
            &format!("int8_sha256 = \"{approved}\""),
            &format!("int8_sha256 = \"{}\"", "0".repeat(64)),
        ),
    )
    .unwrap();
    let d = Daemon::start_with(Opts {
        bundle: Some(bundle.path()),
        ..Opts::default()
    });
    let mut c = d.client();
    let r = c
        .classify_bytes("g.png", &std::fs::read(sample("glioma-01.png")).unwrap(), T)
        .unwrap();
    assert_eq!(r.precision, Precision::Fp32);
    assert_eq!(
        r.precision_reason,
        PrecisionReason::Fallback {
            reason: FallbackReason::Unapproved
        }
    );
    assert!(
        d.stderr().contains("edgedx gate"),
        "the log says what to run:\n{}",
        d.stderr()
    );

    // The same with no room for fp32: refuse to start, saying what to run.
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::configure(
        tmp.path().to_path_buf(),
        Opts {
            bundle: Some(bundle.path()),
            extra: "[memory]\nfp32_need_mib = 4000\n",
            ..Opts::default()
        },
    );
    let out = util::edgedx()
        .args(["serve", "--config", d.config.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not approved") && err.contains("edgedx gate"),
        "{err}"
    );
}

/// Deadline settings that make a hang visible quickly: 3 s natively, longer under qemu
/// where one inference takes about half a second.
fn fast_watchdog() -> String {
    let launcher = crate::daemon::launcher();
    let floor = if launcher.is_empty() { 3000 } else { 15000 };
    format!("[worker]\nlauncher = {launcher:?}\nload_timeout_ms = 120000\ndeadline_floor_ms = {floor}\ndeadline_factor = 4.0\nretries = 1\n")
}

#[test]
fn hung_int8_worker_falls_back_to_fp32_within_the_deadline() {
    let extra = fast_watchdog() + "[fallback]\nafter_failures = 1\ncooldown_s = 3600\n";
    let d = Daemon::start_with(Opts {
        extra: &extra,
        ..Opts::default()
    });
    let mut c = d.client();
    let worker = d.worker_pid();
    signal(worker, libc::SIGSTOP);
    let started = std::time::Instant::now();
    let r = c
        .classify_bytes("g.png", &std::fs::read(sample("glioma-01.png")).unwrap(), T)
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.precision, Precision::Fp32);
    assert_eq!(
        r.precision_reason,
        PrecisionReason::Fallback {
            reason: FallbackReason::Hang
        }
    );
    assert_eq!(r.label.as_str(), "glioma");
    // Deadline + fp32 load + one inference; far below the client's own timeout.
    assert!(took < Duration::from_secs(90), "{took:?}");
    let s = c.status(T).unwrap();
    assert_eq!(s.mode, Precision::Fp32);
    assert_eq!(s.fallbacks, 1);
    // The next request stays on fp32 (no flapping back before the cool-down).
    let r = c
        .classify_bytes(
            "m.png",
            &std::fs::read(sample("meningioma-01.png")).unwrap(),
            T,
        )
        .unwrap();
    assert_eq!(r.precision, Precision::Fp32);
    let audit = d.audit();
    assert!(
        audit.contains("worker_failed") && audit.contains("fallback_fp32"),
        "{audit}"
    );
    assert!(
        audit.contains("\"cooldown_s\":3600"),
        "the audit says how long fp32 serves: {audit}"
    );
}

/// The fallback ends after its cool-down even when requests never stop (the dispatcher is
/// never idle under steady load), and not before. The daemon runs on a clock the test
/// moves: an hour's cool-down is crossed in one step instead of waited out.
#[test]
fn fp32_fallback_returns_to_int8_after_the_cooldown_under_steady_load() {
    let extra = fast_watchdog() + "[fallback]\nafter_failures = 1\ncooldown_s = 3600\n";
    let d = Daemon::start_with(Opts {
        extra: &extra,
        sim_clock: true,
        ..Opts::default()
    });
    let mut c = d.client();
    signal(d.worker_pid(), libc::SIGSTOP);
    let png = std::fs::read(sample("glioma-01.png")).unwrap();
    let r = c.classify_bytes("g.png", &png, T).unwrap();
    assert_eq!(r.precision, Precision::Fp32);
    // Back-to-back requests within the cool-down stay on fp32.
    d.advance_clock(Duration::from_secs(3590));
    for _ in 0..3 {
        let r = c.classify_bytes("g.png", &png, T).unwrap();
        assert_eq!(
            r.precision,
            Precision::Fp32,
            "int8 back before the cool-down ended"
        );
    }
    d.advance_clock(Duration::from_secs(10));
    let mut fp32_after = 0;
    loop {
        let r = c.classify_bytes("g.png", &png, T).unwrap();
        if r.precision == Precision::Int8 {
            break;
        }
        fp32_after += 1;
        // Requests already queued when the cool-down ended may still get fp32 answers
        // while int8 loads; a handful, not a stream.
        assert!(
            fp32_after < 20,
            "still on fp32 20 requests after the cool-down ended\n{}",
            d.audit()
        );
    }
    let audit = d.audit();
    let fell = audit.find("fallback_fp32").expect("audited switch to fp32");
    let back = audit.find("back_to_int8").expect("audited return to int8");
    assert!(fell < back, "{audit}");
}

#[test]
fn hung_int8_worker_without_room_for_fp32_gives_errors_and_an_alert() {
    // No retry on a fresh int8 worker, so the hang itself must be answered.
    let extra =
        fast_watchdog().replace("retries = 1", "retries = 0") + "[memory]\nfp32_need_mib = 4000\n";
    let d = Daemon::start_with(Opts {
        extra: &extra,
        ..Opts::default()
    });
    let mut c = d.client();
    let worker = d.worker_pid();
    signal(worker, libc::SIGSTOP);
    let e = c
        .classify_bytes("g.png", &std::fs::read(sample("glioma-01.png")).unwrap(), T)
        .unwrap_err();
    assert!(
        format!("{e}").contains("ModelFailed"),
        "an explicit error, not a silent answer: {e}"
    );
    let s = c.status(T).unwrap();
    assert!(s.alert.contains("fp32 not allowed"), "{s:?}");
    assert_eq!(s.mode, Precision::Int8, "{s:?}");
    let audit = d.audit();
    assert!(audit.contains("fallback_refused"), "{audit}");
    assert!(
        !audit.contains("\"precision\":\"fp32\""),
        "fp32 must not load: {audit}"
    );
    // int8 keeps being tried: the next request runs on a fresh int8 worker.
    let r = c
        .classify_bytes(
            "m.png",
            &std::fs::read(sample("meningioma-01.png")).unwrap(),
            T,
        )
        .unwrap();
    assert_eq!(r.precision, Precision::Int8);
    assert_eq!(r.label.as_str(), "meningioma");
}

#[test]
fn an_input_that_breaks_the_worker_memory_limit_while_decoding_is_refused_and_int8_keeps_serving() {
    // The worker's heap limit counts the guest's heap, natively and under qemu alike.
    let limit = 64;
    // Decoding 36 Mpx takes seconds under qemu: a long deadline keeps this about memory.
    let extra = format!(
        "[limits]\nmax_pixels = 40000000\n[memory]\nworker_limit_mib = {limit}\nsupervisor_mib = 128\nbudget_mib = 384\n{}",
        fast_watchdog().replace("deadline_floor_ms = 3000", "deadline_floor_ms = 120000").replace("deadline_floor_ms = 15000", "deadline_floor_ms = 120000")
    );
    let d = Daemon::start_with(Opts {
        extra: &extra,
        ..Opts::default()
    });
    let mut c = d.client();
    // 36 Mpx: admitted by the pixel limit, but decoding it (36 MiB of grey + 144 MiB as
    // f32) goes past the worker's limit.
    let (w, h) = (6000u32, 6000u32);
    let img =
        image::GrayImage::from_fn(w, h, |x, y| image::Luma([((x / 40 + y / 40) % 256) as u8]));
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let e = match c.classify_bytes("huge.png", png.get_ref(), T) {
        Err(e) => e,
        Ok(r) => panic!(
            "answered past the limit: {r:?}\n{}\n{}",
            d.stderr(),
            d.audit()
        ),
    };
    let text = format!("{e}");
    assert!(
        text.contains("TooLarge") && text.contains("memory limit") && text.contains("huge.png"),
        "the input's fault, named: {text}\n{}",
        d.stderr()
    );
    let audit = d.audit();
    assert!(audit.contains("while decoding huge.png"), "{audit}");
    // The input's fault, not the model's: with `after_failures = 1` one int8 failure
    // would switch to fp32, and this must not.
    assert!(!audit.contains("fallback_fp32"), "{audit}");
    let s = c.status(T).unwrap();
    assert_eq!((s.mode, s.fallbacks), (Precision::Int8, 0), "{s:?}");
    // The daemon, its link and the next request are fine, still on int8.
    let r = c
        .classify_bytes("g.png", &std::fs::read(sample("glioma-01.png")).unwrap(), T)
        .unwrap();
    assert_eq!(r.label.as_str(), "glioma");
    assert_eq!(r.precision, Precision::Int8);
}

#[test]
fn shadow_validation_compares_int8_with_fp32_and_reports_in_status() {
    let d = Daemon::start_with(Opts {
        extra: "[shadow]\nrate = 1.0\nwindow = 10\nmin_samples = 2\nthreshold = 0.05\n",
        ..Opts::default()
    });
    let mut c = d.client();
    let files = ["glioma-01.png", "meningioma-01.png", "pituitary-02.dcm"];
    for f in files {
        let r = c
            .classify_bytes(f, &std::fs::read(sample(f)).unwrap(), T)
            .unwrap();
        // The answer is int8's; the fp32 run is a check beside it.
        assert_eq!(r.precision, Precision::Int8);
        assert_eq!(r.precision_reason, PrecisionReason::Normal);
        c.ack(r.result_id).unwrap();
    }
    let s = c.status(T).unwrap();
    assert_eq!(s.shadow_checked, files.len() as u32, "{s:?}");
    // On these samples both models agree (tests/golden), so no disagreement and no alert.
    assert_eq!(s.shadow_disagreements, 0, "{s:?}");
    assert!(s.alert.is_empty(), "{s:?}");
    let audit = d.audit();
    assert_eq!(
        audit.matches("\"precision\":\"fp32-shadow\"").count(),
        1,
        "one shadow fp32 worker, kept resident: {audit}"
    );
    assert!(!audit.contains("shadow_disagreement"), "{audit}");
}
