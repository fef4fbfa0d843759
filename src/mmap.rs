//! Read-only memory maps of segment prefixes: the crate's only `unsafe` code.
//!
//! Why a mapped prefix stays valid and unchanged while it is mapped:
//! - Only ranges below a segment's durable end are mapped (recovery maps a whole file
//!   only before any writer thread exists and drops the map before it truncates).
//! - The commit thread writes only at or beyond the durable end, and never truncates a
//!   segment while the store is open; records are never rewritten (append-only).
//! - The directory lock (`LOCK`, an OS file lock) keeps other execlog instances out, so
//!   no other process writes or truncates the files. A process that ignores the lock and
//!   truncates a segment could make a read fault (SIGBUS); that is outside the model,
//!   as it is for every mmap-based engine, and docs/DESIGN.md says so.

use std::fs::File;
use std::io;

/// Maps the first `len` bytes of `file` read-only.
#[allow(unsafe_code)]
pub(crate) fn map_prefix(file: &File, len: u64) -> io::Result<memmap2::Mmap> {
    let len = usize::try_from(len).map_err(|_| io::Error::other("map length exceeds usize"))?;
    // SAFETY: the mapped range [0, len) is durable, append-only data: the commit thread
    // writes only beyond it and never truncates while the store is open, recovery
    // truncates only after dropping its maps, and the directory lock excludes other
    // writers (see the module docs). So the bytes behind the returned slice neither
    // change nor disappear while the map lives.
    unsafe { memmap2::MmapOptions::new().len(len).map(file) }
}
