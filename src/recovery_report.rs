//! [`RecoveryReport`]: what the last open found and did, for `LogStore::recovery_report`.
//!
//! Each step of open (`open.rs`) fills in its own fields; the report changes nothing and
//! is never read back by the store. `log_store.rs` logs a cut, a removed segment or
//! an ignored checkpoint at warning level from it.

use std::time::Duration;

use crate::tail_check::TailCheck;

/// What the last open found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Segment files scanned.
    pub segments_scanned: u32,
    /// Sealed segment files open did not even open, counted in `segments_scanned`
    /// too: a checkpoint whose index is decoded after open covers them wholly
    /// (`index_decoded_after_open`). Each is opened, and its length and header
    /// checked, when first used; the verification after open checks them all.
    pub segments_left_closed: u32,
    /// Sealed segments after the checkpoint that open did not scan, counted in
    /// `segments_scanned` too: their sidecars (`<segment>.side`) said what open needed
    /// of them, and the decode after open scans them with every check
    /// (`index_decoded_after_open`).
    pub segments_from_sidecars: u32,
    /// Valid records found (and indexed); with `index_decoded_after_open`, only those
    /// after the checkpoint, including the ones of segments taken from sidecars (as
    /// their sidecars count them; the decode checks the count).
    pub records: u64,
    /// Executions found.
    pub executions: u64,
    /// Bytes of data scanned, segment headers included. The bytes a checkpoint covers
    /// (`checkpoint_bytes`) and those of segments taken from sidecars
    /// (`segments_from_sidecars`) count too, although open did not read them.
    pub bytes_scanned: u64,
    /// Where a torn tail was cut: (segment id, offset), if one was.
    pub truncated_at: Option<(u32, u64)>,
    /// How many nonzero bytes the cut removed.
    pub bytes_truncated: u64,
    /// Why the tail counted as torn.
    pub torn_reason: Option<String>,
    /// Newest segments whose header never became durable and that hold no valid
    /// record: an all-zero one is removed, any other is renamed to `<name>.broken`.
    pub removed_segments: Vec<u32>,
    /// Files in the directory that are not segments (left alone). Not filled by an
    /// open that leaves its index to decode (`index_decoded_after_open`): it does not
    /// list the directory.
    pub ignored_files: Vec<String>,
    /// Bytes of records whose index came from a checkpoint (their segments'
    /// checksums verified instead of every record, before open returned or, with
    /// `checkpoint_verification_deferred`, after); 0 when none was used. They count
    /// in `bytes_scanned` too, although open then read only the checkpoint.
    pub checkpoint_bytes: u64,
    /// Why a checkpoint present in the directory was not used, if one was not.
    pub checkpoint_ignored: Option<String>,
    /// Whether open trusted the checkpoint without reading the segments it covers,
    /// leaving its verification to a thread that runs after open
    /// ([`Options::verify_checkpoint_after_open`](crate::Options::verify_checkpoint_after_open)).
    pub checkpoint_verification_deferred: bool,
    /// Whether open returned before it decoded the checkpoint's index: that thread
    /// decodes it first (with the tail open scanned after it), reads of executions
    /// the tail leaves alone find their execution in the checkpoint's directory
    /// meanwhile, and everything else waits for the decode. `records` then counts
    /// only the tail's records, and `executions` is the count the checkpoint states
    /// plus the tail's declarations.
    pub index_decoded_after_open: bool,
    /// Records checksummed while looking past a damaged record for a later commit
    /// group (0 when nothing was damaged).
    pub search_candidates: u64,
    /// Bytes those checksums covered: at most twice the segment searched, whatever
    /// its bytes (`scan::CRC_BUDGET_PER_BYTE`).
    pub search_bytes_checksummed: u64,
    /// How open established that the end of the log it serves is on the disk.
    pub tail_check: TailCheck,
    /// How long open's recovery took (listing, checkpoint, scan, repair).
    pub duration: Duration,
}
