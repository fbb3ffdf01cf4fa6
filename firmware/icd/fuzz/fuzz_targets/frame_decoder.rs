//! Fuzz target: arbitrary bytes through the stream decoder, in chunks of fuzzed size. It
//! must never panic and must account for every delimiter.
//!
//! Random bytes almost never pass the CRC, so half the inputs are first wrapped in a valid
//! frame (`encode_raw_frame`): that is what drives the postcard body decoding of every kind.
#![no_main]

use edgedx_icd::{encode_frame, encode_raw_frame, FrameDecoder, MAX_FRAME, PROTOCOL_VERSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(control >> 1).max(1);
    let mut framed = [0u8; MAX_FRAME];
    let bytes: &[u8] = if control & 1 == 1 {
        // rest = kind, seq byte, body: a frame with a good CRC and a fuzzed body.
        let [kind, seq, body @ ..] = rest else {
            return;
        };
        match encode_raw_frame(PROTOCOL_VERSION, *kind, u32::from(*seq), body, &mut framed) {
            Ok(frame) => frame,
            Err(_) => return,
        }
    } else {
        rest
    };

    let mut decoder = FrameDecoder::new();
    let mut items = 0u64;
    for piece in bytes.chunks(chunk) {
        for item in decoder.feed(piece) {
            items += 1;
            if let Ok(frame) = item {
                // Anything that decodes must re-encode within the declared limit.
                let mut out = [0u8; MAX_FRAME];
                let encoded = encode_frame(&frame.message, frame.seq, &mut out);
                assert!(encoded.is_ok(), "decoded frame does not re-encode");
            }
        }
    }
    let stats = decoder.stats();
    let zeros = bytes.iter().filter(|&&b| b == 0).count() as u64;
    assert_eq!(items, stats.frames + stats.errors());
    assert_eq!(items + stats.empty, zeros);
});
