//! `cohort bench ...`: measurements of a real local cluster, started as
//! `cohort up` starts it, each printing figures and same-run ratios.
//!
//! - `control_plane.rs`: gang start latency, submissions per second;
//! - `services.rs`: healing a killed instance, a rolling update;
//! - `tpch.rs`: the 22 TPC-H-derived queries through Flight SQL against
//!   single-process DataFusion;
//! - `stream.rs`: a pipeline member against a bare Kafka consumer;
//! - `live.rs`: live tables fed by many small ingests, appending and
//!   upserting, against the same rows cached.

pub mod control_plane;
pub mod live;
pub mod services;
pub mod stream;
pub mod tpch;

use std::future::Future;
use std::time::Duration;

use anyhow::Result;

/// Runs `f(address, data_dir)` against a local cluster of `agents` agents
/// on a free port and a temporary data dir, and stops the cluster after.
pub async fn with_local_cluster<T, F, Fut>(agents: u32, f: F) -> Result<T>
where
    F: FnOnce(String, std::path::PathBuf) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    with_local_cluster_args(agents, Vec::new(), f).await
}

/// As [`with_local_cluster`], with more `cohort coordinator` flags.
pub async fn with_local_cluster_args<T, F, Fut>(agents: u32, coordinator_args: Vec<String>, f: F) -> Result<T>
where
    F: FnOnce(String, std::path::PathBuf) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = std::env::temp_dir().join(format!("cohort-bench-{}", std::process::id()));
    let settings = crate::up::Settings {
        agents,
        data_dir: dir.clone(),
        listen: format!("127.0.0.1:{port}"),
        http: "127.0.0.1:0".into(),
        ports: crate::agent::DEFAULT_PORTS,
        coordinator_args,
        kafka: None,
    };
    // The bench's clients use the admin token `up` writes, not the user's config.
    let config = dir.join("client.toml");
    // SAFETY: set before any client thread reads the environment.
    unsafe { std::env::set_var("COHORT_CONFIG", &config) };
    let children = crate::up::start(&settings).await?;
    let client = crate::cli::config::load(&config)?;
    crate::cli::config::set_token(client.token);
    crate::cli::config::set_ca(client.ca)?;
    let result = f(settings.listen.clone(), dir.clone()).await;
    crate::up::stop(children).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The `q` quantile of sorted samples.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
