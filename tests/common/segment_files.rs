//! Segment files as tests see them: their paths, their record offsets (walked by the
//! length fields, docs/FORMAT.md), and a store whose log spans several segments.

use std::path::{Path, PathBuf};

use execlog::*;

/// Segment `id` of the store in `dir`.
pub fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:010}.seg"))
}

/// The little-endian `u32` at `at`.
pub fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Offsets of the records of segment bytes, by their length fields, until a zero one
/// (or the end).
pub fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut at = 32;
    let mut out = Vec::new();
    while at + 8 <= bytes.len() && le32(bytes, at + 4) != 0 {
        out.push(at);
        at += (56 + le32(bytes, at + 4) as usize).next_multiple_of(8);
    }
    out
}

/// A store of 64 KiB segments, closed cleanly: `early` (tenant 0, 5 events) in segment
/// 1, then `{name}-0` to `{name}-6` (tenant 1, 80 events of 4,000 `fill` characters in
/// all) over several segments, then `late` (tenant 0, one event) in the last one.
/// Returns the directory and the segment count (at least 4).
pub fn store_over_segments_of(name: &str, fill: char) -> (tempfile::TempDir, usize) {
    let dir = tempfile::tempdir().unwrap();
    let s = LogStore::open_with(dir.path(), super::small_segments()).unwrap();
    let early = ExecutionId::from("early");
    for i in 0..5 {
        s.append_blocking(&early, &TenantId::from("tenant-0"), super::step_event(i))
            .unwrap();
    }
    let filler = ExecutionEventData::StepCompleted {
        step_id: StepId::from("filler"),
        output: Some(fill.to_string().repeat(4000)),
        duration_ms: 0,
    };
    for i in 0..80 {
        let id = ExecutionId::from(format!("{name}-{}", i % 7));
        s.append_blocking(&id, &TenantId::from("tenant-1"), filler.clone())
            .unwrap();
    }
    s.append_blocking(
        &ExecutionId::from("late"),
        &TenantId::from("tenant-0"),
        super::step_event(0),
    )
    .unwrap();
    let segments = s.stats().segments;
    s.close().unwrap();
    assert!(segments >= 4, "{segments} segments");
    (dir, segments)
}

/// [`store_over_segments_of`] with `filler` executions of `x`s.
pub fn store_over_segments() -> (tempfile::TempDir, usize) {
    store_over_segments_of("filler", 'x')
}
