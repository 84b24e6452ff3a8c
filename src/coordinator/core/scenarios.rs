//! The coordinator core in-process, under a fake clock, with agents played
//! by the test: given this cluster and these jobs, when this happens, then
//! these commands and states. Each runs in milliseconds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cohort_scheduler::{NodeState, Resources};

use super::model::{AgentCommand, AgentReport, ExitReport, JobState, Launch, Registration, RunningExecutor, SlotState};
use super::{CoordinatorError, Core, CoreSettings, FakeClock, RecordingSink};
use crate::coordinator::store::{Snapshot, SqliteStore, StateStore, StoreError, Write};

/// A store that fails its `n`th commit (counting from 1), and every one after.
struct FailingStore {
    inner: SqliteStore,
    commits: Arc<AtomicUsize>,
    fail_from: usize,
}

impl StateStore for FailingStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.inner.load()
    }

    fn commit(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        let n = self.commits.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= self.fail_from {
            return Err(StoreError::Failed("disk full".into()));
        }
        self.inner.commit(writes)
    }
}

/// An agent of `cores` cores, 8 GiB, 110 executors and ports 31000-31099.
fn registration(name: &str, cores: u64) -> Registration {
    Registration {
        name: name.into(),
        capacity: Resources::new(cores * 1000, 8 << 30),
        labels: BTreeMap::new(),
        logs_address: format!("{name}:1"),
        running: Vec::new(),
        ended: Vec::new(),
        isolation: "test".into(),
        max_executors: 110,
        ports: Some((31000, 31099)),
        address: format!("{name}.example"),
        runs_as: "nobody".into(),
    }
}

struct Harness {
    core: Core,
    clock: FakeClock,
    sink: RecordingSink,
    _dir: tempfile::TempDir,
    db: PathBuf,
    /// Executors each agent runs (alloc → (job, slot)), as the test plays them.
    running: BTreeMap<String, Vec<RunningExecutor>>,
}

const TIMEOUT: Duration = Duration::from_secs(5);

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("state.db");
        let clock = FakeClock::starting_at(1_000_000);
        let sink = RecordingSink::default();
        let core = Harness::open(&db, &clock, &sink, None);
        Harness { core, clock, sink, _dir: dir, db, running: BTreeMap::new() }
    }

    fn open(db: &std::path::Path, clock: &FakeClock, sink: &RecordingSink, fail_from: Option<usize>) -> Core {
        let inner = SqliteStore::open(db).expect("open the store");
        let store: Box<dyn StateStore> = match fail_from {
            Some(fail_from) => Box::new(FailingStore { inner, commits: Arc::default(), fail_from }),
            None => Box::new(inner),
        };
        let settings = CoreSettings {
            heartbeat_timeout: TIMEOUT,
            heartbeat_interval: Duration::from_secs(1),
            ..CoreSettings::default()
        };
        Core::open(store, Arc::new(clock.clone()), Box::new(sink.clone()), settings).expect("open the core")
    }

    /// The coordinator process dies and starts again over the same store.
    fn restart(&mut self, fail_from: Option<usize>) {
        self.core = Harness::open(&self.db, &self.clock, &self.sink, fail_from);
    }

    fn register(&mut self, name: &str, cores: u64) -> u32 {
        let mut reg = registration(name, cores);
        reg.running = self.running.get(name).cloned().unwrap_or_default();
        self.register_as(reg)
    }

    fn register_as(&mut self, reg: Registration) -> u32 {
        let node = self.core.register(reg).expect("registered").node;
        self.core.attached(node);
        node
    }

    fn submit(&mut self, name: &str, slots: u32, cpu: &str, max_attempts: u32) -> u64 {
        let spec = format!(
            "name = \"{name}\"\nmax_attempts = {max_attempts}\n[gang]\nmin = {slots}\ncpu = \"{cpu}\"\nmemory = \"64MiB\"\n[command]\nargv = [\"true\"]\n"
        );
        self.core.submit("job.toml", &spec).expect("accepted")
    }

    /// Launches sent since the last look; the agents start each one.
    fn launches(&mut self) -> Vec<(u32, Launch)> {
        let mut out = Vec::new();
        for (node, command) in self.sink.take() {
            if let AgentCommand::Launch(l) = command {
                let name = self.core.nodes().into_iter().find(|n| n.id == node).expect("known node").name;
                self.running.entry(name).or_default().push(RunningExecutor {
                    alloc: l.alloc,
                    job: l.job,
                    slot: l.slot,
                    pid: 100 + l.alloc as u32,
                });
                self.core.report(node, AgentReport::Started { alloc: l.alloc, pid: 100 + l.alloc as u32 }).unwrap();
                out.push((node, *l));
            }
        }
        out
    }

    fn exit(&mut self, node: u32, alloc: u64, exit_code: i32) {
        for list in self.running.values_mut() {
            list.retain(|r| r.alloc != alloc);
        }
        let report = ExitReport { alloc, exit_code, ..ExitReport::default() };
        self.core.report(node, AgentReport::Exited(report)).unwrap();
    }

    /// Time passes; only the named agents heartbeat.
    fn advance(&mut self, by: Duration, alive: &[u32]) {
        let step = Duration::from_millis(500);
        let mut left = by;
        while !left.is_zero() {
            let d = left.min(step);
            self.clock.advance(d);
            left -= d;
            for &node in alive {
                self.core.report(node, AgentReport::Heartbeat { running: vec![] }).unwrap();
            }
            self.core.tick().unwrap();
        }
    }

    fn state(&self, job: u64) -> JobState {
        self.core.job(job).unwrap().state
    }
}

#[test]
fn an_agent_that_stops_heartbeating_is_lost_and_its_gang_runs_elsewhere() {
    // Given two agents and a two-slot gang packed onto one of them
    let mut h = Harness::new();
    let a = h.register("a", 2);
    let b = h.register("b", 2);
    let job = h.submit("survivor", 2, "1", 3);
    let first = h.launches();
    assert_eq!(first.len(), 2);
    let home = first[0].0;
    assert!(first.iter().all(|(n, _)| *n == home), "packed onto one agent");
    let other = if home == a { b } else { a };
    // When the agent it runs on goes silent past the heartbeat timeout
    h.advance(TIMEOUT - Duration::from_millis(500), &[other]);
    assert!(h.launches().is_empty(), "not lost before the timeout");
    h.advance(Duration::from_secs(1), &[other]);
    // Then the node is lost and the gang is placed, whole, on the other agent
    let nodes = h.core.nodes();
    assert_eq!(nodes.iter().find(|n| n.id == home).unwrap().state, NodeState::Lost);
    let again = h.launches();
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|(n, l)| *n == other && l.job == job));
    assert_eq!(h.state(job), JobState::Running);
}

#[test]
fn a_restarted_coordinator_adopts_running_executors_and_launches_nothing() {
    // Given a job running on an agent
    let mut h = Harness::new();
    h.register("a", 4);
    let job = h.submit("long", 2, "1", 1);
    let launched = h.launches();
    assert_eq!(launched.len(), 2);
    let before = h.core.job(job).unwrap();
    // When the coordinator restarts from its store and the agent re-registers with what it runs
    h.restart(None);
    assert_eq!(h.core.job(job).unwrap().state, JobState::Running, "known before the agent returns");
    let node = h.register("a", 4);
    // Then nothing is launched or killed, and the job is as it was
    assert!(h.sink.take().is_empty(), "no command after adoption");
    let after = h.core.job(job).unwrap();
    assert_eq!(after.attempts, 1);
    assert_eq!(after.slots, before.slots);
    // And it finishes when its executors do
    for (_, l) in &launched {
        h.exit(node, l.alloc, 0);
    }
    assert_eq!(h.state(job), JobState::Succeeded);
}

#[test]
fn allocation_ids_are_never_issued_twice_across_a_restart() {
    // Given a job that ran and ended (its allocation's row is gone)
    let mut h = Harness::new();
    let node = h.register("a", 4);
    h.submit("first", 2, "1", 1);
    let first = h.launches();
    for (_, l) in &first {
        h.exit(node, l.alloc, 0);
    }
    let used = first.iter().map(|(_, l)| l.alloc).max().unwrap();
    // When the coordinator restarts with nothing running, and a job is submitted
    h.restart(None);
    h.register("a", 4);
    h.submit("second", 1, "1", 1);
    // Then its allocation has a new id: agents name logs and directories by them
    let second = h.launches();
    assert!(second.iter().all(|(_, l)| l.alloc > used), "{used} reused: {second:?}");
}

#[test]
fn a_job_cancelled_while_its_agent_is_away_is_stopped_when_the_agent_returns() {
    // Given a job running on an agent, and a coordinator that restarted
    let mut h = Harness::new();
    h.register("a", 4);
    let job = h.submit("stale", 2, "1", 1);
    let launched = h.launches();
    h.restart(None);
    // When the job is cancelled before the agent is back (so its kills are
    // held for a connection that registration voids)
    h.core.cancel(job).unwrap();
    h.sink.take();
    // Then registering, with the executors still running, kills them again
    h.register("a", 4);
    let mut killed: Vec<u64> = h
        .sink
        .take()
        .into_iter()
        .filter_map(|(_, c)| match c {
            AgentCommand::Kill { alloc, .. } => Some(alloc),
            _ => None,
        })
        .collect();
    killed.sort_unstable();
    let mut allocs: Vec<u64> = launched.iter().map(|(_, l)| l.alloc).collect();
    allocs.sort_unstable();
    assert_eq!(killed, allocs);
}

#[test]
fn a_failed_gang_is_retried_after_a_backoff_that_doubles() {
    let mut h = Harness::new();
    let node = h.register("a", 2);
    let job = h.submit("flaky", 1, "1", 3);
    let (_, first) = h.launches().remove(0);
    // When its slot fails, the job waits for the backoff (1 s) before it runs again
    h.exit(node, first.alloc, 1);
    assert_eq!(h.state(job), JobState::Pending);
    assert!(h.core.job(job).unwrap().reason.contains("retrying after failure 1 of 3"));
    h.advance(Duration::from_millis(500), &[node]);
    assert!(h.launches().is_empty(), "still backing off");
    h.advance(Duration::from_millis(500), &[node]);
    let (_, second) = h.launches().remove(0);
    assert_eq!(second.env["COHORT_ATTEMPT"], "2");
    // The second failure backs off for 2 s
    h.exit(node, second.alloc, 1);
    h.advance(Duration::from_millis(1500), &[node]);
    assert!(h.launches().is_empty(), "still backing off");
    h.advance(Duration::from_millis(500), &[node]);
    let (_, third) = h.launches().remove(0);
    // The third failure uses the last attempt
    h.exit(node, third.alloc, 1);
    let view = h.core.job(job).unwrap();
    assert_eq!(view.state, JobState::Failed);
    assert!(view.reason.contains("3 of 3 attempts used"), "{}", view.reason);
    assert!(view.reason.contains("exited with code 1"), "the last failure's own words stay: {}", view.reason);
}

#[test]
fn failures_count_against_a_jobs_attempts_across_a_restart() {
    // Given a job of 2 attempts whose first failed, retried and running
    let mut h = Harness::new();
    let node = h.register("a", 2);
    let job = h.submit("flaky", 1, "1", 2);
    let (_, first) = h.launches().remove(0);
    h.exit(node, first.alloc, 1);
    h.advance(Duration::from_secs(1), &[node]);
    let (_, second) = h.launches().remove(0);
    assert_eq!(second.env["COHORT_ATTEMPT"], "2");
    // When the coordinator restarts, the agent returns, and the second attempt fails
    h.restart(None);
    let node = h.register("a", 2);
    h.exit(node, second.alloc, 1);
    // Then that was the last attempt: no third run
    let view = h.core.job(job).unwrap();
    assert_eq!(view.state, JobState::Failed, "{}", view.reason);
    assert!(view.reason.contains("2 of 2 attempts used"), "{}", view.reason);
}

#[test]
fn a_store_failure_sends_nothing_and_a_restart_resumes_from_the_store() {
    // Given a stored pending job and no agents
    let mut h = Harness::new();
    let job = h.submit("wide", 2, "1", 1);
    // When the store fails on the turn that would place it (an agent registering)
    h.restart(Some(2));
    let err = h.core.register(registration("a", 2)).unwrap_err();
    assert!(matches!(err, CoordinatorError::Store(_)), "{err}");
    // Then no launch went out, and the core refuses everything until restarted
    assert!(h.sink.take().is_empty(), "nothing of a failed turn is sent");
    assert!(h.core.failed());
    assert!(matches!(h.core.submit("x.toml", "name = \"x\""), Err(CoordinatorError::Unavailable(_))));
    // When it restarts from the store, the job is pending and is placed once the agent returns
    h.restart(None);
    assert_eq!(h.state(job), JobState::Pending);
    h.register("a", 2);
    let launched = h.launches();
    assert_eq!(launched.len(), 2, "placed exactly once");
    let view = h.core.job(job).unwrap();
    assert!(view.slots.iter().all(|s| s.state == SlotState::Running));
}

#[test]
fn jobs_no_agent_can_hold_never_keep_a_small_job_waiting() {
    // Given two one-core agents and 520 jobs asking two cores each
    let mut h = Harness::new();
    h.register("a", 1);
    h.register("b", 1);
    let hopeless: Vec<u64> = (0..520).map(|i| h.submit(&format!("big{i}"), 1, "2", 1)).collect();
    // When a 100m job arrives, it starts at once
    let small = h.submit("small", 1, "100m", 1);
    assert_eq!(h.launches().len(), 1);
    assert_eq!(h.state(small), JobState::Running);
    // And every oversized job says why it waits
    for id in [hopeless[0], hopeless[519]] {
        let reason = h.core.job(id).unwrap().reason;
        assert!(reason.starts_with("unschedulable: no ready node can hold one slot"), "{reason}");
    }
}

// ---------- self-healing ----------

#[test]
fn a_job_whose_node_is_lost_runs_again_on_the_same_attempt() {
    let mut h = Harness::new();
    let a = h.register("a", 2);
    let b = h.register("b", 2);
    let job = h.submit("survivor", 2, "1", 1);
    let home = h.launches()[0].0;
    let other = if home == a { b } else { a };
    h.advance(TIMEOUT + Duration::from_secs(1), &[other]);
    let again = h.launches();
    assert_eq!(again.len(), 2);
    for (_, l) in &again {
        h.exit(other, l.alloc, 0);
    }
    let view = h.core.job(job).unwrap();
    assert_eq!((view.state, view.attempts), (JobState::Succeeded, 1), "max_attempts = 1 and still it succeeded");
    let outcomes: Vec<(&str, bool)> = view.history.iter().map(|e| (e.outcome.as_str(), e.charged)).collect();
    assert_eq!(outcomes, [("lost", false), ("succeeded", false)]);
}

#[test]
fn an_agent_back_from_a_restart_reports_how_its_executors_ended_meanwhile() {
    let mut h = Harness::new();
    h.register("a", 4);
    let job = h.submit("pair", 2, "1", 2);
    let launched = h.launches();
    // The agent restarts: one executor still runs, the other ended with code 3 while it was down
    let (kept, ended) = (&launched[0].1, &launched[1].1);
    let mut reg = registration("a", 4);
    reg.running = vec![RunningExecutor { alloc: kept.alloc, job, slot: kept.slot, pid: 7 }];
    reg.ended = vec![ExitReport { alloc: ended.alloc, exit_code: 3, ..ExitReport::default() }];
    h.register_as(reg);
    let view = h.core.job(job).unwrap();
    let slot = &view.slots[ended.slot as usize];
    assert_eq!((slot.state, slot.exit_code), (SlotState::Failed, 3), "the recorded exit, not a guess");
    let ended_entry = &view.history[0];
    assert_eq!((ended_entry.outcome.as_str(), ended_entry.charged), ("failed", true));
    assert!(ended_entry.reason.contains("exited with code 3"), "{}", ended_entry.reason);
    // An executor that vanished without a record was lost with its host: no attempt is used
    let mut h = Harness::new();
    h.register("a", 4);
    let job = h.submit("pair", 2, "1", 1);
    h.launches();
    h.register_as(registration("a", 4));
    let view = h.core.job(job).unwrap();
    assert_eq!(view.history[0].outcome, "lost");
    assert_eq!(h.launches().len(), 2, "placed again at once");
}

#[test]
fn a_job_lost_and_placed_again_in_one_pass_runs_with_no_stale_reason_and_one_open_run() {
    for (what, spec) in [
        (
            "command",
            "name = \"pair\"\n[gang]\nmin = 2\ncpu = \"1\"\nmemory = \"64MiB\"\n[command]\nargv = [\"true\"]\n",
        ),
        ("service", &WEB.replace("instances = 3", "instances = 1")),
    ] {
        // Given a running job whose agent restarts and comes back without its executors
        let mut h = Harness::new();
        h.register("a", 4);
        let job = h.core.submit("job.toml", spec).unwrap();
        h.launches();
        h.register_as(registration("a", 4));
        // When the same pass records the loss and places the job again
        assert!(!h.launches().is_empty(), "{what}: placed again at once");
        // Then the job is running, says nothing of the loss, and its history has the loss and one open run
        let view = h.core.job(job).unwrap();
        assert_eq!(view.state, JobState::Running, "{what}");
        assert_eq!(view.reason, "", "{what}: a running job keeps no reason from before");
        let entries: Vec<(&str, bool)> =
            view.history.iter().map(|e| (e.outcome.as_str(), e.ended_ms.is_none())).collect();
        assert_eq!(entries, [("lost", false), ("running", true)], "{what}: the loss once, then the new run");
    }
}

#[test]
fn a_host_runs_at_most_its_executor_limit() {
    let mut h = Harness::new();
    let mut reg = registration("a", 4);
    reg.max_executors = 3;
    h.register_as(reg);
    let spec = "name = \"tiny\"\n[gang]\nmin = 1\nmax = 100000\ncpu = \"1m\"\nmemory = \"16MiB\"\n[command]\nargv = [\"true\"]\n";
    let job = h.core.submit("tiny.toml", spec).unwrap();
    assert_eq!(h.launches().len(), 3, "no more than the host's limit");
    let wide = "name = \"wide\"\n[gang]\nmin = 4\ncpu = \"1m\"\nmemory = \"16MiB\"\n[command]\nargv = [\"true\"]\n";
    let w = h.core.submit("wide.toml", wide).unwrap();
    let reason = h.core.job(w).unwrap().reason;
    assert!(reason.contains("4×(1m cpu, 16 MiB)"), "{reason}");
    assert_eq!(h.core.job(job).unwrap().state, JobState::Running);
}

#[test]
fn a_pipeline_is_neither_scaled_by_hand_nor_replaced_by_a_second_create() {
    // Given a running pipeline
    let mut h = Harness::new();
    h.register("a", 8);
    let pipeline = "name = \"clicks\"\n[source.kafka]\ntopic = \"clicks\"\nschema = { url = \"Utf8\" }\n\
                    [sink.parquet]\npath = \"/data/clicks/\"\n";
    let id = h.core.submit("p.toml", pipeline).unwrap();
    // When a user scales it, then it is refused: its `[parallelism]` sizes it
    let e = h.core.scale_service(id, 5).unwrap_err().to_string();
    assert!(e.contains("is a pipeline job; only services scale"), "{e}");
    // When it is created again, changed or not, or a service takes its name, then that is refused too
    for (file, text) in [("p.toml", pipeline.to_string()), ("web.toml", WEB.replace("\"web\"", "\"clicks\""))] {
        let e = h.core.submit(file, &text).unwrap_err().to_string();
        assert!(e.contains("pipeline `clicks` already exists") && e.contains("delete it first"), "{e}");
    }
    assert_eq!(h.core.job(id).unwrap().state, JobState::Running, "the pipeline runs on, unchanged");
}

// ---------- services ----------

#[test]
fn a_name_means_the_job_of_that_name_still_running_before_newer_ended_ones() {
    // Given a running service `web`, then a command job also named `web` that has ended
    let mut h = Harness::new();
    h.register("a", 8);
    let service = h.core.submit("web.toml", WEB).unwrap();
    let command = "name = \"web\"\n[gang]\ncpu = \"100m\"\nmemory = \"16MiB\"\n[command]\nargv = [\"true\"]\n";
    let ended = h.core.submit("cmd.toml", command).unwrap();
    h.core.cancel(ended).unwrap();
    // When `web` is named, then it is the service
    assert_eq!(h.core.resolve("web").unwrap(), service);
    // And once the service has ended too, the newest of them
    h.core.cancel(service).unwrap();
    assert_eq!(h.core.resolve("web").unwrap(), ended);
}

const WEB: &str = r#"name = "web"
kind = "service"
[gang]
cpu = "250m"
memory = "128MiB"
[command]
argv = ["serve", "v1"]
[service]
instances = 3
ports = ["http"]
update_deadline = "60s"
[service.health]
http = "/"
interval = "1s"
grace = "5s"
"#;

impl Harness {
    /// Health reports for every running instance of a job, by version's argv.
    fn all_healthy(&mut self, node: u32, launches: &[(u32, Launch)]) {
        for (_, l) in launches {
            self.core
                .report(node, AgentReport::Health { alloc: l.alloc, healthy: true, detail: String::new() })
                .unwrap();
        }
    }
}

#[test]
fn service_instances_get_distinct_ports_and_only_healthy_ones_are_endpoints() {
    let mut h = Harness::new();
    let node = h.register("a", 4);
    let id = h.core.submit("web.toml", WEB).unwrap();
    let launched = h.launches();
    assert_eq!(launched.len(), 3);
    let mut ports: Vec<u16> = launched.iter().map(|(_, l)| l.ports["http"]).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3, "three instances on one node, three ports");
    assert!(
        launched.iter().all(|(_, l)| l.env["COHORT_PORT_HTTP"] == l.ports["http"].to_string() && l.health.is_some())
    );
    assert!(h.core.endpoints(id).unwrap().is_empty(), "nothing is healthy yet");
    h.all_healthy(node, &launched[..2]);
    let endpoints = h.core.endpoints(id).unwrap();
    assert_eq!(endpoints.len(), 2);
    assert_eq!(endpoints[0].host, "a.example");
    // An instance that exits is restarted after its backoff, on a port of its own
    h.exit(node, launched[0].1.alloc, 1);
    assert_eq!(h.core.endpoints(id).unwrap().len(), 1);
    h.advance(Duration::from_millis(500), &[node]);
    assert!(h.launches().is_empty(), "backing off");
    h.advance(Duration::from_millis(600), &[node]);
    assert_eq!(h.launches().len(), 1);
    let view = h.core.job(id).unwrap();
    assert_eq!(view.state, JobState::Running);
    assert!(view.history.iter().any(|e| e.outcome == "restarted" && e.reason.contains("exited with code 1")));
    // An instance its agent stopped for failing health checks, which shut down cleanly: the reason stays
    let why = "failed 5 health check(s) in a row: no answer within 2s";
    let report = ExitReport { alloc: launched[1].1.alloc, exit_code: 0, reason: why.into(), ..ExitReport::default() };
    h.core.report(node, AgentReport::Exited(report)).unwrap();
    let view = h.core.job(id).unwrap();
    assert!(
        view.history
            .iter()
            .any(|e| e.outcome == "restarted" && e.reason.ends_with(&format!("exited with code 0 ({why})"))),
        "{:?}",
        view.history
    );
}

#[test]
fn a_service_whose_only_instance_keeps_exiting_has_one_run_in_its_history() {
    // Given a one-instance service
    let mut h = Harness::new();
    let node = h.register("a", 4);
    let id = h.core.submit("web.toml", &WEB.replace("instances = 3", "instances = 1")).unwrap();
    let started = h.core.job(id).unwrap().history[0].started_ms;
    // When its instance exits 60 times (more than the history keeps) and is started again each time
    for _ in 0..60 {
        let launched = h.launches();
        assert_eq!(launched.len(), 1);
        h.exit(node, launched[0].1.alloc, 3);
        h.advance(Duration::from_secs(600), &[node]);
    }
    // Then its history has one run, still open, and an entry per exit
    let view = h.core.job(id).unwrap();
    let open: Vec<_> = view.history.iter().filter(|e| e.ended_ms.is_none()).collect();
    assert_eq!(open.len(), 1, "{:?}", view.history);
    assert_eq!(open[0].started_ms, started, "the run that began with the service");
    assert_eq!(view.history.iter().filter(|e| e.reason.contains("exited with code 3")).count(), 49, "the newest");
}

#[test]
fn a_service_scales_and_a_rolling_update_keeps_it_healthy() {
    let mut h = Harness::new();
    let node = h.register("a", 8);
    let id = h.core.submit("web.toml", WEB).unwrap();
    let v1 = h.launches();
    h.all_healthy(node, &v1);
    // Scale to 5 and back to 2
    h.core.scale(id, 5).unwrap();
    let more = h.launches();
    assert_eq!(more.len(), 2);
    h.all_healthy(node, &more);
    h.core.scale(id, 2).unwrap();
    let kills = h.sink.take().into_iter().filter(|(_, c)| matches!(c, AgentCommand::Kill { .. })).count();
    assert_eq!(kills, 3);
    assert_eq!(h.core.endpoints(id).unwrap().len(), 2);
    // A rolling update to v2: new instances start first, old ones stop only as new ones turn healthy
    assert_eq!(h.core.submit("web.toml", &WEB.replace("\"v1\"", "\"v2\"")).unwrap(), id, "the same service");
    let v2 = h.launches();
    assert_eq!(v2.len(), 3, "the update's spec asks for 3 instances");
    assert!(v2.iter().all(|(_, l)| l.argv[1] == "v2"));
    h.advance(Duration::from_millis(200), &[node]);
    assert_eq!(h.core.endpoints(id).unwrap().len(), 2, "old instances keep serving");
    h.all_healthy(node, &v2[..1]);
    h.advance(Duration::from_millis(200), &[node]);
    assert!(h.core.endpoints(id).unwrap().len() >= 2, "never below min_healthy");
    h.all_healthy(node, &v2[1..]);
    h.advance(Duration::from_millis(200), &[node]);
    let view = h.core.job(id).unwrap();
    let d = view.deployment.as_ref().unwrap();
    assert_eq!((d.state.as_str(), view.slots.len()), ("done", 3), "{d:?}");
    assert!(view.slots.iter().all(|s| s.version == 2));
}

#[test]
fn an_update_that_never_turns_healthy_is_rolled_back_by_itself() {
    let mut h = Harness::new();
    let node = h.register("a", 8);
    let id = h.core.submit("web.toml", WEB).unwrap();
    let v1 = h.launches();
    h.all_healthy(node, &v1);
    h.core.submit("web.toml", &WEB.replace("\"v1\"", "\"broken\"")).unwrap();
    let broken = h.launches();
    assert_eq!(broken.len(), 3);
    // Never healthy: at the deadline (60 s) the update is rolled back
    h.advance(Duration::from_secs(61), &[node]);
    let view = h.core.job(id).unwrap();
    let d = view.deployment.as_ref().unwrap();
    assert_eq!(d.state.as_str(), "rolled-back");
    assert!(d.reason.contains("not healthy within its update deadline"), "{}", d.reason);
    assert_eq!(h.core.endpoints(id).unwrap().len(), 3, "version 1 serves on");
    assert!(view.slots.iter().all(|s| s.version == 1));
}

#[test]
fn the_sql_catalog_is_stored_and_comes_back_in_creation_order() {
    use cohort_batch::TableDef;
    let def = |name: &str, ddl: &str| TableDef { name: name.into(), ddl: ddl.into() };
    // Given tables and a view over them, one table replaced and one dropped
    let mut h = Harness::new();
    h.core.put_table(def("events", "CREATE EXTERNAL TABLE events STORED AS PARQUET LOCATION '/d/e/'")).unwrap();
    h.core.put_table(def("users", "CREATE EXTERNAL TABLE users STORED AS CSV LOCATION '/d/u/'")).unwrap();
    h.core.put_table(def("big", "CREATE VIEW big AS SELECT * FROM events")).unwrap();
    h.core
        .put_table(def("EVENTS", "CREATE OR REPLACE EXTERNAL TABLE events STORED AS JSON LOCATION '/d/e2/'"))
        .unwrap();
    assert!(h.core.drop_table("users").unwrap());
    assert!(!h.core.drop_table("users").unwrap(), "dropping twice finds nothing");
    let before = h.core.tables();
    // When the coordinator restarts from its store
    h.restart(None);
    // Then the catalog is as it was: the replaced table counts as created last
    assert_eq!(h.core.tables(), before);
    let names: Vec<&str> = before.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["big", "EVENTS"]);
}

#[test]
fn cached_tables_are_stored_until_uncached() {
    use cohort_batch::CacheDef;
    let def = |name: &str, query: Option<&str>| CacheDef { name: name.into(), query: query.map(str::to_string) };
    // Given a cached table, two cached queries, one of them cached again, and one uncached
    let mut h = Harness::new();
    h.core.put_cache(def("events", None)).unwrap();
    h.core.put_cache(def("hot", Some("SELECT id FROM events WHERE k = 3"))).unwrap();
    h.core.put_cache(def("cold", Some("SELECT id FROM events WHERE k = 4"))).unwrap();
    h.core.put_cache(def("HOT", Some("SELECT id FROM events WHERE k = 5"))).unwrap();
    assert_eq!(h.core.drop_cache("cold").unwrap(), Some(def("cold", Some("SELECT id FROM events WHERE k = 4"))));
    assert_eq!(h.core.drop_cache("never-cached").unwrap(), None);
    // When the coordinator restarts from its store
    h.restart(None);
    // Then it knows what to cache again, in the order it was cached
    assert_eq!(h.core.caches(), vec![def("events", None), def("HOT", Some("SELECT id FROM events WHERE k = 5"))]);
}

#[test]
fn a_paused_service_stops_its_instances_stays_paused_across_a_restart_and_resumes() {
    let mut h = Harness::new();
    let node = h.register("a", 4);
    let id = h.core.submit("web.toml", WEB).unwrap();
    let v1 = h.launches();
    h.all_healthy(node, &v1);
    // Pausing stops every instance (with its grace period) and keeps the job
    let view = h.core.pause(id).unwrap();
    assert_eq!(view.state, JobState::Paused);
    let kills = h.sink.take().into_iter().filter(|(_, c)| matches!(c, AgentCommand::Kill { .. })).count();
    assert_eq!(kills, 3);
    assert!(matches!(h.core.pause(id), Err(CoordinatorError::Conflict(_))), "pausing twice is refused");
    for (_, l) in &v1 {
        h.exit(node, l.alloc, 0);
    }
    h.advance(Duration::from_secs(5), &[node]);
    assert!(h.launches().is_empty(), "nothing restarts a paused service");
    // Its history says paused, not cancelled
    let history = h.core.job(id).unwrap().history;
    let last = history.last().unwrap();
    assert_eq!(last.outcome, "paused", "{history:?}");
    assert!(history.iter().all(|e| !e.reason.contains("cancel")), "{history:?}");
    // A restarted coordinator keeps it paused
    h.restart(None);
    let node = h.register("a", 4);
    h.advance(Duration::from_secs(5), &[node]);
    assert!(h.launches().is_empty(), "still paused after a restart");
    assert_eq!(h.core.job(id).unwrap().state, JobState::Paused);
    // Then resumed: a new gang of the same spec
    let view = h.core.resume(id).unwrap();
    assert_ne!(view.state, JobState::Paused);
    let v2 = h.launches();
    assert_eq!(v2.len(), 3);
    assert!(matches!(h.core.resume(id), Err(CoordinatorError::Conflict(_))), "only a paused job resumes");
    let command = h.submit("batch", 1, "100m", 1);
    assert!(matches!(h.core.pause(command), Err(CoordinatorError::InvalidInput(_))), "batch jobs cancel, not pause");
}

#[test]
fn tokens_are_checked_by_queue_expire_on_the_clock_and_survive_a_restart() {
    use super::auth::{Principal, Role, job_token, new_token};
    let mut h = Harness::new();
    let (_, admin) = new_token(&[1; 16]);
    let (tenant_id, tenant) = new_token(&[2; 16]);
    let (_, brief) = new_token(&[3; 16]);
    h.core.create_token(&admin, Role::Admin, vec![], None, "admin".into()).unwrap();
    h.core.create_token(&tenant, Role::Submit, vec!["team-a".into()], None, String::new()).unwrap();
    h.core.create_token(&brief, Role::Admin, vec![], Some(60_000), String::new()).unwrap();
    assert!(h.core.create_token(&new_token(&[4; 16]).1, Role::Submit, vec![], None, String::new()).is_err());

    // Given a job in the default queue, the team-a token may not touch it.
    h.register("a", 4);
    let job = h.submit("theirs", 1, "1", 1);
    let who = h.core.authenticate(&tenant).unwrap();
    assert!(matches!(&who, Principal::Tenant { queues, .. } if queues.contains("team-a")));
    let refused = h.core.check_job(&who, job).unwrap_err().to_string();
    assert!(refused.contains("may not use job") && refused.contains("`default`"), "{refused}");
    assert!(h.core.check_job(&h.core.authenticate(&admin).unwrap(), job).is_ok());
    // A name means the tenant's own job, and another queue's is not there for them
    let spec = |queue: &str| {
        format!(
            "name = \"etl\"\nqueue = \"{queue}\"\n[gang]\ncpu = \"100m\"\nmemory = \"16MiB\"\n[command]\nargv = [\"true\"]\n"
        )
    };
    let own = h.core.submit("etl.toml", &spec("team-a")).unwrap();
    h.core.submit("etl.toml", &spec("default")).unwrap();
    assert_eq!(h.core.resolve_for(&who, "etl").unwrap(), own);
    let hidden = h.core.resolve_for(&who, "theirs").unwrap_err();
    assert!(matches!(hidden, CoordinatorError::NotFound(_)), "{hidden}");

    // Its executors' token works while the job lives, not after.
    let executors = h.core.authenticate(&job_token(&[0; 32], job)).unwrap();
    assert!(h.core.check_job(&executors, job).is_ok());
    assert!(h.core.authenticate(&job_token(&[9; 32], job)).is_err(), "another secret's token is forged");
    h.core.cancel(job).unwrap();
    assert!(h.core.authenticate(&job_token(&[0; 32], job)).unwrap_err().to_string().contains("ended with the job"));

    // A token expires on the core's clock; a revoked one is refused, across a restart too.
    h.clock.advance(Duration::from_secs(61));
    assert!(h.core.authenticate(&brief).unwrap_err().to_string().contains("expired"));
    h.core.revoke_token(&tenant_id).unwrap();
    h.restart(None);
    assert!(h.core.authenticate(&tenant).unwrap_err().to_string().contains("revoked"));
    let again = h.core.revoke_token(&tenant_id).unwrap_err();
    assert!(matches!(again, CoordinatorError::Conflict(_)) && again.to_string().contains("already revoked"), "{again}");
    assert!(h.core.authenticate(&admin).is_ok(), "tokens come back from the store");
    assert!(h.core.authenticate("cohort_nope_nope").is_err());
}

#[test]
fn a_join_token_buys_a_certificate_and_a_certificate_acts_only_as_its_node() {
    use super::auth::{Principal, Role, new_token};
    let mut h = Harness::new();
    let (_, join) = new_token(&[5; 16]);
    h.core.create_token(&join, Role::Agent, vec![], None, String::new()).unwrap();
    let joining = h.core.authenticate(&join).unwrap();
    // Given a join token: it may ask for a certificate, not register with itself.
    assert!(h.core.check_join(&joining).is_ok());
    let refused = h.core.check_agent(&joining, "a").unwrap_err().to_string();
    assert!(refused.contains("register with the certificate"), "{refused}");
    // When node `a` registers with its certificate
    let node = h.register("a", 4);
    let certified = Principal::Node { name: "a".into() };
    // Then it may attach as `a`, and not register or attach as another node
    assert!(h.core.check_agent(&certified, "a").is_ok());
    assert!(h.core.check_node(&certified, node).is_ok());
    let b = h.register("b", 4);
    assert!(h.core.check_agent(&certified, "b").unwrap_err().to_string().contains("may not register as node `b`"));
    assert!(h.core.check_node(&certified, b).is_err());
    // And a certificate is no user: it may not ask for another certificate, or touch jobs.
    assert!(h.core.check_join(&certified).is_err());
    assert!(h.core.check_user(&certified).is_err());
}
