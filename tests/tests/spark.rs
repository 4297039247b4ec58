//! Real Spark through Shoal: the plugin jar built by `shuffle-client/spark/build.sh` (which
//! `scripts/test.sh` runs first), Spark from the pyspark packages, local-cluster mode with
//! executors in their own JVMs. The checks themselves (`SparkChecks.java`) run every workload
//! under Spark's sort shuffle and through Shoal and compare the results exactly; this test owns
//! the cluster (three master and several worker processes) and acts on the events the checks ask
//! for: stopping the object store, `kill -9` of the leader master or of the worker that holds a
//! shuffle's unspilled data, draining a worker, stopping the whole pool. The same plugin jar runs them on Spark 4.3
//! and on Spark 3.5 (Scala 2.12); speculation and the JNI checks, which do not depend on the
//! Spark line, run on 4.3 only.

use std::path::Path;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use shoal_tests::{Cluster, S3Server};
use shuffle_proto::messages::{Ack, DecommissionWorker, WorkerState};
use shuffle_proto::transport::TlsSource;
use shuffle_proto::{AppId, ShuffleKey};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// One Spark application at a time: each starts several JVMs, and the machine may have 2 cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn cache() -> PathBuf {
    std::env::var("SHOAL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/shoal"))
}

/// A Spark line the plugin is tested on: where its Spark is and how it is configured.
struct Line {
    name: &'static str,
    /// The venv in the cache whose pyspark package is this Spark (`scripts/setup.sh`).
    venv: &'static str,
    /// The variable that names another Spark of this line instead.
    home_var: &'static str,
    /// The checks compiled against this line (they call Scala collections directly).
    checks_jar: &'static str,
    manager: &'static str,
    /// Spark 3.5 creates an executor's shuffle manager before it fetches `--jars` (4.0 changed the
    /// order): the plugin must be on the executors' class path from the start.
    plugin_on_executor_class_path: bool,
    /// Spark 4.1+ carries row checksums in MapStatus: the line runs the checksum check, which
    /// loses one more worker (so the cluster starts one more).
    row_checksums: bool,
}

const SPARK_4_3: Line = Line {
    name: "4.3",
    venv: "venv",
    home_var: "SPARK_HOME",
    checks_jar: "shoal-spark-tests.jar",
    manager: "io.shoal.spark.ShoalShuffleManager",
    plugin_on_executor_class_path: false,
    row_checksums: true,
};

const SPARK_3_5: Line = Line {
    name: "3.5",
    venv: "venv-spark35",
    home_var: "SPARK35_HOME",
    checks_jar: "shoal-spark-tests-spark35.jar",
    manager: "io.shoal.spark.ShoalShuffleManagerPre43",
    plugin_on_executor_class_path: true,
    row_checksums: false,
};

fn spark_home(line: &Line) -> anyhow::Result<PathBuf> {
    if let Ok(h) = std::env::var(line.home_var) {
        return Ok(h.into());
    }
    let py = cache().join(line.venv).join("bin/python");
    let out = std::process::Command::new(&py)
        .args(["-c", "import os, pyspark; print(os.path.dirname(pyspark.__file__))"])
        .output()
        .map_err(|e| anyhow::anyhow!("{}: {e}; run scripts/setup.sh", py.display()))?;
    anyhow::ensure!(out.status.success(), "pyspark is not installed in {}: run scripts/setup.sh", py.display());
    Ok(String::from_utf8(out.stdout)?.trim().into())
}

/// The plugin jar and the line's checks jar, as `shuffle-client/spark/build.sh` left them.
fn jars(line: &Line) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = cache().join("spark");
    let (plugin, checks) = (dir.join("shoal-spark.jar"), dir.join(line.checks_jar));
    for j in [&plugin, &checks] {
        anyhow::ensure!(j.exists(), "{} is missing: run shuffle-client/spark/build.sh", j.display());
    }
    Ok((plugin, checks))
}

/// The settings every Shoal session of the line needs besides the cluster's.
fn line_settings(line: &Line, plugin: &Path) -> Vec<String> {
    let mut s = vec![format!("spark.shuffle.manager={}", line.manager)];
    if line.plugin_on_executor_class_path {
        s.push(format!("spark.executor.extraClassPath={}", plugin.display()));
    }
    s
}

const CHECKS: &[&str] = &[
    "groupByKey",
    "shuffle-metrics",
    "reduceByKey-combine",
    "sortByKey",
    "dataframe-join-aggregate-aqe",
    "skewed-key",
    "2000-partitions-mostly-empty",
    "1MiB-records",
    "kryo",
    "leader-failover",
    "leader-failover-no-rerun",
    "scale-to-zero",
    "scale-to-zero-map-stage-skipped",
    "drained-worker",
    "drained-worker-no-rerun",
    "dead-attempt",
    "dead-attempt-not-read",
    "lost-data",
    "lost-data-map-stage-rerun",
    "replicated-loss",
    "replicated-loss-no-rerun",
];

/// The checks of lines with row checksums (Spark 4.1+) only.
const CHECKSUM_CHECKS: &[&str] = &["row-checksum-rollback"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spark_jobs_through_shoal_match_sort_shuffle_and_survive_losses() -> anyhow::Result<()> {
    checks_through_shoal(&SPARK_4_3).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spark35_jobs_through_shoal_match_sort_shuffle_and_survive_losses() -> anyhow::Result<()> {
    checks_through_shoal(&SPARK_3_5).await
}

async fn checks_through_shoal(line: &Line) -> anyhow::Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let (plugin, checks) = jars(line)?;
    let spark = spark_home(line)?;
    let started = std::time::Instant::now();

    let mut s3 = S3Server::start("shoal").await?;
    s3.export_env();
    // Each check that takes a worker away needs one more: the drain, lost data, the row
    // checksums (4.1+), and the replicated application, which needs two left when it starts.
    let workers = if line.row_checksums { 5 } else { 4 };
    // Three masters: a check kills the leader mid-job. Every node is a process of its own, so
    // the checks that take one away do it with `kill -9`.
    let mut cluster = Cluster::start_processes(3, workers, Some(format!("s3://{}/shuffle", s3.bucket))).await?;
    let TlsSource::Files { ca, .. } = cluster.tls.clone() else { anyhow::bail!("the cluster has no CA file") };
    // Outside the cluster's temporary directory, so it is there to read after a failure.
    let log = std::env::temp_dir().join(format!("shoal-spark-{}-checks.log", line.name));
    let mut child = tokio::process::Command::new(spark.join("bin/spark-submit"))
        .env("SPARK_HOME", &spark)
        .args(["--master", "local-cluster[2,1,1024]", "--class", "io.shoal.spark.it.SparkChecks"])
        .arg("--jars")
        .arg(&plugin)
        .arg(&checks)
        .arg(format!("spark.shoal.master.endpoints={}", cluster.master_addrs.join(",")))
        .arg(format!("spark.shoal.tls.ca={}", ca.display()))
        .arg(format!("spark.shoal.objectStore.url={}", cluster.object_store))
        .arg(format!("spark.shoal.auth.credentialFile={}", cluster.auth.tenants[0].1.display()))
        .arg("spark.shoal.network.timeout=5s")
        .args(line_settings(line, &plugin))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("no stdin"))?;
    let mut lines = BufReader::new(child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?).lines();
    let client = cluster.node_shuffle_client()?;

    let mut passed = Vec::new();
    let mut result = false;
    let mut stopped: Vec<String> = Vec::new();
    let run = async {
        while let Some(line) = lines.next_line().await? {
            println!("{line}");
            if let Some(name) = line.strip_prefix("CHECK ") {
                passed.push(name.split(' ').next().unwrap_or_default().to_string());
            } else if line == "SHOAL-RESULT ok" {
                result = true;
            } else if let Some(rest) = line.strip_prefix("SHOAL-EVENT stop-workers ") {
                // Once the shuffle is wholly in the object store, the whole worker pool goes.
                let mut it = rest.split(' ');
                let (app, sid) = (it.next().unwrap_or_default(), it.next().unwrap_or_default());
                let key = ShuffleKey::new(AppId::new(app)?, sid.parse()?, 0);
                let n = client.assignment(&key).await?.num_partitions;
                shoal_tests::eventually(Duration::from_secs(60), "every partition spilled", || async {
                    let plan = cluster.plan(&key, 0, n).await.ok()?;
                    plan.partitions
                        .iter()
                        .all(|p| p.sources.is_empty() && (!p.segments.is_empty() || p.expected.is_empty()))
                        .then_some(())
                })
                .await?;
                stopped = cluster.worker_ids();
                for id in &stopped {
                    cluster.stop_worker(id).await;
                }
                println!("stopped every worker ({}) once {key} was spilled", stopped.join(", "));
                stdin.write_all(b"ok\n").await?;
            } else if line == "SHOAL-EVENT start-workers" {
                for id in std::mem::take(&mut stopped) {
                    cluster.start_worker(&id).await?;
                }
                let want = cluster.worker_ids().len();
                shoal_tests::eventually(Duration::from_secs(30), "the workers active again", || async {
                    let st = cluster.status().await.ok()?;
                    (st.workers.iter().filter(|w| w.state == WorkerState::Active).count() >= want).then_some(())
                })
                .await?;
                stdin.write_all(b"ok\n").await?;
            } else if let Some(rest) = line.strip_prefix("SHOAL-EVENT drain-worker ") {
                // Decommission the owner of partition 0 while maps push to it; it leaves once
                // everything it holds is in the object store.
                let mut it = rest.split(' ');
                let (app, sid) = (it.next().unwrap_or_default(), it.next().unwrap_or_default());
                let key = ShuffleKey::new(AppId::new(app)?, sid.parse()?, 0);
                let victim = client.assignment(&key).await?.locations[0].primary.id.clone();
                let t0 = std::time::Instant::now();
                let _: Ack = cluster.mc.call_typed(DecommissionWorker { worker: victim.clone() }).await?;
                shoal_tests::eventually(Duration::from_secs(60), "the worker drained", || async {
                    let st = cluster.status().await.ok()?;
                    st.workers.iter().any(|w| w.id == victim && w.state == WorkerState::Decommissioned).then_some(())
                })
                .await?;
                cluster.stop_worker(victim.as_str()).await;
                println!("worker {victim} drained and removed in {:.1?}", t0.elapsed());
                stdin.write_all(b"ok\n").await?;
            } else if line == "SHOAL-EVENT kill-leader" {
                let t0 = std::time::Instant::now();
                let old = cluster.kill_leader().await?;
                let st = shoal_tests::eventually(Duration::from_secs(20), "a new leader", || async {
                    cluster.status().await.ok().filter(|s| s.leader.is_some_and(|l| l != old))
                })
                .await?;
                println!("killed leader master {old}; master {:?} leads after {:.1?}", st.leader, t0.elapsed());
                stdin.write_all(b"ok\n").await?;
            } else if line == "SHOAL-EVENT stop-object-store" {
                s3.stop();
                stdin.write_all(b"ok\n").await?;
            } else if let Some(rest) = line.strip_prefix("SHOAL-EVENT kill-worker ") {
                let mut it = rest.split(' ');
                let (app, sid) = (it.next().unwrap_or_default(), it.next().unwrap_or_default());
                let key = ShuffleKey::new(AppId::new(app)?, sid.parse()?, 0);
                let a = client.assignment(&key).await?;
                let victim = a.locations[0].primary.id.to_string();
                // Nothing of it may have reached the (stopped) object store.
                let plan = cluster.plan(&key, 0, a.num_partitions).await?;
                anyhow::ensure!(plan.partitions.iter().all(|p| p.segments.is_empty()), "data was spilled");
                println!("killing worker {victim}, owner of partition 0 of {key}");
                cluster.stop_worker(&victim).await;
                stdin.write_all(format!("ok {victim}\n").as_bytes()).await?;
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(900), run).await.map_err(|_| {
        anyhow::anyhow!("the Spark {} checks did not finish in 15 minutes; see {}", line.name, log.display())
    })??;
    let status = child.wait().await?;
    if !status.success() || !result {
        let tail = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().filter(|l| !l.trim_start().starts_with("at ")).collect();
        anyhow::bail!(
            "the Spark {} checks failed ({status}); last lines of the driver log ({}):\n{}",
            line.name,
            log.display(),
            tail[tail.len().saturating_sub(40)..].join("\n")
        );
    }
    let extra = if line.row_checksums { CHECKSUM_CHECKS } else { &[] };
    for want in CHECKS.iter().chain(extra) {
        anyhow::ensure!(
            passed.iter().any(|p| p == want),
            "Spark {}: check {want} did not pass; passed: {passed:?}",
            line.name
        );
    }
    println!("Spark {} checks passed in {:.0?}", line.name, started.elapsed());
    cluster.shutdown().await;
    Ok(())
}

/// A Spark standalone cluster whose two workers bind to different loopback addresses, so Spark
/// sees two hosts (it never runs a speculative copy on the host of the original attempt).
struct Standalone {
    url: String,
    _procs: Vec<tokio::process::Child>,
}

impl Standalone {
    async fn start(spark: &Path, dir: &Path) -> anyhow::Result<Standalone> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let class = spark.join("bin/spark-class");
        let spawn = |args: Vec<String>, log: &str| -> anyhow::Result<tokio::process::Child> {
            let out = std::fs::File::create(dir.join(log))?;
            Ok(tokio::process::Command::new(&class)
                .env("SPARK_HOME", spark)
                .args(args)
                .stdout(out.try_clone()?)
                .stderr(out)
                .kill_on_drop(true)
                .spawn()?)
        };
        let mut procs = vec![spawn(
            ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--webui-port", "0", "--port"]
                .iter()
                .map(|s| s.to_string())
                .chain([port.to_string()])
                .collect(),
            "spark-master.log",
        )?];
        shoal_tests::eventually(Duration::from_secs(60), "the Spark master listening", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
        })
        .await?;
        let url = format!("spark://127.0.0.1:{port}");
        for (i, host) in ["127.0.0.2", "127.0.0.3"].iter().enumerate() {
            let work = dir.join(format!("spark-worker-{i}"));
            std::fs::create_dir_all(&work)?;
            let args = [
                "org.apache.spark.deploy.worker.Worker",
                "--host",
                host,
                "--webui-port",
                "0",
                "--cores",
                "1",
                "--memory",
                "1g",
                "--work-dir",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([work.display().to_string(), url.clone()])
            .collect();
            procs.push(spawn(args, &format!("spark-worker-{i}.log"))?);
        }
        Ok(Standalone { url, _procs: procs })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn speculative_copies_through_shoal_give_exact_results() -> anyhow::Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let line = &SPARK_4_3;
    let (plugin, checks) = jars(line)?;
    let spark = spark_home(line)?;
    let cluster = Cluster::start(2).await?;
    let TlsSource::Files { ca, .. } = cluster.tls.clone() else { anyhow::bail!("the cluster has no CA file") };
    let standalone = Standalone::start(&spark, cluster.dir.path()).await?;
    let log = std::env::temp_dir().join("shoal-spark-speculation.log");
    let child = tokio::process::Command::new(spark.join("bin/spark-submit"))
        .env("SPARK_HOME", &spark)
        .args(["--master", &standalone.url, "--class", "io.shoal.spark.it.SparkChecks"])
        .args(["--conf", "spark.executor.memory=512m", "--conf", "spark.cores.max=2"])
        .arg("--jars")
        .arg(&plugin)
        .arg(&checks)
        .arg("--speculation")
        // Spark's IO encryption on: the plugin seals every batch with the application's key.
        .arg("spark.io.encryption.enabled=true")
        .arg(format!("spark.shoal.master.endpoints={}", cluster.master_addrs.join(",")))
        .arg(format!("spark.shoal.tls.ca={}", ca.display()))
        .arg(format!("spark.shoal.objectStore.url={}", cluster.object_store))
        .arg(format!("spark.shoal.auth.credentialFile={}", cluster.auth.tenants[0].1.display()))
        .args(line_settings(line, &plugin))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true)
        .spawn()?;
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .map_err(|_| anyhow::anyhow!("the speculation check did not finish in 5 minutes; see {}", log.display()))??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    anyhow::ensure!(
        out.status.success() && stdout.contains("SHOAL-RESULT ok"),
        "the speculation check failed ({}); see {} and the Spark logs under {}",
        out.status,
        log.display(),
        cluster.dir.path().display()
    );
    for want in ["CHECK speculation ok", "CHECK speculative-copies ok"] {
        anyhow::ensure!(stdout.contains(want), "missing `{want}`");
    }
    // Every batch the workers took was sealed by the application (none in plain).
    let sealed: u64 = cluster.workers.values().map(|w| w.metrics().sealed_batches.get()).sum();
    let batches: u64 = cluster.workers.values().map(|w| w.metrics().batches_pushed.get()).sum();
    println!("batches pushed: {batches}, sealed: {sealed}");
    anyhow::ensure!(batches > 0 && sealed == batches, "{sealed} of {batches} batches were sealed");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_errors_keep_their_kind_across_jni() -> anyhow::Result<()> {
    let (plugin, checks) = jars(&SPARK_4_3)?;
    let spark = spark_home(&SPARK_4_3)?;
    let cluster = Cluster::start(1).await?;
    let TlsSource::Files { ca, .. } = cluster.tls.clone() else { anyhow::bail!("the cluster has no CA file") };
    let classpath = format!("{}:{}:{}/jars/*", plugin.display(), checks.display(), spark.display());
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("java")
            .args(["-cp", &classpath, "io.shoal.spark.NativeChecks", &cluster.master_addrs.join(",")])
            .arg(&ca)
            .arg(&cluster.auth.tenants[0].1)
            .arg(&cluster.auth.tenants[1].1)
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    anyhow::ensure!(
        out.status.success() && stdout.contains("NATIVE-CHECKS ok"),
        "native checks failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.shutdown().await;
    Ok(())
}
