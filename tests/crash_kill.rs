//! Killed processes: a child (this test binary re-run as a writer, `common/writer.rs`)
//! appends from 16 threads, single events and batches mixed, to overlapping executions,
//! and prints an acknowledgement line as soon as each append returns. The parent kills
//! it with SIGKILL at a random moment, reopens the same directory (reused across
//! trials, so recovery runs on accumulated data; every 25 trials a new one starts) and
//! checks: every acknowledged event present with identical content, sequences
//! contiguous from 1, no batch partly present, appends continuing at the right
//! sequence.
//!
//! A quarter of the child's appends are keyed, a quarter conditional (`Exactly`), an
//! eighth both (issue 13). After each kill the parent retries every keyed append the
//! child started and a sample of those acknowledged in earlier trials
//! (`writer::retry_keyed`): acknowledged ones must replay their outcome without storing
//! anything; unacknowledged ones may replay only what is there and store only what is
//! not. The child itself checks every guarded answer it gets (`BAD` lines fail the test).
//!
//! A killed process keeps the OS page cache, so this test cannot catch a missing fsync
//! (`power_loss.rs` and `power_cut.rs` do); it catches acknowledging before the write,
//! lost or torn queue hand-offs, and recovery that drops or mangles a live tail.
//! `EXECLOG_CRASH_TRIALS=N` sets the number of trials (default 200).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::writer;

/// Trials that accumulate data in one directory before the next starts afresh.
const TRIALS_PER_STORE: u64 = 25;

#[test]
fn crash_child_writer() {
    // Runs only as the child of `killed_writers_lose_nothing`.
    if let Ok(dir) = std::env::var("EXECLOG_CRASH_CHILD") {
        writer::child(Path::new(&dir));
    }
}

#[test]
fn killed_writers_lose_nothing() {
    let trials: u64 = std::env::var("EXECLOG_CRASH_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut dir = tempfile::tempdir().unwrap();
    let mut acks = writer::Acks::new();
    let mut keyed = Vec::new();
    // Latest sequences before the trial: where its appends start.
    let mut start = vec![0; writer::EXECUTIONS as usize];
    let mut retried = writer::Retried::default();
    let mut rng = 0x2545_F491_4F6C_DD1D_u64 ^ u64::from(std::process::id());
    let mut total = 0;
    for n in 0..trials {
        if n % TRIALS_PER_STORE == 0 && n > 0 {
            // Verification rereads the whole store each trial: start a new one now and
            // then so the suite stays linear in the number of trials.
            dir = tempfile::tempdir().unwrap();
            acks.clear();
            keyed.clear();
            start = vec![0; writer::EXECUTIONS as usize];
        }
        let mut child = writer::spawn(
            "crash_child_writer",
            "EXECLOG_CRASH_CHILD",
            dir.path(),
            256 * 1024,
        );
        let reader = writer::collect_acks(&mut child);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(20 + rng % 180));
        child.kill().unwrap();
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        total += lines.iter().filter(|l| l.starts_with("ACK ")).count();
        writer::record(&lines, &mut acks);
        writer::assert_no_bad(&lines).unwrap_or_else(|e| panic!("trial {n}: {e}"));
        let store = writer::verify(dir.path(), &acks).unwrap_or_else(|e| panic!("trial {n}: {e}"));
        retried.add(
            writer::retry_keyed(
                &store, &lines, &start, &mut acks, &mut keyed, 100, n as usize,
            )
            .unwrap_or_else(|e| panic!("trial {n}: {e}")),
        );
        writer::append_continues(&store, &format!("parent-{n}"), &mut acks)
            .unwrap_or_else(|e| panic!("trial {n}: {e}"));
        start = writer::latest_all(&store).unwrap_or_else(|e| panic!("trial {n}: {e}"));
    }
    assert!(total > 0, "the child never acknowledged anything");
    assert!(retried.acknowledged > 0, "no keyed append was acknowledged");
    println!(
        "{trials} kills, {total} acknowledged appends, 0 lost; keyed retries after recovery: \
         {} acknowledged (replayed), unacknowledged: {} found stored (replayed), {} stored \
         by the retry, {} refused (stale expectation)",
        retried.acknowledged, retried.replayed, retried.stored, retried.refused
    );
}
