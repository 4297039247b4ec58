//! Spills to the object store: at seal (committed attempts, then the partition is dropped), in
//! a drain (everything, once no push to the partition is in flight) and under pressure (the
//! largest partitions, exactly the keys scanned). [`WorkerCore::begin_spill`] decides whether
//! and how a spill runs; this file only carries it out.
//!
//! A spill never deletes an object: an upload that fails is aborted, and an object left
//! unrecorded (a crash or a lost answer between upload and report, a shuffle removed
//! meanwhile) is the sweep's to collect ([`super::sweep`]), once it is old enough that no
//! report of it can still be on its way. Segment names carry a random nonce, so they never
//! repeat, whatever the clock does.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use shuffle_proto::messages::*;
use shuffle_proto::objstore::{SegmentUpload, StoreError};
use shuffle_proto::retry::{retry, Backoff};
use shuffle_proto::segment::segment_key;
use shuffle_proto::transport::TransportError;
use shuffle_proto::{Epoch, ErrorCode, MapId, PartitionId, ShuffleKey};
use tracing::{debug, warn};

use super::{CoreHold, Inner};
use crate::buffer::{AttemptFilter, BufferError, ScanRange};
use crate::core::{Delete, PartKey, SpillKind, SpillStart, WorkerCore};
use crate::spill::plan_pressure_spill;

/// Partitions of one shuffle spilled at once: one partition's scan and upload leave the disk
/// and the store idle in turns, and each spill holds its upload's parts in memory (about
/// 5 × `upload_part_size`).
const SPILL_PARTITIONS_AT_ONCE: usize = 2;

/// How long a drain spill waits for pushes in flight to its partition before trying later.
const SPILL_FENCE_WAIT: Duration = Duration::from_secs(30);

/// Bytes an unprivileged process may still write on the file system holding `dir`.
fn data_disk_free(dir: &std::path::Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    #[error("another spill of the partition is running")]
    InProgress,
    #[error("the scan task stopped")]
    ScanStopped,
    #[error("no system randomness for a segment name")]
    NoRandomness,
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Buffer(#[from] BufferError),
}

impl SpillError {
    fn retryable(&self) -> bool {
        match self {
            SpillError::InProgress => true,
            SpillError::Transport(e) => e.retryable(),
            SpillError::Store(e) => e.retryable(),
            SpillError::Buffer(BufferError::Injected(_)) => true,
            _ => false,
        }
    }
}

impl Inner {
    /// The master's read plan of `partitions` (every map).
    pub(super) async fn read_plan(
        &self,
        shuffle: &ShuffleKey,
        partitions: std::ops::Range<u32>,
    ) -> Result<ReadPlan, TransportError> {
        self.master
            .call_typed(GetReadPlan {
                shuffle: shuffle.clone(),
                start_partition: PartitionId(partitions.start),
                end_partition: PartitionId(partitions.end),
                start_map: MapId(0),
                end_map: MapId(u32::MAX),
            })
            .await
    }

    /// Spills the largest partitions early while the buffer is over its high watermark.
    pub(super) async fn pressure_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match data_disk_free(&self.cfg.data_dir) {
                Ok(free) => {
                    self.metrics.disk_free.set(free as i64);
                    self.core().disk_free(free);
                }
                Err(e) => debug!("reading the data disk's free space failed: {e}"),
            }
            let parts = self.buffer.partitions();
            let sizes: Vec<u64> = parts.iter().map(|(_, _, b)| *b).collect();
            let held = self.buffer.bytes_held();
            let disk_low = self.core().disk_low();
            let plan = plan_pressure_spill(&sizes, held, self.cfg.spill_high_bytes, self.cfg.spill_low_bytes, disk_low);
            for i in plan {
                let (shuffle, p, bytes) = parts[i].clone();
                debug!(%shuffle, partition = p, bytes, "buffer over its watermark: spilling early");
                match self.spill_partition(&shuffle, p, SpillKind::Pressure).await {
                    Ok(()) | Err(SpillError::InProgress) => {}
                    Err(e) => warn!(%shuffle, partition = p, "early spill failed: {e}"),
                }
            }
        }
    }

    /// Spills every local partition of a shuffle (once at a time per shuffle). A partition
    /// whose spill gives up stays local and readable; a drain tries it again next heartbeat.
    pub(super) async fn spill_shuffle(self: Arc<Self>, shuffle: ShuffleKey, kind: SpillKind) {
        if !self.spilling.lock().unwrap_or_else(|p| p.into_inner()).insert(shuffle.clone()) {
            return;
        }
        let parts: Vec<u32> =
            self.buffer.partitions().into_iter().filter(|(s, _, _)| *s == shuffle).map(|(_, p, _)| p).collect();
        let (me, shuffle_ref): (&Inner, &ShuffleKey) = (&self, &shuffle);
        futures::stream::iter(parts)
            .for_each_concurrent(SPILL_PARTITIONS_AT_ONCE, |p| async move {
                let spilled = retry(
                    &Backoff::SPILL,
                    || me.spill_partition(shuffle_ref, p, kind),
                    SpillError::retryable,
                    |e, d| warn!(shuffle = %shuffle_ref, partition = p, "spill failed, retrying in {d:?}: {e}"),
                )
                .await;
                if let Err(e) = spilled {
                    warn!(shuffle = %shuffle_ref, partition = p, "spill failed: {e}");
                }
            })
            .await;
        self.spilling.lock().unwrap_or_else(|p| p.into_inner()).remove(&shuffle);
    }

    /// Spills a replication-2 partition whose other copy was lost, so the object store holds
    /// it twice over; exactly what is scanned goes, and pushes may still follow.
    pub(super) async fn spill_single_copy(self: Arc<Self>, shuffle: ShuffleKey, partition: u32) {
        match self.spill_partition(&shuffle, partition, SpillKind::SingleCopy).await {
            Ok(()) | Err(SpillError::InProgress) => {}
            Err(e) => warn!(%shuffle, partition, "spilling a single copy failed (asked again next heartbeat): {e}"),
        }
    }

    /// Spills one partition, as the core allows: under pressure everything scanned goes
    /// (every attempt), exactly those keys are deleted, and the worker stays a read source for
    /// what arrives next; at seal only committed attempts go and the partition is dropped; in
    /// a drain the spill waits until no push to the partition is in flight.
    async fn spill_partition(&self, shuffle: &ShuffleKey, partition: u32, kind: SpillKind) -> Result<(), SpillError> {
        let plan = match self.read_plan(shuffle, partition..partition + 1).await {
            Ok(p) => p,
            Err(TransportError::Remote(w)) if w.code() == ErrorCode::UnknownShuffle => {
                self.core().forget_shuffle(shuffle);
                self.buffer.delete_shuffle(shuffle)?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let part: PartKey = (shuffle.clone(), partition);
        let writing = plan.state == ShuffleState::Writing;
        // A single-copy spill releases the epochs below the current one: from here on this
        // worker refuses pushes to them (its assignment is refreshed first), and the fence
        // below waits out those already admitted, so its scan sees every batch they hold.
        let current = match kind {
            SpillKind::SingleCopy => self.current_epoch(shuffle, partition).await?,
            _ => None,
        };
        let deadline = tokio::time::Instant::now() + SPILL_FENCE_WAIT;
        let (delete, last) = loop {
            let start = self.core().begin_spill(&part, kind, writing);
            match start {
                SpillStart::Go { delete, last } => break (delete, last),
                SpillStart::Busy => return Err(SpillError::InProgress),
                SpillStart::Skip => return Ok(()),
                SpillStart::Wait if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                SpillStart::Wait => return Err(SpillError::InProgress),
            }
        };
        let _run = CoreHold { inner: self, part, end: WorkerCore::end_spill };
        // The plan read before this spill could start may predate another spill of the
        // partition that ended meanwhile: read it again, so the sources and epochs below are
        // current.
        let plan = self.read_plan(shuffle, partition..partition + 1).await?;
        // The plan is of the app's current registration: local data of an earlier one is
        // deleted first, and none is deleted under this spill while it runs.
        let _registration = match super::server::capability_incarnation(&plan.capability) {
            Some(i) => Some(self.enter_incarnation(&shuffle.app, i).await.map_err(TransportError::Remote)?),
            None => None,
        };
        let Some(pp) = plan.partitions.first() else { return Ok(()) };
        let mine = |s: &&PartitionLocation| {
            s.primary.id == self.cfg.id || s.replica.as_ref().is_some_and(|r| r.id == self.cfg.id)
        };
        // What the scan below covers: the master releases these epochs only, not one placed
        // here again meanwhile.
        let Some(upto) = pp.sources.iter().filter(mine).map(|s| s.epoch).max() else {
            // The master no longer reads this copy (already spilled, or written off).
            debug!(%shuffle, partition, "local copy is not a read source: dropping it");
            self.buffer.delete_partition(shuffle, partition)?;
            return Ok(());
        };
        let primary = pp.sources.iter().any(|s| s.primary.id == self.cfg.id);
        if !crate::core::uploads(kind, primary) {
            // A replica's copy: the primary's segment covers it; dropped once no longer read.
            debug!(%shuffle, partition, "replica copy: left to the primary's spill");
            return Ok(());
        }
        let (last, upto) = if kind == SpillKind::SingleCopy {
            // Only epochs that take no more pushes are released.
            match crate::core::single_copy_release(upto, current) {
                Some(e) => (last, e),
                None => (false, upto),
            }
        } else {
            (last, upto)
        };
        // A sealed shuffle keeps only committed attempts; a writing one (drain) keeps all,
        // since its maps may still commit.
        let filter = if kind == SpillKind::Pressure || writing {
            AttemptFilter::All
        } else {
            AttemptFilter::Only(pp.expected.iter().map(|m| (m.map.0, m.attempt.0)).collect())
        };
        let key = segment_key(shuffle, partition, &self.cfg.id, segment_nonce()?);
        let mut upload = SegmentUpload::new(self.store.clone(), key.clone(), self.cfg.upload_part_bytes);
        let range = ScanRange { shuffle: shuffle.clone(), partition, start_map: 0, end_map: u32::MAX, filter };
        let (mut rx, keys) = self.scan(range, true);
        let written = async {
            while let Some(item) = rx.recv().await {
                let (chunk, _) = item?;
                upload.write_owned(chunk.into()).await?;
            }
            keys.await.map_err(|_| SpillError::ScanStopped)
        }
        .await;
        let scanned = match written {
            Ok(s) => s,
            Err(e) => {
                // A multipart upload left open is billed and invisible: abort it now.
                upload.abort().await;
                return Err(e);
            }
        };
        let segment = upload.finish().await?;
        fail::fail_point!("worker-after-upload", |a| super::fault(
            a,
            Err(BufferError::Injected("worker-after-upload").into())
        ));
        let spilled = segment.index_offset;
        let report = ReportSegment {
            worker: self.cfg.id.clone(),
            shuffle: shuffle.clone(),
            partition: PartitionId(partition),
            segment,
            last,
            upto,
        };
        match self.master.call_typed::<Ack>(report).await {
            Ok(_) => {}
            Err(TransportError::Remote(w)) if w.code() == ErrorCode::UnknownShuffle => {
                // Removed meanwhile: the object is garbage, left to the sweep.
                debug!(%shuffle, partition, %key, "shuffle removed during its spill");
            }
            Err(e) => return Err(e.into()),
        }
        fail::fail_point!("worker-after-report", |a| super::fault(
            a,
            Err(BufferError::Injected("worker-after-report").into())
        ));
        match delete {
            Delete::Scanned => self.buffer.delete_keys(shuffle, partition, &scanned)?,
            Delete::Partition => self.buffer.delete_partition(shuffle, partition)?,
        }
        self.metrics.bytes_spilled.inc_by(spilled);
        self.metrics.segments.inc();
        debug!(%shuffle, partition, bytes = spilled, %key, "partition spilled");
        Ok(())
    }

    /// The partition's epoch for new writes, fresh from the masters (`None` once sealed). The
    /// assignment pushes are checked against is replaced by it, so pushes to older epochs are
    /// refused as stale from now on.
    async fn current_epoch(&self, shuffle: &ShuffleKey, partition: u32) -> Result<Option<Epoch>, SpillError> {
        let a = self.refresh_assignment(shuffle).await?;
        Ok((a.state == ShuffleState::Writing).then(|| a.locations.get(partition as usize).map(|l| l.epoch)).flatten())
    }
}

/// A segment name's nonce: random, so names never repeat (a restart, a clock stepped back) and
/// a new segment never lands on a recorded one.
fn segment_nonce() -> Result<u64, SpillError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    ring::rand::SystemRandom::new().fill(&mut b).map_err(|_| SpillError::NoRandomness)?;
    Ok(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    #[test]
    fn segment_nonces_do_not_repeat() {
        let n: std::collections::HashSet<u64> = (0..10_000).map(|_| super::segment_nonce().unwrap()).collect();
        assert_eq!(n.len(), 10_000);
    }
}
