//! Deletion and retention on the embedded engine only (the semantics both backends
//! share are in tests/conformance/lifecycle.rs): tombstones through a checkpoint and
//! through a full scan, older format versions, forged tombstones, readers in other
//! processes, the background retention thread, and simulated power losses.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::step_event;
use execlog::fault::{Rng, SimIo};
use execlog::*;

fn ids(n: usize) -> Vec<ExecutionId> {
    (0..n)
        .map(|i| ExecutionId::from(format!("exec-{i}")))
        .collect()
}

/// A store with 6 executions of two tenants, 3 events each; exec-1 and tenant "b"
/// (exec-3 and exec-5) deleted.
fn populated(dir: &Path) -> LogStore {
    let store = LogStore::open(dir).unwrap();
    for (i, e) in ids(6).iter().enumerate() {
        let t = TenantId::from(if i % 2 == 0 { "a" } else { "b" });
        let key = AppendOptions::key(format!("key-{i}"));
        store
            .append_with_blocking(e, &t, vec![step_event(1), step_event(2)], key)
            .unwrap();
        store.append_blocking(e, &t, step_event(3)).unwrap();
    }
    assert!(store.delete_execution_blocking(&ids(6)[1]).unwrap());
    assert_eq!(
        store.delete_tenant_blocking(&TenantId::from("b")).unwrap(),
        2
    );
    store
}

fn assert_deletions(store: &LogStore) {
    let all = ids(6);
    for (i, e) in all.iter().enumerate() {
        let t = TenantId::from(if i % 2 == 0 { "a" } else { "b" });
        if i % 2 == 1 {
            assert!(store.load_events_blocking(e).unwrap().is_empty(), "{e}");
            let err = store.append_blocking(e, &t, step_event(9)).unwrap_err();
            assert!(matches!(err, Error::Deleted), "{err:?}");
            let retry = AppendOptions::key(format!("key-{i}"));
            let err = store
                .append_with_blocking(e, &t, vec![step_event(1), step_event(2)], retry)
                .unwrap_err();
            assert!(matches!(err, Error::Deleted), "{err:?}");
        } else {
            assert_eq!(store.load_events_blocking(e).unwrap().len(), 3, "{e}");
        }
    }
    let stats = store.stats();
    assert_eq!(
        (
            stats.executions,
            stats.deleted_executions,
            stats.events,
            stats.tenants
        ),
        (3, 3, 9, 1)
    );
    assert_eq!(
        stats.idempotency_keys, 3,
        "the deleted executions' keys are forgotten"
    );
}

#[test]
fn tombstones_apply_through_a_checkpoint_and_through_a_full_scan() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path());
    assert_deletions(&store);
    store.close().unwrap();
    drop(store);

    let store = LogStore::open(dir.path()).unwrap();
    let report = store.recovery_report().clone();
    assert!(report.checkpoint_ignored.is_none(), "{report:?}");
    assert!(report.checkpoint_bytes > 0, "{report:?}");
    assert_deletions(&store);
    drop(store);

    fs::remove_file(dir.path().join("checkpoint.idx")).unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.recovery_report().checkpoint_bytes, 0);
    assert_deletions(&store);
    // A crash (no close, no checkpoint) after more deletions.
    assert!(store.delete_execution_blocking(&ids(6)[0]).unwrap());
    let image = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        // A running checkpoint's tmp file is never read, and may vanish.
        if name != "LOCK" && !name.to_string_lossy().ends_with(".tmp") {
            fs::copy(entry.path(), image.path().join(&name)).unwrap();
        }
    }
    let crashed = LogStore::open(image.path()).unwrap();
    assert!(crashed.load_events_blocking(&ids(6)[0]).unwrap().is_empty());
    assert_eq!(crashed.stats().deleted_executions, 4);
}

#[test]
fn a_format_v2_store_takes_tombstones_in_a_new_segment() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format_v2");
    let work = tempfile::tempdir().unwrap();
    let segment = "0000000001.seg";
    fs::copy(fixture.join(segment), work.path().join(segment)).unwrap();
    let before = fs::read(work.path().join(segment)).unwrap();
    let store = LogStore::open(work.path()).unwrap();
    let listed = store.all_executions_blocking().unwrap();
    let (victim, _) = listed.first().cloned().unwrap();
    assert!(store.delete_execution_blocking(&victim).unwrap());
    store.close().unwrap();
    drop(store);
    let after = fs::read(work.path().join(segment)).unwrap();
    assert_eq!(
        after[..before.len()],
        before[..],
        "the v2 segment was written to"
    );
    let second = fs::read(work.path().join("0000000002.seg")).unwrap();
    assert_eq!(u32::from_le_bytes(second[8..12].try_into().unwrap()), 3);
    let store = LogStore::open(work.path()).unwrap();
    assert!(store.load_events_blocking(&victim).unwrap().is_empty());
    assert_eq!(store.stats().deleted_executions, 1);
}

/// Byte offset of the first record of `kind` in a segment image.
fn find_record(bytes: &[u8], kind: u16) -> usize {
    let mut at = 32;
    while at + 56 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        assert!(len > 0, "no record of kind {kind}");
        if u16::from_le_bytes(bytes[at + 48..at + 50].try_into().unwrap()) == kind {
            return at;
        }
        at += (56 + len).next_multiple_of(8);
    }
    panic!("no record of kind {kind}");
}

/// A change to one record's bytes.
type Edit = Box<dyn Fn(&mut [u8])>;

/// Rewrites the tombstone at `at` with `edit`, then re-stamps its CRC: a forgery that
/// passes every checksum.
fn forge(bytes: &mut [u8], at: usize, edit: impl Fn(&mut [u8])) {
    let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
    edit(&mut bytes[at..at + 56 + len]);
    let crc = crc32fast::hash(&bytes[at + 4..at + 56 + len]);
    bytes[at..at + 4].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn forged_tombstones_are_corruption_not_deletions() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let (t, all) = (TenantId::from("t"), ids(3));
    for e in &all {
        store.append_blocking(e, &t, step_event(1)).unwrap();
    }
    assert!(store.delete_execution_blocking(&all[1]).unwrap());
    // A last group after the tombstone proves it synced: damage to it is corruption,
    // not a torn tail that recovery may cut.
    store.append_blocking(&all[2], &t, step_event(2)).unwrap();
    drop(store);
    fs::remove_file(dir.path().join("checkpoint.idx")).ok();
    let segment = dir.path().join("0000000001.seg");
    let good = fs::read(&segment).unwrap();
    let at = find_record(&good, 3);
    let forgeries: Vec<(&str, Edit)> = vec![
        ("another execution's number", Box::new(|r| r[8] = 0)),
        ("an unknown execution", Box::new(|r| r[8] = 77)),
        ("an unknown target", Box::new(|r| r[56] = 9)),
        ("a name that differs", Box::new(|r| r[57] ^= 1)),
        ("a tenant tombstone out of order", Box::new(|r| r[56] = 2)),
        ("a sequence", Box::new(|r| r[16] = 1)),
    ];
    for (what, edit) in forgeries {
        let mut bytes = good.clone();
        forge(&mut bytes, at, edit);
        fs::write(&segment, &bytes).unwrap();
        match LogStore::open(dir.path()) {
            Err(Error::Corrupt { .. }) => {}
            Err(other) => panic!("{what}: {other:?}"),
            Ok(store) => panic!(
                "{what}: opened, deleted {:?}",
                store.stats().deleted_executions
            ),
        }
    }
    fs::write(&segment, &good).unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.stats().deleted_executions, 1);
}

#[test]
fn a_reader_in_another_process_sees_deletions() {
    let dir = tempfile::tempdir().unwrap();
    let writer = LogStore::open(dir.path()).unwrap();
    let (t, all) = (TenantId::from("t"), ids(2));
    for e in &all {
        writer.append_blocking(e, &t, step_event(1)).unwrap();
    }
    let reader = LogStore::open_reader(dir.path()).unwrap();
    let mut sub = reader
        .subscribe(SubscriptionFilter::All, StartFrom::End)
        .unwrap();
    assert_eq!(reader.load_events_blocking(&all[0]).unwrap().len(), 1);
    assert!(writer.delete_execution_blocking(&all[0]).unwrap());
    writer.append_blocking(&all[1], &t, step_event(2)).unwrap();
    // The append after the deletion arrives: by then the deletion was applied too.
    let d = sub.next_timeout(Duration::from_secs(30)).unwrap().unwrap();
    assert_eq!(
        (d.event.execution_id.clone(), d.event.sequence),
        (all[1].clone(), 2)
    );
    assert!(reader.load_events_blocking(&all[0]).unwrap().is_empty());
    assert_eq!(reader.stats().deleted_executions, 1);
    let err = reader.delete_execution_blocking(&all[1]).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let read_only = LogStore::open_read_only(dir.path());
    if let Ok(read_only) = read_only {
        let err = read_only.delete_tenant_blocking(&t).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    }
}

/// Waits until `done` holds, for at most `limit`.
fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

#[test]
fn background_retention_prunes_by_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let (short, long, forever) = (
        TenantId::from("short"),
        TenantId::from("long"),
        TenantId::from("forever"),
    );
    let all = ids(3);
    {
        let store = LogStore::open(dir.path()).unwrap();
        for (e, t) in all.iter().zip([&short, &long, &forever]) {
            store.append_blocking(e, t, step_event(1)).unwrap();
        }
    }
    let options = Options::default()
        .tenant_retention(short.clone(), Duration::from_secs(1))
        .tenant_retention(long.clone(), Duration::from_secs(3600));
    let store = LogStore::open_with(dir.path(), options).unwrap();
    let gone = eventually(Duration::from_secs(20), || {
        store.load_events_blocking(&all[0]).unwrap().is_empty()
    });
    assert!(
        gone,
        "the background pruner did not delete the idle execution"
    );
    assert_eq!(store.load_events_blocking(&all[1]).unwrap().len(), 1);
    assert_eq!(store.load_events_blocking(&all[2]).unwrap().len(), 1);
    let started = Instant::now();
    store.close().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "close waited for the pruner's sleep"
    );
}

fn sim_options(io: &SimIo) -> Options {
    Options::default()
        .segment_size_bytes(64 * 1024)
        .index_stride(2)
        .io(Arc::new(io.clone()))
}

/// What one seed's workload was told.
#[derive(Default)]
struct Told {
    /// Acknowledged events per execution (sequences).
    acked: HashMap<ExecutionId, u64>,
    /// Executions whose deletion was acknowledged.
    deleted: HashSet<ExecutionId>,
    /// Executions a deletion was attempted on (acknowledged or not).
    attempted: HashSet<ExecutionId>,
}

fn run_seed(seed: u64) -> (usize, u64) {
    let dir = Path::new("/store");
    let sim = SimIo::new();
    let mut rng = Rng::new(seed);
    sim.cut_power_at(1 + rng.below(200));
    sim.seed_writeback_errors(seed);
    let all = ids(8);
    let tenant_of = |e: &ExecutionId| {
        let n: usize = e.as_str()[5..].parse().unwrap();
        TenantId::from(if n < 6 { "a" } else { "b" })
    };
    let mut told = Told::default();
    let mut store = LogStore::open_with(dir, sim_options(&sim)).ok();
    for op in 0..60 {
        let Some(s) = &store else { break };
        let e = &all[rng.below(all.len() as u64) as usize];
        let t = tenant_of(e);
        let outcome = match rng.below(12) {
            0 => {
                drop(store.take());
                store = LogStore::open_with(dir, sim_options(&sim)).ok();
                continue;
            }
            1 | 2 => {
                told.attempted.insert(e.clone());
                s.delete_execution_blocking(e).map(|deleted| {
                    if deleted || told.deleted.contains(e) {
                        told.deleted.insert(e.clone());
                    }
                })
            }
            3 => {
                let of_b: Vec<ExecutionId> = all[6..].to_vec();
                told.attempted.extend(of_b.iter().cloned());
                s.delete_tenant_blocking(&TenantId::from("b")).map(|_| {
                    // Every execution of "b" that existed is deleted now; ones that
                    // never got an event do not exist, and appends create them anew.
                    for x in of_b {
                        if told.acked.contains_key(&x) {
                            told.deleted.insert(x);
                        }
                    }
                })
            }
            _ => s
                .append_blocking(e, &t, step_event(op))
                .map(|sequence| {
                    told.acked.insert(e.clone(), sequence);
                })
                .or_else(|err| match err {
                    Error::Deleted => {
                        assert!(told.attempted.contains(e), "seed {seed}: {e} never deleted");
                        Ok(())
                    }
                    other => Err(other),
                }),
        };
        match outcome {
            Ok(()) => {}
            Err(Error::Poisoned { .. } | Error::Io { .. }) => {
                drop(store.take());
                store = LogStore::open_with(dir, sim_options(&sim)).ok();
            }
            Err(other) => panic!("seed {seed} op {op}: {other:?}"),
        }
    }
    let after = sim.power_loss(rng.next_u64());
    drop(store);
    let store = LogStore::open_with(dir, sim_options(&after))
        .unwrap_or_else(|e| panic!("seed {seed}: reopen after power loss failed: {e}"));
    for e in &all {
        let events = store.load_events_blocking(e).unwrap();
        let appended = store.append_blocking(e, &tenant_of(e), step_event(999));
        if told.deleted.contains(e) {
            assert!(events.is_empty(), "seed {seed}: deleted {e} came back");
            assert!(matches!(appended, Err(Error::Deleted)), "seed {seed}: {e}");
        } else if matches!(appended, Err(Error::Deleted)) {
            // A deletion that was never acknowledged may have become durable.
            assert!(
                told.attempted.contains(e),
                "seed {seed}: {e} deleted unasked"
            );
            assert!(events.is_empty(), "seed {seed}");
        } else {
            let acked = told.acked.get(e).copied().unwrap_or(0);
            assert!(
                events.len() as u64 >= acked,
                "seed {seed}: {e} lost acknowledged events: {} of {acked}",
                events.len()
            );
            appended.unwrap();
        }
    }
    (told.deleted.len(), told.acked.values().sum())
}

#[test]
fn power_loss_never_loses_an_acknowledged_deletion_nor_a_live_event() {
    if let Ok(seed) = std::env::var("EXECLOG_POWER_SEED") {
        let _ = run_seed(seed.parse().unwrap());
        return;
    }
    let seeds: u64 = std::env::var("EXECLOG_LIFECYCLE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let (mut deletions, mut events) = (0, 0);
    for seed in 0..seeds {
        match std::panic::catch_unwind(|| run_seed(seed)) {
            Ok((d, e)) => (deletions, events) = (deletions + d, events + e),
            Err(_) => panic!(
                "replay with EXECLOG_POWER_SEED={seed} cargo test --test lifecycle_log power_loss"
            ),
        }
    }
    println!(
        "{seeds} simulated power losses: {deletions} acknowledged deletions stayed deleted, \
         {events} acknowledged events of live executions kept"
    );
    assert!(
        deletions as u64 > seeds / 2,
        "too few deletions were acknowledged to test anything"
    );
}

/// A store with `source` of `n` events and `fork` of it at `at`; the index's growth
/// from the fork.
fn fork_cost(n: u64, at: u64) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let (source, fork, t) = (
        ExecutionId::from("source"),
        ExecutionId::from("fork"),
        TenantId::from("t"),
    );
    let events: Vec<ExecutionEventData> = (0..n).map(step_event).collect();
    store.append_batch_blocking(&source, &t, events).unwrap();
    let before = store.stats().index_bytes;
    store.fork_execution_blocking(&source, at, &fork).unwrap();
    assert_eq!(store.load_events_blocking(&fork).unwrap().len() as u64, at);
    store.stats().index_bytes - before
}

#[test]
fn a_fork_costs_the_same_whatever_it_shares() {
    let small = fork_cost(5_000, 10);
    let large = fork_cost(5_000, 5_000);
    assert_eq!(small, large, "index bytes of a fork at 10 vs at 5,000");
    assert!(small < 512, "a fork costs {small} index bytes");
}

#[test]
fn forged_fork_records_are_refused_and_never_read_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let (t, all) = (TenantId::from("t"), ids(3));
    for e in &all[..2] {
        for i in 0..3 {
            store.append_blocking(e, &t, step_event(i)).unwrap();
        }
    }
    store.fork_execution_blocking(&all[0], 2, &all[2]).unwrap();
    store.append_blocking(&all[2], &t, step_event(9)).unwrap();
    // A later group proves the fork record synced.
    store.append_blocking(&all[1], &t, step_event(10)).unwrap();
    let want = store.load_events_blocking(&all[2]).unwrap();
    drop(store);
    fs::remove_file(dir.path().join("checkpoint.idx")).ok();
    let segment = dir.path().join("0000000001.seg");
    let good = fs::read(&segment).unwrap();
    let at = find_record(&good, 4);
    let at_open: Vec<(&str, Edit)> = vec![
        ("an unknown source", Box::new(|r| r[56] = 9)),
        ("out of order", Box::new(|r| r[8] = 1)),
        (
            "an id in use",
            Box::new(|r| r[64..].copy_from_slice(b"exec-1")),
        ),
        ("more events than the source had", Box::new(|r| r[16] = 4)),
        ("no shared events", Box::new(|r| r[16] = 0)),
    ];
    for (what, edit) in at_open {
        let mut bytes = good.clone();
        forge(&mut bytes, at, edit);
        fs::write(&segment, &bytes).unwrap();
        match LogStore::open(dir.path()) {
            Err(Error::Corrupt { .. }) => {}
            Err(other) => panic!("{what}: {other:?}"),
            Ok(_) => panic!("{what}: opened"),
        }
    }
    // The other execution's record of sequence 2 as the shared one (in the fork record
    // and its own event's link): the store opens (a scan does not read what `prev`
    // points at), but a read of the fork refuses it.
    let other = find_record_of(&good, 1, 2);
    let mut bytes = good.clone();
    let own = find_record_of(&good, 2, 3);
    for record in [at, own] {
        forge(&mut bytes, record, |r| {
            r[32..36].copy_from_slice(&(other as u32).to_le_bytes());
        });
    }
    fs::write(&segment, &bytes).unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let err = store.load_events_blocking(&all[2]).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    drop(store);
    fs::write(&segment, &good).unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.load_events_blocking(&all[2]).unwrap(), want);
}

/// Byte offset of the record of `execution` number and `sequence`.
fn find_record_of(bytes: &[u8], execution: u64, sequence: u64) -> usize {
    let mut at = 32;
    loop {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        assert!(len > 0, "no record {execution}/{sequence}");
        let e = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap());
        let s = u64::from_le_bytes(bytes[at + 16..at + 24].try_into().unwrap());
        if (e, s) == (execution, sequence) {
            return at;
        }
        at += (56 + len).next_multiple_of(8);
    }
}

/// Small segments, no background erasure (the crash image copies files while idle).
fn tally_options() -> Options {
    common::small_segments().erasure_interval(None)
}

/// Statistics are kept as the index changes (`src/index_tally.rs`) rather than counted
/// when asked: through appends, forks, deleted executions and tenants, erasure, a
/// clean reopen (the checkpoint decoded), a reopen without a checkpoint (the index
/// rebuilt from records) and a crash image, they agree with a recount.
#[test]
fn statistics_agree_with_a_recount_through_deletions_forks_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let tenants: Vec<TenantId> = ["a", "b", "c"].map(TenantId::from).to_vec();
    let mut rng = Rng::new(16);
    let mut store = LogStore::open_with(dir.path(), tally_options()).unwrap();
    let mut made: Vec<ExecutionId> = Vec::new();
    let mut forks = 0;
    for step in 0..400u64 {
        let pick = |rng: &mut Rng, made: &[ExecutionId]| {
            made[rng.below(made.len() as u64) as usize].clone()
        };
        match rng.below(20) {
            0..=10 => {
                let n = rng.below(12) as usize;
                let e = ExecutionId::from(format!("exec-{n}"));
                let t = &tenants[n % 3];
                let _ = store.append_blocking(&e, t, step_event(step));
                if !made.contains(&e) {
                    made.push(e);
                }
            }
            11 | 12 if !made.is_empty() => {
                let source = pick(&mut rng, &made);
                let fork = ExecutionId::from(format!("fork-{forks}"));
                forks += 1;
                if store.fork_execution_blocking(&source, 1, &fork).is_ok() {
                    made.push(fork);
                }
            }
            13 | 14 if !made.is_empty() => {
                let _ = store.delete_execution_blocking(&pick(&mut rng, &made));
            }
            15 => {
                let _ = store.delete_tenant_blocking(&tenants[rng.below(3) as usize]);
            }
            16 => {
                store.compact_now().unwrap();
            }
            17 => {
                store.close().unwrap();
                drop(store);
                store = LogStore::open_with(dir.path(), tally_options()).unwrap();
            }
            18 => {
                store.close().unwrap();
                drop(store);
                let rebuilt = tally_options().index_checkpoint(false);
                store = LogStore::open_with(dir.path(), rebuilt).unwrap();
            }
            _ => {
                let image = common::crash_image::copy(dir.path());
                let crashed = LogStore::open_with(image.path(), tally_options()).unwrap();
                let s = crashed.stats();
                let want = common::stats_recount(&crashed, &tenants);
                assert_eq!(
                    (s.executions, s.events, s.tenants),
                    want,
                    "crash image at step {step}"
                );
            }
        }
        let s = store.stats();
        let want = common::stats_recount(&store, &tenants);
        assert_eq!(
            (s.executions, s.events, s.tenants),
            want,
            "after step {step}"
        );
    }
    assert!(forks > 0 && made.len() > 12, "the ops forked and created");
    assert!(store.stats().deleted_executions > 0, "the ops deleted");
}
