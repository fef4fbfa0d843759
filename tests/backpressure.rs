//! The bounded queue to the commit thread (`Options::max_queued_bytes`), on real files
//! in a temporary directory.
//!
//! To make "an appender is waiting now" deterministic, the store runs on [`HeldIo`]:
//! the real file system, except that one fdatasync of the commit thread can be held
//! until the test releases it. While it is held, the append being committed stays
//! queued, so with a tiny bound every other append must wait; `LogStore::stats()`
//! (`queued_bytes`, `peak_queued_bytes`, `queue_waiters`) shows who was admitted.
//!
//! Checks: (a) many threads appending large batches with a tiny bound all succeed,
//! sequences stay consecutive, and the queued bytes never exceed max(bound, one
//! append); (b) async appends wait for room without blocking the executor's thread
//! (tokio current-thread, multi-thread, `futures::executor::block_on`), and a dropped
//! waiting or admitted future leaves nothing counted; (c) appenders waiting for room
//! are refused with `Closed` when the store closes, and with `Poisoned` when a sync
//! fails, while the commit thread is still stuck.
//!
//! Waits for a condition poll with a deadline (`WAIT`) that only turns a hang into a
//! failure; nothing measures time.

#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use common::assert_whole_batches;
use execlog::*;

/// How long a wait for something that must happen may take before the test fails.
const WAIT: Duration = Duration::from_secs(30);

/// Payload bytes per event.
const EVENT_PAYLOAD: usize = 8_000;
/// Events per batch.
const BATCH: u64 = 6;
/// An upper bound of one batch's encoded, framed bytes (payload plus a generous 1 KiB
/// per event for the encoding, the record header and the execution's declaration).
const ONE_BATCH_MAX: usize = BATCH as usize * (EVENT_PAYLOAD + 1024);
/// A lower bound of the same.
const ONE_BATCH_MIN: usize = BATCH as usize * EVENT_PAYLOAD;

/// A batch tagged for `assert_whole_batches`: `step_id` is the tag, `duration_ms` the
/// batch length.
fn batch(tag: &str, len: u64) -> Vec<ExecutionEventData> {
    (0..len)
        .map(|i| ExecutionEventData::StepCompleted {
            step_id: StepId::from(tag.to_string()),
            output: Some(format!("{i:08}{}", "x".repeat(EVENT_PAYLOAD - 8))),
            duration_ms: len,
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// The file system with a holdable fdatasync.

#[derive(Default)]
struct HoldState {
    /// The next fdatasync is to be held.
    armed: bool,
    /// An fdatasync is held now.
    held: bool,
    released: bool,
    /// The held fdatasync then fails (poisoning the store).
    fail: bool,
    /// Nobody released the held fdatasync within twice `WAIT` (longer than any wait
    /// of the tests, so that their own failure is the one reported).
    timed_out: bool,
}

#[derive(Default)]
struct Hold {
    state: Mutex<HoldState>,
    changed: Condvar,
}

impl Hold {
    fn arm(&self, fail: bool) {
        let mut s = self.state.lock().unwrap();
        *s = HoldState {
            armed: true,
            fail,
            ..HoldState::default()
        };
    }

    /// Called in every fdatasync: blocks the armed one until released.
    fn in_sync(&self) -> std::io::Result<()> {
        let mut s = self.state.lock().unwrap();
        if !s.armed {
            return Ok(());
        }
        s.armed = false;
        s.held = true;
        self.changed.notify_all();
        let deadline = Instant::now() + 2 * WAIT;
        while !s.released {
            let now = Instant::now();
            if now >= deadline {
                s.timed_out = true;
                break;
            }
            s = self.changed.wait_timeout(s, deadline - now).unwrap().0;
        }
        s.held = false;
        if s.fail {
            return Err(std::io::Error::other("held fdatasync fails"));
        }
        Ok(())
    }

    fn is_held(&self) -> bool {
        self.state.lock().unwrap().held
    }

    fn wait_until_held(&self) {
        let mut s = self.state.lock().unwrap();
        let deadline = Instant::now() + WAIT;
        while !s.held {
            let now = Instant::now();
            assert!(
                now < deadline,
                "the commit thread never reached the held sync"
            );
            s = self.changed.wait_timeout(s, deadline - now).unwrap().0;
        }
    }

    fn release(&self) {
        self.state.lock().unwrap().released = true;
        self.changed.notify_all();
    }

    fn timed_out(&self) -> bool {
        self.state.lock().unwrap().timed_out
    }
}

/// The real file system, with every file's fdatasync going through a [`Hold`].
#[derive(Clone)]
struct HeldIo {
    hold: Arc<Hold>,
}

impl std::fmt::Debug for HeldIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeldIo")
    }
}

struct HeldFile {
    inner: Arc<dyn IoFile>,
    hold: Arc<Hold>,
}

impl IoFile for HeldFile {
    fn size(&self) -> std::io::Result<u64> {
        self.inner.size()
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.hold.in_sync()?;
        self.inner.sync_data()
    }
    fn map(&self, len: u64) -> std::io::Result<Mapped> {
        self.inner.map(len)
    }
    fn read_durable(&self, offset: u64, len: usize) -> std::io::Result<Option<Vec<u8>>> {
        self.inner.read_durable(offset, len)
    }
    fn allocate(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.allocate(offset, len)
    }
}

impl HeldIo {
    fn wrap(&self, f: Arc<dyn IoFile>) -> Arc<dyn IoFile> {
        Arc::new(HeldFile {
            inner: f,
            hold: Arc::clone(&self.hold),
        })
    }
}

fn real() -> RealIo {
    RealIo
}

impl Io for HeldIo {
    fn create_dir_all(&self, dir: &Path, mode: u32) -> std::io::Result<()> {
        real().create_dir_all(dir, mode)
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        real().list(dir)
    }
    fn open(&self, path: &Path, read_only: bool) -> std::io::Result<Arc<dyn IoFile>> {
        Ok(self.wrap(real().open(path, read_only)?))
    }
    fn create(&self, path: &Path, mode: u32) -> std::io::Result<Arc<dyn IoFile>> {
        Ok(self.wrap(real().create(path, mode)?))
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        real().remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        real().rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        real().sync_dir(dir)
    }
    fn try_lock(&self, path: &Path, mode: u32) -> std::io::Result<LockGuard> {
        real().try_lock(path, mode)
    }
}

/// A store in `dir` on [`HeldIo`] with queue bound `bound`.
fn open_held(dir: &Path, bound: usize) -> (Arc<LogStore>, Arc<Hold>) {
    let hold = Arc::new(Hold::default());
    let io = HeldIo {
        hold: Arc::clone(&hold),
    };
    let options = Options::default()
        .segment_size_bytes(1 << 20)
        .max_queued_bytes(bound)
        .io(Arc::new(io));
    (Arc::new(LogStore::open_with(dir, options).unwrap()), hold)
}

/// Polls `condition` until it holds; fails the test after [`WAIT`].
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The async twin of [`wait_for`], yielding to the executor between looks.
async fn wait_for_async(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Every execution's history is 1..=n without gaps, whole batches, and holds every
/// acknowledged batch at its acknowledged sequences.
fn check_histories(store: &LogStore, acks: &[(ExecutionId, u64, String)]) {
    let mut executions: Vec<&ExecutionId> = acks.iter().map(|a| &a.0).collect();
    executions.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    executions.dedup();
    for e in executions {
        let events = store.load_events_blocking(e).unwrap();
        for (i, ev) in events.iter().enumerate() {
            assert_eq!(ev.sequence, i as u64 + 1, "{e}: gap or duplicate");
        }
        assert_whole_batches(&events, "history");
        let acked: u64 = acks.iter().filter(|a| &a.0 == e).map(|_| BATCH).sum();
        assert_eq!(events.len() as u64, acked, "{e}: events lost or extra");
        for (_, first, tag) in acks.iter().filter(|a| &a.0 == e) {
            let got = &events[*first as usize - 1].event;
            assert!(
                matches!(got, ExecutionEventData::StepCompleted { step_id, .. } if step_id.as_str() == tag),
                "{e}: batch {tag} is not at its acknowledged sequence {first}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// (a) Many threads, big batches, tiny bound.

/// With the bound at `bound`, 12 threads (on 4 executions) append big batches: first
/// all while one commit is held (so each thread's append must wait, in line), then
/// freely. Every append succeeds, sequences are consecutive, and the peak of queued
/// bytes stays within max(bound, one append).
fn many_threads_big_batches(bound: usize) {
    const THREADS: usize = 12;
    const ROUNDS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let (store, hold) = open_held(dir.path(), bound);
    let execution = |t: usize| ExecutionId::from(format!("e{}", t % 4));
    let tenant = TenantId::from("t");

    // One append committing, its fdatasync held: it stays queued.
    hold.arm(false);
    let first = {
        let store = Arc::clone(&store);
        let (e, t) = (execution(0), tenant.clone());
        std::thread::spawn(move || store.append_batch_blocking(&e, &t, batch("first", BATCH)))
    };
    hold.wait_until_held();
    let queued_alone = store.stats().queued_bytes;
    assert!(
        (ONE_BATCH_MIN..=ONE_BATCH_MAX).contains(&queued_alone),
        "one batch counts {queued_alone} bytes"
    );

    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (store, tenant, e) = (Arc::clone(&store), tenant.clone(), execution(t));
            std::thread::spawn(move || {
                let mut acks = Vec::new();
                for round in 0..ROUNDS {
                    let tag = format!("t{t}r{round}");
                    let first = store
                        .append_batch_blocking(&e, &tenant, batch(&tag, BATCH))
                        .unwrap_or_else(|err| panic!("{tag}: {err}"));
                    acks.push((e.clone(), first, tag));
                }
                acks
            })
        })
        .collect();

    // How many fit beside the held batch: none with a tiny bound.
    let fit_beside = bound.saturating_sub(queued_alone) / ONE_BATCH_MAX;
    let expect_waiting = THREADS.saturating_sub(fit_beside + 1);
    wait_for("the appenders to queue up or be admitted", || {
        let s = store.stats();
        s.queue_waiters >= expect_waiting || s.peak_queued_bytes > bound.max(ONE_BATCH_MAX)
    });
    let s = store.stats();
    assert!(
        s.peak_queued_bytes <= bound.max(ONE_BATCH_MAX),
        "appends were admitted beyond the bound: {} queued bytes, bound {bound}",
        s.peak_queued_bytes
    );
    assert!(s.queue_waiters >= expect_waiting, "{s:?}");
    hold.release();

    let mut acks = vec![(execution(0), first.join().unwrap().unwrap(), "first".into())];
    for t in threads {
        acks.extend(t.join().unwrap());
    }
    assert!(!hold.timed_out());
    assert_eq!(acks.len(), 1 + THREADS * ROUNDS);
    check_histories(&store, &acks);

    let s = store.stats();
    assert!(
        s.peak_queued_bytes <= bound.max(ONE_BATCH_MAX),
        "peak {} exceeds max(bound {bound}, one batch {ONE_BATCH_MAX})",
        s.peak_queued_bytes
    );
    assert!(s.peak_queued_bytes >= ONE_BATCH_MIN, "{s:?}");
    assert_eq!(
        s.queued_bytes, 0,
        "bytes still counted after every append completed"
    );
    assert_eq!(s.queue_waiters, 0);

    // The same after a reopen (without the hold): nothing was lost.
    drop(store);
    let reopened = LogStore::open(dir.path()).unwrap();
    check_histories(&reopened, &acks);
}

#[test]
fn tiny_bound_every_append_goes_through_alone() {
    // Every batch is larger than the bound: each is admitted only into an empty queue.
    many_threads_big_batches(1);
}

#[test]
fn bound_of_a_few_batches_is_never_exceeded() {
    many_threads_big_batches(3 * ONE_BATCH_MAX);
}

/// Once a batch waits for room, later appends line up behind it instead of filling
/// the room it waits for: a batch larger than the bound, which needs an empty queue,
/// is not starved by a stream of small appends.
#[test]
fn a_waiting_large_batch_is_not_overtaken() {
    let dir = tempfile::tempdir().unwrap();
    let (store, hold) = open_held(dir.path(), 3 * ONE_BATCH_MAX);
    let (e, t) = (ExecutionId::from("e"), TenantId::from("t"));
    let spawn = |tag: &'static str, len: u64| {
        let (store, e, t) = (Arc::clone(&store), e.clone(), t.clone());
        std::thread::spawn(move || store.append_batch_blocking(&e, &t, batch(tag, len)))
    };
    hold.arm(false);
    let small = spawn("small", 1);
    hold.wait_until_held();
    let queued_small = store.stats().queued_bytes;
    // Larger than the bound: admitted only into an empty queue.
    let large = spawn("large", 4 * BATCH);
    wait_for("the large batch to wait", || {
        store.stats().queue_waiters == 1
    });
    let later = spawn("later", 1);
    wait_for("the later append to wait or be admitted", || {
        let s = store.stats();
        s.queue_waiters == 2 || s.queued_bytes > queued_small
    });
    let s = store.stats();
    assert_eq!(
        s.queued_bytes, queued_small,
        "a later append overtook the waiting batch: {s:?}"
    );
    assert_eq!(s.queue_waiters, 2, "{s:?}");
    hold.release();
    assert_eq!(small.join().unwrap().unwrap(), 1);
    assert_eq!(large.join().unwrap().unwrap(), 2);
    assert_eq!(later.join().unwrap().unwrap(), 2 + 4 * BATCH);
    assert!(!hold.timed_out());
}

// ---------------------------------------------------------------------------------
// (b) Async appends.

/// On a current-thread runtime, an append that must wait for room yields to the
/// executor: the task that releases the held commit runs meanwhile. Were admission to
/// block the (only) thread, the release would never run and the held fdatasync would
/// time out.
#[test]
fn async_admission_does_not_block_a_current_thread_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let (store, hold) = open_held(dir.path(), 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let acks = rt.block_on(async {
        let t = TenantId::from("t");
        let e = ExecutionId::from("e");
        hold.arm(false);
        let a = {
            let (store, e, t) = (Arc::clone(&store), e.clone(), t.clone());
            tokio::spawn(async move { store.append_batch(&e, &t, batch("a", BATCH)).await })
        };
        wait_for_async("the first append to be held", || hold.is_held()).await;
        let queued_a = store.stats().queued_bytes;
        let b = {
            let (store, e, t) = (Arc::clone(&store), e.clone(), t.clone());
            tokio::spawn(async move { store.append_batch(&e, &t, batch("b", BATCH)).await })
        };
        // B runs on this thread until it waits for room; then this task runs again.
        wait_for_async("the second append to wait", || {
            let s = store.stats();
            s.queue_waiters == 1 || s.queued_bytes > queued_a
        })
        .await;
        let s = store.stats();
        assert_eq!(s.queue_waiters, 1, "{s:?}");
        assert_eq!(s.queued_bytes, queued_a, "admitted beyond the bound: {s:?}");
        assert!(!b.is_finished());
        hold.release();
        let first_a = a.await.unwrap().unwrap();
        let first_b = b.await.unwrap().unwrap();
        vec![
            (e.clone(), first_a, "a".to_string()),
            (e.clone(), first_b, "b".to_string()),
        ]
    });
    assert!(
        !hold.timed_out(),
        "the executor's thread was blocked while an append waited for room"
    );
    check_histories(&store, &acks);
}

/// `tasks` async appenders, `rounds` batches each, on 3 executions, through `run`
/// (an executor's block_on); returns the acknowledgements.
async fn async_appenders(
    store: Arc<LogStore>,
    tasks: usize,
    rounds: usize,
) -> Vec<(ExecutionId, u64, String)> {
    let appenders = (0..tasks).map(|task| {
        let store = Arc::clone(&store);
        async move {
            let e = ExecutionId::from(format!("e{}", task % 3));
            let t = TenantId::from("t");
            let mut acks = Vec::new();
            for round in 0..rounds {
                let tag = format!("k{task}r{round}");
                let first = store
                    .append_batch(&e, &t, batch(&tag, BATCH))
                    .await
                    .unwrap();
                acks.push((e.clone(), first, tag));
            }
            acks
        }
    });
    futures::future::join_all(appenders)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Many async appenders with a tiny bound complete on every kind of executor, and
/// the bound holds.
#[test]
fn async_appends_complete_on_any_executor() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(LogStore::open_with(dir.path(), Options::default().max_queued_bytes(1)).unwrap());
    let mut acks = Vec::new();
    let current = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    acks.extend(current.block_on(async_appenders(Arc::clone(&store), 24, 3)));
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    acks.extend(multi.block_on(async_appenders(Arc::clone(&store), 24, 3)));
    acks.extend(futures::executor::block_on(async_appenders(
        Arc::clone(&store),
        24,
        3,
    )));
    check_histories(&store, &acks);
    let s = store.stats();
    assert!(s.peak_queued_bytes <= ONE_BATCH_MAX, "{s:?}");
    assert_eq!((s.queued_bytes, s.queue_waiters), (0, 0), "{s:?}");
}

/// Polls `f` once with a waker that does nothing.
fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

/// A future dropped while it waits for room leaves the line; one dropped after it was
/// admitted (before being polled again) gives its bytes back. Either way the next
/// append goes through and nothing stays counted.
#[test]
fn dropped_async_appends_leave_nothing_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (store, hold) = open_held(dir.path(), 1);
    let (e, t) = (ExecutionId::from("e"), TenantId::from("t"));
    let mut acks = Vec::new();
    for admitted_before_drop in [false, true] {
        hold.arm(false);
        let mut a = Some({
            let (store, e, t) = (Arc::clone(&store), e.clone(), t.clone());
            std::thread::spawn(move || store.append_batch_blocking(&e, &t, batch("a", BATCH)))
        });
        hold.wait_until_held();
        let queued_a = store.stats().queued_bytes;
        let mut complete_a = || {
            hold.release();
            let first = a.take().unwrap().join().unwrap().unwrap();
            acks.push((e.clone(), first, "a".to_string()));
        };
        {
            let mut b = pin!(store.append_batch(&e, &t, batch("dropped", BATCH)));
            assert!(poll_once(b.as_mut()).is_pending());
            assert_eq!(store.stats().queue_waiters, 1);
            if admitted_before_drop {
                complete_a();
                // A completed: B is admitted (its waker was woken), not yet polled.
                wait_for("the waiting future to be admitted", || {
                    store.stats().queue_waiters == 0
                });
                let s = store.stats();
                assert!(s.queued_bytes >= ONE_BATCH_MIN, "B not admitted: {s:?}");
            } else {
                assert_eq!(store.stats().queued_bytes, queued_a);
            }
        } // B dropped here.
        let s = store.stats();
        assert_eq!(s.queue_waiters, 0, "a dropped future stays in line: {s:?}");
        if !admitted_before_drop {
            assert_eq!(s.queued_bytes, queued_a, "{s:?}");
            complete_a();
        }
        wait_for("every byte to be released", || {
            store.stats().queued_bytes == 0
        });
        let first = store
            .append_batch_blocking(&e, &t, batch("after", BATCH))
            .unwrap();
        acks.push((e.clone(), first, "after".to_string()));
    }
    assert!(!hold.timed_out());
    let tags: Vec<_> = acks.iter().map(|a| a.2.as_str()).collect();
    assert_eq!(tags, ["a", "after", "a", "after"]);
    let events = store.load_events_blocking(&e).unwrap();
    assert_eq!(
        events.len() as u64,
        4 * BATCH,
        "a dropped append was written"
    );
}

// ---------------------------------------------------------------------------------
// (c) Waiters released with an error.

/// An appender (blocking or async) waits for room while the commit thread is stuck;
/// `stop` (close, or the stuck fdatasync failing) must release it with `expect`
/// before the commit thread moves on.
fn waiter_is_refused(async_waiter: bool, by_close: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (store, hold) = open_held(dir.path(), 1);
    let (e, t) = (ExecutionId::from("e"), TenantId::from("t"));
    store
        .append_batch_blocking(&e, &t, batch("before", BATCH))
        .unwrap();
    hold.arm(!by_close);
    let a = {
        let (store, e, t) = (Arc::clone(&store), e.clone(), t.clone());
        std::thread::spawn(move || store.append_batch_blocking(&e, &t, batch("a", BATCH)))
    };
    hold.wait_until_held();
    let (tx, rx) = mpsc::channel();
    let b = {
        let (store, e, t) = (Arc::clone(&store), e.clone(), t.clone());
        std::thread::spawn(move || {
            let result = if async_waiter {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                rt.block_on(store.append_batch(&e, &t, batch("b", BATCH)))
                    .map_err(|err| err.downcast::<Error>().unwrap())
            } else {
                store.append_batch_blocking(&e, &t, batch("b", BATCH))
            };
            tx.send(result).unwrap();
        })
    };
    wait_for("the second append to wait", || {
        store.stats().queue_waiters == 1
    });

    std::thread::scope(|scope| {
        if by_close {
            // Close blocks until the held group completes; the waiter must not.
            scope.spawn(|| store.close().unwrap());
        } else {
            // The held fdatasync fails: the store is poisoned.
            hold.release();
        }
        let result = rx
            .recv_timeout(WAIT)
            .expect("the waiting appender was not released");
        match (by_close, result) {
            (true, Err(Error::Closed)) | (false, Err(Error::Poisoned { .. })) => {}
            (_, other) => panic!("the waiting appender got {other:?}"),
        }
        if by_close {
            assert!(
                hold.is_held(),
                "released only after the commit thread moved on"
            );
            hold.release();
        }
    });
    b.join().unwrap();
    let a = a.join().unwrap();
    if by_close {
        a.unwrap();
    } else {
        assert!(matches!(a, Err(Error::Poisoned { .. })), "{a:?}");
    }
    assert!(!hold.timed_out());
    let s = store.stats();
    assert_eq!((s.queued_bytes, s.queue_waiters), (0, 0), "{s:?}");
    drop(store);
    let reopened = LogStore::open(dir.path()).unwrap();
    let tags: Vec<String> = reopened
        .load_events_blocking(&e)
        .unwrap()
        .iter()
        .filter_map(|ev| match &ev.event {
            ExecutionEventData::StepCompleted { step_id, .. } => Some(step_id.to_string()),
            _ => None,
        })
        .collect();
    assert!(
        !tags.contains(&"b".to_string()),
        "the refused append was written"
    );
}

#[test]
fn close_releases_a_waiting_blocking_appender() {
    waiter_is_refused(false, true);
}

#[test]
fn close_releases_a_waiting_async_appender() {
    waiter_is_refused(true, true);
}

#[test]
fn poison_releases_a_waiting_blocking_appender() {
    waiter_is_refused(false, false);
}

#[test]
fn poison_releases_a_waiting_async_appender() {
    waiter_is_refused(true, false);
}

#[test]
fn max_queued_bytes_zero_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let err = LogStore::open_with(dir.path(), Options::default().max_queued_bytes(0)).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument(m) if m.contains("max_queued_bytes")),
        "{err:?}"
    );
}
