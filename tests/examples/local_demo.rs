//! The local demo behind `scripts/run.sh`: one master and two workers on loopback, 8 maps
//! pushing 100-byte records into 16 partitions, commits, seal, spill to a local-directory
//! object store, then every partition read back from the object store and checked.

use std::time::{Duration, Instant};

use shoal_tests::*;
use shuffle_proto::batch::{BatchView, StreamRecords};
use shuffle_proto::messages::*;
use shuffle_proto::objstore::{open_store, read_segment};
use shuffle_proto::*;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let maps = 8u32;
    let partitions = 16u32;
    let c = Cluster::start(2).await?;
    println!(
        "master {} and workers {:?} up; objects in {}",
        c.master_addr,
        c.workers.keys().collect::<Vec<_>>(),
        c.object_store
    );
    let a = c.register("app-demo", 0, maps, partitions).await?;
    let key = a.shuffle.clone();
    let t0 = Instant::now();
    let mut pushed = 0u64;
    for map in 0..maps {
        let mut stats = Vec::new();
        for loc in &a.locations {
            let raw = rows(map, loc.partition.0, 2000, 42);
            let crc = c.push(&key, loc, map, map as u64, 0, &raw).await?;
            pushed += raw.len() as u64;
            stats.push(PartitionStat {
                partition: loc.partition,
                bytes: raw.len() as u64,
                crc_sum: crc,
                batches: 1,
                epochs: vec![loc.epoch],
            });
        }
        let r: MapCommitted =
            c.mc.call_typed(CommitMap {
                shuffle: key.clone(),
                map: MapId(map),
                attempt: AttemptId(map as u64),
                partitions: stats,
            })
            .await?;
        anyhow::ensure!(r.accepted);
    }
    println!("pushed {pushed} bytes from {maps} maps into {partitions} partitions in {:?}", t0.elapsed());

    let plan = eventually(Duration::from_secs(30), "spill", || async {
        let p = c.plan(&key, 0, partitions).await.ok()?;
        p.partitions.iter().all(|pp| pp.sources.is_empty() && !pp.segments.is_empty()).then_some(p)
    })
    .await?;
    let store = open_store(&c.object_store)?;
    let mut read = 0u64;
    for pp in &plan.partitions {
        let (mut bytes, mut crc_sum) = (0u64, 0u32);
        for seg in &pp.segments {
            for chunk in read_segment(&*store, seg, 0, maps, |_, _| true).await? {
                for rec in StreamRecords::new(&chunk, 1 << 26) {
                    let v = BatchView::parse_exact(rec?.batch, 1 << 26)?;
                    let mut raw = Vec::new();
                    v.decode_into(&mut raw)?;
                    bytes += raw.len() as u64;
                    crc_sum = crc_sum.wrapping_add(v.crc);
                }
            }
        }
        let want_bytes: u64 = pp.expected.iter().map(|m| m.bytes).sum();
        let want_crc = pp.expected.iter().fold(0u32, |a, m| a.wrapping_add(m.crc_sum));
        anyhow::ensure!((bytes, crc_sum) == (want_bytes, want_crc), "partition {} differs", pp.partition);
        read += bytes;
    }
    let st = c.status().await?;
    for w in &st.workers {
        println!("worker {} {:?}: {} bytes spilled, {} held", w.id, w.state, w.bytes_spilled, w.bytes_held);
    }
    println!("read back {read} bytes from the object store: every partition matches its commits");
    c.shutdown().await;
    Ok(())
}
