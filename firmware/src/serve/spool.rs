//! The USB spool directory: files that appear in it are classified once, after their
//! writer has finished, then moved to `done/` or `failed/` by the supervisor.
//!
//! "Finished" is decided from inotify (through `notify`): a file whose writer closed it
//! (`IN_CLOSE_WRITE`) and was not touched since is ready. Files that appear without events
//! (present at start-up, a drive mounted over the directory) are found by a periodic scan
//! and are ready once their size and modification time have not changed for the settle
//! time. A file that has shown write activity but no close waits for the close, up to a
//! long timeout, so a slow copy that pauses is not read half-written.
//!
//! Admitted files are read and hashed by a thread of their own ([`start_reader`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender, SyncSender};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};

use edgedx_ingest::Limits;

/// A file that is complete and can be read.
#[derive(Debug)]
pub struct SpoolFile(pub PathBuf);

#[derive(Debug)]
struct Candidate {
    /// Writer activity seen through inotify and no close yet.
    writing: bool,
    closed: bool,
    last_event: Instant,
    /// Size and mtime at the last scan, and since when they have not changed.
    seen: Option<(u64, Option<SystemTime>)>,
    stable_since: Instant,
    reported: bool,
}

impl Candidate {
    /// A file just noticed: no events judged yet, not reported.
    fn new() -> Candidate {
        Candidate {
            writing: false,
            closed: false,
            last_event: Instant::now(),
            seen: None,
            stable_since: Instant::now(),
            reported: false,
        }
    }
}

/// Names that are never spool input: hidden files, partial downloads and editor backups,
/// and the done/failed folders.
pub fn ignored(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || [".part", ".tmp", ".crdownload", ".partial", ".reason.txt"]
            .iter()
            .any(|s| name.to_ascii_lowercase().ends_with(s))
}

/// Starts watching `dir`; ready files are sent to `out` as `wrap(SpoolFile)`.
pub fn watch<E: Send + 'static>(
    dir: PathBuf,
    settle: Duration,
    out: SyncSender<E>,
    wrap: fn(SpoolFile) -> E,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(tx)?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    thread::Builder::new().name("spool".into()).spawn(move || {
        // The watcher lives as long as the thread.
        let _watcher = watcher;
        let mut files: HashMap<PathBuf, Candidate> = HashMap::new();
        let mut next_scan = Instant::now();
        // Writers that never close (or a lost close) are still picked up after this.
        let close_timeout = (settle * 30).max(Duration::from_secs(60));
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(event)) => {
                    for path in event.paths {
                        if path.parent() != Some(dir.as_path()) || !name_ok(&path) {
                            continue;
                        }
                        let c = files.entry(path).or_insert_with(Candidate::new);
                        c.last_event = Instant::now();
                        match event.kind {
                            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                                c.writing = false;
                                c.closed = true;
                            }
                            // Moved in from elsewhere: complete by definition. A new file
                            // under a name already processed is new input.
                            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                                c.writing = false;
                                c.closed = true;
                                c.reported = false;
                            }
                            EventKind::Create(CreateKind::File)
                            | EventKind::Create(CreateKind::Any) => {
                                c.writing = true;
                                c.closed = false;
                                c.reported = false;
                            }
                            EventKind::Modify(ModifyKind::Data(_))
                            | EventKind::Modify(ModifyKind::Any) => {
                                c.writing = true;
                                c.closed = false;
                            }
                            EventKind::Remove(_)
                            | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                                c.reported = true;
                            }
                            _ => {}
                        }
                    }
                }
                Ok(Err(e)) => log::warn!("spool {}: watch error: {e}", dir.display()),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            let now = Instant::now();
            if now >= next_scan {
                next_scan = now + Duration::from_secs(2).min(settle);
                scan(&dir, &mut files);
            }
            files.retain(|path, _| path.exists());
            for (path, c) in files.iter_mut() {
                if c.reported {
                    continue;
                }
                let Ok(meta) = std::fs::metadata(path) else {
                    continue;
                };
                if !meta.is_file() {
                    c.reported = true;
                    continue;
                }
                let now_seen = (meta.len(), meta.modified().ok());
                if c.seen != Some(now_seen) {
                    c.seen = Some(now_seen);
                    c.stable_since = now;
                }
                let quiet = now.duration_since(c.stable_since);
                let ready = if c.closed {
                    // Closed and unchanged since: a short pause lets a rename or a second
                    // close by the same copy settle.
                    now.duration_since(c.last_event) >= Duration::from_millis(200)
                } else if c.writing {
                    quiet >= close_timeout
                } else {
                    quiet >= settle
                };
                if ready {
                    c.reported = true;
                    if out.send(wrap(SpoolFile(path.clone()))).is_err() {
                        return;
                    }
                }
            }
        }
    })?;
    Ok(())
}

/// A spool file the supervisor has admitted, to be read and hashed off its loop.
#[derive(Debug)]
pub struct ReadRequest {
    pub path: PathBuf,
    /// Bytes the supervisor set aside for it (the file's size when it was admitted).
    pub reserved: u64,
    pub limits: Limits,
}

/// A spool file read whole and hashed, or why it could not be.
#[derive(Debug)]
pub struct SpoolRead {
    pub path: PathBuf,
    pub reserved: u64,
    pub read: Result<(Vec<u8>, [u8; 32]), String>,
}

/// Starts the thread that reads admitted spool files (a large file on a slow USB stick
/// takes seconds) and hashes them, so the supervisor loop never waits on either; each
/// file comes back to `out` as `wrap(SpoolRead)`, in the order asked.
pub fn start_reader<E: Send + 'static>(
    out: SyncSender<E>,
    wrap: fn(SpoolRead) -> E,
) -> std::io::Result<Sender<ReadRequest>> {
    let (tx, rx) = mpsc::channel::<ReadRequest>();
    thread::Builder::new()
        .name("spool-read".into())
        .spawn(move || {
            for r in rx {
                let read = edgedx_ingest::read_capped(&r.path, &r.limits)
                    .map(|bytes| {
                        let digest: [u8; 32] = Sha256::digest(&bytes).into();
                        (bytes, digest)
                    })
                    .map_err(|e| e.to_string());
                let done = SpoolRead {
                    path: r.path,
                    reserved: r.reserved,
                    read,
                };
                if out.send(wrap(done)).is_err() {
                    return;
                }
            }
        })?;
    Ok(tx)
}

fn name_ok(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| !ignored(n))
}

/// Adds files that exist without having produced events (start-up, a new mount).
fn scan(dir: &Path, files: &mut HashMap<PathBuf, Candidate>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !name_ok(&path) || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        files.entry(path).or_insert_with(Candidate::new);
    }
}

/// Moves a processed file into `to_dir`, never overwriting an earlier file of the same name.
pub fn move_into(file: &Path, to_dir: &Path, tag: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(to_dir)?;
    let name = file
        .file_name()
        .ok_or_else(|| std::io::Error::other("no file name"))?
        .to_string_lossy()
        .into_owned();
    let mut target = to_dir.join(&name);
    if target.exists() {
        target = to_dir.join(format!("{name}.{tag}"));
    }
    std::fs::rename(file, &target)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_and_hidden_names_are_ignored() {
        for n in [
            ".x.png",
            "a.png.part",
            "b.dcm.tmp",
            "c~",
            "d.PART",
            "e.png.reason.txt",
        ] {
            assert!(ignored(n), "{n}");
        }
        for n in ["scan.dcm", "IM0001", "a.png"] {
            assert!(!ignored(n), "{n}");
        }
    }

    #[test]
    fn move_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let done = dir.path().join("done");
        for i in 0..2 {
            let f = dir.path().join("a.png");
            std::fs::write(&f, [i]).unwrap();
            let t = move_into(&f, &done, &format!("r{i}")).unwrap();
            assert_eq!(std::fs::read(&t).unwrap(), vec![i]);
        }
        assert_eq!(std::fs::read_dir(&done).unwrap().count(), 2);
    }
}
