//! Index memory at scale (issue 16): `--memory --events N --per-execution K` fills a
//! store with N events in executions of K (one durable batch each, 64 writers), closes
//! it, then opens it again in a fresh process of this binary and reports the index's
//! own estimate (`Stats::index_bytes`), the bytes per execution and per event, and the
//! process's resident anonymous memory (RssAnon) before open, after open, once the
//! index is decoded and the checkpoint verified (by default a store this size is
//! verified after open: the decode and the verification then allocate after open
//! returns), and after reading 2,000 random executions.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use execlog::{ExecutionId, LogStore, TenantId};

use crate::{event, fresh};

/// Resident anonymous memory of this process, in bytes.
fn rss_anon() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Fills `dir` with `events` events in executions of `per` events, then measures an
/// open of it in a child process.
pub fn run(dir: &Path, events: u64, per: u64) {
    let dir = fresh(dir);
    let executions = events / per;
    let started = Instant::now();
    {
        let store = LogStore::open(&dir).expect("open");
        let next = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..64 {
                s.spawn(|| {
                    loop {
                        let e = next.fetch_add(1, Ordering::Relaxed);
                        if e >= executions {
                            break;
                        }
                        let batch = (0..per).map(|i| event(e * per + i)).collect();
                        let (id, tenant) =
                            (exec_id(e), TenantId::from(format!("tenant-{}", e % 10)));
                        store
                            .append_batch_blocking(&id, &tenant, batch)
                            .expect("append");
                    }
                });
            }
        });
        store.close().expect("close");
    }
    eprintln!(
        "filled {events} events in {executions} executions in {:.1?}",
        started.elapsed()
    );
    let exe = std::env::current_exe().expect("current exe");
    let out = std::process::Command::new(exe)
        .arg("--memory-open")
        .arg(&dir)
        .arg(executions.to_string())
        .output()
        .expect("run the open");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn exec_id(e: u64) -> ExecutionId {
    ExecutionId::from(format!("exec-{e:09}"))
}

/// The child's part: open, read 2,000 random executions, report.
pub fn open_and_report(dir: &Path, executions: u64) {
    let before = rss_anon();
    let started = Instant::now();
    let store = LogStore::open(dir).expect("open");
    let open = started.elapsed();
    let after_open = rss_anon();
    // `stats` takes the store lock, which the decode after open holds.
    let stats = store.stats();
    while store.checkpoint_unverified() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let verdict = started.elapsed();
    assert_eq!(store.stats().checkpoint_refuted, None, "refuted");
    let after_verdict = rss_anon();
    let mut x = 0x9E37_79B9_7F4A_7C15_u64;
    let mut read = 0;
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        read += store
            .load_events_blocking(&exec_id(x % executions))
            .expect("load")
            .len();
    }
    let after_reads = rss_anon();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "| {} | {} | {:.1?} | {:.1?} | {:.1} MiB | {:.1} | {:.2} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
        stats.events,
        stats.executions,
        open,
        verdict,
        mib(stats.index_bytes as u64),
        stats.index_bytes as f64 / stats.executions.max(1) as f64,
        stats.index_bytes as f64 / stats.events.max(1) as f64,
        mib(before),
        mib(after_open),
        mib(after_verdict),
        mib(after_reads),
    );
    eprintln!("read {read} events of 2,000 executions");
}

/// The table header the rows above go under.
pub fn header() {
    println!(
        "| events | executions | open | its verdict, after open | index (estimate) | index bytes per execution | per event | RssAnon before open | after open | after the verdict | after 2,000 reads |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
}
