//! Online backup (`LogStore::backup_to`, `execlog backup`): a consistent, durable copy
//! at a position, taken while appends continue.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::step_event;
use execlog::*;

/// Every event of `store` in log order with its position, up to `through`.
fn history(store: &LogStore, through: u64) -> Vec<(u64, StoredEvent)> {
    let mut sub = store
        .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
        .unwrap();
    let mut out = Vec::new();
    while let Some(d) = sub.try_next().unwrap() {
        if d.position > through {
            break;
        }
        out.push((d.position, d.event));
    }
    out
}

/// Writers append (some executions deleted on the way) until stopped; returns how
/// many appends each acknowledged.
fn writers(store: &Arc<LogStore>, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<u64>> {
    (0..4)
        .map(|w| {
            let (store, stop) = (Arc::clone(store), Arc::clone(stop));
            std::thread::spawn(move || {
                let t = TenantId::from(format!("tenant-{}", w % 2));
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let e = ExecutionId::from(format!("w{w}-{}", n / 10));
                    store.append_blocking(&e, &t, step_event(n)).unwrap();
                    if n % 50 == 49 {
                        store.delete_execution_blocking(&e).unwrap();
                    }
                    n += 1;
                }
                n
            })
        })
        .collect()
}

#[test]
fn a_backup_taken_under_load_holds_exactly_the_log_up_to_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let backups = tempfile::tempdir().unwrap();
    let options = Options::default().segment_size_bytes(64 << 10);
    let store = Arc::new(LogStore::open_with(dir.path(), options).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let handles = writers(&store, &stop);
    let mut reports = Vec::new();
    for i in 0..3 {
        std::thread::sleep(Duration::from_millis(150));
        // The last backup spans segments, however slow the machine's fsyncs are today
        // (a position's high 32 bits are its segment).
        let started = std::time::Instant::now();
        while i == 2 && store.end_position().unwrap() >> 32 < 2 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no second segment"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let acked_before = store.end_position().unwrap();
        let report = store
            .backup_to(backups.path().join(format!("b{i}")))
            .unwrap();
        assert!(
            report.position >= acked_before,
            "{report:?} < {acked_before}"
        );
        reports.push(report);
    }
    stop.store(true, Ordering::Relaxed);
    let appended: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(appended > 100, "only {appended} appends ran");
    assert!(reports.last().unwrap().segments > 1, "{reports:?}");
    for report in &reports {
        let copy = LogStore::open(&report.path).unwrap();
        let want = history(&store, report.position);
        let mut got = history(&copy, u64::MAX);
        // Executions deleted after the backup's position are in the copy, not in the
        // source's reads any more.
        got.retain(|(_, e)| {
            store
                .get_latest_sequence_blocking(&e.execution_id)
                .unwrap()
                .is_some()
        });
        assert_eq!(got.len(), want.len(), "{report:?}");
        assert!(
            got == want,
            "the copy differs from the log up to {}",
            report.position
        );
        let s = store.stats();
        let c = copy.stats();
        assert!(c.deleted_executions <= s.deleted_executions);
        // The copy is a store of its own: it takes appends.
        let e = ExecutionId::from("after-backup");
        copy.append_blocking(&e, &TenantId::from("t"), step_event(1))
            .unwrap();
    }
}

#[test]
fn a_backup_goes_only_into_a_new_or_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let e = ExecutionId::from("e");
    store
        .append_blocking(&e, &TenantId::from("t"), step_event(1))
        .unwrap();
    for inside in [dir.path().to_path_buf(), dir.path().join("backup")] {
        let err = store.backup_to(&inside).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    }
    assert!(!dir.path().join("backup").exists());
    let busy = tempfile::tempdir().unwrap();
    std::fs::write(busy.path().join("notes.txt"), "mine").unwrap();
    let err = store.backup_to(busy.path()).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert_eq!(std::fs::read_dir(busy.path()).unwrap().count(), 1);
    let empty = tempfile::tempdir().unwrap();
    let report = store.backup_to(empty.path()).unwrap();
    assert_eq!(report.segments, 1);
    store.close().unwrap();
    let err = store.backup_to(empty.path().join("x")).unwrap_err();
    assert!(matches!(err, Error::Closed), "{err:?}");
    let copy = LogStore::open(empty.path()).unwrap();
    assert_eq!(copy.load_events_blocking(&e).unwrap().len(), 1);
}

#[test]
fn execlog_backup_copies_a_store_another_process_writes() {
    let dir = tempfile::tempdir().unwrap();
    let backups = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path()).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let handles = writers(&store, &stop);
    std::thread::sleep(Duration::from_millis(100));
    let dest = backups.path().join("copy");
    let out = Command::new(env!("CARGO_BIN_EXE_execlog"))
        .args([
            "backup",
            dir.path().to_str().unwrap(),
            dest.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let position = line["position"].as_u64().unwrap();
    let copy = LogStore::open(&dest).unwrap();
    let mut got = history(&copy, u64::MAX);
    assert!(!got.is_empty());
    got.retain(|(_, e)| {
        store
            .get_latest_sequence_blocking(&e.execution_id)
            .unwrap()
            .is_some()
    });
    assert!(got == history(&store, position));
}
