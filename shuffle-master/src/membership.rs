//! Changing the master group at runtime: list, add (learner, catch up, then voter), remove.
//!
//! Invariants:
//! - Only the leader changes membership; every wait is bounded by the request's timeout.
//! - A new master becomes a voter only once its log caught up, so adding it never stalls
//!   commits; one that does not catch up in time is taken out again.
//! - A voter is removed only if a majority of the voters left answer the leader now: the
//!   joint configuration needs them to commit, and a change that cannot commit would block
//!   every write until they return.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use shuffle_proto::messages::{AddMaster, ListMasters, MasterInfo, MasterList, MasterRole, Message, RemoveMaster};
use shuffle_proto::{ErrorCode, WireError};
use tracing::{info, warn};

use crate::raft::NodeId;
use crate::service::MasterService;

/// How long a remaining voter has to answer the reachability probe before a removal.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Whether removing voter `remove` leaves a group that can still commit: its voters must not
/// be empty, and a majority of both the old and the new voters (the joint configuration) must
/// be in touch with the leader. `Err` says why not.
pub fn removal_check(voters: &BTreeSet<NodeId>, remove: NodeId, in_touch: &BTreeSet<NodeId>) -> Result<(), String> {
    let left: BTreeSet<NodeId> = voters.iter().copied().filter(|v| *v != remove).collect();
    if left.is_empty() {
        return Err(format!("master {remove} is the last voter: a group cannot be left without one"));
    }
    let now: BTreeSet<NodeId> = voters.intersection(in_touch).copied().collect();
    if now.len() < voters.len() / 2 + 1 {
        return Err(format!(
            "only {now:?} of the voters {voters:?} answer the leader: without a majority no membership change \
             can commit. Bring masters back first"
        ));
    }
    let answering: BTreeSet<NodeId> = left.intersection(in_touch).copied().collect();
    let needed = left.len() / 2 + 1;
    if answering.len() < needed {
        return Err(format!(
            "removing master {remove} would leave voters {left:?}, of which only {answering:?} answer the leader; \
             {needed} are needed to commit the change. Bring the others back (or remove an unreachable \
             master first) and try again"
        ));
    }
    Ok(())
}

impl MasterService {
    /// The membership as this master sees it, with each master's role.
    pub fn master_list(&self) -> MasterList {
        let metrics = self.raft().metrics().borrow().clone();
        let leader = metrics.current_leader;
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let masters = membership
            .nodes()
            .map(|(id, node)| MasterInfo {
                id: *id,
                addr: node.addr.clone(),
                role: if Some(*id) == leader {
                    MasterRole::Leader
                } else if voters.contains(id) {
                    MasterRole::Follower
                } else {
                    MasterRole::Learner
                },
            })
            .collect();
        MasterList { leader, masters }
    }

    pub(crate) fn list_masters(&self, _m: ListMasters) -> Result<MasterList, WireError> {
        self.leader_only()?;
        Ok(self.master_list())
    }

    /// Maps an openraft membership error to a wire error, keeping leader hints.
    fn membership_error(&self, e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> WireError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => self.forward_error(f),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(p))) => {
                WireError::new(ErrorCode::Busy, format!("another membership change is in progress: {p}"))
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
                WireError::new(ErrorCode::BadRequest, c.to_string())
            }
            other => WireError::new(ErrorCode::Internal, other.to_string()),
        }
    }

    /// Runs one membership change with a bound.
    async fn change(
        &self,
        changes: ChangeMembers<NodeId, BasicNode>,
        limit: Duration,
        what: &str,
    ) -> Result<(), WireError> {
        match tokio::time::timeout(limit, self.raft().change_membership(changes, false)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.membership_error(e)),
            Err(_) => Err(WireError::new(
                ErrorCode::Timeout,
                format!("{what} did not commit within {limit:?}; check `shoal masters list` before retrying"),
            )),
        }
    }

    pub(crate) async fn add_master(&self, m: AddMaster) -> Result<MasterList, WireError> {
        self.leader_only()?;
        let limit = Duration::from_millis(m.timeout_ms);
        let deadline = tokio::time::Instant::now() + limit;
        let membership = self.raft().metrics().borrow().membership_config.membership().clone();
        if let Some(node) = membership.get_node(&m.id) {
            if node.addr != m.addr {
                return Err(WireError::new(
                    ErrorCode::BadRequest,
                    format!(
                        "master {} is already a member at {}; remove it first to change its address",
                        m.id, node.addr
                    ),
                ));
            }
            if membership.voter_ids().any(|v| v == m.id) {
                return Ok(self.master_list());
            }
        }
        info!(id = m.id, addr = %m.addr, "adding a master as a learner");
        let added = tokio::time::timeout(limit, self.raft().add_learner(m.id, BasicNode::new(&m.addr), false)).await;
        match added {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(self.membership_error(e)),
            Err(_) => return Err(WireError::new(ErrorCode::Timeout, "adding the learner did not commit in time")),
        }
        // Caught up: it holds every entry the leader had once the learner was in.
        let target = self.raft().metrics().borrow().last_log_index;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let id = m.id;
        let caught_up = self
            .raft()
            .wait(Some(left))
            .metrics(
                |x| {
                    let matched = x.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten()).map(|l| l.index);
                    matched.is_some() && matched >= target
                },
                "new master caught up",
            )
            .await;
        if caught_up.is_err() {
            warn!(id, addr = %m.addr, "the new master did not catch up in time: taking it out again");
            let undo = self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id])), Duration::from_secs(5), "undo");
            let undone = undo.await.is_ok();
            return Err(WireError::new(
                ErrorCode::Timeout,
                format!(
                    "master {id} at {} did not catch up within {limit:?} (is it running, started with --join, and \
                     reachable from the leader at that address?); {}",
                    m.addr,
                    if undone { "it was not added" } else { "it is left as a learner: remove it" }
                ),
            ));
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_secs(1));
        self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])), left, "promoting the new master").await?;
        info!(id, addr = %m.addr, "master added as a voter");
        Ok(self.master_list())
    }

    pub(crate) async fn remove_master(&self, m: RemoveMaster) -> Result<MasterList, WireError> {
        self.leader_only()?;
        let limit = Duration::from_millis(m.timeout_ms);
        let membership = self.raft().metrics().borrow().membership_config.membership().clone();
        if membership.get_node(&m.id).is_none() {
            return Err(WireError::new(ErrorCode::BadRequest, format!("master {} is not a member", m.id)));
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if !voters.contains(&m.id) {
            self.change(ChangeMembers::RemoveNodes(BTreeSet::from([m.id])), limit, "removing the learner").await?;
            return Ok(self.master_list());
        }
        let in_touch = self.voters_in_touch(&membership).await;
        removal_check(&voters, m.id, &in_touch).map_err(|e| WireError::new(ErrorCode::BadRequest, e))?;
        info!(id = m.id, "removing a master");
        self.change(ChangeMembers::RemoveVoters(BTreeSet::from([m.id])), limit, "removing the master").await?;
        Ok(self.master_list())
    }

    /// This master and the voters that answer a call now (any reply counts).
    async fn voters_in_touch(&self, membership: &openraft::Membership<NodeId, BasicNode>) -> BTreeSet<NodeId> {
        let mut probes = tokio::task::JoinSet::new();
        for id in membership.voter_ids().filter(|v| *v != self.id()) {
            let Some(node) = membership.get_node(&id) else { continue };
            let (client, addr) = (self.peer_client().clone(), node.addr.clone());
            probes.spawn(async move {
                let call = client.call(&addr, &Message::ListMasters(ListMasters {}), &[]);
                matches!(tokio::time::timeout(PROBE_TIMEOUT, call).await, Ok(Ok(_))).then_some(id)
            });
        }
        let mut out = BTreeSet::from([self.id()]);
        while let Some(r) = probes.join_next().await {
            if let Ok(Some(id)) = r {
                out.insert(id);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn removal_keeps_a_majority_that_answers() {
        assert!(removal_check(&set(&[1, 2, 3]), 3, &set(&[1, 2])).is_ok(), "3 is down: 1, 2 remain");
        assert!(removal_check(&set(&[1, 2, 3]), 3, &set(&[1, 2, 3])).is_ok());
        // 3 is down: removing 2 leaves {1, 3} with one answering, which cannot commit.
        let e = removal_check(&set(&[1, 2, 3]), 2, &set(&[1, 2])).unwrap_err();
        assert!(e.contains("would leave voters {1, 3}"), "{e}");
        assert!(removal_check(&set(&[1]), 1, &set(&[1])).unwrap_err().contains("last voter"));
        assert!(removal_check(&set(&[1, 2]), 2, &set(&[1, 2])).is_ok(), "two to one");
        assert!(removal_check(&set(&[1, 2]), 2, &set(&[1])).unwrap_err().contains("without a majority"));
        assert!(removal_check(&set(&[1, 2, 3, 4, 5]), 5, &set(&[1, 2, 3])).is_ok());
        assert!(removal_check(&set(&[1, 2, 3, 4, 5]), 3, &set(&[1, 2, 3])).is_err());
    }
}
