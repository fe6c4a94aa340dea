//! The admin protocol: one request per bidirectional stream, after a `Hello` on the
//! connection's first stream.

use std::sync::Arc;
use std::time::Duration;

use helix_protocol::wire::{close, AdminRequest, AdminResponse, RejectCode, PROTOCOL_VERSION};
use helix_protocol::{AgentAction, AgentId, AgentState};
use helix_transport::framed;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::agent_session::version_mismatch;
use crate::builds;
use crate::clock::now;
use crate::server::{first_frame, garbage_reason, refuse, FirstFrame, Shared};
use crate::store::{StoreError, TokenRecord};
use helix_protocol::JoinToken;

/// Longest join-token lifetime: a token is a bearer secret, so it must not live for
/// ever. A week covers provisioning runs; make a new one after.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long one admin request may take to arrive on its stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) async fn serve(
    conn: quinn::Connection,
    name: String,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let span = tracing::info_span!("admin", admin = %name, remote = %conn.remote_address());
    serve_inner(conn, shared, cancel).instrument(span).await;
}

async fn serve_inner(conn: quinn::Connection, shared: Arc<Shared>, cancel: CancellationToken) {
    let (mut send, _recv, frame) = match first_frame(&conn).await {
        Ok(x) => x,
        Err(e) => {
            info!("admin connection ended before Hello: {e}");
            conn.close(close::PROTOCOL_ERROR.into(), b"no hello");
            return;
        }
    };
    let refusal = match frame {
        FirstFrame::Admin(AdminRequest::Hello {
            protocol_version, ..
        }) if protocol_version == PROTOCOL_VERSION => None,
        FirstFrame::Admin(AdminRequest::Hello {
            protocol_version, ..
        }) => Some((
            RejectCode::VersionMismatch,
            version_mismatch("admin client", protocol_version),
            close::VERSION_MISMATCH,
        )),
        FirstFrame::Admin(_) => Some((
            RejectCode::BadRequest,
            "the first request of an admin connection must be Hello".into(),
            close::PROTOCOL_ERROR,
        )),
        FirstFrame::Agent(_) => Some((
            RejectCode::WrongRole,
            "an admin certificate can only speak the admin protocol, not the agent protocol".into(),
            close::UNAUTHORIZED,
        )),
        FirstFrame::Garbage(e) => Some((
            RejectCode::BadRequest,
            garbage_reason(&e),
            close::PROTOCOL_ERROR,
        )),
    };
    if let Some((code, reason, close_code)) = refusal {
        info!("refused: {reason}");
        refuse(&mut send, code, &reason).await;
        conn.close(close_code.into(), b"refused");
        return;
    }
    let welcome = AdminResponse::Welcome {
        protocol_version: PROTOCOL_VERSION,
        server_version: env!("CARGO_PKG_VERSION").to_string(),
        cluster: shared.cluster.clone(),
    };
    if framed::write_frame(&mut send, &welcome).await.is_err() {
        return;
    }
    let _ = send.finish();

    let mut requests = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
            stream = conn.accept_bi() => {
                let Ok((send, recv)) = stream else { break };
                requests.spawn(handle_stream(send, recv, shared.clone()));
            }
        }
    }
    requests.abort_all();
    while requests.join_next().await.is_some() {}
}

async fn handle_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: Arc<Shared>,
) {
    let request = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        framed::read_frame::<AdminRequest>(&mut recv),
    )
    .await
    {
        Ok(Ok(Some(req))) => req,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            refuse(
                &mut send,
                RejectCode::BadRequest,
                &format!("malformed admin request: {e}"),
            )
            .await;
            return;
        }
        Err(_) => return,
    };
    if let AdminRequest::UploadContext { digest, size } = request {
        let response = builds::upload_context(&shared, &mut recv, &digest, size).await;
        if framed::write_frame(&mut send, &response).await.is_ok() {
            let _ = send.finish();
        }
        return;
    }
    if let AdminRequest::BuildLogs {
        build,
        platform,
        follow,
    } = request
    {
        if builds::logs(&shared, &mut send, build, platform, follow)
            .await
            .is_ok()
        {
            let _ = send.finish();
        }
        return;
    }
    let response = handle(request, &shared).await;
    if framed::write_frame(&mut send, &response).await.is_ok() {
        let _ = send.finish();
    }
}

fn error(code: RejectCode, message: impl Into<String>) -> AdminResponse {
    AdminResponse::Error {
        code,
        message: message.into(),
    }
}

fn store_error(e: StoreError) -> AdminResponse {
    match e {
        StoreError::NoSuchAgent(id) => {
            error(RejectCode::NotFound, format!("no agent {id} is enrolled"))
        }
        other => {
            warn!("store error: {other}");
            error(
                RejectCode::Internal,
                format!("the coordinator's store failed: {other}"),
            )
        }
    }
}

async fn handle(request: AdminRequest, shared: &Arc<Shared>) -> AdminResponse {
    match request {
        AdminRequest::Hello { .. } => error(
            RejectCode::BadRequest,
            "Hello was already received on this connection",
        ),
        AdminRequest::ClusterStatus => crate::leader::cluster_status(shared).await,
        AdminRequest::ListAgents => match shared.store.agents().await {
            Ok(records) => {
                let snapshot = shared.engine.snapshot().await;
                AdminResponse::Agents(
                    records
                        .iter()
                        .map(|r| {
                            let live = snapshot.agents.iter().find(|a| a.agent == r.id);
                            let connected = shared.connected(r.id);
                            let mut info = r.info(connected, live.map(|a| a.used).unwrap_or(0));
                            // An agent draining on its own (SIGTERM) shows as draining
                            // while it is connected; its stored state is the operator's.
                            if connected
                                && info.state == AgentState::Ready
                                && live.is_some_and(|a| !a.schedulable)
                            {
                                info.state = AgentState::Draining;
                            }
                            info
                        })
                        .collect(),
                )
            }
            Err(e) => store_error(e),
        },
        AdminRequest::UpdateAgent { agent, action } => update_agent(shared, agent, action).await,
        AdminRequest::CreateToken { ttl_secs, uses } => create_token(shared, ttl_secs, uses).await,
        AdminRequest::SubmitBuild { spec } => builds::submit(shared, spec).await,
        AdminRequest::ListBuilds { limit } => builds::list(shared, limit).await,
        AdminRequest::GetBuild { build } => builds::view(shared, build).await,
        AdminRequest::CancelBuild { build } => builds::cancel(shared, build).await,
        AdminRequest::WaitBuild { build } => builds::wait(shared, build).await,
        AdminRequest::HasContext { digest } => builds::has_context(shared, &digest).await,
        AdminRequest::ListCache => builds::cache_list(shared).await,
        AdminRequest::PruneCache { older_than_secs } => {
            builds::cache_prune(shared, older_than_secs).await
        }
        AdminRequest::UploadContext { .. } => error(RejectCode::BadRequest, "uploads are streamed"),
        AdminRequest::BuildLogs { .. } => {
            error(RejectCode::BadRequest, "log requests are streamed")
        }
    }
}

async fn update_agent(shared: &Arc<Shared>, agent: AgentId, action: AgentAction) -> AdminResponse {
    let current = match shared.store.agent(agent).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return error(
                RejectCode::NotFound,
                format!("no agent {agent} is enrolled"),
            )
        }
        Err(e) => return store_error(e),
    };
    if current.state == AgentState::Revoked && action != AgentAction::Revoke {
        return error(
            RejectCode::Conflict,
            format!("agent {agent} is revoked; enrol the machine again instead"),
        );
    }
    let next = match action {
        AgentAction::Cordon => AgentState::Cordoned,
        AgentAction::Uncordon => AgentState::Ready,
        AgentAction::Drain => AgentState::Draining,
        AgentAction::Revoke => AgentState::Revoked,
    };
    let updated = match shared
        .store
        .update_agent(agent, move |r| r.state = next)
        .await
    {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    info!(%agent, state = %next, "agent updated");
    let _ = shared
        .engine
        .input(crate::scheduler::Input::AgentSchedulable {
            agent,
            schedulable: next.is_schedulable(),
        })
        .await;
    if next == AgentState::Revoked {
        // The store says revoked before the session is cut, so a reconnect is refused.
        let handle = shared
            .sessions
            .lock()
            .expect("sessions lock poisoned")
            .remove(&agent);
        if let Some(h) = handle {
            h.conn.close(close::REVOKED.into(), b"agent revoked");
        }
    }
    let running = shared
        .engine
        .holding()
        .await
        .get(&agent)
        .copied()
        .unwrap_or(0);
    AdminResponse::Agent(updated.info(shared.connected(agent), running))
}

async fn create_token(shared: &Arc<Shared>, ttl_secs: u64, uses: u32) -> AdminResponse {
    if ttl_secs == 0 || ttl_secs > MAX_TOKEN_TTL.as_secs() {
        return error(
            RejectCode::BadRequest,
            format!(
                "--ttl must be between 1s and {}",
                humantime::format_duration(MAX_TOKEN_TTL)
            ),
        );
    }
    if uses == 0 {
        return error(RejectCode::BadRequest, "--uses must be at least 1");
    }
    let token = JoinToken::new(&shared.ca.fingerprint(), rand::random());
    let created_at = now();
    let expires_at = created_at.saturating_add(Duration::from_secs(ttl_secs));
    let record = TokenRecord {
        created_at,
        expires_at,
        uses_left: uses,
    };
    let hash = token.secret_hash();
    match shared.store.put_token(hash, &record).await {
        Ok(()) => {
            info!(uses, ttl_secs, "join token created");
            AdminResponse::Token {
                token: token.to_string(),
                expires_at,
                uses,
            }
        }
        Err(e) => store_error(e),
    }
}
