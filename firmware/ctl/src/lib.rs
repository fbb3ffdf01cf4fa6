//! A host-side client of the edgedx wire protocol (`firmware/icd/PROTOCOL.md`), used by
//! `edgedx-ctl`, `edgedx demo` and the integration tests. It speaks to a device over its
//! Unix socket or a serial line through one small [`Transport`] trait.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use edgedx_icd::{
    encode_frame, Ack, ClassificationResult, ErrorCode, ErrorMessage, FormatHint, Frame,
    FrameDecoder, Hello, Message, Ping, Source, Status, UploadBegin, UploadChunk, UploadEnd,
    MAX_CHUNK, MAX_FRAME,
};
use sha2::{Digest, Sha256};

/// A byte stream to the device.
pub trait Transport: Send {
    /// Reads what is available, waiting at most `timeout`. MUST return `Ok(0)` on timeout
    /// and an `UnexpectedEof` error when the peer closed the link.
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize>;
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
}

/// The device's Unix socket.
pub struct SocketTransport(UnixStream);

impl SocketTransport {
    pub fn connect(path: &Path) -> io::Result<Self> {
        UnixStream::connect(path).map(SocketTransport)
    }
}

impl Transport for SocketTransport {
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        self.0
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        match self.0.read(buf) {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the device closed the socket",
            )),
            Ok(n) => Ok(n),
            // A signal that interrupts the wait (EINTR: the test harness's, a UI's timer)
            // is no data yet, like a timeout: the caller reads again.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all(bytes)
    }
}

/// A serial line (UART, USB CDC-ACM, or a pseudo-terminal in tests).
pub struct SerialTransport(edgedx_board::serial::SerialPort);

impl SerialTransport {
    pub fn open(device: &Path, baud: u32) -> Result<Self, edgedx_board::BoardError> {
        edgedx_board::serial::open_serial(device, baud).map(SerialTransport)
    }

    /// Wraps a port opened elsewhere (the master side of a pseudo-terminal in tests).
    pub fn from_port(port: edgedx_board::serial::SerialPort) -> Self {
        SerialTransport(port)
    }
}

impl Transport for SerialTransport {
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        self.0.read(buf, timeout).map_err(io::Error::other)
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all(bytes).map_err(io::Error::other)
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("link: {0}")]
    Io(#[from] io::Error),
    #[error("no answer from the device within {0:?}")]
    Timeout(Duration),
    #[error("device error {code:?}: {text}")]
    Device { code: ErrorCode, text: String },
    #[error("device speaks protocol {device}, this client {client}")]
    Version { device: u8, client: u8 },
    #[error("{0}")]
    Other(String),
}

/// What [`Client::next_event`] yields.
#[allow(clippy::large_enum_variant)] // handed out one at a time; a Box per result buys nothing
#[derive(Debug, Clone)]
pub enum Event {
    Result(ClassificationResult),
    Status(Status),
    Error(ErrorMessage),
}

pub struct Client {
    link: Box<dyn Transport>,
    decoder: FrameDecoder,
    seq: u32,
    inbox: VecDeque<Frame>,
    /// Frames this client could not decode (bad CRC, unknown kind...).
    pub dropped_frames: u64,
    pub device: Option<Hello>,
    next_upload: u32,
}

impl Client {
    pub fn new(link: Box<dyn Transport>) -> Self {
        Client {
            link,
            decoder: FrameDecoder::new(),
            seq: 0,
            inbox: VecDeque::new(),
            dropped_frames: 0,
            device: None,
            // Start somewhere different for each client so that ids rarely repeat on
            // a device that keeps results from earlier sessions.
            next_upload: (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.subsec_nanos()))
            .max(1),
        }
    }

    pub fn socket(path: &Path) -> Result<Self, ClientError> {
        Ok(Client::new(Box::new(SocketTransport::connect(path)?)))
    }

    pub fn serial(device: &Path, baud: u32) -> Result<Self, ClientError> {
        let t =
            SerialTransport::open(device, baud).map_err(|e| ClientError::Other(e.to_string()))?;
        Ok(Client::new(Box::new(t)))
    }

    /// Sends one message and returns its sequence number.
    pub fn send(&mut self, msg: &Message) -> Result<u32, ClientError> {
        let mut buf = [0u8; MAX_FRAME];
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let frame =
            encode_frame(msg, seq, &mut buf).map_err(|e| ClientError::Other(e.to_string()))?;
        self.link.write_all(frame)?;
        Ok(seq)
    }

    /// Writes raw bytes (tests use it for garbage and hand-made frames).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        Ok(self.link.write_all(bytes)?)
    }

    /// Next frame from the device, or `None` after `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Frame>, ClientError> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(f) = self.inbox.pop_front() {
                return Ok(Some(f));
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut buf = [0u8; 4096];
            let n = self
                .link
                .read(&mut buf, left.min(Duration::from_millis(200)))?;
            for item in self.decoder.feed(&buf[..n]) {
                match item {
                    Ok(frame) => self.inbox.push_back(frame),
                    Err(_) => self.dropped_frames += 1,
                }
            }
        }
    }

    /// Waits for a frame matching `want`; others are kept for later calls.
    fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut want: impl FnMut(&Frame) -> Option<T>,
    ) -> Result<T, ClientError> {
        let until = Instant::now() + timeout;
        let mut kept = VecDeque::new();
        let outcome = loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Ok(Some(frame)) => match want(&frame) {
                    Some(v) => break Ok(v),
                    None => kept.push_back(frame),
                },
                Ok(None) => break Err(ClientError::Timeout(timeout)),
                Err(e) => break Err(e),
            }
        };
        // Put back what was not ours, in order, ahead of anything newer.
        while let Some(f) = kept.pop_back() {
            self.inbox.push_front(f);
        }
        outcome
    }

    /// Opens the session: a flush delimiter, our Hello, the device's Hello.
    pub fn hello(&mut self, client_name: &str, timeout: Duration) -> Result<Hello, ClientError> {
        self.link.write_all(&[0])?;
        let hello = Hello {
            protocol_version: edgedx_icd::PROTOCOL_VERSION,
            firmware_version: short(env!("CARGO_PKG_VERSION")),
            device_id: short(client_name),
            bundle_name: heapless::String::new(),
            bundle_version: heapless::String::new(),
            model_sha256: [0; 32],
        };
        self.send(&Message::Hello(hello))?;
        let device = self.wait_for(timeout, |f| match &f.message {
            Message::Hello(h) => Some(h.clone()),
            _ => None,
        })?;
        if device.protocol_version != edgedx_icd::PROTOCOL_VERSION {
            return Err(ClientError::Version {
                device: device.protocol_version,
                client: edgedx_icd::PROTOCOL_VERSION,
            });
        }
        self.device = Some(device.clone());
        Ok(device)
    }

    pub fn ping(&mut self, nonce: u32, timeout: Duration) -> Result<Duration, ClientError> {
        let started = Instant::now();
        self.send(&Message::Ping(Ping { nonce }))?;
        self.wait_for(timeout, |f| match &f.message {
            Message::Pong(p) if p.nonce == nonce => Some(()),
            _ => None,
        })?;
        Ok(started.elapsed())
    }

    pub fn status(&mut self, timeout: Duration) -> Result<Status, ClientError> {
        self.send(&Message::GetStatus)?;
        self.wait_for(timeout, |f| match &f.message {
            Message::Status(s) => Some(s.clone()),
            _ => None,
        })
    }

    pub fn ack(&mut self, result_id: u64) -> Result<(), ClientError> {
        self.send(&Message::Ack(Ack { result_id }))?;
        Ok(())
    }

    /// Uploads an image and waits for its result (which is not acknowledged here: the
    /// caller acks once it has stored it). Busy answers are retried until `timeout`.
    pub fn classify_bytes(
        &mut self,
        name: &str,
        bytes: &[u8],
        timeout: Duration,
    ) -> Result<ClassificationResult, ClientError> {
        let until = Instant::now() + timeout;
        let total_len = u32::try_from(bytes.len())
            .map_err(|_| ClientError::Other("image over 4 GiB".into()))?;
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        loop {
            let upload_id = self.next_upload;
            self.next_upload = self.next_upload.wrapping_add(1).max(1);
            let first = self.send(&Message::UploadBegin(UploadBegin {
                upload_id,
                total_len,
                format: FormatHint::Auto,
                name: short(name),
            }))?;
            for (i, chunk) in bytes.chunks(MAX_CHUNK).enumerate() {
                let data = heapless::Vec::from_slice(chunk)
                    .map_err(|_| ClientError::Other("chunk".into()))?;
                self.send(&Message::UploadChunk(UploadChunk {
                    upload_id,
                    offset: (i * MAX_CHUNK) as u32,
                    data,
                }))?;
            }
            let last = self.send(&Message::UploadEnd(UploadEnd {
                upload_id,
                sha256: digest,
            }))?;
            let ours = |seq: Option<u32>| {
                seq.is_some_and(|s| s.wrapping_sub(first) <= last.wrapping_sub(first))
            };
            let left = until.saturating_duration_since(Instant::now());
            let answer = self.wait_for(left, |f| match &f.message {
                // Upload ids are per client; the digest tells our result from another
                // client's upload with the same id (results are broadcast and replayed).
                Message::Result(r)
                    if r.source == (Source::Upload { upload_id }) && r.input_sha256 == digest =>
                {
                    Some(Ok(r.clone()))
                }
                Message::Error(e) if ours(e.in_reply_to) => Some(Err(Some(e.clone()))),
                Message::Busy(b) if ours(b.in_reply_to) => Some(Err(None)),
                _ => None,
            })?;
            match answer {
                Ok(result) => return Ok(result),
                Err(Some(e)) if e.code == ErrorCode::UploadMismatch => {
                    // Follows a Busy for the same upload: the begin was refused, retry.
                    self.drain_upload_answers(first, last);
                }
                Err(Some(e)) => {
                    self.drain_upload_answers(first, last);
                    return Err(ClientError::Device {
                        code: e.code,
                        text: e.text.as_str().to_string(),
                    });
                }
                Err(None) => {
                    self.drain_upload_answers(first, last);
                    if Instant::now() >= until {
                        return Err(ClientError::Timeout(timeout));
                    }
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
    }

    /// After a failed upload the device may still send errors for its later chunks; they
    /// are dropped so they do not look like answers to the next request.
    fn drain_upload_answers(&mut self, first: u32, last: u32) {
        let ours = |seq: Option<u32>| {
            seq.is_some_and(|s| s.wrapping_sub(first) <= last.wrapping_sub(first))
        };
        let _ = self.wait_for(Duration::from_millis(200), |_| None::<()>);
        self.inbox.retain(|f| match &f.message {
            Message::Error(e) => !ours(e.in_reply_to),
            Message::Busy(b) => !ours(b.in_reply_to),
            _ => true,
        });
    }

    /// The next result, status or error the device sends, or `None` after `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Event>, ClientError> {
        let until = Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let Some(frame) = self.recv(left)? else {
                return Ok(None);
            };
            match frame.message {
                Message::Result(r) => return Ok(Some(Event::Result(r))),
                Message::Status(s) => return Ok(Some(Event::Status(s))),
                Message::Error(e) => return Ok(Some(Event::Error(e))),
                Message::Ping(p) => {
                    self.send(&Message::Pong(edgedx_icd::Pong { nonce: p.nonce }))?;
                }
                _ => {}
            }
        }
    }
}

fn short<const N: usize>(s: &str) -> heapless::String<N> {
    let mut out = heapless::String::new();
    for c in s.chars() {
        if out.push(c).is_err() {
            break;
        }
    }
    out
}

/// A result as one JSON object (for `--json` output and logs).
pub fn result_json(r: &ClassificationResult, labels: Option<&[String]>) -> serde_json::Value {
    let _ = labels;
    serde_json::json!({
        "result_id": r.result_id,
        "source": match &r.source {
            Source::Camera { capture_id } => serde_json::json!({ "camera": capture_id }),
            Source::Spool { name } => serde_json::json!({ "spool": name.as_str() }),
            Source::Upload { upload_id } => serde_json::json!({ "upload": upload_id }),
        },
        "label": r.label.as_str(),
        "class_index": r.class_index,
        "confidence": r.confidence,
        "probabilities": r.probabilities.iter().collect::<Vec<_>>(),
        "precision": format!("{:?}", r.precision).to_lowercase(),
        "precision_reason": reason_text(r),
        "model_sha256": hex::encode(r.model_sha256),
        "input_sha256": hex::encode(r.input_sha256),
        "latency_us": r.latency_us,
        "timestamp_ms": r.timestamp_ms,
        "bundle": format!("{}@{}", r.bundle_name, r.bundle_version),
    })
}

/// "normal", "fallback: Hang", "shadow".
pub fn reason_text(r: &ClassificationResult) -> String {
    match r.precision_reason {
        edgedx_icd::PrecisionReason::Normal => "normal".into(),
        edgedx_icd::PrecisionReason::Fallback { reason } => format!("fallback: {reason:?}"),
        edgedx_icd::PrecisionReason::Shadow => "shadow".into(),
    }
}
