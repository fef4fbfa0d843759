//! The hand-off from appenders to the commit thread.
//!
//! An appender reserves its place in the log under the store lock and sends one
//! [`Pending`] down the channel while still holding that lock, so the channel's order
//! is the log's order. It then waits on its [`Ticket`]: blocking callers park on a
//! condition variable, async callers poll [`TicketFuture`], which registers a waker and
//! never blocks the executor. The commit thread completes each ticket exactly once,
//! after the fdatasync that covers its bytes returned, or with the error that
//! poisoned the store.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::index::ExecNo;
use crate::record::Pos;
use crate::sync::{AtomicBool, Condvar, MODEL_CHECKED, Mutex};

/// Blocking appends in progress in this process (from encoding to acknowledgement),
/// for the lone-waiter heuristic of `Ticket::wait`. Counting whole appends, not only
/// waiters: right after a group completes, its writers are busy encoding their next
/// append, and a writer that finds no one else *waiting* is not alone. Counting
/// waiters made two writers yield-poll through every group at 16 batch writers.
static APPENDERS: AtomicUsize = AtomicUsize::new(0);
/// At most this many concurrent appenders poll instead of sleeping.
const LONE_WAITERS: usize = 2;
/// How many times a waiter yields its core before it sleeps.
const WAIT_YIELDS: usize = 16;
/// How long a lone waiter polls before it sleeps.
const LONE_WAITER_POLL: Duration = Duration::from_millis(1);

/// One append's encoded records, on their way to the commit thread.
pub(crate) struct Pending {
    /// Segment the records go to; a new id means "create it first".
    pub(crate) segment: u32,
    /// Offset of the first record in that segment.
    pub(crate) offset: u32,
    /// Capacity to preallocate if this append opens a new segment.
    pub(crate) new_segment_capacity: Option<u64>,
    /// The framed records, contiguous.
    pub(crate) bytes: Vec<u8>,
    /// What becomes durable: the execution, its last sequence in this append and the
    /// position of that record.
    pub(crate) execution: ExecNo,
    pub(crate) last_sequence: u64,
    pub(crate) last_pos: Pos,
    /// Completed when durable (or failed).
    pub(crate) ticket: Ticket,
}

impl Pending {
    /// Offset just past this append's bytes.
    pub(crate) fn end(&self) -> u64 {
        u64::from(self.offset) + self.bytes.len() as u64
    }
}

#[derive(Default)]
struct Slot {
    result: Option<Result<()>>,
    waker: Option<Waker>,
}

#[derive(Default)]
struct TicketInner {
    slot: Mutex<Slot>,
    /// Set (after the result is stored) so that blocking waiters can poll it cheaply.
    completed: AtomicBool,
    done: Condvar,
}

/// Completion handle of one append; cloned between the appender and the commit thread.
#[derive(Clone, Default)]
pub(crate) struct Ticket(Arc<TicketInner>);

impl Ticket {
    /// Completes the ticket; later completions are ignored.
    pub(crate) fn complete(&self, result: Result<()>) {
        let waker = {
            let mut slot = self.0.slot.lock();
            if slot.result.is_some() {
                debug_assert!(false, "ticket completed twice");
                return;
            }
            slot.result = Some(result);
            self.0.completed.store(true, Ordering::Release);
            slot.waker.take()
        };
        self.0.done.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Blocks until the ticket is completed.
    ///
    /// Yields up to [`WAIT_YIELDS`] times, then sleeps: with many writers on few cores,
    /// yielding waiters are rescheduled cheaply, while a futex sleep and wake per append
    /// made context switches the bottleneck at 64 writers (perf: 50% of CPU time in the
    /// scheduler). It does not spin first: no durable append completes within a spin
    /// (an fdatasync takes ~70 µs or more), and crossbeam's `Backoff` spin phase
    /// (127 PAUSEs, ~6 µs on current x86) was 22% of all CPU time at 64 writers (perf).
    ///
    /// A waiter whose append is alone (or nearly) keeps yield-polling for up to
    /// [`LONE_WAITER_POLL`]: one fdatasync is shorter than that, and the sleep/wake pair
    /// it avoids costs a third of a 200 µs append on a virtual machine. With more
    /// waiters the core is better left to the commit thread.
    pub(crate) fn wait(self) -> Result<()> {
        if !MODEL_CHECKED {
            self.poll_until_completed();
        }
        let mut slot = self.0.slot.lock();
        loop {
            if let Some(result) = slot.result.take() {
                return result;
            }
            self.0.done.wait(&mut slot);
        }
    }

    /// The polling part of [`Ticket::wait`]; returns when completed or when it gives up.
    fn poll_until_completed(&self) {
        let appenders = APPENDERS.load(Ordering::Relaxed);
        for _ in 0..WAIT_YIELDS {
            if self.0.completed.load(Ordering::Acquire) {
                break;
            }
            std::thread::yield_now();
        }
        if appenders <= LONE_WAITERS {
            let until = Instant::now() + LONE_WAITER_POLL;
            while !self.0.completed.load(Ordering::Acquire) && Instant::now() < until {
                std::thread::yield_now();
            }
        }
    }

    /// A future that resolves when the ticket is completed.
    pub(crate) fn into_future(self) -> TicketFuture {
        TicketFuture(self)
    }
}

/// Counts one blocking append (see [`APPENDERS`]) for as long as it lives.
pub(crate) struct Appending(());

impl Appending {
    pub(crate) fn start() -> Self {
        APPENDERS.fetch_add(1, Ordering::Relaxed);
        Appending(())
    }
}

impl Drop for Appending {
    fn drop(&mut self) {
        APPENDERS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves with the commit result of one append. Works under any executor.
pub(crate) struct TicketFuture(Ticket);

impl Future for TicketFuture {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let mut slot = self.0.0.slot.lock();
        match slot.result.take() {
            Some(result) => Poll::Ready(result),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Fails a batch of pending appends with copies of `error`.
pub(crate) fn fail_all(pending: impl IntoIterator<Item = Pending>, error: &Error) {
    for p in pending {
        p.ticket.complete(Err(error.duplicate()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_and_async_waiters_see_the_result() {
        let t = Ticket::default();
        let t2 = t.clone();
        let h = std::thread::spawn(move || t2.wait());
        t.complete(Ok(()));
        assert!(matches!(h.join().ok(), Some(Ok(()))));

        let t = Ticket::default();
        let f = t.clone().into_future();
        let h = std::thread::spawn(move || futures::executor::block_on(f));
        t.complete(Err(Error::Closed));
        assert!(matches!(h.join().ok(), Some(Err(Error::Closed))));
    }
}
