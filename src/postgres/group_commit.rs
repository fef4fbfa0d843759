//! Client-side group commit: the appends waiting when a write connection is free go
//! into one transaction, one fsync of the server's WAL for all of them.
//!
//! Each write connection runs [`run_writer`]: gather a group, commit it, answer every
//! append in it, repeat. A group's transaction is one round trip: `BEGIN`, the group
//! statement ([`GROUP_SQL`]) and `COMMIT`, pipelined. Only when a head row stays
//! locked elsewhere longer than [`BUSY_WAIT`] does the group take a second look
//! ([`BUSY_SQL`]) and go without the busy executions.
//!
//! Invariants:
//! - Sequences come from the execution's head row, advanced by the upsert in
//!   [`GROUP_SQL`] under its row lock, held to the commit; the primary key on
//!   (execution_id, seq) is the backstop. Head rows are locked in one global order
//!   (execution id bytes, `COLLATE "C"`), so groups never deadlock each other; should
//!   the server still report one, the group is retried.
//! - Each execution's writers have growing transaction ids (the follow order,
//!   `follow.rs`): the head row records its last writer's (`last_xid`), and a group
//!   that finds a newer one there fails with a serialization failure and is retried
//!   in a new transaction. A group's events are inserted in its order, so their
//!   identity `id`s follow each execution's sequences; a group holds at most
//!   [`MAX_TRANSACTION_EVENTS`] events.
//! - A group holds at most one tenant per execution (an append naming another tenant
//!   waits for the next group), so a tenant mismatch rejects exactly the appends that
//!   name the wrong owner, and nothing else in the group.
//! - A head row marked deleted (`deletion.rs`) is locked and left as it is, like one
//!   of another tenant: its appends store nothing and are answered `Error::Deleted`
//!   (looked up after the commit, [`DELETED_SQL`]; the mark is never lifted).
//! - An append is answered `Ok` only after its transaction's commit returned, or,
//!   when the connection broke or fell silent around the commit, after a transaction
//!   on a new connection found the group's commit token committed and itself
//!   committed (so the answer waits for the WAL flush and any synchronous standby,
//!   as the lost commit's would have). A group that did not commit is retried until
//!   `reconnect_timeout`; one whose outcome stays unknown is answered with an error
//!   that says so.
//! - Every append is answered exactly once: committed, refused (alone, after its
//!   group was split), or failed with the group.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use super::connect::{Target, is_connection_loss};
use super::follow::MAX_TRANSACTION_EVENTS;
use super::sql_id::escape;
use crate::append::Bodies;
use crate::error::{Error, Result};
use crate::ids::{ExecutionId, TenantId};

/// Advances the head rows of the group's executions and inserts its events, in one
/// statement. Returns each execution whose owner matched and that is not deleted, with
/// its new last sequence and the timestamp given to the group's events. (The upsert
/// locks the head rows it leaves alone too, and reads their newest version: a deletion
/// that committed while the group waited for the lock is seen.)
///
/// The follow order (`follow.rs`): an execution's head row records the transaction id
/// of its last writer (`last_xid`), and a transaction that finds a newer one there
/// (it got its id before it waited for this row's lock, and another transaction took
/// the lock meanwhile) fails with a serialization failure and is retried, so an
/// execution's events are in transaction id order. The events are inserted in the
/// group's order (`WITH ORDINALITY … ORDER BY`), so their identity `id`s, the order
/// within a transaction, follow each execution's sequences.
const GROUP_SQL: &str = r#"
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) AS i(execution_id, tenant_id, n)
), heads AS (
    INSERT INTO execlog_executions AS h (execution_id, tenant_id, last_seq, last_ts_ns)
    SELECT execution_id, tenant_id, n, $4::bigint FROM input ORDER BY execution_id COLLATE "C"
    ON CONFLICT (execution_id) DO UPDATE
        SET last_seq = CASE WHEN h.last_xid > pg_current_xact_id()
                            THEN execlog_out_of_order(h.execution_id, h.last_xid)
                            ELSE h.last_seq + excluded.last_seq END,
            last_ts_ns = greatest(h.last_ts_ns, excluded.last_ts_ns),
            last_xid = pg_current_xact_id()
        WHERE h.tenant_id = excluded.tenant_id AND h.deleted_at IS NULL
    RETURNING h.execution_id, h.last_seq, h.last_ts_ns
), token AS (
    INSERT INTO execlog_commits (token) VALUES ($8::text)
), stored AS (
    INSERT INTO execlog_events (execution_id, seq, ts_ns, body)
    SELECT e.execution_id, hd.last_seq - i.n + e.off, hd.last_ts_ns, e.body
    FROM unnest($5::text[], $6::bigint[], $7::bytea[]) WITH ORDINALITY AS e(execution_id, off, body, k)
    JOIN heads hd ON hd.execution_id = e.execution_id
    JOIN input i ON i.execution_id = e.execution_id
    ORDER BY e.k
)
SELECT execution_id, last_seq, last_ts_ns FROM heads
"#;

/// Records this transaction as the last writer of the head rows [`GROUP_SQL`] created
/// (an insert cannot: `pg_current_xact_id()` in its values would take the transaction
/// id before the lock waits). Runs in the same transaction, after it.
const LAST_XID_SQL: &str = "
UPDATE execlog_executions SET last_xid = pg_current_xact_id()
WHERE execution_id = ANY($1::text[]) AND last_xid IS NULL AND deleted_at IS NULL";

/// The executions among `$1` marked deleted: why [`GROUP_SQL`] left out an execution
/// of the group (if not deleted, the append named another tenant). Asked after the
/// commit, only when some execution was left out: a mark is never lifted, and an
/// execution deleted since was then refused rightly either way (nothing was stored).
const DELETED_SQL: &str = "
SELECT execution_id FROM execlog_executions
WHERE execution_id = ANY($1::text[]) AND deleted_at IS NOT NULL";

/// The executions among `$1` whose head row exists but is locked by another
/// transaction; locks the others' head rows for this one, without waiting.
const BUSY_SQL: &str = r#"
WITH locked AS MATERIALIZED (
    SELECT execution_id FROM execlog_executions
    WHERE execution_id = ANY($1::text[])
    ORDER BY execution_id COLLATE "C"
    FOR UPDATE SKIP LOCKED
)
SELECT execution_id FROM execlog_executions
WHERE execution_id = ANY($1::text[])
  AND execution_id NOT IN (SELECT execution_id FROM locked)
"#;

/// What a committed group's executions ended at, as [`GROUP_SQL`] returns it, for an
/// in-doubt commit found committed: the events its transaction (found by its token)
/// wrote.
const COMMITTED_SQL: &str = "
SELECT execution_id, max(seq), max(ts_ns) FROM execlog_events
WHERE xid = (SELECT xid FROM execlog_commits WHERE token = $1)
GROUP BY execution_id";

/// How long a group made only of appends to busy executions waits for their locks
/// before it steps aside (a PostgreSQL `lock_timeout`).
pub(crate) const BUSY_WAIT: &str = "50ms";

/// Every this many committed groups, a writer deletes old commit tokens.
pub(crate) const PRUNE_EVERY: u64 = 1024;

/// One append waiting for its group.
pub(crate) struct Request {
    /// Goes in a group of its own: set after a group holding it was refused, so that
    /// one bad append fails alone.
    pub(crate) solo: bool,
    pub(crate) execution_id: ExecutionId,
    pub(crate) tenant_id: TenantId,
    pub(crate) bodies: Bodies,
    pub(crate) reply: oneshot::Sender<Result<u64>>,
}

/// How big a group may grow.
#[derive(Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_appends: usize,
    pub(crate) max_bytes: usize,
}

/// Timestamps for the events: nanoseconds since the epoch, never decreasing within
/// this store even if the system clock steps back (the head row keeps them from
/// decreasing within an execution across stores).
#[derive(Default)]
pub(crate) struct Clock {
    last: AtomicI64,
}

impl Clock {
    pub(crate) fn now_ns(&self) -> i64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        self.last.fetch_max(now, Ordering::Relaxed).max(now)
    }
}

/// The shared receiving end: the free writer holding it gathers the next group.
pub(crate) type Inbox = Arc<Mutex<mpsc::Receiver<Request>>>;

/// One write connection's loop; returns when the store closes and the inbox is empty.
pub(crate) async fn run_writer(
    target: Arc<Target>,
    inbox: Inbox,
    limits: Limits,
    clock: Arc<Clock>,
) {
    let mut writer = Writer {
        target,
        conn: None,
        groups: 0,
    };
    let mut carry = Vec::new();
    while let Some(group) = gather(&inbox, &mut carry, limits).await {
        writer.commit(group, &clock, &mut carry).await;
    }
}

/// Takes the appends left over from the last group, then waits for at least one and
/// takes whatever else is waiting, within `limits`. `None` once the store is closed
/// and drained.
async fn gather(inbox: &Inbox, carry: &mut Vec<Request>, limits: Limits) -> Option<Vec<Request>> {
    let mut group = Group::default();
    for request in std::mem::take(carry) {
        group.offer(request, limits, carry);
    }
    let mut rx = if group.requests.is_empty() {
        let mut rx = inbox.lock().await;
        let first = rx.recv().await?;
        group.offer(first, limits, carry);
        rx
    } else {
        // Appends carried over are answered now, not when new ones arrive: if another
        // writer is waiting on the inbox, go without.
        match inbox.try_lock() {
            Ok(rx) => rx,
            Err(_) => return Some(group.requests),
        }
    };
    while carry.is_empty() && !group.full(limits) {
        match rx.try_recv() {
            Ok(request) => group.offer(request, limits, carry),
            Err(_) => break,
        }
    }
    Some(group.requests)
}

#[derive(Default)]
struct Group {
    requests: Vec<Request>,
    bytes: usize,
    /// Events in the group: at most [`MAX_TRANSACTION_EVENTS`].
    events: usize,
    owners: HashMap<ExecutionId, TenantId>,
}

impl Group {
    fn full(&self, limits: Limits) -> bool {
        self.requests.len() >= limits.max_appends
            || self.bytes >= limits.max_bytes
            || self.events >= MAX_TRANSACTION_EVENTS
            || self.requests.first().is_some_and(|r| r.solo)
    }

    /// Adds the request, or leaves it in `later` when the group is full or already
    /// holds its execution under another tenant.
    fn offer(&mut self, request: Request, limits: Limits, later: &mut Vec<Request>) {
        let size = request.bodies.total_bytes();
        let too_big = !self.requests.is_empty()
            && (self.bytes + size > limits.max_bytes
                || self.events + request.bodies.len() > MAX_TRANSACTION_EVENTS);
        let other_owner = self
            .owners
            .get(&request.execution_id)
            .is_some_and(|t| *t != request.tenant_id);
        let alone = request.solo || self.requests.first().is_some_and(|r| r.solo);
        let apart = alone && !self.requests.is_empty();
        if apart || too_big || other_owner || self.requests.len() >= limits.max_appends {
            later.push(request);
            return;
        }
        self.owners
            .entry(request.execution_id.clone())
            .or_insert_with(|| request.tenant_id.clone());
        self.bytes += size;
        self.events += request.bodies.len();
        self.requests.push(request);
    }
}

/// The group as statement parameters, and where each append's events sit.
struct Plan {
    executions: Vec<String>,
    tenants: Vec<String>,
    counts: Vec<i64>,
    event_executions: Vec<String>,
    offsets: Vec<i64>,
    /// Per request (same order as the group): its execution's index in `executions`
    /// and the offset of its first event within that execution's part of the group.
    placement: Vec<(usize, i64)>,
}

impl Plan {
    fn new(group: &[Request]) -> Plan {
        let stored: Vec<String> = group
            .iter()
            .map(|r| escape(r.execution_id.as_str()).into_owned())
            .collect();
        let mut order: Vec<usize> = (0..group.len()).collect();
        // Stable: an execution's appends keep their arrival order. Byte order is the
        // order `COLLATE "C"` locks the head rows in.
        order.sort_by(|&a, &b| stored[a].as_bytes().cmp(stored[b].as_bytes()));
        let mut plan = Plan {
            executions: Vec::new(),
            tenants: Vec::new(),
            counts: Vec::new(),
            event_executions: Vec::new(),
            offsets: Vec::new(),
            placement: vec![(0, 0); group.len()],
        };
        for &r in &order {
            let request = &group[r];
            if plan.executions.last() != Some(&stored[r]) {
                plan.executions.push(stored[r].clone());
                plan.tenants
                    .push(escape(request.tenant_id.as_str()).into_owned());
                plan.counts.push(0);
            }
            let e = plan.executions.len() - 1;
            plan.placement[r] = (e, plan.counts[e] + 1);
            for _ in 0..request.bodies.len() {
                plan.counts[e] += 1;
                plan.event_executions.push(stored[r].clone());
                plan.offsets.push(plan.counts[e]);
            }
        }
        plan
    }

    /// The bodies in the order of `event_executions`.
    fn bodies<'a>(&self, group: &'a [Request]) -> Vec<&'a [u8]> {
        let mut order: Vec<usize> = (0..group.len()).collect();
        order.sort_by_key(|&r| self.placement[r]);
        order.iter().flat_map(|&r| group[r].bodies.iter()).collect()
    }
}

/// A write connection and its prepared statements.
struct Conn {
    client: Client,
    group: Statement,
    last_xid: Statement,
    busy: Statement,
    deleted: Statement,
}

struct Writer {
    target: Arc<Target>,
    conn: Option<Conn>,
    /// Groups committed, for the occasional pruning of old commit tokens.
    groups: u64,
}

/// How one attempt at a group's transaction ended.
enum Attempt {
    /// Committed; the rows of [`GROUP_SQL`].
    Committed(Vec<Row>),
    /// Certainly not committed; may be retried.
    NotCommitted(Error),
    /// Refused by the server for a reason a retry would not change.
    Refused(Error),
    /// The connection broke (or stopped answering) around the commit of the
    /// transaction that carries `token`.
    InDoubt { token: String, error: Error },
    /// Every head row the group needs stayed locked by other transactions; nothing
    /// was written.
    Busy,
}

impl Writer {
    /// Commits the group and answers each of its appends. Appends to an execution
    /// whose head row another transaction holds may be moved to `later` (see
    /// [`Writer::attempt`]); after a refusal, a group of several executions goes back
    /// to `later` as one group per append, so that the refusal reaches only the append
    /// that caused it.
    async fn commit(&mut self, mut group: Vec<Request>, clock: &Clock, later: &mut Vec<Request>) {
        let since = Instant::now();
        let mut pause = Duration::from_millis(10);
        let mut probe = false;
        let outcome = loop {
            let attempt = self.attempt(&mut group, later, clock.now_ns(), probe).await;
            let attempt = match attempt {
                Attempt::InDoubt { token, error } => self.resolve(&token, error, since).await,
                other => other,
            };
            match attempt {
                Attempt::Committed(rows) => break Ok(rows),
                // Some head row stayed locked: find out which, and go without them.
                Attempt::Busy if !probe => probe = true,
                Attempt::Busy => {
                    // Tried again after whatever else is waiting has had its turn.
                    later.splice(0..0, group);
                    return;
                }
                Attempt::Refused(e) if group.len() > 1 => {
                    log::debug!(
                        "execlog: a group was refused ({e}); retrying its appends one by one"
                    );
                    for request in &mut group {
                        request.solo = true;
                    }
                    later.splice(0..0, group);
                    return;
                }
                Attempt::NotCommitted(e) if since.elapsed() < self.target.reconnect_timeout => {
                    log::debug!("execlog: retrying a group of {} appends: {e}", group.len());
                    // Pace the attempts: a server that is down or refusing answers at once.
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Attempt::NotCommitted(e) | Attempt::Refused(e) => break Err(e),
                Attempt::InDoubt { error, .. } => break Err(error),
            }
        };
        if outcome.is_ok() {
            self.groups += 1;
            if self.groups.is_multiple_of(PRUNE_EVERY) {
                self.prune_tokens().await;
            }
        }
        // The plan the committed attempt used: `Plan::new` depends only on the group.
        let plan = Plan::new(&group);
        let deleted = match &outcome {
            Ok(rows) => {
                let stored: HashSet<&str> = rows.iter().filter_map(|r| r.try_get(0).ok()).collect();
                let left_out: Vec<String> = plan
                    .executions
                    .iter()
                    .filter(|e| !stored.contains(e.as_str()))
                    .cloned()
                    .collect();
                if left_out.is_empty() {
                    Ok(HashSet::new())
                } else {
                    self.deleted_among(&left_out).await
                }
            }
            Err(_) => Ok(HashSet::new()),
        };
        answer(group, &plan, outcome, deleted);
    }

    /// The executions among `executions` marked deleted ([`DELETED_SQL`]), asked until
    /// `reconnect_timeout`.
    async fn deleted_among(&mut self, executions: &[String]) -> Result<HashSet<String>> {
        let since = Instant::now();
        loop {
            let error = match self.take_connection().await {
                Ok(conn) => {
                    let params: [&(dyn ToSql + Sync); 1] = [&executions];
                    let asked = conn.client.query(&conn.deleted, &params);
                    match tokio::time::timeout(self.target.reconnect_timeout, asked).await {
                        Ok(Ok(rows)) => {
                            self.conn = Some(conn);
                            return rows
                                .iter()
                                .map(|row| row.try_get(0).map_err(|e| self.target.error(&e)))
                                .collect();
                        }
                        Ok(Err(e)) if is_connection_loss(&conn.client, &e) => self.target.error(&e),
                        Ok(Err(e)) => {
                            self.conn = Some(conn);
                            return Err(self.target.error(&e));
                        }
                        Err(_) => self.silent(),
                    }
                }
                Err(e) => e,
            };
            if since.elapsed() >= self.target.reconnect_timeout {
                return Err(error);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One try: connect if needed, then one round trip (`BEGIN`, the group statement
    /// and `COMMIT`, pipelined), in which the group waits at most [`BUSY_WAIT`] for a
    /// head row another transaction holds.
    ///
    /// If that wait ran out, the next try (`probe`) takes two round trips: the first
    /// locks the head rows of the group's executions that are free
    /// (`FOR UPDATE SKIP LOCKED`). If another transaction holds some of them
    /// (a slow append elsewhere, another machine's group, a session holding a lock),
    /// the appends to those executions go back to `later`, at the front, and the rest
    /// commit without waiting for them. A group made only of such appends waits for
    /// the locks at most [`BUSY_WAIT`], so that a lock held for long delays the other
    /// appends of this connection by at most that, and the busy ones are tried again
    /// each time.
    ///
    /// Each round trip has `reconnect_timeout` to answer: a server that stops
    /// answering is treated as a lost connection.
    async fn attempt(
        &mut self,
        group: &mut Vec<Request>,
        later: &mut Vec<Request>,
        now_ns: i64,
        probe: bool,
    ) -> Attempt {
        let conn = match self.take_connection().await {
            Ok(conn) => conn,
            Err(e @ Error::Unavailable { .. }) => return Attempt::NotCommitted(e),
            Err(e) => return Attempt::Refused(e),
        };
        let deadline = self.target.reconnect_timeout;
        // On every path below that drops `conn`, the session is broken, silent or
        // confused, and is replaced by the next attempt.
        let (begin_now, lock_wait) = if probe {
            let executions = Plan::new(group).executions;
            let busy = match tokio::time::timeout(deadline, begin(&conn, &executions)).await {
                Ok(Ok(busy)) => busy,
                // Nothing can have committed: no COMMIT was sent.
                Ok(Err(e)) => {
                    let error = self.target.error(&e);
                    if is_connection_loss(&conn.client, &e) {
                        return Attempt::NotCommitted(error);
                    }
                    self.keep_after_rollback(conn).await;
                    return classify(&e, error);
                }
                Err(_) => return Attempt::NotCommitted(self.silent()),
            };
            let is_busy = |r: &Request| busy.iter().any(|b| *b == escape(r.execution_id.as_str()));
            let all_busy = group.iter().all(is_busy);
            if !busy.is_empty() && !all_busy {
                let (waiting, free): (Vec<_>, Vec<_>) =
                    std::mem::take(group).into_iter().partition(is_busy);
                *group = free;
                later.splice(0..0, waiting);
            }
            ("", if all_busy { BUSY_WAIT } else { "0" })
        } else {
            ("BEGIN; ", BUSY_WAIT)
        };
        let token = ExecutionId::new().to_string();
        let plan = Plan::new(group);
        let bodies = plan.bodies(group);
        let params: [&(dyn ToSql + Sync); 8] = [
            &plan.executions,
            &plan.tenants,
            &plan.counts,
            &now_ns,
            &plan.event_executions,
            &plan.offsets,
            &bodies,
            &token,
        ];
        let set_lock_wait = format!("{begin_now}SET LOCAL lock_timeout = '{lock_wait}'");
        let created: [&(dyn ToSql + Sync); 1] = [&plan.executions];
        let round_trip = async {
            tokio::join!(
                conn.client.batch_execute(&set_lock_wait),
                conn.client.query(&conn.group, &params),
                conn.client.execute(&conn.last_xid, &created),
                conn.client.batch_execute("COMMIT"),
            )
        };
        let (_, rows, last_xid, commit) = match tokio::time::timeout(deadline, round_trip).await {
            Ok(answers) => answers,
            Err(_) => {
                let error = self.silent();
                drop(bodies);
                return Attempt::InDoubt { token, error };
            }
        };
        drop(bodies);
        let failure = match (rows, last_xid, commit) {
            (Ok(rows), Ok(_), Ok(())) => {
                self.conn = Some(conn);
                return Attempt::Committed(rows);
            }
            (Err(e), _, _) | (Ok(_), Err(e), _) | (Ok(_), Ok(_), Err(e)) => e,
        };
        let error = self.target.error(&failure);
        if is_connection_loss(&conn.client, &failure) {
            log::warn!(
                "execlog: lost the connection to {} while committing: {error}",
                self.target.server
            );
            return Attempt::InDoubt { token, error };
        }
        // A refusal aborted the transaction: the pipelined COMMIT rolled it back.
        self.conn = Some(conn);
        classify(&failure, error)
    }

    /// Keeps a connection whose transaction was refused, after rolling it back.
    async fn keep_after_rollback(&mut self, conn: Conn) {
        if conn.client.batch_execute("ROLLBACK").await.is_ok() {
            self.conn = Some(conn);
        }
    }

    fn silent(&self) -> Error {
        Error::Unavailable {
            server: self.target.server.clone(),
            reason: format!(
                "no answer within {:?} (reconnect_timeout)",
                self.target.reconnect_timeout
            ),
        }
    }

    /// The live connection, taken out of `self` (put it back when it is still good),
    /// connecting and preparing if there is none.
    async fn take_connection(&mut self) -> Result<Conn> {
        if let Some(conn) = self.conn.take()
            && !conn.client.is_closed()
        {
            return Ok(conn);
        }
        let client = self.target.connect().await?;
        let err = |e: tokio_postgres::Error| self.target.error(&e);
        let group = client.prepare(GROUP_SQL).await.map_err(err)?;
        let last_xid = client.prepare(LAST_XID_SQL).await.map_err(err)?;
        let busy = client.prepare(BUSY_SQL).await.map_err(err)?;
        let deleted = client.prepare(DELETED_SQL).await.map_err(err)?;
        Ok(Conn {
            client,
            group,
            last_xid,
            busy,
            deleted,
        })
    }

    /// Learns, on a new connection, whether the transaction carrying `token`
    /// committed. Asks at least once, then until `reconnect_timeout` has passed since
    /// `since`.
    async fn resolve(&mut self, token: &str, mut error: Error, since: Instant) -> Attempt {
        loop {
            let left = self
                .target
                .reconnect_timeout
                .saturating_sub(since.elapsed());
            let asked = tokio::time::timeout(left.max(Duration::from_secs(1)), self.outcome(token));
            match asked.await {
                Ok(Ok(Some(rows))) => return Attempt::Committed(rows),
                Ok(Ok(None)) => return Attempt::NotCommitted(error),
                Ok(Err(e)) => error = e,
                Err(_) => error = self.silent(),
            }
            if since.elapsed() >= self.target.reconnect_timeout {
                return Attempt::InDoubt {
                    token: token.to_owned(),
                    error: in_doubt(error),
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `Some(rows)` if the transaction carrying `token` committed, `None` if it did
    /// not and never will ([`settle`]).
    async fn outcome(&mut self, token: &str) -> Result<Option<Vec<Row>>> {
        let mut conn = self.take_connection().await?;
        let rows = settle(&mut conn.client, token, COMMITTED_SQL, &[&token])
            .await
            .map_err(|e| self.target.error(&e))?;
        self.conn = Some(conn);
        Ok(rows)
    }

    /// Deletes commit tokens far older than any resolution could still need.
    async fn prune_tokens(&mut self) {
        if let Some(conn) = &self.conn {
            prune_tokens(&conn.client, &self.target).await;
        }
    }
}

/// Deletes commit tokens far older than any resolution could still need (the group
/// commit and guarded appends each do it every [`PRUNE_EVERY`] commits).
pub(crate) async fn prune_tokens(client: &Client, target: &Target) {
    let keep = (target.reconnect_timeout * 4).max(Duration::from_secs(600));
    let sql = format!(
        "DELETE FROM execlog_commits WHERE at < now() - interval '{} seconds'",
        keep.as_secs()
    );
    if let Err(e) = client.batch_execute(&sql).await {
        log::warn!("execlog: pruning old commit tokens failed: {e}");
    }
}

/// Whether the transaction that inserted `token` into `execlog_commits` committed:
/// `Some` with the rows of `committed_sql` (run with `params` inside this
/// transaction) if it did, `None` if it did not and now never can.
///
/// Inserting the same token waits while that transaction is still open, then
/// conflicts if it committed, or succeeds if it did not (and then it can no longer
/// commit: its token would be a duplicate). The transaction ids are not trusted alone:
/// after a server crash, an id handed out but never logged is handed out again. When
/// it committed, this transaction commits too, having written, so the answer waits,
/// as the lost commit's would have, for the WAL flush and any synchronous standby.
/// Used by the group commit and by guarded appends (`guarded_commit.rs`).
pub(crate) async fn settle(
    client: &mut Client,
    token: &str,
    committed_sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> std::result::Result<Option<Vec<Row>>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.query_one("SELECT pg_current_xact_id()::text", &[])
        .await?;
    let claimed = tx
        .query(
            "INSERT INTO execlog_commits (token) VALUES ($1) ON CONFLICT DO NOTHING RETURNING token",
            &[&token],
        )
        .await?;
    if !claimed.is_empty() {
        tx.rollback().await?;
        return Ok(None);
    }
    let rows = tx.query(committed_sql, params).await?;
    // A write, so that this commit has WAL to flush and, like the lost commit, waits
    // for the flush and for any synchronous standby (a transaction that wrote nothing
    // does not wait).
    tx.execute(
        "UPDATE execlog_commits SET at = now() WHERE token = $1",
        &[&token],
    )
    .await?;
    tx.commit().await?;
    Ok(Some(rows))
}

/// A refusal as an [`Attempt`]: retried when the server rolled back for contention.
fn classify(failure: &tokio_postgres::Error, error: Error) -> Attempt {
    match failure.code().map(|c| c.code()) {
        // The lock wait of a group of busy executions ran out.
        Some("55P03") => Attempt::Busy,
        // Serialization failure, deadlock, a cancelled statement: the transaction was
        // rolled back, and another try may pass. (A lock timeout that fires just as
        // the lock is granted is reported as a cancel "due to user request", 57014.)
        Some("40001" | "40P01" | "57014") => Attempt::NotCommitted(error),
        _ => Attempt::Refused(error),
    }
}

/// The answer to an append that was refused (not stored) when asking whether its
/// execution is deleted failed.
fn refused_unknown_why(error: &Error) -> Error {
    match error {
        Error::Unavailable { server, reason } => Error::Unavailable {
            server: server.clone(),
            reason: format!(
                "the append was not stored: its execution is deleted or owned by another \
                 tenant, and asking which failed: {reason}"
            ),
        },
        other => other.duplicate(),
    }
}

pub(crate) fn in_doubt(error: Error) -> Error {
    match error {
        Error::Unavailable { server, reason } => Error::Unavailable {
            server,
            reason: format!(
                "{reason}; the connection broke while the append was committing and the \
                 server could not be asked in time whether it committed: the append may \
                 or may not be stored"
            ),
        },
        other => other,
    }
}

/// `BEGIN`, and the executions among `executions` whose head row another
/// transaction holds (the others are now locked by this one), in one round trip.
async fn begin(
    conn: &Conn,
    executions: &[String],
) -> std::result::Result<Vec<String>, tokio_postgres::Error> {
    let params: [&(dyn ToSql + Sync); 1] = [&executions];
    let (begun, busy) = tokio::join!(
        conn.client.batch_execute("BEGIN"),
        conn.client.query(&conn.busy, &params),
    );
    begun?;
    busy?.iter().map(|row| row.try_get(0)).collect()
}

/// Sends each append its answer: its first sequence, or why it failed. `deleted`: the
/// executions the group statement left out that are deleted (the others' appends
/// named another tenant), or why that could not be asked.
fn answer(
    group: Vec<Request>,
    plan: &Plan,
    outcome: Result<Vec<Row>>,
    deleted: Result<HashSet<String>>,
) {
    let rows = match outcome {
        Ok(rows) => rows,
        Err(e) => {
            for request in group {
                let _ = request.reply.send(Err(e.duplicate()));
            }
            return;
        }
    };
    let mut last: HashMap<String, i64> = HashMap::with_capacity(rows.len());
    for row in &rows {
        last.insert(row.get(0), row.get(1));
    }
    for (r, request) in group.into_iter().enumerate() {
        let (e, offset) = plan.placement[r];
        let execution = &plan.executions[e];
        let result = match last.get(execution) {
            Some(&last_seq) => {
                let first = last_seq - plan.counts[e] + offset;
                u64::try_from(first).map_err(|_| Error::Database {
                    code: String::new(),
                    message: format!("execution {execution:?} has a negative sequence"),
                })
            }
            None => match &deleted {
                Ok(deleted) if deleted.contains(execution) => Err(Error::Deleted),
                Ok(_) => Err(Error::TenantMismatch {
                    execution_id: request.execution_id.to_string(),
                    given: request.tenant_id.to_string(),
                }),
                Err(e) => Err(refused_unknown_why(e)),
            },
        };
        // The caller may have stopped waiting (a dropped future); the append stands.
        let _ = request.reply.send(result);
    }
}
