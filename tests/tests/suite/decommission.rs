//! Decommission end to end with real processes: three workers; one drained in the middle of
//! writing, another after the seal; every byte reads back exact, the drained processes exit 0,
//! and the CLI reports the drain time.

use std::time::Duration;

use shoal_tests::*;
use shuffle_client::cli::local::LocalUp;
use shuffle_client::{ClientConfig, ShuffleClient};
use shuffle_proto::transport::TlsSource;
use shuffle_proto::*;

fn shoal_decommission(masters: &str, ca: &str, admin: &str, id: &str) -> tokio::task::JoinHandle<std::process::Output> {
    let (masters, ca, admin, id) = (masters.to_string(), ca.to_string(), admin.to_string(), id.to_string());
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin_path("shoal").unwrap())
            .args(["worker", "decommission", &id, "--wait", "--timeout", "60s", "--output", "json"])
            .args(["--masters", &masters, "--tls-ca", &ca, "--credential-file", &admin])
            .output()
            .unwrap()
    })
}

/// Runs `shoal ARGS` against a local cluster as its admin.
fn shoal_admin(file: &shuffle_client::cli::local::ClusterFile, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin_path("shoal").unwrap())
        .args(args)
        .args(["--masters", &file.master_endpoints])
        .arg("--tls-ca")
        .arg(&file.tls_ca)
        .arg("--credential-file")
        .arg(&file.admin_credential)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_one_worker_while_writing_and_another_after_seal() {
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = bin_path("shoal").unwrap().parent().unwrap().to_path_buf();
    let up =
        LocalUp { masters: 1, workers: 3, data_dir: dir.path().join("c"), object_store: None, base_port: 0, bin_dir };
    let mut cluster = up.start().await.unwrap();
    let masters = cluster.file.master_endpoints.clone();
    let ca = cluster.file.tls_ca.display().to_string();
    let admin = cluster.file.admin_credential.display().to_string();
    let mut cfg =
        ClientConfig::new(masters.split(',').map(String::from).collect(), TlsSource::CaOnly { ca: ca.clone().into() });
    cfg.credential = Some(shuffle_proto::auth::Credential::load_secret_file(&cluster.file.tenant_credential).unwrap());
    cfg.batch_bytes = 16 << 10;
    let sc = ShuffleClient::new(cfg).unwrap();
    let app = AppId::new("app-drain").unwrap();
    sc.register_app(&app, Duration::from_secs(600)).await.unwrap();
    let k = ShuffleKey::new(app, 0, 0);
    let a = sc.register_shuffle(&k, 4, 6, 1).await.unwrap();

    let write = |maps: std::ops::Range<u32>| {
        let (sc, k) = (sc.clone(), k.clone());
        async move {
            for m in maps {
                let a = sc.assignment(&k).await.unwrap();
                let mut w = sc.map_writer(&a, MapId(m), AttemptId(m as u64));
                for p in 0..6 {
                    w.write(p, &rows(m, p, 300, 3)).await.unwrap();
                }
                assert!(w.commit().await.unwrap().accepted);
            }
        }
    };
    write(0..2).await;
    // Drain the owner of partition 0 while maps 2 and 3 are still to be written.
    let first = a.locations[0].primary.id.to_string();
    let drain1 = shoal_decommission(&masters, &ca, &admin, &first);
    write(2..4).await;
    let out = drain1.await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["state"], "decommissioned");
    println!("drained {first}: {} bytes in {:.2} s", report["bytes_at_start"], report["seconds"].as_f64().unwrap());
    let status = eventually(Duration::from_secs(20), "drained worker exits", || {
        let s = cluster.exited(&first);
        async move { s }
    })
    .await
    .unwrap();
    assert!(status.success(), "the drained worker exits 0: {status:?}");

    // After the seal, drain a second worker.
    let second = a.locations.iter().map(|l| l.primary.id.to_string()).find(|w| *w != first).unwrap();
    let out = shoal_decommission(&masters, &ca, &admin, &second).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("drained {second}: {} bytes in {:.2} s", report["bytes_at_start"], report["seconds"].as_f64().unwrap());
    let status = eventually(Duration::from_secs(20), "second worker exits", || {
        let s = cluster.exited(&second);
        async move { s }
    })
    .await
    .unwrap();
    assert!(status.success());

    for p in 0..6u32 {
        let mut s = sc.read_partition(&k, p, 0, 4);
        let mut got = Vec::new();
        while let Some(b) = s.next().await.unwrap() {
            got.extend(b);
        }
        let want: Vec<u8> = (0..4).flat_map(|m| rows(m, p, 300, 3)).collect();
        assert_same_units(&got, &want, 100, &format!("partition {p}"));
    }

    // Scaling in for good: a decommissioned worker can be removed, an active one cannot.
    let active = cluster.file.workers.iter().map(|w| w.id.clone()).find(|w| *w != first && *w != second).unwrap();
    let refused = shoal_admin(&cluster.file, &["worker", "remove", &active]);
    assert!(!refused.status.success(), "an active worker must be decommissioned first");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("decommission it first"));
    let removed = shoal_admin(&cluster.file, &["worker", "remove", &first]);
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    let list = shoal_admin(&cluster.file, &["workers", "list", "--output", "json"]);
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(!list.contains(&format!("\"{first}\"")) && list.contains(&format!("\"{active}\"")), "{list}");
    cluster.stop();
}

/// Recommission reaches the worker process: a worker whose drain cannot finish (its object
/// store is broken) is recommissioned, takes pushes again, and everything reads back once the
/// store is repaired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recommissioned_worker_takes_pushes_again() {
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = bin_path("shoal").unwrap().parent().unwrap().to_path_buf();
    let objects = dir.path().join("objects");
    std::fs::create_dir_all(&objects).unwrap();
    let up = LocalUp {
        masters: 1,
        workers: 2,
        data_dir: dir.path().join("c"),
        object_store: Some(format!("file://{}", objects.display())),
        base_port: 0,
        bin_dir,
    };
    let mut cluster = up.start().await.unwrap();
    let masters = cluster.file.master_endpoints.clone();
    let ca = cluster.file.tls_ca.display().to_string();
    let mut cfg =
        ClientConfig::new(masters.split(',').map(String::from).collect(), TlsSource::CaOnly { ca: ca.clone().into() });
    cfg.object_store = Some(format!("file://{}", objects.display()));
    cfg.credential = Some(shuffle_proto::auth::Credential::load_secret_file(&cluster.file.tenant_credential).unwrap());
    cfg.batch_bytes = 16 << 10;
    let sc = ShuffleClient::new(cfg).unwrap();
    let app = AppId::new("app-recommission").unwrap();
    sc.register_app(&app, Duration::from_secs(600)).await.unwrap();
    let write = |k: ShuffleKey, m: u32| {
        let sc = sc.clone();
        async move {
            let a = sc.assignment(&k).await.unwrap();
            let mut w = sc.map_writer(&a, MapId(m), AttemptId(m as u64));
            for p in 0..4 {
                w.write(p, &rows(m, p, 200, 5)).await.unwrap();
            }
            assert!(w.commit().await.unwrap().accepted);
        }
    };
    // One of two maps written: the shuffle keeps writing, its data stays on the workers.
    let k1 = ShuffleKey::new(app.clone(), 0, 0);
    let a1 = sc.register_shuffle(&k1, 2, 4, 1).await.unwrap();
    write(k1.clone(), 0).await;
    let target = a1.locations[0].primary.id.to_string();

    // A broken store: the drain cannot finish.
    std::fs::remove_dir_all(&objects).unwrap();
    std::fs::write(&objects, b"not a directory").unwrap();
    let out = shoal_admin(&cluster.file, &["worker", "decommission", &target]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let state = |out: std::process::Output| -> String {
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let w = st["workers"].as_array().unwrap().iter().find(|w| w["id"] == target.as_str()).cloned().unwrap();
        w["state"].as_str().unwrap().to_string()
    };
    assert_eq!(state(shoal_admin(&cluster.file, &["status", "--output", "json"])), "decommissioning");
    let out = shoal_admin(&cluster.file, &["worker", "recommission", &target]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(state(shoal_admin(&cluster.file, &["status", "--output", "json"])), "active");

    // The process itself takes pushes again: a raw push to a partition it owns is acked.
    let k2 = ShuffleKey::new(app.clone(), 1, 0);
    let a2 = sc.register_shuffle(&k2, 2, 4, 1).await.unwrap();
    let loc =
        a2.locations.iter().find(|l| l.primary.id.as_str() == target).expect("the worker gets placements").clone();
    let client = shuffle_proto::transport::Client::new(
        &shuffle_proto::transport::Tls::load(&TlsSource::CaOnly { ca: ca.clone().into() }).unwrap(),
        Default::default(),
    )
    .unwrap();
    let mut batch = Vec::new();
    shuffle_proto::batch::encode_batch(b"probe", shuffle_proto::batch::Codec::Lz4, &mut batch).unwrap();
    let push = shuffle_proto::messages::PushBatch {
        shuffle: k2.clone(),
        partition: loc.partition,
        map: MapId(9),
        attempt: AttemptId(9),
        seq: 0,
        epoch: loc.epoch,
        flags: 0,
    };
    let ack = eventually(Duration::from_secs(10), "the recommissioned worker acks a push", || {
        let (client, addr, push, cap, batch) =
            (client.clone(), loc.primary.addr.clone(), push.clone(), a2.capability.clone(), batch.clone());
        async move {
            let (reply, _) = client.call_as(&addr, &push.into(), &cap, &batch).await.ok()?;
            reply.expect::<shuffle_proto::messages::PushAck>().ok()
        }
    })
    .await;
    assert!(ack.is_ok(), "still refused after recommission");
    assert!(cluster.exited(&target).is_none(), "the worker process runs on");

    // Store repaired: every shuffle completes and reads back exact.
    std::fs::remove_file(&objects).unwrap();
    std::fs::create_dir_all(&objects).unwrap();
    write(k1.clone(), 1).await;
    write(k2.clone(), 0).await;
    write(k2.clone(), 1).await;
    for k in [&k1, &k2] {
        for p in 0..4u32 {
            let mut s = sc.read_partition_maps(k, p, &[0, 1]);
            let mut got = Vec::new();
            while let Some(b) = s.next().await.unwrap() {
                got.extend(b);
            }
            let want: Vec<u8> = (0..2).flat_map(|m| rows(m, p, 200, 5)).collect();
            assert_same_units(&got, &want, 100, &format!("{k} partition {p}"));
        }
    }
    cluster.stop();
}
