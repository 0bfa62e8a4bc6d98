//! A client of the example service ([`crate::service`]) that finds and follows the leader.
//!
//! [`KvClient::write`] and [`KvClient::read`] send to the node they last saw lead (at first
//! the first node given). A `ForwardToLeader` answer names the leader and the call goes
//! there; a node that cannot be reached, times out or knows no leader yet makes the call try
//! the next node after a short pause, until the call's deadline. A write that timed out may
//! still commit: callers that count acknowledgements count only `Ok` answers (as the kill
//! test does); retrying a `Set` is harmless.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::raft::ClientWriteResponse;

use crate::http::HttpClient;
use crate::service::DebugState;
use crate::{Node, NodeId, Request, TypeConfig};

/// Why a call failed.
#[derive(Debug)]
pub enum ClientError {
    /// The deadline passed before any node answered with an outcome; `last` is the last
    /// failure seen.
    Timeout {
        /// The last failure seen.
        last: String,
    },
    /// The service refused the request (over the limits); retrying will not help.
    Rejected(String),
    /// A node answered with an error that retrying elsewhere will not fix.
    Failed(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Timeout { last } => write!(f, "no answer before the deadline (last: {last})"),
            ClientError::Rejected(why) => write!(f, "rejected: {why}"),
            ClientError::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// What one attempt at one node led to.
enum Attempt<T> {
    Done(T),
    /// Go to this node next.
    Redirect(String),
    /// Try the next node after a pause.
    Retry(String),
    Fail(ClientError),
}

/// A client of a cluster of the example service.
pub struct KvClient {
    http: HttpClient,
    nodes: Vec<String>,
    /// Where the next call goes first.
    target: Mutex<String>,
    /// Bound of one HTTP request.
    pub request_timeout: Duration,
    /// Pause before trying another node.
    pub retry_pause: Duration,
}

impl KvClient {
    /// A client of the nodes at `nodes` (`host:port`); the first is tried first.
    pub fn new(nodes: Vec<String>) -> KvClient {
        let first = nodes.first().cloned().unwrap_or_default();
        KvClient {
            http: HttpClient::new(),
            nodes,
            target: Mutex::new(first),
            request_timeout: Duration::from_secs(2),
            retry_pause: Duration::from_millis(20),
        }
    }

    /// The node the next attempt goes to (a plain hint: a poisoned lock is still usable).
    fn target(&self) -> MutexGuard<'_, String> {
        self.target.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn next_node(&self, after: &str) -> String {
        let i = self.nodes.iter().position(|n| n == after).map_or(0, |i| i + 1);
        self.nodes.get(i % self.nodes.len().max(1)).cloned().unwrap_or_default()
    }

    async fn call<T, F, Fut>(&self, deadline: Instant, mut attempt: F) -> Result<T, ClientError>
    where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = Attempt<T>>,
    {
        let mut last = String::from("no node tried");
        loop {
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout { last });
            }
            let node = self.target().clone();
            match attempt(node.clone()).await {
                Attempt::Done(v) => return Ok(v),
                Attempt::Fail(e) => return Err(e),
                Attempt::Redirect(to) => {
                    last = format!("{node} forwarded to {to}");
                    *self.target() = to;
                }
                Attempt::Retry(why) => {
                    last = format!("{node}: {why}");
                    *self.target() = self.next_node(&node);
                    tokio::time::sleep(self.retry_pause).await;
                }
            }
        }
    }

    fn forward<T>(f: &ForwardToLeader<NodeId, Node>) -> Attempt<T> {
        match &f.leader_node {
            Some(n) => Attempt::Redirect(n.addr.clone()),
            None => Attempt::Retry("no leader known".into()),
        }
    }

    async fn post(
        &self,
        node: &str,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<(u16, Vec<u8>), String> {
        let url = format!("http://{node}{path}");
        match self.http.send(hyper::Method::POST, &url, Some(body), self.request_timeout).await {
            Ok((status, bytes)) => Ok((status.as_u16(), bytes.to_vec())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Writes through the leader; `Ok` once the entry is committed and applied there.
    // The answer's type alias sits next to the one parse that needs it.
    #[allow(clippy::items_after_statements)]
    pub async fn write(
        &self,
        req: &Request,
        deadline: Instant,
    ) -> Result<ClientWriteResponse<TypeConfig>, ClientError> {
        self.call(deadline, |node| async move {
            let (status, body) = match self.post(&node, "/kv/write", req).await {
                Ok(r) => r,
                Err(e) => return Attempt::Retry(e),
            };
            if status == 400 {
                return Attempt::Fail(ClientError::Rejected(String::from_utf8_lossy(&body).into_owned()));
            }
            type Answer =
                Result<ClientWriteResponse<TypeConfig>, RaftError<NodeId, ClientWriteError<NodeId, Node>>>;
            let res: Answer = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => return Attempt::Retry(format!("HTTP {status}: {e}")),
            };
            match res {
                Ok(r) => Attempt::Done(r),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Self::forward(&f),
                Err(e) => Attempt::Retry(e.to_string()),
            }
        })
        .await
    }

    /// A linearizable read of `key` through the leader.
    #[allow(clippy::items_after_statements)] // as in `write`
    pub async fn read(&self, key: &str, deadline: Instant) -> Result<Option<String>, ClientError> {
        self.call(deadline, |node| async move {
            let (status, body) = match self.post(&node, "/kv/read", &key).await {
                Ok(r) => r,
                Err(e) => return Attempt::Retry(e),
            };
            type Answer = Result<Option<String>, RaftError<NodeId, CheckIsLeaderError<NodeId, Node>>>;
            let res: Answer = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => return Attempt::Retry(format!("HTTP {status}: {e}")),
            };
            match res {
                Ok(v) => Attempt::Done(v),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Self::forward(&f),
                Err(e) => Attempt::Retry(e.to_string()),
            }
        })
        .await
    }

    /// Initialises the cluster at `node` with `members` (id and address each).
    pub async fn init(&self, node: &str, members: &[(NodeId, String)]) -> Result<(), ClientError> {
        let url = format!("http://{node}/cluster/init");
        let res: Result<(), serde_json::Value> = self
            .http
            .post_json(&url, &members, self.request_timeout)
            .await
            .map_err(|e| ClientError::Failed(e.to_string()))?;
        res.map_err(|e| ClientError::Failed(e.to_string()))
    }

    /// openraft's metrics of `node`.
    pub async fn metrics(&self, node: &str) -> Result<openraft::RaftMetrics<NodeId, Node>, ClientError> {
        let url = format!("http://{node}/cluster/metrics");
        self.http.get_json(&url, self.request_timeout).await.map_err(|e| ClientError::Failed(e.to_string()))
    }

    /// The state of `node` ([`DebugState`]).
    pub async fn debug_state(&self, node: &str) -> Result<DebugState, ClientError> {
        let url = format!("http://{node}/debug/state");
        self.http
            .get_json(&url, Duration::from_secs(30))
            .await
            .map_err(|e| ClientError::Failed(e.to_string()))
    }
}
