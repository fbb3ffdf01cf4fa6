//! One frame: `COBS(version · kind · seq · body · crc32) 0x00`, and its encode and decode
//! errors as plain data that a device can count and turn into an `Error` reply.

use core::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cobs::{cobs_decode_in_place, cobs_encode, cobs_encoded_len};
use crate::crc::crc32;
use crate::message::{ErrorCode, Kind, Message};
use crate::{CRC_LEN, HEADER_LEN, MAX_BODY, MAX_FRAME, MAX_PAYLOAD, MIN_PAYLOAD, PROTOCOL_VERSION};

/// A decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Protocol version byte the sender put in the frame. Always [`PROTOCOL_VERSION`]
    /// except for `Hello`, which is decoded from any version so a mismatch can be shown.
    pub version: u8,
    /// The sender's sequence number.
    pub seq: u32,
    /// The message.
    pub message: Message,
}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The output buffer is too small; a buffer of [`MAX_FRAME`] bytes always suffices.
    BufferTooSmall {
        /// Bytes the encoded frame needs, delimiter included.
        needed: usize,
        /// Bytes the buffer has.
        available: usize,
    },
    /// The body is larger than [`MAX_BODY`]. Unreachable for [`Message`] values (their
    /// buffers are bounded and a test checks the worst case); possible for raw bodies.
    BodyTooLong {
        /// Body length in bytes.
        len: usize,
        /// [`MAX_BODY`].
        max: usize,
    },
    /// postcard refused the value.
    Ser,
}

/// Why bytes between two delimiters did not yield a frame. The stream decoder has already
/// skipped to the next delimiter when it returns one of these, so none is fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// More than [`MAX_FRAME`] bytes arrived without a delimiter; they were discarded.
    FrameTooLong {
        /// Bytes in the frame, its delimiter included.
        len: usize,
        /// [`MAX_FRAME`].
        max: usize,
    },
    /// The bytes are not valid COBS (a code byte points past the end of the frame).
    Cobs,
    /// The decoded frame is shorter than a header and a CRC.
    TooShort {
        /// Decoded length in bytes.
        len: usize,
        /// [`MIN_PAYLOAD`].
        min: usize,
    },
    /// The CRC-32 does not match: the frame was corrupted on the line.
    BadCrc {
        /// CRC carried by the frame.
        expected: u32,
        /// CRC computed over the received bytes.
        actual: u32,
    },
    /// The frame's protocol version is not [`PROTOCOL_VERSION`] (and it is not a `Hello`).
    UnsupportedVersion {
        /// The version byte received.
        got: u8,
    },
    /// A message kind this version does not know; skipped (forward compatibility).
    UnknownKind {
        /// The kind byte received.
        kind: u8,
        /// The frame's sequence number, for an `Error` reply.
        seq: u32,
    },
    /// The body does not decode as its kind (bad varint, string too long for its buffer,
    /// invalid enum tag, invalid UTF-8, or bytes left over).
    Deser {
        /// The kind byte received.
        kind: u8,
        /// The frame's sequence number, for an `Error` reply.
        seq: u32,
    },
}

impl DecodeError {
    /// The code to put in an `Error` reply to the sender of the rejected frame.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            DecodeError::FrameTooLong { .. } => ErrorCode::TooLarge,
            DecodeError::Cobs | DecodeError::TooShort { .. } | DecodeError::BadCrc { .. } => {
                ErrorCode::BadFrame
            }
            DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            DecodeError::UnknownKind { .. } => ErrorCode::UnknownKind,
            DecodeError::Deser { .. } => ErrorCode::BadMessage,
        }
    }

    /// Sequence number of the rejected frame when it can be trusted (the CRC was good).
    pub fn in_reply_to(&self) -> Option<u32> {
        match self {
            DecodeError::UnknownKind { seq, .. } | DecodeError::Deser { seq, .. } => Some(*seq),
            _ => None,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::FrameTooLong { len, max } => {
                write!(f, "frame of {len} bytes exceeds the maximum of {max}")
            }
            DecodeError::Cobs => f.write_str("frame is not valid COBS"),
            DecodeError::TooShort { len, min } => {
                write!(
                    f,
                    "frame of {len} bytes is shorter than the minimum of {min}"
                )
            }
            DecodeError::BadCrc { expected, actual } => write!(
                f,
                "frame CRC-32 mismatch: frame says {expected:#010x}, bytes give {actual:#010x}"
            ),
            DecodeError::UnsupportedVersion { got } => write!(
                f,
                "protocol version {got} not supported (this side speaks {PROTOCOL_VERSION})"
            ),
            DecodeError::UnknownKind { kind, seq } => {
                write!(f, "unknown message kind {kind:#04x} in frame {seq}")
            }
            DecodeError::Deser { kind, seq } => {
                write!(f, "body of kind {kind:#04x} in frame {seq} does not decode")
            }
        }
    }
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::BufferTooSmall { needed, available } => write!(
                f,
                "frame needs {needed} bytes, output buffer has {available}"
            ),
            EncodeError::BodyTooLong { len, max } => {
                write!(f, "body of {len} bytes exceeds the maximum of {max}")
            }
            EncodeError::Ser => f.write_str("message could not be serialised"),
        }
    }
}

#[cfg(feature = "use-std")]
impl std::error::Error for DecodeError {}
#[cfg(feature = "use-std")]
impl std::error::Error for EncodeError {}

fn ser<T: Serialize>(value: &T, buf: &mut [u8]) -> Result<usize, EncodeError> {
    match postcard::to_slice(value, buf) {
        Ok(used) => Ok(used.len()),
        Err(postcard::Error::SerializeBufferFull) => Err(EncodeError::BodyTooLong {
            len: postcard::experimental::serialized_size(value).unwrap_or(usize::MAX),
            max: MAX_BODY,
        }),
        Err(_) => Err(EncodeError::Ser),
    }
}

fn serialize_body(msg: &Message, buf: &mut [u8]) -> Result<usize, EncodeError> {
    match msg {
        Message::Hello(m) => ser(m, buf),
        Message::Ping(m) => ser(m, buf),
        Message::Pong(m) => ser(m, buf),
        Message::GetStatus => Ok(0),
        Message::Status(m) => ser(m, buf),
        Message::UploadBegin(m) => ser(m, buf),
        Message::UploadChunk(m) => ser(m, buf),
        Message::UploadEnd(m) => ser(m, buf),
        Message::Capture(m) => ser(m, buf),
        Message::Result(m) => ser(m, buf),
        Message::Ack(m) => ser(m, buf),
        Message::Error(m) => ser(m, buf),
        Message::Busy(m) => ser(m, buf),
    }
}

/// Encodes `msg` with sequence number `seq` into `out` and returns the frame bytes,
/// trailing `0x00` delimiter included, ready to write to the link.
pub fn encode_frame<'a>(
    msg: &Message,
    seq: u32,
    out: &'a mut [u8],
) -> Result<&'a [u8], EncodeError> {
    let mut body = [0u8; MAX_BODY];
    let len = serialize_body(msg, &mut body)?;
    encode_raw_frame(PROTOCOL_VERSION, msg.kind() as u8, seq, &body[..len], out)
}

/// Encodes a frame from raw parts. For tests and tools that must send what [`Message`]
/// cannot express (another version, an unknown kind, a hand-made body).
pub fn encode_raw_frame<'a>(
    version: u8,
    kind: u8,
    seq: u32,
    body: &[u8],
    out: &'a mut [u8],
) -> Result<&'a [u8], EncodeError> {
    if body.len() > MAX_BODY {
        return Err(EncodeError::BodyTooLong {
            len: body.len(),
            max: MAX_BODY,
        });
    }
    let mut payload = [0u8; MAX_PAYLOAD];
    payload[0] = version;
    payload[1] = kind;
    payload[2..HEADER_LEN].copy_from_slice(&seq.to_le_bytes());
    let body_end = HEADER_LEN + body.len();
    payload[HEADER_LEN..body_end].copy_from_slice(body);
    let crc = crc32(&payload[..body_end]);
    payload[body_end..body_end + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
    let payload = &payload[..body_end + CRC_LEN];

    let needed = cobs_encoded_len(payload) + 1;
    let available = out.len();
    let too_small = EncodeError::BufferTooSmall { needed, available };
    let n = cobs_encode(payload, out).ok_or(too_small)?;
    *out.get_mut(n).ok_or(too_small)? = 0;
    Ok(&out[..=n])
}

fn de<T: DeserializeOwned>(body: &[u8], kind: u8, seq: u32) -> Result<T, DecodeError> {
    match postcard::take_from_bytes::<T>(body) {
        // Left-over bytes are an error, not ignored: new fields never go into an existing
        // kind (PROTOCOL.md), so extra bytes mean a broken sender.
        Ok((value, [])) => Ok(value),
        _ => Err(DecodeError::Deser { kind, seq }),
    }
}

/// Decodes one frame after COBS decoding: header, body and CRC, no delimiter.
pub fn decode_payload(payload: &[u8]) -> Result<Frame, DecodeError> {
    if payload.len() < MIN_PAYLOAD {
        return Err(DecodeError::TooShort {
            len: payload.len(),
            min: MIN_PAYLOAD,
        });
    }
    let (covered, crc_bytes) = payload.split_at(payload.len() - CRC_LEN);
    let mut crc = [0u8; CRC_LEN];
    crc.copy_from_slice(crc_bytes);
    let expected = u32::from_le_bytes(crc);
    let actual = crc32(covered);
    if expected != actual {
        return Err(DecodeError::BadCrc { expected, actual });
    }

    let version = covered[0];
    let kind_byte = covered[1];
    let mut seq = [0u8; 4];
    seq.copy_from_slice(&covered[2..HEADER_LEN]);
    let seq = u32::from_le_bytes(seq);
    let body = &covered[HEADER_LEN..];

    // Hello's layout is frozen across versions, so it is read whatever the version byte
    // says: that is how a peer learns that the other side speaks something else.
    if version != PROTOCOL_VERSION && kind_byte != Kind::Hello as u8 {
        return Err(DecodeError::UnsupportedVersion { got: version });
    }
    let Some(kind) = Kind::from_u8(kind_byte) else {
        return Err(DecodeError::UnknownKind {
            kind: kind_byte,
            seq,
        });
    };
    let k = kind_byte;
    let message = match kind {
        Kind::Hello => Message::Hello(de(body, k, seq)?),
        Kind::Ping => Message::Ping(de(body, k, seq)?),
        Kind::Pong => Message::Pong(de(body, k, seq)?),
        Kind::GetStatus if body.is_empty() => Message::GetStatus,
        Kind::GetStatus => return Err(DecodeError::Deser { kind: k, seq }),
        Kind::Status => Message::Status(de(body, k, seq)?),
        Kind::UploadBegin => Message::UploadBegin(de(body, k, seq)?),
        Kind::UploadChunk => Message::UploadChunk(de(body, k, seq)?),
        Kind::UploadEnd => Message::UploadEnd(de(body, k, seq)?),
        Kind::Capture => Message::Capture(de(body, k, seq)?),
        Kind::Result => Message::Result(de(body, k, seq)?),
        Kind::Ack => Message::Ack(de(body, k, seq)?),
        Kind::Error => Message::Error(de(body, k, seq)?),
        Kind::Busy => Message::Busy(de(body, k, seq)?),
    };
    Ok(Frame {
        version,
        seq,
        message,
    })
}

/// COBS-decodes `encoded` (without delimiter) in place, then decodes the frame.
pub(crate) fn decode_in_place(encoded: &mut [u8]) -> Result<Frame, DecodeError> {
    let len = cobs_decode_in_place(encoded).map_err(|_| DecodeError::Cobs)?;
    decode_payload(&encoded[..len])
}

/// Decodes one complete encoded frame, with or without its trailing `0x00`. For a byte
/// stream use [`crate::FrameDecoder`].
pub fn decode_frame(encoded: &[u8]) -> Result<Frame, DecodeError> {
    let encoded = encoded.strip_suffix(&[0]).unwrap_or(encoded);
    if encoded.len() + 1 > MAX_FRAME {
        return Err(DecodeError::FrameTooLong {
            len: encoded.len() + 1,
            max: MAX_FRAME,
        });
    }
    let mut buf = [0u8; MAX_FRAME];
    let buf = &mut buf[..encoded.len()];
    buf.copy_from_slice(encoded);
    decode_in_place(buf)
}
