//! Enforcing an executor's limits: cgroup v2, or the v1 memory and cpu
//! hierarchies where this process may write them; otherwise an RSS watch
//! that kills an executor over its memory.

use std::fs;
use std::path::{Path, PathBuf};

/// How limits are enforced on this host.
#[derive(Clone, Debug)]
pub enum Isolation {
    CgroupV2 { base: PathBuf },
    CgroupV1 { memory: PathBuf, cpu: Option<PathBuf> },
    RssWatch,
}

impl Isolation {
    pub fn name(&self) -> &'static str {
        match self {
            Isolation::CgroupV2 { .. } => "cgroup-v2",
            Isolation::CgroupV1 { .. } => "cgroup-v1",
            Isolation::RssWatch => "rss-watch",
        }
    }

    /// Finds a writable cgroup hierarchy for `agent`'s executors.
    pub fn detect(agent: &str) -> Isolation {
        let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let path_of = |controller: &str| {
            own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
                (ctrls.split(',').any(|c| c == controller) || (controller.is_empty() && ctrls.is_empty()))
                    .then(|| path.to_string())
            })
        };
        let dir_name = format!("cohort-{}", sanitize(agent));
        let root = Path::new("/sys/fs/cgroup");
        if root.join("cgroup.controllers").exists()
            && let Some(p) = path_of("")
        {
            let base = root.join(p.trim_start_matches('/')).join(&dir_name);
            if fs::create_dir_all(&base).is_ok()
                && fs::write(base.join("cgroup.subtree_control"), "+memory +cpu").is_ok()
            {
                return Isolation::CgroupV2 { base };
            }
        }
        if let Some(p) = path_of("memory") {
            let memory = root.join("memory").join(p.trim_start_matches('/')).join(&dir_name);
            if fs::create_dir_all(&memory).is_ok() {
                let cpu = path_of("cpu")
                    .map(|c| root.join("cpu").join(c.trim_start_matches('/')).join(&dir_name))
                    .filter(|c| fs::create_dir_all(c).is_ok());
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
            Isolation::CgroupV2 { base } => {
                let dir = base.join(name);
                if fs::create_dir_all(&dir).is_err() {
                    return vec![];
                }
                if memory_bytes > 0 {
                    let _ = fs::write(dir.join("memory.max"), memory_bytes.to_string());
                }
                if cpu_millis > 0 {
                    let _ = fs::write(dir.join("cpu.max"), format!("{} 100000", cpu_millis * 100));
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
                if let Some(cpu) = cpu {
                    let dir = cpu.join(&name);
                    if cpu_millis > 0 && fs::create_dir_all(&dir).is_ok() {
                        let _ = fs::write(dir.join("cpu.cfs_period_us"), "100000");
                        let _ = fs::write(dir.join("cpu.cfs_quota_us"), (cpu_millis * 100).to_string());
                        procs.push(dir.join("cgroup.procs"));
                    }
                }
                procs
            }
            Isolation::RssWatch => vec![],
        }
    }

    /// Removes an ended executor's cgroups.
    pub fn cleanup(&self, alloc: u64) {
        let name = format!("alloc-{alloc}");
        match self {
            Isolation::CgroupV2 { base } => {
                let _ = fs::remove_dir(base.join(name));
            }
            Isolation::CgroupV1 { memory, cpu } => {
                let _ = fs::remove_dir(memory.join(&name));
                if let Some(cpu) = cpu {
                    let _ = fs::remove_dir(cpu.join(&name));
                }
            }
            Isolation::RssWatch => {}
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
