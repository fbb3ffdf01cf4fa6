//! Bounds-checking pre-scan of a DICOM byte stream, run before dicom-rs sees it.
//!
//! dicom-rs trusts element lengths: a length of 0xFFFFFFFE in a 2 KB file makes it
//! allocate 4 GiB before reading, which aborts the process (DESIGN.md). This walker
//! reads every element header (recursing into sequences, items and encapsulated pixel
//! data) and refuses any defined length larger than what its container still holds.
//! On the way it collects the top-level attributes the decoder would trust, so they can
//! be sanity-checked before decoding.

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

/// Sequences nest a few levels in real files; deeper nesting only serves to exhaust
/// the stack of a recursive parser.
const MAX_DEPTH: u32 = 32;
const UNDEFINED: u32 = 0xFFFF_FFFF;

pub(crate) const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_DELIM: (u16, u16) = (0xFFFE, 0xE00D);
const SEQ_DELIM: (u16, u16) = (0xFFFE, 0xE0DD);

/// How a data set is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Syntax {
    pub explicit: bool,
    pub big_endian: bool,
}

impl Syntax {
    pub const IMPLICIT_LE: Syntax = Syntax {
        explicit: false,
        big_endian: false,
    };
    pub const EXPLICIT_LE: Syntax = Syntax {
        explicit: true,
        big_endian: false,
    };
    pub const EXPLICIT_BE: Syntax = Syntax {
        explicit: true,
        big_endian: true,
    };
}

/// A scan failure; the caller adds the file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fail {
    /// The stream ends inside something that declared more bytes.
    Truncated(String),
    Malformed(String),
}

/// Where the pixel data sits and how it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PixelData {
    /// Native: the value's byte length.
    Native { len: u32 },
    /// Encapsulated: byte ranges of the fragments, basic offset table first.
    Encapsulated { fragments: Vec<(usize, usize)> },
}

/// Top-level attributes collected by the scan: raw value byte ranges into the buffer.
#[derive(Debug, Default)]
pub(crate) struct Found {
    pub values: Vec<((u16, u16), (usize, usize))>,
    pub pixel_data: Option<PixelData>,
}

impl Found {
    pub fn raw<'b>(&self, buf: &'b [u8], tag: (u16, u16)) -> Option<&'b [u8]> {
        self.values
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, (s, e))| &buf[*s..*e])
    }
}

/// Tags whose values the loader reads from the scan.
const WANTED: &[(u16, u16)] = &[
    (0x0008, 0x0016), // SOP Class UID
    (0x0008, 0x0060), // Modality
    (0x0028, 0x0002), // Samples per Pixel
    (0x0028, 0x0004), // Photometric Interpretation
    (0x0028, 0x0006), // Planar Configuration
    (0x0028, 0x0008), // Number of Frames
    (0x0028, 0x0010), // Rows
    (0x0028, 0x0011), // Columns
    (0x0028, 0x0100), // Bits Allocated
    (0x0028, 0x0101), // Bits Stored
    (0x0028, 0x0102), // High Bit
    (0x0028, 0x0103), // Pixel Representation
    (0x0028, 0x1050), // Window Center
    (0x0028, 0x1051), // Window Width
    (0x0028, 0x1052), // Rescale Intercept
    (0x0028, 0x1053), // Rescale Slope
    (0x0028, 0x1056), // VOI LUT Function
];

/// Explicit-VR codes whose length field is 4 bytes (after 2 reserved bytes).
fn has_long_length(vr: [u8; 2]) -> bool {
    matches!(
        &vr,
        b"OB"
            | b"OD"
            | b"OF"
            | b"OL"
            | b"OV"
            | b"OW"
            | b"SQ"
            | b"SV"
            | b"UC"
            | b"UN"
            | b"UR"
            | b"UT"
            | b"UV"
    )
}

fn dictionary_says_sequence(tag: (u16, u16)) -> bool {
    StandardDataDictionary
        .by_tag(Tag(tag.0, tag.1))
        .map(|e| matches!(e.vr(), VirtualVr::Exact(VR::SQ)))
        .unwrap_or(false)
}

pub(crate) fn tag_str(tag: (u16, u16)) -> String {
    format!("({:04X},{:04X})", tag.0, tag.1)
}

struct Walker<'a> {
    buf: &'a [u8],
    found: Found,
}

impl Walker<'_> {
    fn u16_at(&self, pos: usize, big: bool) -> u16 {
        let b = [self.buf[pos], self.buf[pos + 1]];
        if big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    fn u32_at(&self, pos: usize, big: bool) -> u32 {
        let b = [
            self.buf[pos],
            self.buf[pos + 1],
            self.buf[pos + 2],
            self.buf[pos + 3],
        ];
        if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    /// A length that runs past its container: truncation when the container is the
    /// file itself, otherwise a lie about the structure.
    fn overrun(&self, what: String, len: u64, pos: usize, end: usize) -> Fail {
        let msg = format!(
            "{what} at offset {pos} declares length {len} (0x{len:X}) but only {} bytes remain{}",
            end.saturating_sub(pos),
            if end == self.buf.len() {
                " in the file"
            } else {
                " in its enclosing item"
            }
        );
        if end == self.buf.len() {
            Fail::Truncated(msg)
        } else {
            Fail::Malformed(msg)
        }
    }

    /// Walks elements in `pos..end`. With `until_delim`, stops after an item
    /// delimitation item (an item of undefined length). Returns the position after.
    fn elements(
        &mut self,
        mut pos: usize,
        end: usize,
        syn: Syntax,
        depth: u32,
        until_delim: bool,
    ) -> Result<usize, Fail> {
        if depth > MAX_DEPTH {
            return Err(Fail::Malformed(format!(
                "sequences nested deeper than {MAX_DEPTH} levels at offset {pos}"
            )));
        }
        loop {
            if pos == end {
                if until_delim {
                    return Err(Fail::Truncated(format!(
                        "item of undefined length has no delimiter before offset {end}"
                    )));
                }
                return Ok(pos);
            }
            if end - pos < 8 {
                return Err(self.overrun("element header".into(), 8, pos, end));
            }
            let tag = (
                self.u16_at(pos, syn.big_endian),
                self.u16_at(pos + 2, syn.big_endian),
            );
            if tag.0 == 0xFFFE {
                return match tag {
                    ITEM_DELIM if until_delim => Ok(pos + 8),
                    _ => Err(Fail::Malformed(format!(
                        "delimiter or item tag {} outside its place at offset {pos}",
                        tag_str(tag)
                    ))),
                };
            }
            let (vr, len, header) = if syn.explicit {
                let vr = [self.buf[pos + 4], self.buf[pos + 5]];
                if !vr.iter().all(u8::is_ascii_uppercase) {
                    return Err(Fail::Malformed(format!(
                        "element {} at offset {pos} has invalid VR bytes {:02X} {:02X}",
                        tag_str(tag),
                        vr[0],
                        vr[1]
                    )));
                }
                if has_long_length(vr) {
                    if end - pos < 12 {
                        return Err(self.overrun("element header".into(), 12, pos, end));
                    }
                    (Some(vr), self.u32_at(pos + 8, syn.big_endian), 12)
                } else {
                    (Some(vr), u32::from(self.u16_at(pos + 6, syn.big_endian)), 8)
                }
            } else {
                (None, self.u32_at(pos + 4, syn.big_endian), 8)
            };
            let value = pos + header;
            let is_sq = match vr {
                Some(v) => &v == b"SQ" || (&v == b"UN" && dictionary_says_sequence(tag)),
                None => dictionary_says_sequence(tag),
            };
            // An undefined-length UN is a sequence encoded in implicit VR little endian
            // (PS3.5 6.2.2); so is the content of a UN the dictionary knows as SQ.
            let inner = match vr {
                Some(v) if &v == b"UN" => Syntax::IMPLICIT_LE,
                _ => syn,
            };
            if len == UNDEFINED {
                if tag == PIXEL_DATA && depth == 0 {
                    pos = self.fragments(value, end, syn)?;
                    continue;
                }
                let sequence_like = match vr {
                    Some(v) => &v == b"SQ" || &v == b"UN",
                    None => true,
                };
                if !sequence_like {
                    return Err(Fail::Malformed(format!(
                        "element {} at offset {pos} has undefined length but VR {}",
                        tag_str(tag),
                        String::from_utf8_lossy(&vr.unwrap_or(*b"??"))
                    )));
                }
                pos = self.items(value, end, inner, depth + 1, true)?;
                continue;
            }
            let len_usize = len as usize;
            if len_usize > end - value {
                return Err(self.overrun(
                    format!("element {}", tag_str(tag)),
                    u64::from(len),
                    value,
                    end,
                ));
            }
            let value_end = value + len_usize;
            if is_sq {
                self.items(value, value_end, inner, depth + 1, false)?;
            }
            if depth == 0 {
                if tag == PIXEL_DATA {
                    self.found.pixel_data = Some(PixelData::Native { len });
                } else if WANTED.contains(&tag) {
                    self.found.values.push((tag, (value, value_end)));
                }
            }
            pos = value_end;
        }
    }

    /// Walks the items of a sequence in `pos..end`; with `undefined`, up to and
    /// including the sequence delimiter.
    fn items(
        &mut self,
        mut pos: usize,
        end: usize,
        syn: Syntax,
        depth: u32,
        undefined: bool,
    ) -> Result<usize, Fail> {
        if depth > MAX_DEPTH {
            return Err(Fail::Malformed(format!(
                "sequences nested deeper than {MAX_DEPTH} levels at offset {pos}"
            )));
        }
        loop {
            if pos == end {
                if undefined {
                    return Err(Fail::Truncated(format!(
                        "sequence of undefined length has no delimiter before offset {end}"
                    )));
                }
                return Ok(pos);
            }
            if end - pos < 8 {
                return Err(self.overrun("item header".into(), 8, pos, end));
            }
            let tag = (
                self.u16_at(pos, syn.big_endian),
                self.u16_at(pos + 2, syn.big_endian),
            );
            let len = self.u32_at(pos + 4, syn.big_endian);
            match tag {
                SEQ_DELIM if undefined => return Ok(pos + 8),
                ITEM if len == UNDEFINED => {
                    pos = self.elements(pos + 8, end, syn, depth, true)?;
                }
                ITEM => {
                    let value = pos + 8;
                    if len as usize > end - value {
                        return Err(self.overrun("item".into(), u64::from(len), value, end));
                    }
                    let item_end = value + len as usize;
                    self.elements(value, item_end, syn, depth, false)?;
                    pos = item_end;
                }
                _ => {
                    return Err(Fail::Malformed(format!(
                        "expected an item in a sequence at offset {pos}, found tag {}",
                        tag_str(tag)
                    )))
                }
            }
        }
    }

    /// Encapsulated pixel data: defined-length items up to the sequence delimiter.
    fn fragments(&mut self, mut pos: usize, end: usize, syn: Syntax) -> Result<usize, Fail> {
        let mut fragments = Vec::new();
        loop {
            if end - pos < 8 {
                return Err(self.overrun("pixel data fragment header".into(), 8, pos, end));
            }
            let tag = (
                self.u16_at(pos, syn.big_endian),
                self.u16_at(pos + 2, syn.big_endian),
            );
            let len = self.u32_at(pos + 4, syn.big_endian);
            match tag {
                SEQ_DELIM => {
                    self.found.pixel_data = Some(PixelData::Encapsulated { fragments });
                    return Ok(pos + 8);
                }
                ITEM if len != UNDEFINED => {
                    let value = pos + 8;
                    if len as usize > end - value {
                        return Err(self.overrun(
                            "pixel data fragment".into(),
                            u64::from(len),
                            value,
                            end,
                        ));
                    }
                    fragments.push((value, value + len as usize));
                    pos = value + len as usize;
                }
                _ => {
                    return Err(Fail::Malformed(format!(
                        "encapsulated pixel data: expected a fragment item at offset {pos}, \
                         found tag {} length 0x{len:X}",
                        tag_str(tag)
                    )))
                }
            }
        }
    }
}

/// Scans a data set occupying `buf[start..]`.
pub(crate) fn scan_dataset(buf: &[u8], start: usize, syn: Syntax) -> Result<Found, Fail> {
    let mut w = Walker {
        buf,
        found: Found::default(),
    };
    w.elements(start, buf.len(), syn, 0, false)?;
    Ok(w.found)
}

/// File meta group (always explicit VR little endian): returns the transfer syntax UID
/// and the offset where the data set starts.
pub(crate) fn scan_meta(buf: &[u8], start: usize) -> Result<(String, usize), Fail> {
    let w = Walker {
        buf,
        found: Found::default(),
    };
    let mut pos = start;
    let mut ts = None;
    while buf.len() - pos >= 8 && w.u16_at(pos, false) == 0x0002 {
        let tag = (0x0002, w.u16_at(pos + 2, false));
        let vr = [buf[pos + 4], buf[pos + 5]];
        let (len, header) = if has_long_length(vr) {
            if buf.len() - pos < 12 {
                return Err(w.overrun("file meta element header".into(), 12, pos, buf.len()));
            }
            (w.u32_at(pos + 8, false) as usize, 12)
        } else {
            (usize::from(w.u16_at(pos + 6, false)), 8)
        };
        let value = pos + header;
        if len > buf.len() - value {
            return Err(w.overrun(
                format!("file meta element {}", tag_str(tag)),
                len as u64,
                value,
                buf.len(),
            ));
        }
        if tag == (0x0002, 0x0010) {
            ts = Some(text(&buf[value..value + len]));
        }
        pos = value + len;
    }
    match ts {
        Some(uid) if !uid.is_empty() => Ok((uid, pos)),
        _ => Err(Fail::Malformed(
            "file meta has no Transfer Syntax UID (0002,0010)".into(),
        )),
    }
}

/// A string value without DICOM padding (trailing spaces and NULs).
pub(crate) fn text(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .trim_matches(|c: char| c == '\0' || c.is_whitespace())
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&tag.0.to_le_bytes());
        v.extend_from_slice(&tag.1.to_le_bytes());
        v.extend_from_slice(vr);
        if has_long_length(*vr) {
            v.extend_from_slice(&[0, 0]);
            v.extend_from_slice(&(value.len() as u32).to_le_bytes());
        } else {
            v.extend_from_slice(&(value.len() as u16).to_le_bytes());
        }
        v.extend_from_slice(value);
        v
    }

    #[test]
    fn collects_top_level_values() {
        let mut buf = el((0x0028, 0x0010), b"US", &64u16.to_le_bytes());
        buf.extend(el(PIXEL_DATA, b"OW", &[0; 8]));
        let found = scan_dataset(&buf, 0, Syntax::EXPLICIT_LE).unwrap();
        assert_eq!(found.raw(&buf, (0x0028, 0x0010)), Some(&[64u8, 0][..]));
        assert_eq!(found.pixel_data, Some(PixelData::Native { len: 8 }));
    }

    #[test]
    fn huge_length_is_refused_with_tag_and_length() {
        let mut buf = el((0x0010, 0x0010), b"OB", &[0; 4]);
        buf[8..12].copy_from_slice(&0xFFFF_FFFEu32.to_le_bytes());
        let err = scan_dataset(&buf, 0, Syntax::EXPLICIT_LE).unwrap_err();
        let Fail::Truncated(msg) = err else {
            panic!("{err:?}")
        };
        assert!(
            msg.contains("(0010,0010)") && msg.contains("4294967294"),
            "{msg}"
        );
    }

    #[test]
    fn nested_lengths_are_bounded_by_their_item() {
        // SQ of defined length holding an item whose element claims more than the item.
        let inner = el((0x0008, 0x0100), b"SH", b"ABCD");
        let mut item = vec![0xFE, 0xFF, 0x00, 0xE0];
        item.extend_from_slice(&(inner.len() as u32).to_le_bytes());
        item.extend_from_slice(&inner);
        let n = item.len();
        item[n - 6..n - 4].copy_from_slice(&100u16.to_le_bytes());
        let mut buf = el((0x0008, 0x1115), b"SQ", &item);
        buf.extend(el(PIXEL_DATA, b"OW", &[0; 200]));
        let err = scan_dataset(&buf, 0, Syntax::EXPLICIT_LE).unwrap_err();
        assert!(
            matches!(err, Fail::Malformed(ref m) if m.contains("(0008,0100)")),
            "{err:?}"
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        // Undefined-length sequences nested 40 deep, never closed.
        let mut buf = Vec::new();
        for _ in 0..40 {
            buf.extend(el((0x0008, 0x1115), b"SQ", &[]));
            let n = buf.len();
            buf[n - 4..].copy_from_slice(&UNDEFINED.to_le_bytes());
            buf.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        }
        let err = scan_dataset(&buf, 0, Syntax::EXPLICIT_LE).unwrap_err();
        assert!(
            matches!(err, Fail::Malformed(ref m) if m.contains("nested")),
            "{err:?}"
        );
    }
}
