//! Walking the records of one segment's bytes, front to back. Pure; fuzzed via recovery.
//!
//! A scan yields every valid record in order and ends with the reason it stopped:
//! [`Stop::End`] where a zero length field says nothing was written, or
//! [`Stop::Invalid`] at the first record that is cut short or fails its checks. What a
//! stop means (clean end, torn tail, corruption) is decided by `tail_scan.rs`, which also
//! uses [`later_group_record`] to tell a torn tail from damage followed by good data.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::record::{self, Decoded, Header, Invalid, RECORD_ALIGN};

/// One step of a scan.
#[derive(Debug)]
pub(crate) enum Step<'a> {
    /// A valid record at `offset`.
    Record {
        offset: usize,
        header: Header,
        body: &'a [u8],
    },
    /// No record at `offset`: the length field is zero.
    End { offset: usize },
    /// A damaged or incomplete record at `offset`.
    Invalid { offset: usize, why: Invalid },
}

/// Iterates over the records of `bytes` starting at `offset`.
pub(crate) struct Scanner<'a> {
    bytes: &'a [u8],
    offset: usize,
    stopped: bool,
    /// Where another thread has verified these bytes up to (`prescan.rs`), if one is.
    verified: Option<&'a AtomicUsize>,
    /// The last value read from `verified`: records ending before it skip their CRC.
    known: usize,
    /// Where `bytes` start in their segment: offsets are the slice's, but a record's
    /// `group_start` is a segment offset.
    base: usize,
}

impl<'a> Scanner<'a> {
    pub(crate) fn new(bytes: &'a [u8], offset: usize) -> Self {
        Self {
            bytes,
            offset,
            stopped: false,
            verified: None,
            known: 0,
            base: 0,
        }
    }

    /// A scanner of `bytes` that start at offset `base` of their segment (a window
    /// read from the device), from `offset` within them.
    pub(crate) fn within(bytes: &'a [u8], offset: usize, base: usize) -> Self {
        Self {
            base,
            ..Self::new(bytes, offset)
        }
    }

    /// A scanner that skips the CRC of records below `verified`, which another thread
    /// raises as it checks the same bytes with full decodes. It is read again only once
    /// the scan passes the value last read, so the two threads share one cache line
    /// rarely, not once per record.
    pub(crate) fn trusting(bytes: &'a [u8], offset: usize, verified: &'a AtomicUsize) -> Self {
        Self {
            verified: Some(verified),
            ..Self::new(bytes, offset)
        }
    }

    /// Offset of the next record boundary the scan will look at.
    pub(crate) fn offset(&self) -> usize {
        self.offset
    }
}

impl<'a> Iterator for Scanner<'a> {
    type Item = Step<'a>;

    fn next(&mut self) -> Option<Step<'a>> {
        if self.stopped {
            return None;
        }
        let offset = self.offset;
        let rest = self.bytes.get(offset..).unwrap_or_default();
        if let Some(verified) = self.verified
            && self.known <= offset
        {
            self.known = verified.load(Ordering::Acquire);
        }
        let decoded = if offset.is_multiple_of(RECORD_ALIGN) {
            record::decode_trusting(rest, self.known.saturating_sub(offset))
        } else {
            Decoded::Invalid(Invalid::BadField("record boundary not aligned"))
        };
        let step = match decoded {
            Decoded::Record {
                header,
                body,
                framed_len,
            } => {
                // Padding must be present and zero: no CRC covers it, so check it here.
                let padding = rest.get(record::HEADER_LEN + body.len()..framed_len);
                if padding.is_none() {
                    Step::Invalid {
                        offset,
                        why: Invalid::Truncated,
                    }
                } else if padding.unwrap_or_default().iter().any(|&b| b != 0) {
                    Step::Invalid {
                        offset,
                        why: Invalid::BadField("nonzero padding"),
                    }
                } else if header.group_start as usize > self.base + offset {
                    Step::Invalid {
                        offset,
                        why: Invalid::BadField("commit group starts after its record"),
                    }
                } else {
                    self.offset += framed_len;
                    return Some(Step::Record {
                        offset,
                        header,
                        body,
                    });
                }
            }
            Decoded::Empty => Step::End { offset },
            Decoded::Invalid(why) => Step::Invalid { offset, why },
        };
        self.stopped = true;
        Some(step)
    }
}

/// Zero runs are checked a block at a time: one branch per 64 bytes, OR-ing its words
/// first. After a crash the scans below run over up to a whole segment of zeros.
const ZERO_BLOCK: usize = 64;

/// Whether every byte of `block` is zero, without a branch per byte or word.
fn all_zero(block: &[u8]) -> bool {
    let mut acc = 0u64;
    for word in block.chunks_exact(8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        acc |= u64::from_le_bytes(w);
    }
    for &b in block.chunks_exact(8).remainder() {
        acc |= u64::from(b);
    }
    acc == 0
}

/// Offset of the first byte at or after `from` that is not zero.
pub(crate) fn first_nonzero(bytes: &[u8], from: usize) -> Option<usize> {
    let tail = bytes.get(from..)?;
    let mut at = from;
    for block in tail.chunks(ZERO_BLOCK) {
        if !all_zero(block) {
            return block.iter().position(|&b| b != 0).map(|i| at + i);
        }
        at += block.len();
    }
    None
}

/// Offset of the last byte that is not zero.
pub(crate) fn last_nonzero(bytes: &[u8]) -> Option<usize> {
    let mut end = bytes.len();
    for block in bytes.rchunks(ZERO_BLOCK) {
        end -= block.len();
        if !all_zero(block) {
            return block.iter().rposition(|&b| b != 0).map(|i| end + i);
        }
    }
    None
}

/// What [`later_group_record`] found after a damaged record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Later {
    /// A valid record of a commit group that started after the damage.
    Found { offset: usize, header: Header },
    /// No such record: the damage may be a torn last group.
    None,
    /// The bytes hold more plausible-looking headers than a log ever writes, and
    /// checking them all would cost more than [`CRC_BUDGET_PER_BYTE`] allows.
    Undecided,
}

/// The work a search did, counted so that tests can prove it linear in the bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SearchWork {
    /// Candidates whose cheap header fields passed and whose CRC was computed.
    pub(crate) candidates: u64,
    /// Bytes those CRCs covered.
    pub(crate) bytes_checksummed: u64,
}

/// A search may checksum at most this many bytes per byte it searches (plus one
/// maximal record). A log written by execlog needs one CRC: its first candidate after
/// damage is either a genuine later record or fails a cheap field check; only crafted
/// bytes make many candidates pass them.
pub(crate) const CRC_BUDGET_PER_BYTE: u64 = 2;

/// The first valid record after the damaged record at `damaged` that belongs to a
/// commit group starting after it (`damaged < group_start <= its offset`), if any.
///
/// Used once per open, on the bytes after a bad record, to decide between a torn tail
/// (records of the same, last group may follow, whatever survived of it) and
/// corruption (a later group proves the damaged one was synced), see `tail_scan.rs`.
/// Linear in `bytes`: zero words are skipped without decoding, every candidate's cheap
/// fields are checked before its CRC, and the CRC work is bounded by
/// [`CRC_BUDGET_PER_BYTE`]; past it the answer is [`Later::Undecided`].
pub(crate) fn later_group_record(bytes: &[u8], damaged: usize, work: &mut SearchWork) -> Later {
    let budget = CRC_BUDGET_PER_BYTE * bytes.len() as u64;
    let mut at = (damaged + 1).next_multiple_of(RECORD_ALIGN);
    while at + record::HEADER_LEN <= bytes.len() {
        // A record's first word holds its nonzero length, so zero words are skipped.
        let Some(nonzero) = first_nonzero(bytes, at) else {
            return Later::None;
        };
        at = nonzero - nonzero % RECORD_ALIGN;
        let rest = bytes.get(at..).unwrap_or_default();
        if let Some(header) = record::plausible(rest)
            && (damaged + 1..=at).contains(&(header.group_start as usize))
        {
            let body_len = rest.len().min(record::framed_len(body_len_of(rest)));
            work.candidates += 1;
            work.bytes_checksummed += body_len as u64;
            if work.bytes_checksummed > budget {
                return Later::Undecided;
            }
            if let Decoded::Record { header, .. } = record::decode(rest) {
                return Later::Found { offset: at, header };
            }
        }
        at += RECORD_ALIGN;
    }
    Later::None
}

/// The length field of the record at `bytes[0]` (0 if cut short).
fn body_len_of(bytes: &[u8]) -> usize {
    let mut len = [0u8; 4];
    if let Some(field) = bytes.get(record::BODY_LEN_OFFSET..record::BODY_LEN_OFFSET + 4) {
        len.copy_from_slice(field);
    }
    u32::from_le_bytes(len) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Header, encode};

    #[test]
    fn zero_scans_find_the_first_and_last_set_bytes() {
        for len in 0..200 {
            assert_eq!(last_nonzero(&vec![0u8; len]), None);
            assert_eq!(first_nonzero(&vec![0u8; len], 0), None);
            for at in 0..len {
                let mut bytes = vec![0u8; len];
                bytes[at] = 7;
                assert_eq!(first_nonzero(&bytes, 0), Some(at), "len {len} at {at}");
                assert_eq!(last_nonzero(&bytes), Some(at), "len {len} at {at}");
                bytes[len - 1] = 1;
                bytes[0] = 1;
                assert_eq!(first_nonzero(&bytes, at), Some(at), "len {len} from {at}");
                assert_eq!(last_nonzero(&bytes[..=at]), Some(at), "len {len} at {at}");
            }
        }
    }

    fn record_in_group(seq: u64, group_start: u32) -> Vec<u8> {
        let h = Header {
            kind: crate::record::Kind::Event,
            group_start,
            execution: 0,
            sequence: seq,
            timestamp_ns: 1,
            prev: (seq > 1).then_some(crate::record::Pos {
                segment: 1,
                offset: 32,
            }),
            batch_remaining: 0,
        };
        let mut out = Vec::new();
        encode(&h, &[b"payload"], &mut out);
        out
    }

    fn record(seq: u64) -> Vec<u8> {
        record_in_group(seq, 0)
    }

    #[test]
    fn scan_stops_at_zeros() {
        let mut bytes = record(1);
        bytes.extend(record(2));
        let len = bytes.len();
        bytes.extend([0u8; 100]);
        let steps: Vec<_> = Scanner::new(&bytes, 0).collect();
        assert_eq!(steps.len(), 3);
        assert!(matches!(steps[2], Step::End { offset } if offset == len));
    }

    #[test]
    fn finds_a_later_group_after_damage_but_not_the_same_group() {
        let mut bytes = record(1);
        let second = bytes.len();
        // Same group as the first record: not evidence of a later sync.
        bytes.extend(record_in_group(2, 0));
        let third = bytes.len();
        bytes.extend(record_in_group(3, third as u32));
        bytes.extend([0u8; 64]);
        bytes[4] ^= 0xFF;
        let mut work = SearchWork::default();
        let found = later_group_record(&bytes, 0, &mut work);
        assert!(
            matches!(found, Later::Found { offset, .. } if offset == third),
            "{found:?}"
        );
        assert_eq!(work.candidates, 1, "same-group records cost no CRC");
        assert_eq!(later_group_record(&bytes, third, &mut work), Later::None);
        assert!(second < third);
    }

    /// A header that passes every cheap check at `at` and claims the rest of `bytes`.
    fn plausible_header_at(bytes: &mut [u8], at: usize) {
        let body_len = (bytes.len() - at - crate::record::HEADER_LEN) as u32;
        let h = &mut bytes[at..at + crate::record::HEADER_LEN];
        h.fill(0);
        h[0] = 0xAB; // a CRC that will not match
        h[crate::record::BODY_LEN_OFFSET..crate::record::BODY_LEN_OFFSET + 4]
            .copy_from_slice(&body_len.to_le_bytes());
        h[crate::record::SEQUENCE_OFFSET] = 1;
        h[crate::record::PREV_OFFSET..crate::record::PREV_OFFSET + 8].fill(0xFF);
        h[crate::record::GROUP_START_OFFSET..crate::record::GROUP_START_OFFSET + 4]
            .copy_from_slice(&(at as u32).to_le_bytes());
        h[crate::record::KIND_OFFSET] = crate::record::KIND_EVENT as u8;
    }

    /// Crafted bytes with a plausible header at every record boundary: the search
    /// stays within its CRC budget (it was quadratic: each candidate checksummed the
    /// rest of the segment).
    #[test]
    fn a_search_through_crafted_headers_is_linear() {
        for len in [64usize << 10, 256 << 10, 1 << 20] {
            let mut bytes = vec![0u8; len];
            let mut at = 0;
            while at + crate::record::HEADER_LEN + 8 <= len {
                plausible_header_at(&mut bytes, at);
                at += 8 * 8;
            }
            let mut work = SearchWork::default();
            let found = later_group_record(&bytes, 0, &mut work);
            assert_eq!(found, Later::Undecided, "len {len}");
            assert!(
                work.bytes_checksummed <= CRC_BUDGET_PER_BYTE * len as u64 + len as u64,
                "len {len}: {work:?}"
            );
        }
    }

    /// Ordinary damage: a large last group whose first record is damaged. Its other
    /// records fail the cheap group check, so no CRC is computed at all.
    #[test]
    fn a_damaged_first_record_of_a_large_group_costs_no_crc() {
        let mut bytes = Vec::new();
        for seq in 1..=20_000u64 {
            bytes.extend(record_in_group(seq, 0));
        }
        bytes[4] ^= 0xFF;
        let mut work = SearchWork::default();
        assert_eq!(later_group_record(&bytes, 0, &mut work), Later::None);
        assert_eq!(work, SearchWork::default());
    }
}
