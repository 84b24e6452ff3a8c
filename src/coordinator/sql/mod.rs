//! SQL at the coordinator: the catalog every client and job shares, and
//! interactive queries on the warm pool. Flight SQL (`flight.rs`) is its
//! protocol; this module is what a statement does.
//!
//! - `pool.rs`: the warm pool of batch executors and its sizing;
//! - `stores.rs`: the store executors that hold cached tables;
//! - `flight.rs`: the Arrow Flight SQL service;
//! - `queries.rs`: recent queries and their latency.
//!
//! A catalog change is validated by DataFusion (which reads the files'
//! schema), then stored through the core; one change at a time, so the
//! catalog in memory and the stored one never disagree. Writes (COPY,
//! INSERT) are staged and committed like a job's.

pub mod flight;
pub mod metadata;
pub mod pool;
pub mod queries;
pub mod stores;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::UInt64Array;
use arrow::datatypes::SchemaRef;
use cohort_batch::{
    CatalogChange, EngineSettings, Error, QueryOutcome, Result, SqlEngine, Statement, TableDef, classify,
};
use datafusion::common::ParamValues;
use futures::{StreamExt, TryStreamExt};

use crate::coordinator::CoreHandle;
use crate::coordinator::core::CoordinatorError;
use cohort_batch::live::Ingest;
use pool::Pool;
pub use pool::PoolSettings;
use queries::QueryLog;

/// How the coordinator runs SQL.
#[derive(Clone, Debug)]
pub struct SqlSettings {
    pub pool: PoolSettings,
    pub stores: stores::StoreSettings,
    /// See [`cohort_batch::EngineSettings::local_query_bytes`].
    pub local_query_bytes: u64,
    /// See [`cohort_batch::EngineSettings::memory_bytes`].
    pub memory_bytes: u64,
}

impl Default for SqlSettings {
    fn default() -> Self {
        SqlSettings {
            pool: PoolSettings::default(),
            stores: stores::StoreSettings::default(),
            local_query_bytes: 0,
            memory_bytes: cohort_batch::EngineSettings::default().memory_bytes as u64,
        }
    }
}

/// Tries at caching a table again after it lost a store.
const REBUILD_ATTEMPTS: u32 = 3;

/// What a statement is, before it runs.
pub enum Described {
    /// Rows, with this schema.
    Query(SchemaRef),
    /// A change: to the catalog, or files written.
    Effect(Statement),
}

pub struct SqlFront {
    engine: SqlEngine,
    core: CoreHandle,
    pool: Arc<Pool>,
    stores: Arc<stores::Stores>,
    /// One catalog change at a time (caching included).
    catalog_lock: tokio::sync::Mutex<()>,
    writes: AtomicU64,
    queries: Arc<QueryLog>,
}

impl SqlFront {
    /// Recreates the stored catalog and finds (or starts) the warm pool.
    /// Starts the SQL front: the catalog restored, the warm pool, workers
    /// called over `worker_tls`.
    pub async fn start(
        core: CoreHandle,
        settings: SqlSettings,
        data_dir: PathBuf,
        worker_tls: tonic::transport::ClientTlsConfig,
    ) -> anyhow::Result<Arc<SqlFront>> {
        let engine = SqlEngine::new(EngineSettings {
            spill_dir: Some(data_dir.join("spill")),
            worker_tls: Some(worker_tls),
            live_dir: Some(data_dir.join("live")),
            local_query_bytes: settings.local_query_bytes,
            memory_bytes: usize::try_from(settings.memory_bytes).unwrap_or(usize::MAX),
            ..Default::default()
        })?;
        let tables = core.call(|c| c.tables()).await?;
        for (name, e) in engine.restore(&tables).await.into_iter().chain(engine.restore_live()) {
            eprintln!("warning: table `{name}` could not be restored: {e}");
        }
        let caches = core.call(|c| c.caches()).await?;
        for def in &caches {
            if let Err(e) = engine.serve_uncached(def).await {
                eprintln!("warning: cached table `{}` cannot answer until it is cached again: {e}", def.name);
            }
        }
        let pool = Pool::start(core.clone(), settings.pool).await?;
        let stores = stores::Stores::start(core.clone(), settings.stores).await?;
        let front = Arc::new(SqlFront {
            engine,
            core,
            pool,
            stores,
            catalog_lock: tokio::sync::Mutex::new(()),
            writes: AtomicU64::new(0),
            queries: Arc::default(),
        });
        if !caches.is_empty() {
            tokio::spawn(front.clone().cache_again(caches));
        }
        Ok(front)
    }

    /// Caches the tables an earlier coordinator had cached, from their
    /// sources, in the background: until then each answers from its source
    /// (or its query). The earlier copies went with the earlier stores
    /// ([`stores::Stores::start`]), and evicted tables are cached again too.
    async fn cache_again(self: Arc<Self>, defs: Vec<cohort_batch::CacheDef>) {
        for def in defs {
            let mut attempt = 1;
            loop {
                let name = def.name.clone();
                // UNCACHE or DROP since the restart: nothing to do.
                if !self.core.call(move |c| c.is_cached(&name)).await.unwrap_or(false) {
                    break;
                }
                match self.cache(&def.name, def.query.as_deref()).await {
                    Ok(rows) => {
                        tracing::info!(table = %def.name, rows, "cached again after a restart");
                        break;
                    }
                    Err(e) if attempt < REBUILD_ATTEMPTS => {
                        tracing::warn!(table = %def.name, attempt, error = %e, "caching again after a restart failed; retrying");
                        attempt += 1;
                        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    }
                    Err(e) => {
                        tracing::warn!(table = %def.name, error = %e, "cannot cache again after a restart; it answers from its source");
                        break;
                    }
                }
            }
        }
    }

    pub fn engine(&self) -> &SqlEngine {
        &self.engine
    }

    /// Recent queries and their latency.
    pub fn queries(&self) -> &QueryLog {
        &self.queries
    }

    /// What `sql` is and, for a query, its result's schema.
    /// A statement that cannot be planned is recorded as a failed query.
    pub async fn describe(&self, sql: &str, params: Option<ParamValues>) -> Result<Described> {
        let described = async {
            match classify(sql)? {
                Statement::Query => {
                    let plan = self.engine.plan(sql, params).await?;
                    Ok(Described::Query(Arc::new(plan.schema().as_arrow().clone())))
                }
                effect => Ok(Described::Effect(effect)),
            }
        }
        .await;
        let described: Result<Described> = described;
        if let Err(e) = &described {
            queries::Running::start(&self.queries, sql).failed(e.to_string());
        }
        described
    }

    /// Runs a query on the warm pool (grown first if it scans much).
    /// The query is recorded (duration, rows, how it ended) when its
    /// stream ends or is dropped.
    pub async fn query(&self, sql: &str, params: Option<ParamValues>) -> Result<QueryOutcome> {
        let mut running = queries::Running::start(&self.queries, sql);
        let started = async {
            let mut plan = self.engine.plan(sql, params.clone()).await?;
            if self.rebuild_lost_caches(&plan).await? {
                // The plan named the lost copies: plan again over the new ones.
                plan = self.engine.plan(sql, params).await?;
            }
            let _in_use = self.pool.enter();
            let bytes = self.engine.scan_bytes(&plan).await?;
            let near = self.near(&plan).await?;
            self.pool.grow_for(bytes, near).await;
            self.engine.run(plan, self.pool.as_ref()).await
        }
        .await;
        let outcome = match started {
            Ok(outcome) => outcome,
            Err(e) => {
                running.failed(e.to_string());
                return Err(e);
            }
        };
        running.ran_on(outcome.workers);
        if !outcome.retries.is_empty() {
            tracing::warn!(retries = outcome.retries.len(), why = %outcome.retries.join("; "), "query retried");
        }
        let schema = outcome.schema.clone();
        let mut stream = outcome.stream;
        let recorded = futures::stream::poll_fn(move |cx| {
            let next = stream.poll_next_unpin(cx);
            match &next {
                std::task::Poll::Ready(Some(Ok(batch))) => running.sent(batch.num_rows()),
                std::task::Poll::Ready(Some(Err(e))) => running.failed(e.to_string()),
                std::task::Poll::Ready(None) => running.finished(),
                std::task::Poll::Pending => {}
            }
            next
        });
        Ok(QueryOutcome {
            stream: Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                schema.clone(),
                recorded,
            )),
            schema,
            retries: outcome.retries,
            workers: outcome.workers,
        })
    }

    /// Applies a statement that is not a query: a catalog change (no
    /// count), a write (the rows written, with `params` bound to its
    /// placeholders) or a caching (the rows cached).
    pub async fn execute(&self, sql: &str, statement: Statement, params: Option<ParamValues>) -> Result<Option<u64>> {
        match statement {
            Statement::Catalog(change) => self.change_catalog(sql, change).await.map(|()| None),
            Statement::Copy | Statement::Insert { .. } => self.write(sql, params).await.map(Some),
            Statement::Cache { table, query } => self.cache(&table, query.as_deref()).await.map(Some),
            Statement::Uncache { table, if_exists } => {
                let _one_at_a_time = self.catalog_lock.lock().await;
                let name = table.clone();
                let stored = self.store(move |c| c.drop_cache(&name)).await?;
                // Stored but not cached yet (after a restart): uncaching it is no error.
                self.engine.uncache_table(&table, if_exists || stored.is_some()).await.map(|_| None)
            }
            Statement::Query => Err(Error::Invalid("a query returns rows; run it as a query".into())),
        }
    }

    /// Caches the query reads that lost partitions with a store (killed,
    /// preempted, its node gone) again, from their sources, before the
    /// query runs, so that it answers whole. Whether any was rebuilt.
    async fn rebuild_lost_caches(&self, plan: &datafusion::logical_expr::LogicalPlan) -> Result<bool> {
        let mut rebuilt = false;
        let tables = cohort_batch::footprint(plan)?.cached;
        // Every table's stores are asked at once; only a table that lost
        // something waits for more.
        let checks = futures::future::join_all(tables.iter().map(|name| async move {
            let live = self.engine.is_live(name);
            let intact = if live { self.engine.live_intact(name).await } else { self.engine.cache_intact(name).await };
            (live, intact)
        }))
        .await;
        for (name, (live, intact)) in tables.into_iter().zip(checks) {
            if intact {
                continue;
            }
            if live {
                let stores = self.stores.urls().await?;
                rebuilt |= self.engine.repair_live(&name, &stores).await? > 0;
                continue;
            }
            let _one_at_a_time = self.catalog_lock.lock().await;
            // Another query may have rebuilt it meanwhile.
            if self.engine.cache_intact(&name).await {
                rebuilt = true;
                continue;
            }
            tracing::warn!(table = %name, "a cached table lost partitions with a store; caching it again from its source");
            let Some(definition) = self.engine.cached_definition(&name) else { continue };
            // Uncached, the table is its source again (or gone, if it was a query's).
            self.engine.uncache_table(&name, true).await?;
            let _in_use = self.pool.enter();
            let mut attempt = 1;
            loop {
                // The lost store may still be listed for a moment: a failed put is tried again.
                let stores = self.stores.urls().await?;
                let budget = self.stores.cache_budget(stores.len());
                match self.engine.cache_table(&name, definition.as_deref(), self.pool.as_ref(), &stores, budget).await {
                    Ok(_) => break,
                    Err(e) if attempt < REBUILD_ATTEMPTS => {
                        tracing::warn!(table = %name, attempt, error = %e, "caching again failed; retrying");
                        attempt += 1;
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                    Err(e) => {
                        return Err(Error::Unavailable(format!(
                            "cached table `{name}` lost partitions with a store and cannot be cached again: {e}"
                        )));
                    }
                }
            }
            rebuilt = true;
        }
        Ok(rebuilt)
    }

    /// The nodes holding the cached and live tables `plan` reads, weighted
    /// by MiB: where the pool grows first, so its workers map them from
    /// shared memory instead of fetching them.
    async fn near(&self, plan: &datafusion::logical_expr::LogicalPlan) -> Result<Vec<(String, u32)>> {
        let parts = cohort_batch::footprint(plan)?.cached_parts;
        if parts.is_empty() {
            return Ok(Vec::new());
        }
        let nodes = self.stores.nodes().await;
        let mut near: std::collections::BTreeMap<String, u64> = Default::default();
        for part in parts {
            if let Some(node) = nodes.get(&part.store) {
                *near.entry(node.clone()).or_default() += part.bytes;
            }
        }
        Ok(near.into_iter().map(|(node, bytes)| (node, (bytes >> 20).clamp(1, u64::from(u32::MAX)) as u32)).collect())
    }

    /// `CACHE TABLE`: computed on the warm pool, held by the stores.
    async fn cache(&self, table: &str, query: Option<&str>) -> Result<u64> {
        let _one_at_a_time = self.catalog_lock.lock().await;
        self.engine.check_cacheable(table, query).await?;
        let stores = self.stores.urls().await?;
        tracing::debug!(table, stores = stores.len(), "caching: stores serving");
        let _in_use = self.pool.enter();
        let budget = self.stores.cache_budget(stores.len());
        let entry = self.engine.cache_table(table, query, self.pool.as_ref(), &stores, budget).await?;
        let def = cohort_batch::CacheDef { name: table.to_string(), query: entry.definition.clone() };
        self.store(move |c| c.put_cache(def)).await?;
        Ok(entry.rows())
    }

    /// Appends rows to a live table (Flight SQL bulk ingest), and merges
    /// its small partitions in the background when there are enough.
    pub async fn ingest(self: &Arc<Self>, table: &str, ingest: Ingest) -> Result<cohort_batch::live::Appended> {
        let rows = ingest.batches.iter().any(|b| b.num_rows() > 0);
        let stores = if rows { self.stores.urls().await? } else { Vec::new() };
        let budget = self.stores.cache_budget(stores.len());
        let appended = {
            // Catalog changes and evictions happen one at a time.
            let _one_at_a_time = self.catalog_lock.lock().await;
            self.engine.append_live(table, ingest, &stores, budget).await?
        };
        if rows && self.engine.live_needs_compaction(table) {
            let (front, table) = (self.clone(), table.to_string());
            tokio::spawn(async move {
                match front.engine.compact_live(&table, &stores).await {
                    Ok(0) => {}
                    Ok(merged) => tracing::info!(table, merged, "live table partitions merged"),
                    // It is tried again after the next ingest.
                    Err(e) => tracing::warn!(table, error = %e, "cannot compact a live table"),
                }
            });
        }
        Ok(appended)
    }

    async fn write(&self, sql: &str, params: Option<ParamValues>) -> Result<u64> {
        let tag = format!("sql{}x{}", std::process::id(), self.writes.fetch_add(1, Ordering::Relaxed));
        let (plan, staged) = self.engine.stage_write(sql, params, &tag, 1).await?;
        let _in_use = self.pool.enter();
        let counted = async {
            let outcome = self.engine.run(plan, self.pool.as_ref()).await?;
            let batches: Vec<_> = outcome.stream.try_collect().await?;
            Ok::<u64, Error>(count_of(&batches))
        }
        .await;
        match counted {
            Ok(rows) => {
                staged.commit().await?;
                Ok(rows)
            }
            Err(e) => {
                staged.discard().await;
                Err(e)
            }
        }
    }

    async fn change_catalog(&self, sql: &str, change: CatalogChange) -> Result<()> {
        let _one_at_a_time = self.catalog_lock.lock().await;
        match change {
            CatalogChange::Create { def, or_replace, if_not_exists } => {
                if or_replace && self.engine.uncache_table(&def.name, true).await?.is_some() {
                    let name = def.name.clone();
                    self.store(move |c| c.drop_cache(&name)).await?;
                }
                if !or_replace && self.engine.context().table_exist(def.name.as_str())? {
                    let stored = self.core.call(|c| c.tables()).await.map_err(unavailable)?;
                    let same = stored.iter().any(|t| cohort_batch::same_definition(&t.ddl, &def.ddl));
                    if if_not_exists || same {
                        return Ok(());
                    }
                    return Err(Error::Invalid(format!(
                        "table `{}` already exists with another definition; DROP it first or use CREATE OR REPLACE",
                        def.name
                    )));
                }
                self.engine.apply_ddl(sql).await?;
                let name = def.name.clone();
                if let Err(e) = self.store(move |c| c.put_table(def)).await {
                    let _ = self.engine.context().deregister_table(name.as_str());
                    return Err(e);
                }
            }
            CatalogChange::Drop { name, .. } if self.engine.is_live(&name) => {
                self.engine.drop_live(&name).await?;
            }
            CatalogChange::Drop { name, .. } => {
                let cached = self.engine.uncache_table(&name, true).await?;
                let forgotten = name.clone();
                let stored = self.store(move |c| c.drop_cache(&forgotten)).await?;
                // A table cached AS SELECT lives in the stores only: uncaching drops it.
                if cached.is_some_and(|c| c.source.is_none()) || stored.is_some_and(|d| d.query.is_some()) {
                    return Ok(());
                }
                self.engine.apply_ddl(sql).await?;
                self.store(move |c| c.drop_table(&name).map(|_| ())).await?;
            }
        }
        Ok(())
    }

    async fn store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut crate::coordinator::core::Core) -> Result<T, CoordinatorError> + Send + 'static,
    ) -> Result<T> {
        self.core.call(f).await.map_err(unavailable)?.map_err(unavailable)
    }

    /// The catalog as stored, for drivers of SQL jobs.
    pub async fn tables(&self) -> std::result::Result<Vec<TableDef>, CoordinatorError> {
        self.core.call(|c| c.tables()).await
    }
}

fn unavailable(e: CoordinatorError) -> Error {
    Error::Unavailable(format!("the catalog cannot be stored: {e}"))
}

/// The row count a COPY or INSERT returns.
pub fn count_of(batches: &[arrow::record_batch::RecordBatch]) -> u64 {
    batches
        .iter()
        .filter_map(|b| b.column_by_name("count").and_then(|c| c.as_any().downcast_ref::<UInt64Array>().cloned()))
        .flat_map(|a| a.values().to_vec())
        .sum()
}
