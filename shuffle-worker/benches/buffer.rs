//! The worker's buffer: storing pushed batches (value log + RocksDB index) and scanning a
//! partition back, against writing and reading the same bytes as a plain file (the floor).

use std::io::{Read, Write};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shuffle_proto::{AppId, ShuffleKey};
use shuffle_worker::buffer::{AttemptFilter, BatchKey, Buffer, ScanRange};

fn buffer(c: &mut Criterion) {
    let batch = vec![42u8; 64 << 10];
    let count = 64u32;
    let mut g = c.benchmark_group("worker-buffer");
    g.throughput(Throughput::Bytes(batch.len() as u64 * count as u64));
    g.sample_size(10);
    let dir = tempfile::tempdir().unwrap();
    g.bench_function("baseline-file-append", |b| {
        let path = dir.path().join("plain");
        b.iter(|| {
            let mut f = std::fs::File::create(&path).unwrap();
            for _ in 0..count {
                f.write_all(&batch).unwrap();
            }
        })
    });
    g.bench_function("baseline-file-read", |b| {
        let path = dir.path().join("plain");
        let mut buf = Vec::new();
        b.iter(|| {
            buf.clear();
            std::fs::File::open(&path).unwrap().read_to_end(&mut buf).unwrap();
        })
    });
    let buf = Buffer::open(&dir.path().join("db"), false).unwrap();
    let shuffle = ShuffleKey::new(AppId::new("bench").unwrap(), 0, 0);
    let mut round = 0u64;
    // A batch's life on the worker: stored, then dropped once spilled (the plain-file baseline
    // truncates its file each time, so both reuse the page cache rather than fill it).
    g.bench_function("buffer-put", |b| {
        b.iter(|| {
            round += 1;
            for seq in 0..count {
                let key = BatchKey { shuffle: shuffle.clone(), partition: 0, map: 0, attempt: round, seq };
                buf.put(&key, &batch).unwrap();
            }
            buf.delete_partition(&shuffle, 0).unwrap();
        })
    });
    // A partition of its own holding exactly the bytes the baselines read.
    for seq in 0..count {
        let key = BatchKey { shuffle: shuffle.clone(), partition: 1, map: 0, attempt: 0, seq };
        buf.put(&key, &batch).unwrap();
    }
    let range =
        ScanRange { shuffle: shuffle.clone(), partition: 1, start_map: 0, end_map: 1, filter: AttemptFilter::All };
    g.bench_function("buffer-scan-partition", |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            buf.scan_partition(&range, 1 << 20, |chunk, _| {
                bytes += chunk.len();
                true
            })
            .unwrap();
            std::hint::black_box(bytes)
        })
    });
    g.finish();
}

criterion_group!(benches, buffer);
criterion_main!(benches);
