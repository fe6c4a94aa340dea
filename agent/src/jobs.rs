//! [`Jobs`]: the jobs this agent runs and the results it holds, independent of any
//! one connection.
//!
//! A job is a task owned by this set (a [`TaskTracker`]), not by the session that
//! received it, so it keeps running while the agent reconnects. Its result is saved
//! to disk ([`ResultStore`]) and kept in memory until the coordinator acknowledges it
//! (`Ack`), so every (re)connect can list running jobs and unacknowledged results in
//! `Hello` and send the results again. What happens to a job reaches the session as a
//! [`Notice`] on a channel that outlives sessions: nothing is lost between two
//! connections.
//!
//! Draining (the agent got SIGTERM): [`Jobs::drain`] refuses new assignments (they go
//! back to the coordinator as infrastructure failures, so they are requeued), lets
//! the running jobs finish until the deadline, then cancels the rest, which report an
//! infrastructure failure too; [`Jobs::wait_acked`] then waits (bounded) until the
//! coordinator recorded every result.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use helix_protocol::wire::{Assignment, HeldJob, JobOutcome};
use helix_protocol::{FailureKind, JobFailure, Platform};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn, Instrument};

use crate::executor::{remove_dir, Ended, Executor, SCRATCH};
use crate::joblog::JobLog;
use crate::results::{parse_key_name, JobKey, ResultStore};

/// How long a finished job waits for its log to reach the coordinator before its
/// result is reported, so the log is complete when the job's state changes. Bounded:
/// with no connection there is no point waiting.
pub const LOG_DELIVERY_WAIT: Duration = Duration::from_secs(3);

/// Something that happened to a job, for the session to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    Started(JobKey),
    /// The result is held; read it with [`Jobs::outcome`].
    Finished(JobKey),
    /// The agent started draining: tell the coordinator ([`Jobs::drain_remaining`]).
    Draining,
}

/// What to answer an `Assign`.
#[derive(Debug)]
pub enum AssignReply {
    /// The job started: answer `Accepted` and ship this log.
    Accepted(Arc<JobLog>),
    /// This attempt already runs here: answer `Accepted` again.
    AlreadyRunning,
    /// This attempt already finished here: send its result again.
    AlreadyFinished(JobOutcome),
    /// Not taken: answer `Finished` with this failure.
    Refused(JobFailure),
}

/// Why a job was cancelled, which decides what it reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CancelReason {
    /// The coordinator asked: `Cancelled`.
    Coordinator,
    /// The agent is stopping: an infrastructure failure, so the job is retried.
    Shutdown,
}

#[derive(Debug)]
struct Running {
    cancel: CancellationToken,
    why: Option<CancelReason>,
    log: Arc<JobLog>,
}

#[derive(Debug)]
struct Finished {
    outcome: JobOutcome,
    log: Option<Arc<JobLog>>,
}

#[derive(Debug, Default)]
struct State {
    running: BTreeMap<JobKey, Running>,
    finished: BTreeMap<JobKey, Finished>,
    /// Draining until this deadline: no new jobs; the running ones may finish.
    draining: Option<Instant>,
    /// Shutting down: no new jobs.
    closing: bool,
}

#[derive(Debug)]
struct Inner {
    executor: Executor,
    results: ResultStore,
    platforms: Vec<Platform>,
    /// Changed live on SIGHUP ([`Jobs::set_capacity`]).
    capacity: AtomicU32,
    state: Mutex<State>,
    tracker: TaskTracker,
    notices: mpsc::UnboundedSender<Notice>,
    /// Bumped whenever a job ends or a result is acknowledged, for waiters.
    changed: watch::Sender<()>,
    delivery_wait: Duration,
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("jobs lock poisoned")
    }
}

/// The agent's jobs. Cheap to clone; clones share the set.
#[derive(Debug, Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

impl Jobs {
    /// An empty set that runs jobs with `executor` for `platforms`, at most
    /// `capacity` at once, and the channel its notices come out of.
    pub fn new(
        executor: Executor,
        results: ResultStore,
        platforms: Vec<Platform>,
        capacity: u32,
    ) -> (Jobs, mpsc::UnboundedReceiver<Notice>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let jobs = Jobs {
            inner: Arc::new(Inner {
                executor,
                results,
                platforms,
                capacity: AtomicU32::new(capacity),
                state: Mutex::new(State::default()),
                tracker: TaskTracker::new(),
                notices: tx,
                changed: watch::Sender::new(()),
                delivery_wait: LOG_DELIVERY_WAIT,
            }),
        };
        (jobs, rx)
    }

    /// The same set with another [`LOG_DELIVERY_WAIT`] (tests use a short one).
    /// Only before the set is shared.
    pub fn with_delivery_wait(mut self, wait: Duration) -> Jobs {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.delivery_wait = wait;
        }
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state()
    }

    /// Resolves once `done` holds for the state (checked again at every job end and
    /// acknowledgement).
    async fn wait_until(&self, done: impl Fn(&State) -> bool) {
        let mut rx = self.inner.changed.subscribe();
        loop {
            if done(&self.state()) {
                return;
            }
            // The sender lives in `self`, so the channel cannot close under us.
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// At start-up, before any job runs: load the results an earlier run left, and
    /// remove the work dirs of jobs that were running when it died (they are gone; the
    /// coordinator requeues them). A held result keeps its `output.log`.
    pub async fn recover(&self) {
        let this = self.clone();
        let loaded = tokio::task::spawn_blocking(move || this.recover_blocking()).await;
        match loaded {
            Ok(n) if n > 0 => info!(results = n, "loaded results held from an earlier run"),
            Ok(_) => {}
            Err(e) => error!("recovering earlier results failed: {e}"),
        }
    }

    fn recover_blocking(&self) -> usize {
        let results = self.inner.results.load_all();
        let executor = &self.inner.executor;
        {
            let mut state = self.state();
            for (key, outcome) in &results {
                let log = JobLog::finished(executor.log_path(key));
                state.finished.insert(
                    *key,
                    Finished {
                        outcome: outcome.clone(),
                        log,
                    },
                );
            }
        }
        let Ok(entries) = std::fs::read_dir(executor.work_root()) else {
            return results.len();
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let held = entry
                .file_name()
                .to_str()
                .and_then(parse_key_name)
                .is_some_and(|key| results.iter().any(|(k, _)| *k == key));
            let removed = if held {
                SCRATCH
                    .iter()
                    .map(|sub| path.join(sub))
                    .filter(|p| p.symlink_metadata().is_ok())
                    .try_for_each(|p| {
                        if p.is_dir() {
                            std::fs::remove_dir_all(p)
                        } else {
                            std::fs::remove_file(p)
                        }
                    })
            } else {
                info!(dir = %path.display(), "removing the work dir of a job that was running when the agent stopped");
                if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                }
            };
            if let Err(e) = removed {
                warn!(dir = %path.display(), "cannot clean up: {e}");
            }
        }
        results.len()
    }

    /// What the agent holds, for `Hello`: running jobs without an outcome, finished
    /// ones with theirs.
    pub fn held(&self) -> Vec<HeldJob> {
        let state = self.state();
        let running = state.running.keys().map(|k| HeldJob {
            job: k.0,
            attempt: k.1,
            outcome: None,
        });
        let finished = state.finished.iter().map(|(k, f)| HeldJob {
            job: k.0,
            attempt: k.1,
            outcome: Some(f.outcome.clone()),
        });
        running.chain(finished).collect()
    }

    /// Finished results the coordinator has not acknowledged.
    pub fn unacked(&self) -> Vec<(JobKey, JobOutcome)> {
        self.state()
            .finished
            .iter()
            .map(|(k, f)| (*k, f.outcome.clone()))
            .collect()
    }

    /// The held result of `key`, if it finished and is not acknowledged yet.
    pub fn outcome(&self, key: &JobKey) -> Option<JobOutcome> {
        self.state().finished.get(key).map(|f| f.outcome.clone())
    }

    /// Logs a new connection should (re)send from offset 0: those of running jobs and
    /// of finished ones whose log has not been delivered in full.
    pub fn logs_to_send(&self) -> Vec<(JobKey, Arc<JobLog>)> {
        let state = self.state();
        let running = state.running.iter().map(|(k, r)| (*k, r.log.clone()));
        let finished = state
            .finished
            .iter()
            .filter_map(|(k, f)| f.log.as_ref().map(|log| (*k, log.clone())))
            .filter(|(_, log)| !log.state().delivered);
        running.chain(finished).collect()
    }

    /// Whether `key` runs here now.
    pub fn is_running(&self, key: &JobKey) -> bool {
        self.state().running.contains_key(key)
    }

    /// How many jobs the agent runs at once.
    pub fn capacity(&self) -> u32 {
        self.inner.capacity.load(Ordering::Relaxed)
    }

    /// Change the capacity (a reloaded configuration). Running jobs go on even above
    /// a lowered capacity; new ones are taken only below it.
    pub fn set_capacity(&self, capacity: u32) {
        self.inner.capacity.store(capacity, Ordering::Relaxed);
    }

    /// Jobs running now, cancelled or not.
    pub fn running(&self) -> usize {
        self.state().running.len()
    }

    /// Take an assignment, or say why not. A job that starts runs on its own task.
    pub fn assign(&self, a: Assignment) -> AssignReply {
        let key = (a.job, a.attempt);
        let mut state = self.state();
        if state.running.contains_key(&key) {
            return AssignReply::AlreadyRunning;
        }
        if let Some(f) = state.finished.get(&key) {
            return AssignReply::AlreadyFinished(f.outcome.clone());
        }
        let refuse = |message: String| {
            AssignReply::Refused(JobFailure {
                kind: FailureKind::Infrastructure,
                message,
                exit_code: None,
            })
        };
        if state.closing {
            return refuse("the agent is shutting down".into());
        }
        if state.draining.is_some() {
            return refuse("the agent is draining".into());
        }
        if !self
            .inner
            .platforms
            .iter()
            .any(|p| p.can_build(&a.platform))
        {
            let ours: Vec<String> = self
                .inner
                .platforms
                .iter()
                .map(ToString::to_string)
                .collect();
            return refuse(format!(
                "this agent cannot build {}: it builds {}",
                a.platform,
                ours.join(", ")
            ));
        }
        // Jobs being cancelled are only winding down: they do not hold a slot.
        let busy = state.running.values().filter(|r| r.why.is_none()).count();
        let capacity = self.capacity();
        if busy >= usize::try_from(capacity).unwrap_or(usize::MAX) {
            return refuse(format!(
                "this agent has no free slot: it runs {busy} job(s), its capacity is {capacity}"
            ));
        }
        let log = JobLog::new(self.inner.executor.log_path(&key));
        let cancel = CancellationToken::new();
        state.running.insert(
            key,
            Running {
                cancel: cancel.clone(),
                why: None,
                log: log.clone(),
            },
        );
        drop(state);
        let span =
            tracing::info_span!("job", job = %a.job, attempt = a.attempt, platform = %a.platform);
        info!(parent: &span, "job accepted");
        self.inner
            .tracker
            .spawn(run_job(self.inner.clone(), a, log.clone(), cancel).instrument(span));
        AssignReply::Accepted(log)
    }

    /// Cancel a running job (the coordinator asked); `false` if it does not run here.
    pub fn cancel(&self, key: &JobKey) -> bool {
        self.cancel_for(key, CancelReason::Coordinator)
    }

    fn cancel_for(&self, key: &JobKey, why: CancelReason) -> bool {
        let mut state = self.state();
        let Some(running) = state.running.get_mut(key) else {
            return false;
        };
        running.why.get_or_insert(why);
        running.cancel.cancel();
        true
    }

    /// The coordinator recorded the result of `key`: forget it, on disk too, with the
    /// job's work dir (its log). `false` if it was not held.
    pub fn ack(&self, key: &JobKey) -> bool {
        if self.state().finished.remove(key).is_none() {
            return false;
        }
        self.inner.changed.send_modify(|()| {});
        let results = self.inner.results.clone();
        let dir = self.inner.executor.work_dir(key);
        let key = *key;
        self.inner.tracker.spawn(async move {
            let removed = tokio::task::spawn_blocking(move || results.remove(&key)).await;
            if let Ok(Err(e)) = removed {
                warn!("cannot remove an acknowledged result: {e}");
            }
            remove_dir(&dir).await;
        });
        true
    }

    /// Start draining, with `deadline` for the running jobs: refuse new ones from now
    /// on, and have the session tell the coordinator ([`Notice::Draining`]). Returns
    /// how many jobs run. A second call changes nothing.
    pub fn start_draining(&self, deadline: Duration) -> usize {
        let mut state = self.state();
        if state.draining.is_none() {
            state.draining = Some(Instant::now() + deadline);
            let _ = self.inner.notices.send(Notice::Draining);
        }
        state.running.len()
    }

    /// Whether a drain started.
    pub fn is_draining(&self) -> bool {
        self.state().draining.is_some()
    }

    /// While draining, how long the running jobs have left.
    pub fn drain_remaining(&self) -> Option<Duration> {
        self.state()
            .draining
            .map(|deadline| deadline.saturating_duration_since(Instant::now()))
    }

    /// Drain: [`Jobs::start_draining`], let the running jobs finish for at most
    /// `deadline`, then cancel the ones still running (they report an infrastructure
    /// failure, so they are requeued) and wait until every job task has ended.
    /// Returns how many jobs the deadline cut short.
    pub async fn drain(&self, deadline: Duration) -> usize {
        self.start_draining(deadline);
        let until = self.state().draining.unwrap_or_else(Instant::now);
        let in_time = tokio::time::timeout_at(until, self.wait_until(|s| s.running.is_empty()))
            .await
            .is_ok();
        let late = if in_time { 0 } else { self.running() };
        if late > 0 {
            warn!(
                jobs = late,
                "draining: the deadline passed; cancelling the jobs still running (they are retried elsewhere)"
            );
        }
        self.shutdown().await;
        late
    }

    /// Waits at most `max` until the coordinator acknowledged every result held;
    /// `false` if some are still held (they stay on disk for the next run).
    pub async fn wait_acked(&self, max: Duration) -> bool {
        tokio::time::timeout(max, self.wait_until(|s| s.finished.is_empty()))
            .await
            .is_ok()
    }

    /// Results held and not acknowledged.
    pub fn unacked_count(&self) -> usize {
        self.state().finished.len()
    }

    /// Stop taking jobs, cancel the running ones (they report an infrastructure
    /// failure, so the coordinator runs them elsewhere) and wait until every job task
    /// has ended: no builder outlives this.
    pub async fn shutdown(&self) {
        let keys: Vec<JobKey> = {
            let mut state = self.state();
            state.closing = true;
            state.running.keys().copied().collect()
        };
        if !keys.is_empty() {
            info!(jobs = keys.len(), "cancelling running jobs");
        }
        for key in &keys {
            self.cancel_for(key, CancelReason::Shutdown);
        }
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

/// One job, start to held result.
async fn run_job(inner: Arc<Inner>, a: Assignment, log: Arc<JobLog>, cancel: CancellationToken) {
    let key = (a.job, a.attempt);
    let notices = inner.notices.clone();
    let ended = inner
        .executor
        .run(&a, &log, &cancel, move || {
            let _ = notices.send(Notice::Started(key));
        })
        .await;
    let outcome = match ended {
        Ended::Outcome(outcome) => outcome,
        Ended::Cancelled => {
            let why = inner.state().running.get(&key).and_then(|r| r.why);
            match why {
                Some(CancelReason::Shutdown) => JobOutcome::Failed(JobFailure {
                    kind: FailureKind::Infrastructure,
                    message: "the agent shut down before the job finished".into(),
                    exit_code: None,
                }),
                _ => JobOutcome::Cancelled,
            }
        }
    };
    log.close().await;

    // Durable first: from here on the result survives a crash of the agent.
    let results = inner.results.clone();
    let saved = {
        let outcome = outcome.clone();
        tokio::task::spawn_blocking(move || results.save(&key, &outcome)).await
    };
    match saved {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!("cannot save the job's result (it is kept in memory only): {e}"),
        Err(e) => error!("saving the job's result did not finish: {e}"),
    }
    // Let the log reach the coordinator before the result does.
    let _ = tokio::time::timeout(inner.delivery_wait, log.delivered()).await;
    {
        let mut state = inner.state();
        state.running.remove(&key);
        state.finished.insert(
            key,
            Finished {
                outcome,
                log: Some(log),
            },
        );
    }
    let _ = inner.notices.send(Notice::Finished(key));
    inner.changed.send_modify(|()| {});
}

#[cfg(test)]
mod tests;
