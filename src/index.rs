//! The in-memory index: executions, their tenants, and sparse entry points into each
//! execution's chain of records.
//!
//! Each execution keeps two cursors. The *reserved* cursor (last sequence handed out,
//! position of its record) serves appenders: it decides the next sequence and the
//! `prev` pointer. The *durable* cursor serves readers and only moves after the commit
//! thread's fdatasync covered the record, so readers never see an event that a crash
//! could take away. Every `stride`-th record (sequences 1, 1+stride, …) is remembered as
//! an entry point; memory is 8 bytes per `stride` events plus a constant per execution.
//!
//! A deleted execution keeps its entry (and its number, and its id: an id is never
//! reused) but no reader finds it: lookups for reads, listings and counts skip it.
//! Like its events, its deletion has a reserved side (appends are refused from the
//! moment the tombstone is queued) and a durable side (readers stop seeing it once the
//! tombstone is durable).
//!
//! Invariants: `durable_seq <= reserved_seq`; `sparse[k]` is the position of sequence
//! `1 + k * stride`; executions are numbered densely in creation (= log) order, and a
//! tenant's list holds its executions in that order, durable ones forming a prefix;
//! `Deleted` follows `Deleting`, and nothing is reserved for a deleting execution.

use std::collections::HashMap;

use crate::ids::{ExecutionId, TenantId};
use crate::record::Pos;

/// Index of an execution in [`Index::executions`]; also its number on disk.
pub(crate) type ExecNo = u32;

/// Where an execution stands in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Life {
    Live,
    /// Its tombstone is queued, not durable yet: appends are refused, reads served.
    Deleting,
    /// Its tombstone is durable: it is gone for readers too.
    Deleted,
}

/// One execution's index entry.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Execution {
    pub(crate) id: ExecutionId,
    pub(crate) tenant: u32,
    pub(crate) life: Life,
    pub(crate) reserved_seq: u64,
    pub(crate) reserved_pos: Pos,
    pub(crate) durable_seq: u64,
    pub(crate) durable_pos: Pos,
    sparse: Vec<Pos>,
}

impl Execution {
    /// Whether readers still see it.
    pub(crate) fn visible(&self) -> bool {
        self.life != Life::Deleted
    }

    /// Positions of sequences `1, 1 + stride, …` up to the reserved one.
    pub(crate) fn sparse(&self) -> &[Pos] {
        &self.sparse
    }
}

/// Where a read starts walking back from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryPoint {
    pub(crate) sequence: u64,
    pub(crate) pos: Pos,
}

/// All executions of a store.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Index {
    stride: u64,
    by_id: HashMap<ExecutionId, ExecNo>,
    executions: Vec<Execution>,
    tenant_ids: Vec<TenantId>,
    tenant_by_id: HashMap<TenantId, u32>,
    tenant_executions: Vec<Vec<ExecNo>>,
    /// Executions whose deletion is durable.
    deleted: usize,
}

impl Index {
    pub(crate) fn new(stride: u32) -> Self {
        debug_assert!(stride >= 1);
        Self {
            stride: u64::from(stride.max(1)),
            by_id: HashMap::new(),
            executions: Vec::new(),
            tenant_ids: Vec::new(),
            tenant_by_id: HashMap::new(),
            tenant_executions: Vec::new(),
            deleted: 0,
        }
    }

    /// The execution `id`, deleted or not: for appends, which must refuse a deleted
    /// id rather than create it again.
    pub(crate) fn lookup(&self, id: &ExecutionId) -> Option<ExecNo> {
        self.by_id.get(id).copied()
    }

    pub(crate) fn get(&self, no: ExecNo) -> Option<&Execution> {
        self.executions.get(no as usize)
    }

    /// The execution `id` as readers see it: `None` if unknown or deleted.
    pub(crate) fn visible(&self, id: &ExecutionId) -> Option<(ExecNo, &Execution)> {
        let no = self.lookup(id)?;
        self.get(no).filter(|e| e.visible()).map(|e| (no, e))
    }

    /// Executions of `tenant` in creation order, deleted ones included.
    pub(crate) fn executions_of(&self, tenant: &TenantId) -> &[ExecNo] {
        self.tenant_by_id
            .get(tenant)
            .and_then(|&t| self.tenant_executions.get(t as usize))
            .map_or(&[], Vec::as_slice)
    }

    /// The tombstone of execution `no` is queued: appends are refused from now on.
    pub(crate) fn mark_deleting(&mut self, no: ExecNo) {
        if let Some(e) = self.executions.get_mut(no as usize) {
            debug_assert_eq!(e.life, Life::Live);
            e.life = Life::Deleting;
        }
    }

    /// The tombstone of execution `no` is durable: readers stop seeing it.
    pub(crate) fn delete(&mut self, no: ExecNo) {
        if let Some(e) = self.executions.get_mut(no as usize)
            && e.life != Life::Deleted
        {
            e.life = Life::Deleted;
            self.deleted += 1;
        }
    }

    /// Number of executions whose deletion is durable.
    pub(crate) fn deleted(&self) -> usize {
        self.deleted
    }

    pub(crate) fn tenant_of(&self, execution: &Execution) -> &TenantId {
        // Tenants are added before the executions that refer to them.
        &self.tenant_ids[execution.tenant as usize]
    }

    /// Number of executions, durable or not.
    pub(crate) fn len(&self) -> usize {
        self.executions.len()
    }

    /// The number the next created execution gets, if numbers are left.
    pub(crate) fn next_exec_no(&self) -> Option<ExecNo> {
        ExecNo::try_from(self.executions.len()).ok()
    }

    /// Registers a new execution whose first record is at `pos`; returns its number.
    pub(crate) fn create(&mut self, id: ExecutionId, tenant: &TenantId, pos: Pos) -> ExecNo {
        let no = self.next_exec_no().unwrap_or(ExecNo::MAX);
        debug_assert!(!self.by_id.contains_key(&id));
        let tenant_no = match self.tenant_by_id.get(tenant) {
            Some(&t) => t,
            None => {
                let t = self.tenant_ids.len() as u32;
                self.tenant_ids.push(tenant.clone());
                self.tenant_by_id.insert(tenant.clone(), t);
                self.tenant_executions.push(Vec::new());
                t
            }
        };
        self.by_id.insert(id.clone(), no);
        self.executions.push(Execution {
            id,
            tenant: tenant_no,
            life: Life::Live,
            reserved_seq: 1,
            reserved_pos: pos,
            durable_seq: 0,
            durable_pos: pos,
            sparse: vec![pos],
        });
        self.tenant_executions[tenant_no as usize].push(no);
        no
    }

    /// Records that `sequence` of execution `no` (the next one) is at `pos`.
    pub(crate) fn reserve(&mut self, no: ExecNo, sequence: u64, pos: Pos) {
        let stride = self.stride;
        let Some(e) = self.executions.get_mut(no as usize) else {
            debug_assert!(false, "reserve for unknown execution {no}");
            return;
        };
        debug_assert_eq!(sequence, e.reserved_seq + 1);
        e.reserved_seq = sequence;
        e.reserved_pos = pos;
        if (sequence - 1).is_multiple_of(stride) {
            debug_assert_eq!(e.sparse.len() as u64, (sequence - 1) / stride);
            e.sparse.push(pos);
        }
    }

    /// Publishes `sequence` of execution `no`, at `pos`, as durable.
    pub(crate) fn make_durable(&mut self, no: ExecNo, sequence: u64, pos: Pos) {
        if let Some(e) = self.executions.get_mut(no as usize) {
            debug_assert!(sequence > e.durable_seq && sequence <= e.reserved_seq);
            e.durable_seq = sequence;
            e.durable_pos = pos;
        }
    }

    /// The durable record nearest at or after `sequence` (which must be durable) to
    /// walk back from: a sparse entry or the durable end.
    pub(crate) fn entry_point(&self, e: &Execution, sequence: u64) -> EntryPoint {
        debug_assert!(sequence >= 1 && sequence <= e.durable_seq);
        let k = (sequence - 1).div_ceil(self.stride);
        let indexed = 1 + k * self.stride;
        match e.sparse.get(k as usize) {
            Some(&pos) if indexed <= e.durable_seq => EntryPoint {
                sequence: indexed,
                pos,
            },
            _ => EntryPoint {
                sequence: e.durable_seq,
                pos: e.durable_pos,
            },
        }
    }

    /// Durable executions of `tenant`, newest first, after skipping `offset`.
    pub(crate) fn list(&self, tenant: &TenantId, limit: usize, offset: usize) -> Vec<ExecutionId> {
        let Some(&t) = self.tenant_by_id.get(tenant) else {
            return Vec::new();
        };
        self.tenant_executions[t as usize]
            .iter()
            .rev()
            .filter_map(|&no| self.executions.get(no as usize))
            .filter(|e| e.durable_seq > 0 && e.visible())
            .skip(offset)
            .take(limit)
            .map(|e| e.id.clone())
            .collect()
    }

    /// Durable, visible executions with their durable sequence, in creation order.
    pub(crate) fn durable_executions(&self) -> Vec<(ExecutionId, u64)> {
        self.executions
            .iter()
            .filter(|e| e.durable_seq > 0 && e.visible())
            .map(|e| (e.id.clone(), e.durable_seq))
            .collect()
    }

    /// Counts for statistics, of what readers see: (executions, durable events,
    /// tenants with an execution).
    pub(crate) fn counts(&self) -> (usize, u64, usize) {
        let visible = || self.executions.iter().filter(|e| e.visible());
        let events = visible().map(|e| e.durable_seq).sum();
        let tenants = self
            .tenant_executions
            .iter()
            .filter(|list| {
                list.iter().any(|&no| {
                    self.executions
                        .get(no as usize)
                        .is_some_and(Execution::visible)
                })
            })
            .count();
        (visible().count(), events, tenants)
    }

    /// Durable event records indexed, those of deleted executions included.
    pub(crate) fn records(&self) -> u64 {
        self.executions.iter().map(|e| e.durable_seq).sum()
    }

    /// Every how many events an entry point is kept.
    pub(crate) fn stride(&self) -> u64 {
        self.stride
    }

    /// Tenants by number.
    pub(crate) fn tenants(&self) -> &[TenantId] {
        &self.tenant_ids
    }

    /// Executions by number.
    pub(crate) fn executions(&self) -> &[Execution] {
        &self.executions
    }

    /// Adds the next tenant (a checkpoint lists them by number); fails on a repeat.
    pub(crate) fn restore_tenant(&mut self, tenant: TenantId) -> Result<(), String> {
        if self.tenant_by_id.contains_key(&tenant) {
            return Err(format!("tenant {tenant} listed twice"));
        }
        self.tenant_by_id
            .insert(tenant.clone(), self.tenant_ids.len() as u32);
        self.tenant_ids.push(tenant);
        self.tenant_executions.push(Vec::new());
        Ok(())
    }

    /// Adds the next execution as a checkpoint saved it: durable up to
    /// `durable_seq` at `durable_pos`, nothing reserved beyond. Fails on anything the
    /// invariants forbid (a repeated id, an unknown tenant, a wrong number of entries).
    pub(crate) fn restore_execution(
        &mut self,
        id: ExecutionId,
        tenant: u32,
        (durable_seq, durable_pos): (u64, Pos),
        sparse: Vec<Pos>,
    ) -> Result<(), String> {
        let no = self
            .next_exec_no()
            .ok_or_else(|| "too many executions".to_string())?;
        if durable_seq == 0 || sparse.len() as u64 != (durable_seq - 1) / self.stride + 1 {
            return Err(format!(
                "execution {id}: entry points do not match its length"
            ));
        }
        let Some(list) = self.tenant_executions.get_mut(tenant as usize) else {
            return Err(format!("execution {id}: unknown tenant {tenant}"));
        };
        if self.by_id.insert(id.clone(), no).is_some() {
            return Err(format!("execution {id} listed twice"));
        }
        list.push(no);
        self.executions.push(Execution {
            id,
            tenant,
            life: Life::Live,
            reserved_seq: durable_seq,
            reserved_pos: durable_pos,
            durable_seq,
            durable_pos,
            sparse,
        });
        Ok(())
    }

    /// Approximate heap and inline bytes the index uses.
    pub(crate) fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        let per_exec = size_of::<Execution>() + size_of::<(ExecutionId, ExecNo)>() + 8 + 4;
        let execs: usize = self
            .executions
            .iter()
            .map(|e| per_exec + 2 * e.id.as_str().len() + e.sparse.capacity() * size_of::<Pos>())
            .sum();
        let tenants: usize = self
            .tenant_ids
            .iter()
            .map(|t| 2 * (t.as_str().len() + size_of::<TenantId>()) + size_of::<Vec<ExecNo>>())
            .sum();
        size_of::<Self>() + execs + tenants
    }

    /// Approximate bytes of the sparse entries alone (the part that grows per event).
    pub(crate) fn sparse_bytes(&self) -> usize {
        self.executions
            .iter()
            .map(|e| e.sparse.capacity() * std::mem::size_of::<Pos>())
            .sum()
    }
}
