//! What the engine schedules: nodes, gangs, priority classes, queues and the
//! policy knobs. These are plain data; the behaviour is in [`crate::engine`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::resources::Resources;

/// Virtual time in milliseconds. The engine never reads a clock: time moves
/// only through [`crate::Event::TimeAdvanced`].
pub type Time = u64;

/// A node, named by the caller. Ids are dense small integers (the engine
/// indexes a vector by them).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct NodeId(pub u32);

/// A gang (one workload: a job's executors, a pipeline's members), named by the caller.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct GangId(pub u64);

/// One placed slot: unique for the life of the engine, so a slot that is
/// placed again after preemption never shares an id with its old, still
/// terminating, incarnation.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct AllocId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node-{}", self.0)
    }
}
impl fmt::Display for GangId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gang-{}", self.0)
    }
}
impl fmt::Display for AllocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "alloc-{}", self.0)
    }
}

/// A node as an agent registers it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub name: String,
    pub capacity: Resources,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Maintenance state of a node.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Takes new slots.
    Ready,
    /// Takes no new slots; running ones stay.
    Cordoned,
    /// Takes no new slots; movable slots are moved, the rest finish.
    Draining,
    /// Gone: its slots were lost.
    Lost,
}

/// How a gang's slots are spread over nodes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Fill the fullest node that fits (best fit), keeping whole hosts free for big gangs.
    #[default]
    Pack,
    /// Use the emptiest node (worst fit), for resilience and bandwidth.
    Spread,
}

/// Where a gang may run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Constraints {
    /// Labels a node must carry, e.g. `zone = "a"`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// At most one slot of this gang per node (PBS `N:ppn=P`, Spark executors per host).
    #[serde(default)]
    pub one_slot_per_node: bool,
    /// Slots of gangs in the same group never share a node.
    #[serde(default)]
    pub anti_affinity: Option<String>,
    /// Needs wholly idle nodes at start and keeps them to itself (PBS `#excl`).
    #[serde(default)]
    pub exclusive: bool,
    #[serde(default)]
    pub placement: Placement,
    /// All slots on nodes that share one value of this label (one cluster, one rack).
    #[serde(default)]
    pub within: Option<String>,
}

/// A request for a task group of identical slots.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GangSpec {
    pub name: String,
    /// The shape of every slot.
    pub slot: Resources,
    /// All-or-nothing floor: nothing runs until this many slots are placed together.
    pub min: u32,
    /// Elastic ceiling on slots running at once.
    pub max: u32,
    /// Successful slot runs that complete the gang; defaults to `max`. Slot
    /// indices `0..completions` each run once to success, at most `max` at a time.
    #[serde(default)]
    pub completions: Option<u32>,
    pub priority: String,
    pub queue: String,
    #[serde(default)]
    pub constraints: Constraints,
    /// Node name → weight: where this gang's data is cached.
    #[serde(default)]
    pub locality: Vec<(String, u32)>,
    /// Expected run time of a slot, used for backfilling around reservations.
    #[serde(default)]
    pub estimated_runtime: Option<Time>,
    /// Failed attempts allowed before the gang fails for good.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// What happens when a slot ends on its own.
    #[serde(default)]
    pub restart: Restart,
}

/// What happens when a slot ends on its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Restart {
    /// Batch work: a slot that succeeds is done; a failure uses an attempt.
    #[default]
    OnFailure,
    /// A service: a slot that ends, however, runs again after a backoff
    /// that doubles per restart (reset once it stayed up long enough); the
    /// gang never completes and never runs out of attempts.
    Always,
    /// A driver and its workers, as in Spark: slot 0 (the leader)
    /// succeeding completes the gang and stops the other slots; any slot
    /// failing fails the attempt, as with `OnFailure`.
    Leader,
}

fn default_max_attempts() -> u32 {
    1
}

impl GangSpec {
    /// A rigid gang of `n` slots (`min = max = n`) with default constraints.
    pub fn rigid(name: impl Into<String>, n: u32, slot: Resources, priority: &str, queue: &str) -> GangSpec {
        GangSpec {
            name: name.into(),
            slot,
            min: n,
            max: n,
            completions: None,
            priority: priority.into(),
            queue: queue.into(),
            constraints: Constraints::default(),
            locality: Vec::new(),
            estimated_runtime: None,
            max_attempts: 1,
            restart: Restart::OnFailure,
        }
    }

    pub fn total_completions(&self) -> u32 {
        self.completions.unwrap_or(self.max)
    }
}

/// What happens to a class's slots when their node is drained.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDrain {
    /// Stop and place elsewhere (services, pipelines).
    Move,
    /// Let them run to completion (batch).
    Finish,
}

/// A named priority level.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PriorityClass {
    pub name: String,
    /// Higher runs first and may preempt lower.
    pub value: i32,
    /// Whether higher classes may evict this one.
    pub preemptible: bool,
    pub on_drain: OnDrain,
}

impl PriorityClass {
    pub fn new(name: &str, value: i32, preemptible: bool, on_drain: OnDrain) -> Self {
        PriorityClass { name: name.into(), value, preemptible, on_drain }
    }

    /// `system` > `service` > `streaming` > `interactive` > `batch` > `best-effort`.
    pub fn defaults() -> Vec<PriorityClass> {
        vec![
            PriorityClass::new("system", 1000, false, OnDrain::Move),
            PriorityClass::new("service", 800, false, OnDrain::Move),
            PriorityClass::new("streaming", 600, true, OnDrain::Move),
            PriorityClass::new("interactive", 400, true, OnDrain::Finish),
            PriorityClass::new("batch", 200, true, OnDrain::Finish),
            PriorityClass::new("best-effort", 0, true, OnDrain::Finish),
        ]
    }
}

/// A queue (tenant) with a guaranteed share and a cap, as fractions of the
/// cluster's capacity in every dimension.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueSpec {
    pub name: String,
    /// Share the queue is entitled to; above it, the queue is borrowing and
    /// its work can be reclaimed by a queue below its guarantee.
    pub guarantee: f64,
    /// Share the queue may never exceed.
    pub cap: f64,
}

impl QueueSpec {
    pub fn new(name: &str, guarantee: f64, cap: f64) -> Self {
        QueueSpec { name: name.into(), guarantee, cap }
    }
}

/// How pending work is ordered.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ordering {
    /// Strict arrival order, ignoring priorities and queues (the FCFS and EASY baselines).
    Fifo,
    /// Priority classes high to low; within a class, queues by dominant-resource fairness.
    PriorityFair,
}

/// The scheduling policy. [`Policy::cohort`] is the default; [`Policy::fcfs`]
/// and [`Policy::easy`] are the classic baselines, run by the same engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub ordering: Ordering,
    /// Start later gangs when an earlier one is blocked. Without it the first
    /// blocked gang stops the pass (FCFS).
    pub backfill: bool,
    /// How many blocked gangs hold a reservation at once.
    pub max_reservations: usize,
    /// A gang blocked this long gets a reservation (0: at once, as EASY does
    /// for the queue head). With `reserve_after_runtimes`, only until the
    /// first slots finish.
    pub reserve_after: Time,
    /// The bound as this many mean run times of the slots finished so far:
    /// the workload's own time scale, so that a log of minute-long jobs and
    /// one of day-long jobs are treated alike.
    #[serde(default)]
    pub reserve_after_runtimes: Option<f64>,
    /// Whether gangs may evict lower-priority work.
    pub preemption: bool,
    /// Grace between SIGTERM and SIGKILL for victims.
    pub grace_period: Time,
    /// Delay before a failed gang is retried; doubles with each failure.
    pub retry_backoff: Time,
    /// A restarting slot (`Restart::Always`) waits this long, doubling per
    /// restart up to `restart_backoff_cap`, reset after `restart_reset_after` up.
    pub restart_backoff: Time,
    pub restart_backoff_cap: Time,
    pub restart_reset_after: Time,
    /// Predict a gang's runtime as its estimate times the share of their
    /// estimates its queue's last two slots used (after Tsafrir, Etsion &
    /// Feitelson 2007); a slot that outlives its prediction falls back to
    /// the estimate.
    pub predict_runtimes: bool,
    /// Within a queue, try gangs with the shortest (predicted) runtime first.
    pub shortest_first: bool,
    /// Pack onto the smallest nodes that fit before larger ones, keeping big
    /// hosts whole for big slots (Slurm's node weights, derived from size).
    pub prefer_small_nodes: bool,
    /// Most pending gangs one pass tries (and as many running gangs it
    /// grows), like Slurm's `bf_max_job_test`: a pass stays cheap however
    /// long the queue. Gangs owed a reservation are tried first.
    pub max_pass_depth: usize,
}

impl Policy {
    pub fn cohort() -> Policy {
        Policy {
            ordering: Ordering::PriorityFair,
            backfill: true,
            max_reservations: 1,
            reserve_after: 48 * 3600 * 1000,
            reserve_after_runtimes: Some(3.5),
            preemption: true,
            grace_period: 30_000,
            retry_backoff: 1_000,
            restart_backoff: 1_000,
            restart_backoff_cap: 300_000,
            restart_reset_after: 600_000,
            predict_runtimes: true,
            shortest_first: true,
            prefer_small_nodes: true,
            max_pass_depth: 500,
        }
    }

    pub fn fcfs() -> Policy {
        Policy {
            ordering: Ordering::Fifo,
            backfill: false,
            max_reservations: 0,
            reserve_after: 0,
            reserve_after_runtimes: None,
            preemption: false,
            predict_runtimes: false,
            shortest_first: false,
            prefer_small_nodes: false,
            ..Policy::cohort()
        }
    }

    pub fn easy() -> Policy {
        Policy { backfill: true, max_reservations: 1, ..Policy::fcfs() }
    }

    pub fn by_name(name: &str) -> Option<Policy> {
        match name {
            "cohort" => Some(Policy::cohort()),
            "fcfs" => Some(Policy::fcfs()),
            "easy" => Some(Policy::easy()),
            _ => None,
        }
    }
}

/// Everything the engine needs to start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub classes: Vec<PriorityClass>,
    pub queues: Vec<QueueSpec>,
    /// Template for queues created on first use when a gang names a queue
    /// that is not configured (its `name` is ignored); `None` rejects such gangs.
    pub auto_queue: Option<QueueSpec>,
    pub policy: Policy,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            classes: PriorityClass::defaults(),
            queues: vec![QueueSpec::new("default", 1.0, 1.0)],
            auto_queue: Some(QueueSpec::new("*", 0.0, 1.0)),
            policy: Policy::cohort(),
        }
    }
}
