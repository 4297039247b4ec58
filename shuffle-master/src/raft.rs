//! openraft wiring: the type config and the Raft network over Shoal's QUIC transport.
//!
//! A Raft RPC travels as a `RaftRequest { kind }` frame whose body is the postcard encoding of
//! the openraft request; the reply is a `RaftReply` whose body encodes
//! `Result<response, RaftError>`, so a remote Raft error keeps its type.
//!
//! An append whose encoding would pass [`MAX_APPEND_BYTES`] (well under the frame body limit)
//! is not sent: openraft is told how many entries fit and retries with fewer, so a follower
//! catching up on large entries (group commits, huge map commits) is never refused a frame.

use std::io::Cursor;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::{de::DeserializeOwned, Serialize};
use shuffle_proto::messages::{Message, RaftRequest, RaftRpcKind};
use shuffle_proto::transport::Client;

use crate::state::{Command, CommandResult};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Shoal master's Raft types.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// The largest AppendEntries body sent: half the default frame body limit.
pub const MAX_APPEND_BYTES: usize = 32 << 20;

/// How many of `entries` fit in one append of at most `max` bytes when `entries` took
/// `encoded` bytes; `None` when they all fit or one entry alone is the request.
pub fn entries_that_fit(entries: usize, encoded: usize, max: usize) -> Option<u64> {
    if encoded <= max || entries <= 1 {
        return None;
    }
    let fit = (entries as u128 * max as u128 / encoded as u128) as u64;
    Some(fit.clamp(1, entries as u64 - 1))
}

/// Builds per-peer Raft clients on a shared QUIC client.
#[derive(Clone)]
pub struct Network {
    client: Client,
}

impl Network {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient { client: self.client.clone(), target, addr: node.addr.clone() }
    }
}

pub struct PeerClient {
    client: Client,
    target: NodeId,
    addr: String,
}

// The error type is openraft's own RPC error, returned as the network trait requires.
#[allow(clippy::result_large_err)]
fn encode<Req: Serialize, E: std::error::Error>(
    req: &Req,
) -> Result<Vec<u8>, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
    postcard::to_allocvec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

impl PeerClient {
    async fn send<Req, Resp, E>(
        &self,
        kind: RaftRpcKind,
        req: &Req,
        option: RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        self.send_encoded(kind, encode(req)?, option).await
    }

    async fn send_encoded<Resp, E>(
        &self,
        kind: RaftRpcKind,
        body: Vec<u8>,
        option: RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let msg = Message::RaftRequest(RaftRequest { kind });
        let call = self.client.call(&self.addr, &msg, &body);
        let (reply, rbody) = match tokio::time::timeout(option.hard_ttl(), call).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(elapsed) => return Err(RPCError::Unreachable(Unreachable::new(&elapsed))),
        };
        match reply {
            Message::RaftReply(_) => {}
            Message::WireError(e) => return Err(RPCError::Network(NetworkError::new(&e))),
            other => {
                let e = shuffle_proto::ProtoError::Unexpected { expected: "RaftReply", got: other.name() };
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
        }
        let res: Result<Resp, RaftError<NodeId, E>> =
            postcard::from_bytes(&rbody).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let body = encode(&rpc)?;
        if let Some(fit) = entries_that_fit(rpc.entries.len(), body.len(), MAX_APPEND_BYTES) {
            return Err(PayloadTooLarge::new_entries_hint(fit).into());
        }
        self.send_encoded(RaftRpcKind::AppendEntries, body, option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.send(RaftRpcKind::InstallSnapshot, &rpc, option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.send(RaftRpcKind::Vote, &rpc, option).await
    }
}

/// Serves an incoming Raft RPC: decodes the body, hands it to Raft, encodes the outcome.
pub async fn serve_rpc(raft: &Raft, kind: RaftRpcKind, body: &[u8]) -> Result<Vec<u8>, shuffle_proto::ProtoError> {
    let bad = |e: postcard::Error| shuffle_proto::ProtoError::Invalid(format!("raft payload: {e}"));
    let out = match kind {
        RaftRpcKind::AppendEntries => {
            let req: AppendEntriesRequest<TypeConfig> = postcard::from_bytes(body).map_err(bad)?;
            postcard::to_allocvec(&raft.append_entries(req).await)
        }
        RaftRpcKind::Vote => {
            let req: VoteRequest<NodeId> = postcard::from_bytes(body).map_err(bad)?;
            postcard::to_allocvec(&raft.vote(req).await)
        }
        RaftRpcKind::InstallSnapshot => {
            let req: InstallSnapshotRequest<TypeConfig> = postcard::from_bytes(body).map_err(bad)?;
            postcard::to_allocvec(&raft.install_snapshot(req).await)
        }
    };
    out.map_err(|e| shuffle_proto::ProtoError::Invalid(format!("raft reply: {e}")))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::entries_that_fit;

    proptest! {
        /// Appends that fit go as they are; larger ones are cut to a proportional share that
        /// is smaller than what was tried and never empty.
        #[test]
        fn oversized_appends_are_cut_to_what_fits(entries in 0usize..5000, per in 1usize..100_000, max in 1usize..10_000_000) {
            let encoded = entries * per;
            match entries_that_fit(entries, encoded, max) {
                None => prop_assert!(encoded <= max || entries <= 1),
                Some(fit) => {
                    prop_assert!(encoded > max && entries > 1);
                    prop_assert!(fit >= 1 && fit < entries as u64);
                    // Uniform entries: what is asked for fits, unless one entry alone does not.
                    prop_assert!(fit as usize * per <= max || fit == 1);
                }
            }
        }
    }
}
