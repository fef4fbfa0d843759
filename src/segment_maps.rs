//! Open's third step: every segment file opened and mapped, before anything is scanned
//! (but the sealed ones an open that decodes its index later leaves closed, which
//! `segments.rs` opens through [`open_one`] on first use).
//!
//! All segments open maps are opened and mapped first, in id order, so that open's I/O calls keep
//! one order whatever the segments hold (the simulated file system's seeds replay
//! exactly), and so that the prescan helper and the checkpoint's digest check get every
//! map at once.
//!
//! Invariants: no segment longer than 4 GiB is mapped (record positions keep offsets in
//! 32 bits); a reader in another process maps its bounded segment only up to the bound,
//! since past it the live writer is writing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::io::{Io, IoFile, Mapped};
use crate::store_dir;

/// Longest segment file open accepts: record offsets are 32-bit.
const MAX_SEGMENT_FILE_BYTES: u64 = u32::MAX as u64;

/// One segment file, opened and mapped.
pub(crate) struct SegmentMap {
    pub(crate) id: u32,
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<dyn IoFile>,
    /// The file's length.
    pub(crate) capacity: u64,
    pub(crate) view: Mapped,
}

impl SegmentMap {
    /// The mapped bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.view.as_ref().as_ref()
    }
}

/// Opens and maps segments `ids` of `dir` (read-only handles with `read_only`); with
/// `bound` (segment, end), that segment is mapped only up to `end`.
pub(crate) fn map(
    io: &dyn Io,
    dir: &Path,
    ids: &[u32],
    read_only: bool,
    bound: Option<(u32, u64)>,
) -> Result<Vec<SegmentMap>> {
    ids.iter()
        .map(|&id| {
            let bound = bound.and_then(|(s, end)| (s == id).then_some(end));
            open_one(io, dir, id, read_only, bound)
        })
        .collect()
}

/// Opens and maps segment `id` of `dir`: the whole file, or only up to `bound`.
pub(crate) fn open_one(
    io: &dyn Io,
    dir: &Path,
    id: u32,
    read_only: bool,
    bound: Option<u64>,
) -> Result<SegmentMap> {
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
    let mapped = bound.map_or(capacity, |end| capacity.min(end));
    let view = file
        .map(mapped)
        .map_err(|e| Error::io("mmap segment", &path, e))?;
    Ok(SegmentMap {
        id,
        path,
        file,
        capacity,
        view,
    })
}
