//! The state shared by appenders, readers and the commit thread.
//!
//! One mutex guards [`State`]: the index and the writer's reservation cursor. Holding it
//! is what makes "reserve a sequence, reserve log space, queue the bytes" one atomic
//! step, so sequence order, log order and channel order agree. Everything slow (encoding
//! events, copying bytes, writing, fdatasync, decoding) happens outside it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::checkpoint::SegmentDigest;
use crate::checkpointer::Requests;
use crate::deferred_verification::Verification;
use crate::error::Error;
use crate::idempotency::KeyTables;
use crate::index::Index;
use crate::io::Io;
use crate::lazy_index::LazyIndex;
use crate::metrics::Metrics;
use crate::options::Options;
use crate::published_end::Publisher;
use crate::queue::{Pending, QueueBound, Ticket};
use crate::scrub::ScrubState;
use crate::segment::SEGMENT_HEADER_LEN;
use crate::segments::Segments;
use crate::sync::{AtomicBool, AtomicU64, Mutex, MutexGuard, Sender};
use crate::watch::Watch;

/// Everything the parts of one open store share.
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) io: Arc<dyn Io>,
    pub(crate) options: Options,
    pub(crate) state: Mutex<State>,
    pub(crate) segments: Segments,
    /// Admits appends while the bytes queued to the commit thread fit
    /// `Options::max_queued_bytes`.
    pub(crate) queue_bound: Arc<QueueBound>,
    pub(crate) closed: AtomicBool,
    /// Opened with [`LogStore::open_read_only`](crate::LogStore::open_read_only).
    pub(crate) read_only: bool,
    /// The write path's counters.
    pub(crate) metrics: Metrics,
    /// Wakes followers when the durable end moves.
    pub(crate) watch: Watch,
    /// Where a writer publishes its durable end for readers in other processes.
    pub(crate) publisher: Option<Publisher>,
    /// What scrubbing found: damaged ranges that reads refuse, and its counters.
    pub(crate) scrub: ScrubState,
    /// How many executions the index holds as deleted, mirrored outside the lock so
    /// that followers notice a deletion without taking it for every record.
    pub(crate) deletions: AtomicU64,
    /// Segments that may hold records of deleted executions, for erasure.
    pub(crate) erasable: Mutex<std::collections::BTreeSet<u32>>,
    /// Held by an erasure pass from start to end: passes (`compact_now` from several
    /// threads, the background thread) share `<segment>.compact` and must not
    /// interleave, and close waits for the pass in progress.
    pub(crate) erasing: Mutex<()>,
    /// Asks the checkpoint thread for a checkpoint (`checkpointer.rs`).
    pub(crate) checkpoints: Requests,
    /// The verdict on a checkpoint open trusted without reading the segments
    /// (`deferred_verification.rs`).
    pub(crate) verification: Verification,
    /// The checkpoint whose index is decoded after open, if open left it to decode
    /// (`lazy_index.rs`).
    pub(crate) lazy: Option<LazyIndex>,
}

impl Shared {
    /// The store lock, for an answer drawn from the index: `Err` if the checkpoint open
    /// trusted was refuted, which an index decoded after open may have been while the
    /// caller waited for the lock.
    pub(crate) fn index(&self) -> Result<MutexGuard<'_, State>, Error> {
        let state = self.state.lock();
        self.verification.check()?;
        Ok(state)
    }

    /// Mirrors `index`'s count of deleted executions (called with the lock held, after
    /// the index changed).
    pub(crate) fn note_deletions(&self, index: &Index) {
        self.deletions
            .store(index.deleted() as u64, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The mutable core behind the store mutex.
pub(crate) struct State {
    pub(crate) index: Index,
    /// The idempotency keys of the index's executions.
    pub(crate) keys: KeyTables,
    pub(crate) writer: Writer,
    /// The durable end of the log as the commit thread last published it.
    pub(crate) durable: Durable,
}

/// What is durable, described for a checkpoint: every segment's digest up to the
/// durable end, and the newest timestamp of a durable record. The commit thread sets
/// it in the same critical section as the index's durable cursors
/// (`Committer::publish`), so the two always describe the same prefix of the log
/// (`checkpointer.rs`).
#[derive(Debug, Default)]
pub(crate) struct Durable {
    /// Per segment from the first: its records' end and checksum; `None` for a sealed
    /// segment an open without a checkpoint found (not computed yet).
    pub(crate) digests: Vec<Option<SegmentDigest>>,
    pub(crate) timestamp_ns: i64,
}

/// Where the next append goes, and whether appends are still allowed.
pub(crate) struct Writer {
    /// Segment receiving appends.
    pub(crate) segment: u32,
    /// Offset in it where the next record goes (reserved, not necessarily durable).
    pub(crate) tail: u64,
    /// The segment's preallocated length.
    pub(crate) capacity: u64,
    /// Channel to the commit thread; `None` once the store is closing.
    pub(crate) tx: Option<Sender<Pending>>,
    /// Why the store was poisoned, if it was: the error every later append gets.
    pub(crate) poisoned: Option<Poison>,
    /// Timestamp of the latest append, to keep timestamps non-decreasing.
    pub(crate) last_timestamp_ns: i64,
    /// The ticket of the last record queued: once it completes, everything queued
    /// before it is durable and published (the commit thread works in queue order),
    /// so every segment before `segment` holds its final records (`erasure.rs`).
    pub(crate) last_ticket: Option<Ticket>,
}

/// Space reserved in the log for one append.
pub(crate) struct Reservation {
    pub(crate) segment: u32,
    pub(crate) offset: u32,
    pub(crate) new_segment_capacity: Option<u64>,
}

impl Writer {
    /// Whether appends may be queued: the error they get if not (the poison, or
    /// [`Error::Closed`] once close took the channel).
    pub(crate) fn check_open(&self) -> Result<(), Error> {
        if let Some(poison) = &self.poisoned {
            return Err(poison.error());
        }
        if self.tx.is_none() {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Hands `pending` to the commit thread. On failure (the commit thread is gone,
    /// which happens only after a panic that poisoned the store, or the store is
    /// closing) it poisons the store if it was not, stops the queue bound, and returns
    /// the error; the `Pending`, with its admission, is dropped.
    pub(crate) fn send(&mut self, pending: Pending, bound: &QueueBound) -> Result<(), Error> {
        let ticket = pending.ticket.clone();
        // A failed send hands the `Pending` back; it is dropped here, with its admission.
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(pending).is_ok());
        if sent {
            self.last_ticket = Some(ticket);
            return Ok(());
        }
        let error = self
            .poisoned
            .get_or_insert(Poison::new("commit thread stopped"))
            .error();
        bound.stop();
        Err(error)
    }

    /// Reserves `len` contiguous bytes, rolling to a new segment when the current one
    /// cannot hold them. A new segment gets `segment_size` bytes, or more if `len`
    /// needs it, so that an append never spans two segments.
    pub(crate) fn reserve(&mut self, len: u64, segment_size: u64) -> Reservation {
        let header = SEGMENT_HEADER_LEN as u64;
        let mut new_segment_capacity = None;
        if self.tail + len > self.capacity {
            self.segment += 1;
            self.capacity = segment_size.max(header + len);
            self.tail = header;
            new_segment_capacity = Some(self.capacity);
        }
        let offset = self.tail;
        self.tail += len;
        debug_assert!(self.tail <= self.capacity && self.capacity <= u64::from(u32::MAX));
        Reservation {
            segment: self.segment,
            offset: offset as u32,
            new_segment_capacity,
        }
    }

    /// The timestamp for the next append: now, but never before the previous one.
    pub(crate) fn next_timestamp_ns(&mut self) -> i64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        self.last_timestamp_ns = self.last_timestamp_ns.max(now);
        self.last_timestamp_ns
    }
}

/// Why a store was poisoned: a description, and the I/O error behind it if any.
#[derive(Clone, Debug)]
pub(crate) struct Poison {
    pub(crate) cause: String,
    pub(crate) source: Option<Arc<std::io::Error>>,
}

impl Poison {
    /// A poison without an I/O error behind it.
    pub(crate) fn new(cause: impl Into<String>) -> Self {
        Poison {
            cause: cause.into(),
            source: None,
        }
    }

    /// The poison a failed commit leaves: its description, and its I/O error.
    pub(crate) fn of(error: Error) -> Self {
        let cause = error.to_string();
        let source = match error {
            Error::Io { source, .. } => Some(Arc::new(source)),
            Error::Poisoned { source, .. } => source,
            _ => None,
        };
        Poison { cause, source }
    }

    /// The error appends get from the poisoned store.
    pub(crate) fn error(&self) -> Error {
        Error::Poisoned {
            cause: self.cause.clone(),
            source: self.source.clone(),
        }
    }
}
