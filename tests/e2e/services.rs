//! Services as a user runs them: an HTTP service kept healthy, scaled,
//! updated and rolled back, reached through `cohort endpoints`.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::harness::{Cluster, kill9, pids_of};

const WAIT: Duration = Duration::from_secs(45);

/// A tiny HTTP server: `/` answers 200 unless the file `FLAG-<slot>` exists.
const SERVER: &str = r#"
import http.server, os, sys
port = int(os.environ["COHORT_PORT_HTTP"])
flag = sys.argv[1] + "-" + os.environ["COHORT_SLOT"]
version = sys.argv[2]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(500 if os.path.exists(flag) else 200)
        self.end_headers()
        self.wfile.write(version.encode())
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

fn spec(c: &Cluster, version: &str, extra: &str) -> String {
    let script = c.write("server.py", SERVER);
    let flag = c.dir.path().join("unhealthy");
    format!(
        r#"name = "web"
kind = "service"
[gang]
cpu = "250m"
memory = "64MiB"
[command]
argv = ["python3", "{}", "{}", "{version}"]
[service]
instances = 3
ports = ["http"]
min_healthy = 1.0
{extra}
[service.health]
http = "/"
interval = "500ms"
timeout = "1s"
grace = "2s"
max_failures = 2
"#,
        script.display(),
        flag.display()
    )
}

fn endpoints(c: &Cluster) -> Vec<String> {
    c.json(&["endpoints", "web"])
        .as_array()
        .map(|a| a.iter().map(|e| e["address"].as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// What an endpoint answers to `GET /`.
fn get(address: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(address).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.rsplit("\r\n\r\n").next().map(str::to_string)
}

fn restarts(c: &Cluster, why: &str) -> usize {
    c.job_named("web")["history"].as_array().map_or(0, |h| {
        h.iter()
            .filter(|e| e["outcome"] == "restarted" && e["reason"].as_str().is_some_and(|r| r.contains(why)))
            .count()
    })
}

#[test]
fn an_http_service_heals_scales_and_updates_without_dropping_below_min_healthy() {
    let c = Cluster::start(&[("a", 2), ("b", 2)]);
    c.submit_file("web.toml", &spec(&c, "v1", ""));
    c.wait_until("three healthy instances", WAIT, |c| endpoints(c).len() == 3);
    let mut seen = endpoints(&c);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3, "distinct endpoints");
    assert!(seen.iter().all(|e| get(e).as_deref() == Some("v1")), "each serves");

    // kill -9 one instance: it is replaced
    let port = seen[0].rsplit(':').next().unwrap().to_string();
    let victim = pids_of(&["server.py"]).into_iter().find(|&p| {
        std::fs::read_to_string(format!("/proc/{p}/environ"))
            .is_ok_and(|e| e.contains(&format!("COHORT_PORT_HTTP={port}")))
    });
    kill9(victim.expect("the instance's process"));
    c.wait_until("the killed instance is replaced", WAIT, |c| restarts(c, "SIGKILL") == 1 && endpoints(c).len() == 3);

    // A health endpoint that starts failing: that instance is restarted
    std::fs::write(c.dir.path().join("unhealthy-1"), "").unwrap();
    c.wait_until("the unhealthy instance is restarted", WAIT, |c| restarts(c, "health check") >= 1);
    std::fs::remove_file(c.dir.path().join("unhealthy-1")).unwrap();
    c.wait_until("three healthy again", WAIT, |c| endpoints(c).len() == 3);

    // Scale to 5 and back to 2
    assert!(c.cli(&["scale", "web", "5"]).status.success());
    c.wait_until("five healthy", WAIT, |c| endpoints(c).len() == 5);
    assert!(c.cli(&["scale", "web", "2"]).status.success());
    c.wait_until("two healthy", WAIT, |c| {
        endpoints(c).len() == 2 && c.job_named("web")["slots"].as_array().unwrap().len() == 2
    });

    // A rolling update to v2 (3 instances): never fewer than min_healthy (all 2 first, then 3) healthy
    c.submit_file("web.toml", &spec(&c, "v2", ""));
    let started = Instant::now();
    let mut least = usize::MAX;
    loop {
        let job = c.job_named("web");
        least = least.min(endpoints(&c).len());
        if job["deployment"]["state"] == "done" {
            break;
        }
        assert!(started.elapsed() < WAIT, "the update did not finish: {job}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(least >= 2, "dropped to {least} healthy instances during the update");
    c.wait_until("three v2 instances serve", WAIT, |c| {
        let e = endpoints(c);
        e.len() == 3 && e.iter().all(|e| get(e).as_deref() == Some("v2"))
    });

    // An update to a version that never turns healthy rolls back by itself
    std::fs::write(c.dir.path().join("unhealthy-0"), "").unwrap();
    std::fs::write(c.dir.path().join("unhealthy-1"), "").unwrap();
    std::fs::write(c.dir.path().join("unhealthy-2"), "").unwrap();
    c.submit_file("web.toml", &spec(&c, "v3", "update_deadline = \"6s\""));
    c.wait_until("the broken update is rolled back", WAIT, |c| {
        c.job_named("web")["deployment"]["state"] == "rolled-back"
    });
    let job = c.job_named("web");
    assert!(job["deployment"]["reason"].as_str().unwrap().contains("rolled back"), "{job}");
    for flag in 0..3 {
        let _ = std::fs::remove_file(c.dir.path().join(format!("unhealthy-{flag}")));
    }
    c.wait_until("v2 serves on", WAIT, |c| {
        let e = endpoints(c);
        e.len() == 3 && e.iter().all(|e| get(e).as_deref() == Some("v2"))
    });
}

#[test]
fn bad_service_specs_name_file_line_and_field() {
    let c = Cluster::start(&[("a", 1)]);
    let good = spec(&c, "v1", "");
    let cases = [
        (good.replace("http = \"/\"", "grpc = \"/\""), "service.health.grpc"),
        (
            good.replace("http = \"/\"", "http = \"/\"\ntcp = true"),
            "service.health: give one of http, tcp, grpc or command",
        ),
        (good.replace("instances = 3", "instances = 0"), "service.instances: must be between 1 and 10000, got 0"),
        (good.replace("ports = [\"http\"]\n", ""), "service.health.http: a http check needs a port"),
        (good.replace("interval = \"500ms\"", "interval = \"half a second\""), "service.health.interval"),
    ];
    for (text, expected) in cases {
        let path = c.write("bad.toml", &text);
        let out = c.cli(&["submit", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("bad.toml:") && err.contains(expected), "{expected}: {err}");
    }
    assert_eq!(c.json(&["jobs"]).as_array().map(Vec::len), Some(0), "nothing was accepted");
}
