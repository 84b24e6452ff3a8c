//! The coordinator's domain types: states, the views readers get, what
//! agents report and what they are told. No wire format lives here; each
//! front door maps these to its own.

use std::collections::BTreeMap;
use std::fmt;

use cohort_scheduler::{NodeState, Resources};
use serde::{Deserialize, Serialize};

use crate::coordinator::store::{AttemptRecord, DeploymentState};
use crate::executor::ExecutorKind;
use crate::spec::HealthSpec;

/// A job's state, as every client sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Pending,
    Running,
    /// A service or pipeline stopped on request, to be resumed.
    Paused,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Paused => "paused",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether the job has ended for good.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One slot's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    /// Not placed (yet, or again).
    #[default]
    Pending,
    /// Placed; its agent has been told to launch it.
    Starting,
    /// Its agent reported the executor started.
    Running,
    /// Asked to stop (preemption, cancel, drain); not ended yet.
    Stopping,
    Succeeded,
    Failed,
    /// Ended because it was asked to, or lost with its node.
    Stopped,
}

impl SlotState {
    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Pending => "pending",
            SlotState::Starting => "starting",
            SlotState::Running => "running",
            SlotState::Stopping => "stopping",
            SlotState::Succeeded => "succeeded",
            SlotState::Failed => "failed",
            SlotState::Stopped => "stopped",
        }
    }

    /// Placed and not ended.
    pub fn is_live(self) -> bool {
        matches!(self, SlotState::Starting | SlotState::Running | SlotState::Stopping)
    }
}

impl fmt::Display for SlotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job as readers see it.
#[derive(Clone, Debug, PartialEq)]
pub struct JobView {
    pub id: u64,
    pub name: String,
    /// What the job runs: `command`, `sql`, ...
    pub kind: String,
    pub state: JobState,
    pub attempts: u32,
    pub priority: String,
    pub queue: String,
    /// Why it waits (pending) or why it failed.
    pub reason: String,
    /// While pending: the reason's kind (`no_room`, `queue_cap`, ...).
    pub pending_kind: Option<&'static str>,
    /// Slots asked for: a service's instances, a gang's maximum.
    pub desired_slots: u32,
    pub slots: Vec<SlotView>,
    pub submitted_at_ms: i64,
    /// One entry per run: when, where, how it ended and why.
    pub history: Vec<AttemptRecord>,
    /// A service's latest rolling update.
    pub deployment: Option<DeploymentView>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SlotView {
    pub index: u32,
    pub node: String,
    pub state: SlotState,
    pub alloc_id: u64,
    pub exit_code: i32,
    /// Service instances: whether their health check passes.
    pub healthy: Option<bool>,
    pub ports: BTreeMap<String, u16>,
    /// Services: the version the instance runs.
    pub version: u32,
}

/// A rolling update, as readers see it.
#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentView {
    pub state: DeploymentState,
    pub version: u32,
    pub instances: u32,
    pub healthy_new: u32,
    pub healthy_old: u32,
    pub started_ms: i64,
    pub deadline_ms: i64,
    pub reason: String,
}

/// Where a healthy service instance is reached.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub slot: u32,
    pub node: String,
    pub host: String,
    pub ports: BTreeMap<String, u16>,
}

/// A node as readers see it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeView {
    pub id: u32,
    pub name: String,
    pub state: NodeState,
    pub capacity: Resources,
    pub allocated: Resources,
    pub slots: u32,
    pub isolation: String,
    pub labels: BTreeMap<String, String>,
    pub max_executors: u32,
    pub address: String,
    /// Where its agent serves logs, `/healthz` and `/metrics`.
    pub agent_address: String,
    /// Who its command and service slots run as.
    pub runs_as: String,
}

/// A queue's entitlement and use, as shares of the cluster (0..1).
#[derive(Clone, Debug, PartialEq)]
pub struct QueueUsage {
    pub name: String,
    pub guarantee: f64,
    pub cap: f64,
    /// Its dominant share now.
    pub share: f64,
    pub allocated: Resources,
    /// Gangs waiting in it.
    pub pending: u32,
}

/// Where the cluster's front doors are.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ClusterStatus {
    pub coordinator: String,
    pub http: String,
    pub kafka_bootstrap: String,
    /// The brokers are `cohort up`'s embedded one (in memory).
    pub kafka_embedded: bool,
    pub agents: u32,
}

/// Something that happened to a job, for watchers.
#[derive(Clone, Debug, PartialEq)]
pub struct JobEvent {
    pub job: u64,
    /// The job's queue: who may watch it.
    pub queue: String,
    pub at_ms: i64,
    /// The job's state after the event.
    pub state: JobState,
    /// What happened, in words: "slot 2 running on agent-1".
    pub what: String,
}

/// Maintenance operations on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeOp {
    Cordon,
    Uncordon,
    Drain,
}

/// An executor an agent runs, as it reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct RunningExecutor {
    pub alloc: u64,
    pub job: u64,
    pub slot: u32,
    pub pid: u32,
}

/// An agent introducing itself (first start, reconnect or restart).
#[derive(Clone, Debug, PartialEq)]
pub struct Registration {
    pub name: String,
    pub capacity: Resources,
    pub labels: BTreeMap<String, String>,
    /// Where its executor logs are served.
    pub logs_address: String,
    pub running: Vec<RunningExecutor>,
    /// Executors that ended while the agent was down, with their recorded status.
    pub ended: Vec<ExitReport>,
    /// Which limit enforcement is active there.
    pub isolation: String,
    /// At most this many executors at once.
    pub max_executors: u32,
    /// Host ports it hands to service instances (none when `None`).
    pub ports: Option<(u16, u16)>,
    /// Where clients reach the services it runs.
    pub address: String,
    /// Who its command and service slots run as.
    pub runs_as: String,
}

/// The coordinator's answer to a registration.
#[derive(Clone, Debug, PartialEq)]
pub struct Registered {
    pub node: u32,
    pub heartbeat_interval_ms: u64,
    /// What the coordinator presents to read the agent's logs.
    pub logs_token: String,
}

/// How an executor ended, as its agent saw it.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ExitReport {
    pub alloc: u64,
    /// The exit code, or -1 when a signal ended it.
    pub exit_code: i32,
    /// The signal's name, when one ended it.
    pub signal: String,
    /// The last lines of its output.
    pub output_tail: String,
    /// Ended because it was asked to (kill) rather than on its own.
    pub stopped: bool,
    /// The agent's own explanation (a memory limit, a failed start).
    pub reason: String,
    /// Gone without a trace (its host's records lost): not the job's failure.
    pub lost: bool,
}

/// What an agent tells the coordinator on its stream.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentReport {
    Heartbeat {
        running: Vec<RunningExecutor>,
    },
    Started {
        alloc: u64,
        pid: u32,
    },
    Exited(ExitReport),
    /// A service instance passed or failed its health check.
    Health {
        alloc: u64,
        healthy: bool,
        detail: String,
    },
}

/// Start one slot's executor.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    pub alloc: u64,
    pub job: u64,
    pub slot: u32,
    pub kind: ExecutorKind,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub limits: Resources,
    /// Host ports given to the instance, by name.
    pub ports: BTreeMap<String, u16>,
    pub health: Option<HealthSpec>,
    /// The queue's user for command and service slots (empty: the agent's default).
    pub run_as: String,
}

/// What the coordinator tells an agent.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentCommand {
    Launch(Box<Launch>),
    /// SIGTERM now, SIGKILL after `grace_ms`.
    Kill {
        alloc: u64,
        grace_ms: u64,
        reason: String,
    },
}

impl AgentCommand {
    pub fn alloc(&self) -> u64 {
        match self {
            AgentCommand::Launch(l) => l.alloc,
            AgentCommand::Kill { alloc, .. } => *alloc,
        }
    }
}
