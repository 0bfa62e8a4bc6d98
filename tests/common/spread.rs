//! Keys spread over the key space, their values, and the runtime the cache, delta-frame
//! and reclaim tests share. Included by path (`#[path = "common/spread.rs"] mod spread;`),
//! so a test binary compiles only this, not the crash oracle.
#![allow(dead_code)]

/// The key of id `i`: a multiplicative hash of it, so that consecutive ids land all over
/// the tree (a write per leaf, not a run of writes into one).
pub fn key(i: u32) -> Vec<u8> {
    format!("key-{:08}", i.wrapping_mul(2_654_435_761) % 1_000_000_007).into_bytes()
}

/// The value of id `i` written in `round` (about 120 bytes: inline).
pub fn value(i: u32, round: u32) -> Vec<u8> {
    format!("value-{i}-{round}-{}", "v".repeat(100)).into_bytes()
}

/// A multi-thread runtime of two workers (this machine's cores).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}
