//! `shuffle-worker`: Shoal's data service.
//!
//! - [`buffer`]: pushed batches in RocksDB, read back per partition in key order.
//! - [`node`]: the worker process: data server, membership, spill and decommission.

pub mod buffer;
pub mod config;
pub mod core;
pub mod metrics;
pub mod node;
pub mod spill;
