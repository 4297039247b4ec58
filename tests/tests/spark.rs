//! Real Spark through Shoal: the plugin jar built by `shuffle-client/spark/build.sh` (which
//! `scripts/test.sh` runs first), Spark from the pyspark package, local-cluster mode with
//! executors in their own JVMs. The checks themselves (`SparkChecks.java`) run every workload
//! under Spark's sort shuffle and through Shoal and compare the results exactly; this test owns
//! the cluster and acts on the events the checks ask for: stopping the object store and killing
//! the worker that holds a shuffle's unspilled data.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use shoal_tests::{Cluster, S3Server};
use shuffle_proto::transport::TlsSource;
use shuffle_proto::{AppId, ShuffleKey};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn cache() -> PathBuf {
    std::env::var("SHOAL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/shoal"))
}

fn spark_home() -> anyhow::Result<PathBuf> {
    if let Ok(h) = std::env::var("SPARK_HOME") {
        return Ok(h.into());
    }
    let py = cache().join("venv/bin/python");
    let out = std::process::Command::new(&py)
        .args(["-c", "import os, pyspark; print(os.path.dirname(pyspark.__file__))"])
        .output()
        .map_err(|e| anyhow::anyhow!("{}: {e}; run scripts/setup.sh", py.display()))?;
    anyhow::ensure!(out.status.success(), "pyspark is not installed in {}: run scripts/setup.sh", py.display());
    Ok(String::from_utf8(out.stdout)?.trim().into())
}

const CHECKS: &[&str] = &[
    "groupByKey",
    "reduceByKey-combine",
    "sortByKey",
    "dataframe-join-aggregate-aqe",
    "skewed-key",
    "2000-partitions-mostly-empty",
    "1MiB-records",
    "kryo",
    "scale-to-zero",
    "scale-to-zero-map-stage-skipped",
    "dead-attempt",
    "dead-attempt-not-read",
    "lost-data",
    "lost-data-map-stage-rerun",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spark_jobs_through_shoal_match_sort_shuffle_and_survive_losses() -> anyhow::Result<()> {
    let jars = cache().join("spark");
    let (plugin, checks) = (jars.join("shoal-spark.jar"), jars.join("shoal-spark-tests.jar"));
    for j in [&plugin, &checks] {
        anyhow::ensure!(j.exists(), "{} is missing: run shuffle-client/spark/build.sh", j.display());
    }
    let spark = spark_home()?;

    let mut s3 = S3Server::start("shoal").await?;
    s3.export_env();
    let mut cluster = Cluster::start_with_store(1, 2, Some(format!("s3://{}/shuffle", s3.bucket))).await?;
    let TlsSource::Files { ca, .. } = cluster.tls.clone() else { anyhow::bail!("the cluster has no CA file") };
    // Outside the cluster's temporary directory, so it is there to read after a failure.
    let log = std::env::temp_dir().join("shoal-spark-checks.log");
    let mut child = tokio::process::Command::new(spark.join("bin/spark-submit"))
        .env("SPARK_HOME", &spark)
        .args(["--master", "local-cluster[2,1,1024]", "--class", "io.shoal.spark.it.SparkChecks"])
        .arg("--jars")
        .arg(&plugin)
        .arg(&checks)
        .arg(format!("spark.shoal.master.endpoints={}", cluster.master_addrs.join(",")))
        .arg(format!("spark.shoal.tls.ca={}", ca.display()))
        .arg(format!("spark.shoal.objectStore.url={}", cluster.object_store))
        .arg("spark.shoal.network.timeout=5s")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("no stdin"))?;
    let mut lines = BufReader::new(child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?).lines();
    let client = cluster.shuffle_client()?;

    let mut passed = Vec::new();
    let mut result = false;
    let run = async {
        while let Some(line) = lines.next_line().await? {
            println!("{line}");
            if let Some(name) = line.strip_prefix("CHECK ") {
                passed.push(name.split(' ').next().unwrap_or_default().to_string());
            } else if line == "SHOAL-RESULT ok" {
                result = true;
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
    tokio::time::timeout(Duration::from_secs(900), run)
        .await
        .map_err(|_| anyhow::anyhow!("the Spark checks did not finish in 15 minutes; see {}", log.display()))??;
    let status = child.wait().await?;
    if !status.success() || !result {
        let tail = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().filter(|l| !l.trim_start().starts_with("at ")).collect();
        anyhow::bail!(
            "the Spark checks failed ({status}); last lines of the driver log ({}):\n{}",
            log.display(),
            tail[tail.len().saturating_sub(40)..].join("\n")
        );
    }
    for want in CHECKS {
        anyhow::ensure!(passed.iter().any(|p| p == want), "check {want} did not pass; passed: {passed:?}");
    }
    cluster.shutdown().await;
    Ok(())
}
