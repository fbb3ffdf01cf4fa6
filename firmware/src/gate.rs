//! `edgedx gate`: the accuracy gate. Runs int8 and fp32 over a labelled image set, checks
//! that int8 loses at most the bundle's thresholds against fp32 and that its predictions do
//! not depend on the batch size, and optionally writes the verdict into the manifest.
//!
//! Exit codes: 0 approved, 3 rejected (including any image that could not be read),
//! 1 setup error (bundle, model, dataset, labels.csv, report not written), 2 bad usage.

mod dataset;
mod html;
mod metrics;
mod record;

/// UTC now as `YYYY-MM-DDTHH:MM:SSZ` (the date format of manifest records).
pub fn record_now_utc() -> String {
    record::now_utc()
}

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use edgedx_bundle::{Approval, Bundle, GateThresholds, Verdict};
use edgedx_engine::{EngineOptions, Model, Scores};
use edgedx_ingest::Limits;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use dataset::{Dataset, Item, Layout};
use metrics::Metrics;

/// Exit code of a run that completed and rejected the model.
const EXIT_REJECTED: u8 = 3;
/// Batch sizes whose int8 predictions must agree. Items are processed in groups of their
/// least common multiple so every plan sees the same images.
const BATCHES: [usize; 3] = [1, 2, 4];
const GROUP: usize = 4;
/// Comparisons of drops against thresholds allow for binary rounding of fractions like
/// 0.01, so a drop of exactly one point passes a one-point gate.
const EPSILON: f64 = 1e-9;

#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
DATASET LAYOUTS
  labels.csv      <dir>/labels.csv with the header file,label,class_index[,stratum];
                  file is a path relative to <dir>. Used whenever the file exists.
  ImageFolder     otherwise: <dir>/<label>/<image> or <dir>/<label>/<stratum>/<image>.
                  Folder names must be the bundle's labels; a label folder holds either
                  images or stratum folders. Images are *.png, *.jpg, *.jpeg, *.dcm,
                  *.dicom, *.pgm, *.ppm, *.pnm (any case) and files without an extension
                  (DICOM exports), except DICOMDIR; other files are skipped and listed,
                  hidden ones (.name) ignored. The format is recognised from the bytes.

A progress bar is drawn on stderr when stderr is a terminal (not with --json).

EXIT STATUS
  0 approved, 3 rejected (the report lists the reasons), 1 setup error (bundle, model,
  dataset, --write or --report failed), 2 bad usage.

See models/README.md (\"Gate on your own dataset\") and models/BUNDLE.md (the dataset hash).")]
pub struct Args {
    /// Model bundle directory (its int8 and fp32 models are compared).
    #[arg(long)]
    bundle: PathBuf,
    /// Labelled image set: a directory holding labels.csv (file,label,class_index[,stratum]),
    /// or without one, an ImageFolder tree <label>/[<stratum>/]<image>.
    #[arg(long)]
    dataset: PathBuf,
    /// Print one JSON document instead of the text report.
    #[arg(long)]
    json: bool,
    /// Write the verdict as [approval] into the bundle's manifest.toml.
    #[arg(long)]
    write: bool,
    /// Also write a self-contained HTML page (verdict, per-class metrics, confusion heat
    /// maps, strata, the images int8 and fp32 disagree on), whatever the verdict.
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,
}

/// An image the gate could not evaluate.
#[derive(Debug, Serialize)]
struct Failure {
    file: String,
    /// labels.csv line; `null` in an ImageFolder set.
    line: Option<usize>,
    kind: String,
    message: String,
}

/// What one image produced.
struct Outcome {
    file: String,
    path: PathBuf,
    class: usize,
    stratum: Option<String>,
    int8: Scores,
    fp32: Scores,
    /// int8 predictions at batch 2 and 4 (in `BATCHES[1..]` order).
    batched: Vec<Scores>,
}

#[derive(Debug, Serialize)]
struct Disagreement {
    images: usize,
    rate: f64,
    /// Every image int8 and fp32 classify differently, in dataset order.
    files: Vec<DisagreeingImage>,
}

#[derive(Debug, Serialize)]
struct DisagreeingImage {
    file: String,
    /// Where to read it again for the HTML report's thumbnail.
    #[serde(skip)]
    path: PathBuf,
    label: String,
    int8: Prediction,
    fp32: Prediction,
}

#[derive(Debug, Serialize)]
struct Prediction {
    label: String,
    probability: f64,
}

#[derive(Debug, Serialize)]
struct BatchInvariance {
    batches: Vec<usize>,
    /// Images whose int8 class at batch 2 or 4 differs from batch 1.
    differing_predictions: usize,
    /// Largest |p(batch n) - p(batch 1)| over all images, classes and batch sizes.
    max_probability_difference: f64,
    invariant: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    verdict: Verdict,
    reasons: Vec<String>,
    bundle: String,
    int8_sha256: String,
    fp32_sha256: String,
    dataset: String,
    dataset_layout: Layout,
    dataset_sha256: String,
    /// Files of an ImageFolder set that were not read as images (by their name).
    skipped_files: Vec<String>,
    images: usize,
    evaluated: usize,
    failed: Vec<Failure>,
    thresholds: GateThresholds,
    labels: Vec<String>,
    fp32: Metrics,
    int8: Metrics,
    accuracy_drop: f64,
    /// fp32 recall - int8 recall per label (`null` for a label without images).
    recall_drop: Vec<Option<f64>>,
    disagreement: Disagreement,
    batch_invariance: BatchInvariance,
    tool: String,
    date: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let bundle = Bundle::open(&args.bundle)
        .with_context(|| format!("opening bundle {}", args.bundle.display()))?;
    let labels = bundle.labels().to_vec();
    let thresholds = bundle.manifest().gate_thresholds();
    let data = dataset::load(&args.dataset, &labels)?;
    if let Some(path) = &args.report {
        check_report_path(path)?;
    }
    let int8 = Model::load(&bundle, "int8", &EngineOptions::default())
        .context("loading the int8 model")?;
    let fp32 = Model::load(&bundle, "fp32", &EngineOptions::default())
        .context("loading the fp32 model")?;
    let batched = BATCHES[1..]
        .iter()
        .map(|&batch| {
            Model::load(&bundle, "int8", &EngineOptions { batch })
                .with_context(|| format!("loading the int8 model with batch {batch}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let progress = progress_bar(
        data.items.len(),
        !args.json && std::io::stderr().is_terminal(),
    );
    let (outcomes, failed, hashes) = evaluate(&data, &int8, &fp32, &batched, &progress);
    progress.finish_and_clear();
    let dataset_sha256 = dataset::dataset_sha256(&data.labels_csv, &hashes);
    let report = judge(
        &bundle,
        &data,
        thresholds,
        &outcomes,
        failed,
        dataset_sha256,
        int8.report().sha256.clone(),
        fp32.report().sha256.clone(),
    );

    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        out.write_all(text_report(&report).as_bytes())?;
    }
    out.flush()?;
    if let Some(path) = &args.report {
        html::write(path, &report, &Limits::default())?;
        if !args.json {
            writeln!(out, "wrote the HTML report to {}", path.display())?;
        }
    }
    if args.write {
        let approval = approval_record(&report);
        record::write_approval(bundle.dir(), bundle.manifest(), &approval)?;
        if !args.json {
            writeln!(
                out,
                "wrote [approval] ({}) into {}",
                report.verdict,
                bundle.dir().join(edgedx_bundle::MANIFEST_FILE).display()
            )?;
        }
    }
    Ok(match report.verdict {
        Verdict::Approved => ExitCode::SUCCESS,
        Verdict::Rejected => ExitCode::from(EXIT_REJECTED),
    })
}

/// Refuses, before any model runs, a report path whose directory does not exist or that
/// names a directory, so a long run does not end in a write error.
fn check_report_path(path: &std::path::Path) -> anyhow::Result<()> {
    if path.is_dir() {
        bail!(
            "--report {}: is a directory, expected a file name",
            path.display()
        );
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    if !parent.is_dir() {
        bail!(
            "--report {}: the directory {} does not exist",
            path.display(),
            parent.display()
        );
    }
    Ok(())
}

/// A progress bar on stderr (images done / total, rate, ETA), or a hidden one that draws
/// nothing when stderr is not a terminal or the output is JSON.
fn progress_bar(total: usize, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    // The template is a constant; should indicatif ever refuse it, the default bar still
    // shows the count.
    if let Ok(style) =
        ProgressStyle::with_template("gate {wide_bar} {pos}/{len} images  {per_sec:.1}  ETA {eta}")
    {
        bar.set_style(style);
    }
    bar
}

type Evaluated = (Vec<Outcome>, Vec<Failure>, Vec<(String, String)>);

/// Runs every image through every plan, a group of [`GROUP`] images at a time so memory
/// stays at a few tensors whatever the dataset size.
fn evaluate(
    data: &Dataset,
    int8: &Model,
    fp32: &Model,
    batched: &[Model],
    progress: &ProgressBar,
) -> Evaluated {
    let limits = Limits::default();
    let item_len = int8.input_spec().item_len();
    let mut outcomes = Vec::with_capacity(data.items.len());
    let mut failed = Vec::new();
    let mut hashes = Vec::with_capacity(data.items.len());
    let mut pending: Vec<(&Item, Vec<f32>)> = Vec::with_capacity(GROUP);
    for (n, item) in data.items.iter().enumerate() {
        match prepare(item, int8, &limits, item_len) {
            Ok((sha, tensor)) => {
                hashes.push((item.file.clone(), sha));
                pending.push((item, tensor));
            }
            Err((sha, failure)) => {
                hashes.push((item.file.clone(), sha));
                failed.push(failure);
                progress.inc(1);
            }
        }
        if pending.len() == GROUP || (n + 1 == data.items.len() && !pending.is_empty()) {
            run_group(&pending, int8, fp32, batched, &mut outcomes, &mut failed);
            progress.inc(pending.len() as u64);
            pending.clear();
        }
    }
    (outcomes, failed, hashes)
}

/// Reads, hashes, decodes and preprocesses one image. The bytes hashed for the dataset hash
/// are the bytes decoded. An unreadable file hashes as `unreadable` (the run is rejected).
fn prepare(
    item: &Item,
    model: &Model,
    limits: &Limits,
    item_len: usize,
) -> Result<(String, Vec<f32>), (String, Failure)> {
    let fail = |sha: String, kind: &str, message: String| {
        (
            sha,
            Failure {
                file: item.file.clone(),
                line: item.line,
                kind: kind.to_string(),
                message,
            },
        )
    };
    let bytes = edgedx_ingest::read_capped(&item.path, limits)
        .map_err(|e| fail("unreadable".into(), e.kind().as_str(), e.to_string()))?;
    let sha = dataset::file_sha256(&bytes);
    let name = item.path.display().to_string();
    let mut tensor = vec![0f32; item_len];
    crate::pipeline::prepare(&bytes, &name, limits, model, &mut tensor)
        .map_err(|e| fail(sha.clone(), e.kind().as_str(), e.to_string()))?;
    Ok((sha, tensor))
}

/// Runs a group of up to [`GROUP`] prepared images through int8 and fp32 at batch 1 and
/// int8 at the larger batches. A partial last batch is padded by repeating its last item;
/// the padded outputs are discarded. A run error (the engine refusing an output) fails the
/// images of the group rather than the whole gate, so the report still says which.
fn run_group(
    group: &[(&Item, Vec<f32>)],
    int8: &Model,
    fp32: &Model,
    batched: &[Model],
    outcomes: &mut Vec<Outcome>,
    failed: &mut Vec<Failure>,
) {
    let result = (|| -> Result<Vec<Outcome>, edgedx_engine::EngineError> {
        let mut results: Vec<Outcome> = Vec::with_capacity(group.len());
        for (item, tensor) in group {
            let one = |m: &Model| crate::pipeline::score(m, tensor);
            results.push(Outcome {
                file: item.file.clone(),
                path: item.path.clone(),
                class: item.class,
                stratum: item.stratum.clone(),
                int8: one(int8)?,
                fp32: one(fp32)?,
                batched: Vec::new(),
            });
        }
        for model in batched {
            let batch = model.batch();
            for (chunk_no, chunk) in group.chunks(batch).enumerate() {
                let mut input = Vec::with_capacity(batch * chunk[0].1.len());
                for k in 0..batch {
                    input.extend_from_slice(&chunk[k.min(chunk.len() - 1)].1);
                }
                let scores = model.run(&input)?;
                for (k, s) in scores.into_iter().take(chunk.len()).enumerate() {
                    results[chunk_no * batch + k].batched.push(s);
                }
            }
        }
        Ok(results)
    })();
    match result {
        Ok(results) => outcomes.extend(results),
        Err(e) => failed.extend(group.iter().map(|(item, _)| Failure {
            file: item.file.clone(),
            line: item.line,
            kind: e.kind().as_str().to_string(),
            message: format!("{}: {e}", item.path.display()),
        })),
    }
}

#[allow(clippy::too_many_arguments)]
fn judge(
    bundle: &Bundle,
    data: &Dataset,
    thresholds: GateThresholds,
    outcomes: &[Outcome],
    failed: Vec<Failure>,
    dataset_sha256: String,
    int8_sha256: String,
    fp32_sha256: String,
) -> Report {
    let labels = bundle.labels().to_vec();
    let truth: Vec<usize> = outcomes.iter().map(|o| o.class).collect();
    let strata: Vec<Option<String>> = outcomes.iter().map(|o| o.stratum.clone()).collect();
    let predict = |s: &Scores| metrics::argmax(&s.probabilities);
    let int8_pred: Vec<usize> = outcomes.iter().map(|o| predict(&o.int8)).collect();
    let fp32_pred: Vec<usize> = outcomes.iter().map(|o| predict(&o.fp32)).collect();
    let int8 = metrics::compute(&labels, &truth, &int8_pred, &strata);
    let fp32 = metrics::compute(&labels, &truth, &fp32_pred, &strata);

    let mut differing = 0;
    let mut max_diff = 0f64;
    for (o, p1) in outcomes.iter().zip(&int8_pred) {
        let mut differs = false;
        for s in &o.batched {
            differs |= predict(s) != *p1;
            for (a, b) in s.probabilities.iter().zip(&o.int8.probabilities) {
                max_diff = max_diff.max(f64::from((a - b).abs()));
            }
        }
        differing += usize::from(differs);
    }
    let batch_invariance = BatchInvariance {
        batches: BATCHES.to_vec(),
        differing_predictions: differing,
        max_probability_difference: max_diff,
        invariant: differing == 0,
    };
    let disagreeing = metrics::disagreements(&int8_pred, &fp32_pred);
    let prediction = |s: &Scores, class: usize| Prediction {
        label: labels[class].clone(),
        probability: s
            .probabilities
            .get(class)
            .map_or(f64::NAN, |p| f64::from(*p)),
    };
    let disagreeing_files: Vec<DisagreeingImage> = outcomes
        .iter()
        .zip(int8_pred.iter().zip(&fp32_pred))
        .filter(|(_, (i, f))| i != f)
        .map(|(o, (i, f))| DisagreeingImage {
            file: o.file.clone(),
            path: o.path.clone(),
            label: labels[o.class].clone(),
            int8: prediction(&o.int8, *i),
            fp32: prediction(&o.fp32, *f),
        })
        .collect();

    let accuracy_drop = fp32.accuracy - int8.accuracy;
    let recall_drop: Vec<Option<f64>> = fp32
        .classes
        .iter()
        .zip(&int8.classes)
        .map(|(f, i)| Some(f.recall? - i.recall?))
        .collect();

    let mut reasons = Vec::new();
    if !failed.is_empty() {
        reasons.push(format!(
            "{} image(s) could not be evaluated (first: {}{}: {})",
            failed.len(),
            failed[0].file,
            failed[0]
                .line
                .map_or_else(String::new, |l| format!(" at labels.csv line {l}")),
            failed[0].message
        ));
    }
    if outcomes.is_empty() {
        reasons.push("no image could be evaluated".into());
    }
    if accuracy_drop > thresholds.max_accuracy_drop + EPSILON {
        reasons.push(format!(
            "accuracy drop {:.2} points (fp32 {:.2}% -> int8 {:.2}%) exceeds max_accuracy_drop {:.2} points",
            accuracy_drop * 100.0,
            fp32.accuracy * 100.0,
            int8.accuracy * 100.0,
            thresholds.max_accuracy_drop * 100.0
        ));
    }
    for ((label, drop), f) in labels.iter().zip(&recall_drop).zip(&fp32.classes) {
        match drop {
            Some(d) if *d > thresholds.max_recall_drop + EPSILON => reasons.push(format!(
                "recall drop for {label}: {:.2} points exceeds max_recall_drop {:.2} points",
                d * 100.0,
                thresholds.max_recall_drop * 100.0
            )),
            Some(_) => {}
            // A class the set does not contain cannot show that its recall holds.
            None if !outcomes.is_empty() => reasons.push(format!(
                "no image of class {label} (support {}): its recall cannot be checked",
                f.support
            )),
            None => {}
        }
    }
    if !batch_invariance.invariant {
        reasons.push(format!(
            "batch invariance: {differing} image(s) get a different int8 class with batch 2 or 4 than with batch 1 (max probability difference {max_diff:.3e})"
        ));
    }
    let verdict = if reasons.is_empty() {
        Verdict::Approved
    } else {
        Verdict::Rejected
    };
    let manifest = bundle.manifest();
    Report {
        verdict,
        reasons,
        bundle: format!("{}@{}", manifest.bundle.name, manifest.bundle.version),
        int8_sha256,
        fp32_sha256,
        dataset: data.dir.display().to_string(),
        dataset_layout: data.layout,
        dataset_sha256,
        skipped_files: data.skipped.clone(),
        images: data.items.len(),
        evaluated: outcomes.len(),
        failed,
        thresholds,
        labels,
        disagreement: Disagreement {
            images: disagreeing,
            rate: if outcomes.is_empty() {
                0.0
            } else {
                disagreeing as f64 / outcomes.len() as f64
            },
            files: disagreeing_files,
        },
        fp32,
        int8,
        accuracy_drop,
        recall_drop,
        batch_invariance,
        tool: tool(),
        date: record::now_utc(),
    }
}

fn tool() -> String {
    format!("edgedx {}", env!("CARGO_PKG_VERSION"))
}

fn approval_record(r: &Report) -> Approval {
    let recalls = |m: &Metrics| -> Vec<f64> {
        // TOML has no null: an undefined recall (no images of the class, which always
        // rejects) is written as NaN so the record still has one value per label.
        m.classes
            .iter()
            .map(|c| c.recall.unwrap_or(f64::NAN))
            .collect()
    };
    Approval {
        verdict: r.verdict,
        int8_sha256: r.int8_sha256.clone(),
        fp32_sha256: r.fp32_sha256.clone(),
        dataset_sha256: r.dataset_sha256.clone(),
        images: r.images as u64,
        failed_images: r.failed.len() as u64,
        max_accuracy_drop: r.thresholds.max_accuracy_drop,
        max_recall_drop: r.thresholds.max_recall_drop,
        fp32_accuracy: r.fp32.accuracy,
        int8_accuracy: r.int8.accuracy,
        fp32_recall: recalls(&r.fp32),
        int8_recall: recalls(&r.int8),
        disagreement: r.disagreement.rate,
        batch_invariant: r.batch_invariance.invariant,
        batch_mismatches: r.batch_invariance.differing_predictions as u64,
        batch_max_probability_difference: r.batch_invariance.max_probability_difference,
        reasons: r.reasons.clone(),
        tool: r.tool.clone(),
        date: r.date.clone(),
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{:.2}", v * 100.0))
}

/// The human-readable report: tables of percentages, then the verdict and its reasons.
fn text_report(r: &Report) -> String {
    let mut s = String::new();
    let longest = r.labels.iter().map(|l| l.len()).max().unwrap_or(0);
    // "recall <label>" is the widest row name; confusion columns need only the label.
    let w = (longest + "recall ".len()).max(16);
    let cw = longest.max(5);
    let _ = writeln!(s, "edgedx gate: bundle {}", r.bundle);
    let _ = writeln!(s, "  int8 sha256 {}", r.int8_sha256);
    let _ = writeln!(s, "  fp32 sha256 {}", r.fp32_sha256);
    let _ = writeln!(
        s,
        "  dataset {} ({}, {} images, {} evaluated, {} failed)\n  dataset sha256 {}",
        r.dataset,
        match r.dataset_layout {
            Layout::Csv => "labels.csv",
            Layout::ImageFolder => "ImageFolder",
        },
        r.images,
        r.evaluated,
        r.failed.len(),
        r.dataset_sha256
    );
    if let Some(first) = r.skipped_files.first() {
        let _ = writeln!(
            s,
            "  skipped {} file(s) that are not images by their name (first: {first})",
            r.skipped_files.len()
        );
    }
    let _ = writeln!(
        s,
        "\nint8 vs fp32 (percent)\n{:<w$}  {:>7}  {:>7}  {:>7}  {:>7}",
        "", "fp32", "int8", "drop", "limit"
    );
    let _ = writeln!(
        s,
        "{:<w$}  {:>7.2}  {:>7.2}  {:>7.2}  {:>7.2}",
        "accuracy",
        r.fp32.accuracy * 100.0,
        r.int8.accuracy * 100.0,
        r.accuracy_drop * 100.0,
        r.thresholds.max_accuracy_drop * 100.0
    );
    for (c, label) in r.labels.iter().enumerate() {
        let _ = writeln!(
            s,
            "{:<w$}  {:>7}  {:>7}  {:>7}  {:>7.2}",
            format!("recall {label}"),
            pct(r.fp32.classes[c].recall),
            pct(r.int8.classes[c].recall),
            pct(r.recall_drop[c]),
            r.thresholds.max_recall_drop * 100.0
        );
    }
    for (name, m) in [("fp32", &r.fp32), ("int8", &r.int8)] {
        let _ = writeln!(
            s,
            "\n{name}: accuracy {:.2}% ({}/{})\n{:<w$}  {:>9}  {:>7}  {:>7}  {:>7}",
            m.accuracy * 100.0,
            m.correct,
            m.images,
            "class",
            "precision",
            "recall",
            "f1",
            "support"
        );
        for c in &m.classes {
            let _ = writeln!(
                s,
                "{:<w$}  {:>9}  {:>7}  {:>7}  {:>7}",
                c.label,
                pct(c.precision),
                pct(c.recall),
                pct(c.f1),
                c.support
            );
        }
        let _ = write!(s, "confusion (rows true, columns predicted)\n{:<w$}", "");
        for label in &r.labels {
            let _ = write!(s, "  {label:>cw$}");
        }
        s.push('\n');
        for (label, row) in r.labels.iter().zip(&m.confusion) {
            let _ = write!(s, "{label:<w$}");
            for v in row {
                let _ = write!(s, "  {v:>cw$}");
            }
            s.push('\n');
        }
        for st in &m.strata {
            let _ = writeln!(
                s,
                "stratum {:<w$}  {:>7.2}%  ({}/{})",
                st.stratum,
                st.accuracy * 100.0,
                st.correct,
                st.images
            );
        }
    }
    let b = &r.batch_invariance;
    let _ = writeln!(
        s,
        "\nint8/fp32 disagreement: {} image(s), {:.2}%",
        r.disagreement.images,
        r.disagreement.rate * 100.0
    );
    let _ = writeln!(
        s,
        "batch invariance (int8, batch {:?}): {} differing prediction(s), max probability difference {:.3e}: {}",
        b.batches,
        b.differing_predictions,
        b.max_probability_difference,
        if b.invariant { "holds" } else { "BROKEN" }
    );
    for d in &r.disagreement.files {
        let _ = writeln!(
            s,
            "disagree: {} (true {}): int8 {} {:.1}%, fp32 {} {:.1}%",
            d.file,
            d.label,
            d.int8.label,
            d.int8.probability * 100.0,
            d.fp32.label,
            d.fp32.probability * 100.0
        );
    }
    for f in &r.failed {
        let at = f
            .line
            .map_or_else(String::new, |l| format!(" (labels.csv line {l})"));
        let _ = writeln!(s, "failed: {}{at}: {}: {}", f.file, f.kind, f.message);
    }
    match r.verdict {
        Verdict::Approved => {
            let _ = writeln!(s, "\nverdict: APPROVED");
        }
        Verdict::Rejected => {
            let _ = writeln!(s, "\nverdict: REJECTED");
            for reason in &r.reasons {
                let _ = writeln!(s, "  - {reason}");
            }
        }
    }
    s
}
