//! The coordinator's event loop: the engine, the records, the agents.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use cohort_proto as pb;
use cohort_scheduler::{
    AllocId, Config, Decision, Engine, EngineError, Event, GangId, GangOutcome, GangPhase, NodeId, NodeSpec, NodeState,
    Resources, SlotOutcome, StopReason,
};
use tokio::sync::mpsc;
use tonic::Status;

use super::store::{AllocRecord, JobRecord, NodeRecord, SlotRecord, SqliteStore, StateStore};
use super::{Msg, NodeOp, Settings};
use crate::spec::{JobKind, parse_job};

struct Agent {
    record: NodeRecord,
    last_seen: Instant,
    commands: Option<mpsc::Sender<Result<pb::Command, Status>>>,
    /// Commands decided between its registration and its stream attaching.
    queued: Vec<pb::Command>,
    lost: bool,
}

impl Agent {
    fn new(record: NodeRecord) -> Agent {
        Agent { record, last_seen: Instant::now(), commands: None, queued: Vec::new(), lost: false }
    }
}

pub(crate) struct State {
    engine: Engine,
    store: Box<dyn StateStore>,
    jobs: BTreeMap<u64, JobRecord>,
    allocs: BTreeMap<u64, AllocRecord>,
    agents: BTreeMap<u32, Agent>,
    next_job: u64,
    /// Executors agents reported that nobody placed: (node, alloc), to stop.
    pending_orphans: Vec<(u32, u64)>,
    settings: Settings,
    address: String,
    events: tokio::sync::broadcast::Sender<pb::JobEvent>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn outcome_name(o: GangOutcome) -> &'static str {
    match o {
        GangOutcome::Succeeded => "succeeded",
        GangOutcome::Failed => "failed",
        GangOutcome::Cancelled => "cancelled",
    }
}

impl State {
    /// Opens the state database and rebuilds the engine from it: nodes as
    /// they were, unfinished jobs re-submitted, running slots adopted.
    pub fn open(settings: &Settings, address: String) -> anyhow::Result<State> {
        let store = SqliteStore::open(&settings.data_dir.join("state.db"))?;
        let snapshot = store.load()?;
        let mut engine = Engine::new(Config::default());
        engine.apply(Event::TimeAdvanced { now: now_ms() }).expect("time starts");
        let mut agents = BTreeMap::new();
        for n in snapshot.nodes {
            let spec = NodeSpec {
                name: n.name.clone(),
                capacity: Resources::new(n.cpu_millis, n.memory_bytes),
                labels: n.labels.clone(),
            };
            engine.apply(Event::NodeAdded { node: NodeId(n.id), spec })?;
            // Until it re-registers, its executors are presumed healthy.
            agents.insert(n.id, Agent::new(n));
        }
        let mut jobs = BTreeMap::new();
        for job in snapshot.jobs {
            if matches!(job.state.as_str(), "pending" | "running") {
                let spec =
                    parse_job(&job.file, &job.spec_toml).map_err(|e| anyhow::anyhow!("stored job {}: {e}", job.id))?;
                engine.apply(Event::GangSubmitted { gang: GangId(job.id), spec: spec.gang })?;
            }
            jobs.insert(job.id, job);
        }
        let mut allocs = BTreeMap::new();
        for a in snapshot.allocs {
            let node = agents.values().find(|ag| ag.record.name == a.node).map(|ag| ag.record.id);
            let restored = node.map(|node| {
                engine.apply(Event::SlotRestored {
                    alloc: AllocId(a.id),
                    gang: GangId(a.job),
                    slot: a.slot,
                    node: NodeId(node),
                    started: a.started_ms,
                })
            });
            match restored {
                Some(Ok(())) => {
                    allocs.insert(a.id, a);
                }
                other => {
                    tracing::warn!(
                        alloc = a.id,
                        job = a.job,
                        ?other,
                        "dropping a stored allocation that cannot be restored"
                    );
                    store.delete_alloc(a.id)?;
                }
            }
        }
        if !allocs.is_empty() {
            tracing::info!(
                allocations = allocs.len(),
                jobs = jobs.len(),
                "restored state; waiting for agents to re-register"
            );
        }
        Ok(State {
            engine,
            store: Box::new(store),
            jobs,
            allocs,
            agents,
            next_job: snapshot.next_job,
            pending_orphans: Vec::new(),
            settings: settings.clone(),
            address,
            events: tokio::sync::broadcast::channel(4096).0,
        })
    }

    pub async fn run(&mut self, mut rx: mpsc::Receiver<Msg>) {
        while let Some(msg) = rx.recv().await {
            if let Err(e) = self.handle(msg) {
                tracing::error!(error = %e, "coordinator state update failed");
            }
        }
    }

    fn handle(&mut self, msg: Msg) -> anyhow::Result<()> {
        match msg {
            Msg::Submit { file, text, reply } => {
                let result = self.submit(&file, &text);
                let _ = reply.send(result);
            }
            Msg::Job { id, reply } => {
                let _ = reply.send(self.job_view(id).ok_or_else(|| Status::not_found(format!("no job {id}"))));
            }
            Msg::Jobs { reply } => {
                let ids: Vec<u64> = self.jobs.keys().copied().collect();
                let _ = reply.send(ids.into_iter().filter_map(|id| self.job_view(id)).collect());
            }
            Msg::Cancel { id, reply } => {
                let result = match self.engine.apply(Event::GangCancelled { gang: GangId(id) }) {
                    Ok(()) => {
                        self.schedule()?;
                        Ok(self.job_view(id).expect("cancelled job is known"))
                    }
                    Err(EngineError::UnknownGang(_)) => match self.job_view(id) {
                        Some(job) => Err(Status::failed_precondition(format!("job {id} already {}", job.state))),
                        None => Err(Status::not_found(format!("no job {id}"))),
                    },
                    Err(e) => Err(Status::internal(e.to_string())),
                };
                let _ = reply.send(result);
            }
            Msg::LogSource { job, slot, reply } => {
                let _ = reply.send(self.log_source(job, slot));
            }
            Msg::Register { req, reply } => {
                let result = self.register(req);
                let _ = reply.send(result);
                self.schedule()?;
            }
            Msg::Attach { node, commands } => {
                if let Some(agent) = self.agents.get_mut(&node) {
                    for command in agent.queued.drain(..) {
                        let _ = commands.try_send(Ok(command));
                    }
                    agent.commands = Some(commands);
                    agent.last_seen = Instant::now();
                }
            }
            Msg::Agent { node, msg } => self.agent_message(node, msg)?,
            Msg::Nodes { reply } => {
                let _ = reply.send(self.agents.keys().filter_map(|&id| self.node_view(id)).collect());
            }
            Msg::NodeOp { name, op, reply } => {
                let result = self.node_op(&name, op);
                let _ = reply.send(result);
                self.schedule()?;
            }
            Msg::Status { reply } => {
                let _ = reply.send(pb::ClusterStatus {
                    coordinator: self.address.clone(),
                    http: String::new(),
                    kafka_bootstrap: String::new(),
                    agents: self.agents.values().filter(|a| !a.lost).count() as u32,
                });
            }
            Msg::Watch { reply } => {
                let _ = reply.send(self.events.subscribe());
            }
            Msg::Tick => self.tick()?,
        }
        Ok(())
    }

    fn submit(&mut self, file: &str, text: &str) -> Result<u64, Status> {
        let spec = parse_job(file, text).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let id = self.next_job;
        self.engine
            .apply(Event::GangSubmitted { gang: GangId(id), spec: spec.gang.clone() })
            .map_err(|e| Status::invalid_argument(format!("{file}: {e}")))?;
        self.next_job += 1;
        let record = JobRecord {
            id,
            file: file.to_string(),
            spec_toml: text.to_string(),
            name: spec.name.clone(),
            kind: spec.kind.name().to_string(),
            priority: spec.gang.priority.clone(),
            queue: spec.gang.queue.clone(),
            state: "pending".into(),
            attempts: 0,
            reason: String::new(),
            submitted_at_ms: now_ms() as i64,
            slots: vec![SlotRecord { state: "pending".into(), ..SlotRecord::default() }; spec.gang.max as usize],
        };
        let persisted = self.store.set_next_job(self.next_job).and_then(|_| self.store.put_job(&record));
        if let Err(e) = persisted {
            let _ = self.engine.apply(Event::GangCancelled { gang: GangId(id) });
            let _ = self.engine.schedule();
            return Err(Status::unavailable(format!("cannot persist the job: {e}")));
        }
        tracing::info!(job = id, name = %spec.name, "job submitted");
        self.jobs.insert(id, record);
        self.announce(id, format!("submitted: {} ({} × {})", spec.name, spec.gang.min, spec.gang.slot));
        self.schedule().map_err(|e| Status::internal(e.to_string()))?;
        Ok(id)
    }

    /// Tells watchers what happened to a job.
    fn announce(&self, job: u64, what: String) {
        let state = self.job_view(job).map(|j| j.state).unwrap_or_default();
        let _ = self.events.send(pb::JobEvent { job_id: job, at_ms: now_ms() as i64, state, what });
    }

    /// Runs a scheduling pass and carries out its decisions.
    fn schedule(&mut self) -> anyhow::Result<()> {
        let decisions = self.engine.schedule();
        // Slots placed together learn their peers.
        let mut placed: BTreeMap<GangId, Vec<(u32, NodeId, AllocId, Resources)>> = BTreeMap::new();
        for d in &decisions {
            if let Decision::Place { gang, slot, node, alloc, resources, .. } = d {
                placed.entry(*gang).or_default().push((*slot, *node, *alloc, *resources));
            }
        }
        for (gang, slots) in placed {
            self.launch(gang, &slots)?;
        }
        for d in decisions {
            match d {
                Decision::Place { .. } => {}
                Decision::Stop { gang, slot, alloc, reason, deadline, .. } => {
                    let grace_ms = deadline.saturating_sub(self.engine.now());
                    let why = match &reason {
                        StopReason::Preempted { by } => format!("preempted by job {}", by.0),
                        StopReason::Shrunk { by } => format!("elastic slot taken back for job {}", by.0),
                        other => format!("{other:?}").to_lowercase(),
                    };
                    tracing::info!(job = gang.0, slot, alloc = alloc.0, reason = %why, "stopping slot");
                    if let Some(job) = self.jobs.get_mut(&gang.0) {
                        if let Some(s) = job.slots.get_mut(slot as usize) {
                            s.state = "stopping".into();
                        }
                        self.store.put_job(job)?;
                    }
                    self.send_to_alloc(
                        alloc.0,
                        pb::command::Body::Kill(pb::Kill { alloc_id: alloc.0, grace_ms, reason: why }),
                    );
                }
                Decision::Requeued { gang, attempts, reason } => {
                    if let Some(job) = self.jobs.get_mut(&gang.0) {
                        job.state = "pending".into();
                        job.attempts = attempts;
                        job.reason = reason.clone();
                        self.store.put_job(job)?;
                    }
                    self.announce(gang.0, format!("requeued after attempt {attempts}: {reason}"));
                }
                Decision::Finished { gang, outcome, reason } => {
                    if let Some(job) = self.jobs.get_mut(&gang.0) {
                        job.state = outcome_name(outcome).into();
                        if !reason.is_empty() {
                            job.reason = reason.clone();
                        }
                        tracing::info!(job = gang.0, state = %job.state, "job finished");
                        self.store.put_job(job)?;
                    }
                    let detail = if reason.is_empty() { String::new() } else { format!(": {reason}") };
                    self.announce(gang.0, format!("{}{detail}", outcome_name(outcome)));
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

    fn launch(&mut self, gang: GangId, slots: &[(u32, NodeId, AllocId, Resources)]) -> anyhow::Result<()> {
        let Some(job) = self.jobs.get(&gang.0) else { return Ok(()) };
        let spec = parse_job(&job.file, &job.spec_toml).map_err(|e| anyhow::anyhow!("stored spec: {e}"))?;
        let attempts = self.engine.gang(gang).map_or(job.attempts, |g| g.attempts);
        let peers: Vec<String> = slots.iter().map(|(s, n, _, _)| format!("{s}@{}", self.node_name(*n))).collect();
        let now = self.engine.now();
        for &(slot, node, alloc, res) in slots {
            let node_name = self.node_name(node);
            let record = AllocRecord { id: alloc.0, job: gang.0, slot, node: node_name.clone(), started_ms: now };
            self.store.put_alloc(&record)?;
            self.allocs.insert(alloc.0, record);
            let JobKind::Command { argv, env } = &spec.kind;
            let mut env = env.clone();
            env.insert("COHORT_JOB_ID".into(), gang.0.to_string());
            env.insert("COHORT_SLOT".into(), slot.to_string());
            env.insert("COHORT_GANG_SIZE".into(), slots.len().to_string());
            env.insert("COHORT_PEERS".into(), peers.join(","));
            env.insert("COHORT_ATTEMPT".into(), attempts.to_string());
            let launch = pb::Launch {
                alloc_id: alloc.0,
                job_id: gang.0,
                slot,
                kind: spec.kind.name().into(),
                argv: argv.clone(),
                env: env.into_iter().collect(),
                limits: Some(pb::Resources { cpu_millis: res.cpu_millis, memory_bytes: res.memory_bytes }),
            };
            tracing::info!(job = gang.0, slot, node = %node_name, alloc = alloc.0, "launching slot");
            self.send_to_alloc(alloc.0, pb::command::Body::Launch(launch));
        }
        let job = self.jobs.get_mut(&gang.0).expect("checked above");
        job.state = "running".into();
        job.attempts = attempts;
        job.reason.clear();
        for &(slot, node, alloc, _) in slots {
            let node = self.engine.node_view(node).map_or(String::new(), |n| n.name.to_string());
            if let Some(s) = job.slots.get_mut(slot as usize) {
                *s = SlotRecord { node, state: "starting".into(), alloc_id: alloc.0, exit_code: 0 };
            }
        }
        self.store.put_job(job)?;
        Ok(())
    }

    fn node_name(&self, node: NodeId) -> String {
        self.engine.node_view(node).map_or_else(|| format!("node-{}", node.0), |n| n.name.to_string())
    }

    fn send_to_alloc(&mut self, alloc: u64, body: pb::command::Body) {
        let Some(record) = self.allocs.get(&alloc) else { return };
        let Some(agent) = self.agents.values_mut().find(|a| a.record.name == record.node) else { return };
        let command = pb::Command { body: Some(body) };
        match &agent.commands {
            Some(commands) => {
                if commands.try_send(Ok(command)).is_err() {
                    tracing::warn!(alloc, node = %record.node, "agent command queue full or closed");
                }
            }
            // Registered but not yet attached: delivered when it attaches.
            None => agent.queued.push(command),
        }
    }

    fn register(&mut self, req: pb::RegisterRequest) -> Result<pb::RegisterResponse, Status> {
        if req.name.is_empty() {
            return Err(Status::invalid_argument("an agent needs a name"));
        }
        let capacity = req.capacity.unwrap_or_default();
        let id = match self.agents.values().find(|a| a.record.name == req.name) {
            Some(a) => a.record.id,
            None => self.agents.keys().next_back().map_or(0, |k| k + 1),
        };
        let record = NodeRecord {
            id,
            name: req.name.clone(),
            cpu_millis: capacity.cpu_millis,
            memory_bytes: capacity.memory_bytes,
            labels: req.labels.clone().into_iter().collect(),
            logs_address: req.logs_address.clone(),
            isolation: req.isolation.clone(),
        };
        self.store.put_node(&record).map_err(|e| Status::unavailable(e.to_string()))?;
        let spec = NodeSpec {
            name: req.name.clone(),
            capacity: Resources::new(capacity.cpu_millis, capacity.memory_bytes),
            labels: record.labels.clone(),
        };
        let known = self.engine.node_view(NodeId(id)).map(|n| n.state);
        let event = match known {
            Some(NodeState::Lost) | None => Event::NodeAdded { node: NodeId(id), spec },
            Some(_) => Event::NodeUpdated { node: NodeId(id), spec },
        };
        self.engine.apply(event).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.agents.insert(id, Agent::new(record));
        tracing::info!(node = %req.name, id, isolation = %req.isolation, running = req.running.len(), "agent registered");
        // Adopt what it runs that we know of; anything else is an orphan to stop.
        let mut orphans = Vec::new();
        for r in &req.running {
            let ours = self.allocs.get(&r.alloc_id).is_some_and(|a| a.node == req.name);
            if !ours || self.engine.alloc_node(AllocId(r.alloc_id)).is_none() {
                orphans.push(r.alloc_id);
            }
        }
        // Slots we placed there that it no longer runs ended while we were apart.
        let reported: Vec<u64> = req.running.iter().map(|r| r.alloc_id).collect();
        let vanished: Vec<u64> =
            self.allocs.values().filter(|a| a.node == req.name && !reported.contains(&a.id)).map(|a| a.id).collect();
        for alloc in vanished {
            self.slot_ended(
                alloc,
                SlotOutcome::Failed,
                -1,
                "the executor was gone when its agent re-registered".into(),
            )
            .map_err(|e| Status::internal(e.to_string()))?;
        }
        for alloc in orphans {
            tracing::warn!(alloc, node = %req.name, "stopping an executor the coordinator does not know");
            self.pending_orphans.push((id, alloc));
        }
        Ok(pb::RegisterResponse {
            node_id: id,
            heartbeat_interval_ms: self.settings.heartbeat_interval.as_millis() as u64,
        })
    }

    fn agent_message(&mut self, node: u32, msg: pb::AgentMessage) -> anyhow::Result<()> {
        let Some(agent) = self.agents.get_mut(&node) else { return Ok(()) };
        agent.last_seen = Instant::now();
        match msg.body {
            Some(pb::agent_message::Body::Started(s)) => {
                let mut started = None;
                if let Some(a) = self.allocs.get(&s.alloc_id)
                    && let Some(job) = self.jobs.get_mut(&a.job)
                {
                    if let Some(slot) = job.slots.get_mut(a.slot as usize)
                        && slot.alloc_id == s.alloc_id
                        && slot.state == "starting"
                    {
                        slot.state = "running".into();
                        started = Some((a.job, format!("slot {} running on {} (pid {})", a.slot, a.node, s.pid)));
                    }
                    self.store.put_job(job)?;
                }
                if let Some((job, what)) = started {
                    self.announce(job, what);
                }
            }
            Some(pb::agent_message::Body::Exited(e)) => {
                let outcome = if e.stopped {
                    SlotOutcome::Stopped
                } else if e.exit_code == 0 {
                    SlotOutcome::Succeeded
                } else {
                    SlotOutcome::Failed
                };
                let detail = if e.exit_code == 0 && e.signal.is_empty() {
                    String::new()
                } else {
                    let how = if e.signal.is_empty() {
                        format!("exited with code {}", e.exit_code)
                    } else {
                        format!("was killed by {}", e.signal)
                    };
                    let tail = e.stderr_tail.trim();
                    let why = if e.reason.is_empty() { String::new() } else { format!(" ({})", e.reason) };
                    if tail.is_empty() { format!("{how}{why}") } else { format!("{how}{why}; stderr ends:\n{tail}") }
                };
                self.slot_ended(e.alloc_id, outcome, e.exit_code, detail)?;
            }
            Some(pb::agent_message::Body::Heartbeat(_)) | Some(pb::agent_message::Body::Hello(_)) | None => {}
        }
        Ok(())
    }

    /// Records a slot's end and tells the engine.
    fn slot_ended(&mut self, alloc: u64, outcome: SlotOutcome, exit_code: i32, detail: String) -> anyhow::Result<()> {
        let Some(record) = self.allocs.remove(&alloc) else { return Ok(()) };
        self.store.delete_alloc(alloc)?;
        if let Some(job) = self.jobs.get_mut(&record.job) {
            if let Some(slot) = job.slots.get_mut(record.slot as usize)
                && slot.alloc_id == alloc
            {
                slot.exit_code = exit_code;
                slot.state = match outcome {
                    SlotOutcome::Succeeded => "succeeded",
                    SlotOutcome::Failed => "failed",
                    SlotOutcome::Stopped => "stopped",
                }
                .into();
            }
            if outcome == SlotOutcome::Failed && !detail.is_empty() {
                job.reason = format!("slot {} {detail}", record.slot);
            }
            let ended = match outcome {
                SlotOutcome::Succeeded => "succeeded",
                SlotOutcome::Failed => "failed",
                SlotOutcome::Stopped => "stopped",
            };
            self.store.put_job(job)?;
            self.announce(
                record.job,
                format!("slot {} {ended} on {} (exit code {exit_code})", record.slot, record.node),
            );
        }
        match self.engine.apply(Event::SlotFinished { alloc: AllocId(alloc), outcome }) {
            Ok(()) | Err(EngineError::UnknownAlloc(_)) => {}
            Err(e) => return Err(e.into()),
        }
        self.schedule()
    }

    fn tick(&mut self) -> anyhow::Result<()> {
        self.engine.apply(Event::TimeAdvanced { now: now_ms().max(self.engine.now()) })?;
        let timeout = self.settings.heartbeat_timeout;
        let silent: Vec<u32> =
            self.agents.iter().filter(|(_, a)| !a.lost && a.last_seen.elapsed() > timeout).map(|(id, _)| *id).collect();
        for id in silent {
            let agent = self.agents.get_mut(&id).expect("listed above");
            agent.lost = true;
            agent.commands = None;
            agent.queued.clear();
            let name = agent.record.name.clone();
            tracing::warn!(node = %name, "agent missed its heartbeats: lost; re-queueing its work");
            self.engine.apply(Event::NodeLost { node: NodeId(id) })?;
            let gone: Vec<u64> = self.allocs.values().filter(|a| a.node == name).map(|a| a.id).collect();
            for alloc in gone {
                self.slot_ended(alloc, SlotOutcome::Stopped, -1, String::new())?;
            }
        }
        for (node, alloc) in std::mem::take(&mut self.pending_orphans) {
            if let Some(commands) = self.agents.get(&node).and_then(|a| a.commands.as_ref()) {
                let kill = pb::Kill { alloc_id: alloc, grace_ms: 10_000, reason: "unknown to the coordinator".into() };
                let _ = commands.try_send(Ok(pb::Command { body: Some(pb::command::Body::Kill(kill)) }));
            } else {
                self.pending_orphans.push((node, alloc));
            }
        }
        self.schedule()
    }

    fn node_op(&mut self, name: &str, op: NodeOp) -> Result<pb::Node, Status> {
        let id = self.agents.values().find(|a| a.record.name == name).map(|a| a.record.id);
        let Some(id) = id else {
            let known: Vec<&str> = self.agents.values().map(|a| a.record.name.as_str()).collect();
            return Err(Status::not_found(format!("no node named `{name}` (known: {})", known.join(", "))));
        };
        let event = match op {
            NodeOp::Cordon => Event::NodeCordoned { node: NodeId(id) },
            NodeOp::Uncordon => Event::NodeUncordoned { node: NodeId(id) },
            NodeOp::Drain => Event::NodeDrained { node: NodeId(id) },
        };
        self.engine.apply(event).map_err(|e| Status::failed_precondition(e.to_string()))?;
        tracing::info!(node = %name, ?op, "node state changed");
        Ok(self.node_view(id).expect("known node"))
    }

    fn log_source(&self, job: u64, slot: u32) -> Result<(String, u64), Status> {
        let record = self.jobs.get(&job).ok_or_else(|| Status::not_found(format!("no job {job}")))?;
        let s = record
            .slots
            .get(slot as usize)
            .ok_or_else(|| Status::not_found(format!("job {job} has no slot {slot}")))?;
        if s.alloc_id == 0 {
            return Err(Status::failed_precondition(format!("slot {slot} of job {job} has not run yet")));
        }
        let agent = self
            .agents
            .values()
            .find(|a| a.record.name == s.node)
            .ok_or_else(|| Status::not_found(format!("node {} is unknown", s.node)))?;
        Ok((agent.record.logs_address.clone(), s.alloc_id))
    }

    fn job_view(&self, id: u64) -> Option<pb::Job> {
        let job = self.jobs.get(&id)?;
        let live = self.engine.gang(GangId(id));
        let reason = match &live {
            Some(g) if g.phase == GangPhase::Pending => g.reason.clone().unwrap_or_default(),
            _ => job.reason.clone(),
        };
        let state = match &live {
            Some(g) if g.phase == GangPhase::Pending => "pending",
            Some(_) => "running",
            None => job.state.as_str(),
        };
        Some(pb::Job {
            id,
            name: job.name.clone(),
            kind: job.kind.clone(),
            state: state.to_string(),
            attempts: live.as_ref().map_or(job.attempts, |g| g.attempts),
            priority: job.priority.clone(),
            queue: job.queue.clone(),
            reason,
            slots: job
                .slots
                .iter()
                .enumerate()
                .map(|(i, s)| pb::Slot {
                    index: i as u32,
                    node: s.node.clone(),
                    state: s.state.clone(),
                    alloc_id: s.alloc_id,
                    exit_code: s.exit_code,
                })
                .collect(),
            submitted_at_ms: job.submitted_at_ms,
        })
    }

    fn node_view(&self, id: u32) -> Option<pb::Node> {
        let agent = self.agents.get(&id)?;
        let view = self.engine.node_view(NodeId(id))?;
        let state = match view.state {
            NodeState::Ready => "ready",
            NodeState::Cordoned => "cordoned",
            NodeState::Draining => "draining",
            NodeState::Lost => "lost",
        };
        Some(pb::Node {
            id,
            name: agent.record.name.clone(),
            state: state.into(),
            capacity: Some(pb::Resources {
                cpu_millis: view.capacity.cpu_millis,
                memory_bytes: view.capacity.memory_bytes,
            }),
            allocated: Some(pb::Resources {
                cpu_millis: view.allocated.cpu_millis,
                memory_bytes: view.allocated.memory_bytes,
            }),
            slots: view.slots as u32,
            isolation: agent.record.isolation.clone(),
            labels: agent.record.labels.clone().into_iter().collect(),
        })
    }
}
