//! Why a gang is still pending, in words a person can act on.
//!
//! The pass records a compact [`PendingReason`] on every gang it could not
//! start; the text is built only when someone asks (`cohort job ID`), so a
//! pass over thousands of blocked gangs formats nothing.

use crate::engine::{Engine, Gang};
use crate::model::{GangId, Restart, Time};
use crate::resources::{Resources, format_bytes, format_cpu};

/// What held a gang back in the last scheduling pass.
#[derive(Clone, Debug, PartialEq)]
pub enum PendingReason {
    NotYetTried,
    /// Retrying after a failure, not before this time.
    Backoff {
        until: Time,
    },
    /// Its queue would go over its cap.
    QueueCap,
    /// Only `fit` of the `need` slots fit now.
    NoRoom {
        need: u32,
        fit: u32,
    },
    /// No node could ever hold it (too big, no matching labels).
    Unschedulable(String),
    /// Holds a reservation starting at `start`.
    Reserved {
        start: Time,
        nodes: usize,
    },
    /// Victims are stopping to make room; room is free by `deadline`.
    AwaitingVictims {
        deadline: Time,
        victims: usize,
    },
    /// FCFS: an earlier gang is blocked and nothing may pass it.
    Behind(GangId),
}

impl PendingReason {
    /// A stable snake_case name for the reason, without its details: what
    /// dashboards group pending gangs by.
    pub fn kind(&self) -> &'static str {
        match self {
            PendingReason::NotYetTried => "not_yet_tried",
            PendingReason::Backoff { .. } => "backoff",
            PendingReason::QueueCap => "queue_cap",
            PendingReason::NoRoom { .. } => "no_room",
            PendingReason::Unschedulable(_) => "unschedulable",
            PendingReason::Reserved { .. } => "reserved",
            PendingReason::AwaitingVictims { .. } => "awaiting_victims",
            PendingReason::Behind(_) => "behind",
        }
    }
}

impl Engine {
    pub(crate) fn describe(&self, g: &Gang) -> String {
        let shape = format!("{}×({})", g.start_need(), g.spec.slot);
        match &g.blocker {
            PendingReason::NotYetTried => "waiting for the next scheduling pass".to_string(),
            PendingReason::Backoff { until } => {
                let wait = fmt_wait(until.saturating_sub(self.now));
                match g.spec.restart {
                    // Long-running work has no attempts to count.
                    Restart::Always => format!("restarting in {wait} (backoff after its slot ended)"),
                    _ => format!("retrying after failure {} of {} in {wait}", g.failures, g.spec.max_attempts),
                }
            }
            PendingReason::QueueCap => {
                let q = &self.queues[g.queue];
                let cap = self.total.fraction(q.cap);
                format!(
                    "queue `{}` is at its cap: it holds {} of {} and needs {} more",
                    q.name,
                    q.allocated,
                    cap,
                    g.spec.slot.times(g.start_need())
                )
            }
            PendingReason::NoRoom { need, fit } => {
                let largest = self.largest_free();
                format!(
                    "needs {shape} together; {fit} of {need} fit now; largest free node has {} cpu, {}{}",
                    format_cpu(largest.cpu_millis),
                    format_bytes(largest.memory_bytes),
                    g.filters.describe(&self.topology)
                )
            }
            PendingReason::Unschedulable(why) => format!("unschedulable: {why}"),
            PendingReason::Reserved { start, nodes } => format!(
                "needs {shape}; holds a reservation on {nodes} node(s) expected to be free in {}; smaller work backfills around it",
                fmt_wait(start.saturating_sub(self.now))
            ),
            PendingReason::AwaitingVictims { deadline, victims } => format!(
                "preempting {victims} lower-priority slot(s); starts when they stop (their grace ends in {})",
                fmt_wait(deadline.saturating_sub(self.now))
            ),
            PendingReason::Behind(first) => format!("waiting behind {first} (first come, first served)"),
        }
    }

    /// The ready node with the most free cpu, as a hint in reasons. Read
    /// from the nodes, since the free index may lag until the next pass.
    pub(crate) fn largest_free(&self) -> Resources {
        self.nodes
            .iter()
            .flatten()
            .filter(|n| n.state == crate::model::NodeState::Ready)
            .map(|n| n.free())
            .max_by_key(|free| (free.cpu_millis, free.memory_bytes))
            .unwrap_or_default()
    }
}

/// A wait from now, as people read it: `1.5 s`, `12 min`, `3.0 h`. Engine
/// time is wall-clock milliseconds in the coordinator and trace time in
/// simulations, so reasons never print an absolute time.
fn fmt_wait(ms: Time) -> String {
    match ms {
        // Bounds where the rounded figure would read as the next unit's (`60.0 s`, `60 min`).
        0..59_950 => format!("{:.1} s", ms as f64 / 1000.0),
        59_950..3_540_001 => format!("{} min", ms.div_ceil(60_000)),
        _ => format!("{:.1} h", ms as f64 / 3_600_000.0),
    }
}
