//! Fuzz target: arbitrary bytes as the pipe between the supervisor and a worker, read both
//! ways (the worker reads requests, the supervisor reads replies). Reading must never
//! panic, never allocate more than its limit (run with -malloc_limit_mb), and
//! every message it accepts must survive a write and a read unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The module itself, not a copy: the binary crate has no library to depend on.
#[allow(dead_code)]
#[path = "../../src/serve/ipc.rs"]
mod ipc;

/// Bodies are allocated at their announced length, so the reader's limit stays under
/// -malloc_limit_mb.
const MAX_BODY: usize = 64 << 20;

/// Reads every message of `$data` as `$t`, as the receiving end does (the body, then the
/// message decoded in place), and checks each accepted one round-trips.
macro_rules! read_all {
    ($data:expr, $t:ty) => {{
        let mut input: &[u8] = $data;
        loop {
            let before = input;
            let Ok(Some(body)) = ipc::recv_body(&mut input, MAX_BODY) else {
                break;
            };
            let Ok(message) = ipc::decode::<$t>(&body) else {
                break;
            };
            // postcard accepts over-long varints, so the bytes read need not be the
            // canonical ones; what it writes must read back to the same bytes.
            let mut once = Vec::new();
            ipc::send(&mut once, &message).expect("encode an accepted message");
            let mut reread = &once[..];
            let body_again = ipc::recv_body(&mut reread, MAX_BODY)
                .expect("read back what was written")
                .expect("one message");
            let again = ipc::decode::<$t>(&body_again).expect("decode what was written");
            let mut twice = Vec::new();
            ipc::send(&mut twice, &again).expect("encode it again");
            assert_eq!(once, twice, "a message changed on a round trip");
            assert!(before.len() > input.len(), "a message consumed no bytes");
        }
    }};
}

fuzz_target!(|data: &[u8]| {
    read_all!(data, ipc::Request);
    read_all!(data, ipc::Reply);
});
