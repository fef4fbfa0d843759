//! The crash-test writer shared by `crash_kill.rs` and `power_cut.rs`: a child process
//! (the test binary re-run) appends from many threads and prints one `ACK` line per
//! acknowledged append; the parent collects the lines and checks the store afterwards.
//!
//! An `ACK` line is `ACK <ns> <execution> <first sequence> <length> <tag>`, where `<ns>`
//! is the CLOCK_MONOTONIC reading (`monotonic_ns`) taken as soon as the append returned
//! `Ok`. The clock is system-wide, so the parent compares it with its own readings:
//! `power_cut.rs` counts only appends that returned before it issued the shutdown.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use execlog::*;

pub const EXECUTIONS: u64 = 24;
const WRITERS: u64 = 16;

/// Small segments (many rolls) unless `EXECLOG_SEGMENT_BYTES` asks for others (large
/// ones exercise zeroing ahead inside a segment).
pub fn options() -> Options {
    let bytes = std::env::var("EXECLOG_SEGMENT_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256 * 1024);
    let write_path = match std::env::var("EXECLOG_WRITE_PATH").as_deref() {
        Ok("grow") => WritePath::Grow,
        Ok("fallocate") => WritePath::Fallocate,
        Ok("zeros") | Err(_) => WritePath::ZerosAhead,
        Ok(other) => panic!("EXECLOG_WRITE_PATH={other}: expected zeros, grow or fallocate"),
    };
    let mut options = Options::default()
        .segment_size_bytes(bytes)
        .write_path(write_path);
    // Groups this large grow the file (`Options::grow_group_min_bytes`).
    if let Some(min) = std::env::var("EXECLOG_GROW_MIN_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        options = options.grow_group_min_bytes(min);
    }
    options
}

/// The content of event `i` of an append tagged `tag`: every field derives from the
/// tag, so equal events prove identical content.
pub fn event(tag: &str, len: usize, i: usize) -> ExecutionEventData {
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

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the machine (std's
/// `Instant` reads it too on Linux, but offers no value comparable across processes).
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap() * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap()
}

/// The child's body: append until killed (or until the file system fails).
pub fn child(dir: &Path) {
    let Ok(store) = LogStore::open_with(dir, options()) else {
        return;
    };
    let store = Arc::new(store);
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
                    // After a power cut appends fail: stop quietly.
                    let Ok(first) = futures::executor::block_on(first) else {
                        return;
                    };
                    // Read before waiting for the output lock: when the append returned.
                    let at = monotonic_ns();
                    let mut out = out.lock();
                    if writeln!(out, "ACK {at} {e} {first} {len} {tag}").is_err()
                        || out.flush().is_err()
                    {
                        return;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// One acknowledged append.
pub struct Ack {
    /// CLOCK_MONOTONIC (`monotonic_ns`) when the append returned.
    pub at_ns: u64,
    pub first: u64,
    pub len: usize,
    pub tag: String,
}

/// Acknowledged appends per execution.
pub type Acks = HashMap<String, Vec<Ack>>;

/// Starts the child writer: this test binary, running only `test_name`, with
/// `env_var` set to the store directory.
pub fn spawn(test_name: &str, env_var: &str, dir: &Path, segment_bytes: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(env_var, dir)
        .env("EXECLOG_SEGMENT_BYTES", segment_bytes.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Reads the child's acknowledgements until its stdout closes.
pub fn collect_acks(child: &mut Child) -> std::thread::JoinHandle<Vec<String>> {
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
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
    })
}

/// An `ACK` line as its execution and acknowledged append.
fn parse(line: &str) -> (String, Ack) {
    let parts: Vec<&str> = line.splitn(6, ' ').collect();
    assert!(
        parts.len() == 6 && parts[0] == "ACK",
        "bad ACK line {line:?}"
    );
    let ack = Ack {
        at_ns: parts[1].parse().unwrap(),
        first: parts[3].parse().unwrap(),
        len: parts[4].parse().unwrap(),
        tag: parts[5].to_string(),
    };
    (parts[2].to_string(), ack)
}

/// Adds `lines` to `acks`.
pub fn record(lines: &[String], acks: &mut Acks) {
    for l in lines {
        let (e, a) = parse(l);
        acks.entry(e).or_default().push(a);
    }
}

/// Adds to `counted` the appends of `lines` that returned before `cutoff_ns`
/// (CLOCK_MONOTONIC), to `excluded` the others.
pub fn record_before(lines: &[String], cutoff_ns: u64, counted: &mut Acks, excluded: &mut Acks) {
    for l in lines {
        let (e, a) = parse(l);
        let to = if a.at_ns < cutoff_ns {
            &mut *counted
        } else {
            &mut *excluded
        };
        to.entry(e).or_default().push(a);
    }
}

/// Whether every event of `a` is in `events` (an execution's), at its sequence, with
/// its content.
fn present(events: &[StoredEvent], a: &Ack) -> bool {
    (0..a.len).all(|k| {
        events.get(a.first as usize - 1 + k).map(|ev| &ev.event) == Some(&event(&a.tag, a.len, k))
    })
}

/// How many appends of `acks` are not wholly in `store`: for appends that were not
/// acknowledged in time, where absence is allowed and only reported.
pub fn count_missing(store: &LogStore, acks: &Acks) -> Result<usize, String> {
    let mut missing = 0;
    for (e, list) in acks {
        let events = store
            .load_events_blocking(&ExecutionId::from(e.as_str()))
            .map_err(|e| e.to_string())?;
        missing += list.iter().filter(|a| !present(&events, a)).count();
    }
    Ok(missing)
}

/// Opens the store and checks: sequences contiguous, no partial batch, every
/// acknowledged event present with identical content.
pub fn verify(dir: &Path, acks: &Acks) -> Result<LogStore, String> {
    let store = LogStore::open_with(dir, options()).map_err(|e| format!("reopen failed: {e}"))?;
    for x in 0..EXECUTIONS {
        let e = ExecutionId::from(format!("exec-{x}"));
        let events = store.load_events_blocking(&e).map_err(|e| e.to_string())?;
        for (i, ev) in events.iter().enumerate() {
            if ev.sequence != i as u64 + 1 {
                return Err(format!("{e}: sequence gap at {}", i + 1));
            }
        }
        let mut i = 0;
        while i < events.len() {
            let (tag, first_i, len) =
                batch_tag(&events[i].event).ok_or_else(|| format!("{e}: foreign event"))?;
            if first_i != 0 {
                return Err(format!("{e}: batch {tag} starts mid-way at {}", i + 1));
            }
            for k in 0..len {
                let got = events.get(i + k).and_then(|ev| batch_tag(&ev.event));
                if got != Some((tag.clone(), k, len)) {
                    return Err(format!("{e}: partial batch {tag}"));
                }
            }
            i += len;
        }
        for a in acks.get(e.as_str()).map(Vec::as_slice).unwrap_or_default() {
            for k in 0..a.len {
                let got = events.get(a.first as usize - 1 + k).map(|ev| &ev.event);
                if got != Some(&event(&a.tag, a.len, k)) {
                    let found = events
                        .get(a.first as usize - 1 + k)
                        .map(|ev| batch_tag(&ev.event));
                    return Err(format!(
                        "{e}: acknowledged sequence {} ({}, batch of {}) lost: holds {} events, found {found:?}; recovery {:?}",
                        a.first as usize + k,
                        a.tag,
                        a.len,
                        events.len(),
                        store.recovery_report()
                    ));
                }
            }
        }
    }
    Ok(store)
}

/// Appends one event to `exec-0` and checks it lands at the next sequence.
pub fn append_continues(store: &LogStore, tag: &str, acks: &mut Acks) -> Result<(), String> {
    let e = ExecutionId::from("exec-0");
    let t = TenantId::from("tenant-0");
    let next = store
        .get_latest_sequence_blocking(&e)
        .map_err(|e| e.to_string())?
        .unwrap_or(0)
        + 1;
    let got = store
        .append_blocking(&e, &t, event(tag, 1, 0))
        .map_err(|e| e.to_string())?;
    if got != next {
        return Err(format!(
            "append after recovery got sequence {got}, expected {next}"
        ));
    }
    acks.entry(e.to_string()).or_default().push(Ack {
        at_ns: monotonic_ns(),
        first: next,
        len: 1,
        tag: tag.to_string(),
    });
    Ok(())
}
