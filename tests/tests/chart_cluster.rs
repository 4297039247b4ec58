//! The Helm chart run as a cluster: `tests/chart/pods.py` renders `deploy/helm/shoal` and lays
//! out every StatefulSet pod as a kubelet would (volumes from the ConfigMap and Secrets, env
//! with fieldRefs and secretKeyRefs, $(VAR) expansion); this test runs the containers' commands
//! as processes on loopback, one 127.x.y.z address per pod standing in for its pod IP and DNS
//! name. It checks what only a running cluster shows: init containers finish, startup and
//! readiness probes pass, every declared port is served, the masters elect a leader and the
//! workers register under their pod names, a Spark job with the settings NOTES.txt prints gives
//! exact results, a worker's preStop hook drains it to the object store and the worker exits 0
//! within the pod's grace period, and the rest stop cleanly on SIGTERM.
//!
//! The operator's material (TLS, auth) is made with `shoal certs` and `shoal auth init`, as
//! docs/operations.md describes. Needs the chart venv (`scripts/chart-check.sh`), `s3s-fs`
//! (`scripts/setup.sh`) and, for the Spark job, the plugin jar and pyspark venv.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shoal_tests::{assert_same_units, bin_path, http_get, rows, Proc, S3Server};
use shuffle_client::cli::local::{ClusterFile, NodeInfo};
use shuffle_client::{ClientConfig, ShuffleClient};
use shuffle_proto::auth::Credential;
use shuffle_proto::messages::{ClusterStatus, GetStatus, WorkerState};
use shuffle_proto::transport::{Client, ClientOptions, MasterClient, Tls, TlsSource};
use shuffle_proto::{AppId, AttemptId, MapId, ShuffleKey};

/// One release at a time: each runs several processes, and CI has 2 cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Longest wait for any pod to start and turn ready, whatever its probes allow.
const READY_BOUND: Duration = Duration::from_secs(60);

fn cache() -> PathBuf {
    std::env::var("SHOAL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/shoal"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
}

struct Release {
    /// Files under tests/chart/values/, merged in order.
    values: &'static [&'static str],
    /// The chart's full name for these values (pod and Service names start with it).
    fullname: &'static str,
    /// Values the test sets on top: where its S3 server is, and keys it accepts.
    overlay: fn(&S3Server) -> Value,
    spark: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_defaults_run_as_a_cluster() -> anyhow::Result<()> {
    run(&Release {
        values: &["default.yaml"],
        fullname: "shoal",
        overlay: |s3| {
            json!({"objectStore": {"bucket": s3.bucket, "endpoint": s3.endpoint,
                "credentials": {"accessKeyId": "shoal", "secretAccessKey": "shoal-secret"}}})
        },
        spark: false,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_custom_values_run_as_a_cluster_with_a_spark_job() -> anyhow::Result<()> {
    run(&Release {
        values: &["cluster-processes.yaml"],
        fullname: "spark-shuffle",
        overlay: |s3| json!({"objectStore": {"endpoint": s3.endpoint}}),
        spark: true,
    })
    .await
}

/// A container as pods.py laid it out.
struct Container {
    pod: String,
    name: String,
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: PathBuf,
    spec: Value,
}

impl Container {
    fn from(pod: &str, v: &Value) -> anyhow::Result<Container> {
        let argv: Vec<String> = serde_json::from_value(v["argv"].clone())?;
        anyhow::ensure!(!argv.is_empty(), "{pod}: container {} has no command", v["name"]);
        Ok(Container {
            pod: pod.to_string(),
            name: v["name"].as_str().unwrap_or_default().to_string(),
            argv,
            env: serde_json::from_value(v["env"].clone())?,
            cwd: PathBuf::from(v["cwd"].as_str().unwrap_or("/")),
            spec: v.clone(),
        })
    }

    /// Runs `argv` in this container: its env only (PATH leads to the image's binaries), its
    /// working directory.
    fn command(&self, argv: &[String]) -> std::process::Command {
        let mut c = std::process::Command::new(&argv[0]);
        c.args(&argv[1..]).env_clear().envs(&self.env).current_dir(&self.cwd).stdin(Stdio::null());
        c
    }

    fn spawn(&self, logs: &Path) -> anyhow::Result<(Proc, PathBuf)> {
        let log = logs.join(format!("{}-{}.log", self.pod, self.name));
        let out = std::fs::File::create(&log)?;
        let child = self
            .command(&self.argv)
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .map_err(|e| anyhow::anyhow!("{}/{}: cannot start {:?}: {e}", self.pod, self.name, self.argv[0]))?;
        Ok((Proc { child, name: format!("{}/{}", self.pod, self.name) }, log))
    }

    /// Runs an exec handler (probe or hook) as the kubelet would, inside this container.
    async fn exec(&self, argv: &[String], timeout: Duration) -> anyhow::Result<std::process::Output> {
        let mut c = tokio::process::Command::from(self.command(argv));
        c.kill_on_drop(true);
        tokio::time::timeout(timeout, c.output())
            .await
            .map_err(|_| anyhow::anyhow!("{}: {argv:?} did not finish in {timeout:?}", self.pod))?
            .map_err(|e| anyhow::anyhow!("{}: cannot run {argv:?}: {e}", self.pod))
    }

    /// One probe (`startup`, `readiness`, `liveness`) try: Ok(true) when it succeeds.
    async fn probe(&self, which: &str) -> anyhow::Result<bool> {
        let p = &self.spec[which];
        anyhow::ensure!(!p.is_null(), "{}: no {which} probe", self.pod);
        let timeout = Duration::from_secs(p["timeoutSeconds"].as_u64().unwrap_or(1)) + Duration::from_secs(2);
        if let Some(h) = p.get("httpGet") {
            let addr: SocketAddr = h["addr"].as_str().unwrap_or_default().parse()?;
            let path = h["path"].as_str().unwrap_or("/");
            return Ok(matches!(tokio::time::timeout(timeout, http_get(addr, path)).await,
                Ok(Ok((code, _))) if (200..400).contains(&code)));
        }
        if let Some(argv) = p.get("exec") {
            let argv: Vec<String> = serde_json::from_value(argv.clone())?;
            return Ok(self.exec(&argv, timeout).await.is_ok_and(|o| o.status.success()));
        }
        if let Some(t) = p.get("tcpSocket") {
            let addr: SocketAddr = t["addr"].as_str().unwrap_or_default().parse()?;
            return Ok(tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
                .await
                .is_ok_and(|r| r.is_ok()));
        }
        anyhow::bail!("{}: unsupported {which} probe {p}", self.pod)
    }

    /// How long the kubelet lets the startup probe fail before it kills the container.
    fn startup_budget(&self) -> Duration {
        let p = &self.spec["startup"];
        let secs = p["initialDelaySeconds"].as_u64().unwrap_or(0)
            + p["periodSeconds"].as_u64().unwrap_or(10) * p["failureThreshold"].as_u64().unwrap_or(3);
        Duration::from_secs(secs).min(READY_BOUND)
    }
}

/// A running pod: its main container's process.
struct Pod {
    name: String,
    component: String,
    ip: String,
    grace: Duration,
    main: Container,
    proc: Option<Proc>,
    log: PathBuf,
}

/// The last lines of a log, stack frames left out.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> =
        text.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with("at ")).collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl Pod {
    fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        Ok(match &mut self.proc {
            Some(p) => p.child.try_wait()?,
            None => None,
        })
    }

    fn pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, |p| p.child.id())
    }

    /// Waits up to `within` for the process to exit; its status.
    async fn wait_exit(&mut self, within: Duration) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.exited()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn sigterm(&self) -> anyhow::Result<()> {
        std::process::Command::new("kill").args(["-TERM", &self.pid().to_string()]).status()?;
        Ok(())
    }

    /// SIGTERM, as the kubelet sends after the preStop hook; the process must exit 0 within
    /// what is left of the grace period.
    async fn stop(&mut self, grace_left: Duration) -> anyhow::Result<std::process::ExitStatus> {
        if self.exited()?.is_none() {
            self.sigterm()?;
        }
        let status = self.wait_exit(grace_left).await?.ok_or_else(|| {
            anyhow::anyhow!("{} did not exit within its grace period ({grace_left:?} left) after SIGTERM", self.name)
        })?;
        self.proc = None;
        Ok(status)
    }
}

/// Sockets bound on UDP `ip:port` (or the wildcard), from /proc/net/udp.
fn udp_bound(ip: &str, port: u16) -> bool {
    let text = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    text.lines().skip(1).filter_map(|l| l.split_whitespace().nth(1)).any(|local| {
        let Some((a, p)) = local.split_once(':') else { return false };
        let addr = u32::from_str_radix(a, 16).map(|v| std::net::Ipv4Addr::from(v.to_le_bytes()).to_string());
        u16::from_str_radix(p, 16) == Ok(port) && (addr.as_deref() == Ok(ip) || addr.as_deref() == Ok("0.0.0.0"))
    })
}

/// The operator's material, made with the `shoal` CLI as docs/operations.md does.
fn operator_material(dir: &Path, fullname: &str) -> anyhow::Result<Value> {
    let shoal = |args: &[&str]| -> anyhow::Result<()> {
        let out = std::process::Command::new(bin_path("shoal")?).args(args).current_dir(dir).output()?;
        anyhow::ensure!(out.status.success(), "shoal {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    };
    shoal(&["certs", "ca", "--out", "ca"])?;
    let (m, w) = (
        format!("*.{fullname}-master-headless.shuffle.svc.cluster.local"),
        format!("*.{fullname}-worker-headless.shuffle.svc.cluster.local"),
    );
    let svc = format!("{fullname}-master.shuffle.svc.cluster.local");
    shoal(&[
        "certs",
        "node",
        "--ca-dir",
        "ca",
        "--name",
        "shoal-node",
        "--out",
        "node",
        "--dns",
        &m,
        "--dns",
        &w,
        "--dns",
        &svc,
    ])?;
    shoal(&["auth", "init", "--out", "auth", "--tenant", "spark", "--admin", "admin"])?;
    let p = |rel: &str| dir.join(rel).display().to_string();
    Ok(json!({
        "tls_cert": p("node/shoal-node.pem"), "tls_key": p("node/shoal-node.key"), "ca": p("ca/ca.pem"),
        "principals": p("auth/principals.toml"), "signing_keys": p("auth/signing-keys.toml"),
        "tenant_credential": p("auth/spark.credential"),
        "s3_access_key_id": "shoal", "s3_secret_access_key": "shoal-secret",
    }))
}

/// Renders the chart and lays out its pods (tests/chart/pods.py in the chart venv).
fn lay_out(rel: &Release, s3: &S3Server, material: &Path, dir: &Path) -> anyhow::Result<Value> {
    let python = cache().join("venv-chart/bin/python");
    anyhow::ensure!(python.exists(), "{} is missing: run scripts/chart-check.sh", python.display());
    // The image's binaries, and only those, in one directory for PATH.
    let bin = dir.join("image-bin");
    std::fs::create_dir_all(&bin)?;
    for b in ["shuffle-master", "shuffle-worker", "shoal"] {
        std::os::unix::fs::symlink(bin_path(b)?, bin.join(b))?;
    }
    // A /24 of loopback per run, so runs side by side (or a process left over) never collide.
    let n = std::process::id() ^ (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos());
    let prefix = format!("127.{}.{}", 100 + n % 150, 1 + (n >> 8) % 250);
    let mut cmd = std::process::Command::new(python);
    cmd.arg(root().join("tests/chart/pods.py"));
    for v in rel.values {
        cmd.arg("--values").arg(root().join("tests/chart/values").join(v));
    }
    let out = cmd
        .arg("--set-json")
        .arg((rel.overlay)(s3).to_string())
        .arg("--material")
        .arg(material)
        .arg("--root")
        .arg(dir)
        .args(["--ip-prefix", &prefix])
        .arg("--bin-dir")
        .arg(&bin)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "the chart cannot be laid out as pods: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

async fn run(rel: &Release) -> anyhow::Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let t0 = Instant::now();
    let dir = tempfile::tempdir()?;
    let s3 = S3Server::start("shoal").await?;
    // For this test's own client reading drained data back; the pods get only their own env
    // and Spark's executors what NOTES.txt gives them.
    s3.export_env();
    let material = operator_material(dir.path(), rel.fullname)?;
    let material_file = dir.path().join("material.json");
    std::fs::write(&material_file, material.to_string())?;
    let plan = lay_out(rel, &s3, &material_file, dir.path())?;
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    println!("rendered and laid out in {:.1?}; pods: {}", t0.elapsed(), plan["dns"]);

    let result = run_cluster(rel, &plan, dir.path(), &logs, &material).await;
    if result.is_err() {
        // Keep the logs to read after a failure.
        let keep = std::env::temp_dir().join(format!("shoal-chart-cluster-{}", rel.fullname));
        let _ = std::fs::remove_dir_all(&keep);
        let _ = std::process::Command::new("cp").arg("-r").arg(&logs).arg(&keep).status();
        println!("pod logs: {}", keep.display());
    }
    println!("release {} took {:.1?}", rel.fullname, t0.elapsed());
    result
}

async fn run_cluster(rel: &Release, plan: &Value, dir: &Path, logs: &Path, material: &Value) -> anyhow::Result<()> {
    let t = Instant::now();
    let mut pods = start_pods(plan, logs).await?;
    wait_ready(&mut pods).await?;
    println!("{} pods started and ready in {:.1?}", pods.len(), t.elapsed());

    // Every declared port is served on the pod's address.
    for pod in &pods {
        let ports = pod.main.spec["ports"].as_object().cloned().unwrap_or_default();
        for (name, p) in ports {
            let port = p["port"].as_u64().unwrap_or(0) as u16;
            let ok = match p["protocol"].as_str() {
                Some("UDP") => udp_bound(&pod.ip, port),
                _ => tokio::net::TcpStream::connect((pod.ip.as_str(), port)).await.is_ok(),
            };
            anyhow::ensure!(ok, "{}: container port {name} ({port}/{}) is not served", pod.name, p["protocol"]);
        }
    }

    // The cluster the pods form: a leader, every master, every worker under its pod name at
    // its own address. Asked as a node, with the certificate the Secret holds.
    let spark_conf: Vec<String> = serde_json::from_value(plan["spark"].clone())?;
    let setting = |key: &str| -> anyhow::Result<String> {
        spark_conf
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(String::from)
            .ok_or_else(|| anyhow::anyhow!("NOTES.txt prints no {key}"))
    };
    let endpoints: Vec<String> = setting("spark.shoal.master.endpoints")?.split(',').map(String::from).collect();
    let path = |k: &str| PathBuf::from(material[k].as_str().unwrap_or_default());
    let node_tls = TlsSource::Files { cert: path("tls_cert"), key: path("tls_key"), ca: path("ca") };
    let mc = MasterClient::new(
        Client::new(&Tls::load(&node_tls)?, ClientOptions::default())?,
        endpoints.clone(),
        Duration::from_secs(10),
    )?;
    let masters: Vec<&Pod> = pods.iter().filter(|p| p.component == "master").collect();
    let workers: Vec<&Pod> = pods.iter().filter(|p| p.component == "worker").collect();
    anyhow::ensure!(!masters.is_empty() && !workers.is_empty(), "the chart rendered no masters or no workers");
    let worker_quic = workers[0].main.spec["ports"]["quic"]["port"].as_u64().unwrap_or(0);
    let st: ClusterStatus = mc.call_typed(GetStatus {}).await?;
    anyhow::ensure!(st.leader.is_some(), "no leader: {st:?}");
    anyhow::ensure!(
        st.masters.len() == masters.len(),
        "{} masters in the group, {} pods",
        st.masters.len(),
        masters.len()
    );
    let mut got: Vec<(String, String)> = st
        .workers
        .iter()
        .filter(|w| w.state == WorkerState::Active)
        .map(|w| (w.id.to_string(), w.addr.clone()))
        .collect();
    got.sort();
    let want: Vec<(String, String)> =
        workers.iter().map(|p| (p.name.clone(), format!("{}:{worker_quic}", p.ip))).collect();
    anyhow::ensure!(got == want, "active workers (id, advertised address) {got:?}, expected the pods {want:?}");

    if rel.spark {
        spark_job(plan, dir, &pods, &spark_conf).await?;
    }

    // A shuffle whose data sits on one worker; then that worker's pod is deleted.
    let t = Instant::now();
    let mut cfg = ClientConfig::new(endpoints.clone(), TlsSource::CaOnly { ca: path("ca") });
    cfg.credential = Some(Credential::load_secret_file(&path("tenant_credential"))?);
    cfg.batch_bytes = 16 << 10;
    let sc = ShuffleClient::new(cfg)?;
    let app = AppId::new("chart-drain")?;
    sc.register_app(&app, Duration::from_secs(600)).await?;
    let key = ShuffleKey::new(app, 0, 0);
    let parts = 2 * workers.len() as u32;
    let a = sc.register_shuffle(&key, 2, parts, 1).await?;
    for m in 0..2 {
        let mut w = sc.map_writer(&a, MapId(m), AttemptId(m as u64));
        for p in 0..parts {
            w.write(p, &rows(m, p, 300, 11)).await?;
        }
        anyhow::ensure!(w.commit().await?.accepted, "map {m} not accepted");
    }
    let victim = a.locations[0].primary.id.to_string();
    let idx = pods
        .iter()
        .position(|p| p.name == victim)
        .ok_or_else(|| anyhow::anyhow!("partition 0 is on {victim}, no pod"))?;
    let pod = &mut pods[idx];
    let hook = pod.main.spec["pre_stop"]["exec"].clone();
    anyhow::ensure!(!hook.is_null(), "{}: no preStop exec hook", pod.name);
    let hook: Vec<String> = serde_json::from_value(hook)?;
    let started = Instant::now();
    let out = pod.main.exec(&hook, pod.grace.min(Duration::from_secs(120))).await?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    anyhow::ensure!(out.status.success(), "{}: preStop hook failed ({}): {stdout}{stderr}", pod.name, out.status);
    let report: Value = serde_json::from_str(&stdout)
        .map_err(|e| anyhow::anyhow!("{}: preStop printed no JSON report ({e}): {stdout}", pod.name))?;
    anyhow::ensure!(report["state"] == "decommissioned", "{}: preStop report {report}", pod.name);
    // The worker stops by itself once decommissioned; the kubelet's SIGTERM follows anyway.
    let on_its_own = pod.wait_exit(Duration::from_secs(10)).await?.is_some();
    let left = pod.grace.saturating_sub(started.elapsed());
    let status = pod.stop(left).await?;
    anyhow::ensure!(status.success(), "{}: exited {status} after its drain; log:\n{}", pod.name, tail(&pod.log));
    println!(
        "{}: preStop drained {} bytes, exit 0 {} in {:.1?} (grace {:?})",
        pod.name,
        report["bytes_at_start"],
        if on_its_own { "on its own" } else { "after SIGTERM" },
        started.elapsed(),
        pod.grace
    );
    let st: ClusterStatus = mc.call_typed(GetStatus {}).await?;
    let w = st.workers.iter().find(|w| w.id.to_string() == victim);
    anyhow::ensure!(w.is_some_and(|w| w.state == WorkerState::Decommissioned), "{victim} after its drain: {w:?}");
    // Every byte reads back, that worker's from the object store.
    for p in 0..parts {
        let mut s = sc.read_partition(&key, p, 0, 2);
        let mut got = Vec::new();
        while let Some(b) = s.next().await? {
            got.extend_from_slice(&b);
        }
        let want: Vec<u8> = (0..2).flat_map(|m| rows(m, p, 300, 11)).collect();
        assert_same_units(&got, &want, 100, &format!("partition {p} after {victim} drained"));
    }
    println!("drain of {victim} checked in {:.1?}", t.elapsed());

    // The rest stop on SIGTERM (no preStop here: the masters go too), exit 0 within grace.
    for pod in pods.iter_mut().filter(|p| p.proc.is_some()) {
        pod.sigterm()?;
    }
    for pod in pods.iter_mut().filter(|p| p.proc.is_some()) {
        let grace = pod.grace.min(Duration::from_secs(30));
        let status = pod.stop(grace).await?;
        anyhow::ensure!(status.success(), "{}: exited {status} on SIGTERM; log:\n{}", pod.name, tail(&pod.log));
    }
    Ok(())
}

/// Starts every pod as the StatefulSets' Parallel policy does: all at once, each running its
/// init containers to completion before its main container.
async fn start_pods(plan: &Value, logs: &Path) -> anyhow::Result<Vec<Pod>> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, p) in plan["pods"].as_array().cloned().unwrap_or_default().into_iter().enumerate() {
        let logs = logs.to_path_buf();
        tasks.spawn(async move {
            let name = p["name"].as_str().unwrap_or_default().to_string();
            for init in p["init"].as_array().cloned().unwrap_or_default() {
                let c = Container::from(&name, &init)?;
                let (mut proc, log) = c.spawn(&logs)?;
                let deadline = Instant::now() + READY_BOUND;
                let status = loop {
                    if let Some(s) = proc.child.try_wait()? {
                        break s;
                    }
                    anyhow::ensure!(
                        Instant::now() < deadline,
                        "{name}: init container {} still running after {READY_BOUND:?}; log:\n{}",
                        c.name,
                        tail(&log)
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                anyhow::ensure!(
                    status.success(),
                    "{name}: init container {} exited {status}; log:\n{}",
                    c.name,
                    tail(&log)
                );
            }
            let containers = p["containers"].as_array().cloned().unwrap_or_default();
            anyhow::ensure!(containers.len() == 1, "{name}: {} containers, this test runs one", containers.len());
            let main = Container::from(&name, &containers[0])?;
            let (proc, log) = main.spawn(&logs)?;
            anyhow::Ok((
                i,
                Pod {
                    name,
                    component: p["component"].as_str().unwrap_or_default().to_string(),
                    ip: p["ip"].as_str().unwrap_or_default().to_string(),
                    grace: Duration::from_secs(p["grace_seconds"].as_u64().unwrap_or(30)),
                    main,
                    proc: Some(proc),
                    log,
                },
            ))
        });
    }
    let mut pods: Vec<(usize, Pod)> = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(200), tasks.join_next()).await {
            Ok(Some(r)) => pods.push(r??),
            Ok(None) => break,
            // A started pod that exits is the cause, not the init containers waiting on it.
            Err(_) => {
                for (_, pod) in &mut pods {
                    if let Some(s) = pod.exited()? {
                        anyhow::bail!("{} exited {s} during start-up; log:\n{}", pod.name, tail(&pod.log));
                    }
                }
            }
        }
    }
    pods.sort_by_key(|(i, _)| *i);
    Ok(pods.into_iter().map(|(_, p)| p).collect())
}

/// Startup probe, then readiness, for every pod; liveness once ready. Probes are polled faster
/// than their periods, but a startup probe gets no longer than its failureThreshold allows.
async fn wait_ready(pods: &mut [Pod]) -> anyhow::Result<()> {
    let t = Instant::now();
    let mut started = vec![false; pods.len()];
    let mut ready = vec![false; pods.len()];
    while ready.iter().any(|r| !r) {
        for (i, pod) in pods.iter_mut().enumerate() {
            if ready[i] {
                continue;
            }
            if let Some(s) = pod.exited()? {
                anyhow::bail!("{} exited {s} before it was ready; log:\n{}", pod.name, tail(&pod.log));
            }
            if !started[i] {
                started[i] = pod.main.probe("startup").await?;
                anyhow::ensure!(
                    started[i] || t.elapsed() < pod.main.startup_budget(),
                    "{}: startup probe {} still failing after {:?}; log:\n{}",
                    pod.name,
                    pod.main.spec["startup"],
                    pod.main.startup_budget(),
                    tail(&pod.log)
                );
            }
            if started[i] && pod.main.probe("readiness").await? {
                anyhow::ensure!(pod.main.probe("liveness").await?, "{}: ready but its liveness probe fails", pod.name);
                ready[i] = true;
            }
        }
        let waiting: Vec<&str> = pods.iter().zip(&ready).filter(|(_, r)| !**r).map(|(p, _)| p.name.as_str()).collect();
        anyhow::ensure!(
            t.elapsed() < READY_BOUND,
            "not ready after {READY_BOUND:?}: {waiting:?}; {} probe of {}: {}; its log:\n{}",
            if started.iter().zip(&ready).any(|(s, r)| *s && !r) { "readiness" } else { "startup" },
            waiting[0],
            pods.iter()
                .find(|p| p.name == waiting[0])
                .map(|p| p.main.spec["readiness"].to_string())
                .unwrap_or_default(),
            pods.iter().find(|p| p.name == waiting[0]).map(|p| tail(&p.log)).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Sum of a counter over every worker's /metrics.
async fn workers_counter(pods: &[Pod], metric: &str) -> anyhow::Result<f64> {
    let mut sum = 0.0;
    for pod in pods.iter().filter(|p| p.component == "worker" && p.proc.is_some()) {
        let port = pod.main.spec["ports"]["http"]["port"].as_u64().unwrap_or(0) as u16;
        let (_, body) = http_get(SocketAddr::new(pod.ip.parse()?, port), "/metrics").await?;
        sum += body
            .lines()
            .filter(|l| l.starts_with(metric))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    Ok(sum)
}

/// A Spark job with the settings NOTES.txt prints, through a cluster.json like `shoal local up`
/// writes. local-cluster mode: the executor is a JVM of its own, which gets only what
/// spark.executorEnv gives it (the S3 keys spilled partitions are read with).
async fn spark_job(plan: &Value, dir: &Path, pods: &[Pod], spark_conf: &[String]) -> anyhow::Result<()> {
    let t = Instant::now();
    let python = cache().join("venv/bin/python");
    let jar = cache().join("spark/shoal-spark.jar");
    for f in [&python, &jar] {
        anyhow::ensure!(
            f.exists(),
            "{} is missing: run scripts/setup.sh and shuffle-client/spark/build.sh",
            f.display()
        );
    }
    let conf = |key: &str| spark_conf.iter().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or_default();
    let node = |p: &Pod| NodeInfo {
        id: p.name.clone(),
        role: if p.component == "master" { "master" } else { "worker" },
        addr: p.ip.clone(),
        pid: p.pid(),
        log: p.log.clone(),
    };
    let file = ClusterFile {
        masters: pods.iter().filter(|p| p.component == "master").map(node).collect(),
        workers: pods.iter().filter(|p| p.component == "worker").map(node).collect(),
        master_endpoints: conf("spark.shoal.master.endpoints").to_string(),
        object_store: plan["object_store"].as_str().unwrap_or_default().to_string(),
        tls_ca: conf("spark.shoal.tls.ca").into(),
        admin_credential: dir.join("auth/admin.credential"),
        tenant_credential: conf("spark.shoal.auth.credentialFile").into(),
        spark_conf: spark_conf.to_vec(),
    };
    let cluster_json = dir.join("cluster.json");
    std::fs::write(&cluster_json, serde_json::to_vec_pretty(&file)?)?;
    let before = workers_counter(pods, "shoal_worker_pushed_bytes_total").await?;
    let log = dir.join("logs/spark-driver.log");
    let child = tokio::process::Command::new(python)
        .arg(root().join("tests/chart/spark_job.py"))
        .arg(&cluster_json)
        .arg(&jar)
        .arg("local-cluster[1,2,1024]")
        // Only what the settings give it: not this test's own S3 keys.
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_REGION")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true)
        .spawn()?;
    let out = tokio::time::timeout(Duration::from_secs(150), child.wait_with_output()).await.map_err(|_| {
        anyhow::anyhow!("the Spark job did not finish in 150 s; driver log {}:\n{}", log.display(), tail(&log))
    })??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success() && stdout.contains("SPARK-JOB ok"),
        "the Spark job failed ({}): {stdout}\ndriver log:\n{}",
        out.status,
        tail(&log)
    );
    let after = workers_counter(pods, "shoal_worker_pushed_bytes_total").await?;
    anyhow::ensure!(after > before, "the Spark job pushed nothing to the workers ({before} -> {after} bytes)");
    println!("{} ({} bytes pushed) in {:.1?}", stdout.trim(), after - before, t.elapsed());
    Ok(())
}
