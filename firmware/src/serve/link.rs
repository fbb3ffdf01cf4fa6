//! Links: the local Unix socket (many clients) and the serial line (one host). Each link
//! has a reader thread that decodes frames and a writer thread fed by a bounded queue, so
//! a client that stops reading can never stall the supervisor or the other clients.

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;

use anyhow::{bail, Context};
use edgedx_icd::{DecodeError, Frame, FrameDecoder};

pub type LinkId = u64;

/// Frames waiting to be written to one link. A socket client that lets this fill up is
/// disconnected (it gets its unacknowledged results again when it reconnects); on the
/// serial line the frames are dropped and counted.
pub const LINK_QUEUE_FRAMES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    Socket,
    Serial,
}

// Frames are moved once through a channel; boxing them would add an allocation per frame.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum LinkEvent {
    Up {
        kind: LinkKind,
        writer: LinkWriter,
        peer: String,
    },
    Frame(Frame),
    Bad(DecodeError),
    Down,
}

/// What the writer thread of a link is asked to do, in order.
enum Out {
    Frame(Vec<u8>),
    /// Close the connection once everything before has been written.
    Close,
}

/// The supervisor's handle for sending to one link.
pub struct LinkWriter {
    kind: LinkKind,
    tx: SyncSender<Out>,
    /// Frames queued and not yet written (the writer thread counts them down).
    backlog: Arc<AtomicUsize>,
    closer: Option<Box<dyn Fn() + Send>>,
}

impl std::fmt::Debug for LinkWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkWriter")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// What happened to a frame handed to [`LinkWriter::send`].
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    Queued,
    /// The link's queue was full: the frame was dropped (serial) or the client cut (socket).
    Overflow,
    Closed,
}

impl LinkWriter {
    pub fn kind(&self) -> LinkKind {
        self.kind
    }

    /// Closes a socket connection after the frames already queued (e.g. the `Error` that
    /// says why) have been written; if the queue is full, at once.
    pub fn close_after_queued(&self) {
        if self.kind != LinkKind::Socket {
            return;
        }
        if self.tx.try_send(Out::Close).is_err() {
            if let Some(close) = &self.closer {
                close();
            }
        }
    }

    /// Frames queued on this link and not yet written: replays fill the queue only up to
    /// a part of it, so that they never crowd out new results or cut a client off.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::SeqCst)
    }

    pub fn send(&self, frame: Vec<u8>) -> Sent {
        // Counted before it is queued: the writer may write it and count down at once.
        self.backlog.fetch_add(1, Ordering::SeqCst);
        let sent = self.tx.try_send(Out::Frame(frame));
        if sent.is_err() {
            self.backlog.fetch_sub(1, Ordering::SeqCst);
        }
        match sent {
            Ok(()) => Sent::Queued,
            Err(TrySendError::Full(_)) => {
                if let Some(close) = &self.closer {
                    close();
                }
                Sent::Overflow
            }
            Err(TrySendError::Disconnected(_)) => Sent::Closed,
        }
    }
}

static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

fn next_id() -> LinkId {
    NEXT_LINK.fetch_add(1, Ordering::Relaxed)
}

/// Reads bytes, feeds the frame decoder and forwards frames until the stream ends.
/// `read` returns `Ok(None)` when the stream is closed and `Ok(Some(0))` on a timeout.
fn pump<E>(
    id: LinkId,
    mut read: impl FnMut(&mut [u8]) -> io::Result<Option<usize>>,
    events: &SyncSender<E>,
    wrap: fn(LinkId, LinkEvent) -> E,
) {
    let mut decoder = FrameDecoder::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match read(&mut buf) {
            Ok(Some(n)) => n,
            Ok(None) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::info!("link {id}: read error: {e}");
                break;
            }
        };
        for item in decoder.feed(&buf[..n]) {
            let event = match item {
                Ok(frame) => LinkEvent::Frame(frame),
                Err(e) => LinkEvent::Bad(e),
            };
            if events.send(wrap(id, event)).is_err() {
                return;
            }
        }
    }
    let _ = events.send(wrap(id, LinkEvent::Down));
}

fn writer_thread(
    name: String,
    mut write: impl FnMut(&[u8]) -> io::Result<()> + Send + 'static,
    close: impl FnOnce() + Send + 'static,
) -> io::Result<(SyncSender<Out>, Arc<AtomicUsize>)> {
    let (tx, rx) = mpsc::sync_channel::<Out>(LINK_QUEUE_FRAMES);
    let backlog = Arc::new(AtomicUsize::new(0));
    let written = Arc::clone(&backlog);
    thread::Builder::new().name(name).spawn(move || {
        // A leading delimiter closes off any noise the peer saw before (PROTOCOL.md 1.4).
        if write(&[0]).is_err() {
            return;
        }
        for out in rx {
            match out {
                Out::Frame(frame) => {
                    let ok = write(&frame).is_ok();
                    written.fetch_sub(1, Ordering::SeqCst);
                    if !ok {
                        break;
                    }
                }
                Out::Close => break,
            }
        }
        close();
    })?;
    Ok((tx, backlog))
}

/// Binds the socket: removes a stale socket file (nothing listening), refuses to take over
/// a live one or a path that is not a socket, then sets mode and group.
pub fn bind_socket(path: &Path, mode: u32, group: Option<&str>) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            );
        }
        if UnixStream::connect(path).is_ok() {
            bail!("{} is in use by another running daemon", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
        log::info!("removed stale socket file {}", path.display());
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    // bind() applies the umask (0755 under 022): set the mode the configuration asks for.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", path.display()))?;
    if let Some(group) = group {
        let g = nix::unistd::Group::from_name(group)
            .with_context(|| format!("looking up group {group}"))?
            .with_context(|| format!("socket.group {group:?} does not exist"))?;
        nix::unistd::chown(path, None, Some(g.gid))
            .with_context(|| format!("giving {} to group {group}", path.display()))?;
    }
    Ok(listener)
}

/// Accepts clients until the listener fails and hands each to the supervisor, which
/// applies the client limit (see `admission`). Only a flood far past `max_clients`, which
/// the supervisor would refuse anyway, is turned away here, to bound the threads.
pub fn serve_socket<E: Send + 'static>(
    listener: UnixListener,
    max_clients: usize,
    events: SyncSender<E>,
    wrap: fn(LinkId, LinkEvent) -> E,
) -> io::Result<()> {
    let live = Arc::new(AtomicU64::new(0));
    thread::Builder::new()
        .name("socket-accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let stream = match stream {
                    Ok(s) => s,
                    Err(e) => {
                        log::warn!("socket accept: {e}");
                        continue;
                    }
                };
                if live.load(Ordering::SeqCst) as usize >= max_clients * 2 + 2 {
                    log::warn!("socket: refusing a client, {max_clients} already connected");
                    refuse(stream, max_clients);
                    continue;
                }
                let peer = peer_name(&stream);
                if let Err(e) = start_client(stream, peer, live.clone(), events.clone(), wrap) {
                    log::warn!("socket client: {e}");
                }
            }
        })?;
    Ok(())
}

/// Tells a client over the limit why it is closed (an `Error` frame, `Busy`) instead of
/// closing it without a word. The write has a short timeout: a client that does not read
/// cannot hold the accept loop.
fn refuse(mut stream: UnixStream, max_clients: usize) {
    use edgedx_icd::{encode_frame, ErrorCode, ErrorMessage, Message, MAX_FRAME};
    let text =
        format!("the device serves at most {max_clients} socket clients at once; try again later");
    let msg = Message::Error(ErrorMessage::new(ErrorCode::Busy, &text, None));
    let mut buf = [0u8; MAX_FRAME];
    if let Ok(frame) = encode_frame(&msg, 0, &mut buf) {
        let _ = stream.set_write_timeout(Some(std::time::Duration::from_millis(200)));
        let _ = stream
            .write_all(&[0])
            .and_then(|()| stream.write_all(frame));
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn peer_name(stream: &UnixStream) -> String {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    match getsockopt(stream, PeerCredentials) {
        Ok(c) => format!("pid {} uid {}", c.pid(), c.uid()),
        Err(_) => "unknown peer".into(),
    }
}

fn start_client<E: Send + 'static>(
    stream: UnixStream,
    peer: String,
    live: Arc<AtomicU64>,
    events: SyncSender<E>,
    wrap: fn(LinkId, LinkEvent) -> E,
) -> io::Result<()> {
    let id = next_id();
    let mut write_half = stream.try_clone()?;
    let shutdown_half = stream.try_clone()?;
    let closing_half = stream.try_clone()?;
    // A peer that stops reading must not hold the writer (and its Close) forever.
    write_half.set_write_timeout(Some(std::time::Duration::from_secs(10)))?;
    let (tx, backlog) = writer_thread(
        format!("link-{id}-out"),
        move |b| write_half.write_all(b),
        move || {
            let _ = closing_half.shutdown(std::net::Shutdown::Both);
        },
    )?;
    let writer = LinkWriter {
        kind: LinkKind::Socket,
        tx,
        backlog,
        closer: Some(Box::new(move || {
            let _ = shutdown_half.shutdown(std::net::Shutdown::Both);
        })),
    };
    live.fetch_add(1, Ordering::SeqCst);
    if events
        .send(wrap(
            id,
            LinkEvent::Up {
                kind: LinkKind::Socket,
                writer,
                peer,
            },
        ))
        .is_err()
    {
        return Ok(());
    }
    thread::Builder::new()
        .name(format!("link-{id}-in"))
        .spawn(move || {
            let mut stream = stream;
            pump(
                id,
                |buf| match stream.read(buf) {
                    Ok(0) => Ok(None),
                    Ok(n) => Ok(Some(n)),
                    Err(e) => Err(e),
                },
                &events,
                wrap,
            );
            live.fetch_sub(1, Ordering::SeqCst);
        })?;
    Ok(())
}

/// Runs the serial link: one permanent link on `device`.
pub fn serve_serial<E: Send + 'static>(
    device: &Path,
    baud: u32,
    events: SyncSender<E>,
    wrap: fn(LinkId, LinkEvent) -> E,
) -> anyhow::Result<()> {
    let port = edgedx_board::serial::open_serial(device, baud)
        .with_context(|| format!("opening serial device {}", device.display()))?;
    let (mut reader, mut writer) = port.split();
    let id = next_id();
    // A serial host that stops reading makes writes time out: drop that frame and go on
    // (results stay in the outbox and are resent after the host's next Hello).
    let (tx, backlog) = writer_thread(
        format!("serial-{id}-out"),
        move |b| {
            if let Err(e) = writer.write_all(b) {
                log::warn!("serial: frame dropped: {e}");
            }
            Ok(())
        },
        || {},
    )?;
    let link = LinkWriter {
        kind: LinkKind::Serial,
        tx,
        backlog,
        closer: None,
    };
    let name: PathBuf = device.to_path_buf();
    events
        .send(wrap(
            id,
            LinkEvent::Up {
                kind: LinkKind::Serial,
                writer: link,
                peer: name.display().to_string(),
            },
        ))
        .ok();
    thread::Builder::new()
        .name(format!("serial-{id}-in"))
        .spawn(move || {
            pump(
                id,
                |buf| {
                    reader
                        .read(buf, std::time::Duration::from_millis(500))
                        .map(Some)
                        .map_err(io::Error::other)
                },
                &events,
                wrap,
            );
        })?;
    Ok(())
}
