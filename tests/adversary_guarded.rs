//! Adversarial review of guarded appends (issue 13): expected sequences and exact
//! idempotency keys on `LogStore`. Every test states what a correct engine does and
//! passes if it does; tests that fail on the reviewed build are `#[ignore]`d with the
//! finding they reproduce, so the suite stays green.
//!
//! - Crafted files: record prefix form `02` where the format forbids it, keys of
//!   forbidden lengths or bytes, keyed records in version 1 segments, declarations on
//!   later sequences, forged bodies, forged checkpoints over keyed records.
//! - Crashes: SIGKILL of a keyed writer, then retries of what it acknowledged and of
//!   what it only sent; simulated power loss (`execlog::fault`) with keyed appends.
//! - Races: mixed keyed, `Exactly(n)`, `NoExecution` and plain appends from many
//!   threads; `close` racing retries that wait for an in-flight original; dropped
//!   async futures; a poisoning fdatasync while retries wait.
//! - Hostile input: key lengths at the UTF-8 boundary, NUL, `u64::MAX`, `Exactly(0)`,
//!   huge keyed batches, the same key on two executions and by another tenant.
//! - Cost: colliding hashes, many keyed appends in flight at once.
//!
//! Findings (ignored tests that fail on the reviewed build, commit b834969):
//! `crafted_keyed_record_in_a_version_1_segment_is_refused`,
//! `crafted_declaration_on_a_later_sequence_is_refused`,
//! `crafted_keyed_body_with_trailing_bytes_is_corrupt_for_a_retry`,
//! `a_migrated_store_still_answers_keyed_retries`,
//! `many_keyed_appends_in_flight_settle_in_linear_time`,
//! `key_memory_budget_holds_for_one_keyed_append_per_execution`. Measurements (ignored,
//! they print figures and assert little): `measure_retries_against_many_keyed_appends`,
//! `measure_many_retries_waiting_on_one_in_flight_original`.
//!
//! Environment: `EXECLOG_ADV_KILLS` (kill trials, default 8); `EXECLOG_ADV_POWER_SEEDS`
//! and `EXECLOG_ADV_POWER_BASE` (simulated power losses, default 1,000 from 0;
//! `EXECLOG_ADV_POWER_SEED=S` replays one); `EXECLOG_ADV_KEYS` (keyed appends of the
//! collision measurement, default 100,000); `EXECLOG_ADV_IN_FLIGHT` (in-flight keyed
//! appends, default 40,000); `EXECLOG_ADV_WAITERS` (waiting retries, default 40,000).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::writer;
use execlog::fault::{Fault, Op, Rng, SimIo};
use execlog::*;
use parking_lot::Mutex;

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

fn paused(tag: &str) -> ExecutionEventData {
    ExecutionEventData::ExecutionPaused {
        reason: tag.to_string(),
    }
}

fn reason(e: &StoredEvent) -> &str {
    match &e.event {
        ExecutionEventData::ExecutionPaused { reason } => reason,
        other => panic!("unexpected event {other:?}"),
    }
}

fn ex(s: &str) -> ExecutionId {
    ExecutionId::from(s)
}

fn tn(s: &str) -> TenantId {
    TenantId::from(s)
}

fn keyed(key: &str) -> AppendOptions {
    AppendOptions::key(key)
}

fn replay_of(o: AppendOutcome) -> AppendOutcome {
    AppendOutcome {
        replayed: true,
        ..o
    }
}

/// Options on the simulated file system.
fn sim_options(sim: &SimIo) -> Options {
    Options::default()
        .segment_size_bytes(256 * 1024)
        .io(Arc::new(sim.clone()))
}

/// Waits for every thread, failing (not hanging) if one is still running at `limit`.
fn join_within<T>(handles: Vec<std::thread::JoinHandle<T>>, limit: Duration, what: &str) -> Vec<T> {
    let deadline = Instant::now() + limit;
    while handles.iter().any(|h| !h.is_finished()) {
        assert!(
            Instant::now() < deadline,
            "{what}: a thread still runs after {limit:?} (hung)"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// The events of `e` from `first`, as many as `events`, must be exactly `events`.
fn assert_stored(
    store: &LogStore,
    e: &ExecutionId,
    o: AppendOutcome,
    events: &[ExecutionEventData],
) {
    let stored = store
        .read_range_blocking(e, o.first_sequence - 1, events.len())
        .unwrap();
    assert_eq!(
        o.last_sequence - o.first_sequence + 1,
        events.len() as u64,
        "outcome {o:?} does not span the events"
    );
    let got: Vec<&ExecutionEventData> = stored.iter().map(|s| &s.event).collect();
    let want: Vec<&ExecutionEventData> = events.iter().collect();
    assert_eq!(got, want, "{e}: outcome {o:?} does not hold the events");
}

// ---------------------------------------------------------------------------------
// Crafting segments by hand (docs/FORMAT.md), without the engine's encoder
// ---------------------------------------------------------------------------------

fn varint(n: u64, out: &mut Vec<u8>) {
    if n < 251 {
        out.push(n as u8);
    } else if n <= u64::from(u16::MAX) {
        out.push(251);
        out.extend((n as u16).to_le_bytes());
    } else if n <= u64::from(u32::MAX) {
        out.push(252);
        out.extend((n as u32).to_le_bytes());
    } else {
        out.push(253);
        out.extend(n.to_le_bytes());
    }
}

fn bstr(s: &[u8], out: &mut Vec<u8>) {
    varint(s.len() as u64, out);
    out.extend_from_slice(s);
}

/// A record body's prefix (FORMAT.md, "Event body").
enum Prefix<'a> {
    Plain,
    Declared(&'a str, &'a str),
    Keyed(Option<(&'a str, &'a str)>, &'a [u8]),
}

/// A body: the prefix, then `ExecutionPaused { reason }` (variant 4, one string).
fn body(prefix: &Prefix<'_>, reason: &str) -> Vec<u8> {
    let mut b = Vec::new();
    match prefix {
        Prefix::Plain => b.push(0),
        Prefix::Declared(e, t) => {
            b.push(1);
            bstr(e.as_bytes(), &mut b);
            bstr(t.as_bytes(), &mut b);
        }
        Prefix::Keyed(d, k) => {
            b.push(2);
            match d {
                None => b.push(0),
                Some((e, t)) => {
                    b.push(1);
                    bstr(e.as_bytes(), &mut b);
                    bstr(t.as_bytes(), &mut b);
                }
            }
            bstr(k, &mut b);
        }
    }
    b.push(4);
    bstr(reason.as_bytes(), &mut b);
    b
}

/// A segment written record by record; each batch is its own commit group.
struct Seg {
    id: u32,
    bytes: Vec<u8>,
    /// Execution -> (last sequence, packed position of its record).
    chains: HashMap<u64, (u64, u64)>,
    ts: i64,
}

impl Seg {
    fn new(version: u32, id: u32) -> Seg {
        let mut h = Vec::with_capacity(32);
        h.extend_from_slice(b"EXECLOG\0");
        h.extend(version.to_le_bytes());
        h.extend(id.to_le_bytes());
        h.extend([0u8; 12]);
        let crc = crc32fast::hash(&h);
        h.extend(crc.to_le_bytes());
        Seg {
            id,
            bytes: h,
            chains: HashMap::new(),
            ts: 1_700_000_000_000_000_000,
        }
    }

    /// Appends one batch of `bodies` to execution `exec`; returns its first sequence.
    fn batch(&mut self, exec: u64, bodies: &[Vec<u8>]) -> u64 {
        let group_start = self.bytes.len() as u32;
        let (mut seq, mut prev) = self.chains.get(&exec).copied().unwrap_or((0, u64::MAX));
        let first = seq + 1;
        for (i, b) in bodies.iter().enumerate() {
            seq += 1;
            let offset = self.bytes.len() as u32;
            self.ts += 1000;
            let mut rec = Vec::new();
            rec.extend(0u32.to_le_bytes());
            rec.extend((b.len() as u32).to_le_bytes());
            rec.extend(exec.to_le_bytes());
            rec.extend(seq.to_le_bytes());
            rec.extend(self.ts.to_le_bytes());
            rec.extend(prev.to_le_bytes());
            rec.extend(((bodies.len() - 1 - i) as u32).to_le_bytes());
            rec.extend(group_start.to_le_bytes());
            rec.extend(1u16.to_le_bytes());
            rec.extend([0u8; 6]);
            rec.extend_from_slice(b);
            let crc = crc32fast::hash(&rec[4..]);
            rec[..4].copy_from_slice(&crc.to_le_bytes());
            while rec.len() % 8 != 0 {
                rec.push(0);
            }
            self.bytes.extend(rec);
            prev = (u64::from(self.id) << 32) | u64::from(offset);
        }
        self.chains.insert(exec, (seq, prev));
        first
    }

    fn write(&self, dir: &Path) {
        let mut b = self.bytes.clone();
        b.resize(b.len() + 4096, 0);
        fs::write(dir.join(format!("{:010}.seg", self.id)), b).unwrap();
    }
}

/// Execution 0 = "ex" of tenant "t": a keyed first append `k1` ("a"), a keyed batch
/// `k2` ("b", "c"), then whatever `middle` adds, then a plain record ("z").
fn crafted(version: u32, middle: impl FnOnce(&mut Seg)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Seg::new(version, 1);
    s.batch(0, &[body(&Prefix::Keyed(Some(("ex", "t")), b"k1"), "a")]);
    s.batch(
        0,
        &[
            body(&Prefix::Keyed(None, b"k2"), "b"),
            body(&Prefix::Plain, "c"),
        ],
    );
    middle(&mut s);
    s.batch(0, &[body(&Prefix::Plain, "z")]);
    s.write(dir.path());
    dir
}

fn open_plain(dir: &Path) -> Result<LogStore> {
    LogStore::open_with(dir, Options::default().index_checkpoint(false))
}

fn assert_corrupt(r: Result<LogStore>, what: &str) {
    match r {
        Err(Error::Corrupt { .. }) => {}
        Err(other) => panic!("{what}: expected Corrupt, got {other:?}"),
        Ok(s) => panic!(
            "{what}: opened ({} events) instead of refusing the record",
            s.stats().events
        ),
    }
}

#[test]
fn crafted_control_store_opens_and_its_keys_replay() {
    // Proves the hand-made records are what the engine writes: the other crafted
    // tests differ from this one only in what they break.
    {
        let dir = crafted(2, |_| {});
        let s = open_plain(dir.path()).unwrap();
        let events: Vec<String> = s
            .load_events_blocking(&ex("ex"))
            .unwrap()
            .iter()
            .map(|e| reason(e).to_string())
            .collect();
        assert_eq!(events, ["a", "b", "c", "z"]);
        let o = s
            .append_with_blocking(
                &ex("ex"),
                &tn("t"),
                vec![paused("b"), paused("c")],
                keyed("k2"),
            )
            .unwrap();
        assert_eq!(
            o,
            AppendOutcome {
                first_sequence: 2,
                last_sequence: 3,
                replayed: true
            }
        );
        let o = s
            .append_with_blocking(&ex("ex"), &tn("t"), vec![paused("a")], keyed("k1"))
            .unwrap();
        assert_eq!((o.first_sequence, o.replayed), (1, true));
        assert!(s.verify(|_, _| {}).is_clean());
    }
}

#[test]
fn crafted_key_in_a_non_first_record_of_a_batch_is_corrupt() {
    // In the middle of the log.
    let dir = crafted(2, |s| {
        s.batch(
            0,
            &[
                body(&Prefix::Plain, "m1"),
                body(&Prefix::Keyed(None, b"inner"), "m2"),
            ],
        );
    });
    assert_corrupt(open_plain(dir.path()), "key in the 2nd record of a batch");
    // As the last group of the log: refused too, not cut as a torn tail.
    let dir = tempfile::tempdir().unwrap();
    let mut s = Seg::new(2, 1);
    s.batch(0, &[body(&Prefix::Declared("ex", "t"), "a")]);
    s.batch(
        0,
        &[
            body(&Prefix::Plain, "m1"),
            body(&Prefix::Keyed(None, b"inner"), "m2"),
            body(&Prefix::Plain, "m3"),
        ],
    );
    s.write(dir.path());
    assert_corrupt(open_plain(dir.path()), "key inside the last batch");
}

#[test]
fn crafted_keys_of_forbidden_lengths_or_bytes_are_corrupt() {
    let long300 = vec![b'x'; 300];
    let long257 = vec![b'y'; 257];
    let bad_utf8: &[u8] = &[0xff, 0xfe, b'k'];
    for (what, key) in [
        ("empty key", &b""[..]),
        ("257-byte key", &long257[..]),
        ("300-byte key", &long300[..]),
        ("invalid UTF-8 key", bad_utf8),
    ] {
        let dir = crafted(2, |s| {
            s.batch(0, &[body(&Prefix::Keyed(None, key), "bad")]);
        });
        assert_corrupt(open_plain(dir.path()), what);
    }
    // A key length that claims more bytes than the body holds.
    let dir = crafted(2, |s| {
        let mut b = vec![2u8, 0];
        varint(200, &mut b);
        b.extend_from_slice(b"short");
        s.batch(0, &[b]);
    });
    assert_corrupt(open_plain(dir.path()), "key length past the body");
    // A declaration tag other than 0 or 1 inside form 02.
    let dir = crafted(2, |s| {
        let mut b = vec![2u8, 7];
        bstr(b"k", &mut b);
        b.push(4);
        bstr(b"x", &mut b);
        s.batch(0, &[b]);
    });
    assert_corrupt(open_plain(dir.path()), "form 02 with declaration tag 7");
    // Exactly 256 bytes (4-byte characters up to the limit) is a valid key.
    let key256 = format!("{}{}", "a".repeat(252), "\u{1F600}");
    assert_eq!(key256.len(), 256);
    let dir = crafted(2, |s| {
        s.batch(0, &[body(&Prefix::Keyed(None, key256.as_bytes()), "ok")]);
    });
    let s = open_plain(dir.path()).unwrap();
    let o = s
        .append_with_blocking(&ex("ex"), &tn("t"), vec![paused("ok")], keyed(&key256))
        .unwrap();
    assert_eq!((o.first_sequence, o.replayed), (4, true));
}

#[test]
fn crafted_keyed_record_in_a_version_1_segment_is_refused() {
    let dir = crafted(1, |_| {});
    match open_plain(dir.path()) {
        Err(Error::Corrupt { .. }) | Err(Error::UnsupportedFormat { .. }) => {}
        Err(other) => panic!("unexpected error {other:?}"),
        Ok(s) => {
            let replay =
                s.append_with_blocking(&ex("ex"), &tn("t"), vec![paused("a")], keyed("k1"));
            panic!(
                "a version 1 segment with form-02 records opened; a retry of its key answers {replay:?}"
            );
        }
    }
}

#[test]
fn crafted_keyed_record_in_a_version_1_segment_serves_nothing_wrong() {
    // Whatever open decides, it must not panic, and if it serves the store, the keys
    // must answer exactly as they would in a version 2 segment.
    let dir = crafted(1, |_| {});
    if let Ok(s) = open_plain(dir.path()) {
        let o = s
            .append_with_blocking(
                &ex("ex"),
                &tn("t"),
                vec![paused("b"), paused("c")],
                keyed("k2"),
            )
            .unwrap();
        assert_eq!(
            (o.first_sequence, o.last_sequence, o.replayed),
            (2, 3, true)
        );
        // The next append goes to a new (version 2) segment.
        s.append_with_blocking(&ex("ex"), &tn("t"), vec![paused("n")], keyed("k3"))
            .unwrap();
        drop(s);
        let seg2 = fs::read(dir.path().join("0000000002.seg")).unwrap();
        assert_eq!(u32::from_le_bytes(seg2[8..12].try_into().unwrap()), 2);
    }
}

#[test]
fn crafted_declaration_on_a_later_sequence_is_refused() {
    let dir = crafted(2, |s| {
        s.batch(
            0,
            &[body(&Prefix::Keyed(Some(("other", "t2")), b"k9"), "d")],
        );
    });
    assert_corrupt(open_plain(dir.path()), "form 02 declaring on sequence 4");
}

fn declared_later() -> tempfile::TempDir {
    // Form 02 whose declaration names another execution and tenant, on sequence 4;
    // form 01 doing the same on sequence 5.
    crafted(2, |s| {
        s.batch(
            0,
            &[body(&Prefix::Keyed(Some(("other", "t2")), b"k9"), "d")],
        );
        s.batch(0, &[body(&Prefix::Declared("other2", "t2"), "e")]);
    })
}

fn check_declared_later(s: &LogStore) {
    assert!(s.load_events_blocking(&ex("other")).unwrap().is_empty());
    assert!(s.load_events_blocking(&ex("other2")).unwrap().is_empty());
    assert!(
        s.list_executions_blocking(&tn("t2"), 10, 0)
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.execution_tenant_blocking(&ex("other")).unwrap(), None);
    let events = s.load_events_blocking(&ex("ex")).unwrap();
    assert_eq!(events.len(), 6);
    assert!(
        events
            .iter()
            .all(|e| e.tenant_id == tn("t") && e.execution_id == ex("ex"))
    );
    let o = s
        .append_with_blocking(&ex("ex"), &tn("t"), vec![paused("d")], keyed("k9"))
        .unwrap();
    assert_eq!((o.first_sequence, o.replayed), (4, true));
}

#[test]
fn crafted_declaration_on_a_later_sequence_never_serves_another_execution() {
    // If open accepts such records, nothing may appear under the declared ids, and
    // keys still answer for "ex" only: after a full scan and through a checkpoint.
    let dir = declared_later();
    let Ok(s) = open_plain(dir.path()) else {
        return;
    };
    check_declared_later(&s);
    drop(s);
    let s = LogStore::open(dir.path()).unwrap();
    s.close().unwrap();
    drop(s);
    let s = LogStore::open(dir.path()).unwrap();
    check_declared_later(&s);
    // A retry under the declared execution is a new append there, not a replay.
    let o = s
        .append_with_blocking(&ex("other"), &tn("t2"), vec![paused("d")], keyed("k9"))
        .unwrap();
    assert_eq!((o.first_sequence, o.replayed), (1, false));
}

#[test]
fn crafted_keyed_body_with_trailing_bytes_is_corrupt_for_a_retry() {
    let dir = crafted(2, |s| {
        let mut b = body(&Prefix::Keyed(None, b"kt"), "t");
        b.extend([0xAA, 0xBB, 0xCC]);
        s.batch(0, &[b]);
    });
    let s = open_plain(dir.path()).unwrap();
    let retry = s.append_with_blocking(&ex("ex"), &tn("t"), vec![paused("t")], keyed("kt"));
    assert!(
        matches!(retry, Err(Error::Corrupt { .. })),
        "retry over a damaged keyed record: {retry:?}"
    );
}

#[test]
fn crafted_keyed_body_with_trailing_bytes_is_never_replayed() {
    let dir = crafted(2, |s| {
        let mut b = body(&Prefix::Keyed(None, b"kt"), "t");
        b.extend([0xAA, 0xBB, 0xCC]);
        s.batch(0, &[b]);
    });
    // Open may accept it (recovery decodes prefixes only), reads must refuse it.
    let Ok(s) = open_plain(dir.path()) else {
        return;
    };
    assert!(matches!(
        s.load_events_blocking(&ex("ex")),
        Err(Error::Corrupt { .. })
    ));
    let retry = s.append_with_blocking(&ex("ex"), &tn("t"), vec![paused("t")], keyed("kt"));
    assert!(
        retry.is_err(),
        "a damaged record answered a retry: {retry:?}"
    );
    assert!(!s.verify(|_, _| {}).is_clean());
}

#[test]
fn crafted_forged_body_lengths_never_panic() {
    // body_len far past the file, CRC wrong (it cannot be right): in the middle of the
    // log, and as the last record. Either way: Corrupt, or a cut tail; never a panic.
    for last in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Seg::new(2, 1);
        s.batch(0, &[body(&Prefix::Keyed(Some(("ex", "t")), b"k1"), "a")]);
        let at = s.bytes.len();
        s.batch(0, &[body(&Prefix::Keyed(None, b"k2"), "b")]);
        if !last {
            s.batch(0, &[body(&Prefix::Plain, "c")]);
        }
        s.bytes[at + 4..at + 8].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        s.write(dir.path());
        let r = std::panic::catch_unwind(|| open_plain(dir.path()).map(|s| s.stats().events));
        match r {
            Err(_) => panic!("open panicked on a forged body length (last = {last})"),
            Ok(Ok(events)) => {
                assert!(last, "damage in the middle of the log was served");
                assert_eq!(events, 1);
                let s = open_plain(dir.path()).unwrap();
                let o = s
                    .append_with_blocking(&ex("ex"), &tn("t"), vec![paused("b")], keyed("k2"))
                    .unwrap();
                assert!(!o.replayed, "the cut record's key answered a retry");
            }
            Ok(Err(Error::Corrupt { .. })) => {}
            Ok(Err(other)) => panic!("unexpected error {other:?}"),
        }
    }
    // A body length that swallows the next record, CRC recomputed over it: the keyed
    // record's event then has trailing bytes, and the swallowed record is gone.
    let dir = tempfile::tempdir().unwrap();
    let mut s = Seg::new(2, 1);
    s.batch(0, &[body(&Prefix::Keyed(Some(("ex", "t")), b"k1"), "a")]);
    let at = s.bytes.len();
    s.batch(0, &[body(&Prefix::Keyed(None, b"k2"), "b")]);
    let next = s.bytes.len();
    s.batch(0, &[body(&Prefix::Plain, "c")]);
    let end = s.bytes.len();
    let new_len = (end - at - 56) as u32;
    s.bytes[at + 4..at + 8].copy_from_slice(&new_len.to_le_bytes());
    let crc = crc32fast::hash(&s.bytes[at + 4..end]);
    s.bytes[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    assert!(next < end);
    s.write(dir.path());
    let r = std::panic::catch_unwind(|| {
        let Ok(s) = open_plain(dir.path()) else {
            return;
        };
        let retry = s.append_with_blocking(&ex("ex"), &tn("t"), vec![paused("b")], keyed("k2"));
        assert!(
            !matches!(retry, Ok(o) if o.replayed),
            "a swallowed record replayed: {retry:?}"
        );
    });
    assert!(r.is_ok(), "panicked on a swallowing body length");
}

// ---------------------------------------------------------------------------------
// Forged checkpoints over keyed records
// ---------------------------------------------------------------------------------

const CHECKPOINT: &str = "checkpoint.idx";

struct Forgery {
    prefix: Vec<u8>,
    executions: Vec<ForgedExec>,
    /// Layout 2's list of deleted executions, unchanged.
    suffix: Vec<u8>,
}

struct ForgedExec {
    tenant: u32,
    durable_seq: u64,
    durable_pos: [u8; 8],
    id: String,
    entries: Vec<[u8; 8]>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

impl Forgery {
    fn read(dir: &Path) -> Forgery {
        let bytes = fs::read(dir.join(CHECKPOINT)).unwrap();
        let stride = u64::from(u32_at(&bytes, 12));
        let (segments, tenants, executions) = (
            u32_at(&bytes, 24) as usize,
            u32_at(&bytes, 28),
            u32_at(&bytes, 32),
        );
        let mut at = 40 + 12 * segments;
        for _ in 0..tenants {
            at += 4 + u32_at(&bytes, at) as usize;
        }
        let prefix = bytes[..at].to_vec();
        let mut execs = Vec::new();
        for _ in 0..executions {
            let tenant = u32_at(&bytes, at);
            let durable_seq = u64_at(&bytes, at + 4);
            let durable_pos = bytes[at + 12..at + 20].try_into().unwrap();
            let len = u32_at(&bytes, at + 20) as usize;
            let id = String::from_utf8(bytes[at + 24..at + 24 + len].to_vec()).unwrap();
            at += 24 + len;
            let n = (durable_seq - 1) / stride + 1;
            let entries = (0..n as usize)
                .map(|k| bytes[at + 8 * k..at + 8 * k + 8].try_into().unwrap())
                .collect();
            at += 8 * n as usize;
            execs.push(ForgedExec {
                tenant,
                durable_seq,
                durable_pos,
                id,
                entries,
            });
        }
        // Layout 3 ends with the deleted executions (a count, then their numbers), the
        // directory (28 bytes per execution) and its trailer (12 bytes).
        assert_eq!(u32_at(&bytes, 8), 3, "checkpoint layout");
        let deleted = u32_at(&bytes, at) as usize;
        let suffix = bytes[at..at + 4 + 4 * deleted + 28 * execs.len() + 12].to_vec();
        assert_eq!(
            at + suffix.len() + 4,
            bytes.len(),
            "the test parses the whole checkpoint"
        );
        Forgery {
            prefix,
            executions: execs,
            suffix,
        }
    }

    fn write(&self, dir: &Path) {
        let mut out = self.prefix.clone();
        for e in &self.executions {
            out.extend(e.tenant.to_le_bytes());
            out.extend(e.durable_seq.to_le_bytes());
            out.extend(e.durable_pos);
            out.extend((e.id.len() as u32).to_le_bytes());
            out.extend(e.id.as_bytes());
            for entry in &e.entries {
                out.extend(entry);
            }
        }
        out.extend(&self.suffix);
        out.extend([0; 4]);
        // The directory, its trailer and the CRC, made to match.
        execlog::forgery::reseal_checkpoint(&mut out);
        fs::write(dir.join(CHECKPOINT), out).unwrap();
    }
}

/// Two executions of one tenant with the same shape (so that swapping their ids in
/// the checkpoint passes every per-execution count), each with keyed appends whose
/// keys are the same on both and whose events differ.
fn keyed_pair_store() -> (tempfile::TempDir, Vec<(String, String, AppendOutcome)>) {
    let dir = tempfile::tempdir().unwrap();
    let s = LogStore::open_with(dir.path(), Options::default().index_stride(4)).unwrap();
    let mut outcomes = Vec::new();
    for round in 0..6 {
        for id in ["run-a", "run-b"] {
            let key = format!("key-{round}");
            let events = vec![
                paused(&format!("{id}/{round}/0")),
                paused(&format!("{id}/{round}/1")),
            ];
            let o = s
                .append_with_blocking(&ex(id), &tn("t"), events, keyed(&key))
                .unwrap();
            outcomes.push((id.to_string(), key, o));
        }
    }
    s.close().unwrap();
    (dir, outcomes)
}

fn check_pair_replays(s: &LogStore, outcomes: &[(String, String, AppendOutcome)]) {
    for (id, key, o) in outcomes {
        let round: usize = key["key-".len()..].parse().unwrap();
        let events = vec![
            paused(&format!("{id}/{round}/0")),
            paused(&format!("{id}/{round}/1")),
        ];
        let again = s
            .append_with_blocking(&ex(id), &tn("t"), events.clone(), keyed(key))
            .unwrap();
        assert_eq!(again, replay_of(*o), "{id} {key}");
        assert_stored(s, &ex(id), again, &events);
        // The other execution's events under this key conflict, never replay.
        let other = if id == "run-a" { "run-b" } else { "run-a" };
        let theirs = vec![
            paused(&format!("{other}/{round}/0")),
            paused(&format!("{other}/{round}/1")),
        ];
        let r = s.append_with_blocking(&ex(id), &tn("t"), theirs, keyed(key));
        assert!(matches!(r, Err(Error::IdempotencyConflict)), "{r:?}");
    }
}

#[test]
fn forged_checkpoint_swapping_keyed_executions_is_ignored() {
    let (dir, outcomes) = keyed_pair_store();
    let mut f = Forgery::read(dir.path());
    let (a, b) = (
        f.executions.iter().position(|e| e.id == "run-a").unwrap(),
        f.executions.iter().position(|e| e.id == "run-b").unwrap(),
    );
    f.executions[a].id = "run-b".into();
    f.executions[b].id = "run-a".into();
    f.write(dir.path());
    let s = LogStore::open(dir.path()).unwrap();
    assert!(
        s.recovery_report().checkpoint_ignored.is_some(),
        "forged checkpoint used"
    );
    check_pair_replays(&s, &outcomes);
}

#[test]
fn forged_checkpoint_with_a_wrong_stride_or_cut_end_is_ignored_and_keys_still_answer() {
    let (dir, outcomes) = keyed_pair_store();
    // Lower run-a's durable sequence by one batch (pointing at its record before):
    // the keyed batch past it must not disappear, nor its key.
    let mut f = Forgery::read(dir.path());
    let a = f.executions.iter().position(|e| e.id == "run-a").unwrap();
    f.executions[a].durable_seq -= 2;
    f.write(dir.path());
    let s = LogStore::open(dir.path()).unwrap();
    assert!(s.recovery_report().checkpoint_ignored.is_some());
    check_pair_replays(&s, &outcomes);
}

#[test]
fn a_stale_checkpoint_before_keyed_appends_still_finds_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut outcomes = Vec::new();
    {
        let s = LogStore::open(dir.path()).unwrap();
        for i in 0..20 {
            let k = format!("early-{i}");
            let o = s
                .append_with_blocking(&ex("st"), &tn("t"), vec![paused(&k)], keyed(&k))
                .unwrap();
            outcomes.push((k, o));
        }
        s.close().unwrap();
    }
    let stale = fs::read(dir.path().join(CHECKPOINT)).unwrap();
    {
        let s = LogStore::open(dir.path()).unwrap();
        for i in 0..20 {
            let k = format!("late-{i}");
            let o = s
                .append_with_blocking(&ex("st"), &tn("t"), vec![paused(&k)], keyed(&k))
                .unwrap();
            outcomes.push((k, o));
        }
        s.close().unwrap();
    }
    fs::write(dir.path().join(CHECKPOINT), stale).unwrap();
    let s = LogStore::open(dir.path()).unwrap();
    let report = s.recovery_report();
    assert!(
        report.checkpoint_ignored.is_none() && report.checkpoint_bytes > 0,
        "{report:?}"
    );
    assert_eq!(s.stats().idempotency_keys, 40);
    for (k, o) in &outcomes {
        let again = s
            .append_with_blocking(&ex("st"), &tn("t"), vec![paused(k)], keyed(k))
            .unwrap();
        assert_eq!(again, replay_of(*o), "{k}");
    }
}

// ---------------------------------------------------------------------------------
// Crashes: SIGKILL
// ---------------------------------------------------------------------------------

const KILL_EXECS: u64 = 6;

fn kill_tenant(x: u64) -> TenantId {
    TenantId::from(format!("kt-{}", x % 2))
}

#[test]
fn kill_child_keyed_writer() {
    // Runs only as the child of `killed_keyed_writers_retry_to_their_outcome`.
    let Ok(dir) = std::env::var("EXECLOG_ADV13_CHILD") else {
        return;
    };
    let Ok(store) = LogStore::open_with(&dir, writer::options()) else {
        return;
    };
    let store = Arc::new(store);
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let nonce = std::process::id();
    let threads: Vec<_> = (0..8u64)
        .map(|w| {
            let (store, out) = (store.clone(), out.clone());
            std::thread::spawn(move || {
                let mut x = (u64::from(nonce) << 8) ^ w ^ 0x9E37_79B9;
                for n in 0.. {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let xe = x % KILL_EXECS;
                    let e = ExecutionId::from(format!("kx-{xe}"));
                    let t = kill_tenant(xe);
                    let len = 1 + (x >> 8) as usize % 4;
                    let key = format!("{nonce}-{w}-{n}");
                    let events: Vec<_> = (0..len).map(|i| writer::event(&key, len, i)).collect();
                    {
                        let mut out = out.lock();
                        if writeln!(out, "SENT {xe} {key} {len}").is_err() || out.flush().is_err() {
                            return;
                        }
                    }
                    let Ok(o) = store.append_with_blocking(&e, &t, events.clone(), keyed(&key))
                    else {
                        return;
                    };
                    let mut bad = o.replayed;
                    if (x >> 16) % 4 == 0 {
                        match store.append_with_blocking(&e, &t, events, keyed(&key)) {
                            Ok(again) => bad |= again != replay_of(o),
                            Err(_) => return,
                        }
                    }
                    let mut out = out.lock();
                    let line = if bad {
                        format!("BAD {xe} {key} {o:?}")
                    } else {
                        format!(
                            "ACK {xe} {key} {len} {} {}",
                            o.first_sequence, o.last_sequence
                        )
                    };
                    if writeln!(out, "{line}").is_err() || out.flush().is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

struct Sent {
    exec: u64,
    len: usize,
    acked: Option<(u64, u64)>,
}

#[test]
fn killed_keyed_writers_retry_to_their_outcome() {
    let trials: u64 = std::env::var("EXECLOG_ADV_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let dir = tempfile::tempdir().unwrap();
    let mut sent: HashMap<String, Sent> = HashMap::new();
    let mut rng = 0x2545_F491_4F6C_DD1D_u64 ^ u64::from(std::process::id());
    let (mut acks, mut unacked_stored, mut unacked_new) = (0usize, 0usize, 0usize);
    for trial in 0..trials {
        let mut child = writer::spawn(
            "kill_child_keyed_writer",
            "EXECLOG_ADV13_CHILD",
            dir.path(),
            256 * 1024,
        );
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                if line.ends_with('\n') {
                    lines.push(line.trim_end().to_string());
                }
                line.clear();
            }
            lines
        });
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(60 + rng % 240));
        child.kill().unwrap();
        child.wait().unwrap();
        for line in reader.join().unwrap() {
            // libtest prints "test <name> ... " before the test's first line.
            let line = ["SENT ", "ACK ", "BAD "]
                .iter()
                .filter_map(|m| line.find(m))
                .min()
                .map_or(line.as_str(), |at| &line[at..]);
            let p: Vec<&str> = line.split(' ').collect();
            match p[0] {
                "SENT" => {
                    sent.insert(
                        p[2].to_string(),
                        Sent {
                            exec: p[1].parse().unwrap(),
                            len: p[3].parse().unwrap(),
                            acked: None,
                        },
                    );
                }
                "ACK" => {
                    let s = sent
                        .get_mut(p[2])
                        .unwrap_or_else(|| panic!("ACK without SENT: {line}"));
                    s.acked = Some((p[4].parse().unwrap(), p[5].parse().unwrap()));
                    acks += 1;
                }
                "BAD" => panic!("trial {trial}: child saw {line}"),
                _ => {}
            }
        }
        let store = LogStore::open_with(dir.path(), writer::options()).unwrap();
        for (key, s) in &mut sent {
            let e = ExecutionId::from(format!("kx-{}", s.exec));
            let events: Vec<_> = (0..s.len).map(|i| writer::event(key, s.len, i)).collect();
            let r = store
                .append_with_blocking(&e, &kill_tenant(s.exec), events.clone(), keyed(key))
                .unwrap_or_else(|err| panic!("trial {trial}: retry of {key}: {err}"));
            match s.acked {
                Some((first, last)) => assert_eq!(
                    (r.first_sequence, r.last_sequence, r.replayed),
                    (first, last, true),
                    "trial {trial}: retry of acknowledged {key}"
                ),
                None => {
                    if r.replayed {
                        unacked_stored += 1;
                    } else {
                        unacked_new += 1;
                    }
                    s.acked = Some((r.first_sequence, r.last_sequence));
                }
            }
            assert_stored(&store, &e, r, &events);
        }
        // Every stored batch is a known key, exactly once.
        for x in 0..KILL_EXECS {
            let e = ExecutionId::from(format!("kx-{x}"));
            let events = store.load_events_blocking(&e).unwrap();
            let mut seen: HashMap<String, u64> = HashMap::new();
            for ev in &events {
                let ExecutionEventData::ToolCallCompleted {
                    step_id: Some(tag), ..
                } = &ev.event
                else {
                    panic!("unexpected event");
                };
                *seen.entry(tag.to_string()).or_default() += 1;
            }
            for (tag, count) in seen {
                let s = sent
                    .get(&tag)
                    .unwrap_or_else(|| panic!("unknown batch {tag}"));
                assert_eq!(
                    count, s.len as u64,
                    "trial {trial}: {tag} stored {count} events"
                );
            }
        }
        drop(store);
    }
    assert!(acks > 0, "the child acknowledged nothing");
    println!(
        "{trials} kills: {acks} acknowledged keyed appends replayed; {unacked_stored} sent-unacknowledged found stored, {unacked_new} stored by their retry"
    );
}

// ---------------------------------------------------------------------------------
// Crashes: simulated power loss with keyed appends
// ---------------------------------------------------------------------------------

fn power_event(key: &str, len: usize, i: usize, size: usize) -> ExecutionEventData {
    ExecutionEventData::StepCompleted {
        step_id: StepId::from(key),
        output: Some(format!("{i}:{}", "p".repeat(size))),
        duration_ms: len as u64,
    }
}

fn power_options(io: &SimIo, bits: u32) -> Options {
    Options::default()
        .segment_size_bytes(64 * 1024)
        .index_stride(3)
        .grow_group_min_bytes(8 * 1024)
        .idempotency_hash_bits(bits)
        .io(Arc::new(io.clone()))
}

struct Keyed {
    exec: usize,
    key: String,
    events: Vec<ExecutionEventData>,
    outcome: Option<AppendOutcome>,
}

fn retry(s: &LogStore, execs: &[ExecutionId], k: &Keyed) -> Result<AppendOutcome> {
    s.append_with_blocking(&execs[k.exec], &tn("t"), k.events.clone(), keyed(&k.key))
}

/// Runs one seed; returns (acknowledged keys replayed after the cut, unacknowledged
/// keys found stored, unacknowledged keys stored by their retry).
fn keyed_power_seed(seed: u64) -> (usize, usize, usize) {
    let mut tally = (0, 0, 0);
    let dir = Path::new("/store");
    let sim = SimIo::new();
    let mut rng = Rng::new(seed ^ 0xAD13);
    let bits = if seed.is_multiple_of(3) { 0 } else { 64 };
    sim.cut_power_at(1 + rng.below(300));
    sim.seed_writeback_errors(seed);
    if rng.below(2) == 0 {
        sim.also_fail_at(1 + rng.below(40), Op::Sync, Fault::Once);
    }
    let execs: Vec<ExecutionId> = (0..3).map(|i| ex(&format!("p{i}"))).collect();
    let mut all: Vec<Keyed> = Vec::new();
    let mut store = LogStore::open_with(dir, power_options(&sim, bits)).ok();
    let ctx = format!("seed {seed} (EXECLOG_ADV_POWER_SEED={seed})");
    for op in 0..80 {
        let Some(s) = &store else { break };
        let roll = rng.below(10);
        let poisoned = if roll <= 1 && !all.is_empty() {
            // Retry an earlier keyed append: acknowledged ones must replay their
            // outcome; unacknowledged ones replay what is stored or store now.
            let k = rng.below(all.len() as u64) as usize;
            match retry(s, &execs, &all[k]) {
                Ok(o) => {
                    match all[k].outcome {
                        Some(acked) => assert_eq!(o, replay_of(acked), "{ctx}: {}", all[k].key),
                        None => all[k].outcome = Some(o),
                    }
                    // Read back what the answer names (a dead machine fails the read).
                    match s.read_range_blocking(&execs[all[k].exec], o.first_sequence - 1, 8) {
                        Ok(stored) => {
                            let got: Vec<_> = stored.into_iter().map(|x| x.event).collect();
                            assert!(
                                got.starts_with(&all[k].events),
                                "{ctx}: {o:?} is not {}",
                                all[k].key
                            );
                            false
                        }
                        Err(Error::Io { .. }) => true,
                        Err(other) => panic!("{ctx}: read failed with {other:?}"),
                    }
                }
                // A dead machine fails reads too (a retry reads the candidate).
                Err(Error::Poisoned { .. } | Error::Io { .. }) => true,
                Err(other) => panic!("{ctx}: retry failed with {other:?}"),
            }
        } else if roll == 2 {
            true
        } else {
            let len = 1 + rng.below(4) as usize;
            let key = format!("{seed}-{op}");
            let events: Vec<_> = (0..len)
                .map(|i| power_event(&key, len, i, rng.below(2500) as usize))
                .collect();
            let exec = rng.below(execs.len() as u64) as usize;
            let r = s.append_with_blocking(&execs[exec], &tn("t"), events.clone(), keyed(&key));
            let (outcome, poisoned) = match r {
                Ok(o) => {
                    assert!(!o.replayed, "{ctx}: a fresh key replayed");
                    (Some(o), false)
                }
                Err(Error::Poisoned { cause, .. }) => {
                    assert!(!cause.contains("panicked"), "{ctx}: {cause}");
                    (None, true)
                }
                // With colliding hashes a new key reads candidates: a dead machine
                // fails that read (nothing was queued).
                Err(Error::Io { .. }) if bits == 0 => (None, true),
                Err(other) => panic!("{ctx}: append failed with {other:?}"),
            };
            all.push(Keyed {
                exec,
                key,
                events,
                outcome,
            });
            poisoned
        };
        if poisoned {
            // Reopen in the same boot (after a failure, or just because).
            drop(store.take());
            store = LogStore::open_with(dir, power_options(&sim, bits)).ok();
        }
    }
    let after = sim.power_loss(rng.next_u64());
    drop(store);
    let store = LogStore::open_with(dir, power_options(&after, bits))
        .unwrap_or_else(|e| panic!("{ctx}: reopen after power loss failed: {e}"));
    for k in &mut all {
        let o = retry(&store, &execs, k)
            .unwrap_or_else(|e| panic!("{ctx}: retry of {} after the cut: {e}", k.key));
        match k.outcome {
            Some(acked) => {
                assert_eq!(o, replay_of(acked), "{ctx}: {} after the cut", k.key);
                tally.0 += 1;
            }
            None if o.replayed => {
                tally.1 += 1;
                k.outcome = Some(o);
            }
            None => {
                tally.2 += 1;
                k.outcome = Some(o);
            }
        }
        assert_stored(&store, &execs[k.exec], o, &k.events);
    }
    // Each key's batch is stored exactly once.
    for (x, e) in execs.iter().enumerate() {
        let events = store.load_events_blocking(e).unwrap();
        let mut count: HashMap<String, usize> = HashMap::new();
        for ev in &events {
            let ExecutionEventData::StepCompleted { step_id, .. } = &ev.event else {
                panic!("{ctx}: unexpected event");
            };
            *count.entry(step_id.to_string()).or_default() += 1;
        }
        for k in all.iter().filter(|k| k.exec == x) {
            assert_eq!(
                count.get(&k.key).copied().unwrap_or(0),
                k.events.len(),
                "{ctx}: {} stored other than once",
                k.key
            );
        }
        assert_eq!(
            count.values().sum::<usize>(),
            events.len(),
            "{ctx}: events of unknown batches"
        );
    }
    tally
}

#[test]
fn power_loss_keeps_every_acknowledged_key_answering() {
    if let Ok(seed) = std::env::var("EXECLOG_ADV_POWER_SEED") {
        keyed_power_seed(seed.parse().unwrap());
        return;
    }
    let base: u64 = std::env::var("EXECLOG_ADV_POWER_BASE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let seeds: u64 = std::env::var("EXECLOG_ADV_POWER_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let mut tally = (0, 0, 0);
    for seed in base..base + seeds {
        let t = keyed_power_seed(seed);
        tally = (tally.0 + t.0, tally.1 + t.1, tally.2 + t.2);
    }
    println!(
        "{seeds} simulated power losses with keyed appends: {} acknowledged keys replayed after the cut, {} unacknowledged found stored, {} stored by their retry",
        tally.0, tally.1, tally.2
    );
}

// ---------------------------------------------------------------------------------
// Races
// ---------------------------------------------------------------------------------

#[derive(Default)]
struct RaceModel {
    /// (execution, key) -> (variant, outcome) of every `Ok`.
    keyed: HashMap<(String, String), (u8, AppendOutcome)>,
    /// (execution, key, variant) answered with `IdempotencyConflict`.
    conflicts: Vec<(String, String, u8)>,
    /// Plain appends that returned `Ok`: tag -> (execution, first, len).
    plain: HashMap<String, (String, u64, usize)>,
    /// Executions created with unkeyed `NoExecution`: how many succeeded.
    created: HashMap<String, usize>,
    /// Executions created with keyed `NoExecution`: how many stored (not replayed).
    created_keyed: HashMap<String, (usize, usize)>,
}

fn key_events(exec: &str, key: &str, v: u8) -> Vec<ExecutionEventData> {
    let len = 1 + (exec.len() + key.len()) % 3 + usize::from(v);
    (0..len)
        .map(|i| paused(&format!("K|{exec}|{key}|{v}|{i}|{len}")))
        .collect()
}

fn plain_events(tag: &str, len: usize) -> Vec<ExecutionEventData> {
    (0..len)
        .map(|i| paused(&format!("P|{tag}|{i}|{len}")))
        .collect()
}

fn race_thread(store: &LogStore, model: &Mutex<RaceModel>, w: u64, ops: u64) {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (w + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
    let t = tn("t");
    for n in 0..ops {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let exec = format!("r{}", x % 4);
        let e = ex(&exec);
        match (x >> 8) % 9 {
            0..=2 => {
                let key = format!("k{}", (x >> 16) % 30);
                let v = u8::from((x >> 24).is_multiple_of(4));
                let events = key_events(&exec, &key, v);
                let expected = match (x >> 28) % 6 {
                    0 => ExpectedSequence::NoExecution,
                    1 => ExpectedSequence::Exactly((x >> 32) % 40),
                    _ => ExpectedSequence::Any,
                };
                let options = AppendOptions::expect(expected).with_key(key.clone());
                match store.append_with_blocking(&e, &t, events, options) {
                    Ok(o) => {
                        let mut m = model.lock();
                        let entry = m.keyed.entry((exec.clone(), key.clone())).or_insert((v, o));
                        assert_eq!(entry.0, v, "{exec}/{key}: both variants got Ok");
                        assert_eq!(
                            (entry.1.first_sequence, entry.1.last_sequence),
                            (o.first_sequence, o.last_sequence),
                            "{exec}/{key}: two outcomes"
                        );
                    }
                    Err(Error::IdempotencyConflict) => model.lock().conflicts.push((exec, key, v)),
                    Err(Error::WrongExpectedSequence { .. }) => {
                        assert_ne!(expected, ExpectedSequence::Any);
                    }
                    Err(other) => panic!("keyed append: {other:?}"),
                }
            }
            3 => {
                let latest = store.get_latest_sequence_blocking(&e).unwrap();
                let tag = format!("x{w}-{n}");
                let events = plain_events(&tag, 1 + (x >> 20) as usize % 3);
                let len = events.len();
                let options = AppendOptions::expect(ExpectedSequence::Exactly(latest.unwrap_or(0)));
                match store.append_with_blocking(&e, &t, events, options) {
                    Ok(o) => {
                        assert_eq!(o.first_sequence, latest.unwrap_or(0) + 1);
                        assert!(!o.replayed);
                        model
                            .lock()
                            .plain
                            .insert(tag, (exec, o.first_sequence, len));
                    }
                    Err(Error::WrongExpectedSequence { actual, .. }) => {
                        let actual = actual.expect("an execution read as existing vanished");
                        assert!(actual > latest.unwrap_or(0), "{actual} <= {latest:?}");
                    }
                    Err(other) => panic!("Exactly append: {other:?}"),
                }
            }
            4 => {
                let exec = format!("nu{}", (x >> 16) % 12);
                let tag = format!("nu{w}-{n}");
                let r = store.append_with_blocking(
                    &ex(&exec),
                    &t,
                    plain_events(&tag, 1),
                    AppendOptions::expect(ExpectedSequence::NoExecution),
                );
                match r {
                    Ok(o) => {
                        assert_eq!(o.first_sequence, 1);
                        let mut m = model.lock();
                        *m.created.entry(exec.clone()).or_default() += 1;
                        m.plain.insert(tag, (exec, 1, 1));
                    }
                    Err(Error::WrongExpectedSequence { actual, .. }) => {
                        assert!(actual.is_some_and(|a| a >= 1));
                    }
                    Err(other) => panic!("NoExecution append: {other:?}"),
                }
            }
            5 => {
                let exec = format!("nk{}", (x >> 16) % 12);
                let options =
                    AppendOptions::expect(ExpectedSequence::NoExecution).with_key("create");
                let o = store
                    .append_with_blocking(
                        &ex(&exec),
                        &t,
                        vec![paused(&format!("C|{exec}"))],
                        options,
                    )
                    .unwrap();
                assert_eq!((o.first_sequence, o.last_sequence), (1, 1));
                let mut m = model.lock();
                let c = m.created_keyed.entry(exec).or_default();
                c.0 += 1;
                c.1 += usize::from(!o.replayed);
            }
            6 => {
                // Another tenant's execution: always refused, whatever the key.
                let r = store.append_with_blocking(
                    &ex("r-other"),
                    &t,
                    vec![paused("never")],
                    keyed(&format!("k{}", (x >> 16) % 30)),
                );
                assert!(matches!(r, Err(Error::TenantMismatch { .. })), "{r:?}");
            }
            7 => {
                let tag = format!("b{w}-{n}");
                let events = plain_events(&tag, 1 + (x >> 20) as usize % 4);
                let len = events.len();
                let first = store.append_batch_blocking(&e, &t, events).unwrap();
                model.lock().plain.insert(tag, (exec, first, len));
            }
            _ => {
                let tag = format!("d{w}-{n}");
                let events = plain_events(&tag, 1);
                let o = store
                    .append_with_blocking(&e, &t, events, AppendOptions::default())
                    .unwrap();
                assert!(!o.replayed);
                model.lock().plain.insert(tag, (exec, o.first_sequence, 1));
            }
        }
    }
}

fn check_race_model(store: &LogStore, m: &RaceModel) {
    // Runs of one append's events: tag -> (execution, first sequence, count).
    let mut runs: HashMap<String, (String, u64, usize)> = HashMap::new();
    let mut execs: Vec<String> = (0..4).map(|i| format!("r{i}")).collect();
    execs.extend((0..12).map(|i| format!("nu{i}")));
    execs.extend((0..12).map(|i| format!("nk{i}")));
    for exec in &execs {
        let events = store.load_events_blocking(&ex(exec)).unwrap();
        let mut prev_tag: Option<String> = None;
        for ev in &events {
            let r = reason(ev);
            let tag = match r.split('|').collect::<Vec<_>>().as_slice() {
                ["K", e, k, v, _, _] => format!("K|{e}|{k}|{v}"),
                ["P", t, _, _] => format!("P|{t}"),
                ["C", e] => format!("C|{e}"),
                other => panic!("unexpected event {other:?}"),
            };
            if prev_tag.as_deref() == Some(tag.as_str()) {
                runs.get_mut(&tag).unwrap().2 += 1;
            } else {
                let old = runs.insert(tag.clone(), (exec.clone(), ev.sequence, 1));
                assert!(
                    old.is_none(),
                    "{tag} stored twice (again at {} of {exec})",
                    ev.sequence
                );
            }
            prev_tag = Some(tag);
        }
    }
    for ((exec, key), (v, o)) in &m.keyed {
        let tag = format!("K|{exec}|{key}|{v}");
        let run = runs
            .get(&tag)
            .unwrap_or_else(|| panic!("{tag}: acknowledged, not stored"));
        assert_eq!(
            (run.1, run.2 as u64),
            (o.first_sequence, o.last_sequence - o.first_sequence + 1),
            "{tag}"
        );
        let other = format!("K|{exec}|{key}|{}", 1 - v);
        assert!(
            !runs.contains_key(&other),
            "{exec}/{key}: both variants stored"
        );
    }
    for (exec, key, v) in &m.conflicts {
        let stored = m
            .keyed
            .get(&(exec.clone(), key.clone()))
            .map(|x| x.0)
            .or_else(|| (0..2u8).find(|w| runs.contains_key(&format!("K|{exec}|{key}|{w}"))));
        assert!(
            stored.is_some_and(|s| s != *v),
            "{exec}/{key} variant {v}: conflict with nothing or with itself"
        );
    }
    for tag in runs.keys().filter(|t| t.starts_with("K|")) {
        let p: Vec<&str> = tag.split('|').collect();
        assert!(
            m.keyed.contains_key(&(p[1].to_string(), p[2].to_string())),
            "{tag} stored without any Ok"
        );
    }
    for (tag, (exec, first, len)) in &m.plain {
        let run = runs
            .get(&format!("P|{tag}"))
            .unwrap_or_else(|| panic!("{tag} acknowledged, not stored"));
        assert_eq!((&run.0, run.1, run.2), (exec, *first, *len), "{tag}");
    }
    for (exec, n) in &m.created {
        assert_eq!(*n, 1, "{exec}: {n} appends created it with NoExecution");
    }
    for (exec, (_, stored)) in &m.created_keyed {
        assert_eq!(
            *stored, 1,
            "{exec}: {stored} keyed NoExecution appends stored"
        );
        let run = runs.get(&format!("C|{exec}")).map(|r| (r.1, r.2));
        assert_eq!(run, Some((1, 1)), "{exec}: created {run:?}");
    }
    assert!(runs.keys().all(|t| !t.contains("never")));
}

#[test]
fn racing_keyed_exactly_noexecution_and_plain_appends_keep_every_promise() {
    for (round, bits) in [64u32, 0, 64].into_iter().enumerate() {
        let sim = SimIo::new();
        let dir = Path::new("/race");
        let options = || {
            sim_options(&sim)
                .commit_delay_us(300)
                .idempotency_hash_bits(bits)
        };
        let store = Arc::new(LogStore::open_with(dir, options()).unwrap());
        store
            .append_blocking(&ex("r-other"), &tn("t2"), paused("theirs"))
            .unwrap();
        let model = Arc::new(Mutex::new(RaceModel::default()));
        let handles: Vec<_> = (0..8u64)
            .map(|w| {
                let (store, model) = (store.clone(), model.clone());
                std::thread::spawn(move || race_thread(&store, &model, w + 100 * round as u64, 250))
            })
            .collect();
        join_within(handles, Duration::from_secs(120), "race");
        let m = model.lock();
        eprintln!(
            "race round {round} (hash bits {bits}): {} keys, {} conflicts, {} plain, {} created, {} keyed creations",
            m.keyed.len(),
            m.conflicts.len(),
            m.plain.len(),
            m.created.len(),
            m.created_keyed.len()
        );
        check_race_model(&store, &m);
        drop(Arc::into_inner(store).unwrap());
        // Every Ok'd key answers the same after a reopen (checkpoint and full scan).
        for checkpoint in [true, false] {
            let store = LogStore::open_with(dir, options().index_checkpoint(checkpoint)).unwrap();
            for ((exec, key), (v, o)) in &m.keyed {
                let again = store
                    .append_with_blocking(
                        &ex(exec),
                        &tn("t"),
                        key_events(exec, key, *v),
                        keyed(key),
                    )
                    .unwrap();
                assert_eq!(again, replay_of(*o));
            }
            check_race_model(&store, &m);
        }
    }
}

#[test]
fn close_racing_retries_that_wait_for_the_original_never_hangs_nor_lies() {
    // (replays answered, calls refused with Closed)
    let mut tally = (0, 0);
    for round in 0..20u64 {
        let sim = SimIo::new();
        let dir = Path::new("/close");
        let store =
            Arc::new(LogStore::open_with(dir, sim_options(&sim).commit_delay_us(20_000)).unwrap());
        let events = vec![paused("o1"), paused("o2")];
        let mut handles = Vec::new();
        for i in 0..7u64 {
            let (store, events) = (store.clone(), events.clone());
            handles.push(std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(if i == 0 { 0 } else { 3 + i }));
                store.append_with_blocking(&ex("c"), &tn("t"), events, keyed("once"))
            }));
        }
        std::thread::sleep(Duration::from_millis(2 + round % 15));
        store.close().unwrap();
        let results = join_within(handles, Duration::from_secs(30), "close race");
        let oks: Vec<AppendOutcome> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        for r in &results {
            assert!(
                matches!(r, Ok(_) | Err(Error::Closed)),
                "round {round}: {r:?}"
            );
        }
        tally.0 += oks.iter().filter(|o| o.replayed).count();
        tally.1 += results.len() - oks.len();
        let stored = oks.iter().filter(|o| !o.replayed).count();
        assert!(
            stored <= 1,
            "round {round}: {stored} appends stored under one key"
        );
        assert!(
            oks.windows(2)
                .all(|w| (w[0].first_sequence, w[0].last_sequence)
                    == (w[1].first_sequence, w[1].last_sequence)),
            "round {round}: outcomes differ {oks:?}"
        );
        drop(Arc::into_inner(store).unwrap());
        let s = LogStore::open_with(dir, sim_options(&sim)).unwrap();
        let n = s.load_events_blocking(&ex("c")).unwrap().len();
        assert!(n == 0 || n == 2, "round {round}: {n} events");
        if stored == 1 {
            assert_eq!(n, 2, "round {round}: acknowledged append missing");
        }
        let o = s
            .append_with_blocking(&ex("c"), &tn("t"), events.clone(), keyed("once"))
            .unwrap();
        assert_eq!(o.replayed, n == 2, "round {round}");
        if let Some(first) = oks.first() {
            assert_eq!(
                (o.first_sequence, o.last_sequence),
                (first.first_sequence, first.last_sequence)
            );
        }
    }
    eprintln!(
        "close race: {} replays answered, {} calls refused (Closed)",
        tally.0, tally.1
    );
    assert!(
        tally.0 > 0 && tally.1 > 0,
        "the race never met both outcomes"
    );
}

#[test]
fn dropped_retry_futures_while_the_original_is_in_flight_store_once() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sim = SimIo::new();
        let store = Arc::new(
            LogStore::open_with(
                Path::new("/drop"),
                sim_options(&sim).commit_delay_us(100_000),
            )
            .unwrap(),
        );
        let e = ex("d");
        let t = tn("t");
        let events = vec![paused("d1"), paused("d2"), paused("d3")];
        let original = {
            let (store, e, t, events) = (store.clone(), e.clone(), t.clone(), events.clone());
            tokio::spawn(async move { store.append_with(&e, &t, events, keyed("k")).await })
        };
        tokio::time::sleep(Duration::from_millis(2)).await;
        let mut answered = Vec::new();
        let mut dropped = 0;
        let mut i = 0u64;
        // While the original is in flight, and a while after.
        while !original.is_finished() || i < 400 {
            i += 1;
            let f = store.append_with(&e, &t, events.clone(), keyed("k"));
            match i % 3 {
                0 => match tokio::time::timeout(Duration::from_micros(1 + i % 50), f).await {
                    Ok(r) => answered.push(r.unwrap()),
                    Err(_) => dropped += 1,
                },
                1 => tokio::select! {
                    r = f => answered.push(r.unwrap()),
                    () = tokio::task::yield_now() => dropped += 1,
                },
                _ => {
                    // Polled once by hand, then dropped.
                    let mut f = f;
                    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                    match f.as_mut().poll(&mut cx) {
                        std::task::Poll::Ready(r) => answered.push(r.unwrap()),
                        std::task::Poll::Pending => dropped += 1,
                    }
                }
            }
        }
        let o = original.await.unwrap().unwrap();
        assert!(!o.replayed);
        assert!(answered.iter().all(|a| *a == replay_of(o)), "{answered:?}");
        let again = store
            .append_with(&e, &t, events.clone(), keyed("k"))
            .await
            .unwrap();
        assert_eq!(again, replay_of(o));
        assert_eq!(store.load_events(&e).await.unwrap().len(), 3);
        assert_eq!(
            store.stats().queued_bytes,
            0,
            "dropped retries left queue bytes"
        );
        eprintln!(
            "dropped {dropped} retry futures, {} answered",
            answered.len()
        );
        assert!(dropped > 100, "the retries never waited for the original");

        // The README's loop: every attempt dropped after a tiny timeout until one
        // answers; 16 tasks doing it at once with the same key store it once.
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let events = vec![paused("readme")];
                    let (e, t) = (ex("readme"), tn("t"));
                    loop {
                        let f = store.append_with(&e, &t, events.clone(), keyed("step-3"));
                        if let Ok(r) =
                            tokio::time::timeout(Duration::from_micros(5 + i * 7), f).await
                        {
                            break r.unwrap();
                        }
                    }
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(
                tokio::time::timeout(Duration::from_secs(30), t)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        assert!(
            outcomes
                .iter()
                .all(|o| (o.first_sequence, o.last_sequence) == (1, 1))
        );
        assert!(outcomes.iter().filter(|o| !o.replayed).count() <= 1);
        assert_eq!(store.load_events(&ex("readme")).await.unwrap().len(), 1);
    });
}

#[test]
fn a_poisoning_fdatasync_fails_retries_waiting_for_the_original() {
    for round in 0..6u64 {
        let sim = SimIo::new();
        sim.seed_writeback_errors(round);
        let dir = Path::new("/poison");
        let store =
            Arc::new(LogStore::open_with(dir, sim_options(&sim).commit_delay_us(40_000)).unwrap());
        store
            .append_blocking(&ex("p"), &tn("t"), paused("before"))
            .unwrap();
        sim.fail_at(
            1,
            Op::Sync,
            if round % 2 == 0 {
                Fault::Once
            } else {
                Fault::Persistent
            },
        );
        let events = vec![paused("x1"), paused("x2")];
        let mut handles = Vec::new();
        for i in 0..6u64 {
            let (store, events) = (store.clone(), events.clone());
            handles.push(std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(if i == 0 { 0 } else { 5 + i }));
                store.append_with_blocking(&ex("p"), &tn("t"), events, keyed("kp"))
            }));
        }
        // An async retry waiting on the same in-flight original.
        let async_retry = {
            let (store, events) = (store.clone(), events.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(8));
                futures::executor::block_on(store.append_with(
                    &ex("p"),
                    &tn("t"),
                    events,
                    keyed("kp"),
                ))
                .map_err(|e| e.to_string())
            })
        };
        let results = join_within(handles, Duration::from_secs(30), "poison");
        let async_result = join_within(vec![async_retry], Duration::from_secs(30), "poison async");
        for r in &results {
            assert!(
                matches!(r, Err(Error::Poisoned { .. })),
                "round {round}: a retry of a failed append answered {r:?}"
            );
        }
        assert!(
            async_result[0].is_err(),
            "round {round}: {:?}",
            async_result[0]
        );
        drop(Arc::into_inner(store).unwrap());
        sim.clear_faults();
        // Same boot: the failed append is stored or not; a retry tells which, truthfully.
        let s = LogStore::open_with(dir, sim_options(&sim)).unwrap();
        let o = s
            .append_with_blocking(&ex("p"), &tn("t"), events.clone(), keyed("kp"))
            .unwrap();
        assert_eq!((o.first_sequence, o.last_sequence), (2, 3));
        assert_stored(&s, &ex("p"), o, &events);
        assert_eq!(s.load_events_blocking(&ex("p")).unwrap().len(), 3);
    }
}

// ---------------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------------

#[test]
fn hostile_keys_are_validated_by_bytes_and_kept_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (e, t) = (ex("h"), tn("t"));
    let valid = [
        "a".to_string(),
        "a\0".to_string(),
        "\0".to_string(),
        "A".to_string(),
        "\u{e9}".to_string(),   // é precomposed
        "e\u{301}".to_string(), // e + combining acute
        "\u{e9}".repeat(128),   // 256 bytes of 2-byte characters
        format!("{}{}", "a".repeat(252), "\u{1F600}"),
        " ".repeat(256),
    ];
    let invalid = [
        String::new(),
        format!("{}a", "\u{e9}".repeat(128)),
        format!("a{}", "\u{e9}".repeat(128)),
        format!("{}\u{e9}", "a".repeat(255)),
        format!("{}\u{1F600}", "a".repeat(253)),
        "k".repeat(300),
    ];
    let mut outcomes = Vec::new();
    {
        let s = LogStore::open(dir.path()).unwrap();
        for k in &invalid {
            let r = s.append_with_blocking(&e, &t, vec![paused("bad")], keyed(k));
            assert!(
                matches!(r, Err(Error::InvalidArgument(_))),
                "{} bytes: {r:?}",
                k.len()
            );
        }
        assert_eq!(s.get_latest_sequence_blocking(&e).unwrap(), None);
        for (i, k) in valid.iter().enumerate() {
            let o = s
                .append_with_blocking(&e, &t, vec![paused(&format!("v{i}"))], keyed(k))
                .unwrap();
            assert!(!o.replayed, "key {k:?} was taken for another");
            assert_eq!(o.first_sequence, i as u64 + 1);
            outcomes.push(o);
        }
    }
    for checkpoint in [true, false] {
        let s = LogStore::open_with(dir.path(), Options::default().index_checkpoint(checkpoint))
            .unwrap();
        for (i, k) in valid.iter().enumerate() {
            let o = s
                .append_with_blocking(&e, &t, vec![paused(&format!("v{i}"))], keyed(k))
                .unwrap();
            assert_eq!(o, replay_of(outcomes[i]), "key {k:?}");
        }
    }
}

#[test]
fn hostile_expected_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let s = LogStore::open(dir.path()).unwrap();
    let (e, t) = (ex("s"), tn("t"));
    let expect = |x| AppendOptions::expect(x);
    let wrong = |r: Result<AppendOutcome>, actual: Option<u64>| match r {
        Err(Error::WrongExpectedSequence { actual: a, .. }) => assert_eq!(a, actual),
        other => panic!("expected WrongExpectedSequence, got {other:?}"),
    };
    wrong(
        s.append_with_blocking(
            &e,
            &t,
            vec![paused("x")],
            expect(ExpectedSequence::Exactly(u64::MAX)),
        ),
        None,
    );
    wrong(
        s.append_with_blocking(
            &e,
            &t,
            vec![paused("x")],
            expect(ExpectedSequence::Exactly(1)),
        ),
        None,
    );
    let o = s
        .append_with_blocking(
            &e,
            &t,
            vec![paused("x")],
            expect(ExpectedSequence::Exactly(0)),
        )
        .unwrap();
    assert_eq!(o.first_sequence, 1);
    wrong(
        s.append_with_blocking(
            &e,
            &t,
            vec![paused("y")],
            expect(ExpectedSequence::Exactly(0)),
        ),
        Some(1),
    );
    wrong(
        s.append_with_blocking(
            &e,
            &t,
            vec![paused("y")],
            expect(ExpectedSequence::NoExecution),
        ),
        Some(1),
    );
    wrong(
        s.append_with_blocking(
            &e,
            &t,
            vec![paused("y")],
            expect(ExpectedSequence::Exactly(u64::MAX)),
        ),
        Some(1),
    );
    wrong(
        s.append_with_blocking(
            &e,
            &t,
            vec![paused("y")],
            expect(ExpectedSequence::Exactly(u64::MAX - 1)),
        ),
        Some(1),
    );
    // A keyed append whose key is known answers whatever the expectation now says.
    let k = s
        .append_with_blocking(
            &e,
            &t,
            vec![paused("k")],
            expect(ExpectedSequence::Exactly(1)).with_key("kk"),
        )
        .unwrap();
    for x in [
        ExpectedSequence::Exactly(u64::MAX),
        ExpectedSequence::Exactly(0),
        ExpectedSequence::NoExecution,
        ExpectedSequence::Exactly(1),
    ] {
        let r = s
            .append_with_blocking(&e, &t, vec![paused("k")], expect(x).with_key("kk"))
            .unwrap();
        assert_eq!(r, replay_of(k));
    }
    assert_eq!(s.get_latest_sequence_blocking(&e).unwrap(), Some(2));
    // Refused appends used no sequence.
    let o = s
        .append_with_blocking(
            &e,
            &t,
            vec![paused("z")],
            expect(ExpectedSequence::Exactly(2)),
        )
        .unwrap();
    assert_eq!(o.first_sequence, 3);
}

#[test]
fn hostile_huge_keyed_batches() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments: the batch gets a segment of its own, larger than the setting.
    let s = Arc::new(
        LogStore::open_with(
            dir.path(),
            Options::default()
                .segment_size_bytes(64 * 1024)
                .commit_delay_us(20_000),
        )
        .unwrap(),
    );
    let (e, t) = (ex("huge"), tn("t"));
    s.append_blocking(&e, &t, paused("head")).unwrap();
    let n = 50_000;
    let events: Vec<_> = (0..n).map(|i| paused(&format!("h{i}"))).collect();
    // The original and a retry racing it while it is in flight.
    let racer = {
        let (s, e, t, events) = (s.clone(), e.clone(), t.clone(), events.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            s.append_with_blocking(&e, &t, events, keyed("big"))
        })
    };
    let started = Instant::now();
    let o = s
        .append_with_blocking(&e, &t, events.clone(), keyed("big"))
        .unwrap();
    let r = racer.join().unwrap().unwrap();
    assert_eq!(
        (o.first_sequence, o.last_sequence),
        (2, n as u64 + 1),
        "{o:?}"
    );
    assert_eq!(
        (r.first_sequence, r.last_sequence),
        (o.first_sequence, o.last_sequence)
    );
    assert!(o.replayed != r.replayed);
    let t0 = Instant::now();
    let again = s
        .append_with_blocking(&e, &t, events.clone(), keyed("big"))
        .unwrap();
    let replay_time = t0.elapsed();
    assert!(again.replayed);
    let mut changed = events.clone();
    changed[n - 1] = paused("other");
    assert!(matches!(
        s.append_with_blocking(&e, &t, changed, keyed("big")),
        Err(Error::IdempotencyConflict)
    ));
    assert!(matches!(
        s.append_with_blocking(&e, &t, events[..n - 1].to_vec(), keyed("big")),
        Err(Error::IdempotencyConflict)
    ));
    let mut longer = events.clone();
    longer.push(paused("extra"));
    assert!(matches!(
        s.append_with_blocking(&e, &t, longer, keyed("big")),
        Err(Error::IdempotencyConflict)
    ));
    assert_eq!(
        s.get_latest_sequence_blocking(&e).unwrap(),
        Some(n as u64 + 1)
    );
    eprintln!(
        "keyed batch of {n} events: stored + raced in {:?}, a replay takes {replay_time:?}",
        started.elapsed()
    );
    assert!(replay_time < Duration::from_secs(5));
}

#[test]
fn the_same_key_on_two_executions_is_two_keys() {
    let dir = tempfile::tempdir().unwrap();
    let s = LogStore::open(dir.path()).unwrap();
    let t = tn("t");
    let a = s
        .append_with_blocking(&ex("one"), &t, vec![paused("same")], keyed("shared"))
        .unwrap();
    let b = s
        .append_with_blocking(&ex("two"), &t, vec![paused("same")], keyed("shared"))
        .unwrap();
    assert!(!a.replayed && !b.replayed);
    // Other events under the key on "two" conflict with "two"'s, not "one"'s.
    let c = s.append_with_blocking(&ex("two"), &t, vec![paused("diff")], keyed("shared"));
    assert!(matches!(c, Err(Error::IdempotencyConflict)));
    assert_eq!(s.load_events_blocking(&ex("one")).unwrap().len(), 1);
    assert_eq!(s.load_events_blocking(&ex("two")).unwrap().len(), 1);
}

#[test]
fn another_tenant_with_the_same_key_learns_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = LogStore::open(dir.path()).unwrap();
    let (e, owner, intruder) = (ex("secret"), tn("owner"), tn("intruder"));
    let events = vec![paused("private")];
    s.append_with_blocking(&e, &owner, events.clone(), keyed("k"))
        .unwrap();
    let used = s
        .append_with_blocking(&e, &intruder, events.clone(), keyed("k"))
        .unwrap_err();
    let other_events = s
        .append_with_blocking(&e, &intruder, vec![paused("guess")], keyed("k"))
        .unwrap_err();
    let unused = s
        .append_with_blocking(&e, &intruder, events.clone(), keyed("never-used"))
        .unwrap_err();
    let expect = s
        .append_with_blocking(
            &e,
            &intruder,
            events.clone(),
            AppendOptions::expect(ExpectedSequence::Exactly(1)).with_key("k"),
        )
        .unwrap_err();
    for err in [&used, &other_events, &unused, &expect] {
        assert!(matches!(err, Error::TenantMismatch { .. }), "{err:?}");
    }
    // The same error, word for word, whether or not the key was used.
    assert_eq!(used.to_string(), unused.to_string());
    assert_eq!(used.to_string(), other_events.to_string());
    assert!(!used.to_string().contains("owner"));
    assert_eq!(s.get_latest_sequence_blocking(&e).unwrap(), Some(1));
    let view = s.tenant(&intruder);
    futures::executor::block_on(async {
        assert!(view.load_events(&e).await.unwrap().is_empty());
        assert_eq!(view.get_latest_sequence(&e).await.unwrap(), None);
        assert!(!view.execution_exists(&e).await.unwrap());
        assert!(view.list_executions(10, 0).await.unwrap().is_empty());
    });
}

#[test]
fn default_options_and_read_only_stores() {
    let dir = tempfile::tempdir().unwrap();
    let (e, t) = (ex("ro"), tn("t"));
    {
        let s = LogStore::open(dir.path()).unwrap();
        let o = s
            .append_with_blocking(
                &e,
                &t,
                vec![paused("a"), paused("b")],
                AppendOptions::default(),
            )
            .unwrap();
        assert_eq!(
            (o.first_sequence, o.last_sequence, o.replayed),
            (1, 2, false)
        );
        // Default options: no key, so the same events are a new append.
        let o = s
            .append_with_blocking(
                &e,
                &t,
                vec![paused("a"), paused("b")],
                AppendOptions::default(),
            )
            .unwrap();
        assert_eq!((o.first_sequence, o.replayed), (3, false));
        s.append_with_blocking(&e, &t, vec![paused("k")], keyed("k"))
            .unwrap();
    }
    let s = LogStore::open_read_only(dir.path()).unwrap();
    let r = s.append_with_blocking(&e, &t, vec![paused("k")], keyed("k"));
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    assert_eq!(s.stats().idempotency_keys, 1);
}

// ---------------------------------------------------------------------------------
// Imports
// ---------------------------------------------------------------------------------

#[test]
fn imports_continue_keyed_executions_and_keys_still_answer() {
    let dir = tempfile::tempdir().unwrap();
    let s = LogStore::open(dir.path()).unwrap();
    let (e, t) = (ex("imp"), tn("t"));
    let o = s
        .append_with_blocking(&e, &t, vec![paused("a")], keyed("k"))
        .unwrap();
    let mut chunk = s.load_events_blocking(&e).unwrap();
    chunk[0].sequence = 2;
    chunk[0].event = paused("imported");
    s.import_blocking(chunk).unwrap();
    assert_eq!(
        s.append_with_blocking(&e, &t, vec![paused("a")], keyed("k"))
            .unwrap(),
        replay_of(o)
    );
    let o2 = s
        .append_with_blocking(&e, &t, vec![paused("b")], keyed("k2"))
        .unwrap();
    assert_eq!(o2.first_sequence, 3);
}

#[test]
#[ignore = "known limit (docs/DESIGN.md, Known limits): keys do not travel with imported events (execlog migrate / import_blocking); a retry after a migration stores the batch twice"]
fn a_migrated_store_still_answers_keyed_retries() {
    let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (e, t) = (ex("mig"), tn("t"));
    let src = LogStore::open(from.path()).unwrap();
    let o = src
        .append_with_blocking(&e, &t, vec![paused("once")], keyed("pay-42"))
        .unwrap();
    let dst = LogStore::open(to.path()).unwrap();
    dst.import_blocking(src.load_events_blocking(&e).unwrap())
        .unwrap();
    let retry = dst
        .append_with_blocking(&e, &t, vec![paused("once")], keyed("pay-42"))
        .unwrap();
    assert_eq!(
        retry,
        replay_of(o),
        "the retry after migration stored again"
    );
}

// ---------------------------------------------------------------------------------
// Cost
// ---------------------------------------------------------------------------------

/// `n` concurrent single-event appends to one execution, keyed or not, all in flight
/// at once (a long commit delay gathers them into one group); returns the time they
/// took and the longest a reader of another execution waited for the store lock.
fn concurrent_in_flight(n: usize, keyed_appends: bool) -> (Duration, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        LogStore::open_with(dir.path(), Options::default().commit_delay_us(400_000)).unwrap(),
    );
    store
        .append_blocking(&ex("other"), &tn("t"), paused("o"))
        .unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            let mut worst = Duration::ZERO;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let t0 = Instant::now();
                store.get_latest_sequence_blocking(&ex("other")).unwrap();
                worst = worst.max(t0.elapsed());
                std::thread::sleep(Duration::from_micros(200));
            }
            worst
        })
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let options = if keyed_appends {
                        AppendOptions::key(format!("key-{i}"))
                    } else {
                        AppendOptions::default()
                    };
                    store
                        .append_with(&ex("hot"), &tn("t"), vec![paused("e")], options)
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let elapsed = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let worst = reader.join().unwrap();
    assert_eq!(
        store.get_latest_sequence_blocking(&ex("hot")).unwrap(),
        Some(n as u64)
    );
    (elapsed, worst)
}

// A timing comparison, so not in CI (speed belongs in benches, the machines are
// noisy); run it by name with --ignored. Broken settle (a scan per commit) made the
// reader stall 1.47 s at 40k; fixed (in-flight queue popped from the front), see the
// figure in docs/DESIGN.md's guarantee table.
#[test]
#[ignore = "measurement: reader stall with 40k keyed appends in flight vs unkeyed"]
fn many_keyed_appends_in_flight_settle_in_linear_time() {
    let n: usize = std::env::var("EXECLOG_ADV_IN_FLIGHT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40_000);
    let (plain, plain_stall) = concurrent_in_flight(n, false);
    let (keyed_time, keyed_stall) = concurrent_in_flight(n, true);
    eprintln!(
        "{n} appends in flight on one execution: unkeyed {plain:?} (reader stall {plain_stall:?}), keyed {keyed_time:?} (reader stall {keyed_stall:?})"
    );
    assert!(
        keyed_stall < plain_stall + Duration::from_millis(250),
        "keyed appends held the store lock {keyed_stall:?} (unkeyed {plain_stall:?})"
    );
    assert!(keyed_time < plain * 2 + Duration::from_millis(500));
}

#[test]
#[ignore = "measurement (report): a retry against 100k keyed appends, hash bits 0 and 64"]
fn measure_retries_against_many_keyed_appends() {
    let n: usize = std::env::var("EXECLOG_ADV_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let (e, t) = (ex("many"), tn("t"));
    let started = Instant::now();
    {
        let store = Arc::new(LogStore::open(dir.path()).unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        rt.block_on(async {
            for chunk in 0..n.div_ceil(1000) {
                let tasks: Vec<_> = (chunk * 1000..((chunk + 1) * 1000).min(n))
                    .map(|i| {
                        let store = store.clone();
                        tokio::spawn(async move {
                            let k = format!("key-{i}");
                            store
                                .append_with(&ex("many"), &tn("t"), vec![paused(&k)], keyed(&k))
                                .await
                                .unwrap()
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            }
        });
    }
    eprintln!("{n} keyed appends written in {:?}", started.elapsed());
    for bits in [64u32, 0] {
        let t0 = Instant::now();
        let s = LogStore::open_with(dir.path(), Options::default().idempotency_hash_bits(bits))
            .unwrap();
        let open = t0.elapsed();
        let k = format!("key-{}", n / 2);
        let t1 = Instant::now();
        let o = s
            .append_with_blocking(&e, &t, vec![paused(&k)], keyed(&k))
            .unwrap();
        let existing = t1.elapsed();
        assert!(o.replayed);
        let t2 = Instant::now();
        let fresh = format!("fresh-{bits}");
        let o = s
            .append_with_blocking(&e, &t, vec![paused("f")], keyed(&fresh))
            .unwrap();
        let new_key = t2.elapsed();
        assert!(!o.replayed);
        eprintln!(
            "hash bits {bits}: open {open:?}, retry of key n/2 {existing:?}, new key {new_key:?}, stats {} keys / {} bytes",
            s.stats().idempotency_keys,
            s.stats().idempotency_key_bytes
        );
    }
}

#[test]
fn set_of_hash_bits_keeps_answers_exact() {
    // 1..8 bits: some keys share hashes, some do not; answers must not depend on it.
    let dir = tempfile::tempdir().unwrap();
    let (e, t) = (ex("bits"), tn("t"));
    let mut outcomes = Vec::new();
    {
        let s =
            LogStore::open_with(dir.path(), Options::default().idempotency_hash_bits(3)).unwrap();
        for i in 0..60 {
            let k = format!("b{i}");
            outcomes.push(
                s.append_with_blocking(&e, &t, vec![paused(&k)], keyed(&k))
                    .unwrap(),
            );
        }
    }
    let mut seen = HashSet::new();
    for bits in [1u32, 2, 5, 8, 64, 0] {
        let s = LogStore::open_with(dir.path(), Options::default().idempotency_hash_bits(bits))
            .unwrap();
        for (i, o) in outcomes.iter().enumerate() {
            let k = format!("b{i}");
            assert_eq!(
                s.append_with_blocking(&e, &t, vec![paused(&k)], keyed(&k))
                    .unwrap(),
                replay_of(*o)
            );
            let r = s.append_with_blocking(&e, &t, vec![paused("x")], keyed(&k));
            assert!(matches!(r, Err(Error::IdempotencyConflict)));
        }
        seen.insert(bits);
    }
    assert_eq!(seen.len(), 6);
}

#[test]
fn crafted_duplicate_key_on_one_execution_answers_truthfully() {
    // The engine never writes one key twice on an execution; a crafted log that does
    // must not make a retry report events that are not the stored ones.
    let dir = crafted(2, |s| {
        s.batch(0, &[body(&Prefix::Keyed(None, b"dup"), "first")]);
        s.batch(0, &[body(&Prefix::Keyed(None, b"dup"), "second")]);
    });
    let Ok(s) = open_plain(dir.path()) else {
        return;
    };
    for (events, seq) in [("first", 4u64), ("second", 5)] {
        match s.append_with_blocking(&ex("ex"), &tn("t"), vec![paused(events)], keyed("dup")) {
            Ok(o) => {
                assert!(o.replayed);
                assert_eq!(o.first_sequence, seq, "{events}");
            }
            Err(Error::IdempotencyConflict | Error::Corrupt { .. }) => {}
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(s.get_latest_sequence_blocking(&ex("ex")).unwrap(), Some(6));
}

#[test]
#[ignore = "measurement (report): many tasks retrying one key while its original is in flight"]
fn measure_many_retries_waiting_on_one_in_flight_original() {
    let n: usize = std::env::var("EXECLOG_ADV_WAITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40_000);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        LogStore::open_with(dir.path(), Options::default().commit_delay_us(1_000_000)).unwrap(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let registered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (outcomes, all_polled) = rt.block_on(async {
        let original = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append_with(&ex("w"), &tn("t"), vec![paused("w")], keyed("w"))
                    .await
                    .unwrap()
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (store, registered) = (store.clone(), registered.clone());
                tokio::spawn(async move {
                    let (e, t) = (ex("w"), tn("t"));
                    let mut f = store.append_with(&e, &t, vec![paused("w")], keyed("w"));
                    // First poll registers the task as an observer of the original.
                    let first =
                        std::future::poll_fn(|cx| std::task::Poll::Ready(f.as_mut().poll(cx)))
                            .await;
                    registered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    match first {
                        std::task::Poll::Ready(r) => r.unwrap(),
                        std::task::Poll::Pending => f.await.unwrap(),
                    }
                })
            })
            .collect();
        while registered.load(std::sync::atomic::Ordering::Relaxed) < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let all_polled = started.elapsed();
        let mut outcomes = vec![original.await.unwrap()];
        for t in tasks {
            outcomes.push(t.await.unwrap());
        }
        (outcomes, all_polled)
    });
    assert!(outcomes.iter().all(|o| o.first_sequence == 1));
    eprintln!(
        "{n} retries waiting on one in-flight original: all polled once after {all_polled:?} (commit delay 1 s), all answered after {:?}",
        started.elapsed()
    );
}

/// Keyed-append table memory per keyed append with `per_execution` keyed appends on
/// each of `executions` executions: while the store that wrote them is open, and after
/// a reopen (tables refiled from the records).
fn key_memory(executions: usize, per_execution: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let n = (executions * per_execution) as f64;
    let live = {
        let store = Arc::new(LogStore::open(dir.path()).unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        rt.block_on(async {
            for round in 0..per_execution {
                let tasks: Vec<_> = (0..executions)
                    .map(|x| {
                        let store = store.clone();
                        tokio::spawn(async move {
                            let k = format!("{x:0>40}-{round}");
                            store
                                .append_with(
                                    &ex(&format!("m{x}")),
                                    &tn("t"),
                                    vec![paused("m")],
                                    keyed(&k),
                                )
                                .await
                                .unwrap()
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            }
        });
        store.stats().idempotency_key_bytes as f64 / n
    };
    let reopened = LogStore::open(dir.path())
        .unwrap()
        .stats()
        .idempotency_key_bytes as f64
        / n;
    (live, reopened)
}

#[test]
fn key_memory_budget_holds_for_one_keyed_append_per_execution() {
    let (many_live, many_reopened) = key_memory(10, 2_000);
    let (one_live, one_reopened) = key_memory(20_000, 1);
    eprintln!(
        "bytes per keyed append: 10 executions x 2,000: {many_live:.1} live, {many_reopened:.1} reopened; 20,000 executions x 1: {one_live:.1} live, {one_reopened:.1} reopened"
    );
    // The budget of docs/DESIGN.md: at most 40 bytes per keyed append on executions
    // with many, at most 64 for an execution's only one.
    assert!(many_live <= 40.0 && many_reopened <= 40.0);
    assert!(
        one_live <= 64.0,
        "{one_live:.1} bytes per keyed append (live)"
    );
    assert!(
        one_reopened <= 64.0,
        "{one_reopened:.1} bytes per keyed append (reopened)"
    );
}
