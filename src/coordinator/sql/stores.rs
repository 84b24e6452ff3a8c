//! The stores that hold cached tables: an ordinary job of `kind = "store"`
//! (`sql-store` in `cohort jobs`) at `service` priority, one instance per
//! ready node, started by the first `CACHE TABLE` and placed, restarted
//! and healed by the scheduler like any service. Each instance's memory is
//! a slot the scheduler accounted for.
//!
//! What the stores hold belongs to this coordinator process's catalog, so
//! a store job left by an earlier coordinator is ended at start: its
//! partitions could not be found any more.

use std::sync::Arc;
use std::time::Duration;

use cohort_batch::Error as BatchError;
use tokio::time::Instant;
use url::Url;

use crate::coordinator::CoreHandle;
use crate::spec::{FLIGHT_PORT, store_spec};
use cohort_scheduler::NodeState;

/// How the stores are sized.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    pub name: String,
    /// Per instance.
    pub cpu: String,
    pub memory: String,
    /// Bytes all cached tables hold together; none: what the stores can
    /// hold (three quarters of each one's memory).
    pub cache_memory: Option<u64>,
    /// How long a CACHE TABLE waits for the stores to serve.
    pub wait: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            name: "sql-store".into(),
            cpu: "250m".into(),
            memory: "1GiB".into(),
            cache_memory: None,
            wait: Duration::from_secs(30),
        }
    }
}

/// Once one store serves, how long the rest are waited for.
const REST_WAIT: Duration = Duration::from_secs(3);

/// How the stores' spec is named in job views and errors.
const SPEC_FILE: &str = "sql-store (built in)";

pub struct Stores {
    core: CoreHandle,
    settings: StoreSettings,
    job: tokio::sync::Mutex<Option<u64>>,
    /// The rest of the instances were waited for once already.
    settled: std::sync::atomic::AtomicBool,
}

impl Stores {
    /// Ends a store job an earlier coordinator left.
    pub async fn start(core: CoreHandle, settings: StoreSettings) -> anyhow::Result<Arc<Stores>> {
        let name = settings.name.clone();
        let stale = core
            .call(move |c| {
                let id = c.resolve(&name).ok()?;
                let view = c.job(id).ok()?;
                (view.kind == "store" && !view.state.is_final()).then_some(id)
            })
            .await?;
        if let Some(id) = stale {
            tracing::info!(job = id, "ending the stores of an earlier coordinator");
            core.call(move |c| c.cancel(id)).await??;
        }
        Ok(Arc::new(Stores { core, settings, job: tokio::sync::Mutex::new(None), settled: Default::default() }))
    }

    /// The stores' Flight URLs, starting them if there are none. Waits
    /// until every instance serves, or, once one does, a few seconds more
    /// for the rest the first time (an instance whose node is full may
    /// never come); later, what serves is enough.
    pub async fn urls(&self) -> Result<Vec<Url>, BatchError> {
        let (job, instances) = self.job().await?;
        let deadline = Instant::now() + self.settings.wait;
        let mut first_served = None;
        loop {
            let urls = self.serving(job).await;
            if !urls.is_empty() {
                first_served.get_or_insert_with(Instant::now);
            }
            let settled = self.settled.load(std::sync::atomic::Ordering::Relaxed);
            let waited_for_the_rest = first_served.is_some_and(|at| settled || at.elapsed() >= REST_WAIT);
            if urls.len() >= instances as usize
                || waited_for_the_rest
                || (!urls.is_empty() && Instant::now() >= deadline)
            {
                self.settled.store(true, std::sync::atomic::Ordering::Relaxed);
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

    /// Bytes the cached tables may hold together, with `serving` stores.
    pub fn cache_budget(&self, serving: usize) -> u64 {
        self.settings.cache_memory.unwrap_or_else(|| {
            // The store keeps the same share of its slot (src/executor/store.rs).
            let each = cohort_scheduler::resources::parse_memory(&self.settings.memory).unwrap_or(0) / 4 * 3;
            each * serving as u64
        })
    }

    /// The stores' job and its instances, submitted now if there is none.
    async fn job(&self) -> Result<(u64, u32), BatchError> {
        let mut job = self.job.lock().await;
        if let Some(id) = *job {
            let instances = self.core.call(move |c| c.job(id).map(|v| v.slots.len() as u32)).await;
            if let Ok(Ok(n)) = instances {
                return Ok((id, n));
            }
        }
        let settings = self.settings.clone();
        let unavailable = |e: String| BatchError::Unavailable(format!("cannot start the stores: {e}"));
        let (id, instances) = self
            .core
            .call(move |c| {
                let nodes = c.nodes().iter().filter(|n| n.state == NodeState::Ready).count().max(1) as u32;
                let spec = store_spec(&settings.name, nodes, &settings.cpu, &settings.memory);
                c.submit(SPEC_FILE, &spec).map(|id| (id, nodes))
            })
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .map_err(|e| unavailable(e.to_string()))?;
        tracing::info!(job = id, instances, "stores started");
        *job = Some(id);
        self.settled.store(false, std::sync::atomic::Ordering::Relaxed);
        Ok((id, instances))
    }

    /// The node of each serving store, by its Flight URL.
    pub async fn nodes(&self) -> std::collections::BTreeMap<String, String> {
        let Some(job) = *self.job.lock().await else { return Default::default() };
        let endpoints = self.core.call(move |c| c.endpoints(job)).await.ok().and_then(Result::ok).unwrap_or_default();
        endpoints
            .into_iter()
            .filter_map(|e| Some((store_url(&e.host, *e.ports.get(FLIGHT_PORT)?)?.to_string(), e.node)))
            .collect()
    }

    async fn serving(&self, job: u64) -> Vec<Url> {
        let endpoints = self.core.call(move |c| c.endpoints(job)).await.ok().and_then(Result::ok).unwrap_or_default();
        endpoints.into_iter().filter_map(|e| store_url(&e.host, *e.ports.get(FLIGHT_PORT)?)).collect()
    }
}

fn store_url(host: &str, port: u16) -> Option<Url> {
    Url::parse(&format!("http://{host}:{port}")).ok()
}
