//! End-to-end suites through the Rust client: writers, readers, speculation, worker loss before
//! and after spill, and a leader master killed mid-shuffle.

use std::collections::BTreeMap;
use std::time::Duration;

use shoal_tests::*;
use shuffle_client::{ErrorKind, ShuffleClient};
use shuffle_proto::*;

fn key(app: &str, s: u32) -> ShuffleKey {
    ShuffleKey::new(AppId::new(app).unwrap(), s, 0)
}

/// Writes `maps` map outputs: map m writes rows(m, p, n) to every partition p.
async fn write_maps(
    c: &ShuffleClient,
    k: &ShuffleKey,
    maps: std::ops::Range<u32>,
    partitions: u32,
    n: u32,
    salt: u64,
) -> BTreeMap<u32, u64> {
    let a = c.assignment(k).await.unwrap();
    let mut sizes = BTreeMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    for m in maps {
        let c = c.clone();
        let a = a.clone();
        tasks.spawn(async move {
            let mut w = c.map_writer(&a, MapId(m), AttemptId(1000 + m as u64));
            for p in 0..partitions {
                // Several writes per partition so batches fill and split.
                for part in 0..4 {
                    w.write(p, &rows(m, p, n / 4, salt + part)).await.unwrap();
                }
            }
            let out = w.commit().await.unwrap();
            assert!(out.accepted);
            (m, out.partition_bytes.iter().sum::<u64>())
        });
    }
    while let Some(r) = tasks.join_next().await {
        let (m, b) = r.unwrap();
        sizes.insert(m, b);
    }
    sizes
}

async fn read_all(
    c: &ShuffleClient,
    k: &ShuffleKey,
    p: u32,
    start: u32,
    end: u32,
) -> Result<Vec<u8>, shuffle_client::ClientError> {
    let mut s = c.read_partition(k, p, start, end);
    let mut out = Vec::new();
    while let Some(b) = s.next().await? {
        out.extend_from_slice(&b);
    }
    Ok(out)
}

fn expected(maps: std::ops::Range<u32>, p: u32, n: u32, salt: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for m in maps {
        for part in 0..4 {
            out.extend(rows(m, p, n / 4, salt + part));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_maps_many_partitions_round_trip_exactly() {
    let c = Cluster::start(3).await.unwrap();
    let sc = c.shuffle_client().unwrap();
    let app = AppId::new("app-rt").unwrap();
    sc.register_app(&app, Duration::from_secs(600)).await.unwrap();
    let k = key("app-rt", 0);
    sc.register_shuffle(&k, 12, 24, 1).await.unwrap();
    let sizes = write_maps(&sc, &k, 0..12, 24, 200, 5).await;
    assert_eq!(sizes.len(), 12);
    for p in 0..24 {
        let got = read_all(&sc, &k, p, 0, 12).await.unwrap();
        // Maps arrive in map order from one source; from segments plus live, order may differ.
        assert_same_units(&got, &expected(0..12, p, 200, 5), 100, &format!("partition {p}"));
    }
    // A map range reads only those maps (AQE skew splits).
    let got = read_all(&sc, &k, 3, 4, 6).await.unwrap();
    assert_eq!(got.len(), expected(4..6, 3, 200, 5).len());
    assert!(got.chunks(100).all(|r| r.starts_with(b"m00004") || r.starts_with(b"m00005")));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_committed_speculative_attempt_is_read() {
    let c = Cluster::start(2).await.unwrap();
    let sc = c.shuffle_client().unwrap();
    let app = AppId::new("app-spec").unwrap();
    sc.register_app(&app, Duration::from_secs(600)).await.unwrap();
    let k = key("app-spec", 0);
    let a = sc.register_shuffle(&k, 1, 4, 1).await.unwrap();
    // Two attempts of map 0 write different rows; the slower one commits second and loses.
    let mut fast = sc.map_writer(&a, MapId(0), AttemptId(1));
    let mut slow = sc.map_writer(&a, MapId(0), AttemptId(2));
    for p in 0..4 {
        fast.write(p, &rows(0, p, 100, 111)).await.unwrap();
        slow.write(p, &rows(0, p, 300, 222)).await.unwrap();
    }
    let first = fast.commit().await.unwrap();
    let second = slow.commit().await.unwrap();
    assert!(first.accepted);
    assert!(!second.accepted);
    assert_eq!(second.winner, AttemptId(1));
    for p in 0..4 {
        assert_eq!(read_all(&sc, &k, p, 0, 1).await.unwrap(), rows(0, p, 100, 111));
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_after_spill_reads_from_the_object_store() {
    let mut c = Cluster::start(2).await.unwrap();
    let sc = c.shuffle_client().unwrap();
    let app = AppId::new("app-spill").unwrap();
    sc.register_app(&app, Duration::from_secs(600)).await.unwrap();
    let k = key("app-spill", 0);
    sc.register_shuffle(&k, 4, 6, 1).await.unwrap();
    write_maps(&sc, &k, 0..4, 6, 400, 9).await;
    eventually(Duration::from_secs(15), "spilled", || async {
        let p = c.plan(&k, 0, 6).await.ok()?;
        p.partitions.iter().all(|pp| pp.sources.is_empty()).then_some(())
    })
    .await
    .unwrap();
    // Every worker goes away; reads still work, from the object store alone.
    for id in ["w0", "w1"] {
        c.stop_worker(id).await;
    }
    for p in 0..6 {
        let got = read_all(&sc, &k, p, 0, 4).await.unwrap();
        assert_eq!(got, expected(0..4, p, 400, 9), "partition {p}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_lost_before_spill_raises_data_lost_never_wrong_rows() {
    let mut c = Cluster::start(2).await.unwrap();
    let sc = c.shuffle_client().unwrap();
    let app = AppId::new("app-lost").unwrap();
    sc.register_app(&app, Duration::from_secs(600)).await.unwrap();
    let k = key("app-lost", 0);
    let a = sc.register_shuffle(&k, 3, 4, 1).await.unwrap();
    // Two of three maps commit; the shuffle is not sealed, so nothing is spilled.
    write_maps(&sc, &k, 0..2, 4, 200, 1).await;
    let victim = a.locations[0].primary.id.to_string();
    c.stop_worker(&victim).await;
    // The master declares it lost after its heartbeat timeout (3 s here).
    eventually(Duration::from_secs(10), "worker lost", || async {
        let st = c.status().await.ok()?;
        st.workers
            .iter()
            .any(|w| w.id.as_str() == victim && w.state == shuffle_proto::messages::WorkerState::Lost)
            .then_some(())
    })
    .await
    .unwrap();
    // The last map writes to the moved partitions and commits: the shuffle seals.
    write_maps(&sc, &k, 2..3, 4, 200, 1).await;
    for loc in &a.locations {
        let p = loc.partition.0;
        let res = read_all(&sc, &k, p, 0, 3).await;
        if loc.primary.id.as_str() == victim {
            let err = res.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::DataLost, "{err}");
            // Map 2 alone was written after the move: it is readable.
            assert_eq!(read_all(&sc, &k, p, 2, 3).await.unwrap(), expected(2..3, p, 200, 1));
        } else {
            assert_eq!(res.unwrap(), expected(0..3, p, 200, 1));
        }
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_master_killed_mid_shuffle_the_shuffle_completes() {
    let mut c = Cluster::start_with(3, 2).await.unwrap();
    let sc = c.shuffle_client().unwrap();
    let app = AppId::new("app-ha").unwrap();
    sc.register_app(&app, Duration::from_secs(600)).await.unwrap();
    let k = key("app-ha", 0);
    sc.register_shuffle(&k, 6, 8, 1).await.unwrap();
    write_maps(&sc, &k, 0..3, 8, 200, 2).await;
    let old = c.kill_leader().await.unwrap();
    write_maps(&sc, &k, 3..6, 8, 200, 2).await;
    let st = c.status().await.unwrap();
    assert_ne!(st.leader, Some(old));
    for p in 0..8 {
        let got = read_all(&sc, &k, p, 0, 6).await.unwrap();
        assert_same_units(&got, &expected(0..6, p, 200, 2), 100, &format!("partition {p}"));
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_to_a_dead_worker_move_on_and_an_attempt_whose_data_was_lost_fails_cleanly() {
    let mut c = Cluster::start(3).await.unwrap();
    let sc = c.shuffle_client().unwrap();
    let app = AppId::new("app-dead").unwrap();
    sc.register_app(&app, Duration::from_secs(600)).await.unwrap();
    let k = key("app-dead", 0);
    let a = sc.register_shuffle(&k, 2, 3, 1).await.unwrap();
    let victim_loc = a.locations[0].clone();
    let victim = victim_loc.primary.id.to_string();

    // Attempt 1 of map 0 pushes a full batch to every partition, then its worker dies.
    let mut w = sc.map_writer(&a, MapId(0), AttemptId(1));
    for p in 0..3 {
        w.write(p, &rows(0, p, 400, 7)).await.unwrap();
    }
    // (A batch still in flight when its worker dies is simply re-sent elsewhere; here every
    // batch was acked first, so the dead worker really holds some of this attempt's data.)
    w.wait_acked().await.unwrap();
    c.stop_worker(&victim).await;
    eventually(Duration::from_secs(10), "worker lost", || async {
        let st = c.status().await.ok()?;
        st.workers
            .iter()
            .any(|x| x.id.as_str() == victim && x.state == shuffle_proto::messages::WorkerState::Lost)
            .then_some(())
    })
    .await
    .unwrap();
    // Further pushes for partition 0 find the worker gone and follow the partition to its new
    // owner, but the batch already acked by the dead worker is gone: the commit must fail.
    w.write(0, &rows(0, 0, 400, 8)).await.unwrap();
    let err = w.commit().await.unwrap_err();
    assert!(err.to_string().contains("lost"), "{err}");

    // The retry (a new attempt, as Spark would run it) goes to the new locations and commits.
    let a2 = sc.assignment(&k).await.unwrap();
    assert_ne!(a2.locations[0].primary.id.as_str(), victim);
    assert!(a2.locations[0].epoch > victim_loc.epoch);
    let mut w2 = sc.map_writer(&a2, MapId(0), AttemptId(2));
    for p in 0..3 {
        w2.write(p, &rows(0, p, 400, 9)).await.unwrap();
    }
    assert!(w2.commit().await.unwrap().accepted);
    let mut w3 = sc.map_writer(&a2, MapId(1), AttemptId(3));
    for p in 0..3 {
        w3.write(p, &rows(1, p, 400, 9)).await.unwrap();
    }
    assert!(w3.commit().await.unwrap().sealed);
    for p in 0..3 {
        let mut want = rows(0, p, 400, 9);
        want.extend(rows(1, p, 400, 9));
        let got = read_all(&sc, &k, p, 0, 2).await.unwrap();
        assert_same_units(&got, &want, 100, &format!("partition {p}"));
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_buffer_spills_early_and_a_writer_never_sees_an_error() {
    let mut c = Cluster::start(0).await.unwrap();
    let mut cfg = c.worker_config("small").unwrap();
    cfg.max_buffered_bytes = 2 << 20;
    cfg.spill_high_bytes = 1 << 20;
    cfg.spill_low_bytes = 512 << 10;
    c.workers.insert("small".into(), shuffle_worker::node::WorkerNode::start(cfg).await.unwrap());
    let sc = c.shuffle_client().unwrap();
    let app = AppId::new("app-pressure").unwrap();
    sc.register_app(&app, Duration::from_secs(600)).await.unwrap();
    let k = key("app-pressure", 0);
    let a = sc.register_shuffle(&k, 1, 2, 1).await.unwrap();
    // 8 MiB through a 2 MiB buffer: pushes meet Busy, retry, and get through as early spills
    // make room. The writer itself never fails.
    let mut w = sc.map_writer(&a, MapId(0), AttemptId(1));
    let mut want = [Vec::new(), Vec::new()];
    for i in 0..64u64 {
        let p = (i % 2) as u32;
        let data = noise(128 << 10, i + 1);
        w.write(p, &data).await.unwrap();
        want[p as usize].extend(data);
    }
    let out = w.commit().await.unwrap();
    assert!(out.accepted && out.sealed);
    let worker = &c.workers["small"];
    assert!(worker.metrics().segments.get() >= 2, "early spills happened");
    for p in 0..2u32 {
        let got = read_all(&sc, &k, p, 0, 1).await.unwrap();
        // Each write became one batch; batches spilled at different times come back in
        // segment order, so compare them as a set (a batch is a self-contained unit).
        assert_same_units(&got, &want[p as usize], 128 << 10, &format!("partition {p}"));
    }
    c.shutdown().await;
}

/// Every file under `dir` that holds `needle`.
fn files_holding(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) {
                found.push(p);
            }
        }
    }
    found
}

/// Rows that name `marker` in every record.
fn marked_rows(marker: &str, p: u32, n: u32) -> Vec<u8> {
    (0..n).flat_map(|i| format!("{marker}-p{p:03}-r{i:06}-{:032x}\n", u128::from(i) * 7919).into_bytes()).collect()
}

/// With the application's IO key, batches are sealed in the client: neither the worker's value
/// log nor the spilled segment holds a row in plain, and the rows read back exactly. The same
/// shuffle without a key leaves its rows visible on the same disks (so the search below can
/// see them), and a reader without the key gets a configuration error, not bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_batches_leave_no_plaintext_on_workers_or_in_the_store() {
    let c = Cluster::start(1).await.unwrap();
    let client_as = |key: Option<[u8; 16]>, cred: shuffle_proto::auth::Credential| {
        let mut cfg = shuffle_client::ClientConfig::new(c.master_addrs.clone(), c.ca_only());
        cfg.credential = Some(cred);
        cfg.batch_bytes = 32 << 10;
        cfg.cipher = key.map(|k| std::sync::Arc::new(shuffle_proto::seal::BatchCipher::from_app_key(&k).unwrap()));
        ShuffleClient::new(cfg).unwrap()
    };
    let client = |key| client_as(key, c.tenant(0).unwrap());
    let objects = c.dir.path().join("objects");
    for (app, key, marker) in [("app-plain", None, "PLAINROW"), ("app-sealed", Some([42u8; 16]), "SEALEDROW")] {
        let sc = client(key);
        let token = sc.register_app(&AppId::new(app).unwrap(), Duration::from_secs(600)).await.unwrap();
        let token = shuffle_proto::auth::Credential::from_text(&token).unwrap();
        let k = ShuffleKey::new(AppId::new(app).unwrap(), 0, 0);
        let a = sc.register_shuffle(&k, 1, 2, 1).await.unwrap();
        let mut w = sc.map_writer(&a, MapId(0), AttemptId(1));
        for p in 0..2 {
            w.write(p, &marked_rows(marker, p, 3000)).await.unwrap();
        }
        w.wait_acked().await.unwrap();
        // Before the commit every batch is in the worker's buffer only.
        let on_worker = files_holding(&c.worker_dir("w0"), marker.as_bytes());
        assert!(w.commit().await.unwrap().accepted);
        eventually(Duration::from_secs(15), "spilled", || async {
            let p = c.plan(&k, 0, 2).await.ok()?;
            p.partitions.iter().all(|pp| pp.sources.is_empty()).then_some(())
        })
        .await
        .unwrap();
        let in_store = files_holding(&objects, marker.as_bytes());
        if key.is_none() {
            assert!(!on_worker.is_empty() && !in_store.is_empty(), "the search sees plain rows");
        } else {
            assert!(on_worker.is_empty(), "plain rows on the worker: {on_worker:?}");
            assert!(in_store.is_empty(), "plain rows in the object store: {in_store:?}");
            // A reader without the application's key: told so, given nothing.
            let err = read_all(&client_as(None, token.clone()), &k, 0, 0, 1).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{err}");
            let err = read_all(&client_as(Some([7u8; 16]), token.clone()), &k, 0, 0, 1).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Corrupt, "another key: {err}");
        }
        for p in 0..2 {
            assert_eq!(read_all(&sc, &k, p, 0, 1).await.unwrap(), marked_rows(marker, p, 3000));
        }
    }
    c.shutdown().await;
}
