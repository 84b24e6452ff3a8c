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

use crate::engine::{Engine, PendingReason, Reservation};
use crate::event::Decision;
use crate::model::{GangId, NodeId, NodeState, Time};
use crate::resources::Resources;

impl Engine {
    /// Tries to reserve the earliest room for `need` slots of the gang.
    pub(crate) fn reserve(&mut self, id: GangId, need: u32) -> Option<PendingReason> {
        let g = &self.gangs[&id];
        let slot = g.spec.slot;
        let one_per_node = g.spec.constraints.one_slot_per_node || g.group.is_some();
        let whole_node = g.spec.constraints.exclusive;
        let now = self.now;

        // (node, room it has now) and (time, candidate index, room freed then)
        let mut candidates: Vec<(NodeId, Resources)> = Vec::new();
        let mut releases: Vec<(Time, u32, Resources)> = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            let nid = NodeId(i as u32);
            if node.state != NodeState::Ready || !self.statically_fits(g, nid) {
                continue;
            }
            if let Some(group) = g.group {
                if node.groups.iter().any(|&(gr, _)| gr == group) {
                    continue;
                }
            }
            let idx = candidates.len() as u32;
            let base = node.capacity.saturating_sub(&node.reserved);
            if whole_node || node.exclusive_allocs > 0 {
                // All-or-nothing node: usable once everything on it has ended.
                let mut last = now;
                let mut known = true;
                for a in &node.allocs {
                    match self.allocs[a].expected_end {
                        Some(e) => last = last.max(e),
                        None => known = false,
                    }
                }
                if !known || (whole_node && !node.reserved.is_zero()) {
                    continue;
                }
                candidates.push((nid, Resources::ZERO));
                releases.push((last, idx, base));
                continue;
            }
            candidates.push((nid, node.free().saturating_sub(&node.reserved)));
            for a in &node.allocs {
                if let Some(e) = self.allocs[a].expected_end {
                    releases.push((e.max(now), idx, self.allocs[a].res));
                }
            }
        }
        releases.sort_unstable_by_key(|&(t, i, _)| (t, i));

        let fits = |room: &Resources| {
            let k = room.count_fitting(&slot);
            if one_per_node { k.min(1) } else { k }
        };
        let mut room: Vec<Resources> = candidates.iter().map(|c| c.1).collect();
        let mut first_fit: Vec<Option<Time>> = room.iter().map(|r| (fits(r) > 0).then_some(now)).collect();
        let mut total: u64 = room.iter().map(|r| fits(r) as u64).sum();
        let mut start = (total >= need as u64).then_some(now);
        let mut k = 0;
        while start.is_none() && k < releases.len() {
            let t = releases[k].0;
            while k < releases.len() && releases[k].0 == t {
                let (_, i, res) = releases[k];
                let i = i as usize;
                total -= fits(&room[i]) as u64;
                room[i] += res;
                let f = fits(&room[i]);
                total += f as u64;
                if f > 0 && first_fit[i].is_none() {
                    first_fit[i] = Some(t);
                }
                k += 1;
            }
            if total >= need as u64 {
                start = Some(t);
            }
        }
        let start = start?;

        let mut order: Vec<usize> = (0..candidates.len()).filter(|&i| first_fit[i].is_some()).collect();
        order.sort_by_key(|&i| (first_fit[i], candidates[i].0));
        let mut nodes = Vec::new();
        let mut left = need;
        for i in order {
            if left == 0 {
                break;
            }
            let k = fits(&room[i]).min(left);
            if k == 0 {
                continue;
            }
            left -= k;
            let amount = if whole_node { room[i] } else { slot.times(k) };
            nodes.push((candidates[i].0, amount));
        }
        let count = nodes.len();
        self.install_reservation(id, Reservation { start, nodes, nomination: false, order: 0 });
        Some(PendingReason::Reserved { start, nodes: count })
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
        if r.nomination {
            if let Some(g) = self.gangs.get(&gang) {
                let q = &mut self.queues[g.queue];
                q.promised = q.promised.saturating_sub(&r.total());
            }
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
