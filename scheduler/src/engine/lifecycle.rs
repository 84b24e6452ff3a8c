//! Slots ending and what that does to their gang: elastic slots go back to
//! the gang's to-do list, a gang that falls below `min` is torn down and
//! re-queued whole, a gang out of attempts fails, a gang with all its work
//! done succeeds.

use crate::engine::{Engine, EngineError, GangPhase, PendingReason, SlotState};
use crate::event::{Decision, GangOutcome, RequeueCause, SlotOutcome, StopReason};
use crate::model::{AllocId, GangId, NodeId, NodeState, OnDrain, Restart};
use crate::resources::Resources;

impl Engine {
    pub(crate) fn slot_finished(&mut self, id: AllocId, outcome: SlotOutcome) -> Result<(), EngineError> {
        let alloc = self.release_alloc(id).ok_or(EngineError::UnknownAlloc(id))?;
        if alloc.stopping {
            // A stop we asked for has completed: the gang was already updated.
            if let Some(deadline) = alloc.expected_end {
                self.terminating.remove(&(deadline, id));
            }
            return Ok(());
        }
        let gang = alloc.gang;
        if self.gangs[&gang].spec.restart == Restart::Always && outcome != SlotOutcome::Lost {
            self.restart_slot(gang, alloc.slot, alloc.res, alloc.started);
            return Ok(());
        }
        match outcome {
            SlotOutcome::Succeeded if self.gangs[&gang].spec.restart == Restart::Leader && alloc.slot == 0 => {
                self.slot_left(gang, alloc.slot, alloc.res, SlotState::Done);
                self.finish(gang, GangOutcome::Succeeded, String::new());
            }
            SlotOutcome::Succeeded => {
                let g = &self.gangs[&gang];
                let ran = self.now - alloc.started;
                self.finished_runtime_ms += ran as u128;
                self.finished_slots += 1;
                let accuracy = g.spec.estimated_runtime.filter(|l| *l > 0).map(|l| (ran as f64 / l as f64).min(1.0));
                let queue = &mut self.queues[g.queue];
                if let Some(a) = accuracy {
                    queue.recent_accuracy = [Some(a), queue.recent_accuracy[0]];
                }
                queue.predictions_stale = self.config.policy.predict_runtimes;
                self.slot_left(gang, alloc.slot, alloc.res, SlotState::Done);
                self.after_progress(gang);
            }
            SlotOutcome::Lost => {
                // Not the gang's failure: no attempt used, no backoff.
                self.slot_left(gang, alloc.slot, alloc.res, SlotState::Todo);
                let g = &self.gangs[&gang];
                if g.running < g.spec.min && g.done < g.spec.total_completions() {
                    let why = format!("slot {} was lost with its host", alloc.slot);
                    self.teardown(gang, RequeueCause::Lost, &why);
                } else {
                    self.after_progress(gang);
                }
            }
            SlotOutcome::Failed | SlotOutcome::Stopped => {
                self.slot_left(gang, alloc.slot, alloc.res, SlotState::Todo);
                let g = self.gangs.get_mut(&gang).expect("a live alloc has a live gang");
                g.failures += 1;
                let (failures, max_attempts) = (g.failures, g.spec.max_attempts);
                if failures >= max_attempts {
                    let why = format!("slot {} failed; {failures} of {max_attempts} attempts used", alloc.slot);
                    self.finish(gang, GangOutcome::Failed, why);
                } else if g.rigid() || g.running < g.spec.min {
                    let backoff = self.config.policy.retry_backoff.saturating_mul(1 << (failures - 1).min(16));
                    let why = format!("slot {} failed (failure {failures} of {max_attempts}); retrying", alloc.slot);
                    self.teardown(gang, RequeueCause::Failed, &why);
                    let now = self.now;
                    let g = self.gangs.get_mut(&gang).expect("torn-down gang stays");
                    g.eligible_at = now + backoff;
                } else {
                    self.after_progress(gang);
                }
            }
        }
        Ok(())
    }

    /// A slot of a `Restart::Always` gang ended on its own: it runs again
    /// after a backoff that doubles per restart in a row (reset once it had
    /// stayed up long enough). The rest of the gang keeps running.
    fn restart_slot(&mut self, gang: GangId, slot: u32, res: Resources, started: crate::model::Time) {
        self.slot_left(gang, slot, res, SlotState::Todo);
        let policy = &self.config.policy;
        let (base, cap, reset_after) = (policy.restart_backoff, policy.restart_backoff_cap, policy.restart_reset_after);
        let now = self.now;
        let g = self.gangs.get_mut(&gang).expect("a live alloc has a live gang");
        let i = slot as usize;
        g.restarts[i] = if now.saturating_sub(started) >= reset_after { 1 } else { g.restarts[i] + 1 };
        let backoff = base.saturating_mul(1 << (g.restarts[i] - 1).min(20)).min(cap);
        g.ready_at[i] = now + backoff;
        if g.running == 0 {
            // Every instance is down: the gang waits as a whole for its first ready slot.
            self.back_to_pending(gang);
        } else {
            self.update_growable(gang);
        }
    }

    /// A new ceiling on a gang's slots: added slots wait to be placed,
    /// slots at or above the new ceiling stop (and are forgotten).
    pub(crate) fn resize(&mut self, gang: GangId, max: u32) -> Result<(), EngineError> {
        let g = self.gangs.get(&gang).ok_or(EngineError::UnknownGang(gang))?;
        if max == 0 || g.spec.restart != Restart::Always {
            return Err(EngineError::InvalidGang {
                name: g.spec.name.clone(),
                why: "only restarting gangs (services) can be resized, to at least one slot".into(),
            });
        }
        let old = g.slots.len() as u32;
        let doomed: Vec<AllocId> = g.slots[max.min(old) as usize..]
            .iter()
            .filter_map(|s| match s {
                SlotState::Running(a) => Some(*a),
                _ => None,
            })
            .collect();
        for a in doomed {
            self.stop_alloc(a, StopReason::Scaled);
        }
        let g = self.gangs.get_mut(&gang).expect("checked above");
        g.spec.max = max;
        g.spec.min = g.spec.min.min(max);
        let n = max as usize;
        g.slots.resize(n, SlotState::Todo);
        g.ready_at.resize(n, 0);
        g.restarts.resize(n, 0);
        g.todo = (0..max).rev().filter(|&s| g.slots[s as usize] == SlotState::Todo).collect();
        if g.phase == GangPhase::Running && g.running < g.spec.min {
            // What is left cannot run alone: the gang starts over whole.
            self.teardown(gang, RequeueCause::Resized, "resized below what it needs to run");
        }
        self.update_growable(gang);
        Ok(())
    }

    /// New cached-data locality for a gang's next placements.
    pub(crate) fn locate(&mut self, gang: GangId, locality: Vec<(String, u32)>) -> Result<(), EngineError> {
        let resolved = self.resolve_locality(&locality);
        let g = self.gangs.get_mut(&gang).ok_or(EngineError::UnknownGang(gang))?;
        g.locality = resolved;
        g.spec.locality = locality;
        Ok(())
    }

    /// Known nodes of `locality`, heaviest first (then by id, for determinism).
    pub(crate) fn resolve_locality(&self, locality: &[(String, u32)]) -> Vec<(NodeId, u32)> {
        let mut resolved: Vec<(NodeId, u32)> =
            locality.iter().filter_map(|(name, w)| self.node_names.get(name).map(|&n| (n, *w))).collect();
        resolved.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        resolved
    }

    /// Bookkeeping for a slot that stops counting as running.
    pub(crate) fn slot_left(&mut self, gang: GangId, slot: u32, res: Resources, to: SlotState) {
        let g = self.gangs.get_mut(&gang).expect("slot of a live gang");
        g.slots[slot as usize] = to;
        g.running -= 1;
        match to {
            SlotState::Done => g.done += 1,
            SlotState::Todo => {
                // Keep the to-do list sorted high to low so the lowest index runs next.
                let pos = g.todo.partition_point(|&s| s > slot);
                g.todo.insert(pos, slot);
            }
            SlotState::Running(_) => unreachable!("a leaving slot is not running"),
        }
        let (rank, queue) = (g.rank, g.queue);
        self.queues[queue].allocated -= res;
        if self.config.classes[rank].preemptible {
            self.preemptible_running[rank] -= 1;
        }
    }

    /// After a slot succeeded or an elastic slot left: finish, wait for the
    /// next wave, or grow again.
    pub(crate) fn after_progress(&mut self, gang: GangId) {
        let g = &self.gangs[&gang];
        if g.done == g.spec.total_completions() {
            self.finish(gang, GangOutcome::Succeeded, String::new());
        } else if g.running == 0 {
            // The next wave needs `min` slots together again.
            self.back_to_pending(gang);
        } else {
            self.update_growable(gang);
        }
    }

    /// A running gang with no slot left running waits in the queue again.
    fn back_to_pending(&mut self, gang: GangId) {
        let g = self.gangs.get_mut(&gang).expect("live gang");
        g.phase = GangPhase::Pending;
        g.domain = None;
        g.blocker = PendingReason::NotYetTried;
        self.update_growable(gang);
        self.add_pending(gang);
    }

    /// Lists the gang among the growable ones, or takes it off, as its state says.
    pub(crate) fn update_growable(&mut self, gang: GangId) {
        let g = self.gangs.get_mut(&gang).expect("live gang");
        let growable = g.phase == GangPhase::Running && g.running < g.spec.max && !g.todo.is_empty();
        if growable == g.growable {
            return;
        }
        g.growable = growable;
        let key = (g.rank, g.seq, g.id);
        if growable {
            self.growable.insert(key);
        } else {
            self.growable.remove(&key);
        }
    }

    /// SIGTERM one running slot; its room stays held until it stops or its grace ends.
    pub(crate) fn stop_alloc(&mut self, id: AllocId, reason: StopReason) {
        let deadline = self.now + self.config.policy.grace_period;
        let alloc = self.allocs.get_mut(&id).expect("stopping a live alloc");
        debug_assert!(!alloc.stopping);
        alloc.stopping = true;
        let before = alloc.expected_end.replace(deadline);
        let (gang, slot, node, res) = (alloc.gang, alloc.slot, alloc.node, alloc.res);
        let n = self.nodes[node.0 as usize].as_mut().expect("valid node");
        if let Some(end) = before {
            n.releases.remove(&(end, id));
        }
        n.releases.insert((deadline, id));
        self.terminating.insert((deadline, id));
        self.slot_left(gang, slot, res, SlotState::Todo);
        self.emit(Decision::Stop { gang, slot, node, alloc: id, reason, deadline });
    }

    fn running_allocs(&self, gang: GangId) -> Vec<AllocId> {
        self.gangs[&gang]
            .slots
            .iter()
            .filter_map(|s| match s {
                SlotState::Running(a) => Some(*a),
                _ => None,
            })
            .collect()
    }

    /// Stops every running slot of a gang and puts it back in the queue, whole.
    pub(crate) fn teardown(&mut self, gang: GangId, cause: RequeueCause, why: &str) {
        for a in self.running_allocs(gang) {
            self.stop_alloc(a, StopReason::GangTornDown);
        }
        self.requeue(gang, cause, why);
    }

    /// Puts a gang with no running slots back in the queue.
    pub(crate) fn requeue(&mut self, gang: GangId, cause: RequeueCause, why: &str) {
        let g = self.gangs.get_mut(&gang).expect("live gang");
        debug_assert_eq!(g.running, 0);
        if g.rigid() {
            // All-or-nothing gangs restart from scratch.
            g.done = 0;
            g.slots.iter_mut().for_each(|s| *s = SlotState::Todo);
            g.todo = (0..g.slots.len() as u32).rev().collect();
        }
        let was_pending = g.phase == GangPhase::Pending;
        g.phase = GangPhase::Pending;
        g.domain = None;
        g.blocker = PendingReason::NotYetTried;
        let attempts = g.attempts;
        self.update_growable(gang);
        if !was_pending {
            self.add_pending(gang);
        }
        self.emit(Decision::Requeued { gang, attempts, cause, reason: why.to_string() });
    }

    /// Ends a gang for good, stopping whatever still runs.
    pub(crate) fn finish(&mut self, gang: GangId, outcome: GangOutcome, reason: String) {
        let stop_reason = match outcome {
            GangOutcome::Cancelled => StopReason::Cancelled,
            GangOutcome::Succeeded => StopReason::Finished,
            _ => StopReason::GangFailed,
        };
        for a in self.running_allocs(gang) {
            self.stop_alloc(a, stop_reason.clone());
        }
        self.drop_reservation(gang);
        self.remove_pending(gang);
        let g = self.gangs.remove(&gang).expect("live gang");
        if g.growable {
            self.growable.remove(&(g.rank, g.seq, g.id));
        }
        self.emit(Decision::Finished { gang, outcome, reason });
    }

    pub(crate) fn cancel(&mut self, gang: GangId) -> Result<(), EngineError> {
        if !self.gangs.contains_key(&gang) {
            return Err(EngineError::UnknownGang(gang));
        }
        self.finish(gang, GangOutcome::Cancelled, "cancelled".to_string());
        Ok(())
    }

    pub(crate) fn lose_node(&mut self, id: NodeId) -> Result<(), EngineError> {
        let node = self.nodes.get_mut(id.0 as usize).and_then(|n| n.as_mut()).ok_or(EngineError::UnknownNode(id))?;
        if node.state == NodeState::Lost {
            return Ok(());
        }
        node.state = NodeState::Lost;
        let capacity = node.capacity;
        let allocs = node.allocs.clone();
        self.total -= capacity;
        self.topology_version += 1;
        self.reindex(id);
        let mut hit = Vec::new();
        for a in allocs {
            let alloc = self.release_alloc(a).expect("a node lists only live allocations");
            if alloc.stopping {
                if let Some(deadline) = alloc.expected_end {
                    self.terminating.remove(&(deadline, a));
                }
                continue;
            }
            self.slot_left(alloc.gang, alloc.slot, alloc.res, SlotState::Todo);
            if !hit.contains(&alloc.gang) {
                hit.push(alloc.gang);
            }
        }
        for gang in hit {
            let g = &self.gangs[&gang];
            if g.running < g.spec.min && g.done < g.spec.total_completions() {
                let why = format!("{} was lost", self.node(id).name);
                self.teardown(gang, RequeueCause::Lost, &why);
            } else {
                self.after_progress(gang);
            }
        }
        let holders: Vec<_> =
            self.reservations.iter().filter(|(_, r)| r.nodes.iter().any(|(n, _)| *n == id)).map(|(g, _)| *g).collect();
        for g in holders {
            self.drop_reservation(g);
        }
        Ok(())
    }

    /// Moves the movable slots off a draining node; batch slots finish there.
    pub(crate) fn drain(&mut self, id: NodeId) {
        let allocs = self.node(id).allocs.clone();
        let mut hit = Vec::new();
        for a in allocs {
            let alloc = &self.allocs[&a];
            if alloc.stopping {
                continue;
            }
            let gang = alloc.gang;
            let rank = self.gangs[&gang].rank;
            if self.config.classes[rank].on_drain == OnDrain::Move {
                self.stop_alloc(a, StopReason::Drained);
                if !hit.contains(&gang) {
                    hit.push(gang);
                }
            }
        }
        for gang in hit {
            let g = &self.gangs[&gang];
            if g.running < g.spec.min {
                let why = format!("{} is draining", self.node(id).name);
                self.teardown(gang, RequeueCause::Drained, &why);
            } else {
                self.update_growable(gang);
            }
        }
        if self.node(id).allocs.is_empty() {
            self.emit(Decision::NodeDrained { node: id });
        }
    }
}
