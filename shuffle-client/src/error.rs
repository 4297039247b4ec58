//! Client errors: a rich enum, its wire [`ErrorCode`] and [`Remedy`] (what callers, and the
//! Spark plugin, branch on), and the small [`ErrorKind`] that names the plugin's exception class.

use shuffle_proto::objstore::StoreError;
use shuffle_proto::transport::TransportError;
use shuffle_proto::{ErrorCode, ProtoError, Remedy, ShuffleKey, WireError};

/// What a caller needs to decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Committed data can no longer be read: re-run the map stage.
    DataLost,
    /// Data failed a checksum: re-run the map stage.
    Corrupt,
    /// The cluster could not be reached or was overloaded; the operation may be retried.
    Unavailable,
    /// The cluster refused the request (bad arguments, unknown shuffle, ...).
    Rejected,
    /// Local configuration is wrong.
    Config,
    /// A bug or an unexpected state.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    #[error("object store: {0}")]
    Store(#[from] StoreError),
    #[error("protocol: {0}")]
    Proto(#[from] ProtoError),
    #[error("data lost for {shuffle} partition {partition}: {reason}")]
    DataLost { shuffle: ShuffleKey, partition: u32, reason: String },
    #[error("corrupt data in {shuffle} partition {partition}: {reason}")]
    Corrupt { shuffle: ShuffleKey, partition: u32, reason: String },
    #[error("map attempt failed: {0}")]
    AttemptFailed(String),
    #[error("config: {0}")]
    Config(String),
    #[error("handle {0} is closed or of another kind")]
    BadHandle(i64),
}

impl ClientError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::DataLost { .. } => ErrorKind::DataLost,
            ClientError::Corrupt { .. } => ErrorKind::Corrupt,
            ClientError::Config(_) => ErrorKind::Config,
            ClientError::BadHandle(_) => ErrorKind::Internal,
            ClientError::AttemptFailed(_) => ErrorKind::Unavailable,
            ClientError::Transport(t) => kind_of_code(t.code(), t.retryable()),
            ClientError::Store(s) if s.retryable() => ErrorKind::Unavailable,
            ClientError::Store(_) => ErrorKind::DataLost,
            ClientError::Proto(p) => kind_of_code(p.code(), false),
        }
    }

    pub fn retryable(&self) -> bool {
        self.kind() == ErrorKind::Unavailable
    }

    /// The wire code this failure amounts to; `None` for failures of this process that no code
    /// describes (configuration, a closed handle, a map attempt given up).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Transport(t) => Some(t.code()),
            ClientError::Proto(p) => Some(p.code()),
            ClientError::Store(s) if s.retryable() => Some(ErrorCode::Storage),
            // Not retryable: the object is missing or unreadable, as `kind` says.
            ClientError::Store(_) | ClientError::DataLost { .. } => Some(ErrorCode::DataLost),
            ClientError::Corrupt { .. } => Some(ErrorCode::Corrupt),
            ClientError::AttemptFailed(_) | ClientError::Config(_) | ClientError::BadHandle(_) => None,
        }
    }

    /// What to do about it: the code's remedy; without a code, a failed map attempt may run
    /// again and anything else cannot succeed by retrying.
    pub fn remedy(&self) -> Remedy {
        match (self.code(), self) {
            (Some(c), _) => c.remedy(),
            (None, ClientError::AttemptFailed(_)) => Remedy::RetryLater,
            (None, _) => Remedy::Fail,
        }
    }

    pub(crate) fn remote(e: WireError) -> ClientError {
        ClientError::Transport(TransportError::Remote(e))
    }
}

fn kind_of_code(code: ErrorCode, retryable: bool) -> ErrorKind {
    match code {
        ErrorCode::DataLost => ErrorKind::DataLost,
        ErrorCode::Corrupt => ErrorKind::Corrupt,
        _ if retryable => ErrorKind::Unavailable,
        ErrorCode::Internal => ErrorKind::Internal,
        _ => ErrorKind::Rejected,
    }
}
