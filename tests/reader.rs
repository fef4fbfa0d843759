//! Readers in other processes (issue 14): `LogStore::open_reader` serves exactly the
//! writer's published durable end, takes no lock, writes nothing, follows new appends
//! (reads and subscriptions), and survives the writer's crash and restart.
//!
//! The in-process tests open the writer and the reader as two stores on one directory
//! (the reader takes no lock, so nothing tells it apart from another process's); the
//! kill test runs the writer as a child process killed with SIGKILL again and again.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use execlog::*;

const PATIENCE: Duration = Duration::from_secs(30);

/// Waits until `reader` holds `n` events of `e`.
fn wait_for(reader: &LogStore, e: &ExecutionId, n: usize) -> Vec<StoredEvent> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let events = reader.load_events_blocking(e).unwrap();
        if events.len() >= n || Instant::now() > deadline {
            assert_eq!(events.len(), n, "the reader has {} of {n}", events.len());
            return events;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Every file name and its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_reader_follows_a_running_writer_without_its_lock() {
    let dir = tempfile::tempdir().unwrap();
    let writer = LogStore::open_with(dir.path(), small_segments()).unwrap();
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    for i in 1..=100 {
        writer.append_blocking(&e, &t, step_event(i)).unwrap();
    }
    let reader = LogStore::open_reader(dir.path()).unwrap();
    assert_eq!(reader.load_events_blocking(&e).unwrap().len(), 100);
    assert!(matches!(
        reader.append_blocking(&e, &t, step_event(0)),
        Err(Error::InvalidArgument(_))
    ));
    let mut sub = reader
        .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
        .unwrap();
    // Enough to roll over several small segments.
    for i in 101..=3000 {
        writer.append_blocking(&e, &t, step_event(i)).unwrap();
    }
    let events = wait_for(&reader, &e, 3000);
    assert_eq!(events, writer.load_events_blocking(&e).unwrap());
    let mut positions = Vec::new();
    while positions.len() < 3000 {
        let d = sub.next_timeout(PATIENCE).unwrap().expect("an event");
        assert_eq!(d.event, events[positions.len()]);
        positions.push(d.position);
    }
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    let mut on_writer = writer
        .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
        .unwrap();
    for &p in &positions {
        assert_eq!(on_writer.try_next().unwrap().unwrap().position, p);
    }
    assert_eq!(
        reader.end_position().unwrap(),
        writer.end_position().unwrap()
    );
}

#[test]
fn a_reader_writes_nothing_and_needs_no_lock_file() {
    let dir = tempfile::tempdir().unwrap();
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    {
        let writer = LogStore::open(dir.path()).unwrap();
        for i in 1..=10 {
            writer.append_blocking(&e, &t, step_event(i)).unwrap();
        }
        writer.close().unwrap();
    }
    std::fs::remove_file(dir.path().join("LOCK")).unwrap();
    let before = snapshot(dir.path());
    {
        let reader = LogStore::open_reader(dir.path()).unwrap();
        assert_eq!(reader.load_events_blocking(&e).unwrap().len(), 10);
        assert_eq!(
            reader.list_executions_blocking(&t, 10, 0).unwrap(),
            std::slice::from_ref(&e)
        );
        std::thread::sleep(Duration::from_millis(30));
        reader.close().unwrap();
    }
    assert_eq!(
        snapshot(dir.path()),
        before,
        "the reader changed the directory"
    );
}

#[test]
fn a_reader_sees_the_writer_restart_and_continues() {
    let dir = tempfile::tempdir().unwrap();
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    let first = LogStore::open_with(dir.path(), small_segments()).unwrap();
    first.append_blocking(&e, &t, step_event(1)).unwrap();
    let reader = LogStore::open_reader(dir.path()).unwrap();
    let mut sub = reader
        .subscribe(
            SubscriptionFilter::Execution(e.clone()),
            StartFrom::Beginning,
        )
        .unwrap();
    let mut writer = Some(first);
    let mut seen = Vec::new();
    for round in 0..5u64 {
        let w = writer
            .take()
            .unwrap_or_else(|| LogStore::open_with(dir.path(), small_segments()).unwrap());
        for i in 0..200 {
            w.append_blocking(&e, &t, step_event(2 + round * 200 + i))
                .unwrap();
        }
        w.close().unwrap();
        let expected = 1 + (round + 1) * 200;
        while (seen.len() as u64) < expected {
            let d = sub.next_timeout(PATIENCE).unwrap().expect("an event");
            seen.push(d.event.sequence);
        }
    }
    assert_eq!(seen, (1..=1001).collect::<Vec<_>>());
    assert_eq!(wait_for(&reader, &e, 1001).len(), 1001);
}

/// Liveness, not speed: a subscriber waiting on a reader is woken once the writer's
/// end moves (the poll notices within milliseconds). The 10 s bound fails only if
/// nothing wakes it and its 60 s wait runs out.
#[test]
fn a_readers_subscriber_is_woken_by_new_appends() {
    let dir = tempfile::tempdir().unwrap();
    let writer = LogStore::open(dir.path()).unwrap();
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    writer.append_blocking(&e, &t, step_event(1)).unwrap();
    let reader = LogStore::open_reader(dir.path()).unwrap();
    let mut sub = reader
        .subscribe(SubscriptionFilter::All, StartFrom::End)
        .unwrap();
    for i in 2..=4 {
        assert_eq!(sub.try_next().unwrap(), None);
        writer.append_blocking(&e, &t, step_event(i)).unwrap();
        let waited = Instant::now();
        let d = sub
            .next_timeout(Duration::from_secs(60))
            .unwrap()
            .expect("an event");
        assert_eq!(d.event.sequence, i);
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "woken after {:?}",
            waited.elapsed()
        );
    }
}

/// The child writer of `a_reader_follows_a_writer_killed_again_and_again`.
#[test]
fn follow_kill_child_writer() {
    if let Some(dir) = std::env::var_os("EXECLOG_FOLLOW_KILL_CHILD") {
        writer::child(Path::new(&dir));
    }
}

/// A reader (this process) follows a writer process that is killed with SIGKILL and
/// restarted, `EXECLOG_FOLLOW_KILLS` times (default 12). Afterwards the store is
/// recovered once more: the reader delivered exactly what the recovered store holds,
/// in the same order at the same positions (none it lacks, none missed, none twice),
/// and every acknowledged append is there.
#[test]
fn a_reader_follows_a_writer_killed_again_and_again() {
    let kills: u64 = std::env::var("EXECLOG_FOLLOW_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let dir = tempfile::tempdir().unwrap();
    let spawn = || {
        writer::spawn(
            "follow_kill_child_writer",
            "EXECLOG_FOLLOW_KILL_CHILD",
            dir.path(),
            256 * 1024,
        )
    };
    let mut acks = writer::Acks::new();
    let mut delivered: Vec<Delivered> = Vec::new();
    let mut reader: Option<(LogStore, Subscription)> = None;
    for kill in 0..kills {
        let mut child = spawn();
        let lines = writer::collect_acks(&mut child);
        let run_for = Duration::from_millis(60 + (kill * 37) % 200);
        let started = Instant::now();
        while started.elapsed() < run_for {
            if reader.is_none() && dir.path().join("published.end").exists() {
                let r = LogStore::open_reader(dir.path()).unwrap();
                let sub = r
                    .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
                    .unwrap();
                reader = Some((r, sub));
            }
            if let Some((_, sub)) = reader.as_mut() {
                while let Some(d) = sub.try_next().unwrap() {
                    delivered.push(d);
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        writer::record(&lines.join().unwrap(), &mut acks);
    }
    let store = LogStore::open_with(dir.path(), writer::options()).unwrap();
    let expected: Vec<Delivered> = {
        let mut all = store
            .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
            .unwrap();
        std::iter::from_fn(|| all.try_next().unwrap()).collect()
    };
    let (_reader, mut sub) = reader.expect("the writer published an end");
    while delivered.len() < expected.len() {
        match sub.next_timeout(PATIENCE).unwrap() {
            Some(d) => delivered.push(d),
            None => break,
        }
    }
    assert!(
        sub.next_timeout(Duration::from_millis(100))
            .unwrap()
            .is_none()
    );
    let acked: usize = acks.values().map(Vec::len).sum();
    assert!(acked > 0, "the writer acknowledged nothing");
    assert_eq!(writer::count_missing(&store, &acks), Ok(0));
    let unique: HashSet<u64> = delivered.iter().map(|d| d.position).collect();
    assert_eq!(unique.len(), delivered.len(), "an event delivered twice");
    assert_eq!(delivered.len(), expected.len());
    assert!(
        delivered == expected,
        "the reader delivered other events than the recovered store holds"
    );
    println!(
        "{kills} kills, {acked} acknowledged appends, {} events followed by the reader",
        delivered.len()
    );
}

/// Whether this process runs as root (uid 0), read from `/proc/self/status`.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

/// Unmounts on drop.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A reader opens a store on a read-only mount (a bind mount remounted `ro`), reads
/// and subscribes; the writer cannot even open it. Needs root (to mount); skipped
/// otherwise, saying so.
#[test]
fn a_reader_works_on_a_read_only_mount() {
    if !is_root() {
        eprintln!("skipped: needs root to mount");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (store_dir, ro) = (dir.path().join("store"), dir.path().join("ro"));
    std::fs::create_dir(&ro).unwrap();
    let (e, t) = (ExecutionId::new(), TenantId::from("t"));
    {
        let writer = LogStore::open_with(&store_dir, small_segments()).unwrap();
        for i in 1..=500 {
            writer.append_blocking(&e, &t, step_event(i)).unwrap();
        }
        writer.close().unwrap();
    }
    let mount = |args: &[&str]| {
        std::process::Command::new("mount")
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    };
    let (s, r) = (store_dir.to_str().unwrap(), ro.to_str().unwrap());
    if !mount(&["--bind", s, r]) {
        eprintln!("skipped: bind mount failed");
        return;
    }
    let _mounted = Mounted(ro.clone());
    assert!(mount(&["-o", "remount,bind,ro", r]), "remount read-only");
    assert!(
        std::fs::write(ro.join("probe"), b"x").is_err(),
        "the mount is writable"
    );
    let reader = LogStore::open_reader(&ro).unwrap();
    assert_eq!(
        reader.load_events_blocking(&e).unwrap().len(),
        500,
        "{:?}",
        reader.recovery_report()
    );
    let mut sub = reader
        .subscribe(
            SubscriptionFilter::Execution(e.clone()),
            StartFrom::Beginning,
        )
        .unwrap();
    let got: Vec<u64> = std::iter::from_fn(|| sub.try_next().unwrap())
        .map(|d| d.event.sequence)
        .collect();
    assert_eq!(got, (1..=500).collect::<Vec<_>>());
    reader.close().unwrap();
    assert!(
        LogStore::open(&ro).is_err(),
        "a writer opened a read-only mount"
    );
}
