//! The directory of a layout 3 checkpoint: finding one execution in the mapped file
//! without decoding the rest, so that an open which verifies the checkpoint after it
//! returns (`Options::verify_checkpoint_after_open`) can serve reads while the index
//! is still being decoded (`lazy_index.rs`).
//!
//! Layout 3 is layout 2 followed by one directory entry per execution, sorted by the
//! hash of its id, and a trailer naming where the directory starts (docs/FORMAT.md,
//! "Index checkpoint"). Open checks the fixed header, the segment digests and the
//! trailer against the trailer's CRC, and nothing else: the rest is covered by the
//! file's CRC, which only the full decode reads.
//!
//! Invariants:
//! - [`Directory::find`] answers only from an entry whose own CRC (over its number, its
//!   flags and the execution's bytes) holds and whose id is the one asked for; anything
//!   else, a fork or a deleted execution included, is "not here", and the caller waits
//!   for the decoded index instead. So a damaged directory slows a read, never changes
//!   its answer.
//! - [`check`], run by the full decode, accepts a directory only if it says exactly
//!   what the executions section says: the fast path and the decoded index agree.

use crate::checkpoint::{HEADER_LEN, MAGIC, SegmentDigest};
use crate::index::ExecNo;
use crate::io::Mapped;
use crate::record::{self, Pos};

/// The first layout with a directory.
pub(crate) const LAYOUT_WITH_DIRECTORY: u32 = 3;
/// Bytes of one directory entry: hash, number, flags, offset, CRC.
pub(crate) const ENTRY_LEN: usize = 8 + 4 + 4 + 8 + 4;
/// Bytes of the trailer: the directory's offset and the CRC of the header, the digests
/// and that offset.
pub(crate) const TRAILER_LEN: usize = 8 + 4;
/// Flag: the execution is a fork.
pub(crate) const FORK: u32 = 1;
/// Flag: the execution's tombstone is covered.
pub(crate) const DELETED: u32 = 2;
/// Bytes of one segment digest.
const DIGEST_LEN: usize = 12;
/// Bytes of an execution before its id's bytes: tenant, durable sequence, position, id
/// length.
const EXECUTION_FIXED_LEN: usize = 4 + 8 + 8 + 4;

/// The 64-bit FNV-1a hash of an execution id's bytes: the directory's order.
pub(crate) fn id_hash(id: &[u8]) -> u64 {
    id.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The CRC an entry keeps of execution `no`, flagged `flags`, encoded as `bytes`.
pub(crate) fn entry_crc(no: ExecNo, flags: u32, bytes: &[u8]) -> u32 {
    let mut prefix = [0u8; 8];
    prefix[..4].copy_from_slice(&no.to_le_bytes());
    prefix[4..].copy_from_slice(&flags.to_le_bytes());
    record::crc32_extend(record::crc32(&prefix), bytes)
}

/// The CRC the trailer keeps: of the header and digests (`prefix`) and the directory's
/// offset.
pub(crate) fn trailer_crc(prefix: &[u8], directory_offset: u64) -> u32 {
    record::crc32_extend(record::crc32(prefix), &directory_offset.to_le_bytes())
}

/// One directory entry, as the encoder collects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Entry {
    pub(crate) hash: u64,
    pub(crate) no: ExecNo,
    pub(crate) flags: u32,
    pub(crate) offset: u64,
    pub(crate) crc: u32,
}

impl Entry {
    pub(crate) fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.hash.to_le_bytes());
        out.extend_from_slice(&self.no.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.crc.to_le_bytes());
    }

    fn at(bytes: &[u8], at: usize) -> Option<Self> {
        let b = bytes.get(at..at.checked_add(ENTRY_LEN)?)?;
        Some(Self {
            hash: u64_at(b, 0)?,
            no: u32_at(b, 8)?,
            flags: u32_at(b, 12)?,
            offset: u64_at(b, 16)?,
            crc: u32_at(b, 24)?,
        })
    }
}

/// What open learns from a layout 3 file without decoding it.
pub(crate) struct Opened {
    pub(crate) directory: Directory,
    pub(crate) segments: Vec<SegmentDigest>,
    pub(crate) last_timestamp_ns: i64,
    /// The file's CRC as its last bytes state it (the full decode checks it).
    pub(crate) file_crc: u32,
    /// How many executions it lists.
    pub(crate) executions: usize,
}

/// The mapped file's directory.
pub(crate) struct Directory {
    map: Mapped,
    /// The digests the file's header lists.
    segments: Vec<SegmentDigest>,
    /// Where the directory starts.
    start: usize,
    /// Where the executions may lie: after the digests, before the directory.
    body: std::ops::Range<usize>,
    count: usize,
    stride: u64,
}

/// An execution the directory found: not a fork, not deleted.
pub(crate) struct Found<'a> {
    pub(crate) no: ExecNo,
    pub(crate) durable_seq: u64,
    pub(crate) durable_pos: Pos,
    entries: &'a [u8],
    stride: u64,
}

impl Found<'_> {
    /// The nearest indexed sequence at or after `sequence`, and its record's position:
    /// the same entry point `Index::entry_point` gives.
    pub(crate) fn entry_point(&self, sequence: u64) -> (u64, Pos) {
        let k = sequence.saturating_sub(1).div_ceil(self.stride);
        let indexed = 1 + k * self.stride;
        let entry = usize::try_from(k)
            .ok()
            .and_then(|k| k.checked_mul(8))
            .and_then(|at| pos_at(self.entries, at));
        match entry {
            Some(pos) if indexed <= self.durable_seq => (indexed, pos),
            _ => (self.durable_seq, self.durable_pos),
        }
    }

    /// The position of the execution's first record.
    pub(crate) fn first(&self) -> Option<Pos> {
        pos_at(self.entries, 0)
    }
}

impl Directory {
    /// Opens the layout 3 checkpoint mapped as `map`, written for an index of `stride`;
    /// `Err` says why it cannot be used this way (another layout included).
    pub(crate) fn open(map: Mapped, stride: u32) -> Result<Opened, String> {
        let bytes: &[u8] = map.as_ref().as_ref();
        let short = || "file is too short".to_string();
        if bytes.len() < HEADER_LEN + TRAILER_LEN + 4 || bytes[..MAGIC.len()] != MAGIC {
            return Err("not a checkpoint (wrong magic or too short)".into());
        }
        let version = u32_at(bytes, 8).ok_or_else(short)?;
        if version != LAYOUT_WITH_DIRECTORY {
            return Err(format!("layout {version} has no directory"));
        }
        let saved_stride = u32_at(bytes, 12).ok_or_else(short)?;
        if saved_stride != stride {
            return Err(format!(
                "written for index stride {saved_stride}, opened with {stride}"
            ));
        }
        let count = |at| u32_at(bytes, at).map(|n| n as usize).ok_or_else(short);
        let (segment_count, executions) = (count(24)?, count(32)?);
        let prefix = segment_count
            .checked_mul(DIGEST_LEN)
            .and_then(|n| n.checked_add(HEADER_LEN))
            .filter(|&end| end <= bytes.len() - TRAILER_LEN - 4)
            .ok_or("more segment digests than bytes")?;
        let trailer = bytes.len() - TRAILER_LEN - 4;
        let start = u64_at(bytes, trailer).ok_or_else(short)?;
        if u32_at(bytes, trailer + 8) != Some(trailer_crc(&bytes[..prefix], start)) {
            return Err("trailer CRC mismatch".into());
        }
        let start = usize::try_from(start).map_err(|_| "directory offset out of range")?;
        if start < prefix || executions.checked_mul(ENTRY_LEN) != trailer.checked_sub(start) {
            return Err("directory offset does not match the executions".into());
        }
        let segments = crate::checkpoint::decode_digests(&bytes[HEADER_LEN..prefix])?;
        let opened = Opened {
            last_timestamp_ns: u64_at(bytes, 16).ok_or_else(short)? as i64,
            file_crc: u32_at(bytes, bytes.len() - 4).ok_or_else(short)?,
            segments: segments.clone(),
            executions,
            directory: Directory {
                segments,
                start,
                body: prefix..start,
                count: executions,
                stride: u64::from(stride),
                map: map.clone(),
            },
        };
        Ok(opened)
    }

    fn bytes(&self) -> &[u8] {
        self.map.as_ref().as_ref()
    }

    /// The whole file, for the full decode.
    pub(crate) fn file(&self) -> &[u8] {
        self.bytes()
    }

    /// The segment digests the file lists.
    pub(crate) fn segments(&self) -> &[SegmentDigest] {
        &self.segments
    }

    fn entry(&self, i: usize) -> Option<Entry> {
        Entry::at(self.bytes(), self.start + i * ENTRY_LEN)
    }

    /// Execution `id`, if an entry proves it here, neither a fork nor deleted.
    pub(crate) fn find(&self, id: &str) -> Option<Found<'_>> {
        let hash = id_hash(id.as_bytes());
        let (mut low, mut high) = (0, self.count);
        while low < high {
            let mid = low + (high - low) / 2;
            if self.entry(mid)?.hash < hash {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        (low..self.count)
            .map_while(|i| self.entry(i).filter(|e| e.hash == hash))
            .find_map(|e| self.execution(&e, id))
    }

    /// The execution `e` points at, if its CRC holds, its id is `id` and it is served
    /// from here.
    fn execution(&self, e: &Entry, id: &str) -> Option<Found<'_>> {
        if e.flags != 0 {
            return None;
        }
        let at = usize::try_from(e.offset).ok()?;
        let body = self.bytes().get(self.body.clone())?;
        let b = body.get(at.checked_sub(self.body.start)?..)?;
        let durable_seq = u64_at(b, 4)?;
        let durable_pos = pos_at(b, 12)?;
        let id_len = u32_at(b, 20)? as usize;
        let id_end = EXECUTION_FIXED_LEN.checked_add(id_len)?;
        let entries = usize::try_from(durable_seq.checked_sub(1)? / self.stride + 1).ok()?;
        let end = entries.checked_mul(8)?.checked_add(id_end)?;
        let bytes = b.get(..end)?;
        if entry_crc(e.no, e.flags, bytes) != e.crc
            || bytes.get(EXECUTION_FIXED_LEN..id_end)? != id.as_bytes()
        {
            return None;
        }
        Some(Found {
            no: e.no,
            durable_seq,
            durable_pos,
            entries: &bytes[id_end..],
            stride: self.stride,
        })
    }
}

/// What the full decode learnt of each execution, to hold the directory against.
#[derive(Clone)]
pub(crate) struct Listed {
    /// Where each execution starts in the file, and where the last one ends.
    pub(crate) starts: Vec<usize>,
    pub(crate) hashes: Vec<u64>,
    pub(crate) flags: Vec<u32>,
}

/// Checks that the directory and trailer of the file `body` (its CRC cut off), from
/// `start` on, say what `listed` says; `prefix` is the header and digests.
pub(crate) fn check(
    body: &[u8],
    start: usize,
    prefix: usize,
    listed: &Listed,
) -> Result<(), String> {
    let count = listed.hashes.len();
    let end = count
        .checked_mul(ENTRY_LEN)
        .and_then(|n| n.checked_add(start))
        .filter(|&end| end.checked_add(TRAILER_LEN) == Some(body.len()))
        .ok_or("the directory and trailer do not fill the rest of the file")?;
    let mut seen = vec![false; count];
    let mut last: Option<(u64, ExecNo)> = None;
    for at in (start..end).step_by(ENTRY_LEN) {
        let e = Entry::at(body, at).ok_or("directory entry cut short")?;
        let no = e.no as usize;
        if last.is_some_and(|l| l >= (e.hash, e.no)) || no >= count || seen[no] {
            return Err(format!(
                "directory entry of {} out of order or repeated",
                e.no
            ));
        }
        seen[no] = true;
        last = Some((e.hash, e.no));
        let bytes = body
            .get(listed.starts[no]..listed.starts[no + 1])
            .unwrap_or_default();
        let expected = Entry {
            hash: listed.hashes[no],
            no: e.no,
            flags: listed.flags[no],
            offset: listed.starts[no] as u64,
            crc: entry_crc(e.no, listed.flags[no], bytes),
        };
        if e != expected {
            return Err(format!(
                "directory entry of {} does not match the execution",
                e.no
            ));
        }
    }
    if u64_at(body, end) != Some(start as u64)
        || u32_at(body, end + 8) != Some(trailer_crc(&body[..prefix], start as u64))
    {
        return Err("the trailer does not match the file".into());
    }
    Ok(())
}

/// The entries `listed` calls for, sorted.
#[cfg(any(test, feature = "fault-injection"))]
fn entries(body: &[u8], listed: &Listed) -> Vec<Entry> {
    let mut entries: Vec<Entry> = (0..listed.hashes.len())
        .map(|no| {
            let bytes = body
                .get(listed.starts[no]..listed.starts[no + 1])
                .unwrap_or_default();
            let flags = listed.flags[no];
            Entry {
                hash: listed.hashes[no],
                no: no as ExecNo,
                flags,
                offset: listed.starts[no] as u64,
                crc: entry_crc(no as ExecNo, flags, bytes),
            }
        })
        .collect();
    entries.sort_unstable();
    entries
}

/// Rewrites the directory and trailer of `body` (a file without its CRC) from `start`
/// on to say what `listed` says, if they fit where they are ([`reseal`]).
///
/// [`reseal`]: crate::checkpoint::reseal
#[cfg(any(test, feature = "fault-injection"))]
pub(crate) fn rewrite(body: &mut [u8], start: usize, prefix: usize, listed: &Listed) {
    let mut out = Vec::with_capacity(body.len().saturating_sub(start));
    for entry in entries(body, listed) {
        entry.put(&mut out);
    }
    out.extend_from_slice(&(start as u64).to_le_bytes());
    let trailer = trailer_crc(body.get(..prefix).unwrap_or_default(), start as u64);
    out.extend_from_slice(&trailer.to_le_bytes());
    if let Some(tail) = body.get_mut(start..).filter(|t| t.len() == out.len()) {
        tail.copy_from_slice(&out);
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(*b.get(at..)?.first_chunk::<4>()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(*b.get(at..)?.first_chunk::<8>()?))
}

fn pos_at(b: &[u8], at: usize) -> Option<Pos> {
    Some(Pos {
        segment: u32_at(b, at)?,
        offset: u32_at(b, at + 4)?,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::checkpoint::{self, SegmentDigest};
    use crate::ids::{ExecutionId, TenantId};
    use crate::index::{Base, Index};

    fn pos(segment: u32, offset: u32) -> Pos {
        Pos { segment, offset }
    }

    /// Executions of 1 to 23 events (stride 4) over two tenants, the fifth a fork of
    /// the first, the seventh deleted; ids chosen so that some share a hash bucket
    /// order nothing in particular.
    fn sample() -> (Index, Vec<SegmentDigest>) {
        let mut index = Index::new(4);
        let mut offset = 32;
        let mut next = || {
            offset += 64;
            pos(1, offset)
        };
        for n in 0..9u32 {
            let id = ExecutionId::from(format!("exec-{n}"));
            let tenant = TenantId::from(format!("tenant-{}", n % 2));
            let no = if n == 4 {
                let at = pos(1, 96);
                let no = index.create_fork(id, Base { source: 3, at: 2 }, at);
                index.make_durable(no, 2, at);
                no
            } else {
                let first = next();
                let no = index.create(id, &tenant, first);
                index.make_durable(no, 1, first);
                no
            };
            for seq in 2..=(n as u64 * 3 % 23 + 1) {
                let at = next();
                let seq = if n == 4 { seq + 1 } else { seq };
                index.reserve(no, seq, at);
                index.make_durable(no, seq, at);
            }
            if n == 6 {
                index.mark_deleting(no);
                index.delete(no);
            }
        }
        (
            index,
            vec![SegmentDigest {
                end: 1 << 20,
                crc: 7,
            }],
        )
    }

    fn opened(bytes: &[u8]) -> Result<Opened, String> {
        Directory::open(Arc::new(bytes.to_vec()), 4)
    }

    /// What `find` must give for `id`: the index's number, cursor and entry points.
    fn agrees(index: &Index, found: &Found<'_>, id: &str) -> bool {
        let Some((no, e)) = index.visible(&ExecutionId::from(id)) else {
            return false;
        };
        no == found.no
            && index.base(no).is_none()
            && (e.durable_seq, e.durable_pos) == (found.durable_seq, found.durable_pos)
            && found.first() == e.sparse().get(0)
            && (1..=e.durable_seq).all(|s| {
                let ep = index.entry_point(no, s).map(|p| (p.sequence, p.pos));
                ep == Some(found.entry_point(s))
            })
    }

    #[test]
    fn find_gives_what_the_index_gives_and_declines_forks_and_deletions() {
        let (index, segments) = sample();
        let bytes = checkpoint::encode(&index, &segments, 42).expect("encodes");
        checkpoint::decode(&bytes, 4).expect("decodes");
        let o = opened(&bytes).expect("opens");
        assert_eq!(o.segments, segments);
        assert_eq!((o.last_timestamp_ns, o.executions), (42, 9));
        for n in 0..9 {
            let id = format!("exec-{n}");
            match o.directory.find(&id) {
                Some(found) => assert!(agrees(&index, &found, &id), "{id}"),
                None => assert!(n == 4 || n == 6, "{id} not found"),
            }
        }
        assert!(o.directory.find("exec-9").is_none());
        assert!(o.directory.find("").is_none());
    }

    /// A damaged file never makes `find` answer otherwise than the index: it answers
    /// right or not at all (and the full decode refuses the file).
    #[test]
    fn every_cut_and_flipped_bit_finds_right_or_nothing() {
        let (index, segments) = sample();
        let bytes = checkpoint::encode(&index, &segments, 42).expect("encodes");
        for len in 0..bytes.len() {
            assert!(opened(&bytes[..len]).is_err(), "cut at {len}");
        }
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(checkpoint::decode(&b, 4).is_err(), "bit {i} decodes");
            let Ok(o) = opened(&b) else { continue };
            assert_eq!(o.segments, segments, "bit {i}: digests");
            for n in 0..9 {
                let id = format!("exec-{n}");
                if let Some(found) = o.directory.find(&id) {
                    assert!(agrees(&index, &found, &id), "bit {i}: {id}");
                }
            }
        }
    }

    /// A directory that says anything else than the executions section is refused by
    /// the full decode, even behind a valid CRC.
    #[test]
    fn a_directory_at_odds_with_the_executions_is_refused() {
        let (index, segments) = sample();
        let bytes = checkpoint::encode(&index, &segments, 42).expect("encodes");
        let start = bytes.len() - 4 - TRAILER_LEN - 9 * ENTRY_LEN;
        for field in [0, 8, 12, 16, 24] {
            let mut b = bytes.clone();
            b[start + ENTRY_LEN + field] ^= 1;
            let body = b.len() - 4;
            let crc = record::crc32(&b[..body]);
            b[body..].copy_from_slice(&crc.to_le_bytes());
            assert!(checkpoint::decode(&b, 4).is_err(), "field at {field}");
        }
        let mut swapped = bytes.clone();
        let (first, second) = (
            start..start + ENTRY_LEN,
            start + ENTRY_LEN..start + 2 * ENTRY_LEN,
        );
        let one = swapped[first.clone()].to_vec();
        swapped.copy_within(second.clone(), first.start);
        swapped[second].copy_from_slice(&one);
        let body = swapped.len() - 4;
        let crc = record::crc32(&swapped[..body]);
        swapped[body..].copy_from_slice(&crc.to_le_bytes());
        assert!(
            checkpoint::decode(&swapped, 4).is_err(),
            "entries out of order"
        );
        let mut resealed = swapped;
        checkpoint::reseal(&mut resealed);
        assert_eq!(resealed, bytes, "reseal puts the directory back");
    }
}
