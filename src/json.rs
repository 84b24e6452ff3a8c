//! The JSON documents clients read: `cohort ... --output json` prints them
//! from the gRPC answers, `/api/v1/...` serves them from the core's views.
//! One shape for both, so a script can switch between the two.

use std::collections::{BTreeMap, HashMap};

use cohort_proto as pb;
use cohort_scheduler::NodeState;
use serde::Serialize;

use crate::coordinator::core::model::{JobView, NodeView};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobDoc {
    pub id: u64,
    pub name: String,
    pub kind: String,
    pub state: String,
    pub attempts: u32,
    pub priority: String,
    pub queue: String,
    /// Why it waits (pending) or why it ended badly.
    pub reason: String,
    pub submitted_at_ms: i64,
    pub slots: Vec<SlotDoc>,
    pub history: Vec<AttemptDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<DeploymentDoc>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SlotDoc {
    pub index: u32,
    pub node: String,
    pub state: String,
    pub exit_code: i32,
    /// Health-checked instances only, with their host ports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports: Option<BTreeMap<String, u32>>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AttemptDoc {
    pub attempt: u32,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    pub nodes: Vec<String>,
    pub outcome: String,
    pub reason: String,
    pub charged: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeploymentDoc {
    pub state: String,
    pub instances: u32,
    pub healthy_new: u32,
    pub healthy_old: u32,
    pub started_ms: i64,
    pub deadline_ms: i64,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeDoc {
    pub id: u32,
    pub name: String,
    pub state: String,
    pub slots: u32,
    pub isolation: String,
    /// Who its command and service slots run as.
    pub runs_as: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub allocated_cpu_millis: u64,
    pub allocated_memory_bytes: u64,
    pub labels: BTreeMap<String, String>,
}

pub fn node_state_name(state: NodeState) -> &'static str {
    match state {
        NodeState::Ready => "ready",
        NodeState::Cordoned => "cordoned",
        NodeState::Draining => "draining",
        NodeState::Lost => "lost",
    }
}

fn sorted_ports<V: Copy + Into<u32>>(ports: impl IntoIterator<Item = (String, V)>) -> BTreeMap<String, u32> {
    ports.into_iter().map(|(k, v)| (k, v.into())).collect()
}

impl From<&JobView> for JobDoc {
    fn from(j: &JobView) -> JobDoc {
        JobDoc {
            id: j.id,
            name: j.name.clone(),
            kind: j.kind.clone(),
            state: j.state.to_string(),
            attempts: j.attempts,
            priority: j.priority.clone(),
            queue: j.queue.clone(),
            reason: j.reason.clone(),
            submitted_at_ms: j.submitted_at_ms,
            slots: j
                .slots
                .iter()
                .map(|s| SlotDoc {
                    index: s.index,
                    node: s.node.clone(),
                    state: s.state.to_string(),
                    exit_code: s.exit_code,
                    healthy: s.healthy,
                    ports: s.healthy.map(|_| sorted_ports(s.ports.clone())),
                })
                .collect(),
            history: j
                .history
                .iter()
                .map(|a| AttemptDoc {
                    attempt: a.attempt,
                    started_ms: a.started_ms,
                    ended_ms: a.ended_ms,
                    nodes: a.nodes.clone(),
                    outcome: a.outcome.clone(),
                    reason: a.reason.clone(),
                    charged: a.charged,
                })
                .collect(),
            deployment: j.deployment.as_ref().map(|d| DeploymentDoc {
                state: d.state.as_str().into(),
                instances: d.instances,
                healthy_new: d.healthy_new,
                healthy_old: d.healthy_old,
                started_ms: d.started_ms,
                deadline_ms: d.deadline_ms,
                reason: d.reason.clone(),
            }),
        }
    }
}

impl From<&pb::Job> for JobDoc {
    fn from(j: &pb::Job) -> JobDoc {
        let ports = |p: &HashMap<String, u32>| sorted_ports(p.clone());
        JobDoc {
            id: j.id,
            name: j.name.clone(),
            kind: j.kind.clone(),
            state: j.state.clone(),
            attempts: j.attempts,
            priority: j.priority.clone(),
            queue: j.queue.clone(),
            reason: j.reason.clone(),
            submitted_at_ms: j.submitted_at_ms,
            slots: j
                .slots
                .iter()
                .map(|s| SlotDoc {
                    index: s.index,
                    node: s.node.clone(),
                    state: s.state.clone(),
                    exit_code: s.exit_code,
                    healthy: s.healthy,
                    ports: s.healthy.map(|_| ports(&s.ports)),
                })
                .collect(),
            history: j
                .history
                .iter()
                .map(|a| AttemptDoc {
                    attempt: a.attempt,
                    started_ms: a.started_ms,
                    ended_ms: (a.ended_ms > 0).then_some(a.ended_ms),
                    nodes: a.nodes.clone(),
                    outcome: a.outcome.clone(),
                    reason: a.reason.clone(),
                    charged: a.charged,
                })
                .collect(),
            deployment: j.deployment.as_ref().map(|d| DeploymentDoc {
                state: d.state.clone(),
                instances: d.instances,
                healthy_new: d.healthy_new,
                healthy_old: d.healthy_old,
                started_ms: d.started_ms,
                deadline_ms: d.deadline_ms,
                reason: d.reason.clone(),
            }),
        }
    }
}

impl From<&NodeView> for NodeDoc {
    fn from(n: &NodeView) -> NodeDoc {
        NodeDoc {
            id: n.id,
            name: n.name.clone(),
            state: node_state_name(n.state).into(),
            slots: n.slots,
            isolation: n.isolation.clone(),
            runs_as: n.runs_as.clone(),
            cpu_millis: n.capacity.cpu_millis,
            memory_bytes: n.capacity.memory_bytes,
            allocated_cpu_millis: n.allocated.cpu_millis,
            allocated_memory_bytes: n.allocated.memory_bytes,
            labels: n.labels.clone(),
        }
    }
}

impl From<&pb::Node> for NodeDoc {
    fn from(n: &pb::Node) -> NodeDoc {
        let cap = n.capacity.unwrap_or_default();
        let used = n.allocated.unwrap_or_default();
        NodeDoc {
            id: n.id,
            name: n.name.clone(),
            state: n.state.clone(),
            slots: n.slots,
            isolation: n.isolation.clone(),
            runs_as: n.runs_as.clone(),
            cpu_millis: cap.cpu_millis,
            memory_bytes: cap.memory_bytes,
            allocated_cpu_millis: used.cpu_millis,
            allocated_memory_bytes: used.memory_bytes,
            labels: n.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }
}

/// A moment as people read it in messages and tables: `2026-11-27 21:52 UTC`.
pub fn utc_minute(ms: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
        Ok(t) => {
            format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute())
        }
        Err(_) => format!("{ms} ms after 1970"),
    }
}
