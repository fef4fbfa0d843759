//! `execlog export` and `execlog import`, run for real: an export imported into an
//! empty store prints the same `events`, `list` and `tenants` and loads the same events
//! (timestamps to the nanosecond); the filters; every kind of bad input stops the
//! import at its line with exit 1, leaving what came before and nothing of the
//! execution it interrupts; an execution the destination holds is refused, never
//! merged; a long execution goes in chunks; an event JSON cannot carry stops the
//! export. The format is docs/FORMAT.md, "Export format (JSON lines)".

// The shared helpers unwrap (as every test file that includes them allows); this
// file's own code uses `expect`.
#[allow(clippy::unwrap_used)]
mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{every_variant, output_with_stdin, step_event};
use execlog::{ExecutionEventData, ExecutionId, LogStore, StoredEvent, TenantId};

fn execlog(args: &[&str], stdin: &str) -> Output {
    output_with_stdin(
        Command::new(env!("CARGO_BIN_EXE_execlog")).args(args),
        stdin,
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(dir: &Path) -> &str {
    dir.to_str().expect("temporary paths are UTF-8")
}

/// Runs a command that must succeed; returns its stdout.
fn ok(args: &[&str], stdin: &str) -> String {
    let out = execlog(args, stdin);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Asserts exit `code`, one line on stderr without a panic, and returns that line.
fn fails(out: &Output, code: i32) -> String {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("execlog: ") && !err.contains("panicked"),
        "{err}"
    );
    err
}

fn time(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("a test timestamp")
        .with_timezone(&Utc)
}

/// A store of three tenants: five executions appended interleaved (so creation order
/// is not id order), every event variant, one execution of 2,500 events (over two
/// pages of export), and one imported with chosen timestamps: whole seconds, trailing
/// zeros, a single nanosecond.
fn source_store(dir: &Path) {
    let store = LogStore::open(dir).expect("open the source");
    let tenants = ["acme", "globex", "initech"].map(TenantId::from);
    let runs = ["run-z", "run-a", "run-m", "run-b", "run-long"].map(ExecutionId::from);
    for (i, event) in every_variant().into_iter().enumerate() {
        for (k, run) in runs.iter().take(4).enumerate() {
            if (i + k) % 3 != 0 || i < 2 {
                let tenant = &tenants[k % 3];
                store
                    .append_blocking(run, tenant, event.clone())
                    .expect("append");
            }
        }
    }
    for chunk in (1..=2500).collect::<Vec<u64>>().chunks(100) {
        let events = chunk.iter().map(|&n| step_event(n)).collect();
        store
            .append_batch_blocking(&runs[4], &tenants[1], events)
            .expect("append a batch");
    }
    let timed = ExecutionId::from("run-timed");
    let times = [
        "1999-12-31T23:59:59.999999999Z",
        "2001-02-03T04:05:06Z",
        "2001-02-03T04:05:06.100Z",
        "2001-02-03T04:05:06.100000001Z",
        "2001-02-03T04:05:06.120000Z",
    ];
    let events = times
        .iter()
        .zip(1..)
        .map(|(t, sequence)| StoredEvent {
            sequence,
            execution_id: timed.clone(),
            tenant_id: tenants[2].clone(),
            event: step_event(sequence),
            timestamp: time(t),
        })
        .collect();
    store.import_blocking(events).expect("import the timed run");
    store.close().expect("close the source");
}

/// Asserts `got == want`, showing the first line that differs (not every line).
fn same_text(got: &str, want: &str, what: &str) {
    if got == want {
        return;
    }
    let (g, w): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
    let at = g
        .iter()
        .zip(&w)
        .position(|(g, w)| g != w)
        .unwrap_or(g.len().min(w.len()));
    panic!(
        "{what}: line {} differs (of {} and {}):\n got: {:?}\nwant: {:?}",
        at + 1,
        g.len(),
        w.len(),
        g.get(at),
        w.get(at)
    );
}

/// Asserts that two stores' executions hold the same events, in the same order,
/// showing the first event that differs.
fn same_events(
    got: &[(ExecutionId, Vec<StoredEvent>)],
    want: &[(ExecutionId, Vec<StoredEvent>)],
    what: &str,
) {
    let ids = |all: &[(ExecutionId, Vec<StoredEvent>)]| -> Vec<ExecutionId> {
        all.iter().map(|(id, _)| id.clone()).collect()
    };
    assert_eq!(ids(got), ids(want), "{what}: executions");
    for ((id, g), (_, w)) in got.iter().zip(want) {
        assert_eq!(g.len(), w.len(), "{what}: events of {id}");
        if let Some((g, w)) = g.iter().zip(w).find(|(g, w)| g != w) {
            panic!(
                "{what}: event {} of {id} differs:\n got: {g:?}\nwant: {w:?}",
                w.sequence
            );
        }
    }
}

/// Opens a store this process closed a moment ago for writing again. The lock
/// belongs to the open file, and a child process another test thread is starting holds
/// a copy of every descriptor until its exec: retry `Locked` briefly.
fn open_writer(dir: &Path) -> LogStore {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match LogStore::open(dir) {
            Err(execlog::Error::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            opened => return opened.expect("open for writing"),
        }
    }
}

/// Every execution of a store, oldest first, with what the library loads of it.
fn loaded(dir: &Path) -> Vec<(ExecutionId, Vec<StoredEvent>)> {
    let store = LogStore::open_reader(dir).expect("open as a reader");
    let all = store.all_executions_blocking().expect("list");
    all.into_iter()
        .map(|(id, _)| {
            let events = store.load_events_blocking(&id).expect("load");
            (id, events)
        })
        .collect()
}

/// What `events` prints for every execution, and `list` and `tenants` print.
fn printed(dir: &Path) -> Vec<String> {
    let d = path(dir);
    let mut out = vec![
        ok(&["list", d, "--limit", "1000"], ""),
        ok(&["tenants", d], ""),
    ];
    for (id, _) in loaded(dir) {
        out.push(ok(&["events", d, id.as_str()], ""));
    }
    out
}

#[test]
fn an_export_imported_into_an_empty_store_prints_the_same_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (source, copy) = (dir.path().join("source"), dir.path().join("new/copy"));
    source_store(&source);
    let export = ok(&["export", path(&source)], "");

    let lines: Vec<&str> = export.lines().collect();
    assert_eq!(lines[0], r#"{"execlog_export":1}"#);
    let total: usize = loaded(&source).iter().map(|(_, e)| e.len()).sum();
    let end = format!(r#"{{"execlog_export_end":{{"executions":6,"events":{total}}}}}"#);
    assert_eq!(lines.last(), Some(&end.as_str()));
    // Between them: exactly what `events` prints, execution after execution, oldest
    // first.
    let events: String = printed(&source)[2..].concat();
    same_text(
        &(lines[1..lines.len() - 1].join("\n") + "\n"),
        &events,
        "export vs events",
    );

    let out = execlog(&["import", path(&copy)], &export);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("imported 6 executions, {total} events")),
        "{}",
        text(&out.stderr)
    );
    same_text(
        &printed(&copy).concat(),
        &printed(&source).concat(),
        "list, tenants, events",
    );
    // Every event, timestamps to the nanosecond, and the order of creation.
    let (want, got) = (loaded(&source), loaded(&copy));
    same_events(&got, &want, "the copy");
    let timed = &got[5].1;
    assert_eq!(timed[0].timestamp, time("1999-12-31T23:59:59.999999999Z"));
    assert_eq!(timed[3].timestamp.timestamp_subsec_nanos(), 100_000_001);
    // The copy exports to the same bytes.
    same_text(
        &ok(&["export", path(&copy)], ""),
        &export,
        "the copy's export",
    );
}

#[test]
fn export_takes_one_tenant_or_one_execution() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("source");
    source_store(&source);
    let s = path(&source);
    // A writer holds the store meanwhile: export reads it as a reader, without the lock.
    let writer = open_writer(&source);
    let executions_of = |export: &str| -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for line in export.lines().skip(1) {
            let v: serde_json::Value = serde_json::from_str(line).expect("JSON");
            if let Some(id) = v["execution_id"].as_str() {
                assert_eq!(v["sequence"] == 1, !ids.contains(&id.to_string()));
                if v["sequence"] == 1 {
                    ids.push(id.to_string());
                }
            }
        }
        ids
    };

    // acme owns run-z and run-b (created in that order).
    let acme = ok(&["export", s, "--tenant", "acme"], "");
    assert_eq!(executions_of(&acme), ["run-z", "run-b"]);
    let lines: Vec<&str> = acme.lines().collect();
    let events = &lines[1..lines.len() - 1];
    assert!(events.iter().all(|l| l.contains(r#""tenant_id":"acme""#)));
    let copy = dir.path().join("acme");
    ok(&["import", path(&copy)], &acme);
    let d = path(&copy);
    assert_eq!(
        ok(&["list", d, "--tenant", "acme"], ""),
        ok(&["list", s, "--tenant", "acme"], "")
    );
    let out = execlog(&["events", d, "run-a"], "");
    assert_eq!(out.status.code(), Some(3), "only acme's executions came");

    let one = ok(&["export", s, "--execution", "run-long"], "");
    assert_eq!(executions_of(&one), ["run-long"]);
    assert_eq!(one.lines().count(), 2502);
    let events = ok(&["events", s, "run-long"], "");
    assert!(one.contains(&events));

    // Not there: exit 3, nothing on stdout, as `events` and `list` do.
    for (flag, value, said) in [
        ("--tenant", "nobody", "no executions of tenant nobody"),
        ("--execution", "nope", "no execution nope"),
    ] {
        let out = execlog(&["export", s, flag, value], "");
        assert!(fails(&out, 3).contains(said), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "");
    }
    let out = execlog(
        &["export", s, "--tenant", "acme", "--execution", "run-z"],
        "",
    );
    assert_eq!(out.status.code(), Some(2), "one filter at a time");
    writer.close().expect("close the writer");
}

/// The source's export with line `n` (1-based) replaced by what `edit` makes of it
/// (`None` drops the line).
fn edited(export: &str, n: usize, edit: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    for (i, line) in export.lines().enumerate() {
        let line = if i + 1 == n {
            edit(line)
        } else {
            Some(line.to_string())
        };
        if let Some(line) = line {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// About the first half of `line`, cut at a character boundary.
fn first_half(line: &str) -> &str {
    let mut cut = line.len() / 2;
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    &line[..cut]
}

/// The line number of the event `sequence` of `execution` in an export.
fn line_of(export: &str, execution: &str, sequence: u64) -> usize {
    let needle = format!(r#"{{"sequence":{sequence},"execution_id":"{execution}""#);
    export
        .lines()
        .position(|l| l.starts_with(&needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("no event {sequence} of {execution}"))
}

#[test]
fn a_bad_line_stops_the_import_at_its_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("source");
    source_store(&source);
    let export = ok(&["export", path(&source)], "");
    let lines = export.lines().count();
    // run-m is the third execution: run-z and run-a come whole before it.
    let m2 = line_of(&export, "run-m", 2);
    let replace = |from: &'static str, to: &'static str| {
        move |l: &str| {
            assert!(l.contains(from), "{l}");
            Some(l.replacen(from, to, 1))
        }
    };
    type Edit = Box<dyn Fn(&str) -> Option<String>>;
    let cases: Vec<(&str, usize, Edit, &str)> = vec![
        (
            "malformed JSON",
            m2,
            Box::new(|l| Some(first_half(l).into())),
            "EOF while parsing",
        ),
        (
            "a missing field",
            m2,
            Box::new(replace(r#""sequence":2,"#, "")),
            "missing field `sequence`",
        ),
        (
            "an unknown field",
            m2,
            Box::new(replace(r#","timestamp""#, r#","time""#)),
            "unknown field `time`",
        ),
        (
            "an unknown event type",
            m2,
            Box::new(replace(r#""type":""#, r#""type":"x"#)),
            "unknown variant",
        ),
        (
            "a sequence gap",
            m2,
            Box::new(|_| None),
            "sequence 3 where 2 was due",
        ),
        (
            "a repeated sequence",
            m2,
            Box::new(replace(r#""sequence":2,"#, r#""sequence":1,"#)),
            "sequence 1 where 2 was due",
        ),
        (
            "another tenant",
            m2,
            Box::new(replace(r#""tenant_id":""#, r#""tenant_id":"x"#)),
            "an execution has one tenant",
        ),
        (
            "an earlier timestamp",
            m2,
            Box::new(replace(r#""timestamp":"2"#, r#""timestamp":"1"#)),
            "timed before",
        ),
        ("no header", 1, Box::new(|_| None), "not an execlog export"),
        (
            "a newer format",
            1,
            Box::new(|_| Some(r#"{"execlog_export":2}"#.into())),
            "export format version 2",
        ),
        (
            "a second header",
            m2,
            Box::new(|_| Some(r#"{"execlog_export":1}"#.into())),
            "a second header",
        ),
        (
            "no end line",
            lines,
            Box::new(|_| None),
            "without the export's end line",
        ),
        (
            "wrong counts",
            lines,
            Box::new(replace(r#""executions":6"#, r#""executions":7"#)),
            "lines were lost or added",
        ),
    ];
    for (case, n, edit, says) in cases {
        let input = edited(&export, n, edit);
        let copy = dir.path().join(case.replace(' ', "-"));
        let out = execlog(&["import", path(&copy)], &input);
        let err = fails(&out, 1);
        // The line named is the bad one; the input's end for a cut-short input.
        let named = if case == "no end line" {
            err.contains(&format!("ends at line {} without", lines - 1))
        } else {
            err.contains(&format!("line {n}:")) || err.contains(&format!("line {n},"))
        };
        assert!(named && err.contains(says), "{case}: {err}");
        // What came before the bad line stays, nothing of the execution it interrupts.
        assert_eq!(
            copy.exists(),
            n != 1,
            "{case}: input that is no export creates nothing"
        );
        let stay: &[&str] = match n {
            1 => &[],
            n if n == m2 => &["run-z", "run-a"],
            _ => &["run-z", "run-a", "run-m", "run-b", "run-long"],
        };
        let got: Vec<ExecutionId> = loaded_or_none(&copy)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            got,
            stay.iter()
                .map(|&s| ExecutionId::from(s))
                .collect::<Vec<_>>(),
            "{case}"
        );
        let kept = format!("kept in {}: {} whole", copy.display(), stay.len());
        assert!(err.contains(&kept) || stay.is_empty(), "{case}: {err}");
    }
    // More after the end line: everything was whole, nothing is imported of the last.
    let input = format!("{export}{{\"execlog_export\":1}}\n");
    let out = execlog(&["import", path(&dir.path().join("after-end"))], &input);
    assert!(fails(&out, 1).contains(&format!("line {}: more after the end line", lines + 1)));
}

/// The executions of a store, or none where no store was made.
fn loaded_or_none(dir: &Path) -> Vec<(ExecutionId, Vec<StoredEvent>)> {
    let has_segment = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        })
        .unwrap_or(false);
    if has_segment { loaded(dir) } else { Vec::new() }
}

#[test]
fn an_execution_the_destination_holds_is_refused_not_merged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("source");
    source_store(&source);
    let export = ok(&["export", path(&source)], "");
    let dest = dir.path().join("dest");
    // The destination already holds run-m (another history of it) and an unrelated run,
    // appended by `execlog append`: were this process to hold the store's lock even
    // briefly, a child another test thread starts could hold it on (see `open_writer`).
    let d = path(&dest);
    let json = |n| serde_json::to_string(&step_event(n)).expect("JSON") + "\n";
    let three = [1, 2, 3].map(json).concat();
    ok(
        &[
            "append",
            d,
            "--execution",
            "run-m",
            "--tenant",
            "mine",
            "--create",
        ],
        &three,
    );
    ok(
        &["append", d, "--execution", "other", "--tenant", "mine"],
        &json(9),
    );
    let before = loaded(&dest);

    let out = execlog(&["import", path(&dest)], &export);
    let err = fails(&out, 1);
    let m1 = line_of(&export, "run-m", 1);
    assert!(
        err.contains(&format!(
            "line {m1}: execution run-m is already in the destination (3 events)"
        )),
        "{err}"
    );
    assert!(err.contains("2 whole executions"), "{err}");
    let after = loaded(&dest);
    assert_eq!(after[..2], before[..], "run-m and other are as they were");
    let ids: Vec<&str> = after[2..].iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        ["run-z", "run-a"],
        "those before run-m came, none after"
    );

    // The same export again: its first execution is refused, nothing changes.
    let out = execlog(&["import", path(&dest)], &export);
    assert!(fails(&out, 1).contains("line 2: execution run-z is already in the destination"));
    assert_eq!(loaded(&dest), after);
}

#[test]
fn a_long_execution_goes_in_chunks_and_an_error_late_in_it_keeps_its_first_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("source");
    source_store(&source);
    let export = ok(&["export", path(&source), "--execution", "run-long"], "");
    // A bad line at event 2,345: the chunks of 1,000 before it stay, the rest does not.
    let bad = line_of(&export, "run-long", 2345);
    let input = edited(&export, bad, |l| {
        Some(l.replacen("\"sequence\"", "\"seq\"", 1))
    });
    let copy = dir.path().join("copy");
    let out = execlog(&["import", path(&copy), "--chunk-events", "1000"], &input);
    let err = fails(&out, 1);
    assert!(err.contains(&format!("line {bad}")), "{err}");
    assert!(
        err.contains("0 whole executions (0 events), and events 1..=2000 of execution run-long"),
        "{err}"
    );
    let got = loaded(&copy);
    assert_eq!(got.len(), 1);
    let want = &loaded(&source)[4];
    same_events(
        &[(want.0.clone(), want.1[..2000].to_vec())],
        &got,
        "the first chunks",
    );

    // Whole, with the same chunks: the same events.
    let copy = dir.path().join("whole");
    let out = execlog(&["import", path(&copy), "--chunk-events", "1000"], &export);
    assert!(out.status.success(), "{}", text(&out.stderr));
    same_events(&loaded(&copy), &loaded(&source)[4..5], "whole");
}

#[test]
fn an_event_json_cannot_carry_stops_the_export() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LogStore::open(dir.path()).expect("open");
    let (run, tenant) = (ExecutionId::from("run"), TenantId::from("t"));
    store
        .append_blocking(&run, &tenant, step_event(1))
        .expect("append");
    let nan = ExecutionEventData::GoalEvaluated {
        step_id: None,
        goal_id: "g".into(),
        status: "met".into(),
        score: Some(f64::NAN),
        reason: None,
    };
    store.append_blocking(&run, &tenant, nan).expect("append");
    store.close().expect("close");
    let out = execlog(&["export", path(dir.path())], "");
    let err = fails(&out, 1);
    assert!(
        err.contains("event 2 of execution run has the goal score NaN"),
        "{err}"
    );
    assert!(
        !text(&out.stdout).contains("execlog_export_end"),
        "no end line"
    );
}

#[test]
fn import_refuses_a_directory_of_other_files_and_a_url_without_postgres() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("notes.txt"), b"mine").expect("write");
    let out = execlog(&["import", path(dir.path())], "{\"execlog_export\":1}\n");
    assert!(fails(&out, 1).contains("holds other files"));
    assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);
    if !cfg!(feature = "postgres") {
        for command in ["export", "import"] {
            let out = execlog(&[command, "postgres://a@127.0.0.1:1/b"], "");
            assert!(fails(&out, 2).contains("built without PostgreSQL support"));
        }
    }
}

/// Salvage's store: 64 KiB segments; `run-0` to `run-5` written one after the other
/// (40 events of about 1 KB each, tenants `t-0` and `t-1` alternating), so each spans
/// a segment or so; `fork-2` shares `run-2`'s first 20 events and adds 3; `run-4` and
/// tenant `t-1`'s executions as they stood (run-1, run-3, run-5) deleted. Closed.
fn salvage_store(dir: &Path) -> Vec<ExecutionId> {
    let store = LogStore::open_with(dir, common::small_segments()).expect("open");
    let ids: Vec<ExecutionId> = (0..6)
        .map(|i| ExecutionId::from(format!("run-{i}")))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let tenant = TenantId::from(format!("t-{}", i % 2));
        for n in 0..40 {
            let event = common::crash_image::kilobyte_event(n);
            store.append_blocking(id, &tenant, event).expect("append");
        }
    }
    let fork = ExecutionId::from("fork-2");
    store
        .fork_execution_blocking(&ids[2], 20, &fork)
        .expect("fork");
    for n in 0..3 {
        let event = common::crash_image::kilobyte_event(100 + n);
        store
            .append_blocking(&fork, &TenantId::from("t-0"), event)
            .expect("append");
    }
    store.delete_execution_blocking(&ids[4]).expect("delete");
    store
        .delete_tenant_blocking(&TenantId::from("t-1"))
        .expect("delete tenant");
    store.close().expect("close");
    vec![ids[0].clone(), ids[2].clone(), fork]
}

/// Salvage of an intact store returns exactly what the store serves, oldest first,
/// and none of the deleted executions; a flipped byte inside one event makes that
/// execution come back up to the event before it, every other one whole (the fork
/// too: it shares only events before the damage), the damage and the events after it
/// in the report.
#[test]
fn salvage_returns_each_execution_up_to_its_first_damaged_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = salvage_store(dir.path());
    let store = LogStore::open_read_only(dir.path()).expect("open");
    let served: Vec<Vec<StoredEvent>> = live
        .iter()
        .map(|id| store.load_events_blocking(id).expect("load"))
        .collect();
    drop(store);

    let whole = execlog::salvage(dir.path()).expect("salvage");
    assert!(whole.report().is_whole(), "{:?}", whole.report());
    assert_eq!(whole.report().deleted_executions, 4);
    let got: Vec<_> = whole
        .executions()
        .map(|s| s.events.expect("reads back"))
        .collect();
    assert_eq!(got, served, "an intact store salvages as it serves");

    // A byte inside the body of run-2's 30th event: run-0 and run-1 wrote the first
    // 80 records, one per event.
    let (segment, offset) = nth_record(dir.path(), 2 * 40 + 29);
    let path = common::segment_files::segment_path(dir.path(), segment);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[offset + 200] ^= 0x40;
    std::fs::write(&path, bytes).expect("write");
    std::fs::remove_file(dir.path().join("checkpoint.idx")).expect("remove checkpoint");
    let refused = LogStore::open_read_only(dir.path()).expect_err("the damage is found");
    assert!(
        matches!(refused, execlog::Error::Corrupt { .. }),
        "{refused:?}"
    );

    let damaged = execlog::salvage(dir.path()).expect("salvage");
    let report = damaged.report().clone();
    assert!(!report.is_whole());
    let ranges: Vec<_> = report.segments.iter().flat_map(|s| &s.damaged).collect();
    assert_eq!(ranges.len(), 1, "{report:?}");
    let got: Vec<_> = damaged.executions().collect();
    let names: Vec<&str> = got.iter().map(|s| s.execution_id.as_str()).collect();
    assert_eq!(names, ["run-0", "run-2", "fork-2"]);
    let events = |i: usize| got[i].events.as_ref().expect("reads back");
    assert_eq!(events(0), &served[0]);
    assert_eq!(
        events(1),
        &served[1][..29],
        "run-2 up to the event before the damage"
    );
    assert_eq!(
        events(2),
        &served[2],
        "the fork shares only events before the damage"
    );
    assert_eq!(
        report.events_after_gaps,
        40 - 30,
        "run-2's events after the damaged one"
    );
    assert_eq!((report.lost_executions, report.unnamed_executions), (0, 0));
    assert_eq!(report.cut, [(ExecutionId::from("run-2"), 29, 10)]);
}

/// The record `n` records into the log (0-based), counting every record: its segment
/// and offset.
fn nth_record(dir: &Path, n: usize) -> (u32, usize) {
    let mut left = n;
    for segment in 1.. {
        let path = common::segment_files::segment_path(dir, segment);
        let bytes = std::fs::read(&path).expect("segment");
        let offsets = common::segment_files::record_offsets(&bytes);
        match offsets.get(left) {
            Some(&offset) => return (segment, offset),
            None => left -= offsets.len(),
        }
    }
    unreachable!()
}

/// `execlog export --salvage` writes what salvage finds as an export `execlog import`
/// takes: exit 0 and everything for an intact store; exit 1, the damage said on
/// stderr, and the surviving events for a damaged one that does not open. Here the
/// damage is in run-2's 10th event, which the fork shares: the fork is lost whole.
#[test]
fn export_salvage_feeds_import() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = salvage_store(dir.path());
    // What is not a store is said, as other commands say it, not salvaged as empty.
    let missing = dir.path().join("typo");
    let err = fails(&execlog(&["export", "--salvage", path(&missing)], ""), 1);
    assert!(
        err.contains("does not exist: not an execlog store"),
        "{err}"
    );
    let empty = tempfile::tempdir().expect("tempdir");
    let err = fails(
        &execlog(&["export", "--salvage", path(empty.path())], ""),
        1,
    );
    assert!(
        err.contains("not an execlog store (it holds no segment files)"),
        "{err}"
    );

    let exported = ok(&["export", "--salvage", path(dir.path())], "");
    assert_eq!(
        exported,
        ok(&["export", path(dir.path())], ""),
        "intact: the same export"
    );

    let (segment, offset) = nth_record(dir.path(), 2 * 40 + 9);
    let file = common::segment_files::segment_path(dir.path(), segment);
    let mut bytes = std::fs::read(&file).expect("read");
    bytes[offset + 200] ^= 0x40;
    std::fs::write(&file, bytes).expect("write");
    std::fs::remove_file(dir.path().join("checkpoint.idx")).expect("remove checkpoint");
    let out = execlog(&["export", "--salvage", path(dir.path())], "");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    let said = [
        "damaged: segment",
        "lost: fork-2: its first event is damaged or missing",
        "cut: run-2 keeps events 1..=9; 30 later events left out",
        "33 events after a gap, 1 executions whose first event is damaged",
    ];
    assert!(said.iter().all(|s| err.contains(s)), "{err}");
    let copy = tempfile::tempdir().expect("tempdir");
    ok(&["import", path(copy.path())], &text(&out.stdout));
    let store = LogStore::open(copy.path()).expect("open copy");
    let counts: Vec<usize> = live
        .iter()
        .map(|id| store.load_events_blocking(id).expect("load").len())
        .collect();
    assert_eq!(counts, [40, 9, 0]);
}

/// A batch is salvaged whole or not at all: damage in its third event takes its first
/// two with it, and the events before the batch come back.
#[test]
fn salvage_keeps_batches_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = ExecutionId::from("batched");
    let tenant = TenantId::from("t");
    let store = LogStore::open(dir.path()).expect("open");
    for n in 0..3 {
        store
            .append_blocking(&id, &tenant, step_event(n))
            .expect("append");
    }
    let batch: Vec<_> = (3..8).map(step_event).collect();
    store
        .append_batch_blocking(&id, &tenant, batch)
        .expect("batch");
    let served = store.load_events_blocking(&id).expect("load");
    store.close().expect("close");
    let (segment, offset) = nth_record(dir.path(), 5);
    let file = common::segment_files::segment_path(dir.path(), segment);
    let mut bytes = std::fs::read(&file).expect("read");
    bytes[offset + 60] ^= 0x01;
    std::fs::write(&file, bytes).expect("write");

    let salvaged = execlog::salvage(dir.path()).expect("salvage");
    let got: Vec<_> = salvaged.executions().collect();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].events.as_ref().expect("reads back"), &served[..3]);
    assert_eq!(
        salvaged.report().events_after_gaps,
        4,
        "2 before the damage, 2 after"
    );
}
