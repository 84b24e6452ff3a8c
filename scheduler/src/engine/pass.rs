//! One scheduling pass: which pending gang is tried when.
//!
//! Under [`Ordering::PriorityFair`] the pass first tries gangs that have
//! waited past the reservation bound (oldest first: they get reservations,
//! so nothing starves), then every priority class from the top; inside a
//! class, the queue with the smallest dominant share goes next (DRF, with
//! queues under their guarantee ahead of borrowers). Under
//! [`Ordering::Fifo`] gangs go in arrival order. A gang that cannot start
//! may preempt, may get a reservation, and otherwise lets later gangs
//! backfill past it (unless backfill is off: FCFS). Last, running elastic
//! gangs grow into what is left.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::ops::Bound::{Excluded, Unbounded};

use rustc_hash::{FxHashMap, FxHashSet};

use crate::engine::{Engine, GangPhase, PendingKey, PendingReason};
use crate::event::Decision;
use crate::model::{GangId, NodeId, Ordering, Time};
use crate::resources::Resources;

/// State carried through one pass.
#[derive(Default)]
struct PassState {
    /// Shapes that found no room this pass, and the reason given.
    blocked: FxHashMap<u64, PendingReason>,
    /// Recent failures of unconstrained gangs: any gang asking at least as
    /// much, for at least as long, fails too.
    failed: Vec<Failure>,
    /// Gangs the starving phase tried, which the fair phase then skips.
    tried: FxHashSet<GangId>,
    reservations: usize,
    /// FCFS: the first gang that could not start.
    head: Option<GangId>,
    /// Upper bound on the room of any node this pass (see `largest_room`).
    room: Resources,
}

impl PassState {
    /// A slot larger than any node's room in some dimension cannot be placed now.
    fn too_big(&self, slot: &Resources) -> bool {
        slot.cpu_millis > self.room.cpu_millis || slot.memory_bytes > self.room.memory_bytes
    }
}

impl Engine {
    /// Whether the gang might find room by preemption: the policy allows it
    /// and lower, preemptible work runs (or its queue may reclaim quota).
    fn may_preempt(&self, g: &crate::engine::Gang) -> bool {
        self.config.policy.preemption
            && (self.preemptible_running[g.rank + 1..].iter().any(|&c| c > 0)
                || (self.queues[g.queue].guarantee > 0.0 && self.preemptible_running[g.rank] > 0))
    }

    /// The most free cpu and the most free memory on any ready node. Within
    /// a pass room only shrinks, so a slot above either cannot be placed.
    fn largest_room(&self) -> Resources {
        let (cpu, memory) = self.free_index.largest_room();
        Resources::new(cpu, memory)
    }
}

const GROWTH_SALT: u64 = 0x9e37_79b9_7f4a_7c15;
/// How many recent failures the dominance check remembers per pass.
const FAILURES_KEPT: usize = 8;

/// A request that found no room: (slot, slots needed, walltime, one slot per node).
#[derive(Clone, Copy)]
struct Failure {
    slot: Resources,
    need: u32,
    limit: Option<Time>,
    one_per_node: bool,
}

impl Failure {
    /// The request of `g` for `need` slots, if only size and time decide where it fits.
    fn of(g: &crate::engine::Gang, need: u32) -> Option<Failure> {
        let c = &g.spec.constraints;
        let simple =
            c.labels.is_empty() && c.within.is_none() && !c.exclusive && g.group.is_none() && g.locality.is_empty();
        simple.then_some(Failure {
            slot: g.spec.slot,
            need,
            limit: g.spec.estimated_runtime,
            one_per_node: c.one_slot_per_node,
        })
    }

    /// Whether `other` asks at least as much as this failed request.
    fn dominated_by(&self, other: &Failure) -> bool {
        self.one_per_node == other.one_per_node
            && self.need <= other.need
            && self.slot.fits_in(&other.slot)
            && match (self.limit, other.limit) {
                (_, None) => true,
                (None, Some(_)) => false,
                (Some(a), Some(b)) => a <= b,
            }
    }
}

impl PassState {
    fn known_to_fail(&self, request: Option<Failure>) -> bool {
        request.is_some_and(|r| self.failed.iter().any(|f| f.dominated_by(&r)))
    }

    fn remember_failure(&mut self, request: Option<Failure>) {
        if let Some(r) = request {
            if self.failed.len() == FAILURES_KEPT {
                self.failed.remove(0);
            }
            self.failed.push(r);
        }
    }
}

impl Engine {
    /// Runs a scheduling pass and returns every decision made since the last call.
    pub fn schedule(&mut self) -> Vec<Decision> {
        self.reindex_stale();
        self.refresh_predictions();
        let previous = self.clear_starvation_reservations();
        let mut pass = PassState { room: self.largest_room(), ..PassState::default() };
        match self.config.policy.ordering {
            Ordering::Fifo => {
                let depth = self.config.policy.max_pass_depth;
                let order: Vec<GangId> = self.pending.iter().take(depth).map(|k| k.4).collect();
                for id in order {
                    self.try_gang(id, &mut pass);
                }
            }
            Ordering::PriorityFair => {
                // Gangs past their bound, oldest first. The shortest bound is a
                // tenth of the policy's, so younger gangs need no look.
                let horizon = self.now.checked_sub(self.config.policy.reserve_after / 10);
                if let (true, Some(horizon)) = (self.config.policy.max_reservations > 0, horizon) {
                    let starving: Vec<GangId> = self
                        .pending_by_age
                        .iter()
                        .take_while(|a| a.0 <= horizon)
                        .filter(|a| self.now - a.0 >= self.reservation_bound(a.2))
                        .map(|a| a.2)
                        .take(self.config.policy.max_pass_depth)
                        .collect();
                    for id in starving {
                        pass.tried.insert(id);
                        self.try_gang(id, &mut pass);
                    }
                }
                self.fair_order_pass(&mut pass);
            }
        }
        self.grow(&mut pass);
        self.emit_reservation_changes(previous);
        std::mem::take(&mut self.out)
    }

    /// Tries pending gangs class by class; inside a class, queues in DRF
    /// order, each queue read through a cursor so no pass copies the queue.
    fn fair_order_pass(&mut self, pass: &mut PassState) {
        let mut budget = self.config.policy.max_pass_depth;
        let mut rank_from = self.pending.first().map(|k| k.0);
        while let Some(rank) = rank_from {
            // The queues with gangs at this rank, each with its cursor.
            let mut cursors: BTreeMap<usize, PendingKey> = BTreeMap::new();
            let mut probe = (rank, 0usize, 0, 0, GangId(0));
            while let Some(&k) = self.pending.range(probe..).next() {
                if k.0 != rank {
                    break;
                }
                cursors.insert(k.1, (k.0, k.1, 0, 0, GangId(0)));
                probe = (rank, k.1 + 1, 0, 0, GangId(0));
            }
            let mut heap: BinaryHeap<Reverse<(u8, u64, usize)>> =
                cursors.keys().map(|&q| Reverse(self.fair_key(q))).collect();
            while let Some(Reverse((_, _, q))) = heap.pop() {
                if budget == 0 {
                    return;
                }
                let from = cursors[&q];
                let next =
                    self.pending.range((Excluded(from), Unbounded)).next().copied().filter(|k| k.0 == rank && k.1 == q);
                let Some(key) = next else { continue };
                cursors.insert(q, key);
                if !pass.tried.contains(&key.4) {
                    budget -= 1;
                    self.try_gang(key.4, pass);
                }
                heap.push(Reverse(self.fair_key(q)));
            }
            rank_from = self.pending.range((rank + 1, 0, 0, 0, GangId(0))..).next().map(|k| k.0);
        }
    }

    /// Queues under their guarantee first, then by dominant share relative to the guarantee.
    fn fair_key(&self, q: usize) -> (u8, u64, usize) {
        let queue = &self.queues[q];
        let share = queue.allocated.dominant_share(&self.total);
        let borrowing = share >= queue.guarantee && queue.guarantee < 1.0;
        let weighted = if queue.guarantee > 0.0 { share / queue.guarantee } else { share };
        (borrowing as u8, (weighted * 1e9) as u64, q)
    }

    fn try_gang(&mut self, id: GangId, pass: &mut PassState) {
        let now = self.now;
        let g = &self.gangs[&id];
        if g.eligible_at > now {
            let until = g.eligible_at;
            self.set_blocker(id, PendingReason::Backoff { until });
            return;
        }
        if let Some(why) = self.infeasible(id) {
            self.set_blocker(id, PendingReason::Unschedulable(why));
            return;
        }
        let g = &self.gangs[&id];
        let need = g.start_need();
        let queue = &self.queues[g.queue];
        // A cap of the whole cluster is enforced by capacity itself; checking it would
        // only stop a gang from preempting lower-priority work of its own queue.
        let promised_to_others = match self.reservations.get(&id) {
            Some(r) if r.nomination => queue.promised.saturating_sub(&r.total()),
            _ => queue.promised,
        };
        let demand = queue.allocated + promised_to_others + g.spec.slot.times(need);
        if queue.cap < 1.0 && !demand.fits_in(&self.total.fraction(queue.cap)) {
            self.set_blocker(id, PendingReason::QueueCap);
            return;
        }
        if let Some(head) = pass.head {
            self.set_blocker(id, PendingReason::Behind(head));
            return;
        }
        let key = g.shape_key ^ (need as u64).wrapping_mul(GROWTH_SALT.rotate_left(17));
        let holds_reservation = self.reservations.contains_key(&id);
        let request = if holds_reservation { None } else { Failure::of(g, need) };
        if !holds_reservation {
            let known = pass.blocked.get(&key).cloned().or_else(|| {
                // Room is short; only a gang that could evict must look further.
                let hopeless = !self.may_preempt(g) && (pass.too_big(&g.spec.slot) || pass.known_to_fail(request));
                hopeless.then_some(PendingReason::NoRoom { need, fit: 0 })
            });
            if let Some(reason) = known {
                // A gang owed a reservation still gets its chance at one.
                let policy = &self.config.policy;
                let waited = self.now.saturating_sub(self.gangs[&id].submitted_at);
                let owed = policy.backfill
                    && pass.reservations < policy.max_reservations
                    && waited >= self.reservation_bound(id);
                let reason = match reason {
                    PendingReason::NoRoom { .. } if owed => self.blocked(id, need, 0, pass),
                    other => other,
                };
                self.set_blocker(id, reason);
                if !self.config.policy.backfill {
                    pass.head = Some(id);
                }
                return;
            }
        }
        match self.find_nodes(g, need, need) {
            Ok((choice, domain)) => self.start(id, &choice, domain),
            Err(fit) => {
                let reason = self.blocked(id, need, fit, pass);
                if !holds_reservation && matches!(reason, PendingReason::NoRoom { .. }) {
                    pass.blocked.insert(key, reason.clone());
                    pass.remember_failure(request);
                }
                self.set_blocker(id, reason);
                if !self.config.policy.backfill {
                    pass.head = Some(id);
                }
            }
        }
    }

    /// A gang could not start: preempt for it, reserve for it, or let it wait.
    fn blocked(&mut self, id: GangId, need: u32, fit: u32, pass: &mut PassState) -> PendingReason {
        if let Some(r) = self.reservations.get(&id)
            && r.nomination
        {
            if self.now <= r.start {
                return PendingReason::AwaitingVictims { deadline: r.start, victims: r.nodes.len() };
            }
            // Victims are gone but the gang still does not fit (a node was lost): start over.
            self.drop_reservation(id);
        }
        let policy = &self.config.policy;
        if policy.preemption
            && let Some(reason) = self.try_preempt(id, need)
        {
            return reason;
        }
        let policy = &self.config.policy;
        let waited = self.now.saturating_sub(self.gangs[&id].submitted_at);
        if policy.backfill
            && pass.reservations < policy.max_reservations
            && waited >= self.reservation_bound(id)
            && let Some(reason) = self.reserve(id, need)
        {
            pass.reservations += 1;
            return reason;
        }
        PendingReason::NoRoom { need, fit }
    }

    /// How long a gang waits before it may hold a reservation: the policy's
    /// bound, shortened for gangs that need much of a node, down to a tenth
    /// of it for whole nodes. Small gangs find holes on their own; wide ones
    /// only ever run if room is held for them (Slurm's job-size factor).
    fn reservation_bound(&self, id: GangId) -> Time {
        let bound = self.config.policy.reserve_after;
        if self.config.policy.ordering == Ordering::Fifo {
            return bound;
        }
        let g = &self.gangs[&id];
        let largest = self.largest_node_cpu.max(1) as f64;
        let share = (g.spec.slot.cpu_millis as f64 * g.start_need() as f64 / largest).min(1.0);
        let share = if g.spec.constraints.exclusive { 1.0 } else { share };
        (bound as f64 * (1.0 - 0.9 * share)) as Time
    }

    fn set_blocker(&mut self, id: GangId, reason: PendingReason) {
        self.gangs.get_mut(&id).expect("live gang").blocker = reason;
    }

    /// Places the gang's first `min` slots and marks it running.
    fn start(&mut self, id: GangId, choice: &crate::engine::place::Choice, domain: Option<String>) {
        let g = self.gangs.get_mut(&id).expect("live gang");
        g.attempts += 1;
        g.domain = domain;
        g.phase = GangPhase::Running;
        self.remove_pending(id);
        self.commit(id, choice, false);
        if self.reservations.contains_key(&id) {
            self.drop_reservation(id);
        }
        self.update_growable(id);
    }

    /// Running elastic gangs take what is left, one slot at a time, in priority order.
    fn grow(&mut self, pass: &mut PassState) {
        if self.growable.is_empty() {
            return;
        }
        let order: Vec<GangId> = self.growable.iter().take(self.config.policy.max_pass_depth).map(|k| k.2).collect();
        for id in order {
            let g = &self.gangs[&id];
            let key = g.shape_key ^ GROWTH_SALT;
            let request = Failure::of(g, 1);
            if pass.too_big(&g.spec.slot) || pass.blocked.contains_key(&key) || pass.known_to_fail(request) {
                continue;
            }
            let want = (g.spec.max - g.running).min(g.todo.len() as u32);
            let cap = self.total.fraction(self.queues[g.queue].cap);
            let queue = &self.queues[g.queue];
            let room_in_queue = cap.saturating_sub(&(queue.allocated + queue.promised)).count_fitting(&g.spec.slot);
            let want = want.min(room_in_queue);
            if want == 0 {
                continue;
            }
            match self.find_nodes(g, 1, want) {
                Ok((choice, _)) => {
                    let placed: u32 = choice.iter().map(|(_, k)| k).sum();
                    self.commit(id, &choice, true);
                    self.update_growable(id);
                    if placed < want {
                        // It took all the room there was for its shape.
                        pass.blocked.insert(key, PendingReason::NotYetTried);
                        pass.remember_failure(request);
                    }
                }
                Err(_) => {
                    pass.blocked.insert(key, PendingReason::NotYetTried);
                    pass.remember_failure(request);
                }
            }
        }
    }

    /// Whether the gang could run on the whole cluster, were it empty.
    fn infeasible(&mut self, id: GangId) -> Option<String> {
        let g = &self.gangs[&id];
        let need = g.start_need();
        let key = g.shape_key ^ (need as u64);
        if let Some((version, verdict)) = self.feasible_cache.get(&key)
            && *version == self.topology_version
        {
            return verdict.clone();
        }
        let one_per_node = g.spec.constraints.one_slot_per_node || g.spec.constraints.exclusive || g.group.is_some();
        let mut fit = 0u64;
        let mut biggest = crate::resources::Resources::ZERO;
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            if !self.domains(g).iter().any(|d| self.statically_fits(g, NodeId(i as u32), d.as_ref())) {
                if node.capacity.cpu_millis > biggest.cpu_millis {
                    biggest = node.capacity;
                }
                continue;
            }
            fit += if one_per_node { 1 } else { node.capacity.count_fitting(&g.spec.slot) as u64 };
        }
        let verdict = if fit >= need as u64 {
            None
        } else if fit == 0 {
            let labels = if g.spec.constraints.labels.is_empty() {
                String::new()
            } else {
                let l: Vec<String> = g.spec.constraints.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!(" labelled {}", l.join(", "))
            };
            Some(format!("no node{labels} can hold one slot of ({}); the largest node has {}", g.spec.slot, biggest))
        } else {
            Some(format!("needs {need}×({}) but the whole cluster holds only {fit} such slots", g.spec.slot))
        };
        self.feasible_cache.insert(key, (self.topology_version, verdict.clone()));
        verdict
    }

    /// Reports reservations that appeared, moved or vanished during the pass.
    fn emit_reservation_changes(&mut self, previous: BTreeMap<GangId, (Vec<NodeId>, u64)>) {
        let mut changes = Vec::new();
        for (gang, r) in &self.reservations {
            if r.nomination {
                continue;
            }
            let nodes: Vec<NodeId> = r.nodes.iter().map(|(n, _)| *n).collect();
            if previous.get(gang) != Some(&(nodes.clone(), r.start)) {
                changes.push(Decision::Reserve { gang: *gang, nodes, start: r.start });
            }
        }
        for gang in previous.keys() {
            if !self.reservations.contains_key(gang) && self.gangs.contains_key(gang) {
                changes.push(Decision::ClearReservation { gang: *gang });
            }
        }
        self.out.extend(changes);
    }
}
