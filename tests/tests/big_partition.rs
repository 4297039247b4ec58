//! One huge partition, spilled, then read back from the object store with the worker gone:
//! the reader's memory stays bounded whatever the partition's size. The size defaults to
//! 256 MiB; `SHOAL_BIG_PARTITION_BYTES=4GiB` runs the full-size measurement.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shoal_tests::*;
use shuffle_proto::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_spilled_partition_reads_back_in_bounded_memory() {
    let total: u64 = std::env::var("SHOAL_BIG_PARTITION_BYTES")
        .ok()
        .and_then(|v| v.parse::<bytesize::ByteSize>().ok())
        .map_or(256 << 20, |b| b.as_u64());
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
