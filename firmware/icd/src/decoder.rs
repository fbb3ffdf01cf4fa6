//! Streaming frame decoder: bytes in, in whatever pieces the link delivers them, frames
//! and counted errors out, with a fixed buffer of [`MAX_FRAME`] bytes.
//!
//! Every error ends at a `0x00` delimiter, so one bad frame (line noise, a truncated write,
//! a peer speaking a newer protocol) costs that frame only, never the stream.

use crate::frame::{decode_in_place, DecodeError, Frame};
use crate::MAX_FRAME;

/// Counters kept by a [`FrameDecoder`]; the device reports their sum in `Status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecoderStats {
    /// Bytes fed in.
    pub bytes: u64,
    /// Frames decoded successfully.
    pub frames: u64,
    /// Empty frames (two delimiters in a row): not errors, senders use them to flush.
    pub empty: u64,
    /// Frames longer than [`MAX_FRAME`], discarded.
    pub too_long: u64,
    /// Frames that were not valid COBS.
    pub cobs_errors: u64,
    /// Frames shorter than a header and CRC.
    pub too_short: u64,
    /// Frames whose CRC did not match.
    pub bad_crc: u64,
    /// Frames with another protocol version.
    pub unsupported_version: u64,
    /// Frames with a kind this version does not know.
    pub unknown_kind: u64,
    /// Frames whose body did not decode.
    pub deser_errors: u64,
}

impl DecoderStats {
    /// Frames rejected for any reason.
    pub fn errors(&self) -> u64 {
        self.too_long
            + self.cobs_errors
            + self.too_short
            + self.bad_crc
            + self.unsupported_version
            + self.unknown_kind
            + self.deser_errors
    }

    fn count(&mut self, result: &Result<Frame, DecodeError>) {
        let counter = match result {
            Ok(_) => &mut self.frames,
            Err(DecodeError::FrameTooLong { .. }) => &mut self.too_long,
            Err(DecodeError::Cobs) => &mut self.cobs_errors,
            Err(DecodeError::TooShort { .. }) => &mut self.too_short,
            Err(DecodeError::BadCrc { .. }) => &mut self.bad_crc,
            Err(DecodeError::UnsupportedVersion { .. }) => &mut self.unsupported_version,
            Err(DecodeError::UnknownKind { .. }) => &mut self.unknown_kind,
            Err(DecodeError::Deser { .. }) => &mut self.deser_errors,
        };
        *counter = counter.saturating_add(1);
    }
}

/// Turns a byte stream into frames.
///
/// Holds at most `MAX_FRAME - 1` bytes of one frame; when a frame grows past that, the
/// decoder stops storing and only counts bytes until the next `0x00`, then reports
/// [`DecodeError::FrameTooLong`] with the full length.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    buf: [u8; MAX_FRAME - 1],
    len: usize,
    /// `Some(n)`: the current frame overflowed and `n` bytes of it have been seen.
    discarding: Option<usize>,
    stats: DecoderStats,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// An empty decoder, at a frame boundary.
    pub fn new() -> Self {
        FrameDecoder {
            buf: [0; MAX_FRAME - 1],
            len: 0,
            discarding: None,
            stats: DecoderStats::default(),
        }
    }

    /// Counters since creation.
    pub fn stats(&self) -> &DecoderStats {
        &self.stats
    }

    /// Drops a partial frame, e.g. when the link is reopened; counters are kept.
    pub fn reset(&mut self) {
        self.len = 0;
        self.discarding = None;
    }

    /// Bytes of an unfinished frame held (or skipped) so far.
    pub fn pending(&self) -> usize {
        self.discarding.unwrap_or(self.len)
    }

    /// Feeds one byte; returns a frame or an error when the byte completes a frame.
    pub fn push(&mut self, byte: u8) -> Option<Result<Frame, DecodeError>> {
        self.stats.bytes = self.stats.bytes.saturating_add(1);
        if byte != 0 {
            match self.discarding.as_mut() {
                Some(seen) => *seen = seen.saturating_add(1),
                None if self.len < self.buf.len() => {
                    self.buf[self.len] = byte;
                    self.len += 1;
                }
                None => self.discarding = Some(self.len + 1),
            }
            return None;
        }

        let result = if let Some(seen) = self.discarding.take() {
            Err(DecodeError::FrameTooLong {
                len: seen.saturating_add(1),
                max: MAX_FRAME,
            })
        } else if self.len == 0 {
            self.stats.empty = self.stats.empty.saturating_add(1);
            return None;
        } else {
            decode_in_place(&mut self.buf[..self.len])
        };
        self.len = 0;
        self.stats.count(&result);
        Some(result)
    }

    /// Feeds a chunk of bytes; the returned iterator yields one item per completed frame.
    ///
    /// Bytes are consumed only as the iterator advances: drain it (a `for` loop), or the
    /// rest of `bytes` is never seen.
    pub fn feed<'d, 'b>(&'d mut self, bytes: &'b [u8]) -> Feed<'d, 'b> {
        Feed {
            decoder: self,
            bytes,
        }
    }
}

/// Iterator returned by [`FrameDecoder::feed`].
#[must_use = "bytes are only decoded as the iterator is advanced"]
#[derive(Debug)]
pub struct Feed<'d, 'b> {
    decoder: &'d mut FrameDecoder,
    bytes: &'b [u8],
}

impl Iterator for Feed<'_, '_> {
    type Item = Result<Frame, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        while let Some((&byte, rest)) = self.bytes.split_first() {
            self.bytes = rest;
            if let Some(item) = self.decoder.push(byte) {
                return Some(item);
            }
        }
        None
    }
}
