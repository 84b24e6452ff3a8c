//! Agents: registration (and re-registration after either side restarts),
//! what they report, heartbeats, and node maintenance.

use cohort_scheduler::resources::{EXECUTORS, PORTS};
use cohort_scheduler::{
    AllocId, EngineError, Event, GangId, GangPhase, NodeId, NodeSpec, NodeState, Resources, SlotOutcome,
};

use super::error::{CoordinatorError, Result};
use super::model::{AgentCommand, AgentReport, ExitReport, NodeOp, NodeView, Registered, Registration, SlotState};
use super::{Agent, Core, internal};
use crate::coordinator::store::NodeRecord;

impl Core {
    /// An agent introduces itself. What it runs that we placed there is
    /// adopted; what we placed there that it no longer runs ended while we
    /// were apart; anything else is stopped.
    pub fn register(&mut self, reg: Registration) -> Result<Registered> {
        self.turn(|core| {
            if reg.name.is_empty() {
                return Err(CoordinatorError::InvalidInput("an agent needs a name".into()));
            }
            let id = match core.node_id_of(&reg.name) {
                Some(id) => id,
                None => core.agents.keys().next_back().map_or(0, |k| k + 1),
            };
            let (port_first, port_last) = reg.ports.unwrap_or((0, 0));
            let record = NodeRecord {
                id,
                name: reg.name.clone(),
                cpu_millis: reg.capacity.cpu_millis,
                memory_bytes: reg.capacity.memory_bytes,
                labels: reg.labels.clone(),
                logs_address: reg.logs_address.clone(),
                isolation: reg.isolation.clone(),
                max_executors: reg.max_executors,
                port_first,
                port_last,
                address: reg.address.clone(),
                runs_as: reg.runs_as.clone(),
            };
            let spec = node_spec(&record);
            let event = match core.engine.node_view(NodeId(id)).map(|n| n.state) {
                Some(NodeState::Lost) | None => Event::NodeAdded { node: NodeId(id), spec },
                Some(_) => Event::NodeUpdated { node: NodeId(id), spec },
            };
            core.engine.apply(event).map_err(|e| CoordinatorError::InvalidInput(e.to_string()))?;
            // Whatever was held for its previous connection is void.
            core.sink.disconnect(id);
            let now = core.now();
            core.agents.insert(id, Agent { record, last_seen: now, lost: false });
            core.turn.nodes.insert(id);
            tracing::info!(node = %reg.name, id, isolation = %reg.isolation, running = reg.running.len(), "agent registered");
            for r in &reg.running {
                let ours = core.allocs.get(&r.alloc).is_some_and(|a| a.node == reg.name);
                if !ours || core.engine.alloc_node(AllocId(r.alloc)).is_none() {
                    tracing::warn!(alloc = r.alloc, node = %reg.name, "stopping an executor the coordinator does not know");
                    let kill =
                        AgentCommand::Kill { alloc: r.alloc, grace_ms: 10_000, reason: "unknown to the coordinator".into() };
                    core.command(id, kill);
                } else if core.is_stopping(r.alloc) {
                    // Its kill went to the connection this registration
                    // just voided (say, a job cancelled while the agent was
                    // away): without this it would run on, a ghost slot.
                    tracing::info!(alloc = r.alloc, node = %reg.name, "stopping an executor again after its agent returned");
                    let kill = AgentCommand::Kill { alloc: r.alloc, grace_ms: 10_000, reason: "stopping".into() };
                    core.command(id, kill);
                }
            }
            // What ended while the agent was down, as it recorded it.
            for e in reg.ended {
                core.executor_exited(e)?;
            }
            // What we placed there that it neither runs nor recorded ended with its host.
            let vanished: Vec<u64> = core
                .allocs
                .values()
                .filter(|a| a.node == reg.name && !reg.running.iter().any(|r| r.alloc == a.id))
                .map(|a| a.id)
                .collect();
            for alloc in vanished {
                let detail = "the executor was gone when its agent re-registered".to_string();
                core.slot_ended(alloc, SlotOutcome::Lost, -1, detail)?;
            }
            core.schedule()?;
            Ok(Registered {
                node: id,
                heartbeat_interval_ms: core.settings.heartbeat_interval.as_millis() as u64,
                logs_token: core.logs_token(&reg.name),
            })
        })
    }

    /// Whether `alloc`'s slot has been told to stop.
    fn is_stopping(&self, alloc: u64) -> bool {
        self.allocs.get(&alloc).is_some_and(|a| {
            let gang = if a.gang == 0 { a.job } else { a.gang };
            self.slot(gang, a.slot).is_some_and(|s| s.alloc_id == alloc && s.state == SlotState::Stopping)
        })
    }

    /// An agent's stream is open: it hears commands from now on.
    pub fn attached(&mut self, node: u32) {
        let now = self.now();
        if let Some(agent) = self.agents.get_mut(&node) {
            agent.last_seen = now;
        }
    }

    /// A report from an agent's stream.
    pub fn report(&mut self, node: u32, report: AgentReport) -> Result<()> {
        self.turn(|core| {
            let now = core.now();
            let Some(agent) = core.agents.get_mut(&node) else { return Ok(()) };
            if agent.lost {
                // Declared lost: it must register again before it counts.
                return Ok(());
            }
            agent.last_seen = now;
            match report {
                AgentReport::Heartbeat { .. } => Ok(()),
                AgentReport::Started { alloc, pid } => {
                    let Some(a) = core.allocs.get(&alloc).cloned() else { return Ok(()) };
                    let gang = if a.gang == 0 { a.job } else { a.gang };
                    let starting =
                        core.slot(gang, a.slot).is_some_and(|s| s.alloc_id == alloc && s.state == SlotState::Starting);
                    if starting {
                        core.set_slot(gang, a.slot, |s| s.state = SlotState::Running);
                        core.announce(a.job, format!("slot {} running on {} (pid {pid})", a.slot, a.node));
                    }
                    Ok(())
                }
                AgentReport::Exited(e) => {
                    core.executor_exited(e)?;
                    core.schedule()
                }
                AgentReport::Health { alloc, healthy, detail } => {
                    core.instance_health(alloc, healthy, &detail);
                    core.roll_deployments()
                }
            }
        })
    }

    fn executor_exited(&mut self, e: ExitReport) -> Result<()> {
        let outcome = if e.lost {
            SlotOutcome::Lost
        } else if e.stopped {
            SlotOutcome::Stopped
        } else if e.exit_code == 0 {
            SlotOutcome::Succeeded
        } else {
            SlotOutcome::Failed
        };
        // An instance its agent stopped for failing health checks may
        // still exit 0 (it shuts down cleanly on SIGTERM): the agent's
        // reason is kept all the same.
        let detail = if e.exit_code == 0 && e.signal.is_empty() && e.reason.is_empty() {
            String::new()
        } else {
            let how = if e.signal.is_empty() {
                format!("exited with code {}", e.exit_code)
            } else {
                format!("was killed by {}", e.signal)
            };
            let tail = e.output_tail.trim();
            let why = if e.reason.is_empty() { String::new() } else { format!(" ({})", e.reason) };
            if tail.is_empty() { format!("{how}{why}") } else { format!("{how}{why}; its output ends:\n{tail}") }
        };
        self.slot_ended(e.alloc, outcome, e.exit_code, detail)
    }

    /// Records a slot's end and tells the engine.
    pub(super) fn slot_ended(
        &mut self,
        alloc: u64,
        outcome: SlotOutcome,
        exit_code: i32,
        detail: String,
    ) -> Result<()> {
        let Some(record) = self.allocs.remove(&alloc) else { return Ok(()) };
        self.turn.allocs.insert(alloc);
        let gang = if record.gang == 0 { record.job } else { record.gang };
        let state = SlotState::ended_as(outcome);
        let was_stopping =
            self.slot(gang, record.slot).is_some_and(|s| s.alloc_id == alloc && s.state == SlotState::Stopping);
        self.set_slot(gang, record.slot, |s| {
            if s.alloc_id == alloc {
                s.exit_code = exit_code;
                s.state = state;
                s.healthy = s.healthy.map(|_| false);
            }
        });
        let job = record.job;
        if outcome == SlotOutcome::Failed && !detail.is_empty() {
            self.update_job(job, |r| r.reason = format!("slot {} {detail}", record.slot));
        }
        let instance = self.jobs.get(&job).is_some_and(|j| j.spec.kind.service().is_some()) && !was_stopping;
        if self.jobs.contains_key(&job) {
            let what = format!("slot {} {state} on {} (exit code {exit_code})", record.slot, record.node);
            self.announce(job, what);
        }
        let applied = self.engine.apply(Event::SlotFinished { alloc: AllocId(alloc), outcome });
        // A service instance that ended on its own restarts: keep why. A
        // loss that takes the gang below its minimum ends the whole run
        // instead, which its history entry says once.
        let ends_run = outcome == SlotOutcome::Lost
            && self.engine.gang(GangId(gang)).is_none_or(|g| g.phase == GangPhase::Pending);
        if instance && !ends_run {
            let (how, why) = match outcome {
                SlotOutcome::Lost => ("lost", "lost with its host".to_string()),
                SlotOutcome::Stopped => ("stopped", format!("exited with code {exit_code}")),
                _ => ("restarted", format!("exited with code {exit_code}")),
            };
            let why = if detail.is_empty() { why } else { detail };
            self.instance_ended(job, record.slot, &record.node, record.started_ms, how, &why);
        }
        match applied {
            Ok(()) | Err(EngineError::UnknownAlloc(_)) => Ok(()),
            Err(e) => Err(internal(e)),
        }
    }

    /// Agents silent past the heartbeat timeout are lost: their slots are
    /// stopped where they stand and their gangs re-queued.
    pub(super) fn find_lost_agents(&mut self) -> Result<()> {
        let now = self.now();
        let timeout = self.settings.heartbeat_timeout.as_millis() as u64;
        let silent: Vec<u32> = self
            .agents
            .iter()
            .filter(|(_, a)| !a.lost && now.saturating_sub(a.last_seen) > timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in silent {
            let agent = self.agents.get_mut(&id).expect("listed above");
            agent.lost = true;
            let name = agent.record.name.clone();
            self.sink.disconnect(id);
            tracing::warn!(node = %name, "agent missed its heartbeats: lost; re-queueing its work");
            self.engine.apply(Event::NodeLost { node: NodeId(id) }).map_err(internal)?;
            let gone: Vec<u64> = self.allocs.values().filter(|a| a.node == name).map(|a| a.id).collect();
            for alloc in gone {
                self.slot_ended(alloc, SlotOutcome::Stopped, -1, String::new())?;
            }
        }
        Ok(())
    }

    /// Cordons, uncordons or drains a node by name.
    pub fn node_op(&mut self, name: &str, op: NodeOp) -> Result<NodeView> {
        self.turn(|core| {
            let Some(id) = core.node_id_of(name) else {
                let known: Vec<&str> = core.agents.values().map(|a| a.record.name.as_str()).collect();
                return Err(CoordinatorError::NotFound(format!(
                    "no node named `{name}` (known: {})",
                    known.join(", ")
                )));
            };
            let event = match op {
                NodeOp::Cordon => Event::NodeCordoned { node: NodeId(id) },
                NodeOp::Uncordon => Event::NodeUncordoned { node: NodeId(id) },
                NodeOp::Drain => Event::NodeDrained { node: NodeId(id) },
            };
            core.engine.apply(event).map_err(|e| CoordinatorError::Conflict(e.to_string()))?;
            tracing::info!(node = %name, ?op, "node state changed");
            core.schedule()?;
            core.node_view(id).ok_or_else(|| CoordinatorError::Internal(format!("node {name} vanished")))
        })
    }

    /// Every node, by id.
    pub fn nodes(&self) -> Vec<NodeView> {
        self.agents.keys().filter_map(|&id| self.node_view(id)).collect()
    }

    fn node_view(&self, id: u32) -> Option<NodeView> {
        let agent = self.agents.get(&id)?;
        let view = self.engine.node_view(NodeId(id))?;
        Some(NodeView {
            id,
            name: agent.record.name.clone(),
            state: view.state,
            capacity: view.capacity,
            allocated: view.allocated,
            slots: view.slots as u32,
            isolation: agent.record.isolation.clone(),
            labels: agent.record.labels.clone(),
            max_executors: agent.record.max_executors,
            address: agent.record.address.clone(),
            agent_address: agent.record.logs_address.clone(),
            runs_as: agent.record.runs_as.clone(),
        })
    }
}

/// What the engine schedules on a node: cpu, memory, executors and host ports.
pub(super) fn node_spec(record: &NodeRecord) -> NodeSpec {
    let ports = if record.port_first == 0 { 0 } else { (record.port_last - record.port_first) as u64 + 1 };
    NodeSpec {
        name: record.name.clone(),
        capacity: Resources::new(record.cpu_millis, record.memory_bytes)
            .with_scalar(EXECUTORS, record.max_executors as u64)
            .with_scalar(PORTS, ports),
        labels: record.labels.clone(),
    }
}
