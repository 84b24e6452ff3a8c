//! A small harness so scheduler tests read as scenarios:
//! given a cluster and a queue, when something happens, then these decisions.
#![allow(dead_code)]

use cohort_scheduler::*;

pub const GIB: u64 = 1 << 30;

pub fn cpu(cores: u64) -> Resources {
    Resources::new(cores * 1000, cores * GIB)
}

pub struct Cluster {
    pub engine: Engine,
    pub log: Vec<Decision>,
    /// Allocations reported ended.
    ended: Vec<AllocId>,
    next_gang: u64,
}

impl Cluster {
    /// `nodes` identical nodes of `cores` cpu and `cores` GiB each.
    pub fn new(nodes: u32, cores: u64) -> Cluster {
        Cluster::with_config(nodes, cores, Config::default())
    }

    pub fn with_policy(nodes: u32, cores: u64, policy: Policy) -> Cluster {
        Cluster::with_config(nodes, cores, Config { policy, ..Config::default() })
    }

    pub fn with_config(nodes: u32, cores: u64, config: Config) -> Cluster {
        let mut c = Cluster { engine: Engine::new(config), log: Vec::new(), ended: Vec::new(), next_gang: 1 };
        for i in 0..nodes {
            c.add_node(i, cores, &[]);
        }
        c
    }

    pub fn add_node(&mut self, i: u32, cores: u64, labels: &[(&str, &str)]) {
        let spec = NodeSpec {
            name: format!("n{i}"),
            capacity: cpu(cores),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        self.apply(Event::NodeAdded { node: NodeId(i), spec });
    }

    pub fn apply(&mut self, event: Event) -> Vec<Decision> {
        let d = self.engine.handle(event).expect("event accepted");
        self.engine.check_invariants().expect("invariants hold");
        self.log.extend(d.clone());
        d
    }

    pub fn submit(&mut self, spec: GangSpec) -> (GangId, Vec<Decision>) {
        let id = GangId(self.next_gang);
        self.next_gang += 1;
        let d = self.apply(Event::GangSubmitted { gang: id, spec });
        (id, d)
    }

    /// Submits a rigid gang of `n` slots of `cores` cpu.
    pub fn gang(&mut self, n: u32, cores: u64, class: &str) -> (GangId, Vec<Decision>) {
        self.submit(GangSpec::rigid(format!("g{}", self.next_gang), n, cpu(cores), class, "default"))
    }

    pub fn at(&mut self, seconds: u64) -> Vec<Decision> {
        self.apply(Event::TimeAdvanced { now: seconds * 1000 })
    }

    pub fn finish(&mut self, alloc: AllocId, outcome: SlotOutcome) -> Vec<Decision> {
        self.ended.push(alloc);
        self.apply(Event::SlotFinished { alloc, outcome })
    }

    /// Reports every slot of `gang` as succeeded.
    pub fn complete(&mut self, gang: GangId) -> Vec<Decision> {
        let mut out = Vec::new();
        for a in self.allocs_of(gang) {
            out.extend(self.finish(a, SlotOutcome::Succeeded));
        }
        out
    }

    /// Reports every stop the engine asked for as done.
    pub fn stops_done(&mut self, decisions: &[Decision]) -> Vec<Decision> {
        let mut out = Vec::new();
        for d in decisions {
            if let Decision::Stop { alloc, .. } = d {
                out.extend(self.finish(*alloc, SlotOutcome::Stopped));
            }
        }
        out
    }

    /// Live allocations of a gang, from the decision log.
    pub fn allocs_of(&self, gang: GangId) -> Vec<AllocId> {
        let mut live = Vec::new();
        for d in &self.log {
            match d {
                Decision::Place { gang: g, alloc, .. } if *g == gang => live.push(*alloc),
                Decision::Stop { alloc, .. } => live.retain(|a| a != alloc),
                _ => {}
            }
        }
        live.retain(|a| !self.ended.contains(a));
        live
    }

    pub fn phase(&self, gang: GangId) -> Option<GangPhase> {
        self.engine.gang(gang).map(|g| g.phase)
    }

    pub fn running(&self, gang: GangId) -> u32 {
        self.engine.gang(gang).map_or(0, |g| g.running)
    }

    pub fn reason(&self, gang: GangId) -> String {
        self.engine.gang(gang).and_then(|g| g.reason).unwrap_or_default()
    }
}

pub fn places(decisions: &[Decision], gang: GangId) -> Vec<NodeId> {
    decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Place { gang: g, node, .. } if *g == gang => Some(*node),
            _ => None,
        })
        .collect()
}

pub fn stops(decisions: &[Decision]) -> Vec<(GangId, StopReason)> {
    decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Stop { gang, reason, .. } => Some((*gang, reason.clone())),
            _ => None,
        })
        .collect()
}

pub fn finished(decisions: &[Decision], gang: GangId) -> Option<GangOutcome> {
    decisions.iter().find_map(|d| match d {
        Decision::Finished { gang: g, outcome, .. } if *g == gang => Some(*outcome),
        _ => None,
    })
}
