//! `LogStore::import_blocking`, the migration path (src/import.rs): events keep their
//! sequences and timestamps, a chunk is stored whole or not at all and only as the
//! execution's next sequence, and imported times, older or newer than the store's
//! clock, change neither what a reopen accepts (with or without its checkpoint) nor
//! the order of later appends' times.
//!
//! Regressions guarded: an import that duplicates or skips events when a migration is
//! run again; an imported old timestamp that makes the checkpoint check refuse the
//! checkpoint, or a future one that lets later appends go back in time.

#![allow(clippy::unwrap_used)]

mod common;

use chrono::{DateTime, Duration, Utc};
use common::{small_segments, step_event};
use execlog::*;

fn event(execution: &str, tenant: &str, sequence: u64, at: DateTime<Utc>) -> StoredEvent {
    StoredEvent {
        sequence,
        execution_id: ExecutionId::from(execution),
        tenant_id: TenantId::from(tenant),
        event: step_event(sequence),
        timestamp: at,
    }
}

/// Events `first..=last` of `execution`, one millisecond apart from `start`.
fn chunk(
    execution: &str,
    tenant: &str,
    first: u64,
    last: u64,
    start: DateTime<Utc>,
) -> Vec<StoredEvent> {
    (first..=last)
        .map(|s| {
            event(
                execution,
                tenant,
                s,
                start + Duration::milliseconds(s as i64),
            )
        })
        .collect()
}

fn invalid(result: Result<u64>) -> String {
    match result {
        Err(Error::InvalidArgument(why)) => why,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn imported_events_keep_their_sequences_and_times_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open_with(dir.path(), small_segments()).unwrap();
    // Nanoseconds that no clock would hand out twice, long ago.
    let start = DateTime::from_timestamp_nanos(978_307_200_123_456_789);
    let mut expected = chunk("old", "acme", 1, 5, start);
    assert_eq!(store.import_blocking(expected.clone()).unwrap(), 5);
    let more = chunk("old", "acme", 6, 9, start);
    expected.extend(more.clone());
    assert_eq!(store.import_blocking(more).unwrap(), 9);
    assert_eq!(store.load_events_blocking(&"old".into()).unwrap(), expected);
    store.close().unwrap();

    let store = LogStore::open_with(dir.path(), small_segments()).unwrap();
    assert_eq!(store.load_events_blocking(&"old".into()).unwrap(), expected);
    assert_eq!(
        store.all_executions_blocking().unwrap(),
        vec![("old".into(), 9)]
    );
}

#[test]
fn a_chunk_must_continue_its_execution_and_nothing_else_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let start = Utc::now() - Duration::days(1);
    let id = ExecutionId::from("run");

    let why = invalid(store.import_blocking(chunk("run", "acme", 2, 3, start)));
    assert!(
        why.contains("continues at sequence 1, the chunk starts at 2"),
        "{why}"
    );
    assert_eq!(store.get_latest_sequence_blocking(&id).unwrap(), None);

    store
        .import_blocking(chunk("run", "acme", 1, 3, start))
        .unwrap();
    // Run again (a migration resumed): refused, nothing duplicated.
    let why = invalid(store.import_blocking(chunk("run", "acme", 1, 3, start)));
    assert!(why.contains("continues at sequence 4"), "{why}");
    // A gap.
    invalid(store.import_blocking(chunk("run", "acme", 5, 6, start)));
    // Another tenant.
    assert!(matches!(
        store.import_blocking(chunk("run", "other", 4, 4, start)),
        Err(Error::TenantMismatch { .. })
    ));
    // Before the execution's last event.
    let why =
        invalid(store.import_blocking(chunk("run", "acme", 4, 4, start - Duration::hours(1))));
    assert!(why.contains("before the last stored event's"), "{why}");
    assert_eq!(store.get_latest_sequence_blocking(&id).unwrap(), Some(3));
    assert_eq!(store.load_events_blocking(&id).unwrap().len(), 3);

    // Malformed chunks, refused before anything is looked up.
    invalid(store.import_blocking(Vec::new()));
    let mut mixed = chunk("run", "acme", 4, 5, start);
    mixed[1].execution_id = "elsewhere".into();
    invalid(store.import_blocking(mixed));
    let mut unordered = chunk("run", "acme", 4, 5, start);
    unordered.swap(0, 1);
    invalid(store.import_blocking(unordered));
    let mut back_in_time = chunk("run", "acme", 4, 5, start);
    back_in_time[1].timestamp = back_in_time[0].timestamp - Duration::nanoseconds(1);
    invalid(store.import_blocking(back_in_time));
    assert_eq!(store.get_latest_sequence_blocking(&id).unwrap(), Some(3));

    // The store still appends after its imported events.
    assert_eq!(
        store
            .append_blocking(&id, &"acme".into(), step_event(4))
            .unwrap(),
        4
    );
}

#[test]
fn old_imported_times_leave_the_clock_and_the_checkpoint_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let tenant = TenantId::from("acme");
    store
        .append_blocking(&"new".into(), &tenant, step_event(1))
        .unwrap();
    let year_2001 = DateTime::from_timestamp_nanos(978_307_200_000_000_000);
    store
        .import_blocking(chunk("old", "acme", 1, 50, year_2001))
        .unwrap();
    store
        .append_blocking(&"new".into(), &tenant, step_event(2))
        .unwrap();
    let before = store.load_events_blocking(&"new".into()).unwrap();
    assert!(before[1].timestamp >= before[0].timestamp);
    assert!(before[0].timestamp > Utc::now() - Duration::hours(1));
    store.close().unwrap();

    // The checkpoint written at close is accepted: its saved clock lies between the
    // newest event's time and the seal's, whatever the imported times.
    let store = LogStore::open(dir.path()).unwrap();
    let report = store.recovery_report();
    assert_eq!(report.checkpoint_ignored, None);
    assert!(report.checkpoint_bytes > 0);
    assert_eq!(
        store.load_events_blocking(&"old".into()).unwrap(),
        chunk("old", "acme", 1, 50, year_2001)
    );
    store
        .append_blocking(&"new".into(), &tenant, step_event(3))
        .unwrap();
    let after = store.load_events_blocking(&"new".into()).unwrap();
    assert!(after[2].timestamp >= after[1].timestamp);
    // Creation order is import order: "old" came second.
    assert_eq!(
        store.list_executions_blocking(&tenant, 10, 0).unwrap(),
        vec![ExecutionId::from("old"), ExecutionId::from("new")]
    );
}

#[test]
fn future_imported_times_hold_the_clock_there_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let future = Utc::now() + Duration::hours(2);
    let newest = future + Duration::milliseconds(20);
    {
        let store = LogStore::open(dir.path()).unwrap();
        store
            .import_blocking(chunk("ahead", "acme", 1, 20, future))
            .unwrap();
        // A later append anywhere in the store is not stamped before the newest
        // imported event (the store's clock is store-wide).
        store
            .append_blocking(&"other".into(), &"acme".into(), step_event(1))
            .unwrap();
        let other = store.load_events_blocking(&"other".into()).unwrap();
        assert!(other[0].timestamp >= newest, "{other:?}");
        store.close().unwrap();
    }
    for with_checkpoint in [true, false] {
        if !with_checkpoint {
            std::fs::remove_file(dir.path().join("checkpoint.idx")).unwrap();
        }
        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(store.recovery_report().checkpoint_ignored, None);
        store
            .append_blocking(&"ahead".into(), &"acme".into(), step_event(0))
            .unwrap();
        let events = store.load_events_blocking(&"ahead".into()).unwrap();
        let (last, before) = (events.last().unwrap(), &events[events.len() - 2]);
        assert!(
            last.timestamp >= before.timestamp,
            "checkpoint {with_checkpoint}"
        );
        assert!(last.timestamp >= newest);
        assert!(store.verify(|_, _| {}).is_clean());
        store.close().unwrap();
    }
}

#[test]
fn a_read_only_store_refuses_imports() {
    let dir = tempfile::tempdir().unwrap();
    LogStore::open(dir.path()).unwrap().close().unwrap();
    let store = LogStore::open_read_only(dir.path()).unwrap();
    invalid(store.import_blocking(chunk("run", "acme", 1, 1, Utc::now())));
}
