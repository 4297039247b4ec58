//! Who may call what: peers without a cluster identity are refused cluster-internal calls,
//! and nothing changes when they try.

use std::time::Duration;

use shoal_tests::Cluster;
use shuffle_proto::messages::*;
use shuffle_proto::transport::{generate_cluster_tls, Client, ClientOptions, Tls, TlsSource, TransportError};
use shuffle_proto::{ErrorCode, WorkerId};

fn register_as(worker: &str) -> RegisterWorker {
    RegisterWorker {
        worker: WorkerId::new(worker).unwrap(),
        addr: "127.0.0.1:9".into(),
        capacity_bytes: 1 << 30,
        held: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_internal_calls_need_a_node_certificate() -> anyhow::Result<()> {
    let c = Cluster::start(1).await?;
    let TlsSource::Files { ca, .. } = &c.tls else { anyhow::bail!("the harness uses certificate files") };
    let anonymous = Client::new(&Tls::load(&TlsSource::CaOnly { ca: ca.clone() })?, ClientOptions::default())?;
    let before = c.status().await?;

    // No client certificate: every cluster-internal call is refused with Unauthorized.
    let calls: Vec<Message> = vec![
        register_as("intruder").into(),
        WorkerHeartbeat { worker: WorkerId::new("w0")?, bytes_held: 0, partitions: 0, shuffles: vec![] }.into(),
        DrainComplete { worker: WorkerId::new("w0")? }.into(),
        RaftRequest { kind: RaftRpcKind::Vote }.into(),
    ];
    for m in &calls {
        let (reply, _) = anonymous.call(&c.master_addr, m, &[]).await?;
        match reply {
            Message::WireError(e) => assert_eq!(e.code(), ErrorCode::Unauthorized, "{}: {e}", m.name()),
            other => panic!("{} was answered: {other:?}", m.name()),
        }
    }

    // A certificate from another CA does not even complete the handshake.
    let other = tempfile::tempdir()?;
    generate_cluster_tls(other.path())?;
    let foreign =
        TlsSource::Files { cert: other.path().join("node.pem"), key: other.path().join("node.key"), ca: ca.clone() };
    let opts = ClientOptions { connect_timeout: Duration::from_secs(2), ..Default::default() };
    let foreign = Client::new(&Tls::load(&foreign)?, opts)?;
    let err = foreign.call(&c.master_addr, &register_as("intruder").into(), &[]).await.unwrap_err();
    assert!(!matches!(err, TransportError::Remote(_)), "a foreign peer got an answer: {err:?}");

    // Nothing changed: no new worker, w0 still active.
    let after = c.status().await?;
    let ids = |s: &ClusterStatus| s.workers.iter().map(|w| (w.id.clone(), w.state.clone())).collect::<Vec<_>>();
    assert_eq!(ids(&before), ids(&after));
    assert!(after.workers.iter().all(|w| w.id.as_str() != "intruder"));

    // The cluster's own node certificate registers fine.
    let _: WorkerRegistered = c.mc.call_typed(register_as("w9")).await?;
    c.shutdown().await;
    Ok(())
}

/// Hostile archive bytes get a fixed message: no addresses or decoder internals reach a peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_a_code_and_a_fixed_message() -> anyhow::Result<()> {
    let c = Cluster::start(1).await?;
    let conn = c.client.connection(&c.master_addr).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let header = shuffle_proto::frame::FrameHeader { kind: 30, meta_len: 64, body_len: 0, auth_len: 0 };
    send.write_all(&header.encode()).await?;
    send.write_all(&[0xA5; 64]).await?;
    let _ = send.finish();
    let mut body = Vec::new();
    match shuffle_proto::frame::read_frame(&mut recv, &Default::default(), &mut body).await? {
        Some(Message::WireError(e)) => {
            assert_eq!(e.code(), ErrorCode::Malformed);
            assert!(!e.message.contains("0x") && e.message.len() < 80, "leaks detail: {}", e.message);
        }
        other => panic!("{other:?}"),
    }
    c.shutdown().await;
    Ok(())
}
