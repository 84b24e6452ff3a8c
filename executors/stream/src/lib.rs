//! Pipeline members: the process a `stream` executor runs.
//!
//! A pipeline is an elastic gang of members, each one consumer of the
//! pipeline's Kafka group. A member loops: poll a micro-batch (up to
//! `max_records`, waiting at most `max_latency`), decode its JSON into
//! Arrow, run the transform SQL over it (`FROM source`) in-process with
//! DataFusion, hand the rows to the sink, and commit the offsets once the
//! sink has made them safe. Decoding and the transform run on a second
//! thread, one micro-batch behind the polling. See [`member`] for the
//! delivery rules.
//!
//! - [`config`]: what a member runs (built by the spec parser, passed as
//!   JSON), and its validation: the schema, the SQL against it;
//! - [`member`]: the loop;
//! - [`live`]: the `[sink.store]` sink, appending to a live table on the
//!   coordinator exactly once.

pub mod config;
pub mod live;
pub mod member;

pub use config::{OnError, PipelineConfig, SinkConfig};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Connector(#[from] cohort_connectors::Error),
    #[error("transform: {0}")]
    Transform(#[from] datafusion::error::DataFusionError),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("live table: {0}")]
    Live(String),
    #[error("the sink failed, so nothing after its last commit is committed: {0}")]
    SinkFailed(String),
    #[error("a bad record with on_error = \"fail\": {0}")]
    BadRecord(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
