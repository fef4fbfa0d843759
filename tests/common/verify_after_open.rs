//! Helpers of the tests of `Options::verify_checkpoint_after_open`
//! (`tests/checkpoint_after_open.rs`, `tests/adversary_verify_after_open.rs`): the
//! options, waiting for the verdict, and forging `checkpoint.idx` with a valid CRC (also
//! `tests/adversary_auto_verify.rs`), and the small store the lazy-open adversary tests
//! share.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use execlog::*;

const CHECKPOINT: &str = "checkpoint.idx";

/// Stride 4, the checkpoint verified after open, its verification starting after
/// `delay`.
pub fn after_open(delay: Duration) -> Options {
    Options::default()
        .index_stride(4)
        .verify_checkpoint_after_open(true)
        .checkpoint_verification_delay(delay)
}

/// Waits (at most a minute) until the verdict is in.
pub fn wait_for_verdict(s: &LogStore) {
    let started = Instant::now();
    while s.stats().checkpoint_unverified {
        assert!(started.elapsed() < Duration::from_secs(60), "no verdict");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Makes a forged checkpoint consistent again: its directory (layout 3) and its CRC
/// recomputed, as a forger who knows the format would.
pub fn recompute_crc(bytes: &mut [u8]) {
    execlog::forgery::reseal_checkpoint(bytes);
}

/// Swaps the ids of two executions of the same length in the checkpoint and
/// recomputes its CRC: a forgery only the walk over the records can see.
pub fn swap_ids(dir: &Path, a: &str, b: &str) {
    assert_eq!(a.len(), b.len());
    let mut bytes = fs::read(dir.join(CHECKPOINT)).unwrap();
    let find = |bytes: &[u8], id: &str| {
        let needle = [&(id.len() as u32).to_le_bytes()[..], id.as_bytes()].concat();
        bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap()
            + 4
    };
    let (at_a, at_b) = (find(&bytes, a), find(&bytes, b));
    bytes[at_a..at_a + a.len()].copy_from_slice(b.as_bytes());
    bytes[at_b..at_b + b.len()].copy_from_slice(a.as_bytes());
    recompute_crc(&mut bytes);
    fs::write(dir.join(CHECKPOINT), bytes).unwrap();
}

/// The checkpoint `layout2`, layout 2 bytes without their CRC, as layout 3: the same
/// sections, then a directory and trailer (and the CRC) computed to match them.
pub fn as_layout_3(mut layout2: Vec<u8>) -> Vec<u8> {
    let executions = u32::from_le_bytes(layout2[32..36].try_into().unwrap()) as usize;
    layout2[8..12].copy_from_slice(&3u32.to_le_bytes());
    layout2.resize(layout2.len() + 28 * executions + 12 + 4, 0);
    recompute_crc(&mut layout2);
    layout2
}

/// Where the deleted list of a layout 3 checkpoint ends: where its directory starts.
pub fn directory_start(bytes: &[u8]) -> usize {
    let trailer = bytes.len() - 4 - 12;
    u64::from_le_bytes(bytes[trailer..trailer + 8].try_into().unwrap()) as usize
}

/// Sets the covered end of segment `n` in the checkpoint to `end`, with the digest of
/// the segment's bytes `[32, end)` (so that the digest alone cannot tell), and
/// recomputes the file's CRC.
pub fn set_covered_end(dir: &Path, n: u32, end: usize) {
    let mut bytes = fs::read(dir.join(CHECKPOINT)).unwrap();
    let covered = u32::from_le_bytes(bytes[24..28].try_into().unwrap());
    assert!(n <= covered, "segment {n} is not covered");
    let at = 40 + 12 * (n as usize - 1);
    let segment = fs::read(crate::common::segment_files::segment_path(dir, n)).unwrap();
    bytes[at..at + 8].copy_from_slice(&(end as u64).to_le_bytes());
    let digest = crc32fast::hash(&segment[32..end]);
    bytes[at + 8..at + 12].copy_from_slice(&digest.to_le_bytes());
    recompute_crc(&mut bytes);
    fs::write(dir.join(CHECKPOINT), bytes).unwrap();
}

/// `run-a` (tenant 0, 10 events), `run-b` (tenant 1, 7), `run-c` (tenant 0, 3), `gone`
/// (tenant 1, deleted) and `fork-a` (run-a's first 4 events and one of its own), stride
/// 4, closed cleanly: a layout 3 checkpoint covering the whole log.
#[allow(clippy::unwrap_used)]
pub fn five_executions() -> tempfile::TempDir {
    let id = |s: &str| ExecutionId::from(s);
    let tenant = |n: u32| TenantId::from(format!("tenant-{n}"));
    let dir = tempfile::tempdir().unwrap();
    let s = LogStore::open_with(dir.path(), Options::default().index_stride(4)).unwrap();
    for (name, t, n) in [
        ("run-a", 0, 10u64),
        ("run-b", 1, 7),
        ("run-c", 0, 3),
        ("gone", 1, 2),
    ] {
        for i in 0..n {
            s.append_blocking(&id(name), &tenant(t), super::step_event(i))
                .unwrap();
        }
    }
    s.fork_execution_blocking(&id("run-a"), 4, &id("fork-a"))
        .unwrap();
    s.append_blocking(&id("fork-a"), &tenant(0), super::step_event(40))
        .unwrap();
    assert!(s.delete_execution_blocking(&id("gone")).unwrap());
    s.close().unwrap();
    dir
}
