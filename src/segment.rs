//! One segment file: its header, and how it is created (its name: `store_dir.rs`).
//!
//! ```text
//! offset size field
//!  0     8    magic           b"EXECLOG\0"
//!  8     4    format_version  FORMAT_VERSION
//! 12     4    segment_id      equals the number in the file name
//! 16    12    reserved        zero
//! 28     4    crc             CRC-32 of bytes [0, 28)
//! 32     …    records         record.rs, starting at offset 32
//! ```
//! Small commit groups are only ever written over zeros that were written and made
//! durable beforehand: the commit thread keeps the zeroed region ahead of the records
//! ([`ZERO_AHEAD`] at a time, up to the segment's capacity) and fdatasyncs it before
//! such a group goes there, so an append is a pure overwrite of allocated, initialized
//! blocks and its fdatasync has no allocation or unwritten-extent metadata to commit.
//! Groups of `Options::grow_group_min_bytes` or more instead grow the file with their
//! own bytes (each byte written once); their fdatasync commits the new length and
//! extents too. Both survived hundreds of kernel power cuts each, counted as a real
//! power cut would acknowledge (docs/DESIGN.md, "Write path variants"); sparse files
//! and `fallocate` exist only as experimental [`WritePath`] variants.
//! A segment's file length is its zeroed end; its
//! capacity (`Options::segment_size_bytes`, or more for one large batch) is where the
//! writer rolls. Records never span two segments, and neither do batches.
//!
//! Invariant: a segment's header is durable (fdatasync of the file, fsync of the
//! directory) before any record is written into it.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::io::{Io, IoFile};
use crate::options::WritePath;
use crate::record;

/// First bytes of every segment file.
pub(crate) const MAGIC: [u8; 8] = *b"EXECLOG\0";
/// The on-disk format version this build writes (and the newest it reads).
pub(crate) const FORMAT_VERSION: u32 = 3;
/// The oldest format version this build reads.
pub(crate) const OLDEST_FORMAT_VERSION: u32 = 1;
const VERSION_OFFSET: usize = MAGIC.len();
const ID_OFFSET: usize = VERSION_OFFSET + 4;
const RESERVED_OFFSET: usize = ID_OFFSET + 4;
const CRC_OFFSET: usize = RESERVED_OFFSET + 12;
/// Length of the segment header; the first record starts here.
pub(crate) const SEGMENT_HEADER_LEN: usize = CRC_OFFSET + 4;

const _: () = assert!(SEGMENT_HEADER_LEN == 32);
const _: () = assert!(SEGMENT_HEADER_LEN.is_multiple_of(crate::record::RECORD_ALIGN));
const _: () = assert!(crate::codec::CODEC_VERSION == FORMAT_VERSION);

/// The header bytes of segment `id`.
pub(crate) fn encode_header(id: u32) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..VERSION_OFFSET].copy_from_slice(&MAGIC);
    h[VERSION_OFFSET..ID_OFFSET].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[ID_OFFSET..RESERVED_OFFSET].copy_from_slice(&id.to_le_bytes());
    let crc = record::crc32(&h[..CRC_OFFSET]);
    h[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// What a segment's first bytes say.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeaderCheck {
    /// A valid header for the expected id and a format version this build reads.
    Valid,
    /// All zeros or shorter than a header and all zeros: the file was created but its
    /// header never became durable.
    Blank,
    /// A well-formed header of another format version.
    Version(u32),
    /// Anything else.
    Bad(&'static str),
}

/// The format version a segment header states (meaningful once [`check_header`] said
/// it is valid).
pub(crate) fn version_of(bytes: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    if let Some(field) = bytes.get(VERSION_OFFSET..ID_OFFSET) {
        b.copy_from_slice(field);
    }
    u32::from_le_bytes(b)
}

/// Checks the header at the start of `bytes` for segment `id`.
pub(crate) fn check_header(bytes: &[u8], id: u32) -> HeaderCheck {
    let Some(h) = bytes.get(..SEGMENT_HEADER_LEN) else {
        return if bytes.iter().all(|&b| b == 0) {
            HeaderCheck::Blank
        } else {
            HeaderCheck::Bad("file is shorter than a segment header")
        };
    };
    if h.iter().all(|&b| b == 0) {
        return HeaderCheck::Blank;
    }
    if h[..VERSION_OFFSET] != MAGIC {
        return HeaderCheck::Bad("wrong magic: not an execlog segment");
    }
    let field = |at: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&h[at..at + 4]);
        u32::from_le_bytes(b)
    };
    if field(CRC_OFFSET) != record::crc32(&h[..CRC_OFFSET]) {
        return HeaderCheck::Bad("segment header CRC mismatch");
    }
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&field(VERSION_OFFSET)) {
        return HeaderCheck::Version(field(VERSION_OFFSET));
    }
    if field(ID_OFFSET) != id {
        return HeaderCheck::Bad("segment id in header differs from file name");
    }
    if h[RESERVED_OFFSET..CRC_OFFSET].iter().any(|&b| b != 0) {
        return HeaderCheck::Bad("reserved header bytes are not zero");
    }
    HeaderCheck::Valid
}

/// How far ahead of the records the commit thread zeroes a segment, at most.
pub(crate) const ZERO_AHEAD: u64 = 4 << 20;

/// Creates segment `id` with its first `zeroed` bytes written (header, then zeros),
/// durable, and its directory entry durable, ready for records at
/// [`SEGMENT_HEADER_LEN`]. The file gets permission bits `mode` (less the umask).
pub(crate) fn create(
    io: &dyn Io,
    dir: &Path,
    id: u32,
    (zeroed, write_path): (u64, WritePath),
    mode: u32,
) -> Result<Arc<dyn IoFile>> {
    let path = crate::store_dir::segment_path(dir, id);
    let file = io
        .create(&path, mode)
        .map_err(|e| Error::io("create segment", &path, e))?;
    prepare(file.as_ref(), SEGMENT_HEADER_LEN as u64, zeroed, write_path)
        .map_err(|e| Error::io("preallocate segment", &path, e))?;
    file.write_at(&encode_header(id), 0)
        .map_err(|e| Error::io("write segment header", &path, e))?;
    file.sync_data()
        .map_err(|e| Error::io("fdatasync segment header", &path, e))?;
    io.sync_dir(dir)
        .map_err(|e| Error::io("fsync directory", dir, e))?;
    Ok(file)
}

/// How far a new segment of `capacity` is prepared at creation.
pub(crate) fn initial_len(capacity: u64, write_path: WritePath) -> u64 {
    match write_path {
        WritePath::ZerosAhead => capacity.min(ZERO_AHEAD),
        WritePath::Fallocate => capacity,
        WritePath::Grow => SEGMENT_HEADER_LEN as u64,
    }
}

/// Prepares `[from, to)` for records as `write_path` says (not synced).
pub(crate) fn prepare(
    file: &dyn IoFile,
    from: u64,
    to: u64,
    write_path: WritePath,
) -> std::io::Result<()> {
    match write_path {
        WritePath::ZerosAhead => write_zeros(file, from, to),
        WritePath::Fallocate if to > from => file.allocate(from, to - from),
        WritePath::Fallocate | WritePath::Grow => Ok(()),
    }
}

/// Size of the zero buffer used to preallocate and to clear torn tails.
const ZERO_CHUNK: usize = 1 << 20;

/// Writes zeros over `[from, to)` (allocating the blocks; not synced).
pub(crate) fn write_zeros(file: &dyn IoFile, from: u64, to: u64) -> std::io::Result<()> {
    let zeros =
        vec![0u8; ZERO_CHUNK.min(usize::try_from(to.saturating_sub(from)).unwrap_or(ZERO_CHUNK))];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64) as usize;
        file.write_at(zeros.get(..n).unwrap_or_default(), at)?;
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checks() {
        let h = encode_header(5);
        assert_eq!(check_header(&h, 5), HeaderCheck::Valid);
        assert!(matches!(check_header(&h, 6), HeaderCheck::Bad(_)));
        assert_eq!(check_header(&[0; 10], 5), HeaderCheck::Blank);
        assert_eq!(check_header(&[0; 64], 5), HeaderCheck::Blank);
        let mut wrong = h;
        wrong[0] = b'X';
        assert!(matches!(check_header(&wrong, 5), HeaderCheck::Bad(_)));
    }
}
