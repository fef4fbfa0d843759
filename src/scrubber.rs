//! The background scrubber thread (`execlog-scrub`) of a writable store: it walks the
//! sealed segments, a chunk at a time, at the rate [`Options::scrub`] sets, checking
//! every record (`scrub.rs`), and keeps its position in `scrub.progress`
//! (`scrub_progress.rs`).
//!
//! Invariants:
//! - It never blocks appends: it holds no lock while it reads or writes a file (it
//!   takes the segment list's read lock only to get a map, as reads do), and it
//!   writes no segment; its only file is its own progress.
//! - Pacing is a schedule, not a sleep per chunk: each chunk moves a deadline by its
//!   bytes divided by the rate, and the thread waits for that deadline on a condition
//!   variable, so close wakes it at once whatever the rate (one byte per second
//!   included). Between passes it waits the same way; with nothing to scrub it does
//!   no work at all until the pass's time is up.
//! - Its position is saved at segment boundaries (at most once a second), at the end
//!   of every pass and when it stops, never mid-segment (see `scrub_progress.rs`).
//!
//! [`Options::scrub`]: crate::Options::scrub

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::background::{self, Background};
use crate::error::Result;
use crate::options::{MIN_SCRUB_BYTES_PER_SECOND, ScrubRate};
use crate::scrub;
use crate::scrub_progress::{self, Progress};
use crate::scrub_window::DeviceWindow;
use crate::state::Shared;
use crate::stop::Stop;
use crate::sync;

/// Most bytes checked between two looks at the clock and the stop flag.
const MAX_CHUNK_BYTES: u64 = 256 << 10;
/// Progress is saved at most this often at segment boundaries.
const SAVE_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest pass at a fixed rate: a store with nothing sealed is not re-listed in a
/// busy loop.
const MIN_PASS: Duration = Duration::from_secs(1);

/// Starts the scrubber of a writable store, unless its rate is [`ScrubRate::Off`]
/// (or the engine runs under the model checker, whose clock it would only confuse).
/// Loads the saved progress first, so `stats()` shows it from open on.
pub(crate) fn start(shared: &Arc<Shared>) -> Result<Option<Background>> {
    let rate = shared.options.scrub_rate();
    if rate == ScrubRate::Off || sync::MODEL_CHECKED {
        return Ok(None);
    }
    let mut progress = scrub_progress::load(shared.io.as_ref(), &shared.dir);
    if progress.segment as usize > shared.segments.count() {
        // Beyond every segment: forged, or from another store. Start over.
        progress = Progress::START;
    }
    shared.scrub.add_passes(progress.passes);
    shared.scrub.set_segment(progress.segment);
    // Stopped, the walk saves its position before it ends.
    background::spawn(shared, "execlog-scrub", move |shared, stop| {
        Walk {
            shared,
            stop,
            rate,
            progress,
            saved: (progress, Instant::now()),
            save_failed: false,
        }
        .run();
    })
    .map(Some)
}

/// The thread's state.
struct Walk {
    shared: Arc<Shared>,
    stop: Arc<Stop>,
    rate: ScrubRate,
    progress: Progress,
    /// The progress last saved, and when.
    saved: (Progress, Instant),
    /// Set after the first failed save: logged once, not at every segment.
    save_failed: bool,
}

impl Walk {
    fn run(&mut self) {
        loop {
            let started = Instant::now();
            let resumed = self.progress.segment > 1;
            let Some(bytes) = self.pass() else {
                self.save();
                return;
            };
            // A pass resumed past the last sealed segment (stopped just before it
            // could end) is complete; one from segment 1 that found nothing sealed
            // is no pass.
            if bytes > 0 || resumed {
                self.progress = Progress {
                    passes: self.progress.passes + 1,
                    segment: 1,
                };
                // Saved before the stats say so: a pass counted is a pass on disk.
                self.save();
                self.shared.scrub.add_passes(1);
                self.shared.scrub.set_segment(1);
            }
            if self.stop.sleep_until(started + self.min_pass()) {
                return;
            }
        }
    }

    /// One pass from the current position to the end of the sealed segments: the
    /// bytes checked, or `None` if stopped.
    fn pass(&mut self) -> Option<u64> {
        let mut offset = 0;
        // The segment's `rewrites` when its check started: a replacement since then
        // restarts it (`scrub::check_part`).
        let mut rewrites = 0;
        // What was read from the device beyond the last check, for the next one.
        let mut window = DeviceWindow::default();
        let mut bytes = 0;
        let mut deadline = Instant::now();
        loop {
            let rate = self.bytes_per_second();
            let budget = (rate / 10).clamp(1, MAX_CHUNK_BYTES);
            // Time spent checking counts towards the chunk's share; a thread that fell
            // behind (a slow disk, a busy machine) does not make up for it in a burst.
            deadline = deadline.max(Instant::now());
            let segment = self.progress.segment;
            let at = (segment, offset, (offset > 0).then_some(rewrites));
            let checked = match scrub::check_part(&self.shared, at, budget, &mut window) {
                Ok(Some(checked)) if checked.restart => {
                    offset = 0;
                    continue;
                }
                Ok(Some(checked)) => checked,
                Ok(None) => return Some(bytes),
                Err(e) => {
                    log::warn!("scrub: segment {segment} skipped: {e}");
                    self.next_segment();
                    offset = 0;
                    continue;
                }
            };
            let done = checked.next.saturating_sub(offset);
            rewrites = checked.rewrites;
            bytes += done;
            offset = checked.next;
            if offset >= checked.end {
                self.next_segment();
                offset = 0;
            }
            deadline += Duration::from_secs_f64(done as f64 / rate as f64);
            if self.stop.sleep_until(deadline) {
                return None;
            }
        }
    }

    /// Moves to the next segment; saves the position if the last save is old enough.
    fn next_segment(&mut self) {
        self.progress.segment += 1;
        self.shared.scrub.set_segment(self.progress.segment);
        if self.saved.1.elapsed() >= SAVE_INTERVAL {
            self.save();
        }
    }

    /// The rate now: fixed, or the sealed bytes over the pass duration, at least the
    /// minimum.
    fn bytes_per_second(&self) -> u64 {
        match self.rate {
            ScrubRate::BytesPerSecond(rate) => rate.max(1),
            ScrubRate::WholeStoreEvery(pass) => {
                let bytes = self.shared.segments.durable_bytes();
                let per_second = bytes as f64 / pass.as_secs_f64().max(1.0);
                (per_second as u64).max(MIN_SCRUB_BYTES_PER_SECOND)
            }
            ScrubRate::Off => u64::MAX,
        }
    }

    /// The shortest time a pass takes, idle time after its work included.
    fn min_pass(&self) -> Duration {
        match self.rate {
            ScrubRate::WholeStoreEvery(pass) => pass,
            ScrubRate::BytesPerSecond(_) | ScrubRate::Off => MIN_PASS,
        }
    }

    /// Saves the position if it changed. A failure is logged once: it costs only a
    /// repeated part of a pass after a restart.
    fn save(&mut self) {
        if self.saved.0 == self.progress {
            return;
        }
        let shared = &self.shared;
        let mode = shared.options.file_mode();
        match scrub_progress::save(shared.io.as_ref(), &shared.dir, self.progress, mode) {
            Ok(()) => self.saved = (self.progress, Instant::now()),
            Err(e) if !self.save_failed => {
                self.save_failed = true;
                log::warn!("scrub: could not save its position (a restart repeats work): {e}");
            }
            Err(_) => {}
        }
    }
}
