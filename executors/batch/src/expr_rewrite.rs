//! The one walk the expression rules of the cached-table session share:
//! every expression a plan evaluates per row (projections, filter
//! predicates, aggregate arguments), rewritten bottom up.

use std::sync::Arc;

use arrow::datatypes::Schema;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::error::Result;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};

/// What a rule puts in place of one expression over rows of `schema`, if anything.
pub(crate) type Rewrite = dyn Fn(&Arc<dyn PhysicalExpr>, &Schema) -> Option<Arc<dyn PhysicalExpr>>;

/// `plan` with `rewrite` applied to every node of its projections', filters'
/// and aggregate arguments' expressions; nodes nothing changed in are kept.
pub(crate) fn rewrite_expressions(plan: Arc<dyn ExecutionPlan>, rewrite: &Rewrite) -> Result<Arc<dyn ExecutionPlan>> {
    let each = |expr: &Arc<dyn PhysicalExpr>, schema: &Schema| {
        expr.clone().transform_up(|expr| Ok(rewrite(&expr, schema).map_or(Transformed::no(expr), Transformed::yes)))
    };
    plan.transform_up(|plan| {
        if let Some(projection) = plan.downcast_ref::<ProjectionExec>() {
            let schema = projection.input().schema();
            let mut changed = false;
            let exprs = projection
                .expr()
                .iter()
                .map(|p| {
                    let expr = each(&p.expr, &schema)?;
                    changed |= expr.transformed;
                    Ok(ProjectionExpr { expr: expr.data, alias: p.alias.clone() })
                })
                .collect::<Result<Vec<_>>>()?;
            if !changed {
                return Ok(Transformed::no(plan));
            }
            let rewritten = ProjectionExec::try_new(exprs, projection.input().clone())?;
            return Ok(Transformed::yes(Arc::new(rewritten) as Arc<dyn ExecutionPlan>));
        }
        if let Some(filter) = plan.downcast_ref::<FilterExec>() {
            let predicate = each(filter.predicate(), &filter.input().schema())?;
            if !predicate.transformed {
                return Ok(Transformed::no(plan));
            }
            let filter = FilterExecBuilder::from(filter).with_predicate(predicate.data).build()?;
            return Ok(Transformed::yes(Arc::new(filter) as Arc<dyn ExecutionPlan>));
        }
        if let Some(aggregate) = plan.downcast_ref::<AggregateExec>() {
            let schema = aggregate.input_schema();
            let mut changed = false;
            let mut functions = Vec::with_capacity(aggregate.aggr_expr().len());
            for function in aggregate.aggr_expr() {
                let mut args = Vec::new();
                for arg in function.expressions() {
                    let arg = each(&arg, &schema)?;
                    changed |= arg.transformed;
                    args.push(arg.data);
                }
                let order_by = function.order_bys().iter().map(|sort| sort.expr.clone()).collect();
                match function.with_new_expressions(args, order_by) {
                    Some(rewritten) => functions.push(Arc::new(rewritten)),
                    None => return Ok(Transformed::no(plan)),
                }
            }
            if !changed {
                return Ok(Transformed::no(plan));
            }
            return Ok(Transformed::yes(Arc::new(aggregate.with_new_aggr_exprs(functions)) as Arc<dyn ExecutionPlan>));
        }
        Ok(Transformed::no(plan))
    })
    .data()
}
