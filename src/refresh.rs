//! A reader in another process keeping up with the writer: it polls the published end
//! (`published_end.rs`) and indexes the records the writer made durable since.
//!
//! Invariants:
//! - nothing past the published end is read, so nothing a crash of the writer could
//!   take back is served;
//! - everything up to the published end was fdatasynced: a record there that fails its
//!   checks is `Error::Corrupt`, never a torn tail, and it stops the reader (poisoned:
//!   reads of what it had keep working, subscriptions end with the error);
//! - the end never moves backwards; if the file says it did (a store restored from a
//!   copy under a running reader), the reader stops the same way;
//! - segments and the index grow in the order the writer's publish uses (segment ends,
//!   then the index, then the watch), so a follower never meets a record whose
//!   execution the index does not know.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::idempotency::KeyTables;
use crate::index::Index;
use crate::io::Mapped;
use crate::published_end::{self, Published};
use crate::rebuild::Rebuild;
use crate::scan::{Scanner, Step};
use crate::segment::{self, HeaderCheck, SEGMENT_HEADER_LEN};
use crate::state::Shared;
use crate::store_dir;

/// Poll interval right after the end moved.
const FAST_POLL: Duration = Duration::from_millis(1);
/// Poll interval after a while without change.
const SLOW_POLL: Duration = Duration::from_millis(20);

/// Runs until the store is closed: polls the published end, extends the index to it.
pub(crate) fn run(shared: &Arc<Shared>, mut seen: Option<Published>) -> Result<()> {
    let mut interval = FAST_POLL;
    while !shared.closed.load(Ordering::SeqCst) {
        std::thread::sleep(interval);
        let published = match published_end::read(shared.io.as_ref(), &shared.dir) {
            Ok(p) => p,
            Err(e) => {
                log::warn!("reader of {}: {e}", shared.dir.display());
                interval = SLOW_POLL;
                continue;
            }
        };
        match published {
            Some(p) if seen.is_none_or(|s| s.packed() != p.packed()) => {
                if let Err(e) = extend(shared, p) {
                    crate::committer::poison(shared, crate::state::Poison::of(e));
                    return Ok(());
                }
                seen = Some(p);
                interval = FAST_POLL;
                shared.watch.advance();
            }
            _ => interval = (interval * 2).min(SLOW_POLL),
        }
    }
    Ok(())
}

/// Indexes the records between the reader's current end and `to`.
fn extend(shared: &Shared, to: Published) -> Result<()> {
    let segments = &shared.segments;
    let last = segments.count() as u32;
    let current = u64::from(last) << 32 | segments.durable_end(last);
    if to.packed() < current {
        return Err(Error::corrupt(
            to.segment,
            to.end,
            format!(
                "the writer's published end moved backwards (from segment {last} offset {}): \
                 was the store replaced under this reader?",
                segments.durable_end(last)
            ),
        ));
    }
    let mut state = shared.state.lock();
    let state = &mut *state;
    let index = std::mem::replace(&mut state.index, Index::new(1));
    let keys = std::mem::replace(&mut state.keys, KeyTables::new(0));
    let mut rebuild = Rebuild::resume(index, keys, state.writer.last_timestamp_ns);
    let mut applied = Vec::new();
    let result = (last.max(1)..=to.segment).try_for_each(|id| {
        let end = (id == to.segment).then_some(to.end);
        extend_segment(shared, &mut rebuild, (id, end), &mut applied)
    });
    let result = result.and_then(|()| match rebuild.batch.first() {
        Some(w) => Err(Error::corrupt(
            w.pos.segment,
            u64::from(w.pos.offset),
            "batch incomplete at the published end",
        )),
        None => Ok(()),
    });
    state.index = rebuild.index;
    state.keys = rebuild.keys;
    state.writer.last_timestamp_ns = rebuild.last_timestamp_ns;
    shared.note_deletions(&state.index);
    // Raised only now, in log order, and only over whole batches the index took: a
    // failed extension (the reader is then poisoned) serves no part of a batch, and
    // reads and subscriptions agree on what it serves.
    for (id, end) in applied {
        segments.set_durable_end(id, end);
    }
    result
}

/// Indexes segment `id` from the reader's end of it up to `end` (the published end),
/// or to the end of its records if the writer has moved on to a later segment.
///
/// `applied` gets, per segment, where the last batch the index took ends.
fn extend_segment(
    shared: &Shared,
    rebuild: &mut Rebuild,
    (id, end): (u32, Option<u64>),
    applied: &mut Vec<(u32, u64)>,
) -> Result<()> {
    let segments = &shared.segments;
    let path = store_dir::segment_path(&shared.dir, id);
    if id as usize > segments.count() {
        let file = shared
            .io
            .open(&path, true)
            .map_err(|e| Error::io("open segment", &path, e))?;
        segments.push(id, file, (0, None));
    }
    let view = map(shared, id, end)?;
    let all: &[u8] = view.as_ref().as_ref();
    let bytes = match end {
        Some(end) => all
            .get(..end as usize)
            .ok_or_else(|| Error::corrupt(id, end, "segment is shorter than the published end"))?,
        None => all,
    };
    let start = segments.durable_end(id);
    if start == 0 {
        match segment::check_header(bytes, id) {
            HeaderCheck::Valid => {}
            HeaderCheck::Version(version) => {
                return Err(Error::UnsupportedFormat { path, version });
            }
            _ => return Err(Error::corrupt(id, 0, "published segment has a bad header")),
        }
    }
    rebuild.segment_version = segment::version_of(bytes);
    let from = start.max(SEGMENT_HEADER_LEN as u64) as usize;
    let mut data_end = from;
    for step in Scanner::new(bytes, from) {
        match step {
            Step::Record {
                offset,
                header,
                body,
            } => {
                rebuild.add(id, offset as u64, header, body)?;
                data_end = offset + crate::record::framed_len(body.len());
                if rebuild.batch.is_empty() {
                    match applied.last_mut() {
                        Some((last, whole)) if *last == id => *whole = data_end as u64,
                        _ => applied.push((id, data_end as u64)),
                    }
                }
            }
            Step::End { offset } => {
                data_end = offset;
                break;
            }
            Step::Invalid { offset, why } => {
                return Err(Error::corrupt(id, offset as u64, why.to_string()));
            }
        }
    }
    if end.is_some_and(|end| data_end as u64 != end) {
        return Err(Error::corrupt(
            id,
            data_end as u64,
            "the published end is not where the records end",
        ));
    }
    Ok(())
}

/// A map of segment `id` long enough for `end` (or the whole file).
fn map(shared: &Shared, id: u32, end: Option<u64>) -> Result<Mapped> {
    let path = store_dir::segment_path(&shared.dir, id);
    let file = shared.segments.file(id)?;
    let size = file
        .size()
        .map_err(|e| Error::io("stat segment", &path, e))?;
    let len = end.unwrap_or(size);
    if len > size {
        return Err(Error::corrupt(
            id,
            len,
            "segment is shorter than the published end",
        ));
    }
    file.map(len)
        .map_err(|e| Error::io("mmap segment", &path, e))
}
