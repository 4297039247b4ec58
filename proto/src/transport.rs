//! QUIC transport shared by every Shoal process: TLS setup, a request/reply client with
//! connection reuse, and a server loop.
//!
//! Invariants:
//! - TLS 1.3 always. Nodes present certificates signed by the cluster CA for the name
//!   [`CLUSTER_SERVER_NAME`]; a client trusts exactly that CA. Servers verify the client
//!   certificate a peer presents against the same CA (mutual TLS): a peer with one is a
//!   cluster node ([`CallInfo::node`]), a peer without one may only call with a credential,
//!   and a certificate from another CA fails the handshake. The insecure mode (no verification
//!   at all, every peer a node) exists for throwaway local experiments and is asked for by name.
//! - One request per bidirectional stream; the reply (or a stream of replies) comes back on it.
//! - A frame that fails to decode ends its connection with a typed error sent first; the
//!   server keeps running. A peer closing its connection is normal, not an error.
//! - Connections are bounded on the server; every client call is bounded in time.
//! - A server never buffers what a peer only announced: a frame's bytes are reserved against a
//!   per-connection and a node-wide budget before they are read, and released when its call
//!   ends. A header must arrive within `header_timeout` of its stream, the rest within
//!   `frame_timeout`, and a connection with no call for `idle_timeout` is closed. Beside the
//!   budget, QUIC flow control holds at most [`SERVER_CONN_WINDOW`] unread bytes per
//!   connection, so a node's frame memory is at most `budgets + connections × window`.
//! - Connections are admitted by [`crate::admission`]: a bounded handshake pool (QUIC Retry
//!   for unvalidated peers under load), then separate pools for cluster nodes and clients,
//!   decided after the handshake, so clients never keep nodes out; a full client pool closes
//!   its idlest client for a newcomer. Nodes and clients have separate frame budgets, and each
//!   client source address its own share.
//! - Replies are bounded the same way: a handler reserves the bytes it is about to produce
//!   ([`Responder::reserve`]) against the budgets its request took, and every reply write
//!   must make progress within `stall_timeout`, or the stream is reset and the call ends,
//!   releasing what it held. So a peer that stops reading holds a call (and the connection,
//!   which is not idle while a call runs) for at most `stall_timeout` past its last read.
//! - Errors sent to a peer carry a code and a fixed, short message; detail is logged locally,
//!   rate-limited.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use tracing::{debug, info_span, warn, Instrument};

use crate::admission::{Admission, AdmissionLimits, OnEstablished, OnIncoming, Pool};

use crate::auth::Credential;
use crate::error::{ErrorCode, ProtoError, WireError};
use crate::frame::{read_frame, read_header, read_rest, write_request, FrameLimits};
use crate::messages::{Message, MessageType, ReplyError};
use crate::retry::Backoff;

/// The TLS name every node certificate carries; clients verify it against the cluster CA.
pub const CLUSTER_SERVER_NAME: &str = "shoal";
const ALPN: &[u8] = b"shoal/1";
/// Unread bytes a client may have in flight on one connection to a server (QUIC flow
/// control): a map writer's window of 16 × 256 KiB batches fits, and on a data-centre round
/// trip it is far above the bandwidth-delay product.
pub const SERVER_CONN_WINDOW: u32 = 4 << 20;
/// In-flight bytes a server may stream to a client on one connection (reads).
const CLIENT_CONN_WINDOW: u32 = 64 << 20;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("connection to {addr} lost: {reason}")]
    Connection { addr: String, reason: String },
    #[error("{addr} did not answer within {after:?}")]
    Timeout { addr: String, after: Duration },
    #[error("{addr} closed the stream without a reply")]
    NoReply { addr: String },
    #[error("protocol: {0}")]
    Proto(#[from] ProtoError),
    #[error("{0}")]
    Remote(WireError),
    #[error("tls: {0}")]
    Tls(String),
}

impl TransportError {
    /// Whether the call may succeed if made again (maybe against another node).
    pub fn retryable(&self) -> bool {
        match self {
            TransportError::Resolve(_)
            | TransportError::Connect { .. }
            | TransportError::Connection { .. }
            | TransportError::Timeout { .. }
            | TransportError::NoReply { .. } => true,
            TransportError::Remote(e) => e.retryable(),
            TransportError::Proto(_) | TransportError::Tls(_) => false,
        }
    }

    /// The wire code this failure amounts to, for callers that report it onwards.
    pub fn code(&self) -> ErrorCode {
        match self {
            TransportError::Remote(e) => e.code(),
            TransportError::Proto(p) => p.code(),
            TransportError::Timeout { .. } => ErrorCode::Timeout,
            TransportError::Tls(_) => ErrorCode::Unauthorized,
            _ => ErrorCode::Timeout,
        }
    }

    /// Whether the peer itself could not be reached (as opposed to answering with an error).
    pub fn unreachable(&self) -> bool {
        matches!(
            self,
            TransportError::Resolve(_)
                | TransportError::Connect { .. }
                | TransportError::Connection { .. }
                | TransportError::Timeout { .. }
                | TransportError::NoReply { .. }
        )
    }
}

impl From<ReplyError> for TransportError {
    fn from(e: ReplyError) -> Self {
        match e {
            ReplyError::Remote(w) => TransportError::Remote(w),
            ReplyError::Proto(p) => TransportError::Proto(p),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TLS material.

/// Where a node's TLS material comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TlsSource {
    /// PEM files: this node's certificate chain and key, and the cluster CA.
    Files { cert: PathBuf, key: PathBuf, ca: PathBuf },
    /// Client only: verify servers against the cluster CA, present no certificate.
    CaOnly { ca: PathBuf },
    /// A fresh self-signed certificate and no verification of peers. Local experiments only.
    Insecure,
}

/// Loaded TLS material.
#[derive(Clone)]
pub struct Tls {
    certs: Vec<CertificateDer<'static>>,
    key: Option<Arc<PrivateKeyDer<'static>>>,
    ca: Option<Vec<CertificateDer<'static>>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("certs", &self.certs.len()).field("verify", &self.ca.is_some()).finish()
    }
}

impl Tls {
    pub fn load(src: &TlsSource) -> Result<Tls, TransportError> {
        match src {
            TlsSource::Files { cert, key, ca } => {
                let certs = CertificateDer::pem_file_iter(cert)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| TransportError::Tls(format!("{}: {e}", cert.display())))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| TransportError::Tls(format!("{}: {e}", key.display())))?;
                let ca = CertificateDer::pem_file_iter(ca)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| TransportError::Tls(format!("{}: {e}", ca.display())))?;
                if certs.is_empty() || ca.is_empty() {
                    return Err(TransportError::Tls("certificate or CA file holds no certificate".into()));
                }
                Ok(Tls { certs, key: Some(Arc::new(key)), ca: Some(ca) })
            }
            TlsSource::CaOnly { ca: path } => {
                let ca = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| TransportError::Tls(format!("{}: {e}", path.display())))?;
                if ca.is_empty() {
                    return Err(TransportError::Tls(format!("{} holds no certificate", path.display())));
                }
                Ok(Tls { certs: Vec::new(), key: None, ca: Some(ca) })
            }
            TlsSource::Insecure => {
                let ck = rcgen::generate_simple_self_signed(vec![CLUSTER_SERVER_NAME.into()])
                    .map_err(|e| TransportError::Tls(e.to_string()))?;
                let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
                Ok(Tls { certs: vec![ck.cert.der().clone()], key: Some(Arc::new(key)), ca: None })
            }
        }
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn server_config(&self, max_streams: u32) -> Result<quinn::ServerConfig, TransportError> {
        let tls_err = |e: rustls::Error| TransportError::Tls(e.to_string());
        let key =
            self.key.as_ref().ok_or_else(|| TransportError::Tls("a server needs a certificate and key".into()))?;
        let builder = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?;
        let builder = match &self.ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in ca {
                    roots.add(c.clone()).map_err(tls_err)?;
                }
                // Peers without a certificate are let in (they may only make calls that need
                // no cluster identity); one that presents a certificate must chain to the CA.
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Self::provider())
                        .allow_unauthenticated()
                        .build()
                        .map_err(|e| TransportError::Tls(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            // Insecure mode: nobody is verified, so every peer counts as a node.
            None => builder.with_no_client_auth(),
        };
        let mut crypto = builder.with_single_cert(self.certs.clone(), key.clone_key()).map_err(tls_err)?;
        crypto.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicServerConfig::try_from(crypto).map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
        cfg.transport_config(Arc::new(transport_config(max_streams, SERVER_CONN_WINDOW)));
        Ok(cfg)
    }

    fn client_config(&self) -> Result<quinn::ClientConfig, TransportError> {
        let tls_err = |e: rustls::Error| TransportError::Tls(e.to_string());
        let builder = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?;
        let builder = match &self.ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in ca {
                    roots.add(c.clone()).map_err(tls_err)?;
                }
                builder.with_root_certificates(roots)
            }
            None => builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(Self::provider()))),
        };
        // A node presents its certificate (its cluster identity); other clients present none.
        let mut crypto = match (&self.key, self.ca.is_some() && !self.certs.is_empty()) {
            (Some(key), true) => builder.with_client_auth_cert(self.certs.clone(), key.clone_key()).map_err(tls_err)?,
            _ => builder.with_no_client_auth(),
        };
        crypto.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicClientConfig::try_from(crypto).map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
        cfg.transport_config(Arc::new(transport_config(1024, CLIENT_CONN_WINDOW)));
        Ok(cfg)
    }
}

/// `window`: bytes a peer may have in flight towards us on one connection. It bounds a
/// server's memory per connection (times the connection limit), and a client's per reply.
fn transport_config(max_streams: u32, window: u32) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(max_streams.into());
    t.max_concurrent_uni_streams(0u32.into());
    // A peer that vanished (a pod moved, a host died) is noticed within the idle timeout; the
    // next call then dials again, resolving the name afresh. Keep-alives hold healthy idle
    // connections open.
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(10)) {
        t.max_idle_timeout(Some(idle));
    }
    let mut mtud = quinn::MtuDiscoveryConfig::default();
    mtud.upper_bound(MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtud));
    t.stream_receive_window((window / 4).into());
    t.receive_window(window.into());
    t.send_window(64 << 20);
    t
}

/// Writes a new cluster CA and one node certificate (valid for every node on loopback) into
/// `dir`: `ca.pem`, `ca.key`, `node.pem`, `node.key`. Used by `shoal local up` and the test
/// harness; a real deployment brings its own (`shoal certs`, or cert-manager).
pub fn generate_cluster_tls(dir: &Path) -> Result<TlsSource, TransportError> {
    crate::certs::write_local_cluster(dir, &[]).map_err(|e| TransportError::Tls(e.to_string()))?;
    Ok(TlsSource::Files { cert: dir.join("node.pem"), key: dir.join("node.key"), ca: dir.join("ca.pem") })
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

// ---------------------------------------------------------------------------------------------
// Client.

/// Client-side settings.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub limits: FrameLimits,
    /// Bound on one request/reply exchange.
    pub call_timeout: Duration,
    pub connect_timeout: Duration,
    /// Local address the client's UDP socket binds (any address, any port by default).
    pub bind: SocketAddr,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            limits: FrameLimits::default(),
            call_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(1),
            bind: ([0, 0, 0, 0], 0).into(),
        }
    }
}

type ConnSlot = Arc<tokio::sync::Mutex<Option<quinn::Connection>>>;

/// A client endpoint that keeps one connection per peer address and reopens it when lost.
/// Clones share the endpoint and connections; each clone may carry its own credential.
#[derive(Clone)]
pub struct Client {
    endpoint: quinn::Endpoint,
    opts: ClientOptions,
    conns: Arc<std::sync::Mutex<std::collections::HashMap<String, ConnSlot>>>,
    /// The encoded credential sent with every request that names none of its own.
    auth: Arc<[u8]>,
}

impl Client {
    pub fn new(tls: &Tls, opts: ClientOptions) -> Result<Client, TransportError> {
        let mut endpoint = bind_endpoint(opts.bind, None).map_err(|e| TransportError::Tls(e.to_string()))?;
        endpoint.set_default_client_config(tls.client_config()?);
        Ok(Client { endpoint, opts, conns: Default::default(), auth: Arc::from(&[][..]) })
    }

    /// The same endpoint and connections, calling with `cred` by default.
    pub fn with_credential(&self, cred: Option<&Credential>) -> Result<Client, TransportError> {
        let auth = match cred {
            Some(c) => c.encode().map_err(|e| TransportError::Tls(e.to_string()))?,
            None => Vec::new(),
        };
        Ok(Client { auth: Arc::from(auth), ..self.clone() })
    }

    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    async fn resolve(addr: &str) -> Result<SocketAddr, TransportError> {
        if let Ok(a) = addr.parse() {
            return Ok(a);
        }
        tokio::net::lookup_host(addr)
            .await
            .ok()
            .and_then(|mut it| it.next())
            .ok_or_else(|| TransportError::Resolve(addr.to_string()))
    }

    /// The open connection to `addr`, connecting if there is none. Connecting to one peer
    /// never waits on another: each address has its own slot.
    pub async fn connection(&self, addr: &str) -> Result<quinn::Connection, TransportError> {
        let slot = {
            let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
            conns.entry(addr.to_string()).or_default().clone()
        };
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref() {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
            *slot = None;
        }
        let sock = Self::resolve(addr).await?;
        let connect_err = |reason: String| TransportError::Connect { addr: addr.to_string(), reason };
        let connecting = self.endpoint.connect(sock, CLUSTER_SERVER_NAME).map_err(|e| connect_err(e.to_string()))?;
        let conn = match tokio::time::timeout(self.opts.connect_timeout, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(connect_err(e.to_string())),
            Err(_) => return Err(TransportError::Timeout { addr: addr.to_string(), after: self.opts.connect_timeout }),
        };
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Drops the cached connection to `addr` (after a failure that may have broken it).
    pub async fn forget(&self, addr: &str) {
        let slot = self.conns.lock().unwrap_or_else(|p| p.into_inner()).get(addr).cloned();
        if let Some(slot) = slot {
            *slot.lock().await = None;
        }
    }

    /// Opens a stream to `addr` and sends `msg` with `body`; the caller reads the replies.
    pub async fn open(
        &self,
        addr: &str,
        msg: &Message,
        body: &[u8],
    ) -> Result<(quinn::SendStream, quinn::RecvStream), TransportError> {
        self.open_as(addr, msg, &self.auth, body).await
    }

    /// [`Client::open`] with an explicit encoded credential (a capability, say).
    pub async fn open_as(
        &self,
        addr: &str,
        msg: &Message,
        auth: &[u8],
        body: &[u8],
    ) -> Result<(quinn::SendStream, quinn::RecvStream), TransportError> {
        // A cached connection may have been closed by the server as idle a moment ago: one
        // more try on a fresh connection before the failure counts.
        let mut tries = 0;
        loop {
            tries += 1;
            match self.open_once(addr, msg, auth, body).await {
                Err(TransportError::Connection { .. }) if tries == 1 => continue,
                other => return other,
            }
        }
    }

    async fn open_once(
        &self,
        addr: &str,
        msg: &Message,
        auth: &[u8],
        body: &[u8],
    ) -> Result<(quinn::SendStream, quinn::RecvStream), TransportError> {
        let conn = self.connection(addr).await?;
        let lost =
            |e: &dyn std::fmt::Display| TransportError::Connection { addr: addr.to_string(), reason: e.to_string() };
        let (mut send, recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                self.forget(addr).await;
                return Err(lost(&e));
            }
        };
        let mut scratch = Vec::with_capacity(256 + auth.len());
        if let Err(e) = write_request(&mut send, msg, auth, body, &mut scratch).await {
            self.forget(addr).await;
            return Err(match e {
                ProtoError::Io(reason) => TransportError::Connection { addr: addr.to_string(), reason },
                other => other.into(),
            });
        }
        let _ = send.finish();
        Ok((send, recv))
    }

    /// One request, one reply: returns the reply message and its body.
    pub async fn call(&self, addr: &str, msg: &Message, body: &[u8]) -> Result<(Message, Vec<u8>), TransportError> {
        self.call_as(addr, msg, &self.auth, body).await
    }

    /// [`Client::call`] with an explicit encoded credential.
    pub async fn call_as(
        &self,
        addr: &str,
        msg: &Message,
        auth: &[u8],
        body: &[u8],
    ) -> Result<(Message, Vec<u8>), TransportError> {
        let fut = async {
            let (_send, mut recv) = self.open_as(addr, msg, auth, body).await?;
            let mut rbody = Vec::new();
            match read_frame(&mut recv, &self.opts.limits, &mut rbody).await {
                Ok(Some(m)) => Ok((m, rbody)),
                Ok(None) => Err(TransportError::NoReply { addr: addr.to_string() }),
                Err(ProtoError::Io(reason)) => {
                    self.forget(addr).await;
                    Err(TransportError::Connection { addr: addr.to_string(), reason })
                }
                Err(e) => Err(e.into()),
            }
        };
        match tokio::time::timeout(self.opts.call_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout { addr: addr.to_string(), after: self.opts.call_timeout }),
        }
    }

    /// A call whose reply must be a `T`; a peer's error comes back as `TransportError::Remote`.
    pub async fn call_typed<T: MessageType>(&self, addr: &str, msg: impl Into<Message>) -> Result<T, TransportError> {
        let (reply, _) = self.call(addr, &msg.into(), &[]).await?;
        Ok(reply.expect::<T>()?)
    }

    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"bye");
    }
}

// ---------------------------------------------------------------------------------------------
// Server.

/// The stream error code a reply stream is reset with when its reader stalled.
pub const STALLED_STREAM: u32 = 2;

/// The budgets a server's replies are reserved against: those of the call's request (the
/// connection's, its source's for a client, and its pool's on the node).
#[derive(Clone)]
struct Budgets {
    conn: Arc<tokio::sync::Semaphore>,
    source: Option<Arc<tokio::sync::Semaphore>>,
    node: Arc<tokio::sync::Semaphore>,
}

type Permit = tokio::sync::OwnedSemaphorePermit;

impl Budgets {
    /// Takes `need` units from every budget, in the one order every taker uses (connection,
    /// source, pool), so two takers never hold parts of each other's reservation.
    async fn reserve(&self, need: u32) -> Option<(Permit, Option<Permit>, Permit)> {
        let c = self.conn.clone().acquire_many_owned(need).await.ok()?;
        let s = match &self.source {
            Some(s) => Some(s.clone().acquire_many_owned(need).await.ok()?),
            None => None,
        };
        let n = self.node.clone().acquire_many_owned(need).await.ok()?;
        Some((c, s, n))
    }
}

/// Reply bytes reserved against the server's budgets ([`Responder::reserve`]); released when
/// dropped.
#[must_use = "the reservation ends when it is dropped"]
pub struct Reservation {
    _permits: Option<(Permit, Option<Permit>, Permit)>,
}

/// Writes replies on a request's stream. Every write must make progress within the server's
/// `stall_timeout`: one that does not resets the stream and fails.
pub struct Responder {
    send: quinn::SendStream,
    scratch: Vec<u8>,
    stall: Duration,
    budgets: Option<Budgets>,
}

impl Responder {
    pub async fn send(&mut self, msg: &Message, body: &[u8]) -> Result<(), ProtoError> {
        self.scratch.clear();
        crate::frame::encode_head(msg, &[], body.len(), &mut self.scratch)?;
        let head = bytes::Bytes::copy_from_slice(&self.scratch);
        self.write(&mut [head, bytes::Bytes::copy_from_slice(body)]).await
    }

    /// Like [`Responder::send`], handing `body` to the stream without copying it.
    pub async fn send_owned(&mut self, msg: &Message, body: Vec<u8>) -> Result<(), ProtoError> {
        self.scratch.clear();
        crate::frame::encode_head(msg, &[], body.len(), &mut self.scratch)?;
        let head = bytes::Bytes::copy_from_slice(&self.scratch);
        self.write(&mut [head, bytes::Bytes::from(body)]).await
    }

    /// Writes `bufs` whole. Each write waits at most the stall timeout for the peer to take
    /// anything (QUIC flow control holds us while it reads nothing); past that the stream is
    /// reset, which drops what it buffered, and the call fails.
    async fn write(&mut self, bufs: &mut [bytes::Bytes]) -> Result<(), ProtoError> {
        while let Some(first) = bufs.iter().position(|b| !b.is_empty()) {
            match tokio::time::timeout(self.stall, self.send.write_chunks(&mut bufs[first..])).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(std::io::Error::from(e).into()),
                Err(_) => {
                    let _ = self.send.reset(STALLED_STREAM.into());
                    return Err(ProtoError::Io(format!("the peer read nothing for {:?}", self.stall)));
                }
            }
        }
        Ok(())
    }

    /// Reserves `bytes` of reply memory against the budgets the call's request was reserved
    /// against, waiting at most the stall timeout. A handler reserves a body before it
    /// produces it and drops the reservation once it is sent.
    pub async fn reserve(&self, bytes: usize) -> Result<Reservation, ProtoError> {
        let Some(b) = &self.budgets else { return Ok(Reservation { _permits: None }) };
        match tokio::time::timeout(self.stall, b.reserve(units(bytes as u64))).await {
            Ok(Some(p)) => Ok(Reservation { _permits: Some(p) }),
            _ => Err(ProtoError::Io(format!("no room for a {bytes}-byte reply within {:?}", self.stall))),
        }
    }

    pub async fn error(&mut self, e: WireError) -> Result<(), ProtoError> {
        self.send(&Message::WireError(e), &[]).await
    }

    /// Sends a reply, or the error if `res` is one.
    pub async fn reply<T: Into<Message>>(&mut self, res: Result<T, WireError>) -> Result<(), ProtoError> {
        match res {
            Ok(m) => self.send(&m.into(), &[]).await,
            Err(e) => self.error(e).await,
        }
    }
}

/// Who made a call, as the transport knows it. The handler decides what the caller may do.
#[derive(Clone, Debug)]
pub struct CallInfo {
    pub peer: SocketAddr,
    /// The peer presented a client certificate from the cluster CA: a master or a worker.
    pub node: bool,
    /// The credential the request carried, decoded (not yet verified).
    pub credential: Option<Credential>,
}

/// Serves requests. Each request is one call, on its own task.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        call: &CallInfo,
        req: Message,
        body: Vec<u8>,
        out: &mut Responder,
    ) -> impl Future<Output = Result<(), ProtoError>> + Send;
}

/// How long a reply write may make no progress by default: far longer than a healthy reader
/// pauses (a reducer works through what it has already received, up to its 16 MiB stream
/// window, meanwhile), and short enough that a vanished one frees its call soon.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Server-side settings.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub limits: FrameLimits,
    /// Handshakes, node and client connections, per-source caps ([`crate::admission`]).
    pub admission: AdmissionLimits,
    /// Frame bytes the client connections of one source address may have in flight at once:
    /// one host cannot take the whole client budget.
    pub source_budget_bytes: u64,
    pub max_streams_per_connection: u32,
    /// Frame bytes one connection may have being read or handled at once.
    pub conn_budget_bytes: u64,
    /// Frame bytes all connections together may have being read or handled at once.
    pub node_budget_bytes: u64,
    /// A request's header must arrive within this of its stream opening, and its bytes must
    /// find room in the budgets within this again.
    pub header_timeout: Duration,
    /// The rest of a frame must arrive within this.
    pub frame_timeout: Duration,
    /// A connection with no call in flight for this long is closed.
    pub idle_timeout: Duration,
    /// A reply write that makes no progress for this long (the peer reads nothing) resets its
    /// stream and ends the call.
    pub stall_timeout: Duration,
    /// Insecure mode (no cluster CA): peers cannot be verified, so each counts as a node.
    pub trust_all_peers: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            limits: FrameLimits::default(),
            admission: AdmissionLimits::default(),
            source_budget_bytes: 256 << 20,
            max_streams_per_connection: 256,
            conn_budget_bytes: 96 << 20,
            node_budget_bytes: 1 << 30,
            header_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(120),
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            trust_all_peers: false,
        }
    }
}

impl ServerOptions {
    /// The defaults for a server holding `tls`.
    pub fn for_tls(tls: &Tls) -> Self {
        Self { trust_all_peers: tls.ca.is_none(), ..Default::default() }
    }

    /// Checks that every frame the limits allow fits the budgets.
    pub fn validate(&self) -> Result<(), String> {
        let largest = crate::frame::FRAME_HEADER_LEN as u64
            + u64::from(self.limits.max_auth)
            + u64::from(self.limits.max_meta)
            + u64::from(self.limits.max_body);
        if self.conn_budget_bytes < largest || self.node_budget_bytes < self.conn_budget_bytes {
            return Err(format!(
                "budgets must hold the largest frame ({largest} bytes): connection {} ≤ node {}",
                self.conn_budget_bytes, self.node_budget_bytes
            ));
        }
        if self.max_streams_per_connection == 0 {
            return Err("stream limits must be positive".into());
        }
        self.admission.validate()?;
        if self.source_budget_bytes < largest {
            return Err(format!("the source budget must hold the largest frame ({largest} bytes)"));
        }
        if self.stall_timeout.is_zero() {
            return Err("the stall timeout must be positive".into());
        }
        Ok(())
    }
}

/// Binds a server endpoint.
pub fn server_endpoint(bind: SocketAddr, tls: &Tls, opts: &ServerOptions) -> Result<quinn::Endpoint, TransportError> {
    let cfg = tls.server_config(opts.max_streams_per_connection)?;
    bind_endpoint(bind, Some(cfg)).map_err(|e| TransportError::Tls(format!("bind {bind}: {e}")))
}

/// The largest UDP payload Shoal sends or accepts. A datagram's cost (encryption, headers,
/// acknowledgements, a syscall share) is per packet, so larger datagrams cut the transport's
/// CPU per byte. MTU discovery only climbs to what the path carries: about 1450 bytes on a
/// 1500-MTU network, up to this on loopback and jumbo-frame networks. quinn batches up to 10
/// datagrams into one GSO send, which the kernel caps at 64 KiB; 6500 keeps a batch under it.
pub const MAX_UDP_PAYLOAD: u16 = 6_500;

fn bind_endpoint(bind: SocketAddr, server: Option<quinn::ServerConfig>) -> std::io::Result<quinn::Endpoint> {
    let mut cfg = quinn::EndpointConfig::default();
    // Within quinn's 1200..=65527, so it cannot fail; peers cap their discovery by it.
    let _ = cfg.max_udp_payload_size(MAX_UDP_PAYLOAD);
    let socket = std::net::UdpSocket::bind(bind)?;
    let runtime = quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime"))?;
    quinn::Endpoint::new(cfg, server, socket, runtime)
}

/// Budget units: KiB, rounded up, so a semaphore's permits cover any budget.
fn units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

/// Logs at most one line per `every` for one call site, counting what it held back.
pub struct RateLimitedLog {
    last_ms: std::sync::atomic::AtomicU64,
    dropped: AtomicUsize,
    every_ms: u64,
}

impl RateLimitedLog {
    pub const fn new(every_ms: u64) -> Self {
        Self { last_ms: std::sync::atomic::AtomicU64::new(0), dropped: AtomicUsize::new(0), every_ms }
    }

    /// Whether to log now; returns how many lines were held back since the last one.
    #[allow(clippy::disallowed_methods)] // log rate limiting, no decision depends on it
    pub fn allow(&self) -> Option<usize> {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let now = ORIGIN.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + self.every_ms;
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= self.every_ms
            && self.last_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            Some(self.dropped.swap(0, Ordering::Relaxed))
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

static MALFORMED_LOG: RateLimitedLog = RateLimitedLog::new(5_000);

static ADMISSION_LOG: RateLimitedLog = RateLimitedLog::new(5_000);

/// What every connection of one server shares: who is admitted ([`crate::admission`]), the
/// open client connections (to close an idle one for a newcomer), and the frame budgets.
struct Shared {
    admission: std::sync::Mutex<Admission>,
    conns: std::sync::Mutex<std::collections::HashMap<u64, quinn::Connection>>,
    /// Frame bytes of cluster nodes, and of clients: separate, so clients never starve nodes.
    node_budget: Arc<tokio::sync::Semaphore>,
    client_budget: Arc<tokio::sync::Semaphore>,
    /// Frame bytes of each client source (IP address): one host's share of `client_budget`.
    source_budgets: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, Arc<tokio::sync::Semaphore>>>,
    epoch: tokio::time::Instant,
}

impl Shared {
    fn admission(&self) -> std::sync::MutexGuard<'_, Admission> {
        self.admission.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn source_budget(&self, source: std::net::IpAddr, bytes: u64) -> Arc<tokio::sync::Semaphore> {
        let mut m = self.source_budgets.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= 4 * self.admission().limits().max_clients.max(1) {
            // Sources with nothing in flight and no connection left hold no permits.
            m.retain(|_, s| Arc::strong_count(s) > 1);
        }
        m.entry(source).or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(units(bytes) as usize))).clone()
    }
}

/// Accepts connections until the endpoint is closed.
pub async fn serve<H: Handler>(endpoint: quinn::Endpoint, handler: Arc<H>, opts: ServerOptions) {
    let shared = Arc::new(Shared {
        admission: std::sync::Mutex::new(Admission::new(opts.admission.clone())),
        conns: Default::default(),
        node_budget: Arc::new(tokio::sync::Semaphore::new(units(opts.node_budget_bytes) as usize)),
        client_budget: Arc::new(tokio::sync::Semaphore::new(units(opts.node_budget_bytes) as usize)),
        source_budgets: Default::default(),
        epoch: tokio::time::Instant::now(),
    });
    let opts = Arc::new(opts);
    while let Some(incoming) = endpoint.accept().await {
        let peer = incoming.remote_address();
        let verdict = shared.admission().incoming(incoming.remote_address_validated(), incoming.may_retry());
        match verdict {
            OnIncoming::Handshake => {}
            OnIncoming::Retry => {
                // A Retry holds no handshake slot (none was counted for it); one that cannot be
                // sent (the peer was retried already) is refused instead.
                if let Err(e) = incoming.retry() {
                    e.into_incoming().refuse();
                }
                continue;
            }
            OnIncoming::Refuse => {
                if ADMISSION_LOG.allow().is_some() {
                    warn!(remote = %peer, "handshake limit reached; refusing");
                }
                incoming.refuse();
                continue;
            }
        }
        let handler = handler.clone();
        let opts = opts.clone();
        let shared = shared.clone();
        tokio::spawn(
            async move {
                let conn = match tokio::time::timeout(opts.header_timeout, incoming).await {
                    Ok(Ok(conn)) => Some(conn),
                    Ok(Err(e)) => {
                        debug!("handshake failed: {e}");
                        None
                    }
                    Err(_) => {
                        debug!("handshake timed out");
                        None
                    }
                };
                let pool =
                    conn.as_ref().map(|c| if opts.trust_all_peers || is_node(c) { Pool::Node } else { Pool::Client });
                let now = shared.now_ms();
                let (id, verdict) = shared.admission().handshake_ended(peer.ip(), pool, now);
                let Some(conn) = conn else { return };
                match verdict {
                    OnEstablished::Refuse => {
                        if ADMISSION_LOG.allow().is_some() {
                            warn!(remote = %peer, ?pool, "connection limit reached; closing");
                        }
                        conn.close(2u32.into(), b"connection limit reached");
                        return;
                    }
                    OnEstablished::ServeReplacing(victim) => {
                        // Reclaimed: the idle client connection with the oldest last call.
                        let old = shared.conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&victim);
                        if let Some(old) = old {
                            old.close(0u32.into(), b"idle");
                        }
                    }
                    OnEstablished::Serve => {}
                }
                if pool == Some(Pool::Client) {
                    shared.conns.lock().unwrap_or_else(|p| p.into_inner()).insert(id, conn.clone());
                }
                serve_connection(conn, handler, opts, shared.clone(), id, pool == Some(Pool::Node)).await;
                shared.conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                shared.admission().closed(id);
            }
            .instrument(info_span!("conn", %peer)),
        );
    }
}

/// Whether the peer presented a certificate; rustls has then verified it against the CA.
fn is_node(conn: &quinn::Connection) -> bool {
    conn.peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .is_some_and(|certs| !certs.is_empty())
}

async fn serve_connection<H: Handler>(
    conn: quinn::Connection,
    handler: Arc<H>,
    opts: Arc<ServerOptions>,
    shared: Arc<Shared>,
    id: u64,
    node: bool,
) {
    let peer = conn.remote_address();
    let conn_budget = Arc::new(tokio::sync::Semaphore::new(units(opts.conn_budget_bytes) as usize));
    let (pool_budget, source_budget) = if node {
        (shared.node_budget.clone(), None)
    } else {
        (shared.client_budget.clone(), Some(shared.source_budget(peer.ip(), opts.source_budget_bytes)))
    };
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let (send, recv) = match tokio::time::timeout(opts.idle_timeout, conn.accept_bi()).await {
            Err(_) if active.load(Ordering::SeqCst) == 0 => {
                conn.close(0u32.into(), b"idle");
                return;
            }
            Err(_) => continue,
            Ok(Ok(s)) => s,
            Ok(Err(quinn::ConnectionError::ApplicationClosed(_))) | Ok(Err(quinn::ConnectionError::LocallyClosed)) => {
                return
            }
            Ok(Err(e)) => {
                debug!("connection ended: {e}");
                return;
            }
        };
        active.fetch_add(1, Ordering::SeqCst);
        shared.admission().call_started(id);
        let stream = Stream {
            handler: handler.clone(),
            conn: conn.clone(),
            opts: opts.clone(),
            conn_budget: conn_budget.clone(),
            node_budget: pool_budget.clone(),
            source_budget: source_budget.clone(),
            peer,
            node,
        };
        let active = active.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            stream.serve(send, recv).await;
            active.fetch_sub(1, Ordering::SeqCst);
            let now = shared.now_ms();
            shared.admission().call_ended(id, now);
        });
    }
}

/// One request stream and what bounds it.
struct Stream<H> {
    handler: Arc<H>,
    conn: quinn::Connection,
    opts: Arc<ServerOptions>,
    conn_budget: Arc<tokio::sync::Semaphore>,
    /// The budget of the connection's pool (nodes' or clients').
    node_budget: Arc<tokio::sync::Semaphore>,
    /// A client's share: the budget of its source address.
    source_budget: Option<Arc<tokio::sync::Semaphore>>,
    peer: SocketAddr,
    node: bool,
}

impl<H: Handler> Stream<H> {
    async fn serve(self, send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let budgets = Budgets {
            conn: self.conn_budget.clone(),
            source: self.source_budget.clone(),
            node: self.node_budget.clone(),
        };
        let mut out = Responder {
            send,
            scratch: Vec::with_capacity(256),
            stall: self.opts.stall_timeout,
            budgets: Some(budgets),
        };
        let header =
            match tokio::time::timeout(self.opts.header_timeout, read_header(&mut recv, &self.opts.limits)).await {
                Err(_) => return self.refuse(&mut out, &mut recv, ErrorCode::Timeout, "request header too slow").await,
                Ok(Ok(Some(h))) => h,
                Ok(Ok(None)) | Ok(Err(ProtoError::Io(_))) => return,
                Ok(Err(e)) => return self.malformed(&mut out, e).await,
            };
        let need = units(header.frame_len() as u64);
        if u64::from(need) * 1024 > self.opts.conn_budget_bytes {
            return self.refuse(&mut out, &mut recv, ErrorCode::TooLarge, "frame exceeds the connection budget").await;
        }
        if self.source_budget.is_some() && u64::from(need) * 1024 > self.opts.source_budget_bytes {
            return self.refuse(&mut out, &mut recv, ErrorCode::TooLarge, "frame exceeds the source budget").await;
        }
        let Some(budgets) = out.budgets.as_ref() else { return };
        // Waiting for budget is bounded like a header: the caller backs off and retries on Busy.
        let permits = match tokio::time::timeout(self.opts.header_timeout, budgets.reserve(need)).await {
            Ok(Some(p)) => p,
            _ => return self.refuse(&mut out, &mut recv, ErrorCode::Busy, "too many bytes in flight").await,
        };
        let (mut body, mut auth) = (Vec::new(), Vec::new());
        let read = tokio::time::timeout(self.opts.frame_timeout, read_rest(&mut recv, &header, &mut body, &mut auth));
        let req = match read.await {
            Err(_) => return self.refuse(&mut out, &mut recv, ErrorCode::Timeout, "request too slow").await,
            Ok(Ok(m)) => m,
            Ok(Err(ProtoError::Io(e))) => return debug!("stream ended: {e}"),
            Ok(Err(e)) => return self.malformed(&mut out, e).await,
        };
        let credential = if auth.is_empty() {
            None
        } else {
            match Credential::decode(&auth) {
                Ok(c) => Some(c),
                Err(_) => return self.malformed(&mut out, ProtoError::Credential).await,
            }
        };
        let call = CallInfo { peer: self.peer, node: self.node, credential };
        if let Err(e) = self.handler.handle(&call, req, body, &mut out).await {
            debug!("reply failed: {e}");
        }
        drop(permits);
        let _ = out.send.finish();
    }

    /// Answers with an error and stops reading the stream; the connection stays.
    async fn refuse(&self, out: &mut Responder, recv: &mut quinn::RecvStream, code: ErrorCode, msg: &str) {
        let _ = recv.stop(0u32.into());
        let _ = out.error(WireError::new(code, msg)).await;
        let _ = out.send.finish();
    }

    /// Hostile or broken bytes: say why (a fixed message), then drop the connection.
    async fn malformed(&self, out: &mut Responder, e: ProtoError) {
        if let Some(held_back) = MALFORMED_LOG.allow() {
            warn!(peer = %self.peer, held_back, "rejecting malformed request: {e:?}");
        }
        let _ = out.error(e.clone().into()).await;
        let _ = out.send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(1), out.send.stopped()).await;
        self.conn.close(1u32.into(), b"malformed request");
    }
}

// ---------------------------------------------------------------------------------------------
// Master client: finds the leader and follows its hints.

/// Calls the master group: any master answers or points at the leader; unreachable masters
/// and elections are retried with backoff until `deadline`.
///
/// One try waits at most `attempt_timeout`: a master killed outright (no connection close
/// reaches us) would otherwise hold every call on its cached connection until QUIC's idle
/// timeout, long enough for the new leader to count the workers whose heartbeats hang there
/// as lost. A try that times out drops the connection and moves to the next master; master
/// commands are idempotent, as they must be for a reply lost in a crash anyway.
#[derive(Clone)]
pub struct MasterClient {
    client: Client,
    masters: Arc<Vec<String>>,
    leader: Arc<std::sync::Mutex<Option<String>>>,
    deadline: Duration,
    attempt_timeout: Duration,
}

/// The default bound on one master try: Raft commits take milliseconds, elections a second.
pub const MASTER_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

impl MasterClient {
    pub fn new(client: Client, masters: Vec<String>, deadline: Duration) -> Result<MasterClient, TransportError> {
        if masters.is_empty() {
            return Err(TransportError::Resolve("no master endpoints configured".into()));
        }
        Ok(MasterClient {
            client,
            masters: Arc::new(masters),
            leader: Default::default(),
            deadline,
            attempt_timeout: MASTER_ATTEMPT_TIMEOUT,
        })
    }

    /// One try's bound: membership changes wait, by design, as long as their request says.
    fn attempt_bound(&self, msg: &Message) -> Duration {
        let waits = match msg {
            Message::AddMaster(m) => m.timeout_ms,
            Message::RemoveMaster(m) => m.timeout_ms,
            _ => 0,
        };
        self.attempt_timeout + Duration::from_millis(waits)
    }

    /// Bounds one try at one master (see the type's doc).
    pub fn with_attempt_timeout(mut self, t: Duration) -> MasterClient {
        self.attempt_timeout = t;
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The leader this client currently believes in.
    pub fn leader_hint(&self) -> Option<String> {
        self.leader.lock().ok().and_then(|g| g.clone())
    }

    fn set_leader(&self, l: Option<String>) {
        if let Ok(mut g) = self.leader.lock() {
            *g = l;
        }
    }

    /// Sends `msg` to the leader; returns its reply (which may be a `WireError` other than
    /// the leader-finding ones).
    pub async fn call(&self, msg: &Message) -> Result<(Message, Vec<u8>), TransportError> {
        let auth = self.client.auth.clone();
        self.call_as(msg, &auth).await
    }

    /// [`MasterClient::call`] with an explicit encoded credential.
    pub async fn call_as(&self, msg: &Message, auth: &[u8]) -> Result<(Message, Vec<u8>), TransportError> {
        let start = tokio::time::Instant::now();
        let policy = Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_millis(500),
            max_tries: u32::MAX,
            deadline: self.deadline,
        };
        let mut next = 0usize;
        let mut tries = 0u32;
        // Leader hints followed since the last pause: stale hints may point in a circle.
        let mut hops = 0usize;
        loop {
            let target = self.leader_hint().unwrap_or_else(|| self.masters[next % self.masters.len()].clone());
            let bound = self.attempt_bound(msg);
            let outcome = match tokio::time::timeout(bound, self.client.call_as(&target, msg, auth, &[])).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    // The master may be gone without a word: dial afresh next time.
                    self.client.forget(&target).await;
                    Err(TransportError::Timeout { addr: target.clone(), after: bound })
                }
            };
            let last_err = match outcome {
                Ok((Message::WireError(e), _)) if e.code() == ErrorCode::NotLeader => {
                    match e.leader_hint.clone().filter(|h| *h != target) {
                        Some(h) if hops <= self.masters.len() => {
                            hops += 1;
                            self.set_leader(Some(h));
                            continue;
                        }
                        _ => {
                            self.set_leader(None);
                            next += 1;
                            TransportError::Remote(e)
                        }
                    }
                }
                // No leader known, or this master cannot serve at all (its Raft stopped, as
                // on a full disk): another master may.
                Ok((Message::WireError(e), _)) if matches!(e.code(), ErrorCode::NoLeader | ErrorCode::Unavailable) => {
                    self.set_leader(None);
                    next += 1;
                    TransportError::Remote(e)
                }
                Ok(reply) => {
                    self.set_leader(Some(target));
                    return Ok(reply);
                }
                Err(e) if e.unreachable() => {
                    self.set_leader(None);
                    next += 1;
                    e
                }
                Err(e) => return Err(e),
            };
            tries += 1;
            hops = 0;
            let Some(pause) = policy.next_delay(tries, start.elapsed()) else { return Err(last_err) };
            debug!("master call retry after {pause:?}: {last_err}");
            tokio::time::sleep(pause).await;
        }
    }

    /// A call whose reply must be a `T`.
    pub async fn call_typed<T: MessageType>(&self, msg: impl Into<Message>) -> Result<T, TransportError> {
        let (reply, _) = self.call(&msg.into()).await?;
        Ok(reply.expect::<T>()?)
    }

    /// [`MasterClient::call_typed`] with an explicit encoded credential.
    pub async fn call_typed_as<T: MessageType>(
        &self,
        msg: impl Into<Message>,
        auth: &[u8],
    ) -> Result<T, TransportError> {
        let (reply, _) = self.call_as(&msg.into(), auth).await?;
        Ok(reply.expect::<T>()?)
    }

    /// The same masters and leader hint, calling with `cred` by default.
    pub fn with_credential(&self, cred: Option<&Credential>) -> Result<MasterClient, TransportError> {
        Ok(MasterClient { client: self.client.with_credential(cred)?, ..self.clone() })
    }
}
