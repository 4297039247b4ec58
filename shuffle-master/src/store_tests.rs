//! The RocksDB store: openraft's storage suite, and persistence of state records.
#![allow(clippy::result_large_err)]

use openraft::storage::RaftStateMachine;
use openraft::testing::{log_id, StoreBuilder, Suite};
use openraft::{Entry, EntryPayload, StorageError};
use proptest::prelude::*;
use shuffle_proto::messages::PartitionStat;
use shuffle_proto::*;
use tempfile::TempDir;

use crate::raft::{NodeId, TypeConfig};
use crate::state::{Command, CommandResult, MasterState};
use crate::store::*;
use crate::test_support::history;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = TempDir::new().map_err(|e| StorageError::from(openraft::StorageIOError::write(&e)))?;
        let db = open_db(dir.path())?;
        Ok((dir, LogStore::new(db.clone()), StateMachineStore::open(db)?))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError<NodeId>> {
    Suite::test_all(Builder)
}

#[test]
fn records_survive_reopen_exactly() {
    let dir = TempDir::new().unwrap();
    let key = ShuffleKey::new(AppId::new("app-1").unwrap(), 1, 0);
    let expected = {
        let db = open_db(dir.path()).unwrap();
        let sm = StateMachineStore::open(db.clone()).unwrap();
        for w in ["w1", "w2"] {
            let cmd = Command::RegisterWorker {
                worker: WorkerId::new(w).unwrap(),
                addr: format!("{w}:1"),
                capacity_bytes: 9,
            };
            apply_direct(&sm, cmd).unwrap();
        }
        apply_direct(
            &sm,
            Command::RegisterApp { app: AppId::new("app-1").unwrap(), lease_ms: 5, tenant: String::new() },
        )
        .unwrap();
        let a = match apply_direct(
            &sm,
            Command::RegisterShuffle { shuffle: key.clone(), num_maps: 2, num_partitions: 300, replication: 2 },
        )
        .unwrap()
        {
            CommandResult::Assignment(a) => a,
            other => panic!("{other:?}"),
        };
        let stat = PartitionStat {
            partition: PartitionId(299),
            bytes: 10,
            crc_sum: 1,
            batches: 1,
            epochs: vec![a.locations[299].epoch],
        };
        apply_direct(
            &sm,
            Command::CommitMap { shuffle: key.clone(), map: MapId(1), attempt: AttemptId(3), partitions: vec![stat] },
        )
        .unwrap();
        // A second shuffle, removed again: its records must be gone after reopen.
        let gone = ShuffleKey::new(AppId::new("app-1").unwrap(), 2, 0);
        apply_direct(
            &sm,
            Command::RegisterShuffle { shuffle: gone.clone(), num_maps: 1, num_partitions: 3, replication: 1 },
        )
        .unwrap();
        apply_direct(&sm, Command::UnregisterShuffle { shuffle: gone }).unwrap();
        apply_direct(&sm, Command::WorkerLost { worker: WorkerId::new("w1").unwrap() }).unwrap();
        let g = sm.shared();
        let g = g.read().unwrap();
        g.state.check_invariants().unwrap();
        (g.state.read_plan(&key, 0, 300, 0, 2).unwrap(), g.state.counters.clone(), g.state.workers.clone())
    };
    let db = open_db(dir.path()).unwrap();
    let st = reload(&db).unwrap();
    st.check_invariants().unwrap();
    assert_eq!(st.read_plan(&key, 0, 300, 0, 2).unwrap(), expected.0);
    assert_eq!(st.counters, expected.1);
    assert_eq!(st.workers, expected.2);
    assert_eq!(st.shuffles.len(), 1);
}

proptest! {
    // Each case opens RocksDB three times: few cases, short histories.
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The store loads back exactly the state that applied the same log in memory. The log
    /// goes through Raft's `apply` in random batches, and the store is reopened at a random
    /// point and continued: a restarted master must rebuild everything (the derived load
    /// included) so that it places and refuses like one that never stopped.
    #[test]
    fn reopened_store_equals_the_pure_state(
        cmds in history(40),
        cut in any::<prop::sample::Index>(),
        batch in 1usize..5,
    ) {
        let dir = TempDir::new().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut pure = MasterState::default();
        let (before, after) = cmds.split_at(cut.index(cmds.len() + 1));
        let mut index = 0;
        for part in [before, after] {
            let mut sm = StateMachineStore::open(open_db(dir.path())?)?;
            for chunk in part.chunks(batch) {
                let entries: Vec<Entry<TypeConfig>> = chunk
                    .iter()
                    .map(|cmd| {
                        index += 1;
                        Entry { log_id: log_id(1, 0, index), payload: EntryPayload::Normal(cmd.clone()) }
                    })
                    .collect();
                let got = rt.block_on(sm.apply(entries))?;
                let want: Vec<CommandResult> = chunk.iter().map(|cmd| pure.apply(cmd.clone())).collect();
                prop_assert_eq!(got, want);
            }
        }
        pure.take_changes();
        let mut sm = StateMachineStore::open(open_db(dir.path())?)?;
        let shared = sm.shared();
        prop_assert_eq!(&shared.read()?.state, &pure);
        prop_assert_eq!(rt.block_on(sm.applied_state())?.0, Some(log_id(1, 0, index)));
    }
}

/// Log entries are encoded positionally (postcard): a command's layout, once released, never
/// changes, or a master upgraded on its data dir could not replay its log. New fields come as
/// new variants at the end of `Command`. These bytes are a `Relocate` as protocol 5 wrote it.
#[test]
fn written_log_entries_decode_unchanged() {
    let relocate = Command::Relocate {
        shuffle: ShuffleKey::new(AppId::new("app-1").unwrap(), 7, 1),
        partition: PartitionId(3),
        failed_epoch: Epoch(9),
        failed_worker: WorkerId::new("w1").unwrap(),
    };
    let written = RELOCATE_V5;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(hex(&postcard::to_allocvec(&relocate).unwrap()), written, "the layout of Relocate changed");
    let bytes: Vec<u8> =
        (0..written.len()).step_by(2).map(|i| u8::from_str_radix(&written[i..i + 2], 16).unwrap()).collect();
    assert_eq!(postcard::from_bytes::<Command>(&bytes).unwrap(), relocate);
}

const RELOCATE_V5: &str = "04056170702d3107010309027731";

/// App records written before incarnations decode (incarnation 0); current ones round-trip.
#[test]
fn app_records_of_older_masters_decode() {
    #[derive(serde::Serialize)]
    struct Old {
        app: AppId,
        lease_ms: u64,
        tenant: String,
    }
    let old =
        postcard::to_allocvec(&Old { app: AppId::new("app-1").unwrap(), lease_ms: 7, tenant: "t".into() }).unwrap();
    let a = crate::store::decode_app(&old).unwrap();
    assert_eq!((a.app.as_str(), a.lease_ms, a.tenant.as_str(), a.incarnation), ("app-1", 7, "t", 0));
    let new = crate::state::AppRecord { incarnation: 42, ..a };
    assert_eq!(crate::store::decode_app(&postcard::to_allocvec(&new).unwrap()).unwrap(), new);
}
