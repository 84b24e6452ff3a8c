//! The Standard Workload Format of the Parallel Workloads Archive, in two
//! dialects, told apart by the number of fields in a row:
//!
//! - **Plain SWF** (18 fields; most of the archive): a job of P processors
//!   (column 5, allocated; column 8, requested, only where 5 is missing)
//!   is a rigid gang of P one-core slots (min = max = P), packed onto
//!   nodes, each slot with column 10 (requested memory, KB per processor)
//!   when given; column 7 (used memory) is never a request. The machine is
//!   the machines file if there is one, else the header's `MaxNodes` nodes
//!   sharing `MaxProcs` cores (1 each when `MaxProcs` is absent).
//! - **Alea's MetaCentrum dialect** (21 fields: queue name and the PBS node
//!   spec `N:ppn=P[:property...][#excl]`), following the wagap-2013
//!   README's node model: a job is a rigid gang of N slots of P cores, one
//!   slot per node, each with column 10 bytes of memory, inside one cluster
//!   of the machines file; the queue name is the priority class.
//!
//! In both, runtime is min(run time, requested time); the requested time
//! (column 9) is the estimate, and where a log has none (-1) the estimate
//! is the real run time (the literature's usual convention), which the
//! report notes. The user (column 12) is the tenant queue. Status (column
//! 11) is not used: failed and cancelled jobs held their processors for
//! their run time too, so they are replayed. In plain logs, the queue and
//! partition columns (15, 16) are numbers without meaning across logs and
//! are not used: every job is of class `batch`.

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
    let mut clusters: BTreeMap<String, usize> = BTreeMap::new();
    let mut names = std::collections::HashSet::new();
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
        let count: u32 = f[2].parse().map_err(|_| bad(&format!("node count `{}` is not a number of nodes", f[2])))?;
        let cores: u64 = f[3].parse().map_err(|_| bad(&format!("cores per node `{}` is not a number", f[3])))?;
        let ram_kb: u64 = f[5].parse().map_err(|_| bad(&format!("memory `{}` is not a number of KB", f[5])))?;
        let named = |message: String| TraceError::line(file, i + 1, message);
        if let Some(first) = clusters.insert(name.to_string(), i + 1) {
            return Err(named(format!("cluster `{name}` is listed twice (first on line {first})")));
        }
        let cpu = cores.checked_mul(1000).ok_or_else(|| bad("cores per node is out of range"))?;
        let memory = ram_kb.checked_mul(1024).ok_or_else(|| bad("memory is out of range"))?;
        if nodes.len() as u64 + count as u64 > MAX_TRACE_NODES {
            return Err(bad(&format!("more than {MAX_TRACE_NODES} nodes in all")));
        }
        for n in 0..count {
            let node = format!("{name}{n}");
            if !names.insert(node.clone()) {
                return Err(named(format!(
                    "its node `{node}` has the name of another cluster's node: rename `{name}`"
                )));
            }
            nodes.push(NodeSpec {
                name: node,
                capacity: Resources::new(cpu, memory),
                labels: BTreeMap::from([("cluster".to_string(), name.to_string())]),
            });
        }
    }
    if nodes.is_empty() {
        return Err(TraceError::File { file: file.to_string(), message: "no machines listed".into() });
    }
    Ok(nodes)
}

/// The machine a plain log's header describes: `MaxNodes` and `MaxProcs`.
#[derive(Default)]
struct Header {
    max_nodes: Option<u64>,
    max_procs: Option<u64>,
    /// `MaxNodes: 0` or `MaxProcs: many`, as written: no machine, but not
    /// an absent line either.
    unusable: Vec<String>,
}

impl Header {
    fn read(text: &str) -> Header {
        let mut h = Header::default();
        for line in text.lines().take_while(|l| l.trim_start().starts_with(';') || l.trim().is_empty()) {
            let line = line.trim_start_matches(|c: char| c == ';' || c.is_whitespace());
            let Some((key, value)) = line.split_once(':') else { continue };
            let parsed = value.trim().parse::<u64>().ok().filter(|v| *v > 0);
            let key = key.trim();
            if matches!(key, "MaxNodes" | "MaxProcs") && parsed.is_none() {
                h.unusable.push(format!("{key}: {}", value.trim()));
            }
            match key {
                "MaxNodes" => h.max_nodes = parsed,
                "MaxProcs" => h.max_procs = parsed,
                _ => {}
            }
        }
        h
    }
}

/// Reads an SWF log. `nodes` is the cluster when a machines file describes
/// it (from [`parse_swf_machines`]); without one, a plain log's header does.
/// A job asking for more processors than this is refused (the largest
/// public logs, such as ANL Intrepid's, stay well below).
const MAX_JOB_PROCESSORS: i64 = 1_000_000;
/// A machines file listing more nodes than this is refused.
const MAX_TRACE_NODES: u64 = 1_000_000;

pub fn parse_swf(file: &str, text: &str, nodes: Option<Vec<NodeSpec>>) -> Result<Trace, TraceError> {
    let mut trace = Trace { format: "swf".into(), ..Trace::default() };
    let alea = text
        .lines()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with(';'))
        .is_some_and(|l| l.split_whitespace().count() > 18);
    let mut first_submit: Option<i64> = None;
    let mut queues: BTreeMap<String, i32> = BTreeMap::new();
    let mut no_estimates = 0u64;
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
            f[k].parse::<f64>().ok().filter(|v| v.is_finite()).map(|v| v as i64).ok_or_else(|| {
                TraceError::line(file, line_no, format!("field {} ({what}) is `{}`, not a number", k + 1, f[k]))
            })
        };
        // A time past any real log's (centuries) is a corrupt field, which
        // would otherwise saturate and stretch the replay to match.
        let time = |k: usize, what: &str| -> Result<i64, TraceError> {
            let v = num(k, what)?;
            if v > super::MAX_TRACE_SECONDS {
                return Err(TraceError::line(
                    file,
                    line_no,
                    format!("field {} ({what}) is {} s, longer than any log runs", k + 1, f[k]),
                ));
            }
            Ok(v)
        };
        let id = num(0, "job number")?;
        let submit = time(1, "submit time")?;
        let run = time(3, "run time")?;
        let allocated = num(4, "allocated processors")?;
        let procs = if allocated > 0 { allocated } else { num(7, "requested processors")? };
        let walltime = time(8, "requested time")?;
        let memory = num(9, "requested memory")?;
        let user = num(11, "user id")?;
        let base = *first_submit.get_or_insert(submit);
        if run < 0 {
            trace.skip("negative runtime");
            continue;
        }
        if procs <= 0 {
            trace.skip("no cpu request");
            continue;
        }
        if procs > MAX_JOB_PROCESSORS {
            return Err(TraceError::line(
                file,
                line_no,
                format!("the job asks for {procs} processors; at most {MAX_JOB_PROCESSORS} are read"),
            ));
        }
        if walltime <= 0 {
            no_estimates += 1;
        }
        let runtime = if walltime > 0 { run.min(walltime) } else { run }.max(1);
        let estimate = if walltime > 0 { walltime } else { runtime };
        let (slots, slot, priority, constraints) = if alea {
            let queue_name = f.get(19).copied().unwrap_or("default");
            let (slots, cores, mut constraints) = node_request(f.get(20).copied().unwrap_or(""), procs as u64);
            constraints.within = Some("cluster".into());
            queues.entry(queue_name.to_string()).or_insert_with(|| {
                QUEUE_PRIORITY.iter().find(|(q, _)| *q == queue_name).map_or(OTHER_QUEUE_PRIORITY, |(_, p)| *p)
            });
            let cpu = cores.saturating_mul(1000);
            (slots, Resources::new(cpu, memory.max(0) as u64), queue_name.to_string(), constraints)
        } else {
            let slot = Resources::new(1000, (memory.max(0) as u64).saturating_mul(1024));
            (procs as u32, slot, "batch".to_string(), Constraints::default())
        };
        let spec = GangSpec {
            name: format!("job-{id}"),
            slot,
            min: slots,
            max: slots,
            completions: None,
            priority,
            queue: format!("user-{user}"),
            constraints,
            locality: Vec::new(),
            estimated_runtime: Some(secs(estimate as f64)),
            max_attempts: 1,
            restart: crate::model::Restart::OnFailure,
        };
        trace.jobs.push(TraceJob {
            id: id.max(0) as u64,
            submit: secs(submit.saturating_sub(base).max(0) as f64),
            runtime: secs(runtime as f64),
            spec,
        });
    }
    trace.nodes = match nodes {
        Some(nodes) => nodes,
        None if alea => {
            return Err(TraceError::File {
                file: file.to_string(),
                message: "this log names clusters in its node specs (Alea's dialect), so it needs its machines file: \
                          pass --cluster FILE or put FILE.machines beside it"
                    .into(),
            });
        }
        None => header_machine(file, text, &mut trace)?,
    };
    if no_estimates > 0 {
        trace.notes.push(format!(
            "{no_estimates} job(s) have no requested time (column 9 = -1): their estimate is their real run time"
        ));
    }
    trace.classes = if alea {
        queues
            .into_iter()
            .map(|(name, value)| {
                let preemptible = name == "backfill";
                PriorityClass { name, value, preemptible, on_drain: OnDrain::Finish }
            })
            .collect()
    } else {
        vec![PriorityClass { name: "batch".into(), value: 200, preemptible: true, on_drain: OnDrain::Finish }]
    };
    trace.sort();
    Ok(trace)
}

/// The machine of a plain log without a machines file: `MaxNodes` nodes
/// sharing `MaxProcs` cores, with memory enough for any job's request
/// (the log gives no node memory, so memory never decides).
fn header_machine(file: &str, text: &str, trace: &mut Trace) -> Result<Vec<NodeSpec>, TraceError> {
    let header = Header::read(text);
    let Some(nodes) = header.max_nodes.or(header.max_procs) else {
        let header_says = match header.unusable.as_slice() {
            [] => "the log has no `MaxNodes` (or `MaxProcs`) header line".to_string(),
            lines => format!("the header's `{}` is no count of nodes", lines.join("`, `")),
        };
        return Err(TraceError::File {
            file: file.to_string(),
            message: format!(
                "no machine is described: {header_says} and no machines file was found; pass --cluster FILE or put \
                 FILE.machines beside it"
            ),
        });
    };
    // MaxProcs cores in all: where they do not divide evenly (100 nodes,
    // 256 processors), the first nodes take one more, so the widest job fits.
    let (cores, one_more) = match (header.max_nodes, header.max_procs) {
        (Some(n), Some(p)) if p >= n => (p / n, p % n),
        _ => (1, 0),
    };
    let per_core = trace.jobs.iter().map(|j| j.spec.slot.memory_bytes).max().unwrap_or(0);
    let sizes = match one_more {
        0 => format!("of {cores} core(s)"),
        _ => format!("({one_more} of {} cores, {} of {cores})", cores + 1, nodes - one_more),
    };
    trace.notes.push(format!(
        "machine from the log header: {nodes} node(s) {sizes} (MaxNodes {}, MaxProcs {}); no node memory \
         is given, so memory never decides",
        header.max_nodes.map_or("absent".to_string(), |n| n.to_string()),
        header.max_procs.map_or("absent".to_string(), |n| n.to_string()),
    ));
    Ok((0..nodes)
        .map(|i| {
            let cores = cores + u64::from(i < one_more);
            NodeSpec {
                name: format!("node{i}"),
                capacity: Resources::new(cores.saturating_mul(1000), per_core.saturating_mul(cores)),
                labels: BTreeMap::new(),
            }
        })
        .collect())
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
        Some(p) if n > 0 && p > 0 && (n as u64).checked_mul(p) == Some(procs) => (n, p, constraints),
        _ => (1, procs, constraints),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: &str = "\
; MaxNodes: 4
; MaxProcs: 8
1 0 -1 100 4 -1 -1 -1 -1 -1 1 7 -1 -1 0 -1 -1 -1
2 10 -1 50 -1 -1 512 2 200 1024 0 8 -1 -1 1 -1 -1 -1
3 20 -1 -1 2 -1 -1 2 -1 -1 5 7 -1 -1 0 -1 -1 -1
";

    #[test]
    fn a_plain_log_is_read_with_its_header_machine() {
        let t = parse_swf("log.swf", PLAIN, None).unwrap();
        assert_eq!(t.nodes.len(), 4);
        assert_eq!(t.nodes[0].capacity.cpu_millis, 2000, "MaxProcs / MaxNodes cores per node");
        assert_eq!(t.jobs.len(), 2);
        assert_eq!(t.skipped.get("negative runtime"), Some(&1));
        let (a, b) = (&t.jobs[0], &t.jobs[1]);
        // P processors: a rigid gang of P one-core slots.
        assert_eq!((a.spec.min, a.spec.max, a.spec.slot.cpu_millis), (4, 4, 1000));
        // No requested time: the estimate is the run time.
        assert_eq!(a.spec.estimated_runtime, Some(100_000));
        // Requested processors stand in for missing allocated ones; memory is KB per processor.
        assert_eq!((b.spec.min, b.spec.slot.memory_bytes), (2, 1024 * 1024));
        assert_eq!(b.spec.estimated_runtime, Some(200_000));
        assert!(
            t.notes.iter().any(|n| n.contains("machine from the log header: 4 node(s) of 2 core(s)")),
            "{:?}",
            t.notes
        );
        assert!(t.notes.iter().any(|n| n.contains("1 job(s) have no requested time")), "{:?}", t.notes);
    }

    #[test]
    fn a_plain_log_without_a_machine_names_both_ways_to_give_one() {
        let body: String = PLAIN.lines().filter(|l| !l.starts_with(';')).map(|l| format!("{l}\n")).collect();
        let e = parse_swf("log.swf", &body, None).unwrap_err().to_string();
        assert!(e.contains("MaxNodes") && e.contains("--cluster") && e.starts_with("log.swf:"), "{e}");
        let only_nodes = format!("; MaxNodes: 3\n{body}");
        let t = parse_swf("log.swf", &only_nodes, None).unwrap();
        assert_eq!((t.nodes.len(), t.nodes[0].capacity.cpu_millis), (3, 1000), "one core per node without MaxProcs");
    }

    #[test]
    fn a_header_machine_whose_processors_do_not_divide_evenly_keeps_them_all() {
        // Given 3 nodes and 8 processors, when the log is read
        let log = PLAIN.replace("MaxNodes: 4", "MaxNodes: 3");
        let t = parse_swf("log.swf", &log, None).unwrap();
        // Then two nodes have 3 cores and one 2: the 8 the header names
        let cores: Vec<u64> = t.nodes.iter().map(|n| n.capacity.cpu_millis / 1000).collect();
        assert_eq!(cores, [3, 3, 2]);
        assert!(t.notes.iter().any(|n| n.contains("3 node(s) (2 of 3 cores, 1 of 2)")), "{:?}", t.notes);
    }

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
