//! Why an earlier open refuted its checkpoint (`checkpoint.refuted`), so that the next
//! open can say why it read every record.
//!
//! The verification after open removes a checkpoint it refutes (`deferred_verification`),
//! and the next open then finds none: without this file its report would be silent on
//! why it rebuilt the index from the records, however long that took. A hint, never a
//! source of truth: UTF-8 text (the refutation's cause), written beside the removal and
//! removed once a new checkpoint is written; open reads at most [`MAX_LEN`] bytes of it,
//! lossily, and a missing or unreadable one says nothing.

use std::path::Path;

use crate::io::Io;
use crate::store_dir::CHECKPOINT_REFUTED;

/// The most open reads of it: a cause is one line.
pub(crate) const MAX_LEN: usize = 4096;

/// Records `cause` (best effort: the checkpoint's removal matters, this does not).
pub(crate) fn write(io: &dyn Io, dir: &Path, cause: &str, mode: u32) {
    let path = dir.join(CHECKPOINT_REFUTED);
    let bytes = cause.as_bytes();
    let written = io
        .create(&path, mode)
        .and_then(|file| file.write_at(&bytes[..bytes.len().min(MAX_LEN)], 0));
    if let Err(e) = written {
        log::warn!("{}: could not record why: {e}", path.display());
    }
}

/// The cause an earlier open recorded, if `dir` holds one.
pub(crate) fn read(io: &dyn Io, dir: &Path) -> Option<String> {
    let file = io.open(&dir.join(CHECKPOINT_REFUTED), true).ok()?;
    let len = file.size().ok()?.min(MAX_LEN as u64) as usize;
    let bytes = file.read_at(0, len).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Forgets the cause once a new checkpoint is in place (best effort).
pub(crate) fn remove(io: &dyn Io, dir: &Path) {
    if io.exists(&dir.join(CHECKPOINT_REFUTED)).unwrap_or(false) {
        let _ = io.remove(&dir.join(CHECKPOINT_REFUTED));
    }
}
