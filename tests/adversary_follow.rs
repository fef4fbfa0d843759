//! Adversarial review of the follow path (issue 14): positions, subscriptions, readers
//! in other processes (`LogStore::open_reader`, `published.end`), `execlog tail`.
//!
//! Tests that fail reproduce a problem found in the review; the others are regression
//! tests for attacks that held up.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::*;
use execlog::*;

const PATIENCE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------
// A file system that holds the commit thread inside the first data fdatasync of every
// segment it creates (after the header's), until the test lets it go.
// ---------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Gate {
    state: Mutex<(bool, bool)>, // (someone is held, released)
    cond: Condvar,
}

impl Gate {
    fn hold(&self) {
        let mut s = self.state.lock().unwrap();
        s.0 = true;
        self.cond.notify_all();
        while !s.1 {
            s = self.cond.wait(s).unwrap();
        }
    }
    fn wait_held(&self) {
        let deadline = Instant::now() + PATIENCE;
        let mut s = self.state.lock().unwrap();
        while !s.0 {
            assert!(Instant::now() < deadline, "nobody reached the gate");
            s = self
                .cond
                .wait_timeout(s, Duration::from_millis(50))
                .unwrap()
                .0;
        }
    }
    fn release(&self) {
        let mut s = self.state.lock().unwrap();
        s.1 = true;
        self.cond.notify_all();
    }
}

#[derive(Debug, Default)]
struct GateIo {
    gate: Arc<Gate>,
}

struct GatedFile {
    inner: Arc<dyn IoFile>,
    syncs: AtomicU32,
    gate: Arc<Gate>,
}

impl IoFile for GatedFile {
    fn size(&self) -> std::io::Result<u64> {
        self.inner.size()
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        let r = self.inner.sync_data();
        // The first sync is the header's (segment::create); the second the first group's.
        if self.syncs.fetch_add(1, Ordering::SeqCst) == 1 {
            self.gate.hold();
        }
        r
    }
    fn map(&self, len: u64) -> std::io::Result<Mapped> {
        self.inner.map(len)
    }
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        self.inner.read_at(offset, len)
    }
    fn read_durable(&self, offset: u64, len: usize) -> std::io::Result<Option<Vec<u8>>> {
        self.inner.read_durable(offset, len)
    }
    fn allocate(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.allocate(offset, len)
    }
}

impl Io for GateIo {
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
        let inner = RealIo.create(path, mode)?;
        if path.extension().is_some_and(|e| e == "seg") {
            return Ok(Arc::new(GatedFile {
                inner,
                syncs: AtomicU32::new(0),
                gate: Arc::clone(&self.gate),
            }));
        }
        Ok(inner)
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        RealIo.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        RealIo.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        RealIo.sync_dir(dir)
    }
    fn try_lock(&self, path: &Path, mode: u32) -> std::io::Result<LockGuard> {
        RealIo.try_lock(path, mode)
    }
}

const SEGMENT: u64 = 64 * 1024;

fn offset_of(position: u64) -> u64 {
    position & u64::from(u32::MAX)
}

/// Fills segment 1 so that, after the seal a close adds, exactly one more event of the
/// size `step_event(7)` has in the same execution fits in it. Returns that size.
fn fill_to_one_left(dir: &Path, e: &ExecutionId, t: &TenantId) -> u64 {
    let store = LogStore::open_with(dir, Options::default().segment_size_bytes(SEGMENT)).unwrap();
    store.append_blocking(e, t, step_event(7)).unwrap();
    let before = store.end_position().unwrap();
    store.append_blocking(e, t, step_event(7)).unwrap();
    let len = store.end_position().unwrap() - before;
    const SEAL: u64 = 64;
    while SEGMENT - (offset_of(store.end_position().unwrap()) + 1) - SEAL >= 2 * len {
        store.append_blocking(e, t, step_event(7)).unwrap();
    }
    store.close().unwrap();
    len
}

/// `end_position()` promises: "every event that becomes durable after it returns gets
/// a larger one", and `StartFrom::End` "the first event made durable after the
/// subscription was created". A commit group that spans a roll (its first append ends
/// segment S, its second starts S + 1) makes S + 1 visible in `Segments` (roll pushes
/// it, durable end 32) before the group is durable: in that window
/// `end_position() = (S + 1) << 32 | 31`, above the position of the group's event in S,
/// which becomes durable only afterwards.
#[test]
fn end_position_and_start_end_during_a_roll_skip_the_rest_of_the_old_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    let len = fill_to_one_left(dir.path(), &e, &t);
    let io = Arc::new(GateIo::default());
    let gate = Arc::clone(&io.gate);
    let writer = Arc::new(
        LogStore::open_with(
            dir.path(),
            Options::default()
                .segment_size_bytes(SEGMENT)
                .commit_delay_us(500_000)
                .io(io),
        )
        .unwrap(),
    );
    let tail = offset_of(writer.end_position().unwrap()) + 1;
    assert!(
        SEGMENT - tail >= len && SEGMENT - tail < 2 * len,
        "set-up: room for one"
    );
    let (w, e2, t2) = (Arc::clone(&writer), e.clone(), t.clone());
    let a = std::thread::spawn(move || w.append_blocking(&e2, &t2, step_event(7)).unwrap());
    std::thread::sleep(Duration::from_millis(100));
    let (w, e2, t2) = (Arc::clone(&writer), e.clone(), t.clone());
    let b = std::thread::spawn(move || w.append_blocking(&e2, &t2, step_event(7)).unwrap());
    // Both are in one group: A ends segment 1, B starts segment 2.
    gate.wait_held();
    let end = writer.end_position().unwrap();
    let mut from_end = writer
        .subscribe(SubscriptionFilter::All, StartFrom::End)
        .unwrap();
    let mut after_end = writer
        .subscribe(SubscriptionFilter::All, StartFrom::After(end))
        .unwrap();
    gate.release();
    let seq_a = a.join().unwrap();
    let seq_b = b.join().unwrap();
    let (first, _) = if seq_a < seq_b {
        (seq_a, seq_b)
    } else {
        (seq_b, seq_a)
    };
    let mut all = writer
        .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
        .unwrap();
    let mut in_group = Vec::new();
    while let Some(d) = all.try_next().unwrap() {
        if d.event.sequence >= first {
            in_group.push(d.position);
        }
    }
    assert_eq!(in_group.len(), 2);
    assert_eq!(
        in_group[0] >> 32,
        1,
        "the group's first event ends segment 1"
    );
    assert_eq!(
        in_group[1] >> 32,
        2,
        "the group's second event starts segment 2"
    );
    let got_end = from_end
        .next_timeout(Duration::from_secs(5))
        .unwrap()
        .unwrap();
    let got_after = after_end
        .next_timeout(Duration::from_secs(5))
        .unwrap()
        .unwrap();
    let mut problems = Vec::new();
    if in_group[0] <= end {
        problems.push(format!(
            "end_position() was {end:#x} while the event at {:#x} was not durable yet",
            in_group[0]
        ));
    }
    if got_end.position != in_group[0] {
        problems.push(format!(
            "StartFrom::End skipped {:#x}, first delivered {:#x}",
            in_group[0], got_end.position
        ));
    }
    if got_after.position != in_group[0] {
        problems.push(format!(
            "After(end_position) skipped {:#x}, first delivered {:#x}",
            in_group[0], got_after.position
        ));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

// ---------------------------------------------------------------------------------
// Crafted `published.end` files.
// ---------------------------------------------------------------------------------

fn published_bytes(generation: u64, segment: u32, offset: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(32);
    b.extend_from_slice(b"EXECEND\0");
    b.extend_from_slice(&generation.to_le_bytes());
    b.extend_from_slice(&(u64::from(segment) << 32 | offset).to_le_bytes());
    let crc = crc32fast::hash(&b[..24]);
    b.extend_from_slice(&crc.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b
}

fn published_path(dir: &Path) -> PathBuf {
    dir.join("published.end")
}

/// Overwrites `published.end` in place, as the writer does (one write at offset 0).
fn publish(dir: &Path, generation: u64, position: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(published_path(dir))
        .unwrap();
    f.write_all_at(
        &published_bytes(generation, (position >> 32) as u32, offset_of(position)),
        0,
    )
    .unwrap();
}

/// Everything a subscription has now, and how it ended if it did.
fn drain_now(sub: &mut Subscription) -> (Vec<Delivered>, Option<Error>) {
    let mut got = Vec::new();
    loop {
        match sub.try_next() {
            Ok(Some(d)) => got.push(d),
            Ok(None) => return (got, None),
            Err(e) => return (got, Some(e)),
        }
    }
}

/// Waits until the reader's refresh thread has looked at the file a few times.
fn let_the_reader_poll() {
    std::thread::sleep(Duration::from_millis(150));
}

/// A store with one execution: 2 single appends, then one batch of 4. Returns the
/// positions of the six events (from a subscription), the store closed (sealed).
fn store_with_a_batch(dir: &Path) -> (ExecutionId, Vec<u64>) {
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    let writer = LogStore::open(dir).unwrap();
    writer.append_blocking(&e, &t, step_event(1)).unwrap();
    writer.append_blocking(&e, &t, step_event(2)).unwrap();
    writer
        .append_batch_blocking(&e, &t, (3..=6).map(step_event).collect())
        .unwrap();
    let mut sub = writer
        .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
        .unwrap();
    let positions: Vec<u64> = drain_now(&mut sub).0.iter().map(|d| d.position).collect();
    assert_eq!(positions.len(), 6);
    writer.close().unwrap();
    // Without the checkpoint: a reader bounded by a published end inside the records a
    // checkpoint covers serves the whole checkpoint (see
    // `a_checkpoint_lets_a_reader_serve_past_the_published_end`).
    std::fs::remove_file(dir.join("checkpoint.idx")).unwrap();
    (e, positions)
}

/// A `published.end` that moves to a record boundary inside a batch (records 3 and 4
/// of a 4-record batch published, 5 and 6 not). The refresh thread finds the batch
/// incomplete and poisons the reader, but `extend_segment` already raised the
/// segment's durable end over the batch's first records (refresh.rs: `set_durable_end`
/// before the "batch incomplete at the published end" check), so a subscription on the
/// reader delivers half of an atomic batch before it learns of the poison. The index
/// (`load_events`) does not have them: the two read paths disagree.
#[test]
fn a_published_end_inside_a_batch_makes_a_reader_deliver_half_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let (e, positions) = store_with_a_batch(dir.path());
    // Bound the reader after the two single appends.
    publish(dir.path(), 50, positions[2]);
    let reader = LogStore::open_reader(dir.path()).unwrap();
    let mut sub = reader
        .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
        .unwrap();
    let (first, end) = drain_now(&mut sub);
    assert_eq!(first.len(), 2);
    assert!(end.is_none());
    // Now "publish" up to the start of the batch's third record.
    publish(dir.path(), 50, positions[4]);
    let_the_reader_poll();
    let (more, end) = drain_now(&mut sub);
    let seqs: Vec<u64> = more.iter().map(|d| d.event.sequence).collect();
    assert!(
        matches!(end, Some(Error::Poisoned { .. })),
        "the reader should be poisoned, got {end:?}"
    );
    assert_eq!(reader.load_events_blocking(&e).unwrap().len(), 2);
    assert!(
        seqs.is_empty(),
        "a subscription delivered part of an atomic batch: sequences {seqs:?} of 3..=6"
    );
}

/// Crafted ends after the reader opened: each stops the reader (poisoned) without a
/// panic, and what it had stays readable. (Regression test: these held up.) An end in
/// a later segment says the earlier ones are complete (FORMAT.md), so the reader may
/// first take the rest of segment 1 (here durable: the writer closed).
#[test]
fn crafted_published_ends_poison_a_reader_and_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (e, positions) = store_with_a_batch(dir.path());
    let good = positions[2];
    // (what, position, events the reader may take before it stops)
    let crafted: Vec<(&str, u64, usize)> = vec![
        ("inside a record", positions[2] + 8, 0),
        ("not 8-aligned", positions[2] + 3, 0),
        ("beyond the file", 1 << 32 | 0xFFFF_0000, 0),
        ("end of u32", 1 << 32 | u64::from(u32::MAX), 0),
        ("a segment that does not exist", 7 << 32 | 32, 4),
        ("the last segment id", u64::from(u32::MAX) << 32 | 32, 4),
        ("everything", u64::MAX, 4),
        ("backwards", positions[0], 0),
        ("backwards to zero", 0, 0),
        ("segment 2 inside the header", 2 << 32 | 8, 4),
    ];
    let mut problems = Vec::new();
    for (what, position, may_take) in crafted {
        publish(dir.path(), 1, good);
        let reader = LogStore::open_reader(dir.path()).unwrap();
        let mut sub = reader
            .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
            .unwrap();
        assert_eq!(drain_now(&mut sub).0.len(), 2, "{what}");
        publish(dir.path(), 2, position);
        let_the_reader_poll();
        let (got, end) = drain_now(&mut sub);
        if !got.is_empty() && got.len() != may_take {
            problems.push(format!("{what}: delivered {} events", got.len()));
        }
        if !matches!(end, Some(Error::Poisoned { .. })) {
            problems.push(format!("{what}: expected poisoned, got {end:?}"));
        }
        if reader.load_events_blocking(&e).unwrap().len() != 2 + may_take.min(got.len()) {
            problems.push(format!("{what}: reads changed"));
        }
        reader.close().unwrap();
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Damaged files (garbage, short, a directory) are "no bound known" or an error, never
/// a panic; after the reader opened they are ignored. (Regression test.)
#[test]
fn garbage_published_end_is_ignored_by_a_running_reader() {
    let dir = tempfile::tempdir().unwrap();
    let (e, positions) = store_with_a_batch(dir.path());
    publish(dir.path(), 1, positions[2]);
    let reader = LogStore::open_reader(dir.path()).unwrap();
    for garbage in [vec![0xAB; 32], vec![], b"EXECEND\0".to_vec(), vec![0; 4096]] {
        std::fs::write(published_path(dir.path()), &garbage).unwrap();
        let_the_reader_poll();
        assert_eq!(reader.load_events_blocking(&e).unwrap().len(), 2);
    }
    std::fs::remove_file(published_path(dir.path())).unwrap();
    std::fs::create_dir(published_path(dir.path())).unwrap();
    let_the_reader_poll();
    assert_eq!(reader.load_events_blocking(&e).unwrap().len(), 2);
    // A reader opened now: an error or the whole log, but no panic.
    match LogStore::open_reader(dir.path()) {
        Ok(r) => assert_eq!(r.load_events_blocking(&e).unwrap().len(), 6),
        Err(err) => eprintln!("open_reader with a directory as published.end: {err}"),
    }
    std::fs::remove_dir(published_path(dir.path())).unwrap();
    std::fs::write(
        published_path(dir.path()),
        published_bytes(9, 1, offset_of(positions[5]) + 512),
    )
    .unwrap();
    let_the_reader_poll();
    reader.close().unwrap();
}

fn make_fifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Unblocks whoever waits in `open` of the FIFO for reading.
fn open_fifo_writer(path: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    const O_NONBLOCK: i32 = 0o4000;
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(O_NONBLOCK)
        .open(path);
}

/// `published.end` is opened with a plain blocking `open(O_RDONLY)`: a FIFO in its
/// place (anyone who can write the directory can make one) blocks `open_reader`, and so
/// every inspection command and `execlog tail`, forever. Expected: an error, or "no
/// bound known" (FORMAT.md: a damaged file), promptly.
#[test]
fn a_fifo_as_published_end_blocks_open_reader_forever() {
    let dir = tempfile::tempdir().unwrap();
    let _ = store_with_a_batch(dir.path());
    std::fs::remove_file(published_path(dir.path())).unwrap();
    make_fifo(&published_path(dir.path()));
    let path = dir.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = LogStore::open_reader(&path).map(|_| ());
        let _ = tx.send(r);
    });
    let answer = rx.recv_timeout(Duration::from_secs(3));
    open_fifo_writer(&published_path(dir.path()));
    assert!(answer.is_ok(), "open_reader did not return within 3 s");
}

/// The writer reads the previous generation through the same blocking `open`: a FIFO
/// at `published.end` makes `LogStore::open` of the store hang too.
#[test]
fn a_fifo_as_published_end_blocks_the_writers_open_forever() {
    let dir = tempfile::tempdir().unwrap();
    let _ = store_with_a_batch(dir.path());
    std::fs::remove_file(published_path(dir.path())).unwrap();
    make_fifo(&published_path(dir.path()));
    let path = dir.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = LogStore::open(&path).map(|s| s.close());
        let _ = tx.send(r.is_ok());
    });
    let answer = rx.recv_timeout(Duration::from_secs(3));
    open_fifo_writer(&published_path(dir.path()));
    assert!(answer.is_ok(), "LogStore::open did not return within 3 s");
}

/// The same FIFO swapped in under a running reader blocks its refresh thread in `open`,
/// and `close()` (which joins that thread) then never returns.
#[test]
fn a_fifo_as_published_end_makes_a_readers_close_hang() {
    let dir = tempfile::tempdir().unwrap();
    let _ = store_with_a_batch(dir.path());
    let reader = LogStore::open_reader(dir.path()).unwrap();
    std::fs::remove_file(published_path(dir.path())).unwrap();
    make_fifo(&published_path(dir.path()));
    let_the_reader_poll();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(reader.close());
    });
    let answer = rx.recv_timeout(Duration::from_secs(3));
    open_fifo_writer(&published_path(dir.path()));
    assert!(
        answer.is_ok(),
        "close() of a reader did not return within 3 s"
    );
}

// ---------------------------------------------------------------------------------
// Crafted `StartFrom::After` positions.
// ---------------------------------------------------------------------------------

/// A store over several small segments with a seal in the middle (closed, reopened).
fn store_over_segments(dir: &Path) -> (LogStore, u64) {
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    let other = (ExecutionId::new(), TenantId::from("u"));
    let seal;
    {
        let w = LogStore::open_with(dir, small_segments()).unwrap();
        for i in 0..40 {
            w.append_batch_blocking(&e, &t, (i * 10 + 1..=i * 10 + 10).map(step_event).collect())
                .unwrap();
        }
        seal = w.end_position().unwrap() + 1;
        w.close().unwrap();
    }
    let w = LogStore::open_with(dir, small_segments()).unwrap();
    for i in 40..200 {
        w.append_batch_blocking(&e, &t, (i * 10 + 1..=i * 10 + 10).map(step_event).collect())
            .unwrap();
        w.append_batch_blocking(&other.0, &other.1, vec![step_event(i), step_event(i)])
            .unwrap();
    }
    (w, seal)
}

/// Every `After(p)`, whatever `p` (0, the last `u64`, inside a header or a body, a
/// seal's position, a segment's offset 0, segments beyond the end), delivers exactly the
/// events above `p`. (Regression test: held up, on the writer and on a reader.)
#[test]
fn after_any_crafted_position_delivers_exactly_the_events_above_it() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, seal) = store_over_segments(dir.path());
    let reader = LogStore::open_reader(dir.path()).unwrap();
    let mut all = writer
        .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
        .unwrap();
    let positions: Vec<u64> = drain_now(&mut all).0.iter().map(|d| d.position).collect();
    let last_segment = positions.last().unwrap() >> 32;
    assert!(last_segment >= 3, "several segments");
    assert!(
        !positions.contains(&seal) && positions.contains(&(seal + 64)),
        "a seal at {seal:#x}"
    );
    let mut crafted = vec![
        0,
        1,
        31,
        32,
        u64::from(u32::MAX),
        1 << 32,
        (1 << 32) + 31,
        2 << 32,
        u64::MAX,
        u64::MAX - 1,
        seal - 1,
        seal,
        seal + 8,
        seal + 63,
        writer.end_position().unwrap(),
        (last_segment + 1) << 32,
        (last_segment + 100) << 32 | 32,
        u64::from(u32::MAX) << 32,
    ];
    for &p in positions.iter().step_by(97) {
        crafted.extend([p - 1, p, p + 1, p + 8, p + 56, p + 57]);
    }
    let wait_until = Instant::now() + PATIENCE;
    while reader.end_position().unwrap() < writer.end_position().unwrap() {
        assert!(Instant::now() < wait_until);
        std::thread::sleep(Duration::from_millis(5));
    }
    for p in crafted {
        let expected: Vec<u64> = positions.iter().copied().filter(|&q| q > p).collect();
        for (name, store) in [("writer", &writer), ("reader", &reader)] {
            let mut sub = store
                .subscribe(SubscriptionFilter::All, StartFrom::After(p))
                .unwrap();
            let (got, end) = drain_now(&mut sub);
            assert!(end.is_none(), "{name} After({p:#x}): {end:?}");
            let got: Vec<u64> = got.iter().map(|d| d.position).collect();
            assert_eq!(got, expected, "{name} After({p:#x})");
        }
    }
}

// ---------------------------------------------------------------------------------
// Wakers, drops, close.
// ---------------------------------------------------------------------------------

struct CountingWaker(std::sync::atomic::AtomicUsize);

impl std::task::Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn poll_once(
    sub: &mut Subscription,
    waker: &std::task::Waker,
) -> std::task::Poll<Option<Result<Delivered>>> {
    use futures::Stream;
    let mut cx = std::task::Context::from_waker(waker);
    std::pin::Pin::new(sub).poll_next(&mut cx)
}

/// A stream polled many times registers one waker; dropping the subscription releases
/// it (no clone left behind, never woken after the drop). Live ones are woken once.
/// (Regression test.)
#[test]
fn dropped_streams_leave_no_waker_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    let counter = Arc::new(CountingWaker(Default::default()));
    let waker = std::task::Waker::from(Arc::clone(&counter));
    let mut kept = Vec::new();
    for i in 0..200 {
        let mut sub = store
            .subscribe(SubscriptionFilter::All, StartFrom::End)
            .unwrap();
        for _ in 0..5 {
            assert!(poll_once(&mut sub, &waker).is_pending());
        }
        if i % 2 == 0 {
            kept.push(sub);
        }
    }
    // One clone per live registration, none for the dropped ones.
    assert_eq!(Arc::strong_count(&counter), 1 + 1 + kept.len());
    store.append_blocking(&e, &t, step_event(1)).unwrap();
    let deadline = Instant::now() + PATIENCE;
    while counter.0.load(Ordering::SeqCst) < kept.len() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(counter.0.load(Ordering::SeqCst), kept.len());
    assert_eq!(Arc::strong_count(&counter), 1 + 1);
    for sub in &mut kept {
        assert!(matches!(
            poll_once(sub, &waker),
            std::task::Poll::Ready(Some(Ok(_)))
        ));
    }
    // Registered again, then closed: woken, and the streams end.
    for sub in &mut kept {
        assert!(poll_once(sub, &waker).is_pending());
    }
    let before = counter.0.load(Ordering::SeqCst);
    store.close().unwrap();
    assert_eq!(counter.0.load(Ordering::SeqCst), before + kept.len());
    for sub in &mut kept {
        assert!(matches!(
            poll_once(sub, &waker),
            std::task::Poll::Ready(None)
        ));
    }
    drop(kept);
    assert_eq!(Arc::strong_count(&counter), 2);
}

/// Close racing threads blocked in the iterator, in `next_timeout` and a stream, with
/// appends in flight: every one ends after delivering every acknowledged event, once.
/// (Regression test.)
#[test]
fn close_racing_waiting_subscribers_loses_nothing() {
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LogStore::open(dir.path()).unwrap());
        let (e, t) = (ExecutionId::new(), TenantId::from("t"));
        let mut waiting = Vec::new();
        for k in 0..3 {
            let sub = store
                .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
                .unwrap();
            waiting.push(std::thread::spawn(move || {
                let mut sub = sub;
                let mut got = Vec::new();
                match k {
                    0 => {
                        for d in sub.by_ref() {
                            got.push(d.unwrap().event.sequence);
                        }
                    }
                    1 => loop {
                        match sub.next_timeout(Duration::from_millis(round % 3)) {
                            Ok(Some(d)) => got.push(d.event.sequence),
                            Ok(None) => {}
                            Err(Error::Closed) => break,
                            Err(e) => panic!("{e}"),
                        }
                    },
                    _ => {
                        use futures::StreamExt;
                        futures::executor::block_on(async {
                            while let Some(d) = StreamExt::next(&mut sub).await {
                                got.push(d.unwrap().event.sequence);
                            }
                        });
                    }
                }
                got
            }));
        }
        let mut acked = 0;
        let appender = {
            let (store, e, t) = (Arc::clone(&store), e.clone(), t.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while store.append_blocking(&e, &t, step_event(n + 1)).is_ok() {
                    n += 1;
                }
                n
            })
        };
        std::thread::sleep(Duration::from_millis(5 + round));
        store.close().unwrap();
        acked += appender.join().unwrap();
        for w in waiting {
            let got = w.join().unwrap();
            assert_eq!(got, (1..=acked).collect::<Vec<_>>(), "round {round}");
        }
    }
}

// ---------------------------------------------------------------------------------
// `execlog tail`.
// ---------------------------------------------------------------------------------

fn execlog_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_execlog"))
        .args(args)
        .output()
        .unwrap()
}

/// Bad arguments are usage errors (2), a missing or non-store directory an error (1),
/// never a panic; extreme `--after` values print nothing. (Regression test.)
#[test]
fn tail_with_bad_arguments_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, _) = store_over_segments(dir.path());
    writer.close().unwrap();
    let d = dir.path().to_str().unwrap();
    let file = dir.path().join("0000000001.seg");
    let cases: Vec<(Vec<&str>, i32)> = vec![
        (vec!["tail", d, "--after", "-1"], 2),
        (vec!["tail", d, "--after", "18446744073709551616"], 2),
        (vec!["tail", d, "--after", "x"], 2),
        (vec!["tail", d, "--from-start", "--after", "5"], 2),
        (vec!["tail", d, "--tenant", "t", "--execution", "e"], 2),
        (vec!["tail"], 2),
        (vec!["tail", "/nonexistent/store"], 1),
        (vec!["tail", file.to_str().unwrap()], 1),
        (vec!["tail", "/"], 1),
        (vec!["tail", d, "--after", "18446744073709551615"], 0),
        // An empty tenant id is refused with one line (it used to match nothing).
        (vec!["tail", d, "--after", "0", "--tenant", ""], 1),
        (vec!["tail", d], 0),
    ];
    for (args, code) in cases {
        let out = execlog_cli(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        if code == 0 {
            assert!(out.stdout.is_empty(), "{args:?}");
        }
    }
}

/// `tail --from-start | head -1`: the closed pipe ends the tail quietly (status 0).
/// (Regression test.)
#[test]
fn tail_into_a_closed_pipe_ends_quietly() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let (writer, _) = store_over_segments(dir.path());
    let d = dir.path().to_str().unwrap();
    for follow in [false, true] {
        let mut args = vec!["tail", d, "--from-start"];
        if follow {
            args.push("-f");
        }
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_execlog"))
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(first.contains("position"));
        // The pipe is closed now; with -f the next event makes tail notice.
        writer
            .append_blocking(&ExecutionId::new(), &TenantId::from("t"), step_event(1))
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "-f {follow}: {stderr}");
        assert!(stderr.is_empty(), "-f {follow}: {stderr}");
    }
}

// ---------------------------------------------------------------------------------
// A reader following a writer that rolls, closes (seals) and reopens, under load.
// ---------------------------------------------------------------------------------

/// Concurrent appenders (singles and batches, two tenants) over small segments, the
/// writer closed and reopened every few hundred appends; a reader follows with a
/// tenant filter, an unfiltered subscription and `end_position` probes. Every event
/// arrives once, in position order, batches whole, the tenant filter exact, and no
/// probe of `end_position` on the reader is ever above an event durable after it.
/// (Regression test: the reader's side held up.)
#[test]
fn a_reader_follows_a_writer_that_rolls_and_restarts_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let opts = || small_segments().commit_delay_us(200);
    drop(LogStore::open_with(&path, opts()).unwrap());
    let reader = Arc::new(LogStore::open_reader(&path).unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Probes: (end_position, events delivered right after it).
    let prober = {
        let (reader, stop) = (Arc::clone(&reader), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut all = reader
                .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
                .unwrap();
            let mut delivered = Vec::new();
            let mut probes = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let end = reader.end_position().unwrap();
                let (got, err) = drain_now(&mut all);
                assert!(err.is_none(), "{err:?}");
                delivered.extend(got);
                probes.push((end, delivered.len()));
                std::thread::sleep(Duration::from_micros(300));
            }
            (probes, delivered)
        })
    };
    let tenant_sub = {
        let reader = Arc::clone(&reader);
        let mut sub = reader
            .subscribe(
                SubscriptionFilter::Tenant(TenantId::from("a")),
                StartFrom::Beginning,
            )
            .unwrap();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut got = Vec::new();
            loop {
                match sub.next_timeout(Duration::from_millis(50)).unwrap() {
                    Some(d) => got.push(d),
                    None if stop.load(Ordering::SeqCst) => {
                        got.extend(drain_now(&mut sub).0);
                        return got;
                    }
                    None => {}
                }
            }
        })
    };
    for round in 0..6u64 {
        let writer = Arc::new(LogStore::open_with(&path, opts()).unwrap());
        let threads: Vec<_> = (0..4u64)
            .map(|k| {
                let writer = Arc::clone(&writer);
                std::thread::spawn(move || {
                    let t = TenantId::from(if k % 2 == 0 { "a" } else { "b" });
                    let e = ExecutionId::from(format!("r{round}-k{k}").as_str());
                    for i in 0..60u64 {
                        if i % 3 == 0 {
                            let n = 1 + i % 5;
                            writer
                                .append_batch_blocking(
                                    &e,
                                    &t,
                                    (0..n).map(|_| step_event(n)).collect(),
                                )
                                .unwrap();
                        } else {
                            writer.append_blocking(&e, &t, step_event(1)).unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        writer.close().unwrap();
    }
    let final_store = LogStore::open_read_only(&path).unwrap();
    let mut everything = final_store
        .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
        .unwrap();
    let all = drain_now(&mut everything).0;
    let wait_until = Instant::now() + PATIENCE;
    while reader.end_position().unwrap() < final_store.end_position().unwrap() {
        assert!(Instant::now() < wait_until, "the reader never caught up");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::SeqCst);
    let (probes, delivered) = prober.join().unwrap();
    assert_eq!(
        delivered, all,
        "the reader's subscription differs from the log"
    );
    let tenant_a = tenant_sub.join().unwrap();
    let expected_a: Vec<&Delivered> = all
        .iter()
        .filter(|d| d.event.tenant_id.as_str() == "a")
        .collect();
    assert_eq!(tenant_a.len(), expected_a.len());
    for (got, want) in tenant_a.iter().zip(&expected_a) {
        assert_eq!(got, *want);
    }
    for (end, delivered) in &probes {
        let at_or_below = all.iter().filter(|d| d.position <= *end).count();
        assert!(
            at_or_below <= *delivered,
            "end_position {end:#x} covers {at_or_below} events, only {delivered} were durable"
        );
    }
    println!("{} probes, {} events", probes.len(), all.len());
}

/// A writer poisoned by a failed fdatasync: waiting subscribers (iterator, stream,
/// `next_timeout`) deliver exactly the acknowledged events, then end with `Poisoned`;
/// the failed append's event is never delivered, and a new subscription says the same.
/// (Regression test.)
#[test]
fn poison_ends_waiting_subscribers_after_exactly_the_acknowledged_events() {
    use execlog::fault::{Fault, Op, SimIo};
    let sim = SimIo::new();
    let store = Arc::new(
        LogStore::open_with("/sim/store", Options::default().io(Arc::new(sim.clone()))).unwrap(),
    );
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    for i in 1..=5 {
        store.append_blocking(&e, &t, step_event(i)).unwrap();
    }
    let mut waiting = Vec::new();
    for k in 0..3 {
        let mut sub = store
            .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
            .unwrap();
        waiting.push(std::thread::spawn(move || {
            let mut got = Vec::new();
            let end = match k {
                0 => loop {
                    match sub.next() {
                        Some(Ok(d)) => got.push(d.event.sequence),
                        Some(Err(e)) => break Some(e),
                        None => break None,
                    }
                },
                1 => loop {
                    match sub.next_timeout(Duration::from_secs(60)) {
                        Ok(Some(d)) => got.push(d.event.sequence),
                        Ok(None) => break None,
                        Err(e) => break Some(e),
                    }
                },
                _ => futures::executor::block_on(async {
                    use futures::StreamExt;
                    loop {
                        match StreamExt::next(&mut sub).await {
                            Some(Ok(d)) => got.push(d.event.sequence),
                            Some(Err(e)) => break Some(e),
                            None => break None,
                        }
                    }
                }),
            };
            (got, end)
        }));
    }
    std::thread::sleep(Duration::from_millis(50));
    sim.fail_at(1, Op::Sync, Fault::Persistent);
    assert!(store.append_blocking(&e, &t, step_event(6)).is_err());
    for w in waiting {
        let (got, end) = w.join().unwrap();
        assert_eq!(got, vec![1, 2, 3, 4, 5]);
        assert!(matches!(end, Some(Error::Poisoned { .. })), "{end:?}");
    }
    let mut late = store
        .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
        .unwrap();
    let (got, end) = drain_now(&mut late);
    assert_eq!(got.len(), 5);
    assert!(matches!(end, Some(Error::Poisoned { .. })), "{end:?}");
}
