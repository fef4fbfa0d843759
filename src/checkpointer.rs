//! The background checkpoint thread (`execlog-checkpoint`) of a writable store: each
//! time [`Options::index_checkpoint_interval_bytes`] bytes have become durable since its
//! last checkpoint, it writes one (`checkpoint.rs`) describing everything durable at
//! that moment. An open after a crash then loads that checkpoint and rebuilds from
//! records only what followed it: about one interval of bytes, not everything
//! appended since the last clean close.
//!
//! Invariants:
//! - a checkpoint describes exactly one durable prefix of the log: the index is frozen
//!   and the segments' digests ([`Durable`]) are read under one lock of the state, and
//!   the commit thread publishes a group's cursors and digests under that same lock, so
//!   both end at the same group; the freeze keeps the index's view at that group;
//! - sealed segments' bytes and entry points do not change while it reads them: it
//!   holds `Shared::erasing`, so no erasure pass rewrites a segment meanwhile;
//! - a poisoned store writes none; close stops this thread before the commit thread
//!   writes the checkpoint of the close, so that one is the last written;
//! - it never holds the state lock longer than encoding one slice of executions takes:
//!   it freezes the index's durable side at one group (`frozen_index.rs`) and encodes
//!   it in slices, while appends and group commits go on between them; the digests of
//!   sealed segments it must compute are computed outside the lock, and so is the CRC.
//!
//! [`Options::index_checkpoint_interval_bytes`]: crate::Options::index_checkpoint_interval_bytes
//! [`Durable`]: crate::state::Durable

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::checkpoint::{self, SegmentDigest};
use crate::checkpoint_encode::Encoder;
use crate::error::{Error, Result};
use crate::sidecar;
use crate::state::Shared;
use crate::sync::{self, AtomicBool, AtomicU64, Condvar, JoinHandle, Mutex};

/// With the default interval, bytes made durable between two checkpoints per byte of
/// the last one: checkpoints then add at most a quarter to what is written, however
/// large the index grows (a million short executions make one of ~40 MB, more than half
/// a 64 MiB segment).
pub(crate) const DEFAULT_INTERVAL_PER_CHECKPOINT_BYTE: u64 = 4;

/// What the commit thread and close tell the checkpoint thread.
#[derive(Default)]
pub(crate) struct Requests {
    flags: Mutex<Flags>,
    cond: Condvar,
    /// Checkpoints this thread wrote since open (`Stats::index_checkpoints`).
    pub(crate) written: AtomicU64,
    /// Bytes of those checkpoints (`Stats::index_checkpoint_bytes`).
    pub(crate) written_bytes: AtomicU64,
    /// The size of the last one: the default interval is at least
    /// [`DEFAULT_INTERVAL_PER_CHECKPOINT_BYTE`] times it.
    pub(crate) last_bytes: AtomicU64,
    /// An erasure pass rewrote a segment since the last checkpoint was written: the
    /// checkpoint on disk no longer matches the segments (open would ignore it), so
    /// one is due, and close writes one even if nothing was appended.
    stale: AtomicBool,
    /// Segments with a sidecar file (`sidecar.rs`) that no checkpoint written since
    /// covers: removed once one does (close's included).
    pub(crate) sidecars: Mutex<BTreeSet<u32>>,
    /// Whether a checkpoint thread that writes sidecars runs: seals are only kept for
    /// one.
    listening: AtomicBool,
}

#[derive(Default)]
struct Flags {
    due: bool,
    stopped: bool,
    /// Segments sealed since the thread last looked, for their sidecars.
    sealed: Vec<u32>,
}

/// What woke the thread.
struct Wake {
    checkpoint: bool,
    sealed: Vec<u32>,
}

impl Requests {
    /// Requests of a store whose directory holds the sidecars of `ids`.
    pub(crate) fn with_sidecars(ids: impl IntoIterator<Item = u32>) -> Self {
        Self {
            sidecars: Mutex::new(ids.into_iter().collect()),
            ..Self::default()
        }
    }

    /// Removes the sidecars no longer needed once a checkpoint covers segments 1 to
    /// `segments` (close's: all of them).
    pub(crate) fn checkpoint_covers(
        &self,
        io: &dyn crate::io::Io,
        dir: &std::path::Path,
        segments: u32,
    ) {
        let gone: Vec<u32> = {
            let mut written = self.sidecars.lock();
            let kept = written.split_off(&segments.saturating_add(1));
            std::mem::replace(&mut *written, kept).into_iter().collect()
        };
        sidecar::remove_covered(io, dir, gone);
    }

    /// Asks for a checkpoint of what is durable now (the commit thread, after it
    /// published a group that completed an interval).
    pub(crate) fn request(&self) {
        self.flags.lock().due = true;
        self.cond.notify_all();
    }

    /// Says that segment `id` is sealed: the next segment holds a durable record (the
    /// commit thread, after publishing that record's group).
    pub(crate) fn segment_sealed(&self, id: u32) {
        if !self.listening.load(Ordering::Relaxed) {
            return;
        }
        self.flags.lock().sealed.push(id);
        self.cond.notify_all();
    }

    /// Says that an erasure pass rewrote segments: the checkpoint on disk is stale.
    pub(crate) fn segments_rewritten(&self) {
        self.stale.store(true, Ordering::SeqCst);
        self.request();
    }

    /// Whether a segment was rewritten since the last checkpoint was written.
    pub(crate) fn stale(&self) -> bool {
        self.stale.load(Ordering::SeqCst)
    }

    fn stop(&self) {
        self.flags.lock().stopped = true;
        self.cond.notify_all();
    }

    /// Waits for a request or a seal; `None` once stopped.
    fn wait(&self) -> Option<Wake> {
        let mut flags = self.flags.lock();
        while !flags.due && flags.sealed.is_empty() && !flags.stopped {
            self.cond.wait(&mut flags);
        }
        let wake = Wake {
            checkpoint: std::mem::take(&mut flags.due),
            sealed: std::mem::take(&mut flags.sealed),
        };
        (!flags.stopped).then_some(wake)
    }
}

/// The running checkpoint thread; [`Checkpointer::stop`] ends it.
pub(crate) struct Checkpointer {
    handle: JoinHandle<()>,
    shared: Arc<Shared>,
}

/// Starts the checkpoint thread of a writable store whose options ask for one.
pub(crate) fn start(shared: &Arc<Shared>) -> Result<Option<Checkpointer>> {
    if shared.options.checkpoint_interval().is_none() || shared.read_only || sync::MODEL_CHECKED {
        return Ok(None);
    }
    let thread_shared = Arc::clone(shared);
    (shared.checkpoints.listening).store(shared.options.segment_sidecars, Ordering::Relaxed);
    let handle = sync::Builder::new()
        .name("execlog-checkpoint".into())
        .spawn(move || run(&thread_shared))
        .map_err(|e| Error::io("spawn checkpoint thread", &shared.dir, e))?;
    Ok(Some(Checkpointer {
        handle,
        shared: Arc::clone(shared),
    }))
}

fn run(shared: &Shared) {
    let mut sealed = SealedDigests::default();
    let mut sidecars = Sidecars::default();
    while let Some(wake) = shared.checkpoints.wait() {
        // Nothing is saved of an index resting on a checkpoint not verified yet.
        if shared.verification.wait_verified().is_err() {
            return;
        }
        sidecars.due.extend(wake.sealed);
        if wake.checkpoint {
            match write_one(shared, &mut sealed) {
                Ok(Some((bytes, segments))) => {
                    let checkpoints = &shared.checkpoints;
                    checkpoints.last_bytes.store(bytes, Ordering::Relaxed);
                    checkpoints
                        .written_bytes
                        .fetch_add(bytes, Ordering::Relaxed);
                    checkpoints.written.fetch_add(1, Ordering::Relaxed);
                    sidecars.covered(shared, segments);
                }
                Ok(None) => return,
                // The next request tries again; open scans more meanwhile, nothing else.
                Err(e) => log::warn!("could not write a running index checkpoint: {e}"),
            }
        }
        if shared.options.segment_sidecars {
            sidecars.write_due(shared);
        }
    }
}

/// The sidecars of segments sealed while the store runs (`sidecar.rs`).
#[derive(Default)]
struct Sidecars {
    /// Segments 1 to `floor` are covered by the last checkpoint this thread wrote (the
    /// last one in part): sidecars of these would never be read.
    floor: u32,
    /// Sealed segments still without a sidecar.
    due: BTreeSet<u32>,
}

impl Sidecars {
    /// A checkpoint covering segments 1 to `segments` is written: their sidecars go.
    fn covered(&mut self, shared: &Shared, segments: u32) {
        self.floor = self.floor.max(segments);
        self.due.retain(|&id| id > segments);
        (shared.checkpoints).checkpoint_covers(shared.io.as_ref(), &shared.dir, segments);
    }

    /// Writes the sidecar of every segment due; one that fails is logged and left
    /// without (open then scans that segment).
    fn write_due(&mut self, shared: &Shared) {
        let floor = self.floor;
        self.due.retain(|&id| id > floor);
        for id in std::mem::take(&mut self.due) {
            match write_sidecar(shared, id) {
                Ok(true) => {
                    shared.checkpoints.sidecars.lock().insert(id);
                }
                Ok(false) => {}
                Err(e) => log::warn!("could not write segment {id}'s sidecar: {e}"),
            }
        }
    }
}

/// Writes sealed segment `id`'s sidecar; false if there is none to write (the store is
/// poisoned, the segment is not sealed, or an erasure pass rewrote it: a checkpoint is
/// then due, which covers it).
fn write_sidecar(shared: &Shared, id: u32) -> Result<bool> {
    let _no_erasure = shared.erasing.lock();
    if shared.state.lock().writer.poisoned.is_some() || shared.segments.rewrites(id) != 0 {
        return Ok(false);
    }
    let Some(end) = shared.segments.sealed_end(id) else {
        return Ok(false);
    };
    let view = shared.segments.view(id, end)?;
    let summary = sidecar::summarize(id, view.as_ref().as_ref(), end)?;
    sidecar::write(
        shared.io.as_ref(),
        &shared.dir,
        &summary,
        shared.options.file_mode(),
    )?;
    Ok(true)
}

/// Writes a checkpoint of what is durable now; its size and the segments it covers, or
/// `None` if the store is poisoned (no more checkpoints).
fn write_one(shared: &Shared, sealed: &mut SealedDigests) -> Result<Option<(u64, u32)>> {
    let _no_erasure = shared.erasing.lock();
    // No pass rewrites a segment until this one is written (or has failed, which
    // leaves it stale again).
    let was_stale = shared.checkpoints.stale.swap(false, Ordering::SeqCst);
    let written = write_unerased(shared, sealed);
    if !matches!(written, Ok(Some(_))) && was_stale {
        shared.checkpoints.stale.store(true, Ordering::SeqCst);
    }
    written
}

/// [`write_one`] while no erasure pass runs.
fn write_unerased(shared: &Shared, sealed: &mut SealedDigests) -> Result<Option<(u64, u32)>> {
    let known = {
        let state = shared.state.lock();
        if state.writer.poisoned.is_some() {
            return Ok(None);
        }
        state.durable.digests.clone()
    };
    // The last one is the segment being written: the commit thread always knows it.
    let last = known.len();
    for (id, digest) in (1..).zip(&known).take(last.saturating_sub(1)) {
        sealed.compute_if_missing(shared, id, *digest)?;
    }
    let Some((bytes, segments)) = encode_in_slices(shared, sealed)? else {
        return Ok(None);
    };
    checkpoint::write(
        shared.io.as_ref(),
        &shared.dir,
        &bytes,
        shared.options.file_mode(),
    )?;
    Ok(Some((bytes.len() as u64, segments)))
}

/// Encodes a checkpoint of what is durable now, one slice of executions per hold of the
/// state lock, over a freeze of the index (`checkpoint_encode.rs`), with the number of
/// segments it covers; `None` if the store is poisoned meanwhile.
fn encode_in_slices(shared: &Shared, sealed: &SealedDigests) -> Result<Option<(Vec<u8>, u32)>> {
    let encoder = {
        let mut state = shared.state.lock();
        if state.writer.poisoned.is_some() {
            return Ok(None);
        }
        let digests: Option<Vec<SegmentDigest>> = (1..)
            .zip(&state.durable.digests)
            .map(|(id, d)| sealed.get(shared, id, *d))
            .collect();
        let Some(digests) = digests else {
            // Only a segment sealed between the two looks could lack one (the commit
            // thread knows every segment it sealed): the next request covers it.
            return Err(Error::Internal(
                "a sealed segment's digest is unknown".into(),
            ));
        };
        state.index.freeze();
        let segments = u32::try_from(digests.len()).unwrap_or(u32::MAX);
        (
            Encoder::begin(&state.index, &digests, state.durable.timestamp_ns),
            segments,
        )
    };
    let (mut encoder, segments) = encoder;
    let _thaw = Thaw(shared);
    loop {
        let state = shared.state.lock();
        if state.writer.poisoned.is_some() {
            return Ok(None);
        }
        if encoder.step(&state.index, shared.options.checkpoint_slice) {
            break;
        }
    }
    encoder.finish().map(|bytes| Some((bytes, segments)))
}

/// Ends the freeze of the index however the encode ends.
struct Thaw<'a>(&'a Shared);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        self.0.state.lock().index.thaw();
    }
}

/// Digests of sealed segments that the commit thread does not know (segments an open
/// without a checkpoint found, and segments an erasure pass rewrote), computed once
/// from the mapped file and kept until the segment is rewritten again.
#[derive(Default)]
struct SealedDigests {
    computed: HashMap<u32, (u32, SegmentDigest)>,
}

impl SealedDigests {
    fn compute_if_missing(
        &mut self,
        shared: &Shared,
        id: u32,
        known: Option<SegmentDigest>,
    ) -> Result<()> {
        if self.get(shared, id, known).is_some() {
            return Ok(());
        }
        let end = shared.segments.durable_end(id);
        let view = shared.segments.view(id, end)?;
        let digest = SegmentDigest::of(view.as_ref().as_ref(), end);
        self.computed
            .insert(id, (shared.segments.rewrites(id), digest));
        Ok(())
    }

    /// Segment `id`'s digest: the commit thread's unless the segment was rewritten
    /// since open, else the one computed here for its current rewrite.
    fn get(&self, shared: &Shared, id: u32, known: Option<SegmentDigest>) -> Option<SegmentDigest> {
        let rewrites = shared.segments.rewrites(id);
        match known {
            Some(d) if rewrites == 0 => Some(d),
            _ => self
                .computed
                .get(&id)
                .filter(|(r, _)| *r == rewrites)
                .map(|(_, d)| *d),
        }
    }
}

impl Checkpointer {
    /// Ends the thread (after the checkpoint in progress, if any) and joins it.
    pub(crate) fn stop(self) {
        self.shared.checkpoints.stop();
        if self.handle.join().is_err() {
            log::error!("the checkpoint thread panicked; the store is unaffected");
        }
    }
}
