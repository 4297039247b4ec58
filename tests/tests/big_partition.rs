//! One huge partition, spilled, then read back from the object store with the worker gone:
//! the reader's memory stays bounded whatever the partition's size. And one skewed partition
//! that splits into pieces across workers at the split size, read back from the workers and
//! then from the object store. The size defaults to 256 MiB; `SHOAL_BIG_PARTITION_BYTES=4GiB`
//! runs the full-size measurement.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shoal_tests::*;
use shuffle_proto::*;

fn total_bytes() -> u64 {
    std::env::var("SHOAL_BIG_PARTITION_BYTES")
        .ok()
        .and_then(|v| v.parse::<bytesize::ByteSize>().ok())
        .map_or(256 << 20, |b| b.as_u64())
}

/// Peak RSS of some processes ("self" or pids) while it runs, sampled every 5 ms: each one's
/// growth above its RSS at the start.
struct PeakRss {
    pids: Vec<String>,
    base: Vec<u64>,
    peak: Arc<Vec<AtomicU64>>,
    task: tokio::task::JoinHandle<()>,
}

impl PeakRss {
    fn start() -> PeakRss {
        Self::of(vec!["self".to_string()])
    }

    fn of(pids: Vec<String>) -> PeakRss {
        let base: Vec<u64> = pids.iter().map(|p| rss_of(p)).collect();
        let peak = Arc::new(base.iter().map(|b| AtomicU64::new(*b)).collect::<Vec<_>>());
        let (p, ids) = (peak.clone(), pids.clone());
        let task = tokio::spawn(async move {
            loop {
                for (i, id) in ids.iter().enumerate() {
                    p[i].fetch_max(rss_of(id), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        PeakRss { pids, base, peak, task }
    }

    /// Each process's peak growth, in the order given.
    fn stop_all(self) -> Vec<u64> {
        self.task.abort();
        (0..self.pids.len())
            .map(|i| self.peak[i].load(Ordering::Relaxed).max(rss_of(&self.pids[i])).saturating_sub(self.base[i]))
            .collect()
    }

    fn stop(self) -> u64 {
        self.stop_all()[0]
    }
}

/// Reads the partition through the client (which verifies every map's bytes and checksums
/// against its commit): bytes read, how much this process (the reader) grew, and seconds.
async fn read_all(sc: &shuffle_client::ShuffleClient, k: &ShuffleKey, maps: u32) -> (u64, u64, f64) {
    let peak = PeakRss::start();
    let started = std::time::Instant::now();
    let mut s = sc.read_partition(k, 0, 0, maps);
    let mut read = 0u64;
    while let Some(b) = s.next().await.unwrap() {
        read += b.len() as u64;
    }
    let took = started.elapsed().as_secs_f64();
    (read, peak.stop(), took)
}

const MIB: u64 = 1 << 20;

/// A skewed partition: two maps write `total` bytes to partition 0 of two worker processes
/// whose split size is an eighth of it. The partition becomes pieces on both workers; reads
/// from the workers and, once both are gone, from the object store return every byte. This
/// process plays the executor: it and each worker stay within 256 MiB above where they
/// started (a worker keeps pushed bytes in its value log on disk, not in memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skewed_partition_splits_across_workers_and_reads_back_in_bounded_memory() {
    let total = total_bytes();
    let split = (total / 8).max(16 * MIB);
    let mut c = Cluster::start_processes(1, 0, None).await.unwrap();
    let split_flag = format!("{}MiB", split / MIB);
    for id in ["w0", "w1"] {
        c.start_worker_process(id, &["--partition-split-size", &split_flag]).await.unwrap();
    }
    let pids: Vec<String> = c.procs.as_ref().unwrap().workers.values().map(|p| p.child.id().to_string()).collect();
    let sc = c.shuffle_client().unwrap();
    let app = AppId::new("app-skew").unwrap();
    sc.register_app(&app, Duration::from_secs(3600)).await.unwrap();
    let k = ShuffleKey::new(app, 0, 0);
    // Three maps: the third commits only after the live read, so nothing is sealed (and
    // spilled) before it.
    let a = sc.register_shuffle(&k, 3, 2, 1).await.unwrap();
    let mut watched = vec!["self".to_string()];
    watched.extend(pids.iter().cloned());
    let writing = PeakRss::of(watched.clone());
    let piece = 1usize << 20;
    let mut maps = tokio::task::JoinSet::new();
    for m in 0..2u32 {
        let mut w = sc.map_writer(&a, MapId(m), AttemptId(0));
        maps.spawn(async move {
            let mut written = 0u64;
            let mut seed = 1 + u64::from(m) * 1_000_000;
            while written < total / 2 {
                w.write(0, &noise(piece, seed)).await.unwrap();
                written += piece as u64;
                seed += 1;
            }
            assert!(w.commit().await.unwrap().accepted);
            written
        });
    }
    let mut written = 0;
    while let Some(r) = maps.join_next().await {
        written += r.unwrap();
    }
    let write_grew = writing.stop_all();

    let plan = c.plan(&k, 0, 1).await.unwrap();
    let holders: Vec<String> = plan.partitions[0].sources.iter().map(|s| s.primary.id.to_string()).collect();
    assert_eq!(holders.len(), 2, "the pieces spread over both workers: {holders:?}");
    let serving = PeakRss::of(watched);
    let (live, _, live_s) = read_all(&sc, &k, 2).await;
    let serve_grew = serving.stop_all();
    assert_eq!(live, written, "every byte from the workers");

    // The last map seals the shuffle; its pieces go to the object store; the workers go.
    let mut w = sc.map_writer(&a, MapId(2), AttemptId(0));
    w.write(1, b"the last map").await.unwrap();
    assert!(w.commit().await.unwrap().accepted);
    c.wait_spilled(&k, 0, Duration::from_secs(600)).await.unwrap();
    let segments = c.plan(&k, 0, 1).await.unwrap().partitions[0].segments.len();
    c.stop_worker("w0").await;
    c.stop_worker("w1").await;
    let (stored, stored_grew, stored_s) = read_all(&sc, &k, 2).await;
    let mib = |v: &[u64]| v.iter().map(|b| (b / MIB).to_string()).collect::<Vec<_>>().join(", ");
    println!(
        "a {} MiB partition split at {} MiB over 2 workers into {segments} segments; peak growth in MiB \
         (executor, w0, w1): writing {}; reading from the workers {} ({live_s:.1} s); reading from the object \
         store: executor {} ({stored_s:.1} s)",
        written / MIB,
        split / MIB,
        mib(&write_grew),
        mib(&serve_grew),
        stored_grew / MIB,
    );
    assert_eq!(stored, written, "every byte from the object store");
    assert!(segments >= 2, "one segment per piece holder at least: {segments}");
    for (what, grew) in
        [("writing", &write_grew), ("serving the live read", &serve_grew), ("reading stored", &vec![stored_grew])]
    {
        for (who, g) in ["the executor", "worker w0", "worker w1"].iter().zip(grew.iter()) {
            assert!(*g < 256 * MIB, "{what}: {who} grew by {} MiB", g / MIB);
        }
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_spilled_partition_reads_back_in_bounded_memory() {
    let total = total_bytes();
    let mut c = Cluster::start(1).await.unwrap();
    let sc = c.shuffle_client().unwrap();
    let app = AppId::new("app-big").unwrap();
    sc.register_app(&app, Duration::from_secs(3600)).await.unwrap();
    let k = ShuffleKey::new(app, 0, 0);
    let a = sc.register_shuffle(&k, 1, 1, 1).await.unwrap();
    // Bytes lz4 cannot shrink, 1 MiB at a time, all to partition 0.
    let piece = 1usize << 20;
    let mut w = sc.map_writer(&a, MapId(0), AttemptId(0));
    let mut written = 0u64;
    let mut seed = 1;
    while written < total {
        w.write(0, &noise(piece, seed)).await.unwrap();
        written += piece as u64;
        seed += 1;
    }
    assert!(w.commit().await.unwrap().accepted);
    c.wait_spilled(&k, 0, Duration::from_secs(600)).await.unwrap();
    c.stop_worker("w0").await;

    let before = rss_bytes();
    let peak = Arc::new(AtomicU64::new(before));
    let sampling = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let started = std::time::Instant::now();
    let mut s = sc.read_partition(&k, 0, 0, 1);
    let mut read = 0u64;
    let mut n = 0u64;
    while let Some(b) = s.next().await.unwrap() {
        read += b.len() as u64;
        n += 1;
    }
    let took = started.elapsed();
    sampling.abort();
    let grew = peak.load(Ordering::Relaxed).saturating_sub(before);
    println!(
        "read a {} MiB spilled partition ({n} batches) from the object store in {:.1} s; reader RSS {} MiB before, peak +{} MiB",
        read >> 20,
        took.as_secs_f64(),
        before >> 20,
        grew >> 20
    );
    assert_eq!(read, written, "every byte, verified against the commit");
    assert!(grew < 256 << 20, "the reader grew by {} MiB", grew >> 20);
    c.shutdown().await;
}
