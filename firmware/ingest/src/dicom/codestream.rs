//! The codestream of the frame a codec will decode, checked against the image attributes
//! before the codec sees it.
//!
//! dicom-rs 0.10 sizes its output from Rows, Columns, Samples per Pixel and Bits Allocated,
//! then copies what the codec produced into it without comparing the two: its JPEG adapter
//! slices the output at the decoded length (a frame header wider than Columns panics), its
//! JPEG 2000 adapter writes one component more than Samples per Pixel (and past the end
//! with it), and a smaller or narrower decode leaves zeros or reinterpreted bytes that
//! look like an image. So the frame's header must declare exactly the attributes' image:
//! width, height, component count, and a sample size that fits Bits Allocated.
//!
//! The JPEG header is read by jpeg-decoder itself, the crate dicom-rs decodes with, so
//! the check sees what the decoder will see (it skips bytes between markers, which a
//! stricter marker walk here would not). JPEG-LS and JPEG 2000 headers have one fixed
//! layout and are read here.

use std::borrow::Cow;
use std::io::Cursor;

use jpeg_decoder::PixelFormat;

use super::Shape;

/// Codec families by transfer syntax UID, as the dicom-rs registry assigns them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    Jpeg,
    JpegLs,
    Jpeg2000,
}

impl Family {
    pub(super) fn of(ts: &str) -> Option<Family> {
        let process = ts.strip_prefix("1.2.840.10008.1.2.4.")?;
        match process {
            "50" | "51" | "57" | "70" => Some(Family::Jpeg),
            "80" | "81" => Some(Family::JpegLs),
            "90" | "91" | "92" | "93" | "201" | "202" | "203" => Some(Family::Jpeg2000),
            _ => None,
        }
    }
}

/// Why a frame is refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    Malformed(String),
    Unsupported(String),
}

/// What a codestream header declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    width: u32,
    height: u32,
    components: u32,
    /// Bytes per sample of the codec's output (JPEG, JPEG-LS), or bits per sample of the
    /// widest component (JPEG 2000, whose adapter narrows each to Bits Allocated).
    sample: Sample,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sample {
    Bytes(u8),
    Bits(u8),
}

/// The bytes dicom-rs hands the codec for `frame` (dicom-encoding's `frame_pixel_data`,
/// which its JPEG adapter repeats): the frame's own fragment when there is one fragment
/// per frame, else the fragments the basic offset table assigns to the frame, joined.
/// `fragments` are (start, end) in `buf`, the basic offset table first. `None` when there
/// is no such frame, which dicom-rs refuses too.
pub(super) fn frame_bytes<'a>(
    buf: &'a [u8],
    fragments: &[(usize, usize)],
    frames: u32,
    frame: u32,
) -> Option<Cow<'a, [u8]>> {
    let (&(table_start, table_end), data) = fragments.split_first()?;
    let frame = frame as usize;
    if data.len() == frames as usize {
        let &(start, end) = data.get(frame)?;
        return Some(Cow::Borrowed(&buf[start..end]));
    }
    let offsets: Vec<usize> = buf[table_start..table_end]
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let first = match offsets.get(frame) {
        Some(&o) => o,
        None if frame == 0 => 0,
        None => return None,
    };
    let next = offsets.get(frame + 1).copied();
    let mut offset = 0;
    let mut joined = Vec::new();
    for &(start, end) in data {
        if offset >= first {
            joined.extend_from_slice(&buf[start..end]);
        }
        // Offsets count each fragment's 8-byte item header.
        offset += end - start + 8;
        if next.is_some_and(|n| offset >= n) {
            break;
        }
    }
    Some(Cow::Owned(joined))
}

/// Checks the header of one frame's codestream against the image attributes.
pub(super) fn check(family: Family, bytes: &[u8], shape: Shape) -> Result<(), Refusal> {
    let header = match family {
        Family::Jpeg => jpeg(bytes)?,
        Family::JpegLs => jpeg_ls(bytes)?,
        Family::Jpeg2000 => jpeg_2000(bytes)?,
    };
    let malformed = |m: String| Err(Refusal::Malformed(m));
    if (header.width, header.height) != (shape.cols, shape.rows) {
        return malformed(format!(
            "the {family} frame header is {} x {} pixels, Columns (0028,0011) x Rows \
             (0028,0010) say {} x {}",
            header.width, header.height, shape.cols, shape.rows
        ));
    }
    if header.components != u32::from(shape.samples) {
        return malformed(format!(
            "the {family} frame header has {} component(s), Samples per Pixel (0028,0002) \
             is {}",
            header.components, shape.samples
        ));
    }
    let allocated = 8 * u32::from(shape.bytes_per_sample);
    match header.sample {
        Sample::Bytes(b) if b != shape.bytes_per_sample => malformed(format!(
            "the {family} codestream decodes to {}-bit samples, Bits Allocated (0028,0100) \
             is {allocated}",
            8 * u32::from(b)
        )),
        Sample::Bits(b) if u32::from(b) > allocated => malformed(format!(
            "the {family} codestream has {b}-bit samples, more than Bits Allocated \
             (0028,0100) {allocated}"
        )),
        _ => Ok(()),
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::Jpeg => "JPEG",
            Family::JpegLs => "JPEG-LS",
            Family::Jpeg2000 => "JPEG 2000",
        })
    }
}

/// The frame header as jpeg-decoder reads it (it stops after the frame header).
fn jpeg(bytes: &[u8]) -> Result<Header, Refusal> {
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    decoder.read_info().map_err(|e| match e {
        jpeg_decoder::Error::Unsupported(what) => {
            Refusal::Unsupported(format!("JPEG frame: {what:?} is not decoded"))
        }
        e => Refusal::Malformed(format!("JPEG frame header: {e}")),
    })?;
    let info = decoder.info().ok_or_else(|| {
        Refusal::Malformed("JPEG frame header: none before the first scan".into())
    })?;
    let (components, bytes) = match info.pixel_format {
        PixelFormat::L8 => (1, 1),
        PixelFormat::L16 => (1, 2),
        PixelFormat::RGB24 => (3, 1),
        PixelFormat::CMYK32 => (4, 1),
    };
    Ok(Header {
        width: u32::from(info.width),
        height: u32::from(info.height),
        components,
        sample: Sample::Bytes(bytes),
    })
}

/// The SOF55 frame header (ITU-T T.87 C.2.2), found by walking the marker segments.
fn jpeg_ls(f: &[u8]) -> Result<Header, Refusal> {
    let missing = || Refusal::Malformed("JPEG-LS codestream: no frame header (SOF55)".into());
    if !f.starts_with(&[0xFF, 0xD8]) {
        return Err(Refusal::Malformed(
            "JPEG-LS codestream does not start with SOI (FFD8)".into(),
        ));
    }
    let be16 = |p: usize| f.get(p..p + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let mut p = 2;
    while p + 4 <= f.len() {
        if f[p] != 0xFF {
            return Err(missing());
        }
        match f[p + 1] {
            0xFF => p += 1,
            0xF7 => {
                let byte = |q: usize| f.get(q).copied().ok_or_else(missing);
                let precision = byte(p + 4)?;
                return Ok(Header {
                    height: u32::from(be16(p + 5).ok_or_else(missing)?),
                    width: u32::from(be16(p + 7).ok_or_else(missing)?),
                    components: u32::from(byte(p + 9)?),
                    sample: Sample::Bytes(if precision > 8 { 2 } else { 1 }),
                });
            }
            0xDA => return Err(missing()),
            _ => p += 2 + usize::from(be16(p + 2).ok_or_else(missing)?),
        }
    }
    Err(missing())
}

/// The SIZ segment (ITU-T T.800 A.5.1), which must follow SOC. A JP2 file-format header
/// is refused: DICOM forbids it (PS3.5 8.2.4) and it would hide the codestream's SIZ.
fn jpeg_2000(f: &[u8]) -> Result<Header, Refusal> {
    if !f.starts_with(&[0xFF, 0x4F, 0xFF, 0x51]) {
        return Err(Refusal::Malformed(
            "JPEG 2000 frame does not start with a codestream (SOC then SIZ); a JP2 file \
             header is not allowed in DICOM"
                .into(),
        ));
    }
    let short = || Refusal::Malformed("JPEG 2000 SIZ segment is truncated".into());
    let be16 = |p: usize| {
        f.get(p..p + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(short)
    };
    let be32 = |p: usize| {
        f.get(p..p + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(short)
    };
    let (xsiz, ysiz, xosiz, yosiz) = (be32(8)?, be32(12)?, be32(16)?, be32(20)?);
    let (Some(width), Some(height)) = (xsiz.checked_sub(xosiz), ysiz.checked_sub(yosiz)) else {
        return Err(Refusal::Malformed(format!(
            "JPEG 2000 SIZ puts the image origin ({xosiz}, {yosiz}) beyond its extent \
             ({xsiz}, {ysiz})"
        )));
    };
    let components = be16(40)?;
    let mut bits = 0;
    for c in 0..usize::from(components) {
        let at = 42 + 3 * c;
        let ssiz = *f.get(at).ok_or_else(short)?;
        let (dx, dy) = (
            *f.get(at + 1).ok_or_else(short)?,
            *f.get(at + 2).ok_or_else(short)?,
        );
        if (dx, dy) != (1, 1) {
            return Err(Refusal::Unsupported(format!(
                "JPEG 2000 component {c} is subsampled {dx} x {dy}; the adapter fills only \
                 full-resolution components"
            )));
        }
        bits = bits.max((ssiz & 0x7F) + 1);
    }
    Ok(Header {
        width,
        height,
        components: u32::from(components),
        sample: Sample::Bits(bits),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GREY_8: Shape = Shape {
        rows: 64,
        cols: 128,
        samples: 1,
        bytes_per_sample: 1,
    };

    fn siz(width: u32, height: u32, components: &[(u8, u8)]) -> Vec<u8> {
        let mut f = vec![0xFF, 0x4F, 0xFF, 0x51];
        f.extend_from_slice(&(38 + 3 * components.len() as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        for v in [width, height, 0, 0, width, height, 0, 0] {
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&(components.len() as u16).to_be_bytes());
        for &(ssiz, sub) in components {
            f.extend_from_slice(&[ssiz, sub, sub]);
        }
        f
    }

    fn sof55(width: u16, height: u16, precision: u8, components: u8) -> Vec<u8> {
        let mut f = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0, 0, 0xFF, 0xF7];
        f.extend_from_slice(&(8 + 3 * u16::from(components)).to_be_bytes());
        f.push(precision);
        f.extend_from_slice(&height.to_be_bytes());
        f.extend_from_slice(&width.to_be_bytes());
        f.push(components);
        for c in 0..components {
            f.extend_from_slice(&[c + 1, 0x11, 0]);
        }
        f
    }

    fn malformed(r: Result<(), Refusal>) -> String {
        match r {
            Err(Refusal::Malformed(m)) => m,
            other => panic!("expected a malformed refusal, got {other:?}"),
        }
    }

    #[test]
    fn jpeg_2000_headers_must_match_every_attribute() {
        assert_eq!(
            check(Family::Jpeg2000, &siz(128, 64, &[(7, 1)]), GREY_8),
            Ok(())
        );
        let m = malformed(check(Family::Jpeg2000, &siz(256, 64, &[(7, 1)]), GREY_8));
        assert!(m.contains("256 x 64") && m.contains("say 128 x 64"), "{m}");
        // One component more than Samples per Pixel: dicom-rs would write past its buffer.
        let m = malformed(check(
            Family::Jpeg2000,
            &siz(128, 64, &[(7, 1), (7, 1)]),
            GREY_8,
        ));
        assert!(m.contains("2 component(s)") && m.contains("is 1"), "{m}");
        // 12-bit samples do not fit Bits Allocated 8: the adapter would cut them.
        let m = malformed(check(Family::Jpeg2000, &siz(128, 64, &[(11, 1)]), GREY_8));
        assert!(
            m.contains("12-bit") && m.contains("Bits Allocated (0028,0100) 8"),
            "{m}"
        );
        let wide = Shape {
            bytes_per_sample: 2,
            ..GREY_8
        };
        assert_eq!(
            check(Family::Jpeg2000, &siz(128, 64, &[(11, 1)]), wide),
            Ok(())
        );
        assert!(matches!(
            check(Family::Jpeg2000, &siz(128, 64, &[(7, 2)]), GREY_8),
            Err(Refusal::Unsupported(m)) if m.contains("subsampled 2 x 2")
        ));
        let m = malformed(check(Family::Jpeg2000, &[0, 0, 0, 12, b'j', b'P'], GREY_8));
        assert!(m.contains("SOC then SIZ"), "{m}");
        let cut = siz(128, 64, &[(7, 1)]);
        let m = malformed(check(Family::Jpeg2000, &cut[..43], GREY_8));
        assert!(m.contains("truncated"), "{m}");
    }

    #[test]
    fn jpeg_ls_headers_must_match_every_attribute() {
        assert_eq!(check(Family::JpegLs, &sof55(128, 64, 8, 1), GREY_8), Ok(()));
        let m = malformed(check(Family::JpegLs, &sof55(128, 65, 8, 1), GREY_8));
        assert!(m.contains("128 x 65"), "{m}");
        let m = malformed(check(Family::JpegLs, &sof55(128, 64, 8, 3), GREY_8));
        assert!(m.contains("3 component(s)"), "{m}");
        let m = malformed(check(Family::JpegLs, &sof55(128, 64, 12, 1), GREY_8));
        assert!(m.contains("16-bit samples") && m.contains("is 8"), "{m}");
        let m = malformed(check(Family::JpegLs, &sof55(128, 64, 8, 1)[..12], GREY_8));
        assert!(m.contains("no frame header"), "{m}");
    }

    /// A table of two frames in three fragments: frame 1 is the last two.
    #[test]
    fn frame_bytes_follow_the_offset_table() {
        let mut buf = Vec::new();
        let mut fragments = Vec::new();
        let mut push = |bytes: &[u8]| {
            fragments.push((buf.len(), buf.len() + bytes.len()));
            buf.extend_from_slice(bytes);
        };
        let table: Vec<u8> = [0u32, 8 + 4].iter().flat_map(|o| o.to_le_bytes()).collect();
        push(&table);
        push(b"AAAA");
        push(b"BB");
        push(b"CCCC");
        assert_eq!(
            frame_bytes(&buf, &fragments, 2, 0).unwrap().as_ref(),
            b"AAAA"
        );
        assert_eq!(
            frame_bytes(&buf, &fragments, 2, 1).unwrap().as_ref(),
            b"BBCCCC"
        );
        assert_eq!(
            frame_bytes(&buf, &fragments, 3, 2).unwrap().as_ref(),
            b"CCCC"
        );
        // One frame in three fragments without a table: all of them, in order.
        fragments[0].1 = fragments[0].0;
        assert_eq!(
            frame_bytes(&buf, &fragments, 1, 0).unwrap().as_ref(),
            b"AAAABBCCCC"
        );
        assert_eq!(frame_bytes(&buf, &fragments, 2, 1), None);
    }
}
