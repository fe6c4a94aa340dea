//! Deterministic scheduling tests: fake agents, a virtual clock.

use std::collections::BTreeMap;

use helix_protocol::build::{BuildSpec, Source};
use helix_protocol::cache::CacheEntry;
use helix_protocol::{ImageResult, Job};

use super::*;

fn p(s: &str) -> Platform {
    s.parse().expect("valid platform")
}

fn agent(n: u8) -> AgentId {
    AgentId::from_bytes([n; 16])
}

fn t(secs: u64) -> Timestamp {
    Timestamp(secs * 1000)
}

fn build(n: u8, repo: &str, platforms: &[&str], at: Timestamp) -> (Build, Vec<Job>) {
    let id = BuildId::from_bytes([n; 16]);
    let jobs: Vec<Job> = platforms
        .iter()
        .enumerate()
        .map(|(i, pl)| {
            Job::new(
                JobId::from_bytes([n, i as u8 + 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                id,
                p(pl),
                at,
            )
        })
        .collect();
    let build = Build {
        id,
        spec: BuildSpec {
            source: Source::Git {
                repo: repo.into(),
                reference: "main".into(),
            },
            dockerfile: "Dockerfile".into(),
            build_args: BTreeMap::new(),
            target: None,
            labels: BTreeMap::new(),
            platforms: platforms.iter().map(|x| p(x)).collect(),
            tag: "localhost:5000/app:v1".parse().expect("valid"),
            no_cache: false,
            fail_fast: true,
            timeout_secs: 7200,
        },
        commit: Some("c0ffee".into()),
        jobs: jobs.iter().map(|j| j.id()).collect(),
        phase: BuildPhase::Building,
        created_at: at,
        updated_at: at,
    };
    (build, jobs)
}

fn up(
    s: &mut Scheduler,
    a: AgentId,
    platforms: &[&str],
    capacity: u32,
    now: Timestamp,
) -> Vec<Output> {
    s.handle(
        Input::AgentUp {
            agent: a,
            platforms: platforms.iter().map(|x| p(x)).collect(),
            capacity,
            schedulable: true,
            builder: "buildah".into(),
            held: vec![],
        },
        now,
    )
}

/// (agent, job, attempt) of every Assign in `out`.
fn assigns(out: &[Output]) -> Vec<(AgentId, JobId, u32)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send {
                agent,
                msg: CoordinatorToAgent::Assign(a),
            } => Some((*agent, a.job, a.attempt)),
            _ => None,
        })
        .collect()
}

fn ok(seed: &[u8]) -> JobOutcome {
    JobOutcome::Succeeded(ImageResult {
        digest: Digest::sha256_of(seed),
        size: 10,
        media_type: helix_protocol::index::OCI_MANIFEST.into(),
    })
}

fn fail(kind: FailureKind) -> JobOutcome {
    JobOutcome::Failed(JobFailure {
        kind,
        message: "exit status 1".into(),
        exit_code: Some(1),
    })
}

#[test]
fn jobs_go_to_agents_that_can_build_them_oldest_build_first() {
    let mut s = Scheduler::new(SchedulerConfig::default());
    let (b1, j1) = build(1, "r", &["linux/amd64", "linux/arm64"], t(1));
    let (b2, j2) = build(2, "r", &["linux/amd64"], t(2));
    s.handle(
        Input::Submit {
            build: b2,
            jobs: j2.clone(),
        },
        t(2),
    );
    s.handle(
        Input::Submit {
            build: b1.clone(),
            jobs: j1.clone(),
        },
        t(3),
    );
    assert_eq!(
        s.notes(b1.id),
        [
            "waiting for an agent that can build linux/amd64",
            "waiting for an agent that can build linux/arm64"
        ]
    );

    // One amd64 slot: it goes to the older build.
    let out = up(&mut s, agent(1), &["linux/amd64"], 1, t(4));
    assert_eq!(assigns(&out), [(agent(1), j1[0].id(), 1)]);
    // Persist of the assignment comes before its Send.
    let persist = out.iter().position(|o| matches!(o, Output::Persist(r) if r.iter().any(|r| matches!(r, Record::Job(j) if j.id() == j1[0].id()))));
    let send = out.iter().position(|o| matches!(o, Output::Send { .. }));
    assert!(persist < send, "{out:?}");
    assert_eq!(
        s.notes(b1.id),
        ["waiting for an agent that can build linux/arm64"]
    );

    // An arm64 agent takes the arm64 job; the amd64 job of build 2 waits for a slot.
    let out = up(&mut s, agent(2), &["linux/arm64/v8"], 1, t(5));
    assert_eq!(assigns(&out), [(agent(2), j1[1].id(), 1)]);
    assert_eq!(
        s.notes(BuildId::from_bytes([2; 16])),
        ["waiting for a free slot on one of 1 agents that can build linux/amd64"]
    );
    let out = s.handle(
        Input::Finished {
            agent: agent(1),
            job: j1[0].id(),
            attempt: 1,
            outcome: ok(b"a"),
        },
        t(6),
    );
    assert_eq!(assigns(&out), [(agent(1), j2[0].id(), 1)]);
}

#[test]
fn least_loaded_then_warm_cache_wins() {
    let mut s = Scheduler::new(SchedulerConfig::default());
    up(&mut s, agent(1), &["linux/amd64"], 4, t(0));
    up(&mut s, agent(2), &["linux/amd64"], 4, t(0));
    let (b1, j1) = build(1, "repo-a", &["linux/amd64"], t(1));
    let out = s.handle(
        Input::Submit {
            build: b1,
            jobs: j1.clone(),
        },
        t(1),
    );
    assert_eq!(
        assigns(&out),
        [(agent(1), j1[0].id(), 1)],
        "tie broken by id"
    );
    let (b2, j2) = build(2, "repo-b", &["linux/amd64"], t(2));
    let out = s.handle(
        Input::Submit {
            build: b2,
            jobs: j2.clone(),
        },
        t(2),
    );
    assert_eq!(assigns(&out), [(agent(2), j2[0].id(), 1)], "least loaded");
    s.handle(
        Input::Finished {
            agent: agent(1),
            job: j1[0].id(),
            attempt: 1,
            outcome: ok(b"1"),
        },
        t(3),
    );
    s.handle(
        Input::Finished {
            agent: agent(2),
            job: j2[0].id(),
            attempt: 1,
            outcome: ok(b"2"),
        },
        t(3),
    );
    // Agent 2 built repo-b; the next repo-b build goes there although both are idle.
    let (b3, j3) = build(3, "repo-b", &["linux/amd64"], t(4));
    let out = s.handle(
        Input::Submit {
            build: b3,
            jobs: j3.clone(),
        },
        t(4),
    );
    assert_eq!(assigns(&out), [(agent(2), j3[0].id(), 1)], "warm cache");
}

#[test]
fn cordoned_agents_get_nothing_new() {
    let mut s = Scheduler::new(SchedulerConfig::default());
    up(&mut s, agent(1), &["linux/amd64"], 1, t(0));
    s.handle(
        Input::AgentSchedulable {
            agent: agent(1),
            schedulable: false,
        },
        t(0),
    );
    let (b, j) = build(1, "r", &["linux/amd64"], t(1));
    let out = s.handle(
        Input::Submit {
            build: b.clone(),
            jobs: j.clone(),
        },
        t(1),
    );
    assert!(assigns(&out).is_empty());
    assert_eq!(
        s.notes(b.id),
        ["waiting for an agent that can build linux/amd64"]
    );
    let out = s.handle(
        Input::AgentSchedulable {
            agent: agent(1),
            schedulable: true,
        },
        t(2),
    );
    assert_eq!(assigns(&out).len(), 1);
}

#[test]
fn a_lost_agent_has_a_grace_period_then_its_job_moves_and_late_reports_are_ignored() {
    let mut s = Scheduler::new(SchedulerConfig {
        grace: std::time::Duration::from_secs(60),
        max_attempts: 3,
    });
    up(&mut s, agent(1), &["linux/amd64"], 1, t(0));
    up(&mut s, agent(2), &["linux/amd64"], 1, t(0));
    let (b, j) = build(1, "r", &["linux/amd64"], t(1));
    let out = s.handle(
        Input::Submit {
            build: b.clone(),
            jobs: j.clone(),
        },
        t(1),
    );
    assert_eq!(assigns(&out), [(agent(1), j[0].id(), 1)]);
    s.handle(
        Input::Started {
            agent: agent(1),
            job: j[0].id(),
            attempt: 1,
        },
        t(2),
    );
    s.handle(Input::AgentDown { agent: agent(1) }, t(10));
    assert!(
        assigns(&s.handle(Input::Tick, t(69))).is_empty(),
        "still within the grace period"
    );
    let out = s.handle(Input::Tick, t(70));
    assert_eq!(
        assigns(&out),
        [(agent(2), j[0].id(), 2)],
        "requeued to the other agent"
    );
    let (_, jobs) = s.active(b.id).expect("active");
    assert_eq!(jobs[0].history().len(), 1);

    // Agent 1 comes back holding the old attempt's result: acked, ignored.
    let out = s.handle(
        Input::AgentUp {
            agent: agent(1),
            platforms: vec![p("linux/amd64")],
            capacity: 1,
            schedulable: true,
            builder: "buildah".into(),
            held: vec![HeldJob {
                job: j[0].id(),
                attempt: 1,
                outcome: Some(ok(b"stale")),
            }],
        },
        t(80),
    );
    assert!(out.contains(&Output::Send {
        agent: agent(1),
        msg: CoordinatorToAgent::Ack {
            job: j[0].id(),
            attempt: 1
        }
    }));
    assert!(
        !out.iter().any(|o| matches!(o, Output::Persist(_))),
        "a stale result changes nothing: {out:?}"
    );
    let out = s.handle(
        Input::Finished {
            agent: agent(1),
            job: j[0].id(),
            attempt: 1,
            outcome: ok(b"stale"),
        },
        t(81),
    );
    assert!(!out.iter().any(|o| matches!(o, Output::Persist(_))));
    // The real result completes it.
    let out = s.handle(
        Input::Finished {
            agent: agent(2),
            job: j[0].id(),
            attempt: 2,
            outcome: ok(b"real"),
        },
        t(90),
    );
    assert!(out.iter().any(|o| matches!(o, Output::Assemble { .. })));
}

#[test]
fn an_agent_back_within_the_grace_period_keeps_its_job() {
    let mut s = Scheduler::new(SchedulerConfig::default());
    up(&mut s, agent(1), &["linux/amd64"], 1, t(0));
    up(&mut s, agent(2), &["linux/amd64"], 1, t(0));
    let (b, j) = build(1, "r", &["linux/amd64"], t(1));
    s.handle(
        Input::Submit {
            build: b,
            jobs: j.clone(),
        },
        t(1),
    );
    s.handle(Input::AgentDown { agent: agent(1) }, t(5));
    let out = s.handle(
        Input::AgentUp {
            agent: agent(1),
            platforms: vec![p("linux/amd64")],
            capacity: 1,
            schedulable: true,
            builder: "buildah".into(),
            held: vec![HeldJob {
                job: j[0].id(),
                attempt: 1,
                outcome: None,
            }],
        },
        t(20),
    );
    assert!(assigns(&out).is_empty());
    assert!(
        assigns(&s.handle(Input::Tick, t(200))).is_empty(),
        "no requeue once back"
    );
    let out = s.handle(
        Input::Finished {
            agent: agent(1),
            job: j[0].id(),
            attempt: 1,
            outcome: ok(b"x"),
        },
        t(30),
    );
    assert!(out.iter().any(|o| matches!(o, Output::Assemble { .. })));
}

#[test]
fn build_errors_fail_fast_and_cancel_the_other_platforms() {
    let mut s = Scheduler::new(SchedulerConfig::default());
    up(&mut s, agent(1), &["linux/amd64"], 1, t(0));
    up(&mut s, agent(2), &["linux/arm64"], 1, t(0));
    let (b, j) = build(1, "r", &["linux/amd64", "linux/arm64"], t(1));
    s.handle(
        Input::Submit {
            build: b.clone(),
            jobs: j.clone(),
        },
        t(1),
    );
    let out = s.handle(
        Input::Finished {
            agent: agent(1),
            job: j[0].id(),
            attempt: 1,
            outcome: fail(FailureKind::Build),
        },
        t(2),
    );
    assert!(assigns(&out).is_empty(), "a build error is not retried");
    assert!(out.contains(&Output::Send {
        agent: agent(2),
        msg: CoordinatorToAgent::Cancel {
            job: j[1].id(),
            attempt: 1,
            reason: "another platform of the build failed".into()
        }
    }));
    let phase = out.iter().rev().find_map(|o| match o {
        Output::Persist(r) => r.iter().find_map(|r| match r {
            Record::Build(b) => Some(b.phase.clone()),
            _ => None,
        }),
        _ => None,
    });
    assert!(
        matches!(phase, Some(BuildPhase::Failed { ref reason }) if reason.contains("linux/amd64 failed: exit status 1")),
        "{phase:?}"
    );
    assert!(out.contains(&Output::BuildDone {
        build: b.id,
        jobs: b.jobs.clone()
    }));
    assert!(s.active(b.id).is_none());
}

#[test]
fn infrastructure_failures_are_retried_up_to_the_limit() {
    let mut s = Scheduler::new(SchedulerConfig {
        grace: std::time::Duration::ZERO,
        max_attempts: 2,
    });
    up(&mut s, agent(1), &["linux/amd64"], 1, t(0));
    let (b, j) = build(1, "r", &["linux/amd64"], t(1));
    s.handle(
        Input::Submit {
            build: b.clone(),
            jobs: j.clone(),
        },
        t(1),
    );
    let out = s.handle(
        Input::Finished {
            agent: agent(1),
            job: j[0].id(),
            attempt: 1,
            outcome: fail(FailureKind::Infrastructure),
        },
        t(2),
    );
    assert_eq!(assigns(&out), [(agent(1), j[0].id(), 2)]);
    let out = s.handle(
        Input::Finished {
            agent: agent(1),
            job: j[0].id(),
            attempt: 2,
            outcome: fail(FailureKind::Infrastructure),
        },
        t(3),
    );
    assert!(assigns(&out).is_empty());
    assert!(out.contains(&Output::BuildDone {
        build: b.id,
        jobs: b.jobs.clone()
    }));
}

#[test]
fn assembly_completes_the_build_and_cancel_stops_everything() {
    let mut s = Scheduler::new(SchedulerConfig::default());
    up(&mut s, agent(1), &["linux/amd64"], 2, t(0));
    let (b, j) = build(1, "r", &["linux/amd64"], t(1));
    s.handle(
        Input::Submit {
            build: b.clone(),
            jobs: j.clone(),
        },
        t(1),
    );
    let out = s.handle(
        Input::Finished {
            agent: agent(1),
            job: j[0].id(),
            attempt: 1,
            outcome: ok(b"x"),
        },
        t(2),
    );
    assert!(out.iter().any(
        |o| matches!(o, Output::Assemble { build, .. } if build.phase == BuildPhase::Assembling)
    ));
    let out = s.handle(
        Input::Assembled {
            build: b.id,
            result: Ok(Digest::sha256_of(b"index")),
        },
        t(3),
    );
    assert!(out.contains(&Output::BuildDone {
        build: b.id,
        jobs: b.jobs.clone()
    }));

    let (b2, j2) = build(2, "r", &["linux/amd64", "linux/s390x"], t(4));
    s.handle(
        Input::Submit {
            build: b2.clone(),
            jobs: j2.clone(),
        },
        t(4),
    );
    let out = s.handle(
        Input::Cancel {
            build: b2.id,
            reason: "cancelled by admin".into(),
        },
        t(5),
    );
    assert!(out.contains(&Output::Send {
        agent: agent(1),
        msg: CoordinatorToAgent::Cancel {
            job: j2[0].id(),
            attempt: 1,
            reason: "cancelled by admin".into()
        }
    }));
    assert!(out.contains(&Output::BuildDone {
        build: b2.id,
        jobs: b2.jobs.clone()
    }));
}

#[test]
fn resumed_jobs_of_an_agent_that_never_returns_are_requeued_after_the_grace_period() {
    let mut s = Scheduler::new(SchedulerConfig::default());
    let (b, mut j) = build(1, "r", &["linux/amd64"], t(1));
    j[0].transition(JobEvent::Assign {
        agent: agent(1),
        at: t(2),
    })
    .expect("legal");
    s.handle(
        Input::Resume {
            build: b,
            jobs: j.clone(),
        },
        t(100),
    );
    up(&mut s, agent(2), &["linux/amd64"], 1, t(100));
    assert!(assigns(&s.handle(Input::Tick, t(120))).is_empty());
    let out = s.handle(Input::Tick, t(200));
    assert_eq!(assigns(&out), [(agent(2), j[0].id(), 2)]);
}

#[test]
fn a_build_past_its_timeout_fails_and_its_jobs_are_cancelled() {
    let mut s = Scheduler::new(SchedulerConfig::default());
    up(&mut s, agent(1), &["linux/amd64"], 1, t(0));
    let (mut b, j) = build(1, "r", &["linux/amd64", "linux/riscv64"], t(0));
    b.spec.timeout_secs = 60;
    s.handle(
        Input::Submit {
            build: b.clone(),
            jobs: j.clone(),
        },
        t(0),
    );
    assert!(!s.handle(Input::Tick, t(59)).contains(&Output::BuildDone {
        build: b.id,
        jobs: b.jobs.clone()
    }));
    let out = s.handle(Input::Tick, t(60));
    assert!(
        out.contains(&Output::Send {
            agent: agent(1),
            msg: CoordinatorToAgent::Cancel {
                job: j[0].id(),
                attempt: 1,
                reason: "timed out after 1m".into()
            }
        }),
        "{out:?}"
    );
    assert!(out.contains(&Output::BuildDone {
        build: b.id,
        jobs: b.jobs.clone()
    }));
    let failed = out.iter().any(|o| matches!(o, Output::Persist(r) if r.iter().any(|r| matches!(r, Record::Build(x) if x.phase == BuildPhase::Failed { reason: "timed out after 1m".into() }))));
    assert!(failed, "{out:?}");
}

#[test]
fn only_verified_images_of_succeeded_builds_enter_the_cache() {
    let cache_records = |out: &[Output]| -> Vec<CacheEntry> {
        out.iter()
            .filter_map(|o| match o {
                Output::Persist(r) => Some(r.iter().filter_map(|r| match r {
                    Record::Cache(c) => Some(c.clone()),
                    _ => None,
                })),
                _ => None,
            })
            .flatten()
            .collect()
    };
    let mut s = Scheduler::new(SchedulerConfig::default());
    up(&mut s, agent(1), &["linux/amd64"], 2, t(0));
    let (b, j) = build(1, "r", &["linux/amd64"], t(1));
    s.handle(
        Input::Submit {
            build: b.clone(),
            jobs: j.clone(),
        },
        t(1),
    );
    let out = s.handle(
        Input::Finished {
            agent: agent(1),
            job: j[0].id(),
            attempt: 1,
            outcome: ok(b"x"),
        },
        t(2),
    );
    assert!(
        cache_records(&out).is_empty(),
        "not before the assembly verified the image"
    );
    let out = s.handle(
        Input::Assembled {
            build: b.id,
            result: Ok(Digest::sha256_of(b"i")),
        },
        t(3),
    );
    let entries = cache_records(&out);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].builder, "buildah");
    assert_eq!(entries[0].repository, "localhost:5000/app");
    assert_eq!(
        entries[0].key,
        crate::cache::key_for(&b, &p("linux/amd64"), "buildah")
    );

    // A failed assembly (e.g. the platform check) caches nothing.
    let (b2, j2) = build(2, "r", &["linux/amd64"], t(4));
    s.handle(
        Input::Submit {
            build: b2.clone(),
            jobs: j2.clone(),
        },
        t(4),
    );
    s.handle(
        Input::Finished {
            agent: agent(1),
            job: j2[0].id(),
            attempt: 1,
            outcome: ok(b"y"),
        },
        t(5),
    );
    let out = s.handle(
        Input::Assembled {
            build: b2.id,
            result: Err("platform mismatch".into()),
        },
        t(6),
    );
    assert!(cache_records(&out).is_empty());

    // --no-cache builds write no entries either.
    let (mut b3, j3) = build(3, "r", &["linux/amd64"], t(7));
    b3.spec.no_cache = true;
    s.handle(
        Input::Submit {
            build: b3.clone(),
            jobs: j3.clone(),
        },
        t(7),
    );
    s.handle(
        Input::Finished {
            agent: agent(1),
            job: j3[0].id(),
            attempt: 1,
            outcome: ok(b"z"),
        },
        t(8),
    );
    let out = s.handle(
        Input::Assembled {
            build: b3.id,
            result: Ok(Digest::sha256_of(b"i3")),
        },
        t(9),
    );
    assert!(cache_records(&out).is_empty());

    // A build whose every job came from the cache goes straight to assembly.
    let (b4, mut j4) = build(4, "r", &["linux/amd64"], t(10));
    let JobOutcome::Succeeded(result) = ok(b"x") else {
        unreachable!()
    };
    j4[0]
        .transition(JobEvent::FromCache {
            agent: agent(1),
            from_build: b.id,
            result,
            at: t(10),
        })
        .expect("legal");
    let out = s.handle(
        Input::Submit {
            build: b4.clone(),
            jobs: j4,
        },
        t(10),
    );
    assert!(assigns(&out).is_empty(), "no job reaches an agent");
    assert!(out.iter().any(|o| matches!(o, Output::Assemble { .. })));
    let out = s.handle(
        Input::Assembled {
            build: b4.id,
            result: Ok(Digest::sha256_of(b"i4")),
        },
        t(11),
    );
    assert!(
        cache_records(&out).is_empty(),
        "cached jobs are not re-entered"
    );
}
