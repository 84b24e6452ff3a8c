//! Where pipelines read and write.
//!
//! - [`schema`]: a pipeline's declared columns (`{ user_id = "Int64" }`)
//!   as an Arrow schema;
//! - [`json`]: JSON messages decoded straight into Arrow record batches,
//!   with each bad message isolated and named rather than failing the
//!   batch;
//! - [`kafka`]: the Kafka source (a consumer-group member that commits
//!   offsets only when told: after the sink has the data), the Kafka sink
//!   (an idempotent producer whose sends are awaited) and the dead-letter
//!   producer;
//! - [`parquet`]: the Parquet sink, whose files appear whole (written under
//!   a hidden name, then renamed), rolled by size and age;
//! - [`broker`]: the embedded, in-memory Kafka-protocol broker `cohort up`
//!   runs when no brokers are configured.
//!
//! Nothing here decides when to commit: the pipeline member does, after a
//! sink said its data is safe.

pub mod broker;
pub mod json;
pub mod kafka;
pub mod parquet;
pub mod schema;

/// What can go wrong in a connector.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("column `{column}`: {message}")]
    Schema { column: String, message: String },
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("Parquet: {0}")]
    Parquet(#[from] ::parquet::errors::ParquetError),
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
