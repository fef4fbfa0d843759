//! [`LogStore`]: opening, closing, and the blocking API. Wires the parts together and
//! holds no format logic.
//!
//! Threads: the caller's threads run validation, encoding, reservation and reads; one
//! commit thread per store (`committer.rs`) writes and syncs. Open creates the
//! directory if needed (durably: the new directory and its parent are fsynced), takes
//! the directory lock, opens the log (`open.rs`), creates the first segment of an empty
//! store, and starts the commit thread. Close (or drop) stops accepting appends, lets
//! the commit thread finish what is queued, joins it, and releases the lock. A
//! writable open also starts the background scrubber (`scrubber.rs`), which close
//! stops first.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::append::{self, Given, Prepared};
use crate::background::Background;
use crate::checkpoint::SegmentDigest;
use crate::committer::Committer;
use crate::deferred_verification::{self, Verification};
use crate::error::{Error, Result};
use crate::event::{ExecutionEventData, StoredEvent};
use crate::ids::{ExecutionId, TenantId, validate_id};
use crate::io::{Io, LockGuard};
use crate::lazy_index::LazyIndex;
use crate::metrics::WriteMetrics;
use crate::open::{self, RecoveredSegment};
use crate::options::Options;
use crate::published_end::{self, Publisher};
use crate::queue::{Admit, Admitted, Appending, QueueBound, Ticket};
use crate::reader;
use crate::recovery_report::RecoveryReport;
use crate::refresh;
use crate::retention;
use crate::scrub::ScrubStats;
use crate::scrubber;
use crate::segment::{self, SEGMENT_HEADER_LEN};
use crate::segments::Segments;
use crate::state::{Shared, State, Writer};
use crate::store_dir;
use crate::sync::{self, AtomicBool, JoinHandle, Mutex, Sender};

/// How a store is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Locked, recovered (cutting a torn tail), with a commit thread.
    Write,
    /// Locked, nothing written, nothing followed.
    ReadOnly,
    /// Not locked, nothing written, bounded by and following the published end.
    Reader,
}

/// Takes the directory lock, or says who holds it.
fn lock(io: &dyn Io, dir: &Path, mode: u32) -> Result<LockGuard> {
    let lock_path = dir.join(store_dir::LOCK);
    io.try_lock(&lock_path, mode).map_err(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            Error::Locked {
                path: dir.to_path_buf(),
            }
        } else {
            Error::io("lock", &lock_path, e)
        }
    })
}

/// A durable event log in one directory. Share it with `Arc<LogStore>`.
///
/// Implements [`EventStore`](crate::EventStore) (async) and offers the same operations
/// as blocking methods (`*_blocking`) for callers without an async runtime.
pub struct LogStore {
    shared: Arc<Shared>,
    committer: Mutex<Option<JoinHandle<Result<()>>>>,
    scrubber: Mutex<Option<Background>>,
    /// The background pruner, if a retention is set.
    retention: Mutex<Option<Background>>,
    /// The background erasure thread, if erasure runs in the background.
    eraser: Mutex<Option<Background>>,
    /// The background checkpoint thread, if checkpoints are written while running.
    checkpointer: Mutex<Option<crate::checkpointer::Checkpointer>>,
    /// Verifies a checkpoint open trusted (`deferred_verification.rs`).
    verifier: Mutex<Option<Background>>,
    /// Open's end of the channel the index decode waits on (`lazy_index.rs`), until
    /// open returns: a store dropped by a failing open lets go of it before it stops
    /// the decode.
    opening: Mutex<Option<Sender<()>>>,
    lock: Mutex<Option<LockGuard>>,
    report: RecoveryReport,
}

/// Sizes and counts of an open store.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Segment files.
    pub segments: usize,
    /// Durable events (of executions not deleted).
    pub events: u64,
    /// Executions (with at least one durable event, or being created), deleted ones
    /// not counted.
    pub executions: usize,
    /// Executions deleted (`Lifecycle`): their ids stay reserved.
    pub deleted_executions: usize,
    /// Tenants with an execution that is not deleted.
    pub tenants: usize,
    /// Durable bytes in segments (headers and padding included; preallocated space not).
    pub data_bytes: u64,
    /// Approximate memory of the in-memory index.
    pub index_bytes: usize,
    /// Approximate memory of the sparse entry points alone (the per-event part).
    pub sparse_index_bytes: usize,
    /// Index checkpoints the background thread wrote since open (see
    /// [`Options::index_checkpoint_interval_bytes`]); close's own is not counted.
    pub index_checkpoints: u64,
    /// Bytes of those checkpoints: what running checkpoints added to the bytes written.
    pub index_checkpoint_bytes: u64,
    /// Whether the checkpoint this open trusted is still being verified (see
    /// [`Options::verify_checkpoint_after_open`]): calls that write wait meanwhile.
    pub checkpoint_unverified: bool,
    /// Why the checkpoint this open trusted failed its verification, if it did: the
    /// store is then poisoned. `checkpoint_unverified == false` alone does not say
    /// the verification passed. A checkpoint whose index open left to decode and that
    /// does not decode ("it does not decode: …") never gave the store an index: the
    /// counts above are then zero.
    pub checkpoint_refuted: Option<String>,
    /// Bytes of encoded records now admitted to the queue to the commit thread and not
    /// yet completed (see [`Options::max_queued_bytes`]). An append is counted from its
    /// admission, before it takes the store lock, with its first record's execution
    /// declaration included even when the execution exists (an upper bound of its
    /// bytes by that declaration's length).
    pub queued_bytes: usize,
    /// The highest `queued_bytes` since open: at most `max_queued_bytes`, or one
    /// append's bytes when a single append is larger.
    pub peak_queued_bytes: usize,
    /// Appends now waiting for room in the queue.
    pub queue_waiters: usize,
    /// Appends in progress on this store: started (blocking or async) and not yet
    /// returned. An append future polled once and then neither polled again nor
    /// dropped stays counted; the commit thread's wait for appends in progress learns
    /// to leave such absentees out (docs/DESIGN.md, "The write path", step 3).
    pub appends_in_progress: usize,
    /// Keyed appends (appends with an idempotency key) the store knows, durable or not.
    pub idempotency_keys: usize,
    /// Approximate memory of their lookup tables (the keys themselves stay on disk).
    pub idempotency_key_bytes: usize,
    /// What the write path committed since open: appends, events, bytes, groups, and
    /// histograms of appends per group and fdatasync latency.
    pub writes: WriteMetrics,
    /// What scrubbing checked and found: bytes, passes, the background scrubber's
    /// segment, and every damaged range (which reads refuse). See [`Options::scrub`].
    pub scrub: ScrubStats,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens (creating if needed) the store in `dir` with default [`Options`]. A store
    /// directory it creates is private to the owner (0700, its files 0600; see
    /// [`Options::group_read`]).
    pub fn open(dir: impl AsRef<Path>) -> Result<LogStore> {
        Self::open_with(dir, Options::default())
    }

    /// Opens (creating if needed) the store in `dir`.
    ///
    /// What it creates gets the permissions [`Options::group_read`] chooses (private
    /// by default); an existing directory and existing files keep theirs.
    ///
    /// Fails with [`Error::Locked`] at once if another `LogStore` has it open, with
    /// [`Error::Corrupt`] if acknowledged data is damaged. A torn tail left by a crash is
    /// cut and described in [`LogStore::recovery_report`]. Damage to bytes a checkpoint
    /// covers is found by open itself only when open verifies the checkpoint before it
    /// returns ([`Options::verify_checkpoint_after_open`]: by default, below 64 MiB of
    /// covered records); otherwise open returns, reads never serve the damaged bytes,
    /// the verdict poisons the store ([`Error::Poisoned`]) and removes the checkpoint, and
    /// the next open fails with [`Error::Corrupt`].
    pub fn open_with(dir: impl AsRef<Path>, options: Options) -> Result<LogStore> {
        Self::open_mode(dir.as_ref(), options, false)
    }

    /// Opens an existing store for reading only: nothing on disk changes (a torn tail
    /// is reported in [`LogStore::recovery_report`] and hidden from reads, not cut), no
    /// commit thread runs, and appends fail with [`Error::InvalidArgument`]. The
    /// directory lock is still taken, so a store in use elsewhere is [`Error::Locked`];
    /// taking it creates `LOCK` if it is missing, which needs write access to the
    /// directory (a copy on read-only media opens with [`LogStore::open_reader`]).
    /// A directory without segment files is not a store: [`Error::InvalidArgument`].
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<LogStore> {
        Self::open_mode(dir.as_ref(), Options::default(), true)
    }

    /// Opens the store that another process may be writing, to read and follow it:
    /// without the directory lock, through read-only file handles, writing nothing
    /// (so a user who may only read the directory, a read-only mount and a backup copy
    /// work too).
    ///
    /// It serves exactly what the writer has made durable: the writer publishes its
    /// durable end after every fdatasync (docs/FORMAT.md, `published.end`), and the
    /// reader never reads past it. A thread of the reader polls that end (every 1 to
    /// 20 ms, slower while nothing changes) and indexes what was added, so reads and
    /// [`Follow::subscribe`](crate::Follow::subscribe) see new events. A writer that
    /// crashes and restarts publishes what its recovery kept, which the reader then
    /// follows. Without a published end (a store no writer of this version opened),
    /// the reader serves what recovery's rules accept, as
    /// [`LogStore::open_read_only`] does. Appends fail with
    /// [`Error::InvalidArgument`].
    pub fn open_reader(dir: impl AsRef<Path>) -> Result<LogStore> {
        Self::open_as(dir.as_ref(), Options::default(), Mode::Reader)
    }

    pub(crate) fn open_mode(dir: &Path, options: Options, read_only: bool) -> Result<LogStore> {
        let mode = if read_only {
            Mode::ReadOnly
        } else {
            Mode::Write
        };
        Self::open_as(dir, options, mode)
    }

    fn open_as(dir: &Path, options: Options, mode: Mode) -> Result<LogStore> {
        let read_only = mode != Mode::Write;
        options.validate()?;
        let dir = dir.to_path_buf();
        let io = Arc::clone(&options.io);
        if read_only || !options.create_if_missing {
            require_store(io.as_ref(), &dir)?;
        } else {
            create_dir_durably(io.as_ref(), &dir, options.dir_mode())?;
        }
        let lock = match mode {
            Mode::Reader => None,
            Mode::Write | Mode::ReadOnly => Some(lock(io.as_ref(), &dir, options.file_mode())?),
        };
        let published = match mode {
            Mode::Reader => published_end::read(io.as_ref(), &dir)?,
            Mode::Write | Mode::ReadOnly => None,
        };
        let limit = published.map(|p| (p.segment, p.end));
        let mut recovered = open::recover(io.as_ref(), &dir, &options, read_only, limit)?;
        if !read_only
            && (recovered.report.truncated_at.is_some()
                || !recovered.report.removed_segments.is_empty())
        {
            log::warn!(
                "recovered {}: cut torn tail at {:?} ({} bytes, {}), removed blank segments {:?}",
                dir.display(),
                recovered.report.truncated_at,
                recovered.report.bytes_truncated,
                recovered.report.torn_reason.as_deref().unwrap_or("-"),
                recovered.report.removed_segments
            );
        }
        if let Some(why) = &recovered.report.checkpoint_ignored {
            log::warn!(
                "{}: ignored {} ({why}); the index was rebuilt from the records",
                dir.display(),
                store_dir::CHECKPOINT
            );
        }
        if recovered.segments.is_empty() && read_only {
            return Err(Error::InvalidArgument(format!(
                "{} holds no readable segment",
                dir.display()
            )));
        }
        if recovered.segments.is_empty() {
            let capacity = options.segment_size_bytes;
            let zeroed = segment::initial_len(capacity, options.write_path);
            let file = segment::create(
                io.as_ref(),
                &dir,
                1,
                (zeroed, options.write_path),
                options.file_mode(),
            )?;
            recovered.segments.push(RecoveredSegment {
                id: 1,
                file,
                data_end: SEGMENT_HEADER_LEN as u64,
                file_len: zeroed,
                digest: Some(SegmentDigest::EMPTY),
                version: segment::FORMAT_VERSION,
                view: None,
            });
        }
        let segments = Segments::new(Arc::clone(&io), &dir, 1, read_only);
        for (id, d) in (1..).zip(&recovered.closed) {
            segments.push_closed(id, d.end);
        }
        let newest = recovered.segments.last().map(|s| s.id);
        for s in &mut recovered.segments {
            // The newest segment grows: its views are mapped as reads need them.
            let view = s.view.take().filter(|_| Some(s.id) != newest);
            segments.push(s.id, Arc::clone(&s.file), (s.data_end, view));
        }
        let commit_start = recovered.commit_start(options.segment_size_bytes)?;
        let Some(last) = recovered.segments.pop() else {
            return Err(Error::Internal("no segment after recovery".into()));
        };
        let (tx, rx) = sync::channel();
        let tx = (!read_only).then_some(tx);
        let writer = Writer {
            segment: last.id,
            tail: last.data_end,
            // The file may end before a full segment (zeroing goes ahead lazily): the
            // segment's capacity is the configured size, or the file if larger. A
            // segment of an older format version takes no more records: the first
            // append rolls to a new one, of this version, so that an older build finds
            // a version it refuses instead of records it would take for damage.
            capacity: if last.version < segment::FORMAT_VERSION {
                last.data_end
            } else {
                last.file_len.max(options.segment_size_bytes)
            },
            tx,
            poisoned: None,
            last_timestamp_ns: recovered.last_timestamp_ns,
            last_ticket: None,
        };
        let publisher = match mode {
            Mode::Write => {
                let p = Publisher::open(io.as_ref(), &dir, options.file_mode())?;
                p.publish(last.id, last.data_end);
                Some(p)
            }
            Mode::ReadOnly | Mode::Reader => None,
        };
        let metrics = crate::metrics::Metrics::for_store(&dir, &recovered.report);
        let queue_bound = QueueBound::new(options.max_queued_bytes);
        let deletions = crate::sync::AtomicU64::new(recovered.index.deleted() as u64);
        let erasable = crate::erasure::all_erasable(&recovered.index);
        let shared = Arc::new(Shared {
            dir,
            io,
            options,
            state: Mutex::new(State {
                index: recovered.index,
                keys: recovered.keys,
                writer,
                durable: crate::state::Durable {
                    digests: commit_start.digests.clone(),
                    timestamp_ns: recovered.last_timestamp_ns,
                },
            }),
            segments,
            queue_bound,
            closed: AtomicBool::new(false),
            read_only,
            metrics,
            watch: crate::watch::Watch::default(),
            publisher,
            scrub: crate::scrub::ScrubState::default(),
            deletions,
            erasable: Mutex::new(erasable),
            erasing: Mutex::new(()),
            checkpoints: crate::checkpointer::Requests::with_sidecars(
                recovered.sidecar_files.drain(..),
            ),
            verification: match recovered.trusted_checkpoint_crc {
                Some(crc) => Verification::pending(crc),
                None => Verification::verified(),
            },
            lazy: recovered.lazy.take(),
        });
        // An index still to decode: its thread takes the lock before any other thread
        // that could take it starts (`lazy_index.rs`).
        let (opened, opening) = sync::channel();
        let decoder = match shared.lazy {
            Some(_) => deferred_verification::start(&shared, opening)?,
            None => None,
        };
        if mode == Mode::Reader {
            let poller = Arc::clone(&shared);
            let handle = sync::Builder::new()
                .name("execlog-refresh".into())
                .spawn(move || refresh::run(&poller, published))
                .map_err(|e| Error::io("spawn refresh thread", &shared.dir, e))?;
            return Ok(LogStore {
                shared,
                committer: Mutex::new(Some(handle)),
                scrubber: Mutex::new(None),
                retention: Mutex::new(None),
                eraser: Mutex::new(None),
                checkpointer: Mutex::new(None),
                verifier: Mutex::new(None),
                opening: Mutex::new(None),
                lock: Mutex::new(None),
                report: recovered.report,
            });
        }
        if read_only {
            return Ok(LogStore {
                shared,
                committer: Mutex::new(None),
                scrubber: Mutex::new(None),
                retention: Mutex::new(None),
                eraser: Mutex::new(None),
                checkpointer: Mutex::new(None),
                verifier: Mutex::new(None),
                opening: Mutex::new(None),
                lock: Mutex::new(lock),
                report: recovered.report,
            });
        }
        let committer = Committer::new(Arc::clone(&shared), rx, commit_start);
        let spawned = sync::Builder::new()
            .name("execlog-commit".into())
            .spawn(move || committer.run())
            .map_err(|e| Error::io("spawn commit thread", &shared.dir, e));
        let handle = match spawned {
            Ok(handle) => handle,
            Err(e) => {
                // The decode waits for open to let go of its end before it stops.
                drop(opened);
                if let Some(decoder) = decoder {
                    decoder.stop();
                }
                return Err(e);
            }
        };
        let store = LogStore {
            shared,
            committer: Mutex::new(Some(handle)),
            scrubber: Mutex::new(None),
            retention: Mutex::new(None),
            eraser: Mutex::new(None),
            checkpointer: Mutex::new(None),
            verifier: Mutex::new(decoder),
            opening: Mutex::new(Some(opened)),
            lock: Mutex::new(lock),
            report: recovered.report,
        };
        // Dropping `store` on failure closes it: the commit thread ends cleanly.
        *store.scrubber.lock() = scrubber::start(&store.shared)?;
        *store.retention.lock() = retention::start(&store.shared)?;
        *store.eraser.lock() = crate::eraser::start(&store.shared)?;
        *store.checkpointer.lock() = crate::checkpointer::start(&store.shared)?;
        if store.shared.lazy.is_none() {
            let (_, never) = sync::channel();
            *store.verifier.lock() = deferred_verification::start(&store.shared, never)?;
        }
        store.opening.lock().take();
        Ok(store)
    }

    /// Stops accepting appends, commits what is queued, seals the log and writes the
    /// index checkpoint, and releases the directory lock. Later calls on this store fail
    /// with [`Error::Closed`]. Idempotent; also done on drop (which cannot report).
    ///
    /// An `Err` says what failed at close (writing the seal or the checkpoint, or the
    /// commit thread's panic): every acknowledged append is durable anyway, but the next
    /// open cannot use a checkpoint and scans the log.
    pub fn close(&self) -> Result<()> {
        self.shared.closed.store(true, Ordering::SeqCst);
        drop(self.opening.lock().take());
        // Writers and the checkpoint thread may be waiting for its verdict.
        if let Some(verifier) = self.verifier.lock().take() {
            verifier.stop();
        }
        // First, so that it saves its position while the store is still locked.
        if let Some(scrubber) = self.scrubber.lock().take() {
            scrubber.stop();
        }
        if let Some(retention) = self.retention.lock().take() {
            retention.stop();
        }
        if let Some(eraser) = self.eraser.lock().take() {
            eraser.stop();
        }
        // Before the commit thread ends: close's checkpoint must be the last written.
        if let Some(checkpointer) = self.checkpointer.lock().take() {
            checkpointer.stop();
        }
        // A `compact_now` in another thread stops before its next segment; wait for
        // the one it is rewriting, so that nothing renames files after close returns.
        drop(self.shared.erasing.lock());
        drop(self.shared.state.lock().writer.tx.take());
        // Appenders waiting for queue space are refused (Error::Closed) now.
        self.shared.queue_bound.stop();
        let at_close = match self.committer.lock().take().map(|h| h.join()) {
            None => Ok(()),
            Some(Ok(at_close)) => at_close,
            Some(Err(_)) => Err(Error::poisoned("the commit thread panicked")),
        };
        // Every durable end is final now: followers deliver the rest and end.
        self.shared.watch.finish();
        drop(self.lock.lock().take());
        at_close
    }

    /// What the open that created this store found and did.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.shared.dir
    }

    /// Counts and sizes, for monitoring.
    pub fn stats(&self) -> Stats {
        let (index, deleted, keys) = {
            let state = self.shared.state.lock();
            let keys = (state.keys.len(), state.keys.memory_bytes());
            (state.index.summary(), state.index.deleted(), keys)
        };
        Stats {
            segments: self.shared.segments.count(),
            events: index.events,
            executions: index.executions,
            deleted_executions: deleted,
            tenants: index.tenants,
            data_bytes: self.shared.segments.durable_bytes(),
            index_bytes: index.memory_bytes,
            sparse_index_bytes: index.sparse_bytes,
            index_checkpoints: self.shared.checkpoints.written.load(Ordering::Relaxed),
            index_checkpoint_bytes: self
                .shared
                .checkpoints
                .written_bytes
                .load(Ordering::Relaxed),
            checkpoint_unverified: self.shared.verification.is_pending(),
            checkpoint_refuted: self.shared.verification.refuted(),
            queued_bytes: self.shared.queue_bound.queued(),
            peak_queued_bytes: self.shared.queue_bound.peak(),
            queue_waiters: self.shared.queue_bound.waiting(),
            appends_in_progress: self.shared.queue_bound.appending(),
            idempotency_keys: keys.0,
            idempotency_key_bytes: keys.1,
            writes: self.shared.metrics.snapshot(),
            scrub: self.shared.scrub.stats(),
        }
    }

    /// The parts of the store its other modules work on.
    /// Whether the index is in memory: false only while the checkpoint of a clean
    /// close is decoded after open ([`RecoveryReport::index_decoded_after_open`], with
    /// [`Options::verify_checkpoint_after_open`]). Meanwhile reads of executions that
    /// are neither forks nor deleted are served from the checkpoint's directory, and
    /// every other call waits for the decode.
    pub fn index_decoded(&self) -> bool {
        self.shared.lazy.as_ref().is_none_or(LazyIndex::is_decoded)
    }

    /// [`Stats::checkpoint_unverified`] without the rest of [`LogStore::stats`] (which
    /// walks the index under the store lock): whether the verification of the checkpoint
    /// open trusted ([`Options::verify_checkpoint_after_open`]) has not ended, so writes
    /// still wait for it. For polling; once it is false, [`Stats::checkpoint_refuted`]
    /// says whether the checkpoint was refuted.
    pub fn checkpoint_unverified(&self) -> bool {
        self.shared.verification.is_pending()
    }

    pub(crate) fn shared_arc(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Fails if the store is closed or poisoned.
    pub(crate) fn check_writable(&self) -> Result<()> {
        self.check_open()?;
        match &self.shared.state.lock().writer.poisoned {
            Some(poison) => Err(poison.error()),
            None => Ok(()),
        }
    }

    /// Every execution with its durable event count, in creation order.
    pub(crate) fn execution_ids(&self) -> Result<Vec<(ExecutionId, u64)>> {
        Ok(self.shared.index()?.index.durable_executions())
    }

    /// Fails if the store is closed, or if the checkpoint open trusted was refuted.
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        self.shared.verification.check()
    }

    /// [`LogStore::check_open`], after waiting for the verdict on a checkpoint open
    /// trusted: what writes (or follows the log) must not act on an index not verified.
    pub(crate) fn check_writable_index(&self) -> Result<()> {
        self.check_open()?;
        self.shared.verification.wait_verified()
    }

    /// Validates and encodes an append (step 1 of `append.rs`).
    pub(crate) fn prepare(
        &self,
        execution_id: &ExecutionId,
        tenant_id: &TenantId,
        events: Vec<ExecutionEventData>,
    ) -> Result<Prepared> {
        self.check_writable_index()?;
        append::prepare(&self.shared, execution_id, tenant_id, events)
    }

    /// Waits, without blocking the thread, until `prepared` fits in the queue.
    pub(crate) fn admit(&self, prepared: &Prepared) -> Admit {
        self.shared.queue_bound.admit(prepared.queued_bytes())
    }

    /// Queues an admitted append; returns its first sequence and completion ticket.
    pub(crate) fn enqueue(
        &self,
        execution_id: &ExecutionId,
        tenant_id: &TenantId,
        prepared: Prepared,
        admitted: Admitted,
    ) -> Result<(u64, Ticket)> {
        append::enqueue(&self.shared, execution_id, tenant_id, prepared, admitted)
    }

    /// Prepares, admits (sleeping while the queue is full) and queues an append, with
    /// the sequences and timestamps `given` by an import (`import.rs`) if any.
    pub(crate) fn submit_blocking(
        &self,
        execution_id: &ExecutionId,
        tenant_id: &TenantId,
        events: Vec<ExecutionEventData>,
        given: Option<Given<'_>>,
    ) -> Result<(u64, Ticket)> {
        let prepared = self.prepare(execution_id, tenant_id, events)?;
        let admitted = self
            .shared
            .queue_bound
            .admit_blocking(prepared.queued_bytes());
        let ids = (execution_id, tenant_id);
        append::enqueue_as(&self.shared, ids, prepared, admitted, given)
    }

    /// Checks, without writing anything, that `event` passes what an append checks of
    /// the event alone: it encodes, within this store's [`Options::max_event_bytes`].
    /// Ids, the tenant and batch limits are checked by the append itself. For tools
    /// that validate all their input before the first write (`execlog append`).
    #[doc(hidden)]
    pub fn check_event(&self, event: &ExecutionEventData) -> Result<()> {
        self.shared.options.check_event(event)
    }

    /// Appends one event; returns its sequence once it is durable.
    pub fn append_blocking(
        &self,
        execution_id: &ExecutionId,
        tenant_id: &TenantId,
        event: ExecutionEventData,
    ) -> Result<u64> {
        let _appending = Appending::start(&self.shared.queue_bound);
        let (sequence, ticket) =
            self.submit_blocking(execution_id, tenant_id, vec![event], None)?;
        ticket.wait()?;
        Ok(sequence)
    }

    /// Appends events atomically with consecutive sequences; returns the first one
    /// once all are durable. An empty batch is [`Error::InvalidArgument`].
    pub fn append_batch_blocking(
        &self,
        execution_id: &ExecutionId,
        tenant_id: &TenantId,
        events: Vec<ExecutionEventData>,
    ) -> Result<u64> {
        let _appending = Appending::start(&self.shared.queue_bound);
        let (sequence, ticket) = self.submit_blocking(execution_id, tenant_id, events, None)?;
        ticket.wait()?;
        Ok(sequence)
    }

    /// All durable events of an execution, in sequence order (empty if unknown).
    pub fn load_events_blocking(&self, execution_id: &ExecutionId) -> Result<Vec<StoredEvent>> {
        self.read_range_blocking(execution_id, 0, usize::MAX)
    }

    /// Durable events with sequence greater than `after_seq`, in order.
    pub fn load_events_after_blocking(
        &self,
        execution_id: &ExecutionId,
        after_seq: u64,
    ) -> Result<Vec<StoredEvent>> {
        self.read_range_blocking(execution_id, after_seq, usize::MAX)
    }

    /// At most `limit` durable events with sequence greater than `after_seq`, in order:
    /// a page of a long execution, read without touching the rest of it.
    pub fn read_range_blocking(
        &self,
        execution_id: &ExecutionId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        self.check_open()?;
        validate_id("execution", execution_id.as_str())?;
        reader::read(&self.shared, execution_id, after_seq, limit)
    }

    /// The latest durable sequence of an execution, `None` if it has no events.
    pub fn get_latest_sequence_blocking(&self, execution_id: &ExecutionId) -> Result<Option<u64>> {
        self.check_open()?;
        validate_id("execution", execution_id.as_str())?;
        if let Some(latest) = reader::latest_before_decode(&self.shared, execution_id) {
            return Ok(Some(latest));
        }
        let state = self.shared.index()?;
        Ok(state
            .index
            .visible(execution_id)
            .map(|(_, e)| e.durable_seq)
            .filter(|&s| s > 0))
    }

    /// A tenant's executions, newest first by creation (log order), paged.
    pub fn list_executions_blocking(
        &self,
        tenant_id: &TenantId,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<ExecutionId>> {
        self.check_open()?;
        validate_id("tenant", tenant_id.as_str())?;
        Ok(self.shared.index()?.index.list(tenant_id, limit, offset))
    }
}

/// Refuses `dir` unless it holds a store: a segment file. Read-only opens and
/// [`Options::create_if_missing`]`(false)` create nothing, so a directory without one
/// is a mistake to report, not a store to start. A checkpoint alone is not a store:
/// one whose segments were lost would otherwise open as a new, empty store.
pub(crate) fn require_store(io: &dyn Io, dir: &Path) -> Result<()> {
    let names = io.list(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::InvalidArgument(format!(
            "{} does not exist: not an execlog store",
            dir.display()
        )),
        _ => Error::io("list directory", dir, e),
    })?;
    if !names
        .iter()
        .any(|n| store_dir::parse_segment_name(n).is_some())
    {
        return Err(Error::InvalidArgument(format!(
            "{} is not an execlog store (it holds no segment files)",
            dir.display()
        )));
    }
    Ok(())
}

/// Creates `dir` and its missing parents; when it did not exist, fsyncs it and the
/// parent of every directory created, so that the store's path, and with it every
/// later acknowledged append, does not depend on a directory entry a crash could lose.
/// Existence is probed with [`Io::list`]: any answer but "not found" counts as
/// existing (an unreadable ancestor is left alone). `dir` gets `mode` if it is created
/// (an existing one keeps its own); missing parents get the default mode.
fn create_dir_durably(io: &dyn Io, dir: &Path, mode: u32) -> Result<()> {
    let missing = |d: &Path| matches!(io.exists(d), Ok(false));
    // The directories to create, deepest first.
    let mut created = Vec::new();
    let mut next = Some(dir);
    while let Some(d) = next.filter(|d| !d.as_os_str().is_empty())
        && missing(d)
    {
        created.push(d);
        next = d.parent();
    }
    io.create_dir_all(dir, mode)
        .map_err(|e| Error::io("create directory", dir, e))?;
    if created.is_empty() {
        return Ok(());
    }
    io.sync_dir(dir)
        .map_err(|e| Error::io("fsync new store directory", dir, e))?;
    for d in created {
        let Some(parent) = d.parent() else { continue };
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        io.sync_dir(parent)
            .map_err(|e| Error::io("fsync parent of new directory", parent, e))?;
    }
    Ok(())
}

impl Drop for LogStore {
    fn drop(&mut self) {
        // Errors cannot be returned from drop; every acknowledged append is durable
        // already, so nothing is lost if closing fails here.
        let _ = self.close();
    }
}
