//! The `shoal` command line: cluster status for people and scripts, and `local up`, a whole
//! cluster on this machine as child processes.
//!
//! Exit codes: 0 success; 1 bad usage, settings or a local failure; 2 the cluster could not be
//! reached; 3 the cluster refused the request; 4 a `--wait` timed out (or the worker was lost).

pub mod admin;
pub mod certs;
pub mod local;
pub mod masters;
pub mod status;

use shuffle_proto::transport::{TlsSource, TransportError};

/// How the CLI authenticates masters, and itself: with a node certificate and key (a worker's
/// preStop hook, which has them mounted) the CLI speaks as a cluster node.
pub fn tls_source(
    ca: Option<std::path::PathBuf>,
    insecure: bool,
    node: Option<(std::path::PathBuf, std::path::PathBuf)>,
) -> Result<TlsSource, String> {
    match (ca, insecure) {
        (Some(ca), false) => Ok(match node {
            Some((cert, key)) => TlsSource::Files { cert, key, ca },
            None => TlsSource::CaOnly { ca },
        }),
        (None, true) => Ok(TlsSource::Insecure),
        (Some(_), true) => Err("--tls-ca and --tls-insecure exclude each other".into()),
        (None, false) => Err("give --tls-ca (the cluster CA) or --tls-insecure".into()),
    }
}

/// The credential the CLI presents: a file (`--credential-file`, `SHOAL_CREDENTIAL_FILE`), or
/// else the `SHOAL_CREDENTIAL` environment variable (`name:secret`). Never a flag: flags show
/// in process listings and shell history.
pub fn credential(file: Option<&std::path::Path>) -> anyhow::Result<Option<shuffle_proto::auth::Credential>> {
    use shuffle_proto::auth::Credential;
    if let Some(f) = file {
        return Ok(Some(Credential::load_secret_file(f)?));
    }
    match std::env::var("SHOAL_CREDENTIAL") {
        Ok(t) if !t.trim().is_empty() => Ok(Some(
            Credential::parse_secret(&t)
                .map_err(|e| anyhow::anyhow!("SHOAL_CREDENTIAL: {e} (expected name:secret)"))?,
        )),
        _ => Ok(None),
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
