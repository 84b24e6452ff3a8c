//! A synthetic workload shaped like a shared data platform:
//! many small short batch gangs, a few wide gangs (up to 512 slots),
//! long-running streaming pipelines and stores, and bursts of interactive
//! queries. Arrivals are spread so that the offered cpu load is about
//! `load` of the cluster. Same options and seed, same trace.
//!
//! Nodes carry `zone` (4) and `rack` (40 nodes each) labels, and the work
//! uses them as a data platform does: some batch jobs are pinned to the
//! zone that holds their data, wide gangs stay within one zone, some
//! interactive queries within one rack, a team's store replicas never
//! share a node (anti-affinity), and pipelines spread out.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::{GangSpec, NodeSpec, PriorityClass};
use crate::resources::Resources;
use crate::trace::{Trace, TraceJob, secs};

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub nodes: u32,
    pub jobs: u32,
    pub seed: u64,
    /// Offered cpu load as a fraction of capacity.
    pub load: f64,
}

const NODE_CORES: u64 = 64;
const NODE_MEMORY: u64 = 256 << 30;
const TEAMS: [&str; 5] = ["analytics", "ml", "growth", "finance", "platform"];

pub fn generate(opts: &GenerateOptions) -> Trace {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let nodes: Vec<NodeSpec> = (0..opts.nodes)
        .map(|i| NodeSpec {
            name: format!("node-{i:05}"),
            capacity: Resources::new(NODE_CORES * 1000, NODE_MEMORY),
            labels: BTreeMap::from([
                ("zone".to_string(), format!("z{}", i % 4)),
                ("rack".to_string(), format!("r{}", i / 40)),
            ]),
        })
        .collect();
    let gib = 1u64 << 30;
    // Draw job shapes first (kind, slots, cpu per slot, runtime s), then spread arrivals to hit the load.
    struct Shape {
        spec: GangSpec,
        runtime: f64,
        burst: bool,
        service: bool,
    }
    let mut shapes = Vec::with_capacity(opts.jobs as usize);
    for i in 0..opts.jobs {
        let team = TEAMS[rng.random_range(0..TEAMS.len())];
        let roll: f64 = rng.random();
        let shape = if roll < 0.70 {
            // Small batch: a few slots, minutes.
            let n = rng.random_range(1..=4);
            let cores = rng.random_range(1..=4);
            let runtime = lognormal(&mut rng, 120.0, 1.0).clamp(5.0, 7200.0);
            let mut s =
                GangSpec::rigid(format!("etl-{i}"), n, Resources::new(cores * 1000, cores * 4 * gib), "batch", team);
            s.max = n + rng.random_range(0..=n);
            if rng.random_bool(0.15) {
                let zone = format!("z{}", rng.random_range(0..4));
                s.constraints.labels.insert("zone".into(), zone);
            }
            Shape { spec: s, runtime, burst: false, service: false }
        } else if roll < 0.75 {
            // Wide batch gang: up to 512 slots, tens of minutes.
            let n = 1 << rng.random_range(4..=9);
            let cores = rng.random_range(1..=4);
            let runtime = rng.random_range(600.0..3600.0);
            let mut s =
                GangSpec::rigid(format!("wide-{i}"), n, Resources::new(cores * 1000, cores * 4 * gib), "batch", team);
            s.constraints.within = Some("zone".into());
            Shape { spec: s, runtime, burst: false, service: false }
        } else if roll < 0.78 {
            // Store: memory-heavy, runs for the whole trace.
            let n = rng.random_range(1..=3);
            let mut s = GangSpec::rigid(format!("store-{i}"), n, Resources::new(2000, 32 * gib), "service", team);
            s.constraints.anti_affinity = Some(format!("stores-{team}"));
            Shape { spec: s, runtime: 0.0, burst: false, service: true }
        } else if roll < 0.83 {
            // Streaming pipeline: elastic members, runs for the whole trace.
            let mut s = GangSpec::rigid(format!("pipeline-{i}"), 1, Resources::new(1000, 2 * gib), "streaming", team);
            s.max = rng.random_range(2..=8);
            s.constraints.placement = crate::model::Placement::Spread;
            Shape { spec: s, runtime: 0.0, burst: false, service: true }
        } else {
            // Interactive query: small, seconds, arriving in bursts.
            let n = rng.random_range(4..=16);
            let runtime = rng.random_range(2.0..30.0);
            let mut s = GangSpec::rigid(format!("query-{i}"), n, Resources::new(1000, 2 * gib), "interactive", team);
            if rng.random_bool(0.3) {
                s.constraints.within = Some("rack".into());
            }
            Shape { spec: s, runtime, burst: true, service: false }
        };
        shapes.push(shape);
    }
    let capacity = (opts.nodes as u64 * NODE_CORES) as f64;
    let work: f64 = shapes.iter().filter(|s| !s.service).map(|s| s.spec.min as f64 * cpu(&s.spec) * s.runtime).sum();
    let service_cores: f64 = shapes.iter().filter(|s| s.service).map(|s| s.spec.min as f64 * cpu(&s.spec)).sum();
    let batch_capacity = (capacity * opts.load - service_cores).max(capacity * 0.1);
    let horizon = (work / batch_capacity).max(60.0);

    let mut jobs = Vec::with_capacity(shapes.len());
    let mut burst_at = 0.0;
    let mut burst_left = 0;
    for (i, mut shape) in shapes.into_iter().enumerate() {
        let submit = if shape.service {
            rng.random_range(0.0..horizon * 0.05)
        } else if shape.burst {
            if burst_left == 0 {
                burst_at = rng.random_range(0.0..horizon);
                burst_left = rng.random_range(5..40);
            }
            burst_left -= 1;
            burst_at + rng.random_range(0.0..60.0)
        } else {
            rng.random_range(0.0..horizon)
        };
        let runtime = if shape.service { horizon * 1.2 - submit } else { shape.runtime };
        // Users overestimate: the estimate is 1-3x the real runtime.
        let estimate = runtime * rng.random_range(1.0..3.0);
        shape.spec.estimated_runtime = Some(secs(estimate.ceil()));
        jobs.push(TraceJob { id: i as u64, submit: secs(submit), runtime: secs(runtime), spec: shape.spec });
    }
    let mut trace =
        Trace { format: "generated".into(), nodes, jobs, classes: PriorityClass::defaults(), ..Trace::default() };
    trace.sort();
    trace
}

fn cpu(spec: &GangSpec) -> f64 {
    spec.slot.cpu_millis as f64 / 1000.0
}

/// A log-normal draw with the given median and shape.
fn lognormal(rng: &mut ChaCha8Rng, median: f64, sigma: f64) -> f64 {
    // Box-Muller for a standard normal.
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    median * (sigma * z).exp()
}
