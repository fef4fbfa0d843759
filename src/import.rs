//! Imports: events stored with the sequences and timestamps they already have. This is
//! the path `execlog migrate` copies a store through, in either direction; the
//! PostgreSQL side is `postgres/import.rs`, and both check a chunk here first.
//!
//! An import is one chunk of one execution's events, stored all-or-nothing. On the
//! embedded store it goes through the normal append path (validation, the queue bound,
//! group commit, fdatasync before the answer) as one atomic batch; it differs from
//! `append_batch` only in what it does not assign:
//! - Sequences. The chunk must continue its execution exactly (sequence 1 creates
//!   it); any other start is refused under the store lock and nothing is written. So a
//!   copy run again after an interruption never duplicates nor skips an event: it asks
//!   the destination for its latest sequence and continues after it.
//! - Timestamps. Each event keeps its own. They must not decrease within the chunk,
//!   nor from the execution's last durable event (the [`StoredEvent`] promise). The
//!   store's clock moves up to the newest imported timestamp, never down, so later
//!   appends stay non-decreasing within every execution, and the live clock equals
//!   what recovery derives from the records (the newest timestamp of any record) and
//!   what `checkpoint_walk::check_records` expects of a checkpoint (between the newest
//!   event's and the seal's): importing old events changes neither what a reopen
//!   accepts nor the time later appends get. An imported timestamp in the future holds
//!   the clock there until real time passes it, as a clock step back would.
//!
//! These methods are public for the `execlog` binary and hidden from the docs: they
//! are the migration path, not part of the contract.

use crate::append::Given;
use crate::error::{Error, Result};
use crate::event::{ExecutionEventData, StoredEvent};
use crate::ids::{ExecutionId, TenantId, validate_id};
use crate::log_store::LogStore;
use crate::queue::Appending;

/// One import, checked: consecutive events of one execution, in order.
///
/// Invariants: `timestamps_ns` is not empty, nor is `events` until a backend takes
/// them to encode, and then they have the same length;
/// `first_sequence >= 1` and the last sequence fits in an `i64`; timestamps do not
/// decrease.
pub(crate) struct Chunk {
    pub(crate) execution_id: ExecutionId,
    pub(crate) tenant_id: TenantId,
    pub(crate) first_sequence: u64,
    pub(crate) timestamps_ns: Vec<i64>,
    pub(crate) events: Vec<ExecutionEventData>,
}

impl Chunk {
    /// Checks `events` (see [`Chunk`]'s invariants); changes nothing.
    pub(crate) fn new(events: Vec<StoredEvent>) -> Result<Chunk> {
        let Some(first) = events.first() else {
            return Err(Error::InvalidArgument(
                "an import needs at least one event; nothing was stored".into(),
            ));
        };
        validate_id("execution", first.execution_id.as_str())?;
        validate_id("tenant", first.tenant_id.as_str())?;
        let (execution_id, tenant_id) = (first.execution_id.clone(), first.tenant_id.clone());
        let first_sequence = first.sequence;
        let count = events.len() as u64;
        if first_sequence == 0 || first_sequence.checked_add(count - 1).is_none_or(too_big) {
            return Err(refused(
                &execution_id,
                format!("sequences {first_sequence}.. are outside 1..=i64::MAX"),
            ));
        }
        let mut chunk = Chunk {
            execution_id,
            tenant_id,
            first_sequence,
            timestamps_ns: Vec::with_capacity(events.len()),
            events: Vec::with_capacity(events.len()),
        };
        for (e, sequence) in events.into_iter().zip(first_sequence..) {
            if e.execution_id != chunk.execution_id || e.tenant_id != chunk.tenant_id {
                return Err(refused(
                    &chunk.execution_id,
                    format!(
                        "event {sequence} names execution {} of tenant {}: one chunk holds one execution",
                        e.execution_id, e.tenant_id
                    ),
                ));
            }
            if e.sequence != sequence {
                return Err(refused(
                    &chunk.execution_id,
                    format!(
                        "sequence {} where {sequence} was due: a chunk has no gaps",
                        e.sequence
                    ),
                ));
            }
            let Some(ns) = e.timestamp.timestamp_nanos_opt() else {
                return Err(refused(
                    &chunk.execution_id,
                    format!("the time of event {sequence} is outside the nanosecond range"),
                ));
            };
            if chunk
                .timestamps_ns
                .last()
                .is_some_and(|&before| ns < before)
            {
                return Err(refused(
                    &chunk.execution_id,
                    format!("the time of event {sequence} is before the previous event's"),
                ));
            }
            chunk.timestamps_ns.push(ns);
            chunk.events.push(e.event);
        }
        Ok(chunk)
    }

    /// The sequence of the chunk's last event.
    pub(crate) fn last_sequence(&self) -> u64 {
        self.first_sequence + self.timestamps_ns.len() as u64 - 1
    }

    /// The time of the chunk's last (newest) event, in nanoseconds.
    #[cfg(feature = "postgres")]
    pub(crate) fn last_timestamp_ns(&self) -> i64 {
        self.timestamps_ns.last().copied().unwrap_or(i64::MIN)
    }

    /// The time of the chunk's first event, in nanoseconds.
    pub(crate) fn first_timestamp_ns(&self) -> i64 {
        self.timestamps_ns.first().copied().unwrap_or(i64::MIN)
    }
}

/// Whether a sequence is beyond what PostgreSQL's `bigint` holds (the same limit on
/// both backends, so that a store can always move between them).
fn too_big(sequence: u64) -> bool {
    i64::try_from(sequence).is_err()
}

/// The error for a chunk refused before anything was written.
pub(crate) fn refused(execution_id: &ExecutionId, why: String) -> Error {
    Error::InvalidArgument(format!(
        "import into execution {execution_id}: {why}; nothing was written"
    ))
}

/// The error for a chunk of `execution_id` that starts at `first` while the execution
/// continues at `next`.
pub(crate) fn not_next(execution_id: &ExecutionId, next: u64, first: u64) -> Error {
    refused(
        execution_id,
        format!("the execution continues at sequence {next}, the chunk starts at {first}"),
    )
}

/// The error for a chunk whose first event is timed before the execution's last
/// stored event (at `last_ns`).
pub(crate) fn earlier_than_last(chunk: &Chunk, last_ns: i64) -> Error {
    refused(
        &chunk.execution_id,
        format!(
            "event {} is timed {} ns, before the last stored event's {last_ns} ns",
            chunk.first_sequence,
            chunk.first_timestamp_ns()
        ),
    )
}

impl LogStore {
    /// Stores `events`, consecutive events of one execution, with their own sequences
    /// and timestamps, all-or-nothing and durably; returns the last sequence stored.
    /// The first must be the execution's next sequence (1 for a new execution), else
    /// nothing is written ([`Error::InvalidArgument`]); see the `import.rs` docs.
    /// The migration path of `execlog migrate`, not part of the contract.
    #[doc(hidden)]
    pub fn import_blocking(&self, events: Vec<StoredEvent>) -> Result<u64> {
        let chunk = Chunk::new(events)?;
        self.check_writable_index()?;
        let last_sequence = chunk.last_sequence();
        let previous = chunk.first_sequence - 1;
        if previous > 0 && self.get_latest_sequence_blocking(&chunk.execution_id)? == Some(previous)
        {
            // Only the time of the event the chunk continues is checked here; whether
            // the chunk continues it is decided again under the store lock.
            let last = self.read_range_blocking(&chunk.execution_id, previous - 1, 1)?;
            let last_ns = last.first().and_then(|e| e.timestamp.timestamp_nanos_opt());
            if let Some(last_ns) = last_ns.filter(|&ns| ns > chunk.first_timestamp_ns()) {
                return Err(earlier_than_last(&chunk, last_ns));
            }
        }
        let Chunk {
            execution_id,
            tenant_id,
            first_sequence,
            timestamps_ns,
            events,
        } = chunk;
        let given = Given {
            first_sequence,
            timestamps_ns: &timestamps_ns,
        };
        let _appending = Appending::start(&self.shared().queue_bound);
        let (_, ticket) = self.submit_blocking(&execution_id, &tenant_id, events, Some(given))?;
        ticket.wait()?;
        Ok(last_sequence)
    }

    /// Every execution with at least one durable event, with its latest sequence, oldest
    /// first by creation (the order `list_executions` reverses): what a migration
    /// copies, in the order that keeps that listing the same in the destination.
    #[doc(hidden)]
    pub fn all_executions_blocking(&self) -> Result<Vec<(ExecutionId, u64)>> {
        self.check_open()?;
        self.execution_ids()
    }
}
