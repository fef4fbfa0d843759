//! Rebuilding the index from records, batch by batch: what recovery does with every
//! record it scans, and what a reader in another process does with the records a
//! writer publishes after it opened. An open that leaves the index to decode scans the
//! tail after its checkpoint into nothing ([`HeldTail`]: batches and the torn tail
//! checked, chains not), and the decode scans it again into the decoded index.
//!
//! Invariants: a batch is applied only when its last record (`batch_remaining == 0`)
//! arrives; every record must continue its execution's chain (sequence + 1, `prev`
//! pointing at the previous record) and an execution is declared once, in creation
//! order. Anything else is `Error::Corrupt` with segment and offset.

use std::collections::HashSet;

use crate::codec;
use crate::deletion;
use crate::erasure;
use crate::error::{Error, Result};
use crate::idempotency::KeyTables;
use crate::ids::TenantId;
use crate::index::{ExecNo, Index, Life};
use crate::record::{Header, Kind, Pos};
use crate::scan::{Scanner, Step};
use crate::segment;

/// A record waiting for the rest of its batch.
pub(crate) struct Waiting {
    header: Header,
    pub(crate) pos: Pos,
    tenant: Option<TenantId>,
    execution_id: Option<String>,
    /// The idempotency key, in the first record of a keyed append.
    key: Option<String>,
    /// For an erased span: its last sequence and that record's position.
    span_end: Option<(u64, Pos)>,
}

/// Rebuilds the index from the records, batch by batch.
pub(crate) struct Rebuild {
    pub(crate) index: Index,
    pub(crate) keys: KeyTables,
    /// Format version of the segment being scanned.
    pub(crate) segment_version: u32,
    pub(crate) batch: Vec<Waiting>,
    pub(crate) batch_start: Option<u64>,
    pub(crate) last_timestamp_ns: i64,
    pub(crate) records: u64,
    /// The segment and commit group start of the last record kept (seal included).
    pub(crate) tail: Option<(u32, u32)>,
    /// `Some` while `index` is an empty stand-in for a checkpoint's index still to
    /// decode (`lazy_index.rs`): the tail after the checkpoint is checked as far as it
    /// can be without the index (records, batches, torn tail), applied to nothing, and
    /// held for the decode to scan again.
    pub(crate) held: Option<HeldTail>,
}

/// What a scan into the stand-in index of a checkpoint still to decode learned of the
/// tail after it. The records stay in the segments: the decode scans them again into
/// the decoded index ([`Rebuild::replay`]), so holding a tail costs no memory per record.
#[derive(Debug, Default)]
pub(crate) struct HeldTail {
    /// The executions its records append to (declarations included).
    pub(crate) touched: HashSet<u64>,
    /// Whether it holds a tombstone or a fork, which change what the checkpoint says
    /// of executions it does not append to.
    pub(crate) changes_others: bool,
    /// The executions it declares, forks included.
    pub(crate) declared: u64,
    /// Where it lies: (segment, from, to), set once the scan has found its ends.
    pub(crate) ranges: Vec<(u32, u64, u64)>,
    /// The sidecars open took instead of scanning their segments: the decode checks
    /// each against its segment before it scans the tail (`sidecar::check_taken`).
    pub(crate) sidecars: Vec<crate::sidecar::Summary>,
}

impl Rebuild {
    /// Continues from `index` (empty, or restored from a checkpoint).
    pub(crate) fn resume(index: Index, keys: KeyTables, last_timestamp_ns: i64) -> Self {
        let records = index.records();
        Self {
            index,
            keys,
            segment_version: segment::FORMAT_VERSION,
            batch: Vec::new(),
            batch_start: None,
            last_timestamp_ns,
            records,
            tail: None,
            held: None,
        }
    }

    /// Scans the records of `bytes` (segment `segment`, from `from` to its end) into
    /// the index, with every check, CRCs included, of a scan at open: the decode's
    /// second scan of a tail open held ([`HeldTail`]), or (held) a sealed segment's
    /// scan for its sidecar (`sidecar.rs`). The records must reach the end of `bytes`,
    /// where they were found to end.
    pub(crate) fn replay(&mut self, segment: u32, bytes: &[u8], from: u64) -> Result<()> {
        self.segment_version = segment::version_of(bytes);
        let from = usize::try_from(from).unwrap_or(usize::MAX);
        for step in Scanner::new(bytes, from) {
            match step {
                Step::Record {
                    offset,
                    header,
                    body,
                } => self.add(segment, offset as u64, header, body)?,
                Step::End { offset } if offset < bytes.len() => {
                    return Err(Error::corrupt(
                        segment,
                        offset as u64,
                        "the records end here, before where they were found to end: the \
                         segment changed",
                    ));
                }
                Step::End { .. } => break,
                Step::Invalid { offset, why } => {
                    return Err(Error::corrupt(segment, offset as u64, why.to_string()));
                }
            }
        }
        Ok(())
    }

    /// Takes one valid record; applies its batch once the batch is complete.
    pub(crate) fn add(
        &mut self,
        segment: u32,
        offset: u64,
        header: Header,
        body: &[u8],
    ) -> Result<()> {
        let corrupt = |why: &str| Error::corrupt(segment, offset, why);
        if header.kind == Kind::Seal {
            if !self.batch.is_empty() {
                return Err(corrupt("seal inside a batch"));
            }
            self.tail = Some((segment, header.group_start));
            // A seal's time was handed out too: later appends are not stamped before it.
            self.last_timestamp_ns = self.last_timestamp_ns.max(header.timestamp_ns);
            return Ok(());
        }
        match header.kind {
            Kind::Delete => return self.delete(segment, offset, &header, body),
            Kind::Fork => return self.fork(segment, offset, &header, body),
            Kind::Event | Kind::Erased | Kind::ErasedSpan | Kind::Seal => {}
        }
        if let Some(last) = self.batch.last() {
            if header.batch_remaining.checked_add(1) != Some(last.header.batch_remaining)
                || header.execution != last.header.execution
            {
                return Err(corrupt("record breaks the batch before it"));
            }
        } else {
            self.batch_start = Some(offset);
        }
        let (span_end, body) = match header.kind {
            Kind::ErasedSpan => {
                if !self.batch.is_empty() {
                    return Err(corrupt("erased span inside a batch"));
                }
                let at = Pos {
                    segment,
                    offset: u32::try_from(offset).map_err(|_| corrupt("offset beyond 4 GiB"))?,
                };
                let (last, last_pos, rest) =
                    erasure::decode_span(&header, at, body).map_err(|why| corrupt(&why))?;
                (Some((last, last_pos)), rest)
            }
            _ => (None, body),
        };
        let prefix = codec::record_prefix(
            body,
            header.sequence,
            self.batch.is_empty(),
            self.segment_version,
        )
        .map_err(|why| Error::corrupt(segment, offset, why))?;
        let (tenant, execution_id) = match prefix.declaration {
            Some(d) => (Some(TenantId::from(d.tenant_id)), Some(d.execution_id)),
            None => (None, None),
        };
        let pos = Pos {
            segment,
            offset: u32::try_from(offset).map_err(|_| corrupt("offset beyond 4 GiB"))?,
        };
        self.batch.push(Waiting {
            header,
            pos,
            tenant,
            execution_id,
            key: prefix.key,
            span_end,
        });
        if header.batch_remaining == 0 {
            self.apply_batch()?;
        }
        Ok(())
    }

    /// Applies a tombstone (`deletion.rs`): the executions it names are deleted from
    /// here on, their keys forgotten.
    fn delete(&mut self, segment: u32, offset: u64, header: &Header, body: &[u8]) -> Result<()> {
        let corrupt = |why: &str| Error::corrupt(segment, offset, why);
        if !self.batch.is_empty() {
            return Err(corrupt("tombstone inside a batch"));
        }
        if self.segment_version < deletion::SINCE_FORMAT_VERSION {
            return Err(corrupt(
                "tombstone in a segment of a format version without them",
            ));
        }
        match &mut self.held {
            Some(held) => held.changes_others = true,
            None => {
                let deleted =
                    deletion::replay(&mut self.index, header, body).map_err(|why| corrupt(&why))?;
                for no in deleted {
                    self.keys.forget(no);
                }
            }
        }
        self.last_timestamp_ns = self.last_timestamp_ns.max(header.timestamp_ns);
        self.tail = Some((segment, header.group_start));
        Ok(())
    }

    /// Applies a fork record (`fork.rs`): a new execution sharing its source's first
    /// events.
    fn fork(&mut self, segment: u32, offset: u64, header: &Header, body: &[u8]) -> Result<()> {
        let corrupt = |why: &str| Error::corrupt(segment, offset, why);
        if !self.batch.is_empty() {
            return Err(corrupt("fork inside a batch"));
        }
        if self.segment_version < deletion::SINCE_FORMAT_VERSION {
            return Err(corrupt(
                "fork in a segment of a format version without them",
            ));
        }
        match &mut self.held {
            Some(held) => {
                held.changes_others = true;
                held.declared += 1;
            }
            None => {
                crate::fork::replay(&mut self.index, header, body).map_err(|why| corrupt(&why))?;
            }
        }
        self.last_timestamp_ns = self.last_timestamp_ns.max(header.timestamp_ns);
        self.tail = Some((segment, header.group_start));
        Ok(())
    }

    /// The rest of an erased span whose first sequence was applied: sequences up to
    /// `last` are its own (entry points at its start), the last one at `last_pos`.
    fn apply_span(&mut self, h: Header, pos: Pos, (last, last_pos): (u64, Pos)) -> Result<()> {
        let no = u32::try_from(h.execution)
            .map_err(|_| Error::corrupt(pos.segment, u64::from(pos.offset), "unknown execution"))?;
        for sequence in h.sequence + 1..=last {
            let at = if sequence == last { last_pos } else { pos };
            self.index.reserve(no, sequence, at);
        }
        self.index.make_durable(no, last, last_pos);
        self.records += last - h.sequence;
        Ok(())
    }

    /// Files the key of a keyed append, if `key` is one.
    fn file_key(&mut self, no: ExecNo, key: Option<&str>, pos: Pos) {
        if let Some(key) = key {
            let hash = self.keys.hash(key);
            self.keys.insert(no, hash, pos);
        }
    }

    fn apply_batch(&mut self) -> Result<()> {
        if let Some(held) = &mut self.held {
            for w in self.batch.drain(..) {
                let h = w.header;
                let span = w
                    .span_end
                    .map_or(0, |(last, _)| last.saturating_sub(h.sequence));
                held.touched.insert(h.execution);
                held.declared += u64::from(w.execution_id.is_some());
                self.last_timestamp_ns = self.last_timestamp_ns.max(h.timestamp_ns);
                // Saturating: a sidecar's count (`sidecar.rs`) may come before, unchecked
                // until the decode.
                self.records = self.records.saturating_add(1 + span);
                self.tail = Some((w.pos.segment, h.group_start));
            }
            self.batch_start = None;
            return Ok(());
        }
        // Drained, not taken: the buffer keeps its capacity, so recovery does not
        // allocate once per batch (once per record for single-event appends).
        let mut batch = std::mem::take(&mut self.batch);
        for w in batch.drain(..) {
            let h = w.header;
            let corrupt = |why: &str| Error::corrupt(w.pos.segment, u64::from(w.pos.offset), why);
            if let (Some(id), Some(tenant)) = (w.execution_id, w.tenant) {
                let id = crate::ExecutionId::from(id);
                if h.execution != self.index.len() as u64 || self.index.lookup(&id).is_some() {
                    return Err(corrupt("execution declared out of order or twice"));
                }
                let no = self.index.create(id, &tenant, w.pos);
                self.index.make_durable(no, 1, w.pos);
                self.file_key(no, w.key.as_deref(), w.pos);
            } else {
                let no = u32::try_from(h.execution).map_err(|_| corrupt("unknown execution"))?;
                let Some(e) = self.index.get(no) else {
                    return Err(corrupt("record of an unknown execution"));
                };
                if e.life != Life::Live {
                    return Err(corrupt("record of a deleted execution"));
                }
                if h.sequence != e.reserved_seq + 1 || h.prev != Some(e.reserved_pos) {
                    return Err(corrupt("record does not continue its execution's chain"));
                }
                self.index.reserve(no, h.sequence, w.pos);
                self.index.make_durable(no, h.sequence, w.pos);
                self.file_key(no, w.key.as_deref(), w.pos);
            }
            if let Some((last, last_pos)) = w.span_end {
                self.apply_span(h, w.pos, (last, last_pos))?;
            }
            self.last_timestamp_ns = self.last_timestamp_ns.max(h.timestamp_ns);
            self.records += 1;
            self.tail = Some((w.pos.segment, h.group_start));
        }
        self.batch = batch;
        self.batch_start = None;
        Ok(())
    }
}
