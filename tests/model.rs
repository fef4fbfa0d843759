//! Model-based test: random operation sequences (appends, batches, reads, ranges,
//! listings, tenant mismatches, empty batches, reopens) run against the store and an
//! in-memory model must give identical answers, on the real file system and on the
//! simulated one.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use execlog::fault::SimIo;
use execlog::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append { exec: u8, tenant: u8, size: u16 },
    Batch { exec: u8, tenant: u8, len: u8 },
    Read { exec: u8 },
    ReadAfter { exec: u8, after: u8 },
    Range { exec: u8, after: u8, limit: u8 },
    Latest { exec: u8 },
    List { tenant: u8, limit: u8, offset: u8 },
    Reopen,
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
    ]
}

#[derive(Default)]
struct Model {
    owner: HashMap<u8, u8>,
    events: HashMap<u8, Vec<ExecutionEventData>>,
    created: Vec<u8>,
}

impl Model {
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

fn run(ops: &[Op], open: &dyn Fn() -> LogStore) {
    let mut store = open();
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
                store = open();
            }
        }
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
        let dir = tempfile::tempdir().unwrap();
        run(&ops, &|| LogStore::open_with(dir.path(), options()).unwrap());
    }

    #[test]
    fn model_on_simulated_files(ops in proptest::collection::vec(op(), 1..120)) {
        let sim = SimIo::new();
        run(&ops, &|| LogStore::open_with("/model", options().io(Arc::new(sim.clone()))).unwrap());
    }
}
