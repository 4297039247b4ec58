//! The object-store sweep: deletes objects of removed shuffles, and unrecorded objects of
//! workers that are gone. Which object is garbage is decided by [`crate::spill::is_garbage`];
//! every worker may sweep, and deletes are idempotent.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use shuffle_proto::messages::*;
use shuffle_proto::objstore::StoreError;
use shuffle_proto::segment::parse_segment_key;
use shuffle_proto::{ShuffleKey, WorkerId};
use tracing::{info, warn};

use super::spilling::SpillError;
use super::Inner;
use crate::spill::{is_garbage, SweepFacts};

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

    /// Sweeps once; returns how many objects were deleted.
    pub(super) async fn sweep(&self) -> Result<usize, SpillError> {
        use futures::TryStreamExt;
        let shuffles = self.master.call_typed::<ShuffleList>(ListShuffles {}).await?.shuffles;
        // Per-shuffle state of shuffles that no longer take pushes goes too: nothing else
        // clears it for a shuffle this worker held no data of when it was sealed or removed.
        let writing: HashSet<&ShuffleKey> =
            shuffles.iter().filter(|s| s.state == ShuffleState::Writing).map(|s| &s.shuffle).collect();
        self.core().retain_writing(|s| writing.contains(s));
        self.assignments.lock().unwrap_or_else(|p| p.into_inner()).retain(|s, _| writing.contains(s));
        let known: HashSet<ShuffleKey> = shuffles.into_iter().map(|s| s.shuffle).collect();
        let objects: Vec<object_store::ObjectMeta> =
            self.store.list(None).try_collect().await.map_err(StoreError::from)?;
        if objects.is_empty() {
            return Ok(0);
        }
        let status: ClusterStatus = self.master.call_typed(GetStatus {}).await?;
        let alive: HashSet<WorkerId> = status
            .workers
            .into_iter()
            .filter(|w| matches!(w.state, WorkerState::Active | WorkerState::Decommissioning))
            .map(|w| w.id)
            .collect();
        let now_ms = shuffle_proto::auth::now_unix_ms() as i64;
        let mut recorded: HashMap<ShuffleKey, HashSet<String>> = HashMap::new();
        let mut deleted = 0;
        for o in objects {
            let key = o.location.to_string();
            let Some((shuffle, _, writer)) = parse_segment_key(&key) else { continue };
            let shuffle_known = known.contains(&shuffle);
            if shuffle_known && !recorded.contains_key(&shuffle) {
                let plan = self.read_plan(&shuffle, 0..u32::MAX).await?;
                let keys = plan.partitions.into_iter().flat_map(|p| p.segments).map(|s| s.object_key).collect();
                recorded.insert(shuffle.clone(), keys);
            }
            let facts = SweepFacts {
                shuffle_known,
                recorded: recorded.get(&shuffle).is_some_and(|k| k.contains(&key)),
                writer_alive: alive.contains(&writer),
                old_enough: now_ms - o.last_modified.timestamp_millis() >= self.cfg.sweep_grace.as_millis() as i64,
            };
            if is_garbage(facts) {
                match self.store.delete(&o.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                    Err(e) => warn!(%key, "could not delete garbage: {e}"),
                }
            }
        }
        Ok(deleted)
    }
}
