//! Open at scale (issue 16): `--open-scale 1000000,10000000 [--only SYSTEM]` fills a fresh
//! store of each system with N events (executions of 100, one durable batch each, 8
//! writers) in a child process that then exits without closing anything (a crash: the
//! page cache keeps every acknowledged byte, nothing runs at close), and times in this
//! process, to the first read of one execution:
//! - the open after that crash (execlog: with its checkpoint verified before open
//!   returns, `verify_checkpoint_after_open(false)`; by default execlog verifies a store
//!   past 64 MiB after open, as the columns "verified after open" time);
//! - for execlog, the same crash image without its `checkpoint.idx`, opened read-only
//!   (what a store never closed cleanly cost before checkpoints were written while
//!   running);
//! - the median of 3 opens after a clean close (execlog: verified before open);
//! - for execlog, the same crash image opened with `Options::verify_checkpoint_after_open`
//!   in a child process that exits without closing (so that the image stays a crash
//!   image), and how long after open its verdict came;
//! - for execlog, the median of 3 opens after a clean close with
//!   `Options::verify_checkpoint_after_open`, and how long after open its verdict came.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::{dir_bytes, event, fresh, systems};

/// Child side: fills `dir` with `events` events, then exits without closing.
pub fn fill_and_crash(name: &str, dir: &Path, events: u64) -> ! {
    let sys = systems::open(name, dir);
    let next = AtomicU64::new(0);
    let executions = events / 100;
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                loop {
                    let e = next.fetch_add(1, Ordering::Relaxed);
                    if e >= executions {
                        return;
                    }
                    let batch: Vec<_> = (0..100).map(|i| event(e * 100 + i)).collect();
                    sys.append_batch(&format!("r-{e}"), &format!("tenant-{}", e % 10), &batch);
                }
            });
        }
    });
    // No drop, no close: what a crash leaves.
    std::process::exit(0);
}

/// The time to open `name`'s store in `dir` and read `r-0`; for execlog, with the
/// checkpoint verified before open returns (the default verifies a store this size after
/// open: the columns "verified after open" time that).
fn first_read(name: &str, dir: &Path) -> Duration {
    let t = Instant::now();
    let sys = match name {
        "execlog" => systems::execlog_with(dir, verified_before_open()),
        _ => systems::open(name, dir),
    };
    assert_eq!(sys.load("r-0"), 100, "{name}: r-0 after open");
    let took = t.elapsed();
    drop(sys);
    took
}

/// Parent side: runs every system at every size and prints a Markdown table.
pub fn run(root: &Path, sizes: &[u64], only: Option<&str>) {
    println!(
        "| events | system | data | open after a crash (execlog: verified before open) | after a crash, no checkpoint | after a crash, verified after open | its verdict, after open | after a clean close (median of 3; execlog: verified before open) | after a clean close, verified after open (median of 3) | its verdict, after open | rebuilt from records after the crash |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &events in sizes {
        for name in systems::names()
            .into_iter()
            .filter(|n| only.is_none_or(|o| o == *n))
        {
            let dir = fresh(&root.join(format!("{name}-{events}")));
            let exe = std::env::current_exe().expect("current exe");
            let status = std::process::Command::new(exe)
                .args(["--fill-and-crash", name])
                .arg(&dir)
                .arg(events.to_string())
                .status()
                .expect("spawn the filling child");
            assert!(status.success(), "{name}: fill child {status}");
            let bytes = dir_bytes(&dir);
            let (no_checkpoint, crash_deferred, rebuilt) = if name == "execlog" {
                (
                    Some(without_checkpoint(&dir)),
                    Some(crash_verified_after_open(&dir)),
                    Some(rebuilt_after_crash(&dir)),
                )
            } else {
                (None, None, None)
            };
            let crash = match rebuilt {
                Some((t, _)) => t,
                None => first_read(name, &dir),
            };
            let mut clean: Vec<Duration> = (0..3).map(|_| first_read(name, &dir)).collect();
            clean.sort();
            let deferred = (name == "execlog").then(|| {
                let mut runs: Vec<(Duration, Duration)> =
                    (0..3).map(|_| verified_after_open(&dir)).collect();
                runs.sort();
                runs[1]
            });
            println!(
                "| {events} | {name} | {:.0} MB | {:.1} ms | {} | {} | {} | {:.1} ms | {} | {} | {} |",
                bytes as f64 / 1e6,
                ms(crash),
                no_checkpoint.map_or("".into(), |t| format!("{:.1} ms", ms(t))),
                crash_deferred.map_or("".into(), |(t, _)| format!("{:.2} ms", ms(t))),
                crash_deferred.map_or("".into(), |(_, v)| match v {
                    Some(v) => format!("{:.1} ms", ms(v)),
                    None => "no checkpoint".into(),
                }),
                ms(clean[1]),
                deferred.map_or("".into(), |(t, _)| format!("{:.2} ms", ms(t))),
                deferred.map_or("".into(), |(_, v)| format!("{:.1} ms", ms(v))),
                rebuilt.map_or("".into(), |(_, b)| format!("{:.1} MB", b as f64 / 1e6)),
            );
            // EXECLOG_BENCH_KEEP=1 keeps the (clean-closed) store, for `--open-loop`.
            if std::env::var("EXECLOG_BENCH_KEEP").is_err() {
                std::fs::remove_dir_all(&dir).expect("remove");
            }
        }
    }
}

/// The execlog crash image opened directly (to the first read), with the bytes its
/// open rebuilt from records.
fn rebuilt_after_crash(dir: &Path) -> (Duration, u64) {
    let t = Instant::now();
    let store = execlog::LogStore::open_with(dir, verified_before_open()).expect("open");
    let _ = store.load_events_blocking(&execlog::ExecutionId::from("r-0"));
    let took = t.elapsed();
    let rebuilt = store.stats().data_bytes - store.recovery_report().checkpoint_bytes;
    (took, rebuilt)
}

/// execlog's options with its checkpoint verified before open returns, at any size.
fn verified_before_open() -> execlog::Options {
    systems::execlog_options().verify_checkpoint_after_open(false)
}

/// The clean-closed execlog store opened with its checkpoint verified after open: the
/// time to the first read, and the time from open to the verdict.
fn verified_after_open(dir: &Path) -> (Duration, Duration) {
    let (store, took, verdict) = open_until_verdict(dir);
    assert!(store.recovery_report().checkpoint_verification_deferred);
    store.close().expect("close");
    (took, verdict)
}

/// Opens the execlog store in `dir` with its checkpoint verified after open, reads
/// `r-0`, waits for the verdict and reads `r-1` (which a refuted checkpoint fails): the
/// store, the time to the first read and the time to the verdict.
fn open_until_verdict(dir: &Path) -> (execlog::LogStore, Duration, Duration) {
    let options = systems::execlog_options().verify_checkpoint_after_open(true);
    let t = Instant::now();
    let store = execlog::LogStore::open_with(dir, options).expect("open");
    let events = store
        .load_events_blocking(&execlog::ExecutionId::from("r-0"))
        .expect("read");
    let took = t.elapsed();
    assert_eq!(events.len(), 100);
    wait_for_verdict(&store);
    let verdict = t.elapsed();
    store
        .load_events_blocking(&execlog::ExecutionId::from("r-1"))
        .expect("the checkpoint was refuted");
    (store, took, verdict)
}

/// The execlog crash image opened with its checkpoint verified after open, in a child
/// process ([`crash_open_verified`]) that exits without closing, so that the image stays
/// what a crash left: the time to the first read, and from open to the verdict (`None`
/// if the crash left no checkpoint, as a store smaller than one interval does).
fn crash_verified_after_open(dir: &Path) -> (Duration, Option<Duration>) {
    let exe = std::env::current_exe().expect("current exe");
    let out = std::process::Command::new(exe)
        .arg("--crash-open-verified")
        .arg(dir)
        .output()
        .expect("spawn the opening child");
    assert!(out.status.success(), "crash-open child: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut nanos = text
        .split_whitespace()
        .map(|n| n.parse::<u64>().expect("child prints nanoseconds"));
    let took = Duration::from_nanos(nanos.next().expect("time to the first read"));
    let verdict = nanos.next().expect("time to the verdict");
    let deferred = nanos.next().expect("whether the verification was deferred") == 1;
    (took, deferred.then(|| Duration::from_nanos(verdict)))
}

/// Child side of [`crash_verified_after_open`]: opens, reads, waits for the verdict,
/// prints both times in nanoseconds and whether there was a checkpoint to verify (1 or
/// 0), and exits without closing.
pub fn crash_open_verified(dir: &Path) -> ! {
    let (store, took, verdict) = open_until_verdict(dir);
    let deferred = store.recovery_report().checkpoint_verification_deferred;
    println!(
        "{} {} {}",
        took.as_nanos(),
        verdict.as_nanos(),
        u8::from(deferred)
    );
    // No close: the image stays a crash image for the opens that follow.
    std::process::exit(0);
}

/// The execlog crash image opened without its checkpoint, read-only (so that it stays
/// the crash image: nothing is cut, sealed or checkpointed), to the first read.
fn without_checkpoint(dir: &Path) -> Duration {
    let (checkpoint, away) = (dir.join("checkpoint.idx"), dir.join("checkpoint.idx.away"));
    let moved = std::fs::rename(&checkpoint, &away).is_ok();
    let t = Instant::now();
    let store = execlog::LogStore::open_read_only(dir).expect("open read-only");
    let events = store
        .load_events_blocking(&execlog::ExecutionId::from("r-0"))
        .expect("read");
    let took = t.elapsed();
    assert_eq!(events.len(), 100);
    drop(store);
    if moved {
        std::fs::rename(&away, &checkpoint).expect("put the checkpoint back");
    }
    took
}

/// Polls the verdict every millisecond with `LogStore::checkpoint_unverified` (`stats()`
/// walks the index under the store lock, which at a million executions took a core from
/// the verification it timed); panics on a refuted checkpoint.
fn wait_for_verdict(store: &execlog::LogStore) {
    while store.checkpoint_unverified() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let refuted = store.stats().checkpoint_refuted;
    assert!(refuted.is_none(), "checkpoint refuted: {refuted:?}");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `--open-loop DIR TIMES`: opens a clean-closed execlog store TIMES times with its
/// checkpoint verified after open, and prints the median time to return from open, to
/// the first read, and to the verdict (for profiling the open itself).
pub fn open_loop(dir: &Path, times: usize) {
    // EXECLOG_BENCH_NO_VERDICT=1: the verification never starts (close stops it), so
    // that a profile shows the open alone.
    let no_verdict = std::env::var("EXECLOG_BENCH_NO_VERDICT").is_ok();
    let mut runs = Vec::new();
    for _ in 0..times {
        let mut options = systems::execlog_options().verify_checkpoint_after_open(true);
        if no_verdict {
            options = options.checkpoint_verification_delay(Duration::from_secs(3600));
        }
        // EXECLOG_BENCH_NO_DECODE=1: the index is not decoded during the loop either
        // (a read of a fork or a deleted execution would wait for it), to show open
        // without the decode thread beside it.
        if std::env::var("EXECLOG_BENCH_NO_DECODE").is_ok() {
            options = options.checkpoint_decode_hold(Duration::from_secs(3600));
        }
        let t = Instant::now();
        let store = execlog::LogStore::open_with(dir, options).expect("open");
        let opened = t.elapsed();
        if std::env::var("EXECLOG_BENCH_PHASES").is_ok() {
            let report = store.recovery_report();
            eprintln!(
                "recover {:?} of open {opened:?} (index decoded after open: {})",
                report.duration, report.index_decoded_after_open
            );
        }
        let events = store
            .load_events_blocking(&execlog::ExecutionId::from("r-0"))
            .expect("read");
        let read = t.elapsed();
        assert_eq!(events.len(), 100);
        if !no_verdict {
            wait_for_verdict(&store);
        }
        runs.push((opened, read, t.elapsed()));
        store.close().expect("close");
    }
    runs.sort();
    let (opened, read, verdict) = runs[runs.len() / 2];
    println!(
        "open {:.2} ms, first read {:.2} ms, verdict {:.1} ms (median of {times})",
        ms(opened),
        ms(read),
        ms(verdict)
    );
}

/// `--stats-cost DIR TIMES`: opens the execlog store in `DIR` as a reader and prints the
/// median time of `LogStore::stats` over TIMES calls, with the store's executions.
pub fn stats_cost(dir: &Path, times: usize) {
    let store = execlog::LogStore::open_reader(dir).expect("open reader");
    let mut runs: Vec<Duration> = (0..times.max(1))
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(store.stats());
            t.elapsed()
        })
        .collect();
    runs.sort();
    println!(
        "stats(): median {:.2} µs over {} calls, {} executions",
        runs[runs.len() / 2].as_secs_f64() * 1e6,
        runs.len(),
        store.stats().executions
    );
}
