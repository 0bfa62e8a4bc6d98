//! The snapshot file: a state machine's pairs at one applied log id, streamed from a ringkv
//! [`ringkv::Snapshot`] and read back pair by pair, so neither side holds the whole state in
//! memory.
//!
//! Layout (integers little-endian, like ringkv's own formats):
//!
//! | bytes | what |
//! |---|---|
//! | 8 | magic `RKVRSNP1` |
//! | 4 | `meta_len` |
//! | `meta_len` | the openraft `SnapshotMeta`, as JSON |
//! | per pair: 1 + 4 + 4 + k + v | tag `1`, key length `k`, value length `v`, key, value |
//! | 1 + 8 + 4 | tag `0`, the number of pairs, CRC32C of every byte before it |
//!
//! A reader checks every length against ringkv's limits before it allocates, the pair
//! count and the checksum at the end, and that nothing follows: a truncated, damaged or
//! foreign file is an [`io::ErrorKind::InvalidData`] error, never a panic.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{Node, NodeId};

/// The first bytes of every snapshot file.
pub const MAGIC: &[u8; 8] = b"RKVRSNP1";

const TAG_PAIR: u8 = 1;
const TAG_END: u8 = 0;
/// Longest metadata accepted (a membership of many nodes is still far below).
const MAX_META_LEN: u32 = 16 * 1024 * 1024;

/// The metadata of a snapshot.
pub type Meta = openraft::SnapshotMeta<NodeId, Node>;

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn len_u32(n: usize, what: &str) -> io::Result<u32> {
    u32::try_from(n).map_err(|_| invalid(format!("{what} of {n} bytes is too long for a snapshot")))
}

/// Writes a snapshot file: [`SnapshotWriter::new`] (header), [`SnapshotWriter::pair`] per
/// pair in key order, [`SnapshotWriter::finish`] (trailer and flush).
pub struct SnapshotWriter<W> {
    out: W,
    crc: u32,
    count: u64,
}

impl<W: AsyncWrite + Unpin> SnapshotWriter<W> {
    /// Writes the header of a snapshot with `meta`.
    pub async fn new(out: W, meta: &Meta) -> io::Result<SnapshotWriter<W>> {
        let json = serde_json::to_vec(meta).map_err(io::Error::other)?;
        let mut w = SnapshotWriter { out, crc: 0, count: 0 };
        w.put(MAGIC).await?;
        w.put(&len_u32(json.len(), "metadata")?.to_le_bytes()).await?;
        w.put(&json).await?;
        Ok(w)
    }

    async fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.out.write_all(bytes).await
    }

    /// Writes one pair.
    pub async fn pair(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.put(&[TAG_PAIR]).await?;
        self.put(&len_u32(key.len(), "key")?.to_le_bytes()).await?;
        self.put(&len_u32(value.len(), "value")?.to_le_bytes()).await?;
        self.put(key).await?;
        self.put(value).await?;
        self.count += 1;
        Ok(())
    }

    /// Writes the trailer and flushes; returns the writer and the number of pairs.
    pub async fn finish(mut self) -> io::Result<(W, u64)> {
        self.put(&[TAG_END]).await?;
        let count = self.count;
        self.put(&count.to_le_bytes()).await?;
        let crc = self.crc;
        self.out.write_all(&crc.to_le_bytes()).await?;
        self.out.flush().await?;
        Ok((self.out, count))
    }
}

/// Reads a snapshot file written by [`SnapshotWriter`], checking it as it goes.
pub struct SnapshotReader<R> {
    input: R,
    crc: u32,
    count: u64,
    done: bool,
}

impl<R: AsyncRead + Unpin> SnapshotReader<R> {
    /// Reads and checks the header; returns the reader and the snapshot's metadata.
    pub async fn new(input: R) -> io::Result<(SnapshotReader<R>, Meta)> {
        let mut r = SnapshotReader { input, crc: 0, count: 0, done: false };
        let mut magic = [0u8; 8];
        r.take(&mut magic).await?;
        if &magic != MAGIC {
            return Err(invalid("not a ringkv-raft snapshot (bad magic)"));
        }
        let meta_len = r.u32().await?;
        if meta_len > MAX_META_LEN {
            return Err(invalid(format!("snapshot metadata length {meta_len} is over {MAX_META_LEN}")));
        }
        let mut json = vec![0u8; meta_len as usize];
        r.take(&mut json).await?;
        let meta: Meta =
            serde_json::from_slice(&json).map_err(|e| invalid(format!("snapshot metadata: {e}")))?;
        Ok((r, meta))
    }

    async fn take(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.input.read_exact(buf).await.map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                invalid("snapshot file is truncated")
            } else {
                e
            }
        })?;
        self.crc = crc32c::crc32c_append(self.crc, buf);
        Ok(())
    }

    async fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.take(&mut b).await?;
        Ok(u32::from_le_bytes(b))
    }

    /// The next pair, or `None` after the last one (the trailer checked: count, checksum,
    /// nothing after it).
    pub async fn next_pair(&mut self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        if self.done {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        self.take(&mut tag).await?;
        match tag[0] {
            TAG_PAIR => {
                let klen = self.u32().await? as usize;
                let vlen = self.u32().await? as usize;
                if klen == 0 || klen > crate::MAX_KEY_BYTES {
                    return Err(invalid(format!("snapshot key length {klen} out of range")));
                }
                if vlen > ringkv::limits::MAX_VALUE_LEN {
                    return Err(invalid(format!("snapshot value length {vlen} out of range")));
                }
                let mut key = vec![0u8; klen];
                self.take(&mut key).await?;
                let mut value = vec![0u8; vlen];
                self.take(&mut value).await?;
                self.count += 1;
                Ok(Some((key, value)))
            }
            TAG_END => {
                let mut b = [0u8; 8];
                self.take(&mut b).await?;
                let count = u64::from_le_bytes(b);
                let expected = self.crc;
                let mut c = [0u8; 4];
                self.input.read_exact(&mut c).await.map_err(|_| invalid("snapshot file is truncated"))?;
                if u32::from_le_bytes(c) != expected {
                    return Err(invalid("snapshot checksum mismatch"));
                }
                if count != self.count {
                    return Err(invalid(format!("snapshot says {count} pairs, holds {}", self.count)));
                }
                let mut extra = [0u8; 1];
                if self.input.read(&mut extra).await? != 0 {
                    return Err(invalid("bytes after the end of the snapshot"));
                }
                self.done = true;
                Ok(None)
            }
            other => Err(invalid(format!("bad snapshot record tag {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn meta() -> Meta {
        Meta { last_log_id: None, last_membership: Default::default(), snapshot_id: "t-1".into() }
    }

    async fn encode(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut w = SnapshotWriter::new(Vec::new(), &meta()).await.unwrap();
        for (k, v) in pairs {
            w.pair(k.as_bytes(), v.as_bytes()).await.unwrap();
        }
        w.finish().await.unwrap().0
    }

    async fn decode(bytes: &[u8]) -> io::Result<(Meta, Vec<(Vec<u8>, Vec<u8>)>)> {
        let (mut r, m) = SnapshotReader::new(bytes).await?;
        let mut out = Vec::new();
        while let Some(p) = r.next_pair().await? {
            out.push(p);
        }
        Ok((m, out))
    }

    #[tokio::test]
    async fn round_trip_and_every_truncation_and_flip_is_rejected() {
        let bytes = encode(&[("a", "1"), ("b", ""), ("c", "333")]).await;
        let (m, pairs) = decode(&bytes).await.unwrap();
        assert_eq!(m, meta());
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs[2], (b"c".to_vec(), b"333".to_vec()));
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).await.is_err(), "truncation at {cut} accepted");
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).await.is_err(), "flip at byte {i} accepted");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).await.is_err());
    }
}
