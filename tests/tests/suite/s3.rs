//! The object-store path against a real S3-protocol server (s3s-fs on loopback): multipart
//! segment uploads, ranged reads, and a cluster spilling to S3 and read back with every
//! worker gone. One test in this binary, because the AWS_* environment is process-wide.

use std::time::Duration;

use shoal_tests::*;
use shuffle_proto::batch::{encode_batch, Codec, StreamRecord};
use shuffle_proto::messages::*;
use shuffle_proto::objstore::{open_store, read_segment, SegmentUpload};
use shuffle_proto::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_and_a_cluster_on_s3() {
    let s3 = S3Server::start("shoal-test").await.unwrap();
    s3.export_env();
    // A prefix of two levels, as operators write them (`prod/shuffle`).
    let url = format!("s3://{}/shuffle-data/nested", s3.bucket);

    // 1. A 12 MiB segment in 5 MiB parts (the S3 minimum), then ranged reads.
    let store = open_store(&url).unwrap();
    let mut records = Vec::new();
    for map in 0..6u32 {
        for seq in 0..4u32 {
            let mut batch = Vec::new();
            encode_batch(&noise(512 << 10, (map * 10 + seq) as u64), Codec::Lz4, &mut batch).unwrap();
            StreamRecord::encode(map, 7, seq, &batch, &mut records);
        }
    }
    let mut up = SegmentUpload::new(store.clone(), "direct/seg-1.seg".into(), 5 << 20);
    for chunk_end in
        (0..records.len()).step_by(StreamRecord::encoded_len((512 << 10) + 16)).skip(1).chain([records.len()])
    {
        let start = up.records_len() as usize;
        up.write_chunk(&records[start..chunk_end]).await.unwrap();
    }
    let seg = up.finish().await.unwrap();
    assert_eq!(seg.index_offset, records.len() as u64);
    assert!(records.len() > 12 << 20);
    let all: Vec<u8> = read_segment(&*store, &seg, 0, 6, |_, _| true).await.unwrap().concat();
    assert_eq!(all, records, "multipart object reads back whole");
    let some: Vec<u8> = read_segment(&*store, &seg, 2, 4, |_, _| true).await.unwrap().concat();
    let per_map = records.len() / 6;
    assert_eq!(some, records[2 * per_map..4 * per_map], "ranged read of maps 2..4");

    // 2. A cluster spilling to S3: the segments hold exactly the stream records a live read
    //    returns, and reads keep working with every worker gone.
    let mut c = Cluster::start_with_store(1, 0, Some(url.clone())).await.unwrap();
    for id in ["w0", "w1"] {
        let mut cfg = c.worker_config(id).unwrap();
        cfg.upload_part_bytes = 5 << 20;
        c.workers.insert(id.into(), shuffle_worker::node::WorkerNode::start(cfg).await.unwrap());
    }
    let a = c.register("app-s3", 0, 2, 2).await.unwrap();
    let k = a.shuffle.clone();
    let mut expected_records: std::collections::BTreeMap<u32, Vec<u8>> = Default::default();
    for map in 0..2u32 {
        let mut stats = Vec::new();
        for loc in &a.locations {
            let p = loc.partition.0;
            let mut raws = Vec::new();
            for seq in 0..8u32 {
                let raw = noise(768 << 10, (map * 100 + p * 10 + seq) as u64);
                c.push(&k, loc, map, 50 + map as u64, seq, &raw).await.unwrap();
                let mut batch = Vec::new();
                encode_batch(&raw, Codec::Lz4, &mut batch).unwrap();
                StreamRecord::encode(map, 50 + map as u64, seq, &batch, expected_records.entry(p).or_default());
                raws.push(raw);
            }
            stats.push(PartitionStat {
                partition: loc.partition,
                bytes: raws.iter().map(|r| r.len() as u64).sum(),
                crc_sum: raws.iter().fold(0u32, |s, r| s.wrapping_add(crc32fast::hash(r))),
                batches: raws.len() as u32,
                epochs: vec![loc.epoch],
            });
        }
        let r: MapCommitted =
            c.mc.call_typed(CommitMap {
                shuffle: k.clone(),
                map: MapId(map),
                attempt: AttemptId(50 + map as u64),
                partitions: stats,
            })
            .await
            .unwrap();
        assert!(r.accepted);
    }
    let plan = eventually(Duration::from_secs(30), "spilled to S3", || async {
        let p = c.plan(&k, 0, 2).await.ok()?;
        p.partitions.iter().all(|pp| pp.sources.is_empty() && !pp.segments.is_empty()).then_some(p)
    })
    .await
    .unwrap();
    for pp in &plan.partitions {
        let mut bytes = Vec::new();
        for seg in &pp.segments {
            assert!(seg.total_len > 10 << 20, "a multipart-sized segment");
            bytes.extend(read_segment(&*store, seg, 0, 2, |_, _| true).await.unwrap().concat());
        }
        assert_eq!(bytes, expected_records[&pp.partition.0], "segment bytes equal the stream records");
    }
    for id in ["w0", "w1"] {
        c.stop_worker(id).await;
    }
    let sc = c.node_shuffle_client().unwrap();
    for p in 0..2u32 {
        let mut s = sc.read_partition(&k, p, 0, 2);
        let mut n = 0;
        while let Some(b) = s.next().await.unwrap() {
            n += b.len();
        }
        assert_eq!(n, 2 * 8 * (768 << 10));
        assert_eq!(s.stats().unwrap().from_segments, 16);
    }
    c.shutdown().await;
}
