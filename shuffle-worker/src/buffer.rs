//! The worker's local buffer: pushed batches, indexed in RocksDB, their bytes in the value log
//! ([`crate::vlog`]).
//!
//! Key layout (big-endian, so one partition is one contiguous range in map order):
//!
//! ```text
//! app_len u8 | app bytes | shuffle_id u32 | generation u32 | partition u32 | map u32 | attempt u64 | seq u32
//! ```
//!
//! Values are [`ValuePtr`]s into the value log, so each pushed byte is written once locally
//! (RocksDB's WAL and memtables carry 20 bytes a batch). Values written before the value log
//! hold the encoded batch itself and are still read.
//!
//! Invariants:
//! - A write is acknowledged only after its bytes are in the value log and its pointer in
//!   RocksDB's WAL (both synced to disk when `sync_writes` is on); a process crash loses no
//!   acknowledged batch.
//! - Writing the same (map, attempt, seq) twice stores one copy, the first: duplicates are
//!   idempotent. Puts of one key are serialized, so no copy is left unnamed.
//! - Every pointer deleted from the index is released in the value log exactly once: deletes
//!   of ranges exclude puts, and deletes of keys release what they found, under that same
//!   exclusion.
//! - With `sync_writes`, a delete is synced to the WAL before its pointers are released, so a
//!   value log file is unlinked only once no power loss can bring back a pointer into it.
//! - An index entry pointing into a value log file that is gone or too short (a power loss
//!   without `sync_writes`, or damage) is deleted on open, as a batch already spilled or
//!   dropped: it never makes a partition unreadable (the count is logged).
//! - A scan reads in steps of one chunk, each with its own iterator and value log files
//!   ([`Buffer::scan_step`]); between steps it holds neither, so however slowly its chunks are
//!   consumed it pins no RocksDB version and no value log file (deleted data's disk space is
//!   freed at once).
//! - `held` counts the bytes of every stored batch, per partition; it is rebuilt by a key scan
//!   on open and kept exact on every put and delete. A partition whose scanned keys were all
//!   deleted (a pressure or drain spill) stays listed at 0 bytes until it is dropped whole, so
//!   the heartbeat still names its shuffle and the seal spill releases its epochs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use rocksdb::{Options, WriteBatch, WriteOptions, DB};
use shuffle_proto::batch::StreamRecord;
use shuffle_proto::keys::prefix_end;
use shuffle_proto::{AppId, ShuffleKey};

use crate::vlog::{file_lengths, value_len, ValueLog, ValuePtr};

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("value log: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt key in the buffer: {0}")]
    CorruptKey(String),
    /// A fault test failed this step on purpose (failpoints).
    #[error("injected fault at {0}")]
    Injected(&'static str),
}

impl BufferError {
    /// The error a pusher sees: `DiskFull` (retryable) when the disk has no room, else a
    /// fixed message; the detail stays in the worker's log.
    pub fn wire(&self) -> shuffle_proto::WireError {
        use shuffle_proto::{ErrorCode, WireError};
        match self {
            BufferError::Db(e) if is_no_space(e.as_ref()) => {
                WireError::new(ErrorCode::DiskFull, "the worker's disk is full")
            }
            BufferError::Io(e) if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) => {
                WireError::new(ErrorCode::DiskFull, "the worker's disk is full")
            }
            _ => WireError::new(ErrorCode::Internal, "storing the batch failed"),
        }
    }
}

/// Whether a storage error's text says the disk is full (RocksDB reports ENOSPC as text).
pub fn is_no_space(text: &str) -> bool {
    text.contains("No space left on device") || text.contains("NoSpace")
}

/// The key prefix of one shuffle.
pub fn shuffle_prefix(k: &ShuffleKey) -> Vec<u8> {
    let app = k.app.as_str().as_bytes();
    let mut v = Vec::with_capacity(1 + app.len() + 8 + 20);
    // Ids are at most 128 bytes, so the length fits a byte.
    v.push(app.len() as u8);
    v.extend_from_slice(app);
    v.extend_from_slice(&k.shuffle_id.to_be_bytes());
    v.extend_from_slice(&k.generation.to_be_bytes());
    v
}

pub fn partition_prefix(k: &ShuffleKey, partition: u32) -> Vec<u8> {
    let mut v = shuffle_prefix(k);
    v.extend_from_slice(&partition.to_be_bytes());
    v
}

fn map_key(prefix: &[u8], map: u32, attempt: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(prefix.len() + 16);
    v.extend_from_slice(prefix);
    v.extend_from_slice(&map.to_be_bytes());
    v.extend_from_slice(&attempt.to_be_bytes());
    v
}

pub fn batch_key(k: &ShuffleKey, partition: u32, map: u32, attempt: u64, seq: u32) -> Vec<u8> {
    let mut v = map_key(&partition_prefix(k, partition), map, attempt);
    v.extend_from_slice(&seq.to_be_bytes());
    v
}

/// A parsed buffer key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchKey {
    pub shuffle: ShuffleKey,
    pub partition: u32,
    pub map: u32,
    pub attempt: u64,
    pub seq: u32,
}

pub fn parse_key(k: &[u8]) -> Result<BatchKey, BufferError> {
    let bad = || BufferError::CorruptKey(format!("{k:02x?}"));
    let app_len = *k.first().ok_or_else(bad)? as usize;
    if k.len() != 1 + app_len + 4 + 4 + 4 + 4 + 8 + 4 {
        return Err(bad());
    }
    let app = std::str::from_utf8(&k[1..1 + app_len]).map_err(|_| bad())?;
    let app = AppId::new(app).map_err(|_| bad())?;
    let rest = &k[1 + app_len..];
    let u32_at = |i: usize| u32::from_be_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
    let mut attempt = [0u8; 8];
    attempt.copy_from_slice(&rest[16..24]);
    Ok(BatchKey {
        shuffle: ShuffleKey::new(app, u32_at(0), u32_at(4)),
        partition: u32_at(8),
        map: u32_at(12),
        attempt: u64::from_be_bytes(attempt),
        seq: u32_at(24),
    })
}

/// Which (map, attempt) pairs a scan returns.
#[derive(Clone, Debug)]
pub enum AttemptFilter {
    /// Every attempt (used when spilling a partition whose maps may still commit).
    All,
    /// Only these; other attempts are skipped by seeking past them.
    Only(BTreeMap<u32, u64>),
}

impl AttemptFilter {
    fn allows(&self, map: u32, attempt: u64) -> bool {
        match self {
            AttemptFilter::All => true,
            AttemptFilter::Only(m) => m.get(&map) == Some(&attempt),
        }
    }
}

/// What a partition scan reads: maps `[start_map, end_map)` of one partition, by attempt.
#[derive(Clone, Debug)]
pub struct ScanRange {
    pub shuffle: ShuffleKey,
    pub partition: u32,
    pub start_map: u32,
    pub end_map: u32,
    pub filter: AttemptFilter,
}

/// One RocksDB memtable's size. Memtables hold keys and pointers only (about 60 bytes a
/// batch), so this bounds index memory, not pushed data.
pub const WRITE_BUFFER_BYTES: usize = 16 << 20;
/// Memtables a worker keeps at most (the one filling and the ones being flushed).
pub const MAX_WRITE_BUFFERS: i32 = 2;
/// Stripes of the per-key put lock.
const PUT_STRIPES: usize = 64;

/// Room a scan chunk has past its target size: the record that crosses the target is still
/// appended whole (most batches are smaller).
pub const CHUNK_SLACK: usize = 64 * 1024;

/// Batch storage: a RocksDB index over the value log.
pub struct Buffer {
    db: DB,
    /// Kept for the statistics tests read.
    #[cfg_attr(not(test), allow(dead_code))]
    opts: Options,
    vlog: ValueLog,
    sync: bool,
    held: Mutex<HashMap<(ShuffleKey, u32), u64>>,
    /// Puts hold it shared, deletes exclusively: a delete's pointers are exactly those it
    /// removed from the index.
    deletes: RwLock<()>,
    /// Serializes puts of one key (by hash), so a duplicate never writes a second copy.
    put_locks: Vec<Mutex<()>>,
}

impl Buffer {
    pub fn open(dir: &Path, sync_writes: bool) -> Result<Arc<Buffer>, BufferError> {
        Self::open_sized(dir, sync_writes, crate::vlog::FILE_BYTES)
    }

    /// [`Buffer::open`] with value log files rolling over at `file_bytes`.
    pub fn open_sized(dir: &Path, sync_writes: bool, file_bytes: u64) -> Result<Arc<Buffer>, BufferError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_enable_blob_files(true);
        opts.set_min_blob_size(4096);
        opts.set_write_buffer_size(WRITE_BUFFER_BYTES);
        opts.set_max_write_buffer_number(MAX_WRITE_BUFFERS);
        if cfg!(test) {
            // Tests count WAL syncs.
            opts.enable_statistics();
        }
        let db = DB::open(&opts, dir)?;
        // The value log lives in the index's directory (RocksDB ignores a subdirectory).
        let values = dir.join("values");
        let (held, live) = scan_index(&db, &file_lengths(&values)?, sync_writes)?;
        let vlog = ValueLog::open_sized(&values, sync_writes, live, file_bytes)?;
        let buf = Buffer {
            db,
            opts,
            vlog,
            sync: sync_writes,
            held: Mutex::new(held),
            deletes: RwLock::new(()),
            put_locks: (0..PUT_STRIPES).map(|_| Mutex::new(())).collect(),
        };
        Ok(Arc::new(buf))
    }

    /// Index writes: synced to the WAL with `sync_writes`.
    fn write_opts(&self) -> WriteOptions {
        let mut wo = WriteOptions::default();
        wo.set_sync(self.sync);
        wo
    }

    /// WAL syncs so far (statistics are on in tests only).
    #[cfg(test)]
    fn wal_syncs(&self) -> u64 {
        self.opts.get_ticker_count(rocksdb::statistics::Ticker::WalFileSynced)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<(ShuffleKey, u32), u64>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn deletes_shared(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.deletes.read().unwrap_or_else(|p| p.into_inner())
    }

    fn deletes_exclusive(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.deletes.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores one batch. Returns once its bytes are in the value log and its pointer in the
    /// WAL. A batch already stored under the same key is kept, and this one dropped.
    pub fn put(&self, key: &BatchKey, batch: &[u8]) -> Result<(), BufferError> {
        let k = batch_key(&key.shuffle, key.partition, key.map, key.attempt, key.seq);
        let _deletes = self.deletes_shared();
        let stripe = crc32fast::hash(&k) as usize % self.put_locks.len();
        let _key = self.put_locks[stripe].lock().unwrap_or_else(|p| p.into_inner());
        if self.db.get_pinned(&k)?.is_some() {
            return Ok(());
        }
        let ptr = self.vlog.append(batch)?;
        if let Err(e) = self.db.put_opt(&k, ptr.encode(), &self.write_opts()) {
            self.vlog.release(&[ptr]);
            return Err(e.into());
        }
        *self.held().entry((key.shuffle.clone(), key.partition)).or_insert(0) += batch.len() as u64;
        Ok(())
    }

    /// Bytes the value log holds live, and its files on disk.
    pub fn value_log_usage(&self) -> (u64, usize) {
        self.vlog.usage()
    }

    /// Bytes held, in all.
    pub fn bytes_held(&self) -> u64 {
        self.held().values().sum()
    }

    /// Partitions with data, and their bytes.
    pub fn partitions(&self) -> Vec<(ShuffleKey, u32, u64)> {
        let mut v: Vec<_> = self.held().iter().map(|((s, p), b)| (s.clone(), *p, *b)).collect();
        v.sort();
        v
    }

    /// Shuffles with data.
    pub fn shuffles(&self) -> Vec<ShuffleKey> {
        self.held().keys().map(|(s, _)| s.clone()).collect::<BTreeSet<_>>().into_iter().collect()
    }

    pub fn partition_bytes(&self, shuffle: &ShuffleKey, partition: u32) -> u64 {
        self.held().get(&(shuffle.clone(), partition)).copied().unwrap_or(0)
    }

    /// Streams the records of one partition in key order, maps `[start_map, end_map)`, filtered
    /// by attempt. Each record is appended to `chunk` encoded as a [`StreamRecord`]; whenever
    /// `chunk` reaches `chunk_bytes`, and at the end, `flush` is called with it and the records
    /// it holds, and may stop the scan by returning `false`. Reads in [`Buffer::scan_step`]s.
    pub fn scan_partition(
        &self,
        range: &ScanRange,
        chunk_bytes: usize,
        flush: impl FnMut(&mut Vec<u8>, u32) -> bool,
    ) -> Result<ScanStats, BufferError> {
        self.scan_inner(range, chunk_bytes, flush, None)
    }

    /// Like [`Buffer::scan_partition`], also recording every key returned.
    pub fn scan_partition_keys(
        &self,
        range: &ScanRange,
        chunk_bytes: usize,
        flush: impl FnMut(&mut Vec<u8>, u32) -> bool,
        keys: &mut ScannedKeys,
    ) -> Result<ScanStats, BufferError> {
        self.scan_inner(range, chunk_bytes, flush, Some(keys))
    }

    fn scan_inner(
        &self,
        range: &ScanRange,
        chunk_bytes: usize,
        mut flush: impl FnMut(&mut Vec<u8>, u32) -> bool,
        mut keys: Option<&mut ScannedKeys>,
    ) -> Result<ScanStats, BufferError> {
        let mut cursor = ScanCursor::default();
        let mut chunk = Vec::with_capacity(chunk_bytes + CHUNK_SLACK);
        let mut stats = ScanStats::default();
        while !cursor.done {
            let step =
                self.scan_step(range, &mut cursor, chunk_bytes, &mut chunk, keys.as_deref_mut().map(|k| &mut k.keys))?;
            stats.records += step.records;
            stats.bytes += step.bytes;
            if step.records > 0 {
                // A step returns at most one chunk's records, far below u32::MAX.
                if !flush(&mut chunk, u32::try_from(step.records).unwrap_or(u32::MAX)) {
                    break;
                }
                chunk.clear();
            }
        }
        Ok(stats)
    }

    /// One step of a partition scan: appends the records of `range` after `cursor`, in key
    /// order, to `chunk` until it holds `chunk_bytes` (a record that crosses it goes whole) or
    /// the range ends, moves the cursor past them, and with `keys` records their keys.
    ///
    /// A step reads through an iterator of its own, over the value log files of that moment,
    /// and lets go of both before it returns: between steps a scan pins no RocksDB version
    /// and no value log file, however slowly its chunks are consumed. Each step sees the index
    /// as of its start, so a scan returns every batch stored before it began and not deleted
    /// before the step that reaches it, plus maybe some stored meanwhile; a put is one key, so
    /// never half a batch.
    pub fn scan_step(
        &self,
        range: &ScanRange,
        cursor: &mut ScanCursor,
        chunk_bytes: usize,
        chunk: &mut Vec<u8>,
        mut keys: Option<&mut Vec<Vec<u8>>>,
    ) -> Result<ScanStats, BufferError> {
        let mut stats = ScanStats::default();
        if cursor.done {
            return Ok(stats);
        }
        let ScanRange { shuffle, partition, start_map, end_map, filter } = range;
        let prefix = partition_prefix(shuffle, *partition);
        // One step, so every file the iterator's view points into is in `files` (see
        // crate::vlog); an iterator reads the index as of its creation.
        let (mut it, files) = self.vlog.with_files(|f| (self.db.raw_iterator(), f.clone()));
        match &cursor.after {
            // Keys of a partition have one length, so this is the key right after `after`.
            Some(after) => {
                let mut next = Vec::with_capacity(after.len() + 1);
                next.extend_from_slice(after);
                next.push(0);
                it.seek(next);
            }
            None => it.seek(map_key(&prefix, *start_map, 0)),
        }
        let ended = loop {
            if !it.valid() {
                break true;
            }
            let Some(k) = it.key() else { break true };
            if !k.starts_with(&prefix) {
                break true;
            }
            let bk = parse_key(k)?;
            if bk.map >= *end_map {
                break true;
            }
            if !filter.allows(bk.map, bk.attempt) {
                // Seek past this attempt: to the wanted one of this map if it comes later, else
                // to the next map.
                let target = match filter {
                    AttemptFilter::Only(m) => match m.get(&bk.map) {
                        Some(want) if *want > bk.attempt => map_key(&prefix, bk.map, *want),
                        _ => match bk.map.checked_add(1) {
                            Some(next) => map_key(&prefix, next, 0),
                            None => break true,
                        },
                    },
                    AttemptFilter::All => unreachable_filter(),
                };
                it.seek(target);
                continue;
            }
            let Some(v) = it.value() else { break true };
            let len = match ValuePtr::decode(v) {
                Some(ptr) => {
                    StreamRecord::encode_header(bk.map, bk.attempt, bk.seq, ptr.len, chunk);
                    ValueLog::read_into(&files, ptr, chunk)?;
                    ptr.len as u64
                }
                None => {
                    StreamRecord::encode(bk.map, bk.attempt, bk.seq, v, chunk);
                    v.len() as u64
                }
            };
            if let Some(keys) = keys.as_deref_mut() {
                keys.push(k.to_vec());
            }
            cursor.after = Some(k.to_vec());
            stats.records += 1;
            stats.bytes += len;
            if chunk.len() >= chunk_bytes {
                break false;
            }
            it.next();
        };
        it.status()?;
        cursor.done = ended;
        Ok(stats)
    }

    /// Deletes every key under `prefix`, releases their bytes in the value log and then runs
    /// `forget` on `held`, all while no put runs (a put's bytes are counted once, or dropped).
    fn delete_prefix(
        &self,
        prefix: &[u8],
        forget: impl FnOnce(&mut HashMap<(ShuffleKey, u32), u64>),
    ) -> Result<(), BufferError> {
        let _deletes = self.deletes_exclusive();
        let end = prefix_end(prefix);
        let mut ptrs = Vec::new();
        let mut it = self.db.raw_iterator();
        it.seek(prefix);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !k.starts_with(prefix) {
                break;
            }
            ptrs.extend(ValuePtr::decode(v));
            it.next();
        }
        it.status()?;
        let mut b = WriteBatch::default();
        b.delete_range(prefix, &end);
        // Durable before any file goes (see the module invariants).
        self.db.write_opt(b, &self.write_opts())?;
        self.vlog.release(&ptrs);
        forget(&mut self.held());
        Ok(())
    }

    /// Drops one partition's local data.
    pub fn delete_partition(&self, shuffle: &ShuffleKey, partition: u32) -> Result<(), BufferError> {
        self.delete_prefix(&partition_prefix(shuffle, partition), |held| {
            held.remove(&(shuffle.clone(), partition));
        })
    }

    /// Drops exactly the keys an earlier scan returned (those still stored).
    pub fn delete_keys(&self, shuffle: &ShuffleKey, partition: u32, scanned: &ScannedKeys) -> Result<(), BufferError> {
        let _deletes = self.deletes_exclusive();
        let mut b = WriteBatch::default();
        let mut ptrs = Vec::new();
        let mut bytes = 0u64;
        for (k, v) in scanned.keys.iter().zip(self.db.multi_get(&scanned.keys)) {
            let Some(v) = v? else { continue };
            bytes += value_len(&v);
            ptrs.extend(ValuePtr::decode(&v));
            b.delete(k);
        }
        // Durable before any file goes (see the module invariants).
        self.db.write_opt(b, &self.write_opts())?;
        self.vlog.release(&ptrs);
        // A partition emptied this way stays listed (at 0 bytes) until it is dropped whole:
        // its epochs are still live at the master, and only a seal or drain spill of it (an
        // empty last segment) releases them.
        if let Some(e) = self.held().get_mut(&(shuffle.clone(), partition)) {
            *e = e.saturating_sub(bytes);
        }
        Ok(())
    }

    /// Drops every partition of a shuffle.
    pub fn delete_shuffle(&self, shuffle: &ShuffleKey) -> Result<(), BufferError> {
        self.delete_prefix(&shuffle_prefix(shuffle), |held| held.retain(|(s, _), _| s != shuffle))
    }
}

/// Bytes held per partition and live bytes per value log file, from a scan of the index.
type IndexTotals = (HashMap<(ShuffleKey, u32), u64>, HashMap<u32, u64>);

/// Dangling entries deleted in one write on open.
const DANGLING_BATCH: usize = 1024;

/// Scans the index; entries pointing past the value log files `lens` lists are deleted (see
/// the module invariants), in batches while the scan goes on (it reads a snapshot).
fn scan_index(db: &DB, lens: &HashMap<u32, u64>, sync: bool) -> Result<IndexTotals, BufferError> {
    let mut held = HashMap::new();
    let mut live = HashMap::new();
    let mut wo = WriteOptions::default();
    wo.set_sync(sync);
    let (mut dangling, mut dropped, mut dropped_bytes) = (WriteBatch::default(), 0u64, 0u64);
    let mut it = db.raw_iterator();
    it.seek_to_first();
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        let bk = parse_key(k)?;
        match ValuePtr::decode(v) {
            Some(p) if p.dangles(lens) => {
                dangling.delete(k);
                dropped += 1;
                dropped_bytes += p.len as u64;
                if dangling.len() >= DANGLING_BATCH {
                    db.write_opt(std::mem::take(&mut dangling), &wo)?;
                }
            }
            Some(p) => {
                *held.entry((bk.shuffle, bk.partition)).or_insert(0) += p.len as u64;
                *live.entry(p.file).or_insert(0u64) += p.len as u64;
            }
            None => *held.entry((bk.shuffle, bk.partition)).or_insert(0) += value_len(v),
        }
        it.next();
    }
    it.status()?;
    if !dangling.is_empty() {
        db.write_opt(dangling, &wo)?;
    }
    if dropped > 0 {
        tracing::warn!(
            batches = dropped,
            bytes = dropped_bytes,
            "index entries pointed into value log files that are gone: deleted as already spilled or dropped"
        );
    }
    Ok((held, live))
}

// `AttemptFilter::All` allows everything, so the skip branch never sees it.
fn unreachable_filter() -> Vec<u8> {
    Vec::new()
}

/// Where a stepwise partition scan ([`Buffer::scan_step`]) goes on from.
#[derive(Clone, Debug, Default)]
pub struct ScanCursor {
    /// The last key returned; `None` before the first.
    after: Option<Vec<u8>>,
    /// The range is exhausted.
    pub done: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub records: u64,
    pub bytes: u64,
}

/// The exact keys a scan returned, so an early spill deletes what it uploaded and nothing
/// pushed meanwhile.
#[derive(Clone, Debug, Default)]
pub struct ScannedKeys {
    pub keys: Vec<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use shuffle_proto::batch::StreamRecords;

    fn key() -> ShuffleKey {
        ShuffleKey::new(AppId::new("app-1").unwrap(), 3, 1)
    }

    fn bk(p: u32, map: u32, attempt: u64, seq: u32) -> BatchKey {
        BatchKey { shuffle: key(), partition: p, map, attempt, seq }
    }

    fn collect(
        buf: &Buffer,
        p: u32,
        start: u32,
        end: u32,
        f: &AttemptFilter,
        chunk: usize,
    ) -> Vec<(u32, u64, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let range = ScanRange { shuffle: key(), partition: p, start_map: start, end_map: end, filter: f.clone() };
        buf.scan_partition(&range, chunk, |c, n| {
            let recs: Vec<_> = StreamRecords::new(c, 1 << 20).collect::<Result<_, _>>().unwrap();
            assert_eq!(recs.len() as u32, n);
            out.extend(recs.into_iter().map(|r| (r.map, r.attempt, r.seq, r.batch.to_vec())));
            true
        })
        .unwrap();
        out
    }

    /// Value log files under `dir` this process holds open though they were unlinked.
    fn unlinked_but_open(dir: &Path) -> Vec<String> {
        let dir = dir.display().to_string();
        let fds = std::fs::read_dir("/proc/self/fd").into_iter().flatten().flatten();
        fds.filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .map(|t| t.display().to_string())
            .filter(|t| t.starts_with(&dir) && t.ends_with(" (deleted)"))
            .collect()
    }

    #[test]
    fn a_scan_between_steps_pins_no_value_log_file_and_goes_on_after_its_last_key() {
        let dir = tempfile::tempdir().unwrap();
        let buf = Buffer::open_sized(dir.path(), false, 4096).unwrap();
        for seq in 0..8u32 {
            buf.put(&bk(1, 0, 1, seq), &[seq as u8; 1000]).unwrap();
        }
        buf.put(&bk(2, 0, 1, 0), &[9; 4000]).unwrap();
        let range = ScanRange { shuffle: key(), partition: 1, start_map: 0, end_map: 10, filter: AttemptFilter::All };
        let (mut cursor, mut chunk, mut keys) = (ScanCursor::default(), Vec::new(), Vec::new());
        let first = buf.scan_step(&range, &mut cursor, 1500, &mut chunk, Some(&mut keys)).unwrap();
        assert_eq!((first.records, first.bytes, cursor.done), (2, 2000, false));
        // Between steps the scan holds nothing: the files of the batches deleted now go, with
        // their disk space.
        let gone = ScannedKeys { keys: (0..6).map(|s| batch_key(&key(), 1, 0, 1, s)).collect() };
        buf.delete_keys(&key(), 1, &gone).unwrap();
        assert!(unlinked_but_open(dir.path()).is_empty(), "{:?}", unlinked_but_open(dir.path()));
        // The next step goes on after the last key returned: past the deleted ones, and sees a
        // batch stored meanwhile.
        buf.put(&bk(1, 0, 1, 9), b"late").unwrap();
        chunk.clear();
        let mut seqs = Vec::new();
        while !cursor.done {
            buf.scan_step(&range, &mut cursor, 1500, &mut chunk, Some(&mut keys)).unwrap();
        }
        for r in StreamRecords::new(&chunk, 1 << 20) {
            seqs.push(r.unwrap().seq);
        }
        assert_eq!(seqs, vec![6, 7, 9]);
        assert_eq!(keys.len(), 5);
    }

    #[test]
    fn keys_round_trip_and_sort_by_partition_then_map() {
        let a = batch_key(&key(), 1, 2, 3, 4);
        assert_eq!(parse_key(&a).unwrap(), bk(1, 2, 3, 4));
        assert!(batch_key(&key(), 1, 2, 9, 0) < batch_key(&key(), 1, 3, 0, 0));
        assert!(batch_key(&key(), 1, u32::MAX, 0, 0) < batch_key(&key(), 2, 0, 0, 0));
        assert!(parse_key(&a[..a.len() - 1]).is_err());
        assert!(parse_key(&[]).is_err());
    }

    #[test]
    fn scans_filter_attempts_and_map_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let buf = Buffer::open(dir.path(), false).unwrap();
        for map in 0..5u32 {
            for attempt in [10u64, 11] {
                for seq in 0..3u32 {
                    buf.put(&bk(7, map, attempt + map as u64 * 100, seq), format!("m{map}a{attempt}s{seq}").as_bytes())
                        .unwrap();
                }
            }
        }
        buf.put(&bk(8, 0, 10, 0), b"other partition").unwrap();
        let all = collect(&buf, 7, 0, 5, &AttemptFilter::All, 1 << 20);
        assert_eq!(all.len(), 30);
        // The committed attempt of map 1 is its second one, of map 3 its first; maps [1, 4).
        let f = AttemptFilter::Only(BTreeMap::from([(1, 111), (2, 210), (3, 310)]));
        let got = collect(&buf, 7, 1, 4, &f, 16);
        let seen: Vec<(u32, u64, u32)> = got.iter().map(|r| (r.0, r.1, r.2)).collect();
        assert_eq!(
            seen,
            vec![
                (1, 111, 0),
                (1, 111, 1),
                (1, 111, 2),
                (2, 210, 0),
                (2, 210, 1),
                (2, 210, 2),
                (3, 310, 0),
                (3, 310, 1),
                (3, 310, 2)
            ]
        );
        assert_eq!(got[0].3, b"m1a11s0");
    }

    #[test]
    fn duplicates_are_idempotent_and_bytes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let buf = Buffer::open(dir.path(), true).unwrap();
            buf.put(&bk(1, 0, 1, 0), b"12345").unwrap();
            buf.put(&bk(1, 0, 1, 0), b"12345").unwrap();
            buf.put(&bk(2, 0, 1, 0), b"123").unwrap();
            assert_eq!(buf.bytes_held(), 8);
            assert_eq!(collect(&buf, 1, 0, 10, &AttemptFilter::All, 1 << 20).len(), 1);
        }
        let buf = Buffer::open(dir.path(), true).unwrap();
        assert_eq!(buf.bytes_held(), 8);
        assert_eq!(buf.partitions(), vec![(key(), 1, 5), (key(), 2, 3)]);
        buf.delete_partition(&key(), 1).unwrap();
        assert_eq!(buf.bytes_held(), 3);
        assert!(collect(&buf, 1, 0, 10, &AttemptFilter::All, 1 << 20).is_empty());
        // An early spill deletes exactly what it scanned, not what was pushed after.
        buf.put(&bk(3, 0, 1, 0), b"aaaa").unwrap();
        let range = ScanRange { shuffle: key(), partition: 3, start_map: 0, end_map: 10, filter: AttemptFilter::All };
        let mut scanned = ScannedKeys::default();
        buf.scan_partition_keys(&range, 1 << 20, |_, _| true, &mut scanned).unwrap();
        buf.put(&bk(3, 0, 1, 1), b"bb").unwrap();
        buf.delete_keys(&key(), 3, &scanned).unwrap();
        assert_eq!(buf.partition_bytes(&key(), 3), 2);
        assert_eq!(collect(&buf, 3, 0, 10, &AttemptFilter::All, 1 << 20).len(), 1);
        buf.delete_shuffle(&key()).unwrap();
        assert_eq!(buf.bytes_held(), 0);
        assert!(buf.shuffles().is_empty());
    }

    #[test]
    fn value_log_files_go_once_their_batches_are_deleted_or_spilled() {
        let dir = tempfile::tempdir().unwrap();
        let buf = Buffer::open_sized(dir.path(), false, 4096).unwrap();
        let batch = vec![9u8; 1000];
        for p in 0..4u32 {
            for seq in 0..10u32 {
                buf.put(&bk(p, 0, 1, seq), &batch).unwrap();
            }
        }
        let (live, files) = buf.value_log_usage();
        assert_eq!(live, buf.bytes_held());
        assert!(files >= 10, "40 KB in 4 KB files: {files}");
        // A pressure spill of partition 0 (its scanned keys), a seal drop of partition 1, the
        // rest with the shuffle.
        let range = ScanRange { shuffle: key(), partition: 0, start_map: 0, end_map: 10, filter: AttemptFilter::All };
        let mut scanned = ScannedKeys::default();
        buf.scan_partition_keys(&range, 1 << 20, |_, _| true, &mut scanned).unwrap();
        buf.delete_keys(&key(), 0, &scanned).unwrap();
        // Deleting the same keys again (they are gone) releases nothing twice.
        buf.delete_keys(&key(), 0, &scanned).unwrap();
        buf.delete_partition(&key(), 1).unwrap();
        assert_eq!(buf.value_log_usage().0, buf.bytes_held());
        assert_eq!(collect(&buf, 2, 0, 10, &AttemptFilter::All, 1 << 20).len(), 10);
        buf.delete_shuffle(&key()).unwrap();
        assert_eq!(buf.value_log_usage(), (0, 1), "only the file being appended to is left");
        let on_disk = std::fs::read_dir(dir.path().join("values")).unwrap().count();
        assert_eq!(on_disk, 1);
    }

    #[test]
    fn batches_stored_inline_by_an_older_worker_are_read_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = DB::open_default(dir.path()).unwrap();
            db.put(batch_key(&key(), 5, 0, 1, 0), b"inline batch").unwrap();
        }
        let buf = Buffer::open(dir.path(), false).unwrap();
        buf.put(&bk(5, 0, 1, 1), b"logged batch").unwrap();
        assert_eq!(buf.partition_bytes(&key(), 5), 24);
        let got = collect(&buf, 5, 0, 10, &AttemptFilter::All, 1 << 20);
        let bodies: Vec<&[u8]> = got.iter().map(|r| r.3.as_slice()).collect();
        assert_eq!(bodies, vec![&b"inline batch"[..], &b"logged batch"[..]]);
        buf.delete_partition(&key(), 5).unwrap();
        assert_eq!(buf.bytes_held(), 0);
        assert_eq!(buf.value_log_usage().0, 0);
    }

    /// Copies RocksDB's files (not the value log) from `from` to `to`.
    fn copy_index(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for f in std::fs::read_dir(from).unwrap() {
            let f = f.unwrap();
            if f.file_type().unwrap().is_file() {
                std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
            }
        }
    }

    /// A power loss that keeps a value log file's unlink but loses the WAL tail holding the
    /// delete that released it: the index comes back naming batches in a file that is gone.
    /// Those batches were spilled; they must read as deleted, and everything else acknowledged
    /// must stay readable, the partition scannable and spillable.
    #[test]
    fn a_delete_lost_in_a_power_loss_after_its_file_was_unlinked_wedges_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db_dir = dir.path().join("buffer");
        let before_delete = dir.path().join("index-before-delete");
        let kept: Vec<(u32, u32, Vec<u8>)> = vec![(1, 7, vec![4u8; 1200]), (2, 0, vec![5u8; 1500])];
        {
            let buf = Buffer::open_sized(&db_dir, true, 4096).unwrap();
            // Partition 1's first three batches fill file 0; the rest roll into file 1.
            for seq in 0..3u32 {
                buf.put(&bk(1, 0, 1, seq), &[seq as u8; 1000]).unwrap();
            }
            for (p, seq, batch) in &kept {
                buf.put(&bk(*p, 0, 1, *seq), batch).unwrap();
            }
            // A pressure spill of partition 1 scanned exactly the first three (file 0)...
            let range =
                ScanRange { shuffle: key(), partition: 1, start_map: 0, end_map: 1, filter: AttemptFilter::All };
            let mut all = ScannedKeys::default();
            buf.scan_partition_keys(&range, 1 << 20, |_, _| true, &mut all).unwrap();
            let scanned = ScannedKeys { keys: all.keys[..3].to_vec() };
            copy_index(&db_dir, &before_delete);
            // ...and deletes them once their segment is recorded: file 0 is unlinked.
            buf.delete_keys(&key(), 1, &scanned).unwrap();
            assert_eq!(std::fs::read_dir(db_dir.join("values")).unwrap().count(), 1, "file 0 is gone");
        }
        // The power loss: the index as it was before the delete, the value log as it is.
        for f in std::fs::read_dir(&db_dir).unwrap() {
            let f = f.unwrap();
            if f.file_type().unwrap().is_file() {
                std::fs::remove_file(f.path()).unwrap();
            }
        }
        copy_index(&before_delete, &db_dir);
        let buf = Buffer::open_sized(&db_dir, true, 4096).unwrap();
        fn bodies(buf: &Buffer, p: u32) -> Vec<(u32, Vec<u8>)> {
            collect(buf, p, 0, 10, &AttemptFilter::All, 1 << 20).into_iter().map(|r| (r.2, r.3)).collect()
        }
        assert_eq!(bodies(&buf, 1), vec![(kept[0].1, kept[0].2.clone())]);
        assert_eq!(bodies(&buf, 2), vec![(kept[1].1, kept[1].2.clone())]);
        assert_eq!(buf.bytes_held(), 2700);
        assert_eq!(buf.value_log_usage().0, buf.bytes_held());
        // Batches acknowledged after the restart read back and spill with the rest.
        buf.put(&bk(1, 0, 2, 0), b"after").unwrap();
        let range = ScanRange { shuffle: key(), partition: 1, start_map: 0, end_map: 10, filter: AttemptFilter::All };
        let mut scanned = ScannedKeys::default();
        let stats = buf.scan_partition_keys(&range, 1 << 20, |_, _| true, &mut scanned).unwrap();
        assert_eq!(stats.records, 2);
        buf.delete_keys(&key(), 1, &scanned).unwrap();
        assert_eq!(buf.partition_bytes(&key(), 1), 0);
        drop(buf);
        // The repair itself was durable: the dangling entries are not back on the next open.
        let buf = Buffer::open_sized(&db_dir, true, 4096).unwrap();
        assert_eq!(buf.bytes_held(), 1500);
        assert_eq!(bodies(&buf, 2).len(), 1);
    }

    /// With `sync_writes`, the delete that releases a value log file is synced to the WAL
    /// before the file is unlinked.
    #[test]
    fn with_sync_writes_deletes_sync_the_wal_before_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let buf = Buffer::open_sized(dir.path(), true, 1024).unwrap();
        for seq in 0..3u32 {
            buf.put(&bk(1, 0, 1, seq), &[1u8; 800]).unwrap();
        }
        let before = |buf: &Buffer| (buf.value_log_usage().1, buf.wal_syncs());
        let check = |buf: &Buffer, what: &str, (files, synced): (usize, u64)| {
            assert!(buf.value_log_usage().1 < files, "{what}: a file went");
            assert!(buf.wal_syncs() > synced, "{what}: the delete synced the WAL");
        };
        let b = before(&buf);
        let range = ScanRange { shuffle: key(), partition: 1, start_map: 0, end_map: 1, filter: AttemptFilter::All };
        let mut scanned = ScannedKeys::default();
        buf.scan_partition_keys(&range, 1 << 20, |_, _| true, &mut scanned).unwrap();
        scanned.keys.truncate(1);
        buf.delete_keys(&key(), 1, &scanned).unwrap();
        check(&buf, "keys", b);
        let b = before(&buf);
        buf.delete_partition(&key(), 1).unwrap();
        check(&buf, "partition", b);
        buf.put(&bk(2, 0, 1, 0), &[2u8; 800]).unwrap();
        buf.put(&bk(2, 0, 1, 1), &[2u8; 800]).unwrap();
        let b = before(&buf);
        buf.delete_shuffle(&key()).unwrap();
        check(&buf, "shuffle", b);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Concurrent puts (duplicates included) and deletes of every kind keep the value log's
        /// live bytes equal to the bytes held, and leave nothing behind once all is deleted.
        #[test]
        fn value_log_accounting_stays_exact_under_concurrency(
            ops in proptest::collection::vec((0u32..3, 0u32..4, 0u32..6, 1usize..700), 1..80),
            deletes in proptest::collection::vec((0u8..3, 0u32..3), 0..12),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let buf = Buffer::open_sized(dir.path(), false, 2048).unwrap();
            std::thread::scope(|s| {
                for t in 0..2 {
                    let (buf, ops) = (&buf, &ops);
                    s.spawn(move || {
                        // Both threads push the same batches: every one is pushed twice.
                        for (i, (p, map, seq, len)) in ops.iter().enumerate() {
                            let byte = (i + t) as u8;
                            buf.put(&bk(*p, *map, 1, *seq), &vec![byte; *len]).unwrap();
                        }
                    });
                }
                let buf = &buf;
                let deletes = &deletes;
                s.spawn(move || {
                    for (kind, p) in deletes {
                        match kind {
                            0 => buf.delete_partition(&key(), *p).unwrap(),
                            1 => {
                                let range = ScanRange {
                                    shuffle: key(), partition: *p, start_map: 0, end_map: 10, filter: AttemptFilter::All,
                                };
                                let mut scanned = ScannedKeys::default();
                                buf.scan_partition_keys(&range, 1 << 20, |_, _| true, &mut scanned).unwrap();
                                buf.delete_keys(&key(), *p, &scanned).unwrap();
                            }
                            _ => buf.delete_shuffle(&key()).unwrap(),
                        }
                    }
                });
            });
            proptest::prop_assert_eq!(buf.value_log_usage().0, buf.bytes_held());
            let stored: u64 = (0..3)
                .flat_map(|p| collect(&buf, p, 0, 10, &AttemptFilter::All, 1 << 20))
                .map(|r| r.3.len() as u64)
                .sum();
            proptest::prop_assert_eq!(stored, buf.bytes_held());
            buf.delete_shuffle(&key()).unwrap();
            proptest::prop_assert_eq!(buf.value_log_usage(), (0, 1));
        }
    }
}
