//! Staging records into per-partition batches, against a plain append to one buffer (the
//! floor any batching scheme pays).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shuffle_client::policy::PartitionBuffers;

fn batching(c: &mut Criterion) {
    let record = [7u8; 100];
    let n = 100_000u64;
    let mut g = c.benchmark_group("batching");
    g.throughput(Throughput::Bytes(n * 100));
    g.bench_function("baseline-single-vec", |b| {
        let mut v = Vec::with_capacity(1 << 20);
        b.iter(|| {
            for _ in 0..n {
                v.extend_from_slice(&record);
                if v.len() >= 256 << 10 {
                    v.clear();
                }
            }
        })
    });
    for parts in [16u32, 2000] {
        g.bench_function(format!("partition-buffers-{parts}"), |b| {
            let mut bufs = PartitionBuffers::new(parts, 256 << 10);
            let mut p = 0u32;
            b.iter(|| {
                for _ in 0..n {
                    p = (p + 7) % parts;
                    if let Some(batch) = bufs.append(p, &record) {
                        std::hint::black_box(batch);
                    }
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, batching);
criterion_main!(benches);
