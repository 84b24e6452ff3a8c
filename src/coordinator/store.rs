//! Durable desired state and allocations. `StateStore` is the seam where an
//! etcd store can follow; `SqliteStore` is the embedded default (WAL mode).

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state database holds an unreadable record: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// A job as the coordinator remembers it across restarts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JobRecord {
    pub id: u64,
    pub file: String,
    pub spec_toml: String,
    pub name: String,
    pub kind: String,
    pub priority: String,
    pub queue: String,
    pub state: String,
    pub attempts: u32,
    pub reason: String,
    pub submitted_at_ms: i64,
    pub slots: Vec<SlotRecord>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct SlotRecord {
    pub node: String,
    pub state: String,
    pub alloc_id: u64,
    pub exit_code: i32,
}

/// A placed slot.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AllocRecord {
    pub id: u64,
    pub job: u64,
    pub slot: u32,
    pub node: String,
    pub started_ms: u64,
}

/// A registered agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeRecord {
    pub id: u32,
    pub name: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub labels: std::collections::BTreeMap<String, String>,
    pub logs_address: String,
    pub isolation: String,
}

/// Everything a restarted coordinator reloads.
#[derive(Default)]
pub struct Snapshot {
    pub jobs: Vec<JobRecord>,
    pub allocs: Vec<AllocRecord>,
    pub nodes: Vec<NodeRecord>,
    pub next_job: u64,
}

pub trait StateStore: Send {
    fn load(&self) -> Result<Snapshot, StoreError>;
    fn put_job(&self, job: &JobRecord) -> Result<(), StoreError>;
    fn put_alloc(&self, alloc: &AllocRecord) -> Result<(), StoreError>;
    fn delete_alloc(&self, id: u64) -> Result<(), StoreError>;
    fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError>;
    fn set_next_job(&self, next: u64) -> Result<(), StoreError>;
}

pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, record TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS allocs (id INTEGER PRIMARY KEY, record TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS nodes (name TEXT PRIMARY KEY, record TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);",
        )?;
        Ok(SqliteStore { conn })
    }

    fn all<T: for<'de> Deserialize<'de>>(&self, sql: &str) -> Result<Vec<T>, StoreError> {
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(serde_json::from_str(&row?)?);
        }
        Ok(out)
    }
}

impl StateStore for SqliteStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let next_job: Option<i64> =
            self.conn.query_row("SELECT value FROM meta WHERE key = 'next_job'", [], |r| r.get(0)).optional()?;
        Ok(Snapshot {
            jobs: self.all("SELECT record FROM jobs ORDER BY id")?,
            allocs: self.all("SELECT record FROM allocs ORDER BY id")?,
            nodes: self.all("SELECT record FROM nodes ORDER BY name")?,
            next_job: next_job.unwrap_or(1) as u64,
        })
    }

    fn put_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO jobs (id, record) VALUES (?1, ?2)",
            params![job.id as i64, serde_json::to_string(job)?],
        )?;
        Ok(())
    }

    fn put_alloc(&self, alloc: &AllocRecord) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO allocs (id, record) VALUES (?1, ?2)",
            params![alloc.id as i64, serde_json::to_string(alloc)?],
        )?;
        Ok(())
    }

    fn delete_alloc(&self, id: u64) -> Result<(), StoreError> {
        self.conn.execute("DELETE FROM allocs WHERE id = ?1", params![id as i64])?;
        Ok(())
    }

    fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO nodes (name, record) VALUES (?1, ?2)",
            params![node.name, serde_json::to_string(node)?],
        )?;
        Ok(())
    }

    fn set_next_job(&self, next: u64) -> Result<(), StoreError> {
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_job', ?1)", params![next as i64])?;
        Ok(())
    }
}
