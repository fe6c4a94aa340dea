//! Enrolment on the first `helix-agent run`: with a join token configured
//! (`join-token-file`, or `HELIX_JOIN_TOKEN`) and no identity in the data dir yet, the
//! agent enrols exactly as `helix-agent join` does, deletes the token file it was
//! given, and then runs. So adding a node is: install the package, put the
//! coordinator's address and the token in place, start the service.
//!
//! The token is a secret: it is only read from a file that nobody but its owner can
//! read (mode 0600 or stricter) or from the environment, never from a command line,
//! and it is never logged.
//!
//! Once enrolled, the token is not used again. A token file still present then is
//! left alone (and its presence logged): the agent did not consume it, so it may be a
//! multi-use token meant for other hosts too, and deleting a file the agent had no
//! use for would surprise whoever put it there.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};

use helix_protocol::JoinToken;
use helix_transport::connect::ConnectError;
use helix_transport::files::{self, FileError};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::datadir::{DataDir, Enrollment};
use crate::host;
use crate::join::{JoinError, JoinOptions};

/// Where a join token may come from. `Debug` never shows the token.
#[derive(Clone, Default)]
pub struct JoinTokenConfig {
    /// `join-token-file`: read at enrolment, deleted after it succeeded.
    pub file: Option<PathBuf>,
    /// `HELIX_JOIN_TOKEN`'s value; wins over the file when both are set.
    pub env: Option<String>,
}

impl fmt::Debug for JoinTokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinTokenConfig")
            .field("file", &self.file)
            .field("env", &self.env.as_ref().map(|_| "[hidden]"))
            .finish()
    }
}

impl JoinTokenConfig {
    /// Whether any token is configured.
    pub fn is_set(&self) -> bool {
        self.file.is_some() || self.env.is_some()
    }
}

/// What enrolment needs besides the token.
#[derive(Debug, Clone)]
pub struct EnrolOptions {
    /// The coordinators, `HOST:PORT` each (at least one to enrol), tried in turn.
    pub coordinators: Vec<String>,
    /// The agent's name [default: the host name].
    pub name: Option<String>,
    pub token: JoinTokenConfig,
}

/// Why the agent could not enrol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrolError {
    /// No identity and no token.
    #[error("{dir} holds no agent identity and no join token is configured: put the token from `helix-coordinator token create` in a file only root can read and name it with join-token-file (or set HELIX_JOIN_TOKEN), or enrol with `helix-agent join`")]
    NoToken { dir: String },
    /// The configured token file is not there.
    #[error("join-token-file {path} does not exist: this host is not enrolled yet, so it needs the token from `helix-coordinator token create` in that file (mode 0600)")]
    TokenFileMissing { path: String },
    /// The token file is unreadable or readable by others.
    #[error("cannot use join-token-file: {0}")]
    TokenFile(#[source] FileError),
    /// The token does not parse.
    #[error("invalid join token in {origin}: {reason}")]
    BadToken { origin: String, reason: String },
    /// No coordinator to enrol with.
    #[error("to enrol, the agent needs the coordinator's address: set coordinator = \"HOST:PORT\" in the configuration, or a list of them for several coordinators (or HELIX_COORDINATOR, --coordinator)")]
    NoCoordinator,
    /// The join itself failed for a reason retrying cannot change.
    #[error(transparent)]
    Join(#[from] JoinError),
}

impl EnrolError {
    /// Whether this is the configuration's fault (exit code 2): retrying with the same
    /// configuration cannot succeed.
    pub fn is_usage(&self) -> bool {
        match self {
            EnrolError::Join(e) => matches!(
                e,
                JoinError::AlreadyJoined { .. }
                    | JoinError::InvalidName(_)
                    | JoinError::NoCoordinator
                    | JoinError::Untrusted { .. }
                    | JoinError::Rejected { .. }
                    | JoinError::Connect(ConnectError::BadAddress(_))
            ),
            _ => true,
        }
    }
}

/// What [`enrol_if_needed`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrolled {
    /// The data dir already held an identity; the token (if any) was not used.
    Already,
    /// Enrolled now; `token_file_deleted` says whether the token file is gone.
    Now {
        enrollment: Enrollment,
        token_file_deleted: bool,
    },
}

/// Whether a failed join may succeed when tried again (the coordinator is down or
/// restarting, the network dropped, the leader is changing), as opposed to a
/// refusal ([`JoinError::is_transient`]).
pub fn is_transient(e: &JoinError) -> bool {
    e.is_transient()
}

/// Reads the configured token: `HELIX_JOIN_TOKEN` if set, else the file (refused
/// unless only its owner can read it). `None` when neither is configured.
pub fn read_token(config: &JoinTokenConfig) -> Result<Option<JoinToken>, EnrolError> {
    if let Some(value) = &config.env {
        return parse_token(value, "HELIX_JOIN_TOKEN").map(Some);
    }
    let Some(path) = &config.file else {
        return Ok(None);
    };
    if !path.exists() {
        return Err(EnrolError::TokenFileMissing {
            path: path.display().to_string(),
        });
    }
    let text = files::read_secret(path).map_err(EnrolError::TokenFile)?;
    parse_token(&text, &format!("join-token-file {}", path.display())).map(Some)
}

fn parse_token(text: &str, origin: &str) -> Result<JoinToken, EnrolError> {
    text.trim().parse().map_err(|e| EnrolError::BadToken {
        origin: origin.to_string(),
        reason: format!("{e} (expected the token printed by `helix-coordinator token create`)"),
    })
}

/// Enrols this host unless `dir` already holds an identity: reads the token, joins
/// through `join_with` (retrying failures that may pass, with backoff, until
/// `shutdown`), then deletes the token file. `attempt` is told each attempt's number
/// (for the status line). `Ok(None)`: `shutdown` came first.
pub async fn enrol_if_needed<F, Fut>(
    dir: &DataDir,
    opts: &EnrolOptions,
    shutdown: &CancellationToken,
    mut attempt: impl FnMut(u32),
    mut join_with: F,
) -> Result<Option<Enrolled>, EnrolError>
where
    F: FnMut(JoinOptions) -> Fut,
    Fut: Future<Output = Result<Enrollment, JoinError>>,
{
    if dir.is_joined() {
        report_unused(dir, &opts.token);
        return Ok(Some(Enrolled::Already));
    }
    let Some(token) = read_token(&opts.token)? else {
        return Err(EnrolError::NoToken {
            dir: dir.root().display().to_string(),
        });
    };
    if let (Some(_), Some(file)) = (&opts.token.env, &opts.token.file) {
        info!(
            "HELIX_JOIN_TOKEN is set: join-token-file {} is not read",
            file.display()
        );
    }
    if opts.coordinators.is_empty() {
        return Err(EnrolError::NoCoordinator);
    }
    let join_opts = JoinOptions {
        coordinators: opts.coordinators.clone(),
        token,
        data_dir: dir.clone(),
        name: opts.name.clone().unwrap_or_else(host::default_name),
    };
    info!(
        "this host is not enrolled yet: enrolling with {} as {:?}",
        opts.coordinators.join(", "),
        join_opts.name
    );
    let mut backoff = Backoff::new(StdRng::from_os_rng());
    let mut n: u32 = 0;
    let enrollment = loop {
        n = n.saturating_add(1);
        attempt(n);
        let joined = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(None),
            joined = join_with(join_opts.clone()) => joined,
        };
        match joined {
            Ok(enrollment) => break enrollment,
            Err(e) if is_transient(&e) => {
                let delay = backoff.next_delay();
                warn!(
                    attempt = n,
                    "cannot enrol yet: {e}; trying again in {:.1}s",
                    delay.as_secs_f64()
                );
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Ok(None),
                    () = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    };
    info!(
        "enrolled in cluster {} as agent {} ({})",
        enrollment.cluster, enrollment.agent_id, enrollment.name
    );
    let token_file_deleted = match (&opts.token.env, &opts.token.file) {
        (None, Some(path)) => delete_token_file(path),
        _ => false,
    };
    Ok(Some(Enrolled::Now {
        enrollment,
        token_file_deleted,
    }))
}

/// The token did its job: the agent holds its own certificate now.
fn delete_token_file(path: &Path) -> bool {
    match std::fs::remove_file(path) {
        Ok(()) => {
            info!(
                "deleted the join token file {}: it is no longer needed",
                path.display()
            );
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => {
            warn!(
                "enrolled, but cannot delete the join token file {}: {e}; delete it by hand",
                path.display()
            );
            false
        }
    }
}

/// Enrolled already: say that a configured token is not used.
fn report_unused(dir: &DataDir, token: &JoinTokenConfig) {
    let who = dir
        .load_enrollment()
        .map(|e| format!("agent {} ({})", e.agent_id, e.name))
        .unwrap_or_else(|_| "an agent".to_string());
    if token.env.is_some() {
        info!("HELIX_JOIN_TOKEN is set but not used: this host is already enrolled as {who}");
    }
    if let Some(path) = &token.file {
        if path.exists() {
            info!(
                "join-token-file {} is not used: this host is already enrolled as {who}; the file is left in place (delete it if no other host needs it)",
                path.display()
            );
        } else {
            debug!(path = %path.display(), "no join token file; already enrolled");
        }
    }
}

#[cfg(test)]
mod tests;
