//! Alibaba's public cluster traces.
//!
//! - `batch_task.csv` of cluster-trace-v2017 and of cluster-trace-v2018
//!   (told apart by their columns): a task is a set of identical
//!   instances, read as an elastic gang (min 1, max = completions = the
//!   instance count; each instance runs the task's duration). The traces
//!   name no machines: the cluster is 1,300 nodes of 64 cores and 128 GiB
//!   for 2017 and 4,034 nodes of 96 cores for 2018 unless `--cluster`
//!   says otherwise; `plan_mem` is a fraction (2017) or a percentage
//!   (2018) of that node memory. The 2018 trace's task names carry the
//!   job's DAG (`R3_1_2` waits for tasks 1 and 2); its start times already
//!   follow it, so a task arrives at its start time and the DAG is not
//!   enforced again.
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
    uniform_cluster(1300, 64_000, ALIBABA_2017_NODE_MEMORY)
}

/// The 2018 trace gives memory only as a percentage of a machine's, so
/// this size is nominal: decisions depend on the percentages alone.
pub const ALIBABA_2018_NODE_MEMORY: u64 = 512 << 30;
/// Default cluster for the 2018 batch trace: its 4,034 machines of 96 cores.
pub fn alibaba_2018_cluster() -> Vec<NodeSpec> {
    uniform_cluster(4034, 96_000, ALIBABA_2018_NODE_MEMORY)
}

fn uniform_cluster(nodes: usize, millicores: u64, memory: u64) -> Vec<NodeSpec> {
    (0..nodes)
        .map(|i| NodeSpec {
            name: format!("m{i}"),
            capacity: Resources::new(millicores, memory),
            labels: BTreeMap::new(),
        })
        .collect()
}

/// A task with more instances than this is refused (one gang of that many slots).
const MAX_TASK_INSTANCES: f64 = 1_000_000.0;

/// Tenants the batch jobs are hashed into (the traces have none).
const TENANTS: u64 = 8;

/// Which release of `batch_task.csv` a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// `task_create_time,task_end_time,job_id,task_id,instances,status,plan_cpu,plan_mem`
    V2017,
    /// `task_name,instance_num,job_name,task_type,status,start_time,end_time,plan_cpu,plan_mem`
    V2018,
}

/// Where a layout keeps what a task is read from: (column, its name).
struct Fields {
    count: usize,
    arrival: (usize, &'static str),
    end: (usize, &'static str),
    job: usize,
    task: usize,
    instances: (usize, &'static str),
    plan_cpu: usize,
    plan_mem: usize,
    /// What `plan_mem` counts a node's memory as.
    node_memory_is: f64,
    /// How the first columns read, for a row that has too few.
    shape: &'static str,
}

impl Layout {
    fn fields(self) -> Fields {
        match self {
            Layout::V2017 => Fields {
                count: 8,
                arrival: (0, "task_create_time"),
                end: (1, "task_end_time"),
                job: 2,
                task: 3,
                instances: (4, "number_of_instances"),
                plan_cpu: 6,
                plan_mem: 7,
                node_memory_is: 1.0,
                shape: "the 2017 trace's `task_create_time,task_end_time,job_id,task_id,...`",
            },
            Layout::V2018 => Fields {
                count: 9,
                arrival: (5, "start_time"),
                end: (6, "end_time"),
                job: 2,
                task: 0,
                instances: (1, "instance_num"),
                plan_cpu: 7,
                plan_mem: 8,
                node_memory_is: 100.0,
                shape: "the 2018 trace's `task_name,instance_num,job_name,task_type,...`",
            },
        }
    }
}

fn is_header(line: &str) -> bool {
    line.starts_with("task_create_time") || line.starts_with("task_name")
}

/// The layout of the first row: 2017's starts with a time, 2018's with a task name.
fn layout_of(text: &str) -> Layout {
    let first = text.lines().find(|l| !l.trim().is_empty() && !is_header(l)).unwrap_or("");
    let fields: Vec<&str> = first.split(',').map(str::trim).collect();
    if fields.len() >= 9 && fields[0].parse::<f64>().is_err() { Layout::V2018 } else { Layout::V2017 }
}

pub fn parse_alibaba_batch(file: &str, text: &str, nodes: Option<Vec<NodeSpec>>) -> Result<Trace, TraceError> {
    let layout = layout_of(text);
    let default_cluster = match layout {
        Layout::V2017 => alibaba_2017_cluster,
        Layout::V2018 => alibaba_2018_cluster,
    };
    let mut trace =
        Trace { format: "alibaba-batch".into(), nodes: nodes.unwrap_or_else(default_cluster), ..Trace::default() };
    let node_memory = trace.nodes.iter().map(|n| n.capacity.memory_bytes).max().unwrap_or(ALIBABA_2017_NODE_MEMORY);
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() || is_header(line) {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let at = layout.fields();
        if f.len() < at.count {
            return Err(TraceError::line(
                file,
                line_no,
                format!(
                    "expected {} comma-separated columns, as in the first row ({}), found {}",
                    at.count,
                    at.shape,
                    f.len()
                ),
            ));
        }
        let num = |(k, what): (usize, &str)| -> Result<f64, TraceError> {
            f[k].parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| {
                TraceError::line(file, line_no, format!("column {} ({what}) is `{}`, not a number", k + 1, f[k]))
            })
        };
        if f[at.plan_cpu].is_empty() {
            trace.skip("no cpu request");
            continue;
        }
        let arrival = num(at.arrival)?;
        let end = num(at.end)?;
        // 2017's ids are numbers; 2018's task names repeat across jobs, so the row is the id.
        let (id, name) = match layout {
            Layout::V2017 => {
                num((at.job, "job_id"))?;
                (num((at.task, "task_id"))? as u64, format!("job-{}/task-{}", f[at.job], f[at.task]))
            }
            Layout::V2018 => (line_no as u64, format!("{}/{}", f[at.job], f[at.task])),
        };
        let instances = num(at.instances)?;
        let plan_cpu = num((at.plan_cpu, "plan_cpu"))?;
        let plan_mem =
            if f[at.plan_mem].is_empty() { 0.0 } else { num((at.plan_mem, "plan_mem"))? / at.node_memory_is };
        if instances < 1.0 {
            trace.skip("no instances");
            continue;
        }
        if plan_cpu <= 0.0 {
            trace.skip("no cpu request");
            continue;
        }
        if layout == Layout::V2018 && end <= 0.0 {
            trace.skip("not finished in the trace");
            continue;
        }
        let duration = end - arrival;
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
            name,
            slot,
            min: 1,
            max: n,
            completions: Some(n),
            priority: "batch".into(),
            queue: format!("tenant-{}", tenant_of(f[at.job])),
            constraints: Default::default(),
            locality: Vec::new(),
            estimated_runtime: Some(runtime),
            max_attempts: 1,
            restart: crate::model::Restart::OnFailure,
        };
        trace.jobs.push(TraceJob { id, submit: secs(arrival.max(0.0)), runtime, spec });
    }
    trace.sort();
    Ok(trace)
}

/// The tenant a job is hashed into: by its number (`3`, `j_3`), else by
/// its name's bytes (FNV-1a), so a replay is the same on every machine.
fn tenant_of(job: &str) -> u64 {
    let digits = job.trim_start_matches(|c: char| !c.is_ascii_digit());
    let key = digits.parse::<u64>().unwrap_or_else(|_| {
        job.bytes().fold(0xcbf2_9ce4_8422_2325, |h: u64, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
    });
    key % TENANTS
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
