//! `shuffle-master`: Shoal's metadata service.
//!
//! - [`state`]: the replicated state and its rules, pure and deterministic.
//! - [`assign`]: partition placement.
//! - [`store`]: the Raft log and state machine in RocksDB.
//! - [`raft`]: openraft types and the Raft network over QUIC.
//! - [`service`]: the leader's request handler; [`liveness`]: heartbeat soft state.
//! - [`membership`]: adding and removing masters at runtime.
//! - [`node`]: a master process wired together.

pub mod access;
pub mod assign;
pub mod config;
pub mod group;
pub mod liveness;
pub mod membership;
pub mod node;
pub mod raft;
pub mod service;
pub mod state;
pub mod store;
pub mod web;

#[cfg(test)]
mod state_tests;
#[cfg(test)]
mod store_tests;
#[cfg(test)]
mod test_support;
