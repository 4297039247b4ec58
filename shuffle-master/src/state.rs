//! The master's replicated state and the rules that change it: pure code, no I/O, no clock.
//!
//! Every change arrives as a [`Command`] through the Raft log and is applied by
//! [`MasterState::apply`] on every master in the same order, so the rules here must be
//! deterministic: time comes inside commands, placement ties break on ids, maps are ordered.
//!
//! Invariants:
//! - The first accepted commit of a map wins forever; later attempts get the winner back.
//! - A commit is refused when it pushed at an epoch whose worker was lost before spilling:
//!   its bytes are gone, so the attempt must be re-run rather than recorded.
//! - A partition keeps its epoch history: each entry names a worker and whether its data
//!   there is `Live`, `Spilled` (in the object store) or `Lost`. Only the last entry takes
//!   pushes; older `Live` entries are still read until their worker spills them.
//! - Epoch numbers come from one counter and only grow.
//! - `load` is derived (Live entries and their committed bytes per worker) and is rebuilt
//!   from the records on load; [`MasterState::check_invariants`] recomputes it in tests.
//! - Every record a command touches is listed in the change log ([`MasterState::take_changes`])
//!   so the store persists exactly those records with the applied index.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use shuffle_proto::messages::{
    AppRegistered, AppSummary, MapCommitted, MapOutput, PartitionLocation, PartitionReadPlan, PartitionStat, ReadPlan,
    SegmentRef, ShuffleAssignment, ShuffleState, ShuffleSummary, WorkerCommand, WorkerEndpoint, WorkerState,
};
use shuffle_proto::{AppId, AttemptId, Epoch, ErrorCode, MapId, PartitionId, ShuffleKey, WireError, WorkerId};

use crate::assign::{place, Candidate};

/// Bounds on what one command may create.
pub const MAX_PARTITIONS: u32 = 1 << 20;
pub const MAX_MAPS: u32 = 1 << 22;
/// Removed shuffles remembered so late workers are told to delete them.
pub const MAX_TOMBSTONES: usize = 10_000;

/// A change to the replicated state, as written in the Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    RegisterApp {
        app: AppId,
        lease_ms: u64,
        /// The tenant registering it ("" without authentication). An app id stays with the
        /// tenant that holds it until it is unregistered.
        #[serde(default)]
        tenant: String,
    },
    UnregisterApp {
        app: AppId,
    },
    RegisterShuffle {
        shuffle: ShuffleKey,
        num_maps: u32,
        num_partitions: u32,
        replication: u8,
    },
    UnregisterShuffle {
        shuffle: ShuffleKey,
    },
    Relocate {
        shuffle: ShuffleKey,
        partition: PartitionId,
        failed_epoch: Epoch,
        failed_worker: WorkerId,
    },
    CommitMap {
        shuffle: ShuffleKey,
        map: MapId,
        attempt: AttemptId,
        partitions: Vec<PartitionStat>,
    },
    RegisterWorker {
        worker: WorkerId,
        addr: String,
        capacity_bytes: u64,
    },
    WorkerLost {
        worker: WorkerId,
    },
    Decommission {
        worker: WorkerId,
    },
    Recommission {
        worker: WorkerId,
    },
    RemoveWorker {
        worker: WorkerId,
    },
    ReportSegment {
        worker: WorkerId,
        shuffle: ShuffleKey,
        partition: PartitionId,
        segment: SegmentRef,
        last: bool,
        /// With `last`, the newest epoch the segment covers (see `messages::ReportSegment`).
        upto: Epoch,
    },
    /// A draining worker reports an empty buffer.
    DrainComplete {
        worker: WorkerId,
    },
    /// The cluster's object store, as its workers name it (kept after they are gone, so
    /// spilled data stays readable with no worker left).
    SetStoreUrl {
        url: String,
    },
    /// Commands that arrived together (group commit, see `group.rs`), applied in order as if
    /// each had its own entry; one result each. A batch never holds a batch.
    Batch(Vec<Command>),
    /// The partition's piece at `epoch` on `worker` (its primary) reached the split size:
    /// the next piece is placed away from it where possible, on it again otherwise. A variant
    /// of its own, appended: the log's encoding is positional, so the layout of entries
    /// already written (`Relocate` among them) never changes.
    SplitPiece {
        shuffle: ShuffleKey,
        partition: PartitionId,
        epoch: Epoch,
        worker: WorkerId,
    },
}

/// What applying a command gave; errors are part of the replicated outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    Ack,
    App(AppRegistered),
    Assignment(ShuffleAssignment),
    Location(PartitionLocation),
    Committed(MapCommitted),
    Error(WireError),
    /// A [`Command::Batch`]'s results, in its commands' order.
    Batch(Vec<CommandResult>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub id: WorkerId,
    pub addr: String,
    pub capacity_bytes: u64,
    pub state: WorkerState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    pub app: AppId,
    pub lease_ms: u64,
    #[serde(default)]
    pub tenant: String,
    /// Which registration of the app id this is: drawn from the epoch counter when the app is
    /// registered anew (never reused), kept while the same tenant registers it again. Tokens
    /// and capabilities carry it; workers compare it (docs/security.md#app-incarnations).
    /// 0 only for records written before incarnations existed.
    pub incarnation: u64,
}

/// [`AppRecord`] as stored before incarnations: decoded for records and snapshots written by
/// older masters (postcard is positional, so the new field cannot default).
#[derive(Deserialize)]
pub struct AppRecordV1 {
    pub app: AppId,
    pub lease_ms: u64,
    pub tenant: String,
}

impl From<AppRecordV1> for AppRecord {
    fn from(a: AppRecordV1) -> AppRecord {
        AppRecord { app: a.app, lease_ms: a.lease_ms, tenant: a.tenant, incarnation: 0 }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShuffleMeta {
    pub key: ShuffleKey,
    pub num_maps: u32,
    pub num_partitions: u32,
    pub replication: u8,
    pub state: ShuffleState,
    pub committed_maps: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EpochState {
    Live,
    Spilled,
    Lost,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochEntry {
    pub epoch: Epoch,
    pub primary: WorkerId,
    pub replica: Option<WorkerId>,
    pub state: EpochState,
    /// Committed bytes pushed at this epoch.
    pub bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    pub epochs: Vec<EpochEntry>,
    pub segments: Vec<SegmentRef>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapCommit {
    pub attempt: AttemptId,
    /// Ascending by partition.
    pub partitions: Vec<PartitionStat>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShuffleRecord {
    pub meta: ShuffleMeta,
    pub partitions: Vec<PartitionRecord>,
    pub commits: BTreeMap<u32, MapCommit>,
}

/// A record the last commands changed (the store writes or deletes it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    Worker(WorkerId),
    App(AppId),
    Shuffle(ShuffleKey),
    Partition(ShuffleKey, u32),
    Map(ShuffleKey, u32),
    /// Every record of the shuffle is gone.
    ShuffleRemoved(ShuffleKey),
    Counters,
    StoreUrl,
}

/// Load used for placement: derived, never persisted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    pub partitions: u64,
    pub bytes: u64,
}

/// Counters persisted as one record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub next_epoch: u64,
    pub tombstones: Vec<ShuffleKey>,
}

#[derive(Clone, Debug, Default)]
// Tests compare whole states, derived load and pending changes included.
#[cfg_attr(test, derive(PartialEq, Eq))]
pub struct MasterState {
    pub workers: BTreeMap<WorkerId, WorkerRecord>,
    pub apps: BTreeMap<AppId, AppRecord>,
    pub shuffles: BTreeMap<ShuffleKey, ShuffleRecord>,
    pub counters: Counters,
    /// The object store segments are in ("" until a worker names one).
    pub store_url: String,
    load: BTreeMap<WorkerId, Load>,
    changes: BTreeSet<Change>,
}

fn err(code: ErrorCode, msg: impl Into<String>) -> CommandResult {
    CommandResult::Error(WireError::new(code, msg))
}

impl MasterState {
    /// Applies one command. Never panics on any input: a command that breaks a rule returns
    /// `CommandResult::Error` and changes nothing.
    pub fn apply(&mut self, cmd: Command) -> CommandResult {
        match cmd {
            Command::RegisterApp { app, lease_ms, tenant } => {
                let incarnation = match self.apps.get(&app) {
                    Some(r) if r.tenant != tenant => {
                        return err(ErrorCode::Unauthorized, "this application id belongs to another tenant")
                    }
                    // The same registration renewed (a driver registering again): same tokens.
                    Some(r) => r.incarnation,
                    // From the epoch counter: one counter that only grows, so an incarnation
                    // never repeats, whoever registers the id next.
                    None => self.next_epoch().0,
                };
                self.apps.insert(app.clone(), AppRecord { app: app.clone(), lease_ms, tenant, incarnation });
                self.changes.insert(Change::App(app.clone()));
                CommandResult::App(AppRegistered { app, lease_ms, token: String::new() })
            }
            Command::UnregisterApp { app } => {
                if self.apps.remove(&app).is_none() {
                    return err(ErrorCode::UnknownApp, format!("app {app} is not registered"));
                }
                self.changes.insert(Change::App(app.clone()));
                let keys: Vec<ShuffleKey> = self.shuffles.keys().filter(|k| k.app == app).cloned().collect();
                for k in keys {
                    self.remove_shuffle(&k);
                }
                CommandResult::Ack
            }
            Command::RegisterShuffle { shuffle, num_maps, num_partitions, replication } => {
                self.register_shuffle(shuffle, num_maps, num_partitions, replication)
            }
            Command::UnregisterShuffle { shuffle } => {
                // Spark unregisters a shuffle id once; every generation (stage re-run) of it goes.
                let keys: Vec<ShuffleKey> = self
                    .shuffles
                    .keys()
                    .filter(|k| k.app == shuffle.app && k.shuffle_id == shuffle.shuffle_id)
                    .cloned()
                    .collect();
                if keys.is_empty() {
                    return err(ErrorCode::UnknownShuffle, format!("shuffle {shuffle} is not registered"));
                }
                for k in keys {
                    self.remove_shuffle(&k);
                }
                CommandResult::Ack
            }
            Command::Relocate { shuffle, partition, failed_epoch, failed_worker } => {
                self.relocate(&shuffle, partition, failed_epoch, &failed_worker, false)
            }
            Command::SplitPiece { shuffle, partition, epoch, worker } => {
                self.relocate(&shuffle, partition, epoch, &worker, true)
            }
            Command::CommitMap { shuffle, map, attempt, partitions } => {
                self.commit_map(&shuffle, map, attempt, partitions)
            }
            Command::RegisterWorker { worker, addr, capacity_bytes } => {
                let state = match self.workers.get(&worker).map(|w| w.state.clone()) {
                    // A restart in the middle of a drain keeps draining.
                    Some(WorkerState::Decommissioning) => WorkerState::Decommissioning,
                    _ => WorkerState::Active,
                };
                self.workers.insert(worker.clone(), WorkerRecord { id: worker.clone(), addr, capacity_bytes, state });
                self.load.entry(worker.clone()).or_default();
                self.changes.insert(Change::Worker(worker));
                CommandResult::Ack
            }
            Command::WorkerLost { worker } => self.worker_lost(&worker),
            Command::Decommission { worker } => self.decommission(&worker),
            Command::Recommission { worker } => {
                let Some(w) = self.workers.get_mut(&worker) else {
                    return err(ErrorCode::UnknownWorker, format!("worker {worker} is not registered"));
                };
                if w.state != WorkerState::Decommissioning && w.state != WorkerState::Decommissioned {
                    return err(ErrorCode::BadRequest, format!("worker {worker} is {:?}, not draining", w.state));
                }
                w.state = WorkerState::Active;
                self.changes.insert(Change::Worker(worker));
                CommandResult::Ack
            }
            Command::RemoveWorker { worker } => {
                let Some(w) = self.workers.get(&worker) else {
                    return err(ErrorCode::UnknownWorker, format!("worker {worker} is not registered"));
                };
                if !matches!(w.state, WorkerState::Lost | WorkerState::Decommissioned) {
                    return err(
                        ErrorCode::BadRequest,
                        format!("worker {worker} is {:?}: decommission it first", w.state),
                    );
                }
                self.workers.remove(&worker);
                self.load.remove(&worker);
                self.changes.insert(Change::Worker(worker));
                CommandResult::Ack
            }
            Command::ReportSegment { worker, shuffle, partition, segment, last, upto } => {
                self.report_segment(&worker, &shuffle, partition, segment, upto, last)
            }
            Command::DrainComplete { worker } => self.drain_complete(&worker),
            Command::SetStoreUrl { url } => {
                if url.len() > shuffle_proto::messages::MAX_STORE_URL_LEN {
                    return err(ErrorCode::BadRequest, "store url too long");
                }
                if self.store_url != url {
                    self.store_url = url;
                    self.changes.insert(Change::StoreUrl);
                }
                CommandResult::Ack
            }
            Command::Batch(cmds) => CommandResult::Batch(
                cmds.into_iter()
                    .map(|c| match c {
                        Command::Batch(_) => err(ErrorCode::BadRequest, "a batch cannot hold a batch"),
                        c => self.apply(c),
                    })
                    .collect(),
            ),
        }
    }

    /// The draining worker holds nothing: its remaining live entries carried no committed
    /// bytes (nothing to read) or lost them (the worker no longer has them).
    fn drain_complete(&mut self, worker: &WorkerId) -> CommandResult {
        match self.workers.get(worker).map(|w| w.state.clone()) {
            Some(WorkerState::Decommissioning) => {}
            Some(WorkerState::Decommissioned) => return CommandResult::Ack,
            Some(s) => return err(ErrorCode::BadRequest, format!("worker {worker} is {s:?}, not draining")),
            None => return err(ErrorCode::UnknownWorker, format!("worker {worker} is not registered")),
        }
        let keys: Vec<ShuffleKey> = self.shuffles.keys().cloned().collect();
        for key in keys {
            self.release_entries(worker, &key, None, Epoch(u64::MAX), |e| {
                if e.bytes == 0 {
                    EpochState::Spilled
                } else {
                    EpochState::Lost
                }
            });
        }
        self.finish_drain_if_empty(worker);
        CommandResult::Ack
    }

    /// Takes `worker` out of the live entries of one shuffle (one partition, or all) up to
    /// epoch `upto`: where it is the primary the entry becomes `as_primary(entry)`; where it is
    /// the replica the replica is dropped. Load and the change log follow.
    fn release_entries(
        &mut self,
        worker: &WorkerId,
        key: &ShuffleKey,
        partition: Option<u32>,
        upto: Epoch,
        as_primary: impl Fn(&EpochEntry) -> EpochState,
    ) {
        let (mut off, mut on) = (Vec::new(), Vec::new());
        let Some(rec) = self.shuffles.get_mut(key) else { return };
        for (pi, p) in rec.partitions.iter_mut().enumerate() {
            if partition.is_some_and(|want| want as usize != pi) {
                continue;
            }
            let mut touched = false;
            for e in p.epochs.iter_mut().filter(|e| e.state == EpochState::Live && e.epoch <= upto) {
                if &e.primary == worker {
                    off.push(e.clone());
                    e.state = as_primary(e);
                    touched = true;
                } else if e.replica.as_ref() == Some(worker) {
                    off.push(e.clone());
                    e.replica = None;
                    on.push(e.clone());
                    touched = true;
                }
            }
            if touched {
                self.changes.insert(Change::Partition(key.clone(), pi as u32));
            }
        }
        for e in &off {
            self.entry_load(e, -1);
        }
        for e in &on {
            self.entry_load(e, 1);
        }
    }

    fn next_epoch(&mut self) -> Epoch {
        self.counters.next_epoch += 1;
        self.changes.insert(Change::Counters);
        Epoch(self.counters.next_epoch)
    }

    fn candidates(&self, exclude: Option<&WorkerId>) -> Vec<Candidate> {
        self.workers
            .values()
            .filter(|w| w.state == WorkerState::Active && Some(&w.id) != exclude)
            .map(|w| {
                let l = self.load.get(&w.id).copied().unwrap_or_default();
                Candidate { id: w.id.clone(), partitions: l.partitions, bytes: l.bytes }
            })
            .collect()
    }

    fn endpoint(&self, id: &WorkerId) -> WorkerEndpoint {
        let addr = self.workers.get(id).map(|w| w.addr.clone()).unwrap_or_default();
        WorkerEndpoint { id: id.clone(), addr }
    }

    fn location(&self, partition: u32, e: &EpochEntry) -> PartitionLocation {
        PartitionLocation {
            partition: PartitionId(partition),
            primary: self.endpoint(&e.primary),
            replica: e.replica.as_ref().map(|r| self.endpoint(r)),
            epoch: e.epoch,
        }
    }

    fn add_load(&mut self, worker: &WorkerId, partitions: i64, bytes: i64) {
        let l = self.load.entry(worker.clone()).or_default();
        l.partitions = l.partitions.saturating_add_signed(partitions);
        l.bytes = l.bytes.saturating_add_signed(bytes);
    }

    /// Counts an entry's load on (`sign` = 1) or off (`sign` = -1) its workers.
    fn entry_load(&mut self, e: &EpochEntry, sign: i64) {
        let bytes = i64::try_from(e.bytes).unwrap_or(i64::MAX) * sign;
        self.add_load(&e.primary.clone(), sign, bytes);
        if let Some(r) = e.replica.clone() {
            self.add_load(&r, sign, bytes);
        }
    }

    fn register_shuffle(
        &mut self,
        shuffle: ShuffleKey,
        num_maps: u32,
        num_partitions: u32,
        replication: u8,
    ) -> CommandResult {
        if let Some(existing) = self.shuffles.get(&shuffle) {
            let m = &existing.meta;
            if (m.num_maps, m.num_partitions, m.replication) != (num_maps, num_partitions, replication) {
                return err(ErrorCode::BadRequest, format!("shuffle {shuffle} exists with other dimensions"));
            }
            return CommandResult::Assignment(self.assignment_of(existing));
        }
        if !self.apps.contains_key(&shuffle.app) {
            return err(ErrorCode::UnknownApp, format!("app {} is not registered", shuffle.app));
        }
        if num_partitions == 0 || num_partitions > MAX_PARTITIONS || num_maps > MAX_MAPS {
            return err(
                ErrorCode::BadRequest,
                format!("{num_maps} maps x {num_partitions} partitions is out of bounds"),
            );
        }
        if !(1..=2).contains(&replication) {
            return err(ErrorCode::BadRequest, format!("replication {replication} is not 1 or 2"));
        }
        let Some(placements) = place(&self.candidates(None), num_partitions as usize, replication) else {
            return err(ErrorCode::NoWorkers, format!("not enough active workers for replication {replication}"));
        };
        let mut partitions = Vec::with_capacity(placements.len());
        for p in placements {
            let entry = EpochEntry {
                epoch: self.next_epoch(),
                primary: p.primary,
                replica: p.replica,
                state: EpochState::Live,
                bytes: 0,
            };
            self.entry_load(&entry, 1);
            partitions.push(PartitionRecord { epochs: vec![entry], segments: Vec::new() });
        }
        let state = if num_maps == 0 { ShuffleState::Sealed } else { ShuffleState::Writing };
        let meta =
            ShuffleMeta { key: shuffle.clone(), num_maps, num_partitions, replication, state, committed_maps: 0 };
        let rec = ShuffleRecord { meta, partitions, commits: BTreeMap::new() };
        self.changes.insert(Change::Shuffle(shuffle.clone()));
        for p in 0..num_partitions {
            self.changes.insert(Change::Partition(shuffle.clone(), p));
        }
        let result = CommandResult::Assignment(self.assignment_of(&rec));
        self.shuffles.insert(shuffle, rec);
        result
    }

    fn remove_shuffle(&mut self, key: &ShuffleKey) {
        let Some(rec) = self.shuffles.remove(key) else { return };
        for p in &rec.partitions {
            for e in p.epochs.iter().filter(|e| e.state == EpochState::Live) {
                self.entry_load(e, -1);
            }
        }
        self.counters.tombstones.push(key.clone());
        if self.counters.tombstones.len() > MAX_TOMBSTONES {
            self.counters.tombstones.remove(0);
        }
        self.changes.insert(Change::Counters);
        self.changes.insert(Change::ShuffleRemoved(key.clone()));
    }

    /// Moves the partition's writes to a new worker under a new epoch. The old entry keeps
    /// its data state (a live worker still serves what it holds).
    /// Places the partition's next epoch away from `away_from`; with `or_back`, on it again
    /// when no other placement exists (a split on the only worker).
    fn move_partition(
        &mut self,
        key: &ShuffleKey,
        partition: u32,
        away_from: &WorkerId,
        or_back: bool,
    ) -> Result<EpochEntry, WireError> {
        let replication = self.shuffles.get(key).map(|r| r.meta.replication).unwrap_or(1);
        let placement = place(&self.candidates(Some(away_from)), 1, replication)
            .or_else(|| if or_back { place(&self.candidates(None), 1, replication) } else { None })
            .and_then(|mut v| v.pop())
            .ok_or_else(|| WireError::new(ErrorCode::NoWorkers, "no active worker to move the partition to"))?;
        let entry = EpochEntry {
            epoch: self.next_epoch(),
            primary: placement.primary,
            replica: placement.replica,
            state: EpochState::Live,
            bytes: 0,
        };
        self.entry_load(&entry, 1);
        if let Some(rec) = self.shuffles.get_mut(key) {
            if let Some(p) = rec.partitions.get_mut(partition as usize) {
                p.epochs.push(entry.clone());
            }
        }
        self.changes.insert(Change::Partition(key.clone(), partition));
        Ok(entry)
    }

    fn relocate(
        &mut self,
        key: &ShuffleKey,
        partition: PartitionId,
        failed_epoch: Epoch,
        failed: &WorkerId,
        split: bool,
    ) -> CommandResult {
        let Some(rec) = self.shuffles.get(key) else {
            return err(ErrorCode::UnknownShuffle, format!("shuffle {key} is not registered"));
        };
        if rec.meta.state != ShuffleState::Writing {
            return err(ErrorCode::ShuffleNotWriting, format!("shuffle {key} is {:?}", rec.meta.state));
        }
        let Some(current) = rec.partitions.get(partition.0 as usize).and_then(|p| p.epochs.last()) else {
            return err(ErrorCode::BadRequest, format!("partition {partition} out of range"));
        };
        // A client reports its primary; a primary reports the replica it could not forward to.
        // Only a primary closes a piece at the split size.
        let involved = &current.primary == failed || (!split && current.replica.as_ref() == Some(failed));
        if current.epoch != failed_epoch || !involved {
            // Someone already moved it (or the report is stale): hand out the current one.
            return CommandResult::Location(self.location(partition.0, current));
        }
        match self.move_partition(key, partition.0, failed, split) {
            Ok(e) => CommandResult::Location(self.location(partition.0, &e)),
            Err(e) => CommandResult::Error(e),
        }
    }

    fn commit_map(
        &mut self,
        key: &ShuffleKey,
        map: MapId,
        attempt: AttemptId,
        stats: Vec<PartitionStat>,
    ) -> CommandResult {
        let Some(rec) = self.shuffles.get(key) else {
            return err(ErrorCode::UnknownShuffle, format!("shuffle {key} is not registered"));
        };
        if let Some(c) = rec.commits.get(&map.0) {
            return CommandResult::Committed(MapCommitted {
                winner: c.attempt,
                accepted: c.attempt == attempt,
                sealed: rec.meta.state == ShuffleState::Sealed,
            });
        }
        if rec.meta.state != ShuffleState::Writing {
            return err(ErrorCode::ShuffleNotWriting, format!("shuffle {key} is {:?}", rec.meta.state));
        }
        if map.0 >= rec.meta.num_maps {
            return err(ErrorCode::BadRequest, format!("map {map} out of range 0..{}", rec.meta.num_maps));
        }
        if !stats.windows(2).all(|w| w[0].partition < w[1].partition) {
            return err(ErrorCode::BadRequest, "commit partitions must be strictly ascending");
        }
        for s in &stats {
            let Some(p) = rec.partitions.get(s.partition.0 as usize) else {
                return err(ErrorCode::BadRequest, format!("partition {} out of range", s.partition));
            };
            for used in &s.epochs {
                match p.epochs.iter().find(|e| e.epoch == *used) {
                    None => {
                        return err(ErrorCode::BadRequest, format!("partition {} never had epoch {used}", s.partition))
                    }
                    Some(e) if e.state == EpochState::Lost => {
                        return err(
                            ErrorCode::DataLost,
                            format!(
                                "partition {} lost its data at epoch {used} with worker {}",
                                s.partition, e.primary
                            ),
                        )
                    }
                    Some(_) => {}
                }
            }
            if s.epochs.is_empty() {
                return err(ErrorCode::BadRequest, format!("partition {} commit names no epoch", s.partition));
            }
        }
        // Accepted: attribute bytes to the epochs' workers (the first epoch used carries them;
        // exact splits don't matter for placement).
        let mut load_updates = Vec::new();
        let Some(rec) = self.shuffles.get_mut(key) else { return err(ErrorCode::Internal, "shuffle vanished") };
        for s in &stats {
            if let Some(p) = rec.partitions.get_mut(s.partition.0 as usize) {
                if let Some(e) = p.epochs.iter_mut().find(|e| Some(&e.epoch) == s.epochs.first()) {
                    e.bytes = e.bytes.saturating_add(s.bytes);
                    if e.state == EpochState::Live {
                        load_updates.push((e.primary.clone(), e.replica.clone(), s.bytes));
                    }
                }
                self.changes.insert(Change::Partition(key.clone(), s.partition.0));
            }
        }
        rec.commits.insert(map.0, MapCommit { attempt, partitions: stats });
        rec.meta.committed_maps += 1;
        if rec.meta.committed_maps == rec.meta.num_maps {
            rec.meta.state = ShuffleState::Sealed;
        }
        let sealed = rec.meta.state == ShuffleState::Sealed;
        self.changes.insert(Change::Map(key.clone(), map.0));
        self.changes.insert(Change::Shuffle(key.clone()));
        for (primary, replica, bytes) in load_updates {
            let b = i64::try_from(bytes).unwrap_or(i64::MAX);
            self.add_load(&primary, 0, b);
            if let Some(r) = replica {
                self.add_load(&r, 0, b);
            }
        }
        CommandResult::Committed(MapCommitted { winner: attempt, accepted: true, sealed })
    }

    fn worker_lost(&mut self, worker: &WorkerId) -> CommandResult {
        let Some(w) = self.workers.get_mut(worker) else {
            return err(ErrorCode::UnknownWorker, format!("worker {worker} is not registered"));
        };
        w.state = WorkerState::Lost;
        self.changes.insert(Change::Worker(worker.clone()));
        let keys: Vec<ShuffleKey> = self.shuffles.keys().cloned().collect();
        for key in keys {
            let mut to_move = Vec::new();
            let mut off_load = Vec::new();
            let mut promoted = Vec::new();
            let Some(rec) = self.shuffles.get_mut(&key) else { continue };
            let writing = rec.meta.state == ShuffleState::Writing;
            for (pi, p) in rec.partitions.iter_mut().enumerate() {
                let last = p.epochs.len().saturating_sub(1);
                let mut touched = false;
                for (ei, e) in p.epochs.iter_mut().enumerate() {
                    if e.state != EpochState::Live {
                        continue;
                    }
                    if &e.primary == worker {
                        off_load.push(e.clone());
                        match e.replica.take() {
                            // The replica holds every acked batch: it becomes the primary.
                            Some(r) => {
                                e.primary = r;
                                promoted.push(e.clone());
                            }
                            None => e.state = EpochState::Lost,
                        }
                        touched = true;
                        if ei == last && writing {
                            to_move.push(pi as u32);
                        }
                    } else if e.replica.as_ref() == Some(worker) {
                        off_load.push(e.clone());
                        e.replica = None;
                        promoted.push(e.clone());
                        touched = true;
                    }
                }
                if touched {
                    self.changes.insert(Change::Partition(key.clone(), pi as u32));
                }
            }
            for e in &off_load {
                self.entry_load(e, -1);
            }
            for e in &promoted {
                self.entry_load(e, 1);
            }
            for p in to_move {
                // Pushes continue elsewhere; with no active worker left they fail and retry.
                let _ = self.move_partition(&key, p, worker, false);
            }
        }
        CommandResult::Ack
    }

    fn decommission(&mut self, worker: &WorkerId) -> CommandResult {
        let Some(w) = self.workers.get_mut(worker) else {
            return err(ErrorCode::UnknownWorker, format!("worker {worker} is not registered"));
        };
        match w.state {
            WorkerState::Active => w.state = WorkerState::Decommissioning,
            WorkerState::Decommissioning | WorkerState::Decommissioned => return CommandResult::Ack,
            WorkerState::Lost => return err(ErrorCode::BadRequest, format!("worker {worker} is lost")),
        }
        self.changes.insert(Change::Worker(worker.clone()));
        // Writing partitions whose current epoch lives on the worker move on.
        let mut moves = Vec::new();
        for (key, rec) in &self.shuffles {
            if rec.meta.state != ShuffleState::Writing {
                continue;
            }
            for (pi, p) in rec.partitions.iter().enumerate() {
                if let Some(e) = p.epochs.last() {
                    if e.state == EpochState::Live && (&e.primary == worker || e.replica.as_ref() == Some(worker)) {
                        moves.push((key.clone(), pi as u32));
                    }
                }
            }
        }
        for (key, p) in moves {
            let _ = self.move_partition(&key, p, worker, false);
        }
        self.finish_drain_if_empty(worker);
        CommandResult::Ack
    }

    /// A draining worker with no live data left is done.
    fn finish_drain_if_empty(&mut self, worker: &WorkerId) {
        let draining = self.workers.get(worker).is_some_and(|w| w.state == WorkerState::Decommissioning);
        if draining && !self.holds_live_data(worker) {
            if let Some(w) = self.workers.get_mut(worker) {
                w.state = WorkerState::Decommissioned;
                self.changes.insert(Change::Worker(worker.clone()));
            }
        }
    }

    fn holds_live_data(&self, worker: &WorkerId) -> bool {
        self.shuffles.values().any(|r| {
            r.partitions.iter().any(|p| {
                p.epochs.iter().any(|e| {
                    e.state == EpochState::Live && (&e.primary == worker || e.replica.as_ref() == Some(worker))
                })
            })
        })
    }

    fn report_segment(
        &mut self,
        worker: &WorkerId,
        key: &ShuffleKey,
        partition: PartitionId,
        segment: SegmentRef,
        upto: Epoch,
        last: bool,
    ) -> CommandResult {
        let Some(rec) = self.shuffles.get_mut(key) else {
            // The shuffle is gone: the worker deletes the object it just wrote.
            return err(ErrorCode::UnknownShuffle, format!("shuffle {key} is not registered"));
        };
        // A spill names the newest epoch it covers (or, releasing below the current one, one
        // less). Partition 0's first epoch is the registration's lowest (partitions are placed
        // in order from one growing counter), so a report below it comes from a spill of an
        // earlier registration of the same key — the app or shuffle removed and registered
        // again while it ran — and its segment holds none of this registration's batches.
        let first = rec.partitions.first().and_then(|p| p.epochs.first()).map_or(0, |e| e.epoch.0);
        if upto.0.saturating_add(1) < first {
            return err(ErrorCode::UnknownShuffle, format!("shuffle {key} was registered again"));
        }
        let Some(p) = rec.partitions.get_mut(partition.0 as usize) else {
            return err(ErrorCode::BadRequest, format!("partition {partition} out of range"));
        };
        if !p.segments.iter().any(|s| s.object_key == segment.object_key) {
            p.segments.push(segment);
        }
        self.changes.insert(Change::Partition(key.clone(), partition.0));
        if last {
            self.release_entries(worker, key, Some(partition.0), upto, |_| EpochState::Spilled);
        }
        self.finish_drain_if_empty(worker);
        CommandResult::Ack
    }

    // -----------------------------------------------------------------------------------------
    // Queries (served by the leader from its applied state).

    /// The tenant holding a registered app, and the incarnation of its registration.
    pub fn holder_of(&self, app: &AppId) -> Option<(String, u64)> {
        self.apps.get(app).map(|r| (r.tenant.clone(), r.incarnation))
    }

    pub fn assignment_of(&self, rec: &ShuffleRecord) -> ShuffleAssignment {
        let locations = rec
            .partitions
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.epochs.last().map(|e| self.location(i as u32, e)))
            .collect();
        ShuffleAssignment {
            shuffle: rec.meta.key.clone(),
            state: rec.meta.state.clone(),
            num_maps: rec.meta.num_maps,
            num_partitions: rec.meta.num_partitions,
            locations,
            capability: Vec::new(),
        }
    }

    pub fn assignment(&self, key: &ShuffleKey) -> Result<ShuffleAssignment, WireError> {
        self.shuffles
            .get(key)
            .map(|r| self.assignment_of(r))
            .ok_or_else(|| WireError::new(ErrorCode::UnknownShuffle, format!("shuffle {key} is not registered")))
    }

    /// What a reader of partitions `[start_p, end_p)` and maps `[start_m, end_m)` needs.
    pub fn read_plan(
        &self,
        key: &ShuffleKey,
        start_p: u32,
        end_p: u32,
        start_m: u32,
        end_m: u32,
    ) -> Result<ReadPlan, WireError> {
        let rec = self
            .shuffles
            .get(key)
            .ok_or_else(|| WireError::new(ErrorCode::UnknownShuffle, format!("shuffle {key} is not registered")))?;
        let end_p = end_p.min(rec.meta.num_partitions);
        let end_m = end_m.min(rec.meta.num_maps);
        let mut partitions = Vec::with_capacity(end_p.saturating_sub(start_p) as usize);
        for pi in start_p..end_p {
            let Some(p) = rec.partitions.get(pi as usize) else { break };
            let mut expected = Vec::new();
            let mut lost = false;
            for (map, c) in rec.commits.range(start_m..end_m) {
                let Ok(i) = c.partitions.binary_search_by_key(&pi, |s| s.partition.0) else { continue };
                let s = &c.partitions[i];
                lost |= s
                    .epochs
                    .iter()
                    .any(|used| p.epochs.iter().any(|e| e.epoch == *used && e.state == EpochState::Lost));
                expected.push(MapOutput {
                    map: MapId(*map),
                    attempt: c.attempt,
                    bytes: s.bytes,
                    crc_sum: s.crc_sum,
                    batches: s.batches,
                });
            }
            // One source per (primary, replica) pair, named by the pair's newest live epoch.
            // Every worker holding a live piece is named (as a primary or a replica), and a
            // worker's spill reports the newest epoch naming it as what its scan covered, so
            // every piece it holds (splits, a partition placed back on it) is released
            // together. Readers read each primary once and fall back to the replicas of its
            // pairs.
            let mut sources: Vec<PartitionLocation> = Vec::new();
            for e in p.epochs.iter().filter(|e| e.state == EpochState::Live) {
                let pair = |s: &&mut PartitionLocation| {
                    s.primary.id == e.primary && s.replica.as_ref().map(|r| &r.id) == e.replica.as_ref()
                };
                match sources.iter_mut().find(pair) {
                    Some(s) if s.epoch < e.epoch => *s = self.location(pi, e),
                    Some(_) => {}
                    None => sources.push(self.location(pi, e)),
                }
            }
            partitions.push(PartitionReadPlan {
                partition: PartitionId(pi),
                sources,
                segments: p.segments.clone(),
                lost,
                expected,
            });
        }
        Ok(ReadPlan {
            shuffle: key.clone(),
            state: rec.meta.state.clone(),
            partitions,
            capability: Vec::new(),
            store_url: self.store_url.clone(),
        })
    }

    /// What a worker should be: its recorded state (Lost for one the master does not know).
    pub fn desired_state(&self, worker: &WorkerId) -> WorkerState {
        self.workers.get(worker).map(|w| w.state.clone()).unwrap_or(WorkerState::Lost)
    }

    /// Commands for a worker's heartbeat, given the shuffles it reports local data of.
    pub fn commands_for(&self, worker: &WorkerId, held: &[ShuffleKey]) -> Vec<WorkerCommand> {
        let mut out = Vec::new();
        for key in held {
            match self.shuffles.get(key) {
                None => out.push(WorkerCommand::DeleteShuffle { shuffle: key.clone() }),
                // Held data of a sealed shuffle is either still read from this worker (spill it)
                // or no longer (a spill that stopped between its report and its local delete):
                // the seal spill tells them apart and drops the second kind, so ask either way.
                Some(rec) if rec.meta.state == ShuffleState::Sealed => {
                    out.push(WorkerCommand::Seal { shuffle: key.clone() })
                }
                // A replication-2 partition whose other copy was lost lives only here: the
                // object store becomes its second copy. Asked on every heartbeat while it is
                // so (level-triggered); a worker holding nothing of it does nothing.
                Some(rec) if rec.meta.replication >= 2 => {
                    for (pi, p) in rec.partitions.iter().enumerate() {
                        let single = p
                            .epochs
                            .iter()
                            .any(|e| e.state == EpochState::Live && &e.primary == worker && e.replica.is_none());
                        if single {
                            out.push(WorkerCommand::SpillPartition {
                                shuffle: key.clone(),
                                partition: PartitionId(pi as u32),
                            });
                        }
                    }
                }
                Some(_) => {}
            }
        }
        out
    }

    /// Deletions of removed shuffles' objects not yet handed to any worker (`sent`: the ones
    /// that were, kept by the leader), at most `max`. Spilled data has no owner once every
    /// partition is in the store, so each removed shuffle goes to one worker, whichever
    /// heartbeats first; deleting a prefix twice (after a leader change) is harmless.
    pub fn purge_commands(&self, sent: &mut std::collections::HashSet<ShuffleKey>, max: usize) -> Vec<WorkerCommand> {
        let tombstones = &self.counters.tombstones;
        if sent.len() > 2 * MAX_TOMBSTONES {
            let live: std::collections::HashSet<&ShuffleKey> = tombstones.iter().collect();
            sent.retain(|k| live.contains(k));
        }
        let mut out = Vec::new();
        for k in tombstones.iter().rev() {
            if out.len() >= max {
                break;
            }
            if !self.shuffles.contains_key(k) && sent.insert(k.clone()) {
                out.push(WorkerCommand::DeleteShuffle { shuffle: k.clone() });
            }
        }
        out
    }

    pub fn load_of(&self, worker: &WorkerId) -> Load {
        self.load.get(worker).copied().unwrap_or_default()
    }

    pub fn shuffle_summaries(&self) -> Vec<ShuffleSummary> {
        self.shuffles
            .values()
            .map(|r| ShuffleSummary {
                shuffle: r.meta.key.clone(),
                state: r.meta.state.clone(),
                num_maps: r.meta.num_maps,
                num_partitions: r.meta.num_partitions,
                committed_maps: r.meta.committed_maps,
                bytes: r.commits.values().flat_map(|c| c.partitions.iter()).map(|s| s.bytes).sum(),
            })
            .collect()
    }

    pub fn app_summaries(&self, remaining: impl Fn(&AppId) -> u64) -> Vec<AppSummary> {
        self.apps
            .values()
            .map(|a| AppSummary {
                app: a.app.clone(),
                shuffles: self.shuffles.keys().filter(|k| k.app == a.app).count() as u32,
                lease_remaining_ms: remaining(&a.app),
            })
            .collect()
    }

    /// Bytes of a worker's data that now live in the object store.
    pub fn spilled_bytes_of(&self, worker: &WorkerId) -> u64 {
        self.shuffles
            .values()
            .flat_map(|r| r.partitions.iter())
            .flat_map(|p| p.epochs.iter())
            .filter(|e| e.state == EpochState::Spilled && &e.primary == worker)
            .map(|e| e.bytes)
            .sum()
    }

    // -----------------------------------------------------------------------------------------
    // Persistence support.

    /// The records changed since the last call.
    pub fn take_changes(&mut self) -> BTreeSet<Change> {
        std::mem::take(&mut self.changes)
    }

    /// Recomputes derived state after records were loaded.
    pub fn rebuild_derived(&mut self) {
        self.load = self.compute_load();
        self.changes.clear();
    }

    fn compute_load(&self) -> BTreeMap<WorkerId, Load> {
        let mut load: BTreeMap<WorkerId, Load> = self.workers.keys().map(|w| (w.clone(), Load::default())).collect();
        for rec in self.shuffles.values() {
            for p in &rec.partitions {
                for e in p.epochs.iter().filter(|e| e.state == EpochState::Live) {
                    for w in std::iter::once(&e.primary).chain(e.replica.iter()) {
                        let l = load.entry(w.clone()).or_default();
                        l.partitions += 1;
                        l.bytes += e.bytes;
                    }
                }
            }
        }
        load
    }

    /// Checks the derived state against the records; for tests and debug assertions.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut want = self.compute_load();
        let mut have = self.load.clone();
        want.retain(|_, l| *l != Load::default());
        have.retain(|_, l| *l != Load::default());
        if want != have {
            return Err(format!("load drifted: have {have:?}, want {want:?}"));
        }
        if let Some(a) = self.apps.values().find(|a| a.incarnation > self.counters.next_epoch) {
            return Err(format!("{}: incarnation {} above counter", a.app, a.incarnation));
        }
        for rec in self.shuffles.values() {
            let n = rec.commits.len() as u32;
            if n != rec.meta.committed_maps {
                return Err(format!("{}: {} commits, meta says {}", rec.meta.key, n, rec.meta.committed_maps));
            }
            for p in &rec.partitions {
                if !p.epochs.windows(2).all(|w| w[0].epoch < w[1].epoch) {
                    return Err(format!("{}: epochs not increasing", rec.meta.key));
                }
                if let Some(e) = p.epochs.iter().find(|e| e.epoch.0 > self.counters.next_epoch) {
                    return Err(format!("{}: epoch {} above counter", rec.meta.key, e.epoch));
                }
                if let Some(e) = p.epochs.iter().find(|e| e.replica.as_ref() == Some(&e.primary)) {
                    return Err(format!("{}: epoch {} has its replica on its primary", rec.meta.key, e.epoch));
                }
            }
            self.check_read_sources(rec)?;
        }
        Ok(())
    }

    /// Every worker holding a live piece is named by the read plan, by an epoch at or above
    /// the piece's, in the same role: its spill releases what it holds, and readers find a
    /// replica of every piece.
    fn check_read_sources(&self, rec: &ShuffleRecord) -> Result<(), String> {
        let key = &rec.meta.key;
        let plan = self.read_plan(key, 0, rec.meta.num_partitions, 0, rec.meta.num_maps).map_err(|e| e.to_string())?;
        for (p, pp) in rec.partitions.iter().zip(&plan.partitions) {
            for e in p.epochs.iter().filter(|e| e.state == EpochState::Live) {
                let covered = pp.sources.iter().any(|s| {
                    s.epoch >= e.epoch
                        && s.primary.id == e.primary
                        && s.replica.as_ref().map(|r| &r.id) == e.replica.as_ref()
                });
                if !covered {
                    return Err(format!(
                        "{key}: live epoch {} of partition {} has no read source",
                        e.epoch, pp.partition
                    ));
                }
            }
        }
        Ok(())
    }
}
