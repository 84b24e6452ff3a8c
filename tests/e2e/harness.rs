//! Starts clusters of real processes and drives them through the CLI.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn cohort() -> &'static str {
    env!("CARGO_BIN_EXE_cohort")
}

/// Each cluster the tests started: its address, admin token and CA file.
static CLUSTERS: std::sync::Mutex<Vec<(String, String, PathBuf)>> = std::sync::Mutex::new(Vec::new());

/// The admin token of the cluster at `address`.
pub fn token_for(address: &str) -> String {
    let clusters = CLUSTERS.lock().unwrap();
    clusters.iter().rev().find(|(a, _, _)| a == address).map(|(_, t, _)| t.clone()).unwrap_or_default()
}

/// The CA file of the cluster at `address` (its coordinator writes it first).
pub fn ca_for(address: &str) -> PathBuf {
    let clusters = CLUSTERS.lock().unwrap();
    clusters.iter().rev().find(|(a, _, _)| a == address).map(|(_, _, ca)| ca.clone()).unwrap_or_default()
}

fn remember(address: &str, token: &str, coordinator_dir: &std::path::Path) {
    CLUSTERS.lock().unwrap().push((address.to_string(), token.to_string(), coordinator_dir.join("ca.pem")));
}

/// Waits for a token file the coordinator writes on start.
fn read_token(path: &std::path::Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(t) = std::fs::read_to_string(path)
            && !t.trim().is_empty()
        {
            return t.trim().to_string();
        }
        assert!(Instant::now() < deadline, "the coordinator wrote no {}", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a client command against the cluster at `address`, as its admin.
pub fn cli_at(address: &str, args: &[&str]) -> Output {
    cli_with_token(address, &token_for(address), args)
}

/// Runs a client command with this token (empty: none).
pub fn cli_with_token(address: &str, token: &str, args: &[&str]) -> Output {
    client(address, token, args).output().expect("run the cli")
}

/// Runs a client command with `input` piped into its stdin.
pub fn cli_with_stdin(address: &str, args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = client(address, &token_for(address), args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the cli");
    child.stdin.take().expect("a stdin").write_all(input.as_bytes()).expect("write the cli's stdin");
    child.wait_with_output().expect("the cli ends")
}

fn client(address: &str, token: &str, args: &[&str]) -> Command {
    let mut command = Command::new(cohort());
    command
        .args(args)
        .env("COHORT_COORDINATOR", address)
        .env("COHORT_TOKEN", token)
        .env("COHORT_CA", ca_for(address))
        // Never the user's own client config.
        .env("COHORT_CONFIG", "/nonexistent/cohort-config.toml")
        .env("COHORT_LOG", "warn");
    command
}

/// Runs a client command with `--output json`; null when it fails.
pub fn json_at(address: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let out = cli_at(address, &all);
    if !out.status.success() {
        return Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Host port ranges for the agents of the clusters this process starts:
/// each cluster its own block, below Linux's ephemeral ports (32768 and up)
/// so that no outgoing connection holds one.
fn port_block() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let block = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 110;
    10_000 + block * 200
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().unwrap().port()
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub address: String,
    /// The admin token and the join token the coordinator issued.
    pub token: String,
    pub join_token: String,
    coordinator: Option<Child>,
    agents: Vec<(String, Child)>,
    heartbeat_timeout: f64,
    /// The first of this cluster's 200 host ports.
    ports: u16,
    /// Each agent's 40 of them, by name, kept across restarts.
    agent_ports: std::collections::BTreeMap<String, u16>,
    /// More flags for the coordinator and for every agent.
    coordinator_flags: Vec<String>,
    agent_flags: Vec<String>,
}

impl Cluster {
    /// A coordinator and one agent per `(name, cores)`; agents silent for 1 s are lost.
    pub fn start(agents: &[(&str, u32)]) -> Cluster {
        Cluster::start_with(agents, 1.0)
    }

    pub fn start_with(agents: &[(&str, u32)], heartbeat_timeout: f64) -> Cluster {
        Cluster::start_configured(agents, heartbeat_timeout, &[], &[])
    }

    /// With more flags for the coordinator and the agents.
    pub fn start_configured(
        agents: &[(&str, u32)],
        heartbeat_timeout: f64,
        coordinator_flags: &[&str],
        agent_flags: &[&str],
    ) -> Cluster {
        let mut c = Cluster {
            dir: tempfile::tempdir().expect("temp dir"),
            address: format!("127.0.0.1:{}", free_port()),
            token: String::new(),
            join_token: String::new(),
            coordinator: None,
            agents: Vec::new(),
            heartbeat_timeout,
            ports: port_block(),
            agent_ports: Default::default(),
            coordinator_flags: coordinator_flags.iter().map(|f| f.to_string()).collect(),
            agent_flags: agent_flags.iter().map(|f| f.to_string()).collect(),
        };
        c.start_coordinator();
        for (name, cores) in agents {
            c.start_agent(name, *cores);
        }
        c.wait_until(&format!("{} agents register", agents.len()), Duration::from_secs(20), |c| {
            c.json(&["nodes"])
                .as_array()
                .is_some_and(|n| n.iter().filter(|n| n["state"] == "ready").count() == agents.len())
        });
        c
    }

    fn log(&self, name: &str) -> Stdio {
        Stdio::from(std::fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("log file"))
    }

    pub fn start_coordinator(&mut self) {
        let child = Command::new(cohort())
            .args([
                "coordinator",
                "--listen",
                &self.address,
                "--http",
                "127.0.0.1:0",
                "--heartbeat-timeout",
                &self.heartbeat_timeout.to_string(),
                // Control-plane tests count every core: the SQL pool starts only when a query needs it.
                "--sql-pool-warm",
                "0",
                "--data-dir",
            ])
            .arg(self.dir.path().join("coordinator"))
            .args(&self.coordinator_flags)
            .stdout(Stdio::null())
            .stderr(self.log("coordinator"))
            .spawn()
            .expect("start the coordinator");
        self.coordinator = Some(child);
        let address = self.address.clone();
        self.wait_until("the coordinator listens", Duration::from_secs(20), |_| {
            std::net::TcpStream::connect(&address).is_ok()
        });
        let dir = self.dir.path().join("coordinator");
        self.token = read_token(&dir.join("admin.token"));
        self.join_token = read_token(&dir.join("join.token"));
        remember(&self.address, &self.token, &dir);
    }

    pub fn start_agent(&mut self, name: &str, cores: u32) {
        // Agents sharing this host need port ranges of their own, stable across restarts.
        let next = self.ports + 40 * (self.agent_ports.len() as u16 % 5);
        let first = *self.agent_ports.entry(name.to_string()).or_insert(next);
        let child = Command::new(cohort())
            .args([
                "agent",
                "--join",
                &self.address,
                "--name",
                name,
                "--cpu",
                &cores.to_string(),
                "--memory",
                "4GiB",
                "--ports",
                &format!("{first}-{}", first + 39),
                "--data-dir",
            ])
            .arg(self.dir.path().join(name))
            .args(&self.agent_flags)
            .env("COHORT_JOIN_TOKEN", &self.join_token)
            .stdout(Stdio::null())
            .stderr(self.log(name))
            .spawn()
            .expect("start an agent");
        self.agents.push((name.to_string(), child));
    }

    /// Submits a spec file the test wrote; returns the job id.
    pub fn submit_file(&self, name: &str, text: &str) -> u64 {
        let path = self.write(name, text);
        let out = self.cli(&["submit", path.to_str().unwrap(), "--output", "json"]);
        assert!(out.status.success(), "submit failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).expect("json id");
        v["id"].as_u64().expect("an id")
    }

    /// kill -9 an agent.
    pub fn kill_agent(&mut self, name: &str) {
        let pos = self.agents.iter().position(|(n, _)| n == name).expect("known agent");
        let (_, mut child) = self.agents.remove(pos);
        child.kill().expect("kill -9 the agent");
        let _ = child.wait();
    }

    /// kill -9 the coordinator.
    pub fn kill_coordinator(&mut self) {
        let mut child = self.coordinator.take().expect("a running coordinator");
        child.kill().expect("kill -9 the coordinator");
        let _ = child.wait();
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        cli_at(&self.address, args)
    }

    /// Runs a command with `--output json` and parses what it prints (null if it fails).
    pub fn json(&self, args: &[&str]) -> Value {
        json_at(&self.address, args)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write a spec");
        path
    }

    /// Submits a command job and returns its id.
    pub fn submit(&self, name: &str, slots: u32, cores: &str, class: &str, script: &str) -> u64 {
        let spec = format!(
            "name = \"{name}\"\nkind = \"command\"\npriority = \"{class}\"\nmax_attempts = 3\n\n[gang]\nmin = {slots}\ncpu = \"{cores}\"\nmemory = \"64MiB\"\n\n[command]\nargv = [\"sh\", \"-c\", {script:?}]\n"
        );
        let path = self.write(&format!("{name}.toml"), &spec);
        let out = self.cli(&["submit", path.to_str().unwrap(), "--output", "json"]);
        assert!(out.status.success(), "submit failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).expect("json id");
        v["id"].as_u64().expect("an id")
    }

    pub fn job(&self, id: u64) -> Value {
        self.json(&["job", &id.to_string()])
    }

    pub fn job_named(&self, name: &str) -> Value {
        self.json(&["job", name])
    }

    pub fn state(&self, id: u64) -> String {
        self.job(id)["state"].as_str().unwrap_or("").to_string()
    }

    pub fn running_slots(&self, id: u64) -> Vec<(String, String)> {
        let j = self.job(id);
        j["slots"]
            .as_array()
            .map(|s| {
                s.iter()
                    .filter(|s| s["state"] == "running")
                    .map(|s| (s["node"].as_str().unwrap().to_string(), s["state"].as_str().unwrap().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits for a condition, failing with what was awaited and the logs.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut f: impl FnMut(&Cluster) -> bool) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if f(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out after {timeout:?} waiting until {what}\n{}", self.logs());
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                out += &format!("--- {} ---\n{}\n", p.display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        kill_leftover_executors(self.dir.path());
        // Agents stop their executors on SIGTERM.
        for (_, child) in &mut self.agents {
            unsafe_term(child);
        }
        for (_, child) in &mut self.agents {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut c) = self.coordinator.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Executors outlive a killed agent by design; a test's must not outlive the test.
pub fn kill_leftover_executors(dir: &std::path::Path) {
    let Ok(agents) = std::fs::read_dir(dir) else { return };
    for agent in agents.flatten() {
        let Ok(allocs) = std::fs::read_dir(agent.path().join("allocs")) else { continue };
        for alloc in allocs.flatten() {
            let Ok(text) = std::fs::read_to_string(alloc.path().join("launch.json")) else { continue };
            let pid = serde_json::from_str::<Value>(&text).ok().and_then(|v| v["pid"].as_i64());
            // kill(2) itself: procps-ng 4.0.2's `kill -KILL -1234` signals group -1,
            // that is every process, which must never happen.
            if let Some(pid) = pid.filter(|p| *p > 1 && *p <= i32::MAX as i64) {
                // SAFETY: signals the process group the executor leads.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
        }
    }
}

/// Pids of processes whose command line contains every one of `parts`.
pub fn pids_of(parts: &[&str]) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if parts.iter().all(|p| cmdline.contains(p)) {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

pub fn kill9(pid: u32) {
    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
}

/// `cohort up` as a user runs it, on a free port and a temporary data dir.
pub struct Up {
    pub dir: tempfile::TempDir,
    pub address: String,
    /// The admin token `up` issued.
    pub token: String,
    up: Child,
}

impl Up {
    pub fn start(agents: u32) -> Up {
        Up::start_with(agents, &[])
    }

    /// With more `cohort up` flags.
    pub fn start_with(agents: u32, flags: &[&str]) -> Up {
        let dir = tempfile::tempdir().expect("temp dir");
        let address = format!("127.0.0.1:{}", free_port());
        let up = Command::new(cohort())
            .args(["up", "--listen", &address, "--http", "127.0.0.1:0", "--agents", &agents.to_string()])
            .arg({
                let first = port_block();
                format!("--ports={first}-{}", first + 199)
            })
            .args(flags)
            .arg("--data-dir")
            .arg(dir.path())
            // `up` writes its client config here, not over the user's.
            .env("COHORT_CONFIG", dir.path().join("client.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.path().join("up.log")).expect("log file")))
            .spawn()
            .expect("start cohort up");
        let token = read_token(&dir.path().join("coordinator/admin.token"));
        remember(&address, &token, &dir.path().join("coordinator"));
        let up = Up { dir, address, token, up };
        up.wait_until(&format!("{agents} agents register"), Duration::from_secs(30), |u| {
            u.json(&["nodes"])
                .as_array()
                .is_some_and(|n| n.iter().filter(|n| n["state"] == "ready").count() == agents as usize)
        });
        up
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        cli_at(&self.address, args)
    }

    /// Runs a command with `--output json` and parses what it prints (null if it fails).
    pub fn json(&self, args: &[&str]) -> Value {
        json_at(&self.address, args)
    }

    /// The pid of one of the processes `cohort up` runs (`coordinator`, `agent-0`, ...).
    pub fn pid_of(&self, process: &str) -> Option<u32> {
        let data = self.dir.path().display().to_string();
        let role = if process == "coordinator" { "coordinator".to_string() } else { format!("--name {process}") };
        pids_of(&[&data, &role]).into_iter().find(|&p| p != self.up.id())
    }

    /// kill -9 `cohort up` itself.
    pub fn kill_up(&mut self) {
        self.up.kill().expect("kill -9 cohort up");
        self.up.wait().expect("reap cohort up");
    }

    pub fn wait_until(&self, what: &str, timeout: Duration, mut f: impl FnMut(&Up) -> bool) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if f(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(self.dir.path().join("up.log")).unwrap_or_default();
        panic!("timed out after {timeout:?} waiting until {what}\n--- up.log ---\n{log}");
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        unsafe_term(&self.up);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && matches!(self.up.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.up.kill();
        let _ = self.up.wait();
        kill_leftover_executors(self.dir.path());
    }
}

fn unsafe_term(child: &Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
}

/// One HTTP/1.1 request without a client library, with a bearer token
/// (empty: none): `(status, body)`.
pub fn http(address: &str, token: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let tcp = std::net::TcpStream::connect(address).unwrap_or_else(|e| panic!("connect to {address}: {e}"));
    tcp.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
    let mut stream = rustls::StreamOwned::new(tls_client(), tcp);
    let body = body.unwrap_or("");
    let auth = if token.is_empty() { String::new() } else { format!("Authorization: Bearer {token}\r\n") };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send the request");
    let mut response = Vec::new();
    match stream.read_to_end(&mut response) {
        // A peer that closes without TLS's close_notify has still said all it had.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        other => {
            other.expect("read the response");
        }
    }
    let text = String::from_utf8_lossy(&response).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP head in {text:?}"));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status code");
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    (status, if chunked { dechunk(rest) } else { rest.to_string() })
}

/// A TLS client that trusts the CAs of the clusters the tests started and
/// checks the peer is a coordinator or an agent of one, as Cohort's own
/// clients do.
fn tls_client() -> rustls::ClientConnection {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for (_, _, ca) in CLUSTERS.lock().unwrap().iter() {
        if let Ok(cert) = CertificateDer::from_pem_file(ca) {
            roots.add(cert).expect("a CA certificate");
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider.clone())
        .build()
        .expect("a verifier");
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(ClusterPeer(verifier)))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(cohort::tls::COORDINATOR_NAME).expect("a name");
    rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("a TLS client")
}

/// The CA's check, for the coordinator's name or an agent's.
#[derive(Debug)]
struct ClusterPeer(std::sync::Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for ClusterPeer {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let agent = rustls::pki_types::ServerName::try_from(cohort::tls::AGENT_NAME).expect("a name");
        let coordinator = rustls::pki_types::ServerName::try_from(cohort::tls::COORDINATOR_NAME).expect("a name");
        self.0
            .verify_server_cert(end_entity, intermediates, &agent, ocsp, now)
            .or_else(|_| self.0.verify_server_cert(end_entity, intermediates, &coordinator, ocsp, now))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}
