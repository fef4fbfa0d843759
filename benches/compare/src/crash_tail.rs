//! The tail an open after a crash reads, with and without segment sidecars (issue 16):
//! `--crash-tail-fill DIR EXECUTIONS EVENTS` appends EVENTS events, in batches of 10,
//! to random executions of a store `--memory` filled (ids `exec-{e:09}`, tenants
//! `tenant-{e % 10}`), with the default options, and exits without closing: a crash
//! image whose newest checkpoint (the running one written after the first segment)
//! leaves several sealed segments after it. `--crash-tail DIR TIMES` then opens that
//! image TIMES times with sidecars and TIMES times without, alternating, each open in
//! a child that exits without closing (so the image stays as the crash left it), and
//! prints each open and the medians.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use execlog::{ExecutionId, LogStore, TenantId};

/// Child: appends `events` to random executions of the store in `dir`, then exits.
pub fn fill(dir: &Path, executions: u64, events: u64) -> ! {
    let store = LogStore::open_with(dir, crate::systems::execlog_options()).expect("open");
    let next = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let (store, next) = (&store, &next);
            s.spawn(move || {
                let mut x = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(t + 1);
                while next.fetch_add(10, Ordering::Relaxed) < events {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let e = x % executions;
                    let id = ExecutionId::from(format!("exec-{e:09}"));
                    let tenant = TenantId::from(format!("tenant-{}", e % 10));
                    let batch = (0..10).map(|i| crate::event(x.wrapping_add(i))).collect();
                    store
                        .append_batch_blocking(&id, &tenant, batch)
                        .expect("append");
                }
            });
        }
    });
    // Let the checkpoint thread write the last seals' sidecars.
    std::thread::sleep(Duration::from_secs(3));
    let report = store.stats();
    eprintln!(
        "appended {events} events; {} segments, {} running checkpoints",
        report.segments, report.index_checkpoints
    );
    std::process::exit(0);
}

/// Child: opens the image in `dir` (sidecars as `EXECLOG_BENCH_SIDECARS` says), prints
/// one line, exits without closing.
pub fn open_once(dir: &Path) -> ! {
    let t = Instant::now();
    let store = LogStore::open_with(dir, crate::systems::execlog_options()).expect("open");
    let opened = t.elapsed();
    let r = store.recovery_report();
    println!(
        "{} {} {} {} {}",
        opened.as_secs_f64() * 1e3,
        r.segments_from_sidecars,
        r.bytes_scanned - r.checkpoint_bytes,
        r.index_decoded_after_open,
        r.records
    );
    std::process::exit(0);
}

/// Parent: `times` opens each way, alternating; prints each and the medians.
pub fn run(dir: &Path, times: usize) {
    let exe = std::env::current_exe().expect("current exe");
    let mut runs: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..times {
        for (i, sidecars) in ["on", "off"].into_iter().enumerate() {
            let out = std::process::Command::new(&exe)
                .arg("--crash-tail-open")
                .arg(dir)
                .env("EXECLOG_BENCH_SIDECARS", sidecars)
                .output()
                .expect("run the open");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
            println!(
                "sidecars {sidecars}: {line} (open ms, segments taken from sidecars, bytes after the checkpoint, scanned or taken, decoded after open, records after the checkpoint)"
            );
            runs[i].push(line.split(' ').next().unwrap().parse().unwrap());
        }
    }
    for (i, name) in ["on", "off"].iter().enumerate() {
        runs[i].sort_by(f64::total_cmp);
        println!(
            "sidecars {name}: median open {:.2} ms of {times}",
            runs[i][times / 2]
        );
    }
}

/// Durable ingest with and without sidecars, alternating (`--sidecar-ingest DIR
/// SECONDS REPEATS`): `writers` threads of single-event appends into a fresh store each
/// run, so that segments seal and the checkpoint thread writes their sidecars.
pub fn ingest_ab(dir: &Path, writers: &[usize], seconds: f64, repeats: usize) {
    for &w in writers {
        let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..repeats {
            for (i, on) in [true, false].into_iter().enumerate() {
                let store = crate::fresh(&dir.join("sidecar-ingest"));
                let options = crate::systems::execlog_options().segment_sidecars(on);
                let sys = crate::systems::execlog_with(&store, options);
                let s = crate::ingest(sys.as_ref(), w, seconds);
                rates[i].push(s.events as f64 / s.elapsed.as_secs_f64());
            }
        }
        let runs = |v: &[f64]| {
            v.iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "{w} writers: with sidecars {} events/s; without {}",
            runs(&rates[0]),
            runs(&rates[1])
        );
        let ratios: Vec<String> = (rates[0].iter().zip(&rates[1]))
            .map(|(a, b)| format!("{:.2}", a / b))
            .collect();
        println!(
            "{w} writers: ratios (with / without, same round) {}",
            ratios.join(", ")
        );
    }
}
