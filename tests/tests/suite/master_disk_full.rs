//! A master whose data disk fills up (a tmpfs of its own per master; mounting needs root, as CI
//! runs), under a steady stream of map commits: its Raft node stops on the storage error and
//! the process exits non-zero for its supervisor to restart; the other two elect a leader and
//! keep committing, and no commit fails. Once space returns, the restarted master rejoins and
//! carries the group: with another master killed, the group still commits.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_tests::*;
use shuffle_proto::*;

/// Commits maps in a loop until `stop`: every commit counted, every failure kept.
fn commit_load(
    sc: shuffle_client::ShuffleClient,
    app: AppId,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicU64>, Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let (committed, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(Mutex::new(Vec::new())));
    let (n, errs) = (committed.clone(), failed.clone());
    let task = tokio::spawn(async move {
        let mut shuffle = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let k = ShuffleKey::new(app.clone(), shuffle, 0);
            shuffle += 1;
            let result = async {
                let a = sc.register_shuffle(&k, 8, 4, 1).await?;
                for m in 0..8u32 {
                    let mut w = sc.map_writer(&a, MapId(m), AttemptId(u64::from(m)));
                    for p in 0..4 {
                        w.write(p, &rows(m, p, 10, u64::from(shuffle))).await?;
                    }
                    anyhow::ensure!(w.commit().await?.accepted, "map {m} of {k} not accepted");
                    n.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            };
            if let Err(e) = result.await {
                errs.lock().unwrap_or_else(|p| p.into_inner()).push(format!("{k}: {e:#}"));
            }
        }
    });
    (committed, failed, task)
}

async fn more_commits(committed: &AtomicU64, n: u64, what: &str) -> anyhow::Result<Duration> {
    let (from, t0) = (committed.load(Ordering::Relaxed), Instant::now());
    eventually(Duration::from_secs(if long_faults() { 600 } else { 60 }), what, || async {
        (committed.load(Ordering::Relaxed) >= from + n).then_some(())
    })
    .await?;
    Ok(t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_whose_disk_fills_leaves_cleanly_and_the_group_keeps_serving() -> anyhow::Result<()> {
    let opts = ProcOptions { master_disk: Some("48m".into()), ..Default::default() };
    let mut c = Cluster::start_processes_with(3, 1, None, opts).await?;
    let sc = c.shuffle_client()?;
    let app = AppId::new("app-master-disk")?;
    sc.register_app(&app, Duration::from_secs(600)).await?;
    let n = u64::from(scaled(40, 2000));
    let stop = Arc::new(AtomicBool::new(false));
    let (committed, failed, load) = commit_load(sc, app, stop.clone());
    more_commits(&committed, n, "commits before the disk fills").await?;

    // The leader's disk fills, as when another tenant of the volume takes it.
    let victim = c.status().await?.leader.ok_or_else(|| anyhow::anyhow!("no leader"))?;
    let filler = fill_disk(&c.master_dir(victim))?;
    let t0 = Instant::now();
    let exit = loop {
        let procs = c.procs.as_mut().ok_or_else(|| anyhow::anyhow!("not a process cluster"))?;
        let p = procs.masters.get_mut(&victim).ok_or_else(|| anyhow::anyhow!("master {victim} gone"))?;
        if let Some(status) = p.child.try_wait()? {
            break status;
        }
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(90), "master {victim} still runs on a full disk");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let exited = t0.elapsed();
    let log = std::fs::read_to_string(c.log_path(&format!("master{victim}")))?;
    println!("master {victim} exited {exited:.1?} after its disk filled ({exit})");
    assert!(!exit.success(), "a master that cannot write exits non-zero: {exit}");
    assert!(log.contains("No space left on device"), "its log names the cause:\n{log}");
    assert!(!log.contains("panicked"), "it stops cleanly, not by a panic:\n{log}");
    let st = eventually(Duration::from_secs(20), "a new leader", || async {
        c.status().await.ok().filter(|s| s.leader.is_some_and(|l| l != victim))
    })
    .await?;
    let resumed = more_commits(&committed, n, "commits with two masters").await?;
    println!("master {:?} leads; {n} more maps committed {resumed:.1?} later", st.leader);

    // Space returns; the master restarts on its data dir and rejoins. Then another master is
    // killed: the group commits only if the restarted one is a working member again.
    std::fs::remove_file(&filler)?;
    c.restart_master(victim)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let other = (1..=3u64).find(|id| *id != victim).ok_or_else(|| anyhow::anyhow!("no other master"))?;
    if let Some(mut p) = c.procs.as_mut().and_then(|p| p.masters.remove(&other)) {
        p.kill9();
    }
    let after = more_commits(&committed, n, "commits with the restarted master and one other").await?;
    println!("master {victim} restarted; with master {other} killed, {n} more maps committed in {after:.1?}");

    stop.store(true, Ordering::Relaxed);
    load.await?;
    let failed = failed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    println!("maps committed: {}; failed: {}", committed.load(Ordering::Relaxed), failed.len());
    assert!(failed.is_empty(), "no commit failed: {failed:?}");
    Ok(())
}
