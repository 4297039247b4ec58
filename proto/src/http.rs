//! A small read-only HTTP endpoint for `/metrics`, health probes and status pages.
//!
//! Invariants:
//! - it only answers GET requests with what the handler returns for the path; it reads no
//!   request body;
//! - at most [`HttpLimits::max_connections`] connections are served at once; a connection
//!   accepted over the cap is closed at once, and the accept loop keeps running;
//! - a request head (request line and headers) must arrive within
//!   [`HttpLimits::header_timeout`], counted from when the server starts waiting for it (for
//!   the first request, from the accept), or the connection is closed;
//! - a request head is held in a buffer of at most [`MAX_BUF_SIZE`] bytes; a bigger head is
//!   refused (431) and the connection closed;
//! - no connection lives longer than [`HttpLimits::connection_lifetime`], whatever the peer
//!   does (keep-alive, reading responses slowly);
//! - a failing `accept` (e.g. out of file descriptors) is retried after [`ACCEPT_BACKOFF`],
//!   never in a busy loop.
//!
//! So a peer can make it hold at most `max_connections` small requests, each for a bounded
//! time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// The largest read buffer of a connection, so the largest request head accepted.
pub const MAX_BUF_SIZE: usize = 16 * 1024;

/// How long the accept loop waits after `accept` fails before trying again.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a path answers.
pub struct Page {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Page {
    pub fn ok(content_type: &'static str, body: String) -> Page {
        Page { status: 200, content_type, body }
    }

    pub fn not_found() -> Page {
        Page { status: 404, content_type: "text/plain", body: "not found\n".into() }
    }
}

/// Bounds on what peers can make the endpoint hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once; one accepted over this is closed at once.
    pub max_connections: usize,
    /// Time a peer has to send a whole request head once the server waits for one.
    pub header_timeout: Duration,
    /// Longest time a connection is kept, from its accept.
    pub connection_lifetime: Duration,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_connections: 256,
            header_timeout: Duration::from_secs(5),
            connection_lifetime: Duration::from_secs(30),
        }
    }
}

/// Binds `addr` and serves GET requests with `pages(path)` until the task is dropped, with
/// the default [`HttpLimits`].
pub async fn serve_http<F>(addr: SocketAddr, pages: F) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)>
where
    F: Fn(&str) -> Page + Send + Sync + 'static,
{
    serve_http_with(addr, HttpLimits::default(), pages).await
}

/// Binds `addr` and serves GET requests with `pages(path)` until the task is dropped, within
/// `limits`.
pub async fn serve_http_with<F>(
    addr: SocketAddr,
    limits: HttpLimits,
    pages: F,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)>
where
    F: Fn(&str) -> Page + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let pages = Arc::new(pages);
    let slots = Arc::new(Semaphore::new(limits.max_connections.min(Semaphore::MAX_PERMITS)));
    let task = tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!("http accept: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                debug!("http connection from {peer} refused: {} connections open", limits.max_connections);
                drop(stream);
                continue;
            };
            let pages = pages.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let page = if req.method() == Method::GET { pages(req.uri().path()) } else { Page::not_found() };
                    async move {
                        let mut resp = Response::new(Full::new(Bytes::from(page.body)));
                        *resp.status_mut() =
                            StatusCode::from_u16(page.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                        if let Ok(v) = hyper::header::HeaderValue::from_str(page.content_type) {
                            resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(limits.header_timeout)
                    .max_buf_size(MAX_BUF_SIZE)
                    .serve_connection(io, svc);
                match tokio::time::timeout(limits.connection_lifetime, conn).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!("http connection from {peer}: {e}"),
                    Err(_) => debug!("http connection from {peer} closed after {:?}", limits.connection_lifetime),
                }
                drop(permit);
            });
        }
    });
    Ok((local, task))
}
