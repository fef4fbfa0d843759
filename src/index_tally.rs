//! What statistics report of the index, kept up to date as the index changes.
//!
//! `LogStore::stats` reads the index under the store lock, which appends wait for; a
//! walk over every execution there cost a millisecond per 100,000 executions. So the
//! index updates a [`Tally`] at each change instead, and a summary costs the same at
//! any size.
//!
//! Invariants: every figure but the entry points' allocated capacity is a function of
//! the index's content alone, and equality ignores that one, so two indexes with equal
//! executions have equal tallies however they were built (rebuilt from records, whose
//! vectors grew, or decoded from a checkpoint, whose vectors are exact); `visible`
//! counts and sums only what readers can list: executions with a durable event whose
//! deletion is not durable; `tenant_visible[t]` is the number of such executions
//! tenant `t` owns, and `tenants_visible` the number of tenants with one.

use std::mem::size_of;

use crate::ids::TenantId;
use crate::record::Pos;

/// Running totals over the index's executions and tenants.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    visible_executions: usize,
    visible_events: u64,
    tenant_visible: Vec<usize>,
    tenants_visible: usize,
    /// Bytes of every execution id, and of every tenant id.
    id_bytes: usize,
    tenant_bytes: usize,
    /// Room for entry points beyond each execution's first (the first is inline),
    /// as allocated: what the vectors' growth leaves spare is memory too.
    heap_capacity: usize,
}

impl PartialEq for Tally {
    fn eq(&self, other: &Self) -> bool {
        self.visible_executions == other.visible_executions
            && self.visible_events == other.visible_events
            && self.tenant_visible == other.tenant_visible
            && self.tenants_visible == other.tenants_visible
            && self.id_bytes == other.id_bytes
            && self.tenant_bytes == other.tenant_bytes
    }
}

impl Eq for Tally {}

/// The index's part of `Stats`: what readers see (visible executions, their durable
/// events, tenants with one) and approximate memory.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) executions: usize,
    pub(crate) events: u64,
    pub(crate) tenants: usize,
    /// Heap and inline bytes the index uses.
    pub(crate) memory_bytes: usize,
    /// Bytes of the sparse entries alone (the part that grows per event).
    pub(crate) sparse_bytes: usize,
}

/// What the index holds besides what the tally counts, for the memory estimate.
pub(crate) struct Shape {
    pub(crate) executions: usize,
    pub(crate) execution_slot_bytes: usize,
    pub(crate) id_table_bytes: usize,
    pub(crate) fork_bytes: usize,
    pub(crate) index_bytes: usize,
}

impl Tally {
    pub(crate) fn tenant_added(&mut self, tenant: &TenantId) {
        self.tenant_visible.push(0);
        self.tenant_bytes += tenant.as_str().len();
    }

    /// A new execution of `tenant`, with `durable_seq` events durable and room for
    /// `heap_capacity` entry points beyond its first.
    pub(crate) fn execution_added(
        &mut self,
        id_len: usize,
        tenant: u32,
        durable_seq: u64,
        heap_capacity: usize,
    ) {
        self.id_bytes += id_len;
        self.heap_capacity += heap_capacity;
        self.made_durable(tenant, 0, durable_seq);
    }

    /// An execution's vector of entry points grew from `before` to `after` entries of
    /// capacity.
    pub(crate) fn heap_grew(&mut self, before: usize, after: usize) {
        self.heap_capacity += after.saturating_sub(before);
    }

    /// The durable cursor of a live execution of `tenant` moved from `before` to
    /// `after`: it is listed from its first durable event on.
    pub(crate) fn made_durable(&mut self, tenant: u32, before: u64, after: u64) {
        self.visible_events += after.saturating_sub(before);
        if before > 0 || after == 0 {
            return;
        }
        self.visible_executions += 1;
        if let Some(n) = self.tenant_visible.get_mut(tenant as usize) {
            self.tenants_visible += usize::from(*n == 0);
            *n += 1;
        }
    }

    /// A listed execution of `tenant` with `durable_seq` durable events is deleted
    /// (one with none is never deleted: deletion needs a durable event).
    pub(crate) fn deleted(&mut self, tenant: u32, durable_seq: u64) {
        if durable_seq == 0 {
            return;
        }
        self.visible_executions = self.visible_executions.saturating_sub(1);
        self.visible_events = self.visible_events.saturating_sub(durable_seq);
        if let Some(n) = self.tenant_visible.get_mut(tenant as usize) {
            *n = n.saturating_sub(1);
            self.tenants_visible -= usize::from(*n == 0 && self.tenants_visible > 0);
        }
    }

    /// The summary, from the tally and the index's `shape`.
    pub(crate) fn summary(&self, shape: &Shape) -> Summary {
        // Each id once (the id table holds numbers), behind its `Arc`'s two counts; each
        // execution's number once more in its tenant's list.
        let per_exec = size_of::<u32>() + 2 * size_of::<usize>();
        let heap_sparse = self.heap_capacity * size_of::<Pos>();
        let tenants = self.tenant_visible.len();
        let tenant_bytes = 2 * (self.tenant_bytes + tenants * size_of::<TenantId>())
            + tenants * size_of::<Vec<u32>>();
        Summary {
            executions: self.visible_executions,
            events: self.visible_events,
            tenants: self.tenants_visible,
            sparse_bytes: heap_sparse + shape.executions * size_of::<Option<Pos>>(),
            memory_bytes: shape.index_bytes
                + shape.executions * per_exec
                + self.id_bytes
                + heap_sparse
                + shape.execution_slot_bytes
                + shape.id_table_bytes
                + tenant_bytes
                + shape.fork_bytes,
        }
    }
}
