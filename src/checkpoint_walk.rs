//! The header walk that checks a checkpoint against the records it covers: open's
//! proof (with the digests, `saved_index.rs`) that the index it would trust describes
//! the log, made before open uses the checkpoint or, after open, before anything writes.
//!
//! Invariants: the walk only reads, bounds-checked, whatever the bytes; it accepts
//! exactly the checkpoints a full scan would rebuild, record for record (chains,
//! declarations in creation order, entry points, cursors, forks, tombstones, batches,
//! timestamps); a checkpoint it refuses is never used, and the reason names the segment
//! and offset of the first record that does not fit the index, when one does not.

use crate::checkpoint::Checkpoint;
use crate::codec;
use crate::deletion::{self, Tombstone};
use crate::idempotency::KeyTables;
use crate::index::{Base, ExecNo};
use crate::record::{self, Decoded, Header, Kind, Pos};
use crate::segment::SEGMENT_HEADER_LEN;

/// Checks that `c`'s index describes the records it covers, in `maps` (the segments,
/// whose digests already matched): every covered record, in log order, continues its
/// execution's chain; each execution's first record declares its id and tenant, in
/// creation order; every entry point and durable cursor is where its record is; the
/// saved last timestamp lies between the newest event's and the newest record's;
/// batches are whole; every tenant owns
/// an execution. One walk over the record headers without CRCs (the digests covered the
/// bytes) and one declaration decode per execution.
///
/// The digests prove the segment bytes unchanged, not that the index describes them:
/// without this, an edited checkpoint with its CRC recomputed could serve one
/// execution's events under another id, accept a tenant's append to another tenant's
/// execution, or hide acknowledged events.
///
/// The same walk files the idempotency keys of the covered keyed appends in `keys`
/// (they are not in the checkpoint: the records hold them) and returns the executions
/// the covered tombstones deleted (nor are they: the checkpoint lists every execution
/// as it was written).
pub(crate) fn check_records(
    c: &Checkpoint,
    maps: &[&[u8]],
    keys: &mut KeyTables,
    stopped: &(dyn Fn() -> bool + Sync),
) -> std::result::Result<Vec<ExecNo>, String> {
    let mut walk = Walk::new(c, keys);
    for (i, (d, bytes)) in c.segments.iter().zip(maps).enumerate() {
        if stopped() {
            return Err(crate::saved_index::STOPPED.into());
        }
        let segment = u32::try_from(i + 1).map_err(|_| "too many segments".to_string())?;
        let records = bytes
            .get(..d.end as usize)
            .ok_or_else(|| format!("segment {segment}: shorter than the covered records"))?;
        walk.segment_version = crate::segment::version_of(bytes);
        let mut at = SEGMENT_HEADER_LEN;
        while at < records.len() {
            let rest = records.get(at..).unwrap_or_default();
            let Decoded::Record {
                header,
                body,
                framed_len,
            } = record::decode_trusting(rest, usize::MAX)
            else {
                return Err(format!("segment {segment}: no record at offset {at}"));
            };
            let pos = Pos {
                segment,
                offset: u32::try_from(at).map_err(|_| "offset beyond 4 GiB".to_string())?,
            };
            walk.record(pos, &header, body)
                .map_err(|why| format!("segment {segment} offset {at}: {why}"))?;
            at += framed_len;
        }
        if at != records.len() {
            return Err(format!(
                "segment {segment}: covered end is not a record boundary"
            ));
        }
    }
    walk.finish()
}

/// The state of [`check_records`]' walk: what each execution's chain reached.
struct Walk<'a> {
    checkpoint: &'a Checkpoint,
    keys: &'a mut KeyTables,
    /// Format version of the segment being walked.
    segment_version: u32,
    /// Per execution: last sequence seen and its position.
    reached: Vec<(u64, Option<Pos>)>,
    /// Executions declared so far (they are numbered in declaration order).
    declared: usize,
    /// Per execution: whether a covered tombstone deleted it.
    deleted: Vec<bool>,
    /// The open batch: execution and its last record's `batch_remaining`.
    batch: Option<(u64, u32)>,
    /// The newest timestamp of a covered event, and of any covered record (seals too).
    newest_event_ns: i64,
    newest_ns: i64,
    tenant_owns: Vec<bool>,
}

impl<'a> Walk<'a> {
    fn new(checkpoint: &'a Checkpoint, keys: &'a mut KeyTables) -> Self {
        Self {
            checkpoint,
            keys,
            segment_version: crate::segment::FORMAT_VERSION,
            reached: vec![(0, None); checkpoint.index.len()],
            declared: 0,
            deleted: vec![false; checkpoint.index.len()],
            batch: None,
            newest_event_ns: 0,
            newest_ns: 0,
            tenant_owns: vec![false; checkpoint.index.tenants().len()],
        }
    }

    fn record(&mut self, pos: Pos, h: &Header, body: &[u8]) -> std::result::Result<(), String> {
        if let Some((execution, remaining)) = self.batch
            && (!matches!(h.kind, Kind::Event | Kind::Erased)
                || h.execution != execution
                || h.batch_remaining.checked_add(1) != Some(remaining))
        {
            return Err("record breaks the batch before it".into());
        }
        self.newest_ns = self.newest_ns.max(h.timestamp_ns);
        match h.kind {
            Kind::Seal => return Ok(()),
            Kind::Delete => return self.tombstone(h, body),
            Kind::Fork => return self.fork(h, body),
            Kind::Event | Kind::Erased | Kind::ErasedSpan => {}
        }
        // An erased span stands for events `h.sequence..=last`, the last at `last_pos`.
        let ((last, last_pos), body) = match h.kind {
            Kind::ErasedSpan => {
                let (last, last_pos, rest) = crate::erasure::decode_span(h, pos, body)?;
                ((last, last_pos), rest)
            }
            _ => ((h.sequence, pos), body),
        };
        self.newest_event_ns = self.newest_event_ns.max(h.timestamp_ns);
        let first_of_batch = self.batch.is_none();
        self.batch = (h.batch_remaining > 0).then_some((h.execution, h.batch_remaining));
        let checkpoint: &'a Checkpoint = self.checkpoint;
        let index = &checkpoint.index;
        let no = usize::try_from(h.execution).unwrap_or(usize::MAX);
        let (Some(e), Some(&reached)) = (index.executions().get(no), self.reached.get(no)) else {
            return Err(format!(
                "record of execution {} not in the index",
                h.execution
            ));
        };
        if self.deleted.get(no) != Some(&false) {
            return Err("record of a deleted execution".into());
        }
        if h.sequence != reached.0 + 1 || h.prev != reached.1 {
            return Err("record does not continue its execution's chain".into());
        }
        // Most records have a plain prefix (one zero byte after sequence 1): checked
        // here, without decoding one, as `codec::record_prefix` would.
        if h.sequence == 1 || body.first() != Some(&0) {
            self.prefix(no, pos, h, body, first_of_batch)?;
        }
        let (stride, first) = (index.stride(), index.first_own(no as ExecNo));
        // A fork's own records start after what it shares (its fork record set
        // `reached` to `at`); a table that calls an ordinary execution a fork lies.
        if h.sequence < first {
            return Err(format!("{} is not the fork the index says", e.id));
        }
        for sequence in h.sequence..=last {
            let at = if sequence == last { last_pos } else { pos };
            if (sequence - first).is_multiple_of(stride) {
                let k = usize::try_from((sequence - first) / stride).unwrap_or(usize::MAX);
                if e.sparse().get(k) != Some(at) {
                    return Err(format!(
                        "entry point of {} sequence {sequence} differs",
                        e.id
                    ));
                }
            }
        }
        if let Some(reached) = self.reached.get_mut(no) {
            *reached = (last, Some(last_pos));
        }
        Ok(())
    }

    /// The prefix of the record of execution `no` at `pos`, which holds something: its
    /// key is filed, and its declaration (exactly in sequence 1) must name the
    /// execution and tenant of the index's `no`, declared next.
    fn prefix(
        &mut self,
        no: usize,
        pos: Pos,
        h: &Header,
        body: &[u8],
        first_of_batch: bool,
    ) -> std::result::Result<(), String> {
        let prefix = codec::record_prefix(body, h.sequence, first_of_batch, self.segment_version)?;
        if let Some(key) = &prefix.key {
            let hash = self.keys.hash(key);
            self.keys.insert(no as ExecNo, hash, pos);
        }
        let Some(declared) = prefix.declaration else {
            return Ok(());
        };
        let index = &self.checkpoint.index;
        let e = index
            .executions()
            .get(no)
            .ok_or_else(|| format!("record of execution {no} not in the index"))?;
        if no != self.declared
            || declared.execution_id != e.id.as_str()
            || declared.tenant_id != index.tenant_of(e).as_str()
        {
            return Err(format!(
                "the record declares another execution or tenant than the index's {}",
                e.id
            ));
        }
        self.declared += 1;
        if let Some(owns) = self.tenant_owns.get_mut(e.tenant as usize) {
            *owns = true;
        }
        Ok(())
    }

    /// A covered fork record: it must declare the next execution, as the checkpoint
    /// describes it (id, base), sharing events its live source holds by now, as
    /// `fork::check` demands of a scan.
    fn fork(&mut self, h: &Header, body: &[u8]) -> std::result::Result<(), String> {
        if self.segment_version < deletion::SINCE_FORMAT_VERSION {
            return Err("fork in a segment of a format version without them".into());
        }
        let f = crate::fork::decode(h, body)?;
        let index = &self.checkpoint.index;
        let no = usize::try_from(f.no).unwrap_or(usize::MAX);
        let source = usize::try_from(f.source).unwrap_or(usize::MAX);
        let named = index.executions().get(no).map(|e| e.id.as_str());
        let base = index.base(no as ExecNo);
        let want = Some(Base {
            source: source as ExecNo,
            at: f.at,
        });
        if no != self.declared || named != Some(f.id.as_str()) || base != want {
            return Err("fork record differs from the index".into());
        }
        let reached = self.reached.get(source).copied().unwrap_or_default();
        if source >= no || self.deleted.get(source) != Some(&false) || reached.0 < f.at {
            return Err("fork of events its source did not hold".into());
        }
        if reached.0 == f.at && reached.1 != Some(f.prev) {
            return Err("fork does not point at its source's record".into());
        }
        if let Some(r) = self.reached.get_mut(no) {
            *r = (f.at, Some(f.prev));
        }
        self.declared += 1;
        let tenant = index
            .executions()
            .get(no)
            .map_or(usize::MAX, |e| e.tenant as usize);
        if let Some(owns) = self.tenant_owns.get_mut(tenant) {
            *owns = true;
        }
        Ok(())
    }

    /// A covered tombstone: it must name live executions declared before it, as
    /// `deletion::targets` demands of a scan.
    fn tombstone(&mut self, h: &Header, body: &[u8]) -> std::result::Result<(), String> {
        if self.segment_version < deletion::SINCE_FORMAT_VERSION {
            return Err("tombstone in a segment of a format version without them".into());
        }
        let index = &self.checkpoint.index;
        let targets: Vec<usize> = match deletion::decode(h, body)? {
            Tombstone::Execution { no, id } => {
                let no = usize::try_from(no).unwrap_or(usize::MAX);
                let named = index.executions().get(no).map(|e| e.id.as_str());
                if no >= self.declared || named != Some(id.as_str()) {
                    return Err("tombstone does not match its execution".into());
                }
                vec![no]
            }
            Tombstone::Tenant { below, tenant } => {
                if below != self.declared as u64 {
                    return Err("tenant tombstone out of log order".into());
                }
                let tenant = crate::ids::TenantId::from(tenant.as_str());
                let all = index.executions_of(&tenant).iter().map(|&no| no as usize);
                all.filter(|&no| no < self.declared && self.deleted.get(no) == Some(&false))
                    .collect()
            }
        };
        if targets.is_empty() {
            return Err("tombstone of a tenant without live executions".into());
        }
        for no in targets {
            match self.deleted.get_mut(no) {
                Some(deleted @ false) => *deleted = true,
                _ => return Err("tombstone of a deleted execution".into()),
            }
        }
        Ok(())
    }

    fn finish(self) -> std::result::Result<Vec<ExecNo>, String> {
        if self.batch.is_some() {
            return Err("the covered records end inside a batch".into());
        }
        for (e, reached) in self.checkpoint.index.executions().iter().zip(&self.reached) {
            if *reached != (e.durable_seq, Some(e.durable_pos)) {
                return Err(format!(
                    "execution {}: the index says {} events, the records hold {}",
                    e.id, e.durable_seq, reached.0
                ));
            }
        }
        // The saved timestamp lies between the newest event's and the newest record's
        // (the seal's; earlier versions saved the last event's), or later appends
        // would be stamped by it: in the far future, or before existing events.
        let saved = self.checkpoint.last_timestamp_ns;
        if saved < self.newest_event_ns || saved > self.newest_ns {
            return Err(format!(
                "saved last timestamp {saved} is outside the records' {}..={}",
                self.newest_event_ns, self.newest_ns
            ));
        }
        if self.tenant_owns.contains(&false) {
            return Err("a tenant owns no execution".into());
        }
        let deleted: Vec<ExecNo> = (0..self.deleted.len())
            .filter(|&no| self.deleted[no])
            .map(|no| no as ExecNo)
            .collect();
        if self
            .checkpoint
            .deleted
            .as_ref()
            .is_some_and(|d| *d != deleted)
        {
            return Err("its list of deleted executions differs from the tombstones".into());
        }
        Ok(deleted)
    }
}
