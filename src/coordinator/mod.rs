//! The coordinator process: the [`core::Core`] in one task that owns it (no
//! lock around it, no race between decisions), the front doors that reach
//! it through a [`CoreHandle`], and the ticker that moves its time.
//!
//! - `core/`: jobs, agents, allocations and the scheduler engine, in domain
//!   types; the only code that touches the engine or the store;
//! - `store.rs`: durable state (SQLite by default);
//! - `api/`: the front doors. `grpc.rs` serves the CLI and the agents,
//!   `http.rs` the web UI, the JSON API and `/metrics`;
//! - `metrics.rs`: the Prometheus exposition of the core's views and counts;
//! - `pipelines.rs`, `logs.rs`: what front doors read beyond the core
//!   (Kafka lag, agents' logs);
//! - `sql/`: the SQL catalog, the warm pool and Flight SQL (served on the
//!   same address as gRPC).

pub mod api;
pub mod core;
pub mod logs;
pub mod metrics;
pub mod pipelines;
pub mod sql;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, oneshot};

use self::core::{CoordinatorError, Core, CoreSettings, SystemClock};
use self::store::SqliteStore;

/// How the coordinator process runs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Where the web UI, the JSON API, `/metrics` and health probes are served.
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    pub core: CoreSettings,
    pub sql: sql::SqlSettings,
    /// The Kafka brokers pipelines use unless their spec names others.
    pub kafka_bootstrap: Option<String>,
    /// They are `cohort up`'s embedded broker.
    pub kafka_embedded: bool,
    /// Names and addresses its certificate carries besides localhost, its
    /// host name and its listen address (as kubeadm's `--apiserver-cert-extra-sans`).
    pub tls_names: Vec<String>,
}

type Call = Box<dyn FnOnce(&mut Core) + Send>;

/// A front door's way into the core: each call runs on the core's task,
/// one at a time, in arrival order.
#[derive(Clone)]
pub struct CoreHandle {
    tx: mpsc::Sender<Call>,
    /// How front doors call agents (their log services): TLS, as the coordinator.
    pub agents_tls: tonic::transport::ClientTlsConfig,
}

impl CoreHandle {
    /// Runs `f` on the core and returns what it returns.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core) -> R + Send + 'static,
    ) -> Result<R, CoordinatorError> {
        let (reply, rx) = oneshot::channel();
        let call: Call = Box::new(move |core| {
            let _ = reply.send(f(core));
        });
        let gone = || CoordinatorError::Unavailable("the coordinator is shutting down".into());
        self.tx.send(call).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }
}

/// Starts the task that owns `core`. It ends when every handle is dropped
/// or when a state store failure stops the core; `stopped` then fires.
pub fn spawn_core(
    mut core: Core,
    agents_tls: tonic::transport::ClientTlsConfig,
) -> (CoreHandle, oneshot::Receiver<()>) {
    let (tx, mut rx) = mpsc::channel::<Call>(1024);
    let (done, stopped) = oneshot::channel();
    tokio::spawn(async move {
        while let Some(call) = rx.recv().await {
            call(&mut core);
            if core.failed() {
                break;
            }
        }
        let _ = done.send(());
    });
    (CoreHandle { tx, agents_tls }, stopped)
}

/// Moves the core's time every 100 ms: heartbeats, grace periods, backoff.
/// Each tick's duration is observed as the scheduling pass latency.
pub fn spawn_ticker(handle: CoreHandle, metrics: Arc<metrics::Metrics>) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(100));
        loop {
            every.tick().await;
            let pass = metrics.scheduling_pass.clone();
            let timed = move |core: &mut Core| {
                let started = std::time::Instant::now();
                let ticked = core.tick();
                pass.observe(started.elapsed().as_secs_f64());
                ticked
            };
            match handle.call(timed).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "coordinator tick failed"),
                Err(_) => break,
            }
        }
    });
}

/// Writes `content` to `path` readable by its owner only.
pub fn write_private(path: &std::path::Path, content: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(content)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The key job tokens are derived from: made on first start, kept in the data dir.
fn cluster_secret(data_dir: &std::path::Path) -> anyhow::Result<[u8; 32]> {
    let path = data_dir.join("cluster.secret");
    if let Ok(bytes) = std::fs::read(&path)
        && let Ok(secret) = <[u8; 32]>::try_from(bytes.as_slice())
    {
        return Ok(secret);
    }
    let mut secret = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut secret)?;
    write_private(&path, &secret)?;
    Ok(secret)
}

/// Makes sure the data dir holds a working admin token (`admin.token`) and
/// join token (`join.token`, with the CA's fingerprint), issuing new ones
/// where a file is missing or its token no longer works. Whoever can read
/// the data dir owns the cluster anyway.
fn bootstrap_tokens(core: &mut Core, data_dir: &std::path::Path, ca_fingerprint: &str) -> anyhow::Result<()> {
    use self::core::auth::{Principal, Role};
    for (file, role) in [("admin.token", Role::Admin), ("join.token", Role::Agent)] {
        let path = data_dir.join(file);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        let (token, pin) = crate::tls::split_join_token(&current);
        let works = match core.authenticate(token) {
            Ok(Principal::Admin { .. }) => role == Role::Admin,
            Ok(Principal::Agent { .. }) => role == Role::Agent && pin == Some(ca_fingerprint),
            _ => false,
        };
        if works {
            continue;
        }
        let (_, token) = api::auth::random_token()?;
        let description = format!("issued at start, in {}", path.display());
        core.create_token(&token, role, Vec::new(), None, description)?;
        let text = if role == Role::Agent { crate::tls::join_token(&token, ca_fingerprint) } else { token };
        write_private(&path, format!("{text}\n").as_bytes())?;
        tracing::info!(path = %path.display(), role = role.as_str(), "issued a token");
    }
    Ok(())
}

/// What the coordinator's certificate names besides [`crate::tls::COORDINATOR_NAME`]:
/// localhost, this host, the addresses it listens on, and `extra`.
fn certificate_names(listen: &[SocketAddr], extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        names.push(host.trim().to_string());
    }
    names.extend(listen.iter().filter(|a| !a.ip().is_unspecified()).map(|a| a.ip().to_string()));
    names.extend(extra.iter().cloned());
    names.sort();
    names.dedup();
    names
}

/// Runs the coordinator until the process ends, or fails when its state
/// store does (its supervisor restarts it from the store).
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create {}", settings.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let address = listener.local_addr()?;
    let http_listener = api::http::bind(settings.http).await?;
    let http_address = http_listener.local_addr()?;
    let store = SqliteStore::open(&settings.data_dir.join("state.db"))?;
    let streams = api::grpc::AgentStreams::default();
    let core_settings = CoreSettings { token_secret: cluster_secret(&settings.data_dir)?, ..settings.core.clone() };
    let mut core =
        Core::open(Box::new(store), Arc::new(SystemClock::default()), Box::new(streams.clone()), core_settings)?;
    let ca = Arc::new(crate::tls::ClusterCa::load_or_create(&settings.data_dir)?);
    let (chain_pem, key_pem) =
        ca.coordinator_certificate(&certificate_names(&[address, http_address], &settings.tls_names))?;
    let credentials = crate::tls::Credentials { ca_pem: ca.pem().to_string(), chain_pem, key_pem };
    bootstrap_tokens(&mut core, &settings.data_dir, &ca.fingerprint())?;
    core.set_endpoints(self::core::model::ClusterStatus {
        coordinator: address.to_string(),
        http: http_address.to_string(),
        kafka_bootstrap: settings.kafka_bootstrap.clone().unwrap_or_default(),
        kafka_embedded: settings.kafka_embedded,
        ..Default::default()
    });
    tracing::info!(%address, data_dir = %settings.data_dir.display(), "coordinator listening");
    println!(
        "coordinator listening on {address} (TLS; CA {}); web UI and /metrics on https://{http_address}",
        settings.data_dir.join("ca.pem").display()
    );
    let (handle, stopped) = spawn_core(core, credentials.client(crate::tls::AGENT_NAME));
    let metrics = Arc::new(metrics::Metrics::default());
    spawn_ticker(handle.clone(), metrics.clone());
    let http = api::http::HttpServer::new(handle.clone(), metrics);
    let sql_slot = http.sql.clone();
    let http_served =
        tokio::spawn(http.serve(crate::tls::TlsListener::new(http_listener, credentials.rustls_server()?)?));
    let worker_tls = credentials.client(crate::tls::AGENT_NAME);
    let sql = sql::SqlFront::start(handle.clone(), settings.sql.clone(), settings.data_dir.clone(), worker_tls).await?;
    let _ = sql_slot.set(sql.clone());
    tokio::select! {
        served = api::grpc::serve(listener, credentials.server(), ca, handle, streams, sql) => served,
        served = http_served => served.map_err(anyhow::Error::from).and_then(|r| r),
        _ = stopped => anyhow::bail!("the coordinator stopped after a state store failure (see the log above)"),
    }
}
