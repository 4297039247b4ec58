//! PartitionStream: one partition's committed records, from the spilled segments and the live
//! workers, deduplicated by (map, attempt, seq) and verified against the commits.
//!
//! Invariants:
//! - Only the committed attempt of each map is returned; each batch once, even when a segment
//!   and a live copy overlap during a spill.
//! - Every batch's CRC is checked after decompression; at the end, each map's batch count,
//!   byte count and CRC sum must equal what its commit recorded. Anything else ends the
//!   stream with `DataLost` or `Corrupt`, never with wrong rows.
//! - A live source that fails mid-stream is not fatal: its replica (replication 2) is read
//!   next, else the plan is fetched again (its data may be spilled by now) and reading resumes,
//!   skipping batches already returned.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use shuffle_proto::batch::{BatchView, StreamRecords, DEFAULT_MAX_BATCH_RAW};
use shuffle_proto::frame::read_frame;
use shuffle_proto::messages::*;
use shuffle_proto::objstore::SegmentChunks;
use shuffle_proto::retry::Backoff;
use shuffle_proto::seal::BatchPlace;
use shuffle_proto::{FrameLimits, MapId, PartitionId, ShuffleKey};
use tokio::sync::mpsc;

use crate::client::ShuffleClient;
use crate::error::ClientError;

/// Planning again after every source of a partition failed: a relocation or a spill may
/// have moved it meanwhile.
const PLAN_AGAIN: Backoff = Backoff {
    base: Duration::from_millis(200),
    max: Duration::from_secs(2),
    max_tries: 3,
    deadline: Duration::from_secs(30),
};

/// Totals of a finished read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    pub batches: u64,
    pub bytes: u64,
    pub from_segments: u64,
    pub from_workers: u64,
}

/// A pull-based stream of decompressed batches; backpressure through a small channel.
pub struct PartitionStream {
    rx: mpsc::Receiver<Result<Vec<u8>, ClientError>>,
    task: tokio::task::JoinHandle<ReadStats>,
    done: Option<ReadStats>,
}

impl PartitionStream {
    pub(crate) fn open(
        client: ShuffleClient,
        shuffle: ShuffleKey,
        partition: u32,
        start_map: u32,
        end_map: u32,
        only: Option<HashSet<u32>>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(8);
        let task = tokio::spawn(async move {
            let mut r = Reader {
                client,
                shuffle,
                partition,
                start_map,
                end_map,
                only,
                tx,
                seen: HashSet::new(),
                got: HashMap::new(),
                stats: ReadStats::default(),
            };
            match r.run().await {
                Ok(()) => r.stats,
                Err(e) => {
                    let _ = r.tx.send(Err(e)).await;
                    r.stats
                }
            }
        });
        Self { rx, task, done: None }
    }

    /// The next batch of serialized records, `None` at the verified end.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        match self.rx.recv().await {
            Some(r) => r.map(Some),
            None => {
                if self.done.is_none() {
                    let stats = (&mut self.task).await.map_err(|e| ClientError::AttemptFailed(e.to_string()))?;
                    self.done = Some(stats);
                }
                Ok(None)
            }
        }
    }

    /// Totals, once the stream ended.
    pub fn stats(&self) -> Option<ReadStats> {
        self.done
    }
}

impl Drop for PartitionStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bytes of a spilled segment read at a time.
const SEGMENT_READ_CHUNK: usize = 8 << 20;

struct Reader {
    client: ShuffleClient,
    shuffle: ShuffleKey,
    partition: u32,
    start_map: u32,
    end_map: u32,
    /// Exactly these maps, each of which must have committed data to the partition.
    only: Option<HashSet<u32>>,
    tx: mpsc::Sender<Result<Vec<u8>, ClientError>>,
    seen: HashSet<(u32, u64, u32)>,
    got: HashMap<u32, (u64, u32, u32)>,
    stats: ReadStats,
}

enum Source {
    Segment,
    Worker,
}

impl Reader {
    fn lost(&self, reason: String) -> ClientError {
        ClientError::DataLost { shuffle: self.shuffle.clone(), partition: self.partition, reason }
    }

    /// The partition's plan, and the capability to read it from its workers.
    async fn plan(&self) -> Result<(PartitionReadPlan, Vec<u8>, String), ClientError> {
        let plan: ReadPlan = self
            .client
            .master(GetReadPlan {
                shuffle: self.shuffle.clone(),
                start_partition: PartitionId(self.partition),
                end_partition: PartitionId(self.partition + 1),
                start_map: MapId(self.start_map),
                end_map: MapId(self.end_map),
            })
            .await
            .map_err(|e| match &e {
                // Removed (its application's lease ran out, or it was unregistered): the data
                // is gone, which the caller handles as lost data, by recomputing it.
                ClientError::Transport(t) if t.code() == shuffle_proto::ErrorCode::UnknownShuffle => {
                    self.lost(format!("the shuffle is no longer registered: {e}"))
                }
                _ => e,
            })?;
        let pp = plan
            .partitions
            .into_iter()
            .next()
            .ok_or_else(|| self.lost("partition missing from the read plan".into()))?;
        Ok((pp, plan.capability, plan.store_url))
    }

    async fn run(&mut self) -> Result<(), ClientError> {
        let started = tokio::time::Instant::now();
        let mut tries = 0;
        loop {
            let (pp, capability, store_url) = self.plan().await?;
            if pp.lost {
                return Err(self.lost("its worker was lost before the data was spilled".into()));
            }
            let mut expected: Vec<MapOutput> = pp.expected.clone();
            if let Some(only) = &self.only {
                expected.retain(|m| only.contains(&m.map.0));
                if expected.len() != only.len() {
                    let mut missing: Vec<u32> =
                        only.iter().copied().filter(|m| !expected.iter().any(|e| e.map.0 == *m)).collect();
                    missing.sort_unstable();
                    missing.truncate(8);
                    return Err(self.lost(format!("maps {missing:?} have no committed data for it")));
                }
            }
            if expected.is_empty() {
                return Ok(());
            }
            let want: HashMap<u32, u64> = expected.iter().map(|m| (m.map.0, m.attempt.0)).collect();
            for seg in &pp.segments {
                let store = self.client.inner.segment_store(&store_url)?;
                // Streamed in bounded chunks: a reader's memory does not grow with the partition.
                let keep = |m, a| want.get(&m) == Some(&a);
                let mut chunks =
                    SegmentChunks::open(store, seg, self.start_map, self.end_map, keep, SEGMENT_READ_CHUNK).await?;
                while let Some(c) = chunks.next().await? {
                    if !self.records(&c, &want, Source::Segment).await? {
                        return Ok(());
                    }
                }
            }
            let mut failed = None;
            // A plan names a worker once per (primary, replica) pair: each primary is read
            // once (it serves every piece it holds); the replicas of its pairs are its
            // fallbacks.
            let mut primaries: Vec<&shuffle_proto::messages::WorkerEndpoint> = Vec::new();
            for src in &pp.sources {
                if !primaries.iter().any(|p| p.id == src.primary.id) {
                    primaries.push(&src.primary);
                }
            }
            for primary in primaries {
                let read = self.read_worker(&primary.addr, &capability, &expected, &want).await;
                let e = match read {
                    Ok(()) => continue,
                    Err(e) if !e.retryable() => return Err(e),
                    Err(e) => e,
                };
                // With replication 2 the replicas hold every acknowledged batch: read them at
                // once rather than wait for the masters to notice the primary is gone (what
                // was already read is skipped). Each pair's replica holds its own pieces.
                let mut replicas: Vec<&shuffle_proto::messages::WorkerEndpoint> = Vec::new();
                for r in pp.sources.iter().filter(|s| s.primary.id == primary.id).filter_map(|s| s.replica.as_ref()) {
                    if !replicas.iter().any(|x| x.id == r.id) {
                        replicas.push(r);
                    }
                }
                if replicas.is_empty() {
                    failed = Some(e);
                    continue;
                }
                tracing::debug!(partition = self.partition, "reading the replicas: {e}");
                for replica in replicas {
                    match self.read_worker(&replica.addr, &capability, &expected, &want).await {
                        Ok(()) => {}
                        Err(e) if e.retryable() => failed = Some(e),
                        Err(e) => return Err(e),
                    }
                }
            }
            // A short read is planned again too: a seal spill may have recorded the partition
            // and dropped the worker's copy between this plan and the worker's scan; the next
            // plan names the segment (batches already read are skipped).
            let why = match failed {
                Some(e) => format!("no source could serve it: {e}"),
                None => match self.incomplete(&expected) {
                    None => return Ok(()),
                    Some(short) => short,
                },
            };
            tries += 1;
            let Some(pause) = PLAN_AGAIN.next_delay(tries, started.elapsed()) else {
                return Err(self.lost(why));
            };
            tracing::debug!(partition = self.partition, "planning the read again: {why}");
            tokio::time::sleep(pause).await;
        }
    }

    /// What is missing of the committed output, if anything.
    fn incomplete(&self, expected: &[MapOutput]) -> Option<String> {
        expected.iter().find_map(|m| {
            let got = self.got.get(&m.map.0).copied().unwrap_or_default();
            (got != (m.bytes, m.crc_sum, m.batches)).then(|| {
                format!(
                    "map {} attempt {}: committed {} batches / {} bytes, read {} / {}",
                    m.map, m.attempt, m.batches, m.bytes, got.2, got.0
                )
            })
        })
    }

    /// Handles encoded stream records; returns false once the consumer went away.
    async fn records(&mut self, chunk: &[u8], want: &HashMap<u32, u64>, src: Source) -> Result<bool, ClientError> {
        for rec in StreamRecords::new(chunk, DEFAULT_MAX_BATCH_RAW + 64) {
            let rec = rec.map_err(|e| self.corrupt(e.to_string()))?;
            if want.get(&rec.map) != Some(&rec.attempt) || !self.seen.insert((rec.map, rec.attempt, rec.seq)) {
                continue;
            }
            let view =
                BatchView::parse_exact(rec.batch, DEFAULT_MAX_BATCH_RAW).map_err(|e| self.corrupt(e.to_string()))?;
            let mut raw = Vec::with_capacity(view.raw_len as usize);
            let decoded = match (&self.client.inner.cfg.cipher, view.sealed) {
                (Some(cipher), true) => {
                    let place = BatchPlace {
                        shuffle: &self.shuffle,
                        partition: self.partition,
                        map: rec.map,
                        attempt: rec.attempt,
                        seq: rec.seq,
                    };
                    cipher.open_into(&view, &place, &mut raw)
                }
                _ => view.decode_into(&mut raw),
            };
            match decoded {
                Ok(()) => {}
                Err(shuffle_proto::ProtoError::Sealed) => {
                    return Err(ClientError::Config(
                        "this shuffle's batches are encrypted by its application: read it with the \
                         application's IO encryption key (spark.io.encryption.enabled)"
                            .into(),
                    ))
                }
                Err(e) => return Err(self.corrupt(format!("map {} seq {}: {e}", rec.map, rec.seq))),
            }
            let g = self.got.entry(rec.map).or_default();
            g.0 += raw.len() as u64;
            g.1 = g.1.wrapping_add(view.crc);
            g.2 += 1;
            self.stats.batches += 1;
            self.stats.bytes += raw.len() as u64;
            match src {
                Source::Segment => self.stats.from_segments += 1,
                Source::Worker => self.stats.from_workers += 1,
            }
            if self.tx.send(Ok(raw)).await.is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn corrupt(&self, reason: String) -> ClientError {
        ClientError::Corrupt { shuffle: self.shuffle.clone(), partition: self.partition, reason }
    }

    async fn read_worker(
        &mut self,
        addr: &str,
        capability: &[u8],
        expected: &[MapOutput],
        want: &HashMap<u32, u64>,
    ) -> Result<(), ClientError> {
        let msg = Message::OpenPartition(OpenPartition {
            shuffle: self.shuffle.clone(),
            partition: PartitionId(self.partition),
            start_map: MapId(self.start_map),
            end_map: MapId(self.end_map),
            attempts: expected.iter().map(|m| MapAttemptRef { map: m.map, attempt: m.attempt }).collect(),
        });
        let inner = self.client.inner.clone();
        let timeout = inner.cfg.call_timeout;
        let (_send, mut recv) = inner.client.open_as(addr, &msg, capability, &[]).await?;
        let limits = FrameLimits::default();
        let mut body = Vec::new();
        loop {
            let frame = tokio::time::timeout(timeout, read_frame(&mut recv, &limits, &mut body)).await;
            let msg = match frame {
                Err(_) => {
                    inner.client.forget(addr).await;
                    return Err(shuffle_proto::transport::TransportError::Timeout {
                        addr: addr.into(),
                        after: timeout,
                    }
                    .into());
                }
                Ok(Err(shuffle_proto::ProtoError::Io(reason))) => {
                    inner.client.forget(addr).await;
                    return Err(
                        shuffle_proto::transport::TransportError::Connection { addr: addr.into(), reason }.into()
                    );
                }
                Ok(Err(e)) => return Err(self.corrupt(e.to_string())),
                Ok(Ok(None)) => {
                    return Err(shuffle_proto::transport::TransportError::NoReply { addr: addr.into() }.into())
                }
                Ok(Ok(Some(m))) => m,
            };
            match msg {
                Message::Chunk(_) => {
                    let chunk = std::mem::take(&mut body);
                    if !self.records(&chunk, want, Source::Worker).await? {
                        return Ok(());
                    }
                }
                Message::EndOfStream(_) => return Ok(()),
                Message::WireError(e) => return Err(ClientError::remote(e)),
                other => {
                    return Err(self.corrupt(format!("unexpected {} in a partition stream", other.name())));
                }
            }
        }
    }
}
