//! Simulated agents: each one is a real mutual-TLS QUIC client of the coordinator
//! (its own key, CSR and certificate), all sharing one client endpoint, with a no-op
//! executor.
//!
//! The no-op executor exists only in this benchmark; the shipped agent cannot reach
//! it. It answers every `Assign` at once with `Accepted`, `Started` and `Finished`
//! with a *build failure*: a success would make the coordinator assemble an image
//! index from per-platform digests that were never pushed to any registry, and the
//! assembly (a registry round trip) is not what this benchmark measures.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use helix_protocol::codec;
use helix_protocol::wire::{AgentToCoordinator, CoordinatorToAgent, JobOutcome, PROTOCOL_VERSION};
use helix_protocol::{AgentId, FailureKind, JobFailure, JobId, JoinToken, Platform};
use helix_transport::framed;
use helix_transport::tls;

use crate::record::Recorder;

/// The name the coordinator's certificate is checked against (it is in every
/// coordinator certificate's SANs).
const SERVER_NAME: &str = "127.0.0.1";
/// Longest wait for a join reply or a `Welcome`.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// A key and CSR made ahead of joining, so key generation is not counted as join time.
#[derive(Debug)]
pub(crate) struct Keyed {
    pub(crate) name: String,
    key_pem: String,
    csr_der: Vec<u8>,
}

impl Keyed {
    pub(crate) fn generate(name: String) -> anyhow::Result<Keyed> {
        let (key_pem, csr_der) = helix_transport::pki::generate_key_and_csr()?;
        Ok(Keyed {
            name,
            key_pem,
            csr_der,
        })
    }
}

/// An enrolled simulated agent: what `helix-agent join` would have stored.
#[derive(Debug)]
pub(crate) struct Enrolled {
    pub(crate) agent_id: AgentId,
    key_pem: String,
    cert_pem: String,
    ca_pem: String,
}

/// Enrol with `token` on a connection without a client certificate.
pub(crate) async fn join(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    token: &str,
    keyed: Keyed,
) -> anyhow::Result<Enrolled> {
    let parsed: JoinToken = token.parse()?;
    let (config, _pinned) = tls::join_client_config(&parsed.ca_hash)?;
    let quic =
        tls::quinn_client_config(config, tls::DEFAULT_IDLE_TIMEOUT, tls::DEFAULT_KEEP_ALIVE)?;
    let conn = endpoint
        .connect_with(quic, addr, SERVER_NAME)?
        .await
        .context("join handshake")?;
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        let join = AgentToCoordinator::Join {
            protocol_version: PROTOCOL_VERSION,
            token: token.to_string(),
            name: keyed.name.clone(),
            csr_der: keyed.csr_der,
        };
        framed::write_frame(&mut send, &join).await?;
        let _ = send.finish();
        framed::read_frame::<CoordinatorToAgent>(&mut recv).await
    };
    let reply = tokio::time::timeout(REPLY_TIMEOUT, exchange)
        .await
        .context("no join reply in time")?;
    conn.close(0u32.into(), b"joined");
    match reply? {
        Some(CoordinatorToAgent::Joined {
            agent_id,
            cert_pem,
            ca_pem,
            ..
        }) => Ok(Enrolled {
            agent_id,
            key_pem: keyed.key_pem,
            cert_pem,
            ca_pem,
        }),
        Some(CoordinatorToAgent::Rejected { code, reason }) => {
            bail!("join of {} refused ({code:?}): {reason}", keyed.name)
        }
        other => bail!("unexpected join reply: {other:?}"),
    }
}

/// A connected agent session: the control stream after `Welcome`.
#[derive(Debug)]
pub(crate) struct Session {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

/// Connect with the agent's certificate, say `Hello`, wait for `Welcome`.
pub(crate) async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    agent: &Enrolled,
    platform: &Platform,
    capacity: u32,
) -> anyhow::Result<Session> {
    let config = tls::client_config(&agent.ca_pem, &agent.cert_pem, &agent.key_pem)?;
    let quic =
        tls::quinn_client_config(config, tls::DEFAULT_IDLE_TIMEOUT, tls::DEFAULT_KEEP_ALIVE)?;
    let conn = endpoint
        .connect_with(quic, addr, SERVER_NAME)?
        .await
        .context("mTLS handshake")?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = AgentToCoordinator::Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: "bench".into(),
        platforms: vec![platform.clone()],
        capacity,
        labels: Default::default(),
        builder: "bench".into(),
        held: Vec::new(),
    };
    framed::write_frame(&mut send, &hello).await?;
    let reply = tokio::time::timeout(
        REPLY_TIMEOUT,
        framed::read_frame::<CoordinatorToAgent>(&mut recv),
    )
    .await
    .context("no Welcome in time")??;
    match reply {
        Some(CoordinatorToAgent::Welcome { agent_id, .. }) if agent_id == agent.agent_id => {
            Ok(Session { conn, send, recv })
        }
        other => bail!("expected Welcome for {}, got {other:?}", agent.agent_id),
    }
}

impl Session {
    /// The no-op executor, until the connection ends.
    pub(crate) async fn run(mut self, rec: Arc<Recorder>) {
        // Jobs reported Finished and not yet acknowledged, with their build.
        let mut unacked: HashMap<JobId, helix_protocol::BuildId> = HashMap::new();
        loop {
            let msg = match framed::read_frame::<CoordinatorToAgent>(&mut self.recv).await {
                Ok(Some(msg)) => msg,
                Ok(None) | Err(_) => {
                    rec.sessions_lost.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            match msg {
                CoordinatorToAgent::Assign(a) => {
                    rec.assigned(a.build, Instant::now());
                    match no_op_reports(a.job, a.attempt) {
                        Ok(bytes) => {
                            if self.send.write_all(&bytes).await.is_err() {
                                rec.sessions_lost.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                        }
                        Err(_) => {
                            rec.unexpected.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                    rec.finished(a.build, Instant::now());
                    unacked.insert(a.job, a.build);
                }
                CoordinatorToAgent::Ack { job, .. } => {
                    if let Some(build) = unacked.remove(&job) {
                        rec.acked(build, Instant::now());
                    }
                }
                CoordinatorToAgent::Cancel { .. } => {
                    rec.cancels.fetch_add(1, Ordering::Relaxed);
                }
                // The cluster's coordinators, sent after `Welcome` on a shared store
                // (a real agent remembers them for failover): expected, nothing to do.
                CoordinatorToAgent::Coordinators(_) => {}
                _ => {
                    rec.unexpected.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    pub(crate) fn connection(&self) -> quinn::Connection {
        self.conn.clone()
    }
}

/// `Accepted`, `Started` and a `Finished` with a build failure, as one write.
fn no_op_reports(job: JobId, attempt: u32) -> Result<Vec<u8>, codec::FrameError> {
    let mut bytes = codec::encode(&AgentToCoordinator::Accepted { job, attempt })?;
    bytes.extend(codec::encode(&AgentToCoordinator::Started {
        job,
        attempt,
    })?);
    bytes.extend(codec::encode(&AgentToCoordinator::Finished {
        job,
        attempt,
        outcome: JobOutcome::Failed(JobFailure {
            kind: FailureKind::Build,
            message: "bench no-op executor".into(),
            exit_code: None,
        }),
    })?);
    Ok(bytes)
}
