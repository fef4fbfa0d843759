//! Verifying a checkpoint after open ([`Options::verify_checkpoint_after_open`], by
//! default once a checkpoint covers `VERIFY_AFTER_OPEN_FROM_BYTES` of records): open
//! trusts `checkpoint.idx` on its own checksum, and the `execlog-verify` thread then
//! makes the checks an ordinary open makes before it (`saved_index::check`: every
//! covered segment's digest, the walk over every covered record header), while reads
//! are served.
//!
//! Invariants:
//! - Nothing that writes runs on an index not yet verified: every call that writes
//!   waits for the verdict ([`Verification::wait_verified`]), so does the checkpoint
//!   thread, and close writes no checkpoint unless the verdict is in and good (the old
//!   file stays, for the next open to verify again). Idempotency keys of the covered
//!   appends are found by the walk, so keyed appends could not be answered before
//!   anyway.
//! - A read served before the verdict never returns another execution's or tenant's
//!   events: each record's CRC, execution number and sequence are checked as always,
//!   and an execution's first read checks that its first record declares the id and
//!   tenant the index gives it (a fork's read waits for the verdict instead).
//! - A checkpoint found not to describe the records poisons the store, for reads too,
//!   and is removed (durably) so that the next open rebuilds the index from the records.
//!
//! [`Options::verify_checkpoint_after_open`]: crate::Options::verify_checkpoint_after_open

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::background::{self, Background};
use crate::checkpoint;
use crate::committer;
use crate::error::{Error, Result};
use crate::index::ExecNo;
use crate::lazy_index;
use crate::queue::Ticket;
use crate::repair;
use crate::saved_index;
use crate::state::{Poison, Shared, State};
use crate::stop::Stop;
use crate::store_dir::Listing;
use crate::sync::{self, AtomicBool, Condvar, Mutex, Receiver, Sender};

/// Where the verification of the checkpoint open trusted stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Nothing to verify (the open verified before, or used no checkpoint), or the
    /// verification found the checkpoint good.
    Verified,
    /// Open trusted a checkpoint; its verification has not ended.
    Pending,
    /// The checkpoint does not describe the records: the store is poisoned.
    Refuted(String),
    /// The store closed before the verification ran.
    Abandoned,
}

/// The verdict, with what waits for it.
pub(crate) struct Verification {
    /// Whether the verdict is `Verified`: the one load every read and write makes
    /// once it is (always, when open verified first), instead of taking the lock.
    verified: AtomicBool,
    verdict: Mutex<Verdict>,
    settled: Condvar,
    /// Completed with the verdict, for async writers to await (`Ticket::settled`).
    ticket: Ticket,
    /// The CRC of the checkpoint file open trusted: the one verified, whatever the
    /// directory holds by then.
    trusted_crc: u32,
    /// Executions whose first record was found to declare their id and tenant, while
    /// the verdict is pending.
    owners_checked: Mutex<HashSet<ExecNo>>,
}

impl Verification {
    /// Nothing left to verify.
    pub(crate) fn verified() -> Self {
        Self::with(Verdict::Verified, 0)
    }

    /// The checkpoint open trusted, whose file has CRC `trusted_crc`, to be verified.
    pub(crate) fn pending(trusted_crc: u32) -> Self {
        Self::with(Verdict::Pending, trusted_crc)
    }

    fn with(verdict: Verdict, trusted_crc: u32) -> Self {
        Verification {
            trusted_crc,
            verified: AtomicBool::new(verdict == Verdict::Verified),
            verdict: Mutex::new(verdict),
            settled: Condvar::default(),
            ticket: Ticket::default(),
            owners_checked: Mutex::new(HashSet::new()),
        }
    }

    /// Whether the verification has not ended.
    pub(crate) fn is_pending(&self) -> bool {
        !self.is_verified() && *self.verdict.lock() == Verdict::Pending
    }

    /// The CRC of the checkpoint file open trusted.
    pub(crate) fn trusted_crc(&self) -> u32 {
        self.trusted_crc
    }

    /// Whether the index may be saved: verified, or never in doubt.
    pub(crate) fn is_verified(&self) -> bool {
        self.verified.load(Ordering::Acquire)
    }

    /// Why the checkpoint was refuted, if it was.
    pub(crate) fn refuted(&self) -> Option<String> {
        match &*self.verdict.lock() {
            Verdict::Refuted(why) => Some(why.clone()),
            _ => None,
        }
    }

    /// Resolves once the verdict is in, without blocking the thread: async writers
    /// await it before they call what waits for it.
    pub(crate) async fn settled(&self) {
        if self.is_pending() {
            self.ticket.settled().await;
        }
    }

    /// `Err` if the checkpoint was refuted (reads and writes alike are refused).
    pub(crate) fn check(&self) -> Result<()> {
        if self.is_verified() {
            return Ok(());
        }
        match &*self.verdict.lock() {
            Verdict::Refuted(why) => Err(Error::poisoned(why.clone())),
            _ => Ok(()),
        }
    }

    /// Waits for the verdict; `Err` if the checkpoint was refuted or the store closed
    /// before it was verified.
    pub(crate) fn wait_verified(&self) -> Result<()> {
        if self.is_verified() {
            return Ok(());
        }
        let mut verdict = self.verdict.lock();
        while *verdict == Verdict::Pending {
            self.settled.wait(&mut verdict);
        }
        match &*verdict {
            Verdict::Verified => Ok(()),
            Verdict::Refuted(why) => Err(Error::poisoned(why.clone())),
            Verdict::Pending | Verdict::Abandoned => Err(Error::Closed),
        }
    }

    /// Whether a read of execution `no` must first check its owner: only while the
    /// verdict is pending, once per execution.
    pub(crate) fn owner_unchecked(&self, no: ExecNo) -> bool {
        self.is_pending() && !self.owners_checked.lock().contains(&no)
    }

    /// Execution `no`'s first record declares what the index says.
    pub(crate) fn owner_checked(&self, no: ExecNo) {
        if self.is_pending() {
            self.owners_checked.lock().insert(no);
        }
    }

    fn settle(&self, verdict: Verdict) {
        {
            let mut current = self.verdict.lock();
            if *current != Verdict::Pending {
                return;
            }
            self.verified
                .store(verdict == Verdict::Verified, Ordering::Release);
            *current = verdict;
        }
        self.settled.notify_all();
        self.ticket.complete(Ok(()));
        self.owners_checked.lock().clear();
    }
}

/// Starts the verification of the checkpoint open trusted, if it did; with an index
/// still to decode, returns once the thread holds the store lock for the decode, which
/// starts once `opened` disconnects (open drops its end as it returns: the decode
/// takes no core from open).
pub(crate) fn start(shared: &Arc<Shared>, opened: Receiver<()>) -> Result<Option<Background>> {
    if !shared.verification.is_pending() {
        return Ok(None);
    }
    let (ready, locked) = sync::channel();
    let background = background::spawn(shared, "execlog-verify", move |shared, stop| {
        run(&shared, &stop, ready, &opened);
    })?;
    if shared.lazy.is_some() && locked.recv().is_err() {
        background.stop();
        return Err(Error::Internal(
            "the thread that decodes the index ended before it took the lock".into(),
        ));
    }
    Ok(Some(background))
}

fn run(shared: &Shared, stop: &Stop, ready: Sender<()>, opened: &Receiver<()>) {
    let _settles = SettleOnPanic(shared);
    if let Some(lazy) = &shared.lazy {
        let locked = || {
            // Open waits on the other end; if it is gone, nobody waits.
            let _ = ready.send(());
            // Returns when open drops its end (nothing is ever sent).
            let _ = opened.recv();
        };
        lazy_index::decode(shared, (lazy, stop), locked, |state, why| {
            refute_locked(shared, state, why);
        });
        if let Some(cause) = shared.verification.refuted() {
            committer::poison(shared, Poison::new(cause));
            return;
        }
    }
    let delay = shared.options.checkpoint_verification_delay;
    if stop.sleep_until(Instant::now() + delay) {
        shared.verification.settle(Verdict::Abandoned);
        return;
    }
    let started = Instant::now();
    match verify(shared, stop) {
        Ok(()) => {
            log::info!(
                "{}: the index checkpoint describes the records (verified in {:?})",
                shared.dir.display(),
                started.elapsed()
            );
            sync_dir_before_writes(shared);
            shared.verification.settle(Verdict::Verified);
        }
        // Close asked it to stop: no verdict, the file stays for the next open.
        Err(_) if stop.is_stopped() => shared.verification.settle(Verdict::Abandoned),
        Err(why) => refute(shared, &why),
    }
}

/// A verdict the thread did not reach because it panicked (a bug), given on its way
/// out: the store is poisoned and whoever waits for the verdict (writers, the checkpoint
/// thread, close) is released, rather than waiting forever. The file stays: it is not
/// known to be wrong.
struct SettleOnPanic<'a>(&'a Shared);

impl Drop for SettleOnPanic<'_> {
    fn drop(&mut self) {
        let shared = self.0;
        if std::thread::panicking() && shared.verification.is_pending() {
            let cause = "the verification of the index checkpoint after open panicked \
                         (a bug): close and reopen the store, with \
                         `verify_checkpoint_after_open(false)` to verify it before open"
                .to_string();
            log::error!("{}: {cause}", shared.dir.display());
            committer::poison(shared, Poison::new(cause.clone()));
            shared.verification.settle(Verdict::Refuted(cause));
        }
    }
}

/// The checks an ordinary open makes, over the segments as they are now (nothing has
/// written to them since open: writes wait for this), and the covered keys filed.
fn verify(shared: &Shared, stop: &Stop) -> std::result::Result<(), String> {
    #[expect(clippy::panic, reason = "a test hook standing for a bug")]
    if shared.options.checkpoint_verification_panics {
        panic!("checkpoint_verification_panics");
    }
    check_listing(shared)?;
    let saved = checkpoint::load(shared.io.as_ref(), &shared.dir, shared.options.index_stride)?
        .ok_or("the checkpoint open used is gone")?;
    if saved.file_crc != shared.verification.trusted_crc {
        return Err("checkpoint.idx was replaced after open: the file open trusted is gone".into());
    }
    let mut maps = Vec::with_capacity(saved.segments.len());
    for id in (1..).take(saved.segments.len()) {
        let file = shared
            .segments
            .file(id)
            .map_err(|e| format!("segment {id}: {e}"))?;
        let len = file.size().map_err(|e| format!("segment {id}: {e}"))?;
        maps.push(file.map(len).map_err(|e| format!("segment {id}: {e}"))?);
    }
    let bytes: Vec<&[u8]> = maps.iter().map(|m| m.as_ref().as_ref()).collect();
    let mut keys = shared.state.lock().keys.sibling();
    let pause = shared.options.checkpoint_verification_pause;
    let stopped = || match pause.is_zero() {
        true => stop.is_stopped(),
        false => stop.sleep_until(Instant::now() + pause),
    };
    let deleted = saved_index::check(&saved, &bytes, &mut keys, &stopped)?;
    for no in deleted {
        keys.forget(no);
    }
    shared.state.lock().keys.absorb(keys);
    Ok(())
}

/// Fsyncs the store directory before the verdict lets anything write. An open that
/// left its index to decode skips that fsync (`open::recover`): what it serves, the
/// records its checkpoint covers, is durable without it, but an earlier open that
/// failed may have left directory changes in the cache only (the removal of
/// `cut.pending` after a cut), and an acknowledged append must not depend on them.
/// A failure poisons the store before the verdict is given, so that writes waiting
/// for it meet the poison.
fn sync_dir_before_writes(shared: &Shared) {
    if let Err(e) = repair::sync_dir(shared.io.as_ref(), &shared.dir) {
        let cause = format!("the store directory could not be made durable before writes: {e}");
        log::error!("{}: {cause}", shared.dir.display());
        committer::poison(shared, Poison::new(cause));
    }
}

/// Checks that the directory holds segments 1 to the number the store holds, and no
/// other: an open that left its index to decode did not list it (`open::covered_ids`).
/// No segment is created before the verdict (writes wait for it), so the two agree.
fn check_listing(shared: &Shared) -> std::result::Result<(), String> {
    let listing = Listing::read(shared.io.as_ref(), &shared.dir).map_err(|e| e.to_string())?;
    let count = shared.segments.count();
    let expected = (1..).take(count);
    if listing.segments.iter().copied().ne(expected) {
        let found = listing.segments.len();
        let first = listing.segments.first().copied().unwrap_or_default();
        let last = listing.segments.last().copied().unwrap_or_default();
        return Err(format!(
            "the directory holds {found} segment files ({first} to {last}), open found \
             segments 1 to {count}"
        ));
    }
    Ok(())
}

/// The checkpoint does not describe the records: it is removed, and the store
/// poisoned.
fn refute(shared: &Shared, why: &str) {
    let cause = remove_refuted(shared, why);
    committer::poison(shared, Poison::new(cause.clone()));
    shared.verification.settle(Verdict::Refuted(cause));
}

/// [`refute`] with the store lock held (by the index decode): the poison is set in
/// `state` directly; the caller completes it (`committer::poison`) once it let go.
fn refute_locked(shared: &Shared, state: &mut State, why: &str) {
    let cause = remove_refuted(shared, why);
    state
        .writer
        .poisoned
        .get_or_insert_with(|| Poison::new(cause.clone()));
    shared.verification.settle(Verdict::Refuted(cause));
}

/// Logs why the checkpoint is refuted and removes it (durably); returns the cause.
fn remove_refuted(shared: &Shared, why: &str) -> String {
    let cause = format!(
        "the index checkpoint this open trusted failed its verification after open ({why}): \
         the segments may be damaged or replaced, or the checkpoint is wrong; it was \
         removed, so the next open checks every record itself and reports any damage \
         with its segment and offset (`execlog verify DIR` surveys it without opening)"
    );
    log::error!("{}: {cause}", shared.dir.display());
    let path = checkpoint::path(&shared.dir);
    let removed = shared
        .io
        .remove(&path)
        .map_err(|e| Error::io("remove refuted checkpoint", &path, e))
        .map(|()| {
            let (io, mode) = (shared.io.as_ref(), shared.options.file_mode());
            crate::refuted_marker::write(io, &shared.dir, why, mode);
        })
        .and_then(|()| repair::sync_dir(shared.io.as_ref(), &shared.dir));
    if let Err(e) = removed {
        log::error!("{}: {e}", shared.dir.display());
    }
    cause
}
