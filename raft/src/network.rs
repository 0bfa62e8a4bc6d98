//! openraft's network over HTTP ([`crate::http`]): each RPC is a `POST` of its request as JSON to
//! `http://<node addr>/raft/{append,snapshot,vote}` (served by [`crate::service`]), whose
//! body answers `Result<response, RaftError>` as JSON.
//!
//! A connection that cannot be made is [`Unreachable`] (openraft backs off before trying that
//! node again); any other transport failure, a timeout included, is a [`NetworkError`]. Each
//! request is bounded by openraft's hard TTL for it.

use std::error::Error;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::http::HttpClient;
use crate::{Node, NodeId, TypeConfig};

/// Makes the connections of one node to the others; one HTTP client (and its connection
/// pool) shared by all of them.
#[derive(Clone, Default)]
pub struct HttpNetwork {
    client: HttpClient,
}

impl HttpNetwork {
    /// A network with a client of its own.
    pub fn new() -> HttpNetwork {
        HttpNetwork::default()
    }
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = HttpConnection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> HttpConnection {
        HttpConnection { client: self.client.clone(), target, addr: node.addr.clone() }
    }
}

/// The connection of one node to `target`.
pub struct HttpConnection {
    client: HttpClient,
    target: NodeId,
    addr: String,
}

impl HttpConnection {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: Error + DeserializeOwned,
    {
        let url = format!("http://{}/raft/{path}", self.addr);
        let res: Result<Resp, RaftError<NodeId, E>> =
            self.client.post_json(&url, req, option.hard_ttl()).await.map_err(|e| {
                if e.connect {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for HttpConnection {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call("append", &req, &option).await
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("snapshot", &req, &option).await
    }

    async fn vote(
        &mut self,
        req: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call("vote", &req, &option).await
    }
}
