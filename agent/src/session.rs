//! One connection to the coordinator: connect with mutual TLS, say `Hello` (listing
//! the jobs the agent holds), then serve the control stream until the connection ends
//! or a shutdown is requested: take assignments, cancels and acks, report what the
//! jobs do, ship each job's log on its own stream, renew the certificate when due.
//!
//! A standby coordinator answers `Hello` with `Redirect` instead of `Welcome`; the
//! session ends with [`SessionEnd::Redirect`] and the connection loop dials the
//! leader. The coordinator that welcomed the agent is recorded as the leader, and the
//! leader's `Coordinators` lists replace the learned addresses ([`Coordinators`]).
//!
//! The jobs themselves belong to [`Jobs`], not to the session: they keep running
//! while the agent reconnects, and the next session reports them. While a session is
//! up its connection is in the [`CurrentConnection`] slot, where jobs open their build
//! context downloads. A draining agent says `Draining` on every session, right after
//! `Welcome` (or as soon as the drain starts).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use helix_protocol::wire::{close, AgentToCoordinator, CoordinatorToAgent, RejectCode};
use helix_protocol::AgentId;
use helix_transport::connect::{self, describe_close, ConnectError};
use helix_transport::framed::{self, StreamError};
use helix_transport::tls;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::context::CurrentConnection;
use crate::coordinators::{check_address, Coordinators};
use crate::identity::AgentIdentity;
use crate::joblog::{ship_over, JobLog};
use crate::jobs::{AssignReply, Jobs, Notice};
use crate::join::variant_name;
use crate::renewal::{renewal_deadline, retry_delay, PendingRenewal};
use crate::results::JobKey;
use crate::run::{rfc3339, LiveSettings, Observer, RunError};
use crate::service::Phase;

/// How long the coordinator may take to answer `Hello`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the coordinator may take to answer `RenewCertificate`.
const RENEW_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// The renewal deadline is re-checked against the wall clock at least this often, so
/// a suspended host or a clock step cannot make the agent miss it by much.
const RECHECK: Duration = Duration::from_secs(60);
/// How long a shutdown waits for `GoingAway` to be delivered, and then for the close
/// to reach the coordinator.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Everything a session needs that does not change between connections.
#[derive(Debug)]
pub(crate) struct SessionConfig<'a> {
    /// The known coordinators: whoever welcomes the agent becomes the leader, and
    /// what the cluster lists is learned here.
    pub(crate) coordinators: &'a Coordinators,
    pub(crate) ca_pem: &'a str,
    pub(crate) identity_path: PathBuf,
    pub(crate) idle_timeout: Duration,
    pub(crate) keep_alive: Duration,
    /// `Hello` without its `held` list, which is filled in at each connect, and with
    /// the capacity and labels [`SessionConfig::live`] replaces.
    pub(crate) hello: &'a AgentToCoordinator,
    /// The capacity and labels now; a change ends the session so that the next
    /// `Hello` carries them.
    pub(crate) live: watch::Receiver<LiveSettings>,
    pub(crate) jobs: &'a Jobs,
    /// Where the live connection is published for the jobs' context downloads.
    pub(crate) connection: &'a CurrentConnection,
    pub(crate) observer: &'a Observer,
}

impl SessionConfig<'_> {
    /// `Hello` with the jobs held right now and `settings`, which also become the
    /// job set's capacity: what the coordinator is told is what the agent admits.
    fn hello(&self, settings: &LiveSettings) -> AgentToCoordinator {
        self.jobs.set_capacity(settings.capacity);
        let mut hello = self.hello.clone();
        if let AgentToCoordinator::Hello {
            held,
            capacity,
            labels,
            ..
        } = &mut hello
        {
            *held = self.jobs.held();
            *capacity = settings.capacity;
            labels.clone_from(&settings.labels);
        }
        hello
    }
}

/// How a session ended.
#[derive(Debug)]
pub(crate) enum SessionEnd {
    /// A shutdown was requested; the coordinator was told and the connection closed.
    Shutdown,
    /// No connection, or it was lost or refused for a reason that may pass: try again.
    /// `connected_for` is how long the session was up, if it got that far.
    Lost {
        reason: String,
        connected_for: Option<Duration>,
    },
    /// Retrying cannot help.
    Fatal(RunError),
    /// The capacity or labels changed: the connection was closed so that a new
    /// session tells the coordinator.
    Reconfigured,
    /// The coordinator is a standby: dial `leader` at once, or, with `None` (no
    /// coordinator leads yet), the next known address. What it listed was learned.
    Redirect { leader: Option<String> },
}

fn lost(reason: String) -> SessionEnd {
    SessionEnd::Lost {
        reason,
        connected_for: None,
    }
}

/// Connect to `addr`, say `Hello`, serve the session; close the connection cleanly on
/// the way out. `patience` bounds the QUIC handshake (otherwise only the idle timeout
/// does).
pub(crate) async fn connect_and_serve(
    config: &SessionConfig<'_>,
    addr: &str,
    patience: Option<Duration>,
    identity: AgentIdentity,
    shutdown: &CancellationToken,
    notices: &mut mpsc::UnboundedReceiver<Notice>,
) -> SessionEnd {
    let (endpoint, conn) = tokio::select! {
        biased;
        () = shutdown.cancelled() => return SessionEnd::Shutdown,
        connected = connect(config, addr, patience, &identity) => match connected {
            Ok(x) => x,
            Err(end) => return end,
        },
    };

    let mut live = config.live.clone();
    let settings = live.borrow_and_update().clone();
    let hello = config.hello(&settings);
    let handshake = tokio::select! {
        biased;
        () = shutdown.cancelled() => None,
        result = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&conn, &hello)) => Some(result),
    };
    let end = match handshake {
        None => SessionEnd::Shutdown,
        Some(Err(_)) => lost(format!(
            "the coordinator at {addr} did not answer Hello within {}s",
            HANDSHAKE_TIMEOUT.as_secs()
        )),
        Some(Ok(Err(HandshakeError::Rejected { code, reason }))) => refused(addr, code, reason),
        Some(Ok(Err(HandshakeError::Protocol(what)))) => lost(format!(
            "the coordinator at {addr} broke the protocol: {what}"
        )),
        Some(Ok(Err(HandshakeError::Redirect {
            leader,
            coordinators,
        }))) => redirected(config.coordinators, addr, leader, coordinators),
        Some(Ok(Err(HandshakeError::Stream(e)))) => ended(&conn, addr, &e),
        Some(Ok(Ok((send, recv, agent_id)))) => {
            info!("connected to {addr} as agent {agent_id}");
            if agent_id != identity.info().agent_id {
                warn!(
                    "the coordinator calls this agent {agent_id}, but its certificate says {}",
                    identity.info().agent_id
                );
            }
            config.coordinators.set_leader(addr);
            let connected_at = Instant::now();
            let mut session = Session {
                config,
                addr,
                conn: &conn,
                send,
                identity,
                pending: None,
                deadline: OffsetDateTime::now_utc(),
                shippers: JoinSet::new(),
                reported: HashSet::new(),
                drain_sent: false,
            };
            session.schedule_renewal();
            config.connection.set(Some(conn.clone()));
            config.observer.metrics.set_connected(true);
            if !config.jobs.is_draining() {
                config.observer.phase.send_replace(Phase::Connected);
            }
            let served = match session.resume().await {
                Ok(()) => session.serve(recv, shutdown, notices, &mut live).await,
                Err(e) => ended(&conn, addr, &e),
            };
            config.observer.metrics.set_connected(false);
            config.connection.set(None);
            match served {
                SessionEnd::Lost { reason, .. } => SessionEnd::Lost {
                    reason,
                    connected_for: Some(connected_at.elapsed()),
                },
                other => other,
            }
        }
    };
    match end {
        SessionEnd::Lost { .. } => {}
        SessionEnd::Redirect { .. } => {
            // The standby closes the connection after `Redirect`; nothing to wait for.
            conn.close(close::NORMAL.into(), b"redirected");
        }
        SessionEnd::Reconfigured => {
            // Not `GoingAway`: the agent is back at once, and its jobs go on.
            conn.close(close::NORMAL.into(), b"reconfigured; reconnecting");
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, endpoint.wait_idle()).await;
        }
        SessionEnd::Shutdown | SessionEnd::Fatal(_) => {
            // Make sure the coordinator hears the close before we exit.
            conn.close(close::NORMAL.into(), b"shutting down");
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, endpoint.wait_idle()).await;
        }
    }
    end
}

/// Resolve, bind, and finish the QUIC + mutual TLS handshake.
async fn connect(
    config: &SessionConfig<'_>,
    addr: &str,
    patience: Option<Duration>,
    identity: &AgentIdentity,
) -> Result<(quinn::Endpoint, quinn::Connection), SessionEnd> {
    let tls = tls::client_config(config.ca_pem, identity.cert_pem(), identity.key_pem())
        .map_err(|e| SessionEnd::Fatal(RunError::Tls(e)))?;
    let quic = tls::quinn_client_config(tls, config.idle_timeout, config.keep_alive)
        .map_err(|e| SessionEnd::Fatal(RunError::InvalidOption(e.to_string())))?;
    // A configured address that cannot work is the operator's to fix; one the
    // cluster sent must not stop the agent, which goes on with the others.
    let unusable = |reason: String| {
        if config.coordinators.configured().iter().any(|a| a == addr) {
            SessionEnd::Fatal(RunError::InvalidOption(reason))
        } else {
            lost(reason)
        }
    };
    let (sock, server_name) = connect::resolve(addr).await.map_err(|e| match e {
        ConnectError::BadAddress(_) => unusable(e.to_string()),
        other => lost(other.to_string()),
    })?;
    let endpoint = connect::client_endpoint(sock).map_err(|e| lost(e.to_string()))?;
    debug!(%sock, "connecting");
    let connecting = endpoint
        .connect_with(quic, sock, &server_name)
        .map_err(|e| match e {
            quinn::ConnectError::InvalidServerName(name) => unusable(format!(
                "invalid coordinator address {addr:?}: {name:?} is not a valid server name"
            )),
            other => lost(format!("cannot connect to {addr}: {other}")),
        })?;
    let connected = match patience {
        None => connecting.await,
        Some(limit) => match tokio::time::timeout(limit, connecting).await {
            Ok(connected) => connected,
            Err(_) => {
                return Err(lost(format!(
                    "cannot connect to {addr}: no handshake within {:.1}s",
                    limit.as_secs_f64()
                )))
            }
        },
    };
    match connected {
        Ok(conn) => Ok((endpoint, conn)),
        Err(e) => Err(lost(format!(
            "cannot connect to {addr}: {}",
            describe_close(&e)
        ))),
    }
}

#[derive(Debug)]
enum HandshakeError {
    Rejected {
        code: RejectCode,
        reason: String,
    },
    /// A standby's answer.
    Redirect {
        leader: Option<String>,
        coordinators: Vec<String>,
    },
    Protocol(String),
    Stream(StreamError),
}

impl From<StreamError> for HandshakeError {
    fn from(e: StreamError) -> Self {
        HandshakeError::Stream(e)
    }
}

/// Open the control stream, send `Hello`, read `Welcome` (or `Rejected`, or a
/// standby's `Redirect`). The TLS handshake can succeed before the coordinator has
/// looked at our certificate, so only this application reply says the session is
/// open.
async fn handshake(
    conn: &quinn::Connection,
    hello: &AgentToCoordinator,
) -> Result<(quinn::SendStream, quinn::RecvStream, AgentId), HandshakeError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(StreamError::Connection)?;
    framed::write_frame(&mut send, hello).await?;
    match framed::read_frame::<CoordinatorToAgent>(&mut recv).await? {
        Some(CoordinatorToAgent::Welcome {
            protocol_version,
            coordinator_version,
            agent_id,
        }) => {
            debug!(protocol_version, %coordinator_version, "welcome");
            Ok((send, recv, agent_id))
        }
        Some(CoordinatorToAgent::Rejected { code, reason }) => {
            Err(HandshakeError::Rejected { code, reason })
        }
        Some(CoordinatorToAgent::Redirect {
            leader,
            coordinators,
        }) => Err(HandshakeError::Redirect {
            leader,
            coordinators,
        }),
        Some(other) => Err(HandshakeError::Protocol(format!(
            "expected Welcome, Redirect or Rejected, got {}",
            variant_name(&other)
        ))),
        None => Err(StreamError::Closed.into()),
    }
}

/// A standby at `addr` answered `Redirect`: learn the coordinators it listed and
/// check the leader's address (one that cannot be dialed is a broken protocol, not a
/// leader).
fn redirected(
    coordinators: &Coordinators,
    addr: &str,
    leader: Option<String>,
    listed: Vec<String>,
) -> SessionEnd {
    coordinators.learn(listed, &format!("the standby at {addr}"));
    match leader {
        Some(leader) => match check_address(&leader) {
            Ok(()) => SessionEnd::Redirect {
                leader: Some(leader),
            },
            Err(e) => lost(format!(
                "the coordinator at {addr} broke the protocol: it is a standby and names an invalid leader address: {e}"
            )),
        },
        None => SessionEnd::Redirect { leader: None },
    }
}

/// Whether a refusal is final: retrying cannot change a revocation, a protocol
/// version, or a certificate that is not an agent of this cluster.
fn is_final(code: RejectCode) -> bool {
    matches!(
        code,
        RejectCode::Revoked | RejectCode::VersionMismatch | RejectCode::WrongRole
    )
}

fn refused(addr: &str, code: RejectCode, reason: String) -> SessionEnd {
    if is_final(code) {
        SessionEnd::Fatal(RunError::Refused { code, reason })
    } else {
        lost(format!(
            "the coordinator at {addr} refused the session ({code:?}): {reason}"
        ))
    }
}

/// How a connection that failed with `e` ended: the close code decides whether it is
/// final (revoked, version mismatch, unauthorized) or worth another try.
fn ended(conn: &quinn::Connection, addr: &str, e: &StreamError) -> SessionEnd {
    let Some(reason) = conn.close_reason() else {
        return lost(format!("the session with {addr} failed: {e}"));
    };
    if let quinn::ConnectionError::ApplicationClosed(c) = &reason {
        let code = match u32::try_from(c.error_code.into_inner()) {
            Ok(close::REVOKED) => Some(RejectCode::Revoked),
            Ok(close::VERSION_MISMATCH) => Some(RejectCode::VersionMismatch),
            Ok(close::UNAUTHORIZED) => Some(RejectCode::WrongRole),
            _ => None,
        };
        if let Some(code) = code {
            let reason = match code {
                RejectCode::Revoked => {
                    "this agent has been revoked; enrol it again with a new join token".into()
                }
                _ => describe_close(&reason),
            };
            return SessionEnd::Fatal(RunError::Refused { code, reason });
        }
    }
    lost(format!(
        "connection to {addr} lost: {}",
        describe_close(&reason)
    ))
}

/// Reads the next control frame, handing the stream back with it so the read can live
/// across `select!` iterations without losing half a frame.
async fn next_frame(
    mut recv: quinn::RecvStream,
) -> (
    quinn::RecvStream,
    Result<Option<CoordinatorToAgent>, StreamError>,
) {
    let frame = framed::read_frame(&mut recv).await;
    (recv, frame)
}

/// An open session.
struct Session<'a> {
    config: &'a SessionConfig<'a>,
    /// The coordinator's address, as dialed.
    addr: &'a str,
    conn: &'a quinn::Connection,
    send: quinn::SendStream,
    identity: AgentIdentity,
    /// The new key of a renewal in flight, and when it was asked for.
    pending: Option<(PendingRenewal, Instant)>,
    /// When to start the next renewal.
    deadline: OffsetDateTime,
    /// This connection's log streams, one per job; they end with the session.
    shippers: JoinSet<()>,
    /// Results sent as `Finished` on this connection (not sent twice by it).
    reported: HashSet<JobKey>,
    /// `Draining` was sent on this connection.
    drain_sent: bool,
}

impl Session<'_> {
    /// Right after `Welcome`: send the unacknowledged results again and (re)start the
    /// log streams of the jobs held.
    async fn resume(&mut self) -> Result<(), StreamError> {
        self.send_draining().await?;
        for (key, log) in self.config.jobs.logs_to_send() {
            self.ship(key, log);
        }
        for (key, outcome) in self.config.jobs.unacked() {
            self.send_finished(key, outcome).await?;
        }
        Ok(())
    }

    async fn serve(
        &mut self,
        recv: quinn::RecvStream,
        shutdown: &CancellationToken,
        notices: &mut mpsc::UnboundedReceiver<Notice>,
        live: &mut watch::Receiver<LiveSettings>,
    ) -> SessionEnd {
        let addr = self.addr;
        let mut reading = Box::pin(next_frame(recv));
        // New capacity or labels: reconnect as soon as no build context download
        // depends on this connection.
        let mut reconfigure = false;
        loop {
            let wake = self.next_wake();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    // Results of jobs the shutdown cancelled go out before we leave.
                    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, self.flush_notices(notices)).await;
                    self.going_away().await;
                    return SessionEnd::Shutdown;
                }
                Some(notice) = notices.recv() => {
                    if let Err(e) = self.on_notice(notice).await {
                        return ended(self.conn, addr, &e);
                    }
                }
                Ok(()) = live.changed(), if !reconfigure => {
                    let settings = live.borrow().clone();
                    reconfigure = true;
                    let downloads = self.config.connection.downloads();
                    if downloads == 0 {
                        info!(
                            capacity = settings.capacity,
                            labels = ?settings.labels,
                            "new capacity or labels: reconnecting so that the coordinator learns them"
                        );
                    } else {
                        info!(
                            capacity = settings.capacity,
                            labels = ?settings.labels,
                            "new capacity or labels: reconnecting so that the coordinator learns them, once the {downloads} build context download(s) in progress end"
                        );
                    }
                }
                () = self.config.connection.downloads_done(), if reconfigure => {
                    // The results of jobs that just ended go out before the close.
                    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, self.flush_notices(notices)).await;
                    return SessionEnd::Reconfigured;
                }
                (recv, frame) = &mut reading => {
                    match frame {
                        Ok(Some(msg)) => {
                            match self.handle(msg).await {
                                Ok(Some(end)) => return end,
                                Ok(None) => {}
                                Err(e) => return ended(self.conn, addr, &e),
                            }
                            reading.set(next_frame(recv));
                        }
                        Ok(None) => {
                            return lost(format!("the coordinator at {addr} closed the control stream"));
                        }
                        Err(e) => return ended(self.conn, addr, &e),
                    }
                }
                () = tokio::time::sleep_until(wake) => {
                    if let Err(e) = self.on_timer().await {
                        return ended(self.conn, addr, &e);
                    }
                }
                Some(_) = self.shippers.join_next(), if !self.shippers.is_empty() => {}
            }
        }
    }

    /// Report what a job did.
    async fn on_notice(&mut self, notice: Notice) -> Result<(), StreamError> {
        match notice {
            Notice::Started(key) => {
                // A start noticed while disconnected may be older than the result.
                if self.config.jobs.is_running(&key) {
                    let msg = AgentToCoordinator::Started {
                        job: key.0,
                        attempt: key.1,
                    };
                    framed::write_frame(&mut self.send, &msg).await?;
                }
            }
            Notice::Finished(key) => {
                if let Some(outcome) = self.config.jobs.outcome(&key) {
                    if !self.reported.contains(&key) {
                        self.send_finished(key, outcome).await?;
                    }
                }
            }
            Notice::Draining => self.send_draining().await?,
        }
        Ok(())
    }

    /// If the agent drains, say so once on this connection, with the time its running
    /// jobs have left, so the coordinator gives it no new work.
    async fn send_draining(&mut self) -> Result<(), StreamError> {
        if self.drain_sent {
            return Ok(());
        }
        let Some(left) = self.config.jobs.drain_remaining() else {
            return Ok(());
        };
        // Whole seconds, rounded up: never promise less time than there is.
        let deadline_secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        framed::write_frame(
            &mut self.send,
            &AgentToCoordinator::Draining { deadline_secs },
        )
        .await?;
        self.drain_sent = true;
        info!(
            deadline_secs,
            "told the coordinator that this agent is draining"
        );
        Ok(())
    }

    /// Report every notice already queued.
    async fn flush_notices(
        &mut self,
        notices: &mut mpsc::UnboundedReceiver<Notice>,
    ) -> Result<(), StreamError> {
        while let Ok(notice) = notices.try_recv() {
            self.on_notice(notice).await?;
        }
        Ok(())
    }

    async fn send_finished(
        &mut self,
        key: JobKey,
        outcome: helix_protocol::wire::JobOutcome,
    ) -> Result<(), StreamError> {
        self.reported.insert(key);
        let msg = AgentToCoordinator::Finished {
            job: key.0,
            attempt: key.1,
            outcome,
        };
        framed::write_frame(&mut self.send, &msg).await
    }

    /// Send a job's log on its own stream of this connection, from offset 0.
    fn ship(&mut self, key: JobKey, log: Arc<JobLog>) {
        let conn = self.conn.clone();
        self.shippers.spawn(async move {
            if let Err(e) = ship_over(conn, log, key.0, key.1).await {
                debug!(job = %key.0, attempt = key.1, "log stream ended: {e}");
            }
        });
    }

    /// An assignment: take it (`Accepted`, and its log goes out on a new stream), or
    /// say at once why not (`Finished` with an infrastructure failure).
    async fn assign(
        &mut self,
        assignment: helix_protocol::wire::Assignment,
    ) -> Result<(), StreamError> {
        let key = (assignment.job, assignment.attempt);
        let accepted = AgentToCoordinator::Accepted {
            job: key.0,
            attempt: key.1,
        };
        match self.config.jobs.assign(assignment) {
            AssignReply::Accepted(log) => {
                framed::write_frame(&mut self.send, &accepted).await?;
                self.ship(key, log);
            }
            AssignReply::AlreadyRunning => {
                debug!(job = %key.0, attempt = key.1, "assigned a job that already runs here");
                framed::write_frame(&mut self.send, &accepted).await?;
            }
            AssignReply::AlreadyFinished(outcome) => {
                debug!(job = %key.0, attempt = key.1, "assigned a job that already finished here");
                self.send_finished(key, outcome).await?;
            }
            AssignReply::Refused(failure) => {
                // Draining: the coordinator may have sent it before it read `Draining`.
                self.send_draining().await?;
                warn!(job = %key.0, attempt = key.1, "refused a job: {}", failure.message);
                let msg = AgentToCoordinator::Finished {
                    job: key.0,
                    attempt: key.1,
                    outcome: helix_protocol::wire::JobOutcome::Failed(failure),
                };
                framed::write_frame(&mut self.send, &msg).await?;
            }
        }
        Ok(())
    }

    /// One control frame from the coordinator; `Some` ends the session.
    async fn handle(&mut self, msg: CoordinatorToAgent) -> Result<Option<SessionEnd>, StreamError> {
        match msg {
            CoordinatorToAgent::CertificateRenewed { cert_pem } => self.renewed(cert_pem),
            CoordinatorToAgent::Rejected { code, reason } => {
                if is_final(code) {
                    return Ok(Some(SessionEnd::Fatal(RunError::Refused { code, reason })));
                }
                if self.pending.take().is_some() {
                    let delay = self.retry_later();
                    warn!(
                        "the coordinator refused to renew the certificate: {reason}; retrying in {}s",
                        delay.as_secs()
                    );
                } else {
                    warn!(?code, "the coordinator rejected a request: {reason}");
                }
            }
            CoordinatorToAgent::Assign(assignment) => self.assign(*assignment).await?,
            CoordinatorToAgent::Cancel {
                job,
                attempt,
                reason,
            } => {
                if self.config.jobs.cancel(&(job, attempt)) {
                    info!(%job, attempt, %reason, "cancelling a job");
                } else {
                    info!(%job, attempt, "cancel for a job this agent is not running; ignoring it");
                }
            }
            CoordinatorToAgent::Ack { job, attempt } => {
                self.reported.remove(&(job, attempt));
                if self.config.jobs.ack(&(job, attempt)) {
                    debug!(%job, attempt, "result acknowledged");
                } else {
                    debug!(%job, attempt, "ack for a job this agent holds no result of; ignoring it");
                }
            }
            CoordinatorToAgent::Coordinators(list) => {
                self.config
                    .coordinators
                    .learn(list, &format!("the leader at {}", self.addr));
            }
            CoordinatorToAgent::Redirect {
                leader,
                coordinators,
            } => {
                // Only the answer to `Hello` should be a redirect; a leader that lost
                // its lease may still say it later: follow it like the first.
                info!("the coordinator at {} is no longer the leader", self.addr);
                return Ok(Some(redirected(
                    self.config.coordinators,
                    self.addr,
                    leader,
                    coordinators,
                )));
            }
            other @ (CoordinatorToAgent::Welcome { .. }
            | CoordinatorToAgent::Joined { .. }
            | CoordinatorToAgent::ContextFollows { .. }) => {
                warn!(
                    "unexpected {} in a session; ignoring it",
                    variant_name(&other)
                );
            }
        }
        Ok(None)
    }

    /// When the session loop should next look at the renewal: the reply timeout of a
    /// renewal in flight, or the deadline (re-checked at least every [`RECHECK`]).
    fn next_wake(&self) -> Instant {
        if let Some((_, sent_at)) = &self.pending {
            return *sent_at + RENEW_REPLY_TIMEOUT;
        }
        let until =
            Duration::try_from(self.deadline - OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO);
        Instant::now() + until.min(RECHECK)
    }

    /// The timer fired: give up on an unanswered renewal, or start one that is due.
    async fn on_timer(&mut self) -> Result<(), StreamError> {
        if let Some((_, sent_at)) = &self.pending {
            if sent_at.elapsed() >= RENEW_REPLY_TIMEOUT {
                self.pending = None;
                let delay = self.retry_later();
                warn!(
                    "the coordinator did not answer the certificate renewal within {}s; retrying in {}s",
                    RENEW_REPLY_TIMEOUT.as_secs(),
                    delay.as_secs()
                );
            }
            return Ok(());
        }
        if OffsetDateTime::now_utc() < self.deadline {
            return Ok(());
        }
        let (pending, csr_der) = match PendingRenewal::start() {
            Ok(x) => x,
            Err(e) => {
                let delay = self.retry_later();
                error!(
                    "cannot renew the certificate: {e}; retrying in {}s",
                    delay.as_secs()
                );
                return Ok(());
            }
        };
        info!(
            "renewing the certificate (valid until {})",
            rfc3339(self.identity.info().not_after)
        );
        framed::write_frame(
            &mut self.send,
            &AgentToCoordinator::RenewCertificate { csr_der },
        )
        .await?;
        self.pending = Some((pending, Instant::now()));
        Ok(())
    }

    /// `CertificateRenewed`: check it, store it with the new key, renew again later.
    fn renewed(&mut self, cert_pem: String) {
        let Some((pending, _)) = self.pending.take() else {
            warn!("the coordinator sent a certificate this agent did not ask for; ignoring it");
            return;
        };
        let now = OffsetDateTime::now_utc();
        let renewed = match pending.complete(&self.identity, self.config.ca_pem, cert_pem, now) {
            Ok(renewed) => renewed,
            Err(e) => {
                let delay = self.retry_later();
                warn!(
                    "{e}; keeping the current certificate and retrying in {}s",
                    delay.as_secs()
                );
                return;
            }
        };
        if let Err(e) = renewed.store(&self.config.identity_path) {
            let delay = self.retry_later();
            error!(
                "cannot store the renewed certificate: {e}; keeping the current one and retrying in {}s",
                delay.as_secs()
            );
            return;
        }
        info!(
            "renewed certificate, valid until {}",
            rfc3339(renewed.info().not_after)
        );
        self.identity = renewed;
        self.schedule_renewal();
    }

    fn schedule_renewal(&mut self) {
        let info = self.identity.info();
        self.deadline =
            renewal_deadline(info.not_before, info.not_after, self.identity.received_at());
        debug!(deadline = %rfc3339(self.deadline), "next certificate renewal");
    }

    /// Moves the deadline a little into the future after a failed renewal.
    fn retry_later(&mut self) -> Duration {
        let now = OffsetDateTime::now_utc();
        let delay = retry_delay(now, self.identity.info().not_after);
        self.deadline = now + delay;
        delay
    }

    /// Tell the coordinator we leave on purpose, and give it a moment to hear it (it
    /// closes the connection in reply).
    async fn going_away(&mut self) {
        info!("shutting down: telling the coordinator");
        let goodbye = AgentToCoordinator::GoingAway {
            reason: "shutting down".into(),
        };
        let said = async {
            framed::write_frame(&mut self.send, &goodbye).await?;
            let _ = self.send.finish();
            self.conn.closed().await;
            Ok::<_, StreamError>(())
        };
        match tokio::time::timeout(GOODBYE_TIMEOUT, said).await {
            Ok(Ok(())) => debug!("the coordinator closed the session"),
            Ok(Err(e)) => debug!("could not say goodbye: {e}"),
            Err(_) => debug!("the coordinator did not close the session in time"),
        }
    }
}
