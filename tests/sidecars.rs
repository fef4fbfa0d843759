//! Segment sidecars (`src/sidecar.rs`): an open after a crash that decodes its
//! checkpoint after it returns takes what it needs of a sealed segment the checkpoint
//! does not cover from the segment's sidecar instead of scanning it; the decode scans
//! it with every check. These tests check that such an open answers as a full scan
//! does, that a sidecar that does not describe its segment never changes an answer
//! (ignored, or the checkpoint refuted and the next open scanning), and that the
//! files come and go when they should.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::crash_image;
use common::sidecars::{forge, full_scan, is_poisoned, options, same, sidecar_path};
use common::step_event;
use common::verify_after_open::wait_for_verdict;
use execlog::*;

fn t() -> TenantId {
    TenantId::from("t")
}

fn sidecars(dir: &Path) -> Vec<PathBuf> {
    let mut names: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "side"))
        .collect();
    names.sort();
    names
}

/// Waits (at most a minute) until `dir` holds at least `n` sidecars.
fn wait_for_sidecars(dir: &Path, n: usize) {
    let started = Instant::now();
    while sidecars(dir).len() < n {
        assert!(started.elapsed() < Duration::from_secs(60), "no sidecars");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Appends `batches` batches of 5 events to each of `names`, interleaved, the first of
/// each execution declaring it.
fn fill(store: &LogStore, names: &[&str], batches: u64, from: u64) {
    for batch in from..from + batches {
        for name in names {
            let events = (1..=5).map(|i| step_event(batch * 5 + i)).collect();
            store
                .append_batch_blocking(&ExecutionId::from(*name), &t(), events)
                .unwrap();
        }
    }
}

/// A crash image of a store closed cleanly with "a" and "b", then reopened: the
/// session appends to "b" and "c", declares "c", deletes "d" and seals segments
/// (their sidecars written) before the image is taken.
fn crashed() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open_with(dir.path(), options()).unwrap();
    fill(&store, &["a", "b", "d"], 4, 0);
    store.close().unwrap();
    let store = LogStore::open_with(dir.path(), options()).unwrap();
    fill(&store, &["b", "c"], 400, 4);
    store
        .delete_execution_blocking(&ExecutionId::from("d"))
        .unwrap();
    fill(&store, &["b", "c"], 20, 404);
    let segments = store.stats().segments;
    assert!(segments >= 5, "{segments} segments");
    wait_for_sidecars(dir.path(), segments - 3);
    let image = crash_image::copy(dir.path());
    drop(store);
    image
}

/// Everything `store` answers of "a" to "d", as text.
fn answers(store: &LogStore) -> String {
    let mut out = format!("{:?}\n", store.list_executions_blocking(&t(), 100, 0));
    for name in ["a", "b", "c", "d"] {
        let id = ExecutionId::from(name);
        let events = store
            .load_events_blocking(&id)
            .map(|e| serde_json::to_string(&e).unwrap());
        let latest = store.get_latest_sequence_blocking(&id);
        out += &format!("{name}: {events:?} {latest:?}\n");
    }
    out
}

#[test]
fn an_open_after_a_crash_takes_sealed_segments_from_their_sidecars_and_answers_as_a_scan() {
    let image = crashed();
    let expected = full_scan(image.path(), answers);
    let store = LogStore::open_with(image.path(), options()).unwrap();
    let report = store.recovery_report();
    assert!(report.index_decoded_after_open, "{report:?}");
    assert!(report.segments_from_sidecars >= 2, "{report:?}");
    same(&answers(&store), &expected);
    wait_for_verdict(&store);
    same(&answers(&store), &expected);
    // Appends go on where the log ends.
    let next = store
        .append_blocking(&ExecutionId::from("b"), &t(), step_event(9_999))
        .unwrap();
    assert_eq!(next, 2_121);
    store.close().unwrap();
}

/// An execution whose only records after the checkpoint lie in a segment taken from
/// its sidecar is not served from the checkpoint's directory before the decode: the
/// sidecar names it, so its read waits for the decoded index.
#[test]
fn an_execution_appended_to_only_in_a_segment_taken_from_its_sidecar_waits_for_the_decode() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open_with(dir.path(), options()).unwrap();
    fill(&store, &["a", "b"], 4, 0);
    store.close().unwrap();
    let store = LogStore::open_with(dir.path(), options()).unwrap();
    let until_segment = |n: usize, name: &str, from: &mut u64| {
        while store.stats().segments < n {
            fill(&store, &[name], 1, *from);
            *from += 1;
        }
    };
    let mut next = 4;
    until_segment(2, "a", &mut next);
    fill(&store, &["b"], 3, next);
    next += 3;
    until_segment(4, "a", &mut next);
    wait_for_sidecars(dir.path(), 3);
    let image = crash_image::copy(dir.path());
    drop(store);
    let expected = full_scan(image.path(), answers);
    let hold = options().checkpoint_decode_hold(Duration::from_millis(300));
    let store = LogStore::open_with(image.path(), hold).unwrap();
    let report = store.recovery_report();
    assert!(report.segments_from_sidecars >= 2, "{report:?}");
    let b = ExecutionId::from("b");
    assert_eq!(store.get_latest_sequence_blocking(&b).unwrap(), Some(35));
    same(&answers(&store), &expected);
}

#[test]
fn without_sidecars_the_same_open_scans_the_segments() {
    let image = crashed();
    let expected = full_scan(image.path(), answers);
    let store = LogStore::open_with(image.path(), options().segment_sidecars(false)).unwrap();
    let report = store.recovery_report();
    assert!(report.index_decoded_after_open, "{report:?}");
    assert_eq!(report.segments_from_sidecars, 0, "{report:?}");
    same(&answers(&store), &expected);
}

/// Byte offsets in a sidecar (docs/FORMAT.md, "Segment sidecars").
const END_AT: usize = 16;
const COUNT_AT: usize = 60;
const FIXED_LEN: usize = 64;

/// A sidecar that leaves out the executions its segment appends to, CRC recomputed:
/// open takes it, the decode finds that it does not describe the records, refutes the
/// checkpoint (the store poisoned), and the next open scans and answers as a full scan.
#[test]
fn a_forged_list_of_executions_is_refuted_by_the_decode_and_the_next_open_scans() {
    let image = crashed();
    let expected = full_scan(image.path(), answers);
    forge(image.path(), 3, |b| {
        b.truncate(FIXED_LEN);
        b[COUNT_AT..COUNT_AT + 4].fill(0);
        b.extend_from_slice(&[0; 4]);
    });
    let store = LogStore::open_with(image.path(), options()).unwrap();
    assert!(store.recovery_report().segments_from_sidecars >= 2);
    wait_for_verdict(&store);
    assert!(is_poisoned(&store));
    drop(store);
    let store = LogStore::open_with(image.path(), options()).unwrap();
    assert_eq!(store.recovery_report().segments_from_sidecars, 0);
    same(&answers(&store), &expected);
}

/// `verify` reports a sidecar that open would take but that does not describe its
/// segment, and nothing for honest ones.
#[test]
fn verify_reports_a_sidecar_that_does_not_describe_its_segment() {
    let image = crashed();
    let report = LogStore::open_read_only(image.path())
        .unwrap()
        .verify(|_, _| {});
    assert!(report.is_clean(), "{:?}", report.problems);
    forge(image.path(), 3, |b| {
        b.truncate(FIXED_LEN);
        b[COUNT_AT..COUNT_AT + 4].fill(0);
        b.extend_from_slice(&[0; 4]);
    });
    let report = LogStore::open_read_only(image.path())
        .unwrap()
        .verify(|_, _| {});
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].contains("0000000003.side"),
        "{:?}",
        report.problems
    );
}

/// A sidecar whose end is forged one record early, CRC recomputed, would hide the
/// segment's last record: the decode finds bytes after the end it states.
#[test]
fn a_forged_end_is_refuted_by_the_decode() {
    let image = crashed();
    let expected = full_scan(image.path(), answers);
    forge(image.path(), 3, |b| {
        let end = u64::from_le_bytes(b[END_AT..END_AT + 8].try_into().unwrap());
        b[END_AT..END_AT + 8].copy_from_slice(&(end - 8).to_le_bytes());
    });
    let store = LogStore::open_with(image.path(), options()).unwrap();
    assert!(store.recovery_report().segments_from_sidecars >= 2);
    wait_for_verdict(&store);
    assert!(is_poisoned(&store));
    drop(store);
    let store = LogStore::open_with(image.path(), options()).unwrap();
    same(&answers(&store), &expected);
}

/// A sidecar forged to describe its segment up to the start of its last commit group,
/// consistent in every field, would hide that group's events: the decode finds the
/// records after the end it states, refutes, and says so.
#[test]
fn a_sidecar_consistent_with_a_prefix_of_its_segment_is_refuted() {
    let image = crashed();
    let expected = full_scan(image.path(), answers);
    let good = fs::read(sidecar_path(image.path(), 3)).unwrap();
    let last_group = u32::from_le_bytes(good[48..52].try_into().unwrap());
    let segment = fs::read(image.path().join(format!("{:010}.seg", 3))).unwrap();
    let forged = execlog::forgery::sidecar_for(3, &segment, u64::from(last_group)).unwrap();
    fs::write(sidecar_path(image.path(), 3), forged).unwrap();
    let store = LogStore::open_with(image.path(), options()).unwrap();
    assert!(store.recovery_report().segments_from_sidecars >= 2);
    wait_for_verdict(&store);
    assert!(is_poisoned(&store));
    drop(store);
    let why = fs::read_to_string(image.path().join("checkpoint.refuted")).unwrap();
    assert!(why.contains("bytes after the end of the records"), "{why}");
    let store = LogStore::open_with(image.path(), options()).unwrap();
    same(&answers(&store), &expected);
}

/// Every flipped bit of a sidecar (one in seven), and every cut (one in five), makes
/// open ignore it and scan its segment: the same answers, and no refutation.
#[test]
fn a_damaged_or_cut_sidecar_is_ignored_and_its_segment_scanned() {
    let image = crashed();
    let expected = full_scan(image.path(), answers);
    let path = sidecar_path(image.path(), 3);
    let good = fs::read(&path).unwrap();
    let mut cases: Vec<Vec<u8>> = (0..good.len() * 8)
        .step_by(7)
        .map(|bit| {
            let mut b = good.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            b
        })
        .collect();
    cases.extend((0..good.len()).step_by(5).map(|len| good[..len].to_vec()));
    for bytes in cases {
        let copy = crash_image::copy(image.path());
        fs::write(sidecar_path(copy.path(), 3), &bytes).unwrap();
        let store = LogStore::open_with(copy.path(), options()).unwrap();
        let report = store.recovery_report();
        assert!(report.segments_from_sidecars >= 1, "{report:?}");
        same(&answers(&store), &expected);
        wait_for_verdict(&store);
        same(&answers(&store), &expected);
        assert!(!is_poisoned(&store));
    }
}

/// A sidecar copied over another segment's (valid CRC, wrong segment) is ignored.
#[test]
fn another_segments_sidecar_is_ignored() {
    let image = crashed();
    let expected = full_scan(image.path(), answers);
    fs::copy(sidecar_path(image.path(), 2), sidecar_path(image.path(), 3)).unwrap();
    let store = LogStore::open_with(image.path(), options()).unwrap();
    same(&answers(&store), &expected);
    wait_for_verdict(&store);
    assert!(!is_poisoned(&store));
}

/// Damage to a record of a segment open took from its sidecar is found by the decode
/// (the checkpoint refuted, the store poisoned); the next open scans, and refuses the
/// store with the segment and offset, as a full scan does.
#[test]
fn damage_in_a_segment_taken_from_its_sidecar_is_found_by_the_decode() {
    let image = crashed();
    let segment = image.path().join(format!("{:010}.seg", 3));
    let mut bytes = fs::read(&segment).unwrap();
    bytes[20_000] ^= 0x40;
    fs::write(&segment, bytes).unwrap();
    let store = LogStore::open_with(image.path(), options()).unwrap();
    assert!(store.recovery_report().segments_from_sidecars >= 2);
    wait_for_verdict(&store);
    assert!(is_poisoned(&store));
    drop(store);
    let Err(e) = LogStore::open_with(image.path(), options()) else {
        panic!("damage was not found");
    };
    assert!(matches!(e, Error::Corrupt { segment: 3, .. }), "{e:?}");
}

/// A clean close writes a checkpoint covering every segment: the sidecars go.
#[test]
fn a_clean_close_removes_the_sidecars() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open_with(dir.path(), options()).unwrap();
    fill(&store, &["b", "c"], 200, 0);
    wait_for_sidecars(dir.path(), 2);
    store.close().unwrap();
    assert_eq!(sidecars(dir.path()), Vec::<PathBuf>::new());
}

/// Erasure replaces sealed segments' files: a crash right after the pass never opens
/// with a sidecar of a replaced file (the pass removes it, and the checkpoint, first).
#[test]
fn a_crash_after_an_erasure_pass_answers_as_a_full_scan() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open_with(dir.path(), options()).unwrap();
    fill(&store, &["b", "c", "d"], 150, 0);
    store.close().unwrap();
    let store = LogStore::open_with(dir.path(), options()).unwrap();
    fill(&store, &["b", "c", "d"], 150, 150);
    let segments = store.stats().segments;
    wait_for_sidecars(dir.path(), segments - 3);
    store
        .delete_execution_blocking(&ExecutionId::from("d"))
        .unwrap();
    let report = store.compact_now().unwrap();
    assert!(report.segments_rewritten >= 2, "{report:?}");
    let image = crash_image::copy(dir.path());
    let expected = full_scan(image.path(), answers);
    let reopened = LogStore::open_with(image.path(), options()).unwrap();
    same(&answers(&reopened), &expected);
    wait_for_verdict(&reopened);
    same(&answers(&reopened), &expected);
    assert!(!is_poisoned(&reopened));
    store.close().unwrap();
}
