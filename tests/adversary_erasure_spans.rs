//! Adversarial review of erasure's whole-batch spans (`erasure::erase`, `rewrite`'s
//! read-back): batches, forks at every point of a batch, forks of forks, deletions in
//! every order, repeated passes, reopen with and without the checkpoint, verify, and
//! salvage of every closed image (an intact store salvages as it serves). Power cuts
//! during such passes on the simulated file system. A failure is a finding.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use execlog::fault::{Rng, SimIo};
use execlog::{Error, ExecutionId, LogStore, Options, StoredEvent, TenantId};

fn id(s: &str) -> ExecutionId {
    ExecutionId::from(s)
}

fn opts() -> Options {
    common::small_segments().erasure_interval(None)
}

#[derive(Debug, Clone)]
struct Case {
    batches: Vec<usize>,
    /// Batches appended concurrently (one commit group, several batches).
    grouped: bool,
    fork_at: u64,
    f_own: usize,
    g_at: Option<u64>,
    order: Vec<&'static str>,
}

fn served(store: &LogStore) -> HashMap<ExecutionId, Vec<StoredEvent>> {
    common::crash_image::everything(store)
}

fn salvage_map(dir: &Path) -> HashMap<ExecutionId, Vec<StoredEvent>> {
    let s = execlog::salvage(dir).unwrap();
    let mut out = HashMap::new();
    for e in s.executions() {
        let events = e
            .events
            .unwrap_or_else(|why| panic!("{} does not read back: {why}", e.execution_id));
        assert!(
            out.insert(e.execution_id.clone(), events).is_none(),
            "{} returned twice",
            e.execution_id
        );
    }
    out
}

fn run(case: &Case, salvage_mismatches: &mut Vec<String>) {
    let ctx = format!("{case:?}");
    let dir = tempfile::tempdir().unwrap();
    let t = TenantId::from("t");
    let mut store = LogStore::open_with(dir.path(), opts()).unwrap();
    store
        .append_blocking(&id("other"), &t, common::step_event(0))
        .unwrap();
    let mut n = 100;
    let mut batch = |k: usize| -> Vec<_> {
        let v = (n..n + k as u64).map(common::step_event).collect();
        n += k as u64;
        v
    };
    if case.grouped {
        let batches: Vec<Vec<_>> = case.batches.iter().map(|&k| batch(k)).collect();
        let futs = batches.into_iter().map(|b| {
            let store = &store;
            let t = &t;
            async move {
                let x = id("x");
                execlog::EventStore::append_batch(store, &x, t, b)
                    .await
                    .unwrap();
            }
        });
        futures::executor::block_on(futures::future::join_all(futs));
    } else {
        for (i, &k) in case.batches.iter().enumerate() {
            store.append_batch_blocking(&id("x"), &t, batch(k)).unwrap();
            if i % 2 == 1 {
                store
                    .append_blocking(&id("other"), &t, common::step_event(1))
                    .unwrap();
            }
        }
    }
    store
        .fork_execution_blocking(&id("x"), case.fork_at, &id("f"))
        .unwrap();
    if case.f_own > 0 {
        store
            .append_batch_blocking(&id("f"), &t, batch(case.f_own))
            .unwrap();
    }
    if let Some(g_at) = case.g_at {
        store
            .fork_execution_blocking(&id("f"), g_at, &id("g"))
            .unwrap();
        store.append_batch_blocking(&id("g"), &t, batch(2)).unwrap();
    }
    store
        .append_blocking(&id("other"), &t, common::step_event(2))
        .unwrap();
    let mut want = served(&store);
    for (step, gone) in case.order.iter().enumerate() {
        assert!(
            store.delete_execution_blocking(&id(gone)).unwrap(),
            "{ctx}: delete {gone}"
        );
        want.remove(&id(gone));
        for pass in 0..2 {
            store
                .compact_now()
                .unwrap_or_else(|e| panic!("{ctx}: after deleting {gone}, pass {pass}: {e:?}"));
            assert_eq!(
                served(&store),
                want,
                "{ctx}: live events changed after {gone}"
            );
        }
        store.close().unwrap();
        drop(store);
        let got = salvage_map(dir.path());
        if got != want {
            let mut missing: Vec<_> = want
                .keys()
                .filter(|k| got.get(*k) != want.get(*k))
                .collect();
            missing.sort();
            salvage_mismatches.push(format!(
                "{ctx}: after deleting {gone}, salvage differs from the store for {missing:?} (salvaged {:?})",
                {
                    let mut k: Vec<_> = got.keys().collect();
                    k.sort();
                    k
                }
            ));
        }
        let checkpoint = step % 2 == 0;
        store = LogStore::open_with(dir.path(), opts().index_checkpoint(checkpoint))
            .unwrap_or_else(|e| {
                panic!("{ctx}: reopen after {gone} (checkpoint {checkpoint}): {e:?}")
            });
        let v = store.verify(|_, _| {});
        assert!(v.is_clean(), "{ctx}: verify after {gone}: {v:?}");
        assert_eq!(served(&store), want, "{ctx}: after reopen, {gone} deleted");
        store
            .append_blocking(&id("other"), &t, common::step_event(3))
            .unwrap();
        want = served(&store);
    }
    store.close().unwrap();
    drop(store);
    for checkpoint in [true, false] {
        let s = LogStore::open_with(dir.path(), opts().index_checkpoint(checkpoint))
            .unwrap_or_else(|e| panic!("{ctx}: final reopen ({checkpoint}): {e:?}"));
        assert!(s.verify(|_, _| {}).is_clean(), "{ctx}");
        assert_eq!(served(&s), want, "{ctx}: final");
        s.close().unwrap();
    }
}

fn permutations(items: &[&'static str]) -> Vec<Vec<&'static str>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut p in permutations(&rest) {
            p.insert(0, first);
            out.push(p);
        }
    }
    out
}

/// Forks at every point of every batch, forks of forks at the ends of each part,
/// deletions of source and forks in every order, two passes each, reopen alternately
/// with and without the checkpoint, verify, salvage.
fn all_cases() -> Vec<Case> {
    let mut out = Vec::new();
    let shapes: [(&[usize], bool); 5] = [
        (&[3], false),
        (&[1, 3], false),
        (&[3, 2], false),
        (&[2, 3, 2], true),
        (&[1, 1, 3], true),
    ];
    for (batches, grouped) in shapes {
        let total: u64 = batches.iter().sum::<usize>() as u64;
        for fork_at in 1..=total {
            for f_own in [0usize, 2] {
                let mut g_ats = vec![None, Some(1), Some(fork_at)];
                if f_own > 0 {
                    g_ats.push(Some(fork_at + 1));
                    g_ats.push(Some(fork_at + f_own as u64));
                }
                g_ats.dedup();
                for g_at in g_ats {
                    let names: &[&'static str] = if g_at.is_some() {
                        &["x", "f", "g"]
                    } else {
                        &["x", "f"]
                    };
                    for order in permutations(names) {
                        let case = Case {
                            batches: batches.to_vec(),
                            grouped,
                            fork_at,
                            f_own,
                            g_at,
                            order,
                        };
                        out.push(case);
                    }
                }
            }
        }
    }
    out
}

/// Erasure's claims over every case: no pass fails, live events never change, every
/// reopen (with and without the checkpoint) is clean.
#[test]
fn forks_everywhere_deletions_in_every_order() {
    let mut ignored = Vec::new();
    let cases = all_cases();
    for case in &cases {
        run(case, &mut ignored);
    }
    eprintln!("{} cases", cases.len());
}

/// Salvage's claim over the same closed, intact (compacted) stores: it returns exactly
/// what the store serves.
#[test]
fn compacted_stores_salvage_as_they_serve() {
    let mut mismatches = Vec::new();
    let cases = all_cases();
    for case in &cases {
        run(case, &mut mismatches);
    }
    if let Ok(path) = std::env::var("ADV_DUMP") {
        std::fs::write(path, mismatches.join("\n")).unwrap();
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cases: first: {}",
        mismatches.len(),
        cases.len(),
        mismatches
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn sim_options(io: &SimIo) -> Options {
    Options::default()
        .segment_size_bytes(64 * 1024)
        .index_stride(2)
        .erasure_interval(None)
        .io(Arc::new(io.clone()))
}

/// One seed: batches, forks inside batches, deletions and passes, the power cut at a
/// random I/O call; the store reopens, verifies clean and serves every acknowledged
/// live event as it was.
fn power_seed(seed: u64) {
    let dir = Path::new("/store");
    let sim = SimIo::new();
    let mut rng = Rng::new(seed);
    sim.cut_power_at(1 + rng.below(300));
    let t = TenantId::from("t");
    let mut store = LogStore::open_with(dir, sim_options(&sim)).ok();
    // What was acknowledged of each execution: its events as served then.
    let mut acked: HashMap<ExecutionId, Vec<StoredEvent>> = HashMap::new();
    let mut made: Vec<ExecutionId> = Vec::new();
    let mut deleted: Vec<ExecutionId> = Vec::new();
    for op in 0..60u64 {
        let Some(s) = &store else { break };
        let result: Result<(), Error> = match rng.below(10) {
            0..=3 => {
                let e = if made.is_empty() || rng.below(3) == 0 {
                    id(&format!("e{op}"))
                } else {
                    made[rng.below(made.len() as u64) as usize].clone()
                };
                if deleted.contains(&e) {
                    Ok(())
                } else {
                    let k = 1 + rng.below(4);
                    let events = (0..k).map(|i| common::step_event(op * 10 + i)).collect();
                    s.append_batch_blocking(&e, &t, events).map(|_| {
                        if !made.contains(&e) {
                            made.push(e.clone());
                        }
                        if let Ok(v) = s.load_events_blocking(&e) {
                            acked.insert(e.clone(), v);
                        }
                    })
                }
            }
            4 | 5 if !made.is_empty() => {
                let src = made[rng.below(made.len() as u64) as usize].clone();
                let have = acked.get(&src).map_or(0, |v| v.len() as u64);
                if deleted.contains(&src) || have == 0 {
                    Ok(())
                } else {
                    let at = 1 + rng.below(have);
                    let f = id(&format!("f{op}"));
                    s.fork_execution_blocking(&src, at, &f).map(|()| {
                        made.push(f.clone());
                        if let Ok(v) = s.load_events_blocking(&f) {
                            acked.insert(f.clone(), v);
                        }
                    })
                }
            }
            6 if !made.is_empty() => {
                let e = made[rng.below(made.len() as u64) as usize].clone();
                s.delete_execution_blocking(&e).map(|d| {
                    if d {
                        deleted.push(e.clone());
                        acked.remove(&e);
                    }
                })
            }
            _ => s.compact_now().map(|_| ()),
        };
        match result {
            Ok(()) => {}
            Err(Error::Poisoned { .. } | Error::Io { .. }) => {
                drop(store.take());
                store = LogStore::open_with(dir, sim_options(&sim)).ok();
            }
            Err(Error::InvalidArgument(_) | Error::Deleted) => {}
            Err(other) => panic!("seed {seed} op {op}: {other:?}"),
        }
    }
    let after = sim.power_loss(rng.next_u64());
    drop(store);
    let store = LogStore::open_with(dir, sim_options(&after))
        .unwrap_or_else(|e| panic!("seed {seed}: reopen after the power loss failed: {e:?}"));
    for (e, events) in &acked {
        let got = store.load_events_blocking(e).unwrap_or_default();
        if got.is_empty() && !events.is_empty() {
            // A deletion that failed with the power cut may have become durable.
            continue;
        }
        assert!(
            got.len() >= events.len() && got[..events.len()] == events[..],
            "seed {seed}: {e} changed: {} events, {} acknowledged",
            got.len(),
            events.len()
        );
    }
    let report = store.verify(|_, _| {});
    let problems: Vec<&String> = report
        .problems
        .iter()
        .filter(|p| !p.contains("torn tail"))
        .collect();
    assert!(problems.is_empty(), "seed {seed}: {problems:?}");
    drop(store);
    let store = LogStore::open_with(dir, sim_options(&after).index_checkpoint(false))
        .unwrap_or_else(|e| panic!("seed {seed}: second reopen without checkpoint: {e:?}"));
    assert!(
        store
            .verify(|_, _| {})
            .problems
            .iter()
            .all(|p| p.contains("torn tail"))
    );
}

#[test]
fn power_cuts_during_passes_over_batches_and_forks() {
    if let Ok(seed) = std::env::var("ADV_POWER_SEED") {
        power_seed(seed.parse().unwrap());
        return;
    }
    let seeds: u64 = std::env::var("ADV_POWER_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    for seed in 0..seeds {
        if std::panic::catch_unwind(|| power_seed(seed)).is_err() {
            panic!("replay with ADV_POWER_SEED={seed}");
        }
    }
}
