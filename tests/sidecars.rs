//! Segment sidecars (`src/sidecar.rs`): an open after a crash that decodes its
//! checkpoint after it returns takes what it needs of a sealed segment the checkpoint
//! does not cover from the segment's sidecar instead of scanning it; the decode scans
//! it with every check. These tests check that such an open answers as a full scan
//! does, that a sidecar that does not describe its segment never changes an answer
//! (ignored, or the checkpoint refuted and the next open scanning), and that the
//! files come and go when they should.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::crash_image;
use common::step_event;
use common::verify_after_open::wait_for_verdict;
use execlog::*;

fn t() -> TenantId {
    TenantId::from("t")
}

/// Small segments, the checkpoint decoded after open, and running checkpoints too rare
/// to cover the segments a test seals: only a clean close writes one.
fn options() -> Options {
    common::small_segments()
        .verify_checkpoint_after_open(true)
        .index_checkpoint_interval_bytes(Some(1 << 40))
}

fn sidecars(dir: &Path) -> Vec<PathBuf> {
    let mut names: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "side"))
        .collect();
    names.sort();
    names
}

/// Waits (at most a minute) until `dir` holds at least `n` sidecars.
fn wait_for_sidecars(dir: &Path, n: usize) {
    let started = Instant::now();
    while sidecars(dir).len() < n {
        assert!(started.elapsed() < Duration::from_secs(60), "no sidecars");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Appends `batches` batches of 5 events to each of `names`, interleaved, the first of
/// each execution declaring it.
fn fill(store: &LogStore, names: &[&str], batches: u64, from: u64) {
    for batch in from..from + batches {
        for name in names {
            let events = (1..=5).map(|i| step_event(batch * 5 + i)).collect();
            store
                .append_batch_blocking(&ExecutionId::from(*name), &t(), events)
                .unwrap();
        }
    }
}

/// A crash image of a store closed cleanly with "a" and "b", then reopened: the
/// session appends to "b" and "c", declares "c", deletes "d" and seals segments
/// (their sidecars written) before the image is taken.
fn crashed() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open_with(dir.path(), options()).unwrap();
    fill(&store, &["a", "b", "d"], 4, 0);
    store.close().unwrap();
    let store = LogStore::open_with(dir.path(), options()).unwrap();
    fill(&store, &["b", "c"], 400, 4);
    store
        .delete_execution_blocking(&ExecutionId::from("d"))
        .unwrap();
    fill(&store, &["b", "c"], 20, 404);
    let segments = store.stats().segments;
    assert!(segments >= 5, "{segments} segments");
    wait_for_sidecars(dir.path(), segments - 3);
    let image = crash_image::copy(dir.path());
    drop(store);
    image
}

/// Everything `store` answers of "a" to "d", as text.
fn answers(store: &LogStore) -> String {
    let mut out = format!("{:?}\n", store.list_executions_blocking(&t(), 100, 0));
    for name in ["a", "b", "c", "d"] {
        let id = ExecutionId::from(name);
        let events = store
            .load_events_blocking(&id)
            .map(|e| serde_json::to_string(&e).unwrap());
        let latest = store.get_latest_sequence_blocking(&id);
        out += &format!("{name}: {events:?} {latest:?}\n");
    }
    out
}

/// What a full scan (no checkpoint, no sidecar) of a copy of `dir` answers.
fn full_scan(dir: &Path) -> String {
    let image = crash_image::copy(dir);
    let options = common::small_segments().index_checkpoint(false);
    let store = LogStore::open_with(image.path(), options).unwrap();
    answers(&store)
}

#[test]
fn an_open_after_a_crash_takes_sealed_segments_from_their_sidecars_and_answers_as_a_scan() {
    let image = crashed();
    let expected = full_scan(image.path());
    let store = LogStore::open_with(image.path(), options()).unwrap();
    let report = store.recovery_report();
    assert!(report.index_decoded_after_open, "{report:?}");
    assert!(report.segments_from_sidecars >= 2, "{report:?}");
    assert_eq!(answers(&store), expected);
    wait_for_verdict(&store);
    assert_eq!(answers(&store), expected);
    // Appends go on where the log ends.
    let next = store
        .append_blocking(&ExecutionId::from("b"), &t(), step_event(9_999))
        .unwrap();
    assert_eq!(next, 2_121);
    store.close().unwrap();
}

#[test]
fn without_sidecars_the_same_open_scans_the_segments() {
    let image = crashed();
    let expected = full_scan(image.path());
    let store = LogStore::open_with(image.path(), options().segment_sidecars(false)).unwrap();
    let report = store.recovery_report();
    assert!(report.index_decoded_after_open, "{report:?}");
    assert_eq!(report.segments_from_sidecars, 0, "{report:?}");
    assert_eq!(answers(&store), expected);
}
