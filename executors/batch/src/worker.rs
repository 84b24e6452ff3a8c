//! A batch executor: one datafusion-distributed worker, serving plan
//! fragments over Arrow Flight. It holds no tables (plans travel with their
//! file groups); it spills to its allocation's directory rather than let
//! its slot's memory limit kill it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use datafusion::error::DataFusionError;
use datafusion::execution::SessionState;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion_distributed::{DistributedExt, Worker, WorkerQueryContext};

use crate::Channels;

/// What a worker may use.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    pub listen: SocketAddr,
    /// The slot's memory: queries spill beyond this.
    pub memory_bytes: usize,
    /// Where spill files go (the allocation's directory).
    pub spill_dir: PathBuf,
    /// In a cluster: how it serves (TLS, peers' certificates required) and
    /// how it calls other workers in shuffles.
    pub tls: Option<(tonic::transport::ServerTlsConfig, tonic::transport::ClientTlsConfig)>,
}

/// A runtime whose memory pool is `memory_bytes`, shared fairly among the
/// operators that can spill ([`crate::memory::QueryMemory`]), spilling into `spill_dir`, reading local
/// files and S3 buckets ([`crate::Stores`]).
///
/// A table's directory is listed afresh by every query: DataFusion's list
/// cache (on by default, kept forever) never saw files that workers,
/// pipelines or anyone else added, so an `INSERT INTO` or a pipeline's new
/// Parquet file stayed invisible to the process that had listed it once.
pub fn runtime(memory_bytes: usize, spill_dir: PathBuf) -> Result<Arc<RuntimeEnv>, DataFusionError> {
    RuntimeEnvBuilder::new()
        .with_object_list_cache_limit(0)
        .with_object_store_registry(Arc::new(crate::Stores::default()))
        .with_memory_pool(Arc::new(crate::memory::QueryMemory::new(memory_bytes)))
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Directories(vec![spill_dir])),
        )
        .build_arc()
}

/// Serves a worker until `shutdown` resolves.
pub async fn serve(settings: WorkerSettings, shutdown: impl Future<Output = ()>) -> Result<(), crate::Error> {
    std::fs::create_dir_all(&settings.spill_dir)?;
    // Workers talk to each other in shuffles: with the same timeouts.
    let (server_tls, client_tls) = settings.tls.clone().unzip();
    let channels = Channels::new(client_tls);
    let worker = Worker::from_session_builder(move |ctx: WorkerQueryContext| {
        let channels = channels.clone();
        async move {
            // Cached tables' scans arrive encoded, and read from stores through the same channels.
            let mut state = ctx
                .builder
                .with_distributed_channel_resolver(channels.clone())
                .with_distributed_user_codec(crate::cached::CacheCodec)
                .build();
            state.config_mut().set_extension(Arc::new(channels));
            Ok::<SessionState, DataFusionError>(state)
        }
    })
    .with_runtime_env(runtime(settings.memory_bytes, settings.spill_dir.clone())?);
    tracing::info!(listen = %settings.listen, memory = settings.memory_bytes, "batch worker serving");
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = server_tls {
        server = server.tls_config(tls)?;
    }
    server
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .add_service(crate::serving_health())
        .add_service(worker.into_worker_server())
        .serve_with_shutdown(settings.listen, shutdown)
        .await?;
    Ok(())
}
