//! A map task's output through the wire format and back: records are batched, compressed,
//! framed as pushes, decoded on the other side, checked and counted.
//!
//! `cargo run -p shuffle-proto --example roundtrip`

use std::collections::BTreeMap;

use shuffle_proto::batch::{encode_batch, BatchView, Codec, DEFAULT_MAX_BATCH_RAW};
use shuffle_proto::frame::{read_frame, write_frame};
use shuffle_proto::messages::{Message, PushBatch};
use shuffle_proto::{AppId, AttemptId, Epoch, FrameLimits, MapId, PartitionId, ShuffleKey};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let shuffle = ShuffleKey::new(AppId::new("app-demo")?, 0, 0);
    let partitions = 8u32;
    let (mut tx, mut rx) = tokio::io::duplex(1 << 20);

    let writer = tokio::spawn(async move {
        let mut scratch = Vec::new();
        let mut sent = BTreeMap::new();
        for map in 0..4u32 {
            for p in 0..partitions {
                let mut raw = Vec::new();
                for i in 0..1000u32 {
                    raw.extend_from_slice(format!("{map:04}-{p:04}-{i:08}|{:<70}\n", "row").as_bytes());
                }
                let mut batch = Vec::new();
                encode_batch(&raw, Codec::Lz4, &mut batch)?;
                let msg = Message::PushBatch(PushBatch {
                    shuffle: shuffle.clone(),
                    partition: PartitionId(p),
                    map: MapId(map),
                    attempt: AttemptId(map as u64),
                    seq: 0,
                    epoch: Epoch(1),
                    flags: 0,
                });
                write_frame(&mut tx, &msg, &batch, &mut scratch).await?;
                *sent.entry(p).or_insert(0u64) += raw.len() as u64;
            }
        }
        anyhow::Ok(sent)
    });

    let mut body = Vec::new();
    let mut raw = Vec::new();
    let mut got: BTreeMap<u32, u64> = BTreeMap::new();
    let mut wire_bytes = 0u64;
    let limits = FrameLimits::default();
    while let Some(msg) = read_frame(&mut rx, &limits, &mut body).await? {
        let Message::PushBatch(push) = msg else { anyhow::bail!("unexpected {}", msg.name()) };
        raw.clear();
        BatchView::parse_exact(&body, DEFAULT_MAX_BATCH_RAW)?.decode_into(&mut raw)?;
        wire_bytes += body.len() as u64;
        *got.entry(push.partition.0).or_insert(0) += raw.len() as u64;
    }
    let sent = writer.await??;
    anyhow::ensure!(sent == got, "bytes per partition differ: sent {sent:?}, got {got:?}");
    let total: u64 = got.values().sum();
    println!(
        "round trip ok: {} partitions, {total} record bytes, {wire_bytes} bytes on the wire ({:.1}x lz4)",
        got.len(),
        total as f64 / wire_bytes as f64
    );
    Ok(())
}
