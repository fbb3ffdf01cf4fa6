//! Image ingest: turns DICOM, PNG, JPEG and PGM bytes into display-ready intensities,
//! and preprocesses them into a model's input tensor.
//!
//! Everything here treats its input as hostile: files come from USB sticks, scanners and
//! uploads. Sizes are checked against [`Limits`] before anything large is allocated, and
//! what third-party decoders would index or allocate without checking is checked before
//! they run; `catch_unwind` around them is the last guard, and a panic it catches is
//! reported as a decoder bug ([`ErrorKind::DecoderBug`]).

use std::fmt;
use std::io::Read;
use std::path::Path;

use edgedx_bundle::DicomInput;

pub mod dicom;
pub mod preprocess;
pub mod raster;

pub use preprocess::{kernel_name, preprocess, preprocess_scalar, preprocess_with, Kernel};

/// Resource limits applied before decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest width × height × frames a file may declare (the frames the decoder
    /// would have to hold, not only the one used).
    pub max_pixels: u64,
    /// Largest file accepted, also the cap on gzip / deflate expansion.
    pub max_file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pixels: 64 * 1024 * 1024,
            max_file_bytes: 512 * 1024 * 1024,
        }
    }
}

/// Container format recognised from the bytes (never from the file name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Dicom,
    Png,
    Jpeg,
    /// Netpbm (PGM, and PBM / PPM through the same decoder).
    Pgm,
}

impl fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceFormat::Dicom => "dicom",
            SourceFormat::Png => "png",
            SourceFormat::Jpeg => "jpeg",
            SourceFormat::Pgm => "pgm",
        })
    }
}

/// Decoded, display-ready intensities.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    /// 1 (grey) or 3 (RGB).
    pub channels: u8,
    /// Interleaved HWC, values in [0, 1].
    pub data: Vec<f32>,
    pub info: ImageInfo,
}

/// Where an [`Image`] came from and how its intensities were derived.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInfo {
    pub format: SourceFormat,
    /// DICOM: (index of the frame used, number of frames).
    pub frame: Option<(u32, u32)>,
    /// How intensities were mapped to [0, 1] and anything unusual on the way.
    pub note: Option<String>,
    pub bits_stored: Option<u16>,
    pub photometric: Option<String>,
    pub modality: Option<String>,
    /// DICOM transfer syntax name (or UID when unnamed).
    pub transfer_syntax: Option<String>,
}

impl ImageInfo {
    pub(crate) fn new(format: SourceFormat) -> Self {
        ImageInfo {
            format,
            frame: None,
            note: None,
            bits_stored: None,
            photometric: None,
            modality: None,
            transfer_syntax: None,
        }
    }
}

/// Why an image could not be ingested or preprocessed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    #[error("cannot read {name}: {source}")]
    Io {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: not a recognised image format ({reason})")]
    UnrecognisedFormat { name: String, reason: String },
    #[error("{name}: malformed: {reason}")]
    Malformed { name: String, reason: String },
    #[error("{name}: unsupported: {reason}")]
    Unsupported { name: String, reason: String },
    #[error("{name}: no pixel data: {reason}")]
    NoPixelData { name: String, reason: String },
    #[error("{name}: truncated: {reason}")]
    Truncated { name: String, reason: String },
    #[error("{name}: too large: {reason}")]
    TooLarge { name: String, reason: String },
    /// A decoder failed in a way the file alone does not explain (it panicked): a bug to
    /// report, not a verdict on the file.
    #[error("{name}: internal decoder error: {reason}")]
    DecoderBug { name: String, reason: String },
    #[error("preprocessing: {reason}")]
    Spec { reason: String },
}

/// Coarse classes of [`IngestError`], stable for machine-readable output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Io,
    UnrecognisedFormat,
    Malformed,
    Unsupported,
    NoPixelData,
    Truncated,
    TooLarge,
    DecoderBug,
    Spec,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Io => "io",
            ErrorKind::UnrecognisedFormat => "unrecognised_format",
            ErrorKind::Malformed => "malformed",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::NoPixelData => "no_pixel_data",
            ErrorKind::Truncated => "truncated",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::DecoderBug => "decoder_bug",
            ErrorKind::Spec => "spec",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl IngestError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            IngestError::Io { .. } => ErrorKind::Io,
            IngestError::UnrecognisedFormat { .. } => ErrorKind::UnrecognisedFormat,
            IngestError::Malformed { .. } => ErrorKind::Malformed,
            IngestError::Unsupported { .. } => ErrorKind::Unsupported,
            IngestError::NoPixelData { .. } => ErrorKind::NoPixelData,
            IngestError::Truncated { .. } => ErrorKind::Truncated,
            IngestError::TooLarge { .. } => ErrorKind::TooLarge,
            IngestError::DecoderBug { .. } => ErrorKind::DecoderBug,
            IngestError::Spec { .. } => ErrorKind::Spec,
        }
    }

    /// `name` is the file path or the upload's name, as the caller knows it.
    pub(crate) fn malformed(name: &str, reason: impl Into<String>) -> Self {
        IngestError::Malformed {
            name: name.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn unsupported(name: &str, reason: impl Into<String>) -> Self {
        IngestError::Unsupported {
            name: name.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn truncated(name: &str, reason: impl Into<String>) -> Self {
        IngestError::Truncated {
            name: name.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn too_large(name: &str, reason: impl Into<String>) -> Self {
        IngestError::TooLarge {
            name: name.to_string(),
            reason: reason.into(),
        }
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads a file (at most `limits.max_file_bytes`) and decodes it as [`load_bytes`] does.
pub fn load_path(path: &Path, limits: &Limits) -> Result<Image, IngestError> {
    let name = path.display().to_string();
    let bytes = read_capped(path, limits)?;
    load_bytes(&bytes, &name, limits)
}

/// Decodes an image held in memory; `name` only labels errors and logs. Greyscale DICOM
/// gets the file's VOI window (a robust one when it has none).
pub fn load_bytes(bytes: &[u8], name: &str, limits: &Limits) -> Result<Image, IngestError> {
    load_bytes_for(bytes, name, limits, &DicomInput::default())
}

/// [`load_bytes`] for a model whose manifest says how DICOM images are windowed.
pub fn load_bytes_for(
    bytes: &[u8],
    name: &str,
    limits: &Limits,
    dicom: &DicomInput,
) -> Result<Image, IngestError> {
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(IngestError::too_large(
            name,
            format!(
                "{} bytes, limit max_file_bytes is {}",
                bytes.len(),
                limits.max_file_bytes
            ),
        ));
    }
    if bytes.starts_with(&GZIP_MAGIC) {
        let inner = expand_capped(
            flate2::read::GzDecoder::new(bytes),
            "gzip stream",
            name,
            limits.max_file_bytes,
        )?;
        if inner.starts_with(&GZIP_MAGIC) {
            // One level is what archives produce; nesting only serves bombs.
            return Err(IngestError::malformed(name, "gzip inside gzip"));
        }
        return load_bytes_for(&inner, name, limits, dicom);
    }
    match sniff(bytes) {
        Some(SourceFormat::Dicom) => dicom::load(bytes, name, limits, dicom),
        Some(format) => raster::load(bytes, format, name, limits),
        None if dicom::looks_like_raw_dataset(bytes) => dicom::load(bytes, name, limits, dicom),
        None => Err(IngestError::UnrecognisedFormat {
            name: name.to_string(),
            reason: format!(
                "{} bytes; no DICOM 'DICM' marker at offset 128, no PNG, JPEG, PNM or gzip \
                 signature, and not a DICOM data set without file meta",
                bytes.len()
            ),
        }),
    }
}

/// Recognises a format by its signature.
pub fn sniff(bytes: &[u8]) -> Option<SourceFormat> {
    if dicom::has_dicm_marker(bytes) {
        Some(SourceFormat::Dicom)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(SourceFormat::Png)
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some(SourceFormat::Jpeg)
    } else if bytes.len() >= 3
        && bytes[0] == b'P'
        && (b'1'..=b'6').contains(&bytes[1])
        && bytes[2].is_ascii_whitespace()
    {
        Some(SourceFormat::Pgm)
    } else {
        None
    }
}

/// Reads a whole file, refusing it before reading when it is larger than
/// `limits.max_file_bytes` (and never reading past the limit if it grows meanwhile).
pub fn read_capped(path: &Path, limits: &Limits) -> Result<Vec<u8>, IngestError> {
    let name = path.display().to_string();
    let io = |source| IngestError::Io {
        name: name.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let declared = file.metadata().map_err(io)?.len();
    if declared > limits.max_file_bytes {
        return Err(IngestError::too_large(
            &name,
            format!(
                "{declared} bytes, limit max_file_bytes is {}",
                limits.max_file_bytes
            ),
        ));
    }
    // The size can change between stat and read (a file still being copied in):
    // read at most one byte past the limit rather than trusting the metadata.
    let mut bytes = Vec::with_capacity(declared as usize);
    file.take(limits.max_file_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(IngestError::too_large(
            &name,
            format!(
                "grew past max_file_bytes ({}) while being read",
                limits.max_file_bytes
            ),
        ));
    }
    Ok(bytes)
}

/// Reads a decompressing stream (`what` names it in errors), refusing output larger than
/// `cap`: a small compressed file must not expand into gigabytes.
pub(crate) fn expand_capped(
    stream: impl Read,
    what: &str,
    name: &str,
    cap: u64,
) -> Result<Vec<u8>, IngestError> {
    let mut out = Vec::new();
    stream
        .take(cap + 1)
        .read_to_end(&mut out)
        .map_err(|e| IngestError::malformed(name, format!("{what}: {e}")))?;
    if out.len() as u64 > cap {
        return Err(IngestError::too_large(
            name,
            format!("{what} expands past max_file_bytes ({cap})"),
        ));
    }
    Ok(out)
}

/// Where tests find the shared fixtures: `EDGEDX_SHARED_DIR`, else `<workspace>/../shared`.
#[cfg(test)]
pub(crate) fn shared_dir() -> std::path::PathBuf {
    match std::env::var_os("EDGEDX_SHARED_DIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    }
}

/// The shared DICOM fixtures, or `None` after saying loudly that the test is skipped.
#[cfg(test)]
pub(crate) fn shared_dicom_dir() -> Option<std::path::PathBuf> {
    let dir = shared_dir().join("data/dicom");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: ../shared/data/dicom not found (looked in {}; set EDGEDX_SHARED_DIR)",
            dir.display()
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_have_stable_names() {
        let e = IngestError::truncated("f.dcm", "x");
        assert_eq!(e.kind().as_str(), "truncated");
        assert!(e.to_string().contains("f.dcm"));
        assert_eq!(
            ErrorKind::UnrecognisedFormat.as_str(),
            "unrecognised_format"
        );
        assert_eq!(ErrorKind::NoPixelData.as_str(), "no_pixel_data");
        assert_eq!(ErrorKind::TooLarge.as_str(), "too_large");
    }

    #[test]
    fn garbage_is_unrecognised() {
        let err =
            load_bytes(b"hello world, not an image", "x.bin", &Limits::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnrecognisedFormat, "{err}");
        assert!(err.to_string().contains("x.bin"));
        let err = load_bytes(b"", "empty", &Limits::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnrecognisedFormat, "{err}");
    }

    #[test]
    fn file_size_limit_is_checked_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.png");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let limits = Limits {
            max_file_bytes: 1000,
            ..Limits::default()
        };
        let err = load_path(&path, &limits).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooLarge);
        assert!(err.to_string().contains("max_file_bytes"), "{err}");
    }

    #[test]
    fn missing_file_is_io() {
        let err = load_path(Path::new("/nonexistent/x.dcm"), &Limits::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(err.to_string().contains("/nonexistent/x.dcm"));
    }

    #[test]
    fn gzip_bomb_is_capped() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; 1 << 20]).unwrap();
        let gz = enc.finish().unwrap();
        let limits = Limits {
            max_file_bytes: 64 * 1024,
            ..Limits::default()
        };
        let err = load_bytes(&gz, "bomb.gz", &limits).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
    }
}
