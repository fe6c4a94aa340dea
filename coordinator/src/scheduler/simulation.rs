//! Seeded random schedules of events and faults against the scheduler, with
//! invariants checked after every step (FoundationDB/TigerBeetle-style simulation).
//!
//! Events: submits, agents connecting, disappearing (keeping or losing their jobs)
//! and reconnecting, reports (on time, late, duplicated), cancels, assemblies ending,
//! time passing, and coordinator restarts that rebuild the scheduler from what was
//! persisted. A failing seed is printed; replay it with `HELIX_SIM_SEED=<seed>`.

use std::collections::{BTreeMap, HashMap};

use helix_protocol::build::{BuildSpec, Source};
use helix_protocol::{ImageResult, Job};

use super::*;

/// A tiny deterministic PRNG (xorshift64*), so a seed replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Debug, Clone)]
struct FakeAgent {
    id: AgentId,
    platforms: Vec<Platform>,
    capacity: u32,
    up: bool,
    /// Jobs it runs: (job, attempt).
    running: Vec<(JobId, u32)>,
    /// Finished but not acknowledged.
    results: Vec<(JobId, u32, JobOutcome)>,
}

/// What the store holds: the latest persisted records.
#[derive(Default)]
struct StoreModel {
    builds: BTreeMap<BuildId, Build>,
    jobs: BTreeMap<JobId, Job>,
}

struct World {
    rng: Rng,
    now: Timestamp,
    sched: Scheduler,
    store: StoreModel,
    agents: Vec<FakeAgent>,
    pending_assembly: Vec<BuildId>,
    /// Every report ever sent, for late and duplicate redelivery.
    sent: Vec<(AgentId, JobId, u32, JobOutcome)>,
    /// Highest attempt ever persisted per job.
    max_attempt: HashMap<JobId, u32>,
    /// Terminal phase first persisted per build.
    terminal: HashMap<BuildId, BuildPhase>,
    next_build: u64,
    cfg: SchedulerConfig,
    /// Cache entries written.
    cached: u64,
}

fn outcome_ok(seed: u64) -> JobOutcome {
    JobOutcome::Succeeded(ImageResult {
        digest: Digest::sha256_of(&seed.to_be_bytes()),
        size: 100,
        media_type: helix_protocol::index::OCI_MANIFEST.into(),
    })
}

fn outcome_fail(kind: FailureKind) -> JobOutcome {
    JobOutcome::Failed(JobFailure {
        kind,
        message: "simulated".into(),
        exit_code: Some(1),
    })
}

fn is_terminal(phase: &BuildPhase) -> bool {
    matches!(
        phase,
        BuildPhase::Succeeded { .. } | BuildPhase::Failed { .. } | BuildPhase::Cancelled { .. }
    )
}

impl World {
    fn new(seed: u64) -> World {
        let cfg = SchedulerConfig {
            grace: std::time::Duration::from_secs(60),
            max_attempts: 3,
        };
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let platforms = ["linux/amd64", "linux/arm64"];
        let agents = (0..(2 + rng.below(4)))
            .map(|i| FakeAgent {
                id: AgentId::from_bytes([i as u8 + 1; 16]),
                platforms: vec![platforms[(i % 2) as usize].parse().expect("valid")],
                capacity: 1 + rng.below(2) as u32,
                up: false,
                running: Vec::new(),
                results: Vec::new(),
            })
            .collect();
        World {
            rng,
            now: Timestamp(1_000_000),
            sched: Scheduler::new(cfg.clone()),
            store: StoreModel::default(),
            agents,
            pending_assembly: Vec::new(),
            sent: Vec::new(),
            max_attempt: HashMap::new(),
            terminal: HashMap::new(),
            next_build: 1,
            cfg,
            cached: 0,
        }
    }

    fn feed(&mut self, input: Input) {
        let outputs = self.sched.handle(input, self.now);
        self.apply_outputs(outputs);
    }

    fn apply_outputs(&mut self, outputs: Vec<Output>) {
        for o in outputs {
            match o {
                Output::Persist(records) => {
                    for r in records {
                        match r {
                            Record::Cache(entry) => {
                                let build = &self.store.builds[&entry.build];
                                assert!(
                                    matches!(build.phase, BuildPhase::Succeeded { .. }),
                                    "a cache entry for build {} which did not succeed",
                                    entry.build
                                );
                                self.cached += 1;
                            }
                            Record::Build(b) => {
                                if let Some(first) = self.terminal.get(&b.id) {
                                    assert_eq!(
                                        &b.phase, first,
                                        "build {} changed after it ended",
                                        b.id
                                    );
                                } else if is_terminal(&b.phase) {
                                    self.terminal.insert(b.id, b.phase.clone());
                                }
                                self.store.builds.insert(b.id, b);
                            }
                            Record::Job(j) => {
                                let max = self.max_attempt.entry(j.id()).or_insert(0);
                                assert!(
                                    j.attempt() >= *max,
                                    "job {} attempt went from {} to {}",
                                    j.id(),
                                    max,
                                    j.attempt()
                                );
                                *max = j.attempt();
                                if let Some(old) = self.store.jobs.get(&j.id()) {
                                    assert!(
                                        !old.state().is_terminal() || old.state() == j.state(),
                                        "job {} changed after it ended: {:?} -> {:?}",
                                        j.id(),
                                        old.state(),
                                        j.state()
                                    );
                                }
                                self.store.jobs.insert(j.id(), j);
                            }
                        }
                    }
                }
                Output::Send { agent, msg } => {
                    let Some(a) = self.agents.iter_mut().find(|a| a.id == agent) else {
                        continue;
                    };
                    if !a.up {
                        continue; // the message is lost with the connection
                    }
                    match msg {
                        CoordinatorToAgent::Assign(asg) => a.running.push((asg.job, asg.attempt)),
                        CoordinatorToAgent::Cancel { job, attempt, .. } => {
                            if let Some(pos) = a.running.iter().position(|r| *r == (job, attempt)) {
                                a.running.remove(pos);
                                a.results.push((job, attempt, JobOutcome::Cancelled));
                            }
                        }
                        CoordinatorToAgent::Ack { job, attempt } => {
                            a.results.retain(|r| (r.0, r.1) != (job, attempt))
                        }
                        _ => {}
                    }
                }
                Output::Assemble { build, .. } => self.pending_assembly.push(build.id),
                Output::BuildDone { .. } => {}
            }
        }
    }

    fn submit(&mut self) {
        let n = self.next_build;
        self.next_build += 1;
        let id = BuildId::from_bytes(u128::from(n).to_be_bytes());
        let all = ["linux/amd64", "linux/arm64"];
        let count = 1 + self.rng.below(2) as usize;
        let platforms: Vec<Platform> = all[..count]
            .iter()
            .map(|p| p.parse().expect("valid"))
            .collect();
        let jobs: Vec<Job> = platforms
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&n.to_be_bytes());
                b[8] = i as u8 + 1;
                Job::new(JobId::from_bytes(b), id, p.clone(), self.now)
            })
            .collect();
        let build = Build {
            id,
            spec: BuildSpec {
                source: Source::Git {
                    repo: format!("https://example.com/r{}.git", n % 3),
                    reference: "main".into(),
                },
                dockerfile: "Dockerfile".into(),
                build_args: BTreeMap::new(),
                target: None,
                labels: BTreeMap::new(),
                platforms,
                tag: "localhost:5000/app:v1".parse().expect("valid"),
                no_cache: false,
                fail_fast: self.rng.chance(70),
                timeout_secs: 3600,
            },
            commit: Some("c0ffee".into()),
            jobs: jobs.iter().map(|j| j.id()).collect(),
            phase: BuildPhase::Building,
            created_at: self.now,
            updated_at: self.now,
        };
        self.feed(Input::Submit { build, jobs });
    }

    fn agent_up(&mut self, i: usize) {
        let a = &mut self.agents[i];
        a.up = true;
        let mut held: Vec<HeldJob> = a
            .running
            .iter()
            .map(|(job, attempt)| HeldJob {
                job: *job,
                attempt: *attempt,
                outcome: None,
            })
            .collect();
        held.extend(a.results.iter().map(|(job, attempt, o)| HeldJob {
            job: *job,
            attempt: *attempt,
            outcome: Some(o.clone()),
        }));
        let input = Input::AgentUp {
            agent: a.id,
            platforms: a.platforms.clone(),
            capacity: a.capacity,
            schedulable: true,
            builder: "buildah".into(),
            held,
        };
        self.feed(input);
    }

    fn step(&mut self) {
        let roll = self.rng.below(100);
        let i = self.rng.below(self.agents.len() as u64) as usize;
        match roll {
            0..=11 => self.submit(),
            12..=39 => {
                // An up agent finishes one of its jobs.
                if self.agents[i].up && !self.agents[i].running.is_empty() {
                    let k = self.rng.below(self.agents[i].running.len() as u64) as usize;
                    let (job, attempt) = self.agents[i].running.remove(k);
                    let outcome = match self.rng.below(10) {
                        0 => outcome_fail(FailureKind::Build),
                        1 | 2 => outcome_fail(FailureKind::Infrastructure),
                        _ => outcome_ok(self.rng.next()),
                    };
                    let agent = self.agents[i].id;
                    self.agents[i].results.push((job, attempt, outcome.clone()));
                    self.sent.push((agent, job, attempt, outcome.clone()));
                    self.feed(Input::Finished {
                        agent,
                        job,
                        attempt,
                        outcome,
                    });
                }
            }
            40..=47 => {
                if self.agents[i].up && !self.agents[i].running.is_empty() {
                    let (job, attempt) = self.agents[i].running[0];
                    let agent = self.agents[i].id;
                    self.feed(Input::Started {
                        agent,
                        job,
                        attempt,
                    });
                }
            }
            48..=53 => {
                if self.agents[i].up {
                    self.agents[i].up = false;
                    if self.rng.chance(40) {
                        // The agent process died: its running jobs are gone.
                        self.agents[i].running.clear();
                    }
                    let agent = self.agents[i].id;
                    self.feed(Input::AgentDown { agent });
                }
            }
            54..=63 => {
                if !self.agents[i].up {
                    self.agent_up(i);
                }
            }
            64..=68 => {
                // A late or duplicate report.
                if !self.sent.is_empty() {
                    let k = self.rng.below(self.sent.len() as u64) as usize;
                    let (agent, job, attempt, outcome) = self.sent[k].clone();
                    let before = self.store.jobs.get(&job).cloned();
                    let stale = before.as_ref().is_some_and(|j| j.attempt() != attempt);
                    self.feed(Input::Finished {
                        agent,
                        job,
                        attempt,
                        outcome,
                    });
                    if stale {
                        assert_eq!(
                            self.store.jobs.get(&job),
                            before.as_ref(),
                            "a stale report changed job {job}"
                        );
                    }
                }
            }
            69..=70 => {
                let active: Vec<BuildId> = self.sched.builds.keys().copied().collect();
                if !active.is_empty() {
                    let b = active[self.rng.below(active.len() as u64) as usize];
                    self.feed(Input::Cancel {
                        build: b,
                        reason: "simulated cancel".into(),
                    });
                }
            }
            71..=79 => {
                if !self.pending_assembly.is_empty() {
                    let k = self.rng.below(self.pending_assembly.len() as u64) as usize;
                    let b = self.pending_assembly.remove(k);
                    let result = if self.rng.chance(90) {
                        Ok(Digest::sha256_of(b.as_bytes()))
                    } else {
                        Err("simulated push failure".into())
                    };
                    self.feed(Input::Assembled { build: b, result });
                }
            }
            80..=97 => {
                self.now = self
                    .now
                    .saturating_add(std::time::Duration::from_secs(self.rng.below(40)));
                self.feed(Input::Tick);
            }
            _ => self.restart(),
        }
    }

    /// The coordinator crashes and restarts from the store; agents reconnect.
    fn restart(&mut self) {
        self.sched = Scheduler::new(self.cfg.clone());
        self.pending_assembly.clear();
        let active: Vec<(Build, Vec<Job>)> = self
            .store
            .builds
            .values()
            .filter(|b| !is_terminal(&b.phase))
            .map(|b| {
                (
                    b.clone(),
                    b.jobs
                        .iter()
                        .filter_map(|j| self.store.jobs.get(j).cloned())
                        .collect(),
                )
            })
            .collect();
        for (build, jobs) in active {
            self.feed(Input::Resume { build, jobs });
        }
        for i in 0..self.agents.len() {
            if self.agents[i].up {
                self.agent_up(i);
            }
        }
    }

    fn check(&self) {
        // A job has at most one live assignment, and it is the one its state names.
        let mut holders: HashMap<JobId, AgentId> = HashMap::new();
        for (agent, view) in &self.sched.agents {
            for job in &view.holding {
                if let Some(other) = holders.insert(*job, *agent) {
                    panic!("job {job} is held by {other} and {agent}");
                }
                let state_agent = self.sched.jobs.get(job).and_then(|j| j.state().agent());
                assert_eq!(
                    state_agent,
                    Some(*agent),
                    "job {job} is in {agent}'s holding set but its state says {state_agent:?}"
                );
            }
        }
        for (id, job) in &self.sched.jobs {
            if let Some(a) = job.state().agent() {
                assert_eq!(
                    holders.get(id),
                    Some(&a),
                    "job {id} is {:?} but not in the holder's set",
                    job.state()
                );
            }
            // The scheduler's copy is what the store has.
            assert_eq!(
                self.store.jobs.get(id),
                Some(job),
                "job {id} differs from the store"
            );
        }
        // Nothing queued is forgotten: every non-terminal stored build is active.
        for (id, b) in &self.store.builds {
            if !is_terminal(&b.phase) {
                assert!(
                    self.sched.builds.contains_key(id),
                    "build {id} ({:?}) was forgotten",
                    b.phase
                );
            }
        }
        for (job, _) in self.sched.queue.iter().map(|k| (k.3, ())) {
            assert!(
                matches!(
                    self.sched.jobs.get(&job).map(|j| j.state()),
                    Some(JobState::Queued)
                ),
                "queued job {job} is not Queued"
            );
        }
        // Work-conserving: no queued job waits while an agent could take it.
        for key in &self.sched.queue {
            let Some(job) = self.sched.jobs.get(&key.3) else {
                continue;
            };
            if let Some((agent, _)) = self
                .sched
                .agents
                .iter()
                .find(|(_, v)| v.can_take(job.platform()))
            {
                panic!(
                    "queued job {} waits while {agent} has a free slot for it",
                    key.3
                );
            }
        }
    }

    /// Bring every agent up, finish everything, and let time pass: every build must
    /// end.
    fn drain(&mut self) {
        for round in 0..200 {
            for i in 0..self.agents.len() {
                if !self.agents[i].up {
                    self.agent_up(i);
                }
                while let Some((job, attempt)) = self.agents[i].running.pop() {
                    let agent = self.agents[i].id;
                    let outcome = outcome_ok(u64::from(attempt) + round);
                    self.agents[i].results.push((job, attempt, outcome.clone()));
                    self.feed(Input::Finished {
                        agent,
                        job,
                        attempt,
                        outcome,
                    });
                }
            }
            while let Some(b) = self.pending_assembly.pop() {
                self.feed(Input::Assembled {
                    build: b,
                    result: Ok(Digest::sha256_of(b.as_bytes())),
                });
            }
            self.now = self.now.saturating_add(std::time::Duration::from_secs(61));
            self.feed(Input::Tick);
            self.check();
            if self.sched.builds.is_empty() {
                break;
            }
        }
        assert!(
            self.sched.builds.is_empty(),
            "builds never ended: {:?}",
            self.sched.builds.keys().collect::<Vec<_>>()
        );
        for (id, b) in &self.store.builds {
            assert!(
                is_terminal(&b.phase),
                "build {id} did not reach a terminal state"
            );
            for j in &b.jobs {
                let job = self.store.jobs.get(j).expect("job stored");
                assert!(
                    job.state().is_terminal(),
                    "job {j} of finished build {id} is {:?}",
                    job.state()
                );
                assert!(
                    job.attempt() <= self.cfg.max_attempts,
                    "job {j} ran {} attempts",
                    job.attempt()
                );
            }
        }
    }
}

fn run_seed(seed: u64, steps: usize) {
    let result = std::panic::catch_unwind(|| {
        let mut w = World::new(seed);
        for i in 0..w.agents.len() {
            if i % 2 == 0 {
                w.agent_up(i);
            }
        }
        for _ in 0..steps {
            w.step();
            w.check();
        }
        w.drain();
    });
    if let Err(e) = result {
        eprintln!("simulation failed for seed {seed}; replay with HELIX_SIM_SEED={seed}");
        std::panic::resume_unwind(e);
    }
}

#[test]
fn random_schedules_keep_every_invariant() {
    if let Some(seed) = std::env::var("HELIX_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        run_seed(seed, 400);
        return;
    }
    for seed in 0..2000 {
        run_seed(seed, 300);
    }
}
