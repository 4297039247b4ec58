//! The master's HTTP pages show the same picture as `shoal status`.

use std::time::Duration;

use shoal_tests::*;
use shuffle_proto::messages::{ClusterStatus, DecommissionWorker};
use shuffle_proto::WorkerId;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_json_and_metrics() {
    let c = Cluster::start(2).await.unwrap();
    c.register("app-page", 0, 2, 4).await.unwrap();
    let _: shuffle_proto::messages::Ack =
        c.mc.call_typed(DecommissionWorker { worker: WorkerId::new("w1").unwrap() }).await.unwrap();
    let http = c.master.as_ref().unwrap().http_addr.unwrap();
    let st = eventually(Duration::from_secs(10), "w1 drained", || async {
        let st = c.status().await.ok()?;
        st.workers
            .iter()
            .any(|w| w.id.as_str() == "w1" && w.state == shuffle_proto::messages::WorkerState::Decommissioned)
            .then_some(st)
    })
    .await
    .unwrap();

    let (code, html) = http_get(http, "/").await.unwrap();
    assert_eq!(code, 200);
    for w in &st.workers {
        assert!(html.contains(w.id.as_str()), "{html}");
        assert!(html.contains(&w.addr));
    }
    assert!(html.contains("decommissioned") && html.contains("1 shuffles in flight"), "{html}");

    let (code, json) = http_get(http, "/status.json").await.unwrap();
    assert_eq!(code, 200);
    let page: ClusterStatus = serde_json::from_str(&json).unwrap();
    assert_eq!(page.leader, st.leader);
    assert_eq!(page.workers.len(), 2);
    assert_eq!(page.shuffles, 1);

    let (code, metrics) = http_get(http, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    for line in [
        "shoal_master_is_leader 1",
        "shoal_master_shuffles 1",
        "shoal_master_workers{state=\"active\"} 1",
        "shoal_master_workers{state=\"decommissioned\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} missing in\n{metrics}");
    }
    assert_eq!(http_get(http, "/healthz").await.unwrap().0, 200);
    assert_eq!(http_get(http, "/readyz").await.unwrap().0, 200);
    assert_eq!(http_get(http, "/missing").await.unwrap().0, 404);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masters_are_ready_with_a_leader_and_not_without_quorum() {
    let mut c = Cluster::start_with(3, 0).await.unwrap();
    let addrs: Vec<_> = c.masters.values().filter_map(|m| m.http_addr).collect();
    assert_eq!(addrs.len(), 3);
    for http in &addrs {
        let http = *http;
        eventually(Duration::from_secs(15), "every master ready", || async move {
            (http_get(http, "/readyz").await.ok()?.0 == 200).then_some(())
        })
        .await
        .unwrap();
    }
    // Two of three gone: the last one cannot know a leader.
    c.kill_leader().await.unwrap();
    let other = *c.masters.keys().next().unwrap();
    if let Some(m) = c.masters.remove(&other) {
        m.shutdown().await;
    }
    let last = c.masters.values().next().and_then(|m| m.http_addr).unwrap();
    assert_eq!(http_get(last, "/healthz").await.unwrap().0, 200, "alive");
    eventually(Duration::from_secs(15), "the lone master not ready", || async move {
        let (code, body) = http_get(last, "/readyz").await.ok()?;
        (code == 503 && body.contains("no leader")).then_some(())
    })
    .await
    .unwrap();
    c.shutdown().await;
}
