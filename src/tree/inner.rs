//! An index node as one contiguous buffer whose bytes are its frame on disk: the page every
//! [`InnerBase`](super::node::InnerBase) holds. A load checks the bytes read
//! ([`InnerPage::check`]) and keeps them; a split or an insert of a separator builds a new
//! page ([`InnerPage::build`]); a checkpoint writes the bytes.
//!
//! Little-endian. Offsets are from the start of the page.
//!
//! ```text
//! header (32 B)
//!   0  kind u8 = 4 (index page)     1  format u8 = 1       2  flags u8 (bit 0: has a high fence)
//!   3  reserved u8 = 0              4  count u32 (>= 1)    8  right u64 (right sibling, 0 = none)
//!   16 prefix u16                   18 low_len u16         20 high_len u16 (0 without a high fence)
//!   22 skip u16                     24 keys u32            28 len u32 (the page's length)
//! fences (from 32): low | high (whole keys), then zeros to a multiple of 8 (`arrays`)
//! children (count x 8 B, from `arrays`): pid u64 (never 0), in separator order
//! slots (count x 8 B):
//!   off u32 (where the separator's suffix starts; it ends where the next one starts, the
//!   last at `len`)                  hint u32 (the suffix's first 4 bytes, big-endian, zero-padded)
//! separator suffixes (from `keys` = arrays + 16 count, in slot order, contiguous): the
//!   separator after the prefix
//! ```
//!
//! `skip` is the length of the common prefix of the suffixes of separators 1.. (0 with one
//! child): the hints of those slots are taken after it, so that separators sharing more
//! than the fences do (the root's, whose low fence is empty; keys with a common lead) still
//! differ in their hints. Slot 0's hint is its suffix's first bytes.
//!
//! The fences come first, beside the header: a descent compares the key with the high fence
//! before it searches (a node split under it sends it right), and with short keys the two
//! are in the header's cache line.
//!
//! Child `i` holds the keys in `[sep(i), sep(i + 1))`; `sep(0)` is the low fence. `prefix`
//! is the length of the fences' common prefix (0 without a high fence), which every
//! separator starts with. A search for a key's child compares the slots' hints, which sit
//! side by side, and reads a separator's bytes only when its hint ties: the child ids are a
//! parallel array, so a descent touches the slots, one or two separators and one child id.
//!
//! [`InnerPage::check`] verifies everything [`InnerPage::build`] asserts (lengths, offsets,
//! hints, separators strictly increasing from the low fence and below the high fence, child
//! ids not 0), so bytes read from disk that pass it are searched without further checks.

use std::cmp::Ordering;

use bytes::Bytes;

use super::leaf::{common_prefix, hint_of, le_u16, le_u32, le_u64, pad8, BadPage};
use super::node::{key_cmp, Pid};

/// The kind byte of an index page.
pub const KIND_INNER_PAGE: u8 = 4;
/// The format this file writes and reads.
pub const FORMAT: u8 = 1;

const HEADER: usize = 32;

fn bad(at: usize, what: &'static str) -> BadPage {
    BadPage { at, what }
}

/// An index page: its bytes.
#[derive(Debug, Clone)]
pub struct InnerPage {
    buf: Bytes,
}

impl InnerPage {
    /// Builds the page over the fences `low`, `high` and right link `right` whose children
    /// are `children` (separator, child id): separators strictly increasing, the first one
    /// `low`, all below `high`, ids not 0.
    pub fn build(low: &[u8], high: Option<&[u8]>, right: Pid, children: &[(Bytes, Pid)]) -> InnerPage {
        let count = children.len();
        assert!(count >= 1, "an index page has a child");
        assert_eq!(children[0].0.as_ref(), low, "the first separator is the low fence");
        let prefix = high.map_or(0, |h| common_prefix(low, h));
        let high_len = high.map_or(0, <[u8]>::len);
        let arrays = pad8(HEADER + low.len() + high_len);
        let keys = arrays + 16 * count;
        let len = keys + children.iter().map(|(s, _)| s.len() - prefix).sum::<usize>();
        let u32_of = |n: usize| u32::try_from(n).expect("a page is shorter than 4 GiB");
        let u16_of = |n: usize| u16::try_from(n).expect("keys are at most 16 KiB");
        let skip = Self::skip_of(children.iter().skip(1).map(|(s, _)| &s[prefix..]));
        let mut b = Vec::with_capacity(len);
        b.push(KIND_INNER_PAGE);
        b.push(FORMAT);
        b.push(u8::from(high.is_some()));
        b.push(0);
        b.extend_from_slice(&u32_of(count).to_le_bytes());
        b.extend_from_slice(&right.to_le_bytes());
        b.extend_from_slice(&u16_of(prefix).to_le_bytes());
        b.extend_from_slice(&u16_of(low.len()).to_le_bytes());
        b.extend_from_slice(&u16_of(high_len).to_le_bytes());
        b.extend_from_slice(&u16_of(skip).to_le_bytes());
        b.extend_from_slice(&u32_of(keys).to_le_bytes());
        b.extend_from_slice(&u32_of(len).to_le_bytes());
        b.extend_from_slice(low);
        if let Some(h) = high {
            b.extend_from_slice(h);
        }
        b.resize(arrays, 0);
        for (_, pid) in children {
            assert!(*pid != 0, "a child id is never 0");
            b.extend_from_slice(&pid.to_le_bytes());
        }
        let mut off = keys;
        for (i, (sep, _)) in children.iter().enumerate() {
            if i > 0 {
                assert_eq!(key_cmp(&children[i - 1].0, sep), Ordering::Less, "separators in order");
            }
            assert!(high.is_none_or(|h| key_cmp(sep, h) == Ordering::Less), "a separator below the high fence");
            b.extend_from_slice(&u32_of(off).to_le_bytes());
            let hint_from = if i == 0 { prefix } else { prefix + skip };
            b.extend_from_slice(&hint_of(&sep[hint_from..]).to_le_bytes());
            off += sep.len() - prefix;
        }
        for (sep, _) in children {
            b.extend_from_slice(&sep[prefix..]);
        }
        debug_assert_eq!(b.len(), len);
        let page = InnerPage { buf: Bytes::from(b) };
        debug_assert_eq!(page.validate(), Ok(()), "the builder wrote a page its check refuses");
        page
    }

    /// Checks `buf` as an index page read from disk, without copying it.
    pub fn check(buf: Bytes) -> Result<InnerPage, BadPage> {
        let page = InnerPage { buf };
        page.validate()?;
        Ok(page)
    }

    /// The page's bytes: its frame on disk.
    pub fn bytes(&self) -> &Bytes {
        &self.buf
    }

    /// Number of children (at least 1).
    pub fn count(&self) -> usize {
        le_u32(&self.buf, 4) as usize
    }

    /// Right sibling (0 = none).
    pub fn right(&self) -> Pid {
        le_u64(&self.buf, 8)
    }

    fn prefix_len(&self) -> usize {
        le_u16(&self.buf, 16) as usize
    }

    /// Where the child ids start (the slots follow them).
    fn arrays_at(&self) -> usize {
        pad8(HEADER + le_u16(&self.buf, 18) as usize + le_u16(&self.buf, 20) as usize)
    }

    /// The low fence (inclusive).
    pub fn low(&self) -> &[u8] {
        &self.buf[HEADER..HEADER + le_u16(&self.buf, 18) as usize]
    }

    /// The high fence (exclusive), `None` for plus infinity.
    pub fn high(&self) -> Option<&[u8]> {
        if self.buf[2] & 1 == 0 {
            return None;
        }
        let at = HEADER + le_u16(&self.buf, 18) as usize;
        Some(&self.buf[at..at + le_u16(&self.buf, 20) as usize])
    }

    /// The low fence as a slice of the page (no copy).
    pub fn low_bytes(&self) -> Bytes {
        self.buf.slice_ref(self.low())
    }

    /// The high fence as a slice of the page (no copy), `None` for plus infinity.
    pub fn high_bytes(&self) -> Option<Bytes> {
        self.high().map(|h| self.buf.slice_ref(h))
    }

    /// The page's length in bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether the page is empty (never: a page has a header and a child).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The id of child `i`.
    pub fn child(&self, i: usize) -> Pid {
        le_u64(&self.buf, self.arrays_at() + 8 * i)
    }

    fn slot(&self, i: usize) -> (usize, u32) {
        let at = self.arrays_at() + 8 * self.count() + 8 * i;
        (le_u32(&self.buf, at) as usize, le_u32(&self.buf, at + 4))
    }

    /// The separator suffix of slot `i` (after the prefix).
    fn suffix(&self, i: usize) -> &[u8] {
        let (off, _) = self.slot(i);
        let end = if i + 1 < self.count() { self.slot(i + 1).0 } else { self.buf.len() };
        &self.buf[off..end]
    }

    /// The separator of child `i` (a copy: the prefix is stored once).
    pub fn sep(&self, i: usize) -> Bytes {
        let p = self.prefix_len();
        let mut k = Vec::with_capacity(p + self.suffix(i).len());
        k.extend_from_slice(&self.low()[..p]);
        k.extend_from_slice(self.suffix(i));
        Bytes::from(k)
    }

    /// Every (separator, child), copied out (for a structure change, which rebuilds).
    pub fn children(&self) -> Vec<(Bytes, Pid)> {
        (0..self.count()).map(|i| (self.sep(i), self.child(i))).collect()
    }

    /// The position of child `pid`, if it is one.
    pub fn position(&self, pid: Pid) -> Option<usize> {
        (0..self.count()).find(|&i| self.child(i) == pid)
    }

    /// The common prefix length of `suffixes` (0 for none).
    fn skip_of<'a>(mut suffixes: impl Iterator<Item = &'a [u8]>) -> usize {
        let Some(first) = suffixes.next() else { return 0 };
        suffixes.fold(first.len(), |n, s| n.min(common_prefix(&first[..n], s)))
    }

    fn skip(&self) -> usize {
        le_u16(&self.buf, 22) as usize
    }

    /// The position of the child for `key`: of the last separator at or below `key` (below
    /// it, when not `inclusive`), 0 when there is none.
    fn child_index(&self, key: &[u8], inclusive: bool) -> usize {
        let (p, n) = (self.prefix_len(), self.count());
        let (head, rest) = key.split_at(p.min(key.len()));
        match key_cmp(head, &self.low()[..p]) {
            Ordering::Less => return 0,
            Ordering::Greater => return n - 1,
            Ordering::Equal if key.len() < p => return 0,
            Ordering::Equal => {}
        }
        if n == 1 {
            return 0;
        }
        // Separators 1.. share their first `skip` bytes: a key that differs there is below
        // or above all of them.
        let skip = self.skip();
        let (lead, tail) = rest.split_at(skip.min(rest.len()));
        match key_cmp(lead, &self.suffix(1)[..skip]) {
            Ordering::Less => return 0,
            Ordering::Greater => return n - 1,
            Ordering::Equal if rest.len() < skip => return 0,
            Ordering::Equal => {}
        }
        let want = hint_of(tail);
        // The slot array's place, read from the header once, not once per probe.
        let hints = self.arrays_at() + 8 * n + 4;
        let (mut lo, mut hi) = (1, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let hint = le_u32(&self.buf, hints + 8 * mid);
            let ord = match hint.cmp(&want) {
                Ordering::Equal => key_cmp(&self.suffix(mid)[skip..], tail),
                o => o,
            };
            let below = match ord {
                Ordering::Less => true,
                Ordering::Equal => inclusive,
                Ordering::Greater => false,
            };
            if below {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        // `lo` is the first of separators 1.. past `key`; separator 0 (the low fence) is at
        // or below any key that reaches here, or the answer is child 0 either way.
        lo - 1
    }

    /// The child covering `key` (the first child for a key below the low fence).
    pub fn child_for(&self, key: &[u8]) -> Pid {
        self.child(self.child_index(key, true))
    }

    /// The child holding the greatest keys strictly below `key` (`None` = plus infinity).
    pub fn child_before(&self, key: Option<&[u8]>) -> Pid {
        self.child(key.map_or(self.count() - 1, |k| self.child_index(k, false)))
    }

    fn validate(&self) -> Result<(), BadPage> {
        let b = &self.buf[..];
        if b.len() < HEADER {
            return Err(bad(0, "shorter than a page header"));
        }
        if b[0] != KIND_INNER_PAGE {
            return Err(bad(0, "not an index page"));
        }
        if b[1] != FORMAT {
            return Err(bad(1, "unknown index page format"));
        }
        if b[2] & !1 != 0 || b[3] != 0 {
            return Err(bad(2, "reserved header bits set"));
        }
        if le_u32(b, 28) as usize != b.len() {
            return Err(bad(28, "page length differs from its header"));
        }
        let count = le_u32(b, 4) as usize;
        if count == 0 {
            return Err(bad(4, "an index page without a child"));
        }
        let (low_len, high_len) = (le_u16(b, 18) as usize, le_u16(b, 20) as usize);
        let has_high = b[2] & 1 == 1;
        if !has_high && high_len != 0 {
            return Err(bad(20, "high fence length without a high fence"));
        }
        let arrays = pad8(HEADER + low_len + high_len);
        let keys = count.checked_mul(16).and_then(|s| s.checked_add(arrays)).filter(|&k| k <= b.len());
        let keys = keys.ok_or_else(|| bad(4, "fences, child and slot arrays past the page"))?;
        if le_u32(b, 24) as usize != keys {
            return Err(bad(24, "separators do not follow the arrays"));
        }
        let low = &b[HEADER..HEADER + low_len];
        let high = has_high.then(|| &b[HEADER + low_len..HEADER + low_len + high_len]);
        if b[HEADER + low_len + high_len..arrays].iter().any(|&z| z != 0) {
            return Err(bad(HEADER + low_len + high_len, "padding after the fences not zero"));
        }
        if let Some(h) = high {
            if key_cmp(low, h) != Ordering::Less {
                return Err(bad(HEADER, "low fence not below the high fence"));
            }
        }
        let prefix = le_u16(b, 16) as usize;
        if prefix != high.map_or(0, |h| common_prefix(low, h)) {
            return Err(bad(16, "prefix is not the fences' common prefix"));
        }
        for i in 0..count {
            if self.child(i) == 0 {
                return Err(bad(arrays + 8 * i, "child id 0"));
            }
        }
        self.check_separators(arrays, keys, low, high)
    }

    /// The separators of a page whose header, fences and child ids checked: contiguous from
    /// `keys`, hinted after `skip`, strictly increasing from the low fence, below the high.
    fn check_separators(&self, arrays: usize, keys: usize, low: &[u8], high: Option<&[u8]>) -> Result<(), BadPage> {
        let b = &self.buf[..];
        let (count, prefix) = (self.count(), self.prefix_len());
        let slots = arrays + 8 * count;
        let mut next = keys;
        let skip = self.skip();
        for i in 0..count {
            let (off, hint) = self.slot(i);
            if off != next {
                return Err(bad(slots + 8 * i, "separator not where the previous one ended"));
            }
            let end = if i + 1 < count { self.slot(i + 1).0 } else { b.len() };
            if end < off || end > b.len() {
                return Err(bad(slots + 8 * i + 8, "separator offsets out of order"));
            }
            let suffix = &b[off..end];
            if i > 0 && suffix.len() < skip {
                return Err(bad(22, "skip longer than a separator"));
            }
            let hinted = if i == 0 { suffix } else { &suffix[skip..] };
            if hint != hint_of(hinted) {
                return Err(bad(slots + 8 * i + 4, "slot hint differs from its separator"));
            }
            if i == 0 && suffix != &low[prefix..] {
                return Err(bad(off, "first separator is not the low fence"));
            }
            if i > 0 && key_cmp(&b[self.slot(i - 1).0..off], suffix) != Ordering::Less {
                return Err(bad(off, "separators out of order"));
            }
            if high.is_some_and(|h| key_cmp(suffix, &h[prefix..]) != Ordering::Less) {
                return Err(bad(off, "a separator at or past the high fence"));
            }
            next = end;
        }
        let suffixes = (1..count).map(|i| self.suffix(i));
        if skip != Self::skip_of(suffixes) {
            return Err(bad(22, "skip is not the separators' common prefix"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn page_of(keys: &std::collections::BTreeSet<Vec<u8>>, high: Option<&[u8]>) -> (InnerPage, Vec<(Bytes, Pid)>) {
        let children: Vec<(Bytes, Pid)> =
            keys.iter().enumerate().map(|(i, k)| (Bytes::from(k.clone()), i as Pid + 1)).collect();
        (InnerPage::build(&children[0].0, high, 77, &children), children)
    }

    /// The model: the child of the last separator at or below `key` (below it, when not
    /// inclusive), the first child when none is.
    fn model(children: &[(Bytes, Pid)], key: &[u8], inclusive: bool) -> Pid {
        let n = children.iter().filter(|(s, _)| if inclusive { s.as_ref() <= key } else { s.as_ref() < key }).count();
        children[n.saturating_sub(1)].1
    }

    proptest! {
        /// The page against a sorted list of (separator, child): every search, every
        /// separator, the fences, and the check of its own bytes; with and without a high
        /// fence (so with and without a stripped prefix), with keys that tie on their hints.
        #[test]
        fn an_index_page_holds_what_a_sorted_list_holds(
            keys in proptest::collection::btree_set(proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), any::<u8>()], 0..9), 1..40),
            probes in proptest::collection::vec(proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), any::<u8>()], 0..10), 0..40),
            with_high in any::<bool>(),
        ) {
            let mut keys = keys;
            // Every separator shares a prefix with the high fence, so one is stripped.
            keys = keys.into_iter().map(|k| [b"pp".as_slice(), &k].concat()).collect();
            let high = with_high.then(|| b"pq".to_vec());
            let (page, children) = page_of(&keys, high.as_deref());
            prop_assert_eq!(InnerPage::check(page.bytes().clone()).map(|p| p.children()), Ok(children.clone()));
            prop_assert_eq!(page.count(), children.len());
            prop_assert_eq!(page.low(), children[0].0.as_ref());
            prop_assert_eq!(page.high(), high.as_deref());
            prop_assert_eq!(page.right(), 77);
            for (i, (_, pid)) in children.iter().enumerate() {
                prop_assert_eq!(page.position(*pid), Some(i));
            }
            let all = probes.iter().map(|p| [b"pp".as_slice(), p].concat())
                .chain(probes.iter().cloned())
                .chain(keys.iter().cloned());
            for k in all {
                prop_assert_eq!(page.child_for(&k), model(&children, &k, true), "child_for {:?}", k);
                prop_assert_eq!(page.child_before(Some(&k)), model(&children, &k, false), "child_before {:?}", k);
            }
            prop_assert_eq!(page.child_before(None), children.last().map_or(0, |c| c.1));
        }

        /// Damaged bytes are refused with the place of the damage, or still read as a
        /// valid page; never a panic.
        #[test]
        fn a_damaged_index_page_is_refused_or_still_readable(
            keys in proptest::collection::btree_set(proptest::collection::vec(any::<u8>(), 1..6), 1..12),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let (page, _) = page_of(&keys, Some(&[0xff; 7]));
            let mut b = page.bytes().to_vec();
            let i = at.index(b.len());
            b[i] ^= byte.max(1);
            if let Some(c) = cut {
                b.truncate(c.index(b.len()));
            }
            if let Ok(p) = InnerPage::check(Bytes::from(b.clone())) {
                // A page that passes is searchable.
                let c = p.children();
                prop_assert_eq!(c.len(), p.count());
                let _ = p.child_for(&b[..b.len().min(5)]);
            }
        }
    }

    #[test]
    fn a_page_without_children_or_with_a_child_id_zero_is_refused() {
        let (page, _) = page_of(&[b"a".to_vec(), b"b".to_vec()].into(), None);
        let mut b = page.bytes().to_vec();
        let arrays = page.arrays_at();
        b[arrays..arrays + 8].fill(0);
        assert_eq!(InnerPage::check(Bytes::from(b)).unwrap_err().what, "child id 0");
        let mut b = page.bytes().to_vec();
        b[4..8].fill(0);
        assert_eq!(InnerPage::check(Bytes::from(b)).unwrap_err().what, "an index page without a child");
    }
}
