//! Cohort's batch executors and the SQL driver around them.
//!
//! DataFusion is the query engine and datafusion-distributed the
//! distributed one; this crate supplies what they leave to the platform:
//!
//! - `worker.rs`: one datafusion-distributed worker per slot, with a
//!   memory pool the size of the slot and spill files in its allocation;
//! - `channels.rs`: worker connections with connect timeouts and keepalive;
//! - `engine.rs`: the driver: plans each query over the workers it is
//!   given now and retries it, re-planned, when one of them is lost;
//! - `compute.rs`: threads of the engine's own for what runs in the
//!   driver's process, so queries never starve what else it serves;
//! - `statements.rs`: what a statement does to the catalog and to storage;
//! - `output.rs`: outputs staged beside their target and moved in at commit,
//!   so a failed or preempted job leaves nothing half-written in sight;
//! - `stores.rs`: local files, and S3 buckets configured from the environment;
//! - `store.rs`: store executors, holding cached tables' partitions in
//!   memory and serving them over Arrow Flight;
//! - `shm.rs`: those partitions as Arrow IPC files in shared memory, which
//!   readers on the store's host map without copying;
//! - `cached.rs`: the catalog's side of a cached table: its provider, the
//!   scan that reads it from the stores, and the codec that ships that
//!   scan to workers;
//! - `build_sides.rs`: joins' build sides started when first polled, after
//!   the dynamic filters of the joins above them are set;
//! - `estimates.rs`: filters on cached tables estimated on a sample of
//!   their rows, for the planner's choice of join sides;
//! - `readers.rs`: the queries running now, which hold the partitions a
//!   compaction replaced until they end;
//! - `routing.rs`: the tasks that read cached partitions, split by host
//!   and sent to workers on the hosts that hold them;
//! - `like.rs`: `LIKE` patterns of literal pieces between `%`s matched by
//!   finding the pieces in turn, not by a regular expression;
//! - `live.rs`: live tables, which grow by Flight SQL bulk ingest (and so
//!   by pipelines) while queries read whole ingests only;
//! - `tpch.rs`: TPC-H data (tpchgen) and the 22 queries, for benchmarks.
//!
//! It knows nothing of the coordinator: where the workers are and where
//! table definitions are kept is told to it ([`WorkerSource`], [`TableDef`]).

mod build_sides;
pub mod cached;
mod caching;
mod channels;
mod compute;
mod decimals;
mod engine;
mod estimates;
mod expr_rewrite;
mod like;
pub mod live;
mod memory;
mod output;
mod readers;
mod routing;
mod runtime_filters;
pub mod shm;
mod statements;
pub mod store;
mod stores;
pub mod tpch;
mod worker;

pub use channels::{CONNECT_TIMEOUT, Channels};

/// The stack of every thread that plans or runs SQL (the runtimes of the
/// coordinator, its compute threads and the workers): DataFusion clones,
/// prints and drops an expression recursively, and one as deep as
/// [`MAX_EXPRESSION_DEPTH`] needs more than tokio's 2 MiB (16 MiB overflow
/// in an unoptimized build). Untouched stack costs no memory.
pub const RUNTIME_THREAD_STACK: usize = 32 << 20;
pub use engine::{
    EngineSettings, Footprint, QueryOutcome, SqlEngine, WorkerSource, fit_parameters, footprint, is_worker_loss,
};
pub use output::{Staged, commit_all, discard_all};
pub use statements::{
    CacheDef, CatalogChange, MAX_EXPRESSION_DEPTH, Statement, TableDef, check_expression_depth, classify,
    same_definition, split_statements,
};
pub use stores::Stores;
pub use worker::{WorkerSettings, runtime, serve};

use cohort_proto::health::pb::health_server::{Health, HealthServer};

/// gRPC's health service, answering `SERVING` for the server as a whole:
/// agents probe it, since a port that accepts connections proves nothing
/// of a process that is stopped or wedged (the kernel completes the
/// handshake for it).
fn serving_health() -> HealthServer<impl Health> {
    cohort_proto::health::server::health_reporter().1
}

/// What can go wrong running SQL on batch executors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// DataFusion refused or failed the statement; its message says why.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// The statement is not allowed where it was sent.
    #[error("{0}")]
    Invalid(String),
    /// No worker is serving, and none came within the wait.
    #[error("no batch executor is serving: {0}")]
    NoWorkers(String),
    /// Something the statement needs (the catalog's store, a driver's
    /// coordinator) cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// Every attempt lost a worker mid-query.
    #[error("the query lost a worker on each of its {attempts} attempts; last: {last}")]
    WorkersLost { attempts: u32, last: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serve: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl From<std::io::Error> for Error {
    fn from(source: std::io::Error) -> Self {
        Error::Io { context: "i/o".into(), source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
