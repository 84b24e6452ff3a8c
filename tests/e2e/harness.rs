//! Starts clusters of real processes and drives them through the CLI.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn cohort() -> &'static str {
    env!("CARGO_BIN_EXE_cohort")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().unwrap().port()
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub address: String,
    coordinator: Option<Child>,
    agents: Vec<(String, Child)>,
    heartbeat_timeout: f64,
}

impl Cluster {
    /// A coordinator and one agent per `(name, cores)`.
    pub fn start(agents: &[(&str, u32)]) -> Cluster {
        let mut c = Cluster {
            dir: tempfile::tempdir().expect("temp dir"),
            address: format!("127.0.0.1:{}", free_port()),
            coordinator: None,
            agents: Vec::new(),
            heartbeat_timeout: 1.0,
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
                "--heartbeat-timeout",
                &self.heartbeat_timeout.to_string(),
                "--data-dir",
            ])
            .arg(self.dir.path().join("coordinator"))
            .stdout(Stdio::null())
            .stderr(self.log("coordinator"))
            .spawn()
            .expect("start the coordinator");
        self.coordinator = Some(child);
        let address = self.address.clone();
        self.wait_until("the coordinator listens", Duration::from_secs(20), |_| {
            std::net::TcpStream::connect(&address).is_ok()
        });
    }

    pub fn start_agent(&mut self, name: &str, cores: u32) {
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
                "--data-dir",
            ])
            .arg(self.dir.path().join(name))
            .stdout(Stdio::null())
            .stderr(self.log(name))
            .spawn()
            .expect("start an agent");
        self.agents.push((name.to_string(), child));
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
        Command::new(cohort())
            .args(args)
            .env("COHORT_COORDINATOR", &self.address)
            .env("COHORT_LOG", "warn")
            .output()
            .expect("run the cli")
    }

    /// Runs a command with `--output json` and parses what it prints.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.cli(&all);
        if !out.status.success() {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
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

fn unsafe_term(child: &Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
}
