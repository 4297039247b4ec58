//! The `shoal` command line: cluster status for people and scripts, and `local up`, a whole
//! cluster on this machine as child processes.
//!
//! Exit codes: 0 success; 1 bad usage, settings or a local failure; 2 the cluster could not be
//! reached; 3 the cluster refused the request; 4 a `--wait` timed out (or the worker was lost).

pub mod admin;
pub mod certs;
pub mod local;
pub mod status;

use shuffle_proto::transport::{TlsSource, TransportError};

/// How the CLI authenticates masters.
pub fn tls_source(ca: Option<std::path::PathBuf>, insecure: bool) -> Result<TlsSource, String> {
    match (ca, insecure) {
        (Some(ca), false) => Ok(TlsSource::CaOnly { ca }),
        (None, true) => Ok(TlsSource::Insecure),
        (Some(_), true) => Err("--tls-ca and --tls-insecure exclude each other".into()),
        (None, false) => Err("give --tls-ca (the cluster CA) or --tls-insecure".into()),
    }
}

/// The documented exit code for an error.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<admin::WaitError>().is_some_and(|w| !matches!(w, admin::WaitError::Unknown(_))) {
        return 4;
    }
    if e.downcast_ref::<admin::WaitError>().is_some() {
        return 3;
    }
    if let Some(t) = e.downcast_ref::<TransportError>() {
        return if matches!(t, TransportError::Remote(w) if !w.retryable()) { 3 } else { 2 };
    }
    if let Some(c) = e.downcast_ref::<crate::ClientError>() {
        return match c.kind() {
            crate::ErrorKind::Unavailable => 2,
            crate::ErrorKind::Rejected => 3,
            _ => 1,
        };
    }
    1
}
