//! A master process: storage, Raft, the QUIC server and housekeeping, wired together.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, Config, SnapshotPolicy};
use shuffle_proto::transport::{serve, server_endpoint, Client, ClientOptions, ServerOptions, Tls, TlsSource};
use tracing::info;

use crate::raft::{Network, NodeId, Raft};
use crate::service::{Clock, MasterService, MonotonicClock, ServiceOptions};
use crate::store::{open_db, LogStore, StateMachineStore};

/// Everything a master needs to start.
#[derive(Clone, Debug)]
pub struct MasterConfig {
    pub id: NodeId,
    pub listen: SocketAddr,
    /// Every master's id and address, this one included.
    pub peers: BTreeMap<NodeId, String>,
    pub data_dir: PathBuf,
    pub tls: TlsSource,
    pub heartbeat_interval: Duration,
    pub worker_timeout: Duration,
    /// Raft election timeout (the lower bound; the upper is twice that).
    pub election_timeout: Duration,
    /// Build a snapshot (and purge the log before it) every this many entries.
    pub snapshot_every: u64,
    /// Where to serve the status page, `/status.json`, `/metrics` and `/healthz`.
    pub http_listen: Option<SocketAddr>,
}

impl MasterConfig {
    /// A single-master config for tests and local clusters.
    pub fn single(listen: SocketAddr, data_dir: PathBuf, tls: TlsSource) -> Self {
        Self {
            id: 1,
            listen,
            peers: BTreeMap::from([(1, listen.to_string())]),
            data_dir,
            tls,
            heartbeat_interval: Duration::from_secs(1),
            worker_timeout: Duration::from_secs(10),
            election_timeout: Duration::from_millis(500),
            snapshot_every: 10_000,
            http_listen: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("config: {0}")]
    Config(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("transport: {0}")]
    Transport(#[from] shuffle_proto::transport::TransportError),
    #[error("raft: {0}")]
    Raft(String),
}

/// A running master.
pub struct MasterNode {
    pub id: NodeId,
    pub addr: SocketAddr,
    /// Where the HTTP pages are served, if enabled.
    pub http_addr: Option<SocketAddr>,
    pub service: Arc<MasterService>,
    endpoint: quinn::Endpoint,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl MasterNode {
    pub async fn start(cfg: MasterConfig) -> Result<MasterNode, StartError> {
        Self::start_with_clock(cfg, Arc::new(MonotonicClock::default())).await
    }

    pub async fn start_with_clock(cfg: MasterConfig, clock: Arc<dyn Clock>) -> Result<MasterNode, StartError> {
        if !cfg.peers.contains_key(&cfg.id) {
            return Err(StartError::Config(format!("peers does not list this master's id {}", cfg.id)));
        }
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| StartError::Storage(format!("{}: {e}", cfg.data_dir.display())))?;
        let db = open_db(&cfg.data_dir.join("raft")).map_err(|e| StartError::Storage(e.to_string()))?;
        let log = LogStore::new(db.clone());
        let sm = StateMachineStore::open(db).map_err(|e| StartError::Storage(e.to_string()))?;
        let shared = sm.shared();

        let tls = Tls::load(&cfg.tls)?;
        let client = Client::new(&tls, ClientOptions::default())?;
        let election = cfg.election_timeout.as_millis() as u64;
        let raft_config = Config {
            cluster_name: "shoal".into(),
            heartbeat_interval: (election / 4).max(20),
            election_timeout_min: election,
            election_timeout_max: election * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
            max_in_snapshot_log_to_keep: (cfg.snapshot_every / 10).max(10),
            install_snapshot_timeout: 5_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
        let raft = Raft::new(cfg.id, Arc::new(raft_config), Network::new(client), log, sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;

        let opts = ServiceOptions { heartbeat_interval: cfg.heartbeat_interval, worker_timeout: cfg.worker_timeout };
        let service = Arc::new(MasterService::new(cfg.id, raft.clone(), shared, clock, opts));
        let server_opts = ServerOptions::for_tls(&tls);
        let endpoint = server_endpoint(cfg.listen, &tls, &server_opts)?;
        let addr = endpoint.local_addr().map_err(|e| StartError::Config(e.to_string()))?;
        let mut tasks = vec![tokio::spawn(serve(endpoint.clone(), service.clone(), server_opts))];
        tasks.push(tokio::spawn(service.clone().run_housekeeping(cfg.heartbeat_interval / 2)));
        let http_addr = match cfg.http_listen {
            Some(a) => {
                let weak = Arc::downgrade(&service);
                let (bound, task) = shuffle_proto::http::serve_http(a, move |path| crate::web::page(&weak, path))
                    .await
                    .map_err(|e| StartError::Config(format!("http_listen {a}: {e}")))?;
                tasks.push(task);
                Some(bound)
            }
            None => None,
        };

        // The lowest id bootstraps a new group; the others learn the membership from it.
        let initialized = raft.is_initialized().await.map_err(|e| StartError::Raft(e.to_string()))?;
        let lowest = cfg.peers.keys().next().copied();
        if !initialized && lowest == Some(cfg.id) {
            let members: BTreeMap<NodeId, BasicNode> =
                cfg.peers.iter().map(|(id, addr)| (*id, BasicNode::new(addr))).collect();
            info!(id = cfg.id, ?members, "initializing a new master group");
            raft.initialize(members).await.map_err(|e| StartError::Raft(e.to_string()))?;
        }
        info!(id = cfg.id, %addr, "master serving");
        Ok(MasterNode { id: cfg.id, addr, http_addr, service, endpoint, tasks })
    }

    pub fn raft(&self) -> &Raft {
        self.service.raft()
    }

    /// Stops serving and shuts Raft down.
    pub async fn shutdown(self) {
        self.endpoint.close(0u32.into(), b"shutdown");
        let _ = self.service.raft().shutdown().await;
        for t in self.tasks {
            t.abort();
        }
    }
}
