//! The warm pool: batch executors kept running between queries so that an
//! interactive query starts at once, like a Spark Thrift server's
//! executors. It is an ordinary job of `kind = "pool"` (visible in `cohort
//! jobs` as `sql-pool`) at `interactive` priority, one instance per node at
//! most; the scheduler places, restarts and heals it like any service.
//!
//! The pool holds `warm` instances while idle. A query that will scan at
//! least `grow_at_bytes` first grows it to `max` (one per live node unless
//! set), preempting batch work if it must, and waits a bounded time for
//! the new instances; after `idle` without queries it shrinks back. A
//! cold pool (`warm = 0`) starts with the first query that needs workers
//! and stops when idle.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cohort_batch::{Error as BatchError, WorkerSource};
use tokio::time::Instant;
use url::Url;

use crate::coordinator::CoreHandle;
use crate::spec::{FLIGHT_PORT, pool_spec};
use cohort_scheduler::NodeState;

/// How the pool is sized.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub name: String,
    /// Instances kept while idle.
    pub warm: u32,
    /// Instances for large queries; 0: one per live node.
    pub max: u32,
    /// Per instance.
    pub cpu: String,
    pub memory: String,
    /// Without queries this long, the pool shrinks back to `warm`.
    pub idle: Duration,
    /// A query scanning this much grows the pool to `max`.
    pub grow_at_bytes: u64,
    /// How long a query waits for instances to serve.
    pub wait: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            name: "sql-pool".into(),
            warm: 1,
            max: 0,
            cpu: "750m".into(),
            memory: "2GiB".into(),
            idle: Duration::from_secs(60),
            grow_at_bytes: 64 << 20,
            wait: Duration::from_secs(30),
        }
    }
}

struct Usage {
    /// Instances asked for (0: no pool job).
    target: u32,
    running_queries: u32,
    last_used: Instant,
}

pub struct Pool {
    core: CoreHandle,
    settings: PoolSettings,
    /// The pool's job, while there is one.
    job: tokio::sync::Mutex<Option<u64>>,
    usage: Mutex<Usage>,
}

type CoreResult<T> = Result<T, crate::coordinator::core::CoordinatorError>;

impl Pool {
    /// Adopts the pool's job, or submits it unless the pool starts cold
    /// (`warm = 0`); a pool whose instance shape changed is updated in
    /// place (a rolling update).
    pub async fn start(core: CoreHandle, settings: PoolSettings) -> anyhow::Result<Arc<Pool>> {
        let spec = pool_spec(&settings.name, settings.warm.max(1), &settings.cpu, &settings.memory);
        let (name, warm) = (settings.name.clone(), settings.warm);
        let found = core
            .call(move |c| -> CoreResult<Option<(u64, u32)>> {
                let live = c.resolve(&name).ok().and_then(|id| {
                    let view = c.job(id).ok()?;
                    (view.kind == "pool" && !view.state.is_final()).then_some((id, view.slots.len() as u32))
                });
                match live {
                    Some((id, instances)) if c.spec_text(id)? == spec || warm == 0 => Ok(Some((id, instances))),
                    Some((_, instances)) => Ok(Some((c.submit(SPEC_FILE, &spec)?, instances))),
                    None if warm == 0 => Ok(None),
                    None => {
                        let id = c.submit(SPEC_FILE, &spec)?;
                        Ok(Some((id, c.job(id)?.slots.len() as u32)))
                    }
                }
            })
            .await??;
        match found {
            Some((job, instances)) => tracing::info!(job, instances, "sql pool ready"),
            None => tracing::info!("sql pool starts with the first query"),
        }
        let pool = Arc::new(Pool {
            core,
            settings,
            job: tokio::sync::Mutex::new(found.map(|(id, _)| id)),
            usage: Mutex::new(Usage {
                target: found.map_or(0, |(_, n)| n),
                running_queries: 0,
                last_used: Instant::now(),
            }),
        });
        tokio::spawn(shrink_when_idle(Arc::downgrade(&pool)));
        Ok(pool)
    }

    /// The pool's job, submitted now if there is none.
    async fn job(&self) -> Result<u64, BatchError> {
        let mut job = self.job.lock().await;
        if let Some(id) = *job {
            return Ok(id);
        }
        let spec = pool_spec(&self.settings.name, 1, &self.settings.cpu, &self.settings.memory);
        let id = self
            .core
            .call(move |c| c.submit(SPEC_FILE, &spec))
            .await
            .and_then(|r| r)
            .map_err(|e| BatchError::Unavailable(format!("cannot start the sql pool: {e}")))?;
        tracing::info!(job = id, "sql pool started");
        self.usage.lock().expect("pool usage").target = 1;
        *job = Some(id);
        Ok(id)
    }

    /// The serving instances' worker URLs, in slot order.
    async fn urls(&self, job: u64) -> Vec<Url> {
        let endpoints = self.core.call(move |c| c.endpoints(job)).await.ok().and_then(Result::ok).unwrap_or_default();
        endpoints
            .into_iter()
            .filter_map(|e| {
                let port = e.ports.get(FLIGHT_PORT)?;
                Url::parse(&format!("http://{}:{port}", e.host)).ok()
            })
            .collect()
    }

    /// Marks a query running; the returned guard marks it done.
    pub fn enter(self: &Arc<Self>) -> InUse {
        let mut usage = self.usage.lock().expect("pool usage");
        usage.running_queries += 1;
        usage.last_used = Instant::now();
        InUse(self.clone())
    }

    /// Grows the pool for a query that scans `bytes`.
    pub async fn grow_for(&self, bytes: u64, near: Vec<(String, u32)>) {
        if bytes < self.settings.grow_at_bytes {
            return;
        }
        let max = match self.settings.max {
            0 => self
                .core
                .call(|c| c.nodes().iter().filter(|n| n.state == NodeState::Ready).count() as u32)
                .await
                .unwrap_or(1),
            n => n,
        }
        .max(self.settings.warm)
        .max(1);
        if self.usage.lock().expect("pool usage").target >= max {
            return;
        }
        let Ok(job) = self.job().await else { return };
        tracing::info!(bytes, instances = max, near = ?near, "growing the sql pool for a large query");
        if !near.is_empty()
            && let Ok(Err(e)) = self.core.call(move |c| c.locate(job, near)).await
        {
            tracing::warn!(error = %e, "cannot place the pool by its data");
        }
        if self.resize(job, max).await {
            // New instances take a moment to serve; the query goes on with
            // what serves by then.
            let deadline = Instant::now() + self.settings.wait.min(Duration::from_secs(10));
            while self.urls(job).await.len() < max as usize && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    async fn resize(&self, job: u64, instances: u32) -> bool {
        match self.core.call(move |c| c.scale(job, instances)).await {
            Ok(Ok(_)) => {
                self.usage.lock().expect("pool usage").target = instances;
                true
            }
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(error = %e, instances, "cannot resize the sql pool");
                false
            }
        }
    }

    /// Back to `warm` instances; a cold pool's job ends.
    async fn shrink(&self) {
        let mut job = self.job.lock().await;
        let Some(id) = *job else { return };
        if self.settings.warm > 0 {
            tracing::info!(instances = self.settings.warm, "the sql pool is idle; shrinking it");
            self.resize(id, self.settings.warm).await;
            return;
        }
        tracing::info!(job = id, "the sql pool is idle; stopping it");
        if let Ok(Ok(_)) = self.core.call(move |c| c.cancel(id)).await {
            *job = None;
            self.usage.lock().expect("pool usage").target = 0;
        }
    }
}

/// How the pool's spec is named in job views and errors.
const SPEC_FILE: &str = "sql-pool (built in)";

/// A query using the pool.
pub struct InUse(Arc<Pool>);

impl Drop for InUse {
    fn drop(&mut self) {
        let mut usage = self.0.usage.lock().expect("pool usage");
        usage.running_queries -= 1;
        usage.last_used = Instant::now();
    }
}

#[async_trait]
impl WorkerSource for Pool {
    async fn workers(&self, _attempt: u32) -> Result<Vec<Url>, BatchError> {
        let job = self.job().await?;
        let deadline = Instant::now() + self.settings.wait;
        loop {
            let urls = self.urls(job).await;
            if !urls.is_empty() {
                return Ok(urls);
            }
            if Instant::now() >= deadline {
                return Err(BatchError::NoWorkers(format!(
                    "no instance of the `{}` job served within {:?}; see `cohort job {}`",
                    self.settings.name, self.settings.wait, self.settings.name
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn shrink_when_idle(pool: std::sync::Weak<Pool>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(pool) = pool.upgrade() else { return };
        let shrink = {
            let usage = pool.usage.lock().expect("pool usage");
            usage.running_queries == 0
                && usage.target > pool.settings.warm
                && usage.last_used.elapsed() >= pool.settings.idle
        };
        if shrink {
            pool.shrink().await;
        }
    }
}
