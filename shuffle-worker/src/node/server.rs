//! The data server: who may call, push checks and stores, partition reads.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use shuffle_proto::auth::{now_unix_ms, AuthError, Authenticator, RIGHT_READ, RIGHT_WRITE};
use shuffle_proto::batch::{BatchView, DEFAULT_MAX_BATCH_RAW};
use shuffle_proto::messages::*;
use shuffle_proto::transport::{CallInfo, Handler, Responder, TransportError};
use shuffle_proto::{ErrorCode, ProtoError, ShuffleKey, WireError};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{CoreHold, Inner};
use crate::buffer::{AttemptFilter, BatchKey, BufferError, ScanRange, ScannedKeys};
use crate::core::WorkerCore;

/// Chunks of a partition scan, in key order; the scan stops when the receiver is dropped.
pub(super) type ScanChunks = mpsc::Receiver<Result<(Vec<u8>, u32), BufferError>>;

/// How long a primary waits for its replica to store a forwarded batch.
/// One batch into the replica's WAL takes milliseconds; a replica silent this long is cut off
/// or stalled, and the partition moves to a new pair (well before a client's push timeout).
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn werr(code: ErrorCode, msg: impl Into<String>) -> WireError {
    WireError::new(code, msg)
}

pub(super) struct Server(pub(super) Arc<Inner>);

impl Handler for Server {
    async fn handle(
        &self,
        call: &CallInfo,
        req: Message,
        body: Vec<u8>,
        out: &mut Responder,
    ) -> Result<(), ProtoError> {
        let shuffle = match &req {
            Message::PushBatch(p) => Some((&p.shuffle, RIGHT_WRITE)),
            Message::OpenPartition(o) => Some((&o.shuffle, RIGHT_READ)),
            _ => None,
        };
        if let Some((shuffle, rights)) = shuffle {
            if let Err(e) = self.0.authorize(call, shuffle, rights) {
                self.0.metrics.error(e.code());
                debug!(peer = %call.peer, call = req.name(), "refused: {}", e.message);
                return out.error(e).await;
            }
        }
        match req {
            Message::PushBatch(p) => {
                let t0 = tokio::time::Instant::now();
                let r = self.0.push(p, body).await;
                match &r {
                    Ok(_) => self.0.metrics.push_latency.observe(t0.elapsed().as_secs_f64()),
                    Err(e) => self.0.metrics.error(e.code()),
                }
                out.reply(r).await
            }
            Message::OpenPartition(o) => self.0.read(o, out).await,
            other => out.error(werr(ErrorCode::BadRequest, format!("a worker does not serve {}", other.name()))).await,
        }
    }
}

impl Inner {
    /// Whether the caller may do `rights` on `shuffle`: a cluster node, or a capability for
    /// exactly that shuffle generation, signed by a master and not expired.
    fn authorize(&self, call: &CallInfo, shuffle: &ShuffleKey, rights: u8) -> Result<(), WireError> {
        if call.node || !self.auth_required.load(Ordering::SeqCst) {
            return Ok(());
        }
        let authn = Authenticator { verifier: self.verifier.clone(), principals: None };
        let caller = authn.identify(false, call.credential.as_ref(), now_unix_ms())?;
        if caller.may(shuffle, rights) {
            Ok(())
        } else if call.credential.is_none() {
            Err(AuthError::Missing.wire())
        } else {
            Err(AuthError::Forbidden("this capability is for another shuffle, generation or right").wire())
        }
    }

    pub(super) fn forget(&self, shuffle: &ShuffleKey) {
        self.assignments.lock().unwrap_or_else(|p| p.into_inner()).remove(shuffle);
    }

    /// The shuffle's assignment, fetched from the master when unknown or older than `epoch`.
    async fn assignment(
        &self,
        shuffle: &ShuffleKey,
        partition: u32,
        epoch: u64,
    ) -> Result<Arc<ShuffleAssignment>, WireError> {
        let cached = || self.assignments.lock().unwrap_or_else(|p| p.into_inner()).get(shuffle).cloned();
        let fresh = |a: &ShuffleAssignment| a.locations.get(partition as usize).is_some_and(|l| l.epoch.0 >= epoch);
        if let Some(a) = cached().filter(|a| fresh(a)) {
            return Ok(a);
        }
        let _one = self.fetch_lock.lock().await;
        if let Some(a) = cached().filter(|a| fresh(a)) {
            return Ok(a);
        }
        self.fetch_assignment(shuffle).await.map_err(|e| match e {
            TransportError::Remote(w) => w,
            other => {
                debug!("assignment fetch failed: {other}");
                werr(ErrorCode::Unavailable, "the masters cannot be reached")
            }
        })
    }

    /// Replaces the cached assignment with one fresh from the masters.
    pub(super) async fn refresh_assignment(
        &self,
        shuffle: &ShuffleKey,
    ) -> Result<Arc<ShuffleAssignment>, TransportError> {
        let _one = self.fetch_lock.lock().await;
        self.fetch_assignment(shuffle).await
    }

    /// Fetches and caches an assignment; callers hold `fetch_lock`, so fetches are applied in
    /// the order they were made and an older answer never replaces a newer one.
    async fn fetch_assignment(&self, shuffle: &ShuffleKey) -> Result<Arc<ShuffleAssignment>, TransportError> {
        let a: ShuffleAssignment = self.master.call_typed(GetAssignment { shuffle: shuffle.clone() }).await?;
        let a = Arc::new(a);
        self.assignments.lock().unwrap_or_else(|p| p.into_inner()).insert(shuffle.clone(), a.clone());
        Ok(a)
    }

    async fn push(&self, push: PushBatch, body: Vec<u8>) -> Result<PushAck, WireError> {
        BatchView::parse_exact(&body, DEFAULT_MAX_BATCH_RAW).map_err(WireError::from)?;
        let part = (push.shuffle.clone(), push.partition.0);
        let admitted = self.core().admit_push(&part, body.len() as u64, self.buffer.bytes_held());
        if let Err((code, why)) = admitted {
            if code == ErrorCode::Busy {
                self.metrics.backpressure.inc();
            }
            return Err(werr(code, why));
        }
        // Counted in flight until stored or failed: a drain spill of this partition waits.
        let _in_flight = CoreHold { inner: self, part, end: WorkerCore::push_done };
        let a = self.assignment(&push.shuffle, push.partition.0, push.epoch.0).await?;
        if a.state != ShuffleState::Writing {
            return Err(werr(ErrorCode::ShuffleNotWriting, format!("shuffle {} is {:?}", push.shuffle, a.state)));
        }
        let loc = a
            .locations
            .get(push.partition.0 as usize)
            .ok_or_else(|| werr(ErrorCode::BadRequest, format!("partition {} out of range", push.partition)))?;
        if push.epoch < loc.epoch {
            return Err(werr(ErrorCode::StaleEpoch, format!("epoch {} is older than {}", push.epoch, loc.epoch)));
        }
        let mine = loc.primary.id == self.cfg.id || loc.replica.as_ref().is_some_and(|r| r.id == self.cfg.id);
        if !mine {
            return Err(werr(
                ErrorCode::PartitionNotOwned,
                format!("partition {} belongs to {}", push.partition, loc.primary.id),
            ));
        }
        if push.flags & PUSH_FLAG_REPLICA != 0 && loc.replica.as_ref().is_none_or(|r| r.id != self.cfg.id) {
            // Only a primary sends replica copies, and only to its replica.
            return Err(werr(ErrorCode::PartitionNotOwned, "a replica copy for a worker that is not the replica"));
        }
        // With replication 2 the primary forwards the batch to the replica while it stores its
        // own copy, and acknowledges only once both hold it. A forwarded copy goes no further.
        let forward = match &loc.replica {
            Some(r) if loc.primary.id == self.cfg.id && push.flags & PUSH_FLAG_REPLICA == 0 => Some(r.clone()),
            _ => None,
        };
        let header = (forward.is_some()).then(|| PushBatch { flags: push.flags | PUSH_FLAG_REPLICA, ..push.clone() });
        let epoch = loc.epoch;
        if loc.primary.id == self.cfg.id && push.flags & PUSH_FLAG_REPLICA == 0 {
            let part = (push.shuffle.clone(), push.partition.0);
            self.core().admit_to_piece(&part, epoch, body.len() as u64).map_err(|(code, why)| werr(code, why))?;
        }
        // Only a replicated push needs the key again (to report a failed replica).
        let reported = forward.as_ref().map(|_| push.shuffle.clone());
        let key = BatchKey {
            shuffle: push.shuffle,
            partition: push.partition.0,
            map: push.map.0,
            attempt: push.attempt.0,
            seq: push.seq,
        };
        let buffer = self.buffer.clone();
        let len = body.len() as u64;
        let body = Arc::new(body);
        let local = body.clone();
        let store = tokio::task::spawn_blocking(move || {
            // Fault tests slow, fail or crash the store here, with the push admitted and in
            // flight, and right after the batch is in the WAL but not yet acknowledged.
            fail::fail_point!("worker-before-put", |a| super::fault(
                a,
                Err(BufferError::Injected("worker-before-put"))
            ));
            buffer.put(&key, &local)?;
            fail::fail_point!("worker-after-put", |a| super::fault(a, Err(BufferError::Injected("worker-after-put"))));
            Ok::<(), BufferError>(())
        });
        let replicate = async {
            match (&forward, header) {
                (Some(r), Some(h)) => self.forward(r, h, &body).await,
                _ => Ok(()),
            }
        };
        let (stored, replicated) = tokio::join!(store, replicate);
        let stored = stored.map_err(|_| werr(ErrorCode::Internal, "storing the batch failed"))?;
        if let Err(e) = stored {
            warn!("storing a batch failed: {e}");
            return Err(e.wire());
        }
        if let (Err(e), Some(shuffle)) = (replicated, reported) {
            return Err(self.replica_failed(&shuffle, push.partition, epoch, forward, e).await);
        }
        self.metrics.bytes_pushed.inc_by(len);
        Ok(PushAck { seq: push.seq })
    }

    /// Sends a batch's replica copy; `Ok` once the replica has it in its WAL.
    async fn forward(&self, replica: &WorkerEndpoint, header: PushBatch, body: &[u8]) -> Result<(), TransportError> {
        let t0 = tokio::time::Instant::now();
        let msg = Message::PushBatch(header);
        let call = self.master.client().call(&replica.addr, &msg, body);
        // A timeout counts as unreachable: the cached connection is dropped with the replica.
        let (reply, _) = tokio::time::timeout(FORWARD_TIMEOUT, call)
            .await
            .map_err(|_| TransportError::Timeout { addr: replica.addr.clone(), after: FORWARD_TIMEOUT })??;
        reply.expect::<PushAck>().map_err(TransportError::from)?;
        self.metrics.forward_latency.observe(t0.elapsed().as_secs_f64());
        Ok(())
    }

    /// What the client hears when the replica did not take a batch. A replica that is only
    /// busy passes its backpressure on; otherwise the primary asks the masters to move the
    /// partition away from the replica (best effort: the client relocates either way), so the
    /// next batches go to a new pair and nothing is acknowledged with one copy.
    async fn replica_failed(
        &self,
        shuffle: &ShuffleKey,
        partition: shuffle_proto::PartitionId,
        epoch: shuffle_proto::Epoch,
        replica: Option<WorkerEndpoint>,
        e: TransportError,
    ) -> WireError {
        self.metrics.error("replica_failed");
        if e.code() == ErrorCode::Busy {
            self.metrics.backpressure.inc();
            return werr(ErrorCode::Busy, "the partition's replica is over its watermark");
        }
        let Some(replica) = replica else { return werr(ErrorCode::Internal, "replication failed") };
        warn!(%shuffle, %partition, replica = %replica.id, "forwarding to the replica failed: {e}");
        if e.unreachable() {
            self.master.client().forget(&replica.addr).await;
        }
        let moved = self
            .master
            .call_typed::<Relocated>(Relocate {
                shuffle: shuffle.clone(),
                partition,
                failed_epoch: epoch,
                failed_worker: replica.id.clone(),
                split: false,
            })
            .await;
        if let Err(m) = moved {
            debug!(%shuffle, %partition, "reporting the failed replica: {m}");
        }
        self.forget(shuffle);
        werr(ErrorCode::ReplicaFailed, "the partition's replica did not store the batch")
    }

    /// Runs a partition scan on a blocking thread, handing chunks over a bounded channel.
    /// With `record_keys`, the task returns every key it read, for an exact delete later.
    pub(super) fn scan(
        &self,
        range: ScanRange,
        record_keys: bool,
    ) -> (ScanChunks, tokio::task::JoinHandle<ScannedKeys>) {
        let (tx, rx) = mpsc::channel(4);
        let buffer = self.buffer.clone();
        let chunk = self.cfg.read_chunk_bytes;
        let task = tokio::task::spawn_blocking(move || {
            let mut keys = ScannedKeys::default();
            // Each chunk leaves whole (handed to the transport without a copy); the next one
            // starts at full size, so filling it never reallocates and copies.
            let send = |c: &mut Vec<u8>, n| {
                let next = Vec::with_capacity(chunk + crate::buffer::CHUNK_SLACK);
                tx.blocking_send(Ok((std::mem::replace(c, next), n))).is_ok()
            };
            let res = if record_keys {
                buffer.scan_partition_keys(&range, chunk, send, &mut keys)
            } else {
                buffer.scan_partition(&range, chunk, send)
            };
            if let Err(e) = res {
                let _ = tx.blocking_send(Err(e));
            }
            keys
        });
        (rx, task)
    }

    async fn read(&self, req: OpenPartition, out: &mut Responder) -> Result<(), ProtoError> {
        // Fault tests hold a read between its plan and its scan (`return(MS)`), so a spill can
        // drop the partition meanwhile.
        #[cfg(feature = "failpoints")]
        if let Some(ms) = (|| {
            fail::fail_point!("worker-before-read", |a| a.and_then(|ms| ms.parse::<u64>().ok()));
            None
        })() {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        let attempts: BTreeMap<u32, u64> = req.attempts.iter().map(|a| (a.map.0, a.attempt.0)).collect();
        let (mut rx, _) = self.scan(
            ScanRange {
                shuffle: req.shuffle,
                partition: req.partition.0,
                start_map: req.start_map.0,
                end_map: req.end_map.0,
                filter: AttemptFilter::Only(attempts),
            },
            false,
        );
        let (mut records, mut bytes) = (0u64, 0u64);
        while let Some(item) = rx.recv().await {
            match item {
                Ok((chunk, n)) => {
                    records += n as u64;
                    bytes += chunk.len() as u64;
                    out.send_owned(&Message::Chunk(Chunk { records: n }), chunk).await?;
                }
                Err(e) => {
                    warn!("reading a partition failed: {e}");
                    return out.error(werr(ErrorCode::Internal, "reading the partition failed")).await;
                }
            }
        }
        self.metrics.bytes_read.inc_by(bytes);
        out.send(&Message::EndOfStream(EndOfStream { records, bytes }), &[]).await
    }
}
