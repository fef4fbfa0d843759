//! Guarded appends on the server: an idempotency key and an expected sequence checked
//! atomically with the write, each append in a transaction of its own.
//!
//! One append, on a connection of the guarded pool (`PgOptions::guarded_connections`):
//! 1. One round trip, pipelined: `BEGIN` with a `lock_timeout` of [`BUSY_WAIT`];
//!    [`LOCK_SQL`] locks the execution's head row, or creates it (`last_seq` 0) when
//!    there is none, which also makes appends racing to create the execution wait for
//!    this transaction; then, as separate statements, [`HEAD_SQL`] reads the head row
//!    and [`KEY_SQL`] looks the key up. Under `READ COMMITTED` each statement takes a
//!    new snapshot, so these two, running after the lock was granted, see everything
//!    the previous holder of the lock committed (one statement that locked and read
//!    would read the other tables as they were before its lock wait).
//! 2. The checks, in the order of `src/guard.rs`: the execution is not deleted (its
//!    head row is not marked, `deletion.rs`: else `Error::Deleted`); the tenant owns
//!    the execution; a key
//!    found answers the retry (a replay if its events' bodies equal this append's,
//!    compared on the server by [`SAME_SQL`], else `IdempotencyConflict`); the
//!    expected sequence holds. A refusal rolls back: nothing is written, no sequence
//!    is used, a head row created in step 1 is gone.
//! 3. One round trip, pipelined: [`WRITE_SQL`] advances the head row, inserts the
//!    events, the key with its sequences and a commit token, and `COMMIT`.
//!
//! Invariants:
//! - Every append to an execution, guarded or not, and every import, holds its head
//!   row's lock from before it reads `last_seq` to its commit; so the checks and the
//!   write are atomic against all of them, from any process. A guarded transaction
//!   holds one head row lock and waits for no other, so it cannot deadlock with the
//!   group commit (which takes several, in one order).
//! - An append is answered `Ok` only after its commit returned, or after the in-doubt
//!   resolution of `group_commit.rs` ([`settle`]) found its token committed; it is
//!   then answered with the sequences read back from the events its transaction wrote,
//!   and `replayed: false` (it was this call's own commit). Not committed: tried again
//!   from step 1. Unknown within `reconnect_timeout`: `Error::Unavailable` saying so.
//! - A connection is never parked on a lock for long: when the lock wait of step 1
//!   runs out, the append gives its connection back and queues again, so guarded
//!   appends to other executions keep flowing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use super::connect::{Target, is_connection_loss};
use super::group_commit::{BUSY_WAIT, Clock, PRUNE_EVERY, in_doubt, prune_tokens, settle};
use crate::append::Bodies;
use crate::error::{Error, Result};
use crate::guard::{AppendOutcome, ExpectedSequence};
use crate::ids::{ExecutionId, TenantId};

/// Locks the head row of `$1`, or inserts it (owned by `$2`, `last_seq` 0); returns a
/// row only when it inserted. `DO UPDATE … WHERE false` locks the existing row without
/// writing a new version of it.
const LOCK_SQL: &str = "
INSERT INTO execlog_executions AS h (execution_id, tenant_id, last_seq, last_ts_ns)
VALUES ($1, $2, 0, 0)
ON CONFLICT (execution_id) DO UPDATE SET last_seq = h.last_seq WHERE false
RETURNING h.last_seq";

const HEAD_SQL: &str = "
SELECT tenant_id, last_seq, last_ts_ns, deleted_at IS NOT NULL
FROM execlog_executions WHERE execution_id = $1";

const KEY_SQL: &str =
    "SELECT first_seq, last_seq FROM execlog_idempotency WHERE execution_id = $1 AND key = $2";

/// How many of the events `$2..=$3` of `$1` have the bodies `$4`, in order.
const SAME_SQL: &str = "
SELECT count(*) FROM execlog_events e
WHERE e.execution_id = $1 AND e.seq BETWEEN $2 AND $3
  AND e.body = ($4::bytea[])[(e.seq - $2 + 1)::int]";

/// Advances the head row of `$1` from `$2` to `$3` (a backstop: only from `$2`),
/// inserts the events `$5` from `$2 + 1` stamped `$4`, the key `$6` (if not NULL) with
/// their sequences, and the commit token `$7`. Returns the number of head rows
/// advanced: 1. Records this transaction as the execution's last writer, and fails
/// with a serialization failure (retried) if a newer one wrote it, as `GROUP_SQL` in
/// `group_commit.rs` does (the follow order); the events are inserted in order.
const WRITE_SQL: &str = "
WITH head AS (
    UPDATE execlog_executions
    SET last_seq = CASE WHEN last_xid > pg_current_xact_id()
                        THEN execlog_out_of_order(execution_id, last_xid) ELSE $3 END,
        last_ts_ns = greatest(last_ts_ns, $4),
        last_xid = pg_current_xact_id()
    WHERE execution_id = $1 AND last_seq = $2 AND deleted_at IS NULL
    RETURNING execution_id
), events AS (
    INSERT INTO execlog_events (execution_id, seq, ts_ns, body)
    SELECT h.execution_id, $2 + b.n, $4, b.body
    FROM head h, unnest($5::bytea[]) WITH ORDINALITY AS b(body, n)
    ORDER BY b.n
), key AS (
    INSERT INTO execlog_idempotency (execution_id, key, first_seq, last_seq)
    SELECT h.execution_id, $6, $2 + 1, $3 FROM head h WHERE $6::bytea IS NOT NULL
), token AS (
    INSERT INTO execlog_commits (token) VALUES ($7)
)
SELECT count(*) FROM head";

/// The sequences the transaction carrying token `$1` stored in execution `$2`.
const RANGE_SQL: &str = "
SELECT min(seq), max(seq) FROM execlog_events
WHERE xid = (SELECT xid FROM execlog_commits WHERE token = $1) AND execution_id = $2";

/// A guarded append, checked and encoded, as the server takes it.
pub(crate) struct Job {
    pub(crate) execution_id: ExecutionId,
    pub(crate) tenant_id: TenantId,
    /// The ids' stored forms (`sql_id.rs`).
    pub(crate) execution: String,
    pub(crate) tenant: String,
    pub(crate) bodies: Bodies,
    pub(crate) expected: ExpectedSequence,
    pub(crate) key: Option<String>,
}

/// The guarded pool: at most `permits` connections, made on first use.
pub(crate) struct Guarded {
    target: Arc<Target>,
    clock: Arc<Clock>,
    permits: Semaphore,
    free: Mutex<Vec<Conn>>,
    /// Guarded appends committed, for the occasional pruning of old commit tokens.
    commits: AtomicU64,
}

struct Conn {
    client: Client,
    lock: Statement,
    head: Statement,
    key: Statement,
    same: Statement,
    write: Statement,
}

/// How one try ended.
enum Attempt {
    /// The append's answer.
    Answer(Result<AppendOutcome>),
    /// Certainly not committed; may be tried again.
    NotCommitted(Error),
    /// The head row stayed locked for [`BUSY_WAIT`]; nothing was written.
    Busy,
    /// The connection broke or fell silent around the `COMMIT` of the transaction
    /// carrying `token`, which would have stored `outcome`.
    InDoubt {
        token: String,
        error: Error,
        outcome: AppendOutcome,
    },
}

/// What an in-doubt commit turned out to be.
enum Resolution {
    /// Committed (the outcome read back), or unknown (the error says so): the answer.
    Answer(Result<AppendOutcome>),
    /// Not committed, and now never will: try again.
    Retry(Error),
}

/// The head row as step 1 found it, under its lock.
struct Head {
    tenant: String,
    last_seq: i64,
    last_ts_ns: i64,
    /// Created by this transaction: the execution does not exist yet.
    created: bool,
    /// Marked deleted.
    deleted: bool,
}

impl Guarded {
    pub(crate) fn new(target: Arc<Target>, clock: Arc<Clock>, connections: usize) -> Guarded {
        Guarded {
            target,
            clock,
            permits: Semaphore::new(connections),
            free: Mutex::new(Vec::new()),
            commits: AtomicU64::new(0),
        }
    }

    /// Runs `job` until it is answered (module docs); must run on the store's runtime.
    pub(crate) async fn append(&self, job: &Job) -> Result<AppendOutcome> {
        let since = Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            let error = {
                // A connection of the pool for this try; a busy execution gives it back.
                let _permit = self.permits.acquire().await.map_err(|_| Error::Closed)?;
                match self.attempt(job).await {
                    Attempt::Answer(answer) => return answer,
                    Attempt::Busy => continue,
                    Attempt::NotCommitted(error) => error,
                    Attempt::InDoubt {
                        token,
                        error,
                        outcome,
                    } => match self.resolve(job, &token, error, since, outcome).await {
                        Resolution::Answer(answer) => return answer,
                        Resolution::Retry(error) => error,
                    },
                }
            };
            if since.elapsed() >= self.target.reconnect_timeout {
                return Err(error);
            }
            log::debug!("execlog: retrying a guarded append: {error}");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// One transaction (module docs, steps 1 to 3).
    async fn attempt(&self, job: &Job) -> Attempt {
        let conn = match self.take().await {
            Ok(conn) => conn,
            Err(e @ Error::Unavailable { .. }) => return Attempt::NotCommitted(e),
            Err(e) => return Attempt::Answer(Err(e)),
        };
        let deadline = self.target.reconnect_timeout;
        // Step 1. No COMMIT is sent before step 3: whatever fails here, nothing of this
        // transaction can commit, and a dropped connection rolls it back.
        let (head, stored) = match tokio::time::timeout(deadline, lock(&conn, job)).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => return self.failed(conn, &e).await,
            Err(_) => return Attempt::NotCommitted(self.silent()),
        };
        // Step 2.
        let refusal = match tokio::time::timeout(deadline, check(&conn, job, &head, stored)).await {
            Ok(Ok(refusal)) => refusal,
            Ok(Err(e)) => return self.failed(conn, &e).await,
            Err(_) => return Attempt::NotCommitted(self.silent()),
        };
        if let Some(answer) = refusal {
            self.put_after_rollback(conn).await;
            return Attempt::Answer(answer);
        }
        // Step 3.
        self.write(conn, job, &head).await
    }

    /// Step 3, and its `COMMIT`.
    async fn write(&self, conn: Conn, job: &Job, head: &Head) -> Attempt {
        let count = job.bodies.len() as i64;
        let last = head.last_seq + count;
        let outcome = match outcome(head.last_seq + 1, last, false) {
            Ok(outcome) => outcome,
            Err(e) => {
                self.put_after_rollback(conn).await;
                return Attempt::Answer(Err(e));
            }
        };
        let now_ns = self.clock.now_ns().max(head.last_ts_ns);
        let token = ExecutionId::new().to_string();
        let bodies: Vec<&[u8]> = job.bodies.iter().collect();
        let key = job.key.as_deref().map(str::as_bytes);
        let params: [&(dyn ToSql + Sync); 7] = [
            &job.execution,
            &head.last_seq,
            &last,
            &now_ns,
            &bodies,
            &key,
            &token,
        ];
        let round_trip = async {
            tokio::join!(
                conn.client.query_one(&conn.write, &params),
                conn.client.batch_execute("COMMIT"),
            )
        };
        let (row, commit) =
            match tokio::time::timeout(self.target.reconnect_timeout, round_trip).await {
                Ok(answers) => answers,
                Err(_) => {
                    let error = self.silent();
                    return Attempt::InDoubt {
                        token,
                        error,
                        outcome,
                    };
                }
            };
        let failure = match (row, commit) {
            (Ok(row), Ok(())) => {
                if (self.commits.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(PRUNE_EVERY) {
                    prune_tokens(&conn.client, &self.target).await;
                }
                self.put(conn);
                return Attempt::Answer(match row.try_get::<_, i64>(0) {
                    Ok(1) => Ok(outcome),
                    _ => Err(unexpected(format!(
                        "the head row of {} changed under its lock",
                        job.execution_id
                    ))),
                });
            }
            (Err(e), _) | (Ok(_), Err(e)) => e,
        };
        let error = self.target.error(&failure);
        if is_connection_loss(&conn.client, &failure) {
            log::warn!(
                "execlog: lost the connection to {} while committing a guarded append: {error}",
                self.target.server
            );
            return Attempt::InDoubt {
                token,
                error,
                outcome,
            };
        }
        // A refusal aborted the transaction: the pipelined COMMIT rolled it back.
        self.put(conn);
        classify(&failure, error)
    }

    /// A failure before any `COMMIT` was sent: nothing was written.
    async fn failed(&self, conn: Conn, failure: &tokio_postgres::Error) -> Attempt {
        let error = self.target.error(failure);
        if is_connection_loss(&conn.client, failure) {
            return Attempt::NotCommitted(error);
        }
        self.put_after_rollback(conn).await;
        classify(failure, error)
    }

    /// Learns whether the transaction carrying `token` committed: asks at least once,
    /// then until `reconnect_timeout` has passed since `since`.
    async fn resolve(
        &self,
        job: &Job,
        token: &str,
        mut error: Error,
        since: Instant,
        expected: AppendOutcome,
    ) -> Resolution {
        loop {
            let left = self
                .target
                .reconnect_timeout
                .saturating_sub(since.elapsed());
            let asked = tokio::time::timeout(left.max(Duration::from_secs(1)), async {
                let mut conn = self.take().await?;
                let params: [&(dyn ToSql + Sync); 2] = [&token, &job.execution];
                let rows = settle(&mut conn.client, token, RANGE_SQL, &params)
                    .await
                    .map_err(|e| self.target.error(&e))?;
                self.put(conn);
                Ok::<_, Error>(rows)
            });
            match asked.await {
                Ok(Ok(None)) => return Resolution::Retry(error),
                Ok(Ok(Some(rows))) => return Resolution::Answer(read_back(&rows, expected)),
                Ok(Err(e)) => error = e,
                Err(_) => error = self.silent(),
            }
            if since.elapsed() >= self.target.reconnect_timeout {
                return Resolution::Answer(Err(match in_doubt(error) {
                    Error::Unavailable { server, reason } if job.key.is_some() => {
                        Error::Unavailable {
                            server,
                            reason: format!(
                                "{reason}; retrying it with the same idempotency key is safe \
                                 and answers which"
                            ),
                        }
                    }
                    other => other,
                }));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Closes the pool's idle connections (the store is closing: no append is left).
    pub(crate) fn close(&self) {
        self.free.lock().clear();
    }

    /// A live connection of the pool, or a new one.
    async fn take(&self) -> Result<Conn> {
        loop {
            let Some(conn) = self.free.lock().pop() else {
                break;
            };
            if !conn.client.is_closed() {
                return Ok(conn);
            }
        }
        let client = self.target.connect().await?;
        let err = |e: tokio_postgres::Error| self.target.error(&e);
        Ok(Conn {
            lock: client.prepare(LOCK_SQL).await.map_err(err)?,
            head: client.prepare(HEAD_SQL).await.map_err(err)?,
            key: client.prepare(KEY_SQL).await.map_err(err)?,
            same: client.prepare(SAME_SQL).await.map_err(err)?,
            write: client.prepare(WRITE_SQL).await.map_err(err)?,
            client,
        })
    }

    /// Gives a connection back to the pool, unless it broke.
    fn put(&self, conn: Conn) {
        if !conn.client.is_closed() {
            self.free.lock().push(conn);
        }
    }

    /// Rolls back (within `reconnect_timeout`) and gives the connection back.
    async fn put_after_rollback(&self, conn: Conn) {
        let rollback = conn.client.batch_execute("ROLLBACK");
        if let Ok(Ok(())) = tokio::time::timeout(self.target.reconnect_timeout, rollback).await {
            self.put(conn);
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
}

/// Step 2: `Some(answer)` when the append is not to be written (a refusal, or a
/// replay).
async fn check(
    conn: &Conn,
    job: &Job,
    head: &Head,
    stored: Option<(i64, i64)>,
) -> std::result::Result<Option<Result<AppendOutcome>>, tokio_postgres::Error> {
    if head.deleted {
        return Ok(Some(Err(Error::Deleted)));
    }
    if head.tenant != job.tenant {
        return Ok(Some(Err(Error::TenantMismatch {
            execution_id: job.execution_id.to_string(),
            given: job.tenant_id.to_string(),
        })));
    }
    if let Some((first, last)) = stored {
        let count = job.bodies.len() as i64;
        let same = last - first + 1 == count && {
            let bodies: Vec<&[u8]> = job.bodies.iter().collect();
            let params: [&(dyn ToSql + Sync); 4] = [&job.execution, &first, &last, &bodies];
            let row = conn.client.query_one(&conn.same, &params).await?;
            row.try_get::<_, i64>(0)? == count
        };
        return Ok(Some(if same {
            outcome(first, last, true)
        } else {
            Err(Error::IdempotencyConflict)
        }));
    }
    let latest = u64::try_from(head.last_seq)
        .ok()
        .filter(|&s| s > 0 && !head.created);
    Ok(job.expected.check(latest).err().map(Err))
}

/// Step 1's round trip: the head row, locked, and what the key stored, if anything.
async fn lock(
    conn: &Conn,
    job: &Job,
) -> std::result::Result<(Head, Option<(i64, i64)>), tokio_postgres::Error> {
    let begin = format!("BEGIN; SET LOCAL lock_timeout = '{BUSY_WAIT}'");
    let key = job.key.as_deref().map(str::as_bytes);
    let lookup = async {
        match key {
            Some(key) => conn
                .client
                .query_opt(&conn.key, &[&job.execution, &key])
                .await
                .map(Some),
            None => Ok(None),
        }
    };
    let lock_params: [&(dyn ToSql + Sync); 2] = [&job.execution, &job.tenant];
    let head_params: [&(dyn ToSql + Sync); 1] = [&job.execution];
    let (begun, inserted, head, stored) = tokio::join!(
        conn.client.batch_execute(&begin),
        conn.client.query(&conn.lock, &lock_params),
        conn.client.query_one(&conn.head, &head_params),
        lookup,
    );
    begun?;
    let created = !inserted?.is_empty();
    let head = head?;
    let head = Head {
        tenant: head.try_get(0)?,
        last_seq: head.try_get(1)?,
        last_ts_ns: head.try_get(2)?,
        created,
        deleted: head.try_get(3)?,
    };
    let stored = match stored?.flatten() {
        Some(row) => Some((row.try_get(0)?, row.try_get(1)?)),
        None => None,
    };
    Ok((head, stored))
}

/// The outcome of the sequences `first..=last`, checked.
fn outcome(first: i64, last: i64, replayed: bool) -> Result<AppendOutcome> {
    match (u64::try_from(first), u64::try_from(last)) {
        (Ok(first_sequence @ 1..), Ok(last_sequence)) if first_sequence <= last_sequence => {
            Ok(AppendOutcome {
                first_sequence,
                last_sequence,
                replayed,
            })
        }
        _ => Err(unexpected(format!("sequences {first}..={last}"))),
    }
}

/// The sequences an in-doubt transaction found committed stored ([`RANGE_SQL`]): they
/// must be the ones it was to store.
fn read_back(rows: &[Row], expected: AppendOutcome) -> Result<AppendOutcome> {
    let range = rows.first().map(|row| {
        (
            row.try_get::<_, Option<i64>>(0),
            row.try_get::<_, Option<i64>>(1),
        )
    });
    match range {
        Some((Ok(Some(first)), Ok(Some(last))))
            if outcome(first, last, false).ok() == Some(expected) =>
        {
            Ok(expected)
        }
        _ => Err(unexpected(format!(
            "a guarded append's committed transaction did not store sequences {}..={}",
            expected.first_sequence, expected.last_sequence
        ))),
    }
}

/// A refusal as an [`Attempt`]: retried when the server rolled back for contention.
fn classify(failure: &tokio_postgres::Error, error: Error) -> Attempt {
    match failure.code().map(|c| c.code()) {
        Some("55P03") => Attempt::Busy,
        // Serialization failure, deadlock, a cancelled statement (also how a lock
        // timeout firing as the lock is granted is reported): rolled back, try again.
        Some("40001" | "40P01" | "57014") => Attempt::NotCommitted(error),
        _ => Attempt::Answer(Err(error)),
    }
}

fn unexpected(what: String) -> Error {
    Error::Database {
        code: String::new(),
        message: format!("unexpected state of the execlog tables: {what}"),
    }
}
