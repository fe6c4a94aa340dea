//! [`Executor`]: runs one [`Assignment`] from source to pushed image.
//!
//! In a private work dir `DATA/work/<job>-<attempt>/` (0700):
//!
//! 1. fetch the source into `src/`: the pinned commit (`git init`, `git remote add
//!    origin REPO`, `git fetch --depth 1 origin COMMIT`, `git checkout -q FETCH_HEAD`),
//!    or the uploaded build context by digest (downloaded through the
//!    [`ContextFetcher`] into `context.tar`, verified against its sha256, unpacked
//!    with `helix_context::unpack`, which refuses entries that would escape `src/`);
//! 2. build it for the job's platform with the [`Builder`] into `layout/`;
//! 3. push the layout's image by digest to the destination repository;
//! 4. clean up, whatever happened: the local image, `src/`, `context.tar` and
//!    `layout/`. The job's
//!    `output.log` stays until the coordinator acknowledges the result (it may still
//!    have to be sent after a reconnect); [`crate::jobs`] removes it then.
//!
//! Every step's output goes to the job's log. Failures are sorted for the scheduler
//! ([`FailureKind`]): what the same inputs would hit again is `Build` (the Dockerfile
//! failed, the registry refused the push); what another attempt may not hit is
//! `Infrastructure` (the source could not be fetched, a context arrived damaged, a
//! builder was killed by a signal the agent did not send, the registry was
//! unreachable). A context archive the unpacker refuses is `Build`: it would be
//! refused anywhere.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use helix_context::ContextError;
use helix_protocol::wire::{Assignment, JobOutcome, PinnedSource};
use helix_protocol::{Digest, FailureKind, ImageRef, ImageResult, JobFailure};
use helix_registry::{OciLayout, Registry, RegistryError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::builder::{
    BoxFuture, BuildError, BuildRequest, BuildStep, Builder, CaptureSink, CommandRunner,
    CommandSpec, ExitStatus,
};
use crate::context::{self, Cancellable, ContextFetcher, MAX_CONTEXT_BYTES, UNPACK_LIMITS};
use crate::joblog::JobLog;
use crate::metrics::{Metrics, ResultLabel};
use crate::results::{key_name, JobKey};

/// The work dir's file holding the job's output.
pub const LOG_FILE: &str = "output.log";

/// The work dir's file a build context is downloaded to (removed once unpacked).
pub const CONTEXT_FILE: &str = "context.tar";

/// What a job leaves in its work dir besides its log, removed when it ends.
pub const SCRATCH: [&str; 3] = ["src", CONTEXT_FILE, "layout"];

/// Pushes a built image; the registry client in production, a fake in tests.
pub trait ImagePusher: Send + Sync + fmt::Debug {
    /// Push the image `name` of the OCI layout at `layout_dir` to `destination`'s
    /// repository by digest; give up when `cancel` fires.
    fn push<'a>(
        &'a self,
        layout_dir: &'a Path,
        name: &'a str,
        destination: &'a ImageRef,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<ImageResult, RegistryError>>;
}

impl ImagePusher for Registry {
    fn push<'a>(
        &'a self,
        layout_dir: &'a Path,
        name: &'a str,
        destination: &'a ImageRef,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<ImageResult, RegistryError>> {
        // `push_layout`'s future cannot be proven `Send` (rustc's higher-ranked
        // lifetime limitation with its per-blob stream closure), so it cannot be held
        // across an await in a spawned task. It runs on a blocking thread driving the
        // same runtime instead (so the client's connection pool stays on it), and
        // stops there when `cancel` fires.
        let registry = self.clone();
        let layout_dir = layout_dir.to_path_buf();
        let name = name.to_string();
        let destination = destination.clone();
        let cancel = cancel.clone();
        let handle = tokio::runtime::Handle::current();
        let span = tracing::Span::current();
        Box::pin(async move {
            let pushed = tokio::task::spawn_blocking(move || {
                let _in_job = span.enter();
                handle.block_on(async {
                    tokio::select! {
                        biased;
                        () = cancel.cancelled() => Err(RegistryError::Internal("the push was cancelled".into())),
                        pushed = registry.push_layout(&layout_dir, Some(&name), &destination) => pushed,
                    }
                })
            })
            .await;
            pushed.unwrap_or_else(|e| {
                Err(RegistryError::Internal(format!(
                    "the push task did not finish: {e}"
                )))
            })
        })
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Outcome(JobOutcome),
    /// The cancel token fired; the caller knows why.
    Cancelled,
}

/// Why the steps stopped.
#[derive(Debug)]
enum Stop {
    Cancelled,
    Failed(JobFailure),
}

fn failure(kind: FailureKind, message: String, exit_code: Option<i32>) -> Stop {
    Stop::Failed(JobFailure {
        kind,
        message,
        exit_code,
    })
}

/// Runs jobs: the work dir root and the tools.
#[derive(Debug, Clone)]
pub struct Executor {
    work_root: PathBuf,
    runner: Arc<dyn CommandRunner>,
    builder: Arc<dyn Builder>,
    pusher: Arc<dyn ImagePusher>,
    contexts: Arc<dyn ContextFetcher>,
    metrics: Option<Arc<Metrics>>,
}

impl Executor {
    pub fn new(
        work_root: PathBuf,
        runner: Arc<dyn CommandRunner>,
        builder: Arc<dyn Builder>,
        pusher: Arc<dyn ImagePusher>,
        contexts: Arc<dyn ContextFetcher>,
    ) -> Executor {
        Executor {
            work_root,
            runner,
            builder,
            pusher,
            contexts,
            metrics: None,
        }
    }

    /// The same executor, recording builder durations and pushed bytes in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Executor {
        self.metrics = Some(metrics);
        self
    }

    /// `DATA/work`.
    pub fn work_root(&self) -> &Path {
        &self.work_root
    }

    /// `DATA/work/<job>-<attempt>`.
    pub fn work_dir(&self, key: &JobKey) -> PathBuf {
        self.work_root.join(key_name(key))
    }

    /// The job's log file.
    pub fn log_path(&self, key: &JobKey) -> PathBuf {
        self.work_dir(key).join(LOG_FILE)
    }

    /// Run `a`, writing its output to `log`; `started` is called once the work
    /// begins. Cleans up before returning, whatever the outcome.
    pub async fn run(
        &self,
        a: &Assignment,
        log: &JobLog,
        cancel: &CancellationToken,
        started: impl FnOnce() + Send,
    ) -> Ended {
        let key = (a.job, a.attempt);
        let dir = self.work_dir(&key);
        if let Err(e) = prepare_work_dir(&self.work_root, &dir).await {
            return Ended::Outcome(JobOutcome::Failed(JobFailure {
                kind: FailureKind::Infrastructure,
                message: format!("cannot create the work dir {}: {e}", dir.display()),
                exit_code: None,
            }));
        }
        let at = match &a.source {
            PinnedSource::Git { commit, .. } => format!("at commit {commit}"),
            PinnedSource::Context { digest } => format!("from context {digest}"),
        };
        log.line(&format!(
            "==> building {} {at} (attempt {})",
            a.platform, a.attempt
        ))
        .await;
        started();

        let image = image_name(&key);
        let result = self.steps(a, &dir, &image, log, cancel).await;

        // Clean up whatever happened. The rmi output would only confuse a reader of
        // a failed build's log ("image not known"), so it stays out of it.
        self.builder
            .remove_image(&image, &a.platform, &CaptureSink::default())
            .await;
        remove_scratch(&dir).await;

        match result {
            Ok(pushed) => {
                info!(digest = %pushed.digest, "job succeeded");
                Ended::Outcome(JobOutcome::Succeeded(pushed))
            }
            Err(Stop::Cancelled) => {
                log.line("==> cancelled").await;
                info!("job cancelled");
                Ended::Cancelled
            }
            Err(Stop::Failed(f)) => {
                log.line(&format!("==> failed: {}", first_line(&f.message)))
                    .await;
                info!(kind = ?f.kind, "job failed: {}", first_line(&f.message));
                Ended::Outcome(JobOutcome::Failed(f))
            }
        }
    }

    async fn steps(
        &self,
        a: &Assignment,
        dir: &Path,
        image: &str,
        log: &JobLog,
        cancel: &CancellationToken,
    ) -> Result<ImageResult, Stop> {
        let src = dir.join("src");
        let dockerfile = dockerfile_in(&src, &a.dockerfile)
            .map_err(|reason| failure(FailureKind::Build, reason, None))?;
        match &a.source {
            PinnedSource::Git { repo, commit } => {
                self.fetch(repo, commit, &src, log, cancel).await?;
            }
            PinnedSource::Context { digest } => {
                self.fetch_context(digest, dir, &src, log, cancel).await?;
            }
        }

        let layout_dir = dir.join("layout");
        let req = BuildRequest {
            context: src.clone(),
            dockerfile,
            platform: a.platform.clone(),
            build_args: a.build_args.clone(),
            target: a.target.clone(),
            labels: a.labels.clone(),
            no_cache: a.no_cache,
            image: image.to_string(),
            layout_dir,
        };
        log.line(&format!("==> building with {}", self.builder.name()))
            .await;
        let build_started = std::time::Instant::now();
        let built = self.builder.build(&req, log, cancel).await;
        if let Some(metrics) = &self.metrics {
            let result = match &built {
                Ok(_) => "succeeded",
                Err(BuildError::Cancelled) => "cancelled",
                Err(_) => "failed",
            };
            metrics
                .builder_duration
                .get_or_create(&ResultLabel {
                    result: result.to_string(),
                })
                .observe(build_started.elapsed().as_secs_f64());
        }
        let built = built.map_err(classify_build)?;

        let repository = a.destination.repository_ref();
        log.line(&format!("==> pushing to {repository} by digest"))
            .await;
        let pushed = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(Stop::Cancelled),
            pushed = self.pusher.push(&built.layout_dir, &built.name_in_layout, &a.destination, cancel) => pushed,
        };
        let pushed = pushed.map_err(|e| {
            let kind = if e.is_retryable() {
                FailureKind::Infrastructure
            } else {
                FailureKind::Build
            };
            failure(kind, format!("pushing the image failed: {e}"), None)
        })?;
        log.line(&format!(
            "==> pushed {repository}@{} ({} bytes, {})",
            pushed.digest, pushed.size, pushed.media_type
        ))
        .await;
        if let Some(metrics) = &self.metrics {
            if let Some(bytes) = layout_bytes(&built.layout_dir, &built.name_in_layout).await {
                metrics.push_bytes.inc_by(bytes);
            }
        }
        Ok(pushed)
    }

    /// The pinned commit into `src` (shallow). Any failure here is infrastructure:
    /// the commit was resolved at submit, so the repository was reachable and had it.
    async fn fetch(
        &self,
        repo: &str,
        commit: &str,
        src: &Path,
        log: &JobLog,
        cancel: &CancellationToken,
    ) -> Result<(), Stop> {
        check_git_input(repo, commit)
            .map_err(|reason| failure(FailureKind::Build, reason, None))?;
        if let Err(e) = tokio::fs::create_dir(src).await {
            return Err(failure(
                FailureKind::Infrastructure,
                format!("cannot create {}: {e}", src.display()),
                None,
            ));
        }
        log.line(&format!("==> fetching {repo} at {commit}")).await;
        let git = |args: &[&str]| {
            CommandSpec::new("git")
                .args(args.iter().copied())
                .env("GIT_TERMINAL_PROMPT", "0")
                .cwd(src)
        };
        let steps = [
            ("git init", git(&["init", "-q"])),
            ("git remote add", git(&["remote", "add", "origin", repo])),
            (
                "git fetch",
                git(&["fetch", "--depth", "1", "origin", commit]),
            ),
            (
                "git checkout",
                git(&[
                    "-c",
                    "advice.detachedHead=false",
                    "checkout",
                    "-q",
                    "FETCH_HEAD",
                ]),
            ),
        ];
        for (name, cmd) in &steps {
            log.line(&format!("$ {}", cmd.display())).await;
            let done = self.runner.run(cmd, log, cancel).await.map_err(|e| {
                failure(
                    FailureKind::Infrastructure,
                    format!("{e} (is git installed? apt-get install git)"),
                    None,
                )
            })?;
            if done.cancelled {
                return Err(Stop::Cancelled);
            }
            if !done.status.success() {
                return Err(failure(
                    FailureKind::Infrastructure,
                    with_tail(format!("{name} {}", done.status), &done.tail),
                    code_of(done.status),
                ));
            }
        }
        Ok(())
    }
}

impl Executor {
    /// The build context `digest` into `src`: download it into `dir/context.tar`
    /// (verified against the digest), unpack it, remove the archive. A context that
    /// did not arrive whole and right is the transfer's failure (`Infrastructure`,
    /// another attempt may do better); an archive the unpacker refuses is the
    /// context's (`Build`).
    async fn fetch_context(
        &self,
        digest: &Digest,
        dir: &Path,
        src: &Path,
        log: &JobLog,
        cancel: &CancellationToken,
    ) -> Result<(), Stop> {
        let infra = |message: String| failure(FailureKind::Infrastructure, message, None);
        let fetched = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(Stop::Cancelled),
            fetched = self.contexts.fetch(digest) => fetched,
        };
        let mut download = fetched.map_err(|e| infra(e.to_string()))?;
        let size = download.size;
        log.line(&format!(
            "==> fetching build context {digest} ({size} bytes)"
        ))
        .await;
        if size > MAX_CONTEXT_BYTES {
            return Err(failure(
                FailureKind::Build,
                format!(
                    "the build context is {size} bytes, more than the {MAX_CONTEXT_BYTES} \
                     bytes an agent accepts; make it smaller with .dockerignore"
                ),
                None,
            ));
        }
        let archive = dir.join(CONTEXT_FILE);
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(Stop::Cancelled),
            done = context::download(download.body.as_mut(), size, digest, &archive) => {
                done.map_err(|e| infra(e.to_string()))?;
            }
        }
        drop(download);

        let unpacked = {
            let (archive, src) = (archive.clone(), src.to_path_buf());
            let cancel = cancel.clone();
            // Not abandoned on cancel: the reader fails once the token fires, and the
            // unpacker then removes what it wrote before returning.
            tokio::task::spawn_blocking(move || {
                let file = std::fs::File::open(&archive).map_err(|source| ContextError::Io {
                    action: "open",
                    path: archive.clone(),
                    source,
                })?;
                let reader = Cancellable {
                    inner: std::io::BufReader::with_capacity(256 * 1024, file),
                    cancel,
                };
                helix_context::unpack(reader, &src, UNPACK_LIMITS)
            })
            .await
        };
        let _ = tokio::fs::remove_file(&archive).await;
        if cancel.is_cancelled() {
            return Err(Stop::Cancelled);
        }
        let unpacked = match unpacked {
            Ok(Ok(unpacked)) => unpacked,
            Ok(Err(e)) => {
                let kind = match e {
                    ContextError::Io { .. } | ContextError::DestinationNotEmpty { .. } => {
                        FailureKind::Infrastructure
                    }
                    _ => FailureKind::Build,
                };
                return Err(failure(kind, e.to_string(), None));
            }
            Err(e) => {
                return Err(infra(format!(
                    "unpacking the build context did not finish: {e}"
                )))
            }
        };
        log.line(&format!(
            "==> unpacked {}, {} and {} ({} bytes)",
            plural(unpacked.files, "file", "files"),
            plural(unpacked.dirs, "directory", "directories"),
            plural(unpacked.symlinks, "link", "links"),
            unpacked.bytes
        ))
        .await;
        Ok(())
    }
}

/// The bytes of the image `name` in the OCI layout at `dir`: its manifest, config
/// and layers (each blob once), as their descriptors state them.
async fn layout_bytes(dir: &Path, name: &str) -> Option<u64> {
    let (dir, name) = (dir.to_path_buf(), name.to_string());
    let read = tokio::task::spawn_blocking(move || {
        let image = OciLayout::open(&dir)?.image(Some(&name))?;
        Ok::<_, helix_registry::LayoutError>(
            image.manifest.size + image.blobs().iter().map(|b| b.size).sum::<u64>(),
        )
    })
    .await;
    match read {
        Ok(Ok(bytes)) => Some(bytes),
        Ok(Err(e)) => {
            warn!("cannot count the pushed bytes: {e}");
            None
        }
        Err(_) => None,
    }
}

/// Sorts a builder's failure. A non-zero exit of the build step is the build's own
/// failure; a signal we did not send (the OOM killer, an operator) or a failure to
/// write the image locally is the host's.
fn classify_build(e: BuildError) -> Stop {
    match e {
        BuildError::Cancelled => Stop::Cancelled,
        BuildError::Failed {
            step,
            command,
            status,
            tail,
        } => {
            let kind = match (step, status) {
                (BuildStep::Build, ExitStatus::Code(_)) => FailureKind::Build,
                _ => FailureKind::Infrastructure,
            };
            failure(
                kind,
                with_tail(format!("{command} {status}"), &tail),
                code_of(status),
            )
        }
        BuildError::Spawn(e) => failure(FailureKind::Infrastructure, e.to_string(), None),
    }
}

fn code_of(status: ExitStatus) -> Option<i32> {
    match status {
        ExitStatus::Code(code) => Some(code),
        ExitStatus::Signal(_) => None,
    }
}

/// `head`, then the last lines of output if there are any.
fn with_tail(head: String, tail: &str) -> String {
    if tail.trim().is_empty() {
        head
    } else {
        format!("{head}; last lines of output:\n{tail}")
    }
}

/// `1 file`, `2 files`.
fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

/// The local image name of a job attempt: `helix-<job>-<attempt>`.
pub fn image_name(key: &JobKey) -> String {
    format!("helix-{}", key_name(key))
}

/// The Dockerfile's path inside the checkout, refusing one that leaves it. The
/// coordinator checked this at submit; the agent does not run on trust alone.
fn dockerfile_in(src: &Path, dockerfile: &str) -> Result<PathBuf, String> {
    let path = Path::new(dockerfile);
    let escapes = path
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    if dockerfile.is_empty() || escapes || dockerfile.chars().any(char::is_control) {
        return Err(format!(
            "invalid Dockerfile path {dockerfile:?}: it must be a relative path inside the \
             build context"
        ));
    }
    Ok(src.join(path))
}

/// Nothing that git could read as an option, and no whitespace.
fn check_git_input(repo: &str, commit: &str) -> Result<(), String> {
    let bad = |s: &str| {
        s.is_empty() || s.starts_with('-') || s.chars().any(|c| c.is_whitespace() || c.is_control())
    };
    if bad(repo) {
        return Err(format!("invalid repository URL {repo:?}"));
    }
    if bad(commit) {
        return Err(format!("invalid commit {commit:?}"));
    }
    Ok(())
}

/// Creates `DATA/work` if needed and a fresh, empty `dir` in it, both 0700.
async fn prepare_work_dir(root: &Path, dir: &Path) -> std::io::Result<()> {
    tokio::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .await?;
    if tokio::fs::try_exists(dir).await? {
        // A leftover of the same attempt: start from nothing.
        tokio::fs::remove_dir_all(dir).await?;
    }
    tokio::fs::DirBuilder::new().mode(0o700).create(dir).await
}

/// Removes what a job leaves in its work dir `dir` besides its log ([`SCRATCH`]).
pub(crate) async fn remove_scratch(dir: &Path) {
    for name in SCRATCH {
        let path = dir.join(name);
        match tokio::fs::symlink_metadata(&path).await {
            Ok(meta) if meta.is_dir() => remove_dir(&path).await,
            Ok(_) => {
                if let Err(e) = tokio::fs::remove_file(&path).await {
                    warn!(path = %path.display(), "cannot remove: {e}");
                }
            }
            Err(_) => {}
        }
    }
}

/// Removes `dir` and everything in it; a missing dir is fine.
pub(crate) async fn remove_dir(dir: &Path) {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!(dir = %dir.display(), "cannot remove: {e}"),
    }
}

#[cfg(test)]
mod tests;
