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
        let reg = Registration {
            name: name.into(),
            capacity: Resources::new(cores * 1000, 8 << 30),
            labels: BTreeMap::new(),
            logs_address: format!("{name}:1"),
            running: self.running.get(name).cloned().unwrap_or_default(),
            isolation: "test".into(),
        };
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
                out.push((node, l));
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
}

#[test]
fn a_store_failure_sends_nothing_and_a_restart_resumes_from_the_store() {
    // Given a stored pending job and no agents
    let mut h = Harness::new();
    let job = h.submit("wide", 2, "1", 1);
    // When the store fails on the turn that would place it (an agent registering)
    h.restart(Some(2));
    let reg = Registration {
        name: "a".into(),
        capacity: Resources::new(2000, 8 << 30),
        labels: BTreeMap::new(),
        logs_address: String::new(),
        running: vec![],
        isolation: "test".into(),
    };
    let err = h.core.register(reg).unwrap_err();
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
