//! The gate's HTML report (`--report FILE.html`): one self-contained page (inline CSS, no
//! scripts, thumbnails as `data:` PNGs) with the verdict, per-class metrics, confusion heat
//! maps, per-stratum bars, batch invariance and the images int8 and fp32 disagree on.
//!
//! Every number on the page sits in an element with `data-metric="<key>"` and its exact
//! value in `data-value` (the shortest text that parses back to the same f64, as in the
//! JSON report; `null` where the JSON has `null`), so a test or a script can compare the
//! page with `--json` without scraping rounded text. Keys (`<p>` is `int8` or `fp32`):
//! `verdict`, `images`, `evaluated`, `failed`, `skipped_files`, `<p>.accuracy`,
//! `<p>.correct`, `<p>.precision.<label>`, `<p>.recall.<label>`, `<p>.f1.<label>`,
//! `<p>.support.<label>`, `<p>.confusion.<true>.<predicted>`,
//! `<p>.stratum.<name>.accuracy|images|correct`, `accuracy_drop`, `recall_drop.<label>`,
//! `thresholds.max_accuracy_drop|max_recall_drop`, `disagreement.images|rate`,
//! `disagreement.files.<n>.int8|fp32.probability`,
//! `batch_invariance.differing_predictions|max_probability_difference|invariant`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::Context;
use edgedx_bundle::Verdict;
use edgedx_ingest::Limits;
use image::{DynamicImage, GrayImage, RgbImage};

use super::metrics::Metrics;
use super::Report;

/// Disagreeing images shown with a thumbnail; the page says how many more there were (the
/// JSON report lists them all). 48 thumbnails of 96 px keep the page near 1 MB.
pub const MAX_SHOWN: usize = 48;
/// Longest side of a thumbnail, in pixels.
const THUMBNAIL_PX: u32 = 96;

/// Renders the page and writes it to `path` atomically (temp file beside it, then rename),
/// so a reader never sees half a page and a failed write leaves the old one.
pub fn write(path: &Path, report: &Report, limits: &Limits) -> anyhow::Result<()> {
    let thumbnails: Vec<Option<String>> = report
        .disagreement
        .files
        .iter()
        .take(MAX_SHOWN)
        .map(|d| thumbnail(&d.path, limits))
        .collect();
    let page = render(report, &thumbnails);
    write_atomic(path, page.as_bytes())
        .with_context(|| format!("writing the HTML report {}", path.display()))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A PNG thumbnail (longest side [`THUMBNAIL_PX`]) of the image as decoded for the model
/// (for DICOM: the frame and window ingest chose), base64-encoded; `None` when the file no
/// longer decodes (the page says so instead of failing the report).
fn thumbnail(path: &Path, limits: &Limits) -> Option<String> {
    let image = match edgedx_ingest::load_path(path, limits) {
        Ok(image) => image,
        Err(e) => {
            log::warn!("no thumbnail for {}: {e}", path.display());
            return None;
        }
    };
    let bytes: Vec<u8> = image
        .data
        .iter()
        .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    let full = match image.channels {
        1 => DynamicImage::ImageLuma8(GrayImage::from_raw(image.width, image.height, bytes)?),
        3 => DynamicImage::ImageRgb8(RgbImage::from_raw(image.width, image.height, bytes)?),
        _ => return None,
    };
    let small = if full.width().max(full.height()) > THUMBNAIL_PX {
        full.resize(
            THUMBNAIL_PX,
            THUMBNAIL_PX,
            image::imageops::FilterType::Triangle,
        )
    } else {
        full
    };
    let mut png = Vec::new();
    small
        .write_with_encoder(image::codecs::png::PngEncoder::new(&mut png))
        .ok()?;
    Some(base64(&png))
}

/// Standard base64 (RFC 4648, with padding), for `data:` URLs.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * k) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Escapes text for HTML element content and double- or single-quoted attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The machine-readable value of a number: Rust's shortest round-trip text (what
/// serde_json writes too), `null` for a missing or non-finite one (JSON has no NaN).
fn raw(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => v.to_string(),
        _ => "null".to_string(),
    }
}

/// A number element: `shown` is what people read, `data-value` what programs read.
fn metric(key: &str, value: &str, shown: &str) -> String {
    format!(
        r#"<span data-metric="{}" data-value="{}">{}</span>"#,
        esc(key),
        esc(value),
        esc(shown)
    )
}

fn percent(key: &str, v: Option<f64>) -> String {
    let shown = match v {
        Some(v) if v.is_finite() => format!("{:.2}%", v * 100.0),
        _ => "–".to_string(),
    };
    metric(key, &raw(v), &shown)
}

/// A drop in points (fractions times 100), signed.
fn points(key: &str, v: Option<f64>) -> String {
    let shown = match v {
        Some(v) if v.is_finite() => format!("{:+.2}", v * 100.0),
        _ => "–".to_string(),
    };
    metric(key, &raw(v), &shown)
}

fn count(key: &str, n: usize) -> String {
    metric(key, &n.to_string(), &n.to_string())
}

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1b1f24;margin:24px auto;max-width:1180px;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d5dae1;padding-bottom:4px}
.verdict{padding:12px 16px;border-radius:6px;font-size:18px;font-weight:600;margin:12px 0}
.approved{background:#e3f4e6;color:#17612a;border:1px solid #9fd3aa}.rejected{background:#fbe5e5;color:#8a1c1c;border:1px solid #eaa5a5}
table{border-collapse:collapse;margin:6px 0}th,td{padding:3px 9px;text-align:right;border-bottom:1px solid #eceff3}
th{background:#f4f6f9;font-weight:600}th[colspan]{text-align:center}td.l,th.l{text-align:left}code{font-size:12px;word-break:break-all}
.grid{display:flex;flex-wrap:wrap;gap:28px}.heat td{width:78px;height:48px;text-align:center;border:1px solid #fff}
.heat td.diag{outline:2px solid #1b1f24;outline-offset:-2px}.heat small{display:block;font-size:11px;opacity:.8}
.bars{display:grid;grid-template-columns:170px 44px 1fr 130px;gap:3px 8px;align-items:center;max-width:760px}
.track{background:#eef1f5;height:14px;border-radius:3px}.bar{height:14px;border-radius:3px}.fp32{background:#6b8fc9}.int8{background:#d08a2e}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #d5dae1;border-radius:6px;padding:8px;width:210px;font-size:12px}
.card img{display:block;margin:0 auto 6px;image-rendering:auto;background:#000}.nothumb{height:96px;display:flex;align-items:center;justify-content:center;background:#eef1f5}
.muted{color:#5b6470}
";

/// The whole page. `thumbnails[i]` belongs to `report.disagreement.files[i]`; only that
/// many images are shown.
pub(super) fn render(r: &Report, thumbnails: &[Option<String>]) -> String {
    let mut s = String::with_capacity(64 * 1024);
    let verdict = match r.verdict {
        Verdict::Approved => "approved",
        Verdict::Rejected => "rejected",
    };
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>edgedx gate: {} {}</title><style>{STYLE}</style></head><body>\n",
        esc(&r.bundle),
        verdict
    );
    let _ = writeln!(
        s,
        "<h1>Accuracy gate: {}</h1><div class=\"muted\">int8 against fp32 on {} — {} {}</div>",
        esc(&r.bundle),
        esc(&r.dataset),
        esc(&r.tool),
        esc(&r.date)
    );
    let _ = write!(
        s,
        "<div class=\"verdict {verdict}\" id=\"verdict\">{}</div>",
        metric("verdict", verdict, &verdict.to_uppercase())
    );
    if !r.reasons.is_empty() {
        s.push_str("<ul class=\"reasons\">");
        for reason in &r.reasons {
            let _ = write!(s, "<li>{}</li>", esc(reason));
        }
        s.push_str("</ul>\n");
    }

    summary(&mut s, r);
    comparison(&mut s, r);
    per_class(&mut s, r);
    s.push_str("<h2>Confusion matrices</h2><p class=\"muted\">Rows: true class; columns: predicted class. Colour: share of the true class's images.</p><div class=\"grid\">");
    for (name, m) in [("fp32", &r.fp32), ("int8", &r.int8)] {
        heat_map(&mut s, name, m, &r.labels);
    }
    s.push_str("</div>\n");
    strata(&mut s, r);
    batch(&mut s, r);
    disagreements(&mut s, r, thumbnails);
    failures(&mut s, r);
    s.push_str("</body></html>\n");
    s
}

fn summary(s: &mut String, r: &Report) {
    let layout = match r.dataset_layout {
        super::Layout::Csv => "labels.csv",
        super::Layout::ImageFolder => "ImageFolder",
    };
    let row = |s: &mut String, name: &str, value: &str| {
        let _ = write!(
            s,
            "<tr><th class=\"l\">{name}</th><td class=\"l\">{value}</td></tr>"
        );
    };
    s.push_str("<h2>Bundle and dataset</h2><table>");
    row(s, "bundle", &esc(&r.bundle));
    row(
        s,
        "int8 sha256",
        &format!("<code>{}</code>", esc(&r.int8_sha256)),
    );
    row(
        s,
        "fp32 sha256",
        &format!("<code>{}</code>", esc(&r.fp32_sha256)),
    );
    row(s, "dataset", &format!("{} ({layout})", esc(&r.dataset)));
    row(
        s,
        "dataset sha256",
        &format!("<code>{}</code>", esc(&r.dataset_sha256)),
    );
    row(
        s,
        "images",
        &format!(
            "{} listed, {} evaluated, {} failed",
            count("images", r.images),
            count("evaluated", r.evaluated),
            count("failed", r.failed.len())
        ),
    );
    if !r.skipped_files.is_empty() {
        let shown: Vec<String> = r.skipped_files.iter().take(10).map(|f| esc(f)).collect();
        row(
            s,
            "skipped files",
            &format!(
                "{} not images by their name: {}{}",
                count("skipped_files", r.skipped_files.len()),
                shown.join(", "),
                if r.skipped_files.len() > 10 {
                    ", …"
                } else {
                    ""
                }
            ),
        );
    }
    row(
        s,
        "thresholds",
        &format!(
            "accuracy drop ≤ {} points, recall drop ≤ {} points per class",
            metric(
                "thresholds.max_accuracy_drop",
                &raw(Some(r.thresholds.max_accuracy_drop)),
                &format!("{:.2}", r.thresholds.max_accuracy_drop * 100.0)
            ),
            metric(
                "thresholds.max_recall_drop",
                &raw(Some(r.thresholds.max_recall_drop)),
                &format!("{:.2}", r.thresholds.max_recall_drop * 100.0)
            )
        ),
    );
    s.push_str("</table>\n");
}

fn comparison(s: &mut String, r: &Report) {
    s.push_str(
        "<h2>int8 against fp32</h2><table><tr><th class=\"l\"></th><th>fp32</th><th>int8</th><th>drop (points)</th></tr>",
    );
    let _ = write!(
        s,
        "<tr><td class=\"l\">accuracy</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        percent("fp32.accuracy", Some(r.fp32.accuracy)),
        percent("int8.accuracy", Some(r.int8.accuracy)),
        points("accuracy_drop", Some(r.accuracy_drop))
    );
    for (c, label) in r.labels.iter().enumerate() {
        let _ = write!(
            s,
            "<tr><td class=\"l\">recall {}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(label),
            percent(&format!("fp32.recall.{label}"), r.fp32.classes[c].recall),
            percent(&format!("int8.recall.{label}"), r.int8.classes[c].recall),
            points(&format!("recall_drop.{label}"), r.recall_drop[c])
        );
    }
    let _ = writeln!(
        s,
        "<tr><td class=\"l\">correct</td><td>{}</td><td>{}</td><td></td></tr></table>",
        count("fp32.correct", r.fp32.correct),
        count("int8.correct", r.int8.correct)
    );
}

fn per_class(s: &mut String, r: &Report) {
    s.push_str(
        "<h2>Per class</h2><table><tr><th class=\"l\" rowspan=\"2\">class</th><th colspan=\"3\">fp32</th><th colspan=\"3\">int8</th><th rowspan=\"2\">support</th></tr>\
         <tr><th>precision</th><th>recall</th><th>F1</th><th>precision</th><th>recall</th><th>F1</th></tr>",
    );
    for (c, label) in r.labels.iter().enumerate() {
        let _ = write!(s, "<tr><td class=\"l\">{}</td>", esc(label));
        for (name, m) in [("fp32", &r.fp32), ("int8", &r.int8)] {
            let class = &m.classes[c];
            let _ = write!(
                s,
                "<td>{}</td><td>{}</td><td>{}</td>",
                percent(&format!("{name}.precision.{label}"), class.precision),
                percent(&format!("{name}.recall.{label}"), class.recall),
                percent(&format!("{name}.f1.{label}"), class.f1)
            );
        }
        // Support is the same for both precisions (it counts true labels); both keys exist.
        let _ = write!(
            s,
            "<td>{}<span hidden>{}</span></td></tr>",
            count(&format!("fp32.support.{label}"), r.fp32.classes[c].support),
            count(&format!("int8.support.{label}"), r.int8.classes[c].support)
        );
    }
    s.push_str("</table>\n");
}

/// Background of a confusion cell: from near-white (0) to dark blue (the whole row).
fn heat_colour(fraction: f64) -> (String, &'static str) {
    let f = fraction.clamp(0.0, 1.0);
    let lightness = 97.0 - 62.0 * f;
    let text = if f > 0.45 { "#fff" } else { "#1b1f24" };
    (format!("hsl(215,65%,{lightness:.1}%)"), text)
}

fn heat_map(s: &mut String, name: &str, m: &Metrics, labels: &[String]) {
    let _ = write!(
        s,
        "<div><h3>{name}</h3><table class=\"heat\" id=\"confusion-{name}\"><tr><th class=\"l\">true \\ predicted</th>"
    );
    for label in labels {
        let _ = write!(s, "<th>{}</th>", esc(label));
    }
    s.push_str("</tr>");
    for (t, (label, row)) in labels.iter().zip(&m.confusion).enumerate() {
        let total: usize = row.iter().sum();
        let _ = write!(s, "<tr><th class=\"l\">{}</th>", esc(label));
        for (p, &n) in row.iter().enumerate() {
            let fraction = if total > 0 {
                n as f64 / total as f64
            } else {
                0.0
            };
            let (bg, fg) = heat_colour(fraction);
            let _ = write!(
                s,
                "<td class=\"{}\" style=\"background:{bg};color:{fg}\">{}<small>{:.0}%</small></td>",
                if t == p { "diag" } else { "" },
                count(&format!("{name}.confusion.{label}.{}", labels[p]), n),
                fraction * 100.0
            );
        }
        s.push_str("</tr>");
    }
    s.push_str("</table></div>");
}

fn strata(s: &mut String, r: &Report) {
    s.push_str("<h2>Accuracy per stratum</h2>");
    if r.fp32.strata.is_empty() && r.int8.strata.is_empty() {
        s.push_str("<p class=\"muted\">The dataset has no strata.</p>\n");
        return;
    }
    s.push_str("<div class=\"bars\">");
    // Both precisions count the same images, so they hold the same strata; the union keeps
    // the page honest should that ever change.
    let names: std::collections::BTreeSet<&str> = r
        .fp32
        .strata
        .iter()
        .chain(&r.int8.strata)
        .map(|st| st.stratum.as_str())
        .collect();
    let rows = names.into_iter().flat_map(|stratum| {
        [("fp32", &r.fp32), ("int8", &r.int8)]
            .into_iter()
            .filter_map(move |(name, m)| {
                m.strata
                    .iter()
                    .find(|st| st.stratum == stratum)
                    .map(|st| (name, st))
            })
    });
    for (name, m) in rows {
        let key = format!("{name}.stratum.{}", m.stratum);
        let _ = write!(
            s,
            "<div>{}</div><div class=\"muted\">{name}</div><div class=\"track\"><div class=\"bar {name}\" style=\"width:{:.2}%\"></div></div>\
             <div>{} <span class=\"muted\">({}/{})</span></div>",
            esc(&m.stratum),
            m.accuracy * 100.0,
            percent(&format!("{key}.accuracy"), Some(m.accuracy)),
            count(&format!("{key}.correct"), m.correct),
            count(&format!("{key}.images"), m.images)
        );
    }
    s.push_str("</div>\n");
}

fn batch(s: &mut String, r: &Report) {
    let b = &r.batch_invariance;
    let batches: Vec<String> = b.batches.iter().map(usize::to_string).collect();
    let _ = writeln!(
        s,
        "<h2>Batch invariance</h2><p>int8 with batch {}: {} image(s) with a different class than at batch 1, \
         largest probability difference {}: <b>{}</b></p>",
        batches.join(", "),
        count("batch_invariance.differing_predictions", b.differing_predictions),
        metric(
            "batch_invariance.max_probability_difference",
            &raw(Some(b.max_probability_difference)),
            &format!("{:.3e}", b.max_probability_difference)
        ),
        metric(
            "batch_invariance.invariant",
            if b.invariant { "true" } else { "false" },
            if b.invariant { "holds" } else { "BROKEN" }
        )
    );
}

fn disagreements(s: &mut String, r: &Report, thumbnails: &[Option<String>]) {
    let d = &r.disagreement;
    let _ = write!(
        s,
        "<h2>Images int8 and fp32 classify differently</h2><p>{} image(s), {} of those evaluated.</p>",
        count("disagreement.images", d.images),
        percent("disagreement.rate", Some(d.rate))
    );
    if d.files.is_empty() {
        return;
    }
    s.push_str("<div class=\"cards\">");
    for (n, (item, thumb)) in d.files.iter().zip(thumbnails).enumerate() {
        let picture = match thumb {
            Some(b64) => format!(
                "<img alt=\"{}\" src=\"data:image/png;base64,{b64}\">",
                esc(&item.file)
            ),
            None => "<div class=\"nothumb muted\">no thumbnail</div>".to_string(),
        };
        let _ = write!(
            s,
            "<div class=\"card\">{picture}<div><code>{}</code></div><div>true: <b>{}</b></div>\
             <div>int8: {} {}</div><div>fp32: {} {}</div></div>",
            esc(&item.file),
            esc(&item.label),
            esc(&item.int8.label),
            percent(
                &format!("disagreement.files.{n}.int8.probability"),
                Some(item.int8.probability)
            ),
            esc(&item.fp32.label),
            percent(
                &format!("disagreement.files.{n}.fp32.probability"),
                Some(item.fp32.probability)
            )
        );
    }
    s.push_str("</div>");
    let left_out = d.files.len().saturating_sub(thumbnails.len());
    if left_out > 0 {
        let _ = write!(
            s,
            "<p class=\"muted\" id=\"left-out\">{} more not shown (the JSON report, <code>--json</code>, lists them all).</p>",
            count("disagreement.left_out", left_out)
        );
    }
    s.push('\n');
}

fn failures(s: &mut String, r: &Report) {
    if r.failed.is_empty() {
        return;
    }
    s.push_str("<h2>Images that could not be evaluated</h2><table><tr><th class=\"l\">file</th><th class=\"l\">kind</th><th class=\"l\">error</th></tr>");
    for f in &r.failed {
        let _ = write!(
            s,
            "<tr><td class=\"l\"><code>{}</code></td><td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
            esc(&f.file),
            esc(&f.kind),
            esc(&f.message)
        );
    }
    s.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in cases {
            assert_eq!(base64(input.as_bytes()), expected, "{input:?}");
        }
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc(r#"<script>"a" & 'b'</script>"#),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn raw_values_round_trip_and_missing_ones_are_null() {
        for v in [0.875, 1.0 / 3.0, 0.0, 1.0, 2.5e-7] {
            assert_eq!(raw(Some(v)).parse::<f64>().unwrap(), v);
        }
        assert_eq!(raw(None), "null");
        assert_eq!(raw(Some(f64::NAN)), "null");
        assert_eq!(
            percent("a.b", Some(0.5)),
            r#"<span data-metric="a.b" data-value="0.5">50.00%</span>"#
        );
    }

    #[test]
    fn heat_colour_darkens_with_the_fraction() {
        assert_eq!(
            heat_colour(0.0),
            ("hsl(215,65%,97.0%)".to_string(), "#1b1f24")
        );
        assert_eq!(heat_colour(1.0), ("hsl(215,65%,35.0%)".to_string(), "#fff"));
        assert_eq!(heat_colour(f64::NAN).1, "#1b1f24");
    }

    #[test]
    fn the_written_page_replaces_the_old_one_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.html");
        std::fs::write(&path, "old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        assert!(write_atomic(&dir.path().join("missing/r.html"), b"x").is_err());
    }

    /// A rejected report over labels `a`, `<q>` (markup in a label must be escaped) with
    /// three disagreeing images, built by hand.
    fn report() -> Report {
        use super::super::{BatchInvariance, DisagreeingImage, Disagreement, Failure, Prediction};
        let labels = vec!["a".to_string(), "<q>".to_string()];
        let truth = [0, 0, 1, 1];
        let strata = vec![Some("s&t".to_string()); 4];
        let int8 = super::super::metrics::compute(&labels, &truth, &[1, 1, 1, 0], &strata);
        let fp32 = super::super::metrics::compute(&labels, &truth, &[0, 0, 1, 1], &strata);
        let file = |n: usize| DisagreeingImage {
            file: format!("a/\"x{n}\".png"),
            path: PathBuf::from("/nonexistent"),
            label: labels[0].clone(),
            int8: Prediction {
                label: labels[1].clone(),
                probability: 0.75,
            },
            fp32: Prediction {
                label: labels[0].clone(),
                probability: 0.5,
            },
        };
        Report {
            verdict: Verdict::Rejected,
            reasons: vec!["accuracy drop <script>".into()],
            bundle: "demo@1".into(),
            int8_sha256: "11".repeat(32),
            fp32_sha256: "22".repeat(32),
            dataset: "/data/<set>".into(),
            dataset_layout: super::super::Layout::ImageFolder,
            dataset_sha256: "33".repeat(32),
            skipped_files: vec!["README.md".into()],
            images: 5,
            evaluated: 4,
            failed: vec![Failure {
                file: "a/bad.png".into(),
                line: None,
                kind: "decode".into(),
                message: "not a <png>".into(),
            }],
            thresholds: edgedx_bundle::GateThresholds {
                max_accuracy_drop: 0.01,
                max_recall_drop: 0.01,
            },
            accuracy_drop: fp32.accuracy - int8.accuracy,
            recall_drop: vec![Some(1.0), Some(0.5)],
            disagreement: Disagreement {
                images: 3,
                rate: 0.75,
                files: (0..3).map(file).collect(),
            },
            labels,
            fp32,
            int8,
            batch_invariance: BatchInvariance {
                batches: vec![1, 2, 4],
                differing_predictions: 0,
                max_probability_difference: 2.5e-8,
                invariant: true,
            },
            tool: "edgedx test".into(),
            date: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn the_page_escapes_dataset_text_and_caps_the_thumbnails() {
        let r = report();
        let page = render(&r, &[Some("QUJD".into()), None]);
        assert!(!page.contains("<q>") && !page.contains("<script") && !page.contains("<set>"));
        assert!(page.contains("&lt;q&gt;") && page.contains("a/&quot;x0&quot;.png"));
        // Hooks carry exact values; labels in keys are escaped like any attribute.
        assert!(page.contains(r#"data-metric="int8.recall.&lt;q&gt;" data-value="0.5""#));
        assert!(page.contains(r#"data-metric="fp32.confusion.a.&lt;q&gt;" data-value="0""#));
        assert!(page.contains(r#"data-metric="int8.precision.a" data-value="0""#));
        assert!(page.contains(r#"data-metric="int8.stratum.s&amp;t.accuracy" data-value="0.25""#));
        // Rust writes f64 without an exponent; it parses back to the same value.
        assert!(page.contains(
            r#"data-metric="batch_invariance.max_probability_difference" data-value="0.000000025""#
        ));
        // Two cards (one thumbnail, one without), the third counted as left out.
        assert_eq!(page.matches("class=\"card\"").count(), 2);
        assert_eq!(
            page.matches("src=\"data:image/png;base64,QUJD\"").count(),
            1
        );
        assert!(page.contains("no thumbnail"));
        assert!(page.contains(r#"data-metric="disagreement.left_out" data-value="1""#));
        assert!(page.contains("disagreement.files.1.int8.probability"));
        assert!(!page.contains("disagreement.files.2."));
        // The failure and the rejection are on the page.
        assert!(page.contains("not a &lt;png&gt;") && page.contains("class=\"verdict rejected\""));
        // Nothing outside the page.
        for outside in ["http:", "https:", "<script", "<link", "url("] {
            assert!(!page.contains(outside), "{outside}");
        }
    }

    #[test]
    fn thumbnails_are_small_pngs_of_the_decoded_image() {
        let samples =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/brain-mri-4class/samples");
        for name in ["glioma-01.png", "meningioma-02.dcm"] {
            let b64 = thumbnail(&samples.join(name), &Limits::default())
                .unwrap_or_else(|| panic!("{name}: no thumbnail"));
            // Decoding the base64 back is the image crate's job here: check the PNG header
            // (base64 of \x89PNG\r\n\x1a\n) and the size through a round trip.
            assert!(b64.starts_with("iVBORw0KGgo"), "{name}");
            let png = decode_base64(&b64);
            let img = image::load_from_memory(&png).unwrap();
            assert_eq!(img.width().max(img.height()), THUMBNAIL_PX, "{name}");
        }
        assert!(thumbnail(&samples.join("missing.png"), &Limits::default()).is_none());
    }

    /// Test-only inverse of [`base64`].
    fn decode_base64(text: &str) -> Vec<u8> {
        let value = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        let mut out = Vec::new();
        for chunk in text.as_bytes().chunks(4) {
            let n = chunk
                .iter()
                .enumerate()
                .filter(|(_, c)| **c != b'=')
                .fold(0u32, |n, (k, c)| n | u32::from(value(*c)) << (18 - 6 * k));
            let bytes = chunk.iter().filter(|c| **c != b'=').count() - 1;
            out.extend_from_slice(&n.to_be_bytes()[1..=bytes]);
        }
        out
    }
}
