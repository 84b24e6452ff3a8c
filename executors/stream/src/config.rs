//! What a pipeline member runs.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use cohort_connectors::kafka::Start;
use cohort_connectors::schema::schema_of;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PipelineConfig {
    pub name: String,
    /// None: the cluster's embedded broker.
    pub brokers: Option<String>,
    pub topic: String,
    pub group: String,
    pub start_latest: bool,
    /// (column, Arrow type), in order.
    pub schema: Vec<(String, String)>,
    /// Over `source`; None passes the decoded rows through.
    pub sql: Option<String>,
    pub sink: SinkConfig,
    pub max_records: usize,
    pub max_latency_ms: u64,
    pub on_error: OnError,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkConfig {
    Parquet {
        path: String,
        roll_bytes: usize,
        roll_ms: u64,
    },
    /// None: the source's brokers.
    Kafka {
        brokers: Option<String>,
        topic: String,
        /// Records and source offsets committed in one Kafka transaction;
        /// false: an idempotent producer, at-least-once.
        #[serde(default = "exactly_once_by_default")]
        exactly_once: bool,
    },
    /// A live table: each micro-batch appended whole, readable by SQL at once.
    Store {
        table: String,
        /// Upsert by these columns of the transform's output (the last row
        /// of each key wins); empty: append.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        key: Vec<String>,
    },
}

fn exactly_once_by_default() -> bool {
    true
}

/// What happens to a message that cannot be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// To `<topic>.dlq`, with the error in the `cohort.error` header.
    DeadLetter,
    /// Counted and dropped.
    Skip,
    /// The member stops with the error.
    Fail,
}

impl OnError {
    pub fn parse(s: &str) -> Option<OnError> {
        match s {
            "dead-letter" => Some(OnError::DeadLetter),
            "skip" => Some(OnError::Skip),
            "fail" => Some(OnError::Fail),
            _ => None,
        }
    }
}

impl PipelineConfig {
    pub fn start(&self) -> Start {
        if self.start_latest { Start::Latest } else { Start::Earliest }
    }

    pub fn max_latency(&self) -> Duration {
        Duration::from_millis(self.max_latency_ms)
    }

    pub fn source_schema(&self) -> Result<SchemaRef> {
        schema_of(&self.schema).map_err(|e| match e {
            cohort_connectors::Error::Schema { column, message } => {
                Error::Invalid { field: format!("source.kafka.schema.{column}"), message }
            }
            other => Error::Invalid { field: "source.kafka.schema".into(), message: other.to_string() },
        })
    }

    /// The transform's output schema, checking the SQL against the
    /// declared columns (a typo in a column name is caught here, at
    /// `pipeline create`, not in a running member).
    pub async fn output_schema(&self) -> Result<SchemaRef> {
        let schema = self.source_schema()?;
        let Some(sql) = &self.sql else { return Ok(schema) };
        let ctx = SessionContext::new();
        ctx.register_batch("source", RecordBatch::new_empty(schema))
            .map_err(|e| Error::Invalid { field: "transform.sql".into(), message: e.to_string() })?;
        let df = ctx
            .sql_with_options(sql, query_only())
            .await
            .map_err(|e| Error::Invalid { field: "transform.sql".into(), message: e.to_string() })?;
        Ok(Arc::new(df.schema().as_arrow().clone()))
    }
}

impl PipelineConfig {
    /// The declared columns the transform reads (all of them without one),
    /// in declared order: only these are decoded from each message, as a
    /// Parquet scan reads only the columns a query projects.
    pub async fn used_columns(&self) -> Result<Vec<(String, String)>> {
        let Some(sql) = &self.sql else { return Ok(self.schema.clone()) };
        let schema = self.source_schema()?;
        let ctx = SessionContext::new();
        ctx.register_batch("source", RecordBatch::new_empty(schema.clone()))?;
        let plan = ctx.sql_with_options(sql, query_only()).await?.into_optimized_plan()?;
        let mut used = BTreeSet::new();
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node
                && scan.table_name.table() == "source"
            {
                match &scan.projection {
                    Some(columns) => used.extend(columns.iter().copied()),
                    None => used.extend(0..schema.fields().len()),
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        if used.is_empty() {
            // `SELECT count(*) FROM source` reads no column, but rows must still be counted.
            used.insert(0);
        }
        Ok(self.schema.iter().enumerate().filter(|(i, _)| used.contains(i)).map(|(_, c)| c.clone()).collect())
    }
}

/// A transform is a query: no DDL, DML or `SET`.
pub fn query_only() -> SQLOptions {
    SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(sql: Option<&str>) -> PipelineConfig {
        let columns = [("id", "Int64"), ("url", "Utf8"), ("pad", "Utf8"), ("ts", "Int64")];
        PipelineConfig {
            name: "p".into(),
            brokers: None,
            topic: "t".into(),
            group: "g".into(),
            start_latest: false,
            schema: columns.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect(),
            sql: sql.map(str::to_string),
            sink: SinkConfig::Kafka { brokers: None, topic: "out".into(), exactly_once: true },
            max_records: 10,
            max_latency_ms: 10,
            on_error: OnError::Skip,
        }
    }

    fn names(columns: Vec<(String, String)>) -> Vec<String> {
        columns.into_iter().map(|(n, _)| n).collect()
    }

    #[tokio::test]
    async fn only_the_columns_the_transform_reads_are_decoded() {
        let used = config(Some("SELECT ts, id FROM source WHERE url LIKE '%checkout%'")).used_columns().await.unwrap();
        assert_eq!(names(used), ["id", "url", "ts"], "filter columns count, declared order kept");
        assert_eq!(names(config(None).used_columns().await.unwrap()).len(), 4, "no transform: every column");
        assert_eq!(names(config(Some("SELECT * FROM source")).used_columns().await.unwrap()).len(), 4);
        assert_eq!(names(config(Some("SELECT count(*) AS n FROM source")).used_columns().await.unwrap()), ["id"]);
    }
}
