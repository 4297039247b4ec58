//! A worker cut off from the network mid-push, not stopped: it runs on in a network namespace
//! of its own whose veth link goes down (root and iproute2 needed, as CI has). The rest of the
//! cluster (master, three workers, the clients) listens on the host end of the veth. With
//! replication 2, the clients' pushes to it time out and relocate, primaries forwarding to it
//! relocate too, the master declares it lost, no map fails and every acknowledged batch reads
//! back exactly.

use std::time::{Duration, Instant};

use shoal_tests::*;
use shuffle_proto::messages::WorkerState;
use shuffle_proto::*;

const MAPS: u32 = 4;
const PARTS: u32 = 8;

/// A network namespace joined to the host by a veth pair, deleted (with the pair) on drop.
struct Netns {
    name: String,
    inner_dev: String,
    host_ip: String,
    ns_ip: String,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("ip").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "ip {} failed (the test needs root and iproute2): {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl Netns {
    fn create() -> anyhow::Result<Netns> {
        // Names from the process id: runs on one machine never share a namespace or a subnet.
        let pid = std::process::id();
        let name = format!("shoal-part-{pid}");
        let (host_dev, inner_dev) = (format!("shp{}h", pid % 100_000), format!("shp{}n", pid % 100_000));
        let net = format!("10.{}.{}", 200 + (pid >> 16) % 50, (pid >> 8) % 256);
        let third = (pid % 64) * 4;
        let (host_ip, ns_ip) = (format!("{net}.{}", third + 1), format!("{net}.{}", third + 2));
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name])?;
        let ns =
            Netns { name: name.clone(), inner_dev: inner_dev.clone(), host_ip: host_ip.clone(), ns_ip: ns_ip.clone() };
        ip(&["link", "add", &host_dev, "type", "veth", "peer", "name", &inner_dev])?;
        ip(&["link", "set", &inner_dev, "netns", &name])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_dev])?;
        ip(&["link", "set", &host_dev, "up"])?;
        ip(&["netns", "exec", &name, "ip", "addr", "add", &format!("{ns_ip}/30"), "dev", &inner_dev])?;
        ip(&["netns", "exec", &name, "ip", "link", "set", &inner_dev, "up"])?;
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Takes the namespace's end of the link down: nothing passes either way.
    fn cut(&self) -> anyhow::Result<()> {
        ip(&["netns", "exec", &self.name, "ip", "link", "set", &self.inner_dev, "down"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and with it the host's.
        let _ = ip(&["netns", "del", &self.name]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_mid_push_fails_no_map_and_loses_no_acked_batch() -> anyhow::Result<()> {
    let net = Netns::create()?;
    let opts = ProcOptions { host: Some(net.host_ip.clone()), ..Default::default() };
    let mut c = Cluster::start_processes_with(1, 3, None, opts).await?;
    c.start_worker_in_netns("wn", &net.name, &net.ns_ip).await?;
    let sc = c.shuffle_client()?;
    let app = AppId::new("app-partition")?;
    sc.register_app(&app, Duration::from_secs(600)).await?;
    let key = ShuffleKey::new(app, 0, 0);
    let a = sc.register_shuffle(&key, MAPS, PARTS, 2).await?;
    let rounds = scaled(30, 600);
    let held = |l: &shuffle_proto::messages::PartitionLocation| {
        l.primary.id.as_str() == "wn" || l.replica.as_ref().is_some_and(|r| r.id.as_str() == "wn")
    };
    let (as_primary, as_replica) = (
        a.locations.iter().filter(|l| l.primary.id.as_str() == "wn").count(),
        a.locations.iter().filter(|l| l.replica.as_ref().is_some_and(|r| r.id.as_str() == "wn")).count(),
    );
    anyhow::ensure!(as_primary + as_replica > 0, "the cut-off worker holds no partition: {a:?}");
    println!("worker wn (in {}) is primary of {as_primary} and replica of {as_replica} partitions", net.name);

    // Paced writers, so the cut lands mid-push.
    let writers = spawn_round_writers(&sc, &a, MAPS, PARTS, rounds, Some(Duration::from_millis(100)));
    tokio::time::sleep(Duration::from_millis(800)).await;
    net.cut()?;
    let t0 = Instant::now();
    let lost = eventually(Duration::from_secs(30), "the cut-off worker declared lost", || async {
        let st = c.status().await.ok()?;
        st.workers.iter().any(|w| w.id.as_str() == "wn" && w.state == WorkerState::Lost).then(|| t0.elapsed())
    });
    let (lost, maps) = tokio::join!(lost, async {
        for w in writers {
            anyhow::ensure!(w.await??.accepted, "a map failed when a worker was cut off");
        }
        anyhow::Ok(t0.elapsed())
    });
    let (lost, maps_done) = (lost?, maps?);
    let now = sc.assignment(&key).await?;
    assert!(!now.locations.iter().any(held), "the assignment still names the cut-off worker: {now:?}");
    for p in 0..PARTS {
        assert_round_partition(&sc, &key, p, MAPS, rounds, "after a network cut mid-push").await;
    }
    println!(
        "cut mid-push: every map committed {maps_done:.1?} after the cut, the master declared wn lost after \
         {lost:.1?}; rows lost 0"
    );
    c.shutdown().await;
    Ok(())
}
