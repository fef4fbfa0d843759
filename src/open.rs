//! Opening a store's log: the steps, in order, each in its own file, and the one value
//! handed on to the commit thread (docs/DESIGN.md, "Recovery (open)").
//!
//! 0. A cut an earlier open journaled but could not make durable is redone, or hidden
//!    by a read-only open (`repair.rs`, `cut.pending`).
//! 1. List: the directory's names sorted into segments, leftovers and unknown files
//!    (`store_dir.rs`); segment ids must be contiguous from 1. An open that leaves its
//!    index to decode takes the segments its checkpoint covers instead, if no segment
//!    follows them, and leaves the listing to the verification after open.
//! 2. Load the durable index state: the checkpoint, read before the segments are mapped
//!    and verified over the maps (`saved_index.rs`, `checkpoint.rs`), or, for a
//!    read-write open past `VERIFY_AFTER_OPEN_FROM_BYTES` by default, trusted on its own
//!    checksum and verified after open (`deferred_verification.rs`).
//! 3. Map every segment, in id order (`segment_maps.rs`), but the sealed segments a
//!    checkpoint covers when its index is decoded after open: those stay closed until
//!    first used (`segments.rs`).
//! 4. Scan the tail: every record the checkpoint does not cover, rebuilding the index
//!    and deciding where the log ends (`tail_scan.rs`, `scan.rs`, `rebuild.rs`), then
//!    check that this end is on the disk, not only in the page cache (`tail_check.rs`).
//! 5. Repair, in a read-write open only: cut a torn tail, set aside a newest segment
//!    that was still being created, fsync the directory (`repair.rs`, which holds every
//!    write open makes, step 0's too).
//!
//! Invariants: nothing is served before step 5 is done; a read-only open writes nothing
//! and hides what a read-write open would cut. If step 4 finds the log's end only in
//! the page cache, it is cut (or hidden) and steps 1 to 5 run again: only the last
//! commit group can be affected, so a second pass finds the end durable, and a third
//! is never needed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::checkpoint::SegmentDigest;
use crate::checkpoint_directory::Opened;
use crate::error::{Error, Result};
use crate::idempotency::KeyTables;
use crate::index::Index;
use crate::io::{Io, IoFile, Mapped};
use crate::lazy_index::LazyIndex;
use crate::options::Options;
use crate::rebuild::HeldTail;
use crate::recovery_report::RecoveryReport;
use crate::repair::{self, Cut};
use crate::saved_index;
use crate::segment::SEGMENT_HEADER_LEN;
use crate::segment_maps::{self, SegmentMap};
use crate::sidecar::{self, Summary};
use crate::store_dir::{self, Listing};
use crate::tail_check::{self, LogEnd, Unestablished};
use crate::tail_scan::{self, Scanned};

/// One recovered segment, ready to be opened for reads (and the last for appends).
pub(crate) struct RecoveredSegment {
    pub(crate) id: u32,
    pub(crate) file: Arc<dyn IoFile>,
    pub(crate) data_end: u64,
    /// The file's length: how far it is zeroed (or written).
    pub(crate) file_len: u64,
    /// Where its records end (`data_end`) and their checksum, if known: from a
    /// checkpoint, or computed for the newest segment (which appends continue). A
    /// sealed segment's is computed only when a checkpoint needs it (at close), so
    /// that an open without a checkpoint makes one pass over the bytes, not two.
    pub(crate) digest: Option<SegmentDigest>,
    /// The format version in its header.
    pub(crate) version: u32,
    /// The whole file as open mapped it: reads of a sealed segment use it rather than
    /// map it again (and open does not unmap hundreds of files it just mapped).
    pub(crate) view: Option<Mapped>,
}

/// The result of a successful open of the log.
pub(crate) struct Recovered {
    pub(crate) index: Index,
    /// The idempotency keys of the index's executions.
    pub(crate) keys: KeyTables,
    /// The sealed segments before `segments` that open left closed, from segment 1:
    /// wholly covered by a checkpoint, opened on first use (`segments.rs`). Empty
    /// unless the index is decoded after open.
    pub(crate) closed: Vec<SegmentDigest>,
    /// The segments after those, in id order.
    pub(crate) segments: Vec<RecoveredSegment>,
    pub(crate) last_timestamp_ns: i64,
    pub(crate) report: RecoveryReport,
    /// Whether a checkpoint described the whole log as found (nothing after it).
    pub(crate) checkpoint_current: bool,
    /// The CRC of the checkpoint open trusted without its checks, if it did: the
    /// verification after open checks that file (`deferred_verification.rs`).
    pub(crate) trusted_checkpoint_crc: Option<u32>,
    /// The checkpoint whose index is still to decode, with the tail after it, if open
    /// left it to decode (`lazy_index.rs`); `index` is then empty.
    pub(crate) lazy: Option<LazyIndex>,
    /// The segments with a sidecar file in the directory, if open listed it: removed
    /// once a checkpoint covers them (`checkpointer.rs`).
    pub(crate) sidecar_files: Vec<u32>,
}

/// What the commit thread starts from: the segment appends continue in, and what close
/// needs to write a checkpoint.
pub(crate) struct CommitStart {
    /// The last segment, where appends continue.
    pub(crate) segment: u32,
    pub(crate) file: Arc<dyn IoFile>,
    /// How far its file is zeroed (or written): its length.
    pub(crate) zeroed_end: u64,
    /// Where the commit thread stops zeroing it: the configured segment size, or the
    /// file if larger.
    pub(crate) capacity: u64,
    /// Every segment's digest, in id order; the last one's is always known.
    pub(crate) digests: Vec<Option<SegmentDigest>>,
    /// Whether close must write a checkpoint even if nothing is appended (open found
    /// none, or one that does not cover the whole log).
    pub(crate) checkpoint_due: bool,
    /// Bytes open rebuilt from records rather than load from a checkpoint: they count
    /// toward the next running checkpoint (`checkpointer.rs`).
    pub(crate) rebuilt_bytes: u64,
}

impl Recovered {
    /// The value the commit thread starts from; `Err` if the log has no segment.
    pub(crate) fn commit_start(&self, segment_size_bytes: u64) -> Result<CommitStart> {
        let Some(last) = self.segments.last() else {
            return Err(Error::Internal("no segment after recovery".into()));
        };
        Ok(CommitStart {
            segment: last.id,
            file: Arc::clone(&last.file),
            zeroed_end: last.file_len,
            capacity: last.file_len.max(segment_size_bytes),
            digests: (self.closed.iter().copied().map(Some))
                .chain(self.segments.iter().map(|s| s.digest))
                .collect(),
            checkpoint_due: !self.checkpoint_current,
            rebuilt_bytes: self
                .report
                .bytes_scanned
                .saturating_sub(self.report.checkpoint_bytes),
        })
    }
}

/// Opens the log in `dir`. With `read_only`, a torn tail is reported but not cut, and a
/// blank newest segment is reported but not removed. With `limit` (segment, end), the
/// published end of a writer in another process, nothing past it is read.
pub(crate) fn recover(
    io: &dyn Io,
    dir: &Path,
    options: &Options,
    read_only: bool,
    limit: Option<(u32, u64)>,
) -> Result<Recovered> {
    let started = Instant::now();
    let mut dropped = unfinished_cut(io, dir, read_only)?;
    let mut hidden = dropped
        .as_ref()
        .filter(|_| read_only)
        .map(|(cut, _)| (cut.segment, cut.from));
    for _ in 0..3 {
        // A reader never looks past what the writer published.
        let bound = match (hidden, limit) {
            (Some(h), Some(l)) => Some(h.min(l)),
            (h, l) => h.or(l),
        };
        match pass(io, dir, options, read_only, bound, limit.map(|l| l.0))? {
            Pass::Done(recovered) => {
                let mut recovered = *recovered;
                // Segment files a crashed or failed open created, or kept, reach the
                // directory durably before anything is served from them. A checkpoint
                // that covers every segment, with nothing cut, vouches for them: each
                // segment's entry was synced before its first record was written, and
                // the checkpoint covers only records that were durable. Other changes
                // a failed open left in the cache (a removed `cut.pending`) matter
                // only to writes, which wait for the verification after open: it
                // fsyncs the directory before its verdict.
                let vouched =
                    recovered.lazy.is_some() && recovered.checkpoint_current && dropped.is_none();
                report_dropped(&mut recovered.report, dropped);
                if !read_only && !vouched {
                    repair::sync_dir(io, dir)?;
                }
                recovered.report.duration = started.elapsed();
                return Ok(recovered);
            }
            Pass::NotOnDisk(u) => {
                let cut = Cut {
                    segment: u.segment,
                    from: u.from,
                    end: u.end,
                };
                if !read_only && u.from > 0 {
                    repair::cut(io, dir, u.file.as_ref(), cut, options.file_mode())?;
                } else {
                    // Read-only: hide it. A segment whose header is not on the disk
                    // is treated as one still being created (removed when writable).
                    hidden = Some((u.segment, u.from));
                }
                dropped = Some((cut, u.reason));
            }
        }
    }
    Err(Error::corrupt(
        dropped.map_or(0, |d| d.0.segment),
        0,
        "the end of the log still differs from the disk after it was cut",
    ))
}

/// Step 0: a cut an earlier open could not make durable, redone (read-write) or only
/// found (read-only, which then hides it), with the reason to report.
fn unfinished_cut(io: &dyn Io, dir: &Path, read_only: bool) -> Result<Option<(Cut, String)>> {
    let unfinished = if read_only {
        repair::pending(io, dir)?
    } else {
        repair::finish_pending(io, dir)?
    };
    let why = "an earlier open's cut of a torn tail was not durable; it was redone";
    Ok(unfinished.map(|cut| (cut, why.to_string())))
}

/// Reports `dropped`, a cut made before the last pass, unless that pass cut earlier.
fn report_dropped(report: &mut RecoveryReport, dropped: Option<(Cut, String)>) {
    if let Some((d, reason)) = dropped
        && report
            .truncated_at
            .is_none_or(|(s, at)| (s, at) > (d.segment, d.from))
    {
        report.truncated_at = Some((d.segment, d.from));
        report.bytes_truncated = d.end - d.from;
        report.torn_reason = Some(reason);
    }
}

/// What one pass ended with.
enum Pass {
    Done(Box<Recovered>),
    /// The end of the log in the page cache is not what the disk holds.
    NotOnDisk(Unestablished),
}

/// How much of its checks open may leave until after it returns.
enum Tier {
    /// The checkpoint (mapped, its header and trailer checked) is decoded after open
    /// too (`lazy_index.rs`).
    Lazy(Box<Opened>),
    /// The checkpoint is decoded, its verification left until after open.
    Deferred,
    /// Everything is checked before open returns.
    Full,
}

/// Steps 1 to 5 once, with the bytes of `hidden` (segment, from) left out and no
/// segment after `last_segment` read.
fn pass(
    io: &dyn Io,
    dir: &Path,
    options: &Options,
    read_only: bool,
    hidden: Option<(u32, u64)>,
    last_segment: Option<u32>,
) -> Result<Pass> {
    let ids = (hidden, last_segment);
    if !read_only {
        // Mapped once: it is both what decides the tier and what the lazy pass opens.
        let mapped = (options.verify_checkpoint_after_open != Some(false))
            .then(|| saved_index::load_lazy(io, dir, options))
            .flatten();
        if verifies_after_open(options, mapped.as_ref()) {
            // A checkpoint trusted without its checks is never the reason anything is
            // cut or refused: on anything but a clean tail the pass runs again with
            // more checks (a tail to scan needs the decoded index).
            let lazy = mapped.map(|opened| Tier::Lazy(Box::new(opened)));
            for tier in lazy.into_iter().chain([Tier::Deferred]) {
                if let Ok(Some(pass)) = pass_once(io, dir, options, read_only, ids, tier) {
                    return Ok(pass);
                }
            }
        }
    }
    pass_once(io, dir, options, read_only, ids, Tier::Full)?
        .ok_or_else(|| Error::Internal("a pass that verified its checkpoint declined it".into()))
}

/// Whether a read-write open leaves the checks of its checkpoint until after it returns
/// (`Options::verify_checkpoint_after_open`); by default, if the checkpoint (`mapped`)
/// covers enough records to make them cost more than open's fixed part. A forged size
/// only chooses between two tiers that each refuse a wrong checkpoint.
fn verifies_after_open(options: &Options, mapped: Option<&Opened>) -> bool {
    options.verify_checkpoint_after_open.unwrap_or_else(|| {
        let covered: u64 = mapped.map_or(0, |opened| opened.segments.iter().map(|d| d.end).sum());
        covered >= options.verify_after_open_from
    })
}

/// One pass at `tier`; `None` if a checkpoint trusted without its checks met anything
/// but a clean tail (something to cut or set aside, a tail not on the disk, for
/// `Tier::Lazy` any record after it): whether that is damage or a wrong checkpoint is
/// for a pass with the checks to say.
fn pass_once(
    io: &dyn Io,
    dir: &Path,
    options: &Options,
    read_only: bool,
    (hidden, last_segment): (Option<(u32, u64)>, Option<u32>),
    tier: Tier,
) -> Result<Option<Pass>> {
    let mut report = RecoveryReport::default();
    let defer = matches!(tier, Tier::Deferred);
    let (saved, lazy) = match tier {
        Tier::Lazy(opened) => (None, Some(*opened)),
        Tier::Deferred | Tier::Full => (saved_index::load(io, dir, options, &mut report), None),
    };
    let covered = lazy.as_ref().map(|o| o.segments.len());
    let (ids, sidecar_files) = match covered.map(|n| covered_ids(io, dir, n)).transpose()? {
        Some(Some(ids)) => (ids, Vec::new()),
        _ => list(io, dir, last_segment, &mut report)?,
    };
    // A reader maps its bounded segment only up to the bound: past it, the live writer
    // is writing.
    let bound = hidden.filter(|&(s, _)| last_segment == Some(s));
    // Without a decoded index nothing needs the sealed segments the checkpoint covers
    // (all but its last): they stay closed, so that open does not grow with them.
    let closed = lazy
        .as_ref()
        .map_or(0, |o| o.segments.len().min(ids.len()).saturating_sub(1));
    let maps = segment_maps::map(
        io,
        dir,
        ids.get(closed..).unwrap_or_default(),
        read_only,
        bound,
    )?;
    let sidecars = match covered {
        Some(n) if options.segment_sidecars => load_sidecars(io, dir, &maps, n),
        _ => BTreeMap::new(),
    };
    let (start, directory) = {
        let bytes: Vec<&[u8]> = maps.iter().map(SegmentMap::bytes).collect();
        match lazy {
            Some(o) => {
                let header = (o.last_timestamp_ns, o.file_crc);
                let maps = (closed, &bytes[..]);
                match saved_index::lazy_start(o.segments, header, maps, options, &mut report) {
                    Some(start) => (start, Some((o.directory, o.executions))),
                    None => return Ok(None),
                }
            }
            None => {
                let start = saved_index::verify(saved, &bytes, options, defer, &mut report);
                (start, None)
            }
        }
    };
    let deferred = report.checkpoint_verification_deferred;
    let trusted_crc = start.trusted_crc;
    let scan_from = (start, closed);
    let mut scanned = match tail_scan::scan(maps, scan_from, (hidden, &sidecars), &mut report) {
        Err(_) if deferred => return Ok(None),
        scanned => scanned?,
    };
    if deferred && (report.truncated_at.is_some() || scanned.unfinished.is_some()) {
        return Ok(None);
    }
    if let Some(u) = check_tail(&scanned, dir, read_only, &mut report)? {
        if deferred {
            return Ok(None);
        }
        return Ok(Some(Pass::NotOnDisk(u)));
    }
    if !read_only {
        repair_found(io, dir, options, &scanned, &report)?;
    }
    let taken = std::mem::take(&mut scanned.sidecars);
    let held = scanned.rebuild.held.take().map(|mut tail| {
        tail.sidecars = taken;
        held_ranges(tail, &scanned)
    });
    let mut recovered = recovered(scanned, report);
    recovered.trusted_checkpoint_crc = trusted_crc;
    recovered.sidecar_files = sidecar_files;
    if let (Some((directory, executions)), Some(tail)) = (directory, held) {
        recovered.report.executions = (executions as u64).saturating_add(tail.declared);
        recovered.lazy = Some(LazyIndex::new(directory, tail));
    }
    Ok(Some(Pass::Done(Box::new(recovered))))
}

/// `tail` with where it lies: in each segment kept, from the end of what the checkpoint
/// covers of it (its header without a digest) to the end of its records.
fn held_ranges(mut tail: HeldTail, scanned: &Scanned) -> HeldTail {
    let first = scanned.closed.len();
    for (i, s) in scanned.segments.iter().enumerate() {
        let from = scanned
            .covered
            .get(first + i)
            .map_or(SEGMENT_HEADER_LEN as u64, |d| d.end);
        if s.data_end > from {
            tail.ranges.push((s.id, from, s.data_end));
        }
    }
    tail
}

/// The sidecars of the sealed segments in `maps` after the first `covered` (which a
/// checkpoint covers), by segment id: only valid ones, each for its own segment and no
/// longer than one of that segment can be (`sidecar.rs`). Whether the scan takes them
/// is `tail_scan`'s to decide.
fn load_sidecars(
    io: &dyn Io,
    dir: &Path,
    maps: &[SegmentMap],
    covered: usize,
) -> BTreeMap<u32, Summary> {
    let sealed = maps.split_last().map_or(&[][..], |(_, sealed)| sealed);
    let mut found = BTreeMap::new();
    for m in sealed.iter().filter(|m| m.id as usize > covered) {
        match sidecar::load(io, dir, (m.id, m.bytes().len() as u64)) {
            Some(Ok(s)) => {
                found.insert(m.id, s);
            }
            Some(Err(why)) => log::debug!("segment {}'s sidecar is not used: {why}", m.id),
            None => {}
        }
    }
    found
}

/// Step 1: the segment ids up to `last_segment`, which must be contiguous from 1.
fn list(
    io: &dyn Io,
    dir: &Path,
    last_segment: Option<u32>,
    report: &mut RecoveryReport,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let listing = Listing::read(io, dir)?;
    report.ignored_files = listing.ignored();
    let mut ids = listing.segments;
    ids.retain(|&id| last_segment.is_none_or(|last| id <= last));
    for (i, &id) in ids.iter().enumerate() {
        if id as usize != i + 1 {
            return Err(Error::corrupt(i as u32 + 1, 0, "segment file is missing"));
        }
    }
    Ok((ids, listing.sidecars))
}

/// Step 1 for an open that leaves its index to decode: segments 1 to `covered`, the
/// ones its checkpoint covers, without listing the directory (which costs what the
/// directory holds), if no segment follows them; `None` (list it) if one does. That
/// they are all there, and nothing else, is for their first use and for the
/// verification after open to find (`deferred_verification.rs`).
fn covered_ids(io: &dyn Io, dir: &Path, covered: usize) -> Result<Option<Vec<u32>>> {
    let Ok(covered) = u32::try_from(covered) else {
        return Ok(None);
    };
    let next = store_dir::segment_path(dir, covered.saturating_add(1));
    let followed = io
        .exists(&next)
        .map_err(|e| Error::io("look for segment", &next, e))?;
    Ok((!followed && covered > 0).then(|| (1..=covered).collect()))
}

/// The end of step 4: whether the end of the log the scan found is on the disk.
fn check_tail(
    scanned: &Scanned,
    dir: &Path,
    read_only: bool,
    report: &mut RecoveryReport,
) -> Result<Option<Unestablished>> {
    let (Some(last), Some(view)) = (scanned.segments.last(), &scanned.last_view) else {
        return Ok(None);
    };
    let end = LogEnd {
        segment: last,
        bytes: view.as_ref().as_ref(),
        group_start: scanned.rebuild.tail.filter(|t| t.0 == last.id).map(|t| t.1),
        covered: scanned.covered.len() == scanned.closed.len() + scanned.segments.len(),
    };
    let (check, unestablished) = tail_check::establish(&end, dir, read_only)?;
    report.tail_check = check;
    Ok(unestablished)
}

/// Step 5, read-write opens only: cuts the torn tail the scan reported and sets aside
/// a newest segment that was still being created.
fn repair_found(
    io: &dyn Io,
    dir: &Path,
    options: &Options,
    scanned: &Scanned,
    report: &RecoveryReport,
) -> Result<()> {
    if let Some((segment, from)) = report.truncated_at {
        // The scan reports a torn tail only in the newest segment, which it keeps.
        let end = from + report.bytes_truncated;
        if let Some(torn) = scanned.segments.iter().find(|s| s.id == segment) {
            let cut = Cut { segment, from, end };
            repair::cut(io, dir, torn.file.as_ref(), cut, options.file_mode())?;
        }
    }
    if let Some(u) = scanned.unfinished {
        repair::set_aside(io, dir, u.id, u.blank)?;
    }
    Ok(())
}

/// The value a pass hands back: the index, the segments and the report.
fn recovered(scanned: Scanned, mut report: RecoveryReport) -> Recovered {
    let Scanned {
        rebuild,
        closed,
        segments,
        covered,
        outdated,
        ..
    } = scanned;
    report.records = rebuild.records;
    report.executions = rebuild.index.len() as u64;
    let checkpoint_current = !outdated
        && covered.len() == closed.len() + segments.len()
        && segments.last().map(|s| s.data_end) == covered.last().map(|d| d.end)
        && report.removed_segments.is_empty();
    Recovered {
        index: rebuild.index,
        keys: rebuild.keys,
        closed,
        segments,
        last_timestamp_ns: rebuild.last_timestamp_ns,
        report,
        checkpoint_current,
        trusted_checkpoint_crc: None,
        lazy: None,
        sidecar_files: Vec::new(),
    }
}
