//! `shuffle-worker`: Shoal's data service.
//!
//! - [`buffer`]: pushed batches indexed in RocksDB, read back per partition in key order.
//! - [`vlog`]: the value log holding the pushed batches' bytes, written once.
//! - [`node`]: the worker process: data server, membership, spill and decommission.

pub mod buffer;
pub mod config;
pub mod core;
pub mod incarnation;
pub mod metrics;
pub mod node;
pub mod spill;
pub mod vlog;
