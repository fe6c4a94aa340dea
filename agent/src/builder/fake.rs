//! A [`CommandRunner`] for unit tests: records every command and answers from a
//! script instead of starting processes.

use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

use super::process::{last_lines, TAIL_LINES};
use super::{BoxFuture, CommandRunner, CommandSpec, Completed, ExitStatus, LogSink, SpawnError};

/// What the fake answers to one command.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) output: String,
    pub(crate) status: ExitStatus,
    /// Wait for the cancel token instead of ending (a long build).
    pub(crate) hang: bool,
    /// With `hang`: end normally (with `status`) once this token fires, unless the
    /// cancel token fires first.
    pub(crate) release: Option<CancellationToken>,
}

impl Reply {
    pub(crate) fn ok(output: &str) -> Reply {
        Reply::exit(0, output)
    }
    pub(crate) fn exit(code: i32, output: &str) -> Reply {
        Reply {
            output: output.to_string(),
            status: ExitStatus::Code(code),
            hang: false,
            release: None,
        }
    }
    pub(crate) fn signal(signal: i32, output: &str) -> Reply {
        Reply {
            output: output.to_string(),
            status: ExitStatus::Signal(signal),
            hang: false,
            release: None,
        }
    }
    pub(crate) fn hang(output: &str) -> Reply {
        Reply {
            output: output.to_string(),
            status: ExitStatus::Signal(libc::SIGTERM),
            hang: true,
            release: None,
        }
    }
    /// Runs until `release` fires (then succeeds) or the job is cancelled.
    pub(crate) fn until(release: &CancellationToken, output: &str) -> Reply {
        Reply {
            release: Some(release.clone()),
            ..Reply::hang(output)
        }
    }
}

type Script = Box<dyn Fn(&CommandSpec) -> Reply + Send + Sync>;

pub(crate) struct FakeRunner {
    script: Script,
    calls: Mutex<Vec<CommandSpec>>,
}

impl std::fmt::Debug for FakeRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRunner").finish_non_exhaustive()
    }
}

impl Default for FakeRunner {
    /// Every command succeeds silently.
    fn default() -> Self {
        FakeRunner::replying(|_| Reply::ok(""))
    }
}

impl FakeRunner {
    pub(crate) fn replying(
        script: impl Fn(&CommandSpec) -> Reply + Send + Sync + 'static,
    ) -> FakeRunner {
        FakeRunner {
            script: Box::new(script),
            calls: Mutex::new(Vec::new()),
        }
    }

    /// The commands run so far, in order.
    pub(crate) fn calls(&self) -> Vec<CommandSpec> {
        self.calls.lock().expect("calls lock").clone()
    }
}

impl CommandRunner for FakeRunner {
    fn run<'a>(
        &'a self,
        cmd: &'a CommandSpec,
        log: &'a dyn LogSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Completed, SpawnError>> {
        self.calls.lock().expect("calls lock").push(cmd.clone());
        let reply = (self.script)(cmd);
        Box::pin(async move {
            log.write(reply.output.as_bytes()).await;
            let mut cancelled = false;
            let mut status = reply.status;
            if reply.hang {
                let release = reply.release.clone().unwrap_or_default();
                tokio::select! {
                    () = cancel.cancelled() => cancelled = true,
                    () = release.cancelled() => status = ExitStatus::Code(0),
                }
            }
            Ok(Completed {
                status,
                cancelled,
                tail: last_lines(&reply.output, TAIL_LINES),
            })
        })
    }
}
