//! Erasure (issue 15): `--erasure --events N` fills a store with N events, deletes half
//! of its executions and erases them (`LogStore::compact_now`), in two layouts:
//! - `batched`: each execution's events appended as batches of 50 (contiguous runs);
//! - `interleaved`: single-event appends round-robin over the executions (a dead
//!   record's neighbours are live).
//!
//! It reports the space the segment files occupy on disk (allocated blocks) before and
//! after, the bytes the erasure wrote, and bytes written per byte reclaimed. Then the
//! effect on concurrent ingest: `--writers` threads append single events for
//! `--seconds`, alone and again while another thread deletes and erases in a loop,
//! `--repeats` times alternating; the ratio of the medians is reported.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use execlog::{ExecutionId, LogStore, Options, TenantId};

use crate::{event, fresh};

/// Bytes the files of `dir` occupy on disk.
fn allocated(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").metadata().expect("metadata").blocks() * 512)
        .sum()
}

fn options() -> Options {
    Options::default()
        .segment_size_bytes(16 << 20)
        .erasure_interval(None)
}

fn id(e: u64) -> ExecutionId {
    ExecutionId::from(format!("erase-{e:07}"))
}

/// Fills, deletes every other execution, erases; prints one row.
fn space(dir: &Path, events: u64, batched: bool) {
    let dir = fresh(dir);
    let per = 50;
    let executions = events / per;
    let store = LogStore::open_with(&dir, options()).expect("open");
    let t = TenantId::from("t");
    if batched {
        for e in 0..executions {
            let batch = (0..per).map(|i| event(e * per + i)).collect();
            store
                .append_batch_blocking(&id(e), &t, batch)
                .expect("append");
        }
    } else {
        std::thread::scope(|s| {
            for w in 0..16 {
                let (store, t) = (&store, &t);
                s.spawn(move || {
                    for i in 0..per {
                        for e in (w..executions).step_by(16) {
                            store
                                .append_blocking(&id(e), t, event(e * per + i))
                                .expect("append");
                        }
                    }
                });
            }
        });
    }
    for e in (0..executions).step_by(2) {
        store.delete_execution_blocking(&id(e)).expect("delete");
    }
    let before = allocated(&dir);
    let started = Instant::now();
    let report = store.compact_now().expect("compact");
    let took = started.elapsed();
    let after = allocated(&dir);
    let reclaimed = before.saturating_sub(after);
    println!(
        "| {} | {events} | {:.1} MB | {:.1} MB | {:.1} MB ({:.0}%) | {:.1} MB | {} | {:.1?} |",
        if batched {
            "batched (50 per append)"
        } else {
            "interleaved (1 per append, 16 writers)"
        },
        before as f64 / 1e6,
        after as f64 / 1e6,
        reclaimed as f64 / 1e6,
        100.0 * reclaimed as f64 / before.max(1) as f64,
        report.bytes_written as f64 / 1e6,
        if reclaimed == 0 {
            "∞".to_string()
        } else {
            format!("{:.2}", report.bytes_written as f64 / reclaimed as f64)
        },
        took,
    );
    store.close().expect("close");
}

/// Appends per second of `writers` threads for `seconds`, with or without a thread
/// deleting and erasing meanwhile.
fn ingest(store: &LogStore, writers: usize, seconds: f64, erasing: bool, round: u64) -> f64 {
    let stop = AtomicBool::new(false);
    let appended = AtomicU64::new(0);
    let t = TenantId::from("t");
    std::thread::scope(|s| {
        for w in 0..writers as u64 {
            let (stop, appended, t) = (&stop, &appended, &t);
            s.spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let e = ExecutionId::from(format!("ingest-{round}-{w}-{}", n / 20));
                    store.append_blocking(&e, t, event(n)).expect("append");
                    n += 1;
                }
                appended.fetch_add(n, Ordering::Relaxed);
            });
        }
        if erasing {
            let stop = &stop;
            s.spawn(move || {
                let mut victim = 0;
                while !stop.load(Ordering::Relaxed) {
                    // Executions of the fill, deleted and erased a few at a time.
                    for _ in 0..20 {
                        store
                            .delete_execution_blocking(&id(victim))
                            .expect("delete");
                        victim += 1;
                    }
                    store.compact_now().expect("compact");
                }
            });
        }
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
    });
    appended.load(Ordering::Relaxed) as f64 / seconds
}

pub fn run(dir: &Path, events: u64, writers: &[usize], seconds: f64, repeats: usize) {
    println!(
        "| layout | events | on disk before | after | reclaimed | erasure wrote | written per byte reclaimed | erasure took |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    space(&dir.join("space"), events, true);
    space(&dir.join("space"), events, false);
    println!();
    println!("| writers | appends/s alone | appends/s while erasing | ratio |");
    println!("|---:|---:|---:|---:|");
    for &w in writers {
        let store_dir = fresh(&dir.join("ingest"));
        let store = LogStore::open_with(&store_dir, options()).expect("open");
        let t = TenantId::from("t");
        for e in 0..events / 50 {
            let batch = (0..50).map(|i| event(e * 50 + i)).collect();
            store
                .append_batch_blocking(&id(e), &t, batch)
                .expect("fill");
        }
        let (mut alone, mut erasing) = (Vec::new(), Vec::new());
        for r in 0..repeats as u64 {
            alone.push(ingest(&store, w, seconds, false, 2 * r));
            erasing.push(ingest(&store, w, seconds, true, 2 * r + 1));
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (a, e) = (median(alone), median(erasing));
        println!("| {w} | {a:.0} | {e:.0} | {:.2} |", e / a);
        store.close().expect("close");
    }
}
