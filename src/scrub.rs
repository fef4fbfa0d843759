//! Scrubbing: re-reading sealed segments to check every record's CRC, and refusing
//! to serve what fails. The background thread that paces it is `scrubber.rs`; this
//! file holds what a check finds and what it changes.
//!
//! A sealed segment is one the log has moved past: the next segment holds a durable
//! record, so its durable end (which the commit thread raised before that record's
//! group was published) is final and no byte below it changes. The scrubber reads
//! only such segments, and only below that end, as the storage device holds them:
//! past the page cache, where a bad sector hides under a cached page (through the
//! maps where the file system cannot bypass its cache). The active segment is left to
//! the commit thread, which checksums what it writes, and to open, which scans the
//! unsealed tail.
//!
//! Invariants:
//! - A check takes the segment list's lock just to get a file handle or a view, never
//!   the store lock, and never holds a lock while it reads.
//! - A check reports only what one file holds: on a segment an erasure replaced under
//!   a check in progress, the check goes on only where it resumes on a record boundary
//!   of the new file, else the segment is checked again from its start (an erased
//!   span moves the boundaries inside it).
//! - A damaged range, once found, stays refused for the life of the open store, even
//!   if its bytes later read well again (a medium that returned bad bytes once is not
//!   trusted to return good ones; the next open verifies the segments anew and refuses
//!   a store whose sealed data is damaged). Refusal is by byte range: every read whose
//!   record overlaps it fails with [`Error::Corrupt`], records outside it are served.
//! - Scrubbing never writes a segment; the only file it writes is its progress
//!   (`scrub_progress.rs`), and only from the writer's thread.

use std::sync::atomic::Ordering;

use crate::error::{Error, Result};
use crate::log_store::LogStore;
use crate::scrub_window::{DeviceWindow, check_from_device, check_records};
use crate::segment::SEGMENT_HEADER_LEN;
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
    /// How many times an erasure had replaced the segment when it was read: a check
    /// that resumes mid-segment passes it back (`check_part`'s `since`).
    pub(crate) rewrites: u32,
    /// The segment was replaced while it was read, or since the last check and the
    /// offset is no record boundary of the new file: nothing was checked, and the
    /// segment's check starts again at 0 (record boundaries move when an erasure
    /// spans records).
    pub(crate) restart: bool,
}

/// Checks sealed segment `id` from `offset` (0: its header first) for at least one
/// record and until about `budget` bytes are covered, reading the bytes the storage
/// device holds, past the page cache, into `window` (`scrub_window.rs`; a file system
/// that has no such reads is checked through the map, its cache being all there is).
/// `None` if `id` is not sealed. `since`: the `rewrites` of the check before this one
/// in the segment, when it resumes mid-segment. Damage found is remembered in
/// `shared.scrub` (so reads refuse it) and logged.
pub(crate) fn check_part(
    shared: &Shared,
    (id, offset, since): (u32, u64, Option<u32>),
    budget: u64,
    window: &mut DeviceWindow,
) -> Result<Option<Checked>> {
    let Some(end) = shared.segments.sealed_end(id) else {
        return Ok(None);
    };
    let rewrites = shared.segments.rewrites(id);
    let checked = match check_from_device(shared, (id, rewrites), (offset, end), budget, window)? {
        Some(checked) => checked,
        None => check_mapped(shared, id, (offset, end), budget)?,
    };
    if !same_file(shared, (id, rewrites), (offset, since), &checked) {
        *window = DeviceWindow::default();
        return Ok(Some(Checked {
            end,
            rewrites: shared.segments.rewrites(id),
            restart: true,
            ..Checked::default()
        }));
    }
    for range in &checked.damaged {
        shared.scrub.note(range);
    }
    shared
        .scrub
        .scrubbed_bytes
        .fetch_add(checked.next.saturating_sub(offset), Ordering::Relaxed);
    Ok(Some(Checked {
        rewrites,
        ..checked
    }))
}

/// Whether `checked`, read from segment `id` replaced `rewrites` times, may stand: the
/// segment was not replaced while it was read, and if it was replaced since the last
/// check (`since`), the offset this one resumed at is still a record boundary of the
/// new file (an erasure moves only the boundaries inside the spans it writes; one
/// inside a span reads as zeros, which is no record).
fn same_file(
    shared: &Shared,
    (id, rewrites): (u32, u32),
    (offset, since): (u64, Option<u32>),
    checked: &Checked,
) -> bool {
    if shared.segments.rewrites(id) != rewrites {
        return false;
    }
    since.is_none_or(|s| s == rewrites)
        || checked.records > 0 && checked.damaged.first().is_none_or(|d| d.from > offset)
}

/// [`check_part`]'s check through the segment's map.
fn check_mapped(
    shared: &Shared,
    id: u32,
    (offset, end): (u64, u64),
    budget: u64,
) -> Result<Checked> {
    let view = shared.segments.view(id, end)?;
    let all: &[u8] = view.as_ref().as_ref();
    let bytes = all.get(..end as usize).unwrap_or(all);
    Ok(check_bytes(id, bytes, offset as usize, budget as usize))
}

/// Checks the records of a sealed segment's `bytes` (exactly its data) from `offset`
/// (0: its header first). Pure: the segment id only labels what it finds.
fn check_bytes(id: u32, bytes: &[u8], offset: usize, budget: usize) -> Checked {
    let start = match offset {
        0 => (SEGMENT_HEADER_LEN, true),
        _ => (offset, false),
    };
    // Over the whole segment no check needs more bytes.
    check_records((id, 0), bytes, start, budget, false).unwrap_or_default()
}

/// The first damaged range of sealed segment `id`'s records (`bytes`, exactly its
/// data), if a record check finds one: what a checksum over them that differs can name.
pub(crate) fn first_damage(id: u32, bytes: &[u8]) -> Option<DamagedRange> {
    check_bytes(id, bytes, 0, usize::MAX)
        .damaged
        .into_iter()
        .next()
}

pub(crate) fn damaged(segment: u32, from: usize, to: usize, why: &str) -> DamagedRange {
    DamagedRange {
        segment,
        from: from as u64,
        to: to as u64,
        reason: why.to_string(),
    }
}

/// The budget of each part of `scrub_now`'s check, which is not paced: the window it
/// reads from the device, and holds in memory, is about this large.
const UNPACED_PART: u64 = 4 << 20;

/// Checks all of sealed segment `id`, a part at a time; `None` if it is not sealed.
fn check_segment(shared: &Shared, id: u32) -> Result<Option<Checked>> {
    let mut whole = Checked::default();
    let mut since = None;
    let mut window = DeviceWindow::default();
    loop {
        let Some(part) = check_part(shared, (id, whole.next, since), UNPACED_PART, &mut window)?
        else {
            return Ok(None);
        };
        if part.restart {
            (whole, since) = (Checked::default(), None);
            continue;
        }
        since = Some(part.rewrites);
        whole.records += part.records;
        whole.damaged.extend(part.damaged);
        (whole.next, whole.end) = (part.next, part.end);
        if whole.next >= whole.end {
            return Ok(Some(whole));
        }
    }
}

impl LogStore {
    /// Checks every record of every sealed segment now, on the calling thread and
    /// without pacing, and returns what it found; damage found is refused by later
    /// reads and counted in [`Stats::scrub`](crate::Stats::scrub), as the background
    /// scrubber's is ([`Options::scrub`](crate::Options::scrub)). It does not move the
    /// background scrubber's position and writes nothing, so it works on every kind of
    /// open, readers included. It reads what the storage device holds, past the page
    /// cache (as the background scrubber does), 4 MiB at a time. Fails only if a
    /// segment cannot be opened, read or mapped.
    pub fn scrub_now(&self) -> Result<ScrubReport> {
        self.check_open()?;
        let shared = self.shared();
        let mut report = ScrubReport::default();
        let mut id = 1;
        while let Some(checked) = check_segment(shared, id)? {
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
    use crate::scrub_window::check_window;
    use crate::{record, segment};

    fn segment_bytes(records: u64) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = segment::encode_header(7).to_vec();
        let mut starts = Vec::new();
        for seq in 1..=records {
            starts.push(bytes.len());
            let h = Header {
                kind: Kind::Event,
                // Each record its own commit group, as in a log of single appends.
                group_start: bytes.len() as u32,
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

    /// What `check_from_device` does, over `bytes` as the device: windows from
    /// `offset`, grown as `check_window` asks.
    fn check_through_windows(bytes: &[u8], offset: usize, budget: u64, slack: u64) -> Checked {
        let end = bytes.len() as u64;
        let mut to = end.min(offset as u64 + budget + slack);
        loop {
            let window = &bytes[offset..to as usize];
            match check_window(7, window, offset as u64, budget, to == end) {
                Ok(checked) => return checked,
                Err(more) => to = more.clamp(to + 1, end),
            }
        }
    }

    #[test]
    fn windows_of_any_size_check_what_the_whole_segment_checks() {
        let (clean, starts) = segment_bytes(20);
        let mut damaged = clean.clone();
        damaged[starts[7] + 60] ^= 0x10;
        let mut cut_length = clean.clone();
        // A length that runs past the segment's end: a cut record, to the end.
        cut_length[starts[12] + record::BODY_LEN_OFFSET] = 0xff;
        cut_length[starts[12] + record::BODY_LEN_OFFSET + 2] = 0x7f;
        for bytes in [&clean, &damaged, &cut_length] {
            let whole = check_bytes(7, bytes, 0, usize::MAX);
            assert_eq!(whole.damaged.is_empty(), bytes == &clean);
            for (budget, slack) in [(1, 0), (8, 1), (100, 3), (300, 64), (1 << 20, 0)] {
                let (mut at, mut records, mut ranges) = (0, 0, Vec::new());
                while at < bytes.len() {
                    let c = check_through_windows(bytes, at, budget, slack);
                    assert!(c.next as usize > at, "budget {budget}: no progress at {at}");
                    records += c.records;
                    ranges.extend(c.damaged);
                    at = c.next as usize;
                }
                assert_eq!(records, whole.records, "budget {budget} slack {slack}");
                assert_eq!(ranges, whole.damaged, "budget {budget} slack {slack}");
            }
        }
    }
}

/// Adversary review (adv31): the device windows against the whole-segment check, over
/// random segments (commit groups of several records, bodies long enough for small
/// windows to cut) with random damage (flips anywhere, forged lengths to 4 GiB, past
/// the end, short, zero runs at any offset, zeroed headers, nonzero padding, a commit
/// group forged to start after its record with a valid CRC), at many budgets and
/// slacks, including slacks around one record header.
#[cfg(test)]
mod adversary_window_tests {
    use super::*;
    use crate::record::{BODY_LEN_OFFSET, Header, Kind, Pos, encode};
    use crate::scrub_window::check_window;
    use crate::{record, segment};

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    /// Segment 7 with `n` records, bodies of 1..=`max_body` bytes, in commit groups of
    /// 1 to 4 records; one record in 40 carries a group start after itself (valid CRC).
    fn segment(rng: &mut Rng, n: u64, max_body: u64) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = segment::encode_header(7).to_vec();
        let mut starts = Vec::new();
        let (mut group_start, mut left) = (0u32, 0);
        for seq in 1..=n {
            if left == 0 {
                group_start = bytes.len() as u32;
                left = 1 + rng.below(4);
            }
            left -= 1;
            starts.push(bytes.len());
            let len = 1 + rng.below(max_body) as usize;
            let body: Vec<u8> = (0..len).map(|_| 1 + rng.below(255) as u8).collect();
            let forged_group = rng.below(40) == 0;
            let h = Header {
                kind: Kind::Event,
                group_start: if forged_group {
                    bytes.len() as u32 + 8
                } else {
                    group_start
                },
                execution: 0,
                sequence: seq,
                timestamp_ns: 1,
                prev: (seq > 1).then_some(Pos {
                    segment: 7,
                    offset: 32,
                }),
                batch_remaining: 0,
            };
            encode(&h, &[&body], &mut bytes);
        }
        (bytes, starts)
    }

    fn set_len(bytes: &mut [u8], at: usize, len: u32) {
        bytes[at + BODY_LEN_OFFSET..at + BODY_LEN_OFFSET + 4].copy_from_slice(&len.to_le_bytes());
    }

    fn damage(rng: &mut Rng, bytes: &mut [u8], starts: &[usize]) {
        let n = bytes.len();
        let s = starts[rng.below(starts.len() as u64) as usize];
        match rng.below(9) {
            0 => {
                let i = rng.below(n as u64) as usize;
                bytes[i] ^= 1 << rng.below(8);
            }
            1 => set_len(bytes, s, rng.next() as u32),
            2 => set_len(
                bytes,
                s,
                [u32::MAX, 0xFFFF_FFF8, 1 << 31][rng.below(3) as usize],
            ),
            3 => {
                // Runs just past the segment's end.
                let past = (n - s - record::HEADER_LEN) as u64 + 1 + rng.below(16);
                set_len(bytes, s, past as u32);
            }
            4 => {
                let from = rng.below(n as u64) as usize;
                let to = (from + 1 + rng.below(300) as usize).min(n);
                bytes[from..to].fill(0);
            }
            5 => set_len(bytes, s, rng.below(64) as u32),
            6 => {
                // A padding byte (no CRC covers it), where the record has padding.
                let len = u32::from_le_bytes(
                    bytes[s + BODY_LEN_OFFSET..s + BODY_LEN_OFFSET + 4]
                        .try_into()
                        .unwrap_or_default(),
                ) as usize;
                let pad = s + record::HEADER_LEN + len;
                if !len.is_multiple_of(8) && pad < n {
                    bytes[pad] = 0x5a;
                }
            }
            7 => {
                let to = (s + record::HEADER_LEN).min(n);
                bytes[s..to].fill(0);
            }
            _ => {
                let i = s + rng.below(8) as usize;
                bytes[i] ^= 0x80;
            }
        }
    }

    /// `check_from_device` over `bytes` as the device: windows from `offset`, grown as
    /// `check_window` asks; also returns how many reads the part took.
    fn through_windows(bytes: &[u8], offset: usize, budget: u64, slack: u64) -> (Checked, u32) {
        let end = bytes.len() as u64;
        let mut to = end.min(offset as u64 + budget + slack);
        let mut reads = 0;
        loop {
            reads += 1;
            assert!(
                reads <= 64,
                "a part that never ends: offset {offset} budget {budget}"
            );
            let window = &bytes[offset..to as usize];
            match check_window(7, window, offset as u64, budget, to == end) {
                Ok(checked) => return (checked, reads),
                Err(more) => to = more.clamp(to + 1, end),
            }
        }
    }

    #[test]
    fn adversary_windows_report_what_the_whole_segment_check_reports() {
        let budgets_slacks = [
            (1, 0),
            (1, 55),
            (1, 56),
            (1, 57),
            (7, 8),
            (64, 1),
            (300, 64),
            (2000, 100),
            (1, 4096),
            (50_000, 0),
            (u64::from(u32::MAX), 0),
        ];
        let mut damaged_seen = 0;
        for seed in 1..=2500u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let n = 1 + rng.below(30);
            let max_body = [8, 64, 700, 3000][rng.below(4) as usize];
            let (mut bytes, starts) = segment(&mut rng, n, max_body);
            for _ in 0..rng.below(4) {
                damage(&mut rng, &mut bytes, &starts);
            }
            let whole = check_bytes(7, &bytes, 0, usize::MAX);
            damaged_seen += usize::from(!whole.damaged.is_empty());
            for &(budget, slack) in &budgets_slacks {
                let ctx = format!("seed {seed} budget {budget} slack {slack}");
                let (mut at, mut records, mut ranges) = (0usize, 0, Vec::new());
                let (mut mapped_at, mut mapped_ranges) = (0usize, Vec::new());
                while at < bytes.len() {
                    let (c, reads) = through_windows(&bytes, at, budget, slack);
                    assert!(c.next as usize > at, "{ctx}: no progress at {at}");
                    // Each read at least doubles the window: logarithmic in the segment.
                    let doublings = usize::BITS - bytes.len().leading_zeros();
                    assert!(
                        reads <= 2 + doublings,
                        "{ctx}: {reads} reads for the part at {at}"
                    );
                    records += c.records;
                    ranges.extend(c.damaged);
                    at = c.next as usize;
                }
                assert_eq!(at, bytes.len(), "{ctx}");
                while mapped_at < bytes.len() {
                    let c = check_bytes(7, &bytes, mapped_at, budget as usize);
                    assert!(c.next as usize > mapped_at, "{ctx}: mapped, no progress");
                    mapped_ranges.extend(c.damaged);
                    mapped_at = c.next as usize;
                }
                assert_eq!(records, whole.records, "{ctx}");
                assert_eq!(ranges, whole.damaged, "{ctx}");
                assert_eq!(mapped_ranges, whole.damaged, "{ctx}: the maps' parts");
            }
        }
        assert!(damaged_seen > 1000, "{damaged_seen}");
    }
}
