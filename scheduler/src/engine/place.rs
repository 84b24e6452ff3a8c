//! Where a gang's slots fit.
//!
//! Ready nodes sit in the [free index](super::free_index) keyed by (size
//! class, free cpu, free memory, id). Packing walks the nodes that fit
//! upwards (best fit: the fullest node that still fits comes first);
//! spreading walks them downwards (worst fit). A walk stops as soon as
//! enough slots are found, so placing a slot costs a few index steps, not a
//! scan of the cluster.

use crate::engine::free_index::FreeIndex;
use crate::engine::topology::PairId;
use crate::engine::{Alloc, Engine, Gang, GangPhase, SlotState};
use crate::event::Decision;
use crate::model::{AllocId, GangId, NodeId, NodeState, Placement, Time};
use crate::resources::Resources;

/// Nodes chosen for a gang, with how many slots go on each.
pub(crate) type Choice = Vec<(NodeId, u32)>;

/// What a search found, in buffers kept between searches so that a pass
/// allocates nothing.
#[derive(Debug, Default)]
pub(crate) struct Search {
    pub chosen: Choice,
    /// In a walk over every domain: (node, slots it takes, its domain).
    picks: Vec<(NodeId, u32, PairId)>,
    /// Slots found so far in each domain.
    per_domain: Vec<(PairId, u32)>,
}

/// A label pair a node must carry besides the gang's own filters (a `within` domain).
pub(crate) type Domain = Option<PairId>;

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
    /// (or takes it out when it accepts no slots), and the label indexes
    /// that track its labels with it.
    pub(crate) fn reindex(&mut self, id: NodeId) {
        let small_first = self.config.policy.prefer_small_nodes;
        let node = self.nodes[id.0 as usize].as_mut().expect("valid node");
        node.index_stale = false;
        let old = node.index_key.take().map(|(s, c, m)| (s, c, m, id.0));
        let new = (node.state == NodeState::Ready).then(|| {
            let free = node.free();
            let size = if small_first { node.capacity.cpu_millis } else { 0 };
            (size, free.cpu_millis, free.memory_bytes, id.0)
        });
        node.index_key = new.map(|(s, c, m, _)| (s, c, m));
        if old == new {
            return;
        }
        match (&old, new) {
            (Some(old), Some(new)) => self.free_index.replace(old, new),
            (Some(old), None) => self.free_index.remove(old),
            (None, Some(new)) => self.free_index.insert(new),
            (None, None) => {}
        }
        if old.is_some() != new.is_some() {
            self.topology.ready_changed(node.capacity, &node.label_ids, new.is_some());
        }
        // The label indexes that track it catch up when next searched.
        for (j, &p) in node.label_ids.iter().enumerate() {
            if !node.label_stale[j] && self.topology.tracks(p) {
                node.label_stale[j] = true;
                self.topology.stale[p as usize].push(id);
            }
        }
    }

    /// Brings the label indexes of these pairs up to date.
    pub(crate) fn catch_up(&mut self, pairs: impl IntoIterator<Item = PairId>) {
        for p in pairs {
            if self.topology.stale[p as usize].is_empty() {
                continue;
            }
            let stale = std::mem::take(&mut self.topology.stale[p as usize]);
            for &id in &stale {
                let Some(node) = self.nodes[id.0 as usize].as_mut() else { continue };
                let Ok(j) = node.label_ids.binary_search(&p) else { continue };
                node.label_stale[j] = false;
                let new = node.index_key.map(|(s, c, m)| (s, c, m, id.0));
                let old = std::mem::replace(&mut node.label_entries[j], new);
                let Some(index) = self.topology.label_index[p as usize].as_mut() else { continue };
                match (&old, new) {
                    (Some(old), Some(new)) => index.replace(old, new),
                    (Some(old), None) => index.remove(old),
                    (None, Some(new)) => index.insert(new),
                    (None, None) => {}
                }
            }
            // Keep the list's buffer for the next round.
            let mut stale = stale;
            stale.clear();
            self.topology.stale[p as usize] = stale;
        }
    }

    /// Brings up to date the label indexes a search for `g` reads: its
    /// selectors and its domain; with `all_domains`, every domain of its key.
    pub(crate) fn catch_up_for(&mut self, id: GangId, all_domains: bool) {
        let g = &self.gangs[&id];
        for i in 0..g.filters.label_pairs().len() {
            let pair = self.gangs[&id].filters.label_pairs()[i];
            self.catch_up([pair]);
        }
        let g = &self.gangs[&id];
        if let Some(pair) = g.domain {
            self.catch_up([pair]);
        } else if all_domains && let Some(key) = g.filters.within {
            let pairs: Vec<PairId> =
                self.topology.domains_of(key).map(|d| d.values().map(|&(p, _)| p).collect()).unwrap_or_default();
            self.catch_up(pairs);
        }
    }

    /// Takes a node out of every index (before its capacity or labels change).
    pub(crate) fn unindex(&mut self, id: NodeId) {
        let node = self.nodes[id.0 as usize].as_mut().expect("valid node");
        if let Some((s, c, m)) = node.index_key.take() {
            self.free_index.remove(&(s, c, m, id.0));
            self.topology.ready_changed(node.capacity, &node.label_ids, false);
        }
        for (j, &p) in node.label_ids.iter().enumerate() {
            if let (Some(entry), Some(index)) =
                (node.label_entries[j].take(), self.topology.label_index[p as usize].as_mut())
            {
                index.remove(&entry);
            }
            if node.label_stale[j] {
                node.label_stale[j] = false;
                self.topology.stale[p as usize].retain(|n| *n != id);
            }
        }
    }

    /// Whether the node may ever hold a slot of `g` (labels, size), ignoring what runs there now.
    pub(crate) fn statically_fits(&self, g: &Gang, id: NodeId, domain: Domain) -> bool {
        let node = self.node(id);
        node.state != NodeState::Lost
            && g.spec.slot.fits_in(&node.capacity)
            && g.filters.ever(&node.label_ids)
            && domain.is_none_or(|d| node.label_ids.binary_search(&d).is_ok())
    }

    /// The smallest index holding every node a search for `g` in `domain`
    /// could use: a label index when the gang selects on labels or a
    /// domain, else the whole free index.
    pub(crate) fn search_index(&self, g: &Gang, domain: Domain) -> &FreeIndex {
        let mut best = &self.free_index;
        let mut best_len = usize::MAX;
        for pair in domain.iter().chain(g.filters.label_pairs()) {
            if let Some(index) = self.topology.index_of(*pair) {
                let len = index.len();
                if len < best_len {
                    best = index;
                    best_len = len;
                }
            }
        }
        best
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
                    if res.exclusive {
                        // Victims are leaving so that an exclusive gang finds the node idle.
                        return Resources::ZERO;
                    }
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

    /// How many more slots of `g` the node takes now, up to `want`.
    pub(crate) fn fit_count(&self, g: &Gang, id: NodeId, already: u32, want: u32, domain: Domain) -> u32 {
        let node = self.node(id);
        if node.state != NodeState::Ready || node.exclusive_allocs > 0 {
            return 0;
        }
        if let Some(d) = domain
            && node.label_ids.binary_search(&d).is_err()
        {
            return 0;
        }
        let cap = g.filters.now(self, g, id, node, already);
        if cap == 0 {
            return 0;
        }
        let avail = self.available_for(g, id);
        let limit = cap.saturating_add(already).min(want.saturating_add(already));
        avail.count_fitting_up_to(&g.spec.slot, limit).saturating_sub(already).min(cap)
    }

    /// Finds room for `need..=want` slots of `g` in one of its domains,
    /// filling `search.chosen`; returns the domain used, or how many slots
    /// fit at best (`Err(k)`, with k < need).
    ///
    /// A gang under `within` that has no domain yet walks the nodes once,
    /// in its placement order, counting what each domain could hold, and
    /// takes the first domain to reach `need`: in packing order that is the
    /// domain whose fullest nodes fit it, so domains fill one by one.
    pub(crate) fn find_nodes(&self, g: &Gang, need: u32, want: u32, search: &mut Search) -> Result<Domain, u32> {
        let Some(key) = g.filters.within.filter(|_| g.domain.is_none()) else {
            return self.find_nodes_in(g, need, want, g.domain, &mut search.chosen).map(|()| g.domain);
        };
        search.picks.clear();
        search.per_domain.clear();
        let mut found = None;
        // Takes a node's room into its domain's count; returns the domain once it holds `need`.
        let visit = |engine: &Engine, id: NodeId, search: &mut Search| -> Option<PairId> {
            let node = engine.node(id);
            let &domain = node.label_ids.iter().find(|&&p| engine.topology.key_of(p) == key)?;
            let k = engine.fit_count(g, id, 0, need, None);
            if k == 0 {
                return None;
            }
            search.picks.push((id, k, domain));
            let total = match search.per_domain.iter_mut().find(|(d, _)| *d == domain) {
                Some(entry) => {
                    entry.1 += k;
                    entry.1
                }
                None => {
                    search.per_domain.push((domain, k));
                    k
                }
            };
            (total >= need).then_some(domain)
        };
        for &(id, _) in &g.locality {
            if found.is_some() {
                break;
            }
            found = visit(self, id, search);
        }
        let slot = g.spec.slot;
        let index = self.search_index(g, None);
        let cached = |id: u32| g.locality.iter().any(|(n, _)| n.0 == id);
        match g.spec.constraints.placement {
            Placement::Pack => {
                for &(_, _, _, id) in index.fitting(slot.cpu_millis, slot.memory_bytes) {
                    if found.is_some() {
                        break;
                    }
                    if !cached(id) {
                        found = visit(self, NodeId(id), search);
                    }
                }
            }
            Placement::Spread => {
                for &(_, _, _, id) in index.fitting(slot.cpu_millis, slot.memory_bytes).rev() {
                    if found.is_some() {
                        break;
                    }
                    if !cached(id) {
                        found = visit(self, NodeId(id), search);
                    }
                }
            }
        }
        let Some(domain) = found else {
            return Err(search.per_domain.iter().map(|(_, k)| *k).max().unwrap_or(0));
        };
        search.chosen.clear();
        let mut left = need;
        for &(id, k, d) in &search.picks {
            if d == domain && left > 0 {
                search.chosen.push((id, k.min(left)));
                left -= k.min(left);
            }
        }
        Ok(Some(domain))
    }

    /// Finds room for `need..=want` slots of `g` on nodes of `domain`.
    /// Preferred (cached-data) nodes come first.
    fn find_nodes_in(&self, g: &Gang, need: u32, want: u32, domain: Domain, chosen: &mut Choice) -> Result<(), u32> {
        chosen.clear();
        let mut placed = 0u32;
        let take = |engine: &Engine, id: NodeId, chosen: &mut Choice, placed: &mut u32| {
            let already = chosen.iter().find(|(n, _)| *n == id).map_or(0, |(_, k)| *k);
            let k = engine.fit_count(g, id, already, want - *placed, domain);
            if k > 0 {
                match chosen.iter_mut().find(|(n, _)| *n == id) {
                    Some(entry) => entry.1 += k,
                    None => chosen.push((id, k)),
                }
                *placed += k;
            }
        };
        // Cached-data nodes first, heaviest weight first (the gang's list is kept in that order).
        for &(id, _) in &g.locality {
            if placed >= want {
                break;
            }
            take(self, id, chosen, &mut placed);
        }
        if placed < want {
            let slot = g.spec.slot;
            let index = self.search_index(g, domain);
            match g.spec.constraints.placement {
                Placement::Pack => {
                    for &(_, _, _, id) in index.fitting(slot.cpu_millis, slot.memory_bytes) {
                        if placed >= want {
                            break;
                        }
                        take(self, NodeId(id), chosen, &mut placed);
                    }
                }
                Placement::Spread => {
                    for &(_, _, _, id) in index.fitting(slot.cpu_millis, slot.memory_bytes).rev() {
                        if placed >= want {
                            break;
                        }
                        take(self, NodeId(id), chosen, &mut placed);
                    }
                }
            }
        }
        if placed >= need { Ok(()) } else { Err(placed) }
    }

    /// Starts slots of `g` on the chosen nodes, emitting one `Place` per slot.
    pub(crate) fn commit(&mut self, gang: GangId, choice: &Choice, elastic: bool) {
        for &(node_id, count) in choice {
            for _ in 0..count {
                let g = self.gangs.get_mut(&gang).expect("placing a live gang");
                // The lowest to-do slot whose restart backoff is over.
                let now = self.now;
                let at = g.todo.iter().rposition(|&s| g.ready_at[s as usize] <= now).expect("placing only ready slots");
                let slot = g.todo.remove(at);
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
        g.attempts = g.attempts.max(g.failures + 1);
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
