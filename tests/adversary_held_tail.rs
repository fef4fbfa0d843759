//! Adversarial review of the tail held for the decode (`Rebuild::held`, `HeldTail`,
//! `lazy_index::apply_tail`, `LazyIndex::find_pending`): with
//! `Options::verify_checkpoint_after_open`, an open behind a layout 3 checkpoint
//! after a crash scans the records after the checkpoint into nothing, returns, and the
//! `execlog-verify` thread decodes the index and scans that tail again into it before
//! it lets go of the store lock.
//!
//! Findings, both fixed (the tests under "Findings" failed on the reviewed code,
//! ab0178e):
//! - `a_tail_record_gone_before_the_decode_is_not_silently_dropped`: the decode's
//!   second scan of the tail (`Rebuild::replay`) stops at the first zero header
//!   (`Step::End`) without checking that it reached the end open scanned to. A tail
//!   record that reads as zeros by the time of the decode is left out of the index
//!   with no refutation; the session then serves and appends as if it never existed
//!   (its sequence handed out again, the log made unopenable). Fixed: a replay that
//!   ends before the end of its range is an error, and refutes the checkpoint.
//! - `a_stale_checkpoint_after_an_erasure_crash_does_not_poison_the_session`: a crash
//!   between an erasure pass and the checkpoint it asks for leaves a checkpoint whose
//!   digests no longer match a rewritten segment. An ordinary open ignores it and
//!   serves everything; the lazy open (which now also takes a crash's tail) trusts it,
//!   and the verification refutes it: the whole session is poisoned. Fixed: the pass
//!   removes the checkpoint before it rewrites a segment (`erasure::forget_checkpoint`).
//!
//! The others are tests of claims that held.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::segment_files::segment_path;
use common::verify_after_open::{after_open, wait_for_verdict};
use common::{crash_image, step_event};
use execlog::*;

const CHECKPOINT: &str = "checkpoint.idx";

fn tenant(n: u32) -> TenantId {
    TenantId::from(format!("tenant-{n}"))
}

fn id(s: &str) -> ExecutionId {
    ExecutionId::from(s)
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut names: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    names.sort();
    names
}

/// The five executions of `common::verify_after_open::five_executions`.
fn store() -> tempfile::TempDir {
    common::verify_after_open::five_executions()
}

/// A crash image of a lazy session on `store()` that appended `more`.
fn crashed(more: impl FnOnce(&LogStore)) -> tempfile::TempDir {
    let dir = store();
    let s = LogStore::open_with(dir.path(), after_open(Duration::ZERO)).unwrap();
    more(&s);
    let image = crash_image::copy(dir.path());
    drop(s);
    image
}

/// Each execution's events and latest sequence, as text.
fn reads(s: &LogStore, ids: &[&str]) -> Vec<[String; 2]> {
    ids.iter()
        .map(|name| {
            let events = s
                .load_events_blocking(&id(name))
                .map(|e| serde_json::to_string(&e).unwrap());
            let latest = s.get_latest_sequence_blocking(&id(name));
            [format!("{events:?}"), format!("{latest:?}")]
        })
        .collect()
}

/// Everything the store answers about `ids` and tenants 0 and 1.
fn answers_of(s: &LogStore, ids: &[String]) -> String {
    let mut out = String::new();
    for t in 0..2 {
        let listed = s.list_executions_blocking(&tenant(t), 100_000, 0);
        out += &format!("{t}: {listed:?}\n");
    }
    for name in ids {
        let events = s.load_events_blocking(&id(name));
        let latest = s.get_latest_sequence_blocking(&id(name));
        let fork = s.fork_point_blocking(&id(name));
        out += &format!(
            "{name}: {:?} {latest:?} {fork:?}\n",
            events.map(|e| serde_json::to_string(&e).unwrap())
        );
    }
    out
}

const ALL: [&str; 7] = [
    "run-a", "run-b", "run-c", "gone", "fork-a", "run-d", "fork-b",
];

fn all() -> Vec<String> {
    ALL.iter().map(|s| s.to_string()).collect()
}

/// What a full scan (no checkpoint) of a copy of `dir` answers about `ids`.
fn full_scan(dir: &Path, ids: &[String]) -> String {
    let image = crash_image::copy(dir);
    let options = Options::default().index_stride(4).index_checkpoint(false);
    let s = LogStore::open_with(image.path(), options).unwrap();
    answers_of(&s, ids)
}

/// The records of a segment's bytes from `from`: (offset, length with padding).
fn records_from(bytes: &[u8], from: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = from;
    while at + 56 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        let size = (56 + len).div_ceil(8) * 8;
        out.push((at, size));
        at += size;
    }
    out
}

/// Where the checkpoint of `dir` says segment 1's records end (its only digest).
fn covered_end(dir: &Path) -> usize {
    let bytes = fs::read(dir.join(CHECKPOINT)).unwrap();
    u64::from_le_bytes(bytes[40..48].try_into().unwrap()) as usize
}

/// Recomputes the CRC of the record at `at`.
fn reseal_record(bytes: &mut [u8], at: usize) {
    let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
    let crc = crc32fast::hash(&bytes[at + 4..at + 56 + len]);
    bytes[at..at + 4].copy_from_slice(&crc.to_le_bytes());
}

// ---------------------------------------------------------------------------------
// Findings
// ---------------------------------------------------------------------------------

/// FINDING, fixed. Open scans the tail (run-c's fourth event, then run-d's first), holds it,
/// and returns. Before the decode, the last tail record reads as zeros (whatever made
/// it so: a file changed under the store, a bad page): the decode's second scan stops
/// there (`Step::End`), returns Ok, and the index lacks run-d, which open counted and
/// whose bytes open found. Nothing is refuted: run-d reads as unknown, and a new
/// append to it declares it again at the position the commit thread continues from.
/// A scan that ends before the end open found must refute the checkpoint (as a CRC
/// failure in the tail does).
#[test]
fn a_tail_record_gone_before_the_decode_is_not_silently_dropped() {
    let image = crashed(|s| {
        s.append_blocking(&id("run-c"), &tenant(0), step_event(3))
            .unwrap();
        s.append_blocking(&id("run-d"), &tenant(1), step_event(0))
            .unwrap();
    });
    let seg = segment_path(image.path(), 1);
    let bytes = fs::read(&seg).unwrap();
    let tail = records_from(&bytes, covered_end(image.path()));
    assert_eq!(tail.len(), 2, "{tail:?}");
    let options = after_open(Duration::ZERO).checkpoint_decode_hold(Duration::from_millis(500));
    let s = LogStore::open_with(image.path(), options).unwrap();
    assert!(s.recovery_report().index_decoded_after_open);
    assert_eq!(s.recovery_report().executions, 6);
    // Zero run-d's record in the file (the map open made sees it).
    let (at, size) = tail[1];
    let f = fs::OpenOptions::new().write(true).open(&seg).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0u8; size], at as u64).unwrap();
    f.sync_all().unwrap();
    let d = s.get_latest_sequence_blocking(&id("run-d"));
    let refuted = s.stats().checkpoint_refuted;
    assert!(
        matches!(d, Err(Error::Poisoned { .. }) | Ok(Some(1))),
        "open scanned run-d's first event, the decode dropped it without a word: \
         latest {d:?}, refuted {refuted:?}"
    );
}

/// FINDING, fixed (it predates the held tail: the deferred tier trusted the same file).
/// An erasure pass rewrote a sealed segment and asked for a checkpoint; a crash before
/// it was written left the checkpoint from before the pass beside the rewritten
/// segment (the review put that file back into the image). An ordinary open found the
/// digests stale, ignored it and served everything; the lazy open trusted it, the
/// verification refuted it, and the whole session was poisoned. The pass now removes
/// `checkpoint.idx` (durably) before its first rewrite, so that state no longer
/// arises: the image, taken right after the pass, holds no checkpoint or a new one.
#[test]
fn a_stale_checkpoint_after_an_erasure_crash_does_not_poison_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let options = || {
        after_open(Duration::ZERO)
            .segment_size_bytes(64 * 1024)
            .index_checkpoint_interval_bytes(Some(4096))
            .erasure_interval(None)
    };
    let s = LogStore::open_with(dir.path(), options()).unwrap();
    for n in 0..600u64 {
        let name = if n % 2 == 0 { "dead" } else { "live" };
        s.append_blocking(&id(name), &tenant(0), step_event(n))
            .unwrap();
    }
    assert!(s.delete_execution_blocking(&id("dead")).unwrap());
    for n in 600..700u64 {
        s.append_blocking(&id("live"), &tenant(0), step_event(n))
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(dir.path().join(CHECKPOINT).exists());
    let report = s.compact_now().unwrap();
    assert!(report.segments_rewritten > 0, "{report:?}");
    let image = crash_image::copy(dir.path());
    drop(s);
    let ids = vec!["live".to_string(), "dead".to_string()];
    let truth = full_scan(image.path(), &ids);
    let ordinary = {
        let copy = crash_image::copy(image.path());
        let s = LogStore::open_with(copy.path(), Options::default().index_stride(4)).unwrap();
        assert_eq!(s.recovery_report().checkpoint_ignored, None);
        answers_of(&s, &ids)
    };
    assert_eq!(ordinary, truth);
    let s = LogStore::open_with(image.path(), options()).unwrap();
    let report = s.recovery_report().clone();
    wait_for_verdict(&s);
    let refuted = s.stats().checkpoint_refuted;
    assert!(
        refuted.is_none() && answers_of(&s, &ids) == truth,
        "lazy {} deferred {}; refuted: {refuted:?}",
        report.index_decoded_after_open,
        report.checkpoint_verification_deferred,
    );
}

// ---------------------------------------------------------------------------------
// Claims that held
// ---------------------------------------------------------------------------------

/// A forged tail record, CRC recomputed: run-d's declaration renamed to run-a (same
/// length), a second declaration of an execution the checkpoint holds. A full scan
/// refuses to open. The lazy open holds it; run-a may be read from the directory
/// until the decode (the checkpoint's own run-a, the truth of the covered records),
/// the decode refutes the checkpoint, and the next open refuses as a full scan does.
#[test]
fn a_forged_tail_redeclaring_a_checkpoint_execution_is_refuted() {
    let image = crashed(|s| {
        s.append_blocking(&id("run-d"), &tenant(1), step_event(0))
            .unwrap();
    });
    let truth_a = {
        let s =
            LogStore::open_with(crash_image::copy(image.path()).path(), after_open_full()).unwrap();
        reads(&s, &["run-a"])
    };
    let seg = segment_path(image.path(), 1);
    let mut bytes = fs::read(&seg).unwrap();
    let (at, size) = records_from(&bytes, covered_end(image.path()))[0];
    let body = &mut bytes[at + 56..at + size];
    let p = body.windows(5).position(|w| w == b"run-d").unwrap();
    body[p..p + 5].copy_from_slice(b"run-a");
    reseal_record(&mut bytes, at);
    fs::write(&seg, &bytes).unwrap();
    let full = LogStore::open_with(
        crash_image::copy(image.path()).path(),
        Options::default().index_checkpoint(false),
    );
    assert!(
        matches!(full, Err(Error::Corrupt { .. })),
        "{:?}",
        full.err()
    );
    let options = after_open(Duration::ZERO).checkpoint_decode_hold(Duration::from_millis(300));
    let s = LogStore::open_with(image.path(), options).unwrap();
    assert!(s.recovery_report().index_decoded_after_open);
    let before = reads(&s, &["run-a"]);
    assert!(before == truth_a || format!("{before:?}").contains("Poisoned"));
    let listed = s.list_executions_blocking(&tenant(0), 10, 0);
    assert!(matches!(listed, Err(Error::Poisoned { .. })), "{listed:?}");
    let why = s.stats().checkpoint_refuted.unwrap_or_default();
    assert!(why.contains("the tail after it does not apply"), "{why}");
    drop(s);
    assert!(!image.path().join(CHECKPOINT).exists());
    let again = LogStore::open_with(image.path(), after_open(Duration::ZERO));
    assert!(
        matches!(again, Err(Error::Corrupt { .. })),
        "{:?}",
        again.err()
    );
}

fn after_open_full() -> Options {
    Options::default().index_stride(4)
}

/// A tail record appending to an execution number beyond the index, and one
/// continuing `gone` (deleted in the checkpoint): both forged with valid CRCs from
/// run-c's fourth event. Open holds them; run-c and gone are never served from the
/// directory (touched), and the decode refutes the checkpoint.
#[test]
fn forged_tail_records_of_unknown_or_deleted_executions_are_refuted() {
    for (target, what) in [(99u64, "unknown"), (3, "deleted")] {
        let image = crashed(|s| {
            s.append_blocking(&id("run-c"), &tenant(0), step_event(3))
                .unwrap();
        });
        let seg = segment_path(image.path(), 1);
        let mut bytes = fs::read(&seg).unwrap();
        let (at, _) = records_from(&bytes, covered_end(image.path()))[0];
        bytes[at + 8..at + 16].copy_from_slice(&target.to_le_bytes());
        reseal_record(&mut bytes, at);
        fs::write(&seg, &bytes).unwrap();
        let options = after_open(Duration::ZERO).checkpoint_decode_hold(Duration::from_millis(300));
        let s = LogStore::open_with(image.path(), options).unwrap();
        assert!(s.recovery_report().index_decoded_after_open, "{what}");
        let gone = s.get_latest_sequence_blocking(&id("gone"));
        assert!(
            matches!(gone, Ok(None) | Err(Error::Poisoned { .. })),
            "{what}: {gone:?}"
        );
        let listed = s.list_executions_blocking(&tenant(0), 10, 0);
        assert!(
            matches!(listed, Err(Error::Poisoned { .. })),
            "{what}: {listed:?}"
        );
    }
}

/// A tail that seals the checkpoint's last segment and rolls over several new 64 KiB
/// segments after a running checkpoint, then a crash: open still leaves the index to
/// decode, executions the tail does not append to are served from the directory
/// while the decode is held, and everything answers as a full scan, before and after.
#[test]
fn a_tail_rolling_over_new_segments_answers_as_a_full_scan() {
    let dir = tempfile::tempdir().unwrap();
    let options = || {
        after_open(Duration::ZERO)
            .segment_size_bytes(64 * 1024)
            .index_checkpoint_interval_bytes(Some(4096))
    };
    let s = LogStore::open_with(dir.path(), options()).unwrap();
    let mut ids = Vec::new();
    for n in 0..40u64 {
        let name = format!("early-{n}");
        for i in 0..3 {
            s.append_blocking(&id(&name), &tenant(0), step_event(i))
                .unwrap();
        }
        ids.push(name);
    }
    s.close().unwrap();
    let s =
        LogStore::open_with(dir.path(), options().index_checkpoint_interval_bytes(None)).unwrap();
    wait_for_verdict(&s);
    let segments_before = segments(dir.path()).len();
    // The tail: early-0..9 continued, late-* declared, one batch, several segments.
    for n in 0..1_200u64 {
        let name = if n % 4 == 0 {
            format!("early-{}", n % 10)
        } else {
            format!("late-{}", n % 30)
        };
        let t = u32::from(name.starts_with("late"));
        s.append_batch_blocking(&id(&name), &tenant(t), vec![step_event(n), step_event(n)])
            .unwrap();
        if n < 30 {
            ids.push(format!("late-{n}"));
        }
    }
    let image = crash_image::copy(dir.path());
    drop(s);
    assert!(segments(image.path()).len() > segments_before + 2);
    let truth = full_scan(image.path(), &ids);
    let untouched: Vec<&str> = ids[10..40].iter().map(String::as_str).collect();
    let untouched_truth = {
        let copy = crash_image::copy(image.path());
        let s = LogStore::open_with(copy.path(), after_open_full()).unwrap();
        reads(&s, &untouched)
    };
    let held = options().checkpoint_decode_hold(Duration::from_secs(600));
    let s = LogStore::open_with(image.path(), held).unwrap();
    let report = s.recovery_report().clone();
    assert!(report.index_decoded_after_open, "{report:?}");
    assert!(report.truncated_at.is_none(), "{report:?}");
    assert_eq!(reads(&s, &untouched), untouched_truth);
    assert!(!s.index_decoded());
    s.close().unwrap();
    let hold = options().checkpoint_decode_hold(Duration::from_millis(200));
    let s = LogStore::open_with(image.path(), hold).unwrap();
    assert!(s.recovery_report().index_decoded_after_open);
    assert_eq!(answers_of(&s, &ids), truth);
    wait_for_verdict(&s);
    assert_eq!(s.stats().checkpoint_refuted, None);
    assert_eq!(answers_of(&s, &ids), truth);
}

/// Eight sessions, each opened lazily on the crash image of the one before, each
/// appending (old and new executions, keyed appends, and in some a deletion or a
/// fork) with running checkpoints every 4 KiB, then crashing. Every open answers as
/// a full scan of the same image, while the decode is held and after the verdict, and
/// keyed retries of the previous session are replayed.
#[test]
fn crash_cycles_of_lazy_sessions_answer_as_a_full_scan() {
    let options = || {
        after_open(Duration::ZERO)
            .segment_size_bytes(64 * 1024)
            .index_checkpoint_interval_bytes(Some(4096))
    };
    let mut dir = store();
    let mut ids = all();
    let mut lazy = 0;
    for cycle in 0..8u64 {
        let truth = full_scan(dir.path(), &ids);
        let hold = options().checkpoint_decode_hold(Duration::from_millis(100));
        let s = LogStore::open_with(dir.path(), hold).unwrap();
        lazy += usize::from(s.recovery_report().index_decoded_after_open);
        assert_eq!(answers_of(&s, &ids), truth, "cycle {cycle}");
        if cycle > 0 {
            let key = AppendOptions {
                idempotency_key: Some(format!("k{}", cycle - 1)),
                ..AppendOptions::default()
            };
            let retry = s
                .append_with_blocking(&id("run-b"), &tenant(1), vec![step_event(0)], key)
                .unwrap();
            assert!(retry.replayed, "cycle {cycle}: {retry:?}");
        }
        wait_for_verdict(&s);
        assert_eq!(s.stats().checkpoint_refuted, None, "cycle {cycle}");
        for n in 0..40u64 {
            let name = match n % 3 {
                0 => "run-c".to_string(),
                1 => format!("c{cycle}-{}", n % 5),
                _ => "run-d".to_string(),
            };
            let t = if name.starts_with("run-c") { 0 } else { 1 };
            s.append_blocking(&id(&name), &tenant(t), step_event(n))
                .unwrap();
        }
        for n in 0..5 {
            let name = format!("c{cycle}-{n}");
            if !ids.contains(&name) {
                ids.push(name);
            }
        }
        let key = AppendOptions {
            idempotency_key: Some(format!("k{cycle}")),
            ..AppendOptions::default()
        };
        s.append_with_blocking(&id("run-b"), &tenant(1), vec![step_event(0)], key)
            .unwrap();
        match cycle % 4 {
            1 => {
                assert!(
                    s.delete_execution_blocking(&id(&format!("c{cycle}-0")))
                        .unwrap()
                );
            }
            2 => {
                let name = format!("f{cycle}");
                s.fork_execution_blocking(&id("run-d"), 3, &id(&name))
                    .unwrap();
                ids.push(name);
            }
            _ => {}
        }
        let image = crash_image::copy(dir.path());
        drop(s);
        dir = image;
    }
    assert!(lazy >= 6, "only {lazy} of 8 opens left the index to decode");
    let truth = full_scan(dir.path(), &ids);
    let s = LogStore::open_with(dir.path(), options()).unwrap();
    assert_eq!(answers_of(&s, &ids), truth);
}

/// Readers of executions the tail leaves alone and of those it appends to, racing
/// the held decode, its end and the verdict, with an append waiting for the lock:
/// every answer is the truth (the appended-to ones may also be their later truth).
#[test]
fn readers_racing_the_decode_of_a_tail_read_right() {
    let image = crashed(|s| {
        s.append_blocking(&id("run-c"), &tenant(0), step_event(3))
            .unwrap();
        s.append_blocking(&id("run-d"), &tenant(1), step_event(0))
            .unwrap();
    });
    let names = ["run-a", "run-b", "run-c", "run-d", "fork-a", "gone"];
    let truth = {
        let copy = crash_image::copy(image.path());
        let s = LogStore::open_with(copy.path(), after_open_full()).unwrap();
        reads(&s, &names)
    };
    for round in 0..4 {
        let copy = crash_image::copy(image.path());
        let hold = Duration::from_millis(20 * round);
        let options = after_open(Duration::ZERO).checkpoint_decode_hold(hold);
        let s = Arc::new(LogStore::open_with(copy.path(), options).unwrap());
        assert!(s.recovery_report().index_decoded_after_open);
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let s = Arc::clone(&s);
                let truth = truth.clone();
                std::thread::spawn(move || {
                    let until = Instant::now() + Duration::from_millis(150);
                    while Instant::now() < until {
                        for (i, name) in names.iter().enumerate() {
                            let got = reads(&s, &[name]);
                            if *name == "run-a" {
                                // The writer below appends to run-a: only its
                                // earlier truth is checked, as a prefix.
                                let events = &got[0][0];
                                let want = truth[i][0].trim_end_matches("]\")");
                                assert!(events.starts_with(want), "{name}: {events}");
                            } else {
                                assert_eq!(got[0], truth[i], "{name}");
                            }
                        }
                    }
                })
            })
            .collect();
        let seq = s
            .append_blocking(&id("run-a"), &tenant(0), step_event(10))
            .unwrap();
        assert_eq!(seq, 11);
        for t in threads {
            t.join().unwrap();
        }
        wait_for_verdict(&s);
        assert_eq!(s.stats().checkpoint_refuted, None);
    }
}

/// A tail of 200,000 records (single-event and batched appends to 2,000 new
/// executions and to run-a): open holds it, the decode applies it, and the store
/// answers as a full scan; run-b (untouched) is served before the decode.
#[test]
fn a_huge_tail_is_held_and_applied() {
    let image = crashed(|s| {
        for n in 0..2_000u64 {
            let name = format!("big-{n}");
            let events: Vec<_> = (0..99).map(step_event).collect();
            s.append_batch_blocking(&id(&name), &tenant(1), events)
                .unwrap();
            s.append_blocking(&id("run-a"), &tenant(0), step_event(n))
                .unwrap();
        }
    });
    let mut ids = all();
    ids.extend((0..2_000).step_by(97).map(|n| format!("big-{n}")));
    let truth = full_scan(image.path(), &ids);
    let b_truth = {
        let copy = crash_image::copy(image.path());
        let s = LogStore::open_with(copy.path(), after_open_full()).unwrap();
        reads(&s, &["run-b"])
    };
    let options = after_open(Duration::ZERO).checkpoint_decode_hold(Duration::from_millis(300));
    let started = Instant::now();
    let s = LogStore::open_with(image.path(), options).unwrap();
    let opened = started.elapsed();
    let report = s.recovery_report().clone();
    assert!(report.index_decoded_after_open, "{report:?}");
    assert_eq!(report.records, 200_000, "{report:?}");
    assert_eq!(report.executions, 5 + 2_000, "{report:?}");
    assert_eq!(reads(&s, &["run-b"]), b_truth);
    assert!(!s.index_decoded());
    assert_eq!(answers_of(&s, &ids), truth, "opened in {opened:?}");
    assert_eq!(
        s.get_latest_sequence_blocking(&id("run-a")).unwrap(),
        Some(2_010)
    );
    wait_for_verdict(&s);
    assert_eq!(s.stats().checkpoint_refuted, None);
}

/// Close while the decode of a tail is held: prompt, the checkpoint kept as it was,
/// and the next lazy open answers as a full scan; the one after a session that
/// appended has a checkpoint covering everything.
#[test]
fn close_during_the_decode_of_a_tail_keeps_a_usable_checkpoint() {
    let image = crashed(|s| {
        s.append_blocking(&id("run-c"), &tenant(0), step_event(3))
            .unwrap();
        s.append_blocking(&id("run-d"), &tenant(1), step_event(0))
            .unwrap();
        assert!(s.delete_execution_blocking(&id("run-b")).unwrap());
    });
    let truth = full_scan(image.path(), &all());
    let checkpoint = fs::read(image.path().join(CHECKPOINT)).unwrap();
    let options = after_open(Duration::ZERO).checkpoint_decode_hold(Duration::from_secs(600));
    let s = LogStore::open_with(image.path(), options).unwrap();
    let started = Instant::now();
    s.close().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(fs::read(image.path().join(CHECKPOINT)).unwrap(), checkpoint);
    let s = LogStore::open_with(image.path(), after_open(Duration::ZERO)).unwrap();
    assert!(s.recovery_report().index_decoded_after_open);
    assert_eq!(answers_of(&s, &all()), truth);
    s.append_blocking(&id("run-d"), &tenant(1), step_event(1))
        .unwrap();
    wait_for_verdict(&s);
    s.close().unwrap();
    let s = LogStore::open_with(image.path(), after_open(Duration::ZERO)).unwrap();
    let report = s.recovery_report().clone();
    assert!(report.index_decoded_after_open, "{report:?}");
    assert_eq!(report.records, 0, "{report:?}");
    assert_eq!(
        s.get_latest_sequence_blocking(&id("run-d")).unwrap(),
        Some(2)
    );
}

/// A blank newest segment after a tail that rolled (a crash while it was created),
/// and a torn last group after a tail: open declines the lazy pass, sets aside or
/// cuts as an ordinary open, and answers as a full scan.
#[test]
fn a_tail_then_a_torn_group_or_a_blank_segment_opens_as_a_full_scan() {
    for blank in [false, true] {
        let image = crashed(|s| {
            s.append_blocking(&id("run-c"), &tenant(0), step_event(3))
                .unwrap();
            s.append_blocking(&id("run-d"), &tenant(1), step_event(0))
                .unwrap();
        });
        let last = segments(image.path()).pop().unwrap();
        if blank {
            let next = segment_path(image.path(), 2);
            fs::write(&next, vec![0u8; 4096]).unwrap();
        } else {
            let mut bytes = fs::read(&last).unwrap();
            let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
            // Half a record of a group whose sync never returned.
            let at = end.div_ceil(8) * 8;
            bytes[at + 4] = 200;
            bytes[at + 60] = 7;
            fs::write(&last, &bytes).unwrap();
        }
        let truth = {
            let copy = crash_image::copy(image.path());
            let options = Options::default().index_stride(4).index_checkpoint(false);
            let s = LogStore::open_with(copy.path(), options).unwrap();
            answers_of(&s, &all())
        };
        let s = LogStore::open_with(image.path(), after_open(Duration::ZERO)).unwrap();
        let report = s.recovery_report().clone();
        assert!(
            !report.index_decoded_after_open,
            "blank {blank}: {report:?}"
        );
        assert_eq!(answers_of(&s, &all()), truth, "blank {blank}");
        wait_for_verdict(&s);
        assert_eq!(s.stats().checkpoint_refuted, None, "blank {blank}");
    }
}

/// Backup, export-style full reads and a follow of an untouched execution started
/// while the decode of a tail is held: they wait or read right, and the backup opens
/// as a full scan of the image.
#[test]
fn backup_during_the_decode_of_a_tail_is_complete() {
    let image = crashed(|s| {
        s.append_blocking(&id("run-c"), &tenant(0), step_event(3))
            .unwrap();
        s.append_blocking(&id("run-d"), &tenant(1), step_event(0))
            .unwrap();
    });
    let truth = full_scan(image.path(), &all());
    let options = after_open(Duration::ZERO).checkpoint_decode_hold(Duration::from_millis(300));
    let s = LogStore::open_with(image.path(), options).unwrap();
    assert!(!s.index_decoded());
    let dest = tempfile::tempdir().unwrap();
    let target = dest.path().join("b");
    s.backup_to(&target).unwrap();
    let backup = LogStore::open_with(&target, after_open_full()).unwrap();
    assert_eq!(answers_of(&backup, &all()), truth);
    assert_eq!(answers_of(&s, &all()), truth);
}
