//! The HTTP endpoint on loopback: normal answers, and the limits on what a peer can make it hold.
#![allow(clippy::disallowed_methods)] // tests measure and wait on the real clock

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shuffle_proto::http::{serve_http, serve_http_with, HttpLimits, Page};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIG_BODY: usize = 32 << 20;

fn pages(path: &str) -> Page {
    match path {
        "/metrics" => Page::ok("text/plain", "shoal_up 1\n".into()),
        "/big" => Page::ok("application/octet-stream", "x".repeat(BIG_BODY)),
        _ => Page::not_found(),
    }
}

async fn start(limits: HttpLimits) -> SocketAddr {
    let (addr, _task) = serve_http_with("127.0.0.1:0".parse().unwrap(), limits, pages).await.unwrap();
    addr
}

/// Reads until the peer closes (EOF or an error such as a reset) and returns what came, or
/// `None` if it is still open after `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read).await.ok().map(|()| got)
}

/// One `GET path` on a fresh connection; the whole response, as text.
async fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(5)).await.expect("response within 5 s");
    String::from_utf8(got).unwrap()
}

/// A connection that sent the start of a request line and nothing more.
async fn stall(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metr").await.unwrap();
    s
}

#[tokio::test]
async fn get_answers_the_page() {
    let (addr, _task) = serve_http("127.0.0.1:0".parse().unwrap(), pages).await.unwrap();
    let resp = get(addr, "/metrics").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.to_ascii_lowercase().contains("content-type: text/plain"), "{resp}");
    assert!(resp.ends_with("\r\n\r\nshoal_up 1\n"), "{resp}");

    let resp = get(addr, "/nowhere").await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");

    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let resp = String::from_utf8(read_until_closed(&mut s, Duration::from_secs(5)).await.unwrap()).unwrap();
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
}

#[tokio::test]
async fn a_stalled_request_is_dropped_after_the_header_timeout() {
    let header_timeout = Duration::from_millis(300);
    let addr =
        start(HttpLimits { header_timeout, connection_lifetime: Duration::from_secs(30), ..HttpLimits::default() })
            .await;
    let t0 = Instant::now();
    let mut stalled = stall(addr).await;

    // Others are served meanwhile.
    let resp = get(addr, "/metrics").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    let slack = Duration::from_millis(1500);
    let got = read_until_closed(&mut stalled, header_timeout + slack).await;
    let waited = t0.elapsed();
    assert!(got.is_some(), "stalled connection still open after {waited:?}");
    assert!(waited >= Duration::from_millis(250), "closed after {waited:?}, before the header timeout");
    assert!(!String::from_utf8_lossy(&got.unwrap_or_default()).starts_with("HTTP/1.1 200"));

    let resp = get(addr, "/metrics").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    let header_timeout = Duration::from_secs(2);
    let addr =
        start(HttpLimits { max_connections: 4, header_timeout, connection_lifetime: Duration::from_secs(30) }).await;
    let t0 = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(stall(addr).await);
    }
    // Let the server accept them and take their slots.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut fifth = TcpStream::connect(addr).await.unwrap();
    // The server may already have closed it; a failed write is fine.
    let _ = fifth.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").await;
    let got = read_until_closed(&mut fifth, Duration::from_secs(1)).await;
    assert_eq!(got.as_deref(), Some(&[][..]), "the connection over the cap was not closed at once with no answer");
    assert!(t0.elapsed() < header_timeout, "the check ran too late to tell the cap from the header timeout");

    for s in &mut stalled {
        let got = read_until_closed(s, header_timeout + Duration::from_secs(2)).await;
        assert!(got.is_some(), "stalled connection still open after {:?}", t0.elapsed());
    }

    // Their slots come back once their tasks end, just after they close.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let resp = get(addr, "/metrics").await;
        if resp.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "no slot came back: {resp:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a GET with one header of `size` bytes and returns what came back before the close.
async fn get_with_header(addr: SocketAddr, size: usize) -> String {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let mut req = b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\nX-Big: ".to_vec();
    req.resize(req.len() + size, b'a');
    req.extend_from_slice(b"\r\n\r\n");
    // The server may close before it has read everything; a failed write is fine.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&req).await;
        wr
    });
    let mut got = Vec::new();
    let read = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.expect("closed within 5 s");
    drop(writer.await.unwrap());
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn a_huge_header_is_refused() {
    let addr = start(HttpLimits::default()).await;

    let resp = get_with_header(addr, 4 * 1024).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "a 4 KiB header should pass: {resp}");

    let resp = get_with_header(addr, 64 * 1024).await;
    assert!(resp.is_empty() || resp.starts_with("HTTP/1.1 431"), "a 64 KiB header was not refused: {resp}");
}

#[tokio::test]
async fn a_connection_lives_no_longer_than_its_lifetime() {
    let addr = start(HttpLimits {
        header_timeout: Duration::from_secs(10),
        connection_lifetime: Duration::from_millis(500),
        ..HttpLimits::default()
    })
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    // Keep-alive, and read the (big) answer only after the lifetime is over.
    s.write_all(b"GET /big HTTP/1.1\r\nHost: test\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = read_until_closed(&mut s, Duration::from_secs(4)).await.expect("connection closed after its lifetime");
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert!(got.len() < BIG_BODY, "the whole answer came: {} bytes", got.len());
}
