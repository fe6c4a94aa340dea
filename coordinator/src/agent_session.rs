//! The agent protocol: enrolment on a certificate-less connection, and the long-lived
//! session of an enrolled agent on its control stream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use helix_protocol::wire::{
    close, AgentToCoordinator, CoordinatorToAgent, HeldJob, LogChunk, RejectCode, PROTOCOL_VERSION,
};
use helix_protocol::{AgentId, AgentState, Platform};
use helix_transport::framed::{self, StreamError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::clock::now;
use crate::scheduler::Input;
use crate::server::{first_frame, garbage_reason, refuse, FirstFrame, SessionHandle, Shared};
use crate::store::{AgentRecord, StoreError};
use helix_protocol::JoinToken;

/// Longest join token, agent name or label we look at; anything longer is refused
/// before parsing.
const MAX_SHORT_FIELD: usize = 256;
/// Most platforms and labels an agent may advertise.
const MAX_ADVERTISED: usize = 64;
/// Outbound messages queued for one agent. The engine never waits on a session: one
/// round can send an agent a few messages per slot (assignments, acknowledgements),
/// and a session whose queue is still full is closed (the agent reconnects).
const SESSION_QUEUE: usize = 256;

/// A connection without a client certificate: it may only join with a token.
pub(crate) async fn serve_join(conn: quinn::Connection, shared: Arc<Shared>) {
    let remote = conn.remote_address();
    let (mut send, _recv, frame) = match first_frame(&conn).await {
        Ok(x) => x,
        Err(e) => {
            info!(%remote, "anonymous connection ended before its first frame: {e}");
            conn.close(close::PROTOCOL_ERROR.into(), b"no request");
            return;
        }
    };
    let join = match frame {
        FirstFrame::Agent(AgentToCoordinator::Join {
            protocol_version,
            token,
            name,
            csr_der,
        }) => (protocol_version, token, name, csr_der),
        FirstFrame::Agent(_) => {
            let reason = "a client certificate is required for the agent protocol: enrol this agent first with `helix-agent join`";
            info!(%remote, "refused: {reason}");
            refuse(&mut send, RejectCode::Unauthenticated, reason).await;
            conn.close(close::UNAUTHORIZED.into(), b"client certificate required");
            return;
        }
        FirstFrame::Admin(_) => {
            let reason = "a client certificate is required for the admin protocol: pass the admin bundle with --admin-cert";
            info!(%remote, "refused: {reason}");
            refuse(&mut send, RejectCode::Unauthenticated, reason).await;
            conn.close(close::UNAUTHORIZED.into(), b"client certificate required");
            return;
        }
        FirstFrame::Garbage(e) => {
            let reason = garbage_reason(&e);
            info!(%remote, "refused: {reason}");
            refuse(&mut send, RejectCode::BadRequest, &reason).await;
            conn.close(close::PROTOCOL_ERROR.into(), b"protocol error");
            return;
        }
    };
    let (protocol_version, token, name, csr_der) = join;
    match enroll(&shared, protocol_version, &token, &name, &csr_der).await {
        Ok(reply) => {
            let agent_id = match &reply {
                CoordinatorToAgent::Joined { agent_id, .. } => Some(*agent_id),
                _ => None,
            };
            info!(%remote, agent = ?agent_id, %name, "agent enrolled");
            let label = crate::metrics::ResultLabel {
                result: "success".into(),
            };
            shared.metrics.enrollments.get_or_create(&label).inc();
            if framed::write_frame(&mut send, &reply).await.is_ok() {
                let _ = send.finish();
            }
            // Let the agent read the reply and close; do not hold the connection.
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
        }
        Err((code, reason)) => {
            info!(%remote, %name, "join refused: {reason}");
            let label = crate::metrics::ResultLabel {
                result: "refused".into(),
            };
            shared.metrics.enrollments.get_or_create(&label).inc();
            refuse(&mut send, code, &reason).await;
            let close_code = if code == RejectCode::VersionMismatch {
                close::VERSION_MISMATCH
            } else {
                close::UNAUTHORIZED
            };
            conn.close(close_code.into(), b"join refused");
        }
    }
}

async fn enroll(
    shared: &Arc<Shared>,
    protocol_version: u32,
    token: &str,
    name: &str,
    csr_der: &[u8],
) -> Result<CoordinatorToAgent, (RejectCode, String)> {
    if protocol_version != PROTOCOL_VERSION {
        return Err((
            RejectCode::VersionMismatch,
            version_mismatch("agent", protocol_version),
        ));
    }
    if token.len() > MAX_SHORT_FIELD {
        return Err((
            RejectCode::InvalidToken,
            "malformed join token: it is too long".into(),
        ));
    }
    let token: JoinToken =
        token
            .parse()
            .map_err(|e: helix_protocol::token::TokenFormatError| {
                (RejectCode::InvalidToken, e.to_string())
            })?;
    if token.ca_hash != shared.ca.fingerprint() {
        return Err((
            RejectCode::InvalidToken,
            "the join token was made for another cluster CA than this coordinator's".into(),
        ));
    }
    helix_protocol::identity::validate_admin_name(name)
        .map_err(|e| (RejectCode::BadRequest, format!("invalid agent --name: {e}")))?;
    let agent_id = AgentId::new_v4();
    let cert_pem = shared
        .ca
        .sign_agent_csr(
            csr_der,
            &shared.cluster,
            agent_id.0,
            shared.opts.agent_cert_ttl,
        )
        .map_err(|e| {
            (
                RejectCode::BadRequest,
                format!("the certificate request was refused: {e}"),
            )
        })?;
    let record = AgentRecord {
        id: agent_id,
        name: name.to_string(),
        state: AgentState::Ready,
        enrolled_at: now(),
        platforms: Vec::new(),
        capacity: 0,
        labels: BTreeMap::new(),
        version: String::new(),
        builder: String::new(),
        last_seen: None,
    };
    let hash = token.secret_hash();
    shared
        .store
        .enroll(hash, now(), &record)
        .await
        .map_err(|e| match e {
            StoreError::Token(refusal) => (RejectCode::InvalidToken, refusal.to_string()),
            other => {
                warn!("enrolment failed in the store: {other}");
                (
                    RejectCode::Internal,
                    "the coordinator could not record the enrolment; try again".to_string(),
                )
            }
        })?;
    Ok(CoordinatorToAgent::Joined {
        agent_id,
        cluster: shared.cluster.clone(),
        cert_pem,
        ca_pem: shared.ca.cert_pem().to_string(),
    })
}

pub(crate) fn version_mismatch(peer: &str, theirs: u32) -> String {
    format!(
        "the {peer} speaks protocol version {theirs}, this coordinator speaks {PROTOCOL_VERSION}: upgrade the older side"
    )
}

/// What an agent advertised in its `Hello`, checked.
struct Advertised {
    held: Vec<HeldJob>,
    agent_version: String,
    platforms: Vec<Platform>,
    capacity: u32,
    labels: BTreeMap<String, String>,
    builder: String,
}

fn check_hello(msg: AgentToCoordinator) -> Result<Advertised, (RejectCode, String, u32)> {
    let AgentToCoordinator::Hello {
        protocol_version,
        agent_version,
        platforms,
        capacity,
        labels,
        builder,
        held,
    } = msg
    else {
        return Err((
            RejectCode::BadRequest,
            "the first message of an agent session must be Hello".into(),
            close::PROTOCOL_ERROR,
        ));
    };
    if protocol_version != PROTOCOL_VERSION {
        return Err((
            RejectCode::VersionMismatch,
            version_mismatch("agent", protocol_version),
            close::VERSION_MISMATCH,
        ));
    }
    let bad = |reason: String| (RejectCode::BadRequest, reason, close::PROTOCOL_ERROR);
    if platforms.is_empty() || platforms.len() > MAX_ADVERTISED {
        return Err(bad(format!(
            "an agent advertises 1 to {MAX_ADVERTISED} platforms"
        )));
    }
    if labels.len() > MAX_ADVERTISED
        || labels
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > MAX_SHORT_FIELD || v.len() > MAX_SHORT_FIELD)
    {
        return Err(bad(format!(
            "an agent has at most {MAX_ADVERTISED} labels, with keys of 1 to {MAX_SHORT_FIELD} bytes"
        )));
    }
    if agent_version.len() > MAX_SHORT_FIELD || builder.len() > MAX_SHORT_FIELD {
        return Err(bad("the agent version or builder name is too long".into()));
    }
    if held.len() > 4096 {
        return Err(bad("an agent reports at most 4096 held jobs".into()));
    }
    Ok(Advertised {
        held,
        agent_version,
        platforms,
        capacity,
        labels,
        builder,
    })
}

/// An enrolled agent's connection.
pub(crate) async fn serve(
    conn: quinn::Connection,
    id: AgentId,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let span = tracing::info_span!("agent", agent = %id, remote = %conn.remote_address());
    serve_inner(conn, id, shared, cancel).instrument(span).await;
}

async fn serve_inner(
    conn: quinn::Connection,
    id: AgentId,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let (mut send, mut recv, frame) = match first_frame(&conn).await {
        Ok(x) => x,
        Err(e) => {
            info!("agent connection ended before Hello: {e}");
            conn.close(close::PROTOCOL_ERROR.into(), b"no hello");
            return;
        }
    };
    let record = match shared.store.agent(id).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            refuse(
                &mut send,
                RejectCode::WrongRole,
                "this agent is not enrolled in this cluster: join it again",
            )
            .await;
            conn.close(close::UNAUTHORIZED.into(), b"unknown agent");
            return;
        }
        Err(e) => {
            warn!("cannot read the agent registry: {e}");
            refuse(
                &mut send,
                RejectCode::Internal,
                "the coordinator cannot read its store; try again",
            )
            .await;
            conn.close(close::GOING_AWAY.into(), b"internal error");
            return;
        }
    };
    if record.state == AgentState::Revoked {
        info!("refused a revoked agent");
        refuse(
            &mut send,
            RejectCode::Revoked,
            "this agent has been revoked; enrol it again with a new join token",
        )
        .await;
        conn.close(close::REVOKED.into(), b"agent revoked");
        return;
    }
    let hello = match frame {
        FirstFrame::Agent(msg) => check_hello(msg),
        FirstFrame::Admin(_) => Err((
            RejectCode::WrongRole,
            "an agent certificate can only speak the agent protocol, not admin requests".into(),
            close::UNAUTHORIZED,
        )),
        FirstFrame::Garbage(e) => Err((
            RejectCode::BadRequest,
            garbage_reason(&e),
            close::PROTOCOL_ERROR,
        )),
    };
    let adv = match hello {
        Ok(adv) => adv,
        Err((code, reason, close_code)) => {
            info!("refused: {reason}");
            refuse(&mut send, code, &reason).await;
            conn.close(close_code.into(), b"refused");
            return;
        }
    };
    let platforms: Vec<String> = adv.platforms.iter().map(|p| p.to_string()).collect();
    let up = (
        adv.platforms.clone(),
        adv.capacity,
        adv.held.clone(),
        adv.builder.clone(),
    );
    let updated = shared
        .store
        .update_agent(id, move |r| {
            r.platforms = adv.platforms;
            r.capacity = adv.capacity;
            r.labels = adv.labels;
            r.version = adv.agent_version;
            r.builder = adv.builder;
            r.last_seen = Some(now());
        })
        .await;
    let schedulable = match &updated {
        Ok(record) => record.state.is_schedulable(),
        Err(_) => false,
    };
    if let Err(e) = updated {
        warn!("cannot record the agent's Hello: {e}");
        refuse(
            &mut send,
            RejectCode::Internal,
            "the coordinator cannot write its store; try again",
        )
        .await;
        conn.close(close::GOING_AWAY.into(), b"internal error");
        return;
    }

    let (tx, mut rx) = mpsc::channel(SESSION_QUEUE);
    let session = shared.next_session_id();
    let replaced = shared
        .sessions
        .lock()
        .expect("sessions lock poisoned")
        .insert(
            id,
            SessionHandle {
                session,
                conn: conn.clone(),
                tx,
            },
        );
    if let Some(old) = replaced {
        old.conn
            .close(close::REPLACED.into(), b"replaced by a newer connection");
    }
    info!(platforms = %platforms.join(","), "agent connected");
    if record.last_seen.is_some() {
        shared.metrics.agent_reconnects.inc();
    }

    let welcome = CoordinatorToAgent::Welcome {
        protocol_version: PROTOCOL_VERSION,
        coordinator_version: env!("CARGO_PKG_VERSION").to_string(),
        agent_id: id,
    };
    let mut written = framed::write_frame(&mut send, &welcome).await;
    let coordinators = shared.coordinators.borrow().clone();
    if written.is_ok() && !coordinators.is_empty() {
        // Tell the agent where else to go should this coordinator fail.
        written =
            framed::write_frame(&mut send, &CoordinatorToAgent::Coordinators(coordinators)).await;
    }
    let outcome = match written {
        Ok(()) => {
            let (platforms, capacity, held, builder) = up;
            let up = Input::AgentUp {
                agent: id,
                platforms,
                capacity,
                schedulable,
                held,
                builder,
            };
            if shared.engine.session(session, up).await.is_err() {
                Ok("coordinator shutting down")
            } else {
                session_loop(&conn, id, &shared, &cancel, &mut send, &mut recv, &mut rx).await
            }
        }
        Err(e) => Err(e),
    };
    match outcome {
        Ok(reason) => info!("agent session ended: {reason}"),
        Err(e) => info!("agent session lost: {e}"),
    }

    // Forget the session only if a newer connection has not replaced it.
    let current = {
        let mut sessions = shared.sessions.lock().expect("sessions lock poisoned");
        let current = sessions.get(&id).is_some_and(|h| h.session == session);
        if current {
            sessions.remove(&id);
        }
        current
    };
    if current {
        let _ = shared
            .engine
            .session(session, Input::AgentDown { agent: id })
            .await;
    }
    let _ = shared
        .store
        .update_agent(id, |r| r.last_seen = Some(now()))
        .await;
}

async fn session_loop(
    conn: &quinn::Connection,
    id: AgentId,
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    rx: &mut mpsc::Receiver<CoordinatorToAgent>,
) -> Result<&'static str, StreamError> {
    // Log streams die with the session (dropping the set aborts them).
    let mut log_streams = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => {
                conn.close(close::GOING_AWAY.into(), b"coordinator shutting down");
                return Ok("coordinator shutting down");
            }
            out = rx.recv() => {
                let Some(msg) = out else { return Ok("session closed") };
                framed::write_frame(send, &msg).await?;
            }
            frame = framed::read_frame::<AgentToCoordinator>(recv) => {
                let Some(msg) = frame? else {
                    return Ok("agent closed the control stream");
                };
                match msg {
                    AgentToCoordinator::GoingAway { reason } => {
                        // No new work for an agent on its way out, even before the
                        // connection is gone.
                        let input = Input::AgentSchedulable { agent: id, schedulable: false };
                        let _ = shared.engine.input(input).await;
                        info!(%reason, "agent going away");
                        conn.close(close::NORMAL.into(), b"bye");
                        return Ok("agent went away");
                    }
                    AgentToCoordinator::RenewCertificate { csr_der } => {
                        let reply = match shared.ca.sign_agent_csr(&csr_der, &shared.cluster, id.0, shared.opts.agent_cert_ttl) {
                            Ok(cert_pem) => {
                                info!("renewed the agent's certificate");
                                CoordinatorToAgent::CertificateRenewed { cert_pem }
                            }
                            Err(e) => CoordinatorToAgent::Rejected {
                                code: RejectCode::BadRequest,
                                reason: format!("the certificate request was refused: {e}"),
                            },
                        };
                        framed::write_frame(send, &reply).await?;
                    }
                    AgentToCoordinator::Hello { .. }
                    | AgentToCoordinator::Join { .. }
                    | AgentToCoordinator::FetchContext { .. } => {
                        let reply = CoordinatorToAgent::Rejected {
                            code: RejectCode::BadRequest,
                            reason: "Hello and Join are only valid as the first message".into(),
                        };
                        framed::write_frame(send, &reply).await?;
                    }
                    AgentToCoordinator::Draining { deadline_secs } => {
                        info!(deadline_secs, "agent is draining; no new work for it");
                        let input = Input::AgentSchedulable { agent: id, schedulable: false };
                        if shared.engine.input(input).await.is_err() {
                            return Ok("coordinator shutting down");
                        }
                    }
                    AgentToCoordinator::Accepted { job, attempt } => {
                        tracing::debug!(%job, attempt, "assignment accepted");
                    }
                    AgentToCoordinator::Started { job, attempt } => {
                        if shared.engine.input(Input::Started { agent: id, job, attempt }).await.is_err() {
                            return Ok("coordinator shutting down");
                        }
                    }
                    AgentToCoordinator::Finished { job, attempt, outcome } => {
                        if shared.engine.input(Input::Finished { agent: id, job, attempt, outcome }).await.is_err() {
                            return Ok("coordinator shutting down");
                        }
                    }
                }
            }
            Some(_) = log_streams.join_next(), if !log_streams.is_empty() => {}
            stream = conn.accept_bi() => {
                match stream {
                    Ok((send, recv)) => { log_streams.spawn(serve_context(send, recv, id, shared.clone())); }
                    Err(e) => return Err(StreamError::Connection(e)),
                }
            }
            stream = conn.accept_uni() => {
                match stream {
                    Ok(stream) => { log_streams.spawn(receive_log(stream, id, shared.clone())); }
                    Err(e) => return Err(StreamError::Connection(e)),
                }
            }
            reason = conn.closed() => {
                return Err(StreamError::Connection(reason));
            }
        }
    }
}

/// Largest log chunk we take: agents send far smaller ones.
const MAX_LOG_CHUNK: usize = 1024 * 1024;

/// Whether `agent` may stream the log of `job`'s `attempt`: the engine judges live
/// jobs; a log of a finished build may arrive after it ended (resent after a
/// reconnect), and the store says whether that was the job's last attempt.
async fn may_log(
    shared: &Shared,
    agent: AgentId,
    job: helix_protocol::JobId,
    attempt: u32,
    stop: &CancellationToken,
) -> bool {
    match shared.engine.may_log(agent, job, attempt).await {
        Some(may) => may,
        None => crate::store::retry::while_unavailable(stop, || shared.store.job(job))
            .await
            .ok()
            .flatten()
            .is_some_and(|j| j.attempt() == attempt),
    }
}

/// One job's log stream: [`LogChunk`] frames for one (job, attempt) the agent holds.
async fn receive_log(mut recv: quinn::RecvStream, agent: AgentId, shared: Arc<Shared>) {
    // Never cancelled: the session's task set aborts this task when the session (or
    // the leader term) ends.
    let stop = CancellationToken::new();
    let mut checked: Option<(helix_protocol::JobId, u32)> = None;
    loop {
        let chunk = match framed::read_frame::<LogChunk>(&mut recv).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return,
            Err(e) => {
                info!(%agent, "log stream ended: {e}");
                return;
            }
        };
        if checked != Some((chunk.job, chunk.attempt)) {
            if !may_log(&shared, agent, chunk.job, chunk.attempt, &stop).await {
                info!(%agent, job = %chunk.job, attempt = chunk.attempt, "dropped a log stream for a job the agent does not hold");
                let _ = recv.stop(0u32.into());
                return;
            }
            checked = Some((chunk.job, chunk.attempt));
        }
        if chunk.data.len() > MAX_LOG_CHUNK {
            let _ = recv.stop(0u32.into());
            return;
        }
        // While the database is away (PostgreSQL restarting) hold the stream: the
        // agent's sends wait on QUIC flow control, and nothing is lost.
        let appended = crate::store::retry::while_unavailable(&stop, || {
            shared
                .logs
                .append(chunk.job, chunk.attempt, chunk.offset, chunk.data.clone())
        })
        .await;
        if let Err(e) = appended {
            warn!("cannot write a build log: {e}");
        }
    }
}

/// An agent's context download on its own stream: `FetchContext`, then the bytes.
async fn serve_context(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    agent: AgentId,
    shared: Arc<Shared>,
) {
    let digest = match tokio::time::timeout(
        Duration::from_secs(30),
        framed::read_frame::<AgentToCoordinator>(&mut recv),
    )
    .await
    {
        Ok(Ok(Some(AgentToCoordinator::FetchContext { digest }))) => digest,
        _ => {
            refuse(
                &mut send,
                RejectCode::BadRequest,
                "a new stream from an agent must start with FetchContext",
            )
            .await;
            return;
        }
    };
    if !shared.engine.needs_context(agent, digest.clone()).await {
        info!(%agent, %digest, "refused a context download for a job the agent does not hold");
        refuse(
            &mut send,
            RejectCode::WrongRole,
            "this agent holds no job built from that context",
        )
        .await;
        return;
    }
    // From the local cache, or fetched from the shared store (a build submitted to
    // the coordinator that led before this one).
    let path = match shared.contexts.local(&digest).await {
        Ok(Some(path)) => path,
        Ok(None) => shared.contexts.path(&digest),
        Err(e) => {
            warn!(%digest, "cannot fetch a context from the store: {e}");
            refuse(
                &mut send,
                RejectCode::Internal,
                &format!("cannot fetch context {digest} from the store: {e}"),
            )
            .await;
            return;
        }
    };
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            warn!(%digest, "cannot open a stored context: {e}");
            refuse(
                &mut send,
                RejectCode::NotFound,
                &format!("context {digest} is not stored on the coordinator"),
            )
            .await;
            return;
        }
    };
    let size = match file.metadata().await {
        Ok(m) => m.len(),
        Err(e) => {
            refuse(
                &mut send,
                RejectCode::Internal,
                &format!("cannot read context {digest}: {e}"),
            )
            .await;
            return;
        }
    };
    if framed::write_frame(&mut send, &CoordinatorToAgent::ContextFollows { size })
        .await
        .is_err()
    {
        return;
    }
    match tokio::io::copy(&mut file, &mut send).await {
        Ok(n) => {
            let _ = send.finish();
            tracing::debug!(%agent, %digest, bytes = n, "context sent");
        }
        Err(e) => info!(%agent, %digest, "context download interrupted: {e}"),
    }
}
