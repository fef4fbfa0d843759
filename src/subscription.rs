//! Subscriptions: what a follower of a store asks for and what it gets, the same on
//! every backend.
//!
//! A [`Subscription`] is pulled. It holds a cursor into the store's global order and
//! nothing else of size: the events it has not delivered yet stay in the store, so a
//! slow consumer falls behind and catches up from the log, and appenders never wait for
//! it. A backend supplies the cursor as a [`Source`]; this module turns it into the
//! blocking iterator, the timed wait and the async `Stream` users see.
//!
//! Invariants every source keeps (docs/DESIGN.md, "The follow path"):
//! - it yields only durable events (what a crash cannot take back), each once, in
//!   position order, with no gap between history and live events;
//! - positions only grow: a delivered position is strictly above the previous one;
//! - waiting registers before it re-checks, so a wake-up is never lost.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::event::StoredEvent;
use crate::ids::{ExecutionId, TenantId};

/// Which events a subscription delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscriptionFilter {
    /// Every event of every tenant.
    All,
    /// The events of every execution one tenant owns.
    Tenant(TenantId),
    /// The events of one execution.
    Execution(ExecutionId),
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// With the first event of the store.
    Beginning,
    /// With the first event made durable after the subscription was created.
    End,
    /// With the first event whose position is above the given one: the position of the
    /// last event a consumer processed, to resume after it, or an
    /// [`end_position`](Follow::end_position).
    After(u64),
}

/// One delivered event and its position in the store's global order.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    /// Grows with commit order across the whole store; gaps are allowed. Stable across
    /// reopen, crash recovery and index checkpoints.
    pub position: u64,
    /// The event, as [`load_events`](crate::EventStore::load_events) returns it.
    pub event: StoredEvent,
}

/// Stores that can be followed: both backends implement it.
pub trait Follow {
    /// Starts a subscription. It reads nothing yet; the first call that asks for an
    /// event starts the catch-up.
    fn subscribe(&self, filter: SubscriptionFilter, start: StartFrom) -> Result<Subscription>;

    /// The current end of the store's order: every event durable when this is called
    /// has a position at most it, and every event that becomes durable after it returns
    /// gets a larger one, so `StartFrom::After(end_position)` delivers exactly the later
    /// events. (PostgreSQL orders by transaction id, so there it first waits for the
    /// transactions in progress at the call to end.)
    fn end_position(&self) -> Result<u64>;
}

/// What one look at a source found.
pub(crate) enum Next {
    /// The next matching durable event.
    Event(Delivered),
    /// Nothing more is durable now: the subscription has caught up.
    Idle,
    /// Nothing at hand without waiting, and the source does not know yet whether more
    /// is durable (PostgreSQL: a look at the server is under way). Like `Idle`, except
    /// that it does not mark the subscription caught up.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Pending,
    /// Nothing more will ever come (the store was closed or poisoned); the error
    /// says which.
    Ended(Error),
}

/// A backend's cursor into its global order.
pub(crate) trait Source: Send {
    /// Looks for the next matching event without waiting.
    fn next(&mut self) -> Result<Next>;

    /// Blocks until more may be durable, or until `deadline`.
    fn wait(&mut self, deadline: Option<Instant>);

    /// Arranges for `waker` to be woken once more may be durable. Returns `true` if
    /// that may already have happened since the last [`Source::next`] returned
    /// [`Next::Idle`] (the caller then looks again instead of sleeping).
    fn register(&mut self, waker: &Waker) -> bool;
}

/// A live, pulled feed of durable events in position order: first the history, then
/// new events as they become durable.
///
/// Blocking use: iterate (each item waits as long as it takes; the iterator ends when
/// the store is closed and everything durable was delivered), or call
/// [`Subscription::next_timeout`]. Async use: it is a [`futures_core::Stream`] that
/// works on any executor. Dropping it releases everything it holds.
pub struct Subscription {
    source: Box<dyn Source>,
    caught_up: bool,
    last_position: Option<u64>,
    /// Set once an error was returned by the iterator or the stream, which then end.
    fused: bool,
    /// Items the stream returned since it last returned `Pending` (see
    /// [`STREAM_BUDGET`]).
    ready_in_a_row: u32,
}

/// Items the stream returns in a row before it yields to its executor once: catching up
/// a long history, every poll is ready, and a consumer looping on it would otherwise
/// hold its executor thread (a current-thread runtime's only one) for the whole
/// catch-up (220,000 events: ~0.1 s).
const STREAM_BUDGET: u32 = 256;

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("caught_up", &self.caught_up)
            .field("last_position", &self.last_position)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    pub(crate) fn new(source: Box<dyn Source>) -> Self {
        Self {
            source,
            caught_up: false,
            last_position: None,
            fused: false,
            ready_in_a_row: 0,
        }
    }

    /// Whether the subscription has delivered everything that was durable at some
    /// moment after it started: the catch-up is over and what follows is live. Stays
    /// true once it is.
    pub fn is_caught_up(&self) -> bool {
        self.caught_up
    }

    /// The position of the last event delivered, to resume from with
    /// [`StartFrom::After`].
    pub fn last_position(&self) -> Option<u64> {
        self.last_position
    }

    /// The next event if one is durable now, without waiting. `Ok(None)`: none is at
    /// hand (caught up, or, on PostgreSQL, the look for more has not answered yet:
    /// [`is_caught_up`](Subscription::is_caught_up) tells which).
    /// `Err(Error::Closed)`: the store was closed and everything was delivered.
    pub fn try_next(&mut self) -> Result<Option<Delivered>> {
        match self.source.next()? {
            Next::Event(d) => Ok(Some(self.delivered(d))),
            Next::Idle => {
                self.caught_up = true;
                Ok(None)
            }
            Next::Pending => Ok(None),
            Next::Ended(e) => {
                self.caught_up = true;
                Err(e)
            }
        }
    }

    /// The next event, waiting up to `timeout` for one to become durable. `Ok(None)`:
    /// none did in time. `Err(Error::Closed)`: this store handle was closed and
    /// everything was delivered (as [`Subscription::try_next`]).
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Delivered>> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if let Some(d) = self.try_next()? {
                return Ok(Some(d));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            self.source.wait(deadline);
        }
    }

    fn delivered(&mut self, d: Delivered) -> Delivered {
        debug_assert!(self.last_position.is_none_or(|p| p < d.position));
        self.last_position = Some(d.position);
        d
    }

    /// One step of the iterator and of the stream: `Ready(None)` ends them.
    fn step(&mut self, waker: Option<&Waker>) -> Poll<Option<Result<Delivered>>> {
        if self.fused {
            return Poll::Ready(None);
        }
        loop {
            match self.try_next() {
                Ok(Some(d)) => return Poll::Ready(Some(Ok(d))),
                Ok(None) => match waker {
                    Some(w) => {
                        if !self.source.register(w) {
                            return Poll::Pending;
                        }
                    }
                    None => self.source.wait(None),
                },
                Err(Error::Closed) => {
                    self.fused = true;
                    return Poll::Ready(None);
                }
                Err(e) => {
                    self.fused = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

impl Iterator for Subscription {
    type Item = Result<Delivered>;

    /// Waits as long as it takes for the next event. Ends once the store is closed and
    /// every durable event was delivered, or after an error (returned as the last item).
    fn next(&mut self) -> Option<Self::Item> {
        match self.step(None) {
            Poll::Ready(item) => item,
            Poll::Pending => None,
        }
    }
}

impl futures_core::Stream for Subscription {
    type Item = Result<Delivered>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ready_in_a_row >= STREAM_BUDGET {
            this.ready_in_a_row = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let poll = this.step(Some(cx.waker()));
        this.ready_in_a_row = match poll {
            Poll::Ready(Some(_)) => this.ready_in_a_row + 1,
            _ => 0,
        };
        poll
    }
}
