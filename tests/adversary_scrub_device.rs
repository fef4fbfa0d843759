//! Adversary review of the scrubber's device reads (branch adv31): O_DIRECT windows
//! (`scrub::check_window`), the re-read to the segment's end on damage, the restart
//! when an erasure replaces a segment mid-check, readers, close, file systems without
//! direct reads, and rates down to one byte a second.
//!
//! What these tests hold the change to: a window check reports exactly the ranges a
//! whole-segment check reports (forged lengths at part edges, zeroed headers, a 4 GiB
//! length in a segment's first record); erasures, readers and close under a running
//! scrub are never damage; the device reads stay near the bytes checked (the paced
//! rate, and "4 MiB at a time" for `scrub_now`); and erasures cannot hold the scrubber
//! on one segment for good.
//!
//! Failing when written (findings): `a_slow_scrubber_reads_the_device_at_about_its_rate`
//! (22x the bytes checked read from the device at 20 KiB/s),
//! `damage_in_each_part_does_not_reread_the_rest_of_the_segment_each_time` (5.3x, one
//! 32 MiB buffer). `frequent_erasures_do_not_keep_the_scrubber_on_one_segment` is
//! expected to fail too, at its last assertion; it was not run to it (its segment
//! count precondition, first `>= 3`, saw 2 and was relaxed to `>= 2` afterwards).
//!
//! Every test takes `SERIAL`: two of them measure the I/O of the scrubber's thread and
//! of the test's own thread (`/proc/.../io`, `rchar`), and one the largest allocation
//! on the test's thread, so nothing else in this binary may run beside them.

#![allow(clippy::unwrap_used)]
// The counting allocator below (a test-only measurement of the scrubber's buffers).
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{fill_a_and_b, small_segments, step_event};
use execlog::fault::SimIo;
use execlog::*;

// ---------------------------------------------------------------------------------
// Measurement helpers.

/// Records the largest allocation made by a thread that set `TRACKED`.
struct Tracking;

thread_local! {
    static TRACKED: Cell<bool> = const { Cell::new(false) };
}

static PEAK: AtomicUsize = AtomicUsize::new(0);

fn note(size: usize) {
    if TRACKED.try_with(Cell::get).unwrap_or(false) {
        PEAK.fetch_max(size, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `rchar` (bytes returned by read calls) from a `/proc/.../io` file.
fn rchar(io_file: &str) -> u64 {
    let text = fs::read_to_string(io_file).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The ids of this process's threads named `execlog-scrub`.
fn scrub_threads() -> Vec<u32> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc/self/task").unwrap() {
        let Ok(entry) = entry else { continue };
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let comm = fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap_or_default();
        if comm.trim() == "execlog-scrub" {
            out.push(tid);
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// Store helpers.

fn seg(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:010}.seg"))
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// The record starts of a segment file's bytes and where its records end.
fn record_starts(bytes: &[u8]) -> (Vec<u64>, u64) {
    let mut starts = Vec::new();
    let mut at = 32;
    while at + 56 <= bytes.len() {
        let len = read_u32(bytes, at + 4) as usize;
        if len == 0 {
            break;
        }
        starts.push(at as u64);
        at += (56 + len).next_multiple_of(8);
    }
    (starts, at as u64)
}

/// Where the record at index `i` of `starts` ends (the next start, or `end`).
fn next_start(starts: &[u64], end: u64, i: usize) -> u64 {
    starts.get(i + 1).copied().unwrap_or(end)
}

/// Writes `bytes` at `offset` of the file (page cache and, at the next writeback or
/// direct read, the disk).
fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, offset).unwrap();
}

/// An event whose body is about `len` bytes, from a deterministic generator.
fn sized_event(n: u64, len: usize) -> ExecutionEventData {
    let output: String = (0..len)
        .map(|i| char::from(b'a' + ((n as usize * 31 + i * 7) % 26) as u8))
        .collect();
    ExecutionEventData::StepCompleted {
        step_id: StepId::from(format!("s{n}")),
        output: Some(output),
        duration_ms: n,
    }
}

fn filled_small_store() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open_with(dir.path(), small_segments().scrub(ScrubRate::Off)).unwrap();
    // 40 batches of 25 small events to each of "a" and "b": a few sealed segments.
    fill_a_and_b(&store, 40);
    assert!(store.stats().segments >= 3, "{}", store.stats().segments);
    store.close().unwrap();
    dir
}

fn wait_for(
    store: &LogStore,
    what: &str,
    secs: u64,
    done: impl Fn(&ScrubStats) -> bool,
) -> ScrubStats {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let stats = store.stats().scrub;
        if done(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "no {what}: {stats:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn ranges_of(damaged: &[DamagedRange], segment: u32) -> Vec<(u64, u64)> {
    let mut out: Vec<_> = damaged
        .iter()
        .filter(|d| d.segment == segment)
        .map(|d| (d.from, d.to))
        .collect();
    out.sort_unstable();
    out
}

// ---------------------------------------------------------------------------------
// Findings: device reads far beyond the bytes checked.

/// At a low fixed rate, each chunk checks about rate/10 bytes but reads the chunk
/// plus 64 KiB of slack from the device (here: the rest of the 64 KiB segment), and
/// the next chunk reads most of it again. DESIGN.md: "the price is the pass's bytes
/// read from the disk, at the paced rate"; `Options::scrub`: the rate is how fast it
/// re-reads from the device. Measured: the scrubber thread's `rchar` against the bytes
/// it checked.
#[test]
fn a_slow_scrubber_reads_the_device_at_about_its_rate() {
    let _serial = serial();
    let dir = filled_small_store();
    let before = scrub_threads();
    let rate = ScrubRate::BytesPerSecond(20 << 10);
    let store = LogStore::open_with(dir.path(), small_segments().scrub(rate)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let new: Vec<u32> = scrub_threads()
        .into_iter()
        .filter(|t| !before.contains(t))
        .collect();
    assert_eq!(new.len(), 1, "{new:?}");
    let io_file = format!("/proc/self/task/{}/io", new[0]);
    std::thread::sleep(Duration::from_millis(2000));
    let read = rchar(&io_file);
    let checked = store.stats().scrub.scrubbed_bytes;
    store.close().unwrap();
    assert!(checked > 0);
    assert!(
        read <= 3 * checked + (128 << 10),
        "at 20 KiB/s the scrubber checked {checked} bytes in 2 s but read {read} bytes \
         from the device ({:.1}x)",
        read as f64 / checked as f64
    );
}

/// Damage makes a part re-read the whole rest of its segment, into one buffer (and a
/// copy): with damage in each 4 MiB part of a 32 MiB segment, `scrub_now` ("4 MiB at
/// a time") reads the segment about 5 times over and allocates a 32 MiB buffer. At the
/// largest segment (1 GiB) and the background's 256 KiB chunks that is up to 4096
/// re-reads of up to 1 GiB each per pass, and 2 GiB of buffers at once.
#[test]
fn damage_in_each_part_does_not_reread_the_rest_of_the_segment_each_time() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .segment_size_bytes(32 << 20)
        .scrub(ScrubRate::Off);
    let store = LogStore::open_with(dir.path(), options).unwrap();
    let (e, t) = (ExecutionId::from("big"), TenantId::from("t"));
    let mut n = 0;
    while store.stats().segments < 2 {
        let events = (0..16)
            .map(|i| sized_event(n + i, 60 << 10))
            .collect::<Vec<_>>();
        n += 16;
        store.append_batch_blocking(&e, &t, events).unwrap();
    }
    // Segment 2 holds a durable record: segment 1 is sealed.
    store.append_blocking(&e, &t, sized_event(n, 100)).unwrap();
    let path = seg(dir.path(), 1);
    let (starts, end) = record_starts(&fs::read(&path).unwrap());
    assert!(end > 30 << 20, "{end}");
    // A flipped body byte in the first record past 512 KiB of each 4 MiB part.
    let mut targets = Vec::new();
    for k in 0..8u64 {
        let at = *starts
            .iter()
            .find(|&&s| s >= k * (4 << 20) + (512 << 10))
            .unwrap();
        targets.push(at);
        flip(&path, at + 100);
    }
    let io_file = "/proc/thread-self/io";
    PEAK.store(0, Ordering::Relaxed);
    let read_before = rchar(io_file);
    TRACKED.with(|t| t.set(true));
    let report = store.scrub_now().unwrap();
    TRACKED.with(|t| t.set(false));
    let read = rchar(io_file) - read_before;
    let peak = PEAK.load(Ordering::Relaxed);
    let found: Vec<u64> = ranges_of(&report.damaged, 1).iter().map(|r| r.0).collect();
    assert_eq!(found, targets, "{report:?}");
    store.close().unwrap();
    let sealed = report.bytes;
    assert!(
        read <= 2 * sealed + (8 << 20) && peak <= 9 << 20,
        "scrub_now of {sealed} sealed bytes with 8 damaged records read {read} bytes from \
         the device ({:.1}x) and allocated a {peak}-byte buffer (4 MiB parts promised)",
        read as f64 / sealed as f64
    );
}

/// An erasure that replaces the segment being checked restarts its check at 0
/// (`Checked::restart`). Erasures more frequent than one segment's check at the
/// scrubber's rate (`Options::erasure_interval` goes down to 10 ms; here
/// `compact_now` every 0.4 s, each deleted execution having records in segment 1) keep
/// it on segment 1 for good: at 40 KiB/s a 64 KiB segment takes 1.6 s, yet after 4 s
/// the scrubber has not left segment 1, and no later segment is ever checked.
#[test]
fn frequent_erasures_do_not_keep_the_scrubber_on_one_segment() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let t = TenantId::from("t");
    let dead: Vec<ExecutionId> = (0..10)
        .map(|i| ExecutionId::from(format!("x{i}")))
        .collect();
    let live = ExecutionId::from("live");
    {
        let store =
            LogStore::open_with(dir.path(), small_segments().scrub(ScrubRate::Off)).unwrap();
        for round in 0..30u64 {
            for d in &dead {
                let events = (1..=5).map(|i| step_event(round * 5 + i)).collect();
                store.append_batch_blocking(d, &t, events).unwrap();
            }
            store
                .append_blocking(&live, &t, step_event(round + 1))
                .unwrap();
        }
        // Segment 1 sealed (every execution has records in it); the first erasure
        // seals the second by a roll.
        assert!(store.stats().segments >= 2, "{}", store.stats().segments);
        store.close().unwrap();
    }
    let rate = ScrubRate::BytesPerSecond(40 << 10);
    let store = LogStore::open_with(dir.path(), small_segments().scrub(rate)).unwrap();
    let started = Instant::now();
    for d in &dead {
        std::thread::sleep(Duration::from_millis(400));
        assert!(store.delete_execution_blocking(d).unwrap());
        let report = store.compact_now().unwrap();
        assert!(report.segments_rewritten >= 1, "{report:?}");
    }
    let stats = store.stats().scrub;
    let elapsed = started.elapsed();
    store.close().unwrap();
    assert!(stats.damaged.is_empty(), "{:?}", stats.damaged);
    assert!(
        stats.segment > 1 || stats.passes > 0,
        "after {elapsed:?} at 40 KiB/s (1.6 s a segment) the scrubber is still on segment \
         {} ({} bytes checked, all of them segment 1 again and again)",
        stats.segment,
        stats.scrubbed_bytes
    );
}

// ---------------------------------------------------------------------------------
// Held: windows report what a whole-segment check reports.

/// How `scrub_now` (4 MiB parts, 64 KiB slack) splits a clean segment laid out as
/// `starts`/`end`: the records a part's window cuts after a whole one (the part ends
/// before them), each with the window's end, and the records that start a part
/// because the previous one reached its budget.
fn part_edges(starts: &[u64], end: u64) -> (Vec<(usize, u64)>, Vec<usize>) {
    const PART: u64 = 4 << 20;
    const SLACK: u64 = 64 << 10;
    let (mut cut, mut first) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < starts.len() {
        let p = if i == 0 { 0 } else { starts[i] };
        let stop = starts[i] + PART;
        let window_end = (p + PART + SLACK).min(end);
        let mut records = 0;
        while i < starts.len() {
            if starts[i] >= stop {
                first.push(i);
                break;
            }
            if next_start(starts, end, i) > window_end && records > 0 {
                cut.push((i, window_end));
                break;
            }
            records += 1;
            i += 1;
        }
    }
    (cut, first)
}

#[derive(Clone, Copy, Debug)]
enum Forgery {
    BodyFlip,
    LengthFourGiB,
    LengthPastSegmentEnd,
    LengthShort,
    ZeroedHeader,
    /// The record's length made to end 8 bytes past the window that cuts it.
    LengthJustPastWindow(u64),
    CrcFlip,
}

/// Flips the bits of the byte at `offset` of the file.
fn flip(path: &Path, offset: u64) {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    file.write_all_at(&[!byte[0]], offset).unwrap();
}

fn forge(path: &Path, starts: &[u64], end: u64, i: usize, how: Forgery) {
    let at = starts[i];
    let body = next_start(starts, end, i) - at - 56;
    match how {
        Forgery::BodyFlip => flip(path, at + 56 + (body / 2).min(3000)),
        Forgery::LengthFourGiB => overwrite(path, at + 4, &0xFFFF_FFF8u32.to_le_bytes()),
        Forgery::LengthPastSegmentEnd => {
            overwrite(path, at + 4, &((end - at) as u32).to_le_bytes())
        }
        Forgery::LengthShort => overwrite(path, at + 4, &16u32.to_le_bytes()),
        Forgery::ZeroedHeader => overwrite(path, at, &[0; 56]),
        Forgery::LengthJustPastWindow(window_end) => {
            let len = window_end + 8 - at - 56;
            overwrite(path, at + 4, &(len as u32).to_le_bytes())
        }
        Forgery::CrcFlip => flip(path, at + 1),
    }
}

/// A 16 MiB segment of records of 100 B to 400 KiB, forged where `scrub_now`'s parts
/// meet, one scenario at a time (the file restored in between, so that the parts
/// before the forged record split as the clean segment does): the record a window
/// cuts (its length to 4 GiB, past the segment's end, just past the window, short;
/// zeroed header; flipped CRC or body), the record that starts the next part, the
/// segment's first record (a 4 GiB length with nothing checked yet: the window grows
/// to the end) and its last; then all of them at once. `scrub_now` reports exactly the
/// ranges of a whole-segment survey (`survey_damage`): each from the forged record to
/// the next one.
#[test]
fn forged_records_where_parts_meet_are_reported_as_a_whole_segment_check_reports() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .segment_size_bytes(16 << 20)
        .scrub(ScrubRate::Off);
    let store = LogStore::open_with(dir.path(), options).unwrap();
    let (e, t) = (ExecutionId::from("big"), TenantId::from("t"));
    let mut x: u64 = 0x2545_F491;
    let mut n = 0;
    while store.stats().segments < 2 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = if (x >> 33).is_multiple_of(10) {
            100
        } else {
            100_000 + ((x >> 20) % 300_000) as usize
        };
        n += 1;
        store.append_blocking(&e, &t, sized_event(n, len)).unwrap();
    }
    store
        .append_blocking(&e, &t, sized_event(n + 1, 100))
        .unwrap();
    let path = seg(dir.path(), 1);
    let original = fs::read(&path).unwrap();
    let (starts, end) = record_starts(&original);
    let (cut, first) = part_edges(&starts, end);
    assert!(!cut.is_empty(), "no record cut by a window: {starts:?}");

    use Forgery::*;
    let mut scenarios: Vec<Vec<(usize, Forgery)>> = Vec::new();
    for (k, &(i, window_end)) in cut.iter().enumerate() {
        let kinds: &[Forgery] = if k == 0 {
            &[
                LengthJustPastWindow(window_end),
                LengthFourGiB,
                LengthPastSegmentEnd,
                LengthShort,
                ZeroedHeader,
                CrcFlip,
                BodyFlip,
            ]
        } else {
            &[
                LengthJustPastWindow(window_end),
                LengthFourGiB,
                ZeroedHeader,
            ]
        };
        scenarios.extend(kinds.iter().map(|&how| vec![(i, how)]));
    }
    for &i in &first {
        scenarios.push(vec![(i, ZeroedHeader)]);
        scenarios.push(vec![(i, LengthPastSegmentEnd)]);
    }
    scenarios.push(vec![(0, LengthFourGiB)]);
    scenarios.push(vec![(starts.len() - 1, BodyFlip)]);
    // All at once, neighbours left out (damaged neighbours make one range).
    let mut all: Vec<(usize, Forgery)> = scenarios.iter().map(|s| s[0]).collect();
    all.sort_by_key(|f| f.0);
    let mut apart: Vec<(usize, Forgery)> = Vec::new();
    for f in all {
        if apart.last().is_none_or(|last| f.0 > last.0 + 1) {
            apart.push(f);
        }
    }
    scenarios.push(apart);

    for forged in &scenarios {
        for &(i, how) in forged {
            forge(&path, &starts, end, i, how);
        }
        let expected: Vec<(u64, u64)> = forged
            .iter()
            .map(|&(i, _)| (starts[i], next_start(&starts, end, i)))
            .collect();
        // The survey reads the whole file: past the last record, its zeros (the
        // scrubber stops at the sealed end).
        let file_len = fs::metadata(&path).unwrap().len();
        let expected_survey: Vec<(u64, u64)> = forged
            .iter()
            .map(|&(i, _)| match i + 1 == starts.len() {
                true => (starts[i], file_len),
                false => (starts[i], next_start(&starts, end, i)),
            })
            .collect();
        let report = store.scrub_now().unwrap();
        let surveyed: Vec<(u64, u64)> = survey_damage(dir.path())
            .unwrap()
            .iter()
            .filter(|s| s.segment == 1)
            .flat_map(|s| s.damaged.iter().map(|d| (d.0, d.1)))
            .collect();
        assert_eq!(surveyed, expected_survey, "the survey of {forged:?}");
        assert_eq!(
            ranges_of(&report.damaged, 1),
            expected,
            "scrub_now of {forged:?} (cut {cut:?}, part starts {first:?})"
        );
        for &(i, _) in forged {
            let (from, to) = (starts[i] as usize, next_start(&starts, end, i) as usize);
            overwrite(&path, from as u64, &original[from..to]);
        }
    }
    assert!(store.scrub_now().unwrap().is_clean());
    store.close().unwrap();
}

/// At one byte a second the first chunk's budget is 1 byte: with a 4 GiB length in
/// the first record of a 1 MiB segment, on the device only, the window grows to the
/// segment's end once and the record is one range up to the next.
#[test]
fn a_four_gib_length_at_one_byte_a_second_is_one_range() {
    let _serial = serial();
    let sim = SimIo::new();
    let dir = Path::new("/store");
    let options = |rate| {
        Options::default()
            .segment_size_bytes(1 << 20)
            .scrub(rate)
            .io(Arc::new(sim.clone()))
    };
    let store = LogStore::open_with(dir, options(ScrubRate::Off)).unwrap();
    let (e, t) = (ExecutionId::from("a"), TenantId::from("t"));
    let mut n = 0;
    while store.stats().segments < 3 {
        let events = (1..=200).map(|i| step_event(n + i)).collect();
        n += 200;
        store.append_batch_blocking(&e, &t, events).unwrap();
    }
    store.close().unwrap();
    let path = seg(dir, 1);
    let live = sim.read_file(&path).unwrap();
    let (starts, _) = record_starts(&live);
    let new = 0xFFFF_FFF8u32.to_le_bytes();
    for (k, b) in new.iter().enumerate() {
        let at = 32 + 4 + k;
        assert!(sim.rot(&path, at, live[at] ^ b));
    }
    let store = LogStore::open_with(dir, options(ScrubRate::BytesPerSecond(1))).unwrap();
    let stats = wait_for(&store, "damage", 10, |s| !s.damaged.is_empty());
    assert_eq!(ranges_of(&stats.damaged, 1), vec![(32, starts[1])]);
    let started = Instant::now();
    store.close().unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------
// Held: races.

/// Eight rounds of delete + `compact_now` (each rewrites every sealed segment, erased
/// spans moving record boundaries) while the background scrubber walks the segments
/// in 15 KiB chunks, another thread runs `scrub_now` back to back, and a reader
/// (`open_reader`) of the same directory scrubs too: no damage anywhere, ever.
#[test]
fn erasures_under_running_scrubs_and_a_reader_are_never_damage() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let t = TenantId::from("t");
    let dead: Vec<ExecutionId> = (0..8).map(|i| ExecutionId::from(format!("d{i}"))).collect();
    let live = ExecutionId::from("live");
    {
        let store =
            LogStore::open_with(dir.path(), small_segments().scrub(ScrubRate::Off)).unwrap();
        for round in 0..40u64 {
            for d in &dead {
                let events = (1..=10).map(|i| step_event(round * 10 + i)).collect();
                store.append_batch_blocking(d, &t, events).unwrap();
            }
            store
                .append_blocking(&live, &t, step_event(round + 1))
                .unwrap();
        }
        assert!(store.stats().segments >= 4, "{}", store.stats().segments);
        store.close().unwrap();
    }
    let rate = ScrubRate::BytesPerSecond(150 << 10);
    let store = Arc::new(LogStore::open_with(dir.path(), small_segments().scrub(rate)).unwrap());
    let reader = Arc::new(LogStore::open_reader(dir.path()).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let scrubbing: Vec<_> = [Arc::clone(&store), Arc::clone(&reader)]
        .into_iter()
        .enumerate()
        .map(|(who, s)| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut passes = 0;
                while !stop.load(Ordering::Relaxed) {
                    let report = s.scrub_now().unwrap();
                    assert!(
                        report.is_clean(),
                        "scrub_now of {who}: {:?}",
                        report.damaged
                    );
                    passes += 1;
                }
                passes
            })
        })
        .collect();
    let mut x: u64 = 7;
    for d in &dead {
        assert!(store.delete_execution_blocking(d).unwrap());
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        std::thread::sleep(Duration::from_millis((x >> 33) % 120));
        let report = store.compact_now().unwrap();
        assert!(report.segments_rewritten >= 1, "{report:?}");
        let damaged = store.stats().scrub.damaged;
        assert!(damaged.is_empty(), "{damaged:?}");
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for h in scrubbing {
        assert!(h.join().unwrap() > 0);
    }
    assert!(store.stats().scrub.damaged.is_empty());
    assert!(reader.stats().scrub.damaged.is_empty());
    assert!(store.scrub_now().unwrap().is_clean());
    assert_eq!(store.load_events_blocking(&live).unwrap().len(), 40);
    assert_eq!(reader.load_events_blocking(&live).unwrap().len(), 40);
    reader.close().unwrap();
    store.close().unwrap();
}

/// `close` while `scrub_now` runs on another thread and the background scrubber is
/// mid-pass: `scrub_now` ends clean or with `Closed`, close is prompt, and the next
/// open serves everything and scrubs clean.
#[test]
fn close_during_scrubs_is_prompt_and_no_damage() {
    let _serial = serial();
    let dir = filled_small_store();
    for delay_ms in [0, 3, 20] {
        let fast = ScrubRate::BytesPerSecond(1 << 30);
        let store =
            Arc::new(LogStore::open_with(dir.path(), small_segments().scrub(fast)).unwrap());
        let s = Arc::clone(&store);
        let scrubbing = std::thread::spawn(move || {
            loop {
                match s.scrub_now() {
                    Ok(report) => assert!(report.is_clean(), "{:?}", report.damaged),
                    Err(Error::Closed) => return,
                    Err(e) => panic!("scrub_now during close: {e}"),
                }
            }
        });
        std::thread::sleep(Duration::from_millis(delay_ms));
        let started = Instant::now();
        store.close().unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        scrubbing.join().unwrap();
        assert!(store.stats().scrub.damaged.is_empty());
    }
    let store = LogStore::open_with(dir.path(), small_segments().scrub(ScrubRate::Off)).unwrap();
    assert!(store.scrub_now().unwrap().is_clean());
    let a = store.load_events_blocking(&ExecutionId::from("a")).unwrap();
    assert_eq!(a.len(), 1000);
    store.close().unwrap();
}

// ---------------------------------------------------------------------------------
// Held: file systems.

/// A flipped byte is one range on a file system whatever its direct reads: tmpfs
/// (`/dev/shm`; kernels from 6.6 take `O_DIRECT` there), and, when
/// `EXECLOG_TEST_NO_DIRECT_DIR` names a directory on a file system that refuses
/// `O_DIRECT` (ramfs), the maps' fallback (`read_durable` returns `None`).
#[test]
fn a_flipped_byte_is_one_range_on_tmpfs_and_without_direct_reads() {
    let _serial = serial();
    let mut bases = vec![PathBuf::from("/dev/shm")];
    if let Some(d) = std::env::var_os("EXECLOG_TEST_NO_DIRECT_DIR") {
        bases.push(PathBuf::from(d));
    }
    for base in bases {
        if !base.is_dir() {
            eprintln!("{} is missing: skipped", base.display());
            continue;
        }
        let dir = tempfile::tempdir_in(&base).unwrap();
        let store =
            LogStore::open_with(dir.path(), small_segments().scrub(ScrubRate::Off)).unwrap();
        // 40 batches of 25 small events to each of "a" and "b": a few sealed segments.
        fill_a_and_b(&store, 40);
        assert!(store.stats().segments >= 3, "{}", store.stats().segments);
        store.close().unwrap();
        let fast = ScrubRate::BytesPerSecond(1 << 30);
        let store = LogStore::open_with(dir.path(), small_segments().scrub(fast)).unwrap();
        let path = seg(dir.path(), 2);
        let (starts, end) = record_starts(&fs::read(&path).unwrap());
        let i = starts.len() / 2;
        overwrite(&path, starts[i] + 60, &[0xEE]);
        let expected = vec![(starts[i], next_start(&starts, end, i))];
        let report = store.scrub_now().unwrap();
        assert_eq!(
            ranges_of(&report.damaged, 2),
            expected,
            "{}",
            base.display()
        );
        assert_eq!(report.damaged.len(), 1, "{}: {report:?}", base.display());
        let stats = wait_for(&store, "a background pass", 10, |s| s.passes >= 2);
        assert_eq!(ranges_of(&stats.damaged, 2), expected, "{}", base.display());
        store.close().unwrap();
    }
}
