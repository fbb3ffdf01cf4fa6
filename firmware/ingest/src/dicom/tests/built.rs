//! Tests on DICOM files built here with dicom-object: PALETTE COLOR, RLE headers,
//! encapsulated pixel data beside an encapsulated icon, empty numeric strings.

use dicom_core::value::{DataSetSequence, PixelFragmentSequence, Value};
use dicom_core::{DataElement, Length, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemElement;

use super::*;

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";
const RLE: &str = "1.2.840.10008.1.2.5";

fn us(tag: Tag, v: u16) -> InMemElement {
    DataElement::new(tag, VR::US, PrimitiveValue::from(v))
}

fn text(tag: Tag, vr: VR, v: &str) -> InMemElement {
    if v.is_empty() {
        DataElement::new(tag, vr, PrimitiveValue::Empty)
    } else {
        DataElement::new(tag, vr, PrimitiveValue::from(v))
    }
}

/// A single-frame image's SOP class, modality and Image Pixel attributes.
fn image(rows: u16, cols: u16, samples: u16, bits: u16, photometric: &str) -> Vec<InMemElement> {
    let mut e = vec![
        text(tags::SOP_CLASS_UID, VR::UI, SECONDARY_CAPTURE),
        text(tags::MODALITY, VR::CS, "US"),
    ];
    e.extend(pixel_module(rows, cols, samples, bits, photometric));
    e
}

/// Image Pixel attributes, without the pixel data.
fn pixel_module(
    rows: u16,
    cols: u16,
    samples: u16,
    bits: u16,
    photometric: &str,
) -> Vec<InMemElement> {
    let mut e = vec![
        us(tags::SAMPLES_PER_PIXEL, samples),
        text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, photometric),
        us(tags::ROWS, rows),
        us(tags::COLUMNS, cols),
        us(tags::BITS_ALLOCATED, bits),
        us(tags::BITS_STORED, bits),
        us(tags::HIGH_BIT, bits - 1),
        us(tags::PIXEL_REPRESENTATION, 0),
    ];
    if samples == 3 {
        e.push(us(tags::PLANAR_CONFIGURATION, 0));
    }
    e
}

fn native_pixels(bits: u16, samples: &[u16]) -> InMemElement {
    if bits == 8 {
        let bytes: Vec<u8> = samples.iter().map(|&v| v as u8).collect();
        DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(bytes))
    } else {
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(samples.into()),
        )
    }
}

fn encapsulated(tag: Tag, fragments: Vec<Vec<u8>>) -> InMemElement {
    let sequence = PixelFragmentSequence::new(Vec::<u32>::new(), fragments);
    DataElement::new(tag, VR::OB, Value::from(sequence))
}

/// A whole file (preamble, file meta, data set) in transfer syntax `ts`.
fn file(ts: &str, elements: Vec<InMemElement>) -> Vec<u8> {
    let obj = InMemDicomObject::from_element_iter(elements)
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(ts)
                .media_storage_sop_class_uid(SECONDARY_CAPTURE)
                .media_storage_sop_instance_uid("2.25.1"),
        )
        .unwrap();
    let mut out = Vec::new();
    obj.write_all(&mut out).unwrap();
    out
}

fn decode(bytes: &[u8]) -> Result<RawFrame, IngestError> {
    decode_raw_bytes(bytes, "built.dcm", &Limits::default())
}

/// Asserts a refusal of `kind` whose message names every one of `words`.
fn refused(bytes: &[u8], kind: ErrorKind, words: &[&str]) -> String {
    let err = decode(bytes).expect_err("the file should be refused");
    let msg = err.to_string();
    assert_eq!(err.kind(), kind, "{msg}");
    for w in words {
        assert!(msg.contains(w), "{w:?} missing from: {msg}");
    }
    msg
}

// ---- PALETTE COLOR ----

/// Palette descriptors and data: `tables` are the R, G, B entries, written one per word
/// (`packed` false) or two per word, first entry in the low byte.
fn palette(first: u16, bits: u16, tables: [&[u16]; 3], packed: bool) -> Vec<InMemElement> {
    let descriptors = [
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
    ];
    let data = [
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    ];
    let mut out = Vec::new();
    for c in 0..3 {
        let entries = tables[c].len() as u32;
        let count = if entries == 65536 { 0 } else { entries as u16 };
        out.push(DataElement::new(
            descriptors[c],
            VR::US,
            PrimitiveValue::U16([count, first, bits].as_slice().into()),
        ));
        let words: Vec<u16> = if packed {
            tables[c]
                .chunks(2)
                .map(|p| p[0] | p.get(1).copied().unwrap_or(0) << 8)
                .collect()
        } else {
            tables[c].to_vec()
        };
        out.push(DataElement::new(
            data[c],
            VR::OW,
            PrimitiveValue::U16(words.into()),
        ));
    }
    out
}

/// A 4 x 2 PALETTE COLOR image with `indices`, and its palette.
fn palette_file(ts: &str, bits: u16, indices: &[u16], lut: Vec<InMemElement>) -> Vec<u8> {
    let mut e = image(2, 4, 1, bits, "PALETTE COLOR");
    e.extend(lut);
    e.push(native_pixels(bits, indices));
    file(ts, e)
}

fn ramp(n: usize, f: impl Fn(usize) -> u16) -> Vec<u16> {
    (0..n).map(f).collect()
}

#[test]
fn palette_with_8_bit_packed_entries_becomes_rgb() {
    let (r, g, b) = (
        ramp(256, |i| i as u16),
        ramp(256, |i| 255 - i as u16),
        ramp(256, |i| (i as u16 * 7) % 256),
    );
    let indices = [0, 1, 2, 3, 100, 200, 254, 255];
    for ts in [EXPLICIT_LE, EXPLICIT_BE] {
        let bytes = palette_file(ts, 8, &indices, palette(0, 8, [&r, &g, &b], true));
        let raw = decode(&bytes).unwrap();
        assert!(raw.rgb, "{ts}");
        assert_eq!((raw.samples, raw.rgb_max), (1, 255.0), "{ts}");
        let want: Vec<f32> = indices
            .iter()
            .flat_map(|&i| [r[i as usize], g[i as usize], b[i as usize]])
            .map(f32::from)
            .collect();
        assert_eq!(raw.values, want, "{ts}");
        assert!(
            raw.notes.iter().any(|n| n.contains("packed")),
            "{:?}",
            raw.notes
        );

        let img = load_bytes(&bytes, "p.dcm", &Limits::default()).unwrap();
        assert_eq!((img.channels, img.width, img.height), (3, 4, 2));
        // Index 255: R = 255, G = 0, B = 255 * 7 % 256 = 249.
        assert_eq!(&img.data[21..24], &[1.0, 0.0, 249.0 / 255.0]);
    }
}

#[test]
fn palette_with_16_bit_entries_keeps_the_high_byte_and_clamps_indices() {
    // 16-bit indices mapped from 1000: below it the first entry, past the table the last.
    let n = 300;
    let r = ramp(n, |i| (i as u16) << 8);
    let g = ramp(n, |i| 0xFFFF - i as u16);
    let b = ramp(n, |i| 0x1234 + i as u16);
    let indices = [0, 999, 1000, 1001, 1150, 1299, 1300, 65535];
    let bytes = palette_file(
        EXPLICIT_LE,
        16,
        &indices,
        palette(1000, 16, [&r, &g, &b], false),
    );
    let raw = decode(&bytes).unwrap();
    assert_eq!(raw.rgb_max, 65535.0);
    let at = |i: usize| [r[i], g[i], b[i]].map(f32::from);
    let want: Vec<f32> = [0, 0, 0, 1, 150, 299, 299, 299]
        .into_iter()
        .flat_map(at)
        .collect();
    assert_eq!(raw.values, want);
    let img = to_image(raw, "p16", &DicomInput::default()).unwrap();
    assert_eq!(img.data[3 * 4], (150u16 << 8) as f32 / 65535.0);

    // 65536 entries (written as a count of 0), one per possible index.
    let full = ramp(65536, |i| i as u16);
    let bytes = palette_file(
        EXPLICIT_LE,
        16,
        &[0, 1, 40000, 65535, 7, 7, 7, 7],
        palette(0, 16, [&full, &full, &full], false),
    );
    let raw = decode(&bytes).unwrap();
    assert_eq!(
        &raw.values[6..12],
        &[40000.0, 40000.0, 40000.0, 65535.0, 65535.0, 65535.0]
    );
}

#[test]
fn palette_of_8_bit_values_in_16_bit_words_is_scaled_by_255() {
    let lut = ramp(256, |i| i as u16);
    let bytes = palette_file(
        EXPLICIT_LE,
        8,
        &[0, 128, 255, 1, 2, 3, 4, 5],
        palette(0, 8, [&lut, &lut, &lut], false),
    );
    let raw = decode(&bytes).unwrap();
    assert_eq!(raw.rgb_max, 255.0);
    let img = to_image(raw, "p", &DicomInput::default()).unwrap();
    assert_eq!(
        &img.data[3..9],
        &[128.0 / 255.0, 128.0 / 255.0, 128.0 / 255.0, 1.0, 1.0, 1.0]
    );
}

#[test]
fn segmented_palettes_are_refused_by_name() {
    let mut e = image(2, 4, 1, 8, "PALETTE COLOR");
    let lut = ramp(256, |i| i as u16);
    for (c, el) in palette(0, 8, [&lut, &lut, &lut], true)
        .into_iter()
        .enumerate()
    {
        // Keep the descriptors, replace the tables by segmented ones.
        if c % 2 == 0 {
            e.push(el);
        }
    }
    for tag in [
        tags::SEGMENTED_RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::SEGMENTED_GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::SEGMENTED_BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    ] {
        // A discrete segment: opcode 0, 2 entries.
        e.push(DataElement::new(
            tag,
            VR::OW,
            PrimitiveValue::U16([0, 2, 0, 255].as_slice().into()),
        ));
    }
    e.push(native_pixels(8, &[0; 8]));
    refused(
        &file(EXPLICIT_LE, e),
        ErrorKind::Unsupported,
        &["segmented", "(0028,1221)", "(0028,1201)"],
    );
}

#[test]
fn bad_palette_descriptors_name_the_element() {
    let lut = ramp(256, |i| i as u16);
    let short = ramp(200, |i| i as u16);
    let indices = [0u16; 8];

    // 256 entries declared, 200 words of data.
    let mut lut_elems = palette(0, 16, [&lut, &short, &lut], false);
    lut_elems[2] = DataElement::new(
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        VR::US,
        PrimitiveValue::U16([256, 0, 16].as_slice().into()),
    );
    refused(
        &palette_file(EXPLICIT_LE, 8, &indices, lut_elems),
        ErrorKind::Malformed,
        &["(0028,1202)", "(0028,1102)", "400 bytes", "256 entries"],
    );

    // No blue table at all.
    let mut lut_elems = palette(0, 8, [&lut, &lut, &lut], false);
    lut_elems.truncate(5);
    refused(
        &palette_file(EXPLICIT_LE, 8, &indices, lut_elems),
        ErrorKind::Malformed,
        &["without Blue Palette Color Lookup Table Data (0028,1203)"],
    );

    // No red descriptor.
    let mut lut_elems = palette(0, 8, [&lut, &lut, &lut], false);
    lut_elems.remove(0);
    refused(
        &palette_file(EXPLICIT_LE, 8, &indices, lut_elems),
        ErrorKind::Malformed,
        &["without Red Palette Color Lookup Table Descriptor (0028,1101)"],
    );

    // 12 bits per entry, and a descriptor of 2 values.
    let mut lut_elems = palette(0, 12, [&lut, &lut, &lut], false);
    refused(
        &palette_file(EXPLICIT_LE, 8, &indices, lut_elems.clone()),
        ErrorKind::Malformed,
        &["(0028,1101)", "12 bits per entry"],
    );
    lut_elems[0] = DataElement::new(
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        VR::US,
        PrimitiveValue::U16([256, 0].as_slice().into()),
    );
    refused(
        &palette_file(EXPLICIT_LE, 8, &indices, lut_elems),
        ErrorKind::Malformed,
        &["(0028,1101) holds 4 bytes"],
    );

    // Red and blue packed 8-bit, green in 16-bit words of 16-bit values.
    let wide = ramp(256, |i| (i as u16) << 8);
    let mut lut_elems = palette(0, 8, [&lut, &lut, &lut], true);
    lut_elems[3] = palette(0, 16, [&wide, &wide, &wide], false).remove(3);
    refused(
        &palette_file(EXPLICIT_LE, 8, &indices, lut_elems),
        ErrorKind::Malformed,
        &["(0028,1201-1203)", "packed", "up to 65280"],
    );

    // Colour samples with a palette.
    let mut e = image(2, 4, 3, 8, "PALETTE COLOR");
    e.extend(palette(0, 8, [&lut, &lut, &lut], false));
    e.push(native_pixels(8, &[0; 24]));
    refused(
        &file(EXPLICIT_LE, e),
        ErrorKind::Malformed,
        &["PALETTE COLOR", "(0028,0002) 3"],
    );
}

// ---- RLE ----

/// PackBits with literal runs only: what the checks read is the header and the decoded
/// length, not how well the data compresses.
fn packbits(plane: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for run in plane.chunks(128) {
        out.push((run.len() - 1) as u8);
        out.extend_from_slice(run);
    }
    out
}

/// An RLE fragment from segments (already PackBits-encoded).
fn rle_fragment(segments: &[Vec<u8>]) -> Vec<u8> {
    let mut header = [0u32; 16];
    header[0] = segments.len() as u32;
    let mut offset = 64;
    for (i, s) in segments.iter().enumerate() {
        header[i + 1] = offset as u32;
        offset += s.len();
    }
    let mut out: Vec<u8> = header.iter().flat_map(|v| v.to_le_bytes()).collect();
    for s in segments {
        out.extend_from_slice(s);
    }
    out
}

/// Segments of a frame: per sample, most significant byte first (PS3.5 G.2).
fn rle_segments(bits: u16, samples: usize, values: &[u16]) -> Vec<Vec<u8>> {
    let mut segments = Vec::new();
    for s in 0..samples {
        let plane: Vec<u16> = values.iter().skip(s).step_by(samples).copied().collect();
        if bits == 16 {
            segments.push(packbits(
                &plane.iter().map(|v| (v >> 8) as u8).collect::<Vec<_>>(),
            ));
        }
        segments.push(packbits(
            &plane.iter().map(|&v| v as u8).collect::<Vec<_>>(),
        ));
    }
    segments
}

/// A 6 x 5 RLE image whose pixel data holds `fragments`, with an empty Slice Thickness and
/// an Icon Image Sequence whose own pixel data is encapsulated, both of undefined length,
/// as JPEG 2000 files from some vendors are.
fn rle_file(samples: u16, bits: u16, fragments: Vec<Vec<u8>>) -> Vec<u8> {
    let photometric = if samples == 3 { "RGB" } else { "MONOCHROME2" };
    let mut e = image(5, 6, samples, bits, photometric);
    e.push(text(tags::SLICE_THICKNESS, VR::DS, ""));
    let mut icon = pixel_module(2, 2, samples, bits, photometric);
    icon.push(encapsulated(tags::PIXEL_DATA, vec![vec![0xAB; 10]]));
    e.push(DataElement::new(
        tags::ICON_IMAGE_SEQUENCE,
        VR::SQ,
        Value::from(DataSetSequence::new(
            vec![InMemDicomObject::from_element_iter(icon)],
            Length::UNDEFINED,
        )),
    ));
    e.push(encapsulated(tags::PIXEL_DATA, fragments));
    file(RLE, e)
}

fn test_values(samples: usize, max: u16) -> Vec<u16> {
    ramp(30 * samples, |i| {
        ((i * 2311) % (usize::from(max) + 1)) as u16
    })
}

#[test]
fn rle_with_an_encapsulated_icon_and_empty_slice_thickness_decodes() {
    for (samples, bits) in [(1u16, 16u16), (3, 8), (1, 8)] {
        let max = if bits == 8 { 255 } else { 65535 };
        let values = test_values(samples.into(), max);
        let bytes = rle_file(
            samples,
            bits,
            vec![rle_fragment(&rle_segments(bits, samples.into(), &values))],
        );
        let raw = decode(&bytes).unwrap_or_else(|e| panic!("{samples}x{bits}: {e}"));
        let want: Vec<f32> = values.iter().map(|&v| f32::from(v)).collect();
        assert_eq!(raw.values, want, "{samples} samples, {bits} bits");
        assert_eq!(raw.transfer_syntax, "RLE Lossless");
    }
}

#[test]
fn rle_headers_are_checked_before_decoding() {
    let values = test_values(1, 65535);
    let good = rle_segments(16, 1, &values);
    let fragment = rle_fragment(&good);
    let with_header = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut frag = fragment.clone();
        f(&mut frag);
        rle_file(1, 16, vec![frag])
    };
    let set = |i: usize, v: u32| {
        move |frag: &mut Vec<u8>| frag[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes())
    };
    let second = u32::from_le_bytes(fragment[8..12].try_into().unwrap());
    let cases: Vec<(Vec<u8>, Vec<&str>)> = vec![
        (
            with_header(&set(0, 0)),
            vec!["declares 0 segment(s)", "1..=15"],
        ),
        (
            with_header(&set(0, 16)),
            vec!["declares 16 segment(s)", "1..=15"],
        ),
        (
            with_header(&set(0, 1)),
            vec![
                "declares 1 segment(s)",
                "Samples per Pixel 1 x 2 byte(s)",
                "needs 2",
            ],
        ),
        (
            with_header(&set(1, 8)),
            vec!["segment 0 offset 8", "64-byte RLE header"],
        ),
        (
            with_header(&set(2, 70_000)),
            vec!["segment 1 offset 70000", "not inside"],
        ),
        (
            with_header(&set(2, 64)),
            vec!["segment 1 offset 64 does not follow segment 0 offset 64"],
        ),
        (
            // The first segment made one byte short: what dicom-rs indexed past, panicking.
            with_header(&set(2, second - 1)),
            vec![
                "segment 0",
                "decodes to 29 bytes",
                "Rows 5 x Columns 6 needs 30",
            ],
        ),
        (
            with_header(&|f: &mut Vec<u8>| f.truncate(40)),
            vec!["fragment of 40 bytes", "64-byte RLE header"],
        ),
    ];
    for (bytes, words) in cases {
        let msg = refused(&bytes, ErrorKind::Malformed, &words);
        assert!(msg.contains("RLE frame 0"), "{msg}");
    }

    // One fragment per frame.
    let bytes = rle_file(1, 16, vec![fragment.clone(), fragment.clone()]);
    refused(
        &bytes,
        ErrorKind::Malformed,
        &[
            "one Pixel Data (7FE0,0010) fragment per frame",
            "has 2 fragment(s)",
        ],
    );
    // RLE of 32-bit samples is not decoded by this build.
    let mut e = image(5, 6, 1, 32, "MONOCHROME2");
    e.push(encapsulated(tags::PIXEL_DATA, vec![fragment]));
    refused(
        &file(RLE, e),
        ErrorKind::Unsupported,
        &["RLE Lossless with Bits Allocated (0028,0100) 32"],
    );
}

#[test]
fn rle_segment_past_twice_the_plane_is_refused() {
    // 5 x 6 = 30 bytes per plane; a replicate run of 128 is far past padding.
    let long = vec![vec![(-127i8) as u8, 7]];
    refused(
        &rle_file(1, 8, vec![rle_fragment(&long)]),
        ErrorKind::Malformed,
        &["segment 0", "more than 60 bytes"],
    );
    // A little padding is accepted and dropped.
    let mut padded = test_values(1, 255)
        .iter()
        .map(|&v| v as u8)
        .collect::<Vec<_>>();
    padded.push(0);
    let bytes = rle_file(1, 8, vec![rle_fragment(&[packbits(&padded)])]);
    assert_eq!(decode(&bytes).unwrap().values.len(), 30);
}

// ---- Empty numeric strings ----

#[test]
fn empty_numeric_strings_are_absent() {
    let mut e = image(2, 4, 1, 16, "MONOCHROME2");
    e.extend([
        text(tags::SLICE_THICKNESS, VR::DS, ""),
        text(tags::RESCALE_INTERCEPT, VR::DS, ""),
        text(tags::RESCALE_SLOPE, VR::DS, " "),
        text(tags::WINDOW_CENTER, VR::DS, "\\40"),
        text(tags::WINDOW_WIDTH, VR::DS, ""),
        text(tags::NUMBER_OF_FRAMES, VR::IS, ""),
    ]);
    e.push(native_pixels(16, &[0, 100, 200, 300, 400, 500, 600, 700]));
    let bytes = file(EXPLICIT_LE, e);
    let raw = decode(&bytes).unwrap();
    assert_eq!(
        (raw.rescale, raw.window, raw.frame),
        ((1.0, 0.0), None, (0, 1))
    );
    let img = load_bytes(&bytes, "empty.dcm", &Limits::default()).unwrap();
    assert!(img.info.note.unwrap().contains("robust"));

    // A value that is there and is not a number is still refused, by name.
    let mut e = image(2, 4, 1, 16, "MONOCHROME2");
    e.push(text(tags::RESCALE_SLOPE, VR::DS, "abc"));
    e.push(native_pixels(16, &[0; 8]));
    refused(
        &file(EXPLICIT_LE, e),
        ErrorKind::Malformed,
        &["(0028,1053)", "\"abc\""],
    );
}

// ---- The real JPEG 2000 files with an icon added ----

#[test]
fn jpeg2000_with_an_encapsulated_icon_and_empty_slice_thickness_decodes() {
    let Some(dir) = shared_dicom_dir() else {
        return;
    };
    for name in ["JPEG2000.dcm", "693_J2KI.dcm", "MR_small_jp2klossless.dcm"] {
        let path = dir.join(name);
        let original = decode_raw(&path, &Limits::default()).unwrap();
        let mut obj = dicom_object::open_file(&path).unwrap();
        obj.put(text(tags::SLICE_THICKNESS, VR::DS, ""));
        let mut icon = pixel_module(8, 8, 1, 8, "MONOCHROME2");
        // Any bytes do for the icon: nothing decodes it, but everything must walk it.
        icon.push(encapsulated(
            tags::PIXEL_DATA,
            vec![vec![0xFF, 0x4F, 0xFF, 0x51]],
        ));
        obj.put(DataElement::new(
            tags::ICON_IMAGE_SEQUENCE,
            VR::SQ,
            Value::from(DataSetSequence::new(
                vec![InMemDicomObject::from_element_iter(icon)],
                Length::UNDEFINED,
            )),
        ));
        let mut bytes = Vec::new();
        obj.write_all(&mut bytes).unwrap();
        let raw = decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(raw.values, original.values, "{name}");
    }
}
