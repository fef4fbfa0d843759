//! The lifecycle of executions: [`Lifecycle`], the administrative operations both
//! backends implement beside the append-only [`EventStore`] contract.
//!
//! Events stay append-only: nothing here changes an event. What ends is a whole
//! execution (or every execution of a tenant), by a deletion recorded in the store
//! itself and durable before the call returns. From then on the execution is gone for
//! readers (loads, listings, counts, `execution_exists`, subscriptions, live ones
//! included) and every append to it fails with [`Error::Deleted`](crate::Error::Deleted),
//! after reopen and after a crash too, whatever its tenant, idempotency key or expected
//! sequence. A deleted id is never reused.
//!
//! Deleting a tenant deletes the executions it has when the deletion is recorded; the
//! tenant id itself stays usable for new executions.
//!
//! A fork is a new execution of the same tenant whose first events are another
//! execution's (same events, same timestamps), followed by its own. Deleting the
//! source keeps its forks whole; deleting a fork leaves its source alone; deleting the
//! tenant deletes both.

use std::time::Duration;

use async_trait::async_trait;

use crate::event_store::EventStore;
use crate::fork::ForkPoint;
use crate::ids::{ExecutionId, TenantId};

/// Deleting executions and tenants, and pruning old executions. Implemented by
/// `LogStore` and `PgStore`, with the same semantics (one conformance suite).
#[async_trait]
pub trait Lifecycle: EventStore {
    /// Deletes an execution, durably. Returns `false` (and records nothing) if no such
    /// execution exists or it was deleted already.
    async fn delete_execution(&self, execution_id: &ExecutionId) -> anyhow::Result<bool>;

    /// Deletes every execution `tenant_id` has, durably, as one recorded deletion.
    /// Returns how many executions it deleted (0: nothing recorded).
    async fn delete_tenant(&self, tenant_id: &TenantId) -> anyhow::Result<u64>;

    /// Deletes, durably, every execution whose last event is older than `older_than`
    /// (by its stored timestamp, against the current time). An execution appended to
    /// while pruning runs is kept. Returns how many executions it deleted.
    async fn prune(&self, older_than: Duration) -> anyhow::Result<u64>;

    /// Makes `new_id` a fork of `source`, durably: its events `1..=at_sequence` are the
    /// source's (same events, same timestamps, read under `new_id`), and its own
    /// appends follow from `at_sequence + 1`. `at_sequence` must be between 1 and the
    /// source's latest sequence; `new_id` must never have been used (a deleted id is
    /// `Deleted`, a live one `InvalidArgument`). The fork belongs to the source's
    /// tenant and does not inherit its idempotency keys.
    ///
    /// A subscription delivers the shared events once, under the source, and a fork's
    /// own events under the fork: `SubscriptionFilter::Execution(fork)` starts at
    /// `at_sequence + 1` (read the shared ones with `load_events`). An export writes a
    /// fork whole, and an import makes it an independent execution (no fork point).
    async fn fork_execution(
        &self,
        source: &ExecutionId,
        at_sequence: u64,
        new_id: &ExecutionId,
    ) -> anyhow::Result<()>;

    /// Where `execution_id` was forked from: its parent (`ParentRelation::Fork`) and how
    /// many events it shares; `None` if it is not a fork (or does not exist). The
    /// parent named may since have been deleted: the fork still reads its shared
    /// events, but loading the parent finds nothing.
    async fn fork_point(&self, execution_id: &ExecutionId) -> anyhow::Result<Option<ForkPoint>>;
}
