//! [`PgStore`]: the [`EventStore`] contract on a PostgreSQL server (13 or newer), with
//! the embedded [`LogStore`](crate::LogStore)'s semantics (feature `postgres`).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use execlog::postgres::{PgOptions, PgStore};
//! use execlog::{EventStore, ExecutionEventData, ExecutionId, TenantId};
//!
//! // libpq URLs: postgres://user:password@host:port/dbname (no TLS in this build)
//! let store = PgStore::connect_with(
//!     "postgres://app@127.0.0.1:5432/agents",
//!     PgOptions::default().schema("agents"), // default schema: `execlog`
//! )?;
//! let (run, tenant) = (ExecutionId::new(), TenantId::from("acme"));
//! let seq = store.append(&run, &tenant, ExecutionEventData::ExecutionResumed).await?;
//! assert_eq!(store.load_events(&run).await?[0].sequence, seq);
//! store.close()?;
//! # Ok(()) }
//! ```
//!
//! Errors are [`Error`] values inside the trait's `anyhow::Error`
//! (`err.downcast_ref::<execlog::Error>()`): the embedded store's variants where they
//! apply (`InvalidArgument`, `TenantMismatch`, `Deleted`, `Closed`, and for guarded
//! appends `WrongExpectedSequence` and `IdempotencyConflict`), plus
//! [`Error::Unavailable`] (the server cannot be reached now: retry later) and
//! [`Error::Database`] (the server refused: wrong password, unknown database, missing
//! privilege; a retry will not help). Connecting creates or migrates the tables unless
//! [`PgOptions::auto_migrate`] is off. docs/POSTGRES.md in the repository explains the
//! tables, the concurrency design and the limits.
//!
//! Inside, one file per step:
//! - **connect** → `connect.rs` (session setup: `synchronous_commit = on`, the schema)
//!   → `schema.rs` (versioned migrations).
//! - **append** → validate and encode here (the same checks and codec as the embedded
//!   store) → a bounded queue → `group_commit.rs` (the appends waiting when a write
//!   connection is free share one transaction and one WAL flush).
//! - **guarded append** (an idempotency key or an expected sequence) → validate and
//!   encode in `guarded.rs` → `guarded_commit.rs` (one transaction per append on a
//!   small pool of its own, checks and write under the execution's head row lock).
//! - **read** → `read.rs` (shared, pipelined connections) → rows decoded here.
//! - **follow** (positions, subscriptions) → `follow.rs`: a task per subscription on
//!   the store's runtime reads pages through `read.rs` into a bounded channel.
//! - **delete, prune** ([`Lifecycle`](crate::Lifecycle)) → `deletion.rs`: one
//!   transaction per deletion on a connection of its own, under the head row locks
//!   appends take; then the store's subscriptions drop what they hold of it.
//! - **fork** ([`Lifecycle::fork_execution`](crate::Lifecycle::fork_execution)) →
//!   `fork.rs`: one transaction on the deletions' connection copies the shared events
//!   under the new id, with the source's head row locked against its deletion.
//!
//! The connections live on a small tokio runtime owned by the store; callers only wait
//! on channels and join handles, so the API works from any executor and, through the
//! blocking twins, from plain threads.

mod block_on;
mod connect;
mod deletion;
mod follow;
mod fork;
mod group_commit;
mod guarded;
mod guarded_commit;
mod import;
mod options;
mod read;
mod schema;
mod sql_id;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::DateTime;
use parking_lot::Mutex;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::Row;

use crate::append::encode_all;
use crate::error::{Error, Result};
use crate::event::{ExecutionEventData, StoredEvent};
use crate::event_store::{EventStore, StorageBackend};
use crate::ids::{ExecutionId, TenantId, validate_id};
use block_on::block_on;
use connect::Target;
use group_commit::{Clock, Inbox, Limits, Request};
pub use options::PgOptions;
use read::{Query, Readers, bad_row, clamp};
pub use schema::SCHEMA_VERSION;
use sql_id::{escape, unescape};

/// An event store on a PostgreSQL server. Cheap to share: wrap it in an `Arc`.
///
/// Every method has the embedded [`LogStore`](crate::LogStore)'s semantics; the
/// conformance suite runs the same tests against both.
pub struct PgStore {
    runtime: Option<Runtime>,
    handle: Handle,
    target: Arc<Target>,
    options: PgOptions,
    sender: Mutex<Option<mpsc::Sender<Request>>>,
    writers: Mutex<Vec<JoinHandle<()>>>,
    readers: Arc<Readers>,
    /// `import.rs`: the migration path's own connection.
    importer: Arc<import::Importer>,
    /// `guarded_commit.rs`: the guarded appends' connections.
    guarded: Arc<guarded_commit::Guarded>,
    /// `deletion.rs`: the connection of deletions and forks (`fork.rs`).
    deleter: Arc<deletion::Deleter>,
    /// Held (read) by every guarded append, deletion and fork from its admission to its
    /// answer; `close` takes it (write) to wait for them.
    gate: Arc<tokio::sync::RwLock<()>>,
    /// `follow.rs`: what subscriptions share with the store.
    follow: Arc<follow::Hub>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("server", &self.target.server)
            .field("schema", &self.options.schema)
            .finish_non_exhaustive()
    }
}

/// Brings the schema at `url` up to [`SCHEMA_VERSION`] without opening a store
/// (for deployments that migrate as a separate step; connecting does it too unless
/// [`PgOptions::auto_migrate`] is off).
pub fn migrate(url: &str, options: &PgOptions) -> Result<()> {
    options.validate()?;
    let runtime = runtime()?;
    let target = target(url, options)?;
    let job = runtime.spawn(async move {
        let mut client = target.connect().await?;
        schema::migrate(&mut client, &target, true).await
    });
    let result = block_on(job).map_err(panicked).and_then(|r| r);
    runtime.shutdown_background();
    result
}

impl PgStore {
    /// Connects to the server at `url` (e.g. `postgres://user@host:5432/db`) with
    /// default options, migrating the schema if needed. Blocks the calling thread.
    pub fn connect(url: &str) -> Result<PgStore> {
        Self::connect_with(url, PgOptions::default())
    }

    /// Connects with `options`. Blocks the calling thread until the schema is checked
    /// (or migrated) and one connection works.
    pub fn connect_with(url: &str, options: PgOptions) -> Result<PgStore> {
        options.validate()?;
        let runtime = runtime()?;
        let handle = runtime.handle().clone();
        let target = Arc::new(target(url, &options)?);
        let setup = {
            let target = Arc::clone(&target);
            let apply = options.auto_migrate;
            handle.spawn(async move {
                let mut client = target.connect().await?;
                schema::migrate(&mut client, &target, apply).await
            })
        };
        // Never drop a runtime on an error path: that panics inside an async context.
        if let Err(e) = block_on(setup).map_err(panicked).and_then(|r| r) {
            runtime.shutdown_background();
            return Err(e);
        }
        let (sender, receiver) = mpsc::channel(options.queue_capacity);
        let inbox: Inbox = Arc::new(tokio::sync::Mutex::new(receiver));
        let limits = Limits {
            max_appends: options.group_max_appends,
            max_bytes: options.group_max_bytes,
        };
        let clock = Arc::new(Clock::default());
        let writers = (0..options.write_connections)
            .map(|_| {
                handle.spawn(group_commit::run_writer(
                    Arc::clone(&target),
                    Arc::clone(&inbox),
                    limits,
                    Arc::clone(&clock),
                ))
            })
            .collect();
        let readers = Arc::new(Readers::new(Arc::clone(&target), options.read_connections));
        let guarded = Arc::new(guarded_commit::Guarded::new(
            Arc::clone(&target),
            clock,
            options.guarded_connections,
        ));
        Ok(PgStore {
            runtime: Some(runtime),
            handle,
            target,
            options,
            sender: Mutex::new(Some(sender)),
            writers: Mutex::new(writers),
            readers,
            importer: Arc::default(),
            guarded,
            deleter: Arc::default(),
            gate: Arc::default(),
            follow: Arc::new(follow::Hub::new()),
        })
    }

    /// The server this store talks to, as `host:port/dbname`.
    pub fn server(&self) -> &str {
        &self.target.server
    }

    /// Stops accepting appends, waits until every queued append is answered, and
    /// closes the connections. Later calls fail with [`Error::Closed`].
    pub fn close(&self) -> Result<()> {
        self.sender.lock().take();
        // Guarded appends and deletions admitted before the line above are answered
        // first.
        drop(block_on(self.gate.write()));
        self.guarded.close();
        self.deleter.close();
        let writers = std::mem::take(&mut *self.writers.lock());
        for writer in writers {
            block_on(writer).map_err(panicked)?;
        }
        // After every append of this store was answered: subscriptions deliver those
        // too, then end.
        self.follow.close();
        Ok(())
    }

    /// Appends one event; returns its sequence once it is committed.
    pub fn append_blocking(
        &self,
        execution_id: &ExecutionId,
        tenant_id: &TenantId,
        event: ExecutionEventData,
    ) -> Result<u64> {
        block_on(self.submit(execution_id, tenant_id, vec![event]))
    }

    /// Appends events atomically with consecutive sequences; returns the first.
    pub fn append_batch_blocking(
        &self,
        execution_id: &ExecutionId,
        tenant_id: &TenantId,
        events: Vec<ExecutionEventData>,
    ) -> Result<u64> {
        block_on(self.submit(execution_id, tenant_id, events))
    }

    /// All committed events of an execution, in sequence order (empty if unknown).
    pub fn load_events_blocking(&self, execution_id: &ExecutionId) -> Result<Vec<StoredEvent>> {
        block_on(self.read_range(execution_id, 0, usize::MAX))
    }

    /// Committed events with sequence greater than `after_seq`, in order.
    pub fn load_events_after_blocking(
        &self,
        execution_id: &ExecutionId,
        after_seq: u64,
    ) -> Result<Vec<StoredEvent>> {
        block_on(self.read_range(execution_id, after_seq, usize::MAX))
    }

    /// At most `limit` events with sequence greater than `after_seq`, in order.
    pub fn read_range_blocking(
        &self,
        execution_id: &ExecutionId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        block_on(self.read_range(execution_id, after_seq, limit))
    }

    /// The latest committed sequence of an execution, `None` if it has no events.
    pub fn get_latest_sequence_blocking(&self, execution_id: &ExecutionId) -> Result<Option<u64>> {
        block_on(self.latest(execution_id))
    }

    /// A tenant's executions, newest first by creation, paged.
    pub fn list_executions_blocking(
        &self,
        tenant_id: &TenantId,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<ExecutionId>> {
        block_on(self.list(tenant_id, limit, offset))
    }

    /// Validates, encodes and queues an append, then waits for its group's commit.
    async fn submit(
        &self,
        execution_id: &ExecutionId,
        tenant_id: &TenantId,
        events: Vec<ExecutionEventData>,
    ) -> Result<u64> {
        validate_id("execution", execution_id.as_str())?;
        validate_id("tenant", tenant_id.as_str())?;
        if events.is_empty() {
            return Err(Error::InvalidArgument(
                "an append needs at least one event; nothing was stored".into(),
            ));
        }
        follow::check_transaction_events(events.len())?;
        let bodies = encode_all(
            self.options.max_event_bytes,
            self.options.max_batch_bytes,
            events,
        )?;
        let (reply, answer) = oneshot::channel();
        let request = Request {
            solo: false,
            execution_id: execution_id.clone(),
            tenant_id: tenant_id.clone(),
            bodies,
            reply,
        };
        {
            // This copy of the sender must be gone before the wait: `close` waits for
            // the writers, which end once every sender is dropped.
            let sender = self.sender.lock().clone().ok_or(Error::Closed)?;
            sender.send(request).await.map_err(|_| Error::Closed)?;
        }
        let answer = answer.await.map_err(|_| Error::Closed)?;
        if answer.is_ok() {
            self.follow.committed();
        }
        answer
    }

    /// Runs a read on the store's runtime (where connections are made).
    async fn query(&self, query: Query) -> Result<Vec<Row>> {
        if self.sender.lock().is_none() {
            return Err(Error::Closed);
        }
        let readers = Arc::clone(&self.readers);
        let job = self.handle.spawn(async move { readers.run(&query).await });
        job.await.map_err(panicked)?
    }

    async fn read_range(
        &self,
        execution_id: &ExecutionId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        validate_id("execution", execution_id.as_str())?;
        let rows = self
            .query(Query::Load {
                execution: escape(execution_id.as_str()).into_owned(),
                after: clamp(after_seq),
                limit: clamp(limit as u64),
            })
            .await?;
        let mut tenant: Option<TenantId> = None;
        rows.iter()
            .map(|row| decode_event(row, execution_id, &mut tenant))
            .collect()
    }

    async fn latest(&self, execution_id: &ExecutionId) -> Result<Option<u64>> {
        validate_id("execution", execution_id.as_str())?;
        let rows = self
            .query(Query::Latest {
                execution: escape(execution_id.as_str()).into_owned(),
            })
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let last: i64 = row.try_get(0).map_err(|e| bad_row(e.to_string()))?;
        let last = u64::try_from(last).map_err(|_| bad_row(format!("last_seq {last}")))?;
        Ok(Some(last).filter(|&s| s > 0))
    }

    async fn list(
        &self,
        tenant_id: &TenantId,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<ExecutionId>> {
        validate_id("tenant", tenant_id.as_str())?;
        let rows = self
            .query(Query::List {
                tenant: escape(tenant_id.as_str()).into_owned(),
                limit: clamp(limit as u64),
                offset: clamp(offset as u64),
            })
            .await?;
        rows.iter()
            .map(|row| {
                let stored: &str = row.try_get(0).map_err(|e| bad_row(e.to_string()))?;
                let id =
                    unescape(stored).ok_or_else(|| bad_row(format!("execution id {stored:?}")))?;
                Ok(ExecutionId::from(&*id))
            })
            .collect()
    }
}

/// One row of `read::LOAD_SQL` as a [`StoredEvent`]. The tenant id is decoded once
/// per read and shared by its events.
fn decode_event(
    row: &Row,
    execution_id: &ExecutionId,
    tenant: &mut Option<TenantId>,
) -> Result<StoredEvent> {
    let bad = |e: tokio_postgres::Error| bad_row(e.to_string());
    let seq: i64 = row.try_get(0).map_err(bad)?;
    let ts_ns: i64 = row.try_get(1).map_err(bad)?;
    let body: &[u8] = row.try_get(2).map_err(bad)?;
    let tenant_id = match tenant {
        Some(t) => t.clone(),
        None => {
            let stored: Option<&str> = row.try_get(3).map_err(bad)?;
            let stored = stored.ok_or_else(|| {
                bad_row(format!(
                    "execution {execution_id} has events but no head row"
                ))
            })?;
            let t = unescape(stored).ok_or_else(|| bad_row(format!("tenant id {stored:?}")))?;
            let t = TenantId::from(&*t);
            tenant.get_or_insert(t).clone()
        }
    };
    let event = crate::codec::decode_event(body)
        .map_err(|why| bad_row(format!("execution {execution_id} sequence {seq}: {why}")))?;
    Ok(StoredEvent {
        sequence: u64::try_from(seq).map_err(|_| bad_row(format!("sequence {seq}")))?,
        execution_id: execution_id.clone(),
        tenant_id,
        event,
        timestamp: DateTime::from_timestamp_nanos(ts_ns),
    })
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.sender.lock().take();
        self.follow.close();
        // Not `Runtime::drop`, which panics inside an async context: queued appends
        // were awaited by callers holding `&self`, so nothing is left to finish.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn runtime() -> Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("execlog-pg")
        .enable_all()
        .build()
        .map_err(|e| Error::io("start the PostgreSQL client runtime", "", e))
}

fn target(url: &str, options: &PgOptions) -> Result<Target> {
    let mut target = Target::parse(url, options.schema.clone(), options.connect_timeout)?;
    target.reconnect_timeout = options.reconnect_timeout;
    Ok(target)
}

fn panicked(e: tokio::task::JoinError) -> Error {
    Error::poisoned(format!("a PostgreSQL client task failed: {e}"))
}

#[async_trait]
impl StorageBackend for PgStore {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    /// Fails at once when closed, and within `connect_timeout` (not the longer
    /// `reconnect_timeout` of other calls) when the server cannot be reached: a
    /// liveness probe wants a quick answer.
    async fn health_check(&self) -> anyhow::Result<()> {
        if self.sender.lock().is_none() {
            return Err(Error::Closed.into());
        }
        let (readers, target) = (Arc::clone(&self.readers), Arc::clone(&self.target));
        let limit = self.options.connect_timeout;
        let job = self.handle.spawn(async move {
            match tokio::time::timeout(limit, readers.run(&Query::Ping)).await {
                Ok(result) => result.map(drop),
                Err(_) => Err(Error::Unavailable {
                    server: target.server.clone(),
                    reason: format!(
                        "no answer to a health check within {limit:?} (connect_timeout)"
                    ),
                }),
            }
        });
        Ok(job.await.map_err(panicked)??)
    }
}

#[async_trait]
impl EventStore for PgStore {
    async fn append(
        &self,
        execution_id: &ExecutionId,
        tenant_id: &TenantId,
        event: ExecutionEventData,
    ) -> anyhow::Result<u64> {
        Ok(self.submit(execution_id, tenant_id, vec![event]).await?)
    }

    async fn append_batch(
        &self,
        execution_id: &ExecutionId,
        tenant_id: &TenantId,
        events: Vec<ExecutionEventData>,
    ) -> anyhow::Result<u64> {
        Ok(self.submit(execution_id, tenant_id, events).await?)
    }

    async fn load_events(&self, execution_id: &ExecutionId) -> anyhow::Result<Vec<StoredEvent>> {
        Ok(self.read_range(execution_id, 0, usize::MAX).await?)
    }

    async fn load_events_after(
        &self,
        execution_id: &ExecutionId,
        after_seq: u64,
    ) -> anyhow::Result<Vec<StoredEvent>> {
        Ok(self.read_range(execution_id, after_seq, usize::MAX).await?)
    }

    async fn get_latest_sequence(&self, execution_id: &ExecutionId) -> anyhow::Result<Option<u64>> {
        Ok(self.latest(execution_id).await?)
    }

    async fn list_executions(
        &self,
        tenant_id: &TenantId,
        limit: usize,
        offset: usize,
    ) -> anyhow::Result<Vec<ExecutionId>> {
        Ok(self.list(tenant_id, limit, offset).await?)
    }
}
