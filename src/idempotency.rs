//! Idempotency keys: which keyed appends each execution holds, found by key.
//!
//! The keys themselves stay on disk, in the first record of each keyed append (the
//! record prefix, `codec.rs`). In memory, per execution with keyed appends, a table
//! maps a 64-bit hash of each key to the position of that record: an execution with
//! one keyed append holds it inline, one with more a hash table of 16-byte entries.
//! A hash match is only a candidate: the append path reads the record and compares
//! the key itself, so two keys with the same hash are told apart and the answer is
//! exact for every key ever used, however many. The hash is SipHash with a key drawn
//! at random per open store, so that callers cannot choose keys that collide on
//! purpose.
//!
//! Keyed appends not yet durable are also queued, store-wide and in log order, with
//! their completion ticket, so that a retry arriving before the original's fdatasync
//! waits for it, then reads it. Groups become durable in log order, so settling pops
//! from the front: constant work per keyed append.
//!
//! Invariants: every keyed record of the index's executions (durable or reserved) has
//! its entry; the in-flight queue is in log order and holds exactly the keyed appends
//! beyond the durable end of the log.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
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
    /// Keyed appends not durable yet, in log order, with the ticket their commit
    /// completes.
    in_flight: VecDeque<(Pos, Ticket)>,
    /// Keyed appends in all (for statistics).
    count: usize,
}

/// The keyed appends of one execution.
enum Keys {
    /// One keyed append: its key's hash and position (most executions with keys use
    /// one or a few; this spares them a table).
    One(u64, Pos),
    Many(Box<ManyKeys>),
}

#[derive(Default)]
struct ManyKeys {
    /// Hash of the key -> position of the keyed append's first record.
    by_hash: HashMap<u64, Pos, BuildHasherDefault<AlreadyHashed>>,
    /// Entries whose hash was taken by another key already (astronomically rare; kept
    /// apart so that the common table stays one position per hash).
    collided: Vec<(u64, Pos)>,
}

impl ManyKeys {
    fn insert(&mut self, hash: u64, pos: Pos) {
        if let Some(&taken) = self.by_hash.get(&hash) {
            debug_assert_ne!(taken, pos);
            self.collided.push((hash, pos));
        } else {
            self.by_hash.insert(hash, pos);
        }
    }
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
            in_flight: VecDeque::new(),
            count: 0,
        }
    }

    /// Empty tables that hash keys as these do, so that [`KeyTables::absorb`] can
    /// merge them.
    pub(crate) fn sibling(&self) -> Self {
        KeyTables {
            hasher: self.hasher.clone(),
            mask: self.mask,
            by_execution: HashMap::new(),
            in_flight: VecDeque::new(),
            count: 0,
        }
    }

    /// Files every durable keyed append of `other`, a [`KeyTables::sibling`] of these.
    pub(crate) fn absorb(&mut self, other: KeyTables) {
        debug_assert!(other.in_flight.is_empty());
        for (no, keys) in other.by_execution {
            match keys {
                Keys::One(hash, pos) => self.insert(no, hash, pos),
                Keys::Many(many) => {
                    let collided = many.collided.into_iter();
                    for (hash, pos) in many.by_hash.into_iter().chain(collided) {
                        self.insert(no, hash, pos);
                    }
                }
            }
        }
    }

    /// The hash under which `key` is filed.
    pub(crate) fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key.as_bytes()) & self.mask
    }

    /// Keyed appends of execution `no` whose key hashes to `hash`, except those in
    /// `ruled_out` (already read and found to hold another key).
    pub(crate) fn candidates(&self, no: ExecNo, hash: u64, ruled_out: &[Pos]) -> Vec<Candidate> {
        let positions: Vec<Pos> = match self.by_execution.get(&no) {
            None => Vec::new(),
            Some(Keys::One(h, pos)) => (*h == hash).then_some(*pos).into_iter().collect(),
            Some(Keys::Many(many)) => {
                let collided = many.collided.iter().filter(|(h, _)| *h == hash);
                many.by_hash
                    .get(&hash)
                    .into_iter()
                    .chain(collided.map(|(_, pos)| pos))
                    .copied()
                    .collect()
            }
        };
        positions
            .into_iter()
            .filter(|pos| !ruled_out.contains(pos))
            .map(|pos| Candidate {
                pos,
                pending: self.pending(pos),
            })
            .collect()
    }

    /// The ticket of the in-flight keyed append at `pos`, if it is in flight.
    fn pending(&self, pos: Pos) -> Option<Ticket> {
        let (front, back) = self.in_flight.as_slices();
        [front, back].into_iter().find_map(|part| {
            part.binary_search_by(|(p, _)| p.cmp(&pos))
                .ok()
                .and_then(|i| part.get(i))
                .map(|(_, ticket)| ticket.clone())
        })
    }

    /// Files the keyed append of execution `no` whose first record is at `pos`.
    pub(crate) fn insert(&mut self, no: ExecNo, hash: u64, pos: Pos) {
        match self.by_execution.get_mut(&no) {
            None => {
                self.by_execution.insert(no, Keys::One(hash, pos));
            }
            Some(keys) => {
                if let Keys::One(h, p) = *keys {
                    let mut many = Box::<ManyKeys>::default();
                    many.insert(h, p);
                    *keys = Keys::Many(many);
                }
                if let Keys::Many(many) = keys {
                    many.insert(hash, pos);
                }
            }
        }
        self.count += 1;
    }

    /// Files a keyed append that is not durable yet; `ticket` completes with its
    /// commit. Called in log order.
    pub(crate) fn insert_in_flight(&mut self, no: ExecNo, hash: u64, pos: Pos, ticket: Ticket) {
        self.insert(no, hash, pos);
        debug_assert!(self.in_flight.back().is_none_or(|(p, _)| *p < pos));
        self.in_flight.push_back((pos, ticket));
    }

    /// The log is durable up to the record at `durable`: the keyed appends up to there
    /// need no ticket any more.
    pub(crate) fn settle(&mut self, durable: Pos) {
        while self
            .in_flight
            .front()
            .is_some_and(|(pos, _)| *pos <= durable)
        {
            self.in_flight.pop_front();
        }
        if self.in_flight.is_empty() && self.in_flight.capacity() > 64 {
            self.in_flight.shrink_to(64);
        }
    }

    /// Number of keyed appends known.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Drops the keys of execution `no`, which was deleted: a retry of its keyed
    /// appends is refused as `Deleted` before any key is looked at.
    pub(crate) fn forget(&mut self, no: ExecNo) {
        let dropped = match self.by_execution.remove(&no) {
            None => 0,
            Some(Keys::One(..)) => 1,
            Some(Keys::Many(many)) => many.by_hash.len() + many.collided.len(),
        };
        self.count -= dropped;
    }

    /// Approximate memory of the tables: the hash tables' allocated slots (entry and
    /// control byte each), the collision lists, the per-execution entries and the
    /// in-flight queue.
    pub(crate) fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        let tables: usize = self
            .by_execution
            .values()
            .map(|k| match k {
                Keys::One(..) => 0,
                Keys::Many(many) => {
                    size_of::<ManyKeys>()
                        + many.by_hash.capacity() * (size_of::<(u64, Pos)>() + 1)
                        + many.collided.capacity() * size_of::<(u64, Pos)>()
                }
            })
            .sum();
        tables
            + self.by_execution.capacity() * (size_of::<(ExecNo, Keys)>() + 1)
            + self.in_flight.capacity() * size_of::<(Pos, Ticket)>()
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
        t.insert_in_flight(1, 2, pos(96), Ticket::default());
        t.insert_in_flight(0, 3, pos(160), Ticket::default());
        assert!(t.candidates(0, 1, &[])[0].pending.is_some());
        t.settle(pos(32));
        assert!(t.candidates(0, 1, &[])[0].pending.is_none());
        assert!(t.candidates(1, 2, &[])[0].pending.is_some());
        // A group's end between two keyed appends settles the one before it only.
        t.settle(pos(128));
        assert!(t.candidates(1, 2, &[])[0].pending.is_none());
        assert!(t.candidates(0, 3, &[])[0].pending.is_some());
        t.settle(pos(160));
        assert!(t.candidates(0, 3, &[])[0].pending.is_none());
    }
}
