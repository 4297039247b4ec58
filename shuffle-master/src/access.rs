//! Who may make which master call: a pure rule over the message and the caller.
//!
//! Invariant: calls that change the cluster's own membership or records of data placement
//! (Raft between masters, worker registration, heartbeats, segment reports, drain reports)
//! come only from cluster nodes, which prove themselves with a client certificate from the
//! cluster CA. Everything else is decided by the call's own handler.

use shuffle_proto::auth::AuthError;
use shuffle_proto::messages::Message;

/// Whether `msg` may only come from a cluster node.
pub fn node_only(msg: &Message) -> bool {
    matches!(
        msg,
        Message::RaftRequest(_)
            | Message::RegisterWorker(_)
            | Message::WorkerHeartbeat(_)
            | Message::ReportSegment(_)
            | Message::DrainComplete(_)
    )
}

/// Refuses a cluster-internal call from a peer without a cluster identity.
pub fn authorize(node: bool, msg: &Message) -> Result<(), AuthError> {
    if node_only(msg) && !node {
        return Err(AuthError::Forbidden("this call needs a cluster identity (a node certificate)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use shuffle_proto::messages::*;
    use shuffle_proto::{ErrorCode, WireError, WorkerId};

    use super::*;

    #[test]
    fn cluster_internal_calls_need_a_node_identity() {
        let w = || WorkerId::new("w").unwrap();
        let internal: Vec<Message> = vec![
            RaftRequest { kind: RaftRpcKind::Vote }.into(),
            RegisterWorker { worker: w(), addr: "a:1".into(), capacity_bytes: 1, held: vec![] }.into(),
            WorkerHeartbeat { worker: w(), bytes_held: 0, partitions: 0, shuffles: vec![] }.into(),
            DrainComplete { worker: w() }.into(),
        ];
        for m in &internal {
            let e: WireError = authorize(false, m).unwrap_err().into();
            assert_eq!(e.code(), ErrorCode::Unauthorized, "{}", m.name());
            assert!(authorize(true, m).is_ok(), "{}", m.name());
        }
        assert!(authorize(false, &GetStatus {}.into()).is_ok());
    }
}
