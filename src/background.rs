//! [`Background`]: one of a writable store's periodic background threads (the
//! scrubber, the pruner of retention, the erasure thread) with the stop flag it sleeps
//! on.
//!
//! Invariants: the thread sleeps only on its [`Stop`], so [`Background::stop`] wakes it
//! at once; `stop` joins it, so nothing it does outlives close; a panic in it is
//! logged, never propagated: acknowledged data never depends on these threads.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::state::Shared;
use crate::stop::Stop;
use crate::sync::{self, JoinHandle};

/// A running background thread; [`Background::stop`] ends it.
pub(crate) struct Background {
    name: &'static str,
    stop: Arc<Stop>,
    handle: JoinHandle<()>,
}

/// Starts thread `name`, which runs `run` with the store and its stop flag.
pub(crate) fn spawn(
    shared: &Arc<Shared>,
    name: &'static str,
    run: impl FnOnce(Arc<Shared>, Arc<Stop>) + Send + 'static,
) -> Result<Background> {
    let stop = Arc::new(Stop::default());
    let (thread_stop, thread_shared) = (Arc::clone(&stop), Arc::clone(shared));
    let handle = sync::Builder::new()
        .name(name.into())
        .spawn(move || run(thread_shared, thread_stop))
        .map_err(|e| Error::io("spawn a background thread", &shared.dir, e))?;
    Ok(Background { name, stop, handle })
}

impl Background {
    /// Wakes the thread, which ends (after the work in progress, if any), and joins it.
    pub(crate) fn stop(self) {
        self.stop.stop();
        if self.handle.join().is_err() {
            log::error!("the {} thread panicked; the store is unaffected", self.name);
        }
    }
}
