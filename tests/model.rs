//! Model-based test: random operation sequences (appends, batches, reads, ranges,
//! listings, tenant mismatches, empty batches, reopens) run against the store and an
//! in-memory model must give identical answers, on the real file system and on the
//! simulated one.
//!
//! Guarded appends (issue 13) are part of it: expected sequences (right, off by one,
//! `NoExecution`, `Exactly(0)`), idempotency keys from a small set (so they recur, with
//! equal or other events, on the same or another execution, also invalid ones), through
//! the blocking and the async API; the model predicts every outcome, replay, conflict
//! and wrong expectation. `TenantView` reads, owners, and crashes (the files as a
//! killed process leaves them: no clean close, a stale index checkpoint) are ops too.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use execlog::fault::SimIo;
use execlog::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append {
        exec: u8,
        tenant: u8,
        size: u16,
    },
    Batch {
        exec: u8,
        tenant: u8,
        len: u8,
    },
    Read {
        exec: u8,
    },
    ReadAfter {
        exec: u8,
        after: u8,
    },
    Range {
        exec: u8,
        after: u8,
        limit: u8,
    },
    Latest {
        exec: u8,
    },
    List {
        tenant: u8,
        limit: u8,
        offset: u8,
    },
    Reopen,
    Guarded {
        exec: u8,
        tenant: u8,
        expected: u8,
        key: u8,
        variant: u8,
        via_async: bool,
    },
    View {
        exec: u8,
        tenant: u8,
    },
    Owner {
        exec: u8,
    },
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..6u8, 0..3u8, 0..2000u16).prop_map(|(exec, tenant, size)| Op::Append { exec, tenant, size }),
        3 => (0..6u8, 0..3u8, 0..6u8).prop_map(|(exec, tenant, len)| Op::Batch { exec, tenant, len }),
        2 => (0..7u8).prop_map(|exec| Op::Read { exec }),
        2 => (0..7u8, 0..40u8).prop_map(|(exec, after)| Op::ReadAfter { exec, after }),
        2 => (0..7u8, 0..40u8, 0..10u8).prop_map(|(exec, after, limit)| Op::Range { exec, after, limit }),
        1 => (0..7u8).prop_map(|exec| Op::Latest { exec }),
        1 => (0..4u8, 0..5u8, 0..5u8).prop_map(|(tenant, limit, offset)| Op::List { tenant, limit, offset }),
        1 => Just(Op::Reopen),
        8 => (0..6u8, 0..3u8, 0..8u8, 0..9u8, 0..5u8, any::<bool>()).prop_map(
            |(exec, tenant, expected, key, variant, via_async)| Op::Guarded { exec, tenant, expected, key, variant, via_async }
        ),
        2 => (0..7u8, 0..4u8).prop_map(|(exec, tenant)| Op::View { exec, tenant }),
        1 => (0..7u8).prop_map(|exec| Op::Owner { exec }),
        1 => Just(Op::Crash),
    ]
}

#[derive(Default)]
struct Model {
    owner: HashMap<u8, u8>,
    events: HashMap<u8, Vec<ExecutionEventData>>,
    created: Vec<u8>,
    /// Per execution and key: the events stored under it and their outcome.
    keys: HashMap<(u8, String), (Vec<ExecutionEventData>, AppendOutcome)>,
}

impl Model {
    /// Statistics count what the model holds, after any op (the index keeps them as
    /// it changes, `src/index_tally.rs`, whichever way it was built).
    fn check_stats(&self, stats: &Stats, after: &Op) {
        let events: usize = self.events.values().map(Vec::len).sum();
        let tenants: std::collections::HashSet<_> = self.owner.values().collect();
        let got = (stats.executions, stats.events, stats.tenants);
        let want = (self.created.len(), events as u64, tenants.len());
        assert_eq!(got, want, "executions, events, tenants after {after:?}");
    }

    /// Checks the store's answer to an append of `events` and updates the model.
    fn apply(&mut self, exec: u8, t: u8, events: Vec<ExecutionEventData>, got: Result<u64, Error>) {
        if self.owner.get(&exec).is_some_and(|&owner| owner != t) {
            assert!(matches!(got, Err(Error::TenantMismatch { .. })), "{got:?}");
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(slot) = self.owner.entry(exec) {
            slot.insert(t);
            self.created.push(exec);
        }
        let history = self.events.entry(exec).or_default();
        let first = history.len() as u64 + 1;
        history.extend(events);
        assert_eq!(got.unwrap(), first);
    }

    /// What a guarded append of `events` with `options` must answer: checks the store's
    /// answer and updates the model.
    fn apply_guarded(
        &mut self,
        exec: u8,
        t: u8,
        events: Vec<ExecutionEventData>,
        options: &AppendOptions,
        got: Result<AppendOutcome, Error>,
    ) {
        let context = format!(
            "exec {exec} tenant {t} {options:?} ({} events)",
            events.len()
        );
        let bad_key = options
            .idempotency_key
            .as_ref()
            .is_some_and(|k| k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_BYTES);
        if bad_key || events.is_empty() {
            assert!(
                matches!(got, Err(Error::InvalidArgument(_))),
                "{context}: {got:?}"
            );
            return;
        }
        if self.owner.get(&exec).is_some_and(|&owner| owner != t) {
            assert!(
                matches!(got, Err(Error::TenantMismatch { .. })),
                "{context}: {got:?}"
            );
            return;
        }
        if let Some(k) = &options.idempotency_key
            && let Some((stored, outcome)) = self.keys.get(&(exec, k.clone()))
        {
            if *stored == events {
                let want = AppendOutcome {
                    replayed: true,
                    ..*outcome
                };
                assert_eq!(got.unwrap(), want, "{context}: a replay");
            } else {
                assert!(
                    matches!(got, Err(Error::IdempotencyConflict)),
                    "{context}: {got:?}"
                );
            }
            return;
        }
        let latest = self.events.get(&exec).map(|h| h.len() as u64);
        // The contract's rule, written out here (not `ExpectedSequence::admits`, which
        // is the code under test).
        let admitted = match options.expected {
            ExpectedSequence::Any => true,
            ExpectedSequence::NoExecution => latest.is_none(),
            ExpectedSequence::Exactly(0) => latest.is_none(),
            ExpectedSequence::Exactly(n) => latest == Some(n),
        };
        if !admitted {
            match got {
                Err(Error::WrongExpectedSequence { expected, actual }) => {
                    assert_eq!((expected, actual), (options.expected, latest), "{context}")
                }
                other => panic!("{context}: expected WrongExpectedSequence, got {other:?}"),
            }
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(slot) = self.owner.entry(exec) {
            slot.insert(t);
            self.created.push(exec);
        }
        let history = self.events.entry(exec).or_default();
        let first = history.len() as u64 + 1;
        let last = first + events.len() as u64 - 1;
        history.extend(events.iter().cloned());
        let want = AppendOutcome {
            first_sequence: first,
            last_sequence: last,
            replayed: false,
        };
        assert_eq!(got.unwrap(), want, "{context}");
        if let Some(k) = &options.idempotency_key {
            self.keys.insert((exec, k.clone()), (events, want));
        }
    }
}

/// The key of a guarded op: five valid keys, none, and two invalid ones.
fn guard_key(key: u8) -> Option<String> {
    match key {
        0..=4 => Some(format!("key-{key}")),
        5 | 6 => None,
        7 => Some(String::new()),
        _ => Some("k".repeat(MAX_IDEMPOTENCY_KEY_BYTES + 1)),
    }
}

/// The expectation of a guarded op, against the model's latest sequence `latest`.
fn guard_expected(expected: u8, latest: Option<u64>) -> ExpectedSequence {
    let n = latest.unwrap_or(0);
    match expected {
        0 => ExpectedSequence::Any,
        1 => ExpectedSequence::NoExecution,
        2 => ExpectedSequence::Exactly(0),
        3 => ExpectedSequence::Exactly(n + 1),
        4 => ExpectedSequence::Exactly(n.saturating_sub(1)),
        _ => ExpectedSequence::Exactly(n),
    }
}

/// The events of a guarded op: keyed ones derive from key and variant only, so that a
/// key recurs with equal events (a replay) or other ones (a conflict); variant 4 is an
/// empty batch.
fn guard_events(key: &Option<String>, variant: u8, counter: usize) -> Vec<ExecutionEventData> {
    let len = match variant {
        4 => 0,
        v => 1 + usize::from(v % 2) + usize::from(v / 2),
    };
    (0..len)
        .map(|i| match key {
            Some(k) => ExecutionEventData::Custom {
                event_type: format!("keyed-{variant}"),
                data: serde_json::json!({"key": k, "i": i, "variant": variant}),
            },
            None => ev(counter + i, 10),
        })
        .collect()
}

fn ev(n: usize, size: u16) -> ExecutionEventData {
    ExecutionEventData::Custom {
        event_type: format!("e{n}"),
        data: serde_json::json!({"n": n, "pad": "q".repeat(size as usize)}),
    }
}

fn id(exec: u8) -> ExecutionId {
    ExecutionId::from(format!("exec-{exec}"))
}

fn tenant(t: u8) -> TenantId {
    TenantId::from(format!("tenant-{t}"))
}

/// Where the store lives: real directories (a crash continues on a copy) or the
/// simulated file system (a crash continues on a snapshot; idempotency-key hashes cut
/// to 2 bits, so that keys collide).
enum Files {
    Real(Vec<tempfile::TempDir>),
    Sim(SimIo),
}

impl Files {
    fn open(&self) -> LogStore {
        match self {
            Files::Real(dirs) => {
                LogStore::open_with(dirs.last().unwrap().path(), options()).unwrap()
            }
            // Key hashes cut to 2 bits: the keys of an execution collide.
            Files::Sim(sim) => LogStore::open_with(
                "/model",
                options().idempotency_hash_bits(2).io(Arc::new(sim.clone())),
            )
            .unwrap(),
        }
    }

    /// What a kill -9 of the process holding `store` leaves, opened: the files as they
    /// are (page cache included), no clean close, no new checkpoint.
    fn crash(&mut self, store: LogStore) -> LogStore {
        match self {
            Files::Real(dirs) => {
                let image = tempfile::tempdir().unwrap();
                for entry in std::fs::read_dir(dirs.last().unwrap().path()).unwrap() {
                    let entry = entry.unwrap();
                    let name = entry.file_name();
                    // A running checkpoint's tmp file is never read, and may vanish.
                    if name != "LOCK" && !name.to_string_lossy().ends_with(".tmp") {
                        std::fs::copy(entry.path(), image.path().join(&name)).unwrap();
                    }
                }
                dirs.push(image);
            }
            Files::Sim(sim) => *sim = sim.snapshot(),
        }
        drop(store);
        self.open()
    }
}

fn run(ops: &[Op], mut files: Files) {
    let mut store = files.open();
    let mut model = Model::default();
    let mut counter = 0;
    for op in ops {
        match *op {
            Op::Append {
                exec,
                tenant: t,
                size,
            } => {
                counter += 1;
                let e = ev(counter, size);
                let got = store.append_blocking(&id(exec), &tenant(t), e.clone());
                model.apply(exec, t, vec![e], got);
            }
            Op::Batch {
                exec,
                tenant: t,
                len,
            } => {
                let events: Vec<_> = (0..len as usize).map(|i| ev(counter + i + 1, 10)).collect();
                counter += len as usize;
                let got = store.append_batch_blocking(&id(exec), &tenant(t), events.clone());
                if len == 0 {
                    assert!(matches!(got, Err(Error::InvalidArgument(_))));
                    continue;
                }
                model.apply(exec, t, events, got);
            }
            Op::Read { exec } => {
                let got = store.load_events_blocking(&id(exec)).unwrap();
                let want = model.events.get(&exec).cloned().unwrap_or_default();
                assert_eq!(
                    got.iter().map(|s| s.event.clone()).collect::<Vec<_>>(),
                    want
                );
                assert!(got.iter().zip(1..).all(|(s, n)| s.sequence == n));
            }
            Op::ReadAfter { exec, after } => {
                let got = store
                    .load_events_after_blocking(&id(exec), u64::from(after))
                    .unwrap();
                let want: Vec<_> = model
                    .events
                    .get(&exec)
                    .map(|h| h.iter().skip(after as usize).cloned().collect())
                    .unwrap_or_default();
                assert_eq!(
                    got.iter().map(|s| s.event.clone()).collect::<Vec<_>>(),
                    want
                );
            }
            Op::Range { exec, after, limit } => {
                let got = store
                    .read_range_blocking(&id(exec), u64::from(after), limit as usize)
                    .unwrap();
                let want: Vec<_> = model
                    .events
                    .get(&exec)
                    .map(|h| {
                        h.iter()
                            .skip(after as usize)
                            .take(limit as usize)
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                assert_eq!(
                    got.iter().map(|s| s.event.clone()).collect::<Vec<_>>(),
                    want
                );
                assert!(
                    got.iter()
                        .zip(u64::from(after) + 1..)
                        .all(|(s, n)| s.sequence == n)
                );
            }
            Op::Latest { exec } => {
                let got = store.get_latest_sequence_blocking(&id(exec)).unwrap();
                let want = model.events.get(&exec).map(|h| h.len() as u64);
                assert_eq!(got, want);
            }
            Op::List {
                tenant: t,
                limit,
                offset,
            } => {
                let got = store
                    .list_executions_blocking(&tenant(t), limit as usize, offset as usize)
                    .unwrap();
                let want: Vec<_> = model
                    .created
                    .iter()
                    .rev()
                    .filter(|e| model.owner[e] == t)
                    .skip(offset as usize)
                    .take(limit as usize)
                    .map(|&e| id(e))
                    .collect();
                assert_eq!(got, want);
            }
            Op::Reopen => {
                drop(store);
                store = files.open();
            }
            Op::Crash => store = files.crash(store),
            Op::Guarded {
                exec,
                tenant: t,
                expected,
                key,
                variant,
                via_async,
            } => {
                let key = guard_key(key);
                let events = guard_events(&key, variant, counter + 1);
                counter += events.len();
                let latest = model.events.get(&exec).map(|h| h.len() as u64);
                let options = AppendOptions {
                    expected: guard_expected(expected, latest),
                    idempotency_key: key,
                };
                let got = if via_async {
                    futures::executor::block_on(store.append_with(
                        &id(exec),
                        &tenant(t),
                        events.clone(),
                        options.clone(),
                    ))
                    .map_err(|e| e.downcast::<Error>().unwrap())
                } else {
                    store.append_with_blocking(
                        &id(exec),
                        &tenant(t),
                        events.clone(),
                        options.clone(),
                    )
                };
                model.apply_guarded(exec, t, events, &options, got);
            }
            Op::View { exec, tenant: t } => {
                let view = store.tenant(&tenant(t));
                let owned = model.owner.get(&exec) == Some(&t);
                let want: Vec<_> = if owned {
                    model.events[&exec].clone()
                } else {
                    Vec::new()
                };
                let got = futures::executor::block_on(view.load_events(&id(exec))).unwrap();
                assert_eq!(
                    got.iter().map(|s| s.event.clone()).collect::<Vec<_>>(),
                    want
                );
                let after =
                    futures::executor::block_on(view.load_events_after(&id(exec), 1)).unwrap();
                assert_eq!(after.len(), want.len().saturating_sub(1));
                let latest =
                    futures::executor::block_on(view.get_latest_sequence(&id(exec))).unwrap();
                assert_eq!(latest, owned.then_some(want.len() as u64));
                assert_eq!(
                    futures::executor::block_on(view.execution_exists(&id(exec))).unwrap(),
                    owned
                );
                assert_eq!(
                    futures::executor::block_on(view.count_events(&id(exec))).unwrap(),
                    want.len() as u64
                );
            }
            Op::Owner { exec } => {
                let got = store.execution_tenant_blocking(&id(exec)).unwrap();
                assert_eq!(got, model.owner.get(&exec).map(|&t| tenant(t)));
                let got = futures::executor::block_on(store.execution_tenant(&id(exec))).unwrap();
                assert_eq!(got, model.owner.get(&exec).map(|&t| tenant(t)));
            }
        }
        model.check_stats(&store.stats(), op);
    }
}

fn options() -> Options {
    Options::default()
        .segment_size_bytes(64 * 1024)
        .index_stride(3)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn model_on_real_files(ops in proptest::collection::vec(op(), 1..120)) {
        run(&ops, Files::Real(vec![tempfile::tempdir().unwrap()]));
    }

    #[test]
    fn model_on_simulated_files(ops in proptest::collection::vec(op(), 1..120)) {
        run(&ops, Files::Sim(SimIo::new()));
    }
}
