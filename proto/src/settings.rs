//! Settings helpers shared by the binaries: TOML files with unknown keys reported, human
//! durations and sizes, TLS file settings, and errors that name the key.

use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::transport::TlsSource;

/// A setting that is missing or wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("setting `{key}`: {reason}")]
pub struct SettingError {
    pub key: &'static str,
    pub reason: String,
}

pub fn bad(key: &'static str, reason: impl Into<String>) -> SettingError {
    SettingError { key, reason: reason.into() }
}

/// Parses a TOML file's text into `T`; returns the keys not in `known` or [`TLS_KEYS`] (to be
/// warned about, not refused, so a newer config can roll out before the binaries).
pub fn parse_toml<T: DeserializeOwned>(text: &str, known: &[&str]) -> Result<(T, Vec<String>), SettingError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| bad("config", e.to_string()))?;
    let unknown =
        table.keys().filter(|k| ![known, TLS_KEYS, CONNECTION_KEYS].concat().contains(&k.as_str())).cloned().collect();
    let t = T::deserialize(toml::Value::Table(table)).map_err(|e| bad("config", e.to_string()))?;
    Ok((t, unknown))
}

/// Reads and parses a config file, logging unknown keys.
pub fn read_toml_file<T: DeserializeOwned + Default>(path: Option<&PathBuf>, known: &[&str]) -> Result<T, String> {
    let Some(path) = path else { return Ok(T::default()) };
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let (t, unknown) = parse_toml(&text, known).map_err(|e| format!("in {}: {e}", path.display()))?;
    for k in unknown {
        tracing::warn!("{}: unknown setting `{k}` ignored", path.display());
    }
    Ok(t)
}

pub fn duration(key: &'static str, v: Option<&str>, default: Duration) -> Result<Duration, SettingError> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s).map_err(|e| bad(key, format!("{s:?} is not a duration: {e}"))),
    }
}

pub fn size(key: &'static str, v: Option<&str>, default: u64) -> Result<u64, SettingError> {
    match v {
        None => Ok(default),
        Some(s) => s.parse::<bytesize::ByteSize>().map(|b| b.as_u64()).map_err(|e| bad(key, format!("{s:?}: {e}"))),
    }
}

/// The TLS settings every binary takes.
#[derive(Clone, Debug, Default, serde::Deserialize, clap::Args)]
pub struct TlsSettings {
    /// PEM certificate chain of this node (signed by the cluster CA).
    #[arg(long, env = "SHOAL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of this node.
    #[arg(long, env = "SHOAL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM cluster CA certificate.
    #[arg(long, env = "SHOAL_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Accept any peer certificate (throwaway local clusters only).
    #[arg(long, env = "SHOAL_TLS_INSECURE")]
    pub tls_insecure: Option<bool>,
}

/// The file keys of [`TlsSettings`].
pub const TLS_KEYS: &[&str] = &["tls_cert", "tls_key", "tls_ca", "tls_insecure"];

impl TlsSettings {
    /// `self` wins over `lower` key by key.
    pub fn over(self, lower: TlsSettings) -> TlsSettings {
        TlsSettings {
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            tls_ca: self.tls_ca.or(lower.tls_ca),
            tls_insecure: self.tls_insecure.or(lower.tls_insecure),
        }
    }

    pub fn insecure() -> TlsSettings {
        TlsSettings { tls_insecure: Some(true), ..Default::default() }
    }

    pub fn resolve(self) -> Result<TlsSource, SettingError> {
        tls(self.tls_cert, self.tls_key, self.tls_ca, self.tls_insecure)
    }
}

/// How many connections a node's QUIC server takes ([`crate::admission`]); every binary that
/// serves takes them.
#[derive(Clone, Debug, Default, serde::Deserialize, clap::Args)]
pub struct ConnectionSettings {
    /// Client connections (executors, drivers, the CLI) served at once; a full pool closes
    /// its idlest client for a newcomer.
    #[arg(long, env = "SHOAL_MAX_CLIENT_CONNECTIONS")]
    pub max_client_connections: Option<usize>,
    /// Client connections from one IP address.
    #[arg(long, env = "SHOAL_MAX_CLIENT_CONNECTIONS_PER_SOURCE")]
    pub max_client_connections_per_source: Option<usize>,
    /// Connections of cluster nodes (a pool of their own).
    #[arg(long, env = "SHOAL_MAX_NODE_CONNECTIONS")]
    pub max_node_connections: Option<usize>,
    /// Handshakes in flight; past an eighth of it, unvalidated peers get a QUIC Retry first.
    #[arg(long, env = "SHOAL_MAX_HANDSHAKES")]
    pub max_handshakes: Option<usize>,
}

/// The file keys of [`ConnectionSettings`].
pub const CONNECTION_KEYS: &[&str] =
    &["max_client_connections", "max_client_connections_per_source", "max_node_connections", "max_handshakes"];

impl ConnectionSettings {
    /// `self` wins over `lower` key by key.
    pub fn over(self, lower: ConnectionSettings) -> ConnectionSettings {
        ConnectionSettings {
            max_client_connections: self.max_client_connections.or(lower.max_client_connections),
            max_client_connections_per_source: self
                .max_client_connections_per_source
                .or(lower.max_client_connections_per_source),
            max_node_connections: self.max_node_connections.or(lower.max_node_connections),
            max_handshakes: self.max_handshakes.or(lower.max_handshakes),
        }
    }

    pub fn resolve(self) -> Result<crate::admission::AdmissionLimits, SettingError> {
        let d = crate::admission::AdmissionLimits::default();
        let positive = |key: &'static str, v: Option<usize>, default: usize| match v {
            Some(0) => Err(bad(key, "must be positive")),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let max_handshakes = positive("max_handshakes", self.max_handshakes, d.max_handshakes)?;
        Ok(crate::admission::AdmissionLimits {
            max_clients: positive("max_client_connections", self.max_client_connections, d.max_clients)?,
            max_client_per_source: positive(
                "max_client_connections_per_source",
                self.max_client_connections_per_source,
                d.max_client_per_source,
            )?,
            max_nodes: positive("max_node_connections", self.max_node_connections, d.max_nodes)?,
            retry_above: (max_handshakes / 8).max(1),
            max_handshakes,
        })
    }
}

/// TLS from the `tls_cert`, `tls_key`, `tls_ca` and `tls_insecure` settings.
pub fn tls(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    insecure: Option<bool>,
) -> Result<TlsSource, SettingError> {
    match (cert, key, ca, insecure.unwrap_or(false)) {
        (Some(cert), Some(key), Some(ca), false) => Ok(TlsSource::Files { cert, key, ca }),
        (None, None, None, true) => Ok(TlsSource::Insecure),
        (_, _, _, true) => Err(bad("tls_insecure", "set together with certificate files")),
        (None, _, _, false) => Err(bad("tls_cert", "missing (or set tls_insecure for a local cluster)")),
        (_, None, _, false) => Err(bad("tls_key", "missing")),
        (_, _, None, false) => Err(bad("tls_ca", "missing")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_name_the_key() {
        assert_eq!(duration("d", Some("ten"), Duration::ZERO).unwrap_err().key, "d");
        assert_eq!(duration("d", Some("250ms"), Duration::ZERO).unwrap(), Duration::from_millis(250));
        assert_eq!(size("s", Some("2GiB"), 0).unwrap(), 2 << 30);
        assert_eq!(size("s", Some("lots"), 0).unwrap_err().key, "s");
        assert_eq!(tls(None, None, None, None).unwrap_err().key, "tls_cert");
        assert_eq!(tls(Some("c".into()), None, Some("a".into()), None).unwrap_err().key, "tls_key");
        assert!(matches!(tls(None, None, None, Some(true)), Ok(TlsSource::Insecure)));
        #[derive(serde::Deserialize, Default)]
        struct S {
            #[allow(dead_code)]
            a: Option<u32>,
        }
        let (_, unknown) = parse_toml::<S>("a = 1\nb = 2\n", &["a"]).unwrap();
        assert_eq!(unknown, vec!["b".to_string()]);
        assert!(parse_toml::<S>("a = \"x\"", &["a"]).is_err());
    }
}
