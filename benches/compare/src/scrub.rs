//! The background scrubber (issue 16): `--scrub --events N` fills a store with N events
//! and reports how fast a full pass (`LogStore::scrub_now`) checks its sealed bytes, then
//! the effect of the background scrubber on ingest: `--writers` threads append single
//! events for `--seconds` with the scrubber off, at its default pacing (the whole store
//! once an hour, at least 1 MiB/s) and at a fixed 64 MiB/s, `--repeats` times
//! alternating; the ratios of the medians to "off" are reported.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use execlog::{ExecutionId, LogStore, Options, ScrubRate, TenantId};

use crate::{event, fresh};

fn options(rate: ScrubRate) -> Options {
    Options::default().segment_size_bytes(16 << 20).scrub(rate)
}

/// Fills `dir` with `events` events in batches of 50.
fn fill(dir: &Path, events: u64) {
    let store = LogStore::open_with(dir, options(ScrubRate::Off)).expect("open");
    let t = TenantId::from("t");
    for e in 0..events / 50 {
        let batch = (0..50).map(|i| event(e * 50 + i)).collect();
        let id = ExecutionId::from(format!("fill-{e}"));
        store.append_batch_blocking(&id, &t, batch).expect("fill");
    }
    store.close().expect("close");
}

/// Appends per second of `writers` threads for `seconds` on a store opened with `rate`.
fn ingest(dir: &Path, rate: ScrubRate, writers: usize, seconds: f64, round: u64) -> f64 {
    let store = LogStore::open_with(dir, options(rate)).expect("open");
    let stop = AtomicBool::new(false);
    let appended = AtomicU64::new(0);
    let t = TenantId::from("t");
    std::thread::scope(|s| {
        for w in 0..writers as u64 {
            let (store, stop, appended, t) = (&store, &stop, &appended, &t);
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
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
    });
    let scrubbed = store.stats().scrub.scrubbed_bytes;
    store.close().expect("close");
    let rate = appended.load(Ordering::Relaxed) as f64 / seconds;
    eprintln!("  {rate:.0} appends/s, scrubber checked {scrubbed} bytes meanwhile");
    rate
}

pub fn run(dir: &Path, events: u64, writers: &[usize], seconds: f64, repeats: usize) {
    let dir = fresh(dir);
    fill(&dir, events);
    let store = LogStore::open_with(&dir, options(ScrubRate::Off)).expect("open");
    let started = Instant::now();
    let report = store.scrub_now().expect("scrub");
    let took = started.elapsed();
    store.close().expect("close");
    println!("| events | sealed bytes checked | records | full pass | rate |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {events} | {:.1} MB | {} | {took:.1?} | {:.0} MB/s |",
        report.bytes as f64 / 1e6,
        report.records,
        report.bytes as f64 / 1e6 / took.as_secs_f64()
    );
    println!();
    println!("| writers | appends/s, scrubber off | default pacing | 64 MiB/s |");
    println!("|---:|---:|---:|---:|");
    let rates = [
        ScrubRate::Off,
        ScrubRate::WholeStoreEvery(Duration::from_secs(3600)),
        ScrubRate::BytesPerSecond(64 << 20),
    ];
    for &w in writers {
        let mut samples = vec![Vec::new(); rates.len()];
        for r in 0..repeats as u64 {
            for (i, &rate) in rates.iter().enumerate() {
                samples[i].push(ingest(&dir, rate, w, seconds, r * 3 + i as u64));
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let m: Vec<f64> = samples.iter_mut().map(median).collect();
        println!(
            "| {w} | {:.0} | {:.0} ({:.2}) | {:.0} ({:.2}) |",
            m[0],
            m[1],
            m[1] / m[0],
            m[2],
            m[2] / m[0]
        );
    }
}
