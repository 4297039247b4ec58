//! Replication 2 on the data path, with real workers: the primary forwards each batch to the
//! replica and acknowledges only once both hold it. Losing either worker before a spill loses
//! nothing acknowledged and recomputes nothing; the survivor's single copy goes to the object
//! store, so a second loss later is survived too; a replica that fails mid-push moves the
//! partition to a new pair without failing the map.

use std::time::Duration;

use shoal_tests::*;
use shuffle_proto::*;

const MAPS: u32 = 4;
const PARTS: u32 = 6;
const ROUNDS: u32 = 6;

async fn app(c: &Cluster, name: &str) -> anyhow::Result<(shuffle_client::ShuffleClient, ShuffleKey)> {
    let sc = c.shuffle_client()?;
    let app = AppId::new(name)?;
    sc.register_app(&app, Duration::from_secs(600)).await?;
    Ok((sc, ShuffleKey::new(app, 0, 0)))
}

/// Waits until no read source of the shuffle names `gone` (the master saw it lost).
async fn wait_lost(c: &Cluster, key: &ShuffleKey, gone: &str) -> anyhow::Result<()> {
    eventually(Duration::from_secs(20), "the worker declared lost", || async {
        let plan = c.plan(key, 0, PARTS).await.ok()?;
        let named = plan
            .partitions
            .iter()
            .flat_map(|p| &p.sources)
            .any(|s| s.primary.id.as_str() == gone || s.replica.as_ref().is_some_and(|r| r.id.as_str() == gone));
        (!named).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replication_two_survives_losing_either_copy_and_then_the_other() -> anyhow::Result<()> {
    let mut c = Cluster::start(3).await?;
    let (sc, key) = app(&c, "app-repl").await?;
    // One map more than is written: the shuffle stays unsealed, so nothing is spilled at seal
    // and every read below is served by workers until a single copy is spilled.
    let a = sc.register_shuffle(&key, MAPS + 1, PARTS, 2).await?;
    for l in &a.locations {
        let r = l.replica.as_ref().expect("replication 2 places a replica");
        assert_ne!(r.id, l.primary.id);
    }
    for w in spawn_round_writers(&sc, &a, MAPS, PARTS, ROUNDS, None) {
        assert!(w.await??.accepted);
    }
    let plan = c.plan(&key, 0, PARTS).await?;
    assert!(plan.partitions.iter().all(|p| p.segments.is_empty()), "nothing is spilled before the loss");

    // Lose the primary of partition 0: its replica serves it, nothing is recomputed.
    let first = a.locations[0].primary.id.to_string();
    let started = tokio::time::Instant::now();
    c.stop_worker(&first).await;
    wait_lost(&c, &key, &first).await?;
    println!("worker {first} lost; promoted in {:.1?}", started.elapsed());
    for p in 0..PARTS {
        assert_round_partition(&sc, &key, p, MAPS, ROUNDS, "after the first loss").await;
    }

    // Every partition that had a copy on the lost worker lives on one worker now: that worker
    // spills it, so the object store is its second copy.
    let single: Vec<u32> = a
        .locations
        .iter()
        .filter(|l| l.primary.id.as_str() == first || l.replica.as_ref().is_some_and(|r| r.id.as_str() == first))
        .map(|l| l.partition.0)
        .collect();
    assert!(!single.is_empty());
    eventually(Duration::from_secs(20), "single copies spilled", || async {
        let plan = c.plan(&key, 0, PARTS).await.ok()?;
        single.iter().all(|p| !plan.partitions[*p as usize].segments.is_empty()).then_some(())
    })
    .await?;
    println!("single copies of partitions {single:?} spilled {:.1?} after the loss", started.elapsed());

    // Lose the survivor of partition 0 as well (the replica that was promoted): the object
    // store serves what it held.
    let second = a.locations[0].replica.as_ref().map(|r| r.id.to_string()).unwrap_or_default();
    assert_ne!(second, first);
    c.stop_worker(&second).await;
    wait_lost(&c, &key, &second).await?;
    for p in &single {
        let plan = c.plan(&key, *p, p + 1).await?;
        assert!(!plan.partitions[0].lost, "partition {p} was lost with its second worker");
        assert_round_partition(&sc, &key, *p, MAPS, ROUNDS, "after the second loss").await;
    }
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_lost_mid_push_fails_no_map_and_loses_no_acked_batch() -> anyhow::Result<()> {
    let mut c = Cluster::start(4).await?;
    let (sc, key) = app(&c, "app-repl-mid").await?;
    let a = sc.register_shuffle(&key, MAPS + 1, PARTS, 2).await?;
    // Paced writers, so the loss lands mid-push: pushes to it as a primary relocate, and
    // primaries forwarding to it answer ReplicaFailed, which relocates too.
    let writers = spawn_round_writers(&sc, &a, MAPS, PARTS, 20, Some(Duration::from_millis(100)));
    let victim = a.locations[0].replica.as_ref().expect("a replica").id.to_string();
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.stop_worker(&victim).await;
    for w in writers {
        assert!(w.await??.accepted, "a map failed when a worker was lost");
    }
    let now = sc.assignment(&key).await?;
    assert!(now
        .locations
        .iter()
        .all(|l| l.primary.id.as_str() != victim && l.replica.as_ref().is_none_or(|r| r.id.as_str() != victim)));
    wait_lost(&c, &key, &victim).await?;
    for p in 0..PARTS {
        assert_round_partition(&sc, &key, p, MAPS, 20, "after a loss mid-push").await;
    }
    c.shutdown().await;
    Ok(())
}
