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
        }
    }
    pub(crate) fn signal(signal: i32, output: &str) -> Reply {
        Reply {
            output: output.to_string(),
            status: ExitStatus::Signal(signal),
            hang: false,
        }
    }
    pub(crate) fn hang(output: &str) -> Reply {
        Reply {
            output: output.to_string(),
            status: ExitStatus::Signal(libc::SIGTERM),
            hang: true,
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
            if reply.hang {
                cancel.cancelled().await;
                cancelled = true;
            }
            Ok(Completed {
                status: reply.status,
                cancelled,
                tail: last_lines(&reply.output, TAIL_LINES),
            })
        })
    }
}
