//! Scheduler scenarios: given a cluster and a queue, when something happens,
//! then these decisions. One test per rule of the design.

mod common;

use cohort_scheduler::*;
use common::*;

// ---------- gangs ----------

#[test]
fn a_gang_starts_only_when_min_slots_fit_together() {
    // Given three 4-core nodes, one of them half full
    let mut c = Cluster::new(3, 4);
    c.gang(1, 2, "batch");
    // When a gang of three 3-core slots arrives (only two fit now)
    let (g, d) = c.gang(3, 3, "batch");
    // Then nothing is placed, and the reason says what is missing
    assert!(places(&d, g).is_empty());
    assert_eq!(c.phase(g), Some(GangPhase::Pending));
    let reason = c.reason(g);
    assert!(reason.contains("needs 3×(3 cpu, 3 GiB) together; 2 of 3 fit now"), "{reason}");
}

#[test]
fn a_gang_spanning_nodes_is_placed_in_one_pass() {
    let mut c = Cluster::new(2, 4);
    let (g, d) = c.gang(4, 2, "batch");
    let nodes = places(&d, g);
    assert_eq!(nodes.len(), 4);
    assert_eq!(nodes.iter().filter(|n| **n == NodeId(0)).count(), 2);
    assert_eq!(c.phase(g), Some(GangPhase::Running));
}

#[test]
fn a_gang_larger_than_the_cluster_is_reported_unschedulable() {
    let mut c = Cluster::new(2, 4);
    let (g, _) = c.gang(1, 8, "batch");
    assert!(
        c.reason(g).starts_with("unschedulable: no ready node can hold one slot of (8 cpu, 8 GiB)"),
        "{}",
        c.reason(g)
    );
    // And it does not block a smaller gang behind it
    let (small, d) = c.gang(1, 1, "batch");
    assert_eq!(places(&d, small).len(), 1);
}

#[test]
fn elastic_gangs_grow_as_room_appears_and_shrink_first() {
    // Given one 4-core node, half used by a batch gang
    let mut c = Cluster::new(1, 4);
    let (first, _) = c.gang(1, 2, "batch");
    // When an elastic gang (min 1, max 4, 1 core per slot) arrives, it takes the free half
    let mut spec = GangSpec::rigid("elastic", 1, cpu(1), "best-effort", "default");
    spec.max = 4;
    let (e, d) = c.submit(spec);
    assert_eq!(places(&d, e).len(), 2);
    // When the batch gang finishes, the elastic gang grows into the room
    let d = c.complete(first);
    assert_eq!(places(&d, e).len(), 2);
    assert!(d.iter().all(|x| !matches!(x, Decision::Place { elastic: false, .. })));
    // When a batch slot of 1 core arrives, one elastic slot is taken back, not the whole gang
    let (b, d) = c.gang(1, 1, "batch");
    assert_eq!(stops(&d), vec![(e, StopReason::Shrunk { by: b })]);
    assert_eq!(c.running(e), 3);
    let d = c.stops_done(&d);
    assert_eq!(places(&d, b).len(), 1);
}

// ---------- placement ----------

#[test]
fn packing_fills_the_fullest_node_that_fits() {
    let mut c = Cluster::new(3, 8);
    let (_, d) = c.gang(1, 6, "batch");
    let busy = places(&d, GangId(1))[0];
    let (g, d) = c.gang(1, 2, "batch");
    assert_eq!(places(&d, g), vec![busy], "the 2-core slot goes where 2 cores are left");
}

#[test]
fn spreading_uses_the_emptiest_nodes() {
    let mut c = Cluster::new(3, 8);
    c.gang(1, 6, "batch");
    let mut spec = GangSpec::rigid("spread", 2, cpu(1), "batch", "default");
    spec.constraints.placement = Placement::Spread;
    let (g, d) = c.submit(spec);
    let nodes = places(&d, g);
    assert_eq!(nodes.len(), 2);
    assert!(!nodes.contains(&NodeId(0)) || !nodes.contains(&NodeId(1)) || nodes[0] == nodes[1]);
    assert!(nodes.iter().all(|n| *n != places(&c.log, GangId(1))[0]));
}

#[test]
fn labels_anti_affinity_and_exclusive_nodes_are_respected() {
    let mut c = Cluster::new(0, 0);
    c.add_node(0, 8, &[("zone", "a")]);
    c.add_node(1, 8, &[("zone", "b")]);
    c.add_node(2, 8, &[("zone", "b")]);
    let mut spec = GangSpec::rigid("zoned", 2, cpu(1), "batch", "default");
    spec.constraints.labels.insert("zone".into(), "b".into());
    spec.constraints.one_slot_per_node = true;
    let (g, d) = c.submit(spec);
    let mut nodes = places(&d, g);
    nodes.sort();
    assert_eq!(nodes, vec![NodeId(1), NodeId(2)], "one slot on each zone-b node");
    let mut excl = GangSpec::rigid("exclusive", 1, cpu(1), "batch", "default");
    excl.constraints.exclusive = true;
    let (x, d) = c.submit(excl);
    assert_eq!(places(&d, x), vec![NodeId(0)], "only node 0 is idle");
    let (y, d) = c.gang(1, 1, "batch");
    assert!(!places(&d, y).contains(&NodeId(0)), "nobody shares an exclusive node");
}

#[test]
fn cached_data_draws_slots_to_its_nodes() {
    let mut c = Cluster::new(3, 8);
    let mut spec = GangSpec::rigid("reader", 1, cpu(1), "batch", "default");
    spec.locality = vec![("n2".into(), 10)];
    let (g, d) = c.submit(spec);
    assert_eq!(places(&d, g), vec![NodeId(2)]);
}

#[test]
fn a_service_grown_after_its_data_moved_places_its_new_slots_by_the_data() {
    // Given a one-slot service on a 3-node cluster
    let mut c = Cluster::new(3, 8);
    let mut spec = GangSpec::rigid("pool", 1, cpu(1), "interactive", "default");
    spec.restart = Restart::Always;
    spec.constraints.one_slot_per_node = true;
    let (g, d) = c.submit(spec);
    let first = places(&d, g);
    assert_eq!(first.len(), 1);
    // When its data is cached on the two other nodes, most on n1, and it grows to three
    let others: Vec<u32> = (0..3).filter(|n| NodeId(*n) != first[0]).collect();
    let locality = vec![(format!("n{}", others[1]), 5), (format!("n{}", others[0]), 9)];
    assert!(c.apply(Event::GangLocated { gang: g, locality }).is_empty(), "running slots stay");
    let d = c.apply(Event::GangResized { gang: g, max: 2 });
    // Then the new slot goes to the node holding most of the data
    assert_eq!(places(&d, g), vec![NodeId(others[0])]);
    // And a gang the engine does not know is an error
    assert!(c.engine.apply(Event::GangLocated { gang: GangId(999), locality: vec![] }).is_err());
}

// ---------- preemption ----------

#[test]
fn a_service_evicts_the_lowest_priority_gang_and_waits_for_it() {
    // Given two 4-core nodes, one full of best-effort work, one full of batch work
    let mut c = Cluster::new(2, 4);
    let (be, _) = c.gang(1, 4, "best-effort");
    let (batch, _) = c.gang(1, 4, "batch");
    // When a service needs one node
    let (svc, d) = c.gang(1, 4, "service");
    // Then the best-effort gang is stopped with a grace period, and the service waits for it
    assert_eq!(stops(&d), vec![(be, StopReason::Preempted { by: svc })]);
    let deadline = d.iter().find_map(|x| if let Decision::Stop { deadline, .. } = x { Some(*deadline) } else { None });
    assert_eq!(deadline, Some(30_000));
    assert!(places(&d, svc).is_empty());
    assert!(c.reason(svc).contains("preempting 1 lower-priority slot"), "{}", c.reason(svc));
    assert_eq!(c.phase(batch), Some(GangPhase::Running));
    // And nothing else takes the room during the grace period
    let (other, d) = c.gang(1, 1, "batch");
    assert!(places(&d, other).is_empty());
    // When the grace period ends, the service starts; the victim is re-queued, its attempt counted
    let d = c.at(30);
    assert_eq!(places(&d, svc).len(), 1);
    assert_eq!(c.phase(be), Some(GangPhase::Pending));
    assert_eq!(c.engine.gang(be).unwrap().attempts, 1);
    assert!(c.log.iter().any(|x| matches!(x, Decision::Requeued { gang, .. } if *gang == be)));
}

#[test]
fn no_preemption_of_equal_priority_or_protected_classes() {
    let mut c = Cluster::new(1, 4);
    let (_, _) = c.gang(1, 4, "batch");
    let (g, d) = c.gang(1, 4, "batch");
    assert!(stops(&d).is_empty());
    assert_eq!(c.phase(g), Some(GangPhase::Pending));
    let mut c = Cluster::new(1, 4);
    c.gang(1, 4, "service");
    let (_, d) = c.gang(1, 4, "system");
    assert!(stops(&d).is_empty(), "services are not preemptible");
}

#[test]
fn nobody_is_evicted_unless_the_preemptor_then_fits() {
    // Two nodes: one with best-effort work, one with a service. A 2-node system gang cannot fit.
    let mut c = Cluster::new(2, 4);
    c.gang(1, 4, "best-effort");
    c.gang(1, 4, "service");
    let mut spec = GangSpec::rigid("wide", 2, cpu(4), "system", "default");
    spec.constraints.one_slot_per_node = true;
    let (g, d) = c.submit(spec);
    assert!(stops(&d).is_empty());
    assert_eq!(c.phase(g), Some(GangPhase::Pending));
}

#[test]
fn the_cheapest_victims_are_chosen() {
    // Node 0 runs a batch gang that has worked 100 s; node 1 one that has worked 10 s.
    let mut c = Cluster::new(2, 4);
    let (old, _) = c.gang(1, 4, "batch");
    c.at(90);
    let (young, _) = c.gang(1, 4, "batch");
    c.at(100);
    let (svc, d) = c.gang(1, 4, "interactive");
    assert_eq!(stops(&d), vec![(young, StopReason::Preempted { by: svc })]);
    assert_eq!(c.phase(old), Some(GangPhase::Running));
}

#[test]
fn a_victim_never_preempts_its_preemptor_back() {
    // Queue `a` borrowed the whole cluster; `b` (guaranteed half) reclaims it.
    let config =
        Config { queues: vec![QueueSpec::new("a", 0.5, 1.0), QueueSpec::new("b", 0.5, 1.0)], ..Config::default() };
    let mut c = Cluster::with_config(2, 4, config);
    let (a1, _) = c.submit(GangSpec::rigid("a1", 1, cpu(4), "batch", "a"));
    let (a2, _) = c.submit(GangSpec::rigid("a2", 1, cpu(4), "batch", "a"));
    let (b1, d) = c.submit(GangSpec::rigid("b1", 1, cpu(4), "batch", "b"));
    let victims = stops(&d);
    assert_eq!(victims.len(), 1, "quota is reclaimed by preemption");
    let victim = victims[0].0;
    assert!(victim == a1 || victim == a2);
    let d = c.stops_done(&d);
    assert_eq!(places(&d, b1).len(), 1);
    // The victim, now pending, does not evict b1 back.
    let d = c.at(1000);
    assert!(stops(&d).is_empty());
    assert_eq!(c.phase(victim), Some(GangPhase::Pending));
}

// ---------- fairness and quotas ----------

#[test]
fn dominant_resource_fairness_orders_queues_within_a_priority() {
    // Queue `heavy` already holds 3 of 4 nodes; `light` holds nothing.
    let config = Config {
        queues: vec![QueueSpec::new("heavy", 0.0, 1.0), QueueSpec::new("light", 0.0, 1.0)],
        ..Config::default()
    };
    let mut c = Cluster::with_config(4, 4, config);
    for i in 0..3 {
        c.submit(GangSpec::rigid(format!("h{i}"), 1, cpu(4), "batch", "heavy"));
    }
    // When both queues ask for the last node in the same pass
    c.engine
        .apply(Event::GangSubmitted { gang: GangId(100), spec: GangSpec::rigid("h3", 1, cpu(4), "batch", "heavy") })
        .unwrap();
    c.engine
        .apply(Event::GangSubmitted { gang: GangId(101), spec: GangSpec::rigid("l0", 1, cpu(4), "batch", "light") })
        .unwrap();
    let d = c.engine.schedule();
    // Then the queue with the smaller dominant share wins, though it arrived later
    assert_eq!(places(&d, GangId(101)).len(), 1);
    assert!(places(&d, GangId(100)).is_empty());
}

#[test]
fn queue_caps_are_never_exceeded() {
    let config = Config { queues: vec![QueueSpec::new("capped", 0.0, 0.5)], ..Config::default() };
    let mut c = Cluster::with_config(4, 4, config);
    let mut placed = 0;
    for i in 0..4 {
        let (g, d) = c.submit(GangSpec::rigid(format!("c{i}"), 1, cpu(4), "batch", "capped"));
        placed += places(&d, g).len();
    }
    assert_eq!(placed, 2);
    let last = GangId(4);
    assert!(c.reason(last).contains("queue `capped` is at its cap"), "{}", c.reason(last));
}

// ---------- no starvation ----------

fn estimated(name: &str, n: u32, cores: u64, secs: u64) -> GangSpec {
    let mut s = GangSpec::rigid(name, n, cpu(cores), "batch", "default");
    s.estimated_runtime = Some(secs * 1000);
    s
}

#[test]
fn a_starving_wide_gang_gets_a_reservation_and_small_work_backfills_around_it() {
    let policy = Policy { reserve_after: 60_000, reserve_after_runtimes: None, ..Policy::cohort() };
    let mut c = Cluster::with_policy(2, 4, policy);
    // Given both nodes busy until t=100 and t=200
    c.submit(estimated("a", 1, 4, 100));
    c.submit(estimated("b", 1, 4, 200));
    // And a gang wanting both nodes
    let (wide, _) = c.submit(estimated("wide", 2, 4, 50));
    // When it has waited past the bound, it holds a reservation for t=200
    let d = c.at(60);
    assert!(d.iter().any(|x| matches!(x, Decision::Reserve { gang, start: 200_000, .. } if *gang == wide)), "{d:?}");
    assert!(c.reason(wide).contains("holds a reservation"));
    // When node a frees at t=100, a 50 s job backfills (done by 150 < 200)...
    let a = c.allocs_of(GangId(1))[0];
    c.at(100);
    let d = c.finish(a, SlotOutcome::Succeeded);
    assert!(places(&d, wide).is_empty());
    let (short, d) = c.submit(estimated("short", 1, 4, 50));
    assert_eq!(places(&d, short).len(), 1, "a job that ends before the reservation backfills");
    // ...but a 500 s job, which would delay the reservation, waits
    c.complete(short);
    let (long, d) = c.submit(estimated("long", 1, 4, 500));
    assert!(places(&d, long).is_empty(), "{}", c.reason(long));
    // When node b frees, the wide gang starts
    c.at(200);
    let d = c.complete(GangId(2));
    assert_eq!(places(&d, wide).len(), 2);
}

// ---------- baselines ----------

#[test]
fn fcfs_never_lets_a_later_gang_pass_a_blocked_one() {
    let mut c = Cluster::with_policy(1, 4, Policy::fcfs());
    c.submit(estimated("running", 1, 2, 100));
    let (big, _) = c.submit(estimated("big", 1, 4, 10));
    let (small, d) = c.submit(estimated("small", 1, 1, 10));
    assert!(places(&d, small).is_empty());
    assert!(c.reason(small).contains(&format!("waiting behind {big}")), "{}", c.reason(small));
}

#[test]
fn easy_backfills_a_short_job_without_delaying_the_head() {
    // The textbook example: 4 cores, 2 busy until t=100. The head wants all 4.
    let mut c = Cluster::with_policy(1, 4, Policy::easy());
    c.submit(estimated("running", 1, 2, 100));
    let (head, _) = c.submit(estimated("head", 1, 4, 100));
    // A short 2-core job ending by t=100 backfills into the idle half
    let (short, d) = c.submit(estimated("short", 1, 2, 90));
    assert_eq!(places(&d, short).len(), 1);
    // A long one that would push the head past t=100 waits
    c.complete(short);
    let (long, d) = c.submit(estimated("long", 1, 2, 300));
    assert!(places(&d, long).is_empty());
    // At t=100 the head starts on time
    c.at(100);
    let d = c.complete(GangId(1));
    assert_eq!(places(&d, head).len(), 1);
}

// ---------- nodes ----------

#[test]
fn draining_moves_services_and_lets_batch_finish() {
    let mut c = Cluster::new(2, 4);
    let mut svc = GangSpec::rigid("svc", 1, cpu(1), "service", "default");
    svc.locality = vec![("n0".into(), 1)];
    let (s, _) = c.submit(svc);
    let mut job = GangSpec::rigid("job", 1, cpu(1), "batch", "default");
    job.locality = vec![("n0".into(), 1)];
    let (b, _) = c.submit(job);
    let d = c.apply(Event::NodeDrained { node: NodeId(0) });
    assert_eq!(stops(&d), vec![(s, StopReason::Drained)]);
    assert_eq!(places(&d, s), vec![NodeId(1)], "the service moves to the other node");
    assert_eq!(c.phase(b), Some(GangPhase::Running), "batch finishes where it is");
    let d = c.stops_done(&d);
    assert!(!d.iter().any(|x| matches!(x, Decision::NodeDrained { .. })));
    let d = c.complete(b);
    assert!(d.iter().any(|x| matches!(x, Decision::NodeDrained { node: NodeId(0) })));
    // A cordoned node takes nothing new
    c.apply(Event::NodeCordoned { node: NodeId(1) });
    let (late, _) = c.gang(1, 1, "batch");
    assert_eq!(c.phase(late), Some(GangPhase::Pending));
}

#[test]
fn a_lost_node_requeues_gangs_that_fall_below_min() {
    let mut c = Cluster::new(3, 4);
    let mut spec = GangSpec::rigid("mpi", 2, cpu(4), "batch", "default");
    spec.constraints.one_slot_per_node = true;
    let (g, d) = c.submit(spec);
    let nodes = places(&d, g);
    let d = c.apply(Event::NodeLost { node: nodes[0] });
    // The surviving slot is stopped, the gang re-queued and placed again on the two live nodes
    assert!(stops(&d).iter().any(|(x, r)| *x == g && *r == StopReason::GangTornDown));
    assert!(d.iter().any(|x| matches!(x, Decision::Requeued { gang, .. } if *gang == g)));
    let d = c.stops_done(&d);
    let again = places(&d, g);
    assert_eq!(again.len(), 2);
    assert!(!again.contains(&nodes[0]));
}

// ---------- failures ----------

#[test]
fn failed_gangs_retry_with_backoff_until_attempts_run_out() {
    let mut c = Cluster::new(1, 4);
    let mut spec = GangSpec::rigid("flaky", 1, cpu(1), "batch", "default");
    spec.max_attempts = 2;
    let (g, _) = c.submit(spec);
    let a = c.allocs_of(g)[0];
    let d = c.finish(a, SlotOutcome::Failed);
    assert!(places(&d, g).is_empty(), "backoff holds the retry");
    // The reason gives the wait from now, never an absolute engine time
    assert!(c.reason(g).contains("retrying after failure 1 of 2 in 1.0 s"), "{}", c.reason(g));
    let d = c.at(1);
    assert_eq!(places(&d, g).len(), 1);
    let a = c.allocs_of(g)[0];
    let d = c.finish(a, SlotOutcome::Failed);
    assert_eq!(finished(&d, g), Some(GangOutcome::Failed));
}

#[test]
fn cancelling_stops_every_slot() {
    let mut c = Cluster::new(1, 4);
    let (g, _) = c.gang(2, 1, "batch");
    let d = c.apply(Event::GangCancelled { gang: g });
    assert_eq!(stops(&d).len(), 2);
    assert_eq!(finished(&d, g), Some(GangOutcome::Cancelled));
    assert!(c.engine.gang(g).is_none());
}

#[test]
fn bad_events_are_refused_and_change_nothing() {
    let mut c = Cluster::new(1, 4);
    let bad = GangSpec { min: 3, max: 2, ..GangSpec::rigid("bad", 1, cpu(1), "batch", "default") };
    let err = c.engine.apply(Event::GangSubmitted { gang: GangId(9), spec: bad }).unwrap_err();
    assert_eq!(err.to_string(), "invalid gang `bad`: max must be at least min");
    let unknown = GangSpec::rigid("x", 1, cpu(1), "gold", "default");
    let err = c.engine.apply(Event::GangSubmitted { gang: GangId(9), spec: unknown }).unwrap_err();
    assert!(err.to_string().starts_with("unknown priority class `gold`"));
    assert!(c.engine.apply(Event::TimeAdvanced { now: 0 }).is_ok());
    c.at(5);
    assert!(c.engine.apply(Event::TimeAdvanced { now: 1 }).is_err());
    assert_eq!(c.engine.pending_count(), 0);
}

// ---------- head-of-line blocking ----------

#[test]
fn hopeless_gangs_at_the_head_do_not_block_the_gangs_behind_them() {
    for policy in [Policy::fcfs(), Policy::easy(), Policy::cohort()] {
        // Given two 4-core nodes and 600 gangs that no node can ever hold
        let mut c = Cluster::with_policy(2, 4, policy.clone());
        let hopeless: Vec<GangId> = (0..600).map(|_| c.gang(1, 8, "batch").0).collect();
        // When 100 small gangs arrive behind them, one second apart
        let mut placed = 0;
        for t in 1..=100 {
            c.at(t);
            let (g, d) = c.gang(1, 1, "batch");
            placed += places(&d, g).len();
            c.complete(g);
        }
        // Then every small gang starts at once, and every hopeless one says why it waits
        assert_eq!(placed, 100, "{policy:?}");
        for g in hopeless {
            assert!(c.reason(g).starts_with("unschedulable: no ready node can hold"), "{}", c.reason(g));
        }
    }
}

fn zoned(policy: Policy) -> Cluster {
    let mut c = Cluster::with_policy(0, 4, policy);
    for (i, zone) in ["a", "a", "b", "b"].into_iter().enumerate() {
        c.add_node(i as u32, 4, &[("zone", zone)]);
    }
    c
}

#[test]
fn a_gang_no_domain_can_hold_is_unschedulable_and_blocks_no_one() {
    for policy in [Policy::fcfs(), Policy::easy(), Policy::cohort()] {
        // Given four 4-core nodes in two zones of two
        let mut c = zoned(policy.clone());
        // When a gang of three whole-node slots must stay within one zone
        let mut within = GangSpec::rigid("zoned", 3, cpu(4), "batch", "default");
        within.constraints.within = Some("zone".into());
        let (w, _) = c.submit(within);
        // Then it is unschedulable, naming the largest domain
        let reason = c.reason(w);
        assert!(reason.starts_with("unschedulable: needs 3×(4 cpu, 4 GiB) within one `zone`"), "{reason}");
        // And the same gang without the constraint, five seconds later, starts at once
        c.at(5);
        let (free, d) = c.gang(3, 4, "batch");
        assert_eq!(places(&d, free).len(), 3, "{policy:?}: {}", c.reason(free));
    }
}

#[test]
fn a_gang_that_cannot_fit_is_tried_again_when_the_cluster_grows() {
    let mut c = zoned(Policy::cohort());
    let mut within = GangSpec::rigid("zoned", 3, cpu(4), "batch", "default");
    within.constraints.within = Some("zone".into());
    let (w, _) = c.submit(within);
    assert!(c.reason(w).starts_with("unschedulable"));
    // A third node joins zone a: the parked gang is tried again and fits
    c.add_node(4, 4, &[("zone", "a")]);
    let nodes = places(&c.log, w);
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|n| [0, 1, 4].contains(&n.0)), "all in zone a: {nodes:?}");
}

#[test]
fn preemption_never_evicts_from_a_node_its_anti_affinity_group_holds() {
    // Given a service of group `web` on n0 beside a young batch gang, and an older batch gang on n1
    let mut c = Cluster::new(2, 4);
    let mut web = GangSpec::rigid("web-1", 1, cpu(1), "service", "default");
    web.constraints.anti_affinity = Some("web".into());
    let (_, d) = c.submit(web.clone());
    assert_eq!(d.iter().filter(|d| matches!(d, Decision::Place { node: NodeId(0), .. })).count(), 1);
    let (old, d) = c.gang(1, 4, "batch");
    assert_eq!(places(&d, old), vec![NodeId(1)]);
    c.at(60);
    let (young, d) = c.gang(1, 3, "batch");
    assert_eq!(places(&d, young), vec![NodeId(0)]);
    // When a second instance of `web` needs 3 cores, evicting the young gang would be
    // cheapest, but its node holds `web` already
    let mut web2 = web;
    web2.name = "web-2".into();
    web2.slot = cpu(3);
    let (w2, d) = c.submit(web2);
    // Then the older gang on n1 makes room, and the instance starts there
    assert_eq!(stops(&d).iter().map(|s| s.0).collect::<Vec<_>>(), vec![old]);
    let d = c.stops_done(&d);
    assert_eq!(places(&d, w2), vec![NodeId(1)]);
}

// ---------- infrastructure loss and services ----------

#[test]
fn a_slot_lost_with_its_host_uses_no_attempt_and_waits_no_backoff() {
    // Given a two-slot gang with one attempt
    let mut c = Cluster::new(2, 4);
    let (g, _) = c.gang(2, 2, "batch");
    let lost = c.allocs_of(g)[0];
    // When one slot is lost with its host
    let d = c.finish(lost, SlotOutcome::Lost);
    // Then the gang restarts whole at once, on the same attempt
    assert_eq!(places(&d, g).len(), 2, "{}", c.reason(g));
    assert_eq!(c.engine.gang(g).unwrap().attempts, 1);
    assert_eq!(c.engine.gang(g).unwrap().failures, 0);
}

fn service(instances: u32) -> GangSpec {
    let mut spec = GangSpec::rigid("web", 1, cpu(1), "service", "default");
    spec.max = instances;
    spec.restart = Restart::Always;
    spec
}

#[test]
fn a_service_instance_that_exits_restarts_after_a_backoff_that_doubles() {
    // Given a 3-instance service
    let mut c = Cluster::new(1, 4);
    let (s, d) = c.submit(service(3));
    assert_eq!(places(&d, s).len(), 3);
    // When one instance exits (even cleanly), the others keep running and it
    // comes back after 1 s, then 2 s, then 4 s as it keeps exiting
    let mut t = 0;
    for backoff in [1, 2, 4] {
        // The same instance each time: first slot 0, then its latest incarnation.
        let allocs = c.allocs_of(s);
        let instance = if backoff == 1 { allocs[0] } else { *allocs.last().unwrap() };
        c.finish(instance, SlotOutcome::Succeeded);
        assert_eq!(c.running(s), 2);
        assert!(places(&c.at(t + backoff - 1), s).is_empty(), "not before its backoff of {backoff} s");
        t += backoff;
        assert_eq!(places(&c.at(t), s).len(), 1, "back after {backoff} s");
    }
    // After ten minutes up, its next exit waits 1 s again
    t += 600;
    c.at(t);
    let instance = *c.allocs_of(s).last().unwrap();
    c.finish(instance, SlotOutcome::Failed);
    assert_eq!(places(&c.at(t + 1), s).len(), 1);
    // And a service never completes or runs out of attempts
    assert_eq!(c.phase(s), Some(GangPhase::Running));
}

#[test]
fn a_service_scales_up_and_down() {
    let mut c = Cluster::new(2, 4);
    let (s, _) = c.submit(service(2));
    let d = c.apply(Event::GangResized { gang: s, max: 5 });
    assert_eq!(places(&d, s).len(), 3);
    assert_eq!(c.running(s), 5);
    let d = c.apply(Event::GangResized { gang: s, max: 2 });
    assert_eq!(stops(&d).iter().filter(|(g, r)| *g == s && *r == StopReason::Scaled).count(), 3);
    assert_eq!(c.running(s), 2);
    // Batch gangs are not resized
    let (b, _) = c.gang(1, 1, "batch");
    assert!(c.engine.handle(Event::GangResized { gang: b, max: 3 }).is_err());
}

/// The allocation of one slot, from the decisions that placed it.
fn alloc_of_slot(decisions: &[Decision], gang: GangId, slot: u32) -> AllocId {
    decisions
        .iter()
        .find_map(|d| match d {
            Decision::Place { gang: g, slot: s, alloc, .. } if *g == gang && *s == slot => Some(*alloc),
            _ => None,
        })
        .expect("the slot was placed")
}

fn driver_and_workers(n: u32) -> GangSpec {
    let mut spec = GangSpec::rigid("report", n, cpu(1), "batch", "default");
    spec.restart = Restart::Leader;
    spec.max_attempts = 2;
    spec
}

#[test]
fn a_leader_gang_ends_with_its_leader_and_its_workers_are_stopped() {
    // Given a SQL job: a driver (slot 0) and two workers
    let mut c = Cluster::new(1, 4);
    let (g, d) = c.submit(driver_and_workers(3));
    assert_eq!(places(&d, g).len(), 3);
    let leader = alloc_of_slot(&d, g, 0);
    // When the driver succeeds
    let d = c.finish(leader, SlotOutcome::Succeeded);
    // Then the job succeeds and its workers are stopped as finished, not failed
    assert_eq!(finished(&d, g), Some(GangOutcome::Succeeded));
    let stopped = stops(&d);
    assert_eq!(stopped.len(), 2, "{stopped:?}");
    assert!(stopped.iter().all(|(gang, why)| *gang == g && *why == StopReason::Finished));
}

#[test]
fn a_leader_gang_whose_worker_fails_restarts_whole() {
    // Given a SQL job of a driver and two workers, two attempts allowed
    let mut c = Cluster::new(1, 4);
    let (g, d) = c.submit(driver_and_workers(3));
    let worker = alloc_of_slot(&d, g, 2);
    // When a worker fails, the attempt fails: everything stops and starts again
    let d = c.finish(worker, SlotOutcome::Failed);
    assert!(stops(&d).iter().all(|(_, why)| *why == StopReason::GangTornDown));
    assert_eq!(finished(&d, g), None);
    // And a worker that ends cleanly before the driver does not end the job
    let mut c = Cluster::new(1, 4);
    let (g, d) = c.submit(driver_and_workers(3));
    let worker = alloc_of_slot(&d, g, 1);
    let d = c.finish(worker, SlotOutcome::Succeeded);
    assert_eq!(finished(&d, g), None);
    assert_eq!(c.phase(g), Some(GangPhase::Running));
}
