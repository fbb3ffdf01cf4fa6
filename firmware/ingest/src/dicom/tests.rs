//! Tests against the real files in ../shared/data/dicom and mutations of them.

use super::*;
use crate::{load_bytes, shared_dicom_dir, ErrorKind};

mod built;

/// One row of SURVEY.tsv: what pydicom 3.0.2 + GDCM decode from a file.
struct Expected {
    file: String,
    rows: u32,
    cols: u32,
    samples: u8,
    lossy: bool,
    /// (min, max) when pydicom decoded it.
    range: Option<(f32, f32)>,
}

fn survey(dir: &Path) -> Vec<Expected> {
    let text = std::fs::read_to_string(dir.join("SURVEY.tsv")).unwrap();
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let (rows, cols) = f[8].split_once('x').unwrap();
        let decode = f[10];
        let range = decode.strip_prefix("ok ").map(|rest| {
            let num = |key: &str| -> f32 {
                let s = rest.split(key).nth(1).unwrap();
                s.split_whitespace().next().unwrap().parse().unwrap()
            };
            (num("min="), num("max="))
        });
        out.push(Expected {
            file: f[0].to_string(),
            rows: rows.parse().unwrap_or(0),
            cols: cols.parse().unwrap_or(0),
            samples: f[7].parse().unwrap_or(0),
            lossy: f[3].contains("Baseline") || f[3] == "JPEG 2000 Image Compression",
            range,
        });
    }
    out
}

#[test]
fn every_survey_file_decodes_as_pydicom_does() {
    let Some(dir) = shared_dicom_dir() else {
        return;
    };
    let limits = Limits::default();
    let mut decoded = 0;
    for e in survey(&dir) {
        let path = dir.join(&e.file);
        let raw = decode_raw(&path, &limits);
        match (&e.range, raw) {
            (Some((lo, hi)), Ok(raw)) => {
                assert_eq!(
                    (raw.rows, raw.cols, raw.samples),
                    (e.rows, e.cols, e.samples),
                    "{}",
                    e.file
                );
                let min = raw.values.iter().copied().fold(f32::INFINITY, f32::min);
                let max = raw.values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let tol = if e.lossy { 2.0 } else { 0.0 };
                assert!(
                    (min - lo).abs() <= tol && (max - hi).abs() <= tol,
                    "{}: min/max {min}/{max}, pydicom {lo}/{hi}",
                    e.file
                );
                let img = load_path_for_test(&path);
                assert_eq!((img.height, img.width), (e.rows, e.cols), "{}", e.file);
                assert!(
                    img.data.iter().all(|v| (0.0..=1.0).contains(v)),
                    "{}",
                    e.file
                );
                eprintln!(
                    "{}: {}x{}x{} raw {min}..{max} frame {:?} ts {:?} note {:?}",
                    e.file,
                    img.width,
                    img.height,
                    img.channels,
                    img.info.frame,
                    img.info.transfer_syntax,
                    img.info.note
                );
                decoded += 1;
            }
            (Some(_), Err(err)) => panic!("{}: pydicom decodes it, we fail: {err}", e.file),
            (None, Ok(_)) => panic!("{}: pydicom fails, we decode it", e.file),
            (None, Err(err)) => {
                let want = match e.file.as_str() {
                    "MR_truncated.dcm" => ErrorKind::Truncated,
                    "rtplan.dcm" => ErrorKind::NoPixelData,
                    // Not a data set from its first byte on (pydicom reads no attribute
                    // either): refused, with both readings' reasons.
                    "no_meta.dcm" => ErrorKind::UnrecognisedFormat,
                    _ => panic!("{}: unexpected failure {err}", e.file),
                };
                assert_eq!(err.kind(), want, "{}: {err}", e.file);
                assert!(err.to_string().contains(&e.file), "{err}");
            }
        }
    }
    assert!(decoded >= 16, "only {decoded} files decoded");
}

fn load_path_for_test(path: &Path) -> Image {
    crate::load_path(path, &Limits::default()).unwrap()
}

/// The data set of a file with its preamble and file meta cut off.
fn strip_meta(bytes: &[u8]) -> Vec<u8> {
    let (_, start) = scan::scan_meta(bytes, 132).unwrap();
    bytes[start..].to_vec()
}

#[test]
fn bare_data_sets_are_read_without_file_meta() {
    let Some(dir) = shared_dicom_dir() else {
        return;
    };
    let limits = Limits::default();
    for file in ["CT_small.dcm", "MR_small_implicit.dcm"] {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let with_meta = decode_raw_bytes(&bytes, file, &limits).unwrap();
        let bare = decode_raw_bytes(&strip_meta(&bytes), file, &limits).unwrap();
        assert_eq!(bare.values, with_meta.values, "{file}");
        assert!(
            bare.notes.iter().any(|n| n.contains("no file meta")),
            "{:?}",
            bare.notes
        );
        assert!(load_bytes(&strip_meta(&bytes), file, &limits).is_ok());
    }
    let err = crate::load_path(&dir.join("no_meta.dcm"), &limits).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnrecognisedFormat, "{err}");
    let err = decode_raw(&dir.join("no_meta.dcm"), &limits).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnrecognisedFormat, "{err}");
    assert!(err.to_string().contains("implicit VR LE"), "{err}");
}

#[test]
fn truncated_and_planless_files_say_why() {
    let Some(dir) = shared_dicom_dir() else {
        return;
    };
    let err = crate::load_path(&dir.join("MR_truncated.dcm"), &Limits::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Truncated);
    assert!(err.to_string().contains("(7FE0,0010)"), "{err}");
    let err = crate::load_path(&dir.join("rtplan.dcm"), &Limits::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoPixelData);
    assert!(err.to_string().contains("RTPLAN"), "{err}");
}

#[test]
fn gzipped_dicom_loads() {
    use std::io::Write;
    let Some(dir) = shared_dicom_dir() else {
        return;
    };
    let bytes = std::fs::read(dir.join("MR_small.dcm")).unwrap();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&bytes).unwrap();
    let gz = enc.finish().unwrap();
    let img = load_bytes(&gz, "MR_small.dcm.gz", &Limits::default()).unwrap();
    assert_eq!((img.width, img.height), (64, 64));
}

/// Regression for the fuzzer's first out-of-memory (CT_small.dcm with the VR of Pixel
/// Representation changed from US to SL): refused by the pre-scan, never handed to
/// dicom-rs, which would allocate 0xF8300002 bytes for it. Checked through `prepare` so
/// that a regression fails here instead of allocating 4 GiB in the test.
#[test]
fn a_binary_value_that_is_not_whole_values_is_refused_before_dicom_rs() {
    let Some(dir) = shared_dicom_dir() else {
        return;
    };
    let mut bytes = std::fs::read(dir.join("CT_small.dcm")).unwrap();
    let at = bytes
        .windows(6)
        .position(|w| w == [0x28, 0x00, 0x03, 0x01, b'U', b'S'])
        .unwrap();
    bytes[at + 4..at + 6].copy_from_slice(b"SL");
    let err = prepare(&bytes, "CT_small.dcm", &Limits::default(), &mut Vec::new())
        .err()
        .expect("refused by the pre-scan");
    assert_eq!(err.kind(), ErrorKind::Malformed, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("(0028,0103)") && msg.contains("VR SL and length 2"),
        "{msg}"
    );
}

#[test]
fn pixel_limit_is_checked_before_decoding() {
    let Some(dir) = shared_dicom_dir() else {
        return;
    };
    let limits = Limits {
        max_pixels: 64 * 63,
        ..Limits::default()
    };
    let err = crate::load_path(&dir.join("MR_small.dcm"), &limits).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge);
    assert!(err.to_string().contains("max_pixels"), "{err}");
}

#[test]
fn windowing_and_monochrome1() {
    let mut data = vec![0.0, 100.0, 200.0];
    apply_window(&mut data, 100.5, 101.0, "LINEAR");
    assert_eq!(data, vec![0.0, 0.5, 1.0]);
    let raw = RawFrame {
        rows: 1,
        cols: 3,
        samples: 1,
        values: vec![0.0, 50.0, 100.0],
        frame: (0, 1),
        bits_stored: 8,
        signed: false,
        photometric: "MONOCHROME1".into(),
        rgb: false,
        rgb_max: 255.0,
        modality: None,
        transfer_syntax: "x".into(),
        rescale: (2.0, -100.0),
        window: None,
        voi_function: None,
        notes: vec![],
    };
    let img = to_image(raw, "t", &DicomInput::default()).unwrap();
    // Rescaled to -100, 0, 100; robust window over those; inverted.
    assert_eq!(img.data, vec![1.0, 0.5, 0.0]);
    assert!(img.info.note.unwrap().contains("MONOCHROME1 inverted"));
}

#[test]
fn the_bundle_chooses_the_window() {
    // CT-like values in HU with a lung window in the file; the policy decides which
    // window maps them to intensities.
    let raw = |window| RawFrame {
        rows: 1,
        cols: 5,
        samples: 1,
        values: vec![-1000.0, -600.0, 0.0, 40.0, 80.0],
        frame: (0, 1),
        bits_stored: 12,
        signed: true,
        photometric: "MONOCHROME2".into(),
        rgb: false,
        rgb_max: 255.0,
        modality: Some("CT".into()),
        transfer_syntax: "x".into(),
        rescale: (1.0, 0.0),
        window,
        voi_function: None,
        notes: vec![],
    };
    let lung = Some((-599.5, 1501.0));
    let file = to_image(raw(lung), "t", &DicomInput::default()).unwrap();
    assert_eq!(file.data[1], 0.5);
    assert!(file.info.note.unwrap().contains("from file"));
    let brain = DicomInput {
        window: WindowPolicy::Fixed,
        centre: Some(40.5),
        width: Some(81.0),
    };
    let fixed = to_image(raw(lung), "t", &brain).unwrap();
    assert_eq!(fixed.data, vec![0.0, 0.0, 0.0, 0.5, 1.0]);
    assert!(fixed.info.note.unwrap().contains("from the bundle"));
    let robust = DicomInput {
        window: WindowPolicy::Robust,
        ..DicomInput::default()
    };
    let img = to_image(raw(lung), "t", &robust).unwrap();
    assert_eq!((img.data[0], img.data[4]), (0.0, 1.0));
    assert!(img.info.note.unwrap().contains("robust"));
}

#[test]
fn a_caught_decoder_panic_is_reported_as_a_decoder_bug() {
    let err = guarded(
        "scan.dcm",
        "dicom-rs decoder",
        || -> Result<(), IngestError> {
            panic!("index out of bounds: the len is 3 but the index is 3")
        },
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DecoderBug);
    let msg = err.to_string();
    assert!(
        msg.starts_with("scan.dcm: internal decoder error: the dicom-rs decoder panicked (index"),
        "{msg}"
    );
    assert!(msg.contains("not necessarily a fault of the file"), "{msg}");
    assert!(!msg.contains("malformed"), "{msg}");
}

/// The decoder panic fuzzing found: a JPEG frame header wider than Columns, behind bytes
/// between markers that jpeg-decoder skips (and a strict marker walk stops at). dicom-rs
/// copies the 228-pixel-wide decode into a buffer sized for 100.
#[test]
fn a_jpeg_frame_wider_than_columns_is_refused_before_decoding() {
    let Some(dir) = shared_dicom_dir() else {
        return;
    };
    let bytes = std::fs::read(dir.join("SC_rgb_jpeg_dcmtk.dcm")).unwrap();
    let find = |pattern: &[u8]| bytes.windows(pattern.len()).position(|w| w == pattern);
    let soi = find(&[0xFF, 0xD8, 0xFF, 0xE0]).expect("the file's JPEG starts with APP0");
    let sof = find(&[0xFF, 0xC0, 0x00, 0x11, 8, 0, 100, 0, 100]).expect("a 100 x 100 SOF0");
    let mut bad = bytes.clone();
    bad[soi + 2] = 0; // the APP0 marker's 0xFF: now bytes between markers
    bad[sof + 7..sof + 9].copy_from_slice(&228u16.to_be_bytes());
    let err = decode_raw_bytes(&bad, "wide.dcm", &Limits::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Malformed, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("JPEG frame header is 228 x 100 pixels")
            && msg.contains("Columns (0028,0011) x Rows (0028,0010) say 100 x 100"),
        "{msg}"
    );
    // The same bytes between markers with the true width still decode.
    bad[sof + 7..sof + 9].copy_from_slice(&100u16.to_be_bytes());
    let frame = decode_raw_bytes(&bad, "skipped.dcm", &Limits::default()).unwrap();
    assert_eq!((frame.cols, frame.rows, frame.samples), (100, 100, 3));
}

/// The second decoder panic fuzzing found: Planar Configuration's tag bytes turned into
/// Samples per Pixel's, so the file says Samples per Pixel twice (3, then 0). dicom-rs
/// keeps the last and sized its output at 0 bytes.
#[test]
fn a_file_with_samples_per_pixel_twice_is_refused_naming_the_element() {
    let Some(dir) = shared_dicom_dir() else {
        return;
    };
    let mut bytes = std::fs::read(dir.join("SC_rgb_jpeg_dcmtk.dcm")).unwrap();
    let planar = [0x28, 0x00, 0x06, 0x00, b'U', b'S', 2, 0];
    let at = bytes
        .windows(planar.len())
        .position(|w| w == planar)
        .expect("Planar Configuration (0028,0006) in the file");
    bytes[at + 2] = 0x02;
    let err = decode_raw_bytes(&bytes, "twice.dcm", &Limits::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Malformed, "{err}");
    assert!(
        err.to_string()
            .contains("element (0028,0002) appears twice"),
        "{err}"
    );
}

/// Deterministic mutations of `bytes`: truncations, byte flips, length fields and image
/// attributes set to hostile values.
fn mutations(bytes: &[u8], budget: usize) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let n = bytes.len();
    let step = |k: usize| (n / k).max(1);
    for cut in (0..n).step_by(step(budget / 4)) {
        out.push((format!("cut at {cut}"), bytes[..cut].to_vec()));
    }
    for (i, pos) in (0..n).step_by(step(budget / 4)).enumerate() {
        let mut m = bytes.to_vec();
        m[pos] ^= [0xFF, 0x80, 0x01, 0x10][i % 4];
        out.push((format!("flip at {pos}"), m));
    }
    // Length fields: every explicit-VR header position of a 4-byte length we can see,
    // approximated by the offsets after "OB"/"OW"/"SQ"/"UN" and item tags.
    let mut length_sites = Vec::new();
    for i in 0..n.saturating_sub(8) {
        let w = &bytes[i..i + 4];
        if matches!(&w[..2], b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") && w[2..4] == [0, 0] {
            length_sites.push(i + 4);
        }
        if w == [0xFE, 0xFF, 0x00, 0xE0] {
            length_sites.push(i + 4);
        }
    }
    let mut short_sites = Vec::new();
    for i in 0..n.saturating_sub(6) {
        if matches!(
            &bytes[i..i + 2],
            b"US" | b"CS" | b"DS" | b"IS" | b"UI" | b"LO"
        ) && i >= 4
            && bytes[i - 4] & 1 == 0
        {
            short_sites.push(i + 2);
        }
    }
    for &site in length_sites.iter().take(budget / 8) {
        for v in [0xFFFF_FFFEu32, 0xFFFF_FFF0, 0x7FFF_FFFF, 0x0010_0000, 3] {
            let mut m = bytes.to_vec();
            m[site..site + 4].copy_from_slice(&v.to_le_bytes());
            out.push((format!("length {v:#x} at {site}"), m));
        }
    }
    for &site in short_sites
        .iter()
        .step_by((short_sites.len() / (budget / 8)).max(1))
    {
        for v in [0xFFFFu16, 0xFFF0, 1] {
            let mut m = bytes.to_vec();
            m[site..site + 2].copy_from_slice(&v.to_le_bytes());
            out.push((format!("short length {v:#x} at {site}"), m));
        }
    }
    // Image attributes (explicit VR LE "US" values), found by tag.
    for (tag, values) in [
        ((0x0028u16, 0x0010u16), &[0u16, 1, 63, 65, 0xFFFF][..]),
        ((0x0028, 0x0011), &[0, 1, 255, 0xFFFF][..]),
        ((0x0028, 0x0101), &[0, 7, 15, 17, 40, 0xFFFF][..]),
        ((0x0028, 0x0100), &[0, 8, 12, 32, 64][..]),
        ((0x0028, 0x0002), &[0, 2, 3, 4][..]),
        ((0x0028, 0x0103), &[1, 0, 2][..]),
    ] {
        let mut pat = tag.0.to_le_bytes().to_vec();
        pat.extend_from_slice(&tag.1.to_le_bytes());
        pat.extend_from_slice(b"US\x02\x00");
        if let Some(at) = bytes.windows(8).position(|w| w == pat.as_slice()) {
            for &v in values {
                let mut m = bytes.to_vec();
                m[at + 8..at + 10].copy_from_slice(&v.to_le_bytes());
                out.push((format!("{} = {v}", scan::tag_str(tag)), m));
            }
        }
    }
    out
}

#[test]
fn mutated_files_never_panic_or_abort() {
    let Some(dir) = shared_dicom_dir() else {
        return;
    };
    let budget = if cfg!(target_arch = "aarch64") {
        60
    } else {
        160
    };
    let limits = Limits::default();
    let (mut total, mut ok, mut bugs) = (0, 0, 0);
    for file in [
        "MR_small.dcm",
        "MR_small_RLE.dcm",
        "SC_rgb_rle.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "JPEG2000.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ] {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        for (what, m) in mutations(&bytes, budget) {
            let r = std::panic::catch_unwind(|| load_bytes(&m, file, &limits));
            match r {
                Ok(Ok(img)) => {
                    ok += 1;
                    assert!(img.data.iter().all(|v| v.is_finite()), "{file} {what}");
                }
                Ok(Err(e)) if e.kind() == ErrorKind::DecoderBug => {
                    // Native and RLE data are checked completely before decoding: nothing
                    // may reach the last guard.
                    let checked_fully =
                        file == "MR_small.dcm" || file.to_ascii_lowercase().contains("rle");
                    assert!(!checked_fully, "{file} {what}: {e}");
                    eprintln!("{file} {what}: {e}");
                    bugs += 1;
                }
                Ok(Err(e)) => assert!(e.to_string().contains(file), "{file} {what}: {e}"),
                Err(_) => panic!("{file}: mutation {what} panicked through load_bytes"),
            }
            total += 1;
        }
    }
    eprintln!(
        "mutation test: {total} variants, {ok} decoded, {} refused, {bugs} caught decoder panics",
        total - ok
    );
    assert!(
        total
            >= if cfg!(target_arch = "aarch64") {
                150
            } else {
                400
            }
    );
}
