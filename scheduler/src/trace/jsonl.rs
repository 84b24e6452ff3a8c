//! Cohort's own trace format: JSON lines, one object per line, each with
//! one key saying what it is. Times are seconds from the trace start.
//!
//! ```text
//! {"node": {"name": "n0", "cpu": "64", "memory": "256GiB", "labels": {"zone": "a"}}}
//! {"class": {"name": "batch", "value": 200, "preemptible": true}}
//! {"job": {"id": 1, "submit": 0.0, "runtime": 60.0, "estimate": 120.0, "name": "etl",
//!          "priority": "batch", "queue": "team-a", "min": 2, "max": 4, "cpu": "2", "memory": "4GiB"}}
//! ```
//!
//! Job fields beyond those: `completions` (slot runs that finish the job;
//! default `max`), `one_per_node`, `exclusive`, `spread`, `labels` (node
//! labels required), `within` (a label all slots share), `anti_affinity` (a
//! group whose slots never share a node). `queue` defaults to `default`. Class lines are
//! optional; without them the default classes apply.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::model::{Constraints, GangSpec, NodeSpec, OnDrain, Placement, PriorityClass};
use crate::resources::{Resources, parse_cpu, parse_memory};
use crate::trace::{Trace, TraceError, TraceJob, secs};

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum Line {
    Node(NodeLine),
    Class(ClassLine),
    Job(JobLine),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeLine {
    name: String,
    cpu: String,
    memory: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassLine {
    name: String,
    value: i32,
    #[serde(default)]
    preemptible: bool,
}

fn default_queue() -> String {
    "default".into()
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobLine {
    id: u64,
    submit: f64,
    runtime: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    estimate: Option<f64>,
    #[serde(default)]
    name: String,
    priority: String,
    #[serde(default = "default_queue")]
    queue: String,
    min: u32,
    max: u32,
    cpu: String,
    memory: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    completions: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    one_per_node: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    exclusive: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    spread: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    within: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    anti_affinity: Option<String>,
}

/// Reads a JSONL trace. `cluster` replaces the trace's own node lines.
pub fn parse_jsonl(file: &str, text: &str) -> Result<Trace, TraceError> {
    let mut trace = Trace { format: "jsonl".into(), ..Trace::default() };
    let mut node_lines: HashMap<String, usize> = HashMap::new();
    let mut job_lines: HashMap<u64, usize> = HashMap::new();
    // Checked once every class line is read: they may come after the jobs.
    let mut priorities: Vec<(usize, u64, String)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let raw = raw.trim();
        if raw.is_empty() || raw.starts_with('#') {
            continue;
        }
        let err = |m: String| TraceError::line(file, line_no, m);
        let line: Line = serde_json::from_str(raw).map_err(|e| err(one_line_json_error(&e)))?;
        match line {
            Line::Node(n) => {
                if let Some(first) = node_lines.insert(n.name.clone(), line_no) {
                    return Err(err(format!("node `{}` is named twice (first on line {first})", n.name)));
                }
                let cpu = parse_cpu(&n.cpu).map_err(|e| err(format!("node `{}` cpu: {e}", n.name)))?;
                let memory = parse_memory(&n.memory).map_err(|e| err(format!("node `{}` memory: {e}", n.name)))?;
                trace.nodes.push(NodeSpec { name: n.name, capacity: Resources::new(cpu, memory), labels: n.labels });
            }
            Line::Class(c) => trace.classes.push(PriorityClass {
                name: c.name,
                value: c.value,
                preemptible: c.preemptible,
                on_drain: OnDrain::Finish,
            }),
            Line::Job(j) => {
                let cpu = parse_cpu(&j.cpu).map_err(|e| err(format!("job {} cpu: {e}", j.id)))?;
                let memory = parse_memory(&j.memory).map_err(|e| err(format!("job {} memory: {e}", j.id)))?;
                for (what, v) in [("submit", j.submit), ("runtime", j.runtime), ("estimate", j.estimate.unwrap_or(0.0))]
                {
                    if !v.is_finite() || v > super::MAX_TRACE_SECONDS as f64 {
                        return Err(err(format!("job {}: {what} {v} s is longer than any trace runs", j.id)));
                    }
                }
                if let Some(first) = job_lines.insert(j.id, line_no) {
                    return Err(err(format!("job id {} is used twice (first on line {first})", j.id)));
                }
                if j.submit < 0.0 {
                    return Err(err(format!("job {}: submit {} s is before the trace starts (0)", j.id, j.submit)));
                }
                if j.runtime < 0.0 {
                    trace.skip("negative runtime");
                    continue;
                }
                priorities.push((line_no, j.id, j.priority.clone()));
                if j.min == 0 || j.max < j.min {
                    return Err(err(format!("job {}: need 1 <= min <= max, got min {} max {}", j.id, j.min, j.max)));
                }
                let spec = GangSpec {
                    name: if j.name.is_empty() { format!("job-{}", j.id) } else { j.name },
                    slot: Resources::new(cpu, memory),
                    min: j.min,
                    max: j.max,
                    completions: j.completions,
                    priority: j.priority,
                    queue: j.queue,
                    constraints: Constraints {
                        labels: j.labels,
                        one_slot_per_node: j.one_per_node,
                        anti_affinity: j.anti_affinity,
                        exclusive: j.exclusive,
                        placement: if j.spread { Placement::Spread } else { Placement::Pack },
                        within: j.within,
                    },
                    locality: Vec::new(),
                    estimated_runtime: j.estimate.map(secs),
                    max_attempts: 1,
                    restart: crate::model::Restart::OnFailure,
                };
                trace.jobs.push(TraceJob {
                    id: j.id,
                    submit: secs(j.submit),
                    runtime: secs(j.runtime.max(0.001)),
                    spec,
                });
            }
        }
    }
    let classes = if trace.classes.is_empty() { PriorityClass::defaults() } else { trace.classes.clone() };
    if let Some((line_no, id, priority)) = priorities.iter().find(|(_, _, p)| !classes.iter().any(|c| &c.name == p)) {
        let names: Vec<&str> = classes.iter().map(|c| c.name.as_str()).collect();
        return Err(TraceError::line(
            file,
            *line_no,
            format!("job {id}: priority `{priority}` is not a class of this trace ({})", names.join(", ")),
        ));
    }
    trace.sort();
    Ok(trace)
}

/// serde_json's message without its position: each line is one document,
/// so its `at line 1 column N` would be a second, different line number.
fn one_line_json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(at) => format!("{} (column {})", &text[..at], e.column()),
        None => text,
    }
}

/// Writes a trace as JSONL (nodes, then classes, then jobs).
pub fn write_jsonl(trace: &Trace, out: &mut String) {
    let mut push = |line: Line| {
        out.push_str(&serde_json::to_string(&line).expect("trace lines serialize"));
        out.push('\n');
    };
    for n in &trace.nodes {
        push(Line::Node(NodeLine {
            name: n.name.clone(),
            cpu: exact_cpu(n.capacity.cpu_millis),
            memory: format!("{}", n.capacity.memory_bytes),
            labels: n.labels.clone(),
        }));
    }
    for c in &trace.classes {
        push(Line::Class(ClassLine { name: c.name.clone(), value: c.value, preemptible: c.preemptible }));
    }
    for j in &trace.jobs {
        let c = &j.spec.constraints;
        push(Line::Job(JobLine {
            id: j.id,
            submit: j.submit as f64 / 1000.0,
            runtime: j.runtime as f64 / 1000.0,
            estimate: j.spec.estimated_runtime.map(|e| e as f64 / 1000.0),
            name: j.spec.name.clone(),
            priority: j.spec.priority.clone(),
            queue: j.spec.queue.clone(),
            min: j.spec.min,
            max: j.spec.max,
            cpu: exact_cpu(j.spec.slot.cpu_millis),
            memory: format!("{}", j.spec.slot.memory_bytes),
            completions: j.spec.completions,
            one_per_node: c.one_slot_per_node,
            exclusive: c.exclusive,
            spread: c.placement == Placement::Spread,
            labels: c.labels.clone(),
            within: c.within.clone(),
            anti_affinity: c.anti_affinity.clone(),
        }));
    }
}

/// Whole cores where exact, millicores otherwise, so a written trace reads back identically.
fn exact_cpu(millis: u64) -> String {
    if millis.is_multiple_of(1000) { format!("{}", millis / 1000) } else { format!("{millis}m") }
}
