//! Index checkpoints: the index as a clean close left it, so that the next open loads
//! it instead of rebuilding it record by record.
//!
//! A checkpoint is a cache, never a source of truth. Besides the index it records, per
//! segment it covers, where the records end and the CRC-32 of the segment's bytes from
//! its first record to that end (a [`SegmentDigest`]). Open (`saved_index.rs`) recomputes
//! those CRCs over the mapped segments, one pass over large spans instead of one
//! decode per record, and uses the checkpoint only if all of them match and every
//! covered segment except the last is zero after its end, as a full scan demands. The
//! scan then continues where the checkpoint ends. Anything else (no file, a bad CRC,
//! another stride, a digest that differs) and the checkpoint is ignored: the full scan
//! runs and reaches the verdict it would have reached without one, so a checkpoint
//! changes how fast open is, never what it finds. Matching digests prove the bytes
//! unchanged, not that the index describes them, so `checkpoint_walk::check_records` also walks the
//! covered record headers, in every build, before the index is used.
//!
//! The file (`checkpoint.idx`, layout in docs/FORMAT.md) is written at clean close by
//! the commit thread after the seal: to `checkpoint.idx.tmp`, fdatasync, rename,
//! directory fsync. A crash at any point leaves the old checkpoint, the new one, or
//! none, each of them a valid description of a prefix of the log: records are only
//! ever appended after the end a checkpoint covers, and a torn-tail cut only ever
//! happens after acknowledged records.
//!
//! Invariants: a decoded checkpoint satisfies the index's invariants (dense execution
//! numbers, entry points at every `stride`-th sequence, known tenants, unique ids) and
//! every position it holds lies inside the records of a covered segment.

use std::path::{Path, PathBuf};

use crate::checkpoint_directory::{self, Directory, Listed, Opened};
use crate::error::{Error, Result};
use crate::ids::{ExecutionId, MAX_ID_BYTES, TenantId};
use crate::index::{Base, ExecNo, Index, Sparse};
use crate::io::{Io, Mapped};
use crate::record::{self, Pos};
use crate::segment::SEGMENT_HEADER_LEN;
use crate::store_dir;

pub(crate) use crate::checkpoint_encode::encode;

/// First bytes of a checkpoint file.
pub(crate) const MAGIC: [u8; 8] = *b"EXLGCKPT";
/// Version of the checkpoint layout written. Layout 2 is layout 1 followed by the list
/// of deleted executions, which lets an open that verifies the checkpoint only after
/// it returns (`Options::verify_checkpoint_after_open`) know them without the walk.
/// Layout 3 adds the directory that lets such an open find one execution without
/// decoding the others (`checkpoint_directory.rs`).
pub(crate) const CHECKPOINT_VERSION: u32 = checkpoint_directory::LAYOUT_WITH_DIRECTORY;
/// The first layout, which open still reads (without a list of deletions).
const CHECKPOINT_VERSION_1: u32 = 1;
/// Length of the fixed header.
pub(crate) const HEADER_LEN: usize = 40;
/// Bytes of one segment digest.
const DIGEST_LEN: usize = 12;
/// Bytes of one fork's entry: its number, its source's, and the shared length.
const FORK_LEN: usize = 4 + 4 + 8;
/// Fewest bytes one execution takes (no id bytes, no entry point: a fork may have none).
const MIN_EXECUTION_LEN: usize = 4 + 8 + 8 + 4;

/// Where a segment's records end and the CRC-32 of its bytes `[32, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentDigest {
    pub(crate) end: u64,
    pub(crate) crc: u32,
}

impl SegmentDigest {
    /// The digest of a segment that holds no record yet.
    pub(crate) const EMPTY: Self = Self {
        end: SEGMENT_HEADER_LEN as u64,
        crc: 0,
    };

    /// The digest of the segment `bytes`, whose records end at `end`.
    pub(crate) fn of(bytes: &[u8], end: u64) -> Self {
        Self::EMPTY.extend(
            bytes
                .get(SEGMENT_HEADER_LEN..end as usize)
                .unwrap_or_default(),
        )
    }

    /// The digest after `bytes` were written at the current end.
    #[must_use]
    pub(crate) fn extend(self, bytes: &[u8]) -> Self {
        Self {
            end: self.end + bytes.len() as u64,
            crc: record::crc32_extend(self.crc, bytes),
        }
    }
}

/// A decoded checkpoint.
#[derive(Debug)]
pub(crate) struct Checkpoint {
    /// Digests of segments `1..=segments.len()`.
    pub(crate) segments: Vec<SegmentDigest>,
    pub(crate) last_timestamp_ns: i64,
    pub(crate) index: Index,
    /// The executions whose tombstones it covers, increasing (layout 2); `None` for
    /// layout 1, where only the walk over the records finds them.
    pub(crate) deleted: Option<Vec<ExecNo>>,
    /// The file's CRC: which file this is, for a verification after open.
    pub(crate) file_crc: u32,
    /// Its layout version.
    pub(crate) layout: u32,
}

/// Path of the checkpoint in `dir`.
pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join(store_dir::CHECKPOINT)
}

/// Decodes a checkpoint written for an index of `stride`. Any deviation from the
/// format is an error naming it; nothing is allocated beyond what the bytes hold.
pub(crate) fn decode(bytes: &[u8], stride: u32) -> std::result::Result<Checkpoint, String> {
    decode_with(bytes, stride, &mut checkpoint_directory::check)
}

/// What [`decode`] does with a layout 3 file's directory: the bytes before the file's
/// CRC, where the directory starts, the length of the header and digests, and what
/// the executions section lists.
type OnDirectory<'a> =
    dyn FnMut(&[u8], usize, usize, &Listed) -> std::result::Result<(), String> + 'a;

/// Makes a checkpoint changed in place (a test's forgery) consistent again: its
/// directory, trailer and CRC recomputed from the rest, as far as the rest decodes.
#[cfg(any(test, feature = "fault-injection"))]
pub(crate) fn reseal(bytes: &mut [u8]) {
    let fix_crc = |bytes: &mut [u8]| {
        if let Some((body, crc)) = bytes.split_last_chunk_mut::<4>() {
            *crc = record::crc32(body).to_le_bytes();
        }
    };
    fix_crc(bytes);
    let Some(stride) = bytes.get(12..16).and_then(|b| b.try_into().ok()) else {
        return;
    };
    let mut found = None;
    let _ = decode_with(
        bytes,
        u32::from_le_bytes(stride),
        &mut |_, start, prefix, listed| {
            found = Some((start, prefix, listed.clone()));
            Ok(())
        },
    );
    if let Some((start, prefix, listed)) = found {
        let end = bytes.len() - 4;
        checkpoint_directory::rewrite(&mut bytes[..end], start, prefix, &listed);
        fix_crc(bytes);
    }
}

fn decode_with(
    bytes: &[u8],
    stride: u32,
    on_directory: &mut OnDirectory<'_>,
) -> std::result::Result<Checkpoint, String> {
    let Some((body, crc)) = bytes.split_last_chunk::<4>() else {
        return Err("file is too short".into());
    };
    if body.len() < HEADER_LEN || body[..MAGIC.len()] != MAGIC {
        return Err("not a checkpoint (wrong magic or too short)".into());
    }
    if u32::from_le_bytes(*crc) != record::crc32(body) {
        return Err("CRC mismatch".into());
    }
    let mut r = Reader {
        bytes: body,
        at: MAGIC.len(),
    };
    let version = r.u32()?;
    if !(CHECKPOINT_VERSION_1..=CHECKPOINT_VERSION).contains(&version) {
        return Err(format!(
            "format version {version}, expected {CHECKPOINT_VERSION_1} to {CHECKPOINT_VERSION}"
        ));
    }
    let saved_stride = r.u32()?;
    if saved_stride != stride {
        return Err(format!(
            "written for index stride {saved_stride}, opened with {stride}"
        ));
    }
    let last_timestamp_ns = r.u64()? as i64;
    let segment_count = r.count(DIGEST_LEN)?;
    let tenant_count = r.count(4)?;
    let execution_count = r.count(MIN_EXECUTION_LEN)?;
    let fork_count = r.count(FORK_LEN)?;
    let prefix = r.at + segment_count * DIGEST_LEN;
    let segments = decode_digests(r.slice(segment_count * DIGEST_LEN).ok_or("cut short")?)?;
    let mut index = Index::new(stride);
    index.make_room(execution_count);
    for _ in 0..tenant_count {
        index.restore_tenant(TenantId::from(r.id()?))?;
    }
    let mut forks = std::collections::HashMap::with_capacity(fork_count);
    let mut last_fork = None;
    for _ in 0..fork_count {
        let (no, source, at) = (r.u32()?, r.u32()?, r.u64()?);
        if last_fork.is_some_and(|last| no <= last) || no as usize >= execution_count {
            return Err(format!("fork {no} out of order or beyond the executions"));
        }
        // Sequences fit an i64 (the contract's timestamps and PostgreSQL's columns).
        if at == 0 || at > i64::MAX as u64 {
            return Err(format!("fork {no} shares {at} events"));
        }
        last_fork = Some(no);
        forks.insert(no, Base { source, at });
    }
    let inside = |pos: Pos| {
        let end = segments
            .get((pos.segment as usize).wrapping_sub(1))
            .map_or(0, |d| d.end);
        pos.offset as usize >= SEGMENT_HEADER_LEN && u64::from(pos.offset) < end
    };
    let mut listed = Listed {
        starts: Vec::new(),
        hashes: Vec::new(),
        flags: Vec::new(),
    };
    let with_directory = version >= checkpoint_directory::LAYOUT_WITH_DIRECTORY;
    if with_directory {
        listed.starts.reserve(execution_count + 1);
        listed.hashes.reserve(execution_count);
    }
    for no in 0..execution_count as ExecNo {
        if with_directory {
            listed.starts.push(r.at);
        }
        let base = forks.get(&no).copied();
        let tenant = r.u32()?;
        let durable_seq = r.u64()?;
        let durable_pos = r.pos()?;
        let id = ExecutionId::from(r.id()?);
        if durable_seq == 0 {
            return Err(format!("execution {id} has no events"));
        }
        let entries = index.entries_for(durable_seq, base);
        let entries = usize::try_from(entries)
            .ok()
            .and_then(|n| r.slice(n.checked_mul(8)?))
            .ok_or_else(|| format!("execution {id}: more entry points than bytes"))?;
        let (entries, _) = entries.as_chunks::<8>();
        if !inside(durable_pos) || !entries.iter().all(|e| inside(pos_from(e))) {
            return Err(format!(
                "execution {id}: position outside the covered records"
            ));
        }
        if with_directory {
            listed
                .hashes
                .push(checkpoint_directory::id_hash(id.as_str().as_bytes()));
        }
        let sparse = Sparse::from_entries(entries.iter().map(pos_from));
        index.restore_execution(id, tenant, (durable_seq, durable_pos), (sparse, base))?;
    }
    if with_directory {
        listed.starts.push(r.at);
    }
    let deleted = if version == CHECKPOINT_VERSION_1 {
        None
    } else {
        Some(decode_deleted(&mut r, execution_count)?)
    };
    if with_directory {
        listed.flags = (0..execution_count as ExecNo)
            .map(|no| {
                let fork = forks.contains_key(&no);
                let deleted = deleted
                    .as_ref()
                    .is_some_and(|d| d.binary_search(&no).is_ok());
                u32::from(fork) * checkpoint_directory::FORK
                    + u32::from(deleted) * checkpoint_directory::DELETED
            })
            .collect();
        on_directory(body, r.at, prefix, &listed)?;
        r.at = body.len();
    }
    if r.remaining() != 0 {
        return Err(format!("{} bytes after the last section", r.remaining()));
    }
    Ok(Checkpoint {
        segments,
        last_timestamp_ns,
        index,
        deleted,
        file_crc: u32::from_le_bytes(*crc),
        layout: version,
    })
}

/// The segment digests of a checkpoint, `bytes` holding exactly them.
pub(crate) fn decode_digests(bytes: &[u8]) -> std::result::Result<Vec<SegmentDigest>, String> {
    let (digests, rest) = bytes.as_chunks::<DIGEST_LEN>();
    if digests.is_empty() || !rest.is_empty() {
        return Err("covers no segment".into());
    }
    digests
        .iter()
        .map(|d| {
            let (end, crc) = d.split_at(8);
            let d = SegmentDigest {
                end: u64::from_le_bytes(end.try_into().unwrap_or_default()),
                crc: u32::from_le_bytes(crc.try_into().unwrap_or_default()),
            };
            if d.end < SEGMENT_HEADER_LEN as u64
                || d.end > u64::from(u32::MAX)
                || !d.end.is_multiple_of(record::RECORD_ALIGN as u64)
            {
                return Err(format!("segment end {} out of range", d.end));
            }
            Ok(d)
        })
        .collect()
}

/// Layout 2's list of deleted executions: increasing numbers of listed executions.
fn decode_deleted(
    r: &mut Reader<'_>,
    execution_count: usize,
) -> std::result::Result<Vec<ExecNo>, String> {
    let count = r.count(4)?;
    let mut deleted = Vec::with_capacity(count);
    for _ in 0..count {
        let no = r.u32()?;
        if deleted.last().is_some_and(|&last| no <= last) || no as usize >= execution_count {
            return Err(format!("deleted execution {no} out of order or unknown"));
        }
        deleted.push(no);
    }
    Ok(deleted)
}

/// Maps the checkpoint of `dir` for a decode after open (layout 3): `Ok(None)` if there
/// is none, `Err(why)` if there is one that cannot be used that way.
pub(crate) fn load_lazy(
    io: &dyn Io,
    dir: &Path,
    stride: u32,
) -> std::result::Result<Option<Opened>, String> {
    map_file(io, dir)?
        .map(|map| Directory::open(map, stride))
        .transpose()
}

/// Reads and decodes the checkpoint of `dir`: `Ok(None)` if there is none, `Err(why)`
/// if there is one that cannot be used.
pub(crate) fn load(
    io: &dyn Io,
    dir: &Path,
    stride: u32,
) -> std::result::Result<Option<Checkpoint>, String> {
    map_file(io, dir)?
        .map(|map| decode(map.as_ref().as_ref(), stride))
        .transpose()
}

/// The checkpoint file of `dir`, mapped whole; `Ok(None)` if there is none.
fn map_file(io: &dyn Io, dir: &Path) -> std::result::Result<Option<Mapped>, String> {
    let file = match io.open(&path(dir), true) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("open: {e}")),
    };
    let len = file.size().map_err(|e| format!("stat: {e}"))?;
    file.map(len).map(Some).map_err(|e| format!("mmap: {e}"))
}

/// Replaces the checkpoint of `dir` with `bytes`, durably (see the module docs). The
/// new file gets permission bits `mode` (less the umask).
pub(crate) fn write(io: &dyn Io, dir: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = dir.join(store_dir::CHECKPOINT_TMP);
    // Left over from a close that failed or crashed half way; never read.
    let _ = io.remove(&tmp);
    let file = io
        .create(&tmp, mode)
        .map_err(|e| Error::io("create checkpoint", &tmp, e))?;
    file.write_at(bytes, 0)
        .map_err(|e| Error::io("write checkpoint", &tmp, e))?;
    file.sync_data()
        .map_err(|e| Error::io("fdatasync checkpoint", &tmp, e))?;
    let path = path(dir);
    io.rename(&tmp, &path)
        .map_err(|e| Error::io("rename checkpoint", &path, e))?;
    io.sync_dir(dir)
        .map_err(|e| Error::io("fsync directory", dir, e))?;
    crate::refuted_marker::remove(io, dir);
    Ok(())
}

/// The position encoded in the 8 bytes of `entry` (segment, offset; little-endian).
fn pos_from(entry: &[u8; 8]) -> Pos {
    let [s0, s1, s2, s3, o0, o1, o2, o3] = *entry;
    Pos {
        segment: u32::from_le_bytes([s0, s1, s2, s3]),
        offset: u32::from_le_bytes([o0, o1, o2, o3]),
    }
}

/// A cursor over a checkpoint's bytes; every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        let b = self
            .bytes
            .get(self.at..)
            .and_then(|rest| rest.first_chunk::<N>())
            .ok_or_else(|| format!("cut short at byte {}", self.at))?;
        self.at += N;
        Ok(*b)
    }

    /// The next `len` bytes, if there are as many.
    fn slice(&mut self, len: usize) -> Option<&'a [u8]> {
        let bytes: &'a [u8] = self.bytes.get(self.at..self.at.checked_add(len)?)?;
        self.at += len;
        Some(bytes)
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        self.take().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        self.take().map(u64::from_le_bytes)
    }

    fn pos(&mut self) -> std::result::Result<Pos, String> {
        Ok(Pos {
            segment: self.u32()?,
            offset: self.u32()?,
        })
    }

    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.at)
    }

    /// A count of items of at least `min_len` bytes each, checked against what is left.
    fn count(&mut self, min_len: usize) -> std::result::Result<usize, String> {
        let n = self.u32()? as usize;
        if n > self.remaining() / min_len {
            return Err(format!("count {n} exceeds the file at byte {}", self.at));
        }
        Ok(n)
    }

    /// A length-prefixed id: valid UTF-8, 1 to [`MAX_ID_BYTES`] bytes, borrowed from
    /// the file (the caller copies it once, into the id it keeps).
    fn id(&mut self) -> std::result::Result<&'a str, String> {
        let len = self.u32()? as usize;
        if len == 0 || len > MAX_ID_BYTES {
            return Err(format!("id length {len} at byte {}", self.at));
        }
        let bytes: &'a [u8] = self
            .bytes
            .get(self.at..self.at + len)
            .ok_or_else(|| format!("id cut short at byte {}", self.at))?;
        self.at += len;
        std::str::from_utf8(bytes).map_err(|_| format!("id is not UTF-8 at byte {}", self.at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(segment: u32, offset: u32) -> Pos {
        Pos { segment, offset }
    }

    fn sample() -> (Index, Vec<SegmentDigest>) {
        let mut index = Index::new(4);
        let a = index.create(
            ExecutionId::from("run-a"),
            &TenantId::from("acme"),
            pos(1, 32),
        );
        index.make_durable(a, 1, pos(1, 32));
        for (seq, offset) in (2..=9).zip((96..).step_by(64)) {
            index.reserve(a, seq, pos(1, offset));
            index.make_durable(a, seq, pos(1, offset));
        }
        let b = index.create(
            ExecutionId::from("run-b"),
            &TenantId::from("beta"),
            pos(2, 32),
        );
        index.make_durable(b, 1, pos(2, 32));
        let segments = vec![
            SegmentDigest { end: 4096, crc: 7 },
            SegmentDigest { end: 96, crc: 9 },
        ];
        (index, segments)
    }

    #[test]
    fn an_index_round_trips() {
        let (index, segments) = sample();
        let bytes = encode(&index, &segments, 42).expect("encodes");
        let c = decode(&bytes, 4).expect("decodes");
        assert_eq!(c.index, index);
        assert_eq!(c.segments, segments);
        assert_eq!(c.last_timestamp_ns, 42);
        assert!(decode(&bytes, 8).is_err(), "another stride");
    }

    #[test]
    fn what_is_only_reserved_is_left_out() {
        let (quiet, segments) = sample();
        let (mut busy, _) = sample();
        // Events of `run-a` past an entry point, a new tenant's execution, and a fork,
        // all reserved and not durable: a checkpoint taken now must not hold them.
        for (seq, offset) in (10..=14).zip((2000..).step_by(64)) {
            busy.reserve(0, seq, pos(1, offset));
        }
        busy.create(
            ExecutionId::from("run-c"),
            &TenantId::from("gamma"),
            pos(2, 96),
        );
        busy.create_fork(
            ExecutionId::from("run-d"),
            Base { source: 0, at: 3 },
            pos(1, 160),
        );
        busy.mark_deleting(1);
        assert_eq!(
            encode(&busy, &segments, 42).expect("encodes"),
            encode(&quiet, &segments, 42).expect("encodes")
        );
        // Durable in part: the entry point of sequence 13 is not, 9's is.
        busy.make_durable(0, 12, pos(1, 2128));
        let c = decode(&encode(&busy, &segments, 42).expect("encodes"), 4).expect("decodes");
        let a = c.index.get(0).expect("run-a");
        assert_eq!((a.durable_seq, a.sparse().len()), (12, 3));
        assert_eq!(c.index.len(), 2);
    }

    #[test]
    fn every_cut_and_every_flipped_bit_is_refused() {
        let (index, segments) = sample();
        let bytes = encode(&index, &segments, 42).expect("encodes");
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len], 4).is_err(), "cut at {len}");
        }
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(decode(&b, 4).is_err(), "bit {i}");
        }
    }

    /// Damage behind a valid CRC (a bug, or a forged file): every field is checked.
    #[test]
    fn forged_fields_with_a_valid_crc_are_refused() {
        let (index, segments) = sample();
        let good = encode(&index, &segments, 42).expect("encodes");
        let body_len = good.len() - 4;
        let mut refused = 0;
        for i in 8..body_len {
            for value in [0u8, 1, 0x7f, 0xff] {
                let mut b = good.clone();
                if b[i] == value {
                    continue;
                }
                b[i] = value;
                let crc = record::crc32(&b[..body_len]);
                b[body_len..].copy_from_slice(&crc.to_le_bytes());
                // Must never panic or allocate absurdly; most changes are refused.
                if decode(&b, 4).is_err() {
                    refused += 1;
                }
            }
        }
        assert!(refused > body_len, "only {refused} forgeries refused");
    }

    /// Found by the fuzz smoke (`fuzz/seeds/decode_record/crash-fork-table-at-u64-max`):
    /// a fork table entry sharing u64::MAX events overflowed the entry count (a panic in
    /// debug builds). Refused now, as is a fork sharing no event.
    #[test]
    fn a_fork_table_sharing_impossible_counts_is_refused() {
        let crash = include_bytes!("../fuzz/seeds/decode_record/crash-fork-table-at-u64-max");
        for at in [u64::MAX, 0] {
            let mut b = crash.to_vec();
            // The fork table follows the tenants: u32 number, u32 source, then `at`.
            b[0x54..0x5c].copy_from_slice(&at.to_le_bytes());
            b.extend_from_slice(&record::crc32(&b).to_le_bytes());
            let refused = decode(&b, 16).expect_err("an impossible fork table");
            assert!(refused.contains("shares"), "{refused}");
        }
    }
}
