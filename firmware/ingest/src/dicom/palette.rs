//! PALETTE COLOR lookup (PS3.3 C.7.6.3.1.5-6): stored indices to RGB through the three
//! Palette Color Lookup Tables, which dicom-rs does not apply (DESIGN.md).

use super::scan::{tag_str, Found};

/// Where one channel's table is described and stored.
struct Channel {
    colour: &'static str,
    descriptor: (u16, u16),
    data: (u16, u16),
    segmented: (u16, u16),
}

const CHANNELS: [Channel; 3] = [
    Channel {
        colour: "Red",
        descriptor: (0x0028, 0x1101),
        data: (0x0028, 0x1201),
        segmented: (0x0028, 0x1221),
    },
    Channel {
        colour: "Green",
        descriptor: (0x0028, 0x1102),
        data: (0x0028, 0x1202),
        segmented: (0x0028, 0x1222),
    },
    Channel {
        colour: "Blue",
        descriptor: (0x0028, 0x1103),
        data: (0x0028, 0x1203),
        segmented: (0x0028, 0x1223),
    },
];

/// Why a palette could not be read; the caller adds the file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PaletteError {
    Malformed(String),
    Unsupported(String),
}

/// One channel's table.
#[derive(Debug, Clone, PartialEq)]
struct Table {
    /// Stored value that maps to `entries[0]`.
    first: i64,
    entries: Vec<u16>,
    storage: Storage,
    /// How it was read, for the image's note.
    layout: String,
}

impl Table {
    /// Values below the first mapped value take the first entry and values past the
    /// table the last one (PS3.3 C.7.6.3.1.5).
    fn lookup(&self, stored: f32) -> u16 {
        let last = self.entries.len() as i64 - 1;
        let index = (stored as i64 - self.first).clamp(0, last);
        self.entries[index as usize]
    }
}

/// The three tables of a PALETTE COLOR image, ready to apply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Palette {
    tables: [Table; 3],
    /// Entry value of full intensity: 255 or 65535.
    pub max: f32,
    /// How the tables were read, for the image's note.
    pub note: String,
}

/// How one channel's data was laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Storage {
    /// One entry per 16-bit word.
    Words,
    /// Two 8-bit entries per 16-bit word, the first in the low byte.
    Packed,
}

/// Reads 16-bit words in the data set's byte order.
struct Words {
    big_endian: bool,
}

impl Words {
    fn at(&self, b: &[u8]) -> u16 {
        if self.big_endian {
            u16::from_be_bytes([b[0], b[1]])
        } else {
            u16::from_le_bytes([b[0], b[1]])
        }
    }
}

impl Palette {
    /// Reads the descriptors and data from the pre-scan's values. `signed` is Pixel
    /// Representation 1, which makes the first mapped value an SS.
    pub fn read(
        found: &Found,
        buf: &[u8],
        big_endian: bool,
        signed: bool,
    ) -> Result<Palette, PaletteError> {
        let words = Words { big_endian };
        let [r, g, b] = CHANNELS.map(|c| read_table(found, buf, &words, signed, &c));
        let tables = [r?, g?, b?];
        let packed = tables.iter().any(|t| t.storage == Storage::Packed);
        let words_max = tables
            .iter()
            .filter(|t| t.storage == Storage::Words)
            .flat_map(|t| t.entries.iter().copied())
            .max();
        // Tables in words whose entries all fit a byte are 8-bit tables written one entry
        // per word: scaled by 65535 they would be black. Any larger entry means the high
        // byte carries the intensity, and the 16-bit range is the scale.
        let layouts: Vec<&str> = tables.iter().map(|t| t.layout.as_str()).collect();
        let layouts = layouts.join("; ");
        let (max, scale) = match words_max {
            Some(top) if packed && top > 255 => {
                return Err(PaletteError::Malformed(format!(
                    "Palette Color Lookup Table Data (0028,1201-1203) mix 8-bit entries packed \
                     two per word with 16-bit entries (up to {top}): {layouts}"
                )));
            }
            Some(top) if top > 255 => (65535.0, "16-bit entries"),
            _ => (255.0, "8-bit entries"),
        };
        let note = format!("PALETTE COLOR applied ({scale}; {layouts})");
        Ok(Palette { tables, max, note })
    }

    /// Stored indices to interleaved RGB entry values.
    pub fn apply(&self, stored: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(stored.len() * 3);
        for &v in stored {
            for t in &self.tables {
                out.push(f32::from(t.lookup(v)));
            }
        }
        out
    }
}

/// One channel's descriptor and data, checked against each other.
fn read_table(
    found: &Found,
    buf: &[u8],
    words: &Words,
    signed: bool,
    channel: &Channel,
) -> Result<Table, PaletteError> {
    let Channel {
        colour,
        descriptor: desc_tag,
        data: data_tag,
        segmented: segmented_tag,
    } = *channel;
    let desc_name = format!(
        "{colour} Palette Color Lookup Table Descriptor {}",
        tag_str(desc_tag)
    );
    let data_name = format!(
        "{colour} Palette Color Lookup Table Data {}",
        tag_str(data_tag)
    );
    let Some(data) = found.raw(buf, data_tag).filter(|d| !d.is_empty()) else {
        if found.raw(buf, segmented_tag).is_some() {
            return Err(PaletteError::Unsupported(format!(
                "segmented palette colour lookup tables (Segmented {colour} Palette Color \
                 Lookup Table Data {} present, {data_name} absent)",
                tag_str(segmented_tag)
            )));
        }
        return Err(PaletteError::Malformed(format!(
            "PALETTE COLOR image without {data_name}"
        )));
    };
    let desc = match found.raw(buf, desc_tag) {
        None | Some([]) => {
            return Err(PaletteError::Malformed(format!(
                "PALETTE COLOR image without {desc_name}"
            )))
        }
        Some(d) if d.len() != 6 => {
            return Err(PaletteError::Malformed(format!(
                "{desc_name} holds {} bytes, must be 3 values of 2 bytes",
                d.len()
            )))
        }
        Some(d) => d,
    };
    let declared = words.at(&desc[0..2]);
    // 2^16 entries do not fit the 16-bit count, which then reads 0.
    let entries = if declared == 0 {
        65536
    } else {
        usize::from(declared)
    };
    let first = if signed {
        i64::from(words.at(&desc[2..4]) as i16)
    } else {
        i64::from(words.at(&desc[2..4]))
    };
    let bits = words.at(&desc[4..6]);
    if !matches!(bits, 8 | 16) {
        return Err(PaletteError::Malformed(format!(
            "{desc_name} says {bits} bits per entry, must be 8 or 16"
        )));
    }
    // The data's length, not the descriptor's bit count, says how entries are stored:
    // files that declare 8 bits and store one entry per word are common, and so are 8-bit
    // tables packed two to a word (an odd count padded to a whole word).
    let packed_len = entries + entries % 2;
    let storage = if data.len() == 2 * entries {
        Storage::Words
    } else if data.len() == entries || data.len() == packed_len {
        Storage::Packed
    } else {
        return Err(PaletteError::Malformed(format!(
            "{data_name} holds {} bytes, but {desc_name} declares {entries} entries \
             ({bits} bits each), which need {} bytes (one entry per word) or {packed_len} \
             (8-bit entries packed two per word)",
            data.len(),
            2 * entries
        )));
    };
    let values: Vec<u16> = match storage {
        Storage::Words => data.chunks_exact(2).map(|w| words.at(w)).collect(),
        Storage::Packed => data
            .chunks(2)
            .flat_map(|pair| {
                // The first entry is the word's low byte, wherever the byte order put it.
                let w = if pair.len() == 2 {
                    words.at(pair)
                } else {
                    u16::from(pair[0])
                };
                [w & 0xFF, w >> 8]
            })
            .take(entries)
            .collect(),
    };
    let layout = format!(
        "{colour} {entries} entries from {first}, {}",
        match storage {
            Storage::Words => "one per word",
            Storage::Packed => "packed",
        }
    );
    Ok(Table {
        first,
        entries: values,
        storage,
        layout,
    })
}
