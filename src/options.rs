//! [`Options`]: every tunable of a store, with production defaults, checked once at open.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::io::{Io, RealIo};

/// Smallest accepted segment size.
pub const MIN_SEGMENT_SIZE_BYTES: u64 = 64 * 1024;
/// Largest accepted segment size (positions keep offsets in 32 bits).
pub const MAX_SEGMENT_SIZE_BYTES: u64 = 1 << 30;
/// Largest accepted event or batch limit: a segment made for one batch must stay
/// addressable with 32-bit offsets.
pub const MAX_BATCH_LIMIT_BYTES: usize = 1 << 30;
/// Records a checkpoint must cover for a read-write open to verify it after open by
/// default ([`Options::verify_checkpoint_after_open`]): one default segment, which an
/// open verifies in a few tens of milliseconds. Smaller stores are verified before open
/// returns.
pub const VERIFY_AFTER_OPEN_FROM_BYTES: u64 = 64 << 20;

/// How the commit thread prepares segment space before records are written there.
/// Compared under real kernel power cuts in docs/DESIGN.md ("Write path variants").
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePath {
    /// Zeros written and fdatasynced ahead of the records, 4 MiB at a time, except
    /// that groups of `grow_group_min_bytes` or more grow the file. The default.
    ZerosAhead,
    /// No preparation: the records themselves grow the file.
    Grow,
    /// The segment's capacity `fallocate`d at creation (unwritten extents).
    Fallocate,
}

/// How fast the background scrubber (`scrub.rs`) re-reads sealed segments to check
/// every record's CRC. See [`Options::scrub`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScrubRate {
    /// No background scrubbing ([`LogStore::scrub_now`](crate::LogStore::scrub_now)
    /// still works).
    Off,
    /// One pass over every sealed segment within this duration: the rate is the sealed
    /// bytes divided by it, but at least [`MIN_SCRUB_BYTES_PER_SECOND`]; a pass that
    /// ends early waits for the rest of the duration before the next one starts. At
    /// least one second.
    WholeStoreEvery(Duration),
    /// A fixed rate, in bytes per second (at least 1); passes follow each other, at
    /// least one second apart.
    BytesPerSecond(u64),
}

/// The slowest the default pacing ([`ScrubRate::WholeStoreEvery`]) scrubs: 1 MiB/s,
/// so that a small store is checked within seconds rather than trickled over an hour.
pub const MIN_SCRUB_BYTES_PER_SECOND: u64 = 1 << 20;

/// The smallest interval between two running index checkpoints: each encodes and
/// writes the whole index.
const MIN_CHECKPOINT_INTERVAL: u64 = 4 << 10;

/// The default time between two background erasure passes.
const DEFAULT_ERASURE_INTERVAL: Duration = Duration::from_secs(3600);

/// The default time for one scrub pass over the whole store.
const DEFAULT_SCRUB_PASS: Duration = Duration::from_secs(3600);

/// How a store is opened. Build with [`Options::default`] and the setters.
///
/// ```
/// let options = execlog::Options::default()
///     .segment_size_bytes(16 << 20)
///     .index_stride(32);
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    pub(crate) segment_size_bytes: u64,
    pub(crate) max_event_bytes: usize,
    pub(crate) max_batch_bytes: usize,
    pub(crate) group_commit_max_bytes: usize,
    pub(crate) grow_group_min_bytes: u64,
    pub(crate) max_queued_bytes: usize,
    pub(crate) commit_delay_us: u64,
    pub(crate) index_stride: u32,
    pub(crate) index_checkpoint: bool,
    pub(crate) segment_sidecars: bool,
    /// `None` until set: after open if the checkpoint covers at least
    /// `verify_after_open_from` bytes of records.
    pub(crate) verify_checkpoint_after_open: Option<bool>,
    pub(crate) verify_after_open_from: u64,
    /// Test hook: how long the verification after open waits before it starts.
    pub(crate) checkpoint_verification_delay: Duration,
    /// Test hook: how long the verification after open pauses before each segment.
    pub(crate) checkpoint_verification_pause: Duration,
    /// Test hook: how long the decode of an index left to decode after open holds the
    /// store lock before it decodes.
    pub(crate) checkpoint_decode_hold: Duration,
    /// Test hook: the verification after open panics where it would verify.
    pub(crate) checkpoint_verification_panics: bool,
    /// Executions a running checkpoint encodes per hold of the store lock.
    pub(crate) checkpoint_slice: usize,
    /// `None` until set: the default, which depends on the file system.
    pub(crate) checkpoint_interval: Option<Option<u64>>,
    pub(crate) write_path: WritePath,
    pub(crate) key_hash_bits: u32,
    pub(crate) group_read: bool,
    pub(crate) create_if_missing: bool,
    /// `None` until set: the default, which depends on the file system (`scrub_rate`).
    pub(crate) scrub: Option<ScrubRate>,
    pub(crate) retention: Option<Duration>,
    /// `None` until set: the default, which depends on the file system.
    pub(crate) erasure_interval: Option<Option<Duration>>,
    pub(crate) tenant_retention: Vec<(crate::TenantId, Duration)>,
    pub(crate) io: Arc<dyn Io>,
    /// Whether [`Options::io`] replaced the real file system.
    pub(crate) io_replaced: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            segment_size_bytes: 64 << 20,
            max_event_bytes: (16 << 20) + (64 << 10),
            max_batch_bytes: 256 << 20,
            group_commit_max_bytes: 8 << 20,
            grow_group_min_bytes: 64 << 10,
            max_queued_bytes: 64 << 20,
            commit_delay_us: 0,
            index_stride: 16,
            index_checkpoint: true,
            segment_sidecars: true,
            verify_checkpoint_after_open: None,
            verify_after_open_from: VERIFY_AFTER_OPEN_FROM_BYTES,
            checkpoint_verification_delay: Duration::ZERO,
            checkpoint_verification_pause: Duration::ZERO,
            checkpoint_decode_hold: Duration::ZERO,
            checkpoint_verification_panics: false,
            checkpoint_slice: crate::checkpoint_encode::SLICE,
            checkpoint_interval: None,
            write_path: WritePath::ZerosAhead,
            key_hash_bits: 64,
            group_read: false,
            create_if_missing: true,
            scrub: None,
            retention: None,
            erasure_interval: None,
            tenant_retention: Vec::new(),
            io: Arc::new(RealIo),
            io_replaced: false,
        }
    }
}

impl Options {
    /// Checks, without a store, that `event` passes what an append with these options
    /// checks of the event alone: it encodes, within [`Options::max_event_bytes`]. For
    /// tools that validate all their input before they open (or create) a store.
    pub fn check_event(&self, event: &crate::ExecutionEventData) -> crate::Result<()> {
        crate::append::encode_all(self.max_event_bytes, usize::MAX, vec![event.clone()]).map(|_| ())
    }

    /// Size at which the log rolls to a new segment file. A segment's file grows to it
    /// in zero-filled steps of 4 MiB ahead of small commit groups (large ones grow it
    /// with their own bytes, see [`Options::grow_group_min_bytes`]). Default 64 MiB; from 64 KiB
    /// to 1 GiB. A single batch larger than this gets a segment of its own, sized to fit.
    #[must_use]
    pub fn segment_size_bytes(mut self, bytes: u64) -> Self {
        self.segment_size_bytes = bytes;
        self
    }

    /// Largest accepted event, measured as its encoded record body. Default 16 MiB +
    /// 64 KiB, so that an event carrying 16 MiB of payload fits. Larger events are
    /// rejected with [`Error::InvalidArgument`] before anything is written.
    #[must_use]
    pub fn max_event_bytes(mut self, bytes: usize) -> Self {
        self.max_event_bytes = bytes;
        self
    }

    /// Largest accepted `append_batch`, summed over its encoded records. Default 256 MiB;
    /// at most 1 GiB. Must be at least `max_event_bytes`.
    #[must_use]
    pub fn max_batch_bytes(mut self, bytes: usize) -> Self {
        self.max_batch_bytes = bytes;
        self
    }

    /// Commit groups at least this large that reach past the zeroed part of a segment
    /// grow the file with their own bytes instead of having zeros written and synced
    /// there first, so bulk ingest writes each byte once. Smaller groups (single
    /// appends) keep overwriting durable zeros, whose fdatasync has no metadata to
    /// commit. Default 64 KiB; `u64::MAX` never grows. Both ways survived hundreds of
    /// kernel power cuts (docs/DESIGN.md, "Write path variants").
    #[must_use]
    pub fn grow_group_min_bytes(mut self, bytes: u64) -> Self {
        self.grow_group_min_bytes = bytes;
        self
    }

    /// Most bytes one group commit (one write and one fdatasync) gathers before it
    /// starts. Default 8 MiB. A single append larger than this still commits, alone.
    #[must_use]
    pub fn group_commit_max_bytes(mut self, bytes: usize) -> Self {
        self.group_commit_max_bytes = bytes;
        self
    }

    /// Most bytes of encoded records queued to the commit thread and not yet completed
    /// by it (appends waiting for their group's fdatasync included). Default 64 MiB; at
    /// least 1. An append that would exceed it waits until earlier appends complete:
    /// blocking appends sleep, async appends await (without blocking the executor's
    /// thread). An append is always admitted when nothing is queued, so a batch larger
    /// than this still goes through, alone. Once anyone waits, appends are admitted in
    /// arrival order. This bounds the memory many concurrent large appends can hold.
    #[must_use]
    pub fn max_queued_bytes(mut self, bytes: usize) -> Self {
        self.max_queued_bytes = bytes;
        self
    }

    /// How long the commit thread waits for more appends to join a group before it
    /// writes, in microseconds. Default 0: a group is whatever queued while the previous
    /// fdatasync ran, which already batches well under load without adding latency.
    #[must_use]
    pub fn commit_delay_us(mut self, micros: u64) -> Self {
        self.commit_delay_us = micros;
        self
    }

    /// Every how many events of an execution the index keeps an entry point. Default 16
    /// (8 bytes per 16 events). A read of a range walks back at most `stride - 1` extra
    /// records. At least 1.
    #[must_use]
    pub fn index_stride(mut self, events: u32) -> Self {
        self.index_stride = events;
        self
    }

    /// Whether a clean close saves the index in a checkpoint file (`checkpoint.idx`)
    /// and open loads it instead of rebuilding the index from every record. Default
    /// on. Open uses a checkpoint only after checking the checksums it holds of every
    /// segment it covers, so what open accepts or refuses is the same either way; off,
    /// open rebuilds from the records and close writes none.
    #[must_use]
    pub fn index_checkpoint(mut self, enabled: bool) -> Self {
        self.index_checkpoint = enabled;
        self
    }

    /// Whether the checkpoint thread writes a sidecar (`<segment>.side`) for each segment
    /// sealed after its newest running checkpoint. Default on; it needs the running
    /// checkpoints (`index_checkpoint_interval_bytes`). An open after a crash that
    /// decodes its checkpoint after it returns then takes what it needs of such a
    /// segment from its sidecar instead of scanning it, and the decode scans it with
    /// every check (docs/DESIGN.md, "Sidecars"). Off, none is written or read: open
    /// scans every segment the newest checkpoint does not cover (sidecars an earlier
    /// session left are still removed once a checkpoint covers their segments).
    ///
    /// They matter only to opens that verify the checkpoint after returning (past
    /// 64 MiB of covered records by default, or `verify_checkpoint_after_open(true)`),
    /// and only when segments seal between two running checkpoints: in stores of
    /// many executions, whose checkpoints are large and so written further apart.
    #[must_use]
    pub fn segment_sidecars(mut self, enabled: bool) -> Self {
        self.segment_sidecars = enabled;
        self
    }

    /// Whether a read-write open trusts a checkpoint on its own checksum and verifies it
    /// against the segments in the background, after open returns, instead of before.
    ///
    /// By default (neither set), on when the checkpoint covers at least
    /// [`VERIFY_AFTER_OPEN_FROM_BYTES`] of records (64 MiB, one default segment), off
    /// below: a small store is verified before open returns, in tens of milliseconds
    /// (more when its files are not in the page cache), and a large one opens in about a millisecond at any size. Only a
    /// layout 3 checkpoint (every one this version writes) counts: an older one is
    /// verified before open, and rewritten at close. Set it to choose one behaviour at
    /// every size (`false` for damage to be found by open itself).
    ///
    /// Off, open recomputes the checksum of every covered segment and walks every
    /// covered record header before it uses a checkpoint: open reads the whole log.
    /// On, open reads only the checkpoint (layout 2 and later) and the tail after it,
    /// so its cost follows the number of executions, not the bytes; a background
    /// thread (`execlog-verify`) then makes the same checks, taking about as long as an
    /// ordinary open would have. Behind a layout 3 checkpoint (every checkpoint this
    /// version writes, at close or while running) open does not even decode the
    /// index: it maps the checkpoint, scans the records after it (a crash's tail) and
    /// returns, and the thread decodes the index first, with that tail
    /// ([`RecoveryReport::index_decoded_after_open`](crate::RecoveryReport::index_decoded_after_open),
    /// [`LogStore::index_decoded`](crate::LogStore::index_decoded)).
    /// Until it is decoded, reads and `get_latest_sequence` of executions that are
    /// neither forks nor deleted, and that the tail neither appends to nor could
    /// change (a tail with a deletion or a fork), are answered from the
    /// checkpoint's directory, and
    /// every other call (lists, stats, forks' and deleted executions' reads, and
    /// everything below that waits for the verdict) waits for the decode: about 2 ms
    /// per 10,000 executions. The cost moves, it does not vanish:
    /// - Reads are served at once: each record's CRC, execution number and sequence
    ///   are checked as always, and an execution's first read checks that its first
    ///   record declares its id and tenant. A fork's first read waits for the verdict.
    /// - Everything that writes waits for the verdict: appends (plain, guarded, keyed),
    ///   forks, deletions, prunes, imports, erasure passes, backups and new
    ///   subscriptions. The async methods await it without blocking their thread.
    /// - Until the verdict, metadata (`get_latest_sequence`, `list_executions`) comes
    ///   from the checkpoint as written, and damage to the covered bytes is not known:
    ///   the verdict (or the scrubber) finds it, not open.
    /// - After a clean close, open does not even open the sealed segment files the
    ///   checkpoint covers ([`RecoveryReport::segments_left_closed`]): each is opened
    ///   on first use, which checks its length and header as open would have. One
    ///   removed, cut short or replaced after close fails the reads that need it
    ///   ([`Error::Corrupt`] or [`Error::Io`]) and the verdict, not open.
    /// - If the checkpoint fails (its checks, its decode, or a tail that does not
    ///   continue its executions), the store is poisoned ([`Error::Poisoned`], reads
    ///   included, with the reason), `checkpoint.idx` is removed, and the next open
    ///   checks every record as an ordinary open does, reporting damage with its
    ///   segment and offset. [`Stats::checkpoint_unverified`] says whether the verdict
    ///   is pending, [`Stats::checkpoint_refuted`] why it failed.
    /// - Close stops the verification between two segments and leaves the file as it
    ///   was, for the next open to verify; no checkpoint is written from an index not
    ///   verified.
    ///
    /// Read-only opens always verify first. docs/DESIGN.md, "Verifying a checkpoint
    /// after open".
    ///
    /// [`Error::Poisoned`]: crate::Error::Poisoned
    /// [`Error::Corrupt`]: crate::Error::Corrupt
    /// [`Error::Io`]: crate::Error::Io
    /// [`RecoveryReport::segments_left_closed`]: crate::RecoveryReport::segments_left_closed
    /// [`Stats::checkpoint_unverified`]: crate::Stats::checkpoint_unverified
    /// [`Stats::checkpoint_refuted`]: crate::Stats::checkpoint_refuted
    #[must_use]
    pub fn verify_checkpoint_after_open(mut self, enabled: bool) -> Self {
        self.verify_checkpoint_after_open = Some(enabled);
        self
    }

    /// Test hook: where the default of [`Options::verify_checkpoint_after_open`]
    /// changes from before open to after it ([`VERIFY_AFTER_OPEN_FROM_BYTES`] unless set).
    #[doc(hidden)]
    #[must_use]
    pub fn verify_after_open_from(mut self, covered_bytes: u64) -> Self {
        self.verify_after_open_from = covered_bytes;
        self
    }

    /// Test hook: the verification after open starts only after `delay`, so that a
    /// test can act while it has not run.
    #[doc(hidden)]
    #[must_use]
    pub fn checkpoint_verification_delay(mut self, delay: Duration) -> Self {
        self.checkpoint_verification_delay = delay;
        self
    }

    /// Test hook: the verification after open pauses `pause` before each segment, so
    /// that a test can close the store while it runs.
    #[doc(hidden)]
    #[must_use]
    pub fn checkpoint_verification_pause(mut self, pause: Duration) -> Self {
        self.checkpoint_verification_pause = pause;
        self
    }

    /// Test hook: when open leaves the checkpoint's index to decode after it returns,
    /// the decode holds the store lock for `hold` before it decodes (close cuts the
    /// hold short), so that a test can read while the index is not decoded.
    #[doc(hidden)]
    #[must_use]
    pub fn checkpoint_decode_hold(mut self, hold: Duration) -> Self {
        self.checkpoint_decode_hold = hold;
        self
    }

    /// Test hook: the verification after open panics after the decode, where it would
    /// verify, so that a test can see what a bug there leaves behind.
    #[doc(hidden)]
    #[must_use]
    pub fn checkpoint_verification_panics(mut self) -> Self {
        self.checkpoint_verification_panics = true;
        self
    }

    /// Test hook: a running checkpoint encodes `executions` executions (at least 1)
    /// per hold of the store lock, so that a test with a small index sees appends,
    /// group commits and deletions land between two slices.
    #[doc(hidden)]
    #[must_use]
    pub fn checkpoint_slice(mut self, executions: usize) -> Self {
        self.checkpoint_slice = executions.max(1);
        self
    }

    /// How much an open after a crash may have to rebuild from records: each time
    /// this many bytes have become durable since the last checkpoint, a background
    /// thread (`execlog-checkpoint`) writes a new one describing everything durable
    /// then, so that open loads it and scans only what followed. `None`: checkpoints
    /// only at clean close (open after a crash then scans everything appended since).
    /// Default: the segment size, or four times the size of the last checkpoint
    /// written if that is more (so that checkpoints add at most a quarter to what is
    /// written, however many executions the index holds), or `None` with a simulated
    /// file system (whose tests drive I/O from one thread). A set interval is kept
    /// as set, at least 4 KiB. Writing one costs encoding the index (appends wait at
    /// most for one slice of 4096 executions) and writing it whole: see
    /// docs/DESIGN.md, "Index checkpoints". Has no effect with
    /// [`Options::index_checkpoint`] off.
    #[must_use]
    pub fn index_checkpoint_interval_bytes(mut self, bytes: Option<u64>) -> Self {
        self.checkpoint_interval = Some(bytes.map(|b| b.max(MIN_CHECKPOINT_INTERVAL)));
        self
    }

    /// How segment space is prepared before records go there (see [`WritePath`]).
    /// Experimental: only [`WritePath::ZerosAhead`], the default, is supported; the
    /// others exist so that the kernel power-cut test can compare them.
    #[doc(hidden)]
    #[must_use]
    pub fn write_path(mut self, path: WritePath) -> Self {
        self.write_path = path;
        self
    }

    /// Keeps only this many bits (0 to 64, default 64) of the in-memory hash of
    /// idempotency keys. For tests: with few bits, keys collide and the exact check
    /// behind the hash (`idempotency.rs`) is exercised; answers stay the same, only
    /// slower.
    #[doc(hidden)]
    #[must_use]
    pub fn idempotency_hash_bits(mut self, bits: u32) -> Self {
        self.key_hash_bits = bits.min(64);
        self
    }

    /// Whether the store's group may read it. A store holds every tenant's histories,
    /// so by default what open creates is private to its owner, as PostgreSQL's data
    /// directory is: the store directory 0700, its files (segments, `LOCK`, the
    /// checkpoint, the cut marker) 0600. With `true` they are created 0750 and 0640,
    /// for operators' tools run as another user of the owner's group (backups,
    /// `execlog verify` and the other read-only commands, which lock the store through
    /// a read-only descriptor of `LOCK`); never writable by the group, never readable
    /// by others.
    ///
    /// The process umask still applies (a umask of 077 keeps even group-read stores
    /// private). Only what this store creates gets these modes: an existing directory
    /// and existing files keep the permissions they have (open never `chmod`s), and
    /// missing parents of the store directory are created with the default mode less
    /// the umask. Default `false`.
    #[must_use]
    pub fn group_read(mut self, enabled: bool) -> Self {
        self.group_read = enabled;
        self
    }

    /// Whether [`LogStore::open_with`](crate::LogStore::open_with) creates a store
    /// where there is none. With `false`, a directory that does not exist, or holds
    /// no segment file, is refused with [`Error::InvalidArgument`] and nothing is
    /// created, so a mistyped path fails instead of opening a new, empty store
    /// beside the one meant. Checking costs a listing of the directory. Default
    /// `true` (read-only opens never create).
    #[must_use]
    pub fn create_if_missing(mut self, enabled: bool) -> Self {
        self.create_if_missing = enabled;
        self
    }

    /// How fast a writable store re-reads its sealed segments in the background, from
    /// the storage device past the page cache, to check every record's CRC
    /// (docs/DESIGN.md, "Scrubber"). A damaged range it finds
    /// is refused by every later read ([`Error::Corrupt`]), logged at error level and
    /// counted in [`Stats::scrub`](crate::Stats::scrub). The scrubber is one thread
    /// that sleeps between chunks of at most 256 KiB to keep to the rate; it holds no
    /// lock the commit thread needs while it reads, and close stops it at once. Its
    /// position survives restarts in `scrub.progress`. Read-only opens and readers do
    /// not scrub in the background.
    ///
    /// Default: [`ScrubRate::WholeStoreEvery`] one hour (at least
    /// [`MIN_SCRUB_BYTES_PER_SECOND`]) on the real file system, and
    /// [`ScrubRate::Off`] on a file system given with `Options::io` (the simulated one
    /// of the crash tests, which count every I/O call), unless set explicitly.
    #[must_use]
    pub fn scrub(mut self, rate: ScrubRate) -> Self {
        self.scrub = Some(rate);
        self
    }

    /// Deletes, in the background, every execution whose last event is older than
    /// `older_than` (as [`Lifecycle::prune`](crate::Lifecycle::prune) does on demand).
    /// A thread (`execlog-retention`) of a writable store prunes at open and then every
    /// tenth of the shortest retention set (between one second and one hour). Off by
    /// default: nothing is deleted unless asked.
    #[must_use]
    pub fn retention(mut self, older_than: Duration) -> Self {
        self.retention = Some(older_than);
        self
    }

    /// Sets the retention of one tenant's executions, instead of
    /// [`Options::retention`]'s (which may be unset: then only such tenants are
    /// pruned). Set again for the same tenant, the last one counts.
    #[must_use]
    pub fn tenant_retention(
        mut self,
        tenant: impl Into<crate::TenantId>,
        older_than: Duration,
    ) -> Self {
        let tenant = tenant.into();
        self.tenant_retention.retain(|(t, _)| *t != tenant);
        self.tenant_retention.push((tenant, older_than));
        self
    }

    /// The retention of `tenant`'s executions, if it has one.
    pub(crate) fn retention_of(&self, tenant: &crate::TenantId) -> Option<Duration> {
        self.tenant_retention
            .iter()
            .find(|(t, _)| t == tenant)
            .map(|&(_, d)| d)
            .or(self.retention)
    }

    /// How often the background pruner runs, if any retention is set.
    pub(crate) fn retention_interval(&self) -> Option<Duration> {
        let tenants = self.tenant_retention.iter().map(|&(_, d)| d);
        let shortest = self.retention.into_iter().chain(tenants).min()?;
        Some(crate::retention::interval_for(shortest))
    }

    /// How often a writable store's background thread (`execlog-erasure`) erases the
    /// event bytes of deleted executions from the segment files and gives their space
    /// back (as [`LogStore::compact_now`](crate::LogStore::compact_now) does at once):
    /// deleted content is gone from every file within about this long. `None` turns
    /// it off. Default: one hour; off on a file system given with `Options::io` unless
    /// set.
    #[must_use]
    pub fn erasure_interval(mut self, every: Option<Duration>) -> Self {
        self.erasure_interval = Some(every.map(|d| d.max(Duration::from_millis(10))));
        self
    }

    /// The checkpoint interval in effect after a checkpoint of `last_bytes`: the
    /// default grows with the checkpoint (`checkpointer.rs`), a set one does not.
    pub(crate) fn checkpoint_interval_after(&self, last_bytes: u64) -> Option<u64> {
        let interval = self.checkpoint_interval()?;
        Some(match self.checkpoint_interval {
            Some(_) => interval,
            None => interval.max(
                last_bytes
                    .saturating_mul(crate::checkpointer::DEFAULT_INTERVAL_PER_CHECKPOINT_BYTE),
            ),
        })
    }

    /// The checkpoint interval configured, or the default's base (see
    /// [`Options::index_checkpoint_interval_bytes`]).
    pub(crate) fn checkpoint_interval(&self) -> Option<u64> {
        if !self.index_checkpoint {
            return None;
        }
        match self.checkpoint_interval {
            Some(every) => every,
            None if self.io_replaced => None,
            None => Some(self.segment_size_bytes),
        }
    }

    pub(crate) fn erasure_every(&self) -> Option<Duration> {
        match self.erasure_interval {
            Some(every) => every,
            None if self.io_replaced => None,
            None => Some(DEFAULT_ERASURE_INTERVAL),
        }
    }

    /// The scrub rate in effect (see [`Options::scrub`]).
    pub(crate) fn scrub_rate(&self) -> ScrubRate {
        match self.scrub {
            Some(rate) => rate,
            None if self.io_replaced => ScrubRate::Off,
            None => ScrubRate::WholeStoreEvery(DEFAULT_SCRUB_PASS),
        }
    }

    /// Permission bits of the store directory when open creates it (less the umask).
    pub(crate) fn dir_mode(&self) -> u32 {
        if self.group_read { 0o750 } else { 0o700 }
    }

    /// Permission bits of every file the store creates (less the umask).
    pub(crate) fn file_mode(&self) -> u32 {
        if self.group_read { 0o640 } else { 0o600 }
    }

    /// Replaces the file-system layer, e.g. with the simulated one of
    /// `execlog::fault` (feature `fault-injection`).
    #[cfg(feature = "fault-injection")]
    #[must_use]
    pub fn io(mut self, io: Arc<dyn Io>) -> Self {
        self.io = io;
        self.io_replaced = true;
        self
    }

    /// Rejects values outside their documented ranges.
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidArgument(what));
        if !(MIN_SEGMENT_SIZE_BYTES..=MAX_SEGMENT_SIZE_BYTES).contains(&self.segment_size_bytes) {
            return bad(format!(
                "segment_size_bytes {} is outside {MIN_SEGMENT_SIZE_BYTES}..={MAX_SEGMENT_SIZE_BYTES}",
                self.segment_size_bytes
            ));
        }
        if self.max_event_bytes == 0 || self.max_event_bytes > self.max_batch_bytes {
            return bad(format!(
                "max_event_bytes {} must be between 1 and max_batch_bytes {}",
                self.max_event_bytes, self.max_batch_bytes
            ));
        }
        if self.max_batch_bytes > MAX_BATCH_LIMIT_BYTES {
            return bad(format!(
                "max_batch_bytes {} exceeds {MAX_BATCH_LIMIT_BYTES}",
                self.max_batch_bytes
            ));
        }
        if self.group_commit_max_bytes == 0 {
            return bad("group_commit_max_bytes must be at least 1".into());
        }
        if self.max_queued_bytes == 0 {
            return bad("max_queued_bytes must be at least 1".into());
        }
        if self.commit_delay_us > 1_000_000 {
            return bad(format!(
                "commit_delay_us {} exceeds one second",
                self.commit_delay_us
            ));
        }
        if self.index_stride == 0 {
            return bad("index_stride must be at least 1".into());
        }
        match self.scrub_rate() {
            ScrubRate::WholeStoreEvery(d) if d < Duration::from_secs(1) => bad(format!(
                "ScrubRate::WholeStoreEvery({d:?}) is shorter than a second"
            )),
            ScrubRate::BytesPerSecond(0) => {
                bad("ScrubRate::BytesPerSecond(0): use ScrubRate::Off to turn scrubbing off".into())
            }
            _ => Ok(()),
        }
    }
}
