//! The data server: who may call, push checks and stores, partition reads.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use shuffle_proto::auth::{
    now_unix_ms, AuthError, Authenticator, Claims, Credential, Principal, RIGHT_READ, RIGHT_WRITE,
};
use shuffle_proto::batch::{BatchView, DEFAULT_MAX_BATCH_RAW};
use shuffle_proto::messages::*;
use shuffle_proto::transport::{CallInfo, Handler, Responder, TransportError};
use shuffle_proto::{ErrorCode, ProtoError, ShuffleKey, WireError};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{CoreHold, Inner};
use crate::buffer::{AttemptFilter, BatchKey, Buffer, BufferError, ScanCursor, ScanRange, ScannedKeys, CHUNK_SLACK};
use crate::core::WorkerCore;

/// Chunks of a partition scan, in key order; the scan stops when the receiver is dropped.
pub(super) type ScanChunks = mpsc::Receiver<Result<(Vec<u8>, u32), BufferError>>;

/// Chunks a spill's scan reads ahead of its upload.
const SPILL_SCAN_AHEAD: usize = 4;

/// What one scan step read.
struct Step {
    chunk: Vec<u8>,
    records: u64,
    keys: Vec<Vec<u8>>,
    cursor: ScanCursor,
}

type StepTask = tokio::task::JoinHandle<Result<Step, BufferError>>;

/// One step of a partition scan ([`crate::buffer::Buffer::scan_step`]) on a blocking thread:
/// the next chunk, its records and keys (with `record_keys`), and the cursor to go on from.
/// The thread, iterator and files are held for this one chunk only.
fn scan_step(
    buffer: Arc<Buffer>,
    slots: Arc<tokio::sync::Semaphore>,
    chunk_bytes: usize,
    range: Arc<ScanRange>,
    mut cursor: ScanCursor,
    record_keys: bool,
) -> StepTask {
    tokio::spawn(async move {
        // A slot of the scan pool: scans never take the threads pushes store with.
        let _slot = slots.acquire_owned().await.map_err(|_| step_stopped())?;
        tokio::task::spawn_blocking(move || {
            // The chunk leaves whole (handed to the transport without a copy), and at full
            // size filling it never reallocates.
            let mut chunk = Vec::with_capacity(chunk_bytes + CHUNK_SLACK);
            let mut keys = Vec::new();
            let stats =
                buffer.scan_step(&range, &mut cursor, chunk_bytes, &mut chunk, record_keys.then_some(&mut keys))?;
            Ok(Step { chunk, records: stats.records, keys, cursor })
        })
        .await
        .unwrap_or_else(|_| Err(step_stopped()))
    })
}

/// Scan steps (reads and spills) on blocking threads at once: each holds a thread for one
/// chunk, so this bounds the threads and chunk memory scans take whatever readers do.
pub(super) const SCAN_SLOTS: usize = 32;
/// Batch stores on blocking threads at once; beyond it pushes queue (and the client's window
/// and the node's frame budget bound the queue), never taking a scan's threads.
pub(super) const STORE_SLOTS: usize = 128;

/// A scan step's thread ended without a result (it panicked or the runtime is shutting down).
fn step_stopped() -> BufferError {
    BufferError::Io(std::io::Error::other("a partition scan step stopped"))
}

/// How long a primary waits for its replica to store a forwarded batch.
/// One batch into the replica's WAL takes milliseconds; a replica silent this long is cut off
/// or stalled, and the partition moves to a new pair (well before a client's push timeout).
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Longest a shuffle's assignment is trusted against pushes naming an epoch or registration
/// it does not have: within it they wait (Busy) instead of sending the worker to the masters.
const REFETCH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// Shuffles whose fetch lock and fetch time are remembered before idle ones are dropped.
const MAX_FETCH_LOCKS: usize = 4096;

fn werr(code: ErrorCode, msg: impl Into<String>) -> WireError {
    WireError::new(code, msg)
}

fn not_yet_issued() -> WireError {
    werr(ErrorCode::Busy, "the push names an epoch the masters have not given this worker")
}

fn out_of_range_error(partition: u32) -> WireError {
    werr(ErrorCode::BadRequest, format!("partition {partition} out of range"))
}

/// What a peer of an earlier registration of an app hears.
pub(super) fn superseded() -> WireError {
    AuthError::Forbidden("this capability is for an earlier registration of the application").wire()
}

/// A shuffle's assignment as the worker caches it.
pub(super) struct Assigned {
    pub assignment: ShuffleAssignment,
    /// The app's registration it was issued under (the incarnation its signed capability
    /// carries); `None` without authentication.
    pub incarnation: Option<u64>,
}

impl std::ops::Deref for Assigned {
    type Target = ShuffleAssignment;

    fn deref(&self) -> &ShuffleAssignment {
        &self.assignment
    }
}

/// A shuffle's fetch lock, guarding when its assignment was last fetched.
pub(super) type FetchLock = Arc<tokio::sync::Mutex<Option<tokio::time::Instant>>>;

/// The incarnation in a capability the masters attached to a reply (the reply came over the
/// node's own authenticated connection, so its claims are read without a signature check).
pub(super) fn capability_incarnation(capability: &[u8]) -> Option<u64> {
    if capability.is_empty() {
        return None;
    }
    Credential::decode(capability).ok()?.unverified_claims().map(|c| c.incarnation)
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
        let mut claims = None;
        if let Some((shuffle, rights)) = shuffle {
            match self.0.authorize(call, shuffle, rights) {
                Ok(c) => claims = c,
                Err(e) => {
                    self.0.metrics.error(e.code());
                    debug!(peer = %call.peer, call = req.name(), "refused: {}", e.message);
                    return out.error(e).await;
                }
            }
        }
        match req {
            Message::PushBatch(p) => {
                let t0 = tokio::time::Instant::now();
                let r = self.0.push(p, body, call.node, claims.as_deref()).await;
                match &r {
                    Ok(_) => self.0.metrics.push_latency.observe(t0.elapsed().as_secs_f64()),
                    Err(e) => self.0.metrics.error(e.code()),
                }
                out.reply(r).await
            }
            Message::OpenPartition(o) => {
                // A reader of an earlier registration of the app is refused; one of a later
                // registration has the earlier one's batches deleted first.
                let _registration = match &claims {
                    Some(c) => match self.0.enter_incarnation(&c.app, c.incarnation).await {
                        Ok(g) => Some(g),
                        Err(e) => return out.error(e).await,
                    },
                    None => None,
                };
                self.0.read(o, out).await
            }
            other => out.error(werr(ErrorCode::BadRequest, format!("a worker does not serve {}", other.name()))).await,
        }
    }
}

impl Inner {
    /// Whether the caller may do `rights` on `shuffle`: a cluster node, or a capability for
    /// exactly that shuffle generation, signed by a master and not expired. Returns the
    /// capability's claims (none for a node, or with authentication off).
    fn authorize(&self, call: &CallInfo, shuffle: &ShuffleKey, rights: u8) -> Result<Option<Arc<Claims>>, WireError> {
        if call.node || !self.auth_required.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let authn = Authenticator { verifier: self.verifier.clone(), principals: None };
        let caller = authn.identify(false, call.credential.as_ref(), now_unix_ms())?;
        if caller.may(shuffle, rights) {
            match caller.principal {
                Principal::Capability(c) => Ok(Some(c)),
                _ => Ok(None),
            }
        } else if call.credential.is_none() {
            Err(AuthError::Missing.wire())
        } else {
            Err(AuthError::Forbidden("this capability is for another shuffle, generation or right").wire())
        }
    }

    pub(super) fn forget(&self, shuffle: &ShuffleKey) {
        self.assignments.lock().unwrap_or_else(|p| p.into_inner()).remove(shuffle);
    }

    /// The lock that orders assignment fetches of one shuffle, guarding when it was last
    /// fetched: fetches of different shuffles (one tenant's, another's) never wait for each
    /// other.
    fn fetch_lock(&self, shuffle: &ShuffleKey) -> FetchLock {
        let mut locks = self.fetch_locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks.len() >= MAX_FETCH_LOCKS {
            // Only locks nobody holds or waits for go; the map stays bounded by shuffles in use.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(shuffle.clone()).or_default().clone()
    }

    /// The shuffle's assignment, fetched from the master when unknown, older than `epoch` or
    /// of an older registration of the app than `incarnation`. A partition out of the cached
    /// assignment's range is refused without asking the masters (a shuffle's partition count
    /// never changes), and a shuffle is fetched at most once per [`REFETCH_EVERY`] for pushes
    /// naming an epoch the masters have not issued, so no peer can make the worker ask the
    /// masters at will.
    async fn assignment(
        &self,
        shuffle: &ShuffleKey,
        partition: u32,
        epoch: u64,
        incarnation: Option<u64>,
    ) -> Result<Arc<Assigned>, WireError> {
        let cached = || self.assignments.lock().unwrap_or_else(|p| p.into_inner()).get(shuffle).cloned();
        let fresh = |a: &Assigned| {
            a.locations.get(partition as usize).is_some_and(|l| l.epoch.0 >= epoch)
                && incarnation.is_none_or(|i| a.incarnation.is_none_or(|have| have >= i))
        };
        let out_of_range = |a: &Assigned| partition >= a.num_partitions;
        match cached() {
            Some(a) if out_of_range(&a) => return Err(out_of_range_error(partition)),
            Some(a) if fresh(&a) => return Ok(a),
            _ => {}
        }
        let lock = self.fetch_lock(shuffle);
        let mut last_fetch = lock.lock().await;
        let recent = last_fetch.is_some_and(|t| t.elapsed() < REFETCH_EVERY);
        if let Some(a) = cached() {
            if fresh(&a) {
                return Ok(a);
            }
            // A signed capability of a later registration than the cached assignment's proves
            // the cache stale (nobody can forge one): fetch at once.
            let newer_registration = incarnation.is_some_and(|i| a.incarnation.is_some_and(|have| have < i));
            if recent && !newer_registration {
                // Fetched moments ago and still behind the push: the push names an epoch or a
                // registration the masters had not issued then. Busy: the pusher retries here
                // after a pause (a stale-epoch answer would make it move the partition away).
                return Err(not_yet_issued());
            }
        }
        self.fetch_assignment(shuffle, &mut last_fetch).await.map_err(|e| match e {
            TransportError::Remote(w) => w,
            other => {
                debug!("assignment fetch failed: {other}");
                werr(ErrorCode::Unavailable, "the masters cannot be reached")
            }
        })
    }

    /// Replaces the cached assignment with one fresh from the masters.
    pub(super) async fn refresh_assignment(&self, shuffle: &ShuffleKey) -> Result<Arc<Assigned>, TransportError> {
        let lock = self.fetch_lock(shuffle);
        let mut last_fetch = lock.lock().await;
        self.fetch_assignment(shuffle, &mut last_fetch).await
    }

    /// Fetches and caches an assignment; callers hold the shuffle's fetch lock (and pass what
    /// it guards), so fetches are applied in the order they were made and an older answer
    /// never replaces a newer one.
    async fn fetch_assignment(
        &self,
        shuffle: &ShuffleKey,
        last_fetch: &mut Option<tokio::time::Instant>,
    ) -> Result<Arc<Assigned>, TransportError> {
        let a: ShuffleAssignment = self.master.call_typed(GetAssignment { shuffle: shuffle.clone() }).await?;
        // Read once here, not on every push the assignment serves.
        let incarnation = capability_incarnation(&a.capability);
        let a = Arc::new(Assigned { assignment: a, incarnation });
        self.assignments.lock().unwrap_or_else(|p| p.into_inner()).insert(shuffle.clone(), a.clone());
        *last_fetch = Some(tokio::time::Instant::now());
        Ok(a)
    }

    async fn push(
        &self,
        push: PushBatch,
        body: Vec<u8>,
        from_node: bool,
        claims: Option<&Claims>,
    ) -> Result<PushAck, WireError> {
        if push.flags & PUSH_FLAG_REPLICA != 0 && !from_node {
            // A replica copy skips the primary (its split accounting, its copy): only a
            // primary, a cluster node, sends one.
            return Err(AuthError::Forbidden("replica copies come from cluster nodes only").wire());
        }
        let sealed = BatchView::parse_exact(&body, DEFAULT_MAX_BATCH_RAW).map_err(WireError::from)?.sealed;
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
        let a = self.assignment(&push.shuffle, push.partition.0, push.epoch.0, claims.map(|c| c.incarnation)).await?;
        // The registration the masters hold now: a capability of another one pushes nothing.
        let incarnation = a.incarnation;
        if let (Some(c), Some(current)) = (claims, incarnation) {
            if c.incarnation != current {
                return Err(superseded());
            }
        }
        if a.state != ShuffleState::Writing {
            return Err(werr(ErrorCode::ShuffleNotWriting, format!("shuffle {} is {:?}", push.shuffle, a.state)));
        }
        let loc = a.locations.get(push.partition.0 as usize).ok_or_else(|| out_of_range_error(push.partition.0))?;
        if push.epoch < loc.epoch {
            return Err(werr(ErrorCode::StaleEpoch, format!("epoch {} is older than {}", push.epoch, loc.epoch)));
        }
        if push.epoch > loc.epoch {
            // Fresh from the masters and still behind: an epoch nobody issued (yet).
            return Err(not_yet_issued());
        }
        // Held until the batch is stored: data of an earlier registration of the app is gone
        // before this one's first batch lands, and is not deleted under it.
        let _registration = match incarnation {
            Some(i) => Some(self.enter_incarnation(&push.shuffle.app, i).await?),
            None => None,
        };
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
        let slot = self
            .store_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| werr(ErrorCode::Unavailable, "the worker is stopping"))?;
        let store = tokio::task::spawn_blocking(move || {
            let _slot = slot;
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
        self.metrics.batches_pushed.inc();
        if sealed {
            self.metrics.sealed_batches.inc();
        }
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

    fn scan_step(&self, range: Arc<ScanRange>, cursor: ScanCursor, record_keys: bool) -> StepTask {
        scan_step(self.buffer.clone(), self.scan_slots.clone(), self.cfg.read_chunk_bytes, range, cursor, record_keys)
    }

    /// Runs a partition scan step by step, handing chunks over a bounded channel; it stops
    /// when the receiver is dropped. Between steps it holds only the chunks not yet taken, so a
    /// slow consumer pins no thread, snapshot or file. With `record_keys`, the task returns
    /// every key it handed over, for an exact delete later.
    pub(super) fn scan(
        &self,
        range: ScanRange,
        record_keys: bool,
    ) -> (ScanChunks, tokio::task::JoinHandle<ScannedKeys>) {
        let (tx, rx) = mpsc::channel(SPILL_SCAN_AHEAD);
        let range = Arc::new(range);
        let (buffer, slots, chunk_bytes) = (self.buffer.clone(), self.scan_slots.clone(), self.cfg.read_chunk_bytes);
        let task = tokio::spawn(async move {
            let mut keys = ScannedKeys::default();
            let mut cursor = ScanCursor::default();
            while !cursor.done {
                let step =
                    scan_step(buffer.clone(), slots.clone(), chunk_bytes, range.clone(), cursor, record_keys).await;
                let step = match step.unwrap_or_else(|_| Err(step_stopped())) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        break;
                    }
                };
                cursor = step.cursor;
                if step.records == 0 {
                    continue;
                }
                // A step returns one chunk's records, far below u32::MAX.
                let n = u32::try_from(step.records).unwrap_or(u32::MAX);
                if tx.send(Ok((step.chunk, n))).await.is_err() {
                    break;
                }
                keys.keys.extend(step.keys);
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
        let range = Arc::new(ScanRange {
            shuffle: req.shuffle,
            partition: req.partition.0,
            start_map: req.start_map.0,
            end_map: req.end_map.0,
            filter: AttemptFilter::Only(attempts),
        });
        // Every chunk is reserved in the node's memory budget before it is read, and held until
        // it is handed to the stream; one chunk is read ahead while the previous one is sent.
        let chunk_room = self.cfg.read_chunk_bytes + CHUNK_SLACK;
        let busy = || werr(ErrorCode::Busy, "too many bytes in flight");
        let Ok(room) = out.reserve(chunk_room).await else { return out.error(busy()).await };
        let mut next = Some((room, self.scan_step(range.clone(), ScanCursor::default(), false)));
        let (mut records, mut bytes) = (0u64, 0u64);
        while let Some((room, task)) = next.take() {
            let step = match task.await {
                Ok(Ok(step)) => step,
                Ok(Err(e)) => {
                    warn!("reading a partition failed: {e}");
                    return out.error(werr(ErrorCode::Internal, "reading the partition failed")).await;
                }
                Err(e) => {
                    warn!("a partition scan step stopped: {e}");
                    return out.error(werr(ErrorCode::Internal, "reading the partition failed")).await;
                }
            };
            if !step.cursor.done {
                let Ok(ahead) = out.reserve(chunk_room).await else { return out.error(busy()).await };
                next = Some((ahead, self.scan_step(range.clone(), step.cursor, false)));
            }
            if step.records > 0 {
                let n = u32::try_from(step.records).unwrap_or(u32::MAX);
                records += step.records;
                bytes += step.chunk.len() as u64;
                // Fails, resetting the stream, once the reader takes nothing for the stall
                // timeout; the step read ahead is dropped with `next`.
                out.send_owned(&Message::Chunk(Chunk { records: n }), step.chunk).await?;
            }
            drop(room);
        }
        self.metrics.bytes_read.inc_by(bytes);
        out.send(&Message::EndOfStream(EndOfStream { records, bytes }), &[]).await
    }
}
