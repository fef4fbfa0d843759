//! Adversarial tests for `PgStore` (branch adversary-pg). Each test states what the
//! contract (docs/POSTGRES.md, "durability is the product") requires; the ones marked
//! FAILS ON e913381 demonstrate a defect in the code at that commit.
//!
//! Run alone (several tests change server settings or crash the server):
//! `scripts/postgres.sh run -- cargo test --features postgres --test adversary_pg -- --test-threads=1`

#![allow(clippy::unwrap_used)]

#[cfg(feature = "postgres")]
mod common;

#[cfg(feature = "postgres")]
mod adversary {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use crate::common::postgres::{fresh_schema, psql, url};
    use crate::common::*;
    use execlog::postgres::{PgOptions, PgStore};
    use execlog::*;

    static SERVER: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn turn() -> std::sync::MutexGuard<'static, ()> {
        SERVER.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn opts(schema: &str) -> PgOptions {
        PgOptions::default().schema(schema)
    }

    fn psql_count(url: &str, sql: &str) -> i64 {
        psql(url, sql).trim().parse().unwrap_or(0)
    }

    fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(start.elapsed() < timeout, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A psql session that locks `exec`'s head row for `secs` seconds (in the
    /// background); returns once the lock is held.
    fn hold_head_row(url: &str, schema: &str, exec: &str, secs: f64, tag: &str) -> Child {
        let conn = format!(
            "{url}{}application_name={tag}",
            if url.contains('?') { "&" } else { "?" }
        );
        let sql = format!(
            "BEGIN; SELECT 1 FROM {schema}.execlog_executions WHERE execution_id = '{exec}' \
             FOR UPDATE; SELECT pg_sleep({secs}); COMMIT;"
        );
        let child = Command::new("psql")
            .args([&conn, "-X", "-q", "-c", &sql])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_until("the lock holder", Duration::from_secs(10), || {
            psql_count(
                url,
                &format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{tag}' \
                     AND wait_event = 'PgSleep'"
                ),
            ) == 1
        });
        child
    }

    /// How many of the store's backends wait for a row lock.
    #[allow(dead_code)]
    fn execlog_lock_waiters(url: &str) -> i64 {
        psql_count(
            url,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'execlog' \
             AND wait_event_type = 'Lock'",
        )
    }

    /// Runs `f` on a thread; its answer arrives on the returned channel.
    fn in_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> mpsc::Receiver<T> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx
    }

    fn t(s: &str) -> TenantId {
        TenantId::from(s)
    }

    fn x(s: &str) -> ExecutionId {
        ExecutionId::from(s)
    }

    // ------------------------------------------------------------------ stalls

    /// FAILS ON e913381 (hang). Two tenants race on one execution and their appends land
    /// in one gather: the second is carried to the writer's next group. With two writers,
    /// the other writer sits in `rx.recv()` holding the inbox mutex, and the carrying
    /// writer's `gather` waits for that mutex before committing what it carries: the
    /// carried append is answered only when some unrelated append arrives (never, on a
    /// quiet store). group_commit.rs `gather`, `let mut rx = inbox.lock().await`.
    #[test]
    fn carried_append_is_answered_without_further_traffic() {
        let Some(url) = url("carried_append_is_answered_without_further_traffic") else {
            return;
        };
        let _turn = turn();
        let schema = fresh_schema();
        let store =
            Arc::new(PgStore::connect_with(&url, opts(&schema).write_connections(2)).unwrap());
        for e in ["l1", "l2", "shared"] {
            store
                .append_blocking(&x(e), &t("t1"), step_event(0))
                .unwrap();
        }
        // Staggered releases: l1 at ~2 s, l2 at ~3 s, shared at ~4 s.
        let h1 = hold_head_row(&url, &schema, "l1", 2.0, "hold_l1");
        let h2 = hold_head_row(&url, &schema, "l2", 3.0, "hold_l2");
        let h3 = hold_head_row(&url, &schema, "shared", 4.0, "hold_shared");
        // Occupy both writers.
        let s = store.clone();
        let a1 = in_thread(move || s.append_blocking(&x("l1"), &t("t1"), step_event(1)));
        // Queued behind the lock (the store steps aside from held locks rather than
        // blocking a connection, so a waiter is not always visible).
        std::thread::sleep(Duration::from_millis(200));
        let s = store.clone();
        let a2 = in_thread(move || s.append_blocking(&x("l2"), &t("t1"), step_event(2)));
        // Queued behind the lock (the store steps aside from held locks rather than
        // blocking a connection, so a waiter is not always visible).
        std::thread::sleep(Duration::from_millis(200));
        // Both queue while no writer is free: one gather takes both.
        let s = store.clone();
        let p = in_thread(move || s.append_blocking(&x("shared"), &t("t1"), step_event(3)));
        std::thread::sleep(Duration::from_millis(100));
        let s = store.clone();
        let q = in_thread(move || s.append_blocking(&x("shared"), &t("t2"), step_event(4)));
        std::thread::sleep(Duration::from_millis(100));
        for mut h in [h1, h2, h3] {
            h.wait().unwrap();
        }
        let wait = Duration::from_secs(10);
        assert!(a1.recv_timeout(wait).unwrap().is_ok());
        assert!(a2.recv_timeout(wait).unwrap().is_ok());
        assert!(p.recv_timeout(wait).unwrap().is_ok());
        let answer = q.recv_timeout(wait);
        if answer.is_err() {
            // Unstick it for the report: any new append frees the inbox mutex.
            store
                .append_blocking(&x("other"), &t("t1"), step_event(5))
                .unwrap();
            let late = q.recv_timeout(wait);
            panic!(
                "the second tenant's append was not answered 10 s after the lock went \
                 away; it was answered ({late:?}) only after an unrelated append"
            );
        }
        assert!(
            matches!(answer.unwrap(), Err(Error::TenantMismatch { .. })),
            "second tenant is refused"
        );
    }

    /// FAILS ON e913381 (deadlock). `close()` on a current-thread runtime while a task
    /// of that runtime has an append queued: the writer answers the append, but the
    /// task's clone of the queue's sender lives until the task runs again, which it
    /// cannot (close blocks the only thread), so the writers never see the queue close.
    /// mod.rs `submit` keeps `sender` alive across `answer.await`.
    #[test]
    fn close_with_a_pending_append_task_on_a_current_thread_runtime() {
        let Some(url) = url("close_with_a_pending_append_task_on_a_current_thread_runtime") else {
            return;
        };
        let _turn = turn();
        let store = Arc::new(PgStore::connect_with(&url, opts(&fresh_schema())).unwrap());
        let done = in_thread(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let s = store.clone();
                let task =
                    tokio::spawn(async move { s.append(&x("e"), &t("t"), step_event(1)).await });
                // Let the task queue its append.
                tokio::task::yield_now().await;
                let closed = store.close().map_err(|e| e.to_string());
                let appended = task.await.unwrap().map_err(|e| e.to_string());
                (closed, appended)
            })
        });
        let (closed, appended) = done
            .recv_timeout(Duration::from_secs(15))
            .expect("close() deadlocked: it waits for a sender held by a task it blocks");
        closed.unwrap();
        appended.unwrap();
    }

    /// FAILS ON e913381. A row lock held elsewhere on one execution: appends to it pile
    /// up, one group per writer, until every write connection waits on that lock, and
    /// then appends to unrelated executions wait too (docs/POSTGRES.md: "a group waiting
    /// for a row lock held by another machine stalls only the appends inside it").
    #[test]
    fn a_locked_execution_does_not_stall_unrelated_executions() {
        let Some(url) = url("a_locked_execution_does_not_stall_unrelated_executions") else {
            return;
        };
        let _turn = turn();
        let schema = fresh_schema();
        let store = Arc::new(PgStore::connect_with(&url, opts(&schema)).unwrap());
        for e in ["hot", "cold"] {
            store
                .append_blocking(&x(e), &t("t"), step_event(0))
                .unwrap();
        }
        let mut holder = hold_head_row(&url, &schema, "hot", 8.0, "hold_hot");
        let mut hot = Vec::new();
        for k in 1..=4 {
            let s = store.clone();
            hot.push(in_thread(move || {
                s.append_blocking(&x("hot"), &t("t"), step_event(k))
            }));
            // The append to `hot` is queued (the store steps aside from the lock
            // instead of blocking a connection on it, so there is no waiter to see).
            std::thread::sleep(Duration::from_millis(200));
        }
        let started = Instant::now();
        let s = store.clone();
        let cold = in_thread(move || s.append_blocking(&x("cold"), &t("t"), step_event(9)));
        let answer = cold.recv_timeout(Duration::from_secs(3));
        let waited = started.elapsed();
        holder.wait().unwrap();
        for h in hot {
            h.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
        }
        assert!(
            answer.is_ok(),
            "an append to an unrelated execution waited {waited:?} (> 3 s) behind a \
             row lock on another execution"
        );
    }

    // ------------------------------------------------------------------ wrong answers

    /// FAILS ON e913381. A group's statement refused because of ONE append (here: an
    /// event row left by another tool collides with the sequence the append gets)
    /// fails every append of the group with that append's error; docs/POSTGRES.md
    /// "one bad append fails alone". group_commit.rs `Attempt::Refused` answers the
    /// whole group.
    #[test]
    fn a_refused_append_does_not_fail_its_group_mates() {
        let Some(url) = url("a_refused_append_does_not_fail_its_group_mates") else {
            return;
        };
        let _turn = turn();
        let schema = fresh_schema();
        let store =
            Arc::new(PgStore::connect_with(&url, opts(&schema).write_connections(1)).unwrap());
        store
            .append_blocking(&x("gate"), &t("t"), step_event(0))
            .unwrap();
        psql(
            &url,
            &format!(
                "INSERT INTO {schema}.execlog_events (execution_id, seq, ts_ns, body) \
                 VALUES ('forged', 1, 0, '\\x00'::bytea)"
            ),
        );
        let mut holder = hold_head_row(&url, &schema, "gate", 1.5, "hold_gate");
        let s = store.clone();
        let gate = in_thread(move || s.append_blocking(&x("gate"), &t("t"), step_event(1)));
        wait_until("the writer blocked", Duration::from_secs(5), || {
            execlog_lock_waiters(&url) == 1
        });
        let s = store.clone();
        let bad = in_thread(move || s.append_blocking(&x("forged"), &t("t"), step_event(2)));
        let s = store.clone();
        let good = in_thread(move || s.append_blocking(&x("innocent"), &t("t"), step_event(3)));
        std::thread::sleep(Duration::from_millis(200));
        holder.wait().unwrap();
        let wait = Duration::from_secs(10);
        gate.recv_timeout(wait).unwrap().unwrap();
        let bad = bad.recv_timeout(wait).unwrap();
        let good = good.recv_timeout(wait).unwrap();
        assert!(matches!(bad, Err(Error::Database { .. })), "{bad:?}");
        assert!(
            good.is_ok(),
            "an append to a clean execution failed because a group mate was refused: {good:?}"
        );
    }

    /// FAILS ON e913381. Events whose head row is missing (rows written by another
    /// tool, or a head row deleted) are silently invisible: load_events answers Ok with
    /// nothing, get_latest_sequence None. The brief: a forged or damaged row must be an
    /// error. read.rs LOAD_SQL inner-joins the head row.
    #[test]
    fn events_without_a_head_row_are_an_error_not_nothing() {
        let Some(url) = url("events_without_a_head_row_are_an_error_not_nothing") else {
            return;
        };
        let _turn = turn();
        let schema = fresh_schema();
        let store = PgStore::connect_with(&url, opts(&schema)).unwrap();
        store
            .append_blocking(&x("orphan"), &t("t"), step_event(1))
            .unwrap();
        psql(
            &url,
            &format!("DELETE FROM {schema}.execlog_executions WHERE execution_id = 'orphan'"),
        );
        let loaded = store.load_events_blocking(&x("orphan"));
        assert!(
            loaded.is_err(),
            "a stored event without its head row was answered as {loaded:?}"
        );
    }

    /// FAILS ON e913381 (CRITICAL: an acknowledged append is not stored; its caller is
    /// given another append's sequence). The group's transaction id comes from
    /// `BEGIN; SELECT pg_current_xact_id()`, before the transaction wrote any WAL. If the
    /// server crashes before that transaction's records reach disk, recovery does not
    /// know the id was handed out, and hands it out again. The in-doubt resolution then
    /// asks `pg_xact_status` about an id that now names another transaction; when that
    /// one is another group on the same execution and commits, `COMMITTED_SQL` returns
    /// ITS rows and the lost append is answered Ok.
    #[test]
    fn a_transaction_id_reused_after_a_crash_is_not_taken_for_our_commit() {
        let Some(url) = url("a_transaction_id_reused_after_a_crash_is_not_taken_for_our_commit")
        else {
            return;
        };
        let (Ok(ctl), Ok(data), Ok(log)) = (
            std::env::var("EXECLOG_PG_CTL"),
            std::env::var("EXECLOG_PG_DATA"),
            std::env::var("EXECLOG_PG_LOG"),
        ) else {
            eprintln!("SKIPPED: needs EXECLOG_PG_CTL/DATA/LOG from scripts/postgres.sh run");
            return;
        };
        let user = std::env::var("EXECLOG_PG_USER").unwrap_or_default();
        let pg_ctl = |args: &[&str]| {
            let mut cmd = if user == "postgres" && is_root() {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--", &ctl]);
                c
            } else {
                Command::new(&ctl)
            };
            let status = cmd
                .args(args)
                .args(["-D", &data])
                .current_dir("/")
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "pg_ctl {args:?}");
        };
        let _turn = turn();
        let schema = fresh_schema();
        let slow = PgOptions::default()
            .schema(&schema)
            .write_connections(1)
            .reconnect_timeout(Duration::from_secs(60));
        let a = Arc::new(PgStore::connect_with(&url, slow.clone()).unwrap());
        let b = Arc::new(PgStore::connect_with(&url, slow).unwrap());
        a.append_blocking(&x("busy"), &t("t"), step_event(0))
            .unwrap();
        psql(&url, "CHECKPOINT");
        let mut holder = hold_head_row(&url, &schema, "busy", 60.0, "hold_busy");
        let s = a.clone();
        let ours = in_thread(move || s.append_blocking(&x("busy"), &t("t"), step_event(111)));
        wait_until("A's group blocked", Duration::from_secs(5), || {
            execlog_lock_waiters(&url) == 1
        });
        let xid = psql(
            &url,
            "SELECT backend_xid FROM pg_stat_activity WHERE application_name = 'execlog' \
             AND wait_event_type = 'Lock'",
        );
        // A crash (power loss): what was not flushed is gone, the lock holder too.
        pg_ctl(&["stop", "-m", "immediate", "-w"]);
        let _ = holder.wait();
        pg_ctl(&["start", "-w", "-t", "60", "-l", &log]);
        let next = psql(&url, "SELECT pg_snapshot_xmax(pg_current_snapshot())");
        eprintln!(
            "A's group had xid {}; after recovery the next xid is {}",
            xid.trim(),
            next.trim()
        );
        // Another store appends to the same execution meanwhile, as any busy system does.
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (b.clone(), stop.clone());
        let theirs = in_thread(move || {
            let mut n = 0u64;
            while !st.load(Ordering::Relaxed) && n < 2000 {
                let _ = s.append_blocking(&x("busy"), &t("t"), step_event(1000 + n));
                n += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let answer = ours.recv_timeout(Duration::from_secs(90)).unwrap();
        stop.store(true, Ordering::Relaxed);
        theirs.recv_timeout(Duration::from_secs(30)).unwrap();
        let events = b.load_events_blocking(&x("busy")).unwrap();
        let stored_at = events
            .iter()
            .find(|e| event_number(&e.event) == Some(111))
            .map(|e| e.sequence);
        match answer {
            Ok(seq) => {
                let there = events
                    .get(seq as usize - 1)
                    .and_then(|e| event_number(&e.event));
                assert_eq!(
                    there,
                    Some(111),
                    "append acknowledged at sequence {seq}, which holds event {there:?}; \
                     event 111 is stored at {stored_at:?}"
                );
            }
            // Not acknowledged: fine, as long as it is not stored either... it may be
            // (an in-doubt error says so); report what happened.
            Err(e) => eprintln!("our append failed ({e}); stored at {stored_at:?}"),
        }
    }

    fn is_root() -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0\n"))
            .unwrap_or(false)
    }

    /// FAILS ON e913381. With a synchronous standby configured, a commit is durable only
    /// once the standby has it (docs/POSTGRES.md: "and, if the server has
    /// synchronous_standby_names, to the synchronous standby"). A writer killed while
    /// its COMMIT waits for the standby leaves the transaction committed LOCALLY only;
    /// the in-doubt resolution sees `pg_xact_status = committed` and acknowledges the
    /// append, though no standby ever received it. (Here the standby does not exist,
    /// so a correct store can never acknowledge.)
    #[test]
    fn in_doubt_resolution_does_not_skip_the_synchronous_standby() {
        let Some(url) = url("in_doubt_resolution_does_not_skip_the_synchronous_standby") else {
            return;
        };
        let _turn = turn();
        struct Reset(String);
        impl Drop for Reset {
            fn drop(&mut self) {
                psql(&self.0, "ALTER SYSTEM RESET synchronous_standby_names");
                psql(&self.0, "SELECT pg_reload_conf()");
            }
        }
        let schema = fresh_schema();
        let store = Arc::new(
            PgStore::connect_with(
                &url,
                opts(&schema)
                    .write_connections(1)
                    .reconnect_timeout(Duration::from_secs(20)),
            )
            .unwrap(),
        );
        store
            .append_blocking(&x("e"), &t("t"), step_event(0))
            .unwrap();
        psql(
            &url,
            "ALTER SYSTEM SET synchronous_standby_names = 'ghost_standby'",
        );
        let reset = Reset(url.clone());
        psql(&url, "SELECT pg_reload_conf()");
        std::thread::sleep(Duration::from_millis(500));
        let s = store.clone();
        let answer = in_thread(move || s.append_blocking(&x("e"), &t("t"), step_event(1)));
        wait_until(
            "the commit waiting for the standby",
            Duration::from_secs(10),
            || {
                psql_count(
                    &url,
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'execlog' \
                 AND wait_event = 'SyncRep'",
                ) == 1
            },
        );
        psql(
            &url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'execlog' AND wait_event = 'SyncRep'",
        );
        let got = answer.recv_timeout(Duration::from_secs(5));
        drop(reset);
        if let Ok(Ok(seq)) = got {
            panic!(
                "append acknowledged (sequence {seq}) although the synchronous standby \
                 never received it"
            );
        }
    }

    // ------------------------------------------------------------------ timeouts

    /// A TCP proxy that can go silent: while `frozen`, nothing is forwarded and no
    /// connection is closed (a partitioned network, a hung server). With
    /// `freeze_at_commit` set, the next `COMMIT` a client sends reaches the server and
    /// then the proxy freezes, before any reply (a commit whose outcome is lost).
    struct Freezer {
        port: u16,
        frozen: Arc<AtomicBool>,
        freeze_at_commit: Arc<AtomicBool>,
    }

    impl Freezer {
        fn start(server: std::net::SocketAddr) -> Freezer {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let frozen = Arc::new(AtomicBool::new(false));
            let freeze_at_commit = Arc::new(AtomicBool::new(false));
            let (f, at_commit) = (frozen.clone(), freeze_at_commit.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { return };
                    let Ok(upstream) = TcpStream::connect(server) else {
                        continue;
                    };
                    for (to_server, mut from, mut to) in [
                        (
                            true,
                            client.try_clone().unwrap(),
                            upstream.try_clone().unwrap(),
                        ),
                        (false, upstream, client),
                    ] {
                        let (f, at_commit) = (f.clone(), at_commit.clone());
                        std::thread::spawn(move || {
                            let mut buf = vec![0u8; 1 << 16];
                            loop {
                                while f.load(Ordering::SeqCst) {
                                    std::thread::sleep(Duration::from_millis(20));
                                }
                                match from.read(&mut buf) {
                                    Ok(n @ 1..) => {
                                        let commit = buf[..n].windows(7).any(|w| w == b"COMMIT\0");
                                        if to_server
                                            && commit
                                            && at_commit.swap(false, Ordering::SeqCst)
                                        {
                                            // Silent from now on, this COMMIT included
                                            // in what the server gets.
                                            f.store(true, Ordering::SeqCst);
                                            if to.write_all(&buf[..n]).is_err() {
                                                return;
                                            }
                                            continue;
                                        }
                                        while f.load(Ordering::SeqCst) {
                                            std::thread::sleep(Duration::from_millis(20));
                                        }
                                        if to.write_all(&buf[..n]).is_err() {
                                            return;
                                        }
                                    }
                                    _ => {
                                        let _ = to.shutdown(std::net::Shutdown::Both);
                                        return;
                                    }
                                }
                            }
                        });
                    }
                }
            });
            Freezer {
                port,
                frozen,
                freeze_at_commit,
            }
        }
    }

    fn host_port(url: &str) -> String {
        let rest = url.trim_start_matches("postgres://");
        let hp = rest.split('/').next().unwrap();
        hp.rsplit('@').next().unwrap().to_owned()
    }

    /// FAILS ON e913381 (hang). docs/POSTGRES.md: "after a server outage: calls wait up
    /// to reconnect_timeout (30 s), then fail with Error::Unavailable". A server (or
    /// network) that goes silent without closing the connection is an outage too; but no
    /// request has a deadline, so the append waits for TCP keepalive (hours).
    #[test]
    fn a_silent_server_fails_appends_within_reconnect_timeout() {
        let Some(url) = url("a_silent_server_fails_appends_within_reconnect_timeout") else {
            return;
        };
        let _turn = turn();
        let hp = host_port(&url);
        let server = std::net::ToSocketAddrs::to_socket_addrs(&hp)
            .unwrap()
            .next()
            .unwrap();
        let freezer = Freezer::start(server);
        let proxied = url.replacen(&hp, &format!("127.0.0.1:{}", freezer.port), 1);
        let store = Arc::new(
            PgStore::connect_with(
                &proxied,
                opts(&fresh_schema())
                    .reconnect_timeout(Duration::from_secs(2))
                    .connect_timeout(Duration::from_secs(1)),
            )
            .unwrap(),
        );
        store
            .append_blocking(&x("e"), &t("t"), step_event(0))
            .unwrap();
        store.load_events_blocking(&x("e")).unwrap();
        freezer.frozen.store(true, Ordering::SeqCst);
        let s = store.clone();
        let append = in_thread(move || s.append_blocking(&x("e"), &t("t"), step_event(1)));
        let s = store.clone();
        let read = in_thread(move || s.load_events_blocking(&x("e")).map(|v| v.len()));
        let s = store.clone();
        let health = in_thread(move || {
            let started = Instant::now();
            let answer = futures::executor::block_on(s.health_check());
            (answer.is_err(), started.elapsed())
        });
        let append = append.recv_timeout(Duration::from_secs(20));
        let read = read.recv_timeout(Duration::from_secs(1));
        let health = health.recv_timeout(Duration::from_secs(1));
        freezer.frozen.store(false, Ordering::SeqCst);
        // A liveness probe answers within connect_timeout (1 s here), not after the
        // reconnect_timeout of other calls.
        assert!(
            matches!(health, Ok((true, took)) if took < Duration::from_millis(1900)),
            "health check during a silent outage: {health:?}"
        );
        assert!(
            matches!(append, Ok(Err(Error::Unavailable { .. }))),
            "append 20 s into a silent outage (reconnect_timeout 2 s): {append:?}"
        );
        assert!(
            matches!(read, Ok(Err(Error::Unavailable { .. }))),
            "read 21 s into a silent outage (reconnect_timeout 2 s): {read:?}"
        );
    }

    /// Guarded appends whose `COMMIT` reached the server, which then fell silent for
    /// longer than `reconnect_timeout`: the outcome cannot be learned, so each append
    /// fails with `Unavailable` saying that it may or may not be stored (with a key:
    /// that retrying with it is safe), never `Ok` nor a refusal. Once the server
    /// answers again, retrying the key replays what was stored, and the expected
    /// sequence of the unkeyed one shows that it was stored too.
    #[test]
    fn a_guarded_append_whose_outcome_cannot_be_learned_says_so() {
        let Some(url) = url("a_guarded_append_whose_outcome_cannot_be_learned_says_so") else {
            return;
        };
        let _turn = turn();
        let hp = host_port(&url);
        let server = std::net::ToSocketAddrs::to_socket_addrs(&hp)
            .unwrap()
            .next()
            .unwrap();
        let freezer = Freezer::start(server);
        let proxied = url.replacen(&hp, &format!("127.0.0.1:{}", freezer.port), 1);
        let options = opts(&fresh_schema())
            .reconnect_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(1));
        let store = PgStore::connect_with(&proxied, options).unwrap();
        let (e, tenant) = (x("e"), t("t"));
        let key = |k: &str| AppendOptions::key(k);
        let append =
            |n, options| store.append_with_blocking(&e, &tenant, vec![step_event(n)], options);
        append(0, key("k0")).unwrap();
        for (n, options) in [
            (1, key("k1")),
            (2, AppendOptions::expect(ExpectedSequence::Exactly(2))),
        ] {
            freezer.freeze_at_commit.store(true, Ordering::SeqCst);
            let started = Instant::now();
            let lost = append(n, options.clone());
            freezer.frozen.store(false, Ordering::SeqCst);
            let reason = match &lost {
                Err(Error::Unavailable { reason, .. }) => reason.clone(),
                other => panic!("append {n} with its outcome lost: {other:?}"),
            };
            assert!(reason.contains("may or may not be stored"), "{reason}");
            assert_eq!(
                reason.contains("same idempotency key"),
                options.idempotency_key.is_some(),
                "{reason}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{:?}",
                started.elapsed()
            );
        }
        let replay = append(1, key("k1")).unwrap();
        assert_eq!(
            (replay.first_sequence, replay.last_sequence, replay.replayed),
            (2, 2, true)
        );
        assert_eq!(store.get_latest_sequence_blocking(&e).unwrap(), Some(3));
    }

    /// FAILS ON e913381 (hang). `connect_timeout` bounds only the TCP connect: a server
    /// that accepts the connection and then says nothing (a hung postmaster, a
    /// half-open load balancer) makes `PgStore::connect` wait forever.
    #[test]
    fn connect_to_a_server_that_never_answers_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for c in listener.incoming() {
                held.push(c);
            }
        });
        let url = format!("postgres://execlog@127.0.0.1:{port}/execlog");
        let answer = in_thread(move || {
            PgStore::connect_with(
                &url,
                PgOptions::default().connect_timeout(Duration::from_secs(1)),
            )
            .map(drop)
        });
        let answer = answer.recv_timeout(Duration::from_secs(15));
        assert!(
            matches!(answer, Ok(Err(Error::Unavailable { .. }))),
            "connect with connect_timeout 1 s, 15 s later: {answer:?}"
        );
    }

    // ------------------------------------------------------------------ hostile input

    /// FAILS ON e913381. A table `execlog_schema` not made by execlog (version as
    /// bigint) makes `migrate` panic on `row.get::<_, i32>` (schema.rs); connect returns
    /// `Error::Poisoned` instead of a clear error, and inside an async context it
    /// panics (the early `?` in `connect_with` drops the runtime with `Runtime::drop`).
    #[test]
    fn a_foreign_execlog_schema_table_is_an_error_not_a_panic() {
        let Some(url) = url("a_foreign_execlog_schema_table_is_an_error_not_a_panic") else {
            return;
        };
        let _turn = turn();
        let schema = fresh_schema();
        psql(
            &url,
            &format!(
                "CREATE SCHEMA {schema}; CREATE TABLE {schema}.execlog_schema (version bigint \
                 PRIMARY KEY, description text NOT NULL, applied_at timestamptz NOT NULL \
                 DEFAULT now()); INSERT INTO {schema}.execlog_schema VALUES (1, 'x')"
            ),
        );
        let err = PgStore::connect_with(&url, opts(&schema)).unwrap_err();
        let in_async = std::panic::catch_unwind(|| {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(async { PgStore::connect_with(&url, opts(&schema)).map(drop) })
        });
        assert!(
            !matches!(err, Error::Poisoned { .. }),
            "a panic inside migrate: {err}"
        );
        assert!(
            in_async.is_ok(),
            "connect_with panicked inside an async context"
        );
    }

    /// FAILS ON e913381. A refusal at `BEGIN; SELECT pg_current_xact_id()` (here: no
    /// EXECUTE on the function; in production: a hot standby after a failover, SQLSTATE
    /// 25006) is classed NotCommitted and retried at once, dropping the connection each
    /// time (group_commit.rs `attempt`, `begin` error path; `commit` pauses only for
    /// Unavailable): one append opens new sessions in a tight loop for the whole
    /// reconnect_timeout instead of failing with the refusal.
    #[test]
    fn a_refusal_at_begin_fails_fast_without_a_reconnect_storm() {
        let Some(url) = url("a_refusal_at_begin_fails_fast_without_a_reconnect_storm") else {
            return;
        };
        let _turn = turn();
        let db = "adv_revoked";
        let _ = Command::new("psql")
            .args([
                &url,
                "-X",
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {db}"),
            ])
            .output();
        let _ = Command::new("psql")
            .args([&url, "-X", "-q", "-c", "CREATE ROLE adv_user LOGIN"])
            .output();
        psql(&url, &format!("CREATE DATABASE {db}"));
        psql(&url, &format!("GRANT CREATE ON DATABASE {db} TO adv_user"));
        let admin = url
            .rsplit_once('/')
            .map(|(h, _)| format!("{h}/{db}"))
            .unwrap();
        psql(
            &admin,
            "REVOKE EXECUTE ON FUNCTION pg_current_xact_id() FROM PUBLIC",
        );
        let user_url = admin.replacen("execlog@", "adv_user@", 1);
        let store = PgStore::connect_with(
            &user_url,
            opts("adv").reconnect_timeout(Duration::from_secs(3)),
        )
        .unwrap();
        let sessions = || {
            psql_count(
                &url,
                &format!("SELECT sessions FROM pg_stat_database WHERE datname = '{db}'"),
            )
        };
        std::thread::sleep(Duration::from_millis(700)); // stats are flushed lazily
        let before = sessions();
        let started = Instant::now();
        let err = store
            .append_blocking(&x("e"), &t("t"), step_event(1))
            .unwrap_err();
        let took = started.elapsed();
        drop(store);
        std::thread::sleep(Duration::from_millis(1500));
        let opened = sessions() - before;
        assert!(matches!(err, Error::Database { .. }), "{err:?}");
        assert!(
            // Below the 3 s reconnect_timeout a storm would use up; the session count
            // is the real check (a loaded machine can be slow).
            took < Duration::from_millis(2500) && opened < 5,
            "a permission refusal took {took:?} and opened {opened} sessions"
        );
    }

    /// Passes on e913381 (errors, no panic): a head row and events written by another
    /// tool with a body that is not the codec, or an id that is not an escape.
    #[test]
    fn forged_rows_are_errors_not_panics() {
        let Some(url) = url("forged_rows_are_errors_not_panics") else {
            return;
        };
        let _turn = turn();
        let schema = fresh_schema();
        let store = PgStore::connect_with(&url, opts(&schema)).unwrap();
        store
            .append_blocking(&x("seed"), &t("t"), step_event(0))
            .unwrap();
        psql(
            &url,
            &format!(
                "INSERT INTO {schema}.execlog_executions (execution_id, tenant_id, last_seq, last_ts_ns) \
                 VALUES ('badbody', 't', 2, 0), ('badtenant', 'x\\q', 1, 0), ('bad\\id', 't', 0, 0); \
                 INSERT INTO {schema}.execlog_events (execution_id, seq, ts_ns, body) VALUES \
                 ('badbody', 1, 0, '\\xdeadbeef'::bytea), ('badbody', 2, -9223372036854775808, ''::bytea), \
                 ('badtenant', 1, 0, (SELECT body FROM {schema}.execlog_events WHERE execution_id = 'seed'))"
            ),
        );
        assert!(store.load_events_blocking(&x("badbody")).is_err());
        assert!(store.load_events_blocking(&x("badtenant")).is_err());
        assert!(store.list_executions_blocking(&t("t"), 10, 0).is_err());
        assert_eq!(
            store.get_latest_sequence_blocking(&x("badbody")).unwrap(),
            Some(2)
        );
        // Appending after forged rows: a clear error, not a panic, not a wrong Ok.
        let r = store.append_blocking(&x("badtenant"), &t("x\\q"), step_event(5));
        assert!(r.is_err(), "{r:?}");
    }

    /// FAILS ON e913381 (low). `PgOptions::schema` accepts any `[a-z_][a-z0-9_]*`, but
    /// the name is spliced into SQL unquoted (connect.rs `session_setup`, schema.rs
    /// `CREATE SCHEMA`): a valid-looking name that is a reserved word is a syntax error.
    #[test]
    fn a_schema_name_that_is_a_keyword_works_or_is_refused_up_front() {
        let Some(url) = url("a_schema_name_that_is_a_keyword_works_or_is_refused_up_front") else {
            return;
        };
        let _turn = turn();
        let r = PgStore::connect_with(&url, PgOptions::default().schema("order"));
        assert!(
            matches!(r, Ok(_) | Err(Error::InvalidArgument(_))),
            "schema(\"order\"): {:?}",
            r.map(drop)
        );
    }

    /// Passes on e913381: ids that escape to each other's neighbours stay distinct,
    /// round trip, and list back exactly.
    #[test]
    fn escaped_ids_stay_distinct() {
        let Some(url) = url("escaped_ids_stay_distinct") else {
            return;
        };
        let _turn = turn();
        let store = PgStore::connect_with(&url, opts(&fresh_schema())).unwrap();
        let ids = [
            "\0",
            "\\0",
            "\\",
            "\\\\",
            "a\0b",
            "a\\0b",
            "ü\0🚀",
            "'; DROP TABLE x; --",
        ];
        for (i, id) in ids.iter().enumerate() {
            store
                .append_blocking(&x(id), &t("\\0"), step_event(i as u64))
                .unwrap();
        }
        store
            .append_blocking(&x("other"), &t("\0"), step_event(99))
            .unwrap();
        for (i, id) in ids.iter().enumerate() {
            let ev = store.load_events_blocking(&x(id)).unwrap();
            assert_eq!(ev.len(), 1, "{id:?}");
            assert_eq!(event_number(&ev[0].event), Some(i as u64));
            assert_eq!(ev[0].tenant_id.as_str(), "\\0");
        }
        let mut listed: Vec<String> = store
            .list_executions_blocking(&t("\\0"), 100, 0)
            .unwrap()
            .iter()
            .map(|e| e.as_str().to_owned())
            .collect();
        listed.sort();
        let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(listed, want);
        assert_eq!(
            store.list_executions_blocking(&t("\0"), 100, 0).unwrap(),
            vec![x("other")]
        );
        let err = store
            .append_blocking(&x("\0"), &t("\0"), step_event(1))
            .unwrap_err();
        assert!(matches!(err, Error::TenantMismatch { .. }), "{err:?}");
    }

    /// Passes on e913381: a password in the URL is never printed.
    #[test]
    fn a_password_in_the_url_is_never_printed() {
        for url in [
            "postgres://u:hunter2@127.0.0.1:1/db",
            "postgres://u:hunter2@127.0.0.1:notaport/db",
            "postgres://u:hunter2@127.0.0.1:1/db?sslmode=bogus",
            "host=127.0.0.1 port=1 user=u password=hunter2 dbname=db",
            "host=127.0.0.1 port=1 user=u password=hunter2 dbname=db bogus=1",
        ] {
            let err = PgStore::connect(url).unwrap_err();
            assert!(
                !format!("{err} {err:?}").contains("hunter2"),
                "{url}: {err:?}"
            );
        }
        if let Some(real) = std::env::var("EXECLOG_PG_URL")
            .ok()
            .filter(|u| !u.is_empty())
        {
            let with_pw = real.replacen("execlog@", "execlog:hunter2@", 1);
            let store = PgStore::connect(&with_pw).unwrap();
            assert!(!format!("{store:?} {}", store.server()).contains("hunter2"));
        }
    }

    /// Passes on e913381: blocking twins and drop from inside tokio runtimes of both
    /// flavours neither deadlock nor panic.
    #[test]
    fn blocking_twins_and_drop_inside_runtimes() {
        let Some(url) = url("blocking_twins_and_drop_inside_runtimes") else {
            return;
        };
        let _turn = turn();
        let schema = fresh_schema();
        for multi in [false, true] {
            let (url, schema) = (url.clone(), schema.clone());
            let done = in_thread(move || {
                let rt = if multi {
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(1)
                        .enable_all()
                        .build()
                } else {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                }
                .unwrap();
                rt.block_on(async move {
                    let store = PgStore::connect_with(&url, opts(&schema)).unwrap();
                    let e = x("twins");
                    let seq = store.append_blocking(&e, &t("t"), step_event(1)).unwrap();
                    let seq2 = store.append(&e, &t("t"), step_event(2)).await.unwrap();
                    assert_eq!(seq2, seq + 1);
                    assert!(store.load_events_blocking(&e).unwrap().len() >= 2);
                    store.close().unwrap();
                    drop(store);
                    let store = PgStore::connect_with(&url, opts(&schema)).unwrap();
                    drop(store); // without close, inside the runtime
                })
            });
            done.recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("deadlock (multi_thread: {multi})"));
        }
    }
}

#[cfg(not(feature = "postgres"))]
#[test]
#[ignore = "needs the `postgres` feature and a server"]
fn adversary_pg() {}
