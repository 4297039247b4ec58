//! A real S3-protocol server (s3s-fs) behind a faulty HTTP proxy on loopback: the store fails a
//! fifth of its requests with `503 SlowDown` and answers slowly, then goes down altogether and
//! comes back. Spills complete through the faults, data stays in RocksDB while the store is down,
//! pushes meet backpressure (`Busy`, retried) rather than errors, and every byte reads back
//! exactly. One test in this binary: the AWS_* environment is process-wide.

use std::time::{Duration, Instant};

use shoal_tests::*;
use shuffle_proto::*;

fn metric_sum(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn read_all(sc: &shuffle_client::ShuffleClient, k: &ShuffleKey, p: u32, maps: u32) -> Vec<u8> {
    let mut s = sc.read_partition(k, p, 0, maps);
    let mut got = Vec::new();
    while let Some(b) = s.next().await.unwrap() {
        got.extend(b);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spills_through_a_faulty_s3_proxy_lose_nothing_and_pushes_only_wait() {
    let s3 = S3Server::start("shoal-faults").await.unwrap();
    let proxy = FaultyProxy::start(&s3.endpoint).await.unwrap();
    s3.export_env();
    // Every store call of the worker and of the readers goes through the proxy.
    std::env::set_var("AWS_ENDPOINT_URL", &proxy.endpoint);
    let url = format!("s3://{}/faults", s3.bucket);
    let mut c = Cluster::start_with_store(1, 0, Some(url)).await.unwrap();
    let mut cfg = c.worker_config("w0").unwrap();
    cfg.upload_part_bytes = 5 << 20;
    // A small buffer: with the store down it fills within seconds.
    cfg.max_buffered_bytes = 24 << 20;
    cfg.spill_high_bytes = 12 << 20;
    cfg.spill_low_bytes = 6 << 20;
    c.workers.insert("w0".into(), shuffle_worker::node::WorkerNode::start(cfg).await.unwrap());
    let sc = c.shuffle_client().unwrap();
    let app = AppId::new("app-s3-faults").unwrap();
    sc.register_app(&app, Duration::from_secs(600)).await.unwrap();
    const MAPS: u32 = 2;
    const PARTS: u32 = 4;
    // 3 MB a map and partition that lz4 cannot shrink, so seal spills are multipart uploads
    // and the buffer fills by what the test pushes.
    let data = |m: u32, p: u32, salt: u64| -> Vec<u8> { noise(3_000_000, (salt << 32) | u64::from(m * 64 + p)) };

    // 1. A fifth of the requests fail and each waits 30 ms: the seal spill retries through.
    proxy.set_faults(200, Duration::from_millis(30));
    let k = ShuffleKey::new(app.clone(), 0, 0);
    let a = sc.register_shuffle(&k, MAPS, PARTS, 1).await.unwrap();
    for m in 0..MAPS {
        let mut w = sc.map_writer(&a, MapId(m), AttemptId(u64::from(m)));
        for p in 0..PARTS {
            w.write(p, &data(m, p, 1)).await.unwrap();
        }
        assert!(w.commit().await.unwrap().accepted);
    }
    let t0 = Instant::now();
    for p in 0..PARTS {
        c.wait_spilled(&k, p, Duration::from_secs(120)).await.unwrap();
    }
    println!("flaky store: {} MB spilled in {:.1?}", MAPS * PARTS * 3, t0.elapsed());
    for p in 0..PARTS {
        let want: Vec<u8> = (0..MAPS).flat_map(|m| data(m, p, 1)).collect();
        assert_same_units(&read_all(&sc, &k, p, MAPS).await, &want, 100, &format!("flaky store, partition {p}"));
    }
    let (requests, failed) = proxy.counts();
    println!("flaky store: {failed} of {requests} requests failed by the proxy");
    // The S3 client's own HTTP retries absorb these: no try reaches Shoal's retry layer failed.
    assert!(failed > 0, "the proxy failed requests");

    // 2. The store goes down while maps push three times the buffer: pushes wait (Busy,
    //    retried by the client), none fails, and the data stays readable from the worker.
    proxy.set_faults(1000, Duration::ZERO);
    let k2 = ShuffleKey::new(app.clone(), 1, 0);
    let a2 = sc.register_shuffle(&k2, MAPS, PARTS, 1).await.unwrap();
    let salts = 2..2 + u64::from(scaled(3, 12));
    let writers: Vec<_> = (0..MAPS)
        .map(|m| {
            let (sc, a2, salts) = (sc.clone(), a2.clone(), salts.clone());
            tokio::spawn(async move {
                let mut w = sc.map_writer(&a2, MapId(m), AttemptId(u64::from(m)));
                for p in 0..PARTS {
                    for salt in salts.clone() {
                        w.write(p, &data(m, p, salt)).await?;
                    }
                }
                w.commit().await
            })
        })
        .collect();
    let busy = eventually(Duration::from_secs(60), "pushes meeting backpressure", || async {
        let n = metric_sum(&c.workers["w0"].metrics().encode(), "shoal_worker_backpressure_events");
        (n > 0).then_some(n)
    })
    .await
    .unwrap();
    // Held past the point a healthy store would have taken the data: nothing failed.
    tokio::time::sleep(Duration::from_secs(scaled(3, 60).into())).await;
    assert!(writers.iter().all(|w| !w.is_finished()), "writers wait for the store instead of finishing or failing");
    let plan = c.plan(&k2, 0, PARTS).await.unwrap();
    assert!(plan.partitions.iter().all(|p| p.segments.is_empty()), "nothing reached a store that is down");
    let metrics = c.workers["w0"].metrics().encode();
    let errors = metric_sum(&metrics, "shoal_worker_store_errors_total");
    println!("store down: {busy} pushes refused with Busy so far, none failed; {errors} store tries failed");
    assert!(errors > 0, "failed store tries are counted:\n{metrics}");

    // 3. The store comes back (still flaky): the pushes resume, everything spills and reads
    //    back exactly from the object store.
    proxy.set_faults(200, Duration::from_millis(30));
    let t0 = Instant::now();
    for w in writers {
        assert!(w.await.unwrap().unwrap().accepted, "every map commits");
    }
    let resumed = t0.elapsed();
    for p in 0..PARTS {
        c.wait_spilled(&k2, p, Duration::from_secs(120)).await.unwrap();
    }
    println!("store back: maps finished {resumed:.1?} and everything spilled {:.1?} after it recovered", t0.elapsed());
    c.stop_worker("w0").await;
    for p in 0..PARTS {
        let want: Vec<u8> = (0..MAPS).flat_map(|m| salts.clone().flat_map(move |s| data(m, p, s))).collect();
        assert_same_units(&read_all(&sc, &k2, p, MAPS).await, &want, 100, &format!("after the outage, partition {p}"));
    }
    let (requests, failed) = proxy.counts();
    println!("in all: {failed} of {requests} store requests failed by the proxy; rows lost 0");
    c.shutdown().await;
}
