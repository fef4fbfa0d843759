//! Adversarial review of sealed segments left closed by a lazy open (`Segments::
//! push_closed`, `open_closed`; `open::recover`'s `vouched` directory fsync skip).
//!
//! Each test damages or races the closed segments of a store that closed cleanly and
//! reopens it with `Options::verify_checkpoint_after_open(true)`.
//!
//! Findings, acted on:
//! - `power::a_cut_whose_marker_removal_was_not_synced_is_not_redone_over_acknowledged_appends`
//!   failed: an open whose torn-tail cut removed `cut.pending` but whose directory
//!   fsync then failed left the removal not durable; the next open was lazy, the
//!   checkpoint covered every segment with nothing cut in *this* open (`vouched`), so
//!   it skipped the directory fsync and acknowledged an append at the cut point. After
//!   a power cut the marker came back and the next open redid the cut over the
//!   acknowledged record. The control with an ordinary second open passed. Fixed: the
//!   verification after open fsyncs the directory before its verdict lets writes in.
//! - `a_foreign_segment_with_the_same_id_and_shape_is_not_served` (ignored, fails):
//!   before the verdict a closed segment replaced by another store's segment with the
//!   same id and record layout is served; not new (the same before the change, when
//!   every covered segment was checked by its header and length only).

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::segment_files::{
    le32, record_offsets, segment_path, store_over_segments, store_over_segments_of,
};
use common::step_event;
use common::verify_after_open::wait_for_verdict;
use execlog::*;

fn tenant(n: u32) -> TenantId {
    TenantId::from(format!("tenant-{n}"))
}

const IDS: [&str; 9] = [
    "early", "late", "filler-0", "filler-1", "filler-2", "filler-3", "filler-4", "filler-5",
    "filler-6",
];

fn lazy(hold: Duration) -> Options {
    common::small_segments()
        .verify_checkpoint_after_open(true)
        .checkpoint_decode_hold(hold)
}

/// The truth: each execution's events, from an ordinary open.
fn truth(dir: &Path) -> Vec<Vec<StoredEvent>> {
    let s = LogStore::open_with(dir, common::small_segments()).unwrap();
    IDS.iter()
        .map(|id| s.load_events_blocking(&ExecutionId::from(*id)).unwrap())
        .collect()
}

/// Every read answers the truth or an error; returns how many failed.
fn check_reads(s: &LogStore, truth: &[Vec<StoredEvent>], ctx: &str) -> usize {
    let mut failed = 0;
    for (id, want) in IDS.iter().zip(truth) {
        let got = s.load_events_blocking(&ExecutionId::from(*id));
        match got {
            Ok(events) => assert!(
                events == *want,
                "{ctx}: {id}: served {} events that are not the ones written ({} written)",
                events.len(),
                want.len()
            ),
            Err(_) => failed += 1,
        }
        if let Ok(Some(seq)) = s.get_latest_sequence_blocking(&ExecutionId::from(*id)) {
            assert_eq!(seq, want.len() as u64, "{ctx}: {id}: latest sequence");
        }
    }
    failed
}

/// Opens lazily, checks every read is right or an error, waits for the verdict, and
/// returns it with how many reads failed before it.
fn open_damaged(dir: &Path, truth: &[Vec<StoredEvent>], ctx: &str) -> (Option<String>, usize) {
    let s = LogStore::open_with(dir, lazy(Duration::from_millis(100)))
        .unwrap_or_else(|e| panic!("{ctx}: open failed: {e}"));
    assert!(s.recovery_report().index_decoded_after_open, "{ctx}");
    assert!(s.recovery_report().segments_left_closed > 0, "{ctx}");
    let failed = check_reads(&s, truth, ctx);
    wait_for_verdict(&s);
    let verdict = s.stats().checkpoint_refuted;
    // After the verdict too: right or an error.
    check_reads(&s, truth, ctx);
    drop(s);
    (verdict, failed)
}

/// Damage applied to closed segment `id` (or the pair `id`, `id + 1`).
fn damage(dir: &Path, id: u32, how: &str) {
    let path = segment_path(dir, id);
    match how {
        "swap" => {
            let other = segment_path(dir, id + 1);
            let tmp = dir.join("swap.tmp");
            fs::rename(&path, &tmp).unwrap();
            fs::rename(&other, &path).unwrap();
            fs::rename(&tmp, &other).unwrap();
        }
        "symlink to the next" => {
            fs::remove_file(&path).unwrap();
            std::os::unix::fs::symlink(segment_path(dir, id + 1), &path).unwrap();
        }
        "fifo" => {
            fs::remove_file(&path).unwrap();
            let made = std::process::Command::new("mkfifo").arg(&path).status();
            assert!(made.unwrap().success());
        }
        "sparse past 4 GiB" => {
            let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len((4u64 << 30) + 4096).unwrap();
        }
        "one byte short" => {
            let len = fs::metadata(&path).unwrap().len();
            // The durable end is below the zeroed capacity: cut right at the records'
            // end minus one (the last record of the segment is then torn).
            let bytes = fs::read(&path).unwrap();
            let end = bytes.iter().rposition(|&b| b != 0).unwrap() as u64 + 1;
            let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(end.min(len) - 1).unwrap();
        }
        "empty" => {
            fs::write(&path, b"").unwrap();
        }
        "newer version" | "other id" => {
            let mut bytes = fs::read(&path).unwrap();
            if how == "newer version" {
                bytes[8..12].copy_from_slice(&99u32.to_le_bytes());
            } else {
                bytes[12..16].copy_from_slice(&(id + 1).to_le_bytes());
            }
            let crc = crc32fast::hash(&bytes[..28]);
            bytes[28..32].copy_from_slice(&crc.to_le_bytes());
            fs::write(&path, &bytes).unwrap();
        }
        "record flipped" => {
            let mut bytes = fs::read(&path).unwrap();
            bytes[200] ^= 0x40;
            fs::write(&path, &bytes).unwrap();
        }
        _ => unreachable!("{how}"),
    }
}

/// Each damage to a closed segment after a clean close: the lazy open succeeds, every
/// read answers the truth or an error (never other bytes, never a panic or SIGBUS),
/// and the verdict refutes the checkpoint.
#[test]
fn damage_to_a_closed_segment_fails_its_reads_and_the_verdict_never_serves_wrong_events() {
    let mut problems = Vec::new();
    for how in [
        "swap",
        "symlink to the next",
        "fifo",
        "sparse past 4 GiB",
        "one byte short",
        "empty",
        "newer version",
        "other id",
        "record flipped",
    ] {
        for id in [1u32, 2] {
            let (dir, _) = store_over_segments();
            let truth = truth(dir.path());
            damage(dir.path(), id, how);
            let ctx = format!("{how} (segment {id})");
            let (verdict, failed) = open_damaged(dir.path(), &truth, &ctx);
            if verdict.is_none() {
                problems.push(format!("{ctx}: the verdict did not refute the checkpoint"));
            }
            if failed == 0 && how != "record flipped" {
                problems.push(format!("{ctx}: no read failed before the verdict"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Segment 2 replaced by segment 2 of another store with the same shape (the same
/// record lengths and execution numbers, other names and payloads): the header is
/// valid and the length is right. Reads before the verdict must still not serve the
/// other store's events as this store's; the verdict refutes.
#[test]
#[ignore = "known limit, not new: before the verdict a closed segment is checked by its \
            header and length only (as every covered segment was before this change)"]
fn a_foreign_segment_with_the_same_id_and_shape_is_not_served() {
    let (dir, _) = store_over_segments();
    let (other, _) = store_over_segments_of("others", 'y');
    let truth = truth(dir.path());
    fs::copy(segment_path(other.path(), 2), segment_path(dir.path(), 2)).unwrap();
    let s = LogStore::open_with(dir.path(), lazy(Duration::from_millis(100))).unwrap();
    assert!(s.recovery_report().segments_left_closed > 0);
    let served = |s: &LogStore| -> Vec<String> {
        let mut wrong = Vec::new();
        for (id, want) in IDS.iter().zip(&truth) {
            if let Ok(events) = s.load_events_blocking(&ExecutionId::from(*id))
                && events != *want
            {
                wrong.push(id.to_string());
            }
        }
        wrong
    };
    let before = served(&s);
    wait_for_verdict(&s);
    let verdict = s.stats().checkpoint_refuted;
    let after = served(&s);
    drop(s);
    assert!(
        verdict.is_some(),
        "the verdict did not refute a foreign segment"
    );
    assert!(
        after.is_empty(),
        "served foreign events as {after:?} after the verdict"
    );
    assert!(
        before.is_empty(),
        "served the foreign segment's events as {before:?} before the verdict"
    );
}

/// A closed segment removed after a clean close: the open that does not list the
/// directory succeeds, the reads that need the segment fail and the rest are right,
/// the verdict refutes the checkpoint (the directory no longer holds what open took),
/// and the next open refuses the store with "segment file is missing".
#[test]
fn a_removed_closed_segment_fails_its_reads_the_verdict_and_the_next_open() {
    let (dir, _) = store_over_segments();
    let truth = truth(dir.path());
    fs::remove_file(segment_path(dir.path(), 2)).unwrap();
    let (verdict, failed) = open_damaged(dir.path(), &truth, "removed");
    assert!(failed > 0, "no read needed segment 2");
    let verdict = verdict.unwrap_or_default();
    assert!(verdict.contains("the directory holds"), "{verdict}");
    let opened = LogStore::open_with(dir.path(), lazy(Duration::from_millis(100)));
    assert!(
        matches!(opened, Err(Error::Corrupt { segment: 2, .. })),
        "{:?}",
        opened.map(|s| s.recovery_report().clone())
    );
}

/// Many readers hitting different closed segments right after open, while the store
/// appends, deletes, erases, backs up and closes: every read is the truth or an error.
#[test]
fn first_uses_of_closed_segments_race_writes_erasure_backup_and_close() {
    for round in 0..4 {
        let (dir, _) = store_over_segments();
        let truth = Arc::new(truth(dir.path()));
        let s = Arc::new(
            LogStore::open_with(
                dir.path(),
                lazy(Duration::ZERO).checkpoint_verification_delay(Duration::ZERO),
            )
            .unwrap(),
        );
        let deleted = Arc::new(AtomicBool::new(false));
        let mut readers = Vec::new();
        for r in 0..6 {
            let (s, truth, deleted) = (Arc::clone(&s), Arc::clone(&truth), Arc::clone(&deleted));
            readers.push(std::thread::spawn(move || {
                for pass in 0..40 {
                    let k = (r + pass) % IDS.len();
                    let id = ExecutionId::from(IDS[k]);
                    let was_deleted = deleted.load(Ordering::SeqCst);
                    match s.load_events_blocking(&id) {
                        Ok(events) if IDS[k] == "late" => {
                            assert!(events.starts_with(&truth[k]), "late: prefix");
                        }
                        Ok(events) if IDS[k] == "filler-3" && was_deleted => {
                            assert!(events.is_empty(), "filler-3 served after its deletion");
                        }
                        Ok(events) if IDS[k] == "filler-3" => {
                            assert!(events == truth[k] || events.is_empty(), "filler-3");
                        }
                        Ok(events) => assert!(events == truth[k], "round {round}: {id}"),
                        Err(Error::Closed) => return,
                        Err(_) if IDS[k] == "filler-3" => {}
                        Err(e) => panic!("round {round}: {id}: {e}"),
                    }
                }
            }));
        }
        let late = ExecutionId::from("late");
        for i in 1..20 {
            s.append_blocking(&late, &tenant(0), step_event(i)).unwrap();
        }
        assert!(
            s.delete_execution_blocking(&ExecutionId::from("filler-3"))
                .unwrap()
        );
        deleted.store(true, Ordering::SeqCst);
        let report = s.compact_now().unwrap();
        assert!(report.segments_rewritten > 0, "{report:?}");
        let backup = tempfile::tempdir().unwrap();
        let dest = backup.path().join("b");
        s.backup_to(&dest).unwrap();
        if round % 2 == 0 {
            s.close().unwrap();
        }
        for r in readers {
            r.join().unwrap();
        }
        drop(s);
        let b = LogStore::open_with(&dest, common::small_segments()).unwrap();
        let reopened = LogStore::open_with(dir.path(), lazy(Duration::ZERO)).unwrap();
        for (k, id) in IDS.iter().enumerate() {
            let id = ExecutionId::from(*id);
            let want = match IDS[k] {
                "filler-3" => Vec::new(),
                "late" => b.load_events_blocking(&id).unwrap(),
                _ => truth[k].clone(),
            };
            let backed = b.load_events_blocking(&id).unwrap_or_default();
            assert_eq!(backed, want, "backup {id}");
            let got = reopened.load_events_blocking(&id).unwrap_or_default();
            assert_eq!(got, want, "reopen {id}");
        }
        assert_eq!(
            b.load_events_blocking(&late).unwrap().len(),
            20,
            "backup: late"
        );
        wait_for_verdict(&reopened);
        assert_eq!(reopened.stats().checkpoint_refuted, None);
    }
}

mod power {
    //! The directory fsync a lazy open skips when the checkpoint covers every segment.

    use super::*;
    use execlog::fault::{Fault, Op, SimIo};

    const DIR: &str = "/s";
    const SEG1: &str = "/s/0000000001.seg";

    fn options(io: &SimIo) -> Options {
        Options::default()
            .segment_size_bytes(64 * 1024)
            .index_stride(2)
            .io(Arc::new(io.clone()))
    }

    fn ev(tag: u64) -> ExecutionEventData {
        ExecutionEventData::StepCompleted {
            step_id: StepId::from(format!("t{tag}")),
            output: Some("x".repeat(100)),
            duration_ms: 1,
        }
    }

    /// A clean close (checkpoint covering segment 1 to E, the seal's end), then a torn
    /// group past E as a crashed next session leaves it. The first open cuts it; the
    /// directory fsync after it removes `cut.pending` fails (k-th SyncDir), so open
    /// fails. The second open, lazy, finds a checkpoint that covers every segment with
    /// nothing cut and skips its directory fsync; it acknowledges an append at E. After
    /// a power cut the marker's removal may be undone: the redone cut must not erase
    /// the acknowledged append.
    fn failed_cut_then_lazy(seed: u64, k: u64, lazy: bool) -> Result<(), String> {
        let dir = Path::new(DIR);
        let e = ExecutionId::from("e");
        let t = TenantId::from("t");
        let sim = SimIo::new();
        let store = LogStore::open_with(dir, options(&sim)).unwrap();
        for i in 0..3 {
            store.append_blocking(&e, &t, ev(i)).unwrap();
        }
        store.close().unwrap();
        drop(store);
        // The torn group: a copy of the last event record, damaged, after the seal.
        let mut bytes = sim.read_file(Path::new(SEG1)).unwrap();
        let records = record_offsets(&bytes);
        let (last, seal) = (records[records.len() - 2], records[records.len() - 1]);
        let end = seal + (56 + le32(&bytes, seal + 4) as usize).next_multiple_of(8);
        let copy = bytes[last..seal].to_vec();
        bytes[end..end + copy.len()].copy_from_slice(&copy);
        bytes[end + 60] ^= 0xFF;
        sim.write_file(Path::new(SEG1), bytes);
        sim.fail_at(k, Op::SyncDir, Fault::Once);
        let first = LogStore::open_with(dir, options(&sim));
        sim.clear_faults();
        if first.is_ok() {
            return Ok(()); // this k did not hit the cut
        }
        drop(first);
        let second = options(&sim).verify_checkpoint_after_open(lazy);
        let store = LogStore::open_with(dir, second).map_err(|e| format!("second open: {e}"))?;
        let decoded_after = store.recovery_report().index_decoded_after_open;
        let seq = store.append_blocking(&e, &t, ev(9)).unwrap();
        let after = sim.power_loss(seed);
        drop(store);
        let got = LogStore::open_with(dir, options(&after).index_checkpoint(false))
            .and_then(|s| s.load_events_blocking(&e))
            .map_err(|err| err.to_string());
        match got {
            Ok(v) if v.len() as u64 >= seq => Ok(()),
            other => Err(format!(
                "lazy second open ({decoded_after}): acknowledged sequence {seq} lost: {:?}",
                other.map(|v| v.len())
            )),
        }
    }

    #[test]
    fn a_cut_whose_marker_removal_was_not_synced_is_not_redone_over_acknowledged_appends() {
        let mut bad = Vec::new();
        for seed in 0..8 {
            for k in 1..=3 {
                if let Err(why) = failed_cut_then_lazy(seed, k, true) {
                    bad.push(format!("seed {seed} k {k}: {why}"));
                }
            }
        }
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }

    /// Control: the same sequence with an ordinary second open (which fsyncs the
    /// directory) loses nothing, so the skipped fsync is the cause.
    #[test]
    fn control_an_ordinary_second_open_after_the_failed_cut_loses_nothing() {
        let mut bad = Vec::new();
        for seed in 0..8 {
            for k in 1..=3 {
                if let Err(why) = failed_cut_then_lazy(seed, k, false) {
                    bad.push(format!("seed {seed} k {k}: {why}"));
                }
            }
        }
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }
}
