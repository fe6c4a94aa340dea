//! The Helix coordinator: holds the cluster CA and the durable store, accepts agents
//! and admins over mutual-TLS QUIC, and (in later layers) schedules build jobs.
//!
//! Reading order:
//! - [`contexts`]: [`contexts::Contexts`], uploaded build contexts by digest.
//! - [`datadir`]: [`datadir::DataDir`], what lives where on disk.
//! - [`init`]: `helix-coordinator init`, creating the CA, certificates and store.
//! - [`store`]: [`store::Store`], the redb database (agents, join tokens).
//! - [`git`]: pinning a ref to a commit with `git ls-remote`.
//! - [`logs`]: [`logs::Logs`], bounded per-job build output on disk.
//! - [`metrics`]: Prometheus metrics, `/healthz` and `/readyz`.
//! - [`scheduler`]: [`scheduler::Scheduler`], the sans-IO dispatch and lease policy.
//! - [`server`]: [`server::Server`], the QUIC listener and role dispatch.
//! - [`agent_session`]: enrolment and the agent control stream.
//! - [`admin`]: admin requests.
//! - [`cache`]: the result cache's policy (keys per build and platform).
//! - [`client`]: [`client::AdminClient`], the admin CLI's side.
//! - [`clock`]: the one place the wall clock is read.

mod admin;
mod agent_session;
pub mod assembler;
mod builds;
pub mod cache;
pub mod client;
pub mod clock;
pub mod contexts;
pub mod datadir;
mod engine;
pub mod git;
pub mod init;
mod leader;
pub mod logs;
pub mod metrics;
pub mod scheduler;
pub mod server;
pub mod store;
