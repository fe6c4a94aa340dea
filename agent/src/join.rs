//! Enrolment: `helix-agent join`.
//!
//! The agent generates its key and a CSR locally (the key never leaves the host),
//! connects without a client certificate, trusting the coordinator only through the CA
//! hash its join token carries, sends `Join` and stores what comes back: the
//! certificate with its key (`identity.pem`), the CA (`ca.pem`) and `agent.json`.
//!
//! With several coordinators, the addresses are tried in turn while the failures are
//! ones another coordinator may not have (unreachable, no leader yet); a refusal or
//! an untrusted certificate ends the join (the coordinators share the cluster's
//! store and CA, so another would refuse too, and a failed CA pin needs a person). A standby answers `Redirect`: the join follows it to the leader (at most
//! [`MAX_REDIRECTS`] hops) and enrols there. The addresses known at the end (the
//! ones given and the ones a standby listed) go to `coordinators.json`, so `run`
//! knows them before the leader lists them.

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
use tracing::{debug, info, warn};

use crate::coordinators::{
    check_address, valid_addresses, Round, HANDSHAKE_PATIENCE, MAX_REDIRECTS,
};
use crate::datadir::{DataDir, DataDirError, Enrollment};
use crate::identity::{AgentIdentity, IdentityError};

/// How long the coordinator may take to answer a join request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the close to reach the coordinator before exiting.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// What `join` needs.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// The coordinators, `HOST:PORT` each, tried in order until one answers; a
    /// standby's `Redirect` leads to the leader.
    pub coordinators: Vec<String>,
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
    /// No coordinator address was given.
    #[error("no coordinator to enrol with: give its address, --coordinator HOST:PORT")]
    NoCoordinator,
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
    /// A standby answered while no coordinator leads (an election is under way).
    #[error("the coordinator at {addr} is a standby and no coordinator leads the cluster right now (an election is under way); try again in a few seconds")]
    NoLeader { addr: String },
    /// Standbys kept naming other coordinators as the leader.
    #[error("followed {MAX_REDIRECTS} redirects without reaching the leader (the last one, from {addr}, named {leader}); the leader is changing: try again in a few seconds")]
    TooManyRedirects { addr: String, leader: String },
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

impl JoinError {
    /// Whether the join may succeed when tried again, or at another coordinator (one
    /// is down or restarting, the network dropped, the leader is changing), as
    /// opposed to a refusal.
    pub fn is_transient(&self) -> bool {
        match self {
            JoinError::Connect(ConnectError::BadAddress(_)) => false,
            JoinError::Connect(_)
            | JoinError::Stream(_)
            | JoinError::Protocol(_)
            | JoinError::NoLeader { .. }
            | JoinError::TooManyRedirects { .. } => true,
            JoinError::Rejected { code, .. } => *code == RejectCode::Internal,
            _ => false,
        }
    }
}

/// What one coordinator answered to `Join`.
#[derive(Debug)]
enum Reply {
    Joined {
        agent_id: AgentId,
        cluster: String,
        cert_pem: String,
        ca_pem: String,
    },
    Redirect {
        leader: Option<String>,
        coordinators: Vec<String>,
    },
}

/// Enrol this host and store its identity; returns what was recorded in `agent.json`
/// (with the coordinator that enrolled it).
pub async fn join(opts: &JoinOptions) -> Result<Enrollment, JoinError> {
    refuse_if_joined(&opts.data_dir)?;
    helix_protocol::identity::validate_admin_name(&opts.name).map_err(JoinError::InvalidName)?;
    if opts.coordinators.is_empty() {
        return Err(JoinError::NoCoordinator);
    }

    let (key_pem, csr_der) = pki::generate_key_and_csr()?;
    let mut round = Round::new(opts.coordinators.clone());
    // What standbys listed, for `coordinators.json`.
    let mut listed: Vec<String> = Vec::new();
    let mut failure = None;
    while let Some(addr) = round.next() {
        let patience = (!round.is_done()).then_some(HANDSHAKE_PATIENCE);
        let e = match join_at(&addr, patience, opts, csr_der.clone()).await {
            Ok(Reply::Joined {
                agent_id,
                cluster,
                cert_pem,
                ca_pem,
            }) => {
                let identity = verify(&opts.token, agent_id, &cluster, cert_pem, key_pem, &ca_pem)?;
                let enrollment = Enrollment {
                    agent_id,
                    cluster,
                    coordinator: addr,
                    name: opts.name.clone(),
                };
                let mut known = opts.coordinators.clone();
                known.extend(listed);
                store(&opts.data_dir, &identity, &ca_pem, &enrollment, known)?;
                return Ok(enrollment);
            }
            Ok(Reply::Redirect {
                leader,
                coordinators,
            }) => {
                let from = format!("the coordinator at {addr}");
                if !coordinators.is_empty() {
                    listed = valid_addresses(coordinators, &from);
                }
                match leader {
                    None => JoinError::NoLeader { addr },
                    Some(leader) => match check_address(&leader) {
                        Err(e) => JoinError::Protocol(format!(
                            "{from} is a standby and names an invalid leader address: {e}"
                        )),
                        Ok(()) if round.follow(&leader) => {
                            info!("coordinator {addr} is a standby; the leader is {leader}");
                            continue;
                        }
                        Ok(()) => JoinError::TooManyRedirects { addr, leader },
                    },
                }
            }
            Err(e) => e,
        };
        if !e.is_transient() {
            return Err(e);
        }
        if !round.is_done() {
            warn!("{e}; trying the next coordinator");
        }
        failure = Some(e);
    }
    Err(failure.unwrap_or(JoinError::NoCoordinator))
}

/// Connect to `addr`, trusting it through the token's CA pin (the handshake bounded by
/// `patience`, if given), send `Join` and read the reply.
async fn join_at(
    addr: &str,
    patience: Option<Duration>,
    opts: &JoinOptions,
    csr_der: Vec<u8>,
) -> Result<Reply, JoinError> {
    let (tls, pinned) = tls::join_client_config(&opts.token.ca_hash)?;
    let quic = tls::quinn_client_config(tls, tls::DEFAULT_IDLE_TIMEOUT, tls::DEFAULT_KEEP_ALIVE)?;

    let (sock, server_name) = connect::resolve(addr).await?;
    let endpoint = connect::client_endpoint(sock)?;
    let connecting = endpoint
        .connect_with(quic, sock, &server_name)
        .map_err(|source| ConnectError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    let connected = match patience {
        None => connecting.await,
        Some(limit) => match tokio::time::timeout(limit, connecting).await {
            Ok(connected) => connected,
            Err(_) => {
                return Err(ConnectError::Handshake {
                    addr: addr.to_string(),
                    reason: format!("no handshake within {:.1}s", limit.as_secs_f64()),
                }
                .into())
            }
        },
    };
    let conn = match connected {
        Ok(conn) => conn,
        Err(e) => {
            // The verifier's own sentence, not rustls' debug text around it.
            return Err(match pinned.rejection() {
                Some(reason) => JoinError::Untrusted {
                    addr: addr.to_string(),
                    reason,
                },
                None => ConnectError::Handshake {
                    addr: addr.to_string(),
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
    result
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

/// Send `Join` and read the reply: the enrolment, or a standby's redirect.
async fn exchange(
    conn: &quinn::Connection,
    opts: &JoinOptions,
    csr_der: Vec<u8>,
) -> Result<Reply, JoinError> {
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
        } => Ok(Reply::Joined {
            agent_id,
            cluster,
            cert_pem,
            ca_pem,
        }),
        CoordinatorToAgent::Redirect {
            leader,
            coordinators,
        } => Ok(Reply::Redirect {
            leader,
            coordinators,
        }),
        CoordinatorToAgent::Rejected { code, reason } => Err(JoinError::Rejected { code, reason }),
        other => Err(JoinError::Protocol(format!(
            "expected Joined, Redirect or Rejected, got {}",
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
/// half-way leaves no `identity.pem` and can simply be run again. `known` (the
/// coordinators given and listed) goes to `coordinators.json` when it names any
/// besides the one that enrolled the agent; failing to write it is only logged:
/// it is a hint for `run`, and the enrolment already used the token.
fn store(
    dir: &DataDir,
    identity: &AgentIdentity,
    ca_pem: &str,
    enrollment: &Enrollment,
    known: Vec<String>,
) -> Result<(), JoinError> {
    dir.create()?;
    dir.save_ca(ca_pem)?;
    let known = valid_addresses(known, "the join");
    if known.iter().any(|a| *a != enrollment.coordinator) {
        if let Err(e) = dir.save_coordinators(&known) {
            warn!("cannot remember the cluster's coordinators: {e}");
        }
    }
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
            coordinators: vec!["127.0.0.1:9".into()],
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
            coordinator: opts.coordinators[0].clone(),
            name: "node-1".into(),
        };
        store(
            &opts.data_dir,
            &identity,
            ca.cert_pem(),
            &enrollment,
            Vec::new(),
        )
        .expect("store");

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

    /// Joins `coordinators` into a fresh data dir under `root`.
    async fn join_through(
        root: &std::path::Path,
        ca: &ClusterCa,
        coordinators: Vec<String>,
    ) -> (DataDir, Result<Enrollment, JoinError>) {
        let dir = DataDir::new(root.join(format!("data-{}", AgentId::new_v4())));
        let opts = JoinOptions {
            coordinators,
            token: JoinToken::new(&ca.fingerprint(), [7; 16]),
            data_dir: dir.clone(),
            name: "node-1".into(),
        };
        let joined = tokio::time::timeout(Duration::from_secs(20), join(&opts))
            .await
            .expect("the join finishes");
        (dir, joined)
    }

    #[tokio::test]
    async fn a_standby_sends_the_join_on_to_the_leader() {
        use crate::fake_coordinator::{FakeCoordinator, Script};

        let ca = ClusterCa::generate("test").expect("ca");
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut leader = FakeCoordinator::bind(&ca);
        let mut standby = FakeCoordinator::bind(&ca);
        let mut electing = FakeCoordinator::bind(&ca);
        leader.serve(
            &ca,
            Script::Leader {
                coordinators: Vec::new(),
            },
        );
        let listed = vec![standby.addr(), leader.addr(), "c.example:7443".to_string()];
        standby.serve(
            &ca,
            Script::Standby {
                leader: Some(leader.addr()),
                coordinators: listed.clone(),
            },
        );
        electing.serve(
            &ca,
            Script::Standby {
                leader: None,
                coordinators: Vec::new(),
            },
        );

        // Given only the standby: enrolled by the leader, and every coordinator the
        // standby listed is remembered for `run`.
        let (dir, joined) = join_through(tmp.path(), &ca, vec![standby.addr()]).await;
        let enrollment = joined.expect("joined through the leader");
        assert_eq!(enrollment.coordinator, leader.addr());
        assert_eq!(standby.seen(), ["Join"]);
        assert_eq!(leader.seen(), ["Join"]);
        assert!(dir.is_joined());
        assert_eq!(dir.load_enrollment().expect("record"), enrollment);
        assert_eq!(dir.load_coordinators().expect("learned"), listed);

        // No leader at the first address: the next one is tried.
        let (dir, joined) =
            join_through(tmp.path(), &ca, vec![electing.addr(), leader.addr()]).await;
        assert_eq!(joined.expect("joined").coordinator, leader.addr());
        assert_eq!(
            dir.load_coordinators().expect("the addresses given"),
            [electing.addr(), leader.addr()]
        );
        assert_eq!(leader.seen(), ["Join", "Join"]);

        // No leader anywhere: a transient failure (`run` tries again), nothing stored.
        let (dir, joined) = join_through(tmp.path(), &ca, vec![electing.addr()]).await;
        let err = joined.expect_err("no leader");
        assert!(matches!(err, JoinError::NoLeader { .. }), "{err}");
        assert!(err.is_transient());
        assert!(
            err.to_string().contains("an election is under way"),
            "{err}"
        );
        assert!(!dir.is_joined());

        leader.stop().await;
        standby.stop().await;
        electing.stop().await;
    }

    #[tokio::test]
    async fn standbys_naming_each_other_end_the_join_after_a_few_hops() {
        use crate::fake_coordinator::{FakeCoordinator, Script};

        let ca = ClusterCa::generate("test").expect("ca");
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut a = FakeCoordinator::bind(&ca);
        let mut b = FakeCoordinator::bind(&ca);
        let (a_addr, b_addr) = (a.addr(), b.addr());
        a.serve(
            &ca,
            Script::Standby {
                leader: Some(b_addr.clone()),
                coordinators: Vec::new(),
            },
        );
        b.serve(
            &ca,
            Script::Standby {
                leader: Some(a_addr.clone()),
                coordinators: Vec::new(),
            },
        );
        let (dir, joined) = join_through(tmp.path(), &ca, vec![a_addr]).await;
        let err = joined.expect_err("no leader reached");
        assert!(matches!(err, JoinError::TooManyRedirects { .. }), "{err}");
        assert!(err.is_transient());
        // The first try and MAX_REDIRECTS hops.
        assert_eq!(a.seen().len() + b.seen().len(), 1 + MAX_REDIRECTS as usize);
        assert!(!dir.is_joined());
        a.stop().await;
        b.stop().await;
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
