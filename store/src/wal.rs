//! The write-ahead log.
//!
//! Records are framed as `[len: u32][crc32: u32][payload]`, the payload being
//! `[seq: u64][tenant length: u16][tenant][kind: u8][...]`. A record of kind
//! [`KIND_BATCH`] holds the Arrow IPC stream of one batch; one of kind
//! [`KIND_ENCODED`] holds the bytes the receiver converted the batch from (an
//! OTLP request), as they were at hand, with the converter's parameters and
//! which of the converted rows were stored: it costs no encoding, and a
//! request of the simulated shop is less than half its batch's IPC. Replay
//! converts it again with the store's [`Reconvert`].
//!
//! One writer thread owns the files: it takes every record waiting in its
//! queue, writes them, syncs once (group commit), hands the batches to the
//! in-memory buffer in sequence order and only then wakes the callers, so an
//! acknowledged export is always both durable and visible to queries.
//!
//! Files are named by the first sequence number they hold. The store rotates the log
//! before each flush, so once the flush is checkpointed every older file can go.
//! Files of the first format (`ANDNWAL1`, every payload a batch's IPC, without
//! the kind) replay as before.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use andon_model::{EncodedSpans, Reconvert, Tenant};
use arrow::array::{Array, BooleanArray};
use arrow::buffer::{BooleanBuffer, Buffer};
use arrow::compute::filter_record_batch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use tokio::sync::oneshot;
use tracing::{error, warn};

use crate::error::StoreError;
use crate::stats::StoreStats;

/// Files whose payloads are all a batch's IPC, without a kind.
const MAGIC_V1: &[u8; 8] = b"ANDNWAL1";
const MAGIC: &[u8; 8] = b"ANDNWAL2";
const MAX_RECORD: u32 = 1 << 30;
/// A record holding the Arrow IPC stream of the stored batch.
pub const KIND_BATCH: u8 = 0;
/// A record holding the encoded request the stored batch was converted from.
pub const KIND_ENCODED: u8 = 1;

/// One record's payload, without its sequence number (the writer assigns it):
/// a head, and the request's bytes, kept as they were received, behind it.
#[derive(Debug)]
pub struct Record {
    head: Vec<u8>,
    body: Option<Bytes>,
}

impl Record {
    fn len(&self) -> usize {
        self.head.len() + self.body.as_ref().map_or(0, Bytes::len)
    }
}

fn head(tenant: &Tenant, kind: u8, capacity: usize) -> Vec<u8> {
    let t = tenant.as_str().as_bytes();
    let mut buf = Vec::with_capacity(capacity + t.len() + 11);
    buf.extend_from_slice(&[0u8; 8]);
    buf.extend_from_slice(&(t.len() as u16).to_le_bytes());
    buf.extend_from_slice(t);
    buf.push(kind);
    buf
}

/// A record of the batch itself, as Arrow IPC.
pub fn encode_batch(tenant: &Tenant, batch: &RecordBatch) -> Result<Record, StoreError> {
    let mut buf = head(tenant, KIND_BATCH, batch.get_array_memory_size() / 2 + 64);
    let mut w = StreamWriter::try_new(&mut buf, &batch.schema())?;
    w.write(batch)?;
    w.finish()?;
    drop(w);
    Ok(Record { head: buf, body: None })
}

/// A record of the request a batch was converted from. `stored` marks the
/// converted rows that were new (the rest were duplicates of spans already
/// stored); `None` when all were. Replay keeps exactly those rows, whatever
/// the deduplication index remembers by then.
pub fn encode_request(
    tenant: &Tenant,
    encoded: &EncodedSpans,
    stored: Option<&BooleanArray>,
) -> Result<Record, StoreError> {
    let recipe_len = u16::try_from(encoded.recipe.len())
        .map_err(|_| StoreError::Refused(format!("a conversion recipe of {} bytes", encoded.recipe.len())))?;
    let rows = stored.map_or(0, Array::len);
    let mut buf = head(tenant, KIND_ENCODED, 6 + encoded.recipe.len() + rows.div_ceil(8));
    buf.extend_from_slice(&recipe_len.to_le_bytes());
    buf.extend_from_slice(&encoded.recipe);
    let rows32 = u32::try_from(rows).map_err(|_| StoreError::Refused(format!("a request of {rows} spans")))?;
    buf.extend_from_slice(&rows32.to_le_bytes());
    if let Some(mask) = stored {
        let mut bits = vec![0u8; rows.div_ceil(8)];
        for (i, keep) in mask.iter().enumerate() {
            if keep == Some(true) {
                bits[i / 8] |= 1 << (i % 8);
            }
        }
        buf.extend_from_slice(&bits);
    }
    Ok(Record { head: buf, body: Some(encoded.body.clone()) })
}

/// Why a record could not be read back.
enum Undecodable {
    /// The bytes are not a record (though their checksum matched).
    Corrupt(String),
    /// The record holds a request and the store was opened without a way to
    /// convert it: nothing is wrong with the log.
    NoConverter,
}

impl From<StoreError> for Undecodable {
    fn from(e: StoreError) -> Self {
        Undecodable::Corrupt(e.to_string())
    }
}

impl From<arrow::error::ArrowError> for Undecodable {
    fn from(e: arrow::error::ArrowError) -> Self {
        Undecodable::Corrupt(e.to_string())
    }
}

fn decode_payload(
    payload: &[u8],
    with_kind: bool,
    reconvert: Option<&dyn Reconvert>,
) -> Result<(u64, Tenant, Vec<RecordBatch>), Undecodable> {
    let corrupt = |what: &str| Undecodable::Corrupt(format!("wal record: {what}"));
    if payload.len() < 10 {
        return Err(corrupt("too short"));
    }
    let seq = u64::from_le_bytes(payload[..8].try_into().map_err(|_| corrupt("seq"))?);
    let tlen = usize::from(u16::from_le_bytes([payload[8], payload[9]]));
    let tenant_bytes = payload.get(10..10 + tlen).ok_or_else(|| corrupt("tenant"))?;
    let tenant = std::str::from_utf8(tenant_bytes).map_err(|_| corrupt("tenant utf-8"))?;
    let tenant = Tenant::new(tenant).map_err(|e| corrupt(&e.to_string()))?;
    let mut rest = &payload[10 + tlen..];
    let kind = if with_kind {
        let (&k, r) = rest.split_first().ok_or_else(|| corrupt("kind"))?;
        rest = r;
        k
    } else {
        KIND_BATCH
    };
    let batches = match kind {
        KIND_BATCH => StreamReader::try_new(rest, None)?.collect::<Result<Vec<_>, _>>()?,
        KIND_ENCODED => {
            let mut take = |n: usize, what: &str| -> Result<&[u8], Undecodable> {
                let (a, b) = rest.split_at_checked(n).ok_or_else(|| corrupt(what))?;
                rest = b;
                Ok(a)
            };
            let recipe_len = take(2, "recipe length")?;
            let recipe = take(usize::from(u16::from_le_bytes([recipe_len[0], recipe_len[1]])), "recipe")?;
            let rows = take(4, "rows")?;
            let rows = u32::from_le_bytes([rows[0], rows[1], rows[2], rows[3]]) as usize;
            let bits = take(rows.div_ceil(8), "stored rows")?;
            let reconvert = reconvert.ok_or(Undecodable::NoConverter)?;
            let batch = reconvert
                .reconvert(&tenant, recipe, rest)
                .map_err(|e| Undecodable::Corrupt(format!("wal record: converting its request again: {e}")))?;
            match batch {
                None => Vec::new(),
                Some(b) if rows == 0 => vec![b],
                Some(b) if b.num_rows() != rows => {
                    // The converter differs from the one that wrote the record
                    // (an upgrade): keep every row; deduplication still drops
                    // the spans already stored.
                    warn!(
                        seq,
                        rows = b.num_rows(),
                        logged = rows,
                        "a logged request converts to another number of spans than it did; all are replayed"
                    );
                    vec![b]
                }
                Some(b) => {
                    let mask = BooleanArray::new(BooleanBuffer::new(Buffer::from(bits), 0, rows), None);
                    vec![filter_record_batch(&b, &mask)?]
                }
            }
        }
        k => return Err(corrupt(&format!("unknown kind {k}"))),
    };
    Ok((seq, tenant, batches))
}

/// A record read back during replay.
#[derive(Debug)]
pub struct Replayed {
    pub seq: u64,
    pub tenant: Tenant,
    pub batches: Vec<RecordBatch>,
}

fn wal_files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            files.push((first, path));
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every intact record with `seq > after`, in order. A file ends at its
/// first torn or corrupt record: a torn tail is a crash in the middle of a
/// write, but a corrupt record may have acknowledged records after it, so
/// whatever follows it is copied aside into `quarantine` (named after the file
/// and the offset) before the file is cut there. Returns the last sequence
/// number seen and the number of files that had bytes put aside.
///
/// Records of requests are converted again with `reconvert`; without one, a
/// log that holds any is refused (nothing is put aside).
pub fn replay(
    dir: &Path,
    quarantine: &Path,
    after: u64,
    reconvert: Option<&dyn Reconvert>,
    mut f: impl FnMut(Replayed),
) -> Result<(u64, u64), StoreError> {
    let mut last_seq = after;
    let mut quarantined = 0;
    for (_, path) in wal_files(dir)? {
        let mut file = OpenOptions::new().read(true).write(true).open(&path)?;
        let len = file.metadata()?.len();
        let mut r = BufReader::new(&mut file);
        let mut magic = [0u8; 8];
        if len < 8 || r.read_exact(&mut magic).is_err() || (&magic != MAGIC && &magic != MAGIC_V1) {
            warn!(path = %path.display(), "wal file without a valid header, skipped");
            continue;
        }
        let with_kind = &magic == MAGIC;
        let mut pos = 8u64;
        let mut header = [0u8; 8];
        let good_end = loop {
            if r.read_exact(&mut header).is_err() {
                break pos;
            }
            let rec_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            if rec_len > MAX_RECORD || pos + 8 + u64::from(rec_len) > len {
                break pos;
            }
            let mut payload = vec![0u8; rec_len as usize];
            if r.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
                break pos;
            }
            pos += 8 + u64::from(rec_len);
            if payload.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).is_some_and(|seq| seq <= after)
            {
                // Already in a checkpointed flush: not converted again.
                continue;
            }
            match decode_payload(&payload, with_kind, reconvert) {
                Ok((seq, tenant, batches)) => {
                    last_seq = last_seq.max(seq);
                    f(Replayed { seq, tenant, batches });
                }
                Err(Undecodable::NoConverter) => {
                    return Err(StoreError::Refused(format!(
                        "{} holds OTLP requests, and the store was opened without the receivers' converter to \
                         replay them",
                        path.display()
                    )));
                }
                Err(Undecodable::Corrupt(e)) => {
                    error!(path = %path.display(), error = %e, "wal record undecodable though its checksum matched");
                    break pos - 8 - u64::from(rec_len);
                }
            }
        };
        drop(r);
        if good_end < len {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("wal");
            let aside = quarantine.join(format!("{name}.from-{good_end}"));
            fs::create_dir_all(quarantine)?;
            let mut src = File::open(&path)?;
            src.seek(SeekFrom::Start(good_end))?;
            let mut dst = File::create(&aside)?;
            io::copy(&mut src, &mut dst)?;
            dst.sync_all()?;
            sync_dir(quarantine)?;
            error!(
                path = %path.display(),
                offset = good_end,
                bytes = len - good_end,
                kept_in = %aside.display(),
                "wal holds a torn or corrupt record: what follows it is kept aside, not replayed"
            );
            quarantined += 1;
            file.set_len(good_end)?;
            file.sync_all()?;
        }
    }
    Ok((last_seq, quarantined))
}

/// Deletes every WAL file whose records all have `seq <= through`.
pub fn truncate_through(dir: &Path, through: u64) -> Result<(), StoreError> {
    let files = wal_files(dir)?;
    for (i, (_, path)) in files.iter().enumerate() {
        let next_first = files.get(i + 1).map(|(f, _)| *f);
        if matches!(next_first, Some(n) if n <= through + 1) {
            fs::remove_file(path)?;
        }
    }
    Ok(())
}

/// Syncs a directory so that a rename or a new file in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Called by the writer thread, in sequence order, after records are durable and
/// before their callers are woken.
pub type OnDurable = Box<dyn FnMut(Vec<(u64, Tenant, RecordBatch)>) + Send>;

enum Command {
    Append { record: Record, tenant: Tenant, batch: RecordBatch, done: oneshot::Sender<Result<u64, String>> },
    Rotate { done: oneshot::Sender<Result<u64, String>> },
}

/// Handle to the writer thread.
#[derive(Debug)]
pub struct Wal {
    tx: Option<mpsc::SyncSender<Command>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub struct WalOptions {
    pub dir: PathBuf,
    pub fsync: bool,
    pub segment_bytes: u64,
    pub next_seq: u64,
    pub stats: Arc<StoreStats>,
}

struct Writer {
    opts: WalOptions,
    file: Option<(File, u64)>,
    next_seq: u64,
}

impl Writer {
    fn open_new(&mut self) -> io::Result<()> {
        let path = self.opts.dir.join(format!("{:020}.wal", self.next_seq));
        let mut f = OpenOptions::new().create(true).truncate(true).write(true).open(&path)?;
        f.write_all(MAGIC)?;
        if self.opts.fsync {
            f.sync_all()?;
            sync_dir(&self.opts.dir)?;
        }
        self.file = Some((f, MAGIC.len() as u64));
        Ok(())
    }

    /// Writes the frames and syncs once. On failure the file is cut back to where the
    /// group started, so a later group never follows garbage.
    fn write_group(&mut self, frames: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            self.open_new()?;
        }
        let Some((f, len)) = self.file.as_mut() else {
            return Err(io::Error::other("wal file not open"));
        };
        let start = *len;
        let result = f.write_all(frames).and_then(|()| {
            if self.opts.fsync {
                let t = Instant::now();
                let r = f.sync_data();
                self.opts.stats.fsync_latency.observe(t.elapsed());
                r
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => {
                *len += frames.len() as u64;
                self.opts.stats.add_wal_bytes(frames.len() as u64);
                Ok(())
            }
            Err(e) => {
                if f.set_len(start).and_then(|()| f.seek(SeekFrom::Start(start)).map(|_| ())).is_err() {
                    // The file is in an unknown state: start a fresh one next time.
                    self.file = None;
                }
                Err(e)
            }
        }
    }
}

impl Wal {
    pub fn start(opts: WalOptions, mut on_durable: OnDurable) -> Result<Self, StoreError> {
        fs::create_dir_all(&opts.dir)?;
        let (tx, rx) = mpsc::sync_channel::<Command>(1024);
        let mut w = Writer { next_seq: opts.next_seq, opts, file: None };
        w.open_new()?;
        let thread = std::thread::Builder::new().name("andon-wal".into()).spawn(move || {
            let mut frames = Vec::new();
            while let Ok(first) = rx.recv() {
                let mut pending = vec![first];
                // Group commit: everything already queued shares one sync.
                let mut bytes = 0usize;
                while bytes < 64 << 20 {
                    match rx.try_recv() {
                        Ok(c) => {
                            if let Command::Append { record, .. } = &c {
                                bytes += record.len();
                            }
                            pending.push(c);
                        }
                        Err(_) => break,
                    }
                }
                let mut appends = Vec::new();
                for cmd in pending {
                    match cmd {
                        Command::Append { record: Record { mut head, body }, tenant, batch, done } => {
                            let len = head.len() + body.as_ref().map_or(0, Bytes::len);
                            appends.push((len, tenant, batch, done));
                            let seq = w.next_seq + appends.len() as u64 - 1;
                            head[..8].copy_from_slice(&seq.to_le_bytes());
                            let mut crc = crc32fast::Hasher::new();
                            crc.update(&head);
                            let body = body.unwrap_or_default();
                            crc.update(&body);
                            frames.extend_from_slice(&(len as u32).to_le_bytes());
                            frames.extend_from_slice(&crc.finalize().to_le_bytes());
                            frames.extend_from_slice(&head);
                            frames.extend_from_slice(&body);
                        }
                        Command::Rotate { done } => {
                            // Appends queued before the rotation land in the old file.
                            Self::commit(&mut w, &mut frames, &mut appends, &mut on_durable);
                            let last = w.next_seq - 1;
                            w.file = None;
                            let r = w.open_new().map(|()| last).map_err(|e| e.to_string());
                            let _ = done.send(r);
                        }
                    }
                }
                Self::commit(&mut w, &mut frames, &mut appends, &mut on_durable);
            }
        })?;
        Ok(Self { tx: Some(tx), thread: Some(thread) })
    }

    #[allow(clippy::type_complexity)]
    fn commit(
        w: &mut Writer,
        frames: &mut Vec<u8>,
        appends: &mut Vec<(usize, Tenant, RecordBatch, oneshot::Sender<Result<u64, String>>)>,
        on_durable: &mut OnDurable,
    ) {
        if appends.is_empty() {
            return;
        }
        match w.write_group(frames) {
            Ok(()) => {
                let first = w.next_seq;
                w.next_seq += appends.len() as u64;
                let mut dones = Vec::with_capacity(appends.len());
                let durable = appends
                    .drain(..)
                    .enumerate()
                    .map(|(i, (_, tenant, batch, done))| {
                        dones.push((first + i as u64, done));
                        (first + i as u64, tenant, batch)
                    })
                    .collect();
                on_durable(durable);
                if w.file.as_ref().is_some_and(|(_, len)| *len >= w.opts.segment_bytes) {
                    // The next group opens a file named by its first sequence number.
                    w.file = None;
                }
                for (seq, done) in dones {
                    let _ = done.send(Ok(seq));
                }
            }
            Err(e) => {
                error!(error = %e, "wal write failed");
                for (_, _, _, done) in appends.drain(..) {
                    let _ = done.send(Err(e.to_string()));
                }
            }
        }
        frames.clear();
    }

    fn sender(&self) -> Result<&mpsc::SyncSender<Command>, StoreError> {
        self.tx.as_ref().ok_or(StoreError::Closed)
    }

    /// Appends a record made by [`encode_batch`] or [`encode_request`] for
    /// `batch`; resolves once it is durable. A record over the frame limit is
    /// refused whole: its length would not fit the frame's length field.
    pub async fn append(&self, record: Record, tenant: Tenant, batch: RecordBatch) -> Result<u64, StoreError> {
        if record.len() > MAX_RECORD as usize {
            return Err(StoreError::Refused(format!(
                "a batch of {} bytes is over the WAL's record limit of {} bytes; send smaller requests",
                record.len(),
                MAX_RECORD
            )));
        }
        let (done, rx) = oneshot::channel();
        let tx = self.sender()?;
        match tx.try_send(Command::Append { record, tenant, batch, done }) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(cmd)) => {
                // The queue is bounded; waiting for room blocks a blocking-pool thread,
                // never a receiver's.
                let tx = tx.clone();
                let sent =
                    tokio::task::spawn_blocking(move || tx.send(cmd).is_ok()).await.map_err(|_| StoreError::Closed)?;
                if !sent {
                    return Err(StoreError::Closed);
                }
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(StoreError::Closed),
        }
        rx.await.map_err(|_| StoreError::Closed)?.map_err(StoreError::Wal)
    }

    /// Starts a new file; returns the last sequence number in the old ones.
    pub fn rotate(&self) -> Result<u64, StoreError> {
        let (done, rx) = oneshot::channel();
        self.sender()?.send(Command::Rotate { done }).map_err(|_| StoreError::Closed)?;
        rx.blocking_recv().map_err(|_| StoreError::Closed)?.map_err(StoreError::Wal)
    }

    /// Stops the writer after it has written everything queued.
    pub fn close(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.close();
    }
}
