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
    let admin = cluster["admin_credential"].as_str().unwrap().to_string();
    let tenant = cluster["tenant_credential"].as_str().unwrap().to_string();
    assert!(
        cluster["spark_conf"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str() == Some(&format!("spark.shoal.auth.credentialFile={tenant}"))),
        "local up hands Spark its tenant credential"
    );
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
        .args(["status", "--masters", &masters, "--tls-ca", &ca, "--credential-file", &admin, "--output", "json"])
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

    // Without the admin credential (none, or a tenant's) the cluster refuses: exit code 3.
    for cred in [None, Some(&tenant)] {
        let mut cmd = std::process::Command::new(bin_path("shoal").unwrap());
        cmd.args(["status", "--masters", &masters, "--tls-ca", &ca]).env_remove("SHOAL_CREDENTIAL");
        if let Some(c) = cred {
            cmd.args(["--credential-file", c]);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(3), "{cred:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("admin credential"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A table for people (the credential from the environment); a clear exit code when the
    // masters are unreachable.
    let admin_text = std::fs::read_to_string(&admin).unwrap();
    let out = std::process::Command::new(bin_path("shoal").unwrap())
        .args(["status", "--masters", &masters, "--tls-ca", &ca])
        .env("SHOAL_CREDENTIAL", admin_text.trim())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("shoal-worker-1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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

/// `shoal certs ca` then `shoal certs node`: the node certificate chains to the CA for
/// openssl and carries the cluster name, the pod DNS name and the IP as SANs.
#[test]
fn certs_ca_and_node_verify_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let out_dir = dir.path().join("nodes");
    let shoal = |args: &[&str]| {
        let out = std::process::Command::new(bin_path("shoal").unwrap()).args(args).output().unwrap();
        assert!(out.status.success(), "shoal {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ca_arg = ca_dir.display().to_string();
    let out_arg = out_dir.display().to_string();
    shoal(&["certs", "ca", "--out", &ca_arg, "--days", "30"]);
    shoal(&[
        "certs",
        "node",
        "--ca-dir",
        &ca_arg,
        "--name",
        "shoal-worker-0",
        "--dns",
        "shoal-worker-0.shoal-worker.ns.svc",
        "--ip",
        "127.0.0.1",
        "--out",
        &out_arg,
    ]);
    for f in [ca_dir.join("ca.key"), out_dir.join("shoal-worker-0.key")] {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600, "{}", f.display());
    }
    // A second `certs ca` into the same directory would orphan every issued certificate.
    let again = std::process::Command::new(bin_path("shoal").unwrap())
        .args(["certs", "ca", "--out", &ca_arg])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let openssl = std::path::Path::new("/usr/bin/openssl");
    if !openssl.exists() {
        eprintln!("note: /usr/bin/openssl is absent; skipping the openssl checks");
        return;
    }
    let ca_pem = ca_dir.join("ca.pem").display().to_string();
    let node_pem = out_dir.join("shoal-worker-0.pem").display().to_string();
    let out = std::process::Command::new(openssl).args(["verify", "-CAfile", &ca_pem, &node_pem]).output().unwrap();
    assert!(
        out.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(openssl)
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in", &node_pem])
        .output()
        .unwrap();
    assert!(out.status.success());
    let sans = String::from_utf8_lossy(&out.stdout);
    for want in ["DNS:shoal,", "DNS:shoal-worker-0.shoal-worker.ns.svc", "IP Address:127.0.0.1"] {
        assert!(sans.contains(want), "{want} not in {sans}");
    }
}
