//! The QUIC transport on loopback: calls, typed errors, malformed input, verification.
#![allow(clippy::disallowed_methods)] // tests measure and wait on the real clock

use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use shuffle_proto::admission::AdmissionLimits;
use shuffle_proto::frame::{FrameHeader, FrameLimits};
use shuffle_proto::messages::{Ack, GetStatus, Message, PushAck};
use shuffle_proto::transport::*;
use shuffle_proto::{ErrorCode, ProtoError, WireError};

struct Echo;

impl Handler for Echo {
    async fn handle(
        &self,
        call: &CallInfo,
        req: Message,
        body: Vec<u8>,
        out: &mut Responder,
    ) -> Result<(), ProtoError> {
        match req {
            Message::PushAck(a) => out.send(&Message::PushAck(PushAck { seq: a.seq + 1 }), &body).await,
            // Says whether the transport saw a cluster node.
            // and, in bit 1, whether the call carried a credential that decoded.
            Message::Ack(_) => {
                let seq = call.node as u32 | (call.credential.is_some() as u32) << 1;
                out.send(&Message::PushAck(PushAck { seq }), &[]).await
            }
            _ => out.error(WireError::new(ErrorCode::Busy, "busy")).await,
        }
    }
}

fn start(tls: &Tls) -> (SocketAddr, quinn::Endpoint) {
    start_with(tls, ServerOptions::for_tls(tls))
}

fn start_with(tls: &Tls, opts: ServerOptions) -> (SocketAddr, quinn::Endpoint) {
    let ep = server_endpoint("127.0.0.1:0".parse().unwrap(), tls, &opts).unwrap();
    let addr = ep.local_addr().unwrap();
    tokio::spawn(serve(ep.clone(), Arc::new(Echo), opts));
    (addr, ep)
}

fn cluster(dir: &std::path::Path) -> (TlsSource, Tls) {
    let src = generate_cluster_tls(dir).unwrap();
    let tls = Tls::load(&src).unwrap();
    (src, tls)
}

async fn seen_as_node(client: &Client, addr: &str) -> Result<bool, TransportError> {
    match client.call(addr, &Message::Ack(Ack {}), b"").await? {
        (Message::PushAck(p), _) => Ok(p.seq & 1 == 1),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_node_certificate_is_a_cluster_identity_and_its_absence_is_not() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (src, tls) = cluster(a.path());
    let (addr, _ep) = start(&tls);
    let addr = addr.to_string();
    let node = Client::new(&tls, ClientOptions::default()).unwrap();
    assert!(seen_as_node(&node, &addr).await.unwrap(), "a client with the cluster's node certificate");
    // A credential set on a client travels in each request's auth section.
    let cred = shuffle_proto::auth::Credential::parse_secret("tenant-a:s3cret").unwrap();
    let with = node.with_credential(Some(&cred)).unwrap();
    match with.call(&addr, &Message::Ack(Ack {}), b"").await.unwrap() {
        (Message::PushAck(p), _) => assert_eq!(p.seq, 0b11, "node and credential"),
        other => panic!("{other:?}"),
    }
    let TlsSource::Files { ca, .. } = src else { panic!() };
    let anonymous = Client::new(&Tls::load(&TlsSource::CaOnly { ca: ca.clone() }).unwrap(), ClientOptions::default());
    assert!(!seen_as_node(&anonymous.unwrap(), &addr).await.unwrap(), "a client with no certificate");
    // A certificate from another CA (trusting ours as a client) fails the handshake.
    generate_cluster_tls(b.path()).unwrap();
    let foreign = TlsSource::Files { cert: b.path().join("node.pem"), key: b.path().join("node.key"), ca };
    let opts = ClientOptions { connect_timeout: Duration::from_secs(2), ..Default::default() };
    let foreign = Client::new(&Tls::load(&foreign).unwrap(), opts).unwrap();
    let err = seen_as_node(&foreign, &addr).await.unwrap_err();
    assert!(err.retryable() || matches!(err, TransportError::Connect { .. }), "{err:?}");
    assert!(!matches!(err, TransportError::Remote(_)), "no reply may reach a foreign peer: {err:?}");
}

/// Opens a stream and writes `bytes` without finishing it.
async fn stall(client: &Client, addr: &str, bytes: &[u8]) -> (quinn::SendStream, quinn::RecvStream) {
    let conn = client.connection(addr).await.unwrap();
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    (send, recv)
}

async fn reply_code(recv: &mut quinn::RecvStream) -> ErrorCode {
    let mut body = Vec::new();
    match shuffle_proto::frame::read_frame(recv, &Default::default(), &mut body).await {
        Ok(Some(Message::WireError(e))) => e.code(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_stalled_header_or_frame_times_out_and_the_budget_refuses_what_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let (_, tls) = cluster(dir.path());
    let limits = FrameLimits { max_meta: 4096, max_body: 1 << 20, max_auth: 512 };
    let one_frame = (1u64 << 20) + 8192;
    let opts = ServerOptions {
        limits,
        conn_budget_bytes: 4 * one_frame,
        node_budget_bytes: 4 * one_frame,
        header_timeout: Duration::from_millis(300),
        frame_timeout: Duration::from_secs(2),
        ..ServerOptions::for_tls(&tls)
    };
    opts.validate().unwrap();
    let (addr, _ep) = start_with(&tls, opts);
    let addr = addr.to_string();
    let client = Client::new(&tls, ClientOptions::default()).unwrap();

    // One byte of a header, then nothing: refused once the header timeout passes.
    let t0 = std::time::Instant::now();
    let (_s, mut r) = stall(&client, &addr, b"S").await;
    assert_eq!(reply_code(&mut r).await, ErrorCode::Timeout);
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());

    // Four streams announce the largest frame and send a little of it: they fill the budget.
    // A fifth cannot reserve its bytes and is told the node is busy; the four time out.
    let header = |meta_len| FrameHeader { kind: 1, meta_len, body_len: 1 << 20, auth_len: 0 }.encode();
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut bytes = header(4096).to_vec();
        bytes.extend_from_slice(&[0u8; 100]);
        stalled.push(stall(&client, &addr, &bytes).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_s5, mut r5) = stall(&client, &addr, &header(4096)).await;
    assert_eq!(reply_code(&mut r5).await, ErrorCode::Busy);
    for (_s, r) in stalled.iter_mut() {
        assert_eq!(reply_code(r).await, ErrorCode::Timeout);
    }
    // The budget came back: a normal call goes through on the same connection.
    let (reply, _) = client.call(&addr, &Message::PushAck(PushAck { seq: 7 }), b"x").await.unwrap();
    assert_eq!(reply, Message::PushAck(PushAck { seq: 8 }));
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
    let err = client.call_typed::<Ack>(&addr, GetStatus {}).await.unwrap_err();
    assert!(matches!(&err, TransportError::Remote(w) if w.code() == ErrorCode::Busy));
    assert!(err.retryable());
}

#[tokio::test]
async fn malformed_bytes_close_the_connection_but_not_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (_, tls) = cluster(dir.path());
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

/// A master that always points at another one.
struct Stale {
    other: std::sync::Mutex<String>,
    calls: std::sync::atomic::AtomicU32,
}

impl Handler for Stale {
    async fn handle(&self, _: &CallInfo, _: Message, _: Vec<u8>, out: &mut Responder) -> Result<(), ProtoError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let hint = self.other.lock().unwrap().clone();
        out.error(WireError::not_leader(Some(hint))).await
    }
}

/// Two masters whose stale hints point at each other: the client pauses between rounds and
/// gives up at its deadline instead of spinning.
#[tokio::test]
async fn stale_leader_hints_in_a_circle_end_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (_, tls) = cluster(dir.path());
    let opts = ServerOptions::for_tls(&tls);
    let mut addrs = Vec::new();
    let mut handlers = Vec::new();
    for _ in 0..2 {
        let ep = server_endpoint("127.0.0.1:0".parse().unwrap(), &tls, &opts).unwrap();
        let h = Arc::new(Stale { other: Default::default(), calls: Default::default() });
        addrs.push(ep.local_addr().unwrap().to_string());
        tokio::spawn(serve(ep, h.clone(), opts.clone()));
        handlers.push(h);
    }
    *handlers[0].other.lock().unwrap() = addrs[1].clone();
    *handlers[1].other.lock().unwrap() = addrs[0].clone();
    let client = Client::new(&tls, ClientOptions::default()).unwrap();
    let mc = MasterClient::new(client, addrs.clone(), Duration::from_secs(1)).unwrap();
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), mc.call(&Message::GetStatus(GetStatus {})))
        .await
        .expect("the client spins on circular hints")
        .unwrap_err();
    let took = started.elapsed();
    let calls: u32 = handlers.iter().map(|h| h.calls.load(std::sync::atomic::Ordering::Relaxed)).sum();
    assert!(matches!(err, TransportError::Remote(ref e) if e.code() == ErrorCode::NotLeader), "{err:?}");
    assert!(took < Duration::from_secs(3), "gave up after {took:?}");
    // A few hops per pause, a handful of pauses in a second: not thousands of calls.
    assert!(calls < 100, "{calls} calls in {took:?}");
}

/// A master that takes calls and never answers, as one killed outright looks from a client
/// holding a connection to it (no close ever arrives).
struct Silent;

impl Handler for Silent {
    async fn handle(&self, _: &CallInfo, _: Message, _: Vec<u8>, _: &mut Responder) -> Result<(), ProtoError> {
        std::future::pending::<()>().await;
        Ok(())
    }
}

/// A master that answers every call with an `Ack`.
struct Answers;

impl Handler for Answers {
    async fn handle(&self, _: &CallInfo, _: Message, _: Vec<u8>, out: &mut Responder) -> Result<(), ProtoError> {
        out.send(&Message::Ack(Ack {}), &[]).await
    }
}

/// Two masters on loopback, the first served by `first`, the second answering every call; a
/// client for them and their addresses in that order.
fn first_master_then_a_good_one<H: Handler>(first: H) -> (tempfile::TempDir, Client, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let (_, tls) = cluster(dir.path());
    let opts = ServerOptions::for_tls(&tls);
    let a = server_endpoint("127.0.0.1:0".parse().unwrap(), &tls, &opts).unwrap();
    let b = server_endpoint("127.0.0.1:0".parse().unwrap(), &tls, &opts).unwrap();
    let addrs = vec![a.local_addr().unwrap().to_string(), b.local_addr().unwrap().to_string()];
    tokio::spawn(serve(a, Arc::new(first), opts.clone()));
    tokio::spawn(serve(b, Arc::new(Answers), opts));
    (dir, Client::new(&tls, ClientOptions::default()).unwrap(), addrs)
}

/// A client whose first master went silent moves to the next one after one bounded try,
/// instead of waiting for QUIC's idle timeout (10 s) or its call timeout.
#[tokio::test]
async fn a_silent_master_costs_one_bounded_try() {
    let (_dir, client, addrs) = first_master_then_a_good_one(Silent);
    let mc = MasterClient::new(client, addrs.clone(), Duration::from_secs(20))
        .unwrap()
        .with_attempt_timeout(Duration::from_millis(500));
    let started = std::time::Instant::now();
    let (reply, _) = mc.call(&Message::GetStatus(GetStatus {})).await.unwrap();
    let took = started.elapsed();
    assert!(matches!(reply, Message::Ack(_)), "{reply:?}");
    assert!(took >= Duration::from_millis(500) && took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(mc.leader_hint(), Some(addrs[1].clone()), "the answering master is remembered");
}

/// A master whose Raft stopped (its disk filled) answers every call `Unavailable`.
struct Broken;

impl Handler for Broken {
    async fn handle(&self, _: &CallInfo, _: Message, _: Vec<u8>, out: &mut Responder) -> Result<(), ProtoError> {
        out.error(WireError::new(ErrorCode::Unavailable, "this master cannot serve requests; try another")).await
    }
}

/// A master that cannot serve sends the client on to the next one: the call succeeds there
/// instead of failing with the broken master's answer.
#[tokio::test]
async fn an_unavailable_master_sends_the_client_to_the_next() {
    let (_dir, client, addrs) = first_master_then_a_good_one(Broken);
    let mc = MasterClient::new(client, addrs.clone(), Duration::from_secs(20)).unwrap();
    let (reply, _) = mc.call(&Message::GetStatus(GetStatus {})).await.unwrap();
    assert!(matches!(reply, Message::Ack(_)), "{reply:?}");
    assert_eq!(mc.leader_hint(), Some(addrs[1].clone()));
}

/// On loopback, MTU discovery climbs past the 1452-byte default to Shoal's datagram size, so a
/// byte costs a fraction of the packets.
#[tokio::test]
async fn loopback_connections_use_large_datagrams() {
    let dir = tempfile::tempdir().unwrap();
    let (_, tls) = cluster(dir.path());
    let opts = ServerOptions::for_tls(&tls);
    let ep = server_endpoint("127.0.0.1:0".parse().unwrap(), &tls, &opts).unwrap();
    let addr = ep.local_addr().unwrap().to_string();
    tokio::spawn(serve(ep, Arc::new(Answers), opts));
    let client = Client::new(&tls, ClientOptions::default()).unwrap();
    let body = vec![7u8; 256 << 10];
    let mut mtu = 0;
    for _ in 0..50 {
        client.call(&addr, &Message::Ack(Ack {}), &body).await.unwrap();
        mtu = client.connection(&addr).await.unwrap().stats().path.current_mtu;
        if mtu > 1500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(mtu > 1500 && mtu <= shuffle_proto::transport::MAX_UDP_PAYLOAD, "path MTU {mtu}");
}

/// A client without a certificate, calling from `ip` (any address of the loopback range).
fn client_from(ca: &std::path::Path, ip: [u8; 4]) -> Client {
    let tls = Tls::load(&TlsSource::CaOnly { ca: ca.to_path_buf() }).unwrap();
    Client::new(&tls, ClientOptions { bind: (ip, 0).into(), ..Default::default() }).unwrap()
}

/// The seen-from-outside attack: anonymous peers take every client slot with one cheap call
/// each, then sit idle. A cluster node still gets in (its own pool), a legitimate client gets
/// in by closing the idlest of them, and one source address cannot take more than its share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_anonymous_connections_keep_neither_nodes_nor_new_clients_out() {
    let dir = tempfile::tempdir().unwrap();
    let (src, tls) = cluster(dir.path());
    let TlsSource::Files { ca, .. } = &src else { panic!() };
    let admission = AdmissionLimits { max_clients: 8, max_client_per_source: 4, ..Default::default() };
    let (addr, _ep) = start_with(&tls, ServerOptions { admission, ..ServerOptions::for_tls(&tls) });
    let addr = addr.to_string();
    let mut idle = Vec::new();
    for ip in [[127, 0, 0, 2], [127, 0, 0, 3]] {
        for _ in 0..4 {
            let c = client_from(ca, ip);
            assert!(!seen_as_node(&c, &addr).await.unwrap());
            let conn = c.connection(&addr).await.unwrap();
            idle.push((c, conn));
        }
    }
    // The pool is full. A fifth connection from a source holding four: over its cap.
    let fifth = client_from(ca, [127, 0, 0, 2]);
    assert!(seen_as_node(&fifth, &addr).await.is_err(), "a source over its cap was served");
    // A node, whatever the clients hold.
    let node = Client::new(&tls, ClientOptions::default()).unwrap();
    assert!(seen_as_node(&node, &addr).await.unwrap());
    // A legitimate client from another source gets in: the idlest connection (the first one
    // opened; the others called later) is closed for it.
    let legit = client_from(ca, [127, 0, 0, 1]);
    assert!(!seen_as_node(&legit, &addr).await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let closed: Vec<bool> = idle.iter().map(|(_, conn)| conn.close_reason().is_some()).collect();
    assert_eq!(closed, [true, false, false, false, false, false, false, false]);
    assert!(seen_as_node(&node, &addr).await.unwrap(), "nodes keep their connection");
    assert!(!seen_as_node(&legit, &addr).await.unwrap(), "the newcomer keeps its connection");
}

/// Under a handshake flood the server asks unvalidated peers to prove their address (QUIC
/// Retry); real clients answer it and their calls go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unvalidated_peers_prove_their_address_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let (src, tls) = cluster(dir.path());
    let TlsSource::Files { ca, .. } = &src else { panic!() };
    // Every handshake is "under load": each peer is sent a Retry first.
    let admission = AdmissionLimits { retry_above: 0, ..Default::default() };
    let (addr, _ep) = start_with(&tls, ServerOptions { admission, ..ServerOptions::for_tls(&tls) });
    let addr = addr.to_string();
    for i in 0..8u8 {
        let c = client_from(ca, [127, 0, 1, i + 1]);
        assert!(!seen_as_node(&c, &addr).await.unwrap());
    }
    let node = Client::new(&tls, ClientOptions::default()).unwrap();
    assert!(seen_as_node(&node, &addr).await.unwrap());
}

/// Twenty connections of one source announce large frames and send almost nothing: they hold
/// their source's share of the frame budget, not the node's, so another source's calls go
/// through at once and a node's too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_announcing_large_frames_holds_only_its_share() {
    let dir = tempfile::tempdir().unwrap();
    let (src, tls) = cluster(dir.path());
    let TlsSource::Files { ca, .. } = &src else { panic!() };
    let limits = FrameLimits { max_meta: 4096, max_body: 1 << 20, max_auth: 512 };
    let one_frame = (1u64 << 20) + 8192;
    let opts = ServerOptions {
        limits,
        conn_budget_bytes: 2 * one_frame,
        source_budget_bytes: 4 * one_frame,
        node_budget_bytes: 8 * one_frame,
        header_timeout: Duration::from_secs(2),
        frame_timeout: Duration::from_secs(20),
        ..ServerOptions::for_tls(&tls)
    };
    opts.validate().unwrap();
    let (addr, _ep) = start_with(&tls, opts);
    let addr = addr.to_string();
    let header = FrameHeader { kind: 1, meta_len: 4096, body_len: 1 << 20, auth_len: 0 }.encode();
    let mut held = Vec::new();
    for _ in 0..20 {
        let c = client_from(ca, [127, 0, 0, 9]);
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(&[0u8; 100]);
        held.push((stall(&c, &addr, &bytes).await, c));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let other = client_from(ca, [127, 0, 0, 10]);
    let t0 = std::time::Instant::now();
    for seq in 0..5 {
        let (reply, _) = other.call(&addr, &Message::PushAck(PushAck { seq }), &[7u8; 512 << 10]).await.unwrap();
        assert_eq!(reply, Message::PushAck(PushAck { seq: seq + 1 }));
    }
    let node = Client::new(&tls, ClientOptions::default()).unwrap();
    assert!(seen_as_node(&node, &addr).await.unwrap());
    // Without per-source shares the stalled frames held the whole budget and these calls
    // waited out the header timeout (2 s) to be told Busy.
    assert!(t0.elapsed() < Duration::from_millis(1500), "calls waited {:?}", t0.elapsed());
    drop(held);
}
