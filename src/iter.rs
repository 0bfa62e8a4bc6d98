//! Range iteration: a `futures::Stream` of `(key, value)` over one snapshot. The scan
//! itself is the engine's read path (`crate::engine::read`); [`Iter`] is its handle.
//!
//! Every scan (of a bucket, a snapshot or a transaction) reaches its caller through
//! [`Iter`], whose `poll_next` takes one unit of cooperative budget (`crate::coop`) before
//! it works on each item, the end of the stream included: most items come from a leaf
//! already in memory, so without it a scan loop would never yield to the executor.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt};

use crate::coop;
use crate::error::Result;

/// A stream of `(key, value)` pairs in key order (or reverse key order), over one
/// snapshot: a `futures::Stream`, `Send` and `'static` (it may outlive the handle that
/// made it, and keeps the database open while it lives).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> ringkv::Result<()> {
/// use futures::StreamExt;
/// let dir = tempfile::tempdir().expect("a temporary directory");
/// let db = ringkv::Db::open(dir.path(), ringkv::Options::default()).await?;
/// let b = db.bucket("b").await?;
/// for i in 0..10u8 {
///     b.put([i], [i * 2]).await?;
/// }
/// let mut it = b.range(&[3u8][..]..&[6u8][..]).await?;
/// let mut keys = Vec::new();
/// while let Some(item) = it.next().await {
///     keys.push(item?.0[0]);
/// }
/// assert_eq!(keys, [3, 4, 5]);
/// assert_eq!(b.iter().await?.collect_vec().await?.len(), 10);
/// db.close().await?;
/// # Ok(()) }
/// ```
pub struct Iter {
    inner: BoxStream<'static, Result<(Bytes, Bytes)>>,
    /// The budget unit of the item being produced was taken (it is taken once per item,
    /// however many polls the item needs).
    budget_taken: bool,
}

impl Iter {
    pub(crate) fn new(inner: BoxStream<'static, Result<(Bytes, Bytes)>>) -> Iter {
        Iter { inner, budget_taken: false }
    }

    /// Collects the remaining pairs.
    pub async fn collect_vec(mut self) -> Result<Vec<(Bytes, Bytes)>> {
        let mut out = Vec::new();
        // Through `poll_next`, so each item takes its unit of budget.
        while let Some(item) = self.next().await {
            out.push(item?);
        }
        Ok(out)
    }
}

impl Stream for Iter {
    type Item = Result<(Bytes, Bytes)>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if !this.budget_taken {
            ready!(coop::poll_budget(cx));
            this.budget_taken = true;
        }
        let item = ready!(this.inner.as_mut().poll_next(cx));
        this.budget_taken = false;
        Poll::Ready(item)
    }
}
