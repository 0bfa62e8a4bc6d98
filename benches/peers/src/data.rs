//! Keys, values and their verification.
//!
//! Keys follow mace-kv's kv_bench (`make_shared_key`): `s{id % 1024:03x}_{id:010x}` padded
//! with `x` to 16 bytes, so the key order groups ids by `id % 1024` (a "prefix group") and,
//! inside a group, by id. Values are derived from `(id, version)`: bytes 0..8 hold the id,
//! 8..12 the version (both little-endian), the rest a xorshift stream seeded by both. A
//! reader recomputes the whole value from the id and version it finds and compares every
//! byte; the id must be the key's and the version must not exceed the newest one issued
//! for that key. Any mismatch or missing key is a [`VerifyError`] naming engine and key.

use std::sync::atomic::{AtomicU32, Ordering};

use rand::Rng;

/// Key length (bytes).
pub const KEY_LEN: usize = 16;
/// Prefix groups of kv_bench's key layout.
pub const PREFIX_GROUPS: u64 = 1024;
/// Value header: id (8) + version (4).
const HEADER_LEN: usize = 12;

/// The key of `id`.
pub fn key(id: u64) -> [u8; KEY_LEN] {
    let mut k = [b'x'; KEY_LEN];
    let s = format!("s{:03x}_{:010x}", id % PREFIX_GROUPS, id);
    debug_assert_eq!(s.len(), 15);
    k[..s.len()].copy_from_slice(s.as_bytes());
    k
}

/// The prefix (`s{group}_`) a kv_bench scan starts from.
pub fn group_prefix(id: u64) -> [u8; 5] {
    let mut p = [0u8; 5];
    p.copy_from_slice(format!("s{:03x}_", id % PREFIX_GROUPS).as_bytes());
    p
}

/// The id encoded in a key, `None` when the key is not one of ours (used by the tests).
#[cfg(test)]
pub fn id_of(key: &[u8]) -> Option<u64> {
    if key.len() != KEY_LEN || key[0] != b's' || key[4] != b'_' || key[15] != b'x' {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&key[5..15]).ok()?, 16).ok()
}

/// The id following `id` in key order among ids `0..n`, `None` past the last.
pub fn next_in_key_order(id: u64, n: u64) -> Option<u64> {
    if id + PREFIX_GROUPS < n {
        return Some(id + PREFIX_GROUPS);
    }
    let g = id % PREFIX_GROUPS + 1;
    (g < PREFIX_GROUPS.min(n)).then_some(g)
}

fn seed(id: u64, version: u32) -> u64 {
    (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (u64::from(version) << 32 | 0xA5A5)).max(1)
}

/// Writes the value of `(id, version)` into `out` (its length is the value length).
pub fn fill_value(id: u64, version: u32, out: &mut [u8]) {
    assert!(out.len() >= HEADER_LEN + 4, "values are at least 16 bytes");
    out[..8].copy_from_slice(&id.to_le_bytes());
    out[8..12].copy_from_slice(&version.to_le_bytes());
    let mut x = seed(id, version);
    for chunk in out[HEADER_LEN..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

/// The value of `(id, version)`.
pub fn value(id: u64, version: u32, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_value(id, version, &mut v);
    v
}

/// A wrong or missing value: fails the run.
#[derive(Debug)]
pub struct VerifyError(pub String);

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VERIFY FAILED: {}", self.0)
    }
}

impl std::error::Error for VerifyError {}

/// The newest version issued per id (0 = the prefilled value).
pub struct Versions {
    issued: Vec<AtomicU32>,
}

impl Versions {
    /// `n` ids, all at version 0.
    pub fn new(n: u64) -> Self {
        Versions { issued: (0..n).map(|_| AtomicU32::new(0)).collect() }
    }

    /// Issues the next version of `id`.
    pub fn next(&self, id: u64) -> u32 {
        self.issued[id as usize].fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The newest version issued for `id`.
    pub fn newest(&self, id: u64) -> u32 {
        self.issued[id as usize].load(Ordering::Acquire)
    }
}

/// Checks a value read for `id` byte for byte. `max_version` bounds the version it may
/// carry (`None`: exactly version 0 is expected). `scratch` avoids an allocation per read.
pub fn verify(
    engine: &str,
    id: u64,
    got: Option<&[u8]>,
    len: usize,
    max_version: Option<u32>,
    scratch: &mut Vec<u8>,
) -> Result<(), VerifyError> {
    let key_s = String::from_utf8_lossy(&key(id)).into_owned();
    let Some(v) = got else {
        return Err(VerifyError(format!("engine {engine}: key {key_s} (id {id}) is missing")));
    };
    if v.len() != len {
        return Err(VerifyError(format!(
            "engine {engine}: key {key_s} (id {id}): value length {} != {len}",
            v.len()
        )));
    }
    let vid = u64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
    let version = u32::from_le_bytes(v[8..12].try_into().expect("4 bytes"));
    let max = max_version.unwrap_or(0);
    if vid != id || version > max {
        return Err(VerifyError(format!(
            "engine {engine}: key {key_s} (id {id}): value carries id {vid} version {version} (newest issued {max})"
        )));
    }
    scratch.resize(len, 0);
    fill_value(id, version, scratch);
    if v != scratch.as_slice() {
        let at = v.iter().zip(scratch.iter()).position(|(a, b)| a != b).unwrap_or(0);
        return Err(VerifyError(format!(
            "engine {engine}: key {key_s} (id {id}) version {version}: byte {at} differs from the expected value"
        )));
    }
    Ok(())
}

/// kv_bench's skewed sampler (`sample_zipf_like`): `floor(u^(1/(1-theta)) * n)`. It is not
/// a true Zipf(0.99) (with theta 0.99 it is far steeper: `u^100`), but it is what
/// kv_bench's W2 uses, so W2 here matches kv_bench.
pub fn zipf_like(rng: &mut impl Rng, n: u64, theta: f64) -> u64 {
    if n <= 1 {
        return 0;
    }
    let t = theta.clamp(0.0001, 0.9999);
    let u: f64 = rng.gen();
    ((u.powf(1.0 / (1.0 - t)) * n as f64) as u64).min(n - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trip_and_order() {
        let n = 5000;
        let mut keys: Vec<(Vec<u8>, u64)> = (0..n).map(|i| (key(i).to_vec(), i)).collect();
        keys.sort();
        for (k, id) in &keys {
            assert_eq!(id_of(k), Some(*id));
        }
        for w in keys.windows(2) {
            assert_eq!(next_in_key_order(w[0].1, n), Some(w[1].1));
        }
        assert_eq!(next_in_key_order(keys.last().expect("keys").1, n), None);
        assert!(keys.iter().all(|(k, _)| k.len() == KEY_LEN));
    }

    #[test]
    fn value_verifies_and_flip_fails() {
        let mut s = Vec::new();
        let mut v = value(42, 3, 128);
        assert!(verify("t", 42, Some(&v), 128, Some(3), &mut s).is_ok());
        assert!(verify("t", 42, Some(&v), 128, Some(2), &mut s).is_err());
        assert!(verify("t", 41, Some(&v), 128, Some(3), &mut s).is_err());
        assert!(verify("t", 42, None, 128, Some(3), &mut s).is_err());
        v[100] ^= 1;
        assert!(verify("t", 42, Some(&v), 128, Some(3), &mut s).is_err());
    }
}
