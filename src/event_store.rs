//! The contract: [`StorageBackend`] and [`EventStore`], and their implementation for
//! [`LogStore`].
//!
//! This is the only place `anyhow` appears: the contract returns `anyhow::Result`, and
//! every error inside is an [`execlog::Error`](crate::Error), recoverable with
//! `err.downcast_ref::<execlog::Error>()`.
//!
//! Appends never block the executor: while the queue to the commit thread is full
//! (`Options::max_queued_bytes`), the future waits for admission with a registered
//! waker, woken when space frees; then it registers a waker on the append's ticket and
//! the commit thread wakes it after the fdatasync. Reads run on the calling
//! task; they touch only memory-mapped, already durable bytes.

use async_trait::async_trait;

use crate::event::{ExecutionEventData, StoredEvent};
use crate::ids::{ExecutionId, TenantId};
use crate::log_store::LogStore;
use crate::queue::Appending;

/// What every storage backend of the kernel offers besides its data API.
#[async_trait]
pub trait StorageBackend: Send + Sync {
    /// A short name for logs and metrics, e.g. `"execlog"`.
    fn backend_name(&self) -> &'static str;

    /// Succeeds when the backend can serve requests (open, not poisoned).
    async fn health_check(&self) -> anyhow::Result<()>;
}

/// The append-only, authoritative log of execution events.
///
/// Guarantees: an event is durable when `append` returns `Ok`; sequences are strictly
/// increasing, consecutive from 1 within an execution; events are never modified.
///
/// Cancellation: an append whose future is dropped after it was first polled may still
/// be stored (its records were already queued), as may one that failed with an outcome
/// the error calls unknown. To retry safely, use
/// [`GuardedEventStore::append_with`](crate::GuardedEventStore::append_with) with an
/// idempotency key.
#[async_trait]
pub trait EventStore: StorageBackend {
    /// Appends one event; returns its sequence once it is durable.
    async fn append(
        &self,
        execution_id: &ExecutionId,
        tenant_id: &TenantId,
        event: ExecutionEventData,
    ) -> anyhow::Result<u64>;

    /// Appends events atomically with consecutive sequences (all or none, also across
    /// a crash); returns the first sequence.
    async fn append_batch(
        &self,
        execution_id: &ExecutionId,
        tenant_id: &TenantId,
        events: Vec<ExecutionEventData>,
    ) -> anyhow::Result<u64>;

    /// All events of an execution in sequence order; empty if it is unknown.
    async fn load_events(&self, execution_id: &ExecutionId) -> anyhow::Result<Vec<StoredEvent>>;

    /// Events with sequence greater than `after_seq`, in sequence order.
    async fn load_events_after(
        &self,
        execution_id: &ExecutionId,
        after_seq: u64,
    ) -> anyhow::Result<Vec<StoredEvent>>;

    /// The latest sequence of an execution; `None` if it has no events.
    async fn get_latest_sequence(&self, execution_id: &ExecutionId) -> anyhow::Result<Option<u64>>;

    /// Whether the execution has any event.
    async fn execution_exists(&self, execution_id: &ExecutionId) -> anyhow::Result<bool> {
        Ok(self.get_latest_sequence(execution_id).await?.is_some())
    }

    /// A tenant's executions, newest first by creation, skipping `offset`, at most
    /// `limit`.
    async fn list_executions(
        &self,
        tenant_id: &TenantId,
        limit: usize,
        offset: usize,
    ) -> anyhow::Result<Vec<ExecutionId>>;

    /// Number of events of an execution.
    async fn count_events(&self, execution_id: &ExecutionId) -> anyhow::Result<u64> {
        Ok(self.get_latest_sequence(execution_id).await?.unwrap_or(0))
    }
}

#[async_trait]
impl StorageBackend for LogStore {
    fn backend_name(&self) -> &'static str {
        "execlog"
    }

    async fn health_check(&self) -> anyhow::Result<()> {
        Ok(self.check_writable()?)
    }
}

#[async_trait]
impl EventStore for LogStore {
    async fn append(
        &self,
        execution_id: &ExecutionId,
        tenant_id: &TenantId,
        event: ExecutionEventData,
    ) -> anyhow::Result<u64> {
        let _appending = Appending::start_async(&self.shared().queue_bound);
        self.shared().verification.settled().await;
        let prepared = self.prepare(execution_id, tenant_id, vec![event])?;
        let admitted = self.admit(&prepared).await;
        let (sequence, ticket) = self.enqueue(execution_id, tenant_id, prepared, admitted)?;
        ticket.into_future().await?;
        Ok(sequence)
    }

    async fn append_batch(
        &self,
        execution_id: &ExecutionId,
        tenant_id: &TenantId,
        events: Vec<ExecutionEventData>,
    ) -> anyhow::Result<u64> {
        let _appending = Appending::start_async(&self.shared().queue_bound);
        self.shared().verification.settled().await;
        let prepared = self.prepare(execution_id, tenant_id, events)?;
        let admitted = self.admit(&prepared).await;
        let (sequence, ticket) = self.enqueue(execution_id, tenant_id, prepared, admitted)?;
        ticket.into_future().await?;
        Ok(sequence)
    }

    async fn load_events(&self, execution_id: &ExecutionId) -> anyhow::Result<Vec<StoredEvent>> {
        Ok(self.load_events_blocking(execution_id)?)
    }

    async fn load_events_after(
        &self,
        execution_id: &ExecutionId,
        after_seq: u64,
    ) -> anyhow::Result<Vec<StoredEvent>> {
        Ok(self.load_events_after_blocking(execution_id, after_seq)?)
    }

    async fn get_latest_sequence(&self, execution_id: &ExecutionId) -> anyhow::Result<Option<u64>> {
        Ok(self.get_latest_sequence_blocking(execution_id)?)
    }

    async fn list_executions(
        &self,
        tenant_id: &TenantId,
        limit: usize,
        offset: usize,
    ) -> anyhow::Result<Vec<ExecutionId>> {
        Ok(self.list_executions_blocking(tenant_id, limit, offset)?)
    }
}
