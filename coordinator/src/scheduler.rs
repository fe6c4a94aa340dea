//! The scheduling core: every decision about builds, jobs and agents, with no I/O.
//!
//! It takes [`Input`]s (a submit, an agent connecting, a report, a tick of the clock)
//! with the time passed in, updates its in-memory view, and returns [`Output`]s for
//! the driver ([`crate::engine`]) to carry out in order: persist records, send
//! messages to agents, start an assembly. Because it never touches the store, the
//! network or the clock, every policy here is tested deterministically with fake
//! agents and a virtual clock (see `scheduler/tests.rs`).
//!
//! Ordering guarantee the driver relies on: a `Persist` always comes before the
//! `Send` that acts on it, so nothing is sent that a crash could forget.
//!
//! Policy:
//! - FIFO across builds (oldest first), then platform order within a build.
//! - A job goes to a connected, schedulable agent whose platforms `can_build` it and
//!   which has a free slot; among those, the one that most recently built the same
//!   source for the same platform (warm layer cache), then the least loaded, then the
//!   lowest id (determinism).
//! - An agent lost mid-job keeps its jobs for a grace period; if it comes back and
//!   reports them they go on, otherwise they are requeued with attempt + 1, at most
//!   `max_attempts` times. Build errors are never retried; infrastructure errors are.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use helix_protocol::build::Source;
use helix_protocol::wire::{Assignment, CoordinatorToAgent, HeldJob, JobOutcome, PinnedSource};
use helix_protocol::{
    AgentId, Build, BuildId, BuildPhase, Digest, FailureKind, Job, JobEvent, JobFailure, JobId,
    JobState, Platform, Timestamp, TransitionError,
};
use tracing::{info, warn};

use crate::store::Record;
use helix_protocol::cache::CacheEntry;

/// Tunables of the policy.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// How long a lost agent's jobs wait for it to come back before being requeued.
    pub grace: Duration,
    /// Attempts per job before it fails for good (infrastructure failures only).
    pub max_attempts: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            grace: Duration::from_secs(60),
            max_attempts: 3,
        }
    }
}

/// Something that happened.
#[derive(Debug, Clone)]
pub enum Input {
    /// A new build (already validated, pinned, not yet stored).
    Submit {
        build: Build,
        jobs: Vec<Job>,
    },
    /// A build loaded from the store at start-up.
    Resume {
        build: Build,
        jobs: Vec<Job>,
    },
    AgentUp {
        agent: AgentId,
        platforms: Vec<Platform>,
        capacity: u32,
        schedulable: bool,
        held: Vec<HeldJob>,
        /// Its builder backend (`buildah`, `podman`): results are cached per builder.
        builder: String,
    },
    AgentDown {
        agent: AgentId,
    },
    /// An operator cordoned, drained, uncordoned or revoked the agent.
    AgentSchedulable {
        agent: AgentId,
        schedulable: bool,
    },
    Started {
        agent: AgentId,
        job: JobId,
        attempt: u32,
    },
    Finished {
        agent: AgentId,
        job: JobId,
        attempt: u32,
        outcome: JobOutcome,
    },
    Cancel {
        build: BuildId,
        reason: String,
    },
    /// The assembly of a build ended.
    Assembled {
        build: BuildId,
        result: Result<Digest, String>,
    },
    /// Time passed (grace periods).
    Tick,
}

/// Something the driver must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Commit these records before doing anything that follows.
    Persist(Vec<Record>),
    /// Send to a connected agent (dropped if it is gone: the scheduler hears of that).
    Send {
        agent: AgentId,
        msg: CoordinatorToAgent,
    },
    /// Fetch the per-platform manifests, check them, push the index.
    Assemble { build: Box<Build>, jobs: Vec<Job> },
    /// The build reached a terminal state (wake up waiters, close its jobs' logs).
    BuildDone { build: BuildId, jobs: Vec<JobId> },
}

impl PartialEq for Record {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Record::Build(a), Record::Build(b)) => a == b,
            (Record::Job(a), Record::Job(b)) => a == b,
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
struct AgentView {
    platforms: Vec<Platform>,
    capacity: u32,
    schedulable: bool,
    connected: bool,
    /// Jobs it holds (assigned or running), current attempts only.
    holding: BTreeSet<JobId>,
    /// When it was lost, while it is.
    lost_at: Option<Timestamp>,
    /// Warm cache: (source key, platform) → when it last built it.
    warm: HashMap<(String, Platform), Timestamp>,
    /// Its builder backend, from its last Hello.
    builder: String,
}

impl AgentView {
    /// An agent the scheduler has not heard a Hello from yet.
    fn new(schedulable: bool) -> AgentView {
        AgentView {
            platforms: Vec::new(),
            capacity: 0,
            schedulable,
            connected: false,
            holding: BTreeSet::new(),
            lost_at: None,
            warm: HashMap::new(),
            builder: String::new(),
        }
    }

    fn free_slots(&self) -> u32 {
        self.capacity
            .saturating_sub(u32::try_from(self.holding.len()).unwrap_or(u32::MAX))
    }
    fn can_take(&self, platform: &Platform) -> bool {
        self.connected
            && self.schedulable
            && self.free_slots() > 0
            && self.platforms.iter().any(|p| p.can_build(platform))
    }
}

/// What [`Scheduler::snapshot`] reports.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Active jobs by (state, platform).
    pub jobs: BTreeMap<(String, String), u64>,
    /// Queued jobs per platform that no connected, schedulable agent can build.
    pub unplaceable: BTreeMap<String, u64>,
    pub agents: Vec<AgentSlots>,
    pub queued: usize,
}

/// One agent's slots as the scheduler sees them.
#[derive(Debug, Clone)]
pub struct AgentSlots {
    pub agent: AgentId,
    pub connected: bool,
    pub schedulable: bool,
    pub capacity: u32,
    pub used: u32,
}

/// Queue order: oldest build first, then the build's platform order.
type QueueKey = (Timestamp, BuildId, usize, JobId);

/// The scheduling state and policy.
#[derive(Debug, Default)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    builds: HashMap<BuildId, Build>,
    jobs: HashMap<JobId, Job>,
    queue: BTreeSet<QueueKey>,
    agents: BTreeMap<AgentId, AgentView>,
}

/// The source key for warm-cache preference: the same repository (or context) and
/// platform is likely to reuse layers.
fn source_key(build: &Build) -> String {
    crate::cache::source_repository(build)
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig) -> Scheduler {
        Scheduler {
            cfg,
            ..Default::default()
        }
    }

    /// Handle one input at time `now`; the outputs are to be carried out in order.
    pub fn handle(&mut self, input: Input, now: Timestamp) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Submit { build, jobs } => {
                let mut records = vec![Record::Build(build.clone())];
                records.extend(jobs.iter().cloned().map(Record::Job));
                out.push(Output::Persist(records));
                self.admit(build, jobs, now, &mut out);
            }
            Input::Resume { build, jobs } => self.admit(build, jobs, now, &mut out),
            Input::AgentUp {
                agent,
                platforms,
                capacity,
                schedulable,
                held,
                builder,
            } => {
                self.agent_up(agent, platforms, capacity, schedulable, held, now, &mut out);
                if let Some(view) = self.agents.get_mut(&agent) {
                    view.builder = builder;
                }
            }
            Input::AgentDown { agent } => {
                if let Some(view) = self.agents.get_mut(&agent) {
                    view.connected = false;
                    view.lost_at = Some(now);
                    if !view.holding.is_empty() {
                        info!(%agent, jobs = view.holding.len(), grace = ?self.cfg.grace, "agent lost with jobs; waiting for it to come back");
                    }
                }
                self.expire_grace(now, &mut out);
            }
            Input::AgentSchedulable { agent, schedulable } => {
                if let Some(view) = self.agents.get_mut(&agent) {
                    view.schedulable = schedulable;
                }
            }
            Input::Started {
                agent,
                job,
                attempt,
            } => {
                self.apply(
                    job,
                    JobEvent::Start {
                        agent,
                        attempt,
                        at: now,
                    },
                    &mut out,
                );
            }
            Input::Finished {
                agent,
                job,
                attempt,
                outcome,
            } => self.finished(agent, job, attempt, outcome, now, &mut out),
            Input::Cancel { build, reason } => self.cancel_build(build, &reason, now, &mut out),
            Input::Assembled { build, result } => self.assembled(build, result, now, &mut out),
            Input::Tick => {
                self.expire_grace(now, &mut out);
                self.expire_builds(now, &mut out);
            }
        }
        self.dispatch(now, &mut out);
        out
    }

    fn admit(&mut self, build: Build, jobs: Vec<Job>, now: Timestamp, out: &mut Vec<Output>) {
        for (i, job) in jobs.into_iter().enumerate() {
            if matches!(job.state(), JobState::Queued) {
                self.queue.insert((build.created_at, build.id, i, job.id()));
            }
            if let Some(agent) = job.state().agent() {
                // Held by an agent that has not said Hello yet (after a restart): it
                // gets the grace period to come back, starting now.
                let view = self
                    .agents
                    .entry(agent)
                    .or_insert_with(|| AgentView::new(false));
                view.holding.insert(job.id());
                if !view.connected && view.lost_at.is_none() {
                    view.lost_at = Some(now);
                }
            }
            self.jobs.insert(job.id(), job);
        }
        let id = build.id;
        let assembling = build.phase == BuildPhase::Assembling;
        self.builds.insert(id, build);
        if assembling {
            self.start_assembly(id, out);
        } else {
            // A resumed build may already be finished in every job (crash between the
            // last job's commit and the build's).
            self.settle_build(id, now, out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn agent_up(
        &mut self,
        agent: AgentId,
        platforms: Vec<Platform>,
        capacity: u32,
        schedulable: bool,
        held: Vec<HeldJob>,
        now: Timestamp,
        out: &mut Vec<Output>,
    ) {
        let view = self
            .agents
            .entry(agent)
            .or_insert_with(|| AgentView::new(schedulable));
        view.platforms = platforms;
        view.capacity = capacity;
        view.schedulable = schedulable;
        view.connected = true;
        view.lost_at = None;
        let ours: BTreeSet<JobId> = view.holding.clone();
        // Keyed by (job, attempt): an agent that reports a stale attempt of a job has
        // not reported the attempt it holds now.
        let mut reported: BTreeSet<(JobId, u32)> = BTreeSet::new();
        for h in held {
            reported.insert((h.job, h.attempt));
            let current = self
                .jobs
                .get(&h.job)
                .map(|j| (j.attempt(), j.state().agent()));
            match (current, h.outcome) {
                (Some((attempt, Some(holder))), None)
                    if attempt == h.attempt && holder == agent =>
                {
                    info!(%agent, job = %h.job, "re-attached a running job");
                }
                (Some((attempt, Some(holder))), Some(outcome))
                    if attempt == h.attempt && holder == agent =>
                {
                    self.finished(agent, h.job, h.attempt, outcome, now, out);
                }
                (_, Some(_)) => {
                    // A result nobody waits for any more: let the agent forget it.
                    info!(%agent, job = %h.job, attempt = h.attempt, "ignored a stale result");
                    out.push(Output::Send {
                        agent,
                        msg: CoordinatorToAgent::Ack {
                            job: h.job,
                            attempt: h.attempt,
                        },
                    });
                }
                (_, None) => {
                    info!(%agent, job = %h.job, attempt = h.attempt, "the agent runs a job that is no longer its own; cancelling it");
                    out.push(Output::Send {
                        agent,
                        msg: CoordinatorToAgent::Cancel {
                            job: h.job,
                            attempt: h.attempt,
                            reason: "the job was given to another agent".into(),
                        },
                    });
                }
            }
        }
        // Jobs we thought it held but it does not know: it restarted and lost them.
        let lost: Vec<JobId> = ours
            .into_iter()
            .filter(|j| {
                let attempt = self.jobs.get(j).map(|x| x.attempt()).unwrap_or(0);
                !reported.contains(&(*j, attempt))
            })
            .collect();
        for job in &lost {
            self.requeue(
                *job,
                "the agent came back without the job (restarted)",
                now,
                out,
            );
        }
    }

    fn finished(
        &mut self,
        agent: AgentId,
        job_id: JobId,
        attempt: u32,
        outcome: JobOutcome,
        now: Timestamp,
        out: &mut Vec<Output>,
    ) {
        let ack = Output::Send {
            agent,
            msg: CoordinatorToAgent::Ack {
                job: job_id,
                attempt,
            },
        };
        let Some(job) = self.jobs.get(&job_id) else {
            // A job of a build that is over (or unknown): nothing to record.
            info!(%agent, job = %job_id, attempt, "ignored a report for a job whose build is over");
            out.push(ack);
            return;
        };
        let event = match outcome {
            JobOutcome::Succeeded(result) => JobEvent::Succeed {
                agent,
                attempt,
                result,
                at: now,
            },
            JobOutcome::Failed(failure) => {
                let retry = failure.kind == FailureKind::Infrastructure
                    && job.attempt() < self.cfg.max_attempts;
                let current = job.attempt() == attempt && job.state().agent() == Some(agent);
                if retry && current {
                    self.requeue(
                        job_id,
                        &format!("infrastructure failure: {}", failure.message),
                        now,
                        out,
                    );
                    out.push(ack);
                    return;
                }
                JobEvent::Fail {
                    agent,
                    attempt,
                    failure,
                    at: now,
                }
            }
            JobOutcome::Cancelled
                if job.attempt() != attempt || job.state().agent() != Some(agent) =>
            {
                info!(%agent, job = %job_id, attempt, "ignored a stale cancel report");
                out.push(ack);
                return;
            }
            JobOutcome::Cancelled => JobEvent::Cancel {
                reason: "cancelled on the agent".into(),
                at: now,
            },
        };
        if let JobEvent::Succeed { .. } = &event {
            if let Some(build) = self.builds.get(&job.build()) {
                let key = (source_key(build), job.platform().clone());
                if let Some(view) = self.agents.get_mut(&agent) {
                    view.warm.insert(key, now);
                }
            }
        }
        self.apply(job_id, event, out);
        out.push(ack);
    }

    /// Apply an event to a job; persist it and settle its build. Stale or illegal
    /// events are logged and dropped.
    fn apply(&mut self, job_id: JobId, event: JobEvent, out: &mut Vec<Output>) -> bool {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return false;
        };
        let holder = job.state().agent();
        let at = event.at();
        match job.transition(event) {
            Ok(()) => {}
            Err(
                e @ (TransitionError::StaleAttempt { .. } | TransitionError::WrongAgent { .. }),
            ) => {
                info!("{e}");
                return false;
            }
            Err(e) => {
                // Duplicates (a second Started) land here; harmless.
                info!("{e}");
                return false;
            }
        }
        let job = job.clone();
        if let Some(h) = holder {
            if job.state().agent() != Some(h) {
                if let Some(view) = self.agents.get_mut(&h) {
                    view.holding.remove(&job_id);
                }
            }
        }
        let build_id = job.build();
        out.push(Output::Persist(vec![Record::Job(job)]));
        self.settle_build(build_id, at, out);
        true
    }

    fn requeue(&mut self, job_id: JobId, reason: &str, now: Timestamp, out: &mut Vec<Output>) {
        let Some(job) = self.jobs.get(&job_id) else {
            return;
        };
        if job.attempt() >= self.cfg.max_attempts {
            let mut history: Vec<String> = job
                .history()
                .iter()
                .map(|h| format!("attempt {} on {}: {}", h.attempt, h.agent, h.outcome))
                .collect();
            history.push(format!("attempt {}: {reason}", job.attempt()));
            let failure = JobFailure {
                kind: FailureKind::Infrastructure,
                message: format!(
                    "gave up after {} attempts ({})",
                    job.attempt(),
                    history.join("; ")
                ),
                exit_code: None,
            };
            self.apply(job_id, JobEvent::Abort { failure, at: now }, out);
            return;
        }
        if self.apply(
            job_id,
            JobEvent::Requeue {
                reason: reason.to_string(),
                at: now,
            },
            out,
        ) {
            if let Some(job) = self.jobs.get(&job_id) {
                if let Some(build) = self.builds.get(&job.build()) {
                    let idx = build.jobs.iter().position(|j| *j == job_id).unwrap_or(0);
                    self.queue.insert((build.created_at, build.id, idx, job_id));
                }
            }
        }
    }

    fn expire_grace(&mut self, now: Timestamp, out: &mut Vec<Output>) {
        let expired: Vec<(AgentId, Vec<JobId>)> = self
            .agents
            .iter()
            .filter(|(_, v)| {
                !v.connected
                    && v.lost_at
                        .is_some_and(|t| now.saturating_since(t) >= self.cfg.grace)
            })
            .filter(|(_, v)| !v.holding.is_empty())
            .map(|(id, v)| (*id, v.holding.iter().copied().collect()))
            .collect();
        for (agent, jobs) in expired {
            for job in jobs {
                warn!(%agent, %job, "agent did not come back within the grace period; requeueing its job");
                self.requeue(job, &format!("agent {agent} lost"), now, out);
            }
        }
    }

    /// Fail builds that ran past their timeout: their jobs are cancelled on the agents.
    fn expire_builds(&mut self, now: Timestamp, out: &mut Vec<Output>) {
        let expired: Vec<(BuildId, u64)> = self
            .builds
            .values()
            .filter(|b| {
                now >= b
                    .created_at
                    .saturating_add(Duration::from_secs(b.spec.timeout_secs))
            })
            .map(|b| (b.id, b.spec.timeout_secs))
            .collect();
        for (id, secs) in expired {
            let reason = format!(
                "timed out after {}",
                humantime::format_duration(Duration::from_secs(secs))
            );
            warn!(build = %id, "{reason}");
            let job_ids = self
                .builds
                .get(&id)
                .map(|b| b.jobs.clone())
                .unwrap_or_default();
            for job in job_ids {
                self.cancel_job(job, &reason, now, out);
            }
            if let Some(build) = self.builds.get_mut(&id) {
                build.phase = BuildPhase::Failed { reason };
                build.updated_at = now;
                out.push(Output::Persist(vec![Record::Build(build.clone())]));
            }
            self.retire(id, out);
        }
    }

    fn cancel_build(
        &mut self,
        build_id: BuildId,
        reason: &str,
        now: Timestamp,
        out: &mut Vec<Output>,
    ) {
        let Some(build) = self.builds.get(&build_id) else {
            return;
        };
        let job_ids = build.jobs.clone();
        for job_id in job_ids {
            self.cancel_job(job_id, reason, now, out);
        }
        if let Some(build) = self.builds.get_mut(&build_id) {
            if !matches!(
                build.phase,
                BuildPhase::Succeeded { .. }
                    | BuildPhase::Failed { .. }
                    | BuildPhase::Cancelled { .. }
            ) {
                build.phase = BuildPhase::Cancelled {
                    reason: reason.to_string(),
                };
                build.updated_at = now;
                let b = build.clone();
                out.push(Output::Persist(vec![Record::Build(b)]));
                self.retire(build_id, out);
            }
        }
    }

    fn cancel_job(&mut self, job_id: JobId, reason: &str, now: Timestamp, out: &mut Vec<Output>) {
        let Some(job) = self.jobs.get(&job_id) else {
            return;
        };
        if job.state().is_terminal() {
            return;
        }
        let holder = job.state().agent().map(|a| (a, job.attempt()));
        let job_build = job.build();
        if let Some(build) = self.builds.get(&job_build) {
            let idx = build.jobs.iter().position(|j| *j == job_id).unwrap_or(0);
            self.queue
                .remove(&(build.created_at, build.id, idx, job_id));
        }
        // Record the cancel without settling the build: the caller decides its phase.
        if let Some(job) = self.jobs.get_mut(&job_id) {
            if job
                .transition(JobEvent::Cancel {
                    reason: reason.to_string(),
                    at: now,
                })
                .is_ok()
            {
                out.push(Output::Persist(vec![Record::Job(job.clone())]));
            }
        }
        if let Some((agent, attempt)) = holder {
            if let Some(view) = self.agents.get_mut(&agent) {
                view.holding.remove(&job_id);
            }
            out.push(Output::Send {
                agent,
                msg: CoordinatorToAgent::Cancel {
                    job: job_id,
                    attempt,
                    reason: reason.to_string(),
                },
            });
        }
    }

    /// Move a build forward after one of its jobs changed: fail fast on a failure,
    /// start the assembly when every job succeeded.
    fn settle_build(&mut self, build_id: BuildId, now: Timestamp, out: &mut Vec<Output>) {
        let Some(build) = self.builds.get(&build_id) else {
            return;
        };
        if build.phase != BuildPhase::Building {
            return;
        }
        let jobs: Vec<&Job> = build.jobs.iter().filter_map(|j| self.jobs.get(j)).collect();
        let failed = jobs.iter().find_map(|j| match j.state() {
            JobState::Failed { failure } => {
                Some(format!("{} failed: {}", j.platform(), failure.message))
            }
            JobState::Cancelled { reason } => {
                Some(format!("{} was cancelled: {reason}", j.platform()))
            }
            _ => None,
        });
        let all_done = jobs.iter().all(|j| j.state().is_terminal());
        let all_ok = jobs
            .iter()
            .all(|j| matches!(j.state(), JobState::Succeeded { .. }));
        let fail_fast = build.spec.fail_fast;
        let now = now.max(build.updated_at);
        if let Some(reason) = failed {
            if fail_fast || all_done {
                let others: Vec<JobId> = build.jobs.clone();
                for j in others {
                    self.cancel_job(j, "another platform of the build failed", now, out);
                }
                if let Some(build) = self.builds.get_mut(&build_id) {
                    build.phase = BuildPhase::Failed { reason };
                    build.updated_at = now;
                    out.push(Output::Persist(vec![Record::Build(build.clone())]));
                }
                self.retire(build_id, out);
            }
        } else if all_ok {
            if let Some(build) = self.builds.get_mut(&build_id) {
                build.phase = BuildPhase::Assembling;
                build.updated_at = now;
                out.push(Output::Persist(vec![Record::Build(build.clone())]));
            }
            self.start_assembly(build_id, out);
        }
    }

    fn start_assembly(&mut self, build_id: BuildId, out: &mut Vec<Output>) {
        let Some(build) = self.builds.get(&build_id) else {
            return;
        };
        let jobs = build
            .jobs
            .iter()
            .filter_map(|j| self.jobs.get(j).cloned())
            .collect();
        out.push(Output::Assemble {
            build: Box::new(build.clone()),
            jobs,
        });
    }

    fn assembled(
        &mut self,
        build_id: BuildId,
        result: Result<Digest, String>,
        now: Timestamp,
        out: &mut Vec<Output>,
    ) {
        let Some(build) = self.builds.get_mut(&build_id) else {
            return;
        };
        if build.phase != BuildPhase::Assembling {
            return;
        }
        let succeeded = result.is_ok();
        build.phase = match result {
            Ok(index_digest) => BuildPhase::Succeeded { index_digest },
            Err(reason) => BuildPhase::Failed { reason },
        };
        build.updated_at = now;
        let no_cache = build.spec.no_cache;
        let mut records = vec![Record::Build(build.clone())];
        if succeeded && !no_cache {
            records.extend(
                self.cache_entries(build_id, now)
                    .into_iter()
                    .map(Record::Cache),
            );
        }
        out.push(Output::Persist(records));
        self.retire(build_id, out);
    }

    /// Cache entries for the jobs of a build whose images were just verified: the
    /// jobs an agent built (not those served from the cache), when the agent's
    /// builder is known.
    fn cache_entries(&self, build_id: BuildId, now: Timestamp) -> Vec<CacheEntry> {
        let Some(build) = self.builds.get(&build_id) else {
            return Vec::new();
        };
        let repository = build.spec.tag.repository_ref();
        build
            .jobs
            .iter()
            .filter_map(|j| self.jobs.get(j))
            .filter_map(|job| match job.state() {
                JobState::Succeeded {
                    agent,
                    result,
                    cached_from: None,
                } => {
                    let builder = self
                        .agents
                        .get(agent)
                        .map(|v| v.builder.clone())
                        .filter(|b| !b.is_empty())?;
                    Some(CacheEntry {
                        key: crate::cache::key_for(build, job.platform(), &builder),
                        repository: repository.clone(),
                        platform: job.platform().clone(),
                        result: result.clone(),
                        build: build.id,
                        agent: *agent,
                        builder,
                        created_at: now,
                        last_used: now,
                    })
                }
                _ => None,
            })
            .collect()
    }

    /// Forget a terminal build and its jobs.
    fn retire(&mut self, build_id: BuildId, out: &mut Vec<Output>) {
        if let Some(build) = self.builds.remove(&build_id) {
            for (i, j) in build.jobs.iter().enumerate() {
                self.queue.remove(&(build.created_at, build.id, i, *j));
                self.jobs.remove(j);
                for view in self.agents.values_mut() {
                    view.holding.remove(j);
                }
            }
            out.push(Output::BuildDone {
                build: build_id,
                jobs: build.jobs.clone(),
            });
        }
    }

    /// Give queued jobs to agents, oldest build first.
    ///
    /// Runs after every input, so it stops as soon as no agent has a free slot: with
    /// a backlog (all slots busy, thousands queued) most inputs then cost nothing
    /// here, instead of a walk of the whole queue against every agent.
    fn dispatch(&mut self, now: Timestamp, out: &mut Vec<Output>) {
        let mut free: u64 = self
            .agents
            .values()
            .filter(|v| v.connected && v.schedulable)
            .map(|v| u64::from(v.free_slots()))
            .sum();
        if free == 0 || self.queue.is_empty() {
            return;
        }
        let queued: Vec<QueueKey> = self.queue.iter().cloned().collect();
        // Platforms no agent could take in this pass: they stay so until it ends
        // (assignments only use slots up), so their other jobs are skipped unlooked.
        let mut unplaceable: Vec<Platform> = Vec::new();
        for key in queued {
            if free == 0 {
                break;
            }
            let job_id = key.3;
            let Some(job) = self.jobs.get(&job_id) else {
                self.queue.remove(&key);
                continue;
            };
            if unplaceable.contains(job.platform()) {
                continue;
            }
            let Some(build) = self.builds.get(&job.build()) else {
                continue;
            };
            let platform = job.platform().clone();
            let warm_key = (source_key(build), platform.clone());
            let best = self
                .agents
                .iter()
                .filter(|(_, v)| v.can_take(&platform))
                .min_by(|(a_id, a), (b_id, b)| {
                    let a_warm = a.warm.get(&warm_key);
                    let b_warm = b.warm.get(&warm_key);
                    // Most recently warm first (None sorts last), then load, then id.
                    b_warm
                        .cmp(&a_warm)
                        .then(
                            (a.holding.len() as u64 * u64::from(b.capacity.max(1)))
                                .cmp(&(b.holding.len() as u64 * u64::from(a.capacity.max(1)))),
                        )
                        .then(a_id.cmp(b_id))
                })
                .map(|(id, _)| *id);
            let Some(agent) = best else {
                unplaceable.push(platform);
                continue;
            };
            self.queue.remove(&key);
            let assignment = assignment_for(build, job);
            if self.apply(job_id, JobEvent::Assign { agent, at: now }, out) {
                if let Some(view) = self.agents.get_mut(&agent) {
                    view.holding.insert(job_id);
                }
                let attempt = self.jobs.get(&job_id).map(|j| j.attempt()).unwrap_or(1);
                let mut assignment = assignment;
                assignment.attempt = attempt;
                out.push(Output::Send {
                    agent,
                    msg: CoordinatorToAgent::Assign(Box::new(assignment)),
                });
                free -= 1;
            }
        }
    }

    /// Why a build's queued jobs are waiting, for `build get`.
    pub fn notes(&self, build_id: BuildId) -> Vec<String> {
        let Some(build) = self.builds.get(&build_id) else {
            return Vec::new();
        };
        let mut notes = Vec::new();
        for job in build.jobs.iter().filter_map(|j| self.jobs.get(j)) {
            if !matches!(job.state(), JobState::Queued) {
                continue;
            }
            let p = job.platform();
            let able: Vec<&AgentView> = self
                .agents
                .values()
                .filter(|v| {
                    v.connected && v.schedulable && v.platforms.iter().any(|x| x.can_build(p))
                })
                .collect();
            if able.is_empty() {
                notes.push(format!("waiting for an agent that can build {p}"));
            } else {
                notes.push(format!(
                    "waiting for a free slot on one of {} agents that can build {p}",
                    able.len()
                ));
            }
        }
        notes
    }

    /// Whether `agent` holds `job` at `attempt` (log streams are accepted only then).
    /// Whether `agent` may stream the log of `job`'s `attempt`: it holds it now, or
    /// the attempt has ended (a log resent after a reconnect).
    pub fn may_log(&self, agent: AgentId, job: JobId, attempt: u32) -> Option<bool> {
        let j = self.jobs.get(&job)?;
        Some(
            j.attempt() == attempt && (j.state().agent() == Some(agent) || j.state().is_terminal()),
        )
    }

    /// The live copy of an active build and its jobs.
    pub fn active(&self, build_id: BuildId) -> Option<(Build, Vec<Job>)> {
        let build = self.builds.get(&build_id)?;
        let jobs = build
            .jobs
            .iter()
            .filter_map(|j| self.jobs.get(j).cloned())
            .collect();
        Some((build.clone(), jobs))
    }

    /// Whether `agent` holds a job whose build is made from context `digest` (it may
    /// download only those).
    pub fn needs_context(&self, agent: AgentId, digest: &Digest) -> bool {
        let Some(view) = self.agents.get(&agent) else {
            return false;
        };
        view.holding
            .iter()
            .filter_map(|j| self.jobs.get(j))
            .filter_map(|j| self.builds.get(&j.build()))
            .any(|b| matches!(&b.spec.source, Source::Context { digest: d } if d == digest))
    }

    /// The present state, for metrics: active jobs by (state, platform), queued jobs
    /// no connected agent can build, and each agent's slots.
    pub fn snapshot(&self) -> Snapshot {
        let mut jobs: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut unplaceable: BTreeMap<String, u64> = BTreeMap::new();
        for job in self.jobs.values() {
            *jobs
                .entry((job.state().name().to_string(), job.platform().to_string()))
                .or_default() += 1;
            if matches!(job.state(), JobState::Queued)
                && !self.agents.values().any(|v| {
                    v.connected
                        && v.schedulable
                        && v.platforms.iter().any(|p| p.can_build(job.platform()))
                })
            {
                *unplaceable.entry(job.platform().to_string()).or_default() += 1;
            }
        }
        let agents = self
            .agents
            .iter()
            .map(|(id, v)| AgentSlots {
                agent: *id,
                connected: v.connected,
                schedulable: v.schedulable,
                capacity: v.capacity,
                used: u32::try_from(v.holding.len()).unwrap_or(u32::MAX),
            })
            .collect();
        Snapshot {
            jobs,
            unplaceable,
            agents,
            queued: self.queue.len(),
        }
    }

    /// How many jobs each known agent holds now.
    pub fn holding(&self) -> BTreeMap<AgentId, u32> {
        self.agents
            .iter()
            .map(|(id, v)| (*id, u32::try_from(v.holding.len()).unwrap_or(u32::MAX)))
            .collect()
    }

    /// How many jobs wait in the queue.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

fn assignment_for(build: &Build, job: &Job) -> Assignment {
    let source = match (&build.spec.source, &build.commit) {
        (Source::Git { repo, .. }, Some(commit)) => PinnedSource::Git {
            repo: repo.clone(),
            commit: commit.clone(),
        },
        (Source::Git { repo, reference }, None) => PinnedSource::Git {
            repo: repo.clone(),
            commit: reference.clone(),
        },
        (Source::Context { digest }, _) => PinnedSource::Context {
            digest: digest.clone(),
        },
    };
    Assignment {
        job: job.id(),
        attempt: job.attempt(),
        build: build.id,
        platform: job.platform().clone(),
        source,
        dockerfile: build.spec.dockerfile.clone(),
        build_args: build.spec.build_args.clone(),
        target: build.spec.target.clone(),
        labels: build.spec.labels.clone(),
        destination: build.spec.tag.clone(),
        no_cache: build.spec.no_cache,
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod simulation;
