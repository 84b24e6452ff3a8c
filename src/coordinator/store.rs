//! Durable desired state and allocations. [`StateStore`] is the seam where an
//! etcd store can follow; [`SqliteStore`] is the embedded default (WAL mode).
//!
//! Writes arrive in batches, one per request the coordinator handles, and a
//! batch is applied in one transaction: either every record of a decision
//! is stored or none is, so the store never holds half a scheduling pass.

use std::collections::BTreeMap;
use std::path::Path;

use cohort_batch::{CacheDef, TableDef};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::coordinator::core::model::{JobState, SlotState};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state database holds an unreadable record: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("{0}")]
    Failed(String),
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
    pub state: JobState,
    pub attempts: u32,
    pub reason: String,
    pub submitted_at_ms: i64,
    pub slots: Vec<SlotRecord>,
    /// The engine gang that runs it: its own id, unless a rolling update
    /// of a service replaced it.
    #[serde(default)]
    pub gang: u64,
    /// A service's version: 1, then one more per rolling update.
    #[serde(default)]
    pub version: u32,
    /// A service's instance count, once scaled away from its spec's.
    #[serde(default)]
    pub instances: Option<u32>,
    /// One entry per run: when, where, how it ended and why.
    #[serde(default)]
    pub history: Vec<AttemptRecord>,
    #[serde(default)]
    pub deployment: Option<DeploymentRecord>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct SlotRecord {
    pub node: String,
    pub state: SlotState,
    pub alloc_id: u64,
    pub exit_code: i32,
    /// Service instances: whether the agent's health check passes.
    #[serde(default)]
    pub healthy: Option<bool>,
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
}

/// One run of a job (a gang start, or a service instance's life).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    pub nodes: Vec<String>,
    /// running, succeeded, failed, lost, preempted, drained, resized, cancelled, restarted.
    pub outcome: String,
    pub reason: String,
    /// Whether it used one of the job's attempts.
    pub charged: bool,
}

/// A service's rolling update.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DeploymentRecord {
    pub state: DeploymentState,
    /// The gang running the new version.
    pub gang: u64,
    pub version: u32,
    pub file: String,
    pub spec_toml: String,
    pub instances: u32,
    pub started_ms: i64,
    pub deadline_ms: i64,
    pub reason: String,
    /// The new version's instances.
    pub slots: Vec<SlotRecord>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DeploymentState {
    Rolling,
    Done,
    RolledBack,
}

impl DeploymentState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentState::Rolling => "rolling",
            DeploymentState::Done => "done",
            DeploymentState::RolledBack => "rolled-back",
        }
    }
}

/// A placed slot.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AllocRecord {
    pub id: u64,
    pub job: u64,
    pub slot: u32,
    pub node: String,
    pub started_ms: u64,
    /// The engine gang it belongs to (0: the job's own id).
    #[serde(default)]
    pub gang: u64,
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
}

/// A registered agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeRecord {
    pub id: u32,
    pub name: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub labels: BTreeMap<String, String>,
    pub logs_address: String,
    pub isolation: String,
    #[serde(default)]
    pub max_executors: u32,
    /// Host ports it hands to service instances: [first, last], none when first is 0.
    #[serde(default)]
    pub port_first: u16,
    #[serde(default)]
    pub port_last: u16,
    /// Where clients reach the services it runs.
    #[serde(default)]
    pub address: String,
    /// Who its command and service slots run as.
    #[serde(default)]
    pub runs_as: String,
}

/// Everything a restarted coordinator reloads.
#[derive(Default, Debug)]
pub struct Snapshot {
    pub jobs: Vec<JobRecord>,
    pub allocs: Vec<AllocRecord>,
    pub nodes: Vec<NodeRecord>,
    pub next_job: u64,
    /// Above every allocation id issued, ended ones too.
    pub next_alloc: u64,
    /// The SQL catalog, in the order its entries were created.
    pub tables: Vec<TableDef>,
    /// The cached tables, in the order they were cached.
    pub caches: Vec<CacheDef>,
    pub tokens: Vec<crate::coordinator::core::auth::TokenRecord>,
    /// The newest audit entries, oldest first.
    pub audit: Vec<crate::coordinator::core::auth::AuditEntry>,
}

/// One change to the stored state.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    Job(Box<JobRecord>),
    Alloc(AllocRecord),
    DeleteAlloc(u64),
    Node(NodeRecord),
    NextJob(u64),
    /// The whole SQL catalog, replacing what was stored.
    Catalog(Vec<TableDef>),
    /// Every `CACHE TABLE` in force, replacing what was stored.
    Caches(Vec<CacheDef>),
    Token(crate::coordinator::core::auth::TokenRecord),
    /// Appended to the audit log.
    Audit(crate::coordinator::core::auth::AuditEntry),
}

pub trait StateStore: Send {
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Applies every write or none.
    fn commit(&mut self, writes: &[Write]) -> Result<(), StoreError>;
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
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS catalog (seq INTEGER PRIMARY KEY, record TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS caches (seq INTEGER PRIMARY KEY, record TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS tokens (id TEXT PRIMARY KEY, record TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, record TEXT NOT NULL);",
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
        let meta = |key: &str| -> Result<Option<i64>, StoreError> {
            Ok(self.conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
        };
        let (next_job, next_alloc) = (meta("next_job")?, meta("next_alloc")?);
        Ok(Snapshot {
            jobs: self.all("SELECT record FROM jobs ORDER BY id")?,
            allocs: self.all("SELECT record FROM allocs ORDER BY id")?,
            nodes: self.all("SELECT record FROM nodes ORDER BY name")?,
            next_job: next_job.unwrap_or(1) as u64,
            next_alloc: next_alloc.unwrap_or(1) as u64,
            tables: self.all("SELECT record FROM catalog ORDER BY seq")?,
            caches: self.all("SELECT record FROM caches ORDER BY seq")?,
            tokens: self.all("SELECT record FROM tokens ORDER BY id")?,
            audit: self.all(&format!(
                "SELECT record FROM (SELECT seq, record FROM audit ORDER BY seq DESC LIMIT {}) ORDER BY seq",
                crate::coordinator::core::auth::AUDIT_KEPT
            ))?,
        })
    }

    fn commit(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        for w in writes {
            match w {
                Write::Job(job) => tx.execute(
                    "INSERT OR REPLACE INTO jobs (id, record) VALUES (?1, ?2)",
                    params![job.id as i64, serde_json::to_string(job)?],
                )?,
                Write::Alloc(alloc) => {
                    // Its row goes when it ends; the floor it sets stays.
                    tx.execute(
                        "INSERT INTO meta (key, value) VALUES ('next_alloc', ?1)
                         ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
                        params![alloc.id as i64 + 1],
                    )?;
                    tx.execute(
                        "INSERT OR REPLACE INTO allocs (id, record) VALUES (?1, ?2)",
                        params![alloc.id as i64, serde_json::to_string(alloc)?],
                    )?
                }
                Write::DeleteAlloc(id) => tx.execute("DELETE FROM allocs WHERE id = ?1", params![*id as i64])?,
                Write::Node(node) => tx.execute(
                    "INSERT OR REPLACE INTO nodes (name, record) VALUES (?1, ?2)",
                    params![node.name, serde_json::to_string(node)?],
                )?,
                Write::NextJob(next) => tx.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('next_job', ?1)",
                    params![*next as i64],
                )?,
                Write::Audit(entry) => {
                    tx.execute("INSERT INTO audit (record) VALUES (?1)", params![serde_json::to_string(entry)?])?
                }
                Write::Token(token) => tx.execute(
                    "INSERT OR REPLACE INTO tokens (id, record) VALUES (?1, ?2)",
                    params![token.id, serde_json::to_string(token)?],
                )?,
                Write::Catalog(tables) => replace_sequence(&tx, "catalog", tables)?,
                Write::Caches(caches) => replace_sequence(&tx, "caches", caches)?,
            };
        }
        tx.commit()?;
        Ok(())
    }
}

/// Replaces every row of `table` (`seq`, `record`) with `records`, in order.
fn replace_sequence<T: Serialize>(tx: &rusqlite::Transaction, table: &str, records: &[T]) -> Result<usize, StoreError> {
    tx.execute(&format!("DELETE FROM {table}"), [])?;
    for (seq, record) in records.iter().enumerate() {
        tx.execute(
            &format!("INSERT INTO {table} (seq, record) VALUES (?1, ?2)"),
            params![seq as i64, serde_json::to_string(record)?],
        )?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(id: u64) -> AllocRecord {
        AllocRecord { id, job: 1, slot: 0, node: "a".into(), started_ms: 0, gang: 1, ports: BTreeMap::new() }
    }

    #[test]
    fn a_batch_is_stored_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        store.commit(&[Write::Alloc(alloc(1)), Write::NextJob(7)]).unwrap();
        // A batch whose last write fails leaves nothing of its first.
        store
            .conn
            .execute_batch("CREATE TRIGGER full BEFORE INSERT ON nodes BEGIN SELECT RAISE(ABORT, 'disk full'); END;")
            .unwrap();
        let node = NodeRecord {
            id: 0,
            name: "a".into(),
            cpu_millis: 1,
            memory_bytes: 1,
            labels: BTreeMap::new(),
            logs_address: String::new(),
            isolation: String::new(),
            max_executors: 0,
            port_first: 0,
            port_last: 0,
            address: String::new(),
            runs_as: String::new(),
        };
        assert!(store.commit(&[Write::Alloc(alloc(2)), Write::DeleteAlloc(1), Write::Node(node)]).is_err());
        let snapshot = store.load().unwrap();
        assert_eq!(snapshot.allocs, vec![alloc(1)]);
        assert_eq!(snapshot.next_job, 7);
    }
}
