//! Adversary tests of the index tally (`src/index_tally.rs`): `stats()` counts
//! (executions, events, tenants, deleted executions) must equal a recount through the
//! public API after any sequence of operations, in every kind of open.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::step_event;
use execlog::fault::{Fault, Op, Rng, SimIo};
use execlog::*;

fn tenants() -> Vec<TenantId> {
    ["a", "b", "c", "d"].map(TenantId::from).to_vec()
}

fn counts(store: &LogStore) -> (usize, u64, usize) {
    let s = store.stats();
    (s.executions, s.events, s.tenants)
}

#[track_caller]
fn check(store: &LogStore, tenants: &[TenantId], deleted: Option<usize>, ctx: &str) {
    let want = common::stats_recount(store, tenants);
    assert_eq!(
        counts(store),
        want,
        "{ctx}: stats (executions, events, tenants) vs recount"
    );
    if let Some(d) = deleted {
        assert_eq!(
            store.stats().deleted_executions,
            d,
            "{ctx}: deleted_executions"
        );
    }
}

fn opts() -> Options {
    common::small_segments()
        .erasure_interval(None)
        .index_checkpoint_interval_bytes(Some(16 * 1024))
}

/// One random op on `store`; returns how many executions it deleted.
fn random_op(store: &LogStore, rng: &mut Rng, made: &mut Vec<ExecutionId>, step: u64) -> usize {
    let tenants = tenants();
    let pick =
        |rng: &mut Rng, made: &[ExecutionId]| made[rng.below(made.len() as u64) as usize].clone();
    match rng.below(24) {
        0..=7 => {
            let n = rng.below(16) as usize;
            let e = ExecutionId::from(format!("exec-{n}-{}", step / 150));
            let t = &tenants[n % 4];
            let len = 1 + rng.below(5) as usize;
            let batch = (0..len).map(|i| step_event(step * 10 + i as u64)).collect();
            if store.append_batch_blocking(&e, t, batch).is_ok() && !made.contains(&e) {
                made.push(e);
            }
            0
        }
        8 => {
            // Wrong tenant: refused, nothing changes.
            if let Some(e) = made.first() {
                let _ = store.append_blocking(e, &TenantId::from("zz-wrong"), step_event(step));
            }
            0
        }
        9 | 10 if !made.is_empty() => {
            // Guarded, keyed; replayed once.
            let e = pick(rng, made);
            let t = store.execution_tenant_blocking(&e).unwrap();
            if let Some(t) = t {
                let key = format!("k{}", step % 7);
                let ev = vec![step_event(step % 7)];
                let _ =
                    store.append_with_blocking(&e, &t, ev.clone(), AppendOptions::key(key.clone()));
                let _ = store.append_with_blocking(&e, &t, ev, AppendOptions::key(key));
            }
            0
        }
        11 => {
            let e = ExecutionId::from(format!("guarded-{step}"));
            let t = &tenants[(step % 4) as usize];
            let o = AppendOptions::expect(ExpectedSequence::NoExecution);
            if store
                .append_with_blocking(&e, t, vec![step_event(step)], o)
                .is_ok()
            {
                made.push(e.clone());
            }
            // Expectation fails: nothing changes.
            let o = AppendOptions::expect(ExpectedSequence::Exactly(99));
            let _ = store.append_with_blocking(&e, t, vec![step_event(step)], o);
            0
        }
        12..=14 if !made.is_empty() => {
            let source = pick(rng, made);
            let fork = ExecutionId::from(format!("fork-{step}"));
            let latest = store
                .get_latest_sequence_blocking(&source)
                .ok()
                .flatten()
                .unwrap_or(1);
            // Anywhere, inside batches too (erasure must then keep spans whole:
            // tests/erasure.rs::compaction_after_fork_inside_a_batch_and_fork_deleted).
            let at = 1 + rng.below(latest);
            if store.fork_execution_blocking(&source, at, &fork).is_ok() {
                made.push(fork.clone());
                if rng.below(2) == 0 {
                    let t = store.execution_tenant_blocking(&fork).unwrap().unwrap();
                    let _ = store.append_blocking(&fork, &t, step_event(step));
                }
            }
            0
        }
        15..=17 if !made.is_empty() => {
            let e = pick(rng, made);
            let mut d = usize::from(store.delete_execution_blocking(&e).unwrap_or(false));
            // A double delete deletes nothing.
            d += usize::from(store.delete_execution_blocking(&e).unwrap_or(false));
            // Append to a deleted execution: refused.
            let _ = store.append_blocking(&e, &tenants[0], step_event(step));
            d
        }
        18 => {
            let t = &tenants[rng.below(4) as usize];
            let mut d = store.delete_tenant_blocking(t).unwrap_or(0) as usize;
            d += store.delete_tenant_blocking(t).unwrap_or(0) as usize;
            d
        }
        19 => {
            store.compact_now().unwrap();
            0
        }
        20 => {
            // Prune nothing (far future) and everything older than an hour: nothing.
            store.prune_blocking(Duration::from_secs(3600)).unwrap() as usize
        }
        _ => 0,
    }
}

/// Writer, crash images (write open, index rebuilt, lazy decode with held tail,
/// read-only), clean reopens: all agree with a recount, deleted counted too.
#[test]
fn tally_agrees_in_every_open_kind() {
    let dir = tempfile::tempdir().unwrap();
    let ts = tenants();
    let mut rng = Rng::new(30);
    let mut store = LogStore::open_with(dir.path(), opts()).unwrap();
    let mut made = Vec::new();
    let mut deleted = 0usize;
    let mut lazy_opens = 0;
    for step in 0..500u64 {
        deleted += random_op(&store, &mut rng, &mut made, step);
        check(&store, &ts, Some(deleted), &format!("writer step {step}"));
        if step % 50 == 25 {
            // Crash images of the live store, opened every way.
            let image = common::crash_image::copy(dir.path());
            let ctx = format!("crash image step {step}");
            {
                let lazy = opts().verify_checkpoint_after_open(true);
                let s = LogStore::open_with(image.path(), lazy).unwrap();
                let lazy_kind = s.recovery_report().index_decoded_after_open;
                lazy_opens += usize::from(lazy_kind);
                check(&s, &ts, Some(deleted), &format!("{ctx} lazy={lazy_kind}"));
                common::verify_after_open::wait_for_verdict(&s);
                assert_eq!(s.stats().checkpoint_refuted, None, "{ctx}: refuted");
                check(&s, &ts, Some(deleted), &format!("{ctx} lazy after verdict"));
            }
            for (name, o) in [
                ("eager", opts().verify_checkpoint_after_open(false)),
                ("rebuilt", opts().index_checkpoint(false)),
            ] {
                let image = common::crash_image::copy(dir.path());
                let s = LogStore::open_with(image.path(), o).unwrap();
                check(&s, &ts, Some(deleted), &format!("{ctx} {name}"));
            }
            let image = common::crash_image::copy(dir.path());
            let ro = LogStore::open_read_only(image.path()).unwrap();
            check(&ro, &ts, Some(deleted), &format!("{ctx} read-only"));
        }
        if step % 100 == 99 {
            store.close().unwrap();
            drop(store);
            let ctx = format!("clean close step {step}");
            {
                let ro = LogStore::open_read_only(dir.path()).unwrap();
                check(&ro, &ts, Some(deleted), &format!("{ctx} read-only"));
            }
            {
                let lazy = opts().verify_checkpoint_after_open(true);
                let s = LogStore::open_with(dir.path(), lazy).unwrap();
                check(&s, &ts, Some(deleted), &format!("{ctx} lazy"));
                common::verify_after_open::wait_for_verdict(&s);
                assert_eq!(s.stats().checkpoint_refuted, None, "{ctx}: refuted");
                s.close().unwrap();
            }
            {
                let s = LogStore::open_with(dir.path(), opts().index_checkpoint(false)).unwrap();
                check(&s, &ts, Some(deleted), &format!("{ctx} rebuilt"));
                s.close().unwrap();
            }
            store = LogStore::open_with(dir.path(), opts()).unwrap();
            check(&store, &ts, Some(deleted), &format!("{ctx} reopened"));
        }
    }
    assert!(
        deleted > 0 && made.len() > 20,
        "the workload deleted and created"
    );
    assert!(lazy_opens > 3, "crash images decoded lazily: {lazy_opens}");
}

/// Waits until `reader` serves what `writer` does (by recount), then compares the
/// reader's stats with its own recount.
#[track_caller]
fn reader_caught_up(reader: &LogStore, writer: &LogStore, ts: &[TenantId], ctx: &str) {
    let want = common::stats_recount(writer, ts);
    let want_deleted = writer.stats().deleted_executions;
    let started = Instant::now();
    loop {
        let got = common::stats_recount(reader, ts);
        if got == want && reader.stats().deleted_executions == want_deleted {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{ctx}: reader never caught up: {got:?} vs writer {want:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    check(reader, ts, Some(want_deleted), &format!("{ctx} reader"));
}

/// A reader in another process (here: the same one, unlocked) follows a live writer
/// through appends, forks, deletions and tenant deletions: its index grows by replay.
#[test]
fn follower_tally_agrees_with_recount() {
    let dir = tempfile::tempdir().unwrap();
    let ts = tenants();
    let mut rng = Rng::new(31);
    let store = LogStore::open_with(dir.path(), opts()).unwrap();
    store
        .append_blocking(&ExecutionId::from("seed"), &ts[0], step_event(0))
        .unwrap();
    let reader = LogStore::open_reader(dir.path()).unwrap();
    let mut made = vec![ExecutionId::from("seed")];
    let mut store = store;
    for step in 1..300u64 {
        if step == 150 || step == 220 {
            // The writer restarts (clean close, then index rebuilt or decoded); the
            // reader keeps following.
            store.close().unwrap();
            drop(store);
            let o = if step == 150 {
                opts().index_checkpoint(false)
            } else {
                opts()
            };
            store = LogStore::open_with(dir.path(), o).unwrap();
        }
        // No compaction while the reader follows (tested separately below).
        let op_rng_state = rng.below(1000);
        let mut sub = Rng::new(op_rng_state);
        if sub.below(24) == 19 {
            continue;
        }
        let mut sub = Rng::new(op_rng_state);
        random_op(&store, &mut sub, &mut made, step);
        reader_caught_up(&reader, &store, &ts, &format!("step {step}"));
        if step % 100 == 50 {
            // A second reader opened now starts from the records (and a checkpoint?).
            let late = LogStore::open_reader(dir.path()).unwrap();
            reader_caught_up(&late, &store, &ts, &format!("late reader step {step}"));
        }
    }
}

/// The follower keeps up while the writer compacts (rewrites segments).
#[test]
fn follower_tally_agrees_through_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let ts = tenants();
    let store = LogStore::open_with(dir.path(), opts()).unwrap();
    let t = &ts[1];
    for i in 0..40u64 {
        let e = ExecutionId::from(format!("e{}", i % 8));
        store
            .append_batch_blocking(&e, t, (0..3).map(|k| step_event(i * 3 + k)).collect())
            .unwrap();
    }
    let reader = LogStore::open_reader(dir.path()).unwrap();
    reader_caught_up(&reader, &store, &ts, "before");
    store
        .fork_execution_blocking(&ExecutionId::from("e1"), 4, &ExecutionId::from("f1"))
        .unwrap();
    store
        .delete_execution_blocking(&ExecutionId::from("e1"))
        .unwrap();
    store
        .delete_execution_blocking(&ExecutionId::from("e2"))
        .unwrap();
    reader_caught_up(&reader, &store, &ts, "after deletes");
    store.compact_now().unwrap();
    store
        .append_blocking(&ExecutionId::from("f1"), t, step_event(999))
        .unwrap();
    store
        .append_blocking(&ExecutionId::from("new"), &ts[2], step_event(998))
        .unwrap();
    reader_caught_up(&reader, &store, &ts, "after compaction");
    store.delete_tenant_blocking(t).unwrap();
    reader_caught_up(&reader, &store, &ts, "after tenant delete");
}

/// Forks of forks, deleting the sources, deleting a fork's tenant, then every reopen.
#[test]
fn forks_of_deleted_sources() {
    let dir = tempfile::tempdir().unwrap();
    let ts = tenants();
    let t = &ts[0];
    let id = |s: &str| ExecutionId::from(s);
    let store = LogStore::open_with(dir.path(), opts()).unwrap();
    store
        .append_batch_blocking(&id("src"), t, (0..10).map(step_event).collect())
        .unwrap();
    store
        .fork_execution_blocking(&id("src"), 6, &id("f1"))
        .unwrap();
    store
        .append_blocking(&id("f1"), t, step_event(100))
        .unwrap();
    store
        .fork_execution_blocking(&id("f1"), 7, &id("f2"))
        .unwrap();
    store
        .fork_execution_blocking(&id("f1"), 3, &id("f3"))
        .unwrap();
    check(&store, &ts, Some(0), "forks made");
    assert!(store.delete_execution_blocking(&id("src")).unwrap());
    assert!(!store.delete_execution_blocking(&id("src")).unwrap());
    check(&store, &ts, Some(1), "source deleted");
    // Forking a deleted source is refused, and changes nothing.
    assert!(
        store
            .fork_execution_blocking(&id("src"), 2, &id("f4"))
            .is_err()
    );
    check(&store, &ts, Some(1), "fork of deleted refused");
    assert!(store.delete_execution_blocking(&id("f1")).unwrap());
    check(&store, &ts, Some(2), "middle fork deleted");
    store
        .fork_execution_blocking(&id("f2"), 2, &id("f5"))
        .unwrap();
    store
        .append_blocking(&id("other"), &ts[1], step_event(1))
        .unwrap();
    check(&store, &ts, Some(2), "fork of fork of deleted");
    store.compact_now().unwrap();
    check(&store, &ts, Some(2), "compacted");
    assert_eq!(store.delete_tenant_blocking(t).unwrap(), 3);
    check(&store, &ts, Some(5), "tenant deleted");
    // The tenant comes back with a new execution.
    store
        .append_blocking(&id("again"), t, step_event(5))
        .unwrap();
    check(&store, &ts, Some(5), "tenant back");
    store.close().unwrap();
    drop(store);
    for (name, o) in [
        ("checkpoint", opts()),
        ("lazy", opts().verify_checkpoint_after_open(true)),
        ("rebuilt", opts().index_checkpoint(false)),
    ] {
        let s = LogStore::open_with(dir.path(), o).unwrap();
        check(&s, &ts, Some(5), name);
        common::verify_after_open::wait_for_verdict(&s);
        check(&s, &ts, Some(5), name);
        s.close().unwrap();
    }
    let ro = LogStore::open_read_only(dir.path()).unwrap();
    check(&ro, &ts, Some(5), "read-only");
}

/// Tenant deletions racing appends that create executions of that tenant.
#[test]
fn tenant_deletes_racing_appends() {
    let dir = tempfile::tempdir().unwrap();
    let ts = tenants();
    let store = Arc::new(LogStore::open_with(dir.path(), opts()).unwrap());
    let deleted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut threads = Vec::new();
    for w in 0..3u64 {
        let store = Arc::clone(&store);
        threads.push(std::thread::spawn(move || {
            for i in 0..300u64 {
                let e = ExecutionId::from(format!("w{w}-{}", i / 3));
                let t = TenantId::from(if i % 2 == 0 { "a" } else { "b" });
                let _ = store.append_blocking(&e, &t, step_event(i));
            }
        }));
    }
    for _ in 0..2 {
        let store = Arc::clone(&store);
        let deleted = Arc::clone(&deleted);
        threads.push(std::thread::spawn(move || {
            for i in 0..60u64 {
                let t = TenantId::from(if i % 2 == 0 { "a" } else { "b" });
                let n = store.delete_tenant_blocking(&t).unwrap();
                deleted.fetch_add(n as usize, std::sync::atomic::Ordering::SeqCst);
                let s = store.stats();
                assert!(s.executions <= 10_000 && s.tenants <= 4, "{s:?}");
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    let deleted = deleted.load(std::sync::atomic::Ordering::SeqCst);
    check(&store, &ts, Some(deleted), "after race");
    store.close().unwrap();
    drop(store);
    for (name, o) in [
        ("checkpoint", opts()),
        ("lazy", opts().verify_checkpoint_after_open(true)),
        ("rebuilt", opts().index_checkpoint(false)),
    ] {
        let s = LogStore::open_with(dir.path(), o).unwrap();
        check(&s, &ts, Some(deleted), name);
        s.close().unwrap();
    }
}

fn sim_options(io: &SimIo) -> Options {
    Options::default()
        .segment_size_bytes(64 * 1024)
        .index_stride(2)
        .io(Arc::new(io.clone()))
}

/// A store poisoned by a failed fdatasync while appending the first events of a new
/// execution (of a new tenant): stats must still agree with what reads serve.
#[test]
fn poisoned_store_stats_agree_with_recount() {
    let dir = Path::new("/p");
    let sim = SimIo::new();
    let ts = [TenantId::from("t"), TenantId::from("u")];
    let store = LogStore::open_with(dir, sim_options(&sim)).unwrap();
    store
        .append_blocking(&ExecutionId::from("a"), &ts[0], step_event(1))
        .unwrap();
    check(&store, &ts, Some(0), "before the fault");
    sim.fail_at(1, Op::Sync, Fault::Persistent);
    let got = store.append_blocking(&ExecutionId::from("b"), &ts[1], step_event(2));
    assert!(matches!(got, Err(Error::Poisoned { .. })), "{got:?}");
    assert_eq!(
        store.list_executions_blocking(&ts[1], 10, 0).unwrap(),
        Vec::<ExecutionId>::new(),
        "the failed append is not served"
    );
    check(&store, &ts, Some(0), "poisoned after a failed first append");
}

/// Same, the failed append continues an existing execution: events must not count.
#[test]
fn poisoned_store_stats_agree_after_failed_continuation() {
    let dir = Path::new("/q");
    let sim = SimIo::new();
    let ts = [TenantId::from("t")];
    let store = LogStore::open_with(dir, sim_options(&sim)).unwrap();
    store
        .append_blocking(&ExecutionId::from("a"), &ts[0], step_event(1))
        .unwrap();
    sim.fail_at(1, Op::Sync, Fault::Persistent);
    let got = store.append_batch_blocking(
        &ExecutionId::from("a"),
        &ts[0],
        vec![step_event(2), step_event(3)],
    );
    assert!(matches!(got, Err(Error::Poisoned { .. })), "{got:?}");
    check(&store, &ts, Some(0), "poisoned after a failed continuation");
}
