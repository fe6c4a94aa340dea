//! The job set with a fake process layer and registry: admission, held results, acks,
//! restarts, cancel, shutdown and drain.

use std::collections::BTreeMap;
use std::path::Path;

use helix_protocol::wire::PinnedSource;
use helix_protocol::{BuildId, Digest, ImageRef, ImageResult, JobId};
use helix_registry::RegistryError;

use super::*;
use crate::builder::fake::{FakeRunner, Reply};
use crate::builder::{BoxFuture, Buildah};
use crate::executor::ImagePusher;

#[derive(Debug)]
struct OkPusher;

fn image() -> ImageResult {
    ImageResult {
        digest: Digest::sha256_of(b"manifest"),
        size: 428,
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
    }
}

impl ImagePusher for OkPusher {
    fn push<'a>(
        &'a self,
        _layout_dir: &'a Path,
        _name: &'a str,
        _destination: &'a ImageRef,
        _cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<ImageResult, RegistryError>> {
        Box::pin(async { Ok(image()) })
    }
}

/// Builds hang until cancelled.
fn hanging() -> FakeRunner {
    FakeRunner::replying(|cmd| match cmd.args.get(4).map(String::as_str) {
        Some("build") if cmd.program == "buildah" => Reply::hang("STEP 1/2\n"),
        _ => Reply::ok(""),
    })
}

fn jobs_in(
    dir: &Path,
    runner: FakeRunner,
    capacity: u32,
) -> (Jobs, mpsc::UnboundedReceiver<Notice>) {
    let runner = Arc::new(runner);
    let builder = Arc::new(Buildah::new(&dir.join("storage"), runner.clone()));
    let contexts = crate::context::fake::FakeFetcher::answering(
        crate::context::fake::Answer::Rejected("no context in this test".into()),
    );
    let executor = Executor::new(
        dir.join("work"),
        runner,
        builder,
        Arc::new(OkPusher),
        contexts,
    );
    let (jobs, rx) = Jobs::new(
        executor,
        ResultStore::new(dir.join("results")),
        vec!["linux/amd64".parse().expect("platform")],
        capacity,
    );
    (jobs.with_delivery_wait(Duration::from_millis(10)), rx)
}

fn assignment(platform: &str) -> Assignment {
    Assignment {
        job: JobId::new_v4(),
        attempt: 1,
        build: BuildId::new_v4(),
        platform: platform.parse().expect("platform"),
        source: PinnedSource::Git {
            repo: "file:///srv/repo".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
        },
        dockerfile: "Dockerfile".into(),
        build_args: BTreeMap::new(),
        target: None,
        labels: BTreeMap::new(),
        destination: "127.0.0.1:5000/demo/app:v1".parse().expect("ref"),
        no_cache: false,
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Notice>) -> Notice {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a notice in time")
        .expect("channel open")
}

fn refusal(reply: AssignReply) -> JobFailure {
    match reply {
        AssignReply::Refused(f) => f,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn assignments_it_cannot_run_are_refused_with_a_reason() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (jobs, mut rx) = jobs_in(tmp.path(), hanging(), 1);

    let f = refusal(jobs.assign(assignment("linux/arm64")));
    assert_eq!(f.kind, FailureKind::Infrastructure);
    assert_eq!(
        f.message,
        "this agent cannot build linux/arm64: it builds linux/amd64"
    );

    let a = assignment("linux/x86_64");
    let key = (a.job, a.attempt);
    assert!(matches!(jobs.assign(a.clone()), AssignReply::Accepted(_)));
    assert_eq!(next(&mut rx).await, Notice::Started(key));
    assert!(matches!(jobs.assign(a), AssignReply::AlreadyRunning));

    let f = refusal(jobs.assign(assignment("linux/amd64")));
    assert_eq!(f.kind, FailureKind::Infrastructure);
    assert_eq!(
        f.message,
        "this agent has no free slot: it runs 1 job(s), its capacity is 1"
    );
    assert_eq!(
        jobs.held(),
        [HeldJob {
            job: key.0,
            attempt: 1,
            outcome: None
        }]
    );

    // A job being cancelled winds down and frees its slot at once.
    assert!(jobs.cancel(&key));
    assert!(matches!(
        jobs.assign(assignment("linux/amd64")),
        AssignReply::Accepted(_)
    ));
    jobs.shutdown().await;
}

#[tokio::test]
async fn results_are_held_on_disk_until_acknowledged_even_across_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (jobs, mut rx) = jobs_in(tmp.path(), FakeRunner::default(), 2);
    let a = assignment("linux/amd64");
    let key = (a.job, a.attempt);
    let AssignReply::Accepted(log) = jobs.assign(a.clone()) else {
        panic!("accepted")
    };
    assert_eq!(next(&mut rx).await, Notice::Started(key));
    assert_eq!(next(&mut rx).await, Notice::Finished(key));
    let succeeded = JobOutcome::Succeeded(image());
    assert_eq!(jobs.outcome(&key), Some(succeeded.clone()));
    assert_eq!(jobs.unacked(), [(key, succeeded.clone())]);
    assert_eq!(jobs.running(), 0);
    assert!(log.state().closed);
    // The same assignment again (a duplicate): the result, not a second build.
    assert!(matches!(
        jobs.assign(a.clone()),
        AssignReply::AlreadyFinished(o) if o == succeeded
    ));
    let logs = jobs.logs_to_send();
    assert_eq!(
        logs.len(),
        1,
        "an undelivered log is sent again on reconnect"
    );
    let result_file = tmp
        .path()
        .join(format!("results/{}.json", crate::results::key_name(&key)));
    assert!(result_file.exists());

    // The agent dies here. A job that was running then leaves a work dir behind.
    drop(jobs);
    let orphan = tmp.path().join(format!("work/{}-1", JobId::new_v4()));
    std::fs::create_dir_all(orphan.join("src")).expect("orphan");
    let (jobs, _rx) = jobs_in(tmp.path(), FakeRunner::default(), 2);
    jobs.recover().await;
    assert_eq!(
        jobs.held(),
        [HeldJob {
            job: key.0,
            attempt: 1,
            outcome: Some(succeeded.clone())
        }]
    );
    assert!(!orphan.exists(), "the dead job's work dir is removed");
    let work = tmp
        .path()
        .join(format!("work/{}", crate::results::key_name(&key)));
    assert!(
        work.join(crate::executor::LOG_FILE).exists(),
        "the held job keeps its log"
    );
    let logs = jobs.logs_to_send();
    assert_eq!(logs.len(), 1);
    assert!(logs[0].1.state().closed);

    // The coordinator recorded it: gone from memory, then from disk.
    assert!(jobs.ack(&key));
    assert!(!jobs.ack(&key), "a second ack is a no-op");
    assert!(jobs.held().is_empty());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while result_file.exists() || work.exists() {
        assert!(std::time::Instant::now() < deadline, "removed in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (again, _rx) = jobs_in(tmp.path(), FakeRunner::default(), 2);
    again.recover().await;
    assert!(again.held().is_empty(), "an acknowledged result stays gone");
}

#[tokio::test]
async fn a_cancel_reports_cancelled_and_a_shutdown_asks_for_a_retry() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (jobs, mut rx) = jobs_in(tmp.path(), hanging(), 2);
    let a = assignment("linux/amd64");
    let cancelled = (a.job, a.attempt);
    assert!(matches!(jobs.assign(a), AssignReply::Accepted(_)));
    assert_eq!(next(&mut rx).await, Notice::Started(cancelled));
    assert!(jobs.cancel(&cancelled));
    assert_eq!(next(&mut rx).await, Notice::Finished(cancelled));
    assert_eq!(jobs.outcome(&cancelled), Some(JobOutcome::Cancelled));
    assert!(!jobs.cancel(&cancelled), "not running any more");

    let b = assignment("linux/amd64");
    let interrupted = (b.job, b.attempt);
    assert!(matches!(jobs.assign(b), AssignReply::Accepted(_)));
    assert_eq!(next(&mut rx).await, Notice::Started(interrupted));
    tokio::time::timeout(Duration::from_secs(10), jobs.shutdown())
        .await
        .expect("shutdown waits for the jobs, and they stop");
    assert_eq!(next(&mut rx).await, Notice::Finished(interrupted));
    match jobs.outcome(&interrupted) {
        Some(JobOutcome::Failed(f)) => {
            assert_eq!(f.kind, FailureKind::Infrastructure);
            assert_eq!(f.message, "the agent shut down before the job finished");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(jobs.running(), 0);
    let f = refusal(jobs.assign(assignment("linux/amd64")));
    assert_eq!(f.message, "the agent is shutting down");
}

/// Builds run until `release` fires.
fn gated(release: &CancellationToken) -> FakeRunner {
    let release = release.clone();
    FakeRunner::replying(move |cmd| match cmd.args.get(4).map(String::as_str) {
        Some("build") if cmd.program == "buildah" => Reply::until(&release, "STEP 1/2\n"),
        _ => Reply::ok(""),
    })
}

#[tokio::test]
async fn a_drain_refuses_new_work_and_lets_the_running_jobs_finish() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let release = CancellationToken::new();
    let (jobs, mut rx) = jobs_in(tmp.path(), gated(&release), 2);
    let a = assignment("linux/amd64");
    let running = (a.job, a.attempt);
    assert!(matches!(jobs.assign(a), AssignReply::Accepted(_)));
    assert_eq!(next(&mut rx).await, Notice::Started(running));
    assert_eq!(jobs.drain_remaining(), None, "not draining yet");

    let drain = {
        let jobs = jobs.clone();
        tokio::spawn(async move { jobs.drain(Duration::from_secs(60)).await })
    };
    assert_eq!(
        next(&mut rx).await,
        Notice::Draining,
        "the session tells the coordinator"
    );
    let left = jobs.drain_remaining().expect("draining");
    assert!(
        left > Duration::from_secs(50) && left <= Duration::from_secs(60),
        "{left:?}"
    );
    assert_eq!(
        jobs.start_draining(Duration::from_secs(1)),
        1,
        "a second start changes nothing"
    );
    assert!(jobs.drain_remaining().expect("draining") > Duration::from_secs(50));

    // A free slot, but no new work: it goes back to be requeued.
    let f = refusal(jobs.assign(assignment("linux/amd64")));
    assert_eq!(f.kind, FailureKind::Infrastructure);
    assert_eq!(f.message, "the agent is draining");
    assert!(jobs.is_running(&running), "the running job goes on");
    assert!(!drain.is_finished());

    release.cancel();
    assert_eq!(next(&mut rx).await, Notice::Finished(running));
    let late = tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .expect("the drain ends when the job does")
        .expect("drain task");
    assert_eq!(late, 0);
    assert_eq!(jobs.outcome(&running), Some(JobOutcome::Succeeded(image())));
    assert!(rx.try_recv().is_err(), "one Draining notice only");
}

#[tokio::test]
async fn the_drain_deadline_cancels_what_still_runs_for_a_retry_elsewhere() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (jobs, mut rx) = jobs_in(tmp.path(), hanging(), 2);
    let a = assignment("linux/amd64");
    let key = (a.job, a.attempt);
    assert!(matches!(jobs.assign(a), AssignReply::Accepted(_)));
    assert_eq!(next(&mut rx).await, Notice::Started(key));

    let started = std::time::Instant::now();
    let late = tokio::time::timeout(
        Duration::from_secs(10),
        jobs.drain(Duration::from_millis(200)),
    )
    .await
    .expect("the drain ends at its deadline");
    assert_eq!(late, 1);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(next(&mut rx).await, Notice::Draining);
    assert_eq!(next(&mut rx).await, Notice::Finished(key));
    match jobs.outcome(&key) {
        Some(JobOutcome::Failed(f)) => {
            assert_eq!(f.kind, FailureKind::Infrastructure);
            assert_eq!(f.message, "the agent shut down before the job finished");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(jobs.running(), 0);
    assert_eq!(jobs.drain_remaining(), Some(Duration::ZERO));

    // The results wait for the coordinator, for a bounded time.
    assert!(!jobs.wait_acked(Duration::from_millis(50)).await);
    assert_eq!(jobs.unacked_count(), 1);
    let acker = {
        let jobs = jobs.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            jobs.ack(&key)
        })
    };
    assert!(jobs.wait_acked(Duration::from_secs(10)).await);
    assert!(acker.await.expect("acker"));
}

#[tokio::test]
async fn an_idle_agent_drains_at_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (jobs, mut rx) = jobs_in(tmp.path(), hanging(), 1);
    let late = tokio::time::timeout(Duration::from_secs(5), jobs.drain(Duration::from_secs(600)))
        .await
        .expect("nothing to wait for");
    assert_eq!(late, 0);
    assert_eq!(next(&mut rx).await, Notice::Draining);
    assert!(
        jobs.wait_acked(Duration::from_secs(5)).await,
        "nothing held"
    );
    let f = refusal(jobs.assign(assignment("linux/amd64")));
    assert_eq!(f.message, "the agent is shutting down");
}

#[tokio::test]
async fn a_reloaded_capacity_applies_to_the_next_assignment() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (jobs, mut rx) = jobs_in(tmp.path(), hanging(), 1);
    assert_eq!(jobs.capacity(), 1);
    assert!(matches!(
        jobs.assign(assignment("linux/amd64")),
        AssignReply::Accepted(_)
    ));
    let _started = next(&mut rx).await;
    let f = refusal(jobs.assign(assignment("linux/amd64")));
    assert!(f.message.contains("its capacity is 1"), "{}", f.message);

    jobs.set_capacity(2);
    assert!(matches!(
        jobs.assign(assignment("linux/amd64")),
        AssignReply::Accepted(_)
    ));
    let _started = next(&mut rx).await;
    assert_eq!(jobs.running(), 2);

    // Lowered below what runs: the running jobs go on, nothing new is taken.
    jobs.set_capacity(1);
    assert_eq!(jobs.running(), 2);
    let f = refusal(jobs.assign(assignment("linux/amd64")));
    assert!(
        f.message.contains("it runs 2 job(s), its capacity is 1"),
        "{}",
        f.message
    );
    jobs.shutdown().await;
}
