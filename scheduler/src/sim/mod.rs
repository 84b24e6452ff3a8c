//! The trace-driven simulator: replays a [`Trace`] against the engine in
//! virtual time and measures the decisions (utilization, waits, slowdown,
//! preemptions) and the engine's speed.
//!
//! The replay is deterministic: the same trace and policy give the same
//! decisions and the same report, except for the wall-clock fields
//! (`wall_ms`, placements per second, decision latency), which are read
//! from a clock only to be reported, never to decide anything.
//!
//! Slots run exactly their trace runtime; victims of preemption stop at
//! once (the grace period is a real-cluster concern); a job's wait is the
//! time from submission to the start of the attempt that completed.

mod stats;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Instant;

use rustc_hash::FxHashSet;
use serde::Serialize;

use crate::engine::Engine;
use crate::event::{Decision, Event, SlotOutcome, StopReason};
use crate::model::{AllocId, Config, GangId, NodeId, Policy, PriorityClass, QueueSpec, Time};
use crate::resources::Resources;
use crate::trace::Trace;

pub use stats::Summary;

/// Bounded slowdown's floor on runtime (τ = 10 s), so that very short jobs
/// do not dominate the mean.
pub const SLOWDOWN_TAU_MS: Time = 10_000;

/// One point of the utilization and queue-length series.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Sample {
    pub t_s: f64,
    pub cpu: f64,
    pub memory: f64,
    pub pending: usize,
}

/// What a replay measured.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    pub policy: String,
    pub jobs: usize,
    pub completed: usize,
    /// Jobs no node could ever hold (reported, never waited on).
    pub unschedulable: usize,
    /// Jobs still waiting when nothing else could happen (should be 0).
    pub stuck: usize,
    pub skipped: BTreeMap<String, u64>,
    /// How the log was read where it leaves things open (see [`Trace::notes`]).
    pub notes: Vec<String>,
    /// Time-weighted share of cpu and memory held by slots over the makespan.
    pub utilization_cpu: f64,
    pub utilization_memory: f64,
    /// Seconds from submission to the start of the completing attempt.
    pub wait_s: Summary,
    pub wait_by_class_s: BTreeMap<String, Summary>,
    pub bounded_slowdown_mean: f64,
    pub makespan_s: f64,
    /// The job that waited longest: (job id, seconds).
    pub longest_wait: Option<(u64, f64)>,
    /// Slots stopped by preemption or shrinking, and the work they lost.
    pub preempted_slots: u64,
    pub lost_slot_seconds: f64,
    pub placements: u64,
    pub wall_ms: f64,
    pub placements_per_sec: f64,
    /// Wall time of one scheduling pass, in microseconds.
    pub decision_latency_us: Summary,
    #[serde(skip)]
    pub series: Vec<Sample>,
    #[serde(skip)]
    pub waits: Vec<f64>,
}

#[derive(Default, Clone)]
struct JobState {
    start: Option<Time>,
    end: Option<Time>,
}

/// Slots of one gang placed together: consecutive allocation ids that start
/// and (unless stopped) end together.
struct Batch {
    first: u64,
    count: u64,
    /// Slots of it stopped before the batch's end.
    stopped: u64,
    start: Time,
    res: Resources,
}

impl Batch {
    fn contains(&self, alloc: AllocId) -> bool {
        (self.first..self.first + self.count).contains(&alloc.0)
    }
}

/// Replays `trace` under `policy`.
pub fn simulate(trace: &Trace, policy_name: &str, policy: Policy) -> Report {
    let classes = if trace.classes.is_empty() { PriorityClass::defaults() } else { trace.classes.clone() };
    let config = Config { classes, queues: Vec::new(), auto_queue: Some(QueueSpec::new("*", 0.0, 1.0)), policy };
    let mut engine = Engine::new(config);
    let wall = Instant::now();
    for (i, spec) in trace.nodes.iter().enumerate() {
        engine
            .apply(Event::NodeAdded { node: NodeId(i as u32), spec: spec.clone() })
            .expect("trace nodes have unique names");
    }
    let jobs = &trace.jobs;
    let mut state = vec![JobState::default(); jobs.len()];
    // Slots placed together end together: one heap entry per batch, found
    // by its first allocation when one of its slots is stopped early.
    let mut ends: BinaryHeap<Reverse<(Time, usize)>> = BinaryHeap::new();
    let mut batches: Vec<Batch> = Vec::new();
    let mut free_batches: Vec<usize> = Vec::new();
    let mut live_batches: BTreeMap<u64, usize> = BTreeMap::new();
    let mut stopped_early: FxHashSet<AllocId> = FxHashSet::default();
    let mut ending: Vec<(u64, u64)> = Vec::new();
    let capacity = engine.capacity();
    let mut held = Resources::ZERO;
    let (mut cpu_area, mut mem_area) = (0.0f64, 0.0f64);
    let mut last_t: Time = 0;
    let mut latencies: Vec<u64> = Vec::new();
    let (mut placements, mut preempted_slots, mut lost_ms) = (0u64, 0u64, 0u128);
    let horizon = jobs.last().map_or(1, |j| j.submit).max(1000);
    let sample_every = (horizon / 1000).max(1000);
    let mut next_sample = 0;
    let mut series = Vec::new();
    let mut next_job = 0;
    let mut rejected = 0usize;
    let mut decisions = Vec::new();

    loop {
        let t_submit = jobs.get(next_job).map(|j| j.submit);
        let t_end = ends.peek().map(|r| r.0.0);
        let t = match (t_submit, t_end) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => break,
        };
        let dt = (t - last_t) as f64;
        cpu_area += held.cpu_millis as f64 * dt;
        mem_area += held.memory_bytes as f64 * dt;
        last_t = t;
        engine.apply(Event::TimeAdvanced { now: t }).expect("time moves forward");
        // Everything ending now, reported in allocation order (a canonical order
        // the policy's runtime predictions see).
        ending.clear();
        while let Some(&Reverse((end, b))) = ends.peek() {
            if end > t {
                break;
            }
            ends.pop();
            let batch = &batches[b];
            ending.push((batch.first, batch.count));
            held -= batch.res.times((batch.count - batch.stopped) as u32);
            live_batches.remove(&batch.first);
            free_batches.push(b);
        }
        ending.sort_unstable();
        for &(first, count) in &ending {
            for alloc in (first..first + count).map(AllocId) {
                if !stopped_early.remove(&alloc) {
                    engine.apply(Event::SlotFinished { alloc, outcome: SlotOutcome::Succeeded }).expect("live slot");
                }
            }
        }
        while next_job < jobs.len() && jobs[next_job].submit == t {
            let job = &jobs[next_job];
            let event = Event::GangSubmitted { gang: GangId(next_job as u64), spec: job.spec.clone() };
            if engine.apply(event).is_err() {
                rejected += 1;
            }
            next_job += 1;
        }
        // Victims stop at once, which frees room: schedule again until nothing moves.
        loop {
            let started = Instant::now();
            decisions.clear();
            engine.schedule_into(&mut decisions);
            latencies.push(started.elapsed().as_nanos() as u64);
            #[cfg(debug_assertions)]
            if let Err(broken) = engine.check_invariants() {
                panic!("the engine broke an invariant at t={t} ms: {broken}");
            }
            let mut stopped = false;
            let mut placed: Option<(GangId, usize)> = None;
            for d in decisions.drain(..) {
                match d {
                    Decision::Place { gang, alloc, resources, .. } => {
                        let job = gang.0 as usize;
                        placements += 1;
                        held += resources;
                        state[job].start.get_or_insert(t);
                        match placed {
                            Some((g, b)) if g == gang && batches[b].first + batches[b].count == alloc.0 => {
                                batches[b].count += 1;
                            }
                            _ => {
                                let batch = Batch { first: alloc.0, count: 1, stopped: 0, start: t, res: resources };
                                let b = match free_batches.pop() {
                                    Some(b) => {
                                        batches[b] = batch;
                                        b
                                    }
                                    None => {
                                        batches.push(batch);
                                        batches.len() - 1
                                    }
                                };
                                ends.push(Reverse((t + jobs[job].runtime, b)));
                                live_batches.insert(alloc.0, b);
                                placed = Some((gang, b));
                            }
                        }
                    }
                    Decision::Stop { alloc, reason, .. } => {
                        let batch = live_batches.range(..=alloc.0).next_back().map(|(_, &b)| b);
                        if let Some(b) = batch.filter(|&b| batches[b].contains(alloc))
                            && stopped_early.insert(alloc)
                        {
                            let batch = &mut batches[b];
                            batch.stopped += 1;
                            held -= batch.res;
                            if matches!(reason, StopReason::Preempted { .. } | StopReason::Shrunk { .. }) {
                                preempted_slots += 1;
                                lost_ms += (t - batch.start) as u128;
                            }
                        }
                        engine
                            .apply(Event::SlotFinished { alloc, outcome: SlotOutcome::Stopped })
                            .expect("stopping slot");
                        stopped = true;
                    }
                    Decision::Requeued { gang, .. } => state[gang.0 as usize].start = None,
                    Decision::Finished { gang, .. } => state[gang.0 as usize].end = Some(t),
                    _ => {}
                }
            }
            if !stopped {
                break;
            }
        }
        if t >= next_sample {
            series.push(Sample {
                t_s: t as f64 / 1000.0,
                cpu: held.cpu_millis as f64 / capacity.cpu_millis.max(1) as f64,
                memory: held.memory_bytes as f64 / capacity.memory_bytes.max(1) as f64,
                pending: engine.pending_count(),
            });
            next_sample = t + sample_every;
        }
    }
    let wall_ms = wall.elapsed().as_secs_f64() * 1000.0;

    let mut unschedulable = rejected;
    let mut stuck = 0;
    for id in engine.gang_ids() {
        let g = engine.gang(id).expect("listed gang");
        if g.reason.as_deref().is_some_and(|r| r.starts_with("unschedulable")) {
            unschedulable += 1;
        } else {
            stuck += 1;
        }
    }
    let makespan = last_t.max(1) as f64;
    let mut waits = Vec::new();
    let mut by_class: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut slowdown_sum = 0.0;
    let mut longest: Option<(u64, f64)> = None;
    for (job, s) in jobs.iter().zip(&state) {
        let (Some(start), Some(end)) = (s.start, s.end) else { continue };
        let wait = (start - job.submit) as f64 / 1000.0;
        waits.push(wait);
        by_class.entry(job.spec.priority.clone()).or_default().push(wait);
        let response = (end - job.submit) as f64;
        slowdown_sum += (response / job.runtime.max(SLOWDOWN_TAU_MS) as f64).max(1.0);
        if longest.is_none_or(|(_, w)| wait > w) {
            longest = Some((job.id, wait));
        }
    }
    let completed = waits.len();
    Report {
        policy: policy_name.to_string(),
        jobs: jobs.len(),
        completed,
        unschedulable,
        stuck,
        skipped: trace.skipped.clone(),
        notes: trace.notes.clone(),
        utilization_cpu: cpu_area / (capacity.cpu_millis.max(1) as f64 * makespan),
        utilization_memory: mem_area / (capacity.memory_bytes.max(1) as f64 * makespan),
        wait_s: Summary::of(&waits),
        wait_by_class_s: by_class.iter().map(|(k, v)| (k.clone(), Summary::of(v))).collect(),
        bounded_slowdown_mean: if completed > 0 { slowdown_sum / completed as f64 } else { 0.0 },
        makespan_s: makespan / 1000.0,
        longest_wait: longest,
        preempted_slots,
        lost_slot_seconds: lost_ms as f64 / 1000.0,
        placements,
        wall_ms,
        placements_per_sec: placements as f64 / (wall_ms / 1000.0).max(1e-9),
        decision_latency_us: Summary::of(&latencies.iter().map(|&n| n as f64 / 1000.0).collect::<Vec<_>>()),
        series,
        waits,
    }
}
