//! Opening a store: list, scan and verify every segment, cut a torn tail, rebuild the
//! index.
//!
//! Rules (docs/DESIGN.md, "Recovery"):
//! - Segment ids must be contiguous from 1. Files that are not segments are ignored and
//!   listed in the report.
//! - Every record's CRC is verified, and every record must continue its execution's
//!   chain (sequence + 1, `prev` pointing at the previous record). A batch counts only
//!   when its last record (`batch_remaining == 0`) is present.
//! - Torn tail: in the newest segment only, a record that is cut short or fails its
//!   checks, or a batch left incomplete, with no valid record of a *later commit group*
//!   after it (valid records of the same, last group may follow: a power cut keeps or
//!   loses unsynced sectors in any order). It is cut (the bytes zeroed up to the
//!   preallocated length) and reported. The cut starts at the incomplete batch's first
//!   record, so no part of a batch survives.
//! - Anything else that is wrong is `Error::Corrupt` with segment and offset, and open
//!   fails: acknowledged data is never dropped silently.
//! - A newest segment whose header is all zeros was being created when the process
//!   died (nothing in it was acknowledged, see `segment::create`); it is removed.
//! - A checkpoint (`checkpoint.rs`) whose segment digests all match replaces the scan
//!   of the records it covers; the scan continues where it ends, under the same rules.
//!   One that does not match is ignored and reported, and the whole log is scanned.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::checkpoint::{self, SegmentDigest};
use crate::error::{Error, Result};
use crate::idempotency::KeyTables;
use crate::index::Index;
use crate::io::{Io, IoFile};
use crate::options::Options;
use crate::prescan::Prescan;
use crate::rebuild::Rebuild;
use crate::repair::{self, Cut};
use crate::scan::{
    Later, Scanner, SearchWork, Step, first_nonzero, last_nonzero, later_group_record,
};
use crate::segment::{self, HeaderCheck, SEGMENT_HEADER_LEN};
use crate::store_dir::{self, Listing};
use crate::sync::MODEL_CHECKED;

/// What the last open found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Segment files scanned.
    pub segments_scanned: u32,
    /// Valid records found (and indexed).
    pub records: u64,
    /// Executions found.
    pub executions: u64,
    /// Bytes of data scanned, segment headers included.
    pub bytes_scanned: u64,
    /// Where a torn tail was cut: (segment id, offset), if one was.
    pub truncated_at: Option<(u32, u64)>,
    /// How many nonzero bytes the cut removed.
    pub bytes_truncated: u64,
    /// Why the tail counted as torn.
    pub torn_reason: Option<String>,
    /// Newest segments whose header never became durable and that hold no valid
    /// record: an all-zero one is removed, any other is renamed to `<name>.broken`.
    pub removed_segments: Vec<u32>,
    /// Files in the directory that are not segments (left alone).
    pub ignored_files: Vec<String>,
    /// Bytes of records whose index came from a checkpoint (their segments'
    /// checksums verified instead of every record); 0 when none was used.
    pub checkpoint_bytes: u64,
    /// Why a checkpoint present in the directory was not used, if one was not.
    pub checkpoint_ignored: Option<String>,
    /// Records checksummed while looking past a damaged record for a later commit
    /// group (0 when nothing was damaged).
    pub search_candidates: u64,
    /// Bytes those checksums covered: at most twice the segment searched, whatever
    /// its bytes (`scan::CRC_BUDGET_PER_BYTE`).
    pub search_bytes_checksummed: u64,
    /// How open established that the end of the log it serves is on the disk.
    pub tail_check: TailCheck,
    /// How long the scan took.
    pub duration: Duration,
}

/// How open made sure that the end of the log is on the disk, not only in the page
/// cache, before serving it (docs/DESIGN.md, "What was served survives").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TailCheck {
    /// Nothing to check: a checkpoint written after the last clean close's final
    /// fdatasync covers the end of the log (or the store is empty).
    #[default]
    Covered,
    /// The last commit group (or the newest segment's header) was fdatasynced and read
    /// back past the page cache (`O_DIRECT`); `bytes` were compared with the cache.
    Verified {
        /// Bytes compared.
        bytes: u64,
    },
    /// The file system cannot read past its page cache (tmpfs): the cache is all the
    /// storage there is, and the fdatasync is all open can do.
    CacheOnly,
}

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
}

/// The result of a successful recovery.
pub(crate) struct Recovered {
    pub(crate) index: Index,
    /// The idempotency keys of the index's executions.
    pub(crate) keys: KeyTables,
    pub(crate) segments: Vec<RecoveredSegment>,
    pub(crate) last_timestamp_ns: i64,
    pub(crate) report: RecoveryReport,
    /// Whether a checkpoint described the whole log as found (nothing after it).
    pub(crate) checkpoint_current: bool,
}

/// Scans `dir`. With `read_only`, a torn tail is reported but not cut, and a blank
/// newest segment is reported but not removed.
///
/// The end of the log is served only once it is known to be on the disk (see
/// [`TailCheck`]). If it is not, a read-write open zeroes it durably (or removes a
/// segment whose header never reached the disk) and scans again; a read-only open
/// scans again with it hidden. Only the last commit group can be affected, so a second
/// pass finds the end durable; a third is never needed.
pub(crate) fn recover(
    io: &dyn Io,
    dir: &Path,
    options: &Options,
    read_only: bool,
    limit: Option<(u32, u64)>,
) -> Result<Recovered> {
    let started = Instant::now();
    let mut hidden = None;
    let mut dropped: Option<(Cut, String)> = None;
    // A cut an earlier open could not make durable: redone first, or hidden.
    let unfinished = if read_only {
        repair::pending(io, dir)?
    } else {
        repair::finish_pending(io, dir)?
    };
    if let Some(cut) = unfinished {
        hidden = read_only.then_some((cut.segment, cut.from));
        let why = "an earlier open's cut of a torn tail was not durable; it was redone";
        dropped = Some((cut, why.to_string()));
    }
    for _ in 0..3 {
        // A reader never looks past what the writer published.
        let bound = match (hidden, limit) {
            (Some(h), Some(l)) => Some(h.min(l)),
            (h, l) => h.or(l),
        };
        match pass(io, dir, options, read_only, bound, limit.map(|l| l.0))? {
            Pass::Done(recovered) => {
                let mut recovered = *recovered;
                let report = &mut recovered.report;
                if let Some((d, reason)) = dropped
                    && report
                        .truncated_at
                        .is_none_or(|(s, at)| (s, at) > (d.segment, d.from))
                {
                    report.truncated_at = Some((d.segment, d.from));
                    report.bytes_truncated = d.end - d.from;
                    report.torn_reason = Some(reason);
                }
                if !read_only {
                    // Segment files a crashed or failed open created, or kept, reach
                    // the directory durably before anything is served from them.
                    io.sync_dir(dir)
                        .map_err(|e| Error::io("fsync directory", dir, e))?;
                }
                report.duration = started.elapsed();
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

/// What one recovery pass ended with.
enum Pass {
    Done(Box<Recovered>),
    /// The end of the log in the page cache is not what the disk holds.
    NotOnDisk(Unestablished),
}

/// The part of the log's end that is in the page cache but not on the disk: the last
/// commit group, from its start, or (`from == 0`) a new segment's header. Nothing in
/// it was acknowledged: its fdatasync failed, and the kernel then marked the pages
/// clean ("fsyncgate"), so no later fdatasync would write them.
struct Unestablished {
    segment: u32,
    from: u64,
    /// Where the nonzero bytes of the segment end.
    end: u64,
    file: Arc<dyn IoFile>,
    reason: String,
}

/// One scan of `dir`, with the bytes of `hidden` (segment, from) left out.
fn pass(
    io: &dyn Io,
    dir: &Path,
    options: &Options,
    read_only: bool,
    hidden: Option<(u32, u64)>,
    last_segment: Option<u32>,
) -> Result<Pass> {
    let mut report = RecoveryReport::default();
    let listing = Listing::read(io, dir)?;
    report.ignored_files = listing.ignored();
    let mut ids = listing.segments;
    ids.retain(|&id| last_segment.is_none_or(|last| id <= last));
    for (i, &id) in ids.iter().enumerate() {
        if id as usize != i + 1 {
            return Err(Error::corrupt(i as u32 + 1, 0, "segment file is missing"));
        }
    }
    let saved = if options.index_checkpoint {
        checkpoint::load(io, dir, options.index_stride).unwrap_or_else(|why| {
            report.checkpoint_ignored = Some(why);
            None
        })
    } else {
        None
    };
    // Every segment is opened and mapped before the scan: the I/O calls keep one order,
    // and the prescan helper gets the maps to check CRCs ahead of the scan.
    let mut opened = Vec::with_capacity(ids.len());
    for &id in &ids {
        let path = store_dir::segment_path(dir, id);
        let file = io
            .open(&path, read_only)
            .map_err(|e| Error::io("open segment", &path, e))?;
        let capacity = file
            .size()
            .map_err(|e| Error::io("stat segment", &path, e))?;
        if capacity > MAX_SEGMENT_FILE_BYTES {
            // Positions keep offsets in 32 bits: past 4 GiB they would wrap.
            return Err(Error::corrupt(
                id,
                MAX_SEGMENT_FILE_BYTES,
                format!(
                    "segment file is {capacity} bytes, longer than the 4 GiB a segment can \
                     address; it was not written by execlog"
                ),
            ));
        }
        // A reader in another process maps its bounded segment only up to the bound:
        // past it, the live writer is writing.
        let mapped = match (last_segment, hidden) {
            (Some(last), Some((s, from))) if last == id && s == id => capacity.min(from),
            _ => capacity,
        };
        let view = file
            .map(mapped)
            .map_err(|e| Error::io("mmap segment", &path, e))?;
        opened.push((id, path, file, capacity, view));
    }
    // Used only if its digests match the segments (`checkpoint.rs`).
    let maps: Vec<&[u8]> = opened.iter().map(|o| o.4.as_ref().as_ref()).collect();
    let saved = saved.and_then(|c| {
        let mut keys = KeyTables::new(options.key_hash_bits);
        match verify_digests(&c.segments, &maps)
            .and_then(|()| checkpoint::check_records(&c, &maps, &mut keys))
        {
            Ok(deleted) => {
                let mut c = c;
                for no in deleted {
                    c.index.mark_deleting(no);
                    c.index.delete(no);
                    keys.forget(no);
                }
                Some((c, keys))
            }
            Err(why) => {
                report.checkpoint_ignored = Some(why);
                None
            }
        }
    });
    let (mut rebuild, covered) = match saved {
        Some((c, keys)) => {
            report.checkpoint_bytes = c.segments.iter().map(|d| d.end).sum();
            (
                Rebuild::resume(c.index, keys, c.last_timestamp_ns),
                c.segments,
            )
        }
        None => (
            Rebuild::resume(
                Index::new(options.index_stride),
                KeyTables::new(options.key_hash_bits),
                0,
            ),
            Vec::new(),
        ),
    };
    // Where the scan of each segment starts: after what the checkpoint covers.
    let start_of = |i: usize| {
        covered
            .get(i)
            .map_or(SEGMENT_HEADER_LEN, |d| d.end as usize)
    };
    let prescan = Prescan::start(
        opened
            .iter()
            .enumerate()
            .map(|(i, o)| (Arc::clone(&o.4), start_of(i)))
            .collect(),
    );
    let mut segments = Vec::new();
    let mut blank = false;
    let mut torn = None;
    let count = opened.len();
    let mut last_view = None;
    for (i, (id, path, file, capacity, view)) in opened.into_iter().enumerate() {
        let newest = i + 1 == count;
        if let Some(&digest) = covered.get(i)
            && i + 1 < covered.len()
        {
            // Wholly covered by the checkpoint, its checksum and zero tail verified.
            report.segments_scanned += 1;
            report.bytes_scanned += digest.end;
            let version = segment::version_of(view.as_ref().as_ref());
            segments.push(RecoveredSegment {
                id,
                file,
                data_end: digest.end,
                file_len: capacity,
                digest: Some(digest),
                version,
            });
            last_view = Some(view);
            continue;
        }
        let (data_end, digest) = {
            let bytes = view.as_ref().as_ref();
            let bytes = match hidden {
                Some((s, from)) if s == id => bytes.get(..from as usize).unwrap_or(bytes),
                _ => bytes,
            };
            report.segments_scanned += 1;
            let check = segment::check_header(bytes, id);
            match check {
                HeaderCheck::Valid => {}
                HeaderCheck::Version(version) => {
                    return Err(Error::UnsupportedFormat { path, version });
                }
                HeaderCheck::Blank | HeaderCheck::Bad(_)
                    if newest && search_after(&mut report, bytes, 0) == Later::None =>
                {
                    // `segment::create` syncs the header before any record is written,
                    // so this file was still being created: nothing in it was acked.
                    report.removed_segments.push(id);
                    blank = check == HeaderCheck::Blank;
                    break;
                }
                HeaderCheck::Blank => {
                    return Err(Error::corrupt(id, 0, "segment header is blank"));
                }
                HeaderCheck::Bad(why) => return Err(Error::corrupt(id, 0, why)),
            }
            let scan = SegmentScan {
                bytes,
                start: start_of(i),
                id,
                newest,
                prescan: (&prescan, i),
            };
            let data_end = scan_segment(&mut rebuild, &mut report, &scan)?;
            let digest = match covered.get(i) {
                Some(&d) => Some(
                    d.extend(
                        bytes
                            .get(d.end as usize..data_end as usize)
                            .unwrap_or_default(),
                    ),
                ),
                None if newest => Some(SegmentDigest::of(bytes, data_end)),
                None => None,
            };
            (data_end, digest)
        };
        report.bytes_scanned += data_end;
        if let Some((_, cut)) = report.truncated_at.filter(|&(s, _)| s == id)
            && !read_only
        {
            torn = Some((Arc::clone(&file), id, cut));
        }
        let version = segment::version_of(view.as_ref().as_ref());
        segments.push(RecoveredSegment {
            id,
            file,
            data_end,
            file_len: capacity,
            digest,
            version,
        });
        last_view = Some(view);
    }
    // Appends continue in the last segment kept, which needs its digest: it is not the
    // newest file if a blank newest one was removed.
    if let (Some(last), Some(view)) = (segments.last_mut(), &last_view)
        && last.digest.is_none()
    {
        last.digest = Some(SegmentDigest::of(view.as_ref().as_ref(), last.data_end));
    }
    // The helper reads the maps: it stops before anything writes to a segment.
    prescan.finish();
    if let (Some(last), Some(view)) = (segments.last(), &last_view) {
        let end = LogEnd {
            segment: last,
            bytes: view.as_ref().as_ref(),
            group_start: rebuild.tail.filter(|t| t.0 == last.id).map(|t| t.1),
            covered: covered.len() == segments.len(),
        };
        let (check, unestablished) = establish(&end, dir, read_only)?;
        report.tail_check = check;
        if let Some(u) = unestablished {
            return Ok(Pass::NotOnDisk(u));
        }
    }
    if let Some((file, segment, from)) = torn {
        let end = from + report.bytes_truncated;
        repair::cut(
            io,
            dir,
            file.as_ref(),
            Cut { segment, from, end },
            options.file_mode(),
        )?;
    }
    if !read_only {
        for &id in &report.removed_segments {
            let path = store_dir::segment_path(dir, id);
            if blank {
                io.remove(&path)
                    .map_err(|e| Error::io("remove blank segment", &path, e))?;
            } else {
                let aside = store_dir::broken_path(dir, id);
                io.rename(&path, &aside)
                    .map_err(|e| Error::io("set aside unfinished segment", &path, e))?;
            }
            io.sync_dir(dir)
                .map_err(|e| Error::io("fsync directory", dir, e))?;
        }
    }
    report.records = rebuild.records;
    report.executions = rebuild.index.len() as u64;
    let checkpoint_current = covered.len() == segments.len()
        && segments.last().map(|s| s.data_end) == covered.last().map(|d| d.end)
        && report.removed_segments.is_empty();
    Ok(Pass::Done(Box::new(Recovered {
        index: rebuild.index,
        keys: rebuild.keys,
        segments,
        last_timestamp_ns: rebuild.last_timestamp_ns,
        report,
        checkpoint_current,
    })))
}

/// The end of the log as a pass found it: the last segment kept.
struct LogEnd<'a> {
    segment: &'a RecoveredSegment,
    bytes: &'a [u8],
    /// Where the last commit group with a record this pass scanned starts, if the
    /// segment holds one.
    group_start: Option<u32>,
    /// Whether a checkpoint covers the segment (and so the records before any scanned).
    covered: bool,
}

/// Bytes compared per direct read.
const CHECK_CHUNK_BYTES: u64 = 1 << 20;

/// Establishes that the end of the log is on the disk before open serves it.
///
/// Every commit group but the last was fdatasynced successfully before the next one
/// was written, and a new segment's header before any record went in. So only the
/// last group (or, in a segment without records, its header) can be in the page cache
/// without being on the disk: after a crash between write and fdatasync (the pages
/// are dirty: the fdatasync here writes them), or after a failed fdatasync (the
/// kernel may have marked them clean without writing them: no fdatasync will). Those
/// bytes are read back past the cache and compared; a difference is returned, to be
/// cut. A checkpoint that covers the segment was written after the clean close's last
/// fdatasync succeeded, so then nothing needs checking.
fn establish(
    end: &LogEnd<'_>,
    dir: &Path,
    read_only: bool,
) -> Result<(TailCheck, Option<Unestablished>)> {
    let last = end.segment;
    let (from, what) = match end.group_start {
        Some(g) => (u64::from(g), "the last commit group"),
        None if end.covered => return Ok((TailCheck::Covered, None)),
        None => (0, "the segment header"),
    };
    let to = if end.group_start.is_some() {
        last.data_end
    } else {
        SEGMENT_HEADER_LEN as u64
    };
    let path = store_dir::segment_path(dir, last.id);
    if !read_only {
        last.file
            .sync_data()
            .map_err(|e| Error::io("fdatasync the end of the log", &path, e))?;
    }
    let mut at = from;
    while at < to {
        let len = (to - at).min(CHECK_CHUNK_BYTES) as usize;
        let disk = last
            .file
            .read_durable(at, len)
            .map_err(|e| Error::io("read the end of the log past the page cache", &path, e))?;
        let Some(disk) = disk else {
            return Ok((TailCheck::CacheOnly, None));
        };
        if end.bytes.get(at as usize..at as usize + len) != Some(&disk[..]) {
            let unestablished = Unestablished {
                segment: last.id,
                from,
                end: last_nonzero(end.bytes)
                    .map_or(from, |i| i as u64 + 1)
                    .max(from),
                file: Arc::clone(&last.file),
                reason: format!(
                    "{what} (from offset {from}) is in the page cache but not on the disk: \
                     its fdatasync failed, so it was never acknowledged"
                ),
            };
            return Ok((
                TailCheck::Verified { bytes: at - from },
                Some(unestablished),
            ));
        }
        at += len as u64;
    }
    Ok((TailCheck::Verified { bytes: to - from }, None))
}

/// Checks a checkpoint's segment digests against the mapped segments: the checksum of
/// each covered segment's records, and zeros after the records of each covered segment
/// but the last (the rule a full scan applies to sealed segments). `Err` says what
/// differs; the caller then scans everything.
fn verify_digests(digests: &[SegmentDigest], maps: &[&[u8]]) -> std::result::Result<(), String> {
    if digests.len() > maps.len() {
        return Err(format!(
            "covers {} segments, the directory holds {}",
            digests.len(),
            maps.len()
        ));
    }
    let check = |i: usize, d: SegmentDigest, bytes: &[u8]| {
        let id = i as u32 + 1;
        if segment::check_header(bytes, id) != HeaderCheck::Valid {
            return Err(format!("segment {id}: header is not valid"));
        }
        if d.end > bytes.len() as u64 {
            return Err(format!("segment {id}: shorter than the covered records"));
        }
        if SegmentDigest::of(bytes, d.end) != d {
            return Err(format!("segment {id}: checksum of the records differs"));
        }
        if i + 1 < digests.len() && first_nonzero(bytes, d.end as usize).is_some() {
            return Err(format!("segment {id}: bytes after the covered records"));
        }
        Ok(())
    };
    let work: Vec<(usize, SegmentDigest, &[u8])> = digests
        .iter()
        .zip(maps)
        .enumerate()
        .map(|(i, (&d, &bytes))| (i, d, bytes))
        .collect();
    let total: u64 = digests.iter().map(|d| d.end).sum();
    if MODEL_CHECKED || total < PARALLEL_DIGEST_BYTES {
        return work.into_iter().try_for_each(|(i, d, b)| check(i, d, b));
    }
    // Two halves of the work, one on a helper thread: checksums are memory-bound and
    // the machine has a second core. Segments alternate so that sizes even out.
    let (mine, theirs): (Vec<_>, Vec<_>) = work.into_iter().partition(|w| w.0 % 2 == 0);
    std::thread::scope(|scope| {
        let helper = scope.spawn(|| theirs.into_iter().try_for_each(|(i, d, b)| check(i, d, b)));
        let here = mine.into_iter().try_for_each(|(i, d, b)| check(i, d, b));
        let there = helper
            .join()
            .unwrap_or_else(|_| Err("checksum thread panicked".into()));
        here.and(there)
    })
}

/// Longest segment file open accepts: record offsets are 32-bit.
const MAX_SEGMENT_FILE_BYTES: u64 = u32::MAX as u64;

/// Stores smaller than this verify checkpoint digests on one thread; larger ones on
/// two, in every build (`tests/checkpoint.rs` opens one that large).
const PARALLEL_DIGEST_BYTES: u64 = 8 << 20;

/// One segment to scan.
struct SegmentScan<'a> {
    bytes: &'a [u8],
    /// Where its first record not covered by a checkpoint starts.
    start: usize,
    id: u32,
    newest: bool,
    /// The helper checking CRCs ahead, and this segment's position in the scan.
    prescan: (&'a Prescan, usize),
}

/// Scans one segment into `rebuild`; returns where its data ends (after any cut).
fn scan_segment(
    rebuild: &mut Rebuild,
    report: &mut RecoveryReport,
    scan: &SegmentScan<'_>,
) -> Result<u64> {
    let SegmentScan {
        bytes,
        start,
        id,
        newest,
        ..
    } = *scan;
    let (prescan, position) = scan.prescan;
    rebuild.segment_version = segment::version_of(bytes);
    let mut stop = None;
    let mut scanner = Scanner::trusting(bytes, start, prescan.verified(position));
    prescan.scanning(position, start);
    let mut n = 0usize;
    while let Some(step) = scanner.next() {
        n += 1;
        if n.is_multiple_of(64) {
            prescan.scanning(position, scanner.offset());
        }
        match step {
            Step::Record {
                offset,
                header,
                body,
            } => rebuild.add(id, offset as u64, header, body)?,
            Step::End { offset } => stop = Some((offset, None)),
            Step::Invalid { offset, why } => stop = Some((offset, Some(why.to_string()))),
        }
    }
    let (stop, invalid) = stop.unwrap_or((bytes.len(), None));
    let garbage = first_nonzero(bytes, stop);
    if invalid.is_none() && garbage.is_none() && rebuild.batch.is_empty() {
        return Ok(stop as u64);
    }
    let why = match (&invalid, garbage) {
        (Some(why), _) => why.clone(),
        (None, Some(at)) => format!("unexpected bytes at offset {at} after the last record"),
        (None, None) => "the last batch is incomplete".to_string(),
    };
    // Damage inside the last commit group is what a crash leaves of a group whose
    // fdatasync never returned: nothing in it was acknowledged. A valid record of a
    // later group proves the damaged group was synced: that is corruption.
    match search_after(report, bytes, stop) {
        Later::None => {}
        Later::Found { offset, .. } => {
            return Err(Error::corrupt(
                id,
                stop as u64,
                format!("{why}, yet a later commit group follows at offset {offset}"),
            ));
        }
        Later::Undecided => {
            return Err(Error::corrupt(
                id,
                stop as u64,
                format!(
                    "{why}, followed by more plausible record headers than a log holds \
                     (crafted or garbage bytes); cannot tell a torn tail from corruption"
                ),
            ));
        }
    }
    if !newest {
        return Err(Error::corrupt(
            id,
            stop as u64,
            format!("{why} in a sealed segment"),
        ));
    }
    let cut = rebuild.batch_start.unwrap_or(stop as u64);
    let data_end = last_nonzero(bytes).map_or(0, |i| i as u64 + 1);
    rebuild.batch.clear();
    rebuild.batch_start = None;
    report.truncated_at = Some((id, cut));
    report.bytes_truncated = data_end.saturating_sub(cut);
    report.torn_reason = Some(why);
    Ok(cut)
}

/// Looks for a record of a commit group that started after `damaged`, counting the
/// work in the report.
fn search_after(report: &mut RecoveryReport, bytes: &[u8], damaged: usize) -> Later {
    let mut work = SearchWork::default();
    let later = later_group_record(bytes, damaged, &mut work);
    report.search_candidates += work.candidates;
    report.search_bytes_checksummed += work.bytes_checksummed;
    later
}
