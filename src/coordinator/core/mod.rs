//! The coordinator core: jobs, agents and allocations around the scheduler
//! engine, in domain types only. It knows no wire protocol and reads no
//! clock of its own: front doors (gRPC today; Flight SQL and HTTP next)
//! call its methods through [`crate::coordinator::CoreHandle`], time comes
//! from a [`Clock`], and commands to agents go to an [`AgentSink`]. So the
//! whole control plane runs in-process under a fake clock in tests.
//!
//! Every public method is one *turn*: it changes state in memory, then
//! stores everything the turn changed in one transaction, and only then
//! sends its commands and events. A turn whose transaction fails sends
//! nothing, and the core refuses all further requests
//! ([`Core::failed`]): the process restarts from the store, which never
//! holds half a decision.
//!
//! - `jobs`: submit, cancel, job views, where a slot's logs are;
//! - `services`: rolling updates, scaling, health, ports, endpoints;
//! - `agents`: registration, reports, heartbeats, node maintenance;
//! - `decisions`: a scheduling pass and what its decisions become;
//! - `catalog`: the SQL catalog's table definitions (their meaning is
//!   DataFusion's business, in the Flight SQL front door and drivers).

mod agents;
pub mod auth;
mod catalog;
pub mod clock;
mod decisions;
pub mod error;
mod jobs;
pub mod model;
mod services;
pub mod sink;
pub mod stats;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use cohort_batch::{CacheDef, TableDef};
use cohort_scheduler::{AllocId, Config, Engine, Event, GangId, NodeId};
use tokio::sync::broadcast;

pub use clock::{Clock, FakeClock, SystemClock};
pub use error::CoordinatorError;
use error::Result;
use model::{AgentCommand, ClusterStatus, JobEvent, JobState};
pub use sink::{AgentSink, RecordingSink};
pub use stats::CoreStats;

use crate::coordinator::store::{AllocRecord, DeploymentState, JobRecord, NodeRecord, StateStore, Write};
use crate::spec::{JobSpec, parse_job};

/// How the core behaves.
#[derive(Clone, Debug)]
pub struct CoreSettings {
    /// An agent silent this long is lost and its work re-queued.
    pub heartbeat_timeout: Duration,
    /// How often agents are asked to report.
    pub heartbeat_interval: Duration,
    /// The scheduler's classes, queues and policy.
    pub engine: Config,
    /// The key executors' job tokens are derived from (kept in the data dir).
    pub token_secret: [u8; 32],
    /// The user each queue's command and service slots run as.
    pub run_as: BTreeMap<String, String>,
}

impl Default for CoreSettings {
    fn default() -> Self {
        CoreSettings {
            heartbeat_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(1),
            engine: Config::default(),
            token_secret: [0; 32],
            run_as: BTreeMap::new(),
        }
    }
}

/// A job: what was submitted, and what became of it.
struct Job {
    record: JobRecord,
    spec: JobSpec,
    /// A service's next version, while a rolling update runs.
    next: Option<JobSpec>,
}

impl Job {
    /// The engine gang running the job now.
    fn gang(&self) -> u64 {
        if self.record.gang == 0 { self.record.id } else { self.record.gang }
    }

    /// The gang of a rolling update in progress.
    fn next_gang(&self) -> Option<u64> {
        self.record.deployment.as_ref().filter(|d| d.state == DeploymentState::Rolling).map(|d| d.gang)
    }
}

struct Agent {
    record: NodeRecord,
    last_seen: u64,
    lost: bool,
}

/// What one turn changed, stored together and then announced.
#[derive(Default)]
struct Turn {
    jobs: BTreeSet<u64>,
    allocs: BTreeSet<u64>,
    nodes: BTreeSet<u32>,
    next_job: bool,
    catalog: bool,
    tokens: BTreeSet<String>,
    audit: Vec<auth::AuditEntry>,
    commands: Vec<(u32, AgentCommand)>,
    events: Vec<JobEvent>,
}

pub struct Core {
    engine: Engine,
    store: Box<dyn StateStore>,
    clock: Arc<dyn Clock>,
    sink: Box<dyn AgentSink>,
    settings: CoreSettings,
    jobs: BTreeMap<u64, Job>,
    /// The job each engine gang runs for.
    gang_job: BTreeMap<u64, u64>,
    allocs: BTreeMap<u64, AllocRecord>,
    agents: BTreeMap<u32, Agent>,
    /// Per node: where the search for free host ports goes on from.
    port_cursor: BTreeMap<u32, u32>,
    next_job: u64,
    /// The SQL catalog, in creation order.
    tables: Vec<TableDef>,
    /// The `CACHE TABLE`s in force, in the order they were cached.
    caches: Vec<CacheDef>,
    /// Issued tokens, by id.
    tokens: BTreeMap<String, auth::TokenRecord>,
    /// The newest audit entries.
    audit: std::collections::VecDeque<auth::AuditEntry>,
    endpoints: ClusterStatus,
    events: broadcast::Sender<JobEvent>,
    turn: Turn,
    failed: bool,
    stats: CoreStats,
}

impl Core {
    /// Rebuilds the core from the store: nodes as they were, unfinished jobs
    /// re-submitted, running slots adopted (until their agents re-register,
    /// their executors are presumed healthy).
    pub fn open(
        store: Box<dyn StateStore>,
        clock: Arc<dyn Clock>,
        sink: Box<dyn AgentSink>,
        settings: CoreSettings,
    ) -> Result<Core> {
        let snapshot = store.load()?;
        let mut engine = Engine::new(settings.engine.clone());
        let now = clock.now_ms();
        engine.apply(Event::TimeAdvanced { now }).map_err(internal)?;
        let mut agents = BTreeMap::new();
        for n in snapshot.nodes {
            let spec = agents::node_spec(&n);
            engine.apply(Event::NodeAdded { node: NodeId(n.id), spec }).map_err(internal)?;
            agents.insert(n.id, Agent { record: n, last_seen: now, lost: false });
        }
        let mut jobs = BTreeMap::new();
        let mut gang_job = BTreeMap::new();
        for record in snapshot.jobs {
            let id = record.id;
            let stored = |file: &str, text: &str| {
                parse_job(file, text).map_err(|e| CoordinatorError::Internal(format!("stored job {id}: {e}")))
            };
            let mut spec = stored(&record.file, &record.spec_toml)?;
            services::apply_scale(&mut spec, &record);
            let mut job = Job { spec, next: None, record };
            gang_job.insert(job.gang(), job.record.id);
            if !job.record.state.is_final() && job.record.state != JobState::Paused {
                let gang = GangId(job.gang());
                engine.apply(Event::GangSubmitted { gang, spec: job.spec.gang.clone() }).map_err(internal)?;
                let failures = job.record.history.iter().filter(|a| a.charged).count() as u32;
                engine.resume_failures(gang, failures);
                if let Some(d) = job.record.deployment.as_ref().filter(|d| d.state == DeploymentState::Rolling) {
                    let mut next = stored(&d.file, &d.spec_toml)?;
                    next.gang.max = d.instances;
                    engine
                        .apply(Event::GangSubmitted { gang: GangId(d.gang), spec: next.gang.clone() })
                        .map_err(internal)?;
                    gang_job.insert(d.gang, job.record.id);
                    job.next = Some(next);
                }
            }
            jobs.insert(job.record.id, job);
        }
        let mut core = Core {
            engine,
            store,
            clock,
            sink,
            settings,
            jobs,
            gang_job,
            allocs: BTreeMap::new(),
            port_cursor: BTreeMap::new(),
            agents,
            next_job: snapshot.next_job,
            tables: snapshot.tables,
            caches: snapshot.caches,
            tokens: snapshot.tokens.into_iter().map(|t| (t.id.clone(), t)).collect(),
            audit: snapshot.audit.into(),
            endpoints: ClusterStatus::default(),
            events: broadcast::channel(4096).0,
            turn: Turn::default(),
            failed: false,
            stats: CoreStats::default(),
        };
        core.engine.resume_alloc_ids(snapshot.next_alloc);
        core.turn(|core| {
            for a in snapshot.allocs {
                core.restore_alloc(a);
            }
            Ok(())
        })?;
        if !core.allocs.is_empty() {
            tracing::info!(
                allocations = core.allocs.len(),
                jobs = core.jobs.len(),
                "restored state; waiting for agents to re-register"
            );
        }
        Ok(core)
    }

    fn restore_alloc(&mut self, a: AllocRecord) {
        let node = self.agents.values().find(|ag| ag.record.name == a.node).map(|ag| ag.record.id);
        let gang = if a.gang == 0 { a.job } else { a.gang };
        let restored = node.map(|node| {
            self.engine.apply(Event::SlotRestored {
                alloc: AllocId(a.id),
                gang: GangId(gang),
                slot: a.slot,
                node: NodeId(node),
                started: a.started_ms,
            })
        });
        match restored {
            Some(Ok(())) => {
                self.allocs.insert(a.id, a);
            }
            other => {
                tracing::warn!(
                    alloc = a.id,
                    job = a.job,
                    ?other,
                    "dropping a stored allocation that cannot be restored"
                );
                self.turn.allocs.insert(a.id);
            }
        }
    }

    /// Whether a state store failure has stopped the core. It serves nothing
    /// more; its owner restarts it from the store.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Where the cluster's front doors are, for `status`.
    pub fn set_endpoints(&mut self, endpoints: ClusterStatus) {
        self.endpoints = endpoints;
    }

    pub fn status(&self) -> ClusterStatus {
        ClusterStatus { agents: self.agents.values().filter(|a| !a.lost).count() as u32, ..self.endpoints.clone() }
    }

    /// What the core has done since the process started.
    pub fn stats(&self) -> &CoreStats {
        &self.stats
    }

    /// Each queue's entitlement and use now.
    pub fn queues(&self) -> Vec<model::QueueUsage> {
        self.engine
            .queue_views()
            .into_iter()
            .map(|q| model::QueueUsage {
                name: q.name.to_string(),
                guarantee: q.guarantee,
                cap: q.cap,
                share: q.share,
                allocated: q.allocated,
                pending: q.pending as u32,
            })
            .collect()
    }

    /// Job events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.events.subscribe()
    }

    /// Moves time on: lost agents, slots past their grace period, retries
    /// whose backoff ended. The owner calls it every 100 ms or so.
    pub fn tick(&mut self) -> Result<()> {
        self.turn(|core| {
            let now = core.now();
            core.engine.apply(Event::TimeAdvanced { now }).map_err(internal)?;
            core.find_lost_agents()?;
            core.schedule()?;
            core.roll_deployments()
        })
    }

    /// The core's time, in ms since the epoch.
    pub fn now_ms(&self) -> i64 {
        self.now() as i64
    }

    fn now(&self) -> u64 {
        self.clock.now_ms().max(self.engine.now())
    }

    /// Runs `f` as one turn: its changes are stored in one transaction, then
    /// its commands and events go out. A failed transaction sends nothing.
    fn turn<T>(&mut self, f: impl FnOnce(&mut Core) -> Result<T>) -> Result<T> {
        if self.failed {
            return Err(CoordinatorError::Unavailable(
                "the coordinator is restarting after a state store failure; retry shortly".into(),
            ));
        }
        let result = f(self);
        let turn = std::mem::take(&mut self.turn);
        let mut writes = Vec::new();
        writes.extend(turn.jobs.iter().map(|id| Write::Job(Box::new(self.jobs[id].record.clone()))));
        writes.extend(turn.allocs.iter().map(|id| match self.allocs.get(id) {
            Some(a) => Write::Alloc(a.clone()),
            None => Write::DeleteAlloc(*id),
        }));
        writes.extend(turn.nodes.iter().map(|id| Write::Node(self.agents[id].record.clone())));
        if turn.next_job {
            writes.push(Write::NextJob(self.next_job));
        }
        if turn.catalog {
            writes.push(Write::Catalog(self.tables.clone()));
            writes.push(Write::Caches(self.caches.clone()));
        }
        writes.extend(turn.tokens.iter().map(|id| Write::Token(self.tokens[id].clone())));
        writes.extend(turn.audit.into_iter().map(Write::Audit));
        if let Err(e) = self.store.commit(&writes) {
            tracing::error!(error = %e, writes = writes.len(), "state store failed; the coordinator stops");
            self.failed = true;
            return Err(e.into());
        }
        for (node, command) in turn.commands {
            self.sink.send(node, command);
        }
        for event in turn.events {
            let _ = self.events.send(event);
        }
        result
    }

    /// Tells watchers what happened to a job (once the turn is stored).
    fn announce(&mut self, job: u64, what: String) {
        let state = self.job_state(job).unwrap_or(JobState::Pending);
        let at_ms = self.now() as i64;
        let queue = self.job_queue(job).unwrap_or_default().to_string();
        self.turn.events.push(JobEvent { job, queue, at_ms, state, what });
    }

    fn command(&mut self, node: u32, command: AgentCommand) {
        self.turn.commands.push((node, command));
    }

    fn node_name(&self, node: NodeId) -> String {
        self.engine.node_view(node).map_or_else(|| format!("node-{}", node.0), |n| n.name.to_string())
    }

    fn node_id_of(&self, name: &str) -> Option<u32> {
        self.agents.values().find(|a| a.record.name == name).map(|a| a.record.id)
    }

    /// The job an engine gang runs for.
    fn job_of(&self, gang: u64) -> Option<u64> {
        self.gang_job.get(&gang).copied()
    }
}

/// An engine refusal the core should have prevented: a bug.
fn internal(e: cohort_scheduler::EngineError) -> CoordinatorError {
    CoordinatorError::Internal(e.to_string())
}

#[cfg(test)]
mod scenarios;
