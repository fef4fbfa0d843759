//! Adversarial tests of the lifecycle features (issue 15) on the embedded engine:
//! forged erased spans, erasure racing itself and close.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use execlog::*;

const HEADER_LEN: usize = 56;
const KIND_ERASED_SPAN: u16 = 6;

fn event(i: u64, pad: usize) -> ExecutionEventData {
    ExecutionEventData::StepCompleted {
        step_id: StepId::from(format!("step-{i}")),
        output: Some(format!("{i}:{}", "x".repeat(pad))),
        duration_ms: i,
    }
}

fn opts() -> Options {
    Options::default()
        .segment_size_bytes(256 << 10)
        .erasure_interval(None)
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Every record of a segment file: (offset, kind, body_len).
fn records(bytes: &[u8]) -> Vec<(usize, u16, usize)> {
    let mut out = Vec::new();
    let mut at = 32;
    while at + HEADER_LEN <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        let kind = u16::from_le_bytes(bytes[at + 48..at + 50].try_into().unwrap());
        out.push((at, kind, len));
        at += (HEADER_LEN + len).next_multiple_of(8);
    }
    out
}

/// Re-stamps the CRC of the record at `at`.
fn restamp(bytes: &mut [u8], at: usize) {
    let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
    let crc = crc32fast::hash(&bytes[at + 4..at + HEADER_LEN + len]);
    bytes[at..at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// A closed store whose first segment holds an erased span of a deleted execution
/// ("victim", 40 events in one batch) between records of a live one. Returns the
/// path of the segment holding the span and the span's offset.
fn store_with_span(dir: &Path) -> (PathBuf, usize) {
    let store = LogStore::open_with(dir, opts()).unwrap();
    let t = TenantId::from("t");
    let live = ExecutionId::from("live");
    let victim = ExecutionId::from("victim");
    store.append_blocking(&live, &t, event(0, 10)).unwrap();
    store
        .append_batch_blocking(&victim, &t, (0..40).map(|i| event(i, 200)).collect())
        .unwrap();
    store.append_blocking(&live, &t, event(1, 10)).unwrap();
    assert!(store.delete_execution_blocking(&victim).unwrap());
    let report = store.compact_now().unwrap();
    assert_eq!(report.records_erased, 40, "{report:?}");
    store.close().unwrap();
    drop(store);
    for seg in segment_files(dir) {
        let bytes = fs::read(&seg).unwrap();
        if let Some(&(at, _, _)) = records(&bytes)
            .iter()
            .find(|(_, kind, _)| *kind == KIND_ERASED_SPAN)
        {
            return (seg, at);
        }
    }
    panic!("no erased span written");
}

/// Rewrites the last position named in the span's body (body bytes 8..16).
fn forge_span_last_pos(dir: &Path, packed: u64) {
    let (seg, at) = store_with_span(dir);
    let mut bytes = fs::read(&seg).unwrap();
    let body = at + HEADER_LEN;
    bytes[body + 8..body + 16].copy_from_slice(&packed.to_le_bytes());
    restamp(&mut bytes, at);
    fs::write(&seg, &bytes).unwrap();
    let _ = fs::remove_file(dir.join("checkpoint.idx"));
}

fn assert_corrupt(result: Result<LogStore>) {
    match result {
        Err(Error::Corrupt { .. }) => {}
        Err(other) => panic!("expected Corrupt, got {other:?}"),
        Ok(store) => {
            let report = store.compact_now();
            panic!("a forged span's last position was accepted (compact_now: {report:?})")
        }
    }
}

/// A span whose last position names segment u32::MAX: `erasure::segments_of` computed
/// `last.segment + 1` (overflow panic in debug builds, an empty range in release).
#[test]
fn forged_span_last_position_in_segment_u32_max_is_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    forge_span_last_pos(dir.path(), (u64::from(u32::MAX) << 32) | 64);
    let opened = std::panic::catch_unwind(|| LogStore::open_with(dir.path(), opts()));
    assert_corrupt(opened.expect("open panicked on a forged erased span"));
}

/// A span whose last position names a far segment: the store accepted it and put
/// every segment number up to it in its erasable set (a 2^30-entry BTreeSet for
/// segment 2^30), after which every erasure pass fails on a missing segment.
#[test]
fn forged_span_last_position_in_a_missing_segment_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    forge_span_last_pos(dir.path(), (1000u64 << 32) | 64);
    assert_corrupt(LogStore::open_with(dir.path(), opts()));
}

/// A span whose last position lies before the span, in its own segment.
#[test]
fn forged_span_last_position_before_the_span_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    forge_span_last_pos(dir.path(), (1u64 << 32) | 32);
    assert_corrupt(LogStore::open_with(dir.path(), opts()));
}

/// Every live event with its position, in log order.
fn positions(store: &LogStore) -> Vec<(u64, StoredEvent)> {
    let mut sub = store
        .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
        .unwrap();
    std::iter::from_fn(|| sub.try_next().unwrap())
        .map(|d| (d.position, d.event))
        .collect()
}

/// Fills a store with interleaved doomed and live executions over several segments
/// and deletes the doomed ones.
fn doomed_store(dir: &Path, rounds: u64) -> LogStore {
    doomed_store_with(dir, rounds, opts())
}

fn doomed_store_with(dir: &Path, rounds: u64, options: Options) -> LogStore {
    let store = LogStore::open_with(dir, options).unwrap();
    let t = TenantId::from("t");
    for i in 0..rounds {
        let doomed = ExecutionId::from(format!("doomed-{i}"));
        store
            .append_batch_blocking(&doomed, &t, (0..20).map(|j| event(j, 1000)).collect())
            .unwrap();
        store
            .append_blocking(
                &ExecutionId::from(format!("live-{}", i % 7)),
                &t,
                event(i, 300),
            )
            .unwrap();
    }
    for i in 0..rounds {
        let doomed = ExecutionId::from(format!("doomed-{i}"));
        assert!(store.delete_execution_blocking(&doomed).unwrap());
    }
    store
}

/// Two erasure passes at once (compact_now from two threads, or compact_now and the
/// background thread) share `<segment>.compact`: one removes and recreates the file
/// the other is writing, and renames a file the other has not finished over the
/// segment (or fails to rename one that is gone).
#[test]
fn concurrent_erasure_passes_neither_fail_nor_tear_segments() {
    for round in 0..4 {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(doomed_store(dir.path(), 60));
        let before = positions(&store);
        let barrier = Arc::new(Barrier::new(3));
        let passes: Vec<_> = (0..3)
            .map(|_| {
                let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    store.compact_now()
                })
            })
            .collect();
        let results: Vec<_> = passes.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(positions(&store), before, "round {round}");
        store.close().unwrap();
        drop(store);
        let _ = fs::remove_file(dir.path().join("checkpoint.idx"));
        let store = LogStore::open_with(dir.path(), opts())
            .unwrap_or_else(|e| panic!("round {round}: reopen failed: {e} ({results:?})"));
        assert_eq!(
            positions(&store),
            before,
            "round {round}: after reopen ({results:?})"
        );
        assert!(store.verify(|_, _| {}).is_clean(), "round {round}");
        for r in &results {
            assert!(
                r.is_ok(),
                "round {round}: a concurrent pass failed: {results:?}"
            );
        }
    }
}

/// Snapshot of the store directory: name -> (inode, length, mtime).
fn snapshot(dir: &Path) -> Vec<(String, u64, u64, SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                m.ino(),
                m.len(),
                m.modified().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// An `Io` whose renames of `*.seg.compact` wait at a gate: holds an erasure pass
/// between writing a segment's erased image and renaming it over the segment.
#[derive(Debug, Default)]
struct GatedIo {
    /// (a pass is waiting at the gate, the gate is open)
    gate: Mutex<(bool, bool)>,
    changed: Condvar,
}

impl GatedIo {
    fn wait_for_pass(&self) {
        let mut g = self.gate.lock().unwrap();
        while !g.0 {
            g = self.changed.wait(g).unwrap();
        }
    }

    fn open_gate(&self) {
        self.gate.lock().unwrap().1 = true;
        self.changed.notify_all();
    }
}

impl Io for GatedIo {
    fn create_dir_all(&self, dir: &Path, mode: u32) -> std::io::Result<()> {
        RealIo.create_dir_all(dir, mode)
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        RealIo.list(dir)
    }
    fn open(&self, path: &Path, read_only: bool) -> std::io::Result<Arc<dyn IoFile>> {
        RealIo.open(path, read_only)
    }
    fn create(&self, path: &Path, mode: u32) -> std::io::Result<Arc<dyn IoFile>> {
        RealIo.create(path, mode)
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        RealIo.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        if from.to_string_lossy().ends_with(".seg.compact") {
            let mut g = self.gate.lock().unwrap();
            g.0 = true;
            self.changed.notify_all();
            while !g.1 {
                g = self.changed.wait(g).unwrap();
            }
        }
        RealIo.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        RealIo.sync_dir(dir)
    }
    fn try_lock(&self, path: &Path, mode: u32) -> std::io::Result<LockGuard> {
        RealIo.try_lock(path, mode)
    }
}

/// `close()` did not wait for a `compact_now` running in another thread: the pass went
/// on renaming segment files in the directory after close returned and released the
/// LOCK (another process may own the store by then, and may have erased more).
#[test]
fn compact_now_racing_close_writes_nothing_after_close_returns() {
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(GatedIo::default());
    let store = Arc::new(doomed_store_with(dir.path(), 20, opts().io(io.clone())));
    let pass = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || store.compact_now())
    };
    io.wait_for_pass();
    let closing = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || store.close())
    };
    let deadline = Instant::now() + Duration::from_millis(500);
    while !closing.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    // If close returned while the pass waits, the directory must be final by now.
    let at_close = closing.is_finished().then(|| snapshot(dir.path()));
    io.open_gate();
    closing.join().unwrap().unwrap();
    let result = pass.join().unwrap();
    if let Some(at_close) = at_close {
        assert_eq!(
            at_close,
            snapshot(dir.path()),
            "the directory changed after close() returned (the pass: {result:?})"
        );
    }
    // The pass finished the segment it was rewriting, and stopped.
    drop(store);
    let store = LogStore::open_with(dir.path(), opts()).unwrap();
    assert!(store.verify(|_, _| {}).is_clean());
}

/// A checkpoint whose fork table claims that an ordinary execution ("b", declared by
/// its own first event) is a fork of another ("a", same tenant) at 1, with the entry
/// points a fork of that length has (none). The walk that checks a checkpoint computed
/// `sequence - first_own` = 1 - 2 for b's first record: an overflow panic in debug
/// builds; in release builds the wrapped value skipped the entry-point check and the
/// checkpoint was accepted, so a read of b served a's event under b's id.
#[test]
fn checkpoint_fork_table_claiming_an_ordinary_execution_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let t = TenantId::from("t");
    let (a, b) = (ExecutionId::from("a"), ExecutionId::from("b"));
    {
        let store = LogStore::open_with(dir.path(), opts()).unwrap();
        store.append_blocking(&a, &t, event(1, 10)).unwrap();
        store.append_blocking(&b, &t, event(2, 10)).unwrap();
        store.close().unwrap();
    }
    let path = dir.path().join("checkpoint.idx");
    let bytes = fs::read(&path).unwrap();
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let (segments, tenants, executions, forks) = (u32_at(24), u32_at(28), u32_at(32), u32_at(36));
    assert_eq!((executions, forks), (2, 0));
    let mut p = 40 + 12 * segments;
    for _ in 0..tenants {
        p += 4 + u32_at(p);
    }
    let exec0 = 24 + u32_at(p + 20) + 8;
    let exec1 = 24 + u32_at(p + exec0 + 20) + 8;
    let mut forged = bytes[..p].to_vec();
    forged[36..40].copy_from_slice(&1u32.to_le_bytes());
    forged.extend_from_slice(&1u32.to_le_bytes()); // the fork: execution 1
    forged.extend_from_slice(&0u32.to_le_bytes()); // its source: execution 0
    forged.extend_from_slice(&1u64.to_le_bytes()); // at 1
    forged.extend_from_slice(&bytes[p..p + exec0]);
    forged.extend_from_slice(&bytes[p + exec0..p + exec0 + exec1 - 8]); // no entry point
    // The deleted list: none; then layout 3's directory, made to match.
    let directory = common::verify_after_open::directory_start(&bytes);
    assert_eq!(&bytes[p + exec0 + exec1..directory], &0u32.to_le_bytes());
    forged.extend_from_slice(&0u32.to_le_bytes());
    let forged = common::verify_after_open::as_layout_3(forged);
    fs::write(&path, &forged).unwrap();

    let opened = std::panic::catch_unwind(|| LogStore::open_with(dir.path(), opts()))
        .expect("open panicked on a forged checkpoint");
    let store = opened.unwrap();
    assert!(
        store.recovery_report().checkpoint_ignored.is_some(),
        "the forged checkpoint was trusted"
    );
    let events = store.load_events_blocking(&b).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, event(2, 10));
    assert_eq!(store.fork_point_blocking(&b).unwrap(), None);
}

/// Hostile arguments get answers, not panics or hangs: ids at and past the limit,
/// with NUL, forks at u64::MAX, prune(Duration::MAX), huge retentions.
#[test]
fn hostile_lifecycle_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let options = opts()
        .retention(Duration::MAX)
        .tenant_retention(TenantId::from("t"), Duration::MAX);
    let store = LogStore::open_with(dir.path(), options).unwrap();
    let t = TenantId::from("t");
    let max = ExecutionId::from("m".repeat(MAX_ID_BYTES));
    let nul = ExecutionId::from("a\0b");
    store.append_blocking(&max, &t, event(0, 1)).unwrap();
    store.append_blocking(&nul, &t, event(0, 1)).unwrap();
    let too_long = ExecutionId::from("m".repeat(MAX_ID_BYTES + 1));
    assert!(
        store.delete_execution_blocking(&too_long).is_err()
            || !store.delete_execution_blocking(&too_long).unwrap()
    );
    for at in [0, 2, u64::MAX] {
        let err = store
            .fork_execution_blocking(&max, at, &ExecutionId::from(format!("f{at}")))
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    }
    store
        .fork_execution_blocking(&nul, 1, &ExecutionId::from("f\0"))
        .unwrap();
    assert_eq!(store.prune_blocking(Duration::MAX).unwrap(), 0);
    assert_eq!(store.prune_blocking(Duration::ZERO).unwrap(), 3);
    assert!(!store.delete_execution_blocking(&max).unwrap());
    store.compact_now().unwrap();
    store.close().unwrap();
    drop(store);
    let store = LogStore::open_with(dir.path(), opts()).unwrap();
    let err = store.append_blocking(&nul, &t, event(1, 1)).unwrap_err();
    assert!(matches!(err, Error::Deleted), "{err:?}");
}

/// A leftover `*.seg.compact` that is a directory: open works, erasure answers with a
/// clear error (it never removes a directory it did not make) and nothing live is hurt.
#[test]
fn a_compact_leftover_that_is_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = doomed_store(dir.path(), 10);
    let before = positions(&store);
    store.close().unwrap();
    drop(store);
    for seg in segment_files(dir.path()) {
        fs::create_dir(seg.with_extension("seg.compact")).unwrap();
    }
    let store = LogStore::open_with(dir.path(), opts()).unwrap();
    match store.compact_now() {
        Ok(_) | Err(Error::Io { .. }) => {}
        Err(other) => panic!("{other:?}"),
    }
    assert_eq!(positions(&store), before);
}
