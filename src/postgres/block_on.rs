//! Runs a future to completion on the calling thread: the blocking twins of
//! [`PgStore`](super::PgStore), and connecting.
//!
//! The futures it runs only wait on the store's runtime (a join handle or a reply
//! channel), so parking the calling thread is all it takes; it works inside or outside
//! any executor, like the embedded store's blocking calls.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `future` until it is ready, parking between polls.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        // A spurious wake-up only costs one more poll.
        std::thread::park();
    }
}
