//! RLE Lossless (PS3.5 Annex G) checked before dicom-rs decodes it.
//!
//! dicom-rs 0.10 trusts the RLE header: it slices the fragment by the segment count and
//! offsets it reads, and copies Rows × Columns bytes out of each decoded segment whatever
//! its length, so a short fragment, a wrong count or a segment that decodes short makes it
//! index out of bounds. Everything it would index is checked here first.

use super::Shape;

/// The RLE header: a segment count and 15 segment offsets, 4 bytes each.
const HEADER: usize = 64;
const MAX_SEGMENTS: u32 = 15;

/// Checks the fragment of `frame` (the whole RLE-compressed frame): the header and, by
/// running the PackBits scheme without keeping its output, the length of every segment.
/// Returns what is wrong, naming the value and the limit it breaks.
pub(crate) fn check_frame(fragment: &[u8], frame: u32, shape: Shape) -> Result<(), String> {
    let at = |i: usize| {
        u32::from_le_bytes([
            fragment[4 * i],
            fragment[4 * i + 1],
            fragment[4 * i + 2],
            fragment[4 * i + 3],
        ])
    };
    let frame_name = format!("RLE frame {frame}");
    if fragment.len() < HEADER {
        return Err(format!(
            "{frame_name}: fragment of {} bytes is shorter than the {HEADER}-byte RLE header",
            fragment.len()
        ));
    }
    let count = at(0);
    let expected = u32::from(shape.samples) * u32::from(shape.bytes_per_sample);
    if !(1..=MAX_SEGMENTS).contains(&count) {
        return Err(format!(
            "{frame_name}: RLE header declares {count} segment(s), must be 1..={MAX_SEGMENTS}"
        ));
    }
    if count != expected {
        return Err(format!(
            "{frame_name}: RLE header declares {count} segment(s), Samples per Pixel {} x {} \
             byte(s) per sample needs {expected}",
            shape.samples, shape.bytes_per_sample
        ));
    }
    let plane_len = u64::from(shape.rows) * u64::from(shape.cols);
    // Encoders may pad a segment's output; far more than a plane is not padding, and
    // the decoder would hold all of it in memory before keeping one plane.
    let max_len = 2 * plane_len;
    let count = count as usize;
    let offsets: Vec<usize> = (1..=count).map(|i| at(i) as usize).collect();
    for (i, &start) in offsets.iter().enumerate() {
        if start < HEADER {
            return Err(format!(
                "{frame_name}: segment {i} offset {start} is inside the {HEADER}-byte RLE header"
            ));
        }
        if start >= fragment.len() {
            return Err(format!(
                "{frame_name}: segment {i} offset {start} is not inside the {}-byte fragment",
                fragment.len()
            ));
        }
        if i > 0 && start <= offsets[i - 1] {
            return Err(format!(
                "{frame_name}: segment {i} offset {start} does not follow segment {} offset {}",
                i - 1,
                offsets[i - 1]
            ));
        }
    }
    for (i, &start) in offsets.iter().enumerate() {
        let end = offsets.get(i + 1).copied().unwrap_or(fragment.len());
        let decoded = decoded_len(&fragment[start..end], max_len)
            .map_err(|why| format!("{frame_name}: segment {i} (bytes {start}..{end}) {why}"))?;
        if decoded < plane_len {
            return Err(format!(
                "{frame_name}: segment {i} (bytes {start}..{end}) decodes to {decoded} bytes, \
                 Rows {} x Columns {} needs {plane_len}",
                shape.rows, shape.cols
            ));
        }
    }
    Ok(())
}

/// Length of a PackBits segment's output, read as dicom-rs reads it (a literal run cut
/// short by the segment's end yields what is there; a replicate run without its byte is
/// an error), stopping past `max`.
fn decoded_len(segment: &[u8], max: u64) -> Result<u64, String> {
    let mut len = 0u64;
    let mut pos = 0;
    while pos < segment.len() {
        let header = segment[pos] as i8;
        pos += 1;
        match header {
            0..=127 => {
                let run = usize::from(header as u8) + 1;
                let available = run.min(segment.len() - pos);
                len += available as u64;
                pos += run;
            }
            -127..=-1 => {
                if pos >= segment.len() {
                    return Err("ends inside a replicate run".into());
                }
                len += (1 - i64::from(header)) as u64;
                pos += 1;
            }
            // -128 is a no-op.
            _ => {}
        }
        if len > max {
            return Err(format!(
                "decodes to more than {max} bytes (twice Rows x Columns)"
            ));
        }
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packbits_lengths_follow_the_decoder() {
        // Literal of 3, replicate of 4, no-op, literal of 2 cut to 1 by the end.
        let seg = [2, 1, 2, 3, (-3i8) as u8, 9, 0x80, 1, 7];
        assert_eq!(decoded_len(&seg, 100), Ok(3 + 4 + 1));
        assert!(decoded_len(&[(-3i8) as u8], 100).is_err());
        assert_eq!(decoded_len(&[(-127i8) as u8, 0], 128), Ok(128));
        let err = decoded_len(&[(-127i8) as u8, 0, (-127i8) as u8, 0], 200).unwrap_err();
        assert!(err.contains("more than 200"), "{err}");
    }
}
