//! The background scrubber (issue 16): it finds a flipped bit in a sealed segment of an
//! open store, reads of the damaged range are refused with `Error::Corrupt` while the
//! rest is served, stats report it, its position survives a restart (and a bad
//! `scrub.progress` only restarts the pass), readers never write, and close is prompt
//! however slow the rate.
//!
//! Regression guarded: a scrubber that checks bytes but lets reads serve a range it
//! found damaged, loses its place at every restart, refuses to open over a bad progress
//! file, writes from a reader, or keeps close waiting for its next chunk.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::{fill_a_and_b, small_segments, step_event};
use execlog::fault::SimIo;
use execlog::*;

const FAST: ScrubRate = ScrubRate::BytesPerSecond(1 << 30);

fn seg(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:010}.seg"))
}

fn progress_path(dir: &Path) -> PathBuf {
    dir.join("scrub.progress")
}

/// Events per execution.
const EVENTS: u64 = 2500;

/// Appends 100 batches of 25 events to each of executions "a" and "b", interleaved:
/// several sealed 64 KiB segments, each holding records of both.
fn fill(store: &LogStore) {
    fill_a_and_b(store, EVENTS / 25);
}

/// A closed store as `fill` leaves it, with at least five sealed segments.
fn filled_store() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open_with(dir.path(), small_segments().scrub(ScrubRate::Off)).unwrap();
    fill(&store);
    assert!(store.stats().segments >= 6, "{:?}", store.stats().segments);
    store.close().unwrap();
    dir
}

/// Where each event of `execution` starts: (segment, offset, sequence).
fn positions_of(store: &LogStore, execution: &str) -> Vec<(u32, u64, u64)> {
    let filter = SubscriptionFilter::Execution(ExecutionId::from(execution));
    let mut sub = store.subscribe(filter, StartFrom::Beginning).unwrap();
    let mut out = Vec::new();
    while let Some(d) = sub.try_next().unwrap() {
        out.push((
            (d.position >> 32) as u32,
            d.position & 0xFFFF_FFFF,
            d.event.sequence,
        ));
    }
    out
}

/// Flips one bit of the byte at `offset` of segment `id`, through the file.
fn flip(dir: &Path, id: u32, offset: u64) {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(seg(dir, id))
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    file.write_all_at(&[byte[0] ^ 0x04], offset).unwrap();
}

/// A record of "a" in sealed segment 2: its offset and sequence.
fn victim(store: &LogStore) -> (u64, u64) {
    let (_, offset, sequence) = *positions_of(store, "a").iter().find(|p| p.0 == 2).unwrap();
    (offset, sequence)
}

fn corrupt_at(result: Result<Vec<StoredEvent>>) -> (u32, u64) {
    match result {
        Err(Error::Corrupt {
            segment, offset, ..
        }) => (segment, offset),
        other => panic!("expected Corrupt, got {:?}", other.map(|e| e.len())),
    }
}

#[test]
fn a_flipped_bit_in_a_sealed_segment_is_refused_and_the_rest_served() {
    let dir = filled_store();
    let store = LogStore::open_with(dir.path(), small_segments().scrub(ScrubRate::Off)).unwrap();
    let (offset, sequence) = victim(&store);
    // In the body, past the 56-byte header: only the CRC can tell.
    flip(dir.path(), 2, offset + 60);

    let report = store.scrub_now().unwrap();
    assert_eq!(report.damaged.len(), 1, "{report:?}");
    let range = &report.damaged[0];
    assert_eq!((range.segment, range.from), (2, offset));
    assert!(range.to > offset, "{range:?}");
    assert!(report.segments >= 5 && report.records > 1000, "{report:?}");
    let stats = store.stats().scrub;
    assert_eq!(stats.damaged, report.damaged);
    assert_eq!(stats.passes, 1);
    assert_eq!(stats.scrubbed_bytes, report.bytes);

    let a = ExecutionId::from("a");
    assert_eq!(corrupt_at(store.load_events_blocking(&a)), (2, offset));
    assert_eq!(
        corrupt_at(store.read_range_blocking(&a, sequence - 1, 1)),
        (2, offset)
    );
    // What does not touch the range is served: the other execution, and the events of
    // "a" after the damaged one.
    assert_eq!(
        store
            .load_events_blocking(&ExecutionId::from("b"))
            .unwrap()
            .len() as u64,
        EVENTS
    );
    let after = store.load_events_after_blocking(&a, sequence).unwrap();
    assert_eq!(after.len() as u64, EVENTS - sequence);
    assert_eq!(after[0].sequence, sequence + 1);
    // A subscription stops at the range instead of delivering it.
    let mut sub = store
        .subscribe(SubscriptionFilter::All, StartFrom::Beginning)
        .unwrap();
    let failed = loop {
        match sub.try_next() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the subscription delivered past the damage"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(failed, Error::Corrupt { segment: 2, .. }),
        "{failed}"
    );
}

/// A range found damaged stays refused even when its bytes read well again: the
/// refusal is the scrubber's, not only the read's own CRC check.
#[test]
fn a_damaged_range_stays_refused_after_its_bytes_read_well_again() {
    let dir = filled_store();
    let store = LogStore::open_with(dir.path(), small_segments().scrub(ScrubRate::Off)).unwrap();
    let (offset, _) = victim(&store);
    flip(dir.path(), 2, offset + 60);
    assert_eq!(store.scrub_now().unwrap().damaged.len(), 1);
    flip(dir.path(), 2, offset + 60);
    let a = ExecutionId::from("a");
    let err = match store.load_events_blocking(&a) {
        Err(e) => e,
        Ok(events) => panic!("served {} events over a range found damaged", events.len()),
    };
    assert!(err.to_string().contains("scrubber"), "{err}");
    let mut sub = store
        .subscribe(SubscriptionFilter::Execution(a), StartFrom::Beginning)
        .unwrap();
    let refused = (0..2 * EVENTS).find_map(|_| sub.try_next().err());
    assert!(
        matches!(refused, Some(Error::Corrupt { segment: 2, .. })),
        "{refused:?}"
    );
    // The flip is undone on disk: a clean reopen serves everything again.
    store.close().unwrap();
    let store = LogStore::open_with(dir.path(), small_segments().scrub(ScrubRate::Off)).unwrap();
    assert_eq!(
        store
            .load_events_blocking(&ExecutionId::from("a"))
            .unwrap()
            .len() as u64,
        EVENTS
    );
}

/// Waits up to 20 s for `done` on the store's scrub stats.
fn wait_for(store: &LogStore, what: &str, done: impl Fn(&ScrubStats) -> bool) -> ScrubStats {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = store.stats().scrub;
        if done(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "no {what}: {stats:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_background_scrubber_finds_damage_unasked() {
    let dir = filled_store();
    let store = LogStore::open_with(dir.path(), small_segments().scrub(FAST)).unwrap();
    let (offset, _) = victim(&store);
    flip(dir.path(), 2, offset + 60);
    let stats = wait_for(&store, "damage found", |s| !s.damaged.is_empty());
    assert_eq!(
        (stats.damaged[0].segment, stats.damaged[0].from),
        (2, offset)
    );
    assert!(stats.scrubbed_bytes > 0);
    let a = ExecutionId::from("a");
    assert_eq!(corrupt_at(store.load_events_blocking(&a)), (2, offset));
    assert_eq!(
        store
            .load_events_blocking(&ExecutionId::from("b"))
            .unwrap()
            .len() as u64,
        EVENTS
    );
    // Found once, reported once, however many passes see it again.
    let later = wait_for(&store, "second pass", |s| s.passes >= stats.passes + 2);
    assert_eq!(later.damaged.len(), 1);
}

/// A store on the simulated file system, filled as `fill` does, with the byte 60 bytes
/// into a record of "a" in segment 2 gone bad on the device only: the cache, which
/// reads and maps see, still holds it whole. Returns the record's offset.
fn rotted_under_the_cache(sim: &SimIo, rate: ScrubRate) -> (LogStore, u64) {
    let dir = Path::new("/store");
    let options = small_segments().scrub(rate).io(Arc::new(sim.clone()));
    let store = LogStore::open_with(dir, options).unwrap();
    fill(&store);
    let (offset, _) = victim(&store);
    assert!(sim.rot(&seg(dir, 2), (offset + 60) as usize, 0x04));
    (store, offset)
}

/// The scrubber checks what the device holds, not the page cache: a byte that went
/// bad under a cached page is found (a check of the cache would call it whole until the
/// page is evicted), and refused from then on.
#[test]
fn damage_on_the_device_under_a_cached_page_is_found() {
    let sim = SimIo::new();
    let (store, offset) = rotted_under_the_cache(&sim, ScrubRate::Off);
    let a = ExecutionId::from("a");
    // Reads go through the cache, which still holds the byte as it was.
    assert_eq!(store.load_events_blocking(&a).unwrap().len() as u64, EVENTS);

    let report = store.scrub_now().unwrap();
    assert_eq!(report.damaged.len(), 1, "{report:?}");
    assert_eq!(
        (report.damaged[0].segment, report.damaged[0].from),
        (2, offset)
    );
    assert_eq!(corrupt_at(store.load_events_blocking(&a)), (2, offset));
    let b = store.load_events_blocking(&ExecutionId::from("b")).unwrap();
    assert_eq!(b.len() as u64, EVENTS);
}

#[test]
fn the_background_scrubber_reads_the_device_too() {
    let sim = SimIo::new();
    let (store, offset) = rotted_under_the_cache(&sim, FAST);
    let stats = wait_for(&store, "damage found", |s| !s.damaged.is_empty());
    assert_eq!(
        (stats.damaged[0].segment, stats.damaged[0].from),
        (2, offset)
    );
    let a = ExecutionId::from("a");
    assert_eq!(corrupt_at(store.load_events_blocking(&a)), (2, offset));
}

/// An erasure that replaces the segment the scrubber is in the middle of moves its
/// record boundaries (a span covers many records): the scrubber starts that segment
/// again instead of reading the new file from an old boundary, where it would call
/// the inside of a span damage.
#[test]
fn an_erasure_under_a_scrub_in_progress_is_no_damage() {
    let dir = tempfile::tempdir().unwrap();
    let t = TenantId::from("t");
    let (dead, live) = (ExecutionId::from("dead"), ExecutionId::from("live"));
    let store = LogStore::open_with(dir.path(), small_segments().scrub(ScrubRate::Off)).unwrap();
    for batch in 0..150 {
        let events = (1..=25).map(|i| step_event(batch * 25 + i)).collect();
        store.append_batch_blocking(&dead, &t, events).unwrap();
        store
            .append_blocking(&live, &t, step_event(batch + 1))
            .unwrap();
    }
    assert!(store.stats().segments >= 4);
    store.delete_execution_blocking(&dead).unwrap();
    store.close().unwrap();
    // About 2.5 KiB a tenth of a second: segment 1 (64 KiB) takes seconds.
    let slow = ScrubRate::BytesPerSecond(25 << 10);
    let store = LogStore::open_with(dir.path(), small_segments().scrub(slow)).unwrap();
    wait_for(&store, "a scrub under way", |s| s.scrubbed_bytes > 8 << 10);
    assert_eq!(
        store.stats().scrub.segment,
        1,
        "the scrub is past segment 1 already"
    );
    let report = store.compact_now().unwrap();
    assert!(report.segments_rewritten >= 1, "{report:?}");
    let stats = wait_for(&store, "segment 1 done", |s| s.segment > 1);
    assert!(stats.damaged.is_empty(), "{:?}", stats.damaged);
    assert!(store.scrub_now().unwrap().is_clean());
    assert_eq!(store.load_events_blocking(&live).unwrap().len(), 150);
}

/// The bytes of `scrub.progress` for (passes, segment), as docs/FORMAT.md gives them.
fn progress_bytes(passes: u64, segment: u32) -> Vec<u8> {
    let mut b = b"EXECSCRB".to_vec();
    b.extend(passes.to_le_bytes());
    b.extend(segment.to_le_bytes());
    b.extend([0; 4]);
    let crc = crc32fast::hash(&b);
    b.extend(crc.to_le_bytes());
    b.extend([0; 4]);
    b
}

/// (passes, segment) from `scrub.progress`, checking every documented field.
fn read_progress(dir: &Path) -> (u64, u32) {
    let b = fs::read(progress_path(dir)).unwrap();
    assert_eq!(b.len(), 32);
    assert_eq!(&b[..8], b"EXECSCRB");
    assert_eq!(b[20..24], [0; 4]);
    assert_eq!(
        u32::from_le_bytes(b[24..28].try_into().unwrap()),
        crc32fast::hash(&b[..24])
    );
    assert_eq!(b[28..], [0; 4]);
    let passes = u64::from_le_bytes(b[8..16].try_into().unwrap());
    (passes, u32::from_le_bytes(b[16..20].try_into().unwrap()))
}

/// Where the records of a segment file end.
fn data_end(bytes: &[u8]) -> u64 {
    let mut at = 32;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        at += (56 + len).next_multiple_of(8);
    }
    at as u64
}

#[test]
fn a_pass_resumes_at_its_saved_segment_after_a_restart() {
    let dir = filled_store();
    let segments = LogStore::open_reader(dir.path()).unwrap().stats().segments as u32;
    fs::write(progress_path(dir.path()), progress_bytes(5, 4)).unwrap();
    let store = LogStore::open_with(dir.path(), small_segments().scrub(FAST)).unwrap();
    let stats = wait_for(&store, "pass", |s| s.passes == 6);
    // The pass went from segment 4 to the last sealed one, not from segment 1.
    let expected: u64 = (4..segments)
        .map(|id| data_end(&fs::read(seg(dir.path(), id)).unwrap()))
        .sum();
    assert_eq!(stats.scrubbed_bytes, expected);
    assert_eq!(read_progress(dir.path()), (6, 1));
    store.close().unwrap();

    // Interrupted mid-pass: close saves where it was, the next open starts there.
    let slow = ScrubRate::BytesPerSecond(200 << 10);
    let store = LogStore::open_with(dir.path(), small_segments().scrub(slow)).unwrap();
    wait_for(&store, "segment 3", |s| s.segment >= 3);
    store.close().unwrap();
    let (passes, segment) = read_progress(dir.path());
    assert_eq!(passes, 6);
    assert!((3..segments).contains(&segment), "{segment}");
    let store = LogStore::open_with(
        dir.path(),
        small_segments().scrub(ScrubRate::BytesPerSecond(1)),
    )
    .unwrap();
    let stats = store.stats().scrub;
    assert_eq!((stats.passes, stats.segment), (6, segment));
}

/// Stopped after its last sealed segment, before the pass could end: the pass counts
/// as done at the next open, and the next one starts at segment 1.
#[test]
fn a_pass_saved_past_the_sealed_segments_counts_as_done() {
    let dir = filled_store();
    let segments = LogStore::open_reader(dir.path()).unwrap().stats().segments as u32;
    fs::write(progress_path(dir.path()), progress_bytes(5, segments)).unwrap();
    let options = small_segments().scrub(ScrubRate::BytesPerSecond(1));
    let store = LogStore::open_with(dir.path(), options).unwrap();
    let stats = wait_for(&store, "pass", |s| s.passes == 6);
    assert_eq!((stats.segment, stats.scrubbed_bytes), (1, 0));
    store.close().unwrap();
    assert_eq!(read_progress(dir.path()), (6, 1));
}

#[test]
fn a_bad_progress_file_restarts_the_pass() {
    let dir = filled_store();
    let good = progress_bytes(3, 2);
    let mut flipped = good.clone();
    flipped[17] ^= 1;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("truncated", good[..20].to_vec()),
        ("longer", [good.clone(), vec![0]].concat()),
        ("flipped bit", flipped),
        ("forged beyond the store", progress_bytes(77, 1000)),
        ("forged segment 0", progress_bytes(77, 0)),
        ("garbage", vec![0xFF; 32]),
    ];
    for (what, bytes) in cases {
        fs::write(progress_path(dir.path()), &bytes).unwrap();
        let options = small_segments().scrub(ScrubRate::BytesPerSecond(1));
        let store = LogStore::open_with(dir.path(), options).unwrap();
        let stats = store.stats().scrub;
        assert_eq!((stats.passes, stats.segment), (0, 1), "{what}");
        store.close().unwrap();
        let store = LogStore::open_with(dir.path(), small_segments().scrub(FAST)).unwrap();
        wait_for(&store, "pass", |s| s.passes == 1);
        store.close().unwrap();
        assert_eq!(read_progress(dir.path()), (1, 1), "{what}");
    }
}

/// Every file's name, length, modification time and bytes, and the directory's mtime.
type Snapshot = (Vec<(String, u64, SystemTime, Vec<u8>)>, SystemTime);

fn snapshot(dir: &Path) -> Snapshot {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            let name = e.file_name().into_string().unwrap();
            (
                name,
                meta.len(),
                meta.modified().unwrap(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    (files, fs::metadata(dir).unwrap().modified().unwrap())
}

#[test]
fn readers_scrub_but_never_write() {
    let dir = filled_store();
    fs::write(progress_path(dir.path()), progress_bytes(2, 3)).unwrap();
    let opens: [fn(&Path) -> Result<LogStore>; 2] = [
        |d| LogStore::open_reader(d),
        |d| LogStore::open_read_only(d),
    ];
    for (i, open) in opens.into_iter().enumerate() {
        let reader = open(dir.path()).unwrap();
        let (offset, _) = victim(&reader);
        // Damage found by this reader's scrub (a damaged store does not open).
        flip(dir.path(), 2, offset + 60);
        let before = snapshot(dir.path());
        assert_eq!(reader.scrub_now().unwrap().damaged.len(), 1, "open {i}");
        assert_eq!(reader.stats().scrub.damaged.len(), 1, "open {i}");
        // Time for a background scrubber, had a reader one, to pass and save.
        std::thread::sleep(Duration::from_millis(1500));
        reader.close().unwrap();
        assert_eq!(snapshot(dir.path()), before, "open {i}");
        flip(dir.path(), 2, offset + 60);
    }
}

#[test]
fn close_is_prompt_at_one_byte_per_second() {
    let dir = filled_store();
    for drop_it in [false, true] {
        let options = small_segments().scrub(ScrubRate::BytesPerSecond(1));
        let store = LogStore::open_with(dir.path(), options).unwrap();
        wait_for(&store, "a first chunk", |s| s.scrubbed_bytes > 0);
        std::thread::sleep(Duration::from_millis(100));
        // The scrubber's next chunk is 32 s away; the bound leaves room for the seal's
        // and the checkpoint's fsyncs on a busy disk.
        let started = Instant::now();
        if drop_it {
            drop(store);
        } else {
            store.close().unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}

#[test]
fn rates_are_checked_at_open() {
    let dir = tempfile::tempdir().unwrap();
    for rate in [
        ScrubRate::BytesPerSecond(0),
        ScrubRate::WholeStoreEvery(Duration::from_millis(10)),
    ] {
        let e = LogStore::open_with(dir.path(), Options::default().scrub(rate)).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    }
}
