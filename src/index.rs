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
//! A fork (`fork.rs`) is an execution whose first `at` events are another's: it keeps
//! a [`Base`] (its source and `at`) and entry points only for its own events, from
//! sequence `at + 1` on; reads below that go to the source's entry points and walk the
//! source's records, which the fork's own first record links to. So a fork costs one
//! entry, whatever the length of what it shares.
//!
//! Invariants: `durable_seq <= reserved_seq`; `sparse[k]` is the position of sequence
//! `first + k * stride`, where `first` is 1, or `at + 1` for a fork; a fork's source has
//! a smaller number and at least `at` durable events; executions are numbered densely in creation (= log) order, and a
//! tenant's list holds its executions in that order, durable ones forming a prefix;
//! `Deleted` follows `Deleting`, and nothing is reserved for a deleting execution.

use std::collections::HashMap;

use crate::frozen_index::{DurableView, Frozen};
use crate::id_table::IdTable;
use crate::ids::{ExecutionId, TenantId};
use crate::index_tally::{Shape, Summary, Tally};
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

/// What a fork shares: the first `at` events of execution `source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Base {
    pub(crate) source: ExecNo,
    pub(crate) at: u64,
}

/// One execution's index entry.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Execution {
    pub(crate) id: ExecutionId,
    pub(crate) tenant: u32,
    pub(crate) life: Life,
    /// Whether it is a fork (its [`Base`] is in [`Index::forks`]).
    forked: bool,
    pub(crate) reserved_seq: u64,
    pub(crate) reserved_pos: Pos,
    pub(crate) durable_seq: u64,
    pub(crate) durable_pos: Pos,
    sparse: Sparse,
}

/// An execution's entry points, `k`-th = the position of sequence `first + k * stride`.
/// The first is kept inline: most executions are short, and a vector of one would
/// cost a heap allocation (48 bytes with the allocator's) for 8 bytes of position.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Sparse {
    first: Option<Pos>,
    rest: Vec<Pos>,
}

impl Sparse {
    fn one(pos: Pos) -> Self {
        Self {
            first: Some(pos),
            rest: Vec::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    pub(crate) fn get(&self, k: usize) -> Option<Pos> {
        match k {
            0 => self.first,
            k => self.rest.get(k - 1).copied(),
        }
    }

    fn get_mut(&mut self, k: usize) -> Option<&mut Pos> {
        match k {
            0 => self.first.as_mut(),
            k => self.rest.get_mut(k - 1),
        }
    }

    /// The entries `entries` yields, in order, in one allocation at most.
    pub(crate) fn from_entries(mut entries: impl ExactSizeIterator<Item = Pos>) -> Self {
        let first = entries.next();
        Self {
            first,
            rest: entries.collect(),
        }
    }

    pub(crate) fn push(&mut self, pos: Pos) {
        match self.first {
            None => self.first = Some(pos),
            Some(_) => self.rest.push(pos),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = Pos> + '_ {
        self.first.into_iter().chain(self.rest.iter().copied())
    }
}

impl Execution {
    /// Whether readers still see it.
    pub(crate) fn visible(&self) -> bool {
        self.life != Life::Deleted
    }

    /// Whether it is a fork of another execution.
    pub(crate) fn is_fork(&self) -> bool {
        self.forked
    }

    /// Positions of sequences `first, first + stride, …` up to the reserved one (see
    /// the module's invariants).
    pub(crate) fn sparse(&self) -> &Sparse {
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
    by_id: IdTable,
    executions: Vec<Execution>,
    tenant_ids: Vec<TenantId>,
    tenant_by_id: HashMap<TenantId, u32>,
    tenant_executions: Vec<Vec<ExecNo>>,
    /// Executions whose deletion is durable.
    deleted: usize,
    /// The bases of the forks.
    forks: HashMap<ExecNo, Base>,
    /// The durable side as it was when a running checkpoint began encoding it.
    frozen: Option<Frozen>,
    /// What statistics report, kept as the executions change.
    tally: Tally,
}

impl Index {
    pub(crate) fn new(stride: u32) -> Self {
        debug_assert!(stride >= 1);
        Self {
            stride: u64::from(stride.max(1)),
            by_id: IdTable::default(),
            executions: Vec::new(),
            tenant_ids: Vec::new(),
            tenant_by_id: HashMap::new(),
            tenant_executions: Vec::new(),
            deleted: 0,
            forks: HashMap::new(),
            frozen: None,
            tally: Tally::default(),
        }
    }

    /// The execution `id`, deleted or not: for appends, which must refuse a deleted
    /// id rather than create it again.
    pub(crate) fn lookup(&self, id: &ExecutionId) -> Option<ExecNo> {
        self.by_id.get(id, &self.executions)
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
        self.save_frozen(no);
        if let Some(e) = self.executions.get_mut(no as usize)
            && e.life != Life::Deleted
        {
            e.life = Life::Deleted;
            self.deleted += 1;
            self.tally.deleted(e.tenant, e.durable_seq);
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
        let tenant_no = match self.tenant_by_id.get(tenant) {
            Some(&t) => t,
            None => {
                let t = self.tenant_ids.len() as u32;
                self.tally.tenant_added(tenant);
                self.tenant_ids.push(tenant.clone());
                self.tenant_by_id.insert(tenant.clone(), t);
                self.tenant_executions.push(Vec::new());
                t
            }
        };
        let new = self.by_id.insert(&id, no, &self.executions);
        debug_assert!(new, "{id} created twice");
        self.tally
            .execution_added(id.as_str().len(), tenant_no, 0, 0);
        self.executions.push(Execution {
            id,
            tenant: tenant_no,
            life: Life::Live,
            forked: false,
            reserved_seq: 1,
            reserved_pos: pos,
            durable_seq: 0,
            durable_pos: pos,
            sparse: Sparse::one(pos),
        });
        self.tenant_executions[tenant_no as usize].push(no);
        no
    }

    /// Registers a fork of `base.source` sharing its first `base.at` events, the last
    /// of which is at `pos`; returns its number. Nothing of it is durable until
    /// [`Index::make_durable`] says so for sequence `base.at`.
    pub(crate) fn create_fork(&mut self, id: ExecutionId, base: Base, pos: Pos) -> ExecNo {
        let no = self.next_exec_no().unwrap_or(ExecNo::MAX);
        let tenant = self.get(base.source).map_or(0, |e| e.tenant);
        let new = self.by_id.insert(&id, no, &self.executions);
        debug_assert!(new, "{id} created twice");
        self.tally.execution_added(id.as_str().len(), tenant, 0, 0);
        self.executions.push(Execution {
            id,
            tenant,
            life: Life::Live,
            forked: true,
            reserved_seq: base.at,
            reserved_pos: pos,
            durable_seq: 0,
            durable_pos: pos,
            sparse: Sparse::default(),
        });
        if let Some(list) = self.tenant_executions.get_mut(tenant as usize) {
            list.push(no);
        }
        self.forks.insert(no, base);
        no
    }

    /// The base of execution `no`, if it is a fork.
    pub(crate) fn base(&self, no: ExecNo) -> Option<Base> {
        self.forks.get(&no).copied()
    }

    /// The execution whose chain serves `sequence` of execution `no`: `no`, or for a
    /// sequence a fork shares, its source (or the source's source, …).
    pub(crate) fn holder(&self, mut no: ExecNo, sequence: u64) -> ExecNo {
        while let Some(base) = self.forks.get(&no).filter(|b| sequence <= b.at) {
            no = base.source;
        }
        no
    }

    /// The first sequence execution `no` holds records of: 1, or `at + 1` for a fork.
    pub(crate) fn first_own(&self, no: ExecNo) -> u64 {
        self.forks.get(&no).map_or(1, |b| b.at.saturating_add(1))
    }

    /// Which execution's records hold execution `no`'s events: `(first sequence,
    /// owner)` pairs, from `no` itself down through its bases.
    pub(crate) fn owners(&self, no: ExecNo) -> Vec<(u64, ExecNo)> {
        let mut owners = vec![(self.first_own(no), no)];
        let mut at = no;
        while let Some(base) = self.forks.get(&at) {
            at = base.source;
            owners.push((self.first_own(at), at));
        }
        owners
    }

    /// Records that `sequence` of execution `no` (the next one) is at `pos`.
    pub(crate) fn reserve(&mut self, no: ExecNo, sequence: u64, pos: Pos) {
        let (stride, first) = (self.stride, self.first_own(no));
        let Some(e) = self.executions.get_mut(no as usize) else {
            debug_assert!(false, "reserve for unknown execution {no}");
            return;
        };
        debug_assert_eq!(sequence, e.reserved_seq + 1);
        e.reserved_seq = sequence;
        e.reserved_pos = pos;
        if (sequence - first).is_multiple_of(stride) {
            debug_assert_eq!(e.sparse.len() as u64, (sequence - first) / stride);
            let before = e.sparse.rest.capacity();
            e.sparse.push(pos);
            self.tally.heap_grew(before, e.sparse.rest.capacity());
        }
    }

    /// Publishes `sequence` of execution `no`, at `pos`, as durable.
    pub(crate) fn make_durable(&mut self, no: ExecNo, sequence: u64, pos: Pos) {
        self.save_frozen(no);
        if let Some(e) = self.executions.get_mut(no as usize) {
            debug_assert!(sequence > e.durable_seq && sequence <= e.reserved_seq);
            if e.visible() {
                self.tally.made_durable(e.tenant, e.durable_seq, sequence);
            }
            e.durable_seq = sequence;
            e.durable_pos = pos;
        }
    }

    /// The durable record nearest at or after `sequence` (which must be durable) of
    /// execution `no` to walk back from: a sparse entry or the durable end, of `no` or,
    /// for a sequence a fork shares, of its source.
    pub(crate) fn entry_point(&self, no: ExecNo, sequence: u64) -> Option<EntryPoint> {
        let no = self.holder(no, sequence);
        let e = self.get(no)?;
        debug_assert!(sequence >= 1 && sequence <= e.durable_seq);
        let first = self.first_own(no);
        let k = (sequence - first).div_ceil(self.stride);
        let indexed = first + k * self.stride;
        Some(match e.sparse.get(k as usize) {
            Some(pos) if indexed <= e.durable_seq => EntryPoint {
                sequence: indexed,
                pos,
            },
            _ => EntryPoint {
                sequence: e.durable_seq,
                pos: e.durable_pos,
            },
        })
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

    /// Freezes the durable side (`frozen_index.rs`): until [`Index::thaw`], the
    /// `durable_*` views below describe it as it is now, whatever is made durable or
    /// deleted meanwhile.
    pub(crate) fn freeze(&mut self) {
        self.frozen = None;
        self.frozen = Some(Frozen::new(self.durable_prefix()));
    }

    /// Ends a freeze: the views follow the index again.
    pub(crate) fn thaw(&mut self) {
        self.frozen = None;
    }

    /// How many executions are durable (at the freeze, if frozen): durable executions
    /// are a prefix, numbered in log order.
    pub(crate) fn durable_prefix(&self) -> usize {
        match &self.frozen {
            Some(f) => f.count(),
            None => self.executions.partition_point(|e| e.durable_seq > 0),
        }
    }

    /// Execution `no`'s durable side (at the freeze, if frozen).
    pub(crate) fn durable_view(&self, no: ExecNo) -> Option<DurableView> {
        if let Some(saved) = self.frozen.as_ref().and_then(|f| f.saved(no)) {
            return Some(saved);
        }
        self.get(no).map(|e| DurableView {
            seq: e.durable_seq,
            pos: e.durable_pos,
            deleted: e.life == Life::Deleted,
        })
    }

    /// How many tenants the first `executions` executions refer to: tenants are
    /// numbered when their first execution is created, so they are a prefix too.
    pub(crate) fn tenants_of_prefix(&self, executions: usize) -> usize {
        self.tenant_executions
            .partition_point(|list| list.first().is_none_or(|&no| (no as usize) < executions))
    }

    /// How many executions changed since the freeze, if frozen.
    #[cfg(test)]
    pub(crate) fn frozen_changes(&self) -> Option<usize> {
        self.frozen.as_ref().map(Frozen::changed)
    }

    /// Saves execution `no`'s durable side in the freeze, if any, before it changes.
    fn save_frozen(&mut self, no: ExecNo) {
        let Some(frozen) = &self.frozen else {
            return;
        };
        if (no as usize) >= frozen.count() {
            return;
        }
        if let Some(now) = self.durable_view(no)
            && let Some(frozen) = &mut self.frozen
        {
            frozen.save(no, now);
        }
    }

    /// Makes room for `executions` more executions (a checkpoint knows how many).
    pub(crate) fn make_room(&mut self, executions: usize) {
        self.executions.reserve_exact(executions);
        self.by_id.reserve(executions, &self.executions);
    }

    /// Adds the next tenant (a checkpoint lists them by number); fails on a repeat.
    pub(crate) fn restore_tenant(&mut self, tenant: TenantId) -> Result<(), String> {
        if self.tenant_by_id.contains_key(&tenant) {
            return Err(format!("tenant {tenant} listed twice"));
        }
        self.tenant_by_id
            .insert(tenant.clone(), self.tenant_ids.len() as u32);
        self.tally.tenant_added(&tenant);
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
        (sparse, base): (Sparse, Option<Base>),
    ) -> Result<(), String> {
        let no = self
            .next_exec_no()
            .ok_or_else(|| "too many executions".to_string())?;
        if durable_seq == 0 || sparse.len() as u64 != self.entries_for(durable_seq, base) {
            return Err(format!(
                "execution {id}: entry points do not match its length"
            ));
        }
        if let Some(b) = base {
            let source = self.get(b.source).filter(|_| b.source < no);
            if b.at == 0
                || b.at > durable_seq
                || source.is_none_or(|s| s.tenant != tenant || s.durable_seq < b.at)
            {
                return Err(format!("execution {id}: impossible fork base"));
            }
            self.forks.insert(no, b);
        }
        let Some(list) = self.tenant_executions.get_mut(tenant as usize) else {
            return Err(format!("execution {id}: unknown tenant {tenant}"));
        };
        if !self.by_id.insert(&id, no, &self.executions) {
            return Err(format!("execution {id} listed twice"));
        }
        list.push(no);
        let heap_capacity = sparse.rest.capacity();
        self.tally
            .execution_added(id.as_str().len(), tenant, durable_seq, heap_capacity);
        self.executions.push(Execution {
            id,
            tenant,
            life: Life::Live,
            forked: base.is_some(),
            reserved_seq: durable_seq,
            reserved_pos: durable_pos,
            durable_seq,
            durable_pos,
            sparse,
        });
        Ok(())
    }

    /// Points execution `no`'s entry points for sequences `first..last` at `pos`, the
    /// start of the erased span that now holds them (`erasure.rs`); the entry of `last`
    /// (and the durable cursor) keep the last record's position, which the span names.
    pub(crate) fn relocate(&mut self, no: ExecNo, (first, last): (u64, u64), pos: Pos) {
        let (stride, own) = (self.stride, self.first_own(no));
        if let Some(e) = self.executions.get_mut(no as usize) {
            for s in first.max(own)..last {
                if (s - own).is_multiple_of(stride)
                    && let Some(entry) = e.sparse.get_mut(((s - own) / stride) as usize)
                {
                    *entry = pos;
                }
            }
        }
    }

    /// How many entry points an execution with `durable_seq` events and `base` keeps.
    pub(crate) fn entries_for(&self, durable_seq: u64, base: Option<Base>) -> u64 {
        let first = base.map_or(1, |b| b.at.saturating_add(1));
        match durable_seq.checked_sub(first) {
            Some(own) => own / self.stride + 1,
            None => 0,
        }
    }

    /// The forks, by number.
    pub(crate) fn forks(&self) -> &HashMap<ExecNo, Base> {
        &self.forks
    }

    /// What statistics report of the index, from its tally: the caller holds the
    /// store lock, which appends wait for, so this does not walk the executions.
    pub(crate) fn summary(&self) -> Summary {
        use std::mem::size_of;
        self.tally.summary(&Shape {
            executions: self.executions.len(),
            execution_slot_bytes: self.executions.capacity() * size_of::<Execution>(),
            id_table_bytes: self.by_id.allocated_bytes(),
            fork_bytes: self.forks.capacity() * (size_of::<(ExecNo, Base)>() + 1),
            index_bytes: size_of::<Self>(),
        })
    }

    /// [`Index::summary`] counted the slow way, over every execution, to check the
    /// tally against.
    #[cfg(test)]
    pub(crate) fn recount(&self) -> (usize, u64, usize, usize) {
        let listed = |e: &Execution| e.visible() && e.durable_seq > 0;
        let visible = || self.executions.iter().filter(|e| listed(e));
        let tenants = self
            .tenant_executions
            .iter()
            .filter(|list| list.iter().any(|&no| listed(&self.executions[no as usize])))
            .count();
        let heap_capacity = self
            .executions
            .iter()
            .map(|e| e.sparse.rest.capacity())
            .sum();
        (
            visible().count(),
            visible().map(|e| e.durable_seq).sum(),
            tenants,
            heap_capacity,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: u32) -> Pos {
        Pos { segment: 1, offset }
    }

    fn check(index: &Index) {
        let s = index.summary();
        let (executions, events, tenants, heap_capacity) = index.recount();
        assert_eq!(
            (s.executions, s.events, s.tenants),
            (executions, events, tenants)
        );
        let sparse = heap_capacity * size_of::<Pos>() + index.len() * size_of::<Option<Pos>>();
        assert_eq!(s.sparse_bytes, sparse);
    }

    /// The tally follows every change that moves a figure: creation, entry points,
    /// durable cursors, forks, deletion, and a restore from a checkpoint.
    #[test]
    fn the_summary_equals_a_recount_after_every_change() {
        let mut index = Index::new(2);
        let a = index.create(ExecutionId::from("a"), &TenantId::from("t1"), at(0));
        check(&index);
        let listed = |index: &Index| (index.summary().executions, index.summary().tenants);
        assert_eq!(listed(&index), (0, 0), "nothing durable is listed yet");
        index.make_durable(a, 1, at(0));
        assert_eq!(listed(&index), (1, 1));
        check(&index);
        for seq in 2..=7 {
            index.reserve(a, seq, at(seq as u32 * 8));
            index.make_durable(a, seq, at(seq as u32 * 8));
            check(&index);
        }
        let b = index.create(ExecutionId::from("b"), &TenantId::from("t2"), at(100));
        index.make_durable(b, 1, at(100));
        let f = index.create_fork(ExecutionId::from("f"), Base { source: a, at: 5 }, at(40));
        index.make_durable(f, 5, at(40));
        check(&index);
        index.mark_deleting(b);
        check(&index);
        index.delete(b);
        index.delete(b);
        check(&index);
        index.delete(a);
        check(&index);

        let mut restored = Index::new(2);
        restored.restore_tenant(TenantId::from("t1")).unwrap();
        let sparse = Sparse::from_entries([at(0), at(16), at(32)].into_iter());
        restored
            .restore_execution(ExecutionId::from("a"), 0, (5, at(40)), (sparse, None))
            .unwrap();
        check(&restored);
        assert_eq!(restored.summary().events, 5);
    }
}
