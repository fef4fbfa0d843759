//! What running index checkpoints cost appends (issue 16): `--checkpoint-stall
//! --events E --seconds S --repeats R` fills a store with E executions of one event, then runs
//! 16 writers appending single events to them for S seconds, twice, alternating: with
//! running checkpoints every 8 MiB (each encodes the whole index under the store lock,
//! so appends wait for it) and with them off. It prints append latency (p50, p99, max)
//! and rate for both, and how many checkpoints were written.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use execlog::{ExecutionId, LogStore, Options, TenantId};

use crate::{Sample, event, fresh};

const WRITERS: u64 = 16;
const INTERVAL: u64 = 8 << 20;

fn id(e: u64) -> ExecutionId {
    ExecutionId::from(format!("stall-{e:08}"))
}

/// Runs both cells `repeats` times, alternating, and prints one row per run.
pub fn run(root: &Path, executions: u64, seconds: f64, repeats: usize) {
    let dir = fresh(root);
    {
        let store = LogStore::open(&dir).expect("open");
        let next = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..64 {
                s.spawn(|| {
                    let t = TenantId::from("t");
                    loop {
                        let e = next.fetch_add(1, Ordering::Relaxed);
                        if e >= executions {
                            return;
                        }
                        store.append_blocking(&id(e), &t, event(e)).expect("fill");
                    }
                });
            }
        });
        store.close().expect("close");
    }
    println!("| checkpoints every | events/s | p50 µs | p99 µs | max µs | checkpoints written |");
    println!("|---|---:|---:|---:|---:|---:|");
    for _ in 0..repeats {
        for interval in [Some(INTERVAL), None] {
            let options = Options::default().index_checkpoint_interval_bytes(interval);
            let store = LogStore::open_with(&dir, options).expect("open");
            let sample = appends(&store, executions, seconds);
            let written = store.stats().index_checkpoints;
            store.close().expect("close");
            println!(
                "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {written} |",
                interval.map_or("off".into(), |b| format!("{} MiB", b >> 20)),
                sample.rate(),
                sample.pct_us(0.5),
                sample.pct_us(0.99),
                sample.pct_us(1.0),
            );
        }
    }
}

fn appends(store: &LogStore, executions: u64, seconds: f64) -> Sample {
    let start = Instant::now();
    let latencies: Vec<Vec<Duration>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                s.spawn(move || {
                    let t = TenantId::from("t");
                    let mut lat = Vec::new();
                    let mut x = w.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    while start.elapsed().as_secs_f64() < seconds {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let began = Instant::now();
                        store
                            .append_blocking(&id(x % executions), &t, event(x))
                            .expect("append");
                        lat.push(began.elapsed());
                    }
                    lat
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("writer"))
            .collect()
    });
    let all: Vec<Duration> = latencies.into_iter().flatten().collect();
    Sample::new(all.len() as u64, start.elapsed(), all)
}
