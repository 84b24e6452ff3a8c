//! Cohort's gRPC protocol, generated from `proto/cohort.proto`. Wire types
//! live here and nowhere else.

#[allow(clippy::large_enum_variant)]
pub mod v1 {
    tonic::include_proto!("cohort.v1");
}

pub use v1::*;

/// gRPC's standard health checking protocol (`grpc.health.v1`): Cohort's
/// executors serve it, and agents probe it (as Kubernetes' `grpc` probes
/// do) to tell a serving process from one that only holds its port open.
pub use tonic_health as health;
