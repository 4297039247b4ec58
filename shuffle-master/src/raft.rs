//! openraft wiring: the type config and the Raft network over Shoal's QUIC transport.
//!
//! A Raft RPC travels as a `RaftRequest { kind }` frame whose body is the postcard encoding of
//! the openraft request; the reply is a `RaftReply` whose body encodes
//! `Result<response, RaftError>`, so a remote Raft error keeps its type.

use std::io::Cursor;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
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
        let body = postcard::to_allocvec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
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
        self.send(RaftRpcKind::AppendEntries, &rpc, option).await
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
