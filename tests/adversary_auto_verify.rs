//! Adversarial review of the default ("auto") of `Options::verify_checkpoint_after_open`:
//! a read-write open verifies `checkpoint.idx` after it returns when the checkpoint's
//! header says it covers at least `VERIFY_AFTER_OPEN_FROM_BYTES` of records, and before
//! it otherwise (`open::verifies_after_open`). The threshold hook
//! (`Options::verify_after_open_from`) keeps the stores small.
//!
//! What it checks, whichever tier the (possibly forged) header chooses: reads never
//! serve bytes a full scan would not, a write is acknowledged only on an index a full
//! scan agrees with, and the next open answers as a full scan (or reports `Corrupt` for
//! damage to acknowledged bytes).
//! - Forged segment ends (digests and CRCs recomputed) that push a small store past the
//!   threshold, or pull a large one below it.
//! - A checkpoint that is absent, garbage, a directory, or of layout 2, with the
//!   threshold at 0 or 1.
//! - Damage to a record in a sealed segment of a store past the threshold.
//! - Crash images of a store past the threshold with running checkpoints: reopen with
//!   the default, read everything, append, reopen again.
//! - The threshold exactly at the covered size after a compaction rewrote segments.
//!
//! Pinned behaviour (no wrong answer served or acknowledged in any of these; the two
//! points the review found the documentation silent or wrong on are now documented):
//! - `a_layout_2_checkpoint_past_the_threshold_is_verified_before_open`: the decision
//!   reads the covered ends only from a layout 3 header (`saved_index::load_lazy`), so
//!   an earlier version's layout 2 checkpoint is verified before open at any size
//!   (close then rewrites it as layout 3), unless `verify_checkpoint_after_open(true)`.
//! - `damage_in_a_sealed_segment_past_the_threshold`: past the threshold, open returns
//!   `Ok` on damaged acknowledged bytes; the verdict poisons the store and the next
//!   open reports `Corrupt` (`LogStore::open_with`'s documentation).
//!
//! Not testable: an overflowing sum of the covered ends. Each end is at most
//! `u32::MAX` (`checkpoint::decode_digests`) and the digest count is a `u32`, so the
//! sum is below 2^64; a header claiming more digests than the file holds is refused
//! before the sum.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::segment_files::{record_offsets, segment_path, store_over_segments};
use common::verify_after_open::{recompute_crc, set_covered_end, wait_for_verdict};
use common::{crash_image, small_segments, step_event};
use execlog::*;

const CHECKPOINT: &str = "checkpoint.idx";

fn id(s: &str) -> ExecutionId {
    ExecutionId::from(s)
}

fn tenant(s: &str) -> TenantId {
    TenantId::from(s)
}

/// Small segments, stride 4, the default tier choice with the threshold at `from`.
fn auto(from: u64) -> Options {
    small_segments().verify_after_open_from(from)
}

/// Everything a store answers: each execution's events, and each tenant's list.
fn answers(s: &LogStore) -> String {
    let all: BTreeMap<_, _> = crash_image::everything(s)
        .into_iter()
        .map(|(id, events)| (id.to_string(), serde_json::to_string(&events).unwrap()))
        .collect();
    let mut out = format!("{all:#?}\n");
    for t in ["tenant-0", "tenant-1"] {
        let ids = s.list_executions_blocking(&tenant(t), 1000, 0).unwrap();
        out += &format!("{t}: {ids:?}\n");
    }
    out
}

/// The answers of a full scan of a copy of `dir`.
fn full_scan_answers(dir: &Path) -> String {
    let copy = crash_image::copy(dir);
    let s = LogStore::open_with(copy.path(), small_segments().index_checkpoint(false)).unwrap();
    answers(&s)
}

/// How many bytes of records the checkpoint of `dir` covers, by an eager open of a copy.
fn covered(dir: &Path) -> u64 {
    let copy = crash_image::copy(dir);
    let s = LogStore::open_with(
        copy.path(),
        small_segments().verify_checkpoint_after_open(false),
    )
    .unwrap();
    let report = s.recovery_report().clone();
    assert!(report.checkpoint_ignored.is_none(), "{report:?}");
    report.checkpoint_bytes
}

fn segments_covered(dir: &Path) -> u32 {
    let bytes = fs::read(dir.join(CHECKPOINT)).unwrap();
    u32::from_le_bytes(bytes[24..28].try_into().unwrap())
}

/// The last covered segment, and where each record it covers starts.
fn last_covered_records(dir: &Path) -> (u32, Vec<usize>) {
    let last = segments_covered(dir);
    let end = covered_end(dir, last);
    let segment = fs::read(segment_path(dir, last)).unwrap();
    (last, record_offsets(&segment[..end]))
}

fn covered_end(dir: &Path, n: u32) -> usize {
    let bytes = fs::read(dir.join(CHECKPOINT)).unwrap();
    let at = 40 + 12 * (n as usize - 1);
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize
}

/// Opens `dir` with `options`, reads everything (each read must be what `truth`
/// holds: compared as a whole when every read succeeds), appends one event to `late`
/// and waits for the verdict; returns whether the append was acknowledged. Then
/// checks that a full scan answers `truth` plus that append, if acknowledged.
fn open_read_append(dir: &Path, options: Options, truth: &str) -> Result<bool> {
    let s = LogStore::open_with(dir, options)?;
    // Reads before the verdict: right or refused, never wrong.
    if let Ok(now) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| answers(&s))) {
        let refuted = s.stats().checkpoint_refuted.is_some();
        assert!(refuted || now == truth, "served before the verdict:\n{now}");
    }
    let appended = s.append_blocking(&id("late"), &tenant("tenant-0"), step_event(99));
    wait_for_verdict(&s);
    match &appended {
        Ok(_) => assert_eq!(s.stats().checkpoint_refuted, None),
        Err(e) => assert!(matches!(e, Error::Poisoned { .. }), "{e:?}"),
    }
    drop(s);
    let after = full_scan_answers(dir);
    if appended.is_ok() {
        assert!(
            after.contains("output 99"),
            "acknowledged append lost:\n{after}"
        );
        assert_ne!(after, truth);
    } else {
        assert_eq!(after, truth, "a refused append changed the log");
    }
    Ok(appended.is_ok())
}

// ---------------------------------------------------------------------------------
// Forged sizes.
// ---------------------------------------------------------------------------------

/// The last covered segment's end pushed past its records (into the zeroed space of
/// the last segment file, digest recomputed) so that the sum crosses the threshold:
/// the after-open tier trusts it, and its verdict refutes it; nothing wrong is served
/// or acknowledged, and the next default open answers as a full scan.
#[test]
fn a_forged_end_past_the_records_pushes_a_small_store_past_the_threshold() {
    let (dir, _) = store_over_segments();
    let truth = full_scan_answers(dir.path());
    let real = covered(dir.path());
    let last = segments_covered(dir.path());
    let end = covered_end(dir.path(), last);
    let file_len = fs::metadata(segment_path(dir.path(), last)).unwrap().len() as usize;
    // Push as far as the file allows (at least a page past the records if it can).
    let forged = (end + 4096).min(file_len / 8 * 8);
    assert!(
        forged > end,
        "the last segment file ends at its records ({file_len})"
    );
    set_covered_end(dir.path(), last, forged);
    let threshold = real + (forged - end) as u64;

    // Below the forged size, the eager tier ignores the file.
    let eager = crash_image::copy(dir.path());
    let s = LogStore::open_with(eager.path(), auto(threshold + 1)).unwrap();
    assert!(!s.recovery_report().checkpoint_verification_deferred);
    assert!(s.recovery_report().checkpoint_ignored.is_some());
    assert_eq!(answers(&s), truth);
    drop(s);

    // At it, the tier after open.
    let image = crash_image::copy(dir.path());
    let acked = open_read_append(image.path(), auto(threshold), &truth).unwrap();
    let s = LogStore::open_with(image.path(), auto(threshold)).unwrap();
    wait_for_verdict(&s);
    assert_eq!(s.stats().checkpoint_refuted, None);
    let events = s.load_events_blocking(&id("late")).unwrap();
    assert_eq!(events.len(), if acked { 2 } else { 1 });
}

/// The last covered segment's end pulled back to an earlier record boundary (digest
/// recomputed) so that the sum falls below the threshold: the eager tier checks it,
/// ignores it, and the store answers as a full scan and takes appends.
#[test]
fn a_forged_end_before_the_last_records_pulls_a_store_below_the_threshold() {
    let (dir, _) = store_over_segments();
    let truth = full_scan_answers(dir.path());
    let real = covered(dir.path());
    let (last, starts) = last_covered_records(dir.path());
    for &cut in starts.iter().rev().take(3) {
        for forged_end in [cut, cut + 8] {
            let image = crash_image::copy(dir.path());
            set_covered_end(image.path(), last, forged_end);
            let s = LogStore::open_with(image.path(), auto(real)).unwrap();
            let report = s.recovery_report().clone();
            assert!(!report.checkpoint_verification_deferred, "{report:?}");
            assert!(report.checkpoint_ignored.is_some(), "{report:?}");
            drop(s);
            assert!(open_read_append(image.path(), auto(real), &truth).unwrap());
        }
    }
}

/// The same forgeries with the threshold low enough that the forged size stays above
/// it: the after-open tier. Reads right or refused, writes acknowledged only on a right
/// index, nothing lost.
#[test]
fn a_forged_end_before_the_last_records_above_the_threshold() {
    let (dir, _) = store_over_segments();
    let truth = full_scan_answers(dir.path());
    let (last, starts) = last_covered_records(dir.path());
    for &cut in starts.iter().rev().take(3) {
        for forged_end in [cut, cut + 8] {
            let image = crash_image::copy(dir.path());
            set_covered_end(image.path(), last, forged_end);
            let opened = open_read_append(image.path(), auto(1), &truth);
            // Whatever the first open said, the next default open is right.
            let s = LogStore::open_with(image.path(), auto(1))
                .unwrap_or_else(|e| panic!("end {forged_end} (first open {opened:?}): {e:?}"));
            wait_for_verdict(&s);
            assert_eq!(s.stats().checkpoint_refuted, None, "end {forged_end}");
        }
    }
}

// ---------------------------------------------------------------------------------
// Checkpoints the decision cannot read.
// ---------------------------------------------------------------------------------

/// No checkpoint, a garbage one, or a directory in its place, with the threshold at 0
/// (every size is past it): open works and answers as a full scan, and takes appends.
#[test]
fn an_absent_or_unreadable_checkpoint_with_the_threshold_at_zero() {
    let (dir, _) = store_over_segments();
    let truth = full_scan_answers(dir.path());
    for what in ["absent", "garbage", "directory", "empty"] {
        let image = crash_image::copy(dir.path());
        let path = image.path().join(CHECKPOINT);
        fs::remove_file(&path).unwrap();
        match what {
            "garbage" => fs::write(&path, vec![0xA5; 4096]).unwrap(),
            "directory" => fs::create_dir(&path).unwrap(),
            "empty" => fs::write(&path, b"").unwrap(),
            _ => {}
        }
        let acked = open_read_append(image.path(), auto(0), &truth)
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
        assert!(acked, "{what}");
        if what == "directory" {
            fs::remove_dir(&path).unwrap();
        }
        let s = LogStore::open_with(image.path(), auto(0)).unwrap();
        wait_for_verdict(&s);
        assert_eq!(s.stats().checkpoint_refuted, None, "{what}");
        assert_eq!(s.load_events_blocking(&id("late")).unwrap().len(), 2);
    }
}

/// A layout 2 checkpoint (written by an earlier version) is verified before open by
/// default at any size, although `verify_checkpoint_after_open(true)` would defer it:
/// the decision reads the covered ends only from a layout 3 header. Close rewrites it
/// as layout 3, and the next default open past the threshold defers. Pinned, as the
/// behaviour of the first open after an upgrade.
#[test]
fn a_layout_2_checkpoint_past_the_threshold_is_verified_before_open() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format_v3");
    let work = tempfile::tempdir().unwrap();
    for name in ["0000000001.seg", "0000000002.seg"] {
        fs::copy(fixture.join(name), work.path().join(name)).unwrap();
    }
    fs::copy(
        fixture.join("checkpoint_layout2.idx"),
        work.path().join(CHECKPOINT),
    )
    .unwrap();
    let options = || Options::default().verify_after_open_from(1);
    let s = LogStore::open_with(work.path(), options()).unwrap();
    let report = s.recovery_report().clone();
    assert!(report.checkpoint_ignored.is_none(), "{report:?}");
    assert!(report.checkpoint_bytes > 1, "{report:?}");
    assert!(
        !report.checkpoint_verification_deferred,
        "layout 2 deferred by default: {report:?}"
    );
    s.close().unwrap();
    let s = LogStore::open_with(work.path(), options()).unwrap();
    assert!(s.recovery_report().checkpoint_verification_deferred);
    assert!(s.recovery_report().index_decoded_after_open);
    wait_for_verdict(&s);
    assert_eq!(s.stats().checkpoint_refuted, None);
}

// ---------------------------------------------------------------------------------
// Damage and crashes past the threshold.
// ---------------------------------------------------------------------------------

/// One byte of an event's payload flipped in a sealed segment of a store past the
/// threshold, opened with the default: reads never return the wrong bytes, the verdict
/// refutes the checkpoint, writes are refused, and the next default open reports
/// `Corrupt` (the checkpoint is gone, so it checks every record).
#[test]
fn damage_in_a_sealed_segment_past_the_threshold() {
    for target in [1u32, 2, 0] {
        let (dir, segments) = store_over_segments();
        // 0: the last segment, the one appends continue in (covered up to its seal).
        let target = if target == 0 { segments as u32 } else { target };
        let truth = full_scan_answers(dir.path());
        let path = segment_path(dir.path(), target);
        let mut bytes = fs::read(&path).unwrap();
        let starts = record_offsets(&bytes);
        let victim = starts[starts.len() / 2];
        // Well inside the record's body (its payload), past the 56-byte header.
        let len = u32::from_le_bytes(bytes[victim + 4..victim + 8].try_into().unwrap()) as usize;
        let at = victim + 56 + len / 2;
        bytes[at] ^= 0x20;
        fs::write(&path, &bytes).unwrap();

        let s = LogStore::open_with(
            dir.path(),
            auto(1).checkpoint_verification_delay(Duration::from_millis(300)),
        )
        .unwrap();
        assert!(s.recovery_report().checkpoint_verification_deferred);
        let truth_map = truth.clone();
        let ids: Vec<_> = ["early", "late"]
            .into_iter()
            .map(String::from)
            .chain((0..7).map(|i| format!("filler-{i}")))
            .collect();
        for name in &ids {
            if let Ok(events) = s.load_events_blocking(&id(name)) {
                let json = serde_json::to_string(&events).unwrap();
                assert!(
                    truth_map.contains(&format!("{json:?}")),
                    "segment {target}: {name} served with bytes a full scan never had"
                );
            }
        }
        let appended = s.append_blocking(&id("late"), &tenant("tenant-0"), step_event(1));
        assert!(
            matches!(appended, Err(Error::Poisoned { .. })),
            "segment {target}: {appended:?}"
        );
        wait_for_verdict(&s);
        // The refutation names the damaged bytes, as the next open will.
        let refuted = s.stats().checkpoint_refuted.unwrap_or_default();
        let damaged =
            format!("segment {target}: checksum of the records differs; bytes {victim}..");
        assert!(refuted.contains(&damaged), "{refuted}");
        drop(s);
        assert!(!dir.path().join(CHECKPOINT).exists());
        for options in [auto(1), Options::default()] {
            let reopened = LogStore::open_with(dir.path(), options);
            assert!(
                matches!(reopened, Err(Error::Corrupt { .. })),
                "segment {target}: {:?}",
                reopened.map(|_| ())
            );
        }
    }
}

/// Crash images of a live store past the threshold, with running checkpoints every few
/// KiB, taken as it grows over several segments: each reopened with the default answers
/// as a full scan of the image, takes an append, and answers with it after a reopen.
#[test]
fn crash_images_past_the_threshold_answer_as_a_full_scan() {
    let dir = tempfile::tempdir().unwrap();
    let live = LogStore::open_with(
        dir.path(),
        small_segments().index_checkpoint_interval_bytes(Some(8192)),
    )
    .unwrap();
    let mut images = Vec::new();
    for i in 0..240u64 {
        let k = if i > 100 && i % 5 == 3 { 4 } else { i % 5 };
        live.append_blocking(
            &id(&format!("run-{k}")),
            &tenant(if k % 2 == 0 { "tenant-0" } else { "tenant-1" }),
            crash_image::kilobyte_event(i),
        )
        .unwrap();
        if i == 100 {
            assert!(live.delete_execution_blocking(&id("run-3")).unwrap());
        }
        if i % 40 == 39 {
            let started = Instant::now();
            while live.stats().index_checkpoints < (i / 40 + 1) {
                assert!(started.elapsed() < Duration::from_secs(30));
                std::thread::sleep(Duration::from_millis(2));
            }
            // A tail after the running checkpoint.
            live.append_blocking(&id("run-0"), &tenant("tenant-0"), step_event(i))
                .unwrap();
            images.push(crash_image::copy(dir.path()));
        }
    }
    live.close().unwrap();
    for (n, image) in images.iter().enumerate() {
        assert!(image.path().join(CHECKPOINT).exists(), "image {n}");
        let truth = full_scan_answers(image.path());
        let s = LogStore::open_with(image.path(), auto(1)).unwrap();
        assert!(
            s.recovery_report().checkpoint_verification_deferred,
            "image {n}: {:?}",
            s.recovery_report()
        );
        assert_eq!(answers(&s), truth, "image {n}: before the verdict");
        let next = s
            .append_blocking(&id("run-0"), &tenant("tenant-0"), step_event(1000))
            .unwrap();
        wait_for_verdict(&s);
        assert_eq!(s.stats().checkpoint_refuted, None, "image {n}");
        s.close().unwrap();
        let s = LogStore::open_with(image.path(), auto(1)).unwrap();
        assert_eq!(
            s.get_latest_sequence_blocking(&id("run-0")).unwrap(),
            Some(next)
        );
        let after = answers(&s);
        wait_for_verdict(&s);
        assert_eq!(s.stats().checkpoint_refuted, None, "image {n}");
        drop(s);
        assert_eq!(after, full_scan_answers(image.path()), "image {n}");
    }
}

// ---------------------------------------------------------------------------------
// The threshold after a compaction.
// ---------------------------------------------------------------------------------

/// After a compaction erased deleted executions from sealed segments, the checkpoint
/// close writes covers the same bytes as before (erasure zeroes in place), and the
/// default turns to after open at exactly that size, answering as a full scan.
#[test]
fn the_threshold_exactly_at_the_covered_size_after_a_compaction() {
    let (dir, _) = store_over_segments();
    let before = covered(dir.path());
    let s = LogStore::open_with(dir.path(), small_segments()).unwrap();
    for i in [1, 3, 5] {
        assert!(
            s.delete_execution_blocking(&id(&format!("filler-{i}")))
                .unwrap()
        );
    }
    let report = s.compact_now().unwrap();
    assert!(report.segments_rewritten > 0, "{report:?}");
    s.close().unwrap();
    let after = covered(dir.path());
    assert!(after >= before, "{before} -> {after}");
    let truth = full_scan_answers(dir.path());

    let s = LogStore::open_with(dir.path(), auto(after + 1)).unwrap();
    assert!(!s.recovery_report().checkpoint_verification_deferred);
    assert_eq!(answers(&s), truth);
    s.close().unwrap();

    let s = LogStore::open_with(dir.path(), auto(after)).unwrap();
    assert!(s.recovery_report().checkpoint_verification_deferred);
    assert_eq!(answers(&s), truth);
    s.append_blocking(&id("late"), &tenant("tenant-0"), step_event(1))
        .unwrap();
    wait_for_verdict(&s);
    assert_eq!(s.stats().checkpoint_refuted, None);
    s.close().unwrap();
    let s = LogStore::open_with(dir.path(), auto(after)).unwrap();
    assert_eq!(s.load_events_blocking(&id("late")).unwrap().len(), 2);
}

/// A crash image past the threshold whose tail after the running checkpoint ends in a
/// torn record (its body damaged, nothing after it): the default open cuts it as an
/// ordinary open does and answers as a full scan of the same torn image; it takes an
/// append, and the reopen serves it.
#[test]
fn a_torn_tail_after_a_running_checkpoint_past_the_threshold_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let live = LogStore::open_with(
        dir.path(),
        small_segments().index_checkpoint_interval_bytes(Some(8192)),
    )
    .unwrap();
    for i in 0..30u64 {
        live.append_blocking(
            &id("run"),
            &tenant("tenant-0"),
            crash_image::kilobyte_event(i),
        )
        .unwrap();
    }
    let started = Instant::now();
    while live.stats().index_checkpoints == 0 {
        assert!(started.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(2));
    }
    for i in 0..3u64 {
        live.append_blocking(&id("tail"), &tenant("tenant-1"), step_event(i))
            .unwrap();
    }
    let image = crash_image::copy(dir.path());
    live.close().unwrap();

    let last = (1..)
        .take_while(|&n| segment_path(image.path(), n).exists())
        .last()
        .unwrap();
    let path = segment_path(image.path(), last);
    let mut bytes = fs::read(&path).unwrap();
    let starts = record_offsets(&bytes);
    let torn = *starts.last().unwrap();
    assert!(
        torn as u64 >= covered_end(image.path(), segments_covered(image.path())) as u64
            || segments_covered(image.path()) < last,
        "the last record is after the checkpoint"
    );
    bytes[torn + 60] ^= 0xFF;
    fs::write(&path, &bytes).unwrap();

    let truth = full_scan_answers(image.path());
    assert!(
        !truth.contains("output 2"),
        "the full scan cuts the torn record"
    );
    let s = LogStore::open_with(image.path(), auto(1)).unwrap();
    let report = s.recovery_report().clone();
    assert!(report.truncated_at.is_some(), "{report:?}");
    assert_eq!(answers(&s), truth);
    assert_eq!(
        s.append_blocking(&id("tail"), &tenant("tenant-1"), step_event(2))
            .unwrap(),
        3
    );
    wait_for_verdict(&s);
    assert_eq!(s.stats().checkpoint_refuted, None);
    s.close().unwrap();
    let s = LogStore::open_with(image.path(), auto(1)).unwrap();
    assert_eq!(s.load_events_blocking(&id("tail")).unwrap().len(), 3);
    assert_eq!(s.load_events_blocking(&id("run")).unwrap().len(), 30);
}

/// A digest added to the header for a segment that is not there, with the largest end
/// a digest may give (the sum far past the real threshold): the after-open tiers find
/// the segment missing and the eager tier ignores the file; the store answers as a
/// full scan and takes appends. With the real threshold, no hook.
#[test]
fn a_forged_digest_for_a_missing_segment_crosses_the_real_threshold() {
    let (dir, segments) = store_over_segments();
    let truth = full_scan_answers(dir.path());
    let mut bytes = fs::read(dir.path().join(CHECKPOINT)).unwrap();
    let count = segments_covered(dir.path());
    assert_eq!(count as usize, segments);
    let at = 40 + 12 * count as usize;
    let end = u64::from(u32::MAX) / 8 * 8;
    let digest = [&end.to_le_bytes()[..], &[0u8; 4]].concat();
    bytes.splice(at..at, digest);
    bytes[24..28].copy_from_slice(&(count + 1).to_le_bytes());
    recompute_crc(&mut bytes);
    fs::write(dir.path().join(CHECKPOINT), &bytes).unwrap();
    let acked = open_read_append(dir.path(), small_segments(), &truth).unwrap();
    assert!(acked);
    let s = LogStore::open_with(dir.path(), small_segments()).unwrap();
    wait_for_verdict(&s);
    assert_eq!(s.stats().checkpoint_refuted, None);
    assert_eq!(s.load_events_blocking(&id("late")).unwrap().len(), 2);
}
