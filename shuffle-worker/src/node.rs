//! A worker process: the QUIC data server, membership with the master, seal-time spilling
//! and decommission.
//!
//! Invariants:
//! - A push is checked before anything is written: batch header sane, shuffle writing,
//!   partition owned by this worker at an epoch not older than the push's, space available.
//!   A push that fails a check writes nothing and gets a typed error; `Busy`, `StaleEpoch`,
//!   `PartitionNotOwned` and `Decommissioning` are retryable.
//! - Spill order: upload the segment, then record it in the master, then delete the local
//!   range. A crash in between leaves either an unrecorded object (garbage) or data both
//!   local and spilled (the master's record decides which one readers use).
//! - A draining worker takes no pushes, spills everything it holds, and stops once the master
//!   calls it Decommissioned.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::ObjectStore;
use shuffle_proto::auth::{now_unix_ms, AuthError, Authenticator, PublicKey, Verifier, RIGHT_READ, RIGHT_WRITE};
use shuffle_proto::batch::{BatchView, DEFAULT_MAX_BATCH_RAW};
use shuffle_proto::http::{serve_http, Page};
use shuffle_proto::messages::*;
use shuffle_proto::objstore::{delete_prefix, open_store, SegmentUpload};
use shuffle_proto::segment::{parse_segment_key, segment_key, segment_prefix, shuffle_dir};
use shuffle_proto::transport::{
    serve, server_endpoint, CallInfo, Client, ClientOptions, Handler, MasterClient, Responder, ServerOptions, Tls,
    TlsSource, TransportError,
};
use shuffle_proto::{ErrorCode, PartitionId, ProtoError, ShuffleKey, WireError, WorkerId};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::buffer::{AttemptFilter, BatchKey, Buffer, ScanRange, ScannedKeys};
use crate::core::{CoreLimits, Delete, Lifecycle, PartKey, SpillKind, SpillStart, Step, WorkerCore};
use crate::metrics::Metrics;
use crate::spill::{is_garbage, plan_pressure_spill, SweepFacts};

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub id: WorkerId,
    pub listen: SocketAddr,
    /// The address clients and the master use to reach this worker.
    pub advertise: String,
    pub masters: Vec<String>,
    pub data_dir: PathBuf,
    pub object_store: String,
    pub tls: TlsSource,
    /// Pushes are refused with `Busy` once this many bytes are buffered.
    pub max_buffered_bytes: u64,
    /// Above this many buffered bytes the largest partitions are spilled early...
    pub spill_high_bytes: u64,
    /// ...until the buffer is under this many.
    pub spill_low_bytes: u64,
    /// fsync the WAL before acknowledging (survives machine crashes, not just process crashes).
    pub sync_writes: bool,
    pub read_chunk_bytes: usize,
    pub upload_part_bytes: usize,
    pub heartbeat_interval: Duration,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` over HTTP.
    pub http_listen: Option<SocketAddr>,
    /// How often to sweep the object store for garbage (None: never).
    pub sweep_interval: Option<Duration>,
    /// Objects younger than this are never swept.
    pub sweep_grace: Duration,
}

impl WorkerConfig {
    pub fn local(
        id: &str,
        listen: SocketAddr,
        masters: Vec<String>,
        data_dir: PathBuf,
        object_store: String,
        tls: TlsSource,
    ) -> Result<Self, ProtoError> {
        Ok(Self {
            id: WorkerId::new(id)?,
            listen,
            advertise: listen.to_string(),
            masters,
            data_dir,
            object_store,
            tls,
            max_buffered_bytes: 64 << 30,
            spill_high_bytes: 48 << 30,
            spill_low_bytes: 32 << 30,
            sync_writes: false,
            read_chunk_bytes: 1 << 20,
            upload_part_bytes: 8 << 20,
            heartbeat_interval: Duration::from_secs(1),
            http_listen: None,
            sweep_interval: Some(Duration::from_secs(3600)),
            sweep_grace: Duration::from_secs(900),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("buffer: {0}")]
    Buffer(#[from] crate::buffer::BufferError),
    #[error("object store: {0}")]
    Store(#[from] shuffle_proto::objstore::StoreError),
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    #[error("config: {0}")]
    Config(String),
}

struct Inner {
    cfg: WorkerConfig,
    buffer: Arc<Buffer>,
    store: Arc<dyn ObjectStore>,
    master: MasterClient,
    assignments: Mutex<HashMap<ShuffleKey, Arc<ShuffleAssignment>>>,
    fetch_lock: tokio::sync::Mutex<()>,
    /// Every decision about pushes, spills and the worker's lifecycle (see [`crate::core`]).
    core: Mutex<WorkerCore>,
    spilling: Mutex<HashSet<ShuffleKey>>,
    nonce: AtomicU64,
    metrics: Metrics,
    done: watch::Sender<bool>,
    /// Checks capabilities offline with the masters' public keys.
    verifier: Arc<Verifier>,
    /// Whether pushes and reads need a capability; the masters say so (and it stays on
    /// until they do).
    auth_required: AtomicBool,
}

/// A running worker.
pub struct WorkerNode {
    inner: Arc<Inner>,
    pub addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    endpoint: quinn::Endpoint,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    done: watch::Receiver<bool>,
}

/// How long a drain spill waits for pushes in flight to its partition before trying later.
const SPILL_FENCE_WAIT: Duration = Duration::from_secs(30);

fn werr(code: ErrorCode, msg: impl Into<String>) -> WireError {
    WireError::new(code, msg)
}

impl WorkerNode {
    pub async fn start(cfg: WorkerConfig) -> Result<WorkerNode, WorkerError> {
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| WorkerError::Config(format!("{}: {e}", cfg.data_dir.display())))?;
        let buffer = Buffer::open(&cfg.data_dir.join("buffer"), cfg.sync_writes)?;
        let store = open_store(&cfg.object_store)?;
        let tls = Tls::load(&cfg.tls)?;
        let client = Client::new(&tls, ClientOptions::default())?;
        let master = MasterClient::new(client, cfg.masters.clone(), Duration::from_secs(30))?;
        let server_opts = ServerOptions::for_tls(&tls);
        let endpoint = server_endpoint(cfg.listen, &tls, &server_opts)?;
        let addr = endpoint.local_addr().map_err(|e| WorkerError::Config(e.to_string()))?;
        let (done_tx, done_rx) = watch::channel(false);
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let limits = CoreLimits { max_buffered_bytes: cfg.max_buffered_bytes };
        let inner = Arc::new(Inner {
            cfg,
            buffer,
            store,
            master,
            assignments: Default::default(),
            fetch_lock: Default::default(),
            core: Mutex::new(WorkerCore::new(limits)),
            spilling: Default::default(),
            nonce: AtomicU64::new(nonce),
            metrics: Metrics::default(),
            done: done_tx,
            verifier: Arc::new(Verifier::default()),
            auth_required: AtomicBool::new(true),
        });
        // Masters may come up after their workers (a fresh cluster, a rolling restart): keep
        // trying while the failure is one that time can fix; a refusal fails the start.
        let mut delay = Duration::from_millis(500);
        loop {
            match inner.register().await {
                Ok(()) => break,
                Err(e) if e.retryable() => {
                    warn!("cannot register with the masters yet: {e}; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let server = Arc::new(Server(inner.clone()));
        let mut tasks = vec![
            tokio::spawn(serve(endpoint.clone(), server, server_opts)),
            tokio::spawn(inner.clone().heartbeat_loop()),
            tokio::spawn(inner.clone().pressure_loop()),
        ];
        if let Some(every) = inner.cfg.sweep_interval {
            tasks.push(tokio::spawn(inner.clone().sweep_loop(every)));
        }
        let http_addr = match inner.cfg.http_listen {
            Some(a) => {
                let weak = Arc::downgrade(&inner);
                let (bound, task) = serve_http(a, move |path| match (path, weak.upgrade()) {
                    ("/metrics", Some(i)) => Page::ok("text/plain; version=0.0.4", i.scrape()),
                    ("/healthz", Some(_)) => Page::ok("text/plain", "ok\n".into()),
                    ("/readyz", Some(i)) if i.core().ready() => Page::ok("text/plain", "ready\n".into()),
                    ("/readyz", Some(_)) => Page { status: 503, content_type: "text/plain", body: "draining\n".into() },
                    _ => Page::not_found(),
                })
                .await
                .map_err(|e| WorkerError::Config(format!("http_listen {a}: {e}")))?;
                tasks.push(task);
                Some(bound)
            }
            None => None,
        };
        info!(worker = %inner.cfg.id, %addr, ?http_addr, held = inner.buffer.bytes_held(), "worker serving");
        Ok(WorkerNode { inner, addr, http_addr, endpoint, tasks, done: done_rx })
    }

    pub fn id(&self) -> &WorkerId {
        &self.inner.cfg.id
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served, if enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    pub fn bytes_held(&self) -> u64 {
        self.inner.buffer.bytes_held()
    }

    /// Sweeps the object store once, now; returns how many objects were deleted.
    pub async fn sweep_now(&self) -> Result<usize, String> {
        self.inner.sweep().await.map_err(|e| e.to_string())
    }

    /// Resolves once a decommission has completed.
    pub async fn decommissioned(&mut self) {
        while !*self.done.borrow() {
            if self.done.changed().await.is_err() {
                return;
            }
        }
    }

    /// Stops serving and waits (up to 5 s) until every task let go of the buffer, so the
    /// RocksDB lock is free when this returns.
    pub async fn shutdown(self) {
        self.endpoint.close(0u32.into(), b"shutdown");
        for t in &self.tasks {
            t.abort();
        }
        self.inner.master.client().close();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&self.inner) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if Arc::strong_count(&self.inner) > 1 {
            warn!("worker tasks still running at shutdown");
        }
    }
}

impl Inner {
    fn scrape(&self) -> String {
        self.metrics.bytes_buffered.set(self.buffer.bytes_held() as i64);
        self.metrics.partitions.set(self.buffer.partitions().len() as i64);
        self.metrics.encode()
    }

    async fn register(self: &Arc<Self>) -> Result<(), TransportError> {
        let held = self
            .buffer
            .partitions()
            .into_iter()
            .take(10_000)
            .map(|(shuffle, p, bytes)| HeldPartition { shuffle, partition: PartitionId(p), bytes })
            .collect();
        let reply: WorkerRegistered = self
            .master
            .call_typed(RegisterWorker {
                worker: self.cfg.id.clone(),
                addr: self.cfg.advertise.clone(),
                capacity_bytes: self.cfg.max_buffered_bytes,
                held,
            })
            .await?;
        self.set_auth(&reply.auth);
        self.follow(reply.desired);
        Ok(())
    }

    fn core(&self) -> std::sync::MutexGuard<'_, WorkerCore> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the master's desired state and carries out what the core decides.
    fn follow(self: &Arc<Self>, desired: WorkerState) {
        let steps = self.core().desired(desired, self.buffer.bytes_held());
        for step in steps {
            match step {
                Step::StartDrain => {
                    info!(worker = %self.cfg.id, bytes = self.buffer.bytes_held(), "decommissioning: draining to the object store")
                }
                Step::Resume => info!(worker = %self.cfg.id, "recommissioned: taking pushes again"),
                Step::ReportDrained => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        // Nothing left here: partitions the master still lists on this worker
                        // had no data. The next heartbeat reply says Decommissioned.
                        if let Err(e) = me.master.call_typed::<Ack>(DrainComplete { worker: me.cfg.id.clone() }).await {
                            warn!("could not report the drain complete: {e}");
                        }
                    });
                }
                Step::Stop => {
                    info!(worker = %self.cfg.id, "decommissioned: all data is in the object store");
                    let _ = self.done.send(true);
                }
                Step::Register => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = Box::pin(me.register()).await {
                            warn!("re-registration failed: {e}");
                        }
                    });
                }
            }
        }
        // While draining, every heartbeat spills what is still here (spills of a shuffle run
        // once at a time, so repeating this is harmless).
        if self.core().lifecycle() == Lifecycle::Draining {
            for shuffle in self.buffer.shuffles() {
                let me = self.clone();
                tokio::spawn(async move { me.spill_shuffle(shuffle, SpillKind::Drain).await });
            }
        }
    }

    /// Takes the masters' current keys (rotation) and whether capabilities are required.
    fn set_auth(&self, auth: &AuthKeys) {
        let keys: Vec<PublicKey> = auth.keys.iter().filter_map(PublicKey::from_wire).collect();
        self.verifier.set_keys(&keys);
        self.auth_required.store(auth.required, Ordering::SeqCst);
    }

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

    async fn heartbeat_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let hb = WorkerHeartbeat {
                worker: self.cfg.id.clone(),
                bytes_held: self.buffer.bytes_held(),
                partitions: self.buffer.partitions().len() as u32,
                shuffles: self.buffer.shuffles(),
            };
            match self.master.call_typed::<HeartbeatReply>(hb).await {
                Ok(reply) => {
                    self.set_auth(&reply.auth);
                    for cmd in reply.commands {
                        self.clone().command(cmd);
                    }
                    self.follow(reply.desired);
                }
                Err(TransportError::Remote(e)) if e.code() == ErrorCode::UnknownWorker => {
                    warn!("the master does not know this worker (declared lost?): registering again");
                    if let Err(e) = self.register().await {
                        warn!("re-registration failed: {e}");
                    }
                }
                Err(e) => warn!("heartbeat failed: {e}"),
            }
        }
    }

    /// Spills the largest partitions early while the buffer is over its high watermark.
    async fn pressure_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let parts = self.buffer.partitions();
            let sizes: Vec<u64> = parts.iter().map(|(_, _, b)| *b).collect();
            let held = self.buffer.bytes_held();
            let plan = plan_pressure_spill(&sizes, held, self.cfg.spill_high_bytes, self.cfg.spill_low_bytes);
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

    async fn sweep_loop(self: Arc<Self>, every: Duration) {
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

    /// Deletes objects of removed shuffles, and unrecorded objects of workers that are gone.
    /// Every worker may sweep; deletes are idempotent.
    pub(crate) async fn sweep(&self) -> Result<usize, SpillError> {
        use futures::TryStreamExt;
        let objects: Vec<object_store::ObjectMeta> =
            self.store.list(None).try_collect().await.map_err(shuffle_proto::objstore::StoreError::from)?;
        if objects.is_empty() {
            return Ok(0);
        }
        let known: HashSet<ShuffleKey> = self
            .master
            .call_typed::<ShuffleList>(ListShuffles {})
            .await?
            .shuffles
            .into_iter()
            .map(|s| s.shuffle)
            .collect();
        let status: ClusterStatus = self.master.call_typed(GetStatus {}).await?;
        let alive: HashSet<WorkerId> = status
            .workers
            .into_iter()
            .filter(|w| matches!(w.state, WorkerState::Active | WorkerState::Decommissioning))
            .map(|w| w.id)
            .collect();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let mut recorded: HashMap<ShuffleKey, HashSet<String>> = HashMap::new();
        let mut deleted = 0;
        for o in objects {
            let key = o.location.to_string();
            let Some((shuffle, _, writer)) = parse_segment_key(&key) else { continue };
            let shuffle_known = known.contains(&shuffle);
            if shuffle_known && !recorded.contains_key(&shuffle) {
                let plan: ReadPlan = self
                    .master
                    .call_typed(GetReadPlan {
                        shuffle: shuffle.clone(),
                        start_partition: PartitionId(0),
                        end_partition: PartitionId(u32::MAX),
                        start_map: shuffle_proto::MapId(0),
                        end_map: shuffle_proto::MapId(u32::MAX),
                    })
                    .await?;
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

    fn command(self: Arc<Self>, cmd: WorkerCommand) {
        match cmd {
            WorkerCommand::Seal { shuffle } => {
                tokio::spawn(async move { self.spill_shuffle(shuffle, SpillKind::Seal).await });
            }
            WorkerCommand::DeleteShuffle { shuffle } => {
                tokio::spawn(async move {
                    self.forget(&shuffle);
                    if let Err(e) = self.buffer.delete_shuffle(&shuffle) {
                        warn!(%shuffle, "local delete failed: {e}");
                    }
                    match delete_prefix(&*self.store, &shuffle_dir(&shuffle)).await {
                        Ok(n) => info!(%shuffle, objects = n, "shuffle deleted"),
                        Err(e) => warn!(%shuffle, "object delete failed: {e}"),
                    }
                });
            }
        }
    }

    fn forget(&self, shuffle: &ShuffleKey) {
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
        let a: ShuffleAssignment =
            self.master.call_typed(GetAssignment { shuffle: shuffle.clone() }).await.map_err(|e| match e {
                TransportError::Remote(w) => w,
                other => {
                    debug!("assignment fetch failed: {other}");
                    werr(ErrorCode::Unavailable, "the masters cannot be reached")
                }
            })?;
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
        let key = BatchKey {
            shuffle: push.shuffle,
            partition: push.partition.0,
            map: push.map.0,
            attempt: push.attempt.0,
            seq: push.seq,
        };
        let buffer = self.buffer.clone();
        let len = body.len() as u64;
        let stored = tokio::task::spawn_blocking(move || {
            // Fault tests slow or fail the store here, with the push admitted and in flight.
            fail::fail_point!("worker-before-put", |_| Err(crate::buffer::BufferError::CorruptKey("failpoint".into())));
            buffer.put(&key, &body)
        })
        .await
        .map_err(|_| werr(ErrorCode::Internal, "storing the batch failed"))?;
        if let Err(e) = stored {
            warn!("storing a batch failed: {e}");
            return Err(e.wire());
        }
        self.metrics.bytes_pushed.inc_by(len);
        Ok(PushAck { seq: push.seq })
    }

    /// Runs a partition scan on a blocking thread, handing chunks over a bounded channel.
    fn scan(&self, range: ScanRange) -> mpsc::Receiver<Result<(Vec<u8>, u32), String>> {
        let (tx, rx) = mpsc::channel(4);
        let buffer = self.buffer.clone();
        let chunk = self.cfg.read_chunk_bytes;
        tokio::task::spawn_blocking(move || {
            let res = buffer.scan_partition(&range, chunk, |c, n| tx.blocking_send(Ok((std::mem::take(c), n))).is_ok());
            if let Err(e) = res {
                let _ = tx.blocking_send(Err(e.to_string()));
            }
        });
        rx
    }

    /// Deletes this worker's objects for the partition that the master never recorded: left by
    /// a crash between upload and report. Safe because this worker spills a partition once at
    /// a time, so none of them is an upload in flight.
    async fn collect_garbage(&self, shuffle: &ShuffleKey, partition: u32, recorded: &[SegmentRef]) {
        use futures::TryStreamExt;
        let prefix = segment_prefix(shuffle, partition, &self.cfg.id);
        let dir = object_store::path::Path::from(shuffle_dir(shuffle));
        let listed: Result<Vec<object_store::ObjectMeta>, _> = self.store.list(Some(&dir)).try_collect().await;
        let Ok(objects) = listed else { return };
        for o in objects {
            let key = o.location.to_string();
            if key.starts_with(&prefix) && !recorded.iter().any(|s| s.object_key == key) {
                info!(%key, "deleting an unrecorded segment");
                let _ = self.store.delete(&o.location).await;
                self.metrics.error("garbage_segment");
            }
        }
    }

    /// A scan that also returns the keys it read, once it is done.
    #[allow(clippy::type_complexity)]
    fn scan_keys(
        &self,
        range: ScanRange,
    ) -> (mpsc::Receiver<Result<(Vec<u8>, u32), String>>, tokio::task::JoinHandle<ScannedKeys>) {
        let (tx, rx) = mpsc::channel(4);
        let buffer = self.buffer.clone();
        let chunk = self.cfg.read_chunk_bytes;
        let task = tokio::task::spawn_blocking(move || {
            let mut keys = ScannedKeys::default();
            let res = buffer.scan_partition_keys(
                &range,
                chunk,
                |c, n| tx.blocking_send(Ok((std::mem::take(c), n))).is_ok(),
                &mut keys,
            );
            if let Err(e) = res {
                let _ = tx.blocking_send(Err(e.to_string()));
            }
            keys
        });
        (rx, task)
    }

    async fn read(&self, req: OpenPartition, out: &mut Responder) -> Result<(), ProtoError> {
        let attempts: BTreeMap<u32, u64> = req.attempts.iter().map(|a| (a.map.0, a.attempt.0)).collect();
        let mut rx = self.scan(ScanRange {
            shuffle: req.shuffle,
            partition: req.partition.0,
            start_map: req.start_map.0,
            end_map: req.end_map.0,
            filter: AttemptFilter::Only(attempts),
        });
        let (mut records, mut bytes) = (0u64, 0u64);
        while let Some(item) = rx.recv().await {
            match item {
                Ok((chunk, n)) => {
                    out.send(&Message::Chunk(Chunk { records: n }), &chunk).await?;
                    records += n as u64;
                    bytes += chunk.len() as u64;
                }
                Err(e) => return out.error(werr(ErrorCode::Internal, e)).await,
            }
        }
        self.metrics.bytes_read.inc_by(bytes);
        out.send(&Message::EndOfStream(EndOfStream { records, bytes }), &[]).await
    }

    /// Spills every local partition of a shuffle (once at a time per shuffle).
    async fn spill_shuffle(self: Arc<Self>, shuffle: ShuffleKey, kind: SpillKind) {
        if !self.spilling.lock().unwrap_or_else(|p| p.into_inner()).insert(shuffle.clone()) {
            return;
        }
        let parts: Vec<u32> =
            self.buffer.partitions().into_iter().filter(|(s, _, _)| *s == shuffle).map(|(_, p, _)| p).collect();
        for p in parts {
            let mut delay = Duration::from_millis(100);
            loop {
                match self.spill_partition(&shuffle, p, kind).await {
                    Ok(()) => break,
                    Err(e) if e.retryable() => {
                        warn!(%shuffle, partition = p, "spill failed, retrying in {delay:?}: {e}");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(10));
                    }
                    Err(e) => {
                        warn!(%shuffle, partition = p, "spill failed: {e}");
                        break;
                    }
                }
            }
        }
        self.spilling.lock().unwrap_or_else(|p| p.into_inner()).remove(&shuffle);
    }

    /// Spills one partition, as the core allows: under pressure everything scanned goes
    /// (every attempt), exactly those keys are deleted, and the worker stays a read source for
    /// what arrives next; at seal only committed attempts go and the partition is dropped; in
    /// a drain the spill waits until no push to the partition is in flight.
    async fn spill_partition(&self, shuffle: &ShuffleKey, partition: u32, kind: SpillKind) -> Result<(), SpillError> {
        let plan: Result<ReadPlan, SpillError> = self
            .master
            .call_typed(GetReadPlan {
                shuffle: shuffle.clone(),
                start_partition: PartitionId(partition),
                end_partition: PartitionId(partition + 1),
                start_map: shuffle_proto::MapId(0),
                end_map: shuffle_proto::MapId(u32::MAX),
            })
            .await
            .map_err(|e| match e {
                TransportError::Remote(w) if w.code() == ErrorCode::UnknownShuffle => SpillError::Gone,
                other => SpillError::Transport(other),
            });
        let plan = match plan {
            Ok(p) => p,
            Err(SpillError::Gone) => {
                self.buffer.delete_shuffle(shuffle)?;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let part: PartKey = (shuffle.clone(), partition);
        let writing = plan.state == ShuffleState::Writing;
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
        // partition that ended meanwhile: read it again, or that spill's recorded segment would
        // look unrecorded to the garbage collection below.
        let plan: ReadPlan = self
            .master
            .call_typed(GetReadPlan {
                shuffle: shuffle.clone(),
                start_partition: PartitionId(partition),
                end_partition: PartitionId(partition + 1),
                start_map: shuffle_proto::MapId(0),
                end_map: shuffle_proto::MapId(u32::MAX),
            })
            .await?;
        let Some(pp) = plan.partitions.first() else { return Ok(()) };
        if !pp
            .sources
            .iter()
            .any(|s| s.primary.id == self.cfg.id || s.replica.as_ref().is_some_and(|r| r.id == self.cfg.id))
        {
            // The master no longer reads this copy (already spilled, or written off).
            debug!(%shuffle, partition, "local copy is not a read source: dropping it");
            self.buffer.delete_partition(shuffle, partition)?;
            return Ok(());
        }
        // A sealed shuffle keeps only committed attempts; a writing one (drain) keeps all,
        // since its maps may still commit.
        let filter = if kind == SpillKind::Pressure || writing {
            AttemptFilter::All
        } else {
            AttemptFilter::Only(pp.expected.iter().map(|m| (m.map.0, m.attempt.0)).collect())
        };
        self.collect_garbage(shuffle, partition, &pp.segments).await;
        let nonce = self.nonce.fetch_add(1, Ordering::Relaxed);
        let key = segment_key(shuffle, partition, &self.cfg.id, nonce);
        let mut upload = SegmentUpload::new(self.store.clone(), key.clone(), self.cfg.upload_part_bytes);
        let range = ScanRange { shuffle: shuffle.clone(), partition, start_map: 0, end_map: u32::MAX, filter };
        let (mut rx, keys) = self.scan_keys(range);
        while let Some(item) = rx.recv().await {
            let (chunk, _) = item.map_err(SpillError::Scan)?;
            upload.write_chunk(&chunk).await?;
        }
        let scanned = keys.await.map_err(|e| SpillError::Scan(e.to_string()))?;
        let segment = upload.finish().await?;
        fail::fail_point!("worker-after-upload", |_| Err(SpillError::Scan("failpoint after upload".into())));
        let spilled = segment.index_offset;
        let report = ReportSegment {
            worker: self.cfg.id.clone(),
            shuffle: shuffle.clone(),
            partition: PartitionId(partition),
            segment,
            last,
        };
        match self.master.call_typed::<Ack>(report).await {
            Ok(_) => {}
            Err(TransportError::Remote(w)) if w.code() == ErrorCode::UnknownShuffle => {
                // Removed meanwhile: the object is garbage.
                let _ = self.store.delete(&object_store::path::Path::from(key.as_str())).await;
            }
            Err(e) => return Err(e.into()),
        }
        fail::fail_point!("worker-after-report", |_| Err(SpillError::Scan("failpoint after report".into())));
        match delete {
            Delete::Scanned => self.buffer.delete_keys(shuffle, partition, &scanned)?,
            Delete::Partition => self.buffer.delete_partition(shuffle, partition)?,
        }
        self.metrics.bytes_spilled.inc_by(spilled);
        self.metrics.segments.inc();
        debug!(%shuffle, partition, bytes = spilled, %key, "partition spilled");
        Ok(())
    }
}

/// Something the core counts for a partition (an admitted push, a running spill), told to
/// the core as ended when dropped: done, failed or cancelled alike.
struct CoreHold<'a> {
    inner: &'a Inner,
    part: PartKey,
    end: fn(&mut WorkerCore, &PartKey),
}

impl Drop for CoreHold<'_> {
    fn drop(&mut self) {
        (self.end)(&mut self.inner.core(), &self.part);
    }
}

#[derive(Debug, thiserror::Error)]
enum SpillError {
    #[error("another spill of the partition is running")]
    InProgress,
    #[error("shuffle is gone")]
    Gone,
    #[error("scan: {0}")]
    Scan(String),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Store(#[from] shuffle_proto::objstore::StoreError),
    #[error(transparent)]
    Buffer(#[from] crate::buffer::BufferError),
}

impl SpillError {
    fn retryable(&self) -> bool {
        match self {
            SpillError::InProgress => true,
            SpillError::Transport(e) => e.retryable(),
            SpillError::Store(e) => e.retryable(),
            _ => false,
        }
    }
}

struct Server(Arc<Inner>);

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
                let t0 = std::time::Instant::now();
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
