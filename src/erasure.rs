//! Physical erasure: removing deleted executions' event bytes from the segment files
//! and giving their space back ([`LogStore::compact_now`], `execlog compact`, and the
//! background `execlog-erasure` thread every [`Options::erasure_interval`]).
//!
//! A deletion (`deletion.rs`) only hides an execution; its records stay in the log.
//! Erasure rewrites each sealed segment that holds such records: the same bytes at the
//! same offsets, except that every dead record becomes an *erased* record (kind 5) of
//! the same length, with the same header fields (so every chain, batch and commit group
//! reads as before) and a body holding only what identifies the execution (the
//! declaration in its first record: ids stay reserved, FORMAT.md "Erased record"),
//! zeros elsewhere. The new image goes to `<segment>.compact`, written sparsely (pages
//! of zeros are left as holes, which is where the space comes back), fdatasynced, then
//! renamed over the segment, and the directory fsynced. A crash leaves the old file or
//! the new one, each a valid segment with every live record unchanged. Positions,
//! sequences and live events never change, so reads, subscriptions and recovery are
//! unaffected; a reader holding the old file's map keeps reading the old inode until it
//! lets go.
//!
//! Dead records are events of executions whose deletion is durable, except the first
//! `at` events of a source a fork that is not deleted still shares. Only sealed
//! segments are rewritten, and only once every record queued for them is durable (the
//! pass waits for the last record queued: `Writer::last_ticket`); an active segment
//! holding dead records is first sealed by a roll (a seal record that opens the next
//! segment). A segment with a known damaged
//! range, or in which any record fails its check, is left alone: erasure never
//! re-stamps damaged bytes with a valid CRC.
//!
//! [`Options::erasure_interval`]: crate::Options::erasure_interval

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::codec;
use crate::error::{Error, Result};
use crate::index::{ExecNo, Index, Life};
use crate::log_store::LogStore;
use crate::queue::{NO_EXECUTION, Pending, Ticket};
use crate::record::{self, Decoded, Header, Kind, Pos};
use crate::segment::{self, SEGMENT_HEADER_LEN};
use crate::state::Shared;
use crate::store_dir;

/// Pages of this size that are all zeros are not written (left as holes).
const PAGE: usize = 4096;

/// What one erasure pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactReport {
    /// Segment files rewritten.
    pub segments_rewritten: u32,
    /// Records erased.
    pub records_erased: u64,
    /// Bytes of the erased records (headers included) whose content is gone.
    pub bytes_erased: u64,
    /// Bytes written into the rewritten segments (holes not counted).
    pub bytes_written: u64,
}

/// Which records are dead, as the index says when the pass starts. Deletions are
/// final, so a plan never calls a live record dead; a fork deleted after it was made
/// only keeps some dead records for a later pass.
struct Plan {
    deleted: Vec<bool>,
    /// Per source: how many of its first events a fork that is not deleted reads.
    kept: HashMap<ExecNo, u64>,
}

impl Plan {
    fn of(index: &Index) -> Plan {
        let deleted = index
            .executions()
            .iter()
            .map(|e| e.life == Life::Deleted)
            .collect();
        let mut kept: HashMap<ExecNo, u64> = HashMap::new();
        for (&fork, base) in index.forks() {
            if index.get(fork).is_none_or(|e| e.life == Life::Deleted) {
                continue;
            }
            let (mut source, mut at) = (base.source, base.at);
            loop {
                let k = kept.entry(source).or_default();
                *k = (*k).max(at);
                match index.base(source) {
                    Some(b) => (source, at) = (b.source, at.min(b.at)),
                    None => break,
                }
            }
        }
        Plan { deleted, kept }
    }

    /// Whether the dead records of `h`'s execution may be merged into spans: no fork
    /// reads any of its events (a fork's read may walk its links).
    fn spannable(&self, h: &Header) -> bool {
        !self.kept.contains_key(&(h.execution as ExecNo))
    }

    fn dead(&self, h: &Header) -> bool {
        let Ok(no) = usize::try_from(h.execution) else {
            return false;
        };
        h.kind == Kind::Event
            && self.deleted.get(no) == Some(&true)
            && h.sequence > self.kept.get(&(no as ExecNo)).copied().unwrap_or(0)
    }
}

/// The segments that may hold records of deleted executions: those an execution's
/// own records span, from its first to its durable end.
pub(crate) fn segments_of(index: &Index, no: ExecNo) -> std::ops::Range<u32> {
    let own = index
        .get(no)
        .and_then(|e| Some((e.sparse().get(0)?, e.durable_pos)));
    own.map_or(0..0, |(first, last)| {
        first.segment..last.segment.saturating_add(1)
    })
}

/// Every segment that may hold dead records of `index` (at open).
pub(crate) fn all_erasable(index: &Index) -> BTreeSet<u32> {
    let mut set = BTreeSet::new();
    for (no, e) in (0..).zip(index.executions()) {
        if e.life == Life::Deleted {
            set.extend(segments_of(index, no));
        }
    }
    set
}

/// An erased span as written: the executions's number, its first and last sequence,
/// and where the span starts (what the index's entry points for the sequences before
/// the last move to).
pub(crate) struct Span {
    pub(crate) execution: ExecNo,
    pub(crate) first: u64,
    pub(crate) last: u64,
    pub(crate) pos: Pos,
}

/// Bytes before the prefix in an erased span's body: last sequence, last position.
const SPAN_FIELDS: usize = 16;

/// Decodes an erased span's body: its last sequence, the position of its last record
/// as it was, and the rest (the record prefix, then zeros).
/// `pos` is where the span itself starts: the last record it names must have begun
/// inside the span's bytes (the index's durable cursor and the erasable segments are
/// derived from that position, and a later record's `prev` is checked against it).
pub(crate) fn decode_span<'a>(
    header: &Header,
    pos: Pos,
    body: &'a [u8],
) -> std::result::Result<(u64, Pos, &'a [u8]), String> {
    let (fields, rest) = body
        .split_first_chunk::<SPAN_FIELDS>()
        .ok_or("erased span too short")?;
    let last = u64::from_le_bytes(fields[..8].try_into().unwrap_or_default());
    let last_pos = Pos::unpack(u64::from_le_bytes(
        fields[8..].try_into().unwrap_or_default(),
    ))
    .ok_or("erased span without its last position")?;
    let span_end = u64::from(pos.offset) + record::framed_len(body.len()) as u64;
    if last_pos.segment != pos.segment
        || last_pos.offset <= pos.offset
        || u64::from(last_pos.offset) + record::framed_len(1) as u64 > span_end
        || !last_pos.offset.is_multiple_of(8)
    {
        return Err("erased span names a last position outside its bytes".into());
    }
    if last <= header.sequence {
        return Err("erased span covers fewer than two events".into());
    }
    // Each event it replaced took at least the smallest framed record: a forged last
    // sequence cannot make replay loop beyond the span's bytes.
    let most = (record::HEADER_LEN + body.len()) / record::framed_len(1);
    if last - header.sequence >= most as u64 {
        return Err("erased span claims more events than its bytes held".into());
    }
    Ok((last, last_pos, rest))
}

/// One record of a segment, decoded and checked.
struct Found<'a> {
    at: usize,
    header: Header,
    body: &'a [u8],
    len: usize,
}

/// Every record of a segment's bytes `[0, end)`; any that fails its check is an error.
fn records(id: u32, bytes: &[u8]) -> Result<Vec<Found<'_>>> {
    let mut found = Vec::new();
    let mut at = SEGMENT_HEADER_LEN;
    while at < bytes.len() {
        let corrupt = |why: String| Error::corrupt(id, at as u64, why);
        match record::decode(&bytes[at..]) {
            Decoded::Record {
                header,
                body,
                framed_len,
            } => found.push(Found {
                at,
                header,
                body,
                len: framed_len,
            }),
            Decoded::Empty => return Err(corrupt("no record below the durable end".into())),
            Decoded::Invalid(why) => return Err(corrupt(why.to_string())),
        }
        at += found.last().map_or(0, |f| f.len);
    }
    Ok(found)
}

/// The erased image of a segment's records `[0, end)` and the spans in it, or `None`
/// if no record is dead. Consecutive dead records of an execution no fork reads (in
/// one commit group) become one span, so that their pages can become holes; others
/// are erased one by one, keeping their places in the chain.
fn erase(
    id: u32,
    bytes: &[u8],
    plan: &Plan,
    report: &mut CompactReport,
) -> Result<Option<(Vec<u8>, Vec<Span>)>> {
    let found = records(id, bytes)?;
    let mut image: Option<Vec<u8>> = None;
    let mut spans = Vec::new();
    let mut i = 0;
    while i < found.len() {
        let first = &found[i];
        if !plan.dead(&first.header) {
            i += 1;
            continue;
        }
        let mut j = i;
        if plan.spannable(&first.header) && starts_batch(&found, i) {
            while found.get(j + 1).is_some_and(|next| {
                plan.dead(&next.header)
                    && next.header.execution == first.header.execution
                    && next.header.group_start == first.header.group_start
            }) {
                j += 1;
            }
            // A span stands for whole batches (docs/FORMAT.md): a record erased by an
            // earlier pass can end the dead run inside a batch.
            while j > i && found[j].header.batch_remaining != 0 {
                j -= 1;
            }
        }
        let last = &found[j];
        let end = last.at + last.len;
        let corrupt = |why: String| Error::corrupt(id, first.at as u64, why);
        let (prefix, _) = codec::split_body(first.body).map_err(corrupt)?;
        let mut body = Vec::with_capacity(end - first.at);
        let mut header = Header {
            kind: Kind::Erased,
            ..first.header
        };
        if j > i {
            header.kind = Kind::ErasedSpan;
            header.batch_remaining = last.header.batch_remaining;
            body.extend_from_slice(&last.header.sequence.to_le_bytes());
            let last_pos = Pos {
                segment: id,
                offset: last.at as u32,
            };
            body.extend_from_slice(&last_pos.pack().to_le_bytes());
            spans.push(Span {
                execution: first.header.execution as ExecNo,
                first: first.header.sequence,
                last: last.header.sequence,
                pos: Pos {
                    segment: id,
                    offset: first.at as u32,
                },
            });
        }
        codec::encode_declaration(prefix.declaration.as_ref(), &mut body);
        let body_len = if j > i {
            end - first.at - record::HEADER_LEN
        } else {
            first.body.len()
        };
        body.resize(body_len, 0);
        let mut record = Vec::with_capacity(end - first.at);
        record::encode(&header, &[&body], &mut record);
        debug_assert_eq!(record.len(), end - first.at);
        let image = image.get_or_insert_with(|| {
            // Rewritten as this version's segment: an older build refuses it
            // (UnsupportedFormat) rather than taking erased records for damage.
            let mut image = bytes.to_vec();
            image[..SEGMENT_HEADER_LEN].copy_from_slice(&segment::encode_header(id));
            image
        });
        image[first.at..end].copy_from_slice(&record);
        report.records_erased += (j - i + 1) as u64;
        report.bytes_erased += (end - first.at) as u64;
        i = j + 1;
    }
    Ok(image.map(|image| (image, spans)))
}

/// Whether `found[i]` is the first record of its batch: batches are consecutive
/// records of one commit group, so the record before it ended a batch (or it is the
/// segment's first).
fn starts_batch(found: &[Found], i: usize) -> bool {
    i.checked_sub(1)
        .and_then(|before| found.get(before))
        .is_none_or(|before| before.header.batch_remaining == 0)
}

/// Writes `image` as segment `id`'s new file (sparse, durable) and renames it over the
/// segment; returns the bytes written.
fn replace(shared: &Shared, id: u32, image: &[u8]) -> Result<(Arc<dyn crate::io::IoFile>, u64)> {
    let io = shared.io.as_ref();
    let path = store_dir::segment_path(&shared.dir, id);
    let tmp = store_dir::compact_path(&shared.dir, id);
    // Left over from an erasure a crash interrupted; never read.
    let _ = io.remove(&tmp);
    let file = io
        .create(&tmp, shared.options.file_mode())
        .map_err(|e| Error::io("create erased segment", &tmp, e))?;
    let mut written = 0;
    for (i, page) in image.chunks(PAGE).enumerate() {
        let last = (i + 1) * PAGE >= image.len();
        if last || page.iter().any(|&b| b != 0) {
            file.write_at(page, (i * PAGE) as u64)
                .map_err(|e| Error::io("write erased segment", &tmp, e))?;
            written += page.len() as u64;
        }
    }
    file.sync_data()
        .map_err(|e| Error::io("fdatasync erased segment", &tmp, e))?;
    // Its sidecar describes the records this file replaces: gone first, durably.
    crate::sidecar::remove_durably(io, &shared.dir, id)?;
    io.rename(&tmp, &path)
        .map_err(|e| Error::io("rename erased segment", &path, e))?;
    io.sync_dir(&shared.dir)
        .map_err(|e| Error::io("fsync directory", &shared.dir, e))?;
    Ok((file, written))
}

/// Seals the active segment `id` if it still is the active one: queues a seal record
/// that opens the next segment, so `id` takes no more records. Returns its ticket.
fn roll(shared: &Shared, id: u32) -> Result<Option<Ticket>> {
    let admitted = shared.queue_bound.admit_blocking(record::framed_len(8));
    let mut state = shared.state.lock();
    let writer = &mut state.writer;
    writer.check_open()?;
    if writer.segment != id {
        return Ok(None);
    }
    writer.capacity = writer.tail;
    let reservation = writer.reserve(
        record::framed_len(8) as u64,
        shared.options.segment_size_bytes,
    );
    let mut bytes = Vec::new();
    let timestamp_ns = writer.next_timestamp_ns();
    record::encode_seal(reservation.offset, timestamp_ns, &mut bytes);
    let ticket = Ticket::default();
    let pending = Pending {
        segment: reservation.segment,
        offset: reservation.offset,
        new_segment_capacity: reservation.new_segment_capacity,
        bytes,
        execution: NO_EXECUTION,
        last_sequence: 0,
        last_pos: Pos {
            segment: reservation.segment,
            offset: reservation.offset,
        },
        deletes: Vec::new(),
        timestamp_ns,
        ticket: ticket.clone(),
        admitted,
    };
    writer.send(pending, &shared.queue_bound)?;
    Ok(Some(ticket))
}

/// One erasure pass over the segments that may hold dead records.
pub(crate) fn compact(shared: &Shared) -> Result<CompactReport> {
    // The digests of a checkpoint open trusted are checked against the segments as
    // they were: none is rewritten before the verdict.
    shared.verification.wait_verified()?;
    // One pass at a time (the background thread and `compact_now` may race).
    let _pass = shared.erasing.lock();
    let mut report = CompactReport::default();
    if shared.closed.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(Error::Closed);
    }
    // Taken with the plan, under the store lock: a deletion published after the plan
    // adds its segments anew, for the next pass.
    let (plan, candidates, active) = {
        let state = shared.state.lock();
        let candidates = std::mem::take(&mut *shared.erasable.lock());
        (Plan::of(&state.index), candidates, state.writer.segment)
    };
    if candidates.is_empty() {
        return Ok(report);
    }
    let mut done = BTreeSet::new();
    let result = pass(shared, (&plan, &candidates, active), &mut done, &mut report);
    if report.segments_rewritten > 0 {
        // The checkpoint's digests of those segments no longer match.
        shared.checkpoints.segments_rewritten();
    }
    // What this pass did not finish stays to do.
    shared
        .erasable
        .lock()
        .extend(candidates.difference(&done).copied());
    result.map(|()| report)
}

/// The body of [`compact`]: rewrites the candidates it can, adding each to `done`.
fn pass(
    shared: &Shared,
    (plan, candidates, active): (&Plan, &BTreeSet<u32>, u32),
    done: &mut BTreeSet<u32>,
    report: &mut CompactReport,
) -> Result<()> {
    if candidates.contains(&active)
        && let Some(ticket) = roll(shared, active)?
    {
        ticket.wait()?;
    }
    // A segment is final only once every record queued for it is durable: the writer
    // may have moved on to a later segment while records reserved in an earlier one are
    // still on their way to the commit thread, which would write them into the old
    // file after a rename. Wait for the last record queued so far, then rewrite only
    // segments before the one being written.
    let (writing, barrier) = {
        let state = shared.state.lock();
        (state.writer.segment, state.writer.last_ticket.clone())
    };
    if let Some(barrier) = barrier {
        barrier.settle_blocking();
    }
    if let Some(poison) = &shared.state.lock().writer.poisoned {
        return Err(poison.error());
    }
    for &id in candidates.iter().filter(|&&id| id < writing) {
        if shared.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        rewrite(shared, id, plan, report)?;
        done.insert(id);
    }
    Ok(())
}

/// Erases segment `id` (sealed, final) by `plan`, if it holds dead records.
fn rewrite(shared: &Shared, id: u32, plan: &Plan, report: &mut CompactReport) -> Result<()> {
    let end = shared.segments.durable_end(id);
    shared.scrub.refuse(id, SEGMENT_HEADER_LEN as u64, end)?;
    let view = shared.segments.view(id, end)?;
    let bytes = view
        .as_ref()
        .as_ref()
        .get(..end as usize)
        .unwrap_or_default();
    let Some((image, spans)) = erase(id, bytes, plan, report)? else {
        return Ok(());
    };
    // Every build reads the new image back before it replaces anything: a record the
    // readers would refuse must fail this pass, not the next open.
    records(id, &image).map_err(|e| {
        Error::Internal(format!(
            "erasure built an image of segment {id} that does not read back, so the \
             segment was left as it was: {e}"
        ))
    })?;
    forget_checkpoint(shared)?;
    let (file, written) = replace(shared, id, &image)?;
    shared.segments.replace(id, file);
    // The index's entry points into a span now point at its start, as a scan of the
    // new file finds them (and a checkpoint's walk checks them).
    let mut state = shared.state.lock();
    for span in spans {
        state
            .index
            .relocate(span.execution, (span.first, span.last), span.pos);
    }
    report.segments_rewritten += 1;
    report.bytes_written += written;
    Ok(())
}

/// Removes `checkpoint.idx`, durably, before a segment it covers is rewritten: its
/// digest of that segment no longer matches, and a crash before the next checkpoint
/// would otherwise leave it to an open that trusts it (`verify_checkpoint_after_open`),
/// whose verdict would refute it and poison a store nothing is wrong with. The next
/// checkpoint (requested once the pass ends, or at close) replaces it; meanwhile an
/// open after a crash scans the records. The checkpoint thread holds
/// `Shared::erasing` while it writes, so none is renamed in during a pass.
fn forget_checkpoint(shared: &Shared) -> Result<()> {
    let path = crate::checkpoint::path(&shared.dir);
    let io = shared.io.as_ref();
    let exists = io
        .exists(&path)
        .map_err(|e| Error::io("look for checkpoint", &path, e))?;
    if exists {
        io.remove(&path)
            .map_err(|e| Error::io("remove checkpoint before a rewrite", &path, e))?;
        crate::repair::sync_dir(io, &shared.dir)?;
        // Close writes one even if nothing else changed, should the pass fail.
        shared.checkpoints.segments_rewritten();
    }
    Ok(())
}

impl LogStore {
    /// Erases now, instead of at the next background pass, the event bytes of deleted
    /// executions from every segment file, and gives their space back. See
    /// `erasure.rs` and docs/DESIGN.md ("Physical erasure").
    ///
    /// What to expect:
    /// - Erased records are zeroed in place (positions never change); space comes back
    ///   only for whole 4 KiB pages holding nothing live. Where deleted and live
    ///   executions were appended interleaved, the content is gone but the files do
    ///   not shrink ([`CompactReport::bytes_erased`] counts content, not disk space).
    /// - Execution ids and tenant ids stay in the segments and `checkpoint.idx` (a
    ///   deleted id stays reserved), and so do the events of a deleted source that a
    ///   fork not deleted still shares, until that fork is deleted too.
    /// - An active segment holding dead records is sealed first, which starts a new
    ///   segment file: on a small store, disk use grows.
    /// - Copies made before (`backup_to`, file copies) keep what they held; compact
    ///   them too.
    pub fn compact_now(&self) -> Result<CompactReport> {
        self.check_writable_index()?;
        if self.shared().read_only {
            return Err(Error::InvalidArgument(
                "the store was opened read-only; open it with LogStore::open to compact".into(),
            ));
        }
        compact(self.shared())
    }
}
