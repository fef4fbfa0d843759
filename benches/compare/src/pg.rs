//! The PostgreSQL backend beside a naive PostgreSQL client, against one server (feature
//! `postgres`, and a server URL: `--pg-url` or `EXECLOG_PG_URL`).
//!
//! - `pgstore`: `execlog::postgres::PgStore`, whose client-side group commit merges the
//!   appends waiting when one of its write connections is free into one transaction.
//! - `pg-naive`: what an application would write without it: one connection per writer,
//!   each append its own transaction, four round trips (`BEGIN`; the head-row upsert
//!   `INSERT … ON CONFLICT … RETURNING last_seq`; the event row(s); `COMMIT`), on the
//!   same tables (made by `execlog::postgres::migrate`) with the same sequence and
//!   tenant rules. Each connection runs on its own current-thread tokio runtime that
//!   the writer's thread drives while it waits, so no reply crosses threads.
//!
//! Every cell runs in a fresh schema, after a `CHECKPOINT`, and the two systems
//! alternate within each repeat. Besides events/s, each cell records what the server
//! saw: transactions (distinct `xid`s of the rows), WAL flushes (`pg_stat_wal.wal_sync`)
//! and the CPU of the client (this process) and of the server (the postmaster and its
//! children, from /proc), to show where the time goes.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use execlog::postgres::{PgOptions, PgStore};
use execlog::{ExecutionEventData, ExecutionId, TenantId};
use parking_lot::Mutex;
use tokio::runtime::Runtime;
use tokio_postgres::{Client, NoTls, Statement};

use crate::systems::System;
use crate::{Config, Sample};

/// The PostgreSQL systems, in report order.
pub const NAMES: [&str; 2] = ["pgstore", "pg-naive"];

/// Events per append in the batch cells.
const BATCH_EVENTS: u64 = 10;

/// Settings printed with the figures.
const SETTINGS: [&str; 12] = [
    "fsync",
    "synchronous_commit",
    "wal_sync_method",
    "full_page_writes",
    "shared_buffers",
    "wal_buffers",
    "max_wal_size",
    "checkpoint_timeout",
    "max_connections",
    "commit_delay",
    "commit_siblings",
    "wal_writer_delay",
];

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A session set up as PgStore sets up its own: `synchronous_commit = on` and the
/// schema first on the search path. Its I/O runs when `rt` is driven.
fn connect(rt: &Runtime, url: &str, schema: Option<&str>) -> Client {
    let mut config: tokio_postgres::Config = url.parse().expect("PostgreSQL URL");
    config.application_name("execlog-compare");
    let (client, connection) = rt.block_on(config.connect(NoTls)).expect("connect");
    rt.spawn(async move {
        let _ = connection.await;
    });
    let mut setup = String::from("SET synchronous_commit = on;");
    if let Some(schema) = schema {
        setup.push_str(&format!("SET search_path = {schema};"));
    }
    rt.block_on(client.batch_execute(&setup))
        .expect("session setup");
    client
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// `PgStore` through its blocking calls, as the embedded store is measured.
struct Pg(PgStore);

impl System for Pg {
    fn append(&self, exec: &str, tenant: &str, event: &ExecutionEventData) {
        self.0
            .append_blocking(
                &ExecutionId::from(exec),
                &TenantId::from(tenant),
                event.clone(),
            )
            .expect("append");
    }
    fn append_batch(&self, exec: &str, tenant: &str, events: &[ExecutionEventData]) {
        self.0
            .append_batch_blocking(
                &ExecutionId::from(exec),
                &TenantId::from(tenant),
                events.to_vec(),
            )
            .expect("append_batch");
    }
    fn load(&self, exec: &str) -> usize {
        self.0
            .load_events_blocking(&ExecutionId::from(exec))
            .expect("load")
            .len()
    }
    fn load_after(&self, exec: &str, after: u64) -> usize {
        self.0
            .load_events_after_blocking(&ExecutionId::from(exec), after)
            .expect("load_after")
            .len()
    }
    fn list(&self, tenant: &str, limit: usize, offset: usize) -> usize {
        self.0
            .list_executions_blocking(&TenantId::from(tenant), limit, offset)
            .expect("list")
            .len()
    }
}

/// Advances the execution's head row (or creates it), under its row lock until the
/// commit; no row back means another tenant owns the execution.
const HEAD_SQL: &str = "
INSERT INTO execlog_executions AS h (execution_id, tenant_id, last_seq, last_ts_ns)
VALUES ($1, $2, $3, $4)
ON CONFLICT (execution_id) DO UPDATE
    SET last_seq = h.last_seq + excluded.last_seq,
        last_ts_ns = greatest(h.last_ts_ns, excluded.last_ts_ns)
    WHERE h.tenant_id = excluded.tenant_id
RETURNING h.last_seq, h.last_ts_ns";

const EVENT_SQL: &str =
    "INSERT INTO execlog_events (execution_id, seq, ts_ns, body) VALUES ($1, $2, $3, $4)";

/// A batch's rows in one statement: sequences `$2 + 1 …`.
const EVENTS_SQL: &str = "
INSERT INTO execlog_events (execution_id, seq, ts_ns, body)
SELECT $1::text, $2::bigint + t.o, $3::bigint, t.b
FROM unnest($4::bytea[]) WITH ORDINALITY AS t(b, o)";

/// PgStore's read queries.
const LOAD_SQL: &str = "
SELECT e.seq, e.ts_ns, e.body, h.tenant_id
FROM execlog_events e JOIN execlog_executions h ON h.execution_id = e.execution_id
WHERE e.execution_id = $1 AND e.seq > $2
ORDER BY e.seq
LIMIT $3";

const LIST_SQL: &str = "
SELECT execution_id FROM execlog_executions
WHERE tenant_id = $1
ORDER BY created DESC
LIMIT $2 OFFSET $3";

/// One connection of the naive client with its prepared statements.
struct Conn {
    rt: Runtime,
    client: Client,
    head: Statement,
    event: Statement,
    events: Statement,
    load: Statement,
    list: Statement,
}

/// The naive client: a connection per concurrent caller (opened ahead, so that no
/// connection is made while measured), one transaction per append. Events are stored
/// as their JSON, as the other peers store them.
struct Naive {
    url: String,
    schema: String,
    pool: Mutex<Vec<Conn>>,
}

impl Naive {
    fn open(url: &str, schema: &str, connections: usize) -> Self {
        execlog::postgres::migrate(url, &PgOptions::default().schema(schema)).expect("migrate");
        let naive = Naive {
            url: url.to_string(),
            schema: schema.to_string(),
            pool: Mutex::new(Vec::new()),
        };
        let conns: Vec<Conn> = (0..connections).map(|_| naive.connect()).collect();
        *naive.pool.lock() = conns;
        naive
    }

    fn connect(&self) -> Conn {
        let rt = runtime();
        let client = connect(&rt, &self.url, Some(&self.schema));
        let prepare = |sql| rt.block_on(client.prepare(sql)).expect("prepare");
        Conn {
            head: prepare(HEAD_SQL),
            event: prepare(EVENT_SQL),
            events: prepare(EVENTS_SQL),
            load: prepare(LOAD_SQL),
            list: prepare(LIST_SQL),
            client,
            rt,
        }
    }

    /// Runs `f` on a connection no other caller is using.
    fn with<R>(&self, f: impl FnOnce(&Conn) -> R) -> R {
        let conn = self.pool.lock().pop();
        let conn = conn.unwrap_or_else(|| self.connect());
        let result = f(&conn);
        self.pool.lock().push(conn);
        result
    }
}

impl System for Naive {
    fn append_batch(&self, exec: &str, tenant: &str, events: &[ExecutionEventData]) {
        let bodies: Vec<Vec<u8>> = events
            .iter()
            .map(|e| serde_json::to_vec(e).expect("json"))
            .collect();
        let n = bodies.len() as i64;
        self.with(|c| {
            c.rt.block_on(async {
                c.client.batch_execute("BEGIN").await.expect("BEGIN");
                let head = c
                    .client
                    .query_opt(&c.head, &[&exec, &tenant, &n, &now_ns()])
                    .await
                    .expect("head upsert")
                    .expect("tenant mismatch");
                let (last, ts): (i64, i64) = (head.get(0), head.get(1));
                if n == 1 {
                    c.client
                        .execute(&c.event, &[&exec, &last, &ts, &bodies[0]])
                        .await
                } else {
                    c.client
                        .execute(&c.events, &[&exec, &(last - n), &ts, &bodies])
                        .await
                }
                .expect("insert events");
                c.client.batch_execute("COMMIT").await.expect("COMMIT");
            })
        });
    }
    fn load_after(&self, exec: &str, after: u64) -> usize {
        self.with(|c| {
            let rows =
                c.rt.block_on(
                    c.client
                        .query(&c.load, &[&exec, &(after as i64), &i64::MAX]),
                )
                .expect("load");
            for row in &rows {
                let _seq: i64 = row.get(0);
                let _ts: i64 = row.get(1);
                let body: &[u8] = row.get(2);
                let _tenant: &str = row.get(3);
                let _event: ExecutionEventData = serde_json::from_slice(body).expect("json");
            }
            rows.len()
        })
    }
    fn list(&self, tenant: &str, limit: usize, offset: usize) -> usize {
        self.with(|c| {
            c.rt.block_on(
                c.client
                    .query(&c.list, &[&tenant, &(limit as i64), &(offset as i64)]),
            )
            .expect("list")
            .len()
        })
    }
}

/// Opens system `name` in `schema` (created with the tables if missing), ready for
/// `writers` concurrent callers.
fn open(c: &Config, url: &str, name: &str, schema: &str, writers: usize) -> Box<dyn System> {
    match name {
        "pgstore" => {
            let mut options = PgOptions::default().schema(schema);
            if let Some(n) = c.pg_write_connections {
                options = options.write_connections(n);
            }
            Box::new(Pg(PgStore::connect_with(url, options).expect("PgStore")))
        }
        "pg-naive" => Box::new(Naive::open(url, schema, writers.max(1))),
        other => panic!("unknown system {other}"),
    }
}

/// A session for setup and for what the server saw.
struct Admin {
    rt: Runtime,
    client: Client,
    /// The postmaster's pid, if the server runs on this machine.
    postmaster: Option<u32>,
}

impl Admin {
    fn new(url: &str) -> Self {
        let rt = runtime();
        let client = connect(&rt, url, None);
        let mut admin = Admin {
            rt,
            client,
            postmaster: None,
        };
        let data = admin.value("SELECT current_setting('data_directory')");
        admin.postmaster = std::fs::read_to_string(format!("{data}/postmaster.pid"))
            .ok()
            .and_then(|pid| pid.lines().next()?.trim().parse().ok());
        admin
    }

    fn exec(&self, sql: &str) {
        self.rt
            .block_on(self.client.batch_execute(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The first column of the first row, as text.
    fn value(&self, sql: &str) -> String {
        self.rt
            .block_on(self.client.simple_query(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// The server's version and [`SETTINGS`], and the file system of its data directory.
    fn settings(&self) -> Vec<(String, String)> {
        let mut out = vec![("version".to_string(), self.value("SELECT version()"))];
        for name in SETTINGS {
            out.push((
                name.to_string(),
                self.value(&format!("SELECT current_setting('{name}')")),
            ));
        }
        let data = self.value("SELECT current_setting('data_directory')");
        out.push((
            "data directory file system".to_string(),
            crate::report::sh(&format!("df -T '{data}' | awk 'NR==2{{print $2}}'")),
        ));
        out
    }

    /// WAL flushes so far (`pg_stat_wal`, PostgreSQL 14 and later).
    fn wal_syncs(&self) -> Option<i64> {
        self.rt
            .block_on(
                self.client
                    .query_one("SELECT wal_sync FROM pg_stat_wal", &[]),
            )
            .ok()
            .map(|r| r.get(0))
    }

    /// Waits (at most 10 s) until no other client session is left, so that the
    /// closed sessions have reported their statistics and been reaped.
    fn wait_idle(&self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            let others = self.value(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            );
            if others == "0" {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn drop_schema(&self, schema: &str) {
        self.exec(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
    }

    /// Events stored in `schema` and the transactions that wrote them.
    fn rows(&self, schema: &str) -> (i64, i64) {
        let row = self
            .rt
            .block_on(self.client.query_one(
                &format!("SELECT count(*), count(DISTINCT xid) FROM {schema}.execlog_events"),
                &[],
            ))
            .expect("count rows");
        (row.get(0), row.get(1))
    }

    /// Bytes of the tables and their indexes in `schema`.
    fn bytes(&self, schema: &str) -> i64 {
        self.value(&format!(
            "SELECT pg_total_relation_size('{schema}.execlog_events') + pg_total_relation_size('{schema}.execlog_executions')"
        ))
        .parse()
        .unwrap_or(0)
    }

    /// CPU time so far: the whole machine, this process, and the server (the postmaster,
    /// its live children and the children it reaped), in clock ticks.
    fn cpu(&self) -> Cpu {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        // user, nice, system, (idle, iowait,) irq, softirq; not steal.
        let busy = [0, 1, 2, 5, 6]
            .iter()
            .map(|&i| fields.get(i).copied().unwrap_or(0))
            .sum();
        let server = self.postmaster.and_then(|pm| {
            let (_, own, reaped) = proc_ticks(pm)?;
            let children: u64 = std::fs::read_dir("/proc")
                .ok()?
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(proc_ticks)
                .filter(|(ppid, ..)| *ppid == pm)
                .map(|(_, own, _)| own)
                .sum();
            Some(own + reaped + children)
        });
        Cpu {
            at: Instant::now(),
            busy,
            client: proc_ticks(std::process::id()).map_or(0, |(_, own, _)| own),
            server,
        }
    }
}

/// (parent pid, utime + stime, cutime + cstime) of a process, in clock ticks.
fn proc_ticks(pid: u32) -> Option<(u32, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name's closing parenthesis: state, ppid, … (fields 3 on).
    let rest: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let n = |i: usize| rest.get(i - 3)?.parse::<u64>().ok();
    Some((n(4)? as u32, n(14)? + n(15)?, n(16)? + n(17)?))
}

#[derive(Clone, Copy)]
struct Cpu {
    at: Instant,
    busy: u64,
    client: u64,
    server: Option<u64>,
}

/// Cores busy on average between two [`Cpu`] readings: the machine, this process
/// (the client), the server.
#[derive(Clone, Copy, Default)]
struct CpuUse {
    busy: f64,
    client: f64,
    server: Option<f64>,
}

fn cpu_use(a: Cpu, b: Cpu) -> CpuUse {
    let ticks = b.at.duration_since(a.at).as_secs_f64().max(1e-9) * clock_ticks();
    CpuUse {
        busy: (b.busy - a.busy) as f64 / ticks,
        client: (b.client - a.client) as f64 / ticks,
        server: b.server.zip(a.server).map(|(b, a)| (b - a) as f64 / ticks),
    }
}

fn clock_ticks() -> f64 {
    crate::report::sh("getconf CLK_TCK")
        .parse()
        .unwrap_or(100.0)
}

/// One measured cell of one system.
#[derive(Clone, Default)]
struct Cell {
    sample: Sample,
    /// Events stored (warm-up included) per distinct transaction id.
    per_txn: f64,
    /// Events stored per WAL flush over the cell's life (connect to close).
    per_flush: Option<f64>,
    /// During the measured seconds only.
    cpu: CpuUse,
}

/// The cell with the median rate.
fn median_cell(mut cells: Vec<Cell>) -> Cell {
    cells.sort_by(|a, b| a.sample.rate().total_cmp(&b.sample.rate()));
    cells.swap_remove(cells.len() / 2)
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Single,
    Batch,
}

/// Measures `name` with `writers` writers in a fresh `schema`: a short warm-up, then
/// `seconds`.
fn cell(
    c: &Config,
    admin: &Admin,
    url: &str,
    name: &str,
    schema: &str,
    writers: usize,
    kind: Kind,
) -> Cell {
    let work = |sys: &dyn System, seconds: f64| match kind {
        Kind::Single => crate::ingest(sys, writers, seconds),
        Kind::Batch => crate::batch_ingest(sys, writers, seconds, BATCH_EVENTS),
    };
    admin.drop_schema(schema);
    admin.exec("CHECKPOINT");
    admin.wait_idle();
    let flushes = admin.wal_syncs();
    let sys = open(c, url, name, schema, writers);
    work(sys.as_ref(), (c.seconds / 10.0).clamp(0.1, 0.5));
    let before = admin.cpu();
    let sample = work(sys.as_ref(), c.seconds);
    let after = admin.cpu();
    drop(sys);
    admin.wait_idle();
    let flushes = admin.wal_syncs().zip(flushes).map(|(b, a)| b - a);
    let (events, txns) = admin.rows(schema);
    admin.drop_schema(schema);
    Cell {
        sample,
        per_txn: events as f64 / txns.max(1) as f64,
        per_flush: flushes.map(|f| events as f64 / f.max(1) as f64),
        cpu: cpu_use(before, after),
    }
}

fn schema_name(name: &str, kind: &str, writers: usize, repeat: usize) -> String {
    let tag = if name == "pgstore" {
        "pgstore"
    } else {
        "naive"
    };
    format!("bench_{tag}_{kind}{writers}_r{repeat}")
}

/// `--only pgstore|pg-naive`: one system's cells, printed (no report).
pub fn profile(c: &Config, name: &str) {
    let url = c.pg_url.as_deref().expect("--pg-url or EXECLOG_PG_URL");
    let admin = Admin::new(url);
    let (kind, label) = if c.batch {
        (Kind::Batch, "batch of 10")
    } else {
        (Kind::Single, "single")
    };
    for &w in &c.pg_writers {
        for r in 0..c.repeats {
            let x = cell(
                c,
                &admin,
                url,
                name,
                &schema_name(name, label, w, r),
                w,
                kind,
            );
            println!(
                "{name} {w} writers, {label}: {:.0} events/s, p50 {:.0} µs, p99 {:.0} µs; {:.1} events per transaction, {} per WAL flush; {}",
                x.sample.rate(),
                x.sample.pct_us(0.5),
                x.sample.pct_us(0.99),
                x.per_txn,
                x.per_flush.map_or("?".into(), |f| format!("{f:.1}")),
                cpu_text(x.cpu)
            );
        }
    }
}

fn cpu_text(u: CpuUse) -> String {
    match u.server {
        Some(s) => format!(
            "{:.2} cores busy: client {:.2}, server {:.2}",
            u.busy, u.client, s
        ),
        None => format!("{:.2} cores busy: client {:.2}", u.busy, u.client),
    }
}

struct Reads {
    fill: Duration,
    load: Sample,
    after: Sample,
    list_us: f64,
    bytes_per_event: f64,
    /// Average stored body.
    body_bytes: f64,
}

/// Measures every PostgreSQL cell and returns the report's section (markdown).
pub fn run(c: &Config) -> String {
    let url = c.pg_url.as_deref().expect("--pg-url or EXECLOG_PG_URL");
    let admin = Admin::new(url);
    let settings = admin.settings();
    for (k, v) in &settings {
        eprintln!("PostgreSQL {k}: {v}");
    }
    let mut ingest: Vec<(Kind, usize, [Cell; 2])> = Vec::new();
    for (kind, label) in [(Kind::Single, "single"), (Kind::Batch, "batch")] {
        for &w in &c.pg_writers {
            eprintln!("PostgreSQL: {label} ingest, {w} writers…");
            let mut per: [Vec<Cell>; 2] = [Vec::new(), Vec::new()];
            for r in 0..c.repeats {
                // Alternate which system goes first.
                for i in [r % 2, 1 - r % 2] {
                    let name = NAMES[i];
                    let schema = schema_name(name, label, w, r);
                    per[i].push(cell(c, &admin, url, name, &schema, w, kind));
                }
            }
            let [a, b] = per;
            ingest.push((kind, w, [median_cell(a), median_cell(b)]));
        }
    }
    let mut reads = Vec::new();
    for name in NAMES {
        eprintln!("PostgreSQL: {name} reads…");
        let schema = schema_name(name, "reads", 1, 0);
        admin.drop_schema(&schema);
        let sys = open(c, url, name, &schema, 1);
        let t = Instant::now();
        crate::fill(sys.as_ref(), c.read_events);
        let fill = t.elapsed();
        let executions = c.read_events / 100;
        let load = crate::median(
            (0..c.repeats)
                .map(|_| crate::reads(sys.as_ref(), executions, c.seconds, false))
                .collect(),
        );
        let after = crate::median(
            (0..c.repeats)
                .map(|_| crate::reads(sys.as_ref(), executions, c.seconds, true))
                .collect(),
        );
        // The median call: a mean of a few hundred calls of ~100 µs moves with a
        // single preemption on this shared 2-core machine.
        let start = Instant::now();
        let lat = (0..500)
            .map(|i| {
                let t = Instant::now();
                sys.list(&format!("tenant-{}", i % 10), 50, 0);
                t.elapsed()
            })
            .collect();
        let list_us = Sample::new(0, start.elapsed(), lat).pct_us(0.5);
        drop(sys);
        let bytes_per_event = admin.bytes(&schema) as f64 / c.read_events.max(1) as f64;
        let body_bytes = admin
            .value(&format!(
                "SELECT avg(octet_length(body)) FROM {schema}.execlog_events"
            ))
            .parse()
            .unwrap_or(0.0);
        admin.drop_schema(&schema);
        reads.push(Reads {
            fill,
            load,
            after,
            list_us,
            bytes_per_event,
            body_bytes,
        });
    }
    render(c, &settings, &ingest, &reads)
}

fn render(
    c: &Config,
    settings: &[(String, String)],
    ingest: &[(Kind, usize, [Cell; 2])],
    reads: &[Reads],
) -> String {
    let mut md = String::new();
    let w = &mut md;
    let url = c.pg_url.as_deref().unwrap_or_default();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .map(|a| {
            if a == url {
                "\"$EXECLOG_PG_URL\"".to_string()
            } else {
                a
            }
        })
        .collect();
    let _ = writeln!(w, "## PostgreSQL backend\n");
    let _ = writeln!(
        w,
        "Generated by `scripts/postgres.sh run -- sh -c 'cargo run --release --manifest-path benches/compare/Cargo.toml --features postgres -- {}'` \
        ({} s per measurement after a {:.1} s warm-up, median of {} repeats, the two systems alternating; \
        every measurement in a fresh schema, after a `CHECKPOINT`). Do not edit by hand: `--pg-only` rewrites only this section.\n",
        args.join(" "),
        c.seconds,
        (c.seconds / 10.0).clamp(0.1, 0.5),
        c.repeats
    );
    let setting = |k: &str| {
        settings
            .iter()
            .find(|(n, _)| n == k)
            .map_or("?", |(_, v)| v.as_str())
    };
    let _ = writeln!(
        w,
        "- Server: {}, started by `scripts/postgres.sh` on this machine (same disk, data directory on {}), clients over TCP on 127.0.0.1.",
        setting("version"),
        setting("data directory file system")
    );
    let _ = writeln!(
        w,
        "- Settings: {}.",
        SETTINGS
            .iter()
            .map(|k| format!("{k}={}", setting(k)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        w,
        "- PgStore: execlog at commit {}, `PgOptions::default()`{}; its blocking calls from the writer threads.",
        crate::report::sh("git rev-parse --short HEAD"),
        c.pg_write_connections
            .map_or(String::new(), |n| format!(" with `write_connections({n})`"))
    );
    let _ = writeln!(
        w,
        "- naive PostgreSQL client: one connection per writer (tokio-postgres, each connection on its own current-thread runtime driven by its writer's thread), \
        each append its own transaction in four round trips: `BEGIN`; the head-row upsert `INSERT … ON CONFLICT (execution_id) DO UPDATE SET last_seq = last_seq + n … WHERE tenant matches RETURNING last_seq`; \
        the event row(s) (`INSERT … VALUES`, a batch as one `INSERT … SELECT … FROM unnest($4::bytea[])`); `COMMIT`. \
        Same tables, made by `execlog::postgres::migrate`, and the same sequence and tenant rules; `synchronous_commit = on` in every session of both. \
        It stores the events' JSON ({:.0} bytes on average) where PgStore stores its binary encoding ({:.0} bytes).\n",
        reads.get(1).map_or(0.0, |r| r.body_bytes),
        reads.first().map_or(0.0, |r| r.body_bytes)
    );
    let _ = writeln!(
        w,
        "Besides events/s (p50 / p99 latency per append, µs): events per transaction and per WAL flush as the server counted them \
        (distinct `xid` of the stored rows; `pg_stat_wal.wal_sync` from connect to close, warm-up included), \
        and the cores in use while measured, of the machine's {}: this process (the client), the postmaster and its children (the server), \
        and the rest of the machine (other work on this shared machine, and interrupt time not charged to a process).\n",
        crate::report::sh("nproc")
    );
    for (kind, title) in [
        (
            Kind::Single,
            "Single-event ingest, each append durable before it returns",
        ),
        (
            Kind::Batch,
            "Batch ingest: 10 events per append, each append durable before it returns",
        ),
    ] {
        let _ = writeln!(w, "### {title}\n");
        let _ = writeln!(
            w,
            "| writers | PgStore events/s (p50 / p99) | naive client events/s (p50 / p99) | PgStore ÷ naive | events per transaction, PgStore / naive | events per WAL flush, PgStore / naive | cores: client / server / rest, PgStore | naive |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for (_, writers, [p, n]) in ingest.iter().filter(|(k, ..)| *k == kind) {
            let rate = |x: &Cell| {
                format!(
                    "{:.0} ({:.0} / {:.0})",
                    x.sample.rate(),
                    x.sample.pct_us(0.5),
                    x.sample.pct_us(0.99)
                )
            };
            let flush = |x: &Cell| x.per_flush.map_or("?".into(), |f| format!("{f:.1}"));
            let cores = |x: &Cell| match x.cpu.server {
                Some(server) => format!(
                    "{:.2} / {:.2} / {:.2}",
                    x.cpu.client,
                    server,
                    (x.cpu.busy - x.cpu.client - server).max(0.0)
                ),
                None => format!("{:.2} / ? / ?", x.cpu.client),
            };
            let _ = writeln!(
                w,
                "| {writers} | {} | {} | {:.2} | {:.1} / {:.1} | {} / {} | {} | {} |",
                rate(p),
                rate(n),
                p.sample.rate() / n.sample.rate().max(1e-9),
                p.per_txn,
                n.per_txn,
                flush(p),
                flush(n),
                cores(p),
                cores(n)
            );
        }
        let _ = writeln!(w);
    }
    if let Some((_, writers, [p, n])) = ingest
        .iter()
        .filter(|(k, ..)| *k == Kind::Single)
        .max_by_key(|(_, w, _)| *w)
    {
        let _ = writeln!(
            w,
            "**Single events, {writers} writers: PgStore ÷ naive client = {:.2}** ({:.0} vs {:.0} events/s).\n",
            p.sample.rate() / n.sample.rate().max(1e-9),
            p.sample.rate(),
            n.sample.rate()
        );
    }
    if reads.len() == 2 {
        let (p, n) = (&reads[0], &reads[1]);
        let _ = writeln!(
            w,
            "### Reads\n\nStore: {} events in {} executions of 100, filled by each client with batches of 100; one reader.\n",
            c.read_events,
            c.read_events / 100
        );
        let _ = writeln!(w, "| measure | PgStore | naive client |\n|---|---:|---:|");
        let _ = writeln!(
            w,
            "| fill time (one writer, batches of 100) | {:.1} s | {:.1} s |",
            p.fill.as_secs_f64(),
            n.fill.as_secs_f64()
        );
        let _ = writeln!(
            w,
            "| load_events of a random execution, events/s | {:.0} | {:.0} |",
            p.load.rate(),
            n.load.rate()
        );
        let _ = writeln!(
            w,
            "| load_events p50 / p99 per call, µs | {:.0} / {:.0} | {:.0} / {:.0} |",
            p.load.pct_us(0.5),
            p.load.pct_us(0.99),
            n.load.pct_us(0.5),
            n.load.pct_us(0.99)
        );
        let _ = writeln!(
            w,
            "| load_events_after (last 10), p50 µs | {:.0} | {:.0} |",
            p.after.pct_us(0.5),
            n.after.pct_us(0.5)
        );
        let _ = writeln!(
            w,
            "| list_executions, page of 50, p50 µs | {:.0} | {:.0} |",
            p.list_us, n.list_us
        );
        let _ = writeln!(
            w,
            "| server bytes per event (tables and indexes) | {:.0} | {:.0} |",
            p.bytes_per_event, n.bytes_per_event
        );
    }
    md
}
