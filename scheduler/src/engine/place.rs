//! Where a gang's slots fit.
//!
//! Ready nodes sit in the [free index](super::free_index) keyed by (size
//! class, free cpu, free memory, id). Packing walks the nodes that fit
//! upwards (best fit: the fullest node that still fits comes first);
//! spreading walks them downwards (worst fit). A walk stops as soon as
//! enough slots are found, so placing a slot costs a few index steps, not a
//! scan of the cluster.

use crate::engine::{Alloc, Engine, Gang, GangPhase, SlotState};
use crate::event::Decision;
use crate::model::{AllocId, GangId, NodeId, NodeState, Placement, Time};
use crate::resources::Resources;

/// Nodes chosen for a gang, with how many slots go on each.
pub(crate) type Choice = Vec<(NodeId, u32)>;

/// A label a node must carry, besides the gang's own constraints (a `within` domain).
pub(crate) type Domain<'a> = Option<&'a (String, String)>;

impl Engine {
    /// Marks a node whose free capacity changed outside a pass; the index
    /// catches up once, at the next pass, however many of its slots ended.
    pub(crate) fn reindex_later(&mut self, id: NodeId) {
        let node = self.nodes[id.0 as usize].as_mut().expect("valid node");
        if !node.index_stale {
            node.index_stale = true;
            self.stale_nodes.push(id);
        }
    }

    /// Brings the free index up to date before a pass reads it.
    pub(crate) fn reindex_stale(&mut self) {
        for id in std::mem::take(&mut self.stale_nodes) {
            self.reindex(id);
        }
    }

    /// Puts a node back into the free index under its current free capacity
    /// (or takes it out when it accepts no slots).
    pub(crate) fn reindex(&mut self, id: NodeId) {
        let small_first = self.config.policy.prefer_small_nodes;
        let node = self.nodes[id.0 as usize].as_mut().expect("valid node");
        node.index_stale = false;
        if let Some((s, c, m)) = node.index_key.take() {
            self.free_index.remove(&(s, c, m, id.0));
        }
        if node.state == NodeState::Ready {
            let free = node.free();
            let size = if small_first { node.capacity.cpu_millis } else { 0 };
            node.index_key = Some((size, free.cpu_millis, free.memory_bytes));
            self.free_index.insert((size, free.cpu_millis, free.memory_bytes, id.0));
        }
    }

    /// Whether the node may ever hold a slot of `g` (labels, size), ignoring what runs there now.
    pub(crate) fn statically_fits(&self, g: &Gang, id: NodeId, domain: Domain) -> bool {
        let node = self.node(id);
        node.state != NodeState::Lost
            && g.spec.slot.fits_in(&node.capacity)
            && g.spec.constraints.labels.iter().all(|(k, v)| node.labels.get(k) == Some(v))
            && domain.is_none_or(|(k, v)| node.labels.get(k) == Some(v))
    }

    /// Room on `id` that `g` may use now: free capacity, less what other
    /// gangs' reservations need, unless `g` is done before they start or
    /// leaves them enough room (the backfill rule). A gang holding a claim
    /// on this node may also use that claim, yielding only to claims made
    /// before its own (later ones were planned around it).
    pub(crate) fn available_for(&self, g: &Gang, id: NodeId) -> Resources {
        let node = self.node(id);
        let free = node.free();
        if node.reserved.is_zero() {
            return free;
        }
        // Backfill on the gang's own limit, never its prediction: a gang let in
        // ahead of a reservation must not be able to delay it.
        let end = g.spec.estimated_runtime.map(|e| self.now + e);
        let mine = self.reservations.get(&g.id);
        let my_claim = mine.and_then(|r| r.nodes.iter().find(|(n, _)| *n == id)).map(|(_, a)| *a);
        // Other gangs' claims on this node: (start, nomination, amount, made before mine).
        let mut claims: Vec<(Time, bool, Resources, bool)> = Vec::new();
        for (holder, res) in self.reservations.iter() {
            if *holder == g.id {
                continue;
            }
            for (n, amount) in &res.nodes {
                if *n == id {
                    let earlier = mine.is_some_and(|m| res.order < m.order);
                    claims.push((res.start, res.nomination, *amount, earlier));
                }
            }
        }
        claims.sort_unstable_by_key(|c| (c.0, !c.1));
        let as_anyone = self.room_beside(id, free, end, claims.iter().map(|c| (c.0, c.1, c.2)));
        match my_claim {
            Some(claim) => {
                let earlier = claims.iter().filter(|c| c.3).map(|c| (c.0, c.1, c.2));
                let as_holder = self.room_beside(id, free, end, earlier);
                let as_holder = Resources {
                    cpu_millis: as_holder.cpu_millis.min(claim.cpu_millis),
                    memory_bytes: as_holder.memory_bytes.min(claim.memory_bytes),
                    scalars: std::array::from_fn(|i| as_holder.scalars[i].min(claim.scalars[i])),
                };
                if as_holder.fits_in(&as_anyone) { as_anyone } else { as_holder }
            }
            None => as_anyone,
        }
    }

    /// Free room on a node that leaves every claim (sorted by start) its room when it starts.
    fn room_beside(
        &self,
        id: NodeId,
        free: Resources,
        end: Option<Time>,
        claims: impl Iterator<Item = (Time, bool, Resources)>,
    ) -> Resources {
        let mut avail = free;
        let mut claimed = Resources::ZERO;
        for (start, nomination, amount) in claims {
            // Every claim starting by `start` needs its room then, all together.
            claimed += amount;
            // Room nominated for a preemptor is protected outright: estimates
            // (the backfiller's or anyone's) never open it, only its victims stopping.
            if !nomination && end.is_some_and(|e| e <= start) {
                continue;
            }
            let spare_then = self.free_at(id, start, !nomination).saturating_sub(&claimed);
            avail = Resources {
                cpu_millis: avail.cpu_millis.min(spare_then.cpu_millis),
                memory_bytes: avail.memory_bytes.min(spare_then.memory_bytes),
                scalars: std::array::from_fn(|i| avail.scalars[i].min(spare_then.scalars[i])),
            };
        }
        avail
    }

    /// Free room on a node at time `t`, counting slots expected to end by
    /// then: stopping ones always, others only if `trust_estimates`.
    pub(crate) fn free_at(&self, id: NodeId, t: Time, trust_estimates: bool) -> Resources {
        let node = self.node(id);
        let mut held = Resources::ZERO;
        for a in &node.allocs {
            let alloc = &self.allocs[a];
            let ends = (alloc.stopping || trust_estimates) && self.expected_end(alloc).is_some_and(|e| e <= t);
            if !ends {
                held += alloc.res;
            }
        }
        node.capacity.saturating_sub(&held)
    }

    /// How many more slots of `g` the node takes now.
    pub(crate) fn fit_count(&self, g: &Gang, id: NodeId, already: u32, domain: Domain) -> u32 {
        let node = self.node(id);
        if node.state != NodeState::Ready || node.exclusive_allocs > 0 {
            return 0;
        }
        let c = &g.spec.constraints;
        if !c.labels.iter().all(|(k, v)| node.labels.get(k) == Some(v)) {
            return 0;
        }
        if let Some((k, v)) = domain
            && node.labels.get(k) != Some(v)
        {
            return 0;
        }
        if let Some(group) = g.group
            && node.groups.iter().any(|&(gr, n)| gr == group && n > 0)
        {
            return 0;
        }
        if c.exclusive && !(node.allocated.is_zero() && node.reserved.is_zero()) {
            return 0;
        }
        let per_node_cap = if c.one_slot_per_node || g.group.is_some() {
            if already > 0 || (g.phase == GangPhase::Running && node.allocs.iter().any(|a| self.allocs[a].gang == g.id))
            {
                return 0;
            }
            1
        } else {
            u32::MAX
        };
        let avail = self.available_for(g, id);
        avail.count_fitting(&g.spec.slot).saturating_sub(already).min(per_node_cap)
    }

    /// Finds room for `need..=want` slots of `g` in one of its domains, or
    /// reports how many fit at best (`Err(k)`, with k < need).
    pub(crate) fn find_nodes(&self, g: &Gang, need: u32, want: u32) -> Result<(Choice, Option<String>), u32> {
        if g.spec.constraints.within.is_none() {
            return self.find_nodes_in(g, need, want, None).map(|c| (c, None));
        }
        let mut best = 0;
        for domain in self.domains(g) {
            match self.find_nodes_in(g, need, want, domain.as_ref()) {
                Ok(choice) => return Ok((choice, domain.map(|(_, v)| v))),
                Err(k) => best = best.max(k),
            }
        }
        Err(best)
    }

    /// Finds room for `need..=want` slots of `g` on nodes of `domain`.
    /// Preferred (cached-data) nodes come first.
    fn find_nodes_in(&self, g: &Gang, need: u32, want: u32, domain: Domain) -> Result<Choice, u32> {
        let mut chosen: Choice = Vec::new();
        let mut placed = 0u32;
        let take = |engine: &Engine, id: NodeId, chosen: &mut Choice, placed: &mut u32| {
            let already = chosen.iter().find(|(n, _)| *n == id).map_or(0, |(_, k)| *k);
            let k = engine.fit_count(g, id, already, domain).min(want - *placed);
            if k > 0 {
                match chosen.iter_mut().find(|(n, _)| *n == id) {
                    Some(entry) => entry.1 += k,
                    None => chosen.push((id, k)),
                }
                *placed += k;
            }
        };
        if !g.locality.is_empty() {
            let mut prefs = g.locality.clone();
            prefs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            for (id, _) in prefs {
                if placed >= want {
                    break;
                }
                take(self, id, &mut chosen, &mut placed);
            }
        }
        if placed < want {
            let slot = g.spec.slot;
            match g.spec.constraints.placement {
                Placement::Pack => {
                    for &(_, _, _, id) in self.free_index.fitting(slot.cpu_millis, slot.memory_bytes) {
                        if placed >= want {
                            break;
                        }
                        take(self, NodeId(id), &mut chosen, &mut placed);
                    }
                }
                Placement::Spread => {
                    for &(_, _, _, id) in self.free_index.fitting(slot.cpu_millis, slot.memory_bytes).rev() {
                        if placed >= want {
                            break;
                        }
                        take(self, NodeId(id), &mut chosen, &mut placed);
                    }
                }
            }
        }
        if placed >= need { Ok(chosen) } else { Err(placed) }
    }

    /// Starts slots of `g` on the chosen nodes, emitting one `Place` per slot.
    pub(crate) fn commit(&mut self, gang: GangId, choice: &Choice, elastic: bool) {
        for &(node_id, count) in choice {
            for _ in 0..count {
                let g = self.gangs.get_mut(&gang).expect("placing a live gang");
                let slot = g.todo.pop().expect("placing only slots with work left");
                let alloc_id = AllocId(self.next_alloc);
                self.next_alloc += 1;
                let res = self.attach(gang, slot, node_id, alloc_id, self.now);
                self.emit(Decision::Place { gang, slot, node: node_id, alloc: alloc_id, resources: res, elastic });
            }
            self.reindex(node_id);
        }
    }

    /// Adopts a slot that is already running (after a coordinator restart).
    pub(crate) fn restore(
        &mut self,
        alloc: AllocId,
        gang: GangId,
        slot: u32,
        node: NodeId,
        started: Time,
    ) -> Result<(), crate::engine::EngineError> {
        let why = |w: &str| crate::engine::EngineError::Restore { alloc, why: w.to_string() };
        if self.allocs.contains_key(&alloc) {
            return Err(why("the allocation already exists"));
        }
        let g = self.gangs.get(&gang).ok_or_else(|| why("its gang is not known"))?;
        if g.slots.get(slot as usize) != Some(&SlotState::Todo) {
            return Err(why("its slot is not waiting to run"));
        }
        let n = self.nodes.get(node.0 as usize).and_then(|n| n.as_ref()).ok_or_else(|| why("its node is not known"))?;
        if n.state == NodeState::Lost || !(n.allocated + g.spec.slot).fits_in(&n.capacity) {
            return Err(why("its node is lost or has no room for it"));
        }
        if g.phase == GangPhase::Pending {
            self.remove_pending(gang);
        }
        let g = self.gangs.get_mut(&gang).expect("checked above");
        g.phase = GangPhase::Running;
        g.attempts = g.attempts.max(1);
        g.todo.retain(|&s| s != slot);
        self.next_alloc = self.next_alloc.max(alloc.0 + 1);
        self.attach(gang, slot, node, alloc, started);
        self.reindex(node);
        self.update_growable(gang);
        Ok(())
    }

    /// Books a slot on a node: gang, queue, node and index accounting.
    fn attach(&mut self, gang: GangId, slot: u32, node_id: NodeId, alloc_id: AllocId, now: Time) -> Resources {
        let g = self.gangs.get_mut(&gang).expect("placing a live gang");
        g.slots[slot as usize] = SlotState::Running(alloc_id);
        g.running += 1;
        let res = g.spec.slot;
        let alloc = Alloc {
            gang,
            slot,
            node: node_id,
            res,
            started: now,
            expected_end: g.estimate.map(|e| now + e),
            limit_end: g.spec.estimated_runtime.map(|e| now + e),
            stopping: false,
            exclusive: g.spec.constraints.exclusive,
            group: g.group,
        };
        let (rank, queue) = (g.rank, g.queue);
        if self.config.classes[rank].preemptible {
            self.preemptible_running[rank] += 1;
        }
        self.queues[queue].allocated += res;
        let node = self.nodes[node_id.0 as usize].as_mut().expect("valid node");
        node.allocated += res;
        node.allocs.push(alloc_id);
        if let Some(end) = alloc.expected_end {
            node.releases.insert((end, alloc_id));
        }
        if alloc.exclusive {
            node.exclusive_allocs += 1;
        }
        if let Some(group) = alloc.group {
            match node.groups.iter_mut().find(|(gr, _)| *gr == group) {
                Some(e) => e.1 += 1,
                None => node.groups.push((group, 1)),
            }
        }
        self.allocs.insert(alloc_id, alloc);
        res
    }

    /// Removes an allocation from its node, freeing its room, and returns
    /// it. Gang bookkeeping is the caller's.
    pub(crate) fn release_alloc(&mut self, id: AllocId) -> Option<Alloc> {
        let alloc = self.allocs.remove(&id)?;
        let node = self.nodes[alloc.node.0 as usize].as_mut().expect("valid node");
        node.allocated -= alloc.res;
        if let Some(end) = alloc.expected_end {
            node.releases.remove(&(end, id));
        }
        if let Some(pos) = node.allocs.iter().position(|a| *a == id) {
            node.allocs.swap_remove(pos);
        }
        if alloc.exclusive {
            node.exclusive_allocs -= 1;
        }
        if let Some(group) = alloc.group {
            if let Some(e) = node.groups.iter_mut().find(|(gr, _)| *gr == group) {
                e.1 -= 1;
            }
            node.groups.retain(|(_, n)| *n > 0);
        }
        let drained = node.state == NodeState::Draining && node.allocs.is_empty();
        self.reindex_later(alloc.node);
        if drained {
            self.emit(Decision::NodeDrained { node: alloc.node });
        }
        Some(alloc)
    }
}
