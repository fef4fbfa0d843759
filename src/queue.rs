//! The hand-off from appenders to the commit thread.
//!
//! Before it takes the store lock, an appender is admitted by the [`QueueBound`]: the
//! bytes of encoded records queued to the commit thread and not yet completed stay
//! within `Options::max_queued_bytes` (an append is always admitted when nothing is
//! queued, so one larger than the bound goes through, alone). Blocking callers wait on
//! a condition variable, async callers on [`Admit`], a future that registers a waker.
//! The [`Admitted`] guard travels inside the [`Pending`] and releases the bytes when
//! it is dropped: when the append completes, fails, or is discarded.
//!
//! An appender reserves its place in the log under the store lock and sends one
//! [`Pending`] down the channel while still holding that lock, so the channel's order
//! is the log's order. It then waits on its [`Ticket`]: blocking callers park on a
//! condition variable, async callers poll [`TicketFuture`], which registers a waker and
//! never blocks the executor. The commit thread completes each ticket exactly once,
//! after the fdatasync that covers its bytes returned, or with the error that
//! poisoned the store.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::index::ExecNo;
use crate::record::Pos;
use crate::sync::{AtomicBool, AtomicUsize as SyncAtomicUsize, Condvar, MODEL_CHECKED, Mutex};

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
    /// For a tombstone (`deletion.rs`): the executions it deletes once durable, instead
    /// of events becoming durable. Empty for appends.
    pub(crate) deletes: Vec<ExecNo>,
    /// The newest timestamp of its records: once it is durable, the log's newest
    /// durable timestamp is at least this (`checkpointer.rs` saves it).
    pub(crate) timestamp_ns: i64,
    /// Completed when durable (or failed).
    pub(crate) ticket: Ticket,
    /// This append's place under the queue bound, released when the `Pending` is
    /// completed or dropped.
    pub(crate) admitted: Admitted,
}

/// `Pending::execution` of a record that makes nothing durable in the index (the seal
/// that rolls the log before an erasure, `erasure.rs`): no execution has this number
/// (`Index::next_exec_no` stops below it).
pub(crate) const NO_EXECUTION: ExecNo = ExecNo::MAX;

impl Pending {
    /// Offset just past this append's bytes.
    pub(crate) fn end(&self) -> u64 {
        u64::from(self.offset) + self.bytes.len() as u64
    }

    /// How many events (records) the append holds: its first record counts the rest of
    /// its batch.
    pub(crate) fn events(&self) -> u64 {
        if !self.deletes.is_empty() || self.execution == NO_EXECUTION {
            return 0;
        }
        let at = crate::record::BATCH_REMAINING_OFFSET;
        self.bytes
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(1, |b| u64::from(u32::from_le_bytes(b)) + 1)
    }

    /// Releases the append's queued bytes, then completes its ticket (so that its
    /// appender, woken, finds its bytes already released). Returns whether that woke
    /// a task (see [`Ticket::complete`]).
    pub(crate) fn complete(self, result: Result<()>) -> bool {
        let Pending {
            ticket, admitted, ..
        } = self;
        drop(admitted);
        ticket.complete(result)
    }
}

#[derive(Default)]
struct Slot {
    result: Option<Result<()>>,
    waker: Option<Waker>,
    /// Tasks waiting for completion without taking the result (`Ticket::settled`).
    observers: Vec<Waker>,
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
    /// Completes the ticket; later completions are ignored. Returns whether it woke a
    /// task waiting on [`TicketFuture`] (rather than a thread, or no one yet).
    pub(crate) fn complete(&self, result: Result<()>) -> bool {
        let waker = {
            let mut slot = self.0.slot.lock();
            if slot.result.is_some() {
                debug_assert!(false, "ticket completed twice");
                return false;
            }
            slot.result = Some(result);
            self.0.completed.store(true, Ordering::Release);
            (slot.waker.take(), std::mem::take(&mut slot.observers))
        };
        self.0.done.notify_all();
        let (waker, observers) = waker;
        let woke_task = waker.is_some();
        waker.into_iter().chain(observers).for_each(wake);
        woke_task
    }

    /// Blocks until the ticket is completed, leaving the result to its owner: for an
    /// idempotent retry waiting for the append it repeats (`idempotency.rs`).
    pub(crate) fn settle_blocking(&self) {
        let mut slot = self.0.slot.lock();
        while !self.0.completed.load(Ordering::Acquire) {
            self.0.done.wait(&mut slot);
        }
    }

    /// [`Ticket::settle_blocking`] for async callers.
    pub(crate) fn settled(&self) -> Settled {
        Settled(self.clone())
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

/// Wakes a task. A waker is the executor's code, run here on the commit thread: if it
/// panics, the panic is caught and logged, so that the rest of the group is still
/// acknowledged and the store is not poisoned by someone else's bug. The task it
/// should have woken is left to its executor.
fn wake(waker: Waker) {
    if catch_unwind(AssertUnwindSafe(|| waker.wake())).is_err() {
        log::error!("a task's waker panicked when its append completed; the task may not be woken");
    }
}

/// Counts one append in progress for as long as it lives: in its store (see
/// [`QueueBound::appending`]) and, for a blocking append, in the process (see
/// [`APPENDERS`], whose lone-waiter rule is about blocking waiters only, so that async
/// appends on one store leave blocking writers on another alone).
pub(crate) struct Appending<'a> {
    bound: &'a QueueBound,
    blocking: bool,
}

impl<'a> Appending<'a> {
    /// A blocking append.
    pub(crate) fn start(bound: &'a QueueBound) -> Self {
        APPENDERS.fetch_add(1, Ordering::Relaxed);
        bound.appending.fetch_add(1, Ordering::Relaxed);
        Appending {
            bound,
            blocking: true,
        }
    }

    /// An async append.
    pub(crate) fn start_async(bound: &'a QueueBound) -> Self {
        bound.appending.fetch_add(1, Ordering::Relaxed);
        Appending {
            bound,
            blocking: false,
        }
    }
}

impl Drop for Appending<'_> {
    fn drop(&mut self) {
        if self.blocking {
            APPENDERS.fetch_sub(1, Ordering::Relaxed);
        }
        self.bound.appending.fetch_sub(1, Ordering::Relaxed);
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

/// Resolves once a ticket is completed, without taking its result.
pub(crate) struct Settled(Ticket);

impl Future for Settled {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut slot = self.0.0.slot.lock();
        if self.0.0.completed.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if !slot.observers.iter().any(|w| w.will_wake(cx.waker())) {
            slot.observers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Fails a batch of pending appends with copies of `error`.
pub(crate) fn fail_all(pending: impl IntoIterator<Item = Pending>, error: &Error) {
    for p in pending {
        p.complete(Err(error.duplicate()));
    }
}

/// Bounds the bytes queued to the commit thread (`Options::max_queued_bytes`).
///
/// An append is admitted when its bytes fit under the bound, or when nothing is
/// queued. The fast path (nobody waiting, the bytes fit) is one compare-and-swap on
/// `queued`; releasing is one subtraction, plus a look at the line of waiters only
/// when someone waits. Waiters are admitted first come, first served, and while anyone
/// waits new appends join the line instead of overtaking it, so a large batch waiting
/// for an empty queue is not starved by a stream of small appends.
///
/// No wake-up is lost: a waiter joins the line (`waiting` + 1) and then tries to fit,
/// both under the line's lock; a release subtracts from `queued` and then reads
/// `waiting` (all `SeqCst`): either the waiter sees the freed bytes, or the release
/// sees the waiter and admits it under the lock.
///
/// Once stopped (the store closed or was poisoned), every waiter is admitted with no
/// bytes counted; the store lock then refuses its append with `Closed` or `Poisoned`.
/// Lock order: the store lock may be held when this one is taken, never the reverse.
pub(crate) struct QueueBound {
    limit: usize,
    /// Bytes admitted and not yet released.
    queued: SyncAtomicUsize,
    /// The highest `queued` since open (for `Stats`).
    peak: SyncAtomicUsize,
    /// Waiters in the line not yet admitted.
    waiting: SyncAtomicUsize,
    line: Mutex<Line>,
    /// Appends in progress on this store, from their start to their return (an
    /// [`Appending`] each): a hint for the commit thread's wait for stragglers, never
    /// a synchronization point, hence a plain atomic even under the model checker.
    appending: AtomicUsize,
}

#[derive(Default)]
struct Line {
    stopped: bool,
    next_id: u64,
    waiters: VecDeque<Waiter>,
}

struct Waiter {
    id: u64,
    bytes: usize,
    /// The bytes counted for it once admitted (0 if admitted because of a stop); the
    /// waiter removes its entry when it sees this.
    admitted: Option<usize>,
    wake: Wake,
}

enum Wake {
    Thread(Arc<Condvar>),
    Task(Option<Waker>),
}

impl QueueBound {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            queued: SyncAtomicUsize::new(0),
            peak: SyncAtomicUsize::new(0),
            waiting: SyncAtomicUsize::new(0),
            line: Mutex::new(Line::default()),
            appending: AtomicUsize::new(0),
        })
    }

    /// Appends in progress on this store (see [`Appending`]).
    pub(crate) fn appending(&self) -> usize {
        self.appending.load(Ordering::Relaxed)
    }

    /// Bytes admitted and not yet released.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// The most bytes admitted at once since open.
    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Appenders waiting to be admitted.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Admits `bytes`, waiting on a condition variable while the queue is full.
    pub(crate) fn admit_blocking(self: &Arc<Self>, bytes: usize) -> Admitted {
        if let Some(admitted) = self.admit_now(bytes) {
            return admitted;
        }
        let signal = Arc::new(Condvar::default());
        let mut line = self.line.lock();
        let id = self.join(&mut line, bytes, Wake::Thread(Arc::clone(&signal)));
        let mut wakers = self.admit_waiting(&mut line);
        loop {
            if let Some(counted) = take_admitted(&mut line, id) {
                drop(line);
                wakers.into_iter().for_each(Waker::wake);
                return self.admitted(counted);
            }
            if wakers.is_empty() {
                signal.wait(&mut line);
            } else {
                // Wake the tasks admitted ahead of us outside the lock, then look again.
                drop(line);
                wakers.drain(..).for_each(Waker::wake);
                line = self.line.lock();
            }
        }
    }

    /// A future that admits `bytes` without blocking its thread.
    pub(crate) fn admit(self: &Arc<Self>, bytes: usize) -> Admit {
        Admit {
            bound: Arc::clone(self),
            bytes,
            id: None,
        }
    }

    /// Stops bounding: every waiter, now and later, is admitted with no bytes counted.
    /// Called once appends are refused (closed or poisoned).
    pub(crate) fn stop(&self) {
        let wakers = {
            let mut line = self.line.lock();
            line.stopped = true;
            self.admit_waiting(&mut line)
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// The fast path: admitted at once if nobody waits and the bytes fit.
    fn admit_now(self: &Arc<Self>, bytes: usize) -> Option<Admitted> {
        (self.waiting.load(Ordering::SeqCst) == 0 && self.try_add(bytes))
            .then(|| self.admitted(bytes))
    }

    fn admitted(self: &Arc<Self>, bytes: usize) -> Admitted {
        Admitted {
            bound: Arc::clone(self),
            bytes,
        }
    }

    /// Counts `bytes` as queued if they fit (or nothing is queued).
    fn try_add(&self, bytes: usize) -> bool {
        let mut current = self.queued.load(Ordering::SeqCst);
        loop {
            let next = current.saturating_add(bytes);
            if current != 0 && next > self.limit {
                return false;
            }
            match self
                .queued
                .compare_exchange(current, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    if next > self.peak.load(Ordering::Relaxed) {
                        self.peak.fetch_max(next, Ordering::Relaxed);
                    }
                    return true;
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Puts a waiter at the back of the line; returns its id.
    fn join(&self, line: &mut Line, bytes: usize, wake: Wake) -> u64 {
        let id = line.next_id;
        line.next_id += 1;
        line.waiters.push_back(Waiter {
            id,
            bytes,
            admitted: None,
            wake,
        });
        self.waiting.fetch_add(1, Ordering::SeqCst);
        id
    }

    /// Admits waiters from the front of the line while their bytes fit (all of them
    /// once stopped). Threads are notified here; the wakers of tasks are returned, to
    /// be woken once the lock is released.
    fn admit_waiting(&self, line: &mut Line) -> Vec<Waker> {
        let mut wakers = Vec::new();
        let stopped = line.stopped;
        for waiter in line.waiters.iter_mut().filter(|w| w.admitted.is_none()) {
            if stopped {
                waiter.admitted = Some(0);
            } else if self.try_add(waiter.bytes) {
                waiter.admitted = Some(waiter.bytes);
            } else {
                break;
            }
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            match &mut waiter.wake {
                Wake::Thread(signal) => {
                    signal.notify_all();
                }
                Wake::Task(waker) => wakers.extend(waker.take()),
            }
        }
        wakers
    }

    /// Releases `bytes` and admits whoever now fits.
    fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.queued.fetch_sub(bytes, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) != 0 {
            let wakers = self.admit_waiting(&mut self.line.lock());
            wakers.into_iter().for_each(Waker::wake);
        }
    }
}

/// Removes waiter `id` from the line if it was admitted; returns its counted bytes.
fn take_admitted(line: &mut Line, id: u64) -> Option<usize> {
    let at = line.waiters.iter().position(|w| w.id == id)?;
    let counted = line.waiters.get(at)?.admitted?;
    line.waiters.remove(at);
    Some(counted)
}

/// One append's place under the [`QueueBound`]; releases its bytes when dropped.
pub(crate) struct Admitted {
    bound: Arc<QueueBound>,
    bytes: usize,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.bound.release(self.bytes);
    }
}

/// Resolves once the append is admitted; registers its waker meanwhile, so the
/// executor's thread is never blocked. Dropped before it resolves (or after being
/// admitted but before it was polled again), it leaves the line and releases what it
/// was admitted with.
pub(crate) struct Admit {
    bound: Arc<QueueBound>,
    bytes: usize,
    /// Its place in the line, once it joined.
    id: Option<u64>,
}

impl Future for Admit {
    type Output = Admitted;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Admitted> {
        let this = self.get_mut();
        if this.id.is_none()
            && let Some(admitted) = this.bound.admit_now(this.bytes)
        {
            return Poll::Ready(admitted);
        }
        let bound = Arc::clone(&this.bound);
        let mut line = bound.line.lock();
        let id = match this.id {
            Some(id) => id,
            None => {
                let id = bound.join(&mut line, this.bytes, Wake::Task(None));
                this.id = Some(id);
                id
            }
        };
        let wakers = bound.admit_waiting(&mut line);
        let ready = take_admitted(&mut line, id);
        if ready.is_none()
            && let Some(waiter) = line.waiters.iter_mut().find(|w| w.id == id)
        {
            waiter.wake = Wake::Task(Some(cx.waker().clone()));
        }
        drop(line);
        wakers.into_iter().for_each(Waker::wake);
        match ready {
            Some(counted) => {
                this.id = None;
                Poll::Ready(bound.admitted(counted))
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for Admit {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let wakers = {
            let mut line = self.bound.line.lock();
            if let Some(at) = line.waiters.iter().position(|w| w.id == id)
                && let Some(waiter) = line.waiters.remove(at)
            {
                match waiter.admitted {
                    Some(counted) => {
                        self.bound.queued.fetch_sub(counted, Ordering::SeqCst);
                    }
                    None => {
                        self.bound.waiting.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            }
            // Bytes it leaves behind, or its place at the front, may let others in.
            self.bound.admit_waiting(&mut line)
        };
        wakers.into_iter().for_each(Waker::wake);
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
