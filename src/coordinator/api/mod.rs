//! The coordinator's front doors. Each one maps its own protocol to calls on
//! the core through a [`crate::coordinator::CoreHandle`] and the core's
//! errors to its own status codes; none holds state of its own.
//!
//! - `auth.rs`: bearer tokens to principals, for both;
//! - `grpc.rs`: the CLI's and the agents' gRPC services;
//! - `http.rs`: health probes, `/metrics`, the JSON API and the web UI.

pub mod auth;
pub mod grpc;
pub mod http;
