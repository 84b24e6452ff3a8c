//! The scheduling engine: a deterministic state machine.
//!
//! [`Engine::apply`] takes one [`Event`]; [`Engine::schedule`] runs a
//! scheduling pass and returns every [`Decision`] made since the last call.
//! [`Engine::handle`] does both. Nothing here reads a clock, does I/O or
//! iterates a hash map to decide anything, so the same events always produce
//! the same decisions.
//!
//! The modules split the work:
//! - `free_index`: ready nodes by free capacity, searchable by fit;
//! - `place`: where one gang's slots fit;
//! - `pass`: the order in which pending gangs are tried, backfill, growth;
//! - `reserve`: reservations that keep wide gangs from starving;
//! - `preempt`: choosing the cheapest victims for a blocked gang;
//! - `lifecycle`: slots ending, gangs torn down, re-queued, finished;
//! - `reason`: why a gang is pending, in words.

mod filters;
mod free_index;
mod lifecycle;
mod pass;
mod place;
mod preempt;
mod reason;
mod releases;
mod reserve;
mod topology;

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::FxHashMap;

use crate::event::{Decision, Event};
use crate::model::{AllocId, Config, GangId, GangSpec, NodeId, NodeSpec, NodeState, Ordering, Time};
use crate::resources::Resources;

pub use reason::PendingReason;

use filters::Filters;
use topology::{PairId, Topology};

/// Why an event was refused. A refused event changes nothing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    #[error("{0} is already registered")]
    NodeExists(NodeId),
    #[error("node name `{0}` is already used by another node")]
    NodeNameTaken(String),
    #[error("{0} is not a known node")]
    UnknownNode(NodeId),
    #[error("{0} was already submitted")]
    GangExists(GangId),
    #[error("{0} is not a known gang")]
    UnknownGang(GangId),
    #[error("{0} is not a live allocation")]
    UnknownAlloc(AllocId),
    #[error("unknown priority class `{0}` (known: {1})")]
    UnknownClass(String, String),
    #[error("unknown queue `{0}`")]
    UnknownQueue(String),
    #[error("invalid gang `{name}`: {why}")]
    InvalidGang { name: String, why: String },
    #[error("cannot restore {alloc}: {why}")]
    Restore { alloc: AllocId, why: String },
    #[error("time cannot go back from {now} to {to}")]
    TimeWentBack { now: Time, to: Time },
}

/// A gang's state as a caller sees it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GangPhase {
    Pending,
    Running,
}

/// A read-only view of a gang.
#[derive(Clone, Debug)]
pub struct GangView<'a> {
    pub id: GangId,
    pub spec: &'a GangSpec,
    pub phase: GangPhase,
    pub running: u32,
    pub completed: u32,
    pub attempts: u32,
    pub failures: u32,
    /// Set while pending.
    pub reason: Option<String>,
    /// Set while pending: the reason's kind, a stable label for metrics.
    pub reason_kind: Option<&'static str>,
}

/// A read-only view of a queue: its shares of the cluster (0..1).
#[derive(Clone, Debug)]
pub struct QueueView<'a> {
    pub name: &'a str,
    pub guarantee: f64,
    pub cap: f64,
    pub allocated: Resources,
    /// Its dominant share of the cluster now.
    pub share: f64,
    /// Its gangs waiting: in the pending order, or parked as unschedulable.
    pub pending: usize,
}

/// A read-only view of a node.
#[derive(Clone, Debug)]
pub struct NodeView<'a> {
    pub id: NodeId,
    pub name: &'a str,
    pub state: NodeState,
    pub capacity: Resources,
    pub allocated: Resources,
    pub reserved: Resources,
    pub slots: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum SlotState {
    Todo,
    Running(AllocId),
    Done,
}

#[derive(Debug)]
pub(crate) struct Gang {
    pub id: GangId,
    pub spec: GangSpec,
    pub rank: usize,
    pub queue: usize,
    /// Arrival order; kept across re-queues so a victim returns to its place.
    pub seq: u64,
    /// Its constraints, compiled.
    pub filters: Filters,
    /// Gangs with equal signatures fit in exactly the same places (size and
    /// filters; not scoring, not runtime).
    pub signature: u64,
    pub phase: GangPhase,
    pub slots: Vec<SlotState>,
    /// Todo slot indices, highest first so `pop` yields the lowest.
    pub todo: Vec<u32>,
    /// Per slot: not placed again before this time (a restart's backoff).
    pub ready_at: Vec<Time>,
    /// Per slot: restarts in a row, for the backoff (`Restart::Always`).
    pub restarts: Vec<u32>,
    pub running: u32,
    pub done: u32,
    pub attempts: u32,
    pub failures: u32,
    pub submitted_at: Time,
    pub eligible_at: Time,
    pub group: Option<u32>,
    pub locality: Vec<(NodeId, u32)>,
    /// Expected slot runtime: the spec's estimate, or a prediction below it.
    pub estimate: Option<Time>,
    pub blocker: PendingReason,
    /// Gangs this one was evicted for: it may never evict them back.
    pub preempted_by: Vec<GangId>,
    /// While running under a `within` constraint: the label pair its slots share.
    pub domain: Option<PairId>,
    /// Listed in `Engine::growable`.
    pub growable: bool,
    /// Cannot fit the cluster as it is: out of the pending order until the
    /// cluster changes (listed in `Engine::parked`).
    pub parked: bool,
}

impl Gang {
    pub fn allocated(&self) -> Resources {
        self.spec.slot.times(self.running)
    }
    /// Slots still to place before the gang runs: `min`, or fewer when less work is left.
    pub fn start_need(&self) -> u32 {
        self.spec.min.min(self.todo.len() as u32).max(1)
    }
    pub fn rigid(&self) -> bool {
        self.spec.min == self.spec.max
    }
    /// To-do slots that may be placed at `now` (not in a restart backoff).
    pub fn ready_todo(&self, now: Time) -> u32 {
        self.todo.iter().filter(|&&s| self.ready_at[s as usize] <= now).count() as u32
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Alloc {
    pub gang: GangId,
    pub slot: u32,
    pub node: NodeId,
    pub res: Resources,
    pub started: Time,
    /// When it is expected to end: start + (predicted) estimate, the grace deadline once stopping, or never.
    pub expected_end: Option<Time>,
    /// When it must end at the latest by its gang's own estimate (a walltime).
    pub limit_end: Option<Time>,
    pub stopping: bool,
    pub exclusive: bool,
    pub group: Option<u32>,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub name: String,
    /// Its labels, interned and sorted.
    pub label_ids: Vec<PairId>,
    /// Per label: the entry under which that label's index (if tracked) holds it.
    pub label_entries: Vec<Option<free_index::IndexKey>>,
    /// Per label: listed in the label's stale list, awaiting a catch-up.
    pub label_stale: Vec<bool>,
    pub capacity: Resources,
    pub state: NodeState,
    pub allocated: Resources,
    /// Sum of the reservations held on this node.
    pub reserved: Resources,
    pub allocs: Vec<AllocId>,
    pub exclusive_allocs: u32,
    /// (anti-affinity group, slots on this node)
    pub groups: Vec<(u32, u32)>,
    /// (expected end, alloc) of its slots that have one; read by reservation planning.
    pub releases: releases::Releases,
    /// The key under which the node sits in the free index, if it is in it.
    pub index_key: Option<(u64, u64, u64)>,
    /// Its free capacity changed since the index last saw it.
    pub index_stale: bool,
}

impl Node {
    pub fn free(&self) -> Resources {
        self.capacity.saturating_sub(&self.allocated)
    }
}

#[derive(Debug)]
pub(crate) struct QueueState {
    pub name: String,
    pub guarantee: f64,
    pub cap: f64,
    pub allocated: Resources,
    /// Run time over estimate of the queue's last two successful slots, for predictions.
    pub recent_accuracy: [Option<f64>; 2],
    /// Its pending gangs' predictions are out of date.
    pub predictions_stale: bool,
    pub predictions_refreshed_at: Time,
    /// Its pending gangs, by (seq, id).
    pub pending: BTreeSet<(u64, GangId)>,
    /// Quota promised to this queue's preemptors while their victims stop.
    pub promised: Resources,
}

impl Reservation {
    pub fn total(&self) -> Resources {
        self.nodes.iter().fold(Resources::ZERO, |acc, (_, r)| acc + *r)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Reservation {
    pub start: Time,
    pub nodes: Vec<(NodeId, Resources)>,
    /// Made by preemption: the room victims are freeing. Kept across passes.
    pub nomination: bool,
    /// Held for an exclusive gang: nobody else may use its nodes at all.
    pub exclusive: bool,
    /// Creation order: a holder yields only to reservations made before its own,
    /// since every later one was planned around it.
    pub order: u64,
}

/// The scheduler core. See the module documentation.
pub struct Engine {
    pub(crate) config: Config,
    pub(crate) class_rank: FxHashMap<String, usize>,
    pub(crate) queues: Vec<QueueState>,
    pub(crate) queue_index: FxHashMap<String, usize>,
    pub(crate) nodes: Vec<Option<Node>>,
    pub(crate) node_names: FxHashMap<String, NodeId>,
    /// Ready nodes by (size class, free cpu, free memory, id). The size class
    /// is the node's cpu capacity when small nodes are preferred, else 0.
    pub(crate) free_index: free_index::FreeIndex,
    /// Nodes whose index entry is out of date (see `reindex_later`).
    pub(crate) stale_nodes: Vec<NodeId>,
    /// Capacity of all nodes that are not lost.
    pub(crate) total: Resources,
    /// Cpu of the largest node ever registered.
    pub(crate) largest_node_cpu: u64,
    /// Bumped whenever the ready nodes change (added, updated, lost,
    /// cordoned, drained, back), to invalidate feasibility verdicts.
    pub(crate) topology_version: u64,
    pub(crate) topology: Topology,
    /// Gangs that cannot fit the cluster as it is, by (seq, id), and the
    /// topology they were judged on: tried again only once it changes.
    pub(crate) parked: BTreeSet<(u64, GangId)>,
    pub(crate) parked_at_version: u64,
    /// Buffers for searches and passes, reused.
    pub(crate) search: place::Search,
    pub(crate) pass: pass::PassState,
    pub(crate) feasible_cache: FxHashMap<u64, (u64, Option<String>)>,
    pub(crate) gangs: IdMap<GangId, Gang>,
    pub(crate) allocs: IdMap<AllocId, Alloc>,
    pub(crate) next_alloc: u64,
    /// Pending gangs by (rank, queue, runtime if shortest-first, seq); under
    /// FIFO ordering only seq counts.
    pub(crate) pending: BTreeSet<PendingKey>,
    /// Pending gangs by (submitted, seq, id): the oldest are found without a scan.
    pub(crate) pending_by_age: BTreeSet<(Time, u64, GangId)>,
    /// Running gangs that have work left and room under `max`.
    pub(crate) growable: BTreeSet<(usize, u64, GangId)>,
    pub(crate) reservations: BTreeMap<GangId, Reservation>,
    pub(crate) next_reservation: u64,
    /// Stopping allocations by grace deadline.
    pub(crate) terminating: BTreeSet<(Time, AllocId)>,
    pub(crate) groups: FxHashMap<String, u32>,
    /// Running slots per priority rank that are preemptible.
    pub(crate) preemptible_running: Vec<u64>,
    pub(crate) now: Time,
    pub(crate) seq: u64,
    /// Run times of every slot that succeeded, summed, and how many: the
    /// workload's own time scale, which reservation bounds follow.
    pub(crate) finished_runtime_ms: u128,
    pub(crate) finished_slots: u64,
    pub(crate) out: Vec<Decision>,
}

impl Engine {
    pub fn new(mut config: Config) -> Engine {
        // Rank 0 is the most important class.
        config.classes.sort_by(|a, b| b.value.cmp(&a.value).then_with(|| a.name.cmp(&b.name)));
        let class_rank = config.classes.iter().enumerate().map(|(i, c)| (c.name.clone(), i)).collect();
        let mut engine = Engine {
            preemptible_running: vec![0; config.classes.len()],
            config,
            class_rank,
            queues: Vec::new(),
            queue_index: FxHashMap::default(),
            nodes: Vec::new(),
            node_names: FxHashMap::default(),
            free_index: free_index::FreeIndex::default(),
            stale_nodes: Vec::new(),
            total: Resources::ZERO,
            largest_node_cpu: 0,
            topology_version: 0,
            topology: Topology::default(),
            parked: BTreeSet::new(),
            parked_at_version: 0,
            search: place::Search::default(),
            pass: pass::PassState::default(),
            feasible_cache: FxHashMap::default(),
            gangs: IdMap::default(),
            allocs: IdMap::default(),
            next_alloc: 1,
            pending: BTreeSet::new(),
            pending_by_age: BTreeSet::new(),
            growable: BTreeSet::new(),
            reservations: BTreeMap::new(),
            next_reservation: 0,
            terminating: BTreeSet::new(),
            groups: FxHashMap::default(),
            now: 0,
            seq: 0,
            finished_runtime_ms: 0,
            finished_slots: 0,
            out: Vec::new(),
        };
        for q in engine.config.queues.clone() {
            engine.add_queue(&q.name, q.guarantee, q.cap);
        }
        engine
    }

    fn add_queue(&mut self, name: &str, guarantee: f64, cap: f64) -> usize {
        let idx = self.queues.len();
        self.queues.push(QueueState {
            name: name.to_string(),
            guarantee,
            cap,
            allocated: Resources::ZERO,
            recent_accuracy: [None; 2],
            predictions_stale: false,
            predictions_refreshed_at: 0,
            pending: BTreeSet::new(),
            promised: Resources::ZERO,
        });
        self.queue_index.insert(name.to_string(), idx);
        idx
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn now(&self) -> Time {
        self.now
    }

    /// Applies an event and runs a scheduling pass.
    pub fn handle(&mut self, event: Event) -> Result<Vec<Decision>, EngineError> {
        self.apply(event)?;
        Ok(self.schedule())
    }

    /// Applies one event. Decisions it causes at once (stops after a node
    /// loss, a cancel) are kept for the next [`Engine::schedule`]. A refused
    /// event leaves the engine unchanged.
    pub fn apply(&mut self, event: Event) -> Result<(), EngineError> {
        match event {
            Event::NodeAdded { node, spec } => self.add_node(node, spec),
            Event::NodeUpdated { node, spec } => self.update_node(node, spec),
            Event::NodeCordoned { node } => self.set_node_state(node, NodeState::Cordoned),
            Event::NodeUncordoned { node } => self.set_node_state(node, NodeState::Ready),
            Event::NodeDrained { node } => self.set_node_state(node, NodeState::Draining),
            Event::NodeLost { node } => self.lose_node(node),
            Event::GangSubmitted { gang, spec } => self.submit(gang, spec),
            Event::GangCancelled { gang } => self.cancel(gang),
            Event::SlotFinished { alloc, outcome } => self.slot_finished(alloc, outcome),
            Event::TimeAdvanced { now } => self.advance(now),
            Event::SlotRestored { alloc, gang, slot, node, started } => self.restore(alloc, gang, slot, node, started),
            Event::GangResized { gang, max } => self.resize(gang, max),
            Event::GangLocated { gang, locality } => self.locate(gang, locality),
        }
    }

    fn advance(&mut self, to: Time) -> Result<(), EngineError> {
        if to < self.now {
            return Err(EngineError::TimeWentBack { now: self.now, to });
        }
        self.now = to;
        // Victims past their grace deadline have been SIGKILLed: their room is free.
        while let Some(&(deadline, alloc)) = self.terminating.first() {
            if deadline > to {
                break;
            }
            self.terminating.pop_first();
            self.release_alloc(alloc);
        }
        Ok(())
    }

    fn node_mut(&mut self, id: NodeId) -> Result<&mut Node, EngineError> {
        self.nodes.get_mut(id.0 as usize).and_then(|n| n.as_mut()).ok_or(EngineError::UnknownNode(id))
    }

    pub(crate) fn node(&self, id: NodeId) -> &Node {
        self.nodes[id.0 as usize].as_ref().expect("node ids in engine state are valid")
    }

    fn add_node(&mut self, id: NodeId, spec: NodeSpec) -> Result<(), EngineError> {
        if let Some(&other) = self.node_names.get(&spec.name)
            && other != id
        {
            return Err(EngineError::NodeNameTaken(spec.name));
        }
        let slot = id.0 as usize;
        if self.nodes.len() <= slot {
            self.nodes.resize_with(slot + 1, || None);
        }
        if let Some(existing) = &self.nodes[slot]
            && existing.state != NodeState::Lost
        {
            return Err(EngineError::NodeExists(id));
        }
        self.node_names.insert(spec.name.clone(), id);
        self.total += spec.capacity;
        self.largest_node_cpu = self.largest_node_cpu.max(spec.capacity.cpu_millis);
        let label_ids = self.topology.intern_labels(&spec.labels);
        self.nodes[slot] = Some(Node {
            name: spec.name,
            label_entries: vec![None; label_ids.len()],
            label_stale: vec![false; label_ids.len()],
            label_ids,
            capacity: spec.capacity,
            state: NodeState::Ready,
            allocated: Resources::ZERO,
            reserved: Resources::ZERO,
            allocs: Vec::new(),
            exclusive_allocs: 0,
            groups: Vec::new(),
            releases: releases::Releases::default(),
            index_key: None,
            index_stale: false,
        });
        self.reindex(id);
        self.topology_version += 1;
        Ok(())
    }

    fn update_node(&mut self, id: NodeId, spec: NodeSpec) -> Result<(), EngineError> {
        if let Some(&other) = self.node_names.get(&spec.name)
            && other != id
        {
            return Err(EngineError::NodeNameTaken(spec.name));
        }
        if self.node_mut(id)?.state == NodeState::Lost {
            return Err(EngineError::UnknownNode(id));
        }
        // Out of every index under its old shape; back in under the new one.
        self.unindex(id);
        let label_ids = self.topology.intern_labels(&spec.labels);
        let node = self.node_mut(id)?;
        let old_cap = node.capacity;
        let old_name = std::mem::replace(&mut node.name, spec.name.clone());
        node.capacity = spec.capacity;
        node.label_entries = vec![None; label_ids.len()];
        node.label_stale = vec![false; label_ids.len()];
        node.label_ids = label_ids;
        self.total = self.total - old_cap + spec.capacity;
        self.node_names.remove(&old_name);
        self.node_names.insert(spec.name, id);
        self.reindex(id);
        self.topology_version += 1;
        Ok(())
    }

    fn set_node_state(&mut self, id: NodeId, state: NodeState) -> Result<(), EngineError> {
        let node = self.node_mut(id)?;
        if node.state == NodeState::Lost {
            return Err(EngineError::UnknownNode(id));
        }
        node.state = state;
        self.reindex(id);
        self.topology_version += 1;
        if state == NodeState::Draining {
            self.drain(id);
        }
        Ok(())
    }

    fn submit(&mut self, id: GangId, spec: GangSpec) -> Result<(), EngineError> {
        if self.gangs.contains_key(&id) {
            return Err(EngineError::GangExists(id));
        }
        validate_gang(&spec)?;
        let rank = *self.class_rank.get(&spec.priority).ok_or_else(|| {
            let known: Vec<&str> = self.config.classes.iter().map(|c| c.name.as_str()).collect();
            EngineError::UnknownClass(spec.priority.clone(), known.join(", "))
        })?;
        let queue = match self.queue_index.get(&spec.queue) {
            Some(&q) => q,
            None => match self.config.auto_queue.clone() {
                Some(t) => self.add_queue(&spec.queue, t.guarantee, t.cap),
                None => return Err(EngineError::UnknownQueue(spec.queue.clone())),
            },
        };
        let group = spec.constraints.anti_affinity.as_ref().map(|g| {
            let next = self.groups.len() as u32;
            *self.groups.entry(g.clone()).or_insert(next)
        });
        let locality = self.resolve_locality(&spec.locality);
        let completions = spec.total_completions();
        let estimate = self.predict(queue, spec.estimated_runtime);
        let filters = Filters::compile(&spec.constraints, group, &mut self.topology);
        self.track(&filters);
        self.seq += 1;
        let gang = Gang {
            id,
            signature: signature(&spec, &filters),
            filters,
            estimate,
            rank,
            queue,
            seq: self.seq,
            phase: GangPhase::Pending,
            slots: vec![SlotState::Todo; completions as usize],
            todo: (0..completions).rev().collect(),
            ready_at: vec![0; completions as usize],
            restarts: vec![0; completions as usize],
            running: 0,
            done: 0,
            attempts: 0,
            failures: 0,
            submitted_at: self.now,
            eligible_at: self.now,
            group,
            locality,
            blocker: PendingReason::NotYetTried,
            preempted_by: Vec::new(),
            domain: None,
            growable: false,
            parked: false,
            spec,
        };
        self.gangs.insert(id, gang);
        self.add_pending(id);
        Ok(())
    }

    /// Makes sure the indexes a gang's filters search exist: the free index
    /// of each label it selects on, and under `within`, the domains of its
    /// key with the index of each. New indexes are filled in one scan.
    fn track(&mut self, filters: &Filters) {
        let mut new_pairs: Vec<PairId> =
            filters.label_pairs().iter().copied().filter(|&p| !self.topology.tracks(p)).collect();
        let new_key = filters.within.filter(|&k| self.topology.domains_of(k).is_none());
        if new_pairs.is_empty() && new_key.is_none() {
            return;
        }
        let mut domains = BTreeMap::new();
        for n in self.nodes.iter().flatten() {
            for &p in &n.label_ids {
                if Some(self.topology.key_of(p)) == new_key {
                    if !self.topology.tracks(p) {
                        new_pairs.push(p);
                    }
                    if n.index_key.is_some() {
                        domains.entry(self.topology.value_of(p).to_string()).or_insert((p, 0)).1 += 1;
                    }
                }
            }
        }
        new_pairs.sort_unstable();
        new_pairs.dedup();
        for &p in &new_pairs {
            self.topology.label_index[p as usize] = Some(free_index::FreeIndex::default());
        }
        for (i, n) in self.nodes.iter_mut().enumerate() {
            let Some(n) = n else { continue };
            for (j, p) in n.label_ids.iter().enumerate() {
                if new_pairs.binary_search(p).is_ok() {
                    // Filed as it is now; any pending change of it is caught up later.
                    let entry = n.index_key.map(|(s, c, m)| (s, c, m, i as u32));
                    if let Some(entry) = entry {
                        self.topology.label_index[*p as usize].as_mut().expect("created above").insert(entry);
                    }
                    n.label_entries[j] = entry;
                }
            }
        }
        if let Some(key) = new_key {
            self.topology.domains[key as usize] = Some(domains);
        }
    }

    pub(crate) fn add_pending(&mut self, id: GangId) {
        let g = &self.gangs[&id];
        let (key, age, queue) = (self.pending_key(g), (g.submitted_at, g.seq, id), g.queue);
        self.pending.insert(key);
        self.pending_by_age.insert(age);
        self.queues[queue].pending.insert((age.1, id));
    }

    pub(crate) fn remove_pending(&mut self, id: GangId) {
        let g = &self.gangs[&id];
        if g.parked {
            let key = (g.seq, id);
            self.gangs.get_mut(&id).expect("live gang").parked = false;
            self.parked.remove(&key);
            return;
        }
        let (key, age, queue) = (self.pending_key(g), (g.submitted_at, g.seq, id), g.queue);
        self.pending.remove(&key);
        self.pending_by_age.remove(&age);
        self.queues[queue].pending.remove(&(age.1, id));
    }

    pub(crate) fn pending_key(&self, g: &Gang) -> PendingKey {
        let policy = &self.config.policy;
        let runtime = if policy.shortest_first { g.estimate.unwrap_or(Time::MAX) } else { 0 };
        match policy.ordering {
            Ordering::Fifo => (0, 0, runtime, g.seq, g.id),
            Ordering::PriorityFair => (g.rank, g.queue, runtime, g.seq, g.id),
        }
    }

    /// Re-predicts the pending gangs of queues whose history changed, so a
    /// burst of jobs submitted together learns from the first to finish.
    /// At most once a minute of virtual time per queue, to bound the work.
    pub(crate) fn refresh_predictions(&mut self) {
        const EVERY: Time = 60_000;
        for q in 0..self.queues.len() {
            let queue = &self.queues[q];
            if !queue.predictions_stale || self.now < queue.predictions_refreshed_at + EVERY {
                continue;
            }
            let ids: Vec<GangId> = queue.pending.iter().map(|&(_, id)| id).collect();
            for id in ids {
                let g = &self.gangs[&id];
                let estimate = self.predict(q, g.spec.estimated_runtime);
                if estimate == g.estimate {
                    continue;
                }
                let old = self.pending_key(g);
                self.pending.remove(&old);
                let g = self.gangs.get_mut(&id).expect("pending gang is live");
                g.estimate = estimate;
                let key = self.pending_key(&self.gangs[&id]);
                self.pending.insert(key);
            }
            let queue = &mut self.queues[q];
            queue.predictions_stale = false;
            queue.predictions_refreshed_at = self.now;
        }
    }

    /// The runtime to plan with: the estimate, scaled by how much of their
    /// own estimates the queue's last two finished slots used when the
    /// policy predicts (Tsafrir, Etsion & Feitelson 2007, applied to the
    /// accuracy rather than the runtime, so that a log whose estimates are
    /// exact keeps them and one whose users ask for ten times too much
    /// plans with a tenth).
    fn predict(&self, queue: usize, estimate: Option<Time>) -> Option<Time> {
        let limit = estimate?;
        if !self.config.policy.predict_runtimes {
            return Some(limit);
        }
        let recent = self.queues[queue].recent_accuracy;
        let (sum, n) = recent.iter().flatten().fold((0.0, 0), |(s, n), a| (s + a, n + 1));
        if n == 0 {
            return Some(limit);
        }
        let predicted = (limit as f64 * sum / n as f64) as Time;
        Some(predicted.clamp(1000.min(limit), limit))
    }

    /// When an allocation is expected to end, as planning sees it now: its
    /// predicted end, its limit once it outlives the prediction, or "now"
    /// once it outlives that too.
    pub(crate) fn expected_end(&self, a: &Alloc) -> Option<Time> {
        match a.expected_end {
            Some(e) if a.stopping || e >= self.now => Some(e),
            Some(e) => Some(a.limit_end.unwrap_or(e).max(self.now)),
            None => None,
        }
    }

    /// The domains in which a gang may be placed: each value of its
    /// `within` key with ready nodes (its own while it runs), or one
    /// unrestricted domain (`None`).
    pub(crate) fn domain_list(&self, g: &Gang) -> Vec<Option<PairId>> {
        let Some(key) = g.filters.within else { return vec![None] };
        if let Some(pair) = g.domain {
            return vec![Some(pair)];
        }
        self.topology.domains_of(key).map_or_else(Vec::new, |d| d.values().map(|&(p, _)| Some(p)).collect())
    }

    pub(crate) fn emit(&mut self, d: Decision) {
        self.out.push(d);
    }

    // ----- read-only views -----

    pub fn gang(&self, id: GangId) -> Option<GangView<'_>> {
        self.gangs.get(&id).map(|g| GangView {
            id,
            spec: &g.spec,
            phase: g.phase,
            running: g.running,
            completed: g.done,
            attempts: g.attempts,
            failures: g.failures,
            reason: (g.phase == GangPhase::Pending).then(|| self.describe(g)),
            reason_kind: (g.phase == GangPhase::Pending).then(|| g.blocker.kind()),
        })
    }

    /// Live gangs in submission order.
    pub fn gang_ids(&self) -> Vec<GangId> {
        let mut ids: Vec<(u64, GangId)> = self.gangs.values().map(|g| (g.seq, g.id)).collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// Gangs waiting: in the pending order, or parked as unschedulable.
    pub fn pending_count(&self) -> usize {
        self.pending.len() + self.parked.len()
    }

    pub fn node_view(&self, id: NodeId) -> Option<NodeView<'_>> {
        let n = self.nodes.get(id.0 as usize)?.as_ref()?;
        Some(NodeView {
            id,
            name: &n.name,
            state: n.state,
            capacity: n.capacity,
            allocated: n.allocated,
            reserved: n.reserved,
            slots: n.allocs.len(),
        })
    }

    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.iter().enumerate().filter(|(_, n)| n.is_some()).map(|(i, _)| NodeId(i as u32))
    }

    pub fn node_id(&self, name: &str) -> Option<NodeId> {
        self.node_names.get(name).copied()
    }

    /// After a restart: ids below `next` were issued before, also to
    /// allocations that have ended since, and are never issued again (an
    /// agent's logs and directories are named by them).
    pub fn resume_alloc_ids(&mut self, next: u64) {
        self.next_alloc = self.next_alloc.max(next);
    }

    /// After a restart: the attempts gang `gang` already used up on
    /// failures (its job's history says), which it is not given again.
    pub fn resume_failures(&mut self, gang: GangId, failures: u32) {
        if let Some(g) = self.gangs.get_mut(&gang) {
            g.failures = failures;
        }
    }

    /// The id the next allocation gets.
    pub fn next_alloc_id(&self) -> u64 {
        self.next_alloc
    }

    /// The node a live allocation (running or stopping) is on.
    pub fn alloc_node(&self, alloc: AllocId) -> Option<NodeId> {
        self.allocs.get(&alloc).map(|a| a.node)
    }

    /// Capacity of all nodes that are not lost.
    pub fn capacity(&self) -> Resources {
        self.total
    }

    /// Resources held by slots (running or stopping) on nodes that are not lost.
    pub fn allocated(&self) -> Resources {
        let mut sum = Resources::ZERO;
        for n in self.nodes.iter().flatten() {
            if n.state != NodeState::Lost {
                sum += n.allocated;
            }
        }
        sum
    }

    /// The priority rank of a class name (0 = most important).
    pub fn class_rank(&self, name: &str) -> Option<usize> {
        self.class_rank.get(name).copied()
    }

    /// Each queue's entitlement and use, in queue order.
    pub fn queue_views(&self) -> Vec<QueueView<'_>> {
        let mut parked = vec![0; self.queues.len()];
        for g in self.parked.iter().filter_map(|(_, id)| self.gangs.get(id)) {
            parked[g.queue] += 1;
        }
        self.queues
            .iter()
            .zip(parked)
            .map(|(q, parked)| QueueView {
                name: &q.name,
                guarantee: q.guarantee,
                cap: q.cap,
                allocated: q.allocated,
                share: q.allocated.dominant_share(&self.total),
                pending: q.pending.len() + parked,
            })
            .collect()
    }

    /// Allocated share of each queue, in queue order, for reports.
    pub fn queue_shares(&self) -> Vec<(String, f64)> {
        self.queues.iter().map(|q| (q.name.clone(), q.allocated.dominant_share(&self.total))).collect()
    }

    /// A dump of nodes, slots and reservations, for debugging a failed property.
    pub fn dump(&self) -> String {
        let mut out = format!("now={}\n", self.now);
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(n) = n else { continue };
            out += &format!("node {i} {:?} alloc={} reserved={}\n", n.state, n.allocated, n.reserved);
            for a in &n.allocs {
                let al = &self.allocs[a];
                out += &format!(
                    "  {a} {} slot {} {} stopping={} end={:?}\n",
                    al.gang, al.slot, al.res, al.stopping, al.expected_end
                );
            }
        }
        for (g, r) in &self.reservations {
            out += &format!("reservation {g} start={} nomination={} nodes={:?}\n", r.start, r.nomination, r.nodes);
        }
        out
    }

    /// Checks the engine's accounting. Used by property tests and the simulator's debug mode.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(n) = n else { continue };
            let mut sum = Resources::ZERO;
            for a in &n.allocs {
                let alloc = self.allocs.get(a).ok_or_else(|| format!("node {i} lists dead {a}"))?;
                sum += alloc.res;
            }
            if sum != n.allocated {
                return Err(format!("node {i}: allocated {} but slots hold {}", n.allocated, sum));
            }
            let mut expected: Vec<(Time, AllocId)> =
                n.allocs.iter().filter_map(|a| self.allocs[a].expected_end.map(|e| (e, *a))).collect();
            expected.sort_unstable();
            let listed: Vec<(Time, AllocId)> = n.releases.iter().copied().collect();
            if expected != listed {
                return Err(format!("node {i}: release list {listed:?} but slots end at {expected:?}"));
            }
            let free = n.free();
            let indexed = n.index_key.map(|(_, cpu, mem)| (cpu, mem));
            let expected = (n.state == NodeState::Ready).then_some((free.cpu_millis, free.memory_bytes));
            if !n.index_stale && indexed != expected {
                return Err(format!("node {i}: indexed as {indexed:?} but has {expected:?} free"));
            }
            if !n.allocated.fits_in(&n.capacity) {
                return Err(format!("node {i} over-committed: {} on {}", n.allocated, n.capacity));
            }
        }
        self.check_constraints()?;
        self.check_label_indexes()?;
        for g in self.gangs.values() {
            let running = g.slots.iter().filter(|s| matches!(s, SlotState::Running(_))).count() as u32;
            if running != g.running {
                return Err(format!("{} counts {} running slots but has {}", g.id, g.running, running));
            }
            if g.phase == GangPhase::Pending && running > 0 {
                return Err(format!("{} is pending with {} running slots", g.id, running));
            }
        }
        for (qi, q) in self.queues.iter().enumerate() {
            let mut sum = Resources::ZERO;
            for g in self.gangs.values().filter(|g| g.queue == qi) {
                sum += g.allocated();
            }
            if sum != q.allocated {
                return Err(format!("queue {} accounts {} but its gangs hold {}", q.name, q.allocated, sum));
            }
        }
        Ok(())
    }
}

impl Engine {
    /// Each tracked label index holds exactly the entries its nodes were
    /// last filed under, and a node not awaiting a catch-up is filed under
    /// its current free-index entry.
    fn check_label_indexes(&self) -> Result<(), String> {
        for (pair, index) in self.topology.label_index.iter().enumerate() {
            let Some(index) = index else { continue };
            let pair = pair as PairId;
            let mut expected: Vec<free_index::IndexKey> = Vec::new();
            for (i, n) in self.nodes.iter().enumerate() {
                let Some(n) = n else { continue };
                let Ok(j) = n.label_ids.binary_search(&pair) else { continue };
                expected.extend(n.label_entries[j]);
                let current = n.index_key.map(|(s, c, m)| (s, c, m, i as u32));
                if !n.label_stale[j] && !n.index_stale && n.label_entries[j] != current {
                    return Err(format!("node {i}: label {} missed a change", self.topology.pair_name(pair)));
                }
            }
            expected.sort_unstable();
            let indexed: Vec<free_index::IndexKey> = index.iter().copied().collect();
            if indexed != expected {
                return Err(format!("label index {} holds entries its nodes do not", self.topology.pair_name(pair)));
            }
        }
        Ok(())
    }

    /// Every running slot honours its gang's filters: labels, one per node,
    /// anti-affinity, exclusive nodes, one domain per gang.
    fn check_constraints(&self) -> Result<(), String> {
        use filters::Filter;
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(n) = n else { continue };
            let mut seen: Vec<(GangId, Option<u32>)> = Vec::new();
            for a in &n.allocs {
                let alloc = &self.allocs[a];
                if alloc.stopping {
                    continue;
                }
                let Some(g) = self.gangs.get(&alloc.gang) else { continue };
                for f in &g.filters.list {
                    let ok = match f {
                        Filter::Labels(want) => want.iter().all(|p| n.label_ids.binary_search(p).is_ok()),
                        Filter::OnePerNode => !seen.iter().any(|(s, _)| *s == g.id),
                        Filter::AntiAffinity(group) => !seen.iter().any(|(_, gr)| *gr == Some(*group)),
                        Filter::Exclusive => {
                            n.allocs.iter().all(|b| self.allocs[b].gang == g.id || self.allocs[b].stopping)
                        }
                    };
                    if !ok {
                        return Err(format!("node {i}: {} breaks {f:?}", alloc.gang));
                    }
                }
                seen.push((g.id, g.group));
            }
        }
        for g in self.gangs.values() {
            let Some(key) = g.filters.within else { continue };
            let mut domain = None;
            for s in &g.slots {
                let SlotState::Running(a) = s else { continue };
                let n = self.node(self.allocs[a].node);
                let value = n.label_ids.iter().find(|&&p| self.topology.key_of(p) == key).copied();
                if value.is_none() || domain.is_some_and(|d| Some(d) != value) {
                    return Err(format!("{} runs outside one domain", g.id));
                }
                domain = value;
            }
        }
        Ok(())
    }
}

fn validate_gang(spec: &GangSpec) -> Result<(), EngineError> {
    let bad = |why: &str| Err(EngineError::InvalidGang { name: spec.name.clone(), why: why.to_string() });
    if spec.min == 0 {
        return bad("min must be at least 1");
    }
    if spec.max < spec.min {
        return bad("max must be at least min");
    }
    if spec.slot.is_zero() {
        return bad("a slot must ask for some cpu or memory");
    }
    if spec.total_completions() == 0 {
        return bad("completions must be at least 1");
    }
    if spec.max_attempts == 0 {
        return bad("max_attempts must be at least 1");
    }
    Ok(())
}

/// Pending-order key: (rank, queue, runtime, seq, id).
pub(crate) type PendingKey = (usize, usize, Time, u64, GangId);

/// A map keyed by sequential ids (gangs, allocations).
pub(crate) type IdMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

/// Hashes a sequential id to itself in the bits that pick the bucket, so ids
/// made together (a gang's slots, placed and ended together) sit together in
/// memory; the top bits, which the table compares before the keys, are mixed.
/// With a scattering hash every slot ending was a cache miss.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, id: u64) {
        self.0 = id;
    }
    fn finish(&self) -> u64 {
        const LOW: u64 = (1 << 57) - 1;
        (self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) & !LOW) | (self.0 & LOW)
    }
}

/// Gangs with equal signatures fit or fail to fit in exactly the same
/// places: the slot's size and every filter's own contribution.
fn signature(spec: &GangSpec, filters: &Filters) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    spec.slot.hash(&mut h);
    filters.sign(&mut h);
    h.finish()
}
