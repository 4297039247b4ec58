//! Membership: registration, heartbeats, and following what the masters say this worker
//! should be (level-triggered: every reply carries the desired state, so a lost reply or a
//! restart changes nothing).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use shuffle_proto::auth::PublicKey;
use shuffle_proto::messages::*;
use shuffle_proto::objstore::delete_prefix;
use shuffle_proto::segment::shuffle_dir;
use shuffle_proto::transport::TransportError;
use shuffle_proto::{ErrorCode, PartitionId};
use tracing::{info, warn};

use super::Inner;
use crate::core::{Lifecycle, SpillKind, Step};

/// How many held partitions a registration lists (the rest show up in heartbeats' totals).
const MAX_HELD_LISTED: usize = 10_000;

impl Inner {
    pub(super) async fn register(self: &Arc<Self>) -> Result<(), TransportError> {
        let held = self
            .buffer
            .partitions()
            .into_iter()
            .take(MAX_HELD_LISTED)
            .map(|(shuffle, p, bytes)| HeldPartition { shuffle, partition: PartitionId(p), bytes })
            .collect();
        let reply: WorkerRegistered = self
            .master
            .call_typed(RegisterWorker {
                worker: self.cfg.id.clone(),
                addr: self.cfg.advertise.clone(),
                capacity_bytes: self.cfg.max_buffered_bytes,
                held,
                store_url: self.cfg.object_store.clone(),
            })
            .await?;
        self.set_auth(&reply.auth);
        self.follow(reply.desired);
        Ok(())
    }

    /// Takes the master's desired state and carries out what the core decides.
    fn follow(self: &Arc<Self>, desired: WorkerState) {
        let steps = self.core().desired(desired, self.buffer.bytes_held());
        for step in steps {
            match step {
                Step::StartDrain => {
                    info!(worker = %self.cfg.id, bytes = self.buffer.bytes_held(), "decommissioning: draining to the object store")
                }
                Step::Resume => info!(worker = %self.cfg.id, "recommissioned: taking pushes again"),
                Step::ReportDrained => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        // Nothing left here: partitions the master still lists on this worker
                        // had no data. The next heartbeat reply says Decommissioned.
                        if let Err(e) = me.master.call_typed::<Ack>(DrainComplete { worker: me.cfg.id.clone() }).await {
                            warn!("could not report the drain complete: {e}");
                        }
                    });
                }
                Step::Stop => {
                    info!(worker = %self.cfg.id, "decommissioned: all data is in the object store");
                    let _ = self.done.send(true);
                }
                Step::Register => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = Box::pin(me.register()).await {
                            warn!("re-registration failed: {e}");
                        }
                    });
                }
            }
        }
        // While draining, every heartbeat spills what is still here (spills of a shuffle run
        // once at a time, so repeating this is harmless).
        if self.core().lifecycle() == Lifecycle::Draining {
            for shuffle in self.buffer.shuffles() {
                let me = self.clone();
                tokio::spawn(async move { me.spill_shuffle(shuffle, SpillKind::Drain).await });
            }
        }
    }

    /// Takes the masters' current keys (rotation) and whether capabilities are required.
    fn set_auth(&self, auth: &AuthKeys) {
        let keys: Vec<PublicKey> = auth.keys.iter().filter_map(PublicKey::from_wire).collect();
        self.verifier.set_keys(&keys);
        self.auth_required.store(auth.required, Ordering::SeqCst);
    }

    pub(super) async fn heartbeat_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let hb = WorkerHeartbeat {
                worker: self.cfg.id.clone(),
                bytes_held: self.buffer.bytes_held(),
                partitions: self.buffer.partitions().len() as u32,
                shuffles: self.buffer.shuffles(),
            };
            match self.master.call_typed::<HeartbeatReply>(hb).await {
                Ok(reply) => {
                    self.set_auth(&reply.auth);
                    for cmd in reply.commands {
                        self.clone().command(cmd);
                    }
                    self.follow(reply.desired);
                }
                Err(TransportError::Remote(e)) if e.code() == ErrorCode::UnknownWorker => {
                    warn!("the master does not know this worker (declared lost?): registering again");
                    if let Err(e) = self.register().await {
                        warn!("re-registration failed: {e}");
                    }
                }
                Err(e) => warn!("heartbeat failed: {e}"),
            }
        }
    }

    fn command(self: Arc<Self>, cmd: WorkerCommand) {
        match cmd {
            WorkerCommand::Seal { shuffle } => {
                tokio::spawn(async move { self.spill_shuffle(shuffle, SpillKind::Seal).await });
            }
            WorkerCommand::SpillPartition { shuffle, partition } => {
                // Level-triggered: asked every heartbeat while the copy is single; nothing
                // held, nothing to do.
                if self.buffer.partition_bytes(&shuffle, partition.0) > 0 {
                    tokio::spawn(async move { self.spill_single_copy(shuffle, partition.0).await });
                }
            }
            WorkerCommand::DeleteShuffle { shuffle } => {
                tokio::spawn(async move {
                    self.forget(&shuffle);
                    self.core().forget_shuffle(&shuffle);
                    if let Err(e) = self.buffer.delete_shuffle(&shuffle) {
                        warn!(%shuffle, "local delete failed: {e}");
                    }
                    match delete_prefix(&*self.store, &shuffle_dir(&shuffle)).await {
                        Ok(n) => info!(%shuffle, objects = n, "shuffle deleted"),
                        Err(e) => warn!(%shuffle, "object delete failed: {e}"),
                    }
                });
            }
        }
    }
}
