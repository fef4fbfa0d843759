//! Simulated power losses while segment sidecars are written (`src/sidecar.rs`): a
//! store closed cleanly, reopened, then appended to across several small segments while
//! the checkpoint thread writes a sidecar after each seal, the power cut at a random
//! I/O call of that session (a sidecar's write, fdatasync, rename or directory fsync
//! included). The reopen, which decodes its checkpoint after open and takes what
//! sidecars it finds, must keep every acknowledged event, answer as a full scan of the
//! same disk does, and never be poisoned: a power loss leaves each sidecar whole or
//! absent, and one that is there describes a segment that was durable before it.
//!
//! `EXECLOG_SIDECAR_POWER_SEEDS` (default 300) seeds from `EXECLOG_SIDECAR_POWER_BASE`.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::crash_image::kilobyte_event;
use common::step_event;
use execlog::fault::{Rng, SimIo};
use execlog::*;

fn options(io: &SimIo) -> Options {
    Options::default()
        .segment_size_bytes(64 * 1024)
        .index_stride(4)
        .verify_checkpoint_after_open(true)
        // Only a clean close writes a checkpoint: the seals after it get sidecars.
        .index_checkpoint_interval_bytes(Some(1 << 40))
        .io(Arc::new(io.clone()))
}

fn t() -> TenantId {
    TenantId::from("t")
}

const NAMES: [&str; 3] = ["a", "b", "c"];

/// Every execution's events as (sequence, step) lines, and what `get_latest_sequence`
/// says.
fn answers(store: &LogStore) -> String {
    let mut out = String::new();
    for name in NAMES {
        let id = ExecutionId::from(name);
        let events = store.load_events_blocking(&id).unwrap();
        for e in &events {
            let ExecutionEventData::StepCompleted { step_id, .. } = &e.event else {
                panic!("{e:?}");
            };
            out += &format!("{name} {} {step_id}\n", e.sequence);
        }
        out += &format!(
            "{name} latest {:?}\n",
            store.get_latest_sequence_blocking(&id)
        );
    }
    out
}

/// What one seed found: whether its reopen took segments from sidecars.
fn run_seed(seed: u64) -> bool {
    let dir = Path::new("/store");
    let sim = SimIo::new();
    let mut rng = Rng::new(seed);
    sim.seed_writeback_errors(seed);
    let store = LogStore::open_with(dir, options(&sim)).unwrap();
    for name in NAMES {
        let events = (1..=3).map(step_event).collect();
        store
            .append_batch_blocking(&ExecutionId::from(name), &t(), events)
            .unwrap();
    }
    store.close().unwrap();

    let store = LogStore::open_with(dir, options(&sim)).unwrap();
    sim.cut_power_at(1 + rng.below(1_200));
    let mut acked: Vec<(String, u64)> = Vec::new();
    for i in 0..200u64 {
        let name = NAMES[1 + (i % 2) as usize];
        let events: Vec<_> = (0..4).map(|k| kilobyte_event(1_000 + i * 4 + k)).collect();
        match store.append_batch_blocking(&ExecutionId::from(name), &t(), events) {
            Ok(last) => acked.extend((last - 3..=last).map(|s| (name.to_string(), s))),
            Err(_) => break,
        }
    }
    let after = sim.power_loss(rng.next_u64());
    drop(store);

    let scan_copy = after.snapshot();
    let full = Options::default()
        .segment_size_bytes(64 * 1024)
        .index_checkpoint(false)
        .io(Arc::new(scan_copy));
    let expected = answers(&LogStore::open_with(dir, full).unwrap());

    let store = match LogStore::open_with(dir, options(&after)) {
        Ok(s) => s,
        Err(e) => panic!("seed {seed}: reopen failed: {e}"),
    };
    let took = store.recovery_report().segments_from_sidecars > 0;
    let found = answers(&store);
    assert!(
        found == expected,
        "seed {seed}: answers differ from a full scan"
    );
    for (name, sequence) in &acked {
        let line = format!("{name} {sequence} ");
        assert!(found.contains(&line), "seed {seed}: {name} {sequence} lost");
    }
    common::verify_after_open::wait_for_verdict(&store);
    let probe = store.append_blocking(&ExecutionId::from("probe"), &t(), step_event(1));
    assert!(
        probe.is_ok(),
        "seed {seed}: the reopened store refuses: {probe:?}"
    );
    assert!(
        answers(&store) == found,
        "seed {seed}: answers changed at the verdict"
    );
    took
}

#[test]
fn power_loss_while_sidecars_are_written_loses_nothing() {
    if let Ok(seed) = std::env::var("EXECLOG_SIDECAR_POWER_SEED") {
        run_seed(seed.parse().unwrap());
        return;
    }
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let seeds = env("EXECLOG_SIDECAR_POWER_SEEDS", 300);
    let base = env("EXECLOG_SIDECAR_POWER_BASE", 0);
    let mut took = 0;
    for seed in base..base + seeds {
        match std::panic::catch_unwind(|| run_seed(seed)) {
            Ok(t) => took += u64::from(t),
            Err(panic) => {
                eprintln!("replay with EXECLOG_SIDECAR_POWER_SEED={seed}");
                std::panic::resume_unwind(panic);
            }
        }
    }
    println!(
        "{seeds} simulated power losses during sidecar writes, 0 acknowledged events lost; {took} reopens took segments from sidecars"
    );
    if seeds >= 100 {
        assert!(
            took > seeds / 4,
            "only {took} of {seeds} reopens took sidecars"
        );
    }
}
