//! Rules of the replicated state, exercised without storage or network.

use proptest::prelude::*;
use shuffle_proto::messages::*;
use shuffle_proto::*;

use crate::state::*;
use crate::test_support::{history, key, w};

fn cluster(workers: &[&str]) -> MasterState {
    let mut st = MasterState::default();
    for id in workers {
        let r =
            st.apply(Command::RegisterWorker { worker: w(id), addr: format!("{id}:7000"), capacity_bytes: 1 << 40 });
        assert_eq!(r, CommandResult::Ack);
    }
    st.apply(Command::RegisterApp { app: AppId::new("app-1").unwrap(), lease_ms: 60_000, tenant: String::new() });
    st
}

fn register(st: &mut MasterState, s: u32, maps: u32, parts: u32, replication: u8) -> ShuffleAssignment {
    match st.apply(Command::RegisterShuffle { shuffle: key(s), num_maps: maps, num_partitions: parts, replication }) {
        CommandResult::Assignment(a) => a,
        other => panic!("{other:?}"),
    }
}

fn stat(p: u32, bytes: u64, epoch: Epoch) -> PartitionStat {
    PartitionStat { partition: PartitionId(p), bytes, crc_sum: bytes as u32 * 7, batches: 1, epochs: vec![epoch] }
}

fn commit(st: &mut MasterState, s: u32, map: u32, attempt: u64, stats: Vec<PartitionStat>) -> CommandResult {
    st.apply(Command::CommitMap { shuffle: key(s), map: MapId(map), attempt: AttemptId(attempt), partitions: stats })
}

/// A failed push at `epoch` on `worker`, reported for partition 0 of shuffle 1.
fn relocate(st: &mut MasterState, epoch: Epoch, worker: WorkerId) -> CommandResult {
    st.apply(Command::Relocate {
        shuffle: key(1),
        partition: PartitionId(0),
        failed_epoch: epoch,
        failed_worker: worker,
    })
}

fn error_code(r: &CommandResult) -> Option<ErrorCode> {
    match r {
        CommandResult::Error(e) => Some(e.code()),
        _ => None,
    }
}

#[test]
fn assignment_uses_only_active_workers_and_balances() {
    let mut st = cluster(&["w1", "w2", "w3"]);
    st.apply(Command::Decommission { worker: w("w3") });
    let a = register(&mut st, 1, 4, 10, 1);
    assert_eq!(a.locations.len(), 10);
    assert!(a.locations.iter().all(|l| l.primary.id != w("w3")));
    let on_w1 = a.locations.iter().filter(|l| l.primary.id == w("w1")).count();
    assert_eq!(on_w1, 5);
    assert_eq!(a.locations[0].primary.addr, "w1:7000");
    // Epochs are distinct and positive.
    let mut epochs: Vec<u64> = a.locations.iter().map(|l| l.epoch.0).collect();
    epochs.dedup();
    assert_eq!(epochs.len(), 10);
    st.check_invariants().unwrap();
}

#[test]
fn registering_twice_is_idempotent_and_conflicts_are_refused() {
    let mut st = cluster(&["w1", "w2"]);
    let a = register(&mut st, 1, 2, 4, 1);
    let b = register(&mut st, 1, 2, 4, 1);
    assert_eq!(a, b);
    let r = st.apply(Command::RegisterShuffle { shuffle: key(1), num_maps: 3, num_partitions: 4, replication: 1 });
    assert_eq!(error_code(&r), Some(ErrorCode::BadRequest));
    let r = st.apply(Command::RegisterShuffle {
        shuffle: ShuffleKey::new(AppId::new("other").unwrap(), 1, 0),
        num_maps: 1,
        num_partitions: 1,
        replication: 1,
    });
    assert_eq!(error_code(&r), Some(ErrorCode::UnknownApp));
}

#[test]
fn no_workers_is_a_retryable_error() {
    let mut st = cluster(&["w1"]);
    let r = st.apply(Command::RegisterShuffle { shuffle: key(1), num_maps: 1, num_partitions: 1, replication: 2 });
    assert_eq!(error_code(&r), Some(ErrorCode::NoWorkers));
    assert!(ErrorCode::NoWorkers.retryable());
}

#[test]
fn replicas_land_on_another_worker() {
    let mut st = cluster(&["w1", "w2", "w3"]);
    let a = register(&mut st, 1, 1, 9, 2);
    for l in &a.locations {
        let r = l.replica.as_ref().expect("replica");
        assert_ne!(r.id, l.primary.id);
    }
    st.check_invariants().unwrap();
}

#[test]
fn first_commit_wins_forever_and_seals() {
    let mut st = cluster(&["w1", "w2"]);
    let a = register(&mut st, 1, 2, 2, 1);
    let e0 = a.locations[0].epoch;
    let r = commit(&mut st, 1, 0, 100, vec![stat(0, 10, e0)]);
    assert_eq!(r, CommandResult::Committed(MapCommitted { winner: AttemptId(100), accepted: true, sealed: false }));
    // A speculative attempt of the same map loses, and learns the winner.
    let r = commit(&mut st, 1, 0, 101, vec![stat(0, 99, e0)]);
    assert_eq!(r, CommandResult::Committed(MapCommitted { winner: AttemptId(100), accepted: false, sealed: false }));
    // The winner committing again (a retry) is accepted without change.
    let r = commit(&mut st, 1, 0, 100, vec![]);
    assert_eq!(r, CommandResult::Committed(MapCommitted { winner: AttemptId(100), accepted: true, sealed: false }));
    let r = commit(&mut st, 1, 1, 200, vec![]);
    assert_eq!(r, CommandResult::Committed(MapCommitted { winner: AttemptId(200), accepted: true, sealed: true }));
    // After the seal a late attempt still gets the winner, not an error.
    let r = commit(&mut st, 1, 1, 201, vec![]);
    assert_eq!(r, CommandResult::Committed(MapCommitted { winner: AttemptId(200), accepted: false, sealed: true }));
    let plan = st.read_plan(&key(1), 0, 2, 0, 2).unwrap();
    assert_eq!(plan.state, ShuffleState::Sealed);
    assert_eq!(plan.partitions[0].expected.len(), 1);
    assert_eq!(plan.partitions[0].expected[0].attempt, AttemptId(100));
    assert_eq!(plan.partitions[0].expected[0].bytes, 10);
    assert!(plan.partitions[1].expected.is_empty());
    st.check_invariants().unwrap();
}

#[test]
fn bad_commits_are_refused_and_change_nothing() {
    let mut st = cluster(&["w1"]);
    let a = register(&mut st, 1, 2, 2, 1);
    let e0 = a.locations[0].epoch;
    assert_eq!(error_code(&commit(&mut st, 1, 5, 1, vec![])), Some(ErrorCode::BadRequest));
    assert_eq!(error_code(&commit(&mut st, 1, 0, 1, vec![stat(7, 1, e0)])), Some(ErrorCode::BadRequest));
    assert_eq!(error_code(&commit(&mut st, 1, 0, 1, vec![stat(0, 1, Epoch(999))])), Some(ErrorCode::BadRequest));
    assert_eq!(
        error_code(&commit(&mut st, 1, 0, 1, vec![stat(1, 1, e0), stat(0, 1, e0)])),
        Some(ErrorCode::BadRequest)
    );
    assert_eq!(error_code(&commit(&mut st, 9, 0, 1, vec![])), Some(ErrorCode::UnknownShuffle));
    assert_eq!(st.shuffles[&key(1)].meta.committed_maps, 0);
}

#[test]
fn stale_relocations_return_the_current_location() {
    let mut st = cluster(&["w1", "w2"]);
    let a = register(&mut st, 1, 1, 1, 1);
    let first = a.locations[0].clone();
    let moved = match relocate(&mut st, first.epoch, first.primary.id.clone()) {
        CommandResult::Location(l) => l,
        other => panic!("{other:?}"),
    };
    assert!(moved.epoch > first.epoch);
    assert_ne!(moved.primary.id, first.primary.id);
    // A second report of the same failure (another map task) must not move it again.
    let again = relocate(&mut st, first.epoch, first.primary.id.clone());
    assert_eq!(again, CommandResult::Location(moved.clone()));
    assert_eq!(st.assignment(&key(1)).unwrap().locations[0], moved);
    // The old worker is still alive: its data stays a read source.
    let plan = st.read_plan(&key(1), 0, 1, 0, 1).unwrap();
    assert_eq!(plan.partitions[0].sources.len(), 2);
    st.check_invariants().unwrap();
}

fn split(st: &mut MasterState, epoch: Epoch, worker: WorkerId) -> CommandResult {
    st.apply(Command::SplitPiece { shuffle: key(1), partition: PartitionId(0), epoch, worker })
}

#[test]
fn a_split_moves_the_next_piece_to_another_worker_and_reads_both() {
    let mut st = cluster(&["w1", "w2"]);
    let first = register(&mut st, 1, 2, 1, 1).locations[0].clone();
    commit(&mut st, 1, 0, 1, vec![stat(0, 100, first.epoch)]);
    let CommandResult::Location(next) = split(&mut st, first.epoch, first.primary.id.clone()) else { panic!() };
    assert_ne!(next.primary.id, first.primary.id);
    assert!(next.epoch > first.epoch);
    // Both pieces are read: a map may have pushed to each.
    commit(
        &mut st,
        1,
        1,
        1,
        vec![PartitionStat { epochs: vec![first.epoch, next.epoch], ..stat(0, 100, first.epoch) }],
    );
    let plan = st.read_plan(&key(1), 0, 1, 0, 2).unwrap();
    let sources: Vec<_> = plan.partitions[0].sources.iter().map(|s| s.primary.id.clone()).collect();
    assert_eq!(sources, vec![first.primary.id.clone(), next.primary.id.clone()]);
    assert!(st.check_invariants().is_ok());
}

#[test]
fn a_split_on_the_only_worker_opens_a_new_piece_there() {
    let mut st = cluster(&["w1"]);
    let first = register(&mut st, 1, 1, 1, 1).locations[0].clone();
    // A failure has nowhere to go; a split stays on the same worker under a new epoch.
    assert_eq!(error_code(&relocate(&mut st, first.epoch, w("w1"))), Some(ErrorCode::NoWorkers));
    let CommandResult::Location(next) = split(&mut st, first.epoch, w("w1")) else { panic!() };
    assert_eq!(next.primary.id, w("w1"));
    assert!(next.epoch > first.epoch);
    // The same split reported again (another map hit it) hands out the new piece.
    assert_eq!(split(&mut st, first.epoch, w("w1")), CommandResult::Location(next.clone()));
    // Two pieces on one worker are one read source.
    commit(&mut st, 1, 0, 1, vec![PartitionStat { epochs: vec![first.epoch, next.epoch], ..stat(0, 10, next.epoch) }]);
    assert_eq!(st.read_plan(&key(1), 0, 1, 0, 1).unwrap().partitions[0].sources.len(), 1);
}

/// A worker holding two pieces of a partition (split away and back) is one read source named
/// by its newest piece, so the last segment it reports with that epoch (as a seal spill does)
/// releases both pieces and the partition is read from the object store alone.
#[test]
fn a_last_segment_releases_every_piece_the_worker_holds() {
    let mut st = cluster(&["w1", "w2"]);
    let first = register(&mut st, 1, 1, 1, 1).locations[0].clone();
    let CommandResult::Location(second) = split(&mut st, first.epoch, first.primary.id.clone()) else { panic!() };
    let CommandResult::Location(third) = split(&mut st, second.epoch, second.primary.id.clone()) else { panic!() };
    assert_eq!(third.primary.id, first.primary.id, "back on the first worker");
    let stat0 = PartitionStat { epochs: vec![first.epoch, second.epoch, third.epoch], ..stat(0, 30, first.epoch) };
    commit(&mut st, 1, 0, 1, vec![stat0]);
    let plan = st.read_plan(&key(1), 0, 1, 0, 1).unwrap();
    for holder in [&first.primary.id, &second.primary.id] {
        // As a worker's spill computes it: the newest epoch of a source naming it.
        let upto =
            plan.partitions[0].sources.iter().filter(|s| &s.primary.id == holder).map(|s| s.epoch).max().unwrap();
        let seg = SegmentRef {
            object_key: format!("shoal/app-1/1.0/0/seg-{holder}"),
            index_offset: 10,
            total_len: 20,
            first_map: MapId(0),
            end_map: MapId(1),
        };
        let r = st.apply(Command::ReportSegment {
            worker: holder.clone(),
            shuffle: key(1),
            partition: PartitionId(0),
            segment: seg,
            last: true,
            upto,
        });
        assert_eq!(r, CommandResult::Ack);
    }
    let p = &st.read_plan(&key(1), 0, 1, 0, 1).unwrap().partitions[0];
    assert!(p.sources.is_empty(), "a piece stayed live: {:?}", p.sources);
    assert_eq!(p.segments.len(), 2);
    st.check_invariants().unwrap();
}

/// With replication 2, pieces of one partition on the same primary can have different
/// replicas: the read plan names every holder, so a replica's seal spill finds it still holds
/// a live piece (and keeps it until the primary's segment covers it), and a reader whose
/// primary is gone finds each piece's replica.
#[test]
fn every_holder_of_a_replicated_piece_is_a_read_source() {
    let mut st = cluster(&["w1", "w2", "w3"]);
    let mut cur = register(&mut st, 1, 1, 1, 2).locations[0].clone();
    let mut held: Vec<(Epoch, WorkerId, WorkerId)> = Vec::new();
    // Pieces close at the split size (on the primary) or move off a replica that failed a
    // forward (a live worker all the same): each move places a new pair.
    for i in 0..8 {
        held.push((cur.epoch, cur.primary.id.clone(), cur.replica.clone().unwrap().id));
        let next = if i % 2 == 0 {
            relocate(&mut st, cur.epoch, cur.replica.clone().unwrap().id)
        } else {
            split(&mut st, cur.epoch, cur.primary.id.clone())
        };
        let CommandResult::Location(next) = next else { panic!("{next:?}") };
        cur = next;
    }
    assert!(
        held.iter().any(|(_, p, r)| held.iter().any(|(_, p2, r2)| p == p2 && r != r2)),
        "a primary holds pieces with two replicas: {held:?}"
    );
    let plan = st.read_plan(&key(1), 0, 1, 0, 1).unwrap();
    for (epoch, primary, replica) in &held {
        assert!(
            plan.partitions[0].sources.iter().any(|s| s.epoch >= *epoch
                && s.primary.id == *primary
                && s.replica.as_ref().map(|r| &r.id) == Some(replica)),
            "piece {epoch} on {primary}+{replica} is not read: {:?}",
            plan.partitions[0].sources
        );
    }
    st.check_invariants().unwrap();
}

#[test]
fn only_the_primary_splits_a_piece() {
    let mut st = cluster(&["w1", "w2", "w3"]);
    let first = register(&mut st, 1, 1, 1, 2).locations[0].clone();
    let replica = first.replica.clone().unwrap().id;
    assert_eq!(split(&mut st, first.epoch, replica), CommandResult::Location(first.clone()));
}

#[test]
fn worker_loss_without_replica_loses_committed_data_and_moves_writes() {
    let mut st = cluster(&["w1", "w2"]);
    let a = register(&mut st, 1, 2, 2, 1);
    let (lost_p, lost_loc) = a.locations.iter().enumerate().find(|(_, l)| l.primary.id == w("w1")).unwrap();
    let lost_p = lost_p as u32;
    commit(&mut st, 1, 0, 10, vec![stat(lost_p, 5, lost_loc.epoch)]);
    assert_eq!(st.apply(Command::WorkerLost { worker: w("w1") }), CommandResult::Ack);
    let plan = st.read_plan(&key(1), lost_p, lost_p + 1, 0, 2).unwrap();
    assert!(plan.partitions[0].lost, "committed data on the lost worker is reported lost");
    // Writes moved to the survivor under a new epoch.
    let now = st.assignment(&key(1)).unwrap().locations[lost_p as usize].clone();
    assert_eq!(now.primary.id, w("w2"));
    assert!(now.epoch > lost_loc.epoch);
    // A map that pushed to the lost epoch can't commit: it must be re-run.
    let r = commit(&mut st, 1, 1, 11, vec![stat(lost_p, 5, lost_loc.epoch)]);
    assert_eq!(error_code(&r), Some(ErrorCode::DataLost));
    // Its retry that pushed to the new epoch commits.
    let r = commit(&mut st, 1, 1, 12, vec![stat(lost_p, 5, now.epoch)]);
    assert!(matches!(r, CommandResult::Committed(MapCommitted { accepted: true, sealed: true, .. })));
    // Reading only map 1 is fine: its data is live on w2.
    let plan = st.read_plan(&key(1), lost_p, lost_p + 1, 1, 2).unwrap();
    assert!(!plan.partitions[0].lost);
    st.check_invariants().unwrap();
}

#[test]
fn worker_loss_with_replica_promotes_it() {
    let mut st = cluster(&["w1", "w2", "w3"]);
    let a = register(&mut st, 1, 1, 3, 2);
    let loc = a.locations.iter().find(|l| l.primary.id == w("w1")).unwrap().clone();
    let p = loc.partition.0;
    commit(&mut st, 1, 0, 1, vec![stat(p, 8, loc.epoch)]);
    st.apply(Command::WorkerLost { worker: w("w1") });
    let plan = st.read_plan(&key(1), p, p + 1, 0, 1).unwrap();
    let part = &plan.partitions[0];
    assert!(!part.lost);
    assert_eq!(part.sources.len(), 1);
    assert_eq!(&part.sources[0].primary.id, &loc.replica.as_ref().unwrap().id);
    st.check_invariants().unwrap();
}

#[test]
fn a_failed_replica_moves_the_partition_away_from_it() {
    let mut st = cluster(&["w1", "w2", "w3"]);
    let a = register(&mut st, 1, 1, 1, 2);
    let first = a.locations[0].clone();
    let replica = first.replica.clone().unwrap().id;
    // The primary reports the replica it could not forward to.
    let moved = match relocate(&mut st, first.epoch, replica.clone()) {
        CommandResult::Location(l) => l,
        other => panic!("{other:?}"),
    };
    assert!(moved.epoch > first.epoch);
    assert!(moved.primary.id != replica && moved.replica.as_ref().is_some_and(|r| r.id != replica));
    // The client's report of the same epoch (naming its primary) gets the new pair, not a third.
    let again = relocate(&mut st, first.epoch, first.primary.id.clone());
    assert_eq!(again, CommandResult::Location(moved.clone()));
    // A worker named in neither role moves nothing.
    let outsider = ["w1", "w2", "w3"]
        .into_iter()
        .map(w)
        .find(|x| *x != moved.primary.id && Some(x) != moved.replica.as_ref().map(|r| &r.id))
        .unwrap();
    let stale = relocate(&mut st, moved.epoch, outsider);
    assert_eq!(stale, CommandResult::Location(moved));
    st.check_invariants().unwrap();
}

#[test]
fn single_copies_of_replicated_partitions_are_spilled_by_their_holder() {
    let mut st = cluster(&["w1", "w2"]);
    let a = register(&mut st, 1, 2, 2, 2);
    assert!(st.commands_for(&w("w1"), &[key(1)]).is_empty());
    assert!(st.commands_for(&w("w2"), &[key(1)]).is_empty());
    // w2 is lost: every partition has only w1's copy (promoted where w2 was the primary), and
    // no other worker can take the writes as a pair.
    st.apply(Command::WorkerLost { worker: w("w2") });
    let want: Vec<WorkerCommand> =
        a.locations.iter().map(|l| WorkerCommand::SpillPartition { shuffle: key(1), partition: l.partition }).collect();
    assert_eq!(st.commands_for(&w("w1"), &[key(1)]), want);
    // Once sealed, the seal spill covers it.
    commit(&mut st, 1, 0, 1, vec![]);
    commit(&mut st, 1, 1, 1, vec![]);
    assert_eq!(st.commands_for(&w("w1"), &[key(1)]), vec![WorkerCommand::Seal { shuffle: key(1) }]);
    st.check_invariants().unwrap();
}

#[test]
fn decommission_moves_writes_then_finishes_after_spill() {
    let mut st = cluster(&["w1", "w2"]);
    let a = register(&mut st, 1, 2, 2, 1);
    let loc = a.locations.iter().find(|l| l.primary.id == w("w1")).unwrap().clone();
    let p = loc.partition.0;
    commit(&mut st, 1, 0, 1, vec![stat(p, 8, loc.epoch)]);
    st.apply(Command::Decommission { worker: w("w1") });
    assert_eq!(st.workers[&w("w1")].state, WorkerState::Decommissioning);
    assert_eq!(st.desired_state(&w("w1")), WorkerState::Decommissioning);
    let now = st.assignment(&key(1)).unwrap().locations[p as usize].clone();
    assert_eq!(now.primary.id, w("w2"));
    // New placements avoid the draining worker.
    let b = register(&mut st, 2, 1, 4, 1);
    assert!(b.locations.iter().all(|l| l.primary.id == w("w2")));
    let seg = SegmentRef {
        object_key: "shoal/app-1/1.0/p/seg-1".into(),
        index_offset: 100,
        total_len: 140,
        first_map: MapId(0),
        end_map: MapId(1),
    };
    st.apply(Command::ReportSegment {
        worker: w("w1"),
        shuffle: key(1),
        partition: PartitionId(p),
        segment: seg.clone(),
        last: true,
        upto: Epoch(u64::MAX),
    });
    assert_eq!(st.workers[&w("w1")].state, WorkerState::Decommissioned);
    assert_eq!(st.desired_state(&w("w1")), WorkerState::Decommissioned, "so its process stops");
    assert_eq!(st.spilled_bytes_of(&w("w1")), 8);
    let plan = st.read_plan(&key(1), p, p + 1, 0, 2).unwrap();
    assert_eq!(plan.partitions[0].segments, vec![seg]);
    assert!(plan.partitions[0].sources.iter().all(|s| s.primary.id != w("w1")));
    assert!(!plan.partitions[0].lost);
    // Losing the decommissioned worker now costs nothing.
    st.apply(Command::WorkerLost { worker: w("w1") });
    assert!(!st.read_plan(&key(1), p, p + 1, 0, 2).unwrap().partitions[0].lost);
    st.check_invariants().unwrap();
}

#[test]
fn a_last_segment_releases_only_the_epochs_its_scan_covered() {
    let mut st = cluster(&["w1", "w2"]);
    let a = register(&mut st, 1, 2, 2, 1);
    let first = a.locations.iter().find(|l| l.primary.id == w("w1")).unwrap().clone();
    let p = first.partition.0;
    commit(&mut st, 1, 0, 1, vec![stat(p, 8, first.epoch)]);
    // w1 drains (its spill scans what it holds at `first.epoch`), is recommissioned, and the
    // partition comes back to it under a newer epoch before that spill reports.
    st.apply(Command::Decommission { worker: w("w1") });
    let moved = st.assignment(&key(1)).unwrap().locations[p as usize].clone();
    assert_eq!(moved.primary.id, w("w2"));
    st.apply(Command::Recommission { worker: w("w1") });
    let back = match st.apply(Command::Relocate {
        shuffle: key(1),
        partition: PartitionId(p),
        failed_epoch: moved.epoch,
        failed_worker: w("w2"),
    }) {
        CommandResult::Location(l) => l,
        other => panic!("{other:?}"),
    };
    assert_eq!(back.primary.id, w("w1"));
    assert!(back.epoch > first.epoch);
    commit(&mut st, 1, 1, 1, vec![stat(p, 8, back.epoch)]);
    let seg = SegmentRef {
        object_key: "app-1/1.0/p/w1@1.seg".into(),
        index_offset: 8,
        total_len: 20,
        first_map: MapId(0),
        end_map: MapId(1),
    };
    let r = st.apply(Command::ReportSegment {
        worker: w("w1"),
        shuffle: key(1),
        partition: PartitionId(p),
        segment: seg.clone(),
        last: true,
        upto: first.epoch,
    });
    assert_eq!(r, CommandResult::Ack);
    let plan = st.read_plan(&key(1), p, p + 1, 0, 2).unwrap();
    let part = &plan.partitions[0];
    assert_eq!(part.segments, vec![seg], "the scanned epoch is read from the segment");
    assert!(
        part.sources.iter().any(|s| s.primary.id == w("w1") && s.epoch == back.epoch),
        "the newer epoch on w1 is still read from w1: {:?}",
        part.sources
    );
    st.check_invariants().unwrap();
}

#[test]
fn read_plans_name_the_store_the_workers_registered() {
    let mut st = cluster(&["w1"]);
    register(&mut st, 1, 1, 1, 1);
    assert_eq!(st.read_plan(&key(1), 0, 1, 0, 1).unwrap().store_url, "");
    assert_eq!(st.apply(Command::SetStoreUrl { url: "s3://b/shoal".into() }), CommandResult::Ack);
    assert_eq!(st.read_plan(&key(1), 0, 1, 0, 1).unwrap().store_url, "s3://b/shoal");
    // Kept with no worker left: spilled data stays readable after the pool scaled to zero.
    st.apply(Command::WorkerLost { worker: w("w1") });
    st.apply(Command::RemoveWorker { worker: w("w1") });
    assert_eq!(st.read_plan(&key(1), 0, 1, 0, 1).unwrap().store_url, "s3://b/shoal");
    let long = Command::SetStoreUrl { url: "s".repeat(2000) };
    assert_eq!(error_code(&st.apply(long)), Some(ErrorCode::BadRequest));
}

#[test]
fn a_drained_worker_with_empty_partitions_finishes() {
    let mut st = cluster(&["w1", "w2"]);
    let a = register(&mut st, 1, 2, 4, 1);
    let with_data = a.locations.iter().find(|l| l.primary.id == w("w1")).unwrap().clone();
    commit(&mut st, 1, 0, 1, vec![stat(with_data.partition.0, 10, with_data.epoch)]);
    st.apply(Command::Decommission { worker: w("w1") });
    assert_eq!(st.workers[&w("w1")].state, WorkerState::Decommissioning);
    // It reports an empty buffer although one partition had committed data: that data is lost;
    // the empty ones simply stop being read from it.
    assert_eq!(st.apply(Command::DrainComplete { worker: w("w1") }), CommandResult::Ack);
    assert_eq!(st.workers[&w("w1")].state, WorkerState::Decommissioned);
    let plan = st.read_plan(&key(1), 0, 4, 0, 2).unwrap();
    for pp in &plan.partitions {
        assert!(pp.sources.iter().all(|s| s.primary.id != w("w1")));
        assert_eq!(pp.lost, pp.partition == with_data.partition);
    }
    assert_eq!(error_code(&st.apply(Command::DrainComplete { worker: w("w2") })), Some(ErrorCode::BadRequest));
    st.check_invariants().unwrap();
}

#[test]
fn sealed_shuffles_ask_owners_to_spill_and_removed_ones_to_delete() {
    let mut st = cluster(&["w1"]);
    register(&mut st, 1, 1, 2, 1);
    register(&mut st, 2, 1, 1, 1);
    assert!(st.commands_for(&w("w1"), &[key(1)]).is_empty());
    commit(&mut st, 1, 0, 1, vec![]);
    assert_eq!(st.commands_for(&w("w1"), &[key(1)]), vec![WorkerCommand::Seal { shuffle: key(1) }]);
    st.apply(Command::UnregisterShuffle { shuffle: key(2) });
    assert_eq!(st.commands_for(&w("w1"), &[key(2)]), vec![WorkerCommand::DeleteShuffle { shuffle: key(2) }]);
    assert_eq!(st.counters.tombstones, vec![key(2)]);
    // Unregistering the app removes the rest.
    st.apply(Command::UnregisterApp { app: AppId::new("app-1").unwrap() });
    assert!(st.shuffles.is_empty());
    st.check_invariants().unwrap();
}

/// Pinned from a shrunk failure in `proptest-regressions/state_tests.txt`, whose seed no
/// longer replays it since the history generator changed.
#[test]
fn losing_the_only_worker_moves_writes_to_one_that_joined_later() {
    let mut st = cluster(&["w1"]);
    register(&mut st, 0, 1, 2, 1);
    st.apply(Command::RegisterWorker { worker: w("w2"), addr: "w2:7000".into(), capacity_bytes: 1 });
    assert_eq!(st.apply(Command::WorkerLost { worker: w("w1") }), CommandResult::Ack);
    let a = st.assignment(&key(0)).unwrap();
    assert!(a.locations.iter().all(|l| l.primary.id == w("w2")), "{a:?}");
    st.check_invariants().unwrap();
}

#[test]
fn remove_worker_only_when_gone() {
    let mut st = cluster(&["w1"]);
    assert_eq!(error_code(&st.apply(Command::RemoveWorker { worker: w("w1") })), Some(ErrorCode::BadRequest));
    st.apply(Command::WorkerLost { worker: w("w1") });
    assert_eq!(st.apply(Command::RemoveWorker { worker: w("w1") }), CommandResult::Ack);
    assert!(st.workers.is_empty());
}

#[test]
fn changes_name_every_touched_record() {
    let mut st = cluster(&["w1"]);
    st.take_changes();
    let a = register(&mut st, 1, 1, 3, 1);
    let ch = st.take_changes();
    assert!(ch.contains(&Change::Shuffle(key(1))));
    for p in 0..3 {
        assert!(ch.contains(&Change::Partition(key(1), p)));
    }
    commit(&mut st, 1, 0, 1, vec![stat(2, 1, a.locations[2].epoch)]);
    let ch = st.take_changes();
    assert!(ch.contains(&Change::Map(key(1), 0)));
    assert!(ch.contains(&Change::Partition(key(1), 2)));
    assert!(!ch.contains(&Change::Partition(key(1), 1)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Any sequence of commands keeps the invariants, and replaying it gives the same state
    /// (determinism: every master applies the same log).
    #[test]
    fn random_histories_keep_invariants(cmds in history(60)) {
        let mut a = MasterState::default();
        let mut b = MasterState::default();
        for cmd in cmds {
            let ra = a.apply(cmd.clone());
            let rb = b.apply(cmd);
            prop_assert_eq!(ra, rb);
            let inv = a.check_invariants();
            prop_assert!(inv.is_ok(), "{:?}", inv);
        }
        prop_assert_eq!(&a, &b);
        // Every winner stays the winner.
        for rec in a.shuffles.values() {
            for (map, c) in &rec.commits {
                let r = a.clone().apply(Command::CommitMap {
                    shuffle: rec.meta.key.clone(), map: MapId(*map), attempt: AttemptId(c.attempt.0 + 1000), partitions: vec![],
                });
                let lost_race = matches!(r, CommandResult::Committed(MapCommitted { accepted: false, .. }));
                prop_assert!(lost_race, "{:?}", r);
            }
        }
    }

    /// Group commit is invisible: cutting a history into batches anywhere gives every command
    /// the result it gets alone, and the same state and change log.
    #[test]
    fn batches_apply_as_their_commands_alone(cmds in history(60), cuts in proptest::collection::vec(1usize..8, 1..20)) {
        let mut alone = MasterState::default();
        let mut grouped = MasterState::default();
        let mut rest = cmds.as_slice();
        let mut cut = cuts.iter().cycle();
        while !rest.is_empty() {
            let n = (*cut.next().unwrap()).min(rest.len());
            let (now, later) = rest.split_at(n);
            rest = later;
            let want: Vec<CommandResult> = now.iter().map(|c| alone.apply(c.clone())).collect();
            let got = grouped.apply(Command::Batch(now.to_vec()));
            prop_assert_eq!(got, CommandResult::Batch(want));
            prop_assert_eq!(grouped.take_changes(), alone.take_changes());
        }
        prop_assert_eq!(&grouped, &alone);
    }

    /// A refused command changes nothing, not even the change log: every rule is checked
    /// before the first write, so no master (and no store) keeps half of a refusal.
    #[test]
    fn refused_commands_change_nothing(cmds in history(60)) {
        let mut st = MasterState::default();
        for cmd in cmds {
            let before = st.clone();
            if let CommandResult::Error(e) = st.apply(cmd.clone()) {
                prop_assert_eq!(&st, &before, "{:?} was refused ({:?}) but changed the state", cmd, e);
            }
            st.take_changes();
        }
    }
}

#[test]
fn a_batch_inside_a_batch_is_refused_alone() {
    let mut st = MasterState::default();
    let reg = Command::RegisterWorker { worker: w("w1"), addr: "w1:1".into(), capacity_bytes: 1 };
    let r = st.apply(Command::Batch(vec![Command::Batch(vec![reg.clone()]), reg]));
    let CommandResult::Batch(rs) = r else { panic!("{r:?}") };
    assert!(matches!(&rs[0], CommandResult::Error(e) if e.code() == ErrorCode::BadRequest), "{rs:?}");
    assert_eq!(rs[1], CommandResult::Ack);
    assert!(st.workers.contains_key(&w("w1")));
}

/// The random histories meet every kind of refusal, so the property above holds for each
/// rule rather than vacuously.
#[test]
fn random_histories_reach_every_refusal() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let histories = history(60);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let mut st = MasterState::default();
        for cmd in histories.new_tree(&mut runner).unwrap().current() {
            if let CommandResult::Error(e) = st.apply(cmd) {
                seen.insert(e.code());
            }
        }
    }
    for code in [
        ErrorCode::Unauthorized,
        ErrorCode::UnknownApp,
        ErrorCode::UnknownShuffle,
        ErrorCode::UnknownWorker,
        ErrorCode::BadRequest,
        ErrorCode::NoWorkers,
        ErrorCode::ShuffleNotWriting,
        ErrorCode::DataLost,
    ] {
        assert!(seen.contains(&code), "no history was refused with {code:?}");
    }
}

#[test]
fn unregistering_a_shuffle_removes_every_generation_and_nothing_else() {
    let mut st = cluster(&["w1", "w2"]);
    let gen = |s: u32, g: u32| ShuffleKey::new(AppId::new("app-1").unwrap(), s, g);
    for (s, g) in [(1, 0), (1, 1), (1, 3), (2, 0)] {
        let r =
            st.apply(Command::RegisterShuffle { shuffle: gen(s, g), num_maps: 2, num_partitions: 2, replication: 1 });
        assert!(matches!(r, CommandResult::Assignment(_)), "{r:?}");
    }
    // Any generation names the Spark shuffle id.
    assert_eq!(st.apply(Command::UnregisterShuffle { shuffle: gen(1, 1) }), CommandResult::Ack);
    let left: Vec<ShuffleKey> = st.shuffles.keys().cloned().collect();
    assert_eq!(left, vec![gen(2, 0)]);
    assert_eq!(
        error_code(&st.apply(Command::UnregisterShuffle { shuffle: gen(1, 0) })),
        Some(ErrorCode::UnknownShuffle)
    );
    st.check_invariants().unwrap();
}

#[test]
fn removed_shuffles_objects_are_handed_out_for_deletion_once() {
    let mut st = cluster(&["w1"]);
    for s in 1..=3 {
        register(&mut st, s, 1, 1, 1);
    }
    let mut sent = std::collections::HashSet::new();
    assert!(st.purge_commands(&mut sent, 10).is_empty(), "nothing removed yet");
    st.apply(Command::UnregisterShuffle { shuffle: key(1) });
    st.apply(Command::UnregisterShuffle { shuffle: key(2) });
    let first = st.purge_commands(&mut sent, 1);
    assert_eq!(first, vec![WorkerCommand::DeleteShuffle { shuffle: key(2) }], "newest first, bounded");
    let second = st.purge_commands(&mut sent, 10);
    assert_eq!(second, vec![WorkerCommand::DeleteShuffle { shuffle: key(1) }]);
    assert!(st.purge_commands(&mut sent, 10).is_empty(), "each once");
    // A new leader starts with nothing sent and hands them out again (deletes are idempotent).
    assert_eq!(st.purge_commands(&mut std::collections::HashSet::new(), 10).len(), 2);
    // A shuffle registered again under a removed key is not deleted.
    register(&mut st, 1, 1, 1, 1);
    assert_eq!(
        st.purge_commands(&mut std::collections::HashSet::new(), 10),
        vec![WorkerCommand::DeleteShuffle { shuffle: key(2) }]
    );
}

#[test]
fn the_desired_state_follows_decommission_and_recommission() {
    let mut st = cluster(&["w1", "w2"]);
    let a = register(&mut st, 1, 2, 2, 1);
    let loc = a.locations.iter().find(|l| l.primary.id == w("w1")).unwrap().clone();
    commit(&mut st, 1, 0, 1, vec![stat(loc.partition.0, 8, loc.epoch)]);
    assert_eq!(st.desired_state(&w("w1")), WorkerState::Active);
    st.apply(Command::Decommission { worker: w("w1") });
    assert_eq!(st.desired_state(&w("w1")), WorkerState::Decommissioning, "it holds committed data");
    assert_eq!(st.apply(Command::Recommission { worker: w("w1") }), CommandResult::Ack);
    assert_eq!(st.desired_state(&w("w1")), WorkerState::Active, "every later heartbeat says so");
    assert_eq!(st.desired_state(&w("nobody")), WorkerState::Lost);
    st.check_invariants().unwrap();
}

fn incarnation(st: &MasterState, app: &str) -> u64 {
    st.apps.get(&AppId::new(app).unwrap()).map(|a| a.incarnation).unwrap()
}

/// An app id registered again after it was removed, by its tenant or another, is a new
/// registration; the same registration renewed keeps its incarnation.
#[test]
fn each_registration_of_an_app_id_has_its_own_incarnation() {
    let mut st = cluster(&["w1"]);
    let app = || AppId::new("app-x").unwrap();
    let reg = |st: &mut MasterState, tenant: &str| {
        st.apply(Command::RegisterApp { app: app(), lease_ms: 1_000, tenant: tenant.into() })
    };
    assert!(matches!(reg(&mut st, "t1"), CommandResult::App(_)));
    let first = incarnation(&st, "app-x");
    assert!(first > 0);
    reg(&mut st, "t1");
    assert_eq!(incarnation(&st, "app-x"), first, "renewed, not new");
    assert_eq!(error_code(&reg(&mut st, "t2")), Some(ErrorCode::Unauthorized), "held by t1");
    st.apply(Command::UnregisterApp { app: app() });
    reg(&mut st, "t2");
    let second = incarnation(&st, "app-x");
    assert!(second > first);
    st.apply(Command::UnregisterApp { app: app() });
    reg(&mut st, "t1");
    assert!(incarnation(&st, "app-x") > second, "the first tenant again: still a new registration");
    st.check_invariants().unwrap();
}

/// A spill that began before its shuffle key was removed and registered again reports a
/// segment of the earlier registration: refused, so readers of the new one never see it.
#[test]
fn a_segment_of_an_earlier_registration_is_refused() {
    let mut st = cluster(&["w1"]);
    let a = register(&mut st, 1, 1, 2, 1);
    let old_epoch = a.locations[1].epoch;
    st.apply(Command::UnregisterApp { app: AppId::new("app-1").unwrap() });
    st.apply(Command::RegisterApp { app: AppId::new("app-1").unwrap(), lease_ms: 60_000, tenant: "t2".into() });
    let b = register(&mut st, 1, 1, 2, 1);
    let seg = |n: &str| SegmentRef {
        object_key: format!("shoal/app-1/1.0/1/seg-{n}"),
        index_offset: 10,
        total_len: 20,
        first_map: MapId(0),
        end_map: MapId(1),
    };
    let report = |st: &mut MasterState, n: &str, upto: Epoch, last: bool| {
        st.apply(Command::ReportSegment {
            worker: w("w1"),
            shuffle: key(1),
            partition: PartitionId(1),
            segment: seg(n),
            last,
            upto,
        })
    };
    for last in [false, true] {
        assert_eq!(error_code(&report(&mut st, "old", old_epoch, last)), Some(ErrorCode::UnknownShuffle));
    }
    assert!(st.read_plan(&key(1), 1, 2, 0, 1).unwrap().partitions[0].segments.is_empty());
    // The new registration's own spill is recorded, down to one below its first epoch (a
    // single-copy spill releasing below the current epoch).
    assert_eq!(report(&mut st, "new", Epoch(b.locations[0].epoch.0 - 1), false), CommandResult::Ack);
    assert_eq!(report(&mut st, "new2", b.locations[1].epoch, true), CommandResult::Ack);
    assert_eq!(st.read_plan(&key(1), 1, 2, 0, 1).unwrap().partitions[0].segments.len(), 2);
    st.check_invariants().unwrap();
}
