//! The labelled image set the gate runs on: the pipeline's split format (`labels.csv` with
//! `file,label,class_index[,stratum]`, image paths relative to the directory), validated
//! against the bundle's labels before any model is loaded, and its reproducible hash.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context};
use edgedx_bundle::sha256_hex;
use sha2::{Digest, Sha256};

/// The CSV file inside a dataset directory.
pub const LABELS_FILE: &str = "labels.csv";
/// Refuse label files larger than this: 100k images is far beyond a gate run on a board.
const MAX_LABELS_BYTES: u64 = 16 << 20;

/// One labelled image.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// 1-based line number in labels.csv, for error messages.
    pub line: usize,
    /// Path as written in labels.csv (relative to the dataset directory).
    pub file: String,
    pub path: PathBuf,
    pub class: usize,
    pub stratum: Option<String>,
}

/// A validated dataset.
#[derive(Debug)]
pub struct Dataset {
    pub dir: PathBuf,
    pub labels_csv: String,
    pub items: Vec<Item>,
}

/// Reads and validates `<dir>/labels.csv` against the bundle's `labels`.
pub fn load(dir: &Path, labels: &[String]) -> anyhow::Result<Dataset> {
    let csv_path = dir.join(LABELS_FILE);
    let meta = std::fs::metadata(&csv_path)
        .with_context(|| format!("cannot read {}", csv_path.display()))?;
    if meta.len() > MAX_LABELS_BYTES {
        bail!(
            "{}: {} bytes, larger than the {MAX_LABELS_BYTES}-byte limit",
            csv_path.display(),
            meta.len()
        );
    }
    let text = std::fs::read_to_string(&csv_path)
        .with_context(|| format!("cannot read {} as UTF-8 text", csv_path.display()))?;
    let (items, _has_strata) = parse(&text, labels)
        .map_err(|message| anyhow::anyhow!("{}:{message}", csv_path.display()))?;
    Ok(Dataset {
        dir: dir.to_path_buf(),
        labels_csv: text,
        items: items
            .into_iter()
            .map(|mut item| {
                item.path = dir.join(&item.file);
                item
            })
            .collect(),
    })
}

/// Parses labels.csv text. Errors are `"<line>: <message>"` so the caller can prefix the
/// path. The pipeline writes plain fields; quoted fields are refused rather than
/// half-supported.
fn parse(text: &str, labels: &[String]) -> Result<(Vec<Item>, bool), String> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')));
    let (_, header) = lines.find(|(_, l)| !l.trim().is_empty()).ok_or_else(|| {
        "1: empty file (expected a header `file,label,class_index[,stratum]`)".to_string()
    })?;
    let columns: Vec<&str> = header.split(',').map(str::trim).collect();
    let has_strata = match columns.as_slice() {
        ["file", "label", "class_index"] => false,
        ["file", "label", "class_index", "stratum"] => true,
        _ => {
            return Err(format!(
                "1: header is {header:?}, expected \"file,label,class_index\" with an optional \",stratum\""
            ))
        }
    };
    let mut items = Vec::new();
    let mut seen = HashSet::new();
    for (line, row) in lines {
        if row.trim().is_empty() {
            continue;
        }
        if row.contains('"') {
            return Err(format!("{line}: quoted fields are not supported: {row:?}"));
        }
        let fields: Vec<&str> = row.split(',').map(str::trim).collect();
        if fields.len() != columns.len() {
            return Err(format!(
                "{line}: {} field(s), the header has {}: {row:?}",
                fields.len(),
                columns.len()
            ));
        }
        let file = fields[0];
        check_relative(file).map_err(|m| format!("{line}: file {file:?} {m}"))?;
        if !seen.insert(file) {
            return Err(format!("{line}: file {file:?} is listed twice"));
        }
        let label = fields[1];
        let class = labels.iter().position(|l| l == label).ok_or_else(|| {
            format!(
                "{line}: unknown label {label:?} (the bundle's labels are: {})",
                labels.join(", ")
            )
        })?;
        let index: usize = fields[2]
            .parse()
            .map_err(|_| format!("{line}: class_index {:?} is not a number", fields[2]))?;
        if index != class {
            return Err(format!(
                "{line}: class_index {index} does not match label {label:?}, which is index {class} in the bundle"
            ));
        }
        let stratum = has_strata
            .then(|| fields[3])
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        items.push(Item {
            line,
            file: file.to_string(),
            path: PathBuf::new(),
            class,
            stratum,
        });
    }
    if items.is_empty() {
        return Err("2: no images listed".to_string());
    }
    Ok((items, has_strata))
}

/// A dataset path must stay inside the dataset directory.
fn check_relative(file: &str) -> Result<(), &'static str> {
    if file.is_empty() {
        return Err("is empty");
    }
    let ok = Path::new(file)
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if ok {
        Ok(())
    } else {
        Err("must be a relative path inside the dataset directory")
    }
}

/// `dataset_sha256`, as documented in models/BUNDLE.md: sha256 over
/// 1. every non-empty line of labels.csv (header included, `\r` stripped), sorted
///    bytewise, each followed by `\n`; then
/// 2. one `sha256sum`-style line `<hex>  <file>\n` per image, sorted bytewise by `file`,
///    where `<hex>` is the sha256 of the file's bytes.
///
/// Sorting makes the hash independent of row order; hashing the files, not only the
/// list, makes it change when any image changes. The same value comes from
/// `{ LC_ALL=C sort labels.csv; tail -n +2 labels.csv | cut -d, -f1 | LC_ALL=C sort | xargs sha256sum; } | sha256sum`
/// run in the dataset directory (for files without `\r` and blank lines).
pub fn dataset_sha256(labels_csv: &str, files: &[(String, String)]) -> String {
    let mut lines: Vec<&str> = labels_csv
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty())
        .collect();
    lines.sort_unstable();
    let mut files: Vec<&(String, String)> = files.iter().collect();
    files.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut h = Sha256::new();
    for l in lines {
        h.update(l.as_bytes());
        h.update(b"\n");
    }
    for (file, sha) in files {
        h.update(format!("{sha}  {file}\n").as_bytes());
    }
    hex::encode(h.finalize())
}

/// sha256 of an image's bytes, as it goes into [`dataset_sha256`].
pub fn file_sha256(bytes: &[u8]) -> String {
    sha256_hex(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        ["a", "b", "c"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_with_and_without_strata() {
        let (items, strata) = parse("file,label,class_index\nx/1.png,b,1\n\n", &labels()).unwrap();
        assert!(!strata);
        assert_eq!(items.len(), 1);
        assert_eq!((items[0].line, items[0].class), (2, 1));
        let text = "file,label,class_index,stratum\r\n1.png,a,0,obvious\r\n2.png,c,2,\r\n";
        let (items, strata) = parse(text, &labels()).unwrap();
        assert!(strata);
        assert_eq!(items[0].stratum.as_deref(), Some("obvious"));
        assert_eq!(items[1].stratum, None);
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse(
            "file,label,class_index\n1.png,a,0\n2.png,tumour,1\n",
            &labels(),
        )
        .unwrap_err();
        assert!(err.starts_with("3: unknown label \"tumour\""), "{err}");
        let err = parse("file,label,class_index\n1.png,a,1\n", &labels()).unwrap_err();
        assert!(err.starts_with("2: class_index 1 does not match"), "{err}");
        let err = parse("file,label,class_index\n1.png,a\n", &labels()).unwrap_err();
        assert!(err.starts_with("2: 2 field(s)"), "{err}");
        let err = parse("file,label,class_index\n../1.png,a,0\n", &labels()).unwrap_err();
        assert!(err.starts_with("2: file \"../1.png\""), "{err}");
        let err = parse("file,label,class_index\n/etc/x,a,0\n", &labels()).unwrap_err();
        assert!(err.starts_with("2: file"), "{err}");
        let err = parse("file,label\n1.png,a\n", &labels()).unwrap_err();
        assert!(err.starts_with("1: header"), "{err}");
        let err = parse("file,label,class_index\n1.png,a,0\n1.png,a,0\n", &labels()).unwrap_err();
        assert!(
            err.starts_with("3: file \"1.png\" is listed twice"),
            "{err}"
        );
        let err = parse("file,label,class_index\n", &labels()).unwrap_err();
        assert!(err.contains("no images"), "{err}");
    }

    #[test]
    fn dataset_hash_ignores_row_order_and_sees_file_changes() {
        let files = vec![
            ("b.png".to_string(), "22".repeat(32)),
            ("a.png".to_string(), "11".repeat(32)),
        ];
        let one = dataset_sha256("file,label,class_index\na.png,a,0\nb.png,b,1\n", &files);
        let swapped = dataset_sha256("file,label,class_index\nb.png,b,1\na.png,a,0\n", &files);
        assert_eq!(one, swapped);
        let mut changed = files.clone();
        changed[0].1 = "33".repeat(32);
        assert_ne!(
            one,
            dataset_sha256("file,label,class_index\na.png,a,0\nb.png,b,1\n", &changed)
        );
        // Hand-built input of the documented definition.
        let expected = sha256_hex(
            format!(
                "a.png,a,0\nb.png,b,1\nfile,label,class_index\n{}  a.png\n{}  b.png\n",
                "11".repeat(32),
                "22".repeat(32)
            )
            .as_bytes(),
        );
        assert_eq!(one, expected);
    }
}
