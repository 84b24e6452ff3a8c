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
//! A static predicate right above the scan (TPC-H q7's `l_shipdate`
//! range, which keeps 30% of `lineitem`) is tested first, on the scan,
//! whenever a filter is set: a comparison costs a fraction of a
//! hash-table lookup, so the lookups only see the rows it kept. The
//! `FilterExec` stays where it is and tests those rows again, all passing.
//!
//! The filters only ever narrow what the scan returns to rows their
//! producer would discard anyway, so the plan above stays as it is and
//! answers never change; a scan shipped to another process goes without
//! them (they point into this process's operators).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::compute::{filter_record_batch, prep_null_mask_filter};
use arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, CaseExpr, InListExpr, Literal};
use datafusion::physical_expr_common::physical_expr::{is_volatile, snapshot_generation, snapshot_physical_expr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::ChildrenPropertiesMode;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{HashExpr, HashJoinExec};
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
    /// The predicate of the `FilterExec` right above the scan, tested
    /// before the filters whenever one of them is (see the module's
    /// documentation).
    first: Option<Arc<First>>,
}

#[derive(Debug)]
struct First {
    predicate: Arc<dyn PhysicalExpr>,
    /// It failed once (`1 / x > 0` at a zero): the `FilterExec` above,
    /// which tests it anyway, reports that as the query's error.
    failed: AtomicBool,
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
    /// The filter as this generation set it, [`simplified`].
    now: Option<Arc<dyn PhysicalExpr>>,
}

impl RuntimeFilters {
    pub(crate) fn new(filters: impl IntoIterator<Item = Arc<dyn PhysicalExpr>>) -> RuntimeFilters {
        let watched = filters.into_iter().map(|filter| Watched { filter, trial: Mutex::default() }).collect();
        RuntimeFilters { watched, first: None }
    }

    /// The predicate tested before the filters.
    pub(crate) fn first(&self) -> Option<&Arc<dyn PhysicalExpr>> {
        self.first.as_ref().map(|first| &first.predicate)
    }

    /// These filters and `more`.
    pub(crate) fn and(&self, more: impl IntoIterator<Item = Arc<dyn PhysicalExpr>>) -> RuntimeFilters {
        RuntimeFilters { first: self.first.clone(), ..RuntimeFilters::new(self.exprs().cloned().chain(more)) }
    }

    /// The same filters, with `predicate` tested before them; none when
    /// testing it twice could change the answer (`random() < 0.5`).
    pub(crate) fn with_first(&self, predicate: Arc<dyn PhysicalExpr>) -> Option<RuntimeFilters> {
        if self.is_empty() || is_volatile(&predicate) {
            return None;
        }
        let first = Some(Arc::new(First { predicate, failed: AtomicBool::new(false) }));
        Some(RuntimeFilters { watched: self.watched.clone(), first })
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
        let kept = RuntimeFilters::new(self.exprs().filter(|f| !produced_by(f)).cloned());
        Some(RuntimeFilters { first: self.first.clone().filter(|_| !kept.is_empty()), ..kept })
    }

    /// `batch` without the rows the filters rule out now.
    pub(crate) fn apply(&self, mut batch: RecordBatch) -> Result<RecordBatch> {
        let mut first = self.first.as_deref();
        for watched in self.watched.iter() {
            if batch.num_rows() == 0 {
                break;
            }
            let generation = snapshot_generation(&watched.filter);
            let known = {
                let mut trial = watched.trial.lock().expect("trial");
                if trial.generation != generation {
                    *trial = Trial { generation, ..Trial::default() };
                }
                if trial.useless {
                    continue;
                }
                trial.now.clone()
            };
            let now = match known {
                Some(now) => now,
                None => match snapshot_physical_expr(watched.filter.clone()) {
                    Ok(now) => {
                        let now = simplified(now, &batch.schema());
                        let mut trial = watched.trial.lock().expect("trial");
                        if trial.generation == generation {
                            trial.now = Some(now.clone());
                        }
                        now
                    }
                    Err(e) => {
                        watched.give_up(&e);
                        continue;
                    }
                },
            };
            if is_true(&now) {
                continue; // its producer has not set it yet
            }
            if let Some(first) = first.take() {
                batch = first.apply(batch)?;
                if batch.num_rows() == 0 {
                    break;
                }
            }
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

impl First {
    fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
        if self.failed.load(Ordering::Relaxed) {
            return Ok(batch);
        }
        match evaluate(&self.predicate, &batch) {
            Ok(mask) if mask.true_count() < batch.num_rows() => Ok(filter_record_batch(&batch, &mask)?),
            Ok(_) => Ok(batch),
            Err(error) => {
                tracing::debug!(predicate = %self.predicate, %error, "predicate not tested before the dynamic filters");
                self.failed.store(true, Ordering::Relaxed);
                Ok(batch)
            }
        }
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
    if let Some(filter) = plan.downcast_ref::<FilterExec>()
        && let Some(child) = with_first_beneath(&new_children[0], filter.predicate())?
    {
        new_children[0] = child;
        changed = true;
    }
    if changed {
        plan.replace_children(new_children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep))
    } else {
        Ok(plan)
    }
}

/// `plan` with `predicate` tested first on the cached scan whose rows it
/// hands up as they are (through round-robin repartitions), if any.
fn with_first_beneath(
    plan: &Arc<dyn ExecutionPlan>,
    predicate: &Arc<dyn PhysicalExpr>,
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    if let Some(scan) = plan.downcast_ref::<CachedScanExec>() {
        return Ok(scan.with_first(predicate.clone()).map(|scan| Arc::new(scan) as _));
    }
    let round_robin = plan
        .downcast_ref::<RepartitionExec>()
        .is_some_and(|repartition| matches!(repartition.partitioning(), Partitioning::RoundRobinBatch(_)));
    let &[child] = plan.children().as_slice() else { return Ok(None) };
    if !(round_robin || plan.is::<CooperativeExec>()) {
        return Ok(None);
    }
    match with_first_beneath(child, predicate)? {
        Some(child) => Ok(Some(
            plan.clone().replace_children(vec![child], ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep))?,
        )),
        None => Ok(None),
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

/// A hash-partitioned join's filter is `CASE hash(key) % n WHEN i THEN
/// (key within partition i's bounds AND key IN partition i's keys) ...
/// ELSE false END`: it hashes every row, splits the batch by partition and
/// tests each part apart. A key can only be among the keys of the
/// partition it hashes to, so where every partition lists its keys the
/// CASE keeps the same rows as one `IN` over all of them, which DataFusion
/// tests without hashing or splitting. Any other filter (a partition that
/// sent its hash table, not its keys) is left as it is.
fn simplified(filter: Arc<dyn PhysicalExpr>, schema: &arrow::datatypes::Schema) -> Arc<dyn PhysicalExpr> {
    one_in_list(&filter, schema).unwrap_or(filter)
}

fn one_in_list(filter: &Arc<dyn PhysicalExpr>, schema: &arrow::datatypes::Schema) -> Option<Arc<dyn PhysicalExpr>> {
    let case = filter.downcast_ref::<CaseExpr>()?;
    let partition = case.expr()?.downcast_ref::<BinaryExpr>()?;
    if *partition.op() != Operator::Modulo
        || !partition.left().is::<HashExpr>()
        || !case.else_expr().is_some_and(is_false)
    {
        return None;
    }
    let mut key = None;
    let mut values = Vec::new();
    for (_, then) in case.when_then_expr() {
        if is_false(then) {
            continue;
        }
        let list = in_list_within(then)?;
        if list.negated() || key.is_some_and(|key| key != list.expr()) {
            return None;
        }
        key = Some(list.expr());
        for value in list.list() {
            values.push(value.downcast_ref::<Literal>()?.value().clone());
        }
    }
    let array = ScalarValue::iter_to_array(values).ok()?;
    Some(Arc::new(InListExpr::try_new_from_array(key?.clone(), array, false, schema).ok()?))
}

/// The `IN` list among the conjuncts of `expr`.
fn in_list_within(expr: &Arc<dyn PhysicalExpr>) -> Option<&InListExpr> {
    if let Some(list) = expr.downcast_ref::<InListExpr>() {
        return Some(list);
    }
    let and = expr.downcast_ref::<BinaryExpr>().filter(|e| *e.op() == Operator::And)?;
    in_list_within(and.left()).or_else(|| in_list_within(and.right()))
}

fn is_false(expr: &Arc<dyn PhysicalExpr>) -> bool {
    expr.downcast_ref::<Literal>().is_some_and(|literal| literal.value() == &ScalarValue::Boolean(Some(false)))
}

fn is_true(expr: &Arc<dyn PhysicalExpr>) -> bool {
    expr.downcast_ref::<Literal>().is_some_and(|literal| literal.value() == &ScalarValue::Boolean(Some(true)))
}

#[cfg(test)]
mod tests {
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_expr::expressions::{DynamicFilterPhysicalExpr, col, lit};
    use datafusion::physical_plan::joins::SeededRandomState;

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
    fn the_predicate_above_is_tested_first_and_only_while_a_filter_is_set() {
        let schema = batch([]).schema();
        let dynamic = Arc::new(DynamicFilterPhysicalExpr::new(vec![col("k", &schema).unwrap()], lit(true)));
        let above: Arc<dyn PhysicalExpr> =
            Arc::new(BinaryExpr::new(col("k", &schema).unwrap(), Operator::GtEq, lit(5i64)));
        let filters = RuntimeFilters::new([dynamic.clone() as Arc<dyn PhysicalExpr>]).with_first(above).unwrap();
        assert_eq!(
            keys(&filters.apply(batch(0..10)).unwrap()).len(),
            10,
            "unset: the FilterExec above tests its predicate, once"
        );
        dynamic.update(below(8)).unwrap();
        assert_eq!(keys(&filters.apply(batch(0..10)).unwrap()), [5, 6, 7]);

        // Of the rows the predicate keeps, the filter keeps 3 in 4: not
        // judged useless, though it keeps 9 in 10 of all rows.
        let all = TRIAL_ROWS as i64 * 4;
        let filters = RuntimeFilters::new([below(all * 9 / 10)])
            .with_first(Arc::new(BinaryExpr::new(col("k", &schema).unwrap(), Operator::GtEq, lit(all * 6 / 10))))
            .unwrap();
        for _ in 0..2 {
            let rows = filters.apply(batch(0..all)).unwrap().num_rows() as i64;
            assert_eq!(rows, all * 3 / 10, "still tested after its trial");
        }
    }

    #[test]
    fn a_predicate_that_fails_or_is_volatile_is_left_to_the_filter_above() {
        let schema = batch([]).schema();
        let failing: Arc<dyn PhysicalExpr> =
            Arc::new(BinaryExpr::new(col("k", &schema).unwrap(), Operator::Lt, lit("five")));
        let filters = RuntimeFilters::new([below(5)]).with_first(failing).unwrap();
        assert_eq!(keys(&filters.apply(batch(0..10)).unwrap()), [0, 1, 2, 3, 4]);

        let random = datafusion::functions::math::random();
        let config = Arc::new(ConfigOptions::default());
        let volatile = datafusion::physical_expr::ScalarFunctionExpr::try_new(random, vec![], &schema, config).unwrap();
        let volatile: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(Arc::new(volatile), Operator::Lt, lit(0.5)));
        assert!(
            RuntimeFilters::new([below(5)]).with_first(volatile).is_none(),
            "tested twice, it would keep a quarter"
        );
        assert!(RuntimeFilters::default().with_first(below(3)).is_none(), "no filter: nothing to test first");
    }

    #[test]
    fn a_hash_partitioned_joins_filter_keeps_the_same_rows_as_one_in_list_of_its_keys() {
        let probe = batch((0..1000).chain([i64::MIN]));
        let schema = probe.schema();
        let key = col("k", &schema).unwrap();
        let hash =
            Arc::new(HashExpr::new(vec![key.clone()], SeededRandomState::with_seed(7), "hash_repartition".into()));
        let partition: Arc<dyn PhysicalExpr> =
            Arc::new(BinaryExpr::new(hash, Operator::Modulo, lit(ScalarValue::UInt64(Some(2)))));
        // The build side's keys, each in the partition its hash sends it to.
        let of = partition.evaluate(&probe).unwrap().into_array(probe.num_rows()).unwrap();
        let of = of.as_primitive::<arrow::datatypes::UInt64Type>();
        let build = [3i64, 17, 256, 999, i64::MIN];
        let keys_of = |p: u64| -> Vec<i64> { build.iter().copied().filter(|k| of.value(probe_row(*k)) == p).collect() };
        let branch = |keys: Vec<i64>| -> Arc<dyn PhysicalExpr> {
            let bounds = Arc::new(BinaryExpr::new(key.clone(), Operator::GtEq, lit(*keys.iter().min().unwrap())));
            let list =
                InListExpr::try_new_from_array(key.clone(), Arc::new(Int64Array::from(keys)), false, &schema).unwrap();
            Arc::new(BinaryExpr::new(bounds, Operator::And, Arc::new(list)))
        };
        let (zero, one) = (keys_of(0), keys_of(1));
        assert!(!zero.is_empty() && !one.is_empty(), "the keys fall in both partitions: {zero:?} {one:?}");
        let when = |p: u64| lit(ScalarValue::UInt64(Some(p)));
        let case: Arc<dyn PhysicalExpr> = Arc::new(
            CaseExpr::try_new(Some(partition), vec![(when(0), branch(zero)), (when(1), branch(one))], Some(lit(false)))
                .unwrap(),
        );

        let simple = simplified(case.clone(), &schema);
        assert!(simple.is::<InListExpr>(), "{simple}");
        let mask = |filter: &Arc<dyn PhysicalExpr>| evaluate(filter, &probe).unwrap();
        assert_eq!(mask(&simple), mask(&case));
        assert_eq!(mask(&simple).true_count(), build.len());

        // A partition that sent its hash table is left to the CASE.
        let unlike =
            Arc::new(CaseExpr::try_new(Some(key.clone()), vec![(lit(1i64), lit(true))], Some(lit(false))).unwrap());
        assert!(simplified(unlike, &schema).is::<CaseExpr>());
    }

    /// The row of `batch(0..1000).chain([i64::MIN])` holding `key`.
    fn probe_row(key: i64) -> usize {
        if key == i64::MIN { 1000 } else { key as usize }
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
