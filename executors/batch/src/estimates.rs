//! How many rows a filter on a cached table keeps, measured on a sample
//! of the table instead of guessed.
//!
//! DataFusion picks each join's build side, and whether to broadcast it,
//! from the estimated sizes of the join's inputs. Beneath a filter it can
//! only reason about ranges of numbers and dates (interval analysis);
//! anything else, `l_shipmode IN ('MAIL', 'SHIP')`, a `LIKE`, a string
//! equality, is assumed to keep 20% of the rows. TPC-H q12's filter keeps
//! 0.5% of `lineitem` (31 K rows), so its join built the hash table on the
//! 1.5 M orders instead (656 MB of it). A cached table is in memory, mapped
//! in this process: testing the predicate on a few thousand of its rows
//! spread over its partitions costs well under a millisecond, and says what
//! share it keeps.
//!
//! [`SampledFilters`] puts that share in front of DataFusion's own
//! estimates, through its statistics registry, which the session running
//! queries on cached tables turns on ([`registry`]); [`JoinsFromInputs`]
//! carries it up through the joins above. Only estimates change: a wrong
//! one can cost time, never rows.

use std::path::Path;
use std::sync::Arc;

use arrow::array::AsArray;
use arrow::record_batch::RecordBatch;
use datafusion::common::stats::Precision;
use datafusion::common::{JoinType, Statistics};
use datafusion::error::Result;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr_common::physical_expr::is_volatile;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::operator_statistics::{
    DefaultStatisticsProvider, ExtendedStatistics, FilterStatisticsProvider, PassthroughStatisticsProvider,
    ProjectionStatisticsProvider, StatisticsProvider, StatisticsRegistry, StatisticsResult,
};
use datafusion::physical_plan::statistics::StatisticsArgs;

use crate::cached::CachedScanExec;

/// Partitions a sample is drawn from, spread over the table.
const SAMPLE_PARTITIONS: usize = 8;
/// Slices of the sample, spread over those partitions' batches.
const SAMPLE_SLICES: usize = 16;
/// Rows in a slice.
const SLICE_ROWS: usize = 512;

/// [`SampledFilters`], carried up through projections, operators that keep
/// every row, and hash joins ([`JoinsFromInputs`]); every other operator
/// estimates as it always does. (DataFusion's own join and aggregate
/// providers guess distinct counts from value ranges: they turned q21's
/// semi join around to build on 6 M rows.)
pub(crate) fn registry() -> StatisticsRegistry {
    StatisticsRegistry::with_providers(vec![
        Arc::new(SampledFilters),
        Arc::new(JoinsFromInputs),
        Arc::new(ProjectionStatisticsProvider),
        Arc::new(PassthroughStatisticsProvider),
        Arc::new(DefaultStatisticsProvider),
    ])
}

/// A hash join estimated as DataFusion does, but from its inputs as the
/// registry estimated them (so a sampled filter counts above the join it
/// feeds too), and with each column it returns as wide per row as in its
/// input. DataFusion carries an input column's bytes over whatever the
/// rows, and a semi or anti join above sums them: q21's semi join, which
/// keeps 73 K rows, was taken for its inputs' whole columns, and the anti
/// join above it built its hash table on 3.8 M rows of `lineitem` instead
/// of on those 73 K.
#[derive(Debug)]
pub(crate) struct JoinsFromInputs;

impl StatisticsProvider for JoinsFromInputs {
    fn compute_statistics(
        &self,
        plan: &dyn ExecutionPlan,
        child_stats: &[ExtendedStatistics],
    ) -> Result<StatisticsResult> {
        let Some(join) = plan.downcast_ref::<HashJoinExec>() else { return Ok(StatisticsResult::Delegate) };
        let [left, right] = child_stats else { return Ok(StatisticsResult::Delegate) };
        let inputs = [left.base_arc().clone(), right.base_arc().clone()];
        let mut stats = Arc::unwrap_or_clone(plan.statistics_from_inputs(&inputs, &StatisticsArgs::new())?);
        // Semi and anti joins scale the columns of the side they return already.
        let both_sides =
            matches!(join.join_type(), JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full);
        if let (true, Some(&rows)) = (both_sides, stats.num_rows.get_value()) {
            let widths: Vec<Option<f64>> = [left.base(), right.base()].into_iter().flat_map(widths).collect();
            let widths: Vec<Option<f64>> = match &join.projection {
                Some(columns) => columns.iter().map(|&i| widths.get(i).copied().flatten()).collect(),
                None => widths,
            };
            for (column, width) in stats.column_statistics.iter_mut().zip(widths) {
                column.byte_size =
                    width.map_or(Precision::Absent, |width| Precision::Inexact((width * rows as f64) as usize));
            }
            // The join's own total stays unknown, as DataFusion leaves it: a
            // total near the broadcast threshold turned q10's join of 57 K
            // orders to `lineitem` from one hash table into a shuffle of both.
        }
        Ok(StatisticsResult::Computed(ExtendedStatistics::new(stats)))
    }
}

/// Bytes per row of each of `stats`' columns, where known.
fn widths(stats: &Statistics) -> impl Iterator<Item = Option<f64>> + '_ {
    let rows = stats.num_rows.get_value().copied().filter(|&rows| rows > 0);
    stats.column_statistics.iter().map(move |column| Some(*column.byte_size.get_value()? as f64 / rows? as f64))
}

/// Estimates a filter right above a cached scan by testing its predicate
/// on a sample of the scan's rows (see the module's documentation); leaves
/// every other operator, and a scan not mapped here, to the next provider.
#[derive(Debug)]
pub(crate) struct SampledFilters;

impl StatisticsProvider for SampledFilters {
    fn compute_statistics(
        &self,
        plan: &dyn ExecutionPlan,
        child_stats: &[ExtendedStatistics],
    ) -> Result<StatisticsResult> {
        let Some(filter) = plan.downcast_ref::<FilterExec>() else { return Ok(StatisticsResult::Delegate) };
        // Plans given to the planner's later rules have the scan wrapped to yield to tokio.
        let input = filter.input();
        let scan = input.downcast_ref::<CooperativeExec>().map_or(input, |cooperative| cooperative.input());
        let Some(scan) = scan.downcast_ref::<CachedScanExec>() else { return Ok(StatisticsResult::Delegate) };
        let Some(share) = share_kept(scan, filter.predicate()) else { return Ok(StatisticsResult::Delegate) };
        let input_rows = child_stats.first().and_then(|input| input.base().num_rows.get_value().copied());
        let StatisticsResult::Computed(guessed) = FilterStatisticsProvider.compute_statistics(plan, child_stats)?
        else {
            return Ok(StatisticsResult::Delegate);
        };
        let Some(input_rows) = input_rows else { return Ok(StatisticsResult::Computed(guessed)) };
        let rows = (input_rows as f64 * share).round() as usize;
        Ok(StatisticsResult::Computed(ExtendedStatistics::new(with_rows(guessed.base(), rows))))
    }
}

/// What share of `scan`'s rows `predicate` keeps, measured on up to
/// [`SAMPLE_SLICES`] × [`SLICE_ROWS`] of them; none if its partitions are
/// not all mapped here, it is empty, or the predicate is volatile or
/// cannot be evaluated. A sample in which no row passes counts half a row,
/// so a selective filter is never estimated at nothing.
fn share_kept(scan: &CachedScanExec, predicate: &Arc<dyn PhysicalExpr>) -> Option<f64> {
    if is_volatile(predicate) || !CachedScanExec::is_mapped_here(scan.parts()) {
        return None;
    }
    let parts = scan.parts();
    let batches: Vec<RecordBatch> = parts
        .iter()
        .step_by(parts.len().div_ceil(SAMPLE_PARTITIONS).max(1))
        .filter_map(|part| {
            let path = part.shm.as_deref()?;
            crate::shm::read_kept(Path::new(path), scan.projection()).ok().flatten()
        })
        .flat_map(|(_, batches)| batches)
        .filter(|batch| batch.num_rows() > 0)
        .collect();
    let (mut tested, mut kept) = (0usize, 0usize);
    for batch in batches.iter().step_by(batches.len().div_ceil(SAMPLE_SLICES).max(1)) {
        let len = batch.num_rows().min(SLICE_ROWS);
        let slice = batch.slice((batch.num_rows() - len) / 2, len);
        let verdict = predicate.evaluate(&slice).ok()?.into_array(len).ok()?;
        // A null verdict drops the row, as `FilterExec` does.
        kept += verdict.as_boolean_opt()?.true_count();
        tested += len;
    }
    (tested > 0).then(|| (kept as f64).max(0.5) / tested as f64)
}

/// `stats` for `rows` rows instead of the rows it estimated: sizes scaled
/// alike, counts capped at `rows`; bounds kept.
fn with_rows(stats: &Statistics, rows: usize) -> Statistics {
    let scale = |size: &Precision<usize>, from: usize| {
        size.get_value().map_or(Precision::Absent, |&bytes| {
            Precision::Inexact(if from == 0 { 0 } else { (bytes as f64 * rows as f64 / from as f64) as usize })
        })
    };
    let from = stats.num_rows.get_value().copied().unwrap_or(0);
    let cap =
        |count: &Precision<usize>| count.get_value().map_or(Precision::Absent, |&n| Precision::Inexact(n.min(rows)));
    let mut scaled = stats.clone().to_inexact();
    scaled.num_rows = Precision::Inexact(rows);
    scaled.total_byte_size = scale(&stats.total_byte_size, from);
    for column in &mut scaled.column_statistics {
        column.byte_size = scale(&column.byte_size, from);
        column.null_count = cap(&column.null_count);
        column.distinct_count = cap(&column.distinct_count);
    }
    scaled
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cached::CachedTable;
    use crate::cached::tests::cached_in_shm;
    use arrow::array::{ArrayRef, Int64Array, StringViewArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// 100,000 shipments in 4 partitions, 1% of them by mail.
    fn shipments(dir: &Path) -> Arc<CachedTable> {
        let keys: Vec<i64> = (0..100_000).collect();
        let modes = StringViewArray::from_iter_values(keys.iter().map(|k| if k % 100 == 7 { "MAIL" } else { "TRUCK" }));
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("mode", DataType::Utf8View, false),
        ]));
        let columns = vec![Arc::new(Int64Array::from(keys)) as ArrayRef, Arc::new(modes)];
        cached_in_shm(dir, "shipments", RecordBatch::try_new(schema, columns).unwrap(), 4)
    }

    /// 10,000 orders, keyed as the first 10,000 shipments.
    fn orders(dir: &Path) -> Arc<CachedTable> {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let keys = Arc::new(Int64Array::from((0..10_000).collect::<Vec<i64>>())) as ArrayRef;
        cached_in_shm(dir, "orders", RecordBatch::try_new(schema, vec![keys]).unwrap(), 1)
    }

    /// A session estimating as the engine's does for cached tables, or
    /// (`sampled` false) as DataFusion does by default.
    fn context(dir: &Path, sampled: bool) -> SessionContext {
        let mut config = SessionConfig::new().with_target_partitions(2);
        config.options_mut().optimizer.use_statistics_registry = sampled;
        let builder = SessionStateBuilder::new().with_default_features().with_config(config);
        let builder = if sampled { builder.with_statistics_registry(registry()) } else { builder };
        let ctx = SessionContext::new_with_state(builder.build());
        ctx.register_table("shipments", shipments(dir)).unwrap();
        ctx.register_table("orders", orders(dir)).unwrap();
        ctx
    }

    async fn plan(ctx: &SessionContext, sql: &str) -> Arc<dyn ExecutionPlan> {
        ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap()
    }

    fn find<T: ExecutionPlan + 'static>(plan: &Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
        fn search<T: ExecutionPlan + 'static>(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
            if plan.is::<T>() { Some(plan.clone()) } else { plan.children().into_iter().find_map(search::<T>) }
        }
        search::<T>(plan).unwrap_or_else(|| {
            panic!("no {} in\n{}", std::any::type_name::<T>(), displayable(plan.as_ref()).indent(false))
        })
    }

    fn rows(stats: &ExtendedStatistics) -> usize {
        *stats.base().num_rows.get_value().expect("an estimate")
    }

    /// Given 100,000 cached shipments of which 1% go by mail, when a filter
    /// on the mode is estimated, then the estimate comes from the rows
    /// (about 1,000), not DataFusion's 20% for what it cannot analyse; a
    /// filter no sampled row passes is estimated at a few rows, never
    /// none; a volatile one is left to DataFusion.
    #[tokio::test]
    async fn a_filter_on_a_cached_table_is_estimated_on_a_sample_of_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path(), true);
        let filter = find::<FilterExec>(&plan(&ctx, "SELECT k FROM shipments WHERE mode = 'MAIL'").await);
        let sampled = rows(&registry().compute(filter.as_ref()).unwrap());
        assert!((500..=2_000).contains(&sampled), "estimated {sampled} of the 1,000 rows kept");
        assert_eq!(rows(&StatisticsRegistry::new().compute(filter.as_ref()).unwrap()), 20_000, "DataFusion's guess");

        let filter = find::<FilterExec>(&plan(&ctx, "SELECT k FROM shipments WHERE mode = 'SHIP'").await);
        let sampled = rows(&registry().compute(filter.as_ref()).unwrap());
        assert!((1..100).contains(&sampled), "estimated {sampled} rows for a filter keeping none");

        let filter = find::<FilterExec>(&plan(&ctx, "SELECT k FROM shipments WHERE random() < 0.01").await);
        let input = registry().compute(filter.children()[0].as_ref()).unwrap();
        let verdict = SampledFilters.compute_statistics(filter.as_ref(), &[input]).unwrap();
        assert!(matches!(verdict, StatisticsResult::Delegate), "a volatile predicate is not sampled");
    }

    /// Given the 1,000 mail shipments joined to 10,000 orders, when the
    /// join is estimated, then it returns about 1,000 rows, and its columns
    /// as many bytes a row as in the inputs: not the inputs' whole columns
    /// (a semi or anti join above sums them).
    #[tokio::test]
    async fn a_join_is_estimated_as_wide_as_its_columns_for_the_rows_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path(), true);
        let sql = "SELECT o.k, s.mode FROM orders o JOIN shipments s ON o.k = s.k WHERE s.mode = 'MAIL'";
        let join = find::<HashJoinExec>(&plan(&ctx, sql).await);
        let estimate = registry().compute(join.as_ref()).unwrap();
        let rows = rows(&estimate);
        assert!((500..=2_000).contains(&rows), "estimated {rows} rows of the 100 the join returns");
        let columns = &estimate.base().column_statistics;
        let bytes: usize = columns.iter().map(|column| *column.byte_size.get_value().expect("a column's bytes")).sum();
        // 8 bytes of key, a 16-byte view and its string (under 12 bytes: inline).
        assert!(bytes <= rows * 24 && bytes >= rows * 8, "{bytes} bytes for {rows} rows");
    }

    /// Given 10,000 cached orders and 100,000 shipments of which 1% go by
    /// mail, when the mail shipments are joined to the orders, then the
    /// join builds its hash table on the 1,000 shipments the filter keeps;
    /// guessing 20,000 for them, DataFusion builds it on the orders. Both
    /// answer the same.
    #[tokio::test]
    async fn given_a_filter_keeping_one_percent_the_join_builds_on_the_rows_it_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let sql = "SELECT count(*) FROM orders o JOIN shipments s ON o.k = s.k WHERE s.mode = 'MAIL'";
        for (sampled, build_side) in [(true, "table=shipments"), (false, "table=orders")] {
            let ctx = context(dir.path(), sampled);
            let plan = plan(&ctx, sql).await;
            let join = find::<HashJoinExec>(&plan);
            let join = join.downcast_ref::<HashJoinExec>().expect("a hash join");
            let left = displayable(join.left().as_ref()).indent(false).to_string();
            assert!(left.contains(build_side), "sampled: {sampled}: the build side is\n{left}");
            let counted = datafusion::physical_plan::collect(plan, ctx.task_ctx()).await.unwrap();
            let count = counted[0].column(0).as_primitive::<arrow::datatypes::Int64Type>().value(0);
            assert_eq!(count, 100, "sampled: {sampled}");
        }
    }
}
