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

/// State carried through one pass; its buffers are kept between passes.
#[derive(Default)]
pub(crate) struct PassState {
    /// Shapes that found no room this pass, and the reason given.
    blocked: FxHashMap<u64, PendingReason>,
    /// Shapes owed a reservation that could not get one this pass.
    unreservable: FxHashSet<u64>,
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
    /// The fair phase's cursor into each queue of the rank at hand, and their order.
    cursors: Vec<(usize, PendingKey)>,
    heap: BinaryHeap<Reverse<(u8, u64, usize)>>,
    /// Gangs to grow this pass.
    growing: Vec<GangId>,
}

impl PassState {
    /// Ready for a new pass, keeping the buffers.
    fn reset(&mut self, room: Resources) {
        self.blocked.clear();
        self.unreservable.clear();
        self.failed.clear();
        self.tried.clear();
        self.reservations = 0;
        self.head = None;
        self.room = room;
    }
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
        let one_per_node = g.filters.list == [crate::engine::filters::Filter::OnePerNode];
        (g.filters.is_empty() || one_per_node && g.filters.within.is_none()).then_some(Failure {
            slot: g.spec.slot,
            need,
            limit: g.spec.estimated_runtime,
            one_per_node,
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
    ///
    /// The pass depth bound counts only gangs really tried: gangs in
    /// backoff, behind an FCFS head, or of a shape already found blocked in
    /// this pass cost a lookup each, and gangs that cannot fit the cluster
    /// as it is are parked and cost nothing until the cluster changes. So no
    /// run of hopeless or identically blocked gangs can hide the work behind it.
    pub fn schedule(&mut self) -> Vec<Decision> {
        let mut out = Vec::new();
        self.schedule_into(&mut out);
        out
    }

    /// [`Engine::schedule`], appending the decisions to `out` (a caller that
    /// keeps `out` between passes allocates nothing for them).
    pub fn schedule_into(&mut self, out: &mut Vec<Decision>) {
        self.reindex_stale();
        self.unpark_if_changed();
        self.refresh_predictions();
        let previous = self.clear_starvation_reservations();
        let mut pass = std::mem::take(&mut self.pass);
        pass.reset(self.largest_room());
        let mut budget = self.config.policy.max_pass_depth;
        match self.config.policy.ordering {
            Ordering::Fifo => {
                let mut cursor = self.pending.first().copied();
                while let Some(key) = cursor {
                    if budget == 0 {
                        break;
                    }
                    if self.try_gang(key.4, &mut pass) {
                        budget -= 1;
                    }
                    cursor = self.pending.range((Excluded(key), Unbounded)).next().copied();
                }
            }
            Ordering::PriorityFair => {
                // Gangs past their bound, oldest first. The shortest bound is a
                // tenth of the policy's, so younger gangs need no look.
                let horizon = self.now.checked_sub(self.base_reservation_bound() / 10);
                if let (true, Some(horizon)) = (self.config.policy.max_reservations > 0, horizon) {
                    let mut cursor = self.pending_by_age.first().copied();
                    while let Some(age) = cursor {
                        if age.0 > horizon || budget == 0 {
                            break;
                        }
                        cursor = self.pending_by_age.range((Excluded(age), Unbounded)).next().copied();
                        if self.now - age.0 >= self.reservation_bound(age.2) {
                            pass.tried.insert(age.2);
                            if self.try_gang(age.2, &mut pass) {
                                budget -= 1;
                            }
                        }
                    }
                }
                self.fair_order_pass(&mut pass, budget);
            }
        }
        self.grow(&mut pass);
        self.pass = pass;
        self.emit_reservation_changes(previous);
        out.append(&mut self.out);
    }

    /// Puts parked gangs back in the pending order once the cluster changed.
    fn unpark_if_changed(&mut self) {
        if self.parked_at_version == self.topology_version {
            return;
        }
        self.parked_at_version = self.topology_version;
        for (_, id) in std::mem::take(&mut self.parked) {
            self.gangs.get_mut(&id).expect("parked gang is live").parked = false;
            self.add_pending(id);
        }
    }

    /// Takes a gang that cannot fit the cluster as it is out of the pending order.
    fn park(&mut self, id: GangId) {
        self.remove_pending(id);
        let g = self.gangs.get_mut(&id).expect("live gang");
        g.parked = true;
        self.parked.insert((g.seq, id));
    }

    /// Tries pending gangs class by class; inside a class, queues in DRF
    /// order, each queue read through a cursor so no pass copies the queue.
    fn fair_order_pass(&mut self, pass: &mut PassState, mut budget: usize) {
        let mut rank_from = self.pending.first().map(|k| k.0);
        while let Some(rank) = rank_from {
            // The queues with gangs at this rank, each with its cursor, in queue order.
            pass.cursors.clear();
            let mut probe = (rank, 0usize, 0, 0, GangId(0));
            while let Some(&k) = self.pending.range(probe..).next() {
                if k.0 != rank {
                    break;
                }
                pass.cursors.push((k.1, (k.0, k.1, 0, 0, GangId(0))));
                probe = (rank, k.1 + 1, 0, 0, GangId(0));
            }
            pass.heap.clear();
            for i in 0..pass.cursors.len() {
                let key = self.fair_key(pass.cursors[i].0);
                pass.heap.push(Reverse(key));
            }
            while let Some(Reverse((_, _, q))) = pass.heap.pop() {
                if budget == 0 {
                    return;
                }
                let at = pass.cursors.binary_search_by_key(&q, |c| c.0).expect("a cursor per queue");
                let from = pass.cursors[at].1;
                let next =
                    self.pending.range((Excluded(from), Unbounded)).next().copied().filter(|k| k.0 == rank && k.1 == q);
                let Some(key) = next else { continue };
                pass.cursors[at].1 = key;
                if !pass.tried.contains(&key.4) && self.try_gang(key.4, pass) {
                    budget -= 1;
                }
                let fair = self.fair_key(q);
                pass.heap.push(Reverse(fair));
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

    /// Tries to start a pending gang. Returns whether it was really tried
    /// (searched for room, preemption or a reservation), which is what the
    /// pass depth bound counts.
    fn try_gang(&mut self, id: GangId, pass: &mut PassState) -> bool {
        let now = self.now;
        let g = &self.gangs[&id];
        if g.eligible_at > now {
            let until = g.eligible_at;
            self.set_blocker(id, PendingReason::Backoff { until });
            return false;
        }
        if g.ready_todo(now) < g.start_need() {
            // Restarting slots still in their backoff: wait for the earliest to be ready.
            let until = g.todo.iter().map(|&s| g.ready_at[s as usize]).filter(|&t| t > now).min().unwrap_or(now);
            self.set_blocker(id, PendingReason::Backoff { until });
            return false;
        }
        if let Some(why) = self.infeasible(id) {
            self.set_blocker(id, PendingReason::Unschedulable(why));
            self.park(id);
            return false;
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
            return false;
        }
        if let Some(head) = pass.head {
            self.set_blocker(id, PendingReason::Behind(head));
            return false;
        }
        let key = self.blocked_key(g, need);
        let holds_reservation = self.reservations.contains_key(&id);
        let request = if holds_reservation { None } else { Failure::of(g, need) };
        if !holds_reservation {
            let known = pass.blocked.get(&key).cloned().or_else(|| {
                // Room is short; only a gang that could evict must look further.
                let hopeless = !self.may_preempt(g) && (pass.too_big(&g.spec.slot) || pass.known_to_fail(request));
                hopeless.then_some(PendingReason::NoRoom { need, fit: 0 })
            });
            if let Some(reason) = known {
                // A gang owed a reservation still gets its chance at one,
                // unless one of its kind just failed to get any.
                let owed = self.owed_reservation(id, pass) && !pass.unreservable.contains(&key);
                let reason = match reason {
                    PendingReason::NoRoom { .. } if owed => self.blocked(id, need, 0, pass),
                    other => other,
                };
                if owed && matches!(reason, PendingReason::NoRoom { .. }) {
                    pass.unreservable.insert(key);
                }
                self.set_blocker(id, reason);
                if !self.config.policy.backfill {
                    pass.head = Some(id);
                }
                return owed;
            }
        }
        self.catch_up_for(id, false);
        let g = &self.gangs[&id];
        let mut search = std::mem::take(&mut self.search);
        match self.find_nodes(g, need, need, &mut search) {
            Ok(domain) => self.start(id, &search.chosen, domain),
            Err(fit) => {
                let owed = self.owed_reservation(id, pass);
                let reason = self.blocked(id, need, fit, pass);
                if !holds_reservation && matches!(reason, PendingReason::NoRoom { .. }) {
                    pass.blocked.insert(key, reason.clone());
                    pass.remember_failure(request);
                    if owed {
                        pass.unreservable.insert(key);
                    }
                }
                self.set_blocker(id, reason);
                if !self.config.policy.backfill {
                    pass.head = Some(id);
                }
            }
        }
        self.search = search;
        true
    }

    /// Gangs with equal keys are blocked alike within a pass: same
    /// signature, same need, same class (preemption depends on it) and,
    /// while reservations exist, the same walltime (backfill depends on it).
    fn blocked_key(&self, g: &crate::engine::Gang, need: u32) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = rustc_hash::FxHasher::default();
        (g.signature, need, g.rank).hash(&mut h);
        if !self.reservations.is_empty() {
            g.spec.estimated_runtime.hash(&mut h);
        }
        h.finish()
    }

    /// Whether the gang has waited long enough to be given a reservation,
    /// and this pass still has one to give.
    fn owed_reservation(&self, id: GangId, pass: &PassState) -> bool {
        let policy = &self.config.policy;
        let waited = self.now.saturating_sub(self.gangs[&id].submitted_at);
        policy.backfill && pass.reservations < policy.max_reservations && waited >= self.reservation_bound(id)
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
        self.catch_up_for(id, true);
        let policy = &self.config.policy;
        if policy.preemption
            && let Some(reason) = self.try_preempt(id, need)
        {
            return reason;
        }
        if self.owed_reservation(id, pass)
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
        let bound = self.base_reservation_bound();
        if self.config.policy.ordering == Ordering::Fifo {
            return bound;
        }
        let g = &self.gangs[&id];
        let largest = self.largest_node_cpu.max(1) as f64;
        let share = (g.spec.slot.cpu_millis as f64 * g.start_need() as f64 / largest).min(1.0);
        let share = if g.spec.constraints.exclusive { 1.0 } else { share };
        (bound as f64 * (1.0 - 0.9 * share)) as Time
    }

    /// The policy's bound for the smallest work: fixed, or a multiple of the
    /// mean run time of the slots finished so far (the fixed bound until
    /// some have).
    pub(crate) fn base_reservation_bound(&self) -> Time {
        let policy = &self.config.policy;
        match policy.reserve_after_runtimes {
            Some(k) if self.finished_slots > 0 => {
                let mean = self.finished_runtime_ms as f64 / self.finished_slots as f64;
                (mean * k) as Time
            }
            _ => policy.reserve_after,
        }
    }

    fn set_blocker(&mut self, id: GangId, reason: PendingReason) {
        self.gangs.get_mut(&id).expect("live gang").blocker = reason;
    }

    /// Places the gang's first `min` slots and marks it running.
    fn start(&mut self, id: GangId, choice: &crate::engine::place::Choice, domain: crate::engine::place::Domain) {
        let g = self.gangs.get_mut(&id).expect("live gang");
        // Attempts count the gang's own failures: a restart after a lost
        // node or a preemption is the same attempt.
        g.attempts = g.failures + 1;
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
        pass.growing.clear();
        pass.growing.extend(self.growable.iter().take(self.config.policy.max_pass_depth).map(|k| k.2));
        for i in 0..pass.growing.len() {
            let id = pass.growing[i];
            let g = &self.gangs[&id];
            let key = g.signature ^ GROWTH_SALT;
            let request = Failure::of(g, 1);
            if pass.too_big(&g.spec.slot) || pass.blocked.contains_key(&key) || pass.known_to_fail(request) {
                continue;
            }
            let want = g.spec.max.saturating_sub(g.running).min(g.ready_todo(self.now));
            let cap = self.total.fraction(self.queues[g.queue].cap);
            let queue = &self.queues[g.queue];
            let room_in_queue = cap.saturating_sub(&(queue.allocated + queue.promised)).count_fitting(&g.spec.slot);
            let want = want.min(room_in_queue);
            if want == 0 {
                continue;
            }
            self.catch_up_for(id, false);
            let g = &self.gangs[&id];
            let mut search = std::mem::take(&mut self.search);
            match self.find_nodes(g, 1, want, &mut search) {
                Ok(_) => {
                    let placed: u32 = search.chosen.iter().map(|(_, k)| k).sum();
                    self.commit(id, &search.chosen, true);
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
            self.search = search;
        }
    }

    /// Why the gang cannot run on the ready nodes even were they empty, if
    /// it cannot: no ready node may ever hold a slot, or together (in one
    /// domain, under `within`) they hold fewer than `min` slots. Judged on
    /// the ready nodes grouped by shape, so it costs the number of node
    /// shapes, not nodes, and is cached per signature until the ready set changes.
    fn infeasible(&mut self, id: GangId) -> Option<String> {
        let g = &self.gangs[&id];
        let need = g.start_need();
        let key = g.signature ^ (need as u64).wrapping_mul(GROWTH_SALT.rotate_left(29));
        if let Some((version, verdict)) = self.feasible_cache.get(&key)
            && *version == self.topology_version
        {
            return verdict.clone();
        }
        let one_per_node = g.filters.one_per_node();
        let within = g.filters.within;
        let mut total = 0u64;
        let mut per_domain: BTreeMap<crate::engine::topology::PairId, u64> = BTreeMap::new();
        let mut largest = crate::resources::Resources::ZERO;
        for ((capacity, labels), &count) in &self.topology.shapes {
            if (capacity.cpu_millis, capacity.memory_bytes) > (largest.cpu_millis, largest.memory_bytes) {
                largest = *capacity;
            }
            if !g.spec.slot.fits_in(capacity) || !g.filters.ever(labels) {
                continue;
            }
            let slots = if one_per_node { 1 } else { capacity.count_fitting(&g.spec.slot) as u64 } * count as u64;
            match within {
                None => total += slots,
                Some(k) => {
                    if let Some(&p) = labels.iter().find(|&&p| self.topology.key_of(p) == k) {
                        *per_domain.entry(p).or_default() += slots;
                    }
                }
            }
        }
        let (fit, best_domain) = match within {
            None => (total, None),
            Some(_) => per_domain.iter().map(|(p, n)| (*n, Some(*p))).max().unwrap_or((0, None)),
        };
        let constraints = g.filters.describe(&self.topology);
        let verdict = if fit >= need as u64 {
            None
        } else if fit == 0 {
            Some(format!(
                "no ready node{constraints} can hold one slot of ({}); the largest ready node has {}",
                g.spec.slot, largest
            ))
        } else if let (Some(k), Some(p)) = (within, best_domain) {
            Some(format!(
                "needs {need}×({}) within one `{}`, but the largest domain ({}) holds only {fit} such slots",
                g.spec.slot,
                self.topology.key_name(k),
                self.topology.pair_name(p)
            ))
        } else {
            Some(format!(
                "needs {need}×({}){constraints} but the ready nodes together hold only {fit} such slots",
                g.spec.slot
            ))
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
