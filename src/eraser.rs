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

use crate::background::{self, Background};
use crate::erasure;
use crate::error::{Error, Result};
use crate::state::Shared;
use crate::stop::Stop;
use crate::sync;

/// Starts the erasure thread of a writable store whose options ask for one.
pub(crate) fn start(shared: &Arc<Shared>) -> Result<Option<Background>> {
    let Some(every) = shared.options.erasure_every() else {
        return Ok(None);
    };
    if shared.read_only || sync::MODEL_CHECKED {
        return Ok(None);
    }
    background::spawn(shared, "execlog-erasure", move |shared, stop| {
        run(&shared, &stop, every);
    })
    .map(Some)
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
