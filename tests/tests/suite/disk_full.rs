//! A worker whose data disk fills up, on a small file system of its own (a tmpfs with a size;
//! mounting needs root, as CI runs): pushes are refused with a retryable `DiskFull` before the
//! buffer meets a full disk, the worker spills everything it holds to the object store while
//! the disk is low, no refused batch is ever read, and once space returns the same worker takes
//! pushes again and everything it acknowledged reads back.

use std::time::Duration;

use shoal_tests::*;
use shuffle_proto::messages::*;
use shuffle_proto::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_disk_refuses_pushes_cleanly_and_recovers() -> anyhow::Result<()> {
    let mut c = Cluster::start(0).await?;
    let disk = SmallDisk::mount(&c.dir.path().join("small-disk"), "128m")?;
    let mut cfg = c.worker_config("w0")?;
    cfg.data_dir = disk.0.join("w0");
    cfg.disk_reserve_bytes = 24 << 20;
    let w = shuffle_worker::node::WorkerNode::start(cfg).await?;
    c.workers.insert("w0".into(), w);
    // Half the disk goes to another tenant of the volume.
    let filler = disk.0.join("filler");
    std::fs::write(&filler, vec![1u8; 64 << 20])?;

    let key = ShuffleKey::new(AppId::new("app-disk")?, 0, 0);
    // Two maps, one committed: the shuffle is never sealed, so only the low disk spills.
    let a = c.register("app-disk", 0, 2, 1).await?;
    let loc = a.locations[0].clone();
    // Incompressible 1 MiB batches until the worker refuses one.
    let mut acked = Vec::new();
    let mut refused = None;
    for seq in 0..100u32 {
        let raw = noise(1 << 20, u64::from(seq));
        match c.push(&key, &loc, 0, 7, seq, &raw).await {
            Ok(_) => acked.push(raw),
            Err(e) => {
                refused = Some((seq, e));
                break;
            }
        }
    }
    let (refused_seq, e) = refused.ok_or_else(|| anyhow::anyhow!("100 MiB fit on a 128 MiB disk holding 64 MiB"))?;
    assert_eq!(e.code(), ErrorCode::DiskFull, "refused with {e}");
    assert!(e.retryable());
    // Refused by the reserve, not by a write that ran out of space: room is left for RocksDB.
    let free = free_bytes(&disk.0)?;
    assert!(free >= 8 << 20, "only {free} bytes were left when pushes were refused");
    assert!(acked.len() >= 8, "only {} MiB were taken before the disk counted as full", acked.len());
    println!("{} MiB acknowledged, then DiskFull with {} MiB still free", acked.len(), free >> 20);

    // Under the reserve, the worker spills every partition it holds (the shuffle is still
    // writing, so nothing else would): its buffer empties into the object store.
    eventually(Duration::from_secs(30), "the worker spilled what it held", || async {
        (c.workers["w0"].bytes_held() == 0).then_some(())
    })
    .await?;
    let segments = c.plan(&key, 0, 1).await?.partitions[0].segments.len();
    assert!(segments >= 1, "the held batches are in the object store");

    // Space returns: the same worker takes the refused batch and more.
    std::fs::remove_file(&filler)?;
    let retry = noise(1 << 20, u64::from(refused_seq));
    eventually(Duration::from_secs(10), "a push taken again", || async {
        c.push(&key, &loc, 0, 7, refused_seq, &retry).await.ok()
    })
    .await?;
    acked.push(retry);
    for seq in refused_seq + 1..refused_seq + 4 {
        let raw = noise(1 << 20, u64::from(seq));
        c.push(&key, &loc, 0, 7, seq, &raw).await?;
        acked.push(raw);
    }

    // Exactly the acknowledged batches read back, in order.
    let committed: MapCommitted =
        c.mc.call_typed(CommitMap {
            shuffle: key.clone(),
            map: MapId(0),
            attempt: AttemptId(7),
            partitions: vec![partition_stat(&loc, &acked)],
        })
        .await?;
    assert!(committed.accepted);
    // Read through the plan: the spilled segment, then what the worker holds since.
    let sc = c.node_shuffle_client()?;
    let mut s = sc.read_partition(&key, 0, 0, 1);
    let mut got = Vec::new();
    while let Some(b) = s.next().await? {
        got.push(b);
    }
    assert_eq!(got.len(), acked.len());
    assert!(got == acked, "the batches read back differ from the acknowledged ones");
    c.shutdown().await;
    drop(disk);
    Ok(())
}
