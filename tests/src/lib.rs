//! Integration harness: masters and workers on loopback with temporary directories, a chosen
//! object store, and raw protocol helpers for pushing and reading.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use shuffle_master::node::{AuthConfig, MasterConfig, MasterNode};
use shuffle_proto::auth::{init_auth_dir, AuthFiles, Credential};
use shuffle_proto::batch::{encode_batch, Codec, StreamRecords};
use shuffle_proto::frame::read_frame;
use shuffle_proto::messages::*;
use shuffle_proto::transport::{generate_cluster_tls, Client, ClientOptions, MasterClient, Tls, TlsSource};
use shuffle_proto::*;
use shuffle_worker::node::{WorkerConfig, WorkerNode};

/// `SHOAL_LONG_FAULTS=1` runs the fault suite's long variants: more iterations, more data,
/// longer outages. CI runs the short ones.
pub fn long_faults() -> bool {
    std::env::var("SHOAL_LONG_FAULTS").is_ok_and(|v| v == "1")
}

/// `short`, or `long` under [`long_faults`].
pub fn scaled(short: u32, long: u32) -> u32 {
    if long_faults() {
        long
    } else {
        short
    }
}

/// Free loopback UDP ports (bound then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let socks: Vec<std::net::UdpSocket> =
        (0..n).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind")).collect();
    socks.iter().map(|s| s.local_addr().expect("addr").port()).collect()
}

/// An in-process cluster: masters and workers on loopback.
pub struct Cluster {
    /// Set by [`Cluster::start_processes`]: every node is a child process, and stopping one is
    /// a SIGKILL (no connection close reaches its peers, nothing is flushed). First, so the
    /// processes die before their disks go.
    pub procs: Option<ProcNodes>,
    /// File systems of their own under `dir` (see [`ProcOptions::master_disk`]).
    pub disks: Vec<SmallDisk>,
    pub dir: tempfile::TempDir,
    /// The address nodes listen on.
    pub host: String,
    pub tls: TlsSource,
    pub master_addr: String,
    pub master_addrs: Vec<String>,
    pub master: Option<MasterNode>,
    pub masters: BTreeMap<u64, MasterNode>,
    pub workers: BTreeMap<String, WorkerNode>,
    pub object_store: String,
    /// A node's client (it presents a node certificate: a cluster identity).
    pub client: Client,
    pub mc: MasterClient,
    /// Tenants `tenant-a` and `tenant-b`, and the admin `ops`.
    pub auth: AuthFiles,
}

/// How [`Cluster::start_processes_with`] lays out its nodes.
#[derive(Default)]
pub struct ProcOptions {
    /// Each master's data dir on a tmpfs of this size (e.g. "32m") instead of the shared disk.
    pub master_disk: Option<String>,
    /// The local address masters and workers listen on (default 127.0.0.1): the host end of a
    /// veth, so nodes in a network namespace reach them.
    pub host: Option<String>,
}

/// The child processes of a [`Cluster::start_processes`] cluster.
#[derive(Default)]
pub struct ProcNodes {
    pub masters: BTreeMap<u64, Proc>,
    pub workers: BTreeMap<String, Proc>,
}

/// The tenants every harness cluster admits.
pub const TENANTS: [&str; 2] = ["tenant-a", "tenant-b"];

impl Cluster {
    pub async fn start(workers: usize) -> anyhow::Result<Cluster> {
        Self::start_with(1, workers).await
    }

    pub async fn start_with(masters: usize, workers: usize) -> anyhow::Result<Cluster> {
        Self::start_with_store(masters, workers, None).await
    }

    /// `object_store`: a URL, or the default local directory under the cluster's temp dir.
    pub async fn start_with_store(
        masters: usize,
        workers: usize,
        object_store: Option<String>,
    ) -> anyhow::Result<Cluster> {
        init_test_log();
        let dir = tempfile::tempdir()?;
        let tls = generate_cluster_tls(&dir.path().join("tls"))?;
        let auth = init_auth_dir(&dir.path().join("auth"), &TENANTS, "ops")?;
        let object_store = object_store.unwrap_or_else(|| format!("file://{}", dir.path().join("objects").display()));
        let peers: BTreeMap<u64, String> = free_ports(masters)
            .into_iter()
            .enumerate()
            .map(|(i, p)| (i as u64 + 1, format!("127.0.0.1:{p}")))
            .collect();
        let mut nodes = BTreeMap::new();
        for (id, addr) in &peers {
            let mut cfg = MasterConfig::single(addr.parse()?, dir.path().join(format!("master{id}")), tls.clone());
            cfg.id = *id;
            cfg.peers = peers.clone();
            cfg.heartbeat_interval = Duration::from_millis(200);
            cfg.worker_timeout = Duration::from_secs(3);
            cfg.election_timeout = Duration::from_millis(300);
            cfg.http_listen = Some("127.0.0.1:0".parse()?);
            cfg.auth = AuthConfig::files(auth.principals.clone(), auth.signing_keys.clone());
            nodes.insert(*id, MasterNode::start(cfg).await?);
        }
        let master_addrs: Vec<String> = peers.values().cloned().collect();
        let client = Client::new(&Tls::load(&tls)?, ClientOptions::default())?;
        let mc = MasterClient::new(client.clone(), master_addrs.clone(), Duration::from_secs(20))?;
        let master = if masters == 1 { nodes.remove(&1) } else { None };
        let mut c = Cluster {
            dir,
            host: "127.0.0.1".into(),
            tls,
            master_addr: master_addrs[0].clone(),
            master_addrs,
            master,
            masters: nodes,
            workers: BTreeMap::new(),
            object_store,
            client,
            mc,
            auth,
            procs: None,
            disks: Vec::new(),
        };
        for i in 0..workers {
            c.start_worker(&format!("w{i}")).await?;
        }
        Ok(c)
    }

    /// A cluster whose masters and workers are the real binaries (`cargo build --workspace`),
    /// with the harness's settings: killing one is `kill -9`.
    pub async fn start_processes(
        masters: usize,
        workers: usize,
        object_store: Option<String>,
    ) -> anyhow::Result<Cluster> {
        Self::start_processes_with(masters, workers, object_store, ProcOptions::default()).await
    }

    pub async fn start_processes_with(
        masters: usize,
        workers: usize,
        object_store: Option<String>,
        opts: ProcOptions,
    ) -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let tls = generate_cluster_tls(&dir.path().join("tls"))?;
        let auth = init_auth_dir(&dir.path().join("auth"), &TENANTS, "ops")?;
        let object_store = object_store.unwrap_or_else(|| format!("file://{}", dir.path().join("objects").display()));
        let host = opts.host.clone().unwrap_or_else(|| "127.0.0.1".into());
        let master_addrs: Vec<String> = free_ports(masters).into_iter().map(|p| format!("{host}:{p}")).collect();
        let client = Client::new(&Tls::load(&tls)?, ClientOptions::default())?;
        let mc = MasterClient::new(client.clone(), master_addrs.clone(), Duration::from_secs(20))?;
        let mut c = Cluster {
            dir,
            host,
            tls,
            master_addr: master_addrs[0].clone(),
            master_addrs,
            master: None,
            masters: BTreeMap::new(),
            workers: BTreeMap::new(),
            object_store,
            client,
            mc,
            auth,
            procs: Some(ProcNodes::default()),
            disks: Vec::new(),
        };
        std::fs::create_dir_all(c.dir.path().join("logs"))?;
        for id in 1..=masters as u64 {
            if let Some(size) = &opts.master_disk {
                let disk = SmallDisk::mount(&c.master_dir(id), size)?;
                c.disks.push(disk);
            }
            c.restart_master(id)?;
        }
        eventually(Duration::from_secs(30), "a leader master", || async {
            c.status().await.ok().and_then(|s| s.leader)
        })
        .await?;
        for i in 0..workers {
            c.start_worker(&format!("w{i}")).await?;
        }
        Ok(c)
    }

    fn procs_mut(&mut self) -> anyhow::Result<&mut ProcNodes> {
        self.procs.as_mut().ok_or_else(|| anyhow::anyhow!("not a process cluster"))
    }

    /// Where a process cluster's node `name` logs (appended across restarts).
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join("logs").join(format!("{name}.log"))
    }

    pub fn master_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("master{id}"))
    }

    /// Starts master `id` again on its data dir (a process cluster).
    pub fn restart_master(&mut self, id: u64) -> anyhow::Result<()> {
        let p = Proc::spawn(
            &format!("master{id}"),
            "shuffle-master",
            &self.master_args(id),
            &self.log_path(&format!("master{id}")),
        )?;
        self.procs_mut()?.masters.insert(id, p);
        Ok(())
    }

    /// Flags that start master `id` of this cluster as a process (`shuffle-master`).
    pub fn master_args(&self, id: u64) -> Vec<String> {
        let peers: Vec<String> = self.master_addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect();
        let mut args: Vec<String> = vec![
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            self.master_addrs[id as usize - 1].clone(),
            "--peers".into(),
            peers.join(","),
            "--data-dir".into(),
            self.master_dir(id).display().to_string(),
            "--heartbeat-interval".into(),
            "200ms".into(),
            "--worker-timeout".into(),
            "3s".into(),
            "--election-timeout".into(),
            "300ms".into(),
            "--auth-principals".into(),
            self.auth.principals.display().to_string(),
            "--auth-signing-keys".into(),
            self.auth.signing_keys.display().to_string(),
        ];
        args.extend(self.tls_args());
        args
    }

    fn tls_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let TlsSource::Files { cert, key, ca } = &self.tls {
            for (flag, path) in [("--tls-cert", cert), ("--tls-key", key), ("--tls-ca", ca)] {
                args.extend([flag.to_string(), path.display().to_string()]);
            }
        }
        args
    }

    /// The ids of the workers running now, in process or as processes.
    pub fn worker_ids(&self) -> Vec<String> {
        let procs = self.procs.iter().flat_map(|p| p.workers.keys());
        self.workers.keys().chain(procs).cloned().collect()
    }

    /// The cluster CA only: what an application's client trusts (it has no node certificate).
    pub fn ca_only(&self) -> TlsSource {
        match &self.tls {
            TlsSource::Files { ca, .. } => TlsSource::CaOnly { ca: ca.clone() },
            other => other.clone(),
        }
    }

    /// The credential of tenant `i` (see [`TENANTS`]).
    pub fn tenant(&self, i: usize) -> anyhow::Result<Credential> {
        Ok(Credential::load_secret_file(&self.auth.tenants[i].1)?)
    }

    pub fn admin(&self) -> anyhow::Result<Credential> {
        Ok(Credential::load_secret_file(&self.auth.admin)?)
    }

    /// A master client without a node certificate, presenting `cred`.
    pub fn outsider(&self, cred: Option<&Credential>) -> anyhow::Result<MasterClient> {
        let client = Client::new(&Tls::load(&self.ca_only())?, ClientOptions::default())?.with_credential(cred)?;
        Ok(MasterClient::new(client, self.master_addrs.clone(), Duration::from_secs(10))?)
    }

    /// A Rust client of this cluster, as an application's driver: no node certificate, the
    /// first tenant's credential, and no object store setting (read plans name the store).
    pub fn shuffle_client(&self) -> anyhow::Result<shuffle_client::ShuffleClient> {
        let mut cfg = shuffle_client::ClientConfig::new(self.master_addrs.clone(), self.ca_only());
        cfg.credential = Some(self.tenant(0)?);
        cfg.batch_bytes = 32 << 10;
        cfg.call_timeout = Duration::from_secs(5);
        Ok(shuffle_client::ShuffleClient::new(cfg)?)
    }

    /// A Rust client that speaks as a cluster node (it may look into any application).
    pub fn node_shuffle_client(&self) -> anyhow::Result<shuffle_client::ShuffleClient> {
        let mut cfg = shuffle_client::ClientConfig::new(self.master_addrs.clone(), self.tls.clone());
        cfg.call_timeout = Duration::from_secs(5);
        Ok(shuffle_client::ShuffleClient::new(cfg)?)
    }

    /// Shuts down the master that leads now (`kill -9` in a process cluster); returns its id.
    pub async fn kill_leader(&mut self) -> anyhow::Result<u64> {
        let st = self.status().await?;
        let leader = st.leader.ok_or_else(|| anyhow::anyhow!("no leader"))?;
        if let Some(procs) = self.procs.as_mut() {
            let mut p =
                procs.masters.remove(&leader).ok_or_else(|| anyhow::anyhow!("leader {leader} not running here"))?;
            p.kill9();
            return Ok(leader);
        }
        let node = self.masters.remove(&leader).ok_or_else(|| anyhow::anyhow!("leader {leader} not running here"))?;
        node.shutdown().await;
        Ok(leader)
    }

    pub fn worker_config(&self, id: &str) -> anyhow::Result<WorkerConfig> {
        let port = free_ports(1)[0];
        let mut cfg = WorkerConfig::local(
            id,
            format!("127.0.0.1:{port}").parse()?,
            self.master_addrs.clone(),
            self.worker_dir(id),
            self.object_store.clone(),
            self.tls.clone(),
        )?;
        cfg.heartbeat_interval = Duration::from_millis(200);
        Ok(cfg)
    }

    /// Flags that start worker `id` of this cluster as a process (`shuffle-worker`).
    pub fn worker_args(&self, id: &str, listen: &str) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--id".into(),
            id.into(),
            "--listen".into(),
            listen.into(),
            "--masters".into(),
            self.master_addrs.join(","),
            "--data-dir".into(),
            self.worker_dir(id).display().to_string(),
            "--object-store".into(),
            self.object_store.clone(),
            "--heartbeat-interval".into(),
            "200ms".into(),
        ];
        args.extend(self.tls_args());
        args
    }

    pub fn worker_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join(id)
    }

    /// Starts worker `id` (again, on its data dir) and, in a process cluster, waits until the
    /// masters count it active.
    pub async fn start_worker(&mut self, id: &str) -> anyhow::Result<()> {
        if self.procs.is_none() {
            let w = WorkerNode::start(self.worker_config(id)?).await?;
            self.workers.insert(id.to_string(), w);
            return Ok(());
        }
        self.start_worker_process(id, &[]).await
    }

    /// Starts worker `id` of a process cluster with `extra` flags after the harness's own, and
    /// waits until the masters count it active.
    pub async fn start_worker_process(&mut self, id: &str, extra: &[&str]) -> anyhow::Result<()> {
        let listen = format!("{}:{}", self.host, free_ports(1)[0]);
        let mut args = self.worker_args(id, &listen);
        args.extend(extra.iter().map(|a| a.to_string()));
        let p = Proc::spawn(id, "shuffle-worker", &args, &self.log_path(id))?;
        self.procs_mut()?.workers.insert(id.to_string(), p);
        self.wait_active(id).await
    }

    /// Starts worker `id` as a process inside network namespace `netns`, listening on `ip`
    /// there (a process cluster whose `host` the namespace can reach).
    pub async fn start_worker_in_netns(&mut self, id: &str, netns: &str, ip: &str) -> anyhow::Result<()> {
        let listen = format!("{ip}:{}", free_ports(1)[0]);
        let mut args: Vec<String> =
            vec!["netns".into(), "exec".into(), netns.into(), bin_path("shuffle-worker")?.display().to_string()];
        args.extend(self.worker_args(id, &listen));
        let p = Proc::spawn_program(id, std::path::Path::new("ip"), &args, &[], &self.log_path(id))?;
        self.procs_mut()?.workers.insert(id.to_string(), p);
        self.wait_active(id).await
    }

    async fn wait_active(&self, id: &str) -> anyhow::Result<()> {
        eventually(Duration::from_secs(30), "the worker active", || async {
            let st = self.status().await.ok()?;
            st.workers.iter().any(|w| w.id.as_str() == id && w.state == WorkerState::Active).then_some(())
        })
        .await
    }

    /// Stops worker `id`: a shutdown in process, `kill -9` in a process cluster.
    pub async fn stop_worker(&mut self, id: &str) {
        if let Some(w) = self.workers.remove(id) {
            w.shutdown().await;
        }
        if let Some(mut p) = self.procs.as_mut().and_then(|p| p.workers.remove(id)) {
            p.kill9();
        }
    }

    pub async fn shutdown(mut self) {
        for (_, w) in std::mem::take(&mut self.workers) {
            w.shutdown().await;
        }
        if let Some(m) = self.master.take() {
            m.shutdown().await;
        }
        for (_, m) in std::mem::take(&mut self.masters) {
            m.shutdown().await;
        }
    }

    pub async fn register(
        &self,
        app: &str,
        shuffle: u32,
        maps: u32,
        partitions: u32,
    ) -> anyhow::Result<ShuffleAssignment> {
        let (assignment, _) = self.register_as(0, app, shuffle, maps, partitions).await?;
        Ok(assignment)
    }

    /// Registers `app` as tenant `tenant` and a shuffle of it; returns the assignment and the
    /// app's token.
    pub async fn register_as(
        &self,
        tenant: usize,
        app: &str,
        shuffle: u32,
        maps: u32,
        partitions: u32,
    ) -> anyhow::Result<(ShuffleAssignment, Credential)> {
        let reg: AppRegistered = self
            .outsider(Some(&self.tenant(tenant)?))?
            .call_typed(RegisterApp { app: AppId::new(app)?, lease_ms: 600_000 })
            .await?;
        let token = Credential::from_text(&reg.token)?;
        let key = ShuffleKey::new(AppId::new(app)?, shuffle, 0);
        let a = self
            .outsider(Some(&token))?
            .call_typed(RegisterShuffle { shuffle: key, num_maps: maps, num_partitions: partitions, replication: 1 })
            .await?;
        Ok((a, token))
    }

    /// Pushes one batch of `raw` to `loc`; returns the batch CRC.
    pub async fn push(
        &self,
        key: &ShuffleKey,
        loc: &PartitionLocation,
        map: u32,
        attempt: u64,
        seq: u32,
        raw: &[u8],
    ) -> Result<u32, transport::TransportError> {
        let mut batch = Vec::new();
        let crc = encode_batch(raw, Codec::Lz4, &mut batch)?;
        let msg = Message::PushBatch(PushBatch {
            shuffle: key.clone(),
            partition: loc.partition,
            map: MapId(map),
            attempt: AttemptId(attempt),
            seq,
            epoch: loc.epoch,
            flags: 0,
        });
        let (reply, _) = self.client.call(&loc.primary.addr, &msg, &batch).await?;
        reply.expect::<PushAck>()?;
        Ok(crc)
    }

    /// Reads a partition from a worker: the raw stream records, concatenated.
    pub async fn read_live(
        &self,
        addr: &str,
        key: &ShuffleKey,
        partition: u32,
        expected: &[MapOutput],
    ) -> anyhow::Result<Vec<u8>> {
        let msg = Message::OpenPartition(OpenPartition {
            shuffle: key.clone(),
            partition: PartitionId(partition),
            start_map: MapId(0),
            end_map: MapId(u32::MAX),
            attempts: expected.iter().map(|m| MapAttemptRef { map: m.map, attempt: m.attempt }).collect(),
        });
        let (_send, mut recv) = self.client.open(addr, &msg, &[]).await?;
        let mut out = Vec::new();
        let mut body = Vec::new();
        loop {
            match read_frame(&mut recv, &FrameLimits::default(), &mut body).await? {
                Some(Message::Chunk(c)) => {
                    let n = StreamRecords::new(&body, 1 << 26).count();
                    anyhow::ensure!(n == c.records as usize, "chunk says {} records, holds {n}", c.records);
                    out.extend_from_slice(&body);
                }
                Some(Message::EndOfStream(e)) => {
                    anyhow::ensure!(e.bytes == out.len() as u64, "end says {} bytes, got {}", e.bytes, out.len());
                    return Ok(out);
                }
                Some(Message::WireError(e)) => anyhow::bail!("worker error: {e}"),
                other => anyhow::bail!("unexpected {other:?}"),
            }
        }
    }

    pub async fn plan(&self, key: &ShuffleKey, start: u32, end: u32) -> anyhow::Result<ReadPlan> {
        Ok(self
            .mc
            .call_typed(GetReadPlan {
                shuffle: key.clone(),
                start_partition: PartitionId(start),
                end_partition: PartitionId(end),
                start_map: MapId(0),
                end_map: MapId(u32::MAX),
            })
            .await?)
    }

    /// Waits until partition `partition` of `key` is read from the object store only: spilled
    /// and held by no worker.
    pub async fn wait_spilled(&self, key: &ShuffleKey, partition: u32, timeout: Duration) -> anyhow::Result<()> {
        eventually(timeout, "the partition spilled", || async {
            let plan = self.plan(key, partition, partition + 1).await.ok()?;
            let p = plan.partitions.first()?;
            (p.sources.is_empty() && !p.segments.is_empty()).then_some(())
        })
        .await
    }

    pub async fn status(&self) -> anyhow::Result<ClusterStatus> {
        Ok(self.mc.call_typed(GetStatus {}).await?)
    }
}

/// Map tasks `0..maps` writing `rounds` rounds of 40 rows to each of `parts` partitions
/// (attempt = map), pausing `pace` after each round, then committing; one task each.
pub fn spawn_round_writers(
    sc: &shuffle_client::ShuffleClient,
    a: &ShuffleAssignment,
    maps: u32,
    parts: u32,
    rounds: u32,
    pace: Option<Duration>,
) -> Vec<tokio::task::JoinHandle<Result<shuffle_client::CommitOutcome, shuffle_client::ClientError>>> {
    (0..maps)
        .map(|m| {
            let (sc, a) = (sc.clone(), a.clone());
            tokio::spawn(async move {
                let mut w = sc.map_writer(&a, MapId(m), AttemptId(u64::from(m)));
                for r in 0..rounds {
                    for p in 0..parts {
                        w.write(p, &rows(m, p, 40, u64::from(r))).await?;
                    }
                    if let Some(d) = pace {
                        tokio::time::sleep(d).await;
                    }
                }
                w.commit().await
            })
        })
        .collect()
}

/// Reads partition `p` of `key` and checks it holds exactly what [`spawn_round_writers`]
/// wrote (in any order of rows).
pub async fn assert_round_partition(
    sc: &shuffle_client::ShuffleClient,
    key: &ShuffleKey,
    p: u32,
    maps: u32,
    rounds: u32,
    what: &str,
) {
    let mut s = sc.read_partition(key, p, 0, maps);
    let mut got = Vec::new();
    while let Some(b) = s.next().await.unwrap_or_else(|e| panic!("{what}: partition {p}: {e}")) {
        got.extend(b);
    }
    let want: Vec<u8> = (0..maps).flat_map(|m| (0..rounds).flat_map(move |r| rows(m, p, 40, u64::from(r)))).collect();
    assert_same_units(&got, &want, 100, &format!("{what}: partition {p}"));
}

/// What a map that pushed the raw batches `raw` to `loc` commits for that partition.
pub fn partition_stat<B: AsRef<[u8]>>(loc: &PartitionLocation, raw: &[B]) -> PartitionStat {
    PartitionStat {
        partition: loc.partition,
        bytes: raw.iter().map(|r| r.as_ref().len() as u64).sum(),
        crc_sum: raw.iter().fold(0u32, |a, r| a.wrapping_add(crc32fast::hash(r.as_ref()))),
        batches: raw.len() as u32,
        epochs: vec![loc.epoch],
    }
}

/// How many segment objects (`*.seg`) lie under `dir`, at any depth.
pub fn segment_objects(dir: &std::path::Path) -> usize {
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

/// Resident memory of this process, from /proc (0 where there is none).
pub fn rss_bytes() -> u64 {
    rss_of("self")
}

/// Resident memory of process `pid` ("self" or a number), from /proc (0 once it is gone).
pub fn rss_of(pid: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Deterministic test records: `n` rows of about 100 bytes, tagged with map and partition.
pub fn rows(map: u32, partition: u32, n: u32, salt: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n as usize * 100);
    for i in 0..n {
        let line =
            format!("m{map:05}|p{partition:05}|{i:08}|{:016x}|", (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt);
        out.extend_from_slice(line.as_bytes());
        out.resize(out.len() + (100 - line.len()), b'.');
    }
    out
}

/// Polls `f` until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where the workspace's binaries are (`cargo build --workspace` puts them there).
pub fn bin_path(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test-binary>
    let dir = exe.parent().and_then(|d| d.parent()).ok_or_else(|| anyhow::anyhow!("no target dir"))?;
    let path = dir.join(name);
    anyhow::ensure!(path.exists(), "{} is missing: run `cargo build --workspace` first", path.display());
    Ok(path)
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub child: std::process::Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, bin: &str, args: &[String], log: &std::path::Path) -> anyhow::Result<Proc> {
        Self::spawn_env(name, bin, args, &[], log)
    }

    /// Like [`Proc::spawn`], with extra environment variables; the log is appended to, so a
    /// restarted process keeps its history.
    pub fn spawn_env(
        name: &str,
        bin: &str,
        args: &[String],
        env: &[(&str, &str)],
        log: &std::path::Path,
    ) -> anyhow::Result<Proc> {
        Self::spawn_program(name, &bin_path(bin)?, args, env, log)
    }

    /// Runs `program` (a path, or a name looked up in PATH) as [`Proc::spawn_env`] does.
    pub fn spawn_program(
        name: &str,
        program: &std::path::Path,
        args: &[String],
        env: &[(&str, &str)],
        log: &std::path::Path,
    ) -> anyhow::Result<Proc> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = std::process::Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .env("SHOAL_LOG", "info")
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        Ok(Proc { child, name: name.to_string() })
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill").args(["-TERM", &pid]).status()?;
        Ok(self.child.wait()?)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}

/// A plain HTTP GET (status code and body), enough for /metrics and probes.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// An S3-protocol server (`s3s-fs`, installed by scripts/setup.sh) on a loopback port, with one
/// bucket. Killed on drop.
pub struct S3Server {
    pub endpoint: String,
    pub bucket: String,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl S3Server {
    pub async fn start(bucket: &str) -> anyhow::Result<S3Server> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("root").join(bucket))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let bin = std::env::var("SHOAL_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/shoal"))
            .join("bin/s3s-fs");
        anyhow::ensure!(bin.exists(), "{} is missing: run scripts/setup.sh", bin.display());
        let out = std::fs::File::create(dir.path().join("s3s.log"))?;
        let child = std::process::Command::new(&bin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--access-key",
                "shoal",
                "--secret-key",
                "shoal-secret",
            ])
            .arg(dir.path().join("root"))
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let endpoint = format!("http://127.0.0.1:{port}");
        eventually(Duration::from_secs(10), "s3s-fs listening", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
        })
        .await?;
        Ok(S3Server { endpoint, bucket: bucket.to_string(), _proc: Proc { child, name: "s3s-fs".into() }, _dir: dir })
    }

    /// Kills the server: the object store becomes unreachable.
    pub fn stop(&mut self) {
        self._proc.kill9();
    }

    /// Points the `AWS_*` variables at this server. Call before any store is opened, from a
    /// test binary with a single test (the environment is process-wide).
    pub fn export_env(&self) {
        std::env::set_var("AWS_ACCESS_KEY_ID", "shoal");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "shoal-secret");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_ENDPOINT_URL", &self.endpoint);
    }
}

/// A tmpfs of `size` mounted at `dir`, unmounted on drop.
pub struct SmallDisk(pub PathBuf);

impl SmallDisk {
    pub fn mount(dir: &std::path::Path, size: &str) -> anyhow::Result<SmallDisk> {
        std::fs::create_dir_all(dir)?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "mounting a tmpfs failed (the test needs root): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(SmallDisk(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Free bytes on the file system holding `dir`, as `df` reports them.
pub fn free_bytes(dir: &std::path::Path) -> anyhow::Result<u64> {
    let out = std::process::Command::new("df").args(["--output=avail", "-B1"]).arg(dir).output()?;
    let text = String::from_utf8(out.stdout)?;
    let avail = text.lines().nth(1).ok_or_else(|| anyhow::anyhow!("df printed {text:?}"))?;
    Ok(avail.trim().parse()?)
}

/// Fills the file system holding `dir` to the last byte with a file `dir/filler`, as another
/// tenant of the volume would; returns the filler's path.
pub fn fill_disk(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path)?;
    let chunk = vec![0u8; 64 << 10];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => return Err(e.into()),
        }
    }
    // The last partial chunk, byte by byte up to ENOSPC.
    while let Ok(1) = f.write(&chunk[..1]) {}
    Ok(path)
}

/// An HTTP proxy on loopback in front of an S3-protocol server that fails a chosen share of
/// requests with `503 SlowDown` (the answer S3 gives when overloaded) and delays every request.
/// Which requests fail is fixed by their order, so a run is repeatable.
pub struct FaultyProxy {
    pub endpoint: String,
    faults: std::sync::Arc<ProxyFaults>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct ProxyFaults {
    fail_permille: std::sync::atomic::AtomicU32,
    delay_ms: std::sync::atomic::AtomicU64,
    requests: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

type ProxyBody = http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>;

impl FaultyProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> anyhow::Result<FaultyProxy> {
        use std::sync::atomic::Ordering::Relaxed;
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let faults = std::sync::Arc::new(ProxyFaults::default());
        let f = faults.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (f, upstream) = (f.clone(), upstream.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (f, upstream) = (f.clone(), upstream.clone());
                        async move {
                            let n = f.requests.fetch_add(1, Relaxed);
                            tokio::time::sleep(Duration::from_millis(f.delay_ms.load(Relaxed))).await;
                            // A multiplicative hash of the request number: a fixed, even spread.
                            if (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) % 1000
                                < u64::from(f.fail_permille.load(Relaxed))
                            {
                                f.failed.fetch_add(1, Relaxed);
                                return Ok::<_, anyhow::Error>(slow_down());
                            }
                            forward(&upstream, req).await.or_else(|_| Ok(slow_down()))
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                });
            }
        });
        Ok(FaultyProxy { endpoint, faults, task })
    }

    /// Fails `permille` of every 1000 requests from now on, each after `delay`.
    pub fn set_faults(&self, permille: u32, delay: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        self.faults.fail_permille.store(permille.min(1000), Relaxed);
        self.faults.delay_ms.store(delay.as_millis() as u64, Relaxed);
    }

    /// Requests seen and requests failed so far.
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.faults.requests.load(Relaxed), self.faults.failed.load(Relaxed))
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn slow_down() -> hyper::Response<ProxyBody> {
    use http_body_util::BodyExt;
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
    let mut resp = hyper::Response::new(
        http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes())).map_err(|never| match never {}).boxed(),
    );
    *resp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
    resp
}

/// One request over a connection of its own; headers (and so the signature) pass unchanged.
async fn forward(
    upstream: &str,
    req: hyper::Request<hyper::body::Incoming>,
) -> anyhow::Result<hyper::Response<ProxyBody>> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(upstream).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    Ok(resp.map(|b| b.boxed()))
}

/// Bytes lz4 cannot shrink (xorshift), so sizes on the wire are what a test asks for.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// Asserts two byte streams hold the same fixed-size units, in any order (batches of one map
/// may come back in any order).
pub fn assert_same_units(got: &[u8], want: &[u8], unit: usize, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut g: Vec<&[u8]> = got.chunks(unit).collect();
    let mut w: Vec<&[u8]> = want.chunks(unit).collect();
    g.sort_unstable();
    w.sort_unstable();
    assert!(g == w, "{what}: contents differ");
}

/// With `SHOAL_TEST_LOG` set (a tracing filter, e.g. `shuffle_worker=debug`), the in-process
/// nodes of a test log to stderr: how a flaky run is read after the fact.
pub fn init_test_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("SHOAL_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .try_init();
        }
    });
}
