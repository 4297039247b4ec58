//! `shuffle-master`: Shoal's metadata service.
//!
//! - [`state`]: the replicated state and its rules, pure and deterministic.
//! - [`assign`]: partition placement.

pub mod assign;
pub mod state;

#[cfg(test)]
mod state_tests;
