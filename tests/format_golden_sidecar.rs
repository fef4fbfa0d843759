//! Format lock for segment sidecars (docs/FORMAT.md, "Segment sidecar"). The fixture
//! `tests/fixtures/sidecar_v1/` is the crash image of a store closed cleanly with
//! executions "a", "b" and "d" (its checkpoint covers part of segment 1), reopened,
//! appended to until segments 1 and 2 were sealed (their sidecars written), with "d"
//! deleted on the way, and copied while open. The test parses segment 2's sidecar at
//! the offsets FORMAT.md gives, and opens the fixture: taking segment 2 from its
//! sidecar, and without sidecars, to the reads in `expected.txt`.
//!
//! Regenerate (only when deliberately starting a new sidecar version, keeping the old
//! fixture): `EXECLOG_WRITE_FIXTURE=sidecar cargo test --test format_golden_sidecar`.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::step_event;
use execlog::*;

const SIDECAR: &str = "0000000002.side";
const SEGMENT_2: &str = "0000000002.seg";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sidecar_v1")
}

fn options() -> Options {
    Options::default()
        .segment_size_bytes(64 * 1024)
        .verify_checkpoint_after_open(true)
        .index_checkpoint_interval_bytes(Some(1 << 40))
}

fn id(s: &str) -> ExecutionId {
    ExecutionId::from(s)
}

/// What a read of each execution returns, one line per event (sequence, step,
/// timestamp); none for a deleted execution or one never written.
fn reads(store: &LogStore) -> String {
    let mut out = String::new();
    for name in ["a", "b", "c", "d"] {
        for e in store.load_events_blocking(&id(name)).unwrap() {
            let ExecutionEventData::StepCompleted { step_id, .. } = &e.event else {
                panic!("{e:?}");
            };
            out += &format!("{name} {} {step_id} {}\n", e.sequence, e.timestamp);
        }
    }
    out
}

fn fill(store: &LogStore, names: &[&str], batches: std::ops::Range<u64>) {
    let t = TenantId::from("t");
    for batch in batches {
        for name in names {
            let events = (1..=5).map(|i| step_event(batch * 5 + i)).collect();
            store.append_batch_blocking(&id(name), &t, events).unwrap();
        }
    }
}

fn write_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open_with(dir.path(), options()).unwrap();
    fill(&store, &["a", "b", "d"], 0..2);
    store.close().unwrap();
    let store = LogStore::open_with(dir.path(), options()).unwrap();
    fill(&store, &["b", "c"], 2..60);
    store.delete_execution_blocking(&id("d")).unwrap();
    while store.stats().segments < 3 {
        fill(&store, &["b", "c"], 60..61);
    }
    let started = Instant::now();
    while !dir.path().join(SIDECAR).exists() {
        assert!(started.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(5));
    }
    let image = common::crash_image::copy(dir.path());
    drop(store);
    let out = fixture();
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).unwrap();
    for entry in fs::read_dir(image.path()).unwrap() {
        let name = entry.unwrap().file_name();
        fs::copy(image.path().join(&name), out.join(&name)).unwrap();
    }
    let store = LogStore::open_with(image.path(), options()).unwrap();
    fs::write(out.join("expected.txt"), reads(&store)).unwrap();
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn sidecar_bytes_match_format_md() {
    if std::env::var("EXECLOG_WRITE_FIXTURE").as_deref() == Ok("sidecar") {
        write_fixture();
    }
    let b = fs::read(fixture().join(SIDECAR)).unwrap();
    let segment = fs::read(fixture().join(SEGMENT_2)).unwrap();
    assert_eq!(&b[0..8], b"EXLGSIDE");
    assert_eq!(le32(&b, 8), 1, "version");
    assert_eq!(le32(&b, 12), 2, "segment");
    let end = le64(&b, 16);
    assert!(end.is_multiple_of(8) && end >= 32 && end <= segment.len() as u64);
    assert!(
        segment[end as usize..].iter().all(|&x| x == 0),
        "zeros after end"
    );
    assert_ne!(
        segment[end as usize - 8..end as usize],
        [0; 8],
        "a record ends there"
    );
    let records = le64(&b, 24);
    assert!(records > 100, "{records} records");
    assert_eq!(
        le64(&b, 32),
        0,
        "segment 2 declares nothing: b and c came before"
    );
    let timestamp = le64(&b, 40) as i64;
    assert!(timestamp > 1_700_000_000_000_000_000, "{timestamp}");
    let tail_group_start = le32(&b, 48) as u64;
    assert!(tail_group_start >= 32 && tail_group_start < end);
    let flags = le32(&b, 52);
    assert_eq!(flags & !3, 0);
    assert_eq!(flags & 2, 2, "it holds records");
    let tail_from = (end as usize).saturating_sub(4096).max(32);
    assert_eq!(
        le32(&b, 56),
        crc32fast::hash(&segment[tail_from..end as usize]),
        "tail crc"
    );
    let count = le32(&b, 60) as usize;
    assert_eq!(b.len(), 64 + 8 * count + 4);
    let touched: Vec<u64> = (0..count).map(|i| le64(&b, 64 + 8 * i)).collect();
    // Executions are numbered in log order: a 0, b 1, d 2, c 3.
    assert_eq!(touched, [1, 3], "b and c append to segment 2");
    assert_eq!(
        le32(&b, 64 + 8 * count),
        crc32fast::hash(&b[..64 + 8 * count])
    );
}

#[test]
fn the_fixture_opens_with_its_sidecar_and_without_to_the_same_reads() {
    let expected = fs::read_to_string(fixture().join("expected.txt")).unwrap();
    for sidecars in [true, false] {
        let copy = tempfile::tempdir().unwrap();
        for entry in fs::read_dir(fixture()).unwrap() {
            let name = entry.unwrap().file_name();
            if name != "expected.txt" {
                fs::copy(fixture().join(&name), copy.path().join(&name)).unwrap();
            }
        }
        let store = LogStore::open_with(copy.path(), options().segment_sidecars(sidecars)).unwrap();
        let report = store.recovery_report();
        assert!(report.index_decoded_after_open, "{report:?}");
        assert_eq!(
            report.segments_from_sidecars,
            u32::from(sidecars),
            "{report:?}"
        );
        assert_eq!(reads(&store), expected, "sidecars {sidecars}");
    }
}
