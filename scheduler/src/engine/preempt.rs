//! Preemption: choosing the cheapest set of victims that lets a blocked gang run.
//!
//! Rules, in the order they are applied:
//! 1. Victims are running slots of strictly lower, preemptible classes; or,
//!    to reclaim lent quota, slots of the same class in a queue above its
//!    guarantee when the preemptor's queue is below its own.
//! 2. A gang never evicts a gang that evicted it (no ping-pong).
//! 3. On each node, victims are taken cheapest first: lowest class, then
//!    elastic slots above their gang's `min`, then least work lost.
//! 4. Nodes are used cheapest first (free room, then the lowest worst victim,
//!    fewest whole gangs torn down, least work lost, fewest victims) until
//!    the gang's `min` slots fit. If they never do, nobody is evicted.
//! 5. A victim whose gang would drop below `min` takes its whole gang down
//!    (re-queued, attempts kept); others are shrunk one slot at a time.
//! 6. The preemptor gets a nomination on the freed room, so nothing else
//!    takes it during the victims' grace period.

use rustc_hash::FxHashMap;

use crate::engine::place::{Choice, Domain};
use crate::engine::{Engine, PendingReason, Reservation};
use crate::event::{RequeueCause, StopReason};
use crate::model::{AllocId, GangId, NodeId};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct NodeCost {
    worst_value: i32,
    teardowns: u32,
    lost_ms: u64,
    victims: u32,
}

impl Engine {
    pub(crate) fn try_preempt(&mut self, id: GangId, need: u32) -> Option<PendingReason> {
        for domain in self.domain_list(&self.gangs[&id]) {
            if let Some((chosen, victims)) = self.plan_preemption(id, need, domain) {
                let count = victims.len();
                let g = &self.gangs[&id];
                let (slot, exclusive) = (g.spec.slot, g.filters.exclusive());
                self.evict(id, &victims);
                let deadline = self.now + self.config.policy.grace_period;
                let nodes = chosen.into_iter().map(|(n, k)| (n, slot.times(k))).collect();
                let nomination = Reservation { start: deadline, nodes, nomination: true, exclusive, order: 0 };
                self.install_reservation(id, nomination);
                return Some(PendingReason::AwaitingVictims { deadline, victims: count });
            }
        }
        None
    }

    /// The cheapest victims on nodes of `domain` that make room for `need`
    /// slots, and where those slots go; `None` if no eviction suffices.
    fn plan_preemption(&self, id: GangId, need: u32, domain: Domain) -> Option<(Choice, Vec<AllocId>)> {
        let g = &self.gangs[&id];
        let rank = g.rank;
        let lower_running = self.preemptible_running[rank + 1..].iter().any(|&c| c > 0);
        let my_queue = &self.queues[g.queue];
        let after = (my_queue.allocated + g.spec.slot.times(need)).dominant_share(&self.total);
        // Reclaiming lent quota needs another queue holding more than its guarantee.
        let reclaim = after <= my_queue.guarantee
            && self.preemptible_running[rank] > 0
            && self
                .queues
                .iter()
                .enumerate()
                .any(|(i, q)| i != g.queue && q.allocated.dominant_share(&self.total) > q.guarantee);
        if !lower_running && !reclaim {
            return None;
        }
        let now = self.now;
        let slot = g.spec.slot;
        let one_per_node = g.filters.one_per_node();
        let whole_node = g.filters.exclusive();
        let eligible = |engine: &Engine, a: AllocId| -> bool {
            let alloc = &engine.allocs[&a];
            if alloc.stopping || alloc.gang == id {
                return false;
            }
            let v = &engine.gangs[&alloc.gang];
            if !engine.config.classes[v.rank].preemptible || g.preempted_by.contains(&v.id) {
                return false;
            }
            if v.rank > rank {
                return true;
            }
            reclaim && v.rank == rank && v.queue != g.queue && {
                let q = &engine.queues[v.queue];
                q.allocated.dominant_share(&engine.total) > q.guarantee
            }
        };
        let mut gang_lost: FxHashMap<GangId, u64> = FxHashMap::default();
        let mut lost_of = |engine: &Engine, gang: GangId| -> u64 {
            *gang_lost.entry(gang).or_insert_with(|| {
                engine.gangs[&gang]
                    .slots
                    .iter()
                    .filter_map(|s| match s {
                        crate::engine::SlotState::Running(a) => Some(now - engine.allocs[a].started),
                        _ => None,
                    })
                    .sum()
            })
        };

        // Per node: the cheapest victims that make room for as many slots as
        // eviction can. Nodes are visited from the most free down, and the
        // search stops once enough viable nodes are known to choose from, so
        // a decision costs the same on 100 nodes or 10,000 (as Kubernetes
        // samples nodes for preemption).
        let enough = (need as usize).saturating_mul(4).saturating_add(32);
        let mut plans: Vec<(NodeCost, NodeId, u32, Vec<AllocId>)> = Vec::new();
        for &(_, _, _, i) in self.search_index(g, domain).iter().rev() {
            if plans.len() >= enough {
                break;
            }
            let nid = NodeId(i);
            let node = self.node(nid);
            if !self.statically_fits(g, nid, domain) || !g.filters.after_eviction(self, g, nid, |a| eligible(self, a)) {
                continue;
            }
            let mut room = self.available_for(g, nid);
            let cap_k = |k: u32| if one_per_node { k.min(1) } else { k };
            let free_k = if node.exclusive_allocs > 0 || whole_node && !node.allocated.is_zero() {
                0
            } else {
                cap_k(room.count_fitting(&slot))
            };
            if free_k > 0 {
                plans.push((
                    NodeCost { worst_value: i32::MIN, teardowns: 0, lost_ms: 0, victims: 0 },
                    nid,
                    free_k,
                    vec![],
                ));
                continue;
            }
            let mut victims: Vec<(usize, u8, u64, AllocId)> = Vec::new();
            let mut all_eligible = true;
            for &a in &node.allocs {
                if eligible(self, a) {
                    let alloc = &self.allocs[&a];
                    let v = &self.gangs[&alloc.gang];
                    let elastic = (v.running > v.spec.min) as u8;
                    victims.push((usize::MAX - v.rank, 1 - elastic, now - alloc.started, a));
                } else if !self.allocs[&a].stopping {
                    all_eligible = false;
                }
            }
            if victims.is_empty() || (whole_node || node.exclusive_allocs > 0) && !all_eligible {
                continue;
            }
            victims.sort_unstable();
            let freeable = victims.iter().fold(room, |r, v| r + self.allocs[&v.3].res);
            let target_k = cap_k(freeable.count_fitting(&slot)).min(need);
            let target = if whole_node || node.exclusive_allocs > 0 { victims.len() } else { 0 };
            let mut cost = NodeCost { worst_value: i32::MIN, teardowns: 0, lost_ms: 0, victims: 0 };
            let mut taken = Vec::new();
            let mut k = 0;
            for (n, &(_, rigid, ran, a)) in victims.iter().enumerate() {
                let alloc = &self.allocs[&a];
                let v = &self.gangs[&alloc.gang];
                room += alloc.res;
                taken.push(a);
                cost.worst_value = cost.worst_value.max(self.config.classes[v.rank].value);
                cost.victims += 1;
                if rigid == 1 {
                    cost.teardowns += 1;
                    cost.lost_ms += lost_of(self, v.id);
                } else {
                    cost.lost_ms += ran;
                }
                k = cap_k(room.count_fitting(&slot));
                if n + 1 >= target && k >= target_k {
                    break;
                }
            }
            if k > 0 {
                plans.push((cost, nid, k, taken));
            }
        }
        plans.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));

        let mut chosen: Vec<(NodeId, u32)> = Vec::new();
        let mut victims: Vec<AllocId> = Vec::new();
        let mut placed = 0;
        for (_, nid, k, taken) in plans {
            if placed >= need {
                break;
            }
            let k = k.min(need - placed);
            placed += k;
            chosen.push((nid, k));
            victims.extend(taken);
        }
        if placed < need || victims.is_empty() {
            return None;
        }
        victims.sort_unstable();
        victims.dedup();
        Some((chosen, victims))
    }

    /// Stops the victims: elastic slots shrink their gang, others tear their gang down.
    fn evict(&mut self, preemptor: GangId, victims: &[AllocId]) {
        let mut per_gang: Vec<(GangId, Vec<AllocId>)> = Vec::new();
        for &a in victims {
            let gang = self.allocs[&a].gang;
            match per_gang.iter_mut().find(|(g, _)| *g == gang) {
                Some(entry) => entry.1.push(a),
                None => per_gang.push((gang, vec![a])),
            }
        }
        let name = self.gangs[&preemptor].spec.name.clone();
        for (gang, allocs) in per_gang {
            let v = self.gangs.get_mut(&gang).expect("victim gang is live");
            v.preempted_by.push(preemptor);
            let shrink = !v.rigid() && v.running - allocs.len() as u32 >= v.spec.min;
            if shrink {
                for a in allocs {
                    self.stop_alloc(a, StopReason::Shrunk { by: preemptor });
                }
                self.update_growable(gang);
            } else {
                let running: Vec<AllocId> = v
                    .slots
                    .iter()
                    .filter_map(|s| match s {
                        crate::engine::SlotState::Running(a) => Some(*a),
                        _ => None,
                    })
                    .collect();
                for a in running {
                    self.stop_alloc(a, StopReason::Preempted { by: preemptor });
                }
                self.requeue(gang, RequeueCause::Preempted, &format!("preempted by {preemptor} ({name})"));
            }
        }
    }
}
