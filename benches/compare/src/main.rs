//! execlog side by side with SQLite, redb and the disk's own limits, in one run.
//!
//! `cargo run --release --manifest-path benches/compare/Cargo.toml -- [--quick] [--events N]
//! [--seconds S] [--repeats R] [--writers 1,16,64,256] [--ingest-only] [--only SYSTEM [--batch | --open]] [--follow] [--async [--idle-seconds S]] [--memory K --events N] [--erasure --events N] [--scrub --events N] [--open-scale N,N,…] [--checkpoint-stall --events EXECUTIONS]
//! [--out docs/BENCHMARKS.md]`
//!
//! With `--features postgres` and `--pg-url URL` (or `EXECLOG_PG_URL`), also the
//! PostgreSQL backend beside a naive client (`src/pg.rs`): `--pg-only` runs only those
//! and rewrites only their section of `--out`; `--pg-writers 1,16,64`,
//! `--pg-write-connections N`; `--only pgstore|pg-naive` profiles one of them.
//!
//! Systems alternate within each repeat and medians are reported, because the machine
//! is shared and noisy. Every figure is also given as a ratio to the ideal group-commit
//! loop and to SQLite measured in the same run.

mod asyncpath;
mod baseline;
mod checkpoint_stall;
mod crash_tail;
mod erasure;
mod follow;
mod memory;
#[cfg(feature = "postgres")]
mod pg;
mod report;
mod scale;
mod scrub;
mod systems;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use execlog::{ExecutionEventData, StepId};

/// One measurement: events done in `elapsed`, with per-operation latencies.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub events: u64,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
}

impl Sample {
    pub fn new(events: u64, elapsed: Duration, mut latencies: Vec<Duration>) -> Self {
        latencies.sort_unstable();
        Sample {
            events,
            elapsed,
            latencies,
        }
    }
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    pub fn pct_us(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies.len() as f64 * p) as usize).min(self.latencies.len() - 1);
        self.latencies[i].as_secs_f64() * 1e6
    }
}

/// The median sample by rate.
pub fn median(mut samples: Vec<Sample>) -> Sample {
    samples.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    samples.swap_remove(samples.len() / 2)
}

pub struct Config {
    pub quick: bool,
    pub ingest_only: bool,
    /// With `only`: profile batch ingest instead of single appends.
    pub batch: bool,
    /// With `only execlog`: fill `--events`, then time open against the raw scan.
    pub open: bool,
    /// `--open-scale`: the store sizes to time open at (all systems, or `--only`).
    pub open_scale: Vec<u64>,
    /// `--checkpoint-stall`: append latency with running checkpoints on and off.
    pub checkpoint_stall: bool,
    /// Ingest with and without a subscriber following it (issue 14), at `--writers`.
    pub follow: bool,
    /// The async path beside the blocking one (issue 18), at `--writers`.
    pub async_path: bool,
    /// How long the async run leaves an idle store open to measure its CPU time.
    pub idle_seconds: f64,
    /// Index memory at scale: fill `--events` in executions of this many events each.
    pub memory_per_execution: Option<u64>,
    /// Erasure (issue 15): space reclaimed, bytes written, effect on ingest.
    pub erasure: bool,
    /// The scrubber (issue 16): its rate and its effect on ingest.
    pub scrub: bool,
    /// Profile one system alone (no baselines, no report).
    pub only: Option<String>,
    pub seconds: f64,
    pub repeats: usize,
    pub writers: Vec<usize>,
    pub read_events: u64,
    pub out: PathBuf,
    pub dir: PathBuf,
    /// The PostgreSQL server to measure the PostgreSQL systems against, if any.
    pub pg_url: Option<String>,
    /// Only the PostgreSQL systems: rewrite only their section of `out`.
    pub pg_only: bool,
    /// Writer counts of the PostgreSQL ingest cells (single events and batches).
    pub pg_writers: Vec<usize>,
    /// `PgOptions::write_connections` for PgStore (its default if `None`).
    pub pg_write_connections: Option<usize>,
}

fn parse_args() -> Config {
    let mut c = Config {
        quick: false,
        ingest_only: false,
        batch: false,
        open: false,
        open_scale: Vec::new(),
        checkpoint_stall: false,
        follow: false,
        async_path: false,
        idle_seconds: 10.0,
        memory_per_execution: None,
        erasure: false,
        scrub: false,
        only: None,
        seconds: 2.0,
        repeats: 3,
        writers: vec![1, 16, 64, 256],
        read_events: 1_000_000,
        out: PathBuf::from("docs/BENCHMARKS.md"),
        dir: PathBuf::from("target/compare-data"),
        pg_url: None,
        pg_only: false,
        pg_writers: vec![1, 16, 64],
        pg_write_connections: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--quick" => {
                c.quick = true;
                c.seconds = 0.3;
                c.repeats = 1;
                c.writers = vec![1, 16];
                c.read_events = 20_000;
            }
            "--ingest-only" => c.ingest_only = true,
            "--only" => c.only = Some(value()),
            "--batch" => c.batch = true,
            "--open" => c.open = true,
            "--follow" => c.follow = true,
            "--checkpoint-stall" => c.checkpoint_stall = true,
            "--async" => c.async_path = true,
            "--erasure" => c.erasure = true,
            "--scrub" => c.scrub = true,
            "--idle-seconds" => c.idle_seconds = value().parse().expect("--idle-seconds"),
            "--memory" => c.memory_per_execution = Some(value().parse().expect("--memory K")),
            "--open-scale" => {
                c.open_scale = value()
                    .split(',')
                    .map(|n| n.parse().expect("--open-scale N,N,…"))
                    .collect();
            }
            "--fill-and-crash" => {
                let name = value();
                let dir = PathBuf::from(value());
                let events = value().parse().expect("--fill-and-crash NAME DIR EVENTS");
                scale::fill_and_crash(&name, &dir, events);
            }
            "--crash-open-verified" => {
                scale::crash_open_verified(&PathBuf::from(value()));
            }
            "--open-loop" => {
                let dir = PathBuf::from(value());
                let times = value().parse().expect("--open-loop DIR TIMES");
                scale::open_loop(&dir, times);
                std::process::exit(0);
            }
            "--crash-tail-fill" => {
                let dir = PathBuf::from(value());
                let executions = value()
                    .parse()
                    .expect("--crash-tail-fill DIR EXECUTIONS EVENTS");
                let events = value()
                    .parse()
                    .expect("--crash-tail-fill DIR EXECUTIONS EVENTS");
                crash_tail::fill(&dir, executions, events);
            }
            "--sidecar-ingest" => {
                let dir = PathBuf::from(value());
                let seconds = value()
                    .parse()
                    .expect("--sidecar-ingest DIR SECONDS REPEATS");
                let repeats = value()
                    .parse()
                    .expect("--sidecar-ingest DIR SECONDS REPEATS");
                crash_tail::ingest_ab(&dir, &[16, 64], seconds, repeats);
                std::process::exit(0);
            }
            "--crash-tail-open" => crash_tail::open_once(&PathBuf::from(value())),
            "--crash-tail" => {
                let dir = PathBuf::from(value());
                let times = value().parse().expect("--crash-tail DIR TIMES");
                crash_tail::run(&dir, times);
                std::process::exit(0);
            }
            "--stats-cost" => {
                let dir = PathBuf::from(value());
                let times = value().parse().expect("--stats-cost DIR TIMES");
                scale::stats_cost(&dir, times);
                std::process::exit(0);
            }
            "--memory-open" => {
                let dir = PathBuf::from(value());
                let executions = value().parse().expect("--memory-open DIR EXECUTIONS");
                memory::open_and_report(&dir, executions);
                std::process::exit(0);
            }
            "--seconds" => c.seconds = value().parse().expect("--seconds"),
            "--repeats" => c.repeats = value().parse().expect("--repeats"),
            "--events" => c.read_events = value().parse().expect("--events"),
            "--writers" => {
                c.writers = value()
                    .split(',')
                    .map(|w| w.parse().expect("--writers"))
                    .collect()
            }
            "--out" => c.out = PathBuf::from(value()),
            "--dir" => c.dir = PathBuf::from(value()),
            "--pg-url" => c.pg_url = Some(value()),
            "--pg-only" => c.pg_only = true,
            "--pg-writers" => {
                c.pg_writers = value()
                    .split(',')
                    .map(|w| w.parse().expect("--pg-writers"))
                    .collect()
            }
            "--pg-write-connections" => {
                c.pg_write_connections = Some(value().parse().expect("--pg-write-connections"))
            }
            other => panic!("unknown argument {other}"),
        }
    }
    if cfg!(feature = "postgres") {
        c.pg_url = c.pg_url.or_else(|| std::env::var("EXECLOG_PG_URL").ok());
    } else if c.pg_url.is_some() || c.pg_only {
        panic!("the PostgreSQL systems need a build with `--features postgres`");
    }
    if c.pg_only && c.pg_url.is_none() {
        panic!("--pg-only needs --pg-url URL or EXECLOG_PG_URL");
    }
    c
}

/// ~250 bytes stored: a StepCompleted with a 150-byte output.
///
/// The output is pseudo-random lowercase text with spaces, so that a compressing peer
/// (RocksDB with LZ4) is not flattered by a run of one repeated letter.
pub fn event(n: u64) -> ExecutionEventData {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let text: String = (0..142)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 32 {
                0..=25 => char::from(b'a' + (x % 32) as u8),
                _ => ' ',
            }
        })
        .collect();
    ExecutionEventData::StepCompleted {
        step_id: StepId::from(format!("step-{n:08}")),
        output: Some(format!("{n:08}{text}")),
        duration_ms: n,
    }
}

pub(crate) fn fresh(dir: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("bench dir");
    dir.to_path_buf()
}

/// Runs `writer(w, stop)` on `writers` threads for `seconds`, then merges what each
/// returns (events written, one latency per append) into one sample.
pub(crate) fn run_writers<F>(writers: usize, seconds: f64, writer: F) -> Sample
where
    F: Fn(usize, &AtomicBool) -> (u64, Vec<Duration>) + Sync,
{
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let results: Vec<(u64, Vec<Duration>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (stop, writer) = (&stop, &writer);
                s.spawn(move || writer(w, stop))
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|h| h.join().expect("writer"))
            .collect()
    });
    let elapsed = start.elapsed();
    let events = results.iter().map(|r| r.0).sum();
    Sample::new(
        events,
        elapsed,
        results.into_iter().flat_map(|r| r.1).collect(),
    )
}

/// W writers, each appending single durable events to its own executions of 100.
pub fn ingest(sys: &dyn systems::System, writers: usize, seconds: f64) -> Sample {
    run_writers(writers, seconds, |w, stop| {
        let mut lat = Vec::new();
        let mut n = 0u64;
        // Built once per writer so the harness adds little work per append.
        let tenant = format!("tenant-{}", w % 10);
        let ev = event(w as u64);
        let mut exec = String::new();
        while !stop.load(Ordering::Relaxed) {
            if n.is_multiple_of(100) {
                exec = format!("w{w}-e{}", n / 100);
            }
            let t = Instant::now();
            sys.append(&exec, &tenant, &ev);
            lat.push(t.elapsed());
            n += 1;
        }
        (n, lat)
    })
}

/// Batch writers, each appending batches of 100 events to its own executions.
const BATCH_WRITERS: usize = 16;

/// Events per append of the batch-ingest cells.
const BATCH_EVENTS: u64 = 100;

/// `writers` threads appending batches of `per_append` events (a divisor of 100, so
/// that executions keep 100 events), each durable before it returns.
fn batch_ingest(
    sys: &dyn systems::System,
    writers: usize,
    seconds: f64,
    per_append: u64,
) -> Sample {
    assert!(
        100 % per_append == 0,
        "batch size {per_append} must divide 100"
    );
    run_writers(writers, seconds, |w, stop| {
        let mut lat = Vec::new();
        let mut n = 0u64;
        // Built once per writer (under a millisecond): generating 100 events' text per
        // append cost the harness as much as the fastest system. Eight distinct batches
        // (200 KB) rotate, more than LZ4's 64 KB window, so RocksDB's compression sees
        // no repeats it would not see in use.
        let pool: Vec<Vec<_>> = (0..8u64)
            .map(|b| {
                let base = (w as u64 * 8 + b) * per_append;
                (0..per_append).map(|i| event(base + i)).collect()
            })
            .collect();
        while !stop.load(Ordering::Relaxed) {
            let batch = &pool[(n / per_append) as usize % pool.len()];
            let t = Instant::now();
            sys.append_batch(&format!("b-{w}-{}", n / 100), "tenant-b", batch);
            lat.push(t.elapsed());
            n += per_append;
        }
        (n, lat)
    })
}

/// Fills a store with `events` events in executions of 100 (batches of 100).
fn fill(sys: &dyn systems::System, events: u64) {
    for e in 0..events / 100 {
        let batch: Vec<_> = (0..100).map(|i| event(e * 100 + i)).collect();
        sys.append_batch(&format!("r-{e}"), &format!("tenant-{}", e % 10), &batch);
    }
}

fn reads(sys: &dyn systems::System, executions: u64, seconds: f64, after_last: bool) -> Sample {
    let start = Instant::now();
    let mut lat = Vec::new();
    let mut events = 0;
    let mut x = 0x9E37_79B9_7F4A_7C15_u64;
    while start.elapsed().as_secs_f64() < seconds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let exec = format!("r-{}", x % executions);
        let t = Instant::now();
        events += if after_last {
            sys.load_after(&exec, 90)
        } else {
            sys.load(&exec)
        } as u64;
        lat.push(t.elapsed());
    }
    Sample::new(events, start.elapsed(), lat)
}

/// Bytes of every file under `dir` (RocksDB keeps its files in a subdirectory).
pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(|e| e.ok())
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    let c = parse_args();
    std::fs::create_dir_all(&c.dir).expect("bench dir");
    #[cfg(feature = "postgres")]
    if let Some(name) = c.only.as_deref().filter(|n| pg::NAMES.contains(n)) {
        pg::profile(&c, name);
        return;
    }
    #[cfg(feature = "postgres")]
    if c.pg_only {
        let section = pg::run(&c);
        report::write_pg_section(&c.out, &section);
        eprintln!("wrote the PostgreSQL section of {}", c.out.display());
        return;
    }
    if c.scrub {
        scrub::run(
            &c.dir.join("scrub"),
            c.read_events,
            &c.writers,
            c.seconds,
            c.repeats,
        );
        return;
    }
    if c.erasure {
        erasure::run(
            &c.dir.join("erasure"),
            c.read_events,
            &c.writers,
            c.seconds,
            c.repeats,
        );
        return;
    }
    if let Some(per) = c.memory_per_execution {
        memory::header();
        memory::run(&c.dir.join("memory"), c.read_events, per);
        return;
    }
    if c.async_path {
        asyncpath::run(
            &c.dir.join("async"),
            &c.writers,
            c.seconds,
            c.repeats,
            c.idle_seconds,
        );
        return;
    }
    if c.checkpoint_stall {
        let dir = c.dir.join("checkpoint-stall");
        checkpoint_stall::run(&dir, c.read_events, c.seconds, c.repeats);
        return;
    }
    if !c.open_scale.is_empty() {
        scale::run(&c.dir.join("scale"), &c.open_scale, c.only.as_deref());
        return;
    }
    if c.follow {
        follow::run(&c.dir.join("follow"), &c.writers, c.seconds, c.repeats);
        return;
    }
    if let Some(name) = &c.only {
        for &w in &c.writers {
            let sys = systems::open(name, &fresh(&c.dir.join(name)));
            if c.open {
                let dir = fresh(&c.dir.join(name));
                fill(systems::open(name, &dir).as_ref(), c.read_events);
                let o = open_vs_scan(&dir, c.repeats.max(3));
                let scan = o.scan.0.as_secs_f64();
                println!(
                    "{name} open of {} events: raw read + CRC {:.1} ms for {:.1} MB; with checkpoint {:.1} ms ({:.1} MB from it): {:.2}x; rebuilt from every record {:.1} ms: {:.2}x",
                    c.read_events,
                    scan * 1e3,
                    o.scan.1 as f64 / 1e6,
                    o.recovery.duration.as_secs_f64() * 1e3,
                    o.recovery.checkpoint_bytes as f64 / 1e6,
                    o.recovery.duration.as_secs_f64() / scan,
                    o.rebuild.duration.as_secs_f64() * 1e3,
                    o.rebuild.duration.as_secs_f64() / scan,
                );
                let (t, bytes) = scrub_now(&dir, c.repeats.max(3));
                println!(
                    "{name} scrub_now of the sealed segments: {:.1} MB in {:.1} ms, {:.0} MB/s (raw read + CRC {:.0} MB/s)",
                    bytes as f64 / 1e6,
                    t.as_secs_f64() * 1e3,
                    bytes as f64 / 1e6 / t.as_secs_f64(),
                    o.scan.1 as f64 / 1e6 / scan,
                );
                return;
            }
            let (s, kind) = if c.batch {
                (
                    batch_ingest(sys.as_ref(), w, c.seconds, BATCH_EVENTS),
                    "batch",
                )
            } else {
                (ingest(sys.as_ref(), w, c.seconds), "single")
            };
            println!(
                "{name} {w} writers, {kind}: {:.0} events/s, p50 {:.0} µs, p99 {:.0} µs",
                s.rate(),
                s.pct_us(0.5),
                s.pct_us(0.99)
            );
        }
        return;
    }
    let mut r = report::Report::new(&c);
    let event_bytes = 250;

    eprintln!("baselines…");
    r.raw_fdatasync = median(
        (0..c.repeats)
            .map(|_| baseline::raw_fdatasync(&fresh(&c.dir.join("base")), event_bytes, c.seconds))
            .collect(),
    );
    r.seq_mb_s = sequential_write(&c);

    for &w in &c.writers {
        eprintln!("durable ingest, {w} writers…");
        let mut per: Vec<Vec<Sample>> = vec![Vec::new(); systems::names().len() + 1];
        for _ in 0..c.repeats {
            per[0].push(baseline::ideal_group_commit(
                &fresh(&c.dir.join("base")),
                w,
                event_bytes,
                c.seconds,
            ));
            for (i, name) in systems::names().into_iter().enumerate() {
                let dir = fresh(&c.dir.join(name));
                let sys = systems::open(name, &dir);
                per[i + 1].push(ingest(sys.as_ref(), w, c.seconds));
            }
        }
        r.ingest.push((w, per.into_iter().map(median).collect()));
    }

    if c.ingest_only {
        r.write(&c.out);
        eprintln!("wrote {}", c.out.display());
        return;
    }
    // The disk's sequential bandwidth is measured again before every batch run, and the
    // batch ratios use the median of these: the disk behind this VM swings (one run
    // measured 336 MB/s at its start and a median of 590 over 25 measurements; single
    // measurements across runs ranged 380-909), so a single figure from the start of
    // the run made the ratio a lottery. The 1-writer batch also gets its own physical
    // bound: one 25 KB write + fdatasync at a time, as a lone batch writer must do.
    let mut seq_samples = vec![r.seq_mb_s];
    r.raw_batch_fdatasync = median(
        (0..c.repeats)
            .map(|_| baseline::raw_fdatasync(&fresh(&c.dir.join("base")), BATCH_BYTES, c.seconds))
            .collect(),
    );
    for name in systems::names() {
        eprintln!("{name}: batch ingest, reads, open, footprint, list…");
        let dir = fresh(&c.dir.join(name));
        let sys = systems::open(name, &dir);
        let mut singles = Vec::new();
        let mut manys = Vec::new();
        for _ in 0..c.repeats {
            seq_samples.push(sequential_write(&c));
            singles.push(batch_ingest(sys.as_ref(), 1, c.seconds, BATCH_EVENTS));
            seq_samples.push(sequential_write(&c));
            manys.push(batch_ingest(
                sys.as_ref(),
                BATCH_WRITERS,
                c.seconds,
                BATCH_EVENTS,
            ));
        }
        let batch = median(singles);
        let batch_many = median(manys);
        drop(sys);
        let dir = fresh(&c.dir.join(name));
        let sys = systems::open(name, &dir);
        let t = Instant::now();
        fill(sys.as_ref(), c.read_events);
        let fill_time = t.elapsed();
        let executions = c.read_events / 100;
        let load = median(
            (0..c.repeats)
                .map(|_| reads(sys.as_ref(), executions, c.seconds, false))
                .collect(),
        );
        let after = median(
            (0..c.repeats)
                .map(|_| reads(sys.as_ref(), executions, c.seconds, true))
                .collect(),
        );
        let list_start = Instant::now();
        let mut listed = 0;
        for i in 0..100 {
            listed += sys.list(&format!("tenant-{}", i % 10), 50, 0);
        }
        let list_us = list_start.elapsed().as_secs_f64() * 1e6 / 100.0;
        drop(sys);
        let disk = dir_bytes(&dir);
        let t = Instant::now();
        let sys = systems::open(name, &dir);
        let _ = sys.load("r-0");
        let open = t.elapsed();
        drop(sys);
        r.systems.push(report::SystemResult {
            name: name.to_string(),
            batch,
            batch_many,
            fill_time,
            load,
            after,
            list_us,
            listed,
            disk_bytes: disk,
            open,
        });
    }

    r.seq_start_mb_s = seq_samples[0];
    seq_samples.sort_by(f64::total_cmp);
    r.seq_mb_s = seq_samples[seq_samples.len() / 2];
    r.seq_range = (seq_samples[0], seq_samples[seq_samples.len() - 1]);
    r.seq_samples = seq_samples.len();

    // execlog specifics: open vs raw scan of the same bytes, after a clean close and
    // after a torn tail; index memory.
    let dir = c.dir.join("execlog");
    let opens = open_vs_scan(&dir, c.repeats.max(3));
    r.raw_scan = opens.scan;
    r.recovery = Some(opens.recovery);
    r.rebuild = Some(opens.rebuild);
    r.execlog_stats = Some(execlog::LogStore::open(&dir).expect("open").stats());
    r.torn_open = torn_open(&dir);
    #[cfg(feature = "postgres")]
    if c.pg_url.is_some() {
        r.pg_section = Some(pg::run(&c));
    }
    r.write(&c.out);
    eprintln!("wrote {}", c.out.display());
}

/// Medians of alternating raw scans and opens of the same execlog store.
struct Opens {
    /// Raw read + CRC of the segment files: time, bytes.
    scan: (Duration, u64),
    /// The recovery report of the median open (index checkpoint on, the default).
    recovery: execlog::RecoveryReport,
    /// The same with the checkpoint off: the index rebuilt from every record, as after
    /// a crash of a store never closed cleanly.
    rebuild: execlog::RecoveryReport,
}

/// Bytes of one 100-event batch of the workload, for the 1-writer batch bound.
const BATCH_BYTES: usize = 100 * 250;

/// One measurement of the sequential write bandwidth, MB/s.
fn sequential_write(c: &Config) -> f64 {
    baseline::sequential_write_mb_s(&fresh(&c.dir.join("base")), if c.quick { 64 } else { 512 })
}

/// Alternates `repeats` raw scans with as many opens of each kind (to the first read),
/// so that all see the page cache in the same state, and returns the medians.
fn open_vs_scan(dir: &Path, repeats: usize) -> Opens {
    let mut scans = Vec::new();
    let mut recoveries = Vec::new();
    let mut rebuilds = Vec::new();
    let open = |checkpoint: bool| {
        let options = execlog::Options::default().index_checkpoint(checkpoint);
        let store = execlog::LogStore::open_with(dir, options).expect("open");
        let _ = store.load_events_blocking(&execlog::ExecutionId::from("r-0"));
        store.recovery_report().clone()
    };
    // A clean close with checkpoints on, so that the first timed open has one.
    drop(open(true));
    for _ in 0..repeats {
        scans.push(baseline::raw_scan(dir));
        recoveries.push(open(true));
        rebuilds.push(open(false));
    }
    scans.sort_by_key(|s| s.0);
    recoveries.sort_by_key(|r| r.duration);
    rebuilds.sort_by_key(|r| r.duration);
    Opens {
        scan: scans[scans.len() / 2],
        recovery: recoveries.swap_remove(recoveries.len() / 2),
        rebuild: rebuilds.swap_remove(rebuilds.len() / 2),
    }
}

/// The median time of `repeats` unpaced scrubs of the store's sealed segments, and
/// the bytes one checks.
fn scrub_now(dir: &Path, repeats: usize) -> (Duration, u64) {
    let options = systems::execlog_options().scrub(execlog::ScrubRate::Off);
    let store = execlog::LogStore::open_with(dir, options).expect("open");
    let mut runs: Vec<(Duration, u64)> = (0..repeats)
        .map(|_| {
            let t = Instant::now();
            let report = store.scrub_now().expect("scrub");
            assert!(report.is_clean(), "{report:?}");
            (t.elapsed(), report.bytes)
        })
        .collect();
    runs.sort();
    runs[runs.len() / 2]
}

/// Appends garbage after the newest segment's data (a torn tail), then times open to
/// the first read.
fn torn_open(dir: &Path) -> Duration {
    use std::os::unix::fs::FileExt;
    let mut segs: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    let last = segs.last().expect("a segment");
    let bytes = std::fs::read(last).expect("read");
    let end = bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(32, |i| i + 1)
        .next_multiple_of(8);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .expect("open");
    f.write_all_at(&[0xAB; 100], end as u64).expect("tear");
    f.sync_all().expect("sync");
    let t = Instant::now();
    let store = execlog::LogStore::open(dir).expect("open torn");
    let _ = store.load_events_blocking(&execlog::ExecutionId::from("r-0"));
    t.elapsed()
}
