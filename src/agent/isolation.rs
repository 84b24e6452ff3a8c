//! Enforcing an executor's limits: cgroup v2, or the v1 memory and cpu
//! hierarchies where this process may write them; otherwise an RSS watch
//! that kills an executor over its memory.
//!
//! Memory is a hard limit. CPU is a share by default: an executor weighs
//! its cores against the others', so under contention each gets at least
//! what it was allocated, and a core nobody uses is not left idle (Mesos
//! without CFS, YARN's non-strict mode, Nomad's default). `--cpu-hard-limit`
//! caps each executor at its cores with a CFS quota instead.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How limits are enforced on this host.
#[derive(Clone, Debug)]
pub enum Isolation {
    CgroupV2 { base: PathBuf, cpu: CpuLimit },
    CgroupV1 { memory: PathBuf, cpu: Option<(PathBuf, CpuLimit)> },
    RssWatch,
}

/// How an executor's cores bound its CPU time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuLimit {
    /// A weight in proportion to its cores: idle cores are used.
    Share,
    /// A CFS quota of its cores: never more, even on an idle host.
    Quota,
}

impl Isolation {
    pub fn name(&self) -> &'static str {
        match self {
            Isolation::CgroupV2 { cpu: CpuLimit::Share, .. } => "cgroup-v2 (cpu share)",
            Isolation::CgroupV2 { cpu: CpuLimit::Quota, .. } => "cgroup-v2 (cpu quota)",
            Isolation::CgroupV1 { cpu: Some((_, CpuLimit::Share)), .. } => "cgroup-v1 (cpu share)",
            Isolation::CgroupV1 { cpu: Some((_, CpuLimit::Quota)), .. } => "cgroup-v1 (cpu quota)",
            Isolation::CgroupV1 { cpu: None, .. } => "cgroup-v1 (memory only)",
            Isolation::RssWatch => "rss-watch",
        }
    }

    /// Finds a writable cgroup hierarchy for the executors of `agent`,
    /// whose state is in `data_dir`.
    pub fn detect(agent: &str, data_dir: &Path, cpu_limit: CpuLimit) -> Isolation {
        let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let path_of = |controller: &str| {
            own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
                (ctrls.split(',').any(|c| c == controller) || (controller.is_empty() && ctrls.is_empty()))
                    .then(|| path.to_string())
            })
        };
        // Named by the agent and its data dir: agents of two clusters on one
        // host may share a name (and allocation numbers), never a cgroup,
        // while one agent finds its executors' again after a restart.
        let dir_name = format!("cohort-{}-{}", sanitize(agent), short_hash(data_dir));
        let root = Path::new("/sys/fs/cgroup");
        if root.join("cgroup.controllers").exists()
            && let Some(p) = path_of("")
        {
            let base = root.join(p.trim_start_matches('/')).join(&dir_name);
            if fs::create_dir_all(&base).is_ok()
                && fs::write(base.join("cgroup.subtree_control"), "+memory +cpu").is_ok()
            {
                return Isolation::CgroupV2 { base, cpu: cpu_limit };
            }
        }
        if let Some(p) = path_of("memory") {
            let memory = root.join("memory").join(p.trim_start_matches('/')).join(&dir_name);
            if fs::create_dir_all(&memory).is_ok() {
                let cpu = path_of("cpu")
                    .map(|c| root.join("cpu").join(c.trim_start_matches('/')).join(&dir_name))
                    .filter(|c| fs::create_dir_all(c).is_ok())
                    .map(|c| (c, cpu_limit));
                return Isolation::CgroupV1 { memory, cpu };
            }
        }
        Isolation::RssWatch
    }

    /// Creates the executor's cgroups with its limits; returns the files its
    /// pid must be written to (before it execs, so no byte escapes the limit).
    pub fn prepare(&self, alloc: u64, cpu_millis: u64, memory_bytes: u64) -> Vec<PathBuf> {
        let name = format!("alloc-{alloc}");
        match self {
            Isolation::CgroupV2 { base, cpu } => {
                let dir = base.join(name);
                if fs::create_dir_all(&dir).is_err() {
                    return vec![];
                }
                if memory_bytes > 0 {
                    let _ = fs::write(dir.join("memory.max"), memory_bytes.to_string());
                }
                if cpu_millis > 0 {
                    // A group left by an agent killed earlier keeps its files: each is written.
                    let (weight, max) = match cpu {
                        // cgroup v2 weighs 1..=10000, 100 by default: one core is 100.
                        CpuLimit::Share => ((cpu_millis / 10).clamp(1, 10_000), "max 100000".to_string()),
                        CpuLimit::Quota => (100, format!("{} 100000", cpu_millis * 100)),
                    };
                    let _ = fs::write(dir.join("cpu.weight"), weight.to_string());
                    let _ = fs::write(dir.join("cpu.max"), max);
                }
                vec![dir.join("cgroup.procs")]
            }
            Isolation::CgroupV1 { memory, cpu } => {
                let mut procs = Vec::new();
                let dir = memory.join(&name);
                if fs::create_dir_all(&dir).is_ok() {
                    if memory_bytes > 0 {
                        let _ = fs::write(dir.join("memory.limit_in_bytes"), memory_bytes.to_string());
                    }
                    procs.push(dir.join("cgroup.procs"));
                }
                if let Some((cpu, limit)) = cpu {
                    let dir = cpu.join(&name);
                    if cpu_millis > 0 && fs::create_dir_all(&dir).is_ok() {
                        // cgroup v1 gives a core 1024 shares; a quota of -1 is none.
                        let (shares, quota) = match limit {
                            CpuLimit::Share => ((cpu_millis * 1024 / 1000).max(2), -1),
                            CpuLimit::Quota => (1024, (cpu_millis * 100) as i64),
                        };
                        let _ = fs::write(dir.join("cpu.shares"), shares.to_string());
                        let _ = fs::write(dir.join("cpu.cfs_period_us"), "100000");
                        let _ = fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string());
                        procs.push(dir.join("cgroup.procs"));
                    }
                }
                procs
            }
            Isolation::RssWatch => vec![],
        }
    }

    /// Kills whatever still runs in an ended executor's cgroup: the
    /// workload of a supervisor that was killed with -9, or a daemon it
    /// started in a session of its own. False where the executor has no
    /// cgroup (none on this host, or it was never made).
    pub fn kill_all(&self, alloc: u64) -> bool {
        let dir = match self {
            Isolation::CgroupV2 { base, .. } => base.join(format!("alloc-{alloc}")),
            Isolation::CgroupV1 { memory, .. } => memory.join(format!("alloc-{alloc}")),
            Isolation::RssWatch => return false,
        };
        if !dir.is_dir() {
            return false;
        }
        // cgroup v2 kills the whole group at once, also what forks meanwhile.
        if fs::write(dir.join("cgroup.kill"), "1").is_ok() {
            return true;
        }
        for pid in fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines() {
            if let Ok(pid) = pid.trim().parse::<i32>()
                && pid > 1
            {
                // SAFETY: kill(2) of one process that is in this executor's cgroup.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        true
    }

    /// How many processes of an executor's cgroup the kernel's OOM killer
    /// ended (`oom_kill` in `memory.events`, or v1's `memory.oom_control`).
    pub fn oom_kills(&self, alloc: u64) -> Option<u64> {
        let file = match self {
            Isolation::CgroupV2 { base, .. } => base.join(format!("alloc-{alloc}")).join("memory.events"),
            Isolation::CgroupV1 { memory, .. } => memory.join(format!("alloc-{alloc}")).join("memory.oom_control"),
            Isolation::RssWatch => return None,
        };
        fs::read_to_string(file).ok()?.lines().find_map(|line| line.strip_prefix("oom_kill ")?.trim().parse().ok())
    }

    /// Removes an ended executor's cgroups; one whose killed processes are
    /// still going is tried again for a second, off the caller's thread
    /// (an agent's async task).
    pub fn cleanup(&self, alloc: u64) {
        let name = format!("alloc-{alloc}");
        let dirs = match self {
            Isolation::CgroupV2 { base, .. } => vec![base.join(name)],
            Isolation::CgroupV1 { memory, cpu } => {
                let mut dirs = vec![memory.join(&name)];
                dirs.extend(cpu.iter().map(|(cpu, _)| cpu.join(&name)));
                dirs
            }
            Isolation::RssWatch => vec![],
        };
        let busy = |dir: &Path| fs::remove_dir(dir).is_err_and(|e| e.raw_os_error() == Some(libc::EBUSY));
        let still_busy: Vec<PathBuf> = dirs.into_iter().filter(|dir| busy(dir)).collect();
        if !still_busy.is_empty() {
            std::thread::spawn(move || {
                for dir in still_busy {
                    for _ in 0..20 {
                        std::thread::sleep(Duration::from_millis(50));
                        if !busy(&dir) {
                            break;
                        }
                    }
                }
            });
        }
    }

    /// Whether the executor was killed by its cgroup's OOM killer (v1) or
    /// needs killing for its RSS (watch). Returns a reason when over.
    pub fn over_limit(&self, pid: u32, memory_bytes: u64) -> Option<String> {
        if memory_bytes == 0 || !matches!(self, Isolation::RssWatch) {
            return None;
        }
        let rss = rss_of_group(pid);
        (rss > memory_bytes).then(|| format!("memory limit exceeded: {rss} bytes resident, limit {memory_bytes}"))
    }
}

/// Resident memory of a process and its descendants (same process group).
fn rss_of_group(pgid: u32) -> u64 {
    let page = 4096u64;
    let mut total = 0;
    let Ok(entries) = fs::read_dir("/proc") else { return 0 };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // Fields after the command name: state ppid pgrp ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid)
            && let Some(pages) = fields.get(21).and_then(|r| r.parse::<u64>().ok())
        {
            total += pages * page;
        }
    }
    total
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

/// Eight hex digits of a path's SHA-256, its absolute form where it has one.
fn short_hash(path: &Path) -> String {
    use sha2::Digest;
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let digest = sha2::Sha256::digest(path.as_os_str().as_encoded_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dir: &Path, file: &str) -> Option<String> {
        fs::read_to_string(dir.join(file)).ok()
    }

    #[test]
    fn by_default_cores_are_a_weight_and_memory_a_limit() {
        let root = tempfile::tempdir().unwrap();
        let v2 = Isolation::CgroupV2 { base: root.path().join("v2"), cpu: CpuLimit::Share };
        assert_eq!(v2.prepare(7, 1500, 1 << 30), vec![root.path().join("v2/alloc-7/cgroup.procs")]);
        let slot = root.path().join("v2/alloc-7");
        assert_eq!(read(&slot, "cpu.weight").as_deref(), Some("150"), "1.5 cores weigh 1.5 × the default 100");
        assert_eq!(read(&slot, "cpu.max").as_deref(), Some("max 100000"), "no quota");
        assert_eq!(read(&slot, "memory.max").as_deref(), Some("1073741824"));

        // A group an agent killed earlier left behind, with a quota, is reset
        fs::create_dir_all(root.path().join("cpu/alloc-8")).unwrap();
        fs::write(root.path().join("cpu/alloc-8/cpu.cfs_quota_us"), "25000").unwrap();
        let v1 = Isolation::CgroupV1 {
            memory: root.path().join("memory"),
            cpu: Some((root.path().join("cpu"), CpuLimit::Share)),
        };
        v1.prepare(8, 500, 1 << 20);
        assert_eq!(read(&root.path().join("cpu/alloc-8"), "cpu.shares").as_deref(), Some("512"));
        assert_eq!(read(&root.path().join("cpu/alloc-8"), "cpu.cfs_quota_us").as_deref(), Some("-1"));
        assert_eq!(read(&root.path().join("memory/alloc-8"), "memory.limit_in_bytes").as_deref(), Some("1048576"));
        assert_eq!(v1.name(), "cgroup-v1 (cpu share)");
    }

    #[test]
    fn a_hard_limit_caps_cores_with_a_quota() {
        let root = tempfile::tempdir().unwrap();
        let v2 = Isolation::CgroupV2 { base: root.path().to_path_buf(), cpu: CpuLimit::Quota };
        v2.prepare(1, 1500, 0);
        assert_eq!(read(&root.path().join("alloc-1"), "cpu.max").as_deref(), Some("150000 100000"));
        assert_eq!(read(&root.path().join("alloc-1"), "cpu.weight").as_deref(), Some("100"));

        let v1 = Isolation::CgroupV1 {
            memory: root.path().join("memory"),
            cpu: Some((root.path().join("cpu"), CpuLimit::Quota)),
        };
        v1.prepare(2, 250, 0);
        assert_eq!(read(&root.path().join("cpu/alloc-2"), "cpu.cfs_quota_us").as_deref(), Some("25000"));
        assert_eq!(v1.name(), "cgroup-v1 (cpu quota)");
    }
}
