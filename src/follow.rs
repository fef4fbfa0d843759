//! The follow path of the embedded store: a cursor that reads the log in order, up to
//! the durable end, and waits on the store's [`Watch`] when it gets there.
//!
//! An event's position is where its record starts: `segment_id << 32 | offset`, the
//! encoding `prev` already uses. Log order is commit order (appends are queued to the
//! commit thread in the order they reserve log space), so positions grow with commit
//! order; a seal leaves a gap. Recovery never moves a durable record, so positions are
//! stable across reopen, crash and checkpoints.
//!
//! Invariants:
//! - only bytes below a segment's durable end are read: they were fdatasynced before
//!   the commit thread raised the end, so nothing delivered can be taken back;
//! - the cursor moves to segment `n + 1` only once that segment holds durable records,
//!   and re-reads segment `n`'s end first: the commit thread raises `n`'s final end
//!   before `n + 1`'s, so nothing at the end of `n` is skipped;
//! - every record delivered is CRC-checked and decoded; a bad one is `Error::Corrupt`
//!   and the cursor does not move past it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Waker;
use std::time::Instant;

use crate::codec;
use crate::error::{Error, Result};
use crate::event::StoredEvent;
use crate::ids::{ExecutionId, TenantId};
use crate::io::Mapped;
use crate::log_store::LogStore;
use crate::reader::timestamp;
use crate::record::{self, BODY_LEN_OFFSET, Decoded, HEADER_LEN, Kind, Pos};
use crate::segment::SEGMENT_HEADER_LEN;
use crate::state::Shared;
use crate::subscription::{
    Delivered, Follow, Next, Source, StartFrom, Subscription, SubscriptionFilter,
};

/// Executions whose ids a follower remembers before it forgets them all (and looks
/// them up again as they come): bounds its memory on stores with many executions.
const NAME_CACHE_LIMIT: usize = 65_536;

const HEADER: u64 = SEGMENT_HEADER_LEN as u64;

impl Follow for LogStore {
    fn subscribe(&self, filter: SubscriptionFilter, start: StartFrom) -> Result<Subscription> {
        self.check_writable_index()?;
        let follower = LogFollower::new(self.shared_arc(), filter, start);
        Ok(Subscription::new(Box::new(follower)))
    }

    fn end_position(&self) -> Result<u64> {
        Ok(end_position(self.shared()))
    }
}

/// The largest position a record durable now can have (see
/// [`Follow::end_position`](crate::Follow::end_position)).
pub(crate) fn end_position(shared: &Shared) -> u64 {
    let (segment, end) = log_end(shared);
    (u64::from(segment) << 32 | end).saturating_sub(1)
}

/// The newest segment with durable records (or the only one) and its durable end.
///
/// A segment the commit thread has just created holds only its header until the
/// group writing into it is published, and that group may still end the previous
/// segment: until then the previous segment's end is the log's end.
pub(crate) fn log_end(shared: &Shared) -> (u32, u64) {
    let segments = &shared.segments;
    let mut last = segments.count().max(1) as u32;
    if last > 1 && segments.durable_end(last) <= HEADER {
        last -= 1;
    }
    (last, segments.durable_end(last))
}

/// A subscription's cursor on a [`LogStore`](crate::LogStore).
pub(crate) struct LogFollower {
    shared: Arc<Shared>,
    filter: SubscriptionFilter,
    segment: u32,
    offset: u64,
    /// The current segment's durable end as last read (it only grows).
    known_end: u64,
    /// Records at or below this position are skipped (a resume).
    skip_through: Option<u64>,
    /// Execution number -> its ids, or `None` once deleted.
    names: HashMap<u64, Option<(ExecutionId, TenantId)>>,
    /// `Shared::deletions` when `names` was last cleared: a deletion since clears it.
    deletions: u64,
    view: Option<Mapped>,
    /// The watch generation seen before the last look that found nothing.
    seen: u64,
    id: u64,
}

impl LogFollower {
    pub(crate) fn new(shared: Arc<Shared>, filter: SubscriptionFilter, start: StartFrom) -> Self {
        let (segment, offset, skip_through) = match start {
            StartFrom::Beginning => (1, HEADER, None),
            StartFrom::End => {
                let (segment, end) = log_end(&shared);
                (segment, end.max(HEADER), None)
            }
            StartFrom::After(p) => match (p >> 32) as u32 {
                0 => (1, HEADER, Some(p)),
                segment => (segment, HEADER, Some(p)),
            },
        };
        let id = shared.watch.follower_id();
        let seen = shared.watch.generation();
        Self {
            shared,
            filter,
            segment,
            offset,
            known_end: 0,
            skip_through,
            names: HashMap::new(),
            deletions: 0,
            view: None,
            seen,
            id,
        }
    }

    /// The mapped bytes of the current segment, covering at least `[0, end)`.
    fn bytes(&mut self, end: u64) -> Result<Mapped> {
        if let Some(v) = &self.view
            && v.as_ref().as_ref().len() as u64 >= end
        {
            return Ok(Arc::clone(v));
        }
        let view = self.shared.segments.view(self.segment, end)?;
        self.view = Some(Arc::clone(&view));
        Ok(view)
    }

    /// Moves to the next segment if it holds durable records and nothing of the
    /// current one is left. Returns whether it moved.
    fn next_segment(&mut self) -> bool {
        let segments = &self.shared.segments;
        let Some(next) = self.segment.checked_add(1) else {
            return false;
        };
        if segments.durable_end(next) <= HEADER {
            return false;
        }
        // Raised before the next segment's: read again, it may have grown meanwhile.
        if self.offset < segments.durable_end(self.segment) {
            return true;
        }
        self.segment = next;
        self.offset = HEADER;
        self.known_end = 0;
        self.view = None;
        true
    }

    /// The ids of execution number `no`, from the cache or the index; `None` if it
    /// was deleted (its events are no longer delivered, live subscriptions included).
    fn names(&mut self, no: u64, at: Pos) -> Result<Option<(ExecutionId, TenantId)>> {
        let deletions = self.shared.deletions.load(Ordering::SeqCst);
        if deletions != self.deletions {
            self.names.clear();
            self.deletions = deletions;
        }
        if let Some(n) = self.names.get(&no) {
            return Ok(n.clone());
        }
        let found = {
            let state = self.shared.state.lock();
            u32::try_from(no)
                .ok()
                .and_then(|no| state.index.get(no))
                .map(|e| {
                    e.visible()
                        .then(|| (e.id.clone(), state.index.tenant_of(e).clone()))
                })
        };
        let Some(names) = found else {
            return Err(Error::corrupt(
                at.segment,
                u64::from(at.offset),
                "durable record of an execution the index does not know",
            ));
        };
        if self.names.len() >= NAME_CACHE_LIMIT {
            self.names.clear();
        }
        self.names.insert(no, names.clone());
        Ok(names)
    }

    fn wanted(&self, names: &(ExecutionId, TenantId)) -> bool {
        match &self.filter {
            SubscriptionFilter::All => true,
            SubscriptionFilter::Tenant(t) => &names.1 == t,
            SubscriptionFilter::Execution(e) => &names.0 == e,
        }
    }

    /// Reads the record at the cursor (below `end`) and moves past it. Returns it
    /// as a delivery if it is an event the subscription wants.
    fn step(&mut self, end: u64) -> Result<Option<Delivered>> {
        let at = Pos {
            segment: self.segment,
            offset: u32::try_from(self.offset).unwrap_or(u32::MAX),
        };
        let corrupt = |why: String| Error::corrupt(at.segment, u64::from(at.offset), why);
        let view = self.bytes(end)?;
        let bytes = view
            .as_ref()
            .as_ref()
            .get(self.offset as usize..end as usize)
            .unwrap_or_default();
        let position = at.pack();
        if self.skip_through.is_some_and(|p| position <= p) {
            self.offset += skip_len(bytes).map_err(corrupt)?;
            return Ok(None);
        }
        let (header, body, len) = match record::decode(bytes) {
            Decoded::Record {
                header,
                body,
                framed_len,
            } => (header, body, framed_len as u64),
            Decoded::Empty => return Err(corrupt("no record below the durable end".into())),
            Decoded::Invalid(why) => return Err(corrupt(why.to_string())),
        };
        self.shared
            .scrub
            .refuse(at.segment, self.offset, self.offset + len)?;
        if header.kind != Kind::Event {
            self.offset += len;
            return Ok(None);
        }
        let names = self.names(header.execution, at)?;
        let Some(names) = names.filter(|n| self.wanted(n)) else {
            self.offset += len;
            return Ok(None);
        };
        let (_, event) = codec::decode_body(body).map_err(corrupt)?;
        self.offset += len;
        let (execution_id, tenant_id) = names;
        Ok(Some(Delivered {
            position,
            event: StoredEvent {
                sequence: header.sequence,
                execution_id,
                tenant_id,
                event,
                timestamp: timestamp(header.timestamp_ns),
            },
        }))
    }

    /// Why nothing more will come, if nothing will.
    fn ended(&self) -> Option<Error> {
        if self.shared.watch.finished() {
            return Some(Error::Closed);
        }
        let poison = self.shared.state.lock().writer.poisoned.clone();
        poison.map(|p| p.error())
    }
}

/// The length of the record at `bytes[0]`, from its header only: for records a resume
/// skips, which recovery already verified.
fn skip_len(bytes: &[u8]) -> std::result::Result<u64, String> {
    let head = bytes
        .get(..HEADER_LEN)
        .ok_or_else(|| "record header beyond the durable end".to_string())?;
    let mut len = [0u8; 4];
    len.copy_from_slice(&head[BODY_LEN_OFFSET..BODY_LEN_OFFSET + 4]);
    let framed = record::framed_len(u32::from_le_bytes(len) as usize);
    if u32::from_le_bytes(len) == 0 || framed > bytes.len() {
        return Err("record runs past the durable end".to_string());
    }
    Ok(framed as u64)
}

impl Source for LogFollower {
    fn next(&mut self) -> Result<Next> {
        // Taken before looking: an advance after the look changes it, so a wait that
        // follows returns at once.
        let generation = self.shared.watch.generation();
        loop {
            if self.offset >= self.known_end {
                // Read again only when the known end is used up.
                self.known_end = self.shared.segments.durable_end(self.segment);
            }
            let end = self.known_end;
            if self.offset < end {
                if let Some(d) = self.step(end)? {
                    return Ok(Next::Event(d));
                }
                continue;
            }
            if self.next_segment() {
                continue;
            }
            self.seen = generation;
            let Some(e) = self.ended() else {
                return Ok(Next::Idle);
            };
            // The last ends may have been raised after the look above and before the
            // store closed (or was poisoned): look once more; nothing moves now.
            if self.offset < self.shared.segments.durable_end(self.segment) || self.next_segment() {
                continue;
            }
            return Ok(Next::Ended(e));
        }
    }

    fn wait(&mut self, deadline: Option<Instant>) {
        self.shared.watch.wait(self.seen, deadline);
    }

    fn register(&mut self, waker: &Waker) -> bool {
        self.shared.watch.register(self.id, self.seen, waker)
    }
}

impl Drop for LogFollower {
    fn drop(&mut self) {
        self.shared.watch.unregister(self.id);
    }
}
