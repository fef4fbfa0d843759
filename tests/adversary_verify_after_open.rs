//! Adversarial review of `Options::verify_checkpoint_after_open`: a read-write open
//! trusts `checkpoint.idx` on its CRC and a few cheap checks, and the `execlog-verify`
//! thread makes the full checks later.
//!
//! Findings (tests expected to fail until the engine is fixed):
//! - `a_forged_end_inside_the_last_group_cuts_an_acknowledged_append`: open's tail scan
//!   starts at the trusted checkpoint's covered end before anything verified it; an end
//!   inside the last record makes the scan see a torn tail, and open cuts (zeroes) the
//!   acknowledged record. The verdict then refutes the file, but the bytes are gone: the
//!   next open's full scan no longer answers as a full scan before did.
//! - `a_forged_end_before_a_later_group_makes_open_fail`: the same with a later commit
//!   group after the end: open fails with `Corrupt`, every time, while the eager open
//!   ignores the file and serves everything.
//! - `backup_before_the_verdict_copies_what_the_unverified_checkpoint_says`: `backup_to`
//!   neither waits for the verdict nor checks it: it copies each sealed segment up to
//!   the end the unverified checkpoint gives it and reports success; the copy does not
//!   open (`Corrupt`: the chain runs into the bytes left out). Fixed on branch
//!   adv-verify by the one-line gate in `backup_to` (`check_writable_index`).
//! - `a_checkpoint_replaced_during_the_window_is_verified_instead_of_the_trusted_one`:
//!   the verifier reloads `checkpoint.idx` from disk and verifies that file, not the
//!   index open trusted; a good file put back during the window turns a forged index
//!   into a "verified" one, after which reads serve another execution's events.
//!
//! The others are regression tests of claims that held.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::segment_files::segment_path;
use common::verify_after_open::{after_open, set_covered_end, swap_ids, wait_for_verdict};
use common::{crash_image, step_event};
use execlog::*;

const CHECKPOINT: &str = "checkpoint.idx";

fn tenant(n: u32) -> TenantId {
    TenantId::from(format!("tenant-{n}"))
}

fn id(s: &str) -> ExecutionId {
    ExecutionId::from(s)
}

fn keyed(key: &str) -> AppendOptions {
    AppendOptions {
        idempotency_key: Some(key.into()),
        ..AppendOptions::default()
    }
}

/// `run-a` (tenant 0, 10 events, the last keyed "k"), `run-b` (tenant 1, 7 events),
/// `run-c` (tenant 0, 3 events), `gone` (deleted, keyed "g") and `fork-a` (run-a's
/// first 4 events and one of its own), closed cleanly.
fn store() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let s = LogStore::open_with(dir.path(), Options::default().index_stride(4)).unwrap();
    for (name, t, n) in [
        ("run-a", 0, 9u64),
        ("run-b", 1, 7),
        ("run-c", 0, 3),
        ("gone", 1, 2),
    ] {
        for i in 0..n {
            s.append_blocking(&id(name), &tenant(t), step_event(i))
                .unwrap();
        }
    }
    s.append_with_blocking(&id("run-a"), &tenant(0), vec![step_event(9)], keyed("k"))
        .unwrap();
    s.append_with_blocking(&id("gone"), &tenant(1), vec![step_event(2)], keyed("g"))
        .unwrap();
    s.fork_execution_blocking(&id("run-a"), 4, &id("fork-a"))
        .unwrap();
    s.append_blocking(&id("fork-a"), &tenant(0), step_event(40))
        .unwrap();
    assert!(s.delete_execution_blocking(&id("gone")).unwrap());
    s.close().unwrap();
    dir
}

/// Everything the store answers about its executions and tenants.
fn answers(s: &LogStore) -> String {
    let mut out = String::new();
    for t in 0..2 {
        let ids = s.list_executions_blocking(&tenant(t), 100, 0).unwrap();
        out += &format!("{t}: {ids:?}\n");
    }
    for name in ["run-a", "run-b", "run-c", "gone", "fork-a"] {
        let events = s.load_events_blocking(&id(name)).unwrap();
        out += &serde_json::to_string(&events).unwrap();
        out += "\n";
    }
    out
}

/// The answers of a full scan of a copy of `dir` (a full scan's close writes a seal).
fn full_scan_answers(dir: &Path) -> String {
    let copy = crash_image::copy(dir);
    let options = Options::default().index_stride(4).index_checkpoint(false);
    let s = LogStore::open_with(copy.path(), options).unwrap();
    answers(&s)
}

/// The offsets of the records of a segment file, in order.
fn record_starts(segment: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut at = 32;
    while at + 8 <= segment.len() {
        let len = u32::from_le_bytes(segment[at + 4..at + 8].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        starts.push(at);
        at += (56 + len).next_multiple_of(8);
    }
    starts
}

/// A crash image of `store()` reopened and given one more append to `run-b` (its own
/// commit group, after the seal): the checkpoint of the clean close covers everything
/// but that append.
fn image_with_one_more_append() -> tempfile::TempDir {
    let dir = store();
    let live = LogStore::open_with(dir.path(), Options::default().index_stride(4)).unwrap();
    live.append_blocking(&id("run-b"), &tenant(1), step_event(7))
        .unwrap();
    let image = crash_image::copy(dir.path());
    live.close().unwrap();
    image
}

/// Opens `dir` with the verification after open, waits for the verdict if it opened,
/// and closes; returns what open said.
fn open_verify_close(dir: &Path) -> std::result::Result<(), String> {
    match LogStore::open_with(dir, after_open(Duration::from_millis(50))) {
        Ok(s) => {
            wait_for_verdict(&s);
            let _ = s.close();
            Ok(())
        }
        Err(e) => Err(format!("{e:?}")),
    }
}

// ---------------------------------------------------------------------------------
// Findings.
// ---------------------------------------------------------------------------------

/// FAILS: open cuts an acknowledged record on the word of an unverified checkpoint.
#[test]
fn a_forged_end_inside_the_last_group_cuts_an_acknowledged_append() {
    let image = image_with_one_more_append();
    let truth = full_scan_answers(image.path());
    assert!(truth.contains("output 7"), "the last append is served");
    let segment = fs::read(segment_path(image.path(), 1)).unwrap();
    let last = *record_starts(&segment).last().unwrap();
    // Inside the record of the last append: a writer bug, or a forgery, that the eager
    // open refuses ("covered end is not a record boundary").
    set_covered_end(image.path(), 1, last + 8);

    let eager = crash_image::copy(image.path());
    let s = LogStore::open_with(eager.path(), Options::default().index_stride(4)).unwrap();
    assert!(s.recovery_report().checkpoint_ignored.is_some());
    assert_eq!(answers(&s), truth, "the eager open ignores the file");
    drop(s);

    let opened = open_verify_close(image.path());
    let after = full_scan_answers(image.path());
    assert_eq!(
        after, truth,
        "after an open that trusted the checkpoint ({opened:?}), a full scan lost the \
         acknowledged append: open cut it before the verification refuted the file"
    );
}

/// FAILS: a checkpoint end inside an earlier record makes every open with the option
/// fail, where the eager open ignores the file.
#[test]
fn a_forged_end_before_a_later_group_makes_open_fail() {
    let image = image_with_one_more_append();
    let truth = full_scan_answers(image.path());
    let segment = fs::read(segment_path(image.path(), 1)).unwrap();
    let starts = record_starts(&segment);
    // Inside the record before the seal: the seal and the last append follow.
    set_covered_end(image.path(), 1, starts[starts.len() - 3] + 8);

    let eager = crash_image::copy(image.path());
    let s = LogStore::open_with(eager.path(), Options::default().index_stride(4)).unwrap();
    assert_eq!(answers(&s), truth, "the eager open ignores the file");
    drop(s);

    for attempt in 0..2 {
        let s = LogStore::open_with(image.path(), after_open(Duration::ZERO));
        let s = match s {
            Ok(s) => s,
            Err(e) => panic!(
                "open {attempt} with the verification after open failed where the eager \
                 open ignores the checkpoint: {e:?}"
            ),
        };
        wait_for_verdict(&s);
    }
    assert_eq!(full_scan_answers(image.path()), truth);
}

/// Two segments of `x` (tenant 0): `pad` small events then 120 of about 1 KB, 64 KiB
/// segments.
fn two_segment_store(pad: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .index_stride(4)
        .segment_size_bytes(64 * 1024);
    let s = LogStore::open_with(dir.path(), options).unwrap();
    for i in 0..pad {
        s.append_blocking(&id("x"), &tenant(0), step_event(i))
            .unwrap();
    }
    for i in 0..120 {
        s.append_blocking(&id("x"), &tenant(0), crash_image::kilobyte_event(i))
            .unwrap();
    }
    s.close().unwrap();
    assert!(segment_path(dir.path(), 2).exists(), "a second segment");
    dir
}

/// FAILED before `backup_to` waited for the verdict: it copied, and reported as
/// complete, what an unverified checkpoint said segment 1 holds.
#[test]
fn backup_before_the_verdict_copies_what_the_unverified_checkpoint_says() {
    // The last entry point in segment 1 is at a sequence 1 + 4k; the records after it
    // are referenced by nothing the checkpoint holds. Pad until there are some.
    let (dir, end) = (0..4)
        .find_map(|pad| {
            let dir = two_segment_store(pad);
            let segment = fs::read(segment_path(dir.path(), 1)).unwrap();
            // The sequences of x's event records (kind 1) in segment 1, and offsets.
            let events: Vec<(u64, usize)> = record_starts(&segment)
                .into_iter()
                .filter(|&at| segment[at + 48] == 1)
                .map(|at| {
                    let seq = u64::from_le_bytes(segment[at + 16..at + 24].try_into().unwrap());
                    (seq, at)
                })
                .collect();
            let last = events.last().unwrap().0;
            let last_entry = (last - 1) / 4 * 4 + 1;
            let end = events.iter().find(|e| e.0 == last_entry + 1)?.1;
            Some((dir, end))
        })
        .unwrap();
    set_covered_end(dir.path(), 1, end);

    let s = LogStore::open_with(dir.path(), after_open(Duration::from_secs(2))).unwrap();
    let report = s.recovery_report();
    assert!(report.checkpoint_verification_deferred, "{report:?}");
    let dest = tempfile::tempdir().unwrap();
    let backup = s.backup_to(dest.path().join("copy"));
    if backup.is_err() {
        return; // Refused: what the fix should do (wait for the verdict, or refuse).
    }
    let copy = LogStore::open_with(dest.path().join("copy"), Options::default().index_stride(4));
    let served = copy.and_then(|c| c.load_events_blocking(&id("x")).map(|e| e.len()));
    assert!(
        matches!(served, Ok(n) if n >= 120),
        "backup_to reported {backup:?} before the verdict, but the copy serves {served:?} \
         of x's events (120 and more)"
    );
}

/// FAILS: the verifier verifies the file on disk, not the index open trusted.
#[test]
fn a_checkpoint_replaced_during_the_window_is_verified_instead_of_the_trusted_one() {
    let dir = store();
    let truth = full_scan_answers(dir.path());
    let good = fs::read(dir.path().join(CHECKPOINT)).unwrap();
    swap_ids(dir.path(), "run-a", "run-c");
    let s = LogStore::open_with(dir.path(), after_open(Duration::from_millis(500))).unwrap();
    assert!(s.stats().checkpoint_unverified);
    // Someone (a restore, a sync tool) puts the good file back during the window.
    fs::write(dir.path().join(CHECKPOINT), &good).unwrap();
    wait_for_verdict(&s);
    let a = s.load_events_blocking(&id("run-a"));
    let c = s.load_events_blocking(&id("run-c"));
    let full = LogStore::open_with(
        crash_image::copy(dir.path()).path(),
        Options::default().index_stride(4).index_checkpoint(false),
    )
    .unwrap();
    let want = full.load_events_blocking(&id("run-a")).unwrap();
    drop(full);
    let ok = match &a {
        Ok(events) => *events == want,
        Err(_) => true,
    };
    assert!(
        ok,
        "after a 'good' verdict, run-a serves {} events (run-c's?), a full scan {}; \
         run-c: {:?}",
        a.as_ref().map(Vec::len).unwrap_or(0),
        want.len(),
        c.map(|e| e.len())
    );
    drop(s);
    assert_eq!(full_scan_answers(dir.path()), truth);
}

// ---------------------------------------------------------------------------------
// Regression tests of claims that held.
// ---------------------------------------------------------------------------------

/// The async API, subscriptions, forks, prune and erasure on a refuted checkpoint:
/// nothing written, nothing of another execution served.
#[test]
fn async_and_follow_paths_wait_and_are_refused_on_a_refuted_checkpoint() {
    let dir = store();
    let truth = full_scan_answers(dir.path());
    swap_ids(dir.path(), "run-a", "run-c");
    let s =
        Arc::new(LogStore::open_with(dir.path(), after_open(Duration::from_millis(400))).unwrap());
    assert!(s.stats().checkpoint_unverified);
    // Reads before the verdict: the owner check refuses the swapped ids.
    let read = futures::executor::block_on(EventStore::load_events(&*s, &id("run-a")));
    assert!(read.is_err(), "{read:?}");
    let read = futures::executor::block_on(EventStore::load_events_after(&*s, &id("run-c"), 1));
    assert!(read.is_err(), "{read:?}");
    // A fork's read waits for the verdict: it is refused after it.
    let fork = s.load_events_blocking(&id("fork-a"));
    assert!(matches!(fork, Err(Error::Poisoned { .. })), "{fork:?}");
    let before = fs::read(segment_path(dir.path(), 1)).unwrap();
    let imported = vec![StoredEvent {
        sequence: 1,
        execution_id: id("imported"),
        tenant_id: tenant(0),
        event: step_event(1),
        timestamp: chrono::Utc::now(),
    }];
    let results = [
        format!(
            "{:?}",
            futures::executor::block_on(EventStore::append(
                &*s,
                &id("run-a"),
                &tenant(0),
                step_event(99)
            ))
        ),
        format!(
            "{:?}",
            futures::executor::block_on(GuardedEventStore::append_with(
                &*s,
                &id("run-a"),
                &tenant(0),
                vec![step_event(9)],
                keyed("k")
            ))
        ),
        format!(
            "{:?}",
            futures::executor::block_on(Lifecycle::fork_execution(
                &*s,
                &id("run-b"),
                2,
                &id("fork-b")
            ))
        ),
        format!(
            "{:?}",
            futures::executor::block_on(Lifecycle::delete_execution(&*s, &id("run-b")))
        ),
        format!(
            "{:?}",
            futures::executor::block_on(Lifecycle::prune(&*s, Duration::ZERO))
        ),
        format!("{:?}", s.prune_blocking(Duration::ZERO)),
        format!("{:?}", s.compact_now()),
        format!(
            "{:?}",
            s.subscribe(SubscriptionFilter::All, StartFrom::Beginning)
                .map(|_| ())
        ),
        format!("{:?}", s.import_blocking(imported)),
    ];
    for r in &results {
        assert!(r.contains("Poisoned") || r.contains("poisoned"), "{r}");
    }
    assert_eq!(fs::read(segment_path(dir.path(), 1)).unwrap(), before);
    assert!(!dir.path().join(CHECKPOINT).exists());
    s.close().unwrap();
    drop(s);
    assert_eq!(full_scan_answers(dir.path()), truth);
}

/// Covered keys, deleted executions and forks after a good verdict: every answer is a
/// full scan's, through the async API too.
#[test]
fn keyed_retries_and_deleted_executions_answer_as_a_full_scan() {
    fn ops(s: &LogStore) -> Vec<String> {
        let block = futures::executor::block_on;
        vec![
            format!(
                "{:?}",
                s.append_with_blocking(&id("run-a"), &tenant(0), vec![step_event(9)], keyed("k"))
            ),
            format!(
                "{:?}",
                block(GuardedEventStore::append_with(
                    s,
                    &id("run-a"),
                    &tenant(0),
                    vec![step_event(9)],
                    keyed("k")
                ))
                .map_err(|e| e.to_string())
            ),
            format!(
                "{:?}",
                s.append_with_blocking(&id("run-a"), &tenant(0), vec![step_event(8)], keyed("k"))
            ),
            format!(
                "{:?}",
                s.append_with_blocking(&id("gone"), &tenant(1), vec![step_event(2)], keyed("g"))
            ),
            format!(
                "{:?}",
                s.append_blocking(&id("gone"), &tenant(1), step_event(3))
            ),
            format!("{:?}", s.get_latest_sequence_blocking(&id("gone"))),
            format!("{:?}", s.get_latest_sequence_blocking(&id("fork-a"))),
            format!("{:?}", s.fork_point_blocking(&id("fork-a"))),
            format!("{:?}", s.delete_execution_blocking(&id("gone"))),
            format!("{:?}", s.stats().idempotency_keys),
            answers(s),
        ]
    }
    let dir = store();
    let copy = crash_image::copy(dir.path());
    let full = LogStore::open_with(
        copy.path(),
        Options::default().index_stride(4).index_checkpoint(false),
    )
    .unwrap();
    let want = ops(&full);
    drop(full);
    let s = LogStore::open_with(dir.path(), after_open(Duration::from_millis(200))).unwrap();
    assert!(s.stats().checkpoint_unverified);
    // The first keyed retry waits for the verdict.
    assert_eq!(ops(&s), want);
    assert!(!s.stats().checkpoint_unverified);
}

/// Close (or drop) racing the verifier and many threads: no hang, no panic, every
/// call Ok or refused, and the next opens answer as a full scan.
#[test]
fn close_and_drop_racing_the_verifier_and_many_threads() {
    for (round, delay_ms) in [0u64, 1, 5, 20, 60].into_iter().enumerate() {
        let dir = store();
        let s = Arc::new(
            LogStore::open_with(dir.path(), after_open(Duration::from_millis(delay_ms))).unwrap(),
        );
        let (tx, rx) = mpsc::channel();
        let mut threads = Vec::new();
        for t in 0..6u64 {
            let (s, tx) = (Arc::clone(&s), tx.clone());
            threads.push(std::thread::spawn(move || {
                for i in 0..20u64 {
                    let r = match (t + i) % 6 {
                        0 => s
                            .append_blocking(&id("run-b"), &tenant(1), step_event(100 + i))
                            .map(|_| ()),
                        1 => s.load_events_blocking(&id("run-a")).map(|_| ()),
                        2 => s
                            .append_with_blocking(
                                &id("run-a"),
                                &tenant(0),
                                vec![step_event(9)],
                                keyed("k"),
                            )
                            .map(|o| assert!(o.replayed, "{o:?}")),
                        3 => s.load_events_blocking(&id("fork-a")).map(|_| ()),
                        4 => s
                            .subscribe(
                                SubscriptionFilter::Execution(id("run-c")),
                                StartFrom::Beginning,
                            )
                            .map(|_| ()),
                        _ => s
                            .append_blocking(&id(&format!("new-{t}")), &tenant(0), step_event(i))
                            .map(|_| ()),
                    };
                    match r {
                        Ok(()) | Err(Error::Closed) => {}
                        Err(e) => panic!("round {round}: {e:?}"),
                    }
                }
                tx.send(()).unwrap();
            }));
        }
        drop(tx);
        std::thread::sleep(Duration::from_millis(delay_ms / 2));
        if round % 2 == 0 {
            s.close().unwrap();
        }
        drop(s);
        for _ in 0..6 {
            rx.recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("round {round}: a thread hangs"));
        }
        for t in threads {
            t.join().unwrap();
        }
        let truth = full_scan_answers(dir.path());
        let s = LogStore::open_with(dir.path(), after_open(Duration::ZERO)).unwrap();
        wait_for_verdict(&s);
        assert_eq!(answers(&s), truth, "round {round}");
    }
}

/// A crash image whose running checkpoint covers only part of the log, with a
/// deletion and keyed appends after it: the same answers as a full scan.
#[test]
fn a_crash_image_with_a_running_checkpoint_answers_as_a_full_scan() {
    let dir = store();
    let options = Options::default()
        .index_stride(4)
        .index_checkpoint_interval_bytes(Some(4096));
    let live = LogStore::open_with(dir.path(), options).unwrap();
    for i in 0..40 {
        live.append_blocking(&id("run-b"), &tenant(1), crash_image::kilobyte_event(i))
            .unwrap();
    }
    let started = Instant::now();
    while live.stats().index_checkpoints == 0 {
        assert!(started.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(live.delete_execution_blocking(&id("run-c")).unwrap());
    live.append_with_blocking(&id("run-b"), &tenant(1), vec![step_event(1)], keyed("late"))
        .unwrap();
    let image = crash_image::copy(dir.path());
    live.close().unwrap();
    let truth = full_scan_answers(image.path());
    let s = LogStore::open_with(image.path(), after_open(Duration::from_millis(200))).unwrap();
    assert!(s.recovery_report().checkpoint_verification_deferred);
    assert_eq!(answers(&s), truth, "before the verdict");
    let retry = s
        .append_with_blocking(&id("run-b"), &tenant(1), vec![step_event(1)], keyed("late"))
        .unwrap();
    assert!(retry.replayed, "{retry:?}");
    let retry = s
        .append_with_blocking(&id("run-a"), &tenant(0), vec![step_event(9)], keyed("k"))
        .unwrap();
    assert!(retry.replayed, "{retry:?}");
    assert_eq!(answers(&s), truth, "after the verdict");
    s.close().unwrap();
}
