//! Consistent Overhead Byte Stuffing: removes every `0x00` from a frame so that `0x00` can
//! mark frame boundaries and a receiver can resynchronise after any corruption.
//!
//! Written here rather than taken from the `cobs` crate so that the exact variant (when a
//! trailing `0x01` group appears) is pinned by this crate's tests and by PROTOCOL.md, and
//! decoding works in place inside the stream decoder's single buffer.

/// Why a COBS block could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CobsError {
    /// A code byte or data byte was `0x00` (only the delimiter may be zero).
    ZeroByte,
    /// A code byte announced more bytes than the frame holds.
    Truncated,
}

/// Upper bound on the COBS encoding of `len` bytes: one code byte per started run of 254
/// bytes, plus one.
pub const fn max_encoded_len(len: usize) -> usize {
    len + len / 254 + 1
}

/// Exact length of the COBS encoding of `src` (without the delimiter).
pub fn cobs_encoded_len(src: &[u8]) -> usize {
    let mut len = 1;
    let mut run = 0usize;
    for &b in src {
        if b == 0 {
            len += 1;
            run = 0;
        } else {
            len += 1;
            run += 1;
            if run == 254 {
                len += 1;
                run = 0;
            }
        }
    }
    len
}

/// Encodes `src` into `dst` and returns the encoded length (no delimiter written).
///
/// Returns `None` when `dst` is shorter than [`cobs_encoded_len`] of `src`.
pub fn cobs_encode(src: &[u8], dst: &mut [u8]) -> Option<usize> {
    let needed = cobs_encoded_len(src);
    let dst = dst.get_mut(..needed)?;
    let mut code_at = 0;
    let mut out = 1;
    let mut code: u8 = 1;
    for &b in src {
        if b == 0 {
            dst[code_at] = code;
            code_at = out;
            out += 1;
            code = 1;
        } else {
            dst[out] = b;
            out += 1;
            code += 1;
            // A full group of 254 data bytes has no implied zero after it; start a new group
            // even at the end of the input (the trailing 0x01 group decodes to nothing).
            if code == 0xFF {
                dst[code_at] = code;
                code_at = out;
                out += 1;
                code = 1;
            }
        }
    }
    dst[code_at] = code;
    debug_assert_eq!(out, needed);
    Some(out)
}

/// Decodes the COBS block `buf` (without its delimiter) in place and returns the decoded
/// length; the decoded bytes are `buf[..len]`.
///
/// In place is safe because every group shrinks by one byte: the write position never
/// overtakes the read position.
pub fn cobs_decode_in_place(buf: &mut [u8]) -> Result<usize, CobsError> {
    let len = buf.len();
    let mut read = 0;
    let mut write = 0;
    while read < len {
        let code = buf[read];
        if code == 0 {
            return Err(CobsError::ZeroByte);
        }
        read += 1;
        let n = usize::from(code) - 1;
        let end = read + n;
        if end > len {
            return Err(CobsError::Truncated);
        }
        if buf[read..end].contains(&0) {
            return Err(CobsError::ZeroByte);
        }
        buf.copy_within(read..end, write);
        write += n;
        read = end;
        if code != 0xFF && read < len {
            buf[write] = 0;
            write += 1;
        }
    }
    Ok(write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn enc(src: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; max_encoded_len(src.len())];
        let n = cobs_encode(src, &mut out).unwrap();
        out.truncate(n);
        out
    }

    fn dec(src: &[u8]) -> Result<Vec<u8>, CobsError> {
        let mut buf = src.to_vec();
        let n = cobs_decode_in_place(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    #[test]
    fn known_vectors() {
        // Examples from the COBS paper / Wikipedia, as written in PROTOCOL.md.
        let cases: &[(&[u8], &[u8])] = &[
            (&[], &[0x01]),
            (&[0x00], &[0x01, 0x01]),
            (&[0x00, 0x00], &[0x01, 0x01, 0x01]),
            (&[0x11, 0x22, 0x00, 0x33], &[0x03, 0x11, 0x22, 0x02, 0x33]),
            (&[0x11, 0x22, 0x33, 0x44], &[0x05, 0x11, 0x22, 0x33, 0x44]),
            (&[0x11, 0x00, 0x00, 0x00], &[0x02, 0x11, 0x01, 0x01, 0x01]),
        ];
        for (raw, coded) in cases {
            assert_eq!(enc(raw), *coded, "encode {raw:02x?}");
            assert_eq!(dec(coded).unwrap(), *raw, "decode {coded:02x?}");
        }
    }

    #[test]
    fn long_runs() {
        for len in [253usize, 254, 255, 508, 509, 1000] {
            let raw: Vec<u8> = (0..len).map(|i| (i % 255 + 1) as u8).collect();
            let coded = enc(&raw);
            assert_eq!(coded.len(), cobs_encoded_len(&raw));
            assert!(coded.len() <= max_encoded_len(len));
            assert!(!coded.contains(&0));
            assert_eq!(dec(&coded).unwrap(), raw, "len {len}");
        }
        // 254 non-zero bytes: 0xFF group then the empty trailing group.
        let raw = [0xAAu8; 254];
        let coded = enc(&raw);
        assert_eq!(coded.len(), 256);
        assert_eq!(coded[0], 0xFF);
        assert_eq!(coded[255], 0x01);
    }

    #[test]
    fn rejects_bad_blocks() {
        assert_eq!(dec(&[0x05, 0x11]), Err(CobsError::Truncated));
        assert_eq!(dec(&[0x00]), Err(CobsError::ZeroByte));
        assert_eq!(dec(&[0x03, 0x11, 0x00]), Err(CobsError::ZeroByte));
    }

    #[test]
    fn encode_needs_room() {
        let mut small = [0u8; 2];
        assert_eq!(cobs_encode(&[1, 2, 3], &mut small), None);
    }
}
