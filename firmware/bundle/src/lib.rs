//! Model bundles: the manifest that describes an approved classifier and its files.
//!
//! A bundle is a directory holding `manifest.toml` and the model files it names (see
//! `models/BUNDLE.md`). This crate parses and validates the manifest once, and checks a
//! model file's sha256 before anything maps it. It knows nothing about inference.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub mod signature;

/// The manifest schema this build understands.
pub const SCHEMA_VERSION: u32 = 1;
/// Manifest file name inside a bundle directory.
pub const MANIFEST_FILE: &str = "manifest.toml";
/// Refuse manifests larger than this: a manifest is a few kilobytes of text.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Why a bundle could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: manifest is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("bundle {bundle} has no model variant {variant:?} (it has: {available})")]
    NoSuchVariant {
        bundle: String,
        variant: String,
        available: String,
    },
    #[error("{path}: sha256 is {actual}, the manifest expects {expected}: refusing to load a model file that is not the approved one")]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

/// Coarse classes of [`BundleError`], stable for machine-readable output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Io,
    Manifest,
    Variant,
    Integrity,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Io => "io",
            ErrorKind::Manifest => "manifest",
            ErrorKind::Variant => "variant",
            ErrorKind::Integrity => "integrity",
        }
    }
}

impl BundleError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            BundleError::Io { .. } => ErrorKind::Io,
            BundleError::Parse { .. } | BundleError::Invalid { .. } => ErrorKind::Manifest,
            BundleError::NoSuchVariant { .. } => ErrorKind::Variant,
            BundleError::HashMismatch { .. } => ErrorKind::Integrity,
        }
    }
}

/// Replaces `path` with `bytes` so that a crash or power cut leaves the old file or the new
/// one, never part of either: a temp file in the same directory, fsync, rename, fsync of
/// the directory. Every tool that writes into a bundle (manifest records, signatures,
/// tensors for calibration) writes through this.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        // The rename is durable only once the directory entry is on disk.
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Memory layout of the model's image input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    #[serde(rename = "NCHW")]
    Nchw,
    #[serde(rename = "NHWC")]
    Nhwc,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Nchw => "NCHW",
            Layout::Nhwc => "NHWC",
        })
    }
}

/// Colour model the network was trained on, and the order of its channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    Grey,
    Rgb,
    /// Three channels in blue, green, red order (OpenCV-trained models).
    Bgr,
}

impl Colour {
    /// Channels the model input has in this colour model.
    pub fn channels(self) -> u32 {
        match self {
            Colour::Grey => 1,
            Colour::Rgb | Colour::Bgr => 3,
        }
    }
}

/// How an image is fitted to the model's input size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resize {
    /// Both axes scaled independently to the input size (the aspect ratio changes).
    #[default]
    Stretch,
    /// Scaled, keeping the aspect ratio, until the input size is `crop_fraction` of the
    /// short side, then the centre cut out (torchvision's `Resize` + `CenterCrop`).
    #[serde(alias = "center-crop")]
    CentreCrop,
    /// Scaled, keeping the aspect ratio, to fit inside the input size, centred, the rest
    /// filled with `pad`.
    Letterbox,
}

/// Resampling filter of the resize, with PIL's definitions (antialiased when shrinking:
/// the filter widens with the downscale factor).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    Nearest,
    Box,
    #[default]
    Bilinear,
    Hamming,
    Bicubic,
    Lanczos,
}

/// Range the network expects its input intensities in, before `mean` and `std`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Range {
    #[default]
    #[serde(rename = "0-1")]
    Unit,
    #[serde(rename = "0-255")]
    Byte,
}

impl Range {
    /// Factor from intensities in [0, 1] to this range.
    pub fn gain(self) -> f32 {
        match self {
            Range::Unit => 1.0,
            Range::Byte => 255.0,
        }
    }
}

/// Which VOI window maps a greyscale DICOM image's values to intensities.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowPolicy {
    /// The file's first VOI window (Window Center / Width and its VOI LUT function);
    /// the robust window when the file has none.
    #[default]
    File,
    /// The 0.5th to 99.5th percentile of the image's values, whatever the file says.
    Robust,
    /// `centre` and `width` in modality units (after Rescale Slope / Intercept: Hounsfield
    /// units for CT), the linear function of PS3.3 C.11.2.1.2.
    Fixed,
}

/// How DICOM images are turned into intensities for this model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DicomInput {
    #[serde(default)]
    pub window: WindowPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub centre: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<f64>,
}

/// What the model's output tensor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// Raw scores; edgedx applies softmax.
    Logits,
    /// Already a probability distribution (softmax inside the graph).
    Probabilities,
}

/// Numeric precision of a model variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Int8,
    Fp32,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Int8 => "int8",
            Precision::Fp32 => "fp32",
        })
    }
}

/// How a variant was quantized (decides how the engine treats it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    None,
    /// QLinearConv / QLinearMatMul with standard ONNX ops only.
    Qoperator,
    /// QuantizeLinear / DequantizeLinear pairs around float ops.
    Qdq,
}

impl fmt::Display for Quantization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Quantization::None => "none",
            Quantization::Qoperator => "qoperator",
            Quantization::Qdq => "qdq",
        })
    }
}

impl fmt::Display for Colour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Colour::Grey => "grey",
            Colour::Rgb => "rgb",
            Colour::Bgr => "bgr",
        })
    }
}

impl fmt::Display for OutputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutputKind::Logits => "logits",
            OutputKind::Probabilities => "probabilities",
        })
    }
}

/// The model's image input: what preprocessing must produce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub tensor: String,
    pub layout: Layout,
    pub height: u32,
    pub width: u32,
    pub channels: u32,
    pub colour: Colour,
    /// Per-channel mean subtracted from intensities in [0, 1].
    pub mean: Vec<f32>,
    /// Per-channel divisor applied after the mean.
    pub std: Vec<f32>,
    #[serde(default)]
    pub resize: Resize,
    /// `resize = "centre-crop"` only: the fraction of the resized short side that the crop
    /// keeps (0.875 is the usual resize-256-crop-224).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop_fraction: Option<f32>,
    /// `resize = "letterbox"` only: the intensity of the padding, in [0, 1] like the image
    /// (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad: Option<f32>,
    #[serde(default)]
    pub filter: Filter,
    #[serde(default)]
    pub range: Range,
    #[serde(default)]
    pub dicom: DicomInput,
}

impl InputSpec {
    /// A spec that stretches images to `height` x `width` with the default filter, range
    /// and DICOM window: what a manifest without the optional `[input]` keys means.
    pub fn stretched(
        tensor: &str,
        layout: Layout,
        height: u32,
        width: u32,
        colour: Colour,
        mean: Vec<f32>,
        std: Vec<f32>,
    ) -> InputSpec {
        InputSpec {
            tensor: tensor.to_string(),
            layout,
            height,
            width,
            channels: colour.channels(),
            colour,
            mean,
            std,
            resize: Resize::default(),
            crop_fraction: None,
            pad: None,
            filter: Filter::default(),
            range: Range::default(),
            dicom: DicomInput::default(),
        }
    }

    /// How images become this input, in one line for people (`edgedx info`).
    pub fn preprocessing(&self) -> String {
        let fit = match self.resize {
            Resize::Stretch => "stretch".to_string(),
            Resize::CentreCrop => format!(
                "centre-crop keeping {} of the short side",
                self.crop_fraction.unwrap_or(1.0)
            ),
            Resize::Letterbox => format!("letterbox padded with {}", self.pad.unwrap_or(0.0)),
        };
        let filter = format!("{:?}", self.filter).to_lowercase();
        let range = match self.range {
            Range::Unit => "0-1",
            Range::Byte => "0-255",
        };
        let window = match self.dicom.window {
            WindowPolicy::File => "the file's VOI window (robust if none)".to_string(),
            WindowPolicy::Robust => "a robust 0.5-99.5 percentile window".to_string(),
            WindowPolicy::Fixed => format!(
                "window {}/{}",
                self.dicom.centre.unwrap_or(f64::NAN),
                self.dicom.width.unwrap_or(f64::NAN)
            ),
        };
        format!(
            "{fit} to {}x{}, {filter} resampling, {} in {range}, mean {:?} std {:?}; \
             DICOM: {window}",
            self.width, self.height, self.colour, self.mean, self.std
        )
    }

    /// Number of f32 values in one batch item.
    pub fn item_len(&self) -> usize {
        self.height as usize * self.width as usize * self.channels as usize
    }

    /// Shape of a batch of `n` items, in the model's layout.
    pub fn shape(&self, n: usize) -> [usize; 4] {
        let (h, w, c) = (
            self.height as usize,
            self.width as usize,
            self.channels as usize,
        );
        match self.layout {
            Layout::Nchw => [n, c, h, w],
            Layout::Nhwc => [n, h, w, c],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub tensor: String,
    pub kind: OutputKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleInfo {
    pub name: String,
    pub version: String,
    pub task: String,
    pub labels: Vec<String>,
}

/// One model file of the bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub file: String,
    pub sha256: String,
    pub precision: Precision,
    pub quantization: Quantization,
}

/// Free-text model card; shown by `edgedx info`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    pub summary: String,
    pub trained_on: String,
    pub intended_use: String,
    pub limitations: String,
    pub clinical_use: String,
}

/// What `edgedx bundle init` writes into model-card fields for the team to replace; a
/// manifest that still holds it is not signed.
pub const PLACEHOLDER: &str = "TODO";

/// The manifest as written on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema_version: u32,
    pub bundle: BundleInfo,
    pub input: InputSpec,
    pub output: OutputSpec,
    pub models: BTreeMap<String, ModelFile>,
    #[serde(default)]
    pub model_card: Option<ModelCard>,
    /// Evaluation written by the pipeline; kept as data, not interpreted here.
    #[serde(default)]
    pub evaluation: Option<toml::Table>,
    /// Accuracy-gate thresholds; absent means the defaults (1 point each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateThresholds>,
    /// The last accuracy-gate record, written by `edgedx gate --write`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// Measured memory need of each model variant, keyed like `[models]`, written by
    /// `edgedx info --memory --write`. The daemon's memory gate reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<BTreeMap<String, MemoryNeed>>,
}

impl Manifest {
    /// What must still be written before the bundle can be signed for devices: model-card
    /// fields that are missing, empty or still hold [`PLACEHOLDER`], and the int8 model a
    /// device serves. Empty when the bundle is complete.
    pub fn unfinished(&self) -> Vec<String> {
        let mut missing = Vec::new();
        match &self.model_card {
            None => missing.push("model_card (the whole table)".to_string()),
            Some(card) => {
                for (field, text) in [
                    ("summary", &card.summary),
                    ("trained_on", &card.trained_on),
                    ("intended_use", &card.intended_use),
                    ("limitations", &card.limitations),
                    ("clinical_use", &card.clinical_use),
                ] {
                    if text.trim().is_empty() || text.contains(PLACEHOLDER) {
                        missing.push(format!("model_card.{field}"));
                    }
                }
            }
        }
        if !self.models.contains_key("int8") {
            missing.push("models.int8 (quantize the model first)".to_string());
        }
        missing
    }
}

/// `[memory.<variant>]`: what one worker process serving this variant used, measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryNeed {
    /// Peak resident set of a worker from start to the end of its first inferences (VmHWM).
    pub peak_rss_bytes: u64,
    /// Resident set after load and warm-up, while idle.
    pub steady_rss_bytes: u64,
    /// Peak of the private heap (RLIMIT_DATA accounting) while loading.
    #[serde(default)]
    pub load_peak_bytes: u64,
    /// Target the figures were measured on, e.g. "aarch64-unknown-linux-gnu (qemu cortex-a76)".
    pub measured_on: String,
    /// UTC date of the measurement.
    pub date: String,
}

/// The loosest threshold the accuracy gate accepts (1 point, as a fraction): a bundle may
/// ask for a stricter gate but never a looser one.
pub const MAX_GATE_DROP: f64 = 0.01;

/// `[gate]`: how much int8 may lose against fp32 before the gate rejects it. Fractions
/// in [0, [`MAX_GATE_DROP`]].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateThresholds {
    /// Largest allowed fp32 accuracy minus int8 accuracy.
    #[serde(default = "default_gate_drop")]
    pub max_accuracy_drop: f64,
    /// Largest allowed fp32 recall minus int8 recall, for every class.
    #[serde(default = "default_gate_drop")]
    pub max_recall_drop: f64,
}

fn default_gate_drop() -> f64 {
    MAX_GATE_DROP
}

impl Default for GateThresholds {
    fn default() -> Self {
        GateThresholds {
            max_accuracy_drop: MAX_GATE_DROP,
            max_recall_drop: MAX_GATE_DROP,
        }
    }
}

/// Verdict of an accuracy-gate run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Approved,
    Rejected,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Approved => "approved",
            Verdict::Rejected => "rejected",
        })
    }
}

/// `[approval]`: what the accuracy gate measured and decided for one exact int8 file.
/// `serve` trusts an int8 model only when `verdict` is approved and `int8_sha256` is the
/// sha256 of the file it maps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    pub verdict: Verdict,
    /// sha256 of the int8 file the gate ran (the exact file approved or rejected).
    pub int8_sha256: String,
    /// sha256 of the fp32 file it was compared with.
    pub fp32_sha256: String,
    /// Hash of the labelled set (definition in models/BUNDLE.md).
    pub dataset_sha256: String,
    /// Images evaluated.
    pub images: u64,
    /// Images that could not be read (any makes the verdict a rejection).
    pub failed_images: u64,
    /// Thresholds in force for this run.
    pub max_accuracy_drop: f64,
    pub max_recall_drop: f64,
    pub fp32_accuracy: f64,
    pub int8_accuracy: f64,
    /// Per label, in the bundle's label order.
    pub fp32_recall: Vec<f64>,
    pub int8_recall: Vec<f64>,
    /// Fraction of images where int8 and fp32 predict different classes.
    pub disagreement: f64,
    /// int8 predictions identical with batch 1, 2 and 4.
    pub batch_invariant: bool,
    pub batch_mismatches: u64,
    pub batch_max_probability_difference: f64,
    /// Why the gate rejected (empty when approved).
    #[serde(default)]
    pub reasons: Vec<String>,
    /// "edgedx <version>".
    pub tool: String,
    /// UTC, ISO-8601 (`YYYY-MM-DDTHH:MM:SSZ`).
    pub date: String,
}

impl Manifest {
    /// Parses and validates manifest text; `path` only names the source in errors.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Manifest, BundleError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| BundleError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        validate(&manifest).map_err(|(field, message)| BundleError::Invalid {
            path: path.to_path_buf(),
            field,
            message,
        })?;
        Ok(manifest)
    }

    /// The gate thresholds in force: the bundle's `[gate]`, else the defaults.
    pub fn gate_thresholds(&self) -> GateThresholds {
        self.gate.unwrap_or_default()
    }
}

/// A validated bundle on disk.
#[derive(Debug, Clone)]
pub struct Bundle {
    dir: PathBuf,
    manifest: Manifest,
}

impl Bundle {
    /// Reads and validates `<dir>/manifest.toml`. Model files are not read here.
    pub fn open(dir: impl AsRef<Path>) -> Result<Bundle, BundleError> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(MANIFEST_FILE);
        let text = read_small_text(&path)?;
        let manifest = Manifest::from_toml_str(&text, &path)?;
        Ok(Bundle { dir, manifest })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn labels(&self) -> &[String] {
        &self.manifest.bundle.labels
    }

    pub fn input(&self) -> &InputSpec {
        &self.manifest.input
    }

    /// Looks up a model variant by name ("int8", "fp32", "int8-qdq", ...).
    pub fn variant(&self, name: &str) -> Result<&ModelFile, BundleError> {
        self.manifest
            .models
            .get(name)
            .ok_or_else(|| BundleError::NoSuchVariant {
                bundle: self.manifest.bundle.name.clone(),
                variant: name.to_string(),
                available: self
                    .manifest
                    .models
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Path of a variant's file inside the bundle.
    pub fn variant_path(&self, model: &ModelFile) -> PathBuf {
        self.dir.join(&model.file)
    }
}

/// Hex sha256 of a byte slice (used on the memory map, so the hashed bytes are the
/// loaded bytes).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Hex sha256 of a file, read in chunks (model files can be hundreds of megabytes).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Checks bytes against the sha256 the manifest approves.
pub fn verify_bytes(path: &Path, model: &ModelFile, bytes: &[u8]) -> Result<String, BundleError> {
    let actual = sha256_hex(bytes);
    if actual.eq_ignore_ascii_case(&model.sha256) {
        Ok(actual)
    } else {
        Err(BundleError::HashMismatch {
            path: path.to_path_buf(),
            expected: model.sha256.clone(),
            actual,
        })
    }
}

fn read_small_text(path: &Path) -> Result<String, BundleError> {
    let io = |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut text = String::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(BundleError::Invalid {
            path: path.to_path_buf(),
            field: "(file)".into(),
            message: format!("larger than {MAX_MANIFEST_BYTES} bytes"),
        });
    }
    Ok(text)
}

type FieldError = (String, String);

fn bad(field: &str, message: impl Into<String>) -> FieldError {
    (field.to_string(), message.into())
}

/// Largest side accepted for a model input: far above any classifier input, low
/// enough that a typo cannot ask for gigabytes of tensor.
const MAX_INPUT_SIDE: u32 = 4096;

fn validate(m: &Manifest) -> Result<(), FieldError> {
    if m.schema_version != SCHEMA_VERSION {
        return Err(bad(
            "schema_version",
            format!(
                "is {}, this edgedx understands {SCHEMA_VERSION}",
                m.schema_version
            ),
        ));
    }
    let b = &m.bundle;
    if b.name.is_empty()
        || !b
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(bad("bundle.name", "must be non-empty [a-z0-9-]"));
    }
    if b.task != "image-classification" {
        return Err(bad(
            "bundle.task",
            format!(
                "{:?} is not supported (only \"image-classification\")",
                b.task
            ),
        ));
    }
    if b.labels.len() < 2 {
        return Err(bad("bundle.labels", "a classifier needs at least 2 labels"));
    }
    if b.labels.iter().any(|l| l.trim().is_empty()) {
        return Err(bad("bundle.labels", "labels must not be empty"));
    }
    let i = &m.input;
    if i.height == 0 || i.width == 0 || i.height > MAX_INPUT_SIDE || i.width > MAX_INPUT_SIDE {
        return Err(bad(
            "input.height/width",
            format!("must be in 1..={MAX_INPUT_SIDE}"),
        ));
    }
    let expected_channels = i.colour.channels();
    if i.channels != expected_channels {
        return Err(bad(
            "input.channels",
            format!(
                "colour {:?} needs {expected_channels} channel(s), manifest says {}",
                i.colour, i.channels
            ),
        ));
    }
    for (field, v) in [("input.mean", &i.mean), ("input.std", &i.std)] {
        if v.len() != i.channels as usize {
            return Err(bad(
                field,
                format!("needs one value per channel ({})", i.channels),
            ));
        }
        if v.iter().any(|x| !x.is_finite()) {
            return Err(bad(field, "values must be finite"));
        }
    }
    if i.std.iter().any(|s| *s <= 0.0) {
        return Err(bad("input.std", "values must be > 0"));
    }
    match (i.resize, i.crop_fraction) {
        (Resize::CentreCrop, None) => {
            return Err(bad(
                "input.crop_fraction",
                "resize = \"centre-crop\" needs it: the fraction of the resized short side \
                 the crop keeps (0.875 for resize 256, crop 224; 1.0 to crop only the long side)",
            ))
        }
        (Resize::CentreCrop, Some(f)) if !(f > 0.0 && f <= 1.0) => {
            return Err(bad("input.crop_fraction", format!("{f} must be in (0, 1]")))
        }
        (Resize::Stretch | Resize::Letterbox, Some(_)) => {
            return Err(bad(
                "input.crop_fraction",
                format!(
                    "only applies to resize = \"centre-crop\", not {:?}",
                    i.resize
                ),
            ))
        }
        _ => {}
    }
    match (i.resize, i.pad) {
        (Resize::Letterbox, Some(p)) if !(0.0..=1.0).contains(&p) => {
            return Err(bad(
                "input.pad",
                format!("{p} must be an intensity in [0, 1] (114/255 = 0.447 for grey 114)"),
            ))
        }
        (Resize::Stretch | Resize::CentreCrop, Some(_)) => {
            return Err(bad(
                "input.pad",
                format!("only applies to resize = \"letterbox\", not {:?}", i.resize),
            ))
        }
        _ => {}
    }
    let d = &i.dicom;
    match (d.window, d.centre, d.width) {
        (WindowPolicy::Fixed, Some(c), Some(w)) => {
            if !c.is_finite() || !w.is_finite() || w < 1.0 {
                return Err(bad(
                    "input.dicom",
                    format!("centre {c} and width {w} must be finite, with width >= 1"),
                ));
            }
        }
        (WindowPolicy::Fixed, _, _) => {
            return Err(bad(
                "input.dicom",
                "window = \"fixed\" needs centre and width (modality units, e.g. 40 and 80 \
                 for a CT brain window)",
            ))
        }
        (_, None, None) => {}
        (policy, _, _) => {
            return Err(bad(
                "input.dicom",
                format!("centre and width only apply to window = \"fixed\", not {policy:?}"),
            ))
        }
    }
    for (name, model) in &m.models {
        let field = format!("models.{name}");
        if model.file.is_empty()
            || model.file.contains('/')
            || model.file.contains('\\')
            || model.file.starts_with('.')
        {
            return Err(bad(
                &format!("{field}.file"),
                "must be a plain file name inside the bundle directory",
            ));
        }
        if model.sha256.len() != 64 || !model.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad(&format!("{field}.sha256"), "must be 64 hex digits"));
        }
        let consistent = matches!(
            (model.precision, model.quantization),
            (Precision::Fp32, Quantization::None)
                | (Precision::Int8, Quantization::Qoperator | Quantization::Qdq)
        );
        if !consistent {
            return Err(bad(
                &field,
                format!(
                    "precision {} does not go with quantization {:?}",
                    model.precision, model.quantization
                ),
            ));
        }
    }
    if let Some(gate) = &m.gate {
        for (field, v) in [
            ("gate.max_accuracy_drop", gate.max_accuracy_drop),
            ("gate.max_recall_drop", gate.max_recall_drop),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(bad(field, format!("{v} must be a fraction >= 0")));
            }
            if v > MAX_GATE_DROP {
                return Err(bad(
                    field,
                    format!("{v} would loosen the accuracy gate beyond {MAX_GATE_DROP} (1 point); only stricter thresholds are allowed"),
                ));
            }
        }
    }
    if let Some(a) = &m.approval {
        for (field, hash) in [
            ("approval.int8_sha256", &a.int8_sha256),
            ("approval.fp32_sha256", &a.fp32_sha256),
            ("approval.dataset_sha256", &a.dataset_sha256),
        ] {
            if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad(field, "must be 64 hex digits"));
            }
        }
        if a.fp32_recall.len() != b.labels.len() || a.int8_recall.len() != b.labels.len() {
            return Err(bad(
                "approval.fp32_recall/int8_recall",
                format!("needs one value per label ({})", b.labels.len()),
            ));
        }
    }
    // fp32 is the reference every int8 variant is gated against and the fallback; a
    // bundle being prepared (`bundle init` before quantization) may not have int8 yet,
    // and whatever serves or gates it asks for the variant by name.
    if !m.models.contains_key("fp32") {
        return Err(bad(
            "models.fp32",
            "is required (the reference the int8 model is gated against, and the fallback)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
schema_version = 1
[bundle]
name = "t"
version = "0.1.0"
task = "image-classification"
labels = ["a", "b"]
[input]
tensor = "input"
layout = "NCHW"
height = 8
width = 8
channels = 1
colour = "grey"
mean = [0.5]
std = [0.25]
[output]
tensor = "logits"
kind = "logits"
[models.int8]
file = "int8.onnx"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
precision = "int8"
quantization = "qoperator"
[models.fp32]
file = "fp32.onnx"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
precision = "fp32"
quantization = "none"
"#;

    fn open_with(text: &str) -> Result<Bundle, BundleError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MANIFEST_FILE), text).unwrap();
        Bundle::open(dir.path())
    }

    #[test]
    fn parses_a_valid_manifest() {
        let b = open_with(GOOD).unwrap();
        assert_eq!(b.labels(), ["a", "b"]);
        assert_eq!(b.input().shape(2), [2, 1, 8, 8]);
        assert_eq!(b.variant("int8").unwrap().precision, Precision::Int8);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = GOOD.replace("kind = \"logits\"", "kind = \"logits\"\nsoftmax = true");
        let err = open_with(&text).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Manifest);
        assert!(err.to_string().contains("softmax"), "{err}");
    }

    #[test]
    fn channel_count_must_match_colour() {
        let err = open_with(&GOOD.replace("channels = 1", "channels = 3")).unwrap_err();
        assert!(err.to_string().contains("input.channels"), "{err}");
    }

    #[test]
    fn model_file_cannot_escape_the_bundle() {
        let err =
            open_with(&GOOD.replace("file = \"int8.onnx\"", "file = \"../x.onnx\"")).unwrap_err();
        assert!(err.to_string().contains("models.int8.file"), "{err}");
    }

    #[test]
    fn missing_fallback_is_refused() {
        let text = GOOD.split("[models.fp32]").next().unwrap();
        let err = open_with(text).unwrap_err();
        assert!(err.to_string().contains("models.fp32"), "{err}");
    }

    #[test]
    fn hash_mismatch_names_the_file() {
        let b = open_with(GOOD).unwrap();
        let m = b.variant("int8").unwrap();
        let err = verify_bytes(Path::new("int8.onnx"), m, b"not the model").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity);
        assert!(err.to_string().contains("int8.onnx"));
        let ok = ModelFile {
            sha256: sha256_hex(b"x"),
            ..m.clone()
        };
        assert!(verify_bytes(Path::new("x"), &ok, b"x").is_ok());
    }

    #[test]
    fn gate_thresholds_default_to_one_point() {
        let b = open_with(GOOD).unwrap();
        assert_eq!(b.manifest().gate_thresholds(), GateThresholds::default());
        let b = open_with(&format!("{GOOD}[gate]\nmax_recall_drop = 0.005\n")).unwrap();
        let t = b.manifest().gate_thresholds();
        assert_eq!((t.max_accuracy_drop, t.max_recall_drop), (0.01, 0.005));
    }

    #[test]
    fn a_looser_gate_is_refused() {
        let err = open_with(&format!("{GOOD}[gate]\nmax_accuracy_drop = 0.02\n")).unwrap_err();
        assert!(err.to_string().contains("gate.max_accuracy_drop"), "{err}");
        assert!(err.to_string().contains("loosen"), "{err}");
        let err = open_with(&format!("{GOOD}[gate]\nmax_recall_drop = -0.1\n")).unwrap_err();
        assert!(err.to_string().contains("gate.max_recall_drop"), "{err}");
        let err = open_with(&format!("{GOOD}[gate]\nmax_drop = 0.001\n")).unwrap_err();
        assert!(err.to_string().contains("max_drop"), "{err}");
    }

    #[test]
    fn approval_round_trips() {
        let approval = Approval {
            verdict: Verdict::Approved,
            int8_sha256: "a".repeat(64),
            fp32_sha256: "b".repeat(64),
            dataset_sha256: "c".repeat(64),
            images: 40,
            failed_images: 0,
            max_accuracy_drop: 0.01,
            max_recall_drop: 0.01,
            fp32_accuracy: 0.9,
            int8_accuracy: 0.9,
            fp32_recall: vec![1.0, 0.8],
            int8_recall: vec![1.0, 0.8],
            disagreement: 0.0,
            batch_invariant: true,
            batch_mismatches: 0,
            batch_max_probability_difference: 1e-6,
            reasons: vec![],
            tool: "edgedx 0.1.0".into(),
            date: "2026-01-01T00:00:00Z".into(),
        };
        let mut m = open_with(GOOD).unwrap().manifest().clone();
        m.approval = Some(approval.clone());
        let text = toml::to_string(&m).unwrap();
        let back = Manifest::from_toml_str(&text, Path::new("m.toml")).unwrap();
        assert_eq!(back.approval, Some(approval));
        let err = Manifest::from_toml_str(
            &text.replace(
                "verdict = \"approved\"",
                "verdict = \"approved\"\nextra = 1",
            ),
            Path::new("m.toml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
    }

    #[test]
    fn preprocessing_keys_default_to_a_plain_stretch() {
        let b = open_with(GOOD).unwrap();
        let i = b.input();
        assert_eq!(
            (i.resize, i.filter, i.range, i.dicom),
            (
                Resize::Stretch,
                Filter::Bilinear,
                Range::Unit,
                DicomInput::default()
            )
        );
        let with = |keys: &str| GOOD.replace("std = [0.25]", &format!("std = [0.25]\n{keys}"));
        let b = open_with(&with(
            "resize = \"center-crop\"\ncrop_fraction = 0.875\nfilter = \"bicubic\"\n\
             range = \"0-255\"\ndicom = { window = \"fixed\", centre = 40.0, width = 80.0 }",
        ))
        .unwrap();
        let i = b.input();
        assert_eq!(
            (i.resize, i.crop_fraction, i.filter, i.range.gain()),
            (Resize::CentreCrop, Some(0.875), Filter::Bicubic, 255.0)
        );
        assert_eq!(
            (i.dicom.window, i.dicom.centre, i.dicom.width),
            (WindowPolicy::Fixed, Some(40.0), Some(80.0))
        );
        assert_eq!(
            open_with(&with("resize = \"letterbox\"\npad = 0.447"))
                .unwrap()
                .input()
                .pad,
            Some(0.447)
        );
    }

    #[test]
    fn inconsistent_preprocessing_keys_are_refused() {
        let with = |keys: &str| GOOD.replace("std = [0.25]", &format!("std = [0.25]\n{keys}"));
        for (keys, field) in [
            ("resize = \"centre-crop\"", "input.crop_fraction"),
            (
                "resize = \"centre-crop\"\ncrop_fraction = 1.5",
                "input.crop_fraction",
            ),
            ("crop_fraction = 0.9", "input.crop_fraction"),
            ("resize = \"letterbox\"\npad = 114.0", "input.pad"),
            ("pad = 0.5", "input.pad"),
            (
                "dicom = { window = \"fixed\", centre = 40.0 }",
                "input.dicom",
            ),
            (
                "dicom = { window = \"fixed\", centre = 40.0, width = 0.0 }",
                "input.dicom",
            ),
            ("dicom = { centre = 40.0, width = 80.0 }", "input.dicom"),
            ("resize = \"crop\"", "resize"),
            ("filter = \"cubic\"", "filter"),
            ("range = \"0-65535\"", "range"),
        ] {
            let err = open_with(&with(keys)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Manifest, "{keys}: {err}");
            assert!(err.to_string().contains(field), "{keys}: {err}");
        }
        let bgr_grey = GOOD.replace("colour = \"grey\"", "colour = \"bgr\"");
        assert!(open_with(&bgr_grey)
            .unwrap_err()
            .to_string()
            .contains("input.channels"));
    }

    #[test]
    fn a_bundle_may_wait_for_its_int8_model_but_not_for_fp32() {
        let b = open_with(&GOOD.replace("[models.int8]", "[models.int8-draft]")).unwrap();
        assert!(matches!(
            b.variant("int8"),
            Err(BundleError::NoSuchVariant { .. })
        ));
        let no_fp32 = GOOD.replace("[models.fp32]", "[models.float]");
        let err = open_with(&no_fp32).unwrap_err();
        assert!(err.to_string().contains("models.fp32"), "{err}");
    }

    #[test]
    fn missing_manifest_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Bundle::open(dir.path()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
    }
}
