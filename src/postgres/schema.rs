//! The tables the PostgreSQL backend owns, and their migrations.
//!
//! `execlog_schema` records every migration applied, one row per version. Migrations
//! are append-only: a released one is never edited, a change is a new version. They
//! run in one transaction that first locks `execlog_schema`, so two processes
//! connecting at once apply each migration exactly once (the second waits, then finds
//! nothing left to do). A database whose newest version is above [`SCHEMA_VERSION`]
//! was migrated by a newer execlog and is refused rather than misread.
//! docs/POSTGRES.md explains each table, key and index.

use tokio_postgres::Client;

use super::connect::Target;
use crate::error::{Error, Result};

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i32 = 5;

/// Each migration: its version, a description, and its SQL.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "executions (head rows), events, commit tokens",
        "
CREATE TABLE execlog_executions (
    execution_id text   NOT NULL PRIMARY KEY,
    tenant_id    text   NOT NULL,
    last_seq     bigint NOT NULL CHECK (last_seq >= 0),
    last_ts_ns   bigint NOT NULL,
    created      bigint GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX execlog_executions_by_tenant ON execlog_executions (tenant_id, created DESC);
CREATE TABLE execlog_events (
    execution_id text   NOT NULL,
    seq          bigint NOT NULL CHECK (seq >= 1),
    ts_ns        bigint NOT NULL,
    xid          xid8   NOT NULL DEFAULT pg_current_xact_id(),
    id           bigint GENERATED ALWAYS AS IDENTITY,
    body         bytea  NOT NULL,
    PRIMARY KEY (execution_id, seq)
);
CREATE INDEX execlog_events_commit_order ON execlog_events (xid, id);
CREATE TABLE execlog_commits (
    token text        NOT NULL PRIMARY KEY,
    xid   xid8        NOT NULL DEFAULT pg_current_xact_id(),
    at    timestamptz NOT NULL DEFAULT now()
);
",
    ),
    (
        2,
        "idempotency keys of guarded appends",
        "
CREATE TABLE execlog_idempotency (
    execution_id text   NOT NULL,
    key          bytea  NOT NULL,
    first_seq    bigint NOT NULL CHECK (first_seq >= 1),
    last_seq     bigint NOT NULL CHECK (last_seq >= first_seq),
    PRIMARY KEY (execution_id, key)
);
",
    ),
    (
        3,
        "follow order: each execution's writers in transaction id order",
        // A nullable column without a default: a catalog change only, no rewrite.
        "
ALTER TABLE execlog_executions ADD COLUMN last_xid xid8;
CREATE FUNCTION execlog_out_of_order(execution_id text, last_xid xid8) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = 'serialization_failure',
        MESSAGE = format('execlog: execution %s was last written by transaction %s, '
                         'newer than this one (%s); retry in a new transaction',
                         execution_id, last_xid, pg_current_xact_id());
END
$$;
",
    ),
    (
        4,
        "deleting executions: a deletion mark on the head row, ranks kept across deletions",
        // Nullable columns without a default: catalog changes only, no rewrite, and the
        // rows already there read as live executions (`deleted_at` NULL) whose events
        // have their rank by count (`ord` NULL). The trigger is the backstop behind the
        // writers' checks: no writer, an older build's included, advances a marked head
        // row (this build's never try).
        "
ALTER TABLE execlog_executions ADD COLUMN deleted_at timestamptz;
ALTER TABLE execlog_events ADD COLUMN ord integer;
CREATE FUNCTION execlog_deleted_execution() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = 'object_not_in_prerequisite_state',
        MESSAGE = format('execlog: execution %s was deleted; its id takes no more events',
                         OLD.execution_id);
END
$$;
CREATE TRIGGER execlog_deleted_execution BEFORE UPDATE ON execlog_executions
FOR EACH ROW WHEN (OLD.deleted_at IS NOT NULL) EXECUTE FUNCTION execlog_deleted_execution();
",
    ),
    (
        5,
        "forks: the source and the number of shared events on a fork's head row",
        // Nullable columns without a default: catalog changes only, no rewrite; the rows
        // already there read as executions that are not forks. The check is `NOT VALID`:
        // new and updated rows are checked, the existing ones (all NULL, which passes)
        // are not scanned under the table's exclusive lock.
        "
ALTER TABLE execlog_executions ADD COLUMN fork_source text, ADD COLUMN fork_at bigint;
ALTER TABLE execlog_executions ADD CONSTRAINT execlog_fork_point
    CHECK ((fork_source IS NULL) = (fork_at IS NULL) AND fork_at BETWEEN 1 AND last_seq)
    NOT VALID;
",
    ),
];

/// Brings the store's schema to [`SCHEMA_VERSION`] (or, with `apply == false`, only
/// checks that it is there). Sessions racing to create the same catalog objects can
/// still collide inside PostgreSQL's catalogs; such a collision is retried.
pub(crate) async fn migrate(client: &mut Client, target: &Target, apply: bool) -> Result<()> {
    let mut tries = 0;
    loop {
        match migrate_once(client, target, apply).await {
            Err(Error::Database { code, message })
                if tries < 5
                    && matches!(
                        code.as_str(),
                        "23505" | "42P06" | "42P07" | "42710" | "40P01" | "40001" | "XX000"
                    ) =>
            {
                tries += 1;
                log::debug!(
                    "execlog: migration collided with another session ({code}: {message}); retrying"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20 * tries)).await;
            }
            other => return other,
        }
    }
}

async fn migrate_once(client: &mut Client, target: &Target, apply: bool) -> Result<()> {
    let err = |e: tokio_postgres::Error| target.error(&e);
    if let Some(schema) = &target.schema
        && apply
    {
        let sql = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
        create_if_missing(client, &sql, target).await?;
    }
    if apply {
        create_if_missing(
            client,
            "CREATE TABLE IF NOT EXISTS execlog_schema (
                 version     integer     NOT NULL PRIMARY KEY,
                 description text        NOT NULL,
                 applied_at  timestamptz NOT NULL DEFAULT now())",
            target,
        )
        .await?;
    }
    let tx = client.transaction().await.map_err(err)?;
    let exists: bool = tx
        .query_one("SELECT to_regclass('execlog_schema') IS NOT NULL", &[])
        .await
        .map_err(err)?
        .try_get(0)
        .map_err(err)?;
    let current = if exists {
        tx.batch_execute("LOCK TABLE execlog_schema IN SHARE ROW EXCLUSIVE MODE")
            .await
            .map_err(err)?;
        let row = tx
            .query_one("SELECT coalesce(max(version), 0) FROM execlog_schema", &[])
            .await
            .map_err(err)?;
        row.try_get::<_, i32>(0).map_err(err)?
    } else {
        0
    };
    if current > SCHEMA_VERSION {
        return Err(Error::Database {
            code: String::new(),
            message: format!(
                "the database schema is at version {current}, newer than this build's \
                 {SCHEMA_VERSION}; use a newer execlog"
            ),
        });
    }
    if current == SCHEMA_VERSION {
        return Ok(());
    }
    if !apply {
        return Err(Error::Database {
            code: String::new(),
            message: format!(
                "the database schema is at version {current}, this build needs \
                 {SCHEMA_VERSION}; run execlog::postgres::migrate (or connect with \
                 PgOptions::auto_migrate(true))"
            ),
        });
    }
    for (version, description, sql) in MIGRATIONS.iter().filter(|(v, ..)| *v > current) {
        tx.batch_execute(sql).await.map_err(err)?;
        tx.execute(
            "INSERT INTO execlog_schema (version, description) VALUES ($1, $2)",
            &[version, description],
        )
        .await
        .map_err(err)?;
        log::info!("execlog: PostgreSQL schema migrated to version {version}: {description}");
    }
    tx.commit().await.map_err(err)
}

/// Runs a `CREATE … IF NOT EXISTS`, which can still fail when two sessions create the
/// same object at once (a unique violation in the catalog, or 42710 "type … already
/// exists" for a table's row type); the loser then finds it made.
async fn create_if_missing(client: &Client, sql: &str, target: &Target) -> Result<()> {
    match client.batch_execute(sql).await {
        Ok(()) => Ok(()),
        Err(e)
            if e.code()
                .is_some_and(|c| matches!(c.code(), "23505" | "42P06" | "42P07" | "42710")) =>
        {
            Ok(())
        }
        Err(e) => Err(target.error(&e)),
    }
}
