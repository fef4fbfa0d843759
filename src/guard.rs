//! Guarded appends and tenant-checked reads: [`GuardedEventStore`], the one trait both
//! backends implement beside the seed's [`EventStore`].
//!
//! - An append may carry an [`ExpectedSequence`] (optimistic concurrency) and an
//!   idempotency key (exact: every key ever used on an execution is remembered, not a
//!   cache of recent ones). Both are checked atomically with the write, against every
//!   other append to the same execution, guarded or not.
//! - [`TenantView`] reads as one tenant: another tenant's execution looks exactly like
//!   an unknown one.
//!
//! Order of the checks, the same on both backends: ids and events are validated; the
//! tenant must own the execution (else [`Error::TenantMismatch`]); a key used before on
//! the execution answers the retry (a replay, or [`Error::IdempotencyConflict`]) whatever
//! the expected sequence says now, because the original append passed its own check;
//! only then is the expected sequence checked. A refused append writes nothing and uses
//! up no sequence.

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::event::{ExecutionEventData, StoredEvent};
use crate::event_store::EventStore;
use crate::ids::{ExecutionId, TenantId};

/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

/// What an append expects of its execution's latest sequence before it.
///
/// "Latest" counts every sequence already handed out, including those of appends still
/// waiting for their fsync: of two appends racing with the same expectation, exactly one
/// wins, even before the winner is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ExpectedSequence {
    /// No expectation: the append goes after whatever is there.
    #[default]
    Any,
    /// The execution must not exist yet (this append creates it).
    NoExecution,
    /// The execution's latest sequence must be exactly this. `Exactly(0)` means the
    /// same as [`ExpectedSequence::NoExecution`]: sequences start at 1.
    Exactly(u64),
}

impl ExpectedSequence {
    /// Whether an execution whose latest sequence is `latest` (`None`: it does not
    /// exist) satisfies this expectation.
    pub fn admits(self, latest: Option<u64>) -> bool {
        match self {
            ExpectedSequence::Any => true,
            ExpectedSequence::NoExecution | ExpectedSequence::Exactly(0) => latest.is_none(),
            ExpectedSequence::Exactly(n) => latest == Some(n),
        }
    }

    /// `Ok` if `latest` satisfies this expectation, else
    /// [`Error::WrongExpectedSequence`].
    pub(crate) fn check(self, latest: Option<u64>) -> Result<()> {
        if self.admits(latest) {
            Ok(())
        } else {
            Err(Error::WrongExpectedSequence {
                expected: self,
                actual: latest,
            })
        }
    }
}

impl std::fmt::Display for ExpectedSequence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedSequence::Any => write!(f, "any sequence"),
            ExpectedSequence::NoExecution | ExpectedSequence::Exactly(0) => {
                write!(f, "no execution")
            }
            ExpectedSequence::Exactly(n) => write!(f, "latest sequence {n}"),
        }
    }
}

/// How an append is guarded. `AppendOptions::default()` is an unguarded append, the
/// same as [`EventStore::append_batch`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AppendOptions {
    /// What the execution's latest sequence must be before this append.
    pub expected: ExpectedSequence,
    /// Makes the append idempotent: a non-empty string of at most
    /// [`MAX_IDEMPOTENCY_KEY_BYTES`] bytes, scoped to the execution. A later append to
    /// the same execution with the same key and equal events writes nothing and
    /// returns the first one's outcome with `replayed: true`; with other events it
    /// fails with [`Error::IdempotencyConflict`].
    pub idempotency_key: Option<String>,
}

impl AppendOptions {
    /// Options with this expected sequence and no key.
    pub fn expect(expected: ExpectedSequence) -> Self {
        AppendOptions {
            expected,
            idempotency_key: None,
        }
    }

    /// Options with this idempotency key and no expectation.
    pub fn key(key: impl Into<String>) -> Self {
        AppendOptions {
            expected: ExpectedSequence::Any,
            idempotency_key: Some(key.into()),
        }
    }

    /// These options with `key` as idempotency key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// These options with `expected` as expected sequence.
    pub fn with_expected(mut self, expected: ExpectedSequence) -> Self {
        self.expected = expected;
        self
    }

    /// Refuses an empty or overlong key before anything else happens.
    pub(crate) fn validate(&self) -> Result<()> {
        match &self.idempotency_key {
            Some(key) if key.is_empty() => Err(Error::InvalidArgument(
                "an idempotency key must not be empty".into(),
            )),
            Some(key) if key.len() > MAX_IDEMPOTENCY_KEY_BYTES => {
                Err(Error::InvalidArgument(format!(
                    "idempotency key is {} bytes; at most {MAX_IDEMPOTENCY_KEY_BYTES} are allowed",
                    key.len()
                )))
            }
            _ => Ok(()),
        }
    }
}

/// What a guarded append stored, or, for a replay, what the original append stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AppendOutcome {
    /// Sequence of the first event of the append.
    pub first_sequence: u64,
    /// Sequence of its last event.
    pub last_sequence: u64,
    /// `true` when nothing was written because an earlier append with the same
    /// idempotency key and equal events had stored them.
    pub replayed: bool,
}

/// Guarded appends and tenant-checked reads, on every backend.
///
/// Errors are `anyhow::Error` wrapping [`Error`], as in [`EventStore`]: recover the
/// variant with `err.downcast_ref::<execlog::Error>()`.
#[async_trait]
pub trait GuardedEventStore: EventStore {
    /// Appends `events` atomically, as [`EventStore::append_batch`], if `options` allow
    /// it; returns once the events (or, for a replay, the original ones) are durable.
    ///
    /// The checks, in order, atomically with the write:
    /// 1. ids, the key's length, the events (as `append_batch`): `InvalidArgument`;
    /// 2. the tenant owns the execution: else [`Error::TenantMismatch`] (which says
    ///    that the execution exists, not whose it is: prefer unguessable ids such as
    ///    [`ExecutionId::new`]'s);
    /// 3. the key: if an earlier append to this execution used it, the answer is
    ///    that append's outcome with `replayed: true` (same events) or
    ///    [`Error::IdempotencyConflict`] (other events), whatever the expected
    ///    sequence says now: the original passed its own check. So of several racing
    ///    `NoExecution` appends with one key, all succeed and exactly one has
    ///    `replayed: false`: look at `replayed` to know whether this call wrote;
    /// 4. the expected sequence: else [`Error::WrongExpectedSequence`], whose `actual`
    ///    may be a sequence still waiting for its fsync (a reload can lag it; a retry
    ///    with `Exactly(actual)` is right).
    ///
    /// A refused append writes nothing and uses up no sequence. A dropped future may
    /// still have stored its events; retrying with the same idempotency key is the
    /// safe answer.
    async fn append_with(
        &self,
        execution_id: &ExecutionId,
        tenant_id: &TenantId,
        events: Vec<ExecutionEventData>,
        options: AppendOptions,
    ) -> anyhow::Result<AppendOutcome>;

    /// The tenant owning an execution with durable events; `None` if there is none.
    async fn execution_tenant(
        &self,
        execution_id: &ExecutionId,
    ) -> anyhow::Result<Option<TenantId>>;

    /// Reads as `tenant_id`: see [`TenantView`]. (On a trait object, use
    /// [`TenantView::new`].)
    fn tenant(&self, tenant_id: &TenantId) -> TenantView<'_, Self>
    where
        Self: Sized,
    {
        TenantView::new(self, tenant_id)
    }
}

/// The read side of a store, as one tenant sees it: an execution of another tenant is
/// answered exactly as an unknown execution is (no events, no sequence, not existing),
/// so that an execution id learned elsewhere reveals nothing to reads. (Appends still
/// answer [`Error::TenantMismatch`]; see [`GuardedEventStore::append_with`].)
///
/// Made by `store.tenant(&tenant_id)`, or [`TenantView::new`] for a trait object.
/// `LogStore` and `PgStore` views also have blocking twins of the reads.
#[derive(Debug)]
pub struct TenantView<'a, S: ?Sized> {
    store: &'a S,
    tenant_id: TenantId,
}

impl<'a, S: ?Sized> TenantView<'a, S> {
    /// A view of `store` as `tenant_id`; works for `dyn GuardedEventStore` too.
    pub fn new(store: &'a S, tenant_id: &TenantId) -> Self {
        TenantView {
            store,
            tenant_id: tenant_id.clone(),
        }
    }

    /// The store read through this view.
    pub(crate) fn store(&self) -> &'a S {
        self.store
    }
}

impl<S: GuardedEventStore + ?Sized> TenantView<'_, S> {
    /// The tenant this view reads as.
    pub fn tenant_id(&self) -> &TenantId {
        &self.tenant_id
    }

    /// Whether the execution exists and belongs to this tenant.
    async fn owns(&self, execution_id: &ExecutionId) -> anyhow::Result<bool> {
        let owner = self.store.execution_tenant(execution_id).await?;
        Ok(owner.as_ref() == Some(&self.tenant_id))
    }

    /// All events of one of this tenant's executions; empty otherwise.
    pub async fn load_events(
        &self,
        execution_id: &ExecutionId,
    ) -> anyhow::Result<Vec<StoredEvent>> {
        self.load_events_after(execution_id, 0).await
    }

    /// Events after `after_seq` of one of this tenant's executions; empty otherwise.
    pub async fn load_events_after(
        &self,
        execution_id: &ExecutionId,
        after_seq: u64,
    ) -> anyhow::Result<Vec<StoredEvent>> {
        if !self.owns(execution_id).await? {
            return Ok(Vec::new());
        }
        let events = self
            .store
            .load_events_after(execution_id, after_seq)
            .await?;
        // Ownership never changes, but a read must not trust a check made apart from it.
        debug_assert!(events.iter().all(|e| e.tenant_id == self.tenant_id));
        Ok(events
            .into_iter()
            .filter(|e| e.tenant_id == self.tenant_id)
            .collect())
    }

    /// The latest sequence of one of this tenant's executions; `None` otherwise.
    pub async fn get_latest_sequence(
        &self,
        execution_id: &ExecutionId,
    ) -> anyhow::Result<Option<u64>> {
        if !self.owns(execution_id).await? {
            return Ok(None);
        }
        self.store.get_latest_sequence(execution_id).await
    }

    /// Whether this tenant has the execution.
    pub async fn execution_exists(&self, execution_id: &ExecutionId) -> anyhow::Result<bool> {
        Ok(self.get_latest_sequence(execution_id).await?.is_some())
    }

    /// Number of events of one of this tenant's executions; 0 otherwise.
    pub async fn count_events(&self, execution_id: &ExecutionId) -> anyhow::Result<u64> {
        Ok(self.get_latest_sequence(execution_id).await?.unwrap_or(0))
    }

    /// This tenant's executions, newest first, as [`EventStore::list_executions`].
    pub async fn list_executions(
        &self,
        limit: usize,
        offset: usize,
    ) -> anyhow::Result<Vec<ExecutionId>> {
        self.store
            .list_executions(&self.tenant_id, limit, offset)
            .await
    }
}

/// Blocking twins of [`TenantView`]'s reads for a store with blocking twins of its own
/// (`LogStore`, `PgStore`): the same answers, without an async runtime.
macro_rules! blocking_tenant_view {
    ($store:ty) => {
        impl $crate::guard::TenantView<'_, $store> {
            /// Whether the execution exists and belongs to this tenant.
            fn owns_blocking(&self, execution_id: &ExecutionId) -> $crate::Result<bool> {
                let owner = self.store().execution_tenant_blocking(execution_id)?;
                Ok(owner.as_ref() == Some(self.tenant_id()))
            }

            /// [`TenantView::load_events`], blocking.
            pub fn load_events_blocking(
                &self,
                execution_id: &ExecutionId,
            ) -> $crate::Result<Vec<StoredEvent>> {
                self.load_events_after_blocking(execution_id, 0)
            }

            /// [`TenantView::load_events_after`], blocking.
            pub fn load_events_after_blocking(
                &self,
                execution_id: &ExecutionId,
                after_seq: u64,
            ) -> $crate::Result<Vec<StoredEvent>> {
                if !self.owns_blocking(execution_id)? {
                    return Ok(Vec::new());
                }
                let events = self
                    .store()
                    .load_events_after_blocking(execution_id, after_seq)?;
                Ok(events
                    .into_iter()
                    .filter(|e| &e.tenant_id == self.tenant_id())
                    .collect())
            }

            /// [`TenantView::get_latest_sequence`], blocking.
            pub fn get_latest_sequence_blocking(
                &self,
                execution_id: &ExecutionId,
            ) -> $crate::Result<Option<u64>> {
                if !self.owns_blocking(execution_id)? {
                    return Ok(None);
                }
                self.store().get_latest_sequence_blocking(execution_id)
            }

            /// [`TenantView::execution_exists`], blocking.
            pub fn execution_exists_blocking(
                &self,
                execution_id: &ExecutionId,
            ) -> $crate::Result<bool> {
                Ok(self.get_latest_sequence_blocking(execution_id)?.is_some())
            }

            /// [`TenantView::count_events`], blocking.
            pub fn count_events_blocking(&self, execution_id: &ExecutionId) -> $crate::Result<u64> {
                Ok(self
                    .get_latest_sequence_blocking(execution_id)?
                    .unwrap_or(0))
            }

            /// [`TenantView::list_executions`], blocking.
            pub fn list_executions_blocking(
                &self,
                limit: usize,
                offset: usize,
            ) -> $crate::Result<Vec<ExecutionId>> {
                self.store()
                    .list_executions_blocking(self.tenant_id(), limit, offset)
            }
        }
    };
}

blocking_tenant_view!(crate::log_store::LogStore);
#[cfg(feature = "postgres")]
blocking_tenant_view!(crate::postgres::PgStore);
