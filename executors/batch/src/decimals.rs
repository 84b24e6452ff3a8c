//! Decimal `+`, `-` and `*` with an overflow check that costs a compare
//! instead of a call.
//!
//! Arrow computes every `Decimal128` sum, difference and product with
//! `i128::checked_mul` (a rescale is a multiplication too), which compiles
//! to a call into the compiler's runtime: 27 ns a row for
//! `l_extendedprice * (1 - l_discount)` in `EXPLAIN ANALYZE` of TPC-H q1 on
//! cached tables, and a third of that query's CPU with
//! `... * (1 + l_tax)`. Two values that each fit in an `i64` cannot
//! overflow an `i128` when multiplied, and the product is one machine
//! multiplication; only values beyond that take the checked path. The
//! values, and which rows fail with an overflow, are arrow's.
//!
//! [`DecimalArithmeticInI64`] puts a [`DecimalArithmeticExpr`] in place of
//! such arithmetic in the projections, filters and aggregate arguments of
//! the session that runs queries on cached tables alone (it has no wire
//! form, so it never leaves the process).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, AsArray, Decimal128Array, new_null_array};
use arrow::buffer::{NullBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Schema};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::common::config::ConfigOptions;
use datafusion::error::Result;
use datafusion::logical_expr::{ColumnarValue, Operator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::BinaryExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;

use crate::expr_rewrite::rewrite_expressions;

/// Computes the decimal arithmetic of projections, filters and aggregate
/// arguments with [`DecimalArithmeticExpr`] (see the module's documentation).
#[derive(Debug, Default)]
pub(crate) struct DecimalArithmeticInI64;

impl PhysicalOptimizerRule for DecimalArithmeticInI64 {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        rewrite_expressions(plan, &in_i64)
    }

    fn name(&self) -> &str {
        "decimal_arithmetic_in_i64"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `expr` as a [`DecimalArithmeticExpr`], if it is `+`, `-` or `*` of two
/// `Decimal128`s whose result type is the one arrow's kernel gives.
fn in_i64(expr: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Option<Arc<dyn PhysicalExpr>> {
    let binary = expr.downcast_ref::<BinaryExpr>()?;
    let op = match binary.op() {
        Operator::Plus => DecimalOp::Add,
        Operator::Minus => DecimalOp::Sub,
        Operator::Multiply => DecimalOp::Mul,
        _ => return None,
    };
    let (DataType::Decimal128(p1, s1), DataType::Decimal128(p2, s2)) =
        (binary.left().data_type(schema).ok()?, binary.right().data_type(schema).ok()?)
    else {
        return None;
    };
    let (precision, scale) = op.result_type((p1, s1), (p2, s2))?;
    // A planner whose type differs from the kernel's is left to the kernel.
    if binary.data_type(schema).ok()? != DataType::Decimal128(precision, scale) {
        return None;
    }
    Some(Arc::new(DecimalArithmeticExpr {
        left: binary.left().clone(),
        op,
        right: binary.right().clone(),
        scales: (s1, s2),
        result: (precision, scale),
    }))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum DecimalOp {
    Add,
    Sub,
    Mul,
}

impl DecimalOp {
    /// The result's precision and scale, by arrow's rules (Hive's); none
    /// where arrow would refuse (a scale beyond 38).
    fn result_type(self, (p1, s1): (u8, i8), (p2, s2): (u8, i8)) -> Option<(u8, i8)> {
        const MAX_PRECISION: u8 = 38;
        const MAX_SCALE: i8 = 38;
        match self {
            DecimalOp::Add | DecimalOp::Sub => {
                if s1 < 0 || s2 < 0 {
                    return None;
                }
                let scale = s1.max(s2);
                let integral = (p1 as i8 - s1).max(p2 as i8 - s2);
                Some(((scale.saturating_add(integral) as u8).saturating_add(1).min(MAX_PRECISION), scale))
            }
            DecimalOp::Mul => {
                let scale = s1.checked_add(s2).filter(|s| *s <= MAX_SCALE)?;
                Some((p1.saturating_add(p2 + 1).min(MAX_PRECISION), scale))
            }
        }
    }

    fn operator(self) -> Operator {
        match self {
            DecimalOp::Add => Operator::Plus,
            DecimalOp::Sub => Operator::Minus,
            DecimalOp::Mul => Operator::Multiply,
        }
    }
}

/// `a * b` of two raw decimal values, exact or none: one machine
/// multiplication when both fit in an `i64` (the product of two `i64`s
/// always fits in an `i128`), the checked one otherwise.
#[inline(always)]
fn mul(a: i128, b: i128) -> Option<i128> {
    let (a64, b64) = (a as i64, b as i64);
    if i128::from(a64) == a && i128::from(b64) == b {
        Some(i128::from(a64) * i128::from(b64))
    } else {
        a.checked_mul(b)
    }
}

/// Decimal `left op right`, computed as arrow's kernel computes it.
#[derive(Debug)]
pub(crate) struct DecimalArithmeticExpr {
    left: Arc<dyn PhysicalExpr>,
    op: DecimalOp,
    right: Arc<dyn PhysicalExpr>,
    /// The inputs' scales.
    scales: (i8, i8),
    /// The result's precision and scale.
    result: (u8, i8),
}

/// One side of the operation: a column's raw values, or one value.
enum Side<'a> {
    Array(&'a [i128], Option<&'a NullBuffer>),
    Scalar(i128),
}

impl Side<'_> {
    /// None for a null.
    fn of(value: &ColumnarValue) -> Option<Side<'_>> {
        match value {
            ColumnarValue::Array(array) => {
                let decimals = array.as_primitive::<arrow::datatypes::Decimal128Type>();
                Some(Side::Array(&decimals.values()[..], decimals.nulls()))
            }
            ColumnarValue::Scalar(ScalarValue::Decimal128(Some(value), ..)) => Some(Side::Scalar(*value)),
            ColumnarValue::Scalar(_) => None,
        }
    }
}

impl DecimalArithmeticExpr {
    fn apply(&self, left: Side, right: Side, rows: usize) -> Result<ColumnarValue> {
        let (precision, scale) = self.result;
        let (left_mul, right_mul) = match self.op {
            DecimalOp::Mul => (1, 1),
            DecimalOp::Add | DecimalOp::Sub => {
                (10i128.pow((scale - self.scales.0) as u32), 10i128.pow((scale - self.scales.1) as u32))
            }
        };
        let rescaled = |a: i128, b: i128| Some((mul(a, left_mul)?, mul(b, right_mul)?));
        let (values, nulls) = match self.op {
            DecimalOp::Add => each_row(&left, &right, rows, |a, b| rescaled(a, b).and_then(|(a, b)| a.checked_add(b))),
            DecimalOp::Sub => each_row(&left, &right, rows, |a, b| rescaled(a, b).and_then(|(a, b)| a.checked_sub(b))),
            DecimalOp::Mul => each_row(&left, &right, rows, mul),
        }
        .map_err(|(a, b)| {
            ArrowError::ArithmeticOverflow(format!("Overflow happened on: {a:?} {} {b:?}", self.op.operator()))
        })?;
        let array = Decimal128Array::new(values, nulls).with_precision_and_scale(precision, scale)?;
        Ok(ColumnarValue::Array(Arc::new(array)))
    }
}

/// `op` on each row of two sides and the rows' nulls (a row is null where
/// either side is), or the first operands of a non-null row `op` fails on.
fn each_row(
    left: &Side,
    right: &Side,
    rows: usize,
    op: impl Fn(i128, i128) -> Option<i128>,
) -> std::result::Result<(ScalarBuffer<i128>, Option<NullBuffer>), (i128, i128)> {
    let nulls = match (left, right) {
        (Side::Array(_, l), Side::Array(_, r)) => NullBuffer::union(*l, *r),
        (Side::Array(_, nulls), Side::Scalar(_)) | (Side::Scalar(_), Side::Array(_, nulls)) => nulls.cloned(),
        (Side::Scalar(_), Side::Scalar(_)) => None,
    };
    let value = |side: &Side, i: usize| match side {
        Side::Array(values, _) => values[i],
        Side::Scalar(value) => *value,
    };
    // One pass that never stops early, so it compiles to a tight loop; the
    // rare failure is looked for again afterwards.
    let mut all_done = true;
    let mut each = |a: i128, b: i128| {
        op(a, b).unwrap_or_else(|| {
            all_done = false;
            0
        })
    };
    let values: Vec<i128> = match (left, right) {
        (Side::Array(l, _), Side::Array(r, _)) => l.iter().zip(r.iter()).map(|(&a, &b)| each(a, b)).collect(),
        (Side::Array(l, _), &Side::Scalar(b)) => l.iter().map(|&a| each(a, b)).collect(),
        (&Side::Scalar(a), Side::Array(r, _)) => r.iter().map(|&b| each(a, b)).collect(),
        (&Side::Scalar(a), &Side::Scalar(b)) => vec![each(a, b); rows],
    };
    if !all_done {
        // A null row's values are whatever its buffers hold: it fails nothing.
        let valid = |i: usize| nulls.as_ref().is_none_or(|n| n.is_valid(i));
        if let Some(i) = (0..rows).find(|&i| valid(i) && op(value(left, i), value(right, i)).is_none()) {
            return Err((value(left, i), value(right, i)));
        }
    }
    Ok((values.into(), nulls))
}

// By hand: deriving these over `Arc<dyn PhysicalExpr>` trips rust-lang/rust#78808.
impl PartialEq for DecimalArithmeticExpr {
    fn eq(&self, other: &Self) -> bool {
        self.left.eq(&other.left) && self.op == other.op && self.right.eq(&other.right) && self.result == other.result
    }
}

impl Eq for DecimalArithmeticExpr {}

impl Hash for DecimalArithmeticExpr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.left.hash(state);
        self.op.hash(state);
        self.right.hash(state);
        self.result.hash(state);
    }
}

impl fmt::Display for DecimalArithmeticExpr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "decimal({} {} {})", self.left, self.op.operator(), self.right)
    }
}

impl PhysicalExpr for DecimalArithmeticExpr {
    fn data_type(&self, _input_schema: &Schema) -> Result<DataType> {
        Ok(DataType::Decimal128(self.result.0, self.result.1))
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        Ok(self.left.nullable(input_schema)? || self.right.nullable(input_schema)?)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let (left, right) = (self.left.evaluate(batch)?, self.right.evaluate(batch)?);
        match (Side::of(&left), Side::of(&right)) {
            (Some(l), Some(r)) => self.apply(l, r, batch.num_rows()),
            // A null operand makes every row null, as in arrow's kernel.
            _ => Ok(ColumnarValue::Array(new_null_array(&self.data_type(batch.schema_ref())?, batch.num_rows()))),
        }
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.left, &self.right]
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn PhysicalExpr>>) -> Result<Arc<dyn PhysicalExpr>> {
        let right = children.swap_remove(1);
        let left = children.swap_remove(0);
        Ok(Arc::new(DecimalArithmeticExpr { left, right, op: self.op, scales: self.scales, result: self.result }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "(")?;
        self.left.fmt_sql(f)?;
        write!(f, " {} ", self.op.operator())?;
        self.right.fmt_sql(f)?;
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::ArrayRef;
    use arrow::datatypes::Field;
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::physical_expr::expressions::{Column, Literal};
    use datafusion::physical_plan::aggregates::AggregateExec;
    use datafusion::prelude::SessionContext;

    /// SplitMix64: the same values on every run.
    struct Numbers(u64);

    impl Numbers {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// A raw value of any magnitude: small, at either end of an
        /// `i64` (where the fast path stops), or beyond it.
        fn value(&mut self) -> i128 {
            let r = self.next();
            let small = (r % 2_001) as i128 - 1_000;
            match r % 10 {
                0..=4 => small,
                5 | 6 => i128::from(i64::MAX) - small.abs() + (r % 3) as i128,
                7 | 8 => i128::from(i64::MIN) + small.abs() - (r % 3) as i128,
                _ => small * (1i128 << (64 + r % 50)),
            }
        }

        /// Eight rows of raw values (beyond the precision too, which arrow
        /// does not check), some null over a value an overflow would fail on.
        fn column(&mut self, (precision, scale): (u8, i8)) -> ArrayRef {
            let values: Vec<i128> = (0..8).map(|_| self.value()).collect();
            let valid: Vec<bool> = (0..8).map(|_| !self.next().is_multiple_of(5)).collect();
            let values = values.iter().zip(&valid).map(|(&v, &ok)| if ok { v } else { i128::MAX }).collect::<Vec<_>>();
            let array = Decimal128Array::new(values.into(), Some(NullBuffer::from(valid)));
            Arc::new(array.with_precision_and_scale(precision, scale).unwrap())
        }

        /// A literal's value, now and then null.
        fn literal(&mut self) -> Option<i128> {
            (!self.next().is_multiple_of(8)).then(|| self.value())
        }
    }

    /// Given decimal columns and literals of several precisions and scales,
    /// with values small, at the ends of an `i64` and far beyond, and nulls
    /// over values that would overflow, when `+`, `-` and `*` are computed
    /// in both, then each answer is DataFusion's own, and each overflow
    /// fails both.
    #[test]
    fn decimal_arithmetic_answers_as_datafusion_does() {
        let mut numbers = Numbers(19);
        let types = [(15, 2), (20, 0), (10, 4), (38, 10), (38, 0), (5, -2)];
        let (mut compared, mut overflows, mut fast) = (0, 0, 0);
        for _ in 0..300 {
            let (p1, s1) = types[(numbers.next() % 6) as usize];
            let (p2, s2) = types[(numbers.next() % 6) as usize];
            let schema = Arc::new(Schema::new(vec![
                Field::new("a", DataType::Decimal128(p1, s1), true),
                Field::new("b", DataType::Decimal128(p2, s2), true),
            ]));
            let columns = vec![numbers.column((p1, s1)), numbers.column((p2, s2))];
            let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
            let a = || Arc::new(Column::new("a", 0)) as Arc<dyn PhysicalExpr>;
            let b = || Arc::new(Column::new("b", 1)) as Arc<dyn PhysicalExpr>;
            let literal = |value: Option<i128>, (p, s)| {
                Arc::new(Literal::new(ScalarValue::Decimal128(value, p, s))) as Arc<dyn PhysicalExpr>
            };
            let (one, other) = (numbers.literal(), numbers.literal());
            let operands = [(a(), b()), (literal(one, (p1, s1)), b()), (a(), literal(other, (p2, s2)))];
            for (left, right) in operands {
                for op in [Operator::Plus, Operator::Minus, Operator::Multiply] {
                    let binary = Arc::new(BinaryExpr::new(left.clone(), op, right.clone())) as Arc<dyn PhysicalExpr>;
                    let Some(ours) = in_i64(&binary, &schema) else {
                        // Only negative scales are refused, and only for `+` and `-`.
                        assert!(s1 < 0 || s2 < 0, "{binary} not rewritten");
                        continue;
                    };
                    let rows = batch.num_rows();
                    let expected = binary.evaluate(&batch).and_then(|v| v.into_array(rows));
                    let got = ours.evaluate(&batch).and_then(|v| v.into_array(rows));
                    match (expected, got) {
                        (Ok(expected), Ok(got)) => {
                            assert_eq!(got.data_type(), expected.data_type(), "{binary}");
                            assert_eq!(&got, &expected, "{binary}");
                            compared += 1;
                            let values = expected.as_primitive::<arrow::datatypes::Decimal128Type>();
                            fast += values.iter().flatten().filter(|v| i64::try_from(*v).is_ok()).count();
                        }
                        (Err(_), Err(e)) => {
                            assert!(e.to_string().contains("Overflow happened on"), "{e}");
                            overflows += 1;
                        }
                        (expected, got) => panic!("{binary}: DataFusion {expected:?}, ours {got:?}"),
                    }
                }
            }
        }
        assert!(compared > 500 && overflows > 100 && fast > 1_000, "{compared} compared, {overflows} overflows");
    }

    /// Given a table of prices, discounts and taxes, when TPC-H q1's sums
    /// are planned and the rule runs, then the projection's and the
    /// aggregate's arithmetic is decimal, and the answer is the one of the
    /// plan as DataFusion made it.
    #[tokio::test]
    async fn q1s_sums_are_computed_in_i64_and_answer_the_same() {
        let decimal = |i: i128, step: i128, range: i128| {
            let values: Decimal128Array = (0..1_000).map(|r| (r % 7 != 3).then_some((r * step + i) % range)).collect();
            Arc::new(values.with_precision_and_scale(15, 2).unwrap()) as ArrayRef
        };
        let flags = Arc::new(arrow::array::StringArray::from_iter_values((0..1_000).map(|r| ["A", "N", "R"][r % 3])));
        let schema = Arc::new(Schema::new(vec![
            Field::new("price", DataType::Decimal128(15, 2), true),
            Field::new("discount", DataType::Decimal128(15, 2), true),
            Field::new("tax", DataType::Decimal128(15, 2), true),
            Field::new("flag", DataType::Utf8, false),
        ]));
        let columns = vec![decimal(1_000, 7_919, 10_000_000), decimal(0, 1, 11), decimal(0, 3, 9), flags];
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
        let ctx = SessionContext::new();
        let table = datafusion::datasource::MemTable::try_new(schema, vec![vec![batch]]).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        let sql = "SELECT flag, sum(price * (1 - discount)), sum(price * (1 - discount) * (1 + tax)), avg(price) \
                   FROM t WHERE price * discount > 100 GROUP BY flag ORDER BY flag";
        let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        let rewritten = DecimalArithmeticInI64.optimize(plan.clone(), &ConfigOptions::default()).unwrap();
        let mut shown = datafusion::physical_plan::displayable(rewritten.as_ref()).indent(true).to_string();
        // An aggregate shows its functions' names: its arguments are shown here.
        rewritten
            .apply(|node| {
                if let Some(aggregate) = node.downcast_ref::<AggregateExec>() {
                    let args = aggregate.aggr_expr().iter().flat_map(|f| f.expressions());
                    shown.extend(args.map(|arg| format!("\naggregate argument: {arg}")));
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .unwrap();
        assert!(shown.contains("decimal(price@0 * decimal(1 - discount@1)) as __common_expr_1"), "{shown}");
        assert!(shown.contains("aggregate argument: decimal(__common_expr_1@0 * decimal(1 + tax@"), "{shown}");
        assert!(shown.contains("decimal(price@0 * discount@1) >"), "{shown}");
        let answer = |plan| async { datafusion::physical_plan::collect(plan, ctx.task_ctx()).await.unwrap() };
        let (expected, got) = (answer(plan).await, answer(rewritten).await);
        let format = |batches: &[RecordBatch]| arrow::util::pretty::pretty_format_batches(batches).unwrap().to_string();
        assert_eq!(format(&got), format(&expected));
        assert_eq!(got.iter().map(RecordBatch::num_rows).sum::<usize>(), 3);
    }
}
