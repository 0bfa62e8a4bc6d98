//! # ringkv-raft
//!
//! ringkv as the storage of an [openraft](https://docs.rs/openraft/0.9) cluster, over
//! ringkv's public API only:
//!
//! - [`store::LogStore`] implements [`openraft::storage::RaftLogStorage`]: the log in the
//!   bucket `raft.log` keyed by the big-endian index, the vote and the committed and purged
//!   marks in the bucket `raft.meta`. An append is one ringkv commit that returns at once
//!   (`Durability::None`, so the entries are readable when `append` returns); one flusher
//!   task per store then calls [`ringkv::Db::flush`], which rides ringkv's group commit
//!   (every append waiting at that moment shares one WAL write and one `fdatasync`), and
//!   fires openraft's flush callbacks, in order, only once it returned.
//! - [`store::StateMachineStore`] implements [`openraft::storage::RaftStateMachine`]: a
//!   key-value state machine in a bucket of its own (`raft.sm.<generation>`), whose applied
//!   log id and membership live in the same bucket and change in the same commit as the
//!   data. Snapshots are streamed from a ringkv [`ringkv::Snapshot`] into a checksummed file
//!   ([`snapshot`]); installing one loads it into a new generation's bucket and switches
//!   to it with one durable commit across buckets, which also records the installed file.
//! - Every change that must be seen whole is one ringkv commit across buckets: a purge's
//!   deletions with the `purged` mark that covers them, an install's switch with the new
//!   state and its snapshot record (see [`store`]). A reader and a recovery see it all or
//!   none of it.
//! - [`network`] is an openraft network over HTTP ([`http`], hyper's client), [`service`] the axum service
//!   of one node of the example replicated KV store (client writes, linearizable reads,
//!   membership initialisation), [`client`] a client of that service that follows the
//!   leader.
//!
//! Why the durability choices hold: every write of a node goes to one ringkv database,
//! whose WAL is a prefix (a crash loses a commit only together with every later one). So
//! when a flush makes an append durable, every earlier vote, truncation, purge and
//! state-machine commit is durable too, and a state machine commit (not flushed on its own)
//! is never durable without the log entries it applied.

// openraft's `StorageError` is the error type of its storage traits; its size is openraft's.
#![allow(clippy::result_large_err)]

pub mod client;
pub mod http;
pub mod network;
pub mod service;
pub mod snapshot;
pub mod store;

use std::fmt;

use serde::{Deserialize, Serialize};

/// The id of a node.
pub type NodeId = u64;

/// A node's address as the cluster knows it (`host:port` of its HTTP service).
pub type Node = openraft::BasicNode;

/// The data of a snapshot, as openraft reads and writes it: a file (see [`snapshot`]).
pub type SnapshotData = tokio::fs::File;

openraft::declare_raft_types!(
    /// The openraft type configuration of the replicated key-value store.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

/// An openraft node over ringkv.
pub type Raft = openraft::Raft<TypeConfig>;

/// Longest key a [`Request`] may carry, in bytes (ringkv's key limit less the one-byte
/// prefix of the state machine's data keys).
pub const MAX_KEY_BYTES: usize = ringkv::limits::MAX_KEY_LEN - 1;

/// Longest value a [`Request`] may carry, in bytes. Far below ringkv's own limit, so that a
/// log entry (the request encoded as JSON) always fits in one ringkv value.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// A write to the replicated key-value store: what a log entry carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Sets `key` to `value`.
    Set {
        /// The key (non-empty, at most [`MAX_KEY_BYTES`]).
        key: String,
        /// The value (at most [`MAX_VALUE_BYTES`]).
        value: String,
    },
    /// Deletes `key`.
    Delete {
        /// The key (non-empty, at most [`MAX_KEY_BYTES`]).
        key: String,
    },
}

impl Request {
    /// The key the request writes.
    pub fn key(&self) -> &str {
        match self {
            Request::Set { key, .. } | Request::Delete { key } => key,
        }
    }

    /// Checks the request against the limits; `Err` says what is wrong. The service refuses
    /// a bad request before it reaches the log; a bad request that reaches the log anyway
    /// (through [`Raft::client_write`] directly) is answered by the state machine with
    /// [`Response::error`] on every node alike, and changes nothing.
    pub fn validate(&self) -> Result<(), String> {
        let key = self.key();
        if key.is_empty() {
            return Err("empty key".into());
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(format!("key of {} bytes is over the limit of {MAX_KEY_BYTES}", key.len()));
        }
        if let Request::Set { value, .. } = self {
            if value.len() > MAX_VALUE_BYTES {
                return Err(format!("value of {} bytes is over the limit of {MAX_VALUE_BYTES}", value.len()));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Set { key, value } => write!(f, "set {key:?} ({} bytes)", value.len()),
            Request::Delete { key } => write!(f, "delete {key:?}"),
        }
    }
}

/// What the state machine answers to an applied entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The value a `Set` wrote (`None` for deletes, blank and membership entries).
    pub value: Option<String>,
    /// Why the request was refused (it broke a limit; nothing was written).
    pub error: Option<String>,
}
