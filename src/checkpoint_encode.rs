//! Encoding a checkpoint (layout in docs/FORMAT.md), in slices.
//!
//! Close encodes the index in one go, with the commit thread stopped. The running
//! checkpoint thread (`checkpointer.rs`) cannot hold the store's lock that long: at a
//! million executions the encode takes tens of milliseconds, and appends would wait for
//! it. It freezes the index's durable side instead (`frozen_index.rs`), then encodes a
//! slice of executions at a time, taking the lock for each slice only, so appends and
//! group commits go on between slices. Both paths produce the same bytes for the same
//! durable state: [`encode`] is the sliced encoder run in one slice.
//!
//! Invariants: what the encoder writes is the index's durable view (the frozen one
//! while frozen), never what is only reserved; the header's counts are those of that
//! view, and every execution written refers to a tenant the file lists (else
//! [`Encoder::finish`] fails and nothing is written).

use std::ops::Range;

use crate::checkpoint::{CHECKPOINT_VERSION, HEADER_LEN, MAGIC, SegmentDigest};
use crate::checkpoint_directory::{self as directory, ENTRY_LEN};
use crate::error::{Error, Result};
use crate::index::{Base, ExecNo, Index};
use crate::record::{self, Pos};

/// Executions encoded per slice by the running checkpoint thread: about a millisecond
/// of holding the lock.
pub(crate) const SLICE: usize = 4096;

/// A checkpoint being encoded: [`Encoder::begin`], [`Encoder::step`] until it says it is
/// done, [`Encoder::finish`]. Each call takes the index as it is under the caller's
/// lock; between calls the index may change only as a freeze allows.
pub(crate) struct Encoder {
    out: Vec<u8>,
    tenants: Range<usize>,
    /// Written once the tenants are.
    forks: Vec<(ExecNo, Base)>,
    executions: Range<ExecNo>,
    deleted: Vec<ExecNo>,
    /// One entry per execution written, for the directory.
    directory: Vec<directory::Entry>,
    /// Bytes of the header and digests, which the trailer's CRC covers.
    prefix: usize,
    /// The first execution the index could not describe: missing, or referring to a
    /// tenant beyond the listed ones.
    inconsistent: Option<ExecNo>,
}

impl Encoder {
    /// Starts a checkpoint of `index`'s durable view over the segments `segments`
    /// describes: writes the header, the digests, and notes the forks.
    pub(crate) fn begin(index: &Index, segments: &[SegmentDigest], last_timestamp_ns: i64) -> Self {
        let executions = index.durable_prefix();
        let tenants = index.tenants_of_prefix(executions);
        let mut forks: Vec<(ExecNo, Base)> = index
            .forks()
            .iter()
            .filter(|(no, _)| (**no as usize) < executions)
            .map(|(no, base)| (*no, *base))
            .collect();
        forks.sort_unstable_by_key(|(no, _)| *no);
        let mut out = Vec::with_capacity(HEADER_LEN + (64 + ENTRY_LEN) * executions);
        out.extend_from_slice(&MAGIC);
        put_u32(&mut out, CHECKPOINT_VERSION);
        put_u32(&mut out, index.stride() as u32);
        out.extend_from_slice(&last_timestamp_ns.to_le_bytes());
        put_u32(&mut out, segments.len() as u32);
        put_u32(&mut out, tenants as u32);
        put_u32(&mut out, executions as u32);
        put_u32(&mut out, forks.len() as u32);
        debug_assert_eq!(out.len(), HEADER_LEN);
        for d in segments {
            put_u64(&mut out, d.end);
            put_u32(&mut out, d.crc);
        }
        Self {
            prefix: out.len(),
            out,
            tenants: 0..tenants,
            forks,
            executions: 0..executions as ExecNo,
            deleted: Vec::new(),
            directory: Vec::with_capacity(executions),
            inconsistent: None,
        }
    }

    /// Encodes up to `budget` more tenants and executions; true once all are.
    pub(crate) fn step(&mut self, index: &Index, budget: usize) -> bool {
        let mut left = budget;
        while left > 0
            && let Some(t) = self.tenants.next()
        {
            let tenant = index.tenants().get(t).map_or("", |t| t.as_str());
            put_str(&mut self.out, tenant);
            left -= 1;
        }
        if self.tenants.is_empty() && !self.forks.is_empty() {
            for (no, base) in std::mem::take(&mut self.forks) {
                put_u32(&mut self.out, no);
                put_u32(&mut self.out, base.source);
                put_u64(&mut self.out, base.at);
            }
        }
        while left > 0
            && let Some(no) = self.executions.next()
        {
            self.execution(index, no);
            left -= 1;
        }
        self.tenants.is_empty() && self.executions.is_empty()
    }

    /// Writes execution `no` as the durable view has it.
    fn execution(&mut self, index: &Index, no: ExecNo) {
        let (Some(e), Some(view)) = (index.get(no), index.durable_view(no)) else {
            self.inconsistent.get_or_insert(no);
            return;
        };
        if e.tenant as usize >= self.tenants.end {
            self.inconsistent.get_or_insert(no);
        }
        let start = self.out.len();
        put_u32(&mut self.out, e.tenant);
        put_u64(&mut self.out, view.seq);
        put_pos(&mut self.out, view.pos);
        put_str(&mut self.out, e.id.as_str());
        let entries = index.entries_for(view.seq, index.base(no));
        let entries = usize::try_from(entries).unwrap_or(usize::MAX);
        for pos in e.sparse().iter().take(entries) {
            put_pos(&mut self.out, pos);
        }
        if view.deleted {
            self.deleted.push(no);
        }
        let fork = index.base(no).is_some();
        let flags =
            u32::from(fork) * directory::FORK + u32::from(view.deleted) * directory::DELETED;
        self.directory.push(directory::Entry {
            hash: directory::id_hash(e.id.as_str().as_bytes()),
            no,
            flags,
            offset: start as u64,
            crc: directory::entry_crc(no, flags, &self.out[start..]),
        });
    }

    /// The file's bytes, its CRC last. Needs no lock.
    pub(crate) fn finish(mut self) -> Result<Vec<u8>> {
        if let Some(no) = self.inconsistent {
            return Err(Error::Internal(format!(
                "checkpoint: execution {no} is missing or refers to a tenant not listed"
            )));
        }
        put_u32(&mut self.out, self.deleted.len() as u32);
        for no in std::mem::take(&mut self.deleted) {
            put_u32(&mut self.out, no);
        }
        let start = self.out.len() as u64;
        self.directory.sort_unstable();
        for entry in &self.directory {
            entry.put(&mut self.out);
        }
        put_u64(&mut self.out, start);
        let trailer = directory::trailer_crc(&self.out[..self.prefix], start);
        put_u32(&mut self.out, trailer);
        let crc = record::crc32(&self.out);
        put_u32(&mut self.out, crc);
        Ok(self.out)
    }
}

/// Encodes a checkpoint of the durable side of `index` over the segments `segments`
/// describes, which end where the index's durable cursors do, in one go. What is only
/// reserved (executions, events and tombstones still on their way to the disk) is left
/// out: executions are numbered in log order, so the durable ones are a prefix, and so
/// are their tenants (each numbered when its first execution was created).
pub(crate) fn encode(
    index: &Index,
    segments: &[SegmentDigest],
    last_timestamp_ns: i64,
) -> Result<Vec<u8>> {
    let mut encoder = Encoder::begin(index, segments, last_timestamp_ns);
    while !encoder.step(index, usize::MAX) {}
    encoder.finish()
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_pos(out: &mut Vec<u8>, pos: Pos) {
    put_u32(out, pos.segment);
    put_u32(out, pos.offset);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ExecutionId, TenantId};

    fn pos(segment: u32, offset: u32) -> Pos {
        Pos { segment, offset }
    }

    /// Twelve durable executions of 1 to 12 events over three tenants, the fourth a
    /// fork of the first, the sixth deleted; one execution only reserved.
    fn store() -> (Index, Vec<SegmentDigest>) {
        let mut index = Index::new(4);
        let mut offset = 32;
        let mut next = || {
            offset += 64;
            pos(1, offset)
        };
        for n in 0..12u32 {
            let (no, first) = if n == 3 {
                let at = pos(1, 32);
                let no =
                    index.create_fork(ExecutionId::from("run-3"), Base { source: 0, at: 1 }, at);
                (no, 1)
            } else {
                let tenant = TenantId::from(format!("tenant-{}", n % 3));
                let at = next();
                (
                    index.create(ExecutionId::from(format!("run-{n}")), &tenant, at),
                    1,
                )
            };
            index.make_durable(no, first, pos(1, offset_of(&index, no)));
            for seq in first + 1..=first + u64::from(n) {
                let at = next();
                index.reserve(no, seq, at);
                index.make_durable(no, seq, at);
            }
        }
        index.mark_deleting(5);
        index.delete(5);
        index.create(
            ExecutionId::from("only-reserved"),
            &TenantId::from("t"),
            next(),
        );
        (index, vec![SegmentDigest { end: 8192, crc: 1 }])
    }

    fn offset_of(index: &Index, no: ExecNo) -> u32 {
        index.get(no).map_or(0, |e| e.reserved_pos.offset)
    }

    /// What appends, group commits and deletions do between two slices; the deletion
    /// and the new execution in the first round only.
    fn change(index: &mut Index, round: u32) {
        let (seq, at) = (index.get(0).map_or(0, |e| e.durable_seq) + 1, pos(2, 32));
        index.reserve(0, seq, at);
        index.make_durable(0, seq, at);
        for no in [9, 10] {
            let seq = index.get(no).map_or(0, |e| e.durable_seq) + 1;
            index.reserve(no, seq, pos(2, 96 + no * 64));
            index.make_durable(no, seq, pos(2, 96 + no * 64));
        }
        if round > 0 {
            return;
        }
        index.mark_deleting(11);
        index.delete(11);
        index.make_durable(12, 1, pos(2, 2048));
        let late = index.create(
            ExecutionId::from("late"),
            &TenantId::from("new"),
            pos(2, 4096),
        );
        index.make_durable(late, 1, pos(2, 4096));
    }

    #[test]
    fn a_frozen_index_encodes_as_it_was_at_the_freeze() {
        let (untouched, segments) = store();
        let expected = encode(&untouched, &segments, 7).expect("encodes");
        let (mut index, _) = store();
        index.freeze();
        let mut encoder = Encoder::begin(&index, &segments, 7);
        assert!(!encoder.step(&index, 5), "three tenants and two executions");
        change(&mut index, 0);
        let mut round = 1;
        while !encoder.step(&index, 2) {
            change(&mut index, round);
            round += 1;
        }
        assert_eq!(encoder.finish().expect("finishes"), expected);
        index.thaw();
        let after = encode(&index, &segments, 7).expect("encodes");
        assert_ne!(after, expected, "after the thaw the changes are seen");
    }

    #[test]
    fn a_freeze_saves_only_what_changed_and_was_durable() {
        let (mut index, _) = store();
        index.freeze();
        change(&mut index, 0);
        let frozen = index.durable_view(0).expect("run-0");
        assert_eq!(frozen.seq, 1);
        assert!(index.durable_view(11).is_some_and(|v| !v.deleted));
        // run-0, run-9, run-10 and run-11 changed; the reserved one and `late` were not
        // durable at the freeze.
        assert_eq!(index.frozen_changes(), Some(4));
    }

    /// Between slices: a fork of a frozen execution made durable, then its source
    /// deleted; a fork of that fork; a tenant's every execution deleted; executions of
    /// brand-new tenants; appends to a fork that was durable at the freeze. The bytes
    /// stay those of the freeze, in every slicing.
    #[test]
    fn forks_deletions_and_new_tenants_between_slices_leave_the_freeze() {
        let (untouched, segments) = store();
        let expected = encode(&untouched, &segments, 7).expect("encodes");
        for budget in [1, 2, 3, 5, 8, 13] {
            let (mut index, _) = store();
            index.freeze();
            let mut encoder = Encoder::begin(&index, &segments, 7);
            let mut round = 0u32;
            while !encoder.step(&index, budget) {
                match round {
                    0 => {
                        // A fork of run-1 (durable at the freeze), durable at once.
                        let at = index.get(1).map(|e| e.durable_pos).expect("run-1");
                        let f = index.create_fork(
                            ExecutionId::from(format!("fork-of-1-{budget}")),
                            Base { source: 1, at: 1 },
                            at,
                        );
                        index.make_durable(f, 1, at);
                        index.reserve(f, 2, pos(3, 32));
                        index.make_durable(f, 2, pos(3, 32));
                        // Its source deleted.
                        index.mark_deleting(1);
                        index.delete(1);
                        // A fork of the fork.
                        let ff = index.create_fork(
                            ExecutionId::from(format!("fork-of-fork-{budget}")),
                            Base { source: f, at: 2 },
                            pos(3, 32),
                        );
                        index.make_durable(ff, 2, pos(3, 32));
                    }
                    1 => {
                        // Tenant 2's executions (2, 8, 11) all deleted.
                        for no in [2, 8, 11] {
                            if index
                                .get(no)
                                .is_some_and(|e| e.life == crate::index::Life::Live)
                            {
                                index.mark_deleting(no);
                                index.delete(no);
                            }
                        }
                    }
                    _ => {
                        // New tenants and appends to run-3 (a fork durable at the freeze).
                        let t = TenantId::from(format!("new-{round}"));
                        let no = index.create(
                            ExecutionId::from(format!("new-{budget}-{round}")),
                            &t,
                            pos(4, 32 + 64 * round),
                        );
                        index.make_durable(no, 1, pos(4, 32 + 64 * round));
                        let seq = index.get(3).map_or(0, |e| e.reserved_seq) + 1;
                        index.reserve(3, seq, pos(5, 32 + 64 * round));
                        index.make_durable(3, seq, pos(5, 32 + 64 * round));
                    }
                }
                round += 1;
            }
            assert_eq!(
                encoder.finish().expect("finishes"),
                expected,
                "slices of {budget}"
            );
            index.thaw();
            let after = encode(&index, &segments, 7).expect("encodes");
            assert_ne!(
                after, expected,
                "slices of {budget}: the changes are seen after"
            );
        }
    }

    #[test]
    fn a_slice_encode_equals_the_one_go_encode() {
        let (index, segments) = store();
        let mut encoder = Encoder::begin(&index, &segments, 7);
        while !encoder.step(&index, 1) {}
        let sliced = encoder.finish().expect("finishes");
        assert_eq!(sliced, encode(&index, &segments, 7).expect("encodes"));
        let c = crate::checkpoint::decode(&sliced, 4).expect("decodes");
        assert_eq!(c.deleted, Some(vec![5]));
        assert_eq!(c.index.len(), 12);
        assert_eq!(c.index.tenants().len(), 3);
    }
}
