//! Idempotency keys: which keyed appends each execution holds, found by key.
//!
//! The keys themselves stay on disk, in the first record of each keyed append (the
//! record prefix, `codec.rs`). In memory, per execution with keyed appends, a table
//! maps a 64-bit hash of each key to the position of that record: 16 bytes per keyed
//! append, plus the hash table's slack. A hash match is only a candidate: the append
//! path reads the record and compares the key itself, so two keys with the same hash
//! are told apart and the answer is exact for every key ever used, however many.
//! The hash is SipHash with a key drawn at random per open store, so that callers
//! cannot choose keys that collide on purpose.
//!
//! Keyed appends not yet durable are also listed with their completion ticket, so that
//! a retry arriving before the original's fdatasync waits for it, then reads it.
//!
//! Invariants: every keyed record of the index's executions (durable or reserved) has
//! its entry; positions of one execution grow with its sequences; an in-flight entry
//! is removed once its execution's durable position reaches it.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use crate::index::ExecNo;
use crate::queue::Ticket;
use crate::record::Pos;

/// The keyed appends of every execution of one store.
pub(crate) struct KeyTables {
    hasher: RandomState,
    /// The bits of a hash kept (all but in tests: `Options::idempotency_hash_bits`).
    mask: u64,
    by_execution: HashMap<ExecNo, Keys>,
    /// Keyed appends in all (for statistics).
    count: usize,
}

/// The keyed appends of one execution.
#[derive(Default)]
struct Keys {
    /// Hash of the key -> position of the keyed append's first record.
    by_hash: HashMap<u64, Pos, BuildHasherDefault<AlreadyHashed>>,
    /// Entries whose hash was taken by another key already (astronomically rare; kept
    /// apart so that the common table stays one position per hash).
    collided: Vec<(u64, Pos)>,
    /// Keyed appends not durable yet, in log order, with the ticket their commit
    /// completes.
    in_flight: Vec<(Pos, Ticket)>,
}

/// A candidate for a key: the position of a keyed append whose key has the same hash,
/// and, if it is not durable yet, the ticket to wait on before reading it.
pub(crate) struct Candidate {
    pub(crate) pos: Pos,
    pub(crate) pending: Option<Ticket>,
}

impl KeyTables {
    /// Empty tables keeping `bits` bits of each hash.
    pub(crate) fn new(bits: u32) -> Self {
        KeyTables {
            hasher: RandomState::new(),
            mask: u64::MAX.checked_shr(64 - bits.min(64)).unwrap_or(0),
            by_execution: HashMap::new(),
            count: 0,
        }
    }

    /// The hash under which `key` is filed.
    pub(crate) fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key.as_bytes()) & self.mask
    }

    /// Keyed appends of execution `no` whose key hashes to `hash`, except those in
    /// `ruled_out` (already read and found to hold another key).
    pub(crate) fn candidates(&self, no: ExecNo, hash: u64, ruled_out: &[Pos]) -> Vec<Candidate> {
        let Some(keys) = self.by_execution.get(&no) else {
            return Vec::new();
        };
        let collided = keys.collided.iter().filter(|(h, _)| *h == hash);
        keys.by_hash
            .get(&hash)
            .into_iter()
            .chain(collided.map(|(_, pos)| pos))
            .filter(|pos| !ruled_out.contains(pos))
            .map(|&pos| Candidate {
                pos,
                pending: keys
                    .in_flight
                    .iter()
                    .find(|(p, _)| *p == pos)
                    .map(|(_, ticket)| ticket.clone()),
            })
            .collect()
    }

    /// Files the keyed append of execution `no` whose first record is at `pos`.
    pub(crate) fn insert(&mut self, no: ExecNo, hash: u64, pos: Pos) {
        let keys = self.by_execution.entry(no).or_default();
        if let Some(&taken) = keys.by_hash.get(&hash) {
            debug_assert_ne!(taken, pos);
            keys.collided.push((hash, pos));
        } else {
            keys.by_hash.insert(hash, pos);
        }
        self.count += 1;
    }

    /// Files a keyed append that is not durable yet; `ticket` completes with its
    /// commit.
    pub(crate) fn insert_in_flight(&mut self, no: ExecNo, hash: u64, pos: Pos, ticket: Ticket) {
        self.insert(no, hash, pos);
        if let Some(keys) = self.by_execution.get_mut(&no) {
            keys.in_flight.push((pos, ticket));
        }
    }

    /// Execution `no` is durable up to the record at `durable`: its keyed appends up to
    /// there need no ticket any more.
    pub(crate) fn settle(&mut self, no: ExecNo, durable: Pos) {
        if let Some(keys) = self.by_execution.get_mut(&no)
            && !keys.in_flight.is_empty()
        {
            keys.in_flight.retain(|(pos, _)| *pos > durable);
        }
    }

    /// Number of keyed appends known.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Approximate memory of the tables: the hash tables' allocated slots (entry and
    /// control byte each), the collision lists and the per-execution overhead.
    pub(crate) fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        let per_execution = size_of::<(ExecNo, Keys)>() + 1;
        self.by_execution
            .values()
            .map(|k| {
                per_execution
                    + k.by_hash.capacity() * (size_of::<(u64, Pos)>() + 1)
                    + k.collided.capacity() * size_of::<(u64, Pos)>()
                    + k.in_flight.capacity() * size_of::<(Pos, Ticket)>()
            })
            .sum::<usize>()
            + self.by_execution.capacity() * (size_of::<(ExecNo, Keys)>() + 1)
    }
}

/// A `Hasher` for keys that are already uniformly distributed hashes.
#[derive(Default)]
struct AlreadyHashed(u64);

impl Hasher for AlreadyHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the table's key is a u64); fold anything else in.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(offset: u32) -> Pos {
        Pos { segment: 1, offset }
    }

    #[test]
    fn hash_bits_are_kept_as_asked() {
        assert_eq!(KeyTables::new(0).hash("a"), 0);
        assert!(KeyTables::new(3).hash("a") < 8);
        let all = KeyTables::new(64);
        assert_ne!(all.hash("a"), all.hash("b"));
    }

    #[test]
    fn colliding_hashes_are_all_candidates() {
        let mut t = KeyTables::new(64);
        t.insert(0, 7, pos(32));
        t.insert(0, 7, pos(128));
        t.insert(0, 8, pos(256));
        t.insert(1, 7, pos(512));
        let found: Vec<Pos> = t.candidates(0, 7, &[]).iter().map(|c| c.pos).collect();
        assert_eq!(found, vec![pos(32), pos(128)]);
        let found: Vec<Pos> = t
            .candidates(0, 7, &[pos(32)])
            .iter()
            .map(|c| c.pos)
            .collect();
        assert_eq!(found, vec![pos(128)]);
        assert!(t.candidates(2, 7, &[]).is_empty());
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn in_flight_entries_carry_their_ticket_until_durable() {
        let mut t = KeyTables::new(64);
        t.insert_in_flight(0, 1, pos(32), Ticket::default());
        t.insert_in_flight(0, 2, pos(96), Ticket::default());
        assert!(t.candidates(0, 1, &[])[0].pending.is_some());
        t.settle(0, pos(32));
        assert!(t.candidates(0, 1, &[])[0].pending.is_none());
        assert!(t.candidates(0, 2, &[])[0].pending.is_some());
        t.settle(0, pos(96));
        assert!(t.candidates(0, 2, &[])[0].pending.is_none());
    }
}
