//! [`Stop`]: the flag a background thread sleeps on, so that close wakes it at once
//! whatever its schedule.

use std::time::Instant;

use crate::sync::{Condvar, Mutex};

/// A stop flag with a condition variable to sleep on.
#[derive(Default)]
pub(crate) struct Stop {
    stopped: Mutex<bool>,
    cond: Condvar,
}

impl Stop {
    /// Waits until `deadline` or until stopped; true if stopped.
    pub(crate) fn sleep_until(&self, deadline: Instant) -> bool {
        let mut stopped = self.stopped.lock();
        while !*stopped && Instant::now() < deadline {
            let _ = self.cond.wait_until(&mut stopped, deadline);
        }
        *stopped
    }

    /// Whether the flag is set.
    pub(crate) fn is_stopped(&self) -> bool {
        *self.stopped.lock()
    }

    /// Sets the flag and wakes the sleeper.
    pub(crate) fn stop(&self) {
        *self.stopped.lock() = true;
        self.cond.notify_all();
    }
}
