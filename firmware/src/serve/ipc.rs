//! The pipe protocol between the supervisor and an inference worker process.
//!
//! Private to one firmware build (supervisor and worker are the same binary), so it is not
//! versioned like the wire protocol: each message is a little-endian `u32` length followed
//! by a postcard body. Image bytes travel as they were received, so decoding (and any
//! decoder crash) happens in the worker, never in the supervisor.
//!
//! An image is held once on each side: the supervisor writes the job's bytes straight
//! from the upload buffer into the pipe (no encoded copy), and the worker decodes the
//! request in place, the image a view into the message it read (no second copy).

use std::borrow::Cow;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Largest message either side ever accepts; anything larger means a corrupted stream.
pub const MAX_IPC_MESSAGE: usize = 1 << 30;

/// Largest reply the supervisor reads from a worker (scores, kernel names, messages): a
/// worker that decoded hostile input is not trusted to size the supervisor's buffers.
pub const MAX_REPLY: usize = 4 << 20;

/// What a request may hold beside its image (the job number, the name, the encoding).
pub const REQUEST_OVERHEAD: usize = 64 * 1024;

/// Supervisor → worker. The supervisor sends owned bytes; the worker reads them borrowed
/// from the message body (`decode`).
#[derive(Debug, Serialize, Deserialize)]
pub enum Request<'a> {
    /// Classify one image file held in memory.
    Classify {
        job: u64,
        name: String,
        #[serde(borrow, with = "image_bytes")]
        bytes: Cow<'a, [u8]>,
    },
    /// Finish and exit 0.
    Exit,
}

/// Image bytes as one postcard byte string (a length, then the bytes as they are), read
/// without a copy where the message body outlives the request.
mod image_bytes {
    use std::borrow::Cow;
    use std::fmt;

    use serde::de::{Deserializer, Visitor};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Cow<'de, [u8]>, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = Cow<'de, [u8]>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("image bytes")
            }
            fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        d.deserialize_bytes(Bytes)
    }
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

/// Writes one message, encoding it straight into `out` (its size is counted first, for the
/// length prefix), and flushes.
pub fn send<T: Serialize>(out: &mut impl Write, message: &T) -> io::Result<()> {
    let encode =
        |e: postcard::Error| io::Error::new(io::ErrorKind::InvalidData, format!("encode: {e}"));
    let size = postcard::serialize_with_flavor(message, postcard::ser_flavors::Size::default())
        .map_err(encode)?;
    let len = u32::try_from(size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "message over 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    postcard::to_io(message, &mut *out).map_err(|e| match e {
        postcard::Error::SerializeBufferFull => io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the pipe closed while a message was written",
        ),
        other => encode(other),
    })?;
    out.flush()
}

/// Reads one message of at most `max` bytes; `Ok(None)` on a clean end of stream before a
/// new message.
pub fn recv<T: for<'de> Deserialize<'de>>(
    input: &mut impl Read,
    max: usize,
) -> io::Result<Option<T>> {
    match recv_body(input, max)? {
        Some(body) => decode(&body).map(Some),
        None => Ok(None),
    }
}

/// Reads the body of one message of at most `max` bytes, for `decode` to read in place;
/// `Ok(None)` on a clean end of stream before a new message. The body is allocated once,
/// at its announced length (growing it as bytes arrive would hold a large image twice
/// while it is moved), so `max` is what the reader is prepared to hold.
pub fn recv_body(input: &mut impl Read, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    let max = max.min(MAX_IPC_MESSAGE);
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("pipe message of {len} bytes is over the {max} byte limit"),
        ));
    }
    let mut body = Vec::with_capacity(len);
    input.take(len as u64).read_to_end(&mut body)?;
    if body.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("pipe message cut short: {} of {len} bytes", body.len()),
        ));
    }
    Ok(Some(body))
}

/// Decodes one message body; borrowed fields (a request's image) point into `body`.
pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> io::Result<T> {
    // Exactly one message per body: bytes left over mean the two ends disagree.
    match postcard::take_from_bytes(body) {
        Ok((message, [])) => Ok(message),
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
                bytes: Cow::Owned(vec![1, 2, 3]),
            },
        )
        .unwrap();
        send(&mut buf, &Request::Exit).unwrap();
        let mut r = &buf[..];
        let body = recv_body(&mut r, 100).unwrap().unwrap();
        match decode::<Request>(&body).unwrap() {
            Request::Classify { job, name, bytes } => {
                assert!(matches!(bytes, Cow::Borrowed(_)), "read in place");
                assert_eq!(
                    (job, name.as_str(), &bytes[..]),
                    (7, "a.png", &[1, 2, 3][..])
                )
            }
            other => panic!("unexpected {other:?}"),
        }
        let body = recv_body(&mut r, 100).unwrap().unwrap();
        assert!(matches!(decode::<Request>(&body).unwrap(), Request::Exit));
        assert!(recv_body(&mut r, 100).unwrap().is_none());
    }

    /// Reads one request as the worker does; whether there was one.
    fn request(input: &mut &[u8]) -> io::Result<bool> {
        match recv_body(input, 1 << 30)? {
            Some(body) => decode::<Request>(&body).map(|_| true),
            None => Ok(false),
        }
    }

    #[test]
    fn truncated_body_and_oversized_length_are_errors() {
        let mut buf = Vec::new();
        send(&mut buf, &Request::Exit).unwrap();
        buf.extend_from_slice(&10u32.to_le_bytes());
        buf.push(1);
        let mut r = &buf[..];
        assert!(request(&mut r).unwrap());
        assert!(request(&mut r).is_err());
        let huge = (MAX_IPC_MESSAGE as u32 + 1).to_le_bytes();
        assert!(request(&mut &huge[..]).is_err());
        // A length beyond what follows is cut short.
        let mut claims_512_mib = (512u32 << 20).to_le_bytes().to_vec();
        claims_512_mib.extend_from_slice(&[1; 10]);
        let e = request(&mut &claims_512_mib[..]).unwrap_err();
        assert!(e.to_string().contains("cut short: 10 of 536870912"), "{e}");
        // A reply longer than the supervisor reads is refused before anything is allocated.
        let mut long_reply = (MAX_REPLY as u32 + 1).to_le_bytes().to_vec();
        long_reply.extend_from_slice(&[0; 16]);
        let e = recv::<Reply>(&mut &long_reply[..], MAX_REPLY).unwrap_err();
        assert!(e.to_string().contains("over the 4194304 byte limit"), "{e}");
        // Found by fuzz/worker_pipe: a body with bytes after the message was accepted.
        let trailing = [2, 0, 0, 0, 1, 0];
        let e = request(&mut &trailing[..]).unwrap_err();
        assert!(e.to_string().contains("1 byte(s) after its end"), "{e}");
    }
}
