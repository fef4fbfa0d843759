//! [`IdTable`]: from execution id to execution number, without a second copy of the id.
//!
//! The table holds only numbers (4 bytes and a control byte a slot); it hashes and
//! compares through the ids the index keeps in its executions, which the caller passes
//! in. A map from id to number would hold a second 16-byte handle per execution and
//! 24-byte slots: at a million short executions that was a fifth of the index.
//!
//! Invariants: every number in the table is below `executions.len()` of the slice the
//! caller passes (numbers are inserted before their execution is pushed, and nothing
//! is ever removed), and no two numbers name equal ids.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use crate::ids::ExecutionId;
use crate::index::{ExecNo, Execution};

/// Execution numbers, found by the ids of their executions.
#[derive(Default)]
pub(crate) struct IdTable {
    table: HashTable<ExecNo>,
    hasher: RandomState,
}

impl IdTable {
    /// The number of the execution with `id`, if any.
    pub(crate) fn get(&self, id: &ExecutionId, executions: &[Execution]) -> Option<ExecNo> {
        let hash = self.hasher.hash_one(id.as_str());
        self.table
            .find(hash, |&no| id_of(executions, no) == Some(id.as_str()))
            .copied()
    }

    /// Records that `id` is execution `no`, the next one (not in `executions` yet).
    /// False, and nothing recorded, if another execution has the id.
    pub(crate) fn insert(
        &mut self,
        id: &ExecutionId,
        no: ExecNo,
        executions: &[Execution],
    ) -> bool {
        let hasher = &self.hasher;
        let hash = hasher.hash_one(id.as_str());
        let entry = self.table.entry(
            hash,
            |&n| id_of(executions, n) == Some(id.as_str()),
            |&n| hasher.hash_one(id_of(executions, n).unwrap_or_default()),
        );
        match entry {
            Entry::Occupied(_) => false,
            Entry::Vacant(slot) => {
                slot.insert(no);
                true
            }
        }
    }

    /// Makes room for `more` numbers, rehashing once now rather than at each doubling.
    pub(crate) fn reserve(&mut self, more: usize, executions: &[Execution]) {
        let hasher = &self.hasher;
        self.table.reserve(more, |&n| {
            hasher.hash_one(id_of(executions, n).unwrap_or_default())
        });
    }

    /// Bytes the table allocated.
    pub(crate) fn allocated_bytes(&self) -> usize {
        self.table.allocation_size()
    }
}

// The table is a function of the executions it indexes: two indexes with equal
// executions have equal tables, whatever their slots' order.
impl PartialEq for IdTable {
    fn eq(&self, other: &Self) -> bool {
        self.table.len() == other.table.len()
    }
}

impl Eq for IdTable {}

impl std::fmt::Debug for IdTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdTable({} ids)", self.table.len())
    }
}

fn id_of(executions: &[Execution], no: ExecNo) -> Option<&str> {
    executions.get(no as usize).map(|e| e.id.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::TenantId;
    use crate::index::Index;
    use crate::record::Pos;

    #[test]
    fn ids_find_their_numbers_through_growth_and_repeats_are_refused() {
        let mut index = Index::new(4);
        let tenant = TenantId::from("t");
        let pos = Pos {
            segment: 1,
            offset: 32,
        };
        for i in 0..10_000u32 {
            let no = index.create(ExecutionId::from(format!("run-{i}")), &tenant, pos);
            assert_eq!(no, i);
        }
        for i in (0..10_000u32).step_by(7) {
            assert_eq!(
                index.lookup(&ExecutionId::from(format!("run-{i}"))),
                Some(i)
            );
        }
        assert_eq!(index.lookup(&ExecutionId::from("run-10000")), None);
        let mut table = IdTable::default();
        assert!(table.insert(&ExecutionId::from("run-0"), 0, index.executions()));
        assert!(!table.insert(&ExecutionId::from("run-0"), 1, index.executions()));
        assert_eq!(
            table.get(&ExecutionId::from("run-0"), index.executions()),
            Some(0)
        );
    }
}
