//! Index checkpoints on real files: a clean close saves the index, the next open loads
//! it after checking the segment checksums it holds, and everything open answers is the
//! same as after a full scan. A damaged, stale, foreign or mismatched checkpoint is
//! ignored (and reported), never trusted; corruption of the log is refused exactly as
//! without one.
//!
//! Regression guarded: trusting a checkpoint whose segments changed (acknowledged data
//! rewritten, corruption hidden), or one that covers less than the log (appends after
//! it lost).

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;

use common::{small_segments, step_event};
use execlog::*;

const CHECKPOINT: &str = "checkpoint.idx";

/// Everything a store answers, for comparing two opens.
fn answers(store: &LogStore, tenants: &[TenantId]) -> Vec<String> {
    let mut out = Vec::new();
    for t in tenants {
        let ids = store.list_executions_blocking(t, 10_000, 0).unwrap();
        out.push(format!("{t}: {ids:?}"));
        for id in ids {
            let events = store.load_events_blocking(&id).unwrap();
            out.push(format!("{id}: {}", serde_json::to_string(&events).unwrap()));
            let after = store.load_events_after_blocking(&id, 3).unwrap();
            out.push(format!("{id} after 3: {}", after.len()));
        }
    }
    out
}

fn tenants() -> Vec<TenantId> {
    (0..3).map(|t| TenantId::from(format!("t{t}"))).collect()
}

/// Several segments, tenants, executions, single appends and batches; closed cleanly.
fn fill(dir: &Path, options: Options, round: u64) {
    let store = LogStore::open_with(dir, options).unwrap();
    let tenants = tenants();
    for i in 0..60u64 {
        let e = ExecutionId::from(format!("e{}", i % 7 + round * 100));
        let t = &tenants[(i % 7 % 3) as usize];
        if i % 5 == 0 {
            let batch = (0..4).map(|k| big_event(i * 10 + k)).collect();
            store.append_batch_blocking(&e, t, batch).unwrap();
        } else {
            store.append_blocking(&e, t, big_event(i)).unwrap();
        }
    }
    store.close().unwrap();
}

/// An event of about 2 KB, so that a few dozen fill several 64 KiB segments.
fn big_event(n: u64) -> ExecutionEventData {
    ExecutionEventData::StepCompleted {
        step_id: StepId::from(format!("s{n}")),
        output: Some(format!("{n:>2000}")),
        duration_ms: n,
    }
}

fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "LOCK" && !entry.file_name().to_string_lossy().ends_with(".tmp") {
            fs::copy(entry.path(), to.path().join(entry.file_name())).unwrap();
        }
    }
    to
}

fn open(dir: &Path, checkpoint: bool) -> LogStore {
    LogStore::open_with(dir, small_segments().index_checkpoint(checkpoint)).unwrap()
}

#[test]
fn a_clean_close_lets_open_load_the_index() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), small_segments(), 0);
    assert!(dir.path().join(CHECKPOINT).exists());
    let scanned = copy_dir(dir.path());

    let store = open(dir.path(), true);
    let report = store.recovery_report().clone();
    assert!(report.checkpoint_bytes > 0, "{report:?}");
    assert_eq!(report.checkpoint_ignored, None);
    assert!(
        report.segments_scanned > 2,
        "the test spans segments: {report:?}"
    );
    let with = answers(&store, &tenants());

    let full = open(scanned.path(), false);
    assert_eq!(full.recovery_report().checkpoint_bytes, 0);
    assert_eq!(full.recovery_report().records, report.records);
    assert_eq!(full.recovery_report().executions, report.executions);
    assert_eq!(answers(&full, &tenants()), with);
    assert_eq!(with.len(), 3 + 2 * 7);

    // Appends continue the chains the checkpoint restored.
    let e = ExecutionId::from("e3");
    let next = store.get_latest_sequence_blocking(&e).unwrap().unwrap() + 1;
    let seq = store
        .append_blocking(&e, &TenantId::from("t0"), step_event(999))
        .unwrap();
    assert_eq!(seq, next);
    store.close().unwrap();
    drop(store);
    let again = open(dir.path(), true);
    assert!(again.recovery_report().checkpoint_bytes > report.checkpoint_bytes);
    assert_eq!(again.load_events_blocking(&e).unwrap().len() as u64, next);
}

#[test]
fn appends_after_a_stale_checkpoint_are_scanned() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), small_segments(), 0);
    let store = open(dir.path(), true);
    let before = fs::read(dir.path().join(CHECKPOINT)).unwrap();
    let tenants = tenants();
    for i in 0..40u64 {
        let e = ExecutionId::from(format!("late{}", i % 4));
        store
            .append_blocking(&e, &tenants[0], step_event(i))
            .unwrap();
    }
    // What a crash leaves: every acknowledged append on disk, no close, the old
    // checkpoint.
    let crashed = copy_dir(dir.path());
    let expected = answers(&store, &tenants);
    assert_eq!(fs::read(crashed.path().join(CHECKPOINT)).unwrap(), before);
    drop(store);

    let reopened = open(crashed.path(), true);
    let report = reopened.recovery_report();
    assert!(report.checkpoint_bytes > 0, "{report:?}");
    assert_eq!(answers(&reopened, &tenants), expected);
    for i in 0..4 {
        let e = ExecutionId::from(format!("late{i}"));
        assert_eq!(reopened.load_events_blocking(&e).unwrap().len(), 10);
    }
}

#[test]
fn a_damaged_or_foreign_checkpoint_is_ignored_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), small_segments(), 0);
    let expected = answers(&open(dir.path(), false), &tenants());
    let good = fs::read(dir.path().join(CHECKPOINT)).unwrap();
    let other = tempfile::tempdir().unwrap();
    fill(other.path(), small_segments(), 1);
    let foreign = fs::read(other.path().join(CHECKPOINT)).unwrap();

    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x10;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("cut short", good[..good.len() - 9].to_vec()),
        ("bit flipped", flipped),
        ("garbage", vec![0xAB; 4096]),
        ("another store's", foreign),
    ];
    for (what, bytes) in cases {
        let copy = copy_dir(dir.path());
        fs::write(copy.path().join(CHECKPOINT), &bytes).unwrap();
        let store = open(copy.path(), true);
        let report = store.recovery_report();
        assert_eq!(report.checkpoint_bytes, 0, "{what}");
        assert!(report.checkpoint_ignored.is_some(), "{what}: {report:?}");
        assert!(report.ignored_files.is_empty(), "{what}: {report:?}");
        assert_eq!(answers(&store, &tenants()), expected, "{what}");
        store.close().unwrap();
        drop(store);
        // The close replaced it with a good one.
        let store = open(copy.path(), true);
        assert!(store.recovery_report().checkpoint_bytes > 0, "{what}");
        assert_eq!(answers(&store, &tenants()), expected, "{what}");
    }

    // Another index stride: ignored, the index is rebuilt with the stride asked for.
    let copy = copy_dir(dir.path());
    let store = LogStore::open_with(copy.path(), small_segments().index_stride(3)).unwrap();
    let why = store.recovery_report().checkpoint_ignored.clone().unwrap();
    assert!(why.contains("stride"), "{why}");
    assert_eq!(answers(&store, &tenants()), expected);
}

#[test]
fn corruption_after_a_clean_close_is_refused_as_without_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), small_segments(), 0);
    let first = dir.path().join("0000000001.seg");
    let len = fs::read(&first).unwrap().len();
    for at in [40, 200, len / 3, len / 2] {
        let mut verdicts = Vec::new();
        for checkpoint in [true, false] {
            let copy = copy_dir(dir.path());
            let path = copy.path().join("0000000001.seg");
            let mut bytes = fs::read(&path).unwrap();
            bytes[at] ^= 0x04;
            fs::write(&path, &bytes).unwrap();
            let result =
                LogStore::open_with(copy.path(), small_segments().index_checkpoint(checkpoint));
            verdicts.push(match result {
                Ok(store) => format!(
                    "opened: {:?} {:?}",
                    store.recovery_report().truncated_at,
                    answers(&store, &tenants())
                ),
                Err(e) => format!("refused: {e}"),
            });
        }
        assert_eq!(verdicts[0], verdicts[1], "flip at {at}");
        assert!(
            verdicts[0].starts_with("refused"),
            "flip at {at}: {}",
            verdicts[0]
        );
    }
}

#[test]
fn read_only_opens_use_it_and_never_write_one() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), small_segments(), 0);
    fs::remove_file(dir.path().join(CHECKPOINT)).unwrap();
    let store = LogStore::open_read_only(dir.path()).unwrap();
    assert_eq!(store.recovery_report().checkpoint_bytes, 0);
    store.close().unwrap();
    drop(store);
    assert!(!dir.path().join(CHECKPOINT).exists());

    // An open for writing that appends nothing still leaves one for the next open
    // (default options, as the read-only open uses: same index stride).
    drop(LogStore::open(dir.path()).unwrap());
    let store = LogStore::open_read_only(dir.path()).unwrap();
    assert!(store.recovery_report().checkpoint_bytes > 0);
}

/// A store over 8 MiB: its checkpoint digests are verified on two threads (segments
/// alternating between them) and its records prescanned by the helper thread, in every
/// build. Answers equal a full scan's, and a flipped bit in a segment of either thread's
/// share is refused exactly as without the checkpoint.
#[test]
fn a_large_store_checks_its_checkpoint_on_two_threads() {
    let options = || {
        Options::default()
            .segment_size_bytes(1 << 20)
            .index_stride(8)
    };
    let dir = tempfile::tempdir().unwrap();
    {
        let store = LogStore::open_with(dir.path(), options()).unwrap();
        let tenants = tenants();
        for i in 0..50u64 {
            let e = ExecutionId::from(format!("e{}", i % 9));
            let batch = (0..100).map(|k| big_event(i * 100 + k)).collect();
            store
                .append_batch_blocking(&e, &tenants[(i % 9 % 3) as usize], batch)
                .unwrap();
        }
        store.close().unwrap();
    }
    let full = answers(
        &LogStore::open_with(dir.path(), options().index_checkpoint(false)).unwrap(),
        &tenants(),
    );
    let store = LogStore::open_with(dir.path(), options()).unwrap();
    assert!(
        store.recovery_report().checkpoint_bytes > 8 << 20,
        "{:?}",
        store.recovery_report()
    );
    assert_eq!(answers(&store, &tenants()), full);
    drop(store);
    for segment in ["0000000002.seg", "0000000003.seg"] {
        let mut verdicts = Vec::new();
        for checkpoint in [true, false] {
            let copy = copy_dir(dir.path());
            let path = copy.path().join(segment);
            let mut bytes = fs::read(&path).unwrap();
            bytes[5000] ^= 0x10;
            fs::write(&path, &bytes).unwrap();
            let result = LogStore::open_with(copy.path(), options().index_checkpoint(checkpoint));
            verdicts.push(result.map(|_| ()).map_err(|e| e.to_string()));
        }
        assert_eq!(verdicts[0], verdicts[1], "{segment}");
        assert!(
            verdicts[0].is_err(),
            "{segment}: a flipped bit went unnoticed"
        );
    }
}

/// A checkpoint that cannot be written at close is reported by `close()` (issue 17: it
/// used to go to the log only, with `close()` returning `Ok`), and nothing acknowledged
/// is lost: the next open scans instead.
#[test]
fn a_checkpoint_failure_at_close_is_returned_by_close() {
    use execlog::fault::{Fault, Op, SimIo};
    let sim = std::sync::Arc::new(SimIo::new());
    let dir = Path::new("/store");
    let options = || Options::default().io(sim.clone());
    let store = LogStore::open_with(dir, options()).unwrap();
    let (e, t) = (ExecutionId::from("e"), TenantId::from("t"));
    for i in 1..=5 {
        store.append_blocking(&e, &t, step_event(i)).unwrap();
    }
    // The next create or open is the checkpoint's temporary file (the seal only writes
    // and syncs the open segment).
    sim.fail_at(1, Op::Open, Fault::Persistent);
    let err = store.close().unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("checkpoint"), "{err}");
    drop(store);
    sim.clear_faults();
    let store = LogStore::open_with(dir, options()).unwrap();
    assert_eq!(store.recovery_report().checkpoint_bytes, 0);
    assert_eq!(store.load_events_blocking(&e).unwrap().len(), 5);
    store.close().unwrap();
}

/// A batch larger than a segment gets a segment sized to fit it, with no room left for
/// the seal at close: the checkpoint of that close must still be usable (the seal that
/// was not written must not move the saved clock past every record).
#[test]
fn a_close_without_room_for_the_seal_leaves_a_usable_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), true);
    let id = ExecutionId::from("big");
    let event = ExecutionEventData::StepCompleted {
        step_id: StepId::from("s"),
        output: Some("x".repeat(100_000)),
        duration_ms: 1,
    };
    store
        .append_blocking(&id, &TenantId::from("t0"), event)
        .unwrap();
    store.close().unwrap();
    drop(store);
    let reopened = open(dir.path(), true);
    let report = reopened.recovery_report();
    assert_eq!(report.checkpoint_ignored, None, "{report:?}");
    assert!(report.checkpoint_bytes > 100_000, "{report:?}");
    assert_eq!(reopened.load_events_blocking(&id).unwrap().len(), 1);
}
