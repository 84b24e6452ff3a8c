//! The cluster heals itself: `cohort up` restarts what dies, a lost host is
//! not a job's failure, and an agent that restarts keeps its executors.

use std::time::Duration;

use crate::harness::{Cluster, Up, kill9, pids_of};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn cohort_up_restarts_a_killed_agent_and_coordinator_and_their_executors_run_on() {
    let up = Up::start(2);
    let marker = format!("sleep 3600 # {}", up.address);
    let spec = format!(
        "name = \"long\"\nmax_attempts = 1\n[gang]\nmin = 2\ncpu = \"100m\"\nmemory = \"32MiB\"\n[command]\nargv = [\"sh\", \"-c\", {marker:?}]\n"
    );
    std::fs::write(up.dir.path().join("long.toml"), spec).unwrap();
    let out = up.cli(&["submit", up.dir.path().join("long.toml").to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let running = |u: &Up| {
        u.json(&["job", "long"])["slots"].as_array().is_some_and(|s| s.iter().all(|s| s["state"] == "running"))
    };
    up.wait_until("both slots run", WAIT, running);
    // A supervisor just forked shows its parent's command line until it execs: wait for two.
    up.wait_until("two executors", WAIT, |_| pids_of(&[&marker, "executor"]).len() == 2);
    let executors = pids_of(&[&marker, "executor"]);
    // kill -9 an agent: `cohort up` starts it again, and it re-adopts its executors
    for process in ["agent-0", "agent-1"] {
        let pid = up.pid_of(process).expect("the agent runs");
        kill9(pid);
        up.wait_until(&format!("{process} is back"), WAIT, |u| u.pid_of(process).is_some_and(|p| p != pid));
    }
    up.wait_until("both agents are ready again", WAIT, |u| {
        u.json(&["nodes"]).as_array().is_some_and(|n| n.iter().all(|n| n["state"] == "ready"))
    });
    // kill -9 the coordinator: it comes back and adopts what runs
    let coordinator = up.pid_of("coordinator").expect("the coordinator runs");
    kill9(coordinator);
    up.wait_until("the coordinator is back", WAIT, |u| {
        u.pid_of("coordinator").is_some_and(|p| p != coordinator) && u.json(&["status"])["agents"] == 2
    });
    up.wait_until("the job is seen running again", WAIT, running);
    let job = up.json(&["job", "long"]);
    assert_eq!((job["state"].as_str(), job["attempts"].as_u64()), (Some("running"), Some(1)), "{job}");
    assert_eq!(pids_of(&[&marker, "executor"]), executors, "no executor was restarted");
    let log = std::fs::read_to_string(up.dir.path().join("up.log")).unwrap();
    assert!(log.contains("agent-0 exited") && log.contains("coordinator restarted"), "{log}");
}

#[test]
fn a_job_whose_node_is_lost_mid_run_succeeds_later_with_attempts_unchanged() {
    let mut c = Cluster::start(&[("a", 2), ("b", 2)]);
    let spec = "name = \"once\"\nmax_attempts = 1\n[gang]\nmin = 2\ncpu = \"1\"\nmemory = \"32MiB\"\n[command]\nargv = [\"sleep\", \"2\"]\n";
    let id = c.submit_file("once.toml", spec);
    c.wait_until("both slots run", WAIT, |c| c.running_slots(id).len() == 2);
    let home = c.running_slots(id)[0].0.clone();
    c.kill_agent(&home);
    c.wait_until("the job succeeds elsewhere", Duration::from_secs(60), |c| c.state(id) == "succeeded");
    let job = c.job(id);
    assert_eq!(job["attempts"], 1, "{job}");
    let history = job["history"].as_array().unwrap();
    assert_eq!(history[0]["outcome"], "lost");
    assert_eq!(history[0]["charged"], false);
    assert_eq!(history.last().unwrap()["outcome"], "succeeded");
}

#[test]
fn an_agent_restart_keeps_its_executors_and_reports_how_one_ended_meanwhile() {
    let mut c = Cluster::start_with(&[("a", 2)], 5.0);
    let stop = c.dir.path().join("stop-now");
    let long = c.submit("long", 1, "100m", "batch", "echo up; sleep 30");
    let waiter = format!("while [ ! -f {} ]; do sleep 0.05; done; echo bye; exit 3", stop.display());
    let short = c.submit("short", 1, "100m", "batch", &waiter);
    c.wait_until("both run", WAIT, |c| c.running_slots(long).len() == 1 && c.running_slots(short).len() == 1);
    let before = c.job(long)["slots"].clone();
    // kill -9 the agent; while it is down, one executor ends with code 3
    c.kill_agent("a");
    std::fs::write(&stop, "").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    c.start_agent("a", 2);
    c.wait_until("the ended slot is reported with its code", WAIT, |c| {
        c.job(short)["history"].as_array().is_some_and(|h| h.iter().any(|e| e["outcome"] == "failed"))
    });
    let history = c.job(short)["history"].clone();
    assert!(history[0]["reason"].as_str().unwrap().contains("exited with code 3"), "{history}");
    let after = c.job(long);
    assert_eq!((after["state"].as_str(), after["attempts"].as_u64()), (Some("running"), Some(1)));
    assert_eq!(after["slots"], before, "the same executor, re-adopted");
    let logs = String::from_utf8_lossy(&c.cli(&["logs", "long"]).stdout).to_string();
    assert_eq!(logs.trim(), "up", "one uninterrupted run");
}

/// Whether `pid` runs (a zombie no longer does).
fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
}

#[test]
fn a_workload_does_not_outlive_its_executor_killed_with_minus_nine() {
    // Given a job whose workload is one process, marked by this cluster's port
    let c = Cluster::start(&[("a", 2)]);
    let marker = format!("sleep 1{}", c.address.rsplit(':').next().unwrap());
    let job = c.submit("orphan", 1, "100m", "batch", &format!("exec {marker}"));
    c.wait_until("it runs", WAIT, |c| c.running_slots(job).len() == 1);
    let workloads = || -> Vec<u32> {
        let executors = pids_of(&[&marker, "executor"]);
        pids_of(&[&marker]).into_iter().filter(|p| !executors.contains(p)).collect()
    };
    c.wait_until("its workload runs", WAIT, |_| workloads().len() == 1);
    let (workload, executor) = (workloads()[0], pids_of(&[&marker, "executor"]));
    assert_eq!(executor.len(), 1, "one executor: {executor:?}");
    // When its executor (the slot's supervisor) is killed with -9
    kill9(executor[0]);
    // Then the agent kills the workload it left behind
    c.wait_until("the orphaned workload is gone", WAIT, |_| !alive(workload));
}

#[test]
fn cohort_up_killed_with_minus_nine_takes_its_cluster_with_it() {
    // Given a cluster up, running a job
    let mut up = Up::start(1);
    let marker = format!("sleep 2{}", up.address.rsplit(':').next().unwrap());
    let spec = format!(
        "name = \"long\"\n[gang]\ncpu = \"100m\"\nmemory = \"32MiB\"\n[command]\nargv = [\"sh\", \"-c\", \"exec {marker}\"]\n"
    );
    let path = up.dir.path().join("long.toml");
    std::fs::write(&path, spec).unwrap();
    assert!(up.cli(&["submit", path.to_str().unwrap()]).status.success());
    up.wait_until("its workload runs", WAIT, |_| !pids_of(&[&marker]).is_empty());
    let data = up.dir.path().display().to_string();
    assert!(!pids_of(&[&data, "coordinator"]).is_empty());
    // When `cohort up` is killed with -9
    up.kill_up();
    // Then its coordinator, agents, executors and their workloads stop too
    up.wait_until("nothing of the cluster runs", WAIT, |_| {
        pids_of(&[&data]).into_iter().chain(pids_of(&[&marker])).all(|p| !alive(p))
    });
}

#[test]
fn cohort_up_on_a_port_in_use_says_so_and_starts_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(crate::harness::cohort())
        .args(["up", "--listen", &address, "--http", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("COHORT_CONFIG", dir.path().join("client.toml"))
        .output()
        .expect("run cohort up");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("{address} (--listen) is in use by another process")), "{err}");
    assert!(pids_of(&[&dir.path().display().to_string()]).is_empty(), "nothing was started");
}

#[test]
fn a_second_cohort_up_on_a_data_dir_in_use_is_refused_and_disturbs_nothing() {
    // Given a cluster up
    let up = Up::start(1);
    let pid = up.pid_of("coordinator").expect("the coordinator runs");
    // When `cohort up` is run again on its data dir (other ports, another client config)
    let second = std::process::Command::new(crate::harness::cohort())
        .args(["up", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data-dir"])
        .arg(up.dir.path())
        .env("COHORT_CONFIG", up.dir.path().join("second-client.toml"))
        .output()
        .expect("run cohort up");
    // Then it stops at once, saying which process holds the dir
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second `cohort up` ran: {err}");
    assert!(err.contains("is in use by another `cohort up` (pid"), "{err}");
    // And the first runs on as before
    assert_eq!(up.pid_of("coordinator"), Some(pid));
    assert_eq!(up.json(&["status"])["agents"], 1);
}
