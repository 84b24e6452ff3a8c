//! The driver of a `kind = "sql"` job, in slot 0 beside its worker.
//!
//! It plans every statement over the job's own batch executors (whichever
//! of them serve at the time, asked of the coordinator), prints its
//! progress to the slot's log (`cohort logs`), stages every write beside
//! its target and commits them all after the last statement succeeded.
//! Catalog changes go to the coordinator (over Flight SQL, like any
//! client), so tables a job declares outlive it. A failure names the
//! statement and DataFusion's error, and leaves no output in sight.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arrow::record_batch::RecordBatch;
use arrow_flight::sql::client::FlightSqlServiceClient;
use async_trait::async_trait;
use cohort_batch::{CatalogChange, EngineSettings, SqlEngine, Staged, Statement, WorkerSource, classify};
use cohort_proto as pb;
use futures::TryStreamExt;
use tonic::transport::Channel;
use url::Url;

use crate::cli::config::{token, with_token};
use crate::spec::FLIGHT_PORT;

/// What the driver may use of its slot.
pub struct Resources {
    pub cores: usize,
    pub memory_bytes: usize,
    pub spill_dir: PathBuf,
}

pub struct Driver {
    job: u64,
    attempt: u32,
    gang_size: usize,
    statements: String,
    coordinator: String,
    resources: Resources,
}

/// Rows of a SELECT printed to the log.
const ROWS_SHOWN: usize = 50;

impl Driver {
    pub fn from_env(resources: Resources) -> Result<Driver> {
        let var = |name: &str| std::env::var(name).with_context(|| format!("{name} is not set"));
        Ok(Driver {
            job: var("COHORT_JOB_ID")?.parse().context("COHORT_JOB_ID")?,
            attempt: var("COHORT_ATTEMPT").ok().and_then(|a| a.parse().ok()).unwrap_or(1),
            gang_size: var("COHORT_GANG_SIZE").ok().and_then(|n| n.parse().ok()).unwrap_or(1),
            statements: var("COHORT_SQL")?,
            coordinator: {
                // The job's own token (COHORT_TOKEN): it acts on the job's queue while the job lives.
                crate::cli::config::set_token(std::env::var("COHORT_TOKEN").ok());
                var("COHORT_COORDINATOR")?
            },
            resources,
        })
    }

    /// Runs the job; the process's exit code.
    pub async fn run(self) -> i32 {
        match self.drive().await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {e:#}");
                1
            }
        }
    }

    async fn drive(&self) -> Result<()> {
        let started = Instant::now();
        let channel = crate::cli::config::endpoint(&self.coordinator)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("cannot reach the coordinator at {}", self.coordinator))?;
        let engine = SqlEngine::new(EngineSettings {
            target_partitions: self.resources.cores,
            memory_bytes: self.resources.memory_bytes,
            spill_dir: Some(self.resources.spill_dir.clone()),
            worker_tls: crate::tls::executor_credentials()?.map(|c| c.client(crate::tls::AGENT_NAME)),
            ..Default::default()
        })?;
        let tables = catalog(&channel).await?;
        for (name, e) in engine.restore(&tables).await {
            println!("note: table `{name}` is unavailable: {e}");
        }
        let workers = JobWorkers { channel: channel.clone(), job: self.job, expected: self.gang_size };
        let statements = cohort_batch::split_statements(&self.statements)?;
        let tag = format!("job{}", self.job);
        println!(
            "driver of job {} (attempt {}): {} statement(s) on {} executor(s)",
            self.job,
            self.attempt,
            statements.len(),
            self.gang_size
        );
        let mut staged: Vec<Staged> = Vec::new();
        for (i, sql) in statements.iter().enumerate() {
            let number = i + 1;
            println!("[{number}/{}] {}", statements.len(), summary(sql));
            let at = Instant::now();
            let done = self.statement(&engine, &channel, &workers, sql, &tag, &mut staged).await;
            match done {
                Ok(what) => println!("[{number}/{}] {what} in {:.2} s", statements.len(), at.elapsed().as_secs_f64()),
                Err(e) => {
                    cohort_batch::discard_all(staged).await;
                    return Err(e.context(format!("statement {number} ({}) failed", summary(sql))));
                }
            }
        }
        let targets: Vec<String> = staged.iter().map(|s| s.target_url.clone()).collect();
        let files = cohort_batch::commit_all(staged).await.context("cannot commit the job's outputs")?;
        for target in targets {
            println!("committed {target}");
        }
        println!(
            "done: {} statement(s), {files} file(s) written, in {:.2} s",
            statements.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    async fn statement(
        &self,
        engine: &SqlEngine,
        channel: &Channel,
        workers: &JobWorkers,
        sql: &str,
        tag: &str,
        staged: &mut Vec<Staged>,
    ) -> Result<String> {
        match classify(sql)? {
            Statement::Catalog(change) => {
                // The coordinator keeps the catalog; the driver then takes its word for the entry.
                let mut flight = FlightSqlServiceClient::new(channel.clone());
                if let Some(token) = token() {
                    flight.set_token(token);
                }
                flight
                    .execute_update(sql.to_string(), None)
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", flight_message(e)))?;
                let name = match &change {
                    CatalogChange::Create { def, .. } => def.name.clone(),
                    CatalogChange::Drop { name, .. } => name.clone(),
                };
                let _ = engine.context().deregister_table(name.as_str());
                if let Some(def) = catalog(channel).await?.into_iter().find(|t| t.name.eq_ignore_ascii_case(&name)) {
                    engine.apply_ddl(&def.ddl).await?;
                }
                Ok(match change {
                    CatalogChange::Create { .. } => format!("table `{name}` defined"),
                    CatalogChange::Drop { .. } => format!("table `{name}` dropped"),
                })
            }
            Statement::Cache { .. } | Statement::Uncache { .. } => anyhow::bail!(crate::spec::CACHING_IN_JOBS),
            Statement::Copy | Statement::Insert { .. } => {
                let (plan, write) = engine.stage_write(sql, None, tag, self.attempt).await?;
                let target = write.target_url.clone();
                staged.push(write);
                let batches = collect(engine, plan, workers).await?;
                Ok(format!("{} rows staged for {target}", crate::coordinator::sql::count_of(&batches)))
            }
            Statement::Query => {
                let plan = engine.plan(sql, None).await?;
                let batches = collect(engine, plan, workers).await?;
                let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
                let mut shown = Vec::new();
                let mut left = ROWS_SHOWN;
                for b in &batches {
                    if left == 0 {
                        break;
                    }
                    let take = b.num_rows().min(left);
                    shown.push(b.slice(0, take));
                    left -= take;
                }
                println!("{}", arrow::util::pretty::pretty_format_batches(&shown)?);
                if rows > ROWS_SHOWN {
                    println!("({} more rows not shown)", rows - ROWS_SHOWN);
                }
                Ok(format!("{rows} rows"))
            }
        }
    }
}

async fn collect(
    engine: &SqlEngine,
    plan: datafusion::logical_expr::LogicalPlan,
    workers: &JobWorkers,
) -> Result<Vec<RecordBatch>> {
    let outcome = engine.run(plan, workers).await?;
    for retry in &outcome.retries {
        println!("retried: {retry}");
    }
    Ok(outcome.stream.try_collect().await?)
}

/// The first line of a statement, shortened, for progress lines.
fn summary(sql: &str) -> String {
    let line = sql.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with("--")).unwrap_or("");
    if line.chars().count() > 72 {
        format!("{}…", line.chars().take(72).collect::<String>())
    } else {
        line.to_string()
    }
}

fn flight_message(e: arrow_flight::error::FlightError) -> String {
    match e {
        arrow_flight::error::FlightError::Tonic(status) => status.message().to_string(),
        other => other.to_string(),
    }
}

async fn catalog(channel: &Channel) -> Result<Vec<cohort_batch::TableDef>> {
    let tables = pb::catalog_client::CatalogClient::new(with_token(channel.clone()))
        .tables(pb::TablesRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("cannot read the catalog: {}", s.message()))?
        .into_inner()
        .tables;
    Ok(tables.into_iter().map(|t| cohort_batch::TableDef { name: t.name, ddl: t.ddl }).collect())
}

/// The job's own executors that serve now, as the coordinator sees them.
struct JobWorkers {
    channel: Channel,
    job: u64,
    /// Executors the gang started with: the first attempt waits for them all.
    expected: usize,
}

/// How long a statement waits for its executors.
const WORKER_WAIT: Duration = Duration::from_secs(60);

#[async_trait]
impl WorkerSource for JobWorkers {
    async fn workers(&self, attempt: u32) -> Result<Vec<Url>, cohort_batch::Error> {
        let deadline = tokio::time::Instant::now() + WORKER_WAIT;
        let mut client = pb::jobs_client::JobsClient::new(with_token(self.channel.clone()));
        loop {
            let endpoints = client
                .endpoints(pb::JobRef { job_id: self.job })
                .await
                .map_err(|s| {
                    cohort_batch::Error::Unavailable(format!(
                        "cannot ask the coordinator for executors: {}",
                        s.message()
                    ))
                })?
                .into_inner()
                .endpoints;
            let urls: Vec<Url> = endpoints
                .iter()
                .filter_map(|e| Url::parse(&format!("http://{}:{}", e.host, e.ports.get(FLIGHT_PORT)?)).ok())
                .collect();
            let enough = if attempt == 1 { self.expected } else { 1 };
            let waited_out = tokio::time::Instant::now() >= deadline;
            if urls.len() >= enough || (waited_out && !urls.is_empty()) {
                return Ok(urls);
            }
            if waited_out {
                return Err(cohort_batch::Error::NoWorkers(format!(
                    "none of the job's executors served within {WORKER_WAIT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
