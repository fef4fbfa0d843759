//! The `execlog` binary, run for real: every command, every bad input, output streams
//! and exit codes.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::output_with_stdin;

fn execlog(args: &[&str], stdin: &str) -> Output {
    output_with_stdin(
        Command::new(env!("CARGO_BIN_EXE_execlog")).args(args),
        stdin,
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn one_error_line(out: &Output) {
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "stderr: {err}");
    assert!(err.starts_with("execlog: "), "{err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn demo_then_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = execlog(
        &[
            "demo",
            "--dir",
            d,
            "--executions",
            "40",
            "--writers",
            "4",
            "--tenants",
            "3",
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    for field in ["events (durable)", "events/s", "p50/p99", "disk bytes"] {
        assert!(summary.contains(field), "{summary}");
    }

    let out = execlog(&["list", d, "--tenant", "tenant-1", "--limit", "5"], "");
    assert!(out.status.success());
    let ids: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ids.len(), 5);
    // A page that does not show everything says so, and where the next starts.
    let more = text(&out.stderr);
    assert!(
        more.contains("showed 5 of") && more.contains("--offset 5"),
        "{more}"
    );
    // Each line says how many events, when, and how the execution ended (its last
    // event: the demo completes, fails or cancels each run).
    for line in &ids {
        assert!(line["events"].as_u64().unwrap() > 1, "{line}");
        assert!(line["first"].as_str().unwrap() <= line["last"].as_str().unwrap());
        let status = line["status"].as_str().unwrap();
        assert!(
            ["completed", "failed", "cancelled", "paused", "running"].contains(&status),
            "{line}"
        );
    }
    let first = ids[0]["execution_id"].as_str().unwrap().to_string();
    // Tenants, and executions across tenants (each line names its tenant).
    let out = execlog(&["tenants", d], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tenants: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let total: u64 = tenants
        .iter()
        .map(|t| t["executions"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 40, "{tenants:?}");
    let out = execlog(&["list", d, "--limit", "100"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let every: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(every.len(), 40);
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
    assert!(every.iter().all(|l| l["tenant"].is_string()));
    // 40 executions, tenant-1 owns runs 1, 4, …, 37: which is created last depends on
    // thread timing, so just check it is one of them.
    assert!(first.starts_with("run-0000"));
    let page2 = execlog(
        &[
            "list", d, "--tenant", "tenant-1", "--limit", "5", "--offset", "5",
        ],
        "",
    );
    assert!(!text(&page2.stdout).contains(&first));

    let out = execlog(&["events", d, &first], "");
    assert!(out.status.success());
    let events: Vec<execlog::StoredEvent> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events.len() > 5);
    assert!(events.iter().zip(1..).all(|(e, s)| e.sequence == s));
    let out = execlog(&["events", d, &first, "--after", "3"], "");
    assert_eq!(text(&out.stdout).lines().count(), events.len() - 3);
    let out = execlog(&["events", d, &first, "--pretty"], "");
    let pretty = text(&out.stdout);
    assert!(pretty.contains("execution_started"));
    // JSON names, not Rust's Debug names; a completed tool call shows its output.
    assert!(
        !pretty.contains("LlmCall") && !pretty.contains("ToolCall ("),
        "{pretty}"
    );
    if let Some(line) = pretty.lines().find(|l| l.contains("tool_call_completed")) {
        assert!(line.contains("->"), "{line}");
    }

    // The timeline: steps under the execution, tool calls under their step, outcomes
    // merged into their lines (no separate completion lines).
    let out = execlog(&["events", d, &first, "--timeline"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let timeline = text(&out.stdout);
    let indent = |l: &str| {
        l.split("s  ")
            .nth(1)
            .map_or(0, |r| r.len() - r.trim_start().len())
    };
    let lines: Vec<&str> = timeline.lines().collect();
    assert!(
        lines[0].contains("execution_started") && indent(lines[0]) == 0,
        "{timeline}"
    );
    let step = lines.iter().position(|l| l.contains("step \"")).unwrap();
    assert_eq!(indent(lines[step]), 2, "{timeline}");
    assert!(
        lines[step].contains("completed in") || lines[step].contains("FAILED"),
        "{timeline}"
    );
    if let Some(tool) = lines.iter().find(|l| l.trim_start().contains(" tool ")) {
        assert_eq!(indent(tool), 4, "{timeline}");
    }
    assert!(!timeline.contains("step_completed") && !timeline.contains("tool_call_completed"));

    let out = execlog(&["stats", d], "");
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("executions:        40"));
    // After the demo's clean close the index came from the checkpoint: nothing (or
    // only what follows it) was read record by record, and the JSON form says the same.
    let out = execlog(&["stats", d, "--json"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(v["executions"], 40);
    assert!(v["events"].as_u64().unwrap() > 40);
    assert!(
        v["open"]["bytes_from_checkpoint"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert_eq!(v["open"]["bytes_scanned_record_by_record"], 0, "{v}");
    // The demo's summary and `stats` agree on the sizes (issue 17: they did not).
    let number_after = |label: &str| -> u64 {
        summary
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {label} in {summary}"))
    };
    assert_eq!(
        Some(number_after("disk bytes (data)")),
        v["data_bytes"].as_u64(),
        "{v}"
    );
    assert_eq!(
        Some(number_after("index bytes")),
        v["index_bytes"].as_u64(),
        "{v}"
    );

    let out = execlog(&["verify", d], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("clean"));
}

#[test]
fn append_single_and_batch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let input = "{\"type\":\"execution_started\",\"parent\":null,\"metadata\":{\"a\":1}}\n\n{\"type\":\"execution_resumed\"}\n";
    let out = execlog(
        &[
            "append",
            d,
            "--execution",
            "e1",
            "--tenant",
            "t",
            "--create",
        ],
        input,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "1\n2\n");
    let out = execlog(
        &["append", d, "--execution", "e1", "--tenant", "t", "--batch"],
        input,
    );
    assert_eq!(text(&out.stdout), "3\n4\n");
    let out = execlog(&["events", d, "e1"], "");
    assert_eq!(text(&out.stdout).lines().count(), 4);
}

#[test]
fn bad_input_gets_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let good = "{\"type\":\"execution_resumed\"}\n";
    let out = execlog(
        &["append", d, "--execution", "e", "--tenant", "t", "--create"],
        good,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Malformed JSON: line number, nothing of that batch stored.
    let out = execlog(
        &["append", d, "--execution", "e", "--tenant", "t", "--batch"],
        "{\"type\":\"execution_resumed\"}\n{oops\n",
    );
    one_error_line(&out);
    assert!(text(&out.stderr).contains("line 2"));
    // Unknown event type.
    let out = execlog(
        &["append", d, "--execution", "e", "--tenant", "t"],
        "{\"type\":\"nope\"}\n",
    );
    one_error_line(&out);
    assert!(text(&out.stderr).contains("line 1"));
    let out = execlog(&["events", d, "e"], "");
    assert_eq!(
        text(&out.stdout).lines().count(),
        1,
        "nothing of the bad input stored"
    );

    // Tenant mismatch.
    let out = execlog(
        &["append", d, "--execution", "e", "--tenant", "other"],
        good,
    );
    one_error_line(&out);
    assert!(text(&out.stderr).contains("tenant"));

    // Not a store.
    let empty = tempfile::tempdir().unwrap();
    for args in [
        vec!["events", empty.path().to_str().unwrap(), "e"],
        vec!["list", empty.path().to_str().unwrap(), "--tenant", "t"],
        vec!["stats", empty.path().to_str().unwrap()],
        vec!["verify", empty.path().to_str().unwrap()],
        vec!["stats", "/does/not/exist"],
    ] {
        let out = execlog(&args, "");
        one_error_line(&out);
        assert!(
            text(&out.stderr).contains("not an execlog store"),
            "{}",
            text(&out.stderr)
        );
    }

    // In use by another process: inspection reads it (issue 14), appends are refused.
    let store = execlog::LogStore::open(dir.path()).unwrap();
    let out = execlog(&["stats", d], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = execlog(&["append", d, "--execution", "e", "--tenant", "t"], good);
    one_error_line(&out);
    assert!(text(&out.stderr).contains("locked"));
    drop(store);

    // Corrupt store: verify reports segment and offset, exits non-zero, changes nothing.
    corrupt_middle(dir.path());
    let before = std::fs::read(dir.path().join("0000000001.seg")).unwrap();
    // It says why the store does not open (one line), then surveys the damage: every
    // damaged range, and how much is still readable (issue 17).
    let out = execlog(&["verify", d], "");
    one_error_line(&out);
    assert!(
        text(&out.stderr).contains("segment 1 at offset 32"),
        "{}",
        text(&out.stderr)
    );
    let report = text(&out.stdout);
    assert!(report.contains("damaged: segment 1 bytes 32.."), "{report}");
    let readable = report
        .lines()
        .find_map(|l| l.strip_prefix("segment 1: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no readable count: {report}"));
    assert!(readable >= 2, "{report}");
    for args in [
        vec!["events", d, "e"],
        vec!["list", d, "--tenant", "t"],
        vec!["stats", d],
    ] {
        let out = execlog(&args, "");
        one_error_line(&out);
        assert!(
            text(&out.stderr).contains("corrupt store"),
            "{}",
            text(&out.stderr)
        );
    }
    assert_eq!(
        std::fs::read(dir.path().join("0000000001.seg")).unwrap(),
        before
    );
}

/// Flips a byte in the first record (more records follow it).
fn corrupt_middle(dir: &Path) {
    let e = execlog::ExecutionId::from("e");
    let t = execlog::TenantId::from("t");
    // Another test's child process may hold the lock for a moment: a fork inherits
    // every descriptor until its exec closes them.
    let started = std::time::Instant::now();
    let store = loop {
        match execlog::LogStore::open(dir) {
            Err(execlog::Error::Locked { .. })
                if started.elapsed() < std::time::Duration::from_secs(10) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other.unwrap(),
        }
    };
    for _ in 0..3 {
        store
            .append_blocking(&e, &t, execlog::ExecutionEventData::ExecutionResumed)
            .unwrap();
    }
    drop(store);
    let path = dir.join("0000000001.seg");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[32 + 60] ^= 0xFF;
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn help_has_examples() {
    for cmd in [
        "demo", "append", "events", "list", "tenants", "stats", "verify", "tail", "export",
        "import",
    ] {
        let out = execlog(&[cmd, "--help"], "");
        assert!(out.status.success());
        let help = text(&out.stdout);
        assert!(
            help.contains("Example:") && help.contains(&format!("execlog {cmd}")),
            "{cmd}"
        );
    }
}

/// `events --timeline` shows an outcome whose start is not in the history (a
/// `step_completed` appended alone) instead of dropping it.
#[test]
fn the_timeline_shows_an_outcome_without_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let events = "{\"type\":\"step_completed\",\"step_id\":\"s-9\",\"duration_ms\":7}\n\
                  {\"type\":\"tool_call_completed\",\"tool_call_id\":\"c-9\",\"output\":1}\n";
    let args = ["append", d, "--execution", "e", "--tenant", "t", "--create"];
    let out = execlog(&args, events);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = execlog(&["events", d, "e", "--timeline"], "");
    let timeline = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        timeline.contains("step_completed: s-9 in 7 ms")
            && timeline.contains("tool_call_completed: c-9"),
        "{timeline}"
    );
}

/// `execlog demo --dir` into a directory that already holds a store is refused, and
/// the store is left as it was (a new user's report: the demo's tenants appeared beside
/// real ones).
#[test]
fn demo_refuses_a_directory_that_holds_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let demo = ["demo", "--dir", d, "--executions", "3", "--writers", "1"];
    assert!(execlog(&demo, "").status.success());
    let before = text(&execlog(&["tenants", d], "").stdout);
    let again = execlog(&demo, "");
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already holds a store"),
        "{again:?}"
    );
    assert_eq!(text(&execlog(&["tenants", d], "").stdout), before);
}

/// A closed stdout (`execlog stats DIR | true`) is a normal end: exit 0, no panic, for
/// every command that writes to stdout.
#[test]
fn a_closed_stdout_is_a_normal_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let demo = ["demo", "--dir", d, "--executions", "5", "--writers", "1"];
    assert!(execlog(&demo, "").status.success());
    let other = tempfile::tempdir().unwrap();
    let o = other.path().to_str().unwrap();
    let commands: [&[&str]; 12] = [
        &["tail", d, "--from-start"],
        &["demo", "--dir", o, "--executions", "5", "--writers", "1"],
        &["stats", d],
        &["stats", d, "--json"],
        &["events", d, "run-000000"],
        &["events", d, "run-000000", "--timeline"],
        &["list", d, "--tenant", "tenant-0"],
        &["list", d],
        &["tenants", d],
        &["verify", d],
        &["export", d],
        &["append", d, "--execution", "x", "--tenant", "t"],
    ];
    for args in commands {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader); // nobody reads: every write to stdout fails with EPIPE
        let mut child = Command::new(env!("CARGO_BIN_EXE_execlog"))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            // Commands other than `append` may exit before reading their stdin.
            let _ = stdin.write_all(b"{\"type\":\"execution_resumed\"}\n");
        }
        let out = child.wait_with_output().unwrap();
        let err = text(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?} {err}", out.status);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// An event too large for the store (`Options::max_event_bytes`, 16 MiB + 64 KiB by
/// default) on a later line: nothing is stored, without `--batch` too, and the error
/// names the line. (Issue 17: the size was checked at append time, after the earlier
/// lines were stored.)
#[test]
fn append_checks_every_line_before_the_first_write() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    execlog::LogStore::open(dir.path())
        .unwrap()
        .close()
        .unwrap();
    let huge = format!(
        "{{\"type\":\"execution_paused\",\"reason\":\"{}\"}}",
        "x".repeat(17 << 20)
    );
    let input = format!(
        "{{\"type\":\"execution_resumed\"}}\n\n{{\"type\":\"execution_resumed\"}}\n{huge}\n"
    );
    for batch in [false, true] {
        let mut args = vec!["append", d, "--execution", "e", "--tenant", "t"];
        if batch {
            args.push("--batch");
        }
        let out = execlog(&args, &input);
        one_error_line(&out);
        let err = text(&out.stderr);
        assert!(err.contains("line 4"), "{err}");
        assert!(err.contains("max_event_bytes"), "{err}");
        assert!(err.contains("nothing was stored"), "{err}");
        assert_eq!(text(&out.stdout), "", "batch {batch}");
        let store = execlog::LogStore::open_read_only(dir.path()).unwrap();
        let stored = store
            .load_events_blocking(&execlog::ExecutionId::from("e"))
            .unwrap();
        assert!(stored.is_empty(), "batch {batch}: {} stored", stored.len());
    }
}

/// `append` makes a new store only when asked (`--create`): a mistyped DIR is an error,
/// an existing directory that is not a store is left alone, and a DIR that is a file is
/// named as such. (Issue 17: `append` silently created any directory.)
#[test]
fn append_creates_a_store_only_with_create() {
    let parent = tempfile::tempdir().unwrap();
    let event = "{\"type\":\"execution_resumed\"}\n";
    let append = |dir: &Path, create: bool| {
        let d = dir.to_str().unwrap();
        let mut args = vec!["append", d, "--execution", "e", "--tenant", "t"];
        if create {
            args.push("--create");
        }
        execlog(&args, event)
    };

    // A missing directory: refused, not created, and the error says how to create it.
    let missing = parent.path().join("mistyped");
    let out = append(&missing, false);
    one_error_line(&out);
    assert!(
        text(&out.stderr).contains("does not exist"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("--create"),
        "{}",
        text(&out.stderr)
    );
    assert!(!missing.exists());

    // An existing directory that is not a store: refused, nothing written into it,
    // with or without --create when it holds other files.
    let other = parent.path().join("photos");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("cat.jpg"), b"meow").unwrap();
    for create in [false, true] {
        let out = append(&other, create);
        one_error_line(&out);
        assert!(
            text(&out.stderr).contains("not an execlog store"),
            "{}",
            text(&out.stderr)
        );
        let names: Vec<_> = std::fs::read_dir(&other).unwrap().collect();
        assert_eq!(names.len(), 1, "create {create}: {names:?}");
    }
    // An empty directory: only with --create.
    let empty = parent.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = append(&empty, false);
    one_error_line(&out);
    assert!(
        text(&out.stderr).contains("--create"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);

    // A file: said so, by every command that takes DIR.
    let file = parent.path().join("notes.txt");
    std::fs::write(&file, b"hello").unwrap();
    let f = file.to_str().unwrap();
    for create in [false, true] {
        let out = append(&file, create);
        one_error_line(&out);
        assert!(
            text(&out.stderr).contains("is a file"),
            "{}",
            text(&out.stderr)
        );
    }
    for args in [
        vec!["events", f, "e"],
        vec!["list", f, "--tenant", "t"],
        vec!["stats", f],
        vec!["verify", f],
    ] {
        let out = execlog(&args, "");
        one_error_line(&out);
        assert!(
            text(&out.stderr).contains("is a file"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"hello");

    // --create makes the store, in a new or an empty directory; later appends need no
    // flag (and --create on an existing store just appends).
    for dir in [&missing, &empty] {
        let out = append(dir, true);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "1\n");
        assert_eq!(text(&append(dir, false).stdout), "2\n");
        assert_eq!(text(&append(dir, true).stdout), "3\n");
    }
}

/// An unknown execution or tenant is said on stderr and exits 3 ("not found"), with
/// nothing on stdout; a known execution with nothing after `--after`, and a page past
/// a tenant's last execution, are normal ends (exit 0), the latter with a note.
/// (Issue 17: both exited 0 without a word.)
#[test]
fn an_unknown_execution_or_tenant_is_said_and_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = execlog(
        &["append", d, "--execution", "e", "--tenant", "t", "--create"],
        "{\"type\":\"execution_resumed\"}\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = execlog(&["events", d, "nope"], "");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    one_error_line(&out);
    assert!(
        text(&out.stderr).contains("no execution nope"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "");
    let out = execlog(&["events", d, "nope", "--pretty"], "");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stdout), "", "no table header either");

    let out = execlog(&["list", d, "--tenant", "nobody"], "");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    one_error_line(&out);
    assert!(
        text(&out.stderr).contains("no executions of tenant nobody"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "");

    // Known, but nothing (more) to show: exit 0.
    let out = execlog(&["events", d, "e", "--after", "1"], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(text(&out.stderr), "", "polling past the end is silent");
    let out = execlog(&["list", d, "--tenant", "t", "--offset", "1"], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    assert!(
        text(&out.stderr).contains("no executions at offset 1: tenant t has 1"),
        "{}",
        text(&out.stderr)
    );
}

/// The README's Rust blocks paste as they are: no rustdoc hidden lines (`# …`), which
/// a reader copies too. (`cargo test --doc` compiles them: `ReadmeDoctests` in lib.rs.)
/// (Issue 17: the quickstart began with `# async fn demo() …`.)
#[test]
fn readme_rust_blocks_have_no_hidden_lines() {
    let readme = include_str!("../README.md");
    let (mut in_block, mut in_rust) = (false, false);
    let mut rust_blocks = 0;
    for (n, line) in readme.lines().enumerate() {
        if let Some(lang) = line.strip_prefix("```") {
            in_rust = !in_block && lang.split(',').any(|t| t.trim() == "rust");
            in_block = !in_block;
            rust_blocks += usize::from(in_rust);
            continue;
        }
        if in_rust {
            let hidden = line.trim_start() == "#" || line.trim_start().starts_with("# ");
            assert!(!hidden, "README.md line {}: hidden line {line:?}", n + 1);
        }
    }
    assert!(rust_blocks >= 1, "the quickstart is a Rust block");
}

#[test]
fn append_with_expect_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let two =
        "{\"type\":\"execution_resumed\"}\n{\"type\":\"execution_paused\",\"reason\":\"r\"}\n";
    let base = ["append", d, "--execution", "e", "--tenant", "t"];
    let with = |extra: &[&str], input: &str| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        execlog(&args, input)
    };
    let out = with(&["--create", "--expect", "none", "--key", "k1"], two);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "1\n2\n");
    // The same key and events: the stored sequences again, said on stderr, nothing new.
    let out = with(&["--key", "k1"], two);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "1\n2\n");
    assert!(
        text(&out.stderr).contains("stored before"),
        "{}",
        text(&out.stderr)
    );
    // The same key, other events: refused, exit 4.
    let out = with(&["--key", "k1"], "{\"type\":\"execution_resumed\"}\n");
    assert_eq!(out.status.code(), Some(4));
    one_error_line(&out);
    // A wrong expectation: refused, exit 4, says what the latest sequence is.
    let out = with(&["--expect", "1"], two);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        text(&out.stderr).contains("latest sequence is 2"),
        "{}",
        text(&out.stderr)
    );
    let out = with(&["--expect", "none"], two);
    assert_eq!(out.status.code(), Some(4));
    let out = with(&["--expect", "2"], two);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "3\n4\n");
    // Bad values are usage errors.
    assert_eq!(with(&["--expect", "soon"], two).status.code(), Some(2));
    let out = with(&["--key", ""], two);
    assert_eq!(out.status.code(), Some(1));
    let out = execlog(&["events", d, "e"], "");
    assert_eq!(text(&out.stdout).lines().count(), 4);
}

/// `Options::group_read(true)`: another user of the owner's group can run the read-only
/// commands (the lock is taken through a read-only descriptor of `LOCK`); a user of
/// another group cannot even list the directory. Needs root (to act as other users)
/// and `setpriv`; skipped otherwise.
#[test]
fn a_group_member_can_verify_a_group_read_store() {
    use std::os::unix::fs::{PermissionsExt, chown};
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let (true, Some(setpriv)) = (root, setpriv) else {
        eprintln!("skipped: needs root and setpriv");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // Other users must be able to reach the temporary directory (TMPDIR may be private).
    let reachable = tmp
        .path()
        .ancestors()
        .skip(1)
        .all(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    if !reachable {
        eprintln!(
            "skipped: {} is not reachable by other users",
            tmp.path().display()
        );
        return;
    }
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("store");
    let store =
        execlog::LogStore::open_with(&dir, execlog::Options::default().group_read(true)).unwrap();
    store
        .append_blocking(
            &execlog::ExecutionId::from("e"),
            &execlog::TenantId::from("t"),
            execlog::ExecutionEventData::ExecutionResumed,
        )
        .unwrap();
    store.close().unwrap();
    drop(store);
    chown(&dir, Some(4242), Some(4242)).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        chown(entry.unwrap().path(), Some(4242), Some(4242)).unwrap();
    }
    // A copy of the binary where the other users can reach it (the build directory's
    // ancestors may be private to root, e.g. under /root on a CI machine).
    let binary = tmp.path().join("execlog");
    std::fs::copy(env!("CARGO_BIN_EXE_execlog"), &binary).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_user = |uid: &str, gid: &str| {
        Command::new(setpriv)
            .args(["--reuid", uid, "--regid", gid, "--clear-groups"])
            .arg(&binary)
            .arg("verify")
            .arg(&dir)
            .output()
            .unwrap()
    };
    let group = as_user("4243", "4242");
    assert!(group.status.success(), "group: {}", text(&group.stderr));
    let other = as_user("4244", "4244");
    one_error_line(&other);
    assert!(
        text(&other.stderr).contains("ermission denied"),
        "{}",
        text(&other.stderr)
    );
}

/// `tail -f` follows a demo while it runs and is stopped by SIGINT; `stats`, `list`,
/// `events` and `verify` work on the running store (issue 14). Everything the demo
/// wrote is printed once, in position order.
#[test]
fn tail_follows_a_running_demo_and_inspection_works_meanwhile() {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_execlog");
    let mut demo = Command::new(bin)
        .args(["demo", "--dir", d, "--executions", "20000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !dir.path().join("published.end").exists() {
        assert!(started.elapsed().as_secs() < 30, "the demo never published");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // The writer publishes its end at open, before its first append: on a loaded
    // machine `list` could otherwise find no execution yet and fail.
    while !execlog(&["list", d, "--limit", "1"], "").status.success() {
        assert!(started.elapsed().as_secs() < 30, "the demo never appended");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mut tail = Command::new(bin)
        .args(["tail", d, "--from-start", "-f"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    });
    // While the demo writes (if it has not finished yet: it is fast on a quiet machine).
    let mut during = 0;
    while demo.try_wait().unwrap().is_none() || during == 0 {
        for args in [
            vec!["stats", d, "--json"],
            vec!["list", d, "--limit", "1"],
            vec!["verify", d],
            vec!["events", d, "run-000000"],
        ] {
            let out = execlog(&args, "");
            assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        }
        during += 1;
    }
    assert!(demo.wait().unwrap().success());
    let stats = execlog(&["stats", d, "--json"], "");
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    let total = stats["events"].as_u64().unwrap();
    // Let the tail catch up, then interrupt it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut printed = 0;
    while std::time::Instant::now() < deadline {
        let out = execlog(&["tail", d, "--from-start"], "");
        printed = text(&out.stdout).lines().count() as u64;
        if printed == total {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        printed, total,
        "tail without -f printed {printed} of {total}"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        Command::new("kill")
            .args(["-INT", &tail.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = tail.wait().unwrap();
    assert_eq!(status.signal(), Some(2), "{status:?}");
    let lines = lines.join().unwrap();
    assert_eq!(
        lines.len() as u64,
        total,
        "tail -f printed {} of {total}",
        lines.len()
    );
    let positions: Vec<u64> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["position"].as_u64().unwrap()
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    // Resuming after a position prints exactly the rest.
    let middle = positions[positions.len() / 2];
    let out = execlog(&["tail", d, "--after", &middle.to_string()], "");
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).lines().count(),
        positions.len() - positions.len() / 2 - 1
    );
    println!("inspection ran {during} times while the demo wrote");
}

/// `tail -f | head -1` on a quiet store: once the reader of its stdout is gone, `tail`
/// ends within its idle wait (liveness: it used to wait for the next event, forever),
/// exit 0. An unknown execution is said and exits 3 without `-f`; the default start
/// (the end) says why nothing was printed.
#[test]
fn tail_ends_when_its_reader_goes_away_and_says_what_is_missing() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let good = "{\"type\":\"execution_resumed\"}\n";
    let out = execlog(
        &["append", d, "--execution", "e", "--tenant", "t", "--create"],
        good,
    );
    assert!(out.status.success());
    let (reader, writer) = std::io::pipe().unwrap();
    let mut tail = Command::new(env!("CARGO_BIN_EXE_execlog"))
        .args(["tail", d, "--from-start", "-f"])
        .stdout(writer)
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(reader)
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("\"position\""), "{line}");
    // The BufReader and the pipe's read end were dropped with it.
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = tail.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(10) {
            tail.kill().unwrap();
            panic!("tail -f kept running after its reader went away");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");

    let out = execlog(&["tail", d, "--execution", "nope", "--from-start"], "");
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("no execution nope"));
    let out = execlog(&["tail", d], "");
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains("--from-start"),
        "{}",
        text(&out.stderr)
    );
}

/// The inspection commands on a read-only bind mount (issue 17): they open the store
/// as a reader, so they work and change nothing; `append` fails with one line. Needs
/// root (to mount); skipped otherwise, saying so.
#[test]
fn inspection_works_on_a_read_only_mount() {
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    });
    if !root {
        eprintln!("skipped: needs root to mount");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (store, ro) = (dir.path().join("store"), dir.path().join("ro"));
    std::fs::create_dir(&ro).unwrap();
    let s = store.to_str().unwrap();
    let demo = ["demo", "--dir", s, "--executions", "20", "--writers", "2"];
    assert!(execlog(&demo, "").status.success());
    let r = ro.to_str().unwrap();
    let mount = |args: &[&str]| {
        Command::new("mount")
            .args(args)
            .status()
            .is_ok_and(|st| st.success())
    };
    if !mount(&["--bind", s, r]) {
        eprintln!("skipped: bind mount failed");
        return;
    }
    struct Unmount<'a>(&'a str);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(r);
    assert!(mount(&["-o", "remount,bind,ro", r]));
    for args in [
        vec!["stats", r],
        vec!["stats", r, "--json"],
        vec!["events", r, "run-000000"],
        vec!["list", r],
        vec!["tenants", r],
        vec!["verify", r],
        vec!["tail", r, "--from-start"],
    ] {
        let out = execlog(&args, "");
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        // `verify` reports on stderr.
        assert!(
            !out.stdout.is_empty() || text(&out.stderr).contains("clean"),
            "{args:?} printed nothing"
        );
    }
    let out = execlog(
        &["append", r, "--execution", "x", "--tenant", "t"],
        "{\"type\":\"execution_resumed\"}\n",
    );
    one_error_line(&out);
}

/// Bad input never creates a store, even with `--create` (issue 17): a line that is
/// not an event, an event over the size limit, an empty id.
#[test]
fn append_create_with_bad_input_creates_nothing() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("new-store");
    let d = dir.to_str().unwrap();
    let huge = format!(
        "{{\"type\":\"execution_paused\",\"reason\":\"{}\"}}\n",
        "x".repeat(17 << 20)
    );
    let good = "{\"type\":\"execution_resumed\"}\n";
    for (args, input) in [
        (
            vec!["--execution", "e", "--tenant", "t"],
            "not json\n".to_string(),
        ),
        (
            vec!["--execution", "e", "--tenant", "t"],
            format!("{good}{huge}"),
        ),
        (vec!["--execution", "", "--tenant", "t"], good.to_string()),
    ] {
        let mut all = vec!["append", d];
        all.extend(args);
        all.push("--create");
        let out = execlog(&all, &input);
        one_error_line(&out);
        assert!(!dir.exists(), "{all:?} created the store");
    }
}
