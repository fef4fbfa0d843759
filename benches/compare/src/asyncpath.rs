//! The async path beside the blocking one (issue 18): W tokio tasks against W OS threads,
//! each append awaited before the next, in one run.
//!
//! `--async [--writers 1,16,64,256] [--seconds S] [--repeats R]`. Per repeat and per W, the
//! cells alternate on fresh stores: raw fdatasync (the floor), execlog on threads
//! (`append_blocking`), execlog on tasks of a 2-worker tokio runtime (`EventStore::append`),
//! and at W = 1 also a tokio current-thread runtime and `futures::executor::block_on`.
//! Each cell reports events/s, p50, and the process's CPU time (user + system, from
//! `getrusage`) per append. Then an idle store is left open for `--idle-seconds` and
//! its CPU time is measured.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use execlog::{EventStore, ExecutionEventData, ExecutionId, LogStore, TenantId};

use crate::{Sample, baseline, event, fresh, run_writers};

/// Process CPU time (user + system) so far.
fn cpu_time() -> Duration {
    // SAFETY: `getrusage` writes one `rusage` into the zeroed struct we own; RUSAGE_SELF
    // is a valid `who`.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// A sample and the CPU time the process spent while taking it.
#[derive(Clone, Default)]
struct Cell {
    sample: Sample,
    cpu: Duration,
    /// The store's commit groups in the cell, and their fdatasync p50 (upper bound).
    groups: u64,
    fdatasync_p50: u64,
}

impl Cell {
    fn cpu_us_per_event(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.sample.events.max(1) as f64
    }
}

fn measure(f: impl FnOnce() -> Sample) -> Cell {
    let before = cpu_time();
    let sample = f();
    Cell {
        sample,
        cpu: cpu_time() - before,
        groups: 0,
        fdatasync_p50: 0,
    }
}

/// Adds the store's commit-group figures to `cell`.
fn with_groups(mut cell: Cell, store: &LogStore) -> Cell {
    let writes = store.stats().writes;
    cell.groups = writes.groups;
    cell.fdatasync_p50 = writes
        .fdatasync_micros
        .quantile_upper_bound(0.5)
        .unwrap_or(0);
    cell
}

fn median_cell(mut cells: Vec<Cell>) -> Cell {
    cells.sort_by(|a, b| a.sample.rate().total_cmp(&b.sample.rate()));
    cells.swap_remove(cells.len() / 2)
}

fn open(dir: &Path) -> Arc<LogStore> {
    Arc::new(LogStore::open(fresh(dir)).expect("open execlog"))
}

/// What one writer appends: one event, to its own executions of 100, with one
/// latency per append.
struct Writer {
    w: usize,
    tenant: TenantId,
    event: ExecutionEventData,
    exec: ExecutionId,
    n: u64,
    latencies: Vec<Duration>,
}

impl Writer {
    fn new(w: usize) -> Self {
        Writer {
            w,
            tenant: TenantId::from(format!("tenant-{}", w % 10)),
            event: event(w as u64),
            exec: ExecutionId::from(""),
            n: 0,
            latencies: Vec::new(),
        }
    }

    /// Moves `exec` to a new execution every 100 appends.
    fn next_exec(&mut self) {
        if self.n.is_multiple_of(100) {
            self.exec = ExecutionId::from(format!("w{}-e{}", self.w, self.n / 100));
        }
    }

    fn done(&mut self, started: Instant) {
        self.latencies.push(started.elapsed());
        self.n += 1;
    }

    fn result(self) -> (u64, Vec<Duration>) {
        (self.n, self.latencies)
    }
}

/// W threads, each awaiting (blocking) its append before the next.
fn threads(dir: &Path, writers: usize, seconds: f64) -> Cell {
    let store = open(dir);
    let cell = measure(|| {
        run_writers(writers, seconds, |w, stop| {
            let mut writer = Writer::new(w);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                writer.next_exec();
                store
                    .append_blocking(&writer.exec, &writer.tenant, writer.event.clone())
                    .expect("append");
                writer.done(t);
            }
            writer.result()
        })
    });
    with_groups(cell, &store)
}

/// One task's loop: append, await, repeat until `stop`.
async fn task_writer(
    store: Arc<LogStore>,
    w: usize,
    stop: Arc<AtomicBool>,
) -> (u64, Vec<Duration>) {
    let mut writer = Writer::new(w);
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        writer.next_exec();
        store
            .append(&writer.exec, &writer.tenant, writer.event.clone())
            .await
            .expect("append");
        writer.done(t);
    }
    writer.result()
}

/// The executors the async cells run on.
#[derive(Clone, Copy, PartialEq)]
enum Executor {
    TokioMulti,
    TokioCurrent,
    BlockOn,
}

impl Executor {
    fn name(self) -> &'static str {
        match self {
            Executor::TokioMulti => "tokio tasks (2 workers)",
            Executor::TokioCurrent => "tokio current-thread",
            Executor::BlockOn => "futures block_on",
        }
    }
}

/// W tasks on `executor`, each awaiting its append before the next.
fn tasks(dir: &Path, writers: usize, seconds: f64, executor: Executor) -> Cell {
    let store = open(dir);
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs_f64(seconds));
            stop.store(true, Ordering::Relaxed);
        })
    };
    let cell = measure(|| {
        let start = Instant::now();
        let results: Vec<(u64, Vec<Duration>)> = match executor {
            Executor::BlockOn => {
                assert_eq!(writers, 1, "block_on runs one writer");
                vec![futures_executor::block_on(task_writer(
                    store.clone(),
                    0,
                    stop.clone(),
                ))]
            }
            _ => {
                let rt = match executor {
                    Executor::TokioMulti => tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .build(),
                    _ => tokio::runtime::Builder::new_current_thread().build(),
                }
                .expect("tokio runtime");
                rt.block_on(async {
                    let handles: Vec<_> = (0..writers)
                        .map(|w| tokio::spawn(task_writer(store.clone(), w, stop.clone())))
                        .collect();
                    let mut out = Vec::new();
                    for h in handles {
                        out.push(h.await.expect("task"));
                    }
                    out
                })
            }
        };
        let elapsed = start.elapsed();
        let events = results.iter().map(|r| r.0).sum();
        Sample::new(
            events,
            elapsed,
            results.into_iter().flat_map(|r| r.1).collect(),
        )
    });
    timer.join().expect("timer");
    with_groups(cell, &store)
}

fn line(label: &str, c: &Cell) -> String {
    format!(
        "| {label} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {} |",
        c.sample.rate(),
        c.sample.pct_us(0.5),
        c.sample.pct_us(0.99),
        c.cpu_us_per_event(),
        c.sample.events as f64 / c.groups.max(1) as f64,
        c.fdatasync_p50,
    )
}

/// Runs the cells and prints a Markdown table with the ratios.
pub fn run(dir: &Path, writers: &[usize], seconds: f64, repeats: usize, idle_seconds: f64) {
    let raw: Vec<Cell> = (0..repeats)
        .map(|_| measure(|| baseline::raw_fdatasync(&fresh(&dir.join("raw")), 250, seconds)))
        .collect();
    let raw = median_cell(raw);
    let raw_p50 = raw.sample.pct_us(0.5);
    println!(
        "| cell | events/s | p50 µs | p99 µs | CPU µs per append | appends per fdatasync | fdatasync p50 µs (≤) | ÷ threads | ÷ (W ÷ raw p50) | p50 ÷ raw p50 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "{} | | |",
        line("raw 256-byte write + fdatasync, 1 writer", &raw)
    );
    for &w in writers {
        let mut cells: Vec<(String, Vec<Cell>)> = Vec::new();
        let mut execs = vec![Executor::TokioMulti];
        if w == 1 {
            execs.extend([Executor::TokioCurrent, Executor::BlockOn]);
        }
        for r in 0..repeats {
            eprintln!("async path, {w} writers, repeat {}…", r + 1);
            let mut add = |label: String, cell: Cell| match cells.iter_mut().find(|c| c.0 == label)
            {
                Some(c) => c.1.push(cell),
                None => cells.push((label, vec![cell])),
            };
            add(
                format!("execlog, {w} threads"),
                threads(&dir.join("t"), w, seconds),
            );
            for &e in &execs {
                add(
                    format!("execlog, {w} {}", e.name()),
                    tasks(&dir.join("a"), w, seconds, e),
                );
            }
        }
        let cells: Vec<(String, Cell)> = cells
            .into_iter()
            .map(|(l, c)| (l, median_cell(c)))
            .collect();
        let threads_rate = cells[0].1.sample.rate();
        for (label, cell) in &cells {
            println!(
                "{} {:.2} | {:.2} | {:.2} |",
                line(label, cell),
                cell.sample.rate() / threads_rate,
                cell.sample.rate() / (w as f64 * 1e6 / raw_p50),
                cell.sample.pct_us(0.5) / raw_p50,
            );
        }
    }
    idle(&dir.join("idle"), idle_seconds);
}

/// CPU time of a store left open and idle (after one append).
fn idle(dir: &Path, seconds: f64) {
    let store = open(dir);
    store
        .append_blocking(&ExecutionId::from("idle"), &TenantId::from("t"), event(0))
        .expect("append");
    std::thread::sleep(Duration::from_millis(100));
    let before = cpu_time();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let spent = cpu_time() - before;
    println!(
        "\nidle open store: {:.3} ms of CPU time in {seconds} s",
        spent.as_secs_f64() * 1e3
    );
    drop(store);
}
