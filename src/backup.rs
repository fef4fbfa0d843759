//! Online backup: [`LogStore::backup_to`] copies the store, as of one position, into
//! a new directory while appends continue.
//!
//! The copy is the log's prefix up to the durable end read when the backup starts:
//! every earlier segment whole (up to its durable end, which is final once a later
//! segment holds records), and the last one up to that end, which is a commit group
//! boundary. Segments are append-only and records below a durable end never change,
//! so the bytes copied are the bytes the position names, however long the copy takes
//! and whatever is appended meanwhile. Each file is written and fdatasynced, then the
//! directory and its parent are fsynced, before `backup_to` returns: the copy is
//! durable. It holds no checkpoint (its first open scans it) and nothing derived
//! (`published.end`, `scrub.progress`): only the log, tombstones included.
//!
//! Invariants: nothing is written into the store's own directory; the destination must
//! be missing or empty, so a backup never mixes with another store's files; a reader
//! opened with `open_reader` backs up what its writer has published.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::log_store::LogStore;
use crate::record::Pos;
use crate::state::Shared;
use crate::store_dir;

/// What [`LogStore::backup_to`] copied.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupReport {
    /// The copy holds exactly the events at positions up to this one (as
    /// [`Follow::end_position`](crate::Follow::end_position) gives positions).
    pub position: u64,
    /// Segment files written.
    pub segments: u32,
    /// Bytes written.
    pub bytes: u64,
    /// Where the copy is.
    pub path: PathBuf,
}

impl LogStore {
    /// Copies the store, as of its durable end now, into `dest` (created if missing;
    /// it must be empty), durably, while appends go on. The copy opens as a store
    /// holding exactly the events at positions up to [`BackupReport::position`].
    ///
    /// The copy holds the log as it is on disk: deleted executions stay deleted in it,
    /// but their events are copied too unless erasure ([`LogStore::compact_now`]) ran
    /// before; compact the copy to erase them there.
    pub fn backup_to(&self, dest: impl AsRef<Path>) -> Result<BackupReport> {
        // Its segments' ends come from the index: not from one still unverified.
        self.check_writable_index()?;
        let shared = self.shared();
        let dest = dest.as_ref();
        prepare_destination(shared, dest)?;
        let (last, end) = crate::follow::log_end(shared);
        let mut bytes = 0;
        for id in 1..=last {
            let end = if id == last {
                end
            } else {
                shared.segments.durable_end(id)
            };
            copy_segment(shared, id, end, dest)?;
            bytes += end;
        }
        let io = shared.io.as_ref();
        io.sync_dir(dest)
            .map_err(|e| Error::io("fsync backup directory", dest, e))?;
        if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            io.sync_dir(parent)
                .map_err(|e| Error::io("fsync backup directory's parent", parent, e))?;
        }
        let position = Pos {
            segment: last,
            offset: u32::try_from(end).unwrap_or(u32::MAX),
        };
        Ok(BackupReport {
            position: position.pack().saturating_sub(1),
            segments: last,
            bytes,
            path: dest.to_path_buf(),
        })
    }
}

/// Creates `dest` if missing; refuses one that holds anything.
fn prepare_destination(shared: &Shared, dest: &Path) -> Result<()> {
    let io = shared.io.as_ref();
    // Compared as written (no file-system call): the usual mistake, `DIR/backup`.
    if dest.starts_with(&shared.dir) {
        return Err(Error::InvalidArgument(
            "a backup cannot go into the store's own directory or one inside it".into(),
        ));
    }
    match io.list(dest) {
        Ok(names) if names.is_empty() => Ok(()),
        Ok(names) => Err(Error::InvalidArgument(format!(
            "backup destination {} is not empty ({} entries): a backup goes into a new \
             or empty directory",
            dest.display(),
            names.len()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => io
            .create_dir_all(dest, shared.options.dir_mode())
            .map_err(|e| Error::io("create backup directory", dest, e)),
        Err(e) => Err(Error::io("list backup destination", dest, e)),
    }
}

/// Writes segment `id`'s bytes `[0, end)` to `dest`, durably.
fn copy_segment(shared: &Shared, id: u32, end: u64, dest: &Path) -> Result<()> {
    let view = shared.segments.view(id, end)?;
    let bytes = view
        .as_ref()
        .as_ref()
        .get(..usize::try_from(end).unwrap_or(usize::MAX))
        .ok_or_else(|| Error::corrupt(id, end, "segment shorter than its durable end"))?;
    let path = store_dir::segment_path(dest, id);
    let file = shared
        .io
        .create(&path, shared.options.file_mode())
        .map_err(|e| Error::io("create backup segment", &path, e))?;
    file.write_at(bytes, 0)
        .map_err(|e| Error::io("write backup segment", &path, e))?;
    file.sync_data()
        .map_err(|e| Error::io("fdatasync backup segment", &path, e))
}
