//! `CACHE TABLE` and `UNCACHE TABLE` on the driver: a table's rows are
//! computed once (on the workers, like any query), cut into partitions,
//! put into the stores, and the catalog's entry for the table is swapped
//! for a [`CachedTable`]; uncaching swaps the source back. The system
//! table `cohort.cache` lists what is cached, where, and how it is used.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, StringArray, TimestampMillisecondArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider, Session, TableProvider};
use datafusion::common::Column;
use datafusion::datasource::MemTable;
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlanBuilder};
use datafusion::physical_plan::ExecutionPlan;
use futures::{StreamExt, TryStreamExt};
use url::Url;

use crate::cached::{CacheEntry, CachedTable, Placement};
use crate::store::{self, PartId};
use crate::{Error, Result, SqlEngine, WorkerSource};

/// Cached tables by name.
pub(crate) type Registry = Arc<Mutex<BTreeMap<String, Arc<CacheEntry>>>>;

/// About how big a cached partition grows before the table is cut finer.
const PARTITION_BYTES: u64 = 64 << 20;

/// Where the system table lives: `cohort.cache`.
const SYSTEM_SCHEMA: &str = "cohort";

/// Adds the `cohort` schema with its `cache` table to the context's default catalog.
pub(crate) fn register_system_tables(
    ctx: &datafusion::prelude::SessionContext,
    registry: &Registry,
    live: &crate::live::LiveRegistry,
) -> Result<()> {
    let catalog_name = ctx.state().config().options().catalog.default_catalog.clone();
    let catalog =
        ctx.catalog(&catalog_name).ok_or_else(|| Error::Invalid(format!("no default catalog `{catalog_name}`")))?;
    let schema = Arc::new(MemorySchemaProvider::new());
    let (cached, live_tables) = (registry.clone(), live.clone());
    let listing =
        SystemTable { schema: listing_schema(), rows: Box::new(move || cache_listing(&cached, &live_tables)) };
    schema.register_table("cache".into(), Arc::new(listing))?;
    let live = live.clone();
    let offsets =
        SystemTable { schema: crate::live::offsets_schema(), rows: Box::new(move || crate::live::live_offsets(&live)) };
    schema.register_table("live_offsets".into(), Arc::new(offsets))?;
    catalog.register_schema(SYSTEM_SCHEMA, schema)?;
    Ok(())
}

fn not_found(name: &str) -> Error {
    Error::DataFusion(DataFusionError::Plan(format!("table `{name}` not found")))
}

impl SqlEngine {
    /// What [`SqlEngine::cache_table`] refuses before it needs a store: a
    /// live table, a name that is no table, a query that does not plan.
    /// The front door asks first, so a mistyped name starts no store.
    pub async fn check_cacheable(&self, name: &str, query: Option<&str>) -> Result<()> {
        self.refuse_uncacheable(name)?;
        match query {
            Some(sql) => self.plan(sql, None).await.map(drop),
            None if !self.context().table_exist(name)? => Err(not_found(name)),
            None => Ok(()),
        }
    }

    /// Live tables are in memory already; system tables are computed when
    /// read, so a copy would go stale at once.
    fn refuse_uncacheable(&self, name: &str) -> Result<()> {
        // As DataFusion reads the name: `COHORT.cache`, `"cohort".cache`, `datafusion.cohort.cache`.
        let reference = datafusion::common::TableReference::from(name);
        if matches!(reference.schema(), Some(SYSTEM_SCHEMA | "information_schema")) {
            return Err(Error::Invalid(format!("`{name}` is a system table, read live: it is not cached")));
        }
        match self.is_live(name) {
            true => Err(Error::Invalid(format!("`{name}` is a live table: it is in memory already"))),
            false => Ok(()),
        }
    }

    /// Caches `name`: its rows (or, with `query`, that query's rows as a
    /// new table called `name`) computed on `workers` and spread over
    /// `stores`. Caching a cached table again refreshes it from its source
    /// (or its query). Cached tables hold at most `budget` bytes together:
    /// the least recently used are evicted to make room.
    pub async fn cache_table(
        &self,
        name: &str,
        query: Option<&str>,
        workers: &dyn WorkerSource,
        stores: &[Url],
        budget: u64,
    ) -> Result<Arc<CacheEntry>> {
        if stores.is_empty() {
            return Err(Error::Unavailable("no store executor is serving".into()));
        }
        self.refuse_uncacheable(name)?;
        let ctx = self.context();
        // A table cached AS SELECT is made again from its query.
        let query = match (query, self.cached_definition(name)) {
            (None, Some(Some(definition))) => {
                self.uncache_table(name, true).await?;
                Some(definition)
            }
            (query, _) => query.map(str::to_string),
        };
        // A table cached AS SELECT before a restart answers from its query
        // until it is cached again ([`SqlEngine::serve_uncached`]).
        let exists = ctx.table_exist(name)? && !self.serves_query(name, query.as_deref()).await;
        let source = match &query {
            Some(_) if exists => {
                return Err(Error::Invalid(format!(
                    "table `{name}` exists: CACHE TABLE {name} caches it; CACHE TABLE ... AS SELECT makes a new one"
                )));
            }
            Some(_) => None,
            None if !exists => return Err(not_found(name)),
            None => {
                // Read the source, not an older copy of itself.
                self.uncache_table(name, true).await?;
                Some(ctx.table_provider(name).await?)
            }
        };
        let sql = query.clone().unwrap_or_else(|| format!("SELECT * FROM {name}"));
        let plan = self.plan(&sql, None).await?;
        let outcome = self.run(plan, workers).await?;
        let schema = outcome.schema.clone();
        let batches: Vec<RecordBatch> = outcome.stream.try_collect().await?;
        tracing::debug!(table = name, batches = batches.len(), "caching: rows computed");
        let total: u64 = batches.iter().map(store::rows_bytes).sum();
        if total > budget {
            return Err(Error::Invalid(format!(
                "`{name}` is {} in memory, more than the cache may hold ({}; see --sql-cache-memory)",
                format_bytes(total),
                format_bytes(budget)
            )));
        }
        self.evict_for(name, total, budget).await;
        // At least a partition per store and core, and none much over
        // PARTITION_BYTES: small puts, and scans with parallelism to spare.
        let count =
            (stores.len() * self.settings().target_partitions.max(1)).max(total.div_ceil(PARTITION_BYTES) as usize);
        let partitions = split_rows(&batches, count);
        drop(batches);
        let batch_rows = ctx.state().config().batch_size();
        let partitions = partitions
            .into_iter()
            .map(|part| in_full_batches(&schema, part, batch_rows))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(DataFusionError::from)?;
        let version = self.next_cache_version();
        let placements = loop {
            match self.put_parts(name, version, &schema, &partitions, stores).await {
                Ok(placements) => break placements,
                // One store is fuller than the budget says (its partitions
                // are not all the same size): room is made there too.
                Err(DataFusionError::ResourcesExhausted(why)) if self.evict_least_recent(name).await => {
                    tracing::debug!(table = name, why, "caching: a store is full, evicted to make room");
                }
                Err(e) => return Err(Error::Unavailable(format!("cannot cache `{name}`: {e}"))),
            }
        };
        let entry = Arc::new(CacheEntry::new(name.to_string(), schema, placements, source, query));
        ctx.deregister_table(name)?;
        ctx.register_table(name, Arc::new(CachedTable(entry.clone())))?;
        self.cache_registry().lock().expect("cache registry").insert(name.to_string(), entry.clone());
        tracing::info!(table = name, rows = entry.rows(), bytes = entry.bytes(), "cached");
        Ok(entry)
    }

    /// Puts `partitions` into `stores`, round robin; where each went. A
    /// failed put leaves none of them held.
    pub(crate) async fn put_parts(
        &self,
        name: &str,
        version: u64,
        schema: &SchemaRef,
        partitions: &[Vec<RecordBatch>],
        stores: &[Url],
    ) -> std::result::Result<Vec<Placement>, DataFusionError> {
        let mut placements = Vec::with_capacity(partitions.len());
        let mut puts = Vec::with_capacity(partitions.len());
        for (i, batches) in partitions.iter().enumerate() {
            let store_url = stores[i % stores.len()].to_string();
            let part = PartId { table: name.to_string(), version, partition: i as u32 };
            placements.push(Placement {
                store: store_url.clone(),
                part: part.clone(),
                rows: batches.iter().map(|b| b.num_rows() as u64).sum(),
                bytes: batches.iter().map(store::rows_bytes).sum(),
                shm: None,
                stats: Some(Arc::new(crate::cached::partition_statistics(schema, batches))),
                deleted: None,
            });
            let channel = self.channels().flight(&store_url)?;
            let (schema, batches) = (schema.clone(), batches.clone());
            puts.push(async move { store::put(channel, &store_url, &part, schema, batches).await });
        }
        match one_at_a_time_per_store(puts, stores.len()).await {
            Ok(paths) => {
                for (placement, path) in placements.iter_mut().zip(paths) {
                    placement.shm = path;
                }
                tracing::debug!(table = name, partitions = placements.len(), "caching: partitions put");
                Ok(placements)
            }
            Err(e) => {
                self.drop_from_stores(name, placements.iter().map(|p| p.store.clone())).await;
                Err(e)
            }
        }
    }

    /// Evicts the least recently used cached tables (not `name`) until
    /// `bytes` more fit in `budget`.
    pub(crate) async fn evict_for(&self, name: &str, bytes: u64, budget: u64) {
        while self.held_bytes(name) + bytes > budget && self.evict_least_recent(name).await {}
    }

    /// Bytes cached and live tables other than `except` hold in the stores.
    pub(crate) fn held_bytes(&self, except: &str) -> u64 {
        let cached: u64 = self
            .cache_registry()
            .lock()
            .expect("cache registry")
            .values()
            .filter(|e| e.name != except)
            .map(|e| e.held_bytes())
            .sum();
        cached + self.live_bytes(except)
    }

    /// Evicts the least recently used cached table other than `name`; its
    /// source (or its query) serves it from now on. Whether there was one.
    async fn evict_least_recent(&self, name: &str) -> bool {
        let victim = self
            .cache_registry()
            .lock()
            .expect("cache registry")
            .values()
            .filter(|e| e.name != name && !e.is_evicted())
            .min_by_key(|e| e.usage.last_used_ms())
            .cloned();
        let Some(victim) = victim else { return false };
        if let Err(e) = self.serve_from_source(&victim).await {
            tracing::warn!(table = %victim.name, error = %e, "cannot evict a cached table");
            return false;
        }
        victim.mark_evicted();
        self.drop_from_stores(&victim.name, victim.parts.iter().map(|p| p.store.clone())).await;
        tracing::info!(table = %victim.name, bytes = victim.bytes(), for_table = name, "evicted a cached table to make room");
        true
    }

    /// Points the catalog at what cached table `entry` was made from: its
    /// source, or a view of its query.
    async fn serve_from_source(&self, entry: &CacheEntry) -> Result<()> {
        let ctx = self.context();
        let provider = match (&entry.source, &entry.definition) {
            (Some(source), _) => source.clone(),
            (None, Some(query)) => Arc::new(QueryTable { sql: query.clone(), schema: entry.schema.clone() }),
            (None, None) => return Err(Error::Invalid(format!("`{}` has neither source nor query", entry.name))),
        };
        ctx.deregister_table(entry.name.as_str())?;
        ctx.register_table(entry.name.as_str(), provider)?;
        Ok(())
    }

    /// Makes a table that was cached `AS SELECT` (and so lives in the
    /// stores only) answer from its query until it is cached again: what a
    /// restarted coordinator does while it caches its tables anew. Its
    /// source serves a cached catalog table meanwhile, as before caching.
    pub async fn serve_uncached(&self, def: &crate::CacheDef) -> Result<()> {
        let Some(query) = &def.query else { return Ok(()) };
        let schema = Arc::new(self.plan(query, None).await?.schema().as_arrow().clone());
        let ctx = self.context();
        if ctx.table_exist(def.name.as_str())? {
            return Err(Error::Invalid(format!("`{}` exists, so its cached query cannot take its name", def.name)));
        }
        ctx.register_table(def.name.as_str(), Arc::new(QueryTable { sql: query.clone(), schema }))?;
        Ok(())
    }

    /// Whether `name` answers from `query` ([`SqlEngine::serve_uncached`]).
    async fn serves_query(&self, name: &str, query: Option<&str>) -> bool {
        let Some(query) = query else { return false };
        match self.context().table_provider(name).await {
            Ok(provider) => provider.downcast_ref::<QueryTable>().is_some_and(|t| t.sql == query),
            Err(_) => false,
        }
    }

    /// Uncaches `name`: its source serves again (a table cached `AS
    /// SELECT` is gone) and the stores forget it. What was cached, if anything.
    pub async fn uncache_table(&self, name: &str, if_exists: bool) -> Result<Option<Arc<CacheEntry>>> {
        let Some(entry) = self.cache_registry().lock().expect("cache registry").remove(name) else {
            // Cached AS SELECT before a restart and not yet again: gone, as it would be cached.
            if self.context().table_provider(name).await.is_ok_and(|p| p.downcast_ref::<QueryTable>().is_some()) {
                self.context().deregister_table(name)?;
                return Ok(None);
            }
            return match (if_exists, self.is_live(name)) {
                (true, _) => Ok(None),
                (false, true) => {
                    Err(Error::Invalid(format!("`{name}` is a live table, not a cached one (DROP TABLE removes it)")))
                }
                (false, false) => Err(Error::Invalid(format!("table `{name}` is not cached"))),
            };
        };
        let ctx = self.context();
        ctx.deregister_table(name)?;
        if let Some(source) = &entry.source {
            ctx.register_table(name, source.clone())?;
        }
        self.drop_from_stores(name, entry.parts.iter().map(|p| p.store.clone())).await;
        Ok(Some(entry))
    }

    /// Whether every partition of cached table `name` is still held where
    /// it was put: a store that died, or was preempted, took its own with it.
    pub async fn cache_intact(&self, name: &str) -> bool {
        let Some(entry) = self.cache_registry().lock().expect("cache registry").get(name).cloned() else {
            return true;
        };
        if entry.is_evicted() {
            return true;
        }
        crate::cached::missing_from_stores(self.channels(), name, &entry.parts).await.is_empty()
    }

    /// How cached table `name` is made again: from its source (none), or
    /// from its `AS SELECT` query; none at all if it is not cached.
    pub fn cached_definition(&self, name: &str) -> Option<Option<String>> {
        self.cache_registry().lock().expect("cache registry").get(name).map(|e| e.definition.clone())
    }

    /// The cached tables, by name.
    pub fn cached(&self) -> Vec<Arc<CacheEntry>> {
        self.cache_registry().lock().expect("cache registry").values().cloned().collect()
    }

    pub(crate) async fn drop_from_stores(&self, name: &str, stores: impl Iterator<Item = String>) {
        let mut stores: Vec<String> = stores.collect();
        stores.sort();
        stores.dedup();
        for url in stores {
            let dropped = match self.channels().flight(&url) {
                Ok(channel) => store::drop_table(channel, &url, name).await,
                Err(e) => Err(e),
            };
            // A store that is gone holds nothing anyway.
            if let Err(e) = dropped {
                tracing::warn!(table = name, store = %url, error = %e, "cannot tell a store to forget a table");
            }
        }
    }
}

fn format_bytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// `batches` cut into `n` parts of about as many rows each (slices, no copies).
fn split_rows(batches: &[RecordBatch], n: usize) -> Vec<Vec<RecordBatch>> {
    let n = n.max(1);
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let per_part = total.div_ceil(n).max(1);
    let mut parts = vec![Vec::new(); n];
    let (mut part, mut in_part) = (0, 0);
    for batch in batches {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let take = (per_part - in_part).min(batch.num_rows() - offset);
            parts[part].push(batch.slice(offset, take));
            offset += take;
            in_part += take;
            if in_part == per_part && part + 1 < n {
                part += 1;
                in_part = 0;
            }
        }
    }
    parts
}

/// A partition's rows in batches of about `rows` each. Rows computed on
/// several workers come back through their shuffle in batches of a few
/// hundred rows, and each batch costs every later scan of the table its
/// own overhead (the scan and each operator above it run per batch): TPC-H
/// q6 on a `lineitem` cached that way read 12,000 batches and took twice
/// as long. Batches that are already large pass as they are, uncopied.
fn in_full_batches(
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    rows: usize,
) -> std::result::Result<Vec<RecordBatch>, arrow::error::ArrowError> {
    let mut coalescer = arrow::compute::BatchCoalescer::new(schema.clone(), rows.max(1))
        .with_biggest_coalesce_batch_size(Some(rows / 2));
    let mut out = Vec::new();
    for batch in batches {
        coalescer.push_batch(batch)?;
        out.extend(std::iter::from_fn(|| coalescer.next_completed_batch()));
    }
    coalescer.finish_buffered_batch()?;
    out.extend(std::iter::from_fn(|| coalescer.next_completed_batch()));
    Ok(out)
}

/// A table cached `AS SELECT` while evicted: its query, planned at each
/// scan, so that it reads what its tables are then (cached or not), not
/// what they were when it was evicted, as a view's bound plan would.
#[derive(Debug)]
struct QueryTable {
    sql: String,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for QueryTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let state = state
            .as_any()
            .downcast_ref::<SessionState>()
            .ok_or_else(|| DataFusionError::Internal("an evicted table is read from a full session only".into()))?;
        let plan = state.create_logical_plan(&self.sql).await?;
        let shape = |fields: &arrow::datatypes::Fields| -> Vec<(String, DataType)> {
            fields.iter().map(|f| (f.name().clone(), f.data_type().clone())).collect()
        };
        if shape(plan.schema().as_arrow().fields()) != shape(self.schema.fields()) {
            return Err(DataFusionError::Plan(format!(
                "the query this table was cached from now returns other columns: {}",
                self.sql
            )));
        }
        let mut plan = LogicalPlanBuilder::from(plan);
        if let Some(filter) = filters.iter().cloned().reduce(Expr::and) {
            plan = plan.filter(filter)?;
        }
        if let Some(projection) = projection {
            let columns: Vec<Expr> =
                projection.iter().map(|i| Expr::Column(Column::from(plan.schema().qualified_field(*i)))).collect();
            plan = plan.project(columns)?;
        }
        if let Some(limit) = limit {
            plan = plan.limit(0, Some(limit))?;
        }
        state.create_physical_plan(&plan.build()?).await
    }
}

/// One row of `cohort.cache`.
struct Listed {
    name: String,
    state: &'static str,
    partitions: u32,
    stores: String,
    rows: u64,
    bytes: u64,
    hits: u64,
    since_ms: i64,
    last_used_ms: i64,
}

impl Listed {
    fn new(
        name: &str,
        state: &'static str,
        held: &[Placement],
        stores: String,
        usage: &crate::cached::Usage,
        since_ms: i64,
    ) -> Listed {
        Listed {
            name: name.to_string(),
            state,
            partitions: held.len() as u32,
            stores,
            rows: held.iter().map(|p| p.rows).sum(),
            bytes: held.iter().map(|p| p.bytes).sum(),
            hits: usage.hits(),
            since_ms,
            last_used_ms: usage.last_used_ms(),
        }
    }

    /// An evicted table still shows the size it had.
    fn sized(self, rows: u64, bytes: u64) -> Listed {
        Listed { rows, bytes, ..self }
    }
}

/// `cohort.cache`: one row per cached or live table.
fn listing_schema() -> SchemaRef {
    let at = || DataType::Timestamp(TimeUnit::Millisecond, None);
    Arc::new(Schema::new(vec![
        Field::new("table_name", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("partitions", DataType::UInt32, false),
        Field::new("stores", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("hits", DataType::UInt64, false),
        Field::new("cached_at", at(), false),
        Field::new("last_used", at(), false),
    ]))
}

fn cache_listing(cached: &Registry, live: &crate::live::LiveRegistry) -> Vec<ArrayRef> {
    let hosts = |parts: &[Placement]| {
        let mut hosts: Vec<String> = parts
            .iter()
            .map(|p| Url::parse(&p.store).ok().and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port()?))))
            .map(|h| h.unwrap_or_default())
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts.join(", ")
    };
    let cached_entries = cached.lock().expect("cache registry").values().cloned().collect::<Vec<_>>();
    let mut rows: Vec<Listed> = cached_entries
        .iter()
        .map(|e| {
            let held: &[Placement] = if e.is_evicted() { &[] } else { &e.parts };
            let state = if e.is_evicted() { "evicted" } else { "cached" };
            Listed::new(&e.name, state, held, hosts(held), &e.usage, e.cached_ms).sized(e.rows(), e.bytes())
        })
        .collect();
    for e in live.lock().expect("live tables").values() {
        let parts = e.parts();
        rows.push(Listed::new(&e.name, "live", &parts, hosts(&parts), &e.usage, e.created_ms));
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.name.clone()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.state))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.partitions))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.stores.clone()))),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.rows))),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.bytes))),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.hits))),
        Arc::new(TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.since_ms))),
        Arc::new(TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.last_used_ms))),
    ];
    columns
}

/// A system table: its rows are made afresh at each scan.
pub(crate) struct SystemTable {
    pub schema: SchemaRef,
    pub rows: Box<dyn Fn() -> Vec<ArrayRef> + Send + Sync>,
}

impl std::fmt::Debug for SystemTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemTable").field("schema", &self.schema).finish_non_exhaustive()
    }
}

#[async_trait]
impl TableProvider for SystemTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let batch = RecordBatch::try_new(self.schema.clone(), (self.rows)())?;
        MemTable::try_new(self.schema.clone(), vec![vec![batch]])?.scan(state, projection, filters, limit).await
    }
}

/// Runs `puts`, the `i`th to store `i % stores`, at most one at a time per
/// store and the stores in parallel; their results in order. A store holds
/// a put's rows decoded and its message while it writes them to its file:
/// ten puts at once (`lineitem` on `cohort up`'s two stores) took a 1 GiB
/// store past its memory. Any `stores` puts in a row reach each store
/// once, so a window of that many in flight is one per store.
async fn one_at_a_time_per_store<T, E>(
    puts: Vec<impl Future<Output = std::result::Result<T, E>>>,
    stores: usize,
) -> std::result::Result<Vec<T>, E> {
    futures::stream::iter(puts).buffered(stores.max(1)).try_collect().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    #[test]
    fn rows_are_cut_into_even_parts_without_losing_any() {
        let schema = Arc::new(Schema::new(vec![Field::new("i", DataType::Int64, false)]));
        let batch = |from: i64, n: i64| {
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from_iter_values(from..from + n))]).unwrap()
        };
        let parts = split_rows(&[batch(0, 7), batch(7, 3), batch(10, 0)], 4);
        let sizes: Vec<usize> = parts.iter().map(|p| p.iter().map(RecordBatch::num_rows).sum()).collect();
        assert_eq!(sizes, [3, 3, 3, 1]);
        let values: Vec<i64> = parts
            .iter()
            .flatten()
            .flat_map(|b| b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec())
            .collect();
        assert_eq!(values, (0..10).collect::<Vec<_>>(), "every row once, in order");
        assert_eq!(split_rows(&[], 3).len(), 3, "an empty table still has its parts");
    }

    #[test]
    fn a_partition_of_small_batches_is_held_in_full_ones_and_large_batches_pass_uncopied() {
        let schema = Arc::new(Schema::new(vec![Field::new("i", DataType::Int64, false)]));
        let batch = |from: i64, n: i64| {
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from_iter_values(from..from + n))]).unwrap()
        };
        // Given 25 batches of 40 rows, as a shuffle returns them
        let small: Vec<RecordBatch> = (0..25).map(|i| batch(i * 40, 40)).collect();
        // Then they are held as batches of 100 rows, every row once, in order
        let held = in_full_batches(&schema, small, 100).unwrap();
        assert_eq!(held.iter().map(RecordBatch::num_rows).collect::<Vec<_>>(), [100; 10]);
        let values: Vec<i64> = held
            .iter()
            .flat_map(|b| b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec())
            .collect();
        assert_eq!(values, (0..1000).collect::<Vec<_>>());
        // And a batch that is large already is kept, not copied
        let large = batch(0, 90);
        let held = in_full_batches(&schema, vec![large.clone()], 100).unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].column(0).to_data().buffers()[0].as_ptr(), large.column(0).to_data().buffers()[0].as_ptr());
    }

    #[tokio::test]
    async fn puts_reach_each_store_one_at_a_time_and_the_stores_in_parallel() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // Given 3 stores and 10 partitions, round robin, each put taking its time
        let stores = 3;
        let in_flight: Vec<AtomicUsize> = (0..stores).map(|_| AtomicUsize::new(0)).collect();
        let (most_per_store, most_stores) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let total = AtomicUsize::new(0);
        let puts: Vec<_> = (0..10)
            .map(|i| {
                let (in_flight, most_per_store, most_stores, total) =
                    (&in_flight, &most_per_store, &most_stores, &total);
                async move {
                    let now = in_flight[i % stores].fetch_add(1, Ordering::SeqCst) + 1;
                    most_per_store.fetch_max(now, Ordering::SeqCst);
                    most_stores.fetch_max(total.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    // Later puts finish first: a window in order must still hold.
                    tokio::time::sleep(std::time::Duration::from_millis(20 - i as u64)).await;
                    total.fetch_sub(1, Ordering::SeqCst);
                    in_flight[i % stores].fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, ()>(i)
                }
            })
            .collect();
        // When they are run
        let done = one_at_a_time_per_store(puts, stores).await.unwrap();
        // Then every result comes back in order, no store had two at once, and all three worked together
        assert_eq!(done, (0..10).collect::<Vec<_>>());
        assert_eq!(most_per_store.load(Ordering::SeqCst), 1);
        assert_eq!(most_stores.load(Ordering::SeqCst), stores);
    }

    #[tokio::test]
    async fn a_query_cached_before_a_restart_answers_from_its_query_until_uncached() {
        let engine = SqlEngine::new(crate::EngineSettings::default()).unwrap();
        engine.apply_ddl("CREATE VIEW numbers AS SELECT * FROM (VALUES (1), (2), (3)) t(n)").await.unwrap();
        let def = crate::CacheDef { name: "odd".into(), query: Some("SELECT n FROM numbers WHERE n % 2 = 1".into()) };
        // Given a table cached AS SELECT by an earlier coordinator, not cached again yet
        engine.serve_uncached(&def).await.unwrap();
        // Then it answers from its query
        let plan = engine.plan("SELECT sum(n) AS s FROM odd", None).await.unwrap();
        let batches: Vec<RecordBatch> = engine.run_here(plan).await.unwrap().stream.try_collect().await.unwrap();
        let sum = batches[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0);
        assert_eq!(sum, 4);
        // And a name taken since cannot be taken by it
        let taken = crate::CacheDef { name: "numbers".into(), query: Some("SELECT 1".into()) };
        assert!(engine.serve_uncached(&taken).await.unwrap_err().to_string().contains("`numbers` exists"));
        // When it is uncached, it is gone, as a table cached AS SELECT is
        assert!(engine.uncache_table("odd", false).await.unwrap().is_none());
        assert!(!engine.context().table_exist("odd").unwrap());
    }
}
