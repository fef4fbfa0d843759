//! Crash images of a live store, and what a store serves, for the tests of running
//! index checkpoints (`tests/checkpoint_running.rs`, `tests/adversary_checkpoint.rs`).

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use execlog::*;

const CHECKPOINT: &str = "checkpoint.idx";

/// A copy of a live store's directory that a process crash could leave (the page cache
/// holds every acknowledged byte): the checkpoint first, then the sidecars, then the
/// segments newest first.
/// A segment only grows while it is the newest, so each older one, copied later, holds
/// at least what the newer ones point back to, and the segments hold at least what the
/// checkpoint covers. Erasure must not rewrite segments meanwhile: an erased segment
/// copied before the segment that receives its tombstone is a state no crash leaves.
pub fn copy(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    let _ = fs::copy(from.join(CHECKPOINT), to.path().join(CHECKPOINT));
    // Sidecars describe sealed segments, which no longer change.
    for entry in fs::read_dir(from).unwrap() {
        let name = entry.unwrap().file_name();
        if name.to_string_lossy().ends_with(".side") {
            let _ = fs::copy(from.join(&name), to.path().join(&name));
        }
    }
    let mut names: Vec<_> = fs::read_dir(from)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".seg"))
        .collect();
    names.sort();
    for name in names.iter().rev() {
        fs::copy(from.join(name), to.path().join(name)).unwrap();
    }
    to
}

/// Every execution's events, by id, as `store` serves them; an execution deleted
/// between the listing and its read is left out.
pub fn everything(store: &LogStore) -> HashMap<ExecutionId, Vec<StoredEvent>> {
    store
        .all_executions_blocking()
        .unwrap()
        .into_iter()
        .filter_map(|(id, _)| match store.load_events_blocking(&id) {
            Ok(events) => Some((id, events)),
            Err(_)
                if !store
                    .all_executions_blocking()
                    .unwrap()
                    .iter()
                    .any(|e| e.0 == id) =>
            {
                None
            }
            Err(e) => panic!("{id} at {}: {e:?}", store.path().display()),
        })
        .collect()
}

/// An event of about 1 KB.
pub fn kilobyte_event(n: u64) -> ExecutionEventData {
    ExecutionEventData::StepCompleted {
        step_id: StepId::from(format!("s{n}")),
        output: Some(format!("{n:>1000}")),
        duration_ms: n,
    }
}
