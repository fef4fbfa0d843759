//! Scrubbing: re-reading sealed segments to check every record's CRC, and refusing
//! to serve what fails. The background thread that paces it is `scrubber.rs`; this
//! file holds what a check finds and what it changes.
//!
//! A sealed segment is one the log has moved past: the next segment holds a durable
//! record, so its durable end (which the commit thread raised before that record's
//! group was published) is final and no byte below it changes. The scrubber reads
//! only such segments, through the same read-only maps as reads, and only below that
//! end; the active segment is left to the commit thread, which checksums what it
//! writes, and to open, which scans the unsealed tail.
//!
//! Invariants:
//! - A check reads mapped bytes only: it takes the segment list's lock just to get a
//!   view, never the store lock, and never holds a lock while it reads.
//! - A damaged range, once found, stays refused for the life of the open store, even
//!   if its bytes later read well again (a medium that returned bad bytes once is not
//!   trusted to return good ones; the next open verifies the segments anew and refuses
//!   a store whose sealed data is damaged). Refusal is by byte range: every read whose
//!   record overlaps it fails with [`Error::Corrupt`], records outside it are served.
//! - Scrubbing never writes a segment; the only file it writes is its progress
//!   (`scrub_progress.rs`), and only from the writer's thread.

use std::sync::atomic::Ordering;

use crate::damage;
use crate::error::{Error, Result};
use crate::log_store::LogStore;
use crate::record::RECORD_ALIGN;
use crate::scan::{Scanner, Step};
use crate::segment::{self, HeaderCheck, SEGMENT_HEADER_LEN};
use crate::state::Shared;
use crate::sync::{AtomicBool, AtomicU64, Mutex};

/// Bytes of a sealed segment that failed a scrub, `[from, to)`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DamagedRange {
    /// The segment's id (its file name without extension).
    pub segment: u32,
    /// First damaged byte: where the first record that failed starts.
    pub from: u64,
    /// Where the next intact record starts, or the segment's end.
    pub to: u64,
    /// What failed at `from`.
    pub reason: String,
}

/// What one [`LogStore::scrub_now`] pass found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScrubReport {
    /// Sealed segments checked.
    pub segments: u32,
    /// Bytes checked (segment headers included).
    pub bytes: u64,
    /// Records whose CRC and fields matched.
    pub records: u64,
    /// Damaged ranges found by this pass (known ones included).
    pub damaged: Vec<DamagedRange>,
}

impl ScrubReport {
    /// Whether no damage was found.
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty()
    }
}

/// What scrubbing has done since open ([`Stats::scrub`](crate::Stats::scrub)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScrubStats {
    /// Bytes checked since open, by the background scrubber and `scrub_now`.
    pub scrubbed_bytes: u64,
    /// Whole passes over the sealed segments completed: by the background scrubber
    /// over the store's life (kept in `scrub.progress`), plus `scrub_now` passes of
    /// this open.
    pub passes: u64,
    /// The segment the background scrubber is in (1 when it is off or not started).
    pub segment: u32,
    /// Every damaged range found since open; reads overlapping one fail.
    pub damaged: Vec<DamagedRange>,
}

/// The scrub state of one open store, shared by the scrubber, `scrub_now` and reads.
#[derive(Default)]
pub(crate) struct ScrubState {
    damaged: Mutex<Vec<DamagedRange>>,
    /// Set once any range is damaged: reads skip the lock until then.
    any_damage: AtomicBool,
    scrubbed_bytes: AtomicU64,
    passes: AtomicU64,
    segment: AtomicU64,
}

impl ScrubState {
    /// The error for a read of `[from, to)` of `segment`, if that overlaps a damaged
    /// range.
    pub(crate) fn refuse(&self, segment: u32, from: u64, to: u64) -> Result<()> {
        if !self.any_damage.load(Ordering::Acquire) {
            return Ok(());
        }
        let damaged = self.damaged.lock();
        match damaged
            .iter()
            .find(|d| d.segment == segment && d.from < to && from < d.to)
        {
            None => Ok(()),
            Some(d) => Err(Error::corrupt(
                segment,
                from,
                format!(
                    "the scrubber found bytes {}..{} of this segment damaged ({}); this open store does not serve them",
                    d.from, d.to, d.reason
                ),
            )),
        }
    }

    /// Remembers `range` (and logs it, at error level) unless it is known.
    fn note(&self, range: &DamagedRange) {
        let mut damaged = self.damaged.lock();
        if damaged
            .iter()
            .any(|d| d.segment == range.segment && d.from == range.from)
        {
            return;
        }
        log::error!(
            "scrub: segment {} bytes {}..{} are damaged ({}); reads of them fail from now on",
            range.segment,
            range.from,
            range.to,
            range.reason
        );
        damaged.push(range.clone());
        self.any_damage.store(true, Ordering::Release);
    }

    pub(crate) fn add_passes(&self, n: u64) {
        self.passes.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set_segment(&self, segment: u32) {
        self.segment.store(u64::from(segment), Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> ScrubStats {
        ScrubStats {
            scrubbed_bytes: self.scrubbed_bytes.load(Ordering::Relaxed),
            passes: self.passes.load(Ordering::Relaxed),
            segment: u32::try_from(self.segment.load(Ordering::Relaxed).max(1)).unwrap_or(u32::MAX),
            damaged: self.damaged.lock().clone(),
        }
    }
}

/// What checking part of a segment found.
#[derive(Debug, Default)]
pub(crate) struct Checked {
    /// Where the next check of the segment starts (its end when done).
    pub(crate) next: u64,
    /// The segment's end: the check of the segment is done when `next` reaches it.
    pub(crate) end: u64,
    pub(crate) records: u64,
    pub(crate) damaged: Vec<DamagedRange>,
}

/// Checks sealed segment `id` from `offset` (0: its header first) for at least one
/// record and until about `budget` bytes are covered. `None` if `id` is not sealed.
/// Damage found is remembered in `shared.scrub` (so reads refuse it) and logged.
pub(crate) fn check_part(
    shared: &Shared,
    id: u32,
    offset: u64,
    budget: u64,
) -> Result<Option<Checked>> {
    let Some(end) = shared.segments.sealed_end(id) else {
        return Ok(None);
    };
    let view = shared.segments.view(id, end)?;
    let all: &[u8] = view.as_ref().as_ref();
    let bytes = all.get(..end as usize).unwrap_or(all);
    let checked = check_bytes(id, bytes, offset as usize, budget as usize);
    for range in &checked.damaged {
        shared.scrub.note(range);
    }
    shared
        .scrub
        .scrubbed_bytes
        .fetch_add(checked.next.saturating_sub(offset), Ordering::Relaxed);
    Ok(Some(checked))
}

/// Checks the records of a sealed segment's `bytes` (exactly its data) from `offset`.
/// Pure: the segment id only labels what it finds.
fn check_bytes(id: u32, bytes: &[u8], mut offset: usize, budget: usize) -> Checked {
    let mut out = Checked {
        end: bytes.len() as u64,
        ..Checked::default()
    };
    if offset == 0 {
        if let HeaderCheck::Bad(why) = segment::check_header(bytes, id) {
            out.damaged.push(damaged(id, 0, SEGMENT_HEADER_LEN, why));
        }
        offset = SEGMENT_HEADER_LEN;
    }
    let stop = offset.saturating_add(budget.max(1));
    while offset < bytes.len() && offset < stop {
        let mut scanner = Scanner::new(bytes, offset);
        match scanner.next() {
            Some(Step::Record { .. }) => {
                out.records += 1;
                offset = scanner.offset();
            }
            Some(Step::End { offset: at }) => {
                let to = damage::next_record(bytes, at).unwrap_or(bytes.len());
                let why = "zeros where the segment's records continue";
                out.damaged.push(damaged(id, at, to, why));
                offset = to;
            }
            Some(Step::Invalid { offset: at, why }) => {
                let to = damage::next_record(bytes, at + RECORD_ALIGN).unwrap_or(bytes.len());
                out.damaged.push(damaged(id, at, to, &why.to_string()));
                offset = to;
            }
            None => break,
        }
    }
    out.next = offset.min(bytes.len()) as u64;
    out
}

/// The first damaged range of sealed segment `id`'s records (`bytes`, exactly its
/// data), if a record check finds one: what a checksum over them that differs can name.
pub(crate) fn first_damage(id: u32, bytes: &[u8]) -> Option<DamagedRange> {
    check_bytes(id, bytes, 0, usize::MAX)
        .damaged
        .into_iter()
        .next()
}

fn damaged(segment: u32, from: usize, to: usize, why: &str) -> DamagedRange {
    DamagedRange {
        segment,
        from: from as u64,
        to: to as u64,
        reason: why.to_string(),
    }
}

/// A whole segment at once: `scrub_now` is not paced.
const UNPACED: u64 = u64::MAX;

impl LogStore {
    /// Checks every record of every sealed segment now, on the calling thread and
    /// without pacing, and returns what it found; damage found is refused by later
    /// reads and counted in [`Stats::scrub`](crate::Stats::scrub), as the background
    /// scrubber's is ([`Options::scrub`](crate::Options::scrub)). It does not move the
    /// background scrubber's position and writes nothing, so it works on every kind of
    /// open, readers included. Fails only if a segment cannot be mapped.
    pub fn scrub_now(&self) -> Result<ScrubReport> {
        self.check_open()?;
        let shared = self.shared();
        let mut report = ScrubReport::default();
        let mut id = 1;
        while let Some(checked) = check_part(shared, id, 0, UNPACED)? {
            report.segments += 1;
            report.bytes += checked.next;
            report.records += checked.records;
            report.damaged.extend(checked.damaged);
            id += 1;
        }
        shared.scrub.add_passes(1);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Header, Kind, encode};

    fn segment_bytes(records: u64) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = segment::encode_header(7).to_vec();
        let mut starts = Vec::new();
        for seq in 1..=records {
            starts.push(bytes.len());
            let h = Header {
                kind: Kind::Event,
                group_start: 0,
                execution: 0,
                sequence: seq,
                timestamp_ns: 1,
                prev: (seq > 1).then_some(crate::record::Pos {
                    segment: 7,
                    offset: 32,
                }),
                batch_remaining: 0,
            };
            encode(&h, &[b"some payload bytes"], &mut bytes);
        }
        (bytes, starts)
    }

    #[test]
    fn a_clean_segment_checks_in_parts_of_any_budget() {
        let (bytes, _) = segment_bytes(20);
        for budget in [1, 8, 100, 1 << 20] {
            let (mut at, mut records) = (0, 0);
            while at < bytes.len() {
                let c = check_bytes(7, &bytes, at, budget);
                assert!(c.damaged.is_empty());
                assert!(c.next as usize > at);
                records += c.records;
                at = c.next as usize;
            }
            assert_eq!(records, 20, "budget {budget}");
        }
    }

    #[test]
    fn a_flipped_bit_is_one_range_up_to_the_next_record() {
        let (mut bytes, starts) = segment_bytes(5);
        bytes[starts[2] + 60] ^= 0x10;
        let c = check_bytes(7, &bytes, 0, usize::MAX);
        assert_eq!(c.records, 4);
        assert_eq!(c.damaged.len(), 1);
        assert_eq!(
            (c.damaged[0].from, c.damaged[0].to),
            (starts[2] as u64, starts[3] as u64)
        );
        assert_eq!(c.next as usize, bytes.len());
    }

    #[test]
    fn a_damaged_header_is_reported() {
        let (mut bytes, _) = segment_bytes(2);
        bytes[9] ^= 1;
        let c = check_bytes(7, &bytes, 0, usize::MAX);
        assert_eq!(c.damaged.len(), 1);
        assert_eq!((c.damaged[0].from, c.damaged[0].to), (0, 32));
        assert_eq!(c.records, 2);
    }
}
