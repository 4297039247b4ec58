//! Three masters on loopback: replication, leader failover, catch-up after restart (through a
//! snapshot when the log was purged), and worker-loss detection.
#![allow(clippy::disallowed_methods)] // tests measure and wait on the real clock

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use shuffle_master::node::{AuthConfig, MasterConfig, MasterNode};
use shuffle_proto::messages::*;
use shuffle_proto::transport::{Client, ClientOptions, MasterClient, Tls, TlsSource};
use shuffle_proto::*;

fn free_ports(n: usize) -> Vec<u16> {
    let socks: Vec<std::net::UdpSocket> = (0..n).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    socks.iter().map(|s| s.local_addr().unwrap().port()).collect()
}

fn config(id: u64, peers: &BTreeMap<u64, String>, dir: &Path, tls: &TlsSource) -> MasterConfig {
    MasterConfig {
        id,
        listen: peers[&id].parse().unwrap(),
        peers: peers.clone(),
        join: false,
        data_dir: dir.join(format!("m{id}")),
        tls: tls.clone(),
        heartbeat_interval: Duration::from_millis(200),
        worker_timeout: Duration::from_secs(60),
        election_timeout: Duration::from_millis(300),
        snapshot_every: 50,
        replication: 1,
        commit_batch: shuffle_master::group::Limits::default().max_commands,
        max_app_lease: shuffle_master::config::DEFAULT_MAX_APP_LEASE,
        connections: Default::default(),
        http_listen: None,
        auth: AuthConfig::Disabled,
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    peers: BTreeMap<u64, String>,
    tls: TlsSource,
    nodes: BTreeMap<u64, MasterNode>,
    client: MasterClient,
}

impl Cluster {
    async fn start(n: usize) -> Cluster {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let tls = shuffle_proto::transport::generate_cluster_tls(&dir.path().join("tls")).unwrap();
        let peers: BTreeMap<u64, String> =
            free_ports(n).into_iter().enumerate().map(|(i, p)| (i as u64 + 1, format!("127.0.0.1:{p}"))).collect();
        let mut nodes = BTreeMap::new();
        for id in peers.keys() {
            nodes.insert(*id, MasterNode::start(config(*id, &peers, dir.path(), &tls)).await.unwrap());
        }
        let c = Client::new(&Tls::load(&tls).unwrap(), ClientOptions::default()).unwrap();
        let client = MasterClient::new(c, peers.values().cloned().collect(), Duration::from_secs(20)).unwrap();
        Cluster { dir, peers, tls, nodes, client }
    }

    async fn leader(&self) -> u64 {
        let st: ClusterStatus = self.client.call_typed(GetStatus {}).await.unwrap();
        st.leader.unwrap()
    }

    async fn kill(&mut self, id: u64) {
        self.nodes.remove(&id).unwrap().shutdown().await;
    }

    async fn restart(&mut self, id: u64) {
        let cfg = config(id, &self.peers, self.dir.path(), &self.tls);
        self.nodes.insert(id, MasterNode::start(cfg).await.unwrap());
    }
}

fn key(s: u32) -> ShuffleKey {
    ShuffleKey::new(AppId::new("app-1").unwrap(), s, 0)
}

async fn setup_workers(c: &MasterClient) {
    for w in ["w1", "w2"] {
        let _: WorkerRegistered = c
            .call_typed(RegisterWorker {
                worker: WorkerId::new(w).unwrap(),
                addr: format!("{w}:7000"),
                capacity_bytes: 1 << 30,
                held: vec![],
                store_url: String::new(),
            })
            .await
            .unwrap();
    }
    let _: AppRegistered =
        c.call_typed(RegisterApp { app: AppId::new("app-1").unwrap(), lease_ms: 600_000 }).await.unwrap();
}

async fn commit_all(c: &MasterClient, s: u32, maps: u32, a: &ShuffleAssignment) {
    for m in 0..maps {
        let loc = &a.locations[(m as usize) % a.locations.len()];
        let r: MapCommitted = c
            .call_typed(CommitMap {
                shuffle: key(s),
                map: MapId(m),
                attempt: AttemptId(1000 + m as u64),
                partitions: vec![PartitionStat {
                    partition: loc.partition,
                    bytes: 100 + m as u64,
                    crc_sum: m,
                    batches: 1,
                    epochs: vec![loc.epoch],
                }],
            })
            .await
            .unwrap();
        assert!(r.accepted);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_loses_nothing_and_restarted_followers_catch_up() {
    let mut cl = Cluster::start(3).await;
    setup_workers(&cl.client).await;
    let a: ShuffleAssignment = cl
        .client
        .call_typed(RegisterShuffle { shuffle: key(1), num_maps: 8, num_partitions: 4, replication: 1 })
        .await
        .unwrap();
    commit_all(&cl.client, 1, 8, &a).await;

    // Kill the leader: a new one must serve within 3 s, with every commit intact.
    let old = cl.leader().await;
    cl.kill(old).await;
    let t0 = Instant::now();
    let plan: ReadPlan = cl
        .client
        .call_typed(GetReadPlan {
            shuffle: key(1),
            start_partition: PartitionId(0),
            end_partition: PartitionId(4),
            start_map: MapId(0),
            end_map: MapId(8),
        })
        .await
        .unwrap();
    let failover = t0.elapsed();
    println!("failover: a new leader served after {failover:?}");
    assert!(failover < Duration::from_secs(3), "failover took {failover:?}");
    assert_eq!(plan.state, ShuffleState::Sealed);
    let committed: usize = plan.partitions.iter().map(|p| p.expected.len()).sum();
    assert_eq!(committed, 8);
    let new = cl.leader().await;
    assert_ne!(new, old);

    // While the old leader is down, write enough to purge the log past it (snapshot every 50).
    for s in 2..40 {
        let a: ShuffleAssignment = cl
            .client
            .call_typed(RegisterShuffle { shuffle: key(s), num_maps: 2, num_partitions: 2, replication: 1 })
            .await
            .unwrap();
        commit_all(&cl.client, s, 2, &a).await;
    }
    // openraft defers a purge while a replication stream (here: to the dead master) has the
    // logs in flight; between retries it can go through.
    let raft = cl.nodes[&new].raft().clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader_metrics = loop {
        let m = raft.metrics().borrow().clone();
        if m.purged.is_some() {
            break m;
        }
        assert!(Instant::now() < deadline, "the leader never purged its log: {m:?}");
        if let Some(s) = m.snapshot {
            raft.trigger().purge_log(s.index).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The old leader comes back from its data dir and catches up through a snapshot.
    cl.restart(old).await;
    let target = leader_metrics.last_applied.map(|l| l.index);
    cl.nodes[&old]
        .raft()
        .wait(Some(Duration::from_secs(10)))
        .applied_index_at_least(target, "restarted master catches up")
        .await
        .unwrap();
    let m = cl.nodes[&old].raft().metrics().borrow().clone();
    assert!(m.snapshot.is_some(), "catch-up went through a snapshot: {m:?}");
    // Its state machine holds what the leader holds.
    let st: ShuffleList = cl.client.call_typed(ListShuffles {}).await.unwrap();
    assert_eq!(st.shuffles.len(), 39);

    for (_, n) in std::mem::take(&mut cl.nodes) {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_point_at_the_leader_and_silent_workers_are_lost() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let listen = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cfg = MasterConfig::single(listen, dir.path().join("m"), TlsSource::Insecure);
    cfg.heartbeat_interval = Duration::from_millis(100);
    cfg.worker_timeout = Duration::from_millis(600);
    let node = MasterNode::start(cfg).await.unwrap();
    let client = Client::new(&Tls::load(&TlsSource::Insecure).unwrap(), ClientOptions::default()).unwrap();
    let mc = MasterClient::new(client, vec![listen.to_string()], Duration::from_secs(10)).unwrap();
    let _: WorkerRegistered = mc
        .call_typed(RegisterWorker {
            worker: WorkerId::new("w1").unwrap(),
            addr: "x:1".into(),
            capacity_bytes: 1,
            held: vec![],
            store_url: String::new(),
        })
        .await
        .unwrap();
    let _: WorkerRegistered = mc
        .call_typed(RegisterWorker {
            worker: WorkerId::new("w2").unwrap(),
            addr: "x:2".into(),
            capacity_bytes: 1,
            held: vec![],
            store_url: String::new(),
        })
        .await
        .unwrap();
    // w1 heartbeats, w2 stays silent.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let _: HeartbeatReply = mc
            .call_typed(WorkerHeartbeat {
                worker: WorkerId::new("w1").unwrap(),
                bytes_held: 5,
                partitions: 0,
                shuffles: vec![],
            })
            .await
            .unwrap();
        let st: ClusterStatus = mc.call_typed(GetStatus {}).await.unwrap();
        let state = |id: &str| st.workers.iter().find(|w| w.id.as_str() == id).unwrap().state.clone();
        if state("w2") == WorkerState::Lost {
            assert_eq!(state("w1"), WorkerState::Active);
            break;
        }
        assert!(Instant::now() < deadline, "w2 never declared lost: {st:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A lost worker must register again before its heartbeats count.
    let err = mc
        .call_typed::<HeartbeatReply>(WorkerHeartbeat {
            worker: WorkerId::new("w2").unwrap(),
            bytes_held: 0,
            partitions: 0,
            shuffles: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnknownWorker);
    node.shutdown().await;
}
