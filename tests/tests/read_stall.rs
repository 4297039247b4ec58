//! A partition reader that stops reading: while it stalls the worker pins no value log file
//! (a delete frees its disk space) and keeps taking pushes; after the read stall timeout the
//! worker resets the stream. Its own test binary: it inspects this process's open files.

use std::path::Path;
use std::time::{Duration, Instant};

use shoal_tests::{eventually, Cluster};
use shuffle_proto::frame::read_frame;
use shuffle_proto::messages::*;
use shuffle_proto::*;
use shuffle_worker::node::WorkerNode;

const STALL: Duration = Duration::from_secs(1);
const BATCH: usize = 512 << 10;

/// Bytes lz4 cannot shrink (xorshift), so batches take their size in the value log.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Files under `dir` this process still holds open though they were unlinked.
fn unlinked_but_open(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    let fds = std::fs::read_dir("/proc/self/fd").into_iter().flatten().flatten();
    fds.filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .map(|target| target.display().to_string())
        .filter(|t| t.starts_with(&dir) && t.ends_with(" (deleted)"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_pins_nothing_and_is_cut_off() -> anyhow::Result<()> {
    let mut c = Cluster::start(0).await?;
    let mut cfg = c.worker_config("w0")?;
    cfg.read_stall_timeout = STALL;
    c.workers.insert("w0".into(), WorkerNode::start(cfg).await?);
    let values = c.worker_dir("w0").join("buffer").join("values");
    let a = c.register("app-stall", 0, 2, 2).await?;
    let key = a.shuffle.clone();
    let (p0, p1) = (&a.locations[0], &a.locations[1]);
    // 40 MiB in partition 0, then 30 MiB in partition 1: the value log rolls over its 64 MiB
    // file, so the first file takes no more appends and goes once its batches are deleted.
    for seq in 0..80u32 {
        c.push(&key, p0, 0, 0, seq, &noise(seq.into(), BATCH)).await?;
    }
    for seq in 0..60u32 {
        c.push(&key, p1, 0, 0, seq, &noise(1000 + u64::from(seq), BATCH)).await?;
    }
    anyhow::ensure!(std::fs::read_dir(&values)?.count() >= 2, "the value log did not roll over");

    // A reader opens partition 0, takes the first chunk and stops reading. The worker fills
    // the stream's flow-control window (16 MiB) and then can send nothing more.
    let open = OpenPartition {
        shuffle: key.clone(),
        partition: PartitionId(0),
        start_map: MapId(0),
        end_map: MapId(u32::MAX),
        attempts: vec![MapAttemptRef { map: MapId(0), attempt: AttemptId(0) }],
    };
    let (_send, mut recv) = c.client.open(&p0.primary.addr, &Message::OpenPartition(open), &[]).await?;
    let mut body = Vec::new();
    let first = read_frame(&mut recv, &FrameLimits::default(), &mut body).await?;
    anyhow::ensure!(matches!(first, Some(Message::Chunk(_))), "first frame: {first:?}");
    let stalled = Instant::now();

    // Pushes go on meanwhile.
    for seq in 0..8u32 {
        c.push(&key, p1, 1, 0, seq, &noise(2000 + u64::from(seq), BATCH)).await?;
    }
    // The shuffle goes: its batches are deleted, the value log file they filled is unlinked,
    // and the stalled read holds no handle on it, so its disk space is free.
    let _: Ack = c.mc.call_typed(UnregisterShuffle { shuffle: key.clone() }).await?;
    let worker = &c.workers["w0"];
    eventually(Duration::from_secs(10), "the worker deleting the shuffle", || async {
        (worker.bytes_held() == 0).then_some(())
    })
    .await?;
    let freed = eventually(Duration::from_secs(5), "no unlinked value log file held open", || async {
        unlinked_but_open(&values).is_empty().then_some(())
    })
    .await;
    anyhow::ensure!(freed.is_ok(), "still open after the delete: {:?}", unlinked_but_open(&values));

    // Past the stall timeout the worker has reset the stream: what is left of it ends in an
    // error, not in the end of the partition.
    tokio::time::sleep((STALL * 2).saturating_sub(stalled.elapsed())).await;
    let rest = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match read_frame(&mut recv, &FrameLimits::default(), &mut body).await {
                Ok(Some(Message::Chunk(_))) => continue,
                other => return other,
            }
        }
    })
    .await?;
    anyhow::ensure!(rest.is_err(), "the stalled stream ended with {rest:?}, not a reset");

    // The worker serves as before: a new shuffle takes pushes and reads back whole.
    let a = c.register("app-stall", 1, 1, 1).await?;
    let loc = &a.locations[0];
    c.push(&a.shuffle, loc, 0, 0, 0, &noise(7, BATCH)).await?;
    let expected = [MapOutput { map: MapId(0), attempt: AttemptId(0), bytes: 0, crc_sum: 0, batches: 0 }];
    let got = c.read_live(&loc.primary.addr, &a.shuffle, 0, &expected).await?;
    anyhow::ensure!(got.len() > BATCH / 2, "read back {} bytes", got.len());
    c.shutdown().await;
    Ok(())
}
