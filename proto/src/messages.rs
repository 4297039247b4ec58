//! Every message Shoal components exchange, and the [`Message`] enum that frames carry.
//!
//! Invariants:
//! - Each message type has one stable kind number ([`Message::kind`]); numbers are never
//!   reused. Requests and their responses travel on one QUIC bidirectional stream.
//! - Bulk bytes (pushed batches, read chunks, Raft payloads) never go through rkyv: they travel
//!   as the frame's body so the receiver can use them in place.
//! - Decoding a message validates its archive with bytecheck and then its ids
//!   ([`Validate`]); nothing decoded from a peer is trusted before both pass.

use rkyv::{Archive, Deserialize, Serialize};

use crate::error::{ProtoError, WireError};
use crate::ids::{AppId, AttemptId, Epoch, MapId, PartitionId, ShuffleKey, WorkerId};

/// Longest accepted `host:port` address.
pub const MAX_ADDR_LEN: usize = 256;

/// Semantic checks that bytecheck cannot do: id syntax, address lengths, ranges.
pub trait Validate {
    fn validate(&self) -> Result<(), ProtoError> {
        Ok(())
    }
}

fn check_addr(addr: &str) -> Result<(), ProtoError> {
    if addr.len() > MAX_ADDR_LEN {
        return Err(ProtoError::TooLarge { what: "address", len: addr.len() as u64, max: MAX_ADDR_LEN as u64 });
    }
    Ok(())
}

/// Longest object-store URL a message may carry.
pub const MAX_STORE_URL_LEN: usize = 1024;

fn check_store_url(url: &str) -> Result<(), ProtoError> {
    if url.len() > MAX_STORE_URL_LEN {
        return Err(ProtoError::TooLarge { what: "store url", len: url.len() as u64, max: MAX_STORE_URL_LEN as u64 });
    }
    Ok(())
}

/// Longest wait a membership change may ask the leader for.
pub const MAX_MEMBERSHIP_TIMEOUT_MS: u64 = 600_000;

fn check_master_id(id: u64) -> Result<(), ProtoError> {
    if id == 0 {
        return Err(ProtoError::Invalid("master ids start at 1".into()));
    }
    Ok(())
}

fn check_master_timeout(ms: u64) -> Result<(), ProtoError> {
    if ms == 0 || ms > MAX_MEMBERSHIP_TIMEOUT_MS {
        return Err(ProtoError::Invalid(format!("timeout {ms} ms is not in 1..={MAX_MEMBERSHIP_TIMEOUT_MS}")));
    }
    Ok(())
}

fn check_range(what: &'static str, start: u32, end: u32) -> Result<(), ProtoError> {
    if start > end {
        return Err(ProtoError::Invalid(format!("{what} range {start}..{end} is reversed")));
    }
    Ok(())
}

macro_rules! wire {
    ($($(#[$m:meta])* $vis:vis $kw:ident $name:ident $body:tt $(;)?)*) => {$(
        $(#[$m])*
        #[derive(Archive, Serialize, Deserialize, serde::Serialize, serde::Deserialize)]
        #[derive(Clone, Debug, PartialEq, Eq)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        #[rkyv(derive(Debug))]
        $vis $kw $name $body
    )*};
}

// ---------------------------------------------------------------------------------------------
// Shared records.

wire! {
    /// Lifecycle of a worker, as the master sees it.
    pub enum WorkerState { Active, Decommissioning, Decommissioned, Lost }

    /// Lifecycle of a shuffle.
    pub enum ShuffleState { Writing, Sealed, Lost, Removed }

    /// A master's Raft role.
    pub enum MasterRole { Leader, Follower, Candidate, Learner, Unknown }

    /// A worker and where to reach it.
    pub struct WorkerEndpoint {
        pub id: WorkerId,
        pub addr: String,
    }

    /// Who owns a partition, at which epoch.
    pub struct PartitionLocation {
        pub partition: PartitionId,
        pub primary: WorkerEndpoint,
        pub replica: Option<WorkerEndpoint>,
        pub epoch: Epoch,
    }

    /// What one committed map wrote to one partition. A reader checks that the batches it
    /// received for the map add up to exactly this: a missing or duplicated batch fails.
    pub struct MapOutput {
        pub map: MapId,
        pub attempt: AttemptId,
        /// Uncompressed record bytes.
        pub bytes: u64,
        /// Wrapping sum of the batches' CRC32s (order-free, so batches may arrive from
        /// several sources).
        pub crc_sum: u32,
        pub batches: u32,
    }

    /// A non-empty partition in a map commit.
    pub struct PartitionStat {
        pub partition: PartitionId,
        pub bytes: u64,
        /// Wrapping sum of the batches' CRC32s.
        pub crc_sum: u32,
        pub batches: u32,
        /// The epochs the batches were pushed at (usually one); the commit is refused if any
        /// of them was lost with its worker.
        pub epochs: Vec<Epoch>,
    }

    /// A spilled object, as recorded by the master.
    pub struct SegmentRef {
        pub object_key: String,
        /// Where the footer index starts (= bytes of stream records before it).
        pub index_offset: u64,
        /// The whole object's length, footer included.
        pub total_len: u64,
        /// The first and one past the last map present in the segment.
        pub first_map: MapId,
        pub end_map: MapId,
    }

    /// Everything a reader needs for one partition.
    pub struct PartitionReadPlan {
        pub partition: PartitionId,
        /// Workers that still hold unspilled data of the partition, one entry per worker.
        pub sources: Vec<PartitionLocation>,
        /// Spilled objects holding the rest.
        pub segments: Vec<SegmentRef>,
        /// Committed data of the partition was lost with its worker: reading fails with
        /// `DataLost` and the map stage must be re-run.
        pub lost: bool,
        /// The committed output of each map in range that wrote to this partition.
        pub expected: Vec<MapOutput>,
    }

    /// A partition a worker holds locally, reported when it (re)registers.
    pub struct HeldPartition {
        pub shuffle: ShuffleKey,
        pub partition: PartitionId,
        pub bytes: u64,
    }

    /// Work the master hands a worker in a heartbeat reply. What the worker should *be*
    /// (active, draining, decommissioned) is not a command: every reply carries it whole.
    pub enum WorkerCommand {
        /// Every map committed: spill the partitions of this shuffle that you own.
        Seal { shuffle: ShuffleKey },
        /// Drop local data of this shuffle.
        DeleteShuffle { shuffle: ShuffleKey },
        /// A partition of a replication-2 shuffle has only this worker's copy left (its other
        /// worker was lost): spill what you hold of it, so the object store is the second copy.
        SpillPartition { shuffle: ShuffleKey, partition: PartitionId },
    }

    pub struct MasterInfo {
        pub id: u64,
        pub addr: String,
        pub role: MasterRole,
    }

    pub struct WorkerStatus {
        pub id: WorkerId,
        pub addr: String,
        pub state: WorkerState,
        pub bytes_held: u64,
        pub bytes_spilled: u64,
        pub partitions: u32,
        pub millis_since_heartbeat: u64,
    }

    pub struct ShuffleSummary {
        pub shuffle: ShuffleKey,
        pub state: ShuffleState,
        pub num_maps: u32,
        pub num_partitions: u32,
        pub committed_maps: u32,
        pub bytes: u64,
    }

    pub struct AppSummary {
        pub app: AppId,
        pub shuffles: u32,
        pub lease_remaining_ms: u64,
    }

    pub enum RaftRpcKind { AppendEntries, Vote, InstallSnapshot }

    /// A public key that verifies tokens the masters sign.
    pub struct VerifyKey { pub id: u32, pub key: Vec<u8> }

    /// What workers need to check callers offline, sent with every registration and
    /// heartbeat reply so key rotation reaches them without a restart.
    pub struct AuthKeys {
        /// Pushes and reads need a capability; when false the cluster runs without
        /// application authentication (an explicit master setting).
        pub required: bool,
        pub keys: Vec<VerifyKey>,
    }
}

/// Most verification keys a master hands out at once (rotation needs two).
pub const MAX_VERIFY_KEYS: usize = 16;
/// Longest app token text.
pub const MAX_TOKEN_TEXT: usize = 4096;
/// Longest encoded credential (a frame's auth section, a capability).
pub const MAX_CREDENTIAL_LEN: usize = 2048;

fn check_capability(c: &[u8]) -> Result<(), ProtoError> {
    if c.len() > MAX_CREDENTIAL_LEN {
        return Err(ProtoError::TooLarge { what: "capability", len: c.len() as u64, max: MAX_CREDENTIAL_LEN as u64 });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Control plane: clients and workers to the master.

wire! {
    /// Positive reply with nothing to say.
    pub struct Ack {}

    /// Sent with a tenant's secret (when authentication is on).
    pub struct RegisterApp { pub app: AppId, pub lease_ms: u64 }
    pub struct AppRegistered {
        pub app: AppId,
        pub lease_ms: u64,
        /// The application's token (text form of a signed [`crate::auth::Credential`]): the
        /// credential for the app's master calls, handed by the driver to its executors.
        /// Empty when the cluster runs without authentication.
        pub token: String,
    }
    pub struct AppHeartbeat { pub app: AppId }
    pub struct UnregisterApp { pub app: AppId }

    /// Idempotent: a second call for the same key returns the existing assignment.
    pub struct RegisterShuffle {
        pub shuffle: ShuffleKey,
        pub num_maps: u32,
        pub num_partitions: u32,
        /// Copies of each batch: 1 or 2, or 0 for the cluster's default (the masters'
        /// `replication` setting).
        pub replication: u8,
    }
    pub struct GetAssignment { pub shuffle: ShuffleKey }
    pub struct ShuffleAssignment {
        pub shuffle: ShuffleKey,
        pub state: ShuffleState,
        pub num_maps: u32,
        pub num_partitions: u32,
        pub locations: Vec<PartitionLocation>,
        /// Encoded capability to push to this shuffle generation (see [`crate::auth`]);
        /// empty without authentication.
        pub capability: Vec<u8>,
    }

    /// A push to `failed_worker` at `failed_epoch` failed: move the partition (or return the
    /// location that already replaced it). Clients name the primary they pushed to; a primary
    /// names the replica it could not forward to (a node call), and the move avoids it.
    /// `split`: nothing failed, the piece at `failed_epoch` reached the split size
    /// (`PartitionSplit`); the next piece goes elsewhere when another worker is active, else
    /// stays on the same worker as a new epoch.
    pub struct Relocate {
        pub shuffle: ShuffleKey,
        pub partition: PartitionId,
        pub failed_epoch: Epoch,
        pub failed_worker: WorkerId,
        pub split: bool,
    }
    pub struct Relocated { pub location: PartitionLocation }

    /// The end of a map attempt. The first commit of a map wins, forever.
    pub struct CommitMap {
        pub shuffle: ShuffleKey,
        pub map: MapId,
        pub attempt: AttemptId,
        /// Non-empty partitions only, ascending.
        pub partitions: Vec<PartitionStat>,
    }
    pub struct MapCommitted {
        /// The attempt whose output counts: this one, or an earlier winner.
        pub winner: AttemptId,
        pub accepted: bool,
        /// Every map has now committed.
        pub sealed: bool,
    }

    pub struct GetReadPlan {
        pub shuffle: ShuffleKey,
        pub start_partition: PartitionId,
        pub end_partition: PartitionId,
        pub start_map: MapId,
        pub end_map: MapId,
    }
    pub struct ReadPlan {
        pub shuffle: ShuffleKey,
        pub state: ShuffleState,
        pub partitions: Vec<PartitionReadPlan>,
        /// Encoded capability to read this shuffle generation from its workers; empty
        /// without authentication.
        pub capability: Vec<u8>,
        /// Where the segments live: the workers' object store URL ("" if none registered
        /// one). Credentials are the reader's own.
        pub store_url: String,
    }

    pub struct UnregisterShuffle { pub shuffle: ShuffleKey }

    pub struct RegisterWorker {
        pub worker: WorkerId,
        pub addr: String,
        pub capacity_bytes: u64,
        pub held: Vec<HeldPartition>,
        /// The object store this worker spills to (a URL, never credentials): the masters
        /// tell readers where segments live.
        pub store_url: String,
    }
    /// `desired`: what the worker should be now (a restarted draining worker drains on).
    pub struct WorkerRegistered { pub heartbeat_interval_ms: u64, pub auth: AuthKeys, pub desired: WorkerState }
    pub struct WorkerHeartbeat {
        pub worker: WorkerId,
        pub bytes_held: u64,
        pub partitions: u32,
        /// Shuffles with local data: the reply says which to seal or delete.
        pub shuffles: Vec<ShuffleKey>,
    }
    /// `desired` is level-triggered: the worker's state as the master records it, in every
    /// reply, so a lost or repeated reply changes nothing and a recommission is never missed.
    pub struct HeartbeatReply { pub commands: Vec<WorkerCommand>, pub auth: AuthKeys, pub desired: WorkerState }

    /// A draining worker holds no data any more: what the master still lists on it had none
    /// (or was lost).
    pub struct DrainComplete { pub worker: WorkerId }

    pub struct ReportSegment {
        pub worker: WorkerId,
        pub shuffle: ShuffleKey,
        pub partition: PartitionId,
        pub segment: SegmentRef,
        /// This segment completes the partition: the worker will drop its local copy.
        pub last: bool,
        /// The newest epoch of the partition on this worker when the spill scanned it: with
        /// `last`, only entries up to it are released (a newer one, placed here again after a
        /// recommission, holds data the segment does not).
        pub upto: Epoch,
    }

    // Admin.
    pub struct GetStatus {}
    pub struct ClusterStatus {
        pub leader: Option<u64>,
        pub masters: Vec<MasterInfo>,
        pub workers: Vec<WorkerStatus>,
        pub shuffles: u32,
        pub apps: u32,
    }
    pub struct ListShuffles {}
    pub struct ShuffleList { pub shuffles: Vec<ShuffleSummary> }
    pub struct ListApps {}
    pub struct AppList { pub apps: Vec<AppSummary> }
    pub struct DecommissionWorker { pub worker: WorkerId }
    pub struct RecommissionWorker { pub worker: WorkerId }
    pub struct RemoveWorker { pub worker: WorkerId }
    /// The master group's membership, as the leader sees it.
    pub struct ListMasters {}
    pub struct MasterList { pub leader: Option<u64>, pub masters: Vec<MasterInfo> }
    /// Adds a master: as a learner first, then as a voter once it caught up within `timeout_ms`.
    pub struct AddMaster { pub id: u64, pub addr: String, pub timeout_ms: u64 }
    /// Removes a master (voter or learner) from the group.
    pub struct RemoveMaster { pub id: u64, pub timeout_ms: u64 }
}

// ---------------------------------------------------------------------------------------------
// Data plane: clients to workers.

/// [`PushBatch::flags`] bit: the replica copy of a batch, forwarded by the partition's primary
/// (a node call); the replica stores it and forwards nothing.
pub const PUSH_FLAG_REPLICA: u8 = 1;

wire! {
    /// Header of a pushed batch; the batch bytes are the frame body.
    pub struct PushBatch {
        pub shuffle: ShuffleKey,
        pub partition: PartitionId,
        pub map: MapId,
        pub attempt: AttemptId,
        pub seq: u32,
        pub epoch: Epoch,
        /// Bit 0: this is the replica copy, forwarded by the primary.
        pub flags: u8,
    }
    /// The batch is in the WAL (and on the replica, with replication 2).
    pub struct PushAck { pub seq: u32 }

    /// Opens a sequential stream of one partition, filtered to the committed attempts.
    pub struct OpenPartition {
        pub shuffle: ShuffleKey,
        pub partition: PartitionId,
        pub start_map: MapId,
        pub end_map: MapId,
        /// Only these (map, attempt) pairs are read; others are skipped by seeking.
        pub attempts: Vec<MapAttemptRef>,
    }
    pub struct MapAttemptRef { pub map: MapId, pub attempt: AttemptId }
    /// Stream records follow as the frame body (see [`crate::batch::StreamRecord`]).
    pub struct Chunk { pub records: u32 }
    /// The stream is complete.
    pub struct EndOfStream { pub records: u64, pub bytes: u64 }

    // Raft between masters; the openraft message is the body.
    pub struct RaftRequest { pub kind: RaftRpcKind }
    pub struct RaftReply { pub kind: RaftRpcKind }
}

// ---------------------------------------------------------------------------------------------
// Validation.

macro_rules! validate_none {
    ($($t:ty),* $(,)?) => {$( impl Validate for $t {} )*};
}
validate_none!(
    Ack,
    GetStatus,
    ListShuffles,
    ListApps,
    ListMasters,
    MapCommitted,
    Chunk,
    EndOfStream,
    RaftRequest,
    RaftReply,
    PushAck,
);

macro_rules! validate_fields {
    ($t:ty => |$s:ident| $body:expr) => {
        impl Validate for $t {
            fn validate(&self) -> Result<(), ProtoError> {
                let $s = self;
                $body
            }
        }
    };
}

validate_fields!(WireError => |s| {
    if let Some(h) = &s.leader_hint { check_addr(h)?; }
    Ok(())
});
validate_fields!(WorkerEndpoint => |s| { s.id.validate()?; check_addr(&s.addr) });
validate_fields!(PartitionLocation => |s| {
    s.primary.validate()?;
    if let Some(r) = &s.replica { r.validate()?; }
    Ok(())
});
validate_fields!(PartitionReadPlan => |s| s.sources.iter().try_for_each(Validate::validate));
validate_fields!(HeldPartition => |s| s.shuffle.validate());
validate_fields!(WorkerCommand => |s| match s {
    WorkerCommand::Seal { shuffle }
    | WorkerCommand::DeleteShuffle { shuffle }
    | WorkerCommand::SpillPartition { shuffle, .. } => shuffle.validate(),
});
validate_fields!(RegisterApp => |s| s.app.validate());
validate_fields!(AppRegistered => |s| {
    if s.token.len() > MAX_TOKEN_TEXT {
        return Err(ProtoError::TooLarge { what: "token", len: s.token.len() as u64, max: MAX_TOKEN_TEXT as u64 });
    }
    s.app.validate()
});
validate_fields!(AuthKeys => |s| {
    if s.keys.len() > MAX_VERIFY_KEYS {
        return Err(ProtoError::TooLarge { what: "verify keys", len: s.keys.len() as u64, max: MAX_VERIFY_KEYS as u64 });
    }
    if s.keys.iter().any(|k| k.key.len() != 32) {
        return Err(ProtoError::Invalid("a verify key must be 32 bytes".into()));
    }
    Ok(())
});
validate_fields!(WorkerRegistered => |s| s.auth.validate());
validate_fields!(AppHeartbeat => |s| s.app.validate());
validate_fields!(UnregisterApp => |s| s.app.validate());
validate_fields!(RegisterShuffle => |s| {
    s.shuffle.validate()?;
    if s.replication > 2 {
        return Err(ProtoError::Invalid(format!("replication must be 0, 1 or 2, got {}", s.replication)));
    }
    Ok(())
});
validate_fields!(GetAssignment => |s| s.shuffle.validate());
validate_fields!(ShuffleAssignment => |s| {
    s.shuffle.validate()?;
    check_capability(&s.capability)?;
    s.locations.iter().try_for_each(Validate::validate)
});
validate_fields!(Relocate => |s| { s.shuffle.validate()?; s.failed_worker.validate() });
validate_fields!(Relocated => |s| s.location.validate());
validate_fields!(CommitMap => |s| {
    s.shuffle.validate()?;
    if !s.partitions.windows(2).all(|w| w[0].partition < w[1].partition) {
        return Err(ProtoError::Invalid("commit partitions must be strictly ascending".into()));
    }
    Ok(())
});
validate_fields!(GetReadPlan => |s| {
    s.shuffle.validate()?;
    check_range("partition", s.start_partition.0, s.end_partition.0)?;
    check_range("map", s.start_map.0, s.end_map.0)
});
validate_fields!(ReadPlan => |s| {
    s.shuffle.validate()?;
    check_capability(&s.capability)?;
    check_store_url(&s.store_url)?;
    s.partitions.iter().try_for_each(Validate::validate)
});
validate_fields!(UnregisterShuffle => |s| s.shuffle.validate());
validate_fields!(RegisterWorker => |s| {
    s.worker.validate()?;
    check_addr(&s.addr)?;
    check_store_url(&s.store_url)?;
    s.held.iter().try_for_each(Validate::validate)
});
validate_fields!(DrainComplete => |s| s.worker.validate());
validate_fields!(WorkerHeartbeat => |s| {
    s.worker.validate()?;
    s.shuffles.iter().try_for_each(ShuffleKey::validate)
});
validate_fields!(HeartbeatReply => |s| {
    s.auth.validate()?;
    s.commands.iter().try_for_each(Validate::validate)
});
validate_fields!(ReportSegment => |s| { s.worker.validate()?; s.shuffle.validate() });
validate_fields!(ClusterStatus => |s| {
    for m in &s.masters { check_addr(&m.addr)?; }
    for w in &s.workers { w.id.validate()?; check_addr(&w.addr)?; }
    Ok(())
});
validate_fields!(ShuffleList => |s| s.shuffles.iter().try_for_each(|x| x.shuffle.validate()));
validate_fields!(AppList => |s| s.apps.iter().try_for_each(|x| x.app.validate()));
validate_fields!(DecommissionWorker => |s| s.worker.validate());
validate_fields!(RecommissionWorker => |s| s.worker.validate());
validate_fields!(RemoveWorker => |s| s.worker.validate());
validate_fields!(MasterList => |s| s.masters.iter().try_for_each(|m| check_addr(&m.addr)));
validate_fields!(AddMaster => |s| {
    check_master_id(s.id)?;
    check_master_timeout(s.timeout_ms)?;
    check_addr(&s.addr)?;
    // Raft dials this address from every master: it must be HOST:PORT.
    match s.addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(()),
        _ => Err(ProtoError::Invalid(format!("master address {:?} is not HOST:PORT", s.addr))),
    }
});
validate_fields!(RemoveMaster => |s| { check_master_id(s.id)?; check_master_timeout(s.timeout_ms) });
validate_fields!(PushBatch => |s| s.shuffle.validate());
validate_fields!(OpenPartition => |s| {
    s.shuffle.validate()?;
    check_range("map", s.start_map.0, s.end_map.0)
});

// ---------------------------------------------------------------------------------------------
// The message enum and its kind numbers.

macro_rules! messages {
    ($($kind:literal => $name:ident),* $(,)?) => {
        /// Any message a frame can carry.
        #[derive(Clone, Debug, PartialEq, Eq)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        pub enum Message { $($name($name)),* }

        impl Message {
            /// The stable kind number written in the frame header.
            pub fn kind(&self) -> u8 {
                match self { $(Message::$name(_) => $kind),* }
            }

            /// The message's name, for logs and errors.
            pub fn name(&self) -> &'static str {
                match self { $(Message::$name(_) => stringify!($name)),* }
            }

            /// Name of a kind number, if it is one.
            pub fn kind_name(kind: u8) -> Option<&'static str> {
                match kind { $($kind => Some(stringify!($name)),)* _ => None }
            }

            /// Runs the semantic checks of the inner message.
            pub fn validate(&self) -> Result<(), ProtoError> {
                match self { $(Message::$name(m) => m.validate()),* }
            }

            /// Appends the rkyv archive of the message to `out`.
            pub fn encode_meta(&self, out: &mut Vec<u8>) -> Result<(), ProtoError> {
                let buf = std::mem::take(out);
                let res = match self {
                    $(Message::$name(m) => rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(m, buf)),*
                };
                *out = res.map_err(|e| ProtoError::Invalid(e.to_string()))?;
                Ok(())
            }

            /// Validates and decodes the archive of a message of `kind`.
            pub fn decode_meta(kind: u8, meta: &[u8]) -> Result<Message, ProtoError> {
                match kind {
                    $($kind => {
                        let m = rkyv::from_bytes::<$name, rkyv::rancor::Error>(meta)
                            .map_err(|e| ProtoError::Archive { detail: e.to_string() })?;
                        m.validate()?;
                        Ok(Message::$name(m))
                    })*
                    other => Err(ProtoError::UnknownKind(other)),
                }
            }
        }

        $(
            impl From<$name> for Message {
                fn from(m: $name) -> Message { Message::$name(m) }
            }
            impl TryFrom<Message> for $name {
                type Error = Message;
                fn try_from(m: Message) -> Result<$name, Message> {
                    match m { Message::$name(x) => Ok(x), other => Err(other) }
                }
            }
            impl MessageType for $name {
                const KIND: u8 = $kind;
                const NAME: &'static str = stringify!($name);
            }
        )*
    };
}

/// A type that is one of the [`Message`] variants.
pub trait MessageType: Into<Message> + TryFrom<Message, Error = Message> {
    const KIND: u8;
    const NAME: &'static str;
}

messages! {
    1 => Ack,
    2 => WireError,
    10 => RegisterApp,
    11 => AppRegistered,
    12 => AppHeartbeat,
    13 => UnregisterApp,
    14 => RegisterShuffle,
    15 => GetAssignment,
    16 => ShuffleAssignment,
    17 => Relocate,
    18 => Relocated,
    19 => CommitMap,
    20 => MapCommitted,
    21 => GetReadPlan,
    22 => ReadPlan,
    23 => UnregisterShuffle,
    30 => RegisterWorker,
    31 => WorkerRegistered,
    32 => WorkerHeartbeat,
    33 => HeartbeatReply,
    34 => ReportSegment,
    35 => DrainComplete,
    50 => PushBatch,
    51 => PushAck,
    52 => OpenPartition,
    53 => Chunk,
    54 => EndOfStream,
    70 => RaftRequest,
    71 => RaftReply,
    80 => GetStatus,
    81 => ClusterStatus,
    82 => ListShuffles,
    83 => ShuffleList,
    84 => ListApps,
    85 => AppList,
    86 => DecommissionWorker,
    87 => RecommissionWorker,
    88 => RemoveWorker,
    89 => ListMasters,
    90 => MasterList,
    91 => AddMaster,
    92 => RemoveMaster,
}

impl Message {
    /// Turns a reply into the expected type, a peer's error into `Err`, anything else into
    /// an `Unexpected` protocol error.
    pub fn expect<T: MessageType>(self) -> Result<T, ReplyError> {
        match T::try_from(self) {
            Ok(t) => Ok(t),
            Err(Message::WireError(e)) => Err(ReplyError::Remote(e)),
            Err(other) => Err(ReplyError::Proto(ProtoError::Unexpected { expected: T::NAME, got: other.name() })),
        }
    }
}

/// What waiting for a typed reply can end in.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ReplyError {
    #[error("peer error: {0}")]
    Remote(WireError),
    #[error(transparent)]
    Proto(#[from] ProtoError),
}
