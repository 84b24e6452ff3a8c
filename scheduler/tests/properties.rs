//! Properties of the engine over random event sequences.

mod common;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use cohort_scheduler::*;
use common::{GIB, cpu};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Submit { min: u32, extra: u32, cores: u64, class: usize, queue: usize, one_per_node: bool, est: Option<u64> },
    Finish { pick: usize, ok: bool },
    Cancel { pick: usize },
    Advance { secs: u64 },
    Lose { node: u32 },
    Add,
    Drain { node: u32 },
    Cordon { node: u32 },
    Uncordon { node: u32 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u32..4, 0u32..3, 1u64..5, 0usize..6, 0usize..3, any::<bool>(), proptest::option::of(1u64..100)).prop_map(
            |(min, extra, cores, class, queue, one_per_node, est)| Op::Submit { min, extra, cores, class, queue, one_per_node, est }
        ),
        4 => (any::<usize>(), prop::bool::weighted(0.8)).prop_map(|(pick, ok)| Op::Finish { pick, ok }),
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
        policy: Policy { reserve_after: 30_000, ..Policy::cohort() },
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
        let spec = NodeSpec {
            name: format!("n{}", self.nodes),
            capacity: Resources::new(8000, 8 * GIB),
            labels: Default::default(),
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
            Op::Submit { min, extra, cores, class, queue, one_per_node, est } => {
                let gang = GangId(self.next_gang);
                self.next_gang += 1;
                let mut spec = GangSpec::rigid(format!("g{}", gang.0), min, cpu(cores), classes[class], QUEUES[queue]);
                spec.max = min + extra;
                spec.constraints.one_slot_per_node = one_per_node;
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
        let config = Config { policy: Policy { reserve_after: bound * 1000, ..Policy::cohort() }, ..Config::default() };
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

#[test]
fn regression_preemptor_starts_after_teardown() {
    let mut run = Run::new();
    let ops = [
        Op::Submit { min: 1, extra: 2, cores: 1, class: 4, queue: 0, one_per_node: false, est: None },
        Op::Submit { min: 2, extra: 0, cores: 2, class: 0, queue: 0, one_per_node: false, est: None },
        Op::Submit { min: 3, extra: 0, cores: 3, class: 0, queue: 0, one_per_node: true, est: None },
        Op::Submit { min: 2, extra: 0, cores: 4, class: 0, queue: 0, one_per_node: false, est: Some(1) },
        Op::Lose { node: 1 },
        Op::Submit { min: 1, extra: 0, cores: 1, class: 0, queue: 0, one_per_node: false, est: None },
    ];
    for op in &ops {
        run.apply(op);
    }
}

#[test]
fn regression_preemptor_after_cancel_and_drain() {
    let mut run = Run::new();
    let ops = [
        Op::Submit { min: 1, extra: 0, cores: 1, class: 0, queue: 0, one_per_node: false, est: None },
        Op::Cancel { pick: 0 },
        Op::Submit { min: 1, extra: 1, cores: 1, class: 4, queue: 0, one_per_node: false, est: None },
        Op::Drain { node: 1 },
        Op::Submit { min: 2, extra: 0, cores: 2, class: 0, queue: 0, one_per_node: false, est: None },
        Op::Submit { min: 3, extra: 0, cores: 2, class: 0, queue: 0, one_per_node: true, est: None },
    ];
    for op in &ops {
        run.apply(op);
    }
}

#[test]
fn regression_preemptor_three_nodes() {
    let mut run = Run::new();
    let ops = [
        Op::Drain { node: 0 },
        Op::Submit { min: 1, extra: 1, cores: 1, class: 5, queue: 0, one_per_node: false, est: None },
        Op::Submit { min: 1, extra: 2, cores: 3, class: 4, queue: 0, one_per_node: false, est: None },
        Op::Submit { min: 1, extra: 0, cores: 1, class: 0, queue: 0, one_per_node: false, est: None },
        Op::Submit { min: 1, extra: 1, cores: 3, class: 0, queue: 0, one_per_node: false, est: None },
        Op::Advance { secs: 1 },
        Op::Submit { min: 1, extra: 0, cores: 3, class: 0, queue: 0, one_per_node: false, est: None },
        Op::Submit { min: 1, extra: 0, cores: 2, class: 2, queue: 0, one_per_node: false, est: None },
        Op::Submit { min: 3, extra: 0, cores: 1, class: 0, queue: 0, one_per_node: true, est: None },
    ];
    for op in &ops {
        run.apply(op);
    }
}
