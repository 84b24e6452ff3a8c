//! Reservations: a blocked gang is promised the nodes that free up soonest,
//! and later gangs may use those nodes only where they do not delay it.
//!
//! The earliest start is found by sweeping the expected ends of the slots
//! on every node that could hold the gang (EASY backfilling's "shadow time",
//! per node rather than as a processor count, so constraints, memory and
//! one-slot-per-node gangs are honoured). Slots with no runtime estimate
//! never count as ending, so a gang blocked only by such work gets no
//! reservation and says why instead.
//!
//! Starvation reservations are recomputed in every pass, since estimates are
//! upper bounds and work often ends early. Nominations (the room preemption
//! victims are freeing) persist until the preemptor starts.

use std::collections::BTreeMap;

use crate::engine::place::Domain;
use crate::engine::{Engine, Gang, PendingReason, Reservation};
use crate::event::Decision;
use crate::model::{GangId, NodeId, Time};
use crate::resources::Resources;

impl Engine {
    /// Tries to reserve the earliest room for `need` slots of the gang, in
    /// whichever of its domains frees up first.
    pub(crate) fn reserve(&mut self, id: GangId, need: u32) -> Option<PendingReason> {
        let g = &self.gangs[&id];
        let mut best: Option<(Time, Vec<(NodeId, Resources)>)> = None;
        for domain in self.domain_list(g) {
            if let Some((start, nodes)) = self.plan_reservation(g, need, domain)
                && best.as_ref().is_none_or(|b| start < b.0)
            {
                best = Some((start, nodes));
            }
        }
        let (start, nodes) = best?;
        let count = nodes.len();
        self.install_reservation(id, Reservation { start, nodes, nomination: false, exclusive: false, order: 0 });
        Some(PendingReason::Reserved { start, nodes: count })
    }

    /// The earliest start for `need` slots on nodes of `domain`, and the room to hold.
    ///
    /// Each node contributes the times at which it could hold one more slot
    /// (from its own slots' expected ends, sorted per node); a sweep over
    /// those steps finds the first time the cluster holds `need`.
    fn plan_reservation(&self, g: &Gang, need: u32, domain: Domain) -> Option<(Time, Vec<(NodeId, Resources)>)> {
        let slot = g.spec.slot;
        let one_per_node = g.filters.one_per_node();
        let whole_node = g.filters.exclusive();
        let now = self.now;
        let limit = if one_per_node { 1 } else { need };
        let fits = |room: &Resources| room.count_fitting_up_to(&slot, limit);
        // (time, node, more slots it holds from then on). Ties go to the lower
        // node id whatever order nodes are visited in, so the plan does not
        // depend on the index walked.
        let mut steps: Vec<(Time, u32, u32)> = Vec::new();
        // Steps after `bound` cannot matter: by then `need` slots are known to fit.
        let mut bound = Time::MAX;
        let mut prune_at = 16;
        // Room each all-or-nothing node would hold (exclusive gangs claim it whole).
        let mut whole_rooms: Vec<(NodeId, Resources)> = Vec::new();
        let mut late: Vec<(Time, Resources)> = Vec::new();
        // The ready nodes its labels or domain allow, from the smallest index.
        for &(_, _, _, i) in self.search_index(g, domain).iter() {
            if steps.len() >= prune_at {
                bound = prune_steps(&mut steps, need).unwrap_or(bound);
                prune_at = (steps.len() * 2).max(steps.len() + 16);
            }
            let nid = NodeId(i);
            let node = self.node(nid);
            if !self.statically_fits(g, nid, domain) {
                continue;
            }
            if g.filters.held_apart(self, g, nid) || self.held_exclusively(nid, g.id) {
                continue;
            }
            if whole_node || node.exclusive_allocs > 0 {
                // All-or-nothing node: usable once everything on it has ended.
                let mut last = now;
                for a in &node.allocs {
                    match self.expected_end(&self.allocs[a]) {
                        Some(e) => last = last.max(e),
                        None => last = Time::MAX,
                    }
                }
                let room = node.capacity.saturating_sub(&node.reserved);
                if last == Time::MAX || last > bound || (whole_node && !node.reserved.is_zero()) || fits(&room) == 0 {
                    continue;
                }
                whole_rooms.push((nid, room));
                steps.push((last, i, fits(&room)));
                continue;
            }
            let mut room = node.free().saturating_sub(&node.reserved);
            let mut held = fits(&room);
            if held > 0 {
                steps.push((now, i, held));
            }
            if held < need && !(one_per_node && held > 0) {
                // Walk the node's releases in time order until it holds enough.
                // Slots past their predicted end move to their limit (or now).
                if node.releases.first().is_some_and(|&(t, _)| t >= now && t > bound) {
                    // Nothing on it ends before `need` slots are known to fit elsewhere.
                    continue;
                }
                let (overdue, on_time) = node.releases.split_at(now);
                late.clear();
                late.extend(overdue.map(|&(e, a)| {
                    let alloc = &self.allocs[&a];
                    let end = if alloc.stopping { e.max(now) } else { alloc.limit_end.unwrap_or(e).max(now) };
                    (end, alloc.res)
                }));
                late.sort_unstable_by_key(|r| r.0);
                let mut on_time = on_time.peekable();
                let mut a = 0;
                loop {
                    let (t, res) = match (late.get(a), on_time.peek()) {
                        (Some(x), Some(y)) if x.0 <= y.0 => {
                            a += 1;
                            *x
                        }
                        (_, Some(&&(e, id))) => {
                            on_time.next();
                            (e, self.allocs[&id].res)
                        }
                        (Some(x), None) => {
                            a += 1;
                            *x
                        }
                        (None, None) => break,
                    };
                    if t > bound {
                        break;
                    }
                    room += res;
                    let k = fits(&room);
                    if k > held {
                        steps.push((t, i, k - held));
                        held = k;
                        if held >= need || one_per_node {
                            break;
                        }
                    }
                }
            }
        }
        let start = prune_steps(&mut steps, need)?;
        // Hold room on the nodes that free up first, as many slots as each holds by then.
        let mut held: Vec<(NodeId, u32)> = Vec::new();
        let mut left = need;
        for &(t, node, more) in &steps {
            if t > start || left == 0 {
                break;
            }
            let nid = NodeId(node);
            let k = more.min(left);
            left -= k;
            match held.iter_mut().find(|(n, _)| *n == nid) {
                Some(e) => e.1 += k,
                None => held.push((nid, k)),
            }
        }
        let nodes = held
            .into_iter()
            .map(|(n, k)| {
                let amount = if whole_node {
                    whole_rooms.iter().find(|c| c.0 == n).map_or(slot, |c| c.1)
                } else {
                    slot.times(k)
                };
                (n, amount)
            })
            .collect();
        Some((start, nodes))
    }

    /// Whether a gang of `group` other than `except` holds room on the node.
    pub(crate) fn group_claims(&self, group: u32, node: NodeId, except: GangId) -> bool {
        self.reservations.iter().any(|(holder, r)| {
            *holder != except
                && self.gangs.get(holder).is_some_and(|h| h.group == Some(group))
                && r.nodes.iter().any(|(n, _)| *n == node)
        })
    }

    /// Whether another gang holds room on the node that the gang must leave
    /// it: any claim, or where the gang holds a claim of its own, only the
    /// claims made before it (later ones were planned around it).
    pub(crate) fn claimed_before(&self, gang: GangId, node: NodeId) -> bool {
        let mine = self.reservations.get(&gang).filter(|r| r.nodes.iter().any(|(n, _)| *n == node)).map(|r| r.order);
        self.reservations.iter().any(|(holder, r)| {
            *holder != gang && mine.is_none_or(|m| r.order < m) && r.nodes.iter().any(|(n, _)| *n == node)
        })
    }

    /// Whether an exclusive gang other than `except` holds the node.
    fn held_exclusively(&self, node: NodeId, except: GangId) -> bool {
        self.reservations
            .iter()
            .any(|(holder, r)| *holder != except && r.exclusive && r.nodes.iter().any(|(n, _)| *n == node))
    }

    pub(crate) fn install_reservation(&mut self, gang: GangId, mut r: Reservation) {
        r.order = self.next_reservation;
        self.next_reservation += 1;
        if r.nomination {
            let queue = self.gangs[&gang].queue;
            self.queues[queue].promised += r.total();
        }
        for (n, amount) in &r.nodes {
            self.nodes[n.0 as usize].as_mut().expect("valid node").reserved += *amount;
        }
        self.reservations.insert(gang, r);
    }

    fn uninstall(&mut self, gang: GangId) -> Option<Reservation> {
        let r = self.reservations.remove(&gang)?;
        if r.nomination
            && let Some(g) = self.gangs.get(&gang)
        {
            let q = &mut self.queues[g.queue];
            q.promised = q.promised.saturating_sub(&r.total());
        }
        for (n, amount) in &r.nodes {
            let node = self.nodes[n.0 as usize].as_mut().expect("valid node");
            node.reserved = node.reserved.saturating_sub(amount);
        }
        Some(r)
    }

    /// Drops a gang's reservation (it started, left, or the room is gone).
    pub(crate) fn drop_reservation(&mut self, gang: GangId) {
        if self.uninstall(gang).is_some() {
            self.emit(Decision::ClearReservation { gang });
        }
    }

    /// Takes out the starvation reservations before a pass rebuilds them;
    /// returns them so the pass can report only what changed.
    pub(crate) fn clear_starvation_reservations(&mut self) -> BTreeMap<GangId, (Vec<NodeId>, Time)> {
        let holders: Vec<GangId> = self.reservations.iter().filter(|(_, r)| !r.nomination).map(|(g, _)| *g).collect();
        let mut previous = BTreeMap::new();
        for g in holders {
            if let Some(r) = self.uninstall(g) {
                previous.insert(g, (r.nodes.iter().map(|(n, _)| *n).collect(), r.start));
            }
        }
        previous
    }
}

/// Sorts the steps and finds the first time they add up to `need` slots;
/// drops the steps after it, which cannot change the plan.
fn prune_steps(steps: &mut Vec<(Time, u32, u32)>, need: u32) -> Option<Time> {
    steps.sort_unstable();
    let mut total = 0u64;
    let at = steps.iter().position(|&(_, _, more)| {
        total += more as u64;
        total >= need as u64
    })?;
    let start = steps[at].0;
    let keep = at + steps[at..].partition_point(|s| s.0 == start);
    steps.truncate(keep);
    Some(start)
}
