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

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec;
use crate::error::{Error, Result};
use crate::ids::TenantId;
use crate::index::Index;
use crate::io::{Io, IoFile};
use crate::options::Options;
use crate::prescan::Prescan;
use crate::record::{Header, Kind, Pos};
use crate::scan::{Scanner, Step, first_nonzero, last_nonzero, valid_record_after};
use crate::segment::{self, HeaderCheck, SEGMENT_HEADER_LEN};

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
    /// How long the scan took.
    pub duration: Duration,
}

/// One recovered segment, ready to be opened for reads (and the last for appends).
pub(crate) struct RecoveredSegment {
    pub(crate) id: u32,
    pub(crate) file: Arc<dyn IoFile>,
    pub(crate) data_end: u64,
    /// The file's length: how far it is zeroed (or written).
    pub(crate) file_len: u64,
}

/// The result of a successful recovery.
pub(crate) struct Recovered {
    pub(crate) index: Index,
    pub(crate) segments: Vec<RecoveredSegment>,
    pub(crate) last_timestamp_ns: i64,
    pub(crate) report: RecoveryReport,
}

/// A record waiting for the rest of its batch.
struct Waiting {
    header: Header,
    pos: Pos,
    tenant: Option<TenantId>,
    execution_id: Option<String>,
}

/// Rebuilds the index from the records, batch by batch.
struct Rebuild {
    index: Index,
    batch: Vec<Waiting>,
    batch_start: Option<u64>,
    last_timestamp_ns: i64,
    records: u64,
}

/// Scans `dir`. With `read_only`, a torn tail is reported but not cut, and a blank
/// newest segment is reported but not removed.
pub(crate) fn recover(
    io: &dyn Io,
    dir: &Path,
    options: &Options,
    read_only: bool,
) -> Result<Recovered> {
    let started = Instant::now();
    let mut report = RecoveryReport::default();
    let mut ids = Vec::new();
    for name in io
        .list(dir)
        .map_err(|e| Error::io("list directory", dir, e))?
    {
        match segment::parse_file_name(&name) {
            Some(id) => ids.push(id),
            None if name == crate::log_store::LOCK_FILE => {}
            None => report.ignored_files.push(name),
        }
    }
    ids.sort_unstable();
    report.ignored_files.sort();
    for (i, &id) in ids.iter().enumerate() {
        if id as usize != i + 1 {
            return Err(Error::corrupt(i as u32 + 1, 0, "segment file is missing"));
        }
    }
    let mut rebuild = Rebuild {
        index: Index::new(options.index_stride),
        batch: Vec::new(),
        batch_start: None,
        last_timestamp_ns: 0,
        records: 0,
    };
    // Every segment is opened and mapped before the scan: the I/O calls keep one order,
    // and the prescan helper gets the maps to check CRCs ahead of the scan.
    let mut opened = Vec::with_capacity(ids.len());
    for &id in &ids {
        let path = segment::path(dir, id);
        let file = io
            .open(&path, read_only)
            .map_err(|e| Error::io("open segment", &path, e))?;
        let capacity = file
            .size()
            .map_err(|e| Error::io("stat segment", &path, e))?;
        let view = file
            .map(capacity)
            .map_err(|e| Error::io("mmap segment", &path, e))?;
        opened.push((id, path, file, capacity, view));
    }
    let prescan = Prescan::start(opened.iter().map(|o| Arc::clone(&o.4)).collect());
    let mut segments = Vec::new();
    let mut blank = false;
    let mut torn = None;
    let count = opened.len();
    for (i, (id, path, file, capacity, view)) in opened.into_iter().enumerate() {
        let newest = i + 1 == count;
        let data_end = {
            let bytes = view.as_ref().as_ref();
            report.segments_scanned += 1;
            let check = segment::check_header(bytes, id);
            match check {
                HeaderCheck::Valid => {}
                HeaderCheck::Version(version) => {
                    return Err(Error::UnsupportedFormat { path, version });
                }
                HeaderCheck::Blank | HeaderCheck::Bad(_)
                    if newest && valid_record_after(bytes, 0).is_none() =>
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
                id,
                newest,
                prescan: (&prescan, i),
            };
            scan_segment(&mut rebuild, &mut report, &scan)?
        };
        report.bytes_scanned += data_end;
        if let Some((_, cut)) = report.truncated_at.filter(|&(s, _)| s == id)
            && !read_only
        {
            torn = Some((Arc::clone(&file), path, cut));
        }
        segments.push(RecoveredSegment {
            id,
            file,
            data_end,
            file_len: capacity,
        });
    }
    // The helper reads the maps: it stops before anything writes to a segment.
    prescan.finish();
    if let Some((file, path, cut)) = torn {
        cut_tail(file.as_ref(), &path, cut, cut + report.bytes_truncated)?;
    }
    if !read_only {
        for &id in &report.removed_segments {
            let path = segment::path(dir, id);
            if blank {
                io.remove(&path)
                    .map_err(|e| Error::io("remove blank segment", &path, e))?;
            } else {
                let aside = path.with_extension("seg.broken");
                io.rename(&path, &aside)
                    .map_err(|e| Error::io("set aside unfinished segment", &path, e))?;
            }
            io.sync_dir(dir)
                .map_err(|e| Error::io("fsync directory", dir, e))?;
        }
    }
    report.records = rebuild.records;
    report.executions = rebuild.index.len() as u64;
    report.duration = started.elapsed();
    Ok(Recovered {
        index: rebuild.index,
        segments,
        last_timestamp_ns: rebuild.last_timestamp_ns,
        report,
    })
}

/// One segment to scan.
struct SegmentScan<'a> {
    bytes: &'a [u8],
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
        bytes, id, newest, ..
    } = *scan;
    let (prescan, position) = scan.prescan;
    let mut stop = None;
    let mut scanner = Scanner::trusting(bytes, SEGMENT_HEADER_LEN, prescan.verified(position));
    prescan.scanning(position, SEGMENT_HEADER_LEN);
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
    let mut from = stop;
    while let Some((next, header)) = valid_record_after(bytes, from) {
        if header.group_start as usize > stop {
            return Err(Error::corrupt(
                id,
                stop as u64,
                format!("{why}, yet a later commit group follows at offset {next}"),
            ));
        }
        from = next;
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

/// Zeroes `[cut, end)` of a segment durably, by overwriting (see `segment.rs` for why
/// not by truncating).
fn cut_tail(file: &dyn IoFile, path: &Path, cut: u64, end: u64) -> Result<()> {
    segment::write_zeros(file, cut, end).map_err(|e| Error::io("zero torn tail", path, e))?;
    file.sync_data()
        .map_err(|e| Error::io("fdatasync after cutting the tail", path, e))
}

impl Rebuild {
    /// Takes one valid record; applies its batch once the batch is complete.
    fn add(&mut self, segment: u32, offset: u64, header: Header, body: &[u8]) -> Result<()> {
        let corrupt = |why: &str| Error::corrupt(segment, offset, why);
        if header.kind == Kind::Seal {
            if !self.batch.is_empty() {
                return Err(corrupt("seal inside a batch"));
            }
            return Ok(());
        }
        if let Some(last) = self.batch.last() {
            if header.batch_remaining + 1 != last.header.batch_remaining
                || header.execution != last.header.execution
            {
                return Err(corrupt("record breaks the batch before it"));
            }
        } else {
            self.batch_start = Some(offset);
        }
        let (tenant, execution_id) = if header.sequence == 1 {
            match codec::decode_declaration(body) {
                Ok(Some(d)) => (Some(TenantId::from(d.tenant_id)), Some(d.execution_id)),
                Ok(None) => return Err(corrupt("first record of an execution has no declaration")),
                Err(why) => return Err(Error::corrupt(segment, offset, why)),
            }
        } else {
            (None, None)
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
        });
        if header.batch_remaining == 0 {
            self.apply_batch()?;
        }
        Ok(())
    }

    fn apply_batch(&mut self) -> Result<()> {
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
            } else {
                let no = u32::try_from(h.execution).map_err(|_| corrupt("unknown execution"))?;
                let Some(e) = self.index.get(no) else {
                    return Err(corrupt("record of an unknown execution"));
                };
                if h.sequence != e.reserved_seq + 1 || h.prev != Some(e.reserved_pos) {
                    return Err(corrupt("record does not continue its execution's chain"));
                }
                self.index.reserve(no, h.sequence, w.pos);
                self.index.make_durable(no, h.sequence, w.pos);
            }
            self.last_timestamp_ns = self.last_timestamp_ns.max(h.timestamp_ns);
            self.records += 1;
        }
        self.batch = batch;
        self.batch_start = None;
        Ok(())
    }
}
