//! `LogStore`'s side of guarded appends (issue 13) that the conformance suite cannot
//! see: keys found again by every way an open builds the index (a checkpoint, a full
//! scan), keys whose hashes collide, memory per key, and format version 1 stores
//! taking keyed appends without an older build mistaking them for damage.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;

use common::*;
use execlog::*;

fn keyed(key: &str) -> AppendOptions {
    AppendOptions::key(key)
}

/// Appends `n` keyed batches (key `k{i}`, events `step_event(i)` and `i + 1000`).
fn fill(store: &LogStore, e: &ExecutionId, t: &TenantId, n: u64) -> Vec<AppendOutcome> {
    (0..n)
        .map(|i| {
            let events = vec![step_event(i), step_event(i + 1000)];
            let o = store
                .append_with_blocking(e, t, events, keyed(&format!("k{i}")))
                .unwrap();
            assert!(!o.replayed);
            o
        })
        .collect()
}

/// Every key of `fill` replays to its outcome; other events under it conflict.
fn check_replays(store: &LogStore, e: &ExecutionId, t: &TenantId, outcomes: &[AppendOutcome]) {
    for (i, o) in outcomes.iter().enumerate() {
        let i = i as u64;
        let events = vec![step_event(i), step_event(i + 1000)];
        let again = store
            .append_with_blocking(e, t, events, keyed(&format!("k{i}")))
            .unwrap();
        assert_eq!(
            again,
            AppendOutcome {
                replayed: true,
                ..*o
            }
        );
        let err = store
            .append_with_blocking(e, t, vec![step_event(i)], keyed(&format!("k{i}")))
            .unwrap_err();
        assert!(matches!(err, Error::IdempotencyConflict), "{err}");
    }
}

#[test]
fn keys_survive_a_checkpoint_and_a_full_scan() {
    let dir = tempfile::tempdir().unwrap();
    let (e, t) = (ExecutionId::from("keyed"), TenantId::from("t"));
    let outcomes = {
        let store = LogStore::open(dir.path()).unwrap();
        // Unkeyed appends in between, so that keyed batches are not the only records.
        store.append_blocking(&e, &t, step_event(0)).unwrap();
        let outcomes = fill(&store, &e, &t, 300);
        store.append_blocking(&e, &t, step_event(0)).unwrap();
        assert_eq!(store.stats().idempotency_keys, 300);
        outcomes
    };
    // A clean close wrote a checkpoint: the keys come from its walk over the records.
    let store = LogStore::open(dir.path()).unwrap();
    assert!(store.recovery_report().checkpoint_ignored.is_none());
    assert!(store.recovery_report().checkpoint_bytes > 0);
    assert_eq!(store.stats().idempotency_keys, 300);
    check_replays(&store, &e, &t, &outcomes);
    drop(store);
    // Without a checkpoint: the keys come from the full scan.
    fs::remove_file(dir.path().join("checkpoint.idx")).unwrap();
    let store =
        LogStore::open_with(dir.path(), Options::default().index_checkpoint(false)).unwrap();
    assert_eq!(store.recovery_report().checkpoint_bytes, 0);
    assert_eq!(store.stats().idempotency_keys, 300);
    check_replays(&store, &e, &t, &outcomes);
    assert_eq!(store.get_latest_sequence_blocking(&e).unwrap(), Some(602));
}

#[test]
fn colliding_hashes_keep_keys_exact() {
    // With 0 hash bits every key collides with every other: each lookup reads every
    // keyed append of the execution and must still find the one holding its key.
    let dir = tempfile::tempdir().unwrap();
    let options = || Options::default().idempotency_hash_bits(0);
    let (e, t) = (ExecutionId::from("collide"), TenantId::from("t"));
    let store = LogStore::open_with(dir.path(), options()).unwrap();
    let outcomes = fill(&store, &e, &t, 40);
    check_replays(&store, &e, &t, &outcomes);
    drop(store);
    let store = LogStore::open_with(dir.path(), options()).unwrap();
    check_replays(&store, &e, &t, &outcomes);
    let fresh = store
        .append_with_blocking(&e, &t, vec![step_event(7)], keyed("new"))
        .unwrap();
    assert_eq!(fresh.first_sequence, 81);
    assert!(!fresh.replayed);
}

#[test]
fn a_key_retried_while_its_append_is_in_flight_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    // A commit delay keeps each group in flight long enough for the racers to meet.
    let store = std::sync::Arc::new(
        LogStore::open_with(dir.path(), Options::default().commit_delay_us(20_000)).unwrap(),
    );
    let (e, t) = (ExecutionId::from("race"), TenantId::from("t"));
    let outcomes: Vec<AppendOutcome> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let store = &store;
                let (e, t) = (&e, &t);
                s.spawn(move || {
                    store
                        .append_with_blocking(e, t, vec![step_event(1)], keyed("once"))
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(outcomes.iter().filter(|o| !o.replayed).count(), 1);
    assert!(
        outcomes
            .iter()
            .all(|o| o.first_sequence == 1 && o.last_sequence == 1)
    );
    assert_eq!(store.load_events_blocking(&e).unwrap().len(), 1);
}

#[test]
fn key_memory_per_keyed_append() {
    // The budget (docs/DESIGN.md): a 16-byte entry per keyed append in a hash table
    // (plus its slack), never the key. Keys of 200 bytes must not change the figure.
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let t = TenantId::from("t");
    let n = 20_000u64;
    // One thread per execution, so that group commit shares the fdatasyncs.
    std::thread::scope(|s| {
        for x in 0..10 {
            let (store, t) = (&store, &t);
            s.spawn(move || {
                let e = ExecutionId::from(format!("mem-{x}"));
                for i in 0..n / 10 {
                    let key = format!("{i:0>200}");
                    store
                        .append_with_blocking(&e, t, vec![step_event(i)], keyed(&key))
                        .unwrap();
                }
            });
        }
    });
    let stats = store.stats();
    assert_eq!(stats.idempotency_keys as u64, n);
    let per_key = stats.idempotency_key_bytes as f64 / n as f64;
    eprintln!(
        "idempotency keys: {n} keyed appends of 200-byte keys in 10 executions: {} bytes, {per_key:.1} bytes per keyed append",
        stats.idempotency_key_bytes
    );
    assert!(per_key <= 40.0, "{per_key} bytes per keyed append");
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".seg") {
            fs::copy(entry.path(), to.join(name)).unwrap();
        }
    }
}

#[test]
fn a_format_v1_store_takes_keyed_appends_in_a_new_segment() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format_v1");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture, dir.path());
    let v1 = fs::read(dir.path().join("0000000001.seg")).unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let before = store.stats().events;
    let (e, t) = (ExecutionId::from("exec-a"), TenantId::from("tenant-1"));
    let last = store.get_latest_sequence_blocking(&e).unwrap().unwrap();
    let o = store
        .append_with_blocking(&e, &t, vec![step_event(9)], keyed("upgrade"))
        .unwrap();
    assert_eq!(o.first_sequence, last + 1);
    drop(store);
    // The version 1 segment is untouched; the keyed record went to segment 2, which
    // says version 2 or later (the current one), so an older build refuses the store
    // instead of cutting it.
    assert_eq!(fs::read(dir.path().join("0000000001.seg")).unwrap(), v1);
    let seg2 = fs::read(dir.path().join("0000000002.seg")).unwrap();
    assert!(u32::from_le_bytes(seg2[8..12].try_into().unwrap()) >= 2);
    let store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.stats().events, before + 1);
    let again = store
        .append_with_blocking(&e, &t, vec![step_event(9)], keyed("upgrade"))
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.first_sequence, o.first_sequence);
}

#[test]
fn tenant_views_read_blocking_and_through_trait_objects() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let (e, mine, other) = (
        ExecutionId::from("run"),
        TenantId::from("mine"),
        TenantId::from("other"),
    );
    store.append_blocking(&e, &mine, step_event(1)).unwrap();
    let own = store.tenant(&mine);
    assert_eq!(own.load_events_blocking(&e).unwrap().len(), 1);
    assert_eq!(own.get_latest_sequence_blocking(&e).unwrap(), Some(1));
    assert_eq!(
        own.list_executions_blocking(10, 0).unwrap(),
        vec![e.clone()]
    );
    let theirs = store.tenant(&other);
    assert!(theirs.load_events_blocking(&e).unwrap().is_empty());
    assert!(theirs.load_events_after_blocking(&e, 0).unwrap().is_empty());
    assert_eq!(theirs.get_latest_sequence_blocking(&e).unwrap(), None);
    assert!(!theirs.execution_exists_blocking(&e).unwrap());
    assert_eq!(theirs.count_events_blocking(&e).unwrap(), 0);
    assert!(theirs.list_executions_blocking(10, 0).unwrap().is_empty());
    // A trait object: the view is made with `TenantView::new`.
    let shared: std::sync::Arc<dyn GuardedEventStore> = std::sync::Arc::new(store);
    futures::executor::block_on(async {
        let view = TenantView::new(shared.as_ref(), &other);
        assert!(view.load_events(&e).await.unwrap().is_empty());
        let view = TenantView::new(shared.as_ref(), &mine);
        assert_eq!(view.count_events(&e).await.unwrap(), 1);
    });
}
