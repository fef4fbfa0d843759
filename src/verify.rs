//! Checking a store end to end: every execution's chain walked from its durable end to
//! sequence 1, every record's CRC checked and body decoded, and the index's answers
//! compared with what the log holds.
//!
//! Recovery has already verified every record's CRC and chain link while opening; this
//! pass adds what recovery skips for speed (decoding every body) and checks the index
//! against the log from the other side (through the read path), and checks that each
//! sealed segment's sidecar, if open would take it, describes the segment.

use crate::error::Error;
use crate::log_store::LogStore;

/// What [`LogStore::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Executions checked.
    pub executions: u64,
    /// Events read and decoded.
    pub events: u64,
    /// Each problem, with segment and offset where known.
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// Whether no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl LogStore {
    /// Reads every event of every execution through the read path and checks it
    /// against the index. `progress(done, total)` is called as executions complete.
    /// A torn tail found (and, read-only, not cut) at open counts as a problem.
    pub fn verify(&self, mut progress: impl FnMut(u64, u64)) -> VerifyReport {
        let mut report = VerifyReport::default();
        if let Some((segment, offset)) = self.recovery_report().truncated_at {
            report.problems.push(format!(
                "segment {segment} offset {offset}: torn tail ({}); opening the store read-write cuts it",
                self.recovery_report().torn_reason.as_deref().unwrap_or("incomplete")
            ));
        }
        let executions = match self.execution_ids() {
            Ok(executions) => executions,
            Err(e) => {
                report
                    .problems
                    .push(format!("the index cannot be read: {e}"));
                return report;
            }
        };
        let total = executions.len() as u64;
        for (done, (id, latest)) in executions.into_iter().enumerate() {
            report.executions += 1;
            // Up to what the index said: a reader's index may grow meanwhile.
            let limit = usize::try_from(latest).unwrap_or(usize::MAX);
            match crate::reader::read(self.shared(), &id, 0, limit) {
                Ok(events) => {
                    report.events += events.len() as u64;
                    if events.len() as u64 != latest {
                        report.problems.push(format!(
                            "execution {id}: index says {latest} events, the log holds {}",
                            events.len()
                        ));
                    }
                    if events
                        .iter()
                        .zip(1..)
                        .any(|(e, s)| e.sequence != s || e.execution_id != id)
                    {
                        report
                            .problems
                            .push(format!("execution {id}: events out of order"));
                    }
                }
                Err(Error::Corrupt {
                    segment,
                    offset,
                    reason,
                }) => report.problems.push(format!(
                    "segment {segment} offset {offset}: {reason} (execution {id})"
                )),
                Err(other) => report.problems.push(format!("execution {id}: {other}")),
            }
            progress(done as u64 + 1, total);
        }
        report.problems.extend(sidecar_problems(self.shared()));
        report
    }
}

/// Sidecars (`sidecar.rs`) that an open after a crash would take for their segment but
/// that do not describe it: derived files, yet such a sidecar makes the session that
/// takes it refute its checkpoint. Sidecars open would ignore (damaged, of another
/// file, of a segment still written) are not reported.
fn sidecar_problems(shared: &crate::state::Shared) -> Vec<String> {
    let io = shared.io.as_ref();
    let Ok(listing) = crate::store_dir::Listing::read(io, &shared.dir) else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    for id in listing.sidecars {
        let Some(end) = shared.segments.sealed_end(id) else {
            continue;
        };
        let Ok(view) = shared.segments.view(id, end) else {
            continue;
        };
        let bytes = view.as_ref().as_ref();
        let Some(Ok(s)) = crate::sidecar::load(io, &shared.dir, (id, bytes.len() as u64)) else {
            continue;
        };
        let matches = crate::sidecar::summarize(id, bytes, s.end).is_ok_and(|found| found == s);
        if s.fits(id, bytes) && !matches {
            problems.push(format!(
                "segment {id}: its sidecar ({}) does not describe the segment's records; it \
                 is derived data: remove it (an open after a crash that took it would refute \
                 its checkpoint)",
                crate::store_dir::sidecar_name(id)
            ));
        }
    }
    problems
}
