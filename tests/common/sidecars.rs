//! Helpers of the segment sidecar tests (`tests/sidecars.rs`,
//! `tests/adversary_sidecars.rs`): the options, forging a sidecar, comparing answers.

use std::fs;
use std::path::{Path, PathBuf};

use execlog::*;

use super::{crash_image, small_segments, step_event};

/// Small segments, the checkpoint decoded after open, and running checkpoints too rare
/// to cover the segments a test seals: only a clean close writes one.
pub fn options() -> Options {
    small_segments()
        .verify_checkpoint_after_open(true)
        .index_checkpoint_interval_bytes(Some(1 << 40))
}

pub fn sidecar_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("{segment:010}.side"))
}

/// Changes segment `segment`'s sidecar with `change`, then recomputes its tail CRC
/// over the segment and its own CRC, as a forger who knows the format would.
pub fn forge(dir: &Path, segment: u32, change: impl FnOnce(&mut Vec<u8>)) {
    let path = sidecar_path(dir, segment);
    let mut bytes = fs::read(&path).unwrap();
    change(&mut bytes);
    let file = fs::read(dir.join(format!("{segment:010}.seg"))).unwrap();
    execlog::forgery::reseal_sidecar_against(&mut bytes, &file);
    fs::write(&path, bytes).unwrap();
}

/// Whether `store` is poisoned: an append to "probe" of tenant "t" fails with
/// `Poisoned` (any other error panics; a success appends to "probe").
pub fn is_poisoned(store: &LogStore) -> bool {
    let probe = ExecutionId::from("probe");
    match store.append_blocking(&probe, &TenantId::from("t"), step_event(1)) {
        Ok(_) => false,
        Err(e) => matches!(e, Error::Poisoned { .. }) || panic!("{e:?}"),
    }
}

/// Asserts that two sets of answers are the same, showing where they differ.
pub fn same(found: &str, expected: &str) {
    for (i, (f, e)) in found.lines().zip(expected.lines()).enumerate() {
        let short = |l: &str| l.chars().take(300).collect::<String>();
        assert!(f == e, "line {i} differs:\n{}\n{}", short(f), short(e));
    }
    assert_eq!(found.lines().count(), expected.lines().count());
}

/// What `answers` says of a full scan (no checkpoint, no sidecar) of a copy of `dir`.
pub fn full_scan(dir: &Path, answers: impl Fn(&LogStore) -> String) -> String {
    let image = crash_image::copy(dir);
    let options = small_segments().index_checkpoint(false);
    let store = LogStore::open_with(image.path(), options).unwrap();
    answers(&store)
}
