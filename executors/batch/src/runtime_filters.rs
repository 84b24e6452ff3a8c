//! Filters that joins and top-k sorts hand a cached scan while a query
//! runs (DataFusion's dynamic filters), applied row by row as it reads.
//!
//! A hash join that has built its table tells the scan on its probe side
//! which keys can match (their bounds, and the keys themselves or the
//! hash table); TPC-H q18's semi join holds 57 order keys and the scan of
//! `orders` beneath it reads 1.5 million. Rows the filter rules out are
//! dropped before they are hashed, shuffled and probed. A Parquet scan
//! uses the same filters to skip files and row groups; rows already in
//! memory are cheap enough to test one by one.
//!
//! A filter that keeps most rows costs more than it saves (a lookup per
//! row against little work spared above), so the scan measures what each
//! filter keeps, across all its streams, and stops applying one that kept
//! more than [`USELESS_ABOVE`] of the first [`TRIAL_ROWS`] rows it
//! tested, until the filter changes (a top-k's tightens as it goes).
//!
//! Testing a row against a join's hash table costs about what probing it
//! does, so a filter pays only where the rows it drops would otherwise
//! meet costlier work on their way up to its join: a hash repartition,
//! an aggregation, a sort, a hash table being built. q18's filters sit
//! beneath a repartition, q17's beneath an aggregation. Where the rows
//! would only pass filters, projections or other joins' probes (which
//! drop them as cheaply, and often first), the filter is taken off the
//! scan ([`KeepFiltersThatSpareWork`]): in q4 and q8 such filters
//! cost more than they saved.
//!
//! The filters only ever narrow what the scan returns to rows their
//! producer would discard anyway, so the plan above stays as it is and
//! answers never change; a scan shipped to another process goes without
//! them (they point into this process's operators).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::compute::{filter_record_batch, prep_null_mask_filter};
use arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_expr_common::physical_expr::{snapshot_generation, snapshot_physical_expr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::ChildrenPropertiesMode;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning, ReplaceChildrenOptions};

use crate::cached::CachedScanExec;

/// Rows a filter is tested on before it may be judged useless.
const TRIAL_ROWS: u64 = 65_536;

/// The share of rows above which a filter is not worth testing.
const USELESS_ABOVE: f64 = 0.8;

/// One scan's filters and what each has kept so far, shared by its streams.
#[derive(Clone, Debug, Default)]
pub(crate) struct RuntimeFilters {
    watched: Arc<[Watched]>,
}

#[derive(Debug)]
struct Watched {
    filter: Arc<dyn PhysicalExpr>,
    trial: Mutex<Trial>,
}

#[derive(Debug, Default)]
struct Trial {
    /// The filter's generation these counts are of: a new one starts over.
    generation: u64,
    tested: u64,
    kept: u64,
    useless: bool,
}

impl RuntimeFilters {
    pub(crate) fn new(filters: impl IntoIterator<Item = Arc<dyn PhysicalExpr>>) -> RuntimeFilters {
        let watched = filters.into_iter().map(|filter| Watched { filter, trial: Mutex::default() }).collect();
        RuntimeFilters { watched }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.watched.is_empty()
    }

    pub(crate) fn exprs(&self) -> impl Iterator<Item = &Arc<dyn PhysicalExpr>> {
        self.watched.iter().map(|w| &w.filter)
    }

    /// The same filters but those produced by `producers` (by expression
    /// id); none if there were none of those.
    pub(crate) fn without(&self, producers: &HashSet<u64>) -> Option<RuntimeFilters> {
        let produced_by = |filter: &Arc<dyn PhysicalExpr>| {
            let mut found = false;
            let _ = filter.apply(|e| {
                found = e.expression_id().is_some_and(|id| producers.contains(&id));
                Ok(if found { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
            });
            found
        };
        if !self.exprs().any(produced_by) {
            return None;
        }
        Some(RuntimeFilters::new(self.exprs().filter(|f| !produced_by(f)).cloned()))
    }

    /// `batch` without the rows the filters rule out now.
    pub(crate) fn apply(&self, mut batch: RecordBatch) -> Result<RecordBatch> {
        for watched in self.watched.iter() {
            if batch.num_rows() == 0 {
                break;
            }
            let generation = snapshot_generation(&watched.filter);
            {
                let mut trial = watched.trial.lock().expect("trial");
                if trial.generation != generation {
                    *trial = Trial { generation, ..Trial::default() };
                }
                if trial.useless {
                    continue;
                }
            }
            let now = match snapshot_physical_expr(watched.filter.clone()) {
                Ok(now) if is_true(&now) => continue, // its producer has not set it yet
                Ok(now) => now,
                Err(e) => {
                    watched.give_up(&e);
                    continue;
                }
            };
            let mask = match evaluate(&now, &batch) {
                Ok(mask) => mask,
                Err(e) => {
                    watched.give_up(&e);
                    continue;
                }
            };
            let kept = mask.true_count() as u64;
            {
                let mut trial = watched.trial.lock().expect("trial");
                if trial.generation == generation && !trial.useless {
                    trial.tested += batch.num_rows() as u64;
                    trial.kept += kept;
                    if trial.tested >= TRIAL_ROWS && trial.kept as f64 > trial.tested as f64 * USELESS_ABOVE {
                        tracing::debug!(filter = %now, tested = trial.tested, kept = trial.kept, "dynamic filter dropped: it keeps most rows");
                        trial.useless = true;
                    }
                }
            }
            if kept < batch.num_rows() as u64 {
                batch = filter_record_batch(&batch, &mask)?;
            }
        }
        Ok(batch)
    }
}

impl Watched {
    /// A filter is only an optimisation: the operators above still decide,
    /// so one that fails is no longer applied, and the query goes on.
    fn give_up(&self, error: &DataFusionError) {
        tracing::warn!(filter = %self.filter, %error, "dynamic filter not applied");
        self.trial.lock().expect("trial").useless = true;
    }
}

/// Takes off cached scans the dynamic filters that spare no costly work:
/// see the module's documentation. Runs after DataFusion's own rules, the
/// last of which pushes the dynamic filters.
#[derive(Debug, Default)]
pub(crate) struct KeepFiltersThatSpareWork;

impl PhysicalOptimizerRule for KeepFiltersThatSpareWork {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        without_filters_sparing_nothing(plan, &HashMap::new())
    }

    fn name(&self) -> &str {
        "keep_filters_that_spare_work"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `plan` without, on its scans, the filters that would spare no costly
/// work. `producers` holds the filters of the operators above `plan`, each
/// with whether costly work lies between its producer and here.
fn without_filters_sparing_nothing(
    plan: Arc<dyn ExecutionPlan>,
    producers: &HashMap<u64, bool>,
) -> Result<Arc<dyn ExecutionPlan>> {
    if let Some(scan) = plan.downcast_ref::<CachedScanExec>() {
        let sparing_nothing: HashSet<u64> =
            producers.iter().filter(|(_, spares)| !**spares).map(|(id, _)| *id).collect();
        return Ok(scan.without_filters_of(&sparing_nothing).map_or(plan, |scan| Arc::new(scan) as _));
    }
    let is_hash_join = plan.is::<HashJoinExec>();
    let costly = !is_hash_join && !passes_rows_through(plan.as_ref());
    let produced: Vec<u64> =
        plan.dynamic_expressions_produced().iter().filter_map(|filter| filter.expression_id()).collect();
    let children: Vec<Arc<dyn ExecutionPlan>> = plan.children().into_iter().cloned().collect();
    let mut changed = false;
    let mut new_children = Vec::with_capacity(children.len());
    for (i, child) in children.into_iter().enumerate() {
        // A hash join builds its table from its first child: rows dropped
        // there are never hashed and stored; its probe is as cheap as a filter.
        let spares = costly || (is_hash_join && i == 0);
        let mut below: HashMap<u64, bool> = producers.iter().map(|(id, spared)| (*id, *spared || spares)).collect();
        below.extend(produced.iter().map(|id| (*id, false)));
        let new_child = without_filters_sparing_nothing(child.clone(), &below)?;
        changed |= !Arc::ptr_eq(&child, &new_child);
        new_children.push(new_child);
    }
    if changed {
        plan.replace_children(new_children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep))
    } else {
        Ok(plan)
    }
}

/// Whether an operator hands its input's rows up without work per row that
/// a filter beneath it would spare (a filter's own test is cheap beside a
/// hash-table lookup; a round-robin repartition moves whole batches).
fn passes_rows_through(plan: &dyn ExecutionPlan) -> bool {
    if let Some(repartition) = plan.downcast_ref::<RepartitionExec>() {
        return matches!(repartition.partitioning(), Partitioning::RoundRobinBatch(_));
    }
    plan.is::<FilterExec>()
        || plan.is::<ProjectionExec>()
        || plan.is::<CoalescePartitionsExec>()
        || plan.is::<CooperativeExec>()
}

/// Which rows of `batch` pass `filter` (null counts as not passing).
fn evaluate(filter: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<BooleanArray> {
    let mask = filter.evaluate(batch)?.into_array(batch.num_rows())?;
    let mask = mask.as_boolean_opt().ok_or_else(|| {
        DataFusionError::Internal(format!("a dynamic filter gave {} values, not booleans", mask.data_type()))
    })?;
    Ok(if mask.null_count() > 0 { prep_null_mask_filter(mask) } else { mask.clone() })
}

fn is_true(expr: &Arc<dyn PhysicalExpr>) -> bool {
    expr.downcast_ref::<Literal>().is_some_and(|literal| literal.value() == &ScalarValue::Boolean(Some(true)))
}

#[cfg(test)]
mod tests {
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::logical_expr::Operator;
    use datafusion::physical_expr::expressions::{BinaryExpr, DynamicFilterPhysicalExpr, col, lit};

    use super::*;

    fn batch(values: impl IntoIterator<Item = i64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(values))]).unwrap()
    }

    fn keys(batch: &RecordBatch) -> Vec<i64> {
        batch.column(0).as_primitive::<arrow::datatypes::Int64Type>().values().to_vec()
    }

    fn below(limit: i64) -> Arc<dyn PhysicalExpr> {
        let schema = batch([]).schema();
        Arc::new(BinaryExpr::new(col("k", &schema).unwrap(), Operator::Lt, lit(limit)))
    }

    #[test]
    fn rows_pass_until_the_producer_sets_the_filter_then_only_matching_rows_do() {
        let schema = batch([]).schema();
        let dynamic = Arc::new(DynamicFilterPhysicalExpr::new(vec![col("k", &schema).unwrap()], lit(true)));
        let filters = RuntimeFilters::new([dynamic.clone() as Arc<dyn PhysicalExpr>]);
        assert_eq!(keys(&filters.apply(batch(0..10)).unwrap()), (0..10).collect::<Vec<_>>());

        dynamic.update(below(3)).unwrap();
        assert_eq!(keys(&filters.apply(batch(0..10)).unwrap()), [0, 1, 2]);
    }

    #[test]
    fn a_filter_that_keeps_nearly_everything_stops_being_tested_until_it_changes() {
        let schema = batch([]).schema();
        let dynamic = Arc::new(DynamicFilterPhysicalExpr::new(vec![col("k", &schema).unwrap()], lit(true)));
        let filters = RuntimeFilters::new([dynamic.clone() as Arc<dyn PhysicalExpr>]);
        // Keeps nine rows in ten; the scan's other stream shares the verdict.
        let other_stream = filters.clone();
        let all = 0..TRIAL_ROWS as i64;
        dynamic.update(below(TRIAL_ROWS as i64 * 9 / 10)).unwrap();
        assert_eq!(filters.apply(batch(all.clone())).unwrap().num_rows() as u64, TRIAL_ROWS * 9 / 10);
        assert_eq!(
            other_stream.apply(batch(all.clone())).unwrap().num_rows() as u64,
            TRIAL_ROWS,
            "judged useless: the scan passes what the join above drops anyway"
        );

        // A top-k's filter tightens: tested again.
        dynamic.update(below(5)).unwrap();
        assert_eq!(keys(&filters.apply(batch(all)).unwrap()), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_filter_that_cannot_be_evaluated_is_not_applied() {
        let schema = batch([]).schema();
        // Compares the key with a string: an error when evaluated.
        let broken: Arc<dyn PhysicalExpr> =
            Arc::new(BinaryExpr::new(col("k", &schema).unwrap(), Operator::Lt, lit("five")));
        let filters = RuntimeFilters::new([broken, below(5)]);
        assert_eq!(keys(&filters.apply(batch(0..10)).unwrap()), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_null_from_the_filter_drops_the_row() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
        let with_null =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![Some(1), None, Some(7)]))])
                .unwrap();
        let filters = RuntimeFilters::new([below(5)]);
        assert_eq!(keys(&filters.apply(with_null).unwrap()), [1]);
    }
}
