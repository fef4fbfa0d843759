//! The background erasure thread (`execlog-erasure`) of a writable store: every
//! [`Options::erasure_interval`] it runs an erasure pass (`erasure.rs`) if some
//! segment may hold records of deleted executions, so deleted content leaves the
//! segment files within about one interval (plus the pass itself).
//!
//! Invariants: it holds no lock while it sleeps or rewrites (a pass takes the store
//! lock only to plan and, if it must seal the active segment, to queue the seal); close
//! wakes it at once; a failed pass is logged and tried again at the next interval, and
//! a closed or poisoned store ends the thread.
//!
//! [`Options::erasure_interval`]: crate::Options::erasure_interval

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::erasure;
use crate::error::{Error, Result};
use crate::state::Shared;
use crate::stop::Stop;
use crate::sync::{self, JoinHandle};

/// The running erasure thread; [`Eraser::stop`] ends it.
pub(crate) struct Eraser {
    stop: Arc<Stop>,
    handle: JoinHandle<()>,
}

/// Starts the erasure thread of a writable store whose options ask for one.
pub(crate) fn start(shared: &Arc<Shared>) -> Result<Option<Eraser>> {
    let Some(every) = shared.options.erasure_every() else {
        return Ok(None);
    };
    if shared.read_only || sync::MODEL_CHECKED {
        return Ok(None);
    }
    let stop = Arc::new(Stop::default());
    let (thread_stop, thread_shared) = (Arc::clone(&stop), Arc::clone(shared));
    let handle = sync::Builder::new()
        .name("execlog-erasure".into())
        .spawn(move || run(&thread_shared, &thread_stop, every))
        .map_err(|e| Error::io("spawn erasure thread", &shared.dir, e))?;
    Ok(Some(Eraser { stop, handle }))
}

fn run(shared: &Shared, stop: &Stop, every: Duration) {
    loop {
        if stop.sleep_until(Instant::now() + every) {
            return;
        }
        if shared.erasable.lock().is_empty() {
            continue;
        }
        match erasure::compact(shared) {
            Ok(report) if report.records_erased > 0 => log::info!(
                "erasure: {} records erased in {} segments, {} bytes written",
                report.records_erased,
                report.segments_rewritten,
                report.bytes_written
            ),
            Ok(_) => {}
            Err(e @ (Error::Closed | Error::Poisoned { .. })) => {
                log::debug!("erasure: stopping: {e}");
                return;
            }
            Err(e) => log::warn!("erasure: pass failed, trying again later: {e}"),
        }
    }
}

impl Eraser {
    /// Wakes the thread, which ends (after the rewrite in progress, if any), and joins
    /// it.
    pub(crate) fn stop(self) {
        self.stop.stop();
        if self.handle.join().is_err() {
            log::error!("the erasure thread panicked; the store is unaffected");
        }
    }
}
