use super::*;

fn agent(n: u8) -> AgentId {
    AgentId::from_bytes([n; 16])
}

fn result() -> ImageResult {
    ImageResult {
        digest: Digest::sha256_of(b"manifest"),
        size: 42,
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
    }
}

fn failure(kind: FailureKind) -> JobFailure {
    JobFailure {
        kind,
        message: "boom".into(),
        exit_code: Some(1),
    }
}

fn t(ms: u64) -> Timestamp {
    Timestamp(ms)
}

fn new_job() -> Job {
    Job::new(
        JobId::from_bytes([9; 16]),
        BuildId::from_bytes([8; 16]),
        "linux/amd64".parse().expect("valid"),
        t(0),
    )
}

/// A job driven into each state, held by agent 1 at attempt 1 where it has a holder.
fn job_in(state: &str) -> Job {
    let mut job = new_job();
    let steps: Vec<JobEvent> = match state {
        "queued" => vec![],
        "assigned" => vec![JobEvent::Assign {
            agent: agent(1),
            at: t(1),
        }],
        "running" => vec![
            JobEvent::Assign {
                agent: agent(1),
                at: t(1),
            },
            JobEvent::Start {
                agent: agent(1),
                attempt: 1,
                at: t(2),
            },
        ],
        "succeeded" => vec![
            JobEvent::Assign {
                agent: agent(1),
                at: t(1),
            },
            JobEvent::Succeed {
                agent: agent(1),
                attempt: 1,
                result: result(),
                at: t(3),
            },
        ],
        "failed" => vec![JobEvent::Abort {
            failure: failure(FailureKind::Build),
            at: t(1),
        }],
        "cancelled" => vec![JobEvent::Cancel {
            reason: "user".into(),
            at: t(1),
        }],
        other => panic!("unknown state {other}"),
    };
    for step in steps {
        job.transition(step).expect("setup step is legal");
    }
    assert_eq!(job.state().name(), state);
    job
}

fn event(name: &str) -> JobEvent {
    match name {
        "assign" => JobEvent::Assign {
            agent: agent(1),
            at: t(10),
        },
        "start" => JobEvent::Start {
            agent: agent(1),
            attempt: 1,
            at: t(10),
        },
        "succeed" => JobEvent::Succeed {
            agent: agent(1),
            attempt: 1,
            result: result(),
            at: t(10),
        },
        "fail" => JobEvent::Fail {
            agent: agent(1),
            attempt: 1,
            failure: failure(FailureKind::Build),
            at: t(10),
        },
        "requeue" => JobEvent::Requeue {
            reason: "agent lost".into(),
            at: t(10),
        },
        "abort" => JobEvent::Abort {
            failure: failure(FailureKind::Infrastructure),
            at: t(10),
        },
        "cancel" => JobEvent::Cancel {
            reason: "user".into(),
            at: t(10),
        },
        "cache" => JobEvent::FromCache {
            agent: agent(3),
            from_build: BuildId::from_bytes([5; 16]),
            result: result(),
            at: t(10),
        },
        other => panic!("unknown event {other}"),
    }
}

const STATES: [&str; 6] = [
    "queued",
    "assigned",
    "running",
    "succeeded",
    "failed",
    "cancelled",
];
const EVENTS: [&str; 8] = [
    "assign", "start", "succeed", "fail", "requeue", "abort", "cancel", "cache",
];

/// The whole transition table: (state, event) → the state after, or None if illegal.
fn expected(state: &str, event: &str) -> Option<&'static str> {
    match (state, event) {
        ("queued", "assign") => Some("assigned"),
        ("queued", "abort") => Some("failed"),
        ("queued", "cancel") => Some("cancelled"),
        ("queued", "cache") => Some("succeeded"),
        ("assigned", "start") => Some("running"),
        ("assigned" | "running", "succeed") => Some("succeeded"),
        ("assigned" | "running", "fail") => Some("failed"),
        ("assigned" | "running", "requeue") => Some("queued"),
        ("assigned" | "running", "abort") => Some("failed"),
        ("assigned" | "running", "cancel") => Some("cancelled"),
        _ => None,
    }
}

#[test]
fn every_transition_in_the_table() {
    for state in STATES {
        for ev in EVENTS {
            let mut job = job_in(state);
            let before = job.clone();
            let outcome = job.transition(event(ev));
            match expected(state, ev) {
                Some(after) => {
                    assert!(
                        outcome.is_ok(),
                        "{state} + {ev} should be legal: {outcome:?}"
                    );
                    assert_eq!(job.state().name(), after, "{state} + {ev}");
                    assert_eq!(job.updated_at(), t(10));
                }
                None => {
                    assert!(
                        matches!(outcome, Err(TransitionError::Illegal { .. })),
                        "{state} + {ev} should be illegal, got {outcome:?}"
                    );
                    assert_eq!(job, before, "a refused transition leaves the job unchanged");
                }
            }
        }
    }
}

#[test]
fn requeue_grows_the_attempt_and_records_history() {
    let mut job = job_in("running");
    job.transition(event("requeue")).expect("legal");
    assert_eq!(job.attempt(), 2);
    assert_eq!(job.state(), &JobState::Queued);
    assert_eq!(job.history().len(), 1);
    assert_eq!(job.history()[0].attempt, 1);
    assert_eq!(job.history()[0].agent, agent(1));
    assert_eq!(job.history()[0].started, t(2));
    assert_eq!(job.history()[0].ended, t(10));
    assert_eq!(job.history()[0].outcome, "agent lost");
}

#[test]
fn a_report_for_a_stale_attempt_is_refused() {
    let mut job = job_in("running");
    job.transition(event("requeue")).expect("legal");
    job.transition(JobEvent::Assign {
        agent: agent(2),
        at: t(11),
    })
    .expect("legal");
    let before = job.clone();
    // The first agent comes back and reports attempt 1.
    for late in [
        JobEvent::Start {
            agent: agent(1),
            attempt: 1,
            at: t(12),
        },
        JobEvent::Succeed {
            agent: agent(1),
            attempt: 1,
            result: result(),
            at: t(12),
        },
        JobEvent::Fail {
            agent: agent(1),
            attempt: 1,
            failure: failure(FailureKind::Build),
            at: t(12),
        },
    ] {
        let err = job.transition(late).expect_err("stale");
        assert_eq!(
            err,
            TransitionError::StaleAttempt {
                job: job.id(),
                reported: 1,
                current: 2
            }
        );
        assert_eq!(job, before);
    }
    // A stale report stays stale after the job has finished.
    job.transition(JobEvent::Succeed {
        agent: agent(2),
        attempt: 2,
        result: result(),
        at: t(13),
    })
    .expect("legal");
    let err = job
        .transition(JobEvent::Succeed {
            agent: agent(1),
            attempt: 1,
            result: result(),
            at: t(14),
        })
        .expect_err("stale");
    assert!(matches!(
        err,
        TransitionError::StaleAttempt {
            reported: 1,
            current: 2,
            ..
        }
    ));
}

#[test]
fn a_report_from_another_agent_is_refused() {
    let mut job = job_in("assigned");
    let err = job
        .transition(JobEvent::Start {
            agent: agent(7),
            attempt: 1,
            at: t(5),
        })
        .expect_err("wrong agent");
    assert_eq!(
        err,
        TransitionError::WrongAgent {
            job: job.id(),
            reported: agent(7),
            holder: Some(agent(1))
        }
    );
    assert_eq!(job.state().name(), "assigned");
}

#[test]
fn error_messages_name_the_job_and_the_states() {
    let mut job = job_in("succeeded");
    let err = job.transition(event("assign")).expect_err("illegal");
    let msg = err.to_string();
    assert!(
        msg.contains("cannot assign a job that is succeeded"),
        "{msg}"
    );
    assert!(msg.contains(&job.id().to_string()), "{msg}");
}
