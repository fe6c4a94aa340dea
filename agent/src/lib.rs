//! The Helix build agent: enrols once with a join token, then holds a long-lived
//! mutual-TLS QUIC session with the coordinator, renewing its certificate as it goes.
//!
//! Reading order:
//! - [`datadir`]: [`DataDir`], the files an agent keeps, and [`Enrollment`] (`agent.json`).
//! - [`identity`]: [`AgentIdentity`], the certificate and key in one 0600 file, and
//!   [`CertInfo`], what the agent reads from its certificate.
//! - [`host`]: the host's name and the platforms it builds natively.
//! - [`join`]: [`join()`], enrolment with a token that pins the cluster CA.
//! - [`backoff`]: [`Backoff`], reconnect delays with jitter.
//! - [`renewal`]: when to renew ([`renewal_deadline`]) and [`PendingRenewal`], checking
//!   the renewed certificate.
//! - [`run`]: [`run()`], the connection lifecycle loop (connect → handshake → session →
//!   back off → again), and [`RunError`].
//! - [`session`] (private): one connection: `Hello`, the control stream, renewal,
//!   `GoingAway` on shutdown.

pub mod backoff;
pub mod datadir;
pub mod host;
pub mod identity;
pub mod join;
pub mod renewal;
pub mod run;
mod session;

pub use backoff::Backoff;
pub use datadir::{DataDir, DataDirError, Enrollment};
pub use identity::{AgentIdentity, CertInfo, IdentityError};
pub use join::{join, JoinError, JoinOptions};
pub use renewal::{renewal_deadline, PendingRenewal, RenewalError};
pub use run::{run, RunError, RunOptions};

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
