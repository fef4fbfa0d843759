//! `execlog migrate`, run for real against a PostgreSQL server (one schema per test):
//! the demo's store goes to PostgreSQL and back with identical `events` and `list`
//! output; a second run copies only what is new, in both directions; a run killed
//! in the middle of an execution continues where it stopped without duplicating; a
//! row changed in the database fails the verification; `execlog export` and `import`
//! carry a store through PostgreSQL unchanged (issue 15). Run with
//! `scripts/postgres.sh run -- cargo test --features postgres --test cli_migrate`.
//!
//! Without the feature the command exists and says how to get it (exit 2).

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

fn execlog(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_execlog"))
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn migrate_needs_one_direction() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for args in [
        vec!["migrate", d],
        vec![
            "migrate",
            d,
            "--to",
            "postgres://a@b/c",
            "--from",
            "postgres://a@b/c",
        ],
        vec![
            "migrate",
            d,
            "--to",
            "postgres://a@b/c",
            "--chunk-events",
            "0",
        ],
    ] {
        let out = execlog(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[cfg(not(feature = "postgres"))]
#[test]
fn migrate_says_how_to_get_postgres_support() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = execlog(&["migrate", d, "--to", "postgres://a@b/c"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("built without PostgreSQL support"), "{err}");
    assert!(err.contains("--features postgres"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// `--from` refuses a destination directory holding other files, before it connects
/// (issue 17).
#[cfg(feature = "postgres")]
#[test]
fn migrate_from_refuses_a_directory_of_other_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
    let d = dir.path().to_str().unwrap();
    let out = execlog(&["migrate", d, "--from", "postgres://nobody@127.0.0.1:1/none"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("holds other files"), "{err}");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "the directory changed");
}

#[cfg(not(feature = "postgres"))]
#[test]
#[ignore = "needs --features postgres and a server: scripts/postgres.sh run -- cargo test --features postgres --test cli_migrate"]
fn migrate_round_trip_needs_the_postgres_feature() {}

#[cfg(feature = "postgres")]
mod common;

#[cfg(feature = "postgres")]
mod pg {
    use std::path::Path;
    use std::process::Output;
    use std::time::{Duration, Instant};

    use execlog::postgres::{PgOptions, PgStore};
    use execlog::{ExecutionId, LogStore, TenantId};
    use serde_json::Value;

    use super::{common, execlog, text};
    use common::postgres::{fresh_schema, url};

    const TENANTS: [&str; 3] = ["tenant-0", "tenant-1", "tenant-2"];

    /// A test's server and schema.
    struct Db {
        url: String,
        schema: String,
    }

    impl Db {
        fn new(test: &str) -> Option<Db> {
            Some(Db {
                url: url(test)?,
                schema: fresh_schema(),
            })
        }

        fn store(&self) -> PgStore {
            PgStore::connect_with(&self.url, PgOptions::default().schema(&self.schema)).unwrap()
        }

        /// `execlog migrate DIR --to|--from URL --schema S EXTRA…`; asserts success and
        /// returns the summary line.
        fn migrate(&self, dir: &Path, direction: &str, extra: &[&str]) -> Value {
            let out = self.migrate_output(dir, direction, extra);
            assert!(
                out.status.success(),
                "{}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
            let stdout = text(&out.stdout);
            assert_eq!(stdout.lines().count(), 1, "{stdout}");
            serde_json::from_str(&stdout).unwrap()
        }

        fn migrate_output(&self, dir: &Path, direction: &str, extra: &[&str]) -> Output {
            let d = dir.to_str().unwrap();
            let mut args = vec!["migrate", d, direction, &self.url, "--schema", &self.schema];
            args.extend_from_slice(extra);
            execlog(&args)
        }
    }

    /// A session of the test's own, for what the API does not do (looking, tampering).
    struct Sql {
        runtime: tokio::runtime::Runtime,
        client: tokio_postgres::Client,
    }

    impl Sql {
        fn connect(db: &Db) -> Sql {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let client = runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("SET search_path = {}", db.schema))
                    .await
                    .unwrap();
                client
            });
            Sql { runtime, client }
        }

        fn run(&self, sql: &str) {
            self.runtime
                .block_on(self.client.batch_execute(sql))
                .unwrap();
        }

        fn number(&self, sql: &str) -> i64 {
            let row = self
                .runtime
                .block_on(self.client.query_one(sql, &[]))
                .unwrap();
            row.get(0)
        }
    }

    fn demo(dir: &Path, executions: u32) {
        let out = execlog(&[
            "demo",
            "--dir",
            dir.to_str().unwrap(),
            "--executions",
            &executions.to_string(),
            "--writers",
            "4",
            "--tenants",
            "3",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    /// Every execution of a local store, oldest first, with its latest sequence.
    fn executions(dir: &Path) -> Vec<(ExecutionId, u64)> {
        let store = LogStore::open_read_only(dir).unwrap();
        store.all_executions_blocking().unwrap()
    }

    /// What `execlog list` (per tenant) and `execlog events` (per execution) print.
    fn printed(dir: &Path) -> Vec<String> {
        let d = dir.to_str().unwrap();
        let mut out = Vec::new();
        for tenant in TENANTS {
            let list = execlog(&["list", d, "--tenant", tenant, "--limit", "100000"]);
            assert!(list.status.success(), "{}", text(&list.stderr));
            out.push(text(&list.stdout));
        }
        for (id, _) in executions(dir) {
            let events = execlog(&["events", d, id.as_str()]);
            assert!(events.status.success(), "{}", text(&events.stderr));
            out.push(text(&events.stdout));
        }
        out
    }

    fn count(summary: &Value, field: &str) -> u64 {
        summary[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field} in {summary}"))
    }

    #[test]
    fn the_demo_store_goes_to_postgres_and_back_unchanged() {
        let Some(db) = Db::new("the_demo_store_goes_to_postgres_and_back_unchanged") else {
            return;
        };
        let original = tempfile::tempdir().unwrap();
        demo(original.path(), 120);
        let total: u64 = executions(original.path()).iter().map(|(_, n)| n).sum();

        // Chunks of 7 events: most executions take several.
        let up = db.migrate(original.path(), "--to", &["--chunk-events", "7"]);
        assert_eq!(count(&up, "executions"), 120);
        assert_eq!(count(&up, "events"), total);
        assert_eq!(count(&up, "copied"), total);
        assert_eq!(count(&up, "mismatches"), 0);

        let back = tempfile::tempdir().unwrap();
        let copy = back.path().join("created-by-migrate");
        let down = db.migrate(&copy, "--from", &["--chunk-events", "7"]);
        assert_eq!(count(&down, "copied"), total);
        assert_eq!(count(&down, "mismatches"), 0);

        assert_eq!(executions(&copy), executions(original.path()));
        let (want, got) = (printed(original.path()), printed(&copy));
        assert_eq!(want.len(), 3 + 120);
        assert!(want.iter().all(|p| !p.is_empty()));
        for (w, g) in want.iter().zip(&got) {
            assert_eq!(w, g);
        }
        let verify = execlog(&["verify", copy.to_str().unwrap()]);
        assert!(verify.status.success(), "{}", text(&verify.stderr));
    }

    #[test]
    fn a_second_run_copies_only_what_is_new_both_ways() {
        let Some(db) = Db::new("a_second_run_copies_only_what_is_new_both_ways") else {
            return;
        };
        let local = tempfile::tempdir().unwrap();
        demo(local.path(), 30);
        let total: u64 = executions(local.path()).iter().map(|(_, n)| n).sum();
        db.migrate(local.path(), "--to", &[]);

        // Up: 3 more events of an existing execution (continued in the middle of its
        // history as PostgreSQL sees it) and a new execution of 2.
        let existing = executions(local.path())[4].0.clone();
        {
            let store = LogStore::open(local.path()).unwrap();
            let tenant = store.load_events_blocking(&existing).unwrap()[0]
                .tenant_id
                .clone();
            for n in 0..3 {
                store
                    .append_blocking(&existing, &tenant, common::step_event(n))
                    .unwrap();
            }
            let batch = vec![common::step_event(1), common::step_event(2)];
            store
                .append_batch_blocking(&"late".into(), &TenantId::from("tenant-2"), batch)
                .unwrap();
            store.close().unwrap();
        }
        let up = db.migrate(local.path(), "--to", &[]);
        assert_eq!(count(&up, "copied"), 5);
        assert_eq!(count(&up, "already_present"), total);
        assert_eq!(count(&up, "mismatches"), 0);
        let pg = db.store();
        assert_eq!(
            pg.all_executions_blocking().unwrap(),
            executions(local.path())
        );
        assert_eq!(
            pg.list_executions_blocking(&"tenant-2".into(), 1, 0)
                .unwrap(),
            vec![ExecutionId::from("late")]
        );

        // Down into an empty directory, then: PostgreSQL gets 4 more events of an
        // existing execution and a new execution; only those come down.
        let copy = tempfile::tempdir().unwrap();
        let down = db.migrate(copy.path(), "--from", &[]);
        assert_eq!(count(&down, "copied"), total + 5);
        let tenant = TenantId::from("tenant-0");
        let older = pg.list_executions_blocking(&tenant, 1000, 0).unwrap();
        let older = older.last().unwrap().clone();
        let more = (10..14).map(common::step_event).collect();
        pg.append_batch_blocking(&older, &tenant, more).unwrap();
        pg.append_blocking(&"from-pg".into(), &tenant, common::step_event(0))
            .unwrap();
        pg.close().unwrap();
        let down = db.migrate(copy.path(), "--from", &[]);
        assert_eq!(count(&down, "copied"), 5);
        assert_eq!(count(&down, "already_present"), total + 5);
        assert_eq!(count(&down, "mismatches"), 0);
        assert_eq!(
            executions(copy.path()),
            db.store().all_executions_blocking().unwrap()
        );
        let store = LogStore::open_read_only(copy.path()).unwrap();
        assert_eq!(
            store.list_executions_blocking(&tenant, 1, 0).unwrap(),
            vec![ExecutionId::from("from-pg")]
        );
    }

    #[test]
    fn a_killed_run_continues_where_it_stopped_without_duplicates() {
        let Some(db) = Db::new("a_killed_run_continues_where_it_stopped_without_duplicates") else {
            return;
        };
        let local = tempfile::tempdir().unwrap();
        demo(local.path(), 30);
        let all = executions(local.path());
        let total: u64 = all.iter().map(|(_, n)| n).sum();
        // The tables, without data.
        db.store().close().unwrap();

        // Block the 11th execution's second chunk: an uncommitted row with its key
        // makes the migration's insert wait for this session's transaction.
        let (blocked, _) = &all[10];
        let sql = Sql::connect(&db);
        sql.run(&format!(
            "BEGIN; INSERT INTO execlog_events (execution_id, seq, ts_ns, body) \
             VALUES ('{blocked}', 5, 0, '\\x00')"
        ));
        let d = local.path().to_str().unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_execlog"))
            .args(["migrate", d, "--to", &db.url, "--schema", &db.schema])
            .args(["--chunk-events", "4"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // The migration's session, once it waits for this one.
        let me = sql.number("SELECT pg_backend_pid()::bigint");
        let watcher = Sql::connect(&db);
        let since = Instant::now();
        let blocked_session = loop {
            let waiting = watcher.number(&format!(
                "SELECT coalesce(max(pid), 0)::bigint FROM pg_stat_activity \
                 WHERE {me} = ANY(pg_blocking_pids(pid))"
            ));
            if waiting != 0 {
                break waiting;
            }
            assert!(child.try_wait().unwrap().is_none(), "the migration ended");
            assert!(since.elapsed() < Duration::from_secs(60), "never blocked");
            std::thread::sleep(Duration::from_millis(20));
        };
        child.kill().unwrap();
        child.wait().unwrap();
        sql.run("ROLLBACK");
        // Its transaction is rolled back when its server process notices the client
        // is gone (when it next writes to it) and ends.
        let since = Instant::now();
        while watcher.number(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {blocked_session}"
        )) > 0
        {
            assert!(
                since.elapsed() < Duration::from_secs(60),
                "the killed session stays"
            );
            std::thread::sleep(Duration::from_millis(20));
        }

        // Ten executions whole and four events of the eleventh were committed.
        let done: u64 = all[..10].iter().map(|(_, n)| n).sum::<u64>() + 4;
        let stored = || watcher.number("SELECT count(*) FROM execlog_events") as u64;
        assert_eq!(stored(), done);
        assert_eq!(
            watcher.number(&format!(
                "SELECT last_seq FROM execlog_executions WHERE execution_id = '{blocked}'"
            )),
            4
        );

        let again = db.migrate(local.path(), "--to", &[]);
        assert_eq!(count(&again, "already_present"), done);
        assert_eq!(count(&again, "copied"), total - done);
        assert_eq!(count(&again, "mismatches"), 0);
        assert_eq!(stored(), total);
        assert_eq!(db.store().all_executions_blocking().unwrap(), all);
    }

    #[test]
    fn a_changed_row_fails_the_verification() {
        let Some(db) = Db::new("a_changed_row_fails_the_verification") else {
            return;
        };
        let local = tempfile::tempdir().unwrap();
        demo(local.path(), 12);
        db.migrate(local.path(), "--to", &[]);
        let all = executions(local.path());
        let (timed, edited) = (&all[3].0, &all[7].0);
        let sql = Sql::connect(&db);
        sql.run(&format!(
            "UPDATE execlog_events SET ts_ns = ts_ns + 1 WHERE execution_id = '{timed}' AND seq = 2"
        ));
        sql.run(&format!(
            "UPDATE execlog_events SET body = (SELECT body FROM execlog_events \
             WHERE execution_id = '{edited}' AND seq = 3) \
             WHERE execution_id = '{edited}' AND seq = 2"
        ));

        let out = db.migrate_output(local.path(), "--to", &[]);
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("verification FAILED: 2 of 12 executions differ"),
            "{err}"
        );
        let lines: Vec<Value> = text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        let differ: Vec<&str> = lines[..2]
            .iter()
            .map(|l| l["mismatch"]["execution_id"].as_str().unwrap())
            .collect();
        assert_eq!(differ, [timed.as_str(), edited.as_str()]);
        let m = &lines[0]["mismatch"];
        assert_eq!(m["source"]["events"], m["destination"]["events"]);
        assert_ne!(m["source"]["hash"], m["destination"]["hash"]);
        assert_eq!(count(&lines[2], "mismatches"), 2);
        assert_eq!(count(&lines[2], "copied"), 0);
    }

    #[test]
    fn a_missing_source_schema_is_an_error_not_an_empty_copy() {
        let Some(db) = Db::new("a_missing_source_schema_is_an_error_not_an_empty_copy") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let out = db.migrate_output(dir.path(), "--from", &[]);
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("cannot open the source"), "{err}");
        // Nothing was created on the server.
        let sql = Sql::connect(&db);
        assert_eq!(
            sql.number(&format!(
                "SELECT count(*) FROM pg_namespace WHERE nspname = '{}'",
                db.schema
            )),
            0
        );
    }

    #[test]
    fn pg_import_takes_only_the_next_chunk() {
        use chrono::{Duration as Span, Utc};
        use execlog::{Error, StoredEvent};

        let Some(db) = Db::new("pg_import_takes_only_the_next_chunk") else {
            return;
        };
        let pg = db.store();
        let start = Utc::now() - Span::days(3);
        let chunk = |tenant: &str, first: u64, last: u64, at: chrono::DateTime<Utc>| {
            (first..=last)
                .map(|s| StoredEvent {
                    sequence: s,
                    execution_id: "run\0\\x".into(),
                    tenant_id: TenantId::from(tenant),
                    event: common::step_event(s),
                    timestamp: at + Span::nanoseconds(s as i64),
                })
                .collect::<Vec<_>>()
        };
        let refused = |r: execlog::Result<u64>| match r {
            Err(Error::InvalidArgument(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        };
        let id = ExecutionId::from("run\0\\x");
        assert!(
            refused(pg.import_blocking(chunk("acme", 2, 3, start)))
                .contains("continues at sequence 1")
        );
        assert_eq!(pg.import_blocking(chunk("acme", 1, 3, start)).unwrap(), 3);
        assert!(
            refused(pg.import_blocking(chunk("acme", 1, 3, start)))
                .contains("continues at sequence 4")
        );
        refused(pg.import_blocking(chunk("acme", 5, 5, start)));
        assert!(matches!(
            pg.import_blocking(chunk("other", 4, 4, start)),
            Err(Error::TenantMismatch { .. })
        ));
        let why = refused(pg.import_blocking(chunk("acme", 4, 4, start - Span::hours(1))));
        assert!(why.contains("before the last stored event's"), "{why}");
        assert_eq!(pg.get_latest_sequence_blocking(&id).unwrap(), Some(3));
        assert_eq!(
            pg.load_events_blocking(&id).unwrap(),
            chunk("acme", 1, 3, start)
        );
        // Appends continue after the import, not before its last time.
        assert_eq!(
            pg.append_blocking(&id, &"acme".into(), common::step_event(4))
                .unwrap(),
            4
        );
        let events = pg.load_events_blocking(&id).unwrap();
        assert!(events[3].timestamp >= events[2].timestamp);
        assert_eq!(pg.all_executions_blocking().unwrap(), vec![(id, 4)]);
    }

    /// `execlog export` and `import` on PostgreSQL (issue 15): a store exported from a
    /// directory, imported into PostgreSQL, exported from there gives the same bytes,
    /// and imported into an empty directory prints the same `list` and `events`; the
    /// filters work on PostgreSQL, and an execution the database holds is refused.
    #[test]
    fn export_and_import_carry_a_store_through_postgres() {
        let Some(db) = Db::new("export_and_import_carry_a_store_through_postgres") else {
            return;
        };
        let original = tempfile::tempdir().unwrap();
        demo(original.path(), 30);
        let d = original.path().to_str().unwrap();
        let schema = ["--schema", db.schema.as_str()];
        let exported = |store: &str, extra: &[&str]| -> String {
            let out = execlog(&[&["export", store][..], extra].concat());
            assert!(out.status.success(), "{}", text(&out.stderr));
            text(&out.stdout)
        };
        let import = |store: &str, extra: &[&str], input: &str| -> Output {
            let args = [&["import", store][..], extra].concat();
            common::output_with_stdin(
                std::process::Command::new(env!("CARGO_BIN_EXE_execlog")).args(args),
                input,
            )
        };

        let from_dir = exported(d, &[]);
        let out = import(&db.url, &schema, &from_dir);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains("imported 30 executions"));
        let from_pg = exported(&db.url, &schema);
        assert!(from_pg == from_dir, "PostgreSQL exports other bytes");

        let back = tempfile::tempdir().unwrap();
        let copy = back.path().join("copy");
        let out = import(copy.to_str().unwrap(), &[], &from_pg);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let (want, got) = (printed(original.path()), printed(&copy));
        for (w, g) in want.iter().zip(&got) {
            assert_eq!(w, g);
        }

        let tenant = [&schema[..], &["--tenant", "tenant-1"]].concat();
        assert!(exported(&db.url, &tenant) == exported(d, &["--tenant", "tenant-1"]));
        let unknown = [&schema[..], &["--execution", "nope"]].concat();
        let out = execlog(&[&["export", db.url.as_str()][..], &unknown].concat());
        assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));

        let out = import(&db.url, &schema, &from_dir);
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert!(err.contains("line 2: execution run-"), "{err}");
        assert!(err.contains("is already in the destination"), "{err}");
    }
}
