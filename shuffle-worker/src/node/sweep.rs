//! The object-store sweep: the one place objects are deleted. It deletes objects of removed
//! shuffles, and unrecorded objects written by this worker or by workers that are gone (an
//! upload whose report never landed: a crash, a lost answer, a shuffle removed meanwhile).
//! Which object is garbage is decided by [`crate::spill::is_garbage`].
//!
//! Invariants:
//! - Every deletion passes the minimum age (`sweep_grace`) measured up to when the master was
//!   asked, and the fence against late reports (see [`crate::spill`]).
//! - One sweep at a time per worker; other workers may sweep too (deletes are idempotent, and
//!   each object is judged on its own).
//! - Bounded memory: the listing is streamed page by page, never collected; the master is
//!   asked about recorded segments one page of [`PLAN_PAGE`] partitions at a time (no map
//!   outputs), and only for objects that could be garbage once their record is known.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use shuffle_proto::messages::*;
use shuffle_proto::objstore::StoreError;
use shuffle_proto::segment::parse_segment_key;
use shuffle_proto::transport::TransportError;
use shuffle_proto::{ErrorCode, MapId, PartitionId, ShuffleKey, WorkerId};
use tracing::{debug, info, warn};

use super::spilling::SpillError;
use super::Inner;
use crate::spill::{is_garbage, needs_record, SweepFacts, Writer};

/// Partitions per question to the master about recorded segments.
const PLAN_PAGE: u32 = 256;

/// The recorded segments of one page of a shuffle's partitions, as the master answered.
struct RecordedPage {
    shuffle: ShuffleKey,
    first: u32,
    /// `None`: the master no longer knows the shuffle.
    keys: Option<HashSet<String>>,
    asked_ms: i64,
}

impl RecordedPage {
    fn covers(&self, shuffle: &ShuffleKey, partition: u32) -> bool {
        &self.shuffle == shuffle && partition >= self.first && partition - self.first < PLAN_PAGE
    }
}

fn now_ms() -> i64 {
    i64::try_from(shuffle_proto::auth::now_unix_ms()).unwrap_or(i64::MAX)
}

impl Inner {
    pub(super) async fn sweep_loop(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match self.sweep().await {
                Ok(0) => {}
                Ok(n) => info!(objects = n, "object-store sweep deleted garbage"),
                Err(e) => warn!("object-store sweep failed: {e}"),
            }
        }
    }

    /// Sweeps once; returns how many objects were deleted (0 if a sweep is already running).
    pub(super) async fn sweep(&self) -> Result<usize, SpillError> {
        let Ok(_one) = self.sweeping.try_lock() else {
            debug!("a sweep is already running");
            return Ok(0);
        };
        let min_age_ms = i64::try_from(self.cfg.sweep_grace.as_millis()).unwrap_or(i64::MAX);
        let listed_ms = now_ms();
        let shuffles = self.master.call_typed::<ShuffleList>(ListShuffles {}).await?.shuffles;
        // Per-shuffle state of shuffles that no longer take pushes goes too: nothing else
        // clears it for a shuffle this worker held no data of when it was sealed or removed.
        let writing: HashSet<&ShuffleKey> =
            shuffles.iter().filter(|s| s.state == ShuffleState::Writing).map(|s| &s.shuffle).collect();
        self.core().retain_writing(|s| writing.contains(s));
        self.assignments.lock().unwrap_or_else(|p| p.into_inner()).retain(|s, _| writing.contains(s));
        let known: HashSet<ShuffleKey> = shuffles.into_iter().map(|s| s.shuffle).collect();
        let status: ClusterStatus = self.master.call_typed(GetStatus {}).await?;
        let alive: HashSet<WorkerId> = status
            .workers
            .into_iter()
            .filter(|w| matches!(w.state, WorkerState::Active | WorkerState::Decommissioning))
            .map(|w| w.id)
            .collect();
        let mut page: Option<RecordedPage> = None;
        let mut deleted = 0;
        let mut objects = self.store.list(None);
        while let Some(o) = objects.next().await {
            let o = o.map_err(StoreError::from)?;
            let key = o.location.to_string();
            let Some((shuffle, partition, writer)) = parse_segment_key(&key) else { continue };
            let writer = if writer == self.cfg.id {
                Writer::Me
            } else if alive.contains(&writer) {
                Writer::Alive
            } else {
                Writer::Gone
            };
            let mut facts = SweepFacts {
                shuffle_known: known.contains(&shuffle),
                recorded: false,
                writer,
                written_ms: o.last_modified.timestamp_millis(),
                asked_ms: listed_ms,
                spilling: self.core().spilling(&(shuffle.clone(), partition)),
            };
            if needs_record(facts, now_ms(), min_age_ms) {
                if !page.as_ref().is_some_and(|p| p.covers(&shuffle, partition)) {
                    page = Some(self.recorded_page(&shuffle, partition).await?);
                }
                if let Some(p) = &page {
                    facts.asked_ms = p.asked_ms;
                    match &p.keys {
                        Some(keys) => facts.recorded = keys.contains(&key),
                        None => facts.shuffle_known = false,
                    }
                }
            }
            if is_garbage(facts, min_age_ms) {
                match self.store.delete(&o.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                        debug!(%key, "deleted garbage");
                        deleted += 1;
                    }
                    Err(e) => warn!(%key, "could not delete garbage: {e}"),
                }
            }
        }
        Ok(deleted)
    }

    /// The recorded segments of the page of `shuffle`'s partitions holding `partition`.
    async fn recorded_page(&self, shuffle: &ShuffleKey, partition: u32) -> Result<RecordedPage, SpillError> {
        let first = partition - partition % PLAN_PAGE;
        let asked_ms = now_ms();
        let plan = self
            .master
            .call_typed::<ReadPlan>(GetReadPlan {
                shuffle: shuffle.clone(),
                start_partition: PartitionId(first),
                end_partition: PartitionId(first.saturating_add(PLAN_PAGE)),
                // No map outputs: only the segments are wanted.
                start_map: MapId(0),
                end_map: MapId(0),
            })
            .await;
        let keys = match plan {
            Ok(plan) => Some(plan.partitions.into_iter().flat_map(|p| p.segments).map(|s| s.object_key).collect()),
            Err(TransportError::Remote(w)) if w.code() == ErrorCode::UnknownShuffle => None,
            Err(e) => return Err(e.into()),
        };
        Ok(RecordedPage { shuffle: shuffle.clone(), first, keys, asked_ms })
    }
}
