//! One adapter per engine; each file's doc comment gives its configuration per workload.

pub mod fjall;
pub mod lmdb;
pub mod mace;
pub mod redb;
pub mod ringkv;
#[cfg(feature = "rocksdb")]
pub mod rocksdb;
