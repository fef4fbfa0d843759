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
use crate::io::Io;
use crate::record::{self, Decoded, Kind, RECORD_ALIGN};
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
    let mut ids: Vec<u32> = io
        .list(dir)
        .map_err(|e| Error::io("list directory", dir, e))?
        .iter()
        .filter_map(|n| store_dir::parse_segment_name(n))
        .collect();
    ids.sort_unstable();
    ids.iter().map(|&id| survey_segment(io, dir, id)).collect()
}

fn survey_segment(io: &dyn Io, dir: &Path, id: u32) -> Result<SegmentSurvey> {
    let path = store_dir::segment_path(dir, id);
    let file = io
        .open(&path, true)
        .map_err(|e| Error::io("open segment", &path, e))?;
    let size = file
        .size()
        .map_err(|e| Error::io("stat segment", &path, e))?;
    let map = file
        .map(size.min(u64::from(u32::MAX)))
        .map_err(|e| Error::io("mmap segment", &path, e))?;
    let bytes: &[u8] = map.as_ref().as_ref();
    let mut out = SegmentSurvey {
        segment: id,
        ..SegmentSurvey::default()
    };
    if let HeaderCheck::Bad(why) = segment::check_header(bytes, id) {
        out.damaged.push((
            0,
            SEGMENT_HEADER_LEN as u64,
            format!("segment header: {why}"),
        ));
    }
    let mut at = SEGMENT_HEADER_LEN;
    while at < bytes.len() {
        match record::decode(&bytes[at..]) {
            Decoded::Record {
                header, framed_len, ..
            } => {
                if header.kind == Kind::Event {
                    out.readable_events += 1;
                }
                at += framed_len;
            }
            Decoded::Empty => {
                // Zeros: the end of the data, unless a record follows further on.
                match next_record(bytes, at) {
                    Some(next) => {
                        let why = "zeros where records continue later".to_string();
                        out.damaged.push((at as u64, next as u64, why));
                        at = next;
                    }
                    None => break,
                }
            }
            Decoded::Invalid(why) => {
                let next = next_record(bytes, at + RECORD_ALIGN);
                let to = next.unwrap_or(bytes.len());
                out.damaged.push((at as u64, to as u64, why.to_string()));
                at = to;
            }
        }
    }
    Ok(out)
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
