//! Format lock for version 3: tombstones and forks (docs/FORMAT.md, "Tombstone",
//! "Fork", and the checkpoint's fork table). The fixture `tests/fixtures/format_v3/`
//! holds the segments and the checkpoint a clean close of this version wrote for: two
//! executions of tenant `t`, a fork of the first at sequence 2 with one event of its
//! own, the second deleted, and tenant `gone` with one execution, deleted as a tenant;
//! then an erasure (the deleted events become erased records in segment 1, which a
//! roll sealed: segment 2 holds the roll's seal and the close's).
//! The test parses both files at the offsets FORMAT.md gives, and opens the fixture
//! (with its checkpoint, and without) to the reads in `expected.json`.
//!
//! Regenerate (only when deliberately starting a new format version, keeping the old
//! fixtures): `EXECLOG_WRITE_FIXTURE=v3 cargo test --test format_golden_v3`.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use execlog::*;

const SEGMENT: &str = "0000000001.seg";
const SEGMENT_2: &str = "0000000002.seg";
const CHECKPOINT: &str = "checkpoint.idx";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format_v3")
}

/// Every execution of the fixture with what a read returns (empty: deleted).
fn reads(store: &LogStore) -> BTreeMap<String, Vec<StoredEvent>> {
    ["exec-a", "exec-b", "exec-f", "exec-c"]
        .into_iter()
        .map(|id| {
            let events = store.load_events_blocking(&ExecutionId::from(id)).unwrap();
            (id.to_string(), events)
        })
        .collect()
}

fn write_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        LogStore::open_with(dir.path(), Options::default().segment_size_bytes(64 * 1024)).unwrap();
    let events = common::every_variant();
    let (t, gone) = (TenantId::from("t"), TenantId::from("gone"));
    let id = |s: &str| ExecutionId::from(s);
    store
        .append_batch_blocking(&id("exec-a"), &t, events[0..3].to_vec())
        .unwrap();
    store
        .append_batch_blocking(&id("exec-b"), &t, events[3..5].to_vec())
        .unwrap();
    store
        .fork_execution_blocking(&id("exec-a"), 2, &id("exec-f"))
        .unwrap();
    store
        .append_blocking(&id("exec-f"), &t, events[5].clone())
        .unwrap();
    assert!(store.delete_execution_blocking(&id("exec-b")).unwrap());
    store
        .append_blocking(&id("exec-c"), &gone, events[6].clone())
        .unwrap();
    assert_eq!(store.delete_tenant_blocking(&gone).unwrap(), 1);
    assert_eq!(store.compact_now().unwrap().records_erased, 3);
    let expected = reads(&store);
    store.close().unwrap();
    drop(store);
    fs::create_dir_all(fixture()).unwrap();
    for name in [SEGMENT, SEGMENT_2] {
        let bytes = fs::read(dir.path().join(name)).unwrap();
        let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
        fs::write(fixture().join(name), &bytes[..end.next_multiple_of(8)]).unwrap();
    }
    fs::copy(dir.path().join(CHECKPOINT), fixture().join(CHECKPOINT)).unwrap();
    fs::write(
        fixture().join("expected.json"),
        serde_json::to_string_pretty(&expected).unwrap(),
    )
    .unwrap();
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// One record as FORMAT.md lays it out: offset, kind, execution, sequence, prev, body.
struct Raw<'a> {
    at: usize,
    kind: u16,
    execution: u64,
    sequence: u64,
    prev: u64,
    body: &'a [u8],
}

fn records(b: &[u8]) -> Vec<Raw<'_>> {
    let mut out = Vec::new();
    let mut at = 32;
    while at + 56 <= b.len() && le32(b, at + 4) != 0 {
        let body_len = le32(b, at + 4) as usize;
        assert_eq!(le32(b, at), crc32fast::hash(&b[at + 4..at + 56 + body_len]));
        out.push(Raw {
            at,
            kind: le16(b, at + 48),
            execution: le64(b, at + 8),
            sequence: le64(b, at + 16),
            prev: le64(b, at + 32),
            body: &b[at + 56..at + 56 + body_len],
        });
        at += (56 + body_len).next_multiple_of(8);
    }
    out
}

#[test]
fn format_v3_bytes_match_format_md() {
    if std::env::var("EXECLOG_WRITE_FIXTURE").as_deref() == Ok("v3") {
        write_fixture();
    }
    let b = fs::read(fixture().join(SEGMENT)).unwrap();
    assert_eq!(&b[0..8], b"EXECLOG\0");
    assert_eq!(le32(&b, 8), 3, "format version");
    let records = records(&b);
    let kinds: Vec<(u16, u64, u64)> = records
        .iter()
        .map(|r| (r.kind, r.execution, r.sequence))
        .collect();
    // Events 1 (exec-a ×3; exec-b's batch of 2, erased into one span: 6), fork 4 of
    // exec-f (number 2) at 2, its own event 3, tombstone 3 of exec-b (number 1),
    // exec-c (number 3, one event, erased: 5), the tenant tombstone (4 executions
    // numbered below it). No seal: the erasure's roll moved the log to segment 2.
    assert_eq!(
        kinds,
        [
            (1, 0, 1),
            (1, 0, 2),
            (1, 0, 3),
            (6, 1, 1),
            (4, 2, 2),
            (1, 2, 3),
            (3, 1, 0),
            (5, 3, 1),
            (3, 4, 0),
        ]
    );
    // The span: last sequence 2, the position its last event had, then the
    // declaration (prefix form 01, bincode strings), then zeros, over both events'
    // bytes.
    let span = &records[3];
    assert_eq!(le64(span.body, 0), 2);
    let second = le64(span.body, 8);
    assert_eq!(second >> 32, 1, "its segment");
    assert!(
        (second & 0xFFFF_FFFF) > span.at as u64,
        "the second event's offset"
    );
    assert_eq!(&span.body[16..26], b"\x01\x06exec-b\x01t");
    assert!(span.body[26..].iter().all(|&b| b == 0));
    assert_eq!(records[4].at - span.at, 56 + span.body.len());
    // A single erased event: the declaration, then zeros.
    assert_eq!(&records[7].body[..13], b"\x01\x06exec-c\x04gone");
    assert!(records[7].body[13..].iter().all(|&b| b == 0));
    let b2 = fs::read(fixture().join(SEGMENT_2)).unwrap();
    assert_eq!(le32(&b2, 8), 3);
    let seals: Vec<(u16, u64)> = self::records(&b2)
        .iter()
        .map(|r| (r.kind, le64(r.body, 0)))
        .collect();
    assert_eq!(
        seals,
        [(2, 32), (2, 96)],
        "the roll's seal, then the close's"
    );
    let fork = &records[4];
    assert_eq!(le64(fork.body, 0), 0, "source: exec-a's number");
    assert_eq!(&fork.body[8..], b"exec-f");
    let a2 = records[1].at as u64;
    assert_eq!(
        fork.prev,
        (1 << 32) | a2,
        "prev: exec-a's record of sequence 2"
    );
    assert_eq!(
        records[5].prev, fork.prev,
        "the fork's own event links to it too"
    );
    assert_eq!(records[6].body, b"\x01exec-b");
    assert_eq!(records[8].body, b"\x02gone");

    let c = fs::read(fixture().join(CHECKPOINT)).unwrap();
    assert_eq!(&c[0..8], b"EXLGCKPT");
    assert_eq!(le32(&c, 8), 1, "checkpoint layout version");
    let (segments, tenants, executions, forks) =
        (le32(&c, 24), le32(&c, 28), le32(&c, 32), le32(&c, 36));
    assert_eq!((segments, tenants, executions, forks), (2, 2, 4, 1));
    let mut at = 40 + 12 * segments as usize;
    for want in ["t", "gone"] {
        let len = le32(&c, at) as usize;
        assert_eq!(&c[at + 4..at + 4 + len], want.as_bytes());
        at += 4 + len;
    }
    assert_eq!(
        (le32(&c, at), le32(&c, at + 4), le64(&c, at + 8)),
        (2, 0, 2)
    );
    at += 16;
    // exec-a: tenant 0, 3 events, one entry point.
    assert_eq!((le32(&c, at), le64(&c, at + 4)), (0, 3));
    let len = le32(&c, at + 20) as usize;
    assert_eq!(&c[at + 24..at + 24 + len], b"exec-a");
    let at = at + 24 + len + 8;
    // exec-b: deleted, listed like a live one.
    assert_eq!((le32(&c, at), le64(&c, at + 4)), (0, 2));
    let at = at + 24 + 6 + 8;
    // exec-f: a fork with one event of its own: one entry point, of sequence 3.
    assert_eq!((le32(&c, at), le64(&c, at + 4)), (0, 3));
    assert_eq!(&c[at + 24..at + 30], b"exec-f");
    let own = records[5].at as u64;
    assert_eq!(le64(&c, at + 30) & 0xFFFF_FFFF, 1, "entry point's segment");
    assert_eq!(le64(&c, at + 30) >> 32, own, "entry point's offset");
    assert_eq!(le32(&c, c.len() - 4), crc32fast::hash(&c[..c.len() - 4]));
}

#[test]
fn format_v3_fixture_opens_with_and_without_its_checkpoint() {
    let expected: BTreeMap<String, Vec<StoredEvent>> =
        serde_json::from_str(&fs::read_to_string(fixture().join("expected.json")).unwrap())
            .unwrap();
    assert_eq!(expected["exec-f"].len(), 3);
    assert!(expected["exec-b"].is_empty() && expected["exec-c"].is_empty());
    for with_checkpoint in [true, false] {
        let work = tempfile::tempdir().unwrap();
        for name in [SEGMENT, SEGMENT_2] {
            fs::copy(fixture().join(name), work.path().join(name)).unwrap();
        }
        if with_checkpoint {
            fs::copy(fixture().join(CHECKPOINT), work.path().join(CHECKPOINT)).unwrap();
        }
        let store = LogStore::open_read_only(work.path()).unwrap();
        let report = store.recovery_report();
        assert_eq!(report.checkpoint_bytes > 0, with_checkpoint, "{report:?}");
        assert_eq!(reads(&store), expected, "checkpoint: {with_checkpoint}");
        assert_eq!(store.stats().deleted_executions, 2);
    }
}

/// The fixture's segments with the layout 2 checkpoint (`checkpoint_layout2.idx`: the
/// deleted list, no directory) a clean close of a build writing layout 2 left for
/// them. Regenerate only with such a build:
/// `EXECLOG_WRITE_FIXTURE=layout2 cargo test --test format_golden_v3`.
const CHECKPOINT_LAYOUT_2: &str = "checkpoint_layout2.idx";

fn write_layout2_fixture() {
    let work = tempfile::tempdir().unwrap();
    for name in [SEGMENT, SEGMENT_2] {
        fs::copy(fixture().join(name), work.path().join(name)).unwrap();
    }
    let store = LogStore::open(work.path()).unwrap();
    store.close().unwrap();
    drop(store);
    let c = fs::read(work.path().join(CHECKPOINT)).unwrap();
    assert_eq!(
        le32(&c, 8),
        2,
        "written by a build whose checkpoint layout is 2"
    );
    for name in [SEGMENT, SEGMENT_2] {
        let now = fs::read(work.path().join(name)).unwrap();
        let was = fs::read(fixture().join(name)).unwrap();
        assert_eq!(
            &now[..was.len()],
            &was[..],
            "the open left {name} as it was"
        );
    }
    fs::write(fixture().join(CHECKPOINT_LAYOUT_2), c).unwrap();
}

fn options_after_open() -> Options {
    Options::default().verify_checkpoint_after_open(true)
}

#[test]
fn a_layout_2_checkpoint_still_opens_eagerly_and_verified_after_open() {
    if std::env::var("EXECLOG_WRITE_FIXTURE").as_deref() == Ok("layout2") {
        write_layout2_fixture();
    }
    let expected: BTreeMap<String, Vec<StoredEvent>> =
        serde_json::from_str(&fs::read_to_string(fixture().join("expected.json")).unwrap())
            .unwrap();
    let c = fs::read(fixture().join(CHECKPOINT_LAYOUT_2)).unwrap();
    assert_eq!(le32(&c, 8), 2, "checkpoint layout version");
    for after_open in [false, true] {
        let work = tempfile::tempdir().unwrap();
        for name in [SEGMENT, SEGMENT_2] {
            fs::copy(fixture().join(name), work.path().join(name)).unwrap();
        }
        fs::write(work.path().join(CHECKPOINT), &c).unwrap();
        let options = Options::default().verify_checkpoint_after_open(after_open);
        let store = LogStore::open_with(work.path(), options).unwrap();
        let report = store.recovery_report().clone();
        assert!(report.checkpoint_bytes > 0, "{report:?}");
        assert_eq!(report.checkpoint_ignored, None);
        assert_eq!(report.checkpoint_verification_deferred, after_open);
        assert_eq!(reads(&store), expected, "verified after open: {after_open}");
        assert_eq!(store.stats().deleted_executions, 2);
        assert!(
            !report.index_decoded_after_open,
            "layout 2 has no directory"
        );
        if after_open {
            common::verify_after_open::wait_for_verdict(&store);
        }
        store.close().unwrap();
        // Close rewrote it as the current layout, although nothing changed.
        let c = fs::read(work.path().join(CHECKPOINT)).unwrap();
        assert_eq!(le32(&c, 8), 3, "rewritten as layout 3");
        let store = LogStore::open_with(work.path(), options_after_open()).unwrap();
        assert!(store.recovery_report().index_decoded_after_open);
        assert_eq!(reads(&store), expected);
    }
}
