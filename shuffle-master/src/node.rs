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
    /// Every master's id and address, this one included. Used only to found a new group: a
    /// master with a Raft log takes the membership (and every address) from it.
    pub peers: BTreeMap<NodeId, String>,
    /// Never found a group: with an empty store, wait to be added by the leader
    /// (`shoal masters add`). `peers` need not list this master then.
    pub join: bool,
    pub data_dir: PathBuf,
    pub tls: TlsSource,
    pub heartbeat_interval: Duration,
    pub worker_timeout: Duration,
    /// Raft election timeout (the lower bound; the upper is twice that).
    pub election_timeout: Duration,
    /// Build a snapshot (and purge the log before it) every this many entries.
    pub snapshot_every: u64,
    /// Copies of each batch for shuffles registered without a choice (1 or 2).
    pub replication: u8,
    /// Most commands in one group-committed Raft entry (1: no grouping).
    pub commit_batch: usize,
    /// Longest application lease granted; longer requests are clamped to it.
    pub max_app_lease: Duration,
    /// Which connections the master's server takes.
    pub connections: shuffle_proto::admission::AdmissionLimits,
    /// Where to serve the status page, `/status.json`, `/metrics` and `/healthz`.
    pub http_listen: Option<SocketAddr>,
    pub auth: AuthConfig,
}

/// Application and admin authentication (see docs/security.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthConfig {
    /// Every caller may make every call that needs no node identity. Experiments only.
    Disabled,
    Files {
        /// `principals.toml`: tenants and admins by the SHA-256 of their secrets.
        principals: PathBuf,
        /// `signing-keys.toml`: the Ed25519 keys that sign tokens and capabilities.
        signing_keys: PathBuf,
        /// How long an application token is valid.
        token_ttl: Duration,
        /// How long a capability is valid (clients fetch fresh ones before it runs out).
        capability_ttl: Duration,
    },
}

impl AuthConfig {
    pub fn files(principals: PathBuf, signing_keys: PathBuf) -> AuthConfig {
        AuthConfig::Files {
            principals,
            signing_keys,
            token_ttl: Duration::from_secs(7 * 24 * 3600),
            capability_ttl: Duration::from_secs(3600),
        }
    }

    /// Loads the key material; errors name the file, never a secret.
    pub fn load(&self) -> Result<Option<crate::service::MasterAuth>, StartError> {
        use shuffle_proto::auth::{Authenticator, Issuer, Principals, SigningKeys, Verifier};
        match self {
            AuthConfig::Disabled => Ok(None),
            AuthConfig::Files { principals, signing_keys, token_ttl, capability_ttl } => {
                let principals = Principals::load(principals).map_err(|e| StartError::Config(e.to_string()))?;
                let keys = SigningKeys::load(signing_keys).map_err(|e| StartError::Config(e.to_string()))?;
                let verifier = Arc::new(Verifier::new(&keys.public_keys()));
                Ok(Some(crate::service::MasterAuth {
                    authn: Authenticator { verifier, principals: Some(principals) },
                    issuer: Issuer {
                        keys,
                        token_ttl_ms: token_ttl.as_millis() as u64,
                        capability_ttl_ms: capability_ttl.as_millis() as u64,
                    },
                }))
            }
        }
    }
}

impl MasterConfig {
    /// A single-master config for tests and local clusters.
    pub fn single(listen: SocketAddr, data_dir: PathBuf, tls: TlsSource) -> Self {
        Self {
            id: 1,
            listen,
            peers: BTreeMap::from([(1, listen.to_string())]),
            join: false,
            data_dir,
            tls,
            heartbeat_interval: Duration::from_secs(1),
            worker_timeout: Duration::from_secs(10),
            election_timeout: Duration::from_millis(500),
            snapshot_every: 10_000,
            replication: 1,
            commit_batch: crate::group::Limits::default().max_commands,
            max_app_lease: crate::config::DEFAULT_MAX_APP_LEASE,
            connections: Default::default(),
            http_listen: None,
            auth: AuthConfig::Disabled,
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
        if !cfg.join && !cfg.peers.contains_key(&cfg.id) {
            return Err(StartError::Config(format!("peers does not list this master's id {}", cfg.id)));
        }
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| StartError::Storage(format!("{}: {e}", cfg.data_dir.display())))?;
        let db = open_db(&cfg.data_dir.join("raft")).map_err(|e| StartError::Storage(e.to_string()))?;
        let log = LogStore::new(db.clone());
        let sm = StateMachineStore::open(db).map_err(|e| StartError::Storage(e.to_string()))?;
        let shared = sm.shared();

        let tls = Tls::load(&cfg.tls)?;
        let auth = cfg.auth.load()?;
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
        let raft = Raft::new(cfg.id, Arc::new(raft_config), Network::new(client.clone()), log, sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;

        let opts = ServiceOptions {
            heartbeat_interval: cfg.heartbeat_interval,
            worker_timeout: cfg.worker_timeout,
            replication: cfg.replication,
            commit_batch: cfg.commit_batch,
            max_app_lease: cfg.max_app_lease,
        };
        let service = Arc::new(MasterService::new(cfg.id, raft.clone(), shared, clock, opts, auth, client));
        let server_opts = ServerOptions { admission: cfg.connections.clone(), ..ServerOptions::for_tls(&tls) };
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

        // The lowest id bootstraps a new group; the others learn the membership from it. A
        // joining master (a replacement, a new one) never does: it waits for the leader.
        let initialized = raft.is_initialized().await.map_err(|e| StartError::Raft(e.to_string()))?;
        let lowest = cfg.peers.keys().next().copied();
        if !initialized && cfg.join {
            info!(id = cfg.id, %addr, "empty store in join mode: waiting to be added (shoal masters add)");
        } else if !initialized && lowest == Some(cfg.id) {
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

    /// Resolves when the Raft node stops by itself, with the reason: a fatal storage error (a
    /// full or failed disk) leaves this master unable to take part in the group, so the binary
    /// exits and its supervisor restarts it once the disk is usable again; the other masters
    /// go on serving meanwhile.
    pub async fn stopped(&self) -> String {
        let mut rx = self.service.raft().metrics();
        loop {
            if let Err(e) = &rx.borrow_and_update().running_state {
                return e.to_string();
            }
            if rx.changed().await.is_err() {
                return "the Raft node is gone".into();
            }
        }
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
