//! MapWriter: one map attempt's output, batched per partition and pushed with a bounded
//! window of pushes in flight.
//!
//! Invariants:
//! - Each partition's batches get consecutive `seq` numbers; a retried push reuses its seq, so
//!   the worker stores it once.
//! - A batch counts towards the commit (bytes, CRC sum, count, epoch) only once a worker
//!   acknowledged it; the commit names every epoch the attempt pushed at, so the master
//!   refuses it if one of them was lost.
//! - At most `max_in_flight` pushes are outstanding, and at most one batch per partition is
//!   staged: memory is bounded by the window and the batch size.

use std::sync::Arc;

use shuffle_proto::batch::{encode_batch, max_encoded_len, Codec, DEFAULT_MAX_BATCH_RAW};
use shuffle_proto::messages::*;
use shuffle_proto::seal::{BatchCipher, BatchPlace};
use shuffle_proto::transport::TransportError;
use shuffle_proto::{AttemptId, Epoch, MapId, PartitionId, ShuffleKey};
use tokio::task::JoinSet;
use tracing::debug;

use crate::client::ShuffleClient;
use crate::error::ClientError;
use crate::policy::{PartitionBuffers, PushAction};

#[derive(Clone, Debug, Default)]
struct PartStats {
    bytes: u64,
    wire_bytes: u64,
    crc_sum: u32,
    batches: u32,
    next_seq: u32,
    epochs: Vec<Epoch>,
}

struct PushDone {
    partition: u32,
    latency: std::time::Duration,
    raw_len: u64,
    wire_len: u64,
    crc: u32,
    location: PartitionLocation,
}

/// What a commit gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitOutcome {
    /// This attempt's output is the one that counts.
    pub accepted: bool,
    pub winner: AttemptId,
    /// Uncompressed bytes per partition (all partitions, zeros included), for Spark's MapStatus.
    pub partition_bytes: Vec<u64>,
    /// Compressed bytes per partition as pushed (what Spark's own shuffle files would hold).
    pub partition_wire_bytes: Vec<u64>,
    pub sealed: bool,
    /// Microseconds from send to ack of every push (retries included).
    pub push_latencies_us: Vec<u32>,
    /// Bytes sent on the wire (compressed batches).
    pub wire_bytes: u64,
}

pub struct MapWriter {
    client: ShuffleClient,
    shuffle: ShuffleKey,
    map: MapId,
    attempt: AttemptId,
    locations: Vec<PartitionLocation>,
    bufs: PartitionBuffers,
    stats: Vec<PartStats>,
    inflight: JoinSet<Result<PushDone, ClientError>>,
    latencies: Vec<u32>,
    wire_bytes: u64,
    /// The capability pushes carry; replaced by a fresh one when a worker finds it expired.
    capability: SharedCapability,
}

/// A writer's capability, shared by its pushes so one refresh serves them all.
type SharedCapability = Arc<std::sync::Mutex<Arc<[u8]>>>;

impl MapWriter {
    pub(crate) fn new(client: ShuffleClient, a: &ShuffleAssignment, map: MapId, attempt: AttemptId) -> Self {
        let n = a.num_partitions;
        let batch = client.config().batch_bytes;
        Self {
            client,
            shuffle: a.shuffle.clone(),
            map,
            attempt,
            locations: a.locations.clone(),
            bufs: PartitionBuffers::new(n, batch),
            stats: vec![PartStats::default(); n as usize],
            inflight: JoinSet::new(),
            latencies: Vec::new(),
            wire_bytes: 0,
            capability: Arc::new(std::sync::Mutex::new(Arc::from(a.capability.as_slice()))),
        }
    }

    /// Appends serialized records to a partition.
    pub async fn write(&mut self, partition: u32, records: &[u8]) -> Result<(), ClientError> {
        if partition >= self.bufs.partitions() {
            return Err(ClientError::Config(format!(
                "partition {partition} out of range 0..{}",
                self.bufs.partitions()
            )));
        }
        if let Some(batch) = self.bufs.append(partition, records) {
            self.send(partition, &batch).await?;
        }
        Ok(())
    }

    /// Pushes `records` as one batch of its own, bypassing the staging buffers, straight from
    /// the caller's memory. For callers that cut self-contained chunks themselves and bound
    /// their own memory (the Spark plugin): each chunk is read back as one unit.
    pub async fn push(&mut self, partition: u32, records: &[u8]) -> Result<(), ClientError> {
        if partition >= self.bufs.partitions() {
            return Err(ClientError::Config(format!(
                "partition {partition} out of range 0..{}",
                self.bufs.partitions()
            )));
        }
        if records.len() as u64 > u64::from(DEFAULT_MAX_BATCH_RAW) {
            return Err(ClientError::Config(format!(
                "a chunk of {} bytes exceeds the batch limit of {} bytes",
                records.len(),
                DEFAULT_MAX_BATCH_RAW
            )));
        }
        if records.is_empty() {
            return Ok(());
        }
        self.send(partition, records).await
    }

    /// Waits until every batch sent so far is acknowledged (staged bytes stay staged).
    pub async fn wait_acked(&mut self) -> Result<(), ClientError> {
        while !self.inflight.is_empty() {
            self.reap_one().await?;
        }
        Ok(())
    }

    /// Bytes staged but not yet pushed.
    pub fn buffered_bytes(&self) -> usize {
        self.bufs.held_bytes()
    }

    async fn send(&mut self, partition: u32, raw: &[u8]) -> Result<(), ClientError> {
        while self.inflight.len() >= self.client.config().max_in_flight.max(1) {
            self.reap_one().await?;
        }
        let seq = self.stats[partition as usize].next_seq;
        let (batch, crc) = match &self.client.config().cipher {
            Some(cipher) => {
                let mut batch = Vec::with_capacity(BatchCipher::max_sealed_len(raw.len()));
                let place =
                    BatchPlace { shuffle: &self.shuffle, partition, map: self.map.0, attempt: self.attempt.0, seq };
                let crc = cipher.seal_batch(raw, Codec::Lz4, &place, &mut batch)?;
                (batch, crc)
            }
            None => {
                let mut batch = Vec::with_capacity(max_encoded_len(raw.len()));
                let crc = encode_batch(raw, Codec::Lz4, &mut batch)?;
                (batch, crc)
            }
        };
        self.wire_bytes += batch.len() as u64;
        let st = &mut self.stats[partition as usize];
        st.next_seq += 1;
        let push = Push {
            client: self.client.clone(),
            capability: self.capability.clone(),
            header: PushBatch {
                shuffle: self.shuffle.clone(),
                partition: PartitionId(partition),
                map: self.map,
                attempt: self.attempt,
                seq,
                epoch: self.locations[partition as usize].epoch,
                flags: 0,
            },
            location: self.locations[partition as usize].clone(),
            batch: Arc::new(batch),
            raw_len: raw.len() as u64,
            crc,
        };
        self.inflight.spawn(push.run());
        Ok(())
    }

    async fn reap_one(&mut self) -> Result<(), ClientError> {
        match self.inflight.join_next().await {
            None => Ok(()),
            Some(Err(e)) => Err(ClientError::AttemptFailed(format!("push task failed: {e}"))),
            Some(Ok(Err(e))) => {
                self.inflight.abort_all();
                Err(e)
            }
            Some(Ok(Ok(done))) => {
                self.latencies.push(done.latency.as_micros().min(u32::MAX as u128) as u32);
                let st = &mut self.stats[done.partition as usize];
                st.bytes += done.raw_len;
                st.wire_bytes += done.wire_len;
                st.crc_sum = st.crc_sum.wrapping_add(done.crc);
                st.batches += 1;
                if !st.epochs.contains(&done.location.epoch) {
                    st.epochs.push(done.location.epoch);
                }
                let cur = &mut self.locations[done.partition as usize];
                if done.location.epoch > cur.epoch {
                    *cur = done.location;
                }
                Ok(())
            }
        }
    }

    /// Pushes what is staged, waits for every ack and commits the attempt.
    pub async fn commit(mut self) -> Result<CommitOutcome, ClientError> {
        for (p, raw) in self.bufs.drain() {
            self.send(p, &raw).await?;
        }
        self.wait_acked().await?;
        let partitions: Vec<PartitionStat> = self
            .stats
            .iter_mut()
            .enumerate()
            .filter(|(_, s)| s.batches > 0)
            .map(|(p, s)| {
                s.epochs.sort();
                PartitionStat {
                    partition: PartitionId(p as u32),
                    bytes: s.bytes,
                    crc_sum: s.crc_sum,
                    batches: s.batches,
                    epochs: s.epochs.clone(),
                }
            })
            .collect();
        let r: MapCommitted = self
            .client
            .master(CommitMap { shuffle: self.shuffle.clone(), map: self.map, attempt: self.attempt, partitions })
            .await
            .map_err(|e| match e.kind() {
                crate::error::ErrorKind::DataLost => ClientError::AttemptFailed(format!("commit refused: {e}")),
                _ => e,
            })?;
        Ok(CommitOutcome {
            accepted: r.accepted,
            winner: r.winner,
            partition_bytes: self.stats.iter().map(|s| s.bytes).collect(),
            partition_wire_bytes: self.stats.iter().map(|s| s.wire_bytes).collect(),
            sealed: r.sealed,
            push_latencies_us: self.latencies,
            wire_bytes: self.wire_bytes,
        })
    }

    /// Drops everything not yet pushed; pushed batches stay until the shuffle is sealed and
    /// are never read, since this attempt never commits.
    pub fn abort(mut self) {
        self.inflight.abort_all();
    }
}

/// One batch on its way, with its retries.
struct Push {
    client: ShuffleClient,
    capability: SharedCapability,
    header: PushBatch,
    location: PartitionLocation,
    batch: Arc<Vec<u8>>,
    raw_len: u64,
    crc: u32,
}

impl Push {
    async fn run(mut self) -> Result<PushDone, ClientError> {
        let policy = self.client.config().retry.clone();
        let started = tokio::time::Instant::now();
        let mut attempt = 0u32;
        let mut refreshed = false;
        loop {
            self.header.epoch = self.location.epoch;
            let msg = Message::PushBatch(self.header.clone());
            let inner = &self.client.inner;
            let cap = self.capability.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let err = match inner.client.call_as(&self.location.primary.addr, &msg, &cap, &self.batch).await {
                Ok((reply, _)) => match reply.expect::<PushAck>() {
                    Ok(_) => {
                        return Ok(PushDone {
                            partition: self.header.partition.0,
                            latency: started.elapsed(),
                            raw_len: self.raw_len,
                            wire_len: self.batch.len() as u64,
                            crc: self.crc,
                            location: self.location,
                        })
                    }
                    Err(e) => TransportError::from(e),
                },
                Err(e) => e,
            };
            if err.code() == shuffle_proto::ErrorCode::Unauthorized && !refreshed {
                // Capabilities expire: fetch a fresh one once, then retry at once.
                refreshed = true;
                let fresh = self.client.assignment(&self.header.shuffle).await?;
                *self.capability.lock().unwrap_or_else(|p| p.into_inner()) = Arc::from(fresh.capability.as_slice());
                continue;
            }
            let action = policy.on_push_error(attempt, started.elapsed(), err.code(), err.unreachable());
            debug!(partition = %self.header.partition, seq = self.header.seq, ?action, "push failed: {err}");
            match action {
                PushAction::RetryAfter(d) => tokio::time::sleep(d).await,
                PushAction::Relocate(pause) => {
                    if err.unreachable() {
                        inner.client.forget(&self.location.primary.addr).await;
                    }
                    let relocated: Result<Relocated, ClientError> = self
                        .client
                        .master(Relocate {
                            shuffle: self.header.shuffle.clone(),
                            partition: self.header.partition,
                            failed_epoch: self.location.epoch,
                            failed_worker: self.location.primary.id.clone(),
                            split: err.code() == shuffle_proto::ErrorCode::PartitionSplit,
                        })
                        .await;
                    match relocated {
                        Ok(r) if r.location.epoch != self.location.epoch => self.location = r.location,
                        // Nowhere else to go yet (the partition stays, or no other worker is
                        // active, as when the only worker restarts): pause, then try again.
                        Ok(_) => tokio::time::sleep(pause).await,
                        Err(e) if e.retryable() => {
                            debug!(partition = %self.header.partition, "cannot relocate yet: {e}");
                            tokio::time::sleep(pause).await
                        }
                        Err(e) => return Err(e),
                    }
                }
                PushAction::Fail => {
                    return Err(ClientError::AttemptFailed(format!(
                        "push of partition {} seq {} failed after {} tries: {err}",
                        self.header.partition,
                        self.header.seq,
                        attempt + 1
                    )))
                }
            }
            attempt += 1;
        }
    }
}
