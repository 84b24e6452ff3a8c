//! The one place where domain types shared by the coordinator and the
//! agents (executor kinds, health checks) meet their protobuf twins.

use std::time::Duration;

use cohort_proto as pb;

use crate::executor::ExecutorKind;
use crate::spec::{HealthSpec, Probe};

impl From<ExecutorKind> for pb::ExecutorKind {
    fn from(kind: ExecutorKind) -> Self {
        match kind {
            ExecutorKind::Command => pb::ExecutorKind::Command,
            ExecutorKind::Batch => pb::ExecutorKind::Batch,
            ExecutorKind::Stream => pb::ExecutorKind::Stream,
            ExecutorKind::Store => pb::ExecutorKind::Store,
            ExecutorKind::Service => pb::ExecutorKind::Service,
        }
    }
}

/// The executor kind a `Launch` carries, if it names one.
pub fn executor_kind(launch: &pb::Launch) -> Option<ExecutorKind> {
    match pb::ExecutorKind::try_from(launch.kind).ok()? {
        pb::ExecutorKind::Unspecified => None,
        pb::ExecutorKind::Command => Some(ExecutorKind::Command),
        pb::ExecutorKind::Batch => Some(ExecutorKind::Batch),
        pb::ExecutorKind::Stream => Some(ExecutorKind::Stream),
        pb::ExecutorKind::Store => Some(ExecutorKind::Store),
        pb::ExecutorKind::Service => Some(ExecutorKind::Service),
    }
}

/// A health check as the coordinator sends it.
pub fn health_to_pb(h: &HealthSpec) -> pb::HealthCheck {
    let probe = match &h.probe {
        Probe::Http(path) => pb::health_check::Probe::HttpPath(path.clone()),
        Probe::Tcp => pb::health_check::Probe::Tcp(true),
        Probe::Command(argv) => pb::health_check::Probe::Command(pb::CommandProbe { argv: argv.clone() }),
        Probe::Grpc(service) => pb::health_check::Probe::Grpc(pb::GrpcProbe { service: service.clone() }),
    };
    pb::HealthCheck {
        probe: Some(probe),
        interval_ms: h.interval.as_millis() as u64,
        timeout_ms: h.timeout.as_millis() as u64,
        grace_ms: h.grace.as_millis() as u64,
        max_failures: h.max_failures,
        port: h.port.clone().unwrap_or_default(),
    }
}

/// A health check as an agent receives it (`None` if it names no probe).
pub fn health_from_pb(h: &pb::HealthCheck) -> Option<HealthSpec> {
    let probe = match h.probe.as_ref()? {
        pb::health_check::Probe::HttpPath(path) => Probe::Http(path.clone()),
        pb::health_check::Probe::Tcp(_) => Probe::Tcp,
        pb::health_check::Probe::Command(c) => Probe::Command(c.argv.clone()),
        pb::health_check::Probe::Grpc(g) => Probe::Grpc(g.service.clone()),
    };
    Some(HealthSpec {
        probe,
        port: (!h.port.is_empty()).then(|| h.port.clone()),
        interval: Duration::from_millis(h.interval_ms.max(1)),
        timeout: Duration::from_millis(h.timeout_ms),
        grace: Duration::from_millis(h.grace_ms),
        max_failures: h.max_failures.max(1),
    })
}
