//! Bounds-checking pre-scan of a DICOM byte stream, run before dicom-rs sees it.
//!
//! dicom-rs trusts element lengths: a length of 0xFFFFFFFE in a 2 KB file makes it
//! allocate 4 GiB before reading, which aborts the process (DESIGN.md). This walker
//! reads every element header (recursing into sequences, items and encapsulated pixel
//! data) and refuses any defined length larger than what its container still holds.
//! On the way it collects the top-level attributes the decoder would trust, so they can
//! be sanity-checked before decoding.
//!
//! The bound only holds if the walker finds the headers where dicom-rs 0.10 will read
//! them, so it reads them the way dicom-rs does, not the way the standard says: an
//! unknown explicit VR is UN (4-byte length), a binary value is consumed in whole values
//! (a US of length 3 leaves dicom-rs one byte early, reading the next header out of a
//! value), and the items of an undefined-length UN are read in the data set's own
//! syntax. What dicom-rs would read out of step is refused here instead.

use std::collections::HashMap;

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
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

impl Fail {
    /// The same failure, said to be `context` (where it happened).
    fn context(self, context: String) -> Fail {
        match self {
            Fail::Truncated(m) => Fail::Truncated(format!("{context}: {m}")),
            Fail::Malformed(m) => Fail::Malformed(format!("{context}: {m}")),
        }
    }
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
    (0x0028, 0x1101), // Red Palette Color Lookup Table Descriptor
    (0x0028, 0x1102), // Green Palette Color Lookup Table Descriptor
    (0x0028, 0x1103), // Blue Palette Color Lookup Table Descriptor
    (0x0028, 0x1201), // Red Palette Color Lookup Table Data
    (0x0028, 0x1202), // Green Palette Color Lookup Table Data
    (0x0028, 0x1203), // Blue Palette Color Lookup Table Data
    (0x0028, 0x1221), // Segmented Red Palette Color Lookup Table Data
    (0x0028, 0x1222), // Segmented Green Palette Color Lookup Table Data
    (0x0028, 0x1223), // Segmented Blue Palette Color Lookup Table Data
];

/// Whether an explicit-VR header has a 4-byte length (after 2 reserved bytes): every VR
/// but those PS3.5 Table 7.1-2 lists, including the codes dicom-rs does not know (it reads
/// them as UN).
fn has_long_length(vr: VR) -> bool {
    !matches!(
        vr,
        VR::AE
            | VR::AS
            | VR::AT
            | VR::CS
            | VR::DA
            | VR::DS
            | VR::DT
            | VR::FL
            | VR::FD
            | VR::IS
            | VR::LO
            | VR::LT
            | VR::PN
            | VR::SH
            | VR::SL
            | VR::SS
            | VR::ST
            | VR::TM
            | VR::UI
            | VR::UL
            | VR::US
    )
}

/// The VR dicom-rs reads an element with in implicit VR: the dictionary's (the first of
/// its choices), OW for pixel and overlay data, UN when the tag is unknown.
fn implicit_vr(tag: (u16, u16)) -> VR {
    if tag == PIXEL_DATA || (tag.0 >> 8 == 0x60 && tag.1 == 0x3000) {
        return VR::OW;
    }
    StandardDataDictionary
        .by_tag(Tag(tag.0, tag.1))
        .map(|e| e.vr().relaxed())
        .unwrap_or(VR::UN)
}

/// Size of one value of a binary VR, which dicom-rs reads in whole values only.
fn value_size(vr: VR) -> u32 {
    match vr {
        VR::US | VR::SS | VR::OW => 2,
        VR::UL | VR::SL | VR::FL | VR::OL | VR::OF | VR::AT => 4,
        VR::FD | VR::OD | VR::SV | VR::UV | VR::OV => 8,
        _ => 1,
    }
}

pub(crate) fn tag_str(tag: (u16, u16)) -> String {
    format!("({:04X},{:04X})", tag.0, tag.1)
}

struct Walker<'a> {
    buf: &'a [u8],
    found: Found,
    /// Top-level tags seen, with their offsets: a tag that comes twice is refused, because
    /// dicom-rs keeps the last and this scan would read the first.
    seen: HashMap<(u16, u16), usize>,
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
            if depth == 0 {
                if let Some(first) = self.seen.insert(tag, pos) {
                    return Err(Fail::Malformed(format!(
                        "element {} appears twice in the data set, at offsets {first} and \
                         {pos}: which value the image has is ambiguous",
                        tag_str(tag)
                    )));
                }
            }
            let (vr, len, header) = if syn.explicit {
                let code = [self.buf[pos + 4], self.buf[pos + 5]];
                if !code.iter().all(u8::is_ascii_uppercase) {
                    return Err(Fail::Malformed(format!(
                        "element {} at offset {pos} has invalid VR bytes {:02X} {:02X}",
                        tag_str(tag),
                        code[0],
                        code[1]
                    )));
                }
                let vr = VR::from_binary(code).unwrap_or(VR::UN);
                if has_long_length(vr) {
                    if end - pos < 12 {
                        return Err(self.overrun("element header".into(), 12, pos, end));
                    }
                    (vr, self.u32_at(pos + 8, syn.big_endian), 12)
                } else {
                    (vr, u32::from(self.u16_at(pos + 6, syn.big_endian)), 8)
                }
            } else {
                (implicit_vr(tag), self.u32_at(pos + 4, syn.big_endian), 8)
            };
            let value = pos + header;
            if len == UNDEFINED {
                // Encapsulated pixel data is not only the image's: an Icon Image Sequence
                // (0088,0200) item of a compressed file carries its own, encapsulated in the
                // same transfer syntax. Only the top-level one is the image to decode.
                if tag == PIXEL_DATA {
                    pos = self.fragments(value, end, syn, depth == 0)?;
                    continue;
                }
                // dicom-rs reads any other undefined length as a sequence; in explicit VR
                // only SQ and UN are meant to be one.
                if syn.explicit && !matches!(vr, VR::SQ | VR::UN) {
                    return Err(Fail::Malformed(format!(
                        "element {} at offset {pos} has undefined length but VR {vr}; only \
                         sequences (SQ, UN) and Pixel Data {} may",
                        tag_str(tag),
                        tag_str(PIXEL_DATA)
                    )));
                }
                pos = self.items(value, end, syn, depth + 1, true).map_err(|f| {
                    if vr == VR::UN && syn.explicit {
                        // The standard encodes these items in implicit VR; dicom-rs 0.10
                        // reads them in explicit VR, so only that reading is safe to pass.
                        f.context(format!(
                            "in UN element {} of undefined length at offset {pos}, whose \
                             items the decoder reads in explicit VR",
                            tag_str(tag)
                        ))
                    } else {
                        f
                    }
                })?;
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
            let size = value_size(vr);
            if len % size != 0 {
                return Err(Fail::Malformed(format!(
                    "element {} at offset {pos} has VR {vr} and length {len}, not a whole \
                     number of {size}-byte values",
                    tag_str(tag)
                )));
            }
            let value_end = value + len_usize;
            if vr == VR::SQ {
                self.items(value, value_end, syn, depth + 1, false)?;
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

    /// Encapsulated pixel data: defined-length items up to the sequence delimiter. With
    /// `record`, they are the image's fragments.
    fn fragments(
        &mut self,
        mut pos: usize,
        end: usize,
        syn: Syntax,
        record: bool,
    ) -> Result<usize, Fail> {
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
                    if record {
                        self.found.pixel_data = Some(PixelData::Encapsulated { fragments });
                    }
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
        seen: HashMap::new(),
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
        seen: HashMap::new(),
    };
    let mut pos = start;
    let mut ts = None;
    while buf.len() - pos >= 8 && w.u16_at(pos, false) == 0x0002 {
        let tag = (0x0002, w.u16_at(pos + 2, false));
        let vr = VR::from_binary([buf[pos + 4], buf[pos + 5]]).unwrap_or(VR::UN);
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
        if has_long_length(VR::from_binary(*vr).unwrap()) {
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

    /// dicom-rs keeps the last of two equal tags, a scan that read the first would check
    /// other attributes than the decoder uses (fuzzing: a second Samples per Pixel of 0
    /// made dicom-rs size its output at 0 bytes and panic).
    #[test]
    fn a_tag_that_comes_twice_is_refused_with_both_offsets() {
        let mut buf = el((0x0028, 0x0002), b"US", &3u16.to_le_bytes());
        buf.extend(el((0x0028, 0x0004), b"CS", b"RGB "));
        let second = buf.len();
        buf.extend(el((0x0028, 0x0002), b"US", &0u16.to_le_bytes()));
        let err = scan_dataset(&buf, 0, Syntax::EXPLICIT_LE).unwrap_err();
        let Fail::Malformed(msg) = err else {
            panic!("{err:?}")
        };
        assert!(
            msg.contains("(0028,0002) appears twice") && msg.contains(&format!("0 and {second}")),
            "{msg}"
        );
        // Equal tags in different items of a sequence are not duplicates.
        let item = |v: u16| {
            let inner = el((0x0028, 0x0002), b"US", &v.to_le_bytes());
            let mut i = vec![0xFE, 0xFF, 0x00, 0xE0];
            i.extend_from_slice(&(inner.len() as u32).to_le_bytes());
            i.extend(inner);
            i
        };
        let mut items = item(1);
        items.extend(item(3));
        let seq = el((0x0008, 0x1115), b"SQ", &items);
        assert!(scan_dataset(&seq, 0, Syntax::EXPLICIT_LE).is_ok());
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

    /// Header of an explicit VR LE element of undefined length.
    fn undefined(tag: (u16, u16), vr: &[u8; 2]) -> Vec<u8> {
        let mut v = el(tag, vr, &[]);
        let n = v.len();
        v[n - 4..].copy_from_slice(&UNDEFINED.to_le_bytes());
        v
    }

    fn item(len: u32) -> Vec<u8> {
        let mut v = vec![0xFE, 0xFF, 0x00, 0xE0];
        v.extend_from_slice(&len.to_le_bytes());
        v
    }

    const SEQ_DELIM_BYTES: [u8; 8] = [0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0];
    const ITEM_DELIM_BYTES: [u8; 8] = [0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0];

    /// Encapsulated pixel data: empty offset table, then `fragments`.
    fn encapsulated(fragments: &[&[u8]]) -> Vec<u8> {
        let mut v = undefined(PIXEL_DATA, b"OB");
        v.extend(item(0));
        for f in fragments {
            v.extend(item(f.len() as u32));
            v.extend_from_slice(f);
        }
        v.extend_from_slice(&SEQ_DELIM_BYTES);
        v
    }

    #[test]
    fn encapsulated_pixel_data_inside_an_icon_item_is_walked_not_recorded() {
        // Icon Image Sequence of undefined length, one item of undefined length holding an
        // encapsulated icon, as compressed files from several vendors have; then the image.
        let mut buf = el((0x0018, 0x0050), b"DS", b"");
        buf.extend(undefined((0x0088, 0x0200), b"SQ"));
        buf.extend(item(UNDEFINED));
        buf.extend(el((0x0028, 0x0010), b"US", &8u16.to_le_bytes()));
        buf.extend(encapsulated(&[&[0xAA; 6]]));
        buf.extend_from_slice(&ITEM_DELIM_BYTES);
        buf.extend_from_slice(&SEQ_DELIM_BYTES);
        buf.extend(el((0x0028, 0x0010), b"US", &64u16.to_le_bytes()));
        let image_at = buf.len();
        buf.extend(encapsulated(&[&[0x55; 10], &[0x66; 4]]));
        let found = scan_dataset(&buf, 0, Syntax::EXPLICIT_LE).unwrap();
        // The icon's Rows is nested: only the image's is collected.
        assert_eq!(found.raw(&buf, (0x0028, 0x0010)), Some(&[64u8, 0][..]));
        let first = image_at + 12 + 8 + 8;
        assert_eq!(
            found.pixel_data,
            Some(PixelData::Encapsulated {
                fragments: vec![
                    (image_at + 20, image_at + 20),
                    (first, first + 10),
                    (first + 18, first + 22)
                ]
            })
        );
        assert_eq!(found.raw(&buf, (0x0018, 0x0050)), None, "not a wanted tag");

        // The same in implicit VR (no VR bytes: the tag alone says pixel data).
        let mut implicit = Vec::new();
        implicit.extend_from_slice(&[0x88, 0x00, 0x00, 0x02]);
        implicit.extend_from_slice(&UNDEFINED.to_le_bytes());
        implicit.extend(item(UNDEFINED));
        implicit.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00]);
        implicit.extend_from_slice(&UNDEFINED.to_le_bytes());
        implicit.extend(item(0));
        implicit.extend(item(2));
        implicit.extend_from_slice(&[1, 2]);
        implicit.extend_from_slice(&SEQ_DELIM_BYTES);
        implicit.extend_from_slice(&ITEM_DELIM_BYTES);
        implicit.extend_from_slice(&SEQ_DELIM_BYTES);
        let found = scan_dataset(&implicit, 0, Syntax::IMPLICIT_LE).unwrap();
        assert_eq!(found.pixel_data, None, "an icon alone is not an image");
    }

    #[test]
    fn undefined_length_outside_sequences_and_pixel_data_is_refused() {
        let mut buf = undefined((0x0009, 0x1010), b"OB");
        buf.extend(item(0));
        buf.extend_from_slice(&SEQ_DELIM_BYTES);
        let Fail::Malformed(msg) = scan_dataset(&buf, 0, Syntax::EXPLICIT_LE).unwrap_err() else {
            panic!("not reported as malformed")
        };
        assert!(
            msg.contains("(0009,1010)") && msg.contains("VR OB"),
            "{msg}"
        );
    }

    #[test]
    fn binary_values_must_be_whole_values() {
        // Found by fuzzing (a mutated CT_small.dcm): Pixel Representation written as SL of
        // length 2. dicom-rs reads no 4-byte value from it, stays two bytes early and takes
        // the next element's SS value as the length of a UN: 0xF8300002 bytes to allocate.
        let mut buf = el((0x0028, 0x0103), b"SL", &[1, 0]);
        buf.extend(el((0x0028, 0x0120), b"SS", &[0x30, 0xF8]));
        let Fail::Malformed(msg) = scan_dataset(&buf, 0, Syntax::EXPLICIT_LE).unwrap_err() else {
            panic!("not reported as malformed")
        };
        assert!(
            msg.contains("(0028,0103)") && msg.contains("VR SL and length 2"),
            "{msg}"
        );
        assert!(msg.contains("4-byte values"), "{msg}");

        // Implicit VR: the dictionary's VR counts (Rows is US).
        let mut implicit = vec![0x28, 0x00, 0x10, 0x00, 3, 0, 0, 0, 64, 0, 0];
        let Fail::Malformed(msg) = scan_dataset(&implicit, 0, Syntax::IMPLICIT_LE).unwrap_err()
        else {
            panic!("not reported as malformed")
        };
        assert!(
            msg.contains("(0028,0010)") && msg.contains("VR US and length 3"),
            "{msg}"
        );
        implicit[4] = 2;
        implicit.pop();
        assert!(scan_dataset(&implicit, 0, Syntax::IMPLICIT_LE).is_ok());
    }

    #[test]
    fn unknown_vr_codes_have_a_4_byte_length_as_in_dicom_rs() {
        // "ZZ" is no VR: dicom-rs reads it as UN, with reserved bytes and a 4-byte length.
        let mut buf = vec![0x09, 0x00, 0x01, 0x10, b'Z', b'Z', 0, 0];
        buf.extend_from_slice(&6u32.to_le_bytes());
        buf.extend_from_slice(b"abcdef");
        buf.extend(el((0x0028, 0x0010), b"US", &64u16.to_le_bytes()));
        let found = scan_dataset(&buf, 0, Syntax::EXPLICIT_LE).unwrap();
        assert_eq!(found.raw(&buf, (0x0028, 0x0010)), Some(&[64u8, 0][..]));
    }

    #[test]
    fn undefined_length_un_items_are_read_as_the_decoder_reads_them() {
        // Items in explicit VR, as dicom-rs reads them: walked.
        let mut buf = undefined((0x0009, 0x1010), b"UN");
        buf.extend(item(UNDEFINED));
        buf.extend(el((0x0008, 0x0100), b"SH", b"ABCD"));
        buf.extend_from_slice(&ITEM_DELIM_BYTES);
        buf.extend_from_slice(&SEQ_DELIM_BYTES);
        buf.extend(el((0x0028, 0x0010), b"US", &64u16.to_le_bytes()));
        let found = scan_dataset(&buf, 0, Syntax::EXPLICIT_LE).unwrap();
        assert_eq!(found.raw(&buf, (0x0028, 0x0010)), Some(&[64u8, 0][..]));

        // Items in implicit VR (what PS3.5 6.2.2 asks for): dicom-rs would read their
        // headers out of step, so they are refused, saying where.
        let mut buf = undefined((0x0009, 0x1010), b"UN");
        buf.extend(item(UNDEFINED));
        buf.extend_from_slice(&[0x08, 0x00, 0x00, 0x01, 4, 0, 0, 0]);
        buf.extend_from_slice(b"ABCD");
        buf.extend_from_slice(&ITEM_DELIM_BYTES);
        buf.extend_from_slice(&SEQ_DELIM_BYTES);
        let Fail::Malformed(msg) = scan_dataset(&buf, 0, Syntax::EXPLICIT_LE).unwrap_err() else {
            panic!("not reported as malformed")
        };
        assert!(
            msg.starts_with("in UN element (0009,1010) of undefined length at offset 0"),
            "{msg}"
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
