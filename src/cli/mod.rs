//! The command line: the cluster processes (`up`, `coordinator`, `agent`,
//! `executor`), the client commands (`client.rs`; `sql.rs`, the SQL
//! client; `top.rs`, the terminal view), and the simulator.

mod client;
pub mod config;
pub(crate) mod sql;
mod top;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
pub use client::{Output, channel};

use crate::coordinator::core::CoreSettings;
use crate::executor::ExecutorKind;
use crate::{agent, bench, coordinator, executor, simulate, up};

#[derive(Parser)]
#[command(
    name = "cohort",
    version,
    about = "A gang-aware scheduler for batch, streaming and in-memory stores on one cluster"
)]
struct Cli {
    /// Coordinator address for client commands (default: the client
    /// config's, else 127.0.0.1:7070).
    #[arg(long, global = true, env = "COHORT_COORDINATOR")]
    coordinator: Option<String>,
    /// Bearer token for client commands (default: the client config's);
    /// for `agent`, its join token with the CA's fingerprint, as the
    /// coordinator's join.token holds it (or COHORT_JOIN_TOKEN).
    #[arg(long, global = true, env = "COHORT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Table for people, JSON for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// The warm pool of batch executors that serves SQL clients.
#[derive(clap::Args)]
struct PoolArgs {
    /// Instances kept running while no query runs (0: the pool starts
    /// with the first query that needs it and stops when idle).
    #[arg(long = "sql-pool-warm", default_value_t = 1)]
    warm: u32,
    /// Instances a large query grows the pool to (0: one per node).
    #[arg(long = "sql-pool-max", default_value_t = 0)]
    max: u32,
    /// Cores per instance (with a store's quarter core, one core: a
    /// 1-core node holds both).
    #[arg(long = "sql-pool-cpu", default_value = "750m")]
    cpu: String,
    /// Memory per instance (queries spill beyond it).
    #[arg(long = "sql-pool-memory", default_value = "2GiB")]
    memory: String,
    /// Seconds without queries before the pool shrinks back.
    #[arg(long = "sql-pool-idle", default_value_t = 60.0)]
    idle: f64,
    /// Memory of each store executor (one per node, started by the first
    /// CACHE TABLE); about three quarters of it holds cached rows.
    #[arg(long = "sql-store-memory", default_value = "1GiB")]
    store_memory: String,
    /// Bytes all cached tables hold together (default: what the stores
    /// can hold); the least recently used tables are evicted beyond it
    /// and read from their source again.
    #[arg(long = "sql-cache-memory", value_parser = parse_memory_flag)]
    cache_memory: Option<u64>,
    /// A query scanning fewer bytes of files than this runs in the
    /// coordinator rather than on the pool, whose fan-out costs more than
    /// it saves on a small scan (0: every query runs on the pool).
    #[arg(long = "sql-local-query-bytes", value_parser = parse_memory_flag, default_value = "64MiB")]
    local_query_bytes: u64,
    /// Memory of the queries the coordinator runs itself (small scans,
    /// and every query on cached tables alone); their operators spill
    /// beyond their share of it.
    #[arg(long = "sql-coordinator-memory", value_parser = parse_memory_flag, default_value = "2GiB")]
    coordinator_memory: u64,
}

fn parse_memory_flag(text: &str) -> Result<u64, String> {
    cohort_scheduler::resources::parse_memory(text).map_err(|e| e.to_string())
}

impl PoolArgs {
    /// The same settings as `cohort coordinator` flags.
    fn to_args(&self) -> Vec<String> {
        vec![
            format!("--sql-pool-warm={}", self.warm),
            format!("--sql-pool-max={}", self.max),
            format!("--sql-pool-cpu={}", self.cpu),
            format!("--sql-pool-memory={}", self.memory),
            format!("--sql-pool-idle={}", self.idle),
            format!("--sql-store-memory={}", self.store_memory),
            format!("--sql-local-query-bytes={}", self.local_query_bytes),
            format!("--sql-coordinator-memory={}", self.coordinator_memory),
        ]
        .into_iter()
        .chain(self.cache_memory.map(|bytes| format!("--sql-cache-memory={bytes}")))
        .collect()
    }
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Issue a token; it is printed once, only its hash is kept.
    Create {
        /// admin (everything), submit (its queues' jobs) or agent (joins agents).
        #[arg(long)]
        role: String,
        /// A queue a submit token may use (repeat for more).
        #[arg(long = "queue")]
        queues: Vec<String>,
        /// Expire after this long (`30d`, `12h`); default: never.
        #[arg(long, value_parser = crate::spec::parse_duration)]
        ttl: Option<Duration>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (never their secrets).
    List,
    /// Refuse a token from now on.
    Revoke { id: String },
    /// Who the current token is.
    Whoami,
}

#[derive(Subcommand)]
enum PipelineCommand {
    /// Create a pipeline from its spec (TOML), or update the one of that name.
    Create { file: PathBuf },
    /// List pipelines.
    List,
    /// A pipeline's state, members and per-partition lag.
    Get { name: String },
    /// Stop its members (each commits what it has first); keep it, paused.
    Pause { name: String },
    /// Start a paused pipeline again from its committed offsets.
    Resume { name: String },
    /// Stop a pipeline's members (each commits what it has) and end it.
    Delete { name: String },
}

#[derive(Subcommand)]
enum Command {
    /// Start a whole cluster on this machine: a coordinator and agents.
    Up {
        #[arg(long, default_value_t = 2)]
        agents: u32,
        /// Where state and logs live (default: ~/.local/share/cohort).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: String,
        /// Where the web UI, the JSON API and /metrics are served.
        #[arg(long, default_value = "127.0.0.1:7080")]
        http: String,
        /// Host ports handed to service instances, FIRST-LAST, split among the agents.
        #[arg(long, default_value = "31000-32000")]
        ports: String,
        #[command(flatten)]
        pool: PoolArgs,
        /// Kafka brokers for pipelines (default: an embedded, in-memory broker).
        #[arg(long)]
        kafka_brokers: Option<String>,
    },
    /// Run the coordinator (scheduler, state, API) of a multi-host cluster.
    Coordinator {
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: SocketAddr,
        /// Where the web UI, the JSON API, /metrics and health probes are served.
        #[arg(long, default_value = "127.0.0.1:7080")]
        http: SocketAddr,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Seconds without heartbeats after which an agent is lost.
        #[arg(long, default_value_t = 5.0)]
        heartbeat_timeout: f64,
        #[command(flatten)]
        pool: PoolArgs,
        /// Kafka brokers for pipelines whose spec names none.
        #[arg(long)]
        kafka_bootstrap: Option<String>,
        /// The brokers are `cohort up`'s embedded one (shown as such).
        #[arg(long, hide = true)]
        kafka_embedded: bool,
        /// A name or address its TLS certificate carries besides localhost,
        /// this host's name and its listen address (repeatable): the one
        /// clients use to reach it from elsewhere.
        #[arg(long = "tls-name", value_name = "NAME")]
        tls_names: Vec<String>,
        /// Run a queue's command and service slots as this user: QUEUE=USER (repeatable).
        #[arg(long = "run-as", value_name = "QUEUE=USER")]
        run_as: Vec<String>,
    },
    /// Run an agent on this host and join it to a coordinator (its join
    /// token buys it a certificate, kept in its data dir).
    Agent {
        #[arg(long)]
        join: String,
        /// Node name (default: the host name).
        #[arg(long)]
        name: Option<String>,
        /// Cores to offer (cores or millicores; default: all of this host's).
        #[arg(long)]
        cpu: Option<String>,
        /// Memory to offer (default: all of this host's).
        #[arg(long)]
        memory: Option<String>,
        /// Node labels, `key=value,key=value`.
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Where this agent serves executor logs.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// At most this many executors at once on this host (the kubelet's --max-pods).
        #[arg(long, default_value_t = agent::DEFAULT_MAX_EXECUTORS)]
        max_executors: u32,
        /// Cap each executor at its cores (a CFS quota). By default its
        /// cores are a weight: it gets at least them under contention and
        /// may use cores nobody else is using.
        #[arg(long)]
        cpu_hard_limit: bool,
        /// Host ports handed to service instances, FIRST-LAST.
        #[arg(long, default_value = "31000-32000")]
        ports: String,
        /// Where clients reach the services this host runs (default: the
        /// --listen address, or the host name when that is 0.0.0.0).
        #[arg(long)]
        advertise: Option<String>,
        /// Command and service slots run as this user unless their queue
        /// names one (default, for an agent run as root: nobody).
        #[arg(long)]
        run_as: Option<String>,
        /// Let slots run as root (an agent run as root never does otherwise).
        #[arg(long)]
        allow_root: bool,
    },
    /// Internal: the process an agent starts for one slot.
    #[command(hide = true)]
    Executor {
        #[arg(long)]
        kind: ExecutorKind,
        /// Record the workload's exit here (agents pass it).
        #[arg(long)]
        alloc_dir: Option<PathBuf>,
        #[arg(last = true)]
        argv: Vec<String>,
    },
    /// Submit a job spec (TOML); prints the job id.
    Submit { file: PathBuf },
    /// List jobs.
    Jobs,
    /// Show one job: state, reason, slots.
    Job { id: String },
    /// Cancel a job, stopping its slots.
    Cancel { id: String },
    /// Print a slot's output.
    Logs {
        id: String,
        #[arg(long, default_value_t = 0)]
        slot: u32,
        #[arg(long, short)]
        follow: bool,
    },
    /// Follow job events as they happen: one job until it ends, or all.
    Watch { id: Option<String> },
    /// Set a service's instance count.
    Scale { id: String, instances: u32 },
    /// Streaming pipelines: Kafka → SQL transform → Parquet or Kafka.
    #[command(subcommand)]
    Pipeline(PipelineCommand),
    /// Bearer tokens for people, scripts and agents (admin only).
    #[command(subcommand)]
    Token(TokenCommand),
    /// The recent accepted changes: who, what, when (admin only).
    Audit {
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// host:port of a service's healthy instances, for scripts and load balancers.
    Endpoints { id: String },
    /// List nodes.
    Nodes,
    /// Stop placing new slots on a node.
    Cordon { node: String },
    /// Let a cordoned or drained node take slots again.
    Uncordon { node: String },
    /// Cordon a node and move its services off it; batch work finishes.
    Drain { node: String },
    /// Where the cluster is.
    Status,
    /// Nodes, running gangs and why the rest wait, refreshed every second (q quits).
    Top {
        /// Print one frame as text and exit.
        #[arg(long)]
        once: bool,
    },
    /// Run SQL over Flight SQL: a REPL, or `-e SQL` / `-f FILE`.
    Sql(sql::Args),
    /// Cached tables: where their partitions are held, their size, hits
    /// and last use (`SELECT * FROM cohort.cache`).
    Cache,
    /// Replay a workload trace through the scheduler in virtual time, or generate one.
    Simulate(simulate::Args),
    /// Measure a local cluster: gang start latency and submissions per second.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Start a local cluster and measure its control plane.
    ControlPlane(bench::control_plane::Args),
    /// Start a local cluster and measure service healing and rolling updates.
    Services(bench::services::Args),
    /// TPC-H (derived) through Flight SQL against single-process DataFusion.
    Tpch(bench::tpch::Args),
    /// A pipeline (JSON → filter → Parquet) against a bare Kafka consumer.
    Stream(bench::stream::Args),
    /// Live tables fed by many small ingests against the same rows cached.
    Live(bench::live::Args),
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("COHORT_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if cli.command.is_client() {
        end_quietly_when_stdout_closes();
    }
    let result = match client_settings(&cli) {
        Ok(coordinator) => run(cli, &coordinator),
        Err(e) => Err(e),
    };
    match result {
        Ok(code) => code,
        Err(err) if is_broken_pipe(&err) && stdout_is_closed() => STDOUT_CLOSED,
        Err(err) => {
            eprintln!("error: {}", readable(&err));
            1
        }
    }
}

/// An error and its causes on one line, each said once: transport errors
/// repeat their causes' words (`tcp connect error: tcp connect error`).
fn readable(err: &anyhow::Error) -> String {
    let mut pieces: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if pieces.iter().any(|p| p.contains(text.as_str())) {
            continue;
        }
        if pieces.last().is_some_and(|last| text.starts_with(last.as_str())) {
            pieces.pop();
        }
        pieces.push(text);
    }
    let mut text = pieces.join(": ");
    // gRPC reading an HTTP answer takes its first byte (`{`, `<`) as a frame flag.
    if text.contains("invalid compression flag") || text.contains("protocol error: received message with invalid") {
        text.push_str(" (the address answered, but not as Cohort's gRPC and Flight SQL port: is it the HTTP port?)");
    }
    text
}

/// How a command whose reader went away ends: as a Unix tool killed by
/// SIGPIPE would (128 + 13), but without a message.
const STDOUT_CLOSED: i32 = 141;

/// A command piped into `head` ends quietly when the pipe closes, as Unix
/// tools do. SIGPIPE itself stays ignored (Rust's default): restored, it
/// would also kill the process on a socket write to a peer that died
/// (hyper writes with `writev`, which has no `MSG_NOSIGNAL`), and `bench`
/// runs a cluster in-process, whose executors it kills on purpose.
fn end_quietly_when_stdout_closes() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        // What `println!` panics with when stdout is a closed pipe.
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(STDOUT_CLOSED);
        }
        default_hook(info);
    }));
}

/// Whether nobody reads stdout any more (a pipe whose reader ended), as
/// opposed to a broken pipe elsewhere, such as a connection to a peer
/// that died, which deserves its error message.
fn stdout_is_closed() -> bool {
    let mut stdout = libc::pollfd { fd: libc::STDOUT_FILENO, events: libc::POLLOUT, revents: 0 };
    // SAFETY: polls one valid pollfd without waiting.
    let ready = unsafe { libc::poll(&mut stdout, 1, 0) };
    ready == 1 && stdout.revents & libc::POLLERR != 0
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    // Some writers (arrow's CSV writer, through the csv crate) keep only
    // the message of the I/O error they met, not its kind.
    err.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            || cause.to_string().contains("Broken pipe")
    })
}

/// The coordinator address clients use; sets the token their calls carry.
fn client_settings(cli: &Cli) -> Result<String> {
    let file = if cli.command.is_client() { config::load(&config::config_path())? } else { Default::default() };
    config::set_token(cli.token.clone().or(file.token));
    config::set_ca(file.ca)?;
    Ok(cli.coordinator.clone().or(file.coordinator).unwrap_or_else(|| config::DEFAULT_COORDINATOR.into()))
}

fn run(cli: Cli, coordinator: &str) -> Result<i32> {
    let result = match cli.command {
        Command::Executor { kind, alloc_dir, argv } => return executor::run(kind, alloc_dir.as_deref(), &argv),
        Command::Simulate(args) => simulate::run(args, cli.output),
        command => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_stack_size(cohort_batch::RUNTIME_THREAD_STACK)
            .build()
            .context("cannot start the runtime")
            .and_then(|rt| rt.block_on(dispatch(command, coordinator, cli.output))),
    };
    result.map(|()| 0)
}

impl Command {
    /// Commands that only talk to a cluster or print (not processes of one).
    fn is_client(&self) -> bool {
        !matches!(
            self,
            Command::Up { .. } | Command::Coordinator { .. } | Command::Agent { .. } | Command::Executor { .. }
        )
    }
}

async fn dispatch(command: Command, coordinator: &str, output: Output) -> Result<()> {
    match command {
        Command::Up { agents, data_dir, listen, http, ports, pool, kafka_brokers } => {
            let ports = parse_port_range(&ports)?;
            if ((ports.1 - ports.0) as u32) < agents {
                anyhow::bail!("--ports: {} ports cannot be split among {agents} agents", ports.1 - ports.0 + 1);
            }
            // The embedded broker lives in this process, so it outlasts coordinator restarts.
            let (broker, bootstrap) = match kafka_brokers {
                Some(brokers) => (None, brokers),
                None => {
                    let broker =
                        cohort_connectors::broker::EmbeddedBroker::start(cohort_connectors::broker::Setup::Shared)
                            .context("cannot start the embedded Kafka broker")?;
                    let bootstrap = broker.bootstrap().to_string();
                    (Some(broker), bootstrap)
                }
            };
            let mut coordinator_args = pool.to_args();
            coordinator_args.push(format!("--kafka-bootstrap={bootstrap}"));
            let embedded = broker.is_some();
            if embedded {
                coordinator_args.push("--kafka-embedded".into());
            }
            let result = up::run(up::Settings {
                agents,
                data_dir: data_dir.unwrap_or_else(up::default_data_dir),
                listen,
                http,
                ports,
                coordinator_args,
                kafka: Some((bootstrap, embedded)),
            })
            .await;
            drop(broker);
            result
        }
        Command::Coordinator {
            listen,
            http,
            data_dir,
            heartbeat_timeout,
            pool,
            kafka_bootstrap,
            kafka_embedded,
            run_as,
            tls_names,
        } => {
            let mut run_as_by_queue = BTreeMap::new();
            for pair in &run_as {
                let (queue, user) = pair
                    .split_once('=')
                    .filter(|(q, u)| !q.is_empty() && !u.is_empty())
                    .with_context(|| format!("--run-as: `{pair}` is not QUEUE=USER"))?;
                run_as_by_queue.insert(queue.to_string(), user.to_string());
            }
            let settings = coordinator::Settings {
                sql: coordinator::sql::SqlSettings {
                    pool: coordinator::sql::PoolSettings {
                        warm: pool.warm,
                        max: pool.max,
                        cpu: pool.cpu,
                        memory: pool.memory,
                        idle: Duration::from_secs_f64(pool.idle.max(0.0)),
                        ..Default::default()
                    },
                    stores: coordinator::sql::stores::StoreSettings {
                        memory: pool.store_memory,
                        cache_memory: pool.cache_memory,
                        ..Default::default()
                    },
                    local_query_bytes: pool.local_query_bytes,
                    memory_bytes: pool.coordinator_memory,
                },
                listen,
                http,
                kafka_bootstrap,
                kafka_embedded,
                tls_names,
                data_dir: data_dir.unwrap_or_else(|| up::default_data_dir().join("coordinator")),
                core: CoreSettings {
                    heartbeat_timeout: Duration::from_secs_f64(heartbeat_timeout),
                    heartbeat_interval: Duration::from_secs_f64((heartbeat_timeout / 5.0).clamp(0.05, 1.0)),
                    run_as: run_as_by_queue,
                    ..CoreSettings::default()
                },
            };
            tokio::select! {
                r = coordinator::run(settings) => r,
                _ = agent::shutdown_signal() => Ok(()),
            }
        }
        Command::Agent {
            join,
            name,
            cpu,
            memory,
            labels,
            data_dir,
            listen,
            max_executors,
            cpu_hard_limit,
            ports,
            advertise,
            run_as,
            allow_root,
        } => {
            // The join token: --token, or COHORT_JOIN_TOKEN (which `up` sets).
            let join_token = config::token().or_else(|| std::env::var("COHORT_JOIN_TOKEN").ok());
            let (host_cpu, host_memory) = up::host_resources();
            let name = name.unwrap_or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "agent".into())
            });
            let cpu_millis = match cpu {
                Some(c) => cohort_scheduler::resources::parse_cpu(&c).with_context(|| "--cpu")?,
                None => host_cpu,
            };
            let memory_bytes = match memory {
                Some(m) => cohort_scheduler::resources::parse_memory(&m).with_context(|| "--memory")?,
                None => host_memory,
            };
            let mut label_map = BTreeMap::new();
            for l in labels {
                let (k, v) = l.split_once('=').with_context(|| format!("--labels: `{l}` is not key=value"))?;
                label_map.insert(k.to_string(), v.to_string());
            }
            let data_dir = data_dir.unwrap_or_else(|| up::default_data_dir().join(&name));
            let ports = parse_port_range(&ports)?;
            let address = advertise
                .unwrap_or_else(|| if listen.ip().is_unspecified() { name.clone() } else { listen.ip().to_string() });
            let settings = agent::Settings {
                join,
                name,
                cpu_millis,
                memory_bytes,
                labels: label_map,
                data_dir,
                listen,
                max_executors,
                cpu_hard_limit,
                token: join_token,
                run_as,
                allow_root,
                ports,
                address,
            };
            agent::run(settings).await
        }
        Command::Submit { file } => client::submit(coordinator, &file, output).await,
        Command::Jobs => client::jobs(coordinator, output).await,
        Command::Job { id } => client::job(coordinator, &id, output).await,
        Command::Cancel { id } => client::job_action(coordinator, &id, client::JobAction::Cancel, output).await,
        Command::Logs { id, slot, follow } => client::logs(coordinator, &id, slot, follow).await,
        Command::Sql(args) => sql::run(coordinator, args, output).await,
        Command::Cache => sql::run(coordinator, sql::Args::execute(sql::CACHE_LISTING), output).await,
        Command::Watch { id } => client::watch(coordinator, id.as_deref(), output).await,
        Command::Scale { id, instances } => client::scale(coordinator, &id, instances, output).await,
        Command::Pipeline(PipelineCommand::Create { file }) => {
            client::pipeline_create(coordinator, &file, output).await
        }
        Command::Pipeline(PipelineCommand::List) => client::pipelines(coordinator, output).await,
        Command::Pipeline(PipelineCommand::Get { name }) => client::pipeline_get(coordinator, &name, output).await,
        Command::Pipeline(PipelineCommand::Pause { name }) => {
            client::job_action(coordinator, &name, client::JobAction::Pause, output).await
        }
        Command::Pipeline(PipelineCommand::Resume { name }) => {
            client::job_action(coordinator, &name, client::JobAction::Resume, output).await
        }
        Command::Pipeline(PipelineCommand::Delete { name }) => {
            client::job_action(coordinator, &name, client::JobAction::Cancel, output).await
        }
        Command::Endpoints { id } => client::endpoints(coordinator, &id, output).await,
        Command::Nodes => client::nodes(coordinator, output).await,
        Command::Cordon { node } => client::node_action(coordinator, &node, client::NodeAction::Cordon, output).await,
        Command::Uncordon { node } => {
            client::node_action(coordinator, &node, client::NodeAction::Uncordon, output).await
        }
        Command::Drain { node } => client::node_action(coordinator, &node, client::NodeAction::Drain, output).await,
        Command::Status => client::status(coordinator, output).await,
        Command::Token(TokenCommand::Create { role, queues, ttl, description }) => {
            client::token_create(coordinator, &role, queues, ttl, description, output).await
        }
        Command::Token(TokenCommand::List) => client::tokens(coordinator, output).await,
        Command::Token(TokenCommand::Revoke { id }) => client::token_revoke(coordinator, &id, output).await,
        Command::Token(TokenCommand::Whoami) => client::whoami(coordinator, output).await,
        Command::Audit { limit } => client::audit(coordinator, limit, output).await,
        Command::Top { once } => top::run(coordinator, once).await,
        Command::Bench(BenchCommand::ControlPlane(args)) => bench::control_plane::run(args).await,
        Command::Bench(BenchCommand::Services(args)) => bench::services::run(args).await,
        Command::Bench(BenchCommand::Tpch(args)) => bench::tpch::run(args).await,
        Command::Bench(BenchCommand::Stream(args)) => bench::stream::run(args).await,
        Command::Bench(BenchCommand::Live(args)) => bench::live::run(args).await,
        Command::Executor { .. } | Command::Simulate(_) => unreachable!("handled before the runtime starts"),
    }
}

/// `FIRST-LAST`, a range of host ports.
fn parse_port_range(text: &str) -> Result<(u16, u16)> {
    let parsed =
        text.split_once('-').and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)));
    match parsed {
        Some((first, last)) if first > 0 && first <= last => Ok((first, last)),
        _ => anyhow::bail!("--ports: `{text}` is not a port range such as 31000-32000"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_says_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let err = anyhow::Error::new(io)
            .context("tcp connect error")
            .context("tcp connect error")
            .context("cannot reach the coordinator at 127.0.0.1:1");
        assert_eq!(
            readable(&err),
            "cannot reach the coordinator at 127.0.0.1:1: tcp connect error: Connection refused"
        );
        let wider = anyhow::anyhow!("invalid peer certificate: UnknownIssuer").context("invalid peer certificate");
        assert_eq!(readable(&wider), "invalid peer certificate: UnknownIssuer");
        // The HTTP port given for the gRPC one
        let http = anyhow::anyhow!("protocol error: invalid compression flag: 123");
        assert!(readable(&http).ends_with("is it the HTTP port?)"), "{}", readable(&http));
    }
}
