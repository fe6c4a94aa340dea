//! Enrolment: `helix-agent join`.
//!
//! The agent generates its key and a CSR locally (the key never leaves the host),
//! connects without a client certificate, trusting the coordinator only through the CA
//! hash its join token carries, sends `Join` and stores what comes back: the
//! certificate with its key (`identity.pem`), the CA (`ca.pem`) and `agent.json`.

use std::time::Duration;

use helix_protocol::wire::{
    close, AgentToCoordinator, CoordinatorToAgent, RejectCode, PROTOCOL_VERSION,
};
use helix_protocol::{AgentId, JoinToken};
use helix_transport::connect::{self, describe_close, ConnectError};
use helix_transport::framed::{self, StreamError};
use helix_transport::pki::{self, PkiError};
use helix_transport::tls::{self, TlsError};
use time::OffsetDateTime;
use tracing::debug;

use crate::datadir::{DataDir, DataDirError, Enrollment};
use crate::identity::{AgentIdentity, IdentityError};

/// How long the coordinator may take to answer a join request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the close to reach the coordinator before exiting.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// What `join` needs.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// The coordinator, `HOST:PORT`.
    pub coordinator: String,
    pub token: JoinToken,
    pub data_dir: DataDir,
    /// The agent's display name (already valid: letters, digits, `-`, `_`, `.`).
    pub name: String,
}

/// Why enrolment failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The data directory already holds an identity.
    #[error("already joined: {dir} holds the identity of agent {agent} (to enrol this host again, remove {dir} or choose another --data-dir)")]
    AlreadyJoined { dir: String, agent: String },
    /// The agent name is not acceptable.
    #[error("invalid agent name: {0}")]
    InvalidName(String),
    /// The coordinator could not be reached (or its address is malformed).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The coordinator's certificate chain does not contain the CA the token pins, or
    /// did not verify against it.
    #[error("refusing to join {addr}: {reason}")]
    Untrusted { addr: String, reason: String },
    /// The coordinator refused the request.
    #[error("the coordinator refused to enrol this agent: {reason}")]
    Rejected { code: RejectCode, reason: String },
    /// The exchange broke off.
    #[error("the join request failed: {0}")]
    Stream(#[from] StreamError),
    /// The coordinator answered something that is not a join reply.
    #[error("unexpected reply from the coordinator: {0}")]
    Protocol(String),
    /// What the coordinator issued does not check out.
    #[error("the coordinator's reply does not check out: {0}")]
    Verification(String),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
}

/// Enrol this host and store its identity; returns what was recorded in `agent.json`.
pub async fn join(opts: &JoinOptions) -> Result<Enrollment, JoinError> {
    refuse_if_joined(&opts.data_dir)?;
    helix_protocol::identity::validate_admin_name(&opts.name).map_err(JoinError::InvalidName)?;

    let (key_pem, csr_der) = pki::generate_key_and_csr()?;
    let (tls, pinned) = tls::join_client_config(&opts.token.ca_hash)?;
    let quic = tls::quinn_client_config(tls, tls::DEFAULT_IDLE_TIMEOUT, tls::DEFAULT_KEEP_ALIVE)?;

    let (sock, server_name) = connect::resolve(&opts.coordinator).await?;
    let endpoint = connect::client_endpoint(sock)?;
    let connecting = endpoint
        .connect_with(quic, sock, &server_name)
        .map_err(|source| ConnectError::Connect {
            addr: opts.coordinator.clone(),
            source,
        })?;
    let conn = match connecting.await {
        Ok(conn) => conn,
        Err(e) => {
            // The verifier's own sentence, not rustls' debug text around it.
            return Err(match pinned.rejection() {
                Some(reason) => JoinError::Untrusted {
                    addr: opts.coordinator.clone(),
                    reason,
                },
                None => ConnectError::Handshake {
                    addr: opts.coordinator.clone(),
                    reason: describe_close(&e),
                }
                .into(),
            });
        }
    };
    debug!(pin = %pinned.pin(), "the coordinator's chain contains the pinned CA");

    let result = exchange(&conn, opts, csr_der).await;
    let code = if result.is_ok() {
        close::NORMAL
    } else {
        close::PROTOCOL_ERROR
    };
    conn.close(code.into(), b"join done");
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, endpoint.wait_idle()).await;
    let (agent_id, cluster, cert_pem, ca_pem) = result?;

    let identity = verify(&opts.token, agent_id, &cluster, cert_pem, key_pem, &ca_pem)?;
    let enrollment = Enrollment {
        agent_id,
        cluster,
        coordinator: opts.coordinator.clone(),
        name: opts.name.clone(),
    };
    store(&opts.data_dir, &identity, &ca_pem, &enrollment)?;
    Ok(enrollment)
}

/// Refuses a directory that already holds an identity (or its record).
pub fn refuse_if_joined(dir: &DataDir) -> Result<(), JoinError> {
    if !dir.is_joined() && !dir.enrollment().exists() {
        return Ok(());
    }
    let agent = dir
        .load_enrollment()
        .map(|e| format!("{} ({}) of cluster {:?}", e.agent_id, e.name, e.cluster))
        .unwrap_or_else(|_| "(unknown)".to_string());
    Err(JoinError::AlreadyJoined {
        dir: dir.root().display().to_string(),
        agent,
    })
}

/// Send `Join` and read the reply: (agent id, cluster, certificate, CA).
async fn exchange(
    conn: &quinn::Connection,
    opts: &JoinOptions,
    csr_der: Vec<u8>,
) -> Result<(AgentId, String, String, String), JoinError> {
    let request = AgentToCoordinator::Join {
        protocol_version: PROTOCOL_VERSION,
        token: opts.token.to_string(),
        name: opts.name.clone(),
        csr_der,
    };
    let reply = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        framed::write_frame(&mut send, &request).await?;
        let _ = send.finish();
        framed::read_frame::<CoordinatorToAgent>(&mut recv).await
    };
    let reply = match tokio::time::timeout(REPLY_TIMEOUT, reply).await {
        Err(_) => return Err(StreamError::Timeout(REPLY_TIMEOUT).into()),
        Ok(Ok(Some(reply))) => reply,
        // The connection ended without a reply: its close code says why.
        Ok(Ok(None)) | Ok(Err(_)) if conn.close_reason().is_some() => {
            let reason = conn.close_reason().map(|e| describe_close(&e));
            return Err(JoinError::Protocol(format!(
                "the coordinator closed the connection without answering: {}",
                reason.unwrap_or_default()
            )));
        }
        Ok(Ok(None)) => return Err(StreamError::Closed.into()),
        Ok(Err(e)) => return Err(e.into()),
    };
    match reply {
        CoordinatorToAgent::Joined {
            agent_id,
            cluster,
            cert_pem,
            ca_pem,
        } => Ok((agent_id, cluster, cert_pem, ca_pem)),
        CoordinatorToAgent::Rejected { code, reason } => Err(JoinError::Rejected { code, reason }),
        other => Err(JoinError::Protocol(format!(
            "expected Joined or Rejected, got {}",
            variant_name(&other)
        ))),
    }
}

/// Checks the reply before anything is stored: the CA is the pinned one, and the
/// certificate is for our key under `spiffe://<cluster>/agent/<agent_id>`.
fn verify(
    token: &JoinToken,
    agent_id: AgentId,
    cluster: &str,
    cert_pem: String,
    key_pem: String,
    ca_pem: &str,
) -> Result<AgentIdentity, JoinError> {
    let bad = |reason: String| JoinError::Verification(reason);
    let (_, ca) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
        .map_err(|e| bad(format!("the CA certificate is not PEM: {e}")))?;
    let ca_hash = pki::sha256_fingerprint(&ca.contents);
    if ca_hash != token.ca_hash {
        return Err(bad(format!(
            "the CA certificate it sent has sha256 {ca_hash}, but the join token pins {}",
            token.ca_hash
        )));
    }
    let expected = pki::agent_spiffe_id(cluster, agent_id.0)?;
    let identity = AgentIdentity::new(cert_pem, key_pem, OffsetDateTime::now_utc())?;
    if identity.info().spiffe_id != expected {
        return Err(bad(format!(
            "the certificate is for {}, expected {expected}",
            identity.info().spiffe_id
        )));
    }
    // rustls refuses a certificate whose public key is not our key's.
    tls::client_config(ca_pem, identity.cert_pem(), identity.key_pem())
        .map_err(|e| bad(format!("the certificate is not usable with our key: {e}")))?;
    Ok(identity)
}

/// Writes the CA and the record first and the identity last, so a join interrupted
/// half-way leaves no `identity.pem` and can simply be run again.
fn store(
    dir: &DataDir,
    identity: &AgentIdentity,
    ca_pem: &str,
    enrollment: &Enrollment,
) -> Result<(), JoinError> {
    dir.create()?;
    dir.save_ca(ca_pem)?;
    dir.save_enrollment(enrollment)?;
    identity.store(&dir.identity())?;
    Ok(())
}

/// A message's variant name, for errors (never its contents: they may hold keys).
pub(crate) fn variant_name(msg: &CoordinatorToAgent) -> &'static str {
    match msg {
        CoordinatorToAgent::Welcome { .. } => "Welcome",
        CoordinatorToAgent::Rejected { .. } => "Rejected",
        CoordinatorToAgent::Joined { .. } => "Joined",
        CoordinatorToAgent::CertificateRenewed { .. } => "CertificateRenewed",
        CoordinatorToAgent::Assign(_) => "Assign",
        CoordinatorToAgent::Cancel { .. } => "Cancel",
        CoordinatorToAgent::Ack { .. } => "Ack",
        CoordinatorToAgent::ContextFollows { .. } => "ContextFollows",
        CoordinatorToAgent::Redirect { .. } => "Redirect",
        CoordinatorToAgent::Coordinators(_) => "Coordinators",
    }
}

#[cfg(test)]
mod tests {
    use helix_transport::pki::ClusterCa;

    use super::*;

    fn options(dir: &std::path::Path, ca: &ClusterCa) -> JoinOptions {
        JoinOptions {
            // Nothing listens here; a join that got that far would fail to connect.
            coordinator: "127.0.0.1:9".into(),
            token: JoinToken::new(&ca.fingerprint(), [7; 16]),
            data_dir: DataDir::new(dir),
            name: "node-1".into(),
        }
    }

    #[tokio::test]
    async fn refuses_an_already_joined_directory() {
        let ca = ClusterCa::generate("test").expect("ca");
        let tmp = tempfile::tempdir().expect("tempdir");
        let opts = options(tmp.path(), &ca);
        let (cert, key) =
            crate::test_support::issue(&ca, AgentId::new_v4(), Duration::from_secs(60));
        let identity = AgentIdentity::new(cert, key, OffsetDateTime::now_utc()).expect("identity");
        let enrollment = Enrollment {
            agent_id: identity.info().agent_id,
            cluster: "test".into(),
            coordinator: opts.coordinator.clone(),
            name: "node-1".into(),
        };
        store(&opts.data_dir, &identity, ca.cert_pem(), &enrollment).expect("store");

        let err = join(&opts).await.expect_err("already joined");
        assert!(matches!(err, JoinError::AlreadyJoined { .. }), "{err}");
        let text = err.to_string();
        assert!(text.starts_with("already joined"), "{text}");
        assert!(text.contains(&enrollment.agent_id.to_string()), "{text}");
        // Untouched.
        let back = AgentIdentity::load(&opts.data_dir.identity()).expect("load");
        assert_eq!(back.cert_pem(), identity.cert_pem());

        // A record without an identity (a damaged directory) is refused too.
        std::fs::remove_file(opts.data_dir.identity()).expect("rm");
        let err = join(&opts).await.expect_err("record left");
        assert!(matches!(err, JoinError::AlreadyJoined { .. }), "{err}");
    }

    #[test]
    fn verifies_the_ca_pin_and_the_spiffe_id() {
        let ca = ClusterCa::generate("test").expect("ca");
        let other = ClusterCa::generate("test").expect("other ca");
        let token = JoinToken::new(&ca.fingerprint(), [1; 16]);
        let id = AgentId::new_v4();
        let (key, csr) = pki::generate_key_and_csr().expect("csr");
        let cert = ca
            .sign_agent_csr(&csr, "test", id.0, Duration::from_secs(60))
            .expect("sign");

        verify(&token, id, "test", cert.clone(), key.clone(), ca.cert_pem()).expect("valid");

        let err = verify(
            &token,
            id,
            "test",
            cert.clone(),
            key.clone(),
            other.cert_pem(),
        )
        .expect_err("other CA");
        assert!(err.to_string().contains("the join token pins"), "{err}");

        let err = verify(
            &token,
            AgentId::new_v4(),
            "test",
            cert.clone(),
            key.clone(),
            ca.cert_pem(),
        )
        .expect_err("other id");
        assert!(
            err.to_string().contains("expected spiffe://test/agent/"),
            "{err}"
        );

        let (other_key, _) = pki::generate_key_and_csr().expect("key");
        let err =
            verify(&token, id, "test", cert, other_key, ca.cert_pem()).expect_err("other key");
        assert!(err.to_string().contains("not usable with our key"), "{err}");
    }
}
