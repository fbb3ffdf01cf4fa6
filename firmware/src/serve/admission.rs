//! Admission: which link may open an upload, hold buffered bytes and a socket slot, and
//! for how long, so that no client can keep a resource another client needs.
//!
//! Pure state and decisions, with time passed in: the supervisor loop calls it with
//! `Instant::now()`, the tests with instants they advance by hand.
//!
//! The rules (PROTOCOL.md 7):
//! - A link holds at most `per_link_uploads` open uploads; the device at most `max_uploads`.
//! - An upload must keep moving: no gap between chunks longer than `upload_idle`, and the
//!   whole upload within `grace + total_len / min_rate` of its link. An upload that breaks
//!   either rule is dropped and its host gets an `Error` (`TimedOut`).
//! - Refused uploads wait in line: when capacity frees up, the links that were refused
//!   first get it first, so a client that re-opens uploads as fast as they expire cannot
//!   starve one that retries politely.
//! - A socket connection that has not said `Hello` within `hello_timeout` is closed; at the
//!   connection limit, the connection idle longest is closed to make room for a new one if
//!   it has been idle for `evict_idle`, otherwise the newcomer is refused.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::link::{LinkId, LinkKind};

#[derive(Debug, Clone)]
pub struct AdmissionLimits {
    pub max_uploads: usize,
    pub per_link_uploads: usize,
    pub max_file_bytes: u64,
    /// Bytes the device holds for open uploads and queued jobs together.
    pub pending_bytes: u64,
    pub upload_idle: Duration,
    pub upload_grace: Duration,
    /// Slowest average a socket upload may have (bytes per second).
    pub socket_min_rate: u64,
    pub max_clients: usize,
    pub hello_timeout: Duration,
    pub evict_idle: Duration,
    /// How long a refused link keeps its place in line without asking again.
    pub wait_hold: Duration,
}

/// An `UploadBegin` as admission sees it.
#[derive(Debug, Clone)]
pub struct BeginRequest {
    pub link: LinkId,
    /// The frame's seq: errors about this upload answer it.
    pub seq: u32,
    pub upload_id: u32,
    pub total_len: u32,
    pub name: String,
}

/// One upload being received.
#[derive(Debug)]
pub struct Upload {
    pub seq: u32,
    pub upload_id: u32,
    pub total_len: u32,
    pub name: String,
    pub bytes: Vec<u8>,
    /// SHA-256 of `bytes`, kept up to date chunk by chunk: checking a large upload at its
    /// end costs no more than a small one (the supervisor loop never hashes a whole file).
    hasher: Sha256,
    began: Instant,
    last_activity: Instant,
    deadline: Instant,
}

impl Upload {
    /// SHA-256 of the bytes received so far.
    pub fn sha256(&self) -> [u8; 32] {
        self.hasher.clone().finalize().into()
    }
}

#[derive(Debug)]
struct LinkUse {
    kind: LinkKind,
    /// Bytes per second the link can carry at worst; uploads slower than this are stalled.
    min_rate: u64,
    hello: bool,
    opened: Instant,
    last_frame: Instant,
}

/// Why an `UploadBegin` was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Above the device's file limit: an `Error TooLarge`.
    TooLarge { len: u64, max: u64 },
    /// Zero bytes announced: an `Error UploadMismatch`.
    Empty,
    /// This link already holds its share: an `Error Busy` naming the limit.
    LinkLimit { open: usize, max: usize },
    /// The device is full for now: a `Busy` message; the link keeps its place in line.
    Busy,
}

/// Why a chunk was refused; the upload is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkProblem {
    NoUpload(u32),
    Offset { offset: u32, received: usize },
    Overrun { total_len: u32 },
}

impl std::fmt::Display for ChunkProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChunkProblem::NoUpload(id) => write!(f, "no upload {id} is open on this link"),
            ChunkProblem::Offset { offset, received } => {
                write!(f, "chunk offset {offset} but {received} bytes received")
            }
            ChunkProblem::Overrun { total_len } => {
                write!(f, "chunks exceed the announced {total_len} bytes")
            }
        }
    }
}

/// Something the supervisor must tell a host and act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expired {
    /// An upload was dropped; its host gets an `Error TimedOut` answering its begin.
    Upload {
        link: LinkId,
        seq: u32,
        upload_id: u32,
        why: String,
    },
    /// A connection that never said Hello is closed.
    NoHello { link: LinkId, after: Duration },
}

/// What to do with a new socket connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arrival {
    Accept,
    /// Accept it, and close this idle connection (told why) to stay within the limit.
    AcceptEvicting {
        link: LinkId,
        idle: Duration,
    },
    /// Refuse it: every connection is in use and none has been idle long enough.
    Refuse,
}

#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    links: HashMap<LinkId, LinkUse>,
    uploads: HashMap<(LinkId, u32), Upload>,
    upload_bytes: u64,
    /// Links refused for capacity, oldest first, with when they last asked.
    waiting: VecDeque<(LinkId, Instant)>,
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Self {
        Admission {
            limits,
            links: HashMap::new(),
            uploads: HashMap::new(),
            upload_bytes: 0,
            waiting: VecDeque::new(),
        }
    }

    /// Bytes announced by the open uploads.
    pub fn upload_bytes(&self) -> u64 {
        self.upload_bytes
    }

    #[cfg(test)]
    fn open_uploads(&self) -> usize {
        self.uploads.len()
    }

    /// A link came up. `min_rate` is the slowest a healthy upload on it may be (bytes/s);
    /// sockets use the configured rate. For a socket, the answer says whether to keep it.
    pub fn link_up(
        &mut self,
        link: LinkId,
        kind: LinkKind,
        min_rate: Option<u64>,
        now: Instant,
    ) -> Arrival {
        let arrival = if kind == LinkKind::Socket {
            self.arrival(now)
        } else {
            Arrival::Accept
        };
        if arrival != Arrival::Refuse {
            self.links.insert(
                link,
                LinkUse {
                    kind,
                    min_rate: min_rate.unwrap_or(self.limits.socket_min_rate).max(1),
                    hello: false,
                    opened: now,
                    last_frame: now,
                },
            );
        }
        arrival
    }

    fn arrival(&self, now: Instant) -> Arrival {
        let sockets = self
            .links
            .values()
            .filter(|l| l.kind == LinkKind::Socket)
            .count();
        if sockets < self.limits.max_clients {
            return Arrival::Accept;
        }
        // The connection idle longest, among those with no upload open (an upload in
        // progress is activity the idle rule must not cut).
        let victim = self
            .links
            .iter()
            .filter(|(id, l)| l.kind == LinkKind::Socket && !self.has_uploads(**id))
            .map(|(id, l)| (*id, now.saturating_duration_since(l.last_frame)))
            .max_by_key(|(id, idle)| (*idle, std::cmp::Reverse(*id)));
        match victim {
            Some((link, idle)) if idle >= self.limits.evict_idle => {
                Arrival::AcceptEvicting { link, idle }
            }
            _ => Arrival::Refuse,
        }
    }

    fn has_uploads(&self, link: LinkId) -> bool {
        self.uploads.keys().any(|(l, _)| *l == link)
    }

    /// A link went down (or was closed): its uploads and its place in line go with it.
    /// Returns the bytes released.
    pub fn link_down(&mut self, link: LinkId) -> u64 {
        self.links.remove(&link);
        self.waiting.retain(|(l, _)| *l != link);
        let gone: Vec<_> = self
            .uploads
            .keys()
            .filter(|(l, _)| *l == link)
            .copied()
            .collect();
        gone.into_iter()
            .filter_map(|key| self.remove(key))
            .map(|u| u64::from(u.total_len))
            .sum()
    }

    /// Any frame received on `link`.
    pub fn frame(&mut self, link: LinkId, now: Instant) {
        if let Some(l) = self.links.get_mut(&link) {
            l.last_frame = now;
        }
    }

    pub fn hello(&mut self, link: LinkId) {
        if let Some(l) = self.links.get_mut(&link) {
            l.hello = true;
        }
    }

    /// An `UploadBegin`. `held_elsewhere` are the bytes of queued jobs, and `room` whether
    /// the rest of the device (queue, outbox) can take one more request.
    pub fn begin(
        &mut self,
        request: BeginRequest,
        held_elsewhere: u64,
        room: bool,
        now: Instant,
    ) -> Result<(), Refusal> {
        let BeginRequest {
            link,
            seq,
            upload_id,
            total_len,
            name,
        } = request;
        let len = u64::from(total_len);
        if len > self.limits.max_file_bytes {
            return Err(Refusal::TooLarge {
                len,
                max: self.limits.max_file_bytes,
            });
        }
        if total_len == 0 {
            return Err(Refusal::Empty);
        }
        // Restarting an upload with the same id replaces it (PROTOCOL.md 4).
        self.remove((link, upload_id));
        let open = self.uploads.keys().filter(|(l, _)| *l == link).count();
        if open >= self.limits.per_link_uploads {
            return Err(Refusal::LinkLimit {
                open,
                max: self.limits.per_link_uploads,
            });
        }
        self.forget_stale_waiters(now);
        let fits = room
            && self.uploads.len() < self.limits.max_uploads
            && self.upload_bytes + held_elsewhere + len <= self.limits.pending_bytes;
        // Free slots go to the links in line first, in order.
        let free = self.limits.max_uploads.saturating_sub(self.uploads.len());
        let in_line = self.waiting.iter().position(|(l, _)| *l == link);
        let my_turn = match in_line {
            Some(pos) => pos < free.max(1),
            None => self.waiting.is_empty(),
        };
        if !(fits && my_turn) {
            match in_line {
                Some(pos) => self.waiting[pos].1 = now,
                None => self.waiting.push_back((link, now)),
            }
            return Err(Refusal::Busy);
        }
        if let Some(pos) = in_line {
            self.waiting.remove(pos);
        }
        let min_rate = self.links.get(&link).map_or(1, |l| l.min_rate);
        let deadline =
            now + self.limits.upload_grace + Duration::from_secs_f64(len as f64 / min_rate as f64);
        self.upload_bytes += len;
        self.uploads.insert(
            (link, upload_id),
            Upload {
                seq,
                upload_id,
                total_len,
                name,
                bytes: Vec::new(),
                hasher: Sha256::new(),
                began: now,
                last_activity: now,
                deadline,
            },
        );
        Ok(())
    }

    fn forget_stale_waiters(&mut self, now: Instant) {
        let hold = self.limits.wait_hold;
        self.waiting
            .retain(|(_, asked)| now.saturating_duration_since(*asked) <= hold);
    }

    /// An `UploadChunk`. On a problem the upload is dropped.
    pub fn chunk(
        &mut self,
        link: LinkId,
        upload_id: u32,
        offset: u32,
        data: &[u8],
        now: Instant,
    ) -> Result<(), ChunkProblem> {
        let key = (link, upload_id);
        let Some(u) = self.uploads.get_mut(&key) else {
            return Err(ChunkProblem::NoUpload(upload_id));
        };
        let problem = if offset as usize != u.bytes.len() {
            Some(ChunkProblem::Offset {
                offset,
                received: u.bytes.len(),
            })
        } else if u.bytes.len() + data.len() > u.total_len as usize {
            Some(ChunkProblem::Overrun {
                total_len: u.total_len,
            })
        } else {
            None
        };
        if let Some(p) = problem {
            self.remove(key);
            return Err(p);
        }
        if u.bytes.is_empty() {
            // Reserve once: total_len is bounded by the file limit checked at begin.
            u.bytes.reserve_exact(u.total_len as usize);
        }
        u.bytes.extend_from_slice(data);
        u.hasher.update(data);
        u.last_activity = now;
        Ok(())
    }

    /// An `UploadEnd`: the upload leaves admission (complete or not; the caller checks).
    pub fn end(&mut self, link: LinkId, upload_id: u32) -> Option<Upload> {
        self.remove((link, upload_id))
    }

    fn remove(&mut self, key: (LinkId, u32)) -> Option<Upload> {
        let u = self.uploads.remove(&key)?;
        self.upload_bytes -= u64::from(u.total_len);
        Some(u)
    }

    /// Drops stalled uploads and flags connections that never said Hello.
    pub fn expire(&mut self, now: Instant) -> Vec<Expired> {
        let mut out = Vec::new();
        let idle = self.limits.upload_idle;
        let stalled: Vec<((LinkId, u32), u32, String)> = self
            .uploads
            .iter()
            .filter_map(|(key, u)| {
                let quiet = now.saturating_duration_since(u.last_activity);
                if quiet > idle {
                    Some((
                        *key,
                        u.seq,
                        format!(
                            "upload {} dropped: no chunk for {:.1} s (limit {:.1} s)",
                            u.upload_id,
                            quiet.as_secs_f32(),
                            idle.as_secs_f32()
                        ),
                    ))
                } else if now > u.deadline {
                    Some((
                        *key,
                        u.seq,
                        format!(
                            "upload {} dropped: {} of {} bytes after {:.1} s, slower than this link's minimum",
                            u.upload_id,
                            u.bytes.len(),
                            u.total_len,
                            now.saturating_duration_since(u.began).as_secs_f32()
                        ),
                    ))
                } else {
                    None
                }
            })
            .collect();
        for (key, seq, why) in stalled {
            self.remove(key);
            out.push(Expired::Upload {
                link: key.0,
                seq,
                upload_id: key.1,
                why,
            });
        }
        for (id, l) in &self.links {
            let after = now.saturating_duration_since(l.opened);
            if l.kind == LinkKind::Socket && !l.hello && after > self.limits.hello_timeout {
                out.push(Expired::NoHello { link: *id, after });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn limits() -> AdmissionLimits {
        AdmissionLimits {
            max_uploads: 4,
            per_link_uploads: 2,
            max_file_bytes: 64 * MIB,
            pending_bytes: 96 * MIB,
            upload_idle: Duration::from_secs(5),
            upload_grace: Duration::from_secs(5),
            socket_min_rate: 16 * MIB,
            max_clients: 8,
            hello_timeout: Duration::from_secs(5),
            evict_idle: Duration::from_secs(30),
            wait_hold: Duration::from_secs(3),
        }
    }

    fn admission_with(n: u64, t0: Instant) -> Admission {
        let mut a = Admission::new(limits());
        for id in 1..=n {
            assert_eq!(a.link_up(id, LinkKind::Socket, None, t0), Arrival::Accept);
            a.hello(id);
        }
        a
    }

    fn req(link: LinkId, upload_id: u32, total_len: u32) -> BeginRequest {
        BeginRequest {
            link,
            seq: upload_id + 100,
            upload_id,
            total_len,
            name: format!("{link}-{upload_id}"),
        }
    }

    fn begin(
        a: &mut Admission,
        link: LinkId,
        id: u32,
        len: u32,
        now: Instant,
    ) -> Result<(), Refusal> {
        a.begin(req(link, id, len), 0, true, now)
    }

    #[test]
    fn one_link_cannot_take_every_upload_slot() {
        let t0 = Instant::now();
        let mut a = admission_with(2, t0);
        begin(&mut a, 1, 1, 100, t0).unwrap();
        begin(&mut a, 1, 2, 100, t0).unwrap();
        assert_eq!(
            begin(&mut a, 1, 3, 100, t0),
            Err(Refusal::LinkLimit { open: 2, max: 2 })
        );
        // The other link still gets in.
        begin(&mut a, 2, 1, 100, t0).unwrap();
        assert_eq!(a.open_uploads(), 3);
    }

    #[test]
    fn limits_and_restart_of_the_same_id() {
        let t0 = Instant::now();
        let mut a = admission_with(1, t0);
        assert_eq!(
            begin(&mut a, 1, 1, (64 * MIB + 1) as u32, t0),
            Err(Refusal::TooLarge {
                len: 64 * MIB + 1,
                max: 64 * MIB
            })
        );
        assert_eq!(begin(&mut a, 1, 1, 0, t0), Err(Refusal::Empty));
        begin(&mut a, 1, 7, 1000, t0).unwrap();
        a.chunk(1, 7, 0, &[1; 10], t0).unwrap();
        // Same id again: replaced, not counted twice.
        begin(&mut a, 1, 7, 500, t0).unwrap();
        assert_eq!((a.open_uploads(), a.upload_bytes()), (1, 500));
        assert_eq!(
            a.chunk(1, 7, 10, &[1; 10], t0),
            Err(ChunkProblem::Offset {
                offset: 10,
                received: 0
            })
        );
        assert_eq!(a.open_uploads(), 0, "a bad chunk drops the upload");
        assert_eq!(a.upload_bytes(), 0);
        // Queued jobs' bytes count against the device's pending bytes.
        assert_eq!(
            a.begin(req(1, 8, (40 * MIB) as u32), 60 * MIB, true, t0),
            Err(Refusal::Busy)
        );
        assert_eq!(
            a.begin(req(1, 9, 10), 0, false, t0),
            Err(Refusal::Busy),
            "no room in the queue or outbox"
        );
    }

    #[test]
    fn chunks_assemble_the_upload_and_an_overrun_drops_it() {
        let t0 = Instant::now();
        let mut a = admission_with(1, t0);
        begin(&mut a, 1, 1, 6, t0).unwrap();
        a.chunk(1, 1, 0, b"abc", t0).unwrap();
        a.chunk(1, 1, 3, b"def", t0).unwrap();
        let u = a.end(1, 1).unwrap();
        assert_eq!(
            (u.bytes.as_slice(), u.total_len, u.name.as_str()),
            (&b"abcdef"[..], 6, "1-1")
        );
        let whole: [u8; 32] = Sha256::digest(b"abcdef").into();
        assert_eq!(
            u.sha256(),
            whole,
            "the digest kept chunk by chunk is the file's"
        );
        assert!(a.end(1, 1).is_none());
        begin(&mut a, 1, 2, 4, t0).unwrap();
        assert_eq!(
            a.chunk(1, 2, 0, b"abcde", t0),
            Err(ChunkProblem::Overrun { total_len: 4 })
        );
        assert_eq!(a.chunk(1, 2, 0, b"a", t0), Err(ChunkProblem::NoUpload(2)));
        assert_eq!(a.upload_bytes(), 0);
    }

    #[test]
    fn an_idle_upload_is_dropped_and_its_host_told() {
        let t0 = Instant::now();
        let mut a = admission_with(1, t0);
        // 64 MiB: 5 s grace + 4 s at 16 MiB/s, so only the idle rule can end it at 9.1 s.
        begin(&mut a, 1, 1, (64 * MIB) as u32, t0).unwrap();
        a.chunk(1, 1, 0, &[0; 100], t0 + Duration::from_secs(4))
            .unwrap();
        assert!(
            a.expire(t0 + Duration::from_secs(9)).is_empty(),
            "5 s gap is allowed"
        );
        let e = a.expire(t0 + Duration::from_millis(9100));
        assert!(
            matches!(&e[..], [Expired::Upload { link: 1, seq: 101, upload_id: 1, why }] if why.contains("no chunk for 5.1 s")),
            "{e:?}"
        );
        assert_eq!((a.open_uploads(), a.upload_bytes()), (0, 0));
    }

    #[test]
    fn a_trickling_upload_is_dropped_at_its_rate_deadline() {
        // One byte every 4 s never trips the idle rule; the rate deadline ends it.
        let t0 = Instant::now();
        let mut a = admission_with(1, t0);
        let len = (32 * MIB) as u32; // 5 s grace + 2 s at 16 MiB/s
        begin(&mut a, 1, 1, len, t0).unwrap();
        let mut t = t0;
        for off in 0..3u32 {
            t += Duration::from_secs(2);
            a.chunk(1, 1, off, &[0], t).unwrap();
            assert!(a.expire(t).is_empty());
        }
        assert!(a.expire(t0 + Duration::from_secs(7)).is_empty());
        let e = a.expire(t0 + Duration::from_millis(7100));
        assert!(
            matches!(&e[..], [Expired::Upload { why, .. }] if why.contains("3 of 33554432 bytes")),
            "{e:?}"
        );
        // A serial link's own slower rate gives its uploads more time.
        let mut a = Admission::new(limits());
        a.link_up(9, LinkKind::Serial, Some(5760), t0);
        a.begin(req(9, 1, 57_600), 0, true, t0).unwrap();
        let mut t = t0;
        for i in 0..11u32 {
            t += Duration::from_secs(1);
            a.chunk(9, 1, i * 5000, &[0; 5000], t).unwrap();
            assert!(a.expire(t).is_empty(), "at {i} s");
        }
    }

    #[test]
    fn refused_links_are_served_in_order_before_greedy_ones() {
        let t0 = Instant::now();
        let mut a = admission_with(4, t0);
        // Links 1 and 2 (greedy) fill the device.
        for (link, id) in [(1, 1), (1, 2), (2, 1), (2, 2)] {
            begin(&mut a, link, id, 100, t0).unwrap();
        }
        // Link 3 (polite) is refused and takes its place in line.
        assert_eq!(begin(&mut a, 3, 1, 100, t0), Err(Refusal::Busy));
        // A slot frees up; greedy link 1 asks first, but link 3 is in line.
        let t1 = t0 + Duration::from_millis(200);
        a.end(1, 1).unwrap();
        assert_eq!(begin(&mut a, 1, 3, 100, t1), Err(Refusal::Busy));
        let t2 = t0 + Duration::from_millis(500);
        begin(&mut a, 3, 1, 100, t2).unwrap();
        // Link 1 got in line behind link 3 and is next.
        a.end(2, 1).unwrap();
        assert_eq!(begin(&mut a, 4, 1, 100, t2), Err(Refusal::Busy));
        begin(&mut a, 1, 3, 100, t2).unwrap();
        // A link that stops asking loses its place after `wait_hold`.
        a.end(2, 2).unwrap();
        let t3 = t2 + Duration::from_secs(4);
        begin(&mut a, 2, 3, 100, t3).unwrap();
    }

    #[test]
    fn a_waiting_link_that_goes_away_does_not_block_the_line() {
        let t0 = Instant::now();
        let mut a = admission_with(5, t0);
        for (link, id) in [(1, 1), (1, 2), (2, 1), (2, 2)] {
            begin(&mut a, link, id, 100, t0).unwrap();
        }
        assert_eq!(begin(&mut a, 3, 1, 100, t0), Err(Refusal::Busy));
        assert_eq!(a.link_down(3), 0);
        assert_eq!(a.link_down(1), 200, "link 1's two uploads released");
        begin(&mut a, 4, 1, 100, t0).unwrap();
    }

    #[test]
    fn connections_without_hello_expire_and_idle_ones_make_room() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits());
        for id in 1..=8 {
            assert_eq!(a.link_up(id, LinkKind::Socket, None, t0), Arrival::Accept);
        }
        // The serial link never counts against the socket limit.
        assert_eq!(
            a.link_up(100, LinkKind::Serial, Some(5760), t0),
            Arrival::Accept
        );
        for id in 1..=7 {
            a.hello(id);
        }
        let t1 = t0 + Duration::from_secs(6);
        assert_eq!(
            a.expire(t1),
            vec![Expired::NoHello {
                link: 8,
                after: Duration::from_secs(6)
            }]
        );
        a.link_down(8);
        assert_eq!(a.link_up(9, LinkKind::Socket, None, t1), Arrival::Accept);
        // Full: nobody idle long enough yet, so a newcomer is refused.
        let t2 = t0 + Duration::from_secs(20);
        for id in 2..=7 {
            a.frame(id, t2);
        }
        a.frame(9, t2);
        assert_eq!(a.link_up(10, LinkKind::Socket, None, t2), Arrival::Refuse);
        // Link 1 has been silent for 30 s: it makes room.
        let t3 = t0 + Duration::from_secs(30);
        assert_eq!(
            a.link_up(10, LinkKind::Socket, None, t3),
            Arrival::AcceptEvicting {
                link: 1,
                idle: Duration::from_secs(30)
            }
        );
        // A connection with an upload open is never the one evicted.
        let mut a = admission_with(8, t0);
        begin(&mut a, 1, 1, 100, t0).unwrap();
        let t4 = t0 + Duration::from_secs(31);
        for id in 2..=8 {
            a.frame(id, t0 + Duration::from_secs(1));
        }
        assert!(matches!(
            a.link_up(20, LinkKind::Socket, None, t4),
            Arrival::AcceptEvicting { link: 2, .. }
        ));
    }
}
