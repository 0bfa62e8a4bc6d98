//! Code shared by the integration tests (each test binary uses the parts it needs).
#![allow(dead_code)]

pub mod oracle;
pub mod si;

use std::fs;
use std::path::{Path, PathBuf};

/// The seed of a randomized test: `RINGKV_TEST_SEED` if set, else a fresh one (printed).
pub fn seed(test: &str) -> u64 {
    let s = std::env::var("RINGKV_TEST_SEED")
        .ok()
        .map_or_else(rand::random, |v| v.parse().expect("RINGKV_TEST_SEED must be a u64"));
    eprintln!("{test}: seed {s} (replay with RINGKV_TEST_SEED={s})");
    s
}

/// Copies the directory tree `from` to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), target).unwrap();
        }
    }
}

/// The little-endian u32 at `at`.
pub fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// The little-endian u64 at `at`.
pub fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Damages the byte at `at` of the file (xor 0x5a).
pub fn flip(path: &Path, at: u64) {
    let mut b = fs::read(path).unwrap();
    b[at as usize] ^= 0x5a;
    fs::write(path, b).unwrap();
}

/// The WAL segments (`wal/wal-*.log`) of the database at `dir`, sorted; a segment prepared
/// ahead (`wal-*.next`) is not one.
pub fn wal_segments(dir: &Path) -> Vec<PathBuf> {
    let mut v = files_with_prefix(&dir.join("wal"), "wal-");
    v.retain(|p| p.extension().is_some_and(|e| e == "log"));
    v
}

/// The files of `dir` whose name starts with `prefix`, sorted.
pub fn files_with_prefix(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
        .collect();
    v.sort();
    v
}
