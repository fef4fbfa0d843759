//! The group-commit thread: the only writer of segment files while a store is open.
//!
//! Loop: take the first queued append (blocking), gather whatever else is queued up to
//! `group_commit_max_bytes`, write the group's bytes with one positioned write per
//! segment, fdatasync once, then publish the new durable ends (segments first, then the
//! index) and complete every ticket of the group. While one fdatasync runs, new appends
//! queue up and form the next group, so the number of syncs per second stays bounded
//! by the disk while the number of appends per sync grows with load.
//!
//! Rolling: when a group reaches an append addressed to the next segment, the current
//! segment is fdatasynced first, then the new one is created with its header and its
//! directory entry durable (`segment::create`), so no acknowledged record ever depends
//! on a file that a crash could lose.
//!
//! Failure: the first failed write, sync or file creation poisons the store. Every
//! append of that group and every later one fails with `Error::Poisoned`; none is
//! acknowledged, and the durable ends do not move, so readers keep seeing exactly the
//! acknowledged data. A panic in this thread poisons the store the same way.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::checkpoint::{self, SegmentDigest};
use crate::error::{Error, Result};
use crate::io::IoFile;
use crate::open::CommitStart;
use crate::options::WritePath;
use crate::queue::{Pending, fail_all};
use crate::record;
use crate::segment;
use crate::state::{Durable, Poison, Shared};
use crate::store_dir;
use crate::sync::{MODEL_CHECKED, Receiver, TryRecvError, yield_now};

/// How long an idle commit thread polls the queue before it sleeps.
const IDLE_SPIN: Duration = Duration::from_micros(60);
/// How long a group waits at most for appends in progress to join it.
const STRAGGLER_WAIT: Duration = Duration::from_micros(100);
/// Most groups that skip the wait after fruitless waits.
const MAX_SKIPPED_WAITS: u32 = 64;
/// The same bound under the model checker, in looks at the queue.
const MODEL_STRAGGLER_LOOKS: usize = 4;

/// The commit thread's own state.
pub(crate) struct Committer {
    shared: Arc<Shared>,
    rx: Receiver<Pending>,
    segment: u32,
    file: Arc<dyn IoFile>,
    buf: Vec<u8>,
    /// Whether a group was committed since open (a seal is then due at close).
    wrote: bool,
    /// How far the current segment is zeroed (durably), and where it ends.
    zeroed_end: u64,
    capacity: u64,
    /// Every segment's records end and checksum, the current one's last (always
    /// known), kept as groups are written, for the checkpoint at close. A sealed
    /// segment's is unknown after an open without a checkpoint; close computes it.
    digests: Vec<Option<SegmentDigest>>,
    /// Whether close must write a checkpoint even if nothing was appended (open
    /// found none, or one that does not cover the whole log).
    checkpoint_due: bool,
    /// Whether the last group's acknowledgements went only to threads, so that
    /// waiting for the next append spins first (see [`Committer::next_first`]).
    spin_for_next: bool,
    /// How long the last group's fdatasync took.
    last_sync: Duration,
    /// Groups that will not wait for stragglers, and how many the last fruitless wait
    /// set (see [`Committer::wait_for_stragglers`]).
    skip_waits: u32,
    backoff: u32,
    /// Bytes made durable since the checkpoint thread was last asked for one.
    since_checkpoint: u64,
    /// The segment the checkpoint thread last heard of as being written: every one
    /// before it has been announced sealed (for its sidecar, `sidecar.rs`).
    announced: u32,
}

impl Committer {
    pub(crate) fn new(shared: Arc<Shared>, rx: Receiver<Pending>, start: CommitStart) -> Self {
        let CommitStart {
            segment,
            file,
            zeroed_end,
            capacity,
            digests,
            checkpoint_due,
            rebuilt_bytes,
        } = start;
        debug_assert_eq!(digests.len(), segment as usize);
        debug_assert!(digests.last().is_some_and(Option::is_some));
        Self {
            shared,
            rx,
            segment,
            file,
            buf: Vec::new(),
            wrote: false,
            zeroed_end,
            capacity,
            digests,
            checkpoint_due,
            spin_for_next: true,
            last_sync: Duration::ZERO,
            skip_waits: 0,
            backoff: 0,
            // What open rebuilt from records counts: crash loops of sessions shorter
            // than an interval would otherwise never be checkpointed.
            since_checkpoint: rebuilt_bytes,
            announced: segment,
        }
    }

    /// Runs until the store closes (the sender is dropped and the queue is empty).
    /// Returns what failed at close (the seal, the checkpoint), for `close()` to report:
    /// every acknowledged append is durable regardless, but the next open will have to
    /// scan more than it would have.
    pub(crate) fn run(mut self) -> Result<()> {
        self.ask_for_checkpoint(0);
        let mut group = Vec::new();
        let outcome = catch_unwind(AssertUnwindSafe(|| self.run_groups(&mut group)));
        match outcome {
            Ok(at_close) => at_close,
            Err(_) => {
                let error = poison(&self.shared, Poison::new("the commit thread panicked"));
                fail_all(group.drain(..), &error);
                // Appends queued before the poison was visible still wait: fail them.
                fail_all(self.rx.iter(), &error);
                Err(error)
            }
        }
    }

    fn run_groups(&mut self, group: &mut Vec<Pending>) -> Result<()> {
        while let Some(first) = self.next_first() {
            group.push(first);
            self.gather(group);
            let poisoned = self.shared.state.lock().writer.poisoned.clone();
            let result = match poisoned {
                Some(poison) => Err(poison.error()),
                None => self.commit(group),
            };
            match result {
                Ok(()) => {
                    self.wrote = true;
                    self.publish(group);
                    let bytes = group.iter().map(|p| p.bytes.len() as u64).sum();
                    let mut woke_task = false;
                    for p in group.drain(..) {
                        woke_task |= p.complete(Ok(()));
                    }
                    self.spin_for_next = !woke_task;
                    // After the acknowledgements: waking followers (a futex call when
                    // one sleeps) is not on the appenders' path.
                    self.shared.watch.advance();
                    self.announce_sealed();
                    self.ask_for_checkpoint(bytes);
                }
                Err(e @ Error::Poisoned { .. }) => {
                    fail_all(group.drain(..), &e);
                }
                Err(e) => {
                    let error = poison(&self.shared, Poison::of(e));
                    fail_all(group.drain(..), &error);
                }
            }
            if self.buf.capacity() > 2 * self.shared.options.group_commit_max_bytes {
                self.buf = Vec::new();
            }
        }
        let mut at_close = Ok(());
        if self.wrote
            && let Err(e) = self.seal()
        {
            // Not fatal to the data: an unsealed tail only means the next open cannot
            // prove the last group was synced, and treats damage in it as a torn tail.
            log::warn!("could not seal the log at close: {e}");
            at_close = Err(e);
        }
        if (self.wrote || self.checkpoint_due || self.shared.checkpoints.stale())
            && let Err(e) = self.checkpoint()
        {
            // Not fatal either: the next open rebuilds the index from the records.
            log::warn!("could not write the index checkpoint at close: {e}");
            at_close = at_close.and(Err(e));
        }
        at_close
    }

    /// Saves the index for the next open (see `checkpoint.rs`). Only for a store whose
    /// every reserved append is durable: a poisoned one gets none.
    fn checkpoint(&self) -> Result<()> {
        // An index resting on a checkpoint not verified yet is not saved: the file
        // open trusted stays, for the next open to verify.
        if !self.shared.options.index_checkpoint
            || !self.shared.verification.is_verified()
            || self.shared.state.lock().writer.poisoned.is_some()
        {
            return Ok(());
        }
        let mut digests = Vec::with_capacity(self.digests.len());
        for (id, digest) in (1..).zip(&self.digests) {
            digests.push(match *digest {
                Some(d) if !self.shared.segments.rewritten(id) => d,
                _ => {
                    let end = self.shared.segments.durable_end(id);
                    let view = self.shared.segments.view(id, end)?;
                    SegmentDigest::of(view.as_ref().as_ref(), end)
                }
            });
        }
        let bytes = {
            let state = self.shared.state.lock();
            debug_assert_eq!(
                digests.last().map(|d| d.end),
                Some(state.writer.tail),
                "the digests cover every record"
            );
            // The newest durable record's time (the seal's, if one was written), not the
            // clock's: a seal whose fdatasync failed moved the clock, and open refuses a
            // saved time newer than every covered record.
            checkpoint::encode(&state.index, &digests, state.durable.timestamp_ns)?
        };
        checkpoint::write(
            self.shared.io.as_ref(),
            &self.shared.dir,
            &bytes,
            self.shared.options.file_mode(),
        )?;
        let segments = u32::try_from(digests.len()).unwrap_or(u32::MAX);
        (self.shared.checkpoints).checkpoint_covers(
            self.shared.io.as_ref(),
            &self.shared.dir,
            segments,
        );
        Ok(())
    }

    /// Tells the checkpoint thread of the segments sealed by the group just published:
    /// those before the one it wrote into last, whose ends no longer move.
    fn announce_sealed(&mut self) {
        while self.announced < self.segment {
            self.shared.checkpoints.segment_sealed(self.announced);
            self.announced += 1;
        }
    }

    /// Counts `bytes` made durable and, once they complete an interval, asks the
    /// checkpoint thread for a checkpoint (`checkpointer.rs`).
    fn ask_for_checkpoint(&mut self, bytes: u64) {
        let last = self
            .shared
            .checkpoints
            .last_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        let Some(interval) = self.shared.options.checkpoint_interval_after(last) else {
            return;
        };
        self.since_checkpoint += bytes;
        if self.since_checkpoint >= interval {
            self.since_checkpoint = 0;
            self.shared.checkpoints.request();
        }
    }

    /// Writes a seal record after the last group at clean close (see `record.rs`).
    fn seal(&mut self) -> Result<()> {
        let len = record::framed_len(8) as u64;
        let (tail, timestamp_ns) = {
            let mut state = self.shared.state.lock();
            let w = &mut state.writer;
            // The clock moves only for a seal that is written: the checkpoint saves
            // it, and open refuses a saved time newer than every record.
            if w.poisoned.is_some() || w.tail + len > w.capacity {
                return Ok(());
            }
            (w.tail, w.next_timestamp_ns())
        };
        debug_assert_eq!(
            self.shared.state.lock().writer.segment,
            self.segment,
            "an unpoisoned store has committed every reserved segment"
        );
        self.buf.clear();
        record::encode_seal(tail as u32, timestamp_ns, &mut self.buf);
        let path = store_dir::segment_path(&self.shared.dir, self.segment);
        self.ensure_zeroed(tail + len, &path)?;
        self.file
            .write_at(&self.buf, tail)
            .map_err(|e| Error::io("write seal", &path, e))?;
        self.file
            .sync_data()
            .map_err(|e| Error::io("fdatasync seal", &path, e))?;
        note_written(&mut self.digests, tail, &self.buf);
        if let Some(publisher) = &self.shared.publisher {
            // Readers in other processes then see the log as the checkpoint does.
            publisher.publish(self.segment, tail + len);
        }
        let mut state = self.shared.state.lock();
        state.writer.tail = tail + len;
        state.durable.timestamp_ns = state.durable.timestamp_ns.max(timestamp_ns);
        Ok(())
    }

    /// Waits for the first append of the next group. Spins for up to [`IDLE_SPIN`]
    /// before sleeping: a writer that appends again right after its acknowledgement
    /// is then picked up at once instead of paying a thread wake-up (tens of
    /// microseconds on a virtual machine) on every append. Under load the queue is never
    /// empty here and nothing spins.
    ///
    /// It does not spin after a group that woke tasks: an executor woken from outside
    /// takes tens of microseconds to run the task (tokio's multi-thread runtime wakes
    /// a second worker as well), and a spinning commit thread then holds a core that
    /// the executor's threads need (measured in benches/compare/NOTES.md).
    fn next_first(&self) -> Option<Pending> {
        if MODEL_CHECKED || !self.spin_for_next {
            return self.rx.recv().ok();
        }
        let spin_until = Instant::now() + IDLE_SPIN;
        loop {
            match self.rx.try_recv() {
                Ok(p) => return Some(p),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) if Instant::now() >= spin_until => {
                    return self.rx.recv().ok();
                }
                Err(TryRecvError::Empty) => std::hint::spin_loop(),
            }
        }
    }

    /// Adds queued appends to `group` until it holds `group_commit_max_bytes` or the
    /// queue is empty (after waiting up to `commit_delay_us` for more).
    fn gather(&mut self, group: &mut Vec<Pending>) {
        let options = &self.shared.options;
        let mut bytes: usize = group.iter().map(|p| p.bytes.len()).sum();
        let deadline = Instant::now() + Duration::from_micros(options.commit_delay_us);
        while bytes < options.group_commit_max_bytes {
            let next = if options.commit_delay_us == 0 {
                self.rx.try_recv().ok()
            } else {
                self.rx.recv_deadline(deadline).ok()
            };
            let Some(p) = next else { break };
            bytes += p.bytes.len();
            group.push(p);
        }
        self.wait_for_stragglers(group, bytes);
    }

    /// After a group was acknowledged, its writers come back with their next appends
    /// one by one, as the two cores get to them; a group taken at the first arrival
    /// holds about half of them, and the rest wait a whole fdatasync more. So, while
    /// appends in progress on this store are missing from the group, wait for them for
    /// up to [`STRAGGLER_WAIT`] (at most the last fdatasync's duration), yielding the
    /// core to them: at 16 and 64 writers, groups hold nearly all of them and events/s
    /// rise (benches/compare/NOTES.md). A lone writer does not wait: it is the whole
    /// group.
    ///
    /// Not every append in progress is coming. Those waiting for room in the queue
    /// cannot come before this group completes, so they are not counted. Others cannot
    /// be told apart (a retry waiting for the keyed append it repeats, a future polled
    /// once and then held or forgotten by its task): when a wait gains nothing, the
    /// next groups do not wait, 8 of them, then twice as many after each fruitless
    /// wait in a row, up to [`MAX_SKIPPED_WAITS`]; a wait that gains something ends
    /// the backoff. A stalled absentee thus costs about one bound per 64 groups.
    ///
    /// Under the model checker, which has no clock, the bound is a few looks instead,
    /// so that `tests/handoff.rs` explores groups joined by stragglers too.
    fn wait_for_stragglers(&mut self, group: &mut Vec<Pending>, mut bytes: usize) {
        let bound = &self.shared.queue_bound;
        let absent = |group: &Vec<Pending>| {
            let coming = bound.appending().saturating_sub(bound.waiting());
            coming.saturating_sub(group.len())
        };
        if absent(group) == 0 {
            return;
        }
        if self.skip_waits > 0 {
            self.skip_waits -= 1;
            return;
        }
        let until = Instant::now() + STRAGGLER_WAIT.min(self.last_sync);
        let in_time = |looks: usize| match MODEL_CHECKED {
            true => looks < MODEL_STRAGGLER_LOOKS,
            false => Instant::now() < until,
        };
        let (before, mut looks) = (group.len(), 0);
        while bytes < self.shared.options.group_commit_max_bytes
            && absent(group) > 0
            && in_time(looks)
        {
            looks += 1;
            match self.rx.try_recv() {
                Ok(p) => {
                    bytes += p.bytes.len();
                    group.push(p);
                }
                Err(TryRecvError::Empty) => yield_now(),
                Err(TryRecvError::Disconnected) => break,
            }
        }
        self.backoff = match group.len() > before {
            true => 0,
            false => (self.backoff * 2).clamp(8, MAX_SKIPPED_WAITS),
        };
        self.skip_waits = self.backoff;
    }

    /// Writes and syncs the group. Nothing is published here.
    fn commit(&mut self, group: &[Pending]) -> Result<()> {
        let mut rest = group;
        while let Some(first) = rest.first() {
            if first.segment != self.segment {
                self.roll(first)?;
            }
            let run = rest
                .iter()
                .take_while(|p| p.segment == self.segment)
                .count();
            let (this, next) = rest.split_at(run);
            self.buf.clear();
            for p in this {
                debug_assert_eq!(
                    u64::from(first.offset) + self.buf.len() as u64,
                    u64::from(p.offset),
                    "queued appends must be contiguous"
                );
                self.buf.extend_from_slice(&p.bytes);
            }
            record::stamp_group(&mut self.buf, first.offset);
            let path = store_dir::segment_path(&self.shared.dir, self.segment);
            let end = u64::from(first.offset) + self.buf.len() as u64;
            if self.buf.len() as u64 >= self.shared.options.grow_group_min_bytes {
                // A large group writes its own bytes past the zeroed end (once).
                self.zeroed_end = self.zeroed_end.max(end);
            }
            self.ensure_zeroed(end, &path)?;
            self.file
                .write_at(&self.buf, u64::from(first.offset))
                .map_err(|e| Error::io("write", &path, e))?;
            note_written(&mut self.digests, u64::from(first.offset), &self.buf);
            rest = next;
            if !rest.is_empty() {
                // The next append is in another segment: make this one durable first.
                self.file
                    .sync_data()
                    .map_err(|e| Error::io("fdatasync", &path, e))?;
            }
        }
        let path = store_dir::segment_path(&self.shared.dir, self.segment);
        let started = Instant::now();
        self.file
            .sync_data()
            .map_err(|e| Error::io("fdatasync", &path, e))?;
        let events: u64 = group.iter().map(Pending::events).sum();
        let bytes: u64 = group.iter().map(|p| p.bytes.len() as u64).sum();
        let appends = group.len() as u64;
        self.last_sync = started.elapsed();
        self.shared
            .metrics
            .group(appends, events, bytes, self.last_sync);
        Ok(())
    }

    /// Makes sure `[.., end)` of the current segment was zeroed durably before records
    /// are written there, zeroing up to [`segment::ZERO_AHEAD`] further (see
    /// `segment.rs` for why records never go into a hole).
    fn ensure_zeroed(&mut self, end: u64, path: &std::path::Path) -> Result<()> {
        if end <= self.zeroed_end {
            return Ok(());
        }
        let write_path = self.shared.options.write_path;
        let target = match write_path {
            WritePath::ZerosAhead => (self.zeroed_end + segment::ZERO_AHEAD).min(self.capacity),
            WritePath::Fallocate => self.capacity,
            WritePath::Grow => {
                // The records themselves extend the file; their fdatasync covers it.
                self.zeroed_end = end;
                return Ok(());
            }
        }
        .max(end);
        segment::prepare(self.file.as_ref(), self.zeroed_end, target, write_path)
            .map_err(|e| Error::io("zero segment ahead", path, e))?;
        self.file
            .sync_data()
            .map_err(|e| Error::io("fdatasync zeroed segment", path, e))?;
        self.zeroed_end = target;
        Ok(())
    }

    /// Creates the segment `first` is addressed to and makes it current.
    fn roll(&mut self, first: &Pending) -> Result<()> {
        debug_assert_eq!(first.segment, self.segment + 1);
        debug_assert!(first.new_segment_capacity.is_some());
        let capacity = first
            .new_segment_capacity
            .unwrap_or(self.shared.options.segment_size_bytes);
        let write_path = self.shared.options.write_path;
        let zeroed = segment::initial_len(capacity, write_path);
        let file = segment::create(
            self.shared.io.as_ref(),
            &self.shared.dir,
            first.segment,
            (zeroed, write_path),
            self.shared.options.file_mode(),
        )?;
        self.shared.segments.push(
            first.segment,
            Arc::clone(&file),
            (segment::SEGMENT_HEADER_LEN as u64, None),
        );
        self.segment = first.segment;
        self.file = file;
        self.digests.push(Some(SegmentDigest::EMPTY));
        self.zeroed_end = zeroed;
        self.capacity = capacity;
        Ok(())
    }

    /// Makes the group visible to readers: segment ends first, then the index.
    fn publish(&self, group: &[Pending]) {
        // Pendings are in log order: the last one of each segment holds its end.
        for (i, p) in group.iter().enumerate() {
            if group
                .get(i + 1)
                .is_none_or(|next| next.segment != p.segment)
            {
                self.shared.segments.set_durable_end(p.segment, p.end());
            }
        }
        // Before the acknowledgements, so that a reader opened in another process after
        // an append returned sees that append.
        if let (Some(publisher), Some(last)) = (&self.shared.publisher, group.last()) {
            publisher.publish(last.segment, last.end());
        }
        {
            let mut state = self.shared.state.lock();
            let state = &mut *state;
            for p in group {
                if p.deletes.is_empty() {
                    state
                        .index
                        .make_durable(p.execution, p.last_sequence, p.last_pos);
                }
                for &no in &p.deletes {
                    state.index.delete(no);
                    state.keys.forget(no);
                    let mut erasable = self.shared.erasable.lock();
                    for (_, owner) in state.index.owners(no) {
                        erasable.extend(crate::erasure::segments_of(&state.index, owner));
                    }
                }
            }
            self.shared.note_deletions(&state.index);
            if let Some(last) = group.last() {
                state.keys.settle(last.last_pos);
            }
            self.publish_digests(group, &mut state.durable);
        }
    }
}

impl Committer {
    /// Copies the digests of the segments `group` wrote, and its newest timestamp,
    /// to what a running checkpoint reads (`state::Durable`).
    fn publish_digests(&self, group: &[Pending], durable: &mut Durable) {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            return;
        };
        durable.digests.resize(self.digests.len(), None);
        for id in first.segment..=last.segment {
            let i = (id as usize).saturating_sub(1);
            if let (Some(to), Some(from)) = (durable.digests.get_mut(i), self.digests.get(i)) {
                *to = *from;
            }
        }
        let newest = group.iter().map(|p| p.timestamp_ns).max();
        durable.timestamp_ns = durable.timestamp_ns.max(newest.unwrap_or(i64::MIN));
    }
}

/// Records in the current segment's digest (the last) that `bytes` were written at
/// `at`, its end.
fn note_written(digests: &mut [Option<SegmentDigest>], at: u64, bytes: &[u8]) {
    debug_assert!(digests.last().is_some_and(Option::is_some));
    if let Some(Some(d)) = digests.last_mut() {
        debug_assert_eq!(d.end, at, "records are written contiguously");
        *d = d.extend(bytes);
    }
}

/// Marks the store poisoned (first cause wins), wakes appenders waiting for queue
/// space (they are then refused), and returns the error waiters get.
pub(crate) fn poison(shared: &Shared, poison: Poison) -> Error {
    let poison = {
        let mut state = shared.state.lock();
        state.writer.poisoned.get_or_insert(poison).clone()
    };
    shared.queue_bound.stop();
    // Followers that caught up learn that nothing more will come.
    shared.watch.advance();
    poison.error()
}
