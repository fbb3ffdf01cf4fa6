//! The model team's documented flow (models/README.md), end to end with the real commands:
//! `bundle init` from an fp32 ONNX file with real weights, `models/quantize/quantize.sh` on
//! a calibration set balanced across strata, `gate --write` on a labelled test set,
//! `info --memory --write`, the model card filled in, `bundle keygen`, `sign`, `verify`,
//! and the daemon serving the signed, approved int8 model.
//!
//! The labelled sets are built at test time from the real brain volumes in ../shared by
//! models/pipeline/make_dataset.py (small splits); the network is the default bundle's
//! fp32 model, taken as a team would bring it: a bare ONNX file and a labels file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use edgedx_icd::Precision;

use crate::daemon::{Daemon, Opts, T};
use crate::util;

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs one step, printing how long it took (the closing notes quote these).
fn step<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    eprintln!("step {name}: {:.1} s", started.elapsed().as_secs_f64());
    out
}

/// The edgedx command line as a string, with the qemu runner in front when there is one.
fn edgedx_command() -> String {
    let exe = util::edgedx_exe().display().to_string();
    match std::env::var("EDGEDX_TEST_RUNNER") {
        Ok(r) if !r.trim().is_empty() => format!("{r} {exe}"),
        _ => exe,
    }
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_new_model_becomes_a_signed_approved_served_bundle_with_the_documented_commands() {
    let Some(brain) = util::shared("data/brain") else {
        return;
    };
    let Some(python) = util::reference_python() else {
        return;
    };
    let root = util::root();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();

    // What a team has: an fp32 ONNX file, its labels, and labelled images.
    let fp32 = w.join("my-model.onnx");
    std::fs::copy(root.join("models/brain-mri-4class/fp32.onnx"), &fp32).unwrap();
    let labels = w.join("labels.txt");
    std::fs::write(&labels, "glioma\nmeningioma\nnotumor\npituitary\n").unwrap();
    let data = w.join("data");
    step("make the labelled sets", || {
        ok(
            Command::new(&python)
                .arg(root.join("models/pipeline/make_dataset.py"))
                .args(["--data", arg(&brain), "--out", arg(&data)])
                .args(["--splits", "calibration,test", "--per-stratum", "16"])
                .output()
                .unwrap(),
            "make_dataset.py",
        )
    });

    let bundle = w.join("my-bundle");
    let sample = data.join("test/glioma/glioma-00001.png");
    let init = step("bundle init", || {
        ok(
            util::run(&[
                "bundle",
                "init",
                "--fp32",
                arg(&fp32),
                "--labels",
                arg(&labels),
                "--out",
                arg(&bundle),
                "--resize",
                "stretch",
                "--mean",
                "0",
                "--std",
                "1",
                "--sample",
                arg(&sample),
            ]),
            "bundle init",
        )
    });
    assert!(init.contains("models/quantize/quantize.sh"), "{init}");

    let quantized = step("quantize", || {
        ok(
            Command::new(root.join("models/quantize/quantize.sh"))
                .args(["--bundle", arg(&bundle), "--calibration"])
                .arg(data.join("calibration"))
                .args(["--edgedx", &edgedx_command()])
                // The test venv already holds the pinned stack.
                .env(
                    "EDGEDX_QUANTIZE_VENV",
                    python.parent().unwrap().parent().unwrap(),
                )
                .output()
                .unwrap(),
            "quantize.sh",
        )
    });
    for stratum in ["artifact", "normal", "obvious", "subtle"] {
        assert!(
            quantized.contains(&format!("{stratum:<16} drew   16 of    16")),
            "balanced draw reported per stratum: {quantized}"
        );
    }
    let b = edgedx_bundle::Bundle::open(&bundle).unwrap();
    assert_eq!(
        b.variant("int8").unwrap().quantization,
        edgedx_bundle::Quantization::Qdq
    );
    assert!(bundle.join("calibration.json").is_file());

    let gate = step("gate --write", || {
        util::run(&[
            "gate",
            "--json",
            "--write",
            "--bundle",
            arg(&bundle),
            "--dataset",
            arg(&data.join("test")),
        ])
    });
    let report: serde_json::Value = serde_json::from_str(&ok(gate, "gate")).unwrap();
    assert_eq!(report["verdict"], "approved", "{report}");
    assert_eq!(report["images"], 64);

    let mut memory = vec![
        "info".to_string(),
        "--memory".into(),
        "--write".into(),
        "--bundle".into(),
        bundle.display().to_string(),
    ];
    if let Ok(r) = std::env::var("EDGEDX_TEST_RUNNER") {
        if !r.trim().is_empty() {
            memory.extend(["--worker-launcher".into(), r]);
        }
    }
    step("info --memory --write", || {
        ok(
            util::run(&memory.iter().map(String::as_str).collect::<Vec<_>>()),
            "info --memory",
        )
    });

    // The team writes its model card (by hand in real life).
    let manifest = bundle.join("manifest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let filled: String = text
        .lines()
        .map(|l| match l.split_once(" = \"TODO") {
            Some((key, _)) => format!("{key} = \"written by the team for {key}\""),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    std::fs::write(&manifest, filled).unwrap();

    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("team.pem");
    let keygen = ok(
        util::run(&["bundle", "keygen", "--out", arg(&key)]),
        "keygen",
    );
    let public = keygen
        .split('"')
        .find(|s| s.starts_with("ed25519:"))
        .unwrap()
        .to_string();
    step("sign", || {
        ok(
            util::run(&[
                "bundle",
                "sign",
                "--bundle",
                arg(&bundle),
                "--key",
                arg(&key),
            ]),
            "sign",
        )
    });
    ok(
        util::run(&[
            "bundle",
            "verify",
            "--bundle",
            arg(&bundle),
            "--trusted-key",
            &public,
        ]),
        "verify",
    );

    // The device: trusts the key, serves the approved int8 model.
    let top = format!("trusted_keys = [{public:?}]");
    let d = Daemon::start_with(Opts {
        bundle: Some(&bundle),
        top: &top,
        ..Opts::default()
    });
    let mut c = d.client();
    let image: PathBuf = data.join("test/pituitary/pituitary-00001.png");
    let r = c
        .classify_bytes("p.png", &std::fs::read(&image).unwrap(), T)
        .unwrap();
    assert_eq!(r.precision, Precision::Int8, "{r:?}");
    assert!(
        ["glioma", "meningioma", "notumor", "pituitary"].contains(&r.label.as_str()),
        "{r:?}"
    );
}
