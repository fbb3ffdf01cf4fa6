//! The pipe protocol between the supervisor and an inference worker process.
//!
//! Private to one firmware build (supervisor and worker are the same binary), so it is not
//! versioned like the wire protocol: each message is a little-endian `u32` length followed
//! by a postcard body. Image bytes travel as they were received, so decoding (and any
//! decoder crash) happens in the worker, never in the supervisor.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Largest message accepted on the pipe: the largest image the limits allow plus slack.
/// The supervisor sizes jobs below this; anything larger means a corrupted stream.
pub const MAX_IPC_MESSAGE: usize = 1 << 30;

/// First allocation for a message body; larger bodies grow as their bytes arrive.
const READ_STEP: usize = 64 * 1024;

/// Supervisor → worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Classify one image file held in memory.
    Classify {
        job: u64,
        name: String,
        bytes: Vec<u8>,
    },
    /// Finish and exit 0.
    Exit,
}

/// Worker → supervisor.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// Sent once after the model is loaded and one warm-up inference ran.
    Ready(Ready),
    /// Loading failed; the worker exits after sending this.
    LoadFailed { kind: String, message: String },
    /// `job` was read from the pipe; decoding starts. A worker that fails before this
    /// was broken before the input reached it.
    Received { job: u64 },
    /// The input of `job` is decoded and preprocessed; inference starts. Everything that
    /// goes wrong before this is the input's fault, everything after it the model's.
    Decoded { job: u64 },
    /// Answer to `Classify`.
    Done { job: u64, outcome: Outcome },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ready {
    pub precision: String,
    pub model_sha256: String,
    pub kernels: Vec<String>,
    pub load_us: u64,
    /// Latency of the warm-up inference, the base of the per-request deadline.
    pub warmup_us: u64,
    /// Resident and peak resident memory of the worker after load and warm-up.
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Outcome {
    Scores {
        /// The model's class probabilities as computed; the supervisor validates them.
        probabilities: Vec<f32>,
        latency_us: u64,
        /// Resident memory after the inference, and the peak so far.
        rss_bytes: u64,
        peak_rss_bytes: u64,
    },
    /// The input could not be used (decode failure, too large, ...); not a model fault.
    InputRejected { kind: String, message: String },
    /// The engine failed on a valid tensor (caught panic, tract error).
    ModelError { message: String },
}

/// Writes one message. The caller flushes through the same writer.
pub fn send<T: Serialize>(out: &mut impl Write, message: &T) -> io::Result<()> {
    let body = postcard::to_stdvec(message)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("encode: {e}")))?;
    let len = u32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "message over 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&body)?;
    out.flush()
}

/// Reads one message; `Ok(None)` on a clean end of stream before a new message.
pub fn recv<T: for<'de> Deserialize<'de>>(input: &mut impl Read) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_IPC_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("pipe message of {len} bytes is over the {MAX_IPC_MESSAGE} byte limit"),
        ));
    }
    // Grow with the bytes that actually arrive: a length prefix alone (a corrupted stream,
    // or a worker that decoded hostile input and misbehaves) must not make the reader
    // allocate up to the limit.
    let mut body = Vec::with_capacity(len.min(READ_STEP));
    input.take(len as u64).read_to_end(&mut body)?;
    if body.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("pipe message cut short: {} of {len} bytes", body.len()),
        ));
    }
    // Exactly one message per body: bytes left over mean the two ends disagree.
    match postcard::take_from_bytes(&body) {
        Ok((message, [])) => Ok(Some(message)),
        Ok((_, rest)) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("pipe message has {} byte(s) after its end", rest.len()),
        )),
        Err(e) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("decode: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_clean_eof() {
        let mut buf = Vec::new();
        send(
            &mut buf,
            &Request::Classify {
                job: 7,
                name: "a.png".into(),
                bytes: vec![1, 2, 3],
            },
        )
        .unwrap();
        send(&mut buf, &Request::Exit).unwrap();
        let mut r = &buf[..];
        match recv::<Request>(&mut r).unwrap() {
            Some(Request::Classify { job, name, bytes }) => {
                assert_eq!((job, name.as_str(), bytes), (7, "a.png", vec![1, 2, 3]))
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            recv::<Request>(&mut r).unwrap(),
            Some(Request::Exit)
        ));
        assert!(recv::<Request>(&mut r).unwrap().is_none());
    }

    #[test]
    fn truncated_body_and_oversized_length_are_errors() {
        let mut buf = Vec::new();
        send(&mut buf, &Request::Exit).unwrap();
        buf.extend_from_slice(&10u32.to_le_bytes());
        buf.push(1);
        let mut r = &buf[..];
        assert!(recv::<Request>(&mut r).unwrap().is_some());
        assert!(recv::<Request>(&mut r).is_err());
        let huge = (MAX_IPC_MESSAGE as u32 + 1).to_le_bytes();
        assert!(recv::<Request>(&mut &huge[..]).is_err());
        // A length far beyond what follows is cut short, not allocated up front.
        let mut claims_512_mib = (512u32 << 20).to_le_bytes().to_vec();
        claims_512_mib.extend_from_slice(&[1; 10]);
        let e = recv::<Request>(&mut &claims_512_mib[..]).unwrap_err();
        assert!(e.to_string().contains("cut short: 10 of 536870912"), "{e}");
        // Found by fuzz/worker_pipe: a body with bytes after the message was accepted.
        let trailing = [2, 0, 0, 0, 1, 0];
        let e = recv::<Request>(&mut &trailing[..]).unwrap_err();
        assert!(e.to_string().contains("1 byte(s) after its end"), "{e}");
    }
}
