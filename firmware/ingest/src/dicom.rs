//! DICOM decoding: pre-scan and sanity checks, dicom-rs, then the palette lookup or the
//! modality LUT and VOI window that map stored values to [0, 1].
//!
//! Order matters for robustness: nothing reaches dicom-rs before [`scan`] has bounded
//! every element length and the image attributes have been checked against
//! [`Limits`], because dicom-rs aborts (not panics) on some lengths (DESIGN.md), and
//! before what a decoder is known to index without checking (the RLE header, the size a
//! codestream declares) has been checked against those attributes. `catch_unwind`
//! around dicom-rs stays as the last guard only: a panic it catches is a decoder bug that
//! these checks missed, and is reported as such.

mod codestream;
mod palette;
mod rle;
mod scan;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use dicom_pixeldata::{PixelDecoder, PlanarConfiguration};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use edgedx_bundle::{DicomInput, WindowPolicy};

use crate::{Image, ImageInfo, IngestError, Limits, SourceFormat};
use palette::{Palette, PaletteError};
use scan::{tag_str, text, Fail, Found, PixelData, Syntax};

const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
const EXPLICIT_VR_BE: &str = "1.2.840.10008.1.2.2";
const DEFLATED_EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1.99";
const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";
const PALETTE_COLOR: &str = "PALETTE COLOR";
/// Secondary Capture, used only to complete the file meta of a data set without one.
const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";

/// One decoded frame, stored values before the modality LUT.
///
/// `values` are the stored pixel values (sign-extended from Bits Stored, 1-bit
/// samples as 0/1), interleaved HWC, as f32: exact for anything up to 24 bits, which
/// covers every bit depth seen in practice (32-bit integer data loses low bits).
#[derive(Debug, Clone, PartialEq)]
pub struct RawFrame {
    pub rows: u32,
    pub cols: u32,
    /// Samples per Pixel of the file; `values` hold 3 per pixel when `rgb`.
    pub samples: u8,
    pub values: Vec<f32>,
    /// (index used, frame count).
    pub frame: (u32, u32),
    pub bits_stored: u16,
    pub signed: bool,
    /// Photometric Interpretation as written in the file.
    pub photometric: String,
    /// Whether `values` are RGB (decoder output, converted from YBR or looked up in the
    /// palette here).
    pub rgb: bool,
    /// Value of full intensity in `values` when `rgb`: 2^Bits Stored - 1, or the range of
    /// the palette's entries (255 or 65535).
    pub rgb_max: f32,
    pub modality: Option<String>,
    pub transfer_syntax: String,
    /// (slope, intercept) of the modality LUT; (1, 0) when absent.
    pub rescale: (f64, f64),
    /// First (center, width) of the VOI window, when the file has one.
    pub window: Option<(f64, f64)>,
    pub voi_function: Option<String>,
    pub notes: Vec<String>,
}

/// True for a file with a DICOM file meta marker ("DICM" after the preamble, or at
/// the start when the preamble was stripped).
pub fn has_dicm_marker(bytes: &[u8]) -> bool {
    bytes.get(128..132) == Some(b"DICM") || bytes.starts_with(b"DICM")
}

/// A cheap guess that `bytes` are a bare data set (no preamble, no file meta): the
/// first tag is a low, even group as written by every modality. The pre-scan decides.
pub fn looks_like_raw_dataset(bytes: &[u8]) -> bool {
    if bytes.len() < 8 {
        return false;
    }
    let group = u16::from_le_bytes([bytes[0], bytes[1]]);
    group & 1 == 0 && (0x0002..=0x0028).contains(&group)
}

/// Reads a file and decodes its middle frame's stored values (see [`RawFrame`]).
pub fn decode_raw(path: &Path, limits: &Limits) -> Result<RawFrame, IngestError> {
    let name = path.display().to_string();
    let bytes = crate::read_capped(path, limits)?;
    decode_raw_bytes(&bytes, &name, limits)
}

/// Decodes DICOM bytes (already un-gzipped) to an [`Image`], windowed as `dicom` says.
pub(crate) fn load(
    bytes: &[u8],
    name: &str,
    limits: &Limits,
    dicom: &DicomInput,
) -> Result<Image, IngestError> {
    let raw = decode_raw_bytes(bytes, name, limits)?;
    to_image(raw, name, dicom)
}

/// What the pre-scan established about a file.
struct Prepared {
    /// The data set bytes dicom-rs will read (inflated when the file was deflated).
    dataset: Vec<u8>,
    /// Transfer syntax to read `dataset` with.
    read_ts: String,
    /// Transfer syntax as named by the file.
    file_ts: String,
    found: Found,
    syntax: Syntax,
}

pub fn decode_raw_bytes(
    bytes: &[u8],
    name: &str,
    limits: &Limits,
) -> Result<RawFrame, IngestError> {
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
    let mut notes = Vec::new();
    let prep = prepare(bytes, name, limits, &mut notes)?;
    let Some(pixel) = prep.found.pixel_data.as_ref() else {
        // Not an image (RT plan, structured report, ...): say so before complaining
        // about missing image attributes.
        let modality = prep.found.raw(&prep.dataset, (0x0008, 0x0060)).map(text);
        return Err(IngestError::NoPixelData {
            name: name.to_string(),
            reason: format!(
                "no Pixel Data (7FE0,0010) element{}",
                modality
                    .map(|m| format!(" (modality {m})"))
                    .unwrap_or_default()
            ),
        });
    };
    let attrs = Attrs::read(&prep, name)?;
    attrs.check(name, limits)?;
    // Read before decoding: a file whose tables are unusable is refused without the cost.
    let palette = if attrs.photometric == PALETTE_COLOR {
        let p = Palette::read(
            &prep.found,
            &prep.dataset,
            prep.syntax.big_endian,
            attrs.signed,
        )
        .map_err(|e| match e {
            PaletteError::Malformed(m) => IngestError::malformed(name, m),
            PaletteError::Unsupported(m) => IngestError::unsupported(name, m),
        })?;
        Some(p)
    } else {
        None
    };
    let ts = TransferSyntaxRegistry.get(&prep.read_ts).ok_or_else(|| {
        IngestError::unsupported(name, format!("unknown transfer syntax {}", prep.file_ts))
    })?;
    let ts_name = TransferSyntaxRegistry
        .get(&prep.file_ts)
        .map(|t| t.name().to_string())
        .unwrap_or_else(|| prep.file_ts.clone());
    if !ts.can_decode_all() {
        return Err(IngestError::unsupported(
            name,
            format!("transfer syntax {ts_name} cannot be decoded by this build"),
        ));
    }
    let frame = attrs.frames / 2;
    match pixel {
        PixelData::Native { len } => {
            if ts.is_encapsulated_pixel_data() {
                return Err(IngestError::malformed(
                    name,
                    format!(
                        "transfer syntax {ts_name} needs encapsulated pixel data, Pixel Data \
                         (7FE0,0010) is native ({len} bytes of defined length)"
                    ),
                ));
            }
            let needed = attrs.native_bytes();
            if u64::from(*len) < needed {
                return Err(IngestError::truncated(
                    name,
                    format!(
                        "Pixel Data (7FE0,0010) holds {len} bytes, Rows {} x Columns {} x \
                         Samples {} x Frames {} at {} bits needs {needed}",
                        attrs.rows, attrs.cols, attrs.samples, attrs.frames, attrs.bits_allocated
                    ),
                ));
            }
        }
        PixelData::Encapsulated { fragments } => {
            if !ts.is_encapsulated_pixel_data() {
                return Err(IngestError::malformed(
                    name,
                    format!(
                        "transfer syntax {ts_name} needs native pixel data, Pixel Data \
                         (7FE0,0010) is encapsulated (undefined length, {} fragment items)",
                        fragments.len()
                    ),
                ));
            }
            if fragments.len() < 2 {
                return Err(IngestError::NoPixelData {
                    name: name.to_string(),
                    reason: "encapsulated Pixel Data (7FE0,0010) has no fragments after the \
                             offset table"
                        .into(),
                });
            }
            if !matches!(attrs.bits_allocated, 8 | 16) {
                // Every codec adapter of dicom-rs decodes these two only.
                return Err(IngestError::unsupported(
                    name,
                    format!(
                        "{ts_name} with Bits Allocated (0028,0100) {}; 8 and 16 are supported",
                        attrs.bits_allocated
                    ),
                ));
            }
            if prep.read_ts == RLE_LOSSLESS {
                check_rle(&prep.dataset, fragments, &attrs, frame, name)?;
            } else if let Some(family) = codestream::Family::of(&prep.read_ts) {
                check_codestream(family, &prep.dataset, fragments, &attrs, frame, name)?;
            }
        }
    }

    let read_ts = prep.read_ts.clone();
    let dataset = &prep.dataset;
    let decoded = guarded(name, "dicom-rs parser", || {
        let obj = InMemDicomObject::read_dataset_with_ts(&dataset[..], ts)
            .map_err(|e| IngestError::malformed(name, format!("dicom-rs: {e}")))?;
        obj.with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(read_ts.as_str())
                .media_storage_sop_class_uid(SECONDARY_CAPTURE)
                .media_storage_sop_instance_uid("2.25.0"),
        )
        .map_err(|e| IngestError::malformed(name, format!("dicom-rs file meta: {e}")))
    })?;
    let px = guarded(name, "dicom-rs decoder", || {
        decoded
            .decode_pixel_data_frame(frame)
            .map(|p| p.to_owned())
            .map_err(|e| {
                let msg = format!("decoding {ts_name}: {e}");
                if msg.contains("nsupported") {
                    IngestError::unsupported(name, msg)
                } else {
                    IngestError::malformed(name, msg)
                }
            })
    })?;

    let samples_len = attrs.rows as usize * attrs.cols as usize * attrs.samples as usize;
    let bytes_per_sample = usize::from(attrs.bits_allocated.div_ceil(8));
    let data = px.data();
    if data.len() < samples_len * bytes_per_sample {
        return Err(IngestError::malformed(
            name,
            format!(
                "decoder produced {} bytes for frame {frame}, Rows x Columns x Samples needs {}",
                data.len(),
                samples_len * bytes_per_sample
            ),
        ));
    }
    let mut values = stored_values(&data[..samples_len * bytes_per_sample], &attrs);
    if attrs.samples == 3 && px.planar_configuration() == PlanarConfiguration::PixelFirst {
        values = interleave(&values);
    }
    let encapsulated = matches!(pixel, PixelData::Encapsulated { .. });
    let mut rgb = attrs.samples == 3;
    if rgb && attrs.photometric == "YBR_FULL" && (!encapsulated || prep.read_ts == RLE_LOSSLESS) {
        // Codecs (JPEG, JPEG 2000) hand back RGB; native and RLE data stay YBR.
        ybr_full_to_rgb(&mut values, attrs.max_value());
        notes.push("YBR_FULL converted to RGB".into());
    } else if rgb && attrs.photometric.starts_with("YBR") && !encapsulated {
        rgb = false;
    }
    if attrs.samples == 3 && !rgb {
        return Err(IngestError::unsupported(
            name,
            format!(
                "uncompressed {} colour (Photometric Interpretation (0028,0004)); RGB and \
                 YBR_FULL are decoded",
                attrs.photometric
            ),
        ));
    }
    let mut rgb_max = attrs.max_value();
    if let Some(palette) = palette {
        values = palette.apply(&values);
        rgb = true;
        rgb_max = palette.max;
        notes.push(palette.note);
    }

    Ok(RawFrame {
        rows: attrs.rows,
        cols: attrs.cols,
        samples: attrs.samples,
        values,
        frame: (frame, attrs.frames),
        bits_stored: attrs.bits_stored,
        signed: attrs.signed,
        photometric: attrs.photometric.clone(),
        rgb,
        rgb_max,
        modality: attrs.modality.clone(),
        transfer_syntax: ts_name,
        rescale: attrs.rescale,
        window: attrs.window,
        voi_function: attrs.voi_function.clone(),
        notes,
    })
}

/// Runs dicom-rs with a last guard: the checks before it are meant to leave it nothing
/// to panic on, so a panic caught here is a decoder bug those checks missed, reported as
/// such rather than blamed on the file. The panic hook (installed by `main`) still
/// reports it with its location.
fn guarded<T>(
    name: &str,
    what: &str,
    f: impl FnOnce() -> Result<T, IngestError>,
) -> Result<T, IngestError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".into());
            log::error!("{name}: the {what} panicked: {msg}");
            Err(IngestError::DecoderBug {
                name: name.to_string(),
                reason: format!(
                    "the {what} panicked ({msg}): a bug that the checks made before \
                     decoding did not catch, not necessarily a fault of the file"
                ),
            })
        }
    }
}

fn fail(name: &str, f: Fail) -> IngestError {
    match f {
        Fail::Truncated(m) => IngestError::truncated(name, m),
        Fail::Malformed(m) => IngestError::malformed(name, m),
    }
}

/// Finds the file meta (or decides there is none), inflates deflated data sets under
/// the size cap, and scans the data set.
fn prepare(
    bytes: &[u8],
    name: &str,
    limits: &Limits,
    notes: &mut Vec<String>,
) -> Result<Prepared, IngestError> {
    let meta_start = if bytes.get(128..132) == Some(b"DICM") {
        Some(132)
    } else if bytes.starts_with(b"DICM") {
        Some(4)
    } else if bytes.len() >= 2 && u16::from_le_bytes([bytes[0], bytes[1]]) == 0x0002 {
        // File meta elements without preamble and marker.
        Some(0)
    } else {
        None
    };
    let Some(meta_start) = meta_start else {
        return prepare_without_meta(bytes, name, notes);
    };
    let (file_ts, start) = scan::scan_meta(bytes, meta_start).map_err(|f| fail(name, f))?;
    let (syntax, read_ts, dataset) = match file_ts.as_str() {
        IMPLICIT_VR_LE => (
            Syntax::IMPLICIT_LE,
            file_ts.clone(),
            bytes[start..].to_vec(),
        ),
        EXPLICIT_VR_BE => (
            Syntax::EXPLICIT_BE,
            file_ts.clone(),
            bytes[start..].to_vec(),
        ),
        DEFLATED_EXPLICIT_VR_LE => (
            Syntax::EXPLICIT_LE,
            EXPLICIT_VR_LE.to_string(),
            crate::expand_capped(
                flate2::read::DeflateDecoder::new(&bytes[start..]),
                "deflated data set",
                name,
                limits.max_file_bytes,
            )?,
        ),
        _ => (
            Syntax::EXPLICIT_LE,
            file_ts.clone(),
            bytes[start..].to_vec(),
        ),
    };
    let found = scan::scan_dataset(&dataset, 0, syntax).map_err(|f| fail(name, f))?;
    Ok(Prepared {
        dataset,
        read_ts,
        file_ts,
        found,
        syntax,
    })
}

/// A bare data set: try implicit VR little endian, then explicit (PS3.5 default first).
fn prepare_without_meta(
    bytes: &[u8],
    name: &str,
    notes: &mut Vec<String>,
) -> Result<Prepared, IngestError> {
    let mut reasons = Vec::new();
    for (syntax, ts) in [
        (Syntax::IMPLICIT_LE, IMPLICIT_VR_LE),
        (Syntax::EXPLICIT_LE, EXPLICIT_VR_LE),
    ] {
        match scan::scan_dataset(bytes, 0, syntax) {
            Ok(found) => {
                let label = if syntax.explicit {
                    "explicit"
                } else {
                    "implicit"
                };
                notes.push(format!("no file meta: read as {label} VR little endian"));
                return Ok(Prepared {
                    dataset: bytes.to_vec(),
                    read_ts: ts.to_string(),
                    file_ts: ts.to_string(),
                    found,
                    syntax,
                });
            }
            Err(Fail::Truncated(m) | Fail::Malformed(m)) => reasons.push(m),
        }
    }
    Err(IngestError::UnrecognisedFormat {
        name: name.to_string(),
        reason: format!(
            "no DICOM file meta ('DICM' marker) and not readable as a bare data set \
             (implicit VR LE: {}; explicit VR LE: {})",
            reasons[0], reasons[1]
        ),
    })
}

/// What a decoder must produce for one frame.
#[derive(Debug, Clone, Copy)]
struct Shape {
    rows: u32,
    cols: u32,
    samples: u8,
    /// 1 or 2 (Bits Allocated 8 or 16).
    bytes_per_sample: u8,
}

/// Image attributes from the pre-scan, checked before any decoder trusts them.
#[derive(Debug)]
struct Attrs {
    rows: u32,
    cols: u32,
    samples: u8,
    bits_allocated: u16,
    bits_stored: u16,
    high_bit: u16,
    signed: bool,
    planar: u16,
    frames: u32,
    photometric: String,
    modality: Option<String>,
    rescale: (f64, f64),
    window: Option<(f64, f64)>,
    voi_function: Option<String>,
}

impl Attrs {
    fn read(prep: &Prepared, name: &str) -> Result<Attrs, IngestError> {
        let buf = &prep.dataset;
        let big = prep.syntax.big_endian;
        let us = |tag: (u16, u16)| -> Result<Option<u16>, IngestError> {
            match prep.found.raw(buf, tag) {
                None => Ok(None),
                Some([]) => Ok(None),
                Some(&[a, b, ..]) => Ok(Some(if big {
                    u16::from_be_bytes([a, b])
                } else {
                    u16::from_le_bytes([a, b])
                })),
                Some(v) => Err(IngestError::malformed(
                    name,
                    format!(
                        "{} holds {} byte, a US value needs 2",
                        tag_str(tag),
                        v.len()
                    ),
                )),
            }
        };
        let string = |tag: (u16, u16)| -> Option<String> {
            prep.found.raw(buf, tag).map(text).filter(|s| !s.is_empty())
        };
        let first_number = |tag: (u16, u16)| -> Result<Option<f64>, IngestError> {
            match string(tag) {
                None => Ok(None),
                Some(s) => {
                    let first = s.split('\\').next().unwrap_or("").trim();
                    // An empty value means absent: DS written as "", or with an empty
                    // first value ("\2").
                    if first.is_empty() {
                        return Ok(None);
                    }
                    first.parse::<f64>().map(Some).map_err(|_| {
                        IngestError::malformed(
                            name,
                            format!("{} value {s:?} is not a number", tag_str(tag)),
                        )
                    })
                }
            }
        };

        let modality = string((0x0008, 0x0060));
        let required = |tag: (u16, u16), what: &str| -> Result<u16, IngestError> {
            us(tag)?.ok_or_else(|| {
                IngestError::malformed(name, format!("{what} {} is missing", tag_str(tag)))
            })
        };
        let rows = required((0x0028, 0x0010), "Rows")?;
        let cols = required((0x0028, 0x0011), "Columns")?;
        let bits_allocated = required((0x0028, 0x0100), "Bits Allocated")?;
        let bits_stored = us((0x0028, 0x0101))?.unwrap_or(bits_allocated);
        let high_bit = us((0x0028, 0x0102))?.unwrap_or(bits_stored.saturating_sub(1));
        let samples = us((0x0028, 0x0002))?.unwrap_or(1);
        let pixel_rep = us((0x0028, 0x0103))?.unwrap_or(0);
        let planar = us((0x0028, 0x0006))?.unwrap_or(0);
        let frames = match string((0x0028, 0x0008)) {
            None => 1,
            Some(s) => s.trim().parse::<u32>().map_err(|_| {
                IngestError::malformed(
                    name,
                    format!("Number of Frames (0028,0008) is {s:?}, not a whole number"),
                )
            })?,
        };
        let photometric = string((0x0028, 0x0004)).unwrap_or_else(|| {
            if samples == 3 {
                "RGB".into()
            } else {
                "MONOCHROME2".into()
            }
        });
        let slope = first_number((0x0028, 0x1053))?.unwrap_or(1.0);
        let intercept = first_number((0x0028, 0x1052))?.unwrap_or(0.0);
        let window = match (
            first_number((0x0028, 0x1050))?,
            first_number((0x0028, 0x1051))?,
        ) {
            (Some(c), Some(w)) => Some((c, w)),
            _ => None,
        };
        if pixel_rep > 1 {
            return Err(IngestError::malformed(
                name,
                format!("Pixel Representation (0028,0103) is {pixel_rep}, must be 0 or 1"),
            ));
        }
        if samples > 3 {
            return Err(IngestError::unsupported(
                name,
                format!("Samples per Pixel (0028,0002) is {samples}; 1 and 3 are decoded"),
            ));
        }
        Ok(Attrs {
            rows: u32::from(rows),
            cols: u32::from(cols),
            samples: samples as u8,
            bits_allocated,
            bits_stored,
            high_bit,
            signed: pixel_rep == 1,
            planar,
            frames,
            photometric,
            modality,
            rescale: (slope, intercept),
            window,
            voi_function: string((0x0028, 0x1056)),
        })
    }

    /// Refuses what decoders would mishandle or what would exceed the limits.
    fn check(&self, name: &str, limits: &Limits) -> Result<(), IngestError> {
        let bad = |m: String| Err(IngestError::malformed(name, m));
        if self.rows == 0 || self.cols == 0 {
            return bad(format!(
                "image is {} x {} (Rows (0028,0010) x Columns (0028,0011))",
                self.rows, self.cols
            ));
        }
        if self.frames == 0 {
            return bad("Number of Frames (0028,0008) is 0".into());
        }
        if !matches!(self.bits_allocated, 1 | 8 | 16 | 32) {
            return bad(format!(
                "Bits Allocated (0028,0100) is {}, must be 1, 8, 16 or 32",
                self.bits_allocated
            ));
        }
        if self.bits_stored == 0 || self.bits_stored > self.bits_allocated {
            return bad(format!(
                "Bits Stored (0028,0101) is {}, must be 1..={} (Bits Allocated)",
                self.bits_stored, self.bits_allocated
            ));
        }
        if self.high_bit >= self.bits_allocated || self.high_bit + 1 < self.bits_stored {
            return bad(format!(
                "High Bit (0028,0102) is {} with Bits Stored {} and Bits Allocated {}",
                self.high_bit, self.bits_stored, self.bits_allocated
            ));
        }
        if !matches!(self.samples, 1 | 3) {
            return bad(format!(
                "Samples per Pixel (0028,0002) is {}, must be 1 or 3",
                self.samples
            ));
        }
        if self.samples == 3 && self.planar > 1 {
            return bad(format!(
                "Planar Configuration (0028,0006) is {}, must be 0 or 1",
                self.planar
            ));
        }
        let pixels = u64::from(self.rows) * u64::from(self.cols) * u64::from(self.frames);
        if pixels > limits.max_pixels {
            return Err(IngestError::too_large(
                name,
                format!(
                    "{} x {} x {} frame(s) = {pixels} pixels, limit max_pixels is {}",
                    self.rows, self.cols, self.frames, limits.max_pixels
                ),
            ));
        }
        let mono = matches!(self.photometric.as_str(), "MONOCHROME1" | "MONOCHROME2");
        let colour = matches!(
            self.photometric.as_str(),
            "RGB" | "YBR_FULL" | "YBR_FULL_422" | "YBR_ICT" | "YBR_RCT"
        );
        if self.photometric == PALETTE_COLOR {
            if self.samples != 1 {
                return bad(format!(
                    "PALETTE COLOR with Samples per Pixel (0028,0002) {}, must be 1",
                    self.samples
                ));
            }
            if !matches!(self.bits_allocated, 8 | 16) {
                return Err(IngestError::unsupported(
                    name,
                    format!(
                        "PALETTE COLOR with Bits Allocated (0028,0100) {}; 8 and 16 are \
                         supported",
                        self.bits_allocated
                    ),
                ));
            }
            return Ok(());
        }
        if !(mono && self.samples == 1 || colour && self.samples == 3) {
            return Err(IngestError::unsupported(
                name,
                format!(
                    "Photometric Interpretation (0028,0004) {:?} with Samples per Pixel \
                     (0028,0002) {}",
                    self.photometric, self.samples
                ),
            ));
        }
        if self.samples == 3 && self.bits_allocated == 1 {
            return bad(
                "Bits Allocated (0028,0100) is 1 with Samples per Pixel (0028,0002) 3".into(),
            );
        }
        Ok(())
    }

    /// The image a codec must produce; Bits Allocated is 8 or 16 (checked by the caller).
    fn shape(&self) -> Shape {
        Shape {
            rows: self.rows,
            cols: self.cols,
            samples: self.samples,
            bytes_per_sample: (self.bits_allocated / 8) as u8,
        }
    }

    fn native_bytes(&self) -> u64 {
        let samples = u64::from(self.rows)
            * u64::from(self.cols)
            * u64::from(self.samples)
            * u64::from(self.frames);
        if self.bits_allocated == 1 {
            samples.div_ceil(8)
        } else {
            samples * u64::from(self.bits_allocated / 8)
        }
    }

    fn max_value(&self) -> f32 {
        ((1u64 << self.bits_stored) - 1) as f32
    }
}

/// Checks what the RLE decoder will index in the fragment of `frame` (see [`rle`]). Only
/// that fragment: dicom-rs decodes one frame and reads no other.
fn check_rle(
    buf: &[u8],
    fragments: &[(usize, usize)],
    attrs: &Attrs,
    frame: u32,
    name: &str,
) -> Result<(), IngestError> {
    // Fragments after the basic offset table; RLE puts each frame in exactly one
    // (PS3.5 G.2), and the decoder picks a frame's fragment by that rule.
    let data = &fragments[1..];
    if data.len() as u64 != u64::from(attrs.frames) {
        return Err(IngestError::malformed(
            name,
            format!(
                "RLE Lossless needs one Pixel Data (7FE0,0010) fragment per frame: Number of \
                 Frames (0028,0008) is {}, the pixel data has {} fragment(s)",
                attrs.frames,
                data.len()
            ),
        ));
    }
    let (start, end) = data[frame as usize];
    rle::check_frame(&buf[start..end], frame, attrs.shape())
        .map_err(|why| IngestError::malformed(name, format!("{why} (fragment at offset {start})")))
}

/// Checks the header of the codestream dicom-rs will decode for `frame` (see
/// [`codestream`]).
fn check_codestream(
    family: codestream::Family,
    buf: &[u8],
    fragments: &[(usize, usize)],
    attrs: &Attrs,
    frame: u32,
    name: &str,
) -> Result<(), IngestError> {
    let Some(bytes) = codestream::frame_bytes(buf, fragments, attrs.frames, frame) else {
        return Err(IngestError::malformed(
            name,
            format!(
                "Pixel Data (7FE0,0010) has {} fragment(s) for {} frames and its basic \
                 offset table does not place frame {frame}",
                fragments.len() - 1,
                attrs.frames
            ),
        ));
    };
    guarded(name, "jpeg-decoder header reader", || {
        codestream::check(family, &bytes, attrs.shape()).map_err(|r| match r {
            codestream::Refusal::Malformed(m) => IngestError::malformed(name, m),
            codestream::Refusal::Unsupported(m) => IngestError::unsupported(name, m),
        })
    })
}

/// Stored values from decoded bytes (native endian), sign-extended from Bits Stored.
fn stored_values(data: &[u8], a: &Attrs) -> Vec<f32> {
    if a.bits_allocated == 1 {
        // dicom-rs expands 1-bit samples to 0 / 255 bytes.
        return data.iter().map(|&b| f32::from(u8::from(b != 0))).collect();
    }
    let shift = a.high_bit + 1 - a.bits_stored;
    let bits = u32::from(a.bits_stored);
    let convert = |word: u32| -> f32 {
        let v = (word >> shift) & (((1u64 << bits) - 1) as u32);
        if a.signed && bits < 32 && v & (1 << (bits - 1)) != 0 {
            (i64::from(v) - (1i64 << bits)) as f32
        } else if a.signed && bits == 32 {
            v as i32 as f32
        } else {
            v as f32
        }
    };
    match a.bits_allocated {
        8 => data.iter().map(|&b| convert(u32::from(b))).collect(),
        16 => data
            .chunks_exact(2)
            .map(|c| convert(u32::from(u16::from_ne_bytes([c[0], c[1]]))))
            .collect(),
        _ => data
            .chunks_exact(4)
            .map(|c| convert(u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
    }
}

/// Planar (RRR..GGG..BBB..) to interleaved RGB.
fn interleave(planar: &[f32]) -> Vec<f32> {
    let n = planar.len() / 3;
    let mut out = Vec::with_capacity(planar.len());
    for i in 0..n {
        out.extend_from_slice(&[planar[i], planar[n + i], planar[2 * n + i]]);
    }
    out
}

/// YBR_FULL (PS3.3 C.7.6.3.1.2) to RGB, rounding and clamping like an 8-bit decoder.
fn ybr_full_to_rgb(values: &mut [f32], max: f32) {
    let half = (max + 1.0) / 2.0;
    for px in values.chunks_exact_mut(3) {
        let (y, cb, cr) = (px[0], px[1] - half, px[2] - half);
        let r = y + 1.402 * cr;
        let g = y - 0.344_136 * cb - 0.714_136 * cr;
        let b = y + 1.772 * cb;
        for (dst, v) in px.iter_mut().zip([r, g, b]) {
            *dst = v.round().clamp(0.0, max);
        }
    }
}

/// Applies the modality LUT and the VOI window that `dicom` asks for (the file's, a robust
/// one, or a fixed one) to reach [0, 1].
fn to_image(raw: RawFrame, name: &str, dicom: &DicomInput) -> Result<Image, IngestError> {
    let mut info = ImageInfo::new(SourceFormat::Dicom);
    info.frame = Some(raw.frame);
    info.bits_stored = Some(raw.bits_stored);
    info.photometric = Some(raw.photometric.clone());
    info.modality = raw.modality.clone();
    info.transfer_syntax = Some(raw.transfer_syntax.clone());
    let mut notes = raw.notes.clone();
    let mut data = raw.values;
    if raw.rgb {
        let max = raw.rgb_max;
        for v in &mut data {
            *v = (*v / max).clamp(0.0, 1.0);
        }
        notes.push(format!("colour scaled by 1/{max}"));
    } else {
        let (slope, intercept) = raw.rescale;
        if !slope.is_finite() || !intercept.is_finite() || slope == 0.0 {
            return Err(IngestError::malformed(
                name,
                format!(
                    "Rescale Slope (0028,1053) {slope} / Rescale Intercept (0028,1052) \
                     {intercept}: the slope must be finite and non-zero, the intercept finite"
                ),
            ));
        }
        if (slope, intercept) != (1.0, 0.0) {
            for v in &mut data {
                *v = (f64::from(*v) * slope + intercept) as f32;
            }
        }
        let from_file = raw
            .window
            .filter(|(c, w)| c.is_finite() && w.is_finite() && *w >= 1.0);
        let window = match (dicom.window, dicom.centre, dicom.width) {
            (WindowPolicy::Fixed, Some(c), Some(w)) => Some((c, w, "LINEAR", "the bundle")),
            // The manifest check refuses a fixed window without both values.
            (WindowPolicy::Fixed, _, _) => None,
            (WindowPolicy::File, _, _) => from_file.map(|(c, w)| {
                let function = raw.voi_function.as_deref().unwrap_or("LINEAR");
                (c, w, function, "file")
            }),
            (WindowPolicy::Robust, _, _) => None,
        };
        match window {
            Some((c, w, function, source)) => {
                apply_window(&mut data, c, w, function);
                notes.push(format!("window {c}/{w} from {source} ({function})"));
            }
            None => {
                let (lo, hi) = robust_range(&data);
                let span = hi - lo;
                for v in &mut data {
                    *v = if span > 0.0 {
                        ((*v - lo) / span).clamp(0.0, 1.0)
                    } else {
                        0.0
                    };
                }
                notes.push(format!("robust min/max window {lo}..{hi}"));
            }
        }
        if raw.photometric == "MONOCHROME1" {
            for v in &mut data {
                *v = 1.0 - *v;
            }
            notes.push("MONOCHROME1 inverted".into());
        }
    }
    Ok(Image {
        width: raw.cols,
        height: raw.rows,
        channels: if raw.rgb { 3 } else { 1 },
        data,
        info: ImageInfo {
            note: Some(notes.join("; ")),
            ..info
        },
    })
}

/// VOI LUT functions of PS3.3 C.11.2.1.2 mapped to [0, 1].
fn apply_window(data: &mut [f32], c: f64, w: f64, function: &str) {
    for v in data {
        let x = f64::from(*v);
        let y = match function {
            "LINEAR_EXACT" => (x - c) / w + 0.5,
            "SIGMOID" => 1.0 / (1.0 + (-4.0 * (x - c) / w).exp()),
            _ => {
                if w <= 1.0 {
                    if x <= c - 0.5 {
                        0.0
                    } else {
                        1.0
                    }
                } else {
                    (x - (c - 0.5)) / (w - 1.0) + 0.5
                }
            }
        };
        *v = y.clamp(0.0, 1.0) as f32;
    }
}

/// 0.5th and 99.5th percentiles; the full range when they coincide (sparse masks).
fn robust_range(data: &[f32]) -> (f32, f32) {
    if data.is_empty() {
        return (0.0, 0.0);
    }
    let mut sorted = data.to_vec();
    sorted.sort_unstable_by(f32::total_cmp);
    let at = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    let (lo, hi) = (at(0.005), at(0.995));
    if hi > lo {
        (lo, hi)
    } else {
        (sorted[0], sorted[sorted.len() - 1])
    }
}

#[cfg(test)]
mod tests;
