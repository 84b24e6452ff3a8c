//! The driver side of distributed queries.
//!
//! One [`SqlEngine`] holds the catalog (a DataFusion `SessionContext`
//! whose tables every query sees). Each query is planned in its own session
//! whose worker resolver returns the workers of that query's attempt, since
//! datafusion-distributed reads the resolver synchronously while planning.
//!
//! datafusion-distributed has no fault tolerance: a worker that dies fails
//! the query. So the engine holds a query's output back (up to
//! [`EngineSettings::hold_back_bytes`]) until it is complete: a worker lost
//! before then costs a re-plan on the workers there are now and another
//! try, at most [`EngineSettings::max_attempts`] in all. Rows are never
//! answered twice or partially: once output is released, a later failure
//! reaches the client as an error.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::TableProvider;
use datafusion::common::ParamValues;
use datafusion::common::metadata::ScalarAndMetadata;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::ViewTable;
use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::logical_expr::dml::{CopyTo, InsertOp};
use datafusion::logical_expr::{DmlStatement, Expr, WriteOp};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_distributed::{DistributedExt, SessionStateBuilderExt, WorkerResolver};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use url::Url;

use crate::statements::TableDef;
use crate::{Channels, Error, Result, Staged};

/// How the driver plans and retries.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// Partitions each task runs: about the cores of one worker.
    pub target_partitions: usize,
    /// Tries per query when workers are lost.
    pub max_attempts: u32,
    /// Output held back, so that a lost worker can still be retried,
    /// before rows start to flow to the client.
    pub hold_back_bytes: usize,
    /// Memory for the parts of plans that run in the driver.
    pub memory_bytes: usize,
    /// Where the driver spills; the system's temporary directory if unset.
    pub spill_dir: Option<PathBuf>,
    /// Bytes of files per partition of a scan: a scan smaller than
    /// `target_partitions` of these runs in the driver, undistributed.
    pub scan_bytes_per_partition: usize,
    /// How data between stages is compressed. None by default: on one host
    /// or a fast network, LZ4 costs more CPU than it saves (TPC-H SF1 on 2
    /// cores: 5% slower with it).
    pub shuffle_compression: Option<datafusion_distributed::CompressionType>,
    /// A join side estimated below this many bytes, or rows, is built once
    /// and sent whole to every task of the other side (a broadcast join),
    /// rather than both sides being shuffled by key: Spark's
    /// `autoBroadcastJoinThreshold` (10 MB) with DataFusion's planner.
    /// DataFusion's own thresholds (1 MB, 128 K rows) suit one process,
    /// where a partitioned join shuffles nothing (TPC-H SF1 on 2 cores:
    /// 1.30–1.36× single-process DataFusion with them, 1.19 with these).
    pub broadcast_join_bytes: usize,
    pub broadcast_join_rows: usize,
    /// A query that scans fewer bytes of files than this (and no cached
    /// table) runs in the driver instead of on workers: fanning out costs
    /// 15–25 ms of planning, plan shipping and stage start-up, more than
    /// spreading so small a scan saves. 0: every query that reads files
    /// runs on workers (a job's driver, which has its gang for that).
    pub local_query_bytes: u64,
    /// How workers are called in a cluster (TLS, with the driver's
    /// certificate); plaintext when none (one process, benchmarks).
    pub worker_tls: Option<tonic::transport::ClientTlsConfig>,
    /// Where live tables keep a snapshot of each partition, to put back
    /// what a store loses and to outlive a restart; none: memory only.
    pub live_dir: Option<PathBuf>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            target_partitions: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_attempts: 3,
            hold_back_bytes: 64 << 20,
            memory_bytes: 1 << 30,
            spill_dir: None,
            scan_bytes_per_partition: 4 << 20,
            shuffle_compression: None,
            broadcast_join_bytes: 10 << 20,
            broadcast_join_rows: 1_000_000,
            local_query_bytes: 0,
            worker_tls: None,
            live_dir: None,
        }
    }
}

/// Where a query's workers come from.
#[async_trait]
pub trait WorkerSource: Send + Sync {
    /// The workers to plan attempt `attempt` (from 1) over. May wait for
    /// some to come; fails with [`Error::NoWorkers`] if none do.
    async fn workers(&self, attempt: u32) -> Result<Vec<Url>>;
}

/// A query that ran far enough to answer: its rows, and why earlier
/// attempts were abandoned.
pub struct QueryOutcome {
    pub schema: SchemaRef,
    pub stream: SendableRecordBatchStream,
    pub retries: Vec<String>,
    /// How many workers the answering attempt ran on; 0: in the driver.
    pub workers: usize,
}

/// The workers of one attempt, as datafusion-distributed asks for them.
struct Fixed(Vec<Url>);

impl WorkerResolver for Fixed {
    fn get_urls(&self) -> Result<Vec<Url>, DataFusionError> {
        Ok(self.0.clone())
    }
}

/// The catalog and the way queries run.
pub struct SqlEngine {
    /// Plans across workers; owns the catalog.
    ctx: SessionContext,
    /// The same catalog, planned in this process only: for statements that
    /// read no files (SHOW TABLES, DESCRIBE, `SELECT 1`).
    local: SessionContext,
    channels: Channels,
    settings: EngineSettings,
    /// Cached tables, by name.
    cache: crate::caching::Registry,
    /// Live tables, by name.
    live: crate::live::LiveRegistry,
    /// Where the parts of queries that run in this process compute.
    compute: crate::compute::Compute,
    cache_versions: std::sync::atomic::AtomicU64,
    /// The queries running now: what holds replaced live partitions in their stores.
    in_flight: Arc<crate::readers::InFlight>,
    /// Bytes under each scanned location, listed at most every few seconds.
    sizes: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, u64)>>,
}

/// How long a location's listed size is trusted.
const SIZE_TTL: Duration = Duration::from_secs(10);

/// What a planned statement reads.
#[derive(Debug, Default)]
pub struct Footprint {
    /// Locations of the file-backed tables it scans (views looked through).
    pub locations: Vec<ListingTableUrl>,
    /// The cached and live tables it reads.
    pub cached: Vec<String>,
    /// Where their partitions are.
    pub cached_parts: Vec<crate::cached::Placement>,
}

impl SqlEngine {
    pub fn new(settings: EngineSettings) -> Result<SqlEngine> {
        let spill = settings.spill_dir.clone().unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&spill)
            .map_err(|source| Error::Io { context: format!("cannot create {}", spill.display()), source })?;
        let runtime = crate::runtime(settings.memory_bytes, spill)?;
        let channels = Channels::new(settings.worker_tls.clone());
        // Scans of cached tables read their stores through these channels.
        let mut config = SessionConfig::new()
            .with_target_partitions(settings.target_partitions.max(1))
            .with_information_schema(true)
            .with_extension(Arc::new(channels.clone()));
        let optimizer = &mut config.options_mut().optimizer;
        optimizer.hash_join_single_partition_threshold = settings.broadcast_join_bytes;
        optimizer.hash_join_single_partition_threshold_rows = settings.broadcast_join_rows;
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_config(config.clone())
            .with_runtime_env(runtime.clone())
            .with_distributed_channel_resolver(channels.clone())
            .with_distributed_user_codec(crate::cached::CacheCodec)
            .with_distributed_desired_task_count_handler(crate::routing::desired_tasks)
            .with_distributed_scale_up_leaf_node_handler(crate::routing::split_by_host)
            .with_distributed_route_tasks_handler(crate::routing::route_to_hosts)
            .with_physical_optimizer_rule(Arc::new(crate::runtime_filters::KeepFiltersThatSpareWork))
            .with_distributed_planner()
            .with_distributed_file_scan_config_bytes_per_partition(settings.scan_bytes_per_partition.max(1))?
            .with_distributed_compression(settings.shuffle_compression)?
            .build();

        // Queries on cached tables alone: their filters are estimated on samples.
        config.options_mut().optimizer.use_statistics_registry = true;
        let local = SessionStateBuilder::new()
            .with_default_features()
            .with_config(config)
            .with_statistics_registry(crate::estimates::registry())
            .with_runtime_env(runtime)
            .with_catalog_list(state.catalog_list().clone())
            .with_physical_optimizer_rule(Arc::new(crate::like::MatchLikeByPieces))
            .with_physical_optimizer_rule(Arc::new(crate::decimals::DecimalArithmeticInI64))
            .with_physical_optimizer_rule(Arc::new(crate::runtime_filters::KeepFiltersThatSpareWork))
            .with_physical_optimizer_rule(Arc::new(crate::build_sides::StartBuildSidesWhenPolled))
            .build();
        let ctx = SessionContext::new_with_state(state);
        let cache = crate::caching::Registry::default();
        let live = crate::live::LiveRegistry::default();
        crate::caching::register_system_tables(&ctx, &cache, &live)?;
        let compute = crate::compute::Compute::new(settings.target_partitions)
            .map_err(|source| Error::Io { context: "cannot start the query threads".into(), source })?;
        Ok(SqlEngine {
            ctx,
            local: SessionContext::new_with_state(local),
            channels,
            settings,
            cache,
            live,
            compute,
            cache_versions: std::sync::atomic::AtomicU64::new(0),
            in_flight: Arc::default(),
            sizes: Default::default(),
        })
    }

    pub(crate) fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    pub(crate) fn in_flight(&self) -> &crate::readers::InFlight {
        &self.in_flight
    }

    pub(crate) fn channels(&self) -> &Channels {
        &self.channels
    }

    pub(crate) fn cache_registry(&self) -> &crate::caching::Registry {
        &self.cache
    }

    pub(crate) fn live_registry(&self) -> &crate::live::LiveRegistry {
        &self.live
    }

    /// A version no other caching by this engine has used: the start
    /// time in ms, counted up, so a restarted driver does not reuse one.
    pub(crate) fn next_cache_version(&self) -> u64 {
        use std::sync::atomic::Ordering;
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let _ = self.cache_versions.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        self.cache_versions.fetch_add(1, Ordering::Relaxed)
    }

    /// The shared catalog, for listings.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Runs a catalog statement (`CREATE EXTERNAL TABLE`, `CREATE VIEW`,
    /// `DROP ...`) against the shared catalog.
    pub async fn apply_ddl(&self, sql: &str) -> Result<()> {
        self.local.sql(sql).await?.collect().await?;
        Ok(())
    }

    /// Recreates persisted tables and views. A definition that fails is
    /// tried again after the others (a view may come before a table it
    /// reads, once that table was replaced); those that still fail (their
    /// files gone, say) are returned with why, and the rest registered.
    pub async fn restore(&self, defs: &[TableDef]) -> Vec<(String, Error)> {
        let mut pending: Vec<&TableDef> = defs.iter().collect();
        loop {
            let mut failed = Vec::new();
            for def in &pending {
                if let Err(e) = self.apply_ddl(&def.ddl).await {
                    failed.push((*def, e));
                }
            }
            if failed.is_empty() || failed.len() == pending.len() {
                for (def, e) in &failed {
                    tracing::warn!(table = %def.name, error = %e, "cannot restore table");
                }
                return failed.into_iter().map(|(def, e)| (def.name.clone(), e)).collect();
            }
            pending = failed.into_iter().map(|(def, _)| def).collect();
        }
    }

    /// Plans a statement without running it (its schema answers Flight
    /// SQL's GetFlightInfo and prepared statements).
    pub async fn plan(&self, sql: &str, params: Option<ParamValues>) -> Result<LogicalPlan> {
        crate::statements::check_expression_depth(sql)?;
        let (state, sql) = (self.ctx.state(), sql.to_string());
        let plan = self.compute.run(async move { state.create_logical_plan(&sql).await }).await??;
        Ok(match params {
            Some(p) => {
                let p = fit_parameters(&plan, p)?;
                plan.with_param_values(p)?
            }
            None => plan,
        })
    }

    /// About how many bytes of files a planned statement scans (before
    /// pruning), to size the workers it runs on.
    pub async fn scan_bytes(&self, plan: &LogicalPlan) -> Result<u64> {
        self.bytes_under(&footprint(plan)?.locations).await
    }

    async fn bytes_under(&self, locations: &[ListingTableUrl]) -> Result<u64> {
        let mut total = 0;
        for location in locations {
            let key = location.to_string();
            let cached = self.sizes.lock().expect("size cache").get(&key).copied();
            let bytes = match cached {
                Some((at, bytes)) if at.elapsed() < SIZE_TTL => bytes,
                _ => {
                    let store = self.ctx.runtime_env().object_store(location.object_store())?;
                    let bytes = store
                        .list(Some(location.prefix()))
                        .try_fold(0u64, |sum, meta| async move { Ok(sum + meta.size) })
                        .await
                        .map_err(DataFusionError::from)?;
                    self.sizes.lock().expect("size cache").insert(key, (std::time::Instant::now(), bytes));
                    bytes
                }
            };
            total += bytes;
        }
        Ok(total)
    }

    /// Plans a write (`COPY ... TO`, or `INSERT INTO` an external table)
    /// to go beside its target: the plan writes to staging, and the
    /// returned [`Staged`] moves the files in at commit. `job` and
    /// `attempt` name the staging (see [`Staged::beside`]).
    pub async fn stage_write(
        &self,
        sql: &str,
        params: Option<ParamValues>,
        job: &str,
        attempt: u32,
    ) -> Result<(LogicalPlan, Staged)> {
        match self.plan(sql, params).await? {
            LogicalPlan::Copy(copy) => {
                let staged = Staged::beside(&copy.output_url, job, attempt, &self.ctx.runtime_env()).await?;
                let plan = LogicalPlan::Copy(CopyTo::new(
                    copy.input,
                    staged.staging_url.clone(),
                    copy.partition_by,
                    copy.file_type,
                    copy.options,
                ));
                Ok((plan, staged))
            }
            LogicalPlan::Dml(dml) if matches!(dml.op, WriteOp::Insert(InsertOp::Append)) => {
                let provider = source_as_provider(&dml.target)?;
                let Some(table) = provider.downcast_ref::<ListingTable>() else {
                    return Err(Error::Invalid(format!(
                        "INSERT INTO {}: only external tables (files) take inserts",
                        dml.table_name
                    )));
                };
                let [location] = table.table_paths().as_slice() else {
                    return Err(Error::Invalid(format!(
                        "INSERT INTO {}: the table spans several locations; insert into one",
                        dml.table_name
                    )));
                };
                if !location.is_collection() {
                    return Err(Error::Invalid(format!(
                        "INSERT INTO {}: the table is one file ({location}); declare it over a directory",
                        dml.table_name
                    )));
                }
                let staged = Staged::beside(location.as_str(), job, attempt, &self.ctx.runtime_env()).await?;
                // The same table, over the staging directory: DataFusion writes
                // it with the table's own format options and partitioning.
                let options = table.options().clone();
                let partition_columns: Vec<&str> =
                    options.table_partition_cols.iter().map(|(c, _)| c.as_str()).collect();
                let file_fields: Vec<_> = table
                    .schema()
                    .fields()
                    .iter()
                    .filter(|f| !partition_columns.contains(&f.name().as_str()))
                    .cloned()
                    .collect();
                let file_schema = Arc::new(arrow::datatypes::Schema::new(file_fields));
                let config = ListingTableConfig::new(ListingTableUrl::parse(&staged.staging_url)?)
                    .with_listing_options(options)
                    .with_schema(file_schema);
                let staging_table = ListingTable::try_new(config)?;
                let plan = LogicalPlan::Dml(DmlStatement::new(
                    dml.table_name.clone(),
                    provider_as_source(Arc::new(staging_table)),
                    dml.op,
                    dml.input,
                ));
                Ok((plan, staged))
            }
            LogicalPlan::Dml(dml) => {
                Err(Error::Invalid(format!("{} is not supported; INSERT INTO appends files to a table", dml.op)))
            }
            _ => Err(Error::Invalid("expected COPY ... TO or INSERT INTO".into())),
        }
    }

    /// Runs a planned query on the workers `source` gives, retrying on
    /// others when one is lost before the output is released. A query that
    /// reads no files, and only cached partitions this host maps from
    /// shared memory, runs here without workers; one that reads cached
    /// partitions held elsewhere runs on workers on their hosts
    /// ([`crate::routing`]).
    ///
    /// The query counts as running until its output is read or dropped
    /// ([`crate::readers`]).
    pub async fn run(&self, plan: LogicalPlan, source: &dyn WorkerSource) -> Result<QueryOutcome> {
        let ticket = self.in_flight.enter();
        let insert_into = InsertTarget::of(&plan);
        let mut outcome = self.run_unheld(plan, source).await.map_err(|e| match (&insert_into, e) {
            (Some(target), Error::DataFusion(e)) => Error::DataFusion(target.name_refused_null(e)),
            (_, e) => e,
        })?;
        let schema = outcome.stream.schema();
        let rows = outcome
            .stream
            .inspect(move |_| {
                let _running = &ticket;
            })
            .map_err(move |e| match &insert_into {
                Some(target) => target.name_refused_null(e),
                None => e,
            });
        outcome.stream = Box::pin(RecordBatchStreamAdapter::new(schema, rows));
        Ok(outcome)
    }

    async fn run_unheld(&self, plan: LogicalPlan, source: &dyn WorkerSource) -> Result<QueryOutcome> {
        let footprint = footprint(&plan)?;
        self.check_locations(&footprint.locations).await?;
        let reads_no_files = footprint.locations.is_empty();
        if reads_no_files && crate::cached::CachedScanExec::is_mapped_here(&footprint.cached_parts) {
            return self.run_here(plan).await;
        }
        if !reads_no_files
            && footprint.cached.is_empty()
            && self.bytes_under(&footprint.locations).await? < self.settings.local_query_bytes
        {
            return self.run_here(plan).await;
        }
        let mut retries = Vec::new();
        for attempt in 1..=self.settings.max_attempts {
            let workers = match source.workers(attempt).await {
                Ok(workers) => workers,
                // Cached partitions can be read from here too, over the network.
                Err(Error::NoWorkers(why)) if reads_no_files => {
                    tracing::info!(why, "no workers for a query over cached tables; it reads them from here");
                    return self.run_here(plan).await;
                }
                Err(e) => return Err(e),
            };
            if workers.is_empty() {
                return Err(Error::NoWorkers("the worker source returned none".into()));
            }
            match self.attempt(plan.clone(), &workers).await {
                Ok(mut outcome) => {
                    outcome.retries = retries;
                    return Ok(outcome);
                }
                Err(e) if is_worker_loss(&e) => {
                    tracing::warn!(attempt, error = %e, "query lost a worker; re-planning");
                    for w in &workers {
                        self.channels.forget(w);
                    }
                    retries.push(format!("attempt {attempt}: {e}"));
                    // Give the cluster a moment to notice the loss.
                    tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
                }
                Err(e) => return Err(Error::DataFusion(e)),
            }
        }
        Err(Error::WorkersLost { attempts: self.settings.max_attempts, last: retries.pop().unwrap_or_default() })
    }

    /// Runs a plan in this process, on the engine's own threads.
    pub(crate) async fn run_here(&self, plan: LogicalPlan) -> Result<QueryOutcome> {
        let stream = self.compute.stream(self.local.execute_logical_plan(plan).await?).await?;
        Ok(QueryOutcome { schema: stream.schema(), stream, retries: Vec::new(), workers: 0 })
    }

    /// DataFusion reads a table whose file or directory has gone as empty;
    /// a user who deleted the data should hear so instead.
    async fn check_locations(&self, locations: &[ListingTableUrl]) -> Result<()> {
        for location in locations {
            let gone = if location.is_collection() {
                // Object stores have no directories; only a local one can be missing.
                location.scheme() == "file"
                    && AsRef::<Url>::as_ref(location).to_file_path().is_ok_and(|dir| !dir.is_dir())
            } else {
                let store = self.ctx.runtime_env().object_store(location.object_store())?;
                matches!(store.head(location.prefix()).await, Err(object_store::Error::NotFound { .. }))
            };
            if gone {
                return Err(Error::DataFusion(DataFusionError::Plan(format!(
                    "table data at {location} not found: it was deleted or moved after the table was created \
                     (DROP TABLE, or recreate it over the new location)"
                ))));
            }
        }
        Ok(())
    }

    /// One try: plan on `workers`, run until the output is complete or
    /// exceeds the hold-back, and hand it over.
    async fn attempt(&self, plan: LogicalPlan, workers: &[Url]) -> Result<QueryOutcome, DataFusionError> {
        let state = SessionStateBuilder::new_from_existing(self.ctx.state())
            .with_distributed_worker_resolver(Fixed(workers.to_vec()))
            .build();
        let df = SessionContext::new_with_state(state).execute_logical_plan(plan).await?;
        let mut stream = self.compute.stream(df).await?;
        let schema = stream.schema();
        let mut held: Vec<RecordBatch> = Vec::new();
        let mut held_bytes = 0;
        while held_bytes <= self.settings.hold_back_bytes {
            match stream.try_next().await? {
                Some(batch) => {
                    held_bytes += batch.get_array_memory_size();
                    held.push(batch);
                }
                None => {
                    let done = futures::stream::iter(held.into_iter().map(Ok));
                    let stream = Box::pin(RecordBatchStreamAdapter::new(schema.clone(), done));
                    return Ok(QueryOutcome { schema, stream, retries: Vec::new(), workers: workers.len() });
                }
            }
        }
        let rest = futures::stream::iter(held.into_iter().map(Ok)).chain(stream);
        let stream = Box::pin(RecordBatchStreamAdapter::new(schema.clone(), rest));
        Ok(QueryOutcome { schema, stream, retries: Vec::new(), workers: workers.len() })
    }
}

/// The file-backed tables a plan reads, looking through views.
pub fn footprint(plan: &LogicalPlan) -> Result<Footprint> {
    let mut found = Footprint::default();
    visit_scans(plan, &mut found)?;
    Ok(found)
}

fn visit_scans(plan: &LogicalPlan, found: &mut Footprint) -> Result<()> {
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Ok(provider) = source_as_provider(&scan.source)
        {
            if let Some(listing) = provider.downcast_ref::<ListingTable>() {
                found.locations.extend(listing.table_paths().iter().cloned());
            } else if let Some(cached) = provider.downcast_ref::<crate::cached::CachedTable>() {
                found.cached.push(cached.0.name.clone());
                found.cached_parts.extend(cached.0.parts.iter().cloned());
            } else if let Some(live) = provider.downcast_ref::<crate::live::LiveTable>() {
                found.cached.push(live.0.name.clone());
                found.cached_parts.extend(live.0.parts());
            } else if let Some(view) = provider.downcast_ref::<ViewTable>() {
                visit_scans(view.logical_plan(), found).map_err(|e| DataFusionError::External(Box::new(e)))?;
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(())
}

/// Whether an error means a worker went away (and a re-planned try may
/// succeed), rather than that the query itself is wrong.
pub fn is_worker_loss(e: &DataFusionError) -> bool {
    use tonic::Code;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cause {
        if let Some(status) = err.downcast_ref::<tonic::Status>()
            && matches!(
                status.code(),
                Code::Unavailable | Code::Cancelled | Code::Unknown | Code::Aborted | Code::DeadlineExceeded
            )
        {
            return true;
        }
        if err.downcast_ref::<tonic::transport::Error>().is_some() {
            return true;
        }
        cause = err.source();
    }
    let text = e.to_string();
    const SIGNS: [&str; 7] = [
        "Error connecting to Distributed DataFusion worker",
        "transport error",
        "Connection refused",
        "connection reset",
        "broken pipe",
        "h2 protocol error",
        "error reading a body from connection",
    ];
    SIGNS.iter().any(|sign| text.contains(sign))
}

/// The table an `INSERT` writes, to name what it refuses.
struct InsertTarget {
    table: String,
    columns: Vec<String>,
    /// The table's column each `VALUES` column (`column1`, ...) fills.
    filled_by_values: Vec<(String, String)>,
}

impl InsertTarget {
    fn of(plan: &LogicalPlan) -> Option<InsertTarget> {
        let LogicalPlan::Dml(dml) = plan else { return None };
        let columns: Vec<String> = dml.target.schema().fields().iter().map(|f| f.name().clone()).collect();
        // DataFusion fills the table's columns, in order, by a projection
        // of the source: `CAST(column2 AS Utf8) AS name`.
        let filled_by_values = match dml.input.as_ref() {
            LogicalPlan::Projection(projection) => projection
                .expr
                .iter()
                .zip(&columns)
                .filter_map(|(expr, column)| Some((source_column(expr)?, column.clone())))
                .collect(),
            _ => Vec::new(),
        };
        Some(InsertTarget { table: dml.table_name.to_string(), columns, filled_by_values })
    }

    /// DataFusion refuses a NULL for a non-nullable column by its position
    /// in the table (`Invalid batch column at '1' has null but schema
    /// specifies non-nullable`), also when the refusal comes back from a
    /// worker as text, and a literal NULL by its place in `VALUES`
    /// (`Column 'column2' is declared as non-nullable but contains null
    /// values`): this names the table's column.
    fn name_refused_null(&self, e: DataFusionError) -> DataFusionError {
        let message = e.to_string();
        let by_position = || {
            let position = message.split("column at '").nth(1)?.split('\'').next()?.parse::<usize>().ok()?;
            self.columns.get(position)
        };
        let by_values_column = || {
            let values_column = message.split("Column '").nth(1)?.split('\'').next()?;
            self.filled_by_values.iter().find(|(from, _)| from == values_column).map(|(_, column)| column)
        };
        let column = if message.contains("has null but schema specifies non-nullable") {
            by_position()
        } else if message.contains("is declared as non-nullable but contains null values") {
            by_values_column()
        } else {
            None
        };
        match column {
            Some(column) => DataFusionError::Execution(format!(
                "INSERT INTO {}: a row has NULL in column `{column}`, which the table declares non-nullable \
                 (as its files do)",
                self.table
            )),
            None => e,
        }
    }
}

/// The column an expression passes on, looking through casts and aliases.
fn source_column(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Column(column) => Some(column.name.clone()),
        Expr::Alias(alias) => source_column(&alias.expr),
        Expr::Cast(cast) => source_column(&cast.expr),
        Expr::TryCast(cast) => source_column(&cast.expr),
        _ => None,
    }
}

/// Parameter values as the statement's placeholders expect them, where
/// the plan knows (an `INSERT`'s from its columns, a comparison's from the
/// other side): a value of another type is cast (a client's Int64 into an
/// Int32 column) or refused, naming the parameter. DataFusion binds them
/// unchecked, so a string bound to a number column would otherwise only
/// fail inside the file writer, or be compared as a string.
pub fn fit_parameters(plan: &LogicalPlan, params: ParamValues) -> Result<ParamValues> {
    let expected = plan.get_parameter_types()?;
    let fit = |name: String, mut bound: ScalarAndMetadata| -> Result<ScalarAndMetadata> {
        if let Some(Some(wanted)) = expected.get(&name)
            && bound.value.data_type() != *wanted
        {
            let given = bound.value.data_type();
            let cast = bound.value.cast_to(wanted).map_err(|e| {
                Error::Invalid(format!(
                    "parameter {name}: a {given} value does not fit its place, which takes {wanted}: {e}"
                ))
            })?;
            // A number that changes on the way (10.7 into an integer's
            // place is 10) would answer another question than the one asked.
            if given.is_numeric() && wanted.is_numeric() && cast.cast_to(&given).ok().as_ref() != Some(&bound.value) {
                return Err(Error::Invalid(format!(
                    "parameter {name}: {} does not fit its place, which takes {wanted} (it would be {cast}); \
                     cast the column in the query instead",
                    bound.value
                )));
            }
            bound.value = cast;
        }
        Ok(bound)
    };
    if let ParamValues::List(values) = &params
        && values.len() > expected.len()
    {
        // Surplus values would be dropped silently: the client meant another statement.
        return Err(Error::Invalid(format!(
            "{} values are bound, and the statement has {} placeholder(s)",
            values.len(),
            expected.len()
        )));
    }
    Ok(match params {
        ParamValues::List(values) => ParamValues::List(
            values.into_iter().enumerate().map(|(i, v)| fit(format!("${}", i + 1), v)).collect::<Result<_>>()?,
        ),
        ParamValues::Map(values) => ParamValues::Map(
            values.into_iter().map(|(k, v)| Ok((k.clone(), fit(format!("${k}"), v)?))).collect::<Result<_>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use datafusion::common::ScalarValue;

    use super::*;

    struct NoWorkers;

    #[async_trait]
    impl WorkerSource for NoWorkers {
        async fn workers(&self, _: u32) -> Result<Vec<Url>> {
            Err(Error::NoWorkers("none in this test".into()))
        }
    }

    #[tokio::test]
    async fn an_insert_of_null_into_a_non_nullable_column_names_the_column() {
        // Given a table whose file declares `name` non-nullable
        let dir = tempfile::tempdir().unwrap();
        let location = format!("{}/t/", dir.path().display());
        let engine = SqlEngine::new(EngineSettings::default()).unwrap();
        engine
            .apply_ddl(&format!("COPY (SELECT 1 AS id, 'a' AS name) TO '{location}' STORED AS PARQUET"))
            .await
            .unwrap();
        engine.apply_ddl(&format!("CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{location}'")).await.unwrap();
        // When a row with NULL there is inserted, bound as clients bind it
        let row = ParamValues::from(vec![ScalarValue::Int64(Some(2)), ScalarValue::Utf8(None)]);
        let (plan, staged) = engine.stage_write("INSERT INTO t VALUES ($1, $2)", Some(row), "test", 1).await.unwrap();
        let outcome = engine.run(plan, &NoWorkers).await.unwrap();
        let refused = outcome.stream.try_collect::<Vec<_>>().await.unwrap_err().to_string();
        staged.discard().await;
        // Then the column is named, not its position
        assert!(refused.contains("INSERT INTO t: a row has NULL in column `name`"), "{refused}");
        // And so it is for a literal NULL, also with the columns listed in another order
        for insert in ["INSERT INTO t VALUES (3, NULL)", "INSERT INTO t (name, id) VALUES (NULL, 3)"] {
            let (plan, staged) = engine.stage_write(insert, None, "test", 1).await.unwrap();
            let refused = match engine.run(plan, &NoWorkers).await {
                Ok(outcome) => outcome.stream.try_collect::<Vec<_>>().await.unwrap_err().to_string(),
                Err(e) => e.to_string(),
            };
            staged.discard().await;
            assert!(refused.contains("INSERT INTO t: a row has NULL in column `name`"), "{insert}: {refused}");
        }
    }

    #[tokio::test]
    async fn bound_parameters_are_cast_to_their_place_or_refused_by_name() {
        let engine = SqlEngine::new(EngineSettings::default()).unwrap();
        engine.apply_ddl("CREATE TABLE t (a INT, b VARCHAR)").await.unwrap();
        let insert = "INSERT INTO t VALUES ($1, $2)";
        let bound = |a: ScalarValue| Some(ParamValues::from(vec![a, ScalarValue::from("x")]));
        // An Int64, as Python and JDBC clients send integers, into an INT column
        let plan = engine.plan(insert, bound(ScalarValue::Int64(Some(7)))).await.unwrap();
        assert!(plan.display_indent().to_string().contains("Int32(7)"), "{}", plan.display_indent());
        // A string that is no number, refused before anything runs
        let refused = engine.plan(insert, bound(ScalarValue::from("seven"))).await.unwrap_err().to_string();
        assert!(refused.contains("parameter $1") && refused.contains("Int32"), "{refused}");
        // Where the plan cannot tell a type, the value binds as it came
        engine.plan("SELECT $1", Some(ParamValues::from(vec![ScalarValue::from("seven")]))).await.unwrap();
        // A number that would change is refused, one that stays the same is not
        let compare = "SELECT count(*) FROM t WHERE a < $1";
        let one = |v: f64| Some(ParamValues::from(vec![ScalarValue::Float64(Some(v))]));
        let refused = engine.plan(compare, one(10.7)).await.unwrap_err().to_string();
        assert!(refused.contains("parameter $1: 10.7 does not fit") && refused.contains("it would be 10"), "{refused}");
        engine.plan(compare, one(10.0)).await.unwrap();
        let too_big = Some(ParamValues::from(vec![ScalarValue::Int64(Some(i64::MAX))]));
        assert!(engine.plan(compare, too_big).await.is_err(), "an Int64 past Int32's range");
        // More values than placeholders is another statement than the one sent
        let three = Some(ParamValues::from(vec![ScalarValue::Int32(Some(1)); 3]));
        let refused = engine.plan(compare, three).await.unwrap_err().to_string();
        assert!(refused.contains("3 values are bound, and the statement has 1 placeholder"), "{refused}");
    }

    #[test]
    fn an_expression_as_deep_as_allowed_is_planned_on_a_runtime_threads_stack_and_a_deeper_one_refused() {
        // A generated `1 + 1 + ...` of thousands of terms used to overflow
        // a tokio worker's stack, taking the coordinator down.
        let chain = |terms: usize| format!("SELECT {} AS n", vec!["1"; terms].join(" + "));
        let answered = std::thread::Builder::new()
            .stack_size(crate::RUNTIME_THREAD_STACK)
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
                runtime.block_on(async {
                    let engine = SqlEngine::new(EngineSettings::default()).unwrap();
                    let plan = engine.plan(&chain(crate::MAX_EXPRESSION_DEPTH), None).await.unwrap();
                    let out: Vec<RecordBatch> =
                        engine.run(plan, &NoWorkers).await.unwrap().stream.try_collect().await.unwrap();
                    let refused = engine.plan(&chain(crate::MAX_EXPRESSION_DEPTH + 2), None).await.unwrap_err();
                    let n = out[0].column(0).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap().value(0);
                    (n, refused.to_string())
                })
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(answered.0, crate::MAX_EXPRESSION_DEPTH as i64);
        assert!(answered.1.contains("nests more than 2000 operators deep"), "{}", answered.1);
        // Lists and many short expressions are no depth
        let list = format!("SELECT * FROM t WHERE a IN ({})", vec!["1"; 50_000].join(", "));
        crate::statements::check_expression_depth(&list).unwrap();
        let columns = format!("SELECT {}", vec!["a + 1"; 50_000].join(", "));
        crate::statements::check_expression_depth(&columns).unwrap();
    }

    fn def(name: &str, ddl: &str) -> TableDef {
        TableDef { name: name.into(), ddl: ddl.into() }
    }

    #[tokio::test]
    async fn restore_takes_definitions_in_any_order_and_reports_the_broken() {
        let engine = SqlEngine::new(EngineSettings::default()).unwrap();
        let failed = engine
            .restore(&[
                def("b", "CREATE VIEW b AS SELECT x + 1 AS y FROM a"),
                def("a", "CREATE VIEW a AS SELECT 1 AS x"),
                def("gone", "CREATE EXTERNAL TABLE gone STORED AS PARQUET LOCATION '/nonexistent/file.parquet'"),
            ])
            .await;
        assert_eq!(failed.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["gone"]);
        let plan = engine.plan("SELECT y FROM b", None).await.unwrap();
        assert!(footprint(&plan).unwrap().locations.is_empty(), "views over no files read no files");
    }

    #[test]
    fn lost_workers_are_told_from_wrong_queries() {
        let lost = DataFusionError::External(Box::new(tonic::Status::unavailable("connection refused")));
        assert!(is_worker_loss(&lost));
        let shared = DataFusionError::Shared(Arc::new(DataFusionError::Context("ctx".into(), Box::new(lost))));
        assert!(is_worker_loss(&shared));
        assert!(!is_worker_loss(&DataFusionError::Plan("table 'x' not found".into())));
        assert!(!is_worker_loss(&DataFusionError::External(Box::new(tonic::Status::invalid_argument("bad")))));
    }
}
