//! Adversarial review of salvage (`execlog::salvage`, `execlog export --salvage`):
//! forged records with valid CRCs, duplicate declarations, the golden fixtures of every
//! format version, bytes crafted to stall the search past damage. Each test asserts a
//! claim of `src/salvage.rs`; a failure is a finding.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::segment_files::{le32, record_offsets, segment_path};
use execlog::fault::Rng;
use execlog::{ExecutionId, LogStore, StoredEvent, TenantId};

const KIND_FORK: u16 = 4;

fn execlog(args: &[&str], stdin: &str) -> Output {
    common::output_with_stdin(
        Command::new(env!("CARGO_BIN_EXE_execlog")).args(args),
        stdin,
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn p(dir: &Path) -> &str {
    dir.to_str().unwrap()
}

/// Runs `f` on a thread; panics if it takes longer than `limit` (the thread is left
/// behind), or with the thread's panic.
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => {
            let _ = handle.join();
            v
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: did not finish within {limit:?}")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(e) => std::panic::resume_unwind(e),
            Ok(()) => unreachable!(),
        },
    }
}

/// Sets the header's CRC from its length, header and body.
fn reseal(rec: &mut [u8]) {
    let len = le32(rec, 4) as usize;
    let crc = crc32fast::hash(&rec[4..56 + len]);
    rec[0..4].copy_from_slice(&crc.to_le_bytes());
}

fn set64(rec: &mut [u8], at: usize, v: u64) {
    rec[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn set32(rec: &mut [u8], at: usize, v: u32) {
    rec[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn framed(rec_len_field: u32) -> usize {
    (56 + rec_len_field as usize).next_multiple_of(8)
}

/// The end of the records of a segment's bytes (first zero length field).
fn data_end(bytes: &[u8]) -> usize {
    record_offsets(bytes)
        .last()
        .map_or(32, |&at| at + framed(le32(bytes, at + 4)))
}

/// Appends `rec` (a whole framed record) at the data end of segment `id`, its
/// `group_start` set to its own offset and its CRC resealed; returns its offset.
fn append_forged(dir: &Path, id: u32, mut rec: Vec<u8>) -> usize {
    let path = segment_path(dir, id);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = data_end(&bytes);
    set32(&mut rec, 44, at as u32);
    reseal(&mut rec);
    if bytes.len() < at + rec.len() + 8 {
        bytes.resize(at + rec.len() + 8, 0);
    }
    bytes[at..at + rec.len()].copy_from_slice(&rec);
    std::fs::write(&path, bytes).unwrap();
    let _ = std::fs::remove_file(dir.join("checkpoint.idx"));
    at
}

fn pos(segment: u32, offset: usize) -> u64 {
    (u64::from(segment) << 32) | offset as u64
}

/// `a` (3 events) then `b` (2 events), tenant `t`, one event per record, closed.
fn two_executions(dir: &Path) {
    let store = LogStore::open(dir).unwrap();
    let t = TenantId::from("t");
    for n in 0..3 {
        store
            .append_blocking(&ExecutionId::from("a"), &t, common::step_event(n))
            .unwrap();
    }
    for n in 10..12 {
        store
            .append_blocking(&ExecutionId::from("b"), &t, common::step_event(n))
            .unwrap();
    }
    store.close().unwrap();
}

fn salvaged_ids(dir: &Path) -> Vec<String> {
    execlog::salvage(dir)
        .unwrap()
        .executions()
        .map(|s| s.execution_id.as_str().to_string())
        .collect()
}

/// Every id once: an export naming an execution twice is not one `import` takes as
/// it was (it either fails or merges two executions into one).
fn assert_unique(ids: &[String], ctx: &str) {
    let mut seen = HashSet::new();
    let dups: Vec<&String> = ids.iter().filter(|i| !seen.insert(*i)).collect();
    assert!(
        dups.is_empty(),
        "{ctx}: salvage returned ids twice: {dups:?} in {ids:?}"
    );
}

/// A forged copy of `a`'s first record (its declaration) as execution 2: two
/// executions declare `a`. Salvage must not return `a` twice.
#[test]
fn a_forged_duplicate_declaration_is_not_returned_twice() {
    let dir = tempfile::tempdir().unwrap();
    two_executions(dir.path());
    let bytes = std::fs::read(segment_path(dir.path(), 1)).unwrap();
    let first = record_offsets(&bytes)[0];
    let mut rec = bytes[first..first + framed(le32(&bytes, first + 4))].to_vec();
    set64(&mut rec, 8, 2); // execution number 2: the next one
    append_forged(dir.path(), 1, rec);
    let ids = salvaged_ids(dir.path());
    assert_unique(&ids, "a forged second declaration of `a`");
}

/// The same forged duplicate through `export --salvage` into `import`: the export must
/// be one `import` accepts, and `a` must come back with its 3 events, not be merged
/// with or replaced by the forgery.
#[test]
fn a_forged_duplicate_declaration_exports_an_importable_stream() {
    let dir = tempfile::tempdir().unwrap();
    two_executions(dir.path());
    let bytes = std::fs::read(segment_path(dir.path(), 1)).unwrap();
    let first = record_offsets(&bytes)[0];
    let mut rec = bytes[first..first + framed(le32(&bytes, first + 4))].to_vec();
    set64(&mut rec, 8, 2);
    append_forged(dir.path(), 1, rec);
    let out = execlog(&["export", "--salvage", p(dir.path())], "");
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
    let export = text(&out.stdout);
    let copy = tempfile::tempdir().unwrap();
    let imported = execlog(&["import", p(copy.path())], &export);
    assert!(
        imported.status.success(),
        "import refused the salvage export: {}\n--- export ---\n{export}",
        text(&imported.stderr)
    );
    let store = LogStore::open(copy.path()).unwrap();
    assert_eq!(
        store
            .load_events_blocking(&ExecutionId::from("a"))
            .unwrap()
            .len(),
        3
    );
}

/// A forged fork record declaring the id `b` (in use) as a new execution sharing
/// `a`'s first 2 events: salvage must not return `b` twice.
#[test]
fn a_forged_fork_declaring_an_id_in_use_is_not_returned_twice() {
    let dir = tempfile::tempdir().unwrap();
    two_executions(dir.path());
    let bytes = std::fs::read(segment_path(dir.path(), 1)).unwrap();
    let offsets = record_offsets(&bytes);
    let mut body = 0u64.to_le_bytes().to_vec();
    body.extend_from_slice(b"b");
    let mut rec = vec![0u8; framed(body.len() as u32)];
    set32(&mut rec, 4, body.len() as u32);
    set64(&mut rec, 8, 2); // the fork's number
    set64(&mut rec, 16, 2); // at
    set64(&mut rec, 24, 1);
    set64(&mut rec, 32, pos(1, offsets[1])); // a's record of sequence 2
    rec[48..50].copy_from_slice(&KIND_FORK.to_le_bytes());
    rec[56..56 + body.len()].copy_from_slice(&body);
    append_forged(dir.path(), 1, rec);
    let ids = salvaged_ids(dir.path());
    assert_unique(&ids, "a forged fork declaring `b`");
}

/// Every golden fixture (format versions 1, 2, 3: tombstones, a fork, erased records)
/// salvages exactly as the store serves it.
#[test]
fn every_format_fixture_salvages_as_it_serves() {
    for version in 1..=3 {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(format!("format_v{version}"));
        let dir = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(&fixture).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
        }
        let served = {
            let store = LogStore::open_read_only(dir.path()).unwrap();
            common::crash_image::everything(&store)
        };
        let s = execlog::salvage(dir.path()).unwrap();
        assert!(s.report().is_whole(), "v{version}: {:?}", s.report());
        let got: HashMap<ExecutionId, Vec<StoredEvent>> = s
            .executions()
            .map(|e| (e.execution_id, e.events.expect("reads back")))
            .collect();
        assert_eq!(
            got, served,
            "format v{version}: salvage differs from the store"
        );
    }
}

/// A store of forks inside batches, forks of forks, a tombstone and a tenant deletion:
/// the material the forgeries below mutate.
fn rich_store(dir: &Path) {
    let store = LogStore::open_with(dir, common::small_segments()).unwrap();
    let t = TenantId::from("t");
    let u = TenantId::from("u");
    let id = |s: &str| ExecutionId::from(s);
    store
        .append_batch_blocking(&id("x"), &t, (0..3).map(common::step_event).collect())
        .unwrap();
    store
        .append_blocking(&id("y"), &u, common::step_event(9))
        .unwrap();
    store
        .append_batch_blocking(&id("x"), &t, (3..5).map(common::step_event).collect())
        .unwrap();
    store
        .fork_execution_blocking(&id("x"), 2, &id("f"))
        .unwrap();
    store
        .append_batch_blocking(&id("f"), &t, (20..22).map(common::step_event).collect())
        .unwrap();
    store
        .fork_execution_blocking(&id("f"), 3, &id("g"))
        .unwrap();
    store
        .append_blocking(&id("g"), &t, common::step_event(30))
        .unwrap();
    store
        .append_blocking(&id("z"), &u, common::step_event(40))
        .unwrap();
    store.delete_execution_blocking(&id("z")).unwrap();
    store
        .append_blocking(&id("w"), &t, common::step_event(50))
        .unwrap();
    store.close().unwrap();
}

/// Checks what salvage promises whatever the bytes: sequences 1..n without a gap in
/// every execution returned (Ok), the report consistent. Returns the ids.
fn check_invariants(dir: &Path, ctx: &str) -> Vec<String> {
    let s = execlog::salvage(dir).unwrap_or_else(|e| panic!("{ctx}: salvage failed: {e}"));
    let mut ids = Vec::new();
    for e in s.executions() {
        ids.push(e.execution_id.as_str().to_string());
        if let Ok(events) = &e.events {
            assert!(
                !events.is_empty(),
                "{ctx}: {} returned empty",
                e.execution_id
            );
            for (i, ev) in events.iter().enumerate() {
                assert_eq!(
                    ev.sequence,
                    i as u64 + 1,
                    "{ctx}: {} has a gap",
                    e.execution_id
                );
                assert_eq!(ev.execution_id, e.execution_id, "{ctx}");
                assert_eq!(ev.tenant_id, e.tenant_id, "{ctx}");
            }
        }
    }
    ids
}

/// Forged header fields (execution, sequence, prev, batch_remaining, kind, body
/// length) with valid CRCs, one to three per image: salvage finishes quickly, never
/// panics, and what it returns reads from sequence 1 without a gap.
#[test]
fn forged_headers_with_valid_crcs_never_panic_or_stall() {
    let src = tempfile::tempdir().unwrap();
    rich_store(src.path());
    let mut segs: Vec<(u32, Vec<u8>)> = Vec::new();
    for id in 1.. {
        match std::fs::read(segment_path(src.path(), id)) {
            Ok(b) => segs.push((id, b)),
            Err(_) => break,
        }
    }
    let all: Vec<(usize, usize)> = segs
        .iter()
        .enumerate()
        .flat_map(|(s, (_, b))| record_offsets(b).into_iter().map(move |o| (s, o)))
        .collect();
    let iterations: u64 = std::env::var("ADV_SALVAGE_ITER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let work = tempfile::tempdir().unwrap();
    for seed in 0..iterations {
        let mut rng = Rng::new(seed);
        let mut images = segs.clone();
        for _ in 0..1 + rng.below(3) {
            let (s, at) = all[rng.below(all.len() as u64) as usize];
            let (id, bytes) = &mut images[s];
            let other = all[rng.below(all.len() as u64) as usize];
            let other_pos = pos(segs[other.0].0, other.1);
            let len = framed(le32(bytes, at + 4));
            let rec = &mut bytes[at..at + len];
            let interesting = [
                0,
                1,
                2,
                3,
                5,
                7,
                u64::MAX,
                u64::MAX - 1,
                u64::from(u32::MAX),
                other_pos,
                pos(*id, at),
                pos(*id, at + len),
                pos(99, 32),
            ];
            let v = interesting[rng.below(interesting.len() as u64) as usize];
            match rng.below(7) {
                0 => set64(rec, 8, v),
                1 => set64(rec, 16, v.max(1)),
                2 => set64(rec, 32, v),
                3 => set32(rec, 40, v as u32),
                4 => rec[48..50].copy_from_slice(&(1 + rng.below(6) as u16).to_le_bytes()),
                5 => {
                    // A fork record naming a random source, itself or a later one.
                    set64(rec, 16, v.clamp(1, 1 << 40));
                    let src = [0u64, 1, 2, 5, 8, u64::MAX][rng.below(6) as usize];
                    if rec.len() >= 56 + 9 {
                        rec[56..64].copy_from_slice(&src.to_le_bytes());
                    }
                }
                _ => {
                    // A shorter body length (the rest becomes the next "record").
                    let l = le32(rec, 4);
                    set32(rec, 4, (l / 2).max(1));
                }
            }
            reseal(rec);
        }
        let dir = work.path().join(format!("s{seed}"));
        std::fs::create_dir(&dir).unwrap();
        for (id, b) in &images {
            std::fs::write(segment_path(&dir, *id), b).unwrap();
        }
        let d = dir.clone();
        within(
            Duration::from_secs(20),
            &format!("seed {seed}"),
            move || {
                check_invariants(&d, &format!("seed {seed}"));
            },
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Segment ids with holes (segments 1 and 2 gone, as if removed by hand after a
/// retention prune) and a segment whose header names another id: salvage returns what
/// the remaining segments hold whole, and never an execution whose first record is
/// gone.
#[test]
fn missing_first_segments_lose_only_what_they_held() {
    let (dir, segments) = common::segment_files::store_over_segments();
    let served = {
        let s = LogStore::open_read_only(dir.path()).unwrap();
        common::crash_image::everything(&s)
    };
    std::fs::remove_file(segment_path(dir.path(), 1)).unwrap();
    std::fs::remove_file(segment_path(dir.path(), 2)).unwrap();
    let _ = std::fs::remove_file(dir.path().join("checkpoint.idx"));
    let s = execlog::salvage(dir.path()).unwrap();
    let got: Vec<_> = s.executions().collect();
    for e in &got {
        let events = e.events.as_ref().expect("reads back");
        let want = &served[&e.execution_id];
        assert_eq!(&want[..events.len()], &events[..], "{}", e.execution_id);
    }
    let ids: Vec<String> = got
        .iter()
        .map(|e| e.execution_id.as_str().to_string())
        .collect();
    assert_unique(&ids, "pruned");
    assert!(
        ids.contains(&"late".to_string()),
        "{ids:?} of {segments} segments"
    );
    assert!(!ids.contains(&"early".to_string()), "{ids:?}");
}

/// Bytes crafted to hold many plausible record headers (valid fields, body lengths
/// reaching the end of the file, wrong CRCs) after one bad record: the search past
/// damage computes a CRC over the rest of the file for each, quadratic in the size
/// (docs/DESIGN.md's known limits: 11.9 s for 8 MiB here). A 2 MiB segment must
/// salvage within 30 s, a bound against a hang, not a speed test.
#[test]
fn plausible_headers_do_not_make_salvage_quadratic() {
    let dir = tempfile::tempdir().unwrap();
    two_executions(dir.path());
    let path = segment_path(dir.path(), 1);
    let mut bytes = std::fs::read(&path).unwrap();
    let size = 2 << 20;
    bytes.resize(size, 0);
    let start = data_end(&bytes).next_multiple_of(64);
    // One bad record, then a plausible header every 64 bytes.
    bytes[start..start + 8].copy_from_slice(&[1, 0, 0, 0, 1, 0, 0, 0]);
    let mut at = start + 64;
    while at + 64 <= size {
        let mut h = [0u8; 64];
        set32(&mut h, 0, 0xdead_beef);
        set32(&mut h, 4, (size - at - 56) as u32);
        set64(&mut h, 8, 0);
        set64(&mut h, 16, 2);
        set64(&mut h, 32, pos(1, 32));
        h[48..50].copy_from_slice(&1u16.to_le_bytes());
        bytes[at..at + 64].copy_from_slice(&h);
        at += 64;
    }
    std::fs::write(&path, bytes).unwrap();
    let _ = std::fs::remove_file(dir.path().join("checkpoint.idx"));
    let d = dir.path().to_path_buf();
    let started = Instant::now();
    within(
        Duration::from_secs(30),
        "salvage of 2 MiB of plausible headers",
        move || {
            let s = execlog::salvage(&d).unwrap();
            s.executions().count()
        },
    );
    eprintln!("took {:?}", started.elapsed());
}

fn salvage_vs_served(dir: &Path, ctx: &str) {
    let served = {
        let s = LogStore::open_read_only(dir).unwrap();
        common::crash_image::everything(&s)
    };
    let got: HashMap<ExecutionId, Vec<StoredEvent>> = execlog::salvage(dir)
        .unwrap()
        .executions()
        .map(|e| (e.execution_id, e.events.expect("reads back")))
        .collect();
    let mut a: Vec<_> = served.keys().map(|k| k.as_str().to_string()).collect();
    let mut b: Vec<_> = got.keys().map(|k| k.as_str().to_string()).collect();
    a.sort();
    b.sort();
    assert_eq!(
        b, a,
        "{ctx}: salvage of an intact store lists other executions"
    );
    assert_eq!(got, served, "{ctx}");
}

/// A live fork sharing the first event of a batch of 3 whose source was deleted and
/// compacted (the batch's last 2 records erased): the store serves the fork; salvage
/// of the intact store must return it too.
#[test]
fn a_live_fork_of_a_compacted_batch_prefix_is_salvaged() {
    let dir = tempfile::tempdir().unwrap();
    let t = TenantId::from("t");
    let id = |s: &str| ExecutionId::from(s);
    let store =
        LogStore::open_with(dir.path(), common::small_segments().erasure_interval(None)).unwrap();
    store
        .append_batch_blocking(&id("x"), &t, (0..3).map(common::step_event).collect())
        .unwrap();
    store
        .fork_execution_blocking(&id("x"), 1, &id("f"))
        .unwrap();
    store.delete_execution_blocking(&id("x")).unwrap();
    store.compact_now().unwrap();
    assert_eq!(store.load_events_blocking(&id("f")).unwrap().len(), 1);
    store.close().unwrap();
    drop(store);
    salvage_vs_served(dir.path(), "fork of a compacted batch's prefix");
}

/// No batches at all: `g` forks `f` at 1, `f` forks `x` at 4 (single appends); `x`
/// and `f` deleted and compacted (x's events 2..4 erased, g keeps event 1). The store
/// serves g; salvage must return it.
#[test]
fn a_live_fork_of_a_deleted_fork_of_a_compacted_source_is_salvaged() {
    let dir = tempfile::tempdir().unwrap();
    let t = TenantId::from("t");
    let id = |s: &str| ExecutionId::from(s);
    let store =
        LogStore::open_with(dir.path(), common::small_segments().erasure_interval(None)).unwrap();
    for n in 0..4 {
        store
            .append_blocking(&id("x"), &t, common::step_event(n))
            .unwrap();
    }
    store
        .fork_execution_blocking(&id("x"), 4, &id("f"))
        .unwrap();
    store
        .fork_execution_blocking(&id("f"), 1, &id("g"))
        .unwrap();
    store.delete_execution_blocking(&id("x")).unwrap();
    store.delete_execution_blocking(&id("f")).unwrap();
    store.compact_now().unwrap();
    assert_eq!(store.load_events_blocking(&id("g")).unwrap().len(), 1);
    store.close().unwrap();
    drop(store);
    salvage_vs_served(dir.path(), "fork of a deleted fork");
}
