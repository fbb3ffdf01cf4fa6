//! Fuzz target: arbitrary bytes as the pipe between the supervisor and a worker, read both
//! ways (the worker reads requests, the supervisor reads replies). Reading must never
//! panic, never allocate more than the bytes that arrived (run with -malloc_limit_mb), and
//! every message it accepts must encode back to the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The module itself, not a copy: the binary crate has no library to depend on.
#[allow(dead_code)]
#[path = "../../src/serve/ipc.rs"]
mod ipc;

fn read_all<T>(data: &[u8])
where
    T: serde::Serialize + for<'de> serde::Deserialize<'de>,
{
    let mut input = data;
    loop {
        let before = input;
        match ipc::recv::<T>(&mut input) {
            Ok(Some(message)) => {
                let consumed = before.len() - input.len();
                let mut again = Vec::new();
                ipc::send(&mut again, &message).expect("encode an accepted message");
                // postcard has one encoding per value, so the bytes must come back.
                assert_eq!(
                    again,
                    &before[..consumed],
                    "re-encoding changed the message"
                );
            }
            Ok(None) | Err(_) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    read_all::<ipc::Request>(data);
    read_all::<ipc::Reply>(data);
});
