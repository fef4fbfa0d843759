//! Forged index checkpoints: `checkpoint.idx` edited and its CRC recomputed, the
//! segments untouched (so every segment digest still matches). Whatever the file says,
//! open must ignore it and report why, in every build, and answer exactly as a full
//! scan does: no event served under another execution or tenant, no append accepted
//! for the wrong tenant, no acknowledged event hidden, no huge allocation.
//!
//! Regression guarded: trusting a checkpoint because its digests match. The digests
//! prove the bytes unchanged, not that the index describes them.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;

use common::step_event;
use execlog::*;

const CHECKPOINT: &str = "checkpoint.idx";

/// A checkpoint as FORMAT.md lays it out, decoded far enough to edit executions.
struct Forgery {
    /// Magic .. the digests and tenants, unchanged.
    prefix: Vec<u8>,
    executions: Vec<Exec>,
    /// Layout 2's list of deleted executions, unchanged.
    suffix: Vec<u8>,
}

struct Exec {
    tenant: u32,
    durable_seq: u64,
    durable_pos: [u8; 8],
    id: String,
    entries: Vec<[u8; 8]>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

impl Forgery {
    fn read(dir: &Path) -> Forgery {
        let bytes = fs::read(dir.join(CHECKPOINT)).unwrap();
        let stride = u64::from(u32_at(&bytes, 12));
        let (segments, tenants, executions) = (
            u32_at(&bytes, 24) as usize,
            u32_at(&bytes, 28),
            u32_at(&bytes, 32),
        );
        let mut at = 40 + 12 * segments;
        for _ in 0..tenants {
            at += 4 + u32_at(&bytes, at) as usize;
        }
        let prefix = bytes[..at].to_vec();
        let mut execs = Vec::new();
        for _ in 0..executions {
            let tenant = u32_at(&bytes, at);
            let durable_seq = u64_at(&bytes, at + 4);
            let durable_pos = bytes[at + 12..at + 20].try_into().unwrap();
            let len = u32_at(&bytes, at + 20) as usize;
            let id = String::from_utf8(bytes[at + 24..at + 24 + len].to_vec()).unwrap();
            at += 24 + len;
            let n = (durable_seq - 1) / stride + 1;
            let entries = (0..n)
                .map(|k| {
                    bytes[at + 8 * k as usize..at + 8 * k as usize + 8]
                        .try_into()
                        .unwrap()
                })
                .collect();
            at += 8 * n as usize;
            execs.push(Exec {
                tenant,
                durable_seq,
                durable_pos,
                id,
                entries,
            });
        }
        // Layout 3 ends with the deleted executions (a count, then their numbers), the
        // directory (28 bytes per execution) and its trailer (12 bytes).
        assert_eq!(u32_at(&bytes, 8), 3, "checkpoint layout");
        let deleted = u32_at(&bytes, at) as usize;
        let suffix = bytes[at..at + 4 + 4 * deleted].to_vec();
        assert_eq!(
            at + suffix.len() + 28 * execs.len() + 12 + 4,
            bytes.len(),
            "the test parses the whole checkpoint"
        );
        Forgery {
            prefix,
            executions: execs,
            suffix,
        }
    }

    fn exec(&mut self, id: &str) -> &mut Exec {
        self.executions.iter_mut().find(|e| e.id == id).unwrap()
    }

    /// Writes the edited checkpoint with a CRC that matches it.
    fn write(&self, dir: &Path) {
        let mut out = self.prefix.clone();
        for e in &self.executions {
            out.extend(e.tenant.to_le_bytes());
            out.extend(e.durable_seq.to_le_bytes());
            out.extend(e.durable_pos);
            out.extend((e.id.len() as u32).to_le_bytes());
            out.extend(e.id.as_bytes());
            for entry in &e.entries {
                out.extend(entry);
            }
        }
        out.extend(&self.suffix);
        // The directory and its trailer made to match (with the engine's code: a
        // forger who knows the format), then the CRC.
        out.resize(out.len() + 28 * self.executions.len() + 12 + 4, 0);
        execlog::forgery::reseal_checkpoint(&mut out);
        let body = out.len() - 4;
        assert_eq!(crc32(&out[..body]).to_le_bytes(), out[body..], "resealed");
        fs::write(dir.join(CHECKPOINT), out).unwrap();
    }
}

/// CRC-32 (IEEE), bit by bit: the test does not borrow the engine's.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn tenant(n: u32) -> TenantId {
    TenantId::from(format!("tenant-{n}"))
}

/// Two tenants, executions `run-a` (tenant 0, 10 events), `run-b` (tenant 1, 7
/// events) and `run-c` (tenant 0, 3 events), closed cleanly: a checkpoint is written.
fn store(stride: u32) -> (tempfile::TempDir, Options) {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .segment_size_bytes(64 * 1024)
        .index_stride(stride);
    let s = LogStore::open_with(dir.path(), options.clone()).unwrap();
    for (id, t, n) in [("run-a", 0, 10u64), ("run-b", 1, 7), ("run-c", 0, 3)] {
        for i in 0..n {
            s.append_blocking(&ExecutionId::from(id), &tenant(t), step_event(i))
                .unwrap();
        }
    }
    s.close().unwrap();
    assert!(dir.path().join(CHECKPOINT).exists());
    (dir, options)
}

/// Everything the store answers about the three executions and two tenants.
fn answers(s: &LogStore) -> String {
    let mut out = String::new();
    for t in 0..2 {
        let ids = s.list_executions_blocking(&tenant(t), 100, 0).unwrap();
        out += &format!("{t}: {ids:?}\n");
    }
    for id in ["run-a", "run-b", "run-c"] {
        let events = s.load_events_blocking(&ExecutionId::from(id)).unwrap();
        out += &serde_json::to_string(&events).unwrap();
        out += "\n";
    }
    out
}

/// Opens the forged store: the checkpoint must be ignored, with a reason, and the
/// answers must be those of a full scan.
fn assert_forgery_ignored(dir: &Path, options: &Options) -> LogStore {
    let truth = {
        let s = LogStore::open_with(dir, options.clone().index_checkpoint(false)).unwrap();
        answers(&s)
    };
    let s = LogStore::open_with(dir, options.clone()).unwrap();
    let report = s.recovery_report();
    assert!(
        report.checkpoint_ignored.is_some() && report.checkpoint_bytes == 0,
        "forged checkpoint used: {report:?}"
    );
    assert_eq!(answers(&s), truth);
    s
}

#[test]
fn an_execution_moved_to_another_tenant_is_refused() {
    let (dir, options) = store(4);
    let mut f = Forgery::read(dir.path());
    f.exec("run-a").tenant = 1;
    f.write(dir.path());
    let s = assert_forgery_ignored(dir.path(), &options);
    let wrong = s.append_blocking(&ExecutionId::from("run-a"), &tenant(1), step_event(99));
    assert!(
        matches!(wrong, Err(Error::TenantMismatch { .. })),
        "cross-tenant append: {wrong:?}"
    );
}

#[test]
fn swapped_execution_ids_are_refused() {
    let (dir, options) = store(4);
    let mut f = Forgery::read(dir.path());
    f.exec("run-a").id = "run-x".into();
    f.exec("run-b").id = "run-a".into();
    f.exec("run-x").id = "run-b".into();
    f.write(dir.path());
    assert_forgery_ignored(dir.path(), &options);
}

#[test]
fn a_lowered_durable_sequence_is_refused() {
    // Only the count lowered: the cursor still points at sequence 10's record.
    let (dir, options) = store(16);
    let mut f = Forgery::read(dir.path());
    f.exec("run-a").durable_seq = 9;
    f.write(dir.path());
    assert_forgery_ignored(dir.path(), &options);

    // Count and cursor lowered consistently (stride 1 gives every position away).
    let (dir, options) = store(1);
    let mut f = Forgery::read(dir.path());
    let e = f.exec("run-a");
    e.durable_seq = 9;
    e.entries.pop();
    e.durable_pos = *e.entries.last().unwrap();
    f.write(dir.path());
    let s = assert_forgery_ignored(dir.path(), &options);
    let next = s
        .append_blocking(&ExecutionId::from("run-a"), &tenant(0), step_event(10))
        .unwrap();
    assert_eq!(next, 11, "an acknowledged sequence was handed out again");
}

#[test]
fn a_huge_durable_sequence_is_refused_without_allocating_for_it() {
    let stride = u32::MAX;
    let (dir, options) = store(stride);
    let mut f = Forgery::read(dir.path());
    let e = f.exec("run-b");
    e.durable_seq = 1 << 40;
    let entries = ((1u64 << 40) - 1) / u64::from(stride) + 1;
    let first = e.entries[0];
    e.entries.resize(entries as usize, first);
    f.write(dir.path());
    assert_forgery_ignored(dir.path(), &options);
}

#[test]
fn an_unaligned_covered_end_is_refused() {
    let (dir, options) = store(4);
    let mut f = Forgery::read(dir.path());
    // The first digest's end (offset 40), moved off the 8-byte record grid.
    let end = u64_at(&f.prefix, 40) - 4;
    let segment = fs::read(dir.path().join("0000000001.seg")).unwrap();
    f.prefix[40..48].copy_from_slice(&end.to_le_bytes());
    // The digest made to match the moved end: only the alignment is wrong.
    f.prefix[48..52].copy_from_slice(&crc32(&segment[32..end as usize]).to_le_bytes());
    f.write(dir.path());
    assert_forgery_ignored(dir.path(), &options);
}

/// A forged saved timestamp far in the future (no record is younger than it): every
/// later append would be stamped in 2262. The saved timestamp must be the newest
/// record's.
#[test]
fn a_forged_last_timestamp_is_refused() {
    let (dir, options) = store(4);
    let mut f = Forgery::read(dir.path());
    f.prefix[16..24].copy_from_slice(&(i64::MAX - 1).to_le_bytes());
    f.write(dir.path());
    let s = assert_forgery_ignored(dir.path(), &options);
    s.append_blocking(&ExecutionId::from("run-c"), &tenant(0), step_event(9))
        .unwrap();
    let events = s.load_events_blocking(&ExecutionId::from("run-c")).unwrap();
    let stamped = events.last().unwrap().timestamp;
    assert!(stamped.timestamp() < 4_000_000_000, "stamped {stamped}");
}

/// `store`, then `run-b` deleted and the store closed again: the checkpoint lists it.
fn store_with_deletion() -> (tempfile::TempDir, Options) {
    let (dir, options) = store(4);
    let s = LogStore::open_with(dir.path(), options.clone()).unwrap();
    assert!(
        s.delete_execution_blocking(&ExecutionId::from("run-b"))
            .unwrap()
    );
    s.close().unwrap();
    (dir, options)
}

#[test]
fn a_deleted_execution_left_off_the_list_is_refused() {
    let (dir, options) = store_with_deletion();
    let mut f = Forgery::read(dir.path());
    assert_eq!(
        f.suffix,
        [1, 0, 0, 0, 1, 0, 0, 0],
        "run-b (number 1) listed"
    );
    f.suffix = 0u32.to_le_bytes().to_vec();
    f.write(dir.path());
    let s = assert_forgery_ignored(dir.path(), &options);
    assert!(
        s.load_events_blocking(&ExecutionId::from("run-b"))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_live_execution_listed_as_deleted_is_refused() {
    let (dir, options) = store(4);
    let mut f = Forgery::read(dir.path());
    assert_eq!(f.suffix, [0, 0, 0, 0], "nothing deleted");
    f.suffix = [1u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
    f.write(dir.path());
    let s = assert_forgery_ignored(dir.path(), &options);
    assert_eq!(
        s.load_events_blocking(&ExecutionId::from("run-a"))
            .unwrap()
            .len(),
        10
    );
}
