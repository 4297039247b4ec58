//! Settings for the `shuffle-worker` binary: a TOML file, then `SHOAL_*` environment
//! variables, then flags. Validated at start with errors that name the key; unknown file keys
//! are reported so rolling upgrades work. Object-store credentials never come from flags: S3
//! reads `AWS_*` variables (Kubernetes Secrets).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use shuffle_proto::admission::AdmissionLimits;
pub use shuffle_proto::settings::SettingError;
use shuffle_proto::settings::{bad, duration, parse_toml, size, ConnectionSettings, TlsSettings};
use shuffle_proto::transport::{TlsSource, DEFAULT_STALL_TIMEOUT};
use shuffle_proto::{ProtoError, WorkerId};

#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
pub struct WorkerSettings {
    /// Stable worker id (the StatefulSet pod name); defaults to $HOSTNAME.
    #[arg(long, env = "SHOAL_ID")]
    pub id: Option<String>,
    /// Address to bind (QUIC).
    #[arg(long, env = "SHOAL_LISTEN")]
    pub listen: Option<String>,
    /// Address others use to reach this worker (HOST:PORT); defaults to `listen`.
    #[arg(long, env = "SHOAL_ADVERTISE")]
    pub advertise: Option<String>,
    /// Master endpoints, HOST:PORT comma separated.
    #[arg(long, env = "SHOAL_MASTERS")]
    pub masters: Option<String>,
    /// Where the RocksDB buffer lives.
    #[arg(long, env = "SHOAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// file:///dir or s3://bucket/prefix.
    #[arg(long, env = "SHOAL_OBJECT_STORE")]
    pub object_store: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    pub tls: TlsSettings,
    #[command(flatten)]
    #[serde(flatten)]
    pub connections: ConnectionSettings,
    /// Refuse pushes (retryable `Busy`) above this many buffered bytes, e.g. "200GiB".
    #[arg(long, env = "SHOAL_MAX_BUFFERED")]
    pub max_buffered: Option<String>,
    /// Free space kept on the data disk: pushes are refused with a retryable `DiskFull` below
    /// it, e.g. "1GiB".
    #[arg(long, env = "SHOAL_DISK_RESERVE")]
    pub disk_reserve: Option<String>,
    /// fsync the WAL before every ack.
    #[arg(long, env = "SHOAL_SYNC_WRITES")]
    pub sync_writes: Option<bool>,
    /// Heartbeat period, e.g. "2s".
    #[arg(long, env = "SHOAL_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<String>,
    /// Multipart upload part size, at least "5MiB".
    #[arg(long, env = "SHOAL_UPLOAD_PART_SIZE")]
    pub upload_part_size: Option<String>,
    /// A partition's piece on this worker is closed at this size and the masters place its
    /// next piece (on another worker when there is one), e.g. "1GiB"; "0" never splits.
    #[arg(long, env = "SHOAL_PARTITION_SPLIT_SIZE")]
    pub partition_split_size: Option<String>,
    /// HTTP address for /metrics, /healthz and /readyz (IP:PORT); off when unset.
    #[arg(long, env = "SHOAL_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// How often to sweep the object store for garbage, e.g. "1h"; "0s" turns it off.
    #[arg(long, env = "SHOAL_SWEEP_INTERVAL")]
    pub sweep_interval: Option<String>,
    /// Minimum age of any object the sweep deletes, counted up to when the master was asked
    /// about it, e.g. "15m" (the fence against segment reports still on their way).
    #[arg(long, env = "SHOAL_SWEEP_GRACE")]
    pub sweep_grace: Option<String>,
    /// A reply stream (a partition read) whose reader takes nothing for this long is reset and
    /// everything it held freed, e.g. "60s".
    #[arg(long, env = "SHOAL_READ_STALL_TIMEOUT")]
    pub read_stall_timeout: Option<String>,
}

/// Where a partition's piece is closed by default: Celeborn's split size, large enough that
/// ordinary partitions never split and small enough that a skewed one spreads over workers.
pub const DEFAULT_SPLIT_BYTES: u64 = 1 << 30;

/// A worker's resolved settings.
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
    /// Pushes are refused with `DiskFull` when the data disk has less than this free.
    pub disk_reserve_bytes: u64,
    /// Above this many buffered bytes the largest partitions are spilled early...
    pub spill_high_bytes: u64,
    /// ...until the buffer is under this many.
    pub spill_low_bytes: u64,
    /// fsync the WAL before acknowledging (survives machine crashes, not just process crashes).
    pub sync_writes: bool,
    pub read_chunk_bytes: usize,
    pub upload_part_bytes: usize,
    /// Pushes to a partition piece that took this many bytes here are refused with
    /// `PartitionSplit` (0: never).
    pub partition_split_bytes: u64,
    pub heartbeat_interval: Duration,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` over HTTP.
    pub http_listen: Option<SocketAddr>,
    /// How often to sweep the object store for garbage (None: never).
    pub sweep_interval: Option<Duration>,
    /// Minimum age of any object the sweep deletes (see [`crate::spill::is_garbage`]).
    pub sweep_grace: Duration,
    /// A reply write that makes no progress for this long resets its stream.
    pub read_stall_timeout: Duration,
    /// Which connections the data server takes.
    pub connections: AdmissionLimits,
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
            disk_reserve_bytes: 256 << 20,
            spill_high_bytes: 48 << 30,
            spill_low_bytes: 32 << 30,
            sync_writes: false,
            read_chunk_bytes: 1 << 20,
            upload_part_bytes: 8 << 20,
            partition_split_bytes: DEFAULT_SPLIT_BYTES,
            heartbeat_interval: Duration::from_secs(1),
            http_listen: None,
            sweep_interval: Some(Duration::from_secs(3600)),
            sweep_grace: Duration::from_secs(900),
            read_stall_timeout: DEFAULT_STALL_TIMEOUT,
            connections: AdmissionLimits::default(),
        })
    }
}

pub const KEYS: &[&str] = &[
    "id",
    "listen",
    "advertise",
    "masters",
    "data_dir",
    "object_store",
    "max_buffered",
    "disk_reserve",
    "sync_writes",
    "heartbeat_interval",
    "upload_part_size",
    "partition_split_size",
    "http_listen",
    "sweep_interval",
    "sweep_grace",
    "read_stall_timeout",
];

pub fn parse_file(text: &str) -> Result<(WorkerSettings, Vec<String>), SettingError> {
    parse_toml(text, KEYS)
}

impl WorkerSettings {
    /// `self` wins over `lower` key by key.
    pub fn over(self, lower: WorkerSettings) -> WorkerSettings {
        macro_rules! pick {
            ($($f:ident),*) => {
                WorkerSettings {
                    tls: self.tls.over(lower.tls),
                    connections: self.connections.over(lower.connections),
                    $($f: self.$f.or(lower.$f)),*
                }
            };
        }
        pick!(
            id,
            listen,
            advertise,
            masters,
            data_dir,
            object_store,
            max_buffered,
            disk_reserve,
            sync_writes,
            heartbeat_interval,
            upload_part_size,
            partition_split_size,
            http_listen,
            sweep_interval,
            sweep_grace,
            read_stall_timeout
        )
    }

    pub fn resolve(self) -> Result<WorkerConfig, SettingError> {
        let id = self.id.or_else(|| std::env::var("HOSTNAME").ok()).ok_or_else(|| bad("id", "missing"))?;
        let id = WorkerId::new(id).map_err(|e| bad("id", e.to_string()))?;
        let listen_s = self.listen.ok_or_else(|| bad("listen", "missing"))?;
        let listen: SocketAddr = listen_s.parse().map_err(|_| bad("listen", format!("{listen_s:?} is not IP:PORT")))?;
        let advertise = self.advertise.unwrap_or_else(|| listen.to_string());
        if !advertise.contains(':') {
            return Err(bad("advertise", format!("{advertise:?} has no port")));
        }
        let masters: Vec<String> = self
            .masters
            .ok_or_else(|| bad("masters", "missing"))?
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if masters.is_empty() || masters.iter().any(|m| !m.contains(':')) {
            return Err(bad("masters", "expected HOST:PORT[,HOST:PORT...]"));
        }
        let data_dir = self.data_dir.ok_or_else(|| bad("data_dir", "missing"))?;
        let object_store = self.object_store.ok_or_else(|| bad("object_store", "missing"))?;
        if !["file:///", "s3://", "memory://"].iter().any(|p| object_store.starts_with(p)) {
            return Err(bad("object_store", "must be file:///dir or s3://bucket/prefix"));
        }
        let tls = self.tls.resolve()?;
        let connections = self.connections.resolve()?;
        let max_buffered_bytes = size("max_buffered", self.max_buffered.as_deref(), 64 << 30)?;
        let disk_reserve_bytes = size("disk_reserve", self.disk_reserve.as_deref(), 1 << 30)?;
        let upload_part_bytes = size("upload_part_size", self.upload_part_size.as_deref(), 8 << 20)?;
        if upload_part_bytes < 5 << 20 {
            return Err(bad("upload_part_size", "S3 needs parts of at least 5MiB"));
        }
        let partition_split_bytes =
            size("partition_split_size", self.partition_split_size.as_deref(), DEFAULT_SPLIT_BYTES)?;
        if partition_split_bytes != 0 && partition_split_bytes < 1 << 20 {
            return Err(bad("partition_split_size", "at least 1MiB (or 0: never split)"));
        }
        let heartbeat_interval =
            duration("heartbeat_interval", self.heartbeat_interval.as_deref(), Duration::from_secs(2))?;
        let http_listen = match self.http_listen {
            None => None,
            Some(h) => Some(h.parse().map_err(|_| bad("http_listen", format!("{h:?} is not IP:PORT")))?),
        };
        let sweep_interval = duration("sweep_interval", self.sweep_interval.as_deref(), Duration::from_secs(3600))?;
        let sweep_grace = duration("sweep_grace", self.sweep_grace.as_deref(), Duration::from_secs(900))?;
        let read_stall_timeout =
            duration("read_stall_timeout", self.read_stall_timeout.as_deref(), DEFAULT_STALL_TIMEOUT)?;
        if read_stall_timeout < Duration::from_secs(1) {
            return Err(bad("read_stall_timeout", "at least 1s"));
        }
        Ok(WorkerConfig {
            sweep_interval: (!sweep_interval.is_zero()).then_some(sweep_interval),
            sweep_grace,
            read_stall_timeout,
            connections,
            spill_high_bytes: max_buffered_bytes / 10 * 8,
            spill_low_bytes: max_buffered_bytes / 10 * 6,
            http_listen,
            id,
            listen,
            advertise,
            masters,
            data_dir,
            object_store,
            tls,
            max_buffered_bytes,
            disk_reserve_bytes,
            sync_writes: self.sync_writes.unwrap_or(false),
            read_chunk_bytes: 1 << 20,
            upload_part_bytes: upload_part_bytes as usize,
            partition_split_bytes,
            heartbeat_interval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> WorkerSettings {
        WorkerSettings {
            id: Some("shoal-worker-0".into()),
            listen: Some("127.0.0.1:9200".into()),
            masters: Some("127.0.0.1:9100".into()),
            data_dir: Some("/tmp/w".into()),
            object_store: Some("file:///tmp/objects".into()),
            tls: TlsSettings::insecure(),
            ..Default::default()
        }
    }

    #[test]
    fn errors_name_the_key() {
        assert!(base().resolve().is_ok());
        let key = |s: WorkerSettings| s.resolve().unwrap_err().key;
        assert_eq!(key(WorkerSettings { id: Some("bad id".into()), ..base() }), "id");
        assert_eq!(key(WorkerSettings { masters: Some("nohost".into()), ..base() }), "masters");
        assert_eq!(key(WorkerSettings { object_store: Some("ftp://x".into()), ..base() }), "object_store");
        assert_eq!(key(WorkerSettings { max_buffered: Some("lots".into()), ..base() }), "max_buffered");
        assert_eq!(key(WorkerSettings { upload_part_size: Some("1MiB".into()), ..base() }), "upload_part_size");
        let split = |v: &str| WorkerSettings { partition_split_size: Some(v.into()), ..base() };
        assert_eq!(key(split("1KiB")), "partition_split_size");
        assert_eq!(split("0").resolve().unwrap().partition_split_bytes, 0);
        assert_eq!(split("64MiB").resolve().unwrap().partition_split_bytes, 64 << 20);
        assert_eq!(base().resolve().unwrap().partition_split_bytes, DEFAULT_SPLIT_BYTES);
        assert_eq!(key(WorkerSettings { tls: TlsSettings::default(), ..base() }), "tls_cert");
        let stall = |v: &str| WorkerSettings { read_stall_timeout: Some(v.into()), ..base() };
        assert_eq!(key(stall("100ms")), "read_stall_timeout");
        assert_eq!(stall("5s").resolve().unwrap().read_stall_timeout, Duration::from_secs(5));
        assert_eq!(base().resolve().unwrap().read_stall_timeout, DEFAULT_STALL_TIMEOUT);
    }

    #[test]
    fn sizes_and_files_parse() {
        let (file, unknown) = parse_file("max_buffered = \"2GiB\"\nnew_key = 1\n").unwrap();
        assert_eq!(unknown, vec!["new_key".to_string()]);
        let cfg = base().over(file).resolve().unwrap();
        assert_eq!(cfg.max_buffered_bytes, 2 << 30);
    }
}
