//! Client commands: talk to a coordinator over gRPC, print tables or JSON.

use std::io::Write;
use std::path::PathBuf;

use super::config::Channel;
use anyhow::{Context, Result};
use clap::ValueEnum;
use cohort_proto as pb;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::json;

#[derive(Clone, Copy, ValueEnum, Default)]
pub enum Output {
    #[default]
    Table,
    Json,
    /// Comma-separated values (`cohort sql`; other commands print tables).
    Csv,
}

/// A channel to the coordinator whose calls carry this process's token.
pub async fn channel(coordinator: &str) -> Result<Channel> {
    let channel = super::config::endpoint(coordinator)?
        .connect()
        .await
        .with_context(|| format!("cannot reach the coordinator at {coordinator} (is `cohort up` running? set --coordinator or COHORT_COORDINATOR)"))?;
    Ok(super::config::with_token(channel))
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

/// A spec file's text; one too large to be a spec is not read.
fn read_spec(file: &PathBuf) -> Result<String> {
    let size = std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?.len();
    if size > crate::spec::MAX_SPEC_BYTES as u64 {
        anyhow::bail!(
            "{}: the spec is {size} bytes; at most {} are accepted",
            file.display(),
            crate::spec::MAX_SPEC_BYTES
        );
    }
    std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
}

pub async fn submit(coordinator: &str, file: &PathBuf, output: Output) -> Result<()> {
    let text = read_spec(file)?;
    // Check locally first: the same parser as the coordinator, so errors come back at once.
    crate::spec::parse_job(&file.display().to_string(), &text)?;
    let mut jobs = pb::jobs_client::JobsClient::new(channel(coordinator).await?);
    let id = jobs
        .submit(pb::SubmitRequest { spec_toml: text, file_name: file.display().to_string() })
        .await
        .map_err(status_error)?
        .into_inner()
        .job_id;
    match output {
        Output::Json => println!("{}", json!({ "id": id })),
        Output::Table | Output::Csv => println!("{id}"),
    }
    Ok(())
}

fn ports_json(ports: &std::collections::HashMap<String, u32>) -> serde_json::Value {
    let sorted: std::collections::BTreeMap<&String, &u32> = ports.iter().collect();
    json!(sorted)
}

fn job_json(j: &pb::Job) -> serde_json::Value {
    json!(crate::json::JobDoc::from(j))
}

pub async fn jobs(coordinator: &str, output: Output) -> Result<()> {
    let mut client = pb::jobs_client::JobsClient::new(channel(coordinator).await?);
    let list = client.list(pb::ListJobsRequest {}).await.map_err(status_error)?.into_inner().jobs;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&list.iter().map(job_json).collect::<Vec<_>>())?),
        Output::Table | Output::Csv => {
            let mut t = table(&["id", "name", "state", "slots", "attempts", "priority", "queue", "reason"]);
            for j in &list {
                let running = j.slots.iter().filter(|s| s.state == "running" || s.state == "starting").count();
                t.add_row(vec![
                    j.id.to_string(),
                    j.name.clone(),
                    j.state.clone(),
                    format!("{running}/{}", j.slots.len()),
                    j.attempts.to_string(),
                    j.priority.clone(),
                    j.queue.clone(),
                    in_one_line(&j.reason),
                ]);
            }
            println!("{t}");
        }
    }
    Ok(())
}

/// A job's id from what the user typed: a number, or a job's name (the newest of that name).
pub async fn resolve(channel: &Channel, id_or_name: &str) -> Result<u64> {
    if let Ok(id) = id_or_name.parse() {
        return Ok(id);
    }
    let mut client = pb::jobs_client::JobsClient::new(channel.clone());
    let found = client.resolve(pb::ResolveRequest { name: id_or_name.to_string() }).await.map_err(status_error)?;
    Ok(found.into_inner().job_id)
}

pub async fn job(coordinator: &str, id: &str, output: Output) -> Result<()> {
    let channel = channel(coordinator).await?;
    let id = resolve(&channel, id).await?;
    let j = pb::jobs_client::JobsClient::new(channel).get(pb::JobRef { job_id: id }).await.map_err(status_error)?;
    print_job(&j.into_inner(), output)
}

/// What can be done to a job as a whole.
#[derive(Clone, Copy)]
pub enum JobAction {
    Cancel,
    Pause,
    Resume,
}

pub async fn job_action(coordinator: &str, id: &str, action: JobAction, output: Output) -> Result<()> {
    let channel = channel(coordinator).await?;
    let job = pb::JobRef { job_id: resolve(&channel, id).await? };
    let mut client = pb::jobs_client::JobsClient::new(channel);
    let j = match action {
        JobAction::Cancel => client.cancel(job).await,
        JobAction::Pause => client.pause(job).await,
        JobAction::Resume => client.resume(job).await,
    };
    print_job(&j.map_err(status_error)?.into_inner(), output)
}

pub async fn scale(coordinator: &str, id: &str, instances: u32, output: Output) -> Result<()> {
    let channel = channel(coordinator).await?;
    let job_id = resolve(&channel, id).await?;
    let j = pb::jobs_client::JobsClient::new(channel)
        .scale(pb::ScaleRequest { job_id, instances })
        .await
        .map_err(status_error)?;
    print_job(&j.into_inner(), output)
}

pub async fn endpoints(coordinator: &str, id: &str, output: Output) -> Result<()> {
    let channel = channel(coordinator).await?;
    let job_id = resolve(&channel, id).await?;
    let list = pb::jobs_client::JobsClient::new(channel)
        .endpoints(pb::JobRef { job_id })
        .await
        .map_err(status_error)?
        .into_inner()
        .endpoints;
    let address = |e: &pb::Endpoint| if e.port == 0 { e.host.clone() } else { format!("{}:{}", e.host, e.port) };
    match output {
        Output::Json => {
            let v: Vec<serde_json::Value> = list
                .iter()
                .map(|e| json!({ "address": address(e), "host": e.host, "port": e.port, "ports": ports_json(&e.ports), "node": e.node, "slot": e.slot }))
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Table | Output::Csv => {
            for e in &list {
                println!("{}", address(e));
            }
        }
    }
    Ok(())
}

fn print_job(j: &pb::Job, output: Output) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&job_json(j))?),
        Output::Table | Output::Csv => {
            println!("job {} ({}, {}): {}", j.id, j.name, j.kind, j.state);
            println!("priority {}, queue {}, attempts {}", j.priority, j.queue, j.attempts);
            if !j.reason.is_empty() {
                println!("reason: {}", j.reason);
            }
            if let Some(d) = &j.deployment {
                let mut line = format!(
                    "deployment: {} ({} of {} new instances healthy, {} old)",
                    d.state, d.healthy_new, d.instances, d.healthy_old
                );
                if !d.reason.is_empty() {
                    line += &format!("; {}", d.reason);
                }
                println!("{line}");
            }
            let service = j.slots.iter().any(|s| s.healthy.is_some());
            let mut header = vec!["slot", "node", "state", "exit code"];
            if service {
                header.extend(["healthy", "ports"]);
            }
            let mut t = table(&header);
            for s in &j.slots {
                let mut row = vec![
                    s.index.to_string(),
                    s.node.clone(),
                    s.state.clone(),
                    if s.state == "succeeded" || s.state == "failed" { s.exit_code.to_string() } else { String::new() },
                ];
                if service {
                    let mut ports: Vec<String> = s.ports.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    ports.sort();
                    row.push(s.healthy.map_or(String::new(), |h| if h { "yes" } else { "no" }.into()));
                    row.push(ports.join(","));
                }
                t.add_row(row);
            }
            println!("{t}");
            if !j.history.is_empty() {
                let mut h = table(&["attempt", "started", "ended", "nodes", "outcome", "why"]);
                for a in &j.history {
                    let outcome = if a.charged { format!("{} (attempt used)", a.outcome) } else { a.outcome.clone() };
                    h.add_row(vec![
                        a.attempt.to_string(),
                        clock(a.started_ms),
                        if a.ended_ms > 0 { clock(a.ended_ms) } else { String::new() },
                        a.nodes.join(","),
                        outcome,
                        in_one_line(&a.reason),
                    ]);
                }
                println!("history\n{h}");
            }
        }
    }
    Ok(())
}

/// A time of day, UTC, for tables.
fn clock(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

pub async fn logs(coordinator: &str, id: &str, slot: u32, follow: bool) -> Result<()> {
    let channel = channel(coordinator).await?;
    let id = resolve(&channel, id).await?;
    let mut client = pb::jobs_client::JobsClient::new(channel);
    let mut stream =
        client.logs(pb::LogsRequest { job_id: id, slot, follow }).await.map_err(status_error)?.into_inner();
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = stream.message().await.map_err(status_error)? {
        out.write_all(&chunk.data)?;
        out.flush()?;
    }
    Ok(())
}

fn node_json(n: &pb::Node) -> serde_json::Value {
    json!(crate::json::NodeDoc::from(n))
}

pub async fn nodes(coordinator: &str, output: Output) -> Result<()> {
    let mut client = pb::nodes_client::NodesClient::new(channel(coordinator).await?);
    let list = client.list(pb::ListNodesRequest {}).await.map_err(status_error)?.into_inner().nodes;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&list.iter().map(node_json).collect::<Vec<_>>())?),
        Output::Table | Output::Csv => {
            use cohort_scheduler::resources::{format_bytes, format_cpu};
            let mut t =
                table(&["node", "state", "cpu used/total", "memory used/total", "slots", "isolation", "runs as"]);
            for n in &list {
                let cap = n.capacity.unwrap_or_default();
                let used = n.allocated.unwrap_or_default();
                t.add_row(vec![
                    n.name.clone(),
                    n.state.clone(),
                    format!("{}/{}", format_cpu(used.cpu_millis), format_cpu(cap.cpu_millis)),
                    format!("{}/{}", format_bytes(used.memory_bytes), format_bytes(cap.memory_bytes)),
                    n.slots.to_string(),
                    n.isolation.clone(),
                    n.runs_as.clone(),
                ]);
            }
            println!("{t}");
        }
    }
    Ok(())
}

pub enum NodeAction {
    Cordon,
    Uncordon,
    Drain,
}

pub async fn node_action(coordinator: &str, name: &str, action: NodeAction, output: Output) -> Result<()> {
    let mut client = pb::nodes_client::NodesClient::new(channel(coordinator).await?);
    let req = pb::NodeRef { name: name.to_string() };
    let node = match action {
        NodeAction::Cordon => client.cordon(req).await,
        NodeAction::Uncordon => client.uncordon(req).await,
        NodeAction::Drain => client.drain(req).await,
    }
    .map_err(status_error)?
    .into_inner();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&node_json(&node))?),
        Output::Table | Output::Csv => println!("{}: {}", node.name, node.state),
    }
    Ok(())
}

/// Prints job events as they happen: one job until it ends, or all until interrupted.
pub async fn watch(coordinator: &str, job: Option<&str>, output: Output) -> Result<()> {
    let channel = channel(coordinator).await?;
    let job = match job {
        Some(j) => Some(resolve(&channel, j).await?),
        None => None,
    };
    let mut client = pb::jobs_client::JobsClient::new(channel);
    let mut stream =
        client.watch(pb::WatchRequest { job_id: job.unwrap_or(0) }).await.map_err(status_error)?.into_inner();
    if let Some(id) = job {
        // The job may have ended before the watch began.
        let now = client.get(pb::JobRef { job_id: id }).await.map_err(status_error)?.into_inner();
        if matches!(now.state.as_str(), "succeeded" | "failed" | "cancelled") {
            println!("job {id} already {}", now.state);
            return Ok(());
        }
    }
    while let Some(e) = stream.message().await.map_err(status_error)? {
        match output {
            Output::Json => {
                println!("{}", json!({ "job": e.job_id, "at_ms": e.at_ms, "state": e.state, "what": e.what }))
            }
            Output::Table | Output::Csv => println!("job {} [{}] {}", e.job_id, e.state, e.what),
        }
        if job.is_some() && matches!(e.state.as_str(), "succeeded" | "failed" | "cancelled") {
            break;
        }
    }
    Ok(())
}

pub async fn status(coordinator: &str, output: Output) -> Result<()> {
    let mut client = pb::jobs_client::JobsClient::new(channel(coordinator).await?);
    let s = client.status(pb::StatusRequest {}).await.map_err(status_error)?.into_inner();
    match output {
        Output::Json => println!(
            "{}",
            json!({
                "coordinator": s.coordinator,
                "http": s.http,
                "kafka_bootstrap": s.kafka_bootstrap,
                "kafka_embedded": s.kafka_embedded,
                "agents": s.agents
            })
        ),
        Output::Table | Output::Csv => {
            println!("coordinator {} with {} agent(s)", s.coordinator, s.agents);
            match (s.kafka_bootstrap.is_empty(), s.kafka_embedded) {
                (true, _) => println!("kafka: none configured (pipelines must name their brokers)"),
                (false, true) => println!(
                    "kafka: {} (embedded broker: in memory, for trying Cohort out; --kafka-brokers for a real cluster)",
                    s.kafka_bootstrap
                ),
                (false, false) => println!("kafka: {}", s.kafka_bootstrap),
            }
            println!("web UI: https://{}   (/metrics, /api/v1/, /healthz, /readyz)", s.http);
        }
    }
    Ok(())
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(header.to_vec());
    t
}

/// A reason in one table cell: its first line and, where it quotes a
/// slot's output, that output's last line (`... its output ends: boom`).
fn in_one_line(s: &str) -> String {
    let mut lines = s.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("");
    let line = match lines.next_back() {
        Some(last) => format!("{first} {last}"),
        None => first.to_string(),
    };
    match line.char_indices().nth(100) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// The contract's pipeline state: `running`, `pending`, `paused`, `failed`,
/// or the job's own word once it ended (`cancelled` after a delete).
fn pipeline_state(j: &pb::Job) -> &str {
    match j.state.as_str() {
        "running" | "pending" | "failed" | "paused" => &j.state,
        "starting" => "pending",
        other => other,
    }
}

pub async fn pipeline_create(coordinator: &str, file: &PathBuf, output: Output) -> Result<()> {
    let text = read_spec(file)?;
    // A file that is no TOML goes on, to be refused with its syntax error's line.
    if !crate::spec::is_pipeline(&text) && text.parse::<toml::Table>().is_ok() {
        anyhow::bail!(
            "{}: not a pipeline spec (it has no [source.kafka] table); jobs go to `cohort submit`",
            file.display()
        );
    }
    submit(coordinator, file, output).await
}

pub async fn pipelines(coordinator: &str, output: Output) -> Result<()> {
    let mut client = pb::jobs_client::JobsClient::new(channel(coordinator).await?);
    let list = client.list(pb::ListJobsRequest {}).await.map_err(status_error)?.into_inner().jobs;
    // A deleted pipeline is gone from the list (its job's history keeps it);
    // a failed one stays, with why.
    let list: Vec<&pb::Job> = list.iter().filter(|j| j.kind == "pipeline" && j.state != "cancelled").collect();
    match output {
        Output::Json => {
            let rows: Vec<serde_json::Value> = list
                .iter()
                .map(|j| json!({ "id": j.id, "name": j.name, "state": pipeline_state(j), "members": members_json(j) }))
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        Output::Table | Output::Csv => {
            let mut t = table(&["id", "name", "state", "members", "reason"]);
            for j in list {
                let running = j.slots.iter().filter(|s| s.state == "running").count();
                t.add_row(vec![
                    j.id.to_string(),
                    j.name.clone(),
                    pipeline_state(j).to_string(),
                    format!("{running}/{}", j.slots.len()),
                    in_one_line(&j.reason),
                ]);
            }
            println!("{t}");
        }
    }
    Ok(())
}

fn members_json(j: &pb::Job) -> serde_json::Value {
    j.slots.iter().map(|s| json!({ "member": s.index, "node": s.node, "state": s.state })).collect()
}

/// A running member's last progress line (members print one every 10 s
/// and when they stop), read from its log.
async fn member_progress(channel: &Channel, job: u64, slot: u32) -> Option<Vec<(String, f64)>> {
    let mut client = pb::jobs_client::JobsClient::new(channel.clone());
    let request = pb::LogsRequest { job_id: job, slot, follow: false };
    let mut stream = client.logs(request).await.ok()?.into_inner();
    let mut text = Vec::new();
    while let Ok(Some(chunk)) = stream.message().await {
        text.extend_from_slice(&chunk.data);
    }
    String::from_utf8_lossy(&text).lines().rev().find_map(cohort_stream::member::parse_progress)
}

pub async fn pipeline_get(coordinator: &str, name: &str, output: Output) -> Result<()> {
    let channel = channel(coordinator).await?;
    let job_id = resolve(&channel, name).await?;
    let p = pb::jobs_client::JobsClient::new(channel.clone())
        .pipeline(pb::JobRef { job_id })
        .await
        .map_err(status_error)?
        .into_inner();
    let j = p.job.clone().unwrap_or_default();
    let lag: i64 = p.partitions.iter().map(|x| x.lag).sum();
    let mut progress = Vec::new();
    for s in &j.slots {
        let running = s.state == "running";
        progress.push(if running { member_progress(&channel, job_id, s.index).await } else { None });
    }
    let figure =
        |i: usize, key: &str| progress[i].as_ref().and_then(|f| f.iter().find(|(k, _)| k == key).map(|(_, v)| *v));
    match output {
        Output::Json => {
            let partitions: Vec<serde_json::Value> = p
                .partitions
                .iter()
                .map(|x| {
                    let committed = (x.committed >= 0).then_some(x.committed);
                    json!({ "partition": x.partition, "committed": committed, "end": x.end, "lag": x.lag })
                })
                .collect();
            let mut v = json!({
                "id": j.id,
                "name": j.name,
                "state": pipeline_state(&j),
                "reason": j.reason,
                "members": j.slots.iter().enumerate().map(|(i, s)| {
                    let mut m = json!({ "member": s.index, "node": s.node, "state": s.state });
                    if let Some(figures) = &progress[i] {
                        for (k, v) in figures {
                            m[k] = json!(v);
                        }
                    }
                    m
                }).collect::<Vec<_>>(),
                "topic": p.topic,
                "group": p.group,
                "brokers": p.brokers,
                "sink": p.sink,
                "lag": lag,
                "partitions": partitions,
            });
            if !p.lag_error.is_empty() {
                v["lag_error"] = json!(p.lag_error);
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Table | Output::Csv => {
            println!("pipeline {} (job {}): {}", j.name, j.id, pipeline_state(&j));
            println!("source: topic {} on {} (group {}); sink: {}", p.topic, p.brokers, p.group, p.sink);
            if !j.reason.is_empty() {
                println!("reason: {}", j.reason);
            }
            let mut members =
                table(&["member", "node", "state", "in/s", "out/s", "records in", "bad", "dead-lettered"]);
            for (i, s) in j.slots.iter().enumerate() {
                let shown = |key: &str| figure(i, key).map_or("-".to_string(), |v| format!("{v:.0}"));
                members.add_row(vec![
                    s.index.to_string(),
                    s.node.clone(),
                    s.state.clone(),
                    shown("in_per_s"),
                    shown("out_per_s"),
                    shown("in"),
                    shown("bad"),
                    shown("dead_lettered"),
                ]);
            }
            println!("{members}");
            if p.lag_error.is_empty() {
                let mut parts = table(&["partition", "committed", "end", "lag"]);
                for x in &p.partitions {
                    let committed = if x.committed >= 0 { x.committed.to_string() } else { "-".into() };
                    parts.add_row(vec![x.partition.to_string(), committed, x.end.to_string(), x.lag.to_string()]);
                }
                println!("{parts}");
                println!("total lag: {lag} record(s) (member figures: each member's last progress line, every 10 s)");
            } else {
                println!("lag unknown: {}", p.lag_error);
            }
        }
    }
    Ok(())
}

fn token_row(t: &pb::TokenInfo) -> serde_json::Value {
    json!({
        "id": t.id, "role": t.role, "queues": t.queues, "created_ms": t.created_ms,
        "expires_ms": (t.expires_ms > 0).then_some(t.expires_ms), "revoked": t.revoked, "description": t.description,
    })
}

pub async fn token_create(
    coordinator: &str,
    role: &str,
    queues: Vec<String>,
    ttl: Option<std::time::Duration>,
    description: String,
    output: Output,
) -> Result<()> {
    let mut client = pb::tokens_client::TokensClient::new(channel(coordinator).await?);
    let request = pb::CreateTokenRequest {
        role: role.to_string(),
        queues,
        ttl_ms: ttl.map_or(0, |d| d.as_millis() as u64),
        description,
    };
    let created = client.create(request).await.map_err(status_error)?.into_inner();
    let info = created.info.unwrap_or_default();
    match output {
        Output::Json => {
            let mut v = token_row(&info);
            v["token"] = json!(created.token);
            println!("{v}");
        }
        Output::Table | Output::Csv => {
            println!("{}", created.token);
            eprintln!("token {} ({}): shown once; only its hash is kept", info.id, info.role);
        }
    }
    Ok(())
}

pub async fn tokens(coordinator: &str, output: Output) -> Result<()> {
    let mut client = pb::tokens_client::TokensClient::new(channel(coordinator).await?);
    let list = client.list(pb::ListTokensRequest {}).await.map_err(status_error)?.into_inner().tokens;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&list.iter().map(token_row).collect::<Vec<_>>())?),
        Output::Table | Output::Csv => {
            let mut t = table(&["id", "role", "queues", "created", "expires", "state", "description"]);
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
            for k in &list {
                let state = match (k.revoked, k.expires_ms) {
                    (true, _) => "revoked",
                    (false, e) if e > 0 && e <= now => "expired",
                    _ => "active",
                };
                // Dates, not times of day: a token may live for a year.
                let expires = if k.expires_ms > 0 { crate::json::utc_minute(k.expires_ms) } else { "never".into() };
                t.add_row(vec![
                    k.id.clone(),
                    k.role.clone(),
                    k.queues.join(","),
                    crate::json::utc_minute(k.created_ms),
                    expires,
                    state.into(),
                    k.description.clone(),
                ]);
            }
            println!("{t}");
        }
    }
    Ok(())
}

pub async fn token_revoke(coordinator: &str, id: &str, output: Output) -> Result<()> {
    let mut client = pb::tokens_client::TokensClient::new(channel(coordinator).await?);
    let t = client.revoke(pb::TokenRef { id: id.to_string() }).await.map_err(status_error)?.into_inner();
    match output {
        Output::Json => println!("{}", token_row(&t)),
        Output::Table | Output::Csv => println!("token {} revoked", t.id),
    }
    Ok(())
}

pub async fn whoami(coordinator: &str, output: Output) -> Result<()> {
    let mut client = pb::tokens_client::TokensClient::new(channel(coordinator).await?);
    let t = client.whoami(pb::WhoamiRequest {}).await.map_err(status_error)?.into_inner();
    match output {
        Output::Json => println!("{}", json!({ "id": t.id, "role": t.role, "queues": t.queues })),
        Output::Table | Output::Csv if t.queues.is_empty() => println!("{} ({})", t.id, t.role),
        Output::Table | Output::Csv => println!("{} ({}: {})", t.id, t.role, t.queues.join(", ")),
    }
    Ok(())
}

pub async fn audit(coordinator: &str, limit: u32, output: Output) -> Result<()> {
    let mut client = pb::tokens_client::TokensClient::new(channel(coordinator).await?);
    let log = client.audit(pb::AuditRequest { limit }).await.map_err(status_error)?.into_inner().entries;
    match output {
        Output::Json => {
            let rows: Vec<_> = log.iter().map(|e| json!({ "at_ms": e.at_ms, "who": e.who, "what": e.what })).collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        Output::Table | Output::Csv => {
            let mut t = table(&["when", "who", "what"]);
            for e in &log {
                t.add_row(vec![clock(e.at_ms), e.who.clone(), e.what.clone()]);
            }
            println!("{t}");
        }
    }
    Ok(())
}
