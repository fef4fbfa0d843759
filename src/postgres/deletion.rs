//! [`Lifecycle`] on [`PgStore`]: deleting an execution, a tenant's executions, and
//! pruning, with their blocking twins (docs/POSTGRES.md, "Deleting executions").
//!
//! A deletion is one transaction, on the store's administrative connection (made on
//! first use and kept; one deletion or fork, `fork.rs`, of this store at a time, tried
//! again by [`Deleter::run`]), in two round trips:
//! 1. `BEGIN`, and lock the head rows of the live executions to delete
//!    (`SELECT … FOR UPDATE`, in the group commit's order: the execution id's bytes):
//!    [`EXECUTION_SQL`], [`TENANT_SQL`], or for a chunk of a prune [`STALE_SQL`],
//!    which checks again under the lock that the execution is still stale. None:
//!    `ROLLBACK`, nothing was recorded.
//! 2. Pipelined: [`LOCK_EVENTS_SQL`] locks, in `(xid, id)` order, the event rows the
//!    erasure changes; [`ERASE_SQL`] keeps the rank (`ord`) of each surviving event
//!    that follows a deleted one in its transaction, deletes the executions' events
//!    and idempotency keys, marks their head rows deleted (`deleted_at`) and inserts a
//!    commit token; `COMMIT`. A connection lost around the `COMMIT` is resolved with
//!    the token (`group_commit::settle`), as appends are.
//!
//! Then the store's subscriptions drop what they hold of the deleted executions
//! (`follow::Hub::deleted`).
//!
//! Invariants:
//! - Every append (plain, guarded, import) holds its execution's head row lock from
//!   before it reads the head row to its commit, and refuses a marked one with
//!   `Error::Deleted` before any other check; a deletion holds the same lock from
//!   before it reads the events to its commit. So an append either committed before
//!   the deletion took the lock (its events are deleted with the rest) or waits for
//!   the deletion and then finds the mark: no event of a deleted execution is left or
//!   added, and nothing is refused that was acknowledged.
//! - The head row stays, marked, so the id is never used again; every read leaves
//!   marked head rows out. Only head rows of live executions with events are marked:
//!   deleting what is not there records nothing, and reserves no id.
//! - A follower's position counts its event's rank in its transaction (`follow.rs`).
//!   A surviving event after a deleted one in the same transaction keeps its rank in
//!   `ord`, so every position handed out before still names the same place. Events
//!   without `ord` are a prefix of their transaction's events (nothing before them was
//!   deleted), where the rank is still the count.
//! - Deletions take head row locks (in one order) before event row locks (in one
//!   order), and appends take only head row locks: no deadlock among them. A fork
//!   (`fork.rs`) locks its source's head row `FOR KEY SHARE`, which a deletion's
//!   `FOR UPDATE` waits for, and then waits for no lock a deletion holds.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::Mutex;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::connect::{Target, is_connection_loss};
use super::follow::Hub;
use super::group_commit::{in_doubt, settle};
use super::sql_id::escape;
use super::{PgStore, block_on, panicked};
use crate::error::{Error, Result};
use crate::fork::ForkPoint;
use crate::ids::{ExecutionId, TenantId, validate_id};
use crate::lifecycle::Lifecycle;

/// Locks the head row of the live execution `$1`; returns its id, or nothing.
const EXECUTION_SQL: &str = "
SELECT execution_id FROM execlog_executions
WHERE execution_id = $1 AND deleted_at IS NULL AND last_seq > 0
FOR UPDATE";

/// Locks the head rows of the live executions of tenant `$1`; returns their ids.
const TENANT_SQL: &str = r#"
SELECT execution_id FROM execlog_executions
WHERE tenant_id = $1 AND deleted_at IS NULL AND last_seq > 0
ORDER BY execution_id COLLATE "C"
FOR UPDATE"#;

/// Locks the head rows of the executions among `$1` that are live and whose last event
/// is still older than `$2` (ns); returns their ids. `FOR UPDATE` checks the condition
/// again on the newest version of a row it waited for: an execution appended to since
/// it was chosen is not locked, and kept.
const STALE_SQL: &str = r#"
SELECT execution_id FROM execlog_executions
WHERE execution_id = ANY($1::text[]) AND deleted_at IS NULL AND last_seq > 0
  AND last_ts_ns < $2::bigint
ORDER BY execution_id COLLATE "C"
FOR UPDATE"#;

/// A prune's next chunk: at most `$3` live executions after `$1` (in the primary key's
/// order, so the chunks walk its index) whose last event is older than `$2` (ns).
/// Read without locks; [`STALE_SQL`] decides under them.
const CANDIDATES_SQL: &str = "
SELECT execution_id FROM execlog_executions
WHERE execution_id > $1 AND deleted_at IS NULL AND last_seq > 0 AND last_ts_ns < $2::bigint
ORDER BY execution_id
LIMIT $3";

/// Locks the event rows [`ERASE_SQL`] changes: in each transaction that wrote events of
/// the executions `$1`, the rows from its first such event on, in `(xid, id)` order.
/// Two deletions touching the same transaction's rows thereby take turns without a
/// deadlock, and the later one's [`ERASE_SQL`] sees the earlier one's ranks.
const LOCK_EVENTS_SQL: &str = "
SELECT count(*) FROM (
    SELECT 1 FROM execlog_events e
    JOIN (SELECT xid, min(id) AS first FROM execlog_events
          WHERE execution_id = ANY($1::text[]) GROUP BY xid) d
      ON e.xid = d.xid AND e.id >= d.first
    ORDER BY e.xid, e.id
    FOR UPDATE OF e
) locked";

/// Erases the executions `$1` (locked): in each transaction that wrote events of them,
/// gives every other event after the first of theirs that has no `ord` yet its rank
/// (its place among the transaction's events: those without `ord` are a prefix, where
/// nothing was deleted before, so the place is the rank); deletes their events and
/// idempotency keys; marks their head rows deleted; inserts the commit token `$2`.
/// Returns the number of head rows marked.
const ERASE_SQL: &str = "
WITH touched AS (
    SELECT xid, min(id) AS first FROM execlog_events
    WHERE execution_id = ANY($1::text[]) GROUP BY xid
), ranked AS (
    SELECT e.xid, e.id, t.first, row_number() OVER (PARTITION BY e.xid ORDER BY e.id) - 1 AS rank
    FROM execlog_events e JOIN touched t ON t.xid = e.xid
), numbered AS (
    UPDATE execlog_events e SET ord = r.rank
    FROM ranked r
    WHERE e.xid = r.xid AND e.id = r.id AND r.id > r.first
      AND e.ord IS NULL AND e.execution_id <> ALL($1::text[])
), events AS (
    DELETE FROM execlog_events WHERE execution_id = ANY($1::text[])
), keys AS (
    DELETE FROM execlog_idempotency WHERE execution_id = ANY($1::text[])
), token AS (
    INSERT INTO execlog_commits (token) VALUES ($2::text)
)
UPDATE execlog_executions SET deleted_at = now()
WHERE execution_id = ANY($1::text[]) AND deleted_at IS NULL";

/// Executions a prune looks at per transaction.
const PRUNE_CHUNK: i64 = 1000;

/// What one deletion deletes (ids in their stored form).
enum Doomed {
    Execution(String),
    Tenant(String),
    /// A chunk of a prune: those still older than `cutoff_ns`.
    Stale {
        executions: Vec<String>,
        cutoff_ns: i64,
    },
}

/// The connection of the store's administrative transactions (deletions, prunes, and
/// forks, `fork.rs`), made on first use; one at a time.
#[derive(Default)]
pub(crate) struct Deleter {
    conn: Mutex<Option<Conn>>,
}

pub(super) struct Conn {
    pub(super) client: Client,
    execution: Statement,
    tenant: Statement,
    stale: Statement,
    candidates: Statement,
    lock_events: Statement,
    erase: Statement,
    /// `fork.rs`'s statements.
    pub(super) fork: super::fork::Statements,
}

/// How one try of an administrative transaction ended.
pub(super) enum Attempt<T> {
    /// Committed (or nothing to do): what it did (for a deletion, the executions
    /// deleted).
    Done(T),
    /// Certainly not committed; may be tried again.
    NotCommitted(Error),
    /// Refused for a reason a retry would not change.
    Refused(Error),
    /// The connection broke around the `COMMIT` of the transaction carrying `token`,
    /// which did `done`.
    InDoubt {
        token: String,
        done: T,
        error: Error,
    },
}

/// One administrative transaction, tried by [`Deleter::run`].
pub(super) trait Job: Sync {
    type Done: Send;
    /// What it is, for logs and errors: "a deletion".
    const WHAT: &'static str;
    /// How a caller learns the outcome of a commit left in doubt.
    const HOW_TO_TELL: &'static str;
    /// One try, on the kept connection (or a new one).
    fn attempt<'a>(
        &'a self,
        slot: &'a mut Option<Conn>,
        target: &'a Target,
    ) -> impl Future<Output = Attempt<Self::Done>> + Send + 'a;
}

impl Job for Doomed {
    type Done = Vec<String>;
    const WHAT: &'static str = "a deletion";
    const HOW_TO_TELL: &'static str =
        "asking again, or deleting again, tells: a deleted execution reads as unknown";

    fn attempt<'a>(
        &'a self,
        slot: &'a mut Option<Conn>,
        target: &'a Target,
    ) -> impl Future<Output = Attempt<Vec<String>>> + Send + 'a {
        attempt(slot, target, self)
    }
}

impl Deleter {
    /// Runs `job` (for a deletion, the module docs); returns what it did. Tries again
    /// until `reconnect_timeout` while the server is unreachable or rolled back for
    /// contention. Must run on the store's runtime.
    pub(super) async fn run<J: Job>(&self, target: &Target, job: &J) -> Result<J::Done> {
        let mut slot = self.conn.lock().await;
        let since = Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            let error = match job.attempt(&mut slot, target).await {
                Attempt::Done(done) => return Ok(done),
                Attempt::Refused(e) => return Err(e),
                Attempt::NotCommitted(e) => e,
                Attempt::InDoubt { token, done, error } => {
                    match resolve::<J>(&mut slot, target, &token, error, since).await {
                        Ok(None) => return Ok(done),
                        Ok(Some(error)) => error,
                        Err(e) => return Err(e),
                    }
                }
            };
            if since.elapsed() >= target.reconnect_timeout {
                return Err(error);
            }
            log::debug!("execlog: retrying {}: {error}", J::WHAT);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// The next chunk of a prune ([`CANDIDATES_SQL`]), asked until `reconnect_timeout`.
    async fn candidates(
        &self,
        target: &Target,
        after: &str,
        cutoff_ns: i64,
    ) -> Result<Vec<String>> {
        let mut slot = self.conn.lock().await;
        let since = Instant::now();
        loop {
            let conn = match take(&mut slot, target).await {
                Ok(conn) => conn,
                Err(e @ Error::Unavailable { .. })
                    if since.elapsed() < target.reconnect_timeout =>
                {
                    log::debug!("execlog: retrying a prune's look: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let params: [&(dyn ToSql + Sync); 3] = [&after, &cutoff_ns, &PRUNE_CHUNK];
            match conn.client.query(&conn.candidates, &params).await {
                Ok(rows) => {
                    *slot = Some(conn);
                    return rows
                        .iter()
                        .map(|row| row.try_get(0).map_err(|e| target.error(&e)))
                        .collect();
                }
                Err(e)
                    if is_connection_loss(&conn.client, &e)
                        && since.elapsed() < target.reconnect_timeout =>
                {
                    log::debug!("execlog: retrying a prune's look: {e}");
                }
                Err(e) => {
                    if !conn.client.is_closed() {
                        *slot = Some(conn);
                    }
                    return Err(target.error(&e));
                }
            }
        }
    }

    /// Closes the connection (the store is closing: no deletion is running).
    pub(crate) fn close(&self) {
        if let Ok(mut slot) = self.conn.try_lock() {
            slot.take();
        }
    }
}

/// The kept connection if it is alive, else a new one.
pub(super) async fn take(slot: &mut Option<Conn>, target: &Target) -> Result<Conn> {
    if let Some(conn) = slot.take().filter(|c| !c.client.is_closed()) {
        return Ok(conn);
    }
    let client = target.connect().await?;
    let err = |e: tokio_postgres::Error| target.error(&e);
    Ok(Conn {
        execution: client.prepare(EXECUTION_SQL).await.map_err(err)?,
        tenant: client.prepare(TENANT_SQL).await.map_err(err)?,
        stale: client.prepare(STALE_SQL).await.map_err(err)?,
        candidates: client.prepare(CANDIDATES_SQL).await.map_err(err)?,
        lock_events: client.prepare(LOCK_EVENTS_SQL).await.map_err(err)?,
        erase: client.prepare(ERASE_SQL).await.map_err(err)?,
        fork: super::fork::Statements::prepare(&client, target).await?,
        client,
    })
}

/// One transaction (module docs, steps 1 and 2). No client-side time limit: erasing a
/// large tenant may take long; a dead server is noticed by the connection's TCP
/// keepalives and user timeout (`connect.rs`).
async fn attempt(
    slot: &mut Option<Conn>,
    target: &Target,
    doomed: &Doomed,
) -> Attempt<Vec<String>> {
    let conn = match take(slot, target).await {
        Ok(conn) => conn,
        Err(e @ Error::Unavailable { .. }) => return Attempt::NotCommitted(e),
        Err(e) => return Attempt::Refused(e),
    };
    // Step 1. Nothing can commit before step 2 sends `COMMIT`.
    let (statement, params): (&Statement, Vec<&(dyn ToSql + Sync)>) = match doomed {
        Doomed::Execution(id) => (&conn.execution, vec![id]),
        Doomed::Tenant(tenant) => (&conn.tenant, vec![tenant]),
        Doomed::Stale {
            executions,
            cutoff_ns,
        } => (&conn.stale, vec![executions, cutoff_ns]),
    };
    let (begun, locked) = tokio::join!(
        conn.client.batch_execute("BEGIN"),
        conn.client.query(statement, &params),
    );
    let ids: std::result::Result<Vec<String>, _> = begun
        .and(locked)
        .and_then(|rows| rows.iter().map(|row| row.try_get(0)).collect());
    let ids = match ids {
        Ok(ids) => ids,
        Err(e) => return failed(slot, conn, target, &e).await,
    };
    if ids.is_empty() {
        return match conn.client.batch_execute("ROLLBACK").await {
            Ok(()) => {
                *slot = Some(conn);
                Attempt::Done(ids)
            }
            // Nothing was to be deleted, and nothing was written.
            Err(e) if is_connection_loss(&conn.client, &e) => Attempt::Done(ids),
            Err(e) => Attempt::Refused(target.error(&e)),
        };
    }
    // Step 2.
    let token = ExecutionId::new().to_string();
    let lock: [&(dyn ToSql + Sync); 1] = [&ids];
    let erase: [&(dyn ToSql + Sync); 2] = [&ids, &token];
    let (locked, erased, commit) = tokio::join!(
        conn.client.query_one(&conn.lock_events, &lock),
        conn.client.execute(&conn.erase, &erase),
        conn.client.batch_execute("COMMIT"),
    );
    let failure = match (locked, erased, commit) {
        (Ok(_), Ok(_), Ok(())) => {
            *slot = Some(conn);
            return Attempt::Done(ids);
        }
        (Err(e), _, _) | (Ok(_), Err(e), _) | (Ok(_), Ok(_), Err(e)) => e,
    };
    let error = target.error(&failure);
    if is_connection_loss(&conn.client, &failure) {
        log::warn!(
            "execlog: lost the connection to {} while committing a deletion: {error}",
            target.server
        );
        return Attempt::InDoubt {
            token,
            done: ids,
            error,
        };
    }
    // A refusal aborted the transaction: the pipelined COMMIT rolled it back.
    *slot = Some(conn);
    classify(&failure, error)
}

/// A failure before `COMMIT` was sent: nothing was written.
pub(super) async fn failed<T>(
    slot: &mut Option<Conn>,
    conn: Conn,
    target: &Target,
    failure: &tokio_postgres::Error,
) -> Attempt<T> {
    let error = target.error(failure);
    if is_connection_loss(&conn.client, failure) {
        return Attempt::NotCommitted(error);
    }
    if conn.client.batch_execute("ROLLBACK").await.is_ok() {
        *slot = Some(conn);
    }
    classify(failure, error)
}

/// A refusal: tried again when the server rolled back for contention.
pub(super) fn classify<T>(failure: &tokio_postgres::Error, error: Error) -> Attempt<T> {
    match failure.code().map(|c| c.code()) {
        // Serialization failure, deadlock, a cancelled statement.
        Some("40001" | "40P01" | "57014") => Attempt::NotCommitted(error),
        _ => Attempt::Refused(error),
    }
}

/// Whether the transaction carrying `token` committed (`group_commit::settle`):
/// `None` if it did, `Some(error)` (why it was lost) if it did not and now never will.
/// Asks at least once, then until `reconnect_timeout` has passed since `since`.
async fn resolve<J: Job>(
    slot: &mut Option<Conn>,
    target: &Target,
    token: &str,
    lost: Error,
    since: Instant,
) -> Result<Option<Error>> {
    let mut error;
    loop {
        let left = target.reconnect_timeout.saturating_sub(since.elapsed());
        let asked = tokio::time::timeout(left.max(Duration::from_secs(1)), async {
            let mut conn = take(slot, target).await?;
            let settled = settle(&mut conn.client, token, "SELECT 1", &[])
                .await
                .map_err(|e| target.error(&e));
            if !conn.client.is_closed() {
                *slot = Some(conn);
            }
            settled
        });
        match asked.await {
            Ok(Ok(Some(_))) => return Ok(None),
            Ok(Ok(None)) => return Ok(Some(lost)),
            Ok(Err(e)) => error = e,
            Err(_) => {
                error = Error::Unavailable {
                    server: target.server.clone(),
                    reason: format!(
                        "no answer within {:?} (reconnect_timeout)",
                        target.reconnect_timeout
                    ),
                }
            }
        }
        if since.elapsed() >= target.reconnect_timeout {
            return Err(match in_doubt(error) {
                Error::Unavailable { server, reason } => Error::Unavailable {
                    server,
                    reason: format!("{reason} ({}: {})", J::WHAT, J::HOW_TO_TELL),
                },
                other => other,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl PgStore {
    /// Deletes an execution, durably; `false` if there was none to delete. The
    /// blocking twin of [`Lifecycle::delete_execution`].
    pub fn delete_execution_blocking(&self, execution_id: &ExecutionId) -> Result<bool> {
        block_on(self.delete_execution_now(execution_id))
    }

    /// Deletes every execution a tenant has, durably, in one transaction; returns how
    /// many. The blocking twin of [`Lifecycle::delete_tenant`].
    pub fn delete_tenant_blocking(&self, tenant_id: &TenantId) -> Result<u64> {
        block_on(self.delete_tenant_now(tenant_id))
    }

    /// Deletes, durably, every execution whose last event is older than `older_than`;
    /// returns how many. The blocking twin of [`Lifecycle::prune`].
    pub fn prune_blocking(&self, older_than: Duration) -> Result<u64> {
        block_on(self.prune_now(older_than))
    }

    async fn delete_execution_now(&self, execution_id: &ExecutionId) -> Result<bool> {
        validate_id("execution", execution_id.as_str())?;
        let doomed = Doomed::Execution(escape(execution_id.as_str()).into_owned());
        Ok(self.erase(doomed).await? > 0)
    }

    async fn delete_tenant_now(&self, tenant_id: &TenantId) -> Result<u64> {
        validate_id("tenant", tenant_id.as_str())?;
        self.erase(Doomed::Tenant(escape(tenant_id.as_str()).into_owned()))
            .await
    }

    /// Runs one deletion on the store's runtime; returns how many it deleted.
    async fn erase(&self, doomed: Doomed) -> Result<u64> {
        self.administer(move |deleter, target, hub| async move {
            let ids = deleter.run(&target, &doomed).await?;
            hub.deleted(&ids);
            Ok(ids.len() as u64)
        })
        .await
    }

    async fn prune_now(&self, older_than: Duration) -> Result<u64> {
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let keep_ns = i64::try_from(older_than.as_nanos()).unwrap_or(i64::MAX);
        let cutoff_ns = now_ns.saturating_sub(keep_ns);
        self.administer(move |deleter, target, hub| async move {
            let mut after = String::new();
            let mut deleted = 0;
            loop {
                let executions = deleter.candidates(&target, &after, cutoff_ns).await?;
                let Some(last) = executions.last() else {
                    return Ok(deleted);
                };
                after = last.clone();
                let chunk = Doomed::Stale {
                    executions,
                    cutoff_ns,
                };
                let ids = deleter.run(&target, &chunk).await?;
                hub.deleted(&ids);
                deleted += ids.len() as u64;
            }
        })
        .await
    }

    /// Runs `job` on the store's runtime, to its end even if the caller stops waiting,
    /// admitted like a guarded append: `close` waits for it.
    pub(super) async fn administer<F, J, T>(&self, job: J) -> Result<T>
    where
        J: FnOnce(Arc<Deleter>, Arc<Target>, Arc<Hub>) -> F,
        F: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let admitted = Arc::clone(&self.gate).read_owned().await;
        if self.sender.lock().is_none() {
            return Err(Error::Closed);
        }
        let work = job(
            Arc::clone(&self.deleter),
            Arc::clone(&self.target),
            Arc::clone(&self.follow),
        );
        let task = self.handle.spawn(async move {
            let done = work.await;
            drop(admitted);
            done
        });
        task.await.map_err(panicked)?
    }
}

#[async_trait]
impl Lifecycle for PgStore {
    async fn delete_execution(&self, execution_id: &ExecutionId) -> anyhow::Result<bool> {
        Ok(self.delete_execution_now(execution_id).await?)
    }

    async fn delete_tenant(&self, tenant_id: &TenantId) -> anyhow::Result<u64> {
        Ok(self.delete_tenant_now(tenant_id).await?)
    }

    async fn prune(&self, older_than: Duration) -> anyhow::Result<u64> {
        Ok(self.prune_now(older_than).await?)
    }

    async fn fork_execution(
        &self,
        source: &ExecutionId,
        at_sequence: u64,
        new_id: &ExecutionId,
    ) -> anyhow::Result<()> {
        Ok(self.fork_now(source, at_sequence, new_id).await?)
    }

    async fn fork_point(&self, execution_id: &ExecutionId) -> anyhow::Result<Option<ForkPoint>> {
        Ok(self.fork_point_now(execution_id).await?)
    }
}
