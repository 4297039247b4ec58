//! Cluster certificates: a private CA and the node certificates it signs.
//!
//! Every node certificate carries the DNS name [`CLUSTER_SERVER_NAME`] (the name every client
//! verifies), plus whatever pod DNS names and IP addresses it is given, and is valid for both
//! server and client authentication: nodes authenticate to each other with mutual TLS.
//!
//! Files are PEM: `ca.pem` and `ca.key` for the CA, `<stem>.pem` and `<stem>.key` for a node.
//! Key files are created with mode 0600.
//!
//! Certificates are strict DER, so every verifier parses them, the strict ones too (Python's
//! `cryptography`, hence aioquic): in particular no field holding its DEFAULT value is encoded,
//! so a node's basicConstraints is an empty SEQUENCE (cA defaults to FALSE), never an
//! explicit `cA FALSE`.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use crate::transport::CLUSTER_SERVER_NAME;

/// The common name of a CA made without one.
pub const DEFAULT_CA_NAME: &str = "Shoal cluster CA";
/// The organisation in every subject this module writes.
pub const ORGANIZATION: &str = "Shoal";
/// Days a new CA is valid for unless told otherwise.
pub const DEFAULT_CA_VALIDITY_DAYS: u32 = 3650;
/// Days a new node certificate is valid for unless told otherwise.
pub const DEFAULT_NODE_VALIDITY_DAYS: u32 = 365;
/// The longest validity accepted (100 years).
pub const MAX_VALIDITY_DAYS: u32 = 36_500;
/// The name of the generic node certificate [`write_local_cluster`] writes as `node.pem`.
pub const GENERIC_NODE_NAME: &str = "shoal-node";

/// How long before "now" a certificate starts to be valid, for clocks a little behind.
const BACKDATE: Duration = Duration::from_secs(3600);

/// id-ce-basicConstraints (RFC 5280, 4.2.1.9).
const BASIC_CONSTRAINTS_OID: &[u64] = &[2, 5, 29, 19];

/// basicConstraints of a certificate that is not a CA: an empty SEQUENCE. rcgen's
/// `IsCa::ExplicitNoCa` writes `cA FALSE`, a DEFAULT value that DER forbids encoding, and
/// strict parsers refuse the whole certificate for it.
fn not_a_ca() -> CustomExtension {
    let mut ext = CustomExtension::from_oid_content(BASIC_CONSTRAINTS_OID, vec![0x30, 0x00]);
    ext.set_criticality(true);
    ext
}

/// Why a certificate could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("invalid certificate request: {0}")]
    Invalid(String),
    // The causes are part of the message (one line for people), not chained as sources.
    #[error("cannot {what}: {err}")]
    Rcgen { what: String, err: rcgen::Error },
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{}: not a CA certificate (basicConstraints CA:TRUE is missing)", path.display())]
    NotCa { path: PathBuf },
    #[error("{} is not the private key of {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("the system clock is before 1970")]
    Clock,
}

fn rcgen_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CertError {
    let what = what.into();
    move |err| CertError::Rcgen { what, err }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |err| CertError::Io { path: path.to_path_buf(), err }
}

/// What a node certificate is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCertSpec {
    /// The subject's common name, and the file stem [`write_local_cluster`] uses.
    pub name: String,
    /// DNS names besides [`CLUSTER_SERVER_NAME`], which every node certificate carries.
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub validity_days: u32,
}

impl NodeCertSpec {
    /// A spec with only the cluster name and [`DEFAULT_NODE_VALIDITY_DAYS`].
    pub fn new(name: impl Into<String>) -> NodeCertSpec {
        NodeCertSpec { name: name.into(), dns: Vec::new(), ips: Vec::new(), validity_days: DEFAULT_NODE_VALIDITY_DAYS }
    }
}

/// A node certificate (signed by the cluster CA) and its private key, both PEM.
#[derive(Clone)]
pub struct NodeCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCert").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

impl NodeCert {
    /// Writes `<stem>.pem` and `<stem>.key` (mode 0600) into `dir`, creating it if needed.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(), CertError> {
        check_file_stem(stem)?;
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        write_public(&dir.join(format!("{stem}.pem")), &self.cert_pem)?;
        write_private(&dir.join(format!("{stem}.key")), &self.key_pem)
    }
}

/// The cluster CA: its certificate and private key.
pub struct ClusterCa {
    /// The certificate as written (or read), PEM.
    cert_pem: String,
    /// The issuer rcgen signs with: the CA's subject, key identifier and key usages.
    issuer: Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new CA (ECDSA P-256) with the subject `CN=<common_name>, O=Shoal`, valid from now for
    /// `validity_days`. An empty `common_name` means [`DEFAULT_CA_NAME`].
    pub fn generate(common_name: &str, validity_days: u32) -> Result<ClusterCa, CertError> {
        let common_name = if common_name.trim().is_empty() { DEFAULT_CA_NAME } else { common_name };
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, validity_days)?;
        let key = KeyPair::generate().map_err(rcgen_err("generate the CA key"))?;
        let issuer = params.self_signed(&key).map_err(rcgen_err("sign the CA certificate"))?;
        Ok(ClusterCa { cert_pem: issuer.pem(), issuer, key })
    }

    /// Reads a CA certificate and its private key (PEM; PKCS#8 keys), for example the files
    /// [`ClusterCa::write`] wrote. The key must belong to the certificate.
    pub fn load(cert_pem_path: &Path, key_pem_path: &Path) -> Result<ClusterCa, CertError> {
        let cert_pem = std::fs::read_to_string(cert_pem_path).map_err(io_err(cert_pem_path))?;
        let key_pem = std::fs::read_to_string(key_pem_path).map_err(io_err(key_pem_path))?;
        let params = CertificateParams::from_ca_cert_pem(&cert_pem)
            .map_err(rcgen_err(format!("read the CA certificate {}", cert_pem_path.display())))?;
        if !matches!(params.is_ca, IsCa::Ca(_)) {
            return Err(CertError::NotCa { path: cert_pem_path.to_path_buf() });
        }
        let key =
            KeyPair::from_pem(&key_pem).map_err(rcgen_err(format!("read the CA key {}", key_pem_path.display())))?;
        // The certificate holds its subject public key info verbatim (DER is canonical).
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| CertError::Invalid(format!("{}: {e}", cert_pem_path.display())))?;
        let spki = key.public_key_der();
        if spki.is_empty() || !cert_der.as_ref().windows(spki.len()).any(|w| w == spki.as_slice()) {
            return Err(CertError::KeyMismatch { cert: cert_pem_path.to_path_buf(), key: key_pem_path.to_path_buf() });
        }
        // Only the subject, key identifier and key usages of `issuer` are used when signing;
        // the file keeps the original certificate.
        let issuer = params.self_signed(&key).map_err(rcgen_err("rebuild the CA issuer"))?;
        Ok(ClusterCa { cert_pem, issuer, key })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Writes `ca.pem` and `ca.key` (mode 0600) into `dir`, creating it if needed.
    pub fn write(&self, dir: &Path) -> Result<(), CertError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        write_public(&dir.join("ca.pem"), &self.cert_pem)?;
        write_private(&dir.join("ca.key"), &self.key_pem())
    }

    /// A new node certificate (new ECDSA P-256 key) signed by this CA: subject
    /// `CN=<name>, O=Shoal`; SANs [`CLUSTER_SERVER_NAME`], `spec.dns` and `spec.ips`; extended
    /// key usages serverAuth and clientAuth; key usages digitalSignature and keyEncipherment;
    /// not a CA.
    pub fn issue(&self, spec: &NodeCertSpec) -> Result<NodeCert, CertError> {
        let name = spec.name.trim();
        if name.is_empty() {
            return Err(CertError::Invalid("a node certificate needs a name".into()));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(name);
        // Said explicitly (not only by leaving basicConstraints out), in valid DER.
        params.is_ca = IsCa::NoCa;
        params.custom_extensions = vec![not_a_ca()];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.subject_alt_names = subject_alt_names(spec)?;
        set_validity(&mut params, spec.validity_days)?;
        let key = KeyPair::generate().map_err(rcgen_err("generate a node key"))?;
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(rcgen_err(format!("sign the certificate of {name}")))?;
        Ok(NodeCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// Writes a new CA and a certificate per node into `dir`: `ca.pem`, `ca.key`, and
/// `<name>.pem`/`<name>.key` per node; also `node.pem`/`node.key`, one generic certificate
/// named [`GENERIC_NODE_NAME`] for `localhost` and 127.0.0.1, for callers that give every node
/// the same certificate.
pub fn write_local_cluster(dir: &Path, nodes: &[NodeCertSpec]) -> Result<(), CertError> {
    let mut stems: Vec<&str> = vec!["ca", "node"];
    for n in nodes {
        check_file_stem(&n.name)?;
        if stems.contains(&n.name.as_str()) {
            return Err(CertError::Invalid(format!(
                "node name {:?} is used twice or clashes with ca.pem or node.pem",
                n.name
            )));
        }
        stems.push(&n.name);
    }
    let ca = ClusterCa::generate(DEFAULT_CA_NAME, DEFAULT_CA_VALIDITY_DAYS)?;
    let generic = NodeCertSpec {
        name: GENERIC_NODE_NAME.into(),
        dns: vec!["localhost".into()],
        ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        validity_days: nodes.iter().map(|n| n.validity_days).max().unwrap_or(DEFAULT_NODE_VALIDITY_DAYS),
    };
    let generic_cert = ca.issue(&generic)?;
    let node_certs = nodes.iter().map(|n| ca.issue(n)).collect::<Result<Vec<_>, _>>()?;
    ca.write(dir)?;
    generic_cert.write(dir, "node")?;
    for (spec, cert) in nodes.iter().zip(&node_certs) {
        cert.write(dir, &spec.name)?;
    }
    Ok(())
}

fn subject(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn
}

fn subject_alt_names(spec: &NodeCertSpec) -> Result<Vec<SanType>, CertError> {
    let mut dns: Vec<&str> = vec![CLUSTER_SERVER_NAME];
    for d in &spec.dns {
        let d = d.trim();
        if d.is_empty() {
            return Err(CertError::Invalid("an empty DNS name".into()));
        }
        if !dns.iter().any(|have| have.eq_ignore_ascii_case(d)) {
            dns.push(d);
        }
    }
    let mut sans = Vec::with_capacity(dns.len() + spec.ips.len());
    for d in dns {
        let ia5 = d.try_into().map_err(|_| CertError::Invalid(format!("DNS name {d:?} is not ASCII")))?;
        sans.push(SanType::DnsName(ia5));
    }
    for ip in &spec.ips {
        if !sans.contains(&SanType::IpAddress(*ip)) {
            sans.push(SanType::IpAddress(*ip));
        }
    }
    Ok(sans)
}

#[allow(clippy::disallowed_methods)] // certificates are dated by the wall clock
fn set_validity(params: &mut CertificateParams, days: u32) -> Result<(), CertError> {
    if days == 0 || days > MAX_VALIDITY_DAYS {
        return Err(CertError::Invalid(format!("validity of {days} days: give 1 to {MAX_VALIDITY_DAYS}")));
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|_| CertError::Clock)?;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + now.saturating_sub(BACKDATE);
    params.not_after = epoch + now + Duration::from_secs(u64::from(days) * 86_400);
    Ok(())
}

/// A stem must name a file in the directory itself.
fn check_file_stem(stem: &str) -> Result<(), CertError> {
    if stem.is_empty() || stem == "." || stem == ".." || stem.contains(['/', '\\', '\0']) {
        return Err(CertError::Invalid(format!("{stem:?} cannot be a file name")));
    }
    Ok(())
}

fn write_public(path: &Path, text: &str) -> Result<(), CertError> {
    std::fs::write(path, text).map_err(io_err(path))
}

/// Creates (or truncates) a file readable by its owner only; an existing file's mode is reset.
pub(crate) fn write_owner_only(path: &Path, text: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

fn write_private(path: &Path, text: &str) -> Result<(), CertError> {
    write_owner_only(path, text).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};

    use super::*;

    /// Whether `program` runs at all (it is installed and on PATH).
    fn installed(program: &str, probe: &[&str]) -> bool {
        Command::new(program).args(probe).output().is_ok_and(|o| o.status.success())
    }

    fn openssl(args: &[&str]) -> Option<std::process::Output> {
        if !installed("openssl", &["version"]) {
            eprintln!("note: openssl is not installed; skipping the openssl checks (scripts/setup.sh installs it)");
            return None;
        }
        Some(Command::new("openssl").args(args).output().unwrap())
    }

    /// A Python with `cryptography` (and its verifier): the venv scripts/setup.sh makes, else
    /// `python3`.
    fn python_with_cryptography() -> Option<PathBuf> {
        let cache = std::env::var_os("SHOAL_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/shoal")));
        let venv = cache.map(|c| c.join("venv/bin/python"));
        venv.into_iter()
            .chain([PathBuf::from("python3")])
            .find(|py| installed(&py.to_string_lossy(), &["-c", "import cryptography.x509.verification"]))
    }

    /// Parses both certificates, every extension included, then verifies the node for the
    /// cluster name as a server and as a client, with `cryptography`'s RFC 5280 verifier.
    const PY_CHECK: &str = r#"
import sys
from cryptography import x509
from cryptography.x509 import verification
ca, node = (x509.load_pem_x509_certificate(open(p, "rb").read()) for p in sys.argv[1:3])
for cert in (ca, node):
    for ext in cert.extensions:
        pass
assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
assert not node.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
store = verification.Store([ca])
verification.PolicyBuilder().store(store).build_server_verifier(x509.DNSName("shoal")).verify(node, [])
verification.PolicyBuilder().store(store).build_client_verifier().verify(node, [])
print("verified")
"#;

    /// One DER element: (tag, contents, what follows). Refuses indefinite, long-form-when-short
    /// and zero-padded lengths, which DER forbids.
    fn tlv(b: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
        let (&tag, rest) = b.split_first().ok_or("missing tag")?;
        if tag & 0x1f == 0x1f {
            return Err(format!("multi-byte tag {tag:#x}"));
        }
        let (&first, rest) = rest.split_first().ok_or("missing length")?;
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return Err(format!("length form {first:#x}"));
            }
            let len = rest[..n].iter().fold(0usize, |a, b| a << 8 | *b as usize);
            if rest[0] == 0 || len < 0x80 {
                return Err(format!("non-minimal length {len}"));
            }
            (len, &rest[n..])
        };
        if rest.len() < len {
            return Err("truncated element".into());
        }
        Ok((tag, &rest[..len], &rest[len..]))
    }

    fn elements(mut b: &[u8]) -> Result<Vec<(u8, &[u8])>, String> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let (tag, body, rest) = tlv(b)?;
            out.push((tag, body));
            b = rest;
        }
        Ok(out)
    }

    /// The DER rules parsers disagree on, in the certificate and inside every extension's
    /// value: minimal lengths, and BOOLEANs. Every BOOLEAN in a certificate (an extension's
    /// `critical`, basicConstraints' `cA`) defaults to FALSE, so DER has only TRUE (0xff).
    fn strict_der(b: &[u8]) -> Result<(), String> {
        let items = elements(b)?;
        // An Extension is SEQUENCE { OID, BOOLEAN OPTIONAL, OCTET STRING holding DER }.
        let extension = items.len() >= 2 && items[0].0 == 0x06 && items.last().is_some_and(|i| i.0 == 0x04);
        for (i, (tag, body)) in items.iter().enumerate() {
            match tag {
                0x01 if *body != [0xff] => return Err(format!("BOOLEAN {body:02x?} (a DEFAULT encoded, or not DER)")),
                0x04 if extension && i == items.len() - 1 => strict_der(body)?,
                t if t & 0x20 != 0 => strict_der(body)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn spec() -> NodeCertSpec {
        NodeCertSpec {
            name: "shoal-worker-0".into(),
            dns: vec![
                "shoal-worker-0.shoal-worker-headless.ns.svc.cluster.local".into(),
                "*.shoal-master-headless.ns.svc.cluster.local".into(),
            ],
            ips: vec!["10.1.2.3".parse().unwrap(), "::1".parse().unwrap()],
            validity_days: 30,
        }
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn roots(ca_pem: &str) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(ca_pem)).unwrap();
        Arc::new(roots)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn verify_server(ca_pem: &str, cert_pem: &str, name: &str) -> Result<(), rustls::Error> {
        let v = rustls::client::WebPkiServerVerifier::builder_with_provider(roots(ca_pem), provider()).build().unwrap();
        let name = ServerName::try_from(name.to_string()).unwrap();
        v.verify_server_cert(&der(cert_pem), &[], &name, &[], UnixTime::now()).map(|_| ())
    }

    fn verify_client(ca_pem: &str, cert_pem: &str) -> Result<(), rustls::Error> {
        let v = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca_pem), provider()).build().unwrap();
        v.verify_client_cert(&der(cert_pem), &[], UnixTime::now()).map(|_| ())
    }

    fn line(out: &std::process::Output) -> String {
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    #[test]
    fn openssl_verifies_the_chain_and_subjects_differ() {
        let dir = tempfile::tempdir().unwrap();
        write_local_cluster(dir.path(), &[spec()]).unwrap();
        for f in ["ca.pem", "ca.key", "node.pem", "node.key", "shoal-worker-0.pem", "shoal-worker-0.key"] {
            assert!(dir.path().join(f).exists(), "{f} missing");
        }
        for f in ["ca.key", "node.key", "shoal-worker-0.key"] {
            let mode = std::fs::metadata(dir.path().join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        let ca = dir.path().join("ca.pem").display().to_string();
        for node in ["node.pem", "shoal-worker-0.pem"] {
            let node = dir.path().join(node).display().to_string();
            let Some(out) = openssl(&["verify", "-CAfile", &ca, &node]) else { return };
            assert!(out.status.success(), "openssl verify: {}", line(&out));
            let out = openssl(&["verify", "-CAfile", &ca, "-purpose", "sslserver", &node]).unwrap();
            assert!(out.status.success(), "openssl verify sslserver: {}", line(&out));
            let out = openssl(&["verify", "-CAfile", &ca, "-purpose", "sslclient", &node]).unwrap();
            assert!(out.status.success(), "openssl verify sslclient: {}", line(&out));
            let out = openssl(&["x509", "-noout", "-subject", "-issuer", "-in", &node]).unwrap();
            assert!(out.status.success());
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let subject = text.lines().find(|l| l.starts_with("subject=")).unwrap().trim_start_matches("subject=");
            let issuer = text.lines().find(|l| l.starts_with("issuer=")).unwrap().trim_start_matches("issuer=");
            assert_ne!(subject, issuer, "{text}");
            assert!(issuer.contains("CN = Shoal cluster CA") && issuer.contains("O = Shoal"), "{text}");
            assert!(subject.contains("O = Shoal"), "{text}");
        }
        let out = openssl(&["x509", "-noout", "-ext", "subjectAltName,basicConstraints,keyUsage", "-in", &ca]).unwrap();
        let text = line(&out);
        assert!(text.contains("CA:TRUE") && text.contains("Certificate Sign") && text.contains("CRL Sign"), "{text}");
        let node = dir.path().join("shoal-worker-0.pem").display().to_string();
        let out =
            openssl(&["x509", "-noout", "-ext", "subjectAltName,extendedKeyUsage,basicConstraints", "-in", &node])
                .unwrap();
        let text = line(&out);
        for want in [
            "DNS:shoal,",
            "DNS:shoal-worker-0.shoal-worker-headless.ns.svc.cluster.local",
            "IP Address:10.1.2.3",
            "TLS Web Server Authentication",
            "TLS Web Client Authentication",
            "CA:FALSE",
        ] {
            assert!(text.contains(want), "{want} not in {text}");
        }
    }

    #[test]
    fn strict_der_parsers_accept_the_ca_and_node_certificates() {
        let dir = tempfile::tempdir().unwrap();
        write_local_cluster(dir.path(), &[spec()]).unwrap();
        let path = |f: &str| dir.path().join(f).display().to_string();
        let pem = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        for f in ["ca.pem", "node.pem", "shoal-worker-0.pem"] {
            strict_der(der(&pem(f)).as_ref()).unwrap_or_else(|e| panic!("{f} is not strict DER: {e}"));
        }
        // rustls/webpki.
        for node in ["node.pem", "shoal-worker-0.pem"] {
            verify_server(&pem("ca.pem"), &pem(node), CLUSTER_SERVER_NAME).unwrap();
            verify_client(&pem("ca.pem"), &pem(node)).unwrap();
        }
        // OpenSSL: parses every extension, verifies both purposes.
        for node in ["node.pem", "shoal-worker-0.pem"] {
            let Some(out) = openssl(&["x509", "-noout", "-text", "-in", &path(node)]) else { break };
            assert!(out.status.success(), "openssl x509 {node}: {}", line(&out));
            for purpose in ["sslserver", "sslclient"] {
                let out = openssl(&["verify", "-CAfile", &path("ca.pem"), "-purpose", purpose, &path(node)]).unwrap();
                assert!(out.status.success(), "openssl verify {purpose} {node}: {}", line(&out));
            }
        }
        // Python's cryptography: the strictest of the three.
        let Some(python) = python_with_cryptography() else {
            eprintln!(
                "note: no Python with `cryptography` (scripts/setup.sh installs it into $SHOAL_CACHE/venv); \
                 skipping its checks"
            );
            return;
        };
        for node in ["node.pem", "shoal-worker-0.pem"] {
            let out = Command::new(&python).args(["-c", PY_CHECK, &path("ca.pem"), &path(node)]).output().unwrap();
            assert!(out.status.success(), "cryptography refuses {node}: {}", line(&out));
        }
    }

    #[test]
    fn rustls_accepts_the_node_as_server_and_client() {
        let ca = ClusterCa::generate("test CA", 10).unwrap();
        let node = ca.issue(&spec()).unwrap();
        for name in
            [CLUSTER_SERVER_NAME, "shoal-worker-0.shoal-worker-headless.ns.svc.cluster.local", "10.1.2.3", "::1"]
        {
            verify_server(ca.cert_pem(), &node.cert_pem, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(verify_server(ca.cert_pem(), &node.cert_pem, "other.example").is_err());
        assert!(verify_server(ca.cert_pem(), &node.cert_pem, "10.9.9.9").is_err());
        verify_client(ca.cert_pem(), &node.cert_pem).unwrap();
    }

    #[test]
    fn a_certificate_from_another_ca_is_refused() {
        let ca = ClusterCa::generate(DEFAULT_CA_NAME, 10).unwrap();
        let other = ClusterCa::generate(DEFAULT_CA_NAME, 10).unwrap();
        let foreign = other.issue(&spec()).unwrap();
        assert!(verify_server(ca.cert_pem(), &foreign.cert_pem, CLUSTER_SERVER_NAME).is_err());
        assert!(verify_client(ca.cert_pem(), &foreign.cert_pem).is_err());
        // The CA's own certificate is no node certificate either.
        assert!(verify_server(ca.cert_pem(), ca.cert_pem(), CLUSTER_SERVER_NAME).is_err());
    }

    #[test]
    fn a_loaded_ca_issues_certificates_that_verify() {
        let dir = tempfile::tempdir().unwrap();
        let written = ClusterCa::generate("round trip CA", 10).unwrap();
        written.write(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("ca.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = ClusterCa::load(&dir.path().join("ca.pem"), &dir.path().join("ca.key")).unwrap();
        let ca_pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        assert_eq!(loaded.cert_pem(), ca_pem);
        let node = loaded.issue(&spec()).unwrap();
        node.write(dir.path(), "w0").unwrap();
        verify_server(&ca_pem, &node.cert_pem, CLUSTER_SERVER_NAME).unwrap();
        verify_server(&ca_pem, &node.cert_pem, "10.1.2.3").unwrap();
        verify_client(&ca_pem, &node.cert_pem).unwrap();
        let ca = dir.path().join("ca.pem").display().to_string();
        let w0 = dir.path().join("w0.pem").display().to_string();
        if let Some(out) = openssl(&["verify", "-CAfile", &ca, &w0]) {
            assert!(out.status.success(), "openssl verify: {}", line(&out));
        }
    }

    #[test]
    fn load_refuses_a_foreign_key_and_a_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate(DEFAULT_CA_NAME, 10).unwrap();
        ca.write(dir.path()).unwrap();
        let other = dir.path().join("other");
        ClusterCa::generate(DEFAULT_CA_NAME, 10).unwrap().write(&other).unwrap();
        let err = ClusterCa::load(&dir.path().join("ca.pem"), &other.join("ca.key")).unwrap_err();
        assert!(matches!(err, CertError::KeyMismatch { .. }), "{err}");
        ca.issue(&spec()).unwrap().write(dir.path(), "leaf").unwrap();
        let err = ClusterCa::load(&dir.path().join("leaf.pem"), &dir.path().join("leaf.key")).unwrap_err();
        assert!(matches!(err, CertError::NotCa { .. }), "{err}");
        let err = ClusterCa::load(&dir.path().join("missing.pem"), &dir.path().join("ca.key")).unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
    }

    #[test]
    fn bad_requests_are_errors() {
        let ca = ClusterCa::generate("", 10).unwrap();
        let bad = |f: fn(&mut NodeCertSpec)| {
            let mut s = spec();
            f(&mut s);
            ca.issue(&s).unwrap_err()
        };
        assert!(matches!(bad(|s| s.name.clear()), CertError::Invalid(_)));
        assert!(matches!(bad(|s| s.validity_days = 0), CertError::Invalid(_)));
        assert!(matches!(bad(|s| s.validity_days = u32::MAX), CertError::Invalid(_)));
        assert!(matches!(bad(|s| s.dns = vec!["ünicode.example".into()]), CertError::Invalid(_)));
        assert!(matches!(ClusterCa::generate("x", 0), Err(CertError::Invalid(_))));
        let dir = tempfile::tempdir().unwrap();
        let twice = [NodeCertSpec::new("a"), NodeCertSpec::new("a")];
        assert!(matches!(write_local_cluster(dir.path(), &twice), Err(CertError::Invalid(_))));
        assert!(matches!(write_local_cluster(dir.path(), &[NodeCertSpec::new("ca")]), Err(CertError::Invalid(_))));
        assert!(matches!(write_local_cluster(dir.path(), &[NodeCertSpec::new("../x")]), Err(CertError::Invalid(_))));
    }
}
