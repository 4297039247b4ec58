//! The worker's decisions, as a pure state machine: which pushes are admitted, when a
//! partition may be spilled and what is deleted after, what the master's desired state means
//! for this process, and when a drain is complete. The process around it (`node.rs`) only
//! executes what it decides; nothing here does I/O or reads a clock.
//!
//! Invariants (checked by the property tests below over random histories):
//! - A push is admitted only while the worker is Active and under its buffer limit; every
//!   admitted push is counted in flight for its partition until it is stored or failed.
//! - An acknowledged batch is deleted only if a spill's scan read it (so it is in the segment
//!   the master recorded), or its shuffle is sealed and the spill covers the whole partition
//!   (a sealed shuffle takes no committed data any more).
//! - A drain spill of a still-writing partition starts only once the worker refuses pushes
//!   and none is in flight for the partition, so its scan sees every acknowledged batch.
//! - At most one spill per partition runs at a time.
//! - The master's desired state is level-triggered: the same state repeated changes nothing,
//!   Active after Draining resumes taking pushes (recommission), Decommissioned stops the
//!   process, Lost makes it register again.

use std::collections::{BTreeMap, BTreeSet};

use shuffle_proto::messages::WorkerState;
use shuffle_proto::{Epoch, ErrorCode, ShuffleKey};

/// A partition of a shuffle on this worker.
pub type PartKey = (ShuffleKey, u32);

/// What this worker is doing, as it follows the master.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    Active,
    /// Refuses pushes and spills everything it holds.
    Draining,
    /// The master recorded the drain complete: the process stops.
    Decommissioned,
    /// The master wrote this worker off: it must register again before serving pushes.
    Lost,
}

/// What the process must do after the master's desired state arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Refuse pushes from now on and spill every local partition.
    StartDrain,
    /// A drain was called off: take pushes again.
    Resume,
    /// Report the drain complete to the master (nothing left here).
    ReportDrained,
    /// The master calls this worker decommissioned: stop the process.
    Stop,
    /// Register with the master again.
    Register,
}

/// Why a spill is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpillKind {
    /// The buffer is over its high watermark; the partition may keep taking pushes.
    Pressure,
    /// The shuffle is sealed: every map committed.
    Seal,
    /// The worker drains.
    Drain,
    /// A replication-2 partition has only this worker's copy left (the master asks): the object
    /// store becomes the second copy. Like pressure, exactly what was scanned goes.
    SingleCopy,
}

/// The epoch up to which a single-copy spill may release what it scanned: every live epoch
/// of the partition that holds this worker and takes no more pushes, so all but `current`
/// (the partition's epoch for new writes; `None` once sealed, when all may go). The master
/// releases the live epochs up to it that hold this worker: as a primary they become spilled
/// (the scan, run with no push in flight, read every batch they hold), as a replica the
/// worker is dropped from them. `None`: release nothing, as when the only copy here is the
/// current epoch (no second worker to move writes to): its later batches are spilled by the
/// next request.
///
/// `newest_here`: the newest live epoch holding this worker. A read plan names each worker
/// once, by that epoch, so older pieces here (a partition split away and back, an epoch
/// promoted after a loss) are covered by the bound without being listed.
pub fn single_copy_release(newest_here: Epoch, current: Option<Epoch>) -> Option<Epoch> {
    match current {
        None => Some(newest_here),
        Some(c) if newest_here < c => Some(newest_here),
        Some(c) => c.0.checked_sub(1).filter(|e| *e > 0).map(Epoch),
    }
}

/// Whether a spill of `kind` uploads this worker's copy, given whether the worker is the
/// primary of any of the partition's read sources. At seal a replica leaves the upload to its
/// primary, which holds the same batches (one segment, not two); it keeps its copy until the
/// master no longer reads it, then drops it. Pressure, drains and single-copy spills upload
/// what the worker holds whatever its role: each copy must be able to leave on its own.
pub fn uploads(kind: SpillKind, primary_of_a_source: bool) -> bool {
    kind != SpillKind::Seal || primary_of_a_source
}

/// What to delete locally once the segment is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delete {
    /// Exactly the keys the scan read.
    Scanned,
    /// Every key of the partition (sealed shuffles only).
    Partition,
}

/// Whether a spill may start now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpillStart {
    /// Scan and upload now; `last`: the segment completes this worker's copy of the partition.
    Go { delete: Delete, last: bool },
    /// Pushes admitted before the drain are still being stored: ask again shortly.
    Wait,
    /// Another spill of the partition is running.
    Busy,
    /// Not needed any more (a drain called off): skip it.
    Skip,
}

/// Limits the core decides with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreLimits {
    /// Pushes are refused with `Busy` past this many buffered bytes.
    pub max_buffered_bytes: u64,
    /// Pushes are refused with `DiskFull` when the data disk would have less than this free:
    /// RocksDB never meets a full disk (its flushes and compactions need room too, and a write
    /// that fails for lack of space stops the database until it is reopened).
    pub disk_reserve_bytes: u64,
    /// A partition's piece (its epoch here) takes pushes until it took this many bytes; then
    /// pushes to it are refused with `PartitionSplit` and the client asks the master for the
    /// next piece. 0: never.
    pub split_bytes: u64,
}

/// The worker's decision state.
#[derive(Clone, Debug)]
pub struct WorkerCore {
    limits: CoreLimits,
    lifecycle: Lifecycle,
    inflight: BTreeMap<PartKey, u32>,
    spilling: BTreeSet<PartKey>,
    /// Free bytes on the data disk: the last reading, less what was admitted since.
    disk_free: Option<u64>,
    /// A push was refused for lack of disk since the last reading.
    disk_refused: bool,
    /// The disk was short between the last two readings: under its reserve, or a push was
    /// refused for it.
    disk_low: bool,
    /// Bytes each partition piece (partition, epoch) took here as a primary, for splits.
    /// One entry per piece pushed to since start; a shuffle's go when it is deleted here.
    piece_bytes: BTreeMap<(PartKey, Epoch), u64>,
}

impl WorkerCore {
    pub fn new(limits: CoreLimits) -> WorkerCore {
        WorkerCore {
            limits,
            lifecycle: Lifecycle::Active,
            inflight: BTreeMap::new(),
            spilling: BTreeSet::new(),
            disk_free: None,
            disk_refused: false,
            disk_low: false,
            piece_bytes: BTreeMap::new(),
        }
    }

    /// Whether the disk was short as of the last reading: under its reserve then, or short
    /// enough since the reading before to refuse a push. A reading alone can sit just above
    /// the reserve while every push is refused, so refusals count too.
    pub fn disk_low(&self) -> bool {
        self.disk_low
    }

    /// A reading of the data disk's free bytes (taken every few hundred milliseconds).
    pub fn disk_free(&mut self, bytes: u64) {
        self.disk_low = self.disk_refused || bytes < self.limits.disk_reserve_bytes;
        self.disk_refused = false;
        self.disk_free = Some(bytes);
    }

    pub fn lifecycle(&self) -> Lifecycle {
        self.lifecycle
    }

    /// Whether the worker takes pushes (`/readyz`).
    pub fn ready(&self) -> bool {
        self.lifecycle == Lifecycle::Active
    }

    pub fn in_flight(&self, key: &PartKey) -> u32 {
        self.inflight.get(key).copied().unwrap_or(0)
    }

    pub fn spills_running(&self) -> usize {
        self.spilling.len()
    }

    /// Whether a spill of `key` is running (its upload or report may be in flight).
    pub fn spilling(&self, key: &PartKey) -> bool {
        self.spilling.contains(key)
    }

    /// The master's desired state for this worker, from a registration or heartbeat reply.
    /// `held`: bytes buffered locally now.
    pub fn desired(&mut self, want: WorkerState, held: u64) -> Vec<Step> {
        let mut steps = Vec::new();
        match (want, self.lifecycle) {
            (WorkerState::Active, Lifecycle::Active) => {}
            (WorkerState::Active, _) => {
                self.lifecycle = Lifecycle::Active;
                steps.push(Step::Resume);
            }
            (WorkerState::Decommissioning, Lifecycle::Active | Lifecycle::Lost) => {
                self.lifecycle = Lifecycle::Draining;
                steps.push(Step::StartDrain);
            }
            (WorkerState::Decommissioning, Lifecycle::Draining) => {}
            // The master moved on already; follow it.
            (WorkerState::Decommissioning, Lifecycle::Decommissioned) => {}
            (WorkerState::Decommissioned, Lifecycle::Decommissioned) => {}
            (WorkerState::Decommissioned, _) => {
                self.lifecycle = Lifecycle::Decommissioned;
                steps.push(Step::Stop);
            }
            (WorkerState::Lost, Lifecycle::Lost) => {}
            (WorkerState::Lost, _) => {
                self.lifecycle = Lifecycle::Lost;
                steps.push(Step::Register);
            }
        }
        if self.drained(held) {
            steps.push(Step::ReportDrained);
        }
        steps
    }

    /// Whether a push of `len` bytes to `key` is taken, with `held` bytes buffered now. An
    /// admitted push must be followed by [`WorkerCore::push_done`].
    pub fn admit_push(&mut self, key: &PartKey, len: u64, held: u64) -> Result<(), (ErrorCode, &'static str)> {
        match self.lifecycle {
            Lifecycle::Active => {}
            Lifecycle::Draining | Lifecycle::Decommissioned => {
                return Err((ErrorCode::Decommissioning, "worker is draining"))
            }
            Lifecycle::Lost => return Err((ErrorCode::PartitionNotOwned, "worker is registering again")),
        }
        if held.saturating_add(len) > self.limits.max_buffered_bytes {
            return Err((ErrorCode::Busy, "buffer is over its watermark"));
        }
        if let Some(free) = self.disk_free {
            if free < self.limits.disk_reserve_bytes.saturating_add(len) {
                self.disk_refused = true;
                return Err((ErrorCode::DiskFull, "the worker's disk is nearly full"));
            }
            // Pushes between two readings count against the last one.
            self.disk_free = Some(free - len);
        }
        *self.inflight.entry(key.clone()).or_default() += 1;
        Ok(())
    }

    /// Whether a primary push of `len` bytes to the piece of `key` at `epoch` is taken: until
    /// the piece took `split_bytes`, so a piece ends at most one batch past it (a batch that
    /// crosses the size is taken). Replica copies are not checked: their primary decided.
    /// Counted at admission, so concurrent pushes cannot all slip under the size.
    pub fn admit_to_piece(&mut self, key: &PartKey, epoch: Epoch, len: u64) -> Result<(), (ErrorCode, &'static str)> {
        let split = self.limits.split_bytes;
        if split == 0 {
            return Ok(());
        }
        // Only the newest piece of a partition takes pushes here: older ones are forgotten,
        // so the accounting holds one entry per partition pushed to.
        let older: Vec<(PartKey, Epoch)> =
            self.piece_bytes.range((key.clone(), Epoch(0))..(key.clone(), epoch)).map(|(k, _)| k.clone()).collect();
        for k in older {
            self.piece_bytes.remove(&k);
        }
        let took = self.piece_bytes.entry((key.clone(), epoch)).or_default();
        if split > 0 && *took >= split {
            return Err((ErrorCode::PartitionSplit, "the partition's piece here reached the split size"));
        }
        *took = took.saturating_add(len);
        Ok(())
    }

    /// The shuffle's data here is gone (deleted or purged): forget its pieces.
    pub fn forget_shuffle(&mut self, shuffle: &ShuffleKey) {
        self.piece_bytes.retain(|((s, _), _), _| s != shuffle);
    }

    /// Keeps the pieces of the shuffles that still take pushes (`writing`, from the masters)
    /// and forgets the rest: a shuffle sealed or removed while this worker held none of its
    /// data gets no command that would forget them.
    pub fn retain_writing(&mut self, writing: impl Fn(&ShuffleKey) -> bool) {
        self.piece_bytes.retain(|((s, _), _), _| writing(s));
    }

    /// Pieces this worker tracks for splits.
    pub fn pieces(&self) -> usize {
        self.piece_bytes.len()
    }

    /// An admitted push was stored (or failed before it was).
    pub fn push_done(&mut self, key: &PartKey) {
        if let Some(n) = self.inflight.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.inflight.remove(key);
            }
        }
    }

    /// Whether a spill of `key` may start; `writing`: the shuffle still takes commits. A `Go`
    /// must be followed by [`WorkerCore::end_spill`].
    pub fn begin_spill(&mut self, key: &PartKey, kind: SpillKind, writing: bool) -> SpillStart {
        if self.spilling.contains(key) {
            return SpillStart::Busy;
        }
        let go = match kind {
            SpillKind::Pressure => SpillStart::Go { delete: Delete::Scanned, last: false },
            // May release old epochs (see `single_copy_release`): like a drain, only once no
            // push admitted to the partition is still being stored.
            SpillKind::SingleCopy if self.in_flight(key) > 0 => SpillStart::Wait,
            SpillKind::SingleCopy => SpillStart::Go { delete: Delete::Scanned, last: true },
            SpillKind::Seal if !writing => SpillStart::Go { delete: Delete::Partition, last: true },
            // A seal the worker heard of before its assignment caught up: keep what may follow.
            SpillKind::Seal => SpillStart::Go { delete: Delete::Scanned, last: false },
            SpillKind::Drain if self.lifecycle != Lifecycle::Draining => SpillStart::Skip,
            SpillKind::Drain if !writing => SpillStart::Go { delete: Delete::Partition, last: true },
            SpillKind::Drain if self.in_flight(key) > 0 => SpillStart::Wait,
            // No push can be admitted any more and none is in flight: the scan sees every
            // acknowledged batch. Deleting only what it read still keeps whatever a later
            // recommission lets in.
            SpillKind::Drain => SpillStart::Go { delete: Delete::Scanned, last: true },
        };
        if matches!(go, SpillStart::Go { .. }) {
            self.spilling.insert(key.clone());
        }
        if matches!(go, SpillStart::Go { delete: Delete::Partition, .. }) {
            // The shuffle takes no more pushes: its pieces here are done.
            self.piece_bytes.retain(|(k, _), _| k != key);
        }
        go
    }

    /// A spill that started has ended, done or failed.
    pub fn end_spill(&mut self, key: &PartKey) {
        self.spilling.remove(key);
    }

    /// A draining worker holds nothing and has nothing running: the drain is complete.
    pub fn drained(&self, held: u64) -> bool {
        self.lifecycle == Lifecycle::Draining && held == 0 && self.spilling.is_empty() && self.inflight.is_empty()
    }
}

#[cfg(test)]
mod release_tests {
    use shuffle_proto::Epoch;

    use super::single_copy_release;

    #[test]
    fn a_single_copy_spill_releases_every_epoch_but_the_current_one() {
        let (e1, e3, e9) = (Epoch(1), Epoch(3), Epoch(9));
        // Epochs older than the current one take no pushes: all of them go.
        assert_eq!(single_copy_release(e3, Some(e9)), Some(e3));
        // The newest piece here is the current epoch: the older ones go, it stays.
        assert_eq!(single_copy_release(e9, Some(e9)), Some(Epoch(8)));
        // The current epoch is the first there is: nothing may be released.
        assert_eq!(single_copy_release(e1, Some(e1)), None);
        // Sealed: nothing takes pushes any more.
        assert_eq!(single_copy_release(e3, None), Some(e3));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;
    use shuffle_proto::AppId;

    use super::*;

    fn key(s: u32, p: u32) -> PartKey {
        (ShuffleKey::new(AppId::new("a").unwrap(), s, 0), p)
    }

    const LIMITS: CoreLimits = CoreLimits { max_buffered_bytes: 1 << 20, disk_reserve_bytes: 1 << 10, split_bytes: 0 };

    /// One thing that happens to a worker.
    #[derive(Clone, Debug)]
    enum Ev {
        Desired(u8),
        /// A push to partition (shuffle, partition) arrives.
        Push(u32, u32),
        /// The oldest in-flight push is stored and acknowledged.
        Store,
        /// The oldest in-flight push fails before it is stored.
        Fail,
        Spill(u32, u32, u8),
        /// The oldest running spill: scan now (what it uploads), and finish.
        Scan,
        Finish,
        Seal(u32),
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            (0u8..4).prop_map(Ev::Desired),
            (0u32..2, 0u32..2).prop_map(|(s, p)| Ev::Push(s, p)),
            (0u32..2).prop_map(|s| Ev::Push(s, 0)),
            Just(Ev::Store),
            Just(Ev::Store),
            Just(Ev::Fail),
            (0u32..2, 0u32..2, 0u8..4).prop_map(|(s, p, k)| Ev::Spill(s, p, k)),
            (0u32..2).prop_map(|s| Ev::Spill(s, 0, 2)),
            Just(Ev::Scan),
            Just(Ev::Finish),
            (0u32..2).prop_map(Ev::Seal),
        ]
    }

    fn state(i: u8) -> WorkerState {
        [WorkerState::Active, WorkerState::Decommissioning, WorkerState::Decommissioned, WorkerState::Lost][i as usize]
            .clone()
    }

    /// A running spill in the model: key, delete scope, what its scan read, and what a `last`
    /// segment must cover.
    type ModelSpill = (PartKey, Delete, Option<BTreeSet<u64>>, Option<u64>);

    /// The executor and the store, modelled: batches are numbers; a spill scans at some point
    /// after it starts and deletes at its end.
    #[derive(Default)]
    struct World {
        next: u64,
        inflight: Vec<(PartKey, u64)>,
        stored: BTreeMap<PartKey, BTreeSet<u64>>,
        /// Acknowledged batches of a shuffle while it was writing: the ones that may count.
        needed: BTreeSet<(PartKey, u64)>,
        /// Batches in a recorded segment.
        spilled: BTreeSet<(PartKey, u64)>,
        /// Running spills: key, delete scope, what the scan read (None: not yet scanned), and
        /// for a spill that completes the worker's copy (`last`) the newest batch admitted
        /// before it started.
        spills: Vec<ModelSpill>,
        sealed: BTreeSet<u32>,
        /// Per partition: the newest batch a finished `last` segment had to cover.
        released: BTreeMap<PartKey, u64>,
    }

    impl World {
        fn held(&self) -> u64 {
            self.stored.values().map(|s| s.len() as u64).sum()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn random_histories_keep_every_acknowledged_batch_and_follow_the_master(
            events in proptest::collection::vec(ev(), 1..120)
        ) {
            let mut core = WorkerCore::new(LIMITS);
            let mut w = World::default();
            for e in events {
                match e {
                    Ev::Desired(i) => {
                        let before = core.lifecycle();
                        let steps = core.desired(state(i), w.held());
                        if state(i) == WorkerState::Active && before != Lifecycle::Active {
                            prop_assert!(steps.contains(&Step::Resume));
                        }
                        // Repeating the same desired state changes nothing.
                        let again = core.desired(state(i), w.held());
                        prop_assert!(again.iter().all(|s| *s == Step::ReportDrained));
                    }
                    Ev::Push(s, p) => {
                        let k = key(s, p);
                        let was = core.lifecycle();
                        if core.admit_push(&k, 1, w.held()).is_ok() {
                            prop_assert_eq!(was, Lifecycle::Active, "admitted while not active");
                            w.next += 1;
                            w.inflight.push((k, w.next));
                        }
                    }
                    Ev::Store | Ev::Fail => {
                        if !w.inflight.is_empty() {
                            let (k, b) = w.inflight.remove(0);
                            core.push_done(&k);
                            if matches!(e, Ev::Store) {
                                w.stored.entry(k.clone()).or_default().insert(b);
                                if !w.sealed.contains(&k.0.shuffle_id) {
                                    // Stored after a `last` segment that should have held it.
                                    prop_assert!(w.released.get(&k).is_none_or(|r| b > *r), "batch {b} landed after its partition's last segment");
                                    w.needed.insert((k, b));
                                }
                            }
                        }
                    }
                    Ev::Spill(s, p, kind) => {
                        let k = key(s, p);
                        let kind = [SpillKind::Pressure, SpillKind::Seal, SpillKind::Drain, SpillKind::SingleCopy][kind as usize];
                        if kind == SpillKind::Seal && !w.sealed.contains(&s) {
                            continue;
                        }
                        let writing = !w.sealed.contains(&s);
                        match core.begin_spill(&k, kind, writing) {
                            SpillStart::Go { delete, last } => {
                                prop_assert!(!w.spills.iter().any(|s| s.0 == k), "two spills of a partition");
                                if delete == Delete::Partition {
                                    prop_assert!(!writing, "whole-partition delete of a writing shuffle");
                                }
                                // A single-copy spill releases only epochs closed to pushes
                                // (`single_copy_release`), never the partition's writes: it
                                // claims no coverage of batches admitted later.
                                let covers = (last && writing && kind != SpillKind::SingleCopy).then_some(w.next);
                                w.spills.push((k, delete, None, covers));
                            }
                            SpillStart::Wait => prop_assert!(core.in_flight(&k) > 0),
                            SpillStart::Busy | SpillStart::Skip => {}
                        }
                    }
                    Ev::Scan => {
                        if let Some(sp) = w.spills.iter_mut().find(|s| s.2.is_none()) {
                            // Pushes in flight are stored in any order relative to a scan.
                            sp.2 = Some(w.stored.get(&sp.0).cloned().unwrap_or_default());
                        }
                    }
                    Ev::Finish => {
                        if let Some(i) = w.spills.iter().position(|s| s.2.is_some()) {
                            let (k, delete, scanned, covers) = w.spills.remove(i);
                            let scanned = scanned.unwrap_or_default();
                            for b in &scanned {
                                w.spilled.insert((k.clone(), *b));
                            }
                            // After a `last` segment the master reads this partition from the
                            // store only: every batch admitted before the spill began must be
                            // in it, not just kept locally.
                            if let Some(upto) = covers {
                                let r = w.released.entry(k.clone()).or_default();
                                *r = (*r).max(upto);
                                for (nk, b) in &w.needed {
                                    if *nk == k && *b <= upto && !w.sealed.contains(&k.0.shuffle_id) {
                                        prop_assert!(w.spilled.contains(&(k.clone(), *b)), "batch {b} missed by a last segment");
                                    }
                                }
                            }
                            let local = w.stored.entry(k.clone()).or_default();
                            match delete {
                                Delete::Scanned => local.retain(|b| !scanned.contains(b)),
                                Delete::Partition => local.clear(),
                            }
                            core.end_spill(&k);
                        }
                    }
                    Ev::Seal(s) => {
                        // A shuffle seals once its maps committed; later pushes never count.
                        w.sealed.insert(s);
                    }
                }
                // The invariant: every batch that may count is local or in a recorded segment,
                // unless its shuffle sealed (a sealed shuffle's data went whole into segments).
                for (k, b) in &w.needed {
                    let local = w.stored.get(k).is_some_and(|s| s.contains(b));
                    let in_segment = w.spilled.contains(&(k.clone(), *b));
                    prop_assert!(
                        local || in_segment || w.sealed.contains(&k.0.shuffle_id),
                        "acknowledged batch {b} of {k:?} was deleted unspilled"
                    );
                }
            }
        }
    }

    #[test]
    fn a_drain_waits_for_pushes_in_flight_then_completes() {
        let mut c = WorkerCore::new(LIMITS);
        let k = key(0, 0);
        c.admit_push(&k, 10, 0).unwrap();
        assert_eq!(c.desired(WorkerState::Decommissioning, 10), vec![Step::StartDrain]);
        assert_eq!(c.admit_push(&k, 10, 10).unwrap_err().0, ErrorCode::Decommissioning);
        assert_eq!(c.begin_spill(&k, SpillKind::Drain, true), SpillStart::Wait, "a push is still being stored");
        c.push_done(&k);
        assert_eq!(c.begin_spill(&k, SpillKind::Drain, true), SpillStart::Go { delete: Delete::Scanned, last: true });
        assert_eq!(c.begin_spill(&k, SpillKind::Drain, true), SpillStart::Busy);
        assert!(!c.drained(0), "a spill is running");
        c.end_spill(&k);
        assert!(c.drained(0));
        assert!(!c.drained(1));
        assert_eq!(c.desired(WorkerState::Decommissioning, 0), vec![Step::ReportDrained]);
        assert_eq!(c.desired(WorkerState::Decommissioned, 0), vec![Step::Stop]);
        assert_eq!(c.desired(WorkerState::Decommissioned, 0), vec![]);
    }

    #[test]
    fn recommission_returns_the_worker_to_pushes() {
        let mut c = WorkerCore::new(LIMITS);
        let k = key(0, 0);
        c.desired(WorkerState::Decommissioning, 0);
        assert!(!c.ready());
        assert_eq!(c.desired(WorkerState::Active, 0), vec![Step::Resume]);
        assert!(c.ready());
        assert!(c.admit_push(&k, 1, 0).is_ok());
        assert_eq!(c.begin_spill(&k, SpillKind::Drain, true), SpillStart::Skip, "the drain was called off");
        // Lost: register again, refuse pushes meanwhile; the master's Active resumes them.
        assert_eq!(c.desired(WorkerState::Lost, 0), vec![Step::Register]);
        assert_eq!(c.admit_push(&k, 1, 0).unwrap_err().0, ErrorCode::PartitionNotOwned);
        assert_eq!(c.desired(WorkerState::Active, 0), vec![Step::Resume]);
        assert_eq!(c.admit_push(&k, LIMITS.max_buffered_bytes, 1).unwrap_err().0, ErrorCode::Busy);
    }

    proptest! {
        /// A piece takes pushes until it took the split size, then refuses every later one
        /// (retryable, relocating); it ends at most one batch past the size; pieces and
        /// shuffles are independent, a forgotten shuffle starts over, and the accounting
        /// keeps one entry per partition.
        #[test]
        fn pieces_split_at_the_size(pushes in proptest::collection::vec((0u32..2, 0u32..2, 1u64..3, 1u64..400), 1..200)) {
            let split = 1000u64;
            let mut c = WorkerCore::new(CoreLimits { split_bytes: split, ..LIMITS });
            let mut took: BTreeMap<(u32, u32, u64), u64> = BTreeMap::new();
            // A worker admits with the epoch of its assignment, which only grows.
            let mut newest: BTreeMap<(u32, u32), u64> = BTreeMap::new();
            for (s, p, e, len) in pushes {
                let n = newest.entry((s, p)).or_default();
                *n = (*n).max(e);
                let e = *n;
                let t = took.entry((s, p, e)).or_default();
                match c.admit_to_piece(&key(s, p), Epoch(e), len) {
                    Ok(()) => {
                        prop_assert!(*t < split, "a full piece took more");
                        *t += len;
                        prop_assert!(*t < split + 400);
                    }
                    Err((code, _)) => {
                        prop_assert_eq!(code, ErrorCode::PartitionSplit);
                        prop_assert!(code.remedy() == shuffle_proto::Remedy::Relocate);
                        prop_assert!(*t >= split, "refused below the size");
                    }
                }
            }
            // A seal spill of a partition ends its pieces' accounting.
            let before = c.pieces();
            if matches!(c.begin_spill(&key(1, 1), SpillKind::Seal, false), SpillStart::Go { .. }) {
                prop_assert!(c.piece_bytes.keys().all(|(k, _)| *k != key(1, 1)));
                prop_assert!(c.pieces() <= before);
            }
            c.forget_shuffle(&key(0, 0).0);
            prop_assert!(c.admit_to_piece(&key(0, 0), Epoch(1), 1).is_ok());
            // One piece per partition is tracked: the newest one pushed to.
            prop_assert!(c.pieces() <= 2 * 2);
            c.retain_writing(|s| *s == key(1, 0).0);
            prop_assert!(c.piece_bytes.keys().all(|((s, _), _)| *s == key(1, 0).0));
        }
    }

    #[test]
    fn split_size_zero_never_splits() {
        let mut c = WorkerCore::new(LIMITS);
        for _ in 0..100 {
            assert!(c.admit_to_piece(&key(0, 0), Epoch(1), u64::MAX / 4).is_ok());
        }
    }

    #[test]
    fn a_nearly_full_disk_refuses_pushes_until_space_returns() {
        let mut c = WorkerCore::new(LIMITS);
        let k = key(0, 0);
        let reserve = LIMITS.disk_reserve_bytes;
        // No reading yet: nothing to judge by.
        assert!(c.admit_push(&k, 100, 0).is_ok());
        c.disk_free(reserve + 250);
        assert!(c.admit_push(&k, 100, 0).is_ok());
        assert!(c.admit_push(&k, 100, 0).is_ok());
        // Admitted pushes count against the reading: the third would cross the reserve.
        let refused = c.admit_push(&k, 100, 0).unwrap_err().0;
        assert_eq!(refused, ErrorCode::DiskFull);
        assert!(refused.retryable());
        assert_eq!(c.in_flight(&k), 3, "a refused push is not in flight");
        assert!(!c.disk_low(), "judged at the next reading");
        // The next reading is above the reserve, but a push was refused since the last one:
        // the disk counts as low (the worker spills everything it holds).
        c.disk_free(reserve + 250);
        assert!(c.disk_low());
        // A reading with nothing refused since, above the reserve: not low.
        c.disk_free(reserve + 10_000);
        assert!(!c.disk_low());
        assert!(c.admit_push(&k, 100, 0).is_ok());
        // Under the reserve by the reading alone: low.
        c.disk_free(reserve - 1);
        assert!(c.disk_low());
    }
}
