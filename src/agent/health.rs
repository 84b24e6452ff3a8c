//! Health checks of service instances, run by the agent beside them (never
//! from the coordinator: an overloaded coordinator must not kill healthy
//! instances). A probe every `interval`: HTTP GET (2xx or 3xx), a TCP
//! connection, gRPC's health service answering `SERVING`, or a command
//! that exits 0, each bounded by `timeout`. The first pass makes an
//! instance healthy; a failure makes it unhealthy; `max_failures` in a row
//! stop it, as its own failure, and the coordinator restarts it. Failures
//! count once the instance has passed a check or its `grace` is over,
//! whichever comes first (Kubernetes' startup probe, then its liveness
//! probe).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use cohort_proto::health::pb::HealthCheckRequest;
use cohort_proto::health::pb::health_check_response::ServingStatus;
use cohort_proto::health::pb::health_client::HealthClient;
use tonic::transport::{ClientTlsConfig, Endpoint};

use super::executors::Executors;
use crate::spec::{HealthSpec, Probe};

/// Checks an instance until it is gone. `tls` is how to call one of
/// Cohort's own executors, which serve only the cluster's certificates.
pub(super) fn watch(
    executors: Executors,
    alloc: u64,
    spec: HealthSpec,
    ports: BTreeMap<String, u16>,
    tls: Option<ClientTlsConfig>,
) {
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
            let outcome = probe(&spec.probe, spec.timeout, host, port, &ports, tls.as_ref()).await;
            match outcome {
                Ok(()) => {
                    failures = 0;
                    if healthy != Some(true) {
                        healthy = Some(true);
                        executors.health(alloc, true, String::new());
                    }
                }
                Err(why) => {
                    if healthy.is_none() && started.elapsed() < spec.grace {
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

/// One probe, given `timeout` to answer.
async fn probe(
    probe: &Probe,
    timeout: Duration,
    host: std::net::IpAddr,
    port: Option<u16>,
    ports: &BTreeMap<String, u16>,
    tls: Option<&ClientTlsConfig>,
) -> Result<(), String> {
    let attempt = async {
        match probe {
            Probe::Grpc(service) => {
                let port = port.ok_or("no port to check")?;
                let at = std::net::SocketAddr::new(host, port);
                let endpoint = match tls {
                    Some(tls) => Endpoint::from_shared(format!("https://{at}"))
                        .and_then(|e| e.tls_config(tls.clone()))
                        .map_err(|e| format!("cannot call {at}: {e}"))?,
                    None => {
                        Endpoint::from_shared(format!("http://{at}")).map_err(|e| format!("cannot call {at}: {e}"))?
                    }
                };
                let channel = endpoint.connect().await.map_err(|e| format!("cannot connect to {at}: {e}"))?;
                let request = HealthCheckRequest { service: service.clone() };
                let answer = HealthClient::new(channel)
                    .check(request)
                    .await
                    .map_err(|s| format!("grpc.health.v1 Check answered {:?}: {}", s.code(), s.message()))?;
                match answer.into_inner().status() {
                    ServingStatus::Serving => Ok(()),
                    status => Err(format!("grpc.health.v1 Check answered {}", status.as_str_name())),
                }
            }
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
    };
    tokio::time::timeout(timeout, attempt).await.unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WITHIN: Duration = Duration::from_millis(500);

    #[tokio::test]
    async fn a_probe_reaches_an_instance_on_the_address_its_host_advertises() {
        // An executor binds its host's advertised IP, not every interface.
        let advertised: std::net::IpAddr = "127.0.0.2".parse().unwrap();
        let listener = tokio::net::TcpListener::bind((advertised, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let ports = BTreeMap::from([("flight".to_string(), port)]);

        assert_eq!(probe(&Probe::Tcp, WITHIN, advertised, Some(port), &ports, None).await, Ok(()));
        let loopback = "127.0.0.1".parse().unwrap();
        let missed = probe(&Probe::Tcp, WITHIN, loopback, Some(port), &ports, None).await.unwrap_err();
        assert!(missed.contains(&format!("127.0.0.1:{port}")), "{missed}");
    }

    /// A gRPC server on a free loopback port with the health service, whose
    /// reporter sets each service's status.
    async fn grpc_server() -> (u16, cohort_proto::health::server::HealthReporter) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (reporter, service) = cohort_proto::health::server::health_reporter();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
        (port, reporter)
    }

    #[tokio::test]
    async fn a_grpc_check_passes_only_while_the_server_says_serving() {
        let (port, reporter) = grpc_server().await;
        let loopback = "127.0.0.1".parse().unwrap();
        let check = |service: &str| {
            let ports = BTreeMap::from([("grpc".to_string(), port)]);
            let kind = Probe::Grpc(service.to_string());
            async move { probe(&kind, WITHIN, loopback, Some(port), &ports, None).await }
        };
        assert_eq!(check("").await, Ok(()), "the server as a whole");
        reporter.set_service_status("shop.Orders", cohort_proto::health::ServingStatus::NotServing).await;
        let refused = check("shop.Orders").await.unwrap_err();
        assert!(refused.contains("NOT_SERVING"), "{refused}");
        reporter.set_service_status("shop.Orders", cohort_proto::health::ServingStatus::Serving).await;
        assert_eq!(check("shop.Orders").await, Ok(()));
        let unknown = check("shop.Payments").await.unwrap_err();
        assert!(unknown.contains("NotFound"), "{unknown}");
    }

    #[tokio::test]
    async fn a_process_that_only_holds_its_port_passes_a_tcp_check_and_fails_a_grpc_one() {
        // Given a port whose process never answers: the kernel completes the
        // handshake for a stopped (SIGSTOP) or wedged server all the same
        let silent = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let ports = BTreeMap::from([("flight".to_string(), port)]);
        let loopback = "127.0.0.1".parse().unwrap();
        // Then a TCP check passes, and a gRPC one finds no answer
        assert_eq!(probe(&Probe::Tcp, WITHIN, loopback, Some(port), &ports, None).await, Ok(()));
        let grpc = probe(&Probe::Grpc(String::new()), WITHIN, loopback, Some(port), &ports, None).await;
        assert!(grpc.unwrap_err().contains("no answer within"));
    }
}
