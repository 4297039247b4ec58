//! A small read-only HTTP endpoint for `/metrics`, health probes and status pages.
//!
//! Invariant: it only answers GET requests with what the handler returns for the path; it
//! reads no request body, so a client can make it hold at most one small request per
//! connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use tracing::debug;

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

/// Binds `addr` and serves GET requests with `pages(path)` until the task is dropped.
pub async fn serve_http<F>(addr: SocketAddr, pages: F) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)>
where
    F: Fn(&str) -> Page + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let pages = Arc::new(pages);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
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
                if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await {
                    debug!("http connection: {e}");
                }
            });
        }
    });
    Ok((local, task))
}
