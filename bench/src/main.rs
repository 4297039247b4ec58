//! `shoal-bench`: a load generator. M mappers push 100-byte records into R partitions through
//! a Shoal cluster, every partition is read back and checked, and the same data goes through
//! two baselines measured in the same run: raw QUIC (the same pushes to a server that stores
//! nothing) and Spark-style local shuffle files (one data file per map, read back per
//! partition). Results are throughputs, push latency percentiles, worker memory, and ratios.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use serde::Serialize;
use shuffle_client::cli::local::LocalUp;
use shuffle_client::{ClientConfig, ShuffleClient};
use shuffle_proto::batch::{encode_batch, Codec};
use shuffle_proto::messages::{Message, PushAck, PushBatch};
use shuffle_proto::transport::{
    serve, server_endpoint, CallInfo, Client, ClientOptions, Handler, Responder, ServerOptions, Tls, TlsSource,
};
use shuffle_proto::{AppId, AttemptId, Epoch, MapId, PartitionId, ProtoError, ShuffleKey};

const RECORD: usize = 100;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Parser, Debug)]
#[command(name = "shoal-bench", about = "Shoal load generator with same-run baselines")]
struct Args {
    /// Master endpoints of a running cluster.
    #[arg(long, value_delimiter = ',', conflicts_with = "local")]
    masters: Vec<String>,
    /// Start a local cluster (child processes) for the run.
    #[arg(long)]
    local: bool,
    /// Workers of the local cluster.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Cluster CA (with --masters).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Override of the object store spilled partitions are read from (the masters name the
    /// workers' store; credentials come from AWS_* either way).
    #[arg(long)]
    object_store: Option<String>,
    /// A tenant's credential file (with --masters); else SHOAL_CREDENTIAL is used.
    #[arg(long, env = "SHOAL_CREDENTIAL_FILE")]
    credential_file: Option<PathBuf>,
    #[arg(long, default_value_t = 8)]
    mappers: u32,
    #[arg(long, default_value_t = 64)]
    partitions: u32,
    /// Total bytes of records, e.g. 256MiB.
    #[arg(long, default_value = "256MiB")]
    bytes: String,
    /// Uncompressed bytes per pushed batch.
    #[arg(long, default_value = "256KiB")]
    batch: String,
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    #[arg(long, value_enum, default_value = "table")]
    output: Output,
    /// Measure the master instead: time to register a large shuffle and map commits per second.
    #[arg(long)]
    metadata: bool,
    /// Masters of the local cluster (with --local).
    #[arg(long, default_value_t = 1)]
    local_masters: usize,
    /// Measure a decommission instead (with --local): push `--bytes`, drain the worker holding
    /// the most to the object store, against a raw multipart PUT of the same bytes.
    #[arg(long, requires = "local")]
    decommission: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    mappers: u32,
    partitions: u32,
    bytes: u64,
    shoal_push_mib_s: f64,
    shoal_read_mib_s: f64,
    push_p50_ms: f64,
    push_p99_ms: f64,
    wire_ratio: f64,
    read_from_segments: u64,
    read_from_workers: u64,
    worker_peak_rss_mib: Vec<f64>,
    raw_quic_push_mib_s: f64,
    /// Pre-encoded batches over raw QUIC: the transport alone, in bytes on the wire.
    transport_wire_mib_s: f64,
    transport_avg_datagram_bytes: u64,
    transport_datagrams_per_send: f64,
    local_files_write_mib_s: f64,
    local_files_read_mib_s: f64,
    ratio_push_vs_raw_quic: f64,
    ratio_push_vs_local_files: f64,
    ratio_read_vs_local_files: f64,
    verified: bool,
}

/// The records map `m` writes to partition `p`: deterministic, mildly compressible.
fn records(m: u32, p: u32, bytes: usize) -> Vec<u8> {
    let n = bytes / RECORD;
    let mut out = Vec::with_capacity(n * RECORD);
    let mut x = (m as u64) << 32 | p as u64 | 1;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let head = format!("{m:06}|{p:06}|{i:010}|{x:016x}|");
        out.extend_from_slice(head.as_bytes());
        out.extend(std::iter::repeat_n(b'a' + (x % 26) as u8, RECORD - head.len()));
    }
    out
}

/// Order-free digest of a byte stream of records: count and wrapping CRC sum per record.
fn digest(data: &[u8]) -> (u64, u32) {
    data.chunks(RECORD).fold((0, 0), |(n, s), r| (n + 1, s.wrapping_add(crc32fast::hash(r))))
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64().max(1e-9)
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(String::from))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn bar(len: u64, what: &str, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template("{msg:>12} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b.set_message(what.to_string());
    b
}

struct NoStore;

impl Handler for NoStore {
    async fn handle(&self, _p: &CallInfo, req: Message, _body: Vec<u8>, out: &mut Responder) -> Result<(), ProtoError> {
        match req {
            Message::PushBatch(p) => out.send(&Message::PushAck(PushAck { seq: p.seq }), &[]).await,
            other => out.send(&other, &[]).await,
        }
    }
}

/// One raw-QUIC run: its time, the bytes it put in batches, and what the transport sent.
struct RawRun {
    time: Duration,
    wire_bytes: u64,
    datagrams: u64,
    udp_bytes: u64,
    send_calls: u64,
}

/// The batches map `m` pushes to partition `p`, lz4-compressed as the Shoal run sends them.
fn encoded_batches(m: u32, p: u32, per: usize, batch: usize) -> anyhow::Result<Arc<Vec<Vec<u8>>>> {
    let mut out = Vec::new();
    for raw in records(m, p, per).chunks(batch) {
        let mut enc = Vec::new();
        encode_batch(raw, Codec::Lz4, &mut enc)?;
        out.push(enc);
    }
    Ok(Arc::new(out))
}

/// The same batches as the Shoal run, pushed to a QUIC server that stores nothing. With
/// `pre_encoded`, records are generated and compressed before the clock starts, so the time is
/// the transport's alone; otherwise inside it, as the Shoal run does.
async fn raw_quic(args: &Args, per: usize, batch: usize, pre_encoded: bool) -> anyhow::Result<RawRun> {
    let tls = Tls::load(&TlsSource::Insecure)?;
    let opts = ServerOptions::for_tls(&tls);
    let ep = server_endpoint("127.0.0.1:0".parse()?, &tls, &opts)?;
    let addr = ep.local_addr()?.to_string();
    tokio::spawn(serve(ep.clone(), Arc::new(NoStore), opts));
    let client = Client::new(&tls, ClientOptions::default())?;
    let key = ShuffleKey::new(AppId::new("bench-raw")?, 0, 0);
    let mut ready: Vec<Vec<Arc<Vec<Vec<u8>>>>> = Vec::new();
    if pre_encoded {
        for m in 0..args.mappers {
            ready.push((0..args.partitions).map(|p| encoded_batches(m, p, per, batch)).collect::<anyhow::Result<_>>()?);
        }
    }
    let ready = Arc::new(ready);
    let wire = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let t0 = Instant::now();
    let mut maps = tokio::task::JoinSet::new();
    for m in 0..args.mappers {
        let (client, addr, key, ready, wire) = (client.clone(), addr.clone(), key.clone(), ready.clone(), wire.clone());
        let (parts, in_flight) = (args.partitions, args.in_flight);
        maps.spawn(async move {
            let sem = Arc::new(tokio::sync::Semaphore::new(in_flight));
            let mut pushes = tokio::task::JoinSet::new();
            for p in 0..parts {
                let batches = match ready.get(m as usize) {
                    Some(r) => r[p as usize].clone(),
                    None => encoded_batches(m, p, per, batch)?,
                };
                for seq in 0..batches.len() {
                    let permit = sem.clone().acquire_owned().await?;
                    let msg = Message::PushBatch(PushBatch {
                        shuffle: key.clone(),
                        partition: PartitionId(p),
                        map: MapId(m),
                        attempt: AttemptId(m as u64),
                        seq: seq as u32,
                        epoch: Epoch(1),
                        flags: 0,
                    });
                    wire.fetch_add(batches[seq].len() as u64, std::sync::atomic::Ordering::Relaxed);
                    let (client, addr, batches) = (client.clone(), addr.clone(), batches.clone());
                    pushes.spawn(async move {
                        let r = client.call(&addr, &msg, &batches[seq]).await;
                        drop(permit);
                        r.map(|_| ())
                    });
                }
            }
            while let Some(r) = pushes.join_next().await {
                r??;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = maps.join_next().await {
        r??;
    }
    let time = t0.elapsed();
    let st = client.connection(&addr).await?.stats();
    ep.close(0u32.into(), b"done");
    Ok(RawRun {
        time,
        wire_bytes: wire.load(std::sync::atomic::Ordering::Relaxed),
        datagrams: st.udp_tx.datagrams,
        udp_bytes: st.udp_tx.bytes,
        send_calls: st.udp_tx.ios,
    })
}

/// Spark-style shuffle files: per map one data file with partitions in order plus offsets;
/// the read side fetches each partition's slice of every map file.
fn local_files(args: &Args, per: usize) -> anyhow::Result<(Duration, Duration, bool)> {
    let dir = tempfile::tempdir()?;
    let t0 = Instant::now();
    let mut offsets = Vec::new();
    for m in 0..args.mappers {
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.path().join(format!("shuffle_{m}.data")))?);
        let mut off = vec![0u64];
        for p in 0..args.partitions {
            let mut enc = Vec::new();
            encode_batch(&records(m, p, per), Codec::Lz4, &mut enc)?;
            f.write_all(&enc)?;
            off.push(off[p as usize] + enc.len() as u64);
        }
        f.flush()?;
        offsets.push(off);
    }
    let write = t0.elapsed();
    let t1 = Instant::now();
    let mut ok = true;
    for p in 0..args.partitions {
        let mut all = Vec::new();
        for m in 0..args.mappers {
            let off = &offsets[m as usize];
            let mut f = std::fs::File::open(dir.path().join(format!("shuffle_{m}.data")))?;
            f.seek(SeekFrom::Start(off[p as usize]))?;
            let mut buf = vec![0u8; (off[p as usize + 1] - off[p as usize]) as usize];
            f.read_exact(&mut buf)?;
            shuffle_proto::batch::BatchView::parse_exact(&buf, u32::MAX)?.decode_into(&mut all)?;
        }
        ok &= all.len() == per * args.mappers as usize;
    }
    Ok((write, t1.elapsed(), ok))
}

#[derive(Debug, Serialize)]
struct MetadataReport {
    masters: usize,
    register_partitions: u32,
    register_ms_median: f64,
    register_ms_runs: Vec<f64>,
    commits: u32,
    commit_concurrency: usize,
    commits_per_s: f64,
    commit_p50_ms: f64,
    commit_p99_ms: f64,
}

/// Master throughput: registering a 10 000-partition shuffle, and map commits per second.
async fn metadata(args: &Args, sc: &ShuffleClient) -> anyhow::Result<()> {
    use shuffle_proto::messages::{CommitMap, PartitionStat};
    let app = AppId::new(format!("meta-{}", std::process::id()))?;
    sc.register_app(&app, Duration::from_secs(3600)).await?;
    let parts = 10_000u32;
    let mut runs = Vec::new();
    for s in 0..5u32 {
        let t = Instant::now();
        sc.register_shuffle(&ShuffleKey::new(app.clone(), s, 0), 1000, parts, 1).await?;
        runs.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let mut sorted = runs.clone();
    sorted.sort_by(f64::total_cmp);
    let commits = 4000u32;
    let key = ShuffleKey::new(app.clone(), 100, 0);
    let a = sc.register_shuffle(&key, commits, 200, 1).await?;
    let conc = 64usize;
    let sem = Arc::new(tokio::sync::Semaphore::new(conc));
    let mut tasks = tokio::task::JoinSet::new();
    let t = Instant::now();
    for m in 0..commits {
        let permit = sem.clone().acquire_owned().await?;
        let (sc, key) = (sc.clone(), key.clone());
        // Each map wrote to 10 partitions.
        let partitions: Vec<PartitionStat> = (0..10u32)
            .map(|i| {
                let loc = &a.locations[((m * 10 + i) % 200) as usize];
                (loc.partition, loc.epoch)
            })
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .map(|(p, e)| PartitionStat { partition: p, bytes: 1000, crc_sum: m, batches: 1, epochs: vec![e] })
            .collect();
        tasks.spawn(async move {
            let t0 = Instant::now();
            let msg = CommitMap { shuffle: key, map: MapId(m), attempt: AttemptId(m as u64), partitions };
            let res = commit(&sc, msg).await;
            drop(permit);
            res.map(|_| t0.elapsed())
        });
    }
    let mut lat = Vec::new();
    while let Some(r) = tasks.join_next().await {
        lat.push((r??.as_micros()) as u32);
    }
    let elapsed = t.elapsed();
    lat.sort_unstable();
    let report = MetadataReport {
        masters: args.local_masters,
        register_partitions: parts,
        register_ms_median: sorted[sorted.len() / 2],
        register_ms_runs: runs,
        commits,
        commit_concurrency: conc,
        commits_per_s: commits as f64 / elapsed.as_secs_f64(),
        commit_p50_ms: percentile(&lat, 0.5),
        commit_p99_ms: percentile(&lat, 0.99),
    };
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => {
            println!("{} master(s)", report.masters);
            println!(
                "register a {}-partition shuffle: median {:.1} ms (runs {:?})",
                parts, report.register_ms_median, report.register_ms_runs
            );
            println!(
                "map commits: {:.0}/s with {} in flight (p50 {:.2} ms, p99 {:.2} ms)",
                report.commits_per_s, conc, report.commit_p50_ms, report.commit_p99_ms
            );
        }
    }
    let _ = sc.unregister_app(&app).await;
    Ok(())
}

async fn commit(sc: &ShuffleClient, msg: shuffle_proto::messages::CommitMap) -> anyhow::Result<()> {
    let r = sc.commit_map(msg).await?;
    anyhow::ensure!(r.accepted, "commit not accepted");
    Ok(())
}

/// What the push phase measured and the digests the read phase checks against.
struct Pushed {
    time: Duration,
    wire_bytes: u64,
    latencies_us: Vec<u32>,
    /// Per partition: record count and CRC sum of what was written.
    want: Vec<(u64, u32)>,
}

/// Every mapper writes `per` bytes of records to every partition and commits.
async fn push_all(
    sc: &ShuffleClient,
    assignment: &shuffle_proto::messages::ShuffleAssignment,
    args: &Args,
    per: usize,
    quiet: bool,
) -> anyhow::Result<Pushed> {
    let bytes = per as u64 * args.mappers as u64 * args.partitions as u64;
    let pb = bar(bytes, "push", quiet);
    let t0 = Instant::now();
    let mut maps = tokio::task::JoinSet::new();
    for m in 0..args.mappers {
        let (sc, a, pb, parts) = (sc.clone(), assignment.clone(), pb.clone(), args.partitions);
        maps.spawn(async move {
            let mut w = sc.map_writer(&a, MapId(m), AttemptId(m as u64));
            // Digests of what was written, so the read side checks without regenerating.
            let mut digests = Vec::with_capacity(parts as usize);
            for p in 0..parts {
                let data = records(m, p, per);
                digests.push(digest(&data));
                for rec in data.chunks(64 * RECORD) {
                    w.write(p, rec).await?;
                }
                pb.inc(data.len() as u64);
            }
            anyhow::Ok((w.commit().await?, digests))
        });
    }
    let mut lat = Vec::new();
    let mut wire = 0u64;
    let mut want = vec![(0u64, 0u32); args.partitions as usize];
    while let Some(r) = maps.join_next().await {
        let (out, digests) = r??;
        for (w, d) in want.iter_mut().zip(digests) {
            *w = (w.0 + d.0, w.1.wrapping_add(d.1));
        }
        anyhow::ensure!(out.accepted, "a map commit was not accepted");
        lat.extend(out.push_latencies_us);
        wire += out.wire_bytes;
    }
    let time = t0.elapsed();
    pb.finish_and_clear();
    Ok(Pushed { time, wire_bytes: wire, latencies_us: lat, want })
}

/// Reads every partition back (maps `[0, maps)`), four at a time, and checks it against
/// `want`: (time, all matched, batches from segments, batches from workers).
async fn read_all(
    sc: &ShuffleClient,
    key: &ShuffleKey,
    want: &[(u64, u32)],
    maps: u32,
    quiet: bool,
) -> anyhow::Result<(Duration, bool, u64, u64)> {
    let bytes = want.iter().map(|w| w.0).sum::<u64>() * RECORD as u64;
    let pb = bar(bytes, "read", quiet);
    let t1 = Instant::now();
    let mut reads = tokio::task::JoinSet::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(4));
    for (p, want) in want.iter().enumerate() {
        let (sc, key, pb, sem, want) = (sc.clone(), key.clone(), pb.clone(), sem.clone(), *want);
        reads.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let mut s = sc.read_partition(&key, p as u32, 0, maps);
            let (mut n, mut crc) = (0u64, 0u32);
            while let Some(b) = s.next().await? {
                let (dn, dc) = digest(&b);
                n += dn;
                crc = crc.wrapping_add(dc);
                pb.inc(b.len() as u64);
            }
            let stats = s.stats().unwrap_or_default();
            anyhow::Ok(((n, crc) == want, stats))
        });
    }
    let (mut verified, mut from_seg, mut from_workers) = (true, 0, 0);
    while let Some(r) = reads.join_next().await {
        let (ok, st) = r??;
        verified &= ok;
        from_seg += st.from_segments;
        from_workers += st.from_workers;
    }
    let read = t1.elapsed();
    pb.finish_and_clear();
    Ok((read, verified, from_seg, from_workers))
}

#[derive(Debug, Serialize)]
struct DecommissionReport {
    /// Bytes the drain wrote to the object store (segments, compressed).
    bytes: u64,
    drain_seconds: f64,
    drain_mib_s: f64,
    /// A raw multipart PUT of the same number of bytes to the same store, same part size.
    put_seconds: f64,
    put_mib_s: f64,
    /// drain time / (bytes / PUT bandwidth): the target is at most 1.2.
    ratio_drain_vs_put: f64,
    verified: bool,
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let meta = e.metadata()?;
        total += if meta.is_dir() { dir_bytes(&e.path())? } else { meta.len() };
    }
    Ok(total)
}

/// `--decommission`: pushes with one map left open (so nothing is spilled at seal), drains the
/// worker holding the most, then PUTs as many bytes to the same store; commits the open map,
/// reads everything back from the store and checks it.
async fn decommission(
    args: &Args,
    running: &shuffle_client::cli::local::Running,
    sc: &ShuffleClient,
    per: usize,
    quiet: bool,
) -> anyhow::Result<()> {
    use shuffle_proto::messages::{ClusterStatus, GetStatus};
    let app = AppId::new(format!("bench-decom-{}", std::process::id()))?;
    sc.register_app(&app, Duration::from_secs(3600)).await?;
    let key = ShuffleKey::new(app.clone(), 0, 0);
    let open_map = args.mappers;
    let assignment = sc.register_shuffle(&key, args.mappers + 1, args.partitions, 1).await?;
    let pushed = push_all(sc, &assignment, args, per, quiet).await?;
    let mc = running.admin_client()?;
    let st: ClusterStatus = mc.call_typed(GetStatus {}).await?;
    let worker = st.workers.iter().max_by_key(|w| w.bytes_held).context("no worker")?.id.clone();
    let drained =
        shuffle_client::cli::admin::decommission(&mc, &worker, Some(Duration::from_secs(1800)), |_, _| {}).await?;
    // What the drain wrote: the segments' bytes in the (local-directory) store. The status's
    // figure counts records before compression.
    let root = running.file.object_store.strip_prefix("file://").context("--decommission needs the local store")?;
    let spilled = dir_bytes(std::path::Path::new(root))?;
    // The baseline: the same bytes as one multipart upload, as a worker spills them.
    let store = shuffle_proto::objstore::open_store(&running.file.object_store)?;
    // Whole stream records, so the upload's index accepts them; shared, never copied.
    let mut recs = Vec::new();
    for (i, r) in records(0, 0, 1 << 20).chunks(64 * RECORD).enumerate() {
        shuffle_proto::batch::StreamRecord::encode(0, 0, i as u32, r, &mut recs);
    }
    let chunk = bytes::Bytes::from(recs);
    let t = Instant::now();
    let mut up = shuffle_proto::objstore::SegmentUpload::new(store, "bench-put-baseline".into(), 8 << 20);
    let mut left = spilled;
    while left > 0 {
        up.write_owned(chunk.clone()).await?;
        left = left.saturating_sub(chunk.len() as u64);
    }
    up.finish().await?;
    let put = t.elapsed();
    // Close the shuffle and check every byte, now read from the object store.
    sc.map_writer(&assignment, MapId(open_map), AttemptId(open_map as u64)).commit().await?;
    let (_, verified, _, _) = read_all(sc, &key, &pushed.want, args.mappers + 1, quiet).await?;
    let _ = sc.unregister_app(&app).await;
    let bytes = spilled;
    let r = DecommissionReport {
        bytes,
        drain_seconds: drained.seconds,
        drain_mib_s: mib_s(bytes, Duration::from_secs_f64(drained.seconds)),
        put_seconds: put.as_secs_f64(),
        put_mib_s: mib_s(bytes, put),
        ratio_drain_vs_put: drained.seconds / put.as_secs_f64().max(1e-9),
        verified,
    };
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        Output::Table => {
            println!(
                "drained {} of records ({} in segments) from {worker}",
                bytesize::ByteSize(drained.bytes_at_start),
                bytesize::ByteSize(r.bytes)
            );
            println!(
                "{:<28} {:>8.2} s, {:>8.1} MiB/s   (raw PUT of the same bytes: {:.2} s, {:.1} MiB/s; ratio {:.2})",
                "decommission", r.drain_seconds, r.drain_mib_s, r.put_seconds, r.put_mib_s, r.ratio_drain_vs_put
            );
            println!("{:<28} {}", "every byte verified", r.verified);
        }
    }
    anyhow::ensure!(r.verified, "verification failed");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let total = args.bytes.parse::<bytesize::ByteSize>().map_err(anyhow::Error::msg).context("--bytes")?.as_u64();
    let batch =
        args.batch.parse::<bytesize::ByteSize>().map_err(anyhow::Error::msg).context("--batch")?.as_u64() as usize;
    let per = (total / (args.mappers as u64 * args.partitions as u64)) as usize / RECORD * RECORD;
    anyhow::ensure!(per > 0, "--bytes too small for {} x {}", args.mappers, args.partitions);
    let bytes = per as u64 * args.mappers as u64 * args.partitions as u64;
    let quiet = matches!(args.output, Output::Json);

    // The cluster.
    let data_dir = tempfile::tempdir()?;
    let (running, masters, tls, object_store, credential) = if args.local {
        let exe = std::env::current_exe()?;
        let up = LocalUp {
            masters: args.local_masters,
            workers: args.workers,
            data_dir: data_dir.path().to_path_buf(),
            object_store: None,
            base_port: 0,
            bin_dir: exe.parent().context("no bin dir")?.to_path_buf(),
        };
        let r = up.start().await?;
        let masters: Vec<String> = r.file.master_endpoints.split(',').map(String::from).collect();
        let tls = TlsSource::CaOnly { ca: r.file.tls_ca.clone() };
        // Spilled partitions are read from the store the masters name.
        let os = None;
        let cred = shuffle_proto::auth::Credential::load_secret_file(&r.file.tenant_credential)?;
        (Some(r), masters, tls, os, Some(cred))
    } else {
        let ca = args.tls_ca.clone().context("--tls-ca is needed with --masters")?;
        let cred = shuffle_client::cli::credential(args.credential_file.as_deref())?;
        (None, args.masters.clone(), TlsSource::CaOnly { ca }, args.object_store.clone(), cred)
    };
    let mut cfg = ClientConfig::new(masters, tls);
    cfg.credential = credential;
    cfg.object_store = object_store;
    cfg.batch_bytes = batch;
    cfg.max_in_flight = args.in_flight;
    let sc = ShuffleClient::new(cfg)?;
    if args.metadata {
        return metadata(&args, &sc).await;
    }
    if args.decommission {
        let r = running.as_ref().context("--decommission needs --local")?;
        return decommission(&args, r, &sc, per, quiet).await;
    }
    let app = AppId::new(format!("bench-{}", std::process::id()))?;
    sc.register_app(&app, Duration::from_secs(3600)).await?;
    let key = ShuffleKey::new(app.clone(), 0, 0);
    let assignment = sc.register_shuffle(&key, args.mappers, args.partitions, 1).await?;

    let pushed = push_all(&sc, &assignment, &args, per, quiet).await?;
    let (push, wire, want) = (pushed.time, pushed.wire_bytes, pushed.want.clone());
    let mut lat = pushed.latencies_us;
    lat.sort_unstable();
    let (read, mut verified, from_seg, from_workers) = read_all(&sc, &key, &want, args.mappers, quiet).await?;
    let rss =
        running.as_ref().map(|r| r.file.workers.iter().map(|w| peak_rss_mib(w.pid)).collect()).unwrap_or_default();
    let _ = sc.unregister_app(&app).await;
    drop(running);

    // Baselines, same data, same machine, same run.
    let raw = raw_quic(&args, per, batch, false).await?;
    let transport = raw_quic(&args, per, batch, true).await?;
    let (lw, lr, lok) = local_files(&args, per)?;
    verified &= lok;

    let report = Report {
        mappers: args.mappers,
        partitions: args.partitions,
        bytes,
        shoal_push_mib_s: mib_s(bytes, push),
        shoal_read_mib_s: mib_s(bytes, read),
        push_p50_ms: percentile(&lat, 0.5),
        push_p99_ms: percentile(&lat, 0.99),
        wire_ratio: bytes as f64 / wire.max(1) as f64,
        read_from_segments: from_seg,
        read_from_workers: from_workers,
        worker_peak_rss_mib: rss,
        raw_quic_push_mib_s: mib_s(bytes, raw.time),
        transport_wire_mib_s: mib_s(transport.wire_bytes, transport.time),
        transport_avg_datagram_bytes: transport.udp_bytes / transport.datagrams.max(1),
        transport_datagrams_per_send: transport.datagrams as f64 / transport.send_calls.max(1) as f64,
        local_files_write_mib_s: mib_s(bytes, lw),
        local_files_read_mib_s: mib_s(bytes, lr),
        ratio_push_vs_raw_quic: raw.time.as_secs_f64() / push.as_secs_f64(),
        ratio_push_vs_local_files: lw.as_secs_f64() / push.as_secs_f64(),
        ratio_read_vs_local_files: lr.as_secs_f64() / read.as_secs_f64(),
        verified,
    };
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => {
            let r = &report;
            println!(
                "{} mappers x {} partitions, {} of 100-byte records (lz4 {:.1}x on the wire)",
                r.mappers,
                r.partitions,
                bytesize::ByteSize(r.bytes),
                r.wire_ratio
            );
            println!(
                "{:<28} {:>10.1} MiB/s   (raw QUIC, no storage: {:>8.1} MiB/s, ratio {:.2})",
                "shoal push", r.shoal_push_mib_s, r.raw_quic_push_mib_s, r.ratio_push_vs_raw_quic
            );
            println!(
                "{:<28} {:>10.1} MiB/s   (local shuffle files write: {:>8.1} MiB/s, ratio {:.2})",
                "", r.shoal_push_mib_s, r.local_files_write_mib_s, r.ratio_push_vs_local_files
            );
            println!(
                "{:<28} {:>10.1} MiB/s   (local shuffle files read:  {:>8.1} MiB/s, ratio {:.2})",
                "shoal read", r.shoal_read_mib_s, r.local_files_read_mib_s, r.ratio_read_vs_local_files
            );
            println!(
                "{:<28} {:>10.1} MiB/s on the wire (pre-encoded batches; datagrams of {} B, {:.1} per send)",
                "raw QUIC transport alone",
                r.transport_wire_mib_s,
                r.transport_avg_datagram_bytes,
                r.transport_datagrams_per_send
            );
            println!("{:<28} p50 {:.2} ms, p99 {:.2} ms", "push latency", r.push_p50_ms, r.push_p99_ms);
            println!(
                "{:<28} {} from segments, {} from workers",
                "batches read", r.read_from_segments, r.read_from_workers
            );
            println!("{:<28} {:?} MiB", "worker peak RSS", r.worker_peak_rss_mib);
            println!("{:<28} {}", "every byte verified", r.verified);
        }
    }
    anyhow::ensure!(report.verified, "verification failed");
    Ok(())
}
