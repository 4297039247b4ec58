//! Settings for the `shuffle-master` binary: a TOML file, then `SHOAL_*` environment
//! variables, then flags, each overriding the one before. Validated at start with errors that
//! name the key; unknown file keys are reported as warnings so rolling upgrades work.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
pub use shuffle_proto::settings::SettingError;
use shuffle_proto::settings::{bad, duration, parse_toml, ConnectionSettings, TlsSettings};

use crate::node::{AuthConfig, MasterConfig};

/// Every setting, each optional until merged.
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
pub struct MasterSettings {
    /// This master's id (a positive integer, unique in the group).
    #[arg(long, env = "SHOAL_ID")]
    pub id: Option<u64>,
    /// Address to bind (QUIC, for clients, workers and other masters).
    #[arg(long, env = "SHOAL_LISTEN")]
    pub listen: Option<String>,
    /// Every master as ID=HOST:PORT, comma separated, this one included.
    #[arg(long, env = "SHOAL_PEERS")]
    pub peers: Option<String>,
    /// Join an existing group instead of founding one: with an empty data dir, wait to be
    /// added by the leader (`shoal masters add ID ADDR`). Harmless once the master has a log.
    #[arg(long, env = "SHOAL_JOIN", num_args = 0..=1, default_missing_value = "true")]
    pub join: Option<bool>,
    /// Where the Raft log and state live.
    #[arg(long, env = "SHOAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub tls: TlsSettings,
    #[command(flatten)]
    #[serde(flatten)]
    pub connections: ConnectionSettings,
    /// How often workers heartbeat, e.g. "2s".
    #[arg(long, env = "SHOAL_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<String>,
    /// Silence after which a worker is declared lost, e.g. "30s".
    #[arg(long, env = "SHOAL_WORKER_TIMEOUT")]
    pub worker_timeout: Option<String>,
    /// Raft election timeout, e.g. "500ms".
    #[arg(long, env = "SHOAL_ELECTION_TIMEOUT")]
    pub election_timeout: Option<String>,
    /// Raft entries between snapshots.
    #[arg(long, env = "SHOAL_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    /// HTTP address (IP:PORT) for the status page, /status.json, /metrics and /healthz.
    #[arg(long, env = "SHOAL_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// principals.toml: tenants and admins, by the SHA-256 of their secrets.
    #[arg(long, env = "SHOAL_AUTH_PRINCIPALS")]
    pub auth_principals: Option<PathBuf>,
    /// signing-keys.toml: the keys that sign application tokens and capabilities.
    #[arg(long, env = "SHOAL_AUTH_SIGNING_KEYS")]
    pub auth_signing_keys: Option<PathBuf>,
    /// Run without application authentication (throwaway clusters only).
    #[arg(long, env = "SHOAL_AUTH_DISABLED")]
    pub auth_disabled: Option<bool>,
    /// How long an application token is valid, e.g. "7d".
    #[arg(long, env = "SHOAL_TOKEN_TTL")]
    pub token_ttl: Option<String>,
    /// How long a capability is valid, e.g. "1h".
    #[arg(long, env = "SHOAL_CAPABILITY_TTL")]
    pub capability_ttl: Option<String>,
    /// Copies of each pushed batch (1 or 2) for applications that do not choose
    /// (`spark.shoal.replication`). With 2, an ack means both workers' WALs hold the batch.
    #[arg(long, env = "SHOAL_REPLICATION")]
    pub replication: Option<u8>,
    /// Most map commits and segment reports carried by one Raft entry (group commit); 1
    /// gives each its own entry.
    #[arg(long, env = "SHOAL_COMMIT_BATCH")]
    pub commit_batch: Option<usize>,
    /// Longest lease an application may ask for, e.g. "1h": longer ones are granted this.
    /// An app whose driver died keeps its shuffle data at most this long after its last
    /// heartbeat.
    #[arg(long, env = "SHOAL_MAX_APP_LEASE")]
    pub max_app_lease: Option<String>,
}

/// Leases above this are clamped: an hour outlives any heartbeat gap a live driver has.
pub const DEFAULT_MAX_APP_LEASE: Duration = Duration::from_secs(3600);

pub const KEYS: &[&str] = &[
    "id",
    "listen",
    "peers",
    "join",
    "data_dir",
    "heartbeat_interval",
    "worker_timeout",
    "election_timeout",
    "snapshot_every",
    "http_listen",
    "auth_principals",
    "auth_signing_keys",
    "auth_disabled",
    "token_ttl",
    "capability_ttl",
    "replication",
    "commit_batch",
    "max_app_lease",
];

/// Parses a TOML file's text; returns the settings and the unknown keys found.
pub fn parse_file(text: &str) -> Result<(MasterSettings, Vec<String>), SettingError> {
    parse_toml(text, KEYS)
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_peers(s: &str) -> Result<BTreeMap<u64, String>, SettingError> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('=').ok_or_else(|| bad("peers", format!("{part:?} is not ID=HOST:PORT")))?;
        let id: u64 = id.trim().parse().map_err(|_| bad("peers", format!("{id:?} is not a numeric id")))?;
        if id == 0 {
            return Err(bad("peers", "ids start at 1"));
        }
        if !addr.contains(':') {
            return Err(bad("peers", format!("{addr:?} has no port")));
        }
        if out.insert(id, addr.trim().to_string()).is_some() {
            return Err(bad("peers", format!("id {id} appears twice")));
        }
    }
    if out.is_empty() {
        return Err(bad("peers", "no masters listed"));
    }
    Ok(out)
}

impl MasterSettings {
    /// `self` wins over `lower` key by key.
    pub fn over(self, lower: MasterSettings) -> MasterSettings {
        MasterSettings {
            id: self.id.or(lower.id),
            listen: self.listen.or(lower.listen),
            peers: self.peers.or(lower.peers),
            join: self.join.or(lower.join),
            data_dir: self.data_dir.or(lower.data_dir),
            tls: self.tls.over(lower.tls),
            connections: self.connections.over(lower.connections),
            heartbeat_interval: self.heartbeat_interval.or(lower.heartbeat_interval),
            worker_timeout: self.worker_timeout.or(lower.worker_timeout),
            election_timeout: self.election_timeout.or(lower.election_timeout),
            snapshot_every: self.snapshot_every.or(lower.snapshot_every),
            http_listen: self.http_listen.or(lower.http_listen),
            auth_principals: self.auth_principals.or(lower.auth_principals),
            auth_signing_keys: self.auth_signing_keys.or(lower.auth_signing_keys),
            auth_disabled: self.auth_disabled.or(lower.auth_disabled),
            token_ttl: self.token_ttl.or(lower.token_ttl),
            capability_ttl: self.capability_ttl.or(lower.capability_ttl),
            replication: self.replication.or(lower.replication),
            commit_batch: self.commit_batch.or(lower.commit_batch),
            max_app_lease: self.max_app_lease.or(lower.max_app_lease),
        }
    }

    /// Validates into a config.
    pub fn resolve(self) -> Result<MasterConfig, SettingError> {
        let id = self.id.ok_or_else(|| bad("id", "missing"))?;
        let listen_s = self.listen.ok_or_else(|| bad("listen", "missing"))?;
        let listen: SocketAddr =
            listen_s.parse().map_err(|_| bad("listen", format!("{listen_s:?} is not HOST:PORT (an IP address)")))?;
        let peers = match self.peers {
            Some(p) => parse_peers(&p)?,
            None => BTreeMap::from([(id, listen.to_string())]),
        };
        let join = self.join.unwrap_or(false);
        if !join && !peers.contains_key(&id) {
            return Err(bad("peers", format!("does not list this master's id {id} (a new master: set join)")));
        }
        let data_dir = self.data_dir.ok_or_else(|| bad("data_dir", "missing"))?;
        let tls = self.tls.resolve()?;
        let connections = self.connections.resolve()?;
        let heartbeat_interval =
            duration("heartbeat_interval", self.heartbeat_interval.as_deref(), Duration::from_secs(2))?;
        let worker_timeout = duration("worker_timeout", self.worker_timeout.as_deref(), Duration::from_secs(30))?;
        if worker_timeout <= heartbeat_interval * 2 {
            return Err(bad("worker_timeout", "must exceed two heartbeat intervals"));
        }
        let election_timeout =
            duration("election_timeout", self.election_timeout.as_deref(), Duration::from_millis(500))?;
        if election_timeout < Duration::from_millis(100) {
            return Err(bad("election_timeout", "must be at least 100ms"));
        }
        let snapshot_every = self.snapshot_every.unwrap_or(10_000);
        if snapshot_every == 0 {
            return Err(bad("snapshot_every", "must be positive"));
        }
        let replication = self.replication.unwrap_or(1);
        if !(1..=2).contains(&replication) {
            return Err(bad("replication", format!("{replication} copies: Shoal keeps 1 or 2")));
        }
        let commit_batch = self.commit_batch.unwrap_or(crate::group::Limits::default().max_commands);
        if !(1..=4096).contains(&commit_batch) {
            return Err(bad("commit_batch", format!("{commit_batch}: between 1 and 4096")));
        }
        let max_app_lease = duration("max_app_lease", self.max_app_lease.as_deref(), DEFAULT_MAX_APP_LEASE)?;
        if max_app_lease < Duration::from_secs(4) {
            return Err(bad("max_app_lease", "must be at least 4s (the shortest lease Spark asks for)"));
        }
        let http_listen = match self.http_listen {
            None => None,
            Some(h) => Some(h.parse().map_err(|_| bad("http_listen", format!("{h:?} is not IP:PORT")))?),
        };
        let auth = match (self.auth_disabled.unwrap_or(false), self.auth_principals, self.auth_signing_keys) {
            (true, None, None) => AuthConfig::Disabled,
            (true, _, _) => return Err(bad("auth_disabled", "set together with auth files")),
            (false, Some(principals), Some(signing_keys)) => {
                let token_ttl = duration("token_ttl", self.token_ttl.as_deref(), Duration::from_secs(7 * 24 * 3600))?;
                let capability_ttl =
                    duration("capability_ttl", self.capability_ttl.as_deref(), Duration::from_secs(3600))?;
                if capability_ttl < Duration::from_secs(60) || token_ttl < Duration::from_secs(60) {
                    return Err(bad("capability_ttl", "token and capability lifetimes must be at least 1m"));
                }
                AuthConfig::Files { principals, signing_keys, token_ttl, capability_ttl }
            }
            (false, None, _) => {
                return Err(bad(
                    "auth_principals",
                    "missing (make one with `shoal auth init`, or set auth_disabled for a throwaway cluster)",
                ))
            }
            (false, _, None) => return Err(bad("auth_signing_keys", "missing (make one with `shoal auth init`)")),
        };
        Ok(MasterConfig {
            auth,
            http_listen,
            id,
            listen,
            peers,
            join,
            data_dir,
            tls,
            heartbeat_interval,
            worker_timeout,
            election_timeout,
            snapshot_every,
            replication,
            commit_batch,
            max_app_lease,
            connections,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> MasterSettings {
        MasterSettings {
            id: Some(1),
            listen: Some("127.0.0.1:9100".into()),
            data_dir: Some("/tmp/x".into()),
            tls: TlsSettings::insecure(),
            auth_disabled: Some(true),
            ..Default::default()
        }
    }

    #[test]
    fn errors_name_the_key() {
        let e = MasterSettings { id: None, ..base() }.resolve().unwrap_err();
        assert_eq!(e.key, "id");
        let e = MasterSettings { listen: Some("nowhere".into()), ..base() }.resolve().unwrap_err();
        assert_eq!(e.key, "listen");
        let e = MasterSettings { peers: Some("2=a:1".into()), ..base() }.resolve().unwrap_err();
        assert_eq!(e.key, "peers");
        let e = MasterSettings { worker_timeout: Some("ten".into()), ..base() }.resolve().unwrap_err();
        assert_eq!(e.key, "worker_timeout");
        let e = MasterSettings { tls: TlsSettings::default(), ..base() }.resolve().unwrap_err();
        assert_eq!(e.key, "tls_cert");
        assert!(e.to_string().contains("tls_cert"));
        let e = MasterSettings { auth_disabled: None, ..base() }.resolve().unwrap_err();
        assert_eq!(e.key, "auth_principals", "authentication is on unless turned off by name");
        let e = MasterSettings { auth_principals: Some("p".into()), ..base() }.resolve().unwrap_err();
        assert_eq!(e.key, "auth_disabled");
        let on = MasterSettings {
            auth_disabled: None,
            auth_principals: Some("p".into()),
            auth_signing_keys: Some("k".into()),
            ..base()
        };
        assert!(matches!(on.clone().resolve().unwrap().auth, AuthConfig::Files { .. }));
        let e = MasterSettings { capability_ttl: Some("1s".into()), ..on }.resolve().unwrap_err();
        assert_eq!(e.key, "capability_ttl");
        let e = MasterSettings { max_app_lease: Some("1s".into()), ..base() }.resolve().unwrap_err();
        assert_eq!(e.key, "max_app_lease");
        assert_eq!(base().resolve().unwrap().max_app_lease, DEFAULT_MAX_APP_LEASE);
    }

    #[test]
    fn file_then_flags_with_unknown_keys_reported() {
        let (file, unknown) = parse_file(
            "id = 2\nlisten = \"127.0.0.1:1\"\npeers = \"1=a:1,2=b:2\"\ndata_dir = \"/d\"\ntls_insecure = true\nauth_disabled = true\nfuture_knob = 3\n",
        )
        .unwrap();
        assert_eq!(unknown, vec!["future_knob".to_string()]);
        let flags = MasterSettings { listen: Some("127.0.0.1:2".into()), ..Default::default() };
        let cfg = flags.over(file).resolve().unwrap();
        assert_eq!(cfg.id, 2);
        assert_eq!(cfg.listen.port(), 2);
        assert_eq!(cfg.peers.len(), 2);
        assert!(parse_file("id = \"x\"").is_err());
    }

    #[test]
    fn peers_parse_strictly() {
        assert_eq!(parse_peers("1=a:1, 2=b:2").unwrap().len(), 2);
        assert!(parse_peers("1=a:1,1=b:2").is_err());
        assert!(parse_peers("0=a:1").is_err());
        assert!(parse_peers("x=a:1").is_err());
        assert!(parse_peers("1=a").is_err());
    }

    #[test]
    fn a_joining_master_need_not_be_in_peers() {
        let e = MasterSettings { id: Some(4), peers: Some("1=a:1,2=b:2,3=c:3".into()), ..base() };
        assert_eq!(e.clone().resolve().unwrap_err().key, "peers");
        let cfg = MasterSettings { join: Some(true), ..e }.resolve().unwrap();
        assert!(cfg.join);
        assert!(!base().resolve().unwrap().join);
        let (file, _) = parse_file("join = true\n").unwrap();
        assert_eq!(file.join, Some(true));
    }
}
