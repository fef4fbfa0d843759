//! Index checkpoints written while the store runs (`Options::index_checkpoint_interval_bytes`):
//! an open after a crash loads the newest one and rebuilds from records only what
//! followed it, and answers exactly what the live store answered.
//!
//! The crash images here are copies of a live store's directory (the page cache holds
//! every acknowledged byte, as after a process crash), taken while writers, forks,
//! deletions and erasure passes run: each must open with its checkpoint accepted (a
//! checkpoint that described anything not durable, or not the same cut of the log as
//! its digests, fails open's record walk and is ignored) and serve every event
//! acknowledged before the copy.
//!
//! Regression guarded: checkpoints that include reserved (not yet durable) executions,
//! events or entry points; digests and index taken at different moments; no running
//! checkpoints at all (open after a crash scans everything since the last clean close).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::crash_image::{self, kilobyte_event};
use common::small_segments;
use execlog::*;

const INTERVAL: u64 = 64 * 1024;

fn options() -> Options {
    // One execution per slice of the encode: appends, group commits and deletions
    // land between slices, which the freeze must keep out of the checkpoint.
    small_segments()
        .index_checkpoint_interval_bytes(Some(INTERVAL))
        .checkpoint_slice(1)
}

/// Writers on four threads (singles, batches, keyed appends), one thread forking and
/// deleting and erasing, until `stop`.
fn workload(store: &Arc<LogStore>, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    let mut threads = Vec::new();
    for w in 0..4u64 {
        let (store, stop) = (Arc::clone(store), Arc::clone(stop));
        threads.push(std::thread::spawn(move || {
            let tenant = TenantId::from(format!("t{}", w % 2));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // New executions all the time: a checkpoint often finds one reserved.
                let id = match n % 3 {
                    0 => ExecutionId::from(format!("w{w}-new{n}")),
                    _ => ExecutionId::from(format!("w{w}-{}", n % 9)),
                };
                match n % 4 {
                    0 => {
                        let batch = (0..5).map(|k| kilobyte_event(n * 10 + k)).collect();
                        store.append_batch_blocking(&id, &tenant, batch).unwrap();
                    }
                    1 => {
                        let options = AppendOptions {
                            idempotency_key: Some(format!("k{n}")),
                            ..AppendOptions::default()
                        };
                        store
                            .append_with_blocking(&id, &tenant, vec![kilobyte_event(n)], options)
                            .unwrap();
                    }
                    _ => {
                        store
                            .append_blocking(&id, &tenant, kilobyte_event(n))
                            .unwrap();
                    }
                }
                n += 1;
            }
        }));
    }
    let (store, stop) = (Arc::clone(store), Arc::clone(stop));
    threads.push(std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let source = ExecutionId::from(format!("w0-{}", n % 9));
            let fork = ExecutionId::from(format!("fork{n}"));
            if store.fork_execution_blocking(&source, 1, &fork).is_ok() && n.is_multiple_of(2) {
                store.delete_execution_blocking(&fork).unwrap();
            }
            if n % 5 == 4 {
                store.compact_now().unwrap();
            }
            n += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
    }));
    threads
}

/// Whether `workload` deletes `id` (every other fork, right after forking it).
fn deleted_by_workload(id: &str) -> bool {
    id.strip_prefix("fork")
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|n| n.is_multiple_of(2))
}

#[test]
fn crash_images_taken_while_writing_load_their_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    // The smallest interval: checkpoints all the time, racing every group published.
    let busy = options().index_checkpoint_interval_bytes(Some(0));
    let store = Arc::new(LogStore::open_with(dir.path(), busy).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let threads = workload(&store, &stop);
    let images = Mutex::new(Vec::new());
    let started = Instant::now();
    while images.lock().unwrap().len() < 12 && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(150));
        // Everything served before the copy is acknowledged: it must survive the crash.
        let served = crash_image::everything(&store);
        let image = crash_image::copy(dir.path());
        images.lock().unwrap().push((image, served));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        store.stats().index_checkpoints >= 50,
        "{:?}",
        store.stats().index_checkpoints
    );
    let mut loaded = 0;
    for (image, served) in images.into_inner().unwrap() {
        let reopened = LogStore::open_with(image.path(), options()).unwrap();
        let report = reopened.recovery_report().clone();
        assert_eq!(report.checkpoint_ignored, None, "{report:?}");
        loaded += usize::from(report.checkpoint_bytes > 0);
        let now = crash_image::everything(&reopened);
        for (id, events) in served {
            let survived = now.get(&id).map(Vec::as_slice).unwrap_or_default();
            if survived.is_empty() && deleted_by_workload(id.as_str()) {
                // Deleted between the snapshot of what was served and the copy.
                continue;
            }
            assert!(
                survived.len() >= events.len() && survived[..events.len()] == events[..],
                "{id}: served {} events, {} after the crash",
                events.len(),
                survived.len()
            );
        }
        reopened.close().unwrap();
    }
    assert!(loaded >= 8, "only {loaded} images had a checkpoint");
}

#[test]
fn a_crash_rescans_at_most_about_one_interval() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open_with(dir.path(), options()).unwrap();
    let tenant = TenantId::from("t");
    for n in 0..2_000u64 {
        let id = ExecutionId::from(format!("e{}", n % 37));
        store
            .append_blocking(&id, &tenant, kilobyte_event(n))
            .unwrap();
    }
    let data_bytes = store.stats().data_bytes;
    assert!(data_bytes > 20 * INTERVAL, "{data_bytes}");
    let expected = crash_image::everything(&store);
    // The request for the last interval may still be on its way to the thread.
    let deadline = Instant::now() + Duration::from_secs(20);
    let report = loop {
        let image = crash_image::copy(dir.path());
        let reopened = LogStore::open_with(image.path(), options()).unwrap();
        let report = reopened.recovery_report().clone();
        assert_eq!(crash_image::everything(&reopened), expected);
        reopened.close().unwrap();
        if data_bytes - report.checkpoint_bytes <= 2 * INTERVAL || Instant::now() > deadline {
            break report;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(report.checkpoint_ignored, None);
    assert!(
        data_bytes - report.checkpoint_bytes <= 2 * INTERVAL,
        "open rebuilt {} of {data_bytes} bytes from records: {report:?}",
        data_bytes - report.checkpoint_bytes
    );
    // Without running checkpoints the same crash rebuilds everything.
    let off = tempfile::tempdir().unwrap();
    let store =
        LogStore::open_with(off.path(), options().index_checkpoint_interval_bytes(None)).unwrap();
    for n in 0..200u64 {
        store
            .append_blocking(&ExecutionId::from("x"), &tenant, kilobyte_event(n))
            .unwrap();
    }
    assert_eq!(store.stats().index_checkpoints, 0);
    let image = crash_image::copy(off.path());
    let reopened = LogStore::open_with(image.path(), options()).unwrap();
    assert_eq!(reopened.recovery_report().checkpoint_bytes, 0);
}

/// With the default interval, running checkpoints add at most about a quarter to the
/// bytes written, even when the index outgrows a segment: many short executions (one
/// small event each) make each checkpoint a sizeable share of a 64 KiB segment.
#[test]
fn the_default_interval_keeps_checkpoints_within_a_quarter_of_the_data() {
    let dir = tempfile::tempdir().unwrap();
    // The default interval: the segment size, at least 4 times the last checkpoint.
    let store = Arc::new(LogStore::open_with(dir.path(), small_segments()).unwrap());
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let tenant = TenantId::from(format!("t{}", w % 3));
                for n in 0..800u64 {
                    let event = ExecutionEventData::StepCompleted {
                        step_id: StepId::from("s"),
                        output: None,
                        duration_ms: n,
                    };
                    let id = ExecutionId::from(format!("short-{w}-{n}"));
                    store.append_blocking(&id, &tenant, event).unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let stats = store.stats();
    assert!(stats.index_checkpoints >= 2, "{stats:?}");
    let last = std::fs::metadata(dir.path().join("checkpoint.idx"))
        .unwrap()
        .len();
    assert!(
        stats.index_checkpoint_bytes <= stats.data_bytes / 4 + 2 * last,
        "checkpoints wrote {} bytes for {} bytes of data (last checkpoint {last} bytes)",
        stats.index_checkpoint_bytes,
        stats.data_bytes
    );
}
