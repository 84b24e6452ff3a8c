//! The engine's inputs ([`Event`]) and outputs ([`Decision`]).

use serde::{Deserialize, Serialize};

use crate::model::{AllocId, GangId, GangSpec, NodeId, NodeSpec, Time};
use crate::resources::Resources;

/// Something that happened in the cluster. The engine's whole input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    NodeAdded {
        node: NodeId,
        spec: NodeSpec,
    },
    /// New capacity or labels for a known node; running slots stay.
    NodeUpdated {
        node: NodeId,
        spec: NodeSpec,
    },
    NodeCordoned {
        node: NodeId,
    },
    /// Back to ready after a cordon or a drain.
    NodeUncordoned {
        node: NodeId,
    },
    NodeDrained {
        node: NodeId,
    },
    /// The node is gone: its slots are lost.
    NodeLost {
        node: NodeId,
    },
    GangSubmitted {
        gang: GangId,
        spec: GangSpec,
    },
    GangCancelled {
        gang: GangId,
    },
    /// A placed slot ended: on its own, or after a stop the engine decided.
    SlotFinished {
        alloc: AllocId,
        outcome: SlotOutcome,
    },
    TimeAdvanced {
        now: Time,
    },
    /// A new ceiling on a gang's slots (a service scaled, or a version
    /// drained or grown during a rolling update). Slots at or above it stop.
    GangResized {
        gang: GangId,
        max: u32,
    },
    /// Where a gang's data is cached now (node name, weight): the slots it
    /// places from now on go there first. Running slots stay.
    GangLocated {
        gang: GangId,
        locality: Vec<(String, u32)>,
    },
    /// A slot already running (found after a restart): adopt it as it is.
    SlotRestored {
        alloc: AllocId,
        gang: GangId,
        slot: u32,
        node: NodeId,
        started: Time,
    },
}

/// How a slot ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotOutcome {
    Succeeded,
    Failed,
    /// Ended because the engine stopped it (preemption, cancel, drain).
    Stopped,
    /// Gone with its host, agent or coordinator: not the gang's own failure,
    /// so it uses no attempt and waits no backoff.
    Lost,
}

/// Why a slot is being stopped.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum StopReason {
    /// Evicted so that a higher-priority (or under-guarantee) gang can run.
    Preempted {
        by: GangId,
    },
    /// An elastic slot above `min` taken back for another gang.
    Shrunk {
        by: GangId,
    },
    Cancelled,
    /// Its gang fell below `min` (a slot was lost or failed) and restarts whole.
    GangTornDown,
    /// Its node is draining and the slot's class moves.
    Drained,
    /// Its gang failed for good.
    GangFailed,
    /// Its gang was resized below it.
    Scaled,
    /// Its gang's leader finished the gang's work.
    Finished,
}

/// Why a running gang was stopped whole and re-queued.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequeueCause {
    /// A slot failed: the attempt is used.
    Failed,
    /// A slot was lost with its node, agent or coordinator: no attempt used.
    Lost,
    /// Evicted for a more important gang: no attempt used.
    Preempted,
    /// Its node is draining: no attempt used.
    Drained,
    /// Resized below what it needs: no attempt used.
    Resized,
}

impl RequeueCause {
    /// Whether the gang's own failure ended the attempt.
    pub fn charged(self) -> bool {
        self == RequeueCause::Failed
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RequeueCause::Failed => "failed",
            RequeueCause::Lost => "lost",
            RequeueCause::Preempted => "preempted",
            RequeueCause::Drained => "drained",
            RequeueCause::Resized => "resized",
        }
    }
}

/// Final state of a gang.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GangOutcome {
    Succeeded,
    Failed,
    Cancelled,
}

/// What the engine wants done. Decisions are emitted in a deterministic order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Start slot `slot` of `gang` on `node`. The slots that first bring a
    /// gang to `min` are emitted together, in one scheduling pass.
    Place {
        gang: GangId,
        slot: u32,
        node: NodeId,
        alloc: AllocId,
        resources: Resources,
        elastic: bool,
    },
    /// SIGTERM the slot now, SIGKILL at `deadline`; its resources are free
    /// once it reports [`SlotOutcome::Stopped`] or the deadline passes.
    Stop {
        gang: GangId,
        slot: u32,
        node: NodeId,
        alloc: AllocId,
        reason: StopReason,
        deadline: Time,
    },
    /// The gang holds room on these nodes from `start` on (a starvation
    /// reservation, or the room its victims are freeing).
    Reserve {
        gang: GangId,
        nodes: Vec<NodeId>,
        start: Time,
    },
    ClearReservation {
        gang: GangId,
    },
    /// The gang was stopped whole and waits again; `attempts` is the
    /// attempt that ended (its own failures so far, plus one).
    Requeued {
        gang: GangId,
        attempts: u32,
        cause: RequeueCause,
        reason: String,
    },
    Finished {
        gang: GangId,
        outcome: GangOutcome,
        reason: String,
    },
    /// A draining node has no slots left.
    NodeDrained {
        node: NodeId,
    },
}
