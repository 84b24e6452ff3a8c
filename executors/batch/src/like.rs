//! `LIKE` patterns made of literal pieces between `%` wildcards, matched by
//! finding each piece in turn instead of by a regular expression.
//!
//! Arrow matches a `LIKE` pattern without a regular expression only when it
//! is one piece with `%` at either end (`starts_with`, `ends_with`,
//! `contains`). Anything else, even `%special%requests%` (TPC-H q13),
//! becomes a regular expression: 136 ns a row on `orders.o_comment` in
//! `EXPLAIN ANALYZE`, most of q13's time on cached tables. A pattern of
//! literal pieces and `%` alone matches exactly when each piece is found
//! at or after the end of the one before it: the first at the very start
//! if the pattern does not begin with `%`, the last at the very end if it
//! does not end with one. Leftmost matches are always the right choice, as
//! a later one only leaves less room for the pieces after it.
//!
//! [`MatchLikeByPieces`] puts a [`PiecesLikeExpr`] in place of such a
//! `LIKE` in the filters, projections and aggregate arguments of the
//! session that runs queries on cached tables alone (it has no wire form,
//! so it never leaves the process).
//! Patterns with `_`, an escape, or `ILIKE` are left to arrow.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use arrow::buffer::BooleanBuffer;
use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::common::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{LikeExpr, Literal};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use memchr::memmem::Finder;

use crate::expr_rewrite::rewrite_expressions;

/// Matches the `LIKE`s of filters, projections and aggregate arguments by
/// pieces where the pattern allows it (see the module's documentation).
#[derive(Debug, Default)]
pub(crate) struct MatchLikeByPieces;

impl PhysicalOptimizerRule for MatchLikeByPieces {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        rewrite_expressions(plan, &by_pieces)
    }

    fn name(&self) -> &str {
        "match_like_by_pieces"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `expr` matched by pieces, if it is a `LIKE` on a string (not a
/// dictionary of them) that arrow would match with a regular expression,
/// and pieces can match exactly.
fn by_pieces(expr: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Option<Arc<dyn PhysicalExpr>> {
    let like = expr.downcast_ref::<LikeExpr>()?;
    let strings =
        matches!(like.expr().data_type(schema).ok()?, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8);
    if like.case_insensitive() || !strings {
        return None;
    }
    let pattern = match like.pattern().downcast_ref::<Literal>()?.value() {
        ScalarValue::Utf8(Some(p)) | ScalarValue::Utf8View(Some(p)) | ScalarValue::LargeUtf8(Some(p)) => p,
        _ => return None,
    };
    let pieces = Pieces::of(pattern)?;
    Some(Arc::new(PiecesLikeExpr {
        expr: like.expr().clone(),
        pattern: pattern.clone(),
        negated: like.negated(),
        pieces,
    }))
}

/// A pattern's literal pieces, and whether the first and last must sit at
/// the string's ends.
#[derive(Clone, Debug)]
struct Pieces {
    finders: Vec<Finder<'static>>,
    at_start: bool,
    at_end: bool,
}

impl Pieces {
    /// The pieces of `pattern`; none if it holds `_` or an escape, or is a
    /// single piece (which arrow matches without a regular expression).
    fn of(pattern: &str) -> Option<Pieces> {
        if pattern.contains(['_', '\\']) {
            return None;
        }
        let finders: Vec<Finder<'static>> =
            pattern.split('%').filter(|piece| !piece.is_empty()).map(|piece| Finder::new(piece).into_owned()).collect();
        (finders.len() >= 2).then(|| Pieces {
            finders,
            at_start: !pattern.starts_with('%'),
            at_end: !pattern.ends_with('%'),
        })
    }

    fn matches(&self, text: &[u8]) -> bool {
        let mut pieces = self.finders.as_slice();
        let (mut from, mut to) = (0, text.len());
        if self.at_start {
            let first = pieces[0].needle();
            if !text.starts_with(first) {
                return false;
            }
            from = first.len();
            pieces = &pieces[1..];
        }
        if self.at_end {
            let last = pieces[pieces.len() - 1].needle();
            if to - from < last.len() || !text.ends_with(last) {
                return false;
            }
            to -= last.len();
            pieces = &pieces[..pieces.len() - 1];
        }
        for piece in pieces {
            match piece.find(&text[from..to]) {
                Some(at) => from += at + piece.needle().len(),
                None => return false,
            }
        }
        true
    }
}

/// `expr [NOT] LIKE pattern`, for a pattern of literal pieces and `%`.
#[derive(Debug)]
pub(crate) struct PiecesLikeExpr {
    expr: Arc<dyn PhysicalExpr>,
    pattern: String,
    negated: bool,
    pieces: Pieces,
}

impl PiecesLikeExpr {
    fn over(&self, array: &ArrayRef) -> Result<BooleanArray> {
        let test = |text: &str| self.pieces.matches(text.as_bytes()) != self.negated;
        // Null rows hold an empty value; the input's nulls mask their verdict.
        let verdicts = match array.data_type() {
            DataType::Utf8View => {
                let strings = array.as_string_view();
                BooleanBuffer::collect_bool(array.len(), |i| test(strings.value(i)))
            }
            DataType::Utf8 => {
                let strings = array.as_string::<i32>();
                BooleanBuffer::collect_bool(array.len(), |i| test(strings.value(i)))
            }
            DataType::LargeUtf8 => {
                let strings = array.as_string::<i64>();
                BooleanBuffer::collect_bool(array.len(), |i| test(strings.value(i)))
            }
            other => return Err(DataFusionError::Internal(format!("LIKE by pieces over {other}"))),
        };
        Ok(BooleanArray::new(verdicts, array.logical_nulls()))
    }
}

impl PartialEq for PiecesLikeExpr {
    fn eq(&self, other: &Self) -> bool {
        self.expr.eq(&other.expr) && self.pattern == other.pattern && self.negated == other.negated
    }
}

impl Eq for PiecesLikeExpr {}

impl Hash for PiecesLikeExpr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.expr.hash(state);
        self.pattern.hash(state);
        self.negated.hash(state);
    }
}

impl fmt::Display for PiecesLikeExpr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let not = if self.negated { "NOT " } else { "" };
        write!(f, "{} {not}LIKE {} (by pieces)", self.expr, self.pattern)
    }
}

impl PhysicalExpr for PiecesLikeExpr {
    fn data_type(&self, _input_schema: &Schema) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.expr.nullable(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        match self.expr.evaluate(batch)? {
            ColumnarValue::Array(array) => Ok(ColumnarValue::Array(Arc::new(self.over(&array)?))),
            ColumnarValue::Scalar(scalar) => {
                let verdict = self.over(&scalar.to_array()?)?;
                Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&verdict, 0)?))
            }
        }
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.expr]
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn PhysicalExpr>>) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(PiecesLikeExpr {
            expr: children.swap_remove(0),
            pattern: self.pattern.clone(),
            negated: self.negated,
            pieces: self.pieces.clone(),
        }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.expr.fmt_sql(f)?;
        let not = if self.negated { "NOT " } else { "" };
        write!(f, " {not}LIKE '{}'", self.pattern.replace('\'', "''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringViewArray;
    use arrow::datatypes::Field;
    use datafusion::physical_expr::expressions::{Column, col, lit};
    use datafusion::physical_plan::filter::FilterExec;

    /// Every string of `a`, `b` and `c` up to six long, and a null.
    fn strings() -> StringViewArray {
        let mut all = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..6 {
            last = last.iter().flat_map(|s| ["a", "b", "c"].map(|c| format!("{s}{c}"))).collect();
            all.extend(last.iter().cloned());
        }
        all.into_iter().map(Some).chain([None]).collect()
    }

    /// Given every pattern of `a`, `b` and `%` up to six long that arrow
    /// would match with a regular expression, when each is matched by
    /// pieces against every short string, then each verdict is arrow's,
    /// negated too, and a null stays null.
    #[test]
    fn pieces_match_as_arrow_matches() {
        let strings = strings();
        let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8View, true)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(strings.clone())]).unwrap();
        let mut patterns = vec![String::new()];
        let mut tried = 0;
        for _ in 0..6 {
            patterns = patterns.iter().flat_map(|p| ["a", "b", "%"].map(|c| format!("{p}{c}"))).collect();
            for pattern in &patterns {
                let Some(pieces) = Pieces::of(pattern) else { continue };
                tried += 1;
                for negated in [false, true] {
                    let expr = PiecesLikeExpr {
                        expr: col("s", &schema).unwrap(),
                        pattern: pattern.clone(),
                        negated,
                        pieces: pieces.clone(),
                    };
                    let ours = expr.evaluate(&batch).unwrap().into_array(batch.num_rows()).unwrap();
                    let like = StringViewArray::new_scalar(pattern.as_str());
                    let arrows = if negated {
                        arrow::compute::kernels::comparison::nlike(&strings, &like).unwrap()
                    } else {
                        arrow::compute::kernels::comparison::like(&strings, &like).unwrap()
                    };
                    assert_eq!(ours.as_boolean(), &arrows, "{pattern} (negated: {negated})");
                }
                assert!(pieces.finders.len() >= 2);
            }
        }
        assert!(tried > 100, "{tried} patterns tried");
    }

    /// Given filters with `LIKE`s, when the rule runs, then a pattern of
    /// several pieces is matched by pieces (under `NOT` and `AND` too) and
    /// one arrow matches without a regular expression, or with `_`, an
    /// escape or `ILIKE`, or over a dictionary, is left as it is.
    #[test]
    fn only_patterns_of_several_pieces_are_matched_by_pieces() {
        let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, true)]));
        let input = Arc::new(datafusion::physical_plan::empty::EmptyExec::new(schema.clone()));
        let s = || Arc::new(Column::new("s", 0)) as Arc<dyn PhysicalExpr>;
        let like = |negated, insensitive, pattern: &str| {
            Arc::new(LikeExpr::new(negated, insensitive, s(), lit(pattern))) as Arc<dyn PhysicalExpr>
        };
        let shown = |predicate: Arc<dyn PhysicalExpr>| {
            let filter = Arc::new(FilterExec::try_new(predicate, input.clone()).unwrap());
            let plan = MatchLikeByPieces.optimize(filter, &ConfigOptions::default()).unwrap();
            plan.downcast_ref::<FilterExec>().unwrap().predicate().to_string()
        };
        assert_eq!(shown(like(true, false, "%special%requests%")), "s@0 NOT LIKE %special%requests% (by pieces)");
        let both = Arc::new(datafusion::physical_expr::expressions::BinaryExpr::new(
            like(false, false, "a%b"),
            datafusion::logical_expr::Operator::And,
            like(false, false, "%green%"),
        ));
        assert_eq!(shown(both), "s@0 LIKE a%b (by pieces) AND s@0 LIKE %green%");
        for kept in [like(false, false, "a_b%c"), like(false, false, "a\\%b%c"), like(false, true, "%a%b%")] {
            assert!(!shown(kept).contains("by pieces"));
        }
        let dictionary = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        let schema = Arc::new(Schema::new(vec![Field::new("s", dictionary, true)]));
        let input = Arc::new(datafusion::physical_plan::empty::EmptyExec::new(schema));
        let filter = Arc::new(FilterExec::try_new(like(false, false, "%a%b%"), input).unwrap());
        let plan = MatchLikeByPieces.optimize(filter, &ConfigOptions::default()).unwrap();
        let predicate = plan.downcast_ref::<FilterExec>().unwrap().predicate().to_string();
        assert!(!predicate.contains("by pieces"), "a dictionary column is left to arrow: {predicate}");
    }
}
