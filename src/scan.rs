//! Walking the records of one segment's bytes, front to back. Pure; fuzzed via recovery.
//!
//! A scan yields every valid record in order and ends with the reason it stopped:
//! [`Stop::End`] where a zero length field says nothing was written, or
//! [`Stop::Invalid`] at the first record that is cut short or fails its checks. What a
//! stop means (clean end, torn tail, corruption) is decided by `recovery.rs`, which also
//! uses [`valid_record_after`] to tell a torn tail from damage followed by good data.

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
}

impl<'a> Scanner<'a> {
    pub(crate) fn new(bytes: &'a [u8], offset: usize) -> Self {
        debug_assert_eq!(offset % RECORD_ALIGN, 0);
        Self {
            bytes,
            offset,
            stopped: false,
            verified: None,
            known: 0,
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
        let step = match record::decode_trusting(rest, self.known.saturating_sub(offset)) {
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
                } else if header.group_start as usize > offset {
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

/// The first valid record strictly after `from` (at aligned offsets), if any, with its
/// header.
///
/// Used at most once per open, on the bytes after a bad record, to decide between a
/// torn tail and corruption (see `recovery.rs`). Zero words are skipped without
/// decoding.
pub(crate) fn valid_record_after(bytes: &[u8], from: usize) -> Option<(usize, Header)> {
    let mut at = (from + 1).next_multiple_of(RECORD_ALIGN);
    while at + record::HEADER_LEN <= bytes.len() {
        // A record's first word holds its nonzero length, so zero words are skipped.
        let nonzero = first_nonzero(bytes, at)?;
        at = nonzero - nonzero % RECORD_ALIGN;
        let rest = bytes.get(at..).unwrap_or_default();
        if let Decoded::Record { header, .. } = record::decode(rest)
            && header.group_start as usize <= at
        {
            return Some((at, header));
        }
        at += RECORD_ALIGN;
    }
    None
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

    fn record(seq: u64) -> Vec<u8> {
        let h = Header {
            kind: crate::record::Kind::Event,
            group_start: 0,
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
    fn finds_valid_record_after_damage() {
        let mut bytes = record(1);
        let second = bytes.len();
        bytes.extend(record(2));
        bytes.extend([0u8; 64]);
        bytes[4] ^= 0xFF;
        assert_eq!(valid_record_after(&bytes, 0).map(|r| r.0), Some(second));
        assert_eq!(valid_record_after(&bytes, second), None);
        assert_eq!(first_nonzero(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 7], 0), Some(9));
    }
}
