//! Protocol tests: round trips, stream resynchronisation, limits, and the test vectors that
//! PROTOCOL.md publishes for host implementers.

use std::string::String as StdString;
use std::vec;
use std::vec::Vec;

use heapless::{String, Vec as HVec};

use crate::*;

/// Small deterministic PRNG (xorshift64*) so random tests repeat exactly, without a
/// dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

fn s<const N: usize>(text: &str) -> String<N> {
    let mut out = String::new();
    out.push_str(text).expect("test string fits");
    out
}

fn hex(bytes: &[u8]) -> StdString {
    bytes.iter().map(|b| std::format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

fn encode(msg: &Message, seq: u32) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME];
    encode_frame(msg, seq, &mut buf).expect("encodes").to_vec()
}

fn raw(version: u8, kind: u8, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME];
    encode_raw_frame(version, kind, seq, body, &mut buf)
        .expect("encodes")
        .to_vec()
}

fn sample_result() -> ClassificationResult {
    ClassificationResult {
        result_id: 42,
        source: Source::Spool {
            name: s("scan-0001.dcm"),
        },
        label: s("meningioma"),
        class_index: 1,
        confidence: 0.875,
        probabilities: HVec::from_slice(&[0.0625, 0.875, 0.03125, 0.03125]).unwrap(),
        precision: Precision::Int8,
        precision_reason: PrecisionReason::Normal,
        model_sha256: [0x11; 32],
        input_sha256: [0x22; 32],
        latency_us: 12_345,
        timestamp_ms: 1_700_000_000_000,
        bundle_name: s("brain-mri-4class"),
        bundle_version: s("0.2.0"),
    }
}

/// One ordinary message of every kind.
fn samples() -> Vec<Message> {
    vec![
        Message::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            firmware_version: s("0.1.0"),
            device_id: s("rpi4-0007"),
            bundle_name: s("brain-mri-4class"),
            bundle_version: s("2024.1"),
            model_sha256: [0xAB; 32],
        }),
        Message::Ping(Ping { nonce: 0 }),
        Message::Pong(Pong { nonce: u32::MAX }),
        Message::GetStatus,
        Message::Status(Status {
            mode: Precision::Fp32,
            mode_reason: PrecisionReason::Fallback {
                reason: FallbackReason::MemoryBudget,
            },
            memory_used_bytes: 180 << 20,
            memory_budget_bytes: 512 << 20,
            uptime_s: 3600,
            queue_depth: 2,
            results: 100,
            errors: 3,
            fallbacks: 1,
            dropped_frames: 7,
            outbox_unacked: 4,
            outbox_full: false,
            live: true,
            ready: true,
            kernels: s("arm64simd_mmm_i32_8x8_dot"),
            alert: s(""),
            shadow_checked: 200,
            shadow_disagreements: 3,
        }),
        Message::UploadBegin(UploadBegin {
            upload_id: 9,
            total_len: 70_000,
            format: FormatHint::Dicom,
            name: s("IM0001"),
        }),
        Message::UploadChunk(UploadChunk {
            upload_id: 9,
            offset: 1024,
            data: HVec::from_slice(&[0, 1, 2, 0, 0, 255]).unwrap(),
        }),
        Message::UploadEnd(UploadEnd {
            upload_id: 9,
            sha256: [0; 32],
        }),
        Message::Capture(Capture { capture_id: 5 }),
        Message::Result(sample_result()),
        Message::Result(ClassificationResult {
            source: Source::Camera { capture_id: 0 },
            precision: Precision::Fp32,
            precision_reason: PrecisionReason::Shadow,
            probabilities: HVec::new(),
            ..sample_result()
        }),
        Message::Result(ClassificationResult {
            source: Source::Upload { upload_id: 9 },
            precision_reason: PrecisionReason::Fallback {
                reason: FallbackReason::Other(999),
            },
            ..sample_result()
        }),
        Message::Ack(Ack { result_id: 42 }),
        Message::Error(ErrorMessage::new(
            ErrorCode::DecodeFailed,
            "not a DICOM file",
            Some(17),
        )),
        Message::Error(ErrorMessage::new(ErrorCode::Other(4000), "", None)),
        Message::Busy(Busy {
            retry_after_ms: 250,
            queue_depth: 8,
            in_reply_to: Some(3),
        }),
    ]
}

/// The largest value of every kind: every buffer full, every integer at its widest varint.
fn maximal() -> Vec<Message> {
    let fill = |c: char, n: usize| -> StdString { core::iter::repeat_n(c, n).collect() };
    let sha = [0xFF; 32];
    let result = ClassificationResult {
        result_id: u64::MAX,
        source: Source::Spool {
            name: s(&fill('n', MAX_NAME_LEN)),
        },
        label: s(&fill('l', MAX_LABEL_LEN)),
        class_index: u16::MAX,
        confidence: 1.0,
        probabilities: HVec::from_slice(&[f32::MAX; MAX_CLASSES]).unwrap(),
        precision: Precision::Fp32,
        precision_reason: PrecisionReason::Fallback {
            reason: FallbackReason::Other(u16::MAX),
        },
        model_sha256: sha,
        input_sha256: sha,
        latency_us: u64::MAX,
        timestamp_ms: u64::MAX,
        bundle_name: s(&fill('b', MAX_BUNDLE_NAME_LEN)),
        bundle_version: s(&fill('v', MAX_VERSION_LEN)),
    };
    vec![
        Message::Hello(Hello {
            protocol_version: u8::MAX,
            firmware_version: s(&fill('v', MAX_VERSION_LEN)),
            device_id: s(&fill('d', MAX_DEVICE_ID_LEN)),
            bundle_name: s(&fill('b', MAX_BUNDLE_NAME_LEN)),
            bundle_version: s(&fill('v', MAX_VERSION_LEN)),
            model_sha256: sha,
        }),
        Message::Ping(Ping { nonce: u32::MAX }),
        Message::Pong(Pong { nonce: u32::MAX }),
        Message::GetStatus,
        Message::Status(Status {
            mode: Precision::Fp32,
            mode_reason: PrecisionReason::Fallback {
                reason: FallbackReason::Other(u16::MAX),
            },
            memory_used_bytes: u64::MAX,
            memory_budget_bytes: u64::MAX,
            uptime_s: u64::MAX,
            queue_depth: u32::MAX,
            results: u64::MAX,
            errors: u64::MAX,
            fallbacks: u64::MAX,
            dropped_frames: u64::MAX,
            outbox_unacked: u32::MAX,
            outbox_full: true,
            live: true,
            ready: true,
            kernels: s(&fill('k', MAX_KERNELS_LEN)),
            alert: s(&fill('a', MAX_ERROR_TEXT)),
            shadow_checked: u32::MAX,
            shadow_disagreements: u32::MAX,
        }),
        Message::UploadBegin(UploadBegin {
            upload_id: u32::MAX,
            total_len: u32::MAX,
            format: FormatHint::Pnm,
            name: s(&fill('n', MAX_NAME_LEN)),
        }),
        Message::UploadChunk(UploadChunk {
            upload_id: u32::MAX,
            offset: u32::MAX,
            data: HVec::from_slice(&[0xFF; MAX_CHUNK]).unwrap(),
        }),
        Message::UploadEnd(UploadEnd {
            upload_id: u32::MAX,
            sha256: sha,
        }),
        Message::Capture(Capture {
            capture_id: u32::MAX,
        }),
        Message::Result(result.clone()),
        Message::Ack(Ack {
            result_id: u64::MAX,
        }),
        Message::Error(ErrorMessage {
            code: ErrorCode::Other(u16::MAX),
            text: s(&fill('e', MAX_ERROR_TEXT)),
            in_reply_to: Some(u32::MAX),
        }),
        Message::Busy(Busy {
            retry_after_ms: u32::MAX,
            queue_depth: u32::MAX,
            in_reply_to: Some(u32::MAX),
        }),
    ]
}

fn decode_all(decoder: &mut FrameDecoder, bytes: &[u8]) -> Vec<Result<Frame, DecodeError>> {
    decoder.feed(bytes).collect()
}

fn ok_messages(items: &[Result<Frame, DecodeError>]) -> Vec<Message> {
    items
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|f| f.message.clone()))
        .collect()
}

#[test]
fn every_kind_round_trips() {
    let samples = samples();
    for kind in Kind::ALL {
        assert!(
            samples.iter().any(|m| m.kind() == kind),
            "no sample for {kind:?}"
        );
        assert_eq!(Kind::from_u8(kind as u8), Some(kind));
    }
    for (seq, msg) in samples.iter().enumerate() {
        let seq = seq as u32 * 1000 + 1;
        let frame = encode(msg, seq);
        let decoded = decode_frame(&frame).expect("decodes");
        assert_eq!(decoded.message, *msg);
        assert_eq!(decoded.seq, seq);
        assert_eq!(decoded.version, PROTOCOL_VERSION);
    }
    assert_eq!(Kind::from_u8(0), None);
    assert_eq!(Kind::from_u8(0xFF), None);
}

#[test]
fn only_the_delimiter_is_zero() {
    for msg in samples().iter().chain(maximal().iter()) {
        for seq in [0, 1, 0x100, u32::MAX] {
            let frame = encode(msg, seq);
            let (last, inner) = frame.split_last().unwrap();
            assert_eq!(*last, 0);
            assert!(!inner.contains(&0), "{:?} has a 0x00 inside", msg.kind());
        }
    }
}

#[test]
fn worst_case_of_every_kind_fits_the_limits() {
    let maximal = maximal();
    for kind in Kind::ALL {
        assert!(maximal.iter().any(|m| m.kind() == kind), "{kind:?}");
    }
    let mut worst = 0;
    for msg in &maximal {
        let frame = encode(msg, u32::MAX);
        assert!(
            frame.len() <= MAX_FRAME,
            "{:?}: {}",
            msg.kind(),
            frame.len()
        );
        worst = worst.max(frame.len());
        assert_eq!(decode_frame(&frame).unwrap().message, *msg);
        // And through the stream decoder, whose buffer is MAX_FRAME - 1.
        let mut decoder = FrameDecoder::new();
        let items = decode_all(&mut decoder, &frame);
        assert_eq!(ok_messages(&items), vec![msg.clone()]);
    }
    // The limit is not wildly larger than what is needed.
    assert!(
        worst + 64 >= MAX_FRAME,
        "worst {worst}, MAX_FRAME {MAX_FRAME}"
    );
}

/// The size table in PROTOCOL.md section 1.3 quotes these numbers.
#[test]
fn limits_match_protocol_md() {
    assert_eq!(
        [
            HEADER_LEN,
            CRC_LEN,
            MAX_BODY,
            MIN_PAYLOAD,
            MAX_PAYLOAD,
            MAX_FRAME
        ],
        [6, 4, 1088, 10, 1098, 1104]
    );
    assert_eq!(
        [
            MAX_CHUNK,
            MAX_CLASSES,
            MAX_LABEL_LEN,
            MAX_NAME_LEN,
            MAX_VERSION_LEN
        ],
        [1024, 64, 64, 128, 32]
    );
    assert_eq!(
        [
            MAX_DEVICE_ID_LEN,
            MAX_BUNDLE_NAME_LEN,
            MAX_KERNELS_LEN,
            MAX_ERROR_TEXT
        ],
        [64, 64, 128, 96]
    );
    assert_eq!(PROTOCOL_VERSION, 1);
}

#[test]
fn over_long_raw_body_is_refused() {
    let mut buf = [0u8; MAX_FRAME];
    let body = [1u8; MAX_BODY + 1];
    assert_eq!(
        encode_raw_frame(1, 2, 3, &body, &mut buf),
        Err(EncodeError::BodyTooLong {
            len: MAX_BODY + 1,
            max: MAX_BODY
        })
    );
}

#[test]
fn small_output_buffer_is_an_error() {
    let msg = Message::Ping(Ping { nonce: 1 });
    let needed = encode(&msg, 1).len();
    let mut buf = [0u8; 64];
    assert_eq!(
        encode_frame(&msg, 1, &mut buf[..needed - 1]),
        Err(EncodeError::BufferTooSmall {
            needed,
            available: needed - 1
        })
    );
    assert!(encode_frame(&msg, 1, &mut buf[..needed]).is_ok());
}

fn stream_of_samples() -> (Vec<u8>, Vec<Message>) {
    let mut bytes = Vec::new();
    let mut msgs = Vec::new();
    for (i, msg) in samples().into_iter().chain(maximal()).enumerate() {
        bytes.extend(encode(&msg, i as u32));
        msgs.push(msg);
    }
    (bytes, msgs)
}

#[test]
fn byte_by_byte_and_random_splits() {
    let (bytes, msgs) = stream_of_samples();

    let mut decoder = FrameDecoder::new();
    let mut got = Vec::new();
    for &b in &bytes {
        if let Some(item) = decoder.push(b) {
            got.push(item.expect("clean stream"));
        }
    }
    assert_eq!(
        got.iter().map(|f| f.message.clone()).collect::<Vec<_>>(),
        msgs
    );
    assert!(got.iter().enumerate().all(|(i, f)| f.seq == i as u32));

    let mut rng = Rng(0x5EED);
    for _ in 0..50 {
        let mut decoder = FrameDecoder::new();
        let mut items = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = 1 + rng.below(rest.len().min(700));
            let (chunk, tail) = rest.split_at(n);
            items.extend(decoder.feed(chunk));
            rest = tail;
        }
        assert_eq!(ok_messages(&items), msgs);
        assert_eq!(items.len(), msgs.len());
        assert_eq!(decoder.stats().frames, msgs.len() as u64);
        assert_eq!(decoder.stats().errors(), 0);
        assert_eq!(decoder.stats().bytes, bytes.len() as u64);
        assert_eq!(decoder.pending(), 0);
    }
}

#[test]
fn garbage_between_frames() {
    let a = Message::Ping(Ping { nonce: 1 });
    let b = Message::Ack(Ack { result_id: 2 });
    let mut rng = Rng(7);
    let garbage: Vec<u8> = (0..300).map(|_| rng.byte() | 1).collect();

    // Noise, then the 0x00 a sender writes before a frame after a disturbance: every
    // real frame survives.
    let mut stream = encode(&a, 1);
    stream.extend(&garbage);
    stream.push(0);
    stream.extend(encode(&b, 2));
    stream.extend([0, 0, 0]);
    stream.extend(encode(&a, 3));
    let mut decoder = FrameDecoder::new();
    let items = decode_all(&mut decoder, &stream);
    assert_eq!(ok_messages(&items), vec![a.clone(), b.clone(), a.clone()]);
    assert_eq!(decoder.stats().errors(), 1);
    assert_eq!(decoder.stats().empty, 3);

    // Noise glued to the front of a frame (no 0x00 in between) costs that frame only.
    let mut stream = garbage.clone();
    stream.extend(encode(&a, 1));
    stream.extend(encode(&b, 2));
    let mut decoder = FrameDecoder::new();
    let items = decode_all(&mut decoder, &stream);
    assert_eq!(ok_messages(&items), vec![b.clone()]);
    assert_eq!(decoder.stats().errors(), 1);
}

#[test]
fn flipped_bit_is_bad_crc_and_next_frame_decodes() {
    let msg = Message::Result(sample_result());
    let next = Message::Ping(Ping { nonce: 99 });
    let frame = encode(&msg, 5);

    // Flip bits in the payload (before COBS) so the corruption reaches the CRC check.
    let mut payload = frame[..frame.len() - 1].to_vec();
    let n = cobs_decode_in_place(&mut payload).unwrap();
    payload.truncate(n);
    for bit in [0usize, 7, 8 * 6, 8 * 20 + 3, 8 * (n - 1) + 7] {
        let mut bad = payload.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let mut stream = vec![0u8; max_len(&bad)];
        let len = cobs_encode(&bad, &mut stream).unwrap();
        stream.truncate(len);
        stream.push(0);
        stream.extend(encode(&next, 6));

        let mut decoder = FrameDecoder::new();
        let items = decode_all(&mut decoder, &stream);
        assert!(
            matches!(items[0], Err(DecodeError::BadCrc { .. })),
            "bit {bit}: {:?}",
            items[0]
        );
        assert_eq!(ok_messages(&items), vec![next.clone()]);
        assert_eq!(decoder.stats().bad_crc, 1);
    }

    // Flips on the wire (after COBS) may also break the COBS structure or split the frame;
    // whatever the error, it is counted and the next frame decodes.
    for bit in 0..(frame.len() - 1) * 8 {
        let mut stream = frame.clone();
        stream[bit / 8] ^= 1 << (bit % 8);
        stream.extend(encode(&next, 6));
        let mut decoder = FrameDecoder::new();
        let items = decode_all(&mut decoder, &stream);
        assert_eq!(ok_messages(&items), vec![next.clone()], "bit {bit}");
        assert!(decoder.stats().errors() >= 1, "bit {bit}");
    }
}

fn max_len(payload: &[u8]) -> usize {
    payload.len() + payload.len() / 254 + 1
}

#[test]
fn oversize_frame_then_resync() {
    let next = Message::Pong(Pong { nonce: 3 });
    let mut stream = vec![0x55u8; 5000];
    stream.push(0);
    stream.extend(encode(&next, 1));

    let mut decoder = FrameDecoder::new();
    let mut items = Vec::new();
    for chunk in stream.chunks(97) {
        items.extend(decoder.feed(chunk));
        assert!(decoder.pending() <= 5000);
    }
    assert_eq!(
        items[0],
        Err(DecodeError::FrameTooLong {
            len: 5001,
            max: MAX_FRAME
        })
    );
    assert_eq!(ok_messages(&items), vec![next]);
    assert_eq!(decoder.stats().too_long, 1);

    // Exactly at the limit still fits; one byte over does not.
    for (len, fits) in [(MAX_FRAME - 1, true), (MAX_FRAME, false)] {
        let mut decoder = FrameDecoder::new();
        let mut stream = vec![0x01u8; len];
        stream.push(0);
        let items = decode_all(&mut decoder, &stream);
        let too_long = matches!(items[0], Err(DecodeError::FrameTooLong { .. }));
        assert_eq!(too_long, !fits, "len {len}");
    }

    let long = vec![1u8; MAX_FRAME + 10];
    assert_eq!(
        decode_frame(&long),
        Err(DecodeError::FrameTooLong {
            len: MAX_FRAME + 11,
            max: MAX_FRAME
        })
    );
}

#[test]
fn truncated_frame_followed_by_good_one() {
    let first = Message::Result(sample_result());
    let good = Message::Ping(Ping { nonce: 77 });
    let third = Message::Ack(Ack { result_id: 1 });
    let frame = encode(&first, 1);
    let cut = &frame[..frame.len() / 2];

    // The sender died mid-frame and, restarted, writes 0x00 before its next frame.
    let mut stream = cut.to_vec();
    stream.push(0);
    stream.extend(encode(&good, 2));
    let mut decoder = FrameDecoder::new();
    let items = decode_all(&mut decoder, &stream);
    assert_eq!(items.len(), 2);
    assert!(items[0].is_err());
    assert_eq!(ok_messages(&items), vec![good.clone()]);

    // Bytes lost from the middle (UART overrun), delimiter intact.
    let mut stream = frame[..10].to_vec();
    stream.extend(&frame[20..]);
    stream.extend(encode(&good, 2));
    let mut decoder = FrameDecoder::new();
    let items = decode_all(&mut decoder, &stream);
    assert!(items[0].is_err());
    assert_eq!(ok_messages(&items), vec![good.clone()]);

    // Tail and delimiter lost, no 0x00 before the next frame: the two merge and are lost
    // together; the stream is back in step at the frame after.
    let mut stream = cut.to_vec();
    stream.extend(encode(&good, 2));
    stream.extend(encode(&third, 3));
    let mut decoder = FrameDecoder::new();
    let items = decode_all(&mut decoder, &stream);
    assert_eq!(ok_messages(&items), vec![third]);
    assert_eq!(decoder.stats().errors(), 1);

    // A decoder reset (link reopened) drops the partial frame without an error.
    let mut decoder = FrameDecoder::new();
    assert_eq!(decode_all(&mut decoder, cut), vec![]);
    assert!(decoder.pending() > 0);
    decoder.reset();
    let items = decode_all(&mut decoder, &encode(&good, 2));
    assert_eq!(ok_messages(&items), vec![good]);
    assert_eq!(decoder.stats().errors(), 0);
}

#[test]
fn unknown_kind_is_counted_and_skipped() {
    let a = Message::Ping(Ping { nonce: 1 });
    let mut stream = encode(&a, 1);
    stream.extend(raw(PROTOCOL_VERSION, 0x7E, 2, b"a future message body"));
    stream.extend(raw(PROTOCOL_VERSION, 0x00, 3, &[]));
    stream.extend(encode(&a, 4));
    let mut decoder = FrameDecoder::new();
    let items = decode_all(&mut decoder, &stream);
    assert_eq!(items.len(), 4);
    assert_eq!(
        items[1],
        Err(DecodeError::UnknownKind { kind: 0x7E, seq: 2 })
    );
    assert_eq!(items[2], Err(DecodeError::UnknownKind { kind: 0, seq: 3 }));
    let err = items[1].as_ref().unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::UnknownKind);
    assert_eq!(err.in_reply_to(), Some(2));
    assert_eq!(ok_messages(&items), vec![a.clone(), a]);
    assert_eq!(decoder.stats().unknown_kind, 2);
    assert_eq!(decoder.stats().frames, 2);
}

#[test]
fn other_version_is_refused_except_hello() {
    let ping = encode(&Message::Ping(Ping { nonce: 1 }), 1);
    let mut body = [0u8; 16];
    let body = postcard::to_slice(&Ping { nonce: 1 }, &mut body).unwrap();
    assert_eq!(
        decode_frame(&raw(2, Kind::Ping as u8, 1, body)),
        Err(DecodeError::UnsupportedVersion { got: 2 })
    );
    assert!(decode_frame(&ping).is_ok());

    // A newer peer's Hello is still readable, so the mismatch can be shown to a person.
    let hello = match &samples()[0] {
        Message::Hello(h) => Hello {
            protocol_version: 2,
            ..h.clone()
        },
        _ => unreachable!(),
    };
    let mut body = [0u8; MAX_BODY];
    let body = postcard::to_slice(&hello, &mut body).unwrap();
    let frame = decode_frame(&raw(2, Kind::Hello as u8, 9, body)).unwrap();
    assert_eq!(frame.version, 2);
    assert_eq!(frame.message, Message::Hello(hello));
}

#[test]
fn malformed_bodies_are_deser_errors() {
    // Trailing byte after a valid Ping body.
    assert_eq!(
        decode_frame(&raw(PROTOCOL_VERSION, Kind::Ping as u8, 4, &[1, 0])),
        Err(DecodeError::Deser { kind: 2, seq: 4 })
    );
    // GetStatus carries no body.
    assert_eq!(
        decode_frame(&raw(PROTOCOL_VERSION, Kind::GetStatus as u8, 5, &[0])),
        Err(DecodeError::Deser { kind: 4, seq: 5 })
    );
    // Truncated body, an unterminated varint, an enum tag out of range.
    for body in [&[][..], &[0x80], &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]] {
        assert!(matches!(
            decode_frame(&raw(PROTOCOL_VERSION, Kind::Ping as u8, 6, body)),
            Err(DecodeError::Deser { .. })
        ));
    }
    let mut status = [0u8; MAX_BODY];
    let len = {
        let Message::Status(st) = &samples()[4] else {
            unreachable!()
        };
        postcard::to_slice(st, &mut status).unwrap().len()
    };
    status[0] = 7; // Precision has two variants
    assert!(matches!(
        decode_frame(&raw(
            PROTOCOL_VERSION,
            Kind::Status as u8,
            1,
            &status[..len]
        )),
        Err(DecodeError::Deser { .. })
    ));
    // A label longer than its buffer is refused, not truncated.
    let mut long = [b'x'; MAX_ERROR_TEXT + 3];
    long[0] = 1; // ErrorCode::BadFrame
    long[1] = (MAX_ERROR_TEXT + 1) as u8; // length varint (< 128)
    long[MAX_ERROR_TEXT + 2] = 0; // in_reply_to: None
    assert!(matches!(
        decode_frame(&raw(PROTOCOL_VERSION, Kind::Error as u8, 1, &long)),
        Err(DecodeError::Deser { .. })
    ));
    // Too short to hold a header and CRC.
    let mut decoder = FrameDecoder::new();
    let items = decode_all(&mut decoder, &[0x03, 0x01, 0x02, 0x00]);
    assert_eq!(items, vec![Err(DecodeError::TooShort { len: 2, min: 10 })]);
    assert_eq!(decoder.stats().too_short, 1);
}

/// postcard's encodings of the shapes PROTOCOL.md describes, pinned so that a reordered
/// enum variant or field breaks this test instead of silently changing the wire.
#[test]
fn wire_encoding_of_types_is_pinned() {
    fn bytes<T: serde::Serialize>(value: &T) -> Vec<u8> {
        let mut buf = [0u8; 64];
        postcard::to_slice(value, &mut buf).unwrap().to_vec()
    }
    assert_eq!(bytes(&Precision::Int8), [0]);
    assert_eq!(bytes(&Precision::Fp32), [1]);
    assert_eq!(bytes(&PrecisionReason::Normal), [0]);
    assert_eq!(
        bytes(&PrecisionReason::Fallback {
            reason: FallbackReason::Hang
        }),
        [1, 1]
    );
    assert_eq!(bytes(&PrecisionReason::Shadow), [2]);
    assert_eq!(bytes(&FormatHint::Auto), [0]);
    assert_eq!(bytes(&FormatHint::Pnm), [4]);
    assert_eq!(bytes(&Source::Camera { capture_id: 300 }), [0, 0xAC, 0x02]);
    assert_eq!(bytes(&Source::Spool { name: s("a") }), [1, 1, b'a']);
    assert_eq!(bytes(&Source::Upload { upload_id: 1 }), [2, 1]);
    assert_eq!(bytes(&ErrorCode::Internal), [13]);
    assert_eq!(bytes(&ErrorCode::Other(300)), [0xAC, 0x02]);
    assert_eq!(bytes(&Some(5u32)), [1, 5]);
    assert_eq!(bytes(&None::<u32>), [0]);
    assert_eq!(bytes(&1.0f32), [0x00, 0x00, 0x80, 0x3F]);
    assert_eq!(bytes(&true), [1]);
    let v: HVec<u8, 4> = HVec::from_slice(&[9, 8]).unwrap();
    assert_eq!(bytes(&v), [2, 9, 8]);
    assert_eq!(bytes(&[7u8; 32]), [7u8; 32]);

    for code in 0..=40u16 {
        assert_eq!(u16::from(ErrorCode::from(code)), code);
        assert_eq!(u16::from(FallbackReason::from(code)), code);
    }
    let known = [
        ErrorCode::BadFrame,
        ErrorCode::UnknownKind,
        ErrorCode::UnsupportedVersion,
        ErrorCode::BadMessage,
        ErrorCode::TooLarge,
        ErrorCode::UploadMismatch,
        ErrorCode::ChecksumMismatch,
        ErrorCode::DecodeFailed,
        ErrorCode::Unsupported,
        ErrorCode::ModelFailed,
        ErrorCode::Busy,
        ErrorCode::CameraFailed,
        ErrorCode::Internal,
        ErrorCode::TimedOut,
    ];
    for (i, code) in known.iter().enumerate() {
        assert_eq!(u16::from(*code), i as u16 + 1, "{code:?}");
    }
}

#[test]
fn error_text_is_cut_at_a_char_boundary() {
    let long: StdString = core::iter::repeat_n('é', MAX_ERROR_TEXT).collect();
    let e = ErrorMessage::new(ErrorCode::Internal, &long, None);
    assert!(e.text.len() <= MAX_ERROR_TEXT);
    assert_eq!(e.text.len(), MAX_ERROR_TEXT / 2 * 2);
    assert!(e.text.chars().all(|c| c == 'é'));
}

/// Test vector 1 in PROTOCOL.md.
const PING_VECTOR: &str = "0401020101010af8acd19101b9c3685500";
/// Test vector 2 in PROTOCOL.md.
const RESULT_VECTOR: &str = concat!(
    "0401200701011d2a010d7363616e2d303030312e64636d0a6d656e696e67696f6d61010104603f040103803d",
    "0103603f0101023d0101023d0164111111111111111111111111111111111111111111111111111111111111",
    "11112222222222222222222222222222222222222222222222222222222222222222b96080d095ffbc311062",
    "7261696e2d6d72692d34636c61737305302e322e30e98f16c300",
);

#[test]
fn protocol_md_test_vectors() {
    let ping = Message::Ping(Ping { nonce: 0x1234_5678 });
    let frame = encode(&ping, 1);
    std::println!("ping frame: {}", hex(&frame));
    assert_eq!(hex(&frame), PING_VECTOR);
    assert_eq!(decode_frame(&unhex(PING_VECTOR)).unwrap().message, ping);

    let result = Message::Result(sample_result());
    let frame = encode(&result, 7);
    std::println!("result frame: {}", hex(&frame));
    assert_eq!(hex(&frame), RESULT_VECTOR);
    assert_eq!(decode_frame(&unhex(RESULT_VECTOR)).unwrap().message, result);

    // PROTOCOL.md quotes the vectors: keep the document and the code in step.
    let doc = include_str!("../PROTOCOL.md");
    let doc_hex: StdString = doc.split_whitespace().collect();
    assert!(
        doc_hex.contains(PING_VECTOR),
        "PROTOCOL.md lacks the Ping vector"
    );
    assert!(
        doc_hex.contains(RESULT_VECTOR),
        "PROTOCOL.md lacks the Result vector"
    );
}

/// Random streams, from pure noise to valid frames with mutations: the decoder never
/// panics, never reports more items than delimiters, and accounts for every frame.
#[test]
fn random_streams_never_panic() {
    let frames: Vec<Vec<u8>> = samples()
        .iter()
        .chain(maximal().iter())
        .enumerate()
        .map(|(i, m)| encode(m, i as u32))
        .collect();
    let mut rng = Rng(0xED6E_D0C5);
    for round in 0..300 {
        let mut stream = Vec::new();
        while stream.len() < 4000 {
            match rng.below(4) {
                0 => stream.extend((0..rng.below(64)).map(|_| rng.byte())),
                1 => stream.extend(&frames[rng.below(frames.len())]),
                2 => {
                    let mut f = frames[rng.below(frames.len())].clone();
                    for _ in 0..1 + rng.below(4) {
                        let i = rng.below(f.len());
                        f[i] = rng.byte();
                    }
                    stream.extend(f);
                }
                _ => {
                    let f = &frames[rng.below(frames.len())];
                    stream.extend(&f[..rng.below(f.len())]);
                }
            }
        }
        if round % 3 == 0 {
            // Pure noise, biased to few zeros so long frames happen.
            stream = (0..6000)
                .map(|_| {
                    if rng.below(2000) == 0 {
                        0
                    } else {
                        rng.byte() | 1
                    }
                })
                .collect();
        }
        let mut decoder = FrameDecoder::new();
        let mut items = 0u64;
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let n = 1 + rng.below(rest.len().min(300));
            let (chunk, tail) = rest.split_at(n);
            for item in decoder.feed(chunk) {
                items += 1;
                if let Ok(frame) = item {
                    // Whatever decodes must re-encode.
                    let _ = encode(&frame.message, frame.seq);
                }
            }
            rest = tail;
        }
        let zeros = stream.iter().filter(|&&b| b == 0).count() as u64;
        let st = decoder.stats();
        assert!(items <= zeros);
        assert_eq!(items, st.frames + st.errors());
        assert_eq!(items + st.empty, zeros);
        assert_eq!(st.bytes, stream.len() as u64);
    }
}
