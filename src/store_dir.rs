//! The store directory: the name of every file execlog keeps in it, and the listing
//! that sorts a directory's names into one value (open's first step, `open.rs`).
//!
//! Every module that names a file of the store takes the name from here, so that a
//! file added anywhere is one the listing knows. docs/FORMAT.md describes the files.
//!
//! Invariants:
//! - Segment names are the id in exactly ten decimal digits and `.seg`, so that names sort as ids do and each id has one name; any other
//!   spelling ("42.seg") is not a segment.
//! - A listing puts every name in exactly one place: a segment, a file of the store
//!   (read or replaced by the module that owns it, so not listed), a leftover of an
//!   earlier run that is kept for the operator or replaced by its next writer, or an
//!   unknown name. Open changes none of them; leftovers and unknown names are reported
//!   (`RecoveryReport::ignored_files`).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::Io;

/// The directory lock, held by a writable or read-only open (`log_store.rs`).
pub(crate) const LOCK: &str = "LOCK";
/// The index checkpoint written at clean close (`checkpoint.rs`).
pub(crate) const CHECKPOINT: &str = "checkpoint.idx";
/// A checkpoint being written, renamed over [`CHECKPOINT`] when whole; never read.
pub(crate) const CHECKPOINT_TMP: &str = "checkpoint.idx.tmp";
/// The journal of a cut in progress (`repair.rs`).
pub(crate) const CUT_PENDING: &str = "cut.pending";
/// The durable end a writer publishes for readers in other processes
/// (`published_end.rs`).
pub(crate) const PUBLISHED_END: &str = "published.end";
/// Why an earlier open refuted and removed the checkpoint (`refuted_marker.rs`).
pub(crate) const CHECKPOINT_REFUTED: &str = "checkpoint.refuted";
/// Where the background scrubber's pass stands (`scrub_progress.rs`).
pub(crate) const SCRUB_PROGRESS: &str = "scrub.progress";
/// Scrub progress being written, renamed over [`SCRUB_PROGRESS`]; never read.
pub(crate) const SCRUB_PROGRESS_TMP: &str = "scrub.progress.tmp";

/// The files of the store that are neither segments nor leftovers.
const STORE_FILES: [&str; 8] = [
    LOCK,
    CHECKPOINT,
    CHECKPOINT_TMP,
    CHECKPOINT_REFUTED,
    CUT_PENDING,
    PUBLISHED_END,
    SCRUB_PROGRESS,
    SCRUB_PROGRESS_TMP,
];

/// File name extension of segment files.
const SEGMENT_EXTENSION: &str = "seg";
/// Digits in a segment file name: enough for every u32, so names sort as numbers do.
const SEGMENT_DIGITS: usize = 10;
/// Extension of a newest segment that open set aside because its header never became
/// durable and it is not all zeros (`repair::set_aside`); kept for the operator.
const BROKEN_EXTENSION: &str = "seg.broken";
/// Extension of a segment's replacement while erasure writes it (`erasure.rs`);
/// renamed over the segment when durable, removed by the next erasure if left over.
const COMPACT_EXTENSION: &str = "seg.compact";
/// Extension of a sealed segment's sidecar (`sidecar.rs`).
const SIDECAR_EXTENSION: &str = "side";
/// Extension of a sidecar being written, renamed over the sidecar when whole; never
/// read, replaced by its next writer.
const SIDECAR_TMP_EXTENSION: &str = "side.tmp";

/// `0000000042.seg` for segment 42.
pub(crate) fn segment_name(id: u32) -> String {
    format!("{id:0SEGMENT_DIGITS$}.{SEGMENT_EXTENSION}")
}

/// The id in a segment file name, or `None` for any other file.
pub(crate) fn parse_segment_name(name: &str) -> Option<u32> {
    parse_id(name, SEGMENT_EXTENSION)
}

/// The id in `name` if it is a segment id followed by `.` and `extension`.
fn parse_id(name: &str, extension: &str) -> Option<u32> {
    let digits = name.strip_suffix(extension)?.strip_suffix('.')?;
    if digits.len() != SEGMENT_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Path of segment `id` in `dir`.
pub(crate) fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(segment_name(id))
}

/// Path a set-aside segment `id` is renamed to.
pub(crate) fn broken_path(dir: &Path, id: u32) -> PathBuf {
    segment_path(dir, id).with_extension(BROKEN_EXTENSION)
}

/// Path erasure writes segment `id`'s replacement under.
pub(crate) fn compact_path(dir: &Path, id: u32) -> PathBuf {
    segment_path(dir, id).with_extension(COMPACT_EXTENSION)
}

/// `0000000042.side`: segment 42's sidecar.
pub(crate) fn sidecar_name(id: u32) -> String {
    format!("{id:0SEGMENT_DIGITS$}.{SIDECAR_EXTENSION}")
}

/// The name segment `id`'s sidecar is written under before its rename.
pub(crate) fn sidecar_tmp_name(id: u32) -> String {
    format!("{id:0SEGMENT_DIGITS$}.{SIDECAR_TMP_EXTENSION}")
}

/// Whether `name` is a leftover of an earlier run that open leaves alone: a set-aside
/// segment or an erasure's unfinished replacement.
fn is_leftover(name: &str) -> bool {
    [BROKEN_EXTENSION, COMPACT_EXTENSION]
        .iter()
        .any(|ext| parse_id(name, ext).is_some())
}

/// A store directory's names, sorted by what they are.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Listing {
    /// Segment ids, ascending (not yet checked to be contiguous).
    pub(crate) segments: Vec<u32>,
    /// Leftovers of earlier runs (see [`is_leftover`]), ascending.
    pub(crate) leftovers: Vec<String>,
    /// Names execlog never writes, ascending.
    pub(crate) unknown: Vec<String>,
    /// Segment ids with a sidecar file (`sidecar.rs`), ascending; a sidecar being
    /// written is a file of the store too, but not listed.
    pub(crate) sidecars: Vec<u32>,
}

impl Listing {
    /// Sorts `names` (a directory's entries, in any order).
    pub(crate) fn of(names: Vec<String>) -> Listing {
        let mut listing = Listing::default();
        for name in names {
            if let Some(id) = parse_segment_name(&name) {
                listing.segments.push(id);
            } else if let Some(id) = parse_id(&name, SIDECAR_EXTENSION) {
                listing.sidecars.push(id);
            } else if parse_id(&name, SIDECAR_TMP_EXTENSION).is_some() {
                // Replaced by the next write of that sidecar.
            } else if is_leftover(&name) {
                listing.leftovers.push(name);
            } else if !STORE_FILES.contains(&name.as_str()) {
                listing.unknown.push(name);
            }
        }
        listing.segments.sort_unstable();
        listing.sidecars.sort_unstable();
        listing.leftovers.sort();
        listing.unknown.sort();
        listing
    }

    /// Lists `dir`.
    pub(crate) fn read(io: &dyn Io, dir: &Path) -> Result<Listing> {
        let names = io
            .list(dir)
            .map_err(|e| Error::io("list directory", dir, e))?;
        Ok(Listing::of(names))
    }

    /// The names open leaves alone and reports: leftovers and unknown names, ascending.
    pub(crate) fn ignored(&self) -> Vec<String> {
        let mut names = [self.leftovers.as_slice(), self.unknown.as_slice()].concat();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_sort_numerically_and_parse_back() {
        assert_eq!(segment_name(42), "0000000042.seg");
        assert_eq!(parse_segment_name("0000000042.seg"), Some(42));
        assert_eq!(parse_segment_name(&segment_name(u32::MAX)), Some(u32::MAX));
        assert!(segment_name(9) < segment_name(10));
        for bad in [
            "42.seg",
            "000000004x.seg",
            "0000000042.seg.tmp",
            "LOCK",
            "0000000042",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
        let dir = Path::new("/s");
        assert_eq!(broken_path(dir, 3), Path::new("/s/0000000003.seg.broken"));
        assert_eq!(compact_path(dir, 3), Path::new("/s/0000000003.seg.compact"));
    }

    #[test]
    fn a_listing_puts_every_name_in_one_place() {
        let names = [
            "0000000002.seg",
            "notes.txt",
            "0000000001.seg",
            "0000000002.seg.broken",
            "0000000001.seg.compact",
            "42.seg",
            "42.seg.broken",
        ]
        .into_iter()
        .chain(STORE_FILES)
        .map(String::from)
        .collect();
        let listing = Listing::of(names);
        assert_eq!(listing.segments, vec![1, 2]);
        assert_eq!(
            listing.leftovers,
            vec!["0000000001.seg.compact", "0000000002.seg.broken"]
        );
        assert_eq!(
            listing.unknown,
            vec!["42.seg", "42.seg.broken", "notes.txt"]
        );
        assert_eq!(
            listing.ignored(),
            vec![
                "0000000001.seg.compact",
                "0000000002.seg.broken",
                "42.seg",
                "42.seg.broken",
                "notes.txt"
            ]
        );
    }
}
