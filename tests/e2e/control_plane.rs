//! The control plane as a user meets it: submit, watch, kill things, recover.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::harness::Cluster;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn a_four_slot_gang_on_two_agents_starts_together_and_succeeds() {
    let c = Cluster::start(&[("a", 2), ("b", 2)]);
    let id = c.submit("together", 4, "1", "batch", "echo slot $COHORT_SLOT of $COHORT_GANG_SIZE; sleep 2");
    c.wait_until("all four slots run", WAIT, |c| c.running_slots(id).len() == 4);
    let nodes: BTreeSet<String> = c.running_slots(id).into_iter().map(|(n, _)| n).collect();
    assert_eq!(nodes, BTreeSet::from(["a".to_string(), "b".to_string()]), "the gang spans both agents");
    c.wait_until("the job succeeds", WAIT, |c| c.state(id) == "succeeded");
    let logs = c.cli(&["logs", &id.to_string(), "--slot", "3"]);
    assert_eq!(String::from_utf8_lossy(&logs.stdout).trim(), "slot 3 of 4");
    let listed = c.json(&["jobs"]);
    assert_eq!(listed[0]["id"], id);
    assert_eq!(listed[0]["attempts"], 1);
}

#[test]
fn a_gang_that_cannot_fit_stays_pending_with_its_reason() {
    let c = Cluster::start(&[("a", 2), ("b", 2)]);
    let id = c.submit("too-wide", 5, "1", "batch", "true");
    c.wait_until("the reason is reported", WAIT, |c| c.job(id)["reason"].as_str().is_some_and(|r| !r.is_empty()));
    let job = c.job(id);
    assert_eq!(job["state"], "pending");
    let reason = job["reason"].as_str().unwrap();
    assert!(reason.contains("5×(1 cpu, 64 MiB)"), "{reason}");
    let human = String::from_utf8_lossy(&c.cli(&["job", &id.to_string()]).stdout).to_string();
    assert!(human.contains("reason: "), "{human}");
}

#[test]
fn malformed_and_invalid_specs_get_clear_errors_and_change_nothing() {
    let c = Cluster::start(&[("a", 2)]);
    let bad = c.write(
        "bad.toml",
        "name = \"x\"\n[gang]\nmin = 0\ncpu = \"1\"\nmemory = \"1GiB\"\n[command]\nargv = [\"true\"]\n",
    );
    let out = c.cli(&["submit", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:3: gang.min: must be between 1 and 100000, got 0"), "{err}");
    let broken = c.write("broken.toml", "name = \"x\"\n[gang\n");
    let out = c.cli(&["submit", broken.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("broken.toml:2:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unknown = c.write(
        "gold.toml",
        "name = \"x\"\npriority = \"gold\"\n[gang]\ncpu = \"1\"\nmemory = \"1GiB\"\n[command]\nargv = [\"true\"]\n",
    );
    let out = c.cli(&["submit", unknown.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("gold.toml:2: priority: unknown priority class `gold`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.json(&["jobs"]).as_array().map(Vec::len), Some(0), "nothing was accepted");
}

#[test]
fn a_killed_agent_loses_its_gangs_and_they_run_again_elsewhere() {
    let mut c = Cluster::start(&[("a", 2), ("b", 2)]);
    let id = c.submit("survivor", 2, "1", "batch", "sleep 60");
    c.wait_until("both slots run", WAIT, |c| c.running_slots(id).len() == 2);
    let first = c.running_slots(id)[0].0.clone();
    c.kill_agent(&first);
    let other = if first == "a" { "b" } else { "a" };
    c.wait_until("the gang runs again on the surviving agent", WAIT, |c| {
        let slots = c.running_slots(id);
        slots.len() == 2 && slots.iter().all(|(n, _)| n == other)
    });
    assert_eq!(c.job(id)["attempts"], 1, "a lost host is not the job's failure");
    let nodes = c.json(&["nodes"]);
    let lost = nodes.as_array().unwrap().iter().find(|n| n["name"] == first.as_str()).unwrap();
    assert_eq!(lost["state"], "lost");
}

#[test]
fn a_coordinator_restart_keeps_jobs_and_running_executors() {
    let mut c = Cluster::start(&[("a", 2)]);
    let id = c.submit("long", 2, "500m", "batch", "echo started; sleep 8; echo done");
    c.wait_until("the slots run", WAIT, |c| c.running_slots(id).len() == 2);
    let before = c.job(id);
    let done = c.submit("done", 1, "100m", "batch", "true");
    c.wait_until("the short job succeeds", WAIT, |c| c.state(done) == "succeeded");
    c.kill_coordinator();
    c.start_coordinator();
    c.wait_until("the agent re-registers", WAIT, |c| {
        c.json(&["nodes"]).as_array().is_some_and(|n| n.iter().any(|n| n["state"] == "ready"))
    });
    let after = c.job(id);
    assert_eq!(after["state"], "running");
    assert_eq!(after["attempts"], 1, "nothing was restarted");
    assert_eq!(after["slots"], before["slots"], "the same executors on the same node");
    assert_eq!(c.state(done), "succeeded", "finished jobs are remembered");
    c.wait_until("the adopted job finishes", WAIT, |c| c.state(id) == "succeeded");
    let logs = String::from_utf8_lossy(&c.cli(&["logs", &id.to_string()]).stdout).to_string();
    assert_eq!(logs.trim(), "started\ndone", "one uninterrupted run");
}

#[test]
fn a_service_preempts_batch_gangs_which_are_requeued_and_later_succeed() {
    let c = Cluster::start(&[("a", 2), ("b", 2)]);
    // Batch gangs fill the cluster; each run takes 3 s.
    let batch: Vec<u64> = (0..2).map(|i| c.submit(&format!("batch{i}"), 2, "1", "batch", "sleep 3")).collect();
    c.wait_until("the batch gangs run", WAIT, |c| batch.iter().all(|&b| c.running_slots(b).len() == 2));
    let svc = c.submit("svc", 1, "2", "service", "sleep 2");
    c.wait_until("the service runs", WAIT, |c| c.running_slots(svc).len() == 1);
    let victims: Vec<u64> = batch
        .iter()
        .copied()
        .filter(|&b| c.job(b)["history"].as_array().is_some_and(|h| h.iter().any(|e| e["outcome"] == "preempted")))
        .collect();
    assert_eq!(victims.len(), 1, "exactly one batch gang made room");
    c.wait_until("every job succeeds", Duration::from_secs(60), |c| {
        batch.iter().chain([&svc]).all(|&j| c.state(j) == "succeeded")
    });
    let history = c.job(victims[0])["history"].as_array().unwrap().clone();
    assert!(history.len() >= 2, "the victim ran again: {history:?}");
    assert_eq!(c.job(victims[0])["attempts"], 1, "preemption uses no attempt");
}

#[test]
fn watching_a_job_follows_it_to_its_end() {
    let c = Cluster::start(&[("a", 2)]);
    let id = c.submit("watched", 2, "500m", "batch", "sleep 1");
    let out = c.cli(&["watch", &id.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("slot 0 succeeded on a") || text.contains("already succeeded"), "{text}");
    assert!(text.lines().last().is_some_and(|l| l.contains("succeeded")), "{text}");
}

#[test]
fn a_program_that_cannot_start_and_one_over_its_memory_say_why() {
    let c = Cluster::start(&[("a", 2)]);
    let failed_reason = |c: &Cluster, id: u64| -> Option<String> {
        let history = c.job(id)["history"].clone();
        history.as_array()?.iter().find(|e| e["outcome"] == "failed").map(|e| e["reason"].to_string())
    };
    // Given a job whose program does not exist, then its failure says so (not "killed")
    let spec = "name = \"missing\"\nmax_attempts = 1\n[gang]\ncpu = \"100m\"\nmemory = \"32MiB\"\n\
                [command]\nargv = [\"/no/such/program\"]\n";
    let missing = c.submit_file("missing.toml", spec);
    c.wait_until("it fails", WAIT, |c| failed_reason(c, missing).is_some());
    let why = failed_reason(&c, missing).unwrap();
    assert!(why.contains("exited with code 127 (cannot run `/no/such/program`: No such file"), "{why}");
    // Given one that holds 200 MB under a 64 MiB limit, then its failure names the limit
    let hog = c.submit("hog", 1, "100m", "batch", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); sleep 30");
    c.wait_until("it is killed", WAIT, |c| failed_reason(c, hog).is_some());
    let why = failed_reason(&c, hog).unwrap();
    assert!(why.contains("SIGKILL") && why.contains("memory limit"), "{why}");
}
