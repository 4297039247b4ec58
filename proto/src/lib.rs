//! `shuffle-proto`: the vocabulary every Shoal component speaks.
//!
//! - [`ids`]: id newtypes ([`AppId`], [`ShuffleKey`], [`PartitionId`], ...).
//! - [`messages`]: every request and reply, archived with rkyv and validated on read.
//! - [`frame`]: how a message and its raw body travel on a stream.
//! - [`batch`]: compressed, checksummed batches and the stream records readers receive.
//! - [`segment`]: the layout of spilled objects.
//! - [`auth`]: credentials, signed tokens and per-shuffle capabilities.
//! - [`error`]: decode errors and the wire error codes, each with a `retryable` flag.
//!
//! Nothing here does I/O beyond reading and writing frames on a caller's stream, and nothing
//! here panics on bytes from a peer: every decoder returns a [`ProtoError`].

#[cfg(feature = "transport")]
pub mod auth;
pub mod batch;
#[cfg(feature = "transport")]
pub mod certs;
pub mod error;
pub mod frame;
#[cfg(feature = "transport")]
pub mod http;
pub mod ids;
pub mod keys;
pub mod messages;
#[cfg(feature = "objstore")]
pub mod objstore;
pub mod retry;
pub mod segment;
#[cfg(feature = "transport")]
pub mod settings;
#[cfg(feature = "transport")]
pub mod transport;

pub use error::{ErrorCode, ProtoError, Remedy, WireError};
pub use frame::{FrameLimits, PROTOCOL_VERSION};
pub use ids::{AppId, AttemptId, Epoch, MapId, PartitionId, ShuffleKey, WorkerId};
pub use messages::{Message, MessageType, ReplyError, Validate};

#[cfg(test)]
mod wire_tests;
