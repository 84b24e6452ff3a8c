//! What a pipeline member runs.

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use cohort_connectors::kafka::Start;
use cohort_connectors::schema::schema_of;
use datafusion::execution::context::SQLOptions;
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
    Parquet { path: String, roll_bytes: usize, roll_ms: u64 },
    /// None: the source's brokers.
    Kafka { brokers: Option<String>, topic: String },
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

/// A transform is a query: no DDL, DML or `SET`.
pub fn query_only() -> SQLOptions {
    SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false)
}
