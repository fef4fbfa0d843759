//! Adversarial review of what can happen to `checkpoint.idx` while an open that left
//! its index to decode and its checkpoint to verify is running: the index's decode
//! (`lazy_index::decode`, through open's map of the file) and then the verifier's own
//! decode of the path (`deferred_verification::verify`, the walk's copy), and of open's
//! single map of the checkpoint for both the tier choice and the lazy pass
//! (`open::pass`).
//!
//! The decode hold (`Options::checkpoint_decode_hold`) keeps the index's decode waiting
//! with the store lock held: what happens to `checkpoint.idx` meanwhile lands before
//! either decode reads it.
//!
//! - `a_checkpoint_rewritten_in_place_during_the_decode_is_never_served`: the file is
//!   rewritten in place (same length, a forgery with its CRC recomputed) while the
//!   decode waits. Its map shows the forgery, so the decode must refuse a file whose
//!   CRC is not the one open trusted. (Found when the verifier's decode ran on a thread
//!   beside the index's, tried and not kept: the walk then verified the good bytes it
//!   had read first while the forged ones became the index.)
//! - Whatever the path holds meanwhile (removed, renamed over with the same bytes,
//!   garbage, a forgery, a directory) no wrong answer is served and the next open
//!   answers as a full scan; close or drop during the decode returns at once, gives no
//!   verdict, keeps the file and leaves no thread; a checkpoint that does not decode is
//!   refuted; open and close cycles leave no descriptor, map or thread behind; a header
//!   forged past the threshold sends no read-only open or reader to the lazy tier.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::crash_image::kilobyte_event;
use common::step_event;
use common::verify_after_open::{after_open, recompute_crc, swap_ids, wait_for_verdict};
use execlog::*;

const CHECKPOINT: &str = "checkpoint.idx";

/// The tests count the process's threads, descriptors and maps: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn id(s: &str) -> ExecutionId {
    ExecutionId::from(s)
}

fn tenant(n: u32) -> TenantId {
    TenantId::from(format!("tenant-{n}"))
}

/// The five executions of `common::verify_after_open::five_executions`.
fn store() -> tempfile::TempDir {
    common::verify_after_open::five_executions()
}

const IDS: [&str; 5] = ["run-a", "run-b", "run-c", "gone", "fork-a"];

/// Everything the store answers about its executions and tenants.
fn answers(s: &LogStore) -> String {
    let mut out = String::new();
    for t in 0..2 {
        let ids = s.list_executions_blocking(&tenant(t), 100, 0).unwrap();
        out += &format!("{t}: {ids:?}\n");
    }
    for name in IDS {
        let events = s.load_events_blocking(&id(name)).unwrap();
        out += &serde_json::to_string(&events).unwrap();
        out += "\n";
    }
    out
}

fn full_scan_answers(dir: &Path) -> String {
    let options = Options::default().index_stride(4).index_checkpoint(false);
    let s = LogStore::open_with(dir, options).unwrap();
    answers(&s)
}

/// Open's options: the checkpoint trusted, its index decoded after open, the decode
/// holding the lock for `hold`.
fn held(hold: Duration) -> Options {
    after_open(Duration::ZERO).checkpoint_decode_hold(hold)
}

/// Threads of this process whose name starts with `prefix` (names are cut to 15
/// bytes).
fn threads_named(prefix: &str) -> usize {
    fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end().starts_with(prefix))
        .count()
}

/// Waits (at most 5 s) until no thread of a store is left.
fn no_store_threads_left() -> bool {
    let started = Instant::now();
    while threads_named("execlog-") > 0 {
        if started.elapsed() > Duration::from_secs(5) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

fn canonical(dir: &Path) -> PathBuf {
    fs::canonicalize(dir).unwrap()
}

/// Descriptors of this process open on files in `dir`.
fn fds_into(dir: &Path) -> Vec<PathBuf> {
    let dir = canonical(dir);
    fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.starts_with(&dir))
        .collect()
}

/// Lines of this process's memory maps naming a file in `dir`.
fn maps_into(dir: &Path) -> Vec<String> {
    let dir = canonical(dir).display().to_string();
    fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&dir))
        .map(str::to_string)
        .collect()
}

/// A while into the decode's hold: what is done to the file after it lands later in
/// the window than what is done at once after open.
fn into_the_hold() {
    std::thread::sleep(Duration::from_millis(100));
}

/// The file is rewritten in place with a forgery of the same length (two executions'
/// ids swapped, directory and CRC recomputed) while the index's decode waits to read it
/// through open's map of the same inode: the forgery is never served or written to.
#[test]
fn a_checkpoint_rewritten_in_place_during_the_decode_is_never_served() {
    let _serial = serial();
    let dir = store();
    let truth = full_scan_answers(dir.path());
    let path = dir.path().join(CHECKPOINT);
    let good = fs::read(&path).unwrap();
    swap_ids(dir.path(), "run-a", "run-c");
    let forged = fs::read(&path).unwrap();
    assert_eq!(forged.len(), good.len());
    fs::write(&path, &good).unwrap();
    // The verification waits a minute after the decode: a refutation before then is
    // the decode's own.
    let options =
        held(Duration::from_millis(1500)).checkpoint_verification_delay(Duration::from_secs(60));
    let s = LogStore::open_with(dir.path(), options).unwrap();
    assert!(s.recovery_report().index_decoded_after_open);
    into_the_hold();
    assert!(!s.index_decoded(), "the hold ended before the rewrite");
    // In place: the same inode, the same length (no truncation to fault the maps).
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&forged, 0).unwrap();
    drop(file);
    let started = Instant::now();
    while !s.index_decoded() {
        assert!(started.elapsed() < Duration::from_secs(10), "no decode");
        std::thread::sleep(Duration::from_millis(5));
    }
    let refuted = s.stats().checkpoint_refuted.unwrap_or_default();
    assert!(
        refuted.contains("changed in place"),
        "the decode took the bytes written in place: {refuted:?}"
    );
    for name in ["run-a", "run-c"] {
        let read = s.load_events_blocking(&id(name));
        assert!(
            matches!(read, Err(Error::Poisoned { .. })),
            "{name}: {read:?}"
        );
    }
    let appended = s.append_blocking(&id("run-a"), &tenant(0), step_event(10));
    assert!(
        matches!(appended, Err(Error::Poisoned { .. })),
        "{appended:?}"
    );
    drop(s);
    let reopened = LogStore::open(dir.path()).unwrap();
    assert_eq!(answers(&reopened), truth);
}

/// What can be at the checkpoint's path.
#[derive(Debug, Clone, Copy)]
enum Put {
    Removed,
    SameBytesRenamedOver,
    GarbageRenamedOver,
    ForgeryRenamedOver,
    Directory,
}

const PUTS: [Put; 5] = [
    Put::Removed,
    Put::SameBytesRenamedOver,
    Put::GarbageRenamedOver,
    Put::ForgeryRenamedOver,
    Put::Directory,
];

fn put(dir: &Path, what: Put, good: &[u8], forged: &[u8]) {
    let path = dir.join(CHECKPOINT);
    let staged = dir.join("staged");
    let rename_over = |bytes: &[u8]| {
        fs::write(&staged, bytes).unwrap();
        fs::rename(&staged, &path).unwrap();
    };
    match what {
        Put::Removed => fs::remove_file(&path).unwrap(),
        Put::SameBytesRenamedOver => rename_over(good),
        Put::GarbageRenamedOver => rename_over(&vec![0xa5; good.len()]),
        Put::ForgeryRenamedOver => rename_over(forged),
        Put::Directory => {
            fs::remove_file(&path).unwrap();
            fs::create_dir(&path).unwrap();
        }
    }
}

/// Each of `PUTS` at the checkpoint's path at once after open or a while later, while the decode holds
/// the lock: a verdict comes, a good one serves exactly what a full scan does, a
/// refutation refuses every read, close returns promptly, nothing is left running, and
/// the next open (the default) answers as a full scan.
fn what_the_path_holds_changes_no_answer(into_the_window: bool) {
    let _serial = serial();
    for what in PUTS {
        let dir = store();
        let truth = full_scan_answers(dir.path());
        let good = fs::read(dir.path().join(CHECKPOINT)).unwrap();
        swap_ids(dir.path(), "run-a", "run-c");
        let forged = fs::read(dir.path().join(CHECKPOINT)).unwrap();
        fs::write(dir.path().join(CHECKPOINT), &good).unwrap();
        let s = LogStore::open_with(dir.path(), held(Duration::from_millis(200))).unwrap();
        assert!(s.recovery_report().index_decoded_after_open, "{what:?}");
        if into_the_window {
            into_the_hold();
        }
        put(dir.path(), what, &good, &forged);
        wait_for_verdict(&s);
        match s.stats().checkpoint_refuted {
            None => assert_eq!(answers(&s), truth, "{what:?}: a good verdict"),
            Some(why) => {
                for name in IDS {
                    let read = s.load_events_blocking(&id(name));
                    assert!(
                        matches!(read, Err(Error::Poisoned { .. })),
                        "{what:?}: refuted ({why}), but {name} reads {read:?}"
                    );
                }
            }
        }
        let started = Instant::now();
        // Close writes no checkpoint over a directory: its error is not the point.
        let closed = s.close();
        assert!(started.elapsed() < Duration::from_secs(5), "{what:?}");
        if !matches!(what, Put::Directory) {
            closed.unwrap();
        }
        drop(s);
        assert!(no_store_threads_left(), "{what:?}: a thread outlived close");
        assert!(fds_into(dir.path()).is_empty(), "{what:?}");
        let reopened = LogStore::open(dir.path()).unwrap();
        assert_eq!(answers(&reopened), truth, "{what:?}: the next open");
    }
}

#[test]
fn what_the_path_holds_at_once_after_open_changes_no_answer() {
    what_the_path_holds_changes_no_answer(false);
}

#[test]
fn what_the_path_holds_later_in_the_decode_changes_no_answer() {
    what_the_path_holds_changes_no_answer(true);
}

/// Close, or drop, while the decode holds the lock, at once or a while into the hold:
/// prompt, no verdict, the file as it was, no thread left; the next open verifies it.
#[test]
fn close_or_drop_during_the_decode_is_no_verdict() {
    let _serial = serial();
    for (round, (wait, close)) in [(false, true), (true, true), (false, false), (true, false)]
        .into_iter()
        .enumerate()
    {
        let dir = store();
        let before = fs::read(dir.path().join(CHECKPOINT)).unwrap();
        let s = LogStore::open_with(dir.path(), held(Duration::from_secs(60))).unwrap();
        assert!(s.checkpoint_unverified(), "round {round}");
        if wait {
            into_the_hold();
        }
        let started = Instant::now();
        if close {
            s.close().unwrap();
            assert_eq!(s.stats().checkpoint_refuted, None, "round {round}");
            let append = s.append_blocking(&id("run-a"), &tenant(0), step_event(10));
            assert!(matches!(append, Err(Error::Closed)), "{append:?}");
        }
        drop(s);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "round {round}: close waited out the hold"
        );
        assert!(no_store_threads_left(), "round {round}");
        assert_eq!(
            fs::read(dir.path().join(CHECKPOINT)).unwrap(),
            before,
            "round {round}: the checkpoint changed"
        );
        let s = LogStore::open_with(dir.path(), after_open(Duration::ZERO)).unwrap();
        assert!(s.recovery_report().index_decoded_after_open);
        wait_for_verdict(&s);
        assert_eq!(s.stats().checkpoint_refuted, None, "round {round}");
        assert_eq!(s.load_events_blocking(&id("run-a")).unwrap().len(), 10);
    }
}

/// A checkpoint whose header and trailer hold but whose body does not decode (a byte
/// of the executions flipped, the CRC left): open takes the lazy tier, the decode
/// refutes it. Reads and writes are poisoned, the file is
/// removed, close is prompt and leaves no thread; the next open scans.
#[test]
fn a_refutation_in_the_decode() {
    let _serial = serial();
    let dir = store();
    let truth = full_scan_answers(dir.path());
    let path = dir.path().join(CHECKPOINT);
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.windows(5).position(|w| w == b"run-b").unwrap();
    bytes[at] ^= 0x20;
    fs::write(&path, &bytes).unwrap();
    let s = LogStore::open_with(dir.path(), after_open(Duration::ZERO)).unwrap();
    assert!(s.recovery_report().index_decoded_after_open);
    wait_for_verdict(&s);
    let why = s.stats().checkpoint_refuted;
    assert!(
        why.as_deref()
            .is_some_and(|w| w.contains("does not decode")),
        "{why:?}"
    );
    let read = s.load_events_blocking(&id("run-a"));
    assert!(matches!(read, Err(Error::Poisoned { .. })), "{read:?}");
    let append = s.append_blocking(&id("run-a"), &tenant(0), step_event(10));
    assert!(matches!(append, Err(Error::Poisoned { .. })), "{append:?}");
    assert!(!path.exists(), "a refuted checkpoint stays");
    let started = Instant::now();
    drop(s);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(no_store_threads_left());
    let reopened = LogStore::open(dir.path()).unwrap();
    let said = reopened.recovery_report().checkpoint_ignored.clone();
    assert!(
        said.as_deref()
            .is_some_and(|w| w.contains("does not decode")),
        "the next open says why it read every record: {said:?}"
    );
    assert_eq!(answers(&reopened), truth);
}

/// Many lazy opens, each closed or dropped at a different moment (at once, after reads
/// from the directory, after the verdict, after an append): after each, no descriptor
/// or map of the store's files and no store thread is left.
#[test]
fn open_close_cycles_leave_no_descriptor_map_or_thread() {
    let _serial = serial();
    let dir = store();
    for cycle in 0..24u64 {
        let s = LogStore::open_with(dir.path(), after_open(Duration::ZERO)).unwrap();
        assert!(
            s.recovery_report().index_decoded_after_open,
            "cycle {cycle}: {:?}",
            s.recovery_report()
        );
        match cycle % 4 {
            0 => {}
            1 => {
                s.load_events_blocking(&id("run-b")).unwrap();
            }
            2 => wait_for_verdict(&s),
            _ => {
                s.append_blocking(&id("run-c"), &tenant(0), step_event(100 + cycle))
                    .unwrap();
            }
        }
        if cycle % 2 == 0 {
            s.close().unwrap();
        }
        drop(s);
        assert!(no_store_threads_left(), "cycle {cycle}");
        assert_eq!(fds_into(dir.path()), Vec::<PathBuf>::new(), "cycle {cycle}");
        assert_eq!(maps_into(dir.path()), Vec::<String>::new(), "cycle {cycle}");
    }
    let s = LogStore::open(dir.path()).unwrap();
    assert_eq!(s.load_events_blocking(&id("run-c")).unwrap().len(), 3 + 6);
}

/// While a store opened lazily stays open, the checkpoint file open mapped stays mapped
/// (the directory of `LazyIndex`), after the decode and after running checkpoints
/// replaced the file, so that its blocks stay allocated until close (reported, low
/// severity). What is checked: running checkpoints pin no further file, and the map
/// goes with the store.
#[test]
fn running_checkpoints_after_a_lazy_open_pin_at_most_the_file_open_mapped() {
    let _serial = serial();
    let dir = store();
    let options = after_open(Duration::ZERO).index_checkpoint_interval_bytes(Some(4 << 10));
    let s = LogStore::open_with(dir.path(), options).unwrap();
    assert!(s.recovery_report().index_decoded_after_open);
    wait_for_verdict(&s);
    let started = Instant::now();
    let mut i = 0;
    while s.stats().index_checkpoints < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no running checkpoints"
        );
        s.append_blocking(&id("run-b"), &tenant(1), kilobyte_event(i))
            .unwrap();
        i += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    let pinned: Vec<String> = maps_into(dir.path())
        .into_iter()
        .filter(|l| l.contains(CHECKPOINT) && l.ends_with("(deleted)"))
        .collect();
    assert!(pinned.len() <= 1, "{pinned:?}");
    drop(s);
    assert_eq!(maps_into(dir.path()), Vec::<String>::new());
    assert_eq!(fds_into(dir.path()), Vec::<PathBuf>::new());
}

/// Sets segment 1's covered end in the header to 2 GiB (past the default threshold,
/// past the file), the directory, trailer and CRC recomputed.
fn forge_past_the_threshold(dir: &Path) {
    let path = dir.join(CHECKPOINT);
    let mut bytes = fs::read(&path).unwrap();
    assert_eq!(u32::from_le_bytes(bytes[24..28].try_into().unwrap()), 1);
    bytes[40..48].copy_from_slice(&(2u64 << 30).to_le_bytes());
    recompute_crc(&mut bytes);
    fs::write(&path, bytes).unwrap();
}

/// A header claiming 2 GiB of covered records: read-only opens and readers never take
/// a lazy or deferred tier (no verify thread), a read-write open with the default,
/// `true` or `false` ignores the file before it returns; all answer as a full scan.
#[test]
fn a_header_forged_past_the_threshold_reaches_no_lazy_tier() {
    let _serial = serial();
    let dir = store();
    let truth = full_scan_answers(dir.path());
    forge_past_the_threshold(dir.path());
    for reader in [false, true] {
        let s = match reader {
            false => LogStore::open_read_only(dir.path()).unwrap(),
            true => LogStore::open_reader(dir.path()).unwrap(),
        };
        let report = s.recovery_report();
        assert!(
            !report.checkpoint_verification_deferred && !report.index_decoded_after_open,
            "reader {reader}: {report:?}"
        );
        assert!(report.checkpoint_ignored.is_some(), "reader {reader}");
        assert_eq!(threads_named("execlog-verify"), 0, "reader {reader}");
        assert_eq!(answers(&s), truth, "reader {reader}");
    }
    for choice in [None, Some(true), Some(false)] {
        let copy = common::crash_image::copy(dir.path());
        let mut options = Options::default().index_stride(4);
        if let Some(on) = choice {
            options = options.verify_checkpoint_after_open(on);
        }
        let s = LogStore::open_with(copy.path(), options).unwrap();
        let report = s.recovery_report().clone();
        assert!(
            !report.checkpoint_verification_deferred && report.checkpoint_ignored.is_some(),
            "{choice:?}: {report:?}"
        );
        assert_eq!(answers(&s), truth, "{choice:?}");
        assert!(!s.checkpoint_unverified());
    }
}
