//! QUIC transport shared by every Shoal process: TLS setup, a request/reply client with
//! connection reuse, and a server loop.
//!
//! Invariants:
//! - TLS 1.3 always. Nodes present certificates signed by the cluster CA for the name
//!   [`CLUSTER_SERVER_NAME`]; a client trusts exactly that CA. The insecure mode (no
//!   verification) exists for throwaway local clusters and must be asked for by name.
//! - One request per bidirectional stream; the reply (or a stream of replies) comes back on it.
//! - A frame that fails to decode ends its connection with a typed error sent first; the
//!   server keeps running. A peer closing its connection is normal, not an error.
//! - Connections are bounded on the server; every client call is bounded in time.

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

use crate::error::{ErrorCode, ProtoError, WireError};
use crate::frame::{read_frame, write_frame, FrameLimits};
use crate::messages::{Message, MessageType, ReplyError};

/// The TLS name every node certificate carries; clients verify it against the cluster CA.
pub const CLUSTER_SERVER_NAME: &str = "shoal";
const ALPN: &[u8] = b"shoal/1";
/// In-flight bytes a client may push on one connection to a server: a map writer's window of
/// 16 × 256 KiB batches fits several times over.
const SERVER_CONN_WINDOW: u32 = 16 << 20;
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
        let mut crypto = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_no_client_auth()
            .with_single_cert(self.certs.clone(), key.clone_key())
            .map_err(tls_err)?;
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
        let mut crypto = match &self.ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in ca {
                    roots.add(c.clone()).map_err(tls_err)?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(Self::provider())))
                .with_no_client_auth(),
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
    t.stream_receive_window((window / 4).into());
    t.receive_window(window.into());
    t.send_window(64 << 20);
    t
}

/// Writes a new cluster CA and one node certificate (valid for every node) into `dir`:
/// `ca.pem`, `node.pem`, `node.key`. Used by `shoal local up` and the test harness; a real
/// deployment brings its own (for example from cert-manager).
pub fn generate_cluster_tls(dir: &Path) -> Result<TlsSource, TransportError> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let e = |e: rcgen::Error| TransportError::Tls(e.to_string());
    std::fs::create_dir_all(dir).map_err(|io| TransportError::Tls(format!("{}: {io}", dir.display())))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().map_err(e)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(e)?;
    let node_params = CertificateParams::new(vec![CLUSTER_SERVER_NAME.to_string()]).map_err(e)?;
    let node_key = KeyPair::generate().map_err(e)?;
    let node_cert = node_params.signed_by(&node_key, &ca_cert, &ca_key).map_err(e)?;
    let write = |name: &str, data: String| {
        std::fs::write(dir.join(name), data).map_err(|io| TransportError::Tls(format!("{name}: {io}")))
    };
    write("ca.pem", ca_cert.pem())?;
    write("node.pem", node_cert.pem())?;
    write("node.key", node_key.serialize_pem())?;
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
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            limits: FrameLimits::default(),
            call_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(1),
        }
    }
}

type ConnSlot = Arc<tokio::sync::Mutex<Option<quinn::Connection>>>;

/// A client endpoint that keeps one connection per peer address and reopens it when lost.
#[derive(Clone)]
pub struct Client {
    endpoint: quinn::Endpoint,
    opts: ClientOptions,
    conns: Arc<std::sync::Mutex<std::collections::HashMap<String, ConnSlot>>>,
}

impl Client {
    pub fn new(tls: &Tls, opts: ClientOptions) -> Result<Client, TransportError> {
        let bind: SocketAddr = ([0, 0, 0, 0], 0).into();
        let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| TransportError::Tls(e.to_string()))?;
        endpoint.set_default_client_config(tls.client_config()?);
        Ok(Client { endpoint, opts, conns: Default::default() })
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
        let mut scratch = Vec::with_capacity(256);
        if let Err(e) = write_frame(&mut send, msg, body, &mut scratch).await {
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
        let fut = async {
            let (_send, mut recv) = self.open(addr, msg, body).await?;
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

/// Writes replies on a request's stream.
pub struct Responder {
    send: quinn::SendStream,
    scratch: Vec<u8>,
}

impl Responder {
    pub async fn send(&mut self, msg: &Message, body: &[u8]) -> Result<(), ProtoError> {
        write_frame(&mut self.send, msg, body, &mut self.scratch).await
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

/// Serves requests. Each request is one call, on its own task.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        peer: SocketAddr,
        req: Message,
        body: Vec<u8>,
        out: &mut Responder,
    ) -> impl Future<Output = Result<(), ProtoError>> + Send;
}

/// Server-side settings.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub limits: FrameLimits,
    pub max_connections: usize,
    pub max_streams_per_connection: u32,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self { limits: FrameLimits::default(), max_connections: 4096, max_streams_per_connection: 1024 }
    }
}

/// Binds a server endpoint.
pub fn server_endpoint(bind: SocketAddr, tls: &Tls, opts: &ServerOptions) -> Result<quinn::Endpoint, TransportError> {
    let cfg = tls.server_config(opts.max_streams_per_connection)?;
    quinn::Endpoint::server(cfg, bind).map_err(|e| TransportError::Tls(format!("bind {bind}: {e}")))
}

/// Accepts connections until the endpoint is closed.
pub async fn serve<H: Handler>(endpoint: quinn::Endpoint, handler: Arc<H>, opts: ServerOptions) {
    let open = Arc::new(AtomicUsize::new(0));
    while let Some(incoming) = endpoint.accept().await {
        if open.load(Ordering::Relaxed) >= opts.max_connections {
            warn!(remote = %incoming.remote_address(), "connection limit reached; refusing");
            incoming.refuse();
            continue;
        }
        let handler = handler.clone();
        let open = open.clone();
        let limits = opts.limits;
        let peer = incoming.remote_address();
        open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(
            async move {
                match incoming.await {
                    Ok(conn) => serve_connection(conn, handler, limits).await,
                    Err(e) => debug!("handshake failed: {e}"),
                }
                open.fetch_sub(1, Ordering::Relaxed);
            }
            .instrument(info_span!("conn", %peer)),
        );
    }
}

async fn serve_connection<H: Handler>(conn: quinn::Connection, handler: Arc<H>, limits: FrameLimits) {
    let peer = conn.remote_address();
    loop {
        let (send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(quinn::ConnectionError::ApplicationClosed(_)) | Err(quinn::ConnectionError::LocallyClosed) => return,
            Err(e) => {
                debug!("connection ended: {e}");
                return;
            }
        };
        let handler = handler.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            let mut out = Responder { send, scratch: Vec::with_capacity(256) };
            let mut body = Vec::new();
            match read_frame(&mut recv, &limits, &mut body).await {
                Ok(Some(req)) => {
                    if let Err(e) = handler.handle(peer, req, body, &mut out).await {
                        debug!("reply failed: {e}");
                    }
                    let _ = out.send.finish();
                }
                Ok(None) => {}
                Err(ProtoError::Io(e)) => debug!("stream ended: {e}"),
                Err(e) => {
                    // Hostile or broken bytes: say why, then drop the connection.
                    warn!("rejecting malformed request: {e}");
                    let _ = out.error(e.clone().into()).await;
                    let _ = out.send.finish();
                    let _ = out.send.stopped().await;
                    conn.close(1u32.into(), e.to_string().as_bytes());
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Master client: finds the leader and follows its hints.

/// Calls the master group: any master answers or points at the leader; unreachable masters
/// and elections are retried with backoff until `deadline`.
#[derive(Clone)]
pub struct MasterClient {
    client: Client,
    masters: Arc<Vec<String>>,
    leader: Arc<std::sync::Mutex<Option<String>>>,
    deadline: Duration,
}

impl MasterClient {
    pub fn new(client: Client, masters: Vec<String>, deadline: Duration) -> Result<MasterClient, TransportError> {
        if masters.is_empty() {
            return Err(TransportError::Resolve("no master endpoints configured".into()));
        }
        Ok(MasterClient { client, masters: Arc::new(masters), leader: Default::default(), deadline })
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
        let start = tokio::time::Instant::now();
        let mut next = 0usize;
        let mut backoff = Duration::from_millis(20);
        loop {
            let target = self.leader_hint().unwrap_or_else(|| self.masters[next % self.masters.len()].clone());
            let outcome = self.client.call(&target, msg, &[]).await;
            let last_err = match outcome {
                Ok((Message::WireError(e), _)) if e.code() == ErrorCode::NotLeader => {
                    match e.leader_hint.clone().filter(|h| *h != target) {
                        Some(h) => {
                            self.set_leader(Some(h));
                            continue;
                        }
                        None => {
                            self.set_leader(None);
                            next += 1;
                            TransportError::Remote(e)
                        }
                    }
                }
                Ok((Message::WireError(e), _)) if e.code() == ErrorCode::NoLeader => {
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
            if start.elapsed() + backoff > self.deadline {
                return Err(last_err);
            }
            debug!("master call retry after {backoff:?}: {last_err}");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// A call whose reply must be a `T`.
    pub async fn call_typed<T: MessageType>(&self, msg: impl Into<Message>) -> Result<T, TransportError> {
        let (reply, _) = self.call(&msg.into()).await?;
        Ok(reply.expect::<T>()?)
    }
}
