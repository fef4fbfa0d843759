//! The append path up to the queue: validate, encode, admit, reserve, frame, hand off.
//!
//! 1. [`prepare`], outside the lock: validate ids and sizes, encode each event and the
//!    execution's declaration (the CPU-heavy part, done in parallel by concurrent
//!    callers).
//! 2. Admission, outside the lock: wait until the bytes fit under
//!    `Options::max_queued_bytes` (`queue::QueueBound`; blocking callers on a
//!    condition variable, async callers on a future).
//! 3. [`enqueue`], under the store lock: check that the store accepts writes and that
//!    the tenant owns the execution, assign sequences and a timestamp (an import,
//!    `import.rs`, brings its own: they are checked instead), reserve log
//!    space, frame the records (header, CRC), update the reserved side of the index,
//!    and send the bytes to the commit thread. Nothing in this step can fail after the
//!    first mutation, so a rejected append leaves no trace (and its admission is
//!    released at once).
//! 4. The caller waits on the returned ticket (see `queue.rs`).

use crate::codec::{self, Declaration};
use crate::error::{Error, Result};
use crate::event::ExecutionEventData;
use crate::guard::{AppendOutcome, ExpectedSequence};
use crate::idempotency::Candidate;
use crate::ids::{ExecutionId, TenantId, validate_id};
use crate::index::{ExecNo, Life};
use crate::queue::{Admitted, Pending, Ticket};
use crate::reader;
use crate::record::{self, Header, Kind, Pos};
use crate::state::Shared;

/// An append validated and encoded, not yet admitted nor queued.
pub(crate) struct Prepared {
    count: usize,
    bodies: Bodies,
    /// The first record's prefix if the execution is new: its declaration (and the
    /// idempotency key, if any), encoded.
    declaration: Vec<u8>,
    /// The first record's prefix if the execution exists: the key, or nothing.
    first_existing: Vec<u8>,
    /// "No declaration", encoded, for every other record.
    absent: Vec<u8>,
    /// The idempotency key, if the append has one.
    key: Option<String>,
    /// The framed records' length if the execution is new, an upper bound otherwise:
    /// what the queue bound counts.
    queued_bytes: usize,
}

impl Prepared {
    /// The bytes this append occupies in the queue to the commit thread.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }
}

/// Validates and encodes an append. Changes nothing.
pub(crate) fn prepare(
    shared: &Shared,
    execution_id: &ExecutionId,
    tenant_id: &TenantId,
    events: Vec<ExecutionEventData>,
) -> Result<Prepared> {
    prepare_keyed(shared, (execution_id, tenant_id), events, None)
}

/// [`prepare`] for an append with an idempotency key (already validated), which goes
/// into its first record.
pub(crate) fn prepare_keyed(
    shared: &Shared,
    (execution_id, tenant_id): (&ExecutionId, &TenantId),
    events: Vec<ExecutionEventData>,
    key: Option<String>,
) -> Result<Prepared> {
    validate_id("execution", execution_id.as_str())?;
    validate_id("tenant", tenant_id.as_str())?;
    if events.is_empty() {
        return Err(Error::InvalidArgument(
            "an append needs at least one event; nothing was stored".into(),
        ));
    }
    if shared.read_only {
        return Err(Error::InvalidArgument(
            "the store was opened read-only; open it with LogStore::open to append".into(),
        ));
    }
    let count = events.len();
    let options = &shared.options;
    let bodies = encode_all(options.max_event_bytes, options.max_batch_bytes, events)?;
    let mut declaration = Vec::new();
    codec::encode_prefix(
        Some(&Declaration {
            execution_id: execution_id.as_str().to_owned(),
            tenant_id: tenant_id.as_str().to_owned(),
        }),
        key.as_deref(),
        &mut declaration,
    );
    let mut first_existing = Vec::new();
    codec::encode_prefix(None, key.as_deref(), &mut first_existing);
    let mut absent = Vec::new();
    codec::encode_declaration(None, &mut absent);
    // The declaration is at least as long as the other first prefix: an upper bound.
    let queued_bytes = framed_total(&bodies, &declaration, &absent);
    Ok(Prepared {
        count,
        bodies,
        declaration,
        first_existing,
        absent,
        key,
        queued_bytes,
    })
}

/// The framed length of the records: `first_declaration` in the first, `absent` in
/// the others.
fn framed_total(bodies: &Bodies, first_declaration: &[u8], absent: &[u8]) -> usize {
    bodies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let decl = if i == 0 { first_declaration } else { absent };
            record::framed_len(decl.len() + b.len())
        })
        .sum()
}

/// Sequences and timestamps an import (`import.rs`) brings along instead of having
/// them assigned: the batch must continue its execution at `first_sequence`, and its
/// records carry `timestamps_ns`, one per event.
pub(crate) struct Given<'a> {
    pub(crate) first_sequence: u64,
    pub(crate) timestamps_ns: &'a [i64],
}

/// Queues an admitted append as one atomic batch; returns the first sequence and the
/// ticket that completes once it is durable. On error nothing changed and `admitted`
/// is released.
pub(crate) fn enqueue(
    shared: &Shared,
    execution_id: &ExecutionId,
    tenant_id: &TenantId,
    prepared: Prepared,
    admitted: Admitted,
) -> Result<(u64, Ticket)> {
    enqueue_as(shared, (execution_id, tenant_id), prepared, admitted, None)
}

/// [`enqueue`], with the sequences and timestamps `given` when it is `Some`.
pub(crate) fn enqueue_as(
    shared: &Shared,
    ids: (&ExecutionId, &TenantId),
    prepared: Prepared,
    admitted: Admitted,
    given: Option<Given<'_>>,
) -> Result<(u64, Ticket)> {
    match enqueue_guarded(shared, ids, &prepared, admitted, given, &Guard::default())? {
        Enqueued::Queued { first, ticket, .. } => Ok((first, ticket)),
        // An append without a key has no candidates.
        Enqueued::Candidates { .. } => Err(Error::Internal(
            "an unkeyed append met an idempotency key".into(),
        )),
    }
}

/// What a guarded append asks of its execution (`guard.rs`).
#[derive(Default)]
pub(crate) struct Guard<'a> {
    pub(crate) expected: ExpectedSequence,
    /// Keyed appends already read and found to hold another key with the same hash.
    pub(crate) ruled_out: &'a [Pos],
}

/// What [`enqueue_guarded`] did.
pub(crate) enum Enqueued {
    /// The append is queued: sequences `first..=last`, durable when `ticket` completes.
    Queued {
        first: u64,
        last: u64,
        ticket: Ticket,
    },
    /// Nothing was queued: execution `execution` holds keyed appends whose key may be
    /// this append's. The caller reads them (`verify`) and either answers the retry or
    /// tries again with them ruled out. `admitted` is handed back for that.
    Candidates {
        execution: ExecNo,
        candidates: Vec<Candidate>,
        admitted: Admitted,
    },
}

/// Queues an admitted append as one atomic batch if its tenant, key and expected
/// sequence allow it (in that order, `guard.rs`); returns the sequences and the ticket
/// that completes once it is durable. On error nothing changed and `admitted` is
/// released.
pub(crate) fn enqueue_guarded(
    shared: &Shared,
    (execution_id, tenant_id): (&ExecutionId, &TenantId),
    prepared: &Prepared,
    admitted: Admitted,
    given: Option<Given<'_>>,
    guard: &Guard<'_>,
) -> Result<Enqueued> {
    let Prepared {
        count,
        bodies,
        declaration,
        first_existing,
        absent,
        key,
        ..
    } = prepared;
    let count = *count;
    let mut state = shared.state.lock();
    let state = &mut *state;
    let writer = &mut state.writer;
    writer.check_open()?;
    let existing = state.index.lookup(execution_id);
    let key_hash = key.as_deref().map(|k| state.keys.hash(k));
    let (execution, first_sequence, mut prev, first_prefix) = match existing {
        Some(no) => {
            let Some(e) = state.index.get(no) else {
                return Err(Error::Internal("the index lost an execution".into()));
            };
            if e.life != Life::Live {
                return Err(Error::Deleted);
            }
            if state.index.tenant_of(e) != tenant_id {
                return Err(Error::TenantMismatch {
                    execution_id: execution_id.to_string(),
                    given: tenant_id.to_string(),
                });
            }
            if let Some(hash) = key_hash {
                let candidates = state.keys.candidates(no, hash, guard.ruled_out);
                if !candidates.is_empty() {
                    return Ok(Enqueued::Candidates {
                        execution: no,
                        candidates,
                        admitted,
                    });
                }
            }
            guard.expected.check(Some(e.reserved_seq))?;
            (no, e.reserved_seq + 1, Some(e.reserved_pos), first_existing)
        }
        None => {
            guard.expected.check(None)?;
            let Some(no) = state.index.next_exec_no() else {
                return Err(Error::TooLarge {
                    what: "executions in one store",
                    size: state.index.len() as u64 + 1,
                    limit: u64::from(u32::MAX),
                });
            };
            (no, 1, None, declaration)
        }
    };

    debug_assert!(
        given
            .as_ref()
            .is_none_or(|g| g.timestamps_ns.len() == count)
    );
    if let Some(g) = &given
        && g.first_sequence != first_sequence
    {
        return Err(crate::import::not_next(
            execution_id,
            first_sequence,
            g.first_sequence,
        ));
    }

    let total = framed_total(bodies, first_prefix, absent);
    let reservation = writer.reserve(total as u64, shared.options.segment_size_bytes);
    // An import keeps its events' times, and the store's clock moves up to the newest
    // of them: later appends to the same execution are not stamped before its last
    // imported event, and the clock agrees with what recovery derives from the
    // records (the newest timestamp of any), so a checkpoint written at close passes
    // `checkpoint_walk::check_records`.
    let timestamp_ns = match &given {
        None => writer.next_timestamp_ns(),
        Some(g) => {
            let newest = g.timestamps_ns.iter().copied().max().unwrap_or(i64::MIN);
            writer.last_timestamp_ns = writer.last_timestamp_ns.max(newest);
            newest
        }
    };

    let first_pos = Pos {
        segment: reservation.segment,
        offset: reservation.offset,
    };
    let mut bytes = Vec::with_capacity(total);
    let mut last_pos = first_pos;
    for (i, body) in bodies.iter().enumerate() {
        let pos = Pos {
            segment: reservation.segment,
            offset: reservation.offset + bytes.len() as u32,
        };
        let sequence = first_sequence + i as u64;
        let header = Header {
            kind: Kind::Event,
            // Known only to the commit thread, which stamps it (record::stamp_group).
            group_start: 0,
            execution: u64::from(execution),
            sequence,
            timestamp_ns: given
                .as_ref()
                .and_then(|g| g.timestamps_ns.get(i).copied())
                .unwrap_or(timestamp_ns),
            prev,
            batch_remaining: (count - 1 - i) as u32,
        };
        let prefix = if i == 0 { first_prefix } else { absent };
        record::encode_unsealed(&header, &[prefix, body], &mut bytes);
        if sequence == 1 {
            state.index.create(execution_id.clone(), tenant_id, pos);
        } else {
            state.index.reserve(execution, sequence, pos);
        }
        prev = Some(pos);
        last_pos = pos;
    }
    debug_assert_eq!(bytes.len(), total);

    let ticket = Ticket::default();
    if let Some(hash) = key_hash {
        state
            .keys
            .insert_in_flight(execution, hash, first_pos, ticket.clone());
    }
    let last_sequence = first_sequence + count as u64 - 1;
    let pending = Pending {
        segment: reservation.segment,
        offset: reservation.offset,
        new_segment_capacity: reservation.new_segment_capacity,
        bytes,
        execution,
        last_sequence,
        last_pos,
        deletes: Vec::new(),
        timestamp_ns,
        ticket: ticket.clone(),
        admitted,
    };
    writer.send(pending, &shared.queue_bound)?;
    Ok(Enqueued::Queued {
        first: first_sequence,
        last: last_sequence,
        ticket,
    })
}

/// What the keyed append at a candidate position says about a retry.
pub(crate) enum Verdict {
    /// It holds another key (whose hash is the same).
    OtherKey,
    /// It holds this key and these events: the retry is answered with its outcome.
    Same(AppendOutcome),
    /// It holds this key with other events.
    Conflict,
}

/// Reads the keyed append of execution `no` at `pos`, which its ticket (if any) has
/// settled, and compares it with the retry `prepared`.
pub(crate) fn verify(
    shared: &Shared,
    no: ExecNo,
    pos: Pos,
    prepared: &Prepared,
) -> Result<Verdict> {
    {
        let state = shared.state.lock();
        let durable = state
            .index
            .get(no)
            .is_some_and(|e| e.durable_seq > 0 && pos <= e.durable_pos);
        if !durable {
            // Its commit failed, which poisoned the store; nothing else un-makes an
            // append.
            return Err(match &state.writer.poisoned {
                Some(poison) => poison.error(),
                None => {
                    Error::Internal("an idempotency key's append did not become durable".into())
                }
            });
        }
    }
    let batch = reader::batch_at(shared, no, pos)?;
    if batch.key.as_deref() != prepared.key.as_deref() {
        return Ok(Verdict::OtherKey);
    }
    let same = batch.events.len() == prepared.count
        && batch
            .events
            .iter()
            .zip(prepared.bodies.iter())
            .all(|(stored, retried)| stored.as_slice() == retried);
    if !same {
        return Ok(Verdict::Conflict);
    }
    Ok(Verdict::Same(AppendOutcome {
        first_sequence: batch.first_sequence,
        last_sequence: batch.first_sequence + batch.events.len() as u64 - 1,
        replayed: true,
    }))
}

/// The encoded events of one append, back to back in one buffer: one allocation per
/// append instead of one (and its regrowths) per event, which was a fifth of the CPU
/// time of batch ingest (perf).
pub(crate) struct Bodies {
    bytes: Vec<u8>,
    /// Where each body ends in `bytes`.
    ends: Vec<usize>,
}

impl Bodies {
    /// How many events.
    #[cfg(feature = "postgres")]
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Their encoded bytes in all.
    #[cfg(feature = "postgres")]
    pub(crate) fn total_bytes(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(start, end)| self.bytes.get(start..end).unwrap_or_default())
    }
}

/// Encodes every event, enforcing the per-event and per-batch limits (shared by both
/// backends, so that both refuse the same appends with the same errors).
pub(crate) fn encode_all(
    max_event_bytes: usize,
    max_batch_bytes: usize,
    events: Vec<ExecutionEventData>,
) -> Result<Bodies> {
    let mut total = 0usize;
    let mut bodies = Bodies {
        // A guess that fits typical events without regrowing; it only grows if wrong.
        bytes: Vec::with_capacity(events.len() * 256),
        ends: Vec::with_capacity(events.len()),
    };
    for event in events {
        let start = bodies.bytes.len();
        codec::encode_event(event, &mut bodies.bytes).map_err(Error::InvalidArgument)?;
        let len = bodies.bytes.len() - start;
        if len > max_event_bytes {
            return Err(Error::TooLarge {
                what: "event, in encoded bytes (Options::max_event_bytes)",
                size: len as u64,
                limit: max_event_bytes as u64,
            });
        }
        total = total.saturating_add(record::framed_len(len));
        if total > max_batch_bytes {
            return Err(Error::TooLarge {
                what: "batch, in encoded bytes (Options::max_batch_bytes)",
                size: total as u64,
                limit: max_batch_bytes as u64,
            });
        }
        bodies.ends.push(bodies.bytes.len());
    }
    Ok(bodies)
}
