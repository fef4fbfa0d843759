//! The follow path of [`PgStore`]: positions, [`Follow::end_position`], and the cursor
//! behind its subscriptions (docs/POSTGRES.md, "Following: positions and
//! subscriptions").
//!
//! **Positions.** An event's position is `xid << 24 | ordinal`: the 64-bit id of the
//! transaction that wrote it (`xid8`, never reused) and its rank, from 0, among the
//! events of that transaction in identity `id` order. A follower reads in `(xid, id)`
//! order and only transactions below the horizon (the `xmin` of a snapshot taken by the
//! same statement: every transaction with a smaller id has ended), so the events of
//! each transaction it reads are complete and never change: every subscription, and
//! every follower after a reconnect, computes the same position for the same event,
//! and no transaction that commits late (a smaller id committing after a larger one)
//! is skipped: its events are read once it has ended, before anything above it.
//!
//! **Sequence order.** The writers keep each execution's transactions in id order
//! (`last_xid` on the head row, `group_commit.rs`), and insert a transaction's events
//! in sequence order, so following delivers each execution's events in sequence
//! order.
//!
//! **Limits.** 24 bits of rank: a transaction holds at most 2^24 events (the group
//! commit never forms a larger group; a larger batch is refused). 40 bits of
//! transaction id: a follower fails with [`Error::Database`] on an event written by a
//! transaction id of 2^40 or above (about 1.1 trillion transactions since `initdb`).
//!
//! **The cursor.** A subscription's [`PgFollower`] is a [`Source`] that never waits on
//! the server itself: a task on the store's runtime ([`Producer`]) reads pages of at
//! most [`PAGE_ROWS`] events and about [`PAGE_BYTES`] bytes and hands them over through
//! a [`Channel`] that holds at most about one and a half pages, waking the consumer's
//! waker or blocked thread. The task starts with the first call that asks for an
//! event and stops when the subscription is dropped (it holds no connection of its
//! own: it uses the store's read connections). After it found nothing more below the
//! horizon it waits for an append of this store or 5 to 20 ms (appends of other
//! processes are seen at the next look).
//!
//! Invariants:
//! - only rows of transactions below the horizon are delivered, in `(xid, id)` order,
//!   each once: the cursor is the `(xid, id)` of the last row read, and rows the
//!   subscription does not want still move it;
//! - the ordinal of a row is the ordinal of the row before it in the same transaction
//!   plus one, or 0: a cursor that starts inside a transaction (a resume) first finds
//!   the row with its ordinal ([`NTH`](super::read));
//! - the subscription reports itself caught up only after a look that found nothing
//!   more below the horizon, and everything it found was taken.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

use chrono::DateTime;
use parking_lot::{Condvar, Mutex};
use tokio::runtime::Handle;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tokio_postgres::Row;

use super::connect::Target;
use super::read::{Query, Readers, bad_row};
use super::sql_id::{escape, unescape};
use super::{PgStore, block_on, panicked};
use crate::error::{Error, Result};
use crate::event::StoredEvent;
use crate::ids::{ExecutionId, TenantId};
use crate::subscription::{
    Delivered, Follow, Next, Source, StartFrom, Subscription, SubscriptionFilter,
};

/// Bits of a position that hold the event's rank in its transaction.
pub(crate) const ORDINAL_BITS: u32 = 24;

/// The most events one transaction may write: what the rank can address.
pub(crate) const MAX_TRANSACTION_EVENTS: usize = 1 << ORDINAL_BITS;

/// Transaction ids from here on have no position.
const XID_LIMIT: i64 = 1 << (64 - ORDINAL_BITS);

/// Most events a follower reads in one page.
const PAGE_ROWS: i64 = 512;

/// About the most event bytes a follower reads in one page (one larger event still
/// comes alone).
const PAGE_BYTES: i64 = 4 << 20;

/// The producer adds a page only while the channel holds at most this many events
/// and bytes, so the channel holds at most about one and a half pages.
const ROOM_ROWS: usize = PAGE_ROWS as usize / 2;
const ROOM_BYTES: usize = PAGE_BYTES as usize / 2;

/// After a look that found nothing more, the next one comes after an append of this
/// store, or after this pause, doubled after each idle look up to [`IDLE_MAX`].
const IDLE_FIRST: Duration = Duration::from_millis(5);
const IDLE_MAX: Duration = Duration::from_millis(20);

/// The least time between two looks that found nothing more.
const LOOK_GAP: Duration = Duration::from_millis(2);

/// How often [`Follow::end_position`] looks whether the transactions it waits for
/// have ended.
const END_POLL: Duration = Duration::from_millis(5);

/// What a store shares with its subscriptions: whether it was closed, a counter
/// bumped after each of its appends committed, so that followers look at once, and
/// their channels, so that a deletion drops the events they hold of what it deleted.
pub(crate) struct Hub {
    closed: AtomicBool,
    changes: watch::Sender<u64>,
    channels: Mutex<Vec<Weak<Channel>>>,
}

impl Hub {
    pub(crate) fn new() -> Hub {
        Hub {
            closed: AtomicBool::new(false),
            changes: watch::Sender::new(0),
            channels: Mutex::new(Vec::new()),
        }
    }

    /// A new subscription's channel (and the channels of ended ones forgotten).
    fn register(&self, channel: &Arc<Channel>) {
        let mut channels = self.channels.lock();
        channels.retain(|c| c.strong_count() > 0);
        channels.push(Arc::downgrade(channel));
    }

    /// `executions` (stored ids) were deleted, durably: no subscription of this store
    /// delivers their events from now on, also those it already read and holds, or is
    /// reading now.
    pub(crate) fn deleted(&self, executions: &[String]) {
        if executions.is_empty() {
            return;
        }
        let executions: HashSet<&str> = executions.iter().map(String::as_str).collect();
        let channels: Vec<Arc<Channel>> = self
            .channels
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for channel in channels {
            channel.forget(&executions);
        }
    }

    /// An append of this store committed.
    pub(crate) fn committed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The store was closed: followers deliver what is durable, then end.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.committed();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Refuses a batch that one transaction could not hold with positions.
pub(crate) fn check_transaction_events(events: usize) -> Result<()> {
    if events > MAX_TRANSACTION_EVENTS {
        return Err(Error::TooLarge {
            what: "events in one batch on PostgreSQL (one transaction numbers its events in \
                   24 bits of their positions)",
            size: events as u64,
            limit: MAX_TRANSACTION_EVENTS as u64,
        });
    }
    Ok(())
}

/// The position of the `ordinal`-th event of transaction `xid`.
fn position(xid: i64, ordinal: i64) -> Result<u64> {
    if !(0..XID_LIMIT).contains(&xid) {
        return Err(Error::Database {
            code: String::new(),
            message: format!(
                "transaction id {xid} is beyond what positions can address (2^40): \
                 this database has no positions for its newer events"
            ),
        });
    }
    if !(0..MAX_TRANSACTION_EVENTS as i64).contains(&ordinal) {
        return Err(Error::Database {
            code: String::new(),
            message: format!(
                "transaction {xid} wrote more than {MAX_TRANSACTION_EVENTS} events (not \
                 through execlog): positions cannot address them"
            ),
        });
    }
    Ok((xid as u64) << ORDINAL_BITS | ordinal as u64)
}

/// A snapshot's `xmin`, `xmax` and the transactions in progress in it.
struct Snapshot {
    xmin: i64,
    xmax: i64,
    in_progress: Vec<i64>,
}

async fn snapshot(readers: &Readers) -> Result<Snapshot> {
    let rows = readers.run(&Query::Snapshot).await?;
    let row = rows
        .first()
        .ok_or_else(|| bad_row("no row from pg_current_snapshot()"))?;
    let bad = |e: tokio_postgres::Error| bad_row(e.to_string());
    Ok(Snapshot {
        xmin: row.try_get(0).map_err(bad)?,
        xmax: row.try_get(1).map_err(bad)?,
        in_progress: row.try_get(2).map_err(bad)?,
    })
}

/// Waits until every transaction below `xmax` has ended (the horizon reached it);
/// `xmin` is the horizon last seen. Fails after `reconnect_timeout`.
async fn wait_until_ended(
    readers: &Readers,
    target: &Target,
    mut xmin: i64,
    xmax: i64,
) -> Result<()> {
    let since = Instant::now();
    while xmin < xmax {
        if since.elapsed() >= target.reconnect_timeout {
            return Err(Error::Unavailable {
                server: target.server.clone(),
                reason: format!(
                    "transaction {xmin} began before the end position was asked for and is \
                     still open after {:?} (reconnect_timeout): the end is known only once it \
                     ends (pg_stat_activity names its session)",
                    target.reconnect_timeout
                ),
            });
        }
        tokio::time::sleep(END_POLL).await;
        xmin = snapshot(readers).await?.xmin;
    }
    Ok(())
}

impl Follow for PgStore {
    fn subscribe(&self, filter: SubscriptionFilter, start: StartFrom) -> Result<Subscription> {
        if self.sender.lock().is_none() {
            return Err(Error::Closed);
        }
        let (kind, value) = match &filter {
            SubscriptionFilter::All => (0, String::new()),
            SubscriptionFilter::Tenant(t) => (1, escape(t.as_str()).into_owned()),
            SubscriptionFilter::Execution(e) => (2, escape(e.as_str()).into_owned()),
        };
        let start = match start {
            StartFrom::Beginning => Start::At(Cursor::BEGINNING),
            StartFrom::After(p) => Start::After(p),
            // The transactions that had not committed when this was called: those in
            // progress in a snapshot taken now, and those that had not begun.
            StartFrom::End => {
                let readers = Arc::clone(&self.readers);
                let job = self.handle.spawn(async move { snapshot(&readers).await });
                Start::Since(block_on(job).map_err(panicked)??)
            }
        };
        let channel = Arc::new(Channel::default());
        self.follow.register(&channel);
        let producer = Producer {
            readers: Arc::clone(&self.readers),
            hub: Arc::clone(&self.follow),
            channel: Arc::clone(&channel),
            kind,
            value,
            start,
            _end: EndOnDrop(Arc::clone(&channel)),
        };
        Ok(Subscription::new(Box::new(PgFollower {
            channel,
            handle: self.handle.clone(),
            producer: Some(producer),
            task: None,
            seen: 0,
        })))
    }

    /// Takes a snapshot, waits until every transaction in progress in it has ended,
    /// and returns the last position below its `xmax`: every transaction that commits
    /// later has an id of at least `xmax`.
    fn end_position(&self) -> Result<u64> {
        if self.sender.lock().is_none() {
            return Err(Error::Closed);
        }
        let (readers, target) = (Arc::clone(&self.readers), Arc::clone(&self.target));
        let job = self.handle.spawn(async move {
            let now = snapshot(&readers).await?;
            wait_until_ended(&readers, &target, now.xmin, now.xmax).await?;
            Ok::<_, Error>(position(now.xmax, 0)? - 1)
        });
        block_on(job).map_err(panicked)?
    }
}

/// The `(xid, id)` of the last row a follower read, and its rank in its transaction.
#[derive(Clone, Copy, Debug)]
struct Cursor {
    xid: i64,
    id: i64,
    ordinal: i64,
}

impl Cursor {
    /// Before every row.
    const BEGINNING: Cursor = Cursor {
        xid: 0,
        id: i64::MIN,
        ordinal: -1,
    };
}

/// Where a producer starts.
enum Start {
    At(Cursor),
    /// After this position: its row is found once its transaction is below the
    /// horizon.
    After(u64),
    /// With the transactions not committed in this snapshot (`StartFrom::End`).
    Since(Snapshot),
}

/// An event as read, decoded by the consumer.
struct Raw {
    position: u64,
    execution: String,
    tenant: Option<String>,
    seq: i64,
    ts_ns: i64,
    body: Vec<u8>,
}

/// What a look at the server found.
enum Look {
    /// A full page: more may be there now.
    More,
    /// Nothing more below the horizon (or the position to start after is not below it
    /// yet).
    CaughtUp { horizon: i64 },
}

/// The task that reads a subscription's pages (module docs).
struct Producer {
    readers: Arc<Readers>,
    hub: Arc<Hub>,
    channel: Arc<Channel>,
    /// 0 all, 1 the tenant `value`, 2 the execution `value` (stored forms).
    kind: i32,
    value: String,
    start: Start,
    /// Ends the subscription if the task is dropped before it ended it (the store was
    /// dropped and its runtime with it).
    _end: EndOnDrop,
}

impl Producer {
    async fn run(mut self) {
        let end = match self.follow().await {
            Ok(()) => Error::Closed,
            Err(e) => e,
        };
        self.channel.end(end);
    }

    /// Reads until the store is closed and everything durable at the close was read.
    async fn follow(&mut self) -> Result<()> {
        let mut changes = self.hub.changes.subscribe();
        let start = std::mem::replace(&mut self.start, Start::At(Cursor::BEGINNING));
        let (mut cursor, mut since, resume) = match start {
            Start::At(cursor) => (Some(cursor), None, 0),
            Start::After(p) => (None, None, p),
            Start::Since(snapshot) => {
                let cursor = Cursor {
                    xid: snapshot.xmin,
                    id: i64::MIN,
                    ordinal: -1,
                };
                let in_progress: HashSet<i64> = snapshot.in_progress.into_iter().collect();
                (Some(cursor), Some((snapshot.xmax, in_progress)), 0)
            }
        };
        // Once closed: the `xmax` of a snapshot taken then; rows of transactions below
        // it are delivered, and nothing after.
        let mut below = i64::MAX;
        let mut closing = false;
        let mut idle = IDLE_FIRST;
        loop {
            changes.borrow_and_update();
            if !closing && self.hub.is_closed() {
                closing = true;
                below = snapshot(&self.readers).await?.xmax;
            }
            let started = Instant::now();
            let look = match &mut cursor {
                Some(cursor) => self.page(cursor, below, &mut since).await?,
                None => match self.resolve(resume).await? {
                    Ok(found) => {
                        cursor = Some(found);
                        Look::More
                    }
                    Err(horizon) => {
                        self.channel.push(Vec::new(), 0, true).await;
                        Look::CaughtUp { horizon }
                    }
                },
            };
            let Look::CaughtUp { horizon } = look else {
                idle = IDLE_FIRST;
                continue;
            };
            if closing && horizon >= below {
                return Ok(());
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        // The store is gone; its runtime is about to end this task.
                        tokio::time::sleep(idle).await;
                    }
                    idle = IDLE_FIRST;
                }
                () = tokio::time::sleep(idle) => idle = (idle * 2).min(IDLE_MAX),
            }
            if let Some(rest) = LOOK_GAP.checked_sub(started.elapsed()) {
                tokio::time::sleep(rest).await;
            }
        }
    }

    /// The cursor of `StartFrom::After(p)`, or `Err(horizon)` while `p`'s transaction
    /// is not below the horizon.
    async fn resolve(&self, p: u64) -> Result<std::result::Result<Cursor, i64>> {
        let xid = (p >> ORDINAL_BITS) as i64;
        let ordinal = (p & (MAX_TRANSACTION_EVENTS as u64 - 1)) as i64;
        let rows = self.readers.run(&Query::Nth { xid, ordinal }).await?;
        let row = rows.first().ok_or_else(|| bad_row("no row for a resume"))?;
        let bad = |e: tokio_postgres::Error| bad_row(e.to_string());
        let horizon: i64 = row.try_get(0).map_err(bad)?;
        let id: Option<i64> = row.try_get(1).map_err(bad)?;
        if horizon <= xid {
            return Ok(Err(horizon));
        }
        Ok(Ok(Cursor {
            xid,
            // Before its rows if none up to that rank is left (deleted, or none
            // written): those still there come after the position.
            id: id.unwrap_or(i64::MIN),
            ordinal,
        }))
    }

    /// Reads the page after `cursor` and hands over what the subscription wants.
    /// `since`: while set, rows of transactions below its `xmax` are skipped unless
    /// they are in its set (`StartFrom::End`).
    async fn page(
        &self,
        cursor: &mut Cursor,
        below: i64,
        since: &mut Option<(i64, HashSet<i64>)>,
    ) -> Result<Look> {
        // From here to the push, a deletion also drops its executions' rows of this
        // page (the query may run on a snapshot taken before the deletion committed).
        self.channel.reading();
        let rows = self
            .readers
            .run(&Query::Page {
                xid: cursor.xid,
                id: cursor.id,
                below,
                rows: PAGE_ROWS,
                filter: self.kind,
                value: self.value.clone(),
                bytes: PAGE_BYTES,
            })
            .await?;
        let bad = |e: tokio_postgres::Error| bad_row(e.to_string());
        let (head, rows) = rows
            .split_first()
            .ok_or_else(|| bad_row("no header row in a follower's page"))?;
        let horizon: i64 = head.try_get(1).map_err(bad)?;
        let scanned: i64 = head.try_get(2).map_err(bad)?;
        let mut events = Vec::new();
        let mut bytes = 0;
        for row in rows {
            let xid: i64 = row.try_get(1).map_err(bad)?;
            let id: i64 = row.try_get(2).map_err(bad)?;
            // Its rank: kept in `ord` when an event before it was deleted, else one
            // more than the event before it (0 for a transaction's first).
            let ord: Option<i64> = row.try_get(9).map_err(bad)?;
            let ordinal = match ord {
                Some(ord) => ord,
                None if xid == cursor.xid => cursor.ordinal + 1,
                None => 0,
            };
            let position = position(xid, ordinal)?;
            *cursor = Cursor { xid, id, ordinal };
            if let Some((xmax, in_progress)) = since {
                if xid >= *xmax {
                    *since = None;
                } else if !in_progress.contains(&xid) {
                    continue;
                }
            }
            if !row.try_get::<_, bool>(6).map_err(bad)? {
                continue;
            }
            let raw = raw(row, position)?;
            bytes += raw.body.len();
            events.push(raw);
        }
        let done = scanned < PAGE_ROWS && scanned == rows.len() as i64;
        self.channel.push(events, bytes, done).await;
        Ok(if done {
            Look::CaughtUp { horizon }
        } else {
            Look::More
        })
    }
}

/// A wanted row of `PAGE_SQL`.
fn raw(row: &Row, position: u64) -> Result<Raw> {
    let bad = |e: tokio_postgres::Error| bad_row(e.to_string());
    let execution: String = row.try_get(4).map_err(bad)?;
    let body: Option<Vec<u8>> = row.try_get(8).map_err(bad)?;
    Ok(Raw {
        position,
        seq: row.try_get(3).map_err(bad)?,
        ts_ns: row.try_get(5).map_err(bad)?,
        tenant: row.try_get(7).map_err(bad)?,
        body: body.ok_or_else(|| bad_row(format!("an event of {execution:?} without a body")))?,
        execution,
    })
}

/// Decodes a row the producer read.
fn decode(raw: Raw) -> Result<Delivered> {
    let execution = unescape(&raw.execution)
        .ok_or_else(|| bad_row(format!("execution id {:?}", raw.execution)))?;
    let execution_id = ExecutionId::from(&*execution);
    let tenant = raw.tenant.as_deref().ok_or_else(|| {
        bad_row(format!(
            "execution {execution_id} has events but no head row"
        ))
    })?;
    let tenant = unescape(tenant).ok_or_else(|| bad_row(format!("tenant id {tenant:?}")))?;
    let event = crate::codec::decode_event(&raw.body).map_err(|why| {
        bad_row(format!(
            "execution {execution_id} sequence {}: {why}",
            raw.seq
        ))
    })?;
    let sequence = u64::try_from(raw.seq).map_err(|_| bad_row(format!("sequence {}", raw.seq)))?;
    Ok(Delivered {
        position: raw.position,
        event: StoredEvent {
            sequence,
            execution_id,
            tenant_id: TenantId::from(&*tenant),
            event,
            timestamp: DateTime::from_timestamp_nanos(raw.ts_ns),
        },
    })
}

/// Hands pages from the producer to the consumer.
#[derive(Default)]
struct Channel {
    state: Mutex<State>,
    /// A blocked consumer waits here.
    ready: Condvar,
    /// The producer waits here for room.
    room: Notify,
}

#[derive(Default)]
struct State {
    events: VecDeque<Raw>,
    /// Body bytes in `events`.
    bytes: usize,
    /// The producer's last look found nothing more below the horizon.
    caught_up: bool,
    /// The subscription ended: closed, or failed.
    end: Option<Error>,
    /// The producer is reading a page ([`Channel::reading`] to its push).
    reading: bool,
    /// Executions (stored ids) deleted while that page was read: its rows of them
    /// are dropped when it is pushed.
    deleted: HashSet<String>,
    /// Bumped when events arrive or the subscription ends.
    generation: u64,
    waker: Option<Waker>,
}

impl State {
    fn has_room(&self) -> bool {
        self.events.len() <= ROOM_ROWS && self.bytes <= ROOM_BYTES
    }
}

impl Channel {
    /// The producer starts reading a page.
    fn reading(&self) {
        let mut state = self.state.lock();
        state.reading = true;
        state.deleted.clear();
    }

    /// Drops the events of `executions` (stored ids, deleted) the channel holds, and
    /// those of the page being read when it is pushed.
    fn forget(&self, executions: &HashSet<&str>) {
        let freed = {
            let mut state = self.state.lock();
            let state = &mut *state;
            let before = state.events.len();
            let mut bytes = state.bytes;
            state.events.retain(|raw| {
                let keep = !executions.contains(raw.execution.as_str());
                if !keep {
                    bytes -= raw.body.len();
                }
                keep
            });
            state.bytes = bytes;
            if state.reading {
                state
                    .deleted
                    .extend(executions.iter().map(|e| (*e).to_owned()));
            }
            state.events.len() < before && state.has_room()
        };
        if freed {
            self.room.notify_one();
        }
    }

    /// Adds `events` (`bytes` of bodies), waiting for room, and records whether the
    /// look that found them found nothing more. Rows of executions deleted while the
    /// page was read are dropped.
    async fn push(&self, mut events: Vec<Raw>, mut bytes: usize, caught_up: bool) {
        if !events.is_empty() {
            loop {
                let room = self.room.notified();
                if self.state.lock().has_room() {
                    break;
                }
                room.await;
            }
        }
        let (arrived, waker) = {
            let mut state = self.state.lock();
            if !state.deleted.is_empty() {
                events.retain(|raw| !state.deleted.contains(&raw.execution));
                bytes = events.iter().map(|raw| raw.body.len()).sum();
            }
            state.reading = false;
            state.deleted.clear();
            let arrived = !events.is_empty();
            state.events.extend(events);
            state.bytes += bytes;
            state.caught_up = caught_up;
            if arrived {
                state.generation += 1;
                (arrived, state.waker.take())
            } else {
                (arrived, None)
            }
        };
        if arrived {
            self.ready.notify_all();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Ends the subscription (once) after what it holds.
    fn end(&self, error: Error) {
        let waker = {
            let mut state = self.state.lock();
            if state.end.is_some() {
                return;
            }
            state.end = Some(error);
            state.generation += 1;
            state.waker.take()
        };
        self.ready.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Ends the channel with [`Error::Closed`] when dropped, unless it ended already.
struct EndOnDrop(Arc<Channel>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.end(Error::Closed);
    }
}

/// A subscription's cursor on a [`PgStore`]: the consumer's end of the channel.
struct PgFollower {
    channel: Arc<Channel>,
    handle: Handle,
    /// Started on the store's runtime by the first call that asks for an event.
    producer: Option<Producer>,
    task: Option<AbortHandle>,
    /// The channel's generation when the last look found it empty.
    seen: u64,
}

impl PgFollower {
    fn start(&mut self) {
        if let Some(producer) = self.producer.take() {
            // On a runtime that was shut down (the store is gone) the task is dropped
            // unrun, and its `EndOnDrop` ends the subscription.
            self.task = Some(self.handle.spawn(producer.run()).abort_handle());
        }
    }
}

impl Source for PgFollower {
    fn next(&mut self) -> Result<Next> {
        self.start();
        let (raw, room) = {
            let mut state = self.channel.state.lock();
            match state.events.pop_front() {
                Some(raw) => {
                    state.bytes -= raw.body.len();
                    (raw, state.has_room())
                }
                None => {
                    self.seen = state.generation;
                    return match &state.end {
                        Some(Error::Closed) => Ok(Next::Ended(Error::Closed)),
                        Some(e) => Err(e.duplicate()),
                        None if state.caught_up => Ok(Next::Idle),
                        None => Ok(Next::Pending),
                    };
                }
            }
        };
        if room {
            self.channel.room.notify_one();
        }
        decode(raw).map(Next::Event)
    }

    fn wait(&mut self, deadline: Option<Instant>) {
        self.start();
        let mut state = self.channel.state.lock();
        while state.generation == self.seen {
            match deadline {
                Some(deadline) => {
                    if self
                        .channel
                        .ready
                        .wait_until(&mut state, deadline)
                        .timed_out()
                    {
                        return;
                    }
                }
                None => self.channel.ready.wait(&mut state),
            }
        }
    }

    fn register(&mut self, waker: &Waker) -> bool {
        self.start();
        let mut state = self.channel.state.lock();
        if state.generation != self.seen {
            return true;
        }
        state.waker = Some(waker.clone());
        false
    }
}

impl Drop for PgFollower {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
