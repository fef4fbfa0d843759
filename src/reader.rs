//! The read path: index -> entry point -> walk back along `prev` -> decode.
//!
//! A read of sequences `(after, to]` takes a snapshot of the execution's durable cursor
//! and nearest sparse entry under the store lock, then releases it and works on mapped
//! bytes only. It walks back from the entry point (at most `stride - 1` records above
//! `to`, header only), then through the wanted records, decoding each, and returns them
//! in sequence order. It never touches another execution's records, and never reads
//! beyond the durable end, so it sees only acknowledged events.
//!
//! Paired assertion across the disk boundary: every record read is CRC-checked again
//! and must carry the execution number and sequence the chain predicts. A record that
//! overlaps a range the scrubber found damaged (`scrub.rs`) is refused before it is
//! decoded, even if its bytes check now.
//!
//! While a checkpoint open trusted is being verified (`deferred_verification.rs`), an
//! execution's first read also checks that its first record declares the id and
//! tenant the index gives it: a wrong index then makes reads fail, never serve another
//! execution's events.

use chrono::{DateTime, Utc};

use crate::codec;
use crate::error::{Error, Result};
use crate::event::StoredEvent;
use crate::ids::{ExecutionId, TenantId};
use crate::index::{EntryPoint, ExecNo, Index};
use crate::io::Mapped;
use crate::record::{self, Decoded, HEADER_LEN, Pos};
use crate::segment::{self, SEGMENT_HEADER_LEN};
use crate::state::Shared;

/// Events of `execution_id` with sequence in `(after, after + limit]`, in order.
pub(crate) fn read(
    shared: &Shared,
    execution_id: &ExecutionId,
    after: u64,
    limit: usize,
) -> Result<Vec<StoredEvent>> {
    shared.verification.check()?;
    if let Some(events) = read_before_decode(shared, execution_id, after, limit) {
        return Ok(events);
    }
    check_owner(shared, execution_id)?;
    let (chain, to, tenant_id) = {
        let state = shared.index()?;
        let Some((no, e)) = state.index.visible(execution_id) else {
            return Ok(Vec::new());
        };
        if e.durable_seq <= after || limit == 0 {
            return Ok(Vec::new());
        }
        let to = last_wanted(e.durable_seq, after, limit);
        let Some(chain) = Chain::of(&state.index, no, to) else {
            return Err(Error::Internal("the index lost a fork's source".into()));
        };
        (chain, to, state.index.tenant_of(e).clone())
    };
    chain.events(shared, (after, to), execution_id, &tenant_id)
}

/// The read, served from the checkpoint's directory while the index open left to
/// decode is not decoded yet (`lazy_index.rs`); `None` if the directory does not prove
/// the execution, or anything on the way fails: the read then waits for the index.
fn read_before_decode(
    shared: &Shared,
    execution_id: &ExecutionId,
    after: u64,
    limit: usize,
) -> Option<Vec<StoredEvent>> {
    let found = shared.lazy.as_ref()?.find_pending(execution_id.as_str())?;
    if found.durable_seq <= after || limit == 0 {
        return Some(Vec::new());
    }
    let (id, tenant) = declared(shared, found.no, found.first()?).ok()??;
    if id != execution_id.as_str() {
        return None;
    }
    let to = last_wanted(found.durable_seq, after, limit);
    let (sequence, pos) = found.entry_point(to);
    let chain = Chain {
        entry: EntryPoint { sequence, pos },
        owners: vec![(1, found.no)],
    };
    chain
        .events(shared, (after, to), execution_id, &TenantId::from(tenant))
        .ok()
}

/// `execution_id`'s latest durable sequence, from the checkpoint's directory while the
/// index open left to decode is not decoded yet; `None` if the directory does not
/// prove the execution.
pub(crate) fn latest_before_decode(shared: &Shared, execution_id: &ExecutionId) -> Option<u64> {
    let lazy = shared.lazy.as_ref()?;
    lazy.find_pending(execution_id.as_str())
        .map(|found| found.durable_seq)
}

/// The last sequence a read of `limit` events after `after` wants, of `durable_seq`.
fn last_wanted(durable_seq: u64, after: u64, limit: usize) -> u64 {
    durable_seq.min(after.saturating_add(u64::try_from(limit).unwrap_or(u64::MAX)))
}

/// While the checkpoint open trusted is being verified, checks once per execution that
/// `execution_id`'s first record declares it and the tenant the index gives it; a
/// fork's read waits for the verdict instead (its declaration is not on its chain).
fn check_owner(shared: &Shared, execution_id: &ExecutionId) -> Result<()> {
    if !shared.verification.is_pending() {
        return Ok(());
    }
    let (no, first, tenant, fork) = {
        let state = shared.index()?;
        let Some((no, e)) = state.index.visible(execution_id) else {
            return Ok(());
        };
        if !shared.verification.owner_unchecked(no) {
            return Ok(());
        }
        let fork = state.index.base(no).is_some();
        (
            no,
            e.sparse().get(0),
            state.index.tenant_of(e).clone(),
            fork,
        )
    };
    if fork {
        return shared.verification.wait_verified();
    }
    let Some(first) = first else {
        return Err(Error::Internal(
            "an execution without an entry point".into(),
        ));
    };
    match declared(shared, no, first)? {
        Some((id, t)) if id == execution_id.as_str() && t == tenant.as_str() => {
            shared.verification.owner_checked(no);
            Ok(())
        }
        _ => Err(Error::corrupt(
            first.segment,
            u64::from(first.offset),
            "the execution's first record does not declare the id and tenant the index gives it",
        )),
    }
}

/// The execution id and tenant that the record at `first`, sequence 1 of execution
/// `no`, declares; `None` if it is not such a record.
fn declared(shared: &Shared, no: ExecNo, first: Pos) -> Result<Option<(String, String)>> {
    let mut cursor = Cursor::default();
    let version =
        segment::version_of(cursor.bytes(shared, first.segment, SEGMENT_HEADER_LEN as u64)?);
    let (header, body) = cursor.record(shared, first)?;
    Ok((header.execution == u64::from(no)
        && header.sequence == 1
        && header.kind == record::Kind::Event)
        .then(|| codec::record_prefix(body, 1, true, version).ok())
        .flatten()
        .and_then(|prefix| prefix.declaration)
        .map(|d| (d.execution_id.to_string(), d.tenant_id.to_string())))
}

/// The position of the record of durable `sequence` of execution `no` (a fork's
/// shared sequences are its source's records).
pub(crate) fn position_of(shared: &Shared, no: ExecNo, sequence: u64) -> Result<Pos> {
    let chain = {
        let state = shared.index()?;
        Chain::of(&state.index, no, sequence)
            .ok_or_else(|| Error::Internal("the index lost an execution".into()))?
    };
    let mut found = None;
    chain.walk_back(shared, (sequence - 1, sequence), |s, _, _, at| {
        if s == sequence {
            found = Some(at);
        }
        Ok(())
    })?;
    found.ok_or_else(|| Error::Internal("the chain walk missed its sequence".into()))
}

/// A snapshot, taken under the lock, of what a walk along one execution's chain needs.
struct Chain {
    entry: EntryPoint,
    /// `(first sequence, execution)` whose records hold the sequences from there up,
    /// highest first (`Index::owners`).
    owners: Vec<(u64, ExecNo)>,
}

impl Chain {
    /// The chain of execution `no` from its entry point at or after `sequence`.
    fn of(index: &Index, no: ExecNo, sequence: u64) -> Option<Chain> {
        // From an entry point in a source's records, the walk follows the source's
        // chain (its later sequences are not the fork's).
        let holder = index.holder(no, sequence);
        Some(Chain {
            entry: index.entry_point(holder, sequence)?,
            owners: index.owners(holder),
        })
    }

    /// The execution whose record holds `sequence`.
    fn owner(&self, sequence: u64) -> Option<ExecNo> {
        self.owners
            .iter()
            .find(|(first, _)| sequence >= *first)
            .map(|&(_, no)| no)
    }

    /// The events of sequences `(after, to]` of `execution_id` (of `tenant_id`), in
    /// order.
    fn events(
        &self,
        shared: &Shared,
        (after, to): (u64, u64),
        execution_id: &ExecutionId,
        tenant_id: &TenantId,
    ) -> Result<Vec<StoredEvent>> {
        // Bounded: the sequence comes from the index, the events from the records.
        let wanted = usize::try_from(to - after).unwrap_or(usize::MAX);
        let mut events = Vec::with_capacity(wanted.min(MAX_PREALLOCATED_EVENTS));
        self.walk_back(shared, (after, to), |sequence, header, body, at| {
            if sequence <= to {
                let mismatch = |why: &str| Error::corrupt(at.segment, u64::from(at.offset), why);
                let (_, event) = codec::decode_body(body).map_err(|why| mismatch(&why))?;
                events.push(StoredEvent {
                    sequence,
                    execution_id: execution_id.clone(),
                    tenant_id: tenant_id.clone(),
                    event,
                    timestamp: timestamp(header.timestamp_ns),
                });
            }
            Ok(())
        })?;
        events.reverse();
        debug_assert!(
            events
                .windows(2)
                .all(|w| w[0].sequence + 1 == w[1].sequence)
        );
        Ok(events)
    }

    /// Walks back from the entry point through every sequence above `after`, giving
    /// each record of a sequence up to `to`, CRC-checked and checked to be the one the
    /// chain predicts, to `visit` (highest sequence first). Above `to` only the links
    /// are followed, so those records may be erased ones (a deleted source's events
    /// beyond what its fork shares, `erasure.rs`).
    fn walk_back(
        &self,
        shared: &Shared,
        (after, to): (u64, u64),
        mut visit: impl FnMut(u64, &record::Header, &[u8], Pos) -> Result<()>,
    ) -> Result<()> {
        let mut cursor = Cursor::default();
        let mut sequence = self.entry.sequence;
        let mut pos = Some(self.entry.pos);
        while sequence > after {
            let Some(at) = pos else {
                return Err(Error::corrupt(
                    self.entry.pos.segment,
                    u64::from(self.entry.pos.offset),
                    "execution chain ends before sequence 1",
                ));
            };
            let (header, body) = cursor.record(shared, at)?;
            let owner = self.owner(sequence).map(u64::from);
            let passing = sequence > to && header.kind == record::Kind::Erased;
            if owner != Some(header.execution)
                || header.sequence != sequence
                || (header.kind != record::Kind::Event && !passing)
            {
                return Err(Error::corrupt(
                    at.segment,
                    u64::from(at.offset),
                    "record is not the one the execution chain points to",
                ));
            }
            if sequence <= to {
                visit(sequence, &header, body, at)?;
            }
            pos = header.prev;
            sequence -= 1;
        }
        Ok(())
    }
}

/// One atomic append as stored: what an idempotent retry is compared with.
pub(crate) struct StoredBatch {
    pub(crate) first_sequence: u64,
    /// The idempotency key in its first record, if any.
    pub(crate) key: Option<String>,
    /// Each event's bytes, as `codec::encode_event` wrote them.
    pub(crate) events: Vec<Vec<u8>>,
}

/// The durable batch of execution `no` whose first record is at `pos`. Its records are
/// contiguous in one segment (`record.rs`); each is CRC-checked and must belong to
/// `no`, continue the sequence and count the batch down.
pub(crate) fn batch_at(shared: &Shared, no: ExecNo, pos: Pos) -> Result<StoredBatch> {
    let mut cursor = Cursor::default();
    let mut at = pos;
    let mut batch: Option<StoredBatch> = None;
    loop {
        let (header, body) = cursor.record(shared, at)?;
        let corrupt = |why: &str| Error::corrupt(at.segment, u64::from(at.offset), why);
        let (prefix, event) = codec::split_body(body).map_err(|why| corrupt(&why))?;
        // A retry compares bytes; decoding them too makes damage an error, not a
        // conflict.
        codec::decode_event(event).map_err(|why| corrupt(&why))?;
        let expected_sequence = batch.as_ref().map_or(header.sequence, |b| {
            b.first_sequence + b.events.len() as u64
        });
        if header.execution != u64::from(no) || header.sequence != expected_sequence {
            return Err(corrupt("record is not the next one of the keyed append"));
        }
        let batch = batch.get_or_insert_with(|| StoredBatch {
            first_sequence: header.sequence,
            key: prefix.key,
            events: Vec::with_capacity(
                (header.batch_remaining as usize + 1).min(MAX_PREALLOCATED_EVENTS),
            ),
        });
        batch.events.push(event.to_vec());
        if header.batch_remaining == 0 {
            break;
        }
        let len = record::framed_len(body.len());
        at.offset = u32::try_from(len)
            .ok()
            .and_then(|len| at.offset.checked_add(len))
            .ok_or_else(|| corrupt("batch runs past the end of its segment"))?;
    }
    batch.ok_or_else(|| Error::corrupt(pos.segment, u64::from(pos.offset), "no batch"))
}

/// The timestamps of the durable records at `positions`, CRC-checked, in order.
pub(crate) fn timestamps_at(shared: &Shared, positions: &[Pos]) -> Result<Vec<i64>> {
    let mut cursor = Cursor::default();
    positions
        .iter()
        .map(|&pos| Ok(cursor.record(shared, pos)?.0.timestamp_ns))
        .collect()
}

/// Most events a read reserves room for before it has read them.
const MAX_PREALLOCATED_EVENTS: usize = 4096;

/// Converts stored nanoseconds to a UTC time.
pub(crate) fn timestamp(ns: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(ns)
}

/// The current segment view of a walk, kept while consecutive records share it.
#[derive(Default)]
struct Cursor {
    segment: Option<u32>,
    view: Option<Mapped>,
}

impl Cursor {
    fn bytes(&mut self, shared: &Shared, segment: u32, end: u64) -> Result<&[u8]> {
        let covered = match (&self.view, self.segment) {
            (Some(v), Some(s)) => s == segment && v.as_ref().as_ref().len() as u64 >= end,
            _ => false,
        };
        if !covered {
            self.view = Some(shared.segments.view(segment, end)?);
            self.segment = Some(segment);
        }
        Ok(self.view.as_ref().map_or(&[][..], |v| v.as_ref().as_ref()))
    }

    /// The record at `pos`, CRC-checked.
    fn record(&mut self, shared: &Shared, pos: Pos) -> Result<(record::Header, &[u8])> {
        let offset = u64::from(pos.offset);
        let corrupt = |why: String| Error::corrupt(pos.segment, offset, why);
        let head_end = offset + HEADER_LEN as u64;
        let head = self
            .bytes(shared, pos.segment, head_end)?
            .get(pos.offset as usize..head_end as usize)
            .ok_or_else(|| corrupt("record header outside its segment".into()))?;
        let mut len = [0u8; 4];
        len.copy_from_slice(&head[record::BODY_LEN_OFFSET..record::BODY_LEN_OFFSET + 4]);
        let end = offset + record::framed_len(u32::from_le_bytes(len) as usize) as u64;
        shared.scrub.refuse(pos.segment, offset, end)?;
        let bytes = self.bytes(shared, pos.segment, end)?;
        let slice = bytes.get(pos.offset as usize..).unwrap_or_default();
        match record::decode(slice) {
            Decoded::Record { header, body, .. } => Ok((header, body)),
            Decoded::Empty => Err(corrupt("no record where the index points".into())),
            Decoded::Invalid(why) => Err(corrupt(why.to_string())),
        }
    }
}
