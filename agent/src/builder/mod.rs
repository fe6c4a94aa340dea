//! Image builders and the process layer under them.
//!
//! - [`Builder`]: what a backend does for one job: build a context directory for one
//!   platform into an OCI image layout directory, and remove its local image after.
//!   Every backend ends in an OCI layout, so pushing is written once (in the executor).
//! - [`backend::Backend`]: the one implementation of [`Builder`] for command-line
//!   tools, generic over [`Commands`], their command lines:
//!   [`buildah::Buildah`] (the default) and [`podman::Podman`].
//! - [`CommandRunner`]: the seam between a backend and the operating system: run one
//!   program, stream its output into a [`LogSink`], cancel it. [`process::ProcessRunner`]
//!   is the real one (own process group, SIGTERM then SIGKILL to the whole group); unit
//!   tests use `fake::FakeRunner`.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use helix_protocol::Platform;
use tokio_util::sync::CancellationToken;

pub mod backend;
pub mod buildah;
#[cfg(test)]
pub(crate) mod fake;
pub mod podman;
pub mod process;

pub use backend::{check_installed, Backend, BuilderUnavailable, Commands, Storage};
pub use buildah::Buildah;
pub use podman::Podman;
pub use process::ProcessRunner;

/// The builder backends `--builder` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BuilderKind {
    #[default]
    Buildah,
    Podman,
}

impl BuilderKind {
    /// Its name, also its program and what `Hello` advertises.
    pub fn name(self) -> &'static str {
        match self {
            BuilderKind::Buildah => <buildah::BuildahCommands as Commands>::PROGRAM,
            BuilderKind::Podman => <podman::PodmanCommands as Commands>::PROGRAM,
        }
    }

    /// The backend of this kind, keeping its images under `storage`.
    pub fn backend(self, storage: &Path, runner: Arc<dyn CommandRunner>) -> Arc<dyn Builder> {
        match self {
            BuilderKind::Buildah => Arc::new(Buildah::new(storage, runner)),
            BuilderKind::Podman => Arc::new(Podman::new(storage, runner)),
        }
    }
}

impl std::str::FromStr for BuilderKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "buildah" => Ok(BuilderKind::Buildah),
            "podman" => Ok(BuilderKind::Podman),
            "buildx" | "docker" => Err(format!(
                "the {s} builder is not supported yet: use --builder buildah or --builder podman"
            )),
            other => Err(format!(
                "unknown builder {other:?}: use --builder buildah or --builder podman"
            )),
        }
    }
}

/// A boxed future, so the traits below can be used as `dyn` objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a command's output goes (a job's log, a capture buffer, nowhere).
pub trait LogSink: Send + Sync {
    /// Append `bytes`. Failing to record output never fails the command.
    fn write<'a>(&'a self, bytes: &'a [u8]) -> BoxFuture<'a, ()>;
}

/// A sink that keeps everything, for commands whose output is parsed.
#[derive(Debug, Default)]
pub struct CaptureSink(std::sync::Mutex<Vec<u8>>);

impl CaptureSink {
    /// What was written so far.
    pub fn contents(&self) -> Vec<u8> {
        self.0.lock().expect("capture lock poisoned").clone()
    }
}

impl LogSink for CaptureSink {
    fn write<'a>(&'a self, bytes: &'a [u8]) -> BoxFuture<'a, ()> {
        self.0
            .lock()
            .expect("capture lock poisoned")
            .extend_from_slice(bytes);
        Box::pin(std::future::ready(()))
    }
}

/// One program to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    pub program: String,
    pub args: Vec<String>,
    /// Added to (or replacing in) the agent's own environment.
    pub env: Vec<(String, String)>,
    /// The working directory; the agent's own when `None`.
    pub cwd: Option<PathBuf>,
}

impl CommandSpec {
    pub fn new(program: &str) -> CommandSpec {
        CommandSpec {
            program: program.to_string(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> CommandSpec {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> CommandSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> CommandSpec {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> CommandSpec {
        self.cwd = Some(dir.into());
        self
    }

    /// The command line for a log, with build-arg values hidden (they sometimes carry
    /// tokens, and the log is shown to every user of the build).
    pub fn display(&self) -> String {
        let mut out = self.program.clone();
        let mut hide_value = false;
        for arg in &self.args {
            out.push(' ');
            if hide_value {
                let key = arg.split_once('=').map_or(arg.as_str(), |(k, _)| k);
                out.push_str(&format!("{key}=…"));
            } else if arg.is_empty() || arg.contains([' ', '"', '\'']) {
                out.push_str(&format!("{arg:?}"));
            } else {
                out.push_str(arg);
            }
            hide_value = arg == "--build-arg";
        }
        out
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this status.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

impl ExitStatus {
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exited with status {code}"),
            ExitStatus::Signal(signal) => match signal_name(*signal) {
                Some(name) => write!(f, "was killed by signal {signal} ({name})"),
                None => write!(f, "was killed by signal {signal}"),
            },
        }
    }
}

/// The usual name of the signals a build can die of.
fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => return None,
    })
}

/// A command that ran to its end (or was stopped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    pub status: ExitStatus,
    /// The runner stopped it because the cancel token fired (so a signal in `status`
    /// is ours, not a crash).
    pub cancelled: bool,
    /// The last lines of its output (stdout and stderr together), for error messages.
    pub tail: String,
}

/// A command that could not be run at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot run {program}: {source}")]
pub struct SpawnError {
    pub program: String,
    #[source]
    pub source: std::io::Error,
}

/// Runs programs for the builders and the source fetch.
///
/// Contract: stdin is empty; stdout and stderr both go to `log` as they come; the
/// program runs in its own process group; when `cancel` fires, the whole group gets
/// SIGTERM, then SIGKILL after the runner's grace period; no process of the group
/// outlives the call.
pub trait CommandRunner: Send + Sync + fmt::Debug {
    fn run<'a>(
        &'a self,
        cmd: &'a CommandSpec,
        log: &'a dyn LogSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Completed, SpawnError>>;
}

/// What to build, for one platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRequest {
    /// The build context (the checked-out source).
    pub context: PathBuf,
    /// The Dockerfile, inside `context`.
    pub dockerfile: PathBuf,
    pub platform: Platform,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub no_cache: bool,
    /// The local image name, unique per job attempt (`helix-<job>-<attempt>`).
    pub image: String,
    /// Where to write the OCI image layout (must not exist yet).
    pub layout_dir: PathBuf,
}

/// An image written to an OCI layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    pub layout_dir: PathBuf,
    /// The image's `org.opencontainers.image.ref.name` in the layout.
    pub name_in_layout: String,
}

/// Which part of a backend's work failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildStep {
    /// Building the image: a failure here is usually the Dockerfile's or the source's.
    Build,
    /// Writing the built image to the OCI layout: a failure here is the host's.
    Export,
}

/// Why a backend did not produce an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A builder command ended badly on its own.
    #[error("{command} {status}")]
    Failed {
        step: BuildStep,
        /// The command, as people call it (`buildah build`).
        command: String,
        status: ExitStatus,
        tail: String,
    },
    /// The cancel token fired and the builder was stopped.
    #[error("the build was cancelled")]
    Cancelled,
    /// The builder could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
}

/// An image builder backend.
pub trait Builder: Send + Sync + fmt::Debug {
    /// Its name, as advertised in `Hello` (`buildah`, `podman`).
    fn name(&self) -> &'static str;

    /// Build `req` into an OCI layout at `req.layout_dir`, writing the builder's
    /// output to `log`. `Ok` only if the layout holds the image.
    fn build<'a>(
        &'a self,
        req: &'a BuildRequest,
        log: &'a dyn LogSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<BuiltImage, BuildError>>;

    /// Remove the local image `image`, built for `platform` (and whatever the backend
    /// keeps for it). Best effort: a failure is logged, never fatal.
    fn remove_image<'a>(
        &'a self,
        image: &'a str,
        platform: &'a Platform,
        log: &'a dyn LogSink,
    ) -> BoxFuture<'a, ()>;

    /// Remove what an earlier run of the agent left behind (it died mid-build). Called
    /// at start-up, before any job runs.
    fn prune<'a>(&'a self) -> BoxFuture<'a, ()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_kinds_parse_and_name_themselves() {
        assert_eq!("buildah".parse(), Ok(BuilderKind::Buildah));
        assert_eq!("podman".parse(), Ok(BuilderKind::Podman));
        assert_eq!(BuilderKind::Buildah.name(), "buildah");
        assert_eq!(BuilderKind::Podman.name(), "podman");
        assert_eq!(BuilderKind::default(), BuilderKind::Buildah);
        let err = "buildx".parse::<BuilderKind>().expect_err("not yet");
        assert!(err.contains("not supported yet"), "{err}");
        let err = "kaniko".parse::<BuilderKind>().expect_err("unknown");
        assert!(err.contains("unknown builder \"kaniko\""), "{err}");
        let runner: Arc<dyn CommandRunner> = Arc::new(fake::FakeRunner::default());
        for kind in [BuilderKind::Buildah, BuilderKind::Podman] {
            assert_eq!(
                kind.backend(Path::new("/s"), runner.clone()).name(),
                kind.name()
            );
        }
    }

    #[test]
    fn statuses_read_like_sentences() {
        assert_eq!(ExitStatus::Code(2).to_string(), "exited with status 2");
        assert_eq!(
            ExitStatus::Signal(9).to_string(),
            "was killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            ExitStatus::Signal(64).to_string(),
            "was killed by signal 64"
        );
        assert!(ExitStatus::Code(0).success());
        assert!(!ExitStatus::Signal(0).success());
    }

    #[test]
    fn command_lines_hide_build_arg_values() {
        let cmd = CommandSpec::new("buildah")
            .args(["build", "--build-arg", "TOKEN=s3cret", "--label", "a=b c"])
            .arg("");
        assert_eq!(
            cmd.display(),
            "buildah build --build-arg TOKEN=… --label \"a=b c\" \"\""
        );
    }
}
