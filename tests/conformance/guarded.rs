//! The guarded appends of issue 13 (`GuardedEventStore`, src/guard.rs), test by test,
//! generic over the backend like the rest of the suite; `suite!` runs them.
//!
//! The contract, as the tests read it:
//! - `ExpectedSequence`: `Any` is an unguarded append; `NoExecution` (= `Exactly(0)`)
//!   needs the execution not to exist; `Exactly(n)` needs its latest sequence to be `n`.
//!   Otherwise `WrongExpectedSequence { expected, actual }` (actual: the latest sequence
//!   handed out, `None` if there is no execution), nothing written, no sequence used up.
//! - An idempotency key (non-empty, at most 256 bytes) is scoped to its execution; a
//!   retry with equal events writes nothing and returns the first outcome with
//!   `replayed: true`, with other events it is `IdempotencyConflict`. Every key ever
//!   used is remembered, across reopens, crashes and checkpoints.
//! - Checks in this order: ids and events, tenant, key, expected sequence.
//! - All of it atomic against concurrent appends, guarded or not.
//! - `TenantView`: another tenant's execution reads exactly as an unknown one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::Backend;
use super::Twins;
use crate::common::*;
use execlog::*;

/// `len` events of an append tagged `tag` (`assert_whole_batches` reads the tag and
/// the length back).
fn tagged(tag: &str, len: usize) -> Vec<ExecutionEventData> {
    (0..len)
        .map(|i| ExecutionEventData::StepCompleted {
            step_id: StepId::from(tag),
            output: Some(format!("{tag}/{i}")),
            duration_ms: len as u64,
        })
        .collect()
}

/// The tag `tagged` put in an event.
fn tag_of(e: &StoredEvent) -> String {
    match &e.event {
        ExecutionEventData::StepCompleted { step_id, .. } => step_id.to_string(),
        other => panic!("not a tagged event: {other:?}"),
    }
}

fn stored(first: u64, last: u64) -> AppendOutcome {
    AppendOutcome {
        first_sequence: first,
        last_sequence: last,
        replayed: false,
    }
}

fn replayed(first: u64, last: u64) -> AppendOutcome {
    AppendOutcome {
        first_sequence: first,
        last_sequence: last,
        replayed: true,
    }
}

fn key(k: &str) -> AppendOptions {
    AppendOptions::key(k)
}

fn expect(expected: ExpectedSequence) -> AppendOptions {
    AppendOptions::expect(expected)
}

/// `Exactly(0)` as `NoExecution`: the contract makes them the same, so an error may
/// echo either.
fn norm(expected: ExpectedSequence) -> ExpectedSequence {
    match expected {
        ExpectedSequence::Exactly(0) => ExpectedSequence::NoExecution,
        other => other,
    }
}

/// The `WrongExpectedSequence` in `err`, as `(expected, actual)` (`expected`
/// normalized by `norm`); panics on any other error.
#[track_caller]
fn wrong_expected(err: &Error) -> (ExpectedSequence, Option<u64>) {
    match err {
        Error::WrongExpectedSequence { expected, actual } => (norm(*expected), *actual),
        other => panic!("expected WrongExpectedSequence, got {other:?}"),
    }
}

/// The `execlog::Error` an `anyhow::Error` carries.
#[track_caller]
fn into_engine(err: anyhow::Error) -> Error {
    err.downcast::<Error>()
        .unwrap_or_else(|e| panic!("not an execlog::Error: {e:?}"))
}

#[track_caller]
fn assert_wrong(err: &anyhow::Error, expected: ExpectedSequence, actual: Option<u64>) {
    assert_eq!(
        wrong_expected(engine_error(err)),
        (norm(expected), actual),
        "{err}"
    );
}

#[track_caller]
fn assert_conflict(err: &anyhow::Error) {
    assert!(
        matches!(engine_error(err), Error::IdempotencyConflict),
        "expected IdempotencyConflict, got {err:?}"
    );
}

#[track_caller]
fn assert_invalid(err: &anyhow::Error) {
    assert!(
        matches!(engine_error(err), Error::InvalidArgument(_)),
        "expected InvalidArgument, got {err:?}"
    );
}

#[track_caller]
fn assert_mismatch(err: &anyhow::Error) {
    assert!(
        matches!(engine_error(err), Error::TenantMismatch { .. }),
        "expected TenantMismatch, got {err:?}"
    );
}

/// The events of `e` as `(sequence, tag)`.
async fn tags<S: GuardedEventStore>(store: &S, e: &ExecutionId) -> Vec<(u64, String)> {
    store
        .load_events(e)
        .await
        .unwrap()
        .iter()
        .map(|ev| (ev.sequence, tag_of(ev)))
        .collect()
}

/// `append_with(.., AppendOptions::default())` is `append_batch` with a richer answer:
/// the same sequences, the same refusals; `append` and `append_batch` around it are
/// unchanged, and an unkeyed guarded append never deduplicates.
pub async fn default_options_append_like_append_batch<B: Backend>(b: B) {
    let store = b.open();
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    let got = store
        .append_with(&e, &t, tagged("a", 1), AppendOptions::default())
        .await
        .unwrap();
    assert_eq!(got, stored(1, 1));
    assert_eq!(
        store
            .append(&e, &t, tagged("b", 1).remove(0))
            .await
            .unwrap(),
        2
    );
    let got = store
        .append_with(&e, &t, tagged("c", 3), AppendOptions::default())
        .await
        .unwrap();
    assert_eq!(got, stored(3, 5));
    assert_eq!(store.append_batch(&e, &t, tagged("d", 2)).await.unwrap(), 6);
    // Equal events without a key are stored again, as append_batch would.
    let got = store
        .append_with(&e, &t, tagged("c", 3), AppendOptions::default())
        .await
        .unwrap();
    assert_eq!(got, stored(8, 10));
    let got = store
        .append_with_blocking(&e, &t, tagged("e", 2), AppendOptions::default())
        .unwrap();
    assert_eq!(got, stored(11, 12));
    assert_eq!(
        tags(&store, &e).await,
        [
            (1, "a"),
            (2, "b"),
            (3, "c"),
            (4, "c"),
            (5, "c"),
            (6, "d"),
            (7, "d"),
            (8, "c"),
            (9, "c"),
            (10, "c"),
            (11, "e"),
            (12, "e"),
        ]
        .map(|(s, t)| (s, t.to_string()))
    );
    assert_whole_batches(&store.load_events(&e).await.unwrap(), "default options");
    // The same refusals as append_batch.
    let err = store
        .append_with(&e, &t, Vec::new(), AppendOptions::default())
        .await
        .unwrap_err();
    assert_invalid(&err);
    let err = store
        .append_with(
            &e,
            &TenantId::from("other"),
            tagged("x", 1),
            AppendOptions::default(),
        )
        .await
        .unwrap_err();
    assert_mismatch(&err);
    let fresh = ExecutionId::new();
    let err = store
        .append_with(&fresh, &t, Vec::new(), AppendOptions::default())
        .await
        .unwrap_err();
    assert_invalid(&err);
    assert!(!store.execution_exists(&fresh).await.unwrap());
    for bad in [String::new(), "x".repeat(MAX_ID_BYTES + 1)] {
        let err = store
            .append_with(
                &ExecutionId::from(bad.as_str()),
                &t,
                tagged("x", 1),
                AppendOptions::default(),
            )
            .await
            .unwrap_err();
        assert_invalid(&err);
        let err = store
            .append_with(
                &ExecutionId::new(),
                &TenantId::from(bad.as_str()),
                tagged("x", 1),
                AppendOptions::default(),
            )
            .await
            .unwrap_err();
        assert_invalid(&err);
    }
    assert_eq!(
        store
            .append(&e, &t, tagged("f", 1).remove(0))
            .await
            .unwrap(),
        13
    );
    assert_eq!(
        store.list_executions(&t, 10, 0).await.unwrap(),
        vec![e.clone()]
    );
}

/// `NoExecution` and `Exactly(0)` create an execution, and fail on an existing one,
/// with the expectation as given and the latest sequence.
pub async fn no_execution_expects_a_new_execution<B: Backend>(b: B) {
    let store = b.open();
    let t = TenantId::from("t");
    let (e1, e2) = (ExecutionId::new(), ExecutionId::new());
    let got = store
        .append_with(
            &e1,
            &t,
            tagged("a", 1),
            expect(ExpectedSequence::NoExecution),
        )
        .await
        .unwrap();
    assert_eq!(got, stored(1, 1));
    let got = store
        .append_with(
            &e2,
            &t,
            tagged("b", 3),
            expect(ExpectedSequence::Exactly(0)),
        )
        .await
        .unwrap();
    assert_eq!(got, stored(1, 3));
    for expected in [ExpectedSequence::NoExecution, ExpectedSequence::Exactly(0)] {
        let err = store
            .append_with(&e1, &t, tagged("c", 1), expect(expected))
            .await
            .unwrap_err();
        assert_wrong(&err, expected, Some(1));
        let err = store
            .append_with(&e2, &t, tagged("c", 2), expect(expected))
            .await
            .unwrap_err();
        assert_wrong(&err, expected, Some(3));
        let err = store
            .append_with_blocking(&e2, &t, tagged("c", 1), expect(expected))
            .unwrap_err();
        assert_eq!(wrong_expected(&err), (norm(expected), Some(3)));
    }
    // An execution created by a plain append exists as well.
    let e3 = ExecutionId::new();
    store
        .append(&e3, &t, tagged("p", 1).remove(0))
        .await
        .unwrap();
    let err = store
        .append_with(
            &e3,
            &t,
            tagged("c", 1),
            expect(ExpectedSequence::NoExecution),
        )
        .await
        .unwrap_err();
    assert_wrong(&err, ExpectedSequence::NoExecution, Some(1));
    assert_eq!(tags(&store, &e1).await, vec![(1, "a".to_string())]);
    assert_eq!(store.count_events(&e2).await.unwrap(), 3);
    assert_eq!(store.count_events(&e3).await.unwrap(), 1);
}

/// `Exactly(n)` appends only when the latest sequence is `n`, singly and in batches;
/// any other `n` is refused with the latest sequence, also on an unknown execution.
pub async fn exactly_expects_the_latest_sequence<B: Backend>(b: B) {
    let store = b.open();
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    let err = store
        .append_with(&e, &t, tagged("x", 1), expect(ExpectedSequence::Exactly(1)))
        .await
        .unwrap_err();
    assert_wrong(&err, ExpectedSequence::Exactly(1), None);
    let err = store
        .append_with(&e, &t, tagged("x", 2), expect(ExpectedSequence::Exactly(5)))
        .await
        .unwrap_err();
    assert_wrong(&err, ExpectedSequence::Exactly(5), None);
    assert!(!store.execution_exists(&e).await.unwrap());
    store.append_batch(&e, &t, tagged("p", 4)).await.unwrap();
    let mut latest = 4;
    for round in 0..6u64 {
        let len = 1 + (round % 3) as usize;
        for wrong in [0, 1, latest - 1, latest + 1, latest + len as u64, u64::MAX] {
            let expected = ExpectedSequence::Exactly(wrong);
            let err = store
                .append_with(&e, &t, tagged("x", len), expect(expected))
                .await
                .unwrap_err();
            assert_wrong(&err, expected, Some(latest));
        }
        let got = store
            .append_with(
                &e,
                &t,
                tagged(&format!("r{round}"), len),
                expect(ExpectedSequence::Exactly(latest)),
            )
            .await
            .unwrap();
        assert_eq!(got, stored(latest + 1, latest + len as u64));
        latest += len as u64;
        assert_eq!(store.get_latest_sequence(&e).await.unwrap(), Some(latest));
    }
    // Any never fails on expectations, NoExecution is Exactly(0).
    let got = store
        .append_with(&e, &t, tagged("any", 2), expect(ExpectedSequence::Any))
        .await
        .unwrap();
    assert_eq!(got, stored(latest + 1, latest + 2));
    latest += 2;
    let got = store
        .append_with_blocking(
            &e,
            &t,
            tagged("blocking", 1),
            expect(ExpectedSequence::Exactly(latest)),
        )
        .unwrap();
    assert_eq!(got, stored(latest + 1, latest + 1));
    let events = store.load_events(&e).await.unwrap();
    assert_eq!(events.len() as u64, latest + 1);
    assert!(
        events.iter().all(|ev| tag_of(ev) != "x"),
        "a refused append was stored"
    );
    assert_whole_batches(&events, "exactly");
}

/// A refused expectation writes nothing, uses up no sequence, and on an unknown
/// execution creates nothing: no owner, no listing, no events.
pub async fn a_refused_expectation_writes_nothing_and_uses_no_sequence<B: Backend>(b: B) {
    let store = b.open();
    let (a, other) = (TenantId::from("a"), TenantId::from("b"));
    let e = ExecutionId::new();
    for expected in [ExpectedSequence::Exactly(1), ExpectedSequence::Exactly(7)] {
        let err = store
            .append_with(&e, &a, tagged("x", 3), expect(expected))
            .await
            .unwrap_err();
        assert_wrong(&err, expected, None);
    }
    // Not created: no events, no owner, not listed; another tenant may create it.
    assert!(!store.execution_exists(&e).await.unwrap());
    assert!(store.load_events(&e).await.unwrap().is_empty());
    assert_eq!(store.execution_tenant(&e).await.unwrap(), None);
    assert!(store.list_executions(&a, 10, 0).await.unwrap().is_empty());
    let got = store
        .append_with(
            &e,
            &other,
            tagged("b1", 2),
            expect(ExpectedSequence::NoExecution),
        )
        .await
        .unwrap();
    assert_eq!(got, stored(1, 2));
    assert_eq!(
        store.execution_tenant(&e).await.unwrap(),
        Some(other.clone())
    );
    assert_eq!(
        store.list_executions(&other, 10, 0).await.unwrap(),
        vec![e.clone()]
    );
    // Refusals between successful appends leave no gap.
    for i in 0..5u64 {
        let err = store
            .append_with(
                &e,
                &other,
                tagged("x", 2),
                expect(ExpectedSequence::Exactly(i)),
            )
            .await
            .unwrap_err();
        assert_wrong(&err, ExpectedSequence::Exactly(i), Some(2 + i));
        assert_eq!(
            store
                .append(&e, &other, tagged(&format!("p{i}"), 1).remove(0))
                .await
                .unwrap(),
            3 + i
        );
    }
    let got = store
        .append_with(
            &e,
            &other,
            tagged("last", 3),
            expect(ExpectedSequence::Exactly(7)),
        )
        .await
        .unwrap();
    assert_eq!(got, stored(8, 10));
    let events = store.load_events(&e).await.unwrap();
    assert_eq!(
        events.iter().map(|ev| ev.sequence).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert!(events.iter().all(|ev| tag_of(ev) != "x"));
    assert!(store.list_executions(&a, 10, 0).await.unwrap().is_empty());
    drop(store);
    let store = b.open();
    assert_eq!(store.count_events(&e).await.unwrap(), 10);
    assert_eq!(
        store
            .append(&e, &other, tagged("z", 1).remove(0))
            .await
            .unwrap(),
        11
    );
}

/// Keys are non-empty and at most 256 bytes (bytes, not characters); a refused key
/// writes nothing.
pub async fn idempotency_key_length_limits<B: Backend>(b: B) {
    let store = b.open();
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    assert_eq!(MAX_IDEMPOTENCY_KEY_BYTES, 256);
    let bad = [
        String::new(),
        "k".repeat(257),
        "k".repeat(4096),
        // 129 characters, 257 bytes.
        format!("{}k", "é".repeat(128)),
        // 65 characters, 260 bytes.
        "🚀".repeat(65),
    ];
    for k in &bad {
        let err = store
            .append_with(&e, &t, tagged("x", 1), key(k))
            .await
            .unwrap_err();
        assert_invalid(&err);
        let err = store
            .append_with_blocking(&e, &t, tagged("x", 1), key(k))
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    }
    assert!(!store.execution_exists(&e).await.unwrap());
    assert_eq!(store.execution_tenant(&e).await.unwrap(), None);
    let good = [
        "k".to_string(),
        "k".repeat(256),
        "é".repeat(128),
        "🚀".repeat(64),
        format!("{}é", "k".repeat(254)),
    ];
    for (i, k) in good.iter().enumerate() {
        assert_eq!(k.len().min(256), k.len());
        let got = store
            .append_with(&e, &t, tagged(&format!("g{i}"), 1), key(k))
            .await
            .unwrap();
        let n = i as u64 + 1;
        assert_eq!(got, stored(n, n), "key of {} bytes", k.len());
    }
    for (i, k) in good.iter().enumerate() {
        let got = store
            .append_with(&e, &t, tagged(&format!("g{i}"), 1), key(k))
            .await
            .unwrap();
        let n = i as u64 + 1;
        assert_eq!(got, replayed(n, n), "key of {} bytes", k.len());
    }
    assert_eq!(store.count_events(&e).await.unwrap(), good.len() as u64);
    // A bad key is refused before anything else: also on an existing execution.
    let err = store
        .append_with(&e, &t, tagged("x", 1), key(&"k".repeat(257)))
        .await
        .unwrap_err();
    assert_invalid(&err);
    let err = store
        .append_with(
            &e,
            &t,
            tagged("x", 1),
            expect(ExpectedSequence::Exactly(99)).with_key(""),
        )
        .await
        .unwrap_err();
    assert_invalid(&err);
    assert_eq!(store.count_events(&e).await.unwrap(), good.len() as u64);
}

/// A retry with the key and equal events writes nothing and returns the first outcome,
/// however often, whatever was appended since, singly or as a batch, through either
/// API; events of every variant compare equal to themselves.
pub async fn a_keyed_retry_replays_the_original_outcome<B: Backend>(b: B) {
    let store = b.open();
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    let got = store
        .append_with(&e, &t, tagged("one", 1), key("k1"))
        .await
        .unwrap();
    assert_eq!(got, stored(1, 1));
    let got = store
        .append_with(&e, &t, tagged("three", 3), key("k3"))
        .await
        .unwrap();
    assert_eq!(got, stored(2, 4));
    store.append_batch(&e, &t, tagged("p", 2)).await.unwrap();
    let every = every_variant();
    let n = every.len() as u64;
    let got = store
        .append_with(&e, &t, every.clone(), key("every"))
        .await
        .unwrap();
    assert_eq!(got, stored(7, 6 + n));
    let latest = 6 + n;
    for _ in 0..3 {
        let got = store
            .append_with(&e, &t, tagged("one", 1), key("k1"))
            .await
            .unwrap();
        assert_eq!(got, replayed(1, 1));
        let got = store
            .append_with(&e, &t, tagged("three", 3), key("k3"))
            .await
            .unwrap();
        assert_eq!(got, replayed(2, 4));
        let got = store
            .append_with_blocking(&e, &t, tagged("three", 3), key("k3"))
            .unwrap();
        assert_eq!(got, replayed(2, 4));
        let got = store
            .append_with(&e, &t, every.clone(), key("every"))
            .await
            .unwrap();
        assert_eq!(got, replayed(7, latest));
    }
    assert_eq!(store.get_latest_sequence(&e).await.unwrap(), Some(latest));
    // Stored once, and only the original is there.
    let events = store.load_events(&e).await.unwrap();
    assert_eq!(events.len() as u64, latest);
    let stored_every: Vec<_> = events[6..].iter().map(|ev| ev.event.clone()).collect();
    assert_eq!(stored_every, every);
    // The same events under another key, or with no key, are new appends.
    let got = store
        .append_with(&e, &t, tagged("one", 1), key("k1-again"))
        .await
        .unwrap();
    assert_eq!(got, stored(latest + 1, latest + 1));
    let got = store
        .append_with(&e, &t, tagged("one", 1), AppendOptions::default())
        .await
        .unwrap();
    assert_eq!(got, stored(latest + 2, latest + 2));
    let got = store
        .append_with(&e, &t, tagged("one", 1), key("k1"))
        .await
        .unwrap();
    assert_eq!(got, replayed(1, 1));
    assert_eq!(store.count_events(&e).await.unwrap(), latest + 2);
}

/// A key reused with other events (any difference: content, order, length, one event
/// of a batch) is `IdempotencyConflict` and writes nothing; the original still replays.
pub async fn a_keyed_retry_with_other_events_conflicts<B: Backend>(b: B) {
    let store = b.open();
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    let original = vec![step_event(1), step_event(2), step_event(3)];
    let got = store
        .append_with(&e, &t, original.clone(), key("k"))
        .await
        .unwrap();
    assert_eq!(got, stored(1, 3));
    let single = vec![step_event(9)];
    assert_eq!(
        store
            .append_with(&e, &t, single.clone(), key("s"))
            .await
            .unwrap(),
        stored(4, 4)
    );
    let changed_last = ExecutionEventData::StepCompleted {
        step_id: StepId::from("s3"),
        output: Some("output 3".into()),
        duration_ms: 4,
    };
    let others = [
        vec![step_event(1), step_event(2), step_event(4)],
        vec![step_event(1), step_event(2), changed_last],
        vec![step_event(1), step_event(3), step_event(2)],
        vec![step_event(3), step_event(2), step_event(1)],
        vec![step_event(1), step_event(2)],
        vec![step_event(1)],
        vec![step_event(2), step_event(3)],
        vec![step_event(1), step_event(2), step_event(3), step_event(3)],
        vec![step_event(1), step_event(2), step_event(3), step_event(1)],
        single.clone(),
        tagged("k", 3),
    ];
    for other in &others {
        let err = store
            .append_with(&e, &t, other.clone(), key("k"))
            .await
            .unwrap_err();
        assert_conflict(&err);
        let err = store
            .append_with_blocking(&e, &t, other.clone(), key("k"))
            .unwrap_err();
        assert!(matches!(err, Error::IdempotencyConflict), "{err:?}");
    }
    for other in [
        original.clone(),
        vec![step_event(10)],
        vec![step_event(9); 2],
    ] {
        let err = store
            .append_with(&e, &t, other, key("s"))
            .await
            .unwrap_err();
        assert_conflict(&err);
    }
    assert_eq!(store.count_events(&e).await.unwrap(), 4);
    assert_eq!(
        store
            .append_with(&e, &t, original.clone(), key("k"))
            .await
            .unwrap(),
        replayed(1, 3)
    );
    assert_eq!(
        store.append_with(&e, &t, single, key("s")).await.unwrap(),
        replayed(4, 4)
    );
    // Nothing of a conflict was written: the next append is 5.
    assert_eq!(store.append(&e, &t, step_event(5)).await.unwrap(), 5);
    let events = store.load_events(&e).await.unwrap();
    let numbers: Vec<_> = events.iter().map(|ev| event_number(&ev.event)).collect();
    assert_eq!(numbers, [1, 2, 3, 9, 5].map(Some));
}

/// A key belongs to its execution: the same key on another execution (of the same or
/// another tenant) is independent, with equal or other events.
pub async fn keys_are_scoped_to_their_execution<B: Backend>(b: B) {
    let store = b.open();
    let (a, other) = (TenantId::from("a"), TenantId::from("b"));
    let (e1, e2, e3) = (ExecutionId::new(), ExecutionId::new(), ExecutionId::new());
    store.append_batch(&e2, &a, tagged("p", 2)).await.unwrap();
    assert_eq!(
        store
            .append_with(&e1, &a, tagged("x", 2), key("k"))
            .await
            .unwrap(),
        stored(1, 2)
    );
    // Same key, same events, another execution: stored, not a replay.
    assert_eq!(
        store
            .append_with(&e2, &a, tagged("x", 2), key("k"))
            .await
            .unwrap(),
        stored(3, 4)
    );
    // Same key, other events, another tenant's execution: stored, not a conflict.
    assert_eq!(
        store
            .append_with(&e3, &other, tagged("y", 1), key("k"))
            .await
            .unwrap(),
        stored(1, 1)
    );
    assert_eq!(
        store
            .append_with(&e1, &a, tagged("x", 2), key("k"))
            .await
            .unwrap(),
        replayed(1, 2)
    );
    assert_eq!(
        store
            .append_with(&e2, &a, tagged("x", 2), key("k"))
            .await
            .unwrap(),
        replayed(3, 4)
    );
    assert_eq!(
        store
            .append_with(&e3, &other, tagged("y", 1), key("k"))
            .await
            .unwrap(),
        replayed(1, 1)
    );
    assert_conflict(
        &store
            .append_with(&e1, &a, tagged("y", 1), key("k"))
            .await
            .unwrap_err(),
    );
    assert_conflict(
        &store
            .append_with(&e3, &other, tagged("x", 2), key("k"))
            .await
            .unwrap_err(),
    );
    // Execution ids that differ only in their escaping: independent too.
    let (nul, look_alike) = (ExecutionId::from("n\0"), ExecutionId::from("n\\0"));
    assert_eq!(
        store
            .append_with(&nul, &a, tagged("n1", 1), key("k"))
            .await
            .unwrap(),
        stored(1, 1)
    );
    assert_eq!(
        store
            .append_with(&look_alike, &a, tagged("n2", 1), key("k"))
            .await
            .unwrap(),
        stored(1, 1)
    );
    assert_eq!(store.count_events(&e1).await.unwrap(), 2);
    assert_eq!(store.count_events(&e2).await.unwrap(), 4);
    assert_eq!(store.count_events(&e3).await.unwrap(), 1);
    assert_eq!(tags(&store, &look_alike).await, vec![(1, "n2".to_string())]);
}

/// The tenant comes first: another tenant retrying a known key (equal or other events,
/// any expectation) gets `TenantMismatch`, never a replay, a conflict or a sequence;
/// the error names neither the owner nor anything of the original append.
pub async fn the_tenant_is_checked_before_the_key<B: Backend>(b: B) {
    let store = b.open();
    let e = ExecutionId::new();
    let (owner, other) = (TenantId::from("owner-tenant-91c2"), TenantId::from("b"));
    store
        .append_with(&e, &owner, tagged("o", 2), key("k"))
        .await
        .unwrap();
    let attempts = [
        (tagged("o", 2), key("k")),
        (tagged("z", 1), key("k")),
        (
            tagged("o", 2),
            expect(ExpectedSequence::Exactly(2)).with_key("k"),
        ),
        (
            tagged("o", 2),
            expect(ExpectedSequence::NoExecution).with_key("k"),
        ),
        (
            tagged("o", 2),
            expect(ExpectedSequence::Exactly(7)).with_key("k"),
        ),
        (tagged("z", 1), expect(ExpectedSequence::NoExecution)),
        (tagged("z", 1), expect(ExpectedSequence::Exactly(2))),
        (tagged("z", 1), key("new")),
    ];
    for (events, options) in attempts {
        let err = store
            .append_with(&e, &other, events.clone(), options.clone())
            .await
            .unwrap_err();
        assert_mismatch(&err);
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(owner.as_str()), "the owner leaked: {text}");
        }
        let err = store
            .append_with_blocking(&e, &other, events, options)
            .unwrap_err();
        assert!(matches!(err, Error::TenantMismatch { .. }), "{err:?}");
    }
    assert_eq!(store.count_events(&e).await.unwrap(), 2);
    assert!(
        store
            .list_executions(&other, 10, 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .append_with(&e, &owner, tagged("o", 2), key("k"))
            .await
            .unwrap(),
        replayed(1, 2)
    );
    drop(store);
    let store = b.open();
    assert_mismatch(
        &store
            .append_with(&e, &other, tagged("o", 2), key("k"))
            .await
            .unwrap_err(),
    );
}

/// The key comes before the expected sequence: a retry is answered (replay or conflict)
/// even when its expectation no longer holds, because the original passed it; a new
/// key with a wrong expectation is refused.
pub async fn the_key_is_checked_before_the_expected_sequence<B: Backend>(b: B) {
    let store = b.open();
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    let create = expect(ExpectedSequence::NoExecution).with_key("create");
    assert_eq!(
        store
            .append_with(&e, &t, tagged("c", 2), create.clone())
            .await
            .unwrap(),
        stored(1, 2)
    );
    let next = expect(ExpectedSequence::Exactly(2)).with_key("next");
    assert_eq!(
        store
            .append_with(&e, &t, tagged("n", 1), next.clone())
            .await
            .unwrap(),
        stored(3, 3)
    );
    store.append(&e, &t, step_event(4)).await.unwrap();
    // Neither expectation holds any more: the retries are replays.
    assert_eq!(
        store
            .append_with(&e, &t, tagged("c", 2), create.clone())
            .await
            .unwrap(),
        replayed(1, 2)
    );
    assert_eq!(
        store
            .append_with(&e, &t, tagged("n", 1), next.clone())
            .await
            .unwrap(),
        replayed(3, 3)
    );
    assert_eq!(
        store
            .append_with_blocking(&e, &t, tagged("n", 1), next.clone())
            .unwrap(),
        replayed(3, 3)
    );
    // With any other expectation, too.
    for expected in [
        ExpectedSequence::Exactly(0),
        ExpectedSequence::Exactly(1),
        ExpectedSequence::Exactly(4),
        ExpectedSequence::Exactly(100),
    ] {
        assert_eq!(
            store
                .append_with(&e, &t, tagged("n", 1), expect(expected).with_key("next"))
                .await
                .unwrap(),
            replayed(3, 3)
        );
        // Other events under a used key: a conflict, not a wrong expectation.
        assert_conflict(
            &store
                .append_with(&e, &t, tagged("m", 1), expect(expected).with_key("next"))
                .await
                .unwrap_err(),
        );
    }
    // A new key is checked against the expectation.
    let err = store
        .append_with(
            &e,
            &t,
            tagged("w", 1),
            expect(ExpectedSequence::Exactly(3)).with_key("fresh"),
        )
        .await
        .unwrap_err();
    assert_wrong(&err, ExpectedSequence::Exactly(3), Some(4));
    let err = store
        .append_with(
            &e,
            &t,
            tagged("w", 1),
            expect(ExpectedSequence::NoExecution).with_key("fresh"),
        )
        .await
        .unwrap_err();
    assert_wrong(&err, ExpectedSequence::NoExecution, Some(4));
    assert_eq!(
        store
            .append_with(
                &e,
                &t,
                tagged("w", 1),
                expect(ExpectedSequence::Exactly(4)).with_key("fresh")
            )
            .await
            .unwrap(),
        stored(5, 5)
    );
    assert_eq!(store.count_events(&e).await.unwrap(), 5);
}

/// An append refused for any reason (wrong expectation, tenant, empty batch, an event
/// over the limit, a conflict under another key) does not claim its key: the key is
/// then free for other events.
pub async fn refused_appends_do_not_claim_their_key<B: Backend>(b: B) {
    let store = b.open_with_max_event_bytes(1000);
    let (e, t, other) = (ExecutionId::new(), TenantId::from("t"), TenantId::from("o"));
    let err = store
        .append_with(
            &e,
            &t,
            tagged("x", 1),
            expect(ExpectedSequence::Exactly(3)).with_key("wrong"),
        )
        .await
        .unwrap_err();
    assert_wrong(&err, ExpectedSequence::Exactly(3), None);
    let err = store
        .append_with(&e, &t, Vec::new(), key("empty"))
        .await
        .unwrap_err();
    assert_invalid(&err);
    let mut too_big = tagged("x", 2);
    too_big.push(ExecutionEventData::ExecutionPaused {
        reason: "z".repeat(5000),
    });
    let err = store
        .append_with(&e, &t, too_big, key("big"))
        .await
        .unwrap_err();
    assert!(
        matches!(engine_error(&err), Error::TooLarge { .. }),
        "expected TooLarge, got {err:?}"
    );
    assert!(!store.execution_exists(&e).await.unwrap());
    store.append(&e, &t, step_event(1)).await.unwrap();
    let err = store
        .append_with(&e, &other, tagged("x", 1), key("tenant"))
        .await
        .unwrap_err();
    assert_mismatch(&err);
    // Each of these keys is still free: other events are stored under it.
    for (i, k) in ["wrong", "empty", "big", "tenant"].into_iter().enumerate() {
        let n = i as u64 + 2;
        assert_eq!(
            store
                .append_with(&e, &t, tagged(&format!("y{i}"), 1), key(k))
                .await
                .unwrap(),
            stored(n, n),
            "key {k}"
        );
    }
    for (i, k) in ["wrong", "empty", "big", "tenant"].into_iter().enumerate() {
        let n = i as u64 + 2;
        assert_eq!(
            store
                .append_with(&e, &t, tagged(&format!("y{i}"), 1), key(k))
                .await
                .unwrap(),
            replayed(n, n),
            "key {k}"
        );
    }
    assert_eq!(store.count_events(&e).await.unwrap(), 5);
}

/// One keyed append of store `s` for the 1,000-key test: key `i` on `e`.
fn keyed_events(exec: usize, i: usize) -> Vec<ExecutionEventData> {
    tagged(&format!("e{exec}-k{i}"), 1 + i % 3)
}

/// Replays every key in `outcomes` on `store` (and a conflict for every seventh).
async fn replay_all<S: GuardedEventStore>(
    store: &S,
    execs: &[ExecutionId],
    t: &TenantId,
    outcomes: &HashMap<(usize, usize), AppendOutcome>,
    when: &str,
) {
    let mut keys: Vec<_> = outcomes.keys().copied().collect();
    keys.sort_unstable();
    for (x, i) in keys {
        let first = outcomes[&(x, i)];
        let got = store
            .append_with(&execs[x], t, keyed_events(x, i), key(&format!("key-{i}")))
            .await
            .unwrap_or_else(|err| panic!("{when}: replay of key-{i} on {x}: {err}"));
        assert_eq!(
            got,
            AppendOutcome {
                replayed: true,
                ..first
            },
            "{when}: key-{i} on execution {x}"
        );
        if i % 7 == 0 {
            let err = store
                .append_with(
                    &execs[x],
                    t,
                    keyed_events(x, i + 1),
                    key(&format!("key-{i}")),
                )
                .await
                .unwrap_err();
            assert!(
                matches!(engine_error(&err), Error::IdempotencyConflict),
                "{when}: key-{i} on {x} with other events: {err:?}"
            );
        }
    }
}

/// Appends keys `range` to execution `x` from 8 tasks; returns the outcomes.
async fn store_keys<S: GuardedEventStore + Send + Sync + 'static>(
    store: &Arc<S>,
    execs: &[ExecutionId],
    t: &TenantId,
    x: usize,
    range: std::ops::Range<usize>,
) -> HashMap<(usize, usize), AppendOutcome> {
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (store, e, t) = (Arc::clone(store), execs[x].clone(), t.clone());
        let range = range.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in range.filter(|i| i % 8 == w) {
                let got = store
                    .append_with(&e, &t, keyed_events(x, i), key(&format!("key-{i}")))
                    .await
                    .unwrap();
                assert!(!got.replayed);
                assert_eq!(got.last_sequence - got.first_sequence + 1, 1 + i as u64 % 3);
                mine.push(((x, i), got));
            }
            mine
        }));
    }
    let mut outcomes = HashMap::new();
    for task in tasks {
        outcomes.extend(task.await.unwrap());
    }
    outcomes
}

/// Exact, not a cache: 1,000 keys on one execution (and 50 on each of four others,
/// 1,200 in all) all replay with their outcomes, and conflict with other events; after
/// a clean close and reopen (for `LogStore`, from its index checkpoint), with more keys
/// used then, and after a crash that leaves the checkpoint stale.
pub async fn every_key_ever_used_replays_after_reopen_and_crash<B: Backend>(b: B) {
    let store = Arc::new(b.open());
    let t = TenantId::from("t");
    let execs: Vec<_> = (0..5)
        .map(|i| ExecutionId::from(format!("keys-{i}")))
        .collect();
    let mut outcomes = store_keys(&store, &execs, &t, 0, 0..1000).await;
    for x in 1..5 {
        outcomes.extend(store_keys(&store, &execs, &t, x, 0..50).await);
    }
    let check_layout = |events: &[StoredEvent], x: usize, outcomes: &HashMap<_, AppendOutcome>| {
        // Every event is the one its key's outcome names, each key's events once.
        let mut seen = 0;
        for (&(ox, i), o) in outcomes {
            if ox != x {
                continue;
            }
            let want = keyed_events(x, i);
            for (k, s) in (o.first_sequence..=o.last_sequence).enumerate() {
                assert_eq!(events[(s - 1) as usize].event, want[k], "key-{i} on {x}");
                seen += 1;
            }
        }
        assert_eq!(events.len(), seen, "execution {x} holds only keyed events");
    };
    for (x, e) in execs.iter().enumerate() {
        check_layout(&store.load_events(e).await.unwrap(), x, &outcomes);
    }
    replay_all(&*store, &execs, &t, &outcomes, "before close").await;

    store.close().unwrap();
    drop(store);
    let store = Arc::new(b.open());
    replay_all(&*store, &execs, &t, &outcomes, "after a clean close").await;
    // More keys after the reopen, on the big execution and a new one.
    outcomes.extend(store_keys(&store, &execs, &t, 0, 1000..1100).await);
    let mut execs = execs;
    execs.push(ExecutionId::from("keys-5"));
    outcomes.extend(store_keys(&store, &execs, &t, 5, 0..20).await);
    for (x, e) in execs.iter().enumerate() {
        check_layout(&store.load_events(e).await.unwrap(), x, &outcomes);
    }

    let crashed = b.open_crashed(&store);
    replay_all(&crashed, &execs, &t, &outcomes, "after a crash").await;
    for (x, e) in execs.iter().enumerate() {
        check_layout(&crashed.load_events(e).await.unwrap(), x, &outcomes);
    }
    // And keys are still being remembered after the crash.
    let latest = crashed
        .get_latest_sequence(&execs[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        crashed
            .append_with(&execs[0], &t, keyed_events(0, 5000), key("key-5000"))
            .await
            .unwrap(),
        stored(latest + 1, latest + 3)
    );
    assert_eq!(
        crashed
            .append_with(&execs[0], &t, keyed_events(0, 5000), key("key-5000"))
            .await
            .unwrap(),
        replayed(latest + 1, latest + 3)
    );
}

/// The events and key of append `i` of `expectations_and_keys_hold_after_reopen_and_crash`.
fn plan(i: u64) -> (Vec<ExecutionEventData>, String) {
    (
        tagged(&format!("p{i}"), 1 + (i % 2) as usize),
        format!("k{i}"),
    )
}

/// Checks that `store` still knows the appends `outcomes` (of `plan`) to `e`, its
/// latest sequence `latest` and its owner `t`.
async fn check_held<S: GuardedEventStore>(
    store: &S,
    e: &ExecutionId,
    t: &TenantId,
    latest: u64,
    outcomes: &[AppendOutcome],
    when: &str,
) {
    for (i, o) in outcomes.iter().enumerate() {
        let (events, k) = plan(i as u64);
        let options = expect(ExpectedSequence::Exactly(0)).with_key(k.clone());
        assert_eq!(
            store.append_with(e, t, events, options).await.unwrap(),
            replayed(o.first_sequence, o.last_sequence),
            "{when}: key {k}"
        );
        let err = store
            .append_with(e, t, tagged("other", 1), key(&k))
            .await
            .unwrap_err();
        assert_conflict(&err);
    }
    let err = store
        .append_with(e, t, tagged("x", 1), expect(ExpectedSequence::NoExecution))
        .await
        .unwrap_err();
    assert_wrong(&err, ExpectedSequence::NoExecution, Some(latest));
    let err = store
        .append_with(
            e,
            t,
            tagged("x", 1),
            expect(ExpectedSequence::Exactly(latest - 1)),
        )
        .await
        .unwrap_err();
    assert_wrong(&err, ExpectedSequence::Exactly(latest - 1), Some(latest));
    assert_mismatch(
        &store
            .append_with(e, &TenantId::from("o"), tagged("x", 1), key("k0"))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        store.execution_tenant(e).await.unwrap(),
        Some(t.clone()),
        "{when}"
    );
    assert_eq!(
        store.get_latest_sequence(e).await.unwrap(),
        Some(latest),
        "{when}"
    );
}

/// Expectations and keys after a clean close and reopen, and after a crash: latest
/// sequences, owners and keys are what they were.
pub async fn expectations_and_keys_hold_after_reopen_and_crash<B: Backend>(b: B) {
    let store = b.open();
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    let mut latest = 0;
    let mut outcomes = Vec::new();
    for i in 0..6 {
        let (events, k) = plan(i);
        let got = store
            .append_with(
                &e,
                &t,
                events,
                expect(ExpectedSequence::Exactly(latest)).with_key(k),
            )
            .await
            .unwrap();
        assert_eq!(got.first_sequence, latest + 1);
        latest = got.last_sequence;
        outcomes.push(got);
    }
    check_held(&store, &e, &t, latest, &outcomes, "before close").await;
    store.close().unwrap();
    drop(store);
    let store = b.open();
    check_held(&store, &e, &t, latest, &outcomes, "after a clean close").await;
    let (events, k) = plan(6);
    let got = store
        .append_with(
            &e,
            &t,
            events,
            expect(ExpectedSequence::Exactly(latest)).with_key(k),
        )
        .await
        .unwrap();
    assert_eq!(got.first_sequence, latest + 1);
    latest = got.last_sequence;
    outcomes.push(got);
    let crashed = b.open_crashed(&store);
    check_held(&crashed, &e, &t, latest, &outcomes, "after a crash").await;
    let got = crashed
        .append_with(
            &e,
            &t,
            tagged("end", 1),
            expect(ExpectedSequence::Exactly(latest)),
        )
        .await
        .unwrap();
    assert_eq!(got, stored(latest + 1, latest + 1));
    drop(store);
}

/// 32 tasks (some through the blocking twin) race in rounds: all read the latest
/// sequence, then all append with `Exactly(latest)` (`NoExecution` or `Exactly(0)` in
/// the first round), batches of 1 to 3. Exactly one wins each round, at latest + 1;
/// every loser is told the winner's last sequence; the execution holds exactly the
/// winners' batches, whole and in order.
pub async fn racing_expectations_have_one_winner_each<B: Backend>(b: B) {
    const TASKS: usize = 32;
    const ROUNDS: usize = 12;
    let store = Arc::new(b.open());
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for w in 0..TASKS {
        let (store, e, t, barrier) = (
            Arc::clone(&store),
            e.clone(),
            t.clone(),
            Arc::clone(&barrier),
        );
        tasks.push(tokio::spawn(async move {
            let mut results = Vec::new();
            for r in 0..ROUNDS {
                barrier.wait().await;
                let latest = store.get_latest_sequence(&e).await.unwrap();
                barrier.wait().await;
                let expected = match latest {
                    None if w % 2 == 0 => ExpectedSequence::NoExecution,
                    None => ExpectedSequence::Exactly(0),
                    Some(n) => ExpectedSequence::Exactly(n),
                };
                let len = 1 + w % 3;
                let tag = format!("w{w}-r{r}");
                let events = tagged(&tag, len);
                let got = if w % 4 == 3 {
                    let store = Arc::clone(&store);
                    let (e, t) = (e.clone(), t.clone());
                    tokio::task::spawn_blocking(move || {
                        store.append_with_blocking(&e, &t, events, expect(expected))
                    })
                    .await
                    .unwrap()
                } else {
                    store
                        .append_with(&e, &t, events, expect(expected))
                        .await
                        .map_err(into_engine)
                };
                results.push((r, latest, expected, len, tag, got));
            }
            results
        }));
    }
    let mut by_round: Vec<Vec<_>> = (0..ROUNDS).map(|_| Vec::new()).collect();
    for task in tasks {
        for result in task.await.unwrap() {
            by_round[result.0].push(result);
        }
    }
    let mut latest = 0;
    let mut winners = Vec::new();
    for (r, results) in by_round.iter().enumerate() {
        assert_eq!(results.len(), TASKS);
        for (_, seen, _, _, _, _) in results {
            assert_eq!(
                *seen,
                (latest > 0).then_some(latest),
                "round {r}: latest read"
            );
        }
        let won: Vec<_> = results.iter().filter(|x| x.5.is_ok()).collect();
        assert_eq!(won.len(), 1, "round {r}: {} winners", won.len());
        let (_, _, _, len, tag, got) = won[0];
        let outcome = *got.as_ref().unwrap();
        assert_eq!(
            outcome,
            stored(latest + 1, latest + *len as u64),
            "round {r}"
        );
        latest += *len as u64;
        winners.push((outcome, tag.clone()));
        for (_, _, expected, _, _, got) in results.iter().filter(|x| x.5.is_err()) {
            let err = got.as_ref().unwrap_err();
            assert_eq!(
                wrong_expected(err),
                (norm(*expected), Some(latest)),
                "round {r}: a loser is told the winner's last sequence"
            );
        }
    }
    let events = store.load_events(&e).await.unwrap();
    assert_eq!(events.len() as u64, latest, "losers wrote nothing");
    assert_whole_batches(&events, "racing expectations");
    for (outcome, tag) in winners {
        for s in outcome.first_sequence..=outcome.last_sequence {
            assert_eq!(tag_of(&events[(s - 1) as usize]), tag, "sequence {s}");
        }
    }
}

/// Optimistic writers (append with `Exactly(latest)`, on `WrongExpectedSequence` retry
/// with the sequence it reports) race each other and plain appends on one execution:
/// each win lands right after the sequence it expected, each refusal names a later one,
/// and the execution holds exactly the wins and the plain appends, without gaps.
pub async fn racing_expectations_among_plain_appends<B: Backend>(b: B) {
    const GUARDED: u64 = 16;
    const WINS: usize = 3;
    let store = Arc::new(b.open());
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    store
        .append(&e, &t, tagged("start", 1).remove(0))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for w in 0..GUARDED {
        let (store, e, t) = (Arc::clone(&store), e.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let mut wins = Vec::new();
            let mut attempts = 0;
            // The first expectation from a read, the next ones from the refusals.
            let mut latest = store.get_latest_sequence(&e).await.unwrap().unwrap();
            while wins.len() < WINS {
                attempts += 1;
                assert!(attempts < 5000, "task {w} never won");
                let tag = format!("g{w}-{}", wins.len());
                let len = 1 + (w as usize + wins.len()) % 2;
                let options = expect(ExpectedSequence::Exactly(latest));
                match store.append_with(&e, &t, tagged(&tag, len), options).await {
                    Ok(got) => {
                        assert_eq!(got, stored(latest + 1, latest + len as u64), "task {w}");
                        wins.push((got.first_sequence, len, tag));
                        latest = got.last_sequence;
                    }
                    Err(err) => {
                        let (expected, actual) = wrong_expected(engine_error(&err));
                        assert_eq!(expected, ExpectedSequence::Exactly(latest));
                        assert!(
                            actual > Some(latest),
                            "refused at {latest}, told {actual:?}"
                        );
                        latest = actual.unwrap();
                    }
                }
                tokio::task::yield_now().await;
            }
            wins
        }));
    }
    for p in 0..4u64 {
        let (store, e, t) = (Arc::clone(&store), e.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..10u64 {
                let tag = format!("p{p}-{i}");
                let first = if i % 3 == 0 {
                    store.append_batch(&e, &t, tagged(&tag, 2)).await.unwrap()
                } else {
                    store
                        .append(&e, &t, tagged(&tag, 1).remove(0))
                        .await
                        .unwrap()
                };
                mine.push((first, if i % 3 == 0 { 2 } else { 1 }, tag));
            }
            mine
        }));
    }
    let mut claimed = Vec::new();
    for task in tasks {
        claimed.extend(task.await.unwrap());
    }
    let events = store.load_events(&e).await.unwrap();
    let total: usize = claimed.iter().map(|c| c.1).sum::<usize>() + 1;
    assert_eq!(
        events.len(),
        total,
        "only wins and plain appends are stored"
    );
    assert_whole_batches(&events, "racing among plain appends");
    for (first, len, tag) in claimed {
        for s in first..first + len as u64 {
            assert_eq!(tag_of(&events[(s - 1) as usize]), tag, "sequence {s}");
        }
    }
}

/// 32 tasks (some through the blocking twin) retry the same keyed append at once, in
/// several rounds (some with an expectation that held before the round): it is stored
/// once, every task gets its outcome, and exactly one of them `replayed: false`.
pub async fn racing_retries_of_one_key_store_once<B: Backend>(b: B) {
    const TASKS: usize = 32;
    let store = Arc::new(b.open());
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    let mut latest = 0;
    for round in 0..8u64 {
        let len = 1 + (round % 3) as usize;
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let mut tasks = Vec::new();
        for w in 0..TASKS {
            let (store, e, t, barrier) = (
                Arc::clone(&store),
                e.clone(),
                t.clone(),
                Arc::clone(&barrier),
            );
            let options = match w % 3 {
                0 => key(&format!("race-{round}")),
                1 => expect(ExpectedSequence::Exactly(latest)).with_key(format!("race-{round}")),
                _ => AppendOptions {
                    expected: ExpectedSequence::Any,
                    idempotency_key: Some(format!("race-{round}")),
                },
            };
            tasks.push(tokio::spawn(async move {
                let events = tagged(&format!("r{round}"), len);
                barrier.wait().await;
                if w % 4 == 3 {
                    let store = Arc::clone(&store);
                    tokio::task::spawn_blocking(move || {
                        store.append_with_blocking(&e, &t, events, options).unwrap()
                    })
                    .await
                    .unwrap()
                } else {
                    store.append_with(&e, &t, events, options).await.unwrap()
                }
            }));
        }
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        let want = (latest + 1, latest + len as u64);
        for o in &outcomes {
            assert_eq!((o.first_sequence, o.last_sequence), want, "round {round}");
        }
        let fresh = outcomes.iter().filter(|o| !o.replayed).count();
        assert_eq!(fresh, 1, "round {round}: {fresh} appends said they stored");
        latest += len as u64;
        assert_eq!(
            store.count_events(&e).await.unwrap(),
            latest,
            "round {round}"
        );
    }
    let events = store.load_events(&e).await.unwrap();
    assert_whole_batches(&events, "racing retries");
}

/// 32 tasks race on one key with two different versions of the events: one version is
/// stored; the tasks with that version all get its outcome (one not replayed), the
/// others `IdempotencyConflict`; nothing of the other version is stored.
pub async fn racing_keys_with_different_events_store_one_version<B: Backend>(b: B) {
    const TASKS: usize = 32;
    let store = Arc::new(b.open());
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    let mut latest = 0;
    for round in 0..6u64 {
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let mut tasks = Vec::new();
        for w in 0..TASKS {
            let (store, e, t, barrier) = (
                Arc::clone(&store),
                e.clone(),
                t.clone(),
                Arc::clone(&barrier),
            );
            tasks.push(tokio::spawn(async move {
                let version = w % 2;
                // The versions differ in tag and length.
                let events = tagged(&format!("r{round}-v{version}"), 1 + version);
                barrier.wait().await;
                let got = store
                    .append_with(&e, &t, events, key(&format!("k{round}")))
                    .await;
                (version, got.map_err(into_engine))
            }));
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        let ok: Vec<_> = results.iter().filter(|r| r.1.is_ok()).collect();
        let version = ok[0].0;
        let len = 1 + version as u64;
        let mut fresh = 0;
        for (v, got) in &results {
            if *v == version {
                let o = got
                    .as_ref()
                    .unwrap_or_else(|err| panic!("round {round}: {err:?}"));
                assert_eq!(
                    (o.first_sequence, o.last_sequence),
                    (latest + 1, latest + len)
                );
                fresh += usize::from(!o.replayed);
            } else {
                let err = got.as_ref().unwrap_err();
                assert!(
                    matches!(err, Error::IdempotencyConflict),
                    "round {round}: {err:?}"
                );
            }
        }
        assert_eq!(fresh, 1, "round {round}");
        latest += len;
        let events = store.load_events(&e).await.unwrap();
        assert_eq!(events.len() as u64, latest, "round {round}");
        assert!(
            events[(latest - len) as usize..]
                .iter()
                .all(|ev| tag_of(ev) == format!("r{round}-v{version}"))
        );
    }
}

/// What a `TenantView` answers about one execution.
#[derive(Debug, PartialEq)]
struct ViewAnswers {
    events: Vec<StoredEvent>,
    after_0: Vec<StoredEvent>,
    after_1: Vec<StoredEvent>,
    after_max: Vec<StoredEvent>,
    latest: Option<u64>,
    exists: bool,
    count: u64,
}

async fn view_answers<S: GuardedEventStore>(
    view: &TenantView<'_, S>,
    e: &ExecutionId,
) -> ViewAnswers {
    ViewAnswers {
        events: view.load_events(e).await.unwrap(),
        after_0: view.load_events_after(e, 0).await.unwrap(),
        after_1: view.load_events_after(e, 1).await.unwrap(),
        after_max: view.load_events_after(e, u64::MAX).await.unwrap(),
        latest: view.get_latest_sequence(e).await.unwrap(),
        exists: view.execution_exists(e).await.unwrap(),
        count: view.count_events(e).await.unwrap(),
    }
}

async fn store_answers<S: GuardedEventStore>(store: &S, e: &ExecutionId) -> ViewAnswers {
    ViewAnswers {
        events: store.load_events(e).await.unwrap(),
        after_0: store.load_events_after(e, 0).await.unwrap(),
        after_1: store.load_events_after(e, 1).await.unwrap(),
        after_max: store.load_events_after(e, u64::MAX).await.unwrap(),
        latest: store.get_latest_sequence(e).await.unwrap(),
        exists: store.execution_exists(e).await.unwrap(),
        count: store.count_events(e).await.unwrap(),
    }
}

/// A tenant's view answers about another tenant's execution exactly as about an
/// unknown one; about its own, exactly as the store; its listing is the tenant's.
/// Also for executions whose creation was refused, and after a reopen.
pub async fn tenant_view_hides_other_tenants_executions<B: Backend>(b: B) {
    let store = b.open();
    let (a, other) = (TenantId::from("a"), TenantId::from("b"));
    let mine: Vec<_> = (0..3)
        .map(|i| ExecutionId::from(format!("a-{i}")))
        .collect();
    let theirs: Vec<_> = (0..2)
        .map(|i| ExecutionId::from(format!("b-{i}")))
        .collect();
    for (i, e) in mine.iter().enumerate() {
        store
            .append_batch(e, &a, tagged(&format!("a{i}"), 3))
            .await
            .unwrap();
    }
    for (i, e) in theirs.iter().enumerate() {
        store
            .append_with(e, &other, tagged(&format!("b{i}"), 2), key("k"))
            .await
            .unwrap();
    }
    // Refused attempts to create: unknown to everyone.
    let refused = ExecutionId::from("refused");
    store
        .append_with(
            &refused,
            &a,
            tagged("x", 1),
            expect(ExpectedSequence::Exactly(4)),
        )
        .await
        .unwrap_err();
    let (view_a, view_b) = (store.tenant(&a), store.tenant(&other));
    assert_eq!(view_a.tenant_id(), &a);
    assert_eq!(view_b.tenant_id(), &other);
    check_views(&store, &a, &other, &mine, &theirs, "open").await;
    let crashed = b.open_crashed(&store);
    check_views(&crashed, &a, &other, &mine, &theirs, "after a crash").await;
    drop(crashed);
    store.close().unwrap();
    drop(store);
    let store = b.open();
    check_views(&store, &a, &other, &mine, &theirs, "reopened").await;
}

/// The `TenantView` checks of `tenant_view_hides_other_tenants_executions` on `store`.
async fn check_views<S: GuardedEventStore>(
    store: &S,
    a: &TenantId,
    other: &TenantId,
    mine: &[ExecutionId],
    theirs: &[ExecutionId],
    when: &str,
) {
    let (unknown, refused) = (ExecutionId::from("unknown"), ExecutionId::from("refused"));
    let nothing = ViewAnswers {
        events: Vec::new(),
        after_0: Vec::new(),
        after_1: Vec::new(),
        after_max: Vec::new(),
        latest: None,
        exists: false,
        count: 0,
    };
    let (view_a, view_b) = (store.tenant(a), store.tenant(other));
    assert_eq!(view_answers(&view_a, &unknown).await, nothing, "{when}");
    assert_eq!(view_answers(&view_b, &unknown).await, nothing, "{when}");
    assert_eq!(view_answers(&view_a, &refused).await, nothing, "{when}");
    for e in mine {
        assert_eq!(view_answers(&view_b, e).await, nothing, "{when}: {e} for b");
        let own = view_answers(&view_a, e).await;
        assert_eq!(own, store_answers(store, e).await, "{when}: {e} for a");
        assert_eq!(own.count, 3);
    }
    for e in theirs {
        assert_eq!(view_answers(&view_a, e).await, nothing, "{when}: {e} for a");
        let own = view_answers(&view_b, e).await;
        assert_eq!(own, store_answers(store, e).await, "{when}: {e} for b");
        assert_eq!(own.count, 2);
    }
    for (view, tenant) in [(&view_a, a), (&view_b, other)] {
        for (limit, offset) in [(10, 0), (1, 0), (1, 1), (usize::MAX, 0), (10, 5), (0, 0)] {
            assert_eq!(
                view.list_executions(limit, offset).await.unwrap(),
                store.list_executions(tenant, limit, offset).await.unwrap(),
                "{when}"
            );
        }
    }
    assert_eq!(
        view_a.list_executions(10, 0).await.unwrap(),
        mine.iter().rev().cloned().collect::<Vec<_>>(),
        "{when}"
    );
    assert_eq!(
        store
            .tenant(&TenantId::from("nobody"))
            .list_executions(10, 0)
            .await
            .unwrap(),
        Vec::<ExecutionId>::new()
    );
}

/// `execution_tenant` names the owner of an execution with events, `None` for an
/// unknown one or one whose creation was refused; the same through the blocking twin
/// and after a reopen.
pub async fn execution_tenant_names_the_owner<B: Backend>(b: B) {
    let store = b.open();
    let (a, other) = (TenantId::from("a"), TenantId::from("b"));
    let (e1, e2, e3, e4) = (
        ExecutionId::new(),
        ExecutionId::new(),
        ExecutionId::new(),
        ExecutionId::new(),
    );
    assert_eq!(store.execution_tenant(&e1).await.unwrap(), None);
    assert_eq!(store.execution_tenant_blocking(&e1).unwrap(), None);
    store.append(&e1, &a, step_event(1)).await.unwrap();
    store
        .append_with(
            &e2,
            &other,
            tagged("x", 2),
            expect(ExpectedSequence::NoExecution),
        )
        .await
        .unwrap();
    // Refused creations.
    store
        .append_with(
            &e3,
            &a,
            tagged("x", 1),
            expect(ExpectedSequence::Exactly(1)),
        )
        .await
        .unwrap_err();
    store
        .append_with(&e4, &a, Vec::new(), key("k"))
        .await
        .unwrap_err();
    // A refused append of another tenant changes nothing.
    store.append(&e1, &other, step_event(2)).await.unwrap_err();
    let owners = [
        (&e1, Some(a.clone())),
        (&e2, Some(other.clone())),
        (&e3, None),
        (&e4, None),
    ];
    for (e, owner) in &owners {
        assert_eq!(&store.execution_tenant(e).await.unwrap(), owner, "{e}");
        assert_eq!(&store.execution_tenant_blocking(e).unwrap(), owner, "{e}");
    }
    let crashed = b.open_crashed(&store);
    for (e, owner) in &owners {
        assert_eq!(
            &crashed.execution_tenant(e).await.unwrap(),
            owner,
            "crash: {e}"
        );
    }
    drop(crashed);
    drop(store);
    let store = b.open();
    for (e, owner) in &owners {
        assert_eq!(
            &store.execution_tenant(e).await.unwrap(),
            owner,
            "reopened: {e}"
        );
        assert_eq!(&store.execution_tenant_blocking(e).unwrap(), owner, "{e}");
    }
    for bad in [String::new(), "x".repeat(MAX_ID_BYTES + 1)] {
        let err = store
            .execution_tenant(&ExecutionId::from(bad.as_str()))
            .await
            .unwrap_err();
        assert_invalid(&err);
    }
}

/// Keys with odd bytes: NUL, backslashes, quotes, SQL and LIKE metacharacters, emoji,
/// combining characters, case, trailing blanks, 256 bytes of multibyte characters,
/// long keys differing in their last byte. Each is a key of its own, replays exactly
/// and conflicts with another key's events; also after a reopen.
pub async fn odd_keys_are_distinct_and_exact<B: Backend>(b: B) {
    let store = b.open();
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    let keys: Vec<String> = [
        "\0",
        "\0\0",
        "a\0b",
        "a\\0b",
        "a\\\\0b",
        "a\\x00b",
        "\\",
        "\\\\",
        "'",
        "''",
        "\"",
        "'; DROP TABLE events; --",
        "%",
        "_",
        "a%",
        "a_",
        "a",
        "A",
        "a ",
        " a",
        " ",
        "\t",
        "\n",
        "\r\n",
        "é",
        "e\u{301}",
        "\u{feff}",
        "\u{200b}",
        "🚀",
        "👩\u{200d}👩\u{200d}👧",
        "$1",
        "?",
        "{}",
        "null",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "é".repeat(128),
        "🚀".repeat(64),
        format!("{}🚀", "\0".repeat(252)),
        format!("{}a", "x".repeat(255)),
        format!("{}b", "x".repeat(255)),
        "x".repeat(256),
        "x".repeat(255),
    ])
    .collect();
    assert_eq!(keys.iter().collect::<HashSet<_>>().len(), keys.len());
    for k in &keys {
        assert!(k.len() <= MAX_IDEMPOTENCY_KEY_BYTES);
    }
    let mut outcomes = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let got = store
            .append_with(&e, &t, odd_events(i), key(k))
            .await
            .unwrap();
        assert!(!got.replayed, "key {k:?} was taken for an earlier key");
        outcomes.push(got);
    }
    let total: u64 = (0..keys.len()).map(|i| 1 + (i % 2) as u64).sum();
    replay_odd(&store, &e, &t, &keys, &outcomes, total, "open").await;
    store.close().unwrap();
    drop(store);
    let store = b.open();
    replay_odd(&store, &e, &t, &keys, &outcomes, total, "reopened").await;
}

/// Replays every key of `odd_keys_are_distinct_and_exact`, and a conflict for each.
async fn replay_odd<S: GuardedEventStore>(
    store: &S,
    e: &ExecutionId,
    t: &TenantId,
    keys: &[String],
    outcomes: &[AppendOutcome],
    total: u64,
    when: &str,
) {
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            store
                .append_with(e, t, odd_events(i), key(k))
                .await
                .unwrap(),
            AppendOutcome {
                replayed: true,
                ..outcomes[i]
            },
            "{when}: key {k:?}"
        );
        let other = odd_events((i + 1) % keys.len());
        let err = store.append_with(e, t, other, key(k)).await.unwrap_err();
        assert!(
            matches!(engine_error(&err), Error::IdempotencyConflict),
            "{when}: key {k:?}: {err:?}"
        );
    }
    assert_eq!(store.count_events(e).await.unwrap(), total, "{when}");
    let events = store.load_events(e).await.unwrap();
    for (i, o) in outcomes.iter().enumerate() {
        let want = odd_events(i);
        for (j, s) in (o.first_sequence..=o.last_sequence).enumerate() {
            assert_eq!(
                events[(s - 1) as usize].event,
                want[j],
                "{when}: key {:?}",
                keys[i]
            );
        }
    }
}

fn odd_events(i: usize) -> Vec<ExecutionEventData> {
    tagged(&format!("key{i}"), 1 + i % 2)
}

/// The blocking twins from plain threads: each thread builds its own execution with
/// keyed `Exactly` appends and retries them, and all race on a shared execution with
/// shared keys; the async API sees the same answers.
pub async fn guarded_blocking_twins_from_threads<B: Backend>(b: B) {
    let store = Arc::new(b.open());
    let t = TenantId::from("t");
    let shared = ExecutionId::from("shared");
    let threads: Vec<_> = (0..8u64)
        .map(|k| {
            let (store, t, shared) = (Arc::clone(&store), t.clone(), shared.clone());
            std::thread::spawn(move || {
                let own = ExecutionId::from(format!("own-{k}"));
                for i in 0..10u64 {
                    let options = expect(ExpectedSequence::Exactly(i)).with_key(format!("k{i}"));
                    let got = store
                        .append_with_blocking(
                            &own,
                            &t,
                            tagged(&format!("{k}-{i}"), 1),
                            options.clone(),
                        )
                        .unwrap();
                    assert_eq!(got, stored(i + 1, i + 1));
                    let again = store
                        .append_with_blocking(&own, &t, tagged(&format!("{k}-{i}"), 1), options)
                        .unwrap();
                    assert_eq!(again, replayed(i + 1, i + 1));
                    let err = store
                        .append_with_blocking(
                            &own,
                            &t,
                            tagged("x", 1),
                            expect(ExpectedSequence::Exactly(i)),
                        )
                        .unwrap_err();
                    assert_eq!(
                        wrong_expected(&err),
                        (norm(ExpectedSequence::Exactly(i)), Some(i + 1))
                    );
                }
                assert_eq!(
                    store.execution_tenant_blocking(&own).unwrap(),
                    Some(t.clone())
                );
                let mut shared_outcomes = Vec::new();
                for i in 0..10u64 {
                    let got = store
                        .append_with_blocking(
                            &shared,
                            &t,
                            tagged(&format!("s{i}"), 2),
                            key(&format!("s{i}")),
                        )
                        .unwrap();
                    shared_outcomes.push(got);
                }
                shared_outcomes
            })
        })
        .collect();
    let all = tokio::task::spawn_blocking(move || {
        threads
            .into_iter()
            .map(|th| th.join().unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for i in 0..10 {
        let mine: Vec<_> = all.iter().map(|o| o[i]).collect();
        assert_eq!(mine.iter().filter(|o| !o.replayed).count(), 1, "key s{i}");
        let (first, last) = (mine[0].first_sequence, mine[0].last_sequence);
        assert!(
            mine.iter()
                .all(|o| (o.first_sequence, o.last_sequence) == (first, last))
        );
        assert_eq!(
            store
                .append_with(
                    &shared,
                    &t,
                    tagged(&format!("s{i}"), 2),
                    key(&format!("s{i}"))
                )
                .await
                .unwrap(),
            replayed(first, last)
        );
    }
    assert_eq!(store.count_events(&shared).await.unwrap(), 20);
    for k in 0..8 {
        let own = ExecutionId::from(format!("own-{k}"));
        assert_eq!(store.count_events(&own).await.unwrap(), 10);
        assert_eq!(
            store
                .append_with(&own, &t, tagged(&format!("{k}-3"), 1), key("k3"))
                .await
                .unwrap(),
            replayed(4, 4)
        );
    }
}

/// The new errors are typed and say what happened; a closed store refuses guarded
/// appends (also a retry of a known key) and `execution_tenant`.
pub async fn guarded_errors_are_typed_and_a_closed_store_refuses<B: Backend>(b: B) {
    let store = b.open();
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    store
        .append_with(&e, &t, tagged("a", 3), key("k"))
        .await
        .unwrap();
    let err = store
        .append_with(&e, &t, tagged("b", 1), expect(ExpectedSequence::Exactly(2)))
        .await
        .unwrap_err();
    let inner = engine_error(&err);
    assert!(
        format!("{inner:?}").contains("WrongExpectedSequence"),
        "{inner:?}"
    );
    let message = inner.to_string();
    assert!(message.contains("nothing was written"), "{message}");
    assert!(message.contains('2') && message.contains('3'), "{message}");
    let err = store
        .append_with(&e, &t, tagged("b", 1), key("k"))
        .await
        .unwrap_err();
    let inner = engine_error(&err);
    assert!(
        format!("{inner:?}").contains("IdempotencyConflict"),
        "{inner:?}"
    );
    assert!(inner.to_string().contains("nothing was written"), "{inner}");
    store.close().unwrap();
    for options in [key("k"), AppendOptions::default(), key("new")] {
        let err = store
            .append_with(&e, &t, tagged("a", 3), options.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(engine_error(&err), Error::Closed),
            "{options:?}: {err:?}"
        );
        let err = store
            .append_with_blocking(&e, &t, tagged("a", 3), options)
            .unwrap_err();
        assert!(matches!(err, Error::Closed), "{err:?}");
    }
    let err = store.execution_tenant(&e).await.unwrap_err();
    assert!(matches!(engine_error(&err), Error::Closed), "{err:?}");
    assert!(matches!(
        store.execution_tenant_blocking(&e),
        Err(Error::Closed)
    ));
    assert!(matches!(
        store.tenant(&t).load_events(&e).await.map_err(into_engine),
        Err(Error::Closed)
    ));
}
