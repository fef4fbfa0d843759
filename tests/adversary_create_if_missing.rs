//! Adversary tests of `Options::create_if_missing(false)` and the check read-only opens
//! share with it (`require_store`): a directory that holds no store is refused with
//! `InvalidArgument` and nothing is created; a real store is never refused.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use common::step_event;
use execlog::*;

fn no_create() -> Options {
    Options::default().create_if_missing(false)
}

/// Names in `dir`, sorted.
fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// A real store's checkpoint bytes (a clean close of one execution).
fn valid_checkpoint() -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    let s = LogStore::open(d.path()).unwrap();
    s.append_blocking(&ExecutionId::from("e"), &TenantId::from("t"), step_event(1))
        .unwrap();
    s.close().unwrap();
    drop(s);
    fs::read(d.path().join("checkpoint.idx")).unwrap()
}

/// `dir` holding exactly `files` (name, bytes) is refused by a write open with
/// `create_if_missing(false)` and by a read-only open, and nothing appears in it.
#[track_caller]
fn refused_and_untouched(files: &[(&str, Vec<u8>)], ctx: &str) {
    let mut failures = Vec::new();
    for which in ["write", "read_only", "reader"] {
        let d = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            fs::write(d.path().join(name), bytes).unwrap();
        }
        let before = names(d.path());
        let got = match which {
            "write" => LogStore::open_with(d.path(), no_create()),
            "read_only" => LogStore::open_read_only(d.path()),
            _ => LogStore::open_reader(d.path()),
        };
        let ok = got.is_ok();
        let err = got.err();
        if !matches!(err, Some(Error::InvalidArgument(_))) {
            failures.push(format!(
                "{ctx} ({which}): expected InvalidArgument, got ok={ok} err={err:?}"
            ));
        }
        let after = names(d.path());
        if after != before {
            failures.push(format!(
                "{ctx} ({which}): files were created: {:?}",
                after.difference(&before).collect::<Vec<_>>()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("; "));
}

#[test]
fn empty_dir_is_refused() {
    refused_and_untouched(&[], "empty directory");
}

#[test]
fn only_lock_is_refused() {
    refused_and_untouched(&[("LOCK", Vec::new())], "only LOCK");
}

#[test]
fn only_leftovers_are_refused() {
    refused_and_untouched(
        &[
            ("checkpoint.idx.tmp", vec![1, 2, 3]),
            ("cut.pending", vec![0; 32]),
            ("scrub.progress", vec![0; 8]),
            ("published.end", vec![0; 16]),
        ],
        "only leftovers",
    );
}

#[test]
fn oddly_named_segments_are_refused() {
    refused_and_untouched(
        &[
            ("42.seg", vec![0; 64]),
            ("0000000001.seg.broken", vec![0; 64]),
            ("0000000001.seg.compact", vec![0; 64]),
            ("000000001.seg", vec![0; 64]),
            ("0000000001.SEG", vec![0; 64]),
        ],
        "odd segment names",
    );
}

#[test]
fn only_garbage_checkpoint_is_refused() {
    refused_and_untouched(
        &[("checkpoint.idx", b"not a checkpoint".to_vec())],
        "garbage checkpoint only",
    );
}

#[test]
fn only_valid_checkpoint_is_refused() {
    refused_and_untouched(
        &[("checkpoint.idx", valid_checkpoint())],
        "valid checkpoint only",
    );
}

#[test]
fn missing_dir_is_refused_and_not_created() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("missing/deeper");
    let got = LogStore::open_with(&path, no_create());
    assert!(
        matches!(got, Err(Error::InvalidArgument(_))),
        "{:?}",
        got.err()
    );
    assert!(
        !d.path().join("missing").exists(),
        "a directory was created"
    );
    let got = LogStore::open_read_only(&path);
    assert!(
        matches!(got, Err(Error::InvalidArgument(_))),
        "{:?}",
        got.err()
    );
}

#[test]
fn regular_file_path_is_refused_without_panic_or_change() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("store");
    fs::write(&file, b"hello").unwrap();
    let got = LogStore::open_with(&file, no_create());
    assert!(got.is_err(), "opened a regular file as a store");
    assert_eq!(fs::read(&file).unwrap(), b"hello");
    assert!(LogStore::open_read_only(&file).is_err());
    // A path through a regular file.
    let got = LogStore::open_with(file.join("sub"), no_create());
    assert!(got.is_err());
    assert_eq!(names(d.path()), ["store".to_string()].into_iter().collect());
}

#[test]
fn checkpoint_that_is_a_directory_is_refused() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir(d.path().join("checkpoint.idx")).unwrap();
    let before = names(d.path());
    let got = LogStore::open_with(d.path(), no_create());
    assert!(
        matches!(got, Err(Error::InvalidArgument(_))),
        "{:?}",
        got.as_ref().err()
    );
    drop(got);
    assert_eq!(names(d.path()), before, "files were created");
}

#[test]
fn segment_zero_name_is_not_accepted_silently() {
    // `0000000000.seg` parses as a segment name (id 0), which no store has.
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("0000000000.seg"), vec![0u8; 4096]).unwrap();
    let before = names(d.path());
    let got = LogStore::open_with(d.path(), no_create());
    assert!(
        got.is_err(),
        "opened a directory whose only segment is id 0"
    );
    drop(got);
    let mut after = names(d.path());
    after.remove("LOCK");
    assert_eq!(after, before, "files were created");
}

fn real_store(dir: &Path) {
    let s = LogStore::open_with(dir, common::small_segments()).unwrap();
    for i in 0..200u64 {
        let e = ExecutionId::from(format!("e{}", i % 10));
        s.append_blocking(
            &e,
            &TenantId::from("t"),
            common::crash_image::kilobyte_event(i),
        )
        .unwrap();
    }
    s.close().unwrap();
}

#[test]
fn real_store_opens_every_way() {
    let d = tempfile::tempdir().unwrap();
    real_store(d.path());
    // With its checkpoint.
    let s = LogStore::open_with(d.path(), no_create()).unwrap();
    assert_eq!(s.stats().executions, 10);
    s.close().unwrap();
    drop(s);
    // Without it (listing).
    fs::remove_file(d.path().join("checkpoint.idx")).unwrap();
    let s = LogStore::open_with(d.path(), no_create()).unwrap();
    assert_eq!(s.stats().executions, 10);
    drop(s);
    // Through a symlink.
    let link = tempfile::tempdir().unwrap();
    let l = link.path().join("link");
    std::os::unix::fs::symlink(d.path(), &l).unwrap();
    let s = LogStore::open_with(&l, no_create()).unwrap();
    assert_eq!(s.stats().executions, 10);
    drop(s);
    let s = LogStore::open_read_only(&l).unwrap();
    assert_eq!(s.stats().executions, 10);
    drop(s);
    // A dangling symlink is refused and nothing is created at its target.
    let dangling = link.path().join("dangling");
    std::os::unix::fs::symlink(link.path().join("nowhere"), &dangling).unwrap();
    let got = LogStore::open_with(&dangling, no_create());
    assert!(
        matches!(got, Err(Error::InvalidArgument(_))),
        "{:?}",
        got.err()
    );
    assert!(!link.path().join("nowhere").exists());
}

#[test]
fn store_after_retention_and_compaction_opens() {
    let d = tempfile::tempdir().unwrap();
    real_store(d.path());
    let s = LogStore::open_with(d.path(), common::small_segments()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let pruned = s
        .prune_blocking(std::time::Duration::from_millis(1))
        .unwrap();
    assert_eq!(pruned, 10);
    s.compact_now().unwrap();
    drop(s);
    let _ = fs::remove_file(d.path().join("checkpoint.idx"));
    let s = LogStore::open_with(d.path(), no_create()).unwrap();
    assert_eq!(s.stats().executions, 0);
    assert_eq!(s.stats().deleted_executions, 10);
    drop(s);
    let s = LogStore::open_read_only(d.path()).unwrap();
    assert_eq!(s.stats().deleted_executions, 10);
}

/// A store missing segment 1 (only later segments) with no checkpoint: refused or
/// corrupt, never a fresh store, nothing created.
#[test]
fn store_missing_first_segment_is_not_recreated() {
    let d = tempfile::tempdir().unwrap();
    real_store(d.path());
    let segs: Vec<_> = names(d.path())
        .into_iter()
        .filter(|n| n.ends_with(".seg"))
        .collect();
    assert!(segs.len() > 1, "{segs:?}");
    fs::remove_file(d.path().join(&segs[0])).unwrap();
    fs::remove_file(d.path().join("checkpoint.idx")).unwrap();
    let got = LogStore::open_with(d.path(), no_create());
    assert!(got.is_err(), "opened a store missing segment 1");
    drop(got);
    assert!(!d.path().join(&segs[0]).exists(), "segment 1 was created");
}

/// A checkpoint and its store's segments after the segments were removed (the user
/// deleted `*.seg`): with create_if_missing(false), must not start a new store.
#[test]
fn checkpoint_left_after_segments_removed() {
    let d = tempfile::tempdir().unwrap();
    real_store(d.path());
    for n in names(d.path()) {
        if n.ends_with(".seg") {
            fs::remove_file(d.path().join(n)).unwrap();
        }
    }
    let before = names(d.path());
    let got = LogStore::open_with(d.path(), no_create());
    let ok = got.is_ok();
    let err = got.err();
    assert!(
        !ok,
        "a directory with a checkpoint but no segment opened as a store: {err:?}"
    );
    let after = names(d.path());
    assert_eq!(after, before, "files were created");
}
