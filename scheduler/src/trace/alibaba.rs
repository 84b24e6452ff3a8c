//! Alibaba's public cluster traces.
//!
//! - `batch_task.csv` of cluster-trace-v2017: a task is a set of identical
//!   instances, read as an elastic gang (min 1, max = completions = the
//!   instance count; each instance runs the task's duration). The trace
//!   names no machines: the cluster is 1,300 nodes of 64 cores and
//!   128 GiB unless `--cluster` says otherwise, and `plan_mem` is a
//!   fraction of that node memory.
//! - `openb_pod_list_*.csv` of cluster-trace-gpu-v2023: a pod is a one-slot
//!   gang with cpu, memory and GPUs (scalar slot 0, in thousandths of a
//!   GPU); QoS gives the class (`LS`, `Guaranteed` → service; `Burstable`
//!   → batch; `BE` → best-effort) and the tenant queue. The node list gives
//!   the cluster.

use std::collections::BTreeMap;

use crate::model::{GangSpec, NodeSpec};
use crate::resources::Resources;
use crate::trace::{Trace, TraceError, TraceJob, secs};

/// Memory of the nodes `plan_mem` is a fraction of.
pub const ALIBABA_2017_NODE_MEMORY: u64 = 128 << 30;
/// Default cluster for the 2017 batch trace.
pub fn alibaba_2017_cluster() -> Vec<NodeSpec> {
    (0..1300)
        .map(|i| NodeSpec {
            name: format!("m{i}"),
            capacity: Resources::new(64_000, ALIBABA_2017_NODE_MEMORY),
            labels: BTreeMap::new(),
        })
        .collect()
}

/// A task with more instances than this is refused (one gang of that many slots).
const MAX_TASK_INSTANCES: f64 = 1_000_000.0;

/// Tenants the 2017 batch jobs are hashed into (the trace has none).
const TENANTS: u64 = 8;

pub fn parse_alibaba_batch(file: &str, text: &str, nodes: Option<Vec<NodeSpec>>) -> Result<Trace, TraceError> {
    let mut trace =
        Trace { format: "alibaba-batch".into(), nodes: nodes.unwrap_or_else(alibaba_2017_cluster), ..Trace::default() };
    let node_memory = trace.nodes.iter().map(|n| n.capacity.memory_bytes).max().unwrap_or(ALIBABA_2017_NODE_MEMORY);
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() || line.starts_with("task_create_time") {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() < 8 {
            return Err(TraceError::line(
                file,
                line_no,
                format!("expected 8 comma-separated columns, found {}", f.len()),
            ));
        }
        let num = |k: usize, what: &str| -> Result<f64, TraceError> {
            f[k].parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| {
                TraceError::line(file, line_no, format!("column {} ({what}) is `{}`, not a number", k + 1, f[k]))
            })
        };
        if f[6].is_empty() {
            trace.skip("no cpu request");
            continue;
        }
        let create = num(0, "task_create_time")?;
        let end = num(1, "task_end_time")?;
        let job = num(2, "job_id")? as u64;
        let task = num(3, "task_id")? as u64;
        let instances = num(4, "number_of_instances")?;
        let plan_cpu = num(6, "plan_cpu")?;
        let plan_mem = if f[7].is_empty() { 0.0 } else { num(7, "plan_mem")? };
        if instances < 1.0 {
            trace.skip("no instances");
            continue;
        }
        if plan_cpu <= 0.0 {
            trace.skip("no cpu request");
            continue;
        }
        let duration = end - create;
        if duration < 0.0 {
            trace.skip("negative runtime");
            continue;
        }
        if instances > MAX_TASK_INSTANCES {
            return Err(TraceError::line(
                file,
                line_no,
                format!("the task has {instances} instances; at most {MAX_TASK_INSTANCES} are read"),
            ));
        }
        let n = instances as u32;
        let slot = Resources::new((plan_cpu * 10.0).round() as u64, (plan_mem * node_memory as f64).round() as u64);
        let runtime = secs(duration.max(1.0));
        let spec = GangSpec {
            name: format!("job-{job}/task-{task}"),
            slot,
            min: 1,
            max: n,
            completions: Some(n),
            priority: "batch".into(),
            queue: format!("tenant-{}", job % TENANTS),
            constraints: Default::default(),
            locality: Vec::new(),
            estimated_runtime: Some(runtime),
            max_attempts: 1,
            restart: crate::model::Restart::OnFailure,
        };
        trace.jobs.push(TraceJob { id: task, submit: secs(create.max(0.0)), runtime, spec });
    }
    trace.sort();
    Ok(trace)
}

/// Reads the openb node list: `sn,cpu_milli,memory_mib,gpu,model`.
pub fn parse_openb_nodes(file: &str, text: &str) -> Result<Vec<NodeSpec>, TraceError> {
    let mut nodes = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if i == 0 && line.starts_with("sn,") || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let bad = |what: &str| {
            TraceError::line(file, i + 1, format!("{what} (expected `sn,cpu_milli,memory_mib,gpu,model`)"))
        };
        if f.len() < 4 {
            return Err(bad("too few columns"));
        }
        let cpu: u64 = f[1].parse().map_err(|_| bad("cpu_milli is not a number"))?;
        let mem: u64 = f[2].parse().map_err(|_| bad("memory_mib is not a number"))?;
        let gpus: u64 = f[3].parse().map_err(|_| bad("gpu is not a number"))?;
        let memory = mem.checked_mul(1 << 20).ok_or_else(|| bad("memory_mib is out of range"))?;
        let gpu_milli = gpus.checked_mul(1000).ok_or_else(|| bad("gpu is out of range"))?;
        let mut labels = BTreeMap::new();
        if let Some(model) = f.get(4).filter(|m| !m.is_empty()) {
            labels.insert("gpu_model".to_string(), model.to_string());
        }
        nodes.push(NodeSpec {
            name: f[0].to_string(),
            capacity: Resources::new(cpu, memory).with_scalar(crate::resources::GPU, gpu_milli),
            labels,
        });
    }
    Ok(nodes)
}

pub fn parse_alibaba_openb(file: &str, text: &str, nodes: Vec<NodeSpec>) -> Result<Trace, TraceError> {
    let mut trace = Trace { format: "alibaba-openb".into(), nodes, ..Trace::default() };
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() || line.starts_with("name,") {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() < 10 {
            return Err(TraceError::line(
                file,
                line_no,
                format!("expected 11 comma-separated columns, found {}", f.len()),
            ));
        }
        let num = |k: usize, what: &str| -> Result<f64, TraceError> {
            f[k].parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| {
                TraceError::line(file, line_no, format!("column {} ({what}) is `{}`, not a number", k + 1, f[k]))
            })
        };
        let cpu = num(1, "cpu_milli")?;
        let mem = num(2, "memory_mib")?;
        let gpus = num(3, "num_gpu")?;
        let gpu_milli = if f[4].is_empty() { 0.0 } else { num(4, "gpu_milli")? };
        let created = num(8, "creation_time")?;
        let deleted = num(9, "deletion_time")?;
        let scheduled = match f.get(10) {
            Some(s) if !s.is_empty() => num(10, "scheduled_time")?,
            _ => created,
        };
        if cpu <= 0.0 && mem <= 0.0 {
            trace.skip("no cpu request");
            continue;
        }
        let duration = deleted - scheduled;
        if duration < 0.0 {
            trace.skip("negative runtime");
            continue;
        }
        let gpu = if gpus >= 2.0 {
            gpus * 1000.0
        } else if gpus >= 1.0 && gpu_milli > 0.0 {
            gpu_milli
        } else {
            gpus * 1000.0
        };
        let (class, queue) = match f[6] {
            "LS" => ("service", "ls"),
            "Guaranteed" => ("service", "guaranteed"),
            "Burstable" => ("batch", "burstable"),
            "BE" => ("best-effort", "be"),
            other => {
                return Err(TraceError::line(
                    file,
                    line_no,
                    format!("unknown qos `{other}` (expected LS, Guaranteed, Burstable or BE)"),
                ));
            }
        };
        let runtime = secs(duration.max(1.0));
        let spec = GangSpec {
            slot: Resources::new(cpu as u64, (mem as u64) << 20).with_scalar(crate::resources::GPU, gpu as u64),
            estimated_runtime: Some(runtime),
            ..GangSpec::rigid(f[0], 1, Resources::ZERO, class, queue)
        };
        let id = f[0].rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(line_no as u64);
        trace.jobs.push(TraceJob { id, submit: secs(created), runtime, spec });
    }
    trace.sort();
    Ok(trace)
}
