//! The conformance suite: the `EventStore` contract, test by test, generic over the
//! backend. `tests/conformance_log.rs` runs it against `LogStore`,
//! `tests/conformance_pg.rs` against `PgStore` on a real PostgreSQL server; a
//! semantic difference between the backends is a failure in one of them.
//!
//! [`suite!`] turns every test function here into a `#[tokio::test]` of the including
//! crate. Each test gets a fresh, empty store ([`Backend::create`]: a temporary
//! directory, or a schema of its own on the server). The guarded appends of issue 13
//! (`GuardedEventStore`: expected sequences, idempotency keys, `TenantView`) have their
//! tests in `guarded.rs`, run by the same macro.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;

use crate::common::*;
use execlog::*;

pub mod follow;
pub mod fork;
pub mod guarded;
pub mod lifecycle;
pub use follow::*;
pub use fork::*;
pub use guarded::*;
pub use lifecycle::*;

/// A place a store lives in, and how to open it.
pub trait Backend: Sized + Send + Sync + 'static {
    type Store: GuardedEventStore + Twins + Send + Sync + 'static;
    /// A fresh, empty place; `None` to skip (said on stderr by the backend).
    fn create() -> Option<Self>;
    /// A store on it (again after the previous one was dropped: a reopen, or a
    /// reconnect).
    fn open(&self) -> Self::Store;
    /// A store on it that accepts events of at most `bytes` encoded bytes.
    fn open_with_max_event_bytes(&self, bytes: usize) -> Self::Store;
    /// A store on what a crash (kill -9) of the process holding `running` would leave,
    /// while `running` stays open and idle: every acknowledged append, no clean close
    /// (for `LogStore`: a copy of its files, with the checkpoint of the last clean close
    /// if there was one; for `PgStore`: a new connection to the same schema).
    fn open_crashed(&self, running: &Self::Store) -> Self::Store;
}

/// The blocking twins both backends offer, under one name for the suite.
pub trait Twins {
    fn append_blocking(&self, e: &ExecutionId, t: &TenantId, ev: ExecutionEventData)
    -> Result<u64>;
    fn append_batch_blocking(
        &self,
        e: &ExecutionId,
        t: &TenantId,
        evs: Vec<ExecutionEventData>,
    ) -> Result<u64>;
    fn load_events_blocking(&self, e: &ExecutionId) -> Result<Vec<StoredEvent>>;
    fn get_latest_sequence_blocking(&self, e: &ExecutionId) -> Result<Option<u64>>;
    fn list_executions_blocking(
        &self,
        t: &TenantId,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<ExecutionId>>;
    fn close(&self) -> Result<()>;
    fn append_with_blocking(
        &self,
        e: &ExecutionId,
        t: &TenantId,
        evs: Vec<ExecutionEventData>,
        options: AppendOptions,
    ) -> Result<AppendOutcome>;
    fn execution_tenant_blocking(&self, e: &ExecutionId) -> Result<Option<TenantId>>;
}

macro_rules! twins {
    ($store:ty) => {
        impl Twins for $store {
            fn append_blocking(
                &self,
                e: &ExecutionId,
                t: &TenantId,
                ev: ExecutionEventData,
            ) -> Result<u64> {
                <$store>::append_blocking(self, e, t, ev)
            }
            fn append_batch_blocking(
                &self,
                e: &ExecutionId,
                t: &TenantId,
                evs: Vec<ExecutionEventData>,
            ) -> Result<u64> {
                <$store>::append_batch_blocking(self, e, t, evs)
            }
            fn load_events_blocking(&self, e: &ExecutionId) -> Result<Vec<StoredEvent>> {
                <$store>::load_events_blocking(self, e)
            }
            fn get_latest_sequence_blocking(&self, e: &ExecutionId) -> Result<Option<u64>> {
                <$store>::get_latest_sequence_blocking(self, e)
            }
            fn list_executions_blocking(
                &self,
                t: &TenantId,
                limit: usize,
                offset: usize,
            ) -> Result<Vec<ExecutionId>> {
                <$store>::list_executions_blocking(self, t, limit, offset)
            }
            fn close(&self) -> Result<()> {
                <$store>::close(self)
            }
            fn append_with_blocking(
                &self,
                e: &ExecutionId,
                t: &TenantId,
                evs: Vec<ExecutionEventData>,
                options: AppendOptions,
            ) -> Result<AppendOutcome> {
                <$store>::append_with_blocking(self, e, t, evs, options)
            }
            fn execution_tenant_blocking(&self, e: &ExecutionId) -> Result<Option<TenantId>> {
                <$store>::execution_tenant_blocking(self, e)
            }
        }
    };
}

twins!(LogStore);
#[cfg(feature = "postgres")]
twins!(execlog::postgres::PgStore);

/// Generates one `#[tokio::test]` per suite test, for backend `$backend`.
#[macro_export]
macro_rules! suite {
    ($backend:ty) => {
        $crate::suite!(@tests $backend;
            sequences_start_at_one_and_are_consecutive,
            unknown_execution_is_empty,
            empty_batch_is_rejected_without_trace,
            tenant_mismatch_writes_nothing,
            racing_first_appends_agree_on_one_owner,
            list_executions_pages_newest_first,
            reopen_preserves_everything,
            every_variant_round_trips,
            id_limits,
            large_events_and_the_limit,
            batch_is_all_or_nothing,
            errors_are_typed_and_readable,
            tasks_share_executions_without_gaps,
            threads_use_the_blocking_twins,
            works_under_a_plain_executor,
        );
        // Guarded appends (issue 13), tests/conformance/guarded.rs.
        $crate::suite!(@tests $backend;
            default_options_append_like_append_batch,
            no_execution_expects_a_new_execution,
            exactly_expects_the_latest_sequence,
            a_refused_expectation_writes_nothing_and_uses_no_sequence,
            idempotency_key_length_limits,
            a_keyed_retry_replays_the_original_outcome,
            a_keyed_retry_with_other_events_conflicts,
            keys_are_scoped_to_their_execution,
            the_tenant_is_checked_before_the_key,
            the_key_is_checked_before_the_expected_sequence,
            refused_appends_do_not_claim_their_key,
            every_key_ever_used_replays_after_reopen_and_crash,
            expectations_and_keys_hold_after_reopen_and_crash,
            racing_expectations_have_one_winner_each,
            racing_expectations_among_plain_appends,
            racing_retries_of_one_key_store_once,
            racing_keys_with_different_events_store_one_version,
            tenant_view_hides_other_tenants_executions,
            execution_tenant_names_the_owner,
            odd_keys_are_distinct_and_exact,
            guarded_blocking_twins_from_threads,
            guarded_errors_are_typed_and_a_closed_store_refuses,
        );
    };
    (@tests $backend:ty; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(backend) = <$backend as conformance::Backend>::create() {
                    conformance::$name(backend).await;
                }
            }
        )*
    };
}

/// Sequences start at 1 and are consecutive; reads are ordered and complete.
pub async fn sequences_start_at_one_and_are_consecutive<B: Backend>(b: B) {
    let store = b.open();
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    assert_eq!(store.get_latest_sequence(&e).await.unwrap(), None);
    assert!(!store.execution_exists(&e).await.unwrap());
    assert_eq!(store.count_events(&e).await.unwrap(), 0);
    for i in 1..=10 {
        assert_eq!(store.append(&e, &t, step_event(i)).await.unwrap(), i);
    }
    let first = store
        .append_batch(&e, &t, (11..=15).map(step_event).collect())
        .await
        .unwrap();
    assert_eq!(first, 11);
    let events = store.load_events(&e).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        (1..=15).collect::<Vec<_>>()
    );
    assert!(
        events
            .iter()
            .all(|ev| event_number(&ev.event) == Some(ev.sequence))
    );
    assert_eq!(store.count_events(&e).await.unwrap(), 15);
    assert_eq!(store.get_latest_sequence(&e).await.unwrap(), Some(15));
    assert!(store.execution_exists(&e).await.unwrap());
    let after = store.load_events_after(&e, 12).await.unwrap();
    assert_eq!(
        after.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![13, 14, 15]
    );
    assert!(store.load_events_after(&e, 15).await.unwrap().is_empty());
    assert!(
        store
            .load_events_after(&e, u64::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.load_events_after(&e, 0).await.unwrap(), events);
}

/// Unknown executions and tenants read as empty, not as errors.
pub async fn unknown_execution_is_empty<B: Backend>(b: B) {
    let store = b.open();
    let e = ExecutionId::from("nobody");
    assert!(store.load_events(&e).await.unwrap().is_empty());
    assert!(store.load_events_after(&e, 3).await.unwrap().is_empty());
    assert_eq!(store.get_latest_sequence(&e).await.unwrap(), None);
    assert!(!store.execution_exists(&e).await.unwrap());
    assert!(
        store
            .list_executions(&TenantId::from("none"), 10, 0)
            .await
            .unwrap()
            .is_empty()
    );
}

/// An empty batch is an invalid argument and leaves no trace, not even a new execution.
pub async fn empty_batch_is_rejected_without_trace<B: Backend>(b: B) {
    let store = b.open();
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    let err = store.append_batch(&e, &t, Vec::new()).await.unwrap_err();
    assert!(matches!(engine_error(&err), Error::InvalidArgument(_)));
    assert!(!store.execution_exists(&e).await.unwrap());
    assert!(store.list_executions(&t, 10, 0).await.unwrap().is_empty());
    assert_eq!(store.append(&e, &t, step_event(1)).await.unwrap(), 1);
    store.append(&e, &t, step_event(2)).await.unwrap();
    let err = store.append_batch(&e, &t, Vec::new()).await.unwrap_err();
    assert!(matches!(engine_error(&err), Error::InvalidArgument(_)));
    assert_eq!(store.append(&e, &t, step_event(3)).await.unwrap(), 3);
}

/// The first append fixes the owner; another tenant's appends fail, write nothing,
/// and the error does not name the owner. Also after a reopen.
pub async fn tenant_mismatch_writes_nothing<B: Backend>(b: B) {
    let store = b.open();
    let e = ExecutionId::new();
    let (a, other) = (TenantId::from("owner-tenant-7f3a"), TenantId::from("b"));
    store.append(&e, &a, step_event(1)).await.unwrap();
    let err = store.append(&e, &other, step_event(2)).await.unwrap_err();
    assert!(matches!(engine_error(&err), Error::TenantMismatch { .. }));
    let message = err.to_string();
    assert!(message.contains("another tenant"), "{message}");
    for text in [
        message,
        format!("{err:?}"),
        format!("{:?}", engine_error(&err)),
    ] {
        assert!(!text.contains(a.as_str()), "the owner's id leaked: {text}");
    }
    let err = store
        .append_batch(&e, &other, vec![step_event(2), step_event(3)])
        .await
        .unwrap_err();
    assert!(matches!(engine_error(&err), Error::TenantMismatch { .. }));
    assert_eq!(store.count_events(&e).await.unwrap(), 1);
    assert!(
        store
            .list_executions(&other, 10, 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.append(&e, &a, step_event(2)).await.unwrap(), 2);
    drop(store);
    let store = b.open();
    let err = store.append(&e, &other, step_event(3)).await.unwrap_err();
    assert!(matches!(engine_error(&err), Error::TenantMismatch { .. }));
    assert_eq!(store.load_events(&e).await.unwrap().len(), 2);
}

/// Tenants racing to create the same executions: each execution gets exactly one
/// owner, every append of the owner is stored, every other one is refused.
pub async fn racing_first_appends_agree_on_one_owner<B: Backend>(b: B) {
    let store = Arc::new(b.open());
    let execs: Vec<_> = (0..8).map(|_| ExecutionId::new()).collect();
    let mut tasks = Vec::new();
    for k in 0..4 {
        let (store, execs) = (Arc::clone(&store), execs.clone());
        tasks.push(tokio::spawn(async move {
            let tenant = TenantId::from(format!("tenant-{k}"));
            let mut stored = Vec::new();
            for round in 0..5 {
                for e in &execs {
                    match store.append(e, &tenant, step_event(round)).await {
                        Ok(seq) => stored.push((e.clone(), seq)),
                        Err(err) => assert!(
                            matches!(engine_error(&err), Error::TenantMismatch { .. }),
                            "{err}"
                        ),
                    }
                }
            }
            (tenant, stored)
        }));
    }
    let mut owners: HashMap<ExecutionId, TenantId> = HashMap::new();
    let mut count: HashMap<ExecutionId, u64> = HashMap::new();
    for task in tasks {
        let (tenant, stored) = task.await.unwrap();
        for (e, _) in stored {
            let owner = owners.entry(e.clone()).or_insert_with(|| tenant.clone());
            assert_eq!(*owner, tenant, "two owners for {e}");
            *count.entry(e).or_default() += 1;
        }
    }
    for e in &execs {
        let events = store.load_events(e).await.unwrap();
        assert_eq!(events.len() as u64, count[e]);
        assert_eq!(count[e], 5, "the owner's five appends");
        assert!(events.iter().all(|ev| ev.tenant_id == owners[e]));
        let listed = store.list_executions(&owners[e], 100, 0).await.unwrap();
        assert!(listed.contains(e));
    }
}

/// Listing is per tenant, newest first, pages without overlap, any limit and offset;
/// appending to an old execution does not make it newer.
pub async fn list_executions_pages_newest_first<B: Backend>(b: B) {
    let store = b.open();
    let (a, other) = (TenantId::from("a"), TenantId::from("b"));
    let mut created = Vec::new();
    for i in 0..25u64 {
        let e = ExecutionId::from(format!("exec-{i:02}"));
        let tenant = if i % 5 == 4 { &other } else { &a };
        store.append(&e, tenant, step_event(i)).await.unwrap();
        if tenant == &a {
            created.push(e);
        }
    }
    created.reverse();
    let mut paged = Vec::new();
    for page in 0.. {
        let got = store.list_executions(&a, 7, page * 7).await.unwrap();
        if got.is_empty() {
            break;
        }
        paged.extend(got);
    }
    assert_eq!(paged, created);
    assert_eq!(
        store.list_executions(&other, 100, 0).await.unwrap().len(),
        5
    );
    assert_eq!(
        store.list_executions(&a, usize::MAX, 0).await.unwrap(),
        created
    );
    assert!(
        store
            .list_executions(&a, usize::MAX, usize::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.list_executions(&a, 0, 0).await.unwrap().is_empty());
    assert_eq!(
        store.list_executions(&a, 1, 0).await.unwrap(),
        vec![created[0].clone()]
    );
    store
        .append(&created[19], &a, step_event(99))
        .await
        .unwrap();
    assert_eq!(
        store.list_executions(&a, 1, 0).await.unwrap(),
        vec![created[0].clone()]
    );
    drop(store);
    let store = b.open();
    assert_eq!(
        store.list_executions(&a, usize::MAX, 0).await.unwrap(),
        created
    );
}

/// Timestamps are UTC append times, non-decreasing within an execution, and everything
/// (to the nanosecond) survives close and reopen (or reconnect); appends continue at
/// the next sequence. A closed store refuses calls.
pub async fn reopen_preserves_everything<B: Backend>(b: B) {
    let store = b.open();
    let t = TenantId::from("t");
    let execs: Vec<_> = (0..10).map(|_| ExecutionId::new()).collect();
    let before = chrono::Utc::now();
    for round in 0..30u64 {
        for e in &execs {
            if round % 3 == 0 {
                store
                    .append_batch(e, &t, vec![step_event(round), step_event(round)])
                    .await
                    .unwrap();
            } else {
                store.append(e, &t, step_event(round)).await.unwrap();
            }
        }
    }
    let after = chrono::Utc::now();
    let mut snapshot = Vec::new();
    for e in &execs {
        snapshot.push(store.load_events(e).await.unwrap());
    }
    let listed = store.list_executions(&t, usize::MAX, 0).await.unwrap();
    store.close().unwrap();
    assert!(matches!(
        store.load_events_blocking(&execs[0]),
        Err(Error::Closed)
    ));
    let err = store
        .append(&execs[0], &t, step_event(1))
        .await
        .unwrap_err();
    assert!(matches!(engine_error(&err), Error::Closed));
    drop(store);

    let store = b.open();
    for (e, old) in execs.iter().zip(&snapshot) {
        let new = store.load_events(e).await.unwrap();
        assert_eq!(&new, old);
        assert!(new.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
        assert!(
            new.iter()
                .all(|ev| ev.timestamp >= before && ev.timestamp <= after)
        );
        assert!(
            new.iter()
                .all(|ev| ev.tenant_id == t && &ev.execution_id == e)
        );
        // A batch's events share one timestamp.
        assert_eq!(new[0].timestamp, new[1].timestamp);
    }
    assert_eq!(
        store.list_executions(&t, usize::MAX, 0).await.unwrap(),
        listed
    );
    let next = snapshot[0].len() as u64 + 1;
    assert_eq!(
        store.append(&execs[0], &t, step_event(0)).await.unwrap(),
        next
    );
}

/// Every variant round-trips, JSON values and floats bit for bit, before and after a
/// reopen.
pub async fn every_variant_round_trips<B: Backend>(b: B) {
    let store = b.open();
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    let events = every_variant();
    for ev in &events {
        store.append(&e, &t, ev.clone()).await.unwrap();
    }
    let nan_score = ExecutionEventData::GoalEvaluated {
        step_id: None,
        goal_id: "g".into(),
        status: "progressing".into(),
        score: Some(-0.0),
        reason: None,
    };
    store.append(&e, &t, nan_score.clone()).await.unwrap();
    let check = |stored: Vec<StoredEvent>| {
        assert_eq!(stored.len(), events.len() + 1);
        for (s, ev) in stored.iter().zip(events.iter().chain([&nan_score])) {
            assert_eq!(&s.event, ev);
            assert_eq!(
                serde_json::to_string(&s.event).unwrap(),
                serde_json::to_string(ev).unwrap()
            );
        }
        match &stored[events.len()].event {
            ExecutionEventData::GoalEvaluated { score: Some(s), .. } => {
                assert!(s.is_sign_negative(), "-0.0 kept its sign")
            }
            other => panic!("{other:?}"),
        }
    };
    check(store.load_events(&e).await.unwrap());
    drop(store);
    check(b.open().load_events(&e).await.unwrap());
}

/// Ids are non-empty UTF-8 up to 1 KiB; unicode, '/', '\' and NUL are fine.
pub async fn id_limits<B: Backend>(b: B) {
    let store = b.open();
    let t = TenantId::from("t");
    for good in [
        "a",
        "ü/\0/🚀",
        "back\\slash\\0",
        "\\",
        &"x".repeat(MAX_ID_BYTES),
    ] {
        let e = ExecutionId::from(good);
        store.append(&e, &t, step_event(1)).await.unwrap();
        let events = store.load_events(&e).await.unwrap();
        assert_eq!(events.len(), 1, "{good:?}");
        assert_eq!(events[0].execution_id, e);
        assert_eq!(store.get_latest_sequence(&e).await.unwrap(), Some(1));
        let t2 = TenantId::from(good);
        let e2 = ExecutionId::new();
        store.append(&e2, &t2, step_event(1)).await.unwrap();
        assert_eq!(
            store.list_executions(&t2, 10, 0).await.unwrap(),
            vec![e2.clone()]
        );
        assert_eq!(store.load_events(&e2).await.unwrap()[0].tenant_id, t2);
    }
    // NUL and its escaped look-alike are different ids.
    let (nul, look_alike) = (ExecutionId::from("n\0"), ExecutionId::from("n\\0"));
    store.append(&nul, &t, step_event(1)).await.unwrap();
    assert_eq!(store.get_latest_sequence(&look_alike).await.unwrap(), None);
    for bad in [String::new(), "x".repeat(MAX_ID_BYTES + 1)] {
        let err = store
            .append(&ExecutionId::from(bad.as_str()), &t, step_event(1))
            .await
            .unwrap_err();
        assert!(matches!(engine_error(&err), Error::InvalidArgument(_)));
        let err = store
            .append(
                &ExecutionId::new(),
                &TenantId::from(bad.as_str()),
                step_event(1),
            )
            .await
            .unwrap_err();
        assert!(matches!(engine_error(&err), Error::InvalidArgument(_)));
        let err = store
            .load_events(&ExecutionId::from(bad.as_str()))
            .await
            .unwrap_err();
        assert!(matches!(engine_error(&err), Error::InvalidArgument(_)));
        let err = store
            .list_executions(&TenantId::from(bad.as_str()), 1, 0)
            .await
            .unwrap_err();
        assert!(matches!(engine_error(&err), Error::InvalidArgument(_)));
    }
}

/// 16 MiB events are accepted; larger than the limit is a clear error, and so is
/// anything above a store's own lower limit.
pub async fn large_events_and_the_limit<B: Backend>(b: B) {
    let store = b.open();
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    let big = ExecutionEventData::StepCompleted {
        step_id: StepId::from("big"),
        output: Some("x".repeat(16 << 20)),
        duration_ms: 1,
    };
    assert_eq!(store.append(&e, &t, big.clone()).await.unwrap(), 1);
    let huge = ExecutionEventData::StepCompleted {
        step_id: StepId::from("huge"),
        output: Some("x".repeat(17 << 20)),
        duration_ms: 1,
    };
    let err = store.append(&e, &t, huge).await.unwrap_err();
    assert!(
        matches!(engine_error(&err), Error::TooLarge { .. }),
        "{err}"
    );
    assert_eq!(store.append(&e, &t, step_event(2)).await.unwrap(), 2);
    drop(store);
    let store = b.open();
    assert_eq!(store.load_events(&e).await.unwrap()[0].event, big);
    drop(store);
    let small = b.open_with_max_event_bytes(100);
    let paused = |n| ExecutionEventData::ExecutionPaused {
        reason: "y".repeat(n),
    };
    let err = small.append_blocking(&e, &t, paused(200)).unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { what, .. } if what.contains("max_event_bytes")),
        "{err}"
    );
    assert_eq!(small.append_blocking(&e, &t, paused(10)).unwrap(), 3);
}

/// A batch is all or nothing: one bad event anywhere refuses the whole batch.
pub async fn batch_is_all_or_nothing<B: Backend>(b: B) {
    let store = b.open_with_max_event_bytes(1000);
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    store.append(&e, &t, step_event(1)).await.unwrap();
    let mut batch: Vec<_> = (2..10).map(step_event).collect();
    batch.push(ExecutionEventData::ExecutionPaused {
        reason: "z".repeat(5000),
    });
    let err = store.append_batch(&e, &t, batch).await.unwrap_err();
    assert!(
        matches!(engine_error(&err), Error::TooLarge { .. }),
        "{err}"
    );
    assert_eq!(store.count_events(&e).await.unwrap(), 1);
    let first = store
        .append_batch(&e, &t, (2..10).map(step_event).collect())
        .await
        .unwrap();
    assert_eq!(first, 2);
    let events = store.load_events(&e).await.unwrap();
    let numbers: Vec<_> = events.iter().map(|ev| event_number(&ev.event)).collect();
    assert_eq!(numbers, (1..10).map(Some).collect::<Vec<_>>());
}

/// `Debug` names the variant, `Display` says what to do, and the engine error is
/// reachable from the trait's `anyhow::Error`. A closed store says so.
pub async fn errors_are_typed_and_readable<B: Backend>(b: B) {
    let store = b.open();
    let err = store
        .append_batch(&ExecutionId::new(), &TenantId::from("t"), vec![])
        .await
        .unwrap_err();
    let inner = engine_error(&err);
    assert!(format!("{inner:?}").contains("InvalidArgument"));
    assert!(!inner.to_string().is_empty());
    store.health_check().await.unwrap();
    assert!(!store.backend_name().is_empty());
    store.close().unwrap();
    let err = store
        .append(&ExecutionId::new(), &TenantId::from("t"), step_event(1))
        .await
        .unwrap_err();
    assert!(matches!(engine_error(&err), Error::Closed));
    assert!(store.health_check().await.is_err());
}

/// Many tasks append, singly and in batches, to shared executions while others read:
/// every execution ends 1..n without gap or duplicate, batches stay whole, each task's
/// own appends are in its order, and readers only ever see a gap-free prefix.
pub async fn tasks_share_executions_without_gaps<B: Backend>(b: B) {
    let store = Arc::new(b.open());
    let t = TenantId::from("t");
    let execs: Vec<_> = (0..4)
        .map(|i| ExecutionId::from(format!("shared-{i}")))
        .collect();
    let mut writers = Vec::new();
    for w in 0..24u64 {
        let (store, execs, t) = (Arc::clone(&store), execs.clone(), t.clone());
        writers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..15u64 {
                let e = &execs[((w + i) % 4) as usize];
                let tag = w * 1000 + i;
                let len = 1 + (i % 3);
                let first = if len == 1 {
                    store.append(e, &t, step_event(tag)).await.unwrap()
                } else {
                    let batch = (0..len).map(|_| step_event(tag)).collect();
                    store.append_batch(e, &t, batch).await.unwrap()
                };
                mine.push((e.clone(), first, len, tag));
            }
            mine
        }));
    }
    let reader = {
        let (store, execs) = (Arc::clone(&store), execs.clone());
        tokio::spawn(async move {
            for _ in 0..30 {
                for e in &execs {
                    let seen = store.load_events(e).await.unwrap();
                    for (i, ev) in seen.iter().enumerate() {
                        assert_eq!(ev.sequence, i as u64 + 1);
                    }
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let mut by_exec: HashMap<ExecutionId, u64> = HashMap::new();
    let mut claimed = Vec::new();
    for w in writers {
        let mine = w.await.unwrap();
        let mut last: HashMap<ExecutionId, u64> = HashMap::new();
        for (e, first, len, tag) in mine {
            let prev = last.insert(e.clone(), first).unwrap_or(0);
            assert!(first > prev, "a task's appends keep its order");
            *by_exec.entry(e.clone()).or_default() += len;
            claimed.push((e, first, len, tag));
        }
    }
    reader.await.unwrap();
    let mut loaded = HashMap::new();
    for e in &execs {
        let events = store.load_events(e).await.unwrap();
        assert_eq!(events.len() as u64, by_exec[e]);
        for (i, ev) in events.iter().enumerate() {
            assert_eq!(ev.sequence, i as u64 + 1);
        }
        assert!(events.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
        assert_eq!(
            store.get_latest_sequence(e).await.unwrap(),
            Some(by_exec[e])
        );
        loaded.insert(e.clone(), events);
    }
    for (e, first, len, tag) in claimed {
        for s in first..first + len {
            let ev = &loaded[&e][(s - 1) as usize];
            assert_eq!(event_number(&ev.event), Some(tag), "{e} seq {s}");
        }
    }
}

/// The blocking twins from plain threads, appending and reading at once.
pub async fn threads_use_the_blocking_twins<B: Backend>(b: B) {
    let store = Arc::new(b.open());
    let t = TenantId::from("t");
    let e = ExecutionId::new();
    let threads: Vec<_> = (0..8u64)
        .map(|k| {
            let (store, t, e) = (Arc::clone(&store), t.clone(), e.clone());
            std::thread::spawn(move || {
                let mut seqs = Vec::new();
                for i in 0..20 {
                    if i % 4 == 0 {
                        let first = store
                            .append_batch_blocking(&e, &t, vec![step_event(k), step_event(k)])
                            .unwrap();
                        seqs.extend([first, first + 1]);
                    } else {
                        seqs.push(store.append_blocking(&e, &t, step_event(k)).unwrap());
                    }
                    let seen = store.load_events_blocking(&e).unwrap();
                    assert!(seen.len() as u64 >= *seqs.last().unwrap());
                }
                (k, seqs)
            })
        })
        .collect();
    let events = tokio::task::spawn_blocking({
        let (store, e) = (Arc::clone(&store), e.clone());
        move || {
            let mut all = Vec::new();
            for th in threads {
                all.push(th.join().unwrap());
            }
            (all, store.load_events_blocking(&e).unwrap())
        }
    })
    .await
    .unwrap();
    let (all, loaded) = events;
    assert_eq!(loaded.len(), 8 * 25);
    for (k, seqs) in all {
        for s in seqs {
            assert_eq!(event_number(&loaded[(s - 1) as usize].event), Some(k));
        }
    }
    assert_eq!(store.get_latest_sequence_blocking(&e).unwrap(), Some(200));
    assert_eq!(store.list_executions_blocking(&t, 10, 0).unwrap(), vec![e]);
}

/// The async API under a plain `futures` executor, on a thread that is not a tokio
/// worker.
pub async fn works_under_a_plain_executor<B: Backend>(b: B) {
    let store = Arc::new(b.open());
    let worker = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || {
            let (e, t) = (ExecutionId::new(), TenantId::from("t"));
            futures::executor::block_on(async {
                assert_eq!(store.append(&e, &t, step_event(1)).await.unwrap(), 1);
                assert_eq!(
                    store
                        .append_batch(&e, &t, vec![step_event(2)])
                        .await
                        .unwrap(),
                    2
                );
                assert_eq!(store.load_events(&e).await.unwrap().len(), 2);
                store.health_check().await.unwrap();
            });
        })
    };
    tokio::task::spawn_blocking(move || worker.join().unwrap())
        .await
        .unwrap();
}
