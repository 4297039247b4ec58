//! `shuffle-worker`: Shoal's data service.
//!
//! - [`buffer`]: pushed batches in RocksDB, read back per partition in key order.

pub mod buffer;
