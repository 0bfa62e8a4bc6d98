//! Cooperative budget: fairness to the executor.
//!
//! Rule (invariant): **every public read or commit consumes one unit of budget before it
//! does its work, so a loop of operations that never wait still yields to the executor at
//! a bounded rate.** A read served from the page cache, a scan item already in memory, or a
//! commit with `Durability::None` completes without ever returning `Pending`; without a
//! budget, a task looping on them would hold its worker thread forever and starve timers
//! and every other task queued there. The budget points are `Bucket::get`, `Txn::get`,
//! `Snapshot::get`, `Txn::commit_with` (so `commit`, `Bucket::put` and `Bucket::delete`)
//! and every item of an [`Iter`](crate::Iter), including its end.
//!
//! [`poll_budget`] is the one budget point; [`budget`] is its `async` form.
//!
//! - Inside a tokio task every [`POINTS_PER_TOKIO_UNIT`]-th point takes a unit of tokio's
//!   own cooperative budget (`tokio::task::coop::poll_proceed`), shared with tokio's
//!   sockets, channels and locks: when the task's budget (128 units per poll) is spent it
//!   returns `Pending`, and tokio wakes the task again only once its worker has run the
//!   other tasks queued there and parked for zero time, which lets the timer and I/O
//!   drivers run. Measured on one task looping on 1M cached gets (release build, medians of
//!   9, against the engine without budget points): current-thread 372-381 -> 387-397 ns,
//!   one worker 365-372 -> 387-392 ns, two workers with the other idle 369-374 -> 443-448 ns
//!   (one point per unit gave 442-458 ns there).
//! - Anywhere else (`futures::executor`, smol, async-std, the future given to a tokio
//!   `Runtime::block_on`), a per-thread counter of budget points makes every
//!   [`YIELD_EVERY`]-th point wake its own task and return `Pending` once. Only one task
//!   runs on a thread at a time, so no poll of a task runs more than `YIELD_EVERY` budget
//!   points (fewer when the count started high).
//!
//! "Inside a tokio task" is `tokio::task::try_id().is_some()`: one thread-local read (about
//! 2-3 ns measured), true only while a tokio scheduler (multi-thread, current-thread or
//! `LocalSet`) polls a task, and tokio's budget is in force then (unless the caller opted
//! out with `tokio::task::coop::unconstrained`, which this respects). The future given to
//! `Runtime::block_on` has a tokio budget too but is not a task; it takes the counter path,
//! which yields as well. `Handle::try_current()` would also be true for a future of
//! another executor polled inside an entered runtime, where tokio's budget is unconstrained
//! and nothing would ever yield, and it clones the handle's `Arc` on every call (about
//! 40 ns measured with two workers calling it at once).

use std::cell::Cell;
use std::task::{Context, Poll};

/// Off tokio, one budget point in this many returns `Pending` once.
///
/// 128 is tokio's own per-poll budget, so a loop behaves alike on every executor. A cached
/// get costs some 360 ns (release build), so 128 of them hold a thread for about 50 µs
/// before other tasks and timers get a turn, while the forced yield (a self-wake and a trip
/// through the executor's queue) and the counter cost together 5-10 ns per get measured
/// under `futures::executor::block_on` (about 2%). Much smaller would tax tight loops
/// more; much larger would stretch the 50 µs.
const YIELD_EVERY: u32 = 128;

thread_local! {
    /// Budget points taken on this thread (a count modulo `u32`; off tokio every
    /// `YIELD_EVERY`-th yields, on tokio every `POINTS_PER_TOKIO_UNIT`-th takes a unit).
    static POINTS: Cell<u32> = const { Cell::new(0) };
}

/// Budget points per unit of tokio's budget.
///
/// A cached get (some 360 ns) is far cheaper than the socket read or channel receive a
/// tokio budget unit stands for, and every exhausted budget costs a trip through the
/// scheduler, which on a multi-thread runtime wakes an idle sibling worker to steal the
/// yielded task: with one unit per get, a lone task looping on cached gets on a 2-worker
/// runtime paid +22% per get (451 against 366 ns, 128 gets per yield). Four points per
/// unit yield every 512 gets (about 0.2 ms of work), still far inside a 10 ms timer tick.
const POINTS_PER_TOKIO_UNIT: u32 = 4;

/// Takes one unit of budget: `Ready` to go on, or `Pending` (with the task already woken
/// or scheduled to be) when the task must yield first. See the module doc.
pub(crate) fn poll_budget(cx: &mut Context<'_>) -> Poll<()> {
    let on_tokio = tokio::task::try_id().is_some();
    POINTS.with(|points| {
        let n = points.get().wrapping_add(1);
        points.set(n);
        if on_tokio {
            if !n.is_multiple_of(POINTS_PER_TOKIO_UNIT) {
                return Poll::Ready(());
            }
            return tokio::task::coop::poll_proceed(cx).map(|restore| restore.made_progress());
        }
        if n.is_multiple_of(YIELD_EVERY) {
            cx.waker().wake_by_ref();
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
}

/// [`poll_budget`] as a future: takes one unit of budget, yielding first if it must.
pub(crate) async fn budget() {
    std::future::poll_fn(poll_budget).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::Waker;

    #[test]
    fn off_tokio_every_nth_point_yields_once() {
        let mut cx = Context::from_waker(Waker::noop());
        POINTS.with(|p| p.set(0));
        let mut pending = 0;
        for _ in 0..10 * YIELD_EVERY {
            if poll_budget(&mut cx).is_pending() {
                pending += 1;
            }
        }
        assert_eq!(pending, 10);
        // The async form finishes on its second poll after a forced yield.
        POINTS.with(|p| p.set(YIELD_EVERY - 1));
        let mut f = pin!(budget());
        assert!(f.as_mut().poll(&mut cx).is_pending());
        assert!(f.as_mut().poll(&mut cx).is_ready());
    }
}
