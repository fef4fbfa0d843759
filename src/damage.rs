//! A survey of a damaged store: where its segments are damaged and what can still be
//! read, for a store that open refuses (`Error::Corrupt`). `execlog verify` runs it
//! when the store does not open.
//!
//! It reads every segment file through read-only handles, record by record, and
//! changes nothing. Past a damaged record it resumes at the next 8-byte boundary where
//! a whole record with a matching CRC starts, so one bad sector costs only the records
//! it touches; the bytes in between are one damaged range. It checks records one by
//! one (CRC and fields), not the chains between them: what it counts as readable is what
//! a salvage could still decode. Bytes crafted to hold many plausible headers make the
//! search past damage slow (each candidate's CRC is computed); it is a diagnostic, run
//! by hand, not part of open.

use std::path::Path;

use crate::error::{Error, Result};
use crate::io::{Io, Mapped};
use crate::record::{self, Decoded, Header, Kind, Pos, RECORD_ALIGN};
use crate::segment::{self, HeaderCheck, SEGMENT_HEADER_LEN};
use crate::store_dir;

/// What the survey found in one segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SegmentSurvey {
    /// The segment's id (its file name without extension).
    pub segment: u32,
    /// Event records whose CRC and fields are intact.
    pub readable_events: u64,
    /// Damaged byte ranges `[from, to)`, each with the first reason found there.
    pub damaged: Vec<(u64, u64, String)>,
}

/// Surveys every segment file of the store in `dir`, in id order.
pub fn survey_damage(dir: impl AsRef<Path>) -> Result<Vec<SegmentSurvey>> {
    survey_with(&crate::io::RealIo, dir.as_ref())
}

pub(crate) fn survey_with(io: &dyn Io, dir: &Path) -> Result<Vec<SegmentSurvey>> {
    let mut surveys = Vec::new();
    for id in segment_ids(io, dir)? {
        let map = map_segment(io, dir, id)?;
        let mut readable_events = 0;
        let damaged = walk_segment(map.as_ref().as_ref(), id, |_, header, _| {
            readable_events += u64::from(header.kind == Kind::Event);
        });
        surveys.push(SegmentSurvey {
            segment: id,
            readable_events,
            damaged,
        });
    }
    Ok(surveys)
}

/// The ids of the segment files in `dir`, ascending.
pub(crate) fn segment_ids(io: &dyn Io, dir: &Path) -> Result<Vec<u32>> {
    let mut ids: Vec<u32> = io
        .list(dir)
        .map_err(|e| Error::io("list directory", dir, e))?
        .iter()
        .filter_map(|n| store_dir::parse_segment_name(n))
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Segment `id` of `dir`, mapped whole through a read-only handle.
pub(crate) fn map_segment(io: &dyn Io, dir: &Path, id: u32) -> Result<Mapped> {
    let path = store_dir::segment_path(dir, id);
    let file = io
        .open(&path, true)
        .map_err(|e| Error::io("open segment", &path, e))?;
    let size = file
        .size()
        .map_err(|e| Error::io("stat segment", &path, e))?;
    file.map(size.min(u64::from(u32::MAX)))
        .map_err(|e| Error::io("mmap segment", &path, e))
}

/// Calls `each` with every whole record of segment `id`'s `bytes` (position, header,
/// body), in order, resuming past damage at the next record; returns the damaged
/// ranges `[from, to)` with the first reason found in each.
pub(crate) fn walk_segment(
    bytes: &[u8],
    id: u32,
    mut each: impl FnMut(Pos, &Header, &[u8]),
) -> Vec<(u64, u64, String)> {
    let mut damaged = Vec::new();
    if let HeaderCheck::Bad(why) = segment::check_header(bytes, id) {
        let why = format!("segment header: {why}");
        damaged.push((0, SEGMENT_HEADER_LEN as u64, why));
    }
    let mut at = SEGMENT_HEADER_LEN;
    while at < bytes.len() {
        match record::decode(&bytes[at..]) {
            Decoded::Record {
                header,
                body,
                framed_len,
            } => {
                let offset = u32::try_from(at).unwrap_or(u32::MAX);
                each(
                    Pos {
                        segment: id,
                        offset,
                    },
                    &header,
                    body,
                );
                at += framed_len;
            }
            Decoded::Empty => {
                // Zeros: the end of the data, unless a record follows further on.
                let Some(next) = next_record(bytes, at) else {
                    break;
                };
                let why = "zeros where records continue later".to_string();
                damaged.push((at as u64, next as u64, why));
                at = next;
            }
            Decoded::Invalid(why) => {
                let to = next_record(bytes, at + RECORD_ALIGN).unwrap_or(bytes.len());
                damaged.push((at as u64, to as u64, why.to_string()));
                at = to;
            }
        }
    }
    damaged
}

/// The first 8-byte boundary at or after `from` where a whole, CRC-valid record starts.
pub(crate) fn next_record(bytes: &[u8], from: usize) -> Option<usize> {
    let start = from.next_multiple_of(RECORD_ALIGN);
    (start..bytes.len()).step_by(RECORD_ALIGN).find(|&at| {
        let rest = &bytes[at..];
        // The cheap header check first: the CRC only for plausible candidates.
        record::plausible(rest).is_some() && matches!(record::decode(rest), Decoded::Record { .. })
    })
}
