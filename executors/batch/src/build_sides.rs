//! A join's build side started when the join first asks for it, not when
//! the plan starts, so the dynamic filters of the joins above it are set
//! by then and the scans beneath it read only the rows that can match.
//!
//! A hash join that collects its build side into one table
//! (`CollectLeft`) reads it through a `CoalescePartitionsExec`, which
//! starts a task per input partition the moment the plan is executed.
//! Every join in the plan is executed at once, from the root down, so all
//! their build sides start together. In TPC-H q21 `supplier` is built
//! into the table of the lowest join while the join at the top is still
//! building its own from `nation` (`n_name = 'SAUDI ARABIA'`): the
//! filter that join hands down (`s_nationkey IN (20)`) arrives after the
//! scan of `supplier` has read all 10,000 rows instead of 400, so the
//! joins above carry 3.8 M rows of `lineitem` instead of 150 K.
//!
//! A join polls its build side before its probe side, and the probe side
//! holds the joins below, so starting each build side when it is first
//! polled builds the tables from the top down, each after the filters of
//! those above it are set. The tasks of one build side still run in
//! parallel.

use std::fmt;
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::ChildrenPropertiesMode;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, ReplaceChildrenOptions};
use futures::TryStreamExt;

/// Puts a [`StartWhenPolledExec`] above the `CoalescePartitionsExec` of
/// every join that collects its build side. Runs last: it only delays
/// when an input starts, which no other rule needs to see.
#[derive(Debug, Default)]
pub(crate) struct StartBuildSidesWhenPolled;

impl PhysicalOptimizerRule for StartBuildSidesWhenPolled {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|plan| {
            let Some(join) = plan.downcast_ref::<HashJoinExec>() else { return Ok(Transformed::no(plan)) };
            if *join.partition_mode() != PartitionMode::CollectLeft || !join.left().is::<CoalescePartitionsExec>() {
                return Ok(Transformed::no(plan));
            }
            let build = Arc::new(StartWhenPolledExec { input: join.left().clone() });
            let children = vec![build as Arc<dyn ExecutionPlan>, join.right().clone()];
            plan.clone()
                .replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep))
                .map(Transformed::yes)
        })
        .data()
    }

    fn name(&self) -> &str {
        "start_build_sides_when_polled"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Its input, executed when its stream is first polled rather than when
/// it is executed.
#[derive(Debug)]
pub(crate) struct StartWhenPolledExec {
    input: Arc<dyn ExecutionPlan>,
}

impl DisplayAs for StartWhenPolledExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "StartWhenPolledExec")
    }
}

impl ExecutionPlan for StartWhenPolledExec {
    fn name(&self) -> &str {
        "StartWhenPolledExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(StartWhenPolledExec { input: children.swap_remove(0) }))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = self.input.clone();
        let stream = futures::stream::once(async move { input.execute(partition, context) }).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.input.schema(), stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cached::tests::{FindScan, cached_in_shm};
    use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, StringViewArray};
    use arrow::datatypes::{Field, Int64Type, Schema};
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::physical_plan::{collect, displayable};
    use datafusion::prelude::{SessionConfig, SessionContext};

    fn table(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        let fields: Vec<Field> =
            columns.iter().map(|(name, array)| Field::new(*name, array.data_type().clone(), false)).collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns.into_iter().map(|(_, array)| array).collect())
            .unwrap()
    }

    fn keys(range: std::ops::Range<i64>, f: impl Fn(i64) -> i64) -> ArrayRef {
        Arc::new(Int64Array::from(range.map(f).collect::<Vec<_>>()))
    }

    /// Given 25 nations, 10,000 suppliers spread over them and 100,000
    /// facts spread over the suppliers, all cached in several partitions,
    /// when the facts of one nation's suppliers are counted (the nation's
    /// join on top, the suppliers' below it, each collecting its build
    /// side), then the suppliers are read only once the nation is known:
    /// their scan drops the 9,600 of other nations, on every run, on a
    /// runtime whose threads would otherwise start it at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_build_side_starts_after_the_filters_of_the_joins_above_it_are_set() {
        let dir = tempfile::tempdir().unwrap();
        let names = StringViewArray::from_iter_values((0..25).map(|n| format!("N{n}")));
        let nations = table(vec![("n_key", keys(0..25, |n| n)), ("n_name", Arc::new(names))]);
        let suppliers = table(vec![("s_key", keys(0..10_000, |s| s)), ("s_nation", keys(0..10_000, |s| s % 25))]);
        let facts = table(vec![("f_supplier", keys(0..100_000, |f| f % 10_000))]);
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_config(SessionConfig::new().with_target_partitions(2))
            .with_physical_optimizer_rule(Arc::new(crate::runtime_filters::KeepFiltersThatSpareWork))
            .with_physical_optimizer_rule(Arc::new(StartBuildSidesWhenPolled))
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.register_table("nations", cached_in_shm(dir.path(), "nations", nations, 2)).unwrap();
        ctx.register_table("suppliers", cached_in_shm(dir.path(), "suppliers", suppliers, 4)).unwrap();
        ctx.register_table("facts", cached_in_shm(dir.path(), "facts", facts, 4)).unwrap();
        let sql = "SELECT count(*) FROM facts f JOIN suppliers s ON f.f_supplier = s.s_key \
                   JOIN nations n ON s.s_nation = n.n_key WHERE n.n_name = 'N20'";

        for run in 0..5 {
            let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
            let shown = displayable(plan.as_ref()).indent(false).to_string();
            assert!(shown.contains("StartWhenPolledExec"), "{shown}");
            let counted = collect(plan.clone(), ctx.task_ctx()).await.unwrap();
            assert_eq!(counted[0].column(0).as_primitive::<Int64Type>().value(0), 4_000, "run {run}");
            let mut pruned = None;
            datafusion::physical_plan::accept(plan.as_ref(), &mut FindScan("suppliers", &mut pruned)).unwrap();
            assert_eq!(pruned, Some(9_600), "run {run}: rows of the suppliers' scan dropped");
        }
    }
}
