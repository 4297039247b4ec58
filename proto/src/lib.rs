//! `shuffle-proto`: the vocabulary every Shoal component speaks, and the I/O they share.
//!
//! Pure (no I/O, no clock, no randomness; decoders never panic on bytes from a peer and
//! return a [`ProtoError`]):
//! - [`ids`]: id newtypes ([`AppId`], [`ShuffleKey`], [`PartitionId`], ...).
//! - [`messages`]: every request and reply, archived with rkyv and validated on read.
//! - [`frame`]: how a message and its raw body travel on a stream (read and written on the
//!   caller's stream).
//! - [`batch`]: compressed, checksummed batches and the stream records readers receive.
//! - [`segment`]: the layout of spilled objects.
//! - [`keys`]: ordered key encodings.
//! - [`error`]: decode errors, the wire error codes and the one classification
//!   ([`Remedy`]) every caller branches on.
//! - [`admission`]: which connections a server takes (handshake, node and client pools).
//! - [`retry`]: the backoff policy ([`retry::Backoff`]); its runner sleeps on tokio's clock.
//!
//! I/O at the edges, behind features:
//! - `transport`: [`transport`] (QUIC client and server loop), [`http`] (status pages),
//!   [`certs`] and [`auth`] (TLS material, credentials and capabilities; they read the wall
//!   clock to check expiry), [`settings`] (configuration files), [`seal`] (batches encrypted
//!   by the application).
//! - `objstore`: [`objstore`] (stores by URL, segment upload and bounded reads, and the
//!   retry, metrics and fault layers).
//!
//! Determinism is enforced by lint: `clippy.toml` bans reading the wall clock or thread-local
//! randomness; the few edge functions that must are marked where they do.

pub mod admission;
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
#[cfg(feature = "transport")]
pub mod seal;
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
