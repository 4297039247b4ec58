//! Soft state the leader keeps outside Raft: when each worker and app was last heard from.
//!
//! Heartbeats are frequent, so they never go through the log; only their consequences do (a
//! worker declared lost, an app whose lease ran out). The struct takes `now` from the caller.
//!
//! Invariant: a new leader knows no heartbeat history, so it counts every worker and app as
//! seen at the moment it took over; nobody is declared dead for the previous leader's gap.

use std::collections::HashMap;

use shuffle_proto::messages::WorkerState;
use shuffle_proto::{AppId, WorkerId};

use crate::state::MasterState;

#[derive(Debug, Default)]
pub struct Liveness {
    workers: HashMap<WorkerId, u64>,
    apps: HashMap<AppId, u64>,
    since_ms: u64,
}

impl Liveness {
    /// Starts afresh at `now` (on becoming leader).
    pub fn reset(&mut self, now_ms: u64) {
        self.workers.clear();
        self.apps.clear();
        self.since_ms = now_ms;
    }

    pub fn worker_seen(&mut self, id: &WorkerId, now_ms: u64) {
        self.workers.insert(id.clone(), now_ms);
    }

    pub fn app_seen(&mut self, id: &AppId, now_ms: u64) {
        self.apps.insert(id.clone(), now_ms);
    }

    pub fn worker_last_seen(&self, id: &WorkerId) -> u64 {
        self.workers.get(id).copied().unwrap_or(self.since_ms)
    }

    pub fn app_last_seen(&self, id: &AppId) -> u64 {
        self.apps.get(id).copied().unwrap_or(self.since_ms)
    }

    /// Workers that count as alive in `state` but have been silent for longer than `timeout_ms`.
    pub fn expired_workers(&self, state: &MasterState, now_ms: u64, timeout_ms: u64) -> Vec<WorkerId> {
        state
            .workers
            .values()
            .filter(|w| matches!(w.state, WorkerState::Active | WorkerState::Decommissioning))
            .filter(|w| now_ms.saturating_sub(self.worker_last_seen(&w.id)) > timeout_ms)
            .map(|w| w.id.clone())
            .collect()
    }

    /// Apps whose lease ran out.
    pub fn expired_apps(&self, state: &MasterState, now_ms: u64) -> Vec<AppId> {
        state
            .apps
            .values()
            .filter(|a| now_ms.saturating_sub(self.app_last_seen(&a.app)) > a.lease_ms)
            .map(|a| a.app.clone())
            .collect()
    }

    /// Lease time left for an app.
    pub fn lease_remaining(&self, state: &MasterState, app: &AppId, now_ms: u64) -> u64 {
        let lease = state.apps.get(app).map(|a| a.lease_ms).unwrap_or(0);
        // Leases are clamped when granted, but records of older masters may hold any value.
        self.app_last_seen(app).saturating_add(lease).saturating_sub(now_ms)
    }

    /// Forgets workers and apps that are no longer in the state.
    pub fn prune(&mut self, state: &MasterState) {
        self.workers.retain(|w, _| state.workers.contains_key(w));
        self.apps.retain(|a, _| state.apps.contains_key(a));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    #[test]
    fn silence_expires_workers_and_leases_but_a_new_leader_grants_grace() {
        let mut st = MasterState::default();
        let w1 = WorkerId::new("w1").unwrap();
        let w2 = WorkerId::new("w2").unwrap();
        let app = AppId::new("app").unwrap();
        for w in [&w1, &w2] {
            st.apply(Command::RegisterWorker { worker: w.clone(), addr: "a:1".into(), capacity_bytes: 1 });
        }
        st.apply(Command::RegisterApp { app: app.clone(), lease_ms: 500, tenant: String::new() });
        let mut l = Liveness::default();
        l.reset(1_000);
        l.worker_seen(&w1, 1_900);
        l.app_seen(&app, 1_200);
        assert!(l.expired_workers(&st, 1_950, 1_000).is_empty());
        // w2 was never heard from since the takeover at 1000.
        assert_eq!(l.expired_workers(&st, 2_100, 1_000), vec![w2.clone()]);
        assert_eq!(l.lease_remaining(&st, &app, 1_500), 200);
        assert!(l.expired_apps(&st, 1_700).is_empty());
        assert_eq!(l.expired_apps(&st, 1_701), vec![app.clone()]);
        // A lost worker is not reported again.
        st.apply(Command::WorkerLost { worker: w2.clone() });
        assert!(l.expired_workers(&st, 2_100, 1_000).is_empty());
        // Takeover: everyone gets a full timeout again.
        l.reset(5_000);
        assert!(l.expired_workers(&st, 5_900, 1_000).is_empty());
        assert!(l.expired_apps(&st, 5_400).is_empty());
    }

    /// A lease as long as a peer may write is arithmetic, not a panic (records logged before
    /// leases were clamped may hold one).
    #[test]
    fn the_longest_lease_does_not_overflow() {
        let mut st = MasterState::default();
        let app = AppId::new("app").unwrap();
        st.apply(Command::RegisterApp { app: app.clone(), lease_ms: u64::MAX, tenant: String::new() });
        let mut l = Liveness::default();
        l.app_seen(&app, 1_000);
        assert_eq!(l.lease_remaining(&st, &app, 2_000), u64::MAX - 2_000);
        assert!(l.expired_apps(&st, u64::MAX).is_empty());
    }
}
