//! [`GuardedEventStore`] on [`PgStore`]: guarded appends and the owner of an
//! execution, with their blocking twins.
//!
//! An append with `AppendOptions::default()` is an ordinary append and goes through
//! the group commit (`group_commit.rs`). One with an idempotency key or an expected
//! sequence is validated and encoded here, exactly as an ordinary one (the same
//! errors), then runs as a transaction of its own (`guarded_commit.rs`) on the store's
//! runtime. It is admitted under the read side of `PgStore::gate`, held until it is
//! answered, so that `close` can wait for every admitted guarded append.

use std::sync::Arc;

use async_trait::async_trait;

use super::guarded_commit::Job;
use super::read::{Query, bad_row};
use super::sql_id::{escape, unescape};
use super::{PgStore, block_on, panicked};
use crate::append::encode_all;
use crate::error::{Error, Result};
use crate::event::ExecutionEventData;
use crate::guard::{AppendOptions, AppendOutcome, GuardedEventStore, TenantView};
use crate::ids::{ExecutionId, TenantId, validate_id};

impl PgStore {
    /// Appends `events` atomically if `options` allow it; returns what was stored, or,
    /// for a replay of an idempotency key, what the original append stored. The
    /// blocking twin of [`GuardedEventStore::append_with`].
    pub fn append_with_blocking(
        &self,
        execution_id: &ExecutionId,
        tenant_id: &TenantId,
        events: Vec<ExecutionEventData>,
        options: AppendOptions,
    ) -> Result<AppendOutcome> {
        block_on(self.append_guarded(execution_id, tenant_id, events, options))
    }

    /// The tenant owning an execution with committed events; `None` if there is none.
    /// The blocking twin of [`GuardedEventStore::execution_tenant`].
    pub fn execution_tenant_blocking(
        &self,
        execution_id: &ExecutionId,
    ) -> Result<Option<TenantId>> {
        block_on(self.owner(execution_id))
    }

    /// Reads as `tenant_id` ([`TenantView`]); the same as
    /// [`GuardedEventStore::tenant`], without importing the trait.
    pub fn tenant(&self, tenant_id: &TenantId) -> TenantView<'_, PgStore> {
        GuardedEventStore::tenant(self, tenant_id)
    }

    async fn append_guarded(
        &self,
        execution_id: &ExecutionId,
        tenant_id: &TenantId,
        events: Vec<ExecutionEventData>,
        options: AppendOptions,
    ) -> Result<AppendOutcome> {
        validate_id("execution", execution_id.as_str())?;
        validate_id("tenant", tenant_id.as_str())?;
        options.validate()?;
        if options == AppendOptions::default() {
            let count = events.len() as u64;
            let first = self.submit(execution_id, tenant_id, events).await?;
            return Ok(AppendOutcome {
                first_sequence: first,
                last_sequence: first + count - 1,
                replayed: false,
            });
        }
        if events.is_empty() {
            return Err(Error::InvalidArgument(
                "an append needs at least one event; nothing was stored".into(),
            ));
        }
        super::follow::check_transaction_events(events.len())?;
        let bodies = encode_all(
            self.options.max_event_bytes,
            self.options.max_batch_bytes,
            events,
        )?;
        let job = Job {
            execution: escape(execution_id.as_str()).into_owned(),
            tenant: escape(tenant_id.as_str()).into_owned(),
            execution_id: execution_id.clone(),
            tenant_id: tenant_id.clone(),
            bodies,
            expected: options.expected,
            key: options.idempotency_key,
        };
        // Admitted before the closed check, so that `close` either refuses this append
        // or waits for its answer.
        let admitted = Arc::clone(&self.gate).read_owned().await;
        if self.sender.lock().is_none() {
            return Err(Error::Closed);
        }
        let guarded = Arc::clone(&self.guarded);
        // Runs to its answer even if the caller stops waiting, as a queued append does.
        let task = self.handle.spawn(async move {
            let answer = guarded.append(&job).await;
            drop(admitted);
            answer
        });
        let answer = task.await.map_err(panicked)?;
        if answer.is_ok() {
            self.follow.committed();
        }
        answer
    }

    async fn owner(&self, execution_id: &ExecutionId) -> Result<Option<TenantId>> {
        validate_id("execution", execution_id.as_str())?;
        let rows = self
            .query(Query::Tenant {
                execution: escape(execution_id.as_str()).into_owned(),
            })
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let stored: &str = row.try_get(0).map_err(|e| bad_row(e.to_string()))?;
        let tenant = unescape(stored).ok_or_else(|| bad_row(format!("tenant id {stored:?}")))?;
        Ok(Some(TenantId::from(&*tenant)))
    }
}

#[async_trait]
impl GuardedEventStore for PgStore {
    async fn append_with(
        &self,
        execution_id: &ExecutionId,
        tenant_id: &TenantId,
        events: Vec<ExecutionEventData>,
        options: AppendOptions,
    ) -> anyhow::Result<AppendOutcome> {
        Ok(self
            .append_guarded(execution_id, tenant_id, events, options)
            .await?)
    }

    async fn execution_tenant(
        &self,
        execution_id: &ExecutionId,
    ) -> anyhow::Result<Option<TenantId>> {
        Ok(self.owner(execution_id).await?)
    }
}
