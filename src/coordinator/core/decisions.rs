//! A scheduling pass, and what its decisions become: records to store,
//! commands for agents, events for watchers.

use std::collections::BTreeMap;

use cohort_scheduler::{AllocId, Decision, GangId, GangOutcome, NodeId, Resources, StopReason};

use super::Core;
use super::error::Result;
use super::model::{AgentCommand, JobState, Launch, SlotState};
use crate::coordinator::store::{AllocRecord, SlotRecord};
use crate::executor::ExecutorKind;
use crate::spec::JobKind;

/// One slot of a gang placed in this pass.
struct Placed {
    slot: u32,
    node: NodeId,
    alloc: AllocId,
    limits: Resources,
}

impl Core {
    /// Runs a scheduling pass and carries out its decisions (within the turn).
    pub(super) fn schedule(&mut self) -> Result<()> {
        let decisions = self.engine.schedule();
        // Slots placed together learn their peers.
        let mut placed: BTreeMap<GangId, Vec<Placed>> = BTreeMap::new();
        for d in &decisions {
            if let Decision::Place { gang, slot, node, alloc, resources, .. } = d {
                placed.entry(*gang).or_default().push(Placed {
                    slot: *slot,
                    node: *node,
                    alloc: *alloc,
                    limits: *resources,
                });
            }
        }
        for (gang, slots) in placed {
            self.launch(gang, &slots);
        }
        for d in decisions {
            match d {
                Decision::Place { .. } => {}
                Decision::Stop { gang, slot, alloc, reason, deadline, .. } => {
                    let grace_ms = deadline.saturating_sub(self.engine.now());
                    let why = match &reason {
                        StopReason::Preempted { by } => format!("preempted by job {}", by.0),
                        StopReason::Shrunk { by } => format!("elastic slot taken back for job {}", by.0),
                        StopReason::Cancelled => "cancelled".into(),
                        StopReason::GangTornDown => "its gang restarts whole".into(),
                        StopReason::Drained => "its node is draining".into(),
                        StopReason::GangFailed => "its job failed".into(),
                    };
                    tracing::info!(job = gang.0, slot, alloc = alloc.0, reason = %why, "stopping slot");
                    self.set_slot(gang.0, slot, |s| s.state = SlotState::Stopping);
                    if let Some(node) = self.allocs.get(&alloc.0).and_then(|a| self.node_id_of(&a.node)) {
                        self.command(node, AgentCommand::Kill { alloc: alloc.0, grace_ms, reason: why });
                    }
                }
                Decision::Requeued { gang, attempts, reason } => {
                    self.update_job(gang.0, |job| {
                        job.state = JobState::Pending;
                        job.attempts = attempts;
                        job.reason = reason.clone();
                    });
                    self.announce(gang.0, format!("requeued after attempt {attempts}: {reason}"));
                }
                Decision::Finished { gang, outcome, reason } => {
                    let state = match outcome {
                        GangOutcome::Succeeded => JobState::Succeeded,
                        GangOutcome::Failed => JobState::Failed,
                        GangOutcome::Cancelled => JobState::Cancelled,
                    };
                    self.update_job(gang.0, |job| {
                        job.state = state;
                        if !reason.is_empty() {
                            job.reason = reason.clone();
                        }
                    });
                    tracing::info!(job = gang.0, %state, "job finished");
                    let detail = if reason.is_empty() { String::new() } else { format!(": {reason}") };
                    self.announce(gang.0, format!("{state}{detail}"));
                }
                Decision::Reserve { gang, nodes, start } => {
                    tracing::info!(job = gang.0, nodes = nodes.len(), start, "reservation");
                }
                Decision::ClearReservation { .. } => {}
                Decision::NodeDrained { node } => tracing::info!(node = node.0, "node drained"),
            }
        }
        Ok(())
    }

    /// Records the placed slots of a gang and tells their agents to start them.
    fn launch(&mut self, gang: GangId, slots: &[Placed]) {
        let Some(job) = self.jobs.get(&gang.0) else { return };
        let attempts = self.engine.gang(gang).map_or(job.record.attempts, |g| g.attempts);
        let (kind, argv, base_env) = match &job.spec.kind {
            JobKind::Command { argv, env } => (ExecutorKind::Command, argv.clone(), env.clone()),
        };
        let peers: Vec<String> = slots.iter().map(|p| format!("{}@{}", p.slot, self.node_name(p.node))).collect();
        let now = self.engine.now();
        for p in slots {
            let node = self.node_name(p.node);
            let record = AllocRecord { id: p.alloc.0, job: gang.0, slot: p.slot, node: node.clone(), started_ms: now };
            self.allocs.insert(p.alloc.0, record);
            self.turn.allocs.insert(p.alloc.0);
            let mut env = base_env.clone();
            env.insert("COHORT_JOB_ID".into(), gang.0.to_string());
            env.insert("COHORT_SLOT".into(), p.slot.to_string());
            env.insert("COHORT_GANG_SIZE".into(), slots.len().to_string());
            env.insert("COHORT_PEERS".into(), peers.join(","));
            env.insert("COHORT_ATTEMPT".into(), attempts.to_string());
            let launch =
                Launch { alloc: p.alloc.0, job: gang.0, slot: p.slot, kind, argv: argv.clone(), env, limits: p.limits };
            tracing::info!(job = gang.0, slot = p.slot, node = %node, alloc = p.alloc.0, "launching slot");
            self.command(p.node.0, AgentCommand::Launch(launch));
            self.set_slot(gang.0, p.slot, |s| {
                *s = SlotRecord { node, state: SlotState::Starting, alloc_id: p.alloc.0, exit_code: 0 }
            });
        }
        self.update_job(gang.0, |job| {
            job.state = JobState::Running;
            job.attempts = attempts;
            job.reason.clear();
        });
    }
}
