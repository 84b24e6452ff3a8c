//! `cohort up`: a whole cluster on this machine: a coordinator and N agents
//! as child processes sharing this host, state in a data directory.
//!
//! It supervises them as systemd or a Mesos master would: a process that
//! dies is started again after a backoff (1 s, doubling up to 30 s, back to
//! 1 s once it has stayed up a minute), and the cluster keeps serving: a
//! restarted coordinator reloads its state and its agents reconnect; a
//! restarted agent re-adopts the executors it left running. Only Ctrl-C or
//! SIGTERM stops everything (agents first, which stop their executors); if
//! `up` itself is killed, its children get SIGTERM from the kernel
//! (`PR_SET_PDEATHSIG`) and stop the same way.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};
use tokio::time::Instant;

pub struct Settings {
    pub agents: u32,
    pub data_dir: PathBuf,
    pub listen: String,
    /// The coordinator's HTTP address (web UI, /metrics).
    pub http: String,
    /// Host ports for service instances, split among the agents.
    pub ports: (u16, u16),
    /// More flags for `cohort coordinator` (the SQL pool's, the brokers).
    pub coordinator_args: Vec<String>,
    /// The Kafka bootstrap address pipelines use, and whether it is the
    /// embedded broker (for what `up` prints).
    pub kafka: Option<(String, bool)>,
}

/// First wait before restarting a process that died.
const RESTART_FIRST: Duration = Duration::from_secs(1);
const RESTART_CAP: Duration = Duration::from_secs(30);
/// Up this long, a process counts as healthy again: its backoff resets.
const RESTART_RESET_AFTER: Duration = Duration::from_secs(60);

/// `$XDG_DATA_HOME/cohort`, or `~/.local/share/cohort`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("cohort");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/cohort")
}

/// Cores and memory of this host.
pub fn host_resources() -> (u64, u64) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kb = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1 << 20);
    (cores * 1000, kb * 1024)
}

/// One process `cohort up` runs, and how to start it again.
pub struct Supervised {
    pub name: String,
    args: Vec<String>,
    /// Secrets go in the environment, not on command lines others can read.
    env: Vec<(String, String)>,
    child: Option<Child>,
    started: Instant,
    backoff: Duration,
    restart_at: Option<Instant>,
    log: PathBuf,
}

impl Supervised {
    fn new(name: &str, args: Vec<String>, data_dir: &Path) -> Supervised {
        Supervised {
            name: name.to_string(),
            args,
            env: Vec::new(),
            child: None,
            started: Instant::now(),
            backoff: RESTART_FIRST,
            restart_at: None,
            log: data_dir.join(format!("{name}.log")),
        }
    }

    fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let mut command = Command::new(std::env::current_exe()?);
        command.args(&self.args).envs(self.env.iter().cloned()).stdout(Stdio::null()).stderr(Stdio::from(log));
        let up = std::process::id();
        // SAFETY: only async-signal-safe calls (prctl, getppid, raise) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // `up` killed with -9 takes its cluster with it, as Ctrl-C does
                // (agents stop their executors on SIGTERM): nothing is left
                // holding its ports, data dir and slots. The signal is tied to
                // the forking thread: `up` spawns from its main thread, which
                // lives as long as it does.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                if libc::getppid() as u32 != up {
                    libc::raise(libc::SIGTERM);
                }
                Ok(())
            });
        }
        let child = command.spawn().with_context(|| format!("cannot start {}", self.name))?;
        self.child = Some(child);
        self.started = Instant::now();
        self.restart_at = None;
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }
}

pub async fn run(s: Settings) -> Result<()> {
    let mut children = start(&s).await?;
    let (cpu, memory) = host_resources();
    println!("Cohort is up.");
    println!("  coordinator (gRPC)  {}", s.listen);
    println!("  SQL (Flight SQL)    grpc+tls://{}   try: cohort sql", s.listen);
    // As Jupyter does: the link signs the browser in (the token is in the client config anyway).
    let token = crate::cli::config::load(&crate::cli::config::config_path())?.token.unwrap_or_default();
    println!("  web UI              https://{}/?token={token}", s.http);
    println!("                      (/metrics for Prometheus; try: cohort top)");
    println!(
        "  cluster CA          {}   (every connection is TLS under it; browsers warn until it is trusted)",
        s.data_dir.join("coordinator").join("ca.pem").display()
    );
    println!(
        "  agents              {} sharing this host ({} cores, {} in all)",
        s.agents,
        cpu / 1000,
        cohort_scheduler::resources::format_bytes(memory)
    );
    match &s.kafka {
        Some((bootstrap, true)) => println!(
            "  Kafka (embedded)    {bootstrap}   in memory, for trying Cohort out (keeps ~5 MiB per partition; --kafka-brokers for a real cluster)"
        ),
        Some((bootstrap, false)) => println!("  Kafka               {bootstrap}"),
        None => {}
    }
    println!("  state               {}", s.data_dir.display());
    println!(
        "  client config       {}   (this cluster's address, its CA and an admin token, for the CLI)",
        crate::cli::config::config_path().display()
    );
    println!("  try                 cohort submit job.toml && cohort jobs");
    println!("Press Ctrl-C to stop; every executor is stopped with it. A process that dies is restarted.");
    tokio::select! {
        _ = crate::agent::shutdown_signal() => {}
        r = supervise(&mut children) => r?,
    }
    stop(children).await;
    println!("Cohort stopped.");
    Ok(())
}

/// Restarts whatever dies, with backoff, until cancelled.
async fn supervise(children: &mut [Supervised]) -> Result<()> {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = Instant::now();
        for p in children.iter_mut() {
            if let Some(child) = p.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                p.child = None;
                if p.started.elapsed() >= RESTART_RESET_AFTER {
                    p.backoff = RESTART_FIRST;
                }
                let wait = p.backoff;
                p.backoff = (p.backoff * 2).min(RESTART_CAP);
                p.restart_at = Some(now + wait);
                eprintln!("{} exited ({status}); restarting it in {} s", p.name, wait.as_secs());
                tracing::warn!(process = %p.name, %status, restart_in_s = wait.as_secs(), "supervised process exited");
            }
            if p.child.is_none() && p.restart_at.is_some_and(|at| at <= now) {
                match p.start() {
                    Ok(()) => {
                        eprintln!("{} restarted", p.name);
                        tracing::info!(process = %p.name, "supervised process restarted");
                    }
                    Err(e) => {
                        eprintln!("cannot restart {}: {e:#}", p.name);
                        p.restart_at = Some(now + p.backoff);
                    }
                }
            }
        }
    }
}

/// The data dirs this process runs a cluster on, locked (`flock`) for as
/// long as it lives: a second `cohort up` on one would share its state
/// and its agents' executors, and stop them when it stopped.
static LOCKED: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());

fn lock_data_dir(dir: &Path) -> Result<()> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("up.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            bail!(
                "{} is in use by another `cohort up` (pid {}): stop it first, or give this one its own --data-dir",
                dir.display(),
                holder.trim()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    LOCKED.lock().expect("data dir locks").push(file);
    Ok(())
}

/// Starts the coordinator, waits until it listens, then the agents, each
/// offered an equal share of this host.
pub async fn start(s: &Settings) -> Result<Vec<Supervised>> {
    if s.agents == 0 {
        bail!("--agents must be at least 1");
    }
    std::fs::create_dir_all(&s.data_dir).with_context(|| format!("cannot create {}", s.data_dir.display()))?;
    lock_data_dir(&s.data_dir)?;
    let mut children = Vec::new();
    let coordinator_dir = s.data_dir.join("coordinator").display().to_string();
    let mut args = vec!["coordinator".into(), "--listen".into(), s.listen.clone(), "--http".into(), s.http.clone()];
    args.extend(["--data-dir".into(), coordinator_dir]);
    args.extend(s.coordinator_args.iter().cloned());
    // Else a process already there (say, another cluster's coordinator)
    // would answer for ours, which fails behind it.
    check_free(&s.listen, "--listen")?;
    check_free(&s.http, "--http")?;
    let mut coordinator = Supervised::new("coordinator", args, &s.data_dir);
    coordinator.start()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(&s.listen).await.is_err() {
        let exited = coordinator.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            let log = std::fs::read_to_string(&coordinator.log).unwrap_or_default();
            let last = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(nothing)");
            bail!("the coordinator exited ({status}) before it listened on {}; its log ends: {last}", s.listen);
        }
        if Instant::now() > deadline {
            bail!(
                "the coordinator did not start listening on {} within 10 s (see {})",
                s.listen,
                coordinator.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    children.push(coordinator);
    let coordinator_dir = s.data_dir.join("coordinator");
    let admin = read_token(&coordinator_dir.join("admin.token"), deadline).await?;
    let join = read_token(&coordinator_dir.join("join.token"), deadline).await?;
    // The CA is written before the tokens: it is there once they are.
    let ca_path = coordinator_dir.join("ca.pem");
    let ca = std::fs::read_to_string(&ca_path).with_context(|| format!("cannot read {}", ca_path.display()))?;
    let config =
        crate::cli::config::ClientConfig { coordinator: Some(s.listen.clone()), token: Some(admin), ca: Some(ca) };
    crate::cli::config::save(&crate::cli::config::config_path(), &config)?;
    let (cpu, memory) = host_resources();
    for i in 0..s.agents {
        let name = format!("agent-{i}");
        // Agents sharing one host share its port range too.
        let span = ((s.ports.1 - s.ports.0) / s.agents as u16).max(1);
        let first = s.ports.0 + i as u16 * span;
        let args = vec![
            "agent".to_string(),
            "--join".into(),
            s.listen.clone(),
            "--name".into(),
            name.clone(),
            "--cpu".into(),
            format!("{}m", cpu / s.agents as u64),
            "--memory".into(),
            (memory / s.agents as u64).to_string(),
            "--ports".into(),
            format!("{first}-{}", first + span - 1),
            "--data-dir".into(),
            s.data_dir.join(&name).display().to_string(),
        ];
        let mut agent = Supervised::new(&name, args, &s.data_dir);
        agent.env.push(("COHORT_JOIN_TOKEN".into(), join.clone()));
        agent.start()?;
        children.push(agent);
    }
    Ok(children)
}

/// Whether `address` (given as `flag`) can be listened on.
fn check_free(address: &str, flag: &str) -> Result<()> {
    match std::net::TcpListener::bind(address) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            bail!("{address} ({flag}) is in use by another process: stop it, or give {flag} another port")
        }
        Err(e) => Err(e).with_context(|| format!("cannot listen on {address} ({flag})")),
    }
}

/// A token the coordinator writes to its data dir on start.
async fn read_token(path: &Path, deadline: Instant) -> Result<String> {
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.trim().is_empty()
        {
            return Ok(text.trim().to_string());
        }
        if Instant::now() > deadline {
            bail!("the coordinator did not write {} within 10 s", path.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops agents first (they stop their executors), then the coordinator.
pub async fn stop(mut children: Vec<Supervised>) {
    for p in children.iter().rev() {
        if let Some(pid) = p.pid() {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }
    for p in children.iter_mut().rev() {
        let Some(child) = p.child.as_mut() else { continue };
        if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
            eprintln!("{} did not stop within 10 s; killing it", p.name);
            let _ = child.kill().await;
        }
    }
}
