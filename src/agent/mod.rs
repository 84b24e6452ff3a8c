//! The agent: registers its host, keeps a stream open to the coordinator,
//! launches executors (the `cohort` binary, `cohort executor --kind ...`)
//! as process groups with limits, stops them with SIGTERM → grace →
//! SIGKILL, health-checks service instances, reports exits with the tail of
//! their output, and serves their logs. It reconnects when the coordinator
//! goes away, reporting what it runs so nothing healthy is killed by a
//! coordinator restart; restarted itself, it re-adopts its executors.
//! Before anything else it joins: its join token buys it a certificate
//! (see [`crate::tls`]), kept in its data dir for its next start.
//!
//! - `executors.rs`: the executor table, on disk too, and recovery;
//! - `health.rs`: health checks beside each service instance;
//! - `isolation.rs`: cgroup limits or an RSS watch;
//! - `identity.rs`: who command and service slots run as;
//! - `logs.rs`: the `AgentLogs` service over the executors' log files;
//! - `http.rs`: `/healthz` and `/metrics`, on the log service's address.

mod executors;
mod health;
mod http;
pub mod identity;
mod isolation;
mod logs;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cohort_proto as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use executors::Executors;
pub use executors::log_path;
pub use isolation::Isolation;

/// At most this many executors per host by default, as the kubelet's `--max-pods`.
pub const DEFAULT_MAX_EXECUTORS: u32 = 110;
/// Host ports handed to service instances by default.
pub const DEFAULT_PORTS: (u16, u16) = (31000, 32000);

#[derive(Clone, Debug)]
pub struct Settings {
    pub join: String,
    pub name: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub labels: BTreeMap<String, String>,
    pub data_dir: PathBuf,
    /// Where the log service, `/healthz` and `/metrics` listen (port 0: any free port).
    pub listen: SocketAddr,
    pub max_executors: u32,
    /// Cap each executor's CPU at its cores (a CFS quota) rather than
    /// weighing it (a share that lets it use idle cores).
    pub cpu_hard_limit: bool,
    /// The join token (an `agent` token and the CA's fingerprint) it joins with.
    pub token: Option<String>,
    /// Command and service slots run as this user unless their queue names one.
    pub run_as: Option<String>,
    /// Whether slots may run as root (never otherwise).
    pub allow_root: bool,
    /// Host ports for service instances, first to last.
    pub ports: (u16, u16),
    /// Where clients reach the services this host runs.
    pub address: String,
}

/// The coordinator refused this agent, or this agent the coordinator:
/// retrying cannot help.
#[derive(Debug, thiserror::Error)]
#[error(
    "this agent cannot join the cluster: {0} (start it with --token JOIN_TOKEN; the coordinator's data dir holds join.token)"
)]
struct Refused(String);

/// This agent's certificate: the one it has from an earlier join with the
/// same cluster, or a new one for its join token. Waits for a coordinator
/// that is not up yet.
async fn join(s: &Settings) -> anyhow::Result<crate::tls::Credentials> {
    let dir = crate::tls::credentials_dir(&s.data_dir);
    let (token, pin) = match s.token.as_deref().filter(|t| !t.trim().is_empty()) {
        Some(t) => {
            let (token, pin) = crate::tls::split_join_token(t);
            (Some(token.to_string()), pin.map(str::to_string))
        }
        None => (None, None),
    };
    if let Some(c) = crate::tls::Credentials::load(&dir) {
        // A token for another CA means another cluster: join that one.
        let same_cluster = pin.as_deref().is_none_or(|p| crate::tls::fingerprint(&c.ca_pem).ok().as_deref() == Some(p));
        if same_cluster {
            return Ok(c);
        }
    }
    let token = token.ok_or_else(|| Refused("it has no join token and no certificate yet".into()))?;
    let pin = pin.ok_or_else(|| {
        Refused("the join token carries no CA fingerprint (a join token is `cohort_<id>_<secret>.<sha256 of the CA>`, as join.token holds it)".into())
    })?;
    let mut backoff = Duration::from_millis(100);
    loop {
        match request_certificate(s, &token, &pin).await {
            Ok(credentials) => {
                credentials.save(&dir)?;
                tracing::info!(node = %s.name, dir = %dir.display(), "joined: the cluster CA signed this agent's certificate");
                return Ok(credentials);
            }
            Err(e) if e.is::<Refused>() => return Err(e),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot join yet; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn request_certificate(s: &Settings, token: &str, pin: &str) -> anyhow::Result<crate::tls::Credentials> {
    let ca_pem = crate::tls::fetch_pinned_ca(&s.join, pin)
        .await
        .map_err(|e| if e.is::<crate::tls::PinMismatch>() { anyhow::Error::new(Refused(format!("{e}"))) } else { e })?;
    let channel = tonic::transport::Endpoint::from_shared(crate::tls::https(&s.join))?
        .tls_config(crate::tls::coordinator_client(&ca_pem))?
        .connect()
        .await
        .context("connect")?;
    let mut client =
        pb::cluster_client::ClusterClient::with_interceptor(channel, crate::cli::config::Bearer::with(token));
    let (key_pem, csr_pem) = crate::tls::certificate_request(&s.name)?;
    let joined = client
        .join(pb::JoinRequest { name: s.name.clone(), csr_pem, address: s.address.clone() })
        .await
        .map_err(refused_or)?
        .into_inner();
    Ok(crate::tls::Credentials { ca_pem, chain_pem: joined.certificate_pem, key_pem })
}

/// A refusal stops the agent; anything else is retried.
fn refused_or(status: tonic::Status) -> anyhow::Error {
    match status.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            anyhow::Error::new(Refused(status.message().to_string()))
        }
        _ => anyhow::Error::new(status),
    }
}

fn message(body: pb::agent_message::Body) -> pb::AgentMessage {
    pb::AgentMessage { body: Some(body) }
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    std::fs::create_dir_all(settings.data_dir.join("logs"))
        .with_context(|| format!("cannot create {}", settings.data_dir.display()))?;
    let cpu_limit = if settings.cpu_hard_limit { isolation::CpuLimit::Quota } else { isolation::CpuLimit::Share };
    let isolation = Isolation::detect(&settings.name, &settings.data_dir, cpu_limit);
    let users = identity::SlotUsers::new(settings.run_as.as_deref(), settings.allow_root)?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let logs_address = listener.local_addr()?.to_string();
    println!("agent {} joining {} (isolation: {})", settings.name, settings.join, isolation.name());
    let credentials = tokio::select! {
        joined = join(&settings) => joined?,
        _ = shutdown_signal() => return Ok(()),
    };
    let (outbox, out_rx) = mpsc::unbounded_channel();
    let executors = Executors {
        data_dir: settings.data_dir.clone(),
        isolation,
        max_executors: settings.max_executors,
        env: BTreeMap::from([
            ("COHORT_COORDINATOR".to_string(), settings.join.clone()),
            ("COHORT_HOST".to_string(), settings.address.clone()),
            // Every executor checks the coordinator against the cluster CA.
            ("COHORT_CA".to_string(), credentials.ca_pem.clone()),
        ]),
        table: Arc::default(),
        outbox,
        stats: Arc::default(),
        users,
        name: settings.name.clone(),
        tls_dir: crate::tls::credentials_dir(&settings.data_dir),
    };
    tracing::info!(node = %settings.name, isolation = executors.isolation.name(), logs = %logs_address, "agent starting");
    // Executors this agent ran before it restarted: the live are adopted, the ended reported.
    let mut ended = executors.recover();
    let logs_token = logs::LogsToken::default();
    let logs = logs::LogService::new(settings.data_dir.clone(), executors.clone(), logs_token.clone());
    let routes = tonic::service::Routes::new(pb::agent_logs_server::AgentLogsServer::new(logs)).into_axum_router();
    let app = http::with_http(routes, settings.clone(), executors.clone());
    let listener = crate::tls::TlsListener::new(listener, credentials.rustls_server()?)?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the agent's log and metrics server stopped");
        }
    });
    let out_rx = Arc::new(tokio::sync::Mutex::new(out_rx));
    let session =
        Session { settings: settings.clone(), executors: executors.clone(), logs_address, logs_token, credentials };
    let connect = async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            match session.run(&mut ended, out_rx.clone()).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) if e.is::<Refused>() => return e,
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "coordinator connection ended; retrying"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    };
    tokio::select! {
        refused = connect => {
            executors.stop_all(Duration::from_secs(5)).await;
            return Err(refused);
        }
        _ = shutdown_signal() => {
            tracing::info!("agent stopping: stopping its executors");
            executors.stop_all(Duration::from_secs(5)).await;
        }
    }
    Ok(())
}

pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

struct Session {
    settings: Settings,
    executors: Executors,
    logs_address: String,
    logs_token: logs::LogsToken,
    credentials: crate::tls::Credentials,
}

impl Session {
    /// One registration and attached stream, until either side closes it.
    /// `ended` (exits recorded while nobody watched) is cleared once the
    /// coordinator has taken it.
    async fn run(
        &self,
        ended: &mut Vec<pb::ExecutorExited>,
        out_rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<pb::AgentMessage>>>,
    ) -> anyhow::Result<()> {
        let s = &self.settings;
        // No token: the certificate says who this agent is.
        let channel = tonic::transport::Endpoint::from_shared(crate::tls::https(&s.join))?
            .tls_config(self.credentials.client(crate::tls::COORDINATOR_NAME))?
            .connect()
            .await
            .context("connect")?;
        let mut client = pb::cluster_client::ClusterClient::new(channel);
        let registered = client
            .register(pb::RegisterRequest {
                name: s.name.clone(),
                capacity: Some(pb::Resources { cpu_millis: s.cpu_millis, memory_bytes: s.memory_bytes }),
                labels: s.labels.clone().into_iter().collect(),
                logs_address: self.logs_address.clone(),
                running: self.executors.running(),
                isolation: self.executors.isolation.name().into(),
                max_executors: s.max_executors,
                port_first: s.ports.0 as u32,
                port_last: s.ports.1 as u32,
                address: s.address.clone(),
                ended: ended.clone(),
                runs_as: self.executors.users.describe(),
            })
            .await
            .map_err(|status| refused_or(status).context("register"))?
            .into_inner();
        ended.clear();
        *self.logs_token.write().expect("logs token") = Some(registered.logs_token.clone());
        let (tx, rx) = mpsc::channel(1024);
        tx.send(message(pb::agent_message::Body::Hello(pb::Hello { node_id: registered.node_id }))).await?;
        let mut commands = client.attach(ReceiverStream::new(rx)).await.context("attach")?.into_inner();
        tracing::info!(node_id = registered.node_id, "attached to the coordinator");
        let interval = Duration::from_millis(registered.heartbeat_interval_ms.max(50));
        let executors = self.executors.clone();
        let forwarder = tokio::spawn(async move {
            let mut out = out_rx.lock().await;
            let mut beat = tokio::time::interval(interval);
            loop {
                let msg = tokio::select! {
                    m = out.recv() => match m { Some(m) => m, None => break },
                    _ = beat.tick() => message(pb::agent_message::Body::Heartbeat(pb::Heartbeat { running: executors.running() })),
                };
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let result = async {
            while let Some(command) = commands.message().await? {
                match command.body {
                    Some(pb::command::Body::Launch(l)) => self.executors.launch(l),
                    Some(pb::command::Body::Kill(k)) => {
                        self.executors.kill(k.alloc_id, Duration::from_millis(k.grace_ms), &k.reason, None)
                    }
                    None => {}
                }
            }
            anyhow::Ok(())
        }
        .await;
        forwarder.abort();
        result.and(Err(anyhow::anyhow!("the coordinator closed the stream")))
    }
}
