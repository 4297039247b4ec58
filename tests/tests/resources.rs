//! Bounded resources: a node's memory follows what arrived, not what peers announced. Its own
//! test binary, so the process's RSS is this test's alone.

use std::time::Duration;

use shoal_tests::{rss_bytes, Cluster};
use shuffle_proto::transport::{Client, ClientOptions, Tls};

/// Peers announce frames far larger than they send, then stall: the node's memory stays
/// bounded by what arrived (and its budgets), not by what was announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_frames_that_stall_do_not_grow_a_node() -> anyhow::Result<()> {
    let c = Cluster::start(1).await?;
    let worker = c.workers.values().next().map(|w| w.addr.to_string()).unwrap_or_default();
    let before = rss_bytes();
    const CONNS: usize = 16;
    const STREAMS: usize = 8;
    const ANNOUNCED: u32 = 60 << 20;
    const SENT: usize = 256 << 10;
    let mut held = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..CONNS {
        // A fresh client endpoint per connection: separate QUIC connections.
        // A generous handshake timeout: on a busy 2-core machine the node answers late, and
        // this test is about memory, not latency.
        let opts = ClientOptions { connect_timeout: Duration::from_secs(10), ..ClientOptions::default() };
        let client = Client::new(&Tls::load(&c.ca_only())?, opts)?;
        let conn = client.connection(&worker).await?;
        for _ in 0..STREAMS {
            let (mut send, recv) = conn.open_bi().await?;
            let header = shuffle_proto::frame::FrameHeader { kind: 50, meta_len: 64, body_len: ANNOUNCED, auth_len: 0 };
            send.write_all(&header.encode()).await?;
            // Part of what was announced, then nothing more.
            let _ = tokio::time::timeout(Duration::from_millis(200), send.write_all(&vec![0x5a; SENT])).await;
            held.push((send, recv));
        }
        clients.push(client);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = rss_bytes();
    let grew = during.saturating_sub(before);
    let announced = (CONNS * STREAMS) as u64 * u64::from(ANNOUNCED);
    println!(
        "RSS before {} MiB, while {} streams announce {} MiB in all and stall: {} MiB (+{} MiB)",
        before >> 20,
        CONNS * STREAMS,
        announced >> 20,
        during >> 20,
        grew >> 20
    );
    // What could arrive: each connection's flow-control window; nothing of what was announced.
    assert!(grew < 256 << 20, "a node grew by {} MiB for frames that never arrived", grew >> 20);
    drop(held);
    drop(clients);
    // The node still serves.
    let st = c.status().await?;
    assert_eq!(st.workers.len(), 1);
    c.shutdown().await;
    Ok(())
}
