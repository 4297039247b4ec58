//! `shoal masters list|add|remove`: the master group's membership.

use std::time::Duration;

use serde::Serialize;
use shuffle_proto::messages::{AddMaster, MasterList, RemoveMaster, MAX_MEMBERSHIP_TIMEOUT_MS};
use shuffle_proto::Validate;

use crate::cli::status::{role, MasterJson};

#[derive(Debug, Serialize, PartialEq)]
pub struct MastersJson {
    pub leader: Option<u64>,
    pub leader_addr: Option<String>,
    pub masters: Vec<MasterJson>,
}

pub fn to_json(l: &MasterList) -> MastersJson {
    MastersJson {
        leader: l.leader,
        leader_addr: l.masters.iter().find(|m| Some(m.id) == l.leader).map(|m| m.addr.clone()),
        masters: l
            .masters
            .iter()
            .map(|m| MasterJson { id: m.id, addr: m.addr.clone(), role: role(&m.role).into() })
            .collect(),
    }
}

/// One line per master: id, address, voter or learner, and which one leads.
pub fn to_table(l: &MasterList) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{:<6} {:<40} {:<8} LEADER", "ID", "ADDRESS", "MEMBER");
    for m in &to_json(l).masters {
        let member = if m.role == "learner" { "learner" } else { "voter" };
        let leads = if Some(m.id) == l.leader { "*" } else { "" };
        let _ = writeln!(out, "{:<6} {:<40} {:<8} {leads}", m.id, m.addr, member);
    }
    if l.leader.is_none() {
        let _ = writeln!(out, "(no leader known)");
    }
    out
}

/// Parses a `--timeout` into the milliseconds the leader is given.
fn timeout_ms(timeout: Duration) -> anyhow::Result<u64> {
    let ms = timeout.as_millis();
    if ms == 0 || ms > MAX_MEMBERSHIP_TIMEOUT_MS as u128 {
        anyhow::bail!("--timeout must be between 1ms and {}s", MAX_MEMBERSHIP_TIMEOUT_MS / 1000);
    }
    Ok(ms as u64)
}

/// The add request, checked here so a typo fails before reaching the cluster.
pub fn add_request(id: u64, addr: &str, timeout: Duration) -> anyhow::Result<AddMaster> {
    let m = AddMaster { id, addr: addr.to_string(), timeout_ms: timeout_ms(timeout)? };
    m.validate().map_err(|e| anyhow::anyhow!("masters add: {e}"))?;
    Ok(m)
}

pub fn remove_request(id: u64, timeout: Duration) -> anyhow::Result<RemoveMaster> {
    let m = RemoveMaster { id, timeout_ms: timeout_ms(timeout)? };
    m.validate().map_err(|e| anyhow::anyhow!("masters remove: {e}"))?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shuffle_proto::messages::{MasterInfo, MasterRole};

    #[test]
    fn requests_are_checked_before_they_are_sent() {
        let t = Duration::from_secs(60);
        assert_eq!(add_request(4, "shoal-master-3.shoal:9100", t).unwrap().timeout_ms, 60_000);
        assert!(add_request(0, "h:1", t).is_err(), "ids start at 1");
        assert!(add_request(4, "no-port", t).is_err());
        assert!(add_request(4, ":9100", t).is_err());
        assert!(add_request(4, "h:99999", t).is_err());
        assert!(add_request(4, &format!("{}:1", "h".repeat(300)), t).is_err());
        assert!(add_request(4, "h:1", Duration::ZERO).is_err());
        assert!(add_request(4, "h:1", Duration::from_secs(3600)).is_err());
        assert!(remove_request(3, t).is_ok());
        assert!(remove_request(0, t).is_err());
    }

    #[test]
    fn list_shows_voters_learners_and_the_leader() {
        let l = MasterList {
            leader: Some(2),
            masters: vec![
                MasterInfo { id: 1, addr: "a:1".into(), role: MasterRole::Follower },
                MasterInfo { id: 2, addr: "b:1".into(), role: MasterRole::Leader },
                MasterInfo { id: 4, addr: "d:1".into(), role: MasterRole::Learner },
            ],
        };
        let v: serde_json::Value = serde_json::to_value(to_json(&l)).unwrap();
        assert_eq!(v["leader"], 2);
        assert_eq!(v["leader_addr"], "b:1");
        assert_eq!(v["masters"][2]["role"], "learner");
        let table = to_table(&l);
        let line = |id: &str| table.lines().find(|x| x.starts_with(id)).unwrap().to_string();
        assert!(line("2 ").contains("voter") && line("2 ").ends_with('*'), "{table}");
        assert!(line("4 ").contains("learner"), "{table}");
        assert!(!line("1 ").ends_with('*'));
    }
}
