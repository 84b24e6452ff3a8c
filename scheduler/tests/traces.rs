//! Trace importers and the simulator, on small samples these tests write themselves.

mod common;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use cohort_scheduler::sim::{Report, simulate};
use cohort_scheduler::trace::{self, GenerateOptions, TraceError};
use cohort_scheduler::*;
use common::cpu;
use proptest::prelude::*;

const MACHINES: &str = "0\tzewura\t2\t80\t1\t529426432\n1\tzegox\t3\t12\t1\t94035968\n";

const SWF: &str = "\
; a header comment
0 1356996147 0 100 64 1 1024 64 86400 68719476736 1 62 1 1 -1 1 1 1 {1} q_1d 1:ppn=64:x86_64:cl_zewura#excl
1 1356996200 0 200 8 1 1024 8 7200 1073741824 1 7 1 1 -1 1 1 1 {1} q_2h 2:ppn=4:cl_zegox
2 1356996300 0 -5 1 1 1024 1 7200 1073741824 1 7 1 1 -1 1 1 1 {1} q_2h 1:ppn=1
3 1356996400 0 50 7 1 1024 7 7200 1073741824 1 9 1 1 -1 1 1 1 {1} backfill 1:ppn=1+3:ppn=2
4 1356996500 0 9000 4 1 1024 4 3600 1073741824 1 9 1 1 -1 1 1 1 {1} q_4h 1:ppn=4
5 1356996600 0 10 1 1 1024 1 3600 600000000000 1 9 1 1 -1 1 1 1 {1} q_4h 1:ppn=1
";

fn swf() -> trace::Trace {
    let nodes = trace::parse_swf_machines("m", MACHINES).unwrap();
    trace::parse_swf("log.swf", SWF, Some(nodes)).unwrap()
}

#[test]
fn swf_rows_become_gangs_under_the_readme_node_model() {
    let t = swf();
    assert_eq!(t.nodes.len(), 5);
    assert_eq!(t.nodes[0].labels["cluster"], "zewura");
    assert_eq!(t.jobs.len(), 5, "one row skipped");
    assert_eq!(t.skipped, BTreeMap::from([("negative runtime".to_string(), 1)]));
    let excl = &t.jobs[0];
    assert_eq!((excl.spec.min, excl.spec.slot.cpu_millis), (1, 64_000));
    assert!(excl.spec.constraints.exclusive);
    assert_eq!(excl.spec.constraints.labels["cluster"], "zewura");
    let wide = &t.jobs[1];
    assert_eq!((wide.submit, wide.spec.min, wide.spec.slot.cpu_millis), (53_000, 2, 4000));
    assert!(wide.spec.constraints.one_slot_per_node);
    assert_eq!(wide.spec.priority, "q_2h");
    assert_eq!(wide.spec.queue, "user-7");
    let mixed = &t.jobs[2];
    assert_eq!((mixed.spec.min, mixed.spec.slot.cpu_millis), (1, 7000), "mixed chunks: one slot with all cores");
    assert_eq!(t.jobs[3].runtime, 3_600_000, "runtime is capped at the walltime");
    assert_eq!(t.jobs[3].spec.estimated_runtime, Some(3_600_000));
    assert!(t.classes.iter().any(|c| c.name == "backfill" && c.preemptible));
}

#[test]
fn malformed_lines_are_reported_with_their_number() {
    let nodes = trace::parse_swf_machines("m", MACHINES).unwrap();
    let bad = format!("{SWF}6 1356996700 0 ten 1 1 1024 1 3600 1 1 9 1 1 -1 1 1 1 {{1}} q_4h 1:ppn=1\n");
    let err = trace::parse_swf("log.swf", &bad, Some(nodes)).unwrap_err();
    assert_eq!(
        err,
        TraceError::Line {
            file: "log.swf".into(),
            line: 8,
            message: "field 4 (run time) is `ten`, not a number".into()
        }
    );
    let err = trace::parse_jsonl(
        "t.jsonl",
        "{\"node\": {\"name\": \"a\", \"cpu\": \"2\", \"memory\": \"1GiB\"}}\n{\"job\": 3}\n",
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("t.jsonl:2: "), "{err}");
    let err = trace::parse_swf_machines("x.machines", "0 zewura twenty 80 1 5\n").unwrap_err();
    assert!(err.to_string().starts_with("x.machines:1: node count `twenty` is not a number"), "{err}");
    // Names the simulator could not tell apart
    let err = trace::parse_swf_machines("x.machines", "0 dup 1 4 1 1000\n1 dup 1 4 1 1000\n").unwrap_err();
    assert!(err.to_string().starts_with("x.machines:2: cluster `dup` is listed twice (first on line 1)"), "{err}");
    let err = trace::parse_swf_machines("x.machines", "0 a 12 4 1 1000\n1 a1 2 4 1 1000\n").unwrap_err();
    assert!(err.to_string().contains("x.machines:2: its node `a10`"), "{err}");
    // JSONL: a node named twice, a job id used twice, a class that does not exist, an overflowing time
    let node = r#"{"node": {"name": "n0", "cpu": "4", "memory": "8GiB"}}"#;
    let job = |id: u32, priority: &str, runtime: &str| {
        format!(
            r#"{{"job": {{"id": {id}, "submit": 0, "runtime": {runtime}, "priority": "{priority}", "min": 1, "max": 1, "cpu": "1", "memory": "1GiB"}}}}"#
        )
    };
    let jsonl = |lines: &[String]| trace::parse_jsonl("t.jsonl", &lines.join("\n")).map(|t| t.jobs.len());
    assert_eq!(jsonl(&[node.into(), job(1, "batch", "60")]), Ok(1), "queue defaults");
    let err = jsonl(&[node.into(), node.into()]).unwrap_err().to_string();
    assert_eq!(err, "t.jsonl:2: node `n0` is named twice (first on line 1)");
    let err = jsonl(&[node.into(), job(1, "batch", "60"), job(1, "batch", "60")]).unwrap_err().to_string();
    assert_eq!(err, "t.jsonl:3: job id 1 is used twice (first on line 2)");
    let err = jsonl(&[node.into(), job(1, "nosuch", "60")]).unwrap_err().to_string();
    assert!(err.starts_with("t.jsonl:2: job 1: priority `nosuch` is not a class of this trace ("), "{err}");
    let err = jsonl(&[node.into(), job(1, "batch", "1e308")]).unwrap_err().to_string();
    assert!(err.starts_with("t.jsonl:2: job 1: runtime") && err.contains("longer than any"), "{err}");
    let err = jsonl(&[node.into(), "{\"job\": {\"id\": 1}}".into()]).unwrap_err().to_string();
    assert!(err.starts_with("t.jsonl:2: missing field") && !err.contains("at line"), "{err}");
    // SWF: a time past any log's
    let huge =
        format!("{SWF}6 1356996700 0 99999999999999999999 1 1 1024 1 3600 1 1 9 1 1 -1 1 1 1 {{1}} q_4h 1:ppn=1\n");
    let err = trace::parse_swf("log.swf", &huge, Some(trace::parse_swf_machines("m", MACHINES).unwrap()))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("log.swf:8: field 4 (run time)") && err.contains("longer than any log runs"), "{err}");
}

#[test]
fn alibaba_batch_tasks_become_elastic_gangs() {
    let csv = "\
task_create_time, task_end_time, job_id, task_id,number_of_instances, status, number_of_cpus_requested_per_instance_in_the_task,normalized_memory_requested_per_instance_in_the_task
6459,6524,3,4,15,Terminated,50,0.0625
6457,6533,3,5,1,Terminated,100,0.01
-5,10,4,6,2,Terminated,50,0.01
100,90,4,7,2,Failed,50,0.01
200,300,5,8,3,Waiting,,
";
    let t = trace::parse_alibaba_batch("batch_task.csv", csv, None).unwrap();
    assert_eq!(t.nodes.len(), 1300);
    assert_eq!(t.jobs.len(), 3);
    assert_eq!(t.skipped, BTreeMap::from([("negative runtime".into(), 1), ("no cpu request".into(), 1)]));
    let task = t.jobs.iter().find(|j| j.id == 4).unwrap();
    assert_eq!((task.spec.min, task.spec.max, task.spec.completions), (1, 15, Some(15)));
    assert_eq!(task.spec.slot, Resources::new(500, 8 << 30));
    assert_eq!(task.runtime, 65_000);
    assert_eq!(t.jobs[0].submit, 0, "negative create times clamp to the trace start");
}

#[test]
fn alibaba_2018_batch_tasks_are_read_by_their_own_columns() {
    // Given rows of the 2018 trace (no header, as it is published)
    let csv = "\
M1,10,j_3,1,Terminated,86517,86524,50.0,0.5
R2_1,1,j_3,1,Terminated,86525,86530,100.0,1.0
task_Nzg3ODAwNjgzODc3MjEzNjQ1Ng==,2,j_17,1,Running,86530,0,100.0,0.49
M1,3,j_17,1,Terminated,86540,86600,,
";
    assert_eq!(trace::Format::guess("batch_task.csv", csv.lines().next().unwrap()), Some(trace::Format::AlibabaBatch));
    assert_eq!(trace::Format::guess("tasks.csv", csv.lines().next().unwrap()), Some(trace::Format::AlibabaBatch));
    // When read, then each finished task is an elastic gang on 4,034 nodes of 96 cores
    let t = trace::parse_alibaba_batch("batch_task.csv", csv, None).unwrap();
    assert_eq!((t.nodes.len(), t.nodes[0].capacity.cpu_millis), (4034, 96_000));
    assert_eq!(t.skipped, BTreeMap::from([("no cpu request".into(), 1), ("not finished in the trace".into(), 1)]));
    let names: Vec<&str> = t.jobs.iter().map(|j| j.spec.name.as_str()).collect();
    assert_eq!(names, ["j_3/M1", "j_3/R2_1"]);
    let first = &t.jobs[0];
    assert_eq!((first.spec.max, first.submit, first.runtime), (10, 86_517_000, 7_000));
    // plan_mem is a percentage of a node's memory
    assert_eq!(first.spec.slot, Resources::new(500, trace::alibaba_2018_cluster()[0].capacity.memory_bytes / 200));
    assert_eq!(first.spec.queue, "tenant-3");
    // A row short of the 2018 columns is named by its line
    let err = trace::parse_alibaba_batch("b.csv", "M1,10,j_3,1,Terminated,1,2,50,0.5\nM2,1,j_3\n", None).unwrap_err();
    assert!(err.to_string().starts_with("b.csv:2: expected 9 comma-separated columns"), "{err}");
}

#[test]
fn alibaba_openb_pods_carry_qos_and_gpus() {
    let nodes = trace::parse_openb_nodes(
        "nodes.csv",
        "sn,cpu_milli,memory_mib,gpu,model\nn0,32000,262144,2,V100M16\nn1,96000,786432,0,\n",
    )
    .unwrap();
    assert_eq!(nodes[0].capacity.scalars[0], 2000);
    let pods = "\
name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time
openb-pod-0000,12000,16384,1,460,,LS,Running,0,1000,0
openb-pod-0001,6000,12288,2,1000,,BE,Failed,10,20,
openb-pod-0002,0,0,0,0,,BE,Failed,10,20,12
";
    let t = trace::parse_alibaba_openb("pods.csv", pods, nodes).unwrap();
    assert_eq!(t.jobs.len(), 2);
    assert_eq!(t.jobs[0].spec.priority, "service");
    assert_eq!(t.jobs[0].spec.slot.scalars[0], 460);
    assert_eq!(t.jobs[1].spec.priority, "best-effort");
    assert_eq!(t.jobs[1].spec.slot.scalars[0], 2000);
    assert_eq!(t.jobs[1].runtime, 10_000);
    let err = trace::parse_alibaba_openb("pods.csv", "openb-pod-9,1,1,0,0,,Gold,Running,0,1,0\n", vec![]).unwrap_err();
    assert!(err.to_string().contains("unknown qos `Gold`"), "{err}");
}

#[test]
fn generated_traces_round_trip_through_jsonl() {
    let t = trace::generate(&GenerateOptions { nodes: 20, jobs: 300, seed: 7, load: 0.8 });
    assert_eq!((t.nodes.len(), t.jobs.len()), (20, 300));
    assert!(t.jobs.iter().any(|j| j.spec.priority == "streaming") && t.jobs.iter().any(|j| j.spec.min >= 16));
    let mut text = String::new();
    trace::write_jsonl(&t, &mut text);
    let back = trace::parse_jsonl("t.jsonl", &text).unwrap();
    assert_eq!(back.nodes, t.nodes);
    assert_eq!(back.jobs, t.jobs);
    let again = trace::generate(&GenerateOptions { nodes: 20, jobs: 300, seed: 7, load: 0.8 });
    assert_eq!(again.jobs, t.jobs, "same seed, same trace");
}

fn decisions_only(r: &Report) -> Report {
    Report { wall_ms: 0.0, placements_per_sec: 0.0, decision_latency_us: Default::default(), ..r.clone() }
}

#[test]
fn a_replay_is_deterministic_and_reports_unschedulable_jobs() {
    let t = swf();
    let a = simulate(&t, "cohort", Policy::cohort());
    let b = simulate(&t, "cohort", Policy::cohort());
    assert_eq!(decisions_only(&a), decisions_only(&b));
    assert_eq!(a.unschedulable, 1, "job 5 asks for more memory than any node has");
    assert_eq!(a.completed, 4);
    assert_eq!(a.stuck, 0);
    let g = trace::generate(&GenerateOptions { nodes: 30, jobs: 400, seed: 3, load: 0.9 });
    for policy in ["fcfs", "easy", "cohort"] {
        let x = simulate(&g, policy, Policy::by_name(policy).unwrap());
        let y = simulate(&g, policy, Policy::by_name(policy).unwrap());
        assert_eq!(decisions_only(&x), decisions_only(&y), "{policy}");
        assert_eq!(x.stuck, 0, "{policy}: every job that fits eventually ran");
        assert!(x.utilization_cpu > 0.0 && x.utilization_cpu <= 1.0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// EASY's promise: with exact runtime estimates, the job at the head of
    /// the queue starts no later than the reservation it was first given.
    #[test]
    fn easy_never_starts_the_head_later_than_its_reservation(
        jobs in prop::collection::vec((1u32..4, 1u64..8, 1u64..50, 0u64..5), 5..60)
    ) {
        let mut engine = Engine::new(Config { policy: Policy::easy(), ..Config::default() });
        for i in 0..4 {
            let spec = NodeSpec { name: format!("n{i}"), capacity: cpu(8), labels: Default::default() };
            engine.apply(Event::NodeAdded { node: NodeId(i), spec }).unwrap();
        }
        let mut ends: BinaryHeap<Reverse<(u64, AllocId)>> = BinaryHeap::new();
        let mut promised: BTreeMap<GangId, u64> = BTreeMap::new();
        let mut submit_at = 0;
        let mut queue: Vec<(u64, GangId, GangSpec, u64)> = Vec::new();
        for (i, (n, cores, secs, gap)) in jobs.iter().enumerate() {
            submit_at += gap * 1000;
            let mut spec = GangSpec::rigid(format!("j{i}"), *n, cpu(*cores), "batch", "default");
            spec.constraints.one_slot_per_node = true;
            spec.estimated_runtime = Some(secs * 1000);
            queue.push((submit_at, GangId(i as u64), spec, secs * 1000));
        }
        let runtime: BTreeMap<GangId, u64> = queue.iter().map(|q| (q.1, q.3)).collect();
        let mut next = 0;
        let mut now = 0;
        loop {
            let t_sub = queue.get(next).map(|q| q.0);
            let t_end = ends.peek().map(|r| r.0.0);
            now = match (t_sub, t_end) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => break,
            };
            engine.apply(Event::TimeAdvanced { now }).unwrap();
            while let Some(&Reverse((end, alloc))) = ends.peek() {
                if end > now { break; }
                ends.pop();
                engine.apply(Event::SlotFinished { alloc, outcome: SlotOutcome::Succeeded }).unwrap();
            }
            while next < queue.len() && queue[next].0 == now {
                let (_, gang, spec, _) = queue[next].clone();
                engine.apply(Event::GangSubmitted { gang, spec }).unwrap();
                next += 1;
            }
            for d in engine.schedule() {
                match d {
                    Decision::Reserve { gang, start, .. } => {
                        promised.entry(gang).or_insert(start);
                    }
                    Decision::Place { gang, alloc, .. } => {
                        if let Some(&start) = promised.get(&gang) {
                            prop_assert!(now <= start, "{gang:?} was promised {start} but started at {now}");
                        }
                        ends.push(Reverse((now + runtime[&gang], alloc)));
                    }
                    _ => {}
                }
            }
        }
        prop_assert_eq!(engine.pending_count(), 0, "all jobs ran by t={}", now);
    }
}

/// A value for a field of a log line: numbers of every size and sign,
/// floats, nonsense and nothing.
fn field() -> impl Strategy<Value = String> {
    // Mostly numbers, so that whole lines parse and reach the checks past parsing.
    prop_oneof![
        4 => any::<i64>().prop_map(|v| v.to_string()),
        4 => any::<u64>().prop_map(|v| v.to_string()),
        4 => any::<f64>().prop_map(|v| v.to_string()),
        30 => (0u64..100_000).prop_map(|v| v.to_string()),
        4 => Just("-1".to_string()),
        1 => Just(String::new()),
        1 => Just("1e400".to_string()),
        1 => Just("NaN".to_string()),
        1 => "[a-zA-Z:=#{}]{0,6}",
    ]
}

/// Lines of `fields` values joined by `sep`.
fn lines(fields: std::ops::Range<usize>, sep: &'static str) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::collection::vec(field(), fields), 0..12)
        .prop_map(move |rows| rows.iter().map(|r| r.join(sep)).collect::<Vec<_>>().join("\n"))
}

/// An importer's answer to input nobody here wrote: a trace, or an error
/// that names the file (and the line, where there is one).
fn named(result: Result<trace::Trace, TraceError>, file: &str) -> Result<(), TestCaseError> {
    if let Err(e) = result {
        prop_assert!(e.to_string().starts_with(file), "{e}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic an importer.
    #[test]
    fn importers_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let text = String::from_utf8_lossy(&bytes);
        named(trace::parse_swf("x.swf", &text, None), "x.swf")?;
        let _ = trace::parse_swf_machines("m.txt", &text);
        named(trace::parse_alibaba_batch("b.csv", &text, None), "b.csv")?;
        let _ = trace::parse_openb_nodes("n.csv", &text);
        named(trace::parse_alibaba_openb("p.csv", &text, Vec::new()), "p.csv")?;
        named(trace::parse_jsonl("t.jsonl", &text), "t.jsonl")?;
    }

    /// Lines shaped like each format's, with any values, never panic an
    /// importer: each answers with a trace or names the file and line.
    #[test]
    fn importers_never_panic_on_lines_of_the_right_shape(
        swf in lines(15..20, " "),
        machines in lines(5..7, "\t"),
        batch in lines(6..10, ","),
        nodes in lines(3..6, ","),
        pods in lines(8..14, ","),
    ) {
        let machines = trace::parse_swf_machines("m.txt", &machines).ok();
        named(trace::parse_swf("x.swf", &swf, machines), "x.swf")?;
        named(trace::parse_alibaba_batch("b.csv", &batch, None), "b.csv")?;
        let nodes = trace::parse_openb_nodes("n.csv", &nodes).unwrap_or_default();
        named(trace::parse_alibaba_openb("p.csv", &pods, nodes), "p.csv")?;
    }

    /// JSONL lines with the right keys and any values never panic it.
    #[test]
    fn jsonl_never_panics_on_lines_with_the_right_keys(
        values in prop::collection::vec((field(), field(), field(), field(), field()), 0..10)
    ) {
        let text: String = values
            .iter()
            .enumerate()
            .map(|(i, (a, b, c, d, e))| {
                if i % 3 == 0 {
                    format!(r#"{{"node": {{"name": "n{i}", "cpu": "{a}", "memory": "{b}"}}}}"#)
                } else {
                    format!(
                        r#"{{"job": {{"id": {i}, "submit": {a}, "runtime": {b}, "priority": "batch", "queue": "q", "min": {c}, "max": {d}, "cpu": "{e}", "memory": "1GiB"}}}}"#
                    )
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        named(trace::parse_jsonl("t.jsonl", &text), "t.jsonl")?;
    }
}
