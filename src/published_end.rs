//! The writer's durable end, published for readers in other processes (`published.end`).
//!
//! After every commit group's fdatasync, the commit thread overwrites this small file
//! with the end of what is durable; a reader opened with
//! [`LogStore::open_reader`](crate::LogStore::open_reader) serves records up to it and
//! never beyond, so it sees exactly what the writer has made durable. The file is a
//! hint that only ever understates: it is written after the data it describes was
//! synced, and it is never synced itself (a lost update leaves an older, smaller end).
//! A missing or damaged file means "no bound known": the reader then applies recovery's
//! own rules to what the segments hold.
//!
//! Layout (32 bytes, little-endian; docs/FORMAT.md):
//! `magic "EXECEND\0"` | `generation u64` | `end u64` | `crc32 of bytes 0..24` | `0u32`.
//! `end` is `segment << 32 | offset`: every segment below `segment` is complete, and
//! `segment` is durable up to `offset`. `generation` grows by one at every writable
//! open, so a reader can tell a restarted writer.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::io::{Io, IoFile};
use crate::record::crc32;
use crate::store_dir::PUBLISHED_END;
use crate::sync::AtomicBool;
use std::sync::atomic::Ordering;

const MAGIC: &[u8; 8] = b"EXECEND\0";
const LEN: usize = 32;

/// What a writer last published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Published {
    pub(crate) generation: u64,
    pub(crate) segment: u32,
    pub(crate) end: u64,
}

impl Published {
    /// The end as one number, ordered like positions.
    pub(crate) fn packed(self) -> u64 {
        u64::from(self.segment) << 32 | self.end
    }

    fn encode(self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[..8].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&self.generation.to_le_bytes());
        b[16..24].copy_from_slice(&self.packed().to_le_bytes());
        let crc = crc32(&b[..24]);
        b[24..28].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Published> {
        let b: &[u8; LEN] = b.get(..LEN)?.try_into().ok()?;
        let u64_at = |at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(x)
        };
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&b[24..28]);
        if &b[..8] != MAGIC || u32::from_le_bytes(crc) != crc32(&b[..24]) || b[28..] != [0; 4] {
            return None;
        }
        let end = u64_at(16);
        Some(Published {
            generation: u64_at(8),
            segment: (end >> 32) as u32,
            end: end & u64::from(u32::MAX),
        })
    }
}

/// Reads the published end, if the file exists and is intact.
pub(crate) fn read(io: &dyn Io, dir: &Path) -> Result<Option<Published>> {
    let path = dir.join(PUBLISHED_END);
    let file = match io.open(&path, true) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open published end", &path, e)),
    };
    let bytes = file
        .read_at(0, LEN)
        .map_err(|e| Error::io("read published end", &path, e))?;
    Ok(Published::decode(&bytes))
}

/// The writer's handle on the file.
pub(crate) struct Publisher {
    file: Arc<dyn IoFile>,
    generation: u64,
    /// Set after the first failed write: it is logged once, not at every group.
    failed: AtomicBool,
}

impl Publisher {
    /// Opens (or creates) the file for a writable open, with the next generation.
    pub(crate) fn open(io: &dyn Io, dir: &Path, mode: u32) -> Result<Publisher> {
        let path = dir.join(PUBLISHED_END);
        let previous = read(io, dir).ok().flatten();
        let file = match io.open(&path, false) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => io
                .create(&path, mode)
                .map_err(|e| Error::io("create published end", &path, e))?,
            Err(e) => return Err(Error::io("open published end", &path, e)),
        };
        Ok(Publisher {
            file,
            generation: previous.map_or(1, |p| p.generation.wrapping_add(1)),
            failed: AtomicBool::new(false),
        })
    }

    /// Publishes that segment `segment` is durable up to `end` (and every earlier
    /// segment wholly). Call only after the fdatasync that made it so. A failure is
    /// logged: readers in other processes then lag, and nothing durable is at stake.
    pub(crate) fn publish(&self, segment: u32, end: u64) {
        let published = Published {
            generation: self.generation,
            segment,
            end,
        };
        if let Err(e) = self.file.write_at(&published.encode(), 0)
            && !self.failed.swap(true, Ordering::Relaxed)
        {
            log::warn!("could not publish the durable end for readers in other processes: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let p = Published {
            generation: 7,
            segment: 3,
            end: 4096,
        };
        let bytes = p.encode();
        assert_eq!(Published::decode(&bytes), Some(p));
        for i in 0..LEN {
            let mut damaged = bytes;
            damaged[i] ^= 1;
            assert_eq!(Published::decode(&damaged), None, "byte {i}");
        }
        assert_eq!(Published::decode(&bytes[..LEN - 1]), None);
    }

    /// The layout of docs/FORMAT.md, "Published end", byte for byte.
    #[test]
    fn layout_matches_the_format_document() {
        let bytes = Published {
            generation: 0x0102_0304_0506_0708,
            segment: 3,
            end: 0x1000,
        }
        .encode();
        assert_eq!(&bytes[0..8], b"EXECEND\0");
        assert_eq!(bytes[8..16], [8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(bytes[16..24], [0, 0x10, 0, 0, 3, 0, 0, 0]);
        assert_eq!(bytes[24..28], crc32(&bytes[..24]).to_le_bytes());
        assert_eq!(bytes[28..32], [0; 4]);
    }
}
