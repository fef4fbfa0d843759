//! [`PgStore::import_blocking`]: the PostgreSQL side of `import.rs` (events stored
//! with the sequences and timestamps they already have; the path `execlog migrate`
//! copies stores through), and the list of every execution a migration copies.
//!
//! One chunk is one transaction, on a connection of the importer's own (kept between
//! chunks; imports do not go through the group commit, which assigns sequences and
//! times):
//! 1. `BEGIN`, then lock the execution's head row (`SELECT … FOR UPDATE`);
//! 2. check, under that lock: the execution is not deleted (`Error::Deleted`), the
//!    tenant owns the execution, the chunk starts right
//!    after `last_seq` (at 1 when there is no head row yet), and its first event is not
//!    timed before `last_ts_ns` (the execution's newest event);
//! 3. create the head row, or advance it: `last_seq` = the chunk's last sequence,
//!    `last_ts_ns` = the newer of the two;
//! 4. insert the events with their sequences and timestamps;
//! 5. `COMMIT` (the session runs with `synchronous_commit = on`: durable when it
//!    returns).
//!
//! Invariants: a chunk is stored whole or not at all, and only right after the events
//! already there, so an import never duplicates nor leaves a gap (the primary key on
//! (execution_id, seq) is the backstop). A new head row takes its `created` number when
//! its execution's first chunk commits, so importing executions oldest first keeps
//! `list_executions`' order. An import holds one head row lock at a time, so it cannot
//! deadlock with the group commit (which takes several, in one order).
//!
//! A lost connection is not retried here: when it breaks around the `COMMIT`, the
//! error says the chunk may or may not be stored. Running the migration again settles
//! it, as it continues after whatever the destination holds.

use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_postgres::{Client, Statement};

use super::connect::{Target, is_connection_loss};
use super::read::bad_row;
use super::sql_id::{escape, unescape};
use super::{PgStore, block_on, panicked};
use crate::append::{Bodies, encode_all};
use crate::error::{Error, Result};
use crate::event::StoredEvent;
use crate::ids::ExecutionId;
use crate::import::{Chunk, earlier_than_last, not_next};

const HEAD_SQL: &str = "
SELECT tenant_id, last_seq, last_ts_ns, deleted_at IS NOT NULL FROM execlog_executions
WHERE execution_id = $1 FOR UPDATE";

/// The head rows record their last writer's transaction id (`last_xid`), and the
/// events are inserted in sequence order, for the follow order (`follow.rs`): the
/// chunk's transaction took its id when it locked the head row (or creates it now),
/// so an older writer cannot come after it; the check in `ADVANCE_SQL` is a backstop.
const CREATE_SQL: &str = "
INSERT INTO execlog_executions (execution_id, tenant_id, last_seq, last_ts_ns, last_xid)
VALUES ($1, $2, $3, $4, pg_current_xact_id())";

const ADVANCE_SQL: &str = "
UPDATE execlog_executions
SET last_seq = CASE WHEN last_xid > pg_current_xact_id()
                    THEN execlog_out_of_order(execution_id, last_xid) ELSE $2 END,
    last_ts_ns = greatest(last_ts_ns, $3),
    last_xid = pg_current_xact_id()
WHERE execution_id = $1";

const EVENTS_SQL: &str = "
INSERT INTO execlog_events (execution_id, seq, ts_ns, body)
SELECT $1, seq, ts_ns, body
FROM unnest($2::bigint[], $3::bigint[], $4::bytea[]) WITH ORDINALITY AS e(seq, ts_ns, body, k)
ORDER BY e.k";

/// Deleted executions are left out: their events are gone.
const ALL_SQL: &str = "
SELECT execution_id, last_seq FROM execlog_executions
WHERE deleted_at IS NULL ORDER BY created";

/// The importer's connection, made on first use and kept while it works.
#[derive(Default)]
pub(crate) struct Importer {
    conn: Mutex<Option<Conn>>,
}

struct Conn {
    client: Client,
    head: Statement,
    create: Statement,
    advance: Statement,
    events: Statement,
}

/// A checked chunk with its events encoded, as the server takes it.
struct Job {
    /// The chunk's events were taken out and encoded into `bodies`.
    chunk: Chunk,
    execution: String,
    tenant: String,
    bodies: Bodies,
}

impl PgStore {
    /// Stores `events`, consecutive events of one execution, with their own sequences
    /// and timestamps, in one transaction; returns the last sequence stored. The first
    /// must be the execution's next sequence (1 for a new execution), else nothing is
    /// written ([`Error::InvalidArgument`]); see `postgres/import.rs`. The migration
    /// path of `execlog migrate`, not part of the contract.
    #[doc(hidden)]
    pub fn import_blocking(&self, events: Vec<StoredEvent>) -> Result<u64> {
        let mut chunk = Chunk::new(events)?;
        if self.sender.lock().is_none() {
            return Err(Error::Closed);
        }
        super::follow::check_transaction_events(chunk.events.len())?;
        let bodies = encode_all(
            self.options.max_event_bytes,
            self.options.max_batch_bytes,
            std::mem::take(&mut chunk.events),
        )?;
        let job = Job {
            execution: escape(chunk.execution_id.as_str()).into_owned(),
            tenant: escape(chunk.tenant_id.as_str()).into_owned(),
            chunk,
            bodies,
        };
        let (target, importer) = (Arc::clone(&self.target), Arc::clone(&self.importer));
        let task = self
            .handle
            .spawn(async move { importer.import(&target, &job).await });
        let stored = block_on(task).map_err(panicked)?;
        if stored.is_ok() {
            self.follow.committed();
        }
        stored
    }

    /// Every execution with its latest sequence, oldest first by creation (the order
    /// `list_executions` reverses): what a migration copies, in the order that keeps
    /// that listing the same in the destination.
    #[doc(hidden)]
    pub fn all_executions_blocking(&self) -> Result<Vec<(ExecutionId, u64)>> {
        if self.sender.lock().is_none() {
            return Err(Error::Closed);
        }
        let (target, importer) = (Arc::clone(&self.target), Arc::clone(&self.importer));
        let task = self
            .handle
            .spawn(async move { importer.all(&target).await });
        block_on(task).map_err(panicked)?
    }
}

impl Importer {
    /// Runs `job`'s transaction (module docs); returns its last sequence.
    async fn import(&self, target: &Target, job: &Job) -> Result<u64> {
        let mut slot = self.conn.lock().await;
        let mut conn = match slot.take().filter(|c| !c.client.is_closed()) {
            Some(conn) => conn,
            None => connect(target).await?,
        };
        let outcome = transaction(&mut conn, job).await;
        let result = match outcome {
            Ok(last) => Ok(last),
            Err(Failure::Refused(e)) => Err(e),
            Err(Failure::Server { error, committing }) => {
                let lost = is_connection_loss(&conn.client, &error);
                Err(match target.error(&error) {
                    Error::Unavailable { server, reason } if lost && committing => {
                        Error::Unavailable {
                            server,
                            reason: format!(
                                "{reason}; the connection broke while the import of execution \
                                 {} committed: its events {}..={} may or may not be stored \
                                 (a migration run again continues after what is stored)",
                                job.chunk.execution_id,
                                job.chunk.first_sequence,
                                job.chunk.last_sequence()
                            ),
                        }
                    }
                    other => other,
                })
            }
        };
        if !conn.client.is_closed() {
            *slot = Some(conn);
        }
        result
    }

    async fn all(&self, target: &Target) -> Result<Vec<(ExecutionId, u64)>> {
        let mut slot = self.conn.lock().await;
        let conn = match slot.take().filter(|c| !c.client.is_closed()) {
            Some(conn) => conn,
            None => connect(target).await?,
        };
        let rows = conn.client.query(ALL_SQL, &[]).await;
        let client_closed = conn.client.is_closed();
        if !client_closed {
            *slot = Some(conn);
        }
        let rows = rows.map_err(|e| target.error(&e))?;
        rows.iter()
            .map(|row| {
                let bad = |e: tokio_postgres::Error| bad_row(e.to_string());
                let stored: &str = row.try_get(0).map_err(bad)?;
                let last: i64 = row.try_get(1).map_err(bad)?;
                let id =
                    unescape(stored).ok_or_else(|| bad_row(format!("execution id {stored:?}")))?;
                let last = u64::try_from(last).map_err(|_| bad_row(format!("last_seq {last}")))?;
                Ok((ExecutionId::from(&*id), last))
            })
            .collect()
    }
}

/// Why a transaction did not commit.
enum Failure {
    /// A check of step 2 failed; rolled back.
    Refused(Error),
    /// The server or the connection failed; `committing` if at the `COMMIT`.
    Server {
        error: tokio_postgres::Error,
        committing: bool,
    },
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Self {
        Failure::Server {
            error,
            committing: false,
        }
    }
}

async fn connect(target: &Target) -> Result<Conn> {
    let client = target.connect().await?;
    let err = |e: tokio_postgres::Error| target.error(&e);
    Ok(Conn {
        head: client.prepare(HEAD_SQL).await.map_err(err)?,
        create: client.prepare(CREATE_SQL).await.map_err(err)?,
        advance: client.prepare(ADVANCE_SQL).await.map_err(err)?,
        events: client.prepare(EVENTS_SQL).await.map_err(err)?,
        client,
    })
}

/// Steps 1 to 5 of the module docs.
async fn transaction(conn: &mut Conn, job: &Job) -> std::result::Result<u64, Failure> {
    let chunk = &job.chunk;
    let first = i64::try_from(chunk.first_sequence).unwrap_or(i64::MAX);
    let last = i64::try_from(chunk.last_sequence()).unwrap_or(i64::MAX);
    let newest_ns = chunk.last_timestamp_ns();
    let tx = conn.client.transaction().await?;
    let head = tx.query_opt(&conn.head, &[&job.execution]).await?;
    let refusal = match &head {
        None if first != 1 => Some(not_next(&chunk.execution_id, 1, chunk.first_sequence)),
        None => None,
        Some(row) => {
            let tenant: &str = row.try_get(0)?;
            let last_seq: i64 = row.try_get(1)?;
            let last_ts_ns: i64 = row.try_get(2)?;
            let deleted: bool = row.try_get(3)?;
            if deleted {
                Some(Error::Deleted)
            } else if tenant != job.tenant {
                Some(Error::TenantMismatch {
                    execution_id: chunk.execution_id.to_string(),
                    given: chunk.tenant_id.to_string(),
                })
            } else if last_seq.checked_add(1) != Some(first) {
                let next = u64::try_from(last_seq).unwrap_or_default() + 1;
                Some(not_next(&chunk.execution_id, next, chunk.first_sequence))
            } else if last_ts_ns > chunk.first_timestamp_ns() {
                Some(earlier_than_last(chunk, last_ts_ns))
            } else {
                None
            }
        }
    };
    if let Some(e) = refusal {
        tx.rollback().await?;
        return Err(Failure::Refused(e));
    }
    if head.is_none() {
        tx.execute(
            &conn.create,
            &[&job.execution, &job.tenant, &last, &newest_ns],
        )
        .await?;
    } else {
        tx.execute(&conn.advance, &[&job.execution, &last, &newest_ns])
            .await?;
    }
    let sequences: Vec<i64> = (first..=last).collect();
    let bodies: Vec<&[u8]> = job.bodies.iter().collect();
    tx.execute(
        &conn.events,
        &[&job.execution, &sequences, &chunk.timestamps_ns, &bodies],
    )
    .await?;
    tx.commit().await.map_err(|error| Failure::Server {
        error,
        committing: true,
    })?;
    Ok(chunk.last_sequence())
}
