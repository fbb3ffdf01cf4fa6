//! edgedx wire protocol: the message types, buffer sizes and framing shared by the device
//! firmware and every host client (the exam-room UI, `edgedx-ctl`).
//!
//! A frame on the wire is `COBS(version · kind · seq · body · crc32) 0x00`; `PROTOCOL.md`
//! next to this crate is the normative description, written for integrators who do not
//! read Rust. This crate holds data and codecs only: no I/O, no allocation, no clocks, so
//! that the device and the host decode bytes with exactly the same code.
//!
//! The crate is `no_std` so the same types can run on a microcontroller bridge later;
//! `use-std` only adds `std::error::Error` impls.
#![cfg_attr(not(any(test, feature = "use-std")), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cobs;
mod crc;
mod decoder;
mod frame;
mod message;

#[cfg(test)]
mod tests;

pub use crate::cobs::{cobs_decode_in_place, cobs_encode, cobs_encoded_len, CobsError};
pub use crate::crc::crc32;
pub use crate::decoder::{DecoderStats, Feed, FrameDecoder};
pub use crate::frame::{
    decode_frame, decode_payload, encode_frame, encode_raw_frame, DecodeError, EncodeError, Frame,
};
pub use crate::message::*;

/// Version of this protocol, sent as the first byte of every frame and inside `Hello`.
///
/// Bump it for any change to an existing message kind, enum or limit below; adding a new
/// message kind does not need a bump (old peers skip unknown kinds).
pub const PROTOCOL_VERSION: u8 = 1;

/// Longest class label (UTF-8 bytes), e.g. `"meningioma"`.
pub const MAX_LABEL_LEN: usize = 64;
/// Most classes a model may have; every `Result` carries one probability per class.
pub const MAX_CLASSES: usize = 64;
/// Longest file, spool or upload name (UTF-8 bytes).
pub const MAX_NAME_LEN: usize = 128;
/// Longest version string (firmware or bundle), e.g. `"0.1.0+g1a2b3c4"`.
pub const MAX_VERSION_LEN: usize = 32;
/// Longest device identifier (serial number or host name).
pub const MAX_DEVICE_ID_LEN: usize = 64;
/// Longest model bundle name.
pub const MAX_BUNDLE_NAME_LEN: usize = 64;
/// Longest description of the compute kernels in use (tract-linalg kernel names).
pub const MAX_KERNELS_LEN: usize = 128;
/// Longest human-readable text in an `Error` message.
pub const MAX_ERROR_TEXT: usize = 96;
/// Most image bytes in one `UploadChunk`. 1 KiB keeps a frame under 0.1 s at 115200 baud,
/// so a corrupted chunk costs little to resend and a `Ping` is never stuck behind a long
/// frame.
pub const MAX_CHUNK: usize = 1024;

/// Fixed header in front of every body: version (1), kind (1), sequence number (4, LE).
pub const HEADER_LEN: usize = 6;
/// CRC-32 trailer after the body (4 bytes, little endian).
pub const CRC_LEN: usize = 4;
/// Largest postcard body of any message kind. `UploadChunk` is the largest
/// (`MAX_CHUNK` + 12 bytes); a test encodes the worst case of every kind against this.
pub const MAX_BODY: usize = MAX_CHUNK + 64;
/// Largest frame before COBS encoding: header + body + CRC.
pub const MAX_PAYLOAD: usize = HEADER_LEN + MAX_BODY + CRC_LEN;
/// Largest frame on the wire: COBS-encoded payload plus the `0x00` delimiter. A receiver
/// needs no more buffer than this; anything longer is reported as
/// [`DecodeError::FrameTooLong`] and skipped.
pub const MAX_FRAME: usize = cobs::max_encoded_len(MAX_PAYLOAD) + 1;
/// Smallest valid frame before COBS encoding (an empty body).
pub const MIN_PAYLOAD: usize = HEADER_LEN + CRC_LEN;
