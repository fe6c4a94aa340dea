//! End-to-end tests: real `helix-coordinator` and `helix-agent` processes on loopback.
//! One test binary, one module per area.

mod builds;
mod cache;
mod cluster;
mod cluster_cli;
mod contexts;
mod failover;
mod faults;
mod metrics;
mod postgres_harness;
mod raw;
mod service;
