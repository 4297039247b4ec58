//! Random command histories shared by the state and store property tests.
//!
//! The world is small (three workers, two apps, a few shuffle keys) so that commands often
//! meet the records earlier ones made, and often get refused: foreign tenants, unknown apps,
//! shuffles and workers, epochs that never existed or were lost, workers in the wrong state.

use proptest::collection::vec;
use proptest::prelude::*;
use shuffle_proto::messages::{PartitionStat, SegmentRef};
use shuffle_proto::{AppId, AttemptId, Epoch, MapId, PartitionId, ShuffleKey, WorkerId};

use crate::state::Command;

pub fn w(id: &str) -> WorkerId {
    WorkerId::new(id).unwrap()
}

pub fn app(id: &str) -> AppId {
    AppId::new(id).unwrap()
}

pub fn key(s: u32) -> ShuffleKey {
    ShuffleKey::new(app("app-1"), s, 0)
}

/// `app-1` (incarnation 1), two workers and a random shuffle `key(0)` (whose partition `p`
/// gets epoch `p + 2`), then up to `max` random commands.
pub fn history(max: usize) -> impl Strategy<Value = Vec<Command>> {
    (1u32..4, 1u32..6, 1u8..3, vec(arb_command(), 1..max)).prop_map(|(num_maps, num_partitions, replication, cmds)| {
        let app = Command::RegisterApp { app: app("app-1"), lease_ms: 1, tenant: String::new() };
        let workers = ["w1", "w2"].map(|id| Command::RegisterWorker {
            worker: w(id),
            addr: format!("{id}:1"),
            capacity_bytes: 1 << 40,
        });
        let shuffle = Command::RegisterShuffle { shuffle: key(0), num_maps, num_partitions, replication };
        [app].into_iter().chain(workers).chain([shuffle]).chain(cmds).collect()
    })
}

/// An epoch that partition `p` may have had: epochs are numbered in placement order from 2
/// (the app's registration drew 1), so offset 0 is its first in `key(0)`; larger ones are later placements or never existed.
fn epoch_near(p: u32) -> impl Strategy<Value = Epoch> {
    prop_oneof![Just(0u64), 0u64..16].prop_map(move |offset| Epoch(u64::from(p) + 2 + offset))
}

pub fn arb_command() -> impl Strategy<Value = Command> {
    let wid = prop_oneof![Just(w("w1")), Just(w("w2")), Just(w("w3"))];
    // Mostly the shuffle every history starts with, so commands meet; rarely another
    // generation or another app's.
    let shuffle = prop_oneof![
        6 => Just(key(0)),
        2 => Just(key(1)),
        1 => (0u32..2).prop_map(|s| ShuffleKey::new(app("app-1"), s, 1)),
        1 => (0u32..2).prop_map(|s| ShuffleKey::new(app("app-2"), s, 0)),
    ];
    let stat = (0u32..6).prop_flat_map(|p| (Just(p), epoch_near(p), 0u64..100)).prop_map(|(p, e, bytes)| {
        PartitionStat { partition: PartitionId(p), bytes, crc_sum: 0, batches: 1, epochs: vec![e] }
    });
    prop_oneof![
        4 => (wid.clone(), 1u16..3).prop_map(|(worker, port)| Command::RegisterWorker {
            addr: format!("{worker}:{port}"),
            worker,
            capacity_bytes: 1 << 40,
        }),
        2 => (prop_oneof![Just(app("app-1")), Just(app("app-2"))], prop_oneof![Just(""), Just("t2")])
            .prop_map(|(app, tenant)| Command::RegisterApp { app, lease_ms: 1, tenant: tenant.into() }),
        // Unregistering wipes much of a history: rarely.
        1 => prop_oneof![1 => Just(app("app-1")), 3 => Just(app("app-2"))]
            .prop_map(|app| Command::UnregisterApp { app }),
        6 => (shuffle.clone(), 0u32..4, 1u32..6, 1u8..3).prop_map(|(shuffle, num_maps, num_partitions, replication)| {
            Command::RegisterShuffle { shuffle, num_maps, num_partitions, replication }
        }),
        16 => (shuffle.clone(), 0u32..4, 0u64..3, vec(stat, 0..3)).prop_map(|(shuffle, map, attempt, mut stats)| {
            // Ascending and distinct, as clients send them (unit tests cover the rest).
            stats.sort_by_key(|s| s.partition);
            stats.dedup_by_key(|s| s.partition);
            Command::CommitMap { shuffle, map: MapId(map), attempt: AttemptId(attempt), partitions: stats }
        }),
        4 => (shuffle.clone(), (0u32..6).prop_flat_map(|p| (Just(p), epoch_near(p))), wid.clone(), any::<bool>())
            .prop_map(|(shuffle, (p, failed_epoch), failed_worker, split)| {
                if split {
                    Command::SplitPiece { shuffle, partition: PartitionId(p), epoch: failed_epoch, worker: failed_worker }
                } else {
                    Command::Relocate { shuffle, partition: PartitionId(p), failed_epoch, failed_worker }
                }
            }),
        2 => wid.clone().prop_map(|worker| Command::WorkerLost { worker }),
        2 => wid.clone().prop_map(|worker| Command::Decommission { worker }),
        2 => wid.clone().prop_map(|worker| Command::Recommission { worker }),
        2 => wid.clone().prop_map(|worker| Command::RemoveWorker { worker }),
        2 => wid.clone().prop_map(|worker| Command::DrainComplete { worker }),
        4 => (wid, shuffle.clone(), (0u32..6).prop_flat_map(|p| (Just(p), epoch_near(p))), any::<bool>()).prop_map(
            |(worker, shuffle, (p, upto), last)| Command::ReportSegment {
                worker,
                shuffle,
                partition: PartitionId(p),
                segment: SegmentRef {
                    object_key: format!("k{p}"),
                    index_offset: 0,
                    total_len: 0,
                    first_map: MapId(0),
                    end_map: MapId(1),
                },
                last,
                upto,
            },
        ),
        1 => shuffle.prop_map(|shuffle| Command::UnregisterShuffle { shuffle }),
        1 => prop_oneof![Just(String::new()), "[a-z]{1,6}".prop_map(|b| format!("s3://{b}/shoal"))]
            .prop_map(|url| Command::SetStoreUrl { url }),
    ]
}
