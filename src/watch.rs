//! How followers wait for the durable end to move, without costing appenders.
//!
//! The commit thread calls [`Watch::advance`] after it has raised the durable ends of a
//! group. That is one atomic increment and one atomic load when nobody waits; only when
//! a follower sleeps (a thread on the condition variable, or a task's waker) does it
//! take the lock and wake them.
//!
//! No lost wake-up: a follower increments `sleepers` and then re-reads `generation`;
//! the commit thread increments `generation` and then reads `sleepers` (both
//! sequentially consistent). Either the follower sees the new generation and does not
//! sleep, or the commit thread sees the sleeper and wakes it.

use std::task::Waker;
use std::time::Instant;

use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Condvar, Mutex};
use std::sync::atomic::Ordering::SeqCst;

/// The durable-end signal of one open store.
#[derive(Default)]
pub(crate) struct Watch {
    generation: AtomicU64,
    sleepers: AtomicUsize,
    /// Set when the store closes: no durable end moves again.
    finished: AtomicBool,
    wakers: Mutex<Wakers>,
    cond: Condvar,
}

#[derive(Default)]
struct Wakers {
    /// One waker per registered subscription (by its id), so that polling a stream
    /// again with the same task does not grow the list.
    registered: Vec<(u64, Waker)>,
    next_id: u64,
}

impl Watch {
    /// A fresh id for a follower that registers wakers.
    pub(crate) fn follower_id(&self) -> u64 {
        let mut w = self.wakers.lock();
        w.next_id += 1;
        w.next_id
    }

    /// The current generation: it changes after every move of the durable end (and at
    /// close).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(SeqCst)
    }

    /// Called after the durable end moved (or the store closed or was poisoned).
    pub(crate) fn advance(&self) {
        self.generation.fetch_add(1, SeqCst);
        if self.sleepers.load(SeqCst) == 0 {
            return;
        }
        let registered = {
            let mut w = self.wakers.lock();
            self.cond.notify_all();
            std::mem::take(&mut w.registered)
        };
        for (_, waker) in registered {
            self.sleepers.fetch_sub(1, SeqCst);
            waker.wake();
        }
    }

    /// The store closed: wakes every follower for the last time.
    pub(crate) fn finish(&self) {
        self.finished.store(true, SeqCst);
        self.advance();
    }

    /// Whether the store closed (every durable end is final).
    pub(crate) fn finished(&self) -> bool {
        self.finished.load(SeqCst)
    }

    /// Blocks while the generation is still `seen`, until `deadline` if there is one.
    pub(crate) fn wait(&self, seen: u64, deadline: Option<Instant>) {
        let mut w = self.wakers.lock();
        self.sleepers.fetch_add(1, SeqCst);
        while self.generation.load(SeqCst) == seen {
            match deadline {
                Some(d) => {
                    if self.cond.wait_until(&mut w, d).timed_out() {
                        break;
                    }
                }
                None => self.cond.wait(&mut w),
            }
        }
        self.sleepers.fetch_sub(1, SeqCst);
    }

    /// Registers `waker` for follower `id` to be woken at the next advance. Returns
    /// `true` if the generation is no longer `seen` (the caller looks again).
    pub(crate) fn register(&self, id: u64, seen: u64, waker: &Waker) -> bool {
        {
            let mut w = self.wakers.lock();
            match w.registered.iter_mut().find(|(i, _)| *i == id) {
                Some((_, old)) => old.clone_from(waker),
                None => {
                    w.registered.push((id, waker.clone()));
                    self.sleepers.fetch_add(1, SeqCst);
                }
            }
        }
        self.generation.load(SeqCst) != seen
    }

    /// Forgets follower `id`'s waker (the subscription was dropped).
    pub(crate) fn unregister(&self, id: u64) {
        let mut w = self.wakers.lock();
        if let Some(i) = w.registered.iter().position(|(i, _)| *i == id) {
            w.registered.swap_remove(i);
            self.sleepers.fetch_sub(1, SeqCst);
        }
    }
}
