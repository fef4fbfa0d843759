//! The durable side of the index as it was at one moment, kept while a running
//! checkpoint encodes the index in slices (`checkpoint_encode.rs`) and appends go on
//! between them.
//!
//! Copy-on-write: freezing records only how many executions were durable; afterwards,
//! the first change to the durable cursor or to the life of an execution below that
//! count saves what it was at the freeze. The frozen view of an execution is its saved
//! state if it has one, its current state otherwise. Freezing and each change cost
//! O(1), and the memory grows with the executions changed while the encode runs, not
//! with the index.
//!
//! Invariants: `count` is the durable prefix of the executions at the freeze (durable
//! executions are a prefix: executions are numbered in log order); `before` holds, for
//! executions below `count` only, their durable cursor and deletion at the freeze;
//! nothing else an encode reads changes while frozen (ids, tenants and fork bases are
//! immutable, entry points are only appended, and the one rewrite of entry points,
//! erasure's relocation, is excluded by the checkpoint thread holding
//! `Shared::erasing`).

use std::collections::HashMap;

use crate::index::ExecNo;
use crate::record::Pos;

/// What a checkpoint records of an execution's durable side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DurableView {
    pub(crate) seq: u64,
    pub(crate) pos: Pos,
    /// Whether its tombstone is durable.
    pub(crate) deleted: bool,
}

/// The index's durable side at a freeze: see the module docs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Frozen {
    count: usize,
    before: HashMap<ExecNo, DurableView>,
}

impl Frozen {
    /// A freeze of an index whose first `count` executions are durable.
    pub(crate) fn new(count: usize) -> Self {
        Self {
            count,
            before: HashMap::new(),
        }
    }

    /// How many executions were durable at the freeze.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Execution `no`, whose durable side is `now`, is about to change: keeps `now` as
    /// its frozen state unless it changed already since the freeze or was not durable.
    pub(crate) fn save(&mut self, no: ExecNo, now: DurableView) {
        if (no as usize) < self.count {
            self.before.entry(no).or_insert(now);
        }
    }

    /// Execution `no`'s state at the freeze, if it changed since.
    pub(crate) fn saved(&self, no: ExecNo) -> Option<DurableView> {
        self.before.get(&no).copied()
    }

    /// Executions changed since the freeze (for tests and statistics).
    #[cfg(test)]
    pub(crate) fn changed(&self) -> usize {
        self.before.len()
    }
}
