//! The record frame: one event (or one seal) on disk. Pure byte logic, no I/O; fuzzed.
//!
//! ```text
//! offset size field
//!  0     4    crc             CRC-32 (IEEE, crc32fast) of bytes [4, 56 + body_len)
//!  4     4    body_len        length of the body in bytes (> 0)
//!  8     8    execution       execution number: dense, in order of creation
//! 16     8    sequence        1, 2, 3, … within the execution
//! 24     8    timestamp_ns    append time, nanoseconds since the Unix epoch (UTC), signed
//! 32     8    prev            position of the execution's previous record, or NO_PREV
//! 40     4    batch_remaining records after this one in the same atomic batch
//! 44     4    group_start     offset of the first record of this record's commit group
//! 48     2    kind            KIND_EVENT, KIND_SEAL, KIND_DELETE, KIND_FORK or
//!                             KIND_ERASED
//! 50     6    reserved        zero
//! 56     …    body            event: codec.rs (optional declaration, then the event);
//!                             seal: the seal's own offset as a u64;
//!                             delete: what it deletes (deletion.rs);
//!                             fork: the source and the new id (fork.rs);
//!                             erased: the event's declaration, then zeros;
//!                             erased span: the last sequence and position it
//!                             covers, the declaration, zeros (erasure.rs)
//!        …    padding         zeros up to the next multiple of RECORD_ALIGN
//! ```
//! All integers are little-endian. A position packs (segment id, offset) into a u64.
//!
//! A commit group is what the commit thread wrote with one write and made durable with
//! one fdatasync. `group_start` lets recovery tell damage inside the last, possibly
//! unsynced group (a torn tail, whatever survived of it) from damage to data that a
//! later group proves was synced (corruption). A seal is a one-record group written at
//! clean close: it proves the group before it was synced.
//!
//! Invariants: the decoder never reads past the slice it is given and never allocates;
//! a forged `body_len` is checked against the bytes actually present before use. The
//! encoder checks its own output with the decoder in debug builds (paired assertion).

use std::sync::OnceLock;

/// Offset of the CRC field.
pub(crate) const CRC_OFFSET: usize = 0;
/// Offset of the body length field.
pub(crate) const BODY_LEN_OFFSET: usize = CRC_OFFSET + 4;
/// Offset of the execution number.
pub(crate) const EXECUTION_OFFSET: usize = BODY_LEN_OFFSET + 4;
/// Offset of the sequence number.
pub(crate) const SEQUENCE_OFFSET: usize = EXECUTION_OFFSET + 8;
/// Offset of the timestamp.
pub(crate) const TIMESTAMP_OFFSET: usize = SEQUENCE_OFFSET + 8;
/// Offset of the previous-record position.
pub(crate) const PREV_OFFSET: usize = TIMESTAMP_OFFSET + 8;
/// Offset of the batch-remaining counter.
pub(crate) const BATCH_REMAINING_OFFSET: usize = PREV_OFFSET + 8;
/// Offset of the commit group's start.
pub(crate) const GROUP_START_OFFSET: usize = BATCH_REMAINING_OFFSET + 4;
/// Offset of the record kind.
pub(crate) const KIND_OFFSET: usize = GROUP_START_OFFSET + 4;
/// Offset of the reserved bytes.
pub(crate) const RESERVED_OFFSET: usize = KIND_OFFSET + 2;
/// Length of the fixed header; the body starts here.
pub(crate) const HEADER_LEN: usize = RESERVED_OFFSET + 6;
/// Records start at multiples of this inside a segment.
pub(crate) const RECORD_ALIGN: usize = 8;
/// Record kind: one event.
pub(crate) const KIND_EVENT: u16 = 1;
/// Record kind: a seal written at clean close.
pub(crate) const KIND_SEAL: u16 = 2;
/// Record kind: a tombstone deleting an execution or a tenant's executions (format
/// version 3 on).
pub(crate) const KIND_DELETE: u16 = 3;
/// Record kind: a fork declaring a new execution that shares another's first events
/// (format version 3 on).
pub(crate) const KIND_FORK: u16 = 4;
/// Record kind: an event of a deleted execution whose content was erased (format
/// version 3 on).
pub(crate) const KIND_ERASED: u16 = 5;
/// Record kind: consecutive events of a deleted execution erased into one record
/// (format version 3 on).
pub(crate) const KIND_ERASED_SPAN: u16 = 6;
/// `prev` of an execution's first record.
pub(crate) const NO_PREV: u64 = u64::MAX;

const _: () = assert!(HEADER_LEN == 56);
const _: () = assert!(HEADER_LEN.is_multiple_of(RECORD_ALIGN));

/// Where a record starts: segment id and byte offset inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Pos {
    pub(crate) segment: u32,
    pub(crate) offset: u32,
}

impl Pos {
    pub(crate) fn pack(self) -> u64 {
        (u64::from(self.segment) << 32) | u64::from(self.offset)
    }

    pub(crate) fn unpack(packed: u64) -> Option<Pos> {
        (packed != NO_PREV).then_some(Pos {
            segment: (packed >> 32) as u32,
            offset: packed as u32,
        })
    }
}

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// One event of one execution.
    Event,
    /// The end of a clean session; carries no event.
    Seal,
    /// A tombstone: from here on, an execution (or a tenant's executions) is deleted.
    Delete,
    /// A fork: a new execution whose first `sequence` events are another's.
    Fork,
    /// An event of a deleted execution, erased: its header as it was, its body
    /// reduced to the declaration (if any) and zeros.
    Erased,
    /// Consecutive events of a deleted execution erased into one record: the first
    /// one's header fields (the last one's `batch_remaining`), a body naming the last
    /// sequence and its position, then the declaration (if any) and zeros.
    ErasedSpan,
}

/// The fixed fields of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: Kind,
    pub(crate) group_start: u32,
    pub(crate) execution: u64,
    pub(crate) sequence: u64,
    pub(crate) timestamp_ns: i64,
    pub(crate) prev: Option<Pos>,
    pub(crate) batch_remaining: u32,
}

/// CRC-32 (IEEE) of `bytes`, as crc32fast computes it.
///
/// Clones a hasher made once instead of calling `crc32fast::hash`, which detects the
/// CPU's features on every call: that detection was 2% of a read's instructions
/// (callgrind), more than the CRC of a small record's header.
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    static PROTOTYPE: OnceLock<crc32fast::Hasher> = OnceLock::new();
    let mut hasher = PROTOTYPE.get_or_init(crc32fast::Hasher::new).clone();
    hasher.update(bytes);
    hasher.finalize()
}

/// The CRC-32 of `a` followed by `bytes`, given `crc`, the CRC-32 of `a`.
pub(crate) fn crc32_extend(crc: u32, bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new_with_initial(crc);
    hasher.update(bytes);
    hasher.finalize()
}

/// Bytes a record with a body of `body_len` bytes occupies, padding included.
pub(crate) fn framed_len(body_len: usize) -> usize {
    (HEADER_LEN + body_len).next_multiple_of(RECORD_ALIGN)
}

/// Appends a complete record (header, body, padding, CRC) to `out`.
///
/// The body is given in parts (declaration, event) so that the caller can build it
/// without concatenating first.
pub(crate) fn encode(header: &Header, body_parts: &[&[u8]], out: &mut Vec<u8>) {
    let start = out.len();
    encode_unsealed(header, body_parts, out);
    if let Some(record) = out.get_mut(start..) {
        let body_len = le_u32(record, BODY_LEN_OFFSET) as usize;
        stamp_crc(record, body_len);
    }
    debug_assert!(matches!(
        decode(out.get(start..).unwrap_or_default()),
        Decoded::Record { header: h, .. } if h == *header
    ));
}

/// Appends a record without its CRC (zero): for records queued to the commit thread,
/// which stamps `group_start` and the CRC in one pass (`stamp_group`).
pub(crate) fn encode_unsealed(header: &Header, body_parts: &[&[u8]], out: &mut Vec<u8>) {
    let body_len: usize = body_parts.iter().map(|p| p.len()).sum();
    debug_assert!(body_len > 0, "a record body is never empty");
    let start = out.len();
    let mut head = [0u8; HEADER_LEN];
    head[BODY_LEN_OFFSET..EXECUTION_OFFSET].copy_from_slice(&(body_len as u32).to_le_bytes());
    head[EXECUTION_OFFSET..SEQUENCE_OFFSET].copy_from_slice(&header.execution.to_le_bytes());
    head[SEQUENCE_OFFSET..TIMESTAMP_OFFSET].copy_from_slice(&header.sequence.to_le_bytes());
    head[TIMESTAMP_OFFSET..PREV_OFFSET].copy_from_slice(&header.timestamp_ns.to_le_bytes());
    let prev = header.prev.map_or(NO_PREV, Pos::pack);
    head[PREV_OFFSET..BATCH_REMAINING_OFFSET].copy_from_slice(&prev.to_le_bytes());
    head[BATCH_REMAINING_OFFSET..GROUP_START_OFFSET]
        .copy_from_slice(&header.batch_remaining.to_le_bytes());
    head[GROUP_START_OFFSET..KIND_OFFSET].copy_from_slice(&header.group_start.to_le_bytes());
    let kind = match header.kind {
        Kind::Event => KIND_EVENT,
        Kind::Seal => KIND_SEAL,
        Kind::Delete => KIND_DELETE,
        Kind::Fork => KIND_FORK,
        Kind::Erased => KIND_ERASED,
        Kind::ErasedSpan => KIND_ERASED_SPAN,
    };
    head[KIND_OFFSET..RESERVED_OFFSET].copy_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&head);
    for part in body_parts {
        out.extend_from_slice(part);
    }
    out.resize(start + framed_len(body_len), 0);
}

/// Computes and stores the CRC of the record at the start of `record`.
fn stamp_crc(record: &mut [u8], body_len: usize) {
    let covered = record
        .get(BODY_LEN_OFFSET..HEADER_LEN + body_len)
        .unwrap_or_default();
    let crc = crc32(covered);
    if let Some(field) = record.get_mut(CRC_OFFSET..BODY_LEN_OFFSET) {
        field.copy_from_slice(&crc.to_le_bytes());
    }
}

/// Sets `group_start` in every record of `records` (framed records back to back, as
/// queued) and recomputes their CRCs. Called by the commit thread, which alone knows
/// where a group starts.
pub(crate) fn stamp_group(records: &mut [u8], group_start: u32) {
    let mut at = 0;
    while at + HEADER_LEN <= records.len() {
        let body_len = le_u32(&records[at..], BODY_LEN_OFFSET) as usize;
        let len = framed_len(body_len);
        let Some(record) = records.get_mut(at..at + len) else {
            debug_assert!(false, "queued records are whole");
            return;
        };
        record[GROUP_START_OFFSET..KIND_OFFSET].copy_from_slice(&group_start.to_le_bytes());
        stamp_crc(record, body_len);
        debug_assert!(matches!(decode(record), Decoded::Record { .. }));
        at += len;
    }
    debug_assert_eq!(at, records.len());
}

/// A seal record for offset `offset` of a segment.
pub(crate) fn encode_seal(offset: u32, timestamp_ns: i64, out: &mut Vec<u8>) {
    let header = Header {
        kind: Kind::Seal,
        group_start: offset,
        execution: 0,
        sequence: 0,
        timestamp_ns,
        prev: None,
        batch_remaining: 0,
    };
    encode(&header, &[&u64::from(offset).to_le_bytes()], out);
}

/// What the bytes at a record boundary hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded<'a> {
    /// A complete record whose CRC matches.
    Record {
        header: Header,
        body: &'a [u8],
        /// Bytes from this record's start to the next record boundary.
        framed_len: usize,
    },
    /// A zero length field: no record was ever written here (preallocated zeros).
    Empty,
    /// Something is wrong; the reason says what.
    Invalid(Invalid),
}

/// Why the bytes at a record boundary are not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// The slice ends inside the header or body.
    Truncated,
    /// The CRC does not match the bytes.
    BadCrc { stored: u32, computed: u32 },
    /// The CRC matches but a field is impossible.
    BadField(&'static str),
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::Truncated => write!(f, "record is cut short"),
            Invalid::BadCrc { stored, computed } => {
                write!(
                    f,
                    "CRC mismatch: stored {stored:#010x}, computed {computed:#010x}"
                )
            }
            Invalid::BadField(what) => write!(f, "impossible field: {what}"),
        }
    }
}

fn le_u16(bytes: &[u8], at: usize) -> u16 {
    let mut b = [0u8; 2];
    b.copy_from_slice(bytes.get(at..at + 2).unwrap_or(&[0; 2]));
    u16::from_le_bytes(b)
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(bytes.get(at..at + 4).unwrap_or(&[0; 4]));
    u32::from_le_bytes(b)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(bytes.get(at..at + 8).unwrap_or(&[0; 8]));
    u64::from_le_bytes(b)
}

/// Decodes the record that starts at `bytes[0]`; `bytes` ends where valid data may end.
pub(crate) fn decode(bytes: &[u8]) -> Decoded<'_> {
    decode_trusting(bytes, 0)
}

/// [`decode`], except that the CRC is not recomputed when the record lies within the
/// first `verified` bytes: bytes that a full [`decode`] already accepted, record by
/// record, in the same immutable map (recovery's helper thread, `prescan.rs`).
pub(crate) fn decode_trusting(bytes: &[u8], verified: usize) -> Decoded<'_> {
    let Some(head) = bytes.get(..HEADER_LEN) else {
        return if bytes.iter().all(|&b| b == 0) {
            Decoded::Empty
        } else {
            Decoded::Invalid(Invalid::Truncated)
        };
    };
    let body_len = le_u32(head, BODY_LEN_OFFSET) as usize;
    if body_len == 0 {
        return if le_u32(head, CRC_OFFSET) == 0 {
            Decoded::Empty
        } else {
            Decoded::Invalid(Invalid::BadField("zero body length"))
        };
    }
    let Some(body) = bytes.get(HEADER_LEN..HEADER_LEN.saturating_add(body_len)) else {
        return Decoded::Invalid(Invalid::Truncated);
    };
    if HEADER_LEN + body.len() > verified {
        let stored = le_u32(head, CRC_OFFSET);
        // Header and body are contiguous: one pass over both.
        let covered = bytes
            .get(BODY_LEN_OFFSET..HEADER_LEN + body.len())
            .unwrap_or_default();
        let computed = crc32(covered);
        if stored != computed {
            return Decoded::Invalid(Invalid::BadCrc { stored, computed });
        }
    }
    match fields(head) {
        Ok(header) => Decoded::Record {
            header,
            body,
            framed_len: framed_len(body_len),
        },
        Err(why) => Decoded::Invalid(why),
    }
}

/// The header of the record at `bytes[0]` if every check but the CRC passes: length
/// present and within `bytes`, known kind, zero reserved bytes, fields consistent with
/// the kind. Costs a few loads, whatever the length field claims, so that a search
/// through damaged bytes computes a CRC only for candidates that pass it.
pub(crate) fn plausible(bytes: &[u8]) -> Option<Header> {
    let head = bytes.get(..HEADER_LEN)?;
    let body_len = le_u32(head, BODY_LEN_OFFSET) as usize;
    if body_len == 0 || bytes.len() - HEADER_LEN < body_len {
        return None;
    }
    fields(head).ok()
}

/// The framed length the record at `bytes[0]` declares, if its header passes what
/// [`plausible`] checks but whether that length fits in `bytes`: a search through a
/// window of a segment asks for more bytes instead of skipping the record.
pub(crate) fn plausible_head(bytes: &[u8]) -> Option<usize> {
    let head = bytes.get(..HEADER_LEN)?;
    let body_len = le_u32(head, BODY_LEN_OFFSET) as usize;
    if body_len == 0 {
        return None;
    }
    fields(head).ok()?;
    Some(framed_len(body_len))
}

/// Decodes and checks the fixed fields of a header (everything but length and CRC).
fn fields(head: &[u8]) -> Result<Header, Invalid> {
    let kind = match le_u16(head, KIND_OFFSET) {
        KIND_EVENT => Kind::Event,
        KIND_SEAL => Kind::Seal,
        KIND_DELETE => Kind::Delete,
        KIND_FORK => Kind::Fork,
        KIND_ERASED => Kind::Erased,
        KIND_ERASED_SPAN => Kind::ErasedSpan,
        _ => return Err(Invalid::BadField("unknown record kind")),
    };
    let header = Header {
        kind,
        group_start: le_u32(head, GROUP_START_OFFSET),
        execution: le_u64(head, EXECUTION_OFFSET),
        sequence: le_u64(head, SEQUENCE_OFFSET),
        timestamp_ns: le_u64(head, TIMESTAMP_OFFSET) as i64,
        prev: Pos::unpack(le_u64(head, PREV_OFFSET)),
        batch_remaining: le_u32(head, BATCH_REMAINING_OFFSET),
    };
    if head
        .get(RESERVED_OFFSET..HEADER_LEN)
        .is_none_or(|r| r.iter().any(|&b| b != 0))
    {
        return Err(Invalid::BadField("reserved bytes set"));
    }
    match kind {
        Kind::Event | Kind::Erased | Kind::ErasedSpan => {
            if header.sequence == 0 {
                return Err(Invalid::BadField("sequence 0"));
            }
            if header.kind == Kind::ErasedSpan && header.batch_remaining != 0 {
                return Err(Invalid::BadField("erased span inside a batch"));
            }
            if (header.sequence == 1) != header.prev.is_none() {
                return Err(Invalid::BadField("prev does not match sequence"));
            }
        }
        Kind::Seal => {
            if header.sequence != 0 || header.prev.is_some() || header.batch_remaining != 0 {
                return Err(Invalid::BadField("seal with event fields"));
            }
        }
        Kind::Delete => {
            if header.sequence != 0 || header.prev.is_some() || header.batch_remaining != 0 {
                return Err(Invalid::BadField("tombstone with event fields"));
            }
        }
        Kind::Fork => {
            if header.sequence == 0 || header.prev.is_none() || header.batch_remaining != 0 {
                return Err(Invalid::BadField("fork without its shared sequence"));
            }
        }
    }
    Ok(header)
}

/// Decodes a record and its body into an event: the fuzzed entry point of the decoder.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn decode_event(
    bytes: &[u8],
) -> Result<
    (
        Header,
        Option<crate::codec::Declaration>,
        crate::ExecutionEventData,
    ),
    String,
> {
    match decode(bytes) {
        Decoded::Record { header, .. } if header.kind != Kind::Event => {
            Err("a seal or a tombstone, not an event".into())
        }
        Decoded::Record { header, body, .. } => {
            let (declaration, event) = crate::codec::decode_body(body)?;
            if declaration.is_some() != (header.sequence == 1) {
                return Err("declaration must be present exactly in sequence 1".into());
            }
            Ok((header, declaration, event))
        }
        Decoded::Empty => Err("no record here".into()),
        Decoded::Invalid(why) => Err(why.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Header, Vec<u8>) {
        let header = Header {
            kind: Kind::Event,
            group_start: 32,
            execution: 7,
            sequence: 2,
            timestamp_ns: 1_700_000_000_000_000_001,
            prev: Some(Pos {
                segment: 3,
                offset: 4096,
            }),
            batch_remaining: 0,
        };
        let mut out = Vec::new();
        encode(&header, &[b"abc", b"de"], &mut out);
        (header, out)
    }

    #[test]
    fn the_shared_hasher_computes_plain_crc32() {
        for len in [0usize, 1, 7, 52, 64, 250, 4096] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            assert_eq!(crc32(&bytes), crc32fast::hash(&bytes), "len {len}");
            // The prototype is cloned, never consumed: a second call agrees.
            assert_eq!(crc32(&bytes), crc32fast::hash(&bytes), "len {len}");
        }
    }

    #[test]
    fn round_trip_and_padding() {
        let (header, out) = sample();
        assert_eq!(out.len(), 64);
        assert_eq!(
            decode(&out),
            Decoded::Record {
                header,
                body: b"abcde",
                framed_len: 64
            }
        );
    }

    #[test]
    fn every_truncation_is_detected() {
        let (_, out) = sample();
        for cut in 1..HEADER_LEN + 5 {
            let got = decode(out.get(..cut).unwrap_or_default());
            assert!(matches!(got, Decoded::Invalid(_)), "cut at {cut}: {got:?}");
        }
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let (_, out) = sample();
        for bit in 0..(HEADER_LEN + 5) * 8 {
            let mut bad = out.clone();
            if let Some(b) = bad.get_mut(bit / 8) {
                *b ^= 1 << (bit % 8);
            }
            assert!(
                !matches!(decode(&bad), Decoded::Record { .. }),
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn decode_event_refuses_non_event_bodies() {
        let (_, out) = sample();
        assert!(decode_event(&out).is_err(), "body is not a codec body");
        let mut seal = Vec::new();
        encode_seal(64, 1, &mut seal);
        assert!(
            matches!(decode(&seal), Decoded::Record { header, .. } if header.kind == Kind::Seal)
        );
        assert!(decode_event(&seal).is_err());
    }

    #[test]
    fn forged_length_reads_nothing_out_of_bounds() {
        let mut bytes = vec![0u8; 64];
        bytes[CRC_OFFSET] = 1;
        bytes[BODY_LEN_OFFSET..BODY_LEN_OFFSET + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&bytes), Decoded::Invalid(Invalid::Truncated));
    }
}
