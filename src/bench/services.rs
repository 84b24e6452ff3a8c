//! `cohort bench services`: on a local cluster, a service of `--instances`
//! HTTP servers (`python3 -m http.server`, TCP health checks every 500 ms):
//!
//! - kill -9 of one instance → a healthy replacement, `--repeats` times
//!   (each time a different instance, so every restart is a first one and
//!   waits the first backoff, 1 s): p50 and max;
//! - a rolling update of every instance to a new version, submitted →
//!   done, with the fewest healthy instances seen during it.

use std::time::{Duration, Instant};

use crate::cli::config::Channel;
use anyhow::{Context, Result, bail};
use cohort_proto as pb;

use super::percentile;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 10)]
    instances: u32,
    #[arg(long, default_value_t = 10)]
    repeats: u32,
    #[arg(long, default_value_t = 2)]
    agents: u32,
}

fn spec(instances: u32, version: &str) -> String {
    format!(
        r#"name = "bench-web"
kind = "service"
[gang]
cpu = "50m"
memory = "48MiB"
[command]
argv = ["python3", "-m", "http.server", "--bind", "127.0.0.1", "--directory", "/", "$COHORT_PORT_HTTP"]
env = {{ VERSION = "{version}" }}
[service]
instances = {instances}
ports = ["http"]
min_healthy = 0.9
[service.health]
tcp = true
interval = "500ms"
timeout = "1s"
grace = "5s"
"#
    )
}

pub async fn run(args: Args) -> Result<()> {
    if args.repeats > args.instances {
        bail!(
            "--repeats ({}) may not exceed --instances ({}): each instance is killed once",
            args.repeats,
            args.instances
        );
    }
    let agents = args.agents;
    super::with_local_cluster(agents, |address, _| async move { measure(&args, &address).await }).await
}

async fn healthy(jobs: &mut pb::jobs_client::JobsClient<Channel>, id: u64) -> Result<Vec<pb::Endpoint>> {
    Ok(jobs.endpoints(pb::JobRef { job_id: id }).await?.into_inner().endpoints)
}

async fn measure(args: &Args, address: &str) -> Result<()> {
    let channel = crate::cli::channel(address).await?;
    let mut jobs = pb::jobs_client::JobsClient::new(channel);
    let mut nodes = pb::nodes_client::NodesClient::new(crate::cli::channel(address).await?);
    let deadline = Instant::now() + Duration::from_secs(20);
    while nodes.list(pb::ListNodesRequest {}).await?.into_inner().nodes.len() < args.agents as usize {
        if Instant::now() > deadline {
            bail!("agents did not register within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // python's http.server takes its port as an argument: the shell expands it.
    let submit = |version: &str| {
        pb::SubmitRequest {
        spec_toml: spec(args.instances, version).replace(
            r#"argv = ["python3", "-m", "http.server", "--bind", "127.0.0.1", "--directory", "/", "$COHORT_PORT_HTTP"]"#,
            r#"argv = ["sh", "-c", "exec python3 -m http.server --bind 127.0.0.1 --directory / $COHORT_PORT_HTTP"]"#,
        ),
        file_name: "bench-web.toml".into(),
    }
    };
    let id = jobs.submit(submit("v1")).await?.into_inner().job_id;
    let n = args.instances as usize;
    let started = Instant::now();
    while healthy(&mut jobs, id).await?.len() < n {
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the service did not reach {n} healthy instances within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("{n} instances healthy {:.1} s after submission", started.elapsed().as_secs_f64());

    let mut heal = Vec::new();
    for round in 0..args.repeats as usize {
        let endpoints = healthy(&mut jobs, id).await?;
        let target = endpoints.iter().find(|e| e.slot as usize == round).context("an instance to kill")?;
        let pid = pid_serving(target.port).with_context(|| format!("no process serves port {}", target.port))?;
        let killed = Instant::now();
        // SAFETY: signalling a process of our own cluster.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        // Wait for its loss to show, then for a healthy replacement.
        loop {
            let now = healthy(&mut jobs, id).await?;
            let replaced = now.iter().any(|e| e.slot as usize == round && e.port != target.port)
                || (now.len() == n && !now.iter().any(|e| e.port == target.port && e.slot == target.slot));
            if replaced && now.len() == n {
                break;
            }
            if killed.elapsed() > Duration::from_secs(60) {
                bail!("instance {round} was not replaced within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        heal.push(killed.elapsed());
    }
    heal.sort();
    println!(
        "kill -9 of an instance → healthy replacement ({} repeats): p50 {:.2} s, max {:.2} s (restart backoff 1 s, health checks every 500 ms)",
        heal.len(),
        percentile(&heal, 0.5).as_secs_f64(),
        heal.last().context("no repeats")?.as_secs_f64()
    );

    let update = Instant::now();
    jobs.submit(submit("v2")).await?;
    let mut fewest = n;
    loop {
        fewest = fewest.min(healthy(&mut jobs, id).await?.len());
        let job = jobs.get(pb::JobRef { job_id: id }).await?.into_inner();
        match job.deployment.as_ref().map(|d| d.state.as_str()) {
            Some("done") => break,
            Some("rolled-back") => {
                bail!("the update rolled back: {}", job.deployment.map(|d| d.reason).unwrap_or_default())
            }
            _ => {}
        }
        if update.elapsed() > Duration::from_secs(300) {
            bail!("the rolling update did not finish within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "rolling update of {n} instances: {:.1} s from submission to done; never fewer than {fewest} healthy (min_healthy 0.9 → {})",
        update.elapsed().as_secs_f64(),
        (0.9 * n as f64).ceil()
    );
    jobs.cancel(pb::JobRef { job_id: id }).await?;
    Ok(())
}

/// The pid of the http.server listening on `port`.
fn pid_serving(port: u32) -> Option<u32> {
    let needle = format!("http.server --bind 127.0.0.1 --directory / {port}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        (cmdline.contains(&needle) && !cmdline.starts_with("sh ")).then_some(pid)
    })
}
