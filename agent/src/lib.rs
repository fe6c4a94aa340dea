//! The Helix build agent: enrols once with a join token, then holds a long-lived
//! mutual-TLS QUIC session with the coordinator, renewing its certificate as it goes,
//! and runs the builds it is assigned: fetch the pinned commit or the uploaded build
//! context, build it with buildah or podman into an OCI layout, push that by digest,
//! report the digest. SIGTERM drains it: running jobs finish (up to a deadline), new
//! ones go elsewhere.
//!
//! Reading order:
//! - [`datadir`]: [`DataDir`], the files an agent keeps, and [`Enrollment`] (`agent.json`).
//! - [`identity`]: [`AgentIdentity`], the certificate and key in one 0600 file, and
//!   [`CertInfo`], what the agent reads from its certificate.
//! - [`host`]: the host's name and the platforms it builds natively.
//! - [`coordinators`]: [`Coordinators`], the configured and learned coordinator
//!   addresses, and [`coordinators::Round`], the order they are dialed in (the last
//!   leader first) and how a standby's `Redirect` is followed.
//! - [`join`](mod@join): [`join()`], enrolment with a token that pins the cluster CA
//!   (following a standby's `Redirect` to the leader).
//! - [`enrol`]: [`enrol::enrol_if_needed`], enrolment on the first `run` from a
//!   0600 `join-token-file` (deleted afterwards) or `HELIX_JOIN_TOKEN`.
//! - [`backoff`]: [`Backoff`], reconnect delays with jitter.
//! - [`renewal`]: when to renew ([`renewal_deadline`]) and [`PendingRenewal`], checking
//!   the renewed certificate.
//! - [`builder`]: the [`Builder`] trait and the [`CommandRunner`] seam under it
//!   ([`ProcessRunner`]: own process group, SIGTERM then SIGKILL on cancel);
//!   [`builder::backend`]: [`builder::Backend`], the one implementation for
//!   command-line tools, with their command lines in [`builder::buildah`]
//!   ([`Buildah`], the default) and [`builder::podman`] ([`Podman`], a storage per
//!   platform).
//! - [`context`]: build contexts by digest: the [`context::ContextFetcher`] a job
//!   downloads them through ([`context::CurrentConnection`], the live connection),
//!   and [`context::download`], which verifies them against their sha256.
//! - [`joblog`]: [`JobLog`], a job's `output.log`, and [`joblog::ship`], which sends it
//!   to the coordinator as offset-tagged chunks.
//! - [`executor`]: [`Executor`], one assignment from source (git commit or build
//!   context) to pushed image, and how its failures are classified.
//! - [`results`]: [`ResultStore`], finished results kept on disk until acknowledged.
//! - [`jobs`]: [`Jobs`], the running jobs and held results, outliving connections;
//!   admission, cancel, and the drain.
//! - [`service`]: [`service::ServiceManager`], what systemd is told (`READY=1`,
//!   `STOPPING=1`, the `STATUS=` line), and [`service::status_line`].
//! - [`metrics`]: [`metrics::Metrics`], the Prometheus metrics, and their optional
//!   `/metrics` listener.
//! - [`run`](mod@run): [`run()`], start-up checks and enrolment, then the connection
//!   lifecycle loop (connect → handshake → session → back off → again), live
//!   settings ([`run::LiveSettings`], from a reloaded configuration), the drain on
//!   shutdown, and [`RunError`].
//! - `session` (private): one connection: `Hello` with the held jobs (or a standby's
//!   `Redirect`), the control stream (assign, cancel, ack, reports, `Draining`, the
//!   leader's `Coordinators`), log streams, renewal, `GoingAway`.
//! - [`doctor`]: [`doctor::diagnose`], the checks of `helix-agent doctor`, on a
//!   [`doctor::Machine`].

pub mod backoff;
pub mod builder;
pub mod context;
pub mod coordinators;
pub mod datadir;
pub mod doctor;
pub mod enrol;
pub mod executor;
pub mod host;
pub mod identity;
pub mod joblog;
pub mod jobs;
pub mod join;
pub mod metrics;
pub mod renewal;
pub mod results;
pub mod run;
pub mod service;
mod session;

pub use backoff::Backoff;
pub use builder::{Buildah, Builder, BuilderKind, CommandRunner, Podman, ProcessRunner};
pub use coordinators::Coordinators;
pub use datadir::{DataDir, DataDirError, Enrollment};
pub use executor::Executor;
pub use identity::{AgentIdentity, CertInfo, IdentityError};
pub use joblog::JobLog;
pub use jobs::Jobs;
pub use join::{join, JoinError, JoinOptions};
pub use renewal::{renewal_deadline, PendingRenewal, RenewalError};
pub use results::ResultStore;
pub use run::{run, LiveSettings, RunContext, RunError, RunOptions};

#[cfg(test)]
mod fake_coordinator;

#[cfg(test)]
mod test_support {
    use std::time::Duration;

    use helix_protocol::AgentId;
    use helix_transport::pki::{self, ClusterCa};

    /// A real agent certificate (cluster `test`) and its key from `ca`.
    pub(crate) fn issue(ca: &ClusterCa, id: AgentId, validity: Duration) -> (String, String) {
        let (key_pem, csr) = pki::generate_key_and_csr().expect("csr");
        let cert_pem = ca
            .sign_agent_csr(&csr, "test", id.0, validity)
            .expect("sign");
        (cert_pem, key_pem)
    }
}
