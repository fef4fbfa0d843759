//! The async path (`EventStore::append` and friends) on every kind of executor: tokio's
//! multi-thread and current-thread runtimes and `futures::executor::block_on`. Appends
//! complete, in order and durably, and a pending append never blocks its executor's
//! thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use execlog::*;

fn step(n: u64) -> ExecutionEventData {
    ExecutionEventData::StepCompleted {
        step_id: StepId::from(format!("step-{n}")),
        output: Some(format!("output {n}")),
        duration_ms: n,
    }
}

/// `tasks` tasks, each appending `per_task` events to its own execution, one at a time.
async fn append_from_tasks<S>(store: Arc<LogStore>, tasks: u64, per_task: u64, spawn: S)
where
    S: Fn(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>),
{
    for t in 0..tasks {
        let store = store.clone();
        spawn(Box::pin(async move {
            let (e, tenant) = (ExecutionId::from(format!("e{t}")), TenantId::from("t"));
            for i in 0..per_task {
                let seq = store.append(&e, &tenant, step(i)).await.expect("helper");
                assert_eq!(seq, i + 1);
            }
        }));
    }
}

/// Every task's events are there, in order, after a reopen.
fn check_durable(dir: &std::path::Path, tasks: u64, per_task: u64) {
    let store = LogStore::open(dir).expect("helper");
    for t in 0..tasks {
        let events = store
            .load_events_blocking(&ExecutionId::from(format!("e{t}")))
            .expect("helper");
        assert_eq!(events.len() as u64, per_task, "execution e{t}");
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.sequence, i as u64 + 1);
            assert_eq!(e.event, step(i as u64));
        }
    }
}

/// `tasks` tasks spawned on `rt`, each appending `per_task` events, then checked after
/// a reopen.
fn append_on_tokio(rt: tokio::runtime::Runtime, tasks: u64, per_task: u64) {
    let dir = tempfile::tempdir().expect("helper");
    let store = Arc::new(LogStore::open(dir.path()).expect("helper"));
    rt.block_on(async {
        let handles = std::sync::Mutex::new(Vec::new());
        append_from_tasks(store.clone(), tasks, per_task, |f| {
            handles.lock().expect("helper").push(tokio::spawn(f))
        })
        .await;
        for h in handles.into_inner().expect("helper") {
            h.await.expect("helper");
        }
    });
    drop(store);
    check_durable(dir.path(), tasks, per_task);
}

#[test]
fn appends_complete_on_a_multi_thread_tokio_runtime() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    append_on_tokio(rt, 64, 50);
}

#[test]
fn appends_complete_on_a_current_thread_tokio_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    append_on_tokio(rt, 16, 50);
}

#[test]
fn appends_complete_under_futures_block_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path()).unwrap());
    let mut pool = futures::executor::LocalPool::new();
    let spawner = pool.spawner();
    futures::executor::block_on(append_from_tasks(store.clone(), 8, 50, |f| {
        futures::task::SpawnExt::spawn(&spawner, f).unwrap()
    }));
    pool.run();
    // And one writer awaited directly by `block_on`, as a script would.
    let e = ExecutionId::from("direct");
    for i in 0..50 {
        let seq = futures::executor::block_on(store.append(&e, &TenantId::from("t"), step(i)));
        assert_eq!(seq.unwrap(), i + 1);
    }
    drop(store);
    check_durable(dir.path(), 8, 50);
}

/// With a 300 ms commit delay, an append stays pending for 300 ms; on a current-thread
/// runtime, its only thread keeps running another task meanwhile. An append that
/// blocked the thread until durable would let the ticker run only after it.
#[test]
fn a_pending_append_leaves_its_executor_thread_free() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        LogStore::open_with(dir.path(), Options::default().commit_delay_us(300_000)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let ticks = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let ticks_during = rt.block_on(async {
        let ticker = {
            let (ticks, done) = (ticks.clone(), done.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    ticks.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        // Let the ticker start.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let before = ticks.load(Ordering::SeqCst);
        let e = ExecutionId::from("slow");
        store
            .append(&e, &TenantId::from("t"), step(0))
            .await
            .unwrap();
        let during = ticks.load(Ordering::SeqCst) - before;
        done.store(true, Ordering::SeqCst);
        ticker.await.unwrap();
        during
    });
    assert!(
        ticks_during >= 20,
        "the executor's only thread ran the other task {ticks_during} times while the append was pending"
    );
}

/// A dropped append future (a `select!` that took another branch) neither hangs the store
/// nor blocks the appends after it on the same executor.
#[test]
fn dropped_append_futures_leave_the_store_working() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path()).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let e = ExecutionId::from("dropped");
        for i in 0..200 {
            // A zero timeout drops most appends after their first poll.
            let _ = tokio::time::timeout(
                Duration::ZERO,
                store.append(&e, &TenantId::from("t"), step(i)),
            )
            .await;
        }
        let last = store
            .append(&e, &TenantId::from("t"), step(200))
            .await
            .unwrap();
        let events = store.load_events(&e).await.unwrap();
        assert_eq!(events.last().map(|s| s.sequence), Some(last));
        for (i, s) in events.iter().enumerate() {
            assert_eq!(s.sequence, i as u64 + 1);
        }
    });
}

/// Catching up a long history, a stream is ready at every poll; it still yields to its
/// executor now and then, so another task on a current-thread runtime runs during the
/// catch-up instead of after it.
#[test]
fn a_stream_catching_up_leaves_room_for_other_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let (e, t) = (ExecutionId::from("long"), TenantId::from("t"));
    for chunk in 0..50 {
        let events = (0..100).map(|i| step(chunk * 100 + i)).collect();
        store.append_batch_blocking(&e, &t, events).unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let ticks = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let ticks_during = rt.block_on(async {
        let ticker = {
            let (ticks, done) = (ticks.clone(), done.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::SeqCst) {
                    ticks.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                }
            })
        };
        let mut stream = store
            .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
            .unwrap();
        let before = ticks.load(Ordering::SeqCst);
        for _ in 0..5000 {
            futures::StreamExt::next(&mut stream)
                .await
                .unwrap()
                .unwrap();
        }
        let during = ticks.load(Ordering::SeqCst) - before;
        done.store(true, Ordering::SeqCst);
        ticker.await.unwrap();
        during
    });
    assert!(
        ticks_during >= 10,
        "another task ran {ticks_during} times while the stream caught up 5,000 events"
    );
}
