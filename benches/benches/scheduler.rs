//! Scheduler core benchmarks at 10,000 nodes (issue targets in brackets):
//!
//! (a) place 1,000,000 single-slot tasks           [≥ 1,000,000 placements/s]
//! (b) place 64-slot gangs on a 90%-full cluster    [p99 < 1 ms per gang]
//! (c) one preemption decision on a full cluster    [p99 < 5 ms]
//! (d) constrained gangs on a 70%-full cluster: within one rack, within
//!     one zone, on zone-labelled nodes, apart by anti-affinity, spread
//!     [p99 < 1 ms per gang]; beside the same gangs unconstrained, as the
//!     same-run baseline
//!
//! Criterion times each; the per-operation percentiles the targets name are
//! printed too (`p50`/`p99` lines). (a) also runs a baseline in the same
//! process: scoring every node for every task, as a scheduler without a
//! capacity index does (kube-scheduler with percentageOfNodesToScore=100),
//! and prints the ratio.
//!
//! `cargo bench -p cohort-benches`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cohort_scheduler::*;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

const NODES: u32 = 10_000;
const GIB: u64 = 1 << 30;

fn cluster() -> Engine {
    cluster_with(|_| BTreeMap::new())
}

/// 4 zones; racks of 40 nodes.
fn labelled_cluster() -> Engine {
    cluster_with(|i| {
        BTreeMap::from([("zone".to_string(), format!("z{}", i % 4)), ("rack".to_string(), format!("r{}", i / 40))])
    })
}

fn cluster_with(labels: impl Fn(u32) -> BTreeMap<String, String>) -> Engine {
    // One pass places everything: the depth limit that keeps live passes
    // short would only split (a) into many passes.
    let policy = Policy {
        reserve_after: u64::MAX / 2,
        reserve_after_runtimes: None,
        max_pass_depth: usize::MAX,
        ..Policy::cohort()
    };
    let config = Config { policy, ..Config::default() };
    let mut engine = Engine::new(config);
    for i in 0..NODES {
        let spec = NodeSpec { name: format!("n{i}"), capacity: Resources::new(64_000, 256 * GIB), labels: labels(i) };
        engine.apply(Event::NodeAdded { node: NodeId(i), spec }).unwrap();
    }
    engine
}

fn task(i: u64, cpu: u64, class: &str) -> Event {
    Event::GangSubmitted {
        gang: GangId(i),
        spec: GangSpec::rigid("t", 1, Resources::new(cpu, cpu << 20), class, "default"),
    }
}

fn percentiles(name: &str, mut samples: Vec<Duration>) {
    if samples.is_empty() {
        return; // filtered out
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!("{name}: n={} p50={:?} p99={:?} max={:?}", samples.len(), at(0.5), at(0.99), samples[samples.len() - 1]);
}

/// The baseline: filter and score every node for every task (best fit), no index.
fn score_every_node(nodes: &mut [u64], tasks: usize, cpu: u64) -> usize {
    let mut placed = 0;
    for _ in 0..tasks {
        let mut best: Option<usize> = None;
        for (i, free) in nodes.iter().enumerate() {
            if *free >= cpu && best.is_none_or(|b| *free < nodes[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            nodes[b] -= cpu;
            placed += 1;
        }
    }
    placed
}

fn place_a_million(c: &mut Criterion) {
    const TASKS: u64 = 1_000_000;
    let mut group = c.benchmark_group("a_million_single_slot_tasks");
    group.sample_size(10);
    let mut rates = Vec::new();
    group.bench_function("place_1M_on_10k_nodes", |b| {
        b.iter_batched(
            || {
                let mut engine = cluster();
                for i in 0..TASKS {
                    engine.apply(task(i, 500, "batch")).unwrap();
                }
                engine
            },
            |mut engine| {
                let started = Instant::now();
                let placed = engine.schedule().len();
                rates.push(placed as f64 / started.elapsed().as_secs_f64());
                assert_eq!(placed as u64, TASKS);
                engine
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
    if rates.is_empty() {
        return; // filtered out
    }
    rates.sort_by(f64::total_cmp);
    let cohort = rates[rates.len() / 2];
    let mut nodes = vec![64_000u64; NODES as usize];
    let sample = 20_000;
    let started = Instant::now();
    let placed = score_every_node(&mut nodes, sample, 500);
    let baseline = placed as f64 / started.elapsed().as_secs_f64();
    println!(
        "(a) cohort: {cohort:.0} placements/s (median of {}); baseline score-every-node: {baseline:.0}/s; ratio {:.0}x",
        rates.len(),
        cohort / baseline
    );
}

/// Fills `tenths` of the cluster's cpu with single-slot tasks of 1..4 cores.
fn fill(engine: &mut Engine, tenths: u64) {
    let mut id = 0u64;
    let target = NODES as u64 * 64_000 * tenths / 10;
    let mut held = 0;
    while held < target {
        let cpu = 1000 * (1 + id % 4);
        engine.apply(task(id, cpu, "batch")).unwrap();
        held += cpu;
        id += 1;
    }
    engine.schedule();
}

fn gangs_on_a_busy_cluster(c: &mut Criterion) {
    // 90% of cpu held by single-slot tasks of 1..4 cores.
    let mut engine = cluster();
    fill(&mut engine, 9);
    let mut next = 10_000_000u64;
    let mut samples = Vec::new();
    c.bench_function("b_64_slot_gang_on_90pct_full_10k_nodes", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let gang = GangId(next);
                next += 1;
                let spec = GangSpec::rigid("gang64", 64, Resources::new(2000, 4 * GIB), "batch", "default");
                let started = Instant::now();
                let d = engine.handle(Event::GangSubmitted { gang, spec }).unwrap();
                let took = started.elapsed();
                assert!(d.len() >= 64, "the gang was placed");
                total += took;
                samples.push(took);
                engine.handle(Event::GangCancelled { gang }).unwrap();
                let stops: Vec<AllocId> = d
                    .iter()
                    .filter_map(|x| if let Decision::Place { alloc, .. } = x { Some(*alloc) } else { None })
                    .collect();
                for alloc in stops {
                    engine.apply(Event::SlotFinished { alloc, outcome: SlotOutcome::Stopped }).unwrap();
                }
            }
            total
        })
    });
    percentiles("(b) 64-slot gang on a 90%-full 10k-node cluster", samples);
}

fn preemption_on_a_full_cluster(c: &mut Criterion) {
    // Every node full of 8-core batch tasks.
    let mut engine = cluster();
    for id in 0..NODES as u64 * 8 {
        engine.apply(task(id, 8000, "batch")).unwrap();
    }
    engine.schedule();
    let mut next = 10_000_000u64;
    let mut samples = Vec::new();
    c.bench_function("c_preemption_decision_on_full_10k_nodes", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let gang = GangId(next);
                next += 1;
                let spec = GangSpec::rigid("service", 4, Resources::new(16_000, 32 * GIB), "service", "default");
                let started = Instant::now();
                let d = engine.handle(Event::GangSubmitted { gang, spec }).unwrap();
                let took = started.elapsed();
                let victims: Vec<AllocId> = d
                    .iter()
                    .filter_map(|x| if let Decision::Stop { alloc, .. } = x { Some(*alloc) } else { None })
                    .collect();
                assert!(!victims.is_empty(), "the service preempted");
                total += took;
                samples.push(took);
                // Restore a full cluster: the service leaves, the victims come back.
                engine.apply(Event::GangCancelled { gang }).unwrap();
                for alloc in victims {
                    engine.apply(Event::SlotFinished { alloc, outcome: SlotOutcome::Stopped }).unwrap();
                }
                engine.schedule();
            }
            total
        })
    });
    percentiles("(c) preemption decision on a full 10k-node cluster", samples);
}

/// The constrained gangs of (d), cycled; `constrained: false` strips the constraints.
fn constrained_gang(k: u64, constrained: bool) -> GangSpec {
    let (name, n, cpu) = match k % 5 {
        0 => ("rack-query", 16, 1000),
        1 => ("zone-job", 64, 2000),
        2 => ("zone-pinned", 8, 2000),
        3 => ("replicas", 4, 2000),
        _ => ("spread", 32, 1000),
    };
    let mut spec = GangSpec::rigid(name, n, Resources::new(cpu, 4 * GIB), "batch", "default");
    if constrained {
        let c = &mut spec.constraints;
        match k % 5 {
            0 => c.within = Some("rack".into()),
            1 => c.within = Some("zone".into()),
            2 => {
                c.labels.insert("zone".into(), "z2".into());
            }
            3 => c.anti_affinity = Some("replicas".into()),
            _ => c.placement = Placement::Spread,
        }
    }
    spec
}

fn constrained_gangs(c: &mut Criterion) {
    // 70% of cpu held by single-slot tasks of 1..4 cores.
    let mut engine = labelled_cluster();
    fill(&mut engine, 7);
    let mut next = 10_000_000u64;
    let mut samples: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for (constrained, name) in
        [(true, "d_constrained_gangs_on_70pct_full_10k_nodes"), (false, "d_baseline_same_gangs_unconstrained")]
    {
        c.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let gang = GangId(next);
                    let spec = constrained_gang(next, constrained);
                    let n = spec.min as usize;
                    next += 1;
                    let started = Instant::now();
                    let d = engine.handle(Event::GangSubmitted { gang, spec }).unwrap();
                    let took = started.elapsed();
                    let placed: Vec<AllocId> = d
                        .iter()
                        .filter_map(|x| if let Decision::Place { alloc, .. } = x { Some(*alloc) } else { None })
                        .collect();
                    assert_eq!(placed.len(), n, "the gang was placed");
                    total += took;
                    samples[constrained as usize].push(took);
                    engine.handle(Event::GangCancelled { gang }).unwrap();
                    for alloc in placed {
                        engine.apply(Event::SlotFinished { alloc, outcome: SlotOutcome::Stopped }).unwrap();
                    }
                }
                total
            })
        });
    }
    let [baseline, constrained] = samples;
    let median = |s: &[Duration]| {
        let mut s = s.to_vec();
        s.sort();
        s.get(s.len() / 2).copied()
    };
    if let (Some(c), Some(b)) = (median(&constrained), median(&baseline)) {
        println!("(d) constrained ÷ unconstrained, median per gang: {:.2}", c.as_secs_f64() / b.as_secs_f64());
    }
    percentiles(
        "(d) constrained gangs (rack, zone, labels, anti-affinity, spread) on a 70%-full 10k-node cluster",
        constrained,
    );
    percentiles("(d) baseline: the same gangs unconstrained", baseline);
}

criterion_group!(benches, place_a_million, gangs_on_a_busy_cluster, preemption_on_a_full_cluster, constrained_gangs);
criterion_main!(benches);
