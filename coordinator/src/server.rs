//! The coordinator's QUIC listener: accepts connections, derives each peer's role from
//! its certificate, and hands the connection to the agent or admin protocol.
//!
//! Roles come only from [`Identity::from_uri_sans`] over the verified client
//! certificate. A connection without a certificate may only join with a token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use helix_protocol::codec;
use helix_protocol::wire::{
    close, AdminRequest, AdminResponse, AgentToCoordinator, CoordinatorToAgent, RejectCode,
};
use helix_protocol::{AgentId, Identity};
use helix_transport::files::{read_public, read_secret, FileError};
use helix_transport::framed::{self, StreamError};
use helix_transport::pki::{ClusterCa, PkiError};
use helix_transport::tls::{self, TlsError};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::assembler::Assembler;
use crate::contexts::Contexts;
use crate::datadir::DataDir;
use crate::engine::EngineHandle;
use crate::logs::Logs;
use crate::scheduler::SchedulerConfig;
use crate::store::config::StoreConfig;
use crate::store::{Store, StoreError};
use crate::{admin, agent_session};

/// How a coordinator serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub data_dir: DataDir,
    pub listen: SocketAddr,
    /// Lifetime of the certificates issued to agents at join and renewal.
    pub agent_cert_ttl: Duration,
    /// A connection silent this long is dead (keep-alives are sent at a third of it).
    pub idle_timeout: Duration,
    /// Accept `file://` repositories (tests, single-host setups).
    pub allow_file_repos: bool,
    /// Registries (`host:port`) reached over plain HTTP, for assembly.
    pub insecure_registries: Vec<String>,
    /// Lease and retry policy.
    pub scheduler: SchedulerConfig,
    /// Largest build context an admin may upload, in bytes.
    pub max_context_size: u64,
    /// Where to serve /metrics, /healthz and /readyz (None: nowhere).
    pub metrics_listen: Option<SocketAddr>,
    /// The embedded redb database (default) or a PostgreSQL store shared with other
    /// coordinators of the cluster.
    pub store: crate::store::config::StoreConfig,
    /// The `host:port` other coordinators redirect agents and admins to while this
    /// one leads (default: the listen address).
    pub advertise: Option<String>,
    /// The leader lease on a shared store.
    pub lease: LeaseConfig,
}

/// How long a leader's lease lasts and how often it is renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// A lease not renewed for this long may be taken by another coordinator.
    pub ttl: Duration,
    /// How often the leader renews it (and standbys try to take it).
    pub renew: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            ttl: Duration::from_secs(10),
            renew: Duration::from_secs(2),
        }
    }
}

impl ServeOptions {
    pub fn new(data_dir: DataDir, listen: SocketAddr) -> ServeOptions {
        ServeOptions {
            data_dir,
            listen,
            agent_cert_ttl: Duration::from_secs(30 * 24 * 3600),
            idle_timeout: tls::DEFAULT_IDLE_TIMEOUT,
            allow_file_repos: false,
            insecure_registries: Vec::new(),
            scheduler: SchedulerConfig::default(),
            max_context_size: 2 * 1024 * 1024 * 1024,
            metrics_listen: None,
            store: crate::store::config::StoreConfig::Redb,
            advertise: None,
            lease: LeaseConfig::default(),
        }
    }
}

/// Why the coordinator could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("{0} is not initialized: run `helix-coordinator init --data-dir {0}` first")]
    NotInitialized(String),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot create {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid registry settings: {0}")]
    Registry(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A live agent session, as the rest of the coordinator reaches it.
#[derive(Debug, Clone)]
pub(crate) struct SessionHandle {
    /// Tells one connection of an agent from a newer one that replaced it.
    pub(crate) session: u64,
    pub(crate) conn: quinn::Connection,
    /// The engine's outbound messages to this agent (assignments, cancels, acks).
    pub(crate) tx: mpsc::Sender<CoordinatorToAgent>,
}

/// State shared by every connection task.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: Store,
    pub(crate) ca: Arc<ClusterCa>,
    pub(crate) cluster: String,
    pub(crate) opts: ServeOptions,
    pub(crate) sessions: Mutex<HashMap<AgentId, SessionHandle>>,
    next_session: std::sync::atomic::AtomicU64,
    pub(crate) engine: EngineHandle,
    pub(crate) logs: Arc<Logs>,
    pub(crate) assembler: Arc<Assembler>,
    pub(crate) contexts: Arc<Contexts>,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// Every coordinator's advertised address (empty on the embedded store), told to
    /// agents so they can fail over.
    pub(crate) coordinators: tokio::sync::watch::Receiver<Vec<String>>,
    /// This coordinator's advertised address.
    pub(crate) advertise: String,
}

impl Shared {
    pub(crate) fn next_session_id(&self) -> u64 {
        self.next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn connected(&self, id: AgentId) -> bool {
        self.sessions
            .lock()
            .expect("sessions lock poisoned")
            .contains_key(&id)
    }
}

/// A running coordinator. Dropping it without [`Server::shutdown`] aborts it.
#[must_use = "a Server stops when dropped; call shutdown() to stop it cleanly"]
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    endpoint: quinn::Endpoint,
    cancel: CancellationToken,
    /// Cancelled when the coordinator cannot go on (a store write failed).
    fatal: CancellationToken,
    node: Arc<Node>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// What a coordinator has for its whole life, whether it leads or stands by.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) store: Store,
    pub(crate) ca: Arc<ClusterCa>,
    pub(crate) cluster: String,
    pub(crate) opts: ServeOptions,
    pub(crate) advertise: String,
    pub(crate) logs: Arc<Logs>,
    pub(crate) assembler: Arc<Assembler>,
    pub(crate) contexts: Arc<Contexts>,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    pub(crate) coordinators: tokio::sync::watch::Sender<Vec<String>>,
    /// Leader (with the term's state) or standby; read for every new connection.
    pub(crate) role: tokio::sync::watch::Sender<Role>,
    pub(crate) fatal: CancellationToken,
}

/// What a new connection is served by.
#[derive(Debug, Clone)]
pub(crate) enum Role {
    /// Not leading: every request is redirected to `leader` (if one is known).
    Standby { leader: Option<String> },
    /// Leading: the term's state, and the token that ends the term.
    Leader {
        shared: Arc<Shared>,
        term: CancellationToken,
    },
}

impl helix_health::Probes for Node {
    /// The present-tense gauges come from the leader's scheduler; a standby has
    /// none and exports only its counters and its role.
    fn metrics(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send + '_>> {
        Box::pin(async move {
            let role = self.role.borrow().clone();
            if let Role::Leader { shared, .. } = role {
                refresh_gauges(&shared).await;
            }
            self.metrics.encode()
        })
    }

    /// Ready on the leader and on a standby that knows the leader (it redirects);
    /// not ready while the store cannot be reached.
    fn readiness(&self) -> Result<&'static str, &'static str> {
        if self
            .metrics
            .ready
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            Ok("ready\n")
        } else {
            Err("not ready\n")
        }
    }
}

impl Server {
    /// Open the store, load the keys, bind the listener and start accepting. On the
    /// embedded store the coordinator leads at once; on a shared store it stands by,
    /// redirecting every request, until it wins the leader lease.
    pub async fn spawn(opts: ServeOptions) -> Result<Server, ServeError> {
        let dir = &opts.data_dir;
        let initialized = match &opts.store {
            StoreConfig::Redb => dir.database().exists(),
            StoreConfig::Postgres(_) => dir.ca_key().exists(),
        };
        if !initialized {
            return Err(ServeError::NotInitialized(dir.root().display().to_string()));
        }
        // Keys are refused if others can read them: a leaked CA key is a lost cluster.
        let ca_key = read_secret(&dir.ca_key())?;
        let server_key = read_secret(&dir.server_key())?;
        let ca_pem = read_public(&dir.ca_cert())?;
        let server_pem = read_public(&dir.server_cert())?;
        let ca = ClusterCa::from_pem(&ca_pem, &ca_key)?;
        let store = match &opts.store {
            StoreConfig::Redb => {
                let store_path = dir.database();
                tokio::task::spawn_blocking(move || Store::open_redb(&store_path))
                    .await
                    .map_err(|e| StoreError::Task(e.to_string()))??
            }
            StoreConfig::Postgres(pg) => {
                info!(store = %pg.redacted_url(), "connecting to the PostgreSQL store");
                Store::open_postgres(pg).await?
            }
        };
        let cluster = store.cluster().await?;
        store.check_ca(&ca.fingerprint()).await?;

        let tls = tls::server_config(&ca_pem, &server_pem, &server_key)?;
        let quic = tls::quinn_server_config(tls, opts.idle_timeout)?;
        let endpoint = bind_endpoint(quic, opts.listen, &server_key)?;
        let endpoint_for_loop = endpoint.clone();
        let local_addr = endpoint.local_addr().map_err(|source| ServeError::Bind {
            addr: opts.listen,
            source,
        })?;
        let advertise = opts
            .advertise
            .clone()
            .unwrap_or_else(|| local_addr.to_string());
        if store.is_shared() && opts.advertise.is_none() && local_addr.ip().is_unspecified() {
            warn!(%local_addr, "no --advertise address: standbys will redirect agents and admins to {advertise}, which they cannot reach; set --advertise HOST:PORT");
        }

        // With a shared store the logs are shared too, so a new leader serves them.
        let logs = Arc::new(if store.is_shared() {
            Logs::in_store(store.clone())
        } else {
            Logs::files(&dir.logs()).map_err(|source| ServeError::DataDir {
                path: dir.logs().display().to_string(),
                source,
            })?
        });
        let assembler = Arc::new(Assembler::new(&opts.insecure_registries)?);
        let contexts = Arc::new(
            Contexts::open(
                &dir.contexts(),
                opts.max_context_size,
                store.is_shared().then(|| store.clone()),
            )
            .map_err(|source| ServeError::DataDir {
                path: dir.contexts().display().to_string(),
                source,
            })?,
        );
        let cancel = CancellationToken::new();
        let fatal = CancellationToken::new();
        let node = Arc::new(Node {
            store,
            ca: Arc::new(ca),
            cluster,
            opts,
            advertise,
            logs,
            assembler,
            contexts,
            metrics: Arc::new(crate::metrics::Metrics::new()),
            coordinators: tokio::sync::watch::channel(Vec::new()).0,
            role: tokio::sync::watch::channel(Role::Standby { leader: None }).0,
            fatal: fatal.clone(),
        });
        let metrics_task = match node.opts.metrics_listen {
            Some(addr) => Some(
                helix_health::serve(addr, node.clone(), cancel.child_token())
                    .await
                    .map_err(|source| ServeError::Bind { addr, source })?
                    .1,
            ),
            None => None,
        };
        // Lead at once on the embedded store; campaign on a shared one.
        let leadership = crate::leader::spawn(node.clone(), cancel.child_token());
        let node_for_loop = node.clone();
        let cancel_for_loop = cancel.clone();
        let task = tokio::spawn(async move {
            accept_loop(endpoint_for_loop, node_for_loop, cancel_for_loop).await;
            let _ = leadership.await;
            if let Some(t) = metrics_task {
                let _ = t.await;
            }
        });
        info!(%local_addr, store = node.store.kind(), "coordinator listening");
        Ok(Server {
            local_addr,
            endpoint,
            cancel,
            fatal,
            node,
            task: Some(task),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Something that can say, in a line, how the coordinator is doing.
    pub fn status_source(&self) -> StatusSource {
        StatusSource {
            node: self.node.clone(),
        }
    }

    /// Resolves when the coordinator hit an error it cannot continue after; the caller
    /// should shut down and exit non-zero so a service manager restarts it.
    pub async fn failed(&self) {
        self.fatal.cancelled().await;
    }

    /// Stop accepting, close every connection with a going-away code, wait for the
    /// connection tasks, and let the endpoint drain so peers see a clean close. A
    /// leader gives up its lease so a standby takes over at once.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.endpoint
            .close(close::GOING_AWAY.into(), b"coordinator shutting down");
        self.endpoint.wait_idle().await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A cheap handle for status lines.
#[derive(Debug, Clone)]
pub struct StatusSource {
    node: Arc<Node>,
}

impl StatusSource {
    /// E.g. `3 agents connected, 2 jobs queued, 1 running`, or `standby; leader at X`.
    pub async fn status(&self) -> String {
        let shared = match self.node.role.borrow().clone() {
            Role::Leader { shared, .. } => shared,
            Role::Standby { leader: Some(l) } => return format!("standby; the leader is {l}"),
            Role::Standby { leader: None } => return "standby; no leader elected".into(),
        };
        let snap = shared.engine.snapshot().await;
        let connected = shared
            .sessions
            .lock()
            .expect("sessions lock poisoned")
            .len();
        let running: u64 = snap
            .jobs
            .iter()
            .filter(|((s, _), _)| s == "running" || s == "assigned")
            .map(|(_, n)| n)
            .sum();
        let lead = if self.node.store.is_shared() {
            "leader; "
        } else {
            ""
        };
        format!(
            "{lead}{connected} agents connected, {} jobs queued, {running} running",
            snap.queued
        )
    }
}

/// The state of one leader term, shared by its connection tasks.
pub(crate) fn term_state(node: &Arc<Node>, engine: EngineHandle) -> Arc<Shared> {
    Arc::new(Shared {
        store: node.store.clone(),
        ca: node.ca.clone(),
        cluster: node.cluster.clone(),
        opts: node.opts.clone(),
        sessions: Mutex::new(HashMap::new()),
        next_session: std::sync::atomic::AtomicU64::new(1),
        engine,
        logs: node.logs.clone(),
        assembler: node.assembler.clone(),
        contexts: node.contexts.clone(),
        metrics: node.metrics.clone(),
        coordinators: node.coordinators.subscribe(),
        advertise: node.advertise.clone(),
    })
}

/// Set the present-tense gauges from the scheduler, the registry of agents and the
/// live sessions.
async fn refresh_gauges(shared: &Arc<Shared>) {
    use crate::metrics::{PlatformLabel, StatePlatform};
    let m = &shared.metrics;
    let snap = shared.engine.snapshot().await;
    m.jobs.clear();
    for ((state, platform), n) in &snap.jobs {
        m.jobs
            .get_or_create(&StatePlatform {
                state: state.clone(),
                platform: platform.clone(),
            })
            .set(*n as i64);
    }
    m.jobs_unplaceable.clear();
    for (platform, n) in &snap.unplaceable {
        m.jobs_unplaceable
            .get_or_create(&PlatformLabel {
                platform: platform.clone(),
            })
            .set(*n as i64);
    }
    let live: std::collections::HashMap<AgentId, (bool, u32, u32)> = snap
        .agents
        .iter()
        .map(|a| (a.agent, (a.connected && a.schedulable, a.capacity, a.used)))
        .collect();
    let (mut total, mut used) = (0i64, 0i64);
    for a in &snap.agents {
        if a.connected {
            total += i64::from(a.capacity);
            used += i64::from(a.used);
        }
    }
    m.slots_total.set(total);
    m.slots_used.set(used);
    m.agents.clear();
    if let Ok(records) = shared.store.agents().await {
        for r in records {
            let connected = shared.connected(r.id);
            let state = if !connected {
                "offline".to_string()
            } else if live.get(&r.id).is_some_and(|x| x.0) {
                "ready".to_string()
            } else {
                r.state.name().to_string()
            };
            for p in &r.platforms {
                m.agents
                    .get_or_create(&StatePlatform {
                        state: state.clone(),
                        platform: p.to_string(),
                    })
                    .inc();
            }
        }
    }
}

/// Periodic housekeeping: contexts no active build references are removed (an hour
/// after their last use, so one uploaded for a submit about to happen stays).
pub(crate) async fn maintenance(shared: Arc<Shared>, cancel: CancellationToken) {
    const EVERY: Duration = Duration::from_secs(600);
    const MIN_AGE: Duration = Duration::from_secs(3600);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
        match crate::builds::gc_contexts(&shared, MIN_AGE).await {
            Ok(0) => {}
            Ok(n) => info!(removed = n, "removed build contexts no build references"),
            Err(e) => warn!("context garbage collection failed: {e}"),
        }
    }
}

/// Bind the QUIC endpoint with a stateless-reset key derived from the server's private
/// key, so it is the same across restarts. After a crash and restart, an agent's next
/// packet on its old connection is answered with a stateless reset it can verify, and
/// it reconnects at once instead of waiting for its idle timeout.
fn bind_endpoint(
    quic: quinn::ServerConfig,
    addr: SocketAddr,
    server_key_pem: &str,
) -> Result<quinn::Endpoint, ServeError> {
    use sha2::Digest as _;
    let bind = |source| ServeError::Bind { addr, source };
    let mut seed = sha2::Sha256::new();
    seed.update(b"helix quic stateless reset key v1\0");
    seed.update(server_key_pem.as_bytes());
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &seed.finalize());
    let mut config = quinn::EndpointConfig::new(Arc::new(key));
    // quinn's default connection-id generator signs ids with a per-process key, so a
    // restarted coordinator would drop the old connection's packets as invalid instead
    // of answering them with the reset.
    config.cid_generator(|| Box::new(RandomCids));
    let socket = std::net::UdpSocket::bind(addr).map_err(bind)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| bind(std::io::Error::other("no async runtime found")))?;
    quinn::Endpoint::new(config, Some(quic), socket, runtime).map_err(bind)
}

async fn accept_loop(endpoint: quinn::Endpoint, node: Arc<Node>, cancel: CancellationToken) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            Some(res) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = res {
                    if e.is_panic() {
                        warn!("a connection task panicked: {e}");
                    }
                }
            }
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                match node.role.borrow().clone() {
                    Role::Leader { shared, term } => {
                        conns.spawn(handle_connection(incoming, shared, term.child_token()));
                    }
                    Role::Standby { leader } => {
                        conns.spawn(redirect(incoming, leader, node.coordinators.borrow().clone()));
                    }
                }
            }
        }
    }
    // Tell every peer why it is being closed, then wait for the tasks to notice.
    endpoint.close(close::GOING_AWAY.into(), b"coordinator shutting down");
    while conns.join_next().await.is_some() {}
}

/// A standby's answer to any connection: the leader's address, then close.
async fn redirect(incoming: quinn::Incoming, leader: Option<String>, coordinators: Vec<String>) {
    let remote = incoming.remote_address();
    let Ok(conn) = incoming.await else { return };
    let Ok((mut send, _recv, first)) = first_frame(&conn).await else {
        conn.close(close::GOING_AWAY.into(), b"standby");
        return;
    };
    debug!(%remote, ?leader, "standby: redirecting");
    let written = match first {
        FirstFrame::Agent(_) => {
            framed::write_frame(
                &mut send,
                &CoordinatorToAgent::Redirect {
                    leader,
                    coordinators,
                },
            )
            .await
        }
        FirstFrame::Admin(_) => {
            framed::write_frame(
                &mut send,
                &AdminResponse::Redirect {
                    leader,
                    coordinators,
                },
            )
            .await
        }
        FirstFrame::Garbage(e) => {
            refuse(&mut send, RejectCode::BadRequest, &garbage_reason(&e)).await;
            conn.close(close::PROTOCOL_ERROR.into(), b"not a Helix message");
            return;
        }
    };
    if written.is_ok() {
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    }
    conn.close(close::GOING_AWAY.into(), b"standby: see the redirect");
}

/// How long a peer may take to send its first frame.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

async fn handle_connection(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            // A foreign or expired client certificate ends here, in the handshake.
            info!(%remote, "TLS handshake failed: {e}");
            return;
        }
    };
    let uris = tls::peer_identity_uris(&conn);
    if uris.is_empty() {
        agent_session::serve_join(conn, shared).await;
        return;
    }
    let identity = match Identity::from_uri_sans(&uris, &shared.cluster) {
        Ok(id) => id,
        Err(e) => {
            info!(%remote, "refused a certificate: {e}");
            refuse_first_stream(
                &conn,
                RejectCode::WrongRole,
                &format!("certificate refused: {e}"),
            )
            .await;
            conn.close(close::UNAUTHORIZED.into(), b"certificate refused");
            return;
        }
    };
    debug!(%remote, %identity, "connection");
    match identity {
        Identity::Agent { id, .. } => agent_session::serve(conn, id, shared, cancel).await,
        Identity::Admin { name, .. } => admin::serve(conn, name, shared, cancel).await,
    }
}

/// The first frame of a connection, told apart by which protocol it decodes as, so a
/// peer that speaks the wrong protocol for its certificate gets a precise refusal.
#[derive(Debug)]
pub(crate) enum FirstFrame {
    Agent(AgentToCoordinator),
    Admin(AdminRequest),
    Garbage(String),
}

/// Accept the connection's first bidirectional stream and read its first frame.
pub(crate) async fn first_frame(
    conn: &quinn::Connection,
) -> Result<(quinn::SendStream, quinn::RecvStream, FirstFrame), StreamError> {
    let accept = async {
        let (send, mut recv) = conn.accept_bi().await?;
        let payload = framed::read_payload(&mut recv).await;
        Ok::<_, StreamError>((send, recv, payload))
    };
    let (send, recv, payload) = tokio::time::timeout(FIRST_FRAME_TIMEOUT, accept)
        .await
        .map_err(|_| StreamError::Timeout(FIRST_FRAME_TIMEOUT))??;
    let frame = match payload {
        Err(StreamError::Frame(e)) => FirstFrame::Garbage(e.to_string()),
        Err(e) => return Err(e),
        Ok(None) => return Err(StreamError::Closed),
        Ok(Some(payload)) => classify(&payload),
    };
    Ok((send, recv, frame))
}

fn classify(payload: &[u8]) -> FirstFrame {
    match codec::decode_payload::<AgentToCoordinator>(payload) {
        Ok(m) => FirstFrame::Agent(m),
        Err(agent_err) => match codec::decode_payload::<AdminRequest>(payload) {
            Ok(m) => FirstFrame::Admin(m),
            Err(_) => FirstFrame::Garbage(agent_err.to_string()),
        },
    }
}

/// Send a refusal on a stream. Variant 1 of both response enums is the refusal with
/// the same layout (`code`, text), so a client of either protocol can read it.
pub(crate) async fn refuse(send: &mut quinn::SendStream, code: RejectCode, reason: &str) {
    let msg = CoordinatorToAgent::Rejected {
        code,
        reason: reason.to_string(),
    };
    if framed::write_frame(send, &msg).await.is_ok() {
        let _ = send.finish();
        // Give the frame a moment to leave before the caller closes the connection.
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    }
}

/// Refuse a connection on its first stream (when the peer opens one soon).
async fn refuse_first_stream(conn: &quinn::Connection, code: RejectCode, reason: &str) {
    if let Ok(Ok((mut send, _recv))) =
        tokio::time::timeout(Duration::from_secs(2), conn.accept_bi()).await
    {
        refuse(&mut send, code, reason).await;
    }
}

/// The message for a first frame that is not a frame at all.
pub(crate) fn garbage_reason(e: &str) -> String {
    format!("the first frame is not a Helix message ({e})")
}

/// Random 8-byte connection ids, valid across restarts (see [`bind_endpoint`]).
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        quinn::ConnectionId::new(&rand::random::<[u8; 8]>())
    }
    fn cid_len(&self) -> usize {
        8
    }
    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}
