//! The outbox: an append-only, checksummed journal of every result, so that each result is
//! delivered at least once across disconnects, daemon restarts and power cuts.
//!
//! Layout: `DIR/seg-NNNNNNNN.log` segment files. Each record is
//! `len u32 LE · crc32 u32 LE · type u8 · payload`, the CRC covering type and payload.
//! A result record is fsynced before the result is sent anywhere; acknowledgements are
//! appended without a sync (losing one only causes a duplicate, which hosts recognise by
//! id). The supervisor writes records and the [`Syncer`] thread syncs them, several at
//! once when results come faster than the disk syncs: the supervisor's loop never waits
//! on the disk, and holds each result until [`Outbox::durable_next`] passes its id. A
//! segment is deleted once every result in it is acknowledged, except the active
//! one, whose header record carries the next result id so ids keep increasing.
//!
//! Memory holds only where each unacknowledged result is (its segment and offset, a few
//! dozen bytes each): a host that is away for days must not make the supervisor hold every
//! result it missed. Replays read the results back from the journal.
//!
//! On open, a record that ends early or fails its CRC at the end of the newest segment is
//! the torn write of a power cut: it is cut off and the records before it are kept. The
//! same damage in an older segment is reported and the rest of that segment is skipped,
//! but the file is left in place for inspection.
//!
//! A write that fails while the device runs (a full disk) must not leave a partial record
//! with later records after it: that would read as damage at the next start and cut off
//! every record behind it. The partial record is cut off at once, and if even that fails
//! the next record goes to a new segment. Old segments are deleted only while the active
//! one holds its header, so the next result id is never forgotten.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender, SyncSender};
use std::sync::Arc;
use std::thread;

use edgedx_icd::{crc32, ClassificationResult};

const RECORD_HEADER: usize = 9;
/// No single record is larger than this; a larger length field means damage.
const MAX_RECORD: usize = 64 * 1024;
const TYPE_SEGMENT: u8 = 1;
const TYPE_RESULT: u8 = 2;
const TYPE_ACK: u8 = 3;
/// Room kept free when deciding whether the outbox is full, so that every request admitted
/// before the outbox filled up can still store its result.
const FULL_MARGIN: u64 = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("outbox: result {id} could not be encoded: {message}")]
    Encode { id: u64, message: String },
    #[error(
        "outbox {path}: the record of result {id} at byte {offset} cannot be read back: {what}"
    )]
    Unreadable {
        path: PathBuf,
        id: u64,
        offset: u64,
        what: String,
    },
}

/// Limits for the journal.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    /// Total bytes of all segments before the outbox reports itself full.
    pub max_bytes: u64,
    /// A new segment is started when the active one reaches this size.
    pub segment_bytes: u64,
}

/// What opening the journal found, for the log.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    pub segments: usize,
    pub results: u64,
    pub unacked: usize,
    /// Bytes cut from the end of the newest segment (a torn last record).
    pub torn_bytes: u64,
    /// Older segments with damage, with the offset where reading stopped.
    pub damaged: Vec<(PathBuf, u64)>,
    /// Intact result records this firmware cannot decode (written by another version).
    pub undecodable: u64,
}

struct Segment {
    number: u64,
    path: PathBuf,
    /// Opened when a result is first read back from this segment.
    reader: Option<File>,
    bytes: u64,
    /// Unacknowledged results stored in this segment.
    pending: usize,
    /// Holds a header record (the next result id when it was started).
    header: bool,
}

pub struct Outbox {
    dir: PathBuf,
    limits: OutboxLimits,
    segments: Vec<Segment>,
    /// Shared with the [`Syncer`] through [`SyncTicket`]s.
    active: Arc<File>,
    /// Unacknowledged result id → where its record is.
    unacked: BTreeMap<u64, Place>,
    next_id: u64,
    /// Results with a smaller id are on disk (synced, or found there at open).
    durable_next: u64,
    /// A failed write left bytes that could not be cut off: write on in a new segment.
    torn: bool,
    /// Acks the host sent while the journal could not take them (a full disk): already
    /// applied in memory, written before the next record.
    unjournaled_acks: Vec<u64>,
}

/// Where a result record starts in the journal.
#[derive(Debug, Clone, Copy)]
struct Place {
    segment: u64,
    offset: u64,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("dir", &self.dir)
            .field("unacked", &self.unacked.len())
            .field("next_id", &self.next_id)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// Opens (creating if needed) the journal in `dir` and recovers its state.
    pub fn open(dir: &Path, limits: OutboxLimits) -> Result<(Outbox, Recovery), OutboxError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OutboxError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut numbers = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(n) = name
                .strip_prefix("seg-")
                .and_then(|s| s.strip_suffix(".log"))
                .and_then(|s| s.parse::<u64>().ok())
            {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        let mut recovery = Recovery::default();
        let mut unacked = BTreeMap::new();
        let mut next_id = 1u64;
        let mut segments = Vec::new();
        let last = numbers.last().copied();
        for &number in &numbers {
            let path = segment_path(dir, number);
            let mut data = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut data))
                .map_err(io_err(&path))?;
            let (good, records) = parse_records(&data);
            let mut header = false;
            for Record {
                offset,
                kind,
                payload,
            } in records
            {
                match kind {
                    TYPE_SEGMENT if payload.len() >= 8 => {
                        header = true;
                        next_id = next_id.max(u64_le(payload));
                    }
                    TYPE_RESULT => match postcard::from_bytes::<ClassificationResult>(payload) {
                        Ok(result) => {
                            next_id = next_id.max(result.result_id + 1);
                            recovery.results += 1;
                            let place = Place {
                                segment: number,
                                offset: offset as u64,
                            };
                            unacked.insert(result.result_id, place);
                        }
                        // The CRC was good, so the record was written whole by a firmware
                        // with another Result layout: keep the file, say so.
                        Err(e) => {
                            recovery.undecodable += 1;
                            log::error!("outbox {}: a result record does not decode ({e}); left in the file", path.display());
                        }
                    },
                    TYPE_ACK if payload.len() >= 8 => {
                        unacked.remove(&u64_le(payload));
                    }
                    _ => {}
                }
            }
            let mut bytes = data.len() as u64;
            if (good as u64) < bytes {
                if Some(number) == last {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_err(&path))?;
                    f.set_len(good as u64).map_err(io_err(&path))?;
                    f.sync_all().map_err(io_err(&path))?;
                    recovery.torn_bytes = bytes - good as u64;
                    bytes = good as u64;
                } else {
                    recovery.damaged.push((path.clone(), good as u64));
                }
            }
            segments.push(Segment {
                number,
                path,
                reader: None,
                bytes,
                pending: 0,
                header,
            });
        }
        for place in unacked.values() {
            if let Some(s) = segments.iter_mut().find(|s| s.number == place.segment) {
                s.pending += 1;
            }
        }
        recovery.segments = segments.len();
        recovery.unacked = unacked.len();
        let (active, segments) = match segments.pop() {
            Some(seg) => {
                let f = OpenOptions::new()
                    .append(true)
                    .open(&seg.path)
                    .map_err(io_err(&seg.path))?;
                let mut all = segments;
                all.push(seg);
                (f, all)
            }
            None => {
                let (f, seg) = create_segment(dir, 1, next_id)?;
                (f, vec![seg])
            }
        };
        let mut outbox = Outbox {
            dir: dir.to_path_buf(),
            limits,
            segments,
            active: Arc::new(active),
            unacked,
            next_id,
            durable_next: next_id,
            torn: false,
            unjournaled_acks: Vec::new(),
        };
        // A newest segment without its header (a rotation cut short by a full disk or a
        // crash): record the next id in it before any older segment may be deleted.
        if !outbox.segments.last().is_some_and(|s| s.header) {
            let id = outbox.next_id.to_le_bytes();
            let written = outbox
                .write_record(TYPE_SEGMENT, &id)
                .and_then(|()| outbox.flush());
            match written {
                Ok(()) => {
                    if let Some(active) = outbox.segments.last_mut() {
                        active.header = true;
                    }
                }
                Err(e) => log::error!("{e}; old segments are kept until a new one starts"),
            }
        }
        outbox.collect_garbage();
        Ok((outbox, recovery))
    }

    /// Gives `result` the next id and writes it to the journal. It may be sent once the
    /// returned ticket has been synced ([`Outbox::durable`] moved past its id).
    pub fn append(
        &mut self,
        mut result: ClassificationResult,
    ) -> Result<(ClassificationResult, SyncTicket), OutboxError> {
        let id = self.next_id;
        result.result_id = id;
        let payload = postcard::to_stdvec(&result).map_err(|e| OutboxError::Encode {
            id,
            message: e.to_string(),
        })?;
        self.maybe_rotate()?;
        self.journal_pending_acks()?;
        let offset = self.segments.last().map_or(0, |s| s.bytes);
        self.write_record(TYPE_RESULT, &payload)?;
        self.next_id += 1;
        let active = self
            .segments
            .last_mut()
            .expect("there is always an active segment");
        active.pending += 1;
        let place = Place {
            segment: active.number,
            offset,
        };
        self.unacked.insert(id, place);
        let ticket = SyncTicket {
            file: self.active.clone(),
            path: active.path.clone(),
            through: self.next_id,
        };
        Ok((result, ticket))
    }

    /// Results below this id are on disk and may be sent (and replayed).
    pub fn durable_next(&self) -> u64 {
        self.durable_next
    }

    /// The [`Syncer`] synced the journal as written when it issued `through`'s ticket.
    pub fn durable(&mut self, through: u64) {
        self.durable_next = self.durable_next.max(through.min(self.next_id));
    }

    /// A sync failed: no result written since the last good sync can be trusted to be on
    /// disk. They are cut from the journal, as a failed write is (their ids are not used
    /// again), and returned so that their requesters are told. Acknowledgements journaled
    /// after them go too: like any unsynced ack, losing one costs a duplicate at the next
    /// start at most.
    pub fn sync_failed(&mut self) -> Vec<u64> {
        let lost: Vec<u64> = (self.durable_next..self.next_id).collect();
        let mut cuts: BTreeMap<u64, u64> = BTreeMap::new();
        for id in &lost {
            if let Some(place) = self.unacked.remove(id) {
                let cut = cuts.entry(place.segment).or_insert(place.offset);
                *cut = (*cut).min(place.offset);
                if let Some(s) = self.segments.iter_mut().find(|s| s.number == place.segment) {
                    s.pending = s.pending.saturating_sub(1);
                }
            }
        }
        for (number, offset) in cuts {
            let active = self.segments.last().map(|s| s.number) == Some(number);
            let Some(segment) = self.segments.iter_mut().find(|s| s.number == number) else {
                continue;
            };
            let cut = if active {
                cut_at(&self.active, offset)
            } else {
                OpenOptions::new()
                    .write(true)
                    .open(&segment.path)
                    .and_then(|f| f.set_len(offset))
            };
            match cut {
                Ok(()) => segment.bytes = offset,
                Err(e) => {
                    log::error!(
                        "outbox {}: cannot cut unsynced results off ({e}); continuing in a new segment",
                        segment.path.display()
                    );
                    self.torn = true;
                }
            }
        }
        self.durable_next = self.next_id;
        lost
    }

    /// Records the host's acknowledgement. Unknown or repeated ids are ignored (Ack is
    /// idempotent). Returns whether the id was pending.
    ///
    /// The host has the result, so it is never sent again in this run even when the
    /// journal cannot take the ack (a full disk): the ack is kept and written before the
    /// next record. Only a restart before that can bring the result back once, as a
    /// duplicate the host recognises by its id.
    pub fn ack(&mut self, id: u64) -> Result<bool, OutboxError> {
        if id >= self.durable_next {
            // Not sent yet, so not received: an id the host guessed.
            return Ok(false);
        }
        let Some(place) = self.unacked.remove(&id) else {
            return Ok(false);
        };
        if let Some(s) = self.segments.iter_mut().find(|s| s.number == place.segment) {
            s.pending = s.pending.saturating_sub(1);
        }
        self.unjournaled_acks.push(id);
        self.maybe_rotate()?;
        self.journal_pending_acks()?;
        self.collect_garbage();
        Ok(true)
    }

    /// Writes the acks the journal could not take earlier, oldest first.
    fn journal_pending_acks(&mut self) -> Result<(), OutboxError> {
        while let Some(&id) = self.unjournaled_acks.first() {
            self.write_record(TYPE_ACK, &id.to_le_bytes())?;
            self.unjournaled_acks.remove(0);
        }
        Ok(())
    }

    /// The first unacknowledged result id in `from..end`: replays walk the ids in order.
    pub fn next_unacked(&self, from: u64, end: u64) -> Option<u64> {
        self.unacked.range(from..end).next().map(|(id, _)| *id)
    }

    /// Reads unacknowledged result `id` back from the journal (`None` once acknowledged).
    pub fn read(&mut self, id: u64) -> Result<Option<ClassificationResult>, OutboxError> {
        let Some(place) = self.unacked.get(&id).copied() else {
            return Ok(None);
        };
        let Some(segment) = self.segments.iter_mut().find(|s| s.number == place.segment) else {
            return Err(OutboxError::Unreadable {
                path: segment_path(&self.dir, place.segment),
                id,
                offset: place.offset,
                what: "its segment is gone".into(),
            });
        };
        let unreadable = |what: String| OutboxError::Unreadable {
            path: segment.path.clone(),
            id,
            offset: place.offset,
            what,
        };
        let reader = match &mut segment.reader {
            Some(f) => f,
            slot => slot.insert(File::open(&segment.path).map_err(|e| unreadable(e.to_string()))?),
        };
        let mut header = [0u8; 8];
        reader
            .read_exact_at(&mut header, place.offset)
            .map_err(|e| unreadable(e.to_string()))?;
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_RECORD {
            return Err(unreadable(format!("record length {len}")));
        }
        let mut body = vec![0u8; len];
        reader
            .read_exact_at(&mut body, place.offset + 8)
            .map_err(|e| unreadable(e.to_string()))?;
        if crc32(&body) != crc || body[0] != TYPE_RESULT {
            return Err(unreadable(
                "the record changed on disk since it was written".into(),
            ));
        }
        let result = postcard::from_bytes::<ClassificationResult>(&body[1..])
            .map_err(|e| unreadable(e.to_string()))?;
        if result.result_id != id {
            return Err(unreadable(format!("it holds result {}", result.result_id)));
        }
        Ok(Some(result))
    }

    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Full: no new work should be admitted until the host acknowledges results.
    pub fn is_full(&self) -> bool {
        self.bytes() + FULL_MARGIN > self.limits.max_bytes
    }

    /// The id the next result will get.
    #[cfg(test)]
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Syncs everything written (at start-up and shutdown, where waiting is fine): the
    /// results not yet synced become durable.
    pub fn flush(&mut self) -> Result<(), OutboxError> {
        let path = self.active_path();
        self.active
            .sync_data()
            .map_err(|source| OutboxError::Io { path, source })?;
        self.durable_next = self.next_id;
        Ok(())
    }

    fn active_path(&self) -> PathBuf {
        self.segments
            .last()
            .map(|s| s.path.clone())
            .unwrap_or_else(|| self.dir.clone())
    }

    fn write_record(&mut self, kind: u8, payload: &[u8]) -> Result<(), OutboxError> {
        let record = encode_record(kind, payload);
        let path = self.active_path();
        let before = self.segments.last().map_or(0, |s| s.bytes);
        let written = (&*self.active).write_all(&record);
        if let Err(source) = written {
            // Cut the partial record off, so that records written later are not behind
            // damage. If that fails too, the next record starts a new segment.
            let cut = cut_at(&self.active, before);
            if let Err(e) = cut {
                log::error!(
                    "outbox {}: cannot cut a failed write off ({e}); continuing in a new segment",
                    path.display()
                );
                self.torn = true;
            }
            return Err(OutboxError::Io { path, source });
        }
        if let Some(active) = self.segments.last_mut() {
            active.bytes += record.len() as u64;
        }
        Ok(())
    }

    fn maybe_rotate(&mut self) -> Result<(), OutboxError> {
        let Some(active) = self.segments.last() else {
            return Ok(());
        };
        if active.bytes < self.limits.segment_bytes && !self.torn {
            return Ok(());
        }
        let number = active.number + 1;
        let (file, segment) = create_segment(&self.dir, number, self.next_id)?;
        // Tickets already issued keep the old file open until it is synced.
        self.active = Arc::new(file);
        self.segments.push(segment);
        self.torn = false;
        self.collect_garbage();
        Ok(())
    }

    /// Deletes older segments whose results are all acknowledged, once the active segment
    /// holds the next result id (else the older headers are the only record of it).
    fn collect_garbage(&mut self) {
        if !self.segments.last().is_some_and(|s| s.header) {
            return;
        }
        let active = self.segments.last().map(|s| s.number);
        self.segments.retain(|s| {
            if Some(s.number) == active || s.pending > 0 {
                return true;
            }
            match fs::remove_file(&s.path) {
                Ok(()) => false,
                Err(e) => {
                    log::warn!("outbox: cannot remove {}: {e}", s.path.display());
                    true
                }
            }
        });
    }
}

/// Asks the [`Syncer`] to sync `file`: results below `through` are then durable.
#[derive(Debug)]
pub struct SyncTicket {
    file: Arc<File>,
    path: PathBuf,
    through: u64,
}

/// What a sync achieved: [`Outbox::durable`] on success, [`Outbox::sync_failed`] else.
#[derive(Debug)]
pub struct Synced {
    pub through: u64,
    pub result: Result<(), String>,
}

/// The thread that syncs the journal off the supervisor's loop.
pub struct Syncer;

impl Syncer {
    /// Starts the thread; it reports each batch to `out` as `wrap(Synced)` and ends when
    /// the returned sender is dropped.
    pub fn start<E: Send + 'static>(
        out: SyncSender<E>,
        wrap: fn(Synced) -> E,
    ) -> io::Result<Sender<SyncTicket>> {
        let (tx, rx) = mpsc::channel::<SyncTicket>();
        thread::Builder::new()
            .name("outbox-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Everything queued meanwhile rides on the same sync: one per file
                    // (two when a segment rotated), in the order written.
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let through = batch.iter().map(|t| t.through).max().unwrap_or(0);
                    let mut result = Ok(());
                    let mut synced: Vec<&Arc<File>> = Vec::new();
                    for t in &batch {
                        if synced.iter().any(|f| Arc::ptr_eq(f, &t.file)) {
                            continue;
                        }
                        if let Err(e) = t.file.sync_data() {
                            result = Err(format!("outbox {}: sync failed: {e}", t.path.display()));
                            break;
                        }
                        synced.push(&t.file);
                    }
                    if out.send(wrap(Synced { through, result })).is_err() {
                        return;
                    }
                }
            })?;
        Ok(tx)
    }
}

/// Truncates the active segment to `offset` and writes on from there: the file position
/// moved with what was written, and writing past the new end would leave a hole of zeros
/// (a record of length 0, which reads as damage).
fn cut_at(active: &File, offset: u64) -> io::Result<()> {
    active.set_len(offset)?;
    let mut f = active;
    f.seek(io::SeekFrom::Start(offset)).map(drop)
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("seg-{number:08}.log"))
}

fn create_segment(dir: &Path, number: u64, next_id: u64) -> Result<(File, Segment), OutboxError> {
    let path = segment_path(dir, number);
    let io_err = |source| OutboxError::Io {
        path: path.clone(),
        source,
    };
    // Truncate: a file of this number can only be what a failed earlier attempt left.
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .map_err(io_err)?;
    let record = encode_record(TYPE_SEGMENT, &next_id.to_le_bytes());
    file.write_all(&record).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    // The new file's directory entry must survive a power cut too.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    let bytes = record.len() as u64;
    Ok((
        file,
        Segment {
            number,
            path,
            reader: None,
            bytes,
            pending: 0,
            header: true,
        },
    ))
}

fn encode_record(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(1 + payload.len());
    body.push(kind);
    body.extend_from_slice(payload);
    let mut record = Vec::with_capacity(8 + body.len());
    record.extend_from_slice(&(body.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32(&body).to_le_bytes());
    record.extend_from_slice(&body);
    record
}

/// One whole record of a segment.
struct Record<'a> {
    /// Where the record starts in its segment.
    offset: usize,
    kind: u8,
    payload: &'a [u8],
}

/// Splits `data` into records; returns the length of the valid prefix and the records in it.
fn parse_records(data: &[u8]) -> (usize, Vec<Record<'_>>) {
    let mut at = 0;
    let mut records = Vec::new();
    while data.len() - at >= RECORD_HEADER {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_RECORD || data.len() - at - 8 < len {
            break;
        }
        let body = &data[at + 8..at + 8 + len];
        if crc32(body) != crc {
            break;
        }
        records.push(Record {
            offset: at,
            kind: body[0],
            payload: &body[1..],
        });
        at += 8 + len;
    }
    (at, records)
}

fn u64_le(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgedx_icd::{Precision, PrecisionReason, Source};

    fn result(name: &str) -> ClassificationResult {
        ClassificationResult {
            result_id: 0,
            source: Source::Spool {
                name: heapless::String::try_from(name).unwrap(),
            },
            label: heapless::String::try_from("glioma").unwrap(),
            class_index: 0,
            confidence: 0.9,
            probabilities: heapless::Vec::from_slice(&[0.9, 0.05, 0.03, 0.02]).unwrap(),
            precision: Precision::Int8,
            precision_reason: PrecisionReason::Normal,
            model_sha256: [1; 32],
            input_sha256: [2; 32],
            latency_us: 1000,
            timestamp_ms: 1,
            bundle_name: heapless::String::try_from("b").unwrap(),
            bundle_version: heapless::String::try_from("1").unwrap(),
        }
    }

    /// Every unacknowledged result id, each read back from the journal, in id order.
    fn replay(ob: &mut Outbox) -> Vec<u64> {
        let mut ids = Vec::new();
        let mut from = 0;
        while let Some(id) = ob.next_unacked(from, u64::MAX) {
            let r = ob.read(id).unwrap().expect("unacknowledged");
            assert_eq!(r.result_id, id);
            ids.push(id);
            from = id + 1;
        }
        ids
    }

    const LIMITS: OutboxLimits = OutboxLimits {
        max_bytes: 16 * 1024 * 1024,
        segment_bytes: 1024,
    };

    /// Segments large enough that a test's results stay in the first.
    const ONE_SEGMENT: OutboxLimits = OutboxLimits {
        segment_bytes: 1 << 20,
        ..LIMITS
    };

    /// Appends `r` and syncs it, as the supervisor and the syncer do together.
    fn stored(ob: &mut Outbox, r: ClassificationResult) -> ClassificationResult {
        let (r, ticket) = ob.append(r).unwrap();
        ticket.file.sync_data().unwrap();
        ob.durable(ticket.through);
        r
    }

    /// An outbox holding `n` results, named f0, f1, ...
    fn with_results(dir: &Path, limits: OutboxLimits, n: usize) -> Outbox {
        let (mut ob, _) = Outbox::open(dir, limits).unwrap();
        for i in 0..n {
            stored(&mut ob, result(&format!("f{i}")));
        }
        ob
    }

    #[test]
    fn results_survive_reopen_and_acks_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ob, rec) = Outbox::open(dir.path(), LIMITS).unwrap();
        assert_eq!(rec.unacked, 0);
        let ids: Vec<u64> = (0..5)
            .map(|i| stored(&mut ob, result(&format!("f{i}"))).result_id)
            .collect();
        assert_eq!(ids, vec![1, 2, 3, 4, 5]);
        assert!(ob.ack(2).unwrap());
        assert!(
            !ob.ack(2).unwrap(),
            "a second ack of the same id changes nothing"
        );
        assert!(!ob.ack(99).unwrap());
        drop(ob);
        let (mut ob, rec) = Outbox::open(dir.path(), LIMITS).unwrap();
        let left: Vec<u64> = replay(&mut ob);
        assert_eq!(left, vec![1, 3, 4, 5]);
        assert_eq!(rec.torn_bytes, 0);
        assert_eq!(ob.next_id(), 6);
    }

    #[test]
    fn torn_last_record_is_cut_and_earlier_records_kept() {
        let dir = tempfile::tempdir().unwrap();
        let big = ONE_SEGMENT;
        drop(with_results(dir.path(), big, 3));
        let seg = segment_path(dir.path(), 1);
        let len = fs::metadata(&seg).unwrap().len();
        // Every cut inside the last record must keep exactly the first two results.
        let full = fs::read(&seg).unwrap();
        let (_, records) = parse_records(&full);
        let last_len = 8 + 1 + records.last().unwrap().payload.len() as u64;
        for cut in [1, 5, 9, last_len / 2, last_len - 1] {
            fs::write(&seg, &full[..(len - cut) as usize]).unwrap();
            let (mut ob, rec) = Outbox::open(dir.path(), big).unwrap();
            assert_eq!(rec.torn_bytes, last_len - cut, "cut {cut}");
            let ids: Vec<u64> = replay(&mut ob);
            assert_eq!(ids, vec![1, 2], "cut {cut}");
            // The journal stays appendable after the repair, and ids do not go back.
            assert_eq!(stored(&mut ob, result("after")).result_id, 3);
            drop(ob);
            fs::write(&seg, &full).unwrap();
        }
        // A flipped byte inside the last record is caught by the CRC.
        let mut flipped = full.clone();
        let n = flipped.len();
        flipped[n - 3] ^= 0x40;
        fs::write(&seg, &flipped).unwrap();
        let (ob, rec) = Outbox::open(dir.path(), big).unwrap();
        assert_eq!(rec.torn_bytes, last_len);
        assert_eq!(ob.unacked_len(), 2);
    }

    #[test]
    fn rotation_deletes_only_fully_acked_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ob, _) = Outbox::open(dir.path(), LIMITS).unwrap();
        let ids: Vec<u64> = (0..40)
            .map(|i| stored(&mut ob, result(&format!("f{i}"))).result_id)
            .collect();
        let count = || fs::read_dir(dir.path()).unwrap().count();
        let before = count();
        assert!(before > 3, "1 KiB segments should have rotated: {before}");
        // Ack all but the first: the first segment must stay, later full ones go.
        for id in &ids[1..] {
            ob.ack(*id).unwrap();
        }
        assert!(count() < before);
        assert!(segment_path(dir.path(), 1).exists());
        ob.ack(ids[0]).unwrap();
        assert!(!segment_path(dir.path(), 1).exists());
        drop(ob);
        let (mut ob, _) = Outbox::open(dir.path(), LIMITS).unwrap();
        assert_eq!(ob.unacked_len(), 0);
        assert_eq!(
            stored(&mut ob, result("next")).result_id,
            41,
            "ids survive rotation"
        );
    }

    #[test]
    fn reports_full_and_never_drops() {
        let dir = tempfile::tempdir().unwrap();
        let small = OutboxLimits {
            max_bytes: FULL_MARGIN + 4096,
            segment_bytes: 1024,
        };
        let (mut ob, _) = Outbox::open(dir.path(), small).unwrap();
        let mut n = 0;
        while !ob.is_full() {
            stored(&mut ob, result("x"));
            n += 1;
        }
        // Appending past full still stores (an admitted request's result is never lost).
        stored(&mut ob, result("late"));
        assert_eq!(ob.unacked_len(), n + 1);
        let ids: Vec<u64> = replay(&mut ob);
        for id in ids {
            ob.ack(id).unwrap();
        }
        assert!(!ob.is_full());
    }

    /// A full disk (here /dev/full) fails a write: nothing partial may stay in front of
    /// later records, the id is not used, and what follows lands in a readable segment.
    /// Found by the soak: torn records in the middle of a segment cut off every result and
    /// ack behind them at the next start, and result ids were given out again.
    #[test]
    fn a_failed_write_leaves_no_damage_and_no_id_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let big = ONE_SEGMENT;
        let (mut ob, _) = Outbox::open(dir.path(), big).unwrap();
        assert_eq!(stored(&mut ob, result("a")).result_id, 1);
        let real = std::mem::replace(
            &mut ob.active,
            Arc::new(OpenOptions::new().write(true).open("/dev/full").unwrap()),
        );
        let err = ob.append(result("b")).unwrap_err();
        assert!(err.to_string().contains("No space left"), "{err}");
        assert_eq!(ob.unacked_len(), 1);
        // /dev/full cannot be truncated either: the next record starts a new segment.
        assert!(ob.torn);
        drop(real);
        assert!(ob.ack(1).unwrap(), "the ack goes to a new segment");
        assert!(!ob.torn);
        assert!(ob.unjournaled_acks.is_empty());
        assert_eq!(
            stored(&mut ob, result("c")).result_id,
            2,
            "id 2 was never used"
        );
        drop(ob);
        let (mut ob, rec) = Outbox::open(dir.path(), big).unwrap();
        assert_eq!((rec.torn_bytes, rec.damaged.len()), (0, 0));
        let left: Vec<u64> = replay(&mut ob);
        assert_eq!(left, vec![2]);
        assert_eq!(ob.next_id(), 3);
    }

    /// A rotation cut short leaves an empty (or partly written) newest segment. Reopening
    /// must neither give ids out again nor delete the older segments that hold the next id
    /// before the newest holds it.
    #[test]
    fn a_headerless_newest_segment_does_not_lose_the_next_id() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ob, _) = Outbox::open(dir.path(), LIMITS).unwrap();
        let ids: Vec<u64> = (0..30)
            .map(|i| stored(&mut ob, result(&format!("f{i}"))).result_id)
            .collect();
        for id in &ids {
            ob.ack(*id).unwrap();
        }
        drop(ob);
        // What a failed rotation leaves: the next segment file, empty or with half a header.
        for leftover in [&[][..], &[9, 0, 0][..]] {
            let newest = fs::read_dir(dir.path())
                .unwrap()
                .filter_map(|e| {
                    let name = e.unwrap().file_name().into_string().unwrap();
                    name.strip_prefix("seg-")?
                        .strip_suffix(".log")?
                        .parse::<u64>()
                        .ok()
                })
                .max()
                .unwrap();
            fs::write(segment_path(dir.path(), newest + 1), leftover).unwrap();
            // A restart with nothing journaled, then another.
            drop(Outbox::open(dir.path(), LIMITS).unwrap());
            let (mut ob, _) = Outbox::open(dir.path(), LIMITS).unwrap();
            let next = stored(&mut ob, result("next")).result_id;
            assert!(
                next > 30,
                "id {next} given out again (leftover {leftover:?})"
            );
            ob.ack(next).unwrap();
            drop(ob);
            let (mut ob, _) = Outbox::open(dir.path(), LIMITS).unwrap();
            let again = stored(&mut ob, result("again")).result_id;
            assert!(again > next, "id {again} after {next}");
            ob.ack(again).unwrap();
        }
    }

    /// An ack the journal cannot take (a full disk) still stops the resending at once, and
    /// reaches the journal with the next record that can be written.
    #[test]
    fn an_ack_on_a_full_disk_is_applied_now_and_journaled_later() {
        let dir = tempfile::tempdir().unwrap();
        let big = ONE_SEGMENT;
        let (mut ob, _) = Outbox::open(dir.path(), big).unwrap();
        stored(&mut ob, result("a"));
        stored(&mut ob, result("b"));
        let real = std::mem::replace(
            &mut ob.active,
            Arc::new(OpenOptions::new().write(true).open("/dev/full").unwrap()),
        );
        assert!(ob.ack(1).is_err());
        let left: Vec<u64> = replay(&mut ob);
        assert_eq!(
            left,
            vec![2],
            "acknowledged, so never sent again in this run"
        );
        assert_eq!(ob.unjournaled_acks, vec![1]);
        // Space again. /dev/full could not be truncated, so the next record rotates first.
        ob.active = real;
        assert_eq!(stored(&mut ob, result("c")).result_id, 3);
        assert!(ob.unjournaled_acks.is_empty());
        drop(ob);
        let (mut ob, rec) = Outbox::open(dir.path(), big).unwrap();
        assert_eq!(rec.damaged.len(), 0);
        let left: Vec<u64> = replay(&mut ob);
        assert_eq!(left, vec![2, 3], "the ack of 1 reached the journal");
    }

    /// Results are held back until a sync covers them: not replayed, not acknowledgeable.
    /// The syncer thread syncs whatever queued meanwhile in one go.
    #[test]
    fn results_wait_for_the_syncer() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ob, _) = Outbox::open(dir.path(), LIMITS).unwrap();
        let (out, synced) = mpsc::sync_channel(4);
        let syncer = Syncer::start(out, |s| s).unwrap();
        let tickets: Vec<SyncTicket> = (0..30)
            .map(|i| ob.append(result(&format!("f{i}"))).unwrap().1)
            .collect();
        assert!(ob.segments.len() > 2, "1 KiB segments should have rotated");
        assert_eq!(ob.durable_next(), 1);
        assert_eq!(ob.next_unacked(0, ob.durable_next()), None);
        assert!(!ob.ack(1).unwrap(), "not sent, so not acknowledgeable");
        for t in tickets {
            syncer.send(t).unwrap();
        }
        let mut through = 0;
        while through < 31 {
            let s: Synced = synced.recv().unwrap();
            assert_eq!(s.result, Ok(()));
            through = s.through;
            ob.durable(through);
        }
        assert_eq!(ob.durable_next(), 31);
        assert_eq!(ob.next_unacked(0, ob.durable_next()), Some(1));
        assert!(ob.ack(1).unwrap());
    }

    /// A failed sync: the results written since the last good one are cut off (their
    /// requesters are told), the journal reads clean at the next start, and their ids are
    /// not given out again.
    #[test]
    fn a_failed_sync_cuts_the_unsynced_results_and_no_id_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ob, _) = Outbox::open(dir.path(), LIMITS).unwrap();
        let first = stored(&mut ob, result("synced"));
        let lost: Vec<u64> = (0..20)
            .map(|i| ob.append(result(&format!("lost-{i}"))).unwrap().0.result_id)
            .collect();
        assert!(
            ob.segments.len() > 2,
            "the unsynced results span a rotation"
        );
        assert_eq!(ob.sync_failed(), lost);
        assert_eq!(ob.durable_next(), ob.next_id());
        assert_eq!(replay(&mut ob), vec![first.result_id]);
        let next = stored(&mut ob, result("next")).result_id;
        assert_eq!(next, 22, "ids of cut results are not used again");
        drop(ob);
        let (mut ob, rec) = Outbox::open(dir.path(), LIMITS).unwrap();
        assert_eq!((rec.torn_bytes, rec.damaged.len()), (0, 0));
        assert_eq!(replay(&mut ob), vec![first.result_id, next]);
        assert_eq!(ob.next_id(), 23);
    }

    /// Replays read the results back whole from the journal, across segments and a
    /// reopen; a replay window ends where it was asked to.
    #[test]
    fn results_are_read_back_from_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ob, _) = Outbox::open(dir.path(), LIMITS).unwrap();
        let sent: Vec<ClassificationResult> = (0..40)
            .map(|i| {
                let mut r = result(&format!("file-{i}"));
                r.confidence = i as f32 / 40.0;
                stored(&mut ob, r)
            })
            .collect();
        assert!(ob.segments.len() > 2, "1 KiB segments should have rotated");
        for r in &sent {
            assert_eq!(ob.read(r.result_id).unwrap().as_ref(), Some(r));
        }
        assert_eq!(ob.next_unacked(4, 7), Some(4));
        ob.ack(5).unwrap();
        assert_eq!(ob.next_unacked(5, 7), Some(6));
        assert_eq!(ob.next_unacked(7, 7), None, "the window's end is exclusive");
        assert_eq!(ob.read(5).unwrap(), None, "acknowledged");
        drop(ob);
        let (mut ob, _) = Outbox::open(dir.path(), LIMITS).unwrap();
        for r in sent.iter().filter(|r| r.result_id != 5) {
            assert_eq!(ob.read(r.result_id).unwrap().as_ref(), Some(r));
        }
    }

    /// A record that changed on disk after it was written is reported with its id and
    /// place, never sent as if it were the result.
    #[test]
    fn a_record_damaged_after_writing_is_reported_not_sent() {
        let dir = tempfile::tempdir().unwrap();
        let big = ONE_SEGMENT;
        let mut ob = with_results(dir.path(), big, 3);
        let seg = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&seg).unwrap();
        let (_, records) = parse_records(&bytes);
        let second = records
            .iter()
            .filter(|r| r.kind == TYPE_RESULT)
            .nth(1)
            .unwrap()
            .offset;
        bytes[second + 20] ^= 0x01;
        fs::write(&seg, &bytes).unwrap();
        let err = ob.read(2).unwrap_err().to_string();
        assert!(
            err.contains("result 2") && err.contains("changed on disk"),
            "{err}"
        );
        assert_eq!(ob.read(3).unwrap().map(|r| r.result_id), Some(3));
    }
}
