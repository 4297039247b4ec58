//! A drain racing pushes that are admitted but not yet stored. A failpoint slows the store of
//! some pushes, so they land after a drain began: every batch a writer had acknowledged still
//! reads back, no `DataLost`, in every iteration. (Its own test binary: failpoints are
//! process-wide.)

use std::time::Duration;

use shoal_tests::*;
use shuffle_proto::messages::*;
use shuffle_proto::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_under_pushes_in_flight_loses_no_acknowledged_batch() {
    let scenario = fail::FailScenario::setup();
    let mut c = Cluster::start(1).await.unwrap();
    let sc = c.shuffle_client().unwrap();
    let app = AppId::new("app-race").unwrap();
    sc.register_app(&app, Duration::from_secs(600)).await.unwrap();
    const MAPS: u32 = 4;
    const PARTS: u32 = 8;
    const ROUNDS: u32 = 60;
    // One store in four waits 40 ms after its push was admitted.
    fail::cfg("worker-before-put", "25%sleep(40)").unwrap();
    assert!(fail::has_failpoints(), "built with failpoints");
    for i in 0..scaled(8, 100) {
        let id = format!("d{i}");
        c.start_worker(&id).await.unwrap();
        let k = ShuffleKey::new(app.clone(), i, 0);
        let a = sc.register_shuffle(&k, MAPS, PARTS, 1).await.unwrap();
        assert!(a.locations.iter().any(|l| l.primary.id.as_str() == id), "the new worker owns partitions");
        let t0 = std::time::Instant::now();
        // Paced, so the drain lands while pushes flow.
        let writers = spawn_round_writers(&sc, &a, MAPS, PARTS, ROUNDS, Some(Duration::from_millis(10)));
        // Drain the new worker at a different moment of the writes each time.
        tokio::time::sleep(Duration::from_millis(50 + u64::from(i) * 40)).await;
        println!(
            "iteration {i}: drain at {:?}, writers done: {}",
            t0.elapsed(),
            writers.iter().filter(|w| w.is_finished()).count()
        );
        let _: Ack = c.mc.call_typed(DecommissionWorker { worker: WorkerId::new(&id).unwrap() }).await.unwrap();
        for w in writers {
            assert!(w.await.unwrap().unwrap().accepted, "iteration {i}");
        }
        println!("iteration {i}: writes done at {:?}", t0.elapsed());
        for p in 0..PARTS {
            assert_round_partition(&sc, &k, p, MAPS, ROUNDS, &format!("iteration {i}")).await;
        }
        let w = c.workers.get_mut(&id).unwrap();
        tokio::time::timeout(Duration::from_secs(30), w.decommissioned()).await.expect("the drain finishes");
        c.stop_worker(&id).await;
    }
    c.shutdown().await;
    scenario.teardown();
}
