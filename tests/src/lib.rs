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

/// Free loopback UDP ports (bound then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let socks: Vec<std::net::UdpSocket> =
        (0..n).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind")).collect();
    socks.iter().map(|s| s.local_addr().expect("addr").port()).collect()
}

/// An in-process cluster: masters and workers on loopback.
pub struct Cluster {
    pub dir: tempfile::TempDir,
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
        };
        for i in 0..workers {
            c.start_worker(&format!("w{i}")).await?;
        }
        Ok(c)
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

    /// Shuts down the master that leads now; returns its id.
    pub async fn kill_leader(&mut self) -> anyhow::Result<u64> {
        let st = self.status().await?;
        let leader = st.leader.ok_or_else(|| anyhow::anyhow!("no leader"))?;
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
        if let TlsSource::Files { cert, key, ca } = &self.tls {
            for (flag, path) in [("--tls-cert", cert), ("--tls-key", key), ("--tls-ca", ca)] {
                args.extend([flag.to_string(), path.display().to_string()]);
            }
        }
        args
    }

    pub fn worker_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join(id)
    }

    pub async fn start_worker(&mut self, id: &str) -> anyhow::Result<()> {
        let w = WorkerNode::start(self.worker_config(id)?).await?;
        self.workers.insert(id.to_string(), w);
        Ok(())
    }

    pub async fn stop_worker(&mut self, id: &str) {
        if let Some(w) = self.workers.remove(id) {
            w.shutdown().await;
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
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
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
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = std::process::Command::new(bin_path(bin)?)
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
