//! `shoal local up`: masters and workers as child processes of this command, on loopback,
//! with a fresh cluster CA and a local-directory object store by default. Any child can be
//! killed to try a failure; Ctrl-C or SIGTERM stops them all.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use shuffle_proto::auth::{init_auth_dir, Credential};
use shuffle_proto::messages::{ClusterStatus, GetStatus, WorkerState};
use shuffle_proto::transport::{generate_cluster_tls, Client, ClientOptions, MasterClient, Tls, TlsSource};

#[derive(Debug, Clone)]
pub struct LocalUp {
    pub masters: usize,
    pub workers: usize,
    pub data_dir: PathBuf,
    pub object_store: Option<String>,
    /// First port; masters take the next ones, then workers. 0 picks free ports.
    pub base_port: u16,
    pub bin_dir: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct NodeInfo {
    pub id: String,
    pub role: &'static str,
    pub addr: String,
    pub pid: u32,
    pub log: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct ClusterFile {
    pub masters: Vec<NodeInfo>,
    pub workers: Vec<NodeInfo>,
    pub master_endpoints: String,
    pub object_store: String,
    pub tls_ca: PathBuf,
    /// The admin's credential file, for `shoal --credential-file`.
    pub admin_credential: PathBuf,
    /// The `spark` tenant's credential file, for Spark drivers.
    pub tenant_credential: PathBuf,
    pub spark_conf: Vec<String>,
}

pub struct Running {
    pub file: ClusterFile,
    children: Vec<(String, Child)>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn tls_args(tls: &TlsSource) -> Vec<String> {
    match tls {
        TlsSource::Files { cert, key, ca } => vec![
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
            "--tls-ca".into(),
            ca.display().to_string(),
        ],
        _ => vec!["--tls-insecure".into(), "true".into()],
    }
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

impl LocalUp {
    pub async fn start(&self) -> anyhow::Result<Running> {
        if self.masters == 0 || self.masters % 2 == 0 {
            bail!("--masters must be odd (1, 3 or 5) for a Raft majority");
        }
        let master_bin = self.bin_dir.join("shuffle-master");
        let worker_bin = self.bin_dir.join("shuffle-worker");
        for b in [&master_bin, &worker_bin] {
            if !b.exists() {
                bail!("{} not found: build the workspace first (cargo build --workspace)", b.display());
            }
        }
        std::fs::create_dir_all(self.data_dir.join("logs"))?;
        let data_dir = std::fs::canonicalize(&self.data_dir)?;
        let tls = generate_cluster_tls(&data_dir.join("tls"))?;
        // Authentication is on here too: a tenant for Spark, an admin for the CLI.
        let auth = init_auth_dir(&data_dir.join("auth"), &["spark"], "admin")?;
        let tenant_credential = auth.tenants.first().map(|(_, p)| p.clone()).context("no tenant credential")?;
        let object_store =
            self.object_store.clone().unwrap_or_else(|| format!("file://{}", data_dir.join("objects").display()));
        let port = |i: usize| -> anyhow::Result<u16> {
            if self.base_port == 0 {
                free_port()
            } else {
                Ok(self.base_port + i as u16)
            }
        };
        let master_addrs: Vec<String> =
            (0..self.masters).map(|i| Ok(format!("127.0.0.1:{}", port(i)?))).collect::<anyhow::Result<_>>()?;
        let peers =
            master_addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect::<Vec<_>>().join(",");
        let mut children = Vec::new();
        let mut masters = Vec::new();
        for (i, addr) in master_addrs.iter().enumerate() {
            let id = i + 1;
            let mut args = vec![
                "--id".to_string(),
                id.to_string(),
                "--listen".into(),
                addr.clone(),
                "--peers".into(),
                peers.clone(),
                "--data-dir".into(),
                data_dir.join(format!("master-{id}")).display().to_string(),
            ];
            args.extend(tls_args(&tls));
            args.extend([
                "--auth-principals".into(),
                auth.principals.display().to_string(),
                "--auth-signing-keys".into(),
                auth.signing_keys.display().to_string(),
            ]);
            let log = data_dir.join("logs").join(format!("master-{id}.log"));
            let child = spawn(&master_bin, &args, &log)?;
            masters.push(NodeInfo { id: id.to_string(), role: "master", addr: addr.clone(), pid: child.id(), log });
            children.push((format!("master-{id}"), child));
        }
        let endpoints = master_addrs.join(",");
        let mut workers = Vec::new();
        for i in 0..self.workers {
            let id = format!("shoal-worker-{i}");
            let addr = format!("127.0.0.1:{}", port(self.masters + i)?);
            let mut args = vec![
                "--id".to_string(),
                id.clone(),
                "--listen".into(),
                addr.clone(),
                "--masters".into(),
                endpoints.clone(),
                "--data-dir".into(),
                data_dir.join(&id).display().to_string(),
                "--object-store".into(),
                object_store.clone(),
            ];
            args.extend(tls_args(&tls));
            let log = data_dir.join("logs").join(format!("{id}.log"));
            let child = spawn(&worker_bin, &args, &log)?;
            workers.push(NodeInfo { id: id.clone(), role: "worker", addr, pid: child.id(), log });
            children.push((id, child));
        }
        let ca = match &tls {
            TlsSource::Files { ca, .. } => ca.clone(),
            _ => PathBuf::new(),
        };
        let spark_conf = vec![
            "spark.shuffle.manager=io.shoal.spark.ShoalShuffleManager".to_string(),
            "spark.shuffle.sort.io.plugin.class=io.shoal.spark.ShoalShuffleDataIO".to_string(),
            format!("spark.shoal.master.endpoints={endpoints}"),
            format!("spark.shoal.tls.ca={}", ca.display()),
            format!("spark.shoal.auth.credentialFile={}", tenant_credential.display()),
        ];
        let file = ClusterFile {
            masters,
            workers,
            master_endpoints: endpoints,
            object_store,
            tls_ca: ca,
            admin_credential: auth.admin.clone(),
            tenant_credential,
            spark_conf,
        };
        let mut running = Running { file, children };
        if let Err(e) = running.wait_ready(self.workers).await {
            running.stop();
            return Err(e);
        }
        std::fs::write(data_dir.join("cluster.json"), serde_json::to_vec_pretty(&running.file)?)?;
        Ok(running)
    }
}

impl Running {
    /// A client of the masters holding the cluster's admin credential.
    pub fn admin_client(&self) -> anyhow::Result<MasterClient> {
        let tls = Tls::load(&TlsSource::CaOnly { ca: self.file.tls_ca.clone() })?;
        let admin = Credential::load_secret_file(&self.file.admin_credential)?;
        let client = Client::new(&tls, ClientOptions::default())?.with_credential(Some(&admin))?;
        let endpoints: Vec<String> = self.file.master_endpoints.split(',').map(String::from).collect();
        Ok(MasterClient::new(client, endpoints, Duration::from_secs(2))?)
    }

    async fn wait_ready(&mut self, workers: usize) -> anyhow::Result<()> {
        let mc = self.admin_client()?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            for (name, child) in &mut self.children {
                if let Some(status) = child.try_wait()? {
                    bail!("{name} exited during start-up ({status}); see its log");
                }
            }
            if let Ok(st) = mc.call_typed::<ClusterStatus>(GetStatus {}).await {
                let active = st.workers.iter().filter(|w| w.state == WorkerState::Active).count();
                if st.leader.is_some() && active >= workers {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the cluster did not come up within 60 s; see the logs");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM every child, then SIGKILL whatever is left after 10 s.
    pub fn stop(&mut self) {
        for (_, c) in &mut self.children {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for (name, c) in &mut self.children {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if tokio::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                    _ => {
                        eprintln!("{name} did not stop in time; killing it");
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
    }

    /// The exit status of a child that has exited (`name`: `master-1`, `shoal-worker-0`, ...).
    pub fn exited(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        self.children.iter_mut().find(|(n, _)| n == name).and_then(|(_, c)| c.try_wait().ok().flatten())
    }

    pub fn summary(&self) -> String {
        let f = &self.file;
        let mut s = String::new();
        for n in f.masters.iter().chain(f.workers.iter()) {
            s.push_str(&format!("{:<7} {:<16} {:<22} pid {}\n", n.role, n.id, n.addr, n.pid));
        }
        s.push_str(&format!(
            "\nmaster endpoints: {}\nobject store:     {}\nadmin credential: {} (shoal ... --credential-file)\n\nSpark settings:\n",
            f.master_endpoints,
            f.object_store,
            f.admin_credential.display()
        ));
        for line in &f.spark_conf {
            s.push_str(&format!("  --conf {line}\n"));
        }
        s.push_str(
            "  (Spark 3.5 to 4.2: spark.shuffle.manager=io.shoal.spark.ShoalShuffleManagerPre43; on 3.5 also \
             spark.executor.extraClassPath=<the Shoal jar>)\n",
        );
        s
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.children.iter_mut().any(|(_, c)| matches!(c.try_wait(), Ok(None))) {
            self.stop();
        }
    }
}
