//! A scheduling pass, and what its decisions become: records to store,
//! commands for agents, events for watchers, entries in jobs' histories.

use std::collections::BTreeMap;

use cohort_scheduler::{AllocId, Decision, GangId, GangOutcome, NodeId, Resources, StopReason};

use super::Core;
use super::error::Result;
use super::model::{AgentCommand, JobState, Launch, SlotState};
use crate::coordinator::store::{AllocRecord, AttemptRecord, SlotRecord};

/// Entries kept in a job's history; the oldest go first.
const HISTORY_KEPT: usize = 50;

/// One slot of a gang placed in this pass.
struct Placed {
    slot: u32,
    node: NodeId,
    alloc: AllocId,
    limits: Resources,
    elastic: bool,
}

impl Core {
    /// Runs a scheduling pass and carries out its decisions (within the turn).
    pub(super) fn schedule(&mut self) -> Result<()> {
        let decisions = self.engine.schedule();
        // Slots placed together learn their peers.
        let mut placed: BTreeMap<GangId, Vec<Placed>> = BTreeMap::new();
        for d in decisions {
            match d {
                Decision::Place { gang, slot, node, alloc, resources, elastic } => {
                    self.stats.placements += 1;
                    placed.entry(gang).or_default().push(Placed { slot, node, alloc, limits: resources, elastic });
                }
                Decision::Stop { gang, slot, alloc, reason, deadline, .. } => {
                    let grace_ms = deadline.saturating_sub(self.engine.now());
                    if matches!(reason, StopReason::Preempted { .. }) {
                        self.stats.preemptions += 1;
                    }
                    let why = match &reason {
                        StopReason::Preempted { by } => format!("preempted by {}", self.gang_name(by.0)),
                        StopReason::Shrunk { by } => format!("elastic slot taken back for {}", self.gang_name(by.0)),
                        StopReason::Cancelled => "cancelled".into(),
                        StopReason::GangTornDown => "its gang restarts whole".into(),
                        StopReason::Drained => "its node is draining".into(),
                        StopReason::GangFailed => "its job failed".into(),
                        StopReason::Scaled => "scaled down".into(),
                        StopReason::Finished => "its driver finished".into(),
                    };
                    tracing::info!(gang = gang.0, slot, alloc = alloc.0, reason = %why, "stopping slot");
                    self.set_slot(gang.0, slot, |s| {
                        if s.alloc_id == alloc.0 {
                            s.state = SlotState::Stopping;
                        }
                    });
                    if let Some(node) = self.allocs.get(&alloc.0).and_then(|a| self.node_id_of(&a.node)) {
                        self.command(node, AgentCommand::Kill { alloc: alloc.0, grace_ms, reason: why });
                    }
                }
                Decision::Requeued { gang, attempts, cause, reason } => {
                    let Some(job) = self.current_job_of(gang.0) else { continue };
                    // A failure's own words (exit code, output) were just recorded: keep them.
                    let detail = std::mem::take(&mut self.jobs.get_mut(&job).expect("a live job").record.reason);
                    let why = if cause.charged() && !detail.is_empty() {
                        format!("{reason}: {detail}")
                    } else {
                        reason.clone()
                    };
                    self.update_job(job, |r| {
                        r.state = JobState::Pending;
                        r.attempts = attempts;
                        r.reason = why.clone();
                    });
                    self.end_attempt(job, cause.as_str(), &why, cause.charged());
                    self.stats.executor_restarts += 1;
                    let charge = if cause.charged() { "" } else { " (no attempt used)" };
                    self.announce(job, format!("requeued after attempt {attempts}{charge}: {reason}"));
                }
                Decision::Finished { gang, outcome, reason } => {
                    let Some(job) = self.current_job_of(gang.0) else { continue };
                    let state = match outcome {
                        GangOutcome::Succeeded => JobState::Succeeded,
                        GangOutcome::Failed => JobState::Failed,
                        GangOutcome::Cancelled => JobState::Cancelled,
                    };
                    // As on a requeue: a failure's own words (exit code, output) stay in the reason.
                    let detail = std::mem::take(&mut self.jobs.get_mut(&job).expect("a live job").record.reason);
                    let reason = match outcome {
                        GangOutcome::Failed if !detail.is_empty() => format!("{reason}: {detail}"),
                        _ if reason.is_empty() => detail,
                        _ => reason,
                    };
                    self.update_job(job, |r| {
                        r.state = state;
                        r.reason = reason.clone();
                    });
                    self.end_attempt(job, state.as_str(), &reason, state == JobState::Failed);
                    tracing::info!(job, %state, "job finished");
                    let detail = if reason.is_empty() { String::new() } else { format!(": {reason}") };
                    self.announce(job, format!("{state}{detail}"));
                }
                Decision::Reserve { gang, nodes, start } => {
                    tracing::info!(gang = gang.0, nodes = nodes.len(), start, "reservation");
                }
                Decision::ClearReservation { .. } => {}
                Decision::NodeDrained { node } => tracing::info!(node = node.0, "node drained"),
            }
        }
        // Launched once the pass's ends are recorded: a job lost and placed
        // again in one pass ends its run, then starts the next.
        for (gang, slots) in placed {
            self.launch(gang.0, &slots);
        }
        Ok(())
    }

    /// The job a gang runs for, if the gang is the job's current one.
    fn current_job_of(&self, gang: u64) -> Option<u64> {
        let job = self.job_of(gang)?;
        (self.jobs.get(&job)?.gang() == gang).then_some(job)
    }

    fn gang_name(&self, gang: u64) -> String {
        match self.job_of(gang).and_then(|j| self.jobs.get(&j)) {
            Some(j) => format!("job {} ({})", j.record.id, j.record.name),
            None => format!("gang {gang}"),
        }
    }

    /// Records the placed slots of a gang and tells their agents to start them.
    fn launch(&mut self, gang: u64, slots: &[Placed]) {
        let Some(id) = self.job_of(gang) else { return };
        let job = &self.jobs[&id];
        let spec = if job.gang() == gang { &job.spec } else { job.next.as_ref().unwrap_or(&job.spec) };
        let attempts = self.engine.gang(GangId(gang)).map_or(job.record.attempts, |g| g.attempts);
        let shape = spec.kind.launch_shape();
        let run_as = self.settings.run_as.get(&spec.gang.queue).cloned().unwrap_or_default();
        let (kind, port_names) = (shape.executor, &shape.ports);
        let peers: Vec<String> = slots.iter().map(|p| format!("{}@{}", p.slot, self.node_name(p.node))).collect();
        let now = self.engine.now();
        for p in slots {
            let node = self.node_name(p.node);
            let ports = self.assign_ports(p.node.0, port_names);
            let record = AllocRecord {
                id: p.alloc.0,
                job: id,
                slot: p.slot,
                node: node.clone(),
                started_ms: now,
                gang,
                ports: ports.clone(),
            };
            self.allocs.insert(p.alloc.0, record);
            self.turn.allocs.insert(p.alloc.0);
            let mut env = shape.env.clone();
            env.insert("COHORT_JOB_ID".into(), id.to_string());
            env.insert("COHORT_SLOT".into(), p.slot.to_string());
            env.insert("COHORT_GANG_SIZE".into(), slots.len().to_string());
            env.insert("COHORT_PEERS".into(), peers.join(","));
            env.insert("COHORT_ATTEMPT".into(), attempts.to_string());
            env.insert("COHORT_TOKEN".into(), self.job_token(id));
            if !self.endpoints.kafka_bootstrap.is_empty() {
                env.insert("COHORT_KAFKA_BOOTSTRAP".into(), self.endpoints.kafka_bootstrap.clone());
            }
            for (i, name) in port_names.iter().enumerate() {
                let port = ports.get(name).map(u16::to_string).unwrap_or_default();
                env.insert(format!("COHORT_PORT_{}", name.to_uppercase().replace('-', "_")), port.clone());
                env.insert(format!("PORT{i}"), port);
            }
            let launch = Launch {
                alloc: p.alloc.0,
                job: id,
                slot: p.slot,
                kind,
                argv: shape.argv.clone(),
                env,
                limits: p.limits,
                ports: ports.clone(),
                health: shape.health.clone(),
                run_as: run_as.clone(),
            };
            tracing::info!(job = id, gang, slot = p.slot, node = %node, alloc = p.alloc.0, "launching slot");
            self.command(p.node.0, AgentCommand::Launch(Box::new(launch)));
            self.set_slot(gang, p.slot, |s| {
                *s = SlotRecord {
                    node,
                    state: SlotState::Starting,
                    alloc_id: p.alloc.0,
                    exit_code: 0,
                    // Health-checked slots are healthy once they pass their check.
                    healthy: shape.health.is_some().then_some(false),
                    ports,
                }
            });
        }
        if self.jobs[&id].gang() != gang {
            return;
        }
        // A long-running job's run is one history entry from its start to
        // its end; an instance started again in between is recorded where
        // the one it replaces ended (`instance_ended`), not as another run.
        let long_running = self.jobs[&id].spec.kind.service().is_some();
        let open_run = self.jobs[&id].record.history.iter().any(|e| e.ended_ms.is_none());
        let starts_attempt = slots.iter().any(|p| !p.elastic) && !(long_running && open_run);
        let nodes: Vec<String> = slots.iter().map(|p| self.node_name(p.node)).collect();
        if starts_attempt {
            let record = &self.jobs[&id].record;
            let waiting_since = record.history.last().and_then(|a| a.ended_ms).unwrap_or(record.submitted_at_ms);
            self.stats.queue_wait.observe((now as i64 - waiting_since).max(0) as f64 / 1000.0);
            self.stats.attempts_started += 1;
        }
        self.update_job(id, |r| {
            r.state = JobState::Running;
            r.attempts = attempts;
            r.reason.clear();
            if starts_attempt {
                r.history.push(AttemptRecord {
                    attempt: attempts,
                    started_ms: now as i64,
                    ended_ms: None,
                    nodes,
                    outcome: "running".into(),
                    reason: String::new(),
                    charged: false,
                });
                trim_history(&mut r.history);
            }
        });
    }

    /// Closes the job's running history entry (the oldest open one).
    pub(super) fn end_attempt(&mut self, job: u64, outcome: &str, reason: &str, charged: bool) {
        let now = self.now() as i64;
        *self.stats.attempts_ended.entry(outcome.to_string()).or_default() += 1;
        self.update_job(job, |r| {
            if let Some(entry) = r.history.iter_mut().find(|e| e.ended_ms.is_none()) {
                entry.ended_ms = Some(now);
                entry.outcome = outcome.to_string();
                entry.reason = reason.to_string();
                entry.charged = charged;
            }
        });
    }

    /// Records a service instance's end in the job's history.
    pub(super) fn instance_ended(
        &mut self,
        job: u64,
        slot: u32,
        node: &str,
        started_ms: u64,
        outcome: &str,
        why: &str,
    ) {
        let now = self.now() as i64;
        *self.stats.attempts_ended.entry(outcome.to_string()).or_default() += 1;
        if outcome == "restarted" {
            self.stats.executor_restarts += 1;
        }
        self.update_job(job, |r| {
            r.history.push(AttemptRecord {
                attempt: r.attempts.max(1),
                started_ms: started_ms as i64,
                ended_ms: Some(now),
                nodes: vec![node.to_string()],
                outcome: outcome.to_string(),
                reason: format!("instance {slot}: {why}"),
                charged: false,
            });
            trim_history(&mut r.history);
        });
    }
}

/// Keeps the last [`HISTORY_KEPT`] entries, and always the open ones: a
/// long-running job's run stays open under every restart recorded after it.
fn trim_history(history: &mut Vec<AttemptRecord>) {
    let mut excess = history.len().saturating_sub(HISTORY_KEPT);
    history.retain(|entry| {
        let drop = excess > 0 && entry.ended_ms.is_some();
        excess -= usize::from(drop);
        !drop
    });
}
