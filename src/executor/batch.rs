//! `cohort executor --kind batch -- worker|sql`: a datafusion-distributed
//! worker on the slot's `flight` port, sized to the slot (memory pool,
//! threads) and spilling into its allocation. In a `kind = "sql"` job,
//! slot 0 also runs the job's driver (`sql_job.rs`) and its end is the
//! job's end.
//!
//! Everything comes from the environment the agent sets: COHORT_PORT_FLIGHT,
//! COHORT_HOST, COHORT_CPU_MILLIS, COHORT_MEMORY_BYTES, COHORT_ALLOC_DIR,
//! and for jobs COHORT_SLOT, COHORT_JOB_ID, COHORT_ATTEMPT,
//! COHORT_GANG_SIZE, COHORT_COORDINATOR and COHORT_SQL.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use cohort_batch::WorkerSettings;

use super::sql_job;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn env_number(name: &str, default: u64) -> Result<u64> {
    match env(name) {
        None => Ok(default),
        Some(v) => v.parse().with_context(|| format!("{name}={v} is not a number")),
    }
}

pub fn run(argv: &[String]) -> Result<i32> {
    let mode = argv.first().map(String::as_str).unwrap_or("worker");
    if !matches!(mode, "worker" | "sql") {
        bail!("a batch executor runs `worker` or `sql`, not `{mode}`");
    }
    let port: u16 = env("COHORT_PORT_FLIGHT")
        .context("COHORT_PORT_FLIGHT is not set: a batch executor needs its port")?
        .parse()
        .context("COHORT_PORT_FLIGHT is not a port")?;
    // Bind where the agent is reached, so peers on other hosts get in.
    let ip = env("COHORT_HOST").and_then(|h| h.parse::<IpAddr>().ok()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let memory = env_number("COHORT_MEMORY_BYTES", 1 << 30)?.max(64 << 20) as usize;
    let cores = env_number("COHORT_CPU_MILLIS", 1000)?.div_ceil(1000).max(1) as usize;
    let dir = env("COHORT_ALLOC_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let drives = mode == "sql" && env("COHORT_SLOT").as_deref() == Some("0");
    // The driver of a job takes a quarter of the slot; its worker the rest.
    let worker_memory = if drives { memory / 4 * 3 } else { memory };
    let tls = crate::tls::executor_credentials()?.map(|c| (c.server_mutual(), c.client(crate::tls::AGENT_NAME)));
    let worker = WorkerSettings {
        listen: SocketAddr::new(ip, port),
        memory_bytes: worker_memory,
        spill_dir: dir.join("spill"),
        tls,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(cohort_batch::RUNTIME_THREAD_STACK)
        .worker_threads(cores.max(2))
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        let serve = cohort_batch::serve(worker, crate::agent::shutdown_signal());
        if !drives {
            serve.await?;
            return Ok(0);
        }
        let driver = sql_job::Driver::from_env(sql_job::Resources {
            cores,
            memory_bytes: memory / 4,
            spill_dir: dir.join("driver-spill"),
        })?;
        tokio::select! {
            served = serve => {
                served?;
                // Stopped (preempted, cancelled) before the driver finished.
                Ok(143)
            }
            code = driver.run() => Ok(code),
        }
    })
}
