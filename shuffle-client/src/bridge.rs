//! The process-wide state behind the JVM entry points, free of JNI types so it is tested
//! without a JVM.
//!
//! Invariants:
//! - One async runtime per process, made by the first client opened; every entry point runs its
//!   work on it with `block_on` from the calling (JVM) thread, never from a runtime thread.
//! - Handles are opaque, positive ids from one counter, never reused: a closed, unknown or
//!   wrong-kind handle is a typed error (`BadHandle`), never a dangling pointer. Closing removes
//!   the object, so a handle is closed exactly once; a second close is the same error.
//! - Clients are shared by configuration: every task of an executor with the same settings uses
//!   one QUIC endpoint and one connection per worker.
//! - A writer's or reader's own mutex serialises the calls made on it; the registry lock is
//!   held only to look a handle up, never across I/O.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use shuffle_proto::messages::ShuffleAssignment;
use shuffle_proto::transport::TlsSource;
use shuffle_proto::{AppId, AttemptId, ErrorCode, MapId, Remedy, ShuffleKey};

use shuffle_proto::auth::{now_unix_ms, Credential};

use crate::client::{capability_lasts, ClientConfig, ShuffleClient, CAPABILITY_MARGIN_MS};
use crate::error::{ClientError, ErrorKind};
use crate::reader::PartitionStream;
use crate::writer::MapWriter;

/// Bound on the configuration text handed over by the JVM.
pub const MAX_CONFIG_BYTES: usize = 64 << 10;
/// A read buffer asked for is never smaller than this, so the JVM grows its buffer rarely.
pub const MIN_READ_BUFFER: usize = 64 << 10;
/// Bound on the maps named in one read.
pub const MAX_READ_MAPS: usize = 1 << 22;

/// Client settings as `key=value` lines (what the Spark plugin sends).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeConfig {
    pub masters: Vec<String>,
    pub tls: TlsSource,
    pub object_store: Option<String>,
    pub max_in_flight: usize,
    pub call_timeout: Duration,
    pub master_deadline: Duration,
    pub runtime_threads: usize,
    pub log: String,
    /// `credential_file=PATH` (a tenant's `name:secret`, the driver), `app_token=TEXT` (the
    /// app token the driver handed its executors through the shuffle handle), or else the
    /// `SHOAL_CREDENTIAL` environment variable.
    pub credential: Option<Credential>,
    /// `io_encryption_key=BASE64URL`: the application's IO encryption key (Spark's, with
    /// `spark.io.encryption.enabled`); batches are sealed with a key derived from it.
    pub io_key: Option<IoKey>,
}

/// An application's IO encryption key; never printed.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IoKey(Vec<u8>);

impl std::fmt::Debug for IoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IoKey(***)")
    }
}

impl BridgeConfig {
    /// Parses `key=value` lines; unknown keys and bad values are refused, so a typo in a
    /// Spark setting is an error at start-up rather than a silently ignored option.
    pub fn parse(text: &str) -> Result<BridgeConfig, ClientError> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(ClientError::Config(format!("configuration of {} bytes is too large", text.len())));
        }
        let bad = |k: &str, v: &str, why: &str| ClientError::Config(format!("{k}={v}: {why}"));
        let mut masters = Vec::new();
        let mut ca = None;
        let mut insecure = false;
        let mut cfg = BridgeConfig {
            masters: Vec::new(),
            tls: TlsSource::Insecure,
            object_store: None,
            max_in_flight: 16,
            call_timeout: Duration::from_secs(30),
            master_deadline: Duration::from_secs(60),
            runtime_threads: 2,
            log: "warn".into(),
            credential: None,
            io_key: None,
        };
        let mut credential_file: Option<String> = None;
        let mut app_token: Option<String> = None;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (k, v) =
                line.split_once('=').ok_or_else(|| ClientError::Config(format!("`{line}` is not key=value")))?;
            let (k, v) = (k.trim(), v.trim());
            match k {
                "masters" => {
                    masters = v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
                }
                "tls.ca" => ca = (!v.is_empty()).then(|| v.into()),
                "tls.insecure" => insecure = v.parse().map_err(|_| bad(k, v, "expected true or false"))?,
                "object_store" => cfg.object_store = (!v.is_empty()).then(|| v.to_string()),
                "max_in_flight" => {
                    cfg.max_in_flight = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=1024).contains(n))
                        .ok_or_else(|| bad(k, v, "expected 1..=1024"))?;
                }
                "call_timeout_ms" => cfg.call_timeout = millis(k, v)?,
                "master_deadline_ms" => cfg.master_deadline = millis(k, v)?,
                "runtime_threads" => {
                    cfg.runtime_threads =
                        v.parse().ok().filter(|n| (1..=64).contains(n)).ok_or_else(|| bad(k, v, "expected 1..=64"))?;
                }
                "log" => cfg.log = v.to_string(),
                "credential_file" => credential_file = (!v.is_empty()).then(|| v.to_string()),
                // Never echoed in errors: it is a secret.
                "app_token" => app_token = (!v.is_empty()).then(|| v.to_string()),
                // Never echoed either.
                "io_encryption_key" if v.is_empty() => cfg.io_key = None,
                "io_encryption_key" => {
                    use base64::Engine;
                    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(v)
                        .ok()
                        .filter(|k| matches!(k.len(), 16 | 24 | 32))
                        .ok_or_else(|| {
                            ClientError::Config("io_encryption_key: expected 16, 24 or 32 bytes in base64url".into())
                        })?;
                    cfg.io_key = Some(IoKey(key));
                }
                _ => return Err(ClientError::Config(format!("unknown setting `{k}`"))),
            }
        }
        if masters.is_empty() {
            return Err(ClientError::Config("no master endpoints (spark.shoal.master.endpoints)".into()));
        }
        cfg.masters = masters;
        cfg.credential = match (credential_file, app_token) {
            (Some(_), Some(_)) => {
                return Err(ClientError::Config("credential_file and app_token exclude each other".into()))
            }
            (None, Some(t)) => Some(
                Credential::from_text(&t).map_err(|_| ClientError::Config("app_token: not a Shoal token".into()))?,
            ),
            (Some(path), None) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    ClientError::Config(format!("credential file {path} (spark.shoal.auth.credentialFile): {e}"))
                })?;
                Some(
                    Credential::parse_secret(&text).map_err(|e| {
                        ClientError::Config(format!("credential file {path}: {e} (expected name:secret)"))
                    })?,
                )
            }
            (None, None) => match std::env::var("SHOAL_CREDENTIAL") {
                Ok(text) if !text.trim().is_empty() => Some(
                    Credential::parse_secret(&text)
                        .map_err(|e| ClientError::Config(format!("SHOAL_CREDENTIAL: {e} (expected name:secret)")))?,
                ),
                _ => None,
            },
        };
        cfg.tls = match (ca, insecure) {
            (Some(ca), false) => TlsSource::CaOnly { ca },
            (None, true) => TlsSource::Insecure,
            (Some(_), true) => return Err(ClientError::Config("tls.ca and tls.insecure exclude each other".into())),
            (None, false) => {
                return Err(ClientError::Config(
                    "no TLS trust: set spark.shoal.tls.ca (or spark.shoal.tls.insecure=true for experiments)".into(),
                ))
            }
        };
        Ok(cfg)
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new(self.masters.clone(), self.tls.clone());
        c.object_store = self.object_store.clone();
        c.max_in_flight = self.max_in_flight;
        c.call_timeout = self.call_timeout;
        c.master_deadline = self.master_deadline;
        c.credential = self.credential.clone();
        c
    }

    /// The client settings, with the batch cipher derived from the IO key if one was given.
    fn client_config_sealed(&self) -> Result<ClientConfig, ClientError> {
        let mut c = self.client_config();
        if let Some(k) = &self.io_key {
            let cipher = shuffle_proto::seal::BatchCipher::from_app_key(&k.0)
                .map_err(|e| ClientError::Config(format!("io_encryption_key: {e}")))?;
            c.cipher = Some(Arc::new(cipher));
        }
        Ok(c)
    }
}

fn millis(k: &str, v: &str) -> Result<Duration, ClientError> {
    v.parse::<u64>()
        .ok()
        .filter(|n| (1..=86_400_000).contains(n))
        .map(Duration::from_millis)
        .ok_or_else(|| ClientError::Config(format!("{k}={v}: expected milliseconds in 1..=86400000")))
}

/// A shuffle's dimensions as Spark sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShuffleShape {
    pub num_maps: u32,
    pub num_partitions: u32,
    pub replication: u8,
}

/// What one read call gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadNext {
    /// This many bytes (one whole batch) were copied into the buffer.
    Copied(usize),
    /// The next batch needs a buffer of at least this many bytes; nothing was consumed.
    NeedCapacity(usize),
    /// The partition ended, verified.
    End,
}

/// What a commit gave, flattened for the JVM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub accepted: bool,
    pub wire_bytes: u64,
    /// Uncompressed bytes per partition.
    pub partition_bytes: Vec<u64>,
    /// Compressed bytes per partition: the sizes Spark's MapStatus carries, as its own shuffle
    /// files would, so AQE settings tuned for the sort shuffle mean the same.
    pub partition_wire_bytes: Vec<u64>,
}

struct ReaderSlot {
    stream: PartitionStream,
    pending: Option<Vec<u8>>,
}

enum Object {
    Client { client: ShuffleClient },
    Writer(Arc<Mutex<Option<MapWriter>>>),
    Reader(Arc<Mutex<ReaderSlot>>),
}

/// The registry of live objects and the runtime they run on.
pub struct Bridge {
    rt: tokio::runtime::Runtime,
    next: AtomicI64,
    objects: Mutex<HashMap<i64, Object>>,
    by_config: Mutex<HashMap<BridgeConfig, i64>>,
    assignments: Mutex<HashMap<(i64, ShuffleKey), ShuffleAssignment>>,
}

static BRIDGE: OnceLock<Bridge> = OnceLock::new();

impl std::hash::Hash for BridgeConfig {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.masters.hash(h);
        self.tls.hash(h);
        self.object_store.hash(h);
        self.max_in_flight.hash(h);
        self.call_timeout.hash(h);
        self.master_deadline.hash(h);
        self.io_key.hash(h);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock is caught at the entry point; the data stays usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn bad_handle(h: i64) -> ClientError {
    ClientError::BadHandle(h)
}

fn is_code(e: &ClientError, code: ErrorCode) -> bool {
    e.code() == Some(code)
}

/// A failure as the JVM receives it: the exception class of its kind, with the wire code and
/// the remedy its constructor `(String message, int code, String codeName, int remedy)` takes.
/// Java only reads these; the classification stays in Rust.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JavaError {
    /// JNI name of the `io.shoal.spark.ShoalException` subclass.
    pub class: &'static str,
    /// The wire code's number; 0 when the failure has none.
    pub code: i32,
    /// The wire code's name; "none" when the failure has none.
    pub code_name: String,
    /// [`remedy_number`] of the remedy.
    pub remedy: i32,
}

impl JavaError {
    pub fn of(e: &ClientError) -> JavaError {
        let (code, code_name) = match e.code() {
            Some(c) => (i32::from(c.as_u16()), c.to_string()),
            None => (0, "none".to_string()),
        };
        JavaError { class: exception_class(e.kind()), code, code_name, remedy: remedy_number(e.remedy()) }
    }

    /// A failed JNI call or a panic: a fault in this process, which a retry does not mend.
    pub fn internal() -> JavaError {
        JavaError {
            class: exception_class(ErrorKind::Internal),
            code: 0,
            code_name: "none".to_string(),
            remedy: remedy_number(Remedy::Fail),
        }
    }
}

/// The number `io.shoal.spark.Remedy.fromNative` maps back; the two must change together.
pub fn remedy_number(r: Remedy) -> i32 {
    match r {
        Remedy::RetryLater => 0,
        Remedy::Relocate => 1,
        Remedy::Recompute => 2,
        Remedy::Fail => 3,
    }
}

fn exception_class(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::DataLost => "io/shoal/spark/ShoalDataLostException",
        ErrorKind::Corrupt => "io/shoal/spark/ShoalCorruptException",
        ErrorKind::Unavailable => "io/shoal/spark/ShoalUnavailableException",
        ErrorKind::Rejected => "io/shoal/spark/ShoalRejectedException",
        ErrorKind::Config => "io/shoal/spark/ShoalConfigException",
        ErrorKind::Internal => "io/shoal/spark/ShoalInternalException",
    }
}

impl Bridge {
    /// The process's bridge, made on first use with `threads` runtime threads.
    pub fn global(threads: usize) -> Result<&'static Bridge, ClientError> {
        if let Some(b) = BRIDGE.get() {
            return Ok(b);
        }
        let b = Bridge::new(threads)?;
        Ok(BRIDGE.get_or_init(|| b))
    }

    /// The process's bridge, if a client was ever opened.
    pub fn existing() -> Result<&'static Bridge, ClientError> {
        BRIDGE.get().ok_or_else(|| ClientError::Config("no Shoal client was opened in this process".into()))
    }

    pub fn new(threads: usize) -> Result<Bridge, ClientError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("shoal-client")
            .enable_all()
            .build()
            .map_err(|e| ClientError::Config(format!("cannot start the client runtime: {e}")))?;
        Ok(Bridge {
            rt,
            next: AtomicI64::new(1),
            objects: Mutex::new(HashMap::new()),
            by_config: Mutex::new(HashMap::new()),
            assignments: Mutex::new(HashMap::new()),
        })
    }

    fn insert(&self, o: Object) -> i64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.objects).insert(id, o);
        id
    }

    fn client(&self, h: i64) -> Result<ShuffleClient, ClientError> {
        match lock(&self.objects).get(&h) {
            Some(Object::Client { client }) => Ok(client.clone()),
            _ => Err(bad_handle(h)),
        }
    }

    /// A client for these settings, shared with every earlier caller that gave the same ones.
    pub fn open_client(&self, cfg: &BridgeConfig) -> Result<i64, ClientError> {
        let mut by = lock(&self.by_config);
        if let Some(h) = by.get(cfg) {
            return Ok(*h);
        }
        // Quinn binds its endpoint to the current runtime.
        let _guard = self.rt.enter();
        let client = ShuffleClient::new(cfg.client_config_sealed()?)?;
        let h = self.insert(Object::Client { client });
        by.insert(cfg.clone(), h);
        Ok(h)
    }

    /// Registers the application; returns its token's text for the executors ("" without
    /// authentication).
    pub fn register_app(&self, client: i64, app: &str, lease: Duration) -> Result<String, ClientError> {
        let c = self.client(client)?;
        let app = AppId::new(app)?;
        self.rt.block_on(c.register_app(&app, lease))
    }

    pub fn app_heartbeat(&self, client: i64, app: &str) -> Result<(), ClientError> {
        let c = self.client(client)?;
        let app = AppId::new(app)?;
        self.rt.block_on(c.app_heartbeat(&app))
    }

    pub fn unregister_app(&self, client: i64, app: &str) -> Result<(), ClientError> {
        let c = self.client(client)?;
        let app = AppId::new(app)?;
        self.rt.block_on(c.unregister_app(&app))
    }

    /// Registers a shuffle generation (idempotent) and caches its assignment.
    pub fn register_shuffle(&self, client: i64, key: &ShuffleKey, shape: ShuffleShape) -> Result<(), ClientError> {
        let c = self.client(client)?;
        let a = self.rt.block_on(c.register_shuffle(key, shape.num_maps, shape.num_partitions, shape.replication))?;
        lock(&self.assignments).insert((client, key.clone()), a);
        Ok(())
    }

    /// Unregisters every generation of the key's Spark shuffle id.
    pub fn unregister_shuffle(&self, client: i64, key: &ShuffleKey) -> Result<(), ClientError> {
        let c = self.client(client)?;
        lock(&self.assignments)
            .retain(|(h, k), _| !(*h == client && k.app == key.app && k.shuffle_id == key.shuffle_id));
        match self.rt.block_on(c.unregister_shuffle(key)) {
            // Nothing was ever written to it: nothing to remove.
            Err(e) if is_code(&e, ErrorCode::UnknownShuffle) => Ok(()),
            r => r,
        }
    }

    /// Drops the cached assignments of every generation of a Spark shuffle id (an executor
    /// hears that Spark cleaned the shuffle up), so a long-lived executor's cache stays bounded.
    pub fn forget_shuffle(&self, client: i64, shuffle_id: u32) {
        lock(&self.assignments).retain(|(h, k), _| !(*h == client && k.shuffle_id == shuffle_id));
    }

    /// Assignments cached for a client.
    pub fn cached_assignments(&self, client: i64) -> usize {
        lock(&self.assignments).keys().filter(|(h, _)| *h == client).count()
    }

    /// The assignment of a generation: cached, else fetched, else registered (a map task of a
    /// re-run stage is the first to use its generation).
    fn assignment(
        &self,
        client: i64,
        c: &ShuffleClient,
        key: &ShuffleKey,
        shape: ShuffleShape,
    ) -> Result<ShuffleAssignment, ClientError> {
        let cached = lock(&self.assignments).get(&(client, key.clone())).cloned();
        // A cached capability about to run out is replaced with the assignment's fresh one.
        if let Some(a) = cached.filter(|a| capability_lasts(&a.capability, now_unix_ms(), CAPABILITY_MARGIN_MS)) {
            return Ok(a);
        }
        let a = match self.rt.block_on(c.assignment(key)) {
            Err(e) if is_code(&e, ErrorCode::UnknownShuffle) => {
                self.rt.block_on(c.register_shuffle(key, shape.num_maps, shape.num_partitions, shape.replication))?
            }
            r => r?,
        };
        if a.num_partitions != shape.num_partitions {
            return Err(ClientError::Config(format!(
                "shuffle {key} has {} partitions in Shoal, {} in Spark",
                a.num_partitions, shape.num_partitions
            )));
        }
        lock(&self.assignments).insert((client, key.clone()), a.clone());
        Ok(a)
    }

    pub fn open_writer(
        &self,
        client: i64,
        key: &ShuffleKey,
        shape: ShuffleShape,
        map: u32,
        attempt: u64,
    ) -> Result<i64, ClientError> {
        let c = self.client(client)?;
        if map >= shape.num_maps {
            return Err(ClientError::Config(format!("map {map} out of range 0..{}", shape.num_maps)));
        }
        let a = self.assignment(client, &c, key, shape)?;
        let w = c.map_writer(&a, MapId(map), AttemptId(attempt));
        Ok(self.insert(Object::Writer(Arc::new(Mutex::new(Some(w))))))
    }

    fn writer(&self, h: i64) -> Result<Arc<Mutex<Option<MapWriter>>>, ClientError> {
        match lock(&self.objects).get(&h) {
            Some(Object::Writer(writer)) => Ok(writer.clone()),
            _ => Err(bad_handle(h)),
        }
    }

    /// Pushes one self-contained chunk of serialized records to a partition.
    pub fn write(&self, h: i64, partition: u32, chunk: &[u8]) -> Result<(), ClientError> {
        let w = self.writer(h)?;
        let mut g = lock(&w);
        let w = g.as_mut().ok_or_else(|| bad_handle(h))?;
        self.rt.block_on(w.push(partition, chunk))
    }

    /// Commits the attempt and closes the handle, whatever the outcome.
    pub fn commit(&self, h: i64) -> Result<Committed, ClientError> {
        let w = self.take_writer(h)?;
        let out = self.rt.block_on(w.commit())?;
        Ok(Committed {
            accepted: out.accepted,
            wire_bytes: out.wire_bytes,
            partition_bytes: out.partition_bytes,
            partition_wire_bytes: out.partition_wire_bytes,
        })
    }

    /// Abandons the attempt and closes the handle.
    pub fn abort(&self, h: i64) -> Result<(), ClientError> {
        let w = self.take_writer(h)?;
        let _guard = self.rt.enter();
        w.abort();
        Ok(())
    }

    fn take_writer(&self, h: i64) -> Result<MapWriter, ClientError> {
        let obj = {
            let mut objects = lock(&self.objects);
            match objects.get(&h) {
                Some(Object::Writer(_)) => objects.remove(&h),
                _ => None,
            }
        };
        let Some(Object::Writer(writer)) = obj else { return Err(bad_handle(h)) };
        let taken = lock(&writer).take();
        taken.ok_or_else(|| bad_handle(h))
    }

    /// A reader of one partition over exactly `maps` (each must have committed data to it).
    pub fn open_reader(&self, client: i64, key: &ShuffleKey, partition: u32, maps: &[u32]) -> Result<i64, ClientError> {
        let c = self.client(client)?;
        if maps.len() > MAX_READ_MAPS {
            return Err(ClientError::Config(format!("{} maps in one read, at most {MAX_READ_MAPS}", maps.len())));
        }
        let _guard = self.rt.enter();
        let stream = c.read_partition_maps(key, partition, maps);
        Ok(self.insert(Object::Reader(Arc::new(Mutex::new(ReaderSlot { stream, pending: None })))))
    }

    /// Copies the next whole batch into `dst`, or says how large `dst` must be.
    pub fn read(&self, h: i64, dst: &mut [u8]) -> Result<ReadNext, ClientError> {
        let r = match lock(&self.objects).get(&h) {
            Some(Object::Reader(r)) => r.clone(),
            _ => return Err(bad_handle(h)),
        };
        let mut slot = lock(&r);
        let batch = match slot.pending.take() {
            Some(b) => b,
            None => match self.rt.block_on(slot.stream.next())? {
                Some(b) => b,
                None => return Ok(ReadNext::End),
            },
        };
        if batch.len() > dst.len() {
            let need = batch.len().max(MIN_READ_BUFFER);
            slot.pending = Some(batch);
            return Ok(ReadNext::NeedCapacity(need));
        }
        dst[..batch.len()].copy_from_slice(&batch);
        Ok(ReadNext::Copied(batch.len()))
    }

    pub fn close_reader(&self, h: i64) -> Result<(), ClientError> {
        let mut objects = lock(&self.objects);
        match objects.get(&h) {
            Some(Object::Reader(_)) => {
                let obj = objects.remove(&h);
                drop(objects);
                // Dropping the stream aborts its task, which needs the runtime's context.
                let _guard = self.rt.enter();
                drop(obj);
                Ok(())
            }
            _ => Err(bad_handle(h)),
        }
    }

    /// Open writers and readers (for leak checks).
    pub fn open_streams(&self) -> usize {
        lock(&self.objects).values().filter(|o| !matches!(o, Object::Client { .. })).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: &str) -> String {
        format!("masters=127.0.0.1:1\ntls.insecure=true\n{extra}")
    }

    #[test]
    fn settings_parse_with_defaults_and_refuse_mistakes() {
        let c = BridgeConfig::parse(&conf("max_in_flight=4\ncall_timeout_ms=500\nobject_store=file:///tmp/x")).unwrap();
        assert_eq!(c.masters, vec!["127.0.0.1:1"]);
        assert_eq!(c.tls, TlsSource::Insecure);
        assert_eq!(c.max_in_flight, 4);
        assert_eq!(c.call_timeout, Duration::from_millis(500));
        assert_eq!(c.object_store.as_deref(), Some("file:///tmp/x"));
        let with_ca = BridgeConfig::parse("masters=a:1, b:2\ntls.ca=/etc/ca.pem").unwrap();
        assert_eq!(with_ca.masters, vec!["a:1", "b:2"]);
        assert_eq!(with_ca.tls, TlsSource::CaOnly { ca: "/etc/ca.pem".into() });
        for bad in [
            conf("max_in_flight=0"),
            conf("max_in_flight=x"),
            conf("call_timeout_ms=-1"),
            conf("colour=blue"),
            conf("no equals sign"),
            "tls.insecure=true".to_string(),
            "masters=a:1".to_string(),
            "masters=a:1\ntls.insecure=true\ntls.ca=/x".to_string(),
            "x".repeat(MAX_CONFIG_BYTES + 1),
        ] {
            let e = BridgeConfig::parse(&bad).unwrap_err();
            assert!(matches!(e, ClientError::Config(_)), "{bad:.40}: {e}");
        }
    }

    /// Spark's IO key arrives as base64url; it is never printed, and a client with it seals.
    #[test]
    fn an_io_encryption_key_is_parsed_hidden_and_used() {
        let key = "KioqKioqKioqKioqKioqKg"; // 16 bytes of '*'
        let c = BridgeConfig::parse(&conf(&format!("io_encryption_key={key}"))).unwrap();
        assert_eq!(c.io_key, Some(IoKey(vec![b'*'; 16])));
        assert!(!format!("{c:?}").contains(key) && !format!("{c:?}").contains("****************"));
        assert!(c.client_config_sealed().unwrap().cipher.is_some());
        assert!(BridgeConfig::parse(&conf("")).unwrap().client_config_sealed().unwrap().cipher.is_none());
        for bad in ["io_encryption_key=not*base64", "io_encryption_key=AAAA"] {
            let e = BridgeConfig::parse(&conf(bad)).unwrap_err();
            assert!(matches!(e, ClientError::Config(_)) && !e.to_string().contains("AAAA"), "{bad}: {e}");
        }
        // Two configurations differing only in the key are different clients.
        assert_ne!(c, BridgeConfig::parse(&conf("")).unwrap());
    }

    #[test]
    fn handles_are_typed_and_closed_exactly_once() {
        let b = Bridge::new(1).unwrap();
        let cfg = BridgeConfig::parse(&conf("")).unwrap();
        let c = b.open_client(&cfg).unwrap();
        assert_eq!(b.open_client(&cfg).unwrap(), c, "same settings share a client");
        let other = BridgeConfig::parse(&conf("max_in_flight=3")).unwrap();
        assert_ne!(b.open_client(&other).unwrap(), c);

        let key = ShuffleKey::new(AppId::new("app").unwrap(), 1, 0);
        let r = b.open_reader(c, &key, 0, &[0, 3]).unwrap();
        assert_eq!(b.open_streams(), 1);
        // A client handle is not a writer, nor a reader handle a client.
        assert!(matches!(b.write(c, 0, b"x"), Err(ClientError::BadHandle(h)) if h == c));
        assert!(matches!(b.commit(r), Err(ClientError::BadHandle(_))));
        assert!(matches!(b.register_app(r, "app", Duration::from_secs(1)), Err(ClientError::BadHandle(_))));
        b.close_reader(r).unwrap();
        assert!(matches!(b.close_reader(r), Err(ClientError::BadHandle(_))), "second close");
        assert!(matches!(b.read(r, &mut [0u8; 4]), Err(ClientError::BadHandle(_))), "use after close");
        assert!(matches!(b.abort(12345), Err(ClientError::BadHandle(12345))));
        assert_eq!(b.open_streams(), 0);
        let too_many = vec![0u32; MAX_READ_MAPS + 1];
        assert!(matches!(b.open_reader(c, &key, 0, &too_many), Err(ClientError::Config(_))));
    }

    #[test]
    fn java_gets_the_class_wire_code_and_remedy_of_each_failure() {
        use shuffle_proto::transport::TransportError;
        use shuffle_proto::{ProtoError, WireError};

        let remote = |c| ClientError::remote(WireError::new(c, "x"));
        let key = ShuffleKey::new(AppId::new("app").unwrap(), 1, 0);
        let store = |e| ClientError::Store(shuffle_proto::objstore::StoreError::Store(e));
        let missing = object_store::Error::NotFound { path: "p".into(), source: "gone".into() };
        let flaky = object_store::Error::Generic { store: "s3", source: "503".into() };
        let gone = ClientError::DataLost { shuffle: key.clone(), partition: 0, reason: "x".into() };
        let bad_crc = ClientError::Corrupt { shuffle: key.clone(), partition: 0, reason: "x".into() };
        let refused_conn = TransportError::Connect { addr: "a".into(), reason: "refused".into() };
        let bad_id = ProtoError::InvalidId { kind: "app", reason: "empty" };
        let (lost, corrupt, down) = ("ShoalDataLostException", "ShoalCorruptException", "ShoalUnavailableException");
        let (refused, config, internal) = ("ShoalRejectedException", "ShoalConfigException", "ShoalInternalException");
        use Remedy::*;
        let cases: Vec<(ClientError, &str, i32, &str, Remedy)> = vec![
            (gone, lost, 15, "DataLost", Recompute),
            (bad_crc, corrupt, 16, "Corrupt", Recompute),
            (remote(ErrorCode::DataLost), lost, 15, "DataLost", Recompute),
            (ClientError::Proto(ProtoError::Checksum { expected: 1, actual: 2 }), corrupt, 16, "Corrupt", Recompute),
            (store(missing), lost, 15, "DataLost", Recompute),
            (remote(ErrorCode::Busy), down, 13, "Busy", RetryLater),
            (remote(ErrorCode::Internal), down, 1, "Internal", RetryLater),
            (remote(ErrorCode::StaleEpoch), down, 12, "StaleEpoch", Relocate),
            (remote(ErrorCode::DiskFull), down, 14, "DiskFull", Relocate),
            (ClientError::Transport(refused_conn), down, 19, "Timeout", RetryLater),
            (store(flaky), down, 20, "Storage", RetryLater),
            (ClientError::AttemptFailed("push gave up".into()), down, 0, "none", RetryLater),
            // Refused, but the data is gone (the shuffle was dropped): recompute, not fail.
            (remote(ErrorCode::UnknownShuffle), refused, 8, "UnknownShuffle", Recompute),
            (remote(ErrorCode::Unauthorized), refused, 17, "Unauthorized", Fail),
            (remote(ErrorCode::UnknownApp), refused, 7, "UnknownApp", Fail),
            (ClientError::Proto(bad_id), refused, 2, "BadRequest", Fail),
            (ClientError::Config("colour=blue".into()), config, 0, "none", Fail),
            (ClientError::BadHandle(7), internal, 0, "none", Fail),
        ];
        for (e, class, code, name, remedy) in cases {
            let j = JavaError::of(&e);
            let want = JavaError {
                class: exception_class_named(class),
                code,
                code_name: name.into(),
                remedy: remedy_number(remedy),
            };
            assert_eq!(j, want, "{e}");
        }
        let panic = JavaError::internal();
        assert_eq!((panic.class, panic.code, panic.code_name.as_str()), (exception_class_named(internal), 0, "none"));
        assert_eq!(panic.remedy, remedy_number(Remedy::Fail));
        // The numbers io.shoal.spark.Remedy.fromNative reads, in its declaration order.
        let numbers: Vec<i32> = [RetryLater, Relocate, Recompute, Fail].into_iter().map(remedy_number).collect();
        assert_eq!(numbers, [0, 1, 2, 3]);
    }

    fn exception_class_named(simple: &str) -> &'static str {
        [
            ErrorKind::DataLost,
            ErrorKind::Corrupt,
            ErrorKind::Unavailable,
            ErrorKind::Rejected,
            ErrorKind::Config,
            ErrorKind::Internal,
        ]
        .into_iter()
        .map(exception_class)
        .find(|c| c.strip_prefix("io/shoal/spark/") == Some(simple))
        .unwrap_or("no such class")
    }
}
