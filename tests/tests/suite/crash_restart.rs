//! A worker process killed at each step where acknowledged data could be lost: right before
//! and right after a batch reaches RocksDB, after a segment is uploaded, and after it is
//! recorded. The process aborts at a failpoint (`return(crash)`), comes back on the same data
//! dir, and every batch the writers had acknowledged reads back exactly once; only recorded
//! segments are left in the object store once the worker's sweep ran, and the worker keeps no
//! local copy of them.

use std::time::Duration;

use shoal_tests::*;
use shuffle_proto::*;

const MAPS: u32 = 2;
const PARTS: u32 = 3;
const ROUNDS: u32 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_at_each_step_loses_no_acknowledged_batch() {
    // The put points fire on the 10th push; after-upload on the first partition's spill;
    // after-report on the last one's, so nothing else is left for the worker to spill.
    let points = [
        ("worker-before-put", "9*off->1*return(crash)"),
        ("worker-after-put", "9*off->1*return(crash)"),
        ("worker-after-upload", "1*return(crash)"),
        ("worker-after-report", "2*off->1*return(crash)"),
    ];
    for (i, (point, action)) in points.into_iter().enumerate() {
        // A cluster of its own per step: the worker that crashed is the only one.
        let c = Cluster::start(0).await.unwrap();
        let objects = std::path::PathBuf::from(c.object_store.trim_start_matches("file://"));
        let sc = c.shuffle_client().unwrap();
        let app = AppId::new("app-crash").unwrap();
        sc.register_app(&app, Duration::from_secs(600)).await.unwrap();
        let id = format!("c{i}");
        let listen = format!("127.0.0.1:{}", free_ports(1)[0]);
        let mut args = c.worker_args(&id, &listen);
        // The object a crash after its upload left unrecorded is the sweep's to delete (spills
        // never delete objects): sweep often, with no minimum age, so the check below sees it go.
        args.extend(["--sweep-interval", "1s", "--sweep-grace", "0s"].map(String::from));
        let log = c.dir.path().join(format!("{id}.log"));
        let faults = format!("{point}={action}");
        let mut worker = Proc::spawn_env(&id, "shuffle-worker", &args, &[("FAILPOINTS", &faults)], &log).unwrap();
        let wid = WorkerId::new(&id).unwrap();
        eventually(Duration::from_secs(30), "the worker registered", || async {
            let st = c.status().await.ok()?;
            st.workers.iter().any(|w| w.id == wid && w.state == messages::WorkerState::Active).then_some(())
        })
        .await
        .unwrap();
        let k = ShuffleKey::new(app.clone(), i as u32, 0);
        let a = sc.register_shuffle(&k, MAPS, PARTS, 1).await.unwrap();
        assert!(a.locations.iter().all(|l| l.primary.id == wid), "{point}: the only active worker owns all");
        let writers = spawn_round_writers(&sc, &a, MAPS, PARTS, ROUNDS, None);
        // The process dies at the failpoint (put points: while the writers push; spill points:
        // once the shuffle is sealed and spilled), then comes back on the same data dir
        // without the fault. Writers ride it out on their retries.
        let status = eventually(Duration::from_secs(60), "the worker crashed at the failpoint", || {
            let exited = worker.child.try_wait().ok().flatten();
            async move { exited }
        })
        .await
        .unwrap_or_else(|e| panic!("{point}: {e} (is shuffle-worker built with failpoints? cargo build --workspace)"));
        assert!(!status.success(), "{point}: aborted, not a clean exit ({status})");
        let restarted = Proc::spawn_env(&id, "shuffle-worker", &args, &[], &log).unwrap();
        for w in writers {
            assert!(w.await.unwrap().unwrap().accepted, "{point}: the map committed");
        }
        c.wait_spilled(&k, PARTS - 1, Duration::from_secs(60)).await.unwrap();
        for p in 0..PARTS {
            c.wait_spilled(&k, p, Duration::from_secs(60)).await.unwrap();
            assert_round_partition(&sc, &k, p, MAPS, ROUNDS, point).await;
        }
        let dir = objects.join("app-crash").join(format!("{i}.0"));
        let recorded: usize = c.plan(&k, 0, PARTS).await.unwrap().partitions.iter().map(|p| p.segments.len()).sum();
        eventually(Duration::from_secs(20), "only recorded segments are left", || async {
            (segment_objects(&dir) == recorded).then_some(())
        })
        .await
        .unwrap_or_else(|_| panic!("{point}: {} segment objects, {recorded} recorded", segment_objects(&dir)));
        // Sealed and spilled: the restarted worker drops its local copy too, also when it
        // crashed after the master recorded the segment but before deleting locally.
        eventually(Duration::from_secs(20), "the worker holds nothing", || async {
            let st = c.status().await.ok()?;
            st.workers.iter().any(|w| w.id == wid && w.bytes_held == 0).then_some(())
        })
        .await
        .unwrap_or_else(|_| panic!("{point}: the restarted worker kept spilled data"));
        drop(restarted);
        drop(worker);
        println!("{point}: crashed ({status}), restarted, {} partitions exact", PARTS);
        c.shutdown().await;
    }
}
