//! Message types and their stable kind numbers.
//!
//! The kind byte in the frame header selects the body type; the body is the postcard
//! encoding of that struct alone (not of the [`Message`] enum), so kind numbers are chosen
//! here explicitly and never depend on the order of enum variants. Field order inside each
//! struct IS the wire layout: never reorder, insert or remove fields of a released kind;
//! add a new kind instead (see PROTOCOL.md, "Compatibility rules").

use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

use crate::{
    MAX_BUNDLE_NAME_LEN, MAX_CHUNK, MAX_CLASSES, MAX_DEVICE_ID_LEN, MAX_ERROR_TEXT,
    MAX_KERNELS_LEN, MAX_LABEL_LEN, MAX_NAME_LEN, MAX_VERSION_LEN,
};

/// A SHA-256 digest, sent as 32 raw bytes (no length prefix).
pub type Sha256 = [u8; 32];

/// Message kind: the second byte of every frame.
///
/// Numbers are grouped by area so related kinds can be added next to each other; `0x00` is
/// reserved and never sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// [`Hello`], both directions. Its body layout is frozen across protocol versions.
    Hello = 0x01,
    /// [`Ping`], either direction.
    Ping = 0x02,
    /// [`Pong`], the answer to `Ping`.
    Pong = 0x03,
    /// Host asks for a [`Status`]; empty body.
    GetStatus = 0x04,
    /// [`Status`], device to host.
    Status = 0x05,
    /// [`UploadBegin`], host to device.
    UploadBegin = 0x10,
    /// [`UploadChunk`], host to device.
    UploadChunk = 0x11,
    /// [`UploadEnd`], host to device.
    UploadEnd = 0x12,
    /// [`Capture`], host to device.
    Capture = 0x13,
    /// [`ClassificationResult`], device to host.
    Result = 0x20,
    /// [`Ack`], host to device.
    Ack = 0x21,
    /// [`ErrorMessage`], either direction.
    Error = 0x30,
    /// [`Busy`], device to host.
    Busy = 0x31,
}

impl Kind {
    /// Every kind this version knows, in kind-number order.
    pub const ALL: [Kind; 13] = [
        Kind::Hello,
        Kind::Ping,
        Kind::Pong,
        Kind::GetStatus,
        Kind::Status,
        Kind::UploadBegin,
        Kind::UploadChunk,
        Kind::UploadEnd,
        Kind::Capture,
        Kind::Result,
        Kind::Ack,
        Kind::Error,
        Kind::Busy,
    ];

    /// The kind with wire number `byte`, or `None` for a kind this version does not know
    /// (which a receiver skips: see [`crate::DecodeError::UnknownKind`]).
    pub fn from_u8(byte: u8) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| *k as u8 == byte)
    }
}

/// One protocol message. The variant decides the kind byte; the payload struct is the body.
#[derive(Debug, Clone, PartialEq)]
// No allocator on the device: a frame is one fixed-size value, so the large upload chunk
// variant is kept inline on purpose instead of boxed.
#[allow(clippy::large_enum_variant)]
pub enum Message {
    /// Identification, sent by each side when the link opens.
    Hello(Hello),
    /// Liveness probe.
    Ping(Ping),
    /// Answer to [`Message::Ping`].
    Pong(Pong),
    /// Request for a [`Message::Status`].
    GetStatus,
    /// Device state.
    Status(Status),
    /// Start of an image upload.
    UploadBegin(UploadBegin),
    /// Part of an image upload.
    UploadChunk(UploadChunk),
    /// End of an image upload; the device classifies the image.
    UploadEnd(UploadEnd),
    /// Request to classify one camera frame.
    Capture(Capture),
    /// One classification result.
    Result(ClassificationResult),
    /// The host has stored a result.
    Ack(Ack),
    /// A request failed or a frame was rejected.
    Error(ErrorMessage),
    /// Backpressure: a request was not queued.
    Busy(Busy),
}

impl Message {
    /// The kind byte this message is sent with.
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello(_) => Kind::Hello,
            Message::Ping(_) => Kind::Ping,
            Message::Pong(_) => Kind::Pong,
            Message::GetStatus => Kind::GetStatus,
            Message::Status(_) => Kind::Status,
            Message::UploadBegin(_) => Kind::UploadBegin,
            Message::UploadChunk(_) => Kind::UploadChunk,
            Message::UploadEnd(_) => Kind::UploadEnd,
            Message::Capture(_) => Kind::Capture,
            Message::Result(_) => Kind::Result,
            Message::Ack(_) => Kind::Ack,
            Message::Error(_) => Kind::Error,
            Message::Busy(_) => Kind::Busy,
        }
    }
}

/// Identification. Each side sends one when the link opens; the device also answers every
/// `Hello` it receives with its own. A host sets the bundle fields empty and the digest to
/// zeros, and puts its client name and version in `device_id` and `firmware_version`.
///
/// Frozen: this layout never changes in any protocol version, so two peers with different
/// versions can always tell each other what they speak.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u8,
    /// Firmware (or host client) version.
    pub firmware_version: String<MAX_VERSION_LEN>,
    /// Device serial number or host name.
    pub device_id: String<MAX_DEVICE_ID_LEN>,
    /// Name of the approved model bundle in use.
    pub bundle_name: String<MAX_BUNDLE_NAME_LEN>,
    /// Version of that bundle.
    pub bundle_version: String<MAX_VERSION_LEN>,
    /// SHA-256 of the primary (int8) model file.
    pub model_sha256: Sha256,
}

/// Liveness probe; the receiver answers with a [`Pong`] carrying the same nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Any value chosen by the sender.
    pub nonce: u32,
}

/// Answer to a [`Ping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The nonce of the `Ping` being answered.
    pub nonce: u32,
}

/// Numeric precision of the model that produced a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precision {
    /// The quantised int8 model (the normal path).
    Int8,
    /// The fp32 reference model.
    Fp32,
}

/// Why the precision in use was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrecisionReason {
    /// The configured model ran normally.
    Normal,
    /// The watchdog moved from int8 to fp32.
    Fallback {
        /// What made the int8 path fail.
        reason: FallbackReason,
    },
    /// A shadow run: the second model on the same input, for disagreement monitoring. The
    /// primary result for that input has its own result id.
    Shadow,
}

/// What made the device fall back from int8 to fp32. Sent as a number so that a host can
/// show codes added by newer firmware without failing to decode the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "u16", into = "u16")]
pub enum FallbackReason {
    /// The int8 worker stopped making progress and was killed by the watchdog.
    Hang,
    /// The int8 worker crashed.
    Crash,
    /// The int8 worker went over its memory budget.
    MemoryBudget,
    /// The int8 model produced invalid output (NaN, wrong shape, probabilities not summing
    /// to 1).
    InvalidOutput,
    /// The int8 model failed to load.
    LoadFailed,
    /// An operator forced fp32.
    Operator,
    /// The int8 model has no valid accuracy-gate approval for its exact file.
    Unapproved,
    /// A code this version does not know.
    Other(u16),
}

impl From<u16> for FallbackReason {
    fn from(code: u16) -> Self {
        match code {
            1 => FallbackReason::Hang,
            2 => FallbackReason::Crash,
            3 => FallbackReason::MemoryBudget,
            4 => FallbackReason::InvalidOutput,
            5 => FallbackReason::LoadFailed,
            6 => FallbackReason::Operator,
            7 => FallbackReason::Unapproved,
            other => FallbackReason::Other(other),
        }
    }
}

impl From<FallbackReason> for u16 {
    fn from(reason: FallbackReason) -> u16 {
        match reason {
            FallbackReason::Hang => 1,
            FallbackReason::Crash => 2,
            FallbackReason::MemoryBudget => 3,
            FallbackReason::InvalidOutput => 4,
            FallbackReason::LoadFailed => 5,
            FallbackReason::Operator => 6,
            FallbackReason::Unapproved => 7,
            FallbackReason::Other(code) => code,
        }
    }
}

/// Device state, sent in answer to `GetStatus` and whenever the mode changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Precision of the model currently serving requests.
    pub mode: Precision,
    /// Why that precision is in use.
    pub mode_reason: PrecisionReason,
    /// Memory the firmware uses now, in bytes.
    pub memory_used_bytes: u64,
    /// Memory budget from the board profile, in bytes.
    pub memory_budget_bytes: u64,
    /// Seconds since the firmware started.
    pub uptime_s: u64,
    /// Requests waiting for inference.
    pub queue_depth: u32,
    /// Results produced since start.
    pub results: u64,
    /// Requests answered with an error since start.
    pub errors: u64,
    /// Fallbacks from int8 to fp32 since start.
    pub fallbacks: u64,
    /// Frames from the host rejected by the decoder since start (CRC, COBS, length, kind).
    pub dropped_frames: u64,
    /// Results stored in the outbox and not yet acknowledged.
    pub outbox_unacked: u32,
    /// The outbox is full: new results are refused until the host acknowledges.
    pub outbox_full: bool,
    /// The supervisor is running (systemd liveness).
    pub live: bool,
    /// A model is loaded and requests are accepted (readiness).
    pub ready: bool,
    /// Compute kernels in use, e.g. `"arm64simd_mmm_i32_8x8_dot"`.
    pub kernels: String<MAX_KERNELS_LEN>,
    /// Why a person must act, empty when nothing is wrong: the int8 model is failing and
    /// the fp32 fallback is not allowed, the outbox is full, shadow validation disagrees.
    pub alert: String<MAX_ERROR_TEXT>,
    /// Shadow validation: comparisons in the rolling window (0 when it is off) ...
    pub shadow_checked: u32,
    /// ... and how many of them int8 and fp32 classified differently.
    pub shadow_disagreements: u32,
}

/// Image format hint for an upload; the device sniffs the bytes when it is `Auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FormatHint {
    /// Let the device detect the format.
    Auto,
    /// DICOM Part 10 file.
    Dicom,
    /// PNG.
    Png,
    /// JPEG.
    Jpeg,
    /// PGM / PPM (Netpbm).
    Pnm,
}

/// Start of an image upload. The device answers only on failure (`Error` or `Busy` with
/// `in_reply_to` set); a successful upload ends with a `Result` whose source is
/// `Upload { upload_id }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadBegin {
    /// Chosen by the host, unique among its open uploads.
    pub upload_id: u32,
    /// Total image size in bytes.
    pub total_len: u32,
    /// What the bytes are.
    pub format: FormatHint,
    /// Original file name, for the audit log.
    pub name: String<MAX_NAME_LEN>,
}

/// Part of an upload. Chunks are sent in order: `offset` equals the sum of the previous
/// chunks' lengths, so a lost chunk is detected by the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadChunk {
    /// The upload this chunk belongs to.
    pub upload_id: u32,
    /// Byte offset of `data` in the image.
    pub offset: u32,
    /// Up to [`MAX_CHUNK`] image bytes.
    pub data: Vec<u8, MAX_CHUNK>,
}

/// End of an upload: the device checks length and digest, then classifies the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadEnd {
    /// The upload being closed.
    pub upload_id: u32,
    /// SHA-256 of the whole image.
    pub sha256: Sha256,
}

/// Request to capture and classify one camera frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capture {
    /// Chosen by the host and echoed in the result's `Source::Camera`; never 0, which marks
    /// captures started on the device (the capture button).
    pub capture_id: u32,
}

/// Where the classified image came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// A camera frame.
    Camera {
        /// The `Capture` request's id, or 0 for the capture button.
        capture_id: u32,
    },
    /// A file from the USB spool directory.
    Spool {
        /// File name inside the spool directory.
        name: String<MAX_NAME_LEN>,
    },
    /// An upload over this or another link.
    Upload {
        /// The `UploadBegin` id.
        upload_id: u32,
    },
}

/// One classification. Delivered at least once: the device resends it until the host sends
/// an [`Ack`] with the same `result_id`, so the host must treat a known id as a duplicate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationResult {
    /// Unique per device and increasing, kept across restarts.
    pub result_id: u64,
    /// Where the image came from.
    pub source: Source,
    /// Label of the winning class.
    pub label: String<MAX_LABEL_LEN>,
    /// Index of the winning class in the model's output.
    pub class_index: u16,
    /// Probability of the winning class, 0.0 to 1.0.
    pub confidence: f32,
    /// Probability of every class, in model output order.
    pub probabilities: Vec<f32, MAX_CLASSES>,
    /// Precision of the model that produced this result.
    pub precision: Precision,
    /// Why that precision was used.
    pub precision_reason: PrecisionReason,
    /// SHA-256 of the model file that produced this result.
    pub model_sha256: Sha256,
    /// SHA-256 of the input file (or of the raw camera frame).
    pub input_sha256: Sha256,
    /// Inference latency in microseconds (preprocessing included).
    pub latency_us: u64,
    /// When the result was produced, milliseconds since the Unix epoch (UTC).
    pub timestamp_ms: u64,
    /// Bundle the model came from (name and version), so a result stays attributable
    /// when it is replayed after a bundle update.
    pub bundle_name: String<MAX_BUNDLE_NAME_LEN>,
    /// Version of that bundle.
    pub bundle_version: String<MAX_VERSION_LEN>,
}

/// The host has durably stored the result with this id; the device stops resending it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// `ClassificationResult::result_id` being acknowledged.
    pub result_id: u64,
}

/// Stable error numbers. Sent as a number so a host decodes codes added by newer firmware
/// as [`ErrorCode::Other`] instead of failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "u16", into = "u16")]
pub enum ErrorCode {
    /// A frame failed its COBS, length or CRC check (1).
    BadFrame,
    /// A frame had a kind the receiver does not know (2).
    UnknownKind,
    /// A frame had a protocol version the receiver does not speak (3).
    UnsupportedVersion,
    /// A frame's body did not decode as its kind (4).
    BadMessage,
    /// Too large: an upload above the device limit, or an over-long frame (5).
    TooLarge,
    /// Upload out of order: unknown id, wrong offset, or length differs from `total_len` (6).
    UploadMismatch,
    /// Upload SHA-256 differs from the received bytes (7).
    ChecksumMismatch,
    /// The image could not be decoded (corrupt or unsupported file) (8).
    DecodeFailed,
    /// A well-formed request the device cannot serve, e.g. no camera fitted (9).
    Unsupported,
    /// Inference failed on int8 and on fp32 (10).
    ModelFailed,
    /// The request conflicts with one in progress (e.g. a second `Capture`) and was
    /// refused; unlike the `Busy` message this is not a queue-full signal (11).
    Busy,
    /// The camera failed to deliver a frame (12).
    CameraFailed,
    /// A fault inside the device (13).
    Internal,
    /// The host was too slow: an upload stalled or a connection never said Hello (14).
    TimedOut,
    /// A code this version does not know.
    Other(u16),
}

impl From<u16> for ErrorCode {
    fn from(code: u16) -> Self {
        match code {
            1 => ErrorCode::BadFrame,
            2 => ErrorCode::UnknownKind,
            3 => ErrorCode::UnsupportedVersion,
            4 => ErrorCode::BadMessage,
            5 => ErrorCode::TooLarge,
            6 => ErrorCode::UploadMismatch,
            7 => ErrorCode::ChecksumMismatch,
            8 => ErrorCode::DecodeFailed,
            9 => ErrorCode::Unsupported,
            10 => ErrorCode::ModelFailed,
            11 => ErrorCode::Busy,
            12 => ErrorCode::CameraFailed,
            13 => ErrorCode::Internal,
            14 => ErrorCode::TimedOut,
            other => ErrorCode::Other(other),
        }
    }
}

impl From<ErrorCode> for u16 {
    fn from(code: ErrorCode) -> u16 {
        match code {
            ErrorCode::BadFrame => 1,
            ErrorCode::UnknownKind => 2,
            ErrorCode::UnsupportedVersion => 3,
            ErrorCode::BadMessage => 4,
            ErrorCode::TooLarge => 5,
            ErrorCode::UploadMismatch => 6,
            ErrorCode::ChecksumMismatch => 7,
            ErrorCode::DecodeFailed => 8,
            ErrorCode::Unsupported => 9,
            ErrorCode::ModelFailed => 10,
            ErrorCode::Busy => 11,
            ErrorCode::CameraFailed => 12,
            ErrorCode::Internal => 13,
            ErrorCode::TimedOut => 14,
            ErrorCode::Other(code) => code,
        }
    }
}

/// A request failed or a frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// What went wrong.
    pub code: ErrorCode,
    /// Short text for a person (log or UI), truncated to [`MAX_ERROR_TEXT`] bytes.
    pub text: String<MAX_ERROR_TEXT>,
    /// Sequence number of the frame this answers; `None` when it answers no frame or the
    /// frame's number could not be trusted (bad CRC).
    pub in_reply_to: Option<u32>,
}

impl ErrorMessage {
    /// An error whose text is cut to [`MAX_ERROR_TEXT`] bytes at a character boundary, so
    /// building one never fails.
    pub fn new(code: ErrorCode, text: &str, in_reply_to: Option<u32>) -> Self {
        let mut end = text.len().min(MAX_ERROR_TEXT);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut s = String::new();
        // Cannot fail: `end` <= capacity.
        let _ = s.push_str(&text[..end]);
        ErrorMessage {
            code,
            text: s,
            in_reply_to,
        }
    }
}

/// Backpressure: the request was not queued because a bounded queue is full. The host
/// resends it after `retry_after_ms`; the device never buffers without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Busy {
    /// Suggested wait before resending, in milliseconds.
    pub retry_after_ms: u32,
    /// Requests queued now.
    pub queue_depth: u32,
    /// Sequence number of the refused frame, if it was one.
    pub in_reply_to: Option<u32>,
}
