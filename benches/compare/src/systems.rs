//! The systems compared, behind one small trait. Each appends durably (one transaction
//! per append, synced before it returns) and returns typed events on read.

use std::path::Path;

use execlog::{ExecutionEventData, ExecutionId, LogStore, TenantId};
use parking_lot::Mutex;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

/// One storage system under test.
pub trait System: Sync {
    /// One event, durable before it returns. By default a batch of one, which is how
    /// the peers without a single-event call write it.
    fn append(&self, exec: &str, tenant: &str, event: &ExecutionEventData) {
        self.append_batch(exec, tenant, std::slice::from_ref(event));
    }
    fn append_batch(&self, exec: &str, tenant: &str, events: &[ExecutionEventData]);
    /// All events of an execution, decoded; returns how many.
    fn load(&self, exec: &str) -> usize {
        self.load_after(exec, 0)
    }
    /// Events after `after`, decoded; returns how many.
    fn load_after(&self, exec: &str, after: u64) -> usize;
    /// One page of a tenant's executions, newest first; returns how many.
    fn list(&self, tenant: &str, limit: usize, offset: usize) -> usize;
}

/// The systems of this build, execlog first; RocksDB with feature `rocksdb`.
pub fn names() -> Vec<&'static str> {
    let mut names = vec!["execlog", "sqlite", "redb"];
    if cfg!(feature = "rocksdb") {
        names.push("rocksdb");
    }
    names
}

/// How a system is called in the report.
pub fn display_name(name: &str) -> &str {
    match name {
        "sqlite" => "SQLite",
        "rocksdb" => "RocksDB",
        other => other,
    }
}

/// execlog's default options, except `EXECLOG_BENCH_GROW_MIN_BYTES` (for A/B runs of
/// `Options::grow_group_min_bytes`; `max` never grows the file with records),
/// `EXECLOG_BENCH_SEGMENT_BYTES` (`Options::segment_size_bytes`: small segments are
/// sealed, and so scrubbed, within a short run) and `EXECLOG_BENCH_SCRUB` (`off`, or
/// a fixed rate in bytes per second, `max` for no pacing: `Options::scrub`).
pub fn execlog_options() -> execlog::Options {
    let mut options = execlog::Options::default();
    let var = |name: &str| std::env::var(name).ok();
    let parse = |name: &str, v: &str| -> u64 { v.parse().unwrap_or_else(|_| panic!("{name}={v}")) };
    if let Some(v) = var("EXECLOG_BENCH_GROW_MIN_BYTES") {
        let bytes = if v == "max" {
            u64::MAX
        } else {
            parse("EXECLOG_BENCH_GROW_MIN_BYTES", &v)
        };
        options = options.grow_group_min_bytes(bytes);
    }
    if let Some(v) = var("EXECLOG_BENCH_SEGMENT_BYTES") {
        options = options.segment_size_bytes(parse("EXECLOG_BENCH_SEGMENT_BYTES", &v));
    }
    if let Some(v) = var("EXECLOG_BENCH_SIDECARS") {
        options = options.segment_sidecars(v != "off");
    }
    if let Some(v) = var("EXECLOG_BENCH_SCRUB") {
        options = options.scrub(match v.as_str() {
            "off" => execlog::ScrubRate::Off,
            "max" => execlog::ScrubRate::BytesPerSecond(u64::MAX),
            v => execlog::ScrubRate::BytesPerSecond(parse("EXECLOG_BENCH_SCRUB", v)),
        });
    }
    options
}

/// execlog opened in `dir` with `options`.
pub fn execlog_with(dir: &Path, options: execlog::Options) -> Box<dyn System> {
    Box::new(Execlog(
        LogStore::open_with(dir, options).expect("open execlog"),
    ))
}

pub fn open(name: &str, dir: &Path) -> Box<dyn System> {
    std::fs::create_dir_all(dir).expect("create bench dir");
    match name {
        "execlog" => Box::new(Execlog(
            LogStore::open_with(dir, execlog_options()).expect("open execlog"),
        )),
        "sqlite" => Box::new(Sqlite::open(dir)),
        "redb" => Box::new(Redb::open(dir)),
        #[cfg(feature = "rocksdb")]
        "rocksdb" => Box::new(rocks::Rocks::open(dir)),
        other => panic!("unknown system {other}"),
    }
}

struct Execlog(LogStore);

impl System for Execlog {
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

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// SQLite as an application would use it: WAL, synchronous=FULL, one transaction per
/// append, primary key (execution_id, seq), events as JSON, one shared connection. The
/// index on `created` keeps numbering a new execution (`max(created) + 1`) from scanning
/// every execution: without it, a fill of a million executions slowed to a halt.
struct Sqlite(Mutex<rusqlite::Connection>);

impl Sqlite {
    fn open(dir: &Path) -> Self {
        let c = rusqlite::Connection::open(dir.join("events.db")).expect("sqlite open");
        c.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS events(execution_id TEXT NOT NULL, seq INTEGER NOT NULL,
                 tenant_id TEXT NOT NULL, ts INTEGER NOT NULL, event TEXT NOT NULL,
                 PRIMARY KEY (execution_id, seq));
             CREATE TABLE IF NOT EXISTS executions(execution_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL,
                 created INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS by_tenant ON executions(tenant_id, created);
             CREATE INDEX IF NOT EXISTS by_created ON executions(created);",
        )
        .expect("sqlite schema");
        Sqlite(Mutex::new(c))
    }

    fn insert(&self, exec: &str, tenant: &str, events: &[ExecutionEventData]) {
        let mut c = self.0.lock();
        let tx = c
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .expect("begin");
        let last: Option<(String, u64)> = tx
            .query_row(
                "SELECT e.tenant_id, (SELECT max(seq) FROM events WHERE execution_id = ?1) FROM executions e WHERE e.execution_id = ?1",
                [exec],
                |r| Ok((r.get(0)?, r.get::<_, Option<u64>>(1)?.unwrap_or(0))),
            )
            .ok();
        let mut seq = match last {
            Some((owner, seq)) => {
                assert_eq!(owner, tenant, "tenant mismatch");
                seq
            }
            None => {
                tx.execute(
                    "INSERT INTO executions VALUES (?1, ?2, (SELECT coalesce(max(created), 0) + 1 FROM executions))",
                    [exec, tenant],
                )
                .expect("insert execution");
                0
            }
        };
        {
            let mut stmt = tx
                .prepare_cached("INSERT INTO events VALUES (?1, ?2, ?3, ?4, ?5)")
                .expect("prepare");
            let ts = now_ns();
            for e in events {
                seq += 1;
                let json = serde_json::to_string(e).expect("json");
                stmt.execute(rusqlite::params![exec, seq, tenant, ts, json])
                    .expect("insert");
            }
        }
        tx.commit().expect("commit");
    }

    fn read(&self, exec: &str, after: u64) -> usize {
        let c = self.0.lock();
        let mut stmt = c
            .prepare_cached("SELECT seq, tenant_id, ts, event FROM events WHERE execution_id = ?1 AND seq > ?2 ORDER BY seq")
            .expect("prepare");
        let mut rows = stmt
            .query_map(rusqlite::params![exec, after], |r| {
                let json: String = r.get(3)?;
                let _seq: u64 = r.get(0)?;
                let _tenant: String = r.get(1)?;
                let _ts: i64 = r.get(2)?;
                Ok(decode_typed(&json))
            })
            .expect("query");
        rows.try_fold(0, |n, r| r.map(|_| n + 1)).expect("row")
    }
}

/// Decodes a stored row into the typed event (what execlog returns).
fn decode_typed(json: &str) -> ExecutionEventData {
    serde_json::from_str(json).expect("stored JSON")
}

impl System for Sqlite {
    fn append_batch(&self, exec: &str, tenant: &str, events: &[ExecutionEventData]) {
        self.insert(exec, tenant, events);
    }
    fn load_after(&self, exec: &str, after: u64) -> usize {
        self.read(exec, after)
    }
    fn list(&self, tenant: &str, limit: usize, offset: usize) -> usize {
        let c = self.0.lock();
        let mut stmt = c
            .prepare_cached("SELECT execution_id FROM executions WHERE tenant_id = ?1 ORDER BY created DESC LIMIT ?2 OFFSET ?3")
            .expect("prepare");
        let mut rows = stmt
            .query_map(
                rusqlite::params![tenant, limit as i64, offset as i64],
                |r| r.get::<_, String>(0),
            )
            .expect("query");
        rows.try_fold(0, |n, r| r.map(|_| n + 1)).expect("row")
    }
}

const EVENTS: redb::TableDefinition<(&str, u64), &[u8]> = redb::TableDefinition::new("events");
const EXECUTIONS: redb::TableDefinition<&str, (&str, u64)> =
    redb::TableDefinition::new("executions");
const BY_TENANT: redb::TableDefinition<(&str, u64), &str> = redb::TableDefinition::new("by_tenant");

/// redb: one write transaction per append (default durability), events as JSON.
struct Redb(redb::Database);

impl Redb {
    fn open(dir: &Path) -> Self {
        let db = redb::Database::create(dir.join("events.redb")).expect("redb open");
        let tx = db.begin_write().expect("begin");
        tx.open_table(EVENTS).expect("table");
        tx.open_table(EXECUTIONS).expect("table");
        tx.open_table(BY_TENANT).expect("table");
        tx.commit().expect("commit");
        Redb(db)
    }

    fn insert(&self, exec: &str, tenant: &str, events: &[ExecutionEventData]) {
        let tx = self.0.begin_write().expect("begin");
        {
            let mut execs = tx.open_table(EXECUTIONS).expect("table");
            let known = execs
                .get(exec)
                .expect("get")
                .map(|v| v.value().0.to_string());
            match known {
                Some(owner) => assert_eq!(owner, tenant, "tenant mismatch"),
                None => {
                    let created = execs.len().expect("len") + 1;
                    execs.insert(exec, (tenant, created)).expect("insert");
                    let mut by_tenant = tx.open_table(BY_TENANT).expect("table");
                    by_tenant.insert((tenant, created), exec).expect("insert");
                }
            }
            let mut table = tx.open_table(EVENTS).expect("table");
            let mut seq = table
                .range((exec, 0)..=(exec, u64::MAX))
                .expect("range")
                .next_back()
                .map_or(0, |r| r.expect("row").0.value().1);
            for e in events {
                seq += 1;
                let json = serde_json::to_vec(e).expect("json");
                table.insert((exec, seq), json.as_slice()).expect("insert");
            }
        }
        tx.commit().expect("commit");
    }

    fn read(&self, exec: &str, after: u64) -> usize {
        let tx = self.0.begin_read().expect("begin");
        let table = tx.open_table(EVENTS).expect("table");
        let mut n = 0;
        for row in table
            .range((exec, after + 1)..=(exec, u64::MAX))
            .expect("range")
        {
            let (_, v) = row.expect("row");
            let _event: ExecutionEventData = serde_json::from_slice(v.value()).expect("json");
            n += 1;
        }
        n
    }
}

impl System for Redb {
    fn append_batch(&self, exec: &str, tenant: &str, events: &[ExecutionEventData]) {
        self.insert(exec, tenant, events);
    }
    fn load_after(&self, exec: &str, after: u64) -> usize {
        self.read(exec, after)
    }
    fn list(&self, tenant: &str, limit: usize, offset: usize) -> usize {
        let tx = self.0.begin_read().expect("begin");
        let table = tx.open_table(BY_TENANT).expect("table");
        table
            .range((tenant, 0)..=(tenant, u64::MAX))
            .expect("range")
            .rev()
            .skip(offset)
            .take(limit)
            .count()
    }
}

/// RocksDB as an application would use it for this workload.
#[cfg(feature = "rocksdb")]
mod rocks {
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::Arc;

    use execlog::ExecutionEventData;
    use parking_lot::Mutex;
    use rocksdb::{DB, Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions};

    /// Keys: `e` exec 0 seq(be) -> ts(le) + event JSON; `x` exec -> tenant 0 created(be);
    /// `t` tenant 0 created(be) -> exec. One WriteBatch per append with `sync = true`
    /// (RocksDB groups concurrent synced writes into one WAL fsync). The last sequence of
    /// each execution is cached in memory (as an application would) and each append
    /// holds its execution's lock across the write, so sequences stay consecutive.
    pub struct Rocks {
        db: DB,
        execs: Mutex<HashMap<String, Arc<Mutex<Exec>>>>,
        /// Executions created so far, persisted under key `c`. Held across the write
        /// of a batch that creates an execution, so the persisted count never goes back.
        created: Mutex<u64>,
    }

    struct Exec {
        tenant: String,
        last: u64,
        known: bool,
    }

    fn event_key(exec: &str, seq: u64) -> Vec<u8> {
        let mut k = Vec::with_capacity(exec.len() + 10);
        k.push(b'e');
        k.extend_from_slice(exec.as_bytes());
        k.push(0);
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    impl Rocks {
        pub fn open(dir: &Path) -> Self {
            let mut o = Options::default();
            o.create_if_missing(true);
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            o.increase_parallelism(2);
            let db = DB::open(&o, dir.join("rocksdb")).expect("rocksdb open");
            let created = db
                .get(b"c")
                .expect("get")
                .and_then(|v| Some(u64::from_be_bytes(v.as_slice().try_into().ok()?)))
                .unwrap_or(0);
            Rocks {
                db,
                execs: Mutex::new(HashMap::new()),
                created: Mutex::new(created),
            }
        }

        fn exec(&self, exec: &str, tenant: &str) -> Arc<Mutex<Exec>> {
            let mut map = self.execs.lock();
            Arc::clone(map.entry(exec.to_string()).or_insert_with(|| {
                Arc::new(Mutex::new(Exec {
                    tenant: tenant.to_string(),
                    last: 0,
                    known: false,
                }))
            }))
        }

        fn insert(&self, exec: &str, tenant: &str, events: &[ExecutionEventData]) {
            let state = self.exec(exec, tenant);
            let mut state = state.lock();
            let mut batch = WriteBatch::default();
            let mut creating = None;
            if !state.known {
                let mut xk = vec![b'x'];
                xk.extend_from_slice(exec.as_bytes());
                match self.db.get(&xk).expect("get") {
                    Some(v) => {
                        let owner = v.split(|&b| b == 0).next().unwrap_or_default();
                        assert_eq!(owner, tenant.as_bytes(), "tenant mismatch");
                        state.last = self.last_seq(exec);
                    }
                    None => {
                        let mut count = self.created.lock();
                        *count += 1;
                        let created = *count;
                        batch.put(b"c", created.to_be_bytes());
                        creating = Some(count);
                        let mut xv = tenant.as_bytes().to_vec();
                        xv.push(0);
                        xv.extend_from_slice(&created.to_be_bytes());
                        batch.put(&xk, &xv);
                        let mut tk = vec![b't'];
                        tk.extend_from_slice(tenant.as_bytes());
                        tk.push(0);
                        tk.extend_from_slice(&created.to_be_bytes());
                        batch.put(&tk, exec.as_bytes());
                    }
                }
                state.known = true;
            }
            assert_eq!(state.tenant, tenant, "tenant mismatch");
            let ts = super::now_ns();
            let mut seq = state.last;
            for e in events {
                seq += 1;
                let mut v = ts.to_le_bytes().to_vec();
                serde_json::to_writer(&mut v, e).expect("json");
                batch.put(event_key(exec, seq), v);
            }
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            self.db.write_opt(batch, &wo).expect("write");
            drop(creating);
            state.last = seq;
        }

        fn last_seq(&self, exec: &str) -> u64 {
            let upper = event_key(exec, u64::MAX);
            let mut it = self
                .db
                .iterator(IteratorMode::From(&upper, Direction::Reverse));
            match it.next() {
                Some(Ok((k, _))) if k.starts_with(&event_key(exec, 0)[..exec.len() + 2]) => {
                    let mut be = [0u8; 8];
                    be.copy_from_slice(&k[k.len() - 8..]);
                    u64::from_be_bytes(be)
                }
                _ => 0,
            }
        }

        fn read(&self, exec: &str, after: u64) -> usize {
            let mut ro = ReadOptions::default();
            ro.set_iterate_upper_bound(event_key(exec, u64::MAX));
            let start = event_key(exec, after + 1);
            let mut n = 0;
            for item in self
                .db
                .iterator_opt(IteratorMode::From(&start, Direction::Forward), ro)
            {
                let (_, v) = item.expect("row");
                let _ts = i64::from_le_bytes(v[..8].try_into().expect("ts"));
                let _event: ExecutionEventData =
                    serde_json::from_slice(&v[8..]).expect("stored JSON");
                n += 1;
            }
            n
        }
    }

    impl super::System for Rocks {
        fn append_batch(&self, exec: &str, tenant: &str, events: &[ExecutionEventData]) {
            self.insert(exec, tenant, events);
        }
        fn load_after(&self, exec: &str, after: u64) -> usize {
            self.read(exec, after)
        }
        fn list(&self, tenant: &str, limit: usize, offset: usize) -> usize {
            let mut prefix = vec![b't'];
            prefix.extend_from_slice(tenant.as_bytes());
            prefix.push(0);
            let mut upper = prefix.clone();
            upper.extend_from_slice(&u64::MAX.to_be_bytes());
            self.db
                .iterator(IteratorMode::From(&upper, Direction::Reverse))
                .map_while(|item| item.ok().filter(|(k, _)| k.starts_with(&prefix)))
                .skip(offset)
                .take(limit)
                .count()
        }
    }
}
