//! `cohort bench control-plane`: measures a real local cluster (a
//! coordinator and agents as processes, as `cohort up` starts them):
//!
//! - submit → every slot running, for a gang of `--slots` command slots,
//!   repeated `--runs` times (p50, p99, max);
//! - sustained submissions accepted per second (parsed, scheduled and
//!   persisted; nodes cordoned so the jobs queue), against a same-run
//!   baseline of no-op status calls at the same concurrency.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cohort_proto as pb;

use super::percentile;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 30)]
    runs: u32,
    #[arg(long, default_value_t = 16)]
    slots: u32,
    #[arg(long, default_value_t = 2000)]
    submissions: u32,
    #[arg(long, default_value_t = 8)]
    concurrency: u32,
    #[arg(long, default_value_t = 2)]
    agents: u32,
}

pub async fn run(args: Args) -> Result<()> {
    let agents = args.agents;
    super::with_local_cluster(agents, |address, _| async move { measure(&args, &address).await }).await
}

async fn measure(args: &Args, address: &str) -> Result<()> {
    let channel = crate::cli::channel(address).await?;
    let mut jobs = pb::jobs_client::JobsClient::new(channel.clone());
    let mut nodes = pb::nodes_client::NodesClient::new(channel.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    while nodes.list(pb::ListNodesRequest {}).await?.into_inner().nodes.len() < args.agents as usize {
        if Instant::now() > deadline {
            bail!("agents did not register within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 1. Gang start latency.
    let spec = format!(
        "name = \"bench-gang\"\npriority = \"batch\"\n[gang]\nmin = {}\ncpu = \"10m\"\nmemory = \"16MiB\"\n[command]\nargv = [\"sleep\", \"30\"]\n",
        args.slots
    );
    let resident: u32 = nodes.list(pb::ListNodesRequest {}).await?.into_inner().nodes.iter().map(|n| n.slots).sum();
    let mut latencies = Vec::new();
    for _ in 0..args.runs {
        let started = Instant::now();
        let id = jobs
            .submit(pb::SubmitRequest { spec_toml: spec.clone(), file_name: "bench.toml".into() })
            .await?
            .into_inner()
            .job_id;
        loop {
            let job = jobs.get(pb::JobRef { job_id: id }).await?.into_inner();
            if job.slots.iter().all(|s| s.state == "running") {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("job {id} did not get all {} slots running within 30 s: {:?}", args.slots, job.reason);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        latencies.push(started.elapsed());
        jobs.cancel(pb::JobRef { job_id: id }).await?;
        // Let the agents reap the stopped executors before the next run
        // (what else runs, such as the warm SQL pool, stays).
        loop {
            let list = nodes.list(pb::ListNodesRequest {}).await?.into_inner().nodes;
            if list.iter().map(|n| n.slots).sum::<u32>() <= resident {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    latencies.sort();
    println!(
        "submit -> all {} slots running ({} runs, {} agents): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        args.slots,
        args.runs,
        args.agents,
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        latencies.last().context("no runs")?.as_secs_f64() * 1000.0
    );

    // 2. Sustained submissions: nodes cordoned, so jobs are accepted and queue.
    for n in nodes.list(pb::ListNodesRequest {}).await?.into_inner().nodes {
        nodes.cordon(pb::NodeRef { name: n.name }).await?;
    }
    let small =
        "name = \"queued\"\n[gang]\ncpu = \"100m\"\nmemory = \"16MiB\"\n[command]\nargv = [\"true\"]\n".to_string();
    let per_task = args.submissions / args.concurrency.max(1);
    let submit_rate = rate(args.concurrency, per_task, &channel, move |mut c| {
        let spec = small.clone();
        async move {
            c.submit(pb::SubmitRequest { spec_toml: spec, file_name: "queued.toml".into() }).await?;
            Ok(c)
        }
    })
    .await?;
    let status_rate = rate(args.concurrency, per_task, &channel, |mut c| async move {
        c.status(pb::StatusRequest {}).await?;
        Ok(c)
    })
    .await?;
    println!(
        "sustained submissions: {submit_rate:.0}/s accepted ({} jobs, {} concurrent clients); no-op status calls {status_rate:.0}/s; ratio {:.2}",
        per_task * args.concurrency,
        args.concurrency,
        submit_rate / status_rate
    );
    Ok(())
}

async fn rate<F, Fut>(concurrency: u32, per_task: u32, channel: &crate::cli::config::Channel, call: F) -> Result<f64>
where
    F: Fn(pb::jobs_client::JobsClient<crate::cli::config::Channel>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<pb::jobs_client::JobsClient<crate::cli::config::Channel>, tonic::Status>>
        + Send,
{
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let call = call.clone();
        let mut client = pb::jobs_client::JobsClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                client = call(client).await?;
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for t in tasks {
        t.await?.map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    }
    Ok((concurrency * per_task) as f64 / started.elapsed().as_secs_f64())
}
