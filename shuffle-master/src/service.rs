//! The master's request handler: leader services for clients, workers and operators, and
//! the Raft RPC endpoint between masters.
//!
//! Invariants:
//! - Only the leader answers; a follower replies `NotLeader` with the leader's address.
//! - Every change goes through `raft.client_write`; replies come from the applied result, so a
//!   reply never reports something that is not committed. Map commits and segment reports
//!   share entries with the ones that arrive meanwhile (`group.rs`).
//! - Read plans are served after `ensure_linearizable`, so a reader never sees an older state
//!   than a commit it already got a reply for.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use shuffle_proto::messages::*;
use shuffle_proto::transport::{CallInfo, Client, Handler, Responder};
use shuffle_proto::{ErrorCode, ProtoError, ShuffleKey, WireError, WorkerId};
use tracing::{info, warn};

use shuffle_proto::auth::{now_unix_ms, Authenticator, Caller, Issuer, Principal, RIGHT_READ, RIGHT_WRITE};

use crate::access::View;
use crate::group::{GroupCommit, Limits as GroupLimits, Propose};
use crate::liveness::Liveness;
use crate::raft::{serve_rpc, NodeId, Raft};
use crate::state::{Command, CommandResult};
use crate::store::SharedState;

/// Milliseconds from a monotonic origin. Injected so tests can drive time.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The process clock.
pub struct MonotonicClock(std::time::Instant);

impl Default for MonotonicClock {
    #[allow(clippy::disallowed_methods)] // the clock every decision is given
    fn default() -> Self {
        Self(std::time::Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

#[derive(Clone, Debug)]
pub struct ServiceOptions {
    pub heartbeat_interval: Duration,
    pub worker_timeout: Duration,
    /// The copies a shuffle registered with replication 0 ("the cluster's choice") gets.
    pub replication: u8,
    /// Most commands in one group-committed Raft entry.
    pub commit_batch: usize,
    /// Longest application lease granted (a peer's larger ask is clamped, never trusted).
    pub max_app_lease: Duration,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(2),
            worker_timeout: Duration::from_secs(30),
            replication: 1,
            commit_batch: GroupLimits::default().max_commands,
            max_app_lease: crate::config::DEFAULT_MAX_APP_LEASE,
        }
    }
}

/// What a worker last reported about itself (soft state).
#[derive(Clone, Copy, Debug, Default)]
struct Reported {
    bytes_held: u64,
    partitions: u32,
}

/// What a master checks callers with and signs with.
pub struct MasterAuth {
    pub authn: Authenticator,
    pub issuer: Issuer,
}

/// Removed shuffles handed out for object deletion per heartbeat reply.
const PURGES_PER_HEARTBEAT: usize = 32;

pub struct MasterService {
    id: NodeId,
    raft: Raft,
    state: SharedState,
    live: Mutex<Liveness>,
    reported: Mutex<std::collections::HashMap<WorkerId, Reported>>,
    /// Removed shuffles whose objects a worker was told to delete (leader-local).
    purged: Mutex<std::collections::HashSet<ShuffleKey>>,
    clock: Arc<dyn Clock>,
    opts: ServiceOptions,
    auth: Option<MasterAuth>,
    /// Calls other masters (reachability probes before a membership change).
    peers: Client,
    group: GroupCommit,
    /// The HTTP status pages, computed at most once a second ([`crate::web`]).
    status_pages: crate::web::StatusCache,
    /// Times [`MasterService::status`] ran.
    status_computations: std::sync::atomic::AtomicU64,
}

fn internal(msg: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::Internal, msg)
}

/// This master's Raft cannot serve (stopped on a storage error, shutting down): the caller
/// tries another master. The cause stays in this master's log, never on the wire (it names
/// files).
fn raft_unavailable(e: &dyn std::fmt::Display) -> WireError {
    tracing::warn!("raft cannot serve a request: {e}");
    WireError::new(ErrorCode::Unavailable, "this master cannot serve requests; try another")
}

fn addr_of(raft: &Raft, node: NodeId) -> Option<String> {
    let m = raft.metrics().borrow().membership_config.clone();
    m.membership().get_node(&node).map(|n| n.addr.clone())
}

fn forward_error(raft: &Raft, f: openraft::error::ForwardToLeader<NodeId, openraft::BasicNode>) -> WireError {
    let hint = f.leader_node.map(|n| n.addr).or_else(|| f.leader_id.and_then(|l| addr_of(raft, l)));
    match hint {
        Some(h) => WireError::not_leader(Some(h)),
        None => WireError::new(ErrorCode::NoLeader, "no leader elected yet"),
    }
}

/// Proposes through this master's Raft: the applied result, or where the leader is.
struct RaftProposer(Raft);

impl Propose for RaftProposer {
    async fn propose(&self, cmd: Command) -> Result<CommandResult, WireError> {
        match self.0.client_write(cmd).await {
            Ok(resp) => match resp.data {
                CommandResult::Error(e) => Err(e),
                other => Ok(other),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(forward_error(&self.0, f)),
            Err(e) => Err(raft_unavailable(&e)),
        }
    }
}

impl MasterService {
    pub fn new(
        id: NodeId,
        raft: Raft,
        state: SharedState,
        clock: Arc<dyn Clock>,
        opts: ServiceOptions,
        auth: Option<MasterAuth>,
        peers: Client,
    ) -> Self {
        Self {
            group: GroupCommit::start(
                RaftProposer(raft.clone()),
                GroupLimits { max_commands: opts.commit_batch.max(1), ..GroupLimits::default() },
            ),
            peers,
            auth,
            id,
            raft,
            state,
            live: Mutex::new(Liveness::default()),
            reported: Default::default(),
            purged: Default::default(),
            clock,
            opts,
            status_pages: Default::default(),
            status_computations: Default::default(),
        }
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub(crate) fn peer_client(&self) -> &Client {
        &self.peers
    }

    pub fn is_leader_now(&self) -> bool {
        self.is_leader()
    }

    fn addr_of(&self, node: NodeId) -> Option<String> {
        addr_of(&self.raft, node)
    }

    fn not_leader(&self) -> WireError {
        let leader = self.raft.metrics().borrow().current_leader;
        match leader {
            Some(l) => WireError::not_leader(self.addr_of(l)),
            None => WireError::new(ErrorCode::NoLeader, "no leader elected yet"),
        }
    }

    /// Ready to serve: a leader is known and this master applied every entry it holds, so a
    /// rolling restart moves on only once the restarted master has rejoined the group.
    pub fn readiness(&self) -> Result<(), String> {
        let m = self.raft.metrics().borrow().clone();
        let Some(leader) = m.current_leader else { return Err("no leader known".into()) };
        let applied = m.last_applied.map(|l| l.index);
        if applied < m.last_log_index {
            return Err(format!("applied {applied:?} of {:?} (leader {leader})", m.last_log_index));
        }
        Ok(())
    }

    fn is_leader(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.current_leader == Some(self.id) && m.state == ServerState::Leader
    }

    pub(crate) fn leader_only(&self) -> Result<(), WireError> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(self.not_leader())
        }
    }

    async fn linearizable(&self) -> Result<(), WireError> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(_))) => Err(self.not_leader()),
            Err(RaftError::APIError(e)) => Err(WireError::new(ErrorCode::NoLeader, e.to_string())),
            Err(e) => Err(raft_unavailable(&e)),
        }
    }

    /// Proposes a command and returns its applied result.
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, WireError> {
        RaftProposer(self.raft.clone()).propose(cmd).await
    }

    /// Like [`Self::write`], sharing a Raft entry with the commands that arrive meanwhile: for
    /// the calls that come by the thousand (map commits, segment reports).
    async fn write_grouped(&self, cmd: Command) -> Result<CommandResult, WireError> {
        self.group.write(cmd).await
    }

    /// Points the caller at the leader: its address comes from the membership, so a master
    /// added at runtime is named too.
    pub(crate) fn forward_error(&self, f: openraft::error::ForwardToLeader<NodeId, openraft::BasicNode>) -> WireError {
        forward_error(&self.raft, f)
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn with_live<T>(&self, f: impl FnOnce(&mut Liveness) -> T) -> T {
        match self.live.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    fn read_state<T>(&self, f: impl FnOnce(&crate::state::MasterState) -> T) -> Result<T, WireError> {
        let g = self.state.read().map_err(|_| internal("state lock poisoned"))?;
        Ok(f(&g.state))
    }

    /// What workers need to check capabilities (sent on registration and every heartbeat).
    fn auth_keys(&self) -> AuthKeys {
        match &self.auth {
            Some(a) => a.issuer.auth_keys(),
            None => AuthKeys { required: false, keys: Vec::new() },
        }
    }

    /// A capability for `rights` on `shuffle`, signed for the tenant holding its app; empty
    /// without authentication.
    fn capability(&self, shuffle: &ShuffleKey, rights: u8) -> Result<Vec<u8>, WireError> {
        let Some(a) = &self.auth else { return Ok(Vec::new()) };
        let (tenant, incarnation) = self.read_state(|s| s.holder_of(&shuffle.app))?.unwrap_or_default();
        Ok(a.issuer.capability(&tenant, incarnation, shuffle, rights, now_unix_ms())?)
    }

    async fn handle_inner(&self, req: Message, caller: &Caller, view: &View) -> Result<Message, WireError> {
        use CommandResult as R;
        let unexpected = |what: &str| internal(format!("unexpected result for {what}"));
        Ok(match req {
            Message::RegisterApp(m) => {
                let tenant = match &caller.principal {
                    Principal::Tenant(t) => t.clone(),
                    _ => String::new(),
                };
                // Clamped before it is logged, so every master applies the same lease.
                let lease_ms = m.lease_ms.min(self.opts.max_app_lease.as_millis() as u64);
                let cmd = Command::RegisterApp { app: m.app.clone(), lease_ms, tenant: tenant.clone() };
                match self.write(cmd).await? {
                    R::App(mut a) => {
                        self.with_live(|l| l.app_seen(&m.app, self.now()));
                        if let Some(auth) = &self.auth {
                            let incarnation =
                                self.read_state(|s| s.holder_of(&m.app))?.map_or(0, |(_, incarnation)| incarnation);
                            a.token = auth.issuer.app_token(&tenant, &m.app, incarnation, now_unix_ms())?.to_text()?;
                        }
                        a.into()
                    }
                    _ => return Err(unexpected("RegisterApp")),
                }
            }
            Message::AppHeartbeat(m) => {
                self.leader_only()?;
                if !self.read_state(|s| s.apps.contains_key(&m.app))? {
                    return Err(WireError::new(ErrorCode::UnknownApp, format!("app {} is not registered", m.app)));
                }
                self.with_live(|l| l.app_seen(&m.app, self.now()));
                Ack {}.into()
            }
            Message::UnregisterApp(m) => {
                self.write(Command::UnregisterApp { app: m.app }).await?;
                Ack {}.into()
            }
            Message::RegisterShuffle(m) => {
                let cmd = Command::RegisterShuffle {
                    shuffle: m.shuffle,
                    num_maps: m.num_maps,
                    num_partitions: m.num_partitions,
                    // Resolved here, so the log records the copies the shuffle really has.
                    replication: if m.replication == 0 { self.opts.replication } else { m.replication },
                };
                match self.write(cmd).await? {
                    R::Assignment(mut a) => {
                        a.capability = self.capability(&a.shuffle, RIGHT_WRITE)?;
                        a.into()
                    }
                    _ => return Err(unexpected("RegisterShuffle")),
                }
            }
            Message::GetAssignment(m) => {
                self.leader_only()?;
                let mut a = self.read_state(|s| s.assignment(&m.shuffle))??;
                a.capability = self.capability(&a.shuffle, RIGHT_WRITE)?;
                a.into()
            }
            Message::Relocate(m) => {
                let cmd = if m.split {
                    Command::SplitPiece {
                        shuffle: m.shuffle,
                        partition: m.partition,
                        epoch: m.failed_epoch,
                        worker: m.failed_worker,
                    }
                } else {
                    Command::Relocate {
                        shuffle: m.shuffle,
                        partition: m.partition,
                        failed_epoch: m.failed_epoch,
                        failed_worker: m.failed_worker,
                    }
                };
                match self.write(cmd).await? {
                    R::Location(location) => Relocated { location }.into(),
                    _ => return Err(unexpected("Relocate")),
                }
            }
            Message::CommitMap(m) => {
                let cmd =
                    Command::CommitMap { shuffle: m.shuffle, map: m.map, attempt: m.attempt, partitions: m.partitions };
                match self.write_grouped(cmd).await? {
                    R::Committed(c) => c.into(),
                    _ => return Err(unexpected("CommitMap")),
                }
            }
            Message::GetReadPlan(m) => {
                self.linearizable().await?;
                let mut plan = self.read_state(|s| {
                    s.read_plan(&m.shuffle, m.start_partition.0, m.end_partition.0, m.start_map.0, m.end_map.0)
                })??;
                plan.capability = self.capability(&plan.shuffle, RIGHT_READ)?;
                plan.into()
            }
            Message::UnregisterShuffle(m) => {
                self.write(Command::UnregisterShuffle { shuffle: m.shuffle }).await?;
                Ack {}.into()
            }
            Message::RegisterWorker(m) => {
                let cmd = Command::RegisterWorker {
                    worker: m.worker.clone(),
                    addr: m.addr.clone(),
                    capacity_bytes: m.capacity_bytes,
                };
                self.write(cmd).await?;
                // Readers learn where segments live from the masters; a worker naming another
                // store than the one recorded (a changed setting) takes over.
                if !m.store_url.is_empty() && self.read_state(|s| s.store_url != m.store_url)? {
                    self.write(Command::SetStoreUrl { url: m.store_url.clone() }).await?;
                }
                info!(worker = %m.worker, addr = %m.addr, held = m.held.len(), "worker registered");
                self.with_live(|l| l.worker_seen(&m.worker, self.now()));
                WorkerRegistered {
                    heartbeat_interval_ms: self.opts.heartbeat_interval.as_millis() as u64,
                    auth: self.auth_keys(),
                    desired: self.read_state(|s| s.desired_state(&m.worker))?,
                }
                .into()
            }
            Message::WorkerHeartbeat(m) => {
                self.leader_only()?;
                let (commands, desired) = self.read_state(|s| match s.workers.get(&m.worker) {
                    Some(w) if w.state != WorkerState::Lost => {
                        let mut c = s.commands_for(&m.worker, &m.shuffles);
                        if let Ok(mut sent) = self.purged.lock() {
                            c.extend(s.purge_commands(&mut sent, PURGES_PER_HEARTBEAT));
                        }
                        Ok((c, w.state.clone()))
                    }
                    _ => Err(WireError::new(ErrorCode::UnknownWorker, format!("worker {} must register", m.worker))),
                })??;
                self.with_live(|l| l.worker_seen(&m.worker, self.now()));
                if let Ok(mut r) = self.reported.lock() {
                    r.insert(m.worker.clone(), Reported { bytes_held: m.bytes_held, partitions: m.partitions });
                }
                HeartbeatReply { commands, auth: self.auth_keys(), desired }.into()
            }
            Message::ReportSegment(m) => {
                let cmd = Command::ReportSegment {
                    worker: m.worker,
                    shuffle: m.shuffle,
                    partition: m.partition,
                    segment: m.segment,
                    last: m.last,
                    upto: m.upto,
                };
                self.write_grouped(cmd).await?;
                Ack {}.into()
            }
            Message::DrainComplete(m) => {
                self.write(Command::DrainComplete { worker: m.worker }).await?;
                Ack {}.into()
            }
            Message::GetStatus(_) => {
                self.leader_only()?;
                self.status()?.into()
            }
            Message::ListShuffles(_) => {
                self.leader_only()?;
                let mut shuffles = self.read_state(|s| s.shuffle_summaries())?;
                if let View::App(app) = view {
                    shuffles.retain(|s| s.shuffle.app == *app);
                }
                ShuffleList { shuffles }.into()
            }
            Message::ListApps(_) => {
                self.leader_only()?;
                let now = self.now();
                let mut apps =
                    self.read_state(|s| self.with_live(|l| s.app_summaries(|a| l.lease_remaining(s, a, now))))?;
                if let View::App(app) = view {
                    apps.retain(|a| a.app == *app);
                }
                AppList { apps }.into()
            }
            Message::DecommissionWorker(m) => {
                self.write(Command::Decommission { worker: m.worker.clone() }).await?;
                info!(worker = %m.worker, "decommission requested");
                Ack {}.into()
            }
            Message::RecommissionWorker(m) => {
                self.write(Command::Recommission { worker: m.worker }).await?;
                Ack {}.into()
            }
            Message::RemoveWorker(m) => {
                self.write(Command::RemoveWorker { worker: m.worker }).await?;
                Ack {}.into()
            }
            Message::ListMasters(m) => self.list_masters(m)?.into(),
            Message::AddMaster(m) => self.add_master(m).await?.into(),
            Message::RemoveMaster(m) => self.remove_master(m).await?.into(),
            other => {
                return Err(WireError::new(ErrorCode::BadRequest, format!("a master does not serve {}", other.name())))
            }
        })
    }

    pub(crate) fn status_pages(&self) -> &crate::web::StatusCache {
        &self.status_pages
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.now()
    }

    /// How many times the cluster status was computed.
    pub fn status_computations(&self) -> u64 {
        self.status_computations.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The cluster picture, as the leader sees it. It walks every worker's partitions under
    /// the state lock: the HTTP pages serve it cached ([`crate::web`]).
    pub fn status(&self) -> Result<ClusterStatus, WireError> {
        self.status_computations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let MasterList { leader, masters } = self.master_list();
        let now = self.now();
        let reported = self.reported.lock().map(|r| r.clone()).unwrap_or_default();
        let (workers, shuffles, apps) = self.read_state(|s| {
            let workers = s
                .workers
                .values()
                .map(|w| {
                    let rep = reported.get(&w.id).copied().unwrap_or_default();
                    let load = s.load_of(&w.id);
                    WorkerStatus {
                        id: w.id.clone(),
                        addr: w.addr.clone(),
                        state: w.state.clone(),
                        bytes_held: rep.bytes_held.max(load.bytes),
                        bytes_spilled: s.spilled_bytes_of(&w.id),
                        partitions: rep.partitions.max(load.partitions as u32),
                        millis_since_heartbeat: self.with_live(|l| now.saturating_sub(l.worker_last_seen(&w.id))),
                    }
                })
                .collect();
            (workers, s.shuffles.len() as u32, s.apps.len() as u32)
        })?;
        Ok(ClusterStatus { leader, masters, workers, shuffles, apps })
    }

    /// One pass of the leader's housekeeping: declare silent workers lost, expire leases.
    /// Returns whether this node led during the pass.
    pub async fn housekeeping(&self, was_leader: bool) -> bool {
        if !self.is_leader() {
            return false;
        }
        let now = self.now();
        if !was_leader {
            info!(id = self.id, "became leader; heartbeat clocks restart");
            self.with_live(|l| l.reset(now));
        }
        let timeout = self.opts.worker_timeout.as_millis() as u64;
        let expired = self.read_state(|s| {
            self.with_live(|l| {
                l.prune(s);
                (l.expired_workers(s, now, timeout), l.expired_apps(s, now))
            })
        });
        let Ok((workers, apps)) = expired else { return true };
        for w in workers {
            warn!(worker = %w, "no heartbeat for {:?}: declaring it lost", self.opts.worker_timeout);
            if let Err(e) = self.write(Command::WorkerLost { worker: w }).await {
                warn!("could not record a lost worker: {e}");
            }
        }
        for app in apps {
            info!(%app, "lease expired: removing the app's shuffles");
            if let Err(e) = self.write(Command::UnregisterApp { app }).await {
                warn!("could not expire an app: {e}");
            }
        }
        true
    }

    /// Runs housekeeping until the Raft node shuts down.
    pub async fn run_housekeeping(self: Arc<Self>, every: Duration) {
        let mut led = false;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.raft.metrics().borrow().running_state.is_err() {
                return;
            }
            led = self.housekeeping(led).await;
        }
    }
}

impl MasterService {
    /// Who is calling and what they may see, or why they are refused.
    fn check(&self, call: &CallInfo, req: &Message) -> Result<(Caller, View), shuffle_proto::auth::AuthError> {
        let caller = match &self.auth {
            Some(a) => a.authn.identify(call.node, call.credential.as_ref(), now_unix_ms())?,
            None => Caller { node: call.node, principal: Principal::None },
        };
        let holder_of = |app: &shuffle_proto::AppId| self.read_state(|s| s.holder_of(app)).ok().flatten();
        let view = crate::access::authorize(&caller, self.auth.is_some(), req, holder_of)?;
        Ok((caller, view))
    }
}

impl Handler for MasterService {
    async fn handle(
        &self,
        call: &CallInfo,
        req: Message,
        body: Vec<u8>,
        out: &mut Responder,
    ) -> Result<(), ProtoError> {
        let decided = self.check(call, &req);
        let (caller, view) = match decided {
            Ok(cv) => cv,
            Err(e) => {
                warn!(peer = %call.peer, call = req.name(), "refused: {e}");
                return out.error(e.into()).await;
            }
        };
        if let Message::RaftRequest(r) = req {
            return match serve_rpc(&self.raft, r.kind.clone(), &body).await {
                Ok(reply) => out.send(&Message::RaftReply(RaftReply { kind: r.kind }), &reply).await,
                Err(e) => out.error(e.into()).await,
            };
        }
        let res = self.handle_inner(req, &caller, &view).await;
        match res {
            Ok(m) => out.send(&m, &[]).await,
            Err(e) => out.error(e).await,
        }
    }
}
