//! Following at full ingest speed (issue 14): `W` writers append single durable events
//! to a `LogStore` for `--seconds`; in alternate rounds of the same run a subscriber
//! (everything, from the start, through the blocking iterator) follows on its own
//! thread. Reports ingest with and without it and their ratio, and the subscriber's
//! lag: delivery time minus the event's append timestamp (taken when the append
//! reserved its place, so it includes the group's write and fdatasync), p50 and p99,
//! and how long it took to deliver the rest after the writers stopped.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use execlog::{ExecutionId, Follow, LogStore, StartFrom, SubscriptionFilter, TenantId};

use crate::{Sample, event, fresh, run_writers};

/// One round's figures.
pub struct Round {
    pub plain: f64,
    pub followed: f64,
    pub lag_p50_us: f64,
    pub lag_p99_us: f64,
    pub delivered: u64,
    pub catch_up: Duration,
}

fn ingest(store: &LogStore, writers: usize, seconds: f64) -> Sample {
    run_writers(writers, seconds, |w, stop| {
        let mut lat = Vec::new();
        let mut n = 0u64;
        let tenant = TenantId::from(format!("tenant-{}", w % 10));
        let ev = event(w as u64);
        let mut exec = ExecutionId::from("");
        while !stop.load(Ordering::Relaxed) {
            if n.is_multiple_of(100) {
                exec = ExecutionId::from(format!("w{w}-e{}", n / 100));
            }
            let t = Instant::now();
            store
                .append_blocking(&exec, &tenant, ev.clone())
                .expect("append");
            lat.push(t.elapsed());
            n += 1;
        }
        (n, lat)
    })
}

/// One round: a plain cell, then a followed one, each on a fresh store.
pub fn round(dir: &Path, writers: usize, seconds: f64) -> Round {
    let plain = {
        let store = LogStore::open(fresh(&dir.join("plain"))).expect("open");
        ingest(&store, writers, seconds).rate()
    };
    let store = LogStore::open(fresh(&dir.join("followed"))).expect("open");
    let done = AtomicBool::new(false);
    let mut sub = store
        .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
        .expect("subscribe");
    let (sample, (lags, delivered, catch_up)) = std::thread::scope(|s| {
        let follower = s.spawn(|| {
            let mut lags = Vec::new();
            let mut stopped_at = None;
            loop {
                match sub.next_timeout(Duration::from_millis(20)).expect("follow") {
                    Some(d) => {
                        let lag = chrono::Utc::now() - d.event.timestamp;
                        lags.push(lag.to_std().unwrap_or_default());
                    }
                    None if done.load(Ordering::SeqCst) => {
                        let t: Instant = stopped_at.unwrap_or_else(Instant::now);
                        return (lags, t.elapsed());
                    }
                    None => {}
                }
                if stopped_at.is_none() && done.load(Ordering::SeqCst) {
                    stopped_at = Some(Instant::now());
                }
            }
        });
        let sample = ingest(&store, writers, seconds);
        done.store(true, Ordering::SeqCst);
        let (lags, catch_up) = follower.join().expect("follower");
        let delivered = lags.len() as u64;
        (sample, (lags, delivered, catch_up))
    });
    assert_eq!(delivered, sample.events, "the subscriber missed events");
    let lags = Sample::new(delivered, Duration::from_secs(1), lags);
    Round {
        plain,
        followed: sample.rate(),
        lag_p50_us: lags.pct_us(0.50),
        lag_p99_us: lags.pct_us(0.99),
        delivered,
        catch_up,
    }
}

/// Runs `repeats` rounds at each writer count and prints a markdown table.
pub fn run(dir: &Path, writers: &[usize], seconds: f64, repeats: usize) {
    println!(
        "| writers | round | ingest alone (events/s) | with a subscriber | ratio | lag p50 | lag p99 | events followed | rest delivered after stop |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &w in writers {
        for r in 0..repeats {
            let x = round(dir, w, seconds);
            println!(
                "| {w} | {} | {:.0} | {:.0} | {:.2} | {:.0} µs | {:.0} µs | {} | {:.1} ms |",
                r + 1,
                x.plain,
                x.followed,
                x.followed / x.plain,
                x.lag_p50_us,
                x.lag_p99_us,
                x.delivered,
                x.catch_up.as_secs_f64() * 1e3
            );
        }
    }
}
