//! Where the background scrubber is in its pass, kept across restarts (`scrub.progress`).
//!
//! A hint, never a source of truth: a missing, short, damaged or forged file restarts
//! the pass at segment 1, and a position beyond the store's sealed segments ends the
//! pass. It names a segment, not a byte: a segment's records start at offset 32, so a
//! resumed pass always starts on a record boundary, whatever the file says (an offset
//! inside a record would make the scrubber report damage that is not there). So a
//! restart repeats at most the segment it was in.
//!
//! Written only by the scrubber thread of a writable open (readers never write it),
//! whole, through `io.rs`: to `scrub.progress.tmp`, fdatasync, rename over the old
//! one. The directory is not fsynced: a rename lost in a crash leaves the previous
//! file, and the pass repeats a little.
//!
//! Layout (32 bytes, little-endian; docs/FORMAT.md, "Scrub progress"):
//! `magic "EXECSCRB"` | `passes u64` | `segment u32` | `0u32` | `crc32 of bytes 0..24` |
//! `0u32`.

use std::path::Path;

use crate::error::{Error, Result};
use crate::io::Io;
use crate::record::crc32;
use crate::store_dir::{SCRUB_PROGRESS, SCRUB_PROGRESS_TMP};

const MAGIC: &[u8; 8] = b"EXECSCRB";
const PASSES_OFFSET: usize = MAGIC.len();
const SEGMENT_OFFSET: usize = PASSES_OFFSET + 8;
const RESERVED_OFFSET: usize = SEGMENT_OFFSET + 4;
const CRC_OFFSET: usize = RESERVED_OFFSET + 4;
const TAIL_OFFSET: usize = CRC_OFFSET + 4;
const LEN: usize = TAIL_OFFSET + 4;

const _: () = assert!(CRC_OFFSET == 24 && LEN == 32);

/// The scrubber's saved position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Whole passes completed over the store's life.
    pub(crate) passes: u64,
    /// The segment the current pass continues with (from its first record).
    pub(crate) segment: u32,
}

impl Progress {
    /// A store's first pass, at its first segment.
    pub(crate) const START: Progress = Progress {
        passes: 0,
        segment: 1,
    };

    pub(crate) fn encode(self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[..PASSES_OFFSET].copy_from_slice(MAGIC);
        b[PASSES_OFFSET..SEGMENT_OFFSET].copy_from_slice(&self.passes.to_le_bytes());
        b[SEGMENT_OFFSET..RESERVED_OFFSET].copy_from_slice(&self.segment.to_le_bytes());
        let crc = crc32(&b[..CRC_OFFSET]);
        b[CRC_OFFSET..TAIL_OFFSET].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// The progress `bytes` hold, or `None` unless they are exactly a valid file.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Progress> {
        let b: &[u8; LEN] = bytes.try_into().ok()?;
        let u32_at = |at: usize| {
            let mut x = [0u8; 4];
            x.copy_from_slice(&b[at..at + 4]);
            u32::from_le_bytes(x)
        };
        let mut passes = [0u8; 8];
        passes.copy_from_slice(&b[PASSES_OFFSET..SEGMENT_OFFSET]);
        let valid = &b[..PASSES_OFFSET] == MAGIC
            && u32_at(CRC_OFFSET) == crc32(&b[..CRC_OFFSET])
            && u32_at(RESERVED_OFFSET) == 0
            && u32_at(TAIL_OFFSET) == 0
            && u32_at(SEGMENT_OFFSET) >= 1;
        valid.then(|| Progress {
            passes: u64::from_le_bytes(passes),
            segment: u32_at(SEGMENT_OFFSET),
        })
    }
}

/// The saved progress, or [`Progress::START`] when there is none or it is not valid.
/// Never an error: the worst a bad file costs is a repeated pass.
pub(crate) fn load(io: &dyn Io, dir: &Path) -> Progress {
    let path = dir.join(SCRUB_PROGRESS);
    let Ok(file) = io.open(&path, true) else {
        return Progress::START;
    };
    match file.size() {
        Ok(size) if size == LEN as u64 => file
            .read_at(0, LEN)
            .ok()
            .and_then(|b| Progress::decode(&b))
            .unwrap_or(Progress::START),
        _ => Progress::START,
    }
}

/// Replaces the saved progress with `progress` (see the module docs).
pub(crate) fn save(io: &dyn Io, dir: &Path, progress: Progress, mode: u32) -> Result<()> {
    crate::io::replace_file(
        io,
        dir,
        (SCRUB_PROGRESS_TMP, SCRUB_PROGRESS),
        &progress.encode(),
        mode,
    )
    .map_err(|e| Error::io("write scrub progress", dir.join(SCRUB_PROGRESS), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_every_flipped_bit() {
        let p = Progress {
            passes: 9,
            segment: 4,
        };
        let bytes = p.encode();
        assert_eq!(Progress::decode(&bytes), Some(p));
        for i in 0..LEN * 8 {
            let mut damaged = bytes;
            damaged[i / 8] ^= 1 << (i % 8);
            assert_eq!(Progress::decode(&damaged), None, "bit {i}");
        }
        assert_eq!(Progress::decode(&bytes[..LEN - 1]), None);
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(Progress::decode(&longer), None);
    }

    /// Segment 0 does not exist: a file naming it is forged, even with its CRC right.
    #[test]
    fn segment_zero_is_refused() {
        let mut bytes = Progress::START.encode();
        bytes[SEGMENT_OFFSET..RESERVED_OFFSET].fill(0);
        let crc = crc32(&bytes[..CRC_OFFSET]);
        bytes[CRC_OFFSET..TAIL_OFFSET].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(Progress::decode(&bytes), None);
    }

    /// The layout of docs/FORMAT.md, "Scrub progress", byte for byte.
    #[test]
    fn layout_matches_the_format_document() {
        let bytes = Progress {
            passes: 0x0102_0304_0506_0708,
            segment: 3,
        }
        .encode();
        assert_eq!(&bytes[0..8], b"EXECSCRB");
        assert_eq!(bytes[8..16], [8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(bytes[16..20], [3, 0, 0, 0]);
        assert_eq!(bytes[20..24], [0; 4]);
        assert_eq!(bytes[24..28], crc32(&bytes[..24]).to_le_bytes());
        assert_eq!(bytes[28..32], [0; 4]);
    }
}
