//! `cohort up`: a whole cluster on this machine: a coordinator and N agents
//! as child processes sharing this host, state in a data directory, and a
//! clean stop on Ctrl-C (agents stop their executors first).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

pub struct Settings {
    pub agents: u32,
    pub data_dir: PathBuf,
    pub listen: String,
}

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

pub async fn run(s: Settings) -> Result<()> {
    let mut children = start(&s).await?;
    let (cpu, memory) = host_resources();
    println!("Cohort is up.");
    println!("  coordinator (gRPC)  {}", s.listen);
    println!(
        "  agents              {} sharing this host ({} cores, {} in all)",
        s.agents,
        cpu / 1000,
        cohort_scheduler::resources::format_bytes(memory)
    );
    println!("  state               {}", s.data_dir.display());
    println!("  try                 cohort submit job.toml && cohort jobs   (COHORT_COORDINATOR={})", s.listen);
    println!("Press Ctrl-C to stop; every executor is stopped with it.");
    tokio::select! {
        _ = crate::agent::shutdown_signal() => {}
        (name, status) = wait_any(&mut children) => {
            eprintln!("{name} exited ({status}); stopping the cluster");
        }
    }
    stop(children).await;
    println!("Cohort stopped.");
    Ok(())
}

/// Starts the coordinator, waits until it listens, then the agents, each
/// offered an equal share of this host.
pub async fn start(s: &Settings) -> Result<Vec<(String, Child)>> {
    if s.agents == 0 {
        bail!("--agents must be at least 1");
    }
    std::fs::create_dir_all(&s.data_dir).with_context(|| format!("cannot create {}", s.data_dir.display()))?;
    let exe = std::env::current_exe()?;
    let mut children: Vec<(String, Child)> = Vec::new();
    let coordinator = Command::new(&exe)
        .args(["coordinator", "--listen", &s.listen, "--data-dir"])
        .arg(s.data_dir.join("coordinator"))
        .stdout(Stdio::null())
        .stderr(log_file(&s.data_dir, "coordinator")?)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the coordinator")?;
    children.push(("coordinator".into(), coordinator));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(&s.listen).await.is_err() {
        if tokio::time::Instant::now() > deadline {
            bail!(
                "the coordinator did not start listening on {} within 10 s (is the port taken? see {})",
                s.listen,
                s.data_dir.join("coordinator.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (cpu, memory) = host_resources();
    for i in 0..s.agents {
        let name = format!("agent-{i}");
        let agent = Command::new(&exe)
            .args(["agent", "--join", &s.listen, "--name", &name])
            .args([
                "--cpu",
                &format!("{}m", cpu / s.agents as u64),
                "--memory",
                &(memory / s.agents as u64).to_string(),
            ])
            .arg("--data-dir")
            .arg(s.data_dir.join(&name))
            .stdout(Stdio::null())
            .stderr(log_file(&s.data_dir, &name)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        children.push((name, agent));
    }
    Ok(children)
}

fn log_file(dir: &std::path::Path, name: &str) -> Result<Stdio> {
    let path = dir.join(format!("{name}.log"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Stdio::from(file))
}

/// Stops agents first (they stop their executors), then the coordinator.
pub async fn stop(mut children: Vec<(String, Child)>) {
    for (_, child) in children.iter_mut().rev() {
        if let Some(pid) = child.id() {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }
    for (name, child) in children.iter_mut().rev() {
        if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
            eprintln!("{name} did not stop within 10 s; killing it");
            let _ = child.kill().await;
        }
    }
}

async fn wait_any(children: &mut [(String, Child)]) -> (String, String) {
    loop {
        for (name, child) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return (name.clone(), status.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
