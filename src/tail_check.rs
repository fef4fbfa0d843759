//! Open's check that the end of the log is on the disk, not only in the page cache,
//! before anything is served (docs/DESIGN.md, "What was served survives").
//!
//! Only the last commit group can be unsynced: the commit thread writes a group only
//! after the previous one's fdatasync succeeded, and records go into a new segment only
//! after its header and directory entry were synced. So this reads that group (or a
//! record-less segment's header) back past the cache and compares. It changes no byte
//! (a read-write open's fdatasync here only writes back what a killed writer left
//! dirty): a difference is handed back, and the repair step (`repair.rs`) cuts it.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::io::IoFile;
use crate::open::RecoveredSegment;
use crate::scan::last_nonzero;
use crate::segment::SEGMENT_HEADER_LEN;
use crate::store_dir;

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

/// The part of the log's end that is in the page cache but not on the disk: the last
/// commit group, from its start, or (`from == 0`) a new segment's header. Nothing in
/// it was acknowledged: its fdatasync failed, and the kernel then marked the pages
/// clean ("fsyncgate"), so no later fdatasync would write them.
pub(crate) struct Unestablished {
    pub(crate) segment: u32,
    pub(crate) from: u64,
    /// Where the nonzero bytes of the segment end.
    pub(crate) end: u64,
    pub(crate) file: Arc<dyn IoFile>,
    pub(crate) reason: String,
}

/// The end of the log as a pass found it: the last segment kept.
pub(crate) struct LogEnd<'a> {
    pub(crate) segment: &'a RecoveredSegment,
    pub(crate) bytes: &'a [u8],
    /// Where the last commit group with a record this pass scanned starts, if the
    /// segment holds one.
    pub(crate) group_start: Option<u32>,
    /// Whether a checkpoint covers the segment (and so the records before any scanned).
    pub(crate) covered: bool,
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
pub(crate) fn establish(
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
