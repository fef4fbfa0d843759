//! `LogStore`'s guarded appends and tenant-checked reads (`guard.rs`).
//!
//! A guarded append is prepared and admitted like any other, then
//! `append::enqueue_guarded` decides under the store lock: queue it, refuse it
//! (tenant, expected sequence), or hand back the keyed appends whose key hash matches.
//! Those are read outside the lock, after waiting for any that is not durable yet:
//! the retry is answered with the one holding its key (a replay or a conflict), and if
//! none does (a hash collision) the decision is taken again with them ruled out. Keys
//! and sequences never change once handed out, so what was read stays true.

use async_trait::async_trait;

use crate::append::{self, Enqueued, Guard, Prepared, Verdict};
use crate::error::{Error, Result};
use crate::event::ExecutionEventData;
use crate::guard::{AppendOptions, AppendOutcome, GuardedEventStore, TenantView};
use crate::ids::{ExecutionId, TenantId, validate_id};
use crate::log_store::LogStore;
use crate::queue::{Admitted, Appending};
use crate::record::Pos;

impl LogStore {
    /// Appends `events` atomically if `options` allow it; returns once they (or, for a
    /// replay, the original ones) are durable. See [`GuardedEventStore::append_with`].
    pub fn append_with_blocking(
        &self,
        execution_id: &ExecutionId,
        tenant_id: &TenantId,
        events: Vec<ExecutionEventData>,
        options: AppendOptions,
    ) -> Result<AppendOutcome> {
        let _appending = Appending::start(&self.shared().queue_bound);
        let prepared = self.prepare_guarded(execution_id, tenant_id, events, &options)?;
        let mut admitted = self
            .shared()
            .queue_bound
            .admit_blocking(prepared.queued_bytes());
        let mut ruled_out = Vec::new();
        loop {
            let guard = Guard {
                expected: options.expected,
                ruled_out: &ruled_out,
            };
            let ids = (execution_id, tenant_id);
            match append::enqueue_guarded(self.shared(), ids, &prepared, admitted, None, &guard)? {
                Enqueued::Queued {
                    first,
                    last,
                    ticket,
                } => {
                    ticket.wait()?;
                    return Ok(stored(first, last));
                }
                Enqueued::Candidates {
                    execution,
                    candidates,
                    admitted: back,
                } => {
                    admitted = back;
                    for c in candidates {
                        if let Some(ticket) = &c.pending {
                            ticket.settle_blocking();
                        }
                        if let Some(answer) = self.answer(execution, c.pos, &prepared)? {
                            return answer;
                        }
                        ruled_out.push(c.pos);
                    }
                }
            }
        }
    }

    /// The tenant owning an execution with durable events; `None` if there is none.
    pub fn execution_tenant_blocking(
        &self,
        execution_id: &ExecutionId,
    ) -> Result<Option<TenantId>> {
        self.check_open()?;
        validate_id("execution", execution_id.as_str())?;
        let state = self.shared().index()?;
        Ok(state
            .index
            .visible(execution_id)
            .map(|(_, e)| e)
            .filter(|e| e.durable_seq > 0)
            .map(|e| state.index.tenant_of(e).clone()))
    }

    /// Reads as `tenant_id`: see [`TenantView`].
    pub fn tenant(&self, tenant_id: &TenantId) -> TenantView<'_, LogStore> {
        GuardedEventStore::tenant(self, tenant_id)
    }

    fn prepare_guarded(
        &self,
        execution_id: &ExecutionId,
        tenant_id: &TenantId,
        events: Vec<ExecutionEventData>,
        options: &AppendOptions,
    ) -> Result<Prepared> {
        self.check_writable_index()?;
        // The order of the checks is PgStore's too: ids, key, then the events.
        validate_id("execution", execution_id.as_str())?;
        validate_id("tenant", tenant_id.as_str())?;
        options.validate()?;
        let ids = (execution_id, tenant_id);
        append::prepare_keyed(self.shared(), ids, events, options.idempotency_key.clone())
    }

    /// The answer to a retry from the keyed append at `pos`, settled already: `None`
    /// if that append holds another key.
    fn answer(
        &self,
        execution: crate::index::ExecNo,
        pos: Pos,
        prepared: &Prepared,
    ) -> Result<Option<Result<AppendOutcome>>> {
        Ok(
            match append::verify(self.shared(), execution, pos, prepared)? {
                Verdict::OtherKey => None,
                Verdict::Same(outcome) => Some(Ok(outcome)),
                Verdict::Conflict => Some(Err(Error::IdempotencyConflict)),
            },
        )
    }
}

/// The outcome of an append this call stored.
fn stored(first: u64, last: u64) -> AppendOutcome {
    AppendOutcome {
        first_sequence: first,
        last_sequence: last,
        replayed: false,
    }
}

#[async_trait]
impl GuardedEventStore for LogStore {
    async fn append_with(
        &self,
        execution_id: &ExecutionId,
        tenant_id: &TenantId,
        events: Vec<ExecutionEventData>,
        options: AppendOptions,
    ) -> anyhow::Result<AppendOutcome> {
        let _appending = Appending::start_async(&self.shared().queue_bound);
        self.shared().verification.settled().await;
        let prepared = self.prepare_guarded(execution_id, tenant_id, events, &options)?;
        let mut admitted: Admitted = self.admit(&prepared).await;
        let mut ruled_out = Vec::new();
        loop {
            let guard = Guard {
                expected: options.expected,
                ruled_out: &ruled_out,
            };
            let ids = (execution_id, tenant_id);
            match append::enqueue_guarded(self.shared(), ids, &prepared, admitted, None, &guard)? {
                Enqueued::Queued {
                    first,
                    last,
                    ticket,
                } => {
                    ticket.into_future().await?;
                    return Ok(stored(first, last));
                }
                Enqueued::Candidates {
                    execution,
                    candidates,
                    admitted: back,
                } => {
                    admitted = back;
                    for c in candidates {
                        if let Some(ticket) = &c.pending {
                            ticket.settled().await;
                        }
                        if let Some(answer) = self.answer(execution, c.pos, &prepared)? {
                            return Ok(answer?);
                        }
                        ruled_out.push(c.pos);
                    }
                }
            }
        }
    }

    async fn execution_tenant(
        &self,
        execution_id: &ExecutionId,
    ) -> anyhow::Result<Option<TenantId>> {
        Ok(self.execution_tenant_blocking(execution_id)?)
    }
}
