//! Who gets in: a client without a token is told how to get one (and one
//! whose CA file is no certificate, what is wrong with it); tenants
//! see and touch only their queues' jobs, through the CLI (gRPC), Flight
//! SQL and HTTP; revoked and expired tokens are refused at once; an agent
//! needs a join token and checks the coordinator's CA against it; no port
//! answers plaintext; every accepted change is in the audit log; slots
//! never run as root unless the agent allows it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Cluster, cli_with_token, cohort, http};

const WAIT: Duration = Duration::from_secs(30);

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Issues a token as the cluster's admin; returns (id, token).
fn issue(c: &Cluster, args: &[&str]) -> (String, String) {
    let mut all = vec!["token", "create"];
    all.extend(args);
    all.extend(["--output", "json"]);
    let out = c.cli(&all);
    assert!(out.status.success(), "token create: {}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["id"].as_str().unwrap().to_string(), v["token"].as_str().unwrap().to_string())
}

fn spec(c: &Cluster, name: &str, queue: &str) -> String {
    let text = format!(
        "name = \"{name}\"\nqueue = \"{queue}\"\n[gang]\ncpu = \"100m\"\nmemory = \"32MiB\"\n[command]\nargv = [\"sh\", \"-c\", \"echo secret of {name}; sleep 600\"]\n"
    );
    c.write(&format!("{name}.toml"), &text).display().to_string()
}

fn submit_as(c: &Cluster, token: &str, name: &str, queue: &str) -> std::process::Output {
    cli_with_token(&c.address, token, &["submit", &spec(c, name, queue), "--output", "json"])
}

fn id_of(out: &std::process::Output) -> u64 {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["id"].as_u64().unwrap()
}

fn http_address(c: &Cluster) -> String {
    c.json(&["status"])["http"].as_str().unwrap().to_string()
}

#[test]
fn a_client_without_a_token_is_refused_and_told_how_to_get_one() {
    let c = Cluster::start(&[("a", 2)]);
    for args in [&["jobs"][..], &["sql", "-e", "SELECT 1"], &["nodes"]] {
        let out = cli_with_token(&c.address, "", args);
        assert!(!out.status.success(), "{args:?} succeeded without a token");
        let err = stderr(&out);
        assert!(err.contains("no token") && err.contains("cohort token create"), "{args:?}: {err}");
    }
    let out = cli_with_token(&c.address, "cohort_0000_forged", &["jobs"]);
    assert!(stderr(&out).contains("not one this cluster issued"), "{}", stderr(&out));
    // A CA file that is no certificate is named, not reported as `UnknownIssuer`
    let not_pem = c.write("ca.der", "\u{30}\u{82}binary");
    let out = Command::new(cohort())
        .args(["jobs"])
        .env("COHORT_COORDINATOR", &c.address)
        .env("COHORT_CA", &not_pem)
        .env("COHORT_CONFIG", "/nonexistent/cohort-config.toml")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("ca.der holds no PEM certificate"), "{err}");

    let address = http_address(&c);
    let (code, body) = http(&address, "", "GET", "/api/v1/jobs", None);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("no token") && body.contains("Authorization: Bearer"), "{body}");
    assert_eq!(http(&address, "", "GET", "/metrics", None).0, 401);
    assert_eq!(http(&address, "", "GET", "/healthz", None).0, 200, "probes need no token");
    assert_eq!(http(&address, "", "GET", "/", None).0, 200, "the page itself asks for a token");
}

#[test]
fn tenants_see_and_touch_only_their_queues_through_every_door() {
    let c = Cluster::start(&[("a", 4)]);
    let (_, a) = issue(&c, &["--role", "submit", "--queue", "team-a"]);
    let (_, b) = issue(&c, &["--role", "submit", "--queue", "team-b", "--queue", "team-b2"]);

    let mine = id_of(&submit_as(&c, &a, "a-job", "team-a"));
    let theirs = id_of(&submit_as(&c, &b, "b-job", "team-b"));
    let refused = submit_as(&c, &a, "sneaky", "team-b");
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("may not use queue `team-b`"), "{}", stderr(&refused));
    c.wait_until("both run", WAIT, |c| c.state(mine) == "running" && c.state(theirs) == "running");

    // gRPC through the CLI.
    let listed = cli_with_token(&c.address, &a, &["jobs", "--output", "json"]);
    let names: Vec<Value> = serde_json::from_slice::<Value>(&listed.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].clone())
        .collect();
    assert_eq!(names, [Value::from("a-job")], "A sees only its own");
    let theirs_text = theirs.to_string();
    for args in [
        &["job", &theirs_text][..],
        &["cancel", &theirs_text],
        &["logs", &theirs_text],
        &["watch", &theirs_text],
        &["drain", "a"],
        &["token", "list"],
    ] {
        let out = cli_with_token(&c.address, &a, args);
        assert!(!out.status.success(), "A could {args:?}");
        assert!(stderr(&out).contains("may not"), "{args:?}: {}", stderr(&out));
    }
    // By name, another queue's job is not there for A
    let out = cli_with_token(&c.address, &a, &["job", "b-job"]);
    assert!(stderr(&out).contains("no job named `b-job`"), "{}", stderr(&out));
    assert_eq!(c.state(theirs), "running", "B's job survived A's attempts");
    let logs = cli_with_token(&c.address, &b, &["logs", &theirs_text]);
    assert!(String::from_utf8_lossy(&logs.stdout).contains("secret of b-job"), "B reads its own logs");

    // Flight SQL: tenants query; a join token does not.
    let sql = cli_with_token(&c.address, &a, &["sql", "--output", "json", "-e", "SELECT 41 + 1 AS n"]);
    assert!(sql.status.success(), "{}", stderr(&sql));
    let agent_sql = cli_with_token(&c.address, &c.join_token, &["sql", "-e", "SELECT 1"]);
    assert!(stderr(&agent_sql).contains("only joins agents"), "{}", stderr(&agent_sql));

    // HTTP.
    let address = http_address(&c);
    let (code, body) = http(&address, &a, "GET", "/api/v1/jobs", None);
    assert_eq!(code, 200);
    let jobs: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 1, "{jobs}");
    assert_eq!(http(&address, &a, "GET", &format!("/api/v1/jobs/{theirs}"), None).0, 403);
    assert_eq!(http(&address, &a, "GET", &format!("/api/v1/jobs/{theirs}/logs"), None).0, 403);
    assert_eq!(http(&address, &a, "GET", "/metrics", None).0, 403, "metrics are for admins");
    assert_eq!(http(&address, &c.token, "GET", "/metrics", None).0, 200);

    // The audit log names who did what.
    let audit = c.json(&["audit"]);
    let entries = audit.as_array().unwrap();
    let by = |what: &str| entries.iter().find(|e| e["what"].as_str().is_some_and(|w| w.contains(what))).cloned();
    let submitted = by(&format!("submit job {mine} to queue team-a")).expect("the submit is audited");
    assert!(submitted["who"].as_str().unwrap().contains("submit: team-a"), "{submitted}");
    assert!(by("create submit token").is_some(), "{audit}");
    assert!(by("cancel").is_none(), "refused requests change nothing and are not audited: {audit}");
}

#[test]
fn revoked_and_expired_tokens_are_refused_at_once() {
    let c = Cluster::start(&[("a", 2)]);
    let (id, token) = issue(&c, &["--role", "submit", "--queue", "q"]);
    let (_, short) = issue(&c, &["--role", "admin", "--ttl", "1s"]);
    assert!(cli_with_token(&c.address, &token, &["jobs"]).status.success());
    assert!(cli_with_token(&c.address, &short, &["nodes"]).status.success());
    assert!(c.cli(&["token", "revoke", &id]).status.success());
    let out = cli_with_token(&c.address, &token, &["jobs"]);
    assert!(stderr(&out).contains(&format!("token {id} was revoked")), "{}", stderr(&out));
    let again = c.cli(&["token", "revoke", &id]);
    assert!(!again.status.success() && stderr(&again).contains("already revoked"), "{}", stderr(&again));
    let deadline = Instant::now() + WAIT;
    loop {
        let out = cli_with_token(&c.address, &short, &["nodes"]);
        if !out.status.success() {
            assert!(stderr(&out).contains("expired"), "{}", stderr(&out));
            break;
        }
        assert!(Instant::now() < deadline, "the 1 s token still works");
        std::thread::sleep(Duration::from_millis(200));
    }
    let listed = c.json(&["token", "list"]);
    let row = listed.as_array().unwrap().iter().find(|t| t["id"] == id.as_str()).cloned().unwrap();
    assert_eq!(row["revoked"], true);
    assert!(!listed.to_string().contains(&token), "secrets are never listed");
    // The table says which token expired, and when, with its date
    let table = String::from_utf8_lossy(&c.cli(&["token", "list"]).stdout).to_string();
    let short_row = table.lines().find(|l| l.contains("admin") && l.contains("expired")).unwrap_or_default();
    assert_eq!(short_row.matches(" UTC").count(), 2, "created and expiry dates: {table}");
}

#[test]
fn an_agent_needs_a_join_token_and_the_coordinator_it_names() {
    let mut c = Cluster::start(&[("a", 2)]);
    let (_, user) = issue(&c, &["--role", "submit", "--queue", "q"]);
    let (token, pin) = c.join_token.rsplit_once('.').expect("a join token carries the CA's fingerprint");
    let user_pinned = format!("{user}.{pin}");
    let forged = format!("cohort_1234abcd_00000000000000000000000000000000.{pin}");
    let other_cluster = format!("{token}.{}", "0".repeat(64));
    for (name, token, why) in [
        ("no-token", "", "no join token"),
        ("unpinned", token, "carries no CA fingerprint"),
        ("user-token", user_pinned.as_str(), "needs a join token"),
        ("forged", forged.as_str(), "not one this cluster issued"),
        ("other-cluster", other_cluster.as_str(), "does not have the CA"),
    ] {
        let out = Command::new(cohort())
            .args(["agent", "--join", &c.address, "--name", name, "--cpu", "1", "--data-dir"])
            .arg(c.dir.path().join(name))
            .env("COHORT_JOIN_TOKEN", token)
            .stdin(Stdio::null())
            .output()
            .expect("run an agent");
        assert!(!out.status.success(), "{name}: the agent was let in");
        let err = stderr(&out);
        assert!(err.contains("cannot join") && err.contains(why), "{name}: {err}");
        assert!(!c.dir.path().join(name).join("tls/cert.pem").exists(), "{name} got a certificate");
    }
    let nodes = c.json(&["nodes"]);
    assert_eq!(nodes.as_array().unwrap().len(), 1, "no refused agent became a node: {nodes}");
    c.start_agent("b", 1);
    c.wait_until("the agent with the join token registers", WAIT, |c| {
        c.json(&["nodes"]).as_array().unwrap().len() == 2
    });
    // It joined with a key of its own, which only it may read.
    use std::os::unix::fs::PermissionsExt;
    let key = c.dir.path().join("b/tls/key.pem");
    assert_eq!(std::fs::metadata(&key).expect("the agent's key").permissions().mode() & 0o777, 0o600);
    let audit = c.cli(&["audit"]);
    assert!(String::from_utf8_lossy(&audit.stdout).contains("join agent b"), "joins are audited");
}

#[test]
fn plaintext_is_refused_on_every_port() {
    use std::io::{Read, Write};
    let c = Cluster::start(&[("a", 2)]);
    let http_port = http_address(&c);
    let (_, targets) = http(&http_port, &c.token, "GET", "/api/v1/targets", None);
    let agent = serde_json::from_str::<Value>(&targets).unwrap()[0]["targets"][0].as_str().unwrap().to_string();
    // What a plaintext gRPC client (an HTTP/2 preface) and a plaintext HTTP client send first.
    for hello in ["PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "GET /healthz HTTP/1.1\r\nHost: cohort\r\n\r\n"] {
        for address in [&c.address, &http_port, &agent] {
            let mut conn = std::net::TcpStream::connect(address).expect("connect");
            conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            conn.write_all(hello.as_bytes()).unwrap();
            let mut answer = Vec::new();
            let _ = conn.read_to_end(&mut answer);
            // Nothing, or a TLS alert record (content type 21): never an answer in the clear.
            assert!(
                answer.is_empty() || answer[0] == 21,
                "{address} answered plaintext {hello:?} with {:?}",
                String::from_utf8_lossy(&answer)
            );
        }
    }
    // Over TLS the same ports answer.
    assert_eq!(http(&http_port, "", "GET", "/healthz", None).0, 200);
    assert_eq!(http(&agent, "", "GET", "/healthz", None).0, 200);
}

/// What `id -u` printed in job `id`'s log.
fn uid_of(c: &Cluster, id: u64) -> String {
    c.wait_until("the job ends", WAIT, |c| c.state(id) == "succeeded" || c.state(id) == "failed");
    assert_eq!(c.state(id), "succeeded", "{}", c.job(id));
    String::from_utf8_lossy(&c.cli(&["logs", &id.to_string()]).stdout).trim().to_string()
}

#[test]
fn slots_never_run_as_root_unless_the_agent_allows_it() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the agent must run as root to switch users");
        return;
    }
    let c = Cluster::start_configured(&[("a", 2)], 1.0, &["--run-as", "ops=daemon"], &[]);
    let nodes = c.json(&["nodes"]);
    assert!(nodes[0]["runs_as"].as_str().unwrap().starts_with("nobody"), "{nodes}");
    let default = c.submit("who", 1, "100m", "batch", "id -u; pwd");
    let log = uid_of(&c, default);
    assert!(log.starts_with("65534\n"), "a slot runs as nobody by default: {log}");
    assert!(log.contains("/cohort-slots/"), "in its own scratch dir: {log}");

    // A queue's run_as names its user; root is refused without --allow-root.
    let ops = c.write(
        "ops.toml",
        "name = \"ops\"\nqueue = \"ops\"\n[gang]\ncpu = \"100m\"\nmemory = \"32MiB\"\n[command]\nargv = [\"id\", \"-un\"]\n",
    );
    let id = serde_json::from_slice::<Value>(&c.cli(&["submit", ops.to_str().unwrap(), "--output", "json"]).stdout)
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    assert_eq!(uid_of(&c, id), "daemon");

    let lax = Cluster::start_configured(&[("r", 2)], 1.0, &[], &["--allow-root"]);
    assert_eq!(lax.json(&["nodes"])[0]["runs_as"], "root (--allow-root)");
    let id = lax.submit("root", 1, "100m", "batch", "id -u");
    assert_eq!(uid_of(&lax, id), "0", "allowed, it runs as root");
}
