//! Errors: a rich [`ProtoError`] for decoding, and the small [`ErrorCode`] that crosses the
//! wire inside a [`WireError`].
//!
//! Invariants:
//! - Every error that reaches a peer carries an [`ErrorCode`]; its `retryable` flag is a
//!   property of the code, so both ends agree on it without a second field to keep in sync.
//! - Codes are stable numbers: new codes may be added, existing ones never change meaning. An
//!   unknown code from a newer peer decodes as [`ErrorCode::Internal`].

use rkyv::{Archive, Deserialize, Serialize};

/// What to do about a failed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remedy {
    /// The same request, to the same place, after a backoff.
    RetryLater,
    /// Ask the master where the data goes now, then send it there.
    Relocate,
    /// The data is gone: re-run what produced it (Spark: a FetchFailed, then the map stage).
    Recompute,
    /// Retrying cannot help: report the failure.
    Fail,
}

/// Stable error codes carried on the wire.
#[derive(
    Archive, Serialize, Deserialize, serde::Serialize, serde::Deserialize, Clone, Copy, PartialEq, Eq, Hash, Debug,
)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[repr(u16)]
pub enum ErrorCode {
    /// Unexpected failure inside the peer.
    Internal = 1,
    /// The request was well-formed bytes but made no sense (bad ranges, counts, ids).
    BadRequest = 2,
    /// The bytes could not be decoded.
    Malformed = 3,
    /// The peer speaks another protocol version.
    UnsupportedVersion = 4,
    /// This master is not the leader; `leader_hint` says who is.
    NotLeader = 5,
    /// No leader is known right now (election in progress).
    NoLeader = 6,
    UnknownApp = 7,
    UnknownShuffle = 8,
    UnknownWorker = 9,
    /// The shuffle is sealed, lost or removed: it takes no more pushes.
    ShuffleNotWriting = 10,
    /// This worker does not own the partition (any more).
    PartitionNotOwned = 11,
    /// The push carries an older epoch than the worker's assignment: ask the master again.
    StaleEpoch = 12,
    /// Memory or disk is over a watermark: back off and retry.
    Busy = 13,
    /// The disk is (nearly) full: retry later or elsewhere.
    DiskFull = 14,
    /// Data that was committed can no longer be read (its worker is gone and it was not
    /// spilled). Spark turns this into a FetchFailedException.
    DataLost = 15,
    /// A checksum did not match.
    Corrupt = 16,
    /// The caller may not do this.
    Unauthorized = 17,
    /// The worker is draining: it takes no new data.
    Decommissioning = 18,
    /// The peer did not answer in time.
    Timeout = 19,
    /// The object store failed.
    Storage = 20,
    /// A map was already committed by another attempt.
    AlreadyCommitted = 21,
    /// The request exceeds a configured limit.
    TooLarge = 22,
    /// No (or not enough) active workers to place partitions on.
    NoWorkers = 23,
    /// The peer could not reach a service it needs for this request (a worker its masters):
    /// retry later.
    Unavailable = 24,
    /// With replication 2, the partition's replica did not store the batch: the primary has
    /// asked the masters to move the partition to a new pair; relocate there.
    ReplicaFailed = 25,
    /// The partition's current piece reached the split size on this worker: ask the master
    /// for its next piece (relocate with `split`); what was pushed here stays and is read.
    PartitionSplit = 26,
}

impl ErrorCode {
    /// What a caller does about this code: the one classification every retry loop, the
    /// worker and the Spark plugin branch on.
    pub fn remedy(self) -> Remedy {
        use ErrorCode::*;
        match self {
            NotLeader | NoLeader | Busy | Timeout | Storage | Internal | NoWorkers | Unavailable => Remedy::RetryLater,
            StaleEpoch | PartitionNotOwned | Decommissioning | DiskFull | ReplicaFailed | PartitionSplit => {
                Remedy::Relocate
            }
            DataLost | Corrupt | UnknownShuffle => Remedy::Recompute,
            BadRequest | Malformed | UnsupportedVersion | UnknownApp | UnknownWorker | ShuffleNotWriting
            | Unauthorized | AlreadyCommitted | TooLarge => Remedy::Fail,
        }
    }

    /// Whether the same request may succeed if sent again (possibly elsewhere, after asking
    /// the master for a new location).
    pub fn retryable(self) -> bool {
        matches!(self.remedy(), Remedy::RetryLater | Remedy::Relocate)
    }

    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// Maps a number from the wire to a code; unknown numbers become `Internal`.
    pub fn from_u16(v: u16) -> ErrorCode {
        use ErrorCode::*;
        const ALL: [ErrorCode; 26] = [
            Internal,
            BadRequest,
            Malformed,
            UnsupportedVersion,
            NotLeader,
            NoLeader,
            UnknownApp,
            UnknownShuffle,
            UnknownWorker,
            ShuffleNotWriting,
            PartitionNotOwned,
            StaleEpoch,
            Busy,
            DiskFull,
            DataLost,
            Corrupt,
            Unauthorized,
            Decommissioning,
            Timeout,
            Storage,
            AlreadyCommitted,
            TooLarge,
            NoWorkers,
            Unavailable,
            ReplicaFailed,
            PartitionSplit,
        ];
        ALL.into_iter().find(|c| *c as u16 == v).unwrap_or(Internal)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// An error as it crosses the wire.
#[derive(
    Archive, Serialize, Deserialize, serde::Serialize, serde::Deserialize, Clone, PartialEq, Eq, Debug, thiserror::Error,
)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[rkyv(derive(Debug))]
#[error("{}: {message}", self.code())]
pub struct WireError {
    /// The [`ErrorCode`] as a number, so a code added by a newer peer still decodes.
    code: u16,
    pub message: String,
    /// For `NotLeader`: the address of the leader, when known.
    pub leader_hint: Option<String>,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code: code.as_u16(), message: message.into(), leader_hint: None }
    }

    pub fn not_leader(hint: Option<String>) -> Self {
        Self { code: ErrorCode::NotLeader.as_u16(), message: "not the leader".into(), leader_hint: hint }
    }

    /// The code; one this build does not know reads as `Internal`.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::from_u16(self.code)
    }

    pub fn retryable(&self) -> bool {
        self.code().retryable()
    }
}

/// Why bytes could not be decoded or encoded.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProtoError {
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("bad magic {0:#06x}")]
    BadMagic(u16),
    #[error("unsupported protocol version {got} (this build speaks {supported})")]
    UnsupportedVersion { got: u8, supported: u8 },
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLarge { what: &'static str, len: u64, max: u64 },
    #[error("invalid {kind}: {reason}")]
    InvalidId { kind: &'static str, reason: &'static str },
    #[error("invalid message: {0}")]
    Invalid(String),
    /// The archive failed bytecheck validation. The detail (which may hold addresses) is
    /// for local logs only; peers see the fixed message.
    #[error("message archive failed validation")]
    Archive { detail: String },
    /// The frame's auth section could not be decoded.
    #[error("malformed credential")]
    Credential,
    #[error("unexpected message: expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: &'static str },
    #[error("unknown batch codec {0}")]
    UnknownCodec(u8),
    #[error("batch checksum mismatch: header says {expected:#010x}, data gives {actual:#010x}")]
    Checksum { expected: u32, actual: u32 },
    #[error("batch decompression failed: {0}")]
    Decompress(String),
    /// An encrypted batch, and the reader holds no key for it (or not its key).
    #[error("the batch is encrypted by its application; this reader has no key for it")]
    Sealed,
    /// An encrypted batch whose authentication tag does not verify: altered, or sealed with
    /// another key or for another place.
    #[error("the encrypted batch does not authenticate")]
    Unsealed,
    #[error("i/o: {0}")]
    Io(String),
}

impl ProtoError {
    /// The wire code a peer sees when this error ends a request.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtoError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            ProtoError::TooLarge { .. } => ErrorCode::TooLarge,
            ProtoError::Checksum { .. } | ProtoError::Decompress(_) | ProtoError::Unsealed => ErrorCode::Corrupt,
            ProtoError::Sealed => ErrorCode::BadRequest,
            ProtoError::InvalidId { .. } => ErrorCode::BadRequest,
            ProtoError::Io(_) => ErrorCode::Internal,
            _ => ErrorCode::Malformed,
        }
    }
}

impl From<ProtoError> for WireError {
    fn from(e: ProtoError) -> Self {
        WireError::new(e.code(), e.to_string())
    }
}

impl From<std::io::Error> for ProtoError {
    fn from(e: std::io::Error) -> Self {
        ProtoError::Io(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_is_internal() {
        for v in 0..64u16 {
            let c = ErrorCode::from_u16(v);
            if (1..=26).contains(&v) {
                assert_eq!(c.as_u16(), v);
            } else {
                assert_eq!(c, ErrorCode::Internal);
            }
        }
    }

    #[test]
    fn unknown_codes_from_newer_peers_read_as_internal() {
        let e = WireError { code: 999, message: "new".into(), leader_hint: None };
        assert_eq!(e.code(), ErrorCode::Internal);
        assert!(e.to_string().starts_with("Internal"));
    }

    #[test]
    fn retryable_follows_code() {
        assert!(WireError::new(ErrorCode::Busy, "x").retryable());
        assert!(WireError::not_leader(None).retryable());
        assert!(!WireError::new(ErrorCode::DataLost, "x").retryable());
        assert!(!WireError::new(ErrorCode::Corrupt, "x").retryable());
    }

    #[test]
    fn every_code_has_one_remedy_and_retryable_agrees() {
        for v in 0..64u16 {
            let c = ErrorCode::from_u16(v);
            assert_eq!(c.retryable(), matches!(c.remedy(), Remedy::RetryLater | Remedy::Relocate), "{c:?}");
        }
        assert_eq!(ErrorCode::DataLost.remedy(), Remedy::Recompute);
        assert_eq!(ErrorCode::DiskFull.remedy(), Remedy::Relocate);
        assert_eq!(ErrorCode::Unavailable.remedy(), Remedy::RetryLater);
        assert_eq!(ErrorCode::from_u16(24), ErrorCode::Unavailable);
    }
}
