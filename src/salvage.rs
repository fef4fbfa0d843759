//! Salvage: the executions a damaged store still holds whole, for a store that open
//! refuses (`Error::Corrupt`). `execlog export --salvage` writes them as an export that
//! `execlog import` reads into a new store.
//!
//! It reads every segment file through read-only handles, in id order, record by
//! record with each record's CRC checked, resuming past damage as the survey does
//! (`damage.rs`), and follows each execution's chain forward. An execution is salvaged
//! up to the last whole batch before the first of its records that is missing,
//! damaged, or does not continue its chain (sequence, position of the one before);
//! what follows such a gap is counted, never returned, so that what is returned reads
//! from sequence 1 without a gap, as an export must. Tombstones that survive apply: a
//! deleted execution is not returned, nor one with erased records (only deleted
//! executions are erased). A tombstone inside a damaged range is lost with it, so an
//! execution deleted there comes back; the damaged ranges are in the report.
//!
//! Invariants: nothing on disk changes and no lock is taken (run it on a store no
//! process has open, or on a copy); memory is a constant per execution plus one
//! execution's events at a time; every event returned passed its record's CRC and
//! lies on its execution's chain, walked back from the last salvaged record.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use crate::codec;
use crate::damage::{self, SegmentSurvey};
use crate::deletion::{self, Tombstone};
use crate::error::Result;
use crate::event::{ExecutionEventData, StoredEvent};
use crate::ids::{ExecutionId, TenantId};
use crate::io::{Io, Mapped, RealIo};
use crate::record::{self, Decoded, Header, Kind, Pos};

/// What [`salvage`] found, beside the executions it returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SalvageReport {
    /// Every segment file: its readable events and damaged ranges, as
    /// [`survey_damage`](crate::survey_damage) gives them.
    pub segments: Vec<SegmentSurvey>,
    /// Executions whose first record (or fork record) was found and that no
    /// surviving tombstone deleted: the ones [`Salvage::executions`] returns.
    pub executions: u64,
    /// Executions with records but no surviving first record: their id and tenant are
    /// unknown, so none of their events can be returned.
    pub unnamed_executions: u64,
    /// Executions whose first record survived but whose first event (or, for a fork,
    /// an event it shares) is missing or damaged: nothing of them can be returned.
    pub lost_executions: u64,
    /// Every execution that lost events, by id, oldest first: how many events it keeps
    /// (0 for a lost one) and how many intact events after its gap were left out.
    pub cut: Vec<(ExecutionId, u64, u64)>,
    /// Executions a surviving tombstone deleted or erasure rewrote: not returned.
    pub deleted_executions: u64,
    /// Events found intact but left out because an earlier event of the same
    /// execution is missing or damaged, or their batch is not whole.
    pub events_after_gaps: u64,
}

impl SalvageReport {
    /// Whether every segment was intact, so that the salvage holds everything.
    pub fn is_whole(&self) -> bool {
        self.segments.iter().all(|s| s.damaged.is_empty())
            && self.unnamed_executions == 0
            && self.lost_executions == 0
            && self.events_after_gaps == 0
    }
}

/// One execution [`Salvage::executions`] returns: its events from sequence 1, or why
/// its chain could not be read back.
#[derive(Debug)]
pub struct SalvagedExecution {
    /// The id its first record declared.
    pub execution_id: ExecutionId,
    /// The tenant its first record declared (a fork's: its source's).
    pub tenant_id: TenantId,
    /// Its events from sequence 1 to its last whole batch before any gap, or why the
    /// chain could not be read back.
    pub events: std::result::Result<Vec<StoredEvent>, String>,
}

/// A scanned store: [`salvage`], then [`Salvage::executions`].
pub struct Salvage {
    maps: BTreeMap<u32, Mapped>,
    tracks: BTreeMap<u64, Track>,
    report: SalvageReport,
}

/// Scans the store in `dir` (see the module docs). Fails if the directory does not
/// exist or holds no segment file (`InvalidArgument`, as a read-only open), or if a
/// segment file cannot be read; damage is in the report.
pub fn salvage(dir: impl AsRef<Path>) -> Result<Salvage> {
    salvage_with(&RealIo, dir.as_ref())
}

pub(crate) fn salvage_with(io: &dyn Io, dir: &Path) -> Result<Salvage> {
    let mut maps = BTreeMap::new();
    let mut follow = Follow::default();
    let mut segments = Vec::new();
    crate::log_store::require_store(io, dir)?;
    for id in damage::segment_ids(io, dir)? {
        let map = damage::map_segment(io, dir, id)?;
        let mut readable_events = 0;
        let damaged = damage::walk_segment(map.as_ref().as_ref(), id, |pos, header, body| {
            readable_events += u64::from(header.kind == Kind::Event);
            follow.record(pos, header, body);
        });
        segments.push(SegmentSurvey {
            segment: id,
            readable_events,
            damaged,
        });
        maps.insert(id, map);
    }
    let report = follow.report(segments);
    Ok(Salvage {
        maps,
        tracks: follow.tracks,
        report,
    })
}

impl Salvage {
    /// What the scan found: damage, and what it costs.
    pub fn report(&self) -> &SalvageReport {
        &self.report
    }

    /// The salvaged executions, oldest first (the order `list_executions` gives),
    /// each read back from its last salvaged record when the iterator reaches it.
    pub fn executions(&self) -> impl Iterator<Item = SalvagedExecution> + '_ {
        self.tracks
            .iter()
            .filter(|(_, t)| t.salvaged())
            .filter_map(|(&no, t)| {
                let (id, tenant) = t.name.clone()?;
                let events = self.read_back(no, t, &id, &tenant);
                Some(SalvagedExecution {
                    execution_id: id,
                    tenant_id: tenant,
                    events,
                })
            })
    }

    /// Execution `no`'s events 1 to its last whole batch, walking the chain back.
    fn read_back(
        &self,
        no: u64,
        track: &Track,
        id: &ExecutionId,
        tenant: &TenantId,
    ) -> std::result::Result<Vec<StoredEvent>, String> {
        let owners = self.owners(no);
        let (mut sequence, mut at) = track.whole;
        let mut events = Vec::with_capacity(sequence.min(4096) as usize);
        while sequence > 0 {
            let pos = at.ok_or_else(|| format!("the chain ends before sequence {sequence}"))?;
            let (header, event) = self
                .event_at(pos)
                .map_err(|why| format!("segment {} offset {}: {why}", pos.segment, pos.offset))?;
            let owner = owners.iter().find(|(first, _)| sequence >= *first);
            if header.sequence != sequence || owner.map(|o| o.1) != Some(header.execution) {
                return Err(format!(
                    "segment {} offset {}: not sequence {sequence} of this chain",
                    pos.segment, pos.offset
                ));
            }
            events.push(StoredEvent {
                sequence,
                execution_id: id.clone(),
                tenant_id: tenant.clone(),
                event,
                timestamp: crate::reader::timestamp(header.timestamp_ns),
            });
            (sequence, at) = (sequence - 1, header.prev);
        }
        events.reverse();
        Ok(events)
    }

    /// Which execution's records hold which of `no`'s sequences: `(first sequence,
    /// owner)`, from `no` down through the executions it was forked from.
    fn owners(&self, mut no: u64) -> Vec<(u64, u64)> {
        let mut owners = Vec::new();
        loop {
            let base = self.tracks.get(&no).and_then(|t| t.base);
            owners.push((base.map_or(1, |(_, at)| at + 1), no));
            match base {
                Some((source, _)) if owners.len() <= self.tracks.len() => no = source,
                _ => return owners,
            }
        }
    }

    /// The event record at `pos`, its CRC checked and its body decoded.
    fn event_at(&self, pos: Pos) -> std::result::Result<(Header, ExecutionEventData), String> {
        let bytes = self
            .maps
            .get(&pos.segment)
            .and_then(|m| m.as_ref().as_ref().get(pos.offset as usize..))
            .ok_or("not in the store")?;
        match record::decode(bytes) {
            Decoded::Record { header, body, .. } if header.kind == Kind::Event => {
                let (_, event) = codec::decode_body(body)?;
                Ok((header, event))
            }
            Decoded::Record { .. } => Err("not an event record".into()),
            Decoded::Empty => Err("no record here".into()),
            Decoded::Invalid(why) => Err(why.to_string()),
        }
    }
}

/// What the forward pass knows of one execution.
#[derive(Debug, Default)]
struct Track {
    /// Id and tenant, from its first record or fork record.
    name: Option<(ExecutionId, TenantId)>,
    /// For a fork: its source and the events it shares.
    base: Option<(u64, u64)>,
    /// The last record on its chain so far: sequence and position.
    reached: (u64, Option<Pos>),
    /// The last of those that ended a batch: what is salvaged.
    whole: (u64, Option<Pos>),
    /// Set at the first record that does not continue the chain.
    broken: bool,
    /// Deleted by a surviving tombstone, or erased.
    gone: bool,
    /// Intact records left out after the chain broke.
    after_gap: u64,
}

impl Track {
    fn salvaged(&self) -> bool {
        self.name.is_some() && !self.gone && self.whole.0 > 0
    }
}

/// The forward pass over every record, in log order.
#[derive(Default)]
struct Follow {
    tracks: BTreeMap<u64, Track>,
    /// Every id a track was named after.
    named: HashSet<ExecutionId>,
}

impl Follow {
    fn record(&mut self, pos: Pos, header: &Header, body: &[u8]) {
        match header.kind {
            Kind::Seal => {}
            Kind::Delete => self.tombstone(header, body),
            Kind::Fork => self.fork(header, body),
            Kind::Event => self.event(header, body, (header.sequence, pos)),
            // Erased records stand for events of a deleted execution: its chain goes
            // on through them (a fork may share what precedes them), it is not returned.
            Kind::Erased => {
                self.event(header, body, (header.sequence, pos));
                self.tracks.entry(header.execution).or_default().gone = true;
            }
            Kind::ErasedSpan => {
                if let Ok((last, last_pos, rest)) = crate::erasure::decode_span(header, pos, body) {
                    self.event(header, rest, (last, last_pos));
                }
                self.tracks.entry(header.execution).or_default().gone = true;
            }
        }
    }

    /// An event record, or an erased one standing for events up to `end` (the last
    /// one's sequence and position): names the execution at sequence 1, then
    /// continues its chain.
    fn event(&mut self, header: &Header, body: &[u8], end: (u64, Pos)) {
        let declared = match header.sequence {
            1 => codec::decode_prefix(body).ok().and_then(|p| p.declaration),
            _ => None,
        };
        let track = self.tracks.entry(header.execution).or_default();
        if let Some(d) = declared
            && track.name.is_none()
            && track.reached.0 == 0
        {
            let id = ExecutionId::from(d.execution_id);
            // Ids are never reused: a second declaration of one is forged.
            if self.named.insert(id.clone()) {
                track.name = Some((id, d.tenant_id.into()));
            }
        }
        let continues = track.name.is_some()
            && header.sequence == track.reached.0 + 1
            && header.prev == track.reached.1
            && end.0 >= header.sequence;
        if track.broken || !continues {
            track.broken = true;
            track.after_gap += 1;
            return;
        }
        track.reached = (end.0, Some(end.1));
        if header.batch_remaining == 0 {
            track.whole = track.reached;
        }
    }

    fn fork(&mut self, header: &Header, body: &[u8]) {
        let Ok(f) = crate::fork::decode(header, body) else {
            return;
        };
        let source = self.tracks.get(&f.source);
        let tenant = source.and_then(|s| s.name.as_ref()).map(|(_, t)| t.clone());
        let shares = source.is_some_and(|s| s.whole.0 >= f.at && f.source < f.no);
        let track = self.tracks.entry(f.no).or_default();
        if track.name.is_some() || track.reached.0 > 0 {
            track.broken = true;
            return;
        }
        let id = ExecutionId::from(f.id);
        track.name = tenant
            .filter(|_| self.named.insert(id.clone()))
            .map(|t| (id, t));
        track.base = Some((f.source, f.at));
        // A fork whose source lost what it shares cannot be read from sequence 1.
        track.broken = !shares;
        if shares {
            track.reached = (f.at, Some(f.prev));
            track.whole = track.reached;
        }
    }

    fn tombstone(&mut self, header: &Header, body: &[u8]) {
        match deletion::decode(header, body) {
            Ok(Tombstone::Execution { no, .. }) => {
                self.tracks.entry(no).or_default().gone = true;
            }
            Ok(Tombstone::Tenant { below, tenant }) => {
                let tenant = TenantId::from(tenant);
                for (_, t) in self.tracks.range_mut(..below) {
                    if t.name.as_ref().is_some_and(|(_, owner)| *owner == tenant) {
                        t.gone = true;
                    }
                }
            }
            Err(_) => {}
        }
    }

    fn report(&self, segments: Vec<SegmentSurvey>) -> SalvageReport {
        let mut report = SalvageReport {
            segments,
            ..SalvageReport::default()
        };
        for t in self.tracks.values() {
            match (&t.name, t.gone) {
                (_, true) => report.deleted_executions += 1,
                (None, false) => report.unnamed_executions += 1,
                (Some((id, _)), false) => {
                    let left_out = t.after_gap + (t.reached.0 - t.whole.0);
                    report.executions += u64::from(t.whole.0 > 0);
                    report.lost_executions += u64::from(t.whole.0 == 0);
                    report.events_after_gaps += left_out;
                    if t.broken || left_out > 0 || t.whole.0 == 0 {
                        report.cut.push((id.clone(), t.whole.0, left_out));
                    }
                }
            }
        }
        report
    }
}
