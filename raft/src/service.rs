//! One node of the example replicated key-value service: an openraft node over ringkv
//! ([`crate::store`]) talking to its peers over HTTP ([`crate::network`]), serving with axum:
//!
//! | route | body | answer (JSON) |
//! |---|---|---|
//! | `POST /kv/write` | a [`Request`] | `Result<ClientWriteResponse, RaftError<ClientWriteError>>`; HTTP 400 for a request over the limits |
//! | `POST /kv/read` | a key (JSON string) | `Result<Option<String>, RaftError<CheckIsLeaderError>>`: linearizable (the leader confirms its leadership with a quorum first, then waits until it applied that far) |
//! | `POST /kv/read-local` | a key | `Option<String>` from this node's state machine, possibly stale |
//! | `POST /cluster/init` | `[[id, "host:port"], ...]` | `Result<(), RaftError<InitializeError>>` (once, on one node) |
//! | `POST /cluster/add-learner` | `[id, "host:port"]` | `Result<ClientWriteResponse, ...>` |
//! | `POST /cluster/change-membership` | `[id, ...]` | `Result<ClientWriteResponse, ...>` |
//! | `GET /cluster/metrics` | | openraft's `RaftMetrics` |
//! | `GET /debug/state` | | [`DebugState`]: applied log id, the log's ids and every pair (for tests) |
//! | `POST /raft/{append,snapshot,vote}` | openraft's RPCs | (the peers' network) |
//!
//! A write or a linearizable read sent to a follower answers `ForwardToLeader` with the
//! leader's id and address; [`crate::client::KvClient`] follows it.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{Config, LogId, SnapshotPolicy};
use serde::{Deserialize, Serialize};

use crate::network::HttpNetwork;
use crate::store::{self, LogStore, StateMachineStore};
use crate::{Node, NodeId, Raft, Request};

/// Largest request body accepted (an append of many entries, a snapshot chunk as JSON).
pub const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The node's id (unique in the cluster).
    pub id: NodeId,
    /// `host:port` to serve on; also the address the other nodes use for it.
    pub addr: String,
    /// Directory of the node's data (ringkv database and snapshot files).
    pub dir: PathBuf,
    /// openraft's heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// openraft's election timeout range, ms.
    pub election_ms: (u64, u64),
    /// Build a snapshot every this many applied entries (then purge the log below it).
    pub snapshot_every: u64,
    /// Entries kept in the log below the last snapshot.
    pub keep_logs: u64,
    /// Time allowed to send a snapshot chunk, and to send and install the last one, ms.
    pub install_snapshot_timeout_ms: u64,
    /// ringkv options of the node's database.
    pub db: ringkv::Options,
}

impl NodeOptions {
    /// Options with the defaults of the example service for node `id` at `addr` in `dir`.
    pub fn new(id: NodeId, addr: impl Into<String>, dir: impl Into<PathBuf>) -> NodeOptions {
        NodeOptions {
            id,
            addr: addr.into(),
            dir: dir.into(),
            heartbeat_ms: 100,
            election_ms: (400, 800),
            snapshot_every: 10_000,
            keep_logs: 1_000,
            install_snapshot_timeout_ms: 10_000,
            db: ringkv::Options::default(),
        }
    }

    /// openraft's configuration for these options.
    pub fn raft_config(&self) -> Result<Config, openraft::ConfigError> {
        Config {
            cluster_name: "ringkv-raft".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_ms.0,
            election_timeout_max: self.election_ms.1,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_logs,
            // A snapshot travels in chunks of JSON; the last one's timeout covers installing
            // it (copy, load into a new generation, three fsyncs), far above openraft's
            // default 200 ms on a busy disk.
            snapshot_max_chunk_size: 256 * 1024,
            install_snapshot_timeout: self.install_snapshot_timeout_ms,
            ..Config::default()
        }
        .validate()
    }
}

/// The shared state of a node's handlers.
pub struct App {
    /// The node's id.
    pub id: NodeId,
    /// The node's address.
    pub addr: String,
    /// The openraft node.
    pub raft: Raft,
    /// Its state machine (reads are served from it).
    pub sm: StateMachineStore,
    /// Its log (for [`DebugState`]).
    pub log: LogStore,
}

/// A node's state as `GET /debug/state` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DebugState {
    /// The node's id.
    pub id: NodeId,
    /// The last log id applied to the state machine.
    pub applied: Option<LogId<NodeId>>,
    /// The id of every entry in the log (from the first not purged).
    pub log: Vec<LogId<NodeId>>,
    /// Every pair of the state machine, in key order, at `applied`.
    pub kv: Vec<(String, String)>,
}

fn internal(e: impl std::fmt::Display) -> HttpResponse {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
}

async fn raft_append(
    State(app): State<Arc<App>>,
    Json(req): Json<AppendEntriesRequest<crate::TypeConfig>>,
) -> HttpResponse {
    Json(app.raft.append_entries(req).await).into_response()
}

async fn raft_snapshot(
    State(app): State<Arc<App>>,
    Json(req): Json<InstallSnapshotRequest<crate::TypeConfig>>,
) -> HttpResponse {
    Json(app.raft.install_snapshot(req).await).into_response()
}

async fn raft_vote(State(app): State<Arc<App>>, Json(req): Json<VoteRequest<NodeId>>) -> HttpResponse {
    Json(app.raft.vote(req).await).into_response()
}

async fn kv_write(State(app): State<Arc<App>>, Json(req): Json<Request>) -> HttpResponse {
    if let Err(why) = req.validate() {
        return (StatusCode::BAD_REQUEST, why).into_response();
    }
    Json(app.raft.client_write(req).await).into_response()
}

async fn kv_read(State(app): State<Arc<App>>, Json(key): Json<String>) -> HttpResponse {
    let res: Result<Option<String>, RaftError<NodeId, CheckIsLeaderError<NodeId, Node>>> =
        match app.raft.ensure_linearizable().await {
            Ok(_) => match app.sm.get(&key).await {
                Ok(v) => Ok(v),
                Err(e) => return internal(e),
            },
            Err(e) => Err(e),
        };
    Json(res).into_response()
}

async fn kv_read_local(State(app): State<Arc<App>>, Json(key): Json<String>) -> HttpResponse {
    match app.sm.get(&key).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => internal(e),
    }
}

async fn cluster_init(
    State(app): State<Arc<App>>,
    Json(members): Json<Vec<(NodeId, String)>>,
) -> HttpResponse {
    let nodes: BTreeMap<NodeId, Node> = members.into_iter().map(|(id, addr)| (id, Node { addr })).collect();
    let res: Result<(), RaftError<NodeId, InitializeError<NodeId, Node>>> = app.raft.initialize(nodes).await;
    Json(res).into_response()
}

async fn cluster_add_learner(
    State(app): State<Arc<App>>,
    Json((id, addr)): Json<(NodeId, String)>,
) -> HttpResponse {
    Json(app.raft.add_learner(id, Node { addr }, true).await).into_response()
}

async fn cluster_change_membership(
    State(app): State<Arc<App>>,
    Json(ids): Json<BTreeSet<NodeId>>,
) -> HttpResponse {
    let res: Result<_, RaftError<NodeId, ClientWriteError<NodeId, Node>>> =
        app.raft.change_membership(ids, false).await;
    Json(res).into_response()
}

async fn cluster_metrics(State(app): State<Arc<App>>) -> HttpResponse {
    let m = app.raft.metrics().borrow().clone();
    Json(m).into_response()
}

async fn debug_state(State(app): State<Arc<App>>) -> HttpResponse {
    let (applied, kv) = match app.sm.dump().await {
        Ok(d) => d,
        Err(e) => return internal(e),
    };
    let log = match app.log.log_ids().await {
        Ok(l) => l,
        Err(e) => return internal(e),
    };
    Json(DebugState { id: app.id, applied, log, kv }).into_response()
}

/// The node's routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/raft/append", post(raft_append))
        .route("/raft/snapshot", post(raft_snapshot))
        .route("/raft/vote", post(raft_vote))
        .route("/kv/write", post(kv_write))
        .route("/kv/read", post(kv_read))
        .route("/kv/read-local", post(kv_read_local))
        .route("/cluster/init", post(cluster_init))
        .route("/cluster/add-learner", post(cluster_add_learner))
        .route("/cluster/change-membership", post(cluster_change_membership))
        .route("/cluster/metrics", get(cluster_metrics))
        .route("/debug/state", get(debug_state))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(app)
}

/// Runs a node until `shutdown` resolves: opens its storage, starts openraft, serves HTTP
/// on `opts.addr` (printing `ringkv-raft-node <id> listening on <addr>` to stdout once the
/// socket is bound), then shuts openraft down and closes the database.
pub async fn run(
    opts: NodeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let config = Arc::new(opts.raft_config().map_err(io::Error::other)?);
    let (log, sm) = store::open(&opts.dir, opts.db.clone()).await.map_err(io::Error::other)?;
    let db = log.db().clone();
    let raft = Raft::new(opts.id, config, HttpNetwork::new(), log.clone(), sm.clone())
        .await
        .map_err(io::Error::other)?;
    let app = Arc::new(App { id: opts.id, addr: opts.addr.clone(), raft: raft.clone(), sm, log });
    let listener = tokio::net::TcpListener::bind(&opts.addr).await?;
    println!(
        "ringkv-raft-node {} listening on {} ({:?} backend)",
        opts.id,
        listener.local_addr()?,
        db.io_backend()
    );
    axum::serve(listener, router(app)).with_graceful_shutdown(shutdown).await?;
    raft.shutdown().await.map_err(io::Error::other)?;
    db.close().await.map_err(io::Error::other)
}
