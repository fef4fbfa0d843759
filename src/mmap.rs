//! Read-only memory maps of segment prefixes: the crate's only `unsafe` code.
//!
//! Why a mapped prefix stays valid and unchanged while it is mapped:
//! - Only ranges below a segment's durable end are mapped (recovery maps a whole file
//!   only before any writer thread exists and drops the map before it truncates).
//! - The commit thread writes only at or beyond the durable end, and never truncates a
//!   segment while the store is open; records are never rewritten (append-only).
//! - The directory lock (`LOCK`, an OS file lock) keeps other writing execlog instances
//!   out, so no other process writes or truncates the files except as follows.
//! - A reader in another process (`LogStore::open_reader`) takes no lock: the one
//!   writer then writes the same files. The reader maps only what the writer has
//!   published as durable (its newest segment up to the published end, earlier
//!   segments whole, as the writer has finished them), and the writer writes only past
//!   its published end and never truncates. Its recovery's cut of a torn tail writes
//!   zeros past the durable end; it does not shrink files.
//! - A process that ignores all this and truncates a segment (a restore with `cp` over a
//!   running store) could make a read fault (SIGBUS); that is outside the model, as it
//!   is for every mmap-based engine, and docs/DESIGN.md says so.

use std::fs::File;
use std::io;

/// Maps the first `len` bytes of `file` read-only.
#[allow(unsafe_code)]
pub(crate) fn map_prefix(file: &File, len: u64) -> io::Result<memmap2::Mmap> {
    let len = usize::try_from(len).map_err(|_| io::Error::other("map length exceeds usize"))?;
    // SAFETY: the mapped range [0, len) is durable, append-only data: the commit thread
    // writes only beyond it and never truncates while the store is open, recovery
    // truncates only after dropping its maps, the directory lock excludes other
    // writers, and a lock-free reader maps only what the one writer has published (see
    // the module docs). So the bytes behind the returned slice neither change nor
    // disappear while the map lives.
    unsafe { memmap2::MmapOptions::new().len(len).map(file) }
}
