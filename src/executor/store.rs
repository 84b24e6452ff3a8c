//! A store executor (`cohort executor --kind store -- serve`): holds
//! cached tables' partitions in memory and serves them over Arrow Flight
//! on its `flight` port, with its agent's certificate, and as files in
//! shared memory for readers on its host. It keeps at most three quarters
//! of its slot's memory in batches; the rest is the process and Flight's
//! buffers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, Result, bail};
use cohort_batch::store::{StoreSettings, serve_store};

pub fn run(argv: &[String]) -> Result<i32> {
    let mode = argv.first().map(String::as_str).unwrap_or("serve");
    if mode != "serve" {
        bail!("a store executor runs `serve`, not `{mode}`");
    }
    let env = |name: &str| std::env::var(name).ok();
    let port: u16 = env("COHORT_PORT_FLIGHT")
        .context("COHORT_PORT_FLIGHT is not set: a store needs its port")?
        .parse()
        .context("COHORT_PORT_FLIGHT is not a port")?;
    let ip = env("COHORT_HOST").and_then(|h| h.parse::<IpAddr>().ok()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let memory: usize = env("COHORT_MEMORY_BYTES").and_then(|m| m.parse().ok()).unwrap_or(1 << 30);
    let tls = crate::tls::executor_credentials()?.map(|c| c.server_mutual());
    // Partitions go to shared memory for readers on this host; the agent
    // removes the directory when this store ends, however it ends.
    let shm_dir = env("COHORT_ALLOC_DIR").map(|dir| cohort_batch::shm::store_dir(std::path::Path::new(&dir)));
    let settings = StoreSettings { listen: SocketAddr::new(ip, port), budget_bytes: memory / 4 * 3, tls, shm_dir };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(serve_store(settings, crate::agent::shutdown_signal()))?;
    Ok(0)
}
