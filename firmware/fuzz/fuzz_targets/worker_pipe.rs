//! Fuzz target: arbitrary bytes as the pipe between the supervisor and a worker, read both
//! ways (the worker reads requests, the supervisor reads replies). Reading must never
//! panic, never allocate more than the bytes that arrived (run with -malloc_limit_mb), and
//! every message it accepts must survive a write and a read unchanged.
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
                // postcard accepts over-long varints, so the bytes read need not be the
                // canonical ones; what it writes must read back to the same bytes.
                let mut once = Vec::new();
                ipc::send(&mut once, &message).expect("encode an accepted message");
                let again: T = ipc::recv(&mut &once[..])
                    .expect("read back what was written")
                    .expect("one message");
                let mut twice = Vec::new();
                ipc::send(&mut twice, &again).expect("encode it again");
                assert_eq!(once, twice, "a message changed on a round trip");
                assert!(before.len() > input.len(), "a message consumed no bytes");
            }
            Ok(None) | Err(_) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    read_all::<ipc::Request>(data);
    read_all::<ipc::Reply>(data);
});
