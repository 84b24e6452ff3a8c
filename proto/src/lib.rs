//! Cohort's gRPC protocol, generated from `proto/cohort.proto`. Wire types
//! live here and nowhere else.

#[allow(clippy::large_enum_variant)]
pub mod v1 {
    tonic::include_proto!("cohort.v1");
}

pub use v1::*;
