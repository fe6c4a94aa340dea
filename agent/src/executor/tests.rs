//! The executor with a fake process layer and a fake registry: the steps, the cleanup,
//! and how failures are classified.

use std::collections::BTreeMap;
use std::sync::Mutex;

use helix_protocol::{BuildId, Digest, JobId};

use super::*;
use crate::builder::fake::{FakeRunner, Reply};
use crate::builder::Buildah;
use crate::context::fake::{Answer, FakeFetcher};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

type PushResult = Result<ImageResult, RegistryError>;

/// A registry that answers from a script and records what was pushed.
struct FakePusher {
    answer: Box<dyn Fn() -> PushResult + Send + Sync>,
    pushed: Mutex<Vec<(PathBuf, String, String)>>,
}

impl fmt::Debug for FakePusher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakePusher").finish_non_exhaustive()
    }
}

impl FakePusher {
    fn answering(answer: impl Fn() -> PushResult + Send + Sync + 'static) -> Arc<FakePusher> {
        Arc::new(FakePusher {
            answer: Box::new(answer),
            pushed: Mutex::new(Vec::new()),
        })
    }

    fn ok() -> Arc<FakePusher> {
        FakePusher::answering(|| Ok(image()))
    }

    fn pushed(&self) -> Vec<(PathBuf, String, String)> {
        self.pushed.lock().expect("lock").clone()
    }
}

impl ImagePusher for FakePusher {
    fn push<'a>(
        &'a self,
        layout_dir: &'a Path,
        name: &'a str,
        destination: &'a ImageRef,
        _cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, PushResult> {
        self.pushed.lock().expect("lock").push((
            layout_dir.to_path_buf(),
            name.to_string(),
            destination.to_string(),
        ));
        let answer = (self.answer)();
        Box::pin(async move { answer })
    }
}

fn image() -> ImageResult {
    ImageResult {
        digest: Digest::sha256_of(b"manifest"),
        size: 428,
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
    }
}

fn assignment(source: PinnedSource) -> Assignment {
    Assignment {
        job: JobId::new_v4(),
        attempt: 1,
        build: BuildId::new_v4(),
        platform: "linux/amd64".parse().expect("platform"),
        source,
        dockerfile: "Dockerfile".into(),
        build_args: BTreeMap::from([("VERSION".to_string(), "1.0".to_string())]),
        target: None,
        labels: BTreeMap::new(),
        destination: "127.0.0.1:5000/demo/app:v1".parse().expect("ref"),
        no_cache: false,
    }
}

fn git_source() -> PinnedSource {
    PinnedSource::Git {
        repo: "file:///srv/repo".into(),
        commit: COMMIT.into(),
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    executor: Executor,
    runner: Arc<FakeRunner>,
    pusher: Arc<FakePusher>,
    fetcher: Arc<FakeFetcher>,
}

fn setup(runner: FakeRunner, pusher: Arc<FakePusher>) -> Setup {
    setup_with(
        runner,
        pusher,
        FakeFetcher::answering(Answer::Rejected("no context in this test".into())),
    )
}

fn setup_with(runner: FakeRunner, pusher: Arc<FakePusher>, fetcher: Arc<FakeFetcher>) -> Setup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let runner = Arc::new(runner);
    let builder = Arc::new(Buildah::new(&tmp.path().join("storage"), runner.clone()));
    let executor = Executor::new(
        tmp.path().join("work"),
        runner.clone(),
        builder,
        pusher.clone(),
        fetcher.clone(),
    );
    Setup {
        _tmp: tmp,
        executor,
        runner,
        pusher,
        fetcher,
    }
}

/// Runs `a`; returns how it ended, whether `started` was called, and the log.
async fn run(s: &Setup, a: &Assignment, cancel: &CancellationToken) -> (Ended, bool, String) {
    let log = JobLog::new(s.executor.log_path(&(a.job, a.attempt)));
    let started = std::sync::atomic::AtomicBool::new(false);
    let ended = s
        .executor
        .run(a, &log, cancel, || {
            started.store(true, std::sync::atomic::Ordering::SeqCst)
        })
        .await;
    log.close().await;
    let text = std::fs::read_to_string(log.path()).unwrap_or_default();
    (ended, started.into_inner(), text)
}

/// The commands run, shortened to what tells them apart (`git fetch`, `buildah build`).
fn steps(runner: &FakeRunner) -> Vec<String> {
    runner
        .calls()
        .iter()
        .map(|c| match c.program.as_str() {
            "buildah" => format!("buildah {}", c.args[4]),
            _ => format!(
                "{} {}",
                c.program,
                c.args
                    .iter()
                    .find(|a| !a.starts_with('-') && !a.contains('='))
                    .map_or("", String::as_str)
            ),
        })
        .collect()
}

fn failed(ended: Ended) -> JobFailure {
    match ended {
        Ended::Outcome(JobOutcome::Failed(f)) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_job_fetches_builds_pushes_and_cleans_up() {
    let s = setup(FakeRunner::default(), FakePusher::ok());
    let a = assignment(git_source());
    let (ended, started, log) = run(&s, &a, &CancellationToken::new()).await;
    assert_eq!(ended, Ended::Outcome(JobOutcome::Succeeded(image())));
    assert!(started);
    assert_eq!(
        steps(&s.runner),
        [
            "git init",
            "git remote",
            "git fetch",
            "git checkout",
            "buildah build",
            "buildah push",
            "buildah rmi"
        ]
    );

    let dir = s.executor.work_dir(&(a.job, a.attempt));
    let src = dir.join("src");
    let calls = s.runner.calls();
    for git in &calls[..4] {
        assert_eq!(git.cwd.as_deref(), Some(src.as_path()));
        assert!(git
            .env
            .contains(&("GIT_TERMINAL_PROMPT".to_string(), "0".to_string())));
    }
    assert_eq!(
        calls[1].args,
        ["remote", "add", "origin", "file:///srv/repo"]
    );
    assert_eq!(calls[2].args, ["fetch", "--depth", "1", "origin", COMMIT]);
    assert_eq!(
        calls[3].args,
        [
            "-c",
            "advice.detachedHead=false",
            "checkout",
            "-q",
            "FETCH_HEAD"
        ]
    );
    let image_name = format!("helix-{}-1", a.job);
    let build = &calls[4].args;
    assert!(build.ends_with(&[
        "-t".to_string(),
        image_name.clone(),
        src.display().to_string()
    ]));
    assert!(build.contains(&src.join("Dockerfile").display().to_string()));
    assert_eq!(calls[6].args[4..], ["rmi", "-f", image_name.as_str()]);

    assert_eq!(
        s.pusher.pushed(),
        [(
            dir.join("layout"),
            image_name,
            "127.0.0.1:5000/demo/app:v1".to_string()
        )]
    );

    assert!(
        log.starts_with(&format!(
            "==> building linux/amd64 at commit {COMMIT} (attempt 1)\n"
        )),
        "{log}"
    );
    assert!(log.contains("$ git fetch --depth 1 origin"), "{log}");
    assert!(
        log.contains("--build-arg VERSION=…"),
        "build-arg values stay out of the log: {log}"
    );
    assert!(
        log.contains("==> pushing to 127.0.0.1:5000/demo/app by digest"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "==> pushed 127.0.0.1:5000/demo/app@{}",
            image().digest
        )),
        "{log}"
    );

    // Only the log is left of the work dir, private to the agent.
    let left: Vec<String> = std::fs::read_dir(&dir)
        .expect("work dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, [LOG_FILE]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dir).expect("dir").permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[tokio::test]
async fn a_failing_dockerfile_is_a_build_failure_with_the_end_of_the_output() {
    let output: String = (1..=30).map(|i| format!("line {i}\n")).collect::<String>()
        + "Error: building at STEP \"COPY missing.txt /\": no such file or directory\n";
    let s = setup(
        FakeRunner::replying(move |cmd| {
            if cmd.program == "buildah" && cmd.args[4] == "build" {
                Reply::exit(1, &output)
            } else {
                Reply::ok("")
            }
        }),
        FakePusher::ok(),
    );
    let a = assignment(git_source());
    let (ended, _, log) = run(&s, &a, &CancellationToken::new()).await;
    let f = failed(ended);
    assert_eq!(f.kind, FailureKind::Build);
    assert_eq!(f.exit_code, Some(1));
    assert!(
        f.message
            .starts_with("buildah build exited with status 1; last lines of output:\nline 12\n"),
        "{}",
        f.message
    );
    assert!(
        f.message.ends_with("no such file or directory"),
        "{}",
        f.message
    );
    assert_eq!(
        f.message.lines().count(),
        21,
        "the head line and 20 lines of output"
    );
    assert!(s.pusher.pushed().is_empty(), "nothing to push");
    assert_eq!(
        steps(&s.runner).last().map(String::as_str),
        Some("buildah rmi"),
        "cleaned up"
    );
    assert!(
        log.contains("==> failed: buildah build exited with status 1"),
        "{log}"
    );
    assert!(!s
        .executor
        .work_dir(&(a.job, a.attempt))
        .join("src")
        .exists());
}

#[tokio::test]
async fn failures_are_classified() {
    #[track_caller]
    fn check(f: &JobFailure, kind: FailureKind, message_start: &str) {
        assert_eq!(f.kind, kind, "{}", f.message);
        assert!(f.message.starts_with(message_start), "{}", f.message);
    }

    // A signal nobody sent: the OOM killer, an operator. Another host may do better.
    let s = setup(
        FakeRunner::replying(|cmd| match cmd.args.get(4).map(String::as_str) {
            Some("build") if cmd.program == "buildah" => Reply::signal(9, "STEP 1/3\n"),
            _ => Reply::ok(""),
        }),
        FakePusher::ok(),
    );
    let f = failed(
        run(&s, &assignment(git_source()), &CancellationToken::new())
            .await
            .0,
    );
    check(
        &f,
        FailureKind::Infrastructure,
        "buildah build was killed by signal 9 (SIGKILL)",
    );
    assert_eq!(f.exit_code, None);

    // Writing the image to the local layout failed: the host's problem.
    let s = setup(
        FakeRunner::replying(|cmd| match cmd.args.get(4).map(String::as_str) {
            Some("push") if cmd.program == "buildah" => {
                Reply::exit(125, "Error: no space left on device\n")
            }
            _ => Reply::ok(""),
        }),
        FakePusher::ok(),
    );
    let f = failed(
        run(&s, &assignment(git_source()), &CancellationToken::new())
            .await
            .0,
    );
    check(
        &f,
        FailureKind::Infrastructure,
        "buildah push exited with status 125",
    );

    // The source could not be fetched.
    let s = setup(
        FakeRunner::replying(|cmd| {
            if cmd.program == "git" && cmd.args[0] == "fetch" {
                Reply::exit(128, "fatal: could not read from remote repository\n")
            } else {
                Reply::ok("")
            }
        }),
        FakePusher::ok(),
    );
    let f = failed(
        run(&s, &assignment(git_source()), &CancellationToken::new())
            .await
            .0,
    );
    check(
        &f,
        FailureKind::Infrastructure,
        "git fetch exited with status 128; last lines of output:\nfatal: could not read",
    );
    assert_eq!(
        steps(&s.runner),
        ["git init", "git remote", "git fetch", "buildah rmi"]
    );

    // The registry is down: retry elsewhere or later.
    let s = setup(
        FakeRunner::default(),
        FakePusher::answering(|| {
            Err(RegistryError::Unreachable {
                registry: "127.0.0.1:5000".into(),
                action: "pushing blob".into(),
                detail: "connection refused".into(),
            })
        }),
    );
    let f = failed(
        run(&s, &assignment(git_source()), &CancellationToken::new())
            .await
            .0,
    );
    check(
        &f,
        FailureKind::Infrastructure,
        "pushing the image failed: cannot reach registry 127.0.0.1:5000",
    );

    // The registry refused: the same push would be refused again.
    let s = setup(
        FakeRunner::default(),
        FakePusher::answering(|| {
            Err(RegistryError::AuthRefused {
                registry: "127.0.0.1:5000".into(),
                action: "pushing".into(),
                detail: "HTTP 401".into(),
                credentials: String::new(),
            })
        }),
    );
    let f = failed(
        run(&s, &assignment(git_source()), &CancellationToken::new())
            .await
            .0,
    );
    check(
        &f,
        FailureKind::Build,
        "pushing the image failed: registry 127.0.0.1:5000 refused access",
    );

    // A Dockerfile outside the context is refused before anything runs.
    let s = setup(FakeRunner::default(), FakePusher::ok());
    let mut a = assignment(git_source());
    a.dockerfile = "../../etc/Dockerfile".into();
    let f = failed(run(&s, &a, &CancellationToken::new()).await.0);
    check(&f, FailureKind::Build, "invalid Dockerfile path");
    assert!(s.pusher.pushed().is_empty());

    // So is a commit git would take for an option.
    let s = setup(FakeRunner::default(), FakePusher::ok());
    let a = assignment(PinnedSource::Git {
        repo: "file:///srv/repo".into(),
        commit: "--upload-pack=touch /tmp/x".into(),
    });
    let f = failed(run(&s, &a, &CancellationToken::new()).await.0);
    check(&f, FailureKind::Build, "invalid commit");
    assert_eq!(steps(&s.runner), ["buildah rmi"]);
}

#[tokio::test]
async fn a_cancelled_job_stops_its_builder_and_still_cleans_up() {
    let s = setup(
        FakeRunner::replying(|cmd| match cmd.args.get(4).map(String::as_str) {
            Some("build") if cmd.program == "buildah" => Reply::hang("STEP 1/2: FROM scratch\n"),
            _ => Reply::ok(""),
        }),
        FakePusher::ok(),
    );
    let a = assignment(git_source());
    let cancel = CancellationToken::new();
    let canceller = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            cancel.cancel();
        })
    };
    let (ended, started, log) = run(&s, &a, &cancel).await;
    canceller.await.expect("canceller");
    assert_eq!(ended, Ended::Cancelled);
    assert!(started);
    assert!(s.pusher.pushed().is_empty());
    assert_eq!(
        steps(&s.runner).last().map(String::as_str),
        Some("buildah rmi")
    );
    assert!(log.ends_with("==> cancelled\n"), "{log}");
}

#[test]
fn dockerfile_paths_stay_in_the_context() {
    let src = Path::new("/w/src");
    assert_eq!(
        dockerfile_in(src, "docker/Dockerfile.prod"),
        Ok(PathBuf::from("/w/src/docker/Dockerfile.prod"))
    );
    assert_eq!(
        dockerfile_in(src, "./Dockerfile"),
        Ok(PathBuf::from("/w/src/./Dockerfile"))
    );
    for bad in ["", "/etc/passwd", "../Dockerfile", "a/../../b", "a\nb"] {
        assert!(dockerfile_in(src, bad).is_err(), "{bad:?}");
    }
}

/// A build context with a Dockerfile and a file it copies, packed; and its digest.
fn packed_context() -> (Vec<u8>, Digest) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY hello.txt /hello.txt\n",
    )
    .expect("write");
    std::fs::create_dir(dir.path().join("data")).expect("mkdir");
    std::fs::write(dir.path().join("data/hello.txt"), "hello\n").expect("write");
    let mut bytes = Vec::new();
    let packed = helix_context::pack(dir.path(), &mut bytes).expect("pack");
    assert_eq!(packed.digest, Digest::sha256_of(&bytes));
    (bytes, packed.digest)
}

/// A tar archive whose one entry is `../x`, as a hostile client could upload.
fn escaping_archive() -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..4].copy_from_slice(b"../x");
    header.set_size(1);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, &b"x"[..]).expect("append");
    builder.into_inner().expect("finish")
}

/// A runner whose `buildah build` fails unless the context it builds has the files.
fn checking_context() -> FakeRunner {
    FakeRunner::replying(|cmd| {
        if cmd.program == "buildah" && cmd.args[4] == "build" {
            let src = cmd.cwd.clone().expect("build runs in the context");
            let hello = std::fs::read_to_string(src.join("data/hello.txt")).unwrap_or_default();
            if src.join("Dockerfile").is_file() && hello == "hello\n" {
                return Reply::ok("STEP 1/2: FROM scratch\n");
            }
            return Reply::exit(1, "Error: the context is not there\n");
        }
        Reply::ok("")
    })
}

#[tokio::test]
async fn a_context_job_downloads_verifies_unpacks_and_builds() {
    let (bytes, digest) = packed_context();
    let size = bytes.len();
    let s = setup_with(
        checking_context(),
        FakePusher::ok(),
        FakeFetcher::sending(bytes),
    );
    let a = assignment(PinnedSource::Context {
        digest: digest.clone(),
    });
    let (ended, started, log) = run(&s, &a, &CancellationToken::new()).await;
    assert_eq!(
        ended,
        Ended::Outcome(JobOutcome::Succeeded(image())),
        "{log}"
    );
    assert!(started);
    assert_eq!(s.fetcher.asked(), std::slice::from_ref(&digest));
    assert_eq!(
        steps(&s.runner),
        ["buildah build", "buildah push", "buildah rmi"],
        "no git for a context"
    );
    assert!(
        log.starts_with(&format!(
            "==> building linux/amd64 from context {digest} (attempt 1)\n\
             ==> fetching build context {digest} ({size} bytes)\n\
             ==> unpacked 2 files, 1 directory and 0 links (45 bytes)\n\
             "
        )),
        "{log}"
    );
    let dir = s.executor.work_dir(&(a.job, a.attempt));
    let left: Vec<String> = std::fs::read_dir(&dir)
        .expect("work dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, [LOG_FILE], "the archive and the context are removed");
}

#[tokio::test]
async fn a_context_that_does_not_arrive_right_is_an_infrastructure_failure() {
    #[track_caller]
    fn check(f: &JobFailure, kind: FailureKind, message: &str) {
        assert_eq!(f.kind, kind, "{}", f.message);
        assert!(f.message.contains(message), "{}", f.message);
    }
    let (bytes, digest) = packed_context();
    let a = assignment(PinnedSource::Context {
        digest: digest.clone(),
    });

    // Other bytes than the digest says, of the same size.
    let mut damaged = bytes.clone();
    damaged[100] ^= 0xff;
    let actual = Digest::sha256_of(&damaged);
    let s = setup_with(
        checking_context(),
        FakePusher::ok(),
        FakeFetcher::sending(damaged),
    );
    let (ended, _, log) = run(&s, &a, &CancellationToken::new()).await;
    let f = failed(ended);
    check(
        &f,
        FailureKind::Infrastructure,
        &format!("does not match its digest: expected {digest}, got {actual}"),
    );
    assert_eq!(steps(&s.runner), ["buildah rmi"], "nothing built");
    assert!(
        log.contains("==> failed: the build context received does not match"),
        "{log}"
    );
    let dir = s.executor.work_dir(&(a.job, a.attempt));
    assert!(
        !dir.join(CONTEXT_FILE).exists(),
        "the damaged archive is deleted"
    );
    assert!(!dir.join("src").exists());

    // The stream ends early.
    let s = setup_with(
        checking_context(),
        FakePusher::ok(),
        FakeFetcher::answering(Answer::Follows {
            size: bytes.len() as u64,
            bytes: bytes[..1000].to_vec(),
        }),
    );
    let f = failed(run(&s, &a, &CancellationToken::new()).await.0);
    check(
        &f,
        FailureKind::Infrastructure,
        &format!(
            "the build context stream ended after 1000 of {} bytes",
            bytes.len()
        ),
    );
    assert_eq!(steps(&s.runner), ["buildah rmi"]);

    // The coordinator does not have it (any more).
    let s = setup_with(
        checking_context(),
        FakePusher::ok(),
        FakeFetcher::answering(Answer::Rejected(format!("no build context {digest}"))),
    );
    let f = failed(run(&s, &a, &CancellationToken::new()).await.0);
    check(
        &f,
        FailureKind::Infrastructure,
        &format!("the coordinator refused to send the build context: no build context {digest}"),
    );
}

#[tokio::test]
async fn an_archive_the_unpacker_refuses_is_a_build_failure() {
    let archive = escaping_archive();
    let digest = Digest::sha256_of(&archive);
    let s = setup_with(
        checking_context(),
        FakePusher::ok(),
        FakeFetcher::sending(archive),
    );
    let a = assignment(PinnedSource::Context { digest });
    let (ended, _, log) = run(&s, &a, &CancellationToken::new()).await;
    let f = failed(ended);
    assert_eq!(f.kind, FailureKind::Build, "{}", f.message);
    assert!(
        f.message
            .starts_with("refusing build context entry \"../x\": "),
        "{}",
        f.message
    );
    assert!(
        log.contains("==> failed: refusing build context entry"),
        "{log}"
    );
    assert_eq!(steps(&s.runner), ["buildah rmi"]);
    let dir = s.executor.work_dir(&(a.job, a.attempt));
    assert!(!dir.join("src").exists() && !dir.join(CONTEXT_FILE).exists());
    assert!(!dir.parent().expect("work root").join("x").exists());
}
