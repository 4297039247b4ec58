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
    assert_eq!(http_get(http, "/missing").await.unwrap().0, 404);
    c.shutdown().await;
}
