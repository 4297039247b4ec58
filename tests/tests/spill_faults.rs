//! A spill that fails between its steps (upload, report to the master, local delete), and an
//! object store that fails a share of its calls and is slow, through failpoints: nothing
//! acknowledged is lost, readers get every committed byte exactly once, and an object the
//! master never recorded is deleted by the sweep once past its grace. (Its own test binary:
//! failpoints are process-wide.)

use std::time::Duration;

use shoal_tests::*;
use shuffle_proto::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spill_failing_after_upload_or_after_report_loses_nothing() {
    let scenario = fail::FailScenario::setup();
    let mut c = Cluster::start(0).await.unwrap();
    // The sweep alone deletes objects: with no grace, it takes the failed spill's orphan at once.
    let mut cfg = c.worker_config("w0").unwrap();
    cfg.sweep_grace = Duration::ZERO;
    cfg.sweep_interval = None;
    c.workers.insert("w0".into(), shuffle_worker::node::WorkerNode::start(cfg).await.unwrap());
    let objects = std::path::PathBuf::from(c.object_store.trim_start_matches("file://"));
    let sc = c.shuffle_client().unwrap();
    let app = AppId::new("app-faults").unwrap();
    sc.register_app(&app, Duration::from_secs(600)).await.unwrap();
    for (i, point) in ["worker-after-upload", "worker-after-report"].into_iter().enumerate() {
        // The first spill of each partition fails at `point`; the retry goes through.
        fail::cfg(point, "1*return").unwrap();
        let k = ShuffleKey::new(app.clone(), i as u32, 0);
        let a = sc.register_shuffle(&k, 2, 1, 1).await.unwrap();
        for m in 0..2 {
            let mut w = sc.map_writer(&a, MapId(m), AttemptId(u64::from(m)));
            w.write(0, &rows(m, 0, 500, i as u64)).await.unwrap();
            assert!(w.commit().await.unwrap().accepted);
        }
        // Sealed: the worker spills, fails once at the failpoint, and spills again.
        c.wait_spilled(&k, 0, Duration::from_secs(30)).await.unwrap();
        let plan = c.plan(&k, 0, 1).await.unwrap();
        assert_eq!(plan.partitions[0].segments.len(), 1, "{point}: one recorded segment");
        let dir = objects.join("app-faults").join(format!("{i}.0"));
        eventually(Duration::from_secs(10), "only recorded objects are left", || async {
            c.workers["w0"].sweep_now().await.ok()?;
            (segment_objects(&dir) == 1).then_some(())
        })
        .await
        .unwrap_or_else(|_| panic!("{point}: {} segment objects, the master recorded 1", segment_objects(&dir)));
        let mut s = sc.read_partition(&k, 0, 0, 2);
        let mut got = Vec::new();
        while let Some(b) = s.next().await.unwrap() {
            got.extend(b);
        }
        let want: Vec<u8> = (0..2).flat_map(|m| rows(m, 0, 500, i as u64)).collect();
        assert_same_units(&got, &want, 100, point);
        fail::remove(point);
    }
    c.shutdown().await;
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failing_a_fifth_of_its_calls_delays_spills_and_loses_nothing() {
    let scenario = fail::FailScenario::setup();
    let mut c = Cluster::start(0).await.unwrap();
    let mut cfg = c.worker_config("w0").unwrap();
    // Small parts: every segment is a multipart upload of several parts.
    cfg.upload_part_bytes = 256 << 10;
    c.workers.insert("w0".into(), shuffle_worker::node::WorkerNode::start(cfg).await.unwrap());
    let sc = c.shuffle_client().unwrap();
    let app = AppId::new("app-flaky-store").unwrap();
    sc.register_app(&app, Duration::from_secs(600)).await.unwrap();
    const MAPS: u32 = 2;
    const PARTS: u32 = 4;
    for point in ["object-store-put", "object-store-part", "object-store-complete", "object-store-list"] {
        fail::cfg(point, "20%return").unwrap();
    }
    fail::cfg("object-store-get", "50%sleep(30)").unwrap();
    let k = ShuffleKey::new(app.clone(), 0, 0);
    let a = sc.register_shuffle(&k, MAPS, PARTS, 1).await.unwrap();
    let data = |m: u32, p: u32| -> Vec<u8> { (0..8).flat_map(|r| rows(m, p, 1000, r)).collect() };
    for m in 0..MAPS {
        let mut w = sc.map_writer(&a, MapId(m), AttemptId(u64::from(m)));
        for p in 0..PARTS {
            w.write(p, &data(m, p)).await.unwrap();
        }
        assert!(w.commit().await.unwrap().accepted);
    }
    for p in 0..PARTS {
        c.wait_spilled(&k, p, Duration::from_secs(120)).await.unwrap();
        let mut s = sc.read_partition(&k, p, 0, MAPS);
        let mut got = Vec::new();
        while let Some(b) = s.next().await.unwrap() {
            got.extend(b);
        }
        let want: Vec<u8> = (0..MAPS).flat_map(|m| data(m, p)).collect();
        assert_same_units(&got, &want, 100, &format!("partition {p}"));
    }
    let metrics = c.workers["w0"].metrics().encode();
    let failed: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("shoal_worker_store_errors_total{") && l.contains("kind=\"generic\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    println!("store tries failed and retried: {failed}");
    assert!(failed > 0, "the faults fired and were counted:\n{metrics}");
    c.shutdown().await;
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_partition_is_spilled_under_it_plans_again() {
    let scenario = fail::FailScenario::setup();
    let c = Cluster::start(1).await.unwrap();
    let sc = c.shuffle_client().unwrap();
    let app = AppId::new("app-read-race").unwrap();
    sc.register_app(&app, Duration::from_secs(600)).await.unwrap();
    let k = ShuffleKey::new(app.clone(), 0, 0);
    let a = sc.register_shuffle(&k, 1, 1, 1).await.unwrap();
    let data = rows(0, 0, 500, 1);
    let mut w = sc.map_writer(&a, MapId(0), AttemptId(0));
    w.write(0, &data).await.unwrap();
    // Every read waits 1.5 s between its plan and its scan: the commit seals the shuffle, the
    // seal spill records the segment and drops the worker's copy in that window.
    fail::cfg("worker-before-read", "return(1500)").unwrap();
    assert!(w.commit().await.unwrap().accepted);
    // Planned at once, before the next heartbeat asks the worker to spill.
    let mut s = sc.read_partition(&k, 0, 0, 1);
    let mut got = Vec::new();
    while let Some(b) = s.next().await.unwrap() {
        got.extend(b);
    }
    assert_same_units(&got, &data, 100, "read across the spill");
    let stats = s.stats().unwrap_or_default();
    println!("read across the spill: {stats:?}");
    assert!(stats.from_segments > 0 && stats.from_workers == 0, "the second plan read the segment: {stats:?}");
    fail::remove("worker-before-read");
    c.shutdown().await;
    scenario.teardown();
}
