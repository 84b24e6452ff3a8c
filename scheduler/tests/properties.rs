//! Properties of the engine over random event sequences.

mod common;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use cohort_scheduler::*;
use common::{GIB, cpu};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Submit {
        min: u32,
        extra: u32,
        cores: u64,
        class: usize,
        queue: usize,
        one_per_node: bool,
        est: Option<u64>,
        constraint: Constraint,
    },
    Finish {
        pick: usize,
        ok: bool,
    },
    /// A slot gone with its host (not its gang's failure).
    Lose1 {
        pick: usize,
    },
    /// A service (restarting slots) of `instances`.
    Service {
        instances: u32,
        cores: u64,
        class: usize,
    },
    Resize {
        pick: usize,
        max: u32,
    },
    Cancel {
        pick: usize,
    },
    Advance {
        secs: u64,
    },
    Lose {
        node: u32,
    },
    Add,
    Drain {
        node: u32,
    },
    Cordon {
        node: u32,
    },
    Uncordon {
        node: u32,
    },
}

/// A placement constraint a generated gang carries (nodes alternate zones a and b).
#[derive(Clone, Copy, Debug)]
enum Constraint {
    None,
    Zone(bool),
    WithinZone,
    AntiAffinity(u8),
    Exclusive,
    CachedOn(u32),
}

fn constraint() -> impl Strategy<Value = Constraint> {
    prop_oneof![
        6 => Just(Constraint::None),
        1 => any::<bool>().prop_map(Constraint::Zone),
        1 => Just(Constraint::WithinZone),
        1 => (0u8..2).prop_map(Constraint::AntiAffinity),
        1 => Just(Constraint::Exclusive),
        1 => (0u32..6).prop_map(Constraint::CachedOn),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u32..4, 0u32..3, 1u64..5, 0usize..6, 0usize..3, any::<bool>(), proptest::option::of(1u64..100), constraint())
            .prop_map(|(min, extra, cores, class, queue, one_per_node, est, constraint)| Op::Submit {
                min, extra, cores, class, queue, one_per_node, est, constraint
            }),
        4 => (any::<usize>(), prop::bool::weighted(0.8)).prop_map(|(pick, ok)| Op::Finish { pick, ok }),
        1 => any::<usize>().prop_map(|pick| Op::Lose1 { pick }),
        1 => (1u32..4, 1u64..4, 0usize..3).prop_map(|(instances, cores, class)| Op::Service { instances, cores, class }),
        1 => (any::<usize>(), 1u32..5).prop_map(|(pick, max)| Op::Resize { pick, max }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        3 => (1u64..60).prop_map(|secs| Op::Advance { secs }),
        1 => (0u32..6).prop_map(|node| Op::Lose { node }),
        1 => Just(Op::Add),
        1 => (0u32..6).prop_map(|node| Op::Drain { node }),
        1 => (0u32..6).prop_map(|node| Op::Cordon { node }),
        1 => (0u32..6).prop_map(|node| Op::Uncordon { node }),
    ]
}

const QUEUES: [&str; 3] = ["a", "b", "capped"];

fn config() -> Config {
    Config {
        // No guarantees: preemption may then only go strictly downward.
        queues: vec![QueueSpec::new("a", 0.0, 1.0), QueueSpec::new("b", 0.0, 1.0), QueueSpec::new("capped", 0.0, 0.5)],
        policy: Policy { reserve_after: 30_000, reserve_after_runtimes: None, ..Policy::cohort() },
        ..Config::default()
    }
}

/// Drives an engine through ops, checking every property after each step.
struct Run {
    engine: Engine,
    log: Vec<Decision>,
    live: BTreeMap<AllocId, GangId>,
    class_of: BTreeMap<GangId, i32>,
    nodes: u32,
    lost_any: bool,
    next_gang: u64,
}

impl Run {
    fn new() -> Run {
        let mut run = Run {
            engine: Engine::new(config()),
            log: Vec::new(),
            live: BTreeMap::new(),
            class_of: BTreeMap::new(),
            nodes: 0,
            lost_any: false,
            next_gang: 1,
        };
        for _ in 0..4 {
            run.add_node();
        }
        run
    }

    fn add_node(&mut self) {
        let zone = if self.nodes.is_multiple_of(2) { "a" } else { "b" };
        let spec = NodeSpec {
            name: format!("n{}", self.nodes),
            capacity: Resources::new(8000, 8 * GIB),
            labels: BTreeMap::from([("zone".to_string(), zone.to_string())]),
        };
        let node = NodeId(self.nodes);
        self.nodes += 1;
        self.step(Event::NodeAdded { node, spec });
    }

    fn step(&mut self, event: Event) {
        let decisions = match self.engine.handle(event) {
            Ok(d) => d,
            Err(_) => return, // refused events change nothing, checked by the invariants below
        };
        self.absorb(decisions);
    }

    fn absorb(&mut self, decisions: Vec<Decision>) {
        self.engine.check_invariants().unwrap();
        let mut preemptors = BTreeSet::new();
        let mut deadline = None;
        let mut starts: BTreeMap<GangId, u32> = BTreeMap::new();
        for d in &decisions {
            match d {
                Decision::Place { gang, alloc, elastic, .. } => {
                    self.live.insert(*alloc, *gang);
                    if !elastic {
                        *starts.entry(*gang).or_default() += 1;
                    }
                }
                Decision::Stop { gang, alloc, reason, deadline: d_deadline, .. } => {
                    self.live.remove(alloc);

                    if let StopReason::Preempted { by } | StopReason::Shrunk { by } = reason {
                        deadline = Some(*d_deadline);
                        // Preemption only of strictly lower priorities.
                        assert!(
                            self.class_of[gang] < self.class_of[by],
                            "{gang:?} evicted for {by:?} of no higher class"
                        );
                        preemptors.insert(*by);
                    }
                }
                _ => {}
            }
        }
        // Gangs start all-or-nothing: a first start places at least `min` slots at once.
        for (gang, n) in starts {
            if let Some(g) = self.engine.gang(gang)
                && g.completed == 0
            {
                assert!(n >= g.spec.min, "{gang:?} started with {n} < min {} slots", g.spec.min);
            }
        }
        // Every running gang holds at least `min` slots (until its work winds down).
        for id in self.engine.gang_ids() {
            let g = self.engine.gang(id).unwrap();
            if g.phase == GangPhase::Running && g.completed == 0 {
                assert!(g.running >= g.spec.min, "{id:?} runs {} < min {}", g.running, g.spec.min);
            }
        }
        // Queue caps hold (while capacity has not shrunk under them).
        if !self.lost_any {
            for (name, share) in self.engine.queue_shares() {
                if name == "capped" {
                    assert!(share <= 0.5 + 1e-9, "capped queue holds {share}");
                }
            }
        }
        self.log.extend(decisions.iter().cloned());
        // No eviction unless the preemptor then runs: by the victims' grace deadline, it is placed.
        if let Some(deadline) = deadline {
            let after = self.engine.handle(Event::TimeAdvanced { now: deadline }).unwrap();
            for p in &preemptors {
                let placed = after.iter().any(|d| matches!(d, Decision::Place { gang, .. } if gang == p));
                let running = self.engine.gang(*p).is_none_or(|g| g.phase == GangPhase::Running);
                assert!(
                    placed || running,
                    "{p:?} evicted victims but did not start: {:?}\n{}",
                    self.engine.gang(*p).and_then(|g| g.reason),
                    self.engine.dump()
                );
            }
            self.absorb(after);
        }
    }

    fn apply(&mut self, op: &Op) {
        let classes = ["system", "service", "streaming", "interactive", "batch", "best-effort"];
        let values = [1000, 800, 600, 400, 200, 0];
        match *op {
            Op::Submit { min, extra, cores, class, queue, one_per_node, est, constraint } => {
                let gang = GangId(self.next_gang);
                self.next_gang += 1;
                let mut spec = GangSpec::rigid(format!("g{}", gang.0), min, cpu(cores), classes[class], QUEUES[queue]);
                spec.max = min + extra;
                spec.constraints.one_slot_per_node = one_per_node;
                let c = &mut spec.constraints;
                match constraint {
                    Constraint::None => {}
                    Constraint::Zone(a) => {
                        c.labels.insert("zone".into(), if a { "a" } else { "b" }.into());
                    }
                    Constraint::WithinZone => c.within = Some("zone".into()),
                    Constraint::AntiAffinity(group) => c.anti_affinity = Some(format!("group-{group}")),
                    Constraint::Exclusive => c.exclusive = true,
                    Constraint::CachedOn(node) => spec.locality = vec![(format!("n{node}"), 10)],
                }
                spec.estimated_runtime = est.map(|s| s * 1000);
                spec.max_attempts = 2;
                self.class_of.insert(gang, values[class]);
                self.step(Event::GangSubmitted { gang, spec });
            }
            Op::Finish { pick, ok } => {
                if !self.live.is_empty() {
                    let alloc = *self.live.keys().nth(pick % self.live.len()).unwrap();
                    self.live.remove(&alloc);
                    let outcome = if ok { SlotOutcome::Succeeded } else { SlotOutcome::Failed };
                    self.step(Event::SlotFinished { alloc, outcome });
                }
            }
            Op::Lose1 { pick } => {
                if !self.live.is_empty() {
                    let alloc = *self.live.keys().nth(pick % self.live.len()).unwrap();
                    self.live.remove(&alloc);
                    self.step(Event::SlotFinished { alloc, outcome: SlotOutcome::Lost });
                }
            }
            Op::Service { instances, cores, class } => {
                let gang = GangId(self.next_gang);
                self.next_gang += 1;
                let mut spec = GangSpec::rigid(format!("svc{}", gang.0), 1, cpu(cores), classes[class], "a");
                spec.max = instances;
                spec.restart = Restart::Always;
                self.class_of.insert(gang, values[class]);
                self.step(Event::GangSubmitted { gang, spec });
            }
            Op::Resize { pick, max } => {
                let ids = self.engine.gang_ids();
                if !ids.is_empty() {
                    self.step(Event::GangResized { gang: ids[pick % ids.len()], max });
                }
            }
            Op::Cancel { pick } => {
                let ids = self.engine.gang_ids();
                if !ids.is_empty() {
                    self.step(Event::GangCancelled { gang: ids[pick % ids.len()] });
                }
            }
            Op::Advance { secs } => {
                let now = self.engine.now() + secs * 1000;
                self.step(Event::TimeAdvanced { now });
            }
            Op::Lose { node } => {
                if node < self.nodes {
                    self.lost_any = true;
                    self.step(Event::NodeLost { node: NodeId(node) });
                    // Allocations on the lost node are gone: forget them.
                    let engine = &self.engine;
                    self.live.retain(|a, _| engine.alloc_node(*a).is_some());
                }
            }
            Op::Add => self.add_node(),
            Op::Drain { node } => self.step(Event::NodeDrained { node: NodeId(node) }),
            Op::Cordon { node } => self.step(Event::NodeCordoned { node: NodeId(node) }),
            Op::Uncordon { node } => self.step(Event::NodeUncordoned { node: NodeId(node) }),
        }
    }
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=5000 for a longer hunt.
    #[test]
    fn invariants_hold_over_random_event_sequences(ops in prop::collection::vec(op(), 1..120)) {
        let mut run = Run::new();
        for op in &ops {
            run.apply(op);
        }
    }

    #[test]
    fn the_same_events_give_the_same_decisions(ops in prop::collection::vec(op(), 1..80)) {
        let mut first = Run::new();
        let mut second = Run::new();
        for op in &ops {
            first.apply(op);
            second.apply(op);
        }
        prop_assert_eq!(first.log, second.log);
    }

    /// Under a steady stream of small work that keeps the cluster busy, a
    /// gang that fits the empty cluster starts within the reservation bound
    /// (or once the work older than it has started, as the oldest goes first)
    /// plus the longest small job.
    #[test]
    fn no_gang_waits_past_the_reservation_bound(
        nodes in 2u32..6,
        runtimes in prop::collection::vec(1u64..50, 50..200),
        wide_at in 0u64..20,
    ) {
        let bound = 100;
        let policy = Policy { reserve_after: bound * 1000, reserve_after_runtimes: None, ..Policy::cohort() };
        let config = Config { policy, ..Config::default() };
        let mut engine = Engine::new(config);
        for i in 0..nodes {
            let spec = NodeSpec { name: format!("n{i}"), capacity: cpu(4), labels: Default::default() };
            engine.apply(Event::NodeAdded { node: NodeId(i), spec }).unwrap();
        }
        let mut wide = GangSpec::rigid("wide", nodes, cpu(4), "batch", "default");
        wide.constraints.one_slot_per_node = true;
        wide.estimated_runtime = Some(10_000);
        // Small jobs arrive two per second, each 1 core; ends are exact.
        let mut ends: BinaryHeap<Reverse<(u64, AllocId)>> = BinaryHeap::new();
        let mut started_at = None;
        let mut older_started = 0;
        let horizon = runtimes.len() as u64 / 2 + 1;
        for t in 0..horizon + bound + 100 {
            let now = t * 1000;
            engine.apply(Event::TimeAdvanced { now }).unwrap();
            while let Some(Reverse((end, alloc))) = ends.peek().copied() {
                if end > now { break; }
                ends.pop();
                engine.apply(Event::SlotFinished { alloc, outcome: SlotOutcome::Succeeded }).unwrap();
            }
            if t == wide_at {
                engine.apply(Event::GangSubmitted { gang: GangId(0), spec: wide.clone() }).unwrap();
            }
            for k in 0..2 {
                let i = (t * 2 + k) as usize;
                if let Some(&secs) = runtimes.get(i) {
                    let mut s = GangSpec::rigid(format!("s{i}"), 1, cpu(1), "batch", "default");
                    s.estimated_runtime = Some(secs * 1000);
                    engine.apply(Event::GangSubmitted { gang: GangId(i as u64 + 1), spec: s }).unwrap();
                }
            }
            for d in engine.schedule() {
                if let Decision::Place { gang, alloc, .. } = d {
                    if gang == GangId(0) {
                        started_at.get_or_insert(now);
                    } else {
                        let i = gang.0 as usize - 1;
                        if (i as u64) < wide_at * 2 {
                            older_started = older_started.max(now);
                        }
                        let secs = runtimes[i];
                        ends.push(Reverse((now + secs * 1000, alloc)));
                    }
                }
            }
            if started_at.is_some() { break; }
        }
        let started = started_at.expect("the wide gang started");
        let longest = runtimes.iter().max().unwrap();
        let reserved_by = ((wide_at + bound) * 1000).max(older_started);
        prop_assert!(started <= reserved_by + (longest + 1) * 1000, "started at {started} ms");
    }
}

/// Applies ops to a fresh run, checking every property after each.
fn replay(ops: &[Op]) {
    let mut run = Run::new();
    for op in ops {
        run.apply(op);
    }
}

/// A submission in the regression tests below: min, extra, cores, class, queue, one per node, estimate, constraint.
#[allow(clippy::too_many_arguments)]
fn sub(
    min: u32,
    extra: u32,
    cores: u64,
    class: usize,
    queue: usize,
    one_per_node: bool,
    est: Option<u64>,
    constraint: Constraint,
) -> Op {
    Op::Submit { min, extra, cores, class, queue, one_per_node, est, constraint }
}

#[test]
fn regression_preemptor_starts_after_teardown() {
    replay(&[
        sub(1, 2, 1, 4, 0, false, None, Constraint::None),
        sub(2, 0, 2, 0, 0, false, None, Constraint::None),
        sub(3, 0, 3, 0, 0, true, None, Constraint::None),
        sub(2, 0, 4, 0, 0, false, Some(1), Constraint::None),
        Op::Lose { node: 1 },
        sub(1, 0, 1, 0, 0, false, None, Constraint::None),
    ]);
}

#[test]
fn regression_preemptor_after_cancel_and_drain() {
    replay(&[
        sub(1, 0, 1, 0, 0, false, None, Constraint::None),
        Op::Cancel { pick: 0 },
        sub(1, 1, 1, 4, 0, false, None, Constraint::None),
        Op::Drain { node: 1 },
        sub(2, 0, 2, 0, 0, false, None, Constraint::None),
        sub(3, 0, 2, 0, 0, true, None, Constraint::None),
    ]);
}

#[test]
fn regression_preemptor_three_nodes() {
    replay(&[
        Op::Drain { node: 0 },
        sub(1, 1, 1, 5, 0, false, None, Constraint::None),
        sub(1, 2, 3, 4, 0, false, None, Constraint::None),
        sub(1, 0, 1, 0, 0, false, None, Constraint::None),
        sub(1, 1, 3, 0, 0, false, None, Constraint::None),
        Op::Advance { secs: 1 },
        sub(1, 0, 3, 0, 0, false, None, Constraint::None),
        sub(1, 0, 2, 2, 0, false, None, Constraint::None),
        sub(3, 0, 1, 0, 0, true, None, Constraint::None),
    ]);
}

#[test]
fn regression_exclusive_preemptor() {
    let mut run = Run::new();
    let s = |min, cores, class, one_per_node, constraint| Op::Submit {
        min,
        extra: 0,
        cores,
        class,
        queue: 0,
        one_per_node,
        est: None,
        constraint,
    };
    let ops = [
        Op::Add,
        s(1, 1, 0, false, Constraint::None),
        s(1, 1, 0, false, Constraint::None),
        Op::Drain { node: 0 },
        s(2, 1, 5, true, Constraint::None),
        s(2, 1, 0, false, Constraint::Exclusive),
        s(1, 1, 0, false, Constraint::None),
        Op::Finish { pick: 2762616709589128081, ok: false },
        Op::Lose { node: 1 },
        Op::Cancel { pick: 944927463940754039 },
        Op::Finish { pick: 2716824121231125060, ok: false },
        Op::Finish { pick: 135919753801777284, ok: false },
        s(1, 1, 0, false, Constraint::Exclusive),
    ];
    for op in &ops {
        run.apply(op);
    }
}

#[test]
fn regression_an_exclusive_nomination_on_a_node_another_preemptor_holds() {
    replay(&[
        Op::Cordon { node: 2 },
        Op::Add,
        sub(1, 0, 2, 3, 0, false, None, Constraint::None),
        Op::Drain { node: 0 },
        sub(2, 2, 4, 0, 0, false, None, Constraint::None),
        sub(2, 0, 2, 5, 0, false, None, Constraint::None),
        sub(2, 0, 1, 5, 0, true, None, Constraint::None),
        sub(1, 0, 3, 0, 0, false, None, Constraint::None),
        sub(1, 1, 1, 0, 0, true, None, Constraint::None),
        sub(1, 0, 1, 0, 0, false, None, Constraint::None),
        sub(1, 0, 1, 4, 0, false, None, Constraint::None),
        Op::Add,
        sub(1, 0, 3, 0, 0, false, None, Constraint::None),
        Op::Finish { pick: 748990578665964116, ok: false },
        sub(3, 1, 1, 0, 0, false, None, Constraint::None),
        Op::Finish { pick: 3933102829211080462, ok: false },
        sub(1, 0, 2, 4, 0, false, None, Constraint::None),
        Op::Finish { pick: 1853436524103618749, ok: true },
        Op::Advance { secs: 1 },
        Op::Cancel { pick: 2843207846352813934 },
        sub(2, 0, 3, 4, 0, false, None, Constraint::None),
        Op::Lose { node: 3 },
        sub(1, 0, 1, 0, 0, false, None, Constraint::None),
        Op::Finish { pick: 7344727590577855273, ok: true },
        Op::Finish { pick: 5753561015581944924, ok: true },
        Op::Finish { pick: 7803243572236424861, ok: true },
        Op::Finish { pick: 6489043263536203393, ok: true },
        sub(1, 1, 2, 4, 0, true, Some(92), Constraint::Exclusive),
        Op::Drain { node: 1 },
        sub(2, 1, 2, 0, 0, true, None, Constraint::WithinZone),
        sub(1, 2, 3, 1, 0, true, Some(21), Constraint::AntiAffinity(0)),
        Op::Add,
    ]);
}

#[test]
fn regression_a_group_member_takes_the_nodes_nominated_to_its_group() {
    replay(&[
        Op::Drain { node: 0 },
        Op::Cordon { node: 1 },
        sub(1, 1, 3, 4, 0, false, None, Constraint::None),
        sub(3, 0, 3, 0, 0, false, None, Constraint::AntiAffinity(0)),
        sub(3, 0, 1, 1, 0, false, None, Constraint::AntiAffinity(0)),
        Op::Add,
    ]);
}

#[test]
fn regression_exclusive_nominations_count_slots_against_quota() {
    replay(&[
        sub(2, 1, 3, 5, 0, false, None, Constraint::Zone(false)),
        sub(2, 1, 1, 4, 2, false, Some(1), Constraint::None),
        Op::Finish { pick: 13062147653371604946, ok: true },
        sub(3, 0, 1, 2, 0, false, None, Constraint::AntiAffinity(0)),
        sub(1, 0, 1, 2, 2, false, None, Constraint::Exclusive),
        sub(3, 0, 1, 0, 0, true, None, Constraint::Exclusive),
        sub(1, 0, 3, 4, 2, false, None, Constraint::WithinZone),
        Op::Finish { pick: 5617401678967332456, ok: false },
        Op::Finish { pick: 14466009814709707861, ok: true },
        sub(2, 0, 3, 0, 0, false, None, Constraint::None),
        sub(1, 0, 1, 0, 0, false, None, Constraint::None),
        sub(1, 0, 1, 0, 0, false, None, Constraint::None),
        Op::Finish { pick: 2406436793959572407, ok: true },
        Op::Cancel { pick: 13678043802222771034 },
        Op::Finish { pick: 6352413261491421675, ok: true },
        Op::Lose { node: 0 },
        Op::Finish { pick: 17575054235199990372, ok: false },
    ]);
}

#[test]
fn regression_a_starvation_reservation_on_an_exclusive_nomination() {
    replay(&[
        sub(2, 0, 1, 2, 0, false, None, Constraint::AntiAffinity(0)),
        sub(3, 0, 1, 0, 0, true, None, Constraint::Exclusive),
    ]);
}

#[test]
fn regression_an_exclusive_gang_on_a_node_claimed_by_another() {
    replay(&[
        Op::Drain { node: 3 },
        sub(1, 0, 1, 4, 0, false, None, Constraint::Exclusive),
        sub(1, 0, 1, 3, 0, false, None, Constraint::Exclusive),
        sub(2, 1, 1, 5, 0, true, None, Constraint::None),
        sub(3, 0, 4, 0, 0, false, None, Constraint::AntiAffinity(0)),
        sub(2, 0, 4, 2, 0, false, None, Constraint::WithinZone),
        sub(2, 0, 1, 2, 0, true, None, Constraint::None),
        Op::Finish { pick: 2382316812037089658, ok: false },
        Op::Finish { pick: 11828761562521076292, ok: true },
        Op::Finish { pick: 8692912060433115529, ok: true },
        Op::Advance { secs: 1 },
        sub(2, 0, 3, 0, 0, true, None, Constraint::Zone(true)),
        Op::Add,
    ]);
}

proptest! {
    /// However many gangs wait ahead of it, hopeless (no node can hold them)
    /// or blocked alike (of a few shapes that do not fit the free room), a
    /// gang that fits the free room now and is held back by no reservation
    /// or priority rule starts in the pass after it arrives.
    #[test]
    fn a_gang_that_fits_now_is_placed_however_many_blocked_gangs_precede_it(
        nodes in 1u32..6,
        hopeless in 0usize..1500,
        blocked in 0usize..1500,
        shapes in prop::collection::vec(5u64..9, 1..4),
        small in 1u64..4,
        fcfs in any::<bool>(),
    ) {
        let policy = if fcfs { Policy::fcfs() } else { Policy::easy() };
        let mut engine = Engine::new(Config { policy, ..Config::default() });
        for i in 0..nodes {
            let spec = NodeSpec { name: format!("n{i}"), capacity: cpu(8), labels: Default::default() };
            engine.apply(Event::NodeAdded { node: NodeId(i), spec }).unwrap();
        }
        // Every node half full, so 5..8-core slots fit no node now (but do fit one empty).
        let mut filler = GangSpec::rigid("filler", nodes, cpu(4), "batch", "default");
        filler.constraints.one_slot_per_node = true;
        engine.apply(Event::GangSubmitted { gang: GangId(1_000_000), spec: filler }).unwrap();
        engine.schedule();
        let mut id = 0;
        for _ in 0..hopeless {
            id += 1;
            let spec = GangSpec::rigid(format!("huge{id}"), 1, cpu(9), "batch", "default");
            engine.apply(Event::GangSubmitted { gang: GangId(id), spec }).unwrap();
        }
        // Under FCFS a gang that could start on an emptier cluster is first in line and
        // rightly holds everything behind it: only hopeless gangs precede the small one.
        let blocked = if fcfs { 0 } else { blocked };
        for k in 0..blocked {
            id += 1;
            let spec = GangSpec::rigid(format!("big{id}"), 1, cpu(shapes[k % shapes.len()]), "batch", "default");
            engine.apply(Event::GangSubmitted { gang: GangId(id), spec }).unwrap();
        }
        engine.schedule();
        let spec = GangSpec::rigid("small", 1, cpu(small), "batch", "default");
        engine.apply(Event::GangSubmitted { gang: GangId(id + 1), spec }).unwrap();
        let placed = engine.schedule().iter().any(|d| matches!(d, Decision::Place { gang, .. } if *gang == GangId(id + 1)));
        prop_assert!(placed, "{:?}", engine.gang(GangId(id + 1)).and_then(|g| g.reason));
        engine.check_invariants().unwrap();
    }
}

#[test]
fn regression_a_service_resized_below_its_running_slots() {
    replay(&[
        Op::Add,
        sub(2, 0, 1, 0, 0, false, None, Constraint::Zone(false)),
        sub(1, 2, 1, 2, 0, true, None, Constraint::None),
        sub(1, 0, 1, 0, 0, false, Some(1), Constraint::CachedOn(5)),
        sub(1, 1, 2, 0, 0, true, None, Constraint::Zone(false)),
        sub(1, 2, 4, 2, 0, false, None, Constraint::None),
        sub(3, 0, 3, 0, 0, false, Some(1), Constraint::Exclusive),
        Op::Finish { pick: 27565406182271083, ok: false },
        sub(3, 0, 3, 0, 0, false, None, Constraint::None),
        Op::Advance { secs: 1 },
        Op::Cancel { pick: 14982570628157460161 },
        sub(2, 0, 3, 0, 0, false, None, Constraint::None),
        Op::Resize { pick: 7624530206095435636, max: 1 },
    ]);
}

#[test]
fn regression_a_batch_gang_is_never_resized() {
    replay(&[
        sub(2, 0, 2, 3, 0, false, None, Constraint::None),
        sub(2, 2, 2, 5, 0, false, None, Constraint::None),
        sub(3, 0, 2, 0, 0, false, None, Constraint::AntiAffinity(0)),
        sub(3, 1, 3, 2, 0, false, None, Constraint::None),
        Op::Finish { pick: 38376758485561582, ok: true },
        Op::Service { instances: 1, cores: 1, class: 0 },
        Op::Finish { pick: 696737800957843489, ok: true },
        Op::Finish { pick: 8691123258878697217, ok: true },
        sub(3, 0, 1, 0, 0, true, None, Constraint::Zone(false)),
        sub(2, 0, 4, 0, 0, false, None, Constraint::None),
        Op::Service { instances: 1, cores: 1, class: 0 },
        Op::Finish { pick: 1488902726817963295, ok: false },
        sub(1, 0, 3, 0, 0, false, None, Constraint::None),
        Op::Finish { pick: 1015128579028446126, ok: true },
        Op::Resize { pick: 11238747562342776136, max: 1 },
        Op::Service { instances: 1, cores: 1, class: 0 },
        sub(1, 0, 1, 3, 0, false, None, Constraint::Exclusive),
        Op::Add,
        sub(3, 0, 1, 0, 0, false, None, Constraint::None),
        sub(1, 0, 1, 0, 0, false, None, Constraint::Exclusive),
        Op::Advance { secs: 1 },
        Op::Add,
        Op::Service { instances: 1, cores: 3, class: 0 },
        sub(1, 0, 1, 0, 0, false, None, Constraint::AntiAffinity(0)),
        Op::Lose { node: 4 },
        sub(1, 0, 1, 0, 0, false, None, Constraint::AntiAffinity(0)),
        sub(2, 0, 3, 0, 0, false, None, Constraint::None),
        Op::Finish { pick: 8894210255823228, ok: true },
        Op::Cancel { pick: 2256996564659377827 },
        Op::Lose { node: 0 },
        sub(2, 0, 1, 0, 0, false, Some(1), Constraint::Zone(false)),
        Op::Resize { pick: 9888720705267443448, max: 2 },
        Op::Resize { pick: 3353870511270140406, max: 1 },
        Op::Advance { secs: 1 },
        Op::Finish { pick: 4716562404244021816, ok: true },
        sub(1, 0, 1, 0, 0, false, None, Constraint::None),
    ]);
}
