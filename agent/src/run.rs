//! `helix-agent run`: start-up checks (options, the data dir and its lock, the
//! builder), enrolment with the join token if the data dir holds no identity yet
//! ([`crate::enrol`]), the job set, the metrics listener, then `READY=1` and the
//! connection lifecycle as a loop of plain async functions, connect → handshake →
//! session → back off with jitter → again, until a shutdown is requested or the
//! coordinator says retrying cannot help. `READY=1` does not wait for the
//! coordinator: a service start must not hang while it is down.
//!
//! With several coordinators (one leader, standbys), each attempt goes to the next
//! address of a round ([`Round`]: the last leader first, then the configured ones,
//! then the ones learned from the cluster). A standby's `Redirect` to the leader is
//! followed at once; a `Redirect` without a leader (an election) or a failed attempt
//! moves on to the next address (a handshake gets [`HANDSHAKE_PATIENCE`] while
//! others remain); only when every address of the round failed does the agent back
//! off. A session that was up and got lost backs off as before, then
//! starts a new round with the coordinator it was connected to.
//!
//! New [`LiveSettings`] (capacity, labels; a reloaded configuration) end the session
//! once no build context download depends on it, and the agent reconnects at once, so
//! that the next `Hello` tells the coordinator; running jobs go on across it, as
//! across any reconnect.
//!
//! Shutdown is a drain (SIGTERM, SIGINT; `STOPPING=1`), in this order, while the sessions go on (a
//! lost connection is re-established meanwhile):
//! 1. refuse new assignments and tell the coordinator `Draining { deadline_secs }`;
//! 2. let the running jobs finish, for at most the drain deadline; then cancel the
//!    rest and wait for them (their builders must not outlive the agent); they report
//!    an infrastructure failure, so the coordinator runs them elsewhere;
//! 3. report the results and wait (bounded, [`ACK_WAIT`]) until the coordinator
//!    acknowledged them; what it did not acknowledge stays on disk for the next run;
//! 4. say `GoingAway` and close.
//!
//! A second signal makes the binary kill every builder and exit at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use helix_protocol::wire::{AgentToCoordinator, RejectCode, PROTOCOL_VERSION};
use helix_protocol::Platform;
use helix_registry::{Registry, RegistryOptions};
use helix_transport::tls::{self, TlsError};
use rand::rngs::StdRng;
use rand::SeedableRng;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::backoff::Backoff;
use crate::builder::{self, process, BuilderKind, BuilderUnavailable, ProcessRunner};
use crate::context::CurrentConnection;
use crate::coordinators::{Coordinators, Round, HANDSHAKE_PATIENCE};
use crate::datadir::{DataDir, DataDirError};
use crate::enrol::{self, EnrolError, EnrolOptions, JoinTokenConfig};
use crate::executor::Executor;
use crate::identity::{AgentIdentity, IdentityError};
use crate::jobs::{Jobs, Notice};
use crate::join;
use crate::metrics::Metrics;
use crate::results::{create_private_dir, ResultStore};
use crate::service::{status_line, Phase, ServiceEvent, ServiceManager, Systemd};
use crate::session::{self, SessionConfig, SessionEnd};

/// What `run` needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub data_dir: DataDir,
    /// The coordinators, `HOST:PORT` each, tried in turn; empty for the one recorded
    /// at join. The ones learned from the cluster (`coordinators.json`) are tried
    /// after them.
    pub coordinators: Vec<String>,
    /// The platforms to advertise (already normalized, not empty).
    pub platforms: Vec<Platform>,
    /// How many jobs the agent runs at once.
    pub capacity: u32,
    pub labels: BTreeMap<String, String>,
    /// A connection silent this long is dead; keep-alives go out at a third of it
    /// (at most every 3 s).
    pub idle_timeout: Duration,
    /// The image builder backend.
    pub builder: BuilderKind,
    /// Registries pushed to over plain HTTP, `HOST:PORT` as image references spell
    /// them. Credentials come from the standard containers auth file.
    pub insecure_registries: Vec<String>,
    /// How long a cancelled build has between SIGTERM and SIGKILL.
    pub cancel_grace: Duration,
    /// How long running jobs may go on once a drain started (SIGTERM); the ones still
    /// running then are cancelled and retried elsewhere.
    pub drain_deadline: Duration,
    /// The agent's name if it enrols now [default: the host name].
    pub name: Option<String>,
    /// The join token to enrol with when the data dir holds no identity yet.
    pub join_token: JoinTokenConfig,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`; `None`: nowhere.
    pub metrics_listen: Option<SocketAddr>,
}

/// What may change while the agent runs (SIGHUP): the coordinator learns it from the
/// `Hello` of a new session, so a change closes the session and reconnects at once
/// (running jobs go on across it, as across any reconnect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSettings {
    pub capacity: u32,
    pub labels: BTreeMap<String, String>,
}

/// Who `run` reports to and listens to, besides its options.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// Told `READY=1`, `STOPPING=1` and status lines.
    pub service: Arc<dyn ServiceManager>,
    /// New [`LiveSettings`] (a reloaded configuration); `None`: they never change.
    pub live: Option<watch::Receiver<LiveSettings>>,
}

impl Default for RunContext {
    fn default() -> Self {
        RunContext {
            service: Arc::new(Systemd),
            live: None,
        }
    }
}

/// How long a drained agent waits for the coordinator to acknowledge its results
/// before it leaves anyway (they stay on disk and go out on the next run).
pub const ACK_WAIT: Duration = Duration::from_secs(10);

/// Why `run` stopped for good.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The data directory is missing something.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// `identity.pem` is unreadable, too open or damaged.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The certificate ran out; only a new enrolment helps.
    #[error("the agent certificate expired at {}; enrol again with a new token (`helix-agent join`)", rfc3339(*.0))]
    Expired(OffsetDateTime),
    /// The coordinator refused this agent in a way retrying cannot change (revoked,
    /// another protocol version, not an agent of this cluster).
    #[error("the coordinator refused this agent: {reason}")]
    Refused { code: RejectCode, reason: String },
    /// An option is unusable (e.g. a zero idle timeout, a malformed address).
    #[error("{0}")]
    InvalidOption(String),
    /// The TLS configuration cannot be built from the stored identity.
    #[error("cannot use the stored identity: {0}")]
    Tls(#[source] TlsError),
    /// The image builder is missing or broken on this host.
    #[error(transparent)]
    Builder(#[from] BuilderUnavailable),
    /// The data directory's job areas could not be set up.
    #[error("cannot prepare {path}: {reason}")]
    Setup { path: String, reason: String },
    /// Enrolment with the join token failed.
    #[error(transparent)]
    Enrol(#[from] EnrolError),
    /// The metrics listener could not be opened.
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl RunError {
    /// Whether this is the user's input or setup (exit code 2) rather than a failure.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            RunError::InvalidOption(_)
                | RunError::Builder(_)
                | RunError::DataDir(DataDirError::NotJoined { .. })
        ) || matches!(self, RunError::Enrol(e) if e.is_usage())
    }
}

/// Run the agent until `shutdown` is cancelled (`Ok`) or a fatal refusal (`Err`):
/// start-up checks, enrolment if the data dir holds no identity yet, then the session
/// loop, with `READY=1` once it runs (connected or not).
pub async fn run(
    opts: RunOptions,
    ctx: RunContext,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let service = ctx.service.clone();
    if opts.platforms.is_empty() {
        return Err(RunError::InvalidOption(
            "no platform to advertise (give --platform, e.g. linux/amd64)".into(),
        ));
    }
    let keep_alive = keep_alive_for(opts.idle_timeout)?;
    check_data_dir_path(&opts.data_dir, opts.builder)?;
    if !opts.data_dir.is_joined() {
        // Refuse an unusable token or a missing coordinator before anything is created.
        if enrol::read_token(&opts.join_token)?.is_none() {
            return Err(EnrolError::NoToken {
                dir: opts.data_dir.root().display().to_string(),
            }
            .into());
        }
        if opts.coordinators.is_empty() {
            return Err(EnrolError::NoCoordinator.into());
        }
        opts.data_dir.create()?;
    }
    // `_lock` keeps the data dir locked until `run` returns.
    let _lock = lock_data_dir(&opts.data_dir)?;
    let version = builder::check_installed(opts.builder.name()).await?;
    info!("builder: {version}");

    let enrol_opts = EnrolOptions {
        coordinators: opts.coordinators.clone(),
        name: opts.name.clone(),
        token: opts.join_token.clone(),
    };
    let enrolling_with = opts.coordinators.join(", ");
    let enrolled = enrol::enrol_if_needed(
        &opts.data_dir,
        &enrol_opts,
        &shutdown,
        |attempt| {
            service.tell(ServiceEvent::Status(status_line(
                &enrolling_with,
                Phase::Enrolling { attempt },
                0,
                0,
            )));
        },
        |join_opts| async move { join::join(&join_opts).await },
    )
    .await?;
    if enrolled.is_none() {
        info!("stopped before enrolment finished");
        return Ok(());
    }

    let enrollment = opts.data_dir.load_enrollment()?;
    let ca_pem = opts.data_dir.load_ca()?;
    let identity = load_identity(&opts.data_dir)?;
    if identity.info().agent_id != enrollment.agent_id {
        warn!(
            "agent.json names agent {}, but the certificate is for {}; the certificate wins",
            enrollment.agent_id,
            identity.info().agent_id
        );
    }
    let metrics = Arc::new(Metrics::new(opts.builder.name()));
    let connection = CurrentConnection::default();
    let (jobs, mut notices) = setup_jobs(&opts, &connection, metrics.clone()).await?;
    {
        let jobs = jobs.clone();
        metrics.set_refresh(move |m| {
            m.running_jobs
                .set(i64::try_from(jobs.running()).unwrap_or(i64::MAX));
            m.capacity.set(i64::from(jobs.capacity()));
        });
    }
    let background = CancellationToken::new();
    let _stop_background = background.clone().drop_guard();
    if let Some(addr) = opts.metrics_listen {
        helix_health::serve(addr, metrics.clone(), background.clone())
            .await
            .map_err(|source| RunError::Metrics { addr, source })?;
    }
    // The configured coordinators replace the recorded one (which may be gone).
    let configured = if opts.coordinators.is_empty() {
        vec![enrollment.coordinator.clone()]
    } else {
        opts.coordinators.clone()
    };
    let coordinators = Coordinators::load(configured, &opts.data_dir);
    let first = coordinators.round();
    let hello = AgentToCoordinator::Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        platforms: opts.platforms.clone(),
        capacity: opts.capacity,
        labels: opts.labels.clone(),
        builder: opts.builder.name().to_string(),
        held: Vec::new(),
    };
    // Without a reload source the settings stay as given; the sender lives as long
    // as `run`, so the sessions never see the channel close.
    let (_fixed, fixed) = watch::channel(LiveSettings {
        capacity: opts.capacity,
        labels: opts.labels.clone(),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Connecting { attempt: 1 });
    let (target_tx, target_rx) = watch::channel(first.first().cloned().unwrap_or_default());
    let observer = Observer {
        phase: phase_tx,
        coordinator: target_tx,
        metrics: metrics.clone(),
    };
    let config = SessionConfig {
        coordinators: &coordinators,
        ca_pem: &ca_pem,
        identity_path: opts.data_dir.identity(),
        idle_timeout: opts.idle_timeout,
        keep_alive,
        hello: &hello,
        live: ctx.live.clone().unwrap_or(fixed),
        jobs: &jobs,
        connection: &connection,
        observer: &observer,
    };
    let platforms: Vec<String> = opts.platforms.iter().map(ToString::to_string).collect();
    let span = tracing::info_span!("agent", agent = %identity.info().agent_id);
    info!(
        parent: &span,
        name = %enrollment.name,
        cluster = %identity.info().cluster,
        platforms = %platforms.join(","),
        capacity = opts.capacity,
        builder = opts.builder.name(),
        certificate_valid_until = %rfc3339(identity.info().not_after),
        "helix-agent {} starting; {} {}",
        env!("CARGO_PKG_VERSION"),
        if first.len() == 1 { "coordinator" } else { "coordinators" },
        first.join(", "),
    );
    tokio::spawn(publish_status(
        service.clone(),
        target_rx,
        phase_rx,
        jobs.clone(),
        background.clone(),
    ));
    service.tell(ServiceEvent::Ready);
    serve_until_shutdown(
        &config,
        &opts.data_dir,
        &jobs,
        &mut notices,
        &shutdown,
        opts.drain_deadline,
        service.as_ref(),
    )
    .instrument(span)
    .await
}

/// What the session loop reports as it goes: its phase and the coordinator it dials
/// or is connected to (for the status line), and the connection metrics.
#[derive(Debug)]
pub(crate) struct Observer {
    pub(crate) phase: watch::Sender<Phase>,
    pub(crate) coordinator: watch::Sender<String>,
    pub(crate) metrics: Arc<Metrics>,
}

/// Keeps the service manager's status line current: on every phase or coordinator
/// change, and every second for the job counts.
async fn publish_status(
    service: Arc<dyn ServiceManager>,
    mut coordinator: watch::Receiver<String>,
    mut phase: watch::Receiver<Phase>,
    jobs: Jobs,
    stop: CancellationToken,
) {
    let mut last = String::new();
    loop {
        let current = *phase.borrow_and_update();
        let target = coordinator.borrow_and_update().clone();
        let line = status_line(&target, current, jobs.running(), jobs.unacked_count());
        if line != last {
            service.tell(ServiceEvent::Status(line.clone()));
            last = line;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            changed = phase.changed() => if changed.is_err() { return },
            changed = coordinator.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Runs the connection lifecycle until `shutdown`; then drains the jobs while the
/// sessions still run (so their results are reported), and only then stops the
/// sessions.
async fn serve_until_shutdown(
    config: &SessionConfig<'_>,
    dir: &DataDir,
    jobs: &Jobs,
    notices: &mut mpsc::UnboundedReceiver<Notice>,
    shutdown: &CancellationToken,
    drain_deadline: Duration,
    service: &dyn ServiceManager,
) -> Result<(), RunError> {
    let stop_sessions = CancellationToken::new();
    let life = lifecycle(config, dir, &stop_sessions, notices);
    tokio::pin!(life);
    let early = tokio::select! {
        result = &mut life => Some(result),
        () = shutdown.cancelled() => None,
    };
    if let Some(result) = early {
        // A fatal refusal: no session any more, but the builders must still stop.
        jobs.shutdown().await;
        return result;
    }
    service.tell(ServiceEvent::Stopping);
    config.observer.phase.send_replace(Phase::Draining);
    let stopping = async {
        drain(jobs, drain_deadline).await;
        stop_sessions.cancel();
    };
    tokio::pin!(stopping);
    let mut drained = false;
    let result = loop {
        tokio::select! {
            result = &mut life => break result,
            () = &mut stopping, if !drained => drained = true,
        }
    };
    if !drained {
        // The coordinator refused the agent for good while it drained: nobody will
        // take the results, so stop the builders now.
        jobs.shutdown().await;
    }
    result
}

/// Steps 1 to 3 of the shutdown order (see the module docs).
async fn drain(jobs: &Jobs, deadline: Duration) {
    let running = jobs.start_draining(deadline);
    info!(
        "draining: {running} job{} running, deadline {}",
        if running == 1 { "" } else { "s" },
        humantime::format_duration(deadline)
    );
    let late = jobs.drain(deadline).await;
    if running > 0 && late == 0 {
        info!("draining: every running job finished");
    }
    let held = jobs.unacked_count();
    if held > 0 {
        info!(
            results = held,
            "draining: waiting for the coordinator to record the results"
        );
        if !jobs.wait_acked(ACK_WAIT).await {
            warn!(
                results = jobs.unacked_count(),
                "the coordinator did not acknowledge every result within {}s; they are kept and reported on the next run",
                ACK_WAIT.as_secs()
            );
        }
    }
}

/// Refuses a data dir path the builders cannot use.
fn check_data_dir_path(dir: &DataDir, kind: BuilderKind) -> Result<(), RunError> {
    // The builders name the layout `oci:DIR:NAME`: a ':' in DIR would cut it short.
    if dir.root().to_string_lossy().contains(':') {
        return Err(RunError::InvalidOption(format!(
            "the data directory {} contains ':', which {} cannot use in a path; choose another --data-dir",
            dir.root().display(),
            kind.name()
        )));
    }
    Ok(())
}

/// Stops builds a killed agent left, prepares the job areas of the data dir, recovers
/// results an earlier run left, and builds the job set. The data dir is locked and
/// the builder checked already.
async fn setup_jobs(
    opts: &RunOptions,
    connection: &CurrentConnection,
    metrics: Arc<Metrics>,
) -> Result<(Jobs, mpsc::UnboundedReceiver<Notice>), RunError> {
    let dir = &opts.data_dir;
    let kind = opts.builder;
    for path in [dir.work(), dir.results(), dir.storage()] {
        create_private_dir(&path).map_err(|e| RunError::Setup {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    let registry = Registry::new(RegistryOptions {
        insecure: opts.insecure_registries.clone(),
        ..RegistryOptions::default()
    })
    .map_err(|e| RunError::InvalidOption(e.to_string()))?;
    // Builders an agent killed with SIGKILL left running would fight the new run
    // over the storage and the work dirs.
    process::stop_leftover_groups(&dir.storage(), &dir.work(), opts.cancel_grace).await;
    let runner = Arc::new(ProcessRunner::new(opts.cancel_grace));
    let builder = kind.backend(&dir.storage(), runner.clone());
    builder.prune().await;
    let executor = Executor::new(
        dir.work(),
        runner,
        builder,
        Arc::new(registry),
        Arc::new(connection.clone()),
    )
    .with_metrics(metrics);
    let (jobs, notices) = Jobs::new(
        executor,
        ResultStore::new(dir.results()),
        opts.platforms.clone(),
        opts.capacity,
    );
    jobs.recover().await;
    Ok((jobs, notices))
}

/// Takes `DATA/run.lock`, so that a second agent on the same data dir (same identity,
/// same storage) is refused instead of killing the first one's builds as leftovers.
fn lock_data_dir(dir: &DataDir) -> Result<std::fs::File, RunError> {
    let path = dir.root().join("run.lock");
    let setup = |reason: String| RunError::Setup {
        path: path.display().to_string(),
        reason,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| setup(e.to_string()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(RunError::InvalidOption(format!(
            "another helix-agent is already running with --data-dir {}; stop it first",
            dir.root().display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(setup(e.to_string())),
    }
}

/// connect → handshake → session → back off → again, over the known coordinators
/// (see the module docs).
async fn lifecycle(
    config: &SessionConfig<'_>,
    dir: &DataDir,
    shutdown: &CancellationToken,
    notices: &mut mpsc::UnboundedReceiver<Notice>,
) -> Result<(), RunError> {
    let mut backoff = Backoff::new(StdRng::from_os_rng());
    let mut attempt: u32 = 0;
    let mut round = Round::new(config.coordinators.round());
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let Some(addr) = round.next() else {
            // Nothing to dial (cannot happen with a configured address); wait as
            // after a failed round.
            if back_off(
                config,
                &mut backoff,
                attempt,
                "no coordinator address",
                shutdown,
            )
            .await
            {
                return Ok(());
            }
            round = Round::new(config.coordinators.round());
            continue;
        };
        // Read it again every time: a renewal replaced it.
        let identity = load_identity(dir)?;
        attempt = attempt.saturating_add(1);
        if attempt > 1 {
            config.observer.metrics.reconnects.inc();
        }
        config.observer.coordinator.send_replace(addr.clone());
        if !config.jobs.is_draining() {
            config
                .observer
                .phase
                .send_replace(Phase::Connecting { attempt });
        }
        // While other addresses remain, a coordinator that does not answer at all (a
        // dead leader) must not hold the round up for the whole idle timeout.
        let patience = (!round.is_done()).then_some(HANDSHAKE_PATIENCE);
        let end =
            session::connect_and_serve(config, &addr, patience, identity, shutdown, notices).await;
        let reason = match end {
            SessionEnd::Shutdown => return Ok(()),
            SessionEnd::Fatal(e) => return Err(e),
            SessionEnd::Reconfigured => {
                // A new Hello carries the new settings; no backoff, same leader.
                attempt = 0;
                backoff.reset();
                round = Round::new(config.coordinators.round());
                continue;
            }
            SessionEnd::Redirect {
                leader: Some(leader),
            } => {
                info!("coordinator {addr} is a standby; the leader is {leader}");
                if round.follow(&leader) {
                    continue;
                }
                format!(
                    "followed {} redirects in a row without reaching the leader (the last to {leader})",
                    crate::coordinators::MAX_REDIRECTS
                )
            }
            SessionEnd::Redirect { leader: None } => {
                info!("coordinator {addr} is a standby; no coordinator leads the cluster right now (an election is under way)");
                format!("no coordinator leads the cluster yet (asked {addr})")
            }
            SessionEnd::Lost {
                reason,
                connected_for: Some(lasted),
            } => {
                // The session was up: back off (a fleet must not come back in lock
                // step), then a new round from the coordinator it was connected to.
                backoff.reset_after(lasted);
                attempt = 1;
                if back_off(config, &mut backoff, attempt, &reason, shutdown).await {
                    return Ok(());
                }
                round = Round::new(config.coordinators.round());
                continue;
            }
            SessionEnd::Lost {
                reason,
                connected_for: None,
            } => reason,
        };
        if !round.is_done() {
            warn!(attempt, "{reason}; trying the next coordinator");
            continue;
        }
        // Every address of the round failed.
        if back_off(config, &mut backoff, attempt, &reason, shutdown).await {
            return Ok(());
        }
        round = Round::new(config.coordinators.round());
    }
}

/// Waits the next backoff delay after `reason`; `true` when `shutdown` came first.
async fn back_off(
    config: &SessionConfig<'_>,
    backoff: &mut Backoff<StdRng>,
    attempt: u32,
    reason: &str,
    shutdown: &CancellationToken,
) -> bool {
    if !config.jobs.is_draining() {
        config.observer.phase.send_replace(Phase::Connecting {
            attempt: attempt + 1,
        });
    }
    let delay = backoff.next_delay();
    warn!(
        attempt,
        "{reason}; reconnecting in {:.1}s",
        delay.as_secs_f64()
    );
    tokio::select! {
        biased;
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

/// Reads `identity.pem` and refuses an expired certificate.
fn load_identity(dir: &DataDir) -> Result<AgentIdentity, RunError> {
    let path = dir.identity();
    if !path.exists() {
        return Err(DataDirError::NotJoined {
            dir: dir.root().display().to_string(),
        }
        .into());
    }
    let identity = AgentIdentity::load(&path)?;
    if identity.info().expired_at(OffsetDateTime::now_utc()) {
        return Err(RunError::Expired(identity.info().not_after));
    }
    Ok(identity)
}

/// A third of the idle timeout, at most [`tls::DEFAULT_KEEP_ALIVE`]; checks that QUIC
/// accepts the pair.
fn keep_alive_for(idle_timeout: Duration) -> Result<Duration, RunError> {
    let keep_alive = (idle_timeout / 3).min(tls::DEFAULT_KEEP_ALIVE);
    if idle_timeout < Duration::from_secs(1) {
        return Err(RunError::InvalidOption(format!(
            "invalid --idle-timeout {}: it must be at least 1s",
            humantime::format_duration(idle_timeout)
        )));
    }
    Ok(keep_alive)
}

/// A timestamp for people: `2025-01-31T12:00:00Z`.
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests;
