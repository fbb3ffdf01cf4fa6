//! `edgedx classify` and `edgedx info` as a user runs them: the real binary, real files.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::util;

fn samples() -> Vec<PathBuf> {
    let dir = util::default_bundle().join("samples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("samples dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("png" | "dcm")))
        .collect();
    files.sort();
    files
}

fn as_args(paths: &[PathBuf]) -> Vec<String> {
    paths.iter().map(|p| p.display().to_string()).collect()
}

fn classify_json(extra: &[&str], files: &[String]) -> (std::process::Output, Vec<Value>) {
    let mut args = vec!["classify", "--json"];
    args.extend_from_slice(extra);
    args.extend(files.iter().map(String::as_str));
    let out = util::run(&args);
    let lines = util::json_lines(&out);
    (out, lines)
}

/// The class each sample must get: its true label, the file name's prefix. onnxruntime
/// gives the same class for every sample with both models (samples/README.md; the golden
/// test checks the PNGs against onnxruntime's outputs directly). Running this on the host and
/// under qemu-aarch64 is what shows the two builds agree.
fn expected_label(file: &Path) -> &str {
    let name = file.file_name().unwrap().to_str().unwrap();
    name.split('-').next().unwrap()
}

#[test]
fn samples_get_their_expected_class_with_both_precisions() {
    let files = samples();
    assert!(files.len() >= 4, "the bundle ships at least four samples");
    for precision in ["int8", "fp32"] {
        let (out, lines) = classify_json(&["--precision", precision], &as_args(&files));
        assert_eq!(
            out.status.code(),
            Some(0),
            "stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(lines.len(), files.len());
        for (file, line) in files.iter().zip(&lines) {
            let want = expected_label(file);
            assert_eq!(
                line["label"],
                want,
                "{} with {precision}: {line}",
                file.display()
            );
            assert_eq!(line["precision"], precision);
            let probs: Vec<f64> = line["probabilities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["probability"].as_f64().unwrap())
                .collect();
            assert_eq!(probs.len(), 4);
            assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{line}");
            let conf = line["confidence"].as_f64().unwrap();
            assert!(
                probs.iter().all(|p| *p <= conf + 1e-9),
                "confidence is the top probability"
            );
            assert_eq!(line["model_sha256"].as_str().unwrap().len(), 64);
            assert_eq!(line["input_sha256"].as_str().unwrap().len(), 64);
            assert!(line["latency_ms"].as_f64().unwrap() > 0.0);
        }
    }
}

#[test]
fn bad_files_get_an_error_line_and_do_not_stop_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.png");
    std::fs::write(&garbage, b"\x89PNG\r\n\x1a\n this is not really a png").unwrap();
    let empty = dir.path().join("empty.dcm");
    std::fs::write(&empty, b"").unwrap();
    let missing = dir.path().join("missing.jpg");
    let good = samples()
        .into_iter()
        .find(|p| p.extension().unwrap() == "png")
        .unwrap();
    let files = as_args(&[garbage.clone(), empty, missing, good]);
    let (out, lines) = classify_json(&[], &files);
    assert_eq!(out.status.code(), Some(2), "exit 2 when any file failed");
    assert_eq!(lines.len(), 4);
    for line in &lines[..3] {
        let kind = line["error"]["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{line}"));
        let message = line["error"]["message"].as_str().unwrap();
        assert!(
            !kind.is_empty() && message.contains(line["file"].as_str().unwrap()),
            "the message names the file: {line}"
        );
    }
    assert_eq!(lines[2]["error"]["kind"], "io");
    assert!(
        lines[3]["label"].is_string(),
        "the good file after the bad ones is classified"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn oversized_images_are_refused_before_decoding() {
    let good = samples()
        .into_iter()
        .find(|p| p.extension().unwrap() == "png")
        .unwrap();
    let (out, lines) = classify_json(&["--max-pixels", "1000"], &as_args(&[good]));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(lines[0]["error"]["kind"], "too_large", "{}", lines[0]);
}

fn assert_clean_failure(out: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "setup errors exit 1: {stderr}");
    assert!(
        stderr.contains(needle),
        "stderr should mention {needle:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn truncated_and_malformed_models_give_a_clear_error() {
    let sample = as_args(&samples()[..1]);
    let int8 = util::default_bundle().join("int8.onnx");
    let bytes = std::fs::read(&int8).unwrap();
    // Truncations at several depths hit different failure paths (protobuf, graph, weights).
    for cut in [16, bytes.len() / 3, bytes.len() - 100] {
        let dir = util::copy_bundle();
        std::fs::write(dir.path().join("int8.onnx"), &bytes[..cut]).unwrap();
        util::rehash(dir.path(), "int8");
        let bundle = dir.path().display().to_string();
        let mut args = vec!["classify", "--bundle", bundle.as_str()];
        args.extend(sample.iter().map(String::as_str));
        let out = util::run(&args);
        assert_clean_failure(&out, "int8.onnx");
    }
    let dir = util::copy_bundle();
    std::fs::write(
        dir.path().join("int8.onnx"),
        b"definitely not protobuf \xff\xff\xff\xff",
    )
    .unwrap();
    util::rehash(dir.path(), "int8");
    let bundle = dir.path().display().to_string();
    let out = util::run(&["info", "--bundle", &bundle]);
    assert_clean_failure(&out, "not a loadable ONNX model");
}

#[test]
fn a_model_file_changed_after_approval_is_refused() {
    let dir = util::copy_bundle();
    let int8 = dir.path().join("int8.onnx");
    let mut bytes = std::fs::read(&int8).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&int8, bytes).unwrap();
    let bundle = dir.path().display().to_string();
    let out = util::run(&["info", "--bundle", &bundle]);
    assert_clean_failure(&out, "sha256");
}

#[test]
fn info_reports_kernels_cpu_and_strategy_and_loads_fp32_only_on_request() {
    let out = util::run(&["info", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    let models = info["models"].as_array().unwrap();
    assert_eq!(models.len(), 1, "only int8 is loaded by default");
    assert_eq!(models[0]["variant"], "int8");
    assert!(
        !models[0]["kernels"].as_array().unwrap().is_empty(),
        "{info}"
    );
    assert_eq!(info["cpu"]["arch"], std::env::consts::ARCH);
    assert_eq!(info["bundle"]["labels"].as_array().unwrap().len(), 4);
    let out = util::run(&[
        "info",
        "--json",
        "--precision",
        "int8",
        "--precision",
        "fp32",
    ]);
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["models"].as_array().unwrap().len(), 2);
}

/// Files in ../shared/data/dicom that cannot give an image, and why (SURVEY.tsv there:
/// pydicom fails on the first, the plan has no pixels, and no_meta.dcm starts with a stray
/// byte before a data set without file meta, from which pydicom reads no attribute either).
const MUST_FAIL: [(&str, &str); 3] = [
    ("MR_truncated.dcm", "truncated"),
    ("rtplan.dcm", "no_pixel_data"),
    ("no_meta.dcm", "unrecognised_format"),
];

#[test]
fn the_whole_shared_dicom_corpus_runs_without_a_panic() {
    let Some(dir) = util::shared("data/dicom") else {
        return;
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("dcm"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 15,
        "expected the shared corpus, found {}",
        files.len()
    );
    let (out, lines) = classify_json(&[], &as_args(&files));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "some files must fail: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(lines.len(), files.len(), "one line per file");
    for (file, line) in files.iter().zip(&lines) {
        let name = file.file_name().unwrap().to_str().unwrap();
        match MUST_FAIL.iter().find(|(n, _)| *n == name) {
            Some((_, kind)) => {
                assert_eq!(line["error"]["kind"], *kind, "{name}: {line}");
                let message = line["error"]["message"].as_str().unwrap();
                assert!(
                    message.contains(name),
                    "the message names the file: {message}"
                );
            }
            None => assert!(line["label"].is_string(), "{name} should classify: {line}"),
        }
    }
}
