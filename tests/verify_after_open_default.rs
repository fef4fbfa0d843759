//! The default of `Options::verify_checkpoint_after_open`: a read-write open verifies a
//! checkpoint before it returns while the checkpoint covers less than
//! `VERIFY_AFTER_OPEN_FROM_BYTES` of records, and after it from there on; an explicit
//! choice holds at every size.
//!
//! Regression guarded: a large store reading every covered byte before open returns by
//! default; a small one leaving damage to a verdict after open; the size deciding over
//! an explicit choice.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::step_event;
use common::verify_after_open::wait_for_verdict;
use execlog::*;

fn run(n: u32) -> ExecutionId {
    ExecutionId::from(format!("run-{n}"))
}

fn tenant() -> TenantId {
    TenantId::from("acme")
}

/// A store of `runs` executions of `events` events each, `payload` bytes of output per
/// event, closed cleanly; returns how many bytes of records its checkpoint covers.
fn filled(dir: &Path, runs: u32, events: u64, payload: usize) -> u64 {
    let s = LogStore::open(dir).unwrap();
    for r in 0..runs {
        let batch: Vec<_> = (0..events)
            .map(|i| ExecutionEventData::StepCompleted {
                step_id: StepId::from(format!("s{i}")),
                output: Some("x".repeat(payload)),
                duration_ms: i,
            })
            .collect();
        s.append_batch_blocking(&run(r), &tenant(), batch).unwrap();
    }
    s.close().unwrap();
    let s =
        LogStore::open_with(dir, Options::default().verify_checkpoint_after_open(false)).unwrap();
    let covered = s.recovery_report().checkpoint_bytes;
    assert!(covered > 0, "{:?}", s.recovery_report());
    s.close().unwrap();
    covered
}

fn deferred(s: &LogStore) -> bool {
    let report = s.recovery_report();
    assert!(report.checkpoint_ignored.is_none(), "{report:?}");
    report.checkpoint_verification_deferred
}

#[test]
fn a_small_store_is_verified_before_open_returns() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 10, 20, 100);
    let s = LogStore::open(dir.path()).unwrap();
    assert!(!deferred(&s));
    assert!(!s.recovery_report().index_decoded_after_open);
    assert!(!s.stats().checkpoint_unverified);
    assert_eq!(s.load_events_blocking(&run(3)).unwrap().len(), 20);
}

#[test]
fn the_default_turns_to_after_open_at_exactly_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let covered = filled(dir.path(), 10, 20, 100);
    let at = |from| Options::default().verify_after_open_from(from);

    let s = LogStore::open_with(dir.path(), at(covered + 1)).unwrap();
    assert!(!deferred(&s), "one byte short of the threshold");
    assert!(!s.checkpoint_unverified(), "verified before open returned");
    s.close().unwrap();

    let s = LogStore::open_with(dir.path(), at(covered)).unwrap();
    assert!(deferred(&s), "at the threshold");
    assert!(s.recovery_report().index_decoded_after_open);
    wait_for_verdict(&s);
    assert_eq!(s.stats().checkpoint_refuted, None);
    assert!(!s.checkpoint_unverified());
    assert_eq!(
        s.append_blocking(&run(0), &tenant(), step_event(20))
            .unwrap(),
        21
    );
    s.close().unwrap();
}

#[test]
fn an_explicit_choice_holds_at_every_size() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 10, 20, 100);

    let before = Options::default()
        .verify_after_open_from(1)
        .verify_checkpoint_after_open(false);
    let s = LogStore::open_with(dir.path(), before).unwrap();
    assert!(!deferred(&s), "off, though past the threshold");
    s.close().unwrap();

    let after = Options::default()
        .verify_after_open_from(u64::MAX)
        .verify_checkpoint_after_open(true);
    let s = LogStore::open_with(dir.path(), after).unwrap();
    assert!(deferred(&s), "on, though below the threshold");
    wait_for_verdict(&s);
    s.close().unwrap();
}

/// The real threshold, without the hook: a store of a little more than 64 MiB.
#[test]
fn a_store_past_one_default_segment_is_verified_after_open() {
    let dir = tempfile::tempdir().unwrap();
    let covered = filled(dir.path(), 40, 26, 64 << 10);
    assert!(covered >= VERIFY_AFTER_OPEN_FROM_BYTES, "{covered}");

    let s = LogStore::open(dir.path()).unwrap();
    assert!(deferred(&s));
    assert_eq!(s.load_events_blocking(&run(39)).unwrap().len(), 26);
    wait_for_verdict(&s);
    assert_eq!(s.stats().checkpoint_refuted, None);
    assert_eq!(
        s.append_blocking(&run(0), &tenant(), step_event(26))
            .unwrap(),
        27
    );
    s.close().unwrap();

    // A read-only open verifies before it returns, whatever the size.
    let s = LogStore::open_read_only(dir.path()).unwrap();
    assert!(!deferred(&s));
    assert_eq!(s.load_events_blocking(&run(0)).unwrap().len(), 27);
}
