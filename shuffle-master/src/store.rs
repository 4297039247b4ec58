//! RocksDB storage for the Raft log and the state machine.
//!
//! Column families:
//! - `logs`: Raft entries keyed by big-endian index;
//! - `raft`: the vote and the last purged log id;
//! - `sm`: state-machine records, one key per worker, app, shuffle, partition and map commit;
//! - `sm_meta`: the applied log id and membership;
//! - `snapshot`: the last built or installed snapshot (meta and data).
//!
//! Invariants:
//! - The records an entry changed and the applied log id are written in one WriteBatch, so
//!   after a crash the state machine is exactly as of its applied id.
//! - Appended entries are synced to the WAL before openraft is told they are durable.
//! - A snapshot is built from a RocksDB snapshot of `sm`, so it is consistent without
//!   stopping `apply`; installing one replaces `sm` wholly and reloads memory from it.
//! - Nothing read from disk is trusted: every decode failure is a `StorageError`.

// openraft's storage traits fix the error type; helpers share it rather than box it.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership, Vote,
};
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{de::DeserializeOwned, Serialize};
use shuffle_proto::ShuffleKey;

use crate::raft::{NodeId, TypeConfig};
use crate::state::{
    AppRecord, Change, CommandResult, Counters, MapCommit, MasterState, PartitionRecord, ShuffleMeta, ShuffleRecord,
    WorkerRecord,
};

const CF_LOGS: &str = "logs";
const CF_RAFT: &str = "raft";
const CF_SM: &str = "sm";
const CF_SM_META: &str = "sm_meta";
const CF_SNAPSHOT: &str = "snapshot";

type SE = StorageError<NodeId>;
type Membership = StoredMembership<NodeId, openraft::BasicNode>;
type AppliedId = Option<LogId<NodeId>>;
type KeyValue<'a> = (&'a [u8], &'a [u8]);

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, SE> {
    postcard::to_allocvec(v).map_err(|e| StorageIOError::write(&e).into())
}

/// An app record, as this version writes it or as older masters did (no incarnation).
pub(crate) fn decode_app(b: &[u8]) -> Result<AppRecord, SE> {
    dec(b).or_else(|_| dec::<crate::state::AppRecordV1>(b).map(AppRecord::from))
}

fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T, SE> {
    postcard::from_bytes(b).map_err(|e| StorageIOError::read(&e).into())
}

fn db_err(e: rocksdb::Error) -> SE {
    StorageIOError::write(&e).into()
}

fn missing_cf(name: &str) -> SE {
    StorageIOError::read(AnyError::error(format!("column family {name} missing"))).into()
}

/// Opens (or creates) the master's RocksDB.
pub fn open_db(dir: &Path) -> Result<Arc<DB>, SE> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs = [CF_LOGS, CF_RAFT, CF_SM, CF_SM_META, CF_SNAPSHOT]
        .into_iter()
        .map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
    let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| SE::from(StorageIOError::read(&e)))?;
    Ok(Arc::new(db))
}

// ---------------------------------------------------------------------------------------------
// Record keys.

mod keys {
    use shuffle_proto::ShuffleKey;

    pub const WORKER: u8 = b'w';
    pub const APP: u8 = b'a';
    pub const SHUFFLE: u8 = b's';
    pub const PARTITION: u8 = b'p';
    pub const MAP: u8 = b'm';
    pub const COUNTERS: &[u8] = b"c";
    pub const STORE_URL: &[u8] = b"o";

    /// App ids never contain 0, so the encoding is prefix-free.
    pub fn shuffle(tag: u8, k: &ShuffleKey) -> Vec<u8> {
        let mut v = Vec::with_capacity(2 + k.app.as_str().len() + 9);
        v.push(tag);
        v.push(0);
        v.extend_from_slice(k.app.as_str().as_bytes());
        v.push(0);
        v.extend_from_slice(&k.shuffle_id.to_be_bytes());
        v.extend_from_slice(&k.generation.to_be_bytes());
        v
    }

    pub fn indexed(tag: u8, k: &ShuffleKey, i: u32) -> Vec<u8> {
        let mut v = shuffle(tag, k);
        v.extend_from_slice(&i.to_be_bytes());
        v
    }

    pub fn named(tag: u8, name: &str) -> Vec<u8> {
        let mut v = vec![tag, 0];
        v.extend_from_slice(name.as_bytes());
        v
    }

    /// The index at the end of a partition or map key.
    pub fn index_of(key: &[u8]) -> Option<u32> {
        let tail: [u8; 4] = key.get(key.len().checked_sub(4)?..)?.try_into().ok()?;
        Some(u32::from_be_bytes(tail))
    }

    /// The shuffle-key bytes of a partition or map key (tag and index stripped).
    pub fn shuffle_part(key: &[u8]) -> Option<&[u8]> {
        key.get(2..key.len().checked_sub(4)?)
    }
}

/// Adds the writes for `changes` to `batch`. Removals go first: within one command a shuffle
/// is never both removed and created.
fn write_changes(
    db: &DB,
    batch: &mut WriteBatch,
    state: &MasterState,
    changes: impl IntoIterator<Item = Change>,
) -> Result<(), SE> {
    let sm = db.cf_handle(CF_SM).ok_or_else(|| missing_cf(CF_SM))?;
    let mut changes: Vec<Change> = changes.into_iter().collect();
    changes.sort_by_key(|c| !matches!(c, Change::ShuffleRemoved(_)));
    for c in changes {
        match c {
            Change::Worker(id) => {
                let k = keys::named(keys::WORKER, id.as_str());
                match state.workers.get(&id) {
                    Some(w) => batch.put_cf(&sm, k, enc(w)?),
                    None => batch.delete_cf(&sm, k),
                }
            }
            Change::App(id) => {
                let k = keys::named(keys::APP, id.as_str());
                match state.apps.get(&id) {
                    Some(a) => batch.put_cf(&sm, k, enc(a)?),
                    None => batch.delete_cf(&sm, k),
                }
            }
            Change::Shuffle(key) => {
                if let Some(r) = state.shuffles.get(&key) {
                    batch.put_cf(&sm, keys::shuffle(keys::SHUFFLE, &key), enc(&r.meta)?);
                }
            }
            Change::Partition(key, p) => {
                if let Some(rec) = state.shuffles.get(&key).and_then(|r| r.partitions.get(p as usize)) {
                    batch.put_cf(&sm, keys::indexed(keys::PARTITION, &key, p), enc(rec)?);
                }
            }
            Change::Map(key, m) => {
                if let Some(c) = state.shuffles.get(&key).and_then(|r| r.commits.get(&m)) {
                    batch.put_cf(&sm, keys::indexed(keys::MAP, &key, m), enc(c)?);
                }
            }
            Change::ShuffleRemoved(key) => {
                batch.delete_cf(&sm, keys::shuffle(keys::SHUFFLE, &key));
                for tag in [keys::PARTITION, keys::MAP] {
                    let prefix = keys::shuffle(tag, &key);
                    batch.delete_range_cf(&sm, prefix.clone(), shuffle_proto::keys::prefix_end(&prefix));
                }
            }
            Change::Counters => batch.put_cf(&sm, keys::COUNTERS, enc(&state.counters)?),
            Change::StoreUrl => batch.put_cf(&sm, keys::STORE_URL, enc(&state.store_url)?),
        }
    }
    Ok(())
}

/// Rebuilds the state from `sm` records.
fn load_state(
    records: impl Iterator<Item = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>>,
) -> Result<MasterState, SE> {
    let corrupt =
        |what: &str| -> SE { StorageIOError::read(AnyError::error(format!("corrupt record: {what}"))).into() };
    let mut st = MasterState::default();
    let mut metas: BTreeMap<Vec<u8>, ShuffleMeta> = BTreeMap::new();
    let mut parts: BTreeMap<Vec<u8>, BTreeMap<u32, PartitionRecord>> = BTreeMap::new();
    let mut maps: BTreeMap<Vec<u8>, BTreeMap<u32, MapCommit>> = BTreeMap::new();
    for item in records {
        let (k, v) = item.map_err(|e| SE::from(StorageIOError::read(&e)))?;
        match k.first().copied() {
            Some(keys::WORKER) => {
                let w: WorkerRecord = dec(&v)?;
                st.workers.insert(w.id.clone(), w);
            }
            Some(keys::APP) => {
                let a = decode_app(&v)?;
                st.apps.insert(a.app.clone(), a);
            }
            Some(keys::SHUFFLE) => {
                let m: ShuffleMeta = dec(&v)?;
                metas.insert(k.get(2..).unwrap_or_default().to_vec(), m);
            }
            Some(keys::PARTITION) => {
                let sk = keys::shuffle_part(&k).ok_or_else(|| corrupt("partition key"))?.to_vec();
                let i = keys::index_of(&k).ok_or_else(|| corrupt("partition key"))?;
                parts.entry(sk).or_default().insert(i, dec(&v)?);
            }
            Some(keys::MAP) => {
                let sk = keys::shuffle_part(&k).ok_or_else(|| corrupt("map key"))?.to_vec();
                let i = keys::index_of(&k).ok_or_else(|| corrupt("map key"))?;
                maps.entry(sk).or_default().insert(i, dec(&v)?);
            }
            Some(b'c') if &*k == keys::COUNTERS => st.counters = dec::<Counters>(&v)?,
            Some(b'o') if &*k == keys::STORE_URL => st.store_url = dec::<String>(&v)?,
            _ => return Err(corrupt("unknown key")),
        }
    }
    for (sk, meta) in metas {
        let mut ps = parts.remove(&sk).unwrap_or_default();
        let mut partitions = Vec::with_capacity(meta.num_partitions as usize);
        for i in 0..meta.num_partitions {
            partitions.push(ps.remove(&i).ok_or_else(|| corrupt("partition missing"))?);
        }
        let commits = maps.remove(&sk).unwrap_or_default();
        let key: ShuffleKey = meta.key.clone();
        st.shuffles.insert(key, ShuffleRecord { meta, partitions, commits });
    }
    st.rebuild_derived();
    Ok(st)
}

// ---------------------------------------------------------------------------------------------
// Log store.

#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
}

impl LogStore {
    pub fn new(db: Arc<DB>) -> Self {
        Self { db }
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SE> {
        let cf = self.db.cf_handle(CF_RAFT).ok_or_else(|| missing_cf(CF_RAFT))?;
        match self.db.get_cf(&cf, key).map_err(|e| SE::from(StorageIOError::read(&e)))? {
            Some(b) => Ok(Some(dec(&b)?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &str, v: &T) -> Result<(), SE> {
        let cf = self.db.cf_handle(CF_RAFT).ok_or_else(|| missing_cf(CF_RAFT))?;
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        let mut b = WriteBatch::default();
        b.put_cf(&cf, key, enc(v)?);
        self.db.write_opt(b, &wo).map_err(db_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SE> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let cf = self.db.cf_handle(CF_LOGS).ok_or_else(|| missing_cf(CF_LOGS))?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(&cf, IteratorMode::From(&start.to_be_bytes(), Direction::Forward)) {
            let (k, v) = item.map_err(|e| SE::from(StorageIOError::read_logs(&e)))?;
            let idx = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| SE::from(StorageIOError::read_logs(AnyError::error("bad log key"))))?,
            );
            if !range.contains(&idx) {
                break;
            }
            out.push(dec(&v)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SE> {
        let cf = self.db.cf_handle(CF_LOGS).ok_or_else(|| missing_cf(CF_LOGS))?;
        let last = match self.db.iterator_cf(&cf, IteratorMode::End).next() {
            Some(item) => {
                let (_, v) = item.map_err(|e| SE::from(StorageIOError::read_logs(&e)))?;
                Some(dec::<Entry<TypeConfig>>(&v)?.log_id)
            }
            None => None,
        };
        let last_purged: Option<LogId<NodeId>> = self.get_meta("last_purged")?;
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last.or(last_purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SE> {
        self.put_meta("vote", vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SE> {
        self.get_meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SE> {
        self.put_meta("committed", &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SE> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>("committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SE>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
    {
        let cf = self.db.cf_handle(CF_LOGS).ok_or_else(|| missing_cf(CF_LOGS))?;
        let mut b = WriteBatch::default();
        for e in entries {
            b.put_cf(&cf, e.log_id.index.to_be_bytes(), enc(&e)?);
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        let res = self.db.write_opt(b, &wo);
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(db_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SE> {
        let cf = self.db.cf_handle(CF_LOGS).ok_or_else(|| missing_cf(CF_LOGS))?;
        let mut b = WriteBatch::default();
        b.delete_range_cf(&cf, log_id.index.to_be_bytes(), u64::MAX.to_be_bytes());
        b.delete_cf(&cf, u64::MAX.to_be_bytes());
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(b, &wo).map_err(db_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SE> {
        self.put_meta("last_purged", &log_id)?;
        let cf = self.db.cf_handle(CF_LOGS).ok_or_else(|| missing_cf(CF_LOGS))?;
        self.db.delete_range_cf(&cf, 0u64.to_be_bytes(), (log_id.index + 1).to_be_bytes()).map_err(db_err)
    }
}

// ---------------------------------------------------------------------------------------------
// State machine.

/// The applied state, shared with the services that read it.
pub struct Applied {
    pub state: MasterState,
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, openraft::BasicNode>,
}

pub type SharedState = Arc<RwLock<Applied>>;

#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<DB>,
    shared: SharedState,
}

fn poisoned() -> SE {
    StorageIOError::read_state_machine(AnyError::error("state lock poisoned")).into()
}

impl StateMachineStore {
    /// Opens the state machine, loading what `sm` holds.
    pub fn open(db: Arc<DB>) -> Result<Self, SE> {
        let applied = Self::load(&db)?;
        Ok(Self { db, shared: Arc::new(RwLock::new(applied)) })
    }

    pub fn shared(&self) -> SharedState {
        self.shared.clone()
    }

    fn load(db: &DB) -> Result<Applied, SE> {
        let sm = db.cf_handle(CF_SM).ok_or_else(|| missing_cf(CF_SM))?;
        let state = load_state(db.iterator_cf(&sm, IteratorMode::Start))?;
        let meta = db.cf_handle(CF_SM_META).ok_or_else(|| missing_cf(CF_SM_META))?;
        let read = |k: &str| db.get_cf(&meta, k).map_err(|e| SE::from(StorageIOError::read_state_machine(&e)));
        let last_applied = match read("applied")? {
            Some(b) => dec(&b)?,
            None => None,
        };
        let membership = match read("membership")? {
            Some(b) => dec(&b)?,
            None => StoredMembership::default(),
        };
        Ok(Applied { state, last_applied, membership })
    }

    fn snapshot_bytes(&self) -> Result<(Vec<u8>, AppliedId, Membership), SE> {
        // Read applied id, membership and records from one RocksDB snapshot.
        let snap = self.db.snapshot();
        let sm = self.db.cf_handle(CF_SM).ok_or_else(|| missing_cf(CF_SM))?;
        let meta = self.db.cf_handle(CF_SM_META).ok_or_else(|| missing_cf(CF_SM_META))?;
        let read = |k: &str| snap.get_cf(&meta, k).map_err(|e| SE::from(StorageIOError::read_state_machine(&e)));
        let last_applied: Option<LogId<NodeId>> = match read("applied")? {
            Some(b) => dec(&b)?,
            None => None,
        };
        let membership = match read("membership")? {
            Some(b) => dec(&b)?,
            None => StoredMembership::default(),
        };
        let mut out = Vec::new();
        for item in snap.iterator_cf(&sm, IteratorMode::Start) {
            let (k, v) = item.map_err(|e| SE::from(StorageIOError::read_state_machine(&e)))?;
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(&k);
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(&v);
        }
        Ok((out, last_applied, membership))
    }

    fn parse_snapshot(data: &[u8]) -> Result<Vec<KeyValue<'_>>, SE> {
        fn take<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
            let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let v = rest.get(4..4usize.checked_add(len)?)?;
            *rest = &rest[4 + len..];
            Some(v)
        }
        let bad = || SE::from(StorageIOError::read_snapshot(None, AnyError::error("truncated snapshot")));
        let mut rest = data;
        let mut out = Vec::new();
        while !rest.is_empty() {
            let k = take(&mut rest).ok_or_else(bad)?;
            let v = take(&mut rest).ok_or_else(bad)?;
            out.push((k, v));
        }
        Ok(out)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SE> {
        let (data, last_applied, membership) = self.snapshot_bytes()?;
        let snapshot_id = match &last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, data.len()),
            None => format!("empty-{}", data.len()),
        };
        let meta = SnapshotMeta { last_log_id: last_applied, last_membership: membership, snapshot_id };
        let cf = self.db.cf_handle(CF_SNAPSHOT).ok_or_else(|| missing_cf(CF_SNAPSHOT))?;
        let mut b = WriteBatch::default();
        b.put_cf(&cf, "meta", enc(&meta)?);
        b.put_cf(&cf, "data", &data);
        self.db.write(b).map_err(db_err)?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, openraft::BasicNode>), SE> {
        let g = self.shared.read().map_err(|_| poisoned())?;
        Ok((g.last_applied, g.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, SE>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
    {
        let meta_cf = self.db.cf_handle(CF_SM_META).ok_or_else(|| missing_cf(CF_SM_META))?;
        let mut results = Vec::new();
        let mut g = self.shared.write().map_err(|_| poisoned())?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            g.last_applied = Some(entry.log_id);
            let result = match entry.payload {
                EntryPayload::Blank => CommandResult::Ack,
                EntryPayload::Normal(cmd) => {
                    let r = g.state.apply(cmd);
                    let changes = g.state.take_changes();
                    write_changes(&self.db, &mut batch, &g.state, changes)?;
                    r
                }
                EntryPayload::Membership(m) => {
                    g.membership = StoredMembership::new(Some(entry.log_id), m);
                    batch.put_cf(&meta_cf, "membership", enc(&g.membership)?);
                    CommandResult::Ack
                }
            };
            results.push(result);
        }
        batch.put_cf(&meta_cf, "applied", enc(&g.last_applied)?);
        self.db.write(batch).map_err(db_err)?;
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SE> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SE> {
        let data = snapshot.into_inner();
        let pairs = Self::parse_snapshot(&data)?;
        let sm = self.db.cf_handle(CF_SM).ok_or_else(|| missing_cf(CF_SM))?;
        let meta_cf = self.db.cf_handle(CF_SM_META).ok_or_else(|| missing_cf(CF_SM_META))?;
        let snap_cf = self.db.cf_handle(CF_SNAPSHOT).ok_or_else(|| missing_cf(CF_SNAPSHOT))?;
        let mut b = WriteBatch::default();
        b.delete_range_cf(&sm, [0u8].as_slice(), [0xffu8; 16].as_slice());
        for (k, v) in &pairs {
            b.put_cf(&sm, k, v);
        }
        b.put_cf(&meta_cf, "applied", enc(&meta.last_log_id)?);
        b.put_cf(&meta_cf, "membership", enc(&meta.last_membership)?);
        b.put_cf(&snap_cf, "meta", enc(meta)?);
        b.put_cf(&snap_cf, "data", &data);
        let mut g = self.shared.write().map_err(|_| poisoned())?;
        self.db.write(b).map_err(db_err)?;
        *g = Self::load(&self.db)?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SE> {
        let cf = self.db.cf_handle(CF_SNAPSHOT).ok_or_else(|| missing_cf(CF_SNAPSHOT))?;
        let read = |k: &str| self.db.get_cf(&cf, k).map_err(|e| SE::from(StorageIOError::read_snapshot(None, &e)));
        let (Some(meta), Some(data)) = (read("meta")?, read("data")?) else { return Ok(None) };
        Ok(Some(Snapshot { meta: dec(&meta)?, snapshot: Box::new(Cursor::new(data)) }))
    }
}

/// Applies a command outside Raft; for tests of persistence.
#[cfg(test)]
pub(crate) fn apply_direct(sm: &StateMachineStore, cmd: crate::state::Command) -> Result<CommandResult, SE> {
    let mut g = sm.shared.write().map_err(|_| poisoned())?;
    let r = g.state.apply(cmd);
    let changes = g.state.take_changes();
    let mut b = WriteBatch::default();
    write_changes(&sm.db, &mut b, &g.state, changes)?;
    sm.db.write(b).map_err(db_err)?;
    Ok(r)
}

#[cfg(test)]
pub(crate) fn reload(db: &DB) -> Result<MasterState, SE> {
    Ok(StateMachineStore::load(db)?.state)
}
