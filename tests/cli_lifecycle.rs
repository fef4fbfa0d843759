//! `execlog delete` and `execlog prune`, run for real: output, exit codes, and what
//! the other commands see afterwards.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{output_with_stdin, step_event};
use execlog::{ExecutionId, LogStore, TenantId};

fn execlog(args: &[&str]) -> Output {
    output_with_stdin(Command::new(env!("CARGO_BIN_EXE_execlog")).args(args), "")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A store with executions e1, e2 of tenant a and e3 of tenant b.
fn store() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    for (e, t) in [("e1", "a"), ("e2", "a"), ("e3", "b")] {
        let (e, t) = (ExecutionId::from(e), TenantId::from(t));
        store.append_blocking(&e, &t, step_event(1)).unwrap();
    }
    store.close().unwrap();
    dir
}

#[test]
fn delete_an_execution_then_a_tenant() {
    let dir = store();
    let d = dir.path().to_str().unwrap();
    let out = execlog(&["delete", d, "--execution", "e1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "{\"deleted_executions\":1}\n");
    let out = execlog(&["events", d, "e1"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    // Again: nothing to delete.
    let out = execlog(&["delete", d, "--execution", "e1"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stdout), "");
    assert!(
        text(&out.stderr).contains("no execution e1 to delete"),
        "{}",
        text(&out.stderr)
    );

    let out = execlog(&["delete", d, "--tenant", "a"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "{\"deleted_executions\":1}\n");
    let out = execlog(&["list", d, "--tenant", "a"]);
    assert_eq!(out.status.code(), Some(3));
    let out = execlog(&["events", d, "e3"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).lines().count(), 1);

    // Appending to a deleted execution is refused, with the reason.
    let out = output_with_stdin(
        Command::new(env!("CARGO_BIN_EXE_execlog")).args([
            "append",
            d,
            "--execution",
            "e2",
            "--tenant",
            "a",
        ]),
        "{\"type\":\"execution_resumed\"}\n",
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("deleted"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn prune_deletes_idle_executions() {
    let dir = store();
    let d = dir.path().to_str().unwrap();
    let out = execlog(&["prune", d, "--older-than", "1h"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "{\"deleted_executions\":0}\n");
    std::thread::sleep(Duration::from_millis(1200));
    {
        let store = LogStore::open(dir.path()).unwrap();
        let (e, t) = (ExecutionId::from("e3"), TenantId::from("b"));
        store.append_blocking(&e, &t, step_event(2)).unwrap();
    }
    let out = execlog(&["prune", d, "--older-than", "1s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "{\"deleted_executions\":2}\n");
    let out = execlog(&["events", d, "e3"]);
    assert_eq!(text(&out.stdout).lines().count(), 2);
}

#[test]
fn bad_arguments_are_said_in_one_line() {
    let dir = store();
    let d = dir.path().to_str().unwrap();
    for (args, code) in [
        (vec!["delete", d], 2),
        (vec!["delete", d, "--execution", "e1", "--tenant", "a"], 2),
        (vec!["prune", d, "--older-than", "30"], 2),
        (vec!["prune", d, "--older-than", "30x"], 2),
        (vec!["prune", d, "--older-than", "99999999999999999999d"], 2),
    ] {
        let out = execlog(&args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(!text(&out.stderr).contains("panicked"));
    }
    let empty = tempfile::tempdir().unwrap();
    let e = empty.path().to_str().unwrap();
    let out = execlog(&["delete", e, "--execution", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("holds no store"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_dir(empty.path()).unwrap().count(),
        0,
        "created files"
    );
    for age in ["500ms", "90s", "15m", "12h", "30d", "2w"] {
        let out = execlog(&["prune", d, "--older-than", age]);
        assert!(out.status.success(), "{age}: {}", text(&out.stderr));
    }
}
