//! The agent: registers its host, keeps a stream open to the coordinator,
//! launches executors (the `cohort` binary, `cohort executor --kind ...`)
//! as process groups with limits, stops them with SIGTERM → grace →
//! SIGKILL, reports exits with the tail of their output, and serves their
//! logs. It reconnects when the coordinator goes away, reporting what it
//! runs so nothing healthy is killed by a coordinator restart.

mod isolation;
mod logs;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use cohort_proto as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub use isolation::Isolation;

#[derive(Clone, Debug)]
pub struct Settings {
    pub join: String,
    pub name: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub labels: BTreeMap<String, String>,
    pub data_dir: PathBuf,
    /// Where the log service listens (port 0: any free port).
    pub listen: SocketAddr,
}

struct Executor {
    job: u64,
    slot: u32,
    pid: u32,
    stop_requested: bool,
}

#[derive(Clone)]
struct Agent {
    settings: Settings,
    isolation: Isolation,
    executors: Arc<Mutex<HashMap<u64, Executor>>>,
    outbox: mpsc::UnboundedSender<pb::AgentMessage>,
}

fn message(body: pb::agent_message::Body) -> pb::AgentMessage {
    pb::AgentMessage { body: Some(body) }
}

/// Where an executor's combined stdout and stderr go.
pub fn log_path(data_dir: &Path, alloc: u64) -> PathBuf {
    data_dir.join("logs").join(format!("alloc-{alloc}.log"))
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    std::fs::create_dir_all(settings.data_dir.join("logs"))
        .with_context(|| format!("cannot create {}", settings.data_dir.display()))?;
    let isolation = Isolation::detect(&settings.name);
    let listener = tokio::net::TcpListener::bind(settings.listen).await?;
    let logs_address = listener.local_addr()?.to_string();
    let (outbox, out_rx) = mpsc::unbounded_channel();
    let agent = Agent { settings: settings.clone(), isolation, executors: Arc::default(), outbox };
    tracing::info!(node = %settings.name, isolation = agent.isolation.name(), logs = %logs_address, "agent starting");
    println!("agent {} joining {} (isolation: {})", settings.name, settings.join, agent.isolation.name());
    let logs = logs::LogService::new(settings.data_dir.clone(), agent.executors_alive());
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(pb::agent_logs_server::AgentLogsServer::new(logs))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    let out_rx = Arc::new(tokio::sync::Mutex::new(out_rx));
    let connect = {
        let agent = agent.clone();
        async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match agent.session(&logs_address, out_rx.clone()).await {
                    Ok(()) => backoff = Duration::from_millis(100),
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "coordinator connection ended; retrying"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    };
    tokio::select! {
        _ = connect => {}
        _ = shutdown_signal() => {
            tracing::info!("agent stopping: stopping its executors");
            agent.stop_all(Duration::from_secs(5)).await;
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

impl Agent {
    fn executors_alive(&self) -> Arc<Mutex<HashMap<u64, Executor>>> {
        self.executors.clone()
    }

    fn running(&self) -> Vec<pb::RunningExecutor> {
        let execs = self.executors.lock().expect("executor table");
        execs
            .iter()
            .map(|(&alloc, e)| pb::RunningExecutor { alloc_id: alloc, job_id: e.job, slot: e.slot, pid: e.pid })
            .collect()
    }

    /// One registration and attached stream, until either side closes it.
    async fn session(
        &self,
        logs_address: &str,
        out_rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<pb::AgentMessage>>>,
    ) -> anyhow::Result<()> {
        let s = &self.settings;
        let mut client =
            pb::cluster_client::ClusterClient::connect(format!("http://{}", s.join)).await.context("connect")?;
        let registered = client
            .register(pb::RegisterRequest {
                name: s.name.clone(),
                capacity: Some(pb::Resources { cpu_millis: s.cpu_millis, memory_bytes: s.memory_bytes }),
                labels: s.labels.clone().into_iter().collect(),
                logs_address: logs_address.to_string(),
                running: self.running(),
                isolation: self.isolation.name().into(),
            })
            .await
            .context("register")?
            .into_inner();
        let (tx, rx) = mpsc::channel(1024);
        tx.send(message(pb::agent_message::Body::Hello(pb::Hello { node_id: registered.node_id }))).await?;
        let mut commands = client.attach(ReceiverStream::new(rx)).await.context("attach")?.into_inner();
        tracing::info!(node_id = registered.node_id, "attached to the coordinator");
        let interval = Duration::from_millis(registered.heartbeat_interval_ms.max(50));
        let me = self.clone();
        let forwarder = tokio::spawn(async move {
            let mut out = out_rx.lock().await;
            let mut beat = tokio::time::interval(interval);
            loop {
                let msg = tokio::select! {
                    m = out.recv() => match m { Some(m) => m, None => break },
                    _ = beat.tick() => message(pb::agent_message::Body::Heartbeat(pb::Heartbeat { running: me.running() })),
                };
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let result = async {
            while let Some(command) = commands.message().await? {
                match command.body {
                    Some(pb::command::Body::Launch(l)) => self.launch(l),
                    Some(pb::command::Body::Kill(k)) => {
                        self.kill(k.alloc_id, Duration::from_millis(k.grace_ms), &k.reason)
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

    fn launch(&self, l: pb::Launch) {
        let alloc = l.alloc_id;
        if self.executors.lock().expect("executor table").contains_key(&alloc) {
            return;
        }
        match self.spawn(&l) {
            Ok(pid) => {
                tracing::info!(job = l.job_id, slot = l.slot, alloc, pid, "executor started");
                let _ = self
                    .outbox
                    .send(message(pb::agent_message::Body::Started(pb::ExecutorStarted { alloc_id: alloc, pid })));
            }
            Err(e) => {
                tracing::error!(alloc, error = %format!("{e:#}"), "executor failed to start");
                let exited = pb::ExecutorExited {
                    alloc_id: alloc,
                    exit_code: 127,
                    signal: String::new(),
                    stderr_tail: format!("{e:#}"),
                    stopped: false,
                    reason: "failed to start".into(),
                };
                let _ = self.outbox.send(message(pb::agent_message::Body::Exited(exited)));
            }
        }
    }

    fn spawn(&self, l: &pb::Launch) -> anyhow::Result<u32> {
        let path = log_path(&self.settings.data_dir, l.alloc_id);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let limits = l.limits.unwrap_or_default();
        let procs: Vec<std::fs::File> = self
            .isolation
            .prepare(l.alloc_id, limits.cpu_millis, limits.memory_bytes)
            .into_iter()
            .filter_map(|p| std::fs::OpenOptions::new().write(true).open(p).ok())
            .collect();
        let kind = crate::wire::executor_kind(l).context("the launch names no executor kind this agent knows")?;
        let exe = std::env::current_exe().context("cannot find the cohort binary")?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("executor").arg("--kind").arg(kind.as_str()).arg("--").args(&l.argv);
        cmd.envs(&l.env).env("COHORT_ALLOC_ID", l.alloc_id.to_string());
        cmd.stdin(std::process::Stdio::null()).stdout(out.try_clone()?).stderr(out);
        cmd.process_group(0);
        let fds: Vec<i32> = procs.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
        // SAFETY: only async-signal-safe calls (write, prctl) run between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &fds {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                }
                // An executor dies with its agent: a lost host's work must not
                // run on unmanaged while the coordinator re-places it.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("spawn")?;
        drop(procs);
        let pid = child.id().context("the executor exited at once")?;
        self.executors
            .lock()
            .expect("executor table")
            .insert(l.alloc_id, Executor { job: l.job_id, slot: l.slot, pid, stop_requested: false });
        let me = self.clone();
        let (alloc, memory) = (l.alloc_id, limits.memory_bytes);
        tokio::spawn(async move {
            let mut over = None;
            let status = loop {
                tokio::select! {
                    s = child.wait() => break s,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {
                        if over.is_none()
                            && let Some(why) = me.isolation.over_limit(pid, memory) {
                                tracing::warn!(alloc, %why, "killing executor");
                                signal_group(pid, libc::SIGKILL);
                                over = Some(why);
                            }
                    }
                }
            };
            me.exited(alloc, status.ok(), over);
        });
        Ok(pid)
    }

    fn exited(&self, alloc: u64, status: Option<std::process::ExitStatus>, over: Option<String>) {
        let executor = self.executors.lock().expect("executor table").remove(&alloc);
        self.isolation.cleanup(alloc);
        let stopped = executor.as_ref().is_some_and(|e| e.stop_requested);
        let (exit_code, signal) = match status {
            Some(s) => match (s.code(), s.signal()) {
                (Some(c), _) => (c, String::new()),
                (None, Some(sig)) => (-1, signal_name(sig)),
                (None, None) => (-1, String::new()),
            },
            None => (-1, String::new()),
        };
        let tail = output_tail(&log_path(&self.settings.data_dir, alloc), 20);
        tracing::info!(alloc, exit_code, %signal, stopped, "executor exited");
        let exited = pb::ExecutorExited {
            alloc_id: alloc,
            exit_code,
            signal,
            stderr_tail: tail,
            stopped,
            reason: over.unwrap_or_default(),
        };
        let _ = self.outbox.send(message(pb::agent_message::Body::Exited(exited)));
    }

    fn kill(&self, alloc: u64, grace: Duration, reason: &str) {
        let pid = {
            let mut execs = self.executors.lock().expect("executor table");
            match execs.get_mut(&alloc) {
                Some(e) => {
                    e.stop_requested = true;
                    e.pid
                }
                None => {
                    // Never started here (or already gone): it is stopped.
                    let exited = pb::ExecutorExited {
                        alloc_id: alloc,
                        exit_code: -1,
                        signal: String::new(),
                        stderr_tail: String::new(),
                        stopped: true,
                        reason: "not running".into(),
                    };
                    let _ = self.outbox.send(message(pb::agent_message::Body::Exited(exited)));
                    return;
                }
            }
        };
        tracing::info!(alloc, pid, ?grace, reason, "stopping executor: SIGTERM");
        signal_group(pid, libc::SIGTERM);
        let executors = self.executors.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if executors.lock().expect("executor table").contains_key(&alloc) {
                tracing::info!(alloc, pid, "grace period over: SIGKILL");
                signal_group(pid, libc::SIGKILL);
            }
        });
    }

    async fn stop_all(&self, grace: Duration) {
        let allocs: Vec<u64> = self.executors.lock().expect("executor table").keys().copied().collect();
        for alloc in &allocs {
            self.kill(*alloc, grace, "agent shutting down");
        }
        let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(1);
        while !self.executors.lock().expect("executor table").is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn signal_group(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a negative pid signals the executor's process group.
    unsafe {
        libc::kill(-(pid as i32), sig);
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGABRT => "SIGABRT".into(),
        other => format!("signal {other}"),
    }
}

/// The last `lines` lines of a log file (reading at most its last 8 KiB).
fn output_tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(8192)));
    let mut buf = String::new();
    let _ = f.read_to_string(&mut buf);
    let all: Vec<&str> = buf.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
