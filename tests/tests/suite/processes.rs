//! The real binaries as processes: a worker killed with SIGKILL and restarted on the same
//! disk loses nothing it acknowledged; bad settings fail fast with the key named.

use std::time::Duration;

use shoal_tests::*;
use shuffle_proto::batch::{BatchView, StreamRecords};
use shuffle_proto::messages::*;
use shuffle_proto::transport::{Client, ClientOptions, MasterClient, Tls, TlsSource};
use shuffle_proto::*;

/// Makes authentication material in `dir` and returns the master flags that use it.
fn auth_args(dir: &std::path::Path) -> Vec<String> {
    let f = shuffle_proto::auth::init_auth_dir(&dir.join("auth"), &["spark"], "admin").unwrap();
    vec![
        "--auth-principals".into(),
        f.principals.display().to_string(),
        "--auth-signing-keys".into(),
        f.signing_keys.display().to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_survives_kill_9_without_losing_acked_batches() {
    let dir = tempfile::tempdir().unwrap();
    let tls = shuffle_proto::transport::generate_cluster_tls(&dir.path().join("tls")).unwrap();
    let TlsSource::Files { cert, key, ca } = &tls else { unreachable!() };
    let tls_args = vec![
        "--tls-cert".to_string(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
        "--tls-ca".into(),
        ca.display().to_string(),
    ];
    let ports = free_ports(2);
    let master_addr = format!("127.0.0.1:{}", ports[0]);
    let worker_addr = format!("127.0.0.1:{}", ports[1]);
    let mut margs = vec![
        "--id".to_string(),
        "1".into(),
        "--listen".into(),
        master_addr.clone(),
        "--data-dir".into(),
        dir.path().join("m").display().to_string(),
        "--heartbeat-interval".into(),
        "200ms".into(),
        "--worker-timeout".into(),
        "10s".into(),
    ];
    margs.extend(tls_args.clone());
    margs.extend(auth_args(dir.path()));
    let _master = Proc::spawn("master", "shuffle-master", &margs, &dir.path().join("master.log")).unwrap();
    let mut wargs = vec![
        "--id".to_string(),
        "shoal-worker-0".into(),
        "--listen".into(),
        worker_addr.clone(),
        "--masters".into(),
        master_addr.clone(),
        "--data-dir".into(),
        dir.path().join("w").display().to_string(),
        "--object-store".into(),
        format!("file://{}", dir.path().join("objects").display()),
        "--heartbeat-interval".into(),
        "200ms".into(),
    ];
    wargs.extend(tls_args);
    let wlog = dir.path().join("worker.log");
    let mut worker = Proc::spawn("worker", "shuffle-worker", &wargs, &wlog).unwrap();

    let client = Client::new(&Tls::load(&tls).unwrap(), ClientOptions::default()).unwrap();
    let mc = MasterClient::new(client.clone(), vec![master_addr.clone()], Duration::from_secs(20)).unwrap();
    let app = AppId::new("app-k9").unwrap();
    let _: AppRegistered = mc.call_typed(RegisterApp { app: app.clone(), lease_ms: 600_000 }).await.unwrap();
    let shuffle = ShuffleKey::new(app, 0, 0);
    let a: ShuffleAssignment = eventually(Duration::from_secs(10), "worker registered", || async {
        mc.call_typed(RegisterShuffle { shuffle: shuffle.clone(), num_maps: 1, num_partitions: 2, replication: 1 })
            .await
            .ok()
    })
    .await
    .unwrap();

    let mut acked = Vec::new();
    for seq in 0..50u32 {
        let raw = rows(0, 0, 100, seq as u64);
        let mut batch = Vec::new();
        shuffle_proto::batch::encode_batch(&raw, shuffle_proto::batch::Codec::Lz4, &mut batch).unwrap();
        let loc = &a.locations[0];
        let msg = Message::PushBatch(PushBatch {
            shuffle: shuffle.clone(),
            partition: loc.partition,
            map: MapId(0),
            attempt: AttemptId(7),
            seq,
            epoch: loc.epoch,
            flags: 0,
        });
        let (reply, _) = client.call(&worker_addr, &msg, &batch).await.unwrap();
        reply.expect::<PushAck>().unwrap();
        acked.push(raw);
    }
    worker.kill9();
    let _worker = Proc::spawn("worker", "shuffle-worker", &wargs, &dir.path().join("worker2.log")).unwrap();

    let expected = [MapAttemptRef { map: MapId(0), attempt: AttemptId(7) }];
    // The old connection died with the process, without a close: drop it.
    client.forget(&worker_addr).await;
    let got = eventually(Duration::from_secs(15), "restarted worker serves", || async {
        let msg = Message::OpenPartition(OpenPartition {
            shuffle: shuffle.clone(),
            partition: PartitionId(0),
            start_map: MapId(0),
            end_map: MapId(1),
            attempts: expected.to_vec(),
        });
        let (_s, mut recv) = client.open(&worker_addr, &msg, &[]).await.ok()?;
        let mut out = Vec::new();
        let mut body = Vec::new();
        loop {
            match shuffle_proto::frame::read_frame(&mut recv, &FrameLimits::default(), &mut body).await.ok()? {
                Some(Message::Chunk(_)) => {
                    for r in StreamRecords::new(&body, 1 << 26) {
                        let mut raw = Vec::new();
                        BatchView::parse_exact(r.ok()?.batch, 1 << 26).ok()?.decode_into(&mut raw).ok()?;
                        out.push(raw);
                    }
                }
                Some(Message::EndOfStream(_)) => return Some(out),
                _ => return None,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got.len(), acked.len(), "every acknowledged batch survived kill -9");
    assert_eq!(got, acked);
}

#[test]
fn bad_settings_fail_fast_naming_the_key() {
    let out = std::process::Command::new(bin_path("shuffle-worker").unwrap())
        .args(["--id", "w", "--listen", "127.0.0.1:1", "--masters", "m:1", "--data-dir", "/tmp/x"])
        .args(["--object-store", "ftp://nope", "--tls-insecure", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("object_store"), "{err}");
    let out = std::process::Command::new(bin_path("shuffle-master").unwrap())
        .args(["--id", "1", "--listen", "not-an-address", "--data-dir", "/tmp/x", "--tls-insecure", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen"));
}

/// Masters may come up long after their workers (a fresh cluster, a full restart): a worker
/// keeps trying to register past its master client's 30 s deadline instead of exiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_before_its_masters_waits_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let tls = shuffle_proto::transport::generate_cluster_tls(&dir.path().join("tls")).unwrap();
    let TlsSource::Files { cert, key, ca } = &tls else { unreachable!() };
    let tls_args: Vec<String> = ["--tls-cert", &cert.display().to_string(), "--tls-key", &key.display().to_string()]
        .iter()
        .map(|s| s.to_string())
        .chain(["--tls-ca".to_string(), ca.display().to_string()])
        .collect();
    let ports = free_ports(2);
    let master_addr = format!("127.0.0.1:{}", ports[0]);
    let mut wargs: Vec<String> = ["--id", "shoal-worker-0", "--listen", &format!("127.0.0.1:{}", ports[1])]
        .iter()
        .map(|s| s.to_string())
        .collect();
    wargs.extend([
        "--masters".into(),
        master_addr.clone(),
        "--data-dir".into(),
        dir.path().join("w").display().to_string(),
    ]);
    wargs.extend(["--object-store".into(), format!("file://{}", dir.path().join("objects").display())]);
    wargs.extend(tls_args.clone());
    let mut worker = Proc::spawn("worker", "shuffle-worker", &wargs, &dir.path().join("worker.log")).unwrap();
    tokio::time::sleep(Duration::from_secs(35)).await;
    assert!(worker.child.try_wait().unwrap().is_none(), "the worker gave up waiting for its masters");

    let mut margs: Vec<String> = ["--id", "1", "--listen", &master_addr].iter().map(|s| s.to_string()).collect();
    margs.extend(["--data-dir".into(), dir.path().join("m").display().to_string()]);
    margs.extend(tls_args);
    margs.extend(auth_args(dir.path()));
    let _master = Proc::spawn("master", "shuffle-master", &margs, &dir.path().join("master.log")).unwrap();
    let client = Client::new(&Tls::load(&tls).unwrap(), ClientOptions::default()).unwrap();
    let mc = MasterClient::new(client, vec![master_addr], Duration::from_secs(20)).unwrap();
    eventually(Duration::from_secs(30), "the waiting worker registered", || async {
        let st: ClusterStatus = mc.call_typed(GetStatus {}).await.ok()?;
        st.workers.iter().any(|w| w.id.to_string() == "shoal-worker-0" && w.state == WorkerState::Active).then_some(())
    })
    .await
    .unwrap();
}
