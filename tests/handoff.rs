//! The hand-off between appenders and the commit thread, model-checked with shuttle
//! (feature `shuttle`; `.ci/run` runs it with `cargo test --features shuttle --test
//! handoff`).
//!
//! The real engine runs on the simulated file system while shuttle schedules its
//! threads: appenders on overlapping executions (single events and batches, enough to
//! roll segments), a reader, the commit thread, and in some scenarios a `close` racing
//! the appenders or an I/O failure poisoning the store. Shuttle switches threads at
//! every lock, channel and atomic operation, explores thousands of interleavings
//! (random and PCT schedules), fails on any deadlock (a ticket nobody completes, a
//! close that never returns) and prints a schedule that replays a failure exactly.
//!
//! The bounded-queue scenarios set `Options::max_queued_bytes` to 1 byte, so every
//! append waits for an empty queue, and make one writer async (its futures run on
//! shuttle's `block_on`): they check admission (condition variable and waker) for
//! lost wake-ups, and that closing or poisoning releases the waiters.
//!
//! A subscriber follows the store from a thread started alongside the appenders
//! (through the async stream in the bounded scenarios) until the store closes.
//!
//! Asserts, in every interleaving: each append returns (no lost wake-up); sequences
//! of one execution are handed out without gap or duplicate; a reader sees whole
//! batches, in sequence order, and only events that survive a power cut taken right
//! after the run (so it never saw anything that was not durable); every acknowledged
//! event survives that power cut with its content; the subscriber delivers in position
//! order, each execution in sequence order, only events that survive the cut, all of
//! them when nothing failed, and ends when the store closes.

#![cfg(feature = "shuttle")]
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::assert_whole_batches;
use execlog::fault::{Fault, Op, SimIo};
use execlog::*;

const WRITERS: usize = 3;

/// One acknowledged append: execution index, first sequence, tag, length.
type Ack = (usize, u64, String, u64);

fn execution(i: usize) -> ExecutionId {
    ExecutionId::from(format!("e{i}"))
}

fn tenant() -> TenantId {
    TenantId::from("t")
}

/// Events of one append: `step_id` is the append's tag, `duration_ms` its length (see
/// `assert_whole_batches`); the output is large enough to roll 64 KiB segments every few appends.
fn append_events(tag: &str, len: u64) -> Vec<ExecutionEventData> {
    (0..len)
        .map(|i| ExecutionEventData::StepCompleted {
            step_id: StepId::from(tag.to_string()),
            output: Some(format!("{i}").repeat(20_000)),
            duration_ms: len,
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Twist {
    /// Appenders and a reader only.
    None,
    /// A thread closes the store while appends are in flight.
    Close,
    /// The k-th fdatasync after open fails.
    FailSync(u64),
    /// The k-th write after open fails.
    FailWrite(u64),
}

/// Appends a batch, blocking or through the async API on shuttle's executor.
fn append(
    store: &LogStore,
    exec: usize,
    events: Vec<ExecutionEventData>,
    async_api: bool,
) -> Result<u64> {
    if async_api {
        shuttle::future::block_on(store.append_batch(&execution(exec), &tenant(), events))
            .map_err(|e| e.downcast::<Error>().unwrap())
    } else {
        store.append_batch_blocking(&execution(exec), &tenant(), events)
    }
}

/// `bounded`: a 1-byte `max_queued_bytes` and writer 2 async.
fn scenario(twist: Twist, bounded: bool) {
    let dir = Path::new("/store");
    let sim = SimIo::new();
    let mut options = Options::default()
        .segment_size_bytes(64 * 1024)
        .index_stride(2)
        .io(Arc::new(sim.clone()));
    if bounded {
        options = options.max_queued_bytes(1);
    }
    let store = Arc::new(LogStore::open_with(dir, options).unwrap());
    match twist {
        Twist::FailSync(k) => sim.fail_at(k, Op::Sync, Fault::Persistent),
        Twist::FailWrite(k) => sim.fail_at(k, Op::Write, Fault::Once),
        Twist::None | Twist::Close => {}
    }
    let may_fail = !matches!(twist, Twist::None);

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = Arc::clone(&store);
        writers.push(shuttle::thread::spawn(move || {
            let mut acks: Vec<Ack> = Vec::new();
            // Writers 0 and 2 share execution 0: their sequences interleave.
            let exec = w % 2;
            for (round, len) in [1u64, 2].into_iter().enumerate() {
                let tag = format!("w{w}r{round}");
                match append(&store, exec, append_events(&tag, len), bounded && w == 2) {
                    Ok(first) => acks.push((exec, first, tag, len)),
                    Err(Error::Closed | Error::Poisoned { .. }) if may_fail => {}
                    Err(other) => panic!("append failed: {other:?}"),
                }
            }
            acks
        }));
    }
    let reader = {
        let store = Arc::clone(&store);
        shuttle::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..2 {
                match store.load_events_blocking(&execution(0)) {
                    Ok(events) => {
                        for (i, e) in events.iter().enumerate() {
                            assert_eq!(e.sequence, i as u64 + 1, "reader: gap or disorder");
                        }
                        assert_whole_batches(&events, "reader");
                        if events.len() > seen.len() {
                            seen = events;
                        }
                    }
                    Err(Error::Closed | Error::Poisoned { .. }) if may_fail => {}
                    Err(other) => panic!("load failed: {other:?}"),
                }
            }
            seen
        })
    };
    // A subscriber started while appends run (possibly in the middle of a commit
    // group): the iterator, or in the bounded scenarios the async stream on shuttle's
    // executor. It follows until the store closes; a lost wake-up is a deadlock.
    let follower = {
        let store = Arc::clone(&store);
        shuttle::thread::spawn(move || {
            // A schedule may start it only after the final close.
            let sub = match store.subscribe(SubscriptionFilter::All, StartFrom::Beginning) {
                Ok(sub) => sub,
                Err(Error::Closed) => return None,
                Err(Error::Poisoned { .. }) if may_fail => return None,
                Err(other) => panic!("subscribe failed: {other:?}"),
            };
            let items: Vec<Result<Delivered>> = if bounded {
                shuttle::future::block_on(futures::StreamExt::collect(sub))
            } else {
                sub.collect()
            };
            items
                .into_iter()
                .filter_map(|item| match item {
                    Ok(d) => Some(d),
                    Err(Error::Poisoned { .. }) if may_fail => None,
                    Err(other) => panic!("subscription failed: {other:?}"),
                })
                .collect::<Vec<_>>()
                .into()
        })
    };
    let closer = matches!(twist, Twist::Close).then(|| {
        let store = Arc::clone(&store);
        shuttle::thread::spawn(move || store.close().unwrap())
    });

    let mut acks: Vec<Ack> = writers
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let seen = reader.join().unwrap();
    if let Some(closer) = closer {
        closer.join().unwrap();
    }
    let probe = store.append_batch_blocking(&execution(1), &tenant(), append_events("probe", 1));
    if matches!(twist, Twist::None) {
        let first = probe.unwrap();
        acks.push((1, first, "probe".into(), 1));
    }
    store.close().unwrap();
    drop(store);
    let subscribed = follower.join().unwrap();
    let complete = subscribed.is_some() && matches!(twist, Twist::None);
    let followed = subscribed.unwrap_or_default();
    assert!(
        followed.windows(2).all(|w| w[0].position < w[1].position),
        "subscription out of position order"
    );

    // Sequences: per execution, the acknowledged appends tile 1..=n without overlap.
    for exec in 0..2 {
        let mut ranges: Vec<(u64, u64)> = acks
            .iter()
            .filter(|a| a.0 == exec)
            .map(|a| (a.1, a.3))
            .collect();
        ranges.sort_unstable();
        let mut next = 1;
        for (first, len) in ranges {
            assert!(first >= next, "execution {exec}: sequence handed out twice");
            if !may_fail {
                assert_eq!(first, next, "execution {exec}: sequence gap");
            }
            next = first + len;
        }
    }

    // A power cut now: what survives is exactly what was durable.
    let after = sim.power_loss(0x5eed);
    let reopened = LogStore::open_with(dir, Options::default().io(Arc::new(after))).unwrap();
    for exec in 0..2 {
        let events = reopened.load_events_blocking(&execution(exec)).unwrap();
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.sequence, i as u64 + 1, "after the cut: gap");
        }
        assert_whole_batches(&events, "after the cut");
        for (_, first, tag, len) in acks.iter().filter(|a| a.0 == exec) {
            for s in *first..first + len {
                let got = events.get(s as usize - 1).map(|e| &e.event);
                let want = &append_events(tag, *len)[(s - first) as usize];
                assert_eq!(
                    got,
                    Some(want),
                    "acknowledged event {exec}/{s} lost or changed"
                );
            }
        }
        let mine: Vec<&StoredEvent> = followed
            .iter()
            .map(|d| &d.event)
            .filter(|e| e.execution_id == execution(exec))
            .collect();
        for (i, e) in mine.iter().enumerate() {
            assert_eq!(e.sequence, i as u64 + 1, "subscription: gap or disorder");
            assert_eq!(
                events.get(i),
                Some(*e),
                "a subscription delivered an event that did not survive"
            );
        }
        if complete {
            assert_eq!(mine.len(), events.len(), "subscription missed events");
        }
        if exec == 0 {
            assert!(
                seen.len() <= events.len(),
                "a reader saw events that were not durable"
            );
            for (a, b) in seen.iter().zip(&events) {
                assert_eq!(a, b, "a reader saw an event that did not survive");
            }
        }
    }
}

fn iterations(default: usize) -> usize {
    std::env::var("EXECLOG_SHUTTLE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn appenders_reader_and_commit_thread_random_schedules() {
    shuttle::check_random(|| scenario(Twist::None, false), iterations(1500));
}

#[test]
fn appenders_reader_and_commit_thread_pct_schedules() {
    shuttle::check_pct(|| scenario(Twist::None, false), iterations(1500), 3);
}

#[test]
fn close_races_appenders() {
    shuttle::check_random(|| scenario(Twist::Close, false), iterations(1000));
    shuttle::check_pct(|| scenario(Twist::Close, false), iterations(1000), 3);
}

#[test]
fn io_failures_poison_without_lost_wakeups() {
    for k in 1..=4 {
        shuttle::check_random(move || scenario(Twist::FailSync(k), false), iterations(400));
        shuttle::check_random(
            move || scenario(Twist::FailWrite(k), false),
            iterations(400),
        );
    }
}

#[test]
fn bounded_queue_appenders_wait_without_lost_wakeups() {
    shuttle::check_random(|| scenario(Twist::None, true), iterations(1500));
    shuttle::check_pct(|| scenario(Twist::None, true), iterations(1500), 3);
}

#[test]
fn bounded_queue_close_and_poison_release_waiters() {
    shuttle::check_random(|| scenario(Twist::Close, true), iterations(1000));
    shuttle::check_pct(|| scenario(Twist::Close, true), iterations(1000), 3);
    for k in 1..=2 {
        shuttle::check_random(move || scenario(Twist::FailSync(k), true), iterations(400));
    }
}
