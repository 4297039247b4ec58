//! The QUIC transport on loopback: calls, typed errors, malformed input, verification.

use std::net::SocketAddr;
use std::sync::Arc;

use shuffle_proto::messages::{Ack, Message, PushAck};
use shuffle_proto::transport::*;
use shuffle_proto::{ErrorCode, ProtoError, WireError};

struct Echo;

impl Handler for Echo {
    async fn handle(
        &self,
        _peer: SocketAddr,
        req: Message,
        body: Vec<u8>,
        out: &mut Responder,
    ) -> Result<(), ProtoError> {
        match req {
            Message::PushAck(a) => out.send(&Message::PushAck(PushAck { seq: a.seq + 1 }), &body).await,
            _ => out.error(WireError::new(ErrorCode::Busy, "busy")).await,
        }
    }
}

fn start(tls: &Tls) -> (SocketAddr, quinn::Endpoint) {
    let ep = server_endpoint("127.0.0.1:0".parse().unwrap(), tls, &ServerOptions::default()).unwrap();
    let addr = ep.local_addr().unwrap();
    tokio::spawn(serve(ep.clone(), Arc::new(Echo), ServerOptions::default()));
    (addr, ep)
}

#[tokio::test]
async fn calls_round_trip_and_keep_error_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let tls = Tls::load(&generate_cluster_tls(dir.path()).unwrap()).unwrap();
    let (addr, _ep) = start(&tls);
    let client = Client::new(&tls, ClientOptions::default()).unwrap();
    let addr = addr.to_string();
    for i in 0..20u32 {
        let (reply, body) = client.call(&addr, &Message::PushAck(PushAck { seq: i }), b"data").await.unwrap();
        assert_eq!(reply, Message::PushAck(PushAck { seq: i + 1 }));
        assert_eq!(body, b"data");
    }
    let err = client.call_typed::<Ack>(&addr, Ack {}).await.unwrap_err();
    assert!(matches!(&err, TransportError::Remote(w) if w.code() == ErrorCode::Busy));
    assert!(err.retryable());
}

#[tokio::test]
async fn malformed_bytes_close_the_connection_but_not_the_server() {
    let tls = Tls::load(&TlsSource::Insecure).unwrap();
    let (addr, _ep) = start(&tls);
    let client = Client::new(&tls, ClientOptions::default()).unwrap();
    let conn = client.connection(&addr.to_string()).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    send.finish().unwrap();
    let mut body = Vec::new();
    let reply = shuffle_proto::frame::read_frame(&mut recv, &Default::default(), &mut body).await.unwrap();
    match reply {
        Some(Message::WireError(e)) => assert_eq!(e.code(), ErrorCode::Malformed),
        other => panic!("{other:?}"),
    }
    // The connection is closed by the server...
    let reason = conn.closed().await;
    assert!(matches!(reason, quinn::ConnectionError::ApplicationClosed(_)), "{reason:?}");
    // ...and the server still serves a new one.
    client.forget(&addr.to_string()).await;
    let (reply, _) = client.call(&addr.to_string(), &Message::PushAck(PushAck { seq: 1 }), b"").await.unwrap();
    assert_eq!(reply, Message::PushAck(PushAck { seq: 2 }));
}

#[tokio::test]
async fn a_client_refuses_a_server_outside_its_cluster() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let server_tls = Tls::load(&generate_cluster_tls(a.path()).unwrap()).unwrap();
    let other_cluster = Tls::load(&generate_cluster_tls(b.path()).unwrap()).unwrap();
    let (addr, _ep) = start(&server_tls);
    let client = Client::new(&other_cluster, ClientOptions::default()).unwrap();
    let err = client.call(&addr.to_string(), &Message::Ack(Ack {}), b"").await.unwrap_err();
    assert!(matches!(err, TransportError::Connect { .. }), "{err:?}");
}

#[tokio::test]
async fn unreachable_peers_fail_fast_and_retryably() {
    let tls = Tls::load(&TlsSource::Insecure).unwrap();
    let opts = ClientOptions { connect_timeout: std::time::Duration::from_millis(300), ..Default::default() };
    let client = Client::new(&tls, opts).unwrap();
    let err = client.call("127.0.0.1:9", &Message::Ack(Ack {}), b"").await.unwrap_err();
    assert!(err.retryable() && err.unreachable(), "{err:?}");
}
