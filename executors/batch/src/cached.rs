//! Cached tables: a table whose rows are held by store executors
//! ([`crate::store`]) rather than read from files. [`CachedTable`] is the
//! catalog's provider; its scan is a [`CachedScanExec`], one output
//! partition per stored partition, each read over Arrow Flight from the
//! store that holds it, with only the columns the query needs. Plans
//! that also read files run on workers, so the scan travels to them
//! through [`CacheCodec`] (registered on both sides, in the same place).
//!
//! A scan never returns part of a table: a store that is gone, or a
//! partition it no longer holds, fails the query with an error saying
//! which, and `UNCACHE TABLE` makes the table read its source again.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use arrow::array::{Array, ArrayRef};
use arrow::datatypes::DataType;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::config::ConfigOptions;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{ColumnStatistics, Statistics};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::functions_aggregate::min_max::{MaxAccumulator, MinAccumulator};
use datafusion::logical_expr::Accumulator;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType, apply_expression_roots};
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterPushdownPhase, FilterPushdownPropagation, PushedDown,
};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, RecordOutput,
};
use datafusion::physical_plan::statistics::StatisticsArgs;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use futures::stream::BoxStream;
use futures::{StreamExt, TryFutureExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::Channels;
use crate::runtime_filters::RuntimeFilters;
use crate::store::{self, PartId};

/// Where one partition of a cached table is held.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// The store's Flight URL.
    pub store: String,
    pub part: PartId,
    pub rows: u64,
    pub bytes: u64,
    /// Its file in the store's shared memory: readers on that host map it.
    pub shm: Option<String>,
    /// What a Parquet footer would say of it (rows, and per column bytes,
    /// nulls, min and max), for the planner. Kept by the driver only: a
    /// scan shipped to a worker is planned already.
    #[serde(skip)]
    pub stats: Option<Arc<Statistics>>,
    /// Its rows that a later upsert replaced (a keyed live table's):
    /// stored still, never read. The set a query planned with travels with
    /// its scan, so a later upsert does not change what it reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<Arc<DeletedRows>>,
}

/// Rows of one stored partition, by their position in it, as a bitmap.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedRows {
    words: Vec<u64>,
    count: u64,
}

impl DeletedRows {
    pub fn insert(&mut self, row: u32) {
        let (word, bit) = (row as usize / 64, row % 64);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        if self.words[word] & (1 << bit) == 0 {
            self.words[word] |= 1 << bit;
            self.count += 1;
        }
    }

    pub fn contains(&self, row: u64) -> bool {
        self.words.get(row as usize / 64).is_some_and(|w| w & (1 << (row % 64)) != 0)
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// `batch`, whose first row is row `first` of the partition, without the deleted rows.
    pub fn drop_from(&self, batch: &RecordBatch, first: u64) -> Result<RecordBatch, arrow::error::ArrowError> {
        let rows = first..first + batch.num_rows() as u64;
        let keep: arrow::array::BooleanArray = rows.map(|row| Some(!self.contains(row))).collect();
        arrow::compute::filter_record_batch(batch, &keep)
    }
}

/// `batches`, the rows of one partition in order, without its `deleted` rows.
pub(crate) fn without_deleted(
    batches: BoxStream<'static, Result<RecordBatch>>,
    deleted: Option<Arc<DeletedRows>>,
) -> BoxStream<'static, Result<RecordBatch>> {
    let Some(deleted) = deleted.filter(|d| !d.is_empty()) else { return batches };
    let mut at = 0u64;
    batches
        .map(move |batch| {
            let batch = batch?;
            at += batch.num_rows() as u64;
            Ok(deleted.drop_from(&batch, at - batch.num_rows() as u64)?)
        })
        .boxed()
}

/// How long a store may take to say which partitions it holds.
const HOLDS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The stores (by URL; "" for none) that lack some of `parts` of table `table`.
pub(crate) async fn missing_from_stores(channels: &Channels, table: &str, parts: &[Placement]) -> Vec<String> {
    let mut expected: BTreeMap<(&str, u64), Vec<u32>> = BTreeMap::new();
    for p in parts {
        expected.entry((p.store.as_str(), p.part.version)).or_default().push(p.part.partition);
    }
    // The stores are asked at once: a query waits one round trip, not one per store.
    let answers = futures::future::join_all(expected.into_iter().map(|((url, version), partitions)| async move {
        let held = match channels.flight(url) {
            Ok(channel) if !url.is_empty() => {
                // A store that accepts but never answers (stopped, swapping)
                // counts as lost: the table is read from its source again.
                tokio::time::timeout(HOLDS_WAIT, store::holds(channel, url, table, version))
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            _ => None,
        };
        let whole = held.is_some_and(|held| partitions.iter().all(|p| held.binary_search(p).is_ok()));
        (!whole).then(|| url.to_string())
    }))
    .await;
    let mut lost: Vec<String> = answers.into_iter().flatten().collect();
    lost.dedup();
    lost
}

/// Statistics of one partition's rows, exact.
pub(crate) fn partition_statistics(schema: &SchemaRef, batches: &[RecordBatch]) -> Statistics {
    let columns: Vec<ColumnStatistics> = (0..schema.fields().len())
        .map(|i| column_statistics(schema.field(i).data_type(), batches.iter().map(|b| b.column(i))))
        .collect();
    let bytes = columns.iter().map(|c| c.byte_size.get_value().copied().unwrap_or(0)).sum();
    Statistics {
        num_rows: Precision::Exact(batches.iter().map(RecordBatch::num_rows).sum()),
        total_byte_size: Precision::Exact(bytes),
        column_statistics: columns,
    }
}

fn column_statistics<'a>(data_type: &DataType, arrays: impl Iterator<Item = &'a ArrayRef> + Clone) -> ColumnStatistics {
    let nulls = arrays.clone().map(|a| a.logical_null_count()).sum();
    let bytes = arrays.clone().map(|a| store::array_bytes(a) as usize).sum();
    let bound = |mut acc: Box<dyn Accumulator>| {
        for array in arrays.clone() {
            acc.update_batch(std::slice::from_ref(array)).ok()?;
        }
        acc.evaluate().ok().filter(|v| !v.is_null())
    };
    let min = MinAccumulator::try_new(data_type).ok().and_then(|a| bound(Box::new(a)));
    let max = MaxAccumulator::try_new(data_type).ok().and_then(|a| bound(Box::new(a)));
    ColumnStatistics {
        null_count: Precision::Exact(nulls),
        min_value: min.map_or(Precision::Absent, Precision::Exact),
        max_value: max.map_or(Precision::Absent, Precision::Exact),
        byte_size: Precision::Exact(bytes),
        ..Default::default()
    }
}

/// A cached table: where its partitions are, and how it is used.
#[derive(Debug)]
pub struct CacheEntry {
    pub name: String,
    pub schema: SchemaRef,
    pub parts: Vec<Placement>,
    /// When it was cached, ms since the epoch.
    pub cached_ms: i64,
    pub usage: Usage,
    /// When it was evicted to make room, ms since the epoch; 0 while held.
    evicted_ms: AtomicI64,
    /// The table it caches, which serves again once it is uncached; none
    /// for `CACHE TABLE t AS SELECT ...`.
    pub source: Option<Arc<dyn TableProvider>>,
    /// The query of `CACHE TABLE t AS SELECT ...`, which rebuilds it.
    pub definition: Option<String>,
}

impl CacheEntry {
    pub fn new(
        name: String,
        schema: SchemaRef,
        parts: Vec<Placement>,
        source: Option<Arc<dyn TableProvider>>,
        definition: Option<String>,
    ) -> CacheEntry {
        let now = now_ms();
        CacheEntry {
            name,
            schema,
            parts,
            cached_ms: now,
            usage: Usage::new(now),
            evicted_ms: AtomicI64::new(0),
            source,
            definition,
        }
    }

    /// Whether it was evicted: its source (or its query) serves it meanwhile.
    pub fn is_evicted(&self) -> bool {
        self.evicted_ms.load(Ordering::Relaxed) != 0
    }

    pub(crate) fn mark_evicted(&self) {
        self.evicted_ms.store(now_ms().max(1), Ordering::Relaxed);
    }

    /// Bytes it holds in the stores now.
    pub fn held_bytes(&self) -> u64 {
        if self.is_evicted() { 0 } else { self.bytes() }
    }

    pub fn rows(&self) -> u64 {
        self.parts.iter().map(|p| p.rows).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.bytes).sum()
    }
}

/// How an in-memory table is used: the queries that read it, and when one last did.
#[derive(Debug)]
pub struct Usage {
    hits: AtomicU64,
    last_used_ms: AtomicI64,
}

impl Usage {
    pub(crate) fn new(now_ms: i64) -> Usage {
        Usage { hits: AtomicU64::new(0), last_used_ms: AtomicI64::new(now_ms) }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn last_used_ms(&self) -> i64 {
        self.last_used_ms.load(Ordering::Relaxed)
    }

    /// Counts a scan, and returns the scan of `parts` with only `projection`'s
    /// columns of `schema`, in `outputs` partitions.
    pub(crate) fn scan(
        &self,
        table: &str,
        schema: &SchemaRef,
        projection: Option<&Vec<usize>>,
        outputs: usize,
        parts: Vec<Placement>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.hits.fetch_add(1, Ordering::Relaxed);
        self.last_used_ms.store(now_ms(), Ordering::Relaxed);
        let projected = match projection {
            Some(columns) => Arc::new(schema.project(columns)?),
            None => schema.clone(),
        };
        let columns = schema.fields().len();
        Ok(Arc::new(CachedScanExec::new(table.to_string(), projected, projection.cloned(), columns, outputs, parts)))
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The catalog's provider for a cached table.
#[derive(Debug)]
pub struct CachedTable(pub Arc<CacheEntry>);

#[async_trait]
impl TableProvider for CachedTable {
    fn schema(&self) -> SchemaRef {
        self.0.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let parts = self.0.parts.clone();
        self.0.usage.scan(&self.0.name, &self.0.schema, projection, parts.len(), parts)
    }
}

/// Reads a cached table's partitions from their stores: output partition
/// `i` of `n` reads stored partitions `i`, `i + n`, ... in turn.
#[derive(Debug)]
pub struct CachedScanExec {
    table: String,
    /// Already projected.
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    /// Output partitions.
    outputs: usize,
    /// Columns of the table (the schema is projected).
    columns: usize,
    parts: Vec<Placement>,
    /// Filters joins and top-k sorts above set while the query runs
    /// ([`crate::runtime_filters`]); never shipped to another process.
    filters: RuntimeFilters,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl CachedScanExec {
    pub fn new(
        table: String,
        schema: SchemaRef,
        projection: Option<Vec<usize>>,
        columns: usize,
        outputs: usize,
        parts: Vec<Placement>,
    ) -> Self {
        let outputs = outputs.clamp(1, parts.len().max(1));
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(outputs),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        let filters = RuntimeFilters::default();
        let metrics = ExecutionPlanMetricsSet::new();
        CachedScanExec { table, schema, projection, outputs, columns, parts, filters, properties, metrics }
    }

    /// The stored partitions it reads.
    pub fn parts(&self) -> &[Placement] {
        &self.parts
    }

    /// The table's columns it reads (all when none).
    pub(crate) fn projection(&self) -> Option<&[usize]> {
        self.projection.as_deref()
    }

    /// The same scan over `parts`, in exactly `outputs` partitions (some
    /// empty if there are fewer parts): the per-task variants of one scan
    /// must all have as many.
    pub(crate) fn with_parts(&self, parts: Vec<Placement>, outputs: usize) -> CachedScanExec {
        let mut scan = CachedScanExec::new(
            self.table.clone(),
            self.schema.clone(),
            self.projection.clone(),
            self.columns,
            outputs,
            parts,
        );
        scan.filters = self.filters.clone();
        scan.outputs = outputs.max(1);
        scan.properties = Arc::new(
            scan.properties.as_ref().clone().with_partitioning(Partitioning::UnknownPartitioning(scan.outputs)),
        );
        scan
    }

    /// The same scan without the filters `producers` made; none if it had none of theirs.
    pub(crate) fn without_filters_of(&self, producers: &std::collections::HashSet<u64>) -> Option<CachedScanExec> {
        self.filters.without(producers).map(|filters| self.with_filters(filters))
    }

    /// The same scan, testing `predicate` before its filters.
    pub(crate) fn with_first(&self, predicate: Arc<dyn PhysicalExpr>) -> Option<CachedScanExec> {
        self.filters.with_first(predicate).map(|filters| self.with_filters(filters))
    }

    /// The same scan, applying `filters` instead of its own.
    fn with_filters(&self, filters: RuntimeFilters) -> CachedScanExec {
        let mut scan = self.with_parts(self.parts.clone(), self.outputs);
        scan.filters = filters;
        scan
    }

    /// Whether every partition it reads is mapped from this host's shared
    /// memory (no network needed to read it here).
    pub fn is_mapped_here(parts: &[Placement]) -> bool {
        parts.iter().all(|p| p.shm.as_deref().is_some_and(|file| std::path::Path::new(file).exists()))
    }

    /// Exact row counts, as a Parquet footer would give them: the planner
    /// builds hash tables on the smaller side of a join by these.
    fn statistics_of(&self, partition: Option<usize>) -> Statistics {
        let parts: Vec<&Placement> = match partition {
            Some(i) => self.parts.iter().skip(i).step_by(self.outputs).collect(),
            None => self.parts.iter().collect(),
        };
        let known: Option<Vec<Statistics>> = parts
            .iter()
            .map(|p| p.stats.as_ref().map(|s| s.as_ref().clone().project(self.projection.as_ref())))
            .collect();
        if let Some(known) = known
            && !known.is_empty()
            && let Ok(mut merged) = Statistics::try_merge_iter(&known, &self.schema)
        {
            let bytes = merged.column_statistics.iter().map(|c| c.byte_size.get_value().copied().unwrap_or(0)).sum();
            merged.total_byte_size = Precision::Exact(bytes);
            return merged;
        }
        let rows: u64 = parts.iter().map(|p| p.rows).sum();
        let bytes: u64 = parts.iter().map(|p| p.bytes).sum();
        // Bytes are kept per partition, not per column: the projected share is a guess.
        let share = self.schema.fields().len() as f64 / self.columns.max(1) as f64;
        Statistics::new_unknown(&self.schema)
            .with_num_rows(Precision::Exact(rows as usize))
            .with_total_byte_size(Precision::Inexact((bytes as f64 * share.min(1.0)) as usize))
    }

    /// One stored partition's rows: mapped from shared memory on the
    /// store's host, else over Flight.
    fn read(
        &self,
        placement: Placement,
        channels: Option<&Channels>,
    ) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        if let Some(path) = &placement.shm
            && let Some((_, batches)) = crate::shm::read_kept(std::path::Path::new(path), self.projection.as_deref())?
        {
            return Ok(without_deleted(futures::stream::iter(batches.into_iter().map(Ok)).boxed(), placement.deleted));
        }
        let channels = channels.ok_or_else(|| {
            DataFusionError::Internal("this session cannot reach stores (no channels in its config)".into())
        })?;
        let channel = channels.flight(&placement.store)?;
        let (table, projection, number) = (self.table.clone(), self.projection.clone(), placement.part.partition);
        let explain = move |e: DataFusionError| {
            DataFusionError::Execution(format!(
                "cannot read partition {number} of cached table `{table}`: {e} (UNCACHE TABLE {table} reads its source again)"
            ))
        };
        let explain_too = explain.clone();
        let deleted = placement.deleted.clone();
        let read = async move {
            store::get(channel, &placement.store, &placement.part, projection).await.map(|s| s.map_err(explain_too))
        };
        Ok(without_deleted(futures::stream::once(read.map_err(explain)).try_flatten().boxed(), deleted))
    }
}

impl DisplayAs for CachedScanExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "CachedScanExec: table={}, partitions={}", self.table, self.parts.len())?;
        if !self.filters.is_empty() {
            let filters: Vec<String> = self.filters.exprs().map(|filter| filter.to_string()).collect();
            write!(f, ", dynamic_filters=[{}]", filters.join(", "))?;
        }
        if let Some(first) = self.filters.first() {
            write!(f, ", tested_first={first}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for CachedScanExec {
    fn name(&self) -> &str {
        "CachedScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    /// Its filters, so that a join sees its dynamic filter is read here
    /// and fills it.
    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        apply_expression_roots(self.filters.exprs(), f)
    }

    /// Keeps the filters pushed after the plan is optimised (joins' and
    /// top-k sorts' dynamic filters), to apply as it reads. It reports
    /// none as applied: the plan above keeps every operator it has.
    fn handle_child_pushdown_result(
        &self,
        phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        _config: &ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        let filters: Vec<_> = child_pushdown_result.parent_filters.into_iter().map(|f| f.filter).collect();
        let propagation = FilterPushdownPropagation::with_parent_pushdown_result(vec![PushedDown::No; filters.len()]);
        if phase != FilterPushdownPhase::Post || filters.is_empty() {
            return Ok(propagation);
        }
        let scan = self.with_filters(self.filters.and(filters));
        Ok(propagation.with_updated_node(Arc::new(scan)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    /// Without its filters: a join reset to run again drops its dynamic
    /// filter, whose last values must not narrow the next run.
    fn reset_state(self: Arc<Self>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(self.with_filters(RuntimeFilters::default())))
    }

    fn with_new_children(self: Arc<Self>, _children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn partition_statistics(&self, partition: Option<usize>) -> Result<Arc<Statistics>> {
        Ok(Arc::new(self.statistics_of(partition)))
    }

    fn statistics_from_inputs(&self, _inputs: &[Arc<Statistics>], args: &StatisticsArgs) -> Result<Arc<Statistics>> {
        Ok(Arc::new(self.statistics_of(args.partition())))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let channels = context.session_config().get_extension::<Channels>();
        let reads = self
            .parts
            .iter()
            .skip(partition)
            .step_by(self.outputs)
            .map(|placement| self.read(placement.clone(), channels.as_deref()))
            .collect::<Result<Vec<_>>>()?;
        // An empty table has one partition, with nothing in it.
        let stream = futures::stream::iter(reads).flatten();
        let output = BaselineMetrics::new(&self.metrics, partition);
        let pruned = MetricBuilder::new(&self.metrics).counter("rows_pruned", partition);
        let filters = self.filters.clone();
        let stream = stream.map(move |batch| {
            let batch = batch?;
            if filters.is_empty() {
                return Ok(batch).record_output(&output);
            }
            let rows = batch.num_rows();
            let _timer = output.elapsed_compute().timer();
            let kept = filters.apply(batch)?;
            pruned.add(rows - kept.num_rows());
            Ok(kept).record_output(&output)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream)))
    }
}

/// Ships [`CachedScanExec`] to workers: its schema as Arrow IPC, the rest as JSON.
#[derive(Debug, Default)]
pub struct CacheCodec;

#[derive(Serialize, Deserialize)]
struct Wire {
    table: String,
    projection: Option<Vec<usize>>,
    columns: usize,
    outputs: usize,
    parts: Vec<Placement>,
}

impl PhysicalExtensionCodec for CacheCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        _inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let bad = |what: &str| DataFusionError::Internal(format!("a cached scan that does not decode: {what}"));
        let (length, rest) = buf.split_at_checked(4).ok_or_else(|| bad("too short"))?;
        let length = u32::from_le_bytes(length.try_into().expect("four bytes")) as usize;
        let (schema, wire) = rest.split_at_checked(length).ok_or_else(|| bad("its schema is cut short"))?;
        let schema = Schema::try_from(arrow_flight::IpcMessage(bytes::Bytes::copy_from_slice(schema)))?;
        let wire: Wire = serde_json::from_slice(wire).map_err(|e| bad(&e.to_string()))?;
        Ok(Arc::new(CachedScanExec::new(
            wire.table,
            Arc::new(schema),
            wire.projection,
            wire.columns,
            wire.outputs,
            wire.parts,
        )))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        // Other codecs are tried after this one: refuse what is not ours.
        let Some(scan) = node.downcast_ref::<CachedScanExec>() else {
            return Err(DataFusionError::Internal(format!("{} is not a cached scan", node.name())));
        };
        let options = arrow::ipc::writer::IpcWriteOptions::default();
        let schema: arrow_flight::IpcMessage = arrow_flight::SchemaAsIpc::new(&scan.schema, &options).try_into()?;
        buf.extend_from_slice(&(schema.0.len() as u32).to_le_bytes());
        buf.extend_from_slice(&schema.0);
        let wire = Wire {
            table: scan.table.clone(),
            projection: scan.projection.clone(),
            columns: scan.columns,
            outputs: scan.outputs,
            parts: scan.parts.clone(),
        };
        serde_json::to_writer(buf, &wire).map_err(|e| DataFusionError::Internal(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field};
    use datafusion::common::ScalarValue;
    use datafusion_proto::physical_plan::DefaultPhysicalProtoConverter;

    #[test]
    fn a_cached_scan_travels_whole_and_other_nodes_are_left_to_other_codecs() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, true)]));
        let parts = vec![Placement {
            store: "https://10.0.0.7:31001".into(),
            part: PartId { table: "t".into(), version: 7, partition: 3 },
            rows: 10,
            bytes: 640,
            shm: Some("/dev/shm/cohort-store-7/t-7-3.arrow".into()),
            stats: None,
            deleted: None,
        }];
        let scan = Arc::new(CachedScanExec::new("t".into(), schema.clone(), Some(vec![2]), 3, 1, parts.clone()));
        let mut buf = Vec::new();
        CacheCodec.try_encode(scan, &mut buf, &DefaultPhysicalProtoConverter {}).unwrap();
        let ctx = TaskContext::default();
        let decoded = CacheCodec.try_decode(&buf, &[], &ctx, &DefaultPhysicalProtoConverter {}).unwrap();
        let decoded = decoded.downcast_ref::<CachedScanExec>().unwrap();
        assert_eq!((decoded.table.as_str(), &decoded.schema, &decoded.projection), ("t", &schema, &Some(vec![2])));
        assert_eq!(decoded.parts, parts);
        let stats = decoded.statistics_of(None);
        assert_eq!(stats.num_rows, Precision::Exact(10), "the planner knows how many rows it reads");
        assert_eq!(stats.total_byte_size, Precision::Inexact(213), "a third of the columns, a third of the bytes");
        assert!(CacheCodec.try_decode(&buf[..3], &[], &ctx, &DefaultPhysicalProtoConverter {}).is_err());

        let other = Arc::new(datafusion::physical_plan::empty::EmptyExec::new(schema));
        assert!(CacheCodec.try_encode(other, &mut Vec::new(), &DefaultPhysicalProtoConverter {}).is_err());
    }

    /// Given a cached fact table of 100,000 keys and a cached dimension of
    /// three, when they are joined, then the join tells the scan of the
    /// facts which keys can match, and where the facts are aggregated
    /// before the join, the scan drops the rest as it reads; where the
    /// join reads the scan directly, its probe is that test already and
    /// the scan is left to read everything.
    #[tokio::test]
    async fn a_join_tells_the_scan_beneath_an_aggregation_which_keys_can_match() {
        use arrow::array::{AsArray, Int64Array};
        use arrow::datatypes::Int64Type;
        use datafusion::execution::session_state::SessionStateBuilder;
        use datafusion::physical_plan::collect;
        use datafusion::prelude::{SessionConfig, SessionContext};

        let dir = tempfile::tempdir().unwrap();
        let cache = |name: &str, keys: Vec<i64>| {
            let schema = Arc::new(Schema::new(vec![
                Field::new("k", DataType::Int64, false),
                Field::new("v", DataType::Int64, false),
            ]));
            let values: Vec<i64> = keys.iter().map(|k| k * 10).collect();
            let columns = vec![Arc::new(Int64Array::from(keys)) as ArrayRef, Arc::new(Int64Array::from(values))];
            cached_in_shm(dir.path(), name, RecordBatch::try_new(schema, columns).unwrap(), 1)
        };
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_config(SessionConfig::new().with_target_partitions(2))
            .with_physical_optimizer_rule(Arc::new(crate::runtime_filters::KeepFiltersThatSpareWork))
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.register_table("facts", cache("facts", (0..100_000).collect())).unwrap();
        ctx.register_table("dims", cache("dims", vec![5, 500, 50_000])).unwrap();

        let run = async |sql: &str| {
            let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
            let rows = collect(plan.clone(), ctx.task_ctx()).await.unwrap();
            let mut pairs: Vec<(i64, i64)> = rows
                .iter()
                .flat_map(|b| {
                    let (k, v) = (b.column(0).as_primitive::<Int64Type>(), b.column(1).as_primitive::<Int64Type>());
                    k.values().iter().copied().zip(v.values().iter().copied()).collect::<Vec<_>>()
                })
                .collect();
            pairs.sort_unstable();
            let mut pruned = None;
            datafusion::physical_plan::accept(plan.as_ref(), &mut FindScan("facts", &mut pruned)).unwrap();
            (pairs, pruned.expect("the plan scans the facts"))
        };
        let expected = [(5, 50), (500, 5_000), (50_000, 500_000)];
        let explain = async |sql: &str| {
            let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
            datafusion::physical_plan::displayable(plan.as_ref()).indent(false).to_string()
        };

        let (pairs, pruned) = run(
            "SELECT f.k, f.total FROM dims d JOIN (SELECT k, sum(v) AS total FROM facts GROUP BY k) f ON f.k = d.k",
        )
        .await;
        assert_eq!(pairs, expected);
        assert!(pruned >= 99_000, "the facts scan dropped {pruned} of 100,000 rows before the aggregation");

        let (pairs, pruned) = run("SELECT f.k, f.v FROM facts f JOIN dims d ON f.k = d.k").await;
        assert_eq!(pairs, expected);
        assert_eq!(pruned, 0, "the join probes the facts itself");

        // A comparison above the scan is tested there before the join's keys
        // (the lookups see only the rows it keeps); the filter above stays.
        let sql = "SELECT f.k, f.total FROM dims d \
                   JOIN (SELECT k, sum(v) AS total FROM facts WHERE v < 10000 GROUP BY k) f ON f.k = d.k";
        let plan = explain(sql).await;
        assert!(plan.contains("FilterExec: v@1 < 10000"), "{plan}");
        assert!(plan.contains("dynamic_filters=[") && plan.contains("tested_first=v@1 < 10000"), "{plan}");
        let (pairs, pruned) = run(sql).await;
        assert_eq!(pairs, expected[..2]);
        assert!(pruned >= 99_900, "the facts scan dropped {pruned} of 100,000 rows");
        let plan = explain("SELECT k, v FROM facts WHERE v < 10000").await;
        assert!(!plan.contains("tested_first"), "with no dynamic filter the FilterExec alone tests it: {plan}");
    }

    /// `rows` as a cached table of `partitions` partitions in shared memory
    /// under `dir`, mapped here, in batches of up to 8,192 rows, with their
    /// statistics.
    pub(crate) fn cached_in_shm(
        dir: &std::path::Path,
        name: &str,
        rows: RecordBatch,
        partitions: usize,
    ) -> Arc<CachedTable> {
        let schema = rows.schema();
        let per_part = rows.num_rows().div_ceil(partitions);
        let placements = (0..partitions)
            .map(|partition| {
                let first = (partition * per_part).min(rows.num_rows());
                let part_rows = rows.slice(first, per_part.min(rows.num_rows() - first));
                let batches: Vec<RecordBatch> = (0..part_rows.num_rows())
                    .step_by(8192)
                    .map(|start| part_rows.slice(start, (part_rows.num_rows() - start).min(8192)))
                    .collect();
                let part = PartId { table: name.into(), version: 1, partition: partition as u32 };
                let shm = crate::shm::write(dir, &part, &schema, &batches).unwrap();
                Placement {
                    store: "https://s:1".into(),
                    part,
                    rows: part_rows.num_rows() as u64,
                    bytes: part_rows.get_array_memory_size() as u64,
                    shm: Some(shm.display().to_string()),
                    stats: Some(Arc::new(partition_statistics(&schema, &batches))),
                    deleted: None,
                }
            })
            .collect();
        Arc::new(CachedTable(Arc::new(CacheEntry::new(name.into(), schema, placements, None, None))))
    }

    /// Finds a table's scan in a plan: the rows its filters dropped.
    pub(crate) struct FindScan<'a>(pub &'a str, pub &'a mut Option<usize>);

    impl datafusion::physical_plan::ExecutionPlanVisitor for FindScan<'_> {
        type Error = DataFusionError;

        fn pre_visit(&mut self, plan: &dyn ExecutionPlan) -> Result<bool> {
            if let Some(scan) = plan.downcast_ref::<CachedScanExec>()
                && scan.table == self.0
            {
                *self.1 = scan.metrics().and_then(|m| m.sum_by_name("rows_pruned")).map(|v| v.as_usize());
            }
            Ok(true)
        }
    }

    #[test]
    fn a_partition_tells_the_planner_its_rows_nulls_and_bounds_and_merges_by_projection() {
        use arrow::array::{Int64Array, StringViewArray};
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8View, true),
        ]));
        let batch = |ids: Vec<Option<i64>>, names: Vec<&str>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from(ids)), Arc::new(StringViewArray::from_iter_values(names))],
            )
            .unwrap()
        };
        let first = partition_statistics(&schema, &[batch(vec![Some(5), None], vec!["b", "a"])]);
        let second = partition_statistics(&schema, &[batch(vec![Some(9), Some(1)], vec!["c", "d"])]);
        assert_eq!(first.num_rows, Precision::Exact(2));
        assert_eq!(first.column_statistics[0].null_count, Precision::Exact(1));
        assert_eq!(first.column_statistics[1].min_value, Precision::Exact(ScalarValue::Utf8View(Some("a".into()))));
        let placement = |n: u32, stats: Statistics| Placement {
            store: "https://s:1".into(),
            part: PartId { table: "t".into(), version: 1, partition: n },
            rows: 2,
            bytes: 64,
            shm: None,
            stats: Some(Arc::new(stats)),
            deleted: None,
        };
        let projected = Arc::new(schema.project(&[0]).unwrap());
        let scan = CachedScanExec::new(
            "t".into(),
            projected,
            Some(vec![0]),
            2,
            1,
            vec![placement(0, first), placement(1, second)],
        );
        let stats = scan.statistics_of(None);
        assert_eq!(stats.num_rows, Precision::Exact(4));
        assert_eq!(stats.column_statistics.len(), 1, "only the projected column");
        assert_eq!(stats.column_statistics[0].min_value, Precision::Exact(ScalarValue::Int64(Some(1))));
        assert_eq!(stats.column_statistics[0].max_value, Precision::Exact(ScalarValue::Int64(Some(9))));
        assert_eq!(stats.total_byte_size, Precision::Exact(33), "the projected column: 4 values and a null bitmap");
    }
}
