//! The coordinator's running and recent queries (for the web UI) and their
//! latency histogram (for `/metrics`). A query counts from planning until
//! its last batch is sent, or until it fails or its client goes away; one
//! still going is listed as `running`, so a query that hangs shows.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::histogram::Histogram;
use serde::Serialize;

/// Queries kept for the UI; older ones go first.
const KEPT: usize = 100;

#[derive(Clone, Debug, Serialize)]
pub struct QueryRecord {
    pub sql: String,
    /// When it started, in ms since the epoch.
    pub started_ms: i64,
    pub duration_ms: f64,
    pub rows: u64,
    /// How many pool workers answered it; 0: the coordinator did (a small
    /// scan, or cached tables it maps).
    pub workers: usize,
    /// `running` (its duration so far), `ok`, `failed` or `abandoned`
    /// (its client stopped reading).
    pub outcome: &'static str,
    pub error: String,
}

#[derive(Debug)]
pub struct QueryLog {
    recent: Mutex<VecDeque<QueryRecord>>,
    /// Queries on their way, by a number of their own: their SQL and start.
    running: Mutex<BTreeMap<u64, (String, i64, Instant)>>,
    next: AtomicU64,
    latency: Histogram,
}

impl Default for QueryLog {
    fn default() -> Self {
        QueryLog {
            recent: Mutex::default(),
            running: Mutex::default(),
            next: AtomicU64::new(0),
            // 1 ms to about 2 minutes.
            latency: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 18)),
        }
    }
}

impl QueryLog {
    /// The running ones, then the ended ones; the newest first in each.
    pub fn recent(&self) -> Vec<QueryRecord> {
        let running = self.running.lock().expect("running queries");
        let going = running.values().rev().map(|(sql, started_ms, started)| QueryRecord {
            sql: sql.clone(),
            started_ms: *started_ms,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            rows: 0,
            workers: 0,
            outcome: "running",
            error: String::new(),
        });
        going.chain(self.recent.lock().expect("query log").iter().rev().cloned()).collect()
    }

    pub fn latency(&self) -> &Histogram {
        &self.latency
    }

    fn record(&self, r: QueryRecord) {
        self.latency.observe(r.duration_ms / 1000.0);
        let mut recent = self.recent.lock().expect("query log");
        if recent.len() == KEPT {
            recent.pop_front();
        }
        recent.push_back(r);
    }
}

/// One query on its way: recorded once, when it is dropped.
pub struct Running {
    log: Arc<QueryLog>,
    /// Its SQL and start are kept under this in the log's running ones.
    id: u64,
    rows: u64,
    workers: usize,
    error: Option<String>,
    finished: bool,
}

impl Running {
    pub fn start(log: &Arc<QueryLog>, sql: &str) -> Running {
        let started_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis() as i64;
        let (id, started) = (log.next.fetch_add(1, Ordering::Relaxed), Instant::now());
        log.running.lock().expect("running queries").insert(id, (sql.to_string(), started_ms, started));
        Running { log: log.clone(), id, rows: 0, workers: 0, error: None, finished: false }
    }

    /// It runs on this many workers (0: here).
    pub fn ran_on(&mut self, workers: usize) {
        self.workers = workers;
    }

    /// A batch of `rows` went to the client.
    pub fn sent(&mut self, rows: usize) {
        self.rows += rows as u64;
    }

    pub fn failed(&mut self, error: String) {
        self.error = Some(error);
    }

    /// The last batch went out.
    pub fn finished(&mut self) {
        self.finished = true;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let outcome = match (&self.error, self.finished) {
            (Some(_), _) => "failed",
            (None, true) => "ok",
            (None, false) => "abandoned",
        };
        let taken = self.log.running.lock().expect("running queries").remove(&self.id);
        let Some((sql, started_ms, started)) = taken else { return };
        self.log.record(QueryRecord {
            sql,
            started_ms,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            rows: self.rows,
            workers: self.workers,
            outcome,
            error: self.error.take().unwrap_or_default(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_recorded_once_with_how_it_ended() {
        let log = Arc::new(QueryLog::default());
        {
            let mut q = Running::start(&log, "SELECT 1");
            q.sent(1);
            q.finished();
        }
        drop(Running::start(&log, "SELECT 2"));
        {
            let mut q = Running::start(&log, "SELEC");
            q.failed("syntax".into());
        }
        let going = Running::start(&log, "SELECT 3");
        let outcomes: Vec<_> = log.recent().iter().map(|r| (r.sql.clone(), r.outcome)).collect();
        assert_eq!(
            outcomes,
            [
                ("SELECT 3".to_string(), "running"),
                ("SELEC".to_string(), "failed"),
                ("SELECT 2".to_string(), "abandoned"),
                ("SELECT 1".to_string(), "ok")
            ]
        );
        drop(going);
        assert_eq!(log.recent()[0].outcome, "abandoned", "listed once, as it ended");
        assert_eq!(log.recent().len(), 4);
    }
}
