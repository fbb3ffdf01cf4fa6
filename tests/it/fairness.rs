//! Fair service on the real daemon: clients that hold uploads open, trickle bytes, or
//! connect and say nothing cannot keep a well-behaved client waiting for more than the
//! device's bound (10 s with the default configuration).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgedx_ctl::Client;
use edgedx_icd::{ErrorCode, FormatHint, Message, UploadBegin, UploadChunk};

use crate::daemon::{sample, Daemon, Opts, T};

/// The bound PROTOCOL.md section 7 promises a well-behaved client with the defaults.
const SERVED_WITHIN: Duration = Duration::from_secs(10);

fn begin(c: &mut Client, upload_id: u32, total_len: u32) -> u32 {
    c.send(&Message::UploadBegin(UploadBegin {
        upload_id,
        total_len,
        format: FormatHint::Auto,
        name: "held".try_into().unwrap(),
    }))
    .unwrap()
}

/// The next Error frame answering `seq`, within `timeout`.
fn error_for(c: &mut Client, seq: u32, timeout: Duration) -> Option<edgedx_icd::ErrorMessage> {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if let Some(f) = c.recv(until - Instant::now()).unwrap() {
            if let Message::Error(e) = f.message {
                if e.in_reply_to == Some(seq) {
                    return Some(e);
                }
            }
        }
    }
    None
}

fn polite_classify(d: &Daemon) -> Duration {
    let started = Instant::now();
    let mut c = d.client();
    let r = c
        .classify_bytes("g.png", &std::fs::read(sample("glioma-01.png")).unwrap(), T)
        .unwrap();
    assert_eq!(r.label.as_str(), "glioma");
    started.elapsed()
}

#[test]
fn uploads_left_open_cost_their_own_client_only_and_are_dropped_with_an_error() {
    let d = Daemon::start_with(Opts {
        sim_clock: true,
        ..Opts::default()
    });
    let mut holder = d.client();
    let first = begin(&mut holder, 1, 1000);
    let second = begin(&mut holder, 2, 1000);
    let third = begin(&mut holder, 3, 1000);
    let e = error_for(&mut holder, third, T).expect("the third upload is refused");
    assert_eq!(e.code, ErrorCode::Busy);
    assert!(e.text.contains("2 uploads open"), "{}", e.text);
    // Another client is served while the two uploads are held.
    let took = polite_classify(&d);
    assert!(took < SERVED_WITHIN, "{took:?}");
    // The abandoned uploads are dropped after the idle limit (5 s, crossed on the
    // daemon's clock) and their host is told, in reply to each UploadBegin.
    d.advance_clock(Duration::from_secs(6));
    let mut answered = Vec::new();
    let until = Instant::now() + Duration::from_secs(30);
    while answered.len() < 2 && Instant::now() < until {
        let Some(f) = holder.recv(Duration::from_secs(1)).unwrap() else {
            continue;
        };
        if let Message::Error(e) = f.message {
            assert_eq!(e.code, ErrorCode::TimedOut, "{e:?}");
            assert!(e.text.contains("no chunk for"), "{}", e.text);
            answered.extend(e.in_reply_to);
        }
    }
    answered.sort();
    assert_eq!(answered, [first, second], "one error per abandoned upload");
}

#[test]
fn a_trickling_upload_is_dropped_at_its_rate_deadline() {
    // 64 KiB/s minimum and 1 s grace: a 640 KiB upload must finish within 11 s of the
    // daemon's clock, which the test moves (real time passes too, a few seconds at most).
    let d = Daemon::start_with(Opts {
        extra: "[limits]\nupload_grace_ms = 1000\nsocket_min_rate = 65536\n",
        sim_clock: true,
        ..Opts::default()
    });
    let mut c = d.client();
    let seq = begin(&mut c, 1, 640 * 1024);
    let mut offset = 0u32;
    let mut trickle = |c: &mut Client| {
        c.send(&Message::UploadChunk(UploadChunk {
            upload_id: 1,
            offset,
            data: heapless::Vec::from_slice(&[0]).unwrap(),
        }))
        .unwrap();
        offset += 1;
        error_for(c, seq, Duration::from_millis(600))
    };
    // A byte every 2 s never trips the idle limit; within the deadline it is kept.
    for _ in 0..2 {
        d.advance_clock(Duration::from_secs(2));
        if let Some(e) = trickle(&mut c) {
            panic!("dropped before its 11 s deadline: {e:?}");
        }
    }
    d.advance_clock(Duration::from_secs(8));
    let mut answer = trickle(&mut c);
    let until = Instant::now() + Duration::from_secs(20);
    while answer.is_none() && Instant::now() < until {
        answer = trickle(&mut c);
    }
    let e = answer.expect("the trickling upload was never dropped");
    assert_eq!(e.code, ErrorCode::TimedOut);
    assert!(e.text.contains("slower than"), "{}", e.text);
}

#[test]
fn connections_that_never_say_hello_cannot_lock_the_others_out() {
    let d = Daemon::start_with(Opts {
        sim_clock: true,
        ..Opts::default()
    });
    // Eight silent connections fill every socket slot, until their Hello timeout (5 s,
    // crossed on the daemon's clock).
    let mut silent: Vec<_> = (0..8)
        .map(|_| std::os::unix::net::UnixStream::connect(&d.socket).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    d.advance_clock(Duration::from_secs(6));
    let started = Instant::now();
    let mut c = loop {
        let mut c = Client::socket(&d.socket).unwrap();
        if c.hello("polite", Duration::from_secs(1)).is_ok() {
            break c;
        }
        assert!(
            started.elapsed() < SERVED_WITHIN,
            "no connection admitted within {SERVED_WITHIN:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    c.ping(1, T).unwrap();
    // A silent connection is told why it is closed, then sees the end of the stream.
    use std::io::Read;
    let s = &mut silent[0];
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    let frames: Vec<_> = edgedx_icd::FrameDecoder::new()
        .feed(&got)
        .filter_map(Result::ok)
        .collect();
    assert!(
        frames.iter().any(|f| matches!(&f.message,
            Message::Error(e) if e.code == ErrorCode::TimedOut && e.text.contains("no Hello"))),
        "{frames:?}"
    );
}

#[test]
fn greedy_clients_cannot_starve_a_polite_one() {
    let d = Daemon::start();
    let stop = Arc::new(AtomicBool::new(false));
    // Three clients that grab every upload slot they can and never send a byte: each
    // re-opens uploads every 100 ms, so a slot freed by the idle limit is contested at
    // once.
    let greedy: Vec<_> = (0..3)
        .map(|g| {
            let mut c = d.client();
            c.hello(&format!("greedy-{g}"), T).unwrap();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut id = 1u32;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..2 {
                        begin(&mut c, id, 4096);
                        id += 1;
                    }
                    while c.recv(Duration::from_millis(100)).unwrap().is_some() {}
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let took = polite_classify(&d);
    stop.store(true, Ordering::Relaxed);
    for g in greedy {
        g.join().unwrap();
    }
    assert!(took < SERVED_WITHIN, "served after {took:?}");
}
