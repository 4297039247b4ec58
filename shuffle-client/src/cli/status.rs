//! `shoal status`: masters with roles, workers with state, bytes and partitions.

use serde::Serialize;
use shuffle_proto::messages::{ClusterStatus, MasterRole, WorkerState};

#[derive(Debug, Serialize, PartialEq)]
pub struct StatusJson {
    pub leader: Option<u64>,
    pub leader_addr: Option<String>,
    pub masters: Vec<MasterJson>,
    pub workers: Vec<WorkerJson>,
    pub shuffles: u32,
    pub apps: u32,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct MasterJson {
    pub id: u64,
    pub addr: String,
    pub role: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct WorkerJson {
    pub id: String,
    pub addr: String,
    pub state: String,
    pub bytes_held: u64,
    pub bytes_spilled: u64,
    pub partitions: u32,
    pub millis_since_heartbeat: u64,
}

pub fn role(r: &MasterRole) -> &'static str {
    match r {
        MasterRole::Leader => "leader",
        MasterRole::Follower => "follower",
        MasterRole::Candidate => "candidate",
        MasterRole::Learner => "learner",
        MasterRole::Unknown => "unknown",
    }
}

pub fn state(s: &WorkerState) -> &'static str {
    match s {
        WorkerState::Active => "active",
        WorkerState::Decommissioning => "decommissioning",
        WorkerState::Decommissioned => "decommissioned",
        WorkerState::Lost => "lost",
    }
}

pub fn to_json(st: &ClusterStatus) -> StatusJson {
    StatusJson {
        leader: st.leader,
        leader_addr: st.masters.iter().find(|m| Some(m.id) == st.leader).map(|m| m.addr.clone()),
        masters: st
            .masters
            .iter()
            .map(|m| MasterJson { id: m.id, addr: m.addr.clone(), role: role(&m.role).into() })
            .collect(),
        workers: st
            .workers
            .iter()
            .map(|w| WorkerJson {
                id: w.id.to_string(),
                addr: w.addr.clone(),
                state: state(&w.state).into(),
                bytes_held: w.bytes_held,
                bytes_spilled: w.bytes_spilled,
                partitions: w.partitions,
                millis_since_heartbeat: w.millis_since_heartbeat,
            })
            .collect(),
        shuffles: st.shuffles,
        apps: st.apps,
    }
}

fn human(bytes: u64) -> String {
    bytesize::ByteSize(bytes).to_string()
}

pub fn to_table(st: &ClusterStatus) -> String {
    use std::fmt::Write;
    let j = to_json(st);
    let mut out = String::new();
    let _ = writeln!(out, "MASTERS");
    let _ = writeln!(out, "  {:<4} {:<24} ROLE", "ID", "ADDRESS");
    for m in &j.masters {
        let _ = writeln!(out, "  {:<4} {:<24} {}", m.id, m.addr, m.role);
    }
    let _ = writeln!(out, "WORKERS");
    let _ = writeln!(
        out,
        "  {:<24} {:<24} {:<16} {:>12} {:>12} {:>10}",
        "ID", "ADDRESS", "STATE", "HELD", "SPILLED", "PARTITIONS"
    );
    for w in &j.workers {
        let _ = writeln!(
            out,
            "  {:<24} {:<24} {:<16} {:>12} {:>12} {:>10}",
            w.id,
            w.addr,
            w.state,
            human(w.bytes_held),
            human(w.bytes_spilled),
            w.partitions
        );
    }
    let _ = writeln!(out, "{} shuffles, {} apps", j.shuffles, j.apps);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shuffle_proto::messages::{MasterInfo, WorkerStatus};
    use shuffle_proto::WorkerId;

    #[test]
    fn json_has_the_documented_shape() {
        let st = ClusterStatus {
            leader: Some(2),
            masters: vec![
                MasterInfo { id: 1, addr: "a:1".into(), role: MasterRole::Follower },
                MasterInfo { id: 2, addr: "b:1".into(), role: MasterRole::Leader },
            ],
            workers: vec![WorkerStatus {
                id: WorkerId::new("w0").unwrap(),
                addr: "c:1".into(),
                state: WorkerState::Decommissioning,
                bytes_held: 5,
                bytes_spilled: 6,
                partitions: 7,
                millis_since_heartbeat: 8,
            }],
            shuffles: 1,
            apps: 1,
        };
        let v: serde_json::Value = serde_json::to_value(to_json(&st)).unwrap();
        assert_eq!(v["leader"], 2);
        assert_eq!(v["leader_addr"], "b:1");
        assert_eq!(v["masters"][1]["role"], "leader");
        assert_eq!(v["workers"][0]["id"], "w0");
        assert_eq!(v["workers"][0]["state"], "decommissioning");
        assert_eq!(v["workers"][0]["bytes_held"], 5);
        assert_eq!(v["workers"][0]["partitions"], 7);
        assert!(to_table(&st).contains("decommissioning"));
    }
}
