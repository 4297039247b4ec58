//! A worker process: a thin executor around [`WorkerCore`], which makes every decision about
//! pushes, spills and the worker's lifecycle. This module wires the parts and owns the shared
//! state; each concern lives in its own file:
//!
//! - [`server`]: the QUIC data server: authorization, push checks and stores, partition reads.
//! - [`membership`]: registration, heartbeats, the master's desired state and commands.
//! - [`spilling`]: seal, drain and pressure spills to the object store.
//! - [`sweep`]: collecting objects nobody will read.
//!
//! Invariants:
//! - A push is checked before anything is written: batch header sane, shuffle writing,
//!   partition owned by this worker at an epoch not older than the push's, space available.
//!   A push that fails a check writes nothing and gets a typed error whose code says what the
//!   client should do ([`shuffle_proto::Remedy`]).
//! - Spill order: upload the segment, then record it in the master, then delete exactly the
//!   keys the segment holds. A crash in between leaves either an unrecorded object (garbage) or
//!   data both local and spilled (the master's record decides which one readers use).
//! - A draining worker takes no pushes, spills everything it holds once no push to the
//!   partition is in flight, and stops once the master calls it Decommissioned.

mod membership;
mod server;
mod spilling;
mod sweep;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::ObjectStore;
use shuffle_proto::auth::Verifier;
use shuffle_proto::http::{serve_http, Page};
use shuffle_proto::objstore::open_store_observed;
use shuffle_proto::retry::{retry, Backoff};
use shuffle_proto::transport::{
    serve, server_endpoint, Client, ClientOptions, MasterClient, ServerOptions, Tls, TransportError,
    MASTER_ATTEMPT_TIMEOUT,
};
use shuffle_proto::ShuffleKey;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::buffer::Buffer;
pub use crate::config::WorkerConfig;
use crate::core::{CoreLimits, PartKey, WorkerCore};
use crate::incarnation::{Incarnations, Verdict};
use crate::metrics::Metrics;
pub use spilling::SpillError;

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

/// What every part of the worker shares.
struct Inner {
    cfg: WorkerConfig,
    buffer: Arc<Buffer>,
    store: Arc<dyn ObjectStore>,
    master: MasterClient,
    assignments: Mutex<HashMap<ShuffleKey, Arc<server::Assigned>>>,
    /// One lock per shuffle orders its assignment fetches and guards when it was last
    /// fetched, which bounds the refetches a peer can cause (see `server::fetch_lock`).
    fetch_locks: Mutex<HashMap<ShuffleKey, server::FetchLock>>,
    /// The registration of each app the local data belongs to ([`crate::incarnation`]):
    /// requests hold it shared while they store or read; a newer registration's first request
    /// takes it exclusively to delete the older one's data.
    incarnations: tokio::sync::RwLock<Incarnations>,
    /// Blocking threads for scan steps and for batch stores: separate bounded pools, so
    /// neither kind of work takes the other's threads (`server::SCAN_SLOTS`, `STORE_SLOTS`).
    scan_slots: Arc<tokio::sync::Semaphore>,
    store_slots: Arc<tokio::sync::Semaphore>,
    /// Every decision about pushes, spills and the worker's lifecycle (see [`crate::core`]).
    core: Mutex<WorkerCore>,
    spilling: Mutex<HashSet<ShuffleKey>>,
    /// Held by the running sweep: one at a time per worker.
    sweeping: tokio::sync::Mutex<()>,
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

impl WorkerNode {
    pub async fn start(cfg: WorkerConfig) -> Result<WorkerNode, WorkerError> {
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| WorkerError::Config(format!("{}: {e}", cfg.data_dir.display())))?;
        let buffer = Buffer::open(&cfg.data_dir.join("buffer"), cfg.sync_writes)?;
        let incarnations = crate::incarnation::load(&cfg.data_dir.join(INCARNATIONS_FILE))
            .map_err(|e| WorkerError::Config(format!("{}: {e}", cfg.data_dir.join(INCARNATIONS_FILE).display())))?;
        let metrics = Metrics::default();
        let store = open_store_observed(&cfg.object_store, Some(Arc::new(metrics.store.clone())))?;
        let tls = Tls::load(&cfg.tls)?;
        let client = Client::new(&tls, ClientOptions::default())?;
        // A try at a dead master must end well within the masters' worker timeout (a few
        // heartbeats), or a leader killed outright gets this worker declared lost.
        let attempt = (cfg.heartbeat_interval * 5).clamp(Duration::from_millis(500), MASTER_ATTEMPT_TIMEOUT);
        let master =
            MasterClient::new(client, cfg.masters.clone(), Duration::from_secs(30))?.with_attempt_timeout(attempt);
        let server_opts = ServerOptions {
            stall_timeout: cfg.read_stall_timeout,
            admission: cfg.connections.clone(),
            ..ServerOptions::for_tls(&tls)
        };
        let endpoint = server_endpoint(cfg.listen, &tls, &server_opts)?;
        let addr = endpoint.local_addr().map_err(|e| WorkerError::Config(e.to_string()))?;
        let (done_tx, done_rx) = watch::channel(false);
        let limits = CoreLimits {
            max_buffered_bytes: cfg.max_buffered_bytes,
            disk_reserve_bytes: cfg.disk_reserve_bytes,
            split_bytes: cfg.partition_split_bytes,
        };
        let inner = Arc::new(Inner {
            cfg,
            buffer,
            store,
            master,
            assignments: Default::default(),
            fetch_locks: Default::default(),
            incarnations: tokio::sync::RwLock::new(incarnations),
            scan_slots: Arc::new(tokio::sync::Semaphore::new(server::SCAN_SLOTS)),
            store_slots: Arc::new(tokio::sync::Semaphore::new(server::STORE_SLOTS)),
            core: Mutex::new(WorkerCore::new(limits)),
            spilling: Default::default(),
            sweeping: Default::default(),
            metrics,
            done: done_tx,
            verifier: Arc::new(Verifier::default()),
            auth_required: AtomicBool::new(true),
        });
        // Masters may come up after their workers (a fresh cluster, a rolling restart): keep
        // trying while the failure is one that time can fix; a refusal fails the start.
        retry(
            &Backoff::REGISTER,
            || inner.register(),
            TransportError::retryable,
            |e, d| warn!("cannot register with the masters yet: {e}; retrying in {d:?}"),
        )
        .await?;
        let server = Arc::new(server::Server(inner.clone()));
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
                let (bound, task) = serve_status(&inner, a).await?;
                tasks.push(task);
                Some(bound)
            }
            None => None,
        };
        info!(worker = %inner.cfg.id, %addr, ?http_addr, held = inner.buffer.bytes_held(), "worker serving");
        Ok(WorkerNode { inner, addr, http_addr, endpoint, tasks, done: done_rx })
    }

    pub fn id(&self) -> &shuffle_proto::WorkerId {
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
    pub async fn sweep_now(&self) -> Result<usize, spilling::SpillError> {
        self.inner.sweep().await
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

/// `/metrics`, `/healthz` and `/readyz` (503 while draining, so Kubernetes stops routing).
async fn serve_status(
    inner: &Arc<Inner>,
    at: SocketAddr,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), WorkerError> {
    let weak = Arc::downgrade(inner);
    serve_http(at, move |path| match (path, weak.upgrade()) {
        ("/metrics", Some(i)) => Page::ok("text/plain; version=0.0.4", i.scrape()),
        ("/healthz", Some(_)) => Page::ok("text/plain", "ok\n".into()),
        ("/readyz", Some(i)) if i.core().ready() => Page::ok("text/plain", "ready\n".into()),
        ("/readyz", Some(_)) => Page { status: 503, content_type: "text/plain", body: "draining\n".into() },
        _ => Page::not_found(),
    })
    .await
    .map_err(|e| WorkerError::Config(format!("http_listen {at}: {e}")))
}

impl Inner {
    fn scrape(&self) -> String {
        self.metrics.bytes_buffered.set(self.buffer.bytes_held() as i64);
        self.metrics.partitions.set(self.buffer.partitions().len() as i64);
        self.metrics.value_log_files.set(self.buffer.value_log_usage().1 as i64);
        self.metrics.encode()
    }

    fn core(&self) -> std::sync::MutexGuard<'_, WorkerCore> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a request of `app`'s registration `incarnation` (rules in
    /// [`crate::incarnation`]): refuses an earlier registration, deletes every local batch of
    /// an earlier one before serving a later one. The guard is held while the request stores
    /// or reads, so no deletion runs under it and no batch of another registration lands.
    pub(super) async fn enter_incarnation(
        &self,
        app: &shuffle_proto::AppId,
        incarnation: u64,
    ) -> Result<tokio::sync::RwLockReadGuard<'_, Incarnations>, shuffle_proto::WireError> {
        let g = self.incarnations.read().await;
        match g.check(app, incarnation) {
            Verdict::Current => return Ok(g),
            Verdict::Superseded => return Err(server::superseded()),
            Verdict::First | Verdict::Newer => drop(g),
        }
        let mut w = self.incarnations.write().await;
        match w.check(app, incarnation) {
            Verdict::Current => return Ok(w.downgrade()),
            Verdict::Superseded => return Err(server::superseded()),
            Verdict::Newer => self.drop_app_data(app).await?,
            Verdict::First => {}
        }
        let mut next = w.clone();
        next.record(app, incarnation);
        // Records of apps with no local data left go (their next request records afresh).
        let holding: HashSet<shuffle_proto::AppId> = self.buffer.shuffles().into_iter().map(|s| s.app).collect();
        next.retain(|a| a == app || holding.contains(a));
        let path = self.cfg.data_dir.join(INCARNATIONS_FILE);
        let saved = {
            let next = next.clone();
            tokio::task::spawn_blocking(move || crate::incarnation::save(&path, &next)).await
        };
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!("recording an application's registration failed: {e}");
                return Err(shuffle_proto::WireError::new(
                    shuffle_proto::ErrorCode::Internal,
                    "the worker could not record the application's registration",
                ));
            }
            Err(_) => {
                return Err(shuffle_proto::WireError::new(shuffle_proto::ErrorCode::Internal, "recording stopped"))
            }
        }
        *w = next;
        info!(%app, incarnation, "serving a new registration of the application");
        Ok(w.downgrade())
    }

    /// Deletes every local batch of `app` (an earlier registration's, now over).
    async fn drop_app_data(&self, app: &shuffle_proto::AppId) -> Result<(), shuffle_proto::WireError> {
        let shuffles: Vec<ShuffleKey> = self.buffer.shuffles().into_iter().filter(|s| &s.app == app).collect();
        for s in &shuffles {
            self.core().forget_shuffle(s);
            self.forget(s);
        }
        let buffer = self.buffer.clone();
        let n = shuffles.len();
        let deleted = tokio::task::spawn_blocking(move || shuffles.iter().try_for_each(|s| buffer.delete_shuffle(s)))
            .await
            .map_err(|_| shuffle_proto::WireError::new(shuffle_proto::ErrorCode::Internal, "deleting stopped"))?;
        deleted.map_err(|e| {
            warn!(%app, "deleting an earlier registration's data failed: {e}");
            e.wire()
        })?;
        if n > 0 {
            info!(%app, shuffles = n, "deleted the data of an earlier registration of the application");
        }
        Ok(())
    }
}

/// Where the worker keeps the registration each app's local data belongs to.
const INCARNATIONS_FILE: &str = "incarnations";

/// What a failpoint does: `return` fails the step with `injected`; `return(crash)` aborts the
/// process on the spot, as a power cut would, so tests can restart it on the same data dir.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn fault<T>(arg: Option<String>, injected: T) -> T {
    if arg.as_deref() == Some("crash") {
        std::process::abort();
    }
    injected
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
