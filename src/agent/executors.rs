//! The executors an agent runs: started as process groups with limits,
//! stopped SIGTERM → grace → SIGKILL, and recorded on disk so that an agent
//! that restarts finds them again.
//!
//! Each executor is `cohort executor --alloc-dir DIR ...`, a small
//! supervisor that runs the workload, waits for it and writes its exit
//! status into DIR before it ends. The agent writes `launch.json` beside it.
//! Executors do not die with their agent: one that restarts with the same
//! data dir re-adopts those still running (watching them by pid) and reads
//! the recorded status of those that ended meanwhile, so nothing is
//! restarted or guessed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use cohort_proto as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::Isolation;
use crate::executor::{ExecutorKind, ExitRecord};
use crate::spec::HealthSpec;

/// An executor the agent runs (or re-adopted).
pub(super) struct Executor {
    pub job: u64,
    pub slot: u32,
    pub pid: u32,
    pub stop_requested: bool,
    /// Why the agent itself ended it (a failing health check), if it did.
    pub killed_for: Option<String>,
}

/// What the agent keeps on disk about an executor.
#[derive(Serialize, Deserialize)]
struct LaunchRecord {
    alloc: u64,
    job: u64,
    slot: u32,
    kind: ExecutorKind,
    pid: u32,
    memory_bytes: u64,
    ports: BTreeMap<String, u16>,
    health: Option<HealthSpec>,
    /// The scratch directory of a slot run as another user, removed at its end.
    #[serde(default)]
    scratch: Option<PathBuf>,
}

#[derive(Clone)]
pub(super) struct Executors {
    pub data_dir: PathBuf,
    pub isolation: Isolation,
    pub max_executors: u32,
    /// Set for every executor: where the coordinator and this host are.
    pub env: BTreeMap<String, String>,
    pub table: Arc<Mutex<HashMap<u64, Executor>>>,
    pub outbox: mpsc::UnboundedSender<pb::AgentMessage>,
    pub stats: Arc<super::http::AgentStats>,
    pub users: super::identity::SlotUsers,
    /// This node's name.
    pub name: String,
    /// The agent's credentials, which Cohort's own executors serve and call with.
    pub tls_dir: PathBuf,
}

fn message(body: pb::agent_message::Body) -> pb::AgentMessage {
    pb::AgentMessage { body: Some(body) }
}

/// Where an executor's combined stdout and stderr go.
pub fn log_path(data_dir: &Path, alloc: u64) -> PathBuf {
    data_dir.join("logs").join(format!("alloc-{alloc}.log"))
}

fn alloc_dir(data_dir: &Path, alloc: u64) -> PathBuf {
    data_dir.join("allocs").join(alloc.to_string())
}

impl Executors {
    pub fn running(&self) -> Vec<pb::RunningExecutor> {
        let execs = self.table.lock().expect("executor table");
        let mut out: Vec<pb::RunningExecutor> = execs
            .iter()
            .map(|(&alloc, e)| pb::RunningExecutor { alloc_id: alloc, job_id: e.job, slot: e.slot, pid: e.pid })
            .collect();
        out.sort_by_key(|r| r.alloc_id);
        out
    }

    fn send(&self, body: pb::agent_message::Body) {
        match &body {
            pb::agent_message::Body::Started(_) => {
                self.stats.started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            pb::agent_message::Body::Exited(e) => self.stats.ended(e),
            _ => {}
        }
        let _ = self.outbox.send(message(body));
    }

    fn failed_to_start(&self, alloc: u64, why: String) {
        self.send(pb::agent_message::Body::Exited(pb::ExecutorExited {
            alloc_id: alloc,
            exit_code: 127,
            stderr_tail: why,
            reason: "failed to start".into(),
            ..Default::default()
        }));
    }

    pub fn launch(&self, l: pb::Launch) {
        let alloc = l.alloc_id;
        {
            let execs = self.table.lock().expect("executor table");
            if execs.contains_key(&alloc) {
                return;
            }
            if self.max_executors > 0 && execs.len() >= self.max_executors as usize {
                drop(execs);
                let why = format!("the host already runs its maximum of {} executors", self.max_executors);
                tracing::warn!(alloc, "{why}");
                return self.failed_to_start(alloc, why);
            }
        }
        match self.spawn(&l) {
            Ok(pid) => {
                tracing::info!(job = l.job_id, slot = l.slot, alloc, pid, "executor started");
                self.send(pb::agent_message::Body::Started(pb::ExecutorStarted { alloc_id: alloc, pid }));
            }
            Err(e) => {
                tracing::error!(alloc, error = %format!("{e:#}"), "executor failed to start");
                self.failed_to_start(alloc, format!("{e:#}"));
            }
        }
    }

    fn spawn(&self, l: &pb::Launch) -> anyhow::Result<u32> {
        let kind = crate::wire::executor_kind(l).context("the launch names no executor kind this agent knows")?;
        let dir = alloc_dir(&self.data_dir, l.alloc_id);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = log_path(&self.data_dir, l.alloc_id);
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
        // Command and service slots run as their user; Cohort's own executors as the agent.
        let user = match kind {
            ExecutorKind::Command | ExecutorKind::Service => {
                self.users.for_slot(&l.run_as).map_err(|why| anyhow::anyhow!(why))?
            }
            _ => None,
        };
        let scratch = match &user {
            Some(u) => Some(
                super::identity::scratch_dir(u, &self.name, l.alloc_id)
                    .context("cannot make the slot's scratch dir")?,
            ),
            None => None,
        };
        let exe = std::env::current_exe().context("cannot find the cohort binary")?;
        let mut cmd = tokio::process::Command::new(exe);
        if let (Some(u), Some(dir)) = (&user, &scratch) {
            cmd.env(crate::executor::RUN_AS_ENV, format!("{}:{}:{}", u.uid, u.gid, u.name))
                .env(crate::executor::WORKDIR_ENV, dir);
        }
        cmd.arg("executor").arg("--kind").arg(kind.as_str()).arg("--alloc-dir").arg(&dir).arg("--").args(&l.argv);
        cmd.envs(&self.env)
            .envs(&l.env)
            .env_remove("COHORT_JOIN_TOKEN")
            .env_remove(crate::tls::CREDENTIALS_ENV)
            .env("COHORT_ALLOC_ID", l.alloc_id.to_string())
            .env("COHORT_CPU_MILLIS", limits.cpu_millis.to_string())
            .env("COHORT_MEMORY_BYTES", limits.memory_bytes.to_string());
        if user.is_none() {
            cmd.env(crate::tls::CREDENTIALS_ENV, &self.tls_dir);
        }
        cmd.stdin(std::process::Stdio::null()).stdout(out.try_clone()?).stderr(out);
        // Its own process group, so a stop reaches the workload's children too; and no
        // death signal from the agent: executors outlive an agent restart.
        cmd.process_group(0);
        let fds: Vec<i32> = procs.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
        // SAFETY: only async-signal-safe calls (write) run between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &fds {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("spawn")?;
        drop(procs);
        let pid = child.id().context("the executor exited at once")?;
        let record = LaunchRecord {
            alloc: l.alloc_id,
            job: l.job_id,
            slot: l.slot,
            kind,
            pid,
            memory_bytes: limits.memory_bytes,
            ports: l.ports.iter().map(|(k, v)| (k.clone(), *v as u16)).collect(),
            health: l.health.as_ref().and_then(crate::wire::health_from_pb),
            scratch,
        };
        write_atomically(&dir.join("launch.json"), &serde_json::to_vec(&record)?)?;
        self.adopt(&record);
        let me = self.clone();
        let (alloc, memory) = (l.alloc_id, limits.memory_bytes);
        tokio::spawn(async move {
            let mut over = None;
            loop {
                tokio::select! {
                    _ = child.wait() => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {
                        if over.is_none() && let Some(why) = me.isolation.over_limit(pid, memory) {
                            tracing::warn!(alloc, %why, "killing executor");
                            signal_group(pid, libc::SIGKILL);
                            over = Some(why);
                        }
                    }
                }
            }
            me.exited(alloc, over);
        });
        Ok(pid)
    }

    /// Puts an executor in the table and starts its health check.
    fn adopt(&self, r: &LaunchRecord) {
        let executor = Executor { job: r.job, slot: r.slot, pid: r.pid, stop_requested: false, killed_for: None };
        self.table.lock().expect("executor table").insert(r.alloc, executor);
        if let Some(spec) = &r.health {
            let tls = match r.kind {
                ExecutorKind::Batch | ExecutorKind::Store => {
                    crate::tls::Credentials::load(&self.tls_dir).map(|c| c.client(crate::tls::AGENT_NAME))
                }
                ExecutorKind::Command | ExecutorKind::Stream | ExecutorKind::Service => None,
            };
            super::health::watch(self.clone(), r.alloc, spec.clone(), r.ports.clone(), tls);
        }
    }

    /// An executor ended: report what its supervisor recorded.
    fn exited(&self, alloc: u64, over: Option<String>) {
        let mut report = self.exit_report(alloc);
        // A supervisor killed with -9 leaves its workload running, which
        // must not outlive it (nor keep a port, a Kafka partition, a file).
        if !self.isolation.kill_all(alloc)
            && let Some(pid) = self.table.lock().expect("executor table").get(&alloc).map(|e| e.pid)
        {
            // Without cgroups, its process group: the supervisor was just
            // reaped, and its pid stays reserved while the group has members.
            signal_group(pid, libc::SIGKILL);
        }
        // Its shared memory is charged to its cgroup: gone first.
        self.forget(alloc);
        self.isolation.cleanup(alloc);
        // Out of the table only once cleaned up: `stop_all` waits for an
        // empty table, and the agent may end right after it.
        let executor = self.table.lock().expect("executor table").remove(&alloc);
        let stopped = executor.as_ref().is_some_and(|e| e.stop_requested);
        let killed_for = executor.and_then(|e| e.killed_for);
        report.stopped = stopped && killed_for.is_none();
        report.reason = over.or(killed_for).unwrap_or(report.reason);
        tracing::info!(alloc, exit_code = report.exit_code, signal = %report.signal, stopped, "executor exited");
        self.send(pb::agent_message::Body::Exited(report));
    }

    /// Removes an ended executor's allocation dir, its scratch dir if it
    /// had one, and a store's shared memory (even after kill -9).
    fn forget(&self, alloc: u64) {
        let dir = alloc_dir(&self.data_dir, alloc);
        let _ = std::fs::remove_dir_all(cohort_batch::shm::store_dir(&dir));
        let record = std::fs::read(dir.join("launch.json")).ok();
        if let Some(scratch) =
            record.and_then(|b| serde_json::from_slice::<LaunchRecord>(&b).ok()).and_then(|r| r.scratch)
        {
            super::identity::remove_scratch(&scratch);
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The exit an executor's supervisor recorded, with the tail of its output.
    fn exit_report(&self, alloc: u64) -> pb::ExecutorExited {
        let tail = output_tail(&log_path(&self.data_dir, alloc), 20);
        let recorded = std::fs::read(alloc_dir(&self.data_dir, alloc).join(crate::executor::EXIT_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<ExitRecord>(&b).ok());
        match recorded {
            Some(ExitRecord { code: Some(code), error, .. }) => pb::ExecutorExited {
                alloc_id: alloc,
                exit_code: code,
                stderr_tail: tail,
                reason: error.unwrap_or_default(),
                ..Default::default()
            },
            Some(ExitRecord { signal: Some(sig), .. }) => pb::ExecutorExited {
                alloc_id: alloc,
                exit_code: -1,
                signal: signal_name(sig),
                stderr_tail: tail,
                // The kernel's OOM killer sends a plain SIGKILL: say whose limit it was.
                reason: match self.isolation.oom_kills(alloc) {
                    Some(kills) if sig == libc::SIGKILL && kills > 0 => {
                        "its memory limit was reached (the kernel's OOM killer)".into()
                    }
                    _ => String::new(),
                },
                ..Default::default()
            },
            // Killed before it could record (a stop's SIGKILL), or a record lost with its host.
            _ => pb::ExecutorExited {
                alloc_id: alloc,
                exit_code: -1,
                signal: "SIGKILL".into(),
                stderr_tail: tail,
                reason: "no exit status was recorded".into(),
                ..Default::default()
            },
        }
    }

    /// After a restart: re-adopts the executors still running and returns
    /// the recorded ends of those that stopped meanwhile.
    pub fn recover(&self) -> Vec<pb::ExecutorExited> {
        let mut ended = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.data_dir.join("allocs")) else { return ended };
        let mut records: Vec<LaunchRecord> = entries
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("launch.json")).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        records.sort_by_key(|r| r.alloc);
        for r in records {
            let dir = alloc_dir(&self.data_dir, r.alloc);
            if dir.join(crate::executor::EXIT_FILE).exists() || !is_our_executor(r.pid, &dir) {
                let mut report = self.exit_report(r.alloc);
                if !dir.join(crate::executor::EXIT_FILE).exists() {
                    report.lost = true;
                    report.reason = "ended while its agent was down, without recording how".into();
                }
                tracing::info!(
                    alloc = r.alloc,
                    exit_code = report.exit_code,
                    "an executor ended while the agent was down"
                );
                ended.push(report);
                // What its workload left running dies with it (by cgroup:
                // its pid may belong to another process by now).
                self.isolation.kill_all(r.alloc);
                self.forget(r.alloc);
                self.isolation.cleanup(r.alloc);
                continue;
            }
            tracing::info!(alloc = r.alloc, pid = r.pid, "re-adopting a running executor");
            self.adopt(&r);
            let me = self.clone();
            let (alloc, pid, memory) = (r.alloc, r.pid, r.memory_bytes);
            tokio::spawn(async move {
                // Not our child any more: watch it by pid until it is gone.
                let mut over = None;
                while is_our_executor(pid, &alloc_dir(&me.data_dir, alloc)) {
                    if over.is_none()
                        && let Some(why) = me.isolation.over_limit(pid, memory)
                    {
                        signal_group(pid, libc::SIGKILL);
                        over = Some(why);
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                me.exited(alloc, over);
            });
        }
        ended
    }

    /// SIGTERM now, SIGKILL after `grace`. `killed_for` marks a stop the agent
    /// chose itself (a failing health check), which is the workload's failure.
    pub fn kill(&self, alloc: u64, grace: Duration, reason: &str, killed_for: Option<String>) {
        let pid = {
            let mut execs = self.table.lock().expect("executor table");
            match execs.get_mut(&alloc) {
                Some(e) => {
                    e.stop_requested = true;
                    e.killed_for = killed_for;
                    e.pid
                }
                None => {
                    drop(execs);
                    // Never started here (or already gone): it is stopped.
                    self.send(pb::agent_message::Body::Exited(pb::ExecutorExited {
                        alloc_id: alloc,
                        exit_code: -1,
                        stopped: true,
                        reason: "not running".into(),
                        ..Default::default()
                    }));
                    return;
                }
            }
        };
        tracing::info!(alloc, pid, ?grace, reason, "stopping executor: SIGTERM");
        signal_group(pid, libc::SIGTERM);
        // A stopped process (SIGSTOP, a debugger) takes its SIGTERM only
        // once continued, as systemd knows: else it waits out the grace.
        signal_group(pid, libc::SIGCONT);
        let table = self.table.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if table.lock().expect("executor table").contains_key(&alloc) {
                tracing::info!(alloc, pid, "grace period over: SIGKILL");
                signal_group(pid, libc::SIGKILL);
            }
        });
    }

    pub async fn stop_all(&self, grace: Duration) {
        let allocs: Vec<u64> = self.table.lock().expect("executor table").keys().copied().collect();
        for alloc in &allocs {
            self.kill(*alloc, grace, "agent shutting down", None);
        }
        let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(1);
        while !self.table.lock().expect("executor table").is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn health(&self, alloc: u64, healthy: bool, detail: String) {
        self.send(pb::agent_message::Body::Health(pb::HealthChanged { alloc_id: alloc, healthy, detail }));
    }

    /// Where health checks reach an instance: the address its host
    /// advertises when that is an IP (executors bind it, so a probe of
    /// 127.0.0.1 would fail on an agent listening on one interface), else
    /// loopback.
    pub fn probe_host(&self) -> std::net::IpAddr {
        self.env
            .get("COHORT_HOST")
            .and_then(|host| host.parse().ok())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
    }

    pub fn is_running(&self, alloc: u64) -> bool {
        self.table.lock().expect("executor table").contains_key(&alloc)
    }
}

/// Whether `pid` is still the executor of this allocation (not a zombie,
/// not a recycled pid): its command line names the allocation's directory.
fn is_our_executor(pid: u32, dir: &Path) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let needle = dir.as_os_str().as_encoded_bytes();
    !zombie && cmdline.split(|b| *b == 0).any(|arg| arg == needle)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

pub(super) fn signal_group(pid: u32, sig: i32) {
    // -0 is our own group and -1 every process: a corrupt record must reach neither.
    let Ok(pid) = i32::try_from(pid) else { return };
    if pid <= 1 {
        tracing::error!(pid, "refusing to signal process group {pid}");
        return;
    }
    // SAFETY: kill(2) with a negative pid signals the executor's process group.
    unsafe {
        libc::kill(-pid, sig);
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
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(8192)));
    let mut buf = String::new();
    let _ = f.read_to_string(&mut buf);
    let all: Vec<&str> = buf.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
