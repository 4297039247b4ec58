//! The `shoal` binary: `local up` starts a cluster of child processes and writes
//! cluster.json; `status` reads it as a table or JSON; SIGTERM stops every child.

use std::time::Duration;

use shoal_tests::*;

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_up_status_and_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cluster");
    let args: Vec<String> = ["local", "up", "--masters", "3", "--workers", "2", "--data-dir"]
        .iter()
        .map(|s| s.to_string())
        .chain([data.display().to_string()])
        .collect();
    let mut up = Proc::spawn("shoal", "shoal", &args, &dir.path().join("up.log")).unwrap();
    let file = data.join("cluster.json");
    let cluster: serde_json::Value = eventually(Duration::from_secs(60), "cluster.json", || async {
        let text = std::fs::read_to_string(&file).ok()?;
        serde_json::from_str(&text).ok()
    })
    .await
    .unwrap();
    let masters = cluster["master_endpoints"].as_str().unwrap().to_string();
    let ca = cluster["tls_ca"].as_str().unwrap().to_string();
    let pids: Vec<u32> = ["masters", "workers"]
        .iter()
        .flat_map(|k| cluster[*k].as_array().unwrap().iter().map(|n| n["pid"].as_u64().unwrap() as u32))
        .collect();
    assert_eq!(pids.len(), 5);
    assert!(pids.iter().all(|p| alive(*p)));
    for n in cluster["workers"].as_array().unwrap() {
        assert_eq!(n["role"], "worker");
        assert!(n["addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    }

    let out = std::process::Command::new(bin_path("shoal").unwrap())
        .args(["status", "--masters", &masters, "--tls-ca", &ca, "--output", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(st["leader"].is_u64());
    assert_eq!(st["masters"].as_array().unwrap().len(), 3);
    assert_eq!(st["masters"].as_array().unwrap().iter().filter(|m| m["role"] == "leader").count(), 1);
    let workers = st["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    assert!(workers.iter().all(|w| w["state"] == "active" && w["bytes_held"].is_u64() && w["partitions"].is_u64()));

    // A table for people; a clear exit code when the masters are unreachable.
    let out = std::process::Command::new(bin_path("shoal").unwrap())
        .args(["status", "--masters", &masters, "--tls-ca", &ca])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("shoal-worker-1"));
    let out = std::process::Command::new(bin_path("shoal").unwrap())
        .args(["status", "--masters", "127.0.0.1:9", "--tls-ca", &ca])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    // SIGTERM stops everything.
    let status = up.terminate().unwrap();
    assert!(status.success(), "{status:?}");
    for p in pids {
        assert!(!alive(p), "child {p} still running");
    }
}
