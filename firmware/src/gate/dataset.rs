//! The labelled image set the gate runs on, validated against the bundle's labels before
//! any model is loaded, and its reproducible hash. Two layouts:
//! - the pipeline's split format: `labels.csv` with `file,label,class_index[,stratum]`,
//!   image paths relative to the directory;
//! - when there is no `labels.csv`, an ImageFolder tree: `<label>/<image>` or
//!   `<label>/<stratum>/<image>`, which is read into the same rows the CSV would hold.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context};
use edgedx_bundle::sha256_hex;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The CSV file inside a dataset directory.
pub const LABELS_FILE: &str = "labels.csv";
/// Refuse label files larger than this: 100k images is far beyond a gate run on a board.
const MAX_LABELS_BYTES: u64 = 16 << 20;
/// Refuse ImageFolder trees with more images than this (the same bound, in rows).
const MAX_FOLDER_IMAGES: usize = 200_000;
/// File extensions (compared case-insensitively) read as images in an ImageFolder tree.
/// The format is still recognised from the bytes, never from the name.
pub const IMAGE_EXTENSIONS: [&str; 8] = ["png", "jpg", "jpeg", "dcm", "dicom", "pgm", "ppm", "pnm"];

/// One labelled image.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// 1-based line number in labels.csv, for error messages; `None` in an ImageFolder tree.
    pub line: Option<usize>,
    /// Path relative to the dataset directory (as written in labels.csv, or
    /// `<label>/[<stratum>/]<name>` with `/` separators in an ImageFolder tree).
    pub file: String,
    pub path: PathBuf,
    pub class: usize,
    pub stratum: Option<String>,
}

/// How the dataset directory describes its labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Csv,
    ImageFolder,
}

/// A validated dataset.
#[derive(Debug)]
pub struct Dataset {
    pub dir: PathBuf,
    pub layout: Layout,
    /// labels.csv as read, or for an ImageFolder tree the labels.csv that lists it (what
    /// [`dataset_sha256`] hashes; see [`folder_csv`]).
    pub labels_csv: String,
    pub items: Vec<Item>,
    /// Files in an ImageFolder tree that are not images by their extension (README,
    /// notes), relative to the directory, sorted. Hidden entries are not listed.
    pub skipped: Vec<String>,
}

/// Reads and validates the dataset in `dir` against the bundle's `labels`: `labels.csv`
/// when it exists, an ImageFolder tree otherwise.
pub fn load(dir: &Path, labels: &[String]) -> anyhow::Result<Dataset> {
    let csv_path = dir.join(LABELS_FILE);
    let meta = match std::fs::metadata(&csv_path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return load_folder(dir, labels);
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", csv_path.display())),
    };
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
        layout: Layout::Csv,
        labels_csv: text,
        items: items
            .into_iter()
            .map(|mut item| {
                item.path = dir.join(&item.file);
                item
            })
            .collect(),
        skipped: Vec::new(),
    })
}

/// One directory entry of an ImageFolder tree.
enum Entry {
    Dir(String),
    Image(String),
    Other(String),
}

/// The non-hidden entries of `dir`, sorted bytewise by name. Names must be UTF-8 (they
/// become labels, strata and `file` values) and free of CSV delimiters (the dataset hash
/// lists them as CSV rows).
fn entries(dir: &Path) -> anyhow::Result<Vec<Entry>> {
    let read = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read dataset directory {}", dir.display()))?;
    let mut out = Vec::new();
    for entry in read {
        let entry =
            entry.with_context(|| format!("cannot read dataset directory {}", dir.display()))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            bail!("{}: the file name is not UTF-8; rename it", path.display());
        };
        if name.starts_with('.') {
            continue;
        }
        if name.contains([',', '"']) || name.chars().any(char::is_control) || name.trim() != name {
            bail!(
                "{}: names with a comma, a double quote, a control character or leading or trailing blanks are not supported (the dataset hash lists files as CSV rows); rename it",
                path.display()
            );
        }
        // Follows symbolic links: a tree of links into a larger archive is a fair layout.
        let meta =
            std::fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
        out.push(if meta.is_dir() {
            Entry::Dir(name)
        } else if is_image_name(&name) {
            Entry::Image(name)
        } else {
            Entry::Other(name)
        });
    }
    out.sort_unstable_by(|a, b| entry_name(a).as_bytes().cmp(entry_name(b).as_bytes()));
    Ok(out)
}

fn entry_name(e: &Entry) -> &str {
    match e {
        Entry::Dir(n) | Entry::Image(n) | Entry::Other(n) => n,
    }
}

/// An image by its name inside a label or stratum folder: one of [`IMAGE_EXTENSIONS`], or
/// no extension at all (scanners and PACS exports write DICOM files without one), except
/// a DICOMDIR index.
fn is_image_name(name: &str) -> bool {
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => IMAGE_EXTENSIONS
            .iter()
            .any(|known| ext.eq_ignore_ascii_case(known)),
        _ => !name.eq_ignore_ascii_case("DICOMDIR"),
    }
}

fn has_extension(name: &str) -> bool {
    name.rsplit_once('.')
        .is_some_and(|(stem, _)| !stem.is_empty())
}

/// Reads an ImageFolder tree: `<dir>/<label>/<image>` or `<dir>/<label>/<stratum>/<image>`.
///
/// Rules (models/README.md, "Gate on your own dataset"): hidden entries (`.name`) are
/// skipped everywhere; top-level folders must be bundle labels; a top-level image has no
/// label and is refused, other top-level files (README, LICENSE) are skipped; a label folder holds either
/// images or stratum folders, not both; a stratum folder holds images only; files that are
/// not images by their name are skipped and listed. Items are sorted bytewise by `file`.
fn load_folder(dir: &Path, labels: &[String]) -> anyhow::Result<Dataset> {
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot read dataset directory {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("dataset {} is not a directory", dir.display());
    }
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    let mut has_strata = false;
    let push = |items: &mut Vec<Item>,
                file: String,
                class: usize,
                stratum: Option<&str>|
     -> anyhow::Result<()> {
        if items.len() == MAX_FOLDER_IMAGES {
            bail!(
                "dataset {}: more than {MAX_FOLDER_IMAGES} images; gate a sample of it",
                dir.display()
            );
        }
        items.push(Item {
            line: None,
            path: dir.join(&file),
            file,
            class,
            stratum: stratum.map(str::to_string),
        });
        Ok(())
    };
    for top in entries(dir)? {
        let label = match top {
            Entry::Dir(name) => name,
            Entry::Image(name) if has_extension(&name) => bail!(
                "{}: an image at the top of an ImageFolder dataset has no label; move it into a label folder ({}) or list the set in {LABELS_FILE}",
                dir.join(&name).display(),
                labels.join(", ")
            ),
            // README, LICENSE and the like beside the label folders.
            Entry::Image(name) | Entry::Other(name) => {
                skipped.push(name);
                continue;
            }
        };
        let Some(class) = labels.iter().position(|l| *l == label) else {
            bail!(
                "{}: folder {label:?} is not a label of the bundle (its labels are: {}); an ImageFolder dataset has one folder per label",
                dir.join(&label).display(),
                labels.join(", ")
            );
        };
        let label_dir = dir.join(&label);
        let inner = entries(&label_dir)?;
        let images = inner
            .iter()
            .filter(|e| matches!(e, Entry::Image(_)))
            .count();
        let folders = inner.iter().filter(|e| matches!(e, Entry::Dir(_))).count();
        if images > 0 && folders > 0 {
            let first = |want_dir: bool| {
                inner
                    .iter()
                    .find(|e| {
                        matches!(e, Entry::Dir(_)) == want_dir && !matches!(e, Entry::Other(_))
                    })
                    .map_or("", entry_name)
            };
            bail!(
                "{}: holds both images (e.g. {:?}) and sub-folders (e.g. {:?}); a label folder holds either images or one folder per stratum",
                label_dir.display(),
                first(false),
                first(true)
            );
        }
        for e in inner {
            match e {
                Entry::Image(name) => push(&mut items, format!("{label}/{name}"), class, None)?,
                Entry::Other(name) => skipped.push(format!("{label}/{name}")),
                Entry::Dir(stratum) => {
                    has_strata = true;
                    let stratum_dir = label_dir.join(&stratum);
                    for e in entries(&stratum_dir)? {
                        match e {
                            Entry::Image(name) => push(
                                &mut items,
                                format!("{label}/{stratum}/{name}"),
                                class,
                                Some(&stratum),
                            )?,
                            Entry::Other(name) => skipped.push(format!("{label}/{stratum}/{name}")),
                            Entry::Dir(name) => bail!(
                                "{}: a stratum folder holds images only (layout <label>/<stratum>/<image>)",
                                stratum_dir.join(name).display()
                            ),
                        }
                    }
                }
            }
        }
    }
    if items.is_empty() {
        bail!(
            "dataset {}: no {LABELS_FILE} and no images in label folders (expected <label>/<image> or <label>/<stratum>/<image>, labels: {})",
            dir.display(),
            labels.join(", ")
        );
    }
    items.sort_unstable_by(|a, b| a.file.as_bytes().cmp(b.file.as_bytes()));
    skipped.sort_unstable();
    let labels_csv = folder_csv(&items, labels, has_strata);
    Ok(Dataset {
        dir: dir.to_path_buf(),
        layout: Layout::ImageFolder,
        labels_csv,
        items,
        skipped,
    })
}

/// The labels.csv that lists an ImageFolder tree: header `file,label,class_index`, plus
/// `,stratum` when any label folder has stratum folders, then one row per image in item
/// order (an image directly in its label folder has an empty stratum). Writing this text
/// as `labels.csv` into the directory gives a CSV dataset with the same items and the same
/// [`dataset_sha256`].
pub fn folder_csv(items: &[Item], labels: &[String], has_strata: bool) -> String {
    let mut text = String::from(if has_strata {
        "file,label,class_index,stratum\n"
    } else {
        "file,label,class_index\n"
    });
    for item in items {
        text.push_str(&item.file);
        text.push(',');
        text.push_str(&labels[item.class]);
        text.push(',');
        text.push_str(&item.class.to_string());
        if has_strata {
            text.push(',');
            text.push_str(item.stratum.as_deref().unwrap_or(""));
        }
        text.push('\n');
    }
    text
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
            line: Some(line),
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
        assert_eq!((items[0].line, items[0].class), (Some(2), 1));
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

    /// Builds a tree under a temp dir from `(path, bytes)` pairs, in the given order.
    fn tree(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, bytes) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        dir
    }

    fn err(dir: &tempfile::TempDir) -> String {
        format!("{:#}", load(dir.path(), &labels()).unwrap_err())
    }

    #[test]
    fn image_folder_reads_labels_strata_in_bytewise_order() {
        let dir = tree(&[
            ("c/subtle/b.PNG", b"1"),
            ("c/obvious/z.jpg", b"2"),
            ("c/obvious/IM0001", b"3"),
            ("a/2.dcm", b"4"),
            ("a/10.png", b"5"),
            ("a/notes.txt", b"n"),
            ("a/.DS_Store", b"h"),
            (".git/config", b"h"),
            ("README.md", b"r"),
            ("LICENSE", b"l"),
            ("c/obvious/DICOMDIR", b"d"),
        ]);
        let data = load(dir.path(), &labels()).unwrap();
        assert_eq!(data.layout, Layout::ImageFolder);
        let rows: Vec<(&str, usize, Option<&str>, Option<usize>)> = data
            .items
            .iter()
            .map(|i| (i.file.as_str(), i.class, i.stratum.as_deref(), i.line))
            .collect();
        assert_eq!(
            rows,
            [
                ("a/10.png", 0, None, None),
                ("a/2.dcm", 0, None, None),
                ("c/obvious/IM0001", 2, Some("obvious"), None),
                ("c/obvious/z.jpg", 2, Some("obvious"), None),
                ("c/subtle/b.PNG", 2, Some("subtle"), None),
            ]
        );
        assert_eq!(data.items[0].path, dir.path().join("a/10.png"));
        assert_eq!(
            data.skipped,
            ["LICENSE", "README.md", "a/notes.txt", "c/obvious/DICOMDIR"]
        );
        assert_eq!(
            data.labels_csv,
            "file,label,class_index,stratum\na/10.png,a,0,\na/2.dcm,a,0,\n\
             c/obvious/IM0001,c,2,obvious\nc/obvious/z.jpg,c,2,obvious\nc/subtle/b.PNG,c,2,subtle\n"
        );
    }

    #[test]
    fn image_folder_layout_errors_name_the_folder() {
        let e = err(&tree(&[("a/1.png", b"1"), ("tumour/2.png", b"2")]));
        assert!(e.contains("tumour") && e.contains("is not a label"), "{e}");
        assert!(e.contains("a, b, c"), "{e}");
        let e = err(&tree(&[("a/1.png", b"1"), ("a/hard/2.png", b"2")]));
        assert!(
            e.contains("holds both images") && e.contains("\"1.png\"") && e.contains("\"hard\""),
            "{e}"
        );
        let e = err(&tree(&[("a/s/deep/1.png", b"1")]));
        assert!(
            e.contains("deep") && e.contains("stratum folder holds images only"),
            "{e}"
        );
        let e = err(&tree(&[("a/1.png", b"1"), ("stray.png", b"2")]));
        assert!(e.contains("stray.png") && e.contains("has no label"), "{e}");
        let e = err(&tree(&[("a/x, y.png", b"1")]));
        assert!(e.contains("x, y.png") && e.contains("comma"), "{e}");
        let e = err(&tree(&[("a/notes.txt", b"1"), ("README", b"r")]));
        assert!(e.contains("no images"), "{e}");
        let missing = tempfile::tempdir().unwrap();
        let e = format!(
            "{:#}",
            load(&missing.path().join("nope"), &labels()).unwrap_err()
        );
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn labels_csv_wins_over_folders() {
        let dir = tree(&[
            ("a/1.png", b"1"),
            ("unlisted/2.png", b"2"),
            ("labels.csv", b"file,label,class_index\na/1.png,a,0\n"),
        ]);
        let data = load(dir.path(), &labels()).unwrap();
        assert_eq!(data.layout, Layout::Csv);
        assert_eq!(data.items.len(), 1);
        assert_eq!(data.items[0].line, Some(2));
    }

    #[test]
    fn image_folder_hash_is_the_hash_of_the_equivalent_csv_set() {
        let files: [(&str, &[u8]); 3] = [("b/x.png", b"1"), ("a/y.png", b"2"), ("a/z.png", b"3")];
        let forward = tree(&files);
        let mut reversed = files;
        reversed.reverse();
        let backward = tree(&reversed);
        let hash = |dir: &Path| {
            let data = load(dir, &labels()).unwrap();
            let hashes: Vec<(String, String)> = data
                .items
                .iter()
                .map(|i| {
                    (
                        i.file.clone(),
                        file_sha256(&std::fs::read(&i.path).unwrap()),
                    )
                })
                .collect();
            (data.layout, dataset_sha256(&data.labels_csv, &hashes))
        };
        let (layout, folder) = hash(forward.path());
        assert_eq!(layout, Layout::ImageFolder);
        // Creation order does not matter.
        assert_eq!(hash(backward.path()).1, folder);
        // The same set listed by a labels.csv (rows in any order) hashes the same.
        std::fs::write(
            forward.path().join(LABELS_FILE),
            "file,label,class_index\nb/x.png,b,1\na/z.png,a,0\na/y.png,a,0\n",
        )
        .unwrap();
        assert_eq!(hash(forward.path()), (Layout::Csv, folder.clone()));
        // Hand-built input of the documented definition.
        let sha = |b: &[u8]| sha256_hex(b);
        let expected = sha256_hex(
            format!(
                "a/y.png,a,0\na/z.png,a,0\nb/x.png,b,1\nfile,label,class_index\n{}  a/y.png\n{}  a/z.png\n{}  b/x.png\n",
                sha(b"2"),
                sha(b"3"),
                sha(b"1")
            )
            .as_bytes(),
        );
        assert_eq!(folder, expected);
        // Moving an image to another stratum changes it.
        let moved = tree(&[("b/s/x.png", b"1"), ("a/y.png", b"2"), ("a/z.png", b"3")]);
        assert_ne!(hash(moved.path()).1, folder);
    }
}
