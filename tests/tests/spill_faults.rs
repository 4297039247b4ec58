//! A spill that fails between its steps (upload, report to the master, local delete), through
//! failpoints: nothing acknowledged is lost, readers get every committed byte exactly once, and
//! an object the master never recorded is deleted on the next spill of the partition. (Its own
//! test binary: failpoints are process-wide.)

use std::time::Duration;

use shoal_tests::*;
use shuffle_proto::*;

fn seg_files(dir: &std::path::Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "seg") {
                n += 1;
            }
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spill_failing_after_upload_or_after_report_loses_nothing() {
    let scenario = fail::FailScenario::setup();
    let c = Cluster::start(1).await.unwrap();
    let objects = std::path::PathBuf::from(c.object_store.trim_start_matches("file://"));
    let sc = c.shuffle_client().unwrap();
    let app = AppId::new("app-faults").unwrap();
    sc.register_app(&app, Duration::from_secs(600)).await.unwrap();
    for (i, point) in ["worker-after-upload", "worker-after-report"].into_iter().enumerate() {
        // The first spill of each partition fails at `point`; the retry goes through.
        fail::cfg(point, "1*return").unwrap();
        let k = ShuffleKey::new(app.clone(), i as u32, 0);
        let a = sc.register_shuffle(&k, 2, 1, 1).await.unwrap();
        for m in 0..2 {
            let mut w = sc.map_writer(&a, MapId(m), AttemptId(u64::from(m)));
            w.write(0, &rows(m, 0, 500, i as u64)).await.unwrap();
            assert!(w.commit().await.unwrap().accepted);
        }
        // Sealed: the worker spills, fails once at the failpoint, and spills again.
        c.wait_spilled(&k, 0, Duration::from_secs(30)).await.unwrap();
        let plan = c.plan(&k, 0, 1).await.unwrap();
        assert_eq!(plan.partitions[0].segments.len(), 1, "{point}: one recorded segment");
        let dir = objects.join("app-faults").join(format!("{i}.0"));
        eventually(Duration::from_secs(10), "only recorded objects are left", || async {
            (seg_files(&dir) == 1).then_some(())
        })
        .await
        .unwrap_or_else(|_| panic!("{point}: {} segment objects, the master recorded 1", seg_files(&dir)));
        let mut s = sc.read_partition(&k, 0, 0, 2);
        let mut got = Vec::new();
        while let Some(b) = s.next().await.unwrap() {
            got.extend(b);
        }
        let want: Vec<u8> = (0..2).flat_map(|m| rows(m, 0, 500, i as u64)).collect();
        assert_same_units(&got, &want, 100, point);
        fail::remove(point);
    }
    c.shutdown().await;
    scenario.teardown();
}
