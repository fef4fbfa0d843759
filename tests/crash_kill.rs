//! Killed processes: a child (this test binary re-run as a writer) appends from many
//! threads, single events and batches mixed, to overlapping executions, and prints an
//! acknowledgement line as soon as each append returns. The parent kills it with
//! SIGKILL at a random moment, reopens the same directory (reused across trials, so
//! recovery runs on accumulated data) and checks: every acknowledged event present with
//! identical content, sequences contiguous from 1, no batch partly present, and appends
//! continuing at the right sequence. Every 25 trials a new directory starts.
//!
//! A killed process keeps the OS page cache, so this test cannot catch a missing fsync
//! (the power-loss tests do); it catches acknowledging before the write, lost or torn
//! queue hand-offs, and recovery that drops or mangles a live tail.
//! `EXECLOG_CRASH_TRIALS=N` sets the number of trials (default 200).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use execlog::*;

const EXECUTIONS: u64 = 24;
const WRITERS: u64 = 16;
/// Trials that accumulate data in one directory before the next starts afresh.
const TRIALS_PER_STORE: u64 = 25;

fn options() -> Options {
    Options::default().segment_size_bytes(256 * 1024)
}

/// The content of event `i` of an append tagged `tag` (digest = the tag itself: every
/// field is derived from it, so equality of events proves identical content).
fn event(tag: &str, len: usize, i: usize) -> ExecutionEventData {
    ExecutionEventData::ToolCallCompleted {
        step_id: Some(StepId::from(tag)),
        tool_call_id: format!("{i}/{len}"),
        output: serde_json::json!({"tag": tag, "i": i, "pad": "z".repeat(i * 37 % 300)}),
    }
}

fn batch_tag(e: &ExecutionEventData) -> Option<(String, usize, usize)> {
    let ExecutionEventData::ToolCallCompleted {
        step_id: Some(s),
        tool_call_id,
        ..
    } = e
    else {
        return None;
    };
    let (i, len) = tool_call_id.split_once('/')?;
    Some((s.to_string(), i.parse().ok()?, len.parse().ok()?))
}

/// The child: appends until killed.
fn child(dir: &Path) {
    let store = Arc::new(LogStore::open_with(dir, options()).unwrap());
    let out = Arc::new(parking_lot::Mutex::new(std::io::stdout()));
    let nonce = std::process::id();
    let threads: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (store, out) = (store.clone(), out.clone());
            std::thread::spawn(move || {
                let mut x = (u64::from(nonce) << 8) ^ w ^ 0x5DEE_CE66;
                for n in 0.. {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let e = ExecutionId::from(format!("exec-{}", x % EXECUTIONS));
                    let t = TenantId::from(format!("tenant-{}", (x % EXECUTIONS) % 3));
                    let len = if x % 3 == 0 {
                        1 + (x >> 8) as usize % 7
                    } else {
                        1
                    };
                    let tag = format!("{nonce}-{w}-{n}");
                    let events: Vec<_> = (0..len).map(|i| event(&tag, len, i)).collect();
                    let first = if len == 1 {
                        store.append(&e, &t, events[0].clone())
                    } else {
                        store.append_batch(&e, &t, events)
                    };
                    let first = futures::executor::block_on(first).unwrap();
                    let mut out = out.lock();
                    writeln!(out, "ACK {e} {first} {len} {tag}").unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn crash_child_writer() {
    // Runs only as the child of `killed_writers_lose_nothing`.
    if let Ok(dir) = std::env::var("EXECLOG_CRASH_CHILD") {
        child(Path::new(&dir));
    }
}

struct Ack {
    first: u64,
    len: usize,
    tag: String,
}

fn trial(dir: &Path, rng: &mut u64, acked: &mut HashMap<String, Vec<Ack>>) -> usize {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("EXECLOG_CRASH_CHILD", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            // A line cut by the kill has no newline: its append may not have returned.
            if line.ends_with('\n') && line.starts_with("ACK ") {
                lines.push(line.trim_end().to_string());
            }
            line.clear();
        }
        lines
    });
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let delay = Duration::from_millis(20 + *rng % 180);
    let start = Instant::now();
    std::thread::sleep(delay);
    child.kill().unwrap();
    child.wait().unwrap();
    let lines = reader.join().unwrap();
    let _ = start;
    for l in &lines {
        let parts: Vec<&str> = l.splitn(5, ' ').collect();
        acked.entry(parts[1].to_string()).or_default().push(Ack {
            first: parts[2].parse().unwrap(),
            len: parts[3].parse().unwrap(),
            tag: parts[4].to_string(),
        });
    }
    lines.len()
}

fn verify(dir: &Path, acked: &HashMap<String, Vec<Ack>>) -> LogStore {
    let store =
        LogStore::open_with(dir, options()).unwrap_or_else(|e| panic!("reopen failed: {e}"));
    for x in 0..EXECUTIONS {
        let e = ExecutionId::from(format!("exec-{x}"));
        let events = store.load_events_blocking(&e).unwrap();
        for (i, ev) in events.iter().enumerate() {
            assert_eq!(ev.sequence, i as u64 + 1);
        }
        // No batch partly present.
        let mut i = 0;
        while i < events.len() {
            let (tag, first_i, len) = batch_tag(&events[i].event).unwrap();
            assert_eq!(first_i, 0, "{e}: batch {tag} starts mid-way at {}", i + 1);
            for k in 0..len {
                let got = events.get(i + k).and_then(|ev| batch_tag(&ev.event));
                assert_eq!(got, Some((tag.clone(), k, len)), "{e}: partial batch {tag}");
            }
            i += len;
        }
        for a in acked.get(e.as_str()).map(Vec::as_slice).unwrap_or_default() {
            for k in 0..a.len {
                let got = events.get(a.first as usize - 1 + k).map(|ev| &ev.event);
                assert_eq!(got, Some(&event(&a.tag, a.len, k)), "{e}: acked event lost");
            }
        }
    }
    store
}

#[test]
fn killed_writers_lose_nothing() {
    let trials: u64 = std::env::var("EXECLOG_CRASH_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut dir = tempfile::tempdir().unwrap();
    let mut acked = HashMap::new();
    let mut rng = 0x2545_F491_4F6C_DD1D_u64 ^ u64::from(std::process::id());
    let mut total = 0;
    for n in 0..trials {
        if n % TRIALS_PER_STORE == 0 && n > 0 {
            // Verification rereads the whole store each trial: start a new one now and
            // then so the suite stays linear in the number of trials.
            dir = tempfile::tempdir().unwrap();
            acked.clear();
        }
        total += trial(dir.path(), &mut rng, &mut acked);
        let store = verify(dir.path(), &acked);
        // Appends continue at the right sequence.
        let e = ExecutionId::from("exec-0");
        let t = TenantId::from("tenant-0");
        let next = store.get_latest_sequence_blocking(&e).unwrap().unwrap_or(0) + 1;
        let tag = format!("parent-{n}");
        assert_eq!(
            store.append_blocking(&e, &t, event(&tag, 1, 0)).unwrap(),
            next
        );
        acked.entry(e.to_string()).or_default().push(Ack {
            first: next,
            len: 1,
            tag,
        });
    }
    assert!(total > 0, "the child never acknowledged anything");
    println!("{trials} kills, {total} acknowledged appends, 0 lost");
}
