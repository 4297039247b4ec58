//! `shoal certs`: make the cluster CA and node certificates (see docs/operations.md,
//! "Certificates").

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use shuffle_proto::certs::{ClusterCa, NodeCertSpec};

/// What `shoal certs ca` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaWritten {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What `shoal certs node` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeWritten {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes a new CA as `ca.pem` and `ca.key` in `out`. Refuses to replace an existing CA key:
/// every certificate it signed would stop verifying against a new CA.
pub fn make_ca(out: &Path, name: &str, days: u32) -> anyhow::Result<CaWritten> {
    let written = CaWritten { cert: out.join("ca.pem"), key: out.join("ca.key") };
    for f in [&written.cert, &written.key] {
        if f.exists() {
            anyhow::bail!("{} already exists; remove it or choose another --out", f.display());
        }
    }
    let ca = ClusterCa::generate(name, days)?;
    ca.write(out)?;
    Ok(written)
}

/// Issues a node certificate with the CA in `ca_dir` (`ca.pem`, `ca.key`) and writes
/// `<name>.pem` and `<name>.key` in `out`.
pub fn make_node(ca_dir: &Path, out: &Path, spec: &NodeCertSpec) -> anyhow::Result<NodeWritten> {
    let ca = ClusterCa::load(&ca_dir.join("ca.pem"), &ca_dir.join("ca.key"))
        .with_context(|| format!("loading the CA from {}", ca_dir.display()))?;
    let cert = ca.issue(spec)?;
    cert.write(out, &spec.name)?;
    Ok(NodeWritten { cert: out.join(format!("{}.pem", spec.name)), key: out.join(format!("{}.key", spec.name)) })
}

/// The spec `shoal certs node` builds from its flags.
pub fn node_spec(name: String, dns: Vec<String>, ips: Vec<IpAddr>, days: u32) -> NodeCertSpec {
    NodeCertSpec { name, dns, ips, validity_days: days }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_then_node() {
        let dir = tempfile::tempdir().unwrap();
        let ca = make_ca(dir.path(), "test CA", 30).unwrap();
        assert!(ca.cert.exists() && ca.key.exists());
        let err = make_ca(dir.path(), "test CA", 30).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        let out = dir.path().join("nodes");
        let spec = node_spec("w0".into(), vec!["w0.example".into()], vec!["127.0.0.1".parse().unwrap()], 10);
        let node = make_node(dir.path(), &out, &spec).unwrap();
        assert_eq!(node.cert, out.join("w0.pem"));
        assert!(node.key.exists());
        let err = make_node(&dir.path().join("none"), &out, &spec).unwrap_err();
        assert!(format!("{err:#}").contains("loading the CA"), "{err:#}");
    }
}
