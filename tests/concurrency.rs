//! Many writers on overlapping executions, threads and tokio tasks, with concurrent
//! readers: sequences stay consecutive with no duplicate, timestamps non-decreasing,
//! and no reader ever sees part of a batch or an event that was not yet acknowledged.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use execlog::*;

/// Batches are tagged with their size in `duration_ms` so a reader can tell whether it
/// saw all of one: `StepCompleted { step_id: "b{first}", duration_ms: len }`.
fn batch(len: u64, tag: &str) -> Vec<ExecutionEventData> {
    (0..len)
        .map(|i| ExecutionEventData::StepCompleted {
            step_id: StepId::from(tag.to_string()),
            output: Some(format!("{i}")),
            duration_ms: len,
        })
        .collect()
}

fn check_history(events: &[StoredEvent]) {
    for (i, ev) in events.iter().enumerate() {
        assert_eq!(ev.sequence, i as u64 + 1, "gap or duplicate");
    }
    assert!(events.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
    assert_whole_batches(events, "history");
}

#[test]
fn sixty_four_threads_with_readers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open_with(dir.path(), small_segments()).unwrap());
    let execs: Arc<Vec<ExecutionId>> = Arc::new((0..8).map(|_| ExecutionId::new()).collect());
    let t = TenantId::from("t");
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let (store, execs, stop) = (store.clone(), execs.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(Ordering::Relaxed) {
                    let e = &execs[reads % execs.len()];
                    let latest = store.get_latest_sequence_blocking(e).unwrap().unwrap_or(0);
                    let events = store.load_events_blocking(e).unwrap();
                    assert!(events.len() as u64 >= latest);
                    check_history(&events);
                    reads += 1 + r;
                }
            })
        })
        .collect();
    let writers: Vec<_> = (0..64u64)
        .map(|w| {
            let (store, execs, t) = (store.clone(), execs.clone(), t.clone());
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0..40u64 {
                    let e = &execs[((w + i) % 8) as usize];
                    let tag = format!("w{w}i{i}");
                    let len = 1 + (w + i) % 4;
                    let first = if len == 1 {
                        store
                            .append_blocking(e, &t, batch(1, &tag).remove(0))
                            .unwrap()
                    } else {
                        store
                            .append_batch_blocking(e, &t, batch(len, &tag))
                            .unwrap()
                    };
                    acked.push((e.clone(), first, len, tag));
                }
                acked
            })
        })
        .collect();
    let acked: Vec<_> = writers
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let check_all = |store: &LogStore| {
        let mut histories = HashMap::new();
        for e in execs.iter() {
            let events = store.load_events_blocking(e).unwrap();
            check_history(&events);
            histories.insert(e.clone(), events);
        }
        for (e, first, len, tag) in &acked {
            let h = &histories[e];
            for s in *first..first + len {
                let ev = &h[(s - 1) as usize];
                assert!(
                    matches!(&ev.event, ExecutionEventData::StepCompleted { step_id, .. } if step_id.as_str() == tag)
                );
            }
        }
        let total: usize = histories.values().map(Vec::len).sum();
        assert_eq!(total as u64, acked.iter().map(|a| a.2).sum::<u64>());
    };
    check_all(&store);
    drop(store);
    check_all(&LogStore::open_with(dir.path(), small_segments()).unwrap());
}

#[test]
fn tokio_tasks_share_one_execution() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path()).unwrap());
    let e = ExecutionId::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let seqs = rt.block_on(async {
        let tasks: Vec<_> = (0..256u64)
            .map(|i| {
                let (store, e) = (store.clone(), e.clone());
                tokio::spawn(async move {
                    store
                        .append(&e, &TenantId::from("t"), step_event(i))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        seqs
    });
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=256).collect::<Vec<_>>());
    let events = store.load_events_blocking(&e).unwrap();
    assert_eq!(events.len(), 256);
    assert!(events.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
}
