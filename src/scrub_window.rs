//! What a scrub check reads from the storage device, and how a window of a segment is
//! checked as the whole segment would be (`scrub.rs` holds what a check finds).
//!
//! A check reads past the page cache (`IoFile::read_durable`) a window from where it
//! resumes: its budget plus some slack, so that the record crossing the budget's end
//! is usually whole. What it read and did not reach stays in a [`DeviceWindow`] for
//! the next check of the segment, so that at a low rate (a check of a few bytes) each
//! byte is still read once per pass.
//!
//! Invariants:
//! - A window check reports exactly what a check of the whole segment from the same
//!   record boundary reports (the records, the damaged ranges and their reasons), or
//!   asks for more bytes: when the window cuts its first record, when a record it
//!   must judge runs past it, or when the next intact record after damage may lie
//!   past it. A record the window cuts after a whole one ends the check before it.
//! - Asking for more grows the window at least twofold, up to the segment's end, so a
//!   check reads each byte a bounded number of times; only a record whose length runs
//!   past the window (a forged length included) makes it read up to that record's end.
//! - Offsets in a window are the window's; a record's commit group start is compared
//!   with its segment offset (`Scanner::within`).

use crate::damage;
use crate::error::{Error, Result};
use crate::record::{self, Decoded, RECORD_ALIGN};
use crate::scan::{Scanner, Step};
use crate::scrub::{Checked, DamagedRange, damaged};
use crate::segment::{self, HeaderCheck, SEGMENT_HEADER_LEN};
use crate::state::Shared;

/// Bytes read beyond a check's budget: room for the record that crosses its end.
const WINDOW_SLACK: u64 = 64 << 10;

/// Bytes of one segment read from the device and not yet checked, kept between the
/// checks of a pass. It belongs to one file: a segment an erasure replaced (another
/// `rewrites` count) reads anew.
#[derive(Debug, Default)]
pub(crate) struct DeviceWindow {
    id: u32,
    rewrites: u32,
    /// Segment offset of `bytes[0]`.
    from: u64,
    bytes: Vec<u8>,
}

impl DeviceWindow {
    /// The bytes held from segment offset `offset` on, if they are `id`'s as replaced
    /// `rewrites` times.
    fn held_from(&self, (id, rewrites): (u32, u32), offset: u64) -> Option<&[u8]> {
        if (self.id, self.rewrites) != (id, rewrites) || offset < self.from {
            return None;
        }
        self.bytes.get(usize::try_from(offset - self.from).ok()?..)
    }
}

/// Checks sealed segment `id` (replaced `rewrites` times, final end `end`) from
/// `offset` for about `budget` bytes, as the device holds them, keeping what it read
/// beyond in `window`. `None` if the file system cannot bypass its cache.
pub(crate) fn check_from_device(
    shared: &Shared,
    (id, rewrites): (u32, u32),
    (offset, end): (u64, u64),
    budget: u64,
    window: &mut DeviceWindow,
) -> Result<Option<Checked>> {
    let mut want = end.min(offset.saturating_add(budget).saturating_add(WINDOW_SLACK));
    loop {
        if !fill(shared, (id, rewrites), (offset, want), window)? {
            return Ok(None);
        }
        let bytes = window.held_from((id, rewrites), offset).unwrap_or_default();
        let to = offset + bytes.len() as u64;
        match check_window(id, bytes, offset, budget, to >= end) {
            Ok(checked) => return Ok(Some(Checked { end, ..checked })),
            Err(more) => want = more.clamp(to + 1, end),
        }
    }
}

/// Makes `window` hold segment `id`'s bytes `[offset, want)`, reading from the device
/// only what it does not hold, and dropping what lies before `offset`; `false` if the
/// file system cannot bypass its cache.
fn fill(
    shared: &Shared,
    (id, rewrites): (u32, u32),
    (offset, want): (u64, u64),
    window: &mut DeviceWindow,
) -> Result<bool> {
    let held = window.held_from((id, rewrites), offset).map(<[u8]>::len);
    if held.is_none() {
        *window = DeviceWindow {
            id,
            rewrites,
            from: offset,
            bytes: Vec::new(),
        };
    }
    let drop = usize::try_from(offset - window.from).unwrap_or(usize::MAX);
    window.bytes.drain(..drop.min(window.bytes.len()));
    window.from = offset;
    let have = offset + window.bytes.len() as u64;
    if have >= want {
        return Ok(true);
    }
    let file = shared.segments.file(id)?;
    let len = usize::try_from(want - have).unwrap_or(usize::MAX);
    let read = file.read_durable(have, len).map_err(|e| {
        let path = crate::store_dir::segment_path(&shared.dir, id);
        Error::io("scrub a sealed segment", path, e)
    })?;
    let Some(more) = read else {
        return Ok(false);
    };
    window.bytes.extend_from_slice(&more);
    Ok(true)
}

/// Checks `bytes`, segment `id`'s bytes from `from` (0, or a record boundary), as
/// `scrub::check_bytes` checks them in the whole segment; `to_end` says whether they
/// reach its end. `Err(end)`: the check needs the segment's bytes up to `end` first.
pub(crate) fn check_window(
    id: u32,
    bytes: &[u8],
    from: u64,
    budget: u64,
    to_end: bool,
) -> std::result::Result<Checked, u64> {
    let start = match from {
        0 => (SEGMENT_HEADER_LEN, true),
        _ => (0, false),
    };
    let base = usize::try_from(from).unwrap_or(usize::MAX);
    let checked = check_records((id, base), bytes, start, budget as usize, !to_end)
        .map_err(|rel| from.saturating_add(rel as u64))?;
    let rebase = |d: DamagedRange| DamagedRange {
        from: d.from + from,
        to: d.to + from,
        ..d
    };
    Ok(Checked {
        next: checked.next + from,
        damaged: checked.damaged.into_iter().map(rebase).collect(),
        ..checked
    })
}

/// The records of `bytes`, which start at offset `base` of segment `id`, from
/// `offset` (after the segment header's check, if `header`), until about `budget`
/// bytes are covered. With `window` (the bytes stop before the segment's end),
/// `Err(end)` asks for the bytes up to `end` (relative) first.
pub(crate) fn check_records(
    (id, base): (u32, usize),
    bytes: &[u8],
    (mut offset, header): (usize, bool),
    budget: usize,
    window: bool,
) -> std::result::Result<Checked, usize> {
    if window && bytes.len() < offset + record::HEADER_LEN {
        return Err(grown(bytes, offset + record::HEADER_LEN));
    }
    let mut out = Checked {
        end: bytes.len() as u64,
        ..Checked::default()
    };
    if header && let HeaderCheck::Bad(why) = segment::check_header(bytes, id) {
        out.damaged.push(damaged(id, 0, SEGMENT_HEADER_LEN, why));
    }
    let stop = offset.saturating_add(budget.max(1));
    while offset < bytes.len() && offset < stop {
        let mut scanner = Scanner::within(bytes, offset, base);
        let (at, why, resync_from) = match scanner.next() {
            Some(Step::Record { .. }) => {
                out.records += 1;
                offset = scanner.offset();
                continue;
            }
            Some(Step::End { offset: at }) => (
                at,
                "zeros where the segment's records continue".to_string(),
                at,
            ),
            Some(Step::Invalid { offset: at, why }) => (at, why.to_string(), at + RECORD_ALIGN),
            None => break,
        };
        if window && let Some(end) = cut_at(bytes, at) {
            // Not damage yet: the window ends inside this record.
            return match out.records {
                0 => Err(grown(bytes, end)),
                _ => Ok(Checked {
                    next: at as u64,
                    ..out
                }),
            };
        }
        let to = resync(bytes, resync_from, window)?;
        out.damaged.push(damaged(id, at, to, &why));
        offset = to;
    }
    out.next = offset.min(bytes.len()) as u64;
    Ok(out)
}

/// Where the next intact record starts at or after `from`, as `damage::next_record`
/// finds it in the whole segment (its end if none); in a window, `Err(end)` when the
/// bytes up to `end` are needed to tell.
fn resync(bytes: &[u8], from: usize, window: bool) -> std::result::Result<usize, usize> {
    if !window {
        return Ok(damage::next_record(bytes, from).unwrap_or(bytes.len()));
    }
    for at in (from.next_multiple_of(RECORD_ALIGN)..bytes.len()).step_by(RECORD_ALIGN) {
        let rest = bytes.get(at..).unwrap_or_default();
        let Some(framed) = record::plausible_head(rest) else {
            if rest.len() < record::HEADER_LEN {
                return Err(grown(bytes, at + record::HEADER_LEN));
            }
            continue;
        };
        if framed > rest.len() {
            return Err(grown(bytes, at.saturating_add(framed)));
        }
        if matches!(record::decode(rest), Decoded::Record { .. }) {
            return Ok(at);
        }
    }
    Err(grown(bytes, bytes.len() + 1))
}

/// What a window of `bytes` that needs bytes up to `end` asks for: at least twice as
/// many, so that a check reads each byte a bounded number of times.
fn grown(bytes: &[u8], end: usize) -> usize {
    end.max(bytes.len().saturating_mul(2))
}

/// Where the record at `at` would end, if `bytes` end before it does (its header or
/// the length it declares runs past them): the window cut it.
fn cut_at(bytes: &[u8], at: usize) -> Option<usize> {
    let rest = bytes.get(at..).unwrap_or_default();
    let Some(head) = rest.get(..record::HEADER_LEN) else {
        return Some(at + record::HEADER_LEN);
    };
    let len_bytes = head.get(record::BODY_LEN_OFFSET..record::BODY_LEN_OFFSET + 4)?;
    let body_len = u32::from_le_bytes(len_bytes.try_into().ok()?) as usize;
    let end = at.saturating_add(record::framed_len(body_len));
    (end > bytes.len()).then_some(end)
}
