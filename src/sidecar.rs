//! Segment sidecars (`<segment>.side`): what open would learn by scanning a sealed
//! segment that no checkpoint covers, saved once so that an open after a crash does
//! not read the segment (docs/DESIGN.md, "Sidecars: the tail after a crash without
//! reading it"; layout in docs/FORMAT.md).
//!
//! An open that leaves its index to decode (`lazy_index.rs`) scans the tail after its
//! checkpoint only to learn where it lies and what it changes ([`HeldTail`]): the
//! decode scans it again, with every check, into the decoded index. For a sealed
//! segment the checkpoint does not cover, the sidecar gives open that summary instead:
//! the executions the segment appends to, whether it deletes or forks, how many
//! executions it declares, its records, its newest timestamp, where its records end.
//!
//! Invariants:
//! - A summary is what the held scan of the same bytes computes ([`summarize`]): the
//!   writer runs that scan, and the decode runs it again over the segment as it is and
//!   refutes the checkpoint unless both agree, before anything is served from the
//!   index. A sidecar can therefore make a read wait, or poison the store, never
//!   change what a read returns after the decode.
//! - Written only for a sealed segment, after its records are durable (its end no
//!   longer moves), whole: to `<segment>.side.tmp`, fdatasync, rename, directory fsync.
//! - Removed, durably, before erasure replaces its segment's file: a summary never
//!   describes another file of the same segment.
//! - Derived data: a missing, short, damaged or foreign sidecar is ignored, and open
//!   scans the segment as it would without one.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::idempotency::KeyTables;
use crate::index::Index;
use crate::io::Io;
use crate::rebuild::{HeldTail, Rebuild};
use crate::record::{self, RECORD_ALIGN, crc32};
use crate::scan::first_nonzero;
use crate::segment::{self, HeaderCheck, SEGMENT_HEADER_LEN};
use crate::store_dir;

/// First bytes of a sidecar.
const MAGIC: [u8; 8] = *b"EXLGSIDE";
/// Version of the layout written.
pub(crate) const VERSION: u32 = 1;
/// Bytes before the list of touched executions.
const FIXED_LEN: usize = 8 + 4 + 4 + 8 + 8 + 8 + 8 + 4 + 4 + 4 + 4;
/// Bytes before `end` whose CRC binds a sidecar to its segment's file (fewer if the
/// records are shorter).
const TAIL_CHECK_LEN: u64 = 4096;
/// Bytes of the trailing CRC.
const CRC_LEN: usize = 4;
/// Flag: the segment holds a tombstone or a fork.
const CHANGES_OTHERS: u32 = 1;
/// Flag: the segment holds a record (`tail_group_start` is meaningful).
const HAS_RECORDS: u32 = 2;

/// What the held scan of one whole sealed segment found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) segment: u32,
    /// Where its records end.
    pub(crate) end: u64,
    /// Records (events, erased spans' events included), as the scan counts them.
    pub(crate) records: u64,
    /// Executions it declares, forks included.
    pub(crate) declared: u64,
    /// Its newest timestamp (0 if it holds no record).
    pub(crate) last_timestamp_ns: i64,
    /// The commit group start of its last record, if it holds one.
    pub(crate) tail_group_start: Option<u32>,
    /// Whether it holds a tombstone or a fork.
    pub(crate) changes_others: bool,
    /// The executions its records append to, ascending.
    pub(crate) touched: Vec<u64>,
    /// The CRC-32 of the segment's last bytes before `end` ([`tail_crc`]): what open
    /// checks, for the price of one page, that the sidecar was written for this file.
    pub(crate) tail_crc: u32,
}

impl Summary {
    /// Adds this segment to `held`, the tail an open holds for the decode, as the held
    /// scan of the segment would have.
    pub(crate) fn hold(&self, rebuild: &mut Rebuild) {
        // Saturating: the counts are the decode's to check, and a forged one must not
        // overflow before it does.
        if let Some(held) = &mut rebuild.held {
            held.touched.extend(self.touched.iter().copied());
            held.changes_others |= self.changes_others;
            held.declared = held.declared.saturating_add(self.declared);
        }
        rebuild.records = rebuild.records.saturating_add(self.records);
        rebuild.last_timestamp_ns = rebuild.last_timestamp_ns.max(self.last_timestamp_ns);
        if let Some(group_start) = self.tail_group_start {
            rebuild.tail = Some((self.segment, group_start));
        }
    }

    /// Whether open may take this summary for `bytes` (segment `id`'s map) without
    /// scanning them: its segment, a valid header, its end inside the file, and the
    /// CRC of the bytes before its end: a sidecar of another file of the same segment
    /// id (another store's, an older one's) is then ignored, not refuted. What the
    /// summary says of the records is the decode's to check.
    pub(crate) fn fits(&self, id: u32, bytes: &[u8]) -> bool {
        self.segment == id
            && self.end <= bytes.len() as u64
            && segment::check_header(bytes, id) == HeaderCheck::Valid
            && tail_crc(bytes, self.end) == Some(self.tail_crc)
    }
}

/// The CRC-32 of the bytes of `bytes` in `[end - 4096, end)` (from the first record
/// if `end` is nearer), `None` if `end` is outside them.
fn tail_crc(bytes: &[u8], end: u64) -> Option<u32> {
    let from = end
        .saturating_sub(TAIL_CHECK_LEN)
        .max(SEGMENT_HEADER_LEN as u64);
    let range = usize::try_from(from).ok()?..usize::try_from(end).ok()?;
    bytes.get(range).map(crc32)
}

/// Most records (or declarations, or executions touched) the records up to `end` can
/// hold: each takes at least an empty record's bytes.
fn most_records_before(end: u64) -> u64 {
    end.saturating_sub(SEGMENT_HEADER_LEN as u64) / record::framed_len(0) as u64
}

/// Longest valid sidecar of a segment whose file is `file_len` bytes long: open reads
/// no more than that.
pub(crate) fn longest_for(file_len: u64) -> u64 {
    (FIXED_LEN + CRC_LEN) as u64 + 8 * most_records_before(file_len)
}

impl Summary {
    /// Whether the counts fit in `end` bytes of records: declarations and executions
    /// each need a record (events of an erased span need none, so `records` is free).
    fn plausible(&self) -> bool {
        let most = most_records_before(self.end);
        self.declared <= most && self.touched.len() as u64 <= most
    }
}

/// The summary of segment `id` (`bytes`, its whole file, sealed with its records
/// ending at `end`): the held scan of its records, with every check that scan makes
/// (CRCs, batches), which must reach `end` exactly, with zeros after it (a record
/// after `end` would otherwise be left out of the tail held for the decode).
pub(crate) fn summarize(id: u32, bytes: &[u8], end: u64) -> Result<Summary> {
    let summary = summarize_part(id, bytes, end)?;
    let records = usize::try_from(end).unwrap_or(usize::MAX);
    if let Some(at) = first_nonzero(bytes, records) {
        let why = "bytes after the end of the records";
        return Err(Error::corrupt(id, at as u64, why));
    }
    Ok(summary)
}

/// [`summarize`] of the records before `end` only, whatever follows them.
pub(crate) fn summarize_part(id: u32, bytes: &[u8], end: u64) -> Result<Summary> {
    let corrupt = |at: u64, why: String| Error::corrupt(id, at, why);
    if segment::check_header(bytes, id) != HeaderCheck::Valid {
        return Err(corrupt(0, "no valid segment header".into()));
    }
    let records = usize::try_from(end)
        .ok()
        .and_then(|end| bytes.get(..end))
        .ok_or_else(|| corrupt(end, "the records end past the file".into()))?;
    // The held scan applies nothing to the index or the keys: empty stand-ins.
    let mut rebuild = Rebuild::resume(Index::new(1), KeyTables::new(0), 0);
    rebuild.held = Some(HeldTail::default());
    rebuild.replay(id, records, SEGMENT_HEADER_LEN as u64)?;
    if let Some(start) = rebuild.batch_start {
        return Err(corrupt(start, "the last batch is incomplete".into()));
    }
    let held = rebuild.held.take().unwrap_or_default();
    let tail = tail_crc(bytes, end).unwrap_or_default();
    Ok(summary_of(id, end, &rebuild, held, tail))
}

fn summary_of(segment: u32, end: u64, rebuild: &Rebuild, held: HeldTail, tail_crc: u32) -> Summary {
    let mut touched: Vec<u64> = held.touched.into_iter().collect();
    touched.sort_unstable();
    Summary {
        segment,
        end,
        records: rebuild.records,
        declared: held.declared,
        last_timestamp_ns: rebuild.last_timestamp_ns,
        tail_group_start: rebuild.tail.map(|(_, group_start)| group_start),
        changes_others: held.changes_others,
        touched,
        tail_crc,
    }
}

/// The bytes of a sidecar holding `s`.
pub(crate) fn encode(s: &Summary) -> Vec<u8> {
    let mut b = Vec::with_capacity(FIXED_LEN + 8 * s.touched.len() + CRC_LEN);
    let flags = u32::from(s.changes_others) * CHANGES_OTHERS
        + u32::from(s.tail_group_start.is_some()) * HAS_RECORDS;
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&s.segment.to_le_bytes());
    b.extend_from_slice(&s.end.to_le_bytes());
    b.extend_from_slice(&s.records.to_le_bytes());
    b.extend_from_slice(&s.declared.to_le_bytes());
    b.extend_from_slice(&s.last_timestamp_ns.to_le_bytes());
    b.extend_from_slice(&s.tail_group_start.unwrap_or(0).to_le_bytes());
    b.extend_from_slice(&flags.to_le_bytes());
    b.extend_from_slice(&s.tail_crc.to_le_bytes());
    b.extend_from_slice(&(s.touched.len() as u32).to_le_bytes());
    for no in &s.touched {
        b.extend_from_slice(&no.to_le_bytes());
    }
    let crc = crc32(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// The summary `bytes` hold, or why they are not a valid sidecar.
pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<Summary, String> {
    let (body, crc) = bytes
        .split_last_chunk::<CRC_LEN>()
        .filter(|(body, _)| body.len() >= FIXED_LEN)
        .ok_or("shorter than a sidecar")?;
    if u32::from_le_bytes(*crc) != crc32(body) {
        return Err("CRC mismatch".into());
    }
    let mut r = Fields(body);
    if r.take::<8>() != MAGIC {
        return Err("not a sidecar (magic)".into());
    }
    let version = r.u32();
    if version != VERSION {
        return Err(format!("unknown sidecar version {version}"));
    }
    let segment = r.u32();
    let end = r.u64();
    let records = r.u64();
    let declared = r.u64();
    let last_timestamp_ns = i64::from_le_bytes(r.take::<8>());
    let group_start = r.u32();
    let flags = r.u32();
    let tail_crc = r.u32();
    let count = r.u32() as usize;
    if r.0.len() != count.saturating_mul(8) {
        return Err("the list of executions does not fill the file".into());
    }
    if flags & !(CHANGES_OTHERS | HAS_RECORDS) != 0 {
        return Err(format!("unknown flags {flags:#x}"));
    }
    if end < SEGMENT_HEADER_LEN as u64 || !end.is_multiple_of(RECORD_ALIGN as u64) {
        return Err(format!("records end at {end}, off the record grid"));
    }
    let touched: Vec<u64> = (0..count).map(|_| r.u64()).collect();
    if !touched.windows(2).all(|w| w[0] < w[1]) {
        return Err("the executions are not strictly ascending".into());
    }
    let has_records = flags & HAS_RECORDS != 0;
    let summary = Summary {
        segment,
        end,
        records,
        declared,
        last_timestamp_ns,
        tail_group_start: has_records.then_some(group_start),
        changes_others: flags & CHANGES_OTHERS != 0,
        touched,
        tail_crc,
    };
    if !summary.plausible() {
        return Err("more declarations or executions than its records can hold".into());
    }
    Ok(summary)
}

/// Recomputes the trailing CRC of `bytes` (for `forgery.rs`).
#[cfg(any(test, feature = "fault-injection"))]
pub(crate) fn reseal(bytes: &mut [u8]) {
    if let Some(body_len) = bytes.len().checked_sub(CRC_LEN) {
        let crc = crc32(&bytes[..body_len]);
        bytes[body_len..].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Recomputes the tail CRC of `bytes` over `segment` at the end they state, then their
/// trailing CRC (for `forgery.rs`).
#[cfg(any(test, feature = "fault-injection"))]
pub(crate) fn reseal_against(bytes: &mut [u8], segment: &[u8]) {
    const END_AT: usize = 16;
    const TAIL_CRC_AT: usize = 56;
    if bytes.len() >= FIXED_LEN + CRC_LEN {
        let mut end = [0u8; 8];
        end.copy_from_slice(&bytes[END_AT..END_AT + 8]);
        let tail = tail_crc(segment, u64::from_le_bytes(end)).unwrap_or_default();
        bytes[TAIL_CRC_AT..TAIL_CRC_AT + 4].copy_from_slice(&tail.to_le_bytes());
    }
    reseal(bytes);
}

/// A cursor over a sidecar whose length is already checked.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some((head, rest)) = self.0.split_first_chunk::<N>() {
            out = *head;
            self.0 = rest;
        }
        out
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}

/// Path of segment `id`'s sidecar in `dir`.
pub(crate) fn path(dir: &Path, id: u32) -> PathBuf {
    dir.join(store_dir::sidecar_name(id))
}

/// Segment `id`'s sidecar in `dir`, if there is a valid one for that segment, whose
/// file is `segment_len` bytes long; why not otherwise (`None`: there is none). A file
/// longer than any sidecar of that segment is not read.
pub(crate) fn load(
    io: &dyn Io,
    dir: &Path,
    (id, segment_len): (u32, u64),
) -> Option<std::result::Result<Summary, String>> {
    let path = path(dir, id);
    let file = match io.open(&path, true) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(Err(format!("open: {e}"))),
    };
    let read = match file.size() {
        Ok(len) if len > longest_for(segment_len) => Err(format!("{len} bytes, too long")),
        Ok(len) => file
            .read_at(0, usize::try_from(len).unwrap_or(usize::MAX))
            .map_err(|e| format!("read: {e}")),
        Err(e) => Err(format!("stat: {e}")),
    };
    Some(read.and_then(|bytes| decode(&bytes)).and_then(|s| {
        (s.segment == id)
            .then_some(s)
            .ok_or_else(|| "it names another segment".to_string())
    }))
}

/// Writes `s` as its segment's sidecar, durably (see the module docs).
pub(crate) fn write(io: &dyn Io, dir: &Path, s: &Summary, mode: u32) -> Result<()> {
    let name = store_dir::sidecar_name(s.segment);
    let tmp = store_dir::sidecar_tmp_name(s.segment);
    let path = dir.join(&name);
    crate::io::replace_file(io, dir, (&tmp, &name), &encode(s), mode)
        .map_err(|e| Error::io("write sidecar", &path, e))?;
    io.sync_dir(dir)
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Removes segment `id`'s sidecar, if there is one, durably: before its segment's file
/// is replaced.
pub(crate) fn remove_durably(io: &dyn Io, dir: &Path, id: u32) -> Result<()> {
    let path = path(dir, id);
    match io.remove(&path) {
        Ok(()) => io
            .sync_dir(dir)
            .map_err(|e| Error::io("fsync directory", dir, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove sidecar", &path, e)),
    }
}

/// Removes the sidecars of `ids`, which a checkpoint now covers; not synced (one that
/// comes back after a crash names a covered segment, which open does not ask about).
pub(crate) fn remove_covered(io: &dyn Io, dir: &Path, ids: impl IntoIterator<Item = u32>) {
    for id in ids {
        let path = path(dir, id);
        if let Err(e) = io.remove(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            log::debug!("could not remove {}: {e}", path.display());
        }
    }
}

/// Checks the sidecars an open took against the segments as they are now: each must
/// equal the summary of its segment's bytes (`view`: segment id to its map, the
/// whole file as open mapped it). `Err` says which and why: a sidecar that does not
/// describe its segment, or a segment whose records do not scan (its damage).
pub(crate) fn check_taken(
    taken: &[Summary],
    mut view: impl FnMut(u32, u64) -> Result<crate::io::Mapped>,
) -> std::result::Result<(), String> {
    let mut seen = HashSet::new();
    for s in taken {
        if !seen.insert(s.segment) {
            return Err(format!("segment {}'s sidecar was taken twice", s.segment));
        }
        let found = view(s.segment, s.end)
            .and_then(|map| summarize(s.segment, map.as_ref().as_ref(), s.end))
            .map_err(|e| e.to_string())?;
        if &found != s {
            return Err(format!(
                "segment {}'s sidecar (a file derived from the segment) does not describe \
                 its records",
                s.segment
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Summary {
        Summary {
            segment: 7,
            end: 65_536,
            records: 812,
            declared: 3,
            last_timestamp_ns: 1_764_000_000_000_000_000,
            tail_group_start: Some(64_000),
            changes_others: true,
            touched: vec![0, 4, 9, 1 << 33],
            tail_crc: 0xDEAD_BEEF,
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        assert_eq!(decode(&encode(&s)), Ok(s.clone()));
        let empty = Summary {
            tail_group_start: None,
            changes_others: false,
            touched: Vec::new(),
            ..s
        };
        assert_eq!(decode(&encode(&empty)), Ok(empty));
    }

    #[test]
    fn every_flipped_bit_and_every_cut_is_refused() {
        let bytes = encode(&sample());
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&b).is_err(), "bit {bit}");
        }
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "cut at {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    /// Fields a forger sets, CRC recomputed, that no writer produces.
    #[test]
    fn forged_fields_with_a_valid_crc_are_refused() {
        let forged = |change: &dyn Fn(&mut Summary)| {
            let mut s = sample();
            change(&mut s);
            decode(&encode(&s))
        };
        assert!(forged(&|s| s.touched = vec![4, 4]).is_err());
        assert!(forged(&|s| s.touched = vec![9, 4]).is_err());
        assert!(forged(&|s| s.end = 8).is_err());
        assert!(forged(&|s| s.end = 65_537).is_err());
        let mut bytes = encode(&sample());
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        reseal(&mut bytes);
        assert!(decode(&bytes).unwrap_err().contains("version"));
        let mut bytes = encode(&sample());
        bytes[52..56].copy_from_slice(&4u32.to_le_bytes());
        reseal(&mut bytes);
        assert!(decode(&bytes).unwrap_err().contains("flags"));
        let mut bytes = encode(&sample());
        bytes[60..64].copy_from_slice(&u32::MAX.to_le_bytes());
        reseal(&mut bytes);
        assert!(decode(&bytes).is_err());
        // More declarations or executions than 65,536 bytes of records can hold.
        assert!(forged(&|s| s.declared = u64::MAX - 1).is_err());
        assert!(forged(&|s| s.declared = 65_536 / 56 + 1).is_err());
        assert!(forged(&|s| s.touched = (0..65_536 / 56 + 1).collect()).is_err());
        assert!(forged(&|s| s.declared = (65_536 - 32) / 56).is_ok());
    }
}
