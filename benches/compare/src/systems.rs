//! The systems compared, behind one small trait. Each appends durably (one transaction
//! per append, synced before it returns) and returns typed events on read.

use std::path::Path;

use execlog::{ExecutionEventData, ExecutionId, LogStore, TenantId};
use parking_lot::Mutex;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

/// One storage system under test.
pub trait System: Sync {
    fn append(&self, exec: &str, tenant: &str, event: &ExecutionEventData);
    fn append_batch(&self, exec: &str, tenant: &str, events: &[ExecutionEventData]);
    /// All events of an execution, decoded; returns how many.
    fn load(&self, exec: &str) -> usize;
    /// Events after `after`, decoded; returns how many.
    fn load_after(&self, exec: &str, after: u64) -> usize;
    /// One page of a tenant's executions, newest first; returns how many.
    fn list(&self, tenant: &str, limit: usize, offset: usize) -> usize;
}

pub const NAMES: [&str; 3] = ["execlog", "sqlite", "redb"];

pub fn open(name: &str, dir: &Path) -> Box<dyn System> {
    std::fs::create_dir_all(dir).expect("create bench dir");
    match name {
        "execlog" => Box::new(Execlog(LogStore::open(dir).expect("open execlog"))),
        "sqlite" => Box::new(Sqlite::open(dir)),
        "redb" => Box::new(Redb::open(dir)),
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
/// append, primary key (execution_id, seq), events as JSON, one shared connection.
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
             CREATE INDEX IF NOT EXISTS by_tenant ON executions(tenant_id, created);",
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
        let rows = stmt
            .query_map(rusqlite::params![exec, after], |r| {
                let json: String = r.get(3)?;
                let _seq: u64 = r.get(0)?;
                let _tenant: String = r.get(1)?;
                let _ts: i64 = r.get(2)?;
                Ok(decode_typed(&json))
            })
            .expect("query");
        rows.map(|r| r.expect("row")).count()
    }
}

/// Decodes a stored row into the typed event (what execlog returns).
fn decode_typed(json: &str) -> ExecutionEventData {
    serde_json::from_str(json).expect("stored JSON")
}

impl System for Sqlite {
    fn append(&self, exec: &str, tenant: &str, event: &ExecutionEventData) {
        self.insert(exec, tenant, std::slice::from_ref(event));
    }
    fn append_batch(&self, exec: &str, tenant: &str, events: &[ExecutionEventData]) {
        self.insert(exec, tenant, events);
    }
    fn load(&self, exec: &str) -> usize {
        self.read(exec, 0)
    }
    fn load_after(&self, exec: &str, after: u64) -> usize {
        self.read(exec, after)
    }
    fn list(&self, tenant: &str, limit: usize, offset: usize) -> usize {
        let c = self.0.lock();
        let mut stmt = c
            .prepare_cached("SELECT execution_id FROM executions WHERE tenant_id = ?1 ORDER BY created DESC LIMIT ?2 OFFSET ?3")
            .expect("prepare");
        let rows = stmt
            .query_map(
                rusqlite::params![tenant, limit as i64, offset as i64],
                |r| r.get::<_, String>(0),
            )
            .expect("query");
        rows.map(|r| r.expect("row")).count()
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
    fn append(&self, exec: &str, tenant: &str, event: &ExecutionEventData) {
        self.insert(exec, tenant, std::slice::from_ref(event));
    }
    fn append_batch(&self, exec: &str, tenant: &str, events: &[ExecutionEventData]) {
        self.insert(exec, tenant, events);
    }
    fn load(&self, exec: &str) -> usize {
        self.read(exec, 0)
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
