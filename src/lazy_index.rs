//! An index decoded after open: when a checkpoint is verified after open, an open
//! behind a layout 3 checkpoint returns once the file is mapped, its header, digests
//! and trailer check, and the tail after it is scanned (`Rebuild::held`). The
//! `execlog-verify` thread decodes the index, scans the tail into it again, then
//! verifies it (`deferred_verification.rs`); meanwhile reads find their execution
//! through the checkpoint's directory (`checkpoint_directory.rs`).
//!
//! Invariants:
//! - The decode holds the store lock from before open returns until the index is in
//!   place: whatever takes the lock (appends, deletions, lists, every background
//!   thread) waits for the decoded index, and never sees the empty one open left.
//!   Open starts the decode before any other thread that could take the lock.
//! - Until the decode ends, only reads go around the lock, through the directory, and
//!   only for an execution the directory proves (not a fork, not deleted) and the tail
//!   leaves as the checkpoint has it (no record of it, no tombstone or fork in the
//!   tail); anything else, or any error on the way, and the read takes the lock like
//!   any other.
//! - A checkpoint that does not decode, or that the tail does not continue, is refuted
//!   before the lock is released: the store is poisoned, and what took the lock next
//!   finds the verdict (`Shared::index`), never the empty index.

use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::checkpoint;
use crate::checkpoint_directory::{Directory, Found};
use crate::error::{Error, Result};
use crate::index::Index;
use crate::rebuild::{HeldTail, Rebuild};
use crate::state::{Shared, State};
use crate::stop::Stop;
use crate::sync::AtomicBool;

/// The checkpoint open mapped, until its index is decoded.
pub(crate) struct LazyIndex {
    directory: Directory,
    /// What open learned of the tail after the checkpoint, for the decode to scan
    /// into the decoded index.
    tail: HeldTail,
    decoded: AtomicBool,
}

impl LazyIndex {
    pub(crate) fn new(directory: Directory, tail: HeldTail) -> Self {
        Self {
            directory,
            tail,
            decoded: AtomicBool::new(false),
        }
    }

    /// `execution_id` in the checkpoint's directory, while the index is not decoded
    /// yet and if the tail after the checkpoint leaves it as the checkpoint has it:
    /// what the directory says of it is then what the decoded index will.
    pub(crate) fn find_pending(&self, execution_id: &str) -> Option<Found<'_>> {
        let found = self.pending()?.find(execution_id)?;
        let tail = &self.tail;
        (!tail.changes_others && !tail.touched.contains(&u64::from(found.no))).then_some(found)
    }

    /// Whether the index is decoded (or its decode failed and the store is poisoned).
    pub(crate) fn is_decoded(&self) -> bool {
        self.decoded.load(Ordering::Acquire)
    }

    /// The directory, while the index is not decoded yet.
    pub(crate) fn pending(&self) -> Option<&Directory> {
        (!self.decoded.load(Ordering::Acquire)).then_some(&self.directory)
    }
}

/// Decodes the index into the store, holding the lock from before `locked` is called
/// (which tells open, then waits until open has returned) to the end. If the
/// checkpoint does not decode, `refute` gets the reason with the lock still held.
pub(crate) fn decode(
    shared: &Shared,
    (lazy, stop): (&LazyIndex, &Stop),
    locked: impl FnOnce(),
    refute: impl FnOnce(&mut State, &str),
) {
    let mut state = shared.state.lock();
    locked();
    let hold = shared.options.checkpoint_decode_hold;
    if !hold.is_zero() {
        stop.sleep_until(Instant::now() + hold);
    }
    let stride = shared.options.index_stride;
    let decoded = checkpoint::decode(lazy.directory.file(), stride).and_then(|c| {
        if c.segments != lazy.directory.segments() {
            return Err("the decoded digests differ from those open used".to_string());
        }
        // Open's map shows the file's inode as it is now: one written in place since
        // open must not become the index, even for the moment before the verifier's
        // own decode of the path (whose CRC check would refute it too) runs.
        if c.file_crc != shared.verification.trusted_crc() {
            return Err("checkpoint.idx was changed in place after open".to_string());
        }
        Ok(c)
    });
    match decoded {
        Ok(c) => {
            let (c, _) = crate::saved_index::deferred(c, &shared.options);
            let view = |id, end| shared.segments.view(id, end);
            if let Err(why) = crate::sidecar::check_taken(&lazy.tail.sidecars, view) {
                refute(&mut state, &format!("a sidecar open took: {why}"));
                lazy.decoded.store(true, Ordering::Release);
                return;
            }
            if let Err(e) = apply_tail(shared, &mut state, c.index, &lazy.tail) {
                refute(
                    &mut state,
                    &format!("the tail after it does not apply: {e}"),
                );
                lazy.decoded.store(true, Ordering::Release);
                return;
            }
            *shared.erasable.lock() = crate::erasure::all_erasable(&state.index);
            shared.note_deletions(&state.index);
            lazy.decoded.store(true, Ordering::Release);
            log::debug!(
                "{}: the index checkpoint was decoded after open",
                shared.dir.display()
            );
        }
        Err(why) => {
            refute(&mut state, &format!("it does not decode: {why}"));
            lazy.decoded.store(true, Ordering::Release);
        }
    }
}

/// Puts `index` in place with `tail` (what open scanned after the checkpoint) scanned
/// into it again, with every check a scan into the index makes.
fn apply_tail(shared: &Shared, state: &mut State, index: Index, tail: &HeldTail) -> Result<()> {
    let empty = state.keys.sibling();
    let keys = std::mem::replace(&mut state.keys, empty);
    let mut rebuild = Rebuild::resume(index, keys, state.durable.timestamp_ns);
    for &(id, from, to) in &tail.ranges {
        let view = shared.segments.view(id, to)?;
        let bytes = view.as_ref().as_ref();
        let bytes = bytes.get(..to as usize).unwrap_or(bytes);
        rebuild.replay(id, bytes, from)?;
    }
    if rebuild.batch_start.is_some() {
        return Err(Error::Internal("the tail held ends inside a batch".into()));
    }
    state.index = rebuild.index;
    state.keys = rebuild.keys;
    Ok(())
}
