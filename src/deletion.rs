//! Deleting executions on the embedded engine: the tombstone record, queuing it, and
//! what it does to the index (`Lifecycle` in `lifecycle.rs` is the API).
//!
//! A deletion is a record in the log (kind `KIND_DELETE`, format version 3), written
//! through the commit path like an append and acknowledged only once fdatasync covered
//! it, so it survives exactly what an acknowledged append survives. Its body names what
//! it deletes (docs/FORMAT.md, "Tombstones"):
//!
//! ```text
//! byte 0   target   1: one execution (header `execution` = its number)
//!                   2: a tenant's executions (header `execution` = how many executions
//!                      the store had numbered when it was written: those below)
//! byte 1…  name     the execution id (target 1) or tenant id (target 2), UTF-8
//! ```
//!
//! Invariants: a tombstone is queued under the store lock, after every record of the
//! executions it deletes and before any later one, so log order decides, at open as
//! live: appends are refused from the moment it is queued ([`Life::Deleting`]), readers
//! stop seeing the execution once it is durable ([`Life::Deleted`]). Only live
//! executions get a tombstone, so replay meets at most one per execution and no record
//! of an execution after its tombstone; anything else is corruption.
//!
//! [`Life::Deleting`]: crate::index::Life::Deleting
//! [`Life::Deleted`]: crate::index::Life::Deleted

use crate::error::{Error, Result};
use crate::ids::{ExecutionId, TenantId, validate_id};
use crate::index::{ExecNo, Index, Life};
use crate::log_store::LogStore;
use crate::queue::{Admitted, Pending, Ticket};
use crate::record::{self, Header, Kind, Pos};
use crate::state::Shared;

/// The first segment format version that holds tombstones.
pub(crate) const SINCE_FORMAT_VERSION: u32 = 3;
/// Body byte 0 of a tombstone of one execution.
const TARGET_EXECUTION: u8 = 1;
/// Body byte 0 of a tombstone of a tenant's executions.
const TARGET_TENANT: u8 = 2;

/// What a caller asks to delete.
pub(crate) enum Target<'a> {
    /// One execution.
    Execution(&'a ExecutionId),
    /// One execution, only if nothing was appended to it since its latest sequence
    /// was `latest` (retention decides on a look taken outside the lock).
    Unchanged(&'a ExecutionId, u64),
    /// Every execution a tenant has now.
    Tenant(&'a TenantId),
}

/// A decoded tombstone.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Tombstone {
    Execution { no: u64, id: String },
    Tenant { below: u64, tenant: String },
}

/// Encodes the body of a tombstone.
fn body(target: u8, name: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(1 + name.len());
    body.push(target);
    body.extend_from_slice(name.as_bytes());
    body
}

/// Decodes a tombstone from its header and body.
pub(crate) fn decode(header: &Header, body: &[u8]) -> std::result::Result<Tombstone, String> {
    let (&target, name) = body.split_first().ok_or("empty tombstone")?;
    let name = std::str::from_utf8(name)
        .map_err(|_| "tombstone name is not UTF-8".to_string())?
        .to_string();
    crate::ids::validate_id("tombstone name", &name).map_err(|e| e.to_string())?;
    match target {
        TARGET_EXECUTION => Ok(Tombstone::Execution {
            no: header.execution,
            id: name,
        }),
        TARGET_TENANT => Ok(Tombstone::Tenant {
            below: header.execution,
            tenant: name,
        }),
        _ => Err(format!("unknown tombstone target {target}")),
    }
}

/// The executions `tombstone` deletes, found in `index` as replay reached it. Fails if
/// the log could not have been written so (see the module's invariants).
pub(crate) fn targets(
    index: &Index,
    tombstone: &Tombstone,
) -> std::result::Result<Vec<ExecNo>, String> {
    match tombstone {
        Tombstone::Execution { no, id } => {
            let e = u32::try_from(*no)
                .ok()
                .and_then(|no| index.get(no))
                .ok_or_else(|| format!("tombstone of unknown execution {no}"))?;
            if e.id.as_str() != id || e.life != Life::Live || e.durable_seq == 0 {
                return Err(format!("tombstone does not match execution {no}"));
            }
            Ok(vec![*no as ExecNo])
        }
        Tombstone::Tenant { below, tenant } => {
            if *below != index.len() as u64 {
                return Err("tenant tombstone out of log order".into());
            }
            let live = live_of(index, &TenantId::from(tenant.as_str()));
            if live.is_empty() {
                return Err(format!(
                    "tombstone of tenant {tenant}, which has no execution"
                ));
            }
            Ok(live)
        }
    }
}

/// The live executions of `tenant`.
fn live_of(index: &Index, tenant: &TenantId) -> Vec<ExecNo> {
    index
        .executions_of(tenant)
        .iter()
        .copied()
        .filter(|&no| index.get(no).is_some_and(|e| e.life == Life::Live))
        .collect()
}

/// Replay: applies a durable tombstone to the index (recovery, readers in other
/// processes). Returns the executions it deleted.
pub(crate) fn replay(
    index: &mut Index,
    header: &Header,
    body: &[u8],
) -> std::result::Result<Vec<ExecNo>, String> {
    let tombstone = decode(header, body)?;
    let nos = targets(index, &tombstone)?;
    for &no in &nos {
        index.mark_deleting(no);
        index.delete(no);
    }
    Ok(nos)
}

/// Bytes a tombstone of `target` may take in the queue, before the lock says exactly.
pub(crate) fn queued_bytes(target: &Target<'_>) -> usize {
    let name = match target {
        Target::Execution(id) | Target::Unchanged(id, _) => id.as_str().len(),
        Target::Tenant(tenant) => tenant.as_str().len(),
    };
    record::framed_len(1 + name)
}

/// Queues the tombstone of `target` if it deletes anything. Returns its ticket and how
/// many executions it deletes, or `None` when nothing is there to delete (unknown,
/// already deleted, or, for `Unchanged`, appended to since). On error nothing changed.
pub(crate) fn enqueue(
    shared: &Shared,
    target: &Target<'_>,
    admitted: Admitted,
) -> Result<Option<(Ticket, u64)>> {
    let mut state = shared.state.lock();
    let state = &mut *state;
    let writer = &mut state.writer;
    writer.check_open()?;
    let index = &mut state.index;
    let (nos, execution_field, body) = match target {
        Target::Execution(id) | Target::Unchanged(id, _) => {
            let Some(no) = index.lookup(id) else {
                return Ok(None);
            };
            let Some(e) = index.get(no) else {
                return Err(Error::Internal("the index lost an execution".into()));
            };
            let changed = matches!(target, Target::Unchanged(_, seen) if *seen != e.reserved_seq);
            if e.life != Life::Live || changed {
                return Ok(None);
            }
            (vec![no], u64::from(no), body(TARGET_EXECUTION, id.as_str()))
        }
        Target::Tenant(tenant) => {
            let nos = live_of(index, tenant);
            if nos.is_empty() {
                return Ok(None);
            }
            (
                nos,
                index.len() as u64,
                body(TARGET_TENANT, tenant.as_str()),
            )
        }
    };
    let len = record::framed_len(body.len());
    let reservation = writer.reserve(len as u64, shared.options.segment_size_bytes);
    let timestamp_ns = writer.next_timestamp_ns();
    let header = Header {
        kind: Kind::Delete,
        // Stamped by the commit thread (record::stamp_group).
        group_start: 0,
        execution: execution_field,
        sequence: 0,
        timestamp_ns,
        prev: None,
        batch_remaining: 0,
    };
    let mut bytes = Vec::with_capacity(len);
    record::encode_unsealed(&header, &[&body], &mut bytes);
    for &no in &nos {
        index.mark_deleting(no);
    }
    let count = nos.len() as u64;
    let ticket = Ticket::default();
    let pending = Pending {
        segment: reservation.segment,
        offset: reservation.offset,
        new_segment_capacity: reservation.new_segment_capacity,
        bytes,
        execution: 0,
        last_sequence: 0,
        last_pos: Pos {
            segment: reservation.segment,
            offset: reservation.offset,
        },
        deletes: nos,
        timestamp_ns,
        ticket: ticket.clone(),
        admitted,
    };
    // On failure the executions stay `Deleting`: the store takes no more writes anyway.
    writer.send(pending, &shared.queue_bound)?;
    Ok(Some((ticket, count)))
}

/// Queues the tombstones of `targets`, then waits until all are durable; returns how
/// many executions they deleted.
pub(crate) fn delete_blocking(shared: &Shared, targets: &[Target<'_>]) -> Result<u64> {
    check_deletable(shared)?;
    let mut queued = Vec::new();
    for target in targets {
        let admitted = shared.queue_bound.admit_blocking(queued_bytes(target));
        queued.extend(enqueue(shared, target, admitted)?);
    }
    let mut deleted = 0;
    for (ticket, count) in queued {
        ticket.wait()?;
        deleted += count;
    }
    Ok(deleted)
}

/// [`delete_blocking`] without blocking the thread.
pub(crate) async fn delete_async(shared: &Shared, targets: &[Target<'_>]) -> Result<u64> {
    shared.verification.settled().await;
    check_deletable(shared)?;
    let mut queued = Vec::new();
    for target in targets {
        let admitted = shared.queue_bound.admit(queued_bytes(target)).await;
        queued.extend(enqueue(shared, target, admitted)?);
    }
    let mut deleted = 0;
    for (ticket, count) in queued {
        ticket.into_future().await?;
        deleted += count;
    }
    Ok(deleted)
}

fn check_deletable(shared: &Shared) -> Result<()> {
    if shared.closed.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(Error::Closed);
    }
    if shared.read_only {
        return Err(Error::InvalidArgument(
            "the store was opened read-only; open it with LogStore::open to delete".into(),
        ));
    }
    shared.verification.wait_verified()
}

impl LogStore {
    /// Deletes an execution, durably; `false` if there was none to delete. See
    /// [`Lifecycle`](crate::Lifecycle).
    pub fn delete_execution_blocking(&self, execution_id: &ExecutionId) -> Result<bool> {
        validate_id("execution", execution_id.as_str())?;
        let target = Target::Execution(execution_id);
        Ok(delete_blocking(self.shared(), &[target])? > 0)
    }

    /// Deletes every execution a tenant has, durably; returns how many. See
    /// [`Lifecycle`](crate::Lifecycle).
    pub fn delete_tenant_blocking(&self, tenant_id: &TenantId) -> Result<u64> {
        validate_id("tenant", tenant_id.as_str())?;
        delete_blocking(self.shared(), &[Target::Tenant(tenant_id)])
    }
}

#[async_trait::async_trait]
impl crate::Lifecycle for LogStore {
    async fn delete_execution(&self, execution_id: &ExecutionId) -> anyhow::Result<bool> {
        validate_id("execution", execution_id.as_str())?;
        let target = Target::Execution(execution_id);
        Ok(delete_async(self.shared(), &[target]).await? > 0)
    }

    async fn delete_tenant(&self, tenant_id: &TenantId) -> anyhow::Result<u64> {
        validate_id("tenant", tenant_id.as_str())?;
        Ok(delete_async(self.shared(), &[Target::Tenant(tenant_id)]).await?)
    }

    async fn prune(&self, older_than: std::time::Duration) -> anyhow::Result<u64> {
        self.check_open()?;
        let policy = |_: &TenantId| Some(older_than);
        Ok(crate::retention::prune_async(self.shared(), &policy).await?)
    }

    async fn fork_execution(
        &self,
        source: &ExecutionId,
        at_sequence: u64,
        new_id: &ExecutionId,
    ) -> anyhow::Result<()> {
        Ok(self.fork_async(source, at_sequence, new_id).await?)
    }

    async fn fork_point(
        &self,
        execution_id: &ExecutionId,
    ) -> anyhow::Result<Option<crate::ForkPoint>> {
        Ok(self.fork_point_blocking(execution_id)?)
    }
}
