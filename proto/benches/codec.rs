//! Codec benchmarks: batch encode/decode (lz4 against the uncompressed baseline) and frame
//! encode/decode of a push header.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shuffle_proto::batch::{encode_batch, BatchView, Codec, DEFAULT_MAX_BATCH_RAW};
use shuffle_proto::frame::{encode_frame, Frame};
use shuffle_proto::messages::{Message, PushBatch};
use shuffle_proto::seal::{BatchCipher, BatchPlace};
use shuffle_proto::{AppId, AttemptId, Epoch, FrameLimits, MapId, PartitionId, ShuffleKey};

/// 100-byte records shaped like serialized Spark rows: a key, a counter and filler text.
fn records(total: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(total);
    let mut i = 0u64;
    while out.len() < total {
        let row = format!("key-{:08}|{:016x}|{:<64}\n", i % 5000, i.wrapping_mul(0x9E37_79B9), "value");
        out.extend_from_slice(&row.as_bytes()[..100.min(row.len())]);
        i += 1;
    }
    out.truncate(total);
    out
}

fn batches(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch");
    for size in [16 << 10, 256 << 10] {
        let raw = records(size);
        g.throughput(Throughput::Bytes(size as u64));
        for (name, codec) in [("none", Codec::None), ("lz4", Codec::Lz4)] {
            let mut out = Vec::with_capacity(size * 2);
            g.bench_with_input(BenchmarkId::new(format!("encode-{name}"), size), &raw, |b, raw| {
                b.iter(|| {
                    out.clear();
                    encode_batch(raw, codec, &mut out).unwrap()
                })
            });
            let mut enc = Vec::new();
            encode_batch(&raw, codec, &mut enc).unwrap();
            let mut back = Vec::with_capacity(size);
            g.bench_with_input(BenchmarkId::new(format!("decode-{name}"), size), &enc, |b, enc| {
                b.iter(|| {
                    back.clear();
                    BatchView::parse_exact(enc, DEFAULT_MAX_BATCH_RAW).unwrap().decode_into(&mut back).unwrap();
                })
            });
        }
        // Sealed with lz4 (Spark's IO encryption on): the cost of encryption is the ratio to
        // encode-lz4 / decode-lz4 above, measured in the same run.
        let cipher = BatchCipher::from_app_key(&[9u8; 16]).unwrap();
        let key = ShuffleKey::new(AppId::new("app-20261122-0001").unwrap(), 3, 0);
        let place = BatchPlace { shuffle: &key, partition: 17, map: 42, attempt: 1234, seq: 9 };
        let mut out = Vec::with_capacity(size * 2);
        g.bench_with_input(BenchmarkId::new("seal-lz4", size), &raw, |b, raw| {
            b.iter(|| {
                out.clear();
                cipher.seal_batch(raw, Codec::Lz4, &place, &mut out).unwrap()
            })
        });
        let mut sealed = Vec::new();
        cipher.seal_batch(&raw, Codec::Lz4, &place, &mut sealed).unwrap();
        let mut back = Vec::with_capacity(size);
        g.bench_with_input(BenchmarkId::new("open-lz4", size), &sealed, |b, sealed| {
            b.iter(|| {
                back.clear();
                let v = BatchView::parse_exact(sealed, DEFAULT_MAX_BATCH_RAW).unwrap();
                cipher.open_into(&v, &place, &mut back).unwrap();
            })
        });
    }
    g.finish();
}

fn frames(c: &mut Criterion) {
    let msg = Message::PushBatch(PushBatch {
        shuffle: ShuffleKey::new(AppId::new("app-20261122-0001").unwrap(), 3, 0),
        partition: PartitionId(17),
        map: MapId(42),
        attempt: AttemptId(1234),
        seq: 9,
        epoch: Epoch(1),
        flags: 0,
    });
    let mut out = Vec::with_capacity(256);
    c.bench_function("frame/encode-push-header", |b| {
        b.iter(|| {
            out.clear();
            encode_frame(&msg, &[], &mut out).unwrap();
        })
    });
    let bytes = out.clone();
    let limits = FrameLimits::default();
    c.bench_function("frame/decode-push-header", |b| {
        b.iter(|| Frame::decode(&bytes, &limits).unwrap().0.message().unwrap())
    });
}

criterion_group!(benches, batches, frames);
criterion_main!(benches);
