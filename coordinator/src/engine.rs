//! The driver of the [`Scheduler`]: an actor that owns it, feeds it inputs from agent
//! sessions, admin requests and a clock tick, and carries out its outputs in order —
//! commit to the store, then send to agents, then start assemblies.
//!
//! **Group commit.** The engine takes what is waiting in its inbox (up to
//! [`MAX_BATCH`] messages) as one round: every message goes through the scheduler,
//! the records of the whole round are committed in one transaction, and only then is
//! anything sent, replied or started, in the order the scheduler asked. Nothing is
//! acted on before it is durable, as with a commit per message, but a busy
//! coordinator pays one fsync (or one database round trip) per round instead of one
//! per message; an idle one still commits each message as it comes.
//!
//! Store errors, by kind:
//! - the database is unavailable (PostgreSQL restarting): the engine retries the same
//!   write with backoff until it lands or the leader term ends; nothing is acted on
//!   before it is durable, so nothing is lost, the engine only waits;
//! - the write was fenced (another coordinator leads now): the engine stops and
//!   cancels `lost`, and the coordinator steps down to standby;
//! - anything else is fatal: the in-memory state is then ahead of the disk, and the
//!   only safe recovery is a restart from the store (every state change is committed
//!   before it is acted on, so nothing acknowledged is lost). The engine cancels
//!   `fatal` and the server stops; a service manager restarts it.

use std::sync::Arc;
use std::time::Duration;

use helix_protocol::{AgentId, Build, BuildId, Digest, Job, JobId};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::assembler::Assembler;
use crate::clock::now;
use crate::logs::Logs;
use crate::scheduler::{Input, Output, Scheduler, SchedulerConfig};
use crate::server::Shared;
use crate::store::{Store, StoreError};

/// Messages waiting for the engine before senders wait.
const INBOX: usize = 1024;
/// Most messages handled in one round (one commit): bounds the latency a round adds
/// to its first message, and the size of the transaction.
const MAX_BATCH: usize = 256;
/// How often time passes for the scheduler (grace periods).
const TICK: Duration = Duration::from_secs(1);

#[derive(Debug)]
enum Msg {
    Input(Input),
    /// `Input::AgentUp` or `Input::AgentDown` from session `session` of the agent.
    Session {
        session: u64,
        input: Input,
    },
    Snapshot {
        reply: oneshot::Sender<crate::scheduler::Snapshot>,
    },
    NeedsContext {
        agent: AgentId,
        digest: helix_protocol::Digest,
        reply: oneshot::Sender<bool>,
    },
    Holding {
        reply: oneshot::Sender<std::collections::BTreeMap<AgentId, u32>>,
    },
    /// A submit, answered once it is committed.
    Submit {
        build: Build,
        jobs: Vec<Job>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Notes {
        build: BuildId,
        reply: oneshot::Sender<Vec<String>>,
    },
    MayLog {
        agent: AgentId,
        job: JobId,
        attempt: u32,
        reply: oneshot::Sender<Option<bool>>,
    },
    Active {
        build: BuildId,
        reply: oneshot::Sender<Option<(Build, Vec<Job>)>>,
    },
}

/// A cheap handle for sending to the engine.
#[derive(Debug, Clone)]
pub(crate) struct EngineHandle {
    tx: mpsc::Sender<Msg>,
    done: broadcast::Sender<BuildId>,
}

/// The engine is gone (shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the coordinator is shutting down")]
pub(crate) struct EngineGone;

impl EngineHandle {
    pub(crate) async fn input(&self, input: Input) -> Result<(), EngineGone> {
        self.tx
            .send(Msg::Input(input))
            .await
            .map_err(|_| EngineGone)
    }

    /// `Input::AgentUp` or `Input::AgentDown` from an agent's session `session`
    /// (numbered in the order sessions start). After an `AgentUp` the engine's
    /// messages for the agent go to that session only; an `AgentDown` of a session
    /// older than the one the scheduler heard last is stale and ignored.
    pub(crate) async fn session(&self, session: u64, input: Input) -> Result<(), EngineGone> {
        self.tx
            .send(Msg::Session { session, input })
            .await
            .map_err(|_| EngineGone)
    }

    /// Submit a build; returns once the build and its jobs are committed.
    pub(crate) async fn submit(
        &self,
        build: Build,
        jobs: Vec<Job>,
    ) -> Result<Result<(), String>, EngineGone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Submit { build, jobs, reply })
            .await
            .map_err(|_| EngineGone)?;
        rx.await.map_err(|_| EngineGone)
    }

    pub(crate) async fn notes(&self, build: BuildId) -> Vec<String> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Notes { build, reply }).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Whether `agent` may stream the log of `job`'s `attempt`, if the job is live;
    /// `None` for a job the scheduler no longer holds (its build ended: the store
    /// says), `Some(false)` when the engine is gone.
    pub(crate) async fn may_log(&self, agent: AgentId, job: JobId, attempt: u32) -> Option<bool> {
        let (reply, rx) = oneshot::channel();
        if self
            .tx
            .send(Msg::MayLog {
                agent,
                job,
                attempt,
                reply,
            })
            .await
            .is_err()
        {
            return Some(false);
        }
        rx.await.unwrap_or(Some(false))
    }

    /// The live state of an active build, if it is active.
    pub(crate) async fn active(&self, build: BuildId) -> Option<(Build, Vec<Job>)> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Active { build, reply }).await.ok()?;
        rx.await.ok().flatten()
    }

    /// The scheduler's present state (for metrics and status lines).
    pub(crate) async fn snapshot(&self) -> crate::scheduler::Snapshot {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Snapshot { reply }).await.is_err() {
            return Default::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Whether `agent` may download context `digest`.
    pub(crate) async fn needs_context(
        &self,
        agent: AgentId,
        digest: helix_protocol::Digest,
    ) -> bool {
        let (reply, rx) = oneshot::channel();
        if self
            .tx
            .send(Msg::NeedsContext {
                agent,
                digest,
                reply,
            })
            .await
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// How many jobs each agent holds.
    pub(crate) async fn holding(&self) -> std::collections::BTreeMap<AgentId, u32> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Holding { reply }).await.is_err() {
            return Default::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Terminal builds, as they happen.
    pub(crate) fn subscribe_done(&self) -> broadcast::Receiver<BuildId> {
        self.done.subscribe()
    }
}

/// Create the engine's channels; [`run`] consumes the receiving side.
pub(crate) fn channel() -> (EngineHandle, EngineInbox) {
    let (tx, rx) = mpsc::channel(INBOX);
    let (done, _) = broadcast::channel(1024);
    (
        EngineHandle {
            tx,
            done: done.clone(),
        },
        EngineInbox { rx, done },
    )
}

/// The receiving side of the engine's channel.
#[derive(Debug)]
pub(crate) struct EngineInbox {
    rx: mpsc::Receiver<Msg>,
    done: broadcast::Sender<BuildId>,
}

/// How the engine's run ended badly: the owner of each token decides what follows.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    /// Unrecoverable: the process should exit so it restarts from the store.
    pub(crate) fatal: CancellationToken,
    /// Fenced: another coordinator leads; step down to standby.
    pub(crate) lost: CancellationToken,
}

impl Failure {
    fn report(&self, e: &StoreError) {
        if e.is_fenced() {
            warn!("stepping down: {e}");
            self.lost.cancel();
        } else {
            error!("store write failed, stopping so a restart recovers from the store: {e}");
            self.fatal.cancel();
        }
    }
}

/// Resume every active build from the store, then serve until `cancel`.
pub(crate) async fn run(
    inbox: EngineInbox,
    shared: Arc<Shared>,
    cfg: SchedulerConfig,
    cancel: CancellationToken,
    failure: Failure,
) {
    let EngineInbox { mut rx, done } = inbox;
    let mut engine = Engine {
        scheduler: Scheduler::new(cfg),
        store: shared.store.clone(),
        shared: shared.clone(),
        logs: shared.logs.clone(),
        assembler: shared.assembler.clone(),
        assemblies: JoinSet::new(),
        up: std::collections::HashMap::new(),
        done,
        cancel: cancel.clone(),
    };
    let store = engine.store.clone();
    match engine.retry(|| store.active_builds()).await {
        Ok(active) => {
            if !active.is_empty() {
                info!(
                    builds = active.len(),
                    "resuming active builds from the store"
                );
            }
            // One round: whatever resuming changes is committed together.
            let mut round = Round::default();
            for (build, jobs) in active {
                engine.handle(Input::Resume { build, jobs }, &mut round);
            }
            if let Err(e) = engine.finish(round).await {
                if !cancel.is_cancelled() {
                    failure.report(&e);
                }
                return;
            }
        }
        Err(e) => {
            if !cancel.is_cancelled() {
                error!("cannot load active builds: {e}");
                failure.report(&e);
            }
            return;
        }
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            Some(joined) = engine.assemblies.join_next(), if !engine.assemblies.is_empty() => {
                match joined {
                    Ok((build, result)) => Msg::Input(Input::Assembled { build, result }),
                    Err(e) => { warn!("an assembly task failed: {e}"); continue }
                }
            }
            // Before the inbox: a busy inbox must not hold back grace periods.
            _ = tick.tick() => Msg::Input(Input::Tick),
            msg = rx.recv() => match msg {
                Some(msg) => msg,
                None => break,
            },
        };
        let mut round = Round::default();
        engine.message(first, &mut round);
        // What else is waiting joins the round.
        while round.messages < MAX_BATCH {
            let Ok(msg) = rx.try_recv() else { break };
            engine.message(msg, &mut round);
        }
        if let Err(e) = engine.finish(round).await {
            if !cancel.is_cancelled() {
                failure.report(&e);
            }
            break;
        }
    }
    engine.assemblies.abort_all();
    while engine.assemblies.join_next().await.is_some() {}
}

/// One round of the engine: the messages handled since the last commit.
struct Round {
    /// Messages handled (bounded by [`MAX_BATCH`]).
    messages: usize,
    /// Every record the round's scheduler steps asked to persist, in order.
    records: Vec<crate::store::Record>,
    /// What to do once they are committed, in order.
    after: Vec<After>,
    /// Assignments among `after` (for the dispatch latency).
    assigns: usize,
    started: std::time::Instant,
}

impl Default for Round {
    fn default() -> Round {
        Round {
            messages: 0,
            records: Vec::new(),
            after: Vec::new(),
            assigns: 0,
            started: std::time::Instant::now(),
        }
    }
}

impl Round {
    /// Answer `reply` with `value` after the commit.
    fn reply<T: Send + 'static>(&mut self, reply: oneshot::Sender<T>, value: T) {
        self.messages += 1;
        self.after.push(After::Reply(Box::new(move || {
            let _ = reply.send(value);
        })));
    }
}

/// Something a round does after its commit.
enum After {
    /// A message for the agent's session `session` (the one whose `AgentUp` the
    /// scheduler had heard when it decided).
    Send {
        agent: AgentId,
        session: Option<u64>,
        msg: helix_protocol::wire::CoordinatorToAgent,
    },
    /// Start assembling a build's index.
    Assemble { build: Box<Build>, jobs: Vec<Job> },
    /// A build ended: close its jobs' logs, wake its waiters.
    BuildDone { build: BuildId, jobs: Vec<JobId> },
    /// A submit is acknowledged: its build and jobs are durable.
    Submitted(oneshot::Sender<Result<(), String>>),
    /// An answer to a request.
    Reply(Box<dyn FnOnce() + Send>),
}

/// The records of a round with each build, job and cache entry once, in its last
/// version, at the place it first appeared: a round may change a job several times
/// (assigned, then started), and one write of its final state is what counts.
fn coalesce(records: Vec<crate::store::Record>) -> Vec<crate::store::Record> {
    use crate::store::Record;
    use std::collections::HashMap;
    #[derive(PartialEq, Eq, Hash)]
    enum Key {
        Build(BuildId),
        Job(JobId),
        Cache(Digest, String),
    }
    let mut at: HashMap<Key, usize> = HashMap::with_capacity(records.len());
    let mut out: Vec<Record> = Vec::with_capacity(records.len());
    for r in records {
        let key = match &r {
            Record::Build(b) => Key::Build(b.id),
            Record::Job(j) => Key::Job(j.id()),
            Record::Cache(c) => Key::Cache(c.key.clone(), c.repository.clone()),
        };
        match at.get(&key) {
            Some(&i) => out[i] = r,
            None => {
                at.insert(key, out.len());
                out.push(r);
            }
        }
    }
    out
}

struct Engine {
    scheduler: Scheduler,
    store: Store,
    shared: Arc<Shared>,
    logs: Arc<Logs>,
    assembler: Arc<Assembler>,
    assemblies: JoinSet<(BuildId, Result<Digest, String>)>,
    /// The session of each agent whose `AgentUp` the scheduler has heard: what it
    /// decides for an agent is for that session. A newer session that registered
    /// before its own `AgentUp` was handled gets nothing meant for the old one (the
    /// scheduler reconciles what the agent holds when it hears the new session).
    up: std::collections::HashMap<AgentId, u64>,
    done: broadcast::Sender<BuildId>,
    /// Ends the leader term (or the process); stops retries.
    cancel: CancellationToken,
}

impl Engine {
    /// Run a store operation, retrying while the database is unavailable, until it
    /// succeeds, fails for another reason, or the term ends.
    async fn retry<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        crate::store::retry::while_unavailable(&self.cancel, op).await
    }

    async fn persist(&self, records: Vec<crate::store::Record>) -> Result<(), StoreError> {
        let store = self.store.clone();
        self.retry(|| store.commit(records.clone())).await
    }

    /// Handle one message into `round`. Answers wait for the round's commit, so
    /// nobody hears of a state that is not durable yet.
    fn message(&mut self, msg: Msg, round: &mut Round) {
        match msg {
            Msg::Input(input) => self.handle(input, round),
            Msg::Session { session, input } => {
                match &input {
                    Input::AgentUp { agent, .. } => {
                        self.up.insert(*agent, session);
                    }
                    Input::AgentDown { agent } => {
                        if self.up.get(agent).is_some_and(|&up| up > session) {
                            // A newer session is up already: this one's end changes nothing.
                            round.messages += 1;
                            return;
                        }
                        self.up.remove(agent);
                    }
                    _ => {}
                }
                self.handle(input, round);
            }
            Msg::Submit { build, jobs, reply } => {
                self.handle(Input::Submit { build, jobs }, round);
                round.after.push(After::Submitted(reply));
            }
            Msg::Notes { build, reply } => round.reply(reply, self.scheduler.notes(build)),
            Msg::MayLog {
                agent,
                job,
                attempt,
                reply,
            } => round.reply(reply, self.scheduler.may_log(agent, job, attempt)),
            Msg::Active { build, reply } => round.reply(reply, self.scheduler.active(build)),
            Msg::Snapshot { reply } => round.reply(reply, self.scheduler.snapshot()),
            Msg::NeedsContext {
                agent,
                digest,
                reply,
            } => round.reply(reply, self.scheduler.needs_context(agent, &digest)),
            Msg::Holding { reply } => round.reply(reply, self.scheduler.holding()),
        }
    }

    /// One input through the scheduler: its records join the round's commit, the
    /// rest of its outputs wait for it.
    fn handle(&mut self, input: Input, round: &mut Round) {
        let outputs = self.scheduler.handle(input, now());
        self.observe(&outputs);
        round.messages += 1;
        for output in outputs {
            match output {
                Output::Persist(records) => round.records.extend(records),
                Output::Send { agent, msg } => {
                    if matches!(msg, helix_protocol::wire::CoordinatorToAgent::Assign(_)) {
                        round.assigns += 1;
                    }
                    // For the session the scheduler knows now, not one that comes up
                    // later in the round.
                    let session = self.up.get(&agent).copied();
                    round.after.push(After::Send {
                        agent,
                        session,
                        msg,
                    });
                }
                Output::Assemble { build, jobs } => {
                    round.after.push(After::Assemble { build, jobs });
                }
                Output::BuildDone { build, jobs } => {
                    round.after.push(After::BuildDone { build, jobs });
                }
            }
        }
    }

    /// Commit the round's records in one transaction, then act: send, start
    /// assemblies, announce finished builds and answer requests, in order.
    async fn finish(&mut self, round: Round) -> Result<(), StoreError> {
        let Round {
            records,
            after,
            assigns,
            started,
            ..
        } = round;
        if !records.is_empty() {
            if let Err(e) = self.persist(coalesce(records)).await {
                for a in after {
                    if let After::Submitted(reply) = a {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
                return Err(e);
            }
        }
        for a in after {
            match a {
                After::Send {
                    agent,
                    session,
                    msg,
                } => self.send(agent, session, msg),
                After::Assemble { build, jobs } => {
                    let assembler = self.assembler.clone();
                    let id = build.id;
                    info!(build = %id, "assembling the image index");
                    self.assemblies
                        .spawn(async move { (id, assembler.assemble(&build, &jobs).await) });
                }
                After::BuildDone { build, jobs } => {
                    for job in jobs {
                        self.logs.close(job);
                    }
                    let _ = self.done.send(build);
                }
                After::Submitted(reply) => {
                    let _ = reply.send(Ok(()));
                }
                After::Reply(reply) => reply(),
            }
        }
        if assigns > 0 {
            // From the round's first event to its assignments being committed and
            // handed to the agents' sessions.
            let secs = started.elapsed().as_secs_f64();
            for _ in 0..assigns {
                self.shared.metrics.dispatch_latency.observe(secs);
            }
        }
        Ok(())
    }

    /// Hand `msg` to the agent's session `session`; the session writes it promptly.
    fn send(
        &self,
        agent: AgentId,
        session: Option<u64>,
        msg: helix_protocol::wire::CoordinatorToAgent,
    ) {
        let session = self
            .shared
            .sessions
            .lock()
            .expect("sessions lock poisoned")
            .get(&agent)
            .filter(|h| session.is_some_and(|s| s == h.session))
            .map(|h| (h.tx.clone(), h.conn.clone()));
        match session {
            Some((tx, conn)) => match tx.try_send(msg) {
                Ok(()) => {}
                // A session that does not keep up must not lose a message
                // silently (an assignment the agent never hears of would sit
                // until the build times out): close it. The scheduler hears
                // AgentDown; the agent reconnects and says what it holds.
                Err(mpsc::error::TrySendError::Full(_)) => {
                    warn!(%agent, "agent session queue full; closing the session so the agent reconnects");
                    conn.close(
                        helix_protocol::wire::close::TOO_SLOW.into(),
                        b"not reading its messages; reconnect",
                    );
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    info!(%agent, "agent session ended; message dropped");
                }
            },
            None => {
                info!(%agent, "agent not connected (or reconnecting); message dropped")
            }
        }
    }

    /// Counters and histograms from the job records about to be persisted.
    fn observe(&self, outputs: &[Output]) {
        use crate::metrics::{ResultPlatform, ResultReason};
        use helix_protocol::{FailureKind, JobState};
        let m = &self.shared.metrics;
        let now = now();
        for o in outputs {
            let Output::Persist(records) = o else {
                continue;
            };
            for r in records {
                let crate::store::Record::Job(job) = r else {
                    continue;
                };
                let platform = job.platform().to_string();
                match job.state() {
                    JobState::Assigned { since, .. } => {
                        let queued_at = job
                            .history()
                            .last()
                            .map(|h| h.ended)
                            .unwrap_or(job.created_at())
                            .max(job.created_at());
                        m.queue_wait
                            .observe(since.saturating_since(queued_at).as_secs_f64());
                    }
                    state if state.is_terminal() => {
                        let (result, reason) = match state {
                            JobState::Succeeded {
                                cached_from: Some(_),
                                ..
                            } => ("succeeded", "cached"),
                            JobState::Succeeded { .. } => ("succeeded", "built"),
                            JobState::Failed { failure } if failure.kind == FailureKind::Build => {
                                ("failed", "build")
                            }
                            JobState::Failed { .. } => ("failed", "infrastructure"),
                            _ => ("cancelled", "cancelled"),
                        };
                        m.jobs_finished
                            .get_or_create(&ResultReason {
                                result: result.into(),
                                reason: reason.into(),
                            })
                            .inc();
                        m.job_duration
                            .get_or_create(&ResultPlatform {
                                result: result.into(),
                                platform,
                            })
                            .observe(now.saturating_since(job.created_at()).as_secs_f64());
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
