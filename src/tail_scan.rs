//! Open's fourth step: the scan of every record the saved index does not cover (all of
//! them without a checkpoint), front to back, rebuilding the index (`rebuild.rs`) and
//! deciding where each segment's records stop (docs/DESIGN.md, "Recovery (open)").
//!
//! Rules:
//! - Every record's CRC is verified (or the prescan helper's word that it checked it,
//!   `prescan.rs`), and every record must continue its execution's chain. A batch
//!   counts only when its last record (`batch_remaining == 0`) is present.
//! - Torn tail: in the newest segment only, a record that is cut short or fails its
//!   checks, or a batch left incomplete, with no valid record of a *later commit group*
//!   after it (valid records of the same, last group may follow: a power cut keeps or
//!   loses unsynced sectors in any order). It is reported here, cut by the repair step;
//!   the cut starts at the incomplete batch's first record, so no part of a batch
//!   survives.
//! - Anything else that is wrong is `Error::Corrupt` with segment and offset:
//!   acknowledged data is never dropped silently.
//! - A newest segment whose header never became durable and that holds no valid record
//!   was being created when the process died (nothing in it was acknowledged, see
//!   `segment::create`): it is reported, and set aside by the repair step.
//!
//! Invariant: nothing here writes or calls the file system; it reads the maps only, and
//! the prescan helper is joined before [`scan`] returns.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::checkpoint::SegmentDigest;
use crate::error::{Error, Result};
use crate::io::Mapped;
use crate::open::RecoveredSegment;
use crate::prescan::Prescan;
use crate::rebuild::Rebuild;
use crate::recovery_report::RecoveryReport;
use crate::saved_index::Start;
use crate::scan::{
    Later, Scanner, SearchWork, Step, first_nonzero, last_nonzero, later_group_record,
};
use crate::segment::{self, HeaderCheck, SEGMENT_HEADER_LEN};
use crate::segment_maps::SegmentMap;
use crate::sidecar::Summary;

/// What the scan found.
pub(crate) struct Scanned {
    /// The index rebuilt up to the end of the log.
    pub(crate) rebuild: Rebuild,
    /// The sealed segments before `maps` that open left closed (from segment 1): the
    /// checkpoint covers them wholly, and its digests are their word.
    pub(crate) closed: Vec<SegmentDigest>,
    /// The segments kept after those, in id order.
    pub(crate) segments: Vec<RecoveredSegment>,
    /// The map of the last segment kept.
    pub(crate) last_view: Option<Mapped>,
    /// The newest segment, if it was still being created (not kept).
    pub(crate) unfinished: Option<Unfinished>,
    /// The digests of the segments the checkpoint covered.
    pub(crate) covered: Vec<SegmentDigest>,
    /// Whether that checkpoint has an older layout than the one written.
    pub(crate) outdated: bool,
    /// The sidecars taken instead of scanning their segments (held for the decode).
    pub(crate) sidecars: Vec<Summary>,
}

/// A newest segment whose header never became durable, holding no valid record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unfinished {
    pub(crate) id: u32,
    /// Whether the file is all zeros (removed) rather than other bytes (set aside).
    pub(crate) blank: bool,
}

/// Scans `maps` (the segments after the first `closed`, which open left closed, in id
/// order) from `start`, leaving out the bytes of `hidden` (segment, from). A sealed
/// segment the checkpoint does not cover is taken from its sidecar in `sidecars`
/// instead, if the tail is held for a decode after open and the sidecar fits.
pub(crate) fn scan(
    maps: Vec<SegmentMap>,
    (start, closed): (Start, usize),
    (hidden, sidecars): (Option<(u32, u64)>, &BTreeMap<u32, Summary>),
    report: &mut RecoveryReport,
) -> Result<Scanned> {
    let Start {
        mut rebuild,
        covered,
        outdated,
        ..
    } = start;
    let taken = take_sidecars(&maps, (&covered, closed), rebuild.held.is_some(), sidecars);
    let prescan = Prescan::start(
        maps.iter()
            .zip(&taken)
            .enumerate()
            .map(|(j, (m, s))| {
                let start = match s {
                    Some(_) => m.bytes().len(),
                    None => start_of(&covered, closed + j),
                };
                (Arc::clone(&m.view), start)
            })
            .collect(),
    );
    let mut segments = Vec::with_capacity(maps.len());
    let mut last_view = None;
    let mut unfinished = None;
    let count = maps.len();
    let closed = covered.get(..closed).unwrap_or_default().to_vec();
    for d in &closed {
        report.segments_scanned += 1;
        report.segments_left_closed += 1;
        report.bytes_scanned += d.end;
    }
    for (j, m) in maps.into_iter().enumerate() {
        let i = closed.len() + j;
        report.segments_scanned += 1;
        let scan = SegmentScan {
            bytes: visible(&m, hidden),
            start: start_of(&covered, i),
            id: m.id,
            newest: j + 1 == count,
            prescan: (&prescan, j),
        };
        let (data_end, digest) = match (covered.get(i), taken.get(j).copied().flatten()) {
            (Some(&d), _) if i + 1 < covered.len() => {
                // Wholly covered by the checkpoint, its checksum and zero tail verified.
                report.bytes_scanned += d.end;
                (d.end, Some(d))
            }
            (_, Some(s)) => {
                // Its records are the decode's to scan; the sidecar says what open needs.
                s.hold(&mut rebuild);
                report.bytes_scanned += s.end;
                report.segments_from_sidecars += 1;
                (s.end, None)
            }
            (part, None) => {
                match scan_records(&mut rebuild, report, &scan, &m.path, part.copied())? {
                    Outcome::Kept { data_end, digest } => (data_end, digest),
                    Outcome::Unfinished { blank } => {
                        unfinished = Some(Unfinished { id: m.id, blank });
                        break;
                    }
                }
            }
        };
        segments.push(RecoveredSegment {
            id: m.id,
            version: segment::version_of(m.bytes()),
            file: m.file,
            data_end,
            file_len: m.capacity,
            digest,
            view: Some(Arc::clone(&m.view)),
        });
        last_view = Some(m.view);
    }
    complete_last_digest(&mut segments, last_view.as_ref());
    // The helper reads the maps: it stops before anything writes to a segment.
    prescan.finish();
    Ok(Scanned {
        rebuild,
        closed,
        segments,
        last_view,
        unfinished,
        covered,
        outdated,
        sidecars: taken.into_iter().flatten().cloned().collect(),
    })
}

/// For each of `maps`, the sidecar the scan takes instead of its records: only while
/// the tail is `held` for a decode after open, only for a sealed segment (not the
/// newest) that the checkpoint does not cover at all, and only one that fits its map.
fn take_sidecars<'a>(
    maps: &[SegmentMap],
    (covered, closed): (&[SegmentDigest], usize),
    held: bool,
    sidecars: &'a BTreeMap<u32, Summary>,
) -> Vec<Option<&'a Summary>> {
    let count = maps.len();
    (maps.iter().enumerate())
        .map(|(j, m)| {
            let eligible = held && j + 1 < count && covered.len() <= closed + j;
            eligible
                .then(|| sidecars.get(&m.id))
                .flatten()
                .filter(|s| s.fits(m.id, m.bytes()))
        })
        .collect()
}

/// Appends continue in the last segment kept, which needs its digest: it is not the
/// newest file (whose digest the scan computed) if a newest one was unfinished.
fn complete_last_digest(segments: &mut [RecoveredSegment], last_view: Option<&Mapped>) {
    if let (Some(last), Some(view)) = (segments.last_mut(), last_view)
        && last.digest.is_none()
    {
        last.digest = Some(SegmentDigest::of(view.as_ref().as_ref(), last.data_end));
    }
}

/// Where the scan of segment `i` starts: after what the checkpoint covers.
fn start_of(covered: &[SegmentDigest], i: usize) -> usize {
    covered
        .get(i)
        .map_or(SEGMENT_HEADER_LEN, |d| d.end as usize)
}

/// The bytes of `m` the scan may see: all of them, or those before `hidden`.
fn visible(m: &SegmentMap, hidden: Option<(u32, u64)>) -> &[u8] {
    let bytes = m.bytes();
    match hidden {
        Some((s, from)) if s == m.id => bytes.get(..from as usize).unwrap_or(bytes),
        _ => bytes,
    }
}

/// What became of one scanned segment.
enum Outcome {
    /// Kept: where its records end (after any cut) and their digest, if known.
    Kept {
        data_end: u64,
        digest: Option<SegmentDigest>,
    },
    /// A newest segment still being created.
    Unfinished { blank: bool },
}

/// Checks the header of `scan`'s segment and scans its records; `covered` is what the
/// checkpoint covers of it.
fn scan_records(
    rebuild: &mut Rebuild,
    report: &mut RecoveryReport,
    scan: &SegmentScan<'_>,
    path: &Path,
    covered: Option<SegmentDigest>,
) -> Result<Outcome> {
    let SegmentScan {
        bytes, id, newest, ..
    } = *scan;
    let check = segment::check_header(bytes, id);
    match check {
        HeaderCheck::Valid => {}
        HeaderCheck::Version(version) => {
            let path = path.to_path_buf();
            return Err(Error::UnsupportedFormat { path, version });
        }
        HeaderCheck::Blank | HeaderCheck::Bad(_)
            if newest && search_after(report, bytes, 0) == Later::None =>
        {
            // `segment::create` syncs the header before any record is written, so
            // this file was still being created: nothing in it was acknowledged.
            report.removed_segments.push(id);
            let blank = check == HeaderCheck::Blank;
            return Ok(Outcome::Unfinished { blank });
        }
        HeaderCheck::Blank => return Err(Error::corrupt(id, 0, "segment header is blank")),
        HeaderCheck::Bad(why) => return Err(Error::corrupt(id, 0, why)),
    }
    let data_end = scan_segment(rebuild, report, scan)?;
    let digest = match covered {
        Some(d) => Some(
            d.extend(
                bytes
                    .get(d.end as usize..data_end as usize)
                    .unwrap_or_default(),
            ),
        ),
        None if newest => Some(SegmentDigest::of(bytes, data_end)),
        None => None,
    };
    report.bytes_scanned += data_end;
    Ok(Outcome::Kept { data_end, digest })
}

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
        bytes, id, newest, ..
    } = *scan;
    let (stop, invalid) = add_records(rebuild, scan)?;
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

/// Adds the valid records of `scan`'s segment to `rebuild`, from its start to where
/// they stop; returns that offset and, if a record there is invalid, why.
fn add_records(rebuild: &mut Rebuild, scan: &SegmentScan<'_>) -> Result<(usize, Option<String>)> {
    let SegmentScan {
        bytes, start, id, ..
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
    Ok(stop.unwrap_or((bytes.len(), None)))
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
