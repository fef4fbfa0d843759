//! Forks on [`PgStore`]: [`Lifecycle::fork_execution`](crate::Lifecycle::fork_execution)
//! and `fork_point`, with their blocking twins (docs/POSTGRES.md, "Forks").
//!
//! A fork copies the source's events `1..=at` under the new id, in one transaction on
//! the store's administrative connection (`deletion.rs`: made on first use, one
//! deletion or fork of this store at a time), in two round trips:
//! 1. `BEGIN`, and [`SOURCE_SQL`]: lock the source's head row `FOR KEY SHARE` if it is
//!    live and has events; read its tenant and last sequence. None, or `at` beyond
//!    its last sequence: `ROLLBACK`, `InvalidArgument`, nothing was written.
//! 2. Pipelined: [`FORK_SQL`] inserts the fork's head row (`ON CONFLICT DO NOTHING`),
//!    and only if it did, copies the source's events `1..=at` (sequence, timestamp and
//!    body as they are) and inserts a commit token; `COMMIT`. A head row that was not
//!    inserted means the id is taken: [`USED_SQL`] then tells a deleted id (`Deleted`)
//!    from a live one (`InvalidArgument`); that transaction wrote nothing (it only
//!    held the lock). A connection lost around the `COMMIT` is resolved with the
//!    token (`group_commit::settle`), as appends and deletions are.
//!
//! Invariants:
//! - The fork's head row records its origin (`fork_source`, `fork_at`, schema version
//!   5) and the source's tenant; its `last_seq` is `at`, its `last_ts_ns` the
//!   timestamp of the source's event `at`, its `last_xid` this transaction's. Appends
//!   to it continue from there like appends to any execution.
//! - `FOR KEY SHARE` conflicts with the `FOR UPDATE` a deletion (and an import) takes
//!   on the source's head row, not with the appends' upserts (`FOR NO KEY UPDATE`) nor
//!   with other forks: a deletion of the source waits for the fork's commit, and a fork
//!   that waited for a deletion's finds the mark and is refused. Under `READ
//!   COMMITTED`, [`FORK_SQL`] runs after the lock was granted and sees every event the
//!   head row counts (they committed with it).
//! - Holding the source's lock, the fork waits only where its insert meets another
//!   transaction inserting the same new id (it reads the events without locking
//!   them): another fork, whose row it then finds (one of two forks to one id wins),
//!   or an append creating that execution, which waits at most 50 ms for any lock
//!   (`lock_timeout`) and so cannot hold a cycle with a deletion for long; a deadlock
//!   the server still reports is retried.
//! - The copies are rows of the fork; deleting the source (`deletion.rs`) leaves them,
//!   deleting the fork takes them. Followers skip them (`read::PAGE_SQL`): they are
//!   not new events.

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use super::connect::{Target, is_connection_loss};
use super::deletion::{Attempt, Conn, Job, classify, failed, take};
use super::follow::MAX_TRANSACTION_EVENTS;
use super::read::{Query, bad_row, clamp};
use super::sql_id::{escape, unescape};
use super::{PgStore, block_on};
use crate::error::{Error, Result};
use crate::fork::ForkPoint;
use crate::ids::{ExecutionId, validate_id};
use crate::{ParentLink, ParentRelation};

/// Locks the head row of the live execution `$1` with events (`FOR KEY SHARE`);
/// returns its tenant and last sequence, or nothing.
const SOURCE_SQL: &str = "
SELECT tenant_id, last_seq FROM execlog_executions
WHERE execution_id = $1 AND deleted_at IS NULL AND last_seq > 0
FOR KEY SHARE";

/// Makes `$2` a fork of `$1` (locked, of tenant `$3`) sharing its events `1..=$4`,
/// unless the id `$2` is taken; with the commit token `$5`. Returns whether it
/// inserted the head row, and how many events it copied. The head row's timestamp is
/// the source's event `$4`'s (NULL, refused by the column, if the rows were removed
/// behind the store's back).
const FORK_SQL: &str = "
WITH head AS (
    INSERT INTO execlog_executions
        (execution_id, tenant_id, last_seq, last_ts_ns, last_xid, fork_source, fork_at)
    VALUES ($2::text, $3::text, $4::bigint,
            (SELECT ts_ns FROM execlog_events WHERE execution_id = $1::text AND seq = $4::bigint),
            pg_current_xact_id(), $1::text, $4::bigint)
    ON CONFLICT (execution_id) DO NOTHING
    RETURNING execution_id
), copied AS (
    INSERT INTO execlog_events (execution_id, seq, ts_ns, body)
    SELECT h.execution_id, e.seq, e.ts_ns, e.body
    FROM head h, execlog_events e
    WHERE e.execution_id = $1::text AND e.seq <= $4::bigint
    ORDER BY e.seq
    RETURNING 1
), token AS (
    INSERT INTO execlog_commits (token) SELECT $5::text FROM head
)
SELECT (SELECT count(*) FROM head), (SELECT count(*) FROM copied)";

/// Whether the head row of `$1` is marked deleted (asked when a fork found the id
/// taken).
const USED_SQL: &str =
    "SELECT deleted_at IS NOT NULL FROM execlog_executions WHERE execution_id = $1";

/// The fork statements, prepared on the administrative connection.
pub(super) struct Statements {
    source: Statement,
    fork: Statement,
    used: Statement,
}

impl Statements {
    pub(super) async fn prepare(client: &Client, target: &Target) -> Result<Statements> {
        let err = |e: tokio_postgres::Error| target.error(&e);
        Ok(Statements {
            source: client.prepare(SOURCE_SQL).await.map_err(err)?,
            fork: client.prepare(FORK_SQL).await.map_err(err)?,
            used: client.prepare(USED_SQL).await.map_err(err)?,
        })
    }
}

/// One fork request, ids in their stored form beside the caller's.
struct Fork {
    source: ExecutionId,
    new_id: ExecutionId,
    stored_source: String,
    stored_new: String,
    at: u64,
}

impl Job for Fork {
    type Done = ();
    const WHAT: &'static str = "a fork";
    const HOW_TO_TELL: &'static str =
        "fork_point of the new id tells whether it was made; forking again is refused if it was";

    fn attempt<'a>(
        &'a self,
        slot: &'a mut Option<Conn>,
        target: &'a Target,
    ) -> impl Future<Output = Attempt<()>> + Send + 'a {
        attempt(self, slot, target)
    }
}

/// One transaction (module docs, steps 1 and 2).
async fn attempt(fork: &Fork, slot: &mut Option<Conn>, target: &Target) -> Attempt<()> {
    let conn = match take(slot, target).await {
        Ok(conn) => conn,
        Err(e @ Error::Unavailable { .. }) => return Attempt::NotCommitted(e),
        Err(e) => return Attempt::Refused(e),
    };
    // Step 1. Nothing can commit before step 2 sends `COMMIT`.
    let source: [&(dyn ToSql + Sync); 1] = [&fork.stored_source];
    let (begun, locked) = tokio::join!(
        conn.client.batch_execute("BEGIN"),
        conn.client.query_opt(&conn.fork.source, &source),
    );
    let source = match begun.and(locked) {
        Ok(row) => row,
        Err(e) => return failed(slot, conn, target, &e).await,
    };
    let checked = match source.as_ref().map(head).transpose() {
        Err(e) => Err(e),
        Ok(None) => Err(Error::InvalidArgument(format!(
            "no execution {} to fork",
            fork.source
        ))),
        Ok(Some((_, latest))) if fork.at > latest => Err(Error::InvalidArgument(format!(
            "a fork shares 1 to {latest} events of {}, not {}",
            fork.source, fork.at
        ))),
        Ok(Some(_)) if fork.at > MAX_TRANSACTION_EVENTS as u64 => Err(Error::TooLarge {
            what: "events a fork copies on PostgreSQL (one transaction numbers its events \
                   in 24 bits of their positions)",
            size: fork.at,
            limit: MAX_TRANSACTION_EVENTS as u64,
        }),
        Ok(Some((tenant, _))) => Ok(tenant),
    };
    let tenant = match checked {
        Ok(tenant) => tenant,
        Err(refusal) => return rolled_back(slot, conn, target, refusal).await,
    };
    // Step 2.
    let token = ExecutionId::new().to_string();
    let at = clamp(fork.at);
    let params: [&(dyn ToSql + Sync); 5] =
        [&fork.stored_source, &fork.stored_new, &tenant, &at, &token];
    let (made, commit) = tokio::join!(
        conn.client.query_one(&conn.fork.fork, &params),
        conn.client.batch_execute("COMMIT"),
    );
    let failure = match (made, commit) {
        (Ok(row), Ok(())) => {
            let counts: std::result::Result<(i64, i64), _> =
                row.try_get(0).and_then(|head| Ok((head, row.try_get(1)?)));
            return match counts {
                Ok((1, copied)) => {
                    if u64::try_from(copied) != Ok(fork.at) {
                        // Rows removed behind the store's back: the fork reads as the
                        // source did.
                        log::warn!(
                            "execlog: fork {} of {} copied {copied} events, not {}: the \
                             source has gaps",
                            fork.new_id,
                            fork.source,
                            fork.at
                        );
                    }
                    *slot = Some(conn);
                    Attempt::Done(())
                }
                Ok(_) => taken(fork, slot, conn, target).await,
                Err(e) => {
                    *slot = Some(conn);
                    Attempt::Refused(bad_row(e.to_string()))
                }
            };
        }
        (Err(e), _) | (Ok(_), Err(e)) => e,
    };
    let error = target.error(&failure);
    if is_connection_loss(&conn.client, &failure) {
        log::warn!(
            "execlog: lost the connection to {} while committing a fork: {error}",
            target.server
        );
        return Attempt::InDoubt {
            token,
            done: (),
            error,
        };
    }
    // A refusal aborted the transaction: the pipelined COMMIT rolled it back.
    *slot = Some(conn);
    classify(&failure, error)
}

/// The source's tenant (as stored) and last sequence, from [`SOURCE_SQL`]'s row.
fn head(row: &Row) -> Result<(String, u64)> {
    let bad = |e: tokio_postgres::Error| bad_row(e.to_string());
    let tenant: String = row.try_get(0).map_err(bad)?;
    let last: i64 = row.try_get(1).map_err(bad)?;
    let last = u64::try_from(last).map_err(|_| bad_row(format!("last_seq {last}")))?;
    Ok((tenant, last))
}

/// Ends step 1's transaction, which wrote nothing, with `refusal`.
async fn rolled_back(
    slot: &mut Option<Conn>,
    conn: Conn,
    target: &Target,
    refusal: Error,
) -> Attempt<()> {
    match conn.client.batch_execute("ROLLBACK").await {
        Ok(()) => *slot = Some(conn),
        // The server ends the transaction with the session; nothing was written.
        Err(e) if is_connection_loss(&conn.client, &e) => {}
        Err(e) => return Attempt::Refused(target.error(&e)),
    }
    Attempt::Refused(refusal)
}

/// The fork found its id taken (its transaction committed nothing): `Deleted` if the
/// id was deleted, else `InvalidArgument`. The head row it conflicted with was
/// committed (the insert waits for one in progress), and head rows are never removed.
async fn taken(fork: &Fork, slot: &mut Option<Conn>, conn: Conn, target: &Target) -> Attempt<()> {
    let asked = conn
        .client
        .query_opt(&conn.fork.used, &[&fork.stored_new])
        .await;
    let answer = match asked {
        Ok(Some(row)) => match row.try_get::<_, bool>(0) {
            Ok(true) => Attempt::Refused(Error::Deleted),
            Ok(false) => Attempt::Refused(Error::InvalidArgument(format!(
                "execution {} exists already: a fork needs a new id",
                fork.new_id
            ))),
            Err(e) => Attempt::Refused(bad_row(e.to_string())),
        },
        Ok(None) => Attempt::Refused(bad_row(format!(
            "execution {} was taken, then had no head row",
            fork.new_id
        ))),
        Err(e) if is_connection_loss(&conn.client, &e) => {
            // Nothing was written: the next try asks again.
            return Attempt::NotCommitted(target.error(&e));
        }
        Err(e) => Attempt::Refused(target.error(&e)),
    };
    *slot = Some(conn);
    answer
}

impl PgStore {
    /// Makes `new_id` a fork of `source`: its events `1..=at_sequence` are copies of
    /// the source's (same sequences, events and timestamps), its own appends follow
    /// from `at_sequence + 1`. Durable when it returns. The blocking twin of
    /// [`Lifecycle::fork_execution`](crate::Lifecycle::fork_execution).
    pub fn fork_execution_blocking(
        &self,
        source: &ExecutionId,
        at_sequence: u64,
        new_id: &ExecutionId,
    ) -> Result<()> {
        block_on(self.fork_now(source, at_sequence, new_id))
    }

    /// Where `execution_id` was forked from, if it is a live fork. The blocking twin of
    /// [`Lifecycle::fork_point`](crate::Lifecycle::fork_point).
    pub fn fork_point_blocking(&self, execution_id: &ExecutionId) -> Result<Option<ForkPoint>> {
        block_on(self.fork_point_now(execution_id))
    }

    pub(super) async fn fork_now(
        &self,
        source: &ExecutionId,
        at_sequence: u64,
        new_id: &ExecutionId,
    ) -> Result<()> {
        validate_id("execution", source.as_str())?;
        validate_id("execution", new_id.as_str())?;
        if at_sequence == 0 {
            return Err(Error::InvalidArgument(format!(
                "a fork shares at least 1 event of {source}, not 0"
            )));
        }
        let fork = Fork {
            stored_source: escape(source.as_str()).into_owned(),
            stored_new: escape(new_id.as_str()).into_owned(),
            source: source.clone(),
            new_id: new_id.clone(),
            at: at_sequence,
        };
        self.administer(move |deleter, target, _| async move { deleter.run(&target, &fork).await })
            .await
    }

    pub(super) async fn fork_point_now(
        &self,
        execution_id: &ExecutionId,
    ) -> Result<Option<ForkPoint>> {
        validate_id("execution", execution_id.as_str())?;
        let rows = self
            .query(Query::ForkPoint {
                execution: escape(execution_id.as_str()).into_owned(),
            })
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let bad = |e: tokio_postgres::Error| bad_row(e.to_string());
        let source: Option<&str> = row.try_get(0).map_err(bad)?;
        let at: Option<i64> = row.try_get(1).map_err(bad)?;
        let (source, at) = match (source, at) {
            (None, None) => return Ok(None),
            (Some(source), Some(at)) => (source, at),
            _ => return Err(bad_row(format!("fork point of {execution_id}"))),
        };
        let source = unescape(source).ok_or_else(|| bad_row(format!("fork source {source:?}")))?;
        let at = u64::try_from(at).map_err(|_| bad_row(format!("fork_at {at}")))?;
        Ok(Some(ForkPoint {
            parent: ParentLink {
                execution_id: ExecutionId::from(&*source),
                step_id: None,
                relation: ParentRelation::Fork,
            },
            at_sequence: at,
        }))
    }
}
