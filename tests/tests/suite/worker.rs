//! A master and workers on loopback: push, ack, read; duplicates and stale epochs; restart on
//! the same disk; seal → spill → the segment holds exactly what the live read returned;
//! decommission; backpressure.

use std::time::Duration;

use shoal_tests::*;
use shuffle_proto::batch::StreamRecords;
use shuffle_proto::messages::*;
use shuffle_proto::objstore::{open_store, read_segment};
use shuffle_proto::*;

fn key(app: &str, s: u32) -> ShuffleKey {
    ShuffleKey::new(AppId::new(app).unwrap(), s, 0)
}

async fn commit(c: &Cluster, key: &ShuffleKey, map: u32, attempt: u64, stats: Vec<PartitionStat>) -> MapCommitted {
    c.mc.call_typed(CommitMap { shuffle: key.clone(), map: MapId(map), attempt: AttemptId(attempt), partitions: stats })
        .await
        .unwrap()
}

/// Decodes stream records to (map, attempt, seq, raw bytes).
fn decode(records: &[u8]) -> Vec<(u32, u64, u32, Vec<u8>)> {
    StreamRecords::new(records, 1 << 26)
        .map(|r| {
            let r = r.unwrap();
            let v = shuffle_proto::batch::BatchView::parse_exact(r.batch, 1 << 26).unwrap();
            let mut raw = Vec::new();
            v.decode_into(&mut raw).unwrap();
            (r.map, r.attempt, r.seq, raw)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_read_spill_and_restart() {
    let mut c = Cluster::start(2).await.unwrap();
    let k = key("app-a", 1);
    let a = c.register("app-a", 1, 3, 4).await.unwrap();

    // Maps 0..3 push two batches to every partition; map 1 also has a losing attempt.
    let mut want: std::collections::BTreeMap<u32, Vec<Vec<u8>>> = Default::default();
    // An unrecorded object under this worker's name, as an upload whose report is still
    // queued at the master leaves it: spills delete no object (only the sweep does, once it is
    // old enough), so it survives them; another worker's object is not touched either.
    let store = open_store(&c.object_store).unwrap();
    let loc0 = a.locations[0].clone();
    let garbage = shuffle_proto::segment::segment_key(&k, 0, &loc0.primary.id, 0xdead);
    let foreign =
        shuffle_proto::segment::segment_key(&k, 0, &WorkerId::new(format!("{}-x", loc0.primary.id)).unwrap(), 1);
    for key in [&garbage, &foreign] {
        store.put(&object_store::path::Path::from(key.as_str()), b"junk".to_vec().into()).await.unwrap();
    }
    for map in 0..3u32 {
        let mut stats = Vec::new();
        for loc in &a.locations {
            let p = loc.partition.0;
            let b0 = rows(map, p, 300, 1);
            let b1 = rows(map, p, 200, 2);
            c.push(&k, loc, map, 100 + map as u64, 0, &b0).await.unwrap();
            c.push(&k, loc, map, 100 + map as u64, 1, &b1).await.unwrap();
            // A retried push of the same seq is idempotent.
            c.push(&k, loc, map, 100 + map as u64, 1, &b1).await.unwrap();
            if map == 1 {
                c.push(&k, loc, map, 999, 0, &rows(9, p, 50, 3)).await.unwrap();
            }
            stats.push(partition_stat(loc, &[&b0, &b1]));
            want.entry(p).or_default().extend([b0, b1]);
        }
        let r = commit(&c, &k, map, 100 + map as u64, stats).await;
        assert!(r.accepted);
        assert_eq!(r.sealed, map == 2);
    }
    // The losing attempt of map 1 commits too late.
    assert!(!commit(&c, &k, 1, 999, vec![]).await.accepted);

    // A push at a stale epoch is refused, retryably.
    let mut stale = a.locations[0].clone();
    stale.epoch = Epoch(0);
    let err = c.push(&k, &stale, 0, 100, 7, b"x").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::StaleEpoch);
    assert!(err.retryable());
    // A push to the worker that does not own the partition is refused.
    let other = a.locations.iter().find(|l| l.primary.id != a.locations[0].primary.id).unwrap();
    let mut wrong = a.locations[0].clone();
    wrong.primary = other.primary.clone();
    let err = c.push(&k, &wrong, 0, 100, 7, b"x").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::PartitionNotOwned);

    // Live reads return exactly the committed attempts' batches, in map order.
    let plan = c.plan(&k, 0, 4).await.unwrap();
    let mut live = std::collections::BTreeMap::new();
    for pp in &plan.partitions {
        assert_eq!(pp.expected.len(), 3);
        let src = &pp.sources[0];
        let bytes = c.read_live(&src.primary.addr, &k, pp.partition.0, &pp.expected).await.unwrap();
        let recs = decode(&bytes);
        assert!(recs.iter().all(|r| r.1 == 100 + r.0 as u64), "only committed attempts");
        let got: Vec<Vec<u8>> = recs.into_iter().map(|r| r.3).collect();
        assert_eq!(got, want[&pp.partition.0]);
        live.insert(pp.partition.0, bytes);
    }

    // The shuffle is sealed: owners spill, the master records segments, local data goes.
    let plan = eventually(Duration::from_secs(15), "all partitions spilled", || async {
        let p = c.plan(&k, 0, 4).await.ok()?;
        p.partitions.iter().all(|pp| pp.sources.is_empty() && !pp.segments.is_empty()).then_some(p)
    })
    .await
    .unwrap();
    eventually(Duration::from_secs(5), "local data deleted", || async {
        c.workers.values().all(|w| w.bytes_held() == 0).then_some(())
    })
    .await
    .unwrap();
    let exists = |key: &str| {
        let store = store.clone();
        let path = object_store::path::Path::from(key);
        async move { store.head(&path).await.is_ok() }
    };
    assert!(exists(&garbage).await, "a young unrecorded segment outlives the spills");
    assert!(exists(&foreign).await, "another worker's object untouched");
    for pp in &plan.partitions {
        let mut seg_bytes = Vec::new();
        for seg in &pp.segments {
            for b in read_segment(&*store, seg, 0, u32::MAX, |_, _| true).await.unwrap() {
                seg_bytes.extend_from_slice(&b);
            }
        }
        assert_eq!(seg_bytes, live[&pp.partition.0], "segment bytes equal the live read");
    }

    // Restart a worker on its data dir with unspilled data: nothing acked is lost.
    let k2 = key("app-a", 2);
    let a2 = c.register("app-a", 2, 2, 2).await.unwrap();
    let loc = a2.locations[0].clone();
    let before = rows(0, 0, 400, 9);
    c.push(&k2, &loc, 0, 5, 0, &before).await.unwrap();
    let owner = loc.primary.id.to_string();
    c.stop_worker(&owner).await;
    let cfg = c.worker_config(&owner).unwrap();
    let w = shuffle_worker::node::WorkerNode::start(shuffle_worker::node::WorkerConfig { listen: cfg.listen, ..cfg })
        .await
        .unwrap();
    assert!(w.bytes_held() > 0);
    c.workers.insert(owner.clone(), w);
    // The worker re-registered under its id at a new address; the master hands it out.
    let a2 = c.mc.call_typed::<ShuffleAssignment>(GetAssignment { shuffle: k2.clone() }).await.unwrap();
    let loc = a2.locations[0].clone();
    assert_eq!(loc.primary.id.as_str(), owner);
    let got = c
        .read_live(
            &loc.primary.addr,
            &k2,
            0,
            &[MapOutput { map: MapId(0), attempt: AttemptId(5), bytes: 0, crc_sum: 0, batches: 1 }],
        )
        .await
        .unwrap();
    assert_eq!(decode(&got)[0].3, before);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decommission_drains_to_the_object_store() {
    let mut c = Cluster::start(2).await.unwrap();
    let k = key("app-b", 1);
    let a = c.register("app-b", 1, 2, 4).await.unwrap();
    let target = a.locations[0].primary.id.clone();
    for loc in a.locations.iter().filter(|l| l.primary.id == target) {
        let raw = rows(0, loc.partition.0, 1000, 4);
        c.push(&k, loc, 0, 1, 0, &raw).await.unwrap();
        commit(&c, &k, 0, 1, vec![]).await;
    }
    let held = c.workers[target.as_str()].bytes_held();
    assert!(held > 0);
    let t0 = std::time::Instant::now();
    let _: Ack = c.mc.call_typed(DecommissionWorker { worker: target.clone() }).await.unwrap();
    // New placements avoid it at once.
    let b = c.register("app-b", 2, 1, 4).await.unwrap();
    assert!(b.locations.iter().all(|l| l.primary.id != target));
    // It drains, the master calls it Decommissioned, and the node reports done.
    let mut w = c.workers.remove(target.as_str()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), w.decommissioned()).await.expect("drain finished");
    println!("drained {held} bytes in {:?}", t0.elapsed());
    assert_eq!(w.bytes_held(), 0);
    assert!(w.metrics().segments.get() > 0);
    let st = c.status().await.unwrap();
    assert_eq!(st.workers.iter().find(|x| x.id == target).unwrap().state, WorkerState::Decommissioned);
    // Pushes to a draining worker would be refused; reads go to the segments.
    let plan = c.plan(&k, 0, 4).await.unwrap();
    for pp in plan.partitions.iter().filter(|pp| a.locations[pp.partition.0 as usize].primary.id == target) {
        assert!(pp.sources.iter().all(|s| s.primary.id != target));
        assert!(!pp.segments.is_empty());
    }
    w.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_pushes_back_without_losing_data() {
    let mut c = Cluster::start(0).await.unwrap();
    let mut cfg = c.worker_config("small").unwrap();
    cfg.max_buffered_bytes = 20_000;
    cfg.http_listen = Some("127.0.0.1:0".parse().unwrap());
    let w = shuffle_worker::node::WorkerNode::start(cfg).await.unwrap();
    let http = w.http_addr().unwrap();
    c.workers.insert("small".into(), w);
    let k = key("app-c", 1);
    let a = c.register("app-c", 1, 1, 1).await.unwrap();
    let loc = &a.locations[0];
    let mut accepted = 0;
    let mut busy = 0;
    for seq in 0..20u32 {
        // Incompressible enough to fill the buffer quickly.
        let raw: Vec<u8> = (0..4000u32).map(|i| (i.wrapping_mul(2654435761).wrapping_add(seq) >> 7) as u8).collect();
        match c.push(&k, loc, 0, 1, seq, &raw).await {
            Ok(_) => accepted += 1,
            Err(e) => {
                assert_eq!(e.code(), ErrorCode::Busy, "{e}");
                assert!(e.retryable());
                busy += 1;
            }
        }
    }
    assert!(accepted > 0 && busy > 0, "accepted {accepted}, busy {busy}");
    let held = c.workers["small"].bytes_held();
    assert!(held <= 20_000, "buffer bounded: {held}");

    // The metrics endpoint tells the same story.
    let (code, text) = http_get(http, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
    };
    assert_eq!(value("shoal_worker_backpressure_events_total"), busy as f64);
    assert_eq!(value("shoal_worker_buffered_bytes"), held as f64);
    assert!(value("shoal_worker_pushed_bytes_total") > 0.0);
    assert_eq!(value("shoal_worker_errors_total{kind=\"Busy\"}"), busy as f64);
    assert_eq!(value("shoal_worker_push_latency_seconds_count"), accepted as f64);
    assert_eq!(http_get(http, "/readyz").await.unwrap().0, 200);
    assert_eq!(http_get(http, "/nope").await.unwrap().0, 404);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_deletes_garbage_and_keeps_live_data() {
    let mut c = Cluster::start(0).await.unwrap();
    let mut cfg = c.worker_config("w0").unwrap();
    cfg.sweep_interval = None;
    cfg.sweep_grace = Duration::ZERO;
    c.workers.insert("w0".into(), shuffle_worker::node::WorkerNode::start(cfg).await.unwrap());
    let k = key("app-gc", 1);
    let a = c.register("app-gc", 1, 1, 1).await.unwrap();
    // Another live worker, joined after the shuffle was placed on w0.
    c.start_worker("w1").await.unwrap();
    let loc = a.locations[0].clone();
    let raw = rows(0, 0, 100, 1);
    c.push(&k, &loc, 0, 1, 0, &raw).await.unwrap();
    commit(&c, &k, 0, 1, vec![partition_stat(&loc, &[&raw])]).await;
    let plan = eventually(Duration::from_secs(10), "spilled", || async {
        let p = c.plan(&k, 0, 1).await.ok()?;
        (p.partitions[0].sources.is_empty() && !p.partitions[0].segments.is_empty()).then_some(p)
    })
    .await
    .unwrap();
    let recorded = plan.partitions[0].segments[0].object_key.clone();
    let store = open_store(&c.object_store).unwrap();
    let w0 = WorkerId::new("w0").unwrap();
    let ghost = WorkerId::new("ghost").unwrap();
    let removed = key("app-gc", 99);
    let put = |key: String| {
        let store = store.clone();
        async move {
            store.put(&object_store::path::Path::from(key.as_str()), b"junk".to_vec().into()).await.unwrap();
            key
        }
    };
    let of_removed = put(shuffle_proto::segment::segment_key(&removed, 0, &w0, 1)).await;
    let of_ghost = put(shuffle_proto::segment::segment_key(&k, 0, &ghost, 2)).await;
    let of_sweeper = put(shuffle_proto::segment::segment_key(&k, 0, &w0, 3)).await;
    let of_live_writer = put(shuffle_proto::segment::segment_key(&k, 0, &WorkerId::new("w1").unwrap(), 4)).await;
    let not_ours = put("elsewhere/notes.txt".into()).await;
    let deleted = c.workers["w0"].sweep_now().await.unwrap();
    assert_eq!(deleted, 3);
    let exists = |key: String| {
        let store = store.clone();
        async move { store.head(&object_store::path::Path::from(key.as_str())).await.is_ok() }
    };
    assert!(!exists(of_removed).await, "object of a removed shuffle");
    assert!(!exists(of_ghost).await, "unrecorded object of a worker that is gone");
    assert!(!exists(of_sweeper).await, "the sweeper's own unrecorded object");
    assert!(exists(of_live_writer).await, "another live writer may still report its object");
    assert!(exists(not_ours).await, "keys outside the layout are left alone");
    assert!(exists(recorded).await, "recorded segments stay");
    c.shutdown().await;
}

/// A partition whose every batch went to the store under memory pressure before its shuffle
/// sealed still gets its last segment at seal: the worker stops being a read source, so the
/// data is read from the store once the worker is gone (before, the epoch stayed live on a
/// worker holding nothing of it, and a reader met DataLost once it left).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_spilled_whole_under_pressure_is_released_at_seal() {
    const MAPS: u32 = 2;
    const PARTS: u32 = 3;
    let mut c = Cluster::start(0).await.unwrap();
    let mut cfg = c.worker_config("w0").unwrap();
    // Every byte held is over the watermark: the pressure loop spills all it can.
    cfg.spill_high_bytes = 1;
    cfg.spill_low_bytes = 0;
    c.workers.insert("w0".into(), shuffle_worker::node::WorkerNode::start(cfg).await.unwrap());
    let sc = c.shuffle_client().unwrap();
    let app = AppId::new("app-pressure").unwrap();
    sc.register_app(&app, Duration::from_secs(600)).await.unwrap();
    let k = ShuffleKey::new(app, 0, 0);
    // One map more than is written: the shuffle seals only when the test says.
    let a = sc.register_shuffle(&k, MAPS + 1, PARTS, 1).await.unwrap();
    for w in spawn_round_writers(&sc, &a, MAPS, PARTS, 3, None) {
        assert!(w.await.unwrap().unwrap().accepted);
    }
    eventually(Duration::from_secs(30), "everything spilled under pressure", || async {
        (c.workers["w0"].bytes_held() == 0).then_some(())
    })
    .await
    .unwrap();
    let last = sc.map_writer(&a, MapId(MAPS), AttemptId(0));
    assert!(last.commit().await.unwrap().accepted, "the last map seals the shuffle");
    for p in 0..PARTS {
        c.wait_spilled(&k, p, Duration::from_secs(30)).await.unwrap();
    }
    c.stop_worker("w0").await;
    for p in 0..PARTS {
        assert_round_partition(&sc, &k, p, MAPS, 3, "from the store").await;
    }
    c.shutdown().await;
}
