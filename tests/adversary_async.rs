//! Adversarial tests of the async path (issue 18): the per-store count of appends in
//! progress, the commit thread's wait for stragglers, wakers that panic, close and
//! poison with every kind of append in flight. Written by an adversarial review; the
//! measurements among them are `#[ignore]`d (run by name with `--ignored --nocapture`,
//! one at a time, on a real disk).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::task::Context;
use std::time::{Duration, Instant};

use execlog::fault::{Fault, Op, SimIo};
use execlog::*;

fn step(n: u64) -> ExecutionEventData {
    ExecutionEventData::StepCompleted {
        step_id: StepId::from(format!("step-{n}")),
        output: None,
        duration_ms: n,
    }
}

fn big(n: u64, len: usize) -> ExecutionEventData {
    ExecutionEventData::StepCompleted {
        step_id: StepId::from(format!("big-{n}")),
        output: Some("x".repeat(len)),
        duration_ms: n,
    }
}

/// Runs `f` on a thread; fails the test if it does not return within `secs`.
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => {
            let _ = h.join();
            v
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let _ = h.join();
            panic!("{what}: panicked")
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: HANG, no result within {secs} s"),
    }
}

/// p50 of `n` lone blocking appends, in µs.
fn lone_p50(store: &LogStore, e: &ExecutionId, from: u64, n: u64) -> u64 {
    let t = TenantId::from("t");
    let mut v: Vec<u64> = (0..n)
        .map(|i| {
            let at = Instant::now();
            store
                .append_blocking(e, &t, step(from + i))
                .expect("helper");
            at.elapsed().as_micros() as u64
        })
        .collect();
    v.sort_unstable();
    v[v.len() / 2]
}

/// CPU time of every live thread of this process, in ns (schedstat, exact).
fn cpu_ns() -> u64 {
    let mut total = 0;
    for t in std::fs::read_dir("/proc/self/task")
        .expect("helper")
        .flatten()
    {
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
            total += s
                .split(' ')
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// CPU µs per lone blocking append on `store` (600 appends).
fn cpu_per_append(store: &LogStore, from: u64) -> u64 {
    let before = cpu_ns();
    let _ = lone_p50(store, &ExecutionId::from("cpu"), from, 600);
    (cpu_ns() - before) / 600 / 1000
}

/// Alternating rounds on `x` and `y`; the median of each store's round p50s.
fn alternate(x: &LogStore, y: &LogStore, counter: &mut u64) -> (u64, u64) {
    let (ex, ey) = (ExecutionId::from("lone-x"), ExecutionId::from("lone-y"));
    let (mut px, mut py) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        px.push(lone_p50(x, &ex, *counter, 120));
        py.push(lone_p50(y, &ey, *counter, 120));
        *counter += 120;
    }
    px.sort_unstable();
    py.sort_unstable();
    (px[2], py[2])
}

/// Polls an append future once (it queues its record and registers a waker).
fn poll_once<'a>(
    store: &'a LogStore,
    e: &ExecutionId,
) -> Pin<Box<dyn Future<Output = anyhow::Result<u64>> + Send + 'a>> {
    // The ids must outlive the future: leak them (a few bytes per call).
    let e: &'static ExecutionId = Box::leak(Box::new(e.clone()));
    let t: &'static TenantId = Box::leak(Box::new(TenantId::from("t")));
    let mut f = EventStore::append(store, e, t, step(0));
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    assert!(f.as_mut().poll(&mut cx).is_pending());
    f
}

/// A polled-once append future that is kept (a task parked elsewhere, a select arm
/// never polled again, an executor thread stuck in a blocking call), or forgotten,
/// keeps counting as "in progress" on its store: every later group, even a lone
/// writer's, waits min(100 µs, last fdatasync) for a straggler that never comes.
#[test]
#[ignore = "a measurement, not a check: run it by name with --ignored --nocapture"]
fn a_held_or_forgotten_append_future_slows_every_later_group_of_its_store() {
    within(60, "held future", || {
        let (dx, dy) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let x = LogStore::open(dx.path()).unwrap();
        let y = LogStore::open(dy.path()).unwrap();
        let mut n = 0;
        let _ = alternate(&x, &y, &mut n); // warm up
        let (bx, by) = alternate(&x, &y, &mut n);
        println!("baseline:          x p50 {bx} µs, y p50 {by} µs");

        let held = poll_once(&y, &ExecutionId::from("held"));
        let (hx, hy) = alternate(&x, &y, &mut n);
        println!("one future held:   x p50 {hx} µs, y p50 {hy} µs");
        let (cx, cy) = (cpu_per_append(&x, 0), cpu_per_append(&y, 0));
        println!("one future held:   CPU per append: x {cx} µs, y {cy} µs");
        drop(held);
        let (rx, ry) = alternate(&x, &y, &mut n);
        println!("dropped again:     x p50 {rx} µs, y p50 {ry} µs");
        let (cx, cy) = (cpu_per_append(&x, 600), cpu_per_append(&y, 600));
        println!("dropped again:     CPU per append: x {cx} µs, y {cy} µs");
        // A future polled once then dropped releases its count (no leak); never polled,
        // it never took one.
        for i in 0..100 {
            drop(poll_once(&y, &ExecutionId::from(format!("dropped-{i}"))));
            drop(EventStore::append(
                &y,
                &ExecutionId::from("never"),
                &TenantId::from("t"),
                step(0),
            ));
        }
        let (dx2, dy2) = alternate(&x, &y, &mut n);
        println!("after 100 drops:   x p50 {dx2} µs, y p50 {dy2} µs");
        std::mem::forget(poll_once(&y, &ExecutionId::from("forgotten")));
        let (fx, fy) = alternate(&x, &y, &mut n);
        println!("one forgotten:     x p50 {fx} µs, y p50 {fy} µs");
        let s = y.stats().writes;
        println!(
            "y: {} groups, fdatasync p50 <= {:?} µs",
            s.groups,
            s.fdatasync_micros.quantile_upper_bound(0.5)
        );
        assert!(
            ry <= rx * 5 / 4 + 15 && dy2 <= dx2 * 5 / 4 + 15,
            "a dropped future left its count behind"
        );
        assert!(
            hy <= hx * 5 / 4 + 15 && fy <= fx * 5 / 4 + 15,
            "a lone writer on the store with a held ({hy} vs {hx} µs) or forgotten \
             ({fy} vs {fx} µs) append future pays the straggler wait on every append"
        );
    });
}

/// With the queue bound full, appenders waiting for admission count as in progress,
/// but they cannot be queued before this group completes (its bytes are released at
/// completion): every group waits the whole straggler bound. Groups of one append
/// each, one writer against four: the groups should cost about the same.
#[test]
#[ignore = "a measurement, not a check: run it by name with --ignored --nocapture"]
fn a_full_queue_bound_makes_every_group_wait_for_stragglers_that_cannot_come() {
    within(60, "full bound", || {
        let dir = tempfile::tempdir().unwrap();
        // A 1-byte bound: every append is larger, so it is admitted only when nothing
        // is queued, and every group holds exactly one append.
        let store = Arc::new(
            LogStore::open_with(dir.path(), Options::default().max_queued_bytes(1)).unwrap(),
        );
        let t = TenantId::from("t");
        let run = |writers: u64, per: u64| {
            let before = store.stats().writes.groups;
            let at = Instant::now();
            std::thread::scope(|s| {
                for w in 0..writers {
                    let (store, t) = (&store, &t);
                    s.spawn(move || {
                        let e = ExecutionId::from(format!(
                            "w{writers}-{w}-{}",
                            at.elapsed().as_nanos()
                        ));
                        for i in 0..per {
                            store.append_blocking(&e, t, step(i)).unwrap();
                        }
                    });
                }
            });
            let groups = store.stats().writes.groups - before;
            at.elapsed().as_micros() as u64 / groups.max(1)
        };
        run(1, 100);
        let mut one = Vec::new();
        let mut four = Vec::new();
        for _ in 0..5 {
            one.push(run(1, 200));
            four.push(run(4, 50));
        }
        one.sort_unstable();
        four.sort_unstable();
        let s = store.stats().writes;
        println!(
            "µs per group: 1 writer {one:?}, 4 writers behind a full bound {four:?}; \
             appends/group p50 <= {:?}, fdatasync p50 <= {:?} µs",
            s.appends_per_group.quantile_upper_bound(0.5),
            s.fdatasync_micros.quantile_upper_bound(0.5)
        );
        assert!(
            four[2] <= one[0] * 3 / 2,
            "a group behind a full bound costs {} µs against {} µs for a lone writer's",
            four[2],
            one[0]
        );
    });
}

/// A keyed retry waiting for its in-flight original counts as in progress but only
/// comes back after the original's group: that group waits the straggler bound.
/// Functional part: many concurrent retries of one key all resolve, once stored.
#[test]
fn concurrent_keyed_retries_resolve_and_store_once() {
    within(30, "keyed retries", || {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LogStore::open(dir.path()).unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        rt.block_on(async {
            let mut hs = Vec::new();
            for k in 0..20u64 {
                for _ in 0..16 {
                    let store = store.clone();
                    hs.push(tokio::spawn(async move {
                        let e = ExecutionId::from(format!("k{}", k % 4));
                        store
                            .append_with(
                                &e,
                                &TenantId::from("t"),
                                vec![step(k)],
                                AppendOptions::key(format!("key-{k}")),
                            )
                            .await
                            .unwrap()
                    }));
                }
            }
            let mut stored = 0;
            for h in hs {
                if !h.await.unwrap().replayed {
                    stored += 1;
                }
            }
            assert_eq!(stored, 20);
        });
        let total: usize = (0..4)
            .map(|k| {
                store
                    .load_events_blocking(&ExecutionId::from(format!("k{k}")))
                    .unwrap()
                    .len()
            })
            .sum();
        assert_eq!(total, 20);
    });
}

/// Close while blocking, async, cancelled, keyed and queue-bound-waiting appends are
/// in flight: everyone returns, and every acknowledged append is there after reopen.
#[test]
fn close_with_every_kind_of_append_in_flight_returns_everyone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let acked = within(20, "close in flight", move || {
        let store = Arc::new(
            LogStore::open_with(&path, Options::default().max_queued_bytes(16 << 10)).unwrap(),
        );
        let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for w in 0..8u64 {
            let (store, acked, stop) = (store.clone(), acked.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let e = format!("b{w}");
                let t = TenantId::from("t");
                for i in 0.. {
                    let r = if w % 2 == 0 {
                        store.append_blocking(&ExecutionId::from(e.as_str()), &t, step(i))
                    } else {
                        store.append_batch_blocking(
                            &ExecutionId::from(e.as_str()),
                            &t,
                            vec![big(i, 9000), big(i, 9000)],
                        )
                    };
                    match r {
                        Ok(seq) => acked.lock().unwrap().push((e.clone(), seq)),
                        Err(_) => break,
                    }
                    if stop.load(Ordering::Relaxed) && i > 1_000_000 {
                        break;
                    }
                }
            }));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        let mut tasks = Vec::new();
        for w in 0..64u64 {
            let (store, acked) = (store.clone(), acked.clone());
            tasks.push(rt.spawn(async move {
                let e = format!("a{w}");
                let t = TenantId::from("t");
                for i in 0u64.. {
                    let id = ExecutionId::from(e.as_str());
                    if w % 4 == 0 {
                        // Cancelled after the first poll (queued or waiting for room).
                        let f = EventStore::append(store.as_ref(), &id, &t, step(i));
                        if tokio::time::timeout(Duration::ZERO, f).await.is_err() {
                            tokio::task::yield_now().await;
                            continue;
                        }
                        break;
                    }
                    let r = if w % 4 == 1 {
                        store
                            .append_with(
                                &id,
                                &t,
                                vec![step(i % 3)],
                                AppendOptions::key(format!("k{}", i % 3)),
                            )
                            .await
                            .map(|o| o.first_sequence)
                    } else {
                        EventStore::append(store.as_ref(), &id, &t, step(i)).await
                    };
                    match r {
                        Ok(seq) => acked.lock().unwrap().push((e.clone(), seq)),
                        Err(_) => break,
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let closed = store.close();
        for t in threads {
            t.join().unwrap();
        }
        rt.block_on(async {
            for t in tasks {
                t.await.unwrap();
            }
        });
        println!("close: {closed:?}");
        std::mem::take(&mut *acked.lock().unwrap())
    });
    let store = LogStore::open(dir.path()).unwrap();
    for (e, seq) in &acked {
        let latest = store
            .get_latest_sequence_blocking(&ExecutionId::from(e.as_str()))
            .unwrap();
        assert!(
            latest >= Some(*seq),
            "{e} acknowledged {seq}, found {latest:?}"
        );
    }
    println!("{} acknowledged appends all durable", acked.len());
}

/// Thousands of async appenders, a third cancelled after their first poll (some while
/// queued, some while waiting for room under a small bound): all done in time, and
/// afterwards a lone writer on that store is as fast as on a fresh one (no count left
/// behind).
#[test]
fn thousands_of_cancelled_and_finished_async_appends_leave_no_count_behind() {
    within(60, "thousands", || {
        let opts = || Options::default().max_queued_bytes(8 << 10);
        let (dx, dy) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let x = LogStore::open_with(dx.path(), opts()).unwrap();
        let y = Arc::new(LogStore::open_with(dy.path(), opts()).unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        let at = Instant::now();
        let done = Arc::new(AtomicU64::new(0));
        rt.block_on(async {
            let mut hs = Vec::new();
            for w in 0..3000u64 {
                let (y, done) = (y.clone(), done.clone());
                hs.push(tokio::spawn(async move {
                    let e = ExecutionId::from(format!("t{w}"));
                    let t = TenantId::from("t");
                    for i in 0..5u64 {
                        let f = EventStore::append(y.as_ref(), &e, &t, big(i, 500));
                        if (w + i) % 3 == 0 {
                            let _ = tokio::time::timeout(Duration::ZERO, f).await;
                        } else {
                            f.await.unwrap();
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
            for h in hs {
                h.await.unwrap();
            }
        });
        println!(
            "3000 tasks x 5 appends in {:?} ({} awaited)",
            at.elapsed(),
            done.load(Ordering::Relaxed)
        );
        drop(rt);
        assert_eq!(y.stats().appends_in_progress, 0, "a count was left behind");
        let mut n = 0;
        let (px, py) = alternate(&x, &y, &mut n);
        println!("after: fresh store p50 {px} µs, used store p50 {py} µs");
    });
}

/// The store is poisoned (an fdatasync fails for good) while blocking and async
/// appenders are in flight: all of them return an error or an acknowledgement promptly.
#[test]
fn poison_with_appenders_in_flight_returns_everyone() {
    within(20, "poison", || {
        let sim = SimIo::new();
        let store = Arc::new(
            LogStore::open_with(
                std::path::Path::new("/s"),
                Options::default().io(Arc::new(sim.clone())),
            )
            .unwrap(),
        );
        let calls = sim.calls();
        sim.fail_at(calls + 200, Op::Sync, Fault::Persistent);
        let errors = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for w in 0..8u64 {
            let (store, errors) = (store.clone(), errors.clone());
            threads.push(std::thread::spawn(move || {
                let e = ExecutionId::from(format!("b{w}"));
                for i in 0..10_000 {
                    if store
                        .append_blocking(&e, &TenantId::from("t"), step(i))
                        .is_err()
                    {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        rt.block_on(async {
            let mut hs = Vec::new();
            for w in 0..32u64 {
                let (store, errors) = (store.clone(), errors.clone());
                hs.push(tokio::spawn(async move {
                    let e = ExecutionId::from(format!("a{w}"));
                    for i in 0..10_000 {
                        if EventStore::append(store.as_ref(), &e, &TenantId::from("t"), step(i))
                            .await
                            .is_err()
                        {
                            errors.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }));
            }
            for h in hs {
                h.await.unwrap();
            }
        });
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            errors.load(Ordering::Relaxed),
            40,
            "every appender saw the poison"
        );
    });
}

/// Voluntary context switches of the calling thread.
fn my_switches() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/status").expect("helper");
    s.lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("helper")
}

/// Sleeps (voluntary context switches) per 200 lone blocking appends on `store`.
fn lone_sleeps(store: &LogStore, from: u64) -> u64 {
    let (e, t) = (ExecutionId::from("lone"), TenantId::from("t"));
    let before = my_switches();
    for i in 0..200 {
        store
            .append_blocking(&e, &t, step(from + i))
            .expect("helper");
    }
    my_switches() - before
}

/// Two stores in one process: async appends pending on store A (three tasks awaiting
/// their acknowledgement, or held) must not make a lone blocking writer on store B
/// sleep on its condition variable for every append instead of yield-polling (a
/// thread wake-up per append, the cost the lone poll saves). They did while async
/// appends counted in the process-wide count of blocking appenders.
#[test]
#[ignore = "a measurement, not a check: run it alone by name with --ignored --nocapture"]
fn held_async_appends_on_one_store_leave_lone_polling_on_another_alone() {
    within(60, "two stores", || {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = LogStore::open(da.path()).unwrap();
        let b = LogStore::open(db.path()).unwrap();
        let _ = lone_sleeps(&b, 0);
        let s0 = lone_sleeps(&b, 200);
        let held: Vec<_> = (0..3)
            .map(|i| poll_once(&a, &ExecutionId::from(format!("h{i}"))))
            .collect();
        let s1 = lone_sleeps(&b, 400);
        drop(held);
        let s2 = lone_sleeps(&b, 600);
        println!(
            "store B's lone writer, sleeps per 200 appends: {s0}; with 3 async appends \
             pending on store A: {s1}; after they were dropped: {s2}"
        );
        if s0 > 100 {
            println!(
                "(baseline already sleeping: counts leaked by earlier tests in this process; run alone)"
            );
            return;
        }
        assert!(
            s1 <= s0 + 40,
            "async appends pending on store A made store B's lone writer sleep {s1} times \
             per 200 appends (against {s0})"
        );
    });
}

/// A waker whose `wake` panics (a buggy or shut-down custom executor) is called on the
/// commit thread: the panic must not poison the store for every other appender (it did
/// before the wake was wrapped in `catch_unwind`).
#[test]
fn a_panicking_waker_does_not_poison_the_store() {
    use std::task::{Wake, Waker};
    struct Gone;
    impl Wake for Gone {
        fn wake(self: Arc<Self>) {
            panic!("this executor is gone");
        }
    }
    within(20, "panicking waker", || {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let e = ExecutionId::from("e");
        let t = TenantId::from("t");
        let waker = Waker::from(Arc::new(Gone));
        let mut f = EventStore::append(&store, &e, &t, step(0));
        assert!(
            f.as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        std::thread::sleep(Duration::from_millis(100));
        drop(f);
        let other = store.append_blocking(&ExecutionId::from("other"), &t, step(1));
        println!("another writer's append after the panicking wake: {other:?}");
        assert!(
            other.is_ok(),
            "one task's waker poisoned the store: {other:?}"
        );
    });
}

/// Nor may it leave the appends after it in the same group unanswered: the
/// completion loop unwound, the rest of the group's tickets were dropped uncompleted,
/// and their appenders, blocking or async, hung for ever.
#[test]
fn a_panicking_waker_leaves_the_rest_of_its_group_acknowledged() {
    use std::task::{Wake, Waker};
    struct Gone;
    impl Wake for Gone {
        fn wake(self: Arc<Self>) {
            panic!("this executor is gone");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    // One group gathers for 200 ms: the panicking append first, the others after it.
    let store = Arc::new(
        LogStore::open_with(dir.path(), Options::default().commit_delay_us(200_000)).unwrap(),
    );
    let t = TenantId::from("t");
    let e: &'static ExecutionId = Box::leak(Box::new(ExecutionId::from("e")));
    let tt: &'static TenantId = Box::leak(Box::new(t.clone()));
    let waker = Waker::from(Arc::new(Gone));
    let s2 = store.clone();
    let mut f = EventStore::append(s2.as_ref(), e, tt, step(0));
    assert!(
        f.as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    std::thread::sleep(Duration::from_millis(20));
    let (tx, rx) = mpsc::channel();
    for w in 0..3 {
        let (store, tx) = (store.clone(), tx.clone());
        std::thread::spawn(move || {
            let r = store.append_blocking(
                &ExecutionId::from(format!("b{w}")),
                &TenantId::from("t"),
                step(1),
            );
            let _ = tx.send(format!("{r:?}"));
        });
    }
    let mut answers = Vec::new();
    for _ in 0..3 {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(a) => answers.push(a),
            Err(_) => break,
        }
    }
    println!("blocking appenders in the panicking waker's group answered: {answers:?}");
    std::mem::forget(f);
    assert_eq!(
        answers.len(),
        3,
        "{} of 3 blocking appenders never returned (5 s)",
        3 - answers.len()
    );
}

/// The count of appends in progress, which the commit thread's wait reads: a future
/// polled once counts until it is dropped (then no more), a forgotten one for ever;
/// one never polled never counts.
#[test]
fn appends_in_progress_count_held_dropped_and_forgotten_futures() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.stats().appends_in_progress, 0);
    let held = poll_once(&store, &ExecutionId::from("held"));
    assert_eq!(store.stats().appends_in_progress, 1);
    let (never_id, t) = (ExecutionId::from("never"), TenantId::from("t"));
    let never = EventStore::append(&store, &never_id, &t, step(0));
    assert_eq!(store.stats().appends_in_progress, 1);
    drop(never);
    drop(held);
    assert_eq!(store.stats().appends_in_progress, 0);
    std::mem::forget(poll_once(&store, &ExecutionId::from("forgotten")));
    assert_eq!(store.stats().appends_in_progress, 1);
    // The store still takes appends.
    for i in 0..50 {
        store
            .append_blocking(&ExecutionId::from("after"), &t, step(i))
            .unwrap();
    }
    assert_eq!(store.stats().appends_in_progress, 1);
}
