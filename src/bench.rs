//! Fixtures for the criterion micro-benchmarks of the tree (`benches/tree.rs`), behind the
//! `bench` feature; not an API. Each fixture is a stable surface over one hot path of the
//! tree (a leaf search, an index descent, a consolidation, a page encode and load), so the
//! same benchmark measures the page format before and after a rewrite: only this file
//! follows the internals.

use bytes::Bytes;
use crossbeam_epoch as epoch;

use crate::bucket::Bucket;
use crate::error::Result;
use crate::tree::node::{Bounds, Entry, InnerBase, LeafBase, Value, Version};
use crate::tree::page::{self, PageImage};
use crate::tree::{merge_leaf, Step};

/// The key of `i` in a fixture: `k` and `i` in decimal, zero-padded to `len` bytes.
pub fn key(i: u64, len: usize) -> Bytes {
    let s = format!("k{i:0w$}", w = len.saturating_sub(1));
    Bytes::from(s.into_bytes())
}

/// A leaf in memory: `n` keys (every other one of `0..2n`, so the odd ones miss) with one
/// inline version of `value_len` bytes each.
pub struct Leaf {
    base: LeafBase,
    key_len: usize,
    value_len: usize,
}

impl Leaf {
    /// Builds the leaf: one page holding its keys and values, as the tree holds it.
    pub fn new(n: u64, key_len: usize, value_len: usize) -> Leaf {
        let entries: Vec<Entry> = (0..n)
            .map(|i| Entry {
                key: key(2 * i, key_len),
                versions: vec![Version { ts: 1, value: Value::Inline(Bytes::from(vec![7u8; value_len])) }],
            })
            .collect();
        let base = LeafBase::from_entries(&Bounds { low: Bytes::new(), high: None, right: 0 }, &entries);
        Leaf { base, key_len, value_len }
    }

    /// Entries in the leaf.
    pub fn len(&self) -> usize {
        self.base.len()
    }

    /// Whether the leaf is empty.
    pub fn is_empty(&self) -> bool {
        self.base.is_empty()
    }

    /// The key of entry `i` (hits for even `i` below `2 * len`, misses for odd).
    pub fn key(&self, i: u64) -> Bytes {
        key(i, self.key_len)
    }

    /// A point lookup at timestamp 1: the value's length, `None` on a miss.
    pub fn search(&self, key: &[u8]) -> Option<usize> {
        let i = self.base.search(key).ok()?;
        match &self.base.visible(i, 1)?.value {
            Value::Inline(b) => Some(b.len()),
            _ => None,
        }
    }

    /// Consolidates `deltas` updates (every `step`-th key, at timestamp 2) into the leaf,
    /// as a chain of that length is consolidated: one merge into a new page.
    /// Returns the new base's entry count.
    pub fn consolidate(&self, deltas: u64, step: u64) -> usize {
        let keys: Vec<Bytes> = (0..deltas).map(|i| key(i * step, self.key_len)).collect();
        let version = Version { ts: 2, value: Value::Inline(Bytes::from(vec![9u8; self.value_len])) };
        let d: Vec<(&Bytes, &Version)> = keys.iter().map(|k| (k, &version)).collect();
        merge_leaf(&d, &self.base, 0).len()
    }

    /// The leaf's page image, as a checkpoint writes it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        page::encode_leaf(&self.base, &mut out, &mut |_| 0);
        out
    }

    /// Loads a page image as a page read does once its bytes are in memory: checks the
    /// frame's CRC32C against `crc`, decodes it and builds the in-memory page. Returns its
    /// entry count.
    pub fn load(bytes: &Bytes, crc: u32) -> Result<usize> {
        let path = std::path::Path::new("bench");
        if crc32c::crc32c(bytes) != crc {
            return Err(crate::Error::corruption(path, 0, "bench frame checksum mismatch"));
        }
        match page::decode(bytes, path, 0)? {
            PageImage::Leaf(l) => Ok(l.len()),
            PageImage::Inner(i) => Ok(i.len()),
            PageImage::Delta(d) => Ok(d.leaf.len()),
        }
    }
}

/// An index node of `n` children with separators of `key_len` bytes.
pub struct Index {
    inner: InnerBase,
}

impl Index {
    /// Builds the node; child `i` covers keys from `key(2 * i)`.
    pub fn new(n: u64, key_len: usize) -> Index {
        let children: Vec<(Bytes, u64)> =
            (0..n).map(|i| (if i == 0 { Bytes::new() } else { key(2 * i, key_len) }, i + 1)).collect();
        Index { inner: InnerBase::build(&Bounds::default(), &children) }
    }

    /// The child covering `key`.
    pub fn child_for(&self, key: &[u8]) -> u64 {
        self.inner.child_for(key)
    }
}

/// Descends `bucket`'s tree from its root to the leaf holding `key`, as a point read does
/// before it searches the leaf; `false` if a page on the way is not in memory.
pub fn descend(bucket: &Bucket, key: &[u8]) -> Result<bool> {
    let guard = epoch::pin();
    Ok(matches!(bucket.tree.find_leaf(&bucket.db.forest, key, &guard)?, Step::Done(_)))
}
