//! Reads: a few shared connections, each pipelining the queries of many callers.
//!
//! A read runs in autocommit on a connection that never opens a transaction, so it
//! sees only committed (durable) rows. A read that loses its connection reconnects
//! and runs again (reads change nothing, so a retry is always safe) until
//! `reconnect_timeout`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio_postgres::{Client, Row, Statement};

use super::connect::{Target, is_connection_loss};
use crate::error::{Error, Result};

const LOAD_SQL: &str = "
SELECT e.seq, e.ts_ns, e.body, h.tenant_id
FROM execlog_events e LEFT JOIN execlog_executions h ON h.execution_id = e.execution_id
WHERE e.execution_id = $1 AND e.seq > $2
ORDER BY e.seq
LIMIT $3";

// A head row marked deleted (`deleted_at`, `postgres/deletion.rs`) is an execution
// that does not exist: every read of a head row leaves it out. (A deleted execution
// has no events left: `LOAD_SQL` and the follow path find none.)
const LATEST_SQL: &str =
    "SELECT last_seq FROM execlog_executions WHERE execution_id = $1 AND deleted_at IS NULL";

const TENANT_SQL: &str = "
SELECT tenant_id FROM execlog_executions
WHERE execution_id = $1 AND last_seq > 0 AND deleted_at IS NULL";

/// Where a live execution with events was forked from (`fork.rs`): its source (as
/// stored) and the number of events it shares, both NULL if it is not a fork.
const FORK_POINT_SQL: &str = "
SELECT fork_source, fork_at FROM execlog_executions
WHERE execution_id = $1 AND last_seq > 0 AND deleted_at IS NULL";

const LIST_SQL: &str = "
SELECT execution_id FROM execlog_executions
WHERE tenant_id = $1 AND deleted_at IS NULL
ORDER BY created DESC
LIMIT $2 OFFSET $3";

/// The follow path (`follow.rs`): a snapshot's `xmin` and `xmax`, and the transactions
/// it sees in progress.
const SNAPSHOT_SQL: &str = "
SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint,
       ARRAY(SELECT x::text::bigint FROM pg_snapshot_xip(s) AS x)
FROM pg_current_snapshot() AS s";

/// The follow path: the horizon (every transaction below it has ended), and the
/// identity `id` of the last event transaction `$1` still holds whose rank in it is at
/// most `$2` (NULL if none). An event's rank is its `ord` if it has one (an event
/// after a deleted one, `postgres/deletion.rs`), else its place among the events
/// still there, which are then all the events before it.
const NTH_SQL: &str = "
SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint,
       (SELECT max(r.id) FROM (
            SELECT id, coalesce(ord, row_number() OVER (ORDER BY id) - 1) AS rank
            FROM execlog_events WHERE xid = $1::bigint::text::xid8
        ) r WHERE r.rank <= $2::bigint)";

/// The follow path: the next page of events after the cursor `($1, $2)` in `(xid, id)`
/// order, of transactions below the horizon (and below `$3`), at most `$4` of them.
/// Each row says whether the subscription wants it (`$5`: 0 all, 1 the tenant `$6`,
/// 2 the execution `$6`); the body and tenant come only with wanted rows, and only as
/// long as the wanted bodies before stay under `$7` bytes. Always one row more than
/// the page, first: the horizon and the number of rows the page scanned.
/// The last column is the event's `ord`, its rank in its transaction when an event
/// before it was deleted (NULL otherwise: the rank is counted).
/// A fork's copies of its source's events (its sequences up to `fork_at`, `fork.rs`)
/// are never wanted: they are not new events (the source's were delivered), as on the
/// embedded engine, where a fork shares its source's records. They still move the
/// cursor and count in their transaction's ranks, as any unwanted row.
const PAGE_SQL: &str = "
WITH horizon AS MATERIALIZED (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin
), page AS MATERIALIZED (
    SELECT e.xid, e.id, e.execution_id, e.seq, e.ts_ns, e.body, e.ord
    FROM execlog_events e
    WHERE (e.xid, e.id) > ($1::bigint::text::xid8, $2::bigint)
      AND e.xid < least((SELECT xmin FROM horizon), $3::bigint::text::xid8)
    ORDER BY e.xid, e.id
    LIMIT $4
), marked AS (
    SELECT p.*, h.tenant_id,
           CASE $5::int WHEN 0 THEN true
                        WHEN 1 THEN h.tenant_id IS NOT DISTINCT FROM $6::text
                        ELSE p.execution_id = $6::text END
           AND (h.fork_at IS NULL OR p.seq > h.fork_at) AS wanted
    FROM page p LEFT JOIN execlog_executions h ON h.execution_id = p.execution_id
), sized AS (
    SELECT m.*,
           coalesce(sum(CASE WHEN m.wanted THEN octet_length(m.body) END)
                    OVER (ORDER BY m.xid, m.id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
                    0) AS before
    FROM marked m
)
SELECT 0 AS part, (SELECT xmin FROM horizon)::text::bigint, (SELECT count(*) FROM page),
       NULL::bigint, NULL::text, NULL::bigint, NULL::bool, NULL::text, NULL::bytea,
       NULL::bigint
UNION ALL
SELECT 1, s.xid::text::bigint, s.id, s.seq, s.execution_id, s.ts_ns, s.wanted,
       CASE WHEN s.wanted THEN s.tenant_id END, CASE WHEN s.wanted THEN s.body END,
       s.ord::bigint
FROM sized s WHERE s.before < $7
ORDER BY 1, 2, 3";

/// A read, with its parameters as the server takes them.
pub(crate) enum Query {
    /// Events of `execution` after `after`, at most `limit`.
    Load {
        execution: String,
        after: i64,
        limit: i64,
    },
    /// The head row's last sequence.
    Latest { execution: String },
    /// The owner of an execution with events.
    Tenant { execution: String },
    /// [`FORK_POINT_SQL`].
    ForkPoint { execution: String },
    /// A tenant's executions, newest first.
    List {
        tenant: String,
        limit: i64,
        offset: i64,
    },
    /// `SELECT 1`.
    Ping,
    /// [`SNAPSHOT_SQL`].
    Snapshot,
    /// [`NTH_SQL`].
    Nth { xid: i64, ordinal: i64 },
    /// [`PAGE_SQL`].
    Page {
        xid: i64,
        id: i64,
        below: i64,
        rows: i64,
        filter: i32,
        value: String,
        bytes: i64,
    },
}

struct Conn {
    client: Client,
    load: Statement,
    latest: Statement,
    tenant: Statement,
    fork_point: Statement,
    list: Statement,
    snapshot: Statement,
    nth: Statement,
    page: Statement,
}

/// The read connections, used round robin.
pub(crate) struct Readers {
    target: Arc<Target>,
    slots: Vec<Mutex<Option<Arc<Conn>>>>,
    next: AtomicUsize,
}

impl Readers {
    pub(crate) fn new(target: Arc<Target>, connections: usize) -> Readers {
        Readers {
            target,
            slots: (0..connections).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Runs `query`, reconnecting as needed; must run on the store's runtime.
    pub(crate) async fn run(&self, query: &Query) -> Result<Vec<Row>> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let since = Instant::now();
        loop {
            let conn = self.connection(slot, since).await?;
            let left = self
                .target
                .reconnect_timeout
                .saturating_sub(since.elapsed());
            let asked =
                tokio::time::timeout(left.max(Duration::from_secs(1)), self.ask(&conn, query));
            let result = match asked.await {
                Ok(result) => result,
                Err(_) => {
                    // A server that stopped answering: this connection is done for.
                    self.forget(slot, &conn).await;
                    return Err(Error::Unavailable {
                        server: self.target.server.clone(),
                        reason: format!(
                            "no answer within {:?} (reconnect_timeout)",
                            self.target.reconnect_timeout
                        ),
                    });
                }
            };
            match result {
                Ok(rows) => return Ok(rows),
                Err(e) if is_connection_loss(&conn.client, &e) => {
                    if since.elapsed() >= self.target.reconnect_timeout {
                        return Err(self.target.error(&e));
                    }
                    log::warn!(
                        "execlog: a read lost its connection to {}, retrying: {e}",
                        self.target.server
                    );
                    self.forget(slot, &conn).await;
                }
                Err(e) => return Err(self.target.error(&e)),
            }
        }
    }

    async fn ask(&self, conn: &Conn, query: &Query) -> Result<Vec<Row>, tokio_postgres::Error> {
        match query {
            Query::Load {
                execution,
                after,
                limit,
            } => {
                conn.client
                    .query(&conn.load, &[execution, after, limit])
                    .await
            }
            Query::Latest { execution } => conn.client.query(&conn.latest, &[execution]).await,
            Query::Tenant { execution } => conn.client.query(&conn.tenant, &[execution]).await,
            Query::ForkPoint { execution } => {
                conn.client.query(&conn.fork_point, &[execution]).await
            }
            Query::List {
                tenant,
                limit,
                offset,
            } => {
                conn.client
                    .query(&conn.list, &[tenant, limit, offset])
                    .await
            }
            Query::Ping => conn.client.query("SELECT 1", &[]).await,
            Query::Snapshot => conn.client.query(&conn.snapshot, &[]).await,
            Query::Nth { xid, ordinal } => conn.client.query(&conn.nth, &[xid, ordinal]).await,
            Query::Page {
                xid,
                id,
                below,
                rows,
                filter,
                value,
                bytes,
            } => {
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
                    [xid, id, below, rows, filter, value, bytes];
                conn.client.query(&conn.page, &params).await
            }
        }
    }

    /// Drops `conn` from `slot` unless it was replaced already.
    async fn forget(&self, slot: &Mutex<Option<Arc<Conn>>>, conn: &Arc<Conn>) {
        let mut guard = slot.lock().await;
        if guard.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *guard = None;
        }
    }

    async fn connection(
        &self,
        slot: &Mutex<Option<Arc<Conn>>>,
        since: Instant,
    ) -> Result<Arc<Conn>> {
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(Arc::clone(conn));
        }
        let client = self.target.connect_until(since).await?;
        let err = |e: tokio_postgres::Error| self.target.error(&e);
        let conn = Arc::new(Conn {
            load: client.prepare(LOAD_SQL).await.map_err(err)?,
            latest: client.prepare(LATEST_SQL).await.map_err(err)?,
            tenant: client.prepare(TENANT_SQL).await.map_err(err)?,
            fork_point: client.prepare(FORK_POINT_SQL).await.map_err(err)?,
            list: client.prepare(LIST_SQL).await.map_err(err)?,
            snapshot: client.prepare(SNAPSHOT_SQL).await.map_err(err)?,
            nth: client.prepare(NTH_SQL).await.map_err(err)?,
            page: client.prepare(PAGE_SQL).await.map_err(err)?,
            client,
        });
        *guard = Some(Arc::clone(&conn));
        Ok(conn)
    }
}

/// A read's parameter that the server takes as `bigint`: larger values mean "all".
pub(crate) fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The `Error` for a row the store did not write as it reads it.
pub(crate) fn bad_row(what: impl Into<String>) -> Error {
    Error::Database {
        code: String::new(),
        message: format!("unexpected row in the execlog tables: {}", what.into()),
    }
}
