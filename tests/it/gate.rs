//! `edgedx gate`: the accuracy gate approves the default bundle, rejects a damaged int8
//! model and a batch-dependent one with the reason, writes an [approval] that parses back,
//! and names the labels.csv line of a bad label.
//!
//! The labelled set is generated at test time in a temp dir (derived files stay out of
//! git): the bundle's sample images with their true labels (file-name prefix) plus flipped
//! and shifted copies of the PNGs, 26 images in all. With EDGEDX_GATE_DATASET (or the
//! pipeline's git-ignored test split present) the host run also gates the default bundle on
//! the real 800-image split.
//!
//! Under qemu-user a test that runs the gate on those 26 images took two to six minutes
//! (four inferences per image), so the aarch64 half runs only the tests that stop before the
//! run or use a small built model. What the gate decides from aarch64 kernels is checked by
//! `model_team`, which gates and serves a bundle on that target; the gate's metrics,
//! layouts and reports are the same code on every target.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::util;

/// Labels of the default bundle, in its order.
const LABELS: [&str; 4] = ["glioma", "meningioma", "notumor", "pituitary"];

/// Writes the generated labelled set into `dir`: every sample as is, and for each PNG five
/// transformed copies (mirror, 4-pixel shifts each way, a 10% darker copy).
fn make_dataset(dir: &Path) {
    let samples = util::default_bundle().join("samples");
    let mut rows = vec!["file,label,class_index,stratum".to_string()];
    let mut names: Vec<PathBuf> = std::fs::read_dir(&samples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("png" | "dcm")))
        .collect();
    names.sort();
    for path in names {
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        let label = LABELS
            .iter()
            .position(|l| file.starts_with(&format!("{l}-")))
            .unwrap_or_else(|| panic!("{file}: no label prefix"));
        std::fs::copy(&path, dir.join(&file)).unwrap();
        rows.push(format!("{file},{},{label},original", LABELS[label]));
        if !file.ends_with(".png") {
            continue;
        }
        let img = image::open(&path).unwrap().to_luma8();
        let stem = file.trim_end_matches(".png");
        let variants: [(&str, image::GrayImage); 5] = [
            ("mirror", image::imageops::flip_horizontal(&img)),
            ("right", shifted(&img, 4, 0)),
            ("left", shifted(&img, -4, 0)),
            ("down", shifted(&img, 0, 4)),
            (
                "dark",
                image::GrayImage::from_fn(img.width(), img.height(), |x, y| {
                    image::Luma([(f32::from(img.get_pixel(x, y)[0]) * 0.9) as u8])
                }),
            ),
        ];
        for (name, out) in variants {
            let out_file = format!("aug/{stem}-{name}.png");
            std::fs::create_dir_all(dir.join("aug")).unwrap();
            out.save(dir.join(&out_file)).unwrap();
            rows.push(format!("{out_file},{},{label},augmented", LABELS[label]));
        }
    }
    std::fs::write(dir.join("labels.csv"), rows.join("\n") + "\n").unwrap();
}

/// The image moved by (dx, dy) pixels, the uncovered edge filled with black (background).
fn shifted(img: &image::GrayImage, dx: i64, dy: i64) -> image::GrayImage {
    image::GrayImage::from_fn(img.width(), img.height(), |x, y| {
        let (sx, sy) = (x as i64 - dx, y as i64 - dy);
        if sx < 0 || sy < 0 || sx >= img.width() as i64 || sy >= img.height() as i64 {
            image::Luma([0])
        } else {
            *img.get_pixel(sx as u32, sy as u32)
        }
    })
}

fn dataset() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    make_dataset(dir.path());
    dir
}

fn gate(bundle: &Path, dataset: &Path, extra: &[&str]) -> (Output, Value) {
    let mut args = vec![
        "gate",
        "--bundle",
        bundle.to_str().unwrap(),
        "--dataset",
        dataset.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = util::run(&args);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "gate output is not one JSON document ({e}); status {:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, report)
}

/// Runs the gate where it must stop with a setup error (exit 1), before any verdict.
fn gate_setup_error(bundle: &Path, dataset: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "gate",
        "--bundle",
        bundle.to_str().unwrap(),
        "--dataset",
        dataset.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = util::run(&args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn reasons(report: &Value) -> String {
    report["reasons"].to_string()
}

fn python_script(script: &str, args: &[&Path]) -> bool {
    let Some(python) = util::reference_python() else {
        return false;
    };
    let out = std::process::Command::new(python)
        .arg(util::root().join("tests/python").join(script))
        .args(args)
        .output()
        .expect("start python");
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

#[test]
#[cfg_attr(
    target_arch = "aarch64",
    ignore = "a whole gate run takes minutes under qemu-user; model_team gates on aarch64"
)]
fn the_default_bundle_is_approved_on_the_generated_set() {
    let data = dataset();
    let (out, report) = gate(&util::default_bundle(), data.path(), &[]);
    assert_eq!(report["verdict"], "approved", "{}", reasons(&report));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(report["images"], 26);
    assert_eq!(report["failed"].as_array().unwrap().len(), 0);
    assert_eq!(report["batch_invariance"]["invariant"], true);
    assert_eq!(report["batch_invariance"]["differing_predictions"], 0);
    assert_eq!(report["int8"]["confusion"].as_array().unwrap().len(), 4);
    let strata: Vec<&str> = report["int8"]["strata"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stratum"].as_str().unwrap())
        .collect();
    assert_eq!(strata, ["augmented", "original"]);
    // The text report carries the same verdict.
    let text = util::run(&[
        "gate",
        "--bundle",
        util::default_bundle().to_str().unwrap(),
        "--dataset",
        data.path().to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(stdout.contains("verdict: APPROVED"), "{stdout}");
    assert!(stdout.contains("confusion"), "{stdout}");
}

#[test]
fn the_default_bundle_is_approved_on_the_pipeline_test_split() {
    if std::env::var("EDGEDX_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty()) {
        eprintln!("SKIPPED: the 800-image split runs on the host only (too slow under qemu)");
        return;
    }
    let split = std::env::var_os("EDGEDX_GATE_DATASET")
        .map(PathBuf::from)
        .unwrap_or_else(|| util::root().join("models/pipeline/out/dataset/test"));
    if !split.join("labels.csv").is_file() {
        eprintln!(
            "SKIPPED: {} not found (set EDGEDX_GATE_DATASET or run models/pipeline/make_dataset.py)",
            split.display()
        );
        return;
    }
    let (out, report) = gate(&util::default_bundle(), &split, &[]);
    assert_eq!(report["verdict"], "approved", "{}", reasons(&report));
    assert_eq!(out.status.code(), Some(0));
}

#[test]
#[cfg_attr(
    target_arch = "aarch64",
    ignore = "a whole gate run takes minutes under qemu-user; model_team gates on aarch64"
)]
fn a_damaged_int8_model_is_rejected_with_the_reason() {
    let bundle = util::copy_bundle();
    let int8 = bundle.path().join("int8.onnx");
    let damaged = bundle.path().join("int8-damaged.onnx");
    if !python_script("damage_int8.py", &[&int8, &damaged]) {
        return;
    }
    std::fs::rename(&damaged, &int8).unwrap();
    util::rehash(bundle.path(), "int8");
    let data = dataset();
    let page = data.path().join("rejected.html");
    let (out, report) = gate(
        bundle.path(),
        data.path(),
        &["--report", page.to_str().unwrap()],
    );
    assert_eq!(report["verdict"], "rejected");
    assert_eq!(out.status.code(), Some(3));
    let why = reasons(&report);
    assert!(
        why.contains("accuracy drop") || why.contains("recall drop"),
        "{why}"
    );
    // The page is written for a rejection too, with its reasons, the same numbers as the
    // JSON and a thumbnail of each image the two models disagree on.
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("class=\"verdict rejected\""));
    assert_page_matches_json(&page_metrics(&html), &report, "rejected.html");
    let disagreeing = report["disagreement"]["images"].as_u64().unwrap() as usize;
    assert!(
        disagreeing > 0,
        "a damaged model that loses accuracy disagrees somewhere"
    );
    assert_eq!(
        html.matches("src=\"data:image/png;base64,").count(),
        disagreeing.min(48)
    );
}

#[test]
fn a_model_whose_output_depends_on_the_batch_size_is_rejected() {
    let bundle = util::copy_bundle();
    let model = bundle.path().join("batch-dependent.onnx");
    if !python_script("batch_dependent_model.py", &[&model]) {
        return;
    }
    // The same graph serves as int8 and fp32, so only batch invariance can fail.
    for file in ["int8.onnx", "fp32.onnx"] {
        std::fs::copy(&model, bundle.path().join(file)).unwrap();
    }
    util::rehash(bundle.path(), "int8");
    util::rehash(bundle.path(), "fp32");
    let data = dataset();
    let (out, report) = gate(bundle.path(), data.path(), &[]);
    assert_eq!(report["verdict"], "rejected");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(report["batch_invariance"]["invariant"], false);
    assert_eq!(report["batch_invariance"]["differing_predictions"], 26);
    let why = reasons(&report);
    assert!(why.contains("batch invariance"), "{why}");
    assert!(!why.contains("accuracy drop"), "{why}");
}

#[test]
#[cfg_attr(
    target_arch = "aarch64",
    ignore = "a whole gate run takes minutes under qemu-user; model_team gates on aarch64"
)]
fn write_records_the_approval_in_the_manifest() {
    let shipped_default =
        std::fs::read_to_string(util::default_bundle().join("manifest.toml")).unwrap();
    let bundle = util::copy_bundle();
    let data = dataset();
    let manifest = bundle.path().join("manifest.toml");
    // Start from a bundle that was never gated (the shipped one carries its approval).
    let shipped = std::fs::read_to_string(&manifest).unwrap();
    let before = match shipped.find("\n[approval]") {
        Some(at) => shipped[..=at].to_string(),
        None => shipped,
    };
    std::fs::write(&manifest, &before).unwrap();
    let (out, report) = gate(bundle.path(), data.path(), &["--write"]);
    assert_eq!(out.status.code(), Some(0), "{}", reasons(&report));
    let after = std::fs::read_to_string(&manifest).unwrap();
    // Comments and the pipeline's layout survive; the record is appended.
    assert!(after.starts_with(&before), "manifest rewritten:\n{after}");
    let parsed = edgedx_bundle::Bundle::open(bundle.path()).unwrap();
    let approval = parsed
        .manifest()
        .approval
        .clone()
        .expect("[approval] written");
    assert_eq!(approval.verdict, edgedx_bundle::Verdict::Approved);
    assert_eq!(
        approval.int8_sha256,
        parsed.variant("int8").unwrap().sha256,
        "the record names the exact int8 file"
    );
    assert_eq!(
        approval.int8_sha256,
        report["int8_sha256"].as_str().unwrap()
    );
    assert_eq!(
        approval.dataset_sha256,
        report["dataset_sha256"].as_str().unwrap()
    );
    assert_eq!(approval.images, 26);
    assert_eq!(approval.int8_recall.len(), 4);
    assert!(approval.tool.starts_with("edgedx "), "{}", approval.tool);
    assert_eq!(approval.date.len(), "2026-01-01T00:00:00Z".len());
    // A second run replaces the table instead of adding another (which would not parse).
    let (out, _) = gate(bundle.path(), data.path(), &["--write"]);
    assert_eq!(out.status.code(), Some(0));
    let again = std::fs::read_to_string(&manifest).unwrap();
    assert_eq!(again.matches("[approval]").count(), 1, "{again}");
    assert!(edgedx_bundle::Bundle::open(bundle.path()).is_ok());
    // The default bundle itself is never written by the suite.
    assert_eq!(
        std::fs::read_to_string(util::default_bundle().join("manifest.toml")).unwrap(),
        shipped_default,
        "the suite must not change the shipped manifest"
    );
}

#[test]
fn an_unknown_label_is_a_setup_error_naming_the_line() {
    let data = dataset();
    let csv = data.path().join("labels.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[3] = lines[3].replacen(",glioma,", ",astrocytoma,", 1).replacen(
        ",meningioma,",
        ",astrocytoma,",
        1,
    );
    lines[3] = lines[3].replacen(",notumor,", ",astrocytoma,", 1).replacen(
        ",pituitary,",
        ",astrocytoma,",
        1,
    );
    std::fs::write(&csv, lines.join("\n") + "\n").unwrap();
    let out = gate_setup_error(&util::default_bundle(), data.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("labels.csv:4: unknown label \"astrocytoma\""),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
#[cfg_attr(
    target_arch = "aarch64",
    ignore = "a whole gate run takes minutes under qemu-user; model_team gates on aarch64"
)]
fn an_unreadable_image_rejects_and_is_listed() {
    let data = dataset();
    std::fs::write(data.path().join("glioma-01.png"), b"not a png").unwrap();
    let (out, report) = gate(&util::default_bundle(), data.path(), &[]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(report["verdict"], "rejected");
    let failed = report["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["file"], "glioma-01.png");
    assert!(reasons(&report).contains("could not be evaluated"));
}

#[test]
fn a_looser_gate_in_the_manifest_is_refused() {
    let bundle = util::copy_bundle();
    let manifest = bundle.path().join("manifest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text + "\n[gate]\nmax_accuracy_drop = 0.05\n").unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("labels.csv"), "file,label,class_index\n").unwrap();
    let out = gate_setup_error(bundle.path(), data.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gate.max_accuracy_drop"), "{stderr}");
}

/// The generated set as an ImageFolder tree: `<label>/<stratum>/<name>` (the same images
/// as [`make_dataset`], without labels.csv). Returns the rows of the labels.csv that lists
/// the tree, as `edgedx gate` derives it for the dataset hash.
fn make_image_folder(dir: &Path) -> Vec<String> {
    let flat = tempfile::tempdir().unwrap();
    make_dataset(flat.path());
    let csv = std::fs::read_to_string(flat.path().join("labels.csv")).unwrap();
    let mut rows = Vec::new();
    for row in csv.lines().skip(1) {
        let fields: Vec<&str> = row.split(',').collect();
        let (file, label, index, stratum) = (fields[0], fields[1], fields[2], fields[3]);
        let name = Path::new(file).file_name().unwrap().to_str().unwrap();
        let to = format!("{label}/{stratum}/{name}");
        std::fs::create_dir_all(dir.join(label).join(stratum)).unwrap();
        std::fs::rename(flat.path().join(file), dir.join(&to)).unwrap();
        rows.push(format!("{to},{label},{index},{stratum}"));
    }
    // A note beside the label folders is skipped, not an error.
    std::fs::write(dir.join("README.txt"), "generated by tests/it/gate.rs\n").unwrap();
    rows
}

#[test]
#[cfg_attr(
    target_arch = "aarch64",
    ignore = "a whole gate run takes minutes under qemu-user; model_team gates on aarch64"
)]
fn an_image_folder_set_gates_like_the_same_set_in_labels_csv() {
    let data = tempfile::tempdir().unwrap();
    let rows = make_image_folder(data.path());
    let (out, folder) = gate(&util::default_bundle(), data.path(), &[]);
    assert_eq!(folder["verdict"], "approved", "{}", reasons(&folder));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(folder["dataset_layout"], "imagefolder");
    assert_eq!(folder["images"], 26);
    assert_eq!(folder["skipped_files"], serde_json::json!(["README.txt"]));
    let strata: Vec<&str> = folder["int8"]["strata"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stratum"].as_str().unwrap())
        .collect();
    assert_eq!(strata, ["augmented", "original"]);
    // The same tree listed by a labels.csv: same items, same metrics, same dataset hash.
    let csv = format!("file,label,class_index,stratum\n{}\n", rows.join("\n"));
    std::fs::write(data.path().join("labels.csv"), csv).unwrap();
    let (_, listed) = gate(&util::default_bundle(), data.path(), &[]);
    assert_eq!(listed["dataset_layout"], "csv");
    assert_eq!(listed["dataset_sha256"], folder["dataset_sha256"]);
    for key in ["int8", "fp32", "batch_invariance", "disagreement"] {
        assert_eq!(listed[key], folder[key], "{key}");
    }
}

#[test]
fn image_folder_layout_errors_are_setup_errors_naming_the_folder() {
    let data = tempfile::tempdir().unwrap();
    make_image_folder(data.path());
    std::fs::create_dir(data.path().join("astrocytoma")).unwrap();
    let out = gate_setup_error(&util::default_bundle(), data.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("folder \"astrocytoma\" is not a label of the bundle")
            && stderr.contains("glioma, meningioma, notumor, pituitary"),
        "{stderr}"
    );
    std::fs::remove_dir(data.path().join("astrocytoma")).unwrap();
    std::fs::copy(
        util::default_bundle().join("samples/glioma-01.png"),
        data.path().join("glioma/loose.png"),
    )
    .unwrap();
    let out = gate_setup_error(&util::default_bundle(), data.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds both images"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_report_into_a_missing_directory_is_refused_before_the_run() {
    let data = tempfile::tempdir().unwrap();
    make_image_folder(data.path());
    let report = data.path().join("no/such/dir/r.html");
    let out = gate_setup_error(
        &util::default_bundle(),
        data.path(),
        &["--report", report.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no/such/dir"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing ran: {:?}", out.stdout);
}

/// Runs the gate with its stderr on a pseudo-terminal and returns what it drew there.
fn gate_on_a_terminal(dataset: &Path, extra: &[&str]) -> String {
    use std::io::Read;
    let winsize = nix::pty::Winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&winsize), None).expect("openpty");
    let mut cmd = util::edgedx();
    cmd.args([
        "gate",
        "--bundle",
        util::default_bundle().to_str().unwrap(),
        "--dataset",
        dataset.to_str().unwrap(),
    ])
    .args(extra)
    .env("RUST_LOG", "warn")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::from(pty.slave));
    let child = cmd.spawn().expect("start edgedx");
    // Our copy of the slave must close, or reading the master never ends.
    drop(cmd);
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut drawn = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once the last slave descriptor closes: the end of the output.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            drawn.extend_from_slice(&buf[..n]);
        }
        drawn
    });
    let out = child.wait_with_output().unwrap();
    assert!(out.status.code().is_some_and(|c| c == 0 || c == 3));
    String::from_utf8_lossy(&reader.join().unwrap()).into_owned()
}

#[test]
#[cfg_attr(
    target_arch = "aarch64",
    ignore = "a whole gate run takes minutes under qemu-user; model_team gates on aarch64"
)]
fn the_progress_bar_draws_on_a_terminal_only_and_never_with_json() {
    let data = tempfile::tempdir().unwrap();
    make_image_folder(data.path());
    let drawn = gate_on_a_terminal(data.path(), &[]);
    assert!(
        drawn.contains("/26 images") && drawn.contains("ETA"),
        "no progress bar on the terminal: {drawn:?}"
    );
    let drawn = gate_on_a_terminal(data.path(), &["--json"]);
    assert!(!drawn.contains("images"), "drawn with --json: {drawn:?}");
    // Not a terminal (a pipe, as util::run captures it): nothing drawn either.
    let out = util::run(&[
        "gate",
        "--bundle",
        util::default_bundle().to_str().unwrap(),
        "--dataset",
        data.path().to_str().unwrap(),
    ]);
    // Only the bar is looked for: under qemu, tract logs a warning about /proc/cpuinfo.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("/26 images") && !stderr.contains("ETA"),
        "drawn into a pipe: {stderr}"
    );
}

/// `data-metric` → `data-value` of every element of an HTML text that carries one (the
/// attribute order edgedx writes and Chromium keeps), entities decoded. A number shown
/// twice (recall is in two tables) must carry the same value both times.
fn page_metrics(html: &str) -> std::collections::BTreeMap<String, String> {
    fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
        let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
        let len = tag[start..].find('"')?;
        Some(&tag[start..start + len])
    }
    fn unescape(s: &str) -> String {
        s.replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    }
    let mut metrics = std::collections::BTreeMap::new();
    for (at, _) in html.match_indices("data-metric=\"") {
        let tag_start = html[..at].rfind('<').unwrap();
        let tag_end = at + html[at..].find('>').unwrap();
        let tag = &html[tag_start..tag_end];
        let key = unescape(attribute(tag, "data-metric").unwrap());
        let value = unescape(
            attribute(tag, "data-value").unwrap_or_else(|| panic!("{key}: no data-value")),
        );
        if let Some(before) = metrics.insert(key.clone(), value.clone()) {
            assert_eq!(before, value, "{key} shown twice with different values");
        }
    }
    metrics
}

/// Every number of the JSON report that the page must show, under its `data-metric` key.
fn expected_metrics(report: &Value) -> Vec<(String, Value)> {
    let mut expected: Vec<(String, Value)> = vec![
        ("verdict".into(), report["verdict"].clone()),
        ("images".into(), report["images"].clone()),
        ("evaluated".into(), report["evaluated"].clone()),
        (
            "failed".into(),
            report["failed"].as_array().unwrap().len().into(),
        ),
        ("accuracy_drop".into(), report["accuracy_drop"].clone()),
        (
            "thresholds.max_accuracy_drop".into(),
            report["thresholds"]["max_accuracy_drop"].clone(),
        ),
        (
            "thresholds.max_recall_drop".into(),
            report["thresholds"]["max_recall_drop"].clone(),
        ),
        (
            "disagreement.images".into(),
            report["disagreement"]["images"].clone(),
        ),
        (
            "disagreement.rate".into(),
            report["disagreement"]["rate"].clone(),
        ),
    ];
    let skipped = report["skipped_files"].as_array().unwrap().len();
    if skipped > 0 {
        expected.push(("skipped_files".into(), skipped.into()));
    }
    for key in [
        "differing_predictions",
        "max_probability_difference",
        "invariant",
    ] {
        expected.push((
            format!("batch_invariance.{key}"),
            report["batch_invariance"][key].clone(),
        ));
    }
    let labels: Vec<&str> = report["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    for (c, label) in labels.iter().enumerate() {
        expected.push((
            format!("recall_drop.{label}"),
            report["recall_drop"][c].clone(),
        ));
    }
    for p in ["int8", "fp32"] {
        let m = &report[p];
        expected.push((format!("{p}.accuracy"), m["accuracy"].clone()));
        expected.push((format!("{p}.correct"), m["correct"].clone()));
        for (c, label) in labels.iter().enumerate() {
            for key in ["precision", "recall", "f1", "support"] {
                expected.push((format!("{p}.{key}.{label}"), m["classes"][c][key].clone()));
            }
            for (q, predicted) in labels.iter().enumerate() {
                expected.push((
                    format!("{p}.confusion.{label}.{predicted}"),
                    m["confusion"][c][q].clone(),
                ));
            }
        }
        for st in m["strata"].as_array().unwrap() {
            let name = st["stratum"].as_str().unwrap();
            for key in ["accuracy", "images", "correct"] {
                expected.push((format!("{p}.stratum.{name}.{key}"), st[key].clone()));
            }
        }
    }
    for (n, d) in report["disagreement"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        for p in ["int8", "fp32"] {
            expected.push((
                format!("disagreement.files.{n}.{p}.probability"),
                d[p]["probability"].clone(),
            ));
        }
    }
    expected
}

/// Checks that the page's hooks are exactly the JSON's numbers (compared as f64 after
/// parsing both texts, so 0.5 and 5e-1 agree), and that the page has no other numbers.
fn assert_page_matches_json(
    page: &std::collections::BTreeMap<String, String>,
    report: &Value,
    what: &str,
) {
    let expected = expected_metrics(report);
    for (key, value) in &expected {
        let shown = page
            .get(key)
            .unwrap_or_else(|| panic!("{what}: no data-metric={key:?}"));
        let same = match value {
            Value::Null => shown == "null",
            Value::Bool(b) => shown == &b.to_string(),
            Value::String(s) => shown == s,
            Value::Number(n) => match (shown.parse::<f64>(), n.as_f64()) {
                // serde_json's default float parser (no `float_roundtrip`) may land one
                // ulp off the value it printed; the page's text is the exact one.
                (Ok(a), Some(b)) => (a - b).abs() <= 4.0 * f64::EPSILON * a.abs().max(b.abs()),
                _ => false,
            },
            _ => false,
        };
        assert!(
            same,
            "{what}: {key} is {shown:?} on the page, {value} in the JSON"
        );
    }
    let checked: std::collections::BTreeSet<&str> =
        expected.iter().map(|(k, _)| k.as_str()).collect();
    let unchecked: Vec<&String> = page
        .keys()
        .filter(|k| !checked.contains(k.as_str()) && k.as_str() != "disagreement.left_out")
        .collect();
    assert!(
        unchecked.is_empty(),
        "{what}: numbers without a JSON counterpart: {unchecked:?}"
    );
}

/// Debian's chromium (or $EDGEDX_CHROMIUM), if it is installed and starts.
fn chromium() -> Result<PathBuf, String> {
    if std::env::var("EDGEDX_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty()) {
        return Err("the browser check runs in the host suite, not in this cross-target run under EDGEDX_TEST_RUNNER".into());
    }
    let candidates: Vec<PathBuf> = match std::env::var_os("EDGEDX_CHROMIUM") {
        Some(path) => vec![PathBuf::from(path)],
        None => std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .flat_map(|dir| ["chromium", "chromium-browser"].map(|n| dir.join(n)))
            .collect(),
    };
    let exe = candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or("chromium not found (board/build-deps.sh test installs it)")?;
    match std::process::Command::new(&exe).arg("--version").output() {
        Ok(out) if out.status.success() => Ok(exe),
        Ok(out) => Err(format!(
            "{} --version failed: {}",
            exe.display(),
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => Err(format!("{} does not start: {e}", exe.display())),
    }
}

/// Runs headless chromium on `url` with `args`, killed after two minutes; returns stdout.
fn headless(exe: &Path, profile: &Path, args: &[&str], url: &str) -> Vec<u8> {
    let mut child = std::process::Command::new(exe)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start chromium");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut { stdout }, &mut buf).unwrap();
        buf
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium {args:?} did not finish in 2 minutes");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut stderr = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr);
    assert!(status.success(), "chromium {args:?}: {status}\n{stderr}");
    reader.join().unwrap()
}

/// `file://` URL of an absolute path, bytes outside the unreserved set percent-encoded.
fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for b in path.to_str().unwrap().bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

#[test]
#[cfg_attr(
    target_arch = "aarch64",
    ignore = "a whole gate run takes minutes under qemu-user; model_team gates on aarch64"
)]
fn the_html_report_shows_the_json_numbers_in_a_real_browser() {
    // Kept after the run (target/tmp/gate-report/) so the page and its screenshot can be
    // looked at; each run replaces them.
    let keep = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gate-report");
    std::fs::create_dir_all(&keep).unwrap();
    let data = tempfile::tempdir().unwrap();
    make_image_folder(data.path());
    let page_path = keep.join("report.html");
    let (out, report) = gate(
        &util::default_bundle(),
        data.path(),
        &["--report", page_path.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", reasons(&report));
    let html = std::fs::read_to_string(&page_path).unwrap();
    eprintln!("report: {}", page_path.display());
    // Self-contained: nothing is fetched (no links, no scripts, images only as data: URLs).
    for outside in ["src=\"http", "href=", "<script", "<link", "url("] {
        assert!(
            !html.contains(outside),
            "the page refers outside: {outside}"
        );
    }
    // The written text carries the JSON's numbers...
    assert_page_matches_json(&page_metrics(&html), &report, "report.html");

    let exe = match chromium() {
        Ok(exe) => exe,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let profile = tempfile::tempdir().unwrap();
    let url = file_url(&page_path);
    // ...and so does the DOM a browser builds from it.
    let dom = headless(&exe, profile.path(), &["--dump-dom"], &url);
    let dom = String::from_utf8(dom).expect("UTF-8 DOM");
    assert!(dom.contains("id=\"verdict\""), "{dom}");
    assert_page_matches_json(&page_metrics(&dom), &report, "chromium's DOM");

    let shot = keep.join("report.png");
    let _ = std::fs::remove_file(&shot);
    headless(
        &exe,
        profile.path(),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,2000",
            "--hide-scrollbars",
        ],
        &url,
    );
    let png = image::open(&shot)
        .unwrap_or_else(|e| panic!("{}: {e}", shot.display()))
        .to_rgb8();
    assert_eq!(png.dimensions(), (1280, 2000));
    // Not blank: the APPROVED banner's green, the heat maps' dark blue and text.
    let count = |f: &dyn Fn(&image::Rgb<u8>) -> bool| png.pixels().filter(|p| f(p)).count();
    let banner = count(&|p| p.0 == [0xe3, 0xf4, 0xe6]);
    let dark_blue = count(&|p| p.0[2] > 120 && p.0[0] < 60 && p.0[1] < 110);
    let text = count(&|p| p.0.iter().all(|&c| c < 80));
    assert!(
        banner > 10_000 && dark_blue > 5_000 && text > 2_000,
        "{} looks blank: banner {banner}, dark blue {dark_blue}, text {text} pixels",
        shot.display()
    );
    eprintln!("screenshot: {}", shot.display());
}
