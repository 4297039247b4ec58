//! `shuffle-client`: the Rust client of a Shoal cluster.
//!
//! - [`ShuffleClient`]: registration, assignments, and the entry to writers and readers.
//! - [`MapWriter`]: one map attempt's output, batched, compressed, checksummed and pushed.
//! - [`PartitionStream`]: one partition's committed records, verified.
//! - [`policy`]: the pure batching and retry decisions.
//! - [`bridge`]: the process-wide handles behind the JNI entry points of the Spark plugin
//!   (`jni` feature).
//! - [`ClientError`] with its wire code and remedy (what callers branch on) and its [`ErrorKind`]
//!   (the Spark plugin's exception class).

pub mod bridge;
pub mod cli;
pub mod client;
pub mod error;
#[cfg(feature = "jni")]
mod jni;
pub mod policy;
pub mod reader;
pub mod writer;

pub use client::{ClientConfig, ShuffleClient};
pub use error::{ClientError, ErrorKind};
pub use reader::{PartitionStream, ReadStats};
pub use writer::{CommitOutcome, MapWriter};
