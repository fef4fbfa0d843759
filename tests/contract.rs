//! The `EventStore` contract, semantics by semantics, through the async trait (tokio)
//! and the blocking API. Each test names the semantic of the engine issue it checks.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use execlog::*;

fn open(dir: &std::path::Path) -> LogStore {
    LogStore::open(dir).unwrap()
}

/// Semantic 1 and 5: sequences start at 1, are consecutive; reads are ordered.
#[tokio::test]
async fn sequences_start_at_one_and_are_consecutive() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
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
}

/// Semantic 5: unknown executions read as empty.
#[tokio::test]
async fn unknown_execution_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let e = ExecutionId::from("nobody");
    assert!(store.load_events(&e).await.unwrap().is_empty());
    assert!(store.load_events_after(&e, 3).await.unwrap().is_empty());
    assert_eq!(store.get_latest_sequence(&e).await.unwrap(), None);
    assert!(
        store
            .list_executions(&TenantId::from("none"), 10, 0)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Semantic 3 (precise point): an empty batch is an invalid argument and leaves no
/// trace: no execution, no sequence used.
#[tokio::test]
async fn empty_batch_is_rejected_without_trace() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
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

/// Semantic 6: tenant ownership and mismatch. The error does not name the owning
/// tenant (the caller belongs to another one).
#[tokio::test]
async fn tenant_mismatch_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let e = ExecutionId::new();
    let (a, b) = (TenantId::from("owner-tenant-7f3a"), TenantId::from("b"));
    store.append(&e, &a, step_event(1)).await.unwrap();
    let err = store.append(&e, &b, step_event(2)).await.unwrap_err();
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
        .append_batch(&e, &b, vec![step_event(2), step_event(3)])
        .await
        .unwrap_err();
    assert!(matches!(engine_error(&err), Error::TenantMismatch { .. }));
    assert_eq!(store.count_events(&e).await.unwrap(), 1);
    assert!(store.list_executions(&b, 10, 0).await.unwrap().is_empty());
    assert_eq!(store.append(&e, &a, step_event(2)).await.unwrap(), 2);
    drop(store);
    let store = open(dir.path());
    let err = store.append(&e, &b, step_event(3)).await.unwrap_err();
    assert!(matches!(engine_error(&err), Error::TenantMismatch { .. }));
}

/// Semantic 6: listing is per tenant, newest first, pages without overlap, and any
/// limit/offset is accepted.
#[tokio::test]
async fn list_executions_pages_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (a, b) = (TenantId::from("a"), TenantId::from("b"));
    let mut created = Vec::new();
    for i in 0..25u64 {
        let e = ExecutionId::from(format!("exec-{i:02}"));
        let tenant = if i % 5 == 4 { &b } else { &a };
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
    assert_eq!(store.list_executions(&b, 100, 0).await.unwrap().len(), 5);
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
    // Appending to an old execution does not make it newer.
    store
        .append(&created[19], &a, step_event(99))
        .await
        .unwrap();
    assert_eq!(
        store.list_executions(&a, 1, 0).await.unwrap(),
        vec![created[0].clone()]
    );
    drop(store);
    let store = open(dir.path());
    assert_eq!(
        store.list_executions(&a, usize::MAX, 0).await.unwrap(),
        created
    );
}

/// Semantic 7 and 8: timestamps are UTC append times, non-decreasing, and everything
/// survives close and reopen exactly; appends continue at the next sequence.
#[tokio::test]
async fn reopen_preserves_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open_with(dir.path(), small_segments()).unwrap());
    let t = TenantId::from("t");
    let execs: Vec<_> = (0..20).map(|_| ExecutionId::new()).collect();
    let before = chrono::Utc::now();
    for round in 0..60u64 {
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
    let snapshot: Vec<_> = execs
        .iter()
        .map(|e| store.load_events_blocking(e).unwrap())
        .collect();
    let listed = store.list_executions(&t, usize::MAX, 0).await.unwrap();
    assert!(store.stats().segments > 1, "test must cross segments");
    store.close().unwrap();
    assert!(matches!(
        store.load_events_blocking(&execs[0]),
        Err(Error::Closed)
    ));
    drop(store);

    let store = LogStore::open_with(dir.path(), small_segments()).unwrap();
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
    let report = store.recovery_report();
    assert_eq!(report.truncated_at, None);
    assert_eq!(
        report.records,
        snapshot.iter().map(|s| s.len() as u64).sum::<u64>()
    );
}

/// Semantic 10: every variant round-trips through the disk, JSON values and floats bit
/// for bit, before and after reopen.
#[tokio::test]
async fn every_variant_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    let events = every_variant();
    for ev in &events {
        store.append(&e, &t, ev.clone()).await.unwrap();
    }
    let check = |stored: Vec<StoredEvent>| {
        assert_eq!(stored.len(), events.len());
        for (s, ev) in stored.iter().zip(&events) {
            assert_eq!(&s.event, ev);
            // Bit-for-bit: the JSON text of floats is the shortest round-trip form.
            assert_eq!(
                serde_json::to_string(&s.event).unwrap(),
                serde_json::to_string(ev).unwrap()
            );
        }
    };
    check(store.load_events(&e).await.unwrap());
    drop(store);
    check(open(dir.path()).load_events(&e).await.unwrap());
}

/// The contract's JSON form: `"type"` tag, snake_case names, plain-string ids.
#[test]
fn json_form_is_the_contracts() {
    let ev = ExecutionEventData::StepStarted {
        step_id: StepId::from("s"),
        parent_step_id: None,
        step_type: StepType::FunctionNode,
        name: "n".into(),
    };
    let v = serde_json::to_value(&ev).unwrap();
    assert_eq!(v["type"], "step_started");
    assert_eq!(v["step_id"], "s");
    let back: ExecutionEventData = serde_json::from_value(v).unwrap();
    assert_eq!(back, ev);
    for ev in every_variant() {
        let text = serde_json::to_string(&ev).unwrap();
        let back: ExecutionEventData = serde_json::from_str(&text).unwrap();
        assert_eq!(back, ev);
    }
}

/// Precise point: ids are non-empty UTF-8 up to 1 KiB; unicode, '/' and NUL are fine.
#[tokio::test]
async fn id_limits() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let t = TenantId::from("t");
    for good in ["a", "ü/\0/🚀", &"x".repeat(MAX_ID_BYTES)] {
        let e = ExecutionId::from(good);
        store.append(&e, &t, step_event(1)).await.unwrap();
        assert_eq!(store.load_events(&e).await.unwrap()[0].execution_id, e);
        let t2 = TenantId::from(good);
        let e2 = ExecutionId::new();
        store.append(&e2, &t2, step_event(1)).await.unwrap();
        assert_eq!(store.list_executions(&t2, 10, 0).await.unwrap(), vec![e2]);
    }
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
    }
}

/// Precise point: 16 MiB events are accepted; larger than the limit is a clear error.
#[tokio::test]
async fn large_events_and_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
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
    assert!(matches!(engine_error(&err), Error::InvalidArgument(_)));
    assert_eq!(store.append(&e, &t, step_event(2)).await.unwrap(), 2);
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.load_events(&e).await.unwrap()[0].event, big);
    let small = LogStore::open_with(
        tempfile::tempdir().unwrap().path(),
        Options::default().max_event_bytes(100),
    )
    .unwrap();
    let err = small
        .append_blocking(
            &e,
            &t,
            ExecutionEventData::ExecutionPaused {
                reason: "y".repeat(200),
            },
        )
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)));
}

/// Semantic 9: a second store on the same directory fails at once with `Locked`; after
/// close the directory can be opened again.
#[test]
fn second_open_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let err = LogStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("locked"));
    store.close().unwrap();
    let again = open(dir.path());
    drop(again);
}

/// Semantic 9, across processes: this test binary re-runs itself as the holder.
#[test]
fn lock_holds_across_processes() {
    if let Ok(dir) = std::env::var("EXECLOG_HOLD_LOCK") {
        let _store = open(std::path::Path::new(&dir));
        println!("holding");
        std::thread::sleep(std::time::Duration::from_secs(30));
        return;
    }
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "lock_holds_across_processes",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("EXECLOG_HOLD_LOCK", dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.unwrap().contains("holding")));
    let started = std::time::Instant::now();
    let err = LogStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    child.kill().unwrap();
    child.wait().unwrap();
    open(dir.path());
}

/// Errors: `Debug` names the variant, `Display` says what to do, and the engine error
/// is reachable from the trait's `anyhow::Error`.
#[tokio::test]
async fn errors_are_typed_and_readable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let err = store
        .append_batch(&ExecutionId::new(), &TenantId::from("t"), vec![])
        .await
        .unwrap_err();
    let inner = engine_error(&err);
    assert!(format!("{inner:?}").contains("InvalidArgument"));
    assert!(!inner.to_string().is_empty());
    store.close().unwrap();
    let err = store
        .append(&ExecutionId::new(), &TenantId::from("t"), step_event(1))
        .await
        .unwrap_err();
    assert!(matches!(engine_error(&err), Error::Closed));
    let bad =
        LogStore::open_with(dir.path(), Options::default().segment_size_bytes(1)).unwrap_err();
    assert!(matches!(bad, Error::InvalidArgument(_)));
}

/// The store is `Send + Sync` and works from many tokio tasks and under a plain
/// `futures` executor.
#[test]
fn works_under_any_executor() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<LogStore>();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    let seq = futures::executor::block_on(store.append(&e, &t, step_event(1))).unwrap();
    assert_eq!(seq, 1);
    futures::executor::block_on(store.health_check()).unwrap();
    assert_eq!(store.backend_name(), "execlog");
}

/// Index budget: at most about 1 byte per event plus a constant per execution.
#[test]
fn index_memory_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let t = TenantId::from("t");
    let long = ExecutionId::from("long");
    for chunk in 0..200u64 {
        let events = (0..500).map(|i| step_event(chunk * 500 + i)).collect();
        store.append_batch_blocking(&long, &t, events).unwrap();
    }
    let stats = store.stats();
    assert_eq!(stats.events, 100_000);
    let per_event = stats.sparse_index_bytes as f64 / stats.events as f64;
    println!(
        "sparse index: {per_event:.3} bytes per event; whole index {} bytes",
        stats.index_bytes
    );
    assert!(per_event <= 1.0, "{per_event} bytes per event");
    // Reads of a page deep inside the execution use the sparse entries.
    let page = store.read_range_blocking(&long, 54_321, 7).unwrap();
    assert_eq!(
        page.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        (54_322..=54_328).collect::<Vec<_>>()
    );
}
