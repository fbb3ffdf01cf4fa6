//! A model team's own model: `edgedx bundle init` writes a bundle from ONNX files the
//! project has never seen, and `edgedx preprocess` feeds that model what a PIL /
//! torchvision training pipeline fed it, for every resize mode, filter, range and channel
//! order of `[input]` (tests/python/preprocess_reference.py is the training side).

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::util::{self, ok};

/// Tiny real ONNX classifiers (NCHW and NHWC), labels and images made by the reference
/// script, or `None` (after saying SKIPPED) without the reference python.
fn inputs() -> Option<(tempfile::TempDir, PathBuf)> {
    let python = util::reference_python()?;
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(&python)
        .arg(util::root().join("tests/python/preprocess_reference.py"))
        .arg("inputs")
        .arg(dir.path())
        .output()
        .expect("start python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some((dir, python))
}

/// `edgedx bundle init` of `dir/model` with `dir/labels.txt` into `dir/name`.
fn run_init(dir: &Path, name: &str, model: &str, extra: &[&str]) -> (PathBuf, Output) {
    let bundle = dir.join(name);
    let fp32 = dir.join(model);
    let labels = dir.join("labels.txt");
    let mut args = vec![
        "bundle",
        "init",
        "--fp32",
        fp32.to_str().unwrap(),
        "--labels",
        labels.to_str().unwrap(),
        "--out",
        bundle.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = util::run(&args);
    (bundle, out)
}

/// [`run_init`] that must succeed; returns the bundle and what init printed.
fn init(dir: &Path, name: &str, model: &str, extra: &[&str]) -> (PathBuf, String) {
    let (bundle, out) = run_init(dir, name, model, extra);
    (bundle, ok(&out, "bundle init"))
}

/// Max |edgedx - reference| over the tensors of `images`, relative to the largest value
/// one intensity step can reach (gain / std).
fn compare(python: &Path, bundle: &Path, images: &[PathBuf]) -> (f64, Value) {
    let tensors = bundle.join("tensors.npy");
    let mut args = vec![
        "preprocess".to_string(),
        "--bundle".into(),
        bundle.display().to_string(),
        "--out".into(),
        tensors.display().to_string(),
    ];
    args.extend(images.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&util::run(&args), "preprocess");
    let out = std::process::Command::new(python)
        .arg(util::root().join("tests/python/preprocess_reference.py"))
        .arg("compare")
        .arg(bundle)
        .arg(&tensors)
        .args(images)
        .output()
        .expect("start python");
    let report: Value = serde_json::from_str(&ok(&out, "reference")).unwrap();
    assert_eq!(report["shape"], report["want_shape"], "{report}");
    let diff = report["max_abs_diff"].as_f64().unwrap() / report["scale"].as_f64().unwrap();
    (diff, report)
}

#[test]
fn every_input_mode_matches_a_pil_training_pipeline() {
    let Some((dir, python)) = inputs() else {
        return;
    };
    let d = dir.path();
    let colour = vec![d.join("colour.png"), d.join("grey.png")];
    let imagenet = ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"];
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "stretch-bilinear",
            "tiny-nchw.onnx",
            &["--resize", "stretch"],
        ),
        (
            "crop-bicubic",
            "tiny-nchw.onnx",
            &[
                "--resize",
                "centre-crop",
                "--crop-fraction",
                "0.875",
                "--filter",
                "bicubic",
            ],
        ),
        (
            "crop-whole-short-side-box",
            "tiny-nhwc.onnx",
            &[
                "--resize",
                "centre-crop",
                "--crop-fraction",
                "1",
                "--filter",
                "box",
            ],
        ),
        (
            "letterbox-lanczos",
            "tiny-nhwc.onnx",
            &[
                "--resize",
                "letterbox",
                "--pad",
                "0.447",
                "--filter",
                "lanczos",
            ],
        ),
        (
            "stretch-nearest",
            "tiny-nchw.onnx",
            &["--resize", "stretch", "--filter", "nearest"],
        ),
        (
            "crop-hamming-bgr",
            "tiny-nchw.onnx",
            &[
                "--resize",
                "centre-crop",
                "--crop-fraction",
                "0.9",
                "--filter",
                "hamming",
                "--colour",
                "bgr",
            ],
        ),
    ];
    for (name, model, extra) in cases {
        let mut args = extra.to_vec();
        args.extend_from_slice(&imagenet);
        let (bundle, _) = init(d, name, model, &args);
        let (diff, report) = compare(&python, &bundle, &colour);
        eprintln!("{name}: max |edgedx - PIL| {diff:.2e} of the input range ({report})");
        assert!(diff < 1e-5, "{name}: {report}");
    }
    // 0-255 models (Caffe / Keras style): the mean and std are in byte units.
    let (bundle, _) = init(
        d,
        "bytes-bgr",
        "tiny-nhwc.onnx",
        &[
            "--resize",
            "stretch",
            "--range",
            "0-255",
            "--colour",
            "bgr",
            "--mean",
            "103.94,116.78,123.68",
            "--std",
            "1,1,1",
        ],
    );
    let (diff, report) = compare(&python, &bundle, &colour);
    assert!(diff < 1e-5, "0-255: {report}");
}

#[test]
fn init_reads_the_graph_and_asks_only_for_what_it_cannot_say() {
    let Some((dir, _python)) = inputs() else {
        return;
    };
    let d = dir.path();
    let (bundle, stdout) = init(
        d,
        "team-model-2",
        "tiny-nhwc.onnx",
        &[
            "--resize",
            "stretch",
            "--mean",
            "0.5,0.5,0.5",
            "--std",
            "0.25,0.25,0.25",
        ],
    );
    assert!(stdout.contains("NHWC 64x64x3 rgb"), "{stdout}");
    assert!(stdout.contains("batch 2: yes"), "{stdout}");
    let b = edgedx_bundle::Bundle::open(&bundle).unwrap();
    let m = b.manifest();
    assert_eq!(m.input.tensor, "image");
    assert_eq!(m.input.layout, edgedx_bundle::Layout::Nhwc);
    assert_eq!(
        (m.input.height, m.input.width, m.input.channels),
        (64, 64, 3)
    );
    assert_eq!(m.output.tensor, "logits");
    assert_eq!(m.output.kind, edgedx_bundle::OutputKind::Logits);
    assert_eq!(m.bundle.labels, ["red", "green", "blue", "other"]);
    assert_eq!(m.bundle.name, "team-model-2");
    assert!(!m.models.contains_key("int8"), "{stdout}");
    assert_eq!(
        m.models["fp32"].sha256,
        edgedx_bundle::sha256_hex(&std::fs::read(d.join("tiny-nhwc.onnx")).unwrap())
    );
    assert!(
        stdout.contains("quantize"),
        "the next step is named: {stdout}"
    );
    // The model card is left for the team, and signing waits for it and for int8.
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("k.pem");
    ok(
        &util::run(&["bundle", "keygen", "--out", key.to_str().unwrap()]),
        "keygen",
    );
    let out = util::run(&[
        "bundle",
        "sign",
        "--bundle",
        bundle.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("model_card.summary"), "{stderr}");
    assert!(stderr.contains("models.int8"), "{stderr}");

    // What the graph does not say is asked for, by name; what contradicts it is refused.
    let refused = |extra: &[&str], needle: &str| {
        let (out_dir, out) = run_init(d, "refused", "tiny-nchw.onnx", extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{extra:?}");
        assert!(stderr.contains(needle), "{extra:?}: {stderr}");
        assert!(!out_dir.exists(), "{extra:?} left a directory behind");
    };
    refused(&["--mean", "0,0,0", "--std", "1,1,1"], "--resize");
    refused(
        &["--resize", "stretch", "--mean", "0.5", "--std", "0.25"],
        "input.mean",
    );
    refused(
        &[
            "--resize",
            "centre-crop",
            "--mean",
            "0,0,0",
            "--std",
            "1,1,1",
        ],
        "crop_fraction",
    );
    refused(
        &[
            "--resize", "stretch", "--mean", "0,0,0", "--std", "1,1,1", "--height", "32",
        ],
        "contradicts",
    );
    refused(
        &[
            "--resize", "stretch", "--mean", "0,0,0", "--std", "1,1,1", "--colour", "grey",
        ],
        "--colour",
    );
    // An existing bundle is never overwritten.
    let (existing, _) = init(
        d,
        "existing",
        "tiny-nchw.onnx",
        &["--resize", "stretch", "--mean", "0,0,0", "--std", "1,1,1"],
    );
    let fp32 = d.join("tiny-nchw.onnx");
    let labels = d.join("labels.txt");
    let out = util::run(&[
        "bundle",
        "init",
        "--fp32",
        fp32.to_str().unwrap(),
        "--labels",
        labels.to_str().unwrap(),
        "--out",
        existing.to_str().unwrap(),
        "--resize",
        "stretch",
        "--mean",
        "0,0,0",
        "--std",
        "1,1,1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
}

#[test]
fn init_and_add_make_the_default_models_a_servable_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, "glioma\nmeningioma\nnotumor\npituitary\n").unwrap();
    let source = util::default_bundle();
    let bundle = dir.path().join("mri");
    let stdout = ok(
        &util::run(&[
            "bundle",
            "init",
            "--fp32",
            source.join("fp32.onnx").to_str().unwrap(),
            "--labels",
            labels.to_str().unwrap(),
            "--out",
            bundle.to_str().unwrap(),
            "--resize",
            "stretch",
            "--mean",
            "0",
            "--std",
            "1",
        ]),
        "init",
    );
    assert!(stdout.contains("NCHW 128x128x1 grey"), "{stdout}");
    // The int8 file arrives later, as models/quantize adds it.
    let stdout = ok(
        &util::run(&[
            "bundle",
            "add",
            "--bundle",
            bundle.to_str().unwrap(),
            source.join("int8-qdq.onnx").to_str().unwrap(),
        ]),
        "add",
    );
    assert!(stdout.contains("int8 qdq"), "{stdout}");
    let b = edgedx_bundle::Bundle::open(&bundle).unwrap();
    assert_eq!(
        b.variant("int8").unwrap().quantization,
        edgedx_bundle::Quantization::Qdq
    );
    // Same preprocessing as the shipped bundle: the same classes for every sample.
    let samples: Vec<String> = std::fs::read_dir(source.join("samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png" || e == "dcm"))
        .map(|p| p.display().to_string())
        .collect();
    let classes = |bundle: &Path| {
        let mut args = vec!["classify", "--json", "--bundle", bundle.to_str().unwrap()];
        args.extend(samples.iter().map(String::as_str));
        let out = util::run(&args);
        util::json_lines(&out)
            .iter()
            .map(|l| l["label"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    let new = classes(&bundle);
    assert_eq!(new.len(), samples.len());
    assert_eq!(new, classes(&source));
    // A file with another interface is refused, and the manifest is left as it was.
    let before = std::fs::read(bundle.join("manifest.toml")).unwrap();
    let vgg_like = dir.path().join("other.onnx");
    std::fs::write(&vgg_like, b"not a model").unwrap();
    let out = util::run(&[
        "bundle",
        "add",
        "--bundle",
        bundle.to_str().unwrap(),
        "--variant",
        "int8",
        vgg_like.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read(bundle.join("manifest.toml")).unwrap(), before);
}

#[test]
fn a_model_that_does_not_run_changes_nothing_in_the_bundle() {
    let Some((dir, _python)) = inputs() else {
        return;
    };
    let d = dir.path();
    let (bundle, _) = init(
        d,
        "team",
        "tiny-nchw.onnx",
        &["--resize", "stretch", "--mean", "0,0,0", "--std", "1,1,1"],
    );
    let add = |file: &Path| {
        util::run(&[
            "bundle",
            "add",
            "--bundle",
            bundle.to_str().unwrap(),
            "--variant",
            "alt",
            file.to_str().unwrap(),
        ])
    };
    ok(&add(&d.join("tiny-nchw.onnx")), "add a model that runs");
    let listing = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = (
        listing(&bundle),
        std::fs::read(bundle.join("manifest.toml")).unwrap(),
        std::fs::read(bundle.join("alt.onnx")).unwrap(),
    );
    // Same input and output, an operator the engine cannot run: refused, and the
    // variant it would replace, the manifest and the directory stay as they were.
    let out = add(&d.join("broken-nchw.onnx"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not load"), "{stderr}");
    let after = (
        listing(&bundle),
        std::fs::read(bundle.join("manifest.toml")).unwrap(),
        std::fs::read(bundle.join("alt.onnx")).unwrap(),
    );
    assert!(
        before == after,
        "the bundle changed: {:?} -> {:?}",
        before.0,
        after.0
    );
}
