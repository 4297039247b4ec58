//! The entry point: a connection to the master group (following leader hints), the workers
//! and the object store, shared by every map writer and partition reader of a process.

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use shuffle_proto::auth::Credential;
use shuffle_proto::messages::*;
use shuffle_proto::objstore::open_store;
use shuffle_proto::transport::{Client, ClientOptions, MasterClient, Tls, TlsSource};
use shuffle_proto::{AppId, AttemptId, MapId, ProtoError, ShuffleKey};

use crate::error::ClientError;
use crate::policy::RetryPolicy;
use crate::reader::PartitionStream;
use crate::writer::MapWriter;

/// A capability is replaced when it has less than this left.
pub const CAPABILITY_MARGIN_MS: u64 = 5 * 60 * 1000;

/// Whether an encoded capability is still valid `margin_ms` after `now_unix_ms` by its own
/// (unverified) claims. An empty one (no authentication) always is.
pub fn capability_lasts(cap: &[u8], now_unix_ms: u64, margin_ms: u64) -> bool {
    if cap.is_empty() {
        return true;
    }
    Credential::decode(cap)
        .ok()
        .and_then(|c| c.unverified_claims())
        .is_some_and(|c| c.expires_unix_ms > now_unix_ms.saturating_add(margin_ms))
}

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub masters: Vec<String>,
    pub tls: TlsSource,
    /// Where spilled segments are read from, overriding what the masters say (each read
    /// plan names the workers' object store). Credentials always come from this process's
    /// environment (`AWS_*`).
    pub object_store: Option<String>,
    /// Uncompressed bytes per pushed batch.
    pub batch_bytes: usize,
    /// Pushes in flight per map writer.
    pub max_in_flight: usize,
    pub retry: RetryPolicy,
    /// Bound on one call to a worker or master.
    pub call_timeout: Duration,
    /// How long to keep trying to reach a master.
    pub master_deadline: Duration,
    /// What this process presents to the masters: a tenant's secret (a driver, which then
    /// uses the app token it receives), an app token (an executor), or an admin's secret.
    pub credential: Option<Credential>,
    /// The application's batch key (Spark's IO encryption on): batches are sealed before they
    /// leave this process and opened only here ([`shuffle_proto::seal`]).
    pub cipher: Option<Arc<shuffle_proto::seal::BatchCipher>>,
}

impl ClientConfig {
    pub fn new(masters: Vec<String>, tls: TlsSource) -> Self {
        Self {
            masters,
            tls,
            object_store: None,
            batch_bytes: 256 << 10,
            max_in_flight: 16,
            retry: RetryPolicy::default(),
            call_timeout: Duration::from_secs(30),
            master_deadline: Duration::from_secs(30),
            credential: None,
            cipher: None,
        }
    }
}

pub(crate) struct Inner {
    pub cfg: ClientConfig,
    pub client: Client,
    pub master: MasterClient,
    /// The configured override, opened at start.
    store_override: Option<Arc<dyn ObjectStore>>,
    /// The store the masters named last, opened when first needed.
    store_named: std::sync::Mutex<Option<(String, Arc<dyn ObjectStore>)>>,
    /// The configured credential, encoded.
    configured: Arc<[u8]>,
    /// The app token received at registration: the credential of every later master call.
    app_token: std::sync::Mutex<Option<Arc<[u8]>>>,
}

impl Inner {
    /// The store segments are read from: the configured override, else the one a read plan
    /// names (`url`), opened once and reused while the masters name the same one.
    pub(crate) fn segment_store(&self, url: &str) -> Result<Arc<dyn ObjectStore>, ClientError> {
        if let Some(s) = &self.store_override {
            return Ok(s.clone());
        }
        if url.is_empty() {
            return Err(ClientError::Config(
                "data is spilled but the masters name no object store (no worker registered one) \
                 and none is configured (spark.shoal.objectStore.url)"
                    .into(),
            ));
        }
        let mut named = self.store_named.lock().unwrap_or_else(|p| p.into_inner());
        match &*named {
            Some((u, s)) if u == url => Ok(s.clone()),
            _ => {
                let s = open_store(url)?;
                *named = Some((url.to_string(), s.clone()));
                Ok(s)
            }
        }
    }

    fn master_auth(&self) -> Arc<[u8]> {
        let token = self.app_token.lock().unwrap_or_else(|p| p.into_inner()).clone();
        token.unwrap_or_else(|| self.configured.clone())
    }
}

/// A handle to a Shoal cluster; cheap to clone.
#[derive(Clone)]
pub struct ShuffleClient {
    pub(crate) inner: Arc<Inner>,
}

impl ShuffleClient {
    pub fn new(cfg: ClientConfig) -> Result<ShuffleClient, ClientError> {
        if cfg.masters.is_empty() {
            return Err(ClientError::Config("no master endpoints".into()));
        }
        let tls = shuffle_proto::transport::Tls::load(&cfg.tls)?;
        Self::with_tls(cfg, &tls)
    }

    pub fn with_tls(cfg: ClientConfig, tls: &Tls) -> Result<ShuffleClient, ClientError> {
        let opts = ClientOptions { call_timeout: cfg.call_timeout, ..Default::default() };
        let client = Client::new(tls, opts)?;
        let master = MasterClient::new(client.clone(), cfg.masters.clone(), cfg.master_deadline)?;
        let store_override = cfg.object_store.as_deref().map(open_store).transpose()?;
        let configured = match &cfg.credential {
            Some(c) => c.encode().map_err(|e| ClientError::Config(format!("credential: {e}")))?,
            None => Vec::new(),
        };
        let inner = Inner {
            cfg,
            client,
            master,
            store_override,
            store_named: Default::default(),
            configured: Arc::from(configured),
            app_token: Default::default(),
        };
        Ok(ShuffleClient { inner: Arc::new(inner) })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    pub(crate) async fn master<T: MessageType>(&self, msg: impl Into<Message>) -> Result<T, ClientError> {
        let auth = self.inner.master_auth();
        Ok(self.inner.master.call_typed_as(msg, &auth).await?)
    }

    /// Registers the application with the configured (tenant) credential; returns its token's
    /// text ("" without authentication), which executors present. Later calls of this client
    /// use the token.
    pub async fn register_app(&self, app: &AppId, lease: Duration) -> Result<String, ClientError> {
        let msg = RegisterApp { app: app.clone(), lease_ms: lease.as_millis() as u64 };
        let reply: AppRegistered = self.inner.master.call_typed_as(msg, &self.inner.configured).await?;
        if !reply.token.is_empty() {
            let token = Credential::from_text(&reply.token)
                .and_then(|c| c.encode())
                .map_err(|e| ClientError::Proto(ProtoError::Invalid(format!("app token from the master: {e}"))))?;
            *self.inner.app_token.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::from(token));
        }
        Ok(reply.token)
    }

    pub async fn app_heartbeat(&self, app: &AppId) -> Result<(), ClientError> {
        let _: Ack = self.master(AppHeartbeat { app: app.clone() }).await?;
        Ok(())
    }

    pub async fn unregister_app(&self, app: &AppId) -> Result<(), ClientError> {
        let _: Ack = self.master(UnregisterApp { app: app.clone() }).await?;
        Ok(())
    }

    /// Registers a shuffle (idempotent) and returns where its partitions go.
    pub async fn register_shuffle(
        &self,
        shuffle: &ShuffleKey,
        num_maps: u32,
        num_partitions: u32,
        replication: u8,
    ) -> Result<ShuffleAssignment, ClientError> {
        self.master(RegisterShuffle { shuffle: shuffle.clone(), num_maps, num_partitions, replication }).await
    }

    pub async fn assignment(&self, shuffle: &ShuffleKey) -> Result<ShuffleAssignment, ClientError> {
        self.master(GetAssignment { shuffle: shuffle.clone() }).await
    }

    pub async fn unregister_shuffle(&self, shuffle: &ShuffleKey) -> Result<(), ClientError> {
        let _: Ack = self.master(UnregisterShuffle { shuffle: shuffle.clone() }).await?;
        Ok(())
    }

    /// Commits a map attempt directly (the writer does this for its own output).
    pub async fn commit_map(&self, msg: CommitMap) -> Result<MapCommitted, ClientError> {
        self.master(msg).await
    }

    pub async fn status(&self) -> Result<ClusterStatus, ClientError> {
        self.master(GetStatus {}).await
    }

    /// A writer for one map attempt.
    pub fn map_writer(&self, assignment: &ShuffleAssignment, map: MapId, attempt: AttemptId) -> MapWriter {
        MapWriter::new(self.clone(), assignment, map, attempt)
    }

    /// Streams one partition's committed records (maps `[start_map, end_map)`), verified.
    pub fn read_partition(
        &self,
        shuffle: &ShuffleKey,
        partition: u32,
        start_map: u32,
        end_map: u32,
    ) -> PartitionStream {
        PartitionStream::open(self.clone(), shuffle.clone(), partition, start_map, end_map, None)
    }

    /// Streams one partition's records from exactly the maps named, each of which must have
    /// committed data to it (else `DataLost`): what a Spark reducer expects, by map index.
    pub fn read_partition_maps(&self, shuffle: &ShuffleKey, partition: u32, maps: &[u32]) -> PartitionStream {
        let start = maps.iter().copied().min().unwrap_or(0);
        let end = maps.iter().copied().max().map_or(0, |m| m.saturating_add(1));
        let only = maps.iter().copied().collect();
        PartitionStream::open(self.clone(), shuffle.clone(), partition, start, end, Some(only))
    }
}

#[cfg(test)]
mod tests {
    use shuffle_proto::auth::{Claims, Scope, SigningKeys, RIGHT_WRITE};

    use super::*;

    #[test]
    fn a_capability_is_replaced_before_it_runs_out() {
        let keys = SigningKeys::parse(&SigningKeys::generate_file(1).unwrap()).unwrap();
        let cap = |expires_unix_ms| {
            keys.sign(&Claims {
                tenant: "t".into(),
                app: AppId::new("a").unwrap(),
                incarnation: 1,
                scope: Scope::Shuffle { shuffle_id: 1, generation: 0, rights: RIGHT_WRITE },
                expires_unix_ms,
            })
            .unwrap()
            .encode()
            .unwrap()
        };
        let now = 1_000_000_000;
        assert!(capability_lasts(&cap(now + 2 * CAPABILITY_MARGIN_MS), now, CAPABILITY_MARGIN_MS));
        assert!(!capability_lasts(&cap(now + CAPABILITY_MARGIN_MS / 2), now, CAPABILITY_MARGIN_MS));
        assert!(!capability_lasts(&cap(now - 1), now, CAPABILITY_MARGIN_MS));
        assert!(!capability_lasts(b"garbage", now, CAPABILITY_MARGIN_MS), "unreadable: fetch a fresh one");
        assert!(capability_lasts(&[], now, CAPABILITY_MARGIN_MS), "no authentication, nothing to refresh");
    }
}
