//! Health checks of service instances, run by the agent beside them (never
//! from the coordinator: an overloaded coordinator must not kill healthy
//! instances). A probe every `interval`: HTTP GET (2xx or 3xx), a TCP
//! connection, or a command that exits 0, each bounded by `timeout`. The
//! first pass makes an instance healthy; a failure makes it unhealthy;
//! `max_failures` in a row after the `grace` period stop it, as its own
//! failure, and the coordinator restarts it.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::executors::Executors;
use crate::spec::{HealthSpec, Probe};

/// Checks an instance until it is gone.
pub(super) fn watch(executors: Executors, alloc: u64, spec: HealthSpec, ports: BTreeMap<String, u16>) {
    tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let port = spec.port.as_ref().and_then(|p| ports.get(p)).copied().or_else(|| ports.values().next().copied());
        let host = executors.probe_host();
        let mut healthy = None;
        let mut failures = 0u32;
        let mut every = tokio::time::interval(spec.interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if !executors.is_running(alloc) {
                return;
            }
            let outcome = tokio::time::timeout(spec.timeout, probe(&spec.probe, host, port, &ports))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {:?}", spec.timeout)));
            match outcome {
                Ok(()) => {
                    failures = 0;
                    if healthy != Some(true) {
                        healthy = Some(true);
                        executors.health(alloc, true, String::new());
                    }
                }
                Err(why) => {
                    if started.elapsed() < spec.grace {
                        // Still starting: failures do not count yet.
                        continue;
                    }
                    failures += 1;
                    if healthy != Some(false) {
                        healthy = Some(false);
                        executors.health(alloc, false, why.clone());
                    }
                    if failures >= spec.max_failures {
                        let reason = format!("failed {failures} health check(s) in a row: {why}");
                        tracing::warn!(alloc, %reason, "restarting an unhealthy instance");
                        executors.kill(alloc, Duration::from_secs(5), "unhealthy", Some(reason));
                        return;
                    }
                }
            }
        }
    });
}

async fn probe(
    probe: &Probe,
    host: std::net::IpAddr,
    port: Option<u16>,
    ports: &BTreeMap<String, u16>,
) -> Result<(), String> {
    match probe {
        Probe::Http(path) => {
            let port = port.ok_or("no port to check")?;
            let at = std::net::SocketAddr::new(host, port);
            let mut stream =
                tokio::net::TcpStream::connect(at).await.map_err(|e| format!("cannot connect to {at}: {e}"))?;
            let request = format!("GET {path} HTTP/1.1\r\nHost: {at}\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.map_err(|e| format!("cannot send the request: {e}"))?;
            let mut head = [0u8; 64];
            let n = stream.read(&mut head).await.map_err(|e| format!("cannot read the answer: {e}"))?;
            let line = String::from_utf8_lossy(&head[..n]);
            let status: u16 =
                line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("not an HTTP answer")?;
            if (200..400).contains(&status) { Ok(()) } else { Err(format!("GET {path} answered {status}")) }
        }
        Probe::Tcp => {
            let port = port.ok_or("no port to check")?;
            let at = std::net::SocketAddr::new(host, port);
            tokio::net::TcpStream::connect(at).await.map(|_| ()).map_err(|e| format!("cannot connect to {at}: {e}"))
        }
        Probe::Command(argv) => {
            let (program, args) = argv.split_first().ok_or("no command")?;
            let mut cmd = tokio::process::Command::new(program);
            cmd.args(args).kill_on_drop(true).stdin(std::process::Stdio::null());
            cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
            for (name, port) in ports {
                cmd.env(format!("COHORT_PORT_{}", name.to_uppercase().replace('-', "_")), port.to_string());
            }
            let status = cmd.status().await.map_err(|e| format!("cannot run `{program}`: {e}"))?;
            if status.success() { Ok(()) } else { Err(format!("`{program}` exited with {status}")) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_probe_reaches_an_instance_on_the_address_its_host_advertises() {
        // An executor binds its host's advertised IP, not every interface.
        let advertised: std::net::IpAddr = "127.0.0.2".parse().unwrap();
        let listener = tokio::net::TcpListener::bind((advertised, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let ports = BTreeMap::from([("flight".to_string(), port)]);

        assert_eq!(probe(&Probe::Tcp, advertised, Some(port), &ports).await, Ok(()));
        let loopback = "127.0.0.1".parse().unwrap();
        let missed = probe(&Probe::Tcp, loopback, Some(port), &ports).await.unwrap_err();
        assert!(missed.contains(&format!("127.0.0.1:{port}")), "{missed}");
    }
}
