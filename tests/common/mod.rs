//! Code shared by the integration tests (each test binary uses the parts it needs).
#![allow(dead_code)]

pub mod oracle;
pub mod si;

use std::fs;
use std::path::Path;

/// The seed of a randomized test: `RINGKV_TEST_SEED` if set, else a fresh one (printed).
pub fn seed(test: &str) -> u64 {
    let s = std::env::var("RINGKV_TEST_SEED")
        .ok()
        .map(|v| v.parse().expect("RINGKV_TEST_SEED must be a u64"))
        .unwrap_or_else(rand::random);
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
