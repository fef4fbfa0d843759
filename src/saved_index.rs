//! Open's second step: the index state saved on disk (`checkpoint.idx`, written at
//! clean close), loaded and trusted only once verified against the segments.
//!
//! The file is read and decoded before the segments are mapped (so the I/O calls keep
//! their order) and verified after, over the maps: every covered segment's digest
//! (checksum of its records, zeros after those of a sealed one), then the header walk
//! that proves the index describes the records (`checkpoint_walk::check_records`).
//!
//! Invariant: a checkpoint changes how long open takes, never what it finds. Any
//! failure ignores it, with the reason in `RecoveryReport::checkpoint_ignored`, and the
//! scan then starts from an empty index at the first record.

use std::path::Path;

use crate::checkpoint::{self, Checkpoint, SegmentDigest};
use crate::checkpoint_directory::Opened;
use crate::checkpoint_walk;
use crate::idempotency::KeyTables;
use crate::index::{ExecNo, Index};
use crate::io::Io;
use crate::options::Options;
use crate::rebuild::{HeldTail, Rebuild};
use crate::recovery_report::RecoveryReport;
use crate::scan::first_nonzero;
use crate::segment::{self, HeaderCheck};
use crate::store_dir::CHECKPOINT;
use crate::sync::MODEL_CHECKED;

/// Where the scan of the tail starts.
pub(crate) struct Start {
    /// The index as the checkpoint left it, or empty.
    pub(crate) rebuild: Rebuild,
    /// The digests of the segments the checkpoint covers (none without one).
    pub(crate) covered: Vec<SegmentDigest>,
    /// Whether the checkpoint has an older layout than the one written: close writes
    /// a new one even if nothing changed.
    pub(crate) outdated: bool,
    /// The CRC of a checkpoint trusted without its checks, which the verification
    /// after open must find again.
    pub(crate) trusted_crc: Option<u32>,
}

/// Reads and decodes the checkpoint of `dir`, if checkpoints are on and it has one; a
/// file that cannot be used is reported and ignored.
pub(crate) fn load(
    io: &dyn Io,
    dir: &Path,
    options: &Options,
    report: &mut RecoveryReport,
) -> Option<Checkpoint> {
    if !options.index_checkpoint {
        return None;
    }
    match checkpoint::load(io, dir, options.index_stride) {
        Ok(Some(c)) => Some(c),
        Ok(None) => {
            report.checkpoint_ignored = crate::refuted_marker::read(io, dir).map(|cause| {
                format!("an earlier open refuted {CHECKPOINT} and removed it: {cause}")
            });
            None
        }
        Err(why) => {
            report.checkpoint_ignored = Some(why);
            None
        }
    }
}

/// Maps the checkpoint of `dir` for an index decoded after open, if checkpoints are on
/// and it is a layout 3 file whose header, digests and trailer check.
pub(crate) fn load_lazy(io: &dyn Io, dir: &Path, options: &Options) -> Option<Opened> {
    if !options.index_checkpoint {
        return None;
    }
    checkpoint::load_lazy(io, dir, options.index_stride)
        .ok()
        .flatten()
}

/// The scan's start from a checkpoint whose index is still to decode (an empty index
/// that takes no record), if the segments it covers are there as `plausible` checks
/// (those open mapped: `maps` holds the segments after the first `closed`, which open
/// left closed and the verification after open checks); the report says that the
/// decode and the verification come after open.
pub(crate) fn lazy_start(
    segments: Vec<SegmentDigest>,
    (last_timestamp_ns, file_crc): (i64, u32),
    (closed, maps): (usize, &[&[u8]]),
    options: &Options,
    report: &mut RecoveryReport,
) -> Option<Start> {
    if !plausible_after(closed, &segments, maps) {
        return None;
    }
    report.checkpoint_verification_deferred = true;
    report.index_decoded_after_open = true;
    report.checkpoint_bytes = segments.iter().map(|d| d.end).sum();
    let index = Index::new(options.index_stride);
    let keys = KeyTables::new(options.key_hash_bits);
    let mut rebuild = Rebuild::resume(index, keys, last_timestamp_ns);
    rebuild.held = Some(HeldTail::default());
    Some(Start {
        rebuild,
        covered: segments,
        trusted_crc: Some(file_crc),
        outdated: false,
    })
}

/// The scan's start: `saved`'s index if its digests match `maps` (the segments, in
/// id order) and it describes their records, else an empty index. With `defer`, a
/// checkpoint that lists its deletions (layout 2) and whose covered segments are there,
/// with valid headers and long enough, is trusted without reading them: the caller
/// verifies it after open (`deferred_verification.rs`), and the report says so.
pub(crate) fn verify(
    saved: Option<Checkpoint>,
    maps: &[&[u8]],
    options: &Options,
    defer: bool,
    report: &mut RecoveryReport,
) -> Start {
    let saved = match saved {
        Some(c) if defer && c.deleted.is_some() && plausible(&c.segments, maps) => {
            report.checkpoint_verification_deferred = true;
            return start_from(deferred(c, options), report);
        }
        other => other,
    };
    let verified = saved.and_then(|c| match trusted(c, maps, options) {
        Ok(trusted) => Some(trusted),
        Err(why) => {
            report.checkpoint_ignored = Some(why);
            None
        }
    });
    match verified {
        Some(trusted) => start_from(trusted, report),
        None => Start {
            rebuild: Rebuild::resume(
                Index::new(options.index_stride),
                KeyTables::new(options.key_hash_bits),
                0,
            ),
            covered: Vec::new(),
            trusted_crc: None,
            outdated: false,
        },
    }
}

/// The scan's start from a checkpoint open uses.
fn start_from((c, keys): (Checkpoint, KeyTables), report: &mut RecoveryReport) -> Start {
    report.checkpoint_bytes = c.segments.iter().map(|d| d.end).sum();
    Start {
        trusted_crc: report
            .checkpoint_verification_deferred
            .then_some(c.file_crc),
        rebuild: Rebuild::resume(c.index, keys, c.last_timestamp_ns),
        covered: c.segments,
        outdated: c.layout < checkpoint::CHECKPOINT_VERSION,
    }
}

/// Whether the segments `digests` covers are all there, each with a valid header and
/// at least as long as its covered records: what open checks of a checkpoint it
/// verifies only later, reading one page of each segment.
fn plausible(digests: &[SegmentDigest], maps: &[&[u8]]) -> bool {
    plausible_after(0, digests, maps)
}

/// [`plausible`] for `maps` of the segments after the first `closed`, which open left
/// closed: only the mapped ones are looked at.
fn plausible_after(closed: usize, digests: &[SegmentDigest], maps: &[&[u8]]) -> bool {
    let mapped = digests.get(closed..).unwrap_or_default();
    digests.len() <= closed + maps.len()
        && (closed as u32 + 1..)
            .zip(mapped.iter().zip(maps))
            .all(|(id, (d, bytes))| {
                segment::check_header(bytes, id) == HeaderCheck::Valid
                    && d.end <= bytes.len() as u64
            })
}

/// `c` trusted as it is, with the executions it lists as deleted marked so; the keys
/// of its covered keyed appends are filed by the verification after open.
pub(crate) fn deferred(mut c: Checkpoint, options: &Options) -> (Checkpoint, KeyTables) {
    for &no in c.deleted.iter().flatten() {
        c.index.mark_deleting(no);
        c.index.delete(no);
    }
    (c, KeyTables::new(options.key_hash_bits))
}

/// `c` with the executions its covered tombstones deleted marked so, and the keys of
/// its covered keyed appends; `Err` says why it cannot be trusted.
fn trusted(
    mut c: Checkpoint,
    maps: &[&[u8]],
    options: &Options,
) -> std::result::Result<(Checkpoint, KeyTables), String> {
    let mut keys = KeyTables::new(options.key_hash_bits);
    let deleted = check(&c, maps, &mut keys, &|| false)?;
    for no in deleted {
        c.index.mark_deleting(no);
        c.index.delete(no);
        keys.forget(no);
    }
    Ok((c, keys))
}

/// Checks `c` against the segments `maps` (every covered digest, then the walk over
/// the covered records, `checkpoint_walk::check_records`), filing the covered keyed appends
/// in `keys`; returns the executions the covered tombstones deleted, or why `c` cannot
/// be trusted. Both passes give up between segments once `stopped` says so (an `Err`
/// that is then no verdict).
pub(crate) fn check(
    c: &Checkpoint,
    maps: &[&[u8]],
    keys: &mut KeyTables,
    stopped: &(dyn Fn() -> bool + Sync),
) -> std::result::Result<Vec<ExecNo>, String> {
    let total: u64 = c.segments.iter().map(|d| d.end).sum();
    // The walk only reads (bounds-checked, whatever the bytes), so it runs beside the
    // checksums instead of after them; its verdict counts only if they match.
    if MODEL_CHECKED || total < PARALLEL_DIGEST_BYTES {
        verify_digests(&c.segments, maps, stopped)?;
        checkpoint_walk::check_records(c, maps, keys, stopped)
    } else {
        std::thread::scope(|scope| {
            let digests = scope.spawn(|| verify_digests(&c.segments, maps, stopped));
            let walked = checkpoint_walk::check_records(c, maps, keys, stopped);
            let digests = digests
                .join()
                .unwrap_or_else(|_| Err("checksum thread panicked".into()));
            digests.and(walked)
        })
    }
}

/// Checks a checkpoint's segment digests against the mapped segments: the checksum of
/// each covered segment's records, and zeros after the records of each covered segment
/// but the last (the rule a full scan applies to sealed segments). `Err` says what
/// differs; the caller then scans everything.
fn verify_digests(
    digests: &[SegmentDigest],
    maps: &[&[u8]],
    stopped: &(dyn Fn() -> bool + Sync),
) -> std::result::Result<(), String> {
    if digests.len() > maps.len() {
        return Err(format!(
            "covers {} segments, the directory holds {}",
            digests.len(),
            maps.len()
        ));
    }
    let check = |i: usize, d: SegmentDigest, bytes: &[u8]| {
        let id = i as u32 + 1;
        if stopped() {
            return Err(STOPPED.to_string());
        }
        if segment::check_header(bytes, id) != HeaderCheck::Valid {
            return Err(format!("segment {id}: header is not valid"));
        }
        if d.end > bytes.len() as u64 {
            return Err(format!("segment {id}: shorter than the covered records"));
        }
        if SegmentDigest::of(bytes, d.end) != d {
            return Err(digest_differs(id, &bytes[..d.end as usize]));
        }
        if i + 1 < digests.len() && first_nonzero(bytes, d.end as usize).is_some() {
            return Err(format!("segment {id}: bytes after the covered records"));
        }
        Ok(())
    };
    digests
        .iter()
        .zip(maps)
        .enumerate()
        .try_for_each(|(i, (&d, &bytes))| check(i, d, bytes))
}

/// Why segment `id`'s records (`records`) do not match their digest, with the first
/// record that fails its own checks if one does: otherwise the records check and the
/// checkpoint's digest is what is wrong.
fn digest_differs(id: u32, records: &[u8]) -> String {
    match crate::scrub::first_damage(id, records) {
        Some(d) => format!(
            "segment {id}: checksum of the records differs; bytes {}..{} are damaged ({})",
            d.from, d.to, d.reason
        ),
        None => format!("segment {id}: checksum of the records differs"),
    }
}

/// Why a check that was asked to stop gave up.
pub(crate) const STOPPED: &str = "stopped before the end";

/// Stores smaller than this verify a checkpoint on one thread; larger ones check the
/// digests on a second thread while this one walks the records, in every build
/// (`tests/checkpoint.rs` opens one that large).
const PARALLEL_DIGEST_BYTES: u64 = 8 << 20;
