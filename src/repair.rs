//! Repair at open, the only step of open that writes (`open.rs`, step 5; read-write
//! opens only): cutting a torn or never-synced tail, journaled so that a cut whose
//! fdatasync fails is redone, never half-trusted; setting aside a newest segment that
//! was still being created; making the directory's entries durable.
//!
//! A cut overwrites `[from, end)` of a segment with zeros and fdatasyncs. If that
//! fdatasync fails, Linux may keep the zeros in the page cache marked clean while the
//! disk keeps the old bytes ("fsyncgate"): the next open in the same boot would read
//! zeros, serve the log up to `from` and append there, and a later power cut would
//! bring the old bytes back behind the new records (phantom events, or a chain that
//! no longer links). So before zeroing, the cut is recorded in `cut.pending` (written,
//! fdatasynced, directory fsynced); it is removed only after the zeros' fdatasync
//! returned. A read-write open that finds the file redoes the cut first (rewriting the
//! zeros makes the pages dirty again, so this fdatasync writes them); a read-only open
//! hides `[from, ..)` of that segment instead.
//!
//! Invariant: zeros are written only after the marker describing them is durable, so
//! a marker that is torn (wrong length, magic or CRC) belongs to a cut that never
//! started and is simply removed.
//!
//! ```text
//! offset size field
//!  0     8    magic     b"EXLGCUT\0"
//!  8     4    segment   segment id
//! 12     4    reserved  zero
//! 16     8    from      first byte to zero
//! 24     8    end       end of the bytes to zero
//! 32     4    crc       CRC-32 of bytes [0, 32)
//! ```

use std::path::Path;

use crate::error::{Error, Result};
use crate::io::{Io, IoFile};
use crate::record;
use crate::segment;
use crate::store_dir::{self, CUT_PENDING};

const MAGIC: [u8; 8] = *b"EXLGCUT\0";
const SEGMENT_OFFSET: usize = MAGIC.len();
const FROM_OFFSET: usize = SEGMENT_OFFSET + 8;
const END_OFFSET: usize = FROM_OFFSET + 8;
const CRC_OFFSET: usize = END_OFFSET + 8;
const MARKER_LEN: usize = CRC_OFFSET + 4;
const _: () = assert!(MARKER_LEN == 36);

/// A cut: zeros over `[from, end)` of segment `segment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cut {
    pub(crate) segment: u32,
    pub(crate) from: u64,
    pub(crate) end: u64,
}

impl Cut {
    fn encode(&self) -> [u8; MARKER_LEN] {
        let mut b = [0u8; MARKER_LEN];
        b[..SEGMENT_OFFSET].copy_from_slice(&MAGIC);
        b[SEGMENT_OFFSET..SEGMENT_OFFSET + 4].copy_from_slice(&self.segment.to_le_bytes());
        b[FROM_OFFSET..END_OFFSET].copy_from_slice(&self.from.to_le_bytes());
        b[END_OFFSET..CRC_OFFSET].copy_from_slice(&self.end.to_le_bytes());
        let crc = record::crc32(&b[..CRC_OFFSET]);
        b[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// The cut a marker describes; `None` for a torn or foreign file.
    fn decode(bytes: &[u8]) -> Option<Cut> {
        let b: &[u8; MARKER_LEN] = bytes.try_into().ok()?;
        let u32_at = |at: usize| b[at..at + 4].try_into().map(u32::from_le_bytes).ok();
        let u64_at = |at: usize| b[at..at + 8].try_into().map(u64::from_le_bytes).ok();
        let valid = b[..SEGMENT_OFFSET] == MAGIC
            && u32_at(SEGMENT_OFFSET + 4) == Some(0)
            && u32_at(CRC_OFFSET) == Some(record::crc32(&b[..CRC_OFFSET]));
        let cut = Cut {
            segment: u32_at(SEGMENT_OFFSET)?,
            from: u64_at(FROM_OFFSET)?,
            end: u64_at(END_OFFSET)?,
        };
        (valid && cut.from <= cut.end).then_some(cut)
    }
}

/// Zeroes `cut` of `file` durably, journaled by the marker (see the module docs).
/// The marker gets permission bits `mode` (less the umask).
pub(crate) fn cut(io: &dyn Io, dir: &Path, file: &dyn IoFile, cut: Cut, mode: u32) -> Result<()> {
    let marker = dir.join(CUT_PENDING);
    let _ = io.remove(&marker); // a torn one from an earlier attempt
    let m = io
        .create(&marker, mode)
        .map_err(|e| Error::io("create the cut marker", &marker, e))?;
    m.write_at(&cut.encode(), 0)
        .and_then(|()| m.sync_data())
        .map_err(|e| Error::io("write the cut marker", &marker, e))?;
    sync_dir(io, dir)?;
    zero(file, &store_dir::segment_path(dir, cut.segment), cut)?;
    io.remove(&marker)
        .map_err(|e| Error::io("remove the cut marker", &marker, e))?;
    sync_dir(io, dir)
}

fn zero(file: &dyn IoFile, path: &Path, cut: Cut) -> Result<()> {
    segment::write_zeros(file, cut.from, cut.end)
        .map_err(|e| Error::io("zero torn tail", path, e))?;
    file.sync_data()
        .map_err(|e| Error::io("fdatasync after cutting the tail", path, e))
}

/// The cut an earlier open left unfinished, if any. A torn marker (a cut that never
/// started) is reported as `None`; a read-write open then removes it.
pub(crate) fn pending(io: &dyn Io, dir: &Path) -> Result<Option<Cut>> {
    let marker = dir.join(CUT_PENDING);
    let file = match io.open(&marker, true) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open the cut marker", &marker, e)),
    };
    let len = file
        .size()
        .map_err(|e| Error::io("stat the cut marker", &marker, e))?;
    let bytes = file
        .map(len.min(MARKER_LEN as u64 + 1))
        .map_err(|e| Error::io("read the cut marker", &marker, e))?;
    Ok(Cut::decode(bytes.as_ref().as_ref()))
}

/// Sets aside segment `id`, a newest segment whose header never became durable and
/// that holds no valid record: removed if `blank` (all zeros), else renamed to
/// `<name>.broken` for the operator (it is not what execlog wrote, so it is kept).
pub(crate) fn set_aside(io: &dyn Io, dir: &Path, id: u32, blank: bool) -> Result<()> {
    let path = store_dir::segment_path(dir, id);
    if blank {
        io.remove(&path)
            .map_err(|e| Error::io("remove blank segment", &path, e))?;
    } else {
        let aside = store_dir::broken_path(dir, id);
        io.rename(&path, &aside)
            .map_err(|e| Error::io("set aside unfinished segment", &path, e))?;
    }
    sync_dir(io, dir)
}

/// Fsyncs `dir`, so that the entries open created, removed or renamed are durable.
pub(crate) fn sync_dir(io: &dyn Io, dir: &Path) -> Result<()> {
    io.sync_dir(dir)
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Read-write opens, before the scan: redoes a cut an earlier open left unfinished
/// and removes its marker. Returns the cut redone, for the report.
pub(crate) fn finish_pending(io: &dyn Io, dir: &Path) -> Result<Option<Cut>> {
    let marker = dir.join(CUT_PENDING);
    let found = pending(io, dir)?;
    if let Some(cut) = found {
        let path = store_dir::segment_path(dir, cut.segment);
        match io.open(&path, false) {
            Ok(file) => zero(file.as_ref(), &path, cut)?,
            // The segment itself was removed since (an unfinished newest segment).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("open segment", &path, e)),
        }
    }
    match io.remove(&marker) {
        Ok(()) => sync_dir(io, dir)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove the cut marker", &marker, e)),
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_round_trips_and_every_damage_is_refused() {
        let cut = Cut {
            segment: 7,
            from: 4096,
            end: 9000,
        };
        let bytes = cut.encode();
        assert_eq!(Cut::decode(&bytes), Some(cut));
        for len in 0..MARKER_LEN {
            assert_eq!(Cut::decode(&bytes[..len]), None, "cut at {len}");
        }
        for bit in 0..MARKER_LEN * 8 {
            let mut bad = bytes;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(Cut::decode(&bad), None, "bit {bit}");
        }
    }
}
