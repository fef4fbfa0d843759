//! Adversarial review of the running checkpoint's freeze (`src/frozen_index.rs`,
//! `src/checkpoint_encode.rs`, `checkpointer::encode_in_slices`): the checkpoint
//! thread freezes the index's durable side, then encodes it one slice of executions
//! per hold of the store lock while appends, group commits, deletions, forks and
//! imports go on between slices. The claim: the file describes exactly the log at the
//! freeze (the group its digests end at), whatever was published meanwhile.
//!
//! Every test here runs the encode in slices of one execution (hidden hook
//! `Options::checkpoint_slice(1)`) and a checkpoint after every group
//! (`index_checkpoint_interval_bytes(Some(0))`), so that nearly every group published
//! lands between two slices of some encode.
//!
//! No finding: all of these held, and stay as regression tests of the claim.
//! - crash images taken while every kind of index change runs (new tenants all the
//!   time, forks of forks, deletion of fork sources, tenant deletions, prunes, imports
//!   with old timestamps, erasure) load their checkpoint on an ordinary open and on an
//!   open that verifies it after returning (never refuted), and serve everything
//!   served before the copy;
//! - the same across sessions whose index came from a checkpoint (`Index::restore_*`,
//!   also trusted-then-verified) and from a full rebuild, with tenants created between
//!   slices (`Index::tenants_of_prefix`);
//! - at rest, the last running checkpoint (sliced, over a freeze, of the live index
//!   with erasure's relocations) is byte-identical to the one close writes in one go
//!   after a full rebuild of the same log;
//! - close during a long sliced encode (20,000 executions, one per slice): no deadlock
//!   with the thaw, and close's checkpoint is the last written;
//! - a store poisoned by a failing fdatasync while encodes run: close returns, and the
//!   reopen (same boot, and after a power cut) accepts the checkpoint on disk and
//!   serves every acknowledged append.
//!
//! `checkpoint_encode::tests::forks_deletions_and_new_tenants_between_slices_leave_the_freeze`
//! drives the same changes between slices deterministically, for slices of 1 to 13.
//!
//! Seen on the way, not from this change: right after an erasure pass the checkpoint
//! on disk is stale (`checksum of the records differs`) until the checkpoint the pass
//! asks for is written; the images here are copied only after a checkpoint written
//! with erasure held off (`fresh_checkpoint`).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::crash_image::{self, kilobyte_event};
use common::small_segments;
use execlog::*;

type Served = HashMap<ExecutionId, Vec<StoredEvent>>;

/// Warnings the engine logs (a running checkpoint that failed says why only there).
static WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Collect;

impl log::Log for Collect {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            WARNINGS
                .lock()
                .unwrap()
                .push(format!("{}: {}", r.level(), r.args()));
        }
    }
    fn flush(&self) {}
}

fn collect_warnings() {
    let _ = log::set_logger(&Collect);
    log::set_max_level(log::LevelFilter::Warn);
}

fn warnings() -> Vec<String> {
    WARNINGS.lock().unwrap().clone()
}

fn options() -> Options {
    small_segments()
        .index_checkpoint_interval_bytes(Some(0))
        .checkpoint_slice(1)
}

/// The same store opened so that its checkpoint is trusted first and verified after.
fn deferred_options() -> Options {
    options()
        .verify_checkpoint_after_open(true)
        .checkpoint_verification_delay(Duration::ZERO)
}

fn wait_for_verdict(s: &LogStore) {
    let started = Instant::now();
    while s.stats().checkpoint_unverified {
        assert!(started.elapsed() < Duration::from_secs(60), "no verdict");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until `store` wrote a running checkpoint after this call (so that the file on
/// disk postdates any erasure pass the caller holds off).
fn fresh_checkpoint(store: &LogStore) {
    let before = store.stats().index_checkpoints;
    let started = Instant::now();
    while store.stats().index_checkpoints < before + 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no running checkpoint written for 30 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Checks a crash image: its checkpoint is accepted by an ordinary open and by one
/// that verifies it after open, and both serve everything `served` (acknowledged
/// before the copy) unless the live store deleted it since (`finally` lacks it).
fn check_image(image: &Path, served: &Served, finally: &Served, what: &str) -> u64 {
    let second = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(image).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), second.path().join(entry.file_name())).unwrap();
    }
    let reopened = LogStore::open_with(image, options()).unwrap();
    let report = reopened.recovery_report().clone();
    assert_eq!(report.checkpoint_ignored, None, "{what}: {report:?}");
    let now = crash_image::everything(&reopened);
    compare(served, &now, finally, what);
    reopened.close().unwrap();

    let deferred = LogStore::open_with(second.path(), deferred_options()).unwrap();
    let report2 = deferred.recovery_report().clone();
    assert_eq!(
        report2.checkpoint_ignored, None,
        "{what} (deferred): {report2:?}"
    );
    wait_for_verdict(&deferred);
    assert_eq!(
        deferred.stats().checkpoint_refuted,
        None,
        "{what}: the verification after open refuted a running checkpoint ({report2:?})"
    );
    let now2 = crash_image::everything(&deferred);
    assert_eq!(now, now2, "{what}: the deferred open serves something else");
    deferred.close().unwrap();
    report.checkpoint_bytes
}

fn compare(served: &Served, now: &Served, finally: &Served, what: &str) {
    for (id, events) in served {
        let Some(survived) = now.get(id) else {
            assert!(
                !finally.contains_key(id),
                "{what}: {id} lost after the crash, yet still live"
            );
            continue;
        };
        assert!(
            survived.len() >= events.len() && survived[..events.len()] == events[..],
            "{what}: {id}: served {} events, {} after the crash",
            events.len(),
            survived.len()
        );
    }
}

fn stored(id: &ExecutionId, tenant: &TenantId, first: u64, n: u64, year: i32) -> Vec<StoredEvent> {
    use chrono::{TimeZone, Utc};
    (first..first + n)
        .map(|s| StoredEvent {
            execution_id: id.clone(),
            tenant_id: tenant.clone(),
            sequence: s,
            timestamp: Utc
                .with_ymd_and_hms(year, 1, 1, 0, 0, (s % 60) as u32)
                .unwrap(),
            event: kilobyte_event(s),
        })
        .collect()
}

/// Every kind of index change at once, on `store`, until `stop`; erasure only while
/// `no_erasure` is free.
fn workload(
    store: &Arc<LogStore>,
    stop: &Arc<AtomicBool>,
    no_erasure: &Arc<Mutex<()>>,
    salt: &str,
) -> Vec<std::thread::JoinHandle<()>> {
    let mut threads = Vec::new();
    // Appenders: a new tenant every few executions, so tenants are created between
    // slices all the time; batches and keyed appends.
    for w in 0..2u64 {
        let (store, stop, salt) = (Arc::clone(store), Arc::clone(stop), salt.to_string());
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let tenant = TenantId::from(format!("{salt}t{w}-{}", n / 12));
                let id = ExecutionId::from(format!("{salt}w{w}-{}", n / 3));
                let r = match n % 5 {
                    0 => store
                        .append_batch_blocking(
                            &id,
                            &tenant,
                            (0..4).map(|k| kilobyte_event(n * 10 + k)).collect(),
                        )
                        .map(|_| ()),
                    1 => store
                        .append_with_blocking(
                            &id,
                            &tenant,
                            vec![kilobyte_event(n)],
                            AppendOptions {
                                idempotency_key: Some(format!("{salt}k{w}-{n}")),
                                ..AppendOptions::default()
                            },
                        )
                        .map(|_| ()),
                    _ => store
                        .append_blocking(&id, &tenant, kilobyte_event(n))
                        .map(|_| ()),
                };
                // The tenant or the execution may have been deleted by another thread.
                match r {
                    Ok(_) | Err(Error::Deleted) => {}
                    Err(e) => panic!("append {id}: {e:?}"),
                }
                n += 1;
            }
        }));
    }
    // Forks of forks; deleting sources (whose events the forks still share).
    {
        let (store, stop, salt) = (Arc::clone(store), Arc::clone(stop), salt.to_string());
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            let mut last_fork: Option<ExecutionId> = None;
            while !stop.load(Ordering::Relaxed) {
                let source = match (&last_fork, n % 3) {
                    (Some(f), 0 | 1) => f.clone(),
                    _ => ExecutionId::from(format!("{salt}w0-{}", n % 40)),
                };
                let fork = ExecutionId::from(format!("{salt}fork{n}"));
                if store.fork_execution_blocking(&source, 1, &fork).is_ok() {
                    let tenant = store
                        .execution_tenant_blocking(&fork)
                        .ok()
                        .flatten()
                        .unwrap_or_else(|| TenantId::from("x"));
                    let _ = store.append_blocking(&fork, &tenant, kilobyte_event(n));
                    if n % 4 == 1 {
                        let _ = store.delete_execution_blocking(&source);
                    }
                    last_fork = Some(fork);
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        }));
    }
    // Tenant deletions, prunes and imports.
    {
        let (store, stop, salt) = (Arc::clone(store), Arc::clone(stop), salt.to_string());
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match n % 4 {
                    0 => {
                        let tenant = TenantId::from(format!("{salt}t1-{}", n / 8));
                        store.delete_tenant_blocking(&tenant).unwrap();
                    }
                    1 => {
                        let tenant = TenantId::from(format!("{salt}imp{}", n / 3));
                        let id = ExecutionId::from(format!("{salt}imported{n}"));
                        store
                            .import_blocking(stored(&id, &tenant, 1, 6, 2001))
                            .unwrap();
                    }
                    2 if n % 24 == 2 => {
                        store.prune_blocking(Duration::from_millis(400)).unwrap();
                    }
                    _ => {}
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(3));
            }
        }));
    }
    // Erasure.
    {
        let (store, stop, no_erasure) =
            (Arc::clone(store), Arc::clone(stop), Arc::clone(no_erasure));
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                {
                    let _held = no_erasure.lock().unwrap();
                    store.compact_now().unwrap();
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }));
    }
    threads
}

/// Crash images of `dir` while `workload` runs on `store`: `(image, served)`.
fn images_while_running(
    dir: &Path,
    store: &Arc<LogStore>,
    count: usize,
    salt: &str,
) -> Vec<(tempfile::TempDir, Served)> {
    let stop = Arc::new(AtomicBool::new(false));
    let no_erasure = Arc::new(Mutex::new(()));
    let threads = workload(store, &stop, &no_erasure, salt);
    let mut images = Vec::new();
    let started = Instant::now();
    while images.len() < count && started.elapsed() < Duration::from_secs(90) {
        std::thread::sleep(Duration::from_millis(120));
        let _held = no_erasure.lock().unwrap();
        fresh_checkpoint(store);
        let served = crash_image::everything(store);
        images.push((crash_image::copy(dir), served));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    images
}

#[test]
fn crash_images_under_every_index_change_load_and_verify_their_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open_with(dir.path(), options()).unwrap());
    let images = images_while_running(dir.path(), &store, 10, "");
    let stats = store.stats();
    eprintln!(
        "{} running checkpoints, {} executions, {} deleted, {} tenants, {} segments",
        stats.index_checkpoints,
        stats.executions,
        stats.deleted_executions,
        stats.tenants,
        stats.segments
    );
    assert!(stats.index_checkpoints >= 20, "{stats:?}");
    let finally = crash_image::everything(&store);
    let mut loaded = 0;
    for (i, (image, served)) in images.iter().enumerate() {
        let covered = check_image(image.path(), served, &finally, &format!("image {i}"));
        loaded += usize::from(covered > 0);
    }
    assert!(
        loaded >= images.len() - 1,
        "only {loaded} images had a checkpoint"
    );
    Arc::try_unwrap(store).ok().unwrap().close().unwrap();
}

/// Sessions whose index comes from a checkpoint (`Index::restore_*`) and from a full
/// rebuild (checkpoint removed), each creating tenants between slices: the tenants of
/// the durable prefix (`Index::tenants_of_prefix`) must be found however the index
/// was built.
#[test]
fn sessions_restored_from_a_checkpoint_and_rebuilt_keep_their_tenant_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let mut all_images = Vec::new();
    for session in 0..4 {
        if session == 2 {
            // The next open rebuilds the index from the records alone.
            std::fs::remove_file(dir.path().join("checkpoint.idx")).unwrap();
        }
        // Odd sessions trust the checkpoint at open and verify it after, while the
        // workload (whose writes wait for the verdict) starts.
        let opts = match session % 2 {
            1 => deferred_options(),
            _ => options(),
        };
        let store = Arc::new(LogStore::open_with(dir.path(), opts).unwrap());
        let report = store.recovery_report().clone();
        assert_eq!(
            report.checkpoint_ignored, None,
            "session {session}: {report:?}"
        );
        assert_eq!(
            report.checkpoint_verification_deferred,
            session % 2 == 1,
            "session {session}: {report:?}"
        );
        assert_eq!(
            report.checkpoint_bytes > 0,
            session != 0 && session != 2,
            "session {session}: {report:?}"
        );
        let salt = format!("s{session}");
        let images = images_while_running(dir.path(), &store, 3, &salt);
        assert_eq!(store.stats().checkpoint_refuted, None, "session {session}");
        let finally = crash_image::everything(&store);
        for (i, (image, served)) in images.into_iter().enumerate() {
            check_image(
                image.path(),
                &served,
                &finally,
                &format!("session {session} image {i}"),
            );
            all_images.push(image);
        }
        Arc::try_unwrap(store).ok().unwrap().close().unwrap();
    }
    // And the last clean close's checkpoint serves the same as a full scan.
    let with = LogStore::open_with(dir.path(), options()).unwrap();
    assert_eq!(with.recovery_report().checkpoint_ignored, None);
    let served = crash_image::everything(&with);
    with.close().unwrap();
    std::fs::remove_file(dir.path().join("checkpoint.idx")).unwrap();
    let without = LogStore::open_with(dir.path(), options()).unwrap();
    assert_eq!(crash_image::everything(&without), served);
    without.close().unwrap();
}

/// Close while the checkpoint thread encodes a large index one execution per lock
/// hold, with appends going on: close must neither deadlock with the thaw nor let the
/// running checkpoint land after its own.
#[test]
fn close_during_a_long_sliced_encode_writes_the_last_checkpoint() {
    for round in 0..3u64 {
        let dir = tempfile::tempdir().unwrap();
        let opts = small_segments()
            .segment_size_bytes(8 << 20)
            .index_checkpoint_interval_bytes(None);
        let store = LogStore::open_with(dir.path(), opts).unwrap();
        let tenant = TenantId::from("t");
        // 20,000 small executions, without running checkpoints.
        for n in 0..20_000u64 {
            store
                .append_blocking(
                    &ExecutionId::from(format!("e{n}")),
                    &TenantId::from(format!("t{}", n % 50)),
                    ExecutionEventData::StepCompleted {
                        step_id: StepId::from("s"),
                        output: None,
                        duration_ms: n,
                    },
                )
                .unwrap();
        }
        store.close().unwrap();
        let store = Arc::new(LogStore::open_with(dir.path(), options()).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let writer = {
            let (store, stop, acked) = (Arc::clone(&store), Arc::clone(&stop), Arc::clone(&acked));
            let tenant = tenant.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = ExecutionId::from(format!("late{}", n % 7));
                    match store.append_blocking(&id, &tenant, kilobyte_event(n)) {
                        Ok(_) => {
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(Error::Closed) => return,
                        Err(e) => panic!("{e:?}"),
                    }
                    let _ = store.delete_execution_blocking(&ExecutionId::from(format!(
                        "e{}",
                        n * 13 % 20_000
                    )));
                    n += 1;
                }
            })
        };
        // Let encodes start (every group asks for one).
        let started = Instant::now();
        while store.stats().index_checkpoints < 1 + round {
            assert!(started.elapsed() < Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(3 * round));
        let (tx, rx) = std::sync::mpsc::channel();
        let closer = {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                tx.send(store.close()).unwrap();
            })
        };
        let closed = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("close did not return in 60 s: deadlock with the sliced encode?");
        closed.unwrap();
        closer.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        let data_bytes = store.stats().data_bytes;
        drop(store);
        let reopened = LogStore::open_with(dir.path(), options()).unwrap();
        let report = reopened.recovery_report().clone();
        assert_eq!(report.checkpoint_ignored, None, "round {round}: {report:?}");
        // Close's checkpoint covers the seal too (`data_bytes` leaves it out).
        assert!(
            report.checkpoint_bytes >= data_bytes,
            "round {round}: close's checkpoint is not the last written ({data_bytes} bytes \
             of records): {report:?}"
        );
        let late: u64 = (0..7)
            .map(|k| {
                reopened
                    .get_latest_sequence_blocking(&ExecutionId::from(format!("late{k}")))
                    .unwrap()
                    .unwrap_or(0)
            })
            .sum();
        assert!(late >= acked.load(Ordering::SeqCst), "round {round}");
        reopened.close().unwrap();
    }
}

/// A failing fdatasync poisons the store while the checkpoint thread encodes in
/// slices: the encode must give up (no freeze left behind, no deadlock with close),
/// and the store must reopen, in the same boot and after a power cut, with the
/// checkpoint on disk accepted and every acknowledged append served.
#[test]
fn a_store_poisoned_mid_encode_closes_and_reopens_with_its_checkpoint() {
    use execlog::fault::{Fault, Op, SimIo};
    for (round, k) in [3u64, 10, 25, 60, 120].into_iter().enumerate() {
        let io = SimIo::new();
        let path = Path::new("/store");
        let opts = |io: &SimIo| options().io(Arc::new(io.clone()));
        {
            // A few thousand executions first: each encode then takes thousands of
            // lock holds.
            let store =
                LogStore::open_with(path, opts(&io).index_checkpoint_interval_bytes(None)).unwrap();
            for n in 0..3000u64 {
                store
                    .append_blocking(
                        &ExecutionId::from(format!("e{n}")),
                        &TenantId::from(format!("t{}", n % 30)),
                        kilobyte_event(n),
                    )
                    .unwrap();
            }
            store.close().unwrap();
        }
        let store = Arc::new(LogStore::open_with(path, opts(&io)).unwrap());
        let acked: Arc<Mutex<Vec<(ExecutionId, u64)>>> = Arc::default();
        io.fail_at(k, Op::Sync, Fault::Persistent);
        let writers: Vec<_> = (0..3u64)
            .map(|w| {
                let (store, acked) = (Arc::clone(&store), Arc::clone(&acked));
                std::thread::spawn(move || {
                    for n in 0..400u64 {
                        let id = ExecutionId::from(format!("e{}", (w * 997 + n * 31) % 3000));
                        let tenant = match store.execution_tenant_blocking(&id) {
                            Ok(Some(tenant)) => tenant,
                            // Deleted by another writer.
                            Ok(None) => continue,
                            Err(_) => return,
                        };
                        match store.append_blocking(&id, &tenant, kilobyte_event(n)) {
                            Ok(seq) => acked.lock().unwrap().push((id, seq)),
                            Err(_) => return,
                        }
                        if n % 9 == 0 {
                            let _ = store.delete_execution_blocking(&ExecutionId::from(format!(
                                "e{}",
                                (w * 1000 + n) % 3000
                            )));
                        }
                    }
                })
            })
            .collect();
        for t in writers {
            t.join().unwrap();
        }
        let written = store.stats().index_checkpoints;
        let poisoned = store.append_blocking(
            &ExecutionId::from("e0"),
            &TenantId::from("t0"),
            kilobyte_event(0),
        );
        assert!(
            matches!(poisoned, Err(Error::Poisoned { .. })),
            "round {round}: {poisoned:?}"
        );
        eprintln!("round {round}: {written} running checkpoints before the poison");
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let store = Arc::clone(&store);
            std::thread::spawn(move || tx.send(store.close().is_ok()).unwrap());
        }
        rx.recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("round {round}: close of a poisoned store hangs"));
        drop(store);
        io.clear_faults();
        for (when, io) in [
            ("same boot", io.snapshot()),
            ("power cut", io.power_loss(round as u64)),
        ] {
            let reopened = LogStore::open_with(path, opts(&io)).unwrap();
            let report = reopened.recovery_report().clone();
            assert_eq!(
                report.checkpoint_ignored, None,
                "round {round} ({when}): {report:?}"
            );
            for (id, seq) in acked.lock().unwrap().iter() {
                if let Some(latest) = reopened.get_latest_sequence_blocking(id).unwrap() {
                    assert!(latest >= *seq, "round {round} ({when}): {id} lost {seq}");
                } else {
                    // Deleted by one of the writers: its tombstone was acknowledged.
                }
            }
            reopened.close().unwrap();
        }
    }
}

/// Once writes stop, the last running checkpoint (encoded in slices over a freeze, of
/// an index built by appends, forks, deletions, imports and erasure's relocations) has
/// the bytes close writes in one go for the same log after a full rebuild: the sliced
/// and one-shot encodes agree, and so do the live index and the one rebuilt from the
/// records.
#[test]
fn a_running_checkpoint_at_rest_equals_close_after_a_full_rebuild() {
    collect_warnings();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open_with(dir.path(), options()).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let no_erasure = Arc::new(Mutex::new(()));
    let threads = workload(&store, &stop, &no_erasure, "");
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    // Erased segments and deletions since the last pass: one more pass, then a group
    // (a last append) so that a checkpoint is asked for after everything.
    store.compact_now().unwrap();
    // One group of more than an interval (4 KiB at least): the commit thread asks for
    // a checkpoint after it, and nothing follows.
    store
        .append_batch_blocking(
            &ExecutionId::from("last"),
            &TenantId::from("last"),
            (0..6).map(kilobyte_event).collect(),
        )
        .unwrap();
    let data_bytes = store.stats().data_bytes;
    let started = Instant::now();
    let running = loop {
        let image = crash_image::copy(dir.path());
        let reopened = LogStore::open_with(image.path(), options()).unwrap();
        let report = reopened.recovery_report().clone();
        drop(reopened);
        if report.checkpoint_ignored.is_none() && report.checkpoint_bytes == data_bytes {
            break image;
        }
        eprintln!(
            "checkpoints written {}, covered {} of {data_bytes}, {:?}",
            store.stats().index_checkpoints,
            report.checkpoint_bytes,
            report.checkpoint_ignored
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no running checkpoint of the whole log: {report:?}; warnings: {:#?}",
            warnings()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // `drop` above closed the reopened image: take the file from a fresh copy.
    let image = crash_image::copy(dir.path());
    let sliced = std::fs::read(image.path().join("checkpoint.idx")).unwrap();
    drop(running);
    std::fs::remove_file(image.path().join("checkpoint.idx")).unwrap();
    let rebuilt = LogStore::open_with(image.path(), options()).unwrap();
    assert_eq!(rebuilt.recovery_report().checkpoint_bytes, 0);
    rebuilt.close().unwrap();
    let one_go = std::fs::read(image.path().join("checkpoint.idx")).unwrap();
    assert_eq!(
        sliced.len(),
        one_go.len(),
        "the running checkpoint and close's differ in length"
    );
    let first = sliced.iter().zip(&one_go).position(|(a, b)| a != b);
    assert_eq!(
        first, None,
        "the running checkpoint and close's differ at byte {first:?}"
    );
    Arc::try_unwrap(store).ok().unwrap().close().unwrap();
}
