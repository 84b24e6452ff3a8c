//! The HTTP front door as Prometheus, a script and a browser meet it:
//! health probes, `/metrics` in the exposition format with values that
//! move, the JSON API equal to `--output json`, the UI's files, agents'
//! own `/metrics`, and `cohort top --once`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Cluster, http};

const WAIT: Duration = Duration::from_secs(30);

fn http_address(c: &Cluster) -> String {
    let status = c.json(&["status"]);
    status["http"].as_str().filter(|a| !a.is_empty()).expect("status names the HTTP address").to_string()
}

/// `name{labels}` → value, for every sample of a scrape.
fn scrape(address: &str, token: &str) -> BTreeMap<String, f64> {
    let (code, text) = http(address, token, "GET", "/metrics", None);
    assert_eq!(code, 200, "{text}");
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("/metrics parses as Prometheus text");
    let mut out = BTreeMap::new();
    for s in parsed.samples {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let key = if labels.is_empty() { s.metric.clone() } else { format!("{}{{{}}}", s.metric, labels.join(",")) };
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => continue,
        };
        out.insert(key, value);
    }
    out
}

fn value(metrics: &BTreeMap<String, f64>, key: &str) -> f64 {
    *metrics.get(key).unwrap_or_else(|| panic!("no sample {key} in {:#?}", metrics.keys().collect::<Vec<_>>()))
}

#[test]
fn metrics_parse_as_prometheus_text_and_move_when_a_job_runs() {
    let c = Cluster::start(&[("a", 2), ("b", 2)]);
    let address = http_address(&c);
    assert_eq!(http(&address, &c.token, "GET", "/healthz", None).0, 200);
    c.wait_until("the coordinator is ready", WAIT, |_| http(&address, &c.token, "GET", "/readyz", None).0 == 200);

    let before = scrape(&address, &c.token);
    assert_eq!(value(&before, "cohort_nodes{state=ready}"), 2.0);
    assert_eq!(value(&before, "cohort_node_cpu_capacity_cores{node=a}"), 2.0);
    assert_eq!(value(&before, "cohort_placements_total"), 0.0);

    // Two slots of two cores: one on each agent.
    let id = c.submit("metered", 2, "2", "batch", "sleep 1");
    c.wait_until("the job runs", WAIT, |c| c.state(id) == "running");
    let running = scrape(&address, &c.token);
    assert_eq!(value(&running, "cohort_gangs{priority=batch,state=running}"), 1.0);
    let allocated = value(&running, "cohort_node_cpu_allocated_cores{node=a}")
        + value(&running, "cohort_node_cpu_allocated_cores{node=b}");
    assert_eq!(allocated, 4.0, "both slots hold two cores");

    c.wait_until("the job succeeds", WAIT, |c| c.state(id) == "succeeded");
    let after = scrape(&address, &c.token);
    assert_eq!(value(&after, "cohort_placements_total"), 2.0);
    assert_eq!(value(&after, "cohort_job_attempts_started_total"), 1.0);
    assert_eq!(value(&after, "cohort_job_attempts_ended_total{outcome=succeeded}"), 1.0);
    assert_eq!(value(&after, "cohort_queue_wait_seconds"), 1.0, "one placement waited");
    assert!(value(&after, "cohort_scheduling_pass_seconds") > 0.0, "passes are timed");
    assert_eq!(value(&after, "cohort_node_cpu_allocated_cores{node=a}"), 0.0);

    // A gang that can never fit is counted by its reason.
    let wide = c.submit("too-wide", 5, "1", "batch", "true");
    c.wait_until("the reason is known", WAIT, |c| !c.job(wide)["reason"].as_str().unwrap_or("").is_empty());
    c.wait_until("it is counted as pending", WAIT, |_| {
        scrape(&address, &c.token)
            .keys()
            .any(|k| k.starts_with("cohort_pending_gangs{") && !k.contains("not_yet_tried"))
    });

    // Every agent serves its own /metrics, found through the discovery endpoint.
    let (code, targets) = http(&address, &c.token, "GET", "/api/v1/targets", None);
    assert_eq!(code, 200);
    let targets: Value = serde_json::from_str(&targets).unwrap();
    let agents: Vec<&str> = targets.as_array().unwrap().iter().map(|g| g["targets"][0].as_str().unwrap()).collect();
    assert_eq!(agents.len(), 2, "{targets}");
    for agent in agents {
        assert_eq!(http(agent, "", "GET", "/healthz", None).0, 200);
        let m = scrape(agent, "");
        assert!(value(&m, "cohort_agent_executors_started_total") >= 1.0, "each agent ran a slot: {m:?}");
        assert_eq!(value(&m, "cohort_agent_executors_ended_total{outcome=succeeded}"), 1.0);
    }
}

#[test]
fn the_json_api_serves_what_the_cli_prints_and_the_ui_is_served() {
    let c = Cluster::start(&[("a", 2)]);
    let address = http_address(&c);
    let id = c.submit("listed", 1, "1", "batch", "echo hello from the log");
    c.wait_until("the job succeeds", WAIT, |c| c.state(id) == "succeeded");
    c.submit("waiting", 3, "1", "batch", "true");
    c.wait_until("its reason is set", WAIT, |c| {
        c.json(&["jobs"]).as_array().is_some_and(|j| j.iter().any(|j| j["name"] == "waiting" && j["reason"] != ""))
    });

    let get = |path: &str| {
        let (code, body) = http(&address, &c.token, "GET", path, None);
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str::<Value>(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    };
    assert_eq!(get("/api/v1/jobs"), c.json(&["jobs"]));
    assert_eq!(get("/api/v1/nodes"), c.json(&["nodes"]));
    assert_eq!(get("/api/v1/status"), c.json(&["status"]));
    assert_eq!(get(&format!("/api/v1/jobs/{id}")), c.json(&["job", &id.to_string()]));
    assert_eq!(get("/api/v1/jobs/listed"), c.json(&["job", "listed"]));

    let (code, log) = http(&address, &c.token, "GET", &format!("/api/v1/jobs/{id}/logs"), None);
    assert_eq!((code, log.trim()), (200, "hello from the log"));
    let (code, tail) = http(&address, &c.token, "GET", &format!("/api/v1/jobs/{id}/logs?tail=4"), None);
    assert_eq!((code, tail.as_str()), (200, "log\n"), "the last four bytes");
    let (code, missing) = http(&address, &c.token, "GET", "/api/v1/jobs/nope", None);
    assert_eq!(code, 404, "{missing}");
    assert!(missing.contains("no job named `nope`"), "{missing}");
    // A mistyped path or method gets JSON that says what is served.
    let (code, body) = http(&address, &c.token, "GET", "/api/v1/job", None);
    let error: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(code, 404, "{body}");
    assert!(error["error"].as_str().unwrap().contains("no such path `/api/v1/job`"), "{body}");
    let (code, body) = http(&address, &c.token, "GET", "/api/v1/sql", None);
    assert_eq!(code, 405, "{body}");
    assert!(body.contains("use POST"), "{body}");

    let queues = get("/api/v1/queues");
    assert!(queues.as_array().unwrap().iter().any(|q| q["pending"] == 1), "{queues}");

    // SQL from the UI's box: a query's rows, and a bad one's error.
    let (code, answer) = http(&address, &c.token, "POST", "/api/v1/sql", Some(r#"{"sql": "SELECT 1 + 1 AS two"}"#));
    assert_eq!(code, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["rows"], serde_json::json!([{ "two": 2 }]));
    let (code, bad) = http(&address, &c.token, "POST", "/api/v1/sql", Some(r#"{"sql": "SELECT * FROM nowhere"}"#));
    assert_eq!(code, 400);
    assert!(bad.contains("nowhere"), "{bad}");
    let recent = get("/api/v1/queries");
    assert_eq!(recent[0]["outcome"], "failed", "{recent}");
    assert_eq!(recent[1]["outcome"], "ok", "{recent}");

    let (code, page) = http(&address, &c.token, "GET", "/", None);
    assert_eq!(code, 200);
    assert!(page.contains("<title>Cohort</title>") && page.contains("/ui/app.js"), "{page}");
    let (code, script) = http(&address, &c.token, "GET", "/ui/app.js", None);
    assert!(code == 200 && script.contains("/api/v1/"), "the script is served");

    // The terminal view shows the same cluster.
    let top = c.cli(&["top", "--once"]);
    let frame = String::from_utf8_lossy(&top.stdout);
    assert!(top.status.success(), "{}", String::from_utf8_lossy(&top.stderr));
    assert!(frame.contains(" a ") || frame.contains("│a "), "the node is listed:\n{frame}");
    assert!(frame.contains("waiting") && frame.contains("why it waits"), "the pending gang and its reason:\n{frame}");
}
