//! `cohort executor --kind stream -- pipeline`: one member of a pipeline.
//!
//! Everything comes from the environment the agent sets: COHORT_PIPELINE
//! (the pipeline, as JSON), COHORT_KAFKA_BOOTSTRAP (the cluster's brokers,
//! used when the pipeline names none), COHORT_JOB_ID, COHORT_SLOT and
//! COHORT_ALLOC_ID (which name the member to Kafka and in file names),
//! and, for a `[sink.store]` table, COHORT_COORDINATOR and COHORT_TOKEN.
//! SIGTERM (preemption, pause, delete) makes the member commit what it has
//! and exit 0. With COHORT_PORT_HEALTH set, it answers gRPC health checks
//! there.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use cohort_stream::PipelineConfig;

use crate::spec::PIPELINE_ENV;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: i32) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn run(argv: &[String]) -> Result<i32> {
    if argv.first().map(String::as_str) != Some("pipeline") {
        bail!("a stream executor runs `pipeline`, not {argv:?}");
    }
    let text = std::env::var(PIPELINE_ENV).with_context(|| format!("{PIPELINE_ENV} is not set"))?;
    let config: PipelineConfig =
        serde_json::from_str(&text).with_context(|| format!("{PIPELINE_ENV} is not a pipeline"))?;
    let brokers = std::env::var("COHORT_KAFKA_BOOTSTRAP").unwrap_or_default();
    if config.brokers.is_none() && brokers.is_empty() {
        bail!("pipeline {}: no brokers in its spec and COHORT_KAFKA_BOOTSTRAP is not set", config.name);
    }
    serve_health()?;
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| "0".into());
    let slot: u32 = var("COHORT_SLOT").parse().context("COHORT_SLOT is not a slot number")?;
    let id = format!("{}-{slot}-{}", config.name, var("COHORT_ALLOC_ID"));
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        for sig in [libc::SIGTERM, libc::SIGINT] {
            libc::signal(sig, on_stop as *const () as libc::sighandler_t);
        }
    }
    // A `[sink.store]` table lives in the coordinator; the member acts with its job's token.
    let coordinator = match std::env::var("COHORT_COORDINATOR") {
        Ok(address) if matches!(config.sink, cohort_stream::SinkConfig::Store { .. }) => {
            Some(cohort_stream::live::Coordinator {
                endpoint: crate::cli::config::endpoint(&address)?.connect_timeout(std::time::Duration::from_secs(5)),
                token: std::env::var("COHORT_TOKEN").ok(),
            })
        }
        _ => None,
    };
    let progress = cohort_stream::member::Progress::default();
    let counters = cohort_stream::member::run(&config, &brokers, &id, slot, &STOP, &progress, coordinator.as_ref())?;
    println!(
        "member {id} stopped: {} records in, {} out, {} bad",
        counters.records_in, counters.records_out, counters.bad
    );
    Ok(0)
}

/// Answers the agent's gRPC health checks from a thread of its own for as
/// long as the process runs, so that a member that is stopped (SIGSTOP) or
/// hung answers nothing and is restarted. The port is bound here, so that
/// a taken one fails the member at once.
fn serve_health() -> Result<()> {
    let Ok(port) = std::env::var("COHORT_PORT_HEALTH") else { return Ok(()) };
    let port: u16 = port.parse().context("COHORT_PORT_HEALTH is not a port")?;
    // Where the agent reaches its executors, as a batch executor binds.
    let ip = std::env::var("COHORT_HOST")
        .ok()
        .and_then(|h| h.parse::<std::net::IpAddr>().ok())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let listener = std::net::TcpListener::bind((ip, port)).with_context(|| format!("cannot listen on {ip}:{port}"))?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("health".into()).spawn(move || {
        let served = runtime.block_on(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(tokio::net::TcpListener::from_std(listener)?);
            tonic::transport::Server::builder()
                .add_service(cohort_proto::health::server::health_reporter().1)
                .serve_with_incoming(incoming)
                .await
                .map_err(anyhow::Error::from)
        });
        if let Err(e) = served {
            tracing::error!(error = %e, "the health service stopped; the agent will restart this member");
        }
    })?;
    Ok(())
}
