//! The crash-test writer shared by `crash_kill.rs` and `power_cut.rs`: a child process
//! (the test binary re-run) appends from many threads and prints one `ACK` line per
//! acknowledged append; the parent collects the lines and checks the store afterwards.
//!
//! An `ACK` line is `ACK <ns> <execution> <first sequence> <length> <tag>`, where `<ns>`
//! is the CLOCK_MONOTONIC reading (`monotonic_ns`) taken as soon as the append returned
//! `Ok`. The clock is system-wide, so the parent compares it with its own readings:
//! `power_cut.rs` counts only appends that returned before it issued the shutdown.
//!
//! Some appends are guarded (issue 13): keyed (the idempotency key is the tag),
//! conditional (`Exactly` the latest sequence the writer read), or both. Before a keyed
//! append starts, the writer prints `TRY <execution> <length> <expected> <tag>`
//! (`<expected>`: `any` or the number), so that the parent can retry it after the crash,
//! acknowledged or not (`retry_keyed`). A conditional append refused with
//! `WrongExpectedSequence` is not acknowledged (a keyed one is reported as `NAK <tag>`)
//! and the writer goes on. Now and then the
//! writer retries an acknowledged keyed append at once; anything the writer finds
//! wrong with a guarded append's answer it prints as a `BAD` line (`assert_no_bad`).

use std::collections::{HashMap, HashSet};
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
    // Running checkpoints this far apart leave sealed segments after the newest one,
    // with their sidecars, for a reopen to take (`tests/power_cut.rs`).
    if let Some(bytes) = std::env::var("EXECLOG_CHECKPOINT_INTERVAL_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        options = options.index_checkpoint_interval_bytes(Some(bytes));
    }
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
    child_erasing(dir, false);
}

/// [`child`], and with `erase`, a thread that deletes and erases executions of its own
/// ([`check_doomed`] checks them after a cut).
pub fn child_erasing(dir: &Path, erase: bool) {
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
                    // Half plain, a quarter keyed, an eighth conditional, an eighth both.
                    let mode = (x >> 32) % 8;
                    let (keyed, conditional) = (matches!(mode, 4 | 5 | 7), matches!(mode, 6 | 7));
                    let first = if keyed || conditional {
                        let Some(first) =
                            guarded(&store, &out, &e, &t, events, &tag, keyed, conditional, x)
                        else {
                            return;
                        };
                        match first {
                            Some(first) => first,
                            // Refused: a wrong expectation; nothing to acknowledge.
                            None => continue,
                        }
                    } else {
                        let first = if len == 1 {
                            store.append(&e, &t, events[0].clone())
                        } else {
                            store.append_batch(&e, &t, events)
                        };
                        // After a power cut appends fail: stop quietly.
                        let Ok(first) = futures::executor::block_on(first) else {
                            return;
                        };
                        first
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
    let doomed = erase.then(|| {
        let (store, out) = (store.clone(), out.clone());
        std::thread::spawn(move || doomed(&store, &out, nonce))
    });
    for t in threads.into_iter().chain(doomed) {
        let _ = t.join();
    }
}

/// The canary text in the events of doomed execution `k` of writer `nonce`.
pub fn doomed_canary(nonce: &str, k: &str) -> String {
    format!("ERASE-ME-{nonce}-{k};")
}

/// With `erase`: executions `doomed-{nonce}-{k}` get two batches of
/// canary events, then are deleted (`GONE {at} {id}` once the deletion returned); at
/// most every 50 ms an erasure pass runs (`ERASED {at}` once it returned: every
/// execution gone before it is erased from the files).
fn doomed(store: &LogStore, out: &parking_lot::Mutex<std::io::Stdout>, nonce: u32) {
    let t = TenantId::from("doomed");
    let mut last_pass = std::time::Instant::now();
    for k in 0u64.. {
        let e = ExecutionId::from(format!("doomed-{nonce}-{k}"));
        let canary = doomed_canary(&nonce.to_string(), &k.to_string());
        for b in 0..2 {
            let events = (0..10).map(|i| event(&canary, 10, i + b)).collect();
            if store.append_batch_blocking(&e, &t, events).is_err() {
                return;
            }
        }
        if store.delete_execution_blocking(&e).is_err() {
            return;
        }
        if say(out, &format!("GONE {} {e}", monotonic_ns())).is_none() {
            return;
        }
        if last_pass.elapsed() >= std::time::Duration::from_millis(50) {
            if store.compact_now().is_err() {
                return;
            }
            last_pass = std::time::Instant::now();
            if say(out, &format!("ERASED {}", monotonic_ns())).is_none() {
                return;
            }
        }
    }
}

/// Checks the doomed executions (`child_erasing`) after a cut at `cutoff_ns`:
/// every one whose deletion returned before it is still deleted, and the canaries of
/// those gone before the last erasure pass that returned before it are in no file of
/// `dir`. Returns (deletions checked, executions checked as erased).
pub fn check_doomed(
    store: &LogStore,
    dir: &Path,
    lines: &[String],
    cutoff_ns: u64,
) -> Result<(usize, usize), String> {
    let stamp = |l: &str| l.split(' ').nth(1).and_then(|s| s.parse::<u64>().ok());
    let mut gone = Vec::new();
    let mut erased = 0;
    for l in lines {
        let before = stamp(l).is_some_and(|at| at < cutoff_ns);
        if let Some(rest) = l.strip_prefix("GONE ").filter(|_| before) {
            gone.push(rest.split(' ').nth(1).unwrap_or_default().to_string());
        } else if l.starts_with("ERASED ") && before {
            erased = gone.len();
        }
    }
    let t = TenantId::from("doomed");
    for e in &gone {
        let id = ExecutionId::from(e.as_str());
        match store.append_blocking(&id, &t, event("after", 1, 0)) {
            Err(Error::Deleted) => {}
            other => return Err(format!("{e}: deleted before the cut, now {other:?}")),
        }
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        match std::fs::read(&path) {
            Ok(bytes) => files.push((path, bytes)),
            // A running checkpoint's tmp file renamed away since the listing; a
            // checkpoint holds no event content.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    for e in &gone[..erased] {
        let mut parts = e.rsplitn(3, '-');
        let (k, nonce) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let canary = doomed_canary(nonce, k);
        for (path, bytes) in &files {
            if bytes.windows(canary.len()).any(|w| w == canary.as_bytes()) {
                return Err(format!(
                    "{e}: erased before the cut, found in {}",
                    path.display()
                ));
            }
        }
    }
    Ok((gone.len(), erased))
}

/// Prints `line` (and flushes); `None` when stdout is gone.
fn say(out: &parking_lot::Mutex<std::io::Stdout>, line: &str) -> Option<()> {
    let mut out = out.lock();
    (writeln!(out, "{line}").is_ok() && out.flush().is_ok()).then_some(())
}

/// A guarded append of the child: `None` to stop (the store or stdout failed),
/// `Some(None)` when refused for a wrong expectation, else `Some(Some(first))`.
#[allow(clippy::too_many_arguments)]
fn guarded(
    store: &LogStore,
    out: &parking_lot::Mutex<std::io::Stdout>,
    e: &ExecutionId,
    t: &TenantId,
    events: Vec<ExecutionEventData>,
    tag: &str,
    keyed: bool,
    conditional: bool,
    x: u64,
) -> Option<Option<u64>> {
    let len = events.len() as u64;
    let latest = if conditional {
        Some(store.get_latest_sequence_blocking(e).ok()?.unwrap_or(0))
    } else {
        None
    };
    let options = AppendOptions {
        expected: latest.map_or(ExpectedSequence::Any, ExpectedSequence::Exactly),
        idempotency_key: keyed.then(|| tag.to_string()),
    };
    if keyed {
        let expected = latest.map_or("any".to_string(), |n| n.to_string());
        say(out, &format!("TRY {e} {len} {expected} {tag}"))?;
    }
    let got = if x.is_multiple_of(2) {
        futures::executor::block_on(store.append_with(e, t, events.clone(), options.clone()))
            .map_err(|err| err.downcast::<Error>().map_err(|e| e.to_string()))
    } else {
        store
            .append_with_blocking(e, t, events.clone(), options.clone())
            .map_err(Ok)
    };
    match got {
        Ok(o) => {
            let want_first = latest.map_or(o.first_sequence, |n| n + 1);
            if o.replayed
                || o.first_sequence != want_first
                || o.last_sequence + 1 - o.first_sequence != len
            {
                say(
                    out,
                    &format!("BAD {tag}: stored as {o:?}, expected after {latest:?}"),
                )?;
            }
            if keyed && (x >> 40).is_multiple_of(4) {
                // Retry at once: a replay of the same outcome.
                let again = store.append_with_blocking(e, t, events, options);
                match again {
                    Ok(a)
                        if a == AppendOutcome {
                            replayed: true,
                            ..o
                        } => {}
                    // A power cut or a poisoned store: stop.
                    Err(Error::Poisoned { .. } | Error::Io { .. } | Error::Closed) => return None,
                    other => say(
                        out,
                        &format!("BAD {tag}: retry of {o:?} answered {other:?}"),
                    )?,
                }
            }
            Some(Some(o.first_sequence))
        }
        Err(Ok(Error::WrongExpectedSequence { expected, actual })) => {
            if !conditional
                || expected != options.expected
                || actual.unwrap_or(0) <= latest.unwrap_or(0)
            {
                say(
                    out,
                    &format!(
                        "BAD {tag}: refused with {expected:?}/{actual:?} after reading {latest:?}"
                    ),
                )?;
            }
            if keyed {
                say(out, &format!("NAK {tag}"))?;
            }
            Some(None)
        }
        Err(Ok(Error::IdempotencyConflict)) => {
            say(out, &format!("BAD {tag}: a fresh key conflicted"))?;
            Some(None)
        }
        // After a power cut appends fail: stop quietly.
        Err(_) => None,
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
    spawn_with(test_name, (env_var, dir), segment_bytes, &[])
}

/// [`spawn`] with more environment variables for the child.
pub fn spawn_with(
    test_name: &str,
    (env_var, dir): (&str, &Path),
    segment_bytes: u64,
    more: &[(&str, String)],
) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(env_var, dir)
        .env("EXECLOG_SEGMENT_BYTES", segment_bytes.to_string())
        .envs(more.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Reads the child's `ACK`, `TRY`, `NAK`, `BAD`, `GONE` and `ERASED` lines until its
/// stdout closes.
pub fn collect_acks(child: &mut Child) -> std::thread::JoinHandle<Vec<String>> {
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            // A line cut by the kill has no newline: its append may not have returned.
            if line.ends_with('\n')
                && ["ACK ", "TRY ", "NAK ", "BAD ", "GONE ", "ERASED "]
                    .iter()
                    .any(|p| line.starts_with(p))
            {
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

/// Adds the `ACK` lines of `lines` to `acks`.
pub fn record(lines: &[String], acks: &mut Acks) {
    for l in lines.iter().filter(|l| l.starts_with("ACK ")) {
        let (e, a) = parse(l);
        acks.entry(e).or_default().push(a);
    }
}

/// Adds to `counted` the appends of `lines` that returned before `cutoff_ns`
/// (CLOCK_MONOTONIC), to `excluded` the others.
pub fn record_before(lines: &[String], cutoff_ns: u64, counted: &mut Acks, excluded: &mut Acks) {
    for l in lines.iter().filter(|l| l.starts_with("ACK ")) {
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
    verify_with(dir, acks, options())
}

/// [`verify`], reopening with `options`.
pub fn verify_with(dir: &Path, acks: &Acks, options: Options) -> Result<LogStore, String> {
    let store = LogStore::open_with(dir, options).map_err(|e| format!("reopen failed: {e}"))?;
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

/// Fails with the child's `BAD` lines, if it printed any.
pub fn assert_no_bad(lines: &[String]) -> Result<(), String> {
    let bad: Vec<_> = lines.iter().filter(|l| l.starts_with("BAD ")).collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the writer saw wrong answers to guarded appends: {bad:?}"
        ))
    }
}

/// A keyed append the child started (`TRY` line).
pub struct Try {
    pub execution: String,
    pub len: usize,
    pub expected: ExpectedSequence,
    pub tag: String,
}

impl Try {
    fn options(&self) -> AppendOptions {
        AppendOptions {
            expected: self.expected,
            idempotency_key: Some(self.tag.clone()),
        }
    }

    fn events(&self) -> Vec<ExecutionEventData> {
        (0..self.len)
            .map(|i| event(&self.tag, self.len, i))
            .collect()
    }
}

/// The `TRY` lines of `lines`.
pub fn tries(lines: &[String]) -> Vec<Try> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("TRY "))
        .map(|l| {
            let parts: Vec<&str> = l.splitn(4, ' ').collect();
            assert_eq!(parts.len(), 4, "bad TRY line {l:?}");
            Try {
                execution: parts[0].to_string(),
                len: parts[1].parse().unwrap(),
                expected: match parts[2] {
                    "any" => ExpectedSequence::Any,
                    n => ExpectedSequence::Exactly(n.parse().unwrap()),
                },
                tag: parts[3].to_string(),
            }
        })
        .collect()
}

/// Where an append tagged `tag` is in `events`: `(first sequence, events found)`.
fn find(events: &[StoredEvent], tag: &str) -> Option<(u64, usize)> {
    let mut found = events
        .iter()
        .filter(|ev| batch_tag(&ev.event).is_some_and(|(t, _, _)| t == tag));
    let first = found.next()?.sequence;
    Some((first, 1 + found.count()))
}

/// The tenant the child writes `execution` as.
fn tenant_of(execution: &str) -> TenantId {
    let x: u64 = execution.trim_start_matches("exec-").parse().unwrap();
    TenantId::from(format!("tenant-{}", x % 3))
}

/// What `retry_keyed` retried.
#[derive(Default, Debug, Clone, Copy)]
pub struct Retried {
    /// Acknowledged keyed appends, replayed.
    pub acknowledged: usize,
    /// Unacknowledged ones found stored (replayed).
    pub replayed: usize,
    /// Unacknowledged ones not found, stored by the retry.
    pub stored: usize,
    /// Unacknowledged conditional ones not found, refused for their expectation.
    pub refused: usize,
}

impl Retried {
    pub fn add(&mut self, other: Retried) {
        self.acknowledged += other.acknowledged;
        self.replayed += other.replayed;
        self.stored += other.stored;
        self.refused += other.refused;
    }
}

/// An acknowledged keyed append, kept for retries in later trials.
pub struct Keyed {
    pub attempt: Try,
    pub first: u64,
}

/// The latest sequence of every execution the child writes (0: none).
pub fn latest_all(store: &LogStore) -> Result<Vec<u64>, String> {
    (0..EXECUTIONS)
        .map(|x| {
            store
                .get_latest_sequence_blocking(&ExecutionId::from(format!("exec-{x}")))
                .map(|s| s.unwrap_or(0))
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// Where each append stored after `start` (latest sequences before the trial) is:
/// tag -> (execution, first sequence, events found).
fn tail_index(
    store: &LogStore,
    start: &[u64],
) -> Result<HashMap<String, (u64, u64, usize)>, String> {
    let mut index: HashMap<String, (u64, u64, usize)> = HashMap::new();
    for (x, &from) in start.iter().enumerate() {
        let e = ExecutionId::from(format!("exec-{x}"));
        let tail = store
            .read_range_blocking(&e, from, usize::MAX)
            .map_err(|e| e.to_string())?;
        for ev in tail {
            if let Some((tag, _, _)) = batch_tag(&ev.event) {
                index.entry(tag).or_insert((x as u64, ev.sequence, 0)).2 += 1;
            }
        }
    }
    Ok(index)
}

/// Retries, after recovery, every keyed append the child started (`TRY` lines of
/// `lines`) and `older` of those acknowledged in earlier trials (`keyed`, a different
/// sample each `trial`):
/// - an acknowledged one must replay its acknowledged outcome and store nothing;
/// - one the child saw refused (`NAK`) must have left nothing;
/// - any other (unacknowledged) may replay only events that were there, at the
///   sequences it names, may store only events that were not there, or be refused for
///   its now stale expectation with nothing there; its events are then in the store
///   once, or (refused) not at all.
///
/// `start` holds the latest sequences from before the trial. The keyed appends
/// acknowledged now (by the child, or by a retry that stored) are added to `keyed`,
/// those stored by a retry to `acks` as well.
pub fn retry_keyed(
    store: &LogStore,
    lines: &[String],
    start: &[u64],
    acks: &mut Acks,
    keyed: &mut Vec<Keyed>,
    older: usize,
    trial: usize,
) -> Result<Retried, String> {
    let mut retried = Retried::default();
    let acked: HashMap<&str, u64> = acks
        .values()
        .flatten()
        .map(|a| (a.tag.as_str(), a.first))
        .collect();
    let refused: HashSet<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("NAK "))
        .collect();
    let tail = tail_index(store, start)?;
    for tag in &refused {
        if let Some(found) = tail.get(*tag) {
            return Err(format!(
                "keyed append {tag} was refused, but the store holds {found:?}"
            ));
        }
    }
    let old = keyed.len();
    let mut unacked = Vec::new();
    for tr in tries(lines) {
        if let Some(&first) = acked.get(tr.tag.as_str()) {
            keyed.push(Keyed { attempt: tr, first });
        } else if !refused.contains(tr.tag.as_str()) {
            unacked.push(tr);
        }
    }
    let before = latest_all(store)?;
    let every = (old / older.max(1)).max(1);
    let sample = keyed[..old].iter().skip(trial % every).step_by(every);
    for k in sample.chain(&keyed[old..]) {
        let tr = &k.attempt;
        let e = ExecutionId::from(tr.execution.as_str());
        let got =
            store.append_with_blocking(&e, &tenant_of(&tr.execution), tr.events(), tr.options());
        let want = AppendOutcome {
            first_sequence: k.first,
            last_sequence: k.first + tr.len as u64 - 1,
            replayed: true,
        };
        if got.as_ref().ok() != Some(&want) {
            return Err(format!(
                "{e}: retry of keyed append {} acknowledged at {}: answered {got:?}",
                tr.tag, k.first
            ));
        }
        retried.acknowledged += 1;
    }
    if latest_all(store)? != before {
        return Err("retries of acknowledged keyed appends stored events".into());
    }
    for tr in unacked {
        let e = ExecutionId::from(tr.execution.as_str());
        let ctx = format!(
            "{e}: retry of unacknowledged keyed append {} ({} events)",
            tr.tag, tr.len
        );
        let there = tail.get(&tr.tag).map(|&(_, first, n)| (first, n));
        let latest = store
            .get_latest_sequence_blocking(&e)
            .map_err(|e| e.to_string())?;
        let got =
            store.append_with_blocking(&e, &tenant_of(&tr.execution), tr.events(), tr.options());
        let len = tr.len as u64;
        let stored_at = match got {
            Ok(o) if o.replayed => {
                if there != Some((o.first_sequence, tr.len))
                    || o.last_sequence + 1 != o.first_sequence + len
                {
                    return Err(format!(
                        "{ctx}: answered {o:?}, but the store held {there:?} of it"
                    ));
                }
                retried.replayed += 1;
                Some(o.first_sequence)
            }
            Ok(o) => {
                if there.is_some()
                    || o.first_sequence != latest.unwrap_or(0) + 1
                    || o.last_sequence + 1 != o.first_sequence + len
                {
                    return Err(format!(
                        "{ctx}: stored as {o:?}, but the store held {there:?} of it, latest {latest:?} (stored twice?)"
                    ));
                }
                retried.stored += 1;
                Some(o.first_sequence)
            }
            Err(Error::WrongExpectedSequence { actual, .. }) => {
                if there.is_some() || actual != latest || tr.expected == ExpectedSequence::Any {
                    return Err(format!(
                        "{ctx}: refused (actual {actual:?}), the store held {there:?} of it, latest {latest:?}"
                    ));
                }
                retried.refused += 1;
                None
            }
            Err(err) => return Err(format!("{ctx}: {err:?}")),
        };
        let now = store
            .get_latest_sequence_blocking(&e)
            .map_err(|e| e.to_string())?;
        match stored_at {
            Some(first) => {
                let got = store
                    .read_range_blocking(&e, first - 1, tr.len)
                    .map_err(|e| e.to_string())?;
                let events: Vec<_> = got.into_iter().map(|ev| ev.event).collect();
                if events != tr.events() || (there.is_none() && now != Some(first + len - 1)) {
                    return Err(format!(
                        "{ctx}: after the retry the store does not hold it once"
                    ));
                }
                acks.entry(tr.execution.clone()).or_default().push(Ack {
                    at_ns: monotonic_ns(),
                    first,
                    len: tr.len,
                    tag: tr.tag.clone(),
                });
                keyed.push(Keyed { attempt: tr, first });
            }
            None if now != latest => return Err(format!("{ctx}: refused, but stored events")),
            None => {}
        }
    }
    Ok(retried)
}
