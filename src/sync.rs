//! The synchronization primitives the engine's threads meet through: locks, the
//! condition variable and atomics of the tickets and of the queue bound, the appender ->
//! commit thread channel, and thread spawning.
//!
//! Normally these are parking_lot's locks, crossbeam's channel and std's threads. With
//! the `shuttle` feature they become thin wrappers over shuttle's, so that
//! `tests/handoff.rs` can run the real engine under shuttle's scheduler, which explores
//! thread interleavings at every lock, channel and atomic operation and reports
//! deadlocks (a ticket never completed) and failed assertions with a replayable
//! schedule. The wrappers keep parking_lot's API (no lock poisoning), so the engine's
//! code is the same in both builds; only the busy-wait heuristics are skipped under the
//! model checker ([`MODEL_CHECKED`]), which cannot preempt a spinning thread.
//!
//! The simulated file system (`fault.rs`) keeps its own parking_lot lock: no
//! scheduling point happens while it is held, so it needs no model.

/// True when running under shuttle: spinning and timed polling are skipped.
pub(crate) const MODEL_CHECKED: bool = cfg!(feature = "shuttle");

#[cfg(not(feature = "shuttle"))]
mod imp {
    pub(crate) use crossbeam_channel::{Receiver, Sender, TryRecvError, unbounded as channel};
    pub(crate) use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
    pub(crate) use std::thread::{Builder, JoinHandle, yield_now};
}

#[cfg(feature = "shuttle")]
mod imp {
    use std::ops::{Deref, DerefMut};
    use std::sync::PoisonError;
    use std::time::Instant;

    pub(crate) use shuttle::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
    pub(crate) use shuttle::sync::mpsc::{Sender, TryRecvError};
    pub(crate) use shuttle::thread::{Builder, JoinHandle, yield_now};

    /// A mutex with parking_lot's API over shuttle's.
    #[derive(Default)]
    pub(crate) struct Mutex<T>(shuttle::sync::Mutex<T>);

    /// Its guard. The `Option` is empty only inside [`Condvar::wait`].
    pub(crate) struct MutexGuard<'a, T>(Option<shuttle::sync::MutexGuard<'a, T>>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(shuttle::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            MutexGuard(Some(self.0.lock().unwrap_or_else(PoisonError::into_inner)))
        }
    }

    impl<T> Deref for MutexGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            self.0
                .as_deref()
                .expect("guard is held outside Condvar::wait")
        }
    }

    impl<T> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            self.0
                .as_deref_mut()
                .expect("guard is held outside Condvar::wait")
        }
    }

    /// A condition variable with parking_lot's API over shuttle's.
    #[derive(Default)]
    pub(crate) struct Condvar(shuttle::sync::Condvar);

    impl Condvar {
        pub(crate) fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
            let inner = guard.0.take().expect("guard is held before waiting");
            let inner = self.0.wait(inner).unwrap_or_else(PoisonError::into_inner);
            guard.0 = Some(inner);
        }

        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }

        /// Waits for a notification or until `deadline`; shuttle may time out at any
        /// scheduling point, which a caller must tolerate anyway.
        pub(crate) fn wait_until<T>(
            &self,
            guard: &mut MutexGuard<'_, T>,
            deadline: Instant,
        ) -> WaitTimeout {
            let inner = guard.0.take().expect("guard is held before waiting");
            let timeout = deadline.saturating_duration_since(Instant::now());
            let (inner, result) = self
                .0
                .wait_timeout(inner, timeout)
                .unwrap_or_else(PoisonError::into_inner);
            guard.0 = Some(inner);
            WaitTimeout(result.timed_out())
        }
    }

    /// Whether a timed wait ended by its deadline, as parking_lot says it.
    pub(crate) struct WaitTimeout(bool);

    impl WaitTimeout {
        pub(crate) fn timed_out(&self) -> bool {
            self.0
        }
    }

    /// A reader-writer lock with parking_lot's API over shuttle's.
    pub(crate) struct RwLock<T>(shuttle::sync::RwLock<T>);

    impl<T> RwLock<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(shuttle::sync::RwLock::new(value))
        }

        pub(crate) fn read(&self) -> shuttle::sync::RwLockReadGuard<'_, T> {
            self.0.read().unwrap_or_else(PoisonError::into_inner)
        }

        pub(crate) fn write(&self) -> shuttle::sync::RwLockWriteGuard<'_, T> {
            self.0.write().unwrap_or_else(PoisonError::into_inner)
        }
    }

    /// The receiving end of the channel, with the crossbeam methods the engine uses.
    pub(crate) struct Receiver<T>(shuttle::sync::mpsc::Receiver<T>);

    impl<T> Receiver<T> {
        pub(crate) fn try_recv(&self) -> Result<T, TryRecvError> {
            self.0.try_recv()
        }

        pub(crate) fn recv(&self) -> Result<T, shuttle::sync::mpsc::RecvError> {
            self.0.recv()
        }

        /// Shuttle has no clock: a deadline means "whatever is queued now".
        pub(crate) fn recv_deadline(&self, _deadline: Instant) -> Result<T, TryRecvError> {
            self.0.try_recv()
        }

        pub(crate) fn iter(&self) -> impl Iterator<Item = T> + '_ {
            self.0.iter()
        }
    }

    pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
        let (tx, rx) = shuttle::sync::mpsc::channel();
        (tx, Receiver(rx))
    }
}

pub(crate) use imp::*;
