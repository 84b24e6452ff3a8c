//! `kind = "service"`: a long-running service kept at N healthy instances,
//! like a Marathon app. `[service]` holds the instance count, host ports,
//! placement and the rolling-update rules; `[service.health]` the check its
//! agents run next to each instance.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{Errors, SpecError, parse_duration};

/// How a service runs and is updated.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceSpec {
    pub instances: u32,
    /// Port names; each instance gets a free host port per name.
    pub ports: Vec<String>,
    /// At most one instance per node (Marathon's `hostname:UNIQUE`).
    pub unique_nodes: bool,
    /// During an update, the fraction of `instances` kept healthy.
    pub min_healthy: f64,
    /// A new version not healthy within this is rolled back.
    pub update_deadline: Duration,
    pub health: Option<HealthSpec>,
}

/// A health check, run by the agent beside each instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthSpec {
    pub probe: Probe,
    /// The port (by name) an http or tcp probe connects to.
    pub port: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Startup time before failures count.
    pub grace: Duration,
    /// Failures in a row that restart the instance.
    pub max_failures: u32,
}

impl HealthSpec {
    /// How Cohort's own executors are checked: gRPC's health service on
    /// the port named `port`, every `interval`. A busy executor's runtime
    /// answers within milliseconds; 2 s leaves room for a loaded machine
    /// before five failures in a row restart it.
    pub(crate) fn grpc_on(port: &str, interval: Duration) -> HealthSpec {
        HealthSpec {
            probe: Probe::Grpc(String::new()),
            port: Some(port.to_string()),
            interval,
            timeout: Duration::from_secs(2),
            grace: Duration::from_secs(60),
            max_failures: 5,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    /// GET this path; 2xx or 3xx is healthy.
    Http(String),
    /// A TCP connection is accepted.
    Tcp,
    /// This command exits 0.
    Command(Vec<String>),
    /// gRPC's health service (`grpc.health.v1`) answers `SERVING` for this
    /// service name ("": the server as a whole).
    Grpc(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    #[serde(default)]
    instances: Option<Spanned<i64>>,
    #[serde(default)]
    ports: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    unique_nodes: Option<bool>,
    #[serde(default)]
    min_healthy: Option<Spanned<f64>>,
    #[serde(default)]
    update_deadline: Option<Spanned<String>>,
    #[serde(default)]
    health: Option<Spanned<RawHealth>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default)]
    http: Option<Spanned<String>>,
    #[serde(default)]
    tcp: Option<Spanned<bool>>,
    #[serde(default)]
    command: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    grpc: Option<Spanned<RawGrpc>>,
    #[serde(default)]
    port: Option<Spanned<String>>,
    #[serde(default)]
    interval: Option<Spanned<String>>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    grace: Option<Spanned<String>>,
    #[serde(default)]
    max_failures: Option<Spanned<i64>>,
}

/// `grpc = true` (the server as a whole) or `grpc = "package.Service"`.
enum RawGrpc {
    Server(bool),
    Service(String),
}

/// By hand, so that another value is refused saying what is expected
/// (serde's untagged enums say only that no variant matched).
impl<'de> Deserialize<'de> for RawGrpc {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<RawGrpc, D::Error> {
        struct Expected;
        impl serde::de::Visitor<'_> for Expected {
            type Value = RawGrpc;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`true` (the server as a whole) or a service name such as \"shop.v1.Orders\"")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<RawGrpc, E> {
                Ok(RawGrpc::Server(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawGrpc, E> {
                Ok(RawGrpc::Service(v.to_string()))
            }
        }
        deserializer.deserialize_any(Expected)
    }
}

/// A fully qualified protobuf service name: dotted identifiers.
fn is_grpc_service_name(name: &str) -> bool {
    name.split('.').all(|part| {
        part.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

const MAX_INSTANCES: i64 = 10_000;

pub(super) fn parse(errors: &Errors, raw: Spanned<RawService>) -> Result<ServiceSpec, SpecError> {
    let table_span = raw.span();
    let raw = raw.into_inner();
    let instances = match &raw.instances {
        None => return Err(errors.at(Some(table_span), "service.instances", "missing: how many instances to run")),
        Some(n) if (1..=MAX_INSTANCES).contains(n.get_ref()) => *n.get_ref() as u32,
        Some(n) => {
            return Err(errors.at(
                Some(n.span()),
                "service.instances",
                format!("must be between 1 and {MAX_INSTANCES}, got {}", n.get_ref()),
            ));
        }
    };
    let ports = match &raw.ports {
        None => Vec::new(),
        Some(p) => {
            let mut seen = Vec::new();
            for name in p.get_ref() {
                let ok = !name.is_empty()
                    && name.len() <= 32
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if !ok {
                    return Err(errors.at(
                        Some(p.span()),
                        "service.ports",
                        format!("`{name}` is not a port name (letters, digits, `_` and `-`, at most 32)"),
                    ));
                }
                if seen.contains(name) {
                    return Err(errors.at(Some(p.span()), "service.ports", format!("`{name}` is named twice")));
                }
                seen.push(name.clone());
            }
            if seen.len() > 16 {
                return Err(errors.at(Some(p.span()), "service.ports", "at most 16 ports per instance"));
            }
            seen
        }
    };
    let min_healthy = match &raw.min_healthy {
        None => 1.0,
        Some(f) if (0.0..=1.0).contains(f.get_ref()) => *f.get_ref(),
        Some(f) => {
            return Err(errors.at(
                Some(f.span()),
                "service.min_healthy",
                format!("must be a fraction between 0 and 1, got {}", f.get_ref()),
            ));
        }
    };
    let duration = |value: &Option<Spanned<String>>, field: &str, default: Duration| match value {
        None => Ok(default),
        Some(v) => parse_duration(v.get_ref()).map_err(|m| errors.at(Some(v.span()), field, m)),
    };
    let update_deadline = duration(&raw.update_deadline, "service.update_deadline", Duration::from_secs(300))?;
    let health = match raw.health {
        None => None,
        Some(h) => {
            let span = h.span();
            let h = h.into_inner();
            let mut probes = Vec::new();
            if let Some(path) = &h.http {
                if !path.get_ref().starts_with('/') {
                    return Err(errors.at(Some(path.span()), "service.health.http", "the path must start with `/`"));
                }
                probes.push(("http", Probe::Http(path.get_ref().clone()), path.span()));
            }
            if let Some(tcp) = &h.tcp
                && *tcp.get_ref()
            {
                probes.push(("tcp", Probe::Tcp, tcp.span()));
            }
            if let Some(argv) = &h.command {
                if argv.get_ref().first().is_none_or(|p| p.is_empty()) {
                    return Err(errors.at(Some(argv.span()), "service.health.command", "must name a program to run"));
                }
                probes.push(("command", Probe::Command(argv.get_ref().clone()), argv.span()));
            }
            match h.grpc.as_ref().map(|g| (g.get_ref(), g.span())) {
                Some((RawGrpc::Server(true), span)) => probes.push(("grpc", Probe::Grpc(String::new()), span)),
                Some((RawGrpc::Service(name), span)) if !is_grpc_service_name(name) => {
                    return Err(errors.at(
                        Some(span),
                        "service.health.grpc",
                        format!(
                            "`{name}` is not a gRPC service name (`package.Service`); give `true` to check the server as a whole"
                        ),
                    ));
                }
                Some((RawGrpc::Service(name), span)) => probes.push(("grpc", Probe::Grpc(name.clone()), span)),
                Some((RawGrpc::Server(false), _)) | None => {}
            }
            let (kind, probe, probe_span) = match probes.len() {
                0 => {
                    return Err(errors.at(
                        Some(span),
                        "service.health",
                        "give one of http = \"/path\", tcp = true, grpc = true or command = [...]",
                    ));
                }
                1 => probes.pop().expect("one probe"),
                _ => {
                    let names: Vec<&str> = probes.iter().map(|p| p.0).collect();
                    return Err(errors.at(
                        Some(probes[1].2.clone()),
                        "service.health",
                        format!("give one of http, tcp, grpc or command, not {}", names.join(" and ")),
                    ));
                }
            };
            let port = match &h.port {
                Some(p) if !ports.contains(p.get_ref()) => {
                    return Err(errors.at(
                        Some(p.span()),
                        "service.health.port",
                        format!("`{}` is not one of service.ports ({})", p.get_ref(), ports.join(", ")),
                    ));
                }
                Some(p) => Some(p.get_ref().clone()),
                None => ports.first().cloned(),
            };
            if port.is_none() && kind != "command" {
                return Err(errors.at(
                    Some(probe_span),
                    &format!("service.health.{kind}"),
                    format!("a {kind} check needs a port: name one in service.ports"),
                ));
            }
            let max_failures = match &h.max_failures {
                None => 3,
                Some(n) if (1..=100).contains(n.get_ref()) => *n.get_ref() as u32,
                Some(n) => {
                    return Err(errors.at(
                        Some(n.span()),
                        "service.health.max_failures",
                        format!("must be between 1 and 100, got {}", n.get_ref()),
                    ));
                }
            };
            let interval = duration(&h.interval, "service.health.interval", Duration::from_secs(10))?;
            let timeout = duration(&h.timeout, "service.health.timeout", Duration::from_secs(2))?;
            let grace = duration(&h.grace, "service.health.grace", Duration::from_secs(30))?;
            if interval.is_zero() {
                let span = h.interval.as_ref().map(|i| i.span());
                return Err(errors.at(span, "service.health.interval", "must be more than zero"));
            }
            Some(HealthSpec { probe, port, interval, timeout, grace, max_failures })
        }
    };
    Ok(ServiceSpec {
        instances,
        ports,
        unique_nodes: raw.unique_nodes.unwrap_or(false),
        min_healthy,
        update_deadline,
        health,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{JobKind, parse_job};
    use super::*;

    const WEB: &str = r#"name = "web"
kind = "service"
[gang]
cpu = "250m"
memory = "128MiB"
[command]
argv = ["sh", "-c", "exec python3 -m http.server $COHORT_PORT_HTTP"]
[service]
instances = 3
ports = ["http"]
unique_nodes = false
min_healthy = 1.0
[service.health]
http = "/"
interval = "2s"
timeout = "1s"
grace = "10s"
max_failures = 3
"#;

    #[test]
    fn a_service() {
        let job = parse_job("web.toml", WEB).unwrap();
        let JobKind::Service { service, .. } = &job.kind else { panic!("a service") };
        assert_eq!((service.instances, service.ports.as_slice()), (3, ["http".to_string()].as_slice()));
        let health = service.health.as_ref().unwrap();
        assert_eq!(health.probe, Probe::Http("/".into()));
        assert_eq!((health.interval, health.grace), (Duration::from_secs(2), Duration::from_secs(10)));
        assert_eq!((job.gang.min, job.gang.max, job.gang.priority.as_str()), (1, 3, "service"));
        assert_eq!(job.gang.restart, cohort_scheduler::Restart::Always);
    }

    #[test]
    fn a_grpc_check_names_a_service_or_the_whole_server() {
        let probe = |grpc: &str| {
            let job = parse_job("web.toml", &WEB.replace("http = \"/\"", &format!("grpc = {grpc}"))).unwrap();
            let JobKind::Service { service, .. } = job.kind else { panic!("a service") };
            service.health.unwrap().probe
        };
        assert_eq!(probe("true"), Probe::Grpc(String::new()));
        assert_eq!(probe("\"shop.v1.Orders\""), Probe::Grpc("shop.v1.Orders".into()));
        for bad in ["\"\"", "\"shop..Orders\"", "\"1shop\"", "\"/\""] {
            let text = WEB.replace("http = \"/\"", &format!("grpc = {bad}"));
            let e = parse_job("web.toml", &text).unwrap_err();
            assert_eq!((e.line, e.field.as_str()), (14, "service.health.grpc"), "{bad}: {e}");
        }
        let e = parse_job("web.toml", &WEB.replace("http = \"/\"", "grpc = false")).unwrap_err();
        assert_eq!(e.field, "service.health", "no probe left: {e}");
        let e = parse_job("web.toml", &WEB.replace("http = \"/\"", "grpc = 7")).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (14, "service.health.grpc"), "{e}");
        assert!(e.message.contains("expected `true` (the server as a whole) or a service name"), "{e}");
    }

    /// Each bad spec, and the line and field its error names.
    #[test]
    fn bad_service_specs_name_line_and_field() {
        let cases = [
            (WEB.replace("http = \"/\"", "grpc = \"/\""), 14, "service.health.grpc"),
            (WEB.replace("http = \"/\"", "http = \"/\"\ntcp = true"), 15, "service.health"),
            (WEB.replace("instances = 3", "instances = 0"), 9, "service.instances"),
            (WEB.replace("ports = [\"http\"]\n", ""), 13, "service.health.http"),
            (WEB.replace("interval = \"2s\"", "interval = \"2x\""), 15, "service.health.interval"),
            (WEB.replace("min_healthy = 1.0", "min_healthy = 1.5"), 12, "service.min_healthy"),
            (WEB.replace("[service]\n", "[service]\nmin = 2\n"), 9, "service.min"),
            (WEB.replace("[gang]\n", "[gang]\nmin = 2\n"), 4, "gang.min"),
        ];
        for (text, line, field) in cases {
            let e = parse_job("web.toml", &text).unwrap_err();
            assert_eq!((e.line, e.field.as_str()), (line, field), "{e}");
        }
    }
}
