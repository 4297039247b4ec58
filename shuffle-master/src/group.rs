//! Group commit: map commits and segment reports that arrive while earlier ones are being
//! replicated ride together in one Raft entry ([`Command::Batch`]), so the log's fsync on
//! every master and the round trip to the followers are paid once per batch, not per call.
//!
//! Invariants:
//! - Every caller gets the result of its own command; a batch applies its commands in the
//!   order they were queued, exactly as if each had its own entry (property-tested in
//!   `state_tests.rs`).
//! - A batch holds at most [`Limits::max_commands`] commands and, unless one command alone is
//!   larger, at most [`Limits::max_weight`] partition statistics, so one entry stays small
//!   next to the Raft RPC frame limit.
//! - At most [`Limits::max_in_flight`] batches are proposed at once; the queue in front of
//!   them is bounded, so a burst waits (back-pressure) instead of growing memory.
//! - A proposal that fails (not the leader, Raft stopped) fails every command in it with the
//!   same error; commits are idempotent per (map, attempt), so callers simply retry.
//! - No timer: a lone command is proposed at once, so batching never adds latency when the
//!   master is idle.

use std::collections::VecDeque;
use std::sync::Arc;

use shuffle_proto::{ErrorCode, WireError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::state::{Command, CommandResult};

/// Bounds on one group commit.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_commands: usize,
    pub max_weight: usize,
    pub max_in_flight: usize,
    /// Commands waiting for a batch.
    pub queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_commands: 512, max_weight: 8192, max_in_flight: 2, queue: 4096 }
    }
}

/// What a command costs in a batch: one, plus the partition statistics it carries.
pub fn weight(cmd: &Command) -> usize {
    match cmd {
        Command::CommitMap { partitions, .. } => 1 + partitions.len(),
        Command::Batch(cmds) => cmds.iter().map(weight).sum(),
        _ => 1,
    }
}

/// How many of the queued commands (given by weight, oldest first) the next batch takes:
/// as many as fit the limits, and always the first one.
pub fn plan(weights: impl IntoIterator<Item = usize>, limits: &Limits) -> usize {
    let mut taken = 0usize;
    let mut total = 0usize;
    for w in weights {
        if taken > 0 && (taken == limits.max_commands || total.saturating_add(w) > limits.max_weight) {
            break;
        }
        taken += 1;
        total = total.saturating_add(w);
    }
    taken
}

/// Proposes one command to Raft and returns its applied result (the seam the batcher is
/// tested through).
pub trait Propose: Send + Sync + 'static {
    fn propose(&self, cmd: Command) -> impl std::future::Future<Output = Result<CommandResult, WireError>> + Send;
}

type Reply = oneshot::Sender<Result<CommandResult, WireError>>;

struct Pending {
    cmd: Command,
    weight: usize,
    reply: Reply,
}

/// The handle callers queue commands through; the batching task ends when it is dropped.
pub struct GroupCommit {
    tx: mpsc::Sender<Pending>,
}

impl GroupCommit {
    /// Starts the batching task on the current runtime.
    pub fn start<P: Propose>(proposer: P, limits: Limits) -> Self {
        let (tx, rx) = mpsc::channel(limits.queue.max(1));
        tokio::spawn(run(Arc::new(proposer), rx, limits));
        Self { tx }
    }

    /// Queues `cmd` and waits for its own applied result.
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, WireError> {
        let (reply, rx) = oneshot::channel();
        let weight = weight(&cmd);
        self.tx.send(Pending { cmd, weight, reply }).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

fn stopped() -> WireError {
    WireError::new(ErrorCode::Unavailable, "the master is shutting down")
}

async fn run<P: Propose>(proposer: Arc<P>, mut rx: mpsc::Receiver<Pending>, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
    let mut queue: VecDeque<Pending> = VecDeque::new();
    loop {
        // A slot first: while every slot is busy, commands gather in the channel.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        if queue.is_empty() {
            match rx.recv().await {
                Some(p) => queue.push_back(p),
                None => return,
            }
        }
        while queue.len() < limits.max_commands {
            match rx.try_recv() {
                Ok(p) => queue.push_back(p),
                Err(_) => break,
            }
        }
        let n = plan(queue.iter().map(|p| p.weight), &limits);
        let batch: Vec<Pending> = queue.drain(..n).collect();
        let proposer = proposer.clone();
        tokio::spawn(async move {
            propose_batch(&*proposer, batch).await;
            drop(slot);
        });
    }
}

async fn propose_batch<P: Propose>(proposer: &P, mut batch: Vec<Pending>) {
    if batch.len() == 1 {
        if let Some(p) = batch.pop() {
            let r = proposer.propose(p.cmd).await;
            let _ = p.reply.send(r);
        }
        return;
    }
    let (cmds, replies): (Vec<Command>, Vec<Reply>) = batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
    let n = cmds.len();
    match proposer.propose(Command::Batch(cmds)).await {
        Ok(CommandResult::Batch(results)) if results.len() == n => {
            for (reply, r) in replies.into_iter().zip(results) {
                let _ = reply.send(match r {
                    CommandResult::Error(e) => Err(e),
                    other => Ok(other),
                });
            }
        }
        Ok(other) => {
            let e = WireError::new(ErrorCode::Internal, format!("a batch of {n} gave {other:?}"));
            replies.into_iter().for_each(|r| drop(r.send(Err(e.clone()))));
        }
        Err(e) => replies.into_iter().for_each(|r| drop(r.send(Err(e.clone())))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use proptest::prelude::*;
    use shuffle_proto::WorkerId;

    use super::*;
    use crate::state::MasterState;

    fn limits() -> Limits {
        Limits { max_commands: 4, max_weight: 10, max_in_flight: 1, queue: 64 }
    }

    proptest! {
        /// A batch takes a prefix of the queue: never empty, within both limits unless the
        /// first command alone is heavier, and as long as the limits allow.
        #[test]
        fn plans_take_the_longest_prefix_within_limits(weights in proptest::collection::vec(0usize..15, 1..30)) {
            let l = limits();
            let n = plan(weights.iter().copied(), &l);
            prop_assert!(n >= 1 && n <= weights.len());
            prop_assert!(n <= l.max_commands);
            let total: usize = weights[..n].iter().sum();
            prop_assert!(n == 1 || total <= l.max_weight);
            if n < weights.len() && n < l.max_commands {
                prop_assert!(total + weights[n] > l.max_weight);
            }
        }
    }

    /// Applies to a real state machine, after a delay, recording each proposal's size.
    struct Recorder {
        state: Mutex<MasterState>,
        sizes: Mutex<Vec<usize>>,
        delay: Duration,
        fail: bool,
    }

    impl Propose for Arc<Recorder> {
        async fn propose(&self, cmd: Command) -> Result<CommandResult, WireError> {
            tokio::time::sleep(self.delay).await;
            if self.fail {
                return Err(WireError::not_leader(None));
            }
            self.sizes.lock().unwrap().push(match &cmd {
                Command::Batch(c) => c.len(),
                _ => 1,
            });
            let r = self.state.lock().unwrap().apply(cmd);
            match r {
                CommandResult::Error(e) => Err(e),
                other => Ok(other),
            }
        }
    }

    fn recorder(delay_ms: u64, fail: bool) -> Arc<Recorder> {
        Arc::new(Recorder {
            state: Mutex::new(MasterState::default()),
            sizes: Mutex::default(),
            delay: Duration::from_millis(delay_ms),
            fail,
        })
    }

    fn register(i: usize) -> Command {
        let worker = WorkerId::new(format!("w{i}")).unwrap();
        Command::RegisterWorker { worker, addr: format!("h{i}:1"), capacity_bytes: 1 }
    }

    #[tokio::test]
    async fn concurrent_callers_share_entries_and_each_gets_its_own_result() {
        let rec = recorder(20, false);
        let g = Arc::new(GroupCommit::start(rec.clone(), limits()));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..10 {
            let g = g.clone();
            tasks.spawn(async move { (i, g.write(register(i)).await) });
        }
        // One more names a shuffle nobody registered: refused alone, the others still land.
        let key = shuffle_proto::ShuffleKey::new(shuffle_proto::AppId::new("app-1").unwrap(), 0, 0);
        let map = shuffle_proto::MapId(0);
        let attempt = shuffle_proto::AttemptId(0);
        let bad = g.write(Command::CommitMap { shuffle: key, map, attempt, partitions: vec![] }).await;
        while let Some(r) = tasks.join_next().await {
            let (i, r) = r.unwrap();
            assert_eq!(r, Ok(CommandResult::Ack), "command {i}");
        }
        let st = rec.state.lock().unwrap();
        assert_eq!(st.workers.len(), 10);
        drop(st);
        let sizes = rec.sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 11, "{sizes:?}");
        assert!(sizes.len() < 11, "nothing was grouped: {sizes:?}");
        assert!(sizes.iter().all(|&s| s <= 4), "{sizes:?}");
        assert_eq!(bad.map_err(|e| e.code()), Err(ErrorCode::UnknownShuffle));
    }

    #[tokio::test]
    async fn a_failed_proposal_fails_every_command_in_it() {
        let g = Arc::new(GroupCommit::start(recorder(5, true), limits()));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..6 {
            let g = g.clone();
            tasks.spawn(async move { g.write(register(i)).await });
        }
        while let Some(r) = tasks.join_next().await {
            assert_eq!(r.unwrap().map_err(|e| e.code()), Err(ErrorCode::NotLeader));
        }
    }
}
