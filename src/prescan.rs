//! Open's helper thread: checks record CRCs ahead of the recovery scan.
//!
//! Open's tail scan (`tail_scan.rs`) walks the segments front to back on the opening thread and,
//! per record, verifies the CRC and rebuilds the index; the CRC was about 40% of that
//! work (perf). This thread walks the same maps ahead of the scan with full decodes
//! and publishes, per segment, how far every record decoded cleanly; the scan skips the
//! CRC of records below that point (`Scanner::trusting`). What the helper has not reached
//! yet the scan checks itself, so timing changes how fast open is, never what it finds.
//!
//! Invariants:
//! - The helper only reads maps it was given: no I/O call (the simulated file system's
//!   call order, which makes its seeds replayable, is the same with or without it).
//! - A published end only grows, and lies on the boundary after records that
//!   `record::decode` accepted in full, CRC included, from the start of the segment or
//!   from a record boundary the scan had already passed (where the helper restarts when
//!   the scan catches up with it): every record between the scan's position and the
//!   published end was checked.
//! - The maps do not change while the helper runs: nothing writes a segment during the
//!   scan, and recovery stops and joins the helper ([`Prescan::finish`], or on drop)
//!   before it cuts a torn tail.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use crate::io::Mapped;
use crate::record;
use crate::scan::{Scanner, Step};
use crate::sync::MODEL_CHECKED;

/// Stores smaller than this are prescanned on the opening thread, before the scan: a
/// thread costs more than it saves there. Release and debug builds decide alike, by
/// size, so tests of large stores (`tests/recovery.rs`) run the thread and every
/// smaller test runs the trusted path deterministically.
const THREAD_MIN_BYTES: u64 = 4 << 20;

/// How many records pass between two publications of a position (by either thread).
const PUBLISH_EVERY: usize = 64;

struct Progress {
    /// Per segment (by position in the scan): the end of its records checked so far
    /// (see the module's invariants for what lies before it).
    verified: Vec<AtomicUsize>,
    /// Where the scan is: segment position in the high 32 bits, offset in the low ones.
    scan_at: AtomicU64,
    stop: AtomicBool,
}

/// A running (or absent) helper for one open.
pub(crate) struct Prescan {
    progress: Arc<Progress>,
    handle: Option<JoinHandle<()>>,
}

impl Prescan {
    /// Starts a helper over `maps`, the segments in scan order with the offset where
    /// the scan of each starts, if worth it.
    pub(crate) fn start(maps: Vec<(Mapped, usize)>) -> Self {
        let progress = Arc::new(Progress {
            verified: maps.iter().map(|_| AtomicUsize::new(0)).collect(),
            scan_at: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let total: u64 = maps
            .iter()
            .map(|(m, start)| m.as_ref().as_ref().len().saturating_sub(*start) as u64)
            .sum();
        let handle = if MODEL_CHECKED || total < THREAD_MIN_BYTES {
            // Everything is prescanned before the scan, on this thread: the scan then
            // trusts every CRC the prescan accepted, deterministically.
            run(&maps, &progress);
            None
        } else {
            spawn(maps, &progress)
        };
        Self { progress, handle }
    }

    /// How far segment `i` (position in the scan) is verified.
    pub(crate) fn verified(&self, i: usize) -> &AtomicUsize {
        static NONE: AtomicUsize = AtomicUsize::new(0);
        self.progress.verified.get(i).unwrap_or(&NONE)
    }

    /// Tells the helper where the scan is, so that it does not check what the scan has
    /// passed.
    pub(crate) fn scanning(&self, i: usize, offset: usize) {
        let at = ((i as u64) << 32) | (offset as u64 & u64::from(u32::MAX));
        self.progress.scan_at.store(at, Ordering::Relaxed);
    }

    /// Stops the helper and waits for it.
    pub(crate) fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.progress.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            // The helper has nothing to report; a panic there only cost speed.
            let _ = handle.join();
        }
    }
}

/// Runs the helper on its own thread; `None` if no thread could be made (the scan then
/// checks every CRC itself).
fn spawn(maps: Vec<(Mapped, usize)>, progress: &Arc<Progress>) -> Option<JoinHandle<()>> {
    let shared = Arc::clone(progress);
    std::thread::Builder::new()
        .name("execlog-prescan".into())
        .spawn(move || run(&maps, &shared))
        .ok()
}

impl Drop for Prescan {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The helper's loop: segments in scan order. When the scan catches up with the helper
/// inside a segment, the helper starts again from the scan's position (a record
/// boundary it publishes): everything before it the scan has checked itself, and the
/// helper, doing less per record, soon leads again.
fn run(maps: &[(Mapped, usize)], progress: &Progress) {
    for (i, (map, first)) in maps.iter().enumerate() {
        let Some(verified) = progress.verified.get(i) else {
            return;
        };
        let bytes = map.as_ref().as_ref();
        let mut start = *first;
        'segment: loop {
            let mut end = start;
            for (n, step) in Scanner::new(bytes, start).enumerate() {
                let Step::Record { offset, body, .. } = step else {
                    break;
                };
                end = offset + record::framed_len(body.len());
                if n % PUBLISH_EVERY == PUBLISH_EVERY - 1 {
                    verified.fetch_max(end, Ordering::Release);
                    match scan_position(progress) {
                        None => return,
                        Some((segment, _)) if segment > i => break 'segment,
                        Some((segment, offset)) if segment == i && offset >= end => {
                            start = offset;
                            continue 'segment;
                        }
                        Some(_) => {}
                    }
                }
            }
            verified.fetch_max(end, Ordering::Release);
            break;
        }
        if progress.stop.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// Where the scan is (segment position, offset of its next record), or `None` once the
/// helper should stop.
fn scan_position(progress: &Progress) -> Option<(usize, usize)> {
    if progress.stop.load(Ordering::Relaxed) {
        return None;
    }
    let at = progress.scan_at.load(Ordering::Relaxed);
    Some(((at >> 32) as usize, (at & u64::from(u32::MAX)) as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Header, Kind, Pos, encode};
    use crate::segment::SEGMENT_HEADER_LEN;

    /// A segment image: header space, `records` records, then one with a bad CRC at
    /// `bad` (if any) and more records after it.
    fn segment(records: u64, bad: Option<u64>) -> Vec<u8> {
        let mut bytes = vec![0u8; SEGMENT_HEADER_LEN];
        for seq in 1..=records {
            let offset = bytes.len();
            let header = Header {
                kind: Kind::Event,
                group_start: 0,
                execution: 0,
                sequence: seq,
                timestamp_ns: 1,
                prev: (seq > 1).then_some(Pos {
                    segment: 1,
                    offset: 32,
                }),
                batch_remaining: 0,
            };
            encode(&header, &[&[seq as u8; 40]], &mut bytes);
            if bad == Some(seq) {
                bytes[offset + record::HEADER_LEN] ^= 1;
            }
        }
        bytes
    }

    /// The scan's records and stop, as the opening thread sees them.
    fn scan(bytes: &[u8], prescan: Option<&Prescan>) -> Vec<String> {
        let none = AtomicUsize::new(0);
        let verified = prescan.map_or(&none, |p| p.verified(0));
        let mut scanner = Scanner::trusting(bytes, SEGMENT_HEADER_LEN, verified);
        let mut steps = Vec::new();
        while let Some(step) = scanner.next() {
            if let Some(p) = prescan {
                p.scanning(0, scanner.offset());
            }
            steps.push(format!("{step:?}"));
        }
        steps
    }

    #[test]
    fn a_racing_helper_never_changes_what_the_scan_finds() {
        for round in 0..200u64 {
            let bad = (round % 3 != 0).then_some(1 + round * 7 % 900);
            let bytes = segment(1000, bad);
            let expected = scan(&bytes, None);
            let map: Mapped = Arc::new(bytes.clone());
            let progress = Arc::new(Progress {
                verified: vec![AtomicUsize::new(0)],
                scan_at: AtomicU64::new(0),
                stop: AtomicBool::new(false),
            });
            let prescan = Prescan {
                handle: spawn(vec![(map, SEGMENT_HEADER_LEN)], &progress),
                progress,
            };
            assert_eq!(scan(&bytes, Some(&prescan)), expected, "round {round}");
            prescan.finish();
        }
    }

    #[test]
    fn the_helper_stops_before_a_bad_record() {
        let bytes = segment(300, Some(200));
        let map: Mapped = Arc::new(bytes.clone());
        let prescan = Prescan::start(vec![(map, SEGMENT_HEADER_LEN)]);
        let verified = prescan.verified(0).load(Ordering::Acquire);
        let bad_at = Scanner::new(&bytes, SEGMENT_HEADER_LEN)
            .find_map(|step| match step {
                Step::Invalid { offset, .. } => Some(offset),
                _ => None,
            })
            .unwrap_or(0);
        assert!(bad_at > SEGMENT_HEADER_LEN);
        // Small stores are prescanned before `start` returns: up to the bad record.
        assert_eq!(verified, bad_at);
        prescan.finish();
    }
}
