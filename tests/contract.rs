//! What the contract means for the embedded `LogStore` alone: locks, segments, the
//! recovery report, index memory. The semantics both backends share are in the
//! conformance suite (tests/conformance/mod.rs, run by tests/conformance_log.rs).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use execlog::*;

fn open(dir: &std::path::Path) -> LogStore {
    LogStore::open(dir).unwrap()
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

/// The write metrics move as appends happen (issue 17): appends, events, bytes, groups,
/// and one fdatasync latency per group; batches count all their events.
#[test]
fn write_metrics_move_with_appends() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let before = store.stats().writes;
    assert_eq!((before.appends, before.events, before.groups), (0, 0, 0));
    let (e, t) = (ExecutionId::from("m"), TenantId::from("t"));
    for i in 1..=10 {
        store.append_blocking(&e, &t, step_event(i)).unwrap();
    }
    store
        .append_batch_blocking(&e, &t, (11..=15).map(step_event).collect())
        .unwrap();
    let w = store.stats().writes;
    assert_eq!(w.appends, 11);
    assert_eq!(w.events, 15);
    assert!(w.groups >= 1 && w.groups <= 11, "{w:?}");
    assert!(w.bytes >= 15 * 56, "{w:?}");
    assert_eq!(w.fdatasync_micros.total(), w.groups);
    assert_eq!(w.appends_per_group.total(), w.groups);
    assert!(w.fdatasync_micros.quantile_upper_bound(0.5).is_some());
}
