//! The Standard Workload Format of the Parallel Workloads Archive, with the
//! extra columns of the Alea simulator's MetaCentrum logs (queue name and
//! the PBS node spec `N:ppn=P[:property...][#excl]`).
//!
//! Mapping (the node model of the wagap-2013 README, as Alea reads it):
//! a job is a rigid gang of N slots of P cores, one slot per node, each
//! with column 10 bytes of memory, inside one cluster; runtime is
//! min(run time, walltime) and the walltime is the estimate; the queue name
//! is the priority class and the user is the tenant queue.

use std::collections::BTreeMap;

use crate::model::{Constraints, GangSpec, NodeSpec, OnDrain, PriorityClass};
use crate::resources::Resources;
use crate::trace::{Trace, TraceError, TraceJob, secs};

/// PBS queues of the MetaCentrum logs, most urgent first. Shorter queues
/// rank higher (Slurm's partition priority factor does the same); only
/// `backfill` work may be preempted.
const QUEUE_PRIORITY: &[(&str, i32)] = &[
    ("priority_long", 900),
    ("ops", 900),
    ("q_2h", 700),
    ("q_4h", 650),
    ("q_1d", 500),
    ("q_2d", 450),
    ("q_4d", 400),
    ("q_1w", 350),
    ("q_2w", 300),
    ("q_2w_plus", 250),
    ("backfill", 0),
];
const OTHER_QUEUE_PRIORITY: i32 = 100;

/// Reads an Alea machines file: `id name nodes cores speed ram_kb` per line.
pub fn parse_swf_machines(file: &str, text: &str) -> Result<Vec<NodeSpec>, TraceError> {
    let mut nodes = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let bad =
            |what: &str| TraceError::line(file, i + 1, format!("{what} (expected `id name nodes cores speed ram_kb`)"));
        if f.len() < 6 {
            return Err(bad("too few columns"));
        }
        let name = f[1];
        let count: u32 = f[2].parse().map_err(|_| bad("node count is not a number"))?;
        let cores: u64 = f[3].parse().map_err(|_| bad("cores per node is not a number"))?;
        let ram_kb: u64 = f[5].parse().map_err(|_| bad("memory is not a number of KB"))?;
        for n in 0..count {
            nodes.push(NodeSpec {
                name: format!("{name}{n}"),
                capacity: Resources::new(cores * 1000, ram_kb * 1024),
                labels: BTreeMap::from([("cluster".to_string(), name.to_string())]),
            });
        }
    }
    if nodes.is_empty() {
        return Err(TraceError::File { file: file.to_string(), message: "no machines listed".into() });
    }
    Ok(nodes)
}

/// Reads an SWF log. `nodes` is the cluster (from [`parse_swf_machines`]).
pub fn parse_swf(file: &str, text: &str, nodes: Vec<NodeSpec>) -> Result<Trace, TraceError> {
    let mut trace = Trace { format: "swf".into(), nodes, ..Trace::default() };
    let mut first_submit: Option<i64> = None;
    let mut queues: BTreeMap<String, i32> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 18 {
            return Err(TraceError::line(file, line_no, format!("expected at least 18 SWF fields, found {}", f.len())));
        }
        let num = |k: usize, what: &str| -> Result<i64, TraceError> {
            f[k].parse::<f64>().map(|v| v as i64).map_err(|_| {
                TraceError::line(file, line_no, format!("field {} ({what}) is `{}`, not a number", k + 1, f[k]))
            })
        };
        let id = num(0, "job number")?;
        let submit = num(1, "submit time")?;
        let run = num(3, "run time")?;
        let procs = num(4, "allocated processors")?.max(num(7, "requested processors")?);
        let walltime = num(8, "requested time")?;
        let memory = num(9, "requested memory")?;
        let user = num(11, "user id")?;
        let queue_name = f.get(19).copied().unwrap_or("default");
        let node_spec = f.get(20).copied().unwrap_or("");
        let base = *first_submit.get_or_insert(submit);
        if run < 0 {
            trace.skip("negative runtime");
            continue;
        }
        if procs <= 0 {
            trace.skip("no cpu request");
            continue;
        }
        let runtime = if walltime > 0 { run.min(walltime) } else { run }.max(1);
        let (slots, cores, mut constraints) = node_request(node_spec, procs as u64);
        constraints.within = Some("cluster".into());
        queues.entry(queue_name.to_string()).or_insert_with(|| {
            QUEUE_PRIORITY.iter().find(|(q, _)| *q == queue_name).map_or(OTHER_QUEUE_PRIORITY, |(_, p)| *p)
        });
        let spec = GangSpec {
            name: format!("job-{id}"),
            slot: Resources::new(cores * 1000, memory.max(0) as u64),
            min: slots,
            max: slots,
            completions: None,
            priority: queue_name.to_string(),
            queue: format!("user-{user}"),
            constraints,
            locality: Vec::new(),
            estimated_runtime: (walltime > 0).then(|| secs(walltime as f64)),
            max_attempts: 1,
        };
        trace.jobs.push(TraceJob {
            id: id.max(0) as u64,
            submit: secs((submit - base).max(0) as f64),
            runtime: secs(runtime as f64),
            spec,
        });
    }
    trace.classes = queues
        .into_iter()
        .map(|(name, value)| {
            let preemptible = name == "backfill";
            PriorityClass { name, value, preemptible, on_drain: OnDrain::Finish }
        })
        .collect();
    trace.sort();
    Ok(trace)
}

/// Reads a PBS node spec into (slots, cores per slot, constraints). Specs
/// without `ppn=`, naming a host, or with mixed chunks become one slot
/// holding all the job's cores, as the README's node model says.
fn node_request(spec: &str, procs: u64) -> (u32, u64, Constraints) {
    let (body, exclusive) = match spec.split_once('#') {
        Some((b, flags)) => (b, flags.contains("excl")),
        None => (spec, false),
    };
    let mut constraints = Constraints { exclusive, one_slot_per_node: true, ..Constraints::default() };
    let whole = (1, procs, constraints.clone());
    if body.contains('+') || body.is_empty() {
        return whole;
    }
    let mut parts = body.split(':');
    let Some(Ok(n)) = parts.next().map(|p| p.parse::<u32>()) else { return whole };
    let mut ppn = None;
    for prop in parts {
        if let Some(p) = prop.strip_prefix("ppn=") {
            ppn = p.parse::<u64>().ok();
        } else if let Some(cluster) = prop.strip_prefix("cl_") {
            constraints.labels.insert("cluster".into(), cluster.into());
        } else if prop == "nodecpus80" {
            constraints.labels.insert("cluster".into(), "zewura".into());
        } else if prop == "nodecpus12" {
            constraints.labels.insert("cluster".into(), "zegox".into());
        }
    }
    match ppn {
        Some(p) if n > 0 && p > 0 && n as u64 * p == procs => (n, p, constraints),
        _ => (1, procs, constraints),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_specs() {
        let (n, p, c) = node_request("8:ppn=8:x86_64:cl_zegox", 64);
        assert_eq!((n, p), (8, 8));
        assert_eq!(c.labels.get("cluster").map(String::as_str), Some("zegox"));
        let (n, p, c) = node_request("1:ppn=64:x86_64:cl_zewura#excl", 64);
        assert_eq!((n, p, c.exclusive), (1, 64, true));
        assert_eq!(node_request("1:ppn=1+3:ppn=2", 7).0, 1);
        assert_eq!(node_request("1:ppn=1+3:ppn=2", 7).1, 7);
        assert_eq!(node_request("zewura12.cerit-sc.cz", 4).1, 4);
    }
}
