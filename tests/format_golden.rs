//! Format lock: a store written by format version 1 is checked in under
//! `tests/fixtures/format_v1/` and must keep opening and decoding to the same events
//! (`expected.json`) in every later version. The test also parses the fixture's bytes
//! independently, at the offsets docs/FORMAT.md gives, so the document and the code
//! cannot drift apart.
//!
//! Regenerate (only when deliberately starting a new format version, keeping the old
//! fixture): `EXECLOG_WRITE_FIXTURE=1 cargo test --test format_golden`.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use execlog::*;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format_v1")
}

const SEGMENT: &str = "0000000001.seg";
const CHECKPOINT: &str = "checkpoint.idx";

/// The fixture's checkpoint: what a clean close (default options) writes for the
/// fixture's segment. Regenerated with `EXECLOG_WRITE_FIXTURE=checkpoint`.
fn write_checkpoint_fixture() {
    let dir = tempfile::tempdir().unwrap();
    fs::copy(fixture().join(SEGMENT), dir.path().join(SEGMENT)).unwrap();
    LogStore::open(dir.path()).unwrap().close().unwrap();
    fs::copy(dir.path().join(CHECKPOINT), fixture().join(CHECKPOINT)).unwrap();
}

fn write_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        LogStore::open_with(dir.path(), Options::default().segment_size_bytes(64 * 1024)).unwrap();
    let (a, b) = (ExecutionId::from("exec-a"), ExecutionId::from("exec-ü/b"));
    let (ta, tb) = (TenantId::from("tenant-1"), TenantId::from("tenant-2"));
    let events = common::every_variant();
    for ev in &events[..5] {
        store.append_blocking(&a, &ta, ev.clone()).unwrap();
    }
    store
        .append_batch_blocking(&b, &tb, events[5..12].to_vec())
        .unwrap();
    store
        .append_batch_blocking(&a, &ta, events[12..].to_vec())
        .unwrap();
    let mut expected = store.load_events_blocking(&a).unwrap();
    expected.extend(store.load_events_blocking(&b).unwrap());
    store.close().unwrap();
    drop(store);
    let out = fixture();
    fs::create_dir_all(&out).unwrap();
    let bytes = fs::read(dir.path().join(SEGMENT)).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    fs::write(out.join(SEGMENT), &bytes[..end.next_multiple_of(8)]).unwrap();
    fs::write(
        out.join("expected.json"),
        serde_json::to_string_pretty(&expected).unwrap(),
    )
    .unwrap();
}

/// The fixture's events as `expected.json` holds them.
fn expected_events() -> Vec<StoredEvent> {
    serde_json::from_str(&fs::read_to_string(fixture().join("expected.json")).unwrap()).unwrap()
}

/// Both fixture executions' events, read back in the order `expected.json` holds them.
fn fixture_events(store: &LogStore) -> Vec<StoredEvent> {
    let mut got = store
        .load_events_blocking(&ExecutionId::from("exec-a"))
        .unwrap();
    got.extend(
        store
            .load_events_blocking(&ExecutionId::from("exec-ü/b"))
            .unwrap(),
    );
    got
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn format_v1_fixture_still_decodes() {
    match std::env::var("EXECLOG_WRITE_FIXTURE").as_deref() {
        Ok("checkpoint") => write_checkpoint_fixture(),
        Ok(_) => write_fixture(),
        Err(_) => {}
    }
    let expected = expected_events();
    let work = tempfile::tempdir().unwrap();
    fs::copy(fixture().join(SEGMENT), work.path().join(SEGMENT)).unwrap();
    let store = LogStore::open(work.path()).unwrap();
    assert_eq!(store.recovery_report().truncated_at, None);
    assert_eq!(fixture_events(&store), expected);
    assert_eq!(
        store
            .list_executions_blocking(&TenantId::from("tenant-2"), 10, 0)
            .unwrap(),
        vec![ExecutionId::from("exec-ü/b")]
    );
}

/// The bytes, parsed by hand at the offsets of docs/FORMAT.md.
#[test]
fn fixture_bytes_match_format_md() {
    let bytes = fs::read(fixture().join(SEGMENT)).unwrap();
    // Segment header.
    assert_eq!(&bytes[0..8], b"EXECLOG\0");
    assert_eq!(le32(&bytes, 8), 1, "format version");
    assert_eq!(le32(&bytes, 12), 1, "segment id");
    assert!(bytes[16..28].iter().all(|&b| b == 0), "reserved");
    assert_eq!(le32(&bytes, 28), crc32fast::hash(&bytes[..28]));
    // Records.
    let mut at = 32;
    let mut seen = Vec::new();
    while at < bytes.len() {
        let body_len = le32(&bytes, at + 4) as usize;
        assert!(body_len > 0);
        assert_eq!(
            le32(&bytes, at),
            crc32fast::hash(&bytes[at + 4..at + 56 + body_len]),
            "crc at {at}"
        );
        let kind = u16::from_le_bytes([bytes[at + 48], bytes[at + 49]]);
        let group_start = le32(&bytes, at + 44) as usize;
        assert!(group_start <= at && group_start >= 32);
        assert!(bytes[at + 50..at + 56].iter().all(|&b| b == 0));
        let framed = (56 + body_len).next_multiple_of(8);
        assert!(
            bytes[at + 56 + body_len..at + framed]
                .iter()
                .all(|&b| b == 0),
            "padding"
        );
        seen.push((
            kind,
            le64(&bytes, at + 8),
            le64(&bytes, at + 16),
            le32(&bytes, at + 40),
            le64(&bytes, at + 32),
        ));
        if kind == 1 && le64(&bytes, at + 16) == 1 {
            // The declaration: Some (1), varint length, execution id, tenant id.
            assert_eq!(bytes[at + 56], 1);
            let len = bytes[at + 57] as usize;
            let id = std::str::from_utf8(&bytes[at + 58..at + 58 + len]).unwrap();
            assert!(id == "exec-a" || id == "exec-ü/b", "{id}");
        }
        at += framed;
    }
    // kind, execution, sequence, batch_remaining, prev
    let events: Vec<_> = seen.iter().filter(|s| s.0 == 1).collect();
    assert_eq!(events.len(), 17);
    assert_eq!(seen.last().unwrap().0, 2, "clean close ends with a seal");
    assert_eq!(events[0].4, u64::MAX, "first record has no prev");
    assert_eq!(
        (events[5].1, events[5].2, events[5].3),
        (1, 1, 6),
        "batch of 7 starts"
    );
    assert_eq!(
        (events[11].1, events[11].2, events[11].3),
        (1, 7, 0),
        "batch of 7 ends"
    );
    assert_eq!(events[12].4 >> 32, 1, "prev points into segment 1");
}

/// The checkpoint fixture, parsed by hand at the offsets of docs/FORMAT.md, and used by
/// open (its digest matches the fixture segment) with the same answers.
#[test]
fn checkpoint_fixture_matches_format_md() {
    let b = fs::read(fixture().join(CHECKPOINT)).unwrap();
    let segment = fs::read(fixture().join(SEGMENT)).unwrap();
    assert_eq!(&b[0..8], b"EXLGCKPT");
    assert_eq!(le32(&b, 8), 1, "format version");
    assert_eq!(le32(&b, 12), 16, "index stride");
    assert!(
        le64(&b, 16) > 1_600_000_000_000_000_000,
        "last timestamp, ns"
    );
    let (segments, tenants, executions) = (le32(&b, 24), le32(&b, 28), le32(&b, 32));
    assert_eq!((segments, tenants, executions), (1, 2, 2));
    assert_eq!(le32(&b, 36), 0, "reserved");
    let end = le64(&b, 40) as usize;
    assert_eq!(end, segment.len(), "the fixture segment ends with its seal");
    assert_eq!(le32(&b, 48), crc32fast::hash(&segment[32..end]), "digest");
    let mut at = 52;
    let text = |at: &mut usize| {
        let len = le32(&b, *at) as usize;
        let s = std::str::from_utf8(&b[*at + 4..*at + 4 + len])
            .unwrap()
            .to_string();
        *at += 4 + len;
        s
    };
    assert_eq!(text(&mut at), "tenant-1");
    assert_eq!(text(&mut at), "tenant-2");
    for (id, tenant, last_seq) in [("exec-a", 0, 10), ("exec-ü/b", 1, 7)] {
        assert_eq!(le32(&b, at), tenant);
        assert_eq!(le64(&b, at + 4), last_seq);
        let (seg, offset) = (le32(&b, at + 12), le32(&b, at + 16) as usize);
        assert_eq!(seg, 1);
        // The position holds that execution's last record.
        assert_eq!(
            le64(&segment, offset + 16),
            last_seq,
            "sequence at {offset}"
        );
        at += 20;
        assert_eq!(text(&mut at), id);
        // One entry point (sequence 1): its record is the declaration.
        assert_eq!(le32(&b, at), 1);
        let first = le32(&b, at + 4) as usize;
        assert_eq!(le64(&segment, first + 16), 1);
        at += 8;
    }
    assert_eq!(at + 4, b.len());
    assert_eq!(le32(&b, at), crc32fast::hash(&b[..at]));

    let work = tempfile::tempdir().unwrap();
    for name in [SEGMENT, CHECKPOINT] {
        fs::copy(fixture().join(name), work.path().join(name)).unwrap();
    }
    let store = LogStore::open_read_only(work.path()).unwrap();
    let report = store.recovery_report();
    assert_eq!(report.checkpoint_bytes, end as u64, "{report:?}");
    assert_eq!(report.records, 17);
    let expected = expected_events();
    assert_eq!(fixture_events(&store), expected);
}
