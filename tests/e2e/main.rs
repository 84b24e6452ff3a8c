//! End-to-end tests: real coordinator and agent processes on loopback, free
//! ports, temporary directories, driven through the `cohort` CLI.

mod harness;

mod control_plane;
mod http;
mod pipelines;
mod security;
mod self_healing;
mod services;
mod simulate;
mod sql;
