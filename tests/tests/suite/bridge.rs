//! The JNI bridge's Rust half (what the Spark plugin calls) against a real cluster, without a
//! JVM: settings text, shared clients, chunks pushed and read back whole per generation, exact
//! map lists, handles closed once, and the assignment cache dropped when Spark forgets a shuffle.

use shoal_tests::*;
use shuffle_client::bridge::{Bridge, BridgeConfig, ReadNext, ShuffleShape};
use shuffle_client::{ClientError, ErrorKind};
use shuffle_proto::transport::TlsSource;
use shuffle_proto::{AppId, ShuffleKey};

fn read_all(b: &Bridge, h: i64) -> Result<Vec<Vec<u8>>, ClientError> {
    let mut buf = vec![0u8; 16];
    let mut out = Vec::new();
    loop {
        match b.read(h, &mut buf)? {
            ReadNext::Copied(n) => out.push(buf[..n].to_vec()),
            ReadNext::NeedCapacity(n) => buf.resize(n, 0),
            ReadNext::End => return Ok(out),
        }
    }
}

#[test]
fn bridge_writes_and_reads_chunks_by_generation_and_exact_maps() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let cluster = rt.block_on(Cluster::start(2))?;
    let TlsSource::Files { ca, .. } = cluster.tls.clone() else { anyhow::bail!("no CA file") };
    let base = format!(
        "masters={}\ntls.ca={}\nobject_store={}\ncall_timeout_ms=5000\n",
        cluster.master_addrs.join(","),
        ca.display(),
        cluster.object_store
    );
    // The driver presents its tenant's credential file.
    let settings = format!("{base}credential_file={}\n", cluster.auth.tenants[0].1.display());
    let cfg = BridgeConfig::parse(&settings)?;
    let b = Bridge::new(2)?;
    let c = b.open_client(&cfg)?;
    assert_eq!(b.open_client(&BridgeConfig::parse(&settings)?)?, c, "same settings, same client");
    let token = b.register_app(c, "app-bridge", std::time::Duration::from_secs(60))?;
    assert!(!token.is_empty(), "the driver gets a token for its executors");
    // An executor: the app token from the shuffle handle, no tenant secret.
    let exec = b.open_client(&BridgeConfig::parse(&format!("{base}app_token={token}\n"))?)?;
    assert_ne!(exec, c);
    assert!(
        BridgeConfig::parse(&format!("{base}app_token=not-a-token\n"))
            .is_err_and(|e| !e.to_string().contains("not-a-token")),
        "a bad token is refused without echoing it"
    );
    let gen = |g| ShuffleKey::new(AppId::new("app-bridge").unwrap(), 7, g);
    let shape = ShuffleShape { num_maps: 3, num_partitions: 2, replication: 1 };
    b.register_shuffle(c, &gen(0), shape)?;

    // Generation 0: maps 0..3; map 1 writes nothing to partition 1. Generation 1 (a re-run
    // stage, registered by its first writer): map 2 only, other bytes.
    let chunk = |g: u32, m: u32, p: u32, i: u32| format!("g{g}-m{m}-p{p}-c{i}-").repeat(50 + i as usize).into_bytes();
    for m in 0..3 {
        let w = b.open_writer(c, &gen(0), shape, m, 100 + u64::from(m))?;
        for p in 0..2 {
            if m == 1 && p == 1 {
                continue;
            }
            for i in 0..3 {
                b.write(w, p, &chunk(0, m, p, i))?;
            }
        }
        let done = b.commit(w)?;
        assert!(done.accepted);
        let want: u64 = (0..3).map(|i| chunk(0, m, 0, i).len() as u64).sum();
        assert_eq!(done.partition_bytes[0], want, "uncompressed sizes");
        assert!(done.partition_wire_bytes[0] > 0 && done.partition_wire_bytes[0] < want, "repetitive chunks compress");
        assert_eq!(done.partition_wire_bytes.iter().sum::<u64>(), done.wire_bytes);
        assert!(matches!(b.commit(w), Err(ClientError::BadHandle(_))), "a writer commits once");
    }
    // Generation 1 is written and read by the executor's client.
    let w = b.open_writer(exec, &gen(1), shape, 2, 900)?;
    b.write(w, 0, &chunk(1, 2, 0, 0))?;
    b.commit(w)?;
    // A writer that dies: its chunk must never be read.
    let dead = b.open_writer(c, &gen(1), shape, 2, 901)?;
    b.write(dead, 0, b"never read")?;
    b.abort(dead)?;

    // Spark's view: maps 0 and 1 in generation 0, map 2 in generation 1.
    let r0 = b.open_reader(c, &gen(0), 0, &[0, 1])?;
    let mut got = read_all(&b, r0)?;
    b.close_reader(r0)?;
    let r1 = b.open_reader(exec, &gen(1), 0, &[2])?;
    got.extend(read_all(&b, r1)?);
    b.close_reader(r1)?;
    let mut want: Vec<Vec<u8>> =
        (0..2).flat_map(|m| (0..3).map(move |i| chunk(0, m, 0, i))).chain([chunk(1, 2, 0, 0)]).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "each chunk whole, once, from the named generation and maps only");

    // Naming a map without data for the partition is lost data, not an empty read.
    let r = b.open_reader(c, &gen(0), 1, &[0, 1])?;
    let e = read_all(&b, r).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DataLost, "{e}");
    b.close_reader(r)?;
    assert_eq!(b.open_streams(), 0, "every handle closed");

    assert!(b.cached_assignments(c) >= 2);
    b.forget_shuffle(c, 7);
    assert_eq!(b.cached_assignments(c), 0);
    // Generation 0 is complete, so it seals and spills; then no worker holds it locally.
    let objects = std::path::PathBuf::from(cluster.object_store.trim_start_matches("file://")).join("app-bridge");
    let segments = |dir: std::path::PathBuf| -> usize {
        walk(&dir).iter().filter(|p| p.extension().is_some_and(|e| e == "seg")).count()
    };
    rt.block_on(eventually(std::time::Duration::from_secs(20), "generation 0 spilled", || async {
        let plan = cluster.plan(&gen(0), 0, 2).await.ok()?;
        plan.partitions.iter().all(|p| !p.segments.is_empty()).then_some(())
    }))?;
    assert!(segments(objects.join("7.0")) >= 2);
    b.unregister_shuffle(c, &gen(0))?;
    let status = rt.block_on(cluster.status())?;
    assert_eq!(status.shuffles, 0, "every generation unregistered");
    // Reading a removed shuffle is lost data (Spark recomputes it), not a refused request.
    let r = b.open_reader(c, &gen(0), 0, &[0])?;
    let e = read_all(&b, r).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DataLost, "{e}");
    b.close_reader(r)?;
    // The spilled objects of a removed shuffle are deleted too, though no worker holds it.
    rt.block_on(eventually(std::time::Duration::from_secs(20), "spilled objects deleted", || async {
        (segments(objects.join("7.0")) == 0).then_some(())
    }))?;
    b.unregister_app(c, "app-bridge")?;
    rt.block_on(cluster.shutdown());
    Ok(())
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
