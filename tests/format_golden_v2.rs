//! Format lock for version 2: keyed appends (docs/FORMAT.md, record prefix form `02`).
//! The fixture `tests/fixtures/format_v2/` holds one segment written by this version:
//! a keyed append that creates its execution, a keyed batch of three on it, and an
//! unkeyed append. The test parses its bytes at the offsets FORMAT.md gives, and opens
//! it: the events decode to `expected.json` and every key still answers its retry.
//!
//! Regenerate (only when deliberately starting a new format version, keeping the old
//! fixtures): `EXECLOG_WRITE_FIXTURE=v2 cargo test --test format_golden_v2`.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use execlog::*;

const SEGMENT: &str = "0000000001.seg";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format_v2")
}

fn ids() -> (ExecutionId, TenantId) {
    (ExecutionId::from("exec-k"), TenantId::from("tenant-k"))
}

/// The appends of the fixture: (key, events).
fn appends() -> Vec<(Option<&'static str>, Vec<ExecutionEventData>)> {
    let events = common::every_variant();
    vec![
        (Some("first-key"), vec![events[0].clone()]),
        (Some("batch-key/ü"), events[1..4].to_vec()),
        (None, vec![events[4].clone()]),
    ]
}

fn write_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        LogStore::open_with(dir.path(), Options::default().segment_size_bytes(64 * 1024)).unwrap();
    let (e, t) = ids();
    for (key, events) in appends() {
        let options = AppendOptions {
            idempotency_key: key.map(String::from),
            ..AppendOptions::default()
        };
        store.append_with_blocking(&e, &t, events, options).unwrap();
    }
    let expected = store.load_events_blocking(&e).unwrap();
    store.close().unwrap();
    drop(store);
    fs::create_dir_all(fixture()).unwrap();
    let bytes = fs::read(dir.path().join(SEGMENT)).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    fs::write(fixture().join(SEGMENT), &bytes[..end.next_multiple_of(8)]).unwrap();
    fs::write(
        fixture().join("expected.json"),
        serde_json::to_string_pretty(&expected).unwrap(),
    )
    .unwrap();
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// A bincode string (one-byte varint length, all lengths here are < 251) at `at`.
fn string(b: &[u8], at: usize) -> (&str, usize) {
    let len = b[at] as usize;
    (
        std::str::from_utf8(&b[at + 1..at + 1 + len]).unwrap(),
        at + 1 + len,
    )
}

#[test]
fn format_v2_bytes_match_format_md() {
    if std::env::var("EXECLOG_WRITE_FIXTURE").as_deref() == Ok("v2") {
        write_fixture();
    }
    let b = fs::read(fixture().join(SEGMENT)).unwrap();
    assert_eq!(&b[0..8], b"EXECLOG\0");
    assert_eq!(le32(&b, 8), 2, "format version");
    assert_eq!(le32(&b, 28), crc32fast::hash(&b[..28]));
    // (sequence, batch_remaining, prefix) of every event record, prefix parsed by hand.
    let mut seen = Vec::new();
    let mut at = 32;
    while at < b.len() {
        let body_len = le32(&b, at + 4) as usize;
        assert_eq!(
            le32(&b, at),
            crc32fast::hash(&b[at + 4..at + 56 + body_len])
        );
        let kind = u16::from_le_bytes([b[at + 48], b[at + 49]]);
        if kind == 1 {
            let body = at + 56;
            let prefix = match b[body] {
                0 => "none".to_string(),
                1 => {
                    let (id, next) = string(&b, body + 1);
                    let (tenant, _) = string(&b, next);
                    format!("declared {id} {tenant}")
                }
                2 => {
                    let (declared, next) = match b[body + 1] {
                        0 => (String::new(), body + 2),
                        1 => {
                            let (id, next) = string(&b, body + 2);
                            let (tenant, next) = string(&b, next);
                            (format!("{id} {tenant} "), next)
                        }
                        other => panic!("declaration tag {other}"),
                    };
                    let (key, _) = string(&b, next);
                    format!("keyed {declared}{key}")
                }
                other => panic!("prefix form {other}"),
            };
            seen.push((le64(&b, at + 16), le32(&b, at + 40), prefix));
        }
        at += (56 + body_len).next_multiple_of(8);
    }
    let want = [
        (1, 0, "keyed exec-k tenant-k first-key"),
        (2, 2, "keyed batch-key/ü"),
        (3, 1, "none"),
        (4, 0, "none"),
        (5, 0, "none"),
    ];
    let seen: Vec<(u64, u32, &str)> = seen.iter().map(|(s, r, p)| (*s, *r, p.as_str())).collect();
    assert_eq!(seen, want);
}

#[test]
fn format_v2_fixture_opens_and_keys_still_answer() {
    let expected: Vec<StoredEvent> =
        serde_json::from_str(&fs::read_to_string(fixture().join("expected.json")).unwrap())
            .unwrap();
    let work = tempfile::tempdir().unwrap();
    fs::copy(fixture().join(SEGMENT), work.path().join(SEGMENT)).unwrap();
    let store = LogStore::open(work.path()).unwrap();
    let (e, t) = ids();
    assert_eq!(store.load_events_blocking(&e).unwrap(), expected);
    let outcomes = [(1, 1), (2, 4)];
    for ((key, events), (first, last)) in appends().into_iter().zip(outcomes) {
        let outcome = store
            .append_with_blocking(&e, &t, events, AppendOptions::key(key.unwrap()))
            .unwrap();
        assert_eq!(
            outcome,
            AppendOutcome {
                first_sequence: first,
                last_sequence: last,
                replayed: true
            }
        );
    }
}
