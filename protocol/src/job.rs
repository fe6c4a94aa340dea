//! One platform of one build, and its lifecycle.
//!
//! ```text
//! Queued ──assign──▶ Assigned ──start──▶ Running ──▶ Succeeded | Failed | Cancelled
//!   ▲                   │                   │
//!   └──── requeue ──────┴───────────────────┘   (agent lost: attempt + 1)
//! ```
//!
//! Every change goes through [`Job::transition`], which refuses illegal moves and
//! reports from a stale attempt or the wrong agent. There are no field setters, so a
//! job's state can never be changed in a way this module has not checked.

use crate::digest::Digest;
use crate::ids::{AgentId, BuildId, JobId};
use crate::platform::Platform;
use crate::time::Timestamp;

/// What an agent pushed for one platform: the manifest it reports by digest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageResult {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

/// Why a job failed, and whether trying again elsewhere could help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FailureKind {
    /// The build itself failed (Dockerfile error, bad source): the same inputs would
    /// fail again, so it is never retried.
    Build,
    /// The infrastructure failed (agent lost, push failed on the network, builder
    /// killed by a signal): another attempt may succeed.
    Infrastructure,
}

/// A failure with what a user needs to act on it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobFailure {
    pub kind: FailureKind,
    pub message: String,
    /// The builder's exit status, when a builder ran and exited.
    pub exit_code: Option<i32>,
}

/// The state of a job, carrying the data that only makes sense in that state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum JobState {
    Queued,
    Assigned {
        agent: AgentId,
        since: Timestamp,
    },
    Running {
        agent: AgentId,
        since: Timestamp,
    },
    Succeeded {
        agent: AgentId,
        result: ImageResult,
        /// Set when the result came from the result cache: the build that produced it
        /// (`agent` is the agent that built it then).
        #[serde(default)]
        cached_from: Option<BuildId>,
    },
    Failed {
        failure: JobFailure,
    },
    Cancelled {
        reason: String,
    },
}

impl JobState {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobState::Succeeded { .. } | JobState::Failed { .. } | JobState::Cancelled { .. }
        )
    }

    /// The agent holding the current attempt, if any.
    pub fn agent(&self) -> Option<AgentId> {
        match self {
            JobState::Assigned { agent, .. } | JobState::Running { agent, .. } => Some(*agent),
            _ => None,
        }
    }

    /// A short lower-case name (`queued`, `running`, ...) for listings and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Assigned { .. } => "assigned",
            JobState::Running { .. } => "running",
            JobState::Succeeded { .. } => "succeeded",
            JobState::Failed { .. } => "failed",
            JobState::Cancelled { .. } => "cancelled",
        }
    }
}

/// One finished attempt, kept so `build get` can explain retries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub agent: AgentId,
    pub started: Timestamp,
    pub ended: Timestamp,
    pub outcome: String,
}

/// Something that happens to a job. Events that come from an agent name the agent
/// and the attempt they are about, so a late report can be told from a current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEvent {
    /// The scheduler gave the current attempt to `agent`.
    Assign { agent: AgentId, at: Timestamp },
    /// The agent reported that it started.
    Start {
        agent: AgentId,
        attempt: u32,
        at: Timestamp,
    },
    /// The agent reported the pushed image.
    Succeed {
        agent: AgentId,
        attempt: u32,
        result: ImageResult,
        at: Timestamp,
    },
    /// The agent reported a failure.
    Fail {
        agent: AgentId,
        attempt: u32,
        failure: JobFailure,
        at: Timestamp,
    },
    /// The coordinator gives up on the current attempt (agent lost) and queues the
    /// job again with attempt + 1.
    Requeue { reason: String, at: Timestamp },
    /// The coordinator fails the job itself (attempts exhausted, timed out).
    Abort { failure: JobFailure, at: Timestamp },
    /// A user or fail-fast cancelled the job.
    Cancel { reason: String, at: Timestamp },
    /// The result cache has this job's image already (built by `agent` in build
    /// `from_build`): the job is done without running.
    FromCache {
        agent: AgentId,
        from_build: BuildId,
        result: ImageResult,
        at: Timestamp,
    },
}

/// Why a transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransitionError {
    #[error("job {job}: cannot {event} a job that is {state}")]
    Illegal {
        job: JobId,
        state: &'static str,
        event: &'static str,
    },
    #[error("job {job}: report for attempt {reported} ignored, the current attempt is {current}")]
    StaleAttempt {
        job: JobId,
        reported: u32,
        current: u32,
    },
    #[error("job {job}: report from agent {reported} ignored, the job is held by {holder:?}")]
    WrongAgent {
        job: JobId,
        reported: AgentId,
        holder: Option<AgentId>,
    },
}

/// One platform of one build.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Job {
    id: JobId,
    build: BuildId,
    platform: Platform,
    attempt: u32,
    state: JobState,
    history: Vec<AttemptRecord>,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl Job {
    /// A new queued job at attempt 1.
    pub fn new(id: JobId, build: BuildId, platform: Platform, now: Timestamp) -> Job {
        Job {
            id,
            build,
            platform,
            attempt: 1,
            state: JobState::Queued,
            history: Vec::new(),
            created_at: now,
            updated_at: now,
        }
    }

    pub fn id(&self) -> JobId {
        self.id
    }
    pub fn build(&self) -> BuildId {
        self.build
    }
    pub fn platform(&self) -> &Platform {
        &self.platform
    }
    /// The current attempt, starting at 1; it only grows.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    pub fn state(&self) -> &JobState {
        &self.state
    }
    /// Earlier attempts that ended without finishing the job.
    pub fn history(&self) -> &[AttemptRecord] {
        &self.history
    }
    pub fn created_at(&self) -> Timestamp {
        self.created_at
    }
    pub fn updated_at(&self) -> Timestamp {
        self.updated_at
    }

    /// Apply `event`, or explain why it does not apply. On error the job is unchanged.
    pub fn transition(&mut self, event: JobEvent) -> Result<(), TransitionError> {
        use JobEvent as E;
        use JobState as S;
        let at = event_time(&event);
        let next = match (&self.state, event) {
            (S::Queued, E::Assign { agent, at }) => S::Assigned { agent, since: at },
            (S::Assigned { .. }, E::Start { agent, attempt, at }) => {
                self.check_report(agent, attempt)?;
                S::Running { agent, since: at }
            }
            (
                S::Assigned { .. } | S::Running { .. },
                E::Succeed {
                    agent,
                    attempt,
                    result,
                    ..
                },
            ) => {
                self.check_report(agent, attempt)?;
                S::Succeeded {
                    agent,
                    result,
                    cached_from: None,
                }
            }
            (
                S::Assigned { .. } | S::Running { .. },
                E::Fail {
                    agent,
                    attempt,
                    failure,
                    ..
                },
            ) => {
                self.check_report(agent, attempt)?;
                S::Failed { failure }
            }
            (
                S::Assigned { agent, since } | S::Running { agent, since },
                E::Requeue { reason, at },
            ) => {
                self.history.push(AttemptRecord {
                    attempt: self.attempt,
                    agent: *agent,
                    started: *since,
                    ended: at,
                    outcome: reason,
                });
                self.attempt += 1;
                S::Queued
            }
            (s, E::Abort { failure, .. }) if !s.is_terminal() => S::Failed { failure },
            (s, E::Cancel { reason, .. }) if !s.is_terminal() => S::Cancelled { reason },
            (
                S::Queued,
                E::FromCache {
                    agent,
                    from_build,
                    result,
                    ..
                },
            ) => S::Succeeded {
                agent,
                result,
                cached_from: Some(from_build),
            },
            (state, event) => {
                // A report about an attempt other than the current one is stale even
                // when the job has moved on to a state where the report is illegal.
                if let Some((agent, attempt)) = report_of(&event) {
                    self.check_report(agent, attempt)?;
                }
                return Err(TransitionError::Illegal {
                    job: self.id,
                    state: state.name(),
                    event: event_name(&event),
                });
            }
        };
        self.state = next;
        self.updated_at = at;
        Ok(())
    }

    fn check_report(&self, agent: AgentId, attempt: u32) -> Result<(), TransitionError> {
        if attempt != self.attempt {
            return Err(TransitionError::StaleAttempt {
                job: self.id,
                reported: attempt,
                current: self.attempt,
            });
        }
        let holder = match &self.state {
            JobState::Assigned { agent, .. }
            | JobState::Running { agent, .. }
            | JobState::Succeeded { agent, .. } => Some(*agent),
            _ => None,
        };
        if holder.is_some_and(|h| h != agent) {
            return Err(TransitionError::WrongAgent {
                job: self.id,
                reported: agent,
                holder,
            });
        }
        Ok(())
    }
}

fn report_of(event: &JobEvent) -> Option<(AgentId, u32)> {
    match event {
        JobEvent::Start { agent, attempt, .. }
        | JobEvent::Succeed { agent, attempt, .. }
        | JobEvent::Fail { agent, attempt, .. } => Some((*agent, *attempt)),
        _ => None,
    }
}

impl JobEvent {
    /// When the event happened.
    pub fn at(&self) -> Timestamp {
        event_time(self)
    }
}

fn event_time(event: &JobEvent) -> Timestamp {
    match event {
        JobEvent::Assign { at, .. }
        | JobEvent::Start { at, .. }
        | JobEvent::Succeed { at, .. }
        | JobEvent::Fail { at, .. }
        | JobEvent::Requeue { at, .. }
        | JobEvent::Abort { at, .. }
        | JobEvent::Cancel { at, .. }
        | JobEvent::FromCache { at, .. } => *at,
    }
}

fn event_name(event: &JobEvent) -> &'static str {
    match event {
        JobEvent::Assign { .. } => "assign",
        JobEvent::Start { .. } => "start",
        JobEvent::Succeed { .. } => "succeed",
        JobEvent::Fail { .. } => "fail",
        JobEvent::Requeue { .. } => "requeue",
        JobEvent::Abort { .. } => "abort",
        JobEvent::Cancel { .. } => "cancel",
        JobEvent::FromCache { .. } => "complete from the cache",
    }
}

#[cfg(test)]
mod tests;
