//! [`ProcessRunner`]: the real [`CommandRunner`], on `tokio::process`.
//!
//! Each command gets its own process group (`process_group(0)`), so everything it
//! starts (buildah's helpers, a `RUN` step's shell) can be signalled at once. Its
//! stdout and stderr share one pipe, so the log keeps their order. When the cancel
//! token fires, the group gets SIGTERM and, if anything of it is still alive after the
//! grace period, SIGKILL. Processes the command left behind when it exited on its own
//! get the same treatment: nothing a job started outlives it.
//!
//! Every live group is also listed process-wide, so that an agent told to exit at once
//! (a second SIGTERM) can kill them all with [`kill_all_groups`].

use std::collections::BTreeSet;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{BoxFuture, CommandRunner, CommandSpec, Completed, ExitStatus, LogSink, SpawnError};

/// How long a cancelled command has between SIGTERM and SIGKILL by default
/// (Buildkite's choice: long enough for buildah to unmount and clean up).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// How long the output pipe may stay open after the command exited before whatever
/// holds it (a process it left running) is killed.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// How often a group is checked for survivors while waiting for it to empty.
const POLL: Duration = Duration::from_millis(50);

/// Bytes of output kept for [`Completed::tail`]: enough for [`TAIL_LINES`] long lines.
const TAIL_BYTES: usize = 16 * 1024;

/// Lines of output an error message quotes.
pub const TAIL_LINES: usize = 20;

/// The agent's own environment variables that its commands must not inherit: the
/// join token is a secret, and the service manager's socket is for the agent alone
/// (podman acts on `NOTIFY_SOCKET`).
pub const PRIVATE_ENV: [&str; 2] = ["HELIX_JOIN_TOKEN", "NOTIFY_SOCKET"];

/// Process groups of commands that are running now.
static LIVE_GROUPS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// SIGKILL every process group a [`ProcessRunner`] started and that still runs. For
/// an agent that must exit now; normal shutdown cancels jobs instead.
pub fn kill_all_groups() {
    let groups: Vec<i32> = LIVE_GROUPS
        .lock()
        .expect("group list lock poisoned")
        .iter()
        .copied()
        .collect();
    for pgid in groups {
        let _ = signal_group(pgid, libc::SIGKILL);
    }
}

/// After a crash of an earlier agent: stops the process groups of commands it left
/// running (its builders survive a `kill -9` of the agent when no service manager
/// kills its cgroup). A process is recognised as ours by what it works on, not by a
/// remembered id that could have been reused: an argument under `storage` (buildah's
/// `--root`/`--runroot`) or a working directory under `work`. Each such group gets
/// SIGTERM, and SIGKILL after `grace`. Returns how many groups were stopped.
pub async fn stop_leftover_groups(storage: &Path, work: &Path, grace: Duration) -> usize {
    let (storage, work) = (storage.to_path_buf(), work.to_path_buf());
    let groups = tokio::task::spawn_blocking(move || leftover_groups(&storage, &work))
        .await
        .unwrap_or_default();
    for pgid in &groups {
        warn!(
            pgid,
            "stopping a build left running by an earlier run of the agent"
        );
        let _ = signal_group(*pgid, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while groups.iter().any(|g| group_alive(*g)) && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    for pgid in &groups {
        if group_alive(*pgid) {
            let _ = signal_group(*pgid, libc::SIGKILL);
        }
    }
    groups.len()
}

/// The process groups (not ours) of processes working on `storage` or in `work`.
fn leftover_groups(storage: &Path, work: &Path) -> BTreeSet<i32> {
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| process_group_of(&stat));
    let mut groups = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return groups;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
            .is_none()
        {
            continue;
        }
        let dir = entry.path();
        let in_work = std::fs::read_link(dir.join("cwd")).is_ok_and(|cwd| cwd.starts_with(work));
        let on_storage = std::fs::read(dir.join("cmdline")).is_ok_and(|cmdline| {
            cmdline
                .split(|b| *b == 0)
                .any(|arg| Path::new(std::ffi::OsStr::from_bytes(arg)).starts_with(storage))
        });
        if !(in_work || on_storage) {
            continue;
        }
        let pgid = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|stat| process_group_of(&stat));
        if let Some(pgid) = pgid.filter(|g| *g > 1 && Some(*g) != own) {
            groups.insert(pgid);
        }
    }
    groups
}

/// The process group in a `/proc/PID/stat` line (`pid (comm) state ppid pgrp ...`).
fn process_group_of(stat: &str) -> Option<i32> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(2)?.parse().ok()
}

/// Sends `signal` to every process in the group `pgid`.
#[allow(unsafe_code)]
fn signal_group(pgid: i32, signal: i32) -> io::Result<()> {
    // killpg(0 or 1, ..) would hit our own group or every process we may signal.
    if pgid <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal process group {pgid}"),
        ));
    }
    // SAFETY: killpg takes two integers and touches no memory of ours; it has no
    // preconditions beyond valid arguments, which the kernel checks.
    let rc = unsafe { libc::killpg(pgid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether any process is left in group `pgid` (signal 0 only checks).
fn group_alive(pgid: i32) -> bool {
    match signal_group(pgid, 0) {
        Ok(()) => true,
        // EPERM: something is there, we just may not signal it.
        Err(e) => e.raw_os_error() == Some(libc::EPERM),
    }
}

/// Lists a group while it runs; on drop (also when the run is abandoned half-way)
/// kills whatever is left of it and unlists it.
struct GroupGuard(i32);

impl GroupGuard {
    fn new(pgid: i32) -> GroupGuard {
        LIVE_GROUPS
            .lock()
            .expect("group list lock poisoned")
            .insert(pgid);
        GroupGuard(pgid)
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if group_alive(self.0) {
            let _ = signal_group(self.0, libc::SIGKILL);
        }
        LIVE_GROUPS
            .lock()
            .expect("group list lock poisoned")
            .remove(&self.0);
    }
}

/// The real runner.
#[derive(Debug, Clone)]
pub struct ProcessRunner {
    grace: Duration,
}

impl Default for ProcessRunner {
    fn default() -> Self {
        ProcessRunner::new(DEFAULT_GRACE)
    }
}

impl ProcessRunner {
    /// A runner whose cancelled commands get `grace` between SIGTERM and SIGKILL.
    pub fn new(grace: Duration) -> ProcessRunner {
        ProcessRunner { grace }
    }
}

impl CommandRunner for ProcessRunner {
    fn run<'a>(
        &'a self,
        cmd: &'a CommandSpec,
        log: &'a dyn LogSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Completed, SpawnError>> {
        Box::pin(self.run_inner(cmd, log, cancel))
    }
}

impl ProcessRunner {
    async fn run_inner(
        &self,
        cmd: &CommandSpec,
        log: &dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<Completed, SpawnError> {
        let spawn_err = |source| SpawnError {
            program: cmd.program.clone(),
            source,
        };
        let (reader, writer) = io::pipe().map_err(spawn_err)?;
        let writer2 = writer.try_clone().map_err(spawn_err)?;
        let mut command = tokio::process::Command::new(&cmd.program);
        for name in PRIVATE_ENV {
            command.env_remove(name);
        }
        command
            .args(&cmd.args)
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(writer2)
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &cmd.cwd {
            command.current_dir(dir);
        }
        let mut child = command.spawn().map_err(spawn_err)?;
        // Our copies of the pipe's write end must go, or the reader never sees EOF.
        drop(command);
        let pgid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .ok_or_else(|| spawn_err(io::Error::other("the child has no process id")))?;
        let guard = GroupGuard::new(pgid);
        let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader))
            .map_err(spawn_err)?;
        debug!(program = %cmd.program, pgid, "started");

        let mut tail = Tail::default();
        let status = {
            let pump = pump(reader, log, &mut tail);
            tokio::pin!(pump);
            let mut pumped = false;
            let waited = self.wait(&mut child, pgid, cancel);
            tokio::pin!(waited);
            let result = loop {
                tokio::select! {
                    () = &mut pump, if !pumped => pumped = true,
                    result = &mut waited => break result,
                }
            };
            if !pumped {
                // The command exited but something still holds its output pipe: a
                // process it left running. Give it a moment, then kill the group.
                if tokio::time::timeout(DRAIN_AFTER_EXIT, &mut pump)
                    .await
                    .is_err()
                {
                    let _ = signal_group(pgid, libc::SIGKILL);
                    if tokio::time::timeout(DRAIN_AFTER_EXIT, &mut pump)
                        .await
                        .is_err()
                    {
                        warn!(program = %cmd.program, "output pipe still open after the command's process group was killed; not reading it further");
                    }
                }
            }
            result
        };
        let (status, terminated_at) = match status {
            (Ok(status), terminated_at) => (status, terminated_at),
            (Err(e), _) => return Err(spawn_err(e)),
        };
        let cancelled = terminated_at.is_some();
        // Whatever the command left behind in its group goes with it.
        self.empty_group(pgid, terminated_at).await;
        drop(guard);
        let status = match (status.code(), status.signal()) {
            (Some(code), _) => ExitStatus::Code(code),
            (None, Some(signal)) => ExitStatus::Signal(signal),
            (None, None) => ExitStatus::Code(-1),
        };
        debug!(program = %cmd.program, %status, cancelled, "ended");
        Ok(Completed {
            status,
            cancelled,
            tail: tail.lines(TAIL_LINES),
        })
    }

    /// Waits for the child; on cancel, SIGTERM to the group, SIGKILL after the grace
    /// period. Returns the status and, if the cancel fired, when the SIGTERM went out.
    async fn wait(
        &self,
        child: &mut tokio::process::Child,
        pgid: i32,
        cancel: &CancellationToken,
    ) -> (io::Result<std::process::ExitStatus>, Option<Instant>) {
        tokio::select! {
            biased;
            status = child.wait() => return (status, None),
            () = cancel.cancelled() => {}
        }
        debug!(pgid, "cancelled: SIGTERM to the process group");
        let terminated_at = Instant::now();
        let _ = signal_group(pgid, libc::SIGTERM);
        match tokio::time::timeout(self.grace, child.wait()).await {
            Ok(status) => (status, Some(terminated_at)),
            Err(_) => {
                warn!(
                    pgid,
                    "the process group outlived the {}s grace period: SIGKILL",
                    self.grace.as_secs_f64()
                );
                let _ = signal_group(pgid, libc::SIGKILL);
                (child.wait().await, Some(terminated_at))
            }
        }
    }

    /// After the group's leader exited: SIGTERM whatever is left of the group (unless
    /// a cancel already did, at `terminated_at`), and SIGKILL it once the grace period
    /// since the SIGTERM is over.
    ///
    /// The leader has been reaped, so in principle its id could be reused; but Linux
    /// does not hand out an id that is still some group's id, and a group whose
    /// members are all gone is only checked, not signalled.
    async fn empty_group(&self, pgid: i32, terminated_at: Option<Instant>) {
        if !group_alive(pgid) {
            return;
        }
        let terminated_at = terminated_at.unwrap_or_else(|| {
            debug!(
                pgid,
                "the command left processes behind: SIGTERM to its group"
            );
            let _ = signal_group(pgid, libc::SIGTERM);
            Instant::now()
        });
        let deadline = terminated_at + self.grace;
        while Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
            if !group_alive(pgid) {
                return;
            }
        }
        warn!(pgid, "processes left by a command ignored SIGTERM: SIGKILL");
        let _ = signal_group(pgid, libc::SIGKILL);
    }
}

/// Copies the output pipe into `log` until EOF, keeping the tail.
async fn pump(mut reader: tokio::net::unix::pipe::Receiver, log: &dyn LogSink, tail: &mut Tail) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                log.write(&buf[..n]).await;
                tail.push(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                warn!("cannot read a command's output: {e}");
                return;
            }
        }
    }
}

/// The last [`TAIL_BYTES`] of a byte stream.
#[derive(Debug, Default)]
pub(crate) struct Tail(Vec<u8>);

impl Tail {
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        if self.0.len() > 2 * TAIL_BYTES {
            self.0.drain(..self.0.len() - TAIL_BYTES);
        }
    }

    /// The last `n` non-empty lines, as text.
    pub(crate) fn lines(&self, n: usize) -> String {
        let start = self.0.len().saturating_sub(TAIL_BYTES);
        last_lines(&String::from_utf8_lossy(&self.0[start..]), n)
    }
}

/// The last `n` non-empty lines of `text`, joined with newlines. A carriage return
/// (progress output) keeps only what came after it on its line.
pub(crate) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(|line| line.rsplit('\r').next().unwrap_or(line))
        .filter(|line| !line.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests;
