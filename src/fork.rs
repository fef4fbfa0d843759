//! Forks on the embedded engine: a new execution whose events `1..=at` are another
//! execution's, followed by its own appends (`Lifecycle::fork_execution`).
//!
//! A fork copies no event: it is one record (kind `KIND_FORK`, format version 3)
//! declaring the new execution, written through group commit like an append and
//! acknowledged once durable:
//!
//! ```text
//! header  execution  the fork's number (the next one, as a declaration takes)
//!         sequence   at: how many events it shares
//!         prev       position of the source's record of sequence `at`
//! body    0..8       the source's execution number, u64
//!         8..        the fork's id, UTF-8
//! ```
//!
//! The fork's first own record (sequence `at + 1`) points back to the source's record
//! of `at`, so one walk along `prev` reads a fork whole; reads check each record's
//! owner against the chain of bases (`reader.rs`). The index keeps one entry and one
//! [`Base`] per fork, whatever `at` is: O(1) in time and space.
//!
//! Invariants: a fork shares only durable events of a live source of the same tenant;
//! its id was never used; replay checks all of it, and the reads check what the record
//! claims about `prev`. Deleting the source keeps its forks whole: the shared records
//! stay in the log (they are needed by the forks), only the source's own listing and
//! reads go.

use crate::error::{Error, Result};
use crate::ids::{ExecutionId, validate_id};
use crate::index::{Base, ExecNo, Index, Life};
use crate::log_store::LogStore;
use crate::queue::{Admitted, Pending, Ticket};
use crate::record::{self, Header, Kind, Pos};
use crate::state::Shared;
use crate::{ParentLink, ParentRelation};

/// Where a fork comes from: [`Lifecycle::fork_point`](crate::Lifecycle::fork_point).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ForkPoint {
    /// The source execution, with the `fork` relation.
    pub parent: ParentLink,
    /// How many of the source's events the fork shares (its events `1..=at_sequence`).
    pub at_sequence: u64,
}

/// A decoded fork record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ForkRecord {
    pub(crate) no: u64,
    pub(crate) source: u64,
    pub(crate) at: u64,
    pub(crate) prev: Pos,
    pub(crate) id: String,
}

/// Decodes a fork record from its header and body.
pub(crate) fn decode(header: &Header, body: &[u8]) -> std::result::Result<ForkRecord, String> {
    let (source, id) = body.split_first_chunk::<8>().ok_or("fork body too short")?;
    let id = std::str::from_utf8(id)
        .map_err(|_| "fork id is not UTF-8".to_string())?
        .to_string();
    validate_id("fork id", &id).map_err(|e| e.to_string())?;
    Ok(ForkRecord {
        no: header.execution,
        source: u64::from_le_bytes(*source),
        at: header.sequence,
        prev: header.prev.ok_or("fork without the source's record")?,
        id,
    })
}

/// Checks a fork record against the index as replay reached it; returns its base.
pub(crate) fn check(index: &Index, fork: &ForkRecord) -> std::result::Result<Base, String> {
    if fork.no != index.len() as u64 {
        return Err("fork declared out of order".into());
    }
    let source = u32::try_from(fork.source).map_err(|_| "fork of an unknown execution")?;
    let e = index.get(source).ok_or("fork of an unknown execution")?;
    if e.life != Life::Live || e.durable_seq < fork.at || fork.at == 0 {
        return Err("fork of events its source does not hold".into());
    }
    if index.lookup(&ExecutionId::from(fork.id.as_str())).is_some() {
        return Err("fork declares an id in use".into());
    }
    Ok(Base {
        source,
        at: fork.at,
    })
}

/// Replay: applies a durable fork record to the index.
pub(crate) fn replay(
    index: &mut Index,
    header: &Header,
    body: &[u8],
) -> std::result::Result<(), String> {
    let fork = decode(header, body)?;
    let base = check(index, &fork)?;
    let no = index.create_fork(ExecutionId::from(fork.id), base, fork.prev);
    index.make_durable(no, fork.at, fork.prev);
    Ok(())
}

/// Queues the fork record of `new_id` sharing `at` events of `source`, whose record of
/// `at` is at `pos`. On error nothing changed.
fn enqueue(
    shared: &Shared,
    (source, at, pos): (ExecNo, u64, Pos),
    new_id: &ExecutionId,
    admitted: Admitted,
) -> Result<Ticket> {
    let mut state = shared.state.lock();
    let state = &mut *state;
    let writer = &mut state.writer;
    writer.check_open()?;
    let index = &mut state.index;
    if let Some(existing) = index.lookup(new_id).and_then(|no| index.get(no)) {
        return Err(match existing.life {
            Life::Live => Error::InvalidArgument(format!(
                "execution {new_id} exists already: a fork needs a new id"
            )),
            Life::Deleting | Life::Deleted => Error::Deleted,
        });
    }
    if index.get(source).is_none_or(|e| e.life != Life::Live) {
        return Err(Error::InvalidArgument(
            "the execution to fork was deleted meanwhile".into(),
        ));
    }
    let Some(no) = index.next_exec_no() else {
        return Err(Error::TooLarge {
            what: "executions in one store",
            size: index.len() as u64 + 1,
            limit: u64::from(u32::MAX),
        });
    };
    let mut body = Vec::with_capacity(8 + new_id.as_str().len());
    body.extend_from_slice(&u64::from(source).to_le_bytes());
    body.extend_from_slice(new_id.as_str().as_bytes());
    let len = record::framed_len(body.len());
    let reservation = writer.reserve(len as u64, shared.options.segment_size_bytes);
    let timestamp_ns = writer.next_timestamp_ns();
    let header = Header {
        kind: Kind::Fork,
        group_start: 0,
        execution: u64::from(no),
        sequence: at,
        timestamp_ns,
        prev: Some(pos),
        batch_remaining: 0,
    };
    let mut bytes = Vec::with_capacity(len);
    record::encode_unsealed(&header, &[&body], &mut bytes);
    index.create_fork(new_id.clone(), Base { source, at }, pos);
    let ticket = Ticket::default();
    let pending = Pending {
        segment: reservation.segment,
        offset: reservation.offset,
        new_segment_capacity: reservation.new_segment_capacity,
        bytes,
        execution: no,
        last_sequence: at,
        last_pos: pos,
        deletes: Vec::new(),
        timestamp_ns,
        ticket: ticket.clone(),
        admitted,
    };
    writer.send(pending, &shared.queue_bound)?;
    Ok(ticket)
}

/// Checks a fork request and finds the source's record of `at`: (source, position).
fn prepare(
    store: &LogStore,
    source: &ExecutionId,
    at: u64,
    new_id: &ExecutionId,
) -> Result<(ExecNo, Pos)> {
    store.check_writable_index()?;
    validate_id("execution", source.as_str())?;
    validate_id("execution", new_id.as_str())?;
    let shared = store.shared();
    if shared.read_only {
        return Err(Error::InvalidArgument(
            "the store was opened read-only; open it with LogStore::open to fork".into(),
        ));
    }
    let (no, latest) = {
        let state = shared.state.lock();
        let found = state
            .index
            .visible(source)
            .filter(|(_, e)| e.durable_seq > 0);
        let Some((no, e)) = found else {
            return Err(Error::InvalidArgument(format!(
                "no execution {source} to fork"
            )));
        };
        (no, e.durable_seq)
    };
    if at == 0 || at > latest {
        return Err(Error::InvalidArgument(format!(
            "a fork shares 1 to {latest} events of {source}, not {at}"
        )));
    }
    Ok((no, crate::reader::position_of(shared, no, at)?))
}

/// Bytes a fork record of `new_id` takes in the queue.
fn queued_bytes(new_id: &ExecutionId) -> usize {
    record::framed_len(8 + new_id.as_str().len())
}

impl LogStore {
    /// Makes `new_id` a fork of `source`: its events `1..=at_sequence` are the
    /// source's (same events, same timestamps), its own appends follow from
    /// `at_sequence + 1`. Durable when it returns; copies no event. See
    /// [`Lifecycle::fork_execution`](crate::Lifecycle::fork_execution).
    pub fn fork_execution_blocking(
        &self,
        source: &ExecutionId,
        at_sequence: u64,
        new_id: &ExecutionId,
    ) -> Result<()> {
        let (no, pos) = prepare(self, source, at_sequence, new_id)?;
        let shared = self.shared();
        let admitted = shared.queue_bound.admit_blocking(queued_bytes(new_id));
        enqueue(shared, (no, at_sequence, pos), new_id, admitted)?.wait()
    }

    /// Where `execution_id` was forked from, if it is a fork (and not deleted).
    pub fn fork_point_blocking(&self, execution_id: &ExecutionId) -> Result<Option<ForkPoint>> {
        self.check_open()?;
        validate_id("execution", execution_id.as_str())?;
        let state = self.shared().index()?;
        let index = &state.index;
        let Some((no, e)) = index
            .visible(execution_id)
            .filter(|(_, e)| e.durable_seq > 0)
        else {
            return Ok(None);
        };
        let base = index.base(no).filter(|_| e.is_fork());
        Ok(base.and_then(|b| {
            let source = index.get(b.source)?;
            Some(ForkPoint {
                parent: ParentLink {
                    execution_id: source.id.clone(),
                    step_id: None,
                    relation: ParentRelation::Fork,
                },
                at_sequence: b.at,
            })
        }))
    }

    /// [`LogStore::fork_execution_blocking`] without blocking the thread on the commit.
    pub(crate) async fn fork_async(
        &self,
        source: &ExecutionId,
        at_sequence: u64,
        new_id: &ExecutionId,
    ) -> Result<()> {
        self.shared().verification.settled().await;
        let (no, pos) = prepare(self, source, at_sequence, new_id)?;
        let shared = self.shared();
        let admitted = shared.queue_bound.admit(queued_bytes(new_id)).await;
        enqueue(shared, (no, at_sequence, pos), new_id, admitted)?
            .into_future()
            .await
    }
}
